"""Writes safetensors weights for tests/cli.sh with Python's safetensors
(the reference implementation of the format) and prints their element
count, which `tandem estimate-memory` must find from the headers alone:

  gen_cli_weights.py DIR   ->  DIR/model.safetensors (one file) and
                               DIR/sharded/ (two shards and
                               model.safetensors.index.json); prints the
                               count of each.
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

out = sys.argv[1]
rng = np.random.default_rng(0)
# Shapes of a small GPT-like model: odd sizes, several dtypes.
tensors = {
    "wte.weight": rng.standard_normal((301, 24)).astype(np.float32),
    "h.0.attn.weight": rng.standard_normal((24, 72)).astype(np.float16),
    "h.0.attn.bias": rng.standard_normal((72,)).astype(np.float32),
    "h.0.mlp.weight": rng.standard_normal((24, 96)).astype(np.float64),
    "ln_f.weight": np.ones((24,), dtype=np.float32),
    "step": np.array(7, dtype=np.int64),
}
numel = sum(int(t.size) for t in tensors.values())
os.makedirs(os.path.join(out, "sharded"), exist_ok=True)
save_file(tensors, os.path.join(out, "model.safetensors"))
names = sorted(tensors)
shards = [names[:3], names[3:]]
weight_map = {}
for i, part in enumerate(shards):
    fname = "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
    save_file({n: tensors[n] for n in part}, os.path.join(out, "sharded", fname))
    weight_map.update({n: fname for n in part})
total = sum(int(t.nbytes) for t in tensors.values())
with open(os.path.join(out, "sharded", "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
print(numel)
