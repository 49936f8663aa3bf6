#!/bin/sh
# TANDEM_DEBUG's guard on the stable windows, as TAP: a rank that reads a
# stage-3 parameter it did not fetch dies at once with a line naming its
# rank, the tensor and the rule it broke (mpi-tests/t_stable --touch), at
# 1-3 ranks.  Without TANDEM_DEBUG the read is not trapped (it reads
# zeros).
build=${TDM_BUILDDIR:-.}
prog=$build/mpi-tests/t_stable
[ -x "$prog" ] || { echo "1..0 # SKIP no $prog"; exit 0; }
. "${TDM_SRCDIR:-.}/tests/tap-lib.sh"
export TANDEM_DEVICE=cpu
unset TANDEM_ZERO_STAGE TANDEM_OFFLOAD TANDEM_GRADIENT_ACCUMULATION_STEPS
dies_naming() { # np message
  TANDEM_DEBUG=1 timeout -k 5 60 mpirun --oversubscribe --mca pml ob1 \
    $TDM_SANITIZER_MPI_ARGS -np "$1" "$prog" --touch >"$tmp/run" 2>&1
  rc=$?
  cat "$tmp/run"
  echo "exit status $rc"
  [ "$rc" != 0 ] && [ "$rc" != 124 ] && [ "$rc" != 137 ] &&
    grep -qF "$2" "$tmp/run" && ! grep -q "did not fault" "$tmp/run"
}
for np in 1 2 3; do
  check "np=$np: an unfetched ZeRO-3 parameter read dies, naming it" \
    dies_naming "$np" "tandem: rank 0: the values of 'fc2.weight' were touched while not held (ZeRO-3): call tdm_fetch_module for its module first"
done
unguarded() { # without TANDEM_DEBUG the touch is not caught (exit 2)
  timeout -k 5 60 mpirun --oversubscribe --mca pml ob1 \
    $TDM_SANITIZER_MPI_ARGS -np 2 "$prog" --touch
  [ $? = 2 ]
}
check "np=2: without TANDEM_DEBUG the same read is not trapped" unguarded
echo "1..$n"
