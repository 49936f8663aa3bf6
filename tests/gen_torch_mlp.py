#!/usr/bin/env python3
"""Writes the PyTorch reference of mpi-tests/ckpt_torch.c:

  data/torch_mlp.safetensors      nn.Sequential(Linear(10, 64), ReLU(),
                                  Linear(64, 1)) of torch.manual_seed(0),
                                  saved by safetensors.torch.save_file under
                                  examples/mlp's names (fc1.weight [64, 10],
                                  fc1.bias [64], fc2.weight [1, 64],
                                  fc2.bias [1]), float32
  data/torch_mlp_f64.safetensors  the same tensors as float64 (exact)
  data/torch_mlp_forward.txt      a fixed input x[32][10] and target y[32],
                                  torch's 32 forward outputs, and the loss
                                  of examples/mlp's mlp_forward_backward:
                                  the mean over the samples of
                                  (out - y)^2 (MSE, reduction "mean")

Every float is written with %.9g, which reads back as the same float32.
torch is needed only here; the test reads these files.
Run: python3 gen_torch_mlp.py   (from anywhere; writes next to itself)
"""
import math
import os

import torch
from safetensors.torch import save_file

N, IN, HIDDEN = 32, 10, 64
here = os.path.dirname(os.path.abspath(__file__))
data = os.path.join(here, "data")
os.makedirs(data, exist_ok=True)

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(IN, HIDDEN), torch.nn.ReLU(),
                          torch.nn.Linear(HIDDEN, 1))
sd = net.state_dict()  # keys 0.weight, 0.bias, 2.weight, 2.bias
tensors = {
    "fc1.weight": sd["0.weight"].contiguous(),
    "fc1.bias": sd["0.bias"].contiguous(),
    "fc2.weight": sd["2.weight"].contiguous(),
    "fc2.bias": sd["2.bias"].contiguous(),
}
assert [tuple(t.shape) for t in tensors.values()] == [(64, 10), (64,), (1, 64), (1,)]
save_file(tensors, os.path.join(data, "torch_mlp.safetensors"))
save_file({k: v.double() for k, v in tensors.items()},
          os.path.join(data, "torch_mlp_f64.safetensors"))

# The input and target, each value computed in double and rounded once to
# float32 (the file carries them; the test does not recompute them).
x = torch.tensor([[math.sin(0.37 * i + 1.3 * j) for j in range(IN)]
                  for i in range(N)], dtype=torch.float32)
y = torch.tensor([math.cos(0.11 * i) for i in range(N)], dtype=torch.float32)

with torch.no_grad():
    out = net(x).reshape(N)                      # float32, x @ W^T + b
    loss = torch.nn.functional.mse_loss(out, y)  # mean over the samples
    net64 = net.double()
    out64 = net64(x.double()).reshape(N)
    loss64 = torch.nn.functional.mse_loss(out64, y.double())


def g(v):
    return "%.9g" % float(v)


with open(os.path.join(data, "torch_mlp_forward.txt"), "w") as f:
    f.write("# torch_mlp_forward.txt: written by tests/gen_torch_mlp.py "
            "(torch %s)\n" % torch.__version__)
    f.write("# x <10 values>: input row i; y <value>: target i; out <value>: "
            "torch's float32 forward output i;\n")
    f.write("# loss: float32 mse_loss(out, y) (mean over %d samples); "
            "loss_f64: the float64 model's (information)\n" % N)
    for i in range(N):
        f.write("x " + " ".join(g(v) for v in x[i]) + "\n")
    for i in range(N):
        f.write("y %s\n" % g(y[i]))
    for i in range(N):
        f.write("out %s\n" % g(out[i]))
    f.write("loss %s\n" % g(loss))
    f.write("loss_f64 %.17g\n" % float(loss64))
print("wrote %s: loss %s (f64 %.17g)" % (data, g(loss), float(loss64)))
