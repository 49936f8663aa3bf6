#!/usr/bin/env python3
"""Checks a tandem checkpoint with the Python safetensors library:

  check_safetensors_interop.py ROOT [--world-size N] [--zero-stage S]
                               [--step K] [--max-shard-bytes B]

ROOT is what mpi-tests/ckpt_export wrote: ROOT/checkpoint-K (a checkpoint
of examples/mlp's model trained K steps with AdamW) and ROOT/gathered
(tdm_gather_param's values of each parameter, raw little-endian float32,
and shapes.txt).  Asserts that
  - the folder is complete (its done marker) and holds model.safetensors,
    or model.safetensors.index.json and the shards it names, not both;
  - the model holds exactly fc1.weight, fc1.bias, fc2.weight, fc2.bias,
    float32, with the shapes of shapes.txt and bitwise the gathered
    values (loaded with safetensors.numpy.load_file, or safe_open(...,
    framework="numpy") per shard);
  - the index's metadata.total_size is the sum of the tensors' bytes, its
    weight_map names every tensor and only those, and each shard holds
    exactly the tensors the map sends to it (within --max-shard-bytes,
    unless one tensor alone is bigger);
  - optimizer.safetensors holds "<name>.exp_avg" and "<name>.exp_avg_sq"
    of every parameter, float32 with the parameter's shape, finite,
    exp_avg_sq >= 0, and nothing else;
  - state.json says step K, world_size N, zero_stage S (default 10, 3, 3).
Needs only numpy and safetensors.  Prints "ok" and exits 0, or prints
"FAIL: ..." and exits 1.
"""
import argparse
import json
import os
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

NAMES = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def read_gathered(root):
    gdir = os.path.join(root, "gathered")
    shapes = {}
    with open(os.path.join(gdir, "shapes.txt")) as f:
        for line in f:
            parts = line.split()
            if parts:
                shapes[parts[0]] = tuple(int(d) for d in parts[1:])
    check(sorted(shapes) == sorted(NAMES),
          "gathered/shapes.txt names %s, expected %s" % (sorted(shapes), sorted(NAMES)))
    values = {}
    for name, shape in shapes.items():
        raw = np.fromfile(os.path.join(gdir, name + ".f32"), dtype="<f4")
        check(raw.size == int(np.prod(shape)),
              "gathered/%s.f32 holds %d values, shape %s wants %d"
              % (name, raw.size, shape, int(np.prod(shape))))
        values[name] = raw.reshape(shape)
    return shapes, values


def load_model(ckpt, max_shard):
    """The model's tensors by name, and the files they came from."""
    single = os.path.join(ckpt, "model.safetensors")
    index = os.path.join(ckpt, "model.safetensors.index.json")
    has_single, has_index = os.path.isfile(single), os.path.isfile(index)
    check(has_single != has_index,
          "%s holds %s" % (ckpt, "both model.safetensors and the index" if has_single
                           else "neither model.safetensors nor the index"))
    if has_single:
        return load_file(single), None
    with open(index) as f:
        idx = json.load(f)
    check(isinstance(idx.get("weight_map"), dict), "index: no weight_map object")
    check(isinstance(idx.get("metadata"), dict) and "total_size" in idx["metadata"],
          "index: no metadata.total_size")
    wmap = idx["weight_map"]
    check(sorted(wmap) == sorted(NAMES),
          "index: weight_map names %s, expected %s" % (sorted(wmap), sorted(NAMES)))
    shards = sorted(set(wmap.values()))
    for k, shard in enumerate(shards):
        want = "model-%05d-of-%05d.safetensors" % (k + 1, len(shards))
        check(shard == want, "index: shard %d is %s, expected %s" % (k + 1, shard, want))
    tensors = {}
    for shard in shards:
        path = os.path.join(ckpt, shard)
        check(os.path.isfile(path), "index names %s, which is missing" % shard)
        with safe_open(path, framework="numpy") as f:
            keys = sorted(f.keys())
            mapped = sorted(n for n, s in wmap.items() if s == shard)
            check(keys == mapped, "%s holds %s, the index maps %s to it"
                  % (shard, keys, mapped))
            check((f.metadata() or {}).get("format") == "pt",
                  "%s: metadata %s lacks format=pt" % (shard, f.metadata()))
            for key in keys:
                tensors[key] = f.get_tensor(key)
        shard_bytes = sum(tensors[k].nbytes for k in keys)
        if max_shard and len(keys) > 1:
            check(shard_bytes <= max_shard, "%s holds %d tensor bytes, over "
                  "max_shard_bytes %d" % (shard, shard_bytes, max_shard))
    total = sum(t.nbytes for t in tensors.values())
    check(idx["metadata"]["total_size"] == total,
          "index: metadata.total_size %s, the tensors have %d bytes"
          % (idx["metadata"]["total_size"], total))
    return tensors, shards


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--step", type=int, default=10)
    ap.add_argument("--world-size", type=int, default=3)
    ap.add_argument("--zero-stage", type=int, default=3)
    ap.add_argument("--max-shard-bytes", type=int, default=0)
    a = ap.parse_args()
    ckpt = os.path.join(a.root, "checkpoint-%d" % a.step)
    check(os.path.isdir(ckpt), "%s is not a folder" % ckpt)
    check(os.path.isfile(os.path.join(ckpt, "done")), "%s has no done marker" % ckpt)
    shapes, gathered = read_gathered(a.root)

    model, shards = load_model(ckpt, a.max_shard_bytes)
    if a.max_shard_bytes:
        check(shards is not None, "max_shard_bytes %d, but one model.safetensors "
              "was written" % a.max_shard_bytes)
        check(len(shards) > 1, "max_shard_bytes %d gave one shard"
              % a.max_shard_bytes)
    check(sorted(model) == sorted(NAMES),
          "model tensors %s, expected %s" % (sorted(model), sorted(NAMES)))
    for name in NAMES:
        t = model[name]
        check(t.dtype == np.float32, "%s is %s, expected float32" % (name, t.dtype))
        check(t.shape == shapes[name], "%s has shape %s, expected %s"
              % (name, t.shape, shapes[name]))
        g = gathered[name]
        same = np.ascontiguousarray(t).view(np.uint32) == g.view(np.uint32)
        if not same.all():
            i = int(np.argmin(same.reshape(-1)))
            raise Fail("%s differs from tdm_gather_param's values in %d of %d "
                       "elements (first at flat index %d: %r vs %r)"
                       % (name, int((~same).sum()), same.size, i,
                          float(t.reshape(-1)[i]), float(g.reshape(-1)[i])))
        check(np.isfinite(t).all(), "%s has non-finite values" % name)

    opt = load_file(os.path.join(ckpt, "optimizer.safetensors"))
    want = sorted(n + s for n in NAMES for s in (".exp_avg", ".exp_avg_sq"))
    check(sorted(opt) == want, "optimizer.safetensors holds %s, expected %s"
          % (sorted(opt), want))
    for name in NAMES:
        for s in (".exp_avg", ".exp_avg_sq"):
            t = opt[name + s]
            check(t.dtype == np.float32, "%s%s is %s" % (name, s, t.dtype))
            check(t.shape == shapes[name], "%s%s has shape %s, expected %s"
                  % (name, s, t.shape, shapes[name]))
            check(np.isfinite(t).all(), "%s%s has non-finite values" % (name, s))
            check(np.any(t != 0), "%s%s is all zeros after %d steps"
                  % (name, s, a.step))
        check((opt[name + ".exp_avg_sq"] >= 0).all(),
              "%s.exp_avg_sq has negative values" % name)

    with open(os.path.join(ckpt, "state.json")) as f:
        state = json.load(f)
    for key, value in (("step", a.step), ("world_size", a.world_size),
                       ("zero_stage", a.zero_stage)):
        check(state.get(key) == value, "state.json: %s is %r, expected %r"
              % (key, state.get(key), value))
    check((state.get("optimizer") or {}).get("kind") == "adamw",
          "state.json: optimizer.kind is %r, expected 'adamw'"
          % (state.get("optimizer") or {}).get("kind"))
    check(state.get("model_files") == (len(shards) if shards else 1),
          "state.json: model_files is %r, %d model files were written"
          % (state.get("model_files"), len(shards) if shards else 1))


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        print("FAIL: %s" % e)
        sys.exit(1)
    except Exception as e:  # a file that does not parse, a missing file
        print("FAIL: %s: %s" % (type(e).__name__, e))
        sys.exit(1)
    print("ok")
