"""Checks `tandem convert` against Python for tests/cli.sh:

  check_convert.py ORIG MERGED SPLIT_DIR MAX_BYTES F16_FILE

ORIG is gen_cli_weights.py's model.safetensors.  MERGED must hold its
tensors bit for bit (tandem merged the shards); SPLIT_DIR is the bf16
export split into shards of at most MAX_BYTES data bytes, with an index
naming every tensor; F16_FILE is the f16 export.  The 16-bit values are
checked against rounding written here (bf16: round to nearest even on
the f32 bits; f16: numpy's), from f32 (f64 goes through f32 first);
integer tensors are copied.  The files are parsed by hand as well, as
numpy has no bfloat16.
"""
import json
import os
import struct
import sys

import numpy as np
from safetensors.numpy import load_file

orig_path, merged_path, split_dir, max_bytes, f16_path = sys.argv[1:6]
max_bytes = int(max_bytes)
orig = load_file(orig_path)


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def read_raw(path):
    """name -> (dtype string, shape, raw bytes), in data order."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items()}


def bf16_bits(a):
    bits = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def check_16bit(name, raw, want_dtype):
    dtype, shape, data = raw
    a = orig[name]
    if a.dtype.kind != "f":
        if dtype != {"int64": "I64"}[str(a.dtype)] or data != a.tobytes():
            fail("%s: the integer tensor changed" % name)
        return
    if dtype != want_dtype or list(shape) != list(a.shape):
        fail("%s: %s %s, want %s %s" % (name, dtype, shape, want_dtype, list(a.shape)))
    got = np.frombuffer(data, dtype=np.uint16)
    f32 = a.astype(np.float32)
    want = bf16_bits(f32) if want_dtype == "BF16" else f32.astype(np.float16).view(np.uint16)
    if not np.array_equal(got, want.reshape(-1)):
        bad = int(np.sum(got != want.reshape(-1)))
        fail("%s: %d of %d %s values differ from round to nearest even" % (name, bad, got.size, want_dtype))


merged = load_file(merged_path)
if sorted(merged) != sorted(orig):
    fail("merged names %s, want %s" % (sorted(merged), sorted(orig)))
for k, v in orig.items():
    if merged[k].dtype != v.dtype or merged[k].shape != v.shape or merged[k].tobytes() != v.tobytes():
        fail("merged %s differs" % k)

with open(os.path.join(split_dir, "model.safetensors.index.json")) as f:
    index = json.load(f)
wmap = index["weight_map"]
if sorted(wmap) != sorted(orig):
    fail("the index names %s" % sorted(wmap))
seen = {}
for shard in sorted(set(wmap.values())):
    raw = read_raw(os.path.join(split_dir, shard))
    size = sum(len(v[2]) for v in raw.values())
    if size > max_bytes and len(raw) > 1:
        fail("%s holds %d data bytes, more than %d" % (shard, size, max_bytes))
    for name, r in raw.items():
        if wmap[name] != shard:
            fail("%s is in %s, the index says %s" % (name, shard, wmap[name]))
        seen[name] = r
if sorted(seen) != sorted(orig):
    fail("the shards hold %s" % sorted(seen))
total = sum(len(v[2]) for v in seen.values())
if index["metadata"]["total_size"] != total:
    fail("total_size %d, the shards hold %d" % (index["metadata"]["total_size"], total))
for name, r in seen.items():
    check_16bit(name, r, "BF16")
for name, r in read_raw(f16_path).items():
    check_16bit(name, r, "F16")
print("ok: merged bit for bit; bf16 in %d shards; f16" % len(set(wmap.values())))
