#!/bin/sh
# The README's save/resume session, as TAP: examples/mlp stopped at step 60
# and resumed prints the losses of a run that was never stopped, at 1-4
# ranks and ZeRO stages 0 and 3; a checkpoint of 2 ranks resumes on 3 at
# ZeRO-3 and on 4 with bf16 compute copies, and still learns.
build=${TDM_BUILDDIR:-.}
mlp=${MLP:-$build/examples/mlp/mlp}
. "${TDM_SRCDIR:-.}/tests/tap-lib.sh"
export TANDEM_DEVICE=cpu
run() { # np, then mlp arguments
  np=$1; shift
  timeout -k 5 120 mpirun --oversubscribe --mca pml ob1 $TDM_SANITIZER_MPI_ARGS -np "$np" "$mlp" "$@"
}
# Same trajectory: the loss lines from step 60 on are identical.  (The
# exit status says whether the MLP learned, which 120 steps on one rank
# do not; the lines are what is compared.)
same_losses() { # np stage
  np=$1 stage=$2 d=$tmp/np$1-stage$2
  export TANDEM_ZERO_STAGE=$stage
  run "$np" --steps 120 | grep '^step' | awk '$2 >= 60' >"$d.straight"
  run "$np" --steps 60 --save-dir "$d" --save-every 30 >/dev/null
  run "$np" --steps 120 --resume "$d" >"$d.log"
  grep -q "resumed from $d/checkpoint-60 at step 60" "$d.log" &&
  grep '^step' "$d.log" >"$d.resumed" &&
  diff "$d.straight" "$d.resumed" && test -s "$d.resumed"
}
for np in 1 2 3 4; do
  for stage in 0 3; do
    check "resumed at $np ranks, ZeRO-$stage: the losses of an uninterrupted run" \
      same_losses "$np" "$stage"
  done
done
unset TANDEM_ZERO_STAGE
check "a 2-rank stage-0 checkpoint resumes on 3 ranks at ZeRO-3 and learns" sh -c \
  "TANDEM_ZERO_STAGE=3 timeout -k 5 120 mpirun --oversubscribe --mca pml ob1 $TDM_SANITIZER_MPI_ARGS -np 3 \
   '$mlp' --steps 300 --resume '$tmp/np2-stage0' | grep -q ': learned'"
check "and on 4 ranks with bf16 compute copies at ZeRO-1" sh -c \
  "TANDEM_ZERO_STAGE=1 TANDEM_MIXED_PRECISION=bf16 timeout -k 5 120 mpirun \
   --oversubscribe --mca pml ob1 $TDM_SANITIZER_MPI_ARGS -np 4 '$mlp' --steps 300 --resume \
   '$tmp/np2-stage0' | grep -q ': learned'"
no_checkpoint() {
  mkdir -p "$tmp/empty"
  ! run 2 --resume "$tmp/empty" >"$tmp/empty.log" 2>&1 &&
    grep "holds no complete checkpoint" "$tmp/empty.log"
}
check "--resume of a folder without a checkpoint fails, naming it" no_checkpoint
echo "1..$n"
