#!/usr/bin/env python3
"""Writes tests/data/gpt_ref.safetensors, the PyTorch autograd reference of
mpi-tests/t_gpt_grad (examples/gpt/model.c's backward).

The model is bench/gpt_torch.py's GPT at a tiny config (vocab 32, seq_len
8, 2 layers, 2 heads, 16 channels) with random weights of
torch.manual_seed(20240520): every tensor drawn in float32, matrices and
embeddings N(0, 0.3), biases N(0, 0.1), LayerNorm weights 1 + N(0, 0.1)
and biases N(0, 0.1), so that no gradient is trivial.  The tokens are 12
random rows of 9 (inputs: the first 8, targets: the last 8).  The loss
(mean cross-entropy over the 12 * 8 positions) and its gradients are
computed in float64 from those float32 weights: the C model, which
computes in float32 from the same values, is compared with an exact
reference.

The file holds, by name:
  <parameter name>   F32  the weights (tdm_load_weights reads these)
  grad.<name>        F64  d(loss)/d(parameter)
  ref.tokens         I32  [12, 9]
  ref.loss           F64  [1]
  ref.config         I32  [5]: vocab, seq_len, layers, heads, channels
The test reads the last four with its own few lines of safetensors
parsing (mpi-tests/t_gpt_grad.c: the 8-byte header length, then each
tensor's dtype and data_offsets in the JSON header).

Needs torch, safetensors and numpy; run from anywhere:
    python3 tests/gen_gpt_ref.py
"""
import os
import sys

import torch
from safetensors.torch import save_file

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "bench"))
from gpt_torch import GPT, GPTConfig  # noqa: E402

CONFIG = (32, 8, 2, 2, 16)  # vocab, seq_len, layers, heads, channels
ROWS = 12


def random_weights(model):
    """Non-trivial float32 values for every parameter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, dtype=torch.float32)
            if ".ln_" in name or name.startswith("ln_f"):
                p.copy_(noise * 0.1 + (1.0 if name.endswith("weight") else 0))
            elif name.endswith("bias"):
                p.copy_(noise * 0.1)
            else:
                p.copy_(noise * 0.3)


def main():
    torch.manual_seed(20240520)
    vocab, seq_len, layers, heads, channels = CONFIG
    model = GPT(GPTConfig(vocab, seq_len, layers, heads, channels))
    random_weights(model)
    tokens = torch.randint(0, vocab, (ROWS, seq_len + 1), dtype=torch.int32)
    weights = {k: v.detach().clone().contiguous()
               for k, v in model.state_dict().items()}
    model = model.double()
    x, y = tokens[:, :-1].long(), tokens[:, 1:].long()
    _, loss = model(x, y)
    loss.backward()
    out = dict(weights)
    for name, p in model.named_parameters():
        out["grad." + name] = p.grad.detach().contiguous()
    out["ref.tokens"] = tokens.contiguous()
    out["ref.loss"] = loss.detach().reshape(1)
    out["ref.config"] = torch.tensor(CONFIG, dtype=torch.int32)
    path = os.path.join(here, "data", "gpt_ref.safetensors")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(out, path)
    print(f"{path}: loss {loss.item():.9f}, {len(weights)} parameters, "
          f"{os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
