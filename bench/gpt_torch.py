#!/usr/bin/env python3
"""gpt_torch.py - examples/gpt's GPT-2 in torch.nn, and its PyTorch
training baseline.

The model (class GPT) is the one examples/gpt/model.c computes by hand:
token and position embeddings, pre-LayerNorm blocks (causal self-attention
with q, k, v in that order out of one c_attn, a tanh-GELU MLP), ln_f, and
a head tied to wte (logits = x @ wte.weight.T, no bias).  Its state_dict
keys are the C model's parameter names ("wte.weight", "h.0.ln_1.weight",
"h.0.attn.c_attn.weight", ..., "ln_f.bias"), so that weights move between
the two by name.  tests/gen_gpt_ref.py imports it for the gradient
reference of mpi-tests/t_gpt_grad.

Run as a script it trains that model data-parallel on the CPU, the torch
side of bench/gpt: torch.distributed DDP over gloo, --ranks processes
(torch.multiprocessing, 127.0.0.1 and a free port), each with
torch.set_num_threads(--threads).  Rank r's micro-step s reads the
contiguous window k = s * ranks + r of batch * (seq_len + 1) tokens of an
llm.c token shard (256 int32 header: magic 20240520, version 1, token
count; then uint16 tokens), wrapping at the end, as batch rows of
seq_len + 1 tokens (inputs and shifted targets).  Optimizer: AdamW(lr,
betas (0.9, 0.95), eps 1e-8) with one group of weight decay
--weight-decay (0.01, torch's and tandem's default; no separate no-decay
group, kept as simple as the C side), gradient norm clipped to 1.0.
Initialization: GPT-2's (weights N(0, 0.02), the c_proj weights N(0,
0.02 / sqrt(2 layers)), biases 0, LayerNorm 1 and 0).

After --steps steps it prints one line (rank 0), timed over the steps
after 3 warm-up steps:

    torch N=<ranks> tokens/s <value> step_ms <value>

where tokens/s counts the input tokens of all ranks.  --verbose prints
each step's loss to stderr.

    python3 bench/gpt_torch.py --shard data.bin --steps 20 --batch 8 \\
        --seq-len 64 --layers 4 --heads 4 --channels 128 --vocab 256 \\
        --ranks 2 --threads 1 --lr 3e-4
"""
import argparse
import math
import os
import socket
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

WARMUP = 3
SHARD_MAGIC, SHARD_VERSION = 20240520, 1


class GPTConfig:
    def __init__(self, vocab=256, seq_len=64, layers=4, heads=4,
                 channels=128):
        assert channels % heads == 0
        self.vocab, self.seq_len, self.layers = vocab, seq_len, layers
        self.heads, self.channels = heads, channels


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.heads = cfg.heads
        self.c_attn = nn.Linear(cfg.channels, 3 * cfg.channels)
        self.c_proj = nn.Linear(cfg.channels, cfg.channels)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2)
                   for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.channels, 4 * cfg.channels)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * cfg.channels, cfg.channels)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.channels, eps=1e-5)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.channels, eps=1e-5)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab, cfg.channels)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.channels)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.channels, eps=1e-5)
        self.gpt2_init()

    def gpt2_init(self):
        proj_std = 0.02 / math.sqrt(2 * self.cfg.layers)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    p.normal_(0.0, proj_std)
                elif name.endswith("bias"):
                    p.zero_()
                elif ".ln_" in name or name.startswith("ln_f"):
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, 0.02)

    def forward(self, idx, targets=None):
        """Logits [B, T, vocab]; with targets also the mean cross-entropy
        over the B * T positions."""
        T = idx.shape[1]
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                               targets.reshape(-1))
        return logits, loss


# ---- training benchmark ----------------------------------------------------

def read_shard(path):
    """The tokens of an llm.c shard (uint16, memory-mapped)."""
    header = np.fromfile(path, dtype=np.int32, count=256)
    if header.size != 256 or header[0] != SHARD_MAGIC:
        raise SystemExit(f"{path}: not an llm.c token shard")
    if header[1] != SHARD_VERSION:
        raise SystemExit(f"{path}: version {header[1]}, want 1 (uint16)")
    count = int(header[2])
    if os.path.getsize(path) < 1024 + 2 * count:
        raise SystemExit(f"{path}: truncated ({count} tokens announced)")
    return np.memmap(path, dtype=np.uint16, mode="r", offset=1024,
                     shape=(count,))


def batch(tokens, args, rank, step):
    """Rank rank's rows of micro-step step: window step * ranks + rank of
    batch * (seq_len + 1) tokens, inputs and targets."""
    size = args.batch * (args.seq_len + 1)
    windows = len(tokens) // size
    k = (step * args.ranks + rank) % windows
    rows = torch.from_numpy(
        np.asarray(tokens[k * size:(k + 1) * size], dtype=np.int64))
    rows = rows.view(args.batch, args.seq_len + 1)
    return rows[:, :-1], rows[:, 1:]


def train(rank, args, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(args.threads)
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group("gloo", rank=rank, world_size=args.ranks)
    torch.manual_seed(args.seed)  # DDP broadcasts rank 0's weights anyway
    cfg = GPTConfig(args.vocab, args.seq_len, args.layers, args.heads,
                    args.channels)
    model = DDP(GPT(cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95),
                            eps=1e-8, weight_decay=args.weight_decay)
    tokens = read_shard(args.shard)
    start = None
    for step in range(args.steps):
        if step == WARMUP:
            dist.barrier()
            start = time.perf_counter()
        x, y = batch(tokens, args, rank, step)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if args.verbose and rank == 0:
            print(f"step {step} loss {loss.item():.4f}", file=sys.stderr)
    dist.barrier()
    elapsed = time.perf_counter() - start
    timed = args.steps - WARMUP
    if rank == 0:
        tokens_s = timed * args.ranks * args.batch * args.seq_len / elapsed
        print(f"torch N={args.ranks} tokens/s {tokens_s:.1f} "
              f"step_ms {1e3 * elapsed / timed:.3f}", flush=True)
    dist.destroy_process_group()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shard", required=True, help="llm.c token shard")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8, help="rows per rank")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads per rank")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    if args.steps <= WARMUP:
        p.error(f"--steps must be more than the {WARMUP} warm-up steps")
    tokens = read_shard(args.shard)  # checked once, before the spawn
    if len(tokens) < args.batch * (args.seq_len + 1):
        p.error(f"{args.shard}: fewer tokens than one batch")
    if int(tokens.max()) >= args.vocab:
        p.error(f"{args.shard}: token {int(tokens.max())} >= --vocab")
    del tokens
    import torch.multiprocessing as mp
    mp.spawn(train, args=(args, free_port()), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    main()
