#!/bin/sh
# Checkpoints and the Python safetensors ecosystem, as TAP:
#  - a checkpoint written by 3 ranks at ZeRO-3 (mpi-tests/ckpt_export: one
#    model.safetensors, Hugging Face shards of at most 1000 bytes, and one
#    file with every module's parameters sharded) loads with Python's
#    safetensors (numpy) with the right names, shapes, dtypes and values
#    (bitwise tdm_gather_param's), index, optimizer state and state.json
#    (tests/check_safetensors_interop.py);
#  - a model.safetensors written by PyTorch (tests/data, from
#    tests/gen_torch_mlp.py) loads with tdm_load_weights and gives torch's
#    forward outputs and loss (mpi-tests/ckpt_torch at 1 and 3 ranks).
# The Python checks need python3 (PYTHON) with numpy and safetensors; they
# are skipped without them.  Overrides: CKPT_EXPORT, CKPT_TORCH (the
# programs), MPIRUN.
src=${TDM_SRCDIR:-.}
build=${TDM_BUILDDIR:-.}
export_prog=${CKPT_EXPORT:-$build/mpi-tests/ckpt_export}
torch_prog=${CKPT_TORCH:-$build/mpi-tests/ckpt_torch}
checker=$src/tests/check_safetensors_interop.py
MPIRUN=${MPIRUN:-mpirun}
. "$src/tests/tap-lib.sh"
export TANDEM_DEVICE=cpu
export TDM_SRCDIR="$src"
unset TANDEM_ZERO_STAGE TANDEM_ZERO3_PERSISTENCE_THRESHOLD \
  TANDEM_GRADIENT_ACCUMULATION_STEPS TANDEM_MIXED_PRECISION

# A python3 that imports numpy and safetensors, or none.
python=
for p in ${PYTHON:-} python3 python; do
  if command -v "$p" >/dev/null 2>&1 &&
     "$p" -c 'import numpy, safetensors.numpy' >/dev/null 2>&1; then
    python=$p
    break
  fi
done

skip() { # description, reason
  n=$((n + 1))
  echo "ok $n - $1 # SKIP $2"
}
mpi() { # np, program and its arguments
  np=$1; shift
  timeout -k 5 120 "$MPIRUN" --oversubscribe --mca pml ob1 $TDM_SANITIZER_MPI_ARGS -np "$np" "$@"
}

# ---- A: tandem's checkpoint, read by Python ----
export_and_check() { # folder, max_shard_bytes, VAR=value...
  d=$tmp/$1 shard=$2; shift 2
  env TANDEM_ZERO_STAGE=3 "$@" timeout -k 5 120 "$MPIRUN" --oversubscribe \
    --mca pml ob1 $TDM_SANITIZER_MPI_ARGS -np 3 "$export_prog" "$d" "$shard" || return 1
  if [ -n "$python" ]; then
    "$python" "$checker" "$d" --step 10 --world-size 3 --zero-stage 3 \
      --max-shard-bytes "$shard"
  fi
}
if [ -n "$python" ]; then
  what="loads in Python safetensors: names, shapes, values of tdm_gather_param"
else
  what="is written (Python check skipped: no python3 with numpy and safetensors)"
fi
check "3 ranks, ZeRO-3: model.safetensors $what" \
  export_and_check one 0
check "3 ranks, ZeRO-3: shards of <= 1000 bytes and their index $what" \
  export_and_check sharded 1000
check "3 ranks, ZeRO-3, every module sharded (persistence 0): $what" \
  export_and_check unpersisted 0 TANDEM_ZERO3_PERSISTENCE_THRESHOLD=0
if [ -n "$python" ]; then
  # The checker must see a wrong value: one gathered bit flipped.
  flipped() {
    "$python" - "$tmp/one/gathered/fc1.bias.f32" <<'EOF' || return 1
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[4] ^= 1
open(p, "wb").write(bytes(b))
EOF
    ! "$python" "$checker" "$tmp/one"
  }
  check "the Python check fails when one value differs by one bit" flipped
else
  skip "the Python check fails when one value differs by one bit" \
    "no python3 with numpy and safetensors"
fi

# ---- B: PyTorch's model.safetensors, read by tandem ----
for np in 1 3; do
  check "PyTorch's model.safetensors loads with tdm_load_weights at $np ranks, ZeRO-0..3: torch's forward outputs and loss" \
    mpi "$np" "$torch_prog"
done
echo "1..$n"
