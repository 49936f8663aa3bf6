#!/usr/bin/env python3
"""Writes data/f16_numpy.txt: f32 bit patterns and NumPy's float16 of each.

NumPy's float32 -> float16 cast rounds to nearest even, with subnormals,
overflow to inf and NaN kept; it is the independent reference for tandem's
f32 -> f16 conversion (mpi-tests/u_core.c).  Run: python3 gen_f16_numpy.py
"""
import numpy as np

rng = np.random.default_rng(20261121)
# Any bit pattern, and patterns in and around f16's range (2^-26 .. 2^17).
any_bits = rng.integers(0, 2**32, size=12000, dtype=np.uint64).astype(np.uint32)
exp = rng.integers(127 - 26, 127 + 17, size=12000, dtype=np.uint32)
mant = rng.integers(0, 2**23, size=12000, dtype=np.uint32)
sign = rng.integers(0, 2, size=12000, dtype=np.uint32) << 31
near = sign | (exp << 23) | mant
# Exact ties: the 13 bits f16 drops (more below 2^-14) are 1000...0.
ties = (near[:6000] & ~np.uint32(0x1FFF)) | np.uint32(0x1000)
bits = np.concatenate([any_bits, near, ties]).astype(np.uint32)
f32 = bits.view(np.float32)
keep = ~np.isnan(f32)  # NaN payloads differ between converters; tested apart
bits, f32 = bits[keep], f32[keep]
with np.errstate(over="ignore"):
    f16 = f32.astype(np.float16).view(np.uint16)
with open("data/f16_numpy.txt", "w") as out:
    out.write("# f32_bits f16_bits  (numpy %s, gen_f16_numpy.py)\n" % np.__version__)
    for a, b in zip(bits, f16):
        out.write("%08x %04x\n" % (a, b))
