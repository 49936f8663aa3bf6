#!/usr/bin/env python3
"""Writes tests/data/sampler_ref.txt: the rows each rank takes in each
batch under tandem's distributed sampler, computed here from the rules
stated in include/tandem.h (tdm_sampler_options), independently of the C
code: Philox4x32-10 (checked against Random123's known answers), the
Fisher-Yates shuffle of the shared stream of seed + epoch, and the batch
split, drop_last, even_batches and split_batches rules.

Lines:
  C id rows batch_size shuffle seed drop_last even_batches split_batches
  B id world epoch batch rank valid r0 r1 ...    (count = number of r)
  N id world batches_per_epoch
Plain Python 3, no packages.  Run: python3 tests/gen_sampler_ref.py
"""
import os

M32 = 0xFFFFFFFF


def philox4x32_10(ctr, key):
    c = list(ctr)
    k0, k1 = key
    for _ in range(10):
        p0 = 0xD2511F53 * c[0]
        p1 = 0xCD9E8D57 * c[2]
        hi0, lo0 = p0 >> 32, p0 & M32
        hi1, lo1 = p1 >> 32, p1 & M32
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
        k0 = (k0 + 0x9E3779B9) & M32
        k1 = (k1 + 0xBB67AE85) & M32
    return c


# Random123's known-answer tests for philox4x32_10.
assert philox4x32_10([0, 0, 0, 0], [0, 0]) == \
    [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
assert philox4x32_10([M32] * 4, [M32, M32]) == \
    [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
assert philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                     [0xa4093822, 0x299f31d0]) == \
    [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]


def shared_words(seed):
    """The shared stream of tdm_rng_create(ctx, seed, TDM_RNG_SHARED)."""
    key = [seed & M32, (seed >> 32) & M32]
    block = 0
    while True:
        for w in philox4x32_10([block & M32, block >> 32, 0, 0], key):
            yield w
        block += 1


def epoch_order(rows, shuffle, seed, epoch):
    perm = list(range(rows))
    if not shuffle:
        return perm
    words = shared_words((seed + epoch) % 2**64)
    for i in range(rows - 1, 0, -1):
        u = next(words) | next(words) << 32
        j = u % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def batches(cfg, world, epoch):
    rows, bs, shuffle, seed, drop_last, even, split = cfg
    g = bs if split else bs * world
    b = g // world
    order = epoch_order(rows, shuffle, seed, epoch)
    nb = rows // g if drop_last else -(-rows // g)
    out = []
    for k in range(nb):
        for r in range(world):
            first = k * g + r * b
            real = max(0, min(b, rows - first))
            n = b if even else real
            out.append((k, r, real, [order[(first + i) % rows] for i in range(n)]))
    return nb, out


CONFIGS = [  # rows, batch_size, shuffle, seed, drop_last, even, split
    (23, 2, 1, 7, 0, 1, 0),
    (23, 2, 1, 7, 1, 1, 0),
    (23, 2, 1, 7, 0, 0, 0),
    (24, 12, 1, 3, 0, 1, 1),
    (25, 12, 0, 0, 0, 1, 1),
    (5, 3, 1, 11, 0, 1, 0),   # fewer rows than a global batch: wraps
    (1, 1, 1, 5, 0, 1, 0),
    (40, 3, 1, 2**40 + 9, 0, 0, 0),
    (64, 4, 0, 0, 1, 1, 0),
]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    lines = []
    for i, cfg in enumerate(CONFIGS):
        lines.append("C %d %s" % (i, " ".join(str(v) for v in cfg)))
        for world in (1, 2, 3, 4):
            if cfg[6] and cfg[1] % world:
                continue  # split_batches needs batch_size % world == 0
            for epoch in (0, 1):
                nb, out = batches(cfg, world, epoch)
                if epoch == 0:
                    lines.append("N %d %d %d" % (i, world, nb))
                for k, r, real, rows in out:
                    lines.append("B %d %d %d %d %d %d %s" % (
                        i, world, epoch, k, r, real,
                        " ".join(str(x) for x in rows)))
    with open(os.path.join(here, "data", "sampler_ref.txt"), "w") as f:
        f.write("# written by tests/gen_sampler_ref.py\n")
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
