#!/bin/sh
# bench/gpt.sh [BUILD] [STEPS]: tokens/s of examples/gpt beside the same
# model in PyTorch (bench/gpt_torch.py: torch.nn, CPU, DDP over gloo), at
# N = 1 and 2 ranks, measured in the same run with the same config (the
# example's default: vocab 256, 4 layers, 4 heads, 128 channels, 64
# tokens, 8 rows per rank), one thread per rank on both sides, the same
# text (the license texts as an llm.c shard).  For tandem it also prints
# the share of the step spent in tandem's calls (loader, clip, step: the
# exposed part of the gradient reduction and the optimizer), in both
# progress modes.  PYTHON: a python with torch (default python3).
build=${1:-_build/default}
steps=${2:-60}
py=${PYTHON:-python3}
gpt=$build/examples/gpt/gpt
top=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$gpt" ] || { echo "bench/gpt: no $gpt"; exit 1; }
"$py" -c "import torch" 2>/dev/null || { echo "bench/gpt: $py has no torch"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$build/examples/gpt/text_to_shard" "$tmp/train.bin" "$tmp/val.bin" \
  /usr/share/common-licenses/* >/dev/null || exit 1
echo "bench/gpt: $(nproc) CPUs, $steps steps (3 warm-up steps not timed)"
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
printf '%-3s %-22s %12s %10s %12s\n' N side tokens/s "ms/step" "in tandem"
for np in 1 2; do
  for mode in thread poll; do
    TANDEM_PROGRESS=$mode "$top/scripts/mpirun.sh" -np $np "$gpt" \
      --train "$tmp/train.bin" --steps "$steps" --sample 0 >"$tmp/t.out" 2>&1 ||
      { cat "$tmp/t.out"; exit 1; }
    awk -v np=$np -v mode=$mode '/tokens\/s/ {
      printf "%-3s %-22s %12.0f %10.1f %11.1f%%\n", np, "tandem (" mode ")", $4, $6, $10 }' "$tmp/t.out"
  done
  "$py" "$top/bench/gpt_torch.py" --shard "$tmp/train.bin" --steps "$steps" \
    --ranks $np --threads 1 --lr 2e-3 >"$tmp/p.out" 2>&1 || { cat "$tmp/p.out"; exit 1; }
  awk -v np=$np '/^torch/ { printf "%-3s %-22s %12.0f %10.1f %12s\n", np, "torch DDP (gloo)", $4, $6, "" }' "$tmp/p.out"
done
