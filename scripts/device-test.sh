#!/bin/bash
# scripts/device-test.sh: tandem's GPU checks, run ON the GPU machine that
# the `device` tool lends (CUDA, NCCL, compute-sanitizer; no MPI, no
# Autotools: those come from .device/, made here by scripts/device-pack.sh).
# From the repository root of that machine's copy:
#
#   run(command="scripts/device-test.sh", carry=[".device"], timeout_s=600)
#
# (or ". .device/env.sh && scripts/device-test.sh"; the script sources
# .device/env.sh itself when that has not been done).  It prints the
# machine (OS, glibc, GPU, nvcc), then, each step under a timeout and all of
# them inside TDM_DEVICE_BUDGET seconds (default 560, under the tool's 600):
#
#   1. autogen.sh with the packed Autotools, when configure is missing;
#   2. scripts/build.sh _build/gpu with CUDA and NCCL (fails if configure
#      enabled either not), NCCL taken from PyTorch's wheel when the system
#      has none;
#   3. make check at TDM_TEST_NP=1, TDM_TEST_PML=ob1 (one GPU: NCCL with one
#      rank), and mpi-tests/u_cuda_kernels, t_gpu_train (the engine on the
#      GPU against the CPU), t_cuda_stream (a user's non-blocking stream)
#      and u_device must have run, not skipped;
#   4. bench/optim_gpu: the fused AdamW kernel beside the copy roofline and
#      torch's fused AdamW (the acceptance figures, before the slow steps);
#   5. compute-sanitizer --tool memcheck and --tool racecheck on
#      mpi-tests/u_cuda_kernels and t_gpu_train (TDM_SANITIZE_TESTS; with
#      TDM_TEST_QUICK=1, t_gpu_train's smaller set), when built;
#   6. bench/optim --check (and a timed run) with its GPU option, when
#      `optim --help` shows one (--device cuda, --gpu or --cuda; or set
#      TDM_OPTIM_GPU_ARGS);
#
# and ends with "device-test: N passed, N failed, N skipped"; exit status 0
# only when nothing failed.  Logs: $OUT/device-test.log (every step's
# output), $OUT/test-suite.log, $OUT/build.log, or _build/gpu/device-logs/
# when OUT is unset.
#
# Settings: TDM_CUDA_DIR, TDM_NCCL_DIR (default: found), TDM_GPU_BUILD
# (default _build/gpu), TDM_DEVICE_BUDGET (seconds), TDM_OPTIM_GPU_ARGS,
# TDM_SANITIZE_TESTS (default u_cuda_kernels t_gpu_train), TDM_SANITIZER_ARGS (extra
# compute-sanitizer options, e.g. --leak-check full).
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top" || exit 1
start=$(date +%s)
budget=${TDM_DEVICE_BUDGET:-560}
b=${TDM_GPU_BUILD:-$top/_build/gpu}
case $b in /*) ;; *) b=$top/$b ;; esac
logdir=${OUT:-$b/device-logs}
mkdir -p "$logdir" "$b"
log=$logdir/device-test.log
: >"$log"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
passed=0 failed=0 skipped=0

say() { echo "$*" | tee -a "$log"; }
left() { echo $((budget - ($(date +%s) - start))); }
tlimit() { # default seconds -> what the budget still allows (at least 1)
  local l
  l=$(($(left) - 15))
  [ "$l" -lt "$1" ] || l=$1
  [ "$l" -gt 0 ] || l=1
  echo "$l"
}
pass() { passed=$((passed + 1)); say "PASS: $1"; }
skip() { skipped=$((skipped + 1)); say "SKIP: $1"; }
fail() { # description [file whose tail explains]
  failed=$((failed + 1)); say "FAIL: $1"
  [ -n "${2:-}" ] && [ -s "$2" ] && tail -30 "$2" | sed 's/^/  | /'
}
step() { # description timeout command...: one check, its output in the log
  local desc=$1 t=$2 rc
  shift 2
  if [ "$(left)" -lt 30 ]; then fail "$desc (no time left in TDM_DEVICE_BUDGET=$budget)"; return 1; fi
  t=$(tlimit "$t")
  echo "==== $desc ($*; timeout ${t}s)" >>"$log"
  timeout -k 10 "$t" "$@" >"$out" 2>&1
  rc=$?
  cat "$out" >>"$log"
  case $rc in
    0) pass "$desc"; return 0 ;;
    124|137) fail "$desc (timed out after ${t}s)" "$out" ;;
    *) fail "$desc (exit $rc)" "$out" ;;
  esac
  return 1
}
finish() {
  for f in "$b/configure.out" "$b/make.out"; do
    [ -f "$f" ] && { echo "==== $f"; tail -c 4000000 "$f"; }
  done >"$logdir/build.log" 2>/dev/null
  [ -f "$b/test-suite.log" ] && tail -c 8000000 "$b/test-suite.log" >"$logdir/test-suite.log"
  say "device-test: $passed passed, $failed failed, $skipped skipped ($(($(date +%s) - start))s)"
  [ "$failed" = 0 ]
  exit
}

# ---- the machine --------------------------------------------------------
{
  echo "device-test: $(date -u '+%Y-%m-%d %H:%M:%S UTC') in $top"
  # shellcheck disable=SC1091
  echo "os: $(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-?}"); kernel $(uname -r); $(nproc) cores"
  echo "glibc: $(ldd --version 2>&1 | head -1)"
  echo "gpu: $( (nvidia-smi -L || /usr/local/nvidia/bin/nvidia-smi -L) 2>/dev/null | head -2 | paste -sd';' | grep . || echo 'none visible (nvidia-smi lists none)')"
  echo "gcc: $(gcc --version 2>&1 | head -1)"
} | tee -a "$log"
if [ -z "${TDM_DEVICE:-}" ]; then
  if [ -f .device/env.sh ]; then
    # shellcheck disable=SC1091
    . .device/env.sh || { fail "source .device/env.sh (see its message above)"; finish; }
  else
    fail ".device/ is missing: run scripts/device-pack.sh here, then name .device in carry"
    finish
  fi
fi
command -v gcc >/dev/null || { fail "no gcc on this machine (Open MPI's mpicc calls gcc)"; finish; }
say "mpi: $(command -v mpicc) ($(mpirun --version 2>&1 | head -1))"

# ---- CUDA and NCCL --------------------------------------------------------
cuda=${TDM_CUDA_DIR:-}
if [ -z "$cuda" ]; then
  if [ -f /usr/local/cuda/include/cuda_runtime_api.h ]; then cuda=/usr/local/cuda
  elif command -v nvcc >/dev/null; then cuda=$(cd "$(dirname "$(command -v nvcc)")/.." && pwd)
  fi
fi
if [ -z "$cuda" ] || [ ! -f "$cuda/include/cuda_runtime_api.h" ]; then
  fail "no CUDA toolkit found (set TDM_CUDA_DIR)"; finish
fi
export PATH="$PATH:$cuda/bin"
say "cuda: $cuda ($("$cuda/bin/nvcc" --version 2>&1 | grep -i release | sed 's/.*release/release/'))"
nccl=${TDM_NCCL_DIR:-}
has_nccl() { # DIR: nccl.h and libnccl.so where configure looks
  [ -f "$1/include/nccl.h" ] || return 1
  for l in "$1/lib64/libnccl.so" "$1/lib/libnccl.so" "$1/lib/x86_64-linux-gnu/libnccl.so"; do
    [ -e "$l" ] && return 0
  done
  return 1
}
if [ -z "$nccl" ]; then
  for d in "$cuda" /usr/local /usr; do has_nccl "$d" && { nccl=$d; break; }; done
fi
if [ -z "$nccl" ]; then # PyTorch's wheel: headers and libnccl.so.2, no libnccl.so
  w=$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null)
  if [ -n "$w" ] && [ -f "$w/include/nccl.h" ] && [ -f "$w/lib/libnccl.so.2" ]; then
    nccl=$b-nccl
    mkdir -p "$nccl/lib"
    ln -sfn "$w/include" "$nccl/include"
    ln -sf "$w/lib/libnccl.so.2" "$nccl/lib/libnccl.so"
    ln -sf "$w/lib/libnccl.so.2" "$nccl/lib/libnccl.so.2"
  fi
fi
if [ -n "$nccl" ]; then
  say "nccl: $nccl$( [ -L "$nccl/include" ] && echo " -> $(readlink "$nccl/include")")"
  # configure links -L without a run path: the tests find libnccl this way.
  for l in "$nccl/lib64" "$nccl/lib"; do
    [ -n "$(ls "$l"/libnccl.so* 2>/dev/null)" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$l"
  done
else
  say "nccl: none found (set TDM_NCCL_DIR)"
fi
gpus=$( (nvidia-smi -L || /usr/local/nvidia/bin/nvidia-smi -L) 2>/dev/null | grep -c '^GPU')
[ "$gpus" = 0 ] && [ -e /dev/nvidia0 ] && gpus=1

# ---- 1, 2: build ------------------------------------------------------------
if [ ! -x configure ]; then
  step "autogen.sh with the packed Autotools" 120 ./autogen.sh || finish
fi
args="--with-cuda=$cuda"
[ -n "$nccl" ] && args="$args --with-nccl=$nccl"
# shellcheck disable=SC2086
step "build with CUDA and NCCL: scripts/build.sh ${b#"$top"/} $args" 420 \
  scripts/build.sh "$b" $args || finish
grep -q '^ *CUDA: *yes' "$b/configure.out" || fail "configure did not enable CUDA" "$b/configure.out"
if grep -q '^ *NCCL: *yes' "$b/configure.out"; then pass "configure enabled NCCL"
else fail "configure did not enable NCCL" "$b/configure.out"; fi
sed -n '/^tandem .* configuration/,$p' "$b/configure.out" | sed '/^$/d' | tee -a "$log"

# ---- 3: make check, one rank, ob1 ------------------------------------------------
t=$(tlimit 300)
echo "==== make check TDM_TEST_NP=1 TDM_TEST_PML=ob1 (timeout ${t}s)" >>"$log"
timeout -k 10 "$t" make -C "$b" check -j"$(nproc)" TDM_TEST_NP=1 TDM_TEST_PML=ob1 >"$out" 2>&1
rc=$?
cat "$out" >>"$log"
s=$b/test-suite.log
p=$(awk '/^# PASS:/ {print $3}' "$s" 2>/dev/null); p=${p:-0}
f=$(awk '/^# (FAIL|ERROR|XPASS):/ {n += $3} END {print n + 0}' "$s" 2>/dev/null)
k=$(awk '/^# SKIP:/ {print $3}' "$s" 2>/dev/null); k=${k:-0}
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then fail "make check (timed out after ${t}s)" "$out"
elif [ "$rc" != 0 ] || [ "$f" != 0 ]; then
  fail "make check: $p passed, $f failed, $k skipped (exit $rc)"
  grep -E '^(FAIL|ERROR)' "$out" | sed 's/^/  | /'
  sed -n '/^FAIL:/,/^[A-Z]*:/p' "$s" 2>/dev/null | head -60 | sed 's/^/  | /'
else pass "make check (np=1, pml=ob1): $p passed, $k skipped"
fi
grep -E '^(PASS|SKIP|FAIL|ERROR|XFAIL|XPASS):' "$out" | sed 's/^/  /' | tee -a "$log" >/dev/null
u=$b/mpi-tests/u_cuda_kernels
if [ -e "$u" ]; then
  if [ -f "$u.trs" ]; then
    r=$(sed -n 's/^:test-result: //p' "$u.trs" | head -1)
    case $r in
      PASS) pass "u_cuda_kernels ran on the GPU" ;;
      SKIP) if [ "$gpus" -gt 0 ]; then fail "u_cuda_kernels skipped though nvidia-smi lists $gpus GPU(s)" "$u.log"
            else skip "u_cuda_kernels (no GPU visible)"; fi ;;
      *) fail "u_cuda_kernels: ${r:-no result}" "$u.log" ;;
    esac
  elif [ -f "$b/mpi-tests/u_core.trs" ]; then # the suite ran, without it
    step "u_cuda_kernels (not in make check's list)" 120 "$u"
  else
    fail "u_cuda_kernels: no result (make check stopped before it)"
  fi
else
  skip "u_cuda_kernels (not built: no such test in this tree, or make check stopped first)"
fi
# The engine's device path on the GPU (NCCL with one rank): must have run.
for tst in t_gpu_train t_cuda_stream u_device; do
  r=$(sed -n 's/^:test-result: //p' "$b/mpi-tests/$tst.trs" 2>/dev/null | sort -u | paste -sd, -)
  case $r in
    PASS) pass "$tst ran on the GPU" ;;
    *SKIP*) if [ "$gpus" -gt 0 ]; then fail "$tst skipped though a GPU is visible" "$b/mpi-tests/$tst.log"
            else skip "$tst (no GPU visible)"; fi ;;
    *) fail "$tst: ${r:-no result}" "$b/mpi-tests/$tst.log" ;;
  esac
done
# t_cuda_stream passes without its GPU part where no GPU is its own
if [ "$gpus" -gt 0 ] && grep -q "GPU part: skip" "$b/mpi-tests/t_cuda_stream.log" 2>/dev/null; then
  fail "t_cuda_stream skipped its GPU part though a GPU is visible" "$b/mpi-tests/t_cuda_stream.log"
fi

# ---- 4: the fused AdamW kernel vs the copy roofline and torch's fused AdamW --
# (before the sanitizers: the acceptance figures first, while time is left)
g=$b/bench/optim_gpu
if [ ! -x "$g" ]; then
  fail "bench/optim_gpu was not built (nvcc missing?)"
else
  step "bench/optim_gpu (targets: 85% of the copy bandwidth, 1.0x torch fused)" 240 \
    "$g" --torch-script bench/optim_torch.py && sed 's/^/  | /' "$out"
  cp "$out" "$logdir/optim_gpu.txt" 2>/dev/null
fi

# ---- 5: compute-sanitizer ---------------------------------------------------------
cs=$(command -v compute-sanitizer)
for c in "$cuda/bin/compute-sanitizer" "$cuda/compute-sanitizer/compute-sanitizer"; do
  [ -z "$cs" ] && [ -x "$c" ] && cs=$c
done
for tst in ${TDM_SANITIZE_TESTS:-u_cuda_kernels t_gpu_train}; do
  x=$b/mpi-tests/$tst
  if [ ! -e "$x" ]; then skip "compute-sanitizer on $tst (not built)"; continue; fi
  if [ "$gpus" = 0 ]; then skip "compute-sanitizer on $tst (no GPU visible)"; continue; fi
  if [ -z "$cs" ]; then fail "compute-sanitizer not found"; break; fi
  for tool in memcheck racecheck; do
    # libtool --mode=execute: the test may be a libtool wrapper script.
    # shellcheck disable=SC2086
    # TDM_TEST_QUICK: t_gpu_train's smaller set of configurations
    step "compute-sanitizer --tool $tool mpi-tests/$tst" 240 \
      env TDM_TEST_QUICK=1 "$b/libtool" --mode=execute "$cs" --tool "$tool" \
      --error-exitcode 99 ${TDM_SANITIZER_ARGS:-} "$x"
    grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY' "$out" | sed 's/^/  /' | tee -a "$log"
  done
done

# ---- 6: bench/optim on the GPU -------------------------------------------------
o=$b/bench/optim
if [ ! -x "$o" ]; then
  fail "bench/optim was not built"
else
  help=$(timeout 60 scripts/mpirun.sh -np 1 "$o" --help 2>&1)
  gpu_args=${TDM_OPTIM_GPU_ARGS:-}
  if [ -z "$gpu_args" ]; then
    if echo "$help" | grep -q -- '--device' && echo "$help" | grep -qi cuda; then gpu_args="--device cuda"
    elif echo "$help" | grep -q -- '--gpu'; then gpu_args=--gpu
    elif echo "$help" | grep -q -- '--cuda'; then gpu_args=--cuda
    fi
  fi
  if [ -z "$gpu_args" ]; then
    skip "bench/optim on the GPU (optim --help shows no GPU option yet)"
  else
    # shellcheck disable=SC2086
    step "bench/optim --check $gpu_args" 120 \
      env TDM_RUN_TIMEOUT="$(tlimit 110)" scripts/mpirun.sh -np 1 "$o" --check $gpu_args
    # shellcheck disable=SC2086
    step "bench/optim $gpu_args (timed)" 150 \
      env TDM_RUN_TIMEOUT="$(tlimit 140)" scripts/mpirun.sh -np 1 "$o" $gpu_args &&
      tail -15 "$out" | sed 's/^/  | /'
  fi
fi

finish
