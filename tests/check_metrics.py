#!/usr/bin/env python3
"""Reads back what examples/mlp wrote to TANDEM_METRICS_DIR, with the
tensorboard package's EventAccumulator (it checks each record's masked
CRC32C) and json, and checks it against independent references:

  check_metrics.py DIR STDOUT_LOG WORLD_SIZE STEPS

- tags: loss and the engine's tandem/... scalars;
- loss: one value at each step 0..STEPS-1, equal to the JSON lines' (to
  float32) and to the losses the program printed (step N loss X);
- tandem/lr is the example's 0.05, tandem/loss_scale 1, no skipped step;
- tandem/memory/params_bytes at least 4 x the MLP's parameter count
  (10x64 + 64 + 64 + 1; tensors are padded to alignment), and the
  gradients and SGD-momentum's state the same size;
- tandem/comm_bytes per step: a ring allreduce of those gradient bytes S,
  2 S (N-1)/N, within a few bytes of rounding;
"""
import json
import math
import os
import re
import sys

from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator)

d, log, world, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
numel = 10 * 64 + 64 + 64 + 1
fails = []


def check(cond, what):
    if not cond:
        fails.append(what)


files = [f for f in os.listdir(d) if "tfevents" in f]
check(len(files) == 1, "one event file, got %s" % files)
acc = EventAccumulator(d, size_guidance={"scalars": 0})
acc.Reload()
tags = set(acc.Tags()["scalars"])
want = {"loss", "tandem/lr", "tandem/loss_scale", "tandem/skipped_steps",
        "tandem/step_time_s", "tandem/comm_bytes",
        "tandem/memory/params_bytes", "tandem/memory/optimizer_state_bytes",
        "tandem/memory/peak_bytes"}
check(want <= tags, "tags missing: %s" % sorted(want - tags))


def scalars(tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in tags else []


loss = scalars("loss")
check([s for s, _ in loss] == list(range(steps)),
      "loss steps %s" % [s for s, _ in loss][:10])

lines = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
jloss = {l["step"]: l["loss"] for l in lines if "loss" in l}
for s, v in loss:
    check(abs(v - jloss.get(s, math.nan)) <= 1e-7 * max(1, abs(v)),
          "step %d: event %r, json %r" % (s, v, jloss.get(s)))
printed = {int(m.group(1)): float(m.group(2))
           for m in re.finditer(r"step +(\d+) +loss ([0-9.eE+-]+)",
                                open(log).read())}
check(len(printed) >= 2, "printed losses: %s" % printed)
for s, v in printed.items():
    check(abs(jloss.get(s, math.nan) - v) <= 1e-6 * max(1, abs(v)),
          "step %d: json %r, printed %r" % (s, jloss.get(s), v))

check(all(abs(v - 0.05) < 1e-7 for _, v in scalars("tandem/lr")), "lr")
check(all(v == 1 for _, v in scalars("tandem/loss_scale")), "loss scale")
check(all(v == 0 for _, v in scalars("tandem/skipped_steps")), "skipped")
grads = scalars("tandem/memory/grads_bytes")
ring = 2 * (grads[0][1] if grads else math.nan) * (world - 1) / world
comm = scalars("tandem/comm_bytes")
check(len(comm) == steps and all(abs(v - ring) <= 4 for _, v in comm),
      "comm bytes %s, want %g" % (comm[:3], ring))
params = scalars("tandem/memory/params_bytes")
state = dict(scalars("tandem/memory/optimizer_state_bytes"))
check(params and all(4 * numel <= v < 4 * numel + 4096 for _, v in params),
      "params bytes %s" % params[:3])
check(all(state.get(s) == v for s, v in params), "state != params bytes")
check(dict(grads) == dict(params), "grads != params bytes")
times = scalars("tandem/step_time_s")
check(len(times) == steps - 1 and all(0 < v < 60 for _, v in times),
      "step times %s" % times[:3])

for f in fails:
    print("FAIL:", f)
print("check_metrics: %d tags, %d loss points, %s" %
      (len(tags), len(loss), "FAIL" if fails else "PASS"))
sys.exit(1 if fails else 0)
