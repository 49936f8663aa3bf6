#!/usr/bin/env python3
"""Writes tests/data/readers/: the files mpi-tests/u_data.c reads.

.npy files written by NumPy itself (numpy.save, numpy.lib.format.
write_array for the 2.0 and 3.0 formats), some of them of what tandem
refuses (Fortran order, big-endian, uint16, bool, structured); llm.c token
shards written here as dev/data/data_common.py's write_datafile writes them
(256 little-endian int32 of header: magic 20240520, version, token count;
then the tokens), version 1 with uint16 tokens and version 2 with uint32;
and expected.txt, what the C test compares against: each good array's
dtype, shape and its data bytes in C order, as NumPy has them.

Token i of the version-1 stream tok_a.bin + tok_b.bin is (i * 7 + 3) % 50257;
token i of tok_v2.bin is 70000 + 13 * i (above uint16).  The C test knows
both formulas.  Run: python3 tests/gen_data_files.py (needs numpy only).
"""
import os

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "readers")

# name: array; all C order, little-endian, of tandem's six dtypes
GOOD = {
    "f4_2d.npy": (np.arange(21, dtype=np.float32).reshape(7, 3) * 0.5 - 3),
    "f8_1d.npy": np.arange(5, dtype=np.float64) * 0.1,
    "f2.npy": (np.arange(8, dtype=np.float16).reshape(4, 2) * 0.25),
    "i4_3d.npy": np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 10,
    "i8.npy": np.arange(6, dtype=np.int64).reshape(3, 2) * 10**12 - 5,
    "u1.npy": ((np.arange(30) * 37) % 256).astype(np.uint8).reshape(6, 5),
    "scalar.npy": np.array(2.5, dtype=np.float64),
    "zero_rows.npy": np.zeros((0, 4), dtype=np.float32),
}
# written with write_array in another format version
VERSIONED = {
    "v2.npy": ((2, 0), np.arange(6, dtype=np.float32).reshape(3, 2) + 0.5),
    "v3.npy": ((3, 0), np.arange(4, dtype=np.int32) * -3),
}
# what tandem refuses, with the status it returns
REFUSED = {
    "fortran.npy": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
    "be_f4.npy": np.arange(4, dtype=">f4"),
    "u2.npy": np.arange(4, dtype="<u2"),
    "b1.npy": np.array([True, False, True]),
    "struct.npy": np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]),
}
DTYPE = {"<f4": "F32", "<f8": "F64", "<f2": "F16", "<i4": "I32", "<i8": "I64",
         "|u1": "U8"}


def write_shard(name, tokens, version):
    """llm.c's layout: a 1024-byte header, then the tokens."""
    header = np.zeros(256, dtype="<i4")
    header[0], header[1], header[2] = 20240520, version, len(tokens)
    dtype = "<u2" if version == 1 else "<u4"
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=dtype).tobytes())


def expected_line(name, a):
    shape = " ".join(str(n) for n in a.shape)
    data = a.tobytes(order="C").hex() or "-"
    return "npy %s %s %d %s%s%s\n" % (name, DTYPE[a.dtype.str], a.ndim, shape,
                                      " " if shape else "", data)


def main():
    os.makedirs(OUT, exist_ok=True)
    lines = ["# written by tests/gen_data_files.py (numpy %s)\n" % np.__version__,
             "# npy NAME DTYPE NDIM SHAPE... DATA (hex of the C-order bytes; -: none)\n"]
    for name, a in GOOD.items():
        np.save(os.path.join(OUT, name), a)
        lines.append(expected_line(name, a))
    for name, (version, a) in VERSIONED.items():
        with open(os.path.join(OUT, name), "wb") as f:
            np.lib.format.write_array(f, a, version=version)
        lines.append(expected_line(name, a))
    for name, a in REFUSED.items():
        np.save(os.path.join(OUT, name), a)
    stream = (np.arange(1337, dtype=np.int64) * 7 + 3) % 50257
    write_shard("tok_a.bin", stream[:1000], 1)
    write_shard("tok_b.bin", stream[1000:], 1)
    write_shard("tok_empty.bin", [], 1)
    write_shard("tok_v2.bin", 70000 + 13 * np.arange(300, dtype=np.int64), 2)
    lines.append("# shard NAME VERSION COUNT\n")
    for name, version, count in (("tok_a.bin", 1, 1000), ("tok_b.bin", 1, 337),
                                 ("tok_empty.bin", 1, 0), ("tok_v2.bin", 2, 300)):
        lines.append("shard %s %d %d\n" % (name, version, count))
    with open(os.path.join(OUT, "expected.txt"), "w") as f:
        f.writelines(lines)


if __name__ == "__main__":
    main()
