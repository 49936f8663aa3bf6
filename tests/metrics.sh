#!/bin/sh
# Metrics of a real run, as TAP: examples/mlp at 1, 2 and 3 ranks with
# TANDEM_METRICS_DIR writes a TensorBoard event file and metrics.jsonl
# that Python's tensorboard package reads back with the right tags, steps
# and values (tests/check_metrics.py: against the printed losses and the
# ring allreduce's byte count).  Skipped without a python3 (PYTHON) that
# imports tensorboard.
src=${TDM_SRCDIR:-.}
build=${TDM_BUILDDIR:-.}
mlp=$build/examples/mlp/mlp
MPIRUN=${MPIRUN:-mpirun}
. "$src/tests/tap-lib.sh"
export TANDEM_DEVICE=cpu
unset TANDEM_ZERO_STAGE TANDEM_MIXED_PRECISION TANDEM_CONFIG TANDEM_OFFLOAD \
  TANDEM_GRADIENT_ACCUMULATION_STEPS TANDEM_METRICS_DIR \
  TANDEM_METRICS_ALL_RANKS
python=
for p in ${PYTHON:-} python3; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c \
     'from tensorboard.backend.event_processing import event_accumulator' \
     >/dev/null 2>&1; then
    python=$p; break
  fi
done
steps=120
for np in 1 2 3; do
  if [ -z "$python" ]; then
    n=$((n + 1)); echo "ok $n # SKIP np=$np: no python3 with tensorboard"
    continue
  fi
  run() {
    TANDEM_METRICS_DIR="$tmp/m$np" timeout -k 5 120 "$MPIRUN" \
      --oversubscribe --mca pml ob1 $TDM_SANITIZER_MPI_ARGS -np "$np" \
      "$mlp" --steps $steps >"$tmp/log$np" &&
      "$python" "$src/tests/check_metrics.py" "$tmp/m$np" "$tmp/log$np" \
        "$np" $steps
  }
  check "examples/mlp np=$np: tensorboard reads its metrics back" run
done
echo "1..$n"
