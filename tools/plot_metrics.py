#!/usr/bin/env python3
"""Plots a tandem run's metrics.jsonl (written under TANDEM_METRICS_DIR):

    tools/plot_metrics.py runs/mlp/metrics.jsonl -o loss.png [--tags a,b,...]

One panel per tag, against the step: by default the program's own
scalars (those not named tandem/...) first, then tandem/lr,
tandem/step_time_s (with its steps per second) and the memory the rank
holds, in MB.  Lines whose value is null (inf or NaN) leave gaps.
Needs matplotlib (Debian: python3-matplotlib); tandem itself never needs
Python.
"""
import argparse
import json
import math
import sys


def read(path):
    series = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit("%s:%d: not JSON: %s" % (path, n, e))
            step = rec.get("step")
            if not isinstance(step, int):
                sys.exit("%s:%d: no integer step" % (path, n))
            for k, v in rec.items():
                if k in ("step", "time"):
                    continue
                series.setdefault(k, []).append(
                    (step, math.nan if v is None else float(v)))
    return series


def default_tags(series):
    own = sorted(k for k in series if not k.startswith("tandem/"))
    engine = [k for k in ("tandem/lr", "tandem/step_time_s",
                          "tandem/memory/peak_bytes") if k in series]
    return own + engine


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("metrics", help="a metrics.jsonl file")
    ap.add_argument("-o", "--output", default="metrics.png")
    ap.add_argument("--tags", help="comma-separated tags (default: see above)")
    ap.add_argument("--title", default=None)
    a = ap.parse_args()
    series = read(a.metrics)
    tags = a.tags.split(",") if a.tags else default_tags(series)
    missing = [t for t in tags if t not in series]
    if missing or not tags:
        sys.exit("no such tag: %s (the file has: %s)" %
                 (", ".join(missing) or "(none)", ", ".join(sorted(series))))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(tags), 1, figsize=(7, 2.2 * len(tags)),
                             sharex=True, squeeze=False)
    for ax, tag in zip(axes[:, 0], tags):
        pts = sorted(series[tag])
        xs = [s for s, _ in pts]
        ys = [v for _, v in pts]
        label = tag
        if tag.endswith("_bytes"):
            ys = [v / 1e6 for v in ys]
            label = tag[:-len("_bytes")] + " (MB)"
        elif tag == "tandem/step_time_s":
            ys = [v * 1e3 for v in ys]
            label = "step time (ms)"
            good = [v for v in ys if v > 0]
            if good:
                label += ", median %.0f steps/s" % (
                    1e3 / sorted(good)[len(good) // 2])
        ax.plot(xs, ys, lw=1.2)
        if tag == "loss" or tag.endswith("/loss"):
            if all(v > 0 for v in ys if not math.isnan(v)):
                ax.set_yscale("log")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(a.title or a.metrics, fontsize=9)
    fig.tight_layout()
    fig.savefig(a.output, dpi=110)
    print("%s: %d panels, %d steps" % (a.output, len(tags),
                                         len(series[tags[0]])))


if __name__ == "__main__":
    main()
