#!/usr/bin/env python3
"""Writes PyTorch reference data for tandem's mixed precision:

  tests/data/half_torch.txt  f32 -> bf16 / f16 conversions
  tests/data/scaler_ref.txt  the fp16 loss scale of torch.amp.GradScaler

Run from the repository root (python3 tests/gen_precision_ref.py); the
output is a pure function of the inputs below (fixed seed), so a rerun with
the same torch and NumPy rewrites both files byte for byte.  Read by
mpi-tests/u_kernels.c and mpi-tests/t_precision.c.

half_torch.txt: "f32 bf16 f16" in hex, per line, from x.to(torch.bfloat16)
and x.to(torch.float16) of the whole vector as one tensor (the vectorized
CPU kernels, as for a large array).  The script also converts every value
as a 0-dim tensor (torch's scalar c10::BFloat16 / c10::Half path), tiled
into a large tensor and at an unaligned offset; the bulk results must all
agree.  Where the scalar path gives other bits (NaNs only), the line ends
with "# scalar BF16 F16": the file keeps the vectorized bits.

scaler_ref.txt: for each run a header
  run NAME INIT_SCALE GROWTH_FACTOR BACKOFF_FACTOR GROWTH_INTERVAL STEPS
then STEPS lines "STEP INJECT SKIPPED SCALE": the gradient value injected
at that step (none, inf, -inf, nan), whether GradScaler skipped the
optimizer step (1) or not (0), and the scale after scaler.update() (torch
keeps it in f32: exact for the power-of-two runs "default" and "custom",
rounded to f32 in run "odd").
"""
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")


# ---- conversions ------------------------------------------------------------


def half_inputs():
    """The f32 bit patterns, in a fixed order, without repeats."""
    v = []
    add = v.extend
    add([0x00000000, 0x80000000, 0x7F800000, 0xFF800000])  # +-0, +-inf
    # NaNs: quiet, signalling, payloads only in the bits both formats drop,
    # only in the bits they keep, both signs.
    nans = [0x7FC00000, 0x7F800001, 0x7FA00000, 0x7FFFFFFF, 0x7FC00001,
            0x7F80FFFF, 0x7F801000, 0x7F800100, 0x7F812345, 0x7FD23456,
            0x7FBFFFFF, 0x7F802000, 0x7FE00000, 0x7FC0FFFF, 0x7F8000FF,
            0x7FF00000, 0x7F804000]
    add(nans)
    add([n | 0x80000000 for n in nans])
    # Normals over the whole exponent range, a few significands each.
    for e in range(1, 255):
        for m in (0x000000, 0x000001, 0x400000, 0x7FFFFF, 0x2AAAAA, 0x555555):
            for s in (0, 0x80000000):
                add([s | (e << 23) | m])
    # f32 subnormals.
    for m in (0x000001, 0x000002, 0x000003, 0x0FFFFF, 0x400000, 0x7FFFFF,
              0x008000, 0x018000, 0x010000):
        add([m, m | 0x80000000])
    # f16 overflow boundary, bf16 overflow boundary, carries.
    add([0x477FE000,  # 65504, f16 max
         0x477FEFFF,  # 65519.99: rounds down to 65504
         0x477FF000,  # 65520: tie, rounds to even = inf
         0x477FF001, 0x47800000, 0x477FDFFF, 0x477FD000, 0x477FD001,
         0x7F7F0000,  # bf16 max
         0x7F7F7FFF,  # rounds down to bf16 max
         0x7F7F8000,  # tie between bf16 max (odd) and inf: inf
         0x7F7F8001, 0x7F7FFFFF,  # FLT_MAX -> bf16 inf
         0x7F7E8000,  # tie, bf16 max - ulp is even: stays
         0x3F7FFFFF, 0x3F7F8000, 0x3F7FF000, 0x387FF000, 0x387FE000,
         0x00FFFFFF, 0x007FFFFF, 0x00800000, 0x007F8000, 0x007F7FFF])
    add([x | 0x80000000 for x in v[-25:]])
    # f16 subnormals and underflow: 2^-26 .. 2^-14, ties and neighbours.
    for e in range(127 - 27, 127 - 13):
        for m in (0, 1, 0x7FFFFF, 0x400000, 0x3FFFFF, 0x400001, 0x200000,
                  0x600000, 0x100000, 0x500000):
            add([(e << 23) | m, 0x80000000 | (e << 23) | m])
    add([0x33000000,  # 2^-25: tie between 0 and 2^-24 -> 0
         0x33000001, 0x32FFFFFF, 0x33800000, 0x33C00000, 0x33A00000,
         0x34200000, 0x34400000, 0x387FC000, 0x38800000, 0x387FE000])
    rng = np.random.default_rng(20260507)
    # Exact ties for both formats, rounding down (even) and up (odd),
    # normal f16 range (drop 13 bits) and all exponents for bf16.
    for _ in range(400):
        s = int(rng.integers(0, 2)) << 31
        e = int(rng.integers(127 - 14, 127 + 16))
        m = int(rng.integers(0, 1 << 10)) << 13
        add([s | (e << 23) | m | 0x1000])
        e2 = int(rng.integers(1, 255))
        m2 = int(rng.integers(0, 1 << 7)) << 16
        add([s | (e2 << 23) | m2 | 0x8000])
    # f16 subnormal ties: the result has 2^-24 units, so the dropped bits
    # depend on the exponent.
    for e in range(127 - 24, 127 - 14):
        shift = 13 + (127 - 14 - e)  # bits dropped from the 23-bit field
        for _ in range(12):
            keep = int(rng.integers(0, 1 << max(0, 23 - shift)))
            add([(e << 23) | (keep << shift) | (1 << (shift - 1))])
            add([0x80000000 | (e << 23) | (keep << shift) | (1 << (shift - 1))])
    # Random bit patterns, and random values in and near f16's range.
    add(int(x) for x in rng.integers(0, 2**32, size=4000, dtype=np.uint64))
    for _ in range(3000):
        s = int(rng.integers(0, 2)) << 31
        e = int(rng.integers(127 - 27, 127 + 17))
        add([s | (e << 23) | int(rng.integers(0, 1 << 23))])
    seen = set()
    out = []
    for x in v:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return np.array(out, dtype=np.uint32)


def bits16(t):
    return t.contiguous().view(torch.int16).numpy().view(np.uint16).copy()


def convert(bits):
    x = torch.from_numpy(bits.view(np.float32).copy())
    return bits16(x.to(torch.bfloat16)), bits16(x.to(torch.float16))


def write_half():
    bits = half_inputs()
    n = len(bits)
    bf, f16 = convert(bits)
    # The bulk path is the same for a big tensor, for an unaligned view
    # and under torch's intra-op threads.
    reps = (1 << 20) // n + 1
    big = np.tile(bits, reps)
    bbf, bf16 = convert(big)
    assert (bbf.reshape(reps, n) == bf).all() and (bf16.reshape(reps, n) == f16).all()
    x = torch.from_numpy(np.concatenate([[0], bits]).astype(np.uint32).view(np.float32))
    assert (bits16(x[1:].to(torch.bfloat16)) == bf).all()
    assert (bits16(x[1:].to(torch.float16)) == f16).all()
    # torch's element-wise (0-dim tensor) conversion.
    sbf = np.empty(n, np.uint16)
    sf16 = np.empty(n, np.uint16)
    xs = torch.from_numpy(bits.view(np.float32).copy())
    for i in range(n):
        e = xs[i]
        sbf[i] = bits16(e.to(torch.bfloat16).reshape(1))[0]
        sf16[i] = bits16(e.to(torch.float16).reshape(1))[0]
    f = bits.view(np.float32)
    nan = np.isnan(f)
    differ = (sbf != bf) | (sf16 != f16)
    # Apart from NaNs the two paths must agree bit for bit.
    assert not (differ & ~nan).any(), "torch's paths disagree on non-NaN input"
    nd_bf = int(((sbf != bf) & nan).sum())
    nd_f16 = int(((sf16 != f16) & nan).sum())
    with open(os.path.join(DATA, "half_torch.txt"), "w") as out:
        out.write("# f32 bf16 f16 (hex): x.to(torch.bfloat16) / x.to(torch.float16)\n")
        out.write("# of the whole vector as one f32 tensor (torch %s, numpy %s,\n"
                  % (torch.__version__.split("+")[0], np.__version__))
        out.write("# cpu capability %s; tests/gen_precision_ref.py).  Lines ending\n"
                  % torch.backends.cpu.get_cpu_capability())
        out.write("# \"# scalar B H\": torch's 0-dim (c10 scalar) conversion gives\n")
        out.write("# B H instead (NaNs only: %d of %d NaN inputs for bf16, %d for f16).\n"
                  % (nd_bf, int(nan.sum()), nd_f16))
        for i in range(n):
            line = "%08x %04x %04x" % (bits[i], bf[i], f16[i])
            if differ[i]:
                line += " # scalar %04x %04x" % (sbf[i], sf16[i])
            out.write(line + "\n")
    print("half_torch.txt: %d values, %d NaNs; scalar path differs on %d (bf16) "
          "and %d (f16) NaNs" % (n, int(nan.sum()), nd_bf, nd_f16))


# ---- loss scaler ------------------------------------------------------------

INJECT = {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}


def scaler_run(steps, inject, **kw):
    """Trains one parameter under torch.amp.GradScaler('cpu'), injecting a
    non-finite gradient at the steps in inject; returns per step (inject,
    skipped, scale after update)."""
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.SGD([p], lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", **kw)
    rows = []
    # The update rule as documented, to cross-check torch.
    scale, tracker = float(kw["init_scale"]), 0
    for step in range(steps):
        opt.zero_grad()
        c = torch.ones(4)  # d loss / d p: an unscaled gradient of 1
        kind = inject.get(step, "none")
        if kind != "none":
            c[step % 4] = INJECT[kind]
        scaler.scale((p * c).sum()).backward()
        before = p.detach().clone()
        scaler.step(opt)
        scaler.update()
        skipped = int(torch.equal(before, p.detach()))
        assert skipped == (kind != "none"), step
        # torch keeps the scale in an f32 tensor: f32 * double factor,
        # rounded to f32.
        if kind != "none":
            scale, tracker = float(np.float32(scale * kw["backoff_factor"])), 0
        else:
            tracker += 1
            if tracker == kw["growth_interval"]:
                scale = float(np.float32(scale * kw["growth_factor"]))
                tracker = 0
        assert scaler.get_scale() == scale, (step, scaler.get_scale(), scale)
        rows.append((kind, skipped, scaler.get_scale()))
    return rows


def write_scaler():
    runs = []
    # Defaults: consecutive infs at 3, 4; nan at 10; 1999 clean steps then
    # -inf at 2010 (one short of growing); 2000 clean steps grow the scale
    # at 4010, an inf right after the growth, three in a row; clean to the
    # end.
    inj = {3: "inf", 4: "inf", 10: "nan", 2010: "-inf", 4011: "inf",
           4012: "nan", 4013: "-inf", 4400: "nan"}
    runs.append(("default", 4500, inj, dict(init_scale=65536.0, growth_factor=2.0,
                                            backoff_factor=0.5, growth_interval=2000)))
    # Custom factors and a short interval: an inf on the first step, many
    # growths, a miss one short of the interval, runs of infs.
    inj = {0: "inf", 9: "nan", 14: "inf", 15: "inf", 16: "-inf", 23: "nan",
           40: "inf", 41: "nan", 58: "inf", 59: "inf", 60: "inf", 61: "inf",
           77: "nan", 83: "-inf", 84: "inf", 111: "nan"}
    runs.append(("custom", 128, inj, dict(init_scale=1024.0, growth_factor=4.0,
                                          backoff_factor=0.25, growth_interval=5)))
    # Factors that are not powers of two: the scale is rounded to f32
    # (torch) at every change.
    inj = {2: "inf", 9: "nan", 10: "inf", 20: "-inf"}
    runs.append(("odd", 40, inj, dict(init_scale=1000.0, growth_factor=1.5,
                                      backoff_factor=0.3, growth_interval=3)))
    with open(os.path.join(DATA, "scaler_ref.txt"), "w") as out:
        out.write("# torch.amp.GradScaler(\"cpu\") scale per optimizer step (torch %s;\n"
                  % torch.__version__.split("+")[0])
        out.write("# tests/gen_precision_ref.py).  run NAME INIT GROWTH BACKOFF INTERVAL STEPS,\n")
        out.write("# then per step: STEP INJECT SKIPPED SCALE_AFTER_UPDATE\n")
        for name, steps, inj, kw in runs:
            rows = scaler_run(steps, inj, **kw)
            out.write("run %s %.17g %.17g %.17g %d %d\n" % (
                name, kw["init_scale"], kw["growth_factor"], kw["backoff_factor"],
                kw["growth_interval"], steps))
            for step, (kind, skipped, scale) in enumerate(rows):
                out.write("%d %s %d %.17g\n" % (step, kind, skipped, scale))
            print("scaler_ref.txt: run %s: %d steps, %d skipped, final scale %g" % (
                name, steps, sum(r[1] for r in rows), rows[-1][2]))


def main():
    write_half()
    write_scaler()
    return 0


if __name__ == "__main__":
    sys.exit(main())
