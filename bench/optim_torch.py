#!/usr/bin/env python3
"""optim_torch.py - the PyTorch baseline of bench/optim.

Times torch.optim.AdamW(foreach=True) on one float32 parameter of N
elements whose gradient is set once (torch never zeroes it between steps),
at each requested thread count (torch.set_num_threads).  Run alone, it
prints one machine-readable line per measurement:

    torch_adamw version=V
    torch_adamw impl=foreach threads=T n=N iters=I median_ms=M min_ms=B

or, when torch cannot be imported, "torch_adamw missing reason=...".
bench/optim runs it with --serve instead: after the version line it times
one step per request read from stdin, so that the benchmark's rounds
interleave torch with tandem (see serve()).

Before every timed step it reads a clean buffer of FLUSH_MB (default 128)
MiB, outside the timed region, so that each step starts with its arrays
out of cache and no dirty lines of the previous step in it, as bench/optim
does for tandem.  --impl fused measures torch's fused CPU kernel
(fused=True) too.  See bench/README.md.

    python3 bench/optim_torch.py --n 16777216 --threads 1,2 --impl foreach,fused
"""
import argparse
import statistics
import sys
import time


def make(torch, n, impl, device="cpu"):
    """One float32 parameter of n elements, its gradient set once, and
    torch.optim.AdamW over it (lr 1e-3, weight_decay 0.01, as bench/optim)."""
    gen = torch.Generator().manual_seed(1234)
    param = torch.nn.Parameter((torch.randn(n, generator=gen) * 0.05).to(device))
    param.grad = torch.randn(n, generator=gen).to(device)
    kwargs = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
              "weight_decay": 0.01}
    if impl == "fused":
        kwargs["fused"] = True
    elif impl == "foreach":
        kwargs["foreach"] = True
    else:
        raise ValueError(impl)
    return torch.optim.AdamW([param], **kwargs), param


def timed_step(opt, flush, sync=None):
    """Milliseconds of one opt.step(), after reading the flush buffer; on a
    GPU (sync: torch.cuda.synchronize) from an idle device to the step's
    end."""
    if flush is not None:
        flush.sum()  # evicts the previous step's lines; not timed
    if sync:
        sync()
    t0 = time.perf_counter()
    opt.step()
    if sync:
        sync()
    return (time.perf_counter() - t0) * 1e3


def measure(torch, n, threads, iters, warmup, impl, flush, device="cpu"):
    torch.set_num_threads(threads)
    opt, _ = make(torch, n, impl, device)
    sync = torch.cuda.synchronize if device == "cuda" else None
    times = [timed_step(opt, flush, sync)
             for _ in range(warmup + iters)][warmup:]
    return statistics.median(times), min(times)


def serve(torch, n, flush):
    """bench/optim's mode: one timed step per request, so that its rounds
    interleave torch with tandem and the triad.  Requests on stdin:
    'step IMPL THREADS' -> 'ms T' or 'error NAME'; 'quit'.  Each IMPL gets
    one parameter and optimizer, created (and stepped twice, untimed) at
    its first request."""
    opts = {}
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] != "step" or len(words) != 3:
            print("error BadRequest", flush=True)
            continue
        impl, threads = words[1], int(words[2])
        try:
            torch.set_num_threads(threads)
            if impl not in opts:
                opts[impl] = make(torch, n, impl)
                for _ in range(2):
                    opts[impl][0].step()
            ms = timed_step(opts[impl][0], flush)
        except Exception as e:  # e.g. fused=True unsupported here
            print("error %s" % type(e).__name__, flush=True)
            continue
        print("ms %.6f" % ms, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16777216,
                    help="parameter elements (default 16M)")
    ap.add_argument("--threads", default="1",
                    help="comma-separated torch thread counts (default 1)")
    ap.add_argument("--iters", type=int, default=15,
                    help="timed steps per measurement (default 15)")
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed steps first (default 3)")
    ap.add_argument("--impl", default="foreach",
                    help="comma-separated: foreach, fused (default foreach)")
    ap.add_argument("--flush-mb", type=int, default=128,
                    help="MiB read between steps to evict caches; 0: none")
    ap.add_argument("--device", default="cpu",
                    help="cpu, or cuda (bench/optim_gpu; no cache flush)")
    ap.add_argument("--serve", action="store_true",
                    help="answer bench/optim's step requests on stdin")
    a = ap.parse_args()
    try:
        import torch
    except Exception as e:  # ImportError, or a broken install
        print("torch_adamw missing reason=%s" % type(e).__name__, flush=True)
        return 0
    flush = None
    if a.flush_mb > 0 and a.device == "cpu":
        flush = torch.ones(a.flush_mb * (1 << 20) // 4, dtype=torch.float32)
    print("torch_adamw version=%s" % torch.__version__, flush=True)
    if a.serve:
        serve(torch, a.n, flush)
        return 0
    for impl in a.impl.split(","):
        for t in (int(x) for x in a.threads.split(",")):
            try:
                med, best = measure(torch, a.n, t, a.iters, a.warmup, impl,
                                    flush, a.device)
            except Exception as e:  # e.g. fused=True unsupported on CPU
                print("torch_adamw impl=%s threads=%d error=%s"
                      % (impl, t, type(e).__name__))
                continue
            print("torch_adamw impl=%s threads=%d n=%d iters=%d "
                  "median_ms=%.4f min_ms=%.4f"
                  % (impl, t, a.n, a.iters, med, best))
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
