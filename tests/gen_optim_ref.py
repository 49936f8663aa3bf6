#!/usr/bin/env python3
"""Writes tests/data/optim_ref.txt: PyTorch reference values for tandem's
optimizers, learning-rate schedules and gradient clipping, read by
mpi-tests/t_optim.c.

    python3 tests/gen_optim_ref.py            (from the repository root)
    python3 tests/gen_optim_ref.py --check    (also prints how far the
                                               reference moves under 1-ulp
                                               perturbations; writes nothing)

The oracles are the libraries themselves, on the CPU in float32 with the
single-tensor code paths (foreach=False): torch.optim.SGD / Adam / AdamW,
lion_pytorch.Lion, torch.nn.utils.clip_grad_norm_ / clip_grad_value_ and
transformers.get_scheduler (a LambdaLR).  The output is deterministic:
running the script again rewrites the file byte for byte.

The model: four parameters, registered in this order (module in brackets)
    layer.weight [16, 8] (layer), layer.bias [16] (layer),
    norm.weight [16] (norm), head.weight [5, 16] (head)
with initial values drawn once here and stored as float32 bits.  Element i
counts over the concatenation of all parameters in registration order
(0 <= i < 240).  The gradient at optimizer step t (0 = the first) is
    g_i(t) = p_i * 0.5f + s_i(t)                       (float32)
    s_i(t) = ((h % 2001) - 1000) * 2^-10,  h = t*131 + i*31 + (t*i) % 97
where p_i is the parameter's current value.  p * 0.5 and s are exact in
float32, so the one rounding of the sum is the same in C and in torch
(with or without a fused multiply-add).

File format (tokens separated by white space; a line whose first character
is '#' is a comment; doubles are Python repr, which strtod reads exactly;
float32 values are 8 hex digits of their IEEE bits):

    tandem_optim_ref 1
    params NP
    param NAME MODULE NDIM DIM...                  (NP lines)
    init COUNT  then COUNT float32 bits            (all parameters)
    cases NC
    then NC times:
      case NAME
      kind K lr X momentum X dampening X nesterov N weight_decay X
        beta1 X beta2 X eps X                      (tdm_optimizer_options;
                                                    -1: tandem's default)
      groups NG  then NG lines, in creation order (groups 1..NG):
        group nodecay COUNT   tdm_optimizer_add_no_decay_group(NULL);
                              COUNT parameters move
        group add LR WD       tdm_optimizer_add_group(LR, WD)
      assign G...             the group of each parameter (NP ints)
      schedule KIND warmup W training T num_cycles X min_lr X lr_end X
        power X timescale S   (tdm_schedule_options; KIND -1: no schedule)
      clip MODE X             MODE 0 none, 1 tdm_clip_grad_norm(X),
                              2 tdm_clip_grad_value(X), before every step
      steps N
      lr  then N doubles      group 0's learning rate of each step
      norm then N doubles     (MODE 1 only) the total norm returned by
                              clip_grad_norm_ at each step
      checkpoints NK  then NK times:
        after S  then COUNT float32 bits: all parameters after S steps
    schedules NS
    then NS times:
      sched NAME kind K warmup W training T num_cycles X min_lr X lr_end X
        power X timescale S base_lr X steps N
      then N doubles: the factor (lr / base_lr) at steps 0..N-1
    end

NAME in sched lines is the transformers scheduler name.  Fields of
tdm_schedule_options given as -1 ask for tandem's default; the generator
then leaves the argument out of the transformers call too.
"""
import argparse
import math
import os
import struct
import sys

import torch
import transformers
import lion_pytorch
from transformers import get_scheduler

OUT = os.path.join("tests", "data", "optim_ref.txt")

PARAMS = [  # name, module, shape
    ("layer.weight", "layer", (16, 8)),
    ("layer.bias", "layer", (16,)),
    ("norm.weight", "norm", (16,)),
    ("head.weight", "head", (5, 16)),
]
NP = len(PARAMS)
SIZES = [math.prod(s) for _, _, s in PARAMS]
TOTAL = sum(SIZES)
OFFSETS = [sum(SIZES[:k]) for k in range(NP)]

# tandem enums
SGD, ADAM, ADAMW, LION = 0, 1, 2, 3
(CONSTANT, CONSTANT_WITH_WARMUP, LINEAR, COSINE, COSINE_WITH_RESTARTS,
 POLYNOMIAL, INVERSE_SQRT) = range(7)
CLIP_NONE, CLIP_NORM, CLIP_VALUE = 0, 1, 2


def initial_values():
    g = torch.Generator().manual_seed(20240611)
    vals = []
    for name, _, shape in PARAMS:
        if name.startswith("norm"):
            v = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("bias"):
            v = 0.1 * torch.randn(shape, generator=g)
        else:
            v = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
        vals.append(v.to(torch.float32).contiguous())
    return vals


def noise(t):
    """s_i(t) for all i, exact in float32."""
    i = torch.arange(TOTAL, dtype=torch.int64)
    h = t * 131 + i * 31 + (t * i) % 97
    return (((h % 2001) - 1000).to(torch.float32) * (2.0 ** -10))


def gradients(params, t):
    s = noise(t)
    out = []
    for k, p in enumerate(params):
        sk = s[OFFSETS[k]:OFFSETS[k] + SIZES[k]].view(p.shape)
        out.append(p.detach() * 0.5 + sk)  # float32: one rounding
    return out


def case(name, kind, lr, steps=120, momentum=0.0, dampening=0.0,
         nesterov=0, weight_decay=0.0, beta1=-1.0, beta2=-1.0, eps=-1.0,
         groups=(), assign=(0,) * NP, schedule=None, clip=(CLIP_NONE, 0.0),
         checkpoints=(1, 2, 10, 50)):
    return dict(name=name, kind=kind, lr=lr, steps=steps, momentum=momentum,
                dampening=dampening, nesterov=nesterov,
                weight_decay=weight_decay, beta1=beta1, beta2=beta2, eps=eps,
                groups=list(groups), assign=list(assign), schedule=schedule,
                clip=clip, checkpoints=sorted(set(checkpoints) | {steps}))


def sched(kind, warmup=0, training=0, num_cycles=-1.0, min_lr=0.0,
          lr_end=-1.0, power=-1.0, timescale=-1):
    return dict(kind=kind, warmup=warmup, training=training,
                num_cycles=num_cycles, min_lr=min_lr, lr_end=lr_end,
                power=power, timescale=timescale)


NODECAY_SPLIT = [0, 1, 1, 2]  # layer.weight | layer.bias, norm.weight | head

CASES = [
    case("sgd_plain", SGD, 0.05),
    case("sgd_momentum_dampening_wd", SGD, 0.05, momentum=0.9,
         dampening=0.1, weight_decay=1e-2),
    case("sgd_nesterov_wd", SGD, 0.03, momentum=0.9, nesterov=1,
         weight_decay=5e-3),
    case("adam_default", ADAM, 1e-2),
    case("adam_betas_eps_wd", ADAM, 2e-2, beta1=0.8, beta2=0.95, eps=1e-6,
         weight_decay=1e-2),
    case("adamw_default", ADAMW, 1e-2, weight_decay=1e-2),
    case("adamw_groups", ADAMW, 1e-2, weight_decay=0.1,
         groups=[("nodecay", 2), ("add", 5e-3, 0.1)], assign=NODECAY_SPLIT),
    case("adam_groups_l2", ADAM, 1e-2, weight_decay=0.05,
         groups=[("add", 2e-2, 0.0), ("add", 3e-3, 0.2)],
         assign=[2, 1, 0, 1]),
    case("lion_default", LION, 1e-3),
    case("lion_betas_wd", LION, 2e-3, beta1=0.95, beta2=0.98,
         weight_decay=0.1),
    case("lion_groups_restarts", LION, 2e-3, weight_decay=0.5,
         groups=[("nodecay", 2)], assign=[0, 1, 1, 0],
         schedule=sched(COSINE_WITH_RESTARTS, warmup=5, training=110,
                        num_cycles=3.0)),
    case("adamw_linear_warmup", ADAMW, 1e-2, weight_decay=1e-2,
         schedule=sched(LINEAR, warmup=10, training=100)),
    case("adamw_cosine_clipnorm", ADAMW, 1e-2, weight_decay=1e-2,
         schedule=sched(COSINE, warmup=5, training=120),
         clip=(CLIP_NORM, 1.0)),
    case("sgd_momentum_clipvalue_poly", SGD, 0.05, momentum=0.9,
         weight_decay=1e-3,
         schedule=sched(POLYNOMIAL, warmup=10, training=100, lr_end=1e-3,
                        power=2.0),
         clip=(CLIP_VALUE, 0.5)),
    case("sgd_nesterov_clipnorm_some", SGD, 0.02, momentum=0.8, nesterov=1,
         schedule=sched(CONSTANT_WITH_WARMUP, warmup=7),
         clip=(CLIP_NORM, 9.0)),
    case("adamw_groups_minlr_clipnorm", ADAMW, 1e-2, weight_decay=0.1,
         groups=[("nodecay", 2), ("add", 5e-3, 0.1)], assign=NODECAY_SPLIT,
         schedule=sched(COSINE, warmup=8, training=120, min_lr=1e-3),
         clip=(CLIP_NORM, 9.0)),
    case("sgd_momentum_groups_invsqrt", SGD, 0.05, momentum=0.9,
         weight_decay=1e-2,
         groups=[("nodecay", 2), ("add", 0.1, 0.0)], assign=[0, 1, 1, 2],
         schedule=sched(INVERSE_SQRT, warmup=10)),
]

HF_NAME = {CONSTANT: "constant", CONSTANT_WITH_WARMUP: "constant_with_warmup",
           LINEAR: "linear", COSINE: "cosine",
           COSINE_WITH_RESTARTS: "cosine_with_restarts",
           POLYNOMIAL: "polynomial", INVERSE_SQRT: "inverse_sqrt"}


def hf_scheduler(optimizer, s):
    """transformers.get_scheduler for tdm_schedule_options s; returns the
    scheduler and its transformers name."""
    kind, kw = s["kind"], {}
    name = HF_NAME[kind]
    if kind == COSINE and s["min_lr"] > 0:
        name = "cosine_with_min_lr"
        kw["min_lr"] = s["min_lr"]
    if kind in (COSINE, COSINE_WITH_RESTARTS) and s["num_cycles"] >= 0:
        kw["num_cycles"] = s["num_cycles"]
    if kind == POLYNOMIAL:
        if s["lr_end"] >= 0:
            kw["lr_end"] = s["lr_end"]
        if s["power"] >= 0:
            kw["power"] = s["power"]
    if kind == INVERSE_SQRT and s["timescale"] >= 0:
        kw["timescale"] = s["timescale"]
    training = s["training"] if kind in (LINEAR, COSINE, COSINE_WITH_RESTARTS,
                                         POLYNOMIAL) else None
    return get_scheduler(name, optimizer, num_warmup_steps=s["warmup"],
                         num_training_steps=training,
                         scheduler_specific_kwargs=kw), name


def make_optimizer(c, params):
    groups = [[] for _ in range(1 + len(c["groups"]))]
    for k, g in enumerate(c["assign"]):
        groups[g].append(params[k])
    pg = [{"params": groups[0]}]
    for spec, members in zip(c["groups"], groups[1:]):
        if spec[0] == "nodecay":
            assert len(members) == spec[1]
            pg.append({"params": members, "weight_decay": 0.0})
        else:
            pg.append({"params": members, "lr": spec[1],
                       "weight_decay": spec[2]})
    pg = [g for g in pg if g["params"]]
    kind, lr, wd = c["kind"], c["lr"], c["weight_decay"]
    b1 = lambda d: d if c["beta1"] < 0 else c["beta1"]
    b2 = lambda d: d if c["beta2"] < 0 else c["beta2"]
    eps = 1e-8 if c["eps"] < 0 else c["eps"]
    if kind == SGD:
        return torch.optim.SGD(pg, lr=lr, momentum=c["momentum"],
                               dampening=c["dampening"],
                               nesterov=bool(c["nesterov"]),
                               weight_decay=wd, foreach=False)
    if kind == ADAM:
        return torch.optim.Adam(pg, lr=lr, betas=(b1(0.9), b2(0.999)),
                                eps=eps, weight_decay=wd, foreach=False)
    if kind == ADAMW:
        return torch.optim.AdamW(pg, lr=lr, betas=(b1(0.9), b2(0.999)),
                                 eps=eps, weight_decay=wd, foreach=False)
    if kind == LION:
        return lion_pytorch.Lion(pg, lr=lr, betas=(b1(0.9), b2(0.99)),
                                 weight_decay=wd)
    raise ValueError(kind)


def run_case(c, init, perturb=None):
    """Runs case c from init; returns (lrs, norms, {step: flat values}).
    perturb(t, grads) may change the gradients in place (--check)."""
    params = [torch.nn.Parameter(v.clone()) for v in init]
    opt = make_optimizer(c, params)
    scheduler = hf_scheduler(opt, c["schedule"])[0] if c["schedule"] else None
    lrs, norms, snaps = [], [], {}
    for t in range(c["steps"]):
        grads = gradients(params, t)
        if perturb:
            perturb(t, grads)
        for p, g in zip(params, grads):
            p.grad = g
        mode, value = c["clip"]
        if mode == CLIP_NORM:
            n = torch.nn.utils.clip_grad_norm_(params, value, foreach=False)
            norms.append(float(n))
        elif mode == CLIP_VALUE:
            torch.nn.utils.clip_grad_value_(params, value, foreach=False)
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if scheduler:
            scheduler.step()
        if t + 1 in c["checkpoints"]:
            snaps[t + 1] = torch.cat([p.detach().reshape(-1) for p in params])
    return lrs, norms, snaps


# Schedules alone: (tdm kind, fields); -1 fields mean tandem's default.
SCHEDULES = [
    (CONSTANT, dict()),
    (CONSTANT_WITH_WARMUP, dict(warmup=0)),
    (CONSTANT_WITH_WARMUP, dict(warmup=1)),
    (CONSTANT_WITH_WARMUP, dict(warmup=25)),
    (LINEAR, dict(warmup=0, training=100)),
    (LINEAR, dict(warmup=10, training=100)),
    (LINEAR, dict(warmup=1, training=150)),
    (COSINE, dict(warmup=0, training=100)),
    (COSINE, dict(warmup=10, training=160)),
    (COSINE, dict(warmup=10, training=100, num_cycles=0.5)),
    (COSINE, dict(warmup=5, training=90, num_cycles=1.5)),
    (COSINE, dict(warmup=5, training=90, num_cycles=0.25)),
    (COSINE, dict(warmup=0, training=100, min_lr=1e-4)),
    (COSINE, dict(warmup=12, training=130, min_lr=5e-5, num_cycles=0.5)),
    (COSINE, dict(warmup=12, training=130, min_lr=2e-4, num_cycles=1.25)),
    (COSINE_WITH_RESTARTS, dict(warmup=0, training=100)),
    (COSINE_WITH_RESTARTS, dict(warmup=10, training=120, num_cycles=3.0)),
    (COSINE_WITH_RESTARTS, dict(warmup=4, training=160, num_cycles=2.5)),
    (POLYNOMIAL, dict(warmup=0, training=100)),
    (POLYNOMIAL, dict(warmup=10, training=100, lr_end=1e-5, power=2.0)),
    (POLYNOMIAL, dict(warmup=5, training=140, lr_end=1e-4, power=0.5)),
    (POLYNOMIAL, dict(warmup=0, training=80, lr_end=0.0, power=3.0)),
    (INVERSE_SQRT, dict(warmup=0)),
    (INVERSE_SQRT, dict(warmup=10)),
    (INVERSE_SQRT, dict(warmup=10, timescale=40)),
    (INVERSE_SQRT, dict(warmup=0, timescale=25)),
]
SCHEDULE_STEPS = 151
SCHEDULE_BASE_LR = 1e-3


def schedule_factors(s, steps, base_lr):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    scheduler, name = hf_scheduler(opt, s)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"] / base_lr)
        opt.step()
        scheduler.step()
    return name, out


def bits(x):
    return struct.unpack("<I", struct.pack("<f", float(x)))[0]


def f32_block(values):
    words = ["%08x" % bits(v) for v in values.tolist()]
    return ["".join(w + (" " if (k + 1) % 10 else "\n")
                    for k, w in enumerate(words)).rstrip() + "\n"]


def dbl(x):
    x = float(x)
    assert math.isfinite(x)
    return repr(x)


def dbl_block(values):
    out, line = [], []
    for v in values:
        line.append(dbl(v))
        if len(line) == 6:
            out.append(" ".join(line) + "\n")
            line = []
    if line:
        out.append(" ".join(line) + "\n")
    return out


def lion_margin(c, init):
    """Smallest |beta1*m + (1-beta1)*g| relative to its terms over a Lion
    run: how close the reference came to a sign flip."""
    params = [torch.nn.Parameter(v.clone()) for v in init]
    opt = make_optimizer(c, params)
    scheduler = hf_scheduler(opt, c["schedule"])[0] if c["schedule"] else None
    worst = math.inf
    b1 = opt.param_groups[0]["betas"][0]
    for t in range(c["steps"]):
        for p, g in zip(params, gradients(params, t)):
            p.grad = g
            m = opt.state[p]["exp_avg"].double() if opt.state[p] else \
                torch.zeros_like(g, dtype=torch.float64)
            a, b = b1 * m, (1 - b1) * g.double()
            r = (a + b).abs() / (a.abs() + b.abs())
            worst = min(worst, float(r.min()))
        opt.step()
        if scheduler:
            scheduler.step()
    return worst


def check(init):
    """Sensitivity of each case to a relative 2^-23 perturbation of every
    gradient (what a different rounding of the reduced gradient does)."""
    for c in CASES:
        ref = run_case(c, init)[2]
        gen = torch.Generator().manual_seed(1)

        def perturb(t, grads):
            for g in grads:
                e = torch.randint(-1, 2, g.shape, generator=gen)
                g.mul_(1 + e.to(torch.float32) * 2.0 ** -23)

        got = run_case(c, init, perturb)[2]
        worst = 0.0
        for s in ref:
            d = (got[s].double() - ref[s].double()).abs()
            worst = max(worst, float((d / ref[s].double().abs().clamp(
                min=1.0)).max()))
        extra = ""
        if c["kind"] == LION:
            extra = " lion sign margin %.3g" % lion_margin(c, init)
        print("%-32s max rel change %.3g%s" % (c["name"], worst, extra))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    init = initial_values()
    if args.check:
        check(init)
        return

    L = []
    L.append("# optim_ref.txt - PyTorch reference values for tandem's "
             "optimizers, schedules\n")
    L.append("# and gradient clipping.  Generated by tests/gen_optim_ref.py "
             "(do not edit);\n")
    L.append("# the format is described there.  torch %s, transformers %s, "
             "lion-pytorch %s.\n" % (torch.__version__.split("+")[0],
                                     transformers.__version__,
                                     getattr(lion_pytorch, "__version__",
                                             _lion_version())))
    L.append("# Gradient at step t of element i (over all parameters in "
             "order):\n")
    L.append("#   g = p * 0.5f + ((h % 2001) - 1000) * 2^-10, "
             "h = t*131 + i*31 + (t*i) % 97\n")
    L.append("tandem_optim_ref 1\n")
    L.append("params %d\n" % NP)
    for name, module, shape in PARAMS:
        L.append("param %s %s %d %s\n" % (name, module, len(shape),
                                          " ".join(map(str, shape))))
    L.append("init %d\n" % TOTAL)
    L += f32_block(torch.cat([v.reshape(-1) for v in init]))

    L.append("cases %d\n" % len(CASES))
    for c in CASES:
        lrs, norms, snaps = run_case(c, init)
        L.append("\ncase %s\n" % c["name"])
        L.append("kind %d lr %s momentum %s dampening %s nesterov %d "
                 "weight_decay %s beta1 %s beta2 %s eps %s\n" % (
                     c["kind"], dbl(c["lr"]), dbl(c["momentum"]),
                     dbl(c["dampening"]), c["nesterov"],
                     dbl(c["weight_decay"]), dbl(c["beta1"]),
                     dbl(c["beta2"]), dbl(c["eps"])))
        L.append("groups %d\n" % len(c["groups"]))
        for g in c["groups"]:
            if g[0] == "nodecay":
                L.append("group nodecay %d\n" % g[1])
            else:
                L.append("group add %s %s\n" % (dbl(g[1]), dbl(g[2])))
        L.append("assign %s\n" % " ".join(map(str, c["assign"])))
        s = c["schedule"] or sched(-1)
        L.append("schedule %d warmup %d training %d num_cycles %s min_lr %s "
                 "lr_end %s power %s timescale %d\n" % (
                     s["kind"], s["warmup"], s["training"],
                     dbl(s["num_cycles"]), dbl(s["min_lr"]),
                     dbl(s["lr_end"]), dbl(s["power"]), s["timescale"]))
        L.append("clip %d %s\n" % (c["clip"][0], dbl(c["clip"][1])))
        L.append("steps %d\n" % c["steps"])
        L.append("lr\n")
        L += dbl_block(lrs)
        if c["clip"][0] == CLIP_NORM:
            L.append("norm\n")
            L += dbl_block(norms)
        L.append("checkpoints %d\n" % len(snaps))
        for step in sorted(snaps):
            L.append("after %d\n" % step)
            L += f32_block(snaps[step])

    L.append("\nschedules %d\n" % len(SCHEDULES))
    for kind, fields in SCHEDULES:
        s = sched(kind, **fields)
        name, factors = schedule_factors(s, SCHEDULE_STEPS, SCHEDULE_BASE_LR)
        L.append("sched %s kind %d warmup %d training %d num_cycles %s "
                 "min_lr %s lr_end %s power %s timescale %d base_lr %s "
                 "steps %d\n" % (
                     name, kind, s["warmup"], s["training"],
                     dbl(s["num_cycles"]), dbl(s["min_lr"]),
                     dbl(s["lr_end"]), dbl(s["power"]), s["timescale"],
                     dbl(SCHEDULE_BASE_LR), SCHEDULE_STEPS))
        L += dbl_block(factors)
    L.append("end\n")

    with open(OUT, "w", newline="\n") as f:
        f.writelines(L)
    print("wrote %s (%d cases, %d schedules)" % (OUT, len(CASES),
                                                  len(SCHEDULES)))


def _lion_version():
    try:
        from importlib.metadata import version
        return version("lion-pytorch")
    except Exception:  # pragma: no cover
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
