#!/bin/sh
# The tandem command, as TAP:
#  - launch --dry-run: the exact mpirun line on this machine, with
#    --hosts, with a hostfile, and the srun line inside a (simulated)
#    Slurm allocation; the printed line, run by sh, passes arguments with
#    spaces, quotes and $ exactly as launch itself does (no shell);
#  - launch runs examples/mlp/mlp on 3 ranks; its exit status is the job's;
#  - config through a pseudo-terminal (tests/cli_pty.py), invalid answers
#    asked again, and --non-interactive: the YAML read back by the library
#    (tandem env) and by tandem launch (its launch: section);
#  - estimate-memory: the ZeRO paper's 7.5B-parameter, 64-rank row (120,
#    31.4, 16.6, 1.9 GB) and the element count of safetensors files
#    written by Python (one file, and shards with their index);
#  - convert: Python-written shards merged bit for bit, split into shards
#    under a size with their index, exported in bf16 and f16 with round
#    to nearest even (tests/check_convert.py); a checkpoint of
#    examples/mlp exported in bf16;
#  - env: the version and every setting's origin;
#  - test passes at N = 1-4 and fails, visibly, with a fault injected;
#  - bad input: one line on stderr and exit status 2, never a crash.
src=${TDM_SRCDIR:-.}
build=${TDM_BUILDDIR:-.}
tandem=$build/src/cli/tandem
mlp=$build/examples/mlp/mlp
. "$src/tests/tap-lib.sh"
export TANDEM_DEVICE=cpu
unset TANDEM_ZERO_STAGE TANDEM_MIXED_PRECISION TANDEM_CONFIG TANDEM_OFFLOAD \
  TANDEM_GRADIENT_ACCUMULATION_STEPS SLURM_JOB_ID
# Sanitizer runs preload their shim into the ranks, through the launcher.
extra=
set -- $TDM_SANITIZER_MPI_ARGS
for a; do extra="$extra --launcher-arg $a"; done
set --
python=
for p in ${PYTHON:-} python3; do
  if command -v "$p" >/dev/null 2>&1 &&
     "$p" -c 'import numpy, safetensors.numpy' >/dev/null 2>&1; then
    python=$p; break
  fi
done
skip() { n=$((n + 1)); echo "ok $n - $1 # SKIP $2"; }

same() { # got want: equal, else both shown
  [ "$1" = "$2" ] && return 0
  printf 'got:  %s\nwant: %s\n' "$1" "$2"; return 1
}

cpus=$(nproc)
if [ 3 -gt "$cpus" ]; then place3="--oversubscribe --bind-to none"
else place3="--map-by slot:PE=$((cpus / 3)) --bind-to core"; fi

dry_local() {
  same "$("$tandem" launch --dry-run -n 3 --zero-stage 2 --mixed-precision bf16 ./prog --lr 0.1)" \
    "TANDEM_ZERO_STAGE=2 TANDEM_MIXED_PRECISION=bf16 mpirun -np 3 $place3 -x TANDEM_ZERO_STAGE -x TANDEM_MIXED_PRECISION ./prog --lr 0.1"
}
dry_hosts() {
  printf 'node1 slots=2\nnode2 slots=2\n' >"$tmp/hosts"
  same "$("$tandem" launch --dry-run --hosts node1,node2 --per-node 2 --offload optimizer --zero-stage 1 prog)" \
    "TANDEM_OFFLOAD=optimizer TANDEM_ZERO_STAGE=1 mpirun -np 4 --host node1:2,node2:2 --map-by ppr:2:node -x TANDEM_OFFLOAD -x TANDEM_ZERO_STAGE prog" &&
  same "$("$tandem" launch --dry-run -n 4 --hostfile "$tmp/hosts" --launcher-arg --mca --launcher-arg pml --launcher-arg ucx prog)" \
    "mpirun -np 4 --hostfile $tmp/hosts --mca pml ucx prog"
}
dry_slurm() {
  same "$(SLURM_JOB_ID=77 SLURM_NTASKS=4 "$tandem" launch --dry-run prog a)" "srun prog a" &&
  same "$(SLURM_JOB_ID=77 "$tandem" launch --dry-run -n 4 --per-node 2 --timeout 30 prog)" \
    "TANDEM_TIMEOUT=30 srun -n 4 --ntasks-per-node=2 prog" &&
  same "$(SLURM_JOB_ID=77 "$tandem" launch --dry-run --launcher mpirun -n 2 prog)" \
    "mpirun -np 2 $([ 2 -gt "$cpus" ] && echo "--oversubscribe --bind-to none" || echo "--map-by slot:PE=$((cpus / 2)) --bind-to core") prog"
}
# The program prints each argument in brackets.
quoting() {
  script='for a; do echo "[$a]"; done'
  want=$(printf '[a b]\n[c'"'"'d]\n[$HOME]\n["x"]\n[]')
  got=$("$tandem" launch -n 1 $extra sh -c "$script" sh "a b" "c'd" '$HOME' '"x"' "") &&
  same "$got" "$want" &&
  line=$("$tandem" launch --dry-run -n 1 $extra sh -c "$script" sh "a b" "c'd" '$HOME' '"x"' "") &&
  same "$(sh -c "$line")" "$want"
}
real_run() {
  timeout -k 5 120 "$tandem" launch -n 3 $extra "$mlp" --steps 40 >"$tmp/run.log" 2>&1 ||
    { cat "$tmp/run.log"; return 1; }
  grep -q "^step  *39 " "$tmp/run.log" || { cat "$tmp/run.log"; return 1; }
  timeout -k 5 60 "$tandem" launch -n 2 $extra sh -c 'exit 3' >/dev/null 2>&1
  rc=$?; same "$rc" 3
}
config_pty() {
  [ -n "$python" ] || { echo "no python3"; return 1; }
  "$python" "$src/tests/cli_pty.py" "$tandem" "$tmp/wizard.yaml" || return 1
  env_out=$("$tandem" env --config "$tmp/wizard.yaml") || return 1
  echo "$env_out" | grep -q "zero_stage  *= 3  *(config file '.*wizard.yaml' line" &&
  echo "$env_out" | grep -q "offload  *= params  *(config file" &&
  echo "$env_out" | grep -q "mixed_precision  *= bf16  *(config file" &&
  echo "$env_out" | grep -q "gradient_accumulation_steps  *= 4  *(config file" &&
  echo "$env_out" | grep -q "log_level  *= info  *(config file" &&
  line=$("$tandem" launch --dry-run --config "$tmp/wizard.yaml" prog) &&
  echo "$line" | grep -q "^TANDEM_CONFIG=.*wizard.yaml mpirun -np 3 " ||
    { echo "$env_out"; echo "$line"; return 1; }
}
config_flags() {
  "$tandem" config --non-interactive --file "$tmp/flags.yaml" --ranks 2 \
    --offload optimizer --zero-stage 2 --timeout 30 >"$tmp/out" 2>&1 || { cat "$tmp/out"; return 1; }
  "$tandem" env --config "$tmp/flags.yaml" | grep -q "zero_stage  *= 2  *(config file" &&
  "$tandem" env --config "$tmp/flags.yaml" | grep -q "timeout  *= 30  *(config file" &&
  ! "$tandem" config --non-interactive --file "$tmp/bad.yaml" --offload params --zero-stage 1 2>"$tmp/err" &&
  [ ! -e "$tmp/bad.yaml" ] && grep -q "offload=params needs zero_stage 3" "$tmp/err"
}
paper_row() { # ZeRO paper, table 1: 7.5B parameters, Adam, fp16, N = 64
  got=$("$tandem" estimate-memory --params 7.5B -n 64 --dtype fp16 --json |
    awk -F'"device_bytes": ' '/"offload": "none"/ { split($2, v, ","); printf "%s%.1f", s, v[1] / 1e9; s = " " }')
  same "$got" "120.0 31.4 16.6 1.9"
}
from_safetensors() {
  want=$("$python" "$src/tests/gen_cli_weights.py" "$tmp/w") || return 1
  for path in "$tmp/w/model.safetensors" "$tmp/w/sharded" \
              "$tmp/w/sharded/model.safetensors.index.json"; do
    out=$("$tandem" estimate-memory "$path" -n 1 --dtype f32) || return 1
    echo "$out" | grep -q ": 6 tensors, $want parameters (headers only)" ||
      { echo "$out"; echo "want $want parameters"; return 1; }
  done
  # every byte of a stage 0, f32, AdamW entry: 16 per parameter
  got=$("$tandem" estimate-memory "$tmp/w/model.safetensors" -n 1 --dtype f32 --json |
    awk -F'"device_bytes": ' '/"zero_stage": 0/ { split($2, v, ","); print v[1] }')
  same "$got" "$((16 * want))"
}
convert_python() {
  [ -d "$tmp/w" ] || "$python" "$src/tests/gen_cli_weights.py" "$tmp/w" >/dev/null || return 1
  "$tandem" convert "$tmp/w/sharded" "$tmp/merged.safetensors" &&
  "$tandem" convert --dtype bf16 --max-shard-size 20kB "$tmp/w/model.safetensors" "$tmp/split" &&
  "$tandem" convert --dtype f16 "$tmp/w/sharded/model.safetensors.index.json" "$tmp/f16.safetensors" &&
  "$python" "$src/tests/check_convert.py" "$tmp/w/model.safetensors" "$tmp/merged.safetensors" \
    "$tmp/split" 20000 "$tmp/f16.safetensors"
}
convert_checkpoint() {
  timeout -k 5 120 "$tandem" launch -n 2 $extra "$mlp" --steps 100 --save-dir "$tmp/ck" \
    --save-every 100 >"$tmp/run.log" 2>&1 || { cat "$tmp/run.log"; return 1; }
  out=$("$tandem" convert --dtype bf16 "$tmp/ck/checkpoint-100" "$tmp/ck.bf16.safetensors") || return 1
  f32=$("$tandem" estimate-memory "$tmp/ck/checkpoint-100" -n 1 --dtype f32 | head -1)
  numel=$(echo "$f32" | sed -n 's/.*tensors, \([0-9]*\) parameters.*/\1/p')
  echo "$out" | grep -q "tensors, $numel parameters, $((2 * numel)) data bytes" || { echo "$f32"; echo "$out"; return 1; }
}
env_report() {
  out=$(TANDEM_ZERO_STAGE=1 "$tandem" env) || return 1
  version=$("$tandem" --version)
  echo "$out" | grep -q "^tandem: ${version#tandem } " &&
  echo "$out" | grep -q "^MPI library: Open MPI" &&
  echo "$out" | grep -q "^MPI runtime: mpirun (Open MPI)" &&
  echo "$out" | grep -q "zero_stage  *= 1  *(TANDEM_ZERO_STAGE)" &&
  echo "$out" | grep -q "mixed_precision  *= no  *(default)" &&
  echo "$out" | grep -Eq "cpu kernels  *= (generic|avx2|avx512) " || { echo "$out"; return 1; }
}
self_test() { # np
  timeout -k 5 120 "$tandem" test -n "$1" $extra >"$tmp/test.log" 2>&1 ||
    { cat "$tmp/test.log"; return 1; }
  grep -q "^tandem test: 22 passed, 0 failed on $1 rank" "$tmp/test.log" || { cat "$tmp/test.log"; return 1; }
}
self_test_fault() {
  TANDEM_SELFTEST_FAULT=allreduce timeout -k 5 120 "$tandem" test -n 2 $extra >"$tmp/test.log" 2>&1 &&
    { echo "passed with a fault"; return 1; }
  grep -q "^FAIL: allreduce sum f32 x1 (rank 0: element 0 is 4, want 3)" "$tmp/test.log" &&
  grep -q "^PASS: allgather" "$tmp/test.log" &&
  TANDEM_SELFTEST_FAULT=engine timeout -k 5 120 "$tandem" test -n 3 $extra >"$tmp/test2.log" 2>&1
  rc=$?
  [ "$rc" != 0 ] && grep -q "^FAIL: training, ZeRO stage 3" "$tmp/test2.log" ||
    { cat "$tmp/test.log" "$tmp/test2.log"; return 1; }
}
bad() { # description-free: the command must fail with one line, exit 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  rc=$?
  lines=$(wc -l <"$tmp/err")
  [ "$rc" = 2 ] && [ "$lines" = 1 ] && grep -q "^tandem" "$tmp/err" ||
    { echo "rc $rc, $lines lines from: $*"; cat "$tmp/err"; return 1; }
}
bad_input() {
  head -c 8 /dev/zero >"$tmp/zero.safetensors"
  printf '\100\000\000\000\000\000\000\000{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 9]}}' >"$tmp/corrupt.safetensors"
  echo "zero_stage: [" >"$tmp/broken.yaml"
  bad "$tandem" frobnicate &&
  bad "$tandem" launch --bogus prog &&
  bad "$tandem" launch -n &&
  bad "$tandem" launch -n two prog &&
  bad "$tandem" launch -n 2 "$tmp/no-such-trainer" &&
  bad "$tandem" launch --config "$tmp/missing.yaml" prog &&
  bad "$tandem" launch --config "$tmp/broken.yaml" prog &&
  bad "$tandem" launch --zero-stage 9 prog &&
  bad "$tandem" launch --dry-run &&
  bad "$tandem" env --config "$tmp/broken.yaml" &&
  bad "$tandem" estimate-memory &&
  bad "$tandem" estimate-memory --params lots &&
  bad "$tandem" estimate-memory "$tmp/zero.safetensors" &&
  bad "$tandem" estimate-memory "$tmp/corrupt.safetensors" &&
  bad "$tandem" estimate-memory "$tmp/missing.safetensors" &&
  bad "$tandem" convert "$tmp/corrupt.safetensors" "$tmp/x.safetensors" &&
  bad "$tandem" convert "$tmp/missing" "$tmp/x.safetensors" &&
  bad "$tandem" convert --dtype int8 a b &&
  bad "$tandem" convert --max-shard-size huge a b &&
  bad "$tandem" convert onlyone &&
  [ ! -e "$tmp/x.safetensors" ] &&
  bad "$tandem" config --non-interactive --file "$tmp/c.yaml" --ranks 0 &&
  bad "$tandem" config --file "$tmp/c.yaml" </dev/null
}

check "launch --dry-run on this machine: the exact mpirun line" dry_local
check "launch --dry-run with --hosts and with a hostfile" dry_hosts
check "launch --dry-run inside a Slurm allocation: srun" dry_slurm
check "launch passes spaces, quotes, \$ and empty arguments exactly; so does its printed line" quoting
check "launch -n 3 examples/mlp/mlp trains; the exit status is the job's" real_run
if [ -n "$python" ]; then
  check "config through a pty: invalid answers asked again; the library and launch read the file" config_pty
else
  skip "config through a pty" "no python3"
fi
check "config --non-interactive; a bad combination writes nothing" config_flags
check "estimate-memory: the ZeRO paper's 7.5B row at N=64 (120, 31.4, 16.6, 1.9 GB)" paper_row
if [ -n "$python" ]; then
  check "estimate-memory from safetensors headers written by Python (file, folder, index)" from_safetensors
else
  skip "estimate-memory from safetensors written by Python" "no python3 with numpy and safetensors"
fi
if [ -n "$python" ]; then
  check "convert: merged bit for bit, split by size, bf16 and f16 as Python rounds" convert_python
else
  skip "convert against Python" "no python3 with numpy and safetensors"
fi
check "convert: a checkpoint of examples/mlp exported in bf16" convert_checkpoint
check "env: the version, MPI, and each setting's origin" env_report
for np in ${CLI_TEST_NPS:-1 2 3 4}; do
  check "test passes on $np ranks" self_test "$np"
done
check "test fails visibly with a wrong allreduce or gradient injected" self_test_fault
check "bad input: one line on stderr, exit status 2" bad_input
echo "1..$n"
