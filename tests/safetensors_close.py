#!/usr/bin/env python3
"""safetensors_close.py A B REL [SUFFIX:BEGIN:END ...]: every tensor of
A is in B with the same dtype and shape, and ||a - b|| / ||b|| <= REL (L2,
per tensor).  Elements BEGIN..END-1 of the tensors whose names end in
SUFFIX are left out (values that are known to be noise).  F32 and F64
only.  Python's standard library alone, so that the tests need no
packages.  Prints the largest relative differences."""
import json
import math
import struct
import sys
from array import array


def read(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    out = {}
    for name, t in header.items():
        code = {"F32": "f", "F64": "d"}[t["dtype"]]
        a = array(code)
        begin, end = t["data_offsets"]
        a.frombytes(data[begin:end])
        if sys.byteorder == "big":
            a.byteswap()
        out[name] = (t["dtype"], t["shape"], a)
    return out


def main():
    a, b, rel = read(sys.argv[1]), read(sys.argv[2]), float(sys.argv[3])
    masks = [m.split(":") for m in sys.argv[4:]]
    errors = []
    for name, (dtype, shape, x) in a.items():
        if name not in b or b[name][:2] != (dtype, shape):
            print("%s: missing or different in %s" % (name, sys.argv[2]))
            return 1
        keep = [True] * len(x)
        for suffix, begin, end in masks:
            if name.endswith(suffix):
                keep[int(begin):int(end)] = [False] * (int(end) - int(begin))
        pairs = [(p, q) for p, q, k in zip(x, b[name][2], keep) if k]
        diff = math.sqrt(sum((p - q) ** 2 for p, q in pairs))
        norm = math.sqrt(sum(q * q for _, q in pairs)) or 1.0
        errors.append((diff / norm, name))
    errors.sort(reverse=True)
    print("%d tensors, largest relative L2 differences: %s" % (len(a), ", ".join(
        "%s %.3g" % (name, e) for e, name in errors[:3])))
    return 0 if errors and errors[0][0] <= rel else 1


if __name__ == "__main__":
    sys.exit(main())
