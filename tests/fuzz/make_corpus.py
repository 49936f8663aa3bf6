#!/usr/bin/env python3
"""make_corpus.py - regenerates the seed corpus of fuzz_safetensors.c.

Valid files are written by Hugging Face's own writer (the safetensors
package, with numpy); the bad_* files are near misses derived from them
by hand-made edits of the header, each breaking one rule the parser
checks.  Needs: pip install safetensors numpy.

    python3 tests/fuzz/make_corpus.py [DIR]   (default: tests/fuzz/corpus)
"""
import os
import struct
import sys

import numpy as np
from safetensors import TensorSpec, serialize
from safetensors.numpy import save


def raw(tensors, metadata=None):
    """Dtypes numpy lacks (bfloat16, float8): raw bytes of the right size."""
    keep, specs = [], {}
    for name, (dtype, shape, size) in tensors.items():
        buf = np.arange(size, dtype=np.uint8)
        keep.append(buf)
        specs[name] = TensorSpec(dtype=dtype, shape=list(shape),
                                 data_ptr=buf.ctypes.data, data_len=size)
    return bytes(serialize(specs, metadata))


def with_header(blob, edit):
    """blob with its JSON header replaced by edit(header)."""
    n = struct.unpack("<Q", blob[:8])[0]
    header = edit(blob[8:8 + n].decode())
    return struct.pack("<Q", len(header)) + header.encode() + blob[8 + n:]


def valid():
    f = np.float32
    return {
        "f32_2x3": save({"w": np.arange(6, dtype=f).reshape(2, 3)}),
        "metadata": save({"w": np.ones(4, dtype=f), "b": np.zeros(2, dtype=f)},
                         metadata={"format": "pt", "note": "seed"}),
        "scalar": save({"s": np.array(3.5, dtype=np.float64)}),
        "empty_tensor": save({"e": np.zeros((2, 0, 3), dtype=f),
                              "x": np.ones(1, dtype=np.int32)}),
        "no_tensors": save({}),
        "ints": save({"i8": np.arange(3, dtype=np.int8),
                      "u8": np.arange(3, dtype=np.uint8),
                      "i16": np.arange(3, dtype=np.int16),
                      "u16": np.arange(3, dtype=np.uint16),
                      "i32": np.arange(3, dtype=np.int32),
                      "u32": np.arange(3, dtype=np.uint32),
                      "i64": np.arange(3, dtype=np.int64),
                      "u64": np.arange(3, dtype=np.uint64),
                      "bool": np.array([True, False])}),
        "bf16_f8": raw({"bf": ("bfloat16", (2, 2), 8),
                        "e4m3": ("float8_e4m3fn", (3,), 3),
                        "e5m2": ("float8_e5m2", (1, 1), 1)}),
        "f16_8d": save({"h": np.ones((1, 2, 1, 2, 1, 1, 2, 1),
                                     dtype=np.float16)}),
        "many": save({"layer.%d.weight" % i: np.full(i + 1, i, dtype=f)
                      for i in range(12)}),
    }


def invalid(v):
    base = v["f32_2x3"]  # {"w":{"dtype":"F32","shape":[2,3],...[0,24]}}
    two = v["metadata"]
    return {
        "bad_length": with_header(base, lambda h: h.replace("[2,3]", "[3,3]")),
        "bad_dtype": with_header(base, lambda h: h.replace("F32", "F31")),
        "bad_extra_field": with_header(
            base, lambda h: h.replace('"dtype"', '"x":1,"dtype"')),
        "bad_overlap": with_header(two, lambda h: h.replace("[8,24]",
                                                            "[4,20]")),
        "bad_metadata": with_header(two, lambda h: h.replace('"seed"', "7")),
        "bad_truncated": base[:-4],
        "bad_header_len": struct.pack("<Q", len(base)) + base[8:],
    }


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "corpus")
    os.makedirs(out, exist_ok=True)
    v = valid()
    files = dict(v)
    files.update(invalid(v))
    for name, blob in sorted(files.items()):
        assert len(blob) < 4096, name
        with open(os.path.join(out, name + ".safetensors"), "wb") as fp:
            fp.write(blob)
    print("make_corpus: %d files in %s" % (len(files), out))


if __name__ == "__main__":
    main()
