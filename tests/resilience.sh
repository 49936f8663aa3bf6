#!/bin/sh
# Resilience, as TAP, at N = 2, 3, 4 (RESILIENCE_NPS), every run bounded
# by timeout and TANDEM_TIMEOUT=2:
#  - kill -9 of one rank (rank 0, and the last) mid-training: mpirun ends
#    the job non-zero within the timeout + 10 s, naming the dead rank;
#    where the runtime lets the survivors run on (--enable-recovery), each
#    survivor's watchdog names it itself, "gone: dead";
#  - kill -STOP of one rank: every other rank reports TDM_ERR_TIMEOUT
#    naming the stalled rank and the collective it waited in; the same
#    in a large collective (MPI's blocking call on the watch's worker);
#  - one rank skipping tdm_backward_end, with and without TANDEM_DEBUG,
#    and (TANDEM_DEBUG) one rank calling another collective: clear
#    errors on every rank, never a hang;
#  - SIGUSR1 to one rank: every rank stops at the same step, saves a
#    checkpoint and exits 75; resumed, the run ends with the weights of an
#    uninterrupted one, byte for byte;
#  - SIGUSR2 with TANDEM_DUMP_ON_SIGNAL=1 dumps the flight recorder and
#    training goes on.
build=${TDM_BUILDDIR:-.}
mlp=$build/examples/mlp/mlp
driver=$build/mpi-tests/stall_driver
. "${TDM_SRCDIR:-.}/tests/tap-lib.sh"
export TANDEM_DEVICE=cpu TANDEM_TIMEOUT=2
limit=12 # seconds: TANDEM_TIMEOUT + 10
nps=${RESILIENCE_NPS:-2 3 4}

now() { date +%s.%N; }
elapsed_below() { # start limit: whether now - start < limit
  awk -v a="$1" -v b="$(now)" -v l="$2" 'BEGIN { exit !(b - a < l) }'
}

# Starts mpirun -np $1 with the rest of the arguments in the background,
# its output in $tmp/run.log; each process carries a tag of its own job,
# so that a rank's pid can be found and nothing outlives its check.
start() {
  np=$1; shift
  tag=$tmp/job$n
  # Emptied here, not by the background job's redirection: wait_for
  # could otherwise read the last job's "step 50" and signal this job's
  # rank inside MPI_Init, where nothing times out.
  : >"$tmp/run.log"
  TDM_RES_TAG=$tag timeout -k 5 120 mpirun --oversubscribe --mca pml ob1 \
    $TDM_SANITIZER_MPI_ARGS ${MPIRUN_EXTRA:-} -np "$np" "$@" >"$tmp/run.log" 2>&1 &
  job=$!
}
tagged() { # the pids of the processes of the job started last
  for f in $(grep -lxz "TDM_RES_TAG=$tag" /proc/[0-9]*/environ 2>/dev/null); do
    f=${f#/proc/}; echo "${f%/environ}"
  done
}
# The pid of rank $1 of the job started last (polled: under load a rank
# may show up late).
rank_pid() {
  i=0
  while [ $i -lt 100 ]; do
    for p in $(tagged); do
      grep -qxz "OMPI_COMM_WORLD_RANK=$1" "/proc/$p/environ" 2>/dev/null &&
        { echo "$p"; return 0; }
    done
    i=$((i + 1)); sleep 0.05
  done
  return 1
}
# Ends whatever is left of the job started last (a stopped rank, a run
# whose check failed early).
cleanup_job() {
  for p in $(tagged); do kill -KILL "$p" 2>/dev/null; done
  wait "$job" 2>/dev/null
}
# Polls (with a deadline) until the job's output matches $1.
wait_for() {
  i=0
  while ! grep -q "$1" "$tmp/run.log" 2>/dev/null; do
    i=$((i + 1)); [ $i -gt 600 ] && return 1
    kill -0 "$job" 2>/dev/null || return 1
    sleep 0.05
  done
}
# Sends signal $1 to rank $2 once training is under way; sets $t0.
signal_rank() {
  wait_for '^step  *50 ' || { echo "training never got going"; cat "$tmp/run.log"; cleanup_job; return 1; }
  pid=$(rank_pid "$2") || { echo "no pid for rank $2"; cleanup_job; return 1; }
  t0=$(now)
  kill -"$1" "$pid"
}
finish() { # waits for the job; $rc its status
  wait "$job"; rc=$?
  cleanup_job
}
show() { echo "exit $rc after $(awk -v a="$t0" -v b="$(now)" 'BEGIN { print b - a }') s"; cat "$tmp/run.log"; }

killed_rank() { # np rank: mpirun names the dead rank and exits non-zero
  start "$1" "$mlp" --steps 1000000
  signal_rank KILL "$2" || return 1
  finish; show
  [ "$rc" != 0 ] && elapsed_below "$t0" $limit &&
    grep -q "process rank $2 .*signal 9" "$tmp/run.log"
}

# The ranks other than $2 of $1 each said $3 (a grep -E pattern), on a
# line of their own ("rank R: ...").
survivors_say() {
  r=0
  while [ $r -lt "$1" ]; do
    if [ $r != "$2" ]; then
      grep -E "rank $r: " "$tmp/run.log" | grep -E "$3" >/dev/null ||
        { echo "rank $r did not report: $3"; return 1; }
    fi
    r=$((r + 1))
  done
}

killed_rank_survivors_diagnose() { # np rank, the runtime keeping them alive
  MPIRUN_EXTRA=--enable-recovery start "$1" "$mlp" --steps 1000000
  signal_rank KILL "$2" || return 1
  # Each survivor's own report, within the bound (mpirun's exit status
  # under --enable-recovery is not the ranks'; their output is checked).
  while ! survivors_say "$1" "$2" "TDM_ERR_TIMEOUT.*stalled: rank $2 did not answer.*gone: dead" >/dev/null; do
    elapsed_below "$t0" $limit || break
    sleep 0.1
  done
  survivors_say "$1" "$2" "TDM_ERR_TIMEOUT.*stalled: rank $2 did not answer.*gone: dead"
  ok=$?
  elapsed_below "$t0" $limit || ok=1
  finish; show
  return $ok
}

stopped_rank() { # np rank: the others time out naming it and the wait
  start "$1" "$mlp" --steps 1000000
  signal_rank STOP "$2" || return 1
  finish; show
  [ "$rc" != 0 ] && elapsed_below "$t0" $limit &&
    survivors_say "$1" "$2" "TDM_ERR_TIMEOUT.*\(#[0-9]+ on [a-z ]+\) timed out after .*stalled: rank $2 did not answer.*stopped"
}

skipped_backward() { # np debug: every rank fails with the diagnosis
  t0=$(now)
  TANDEM_DEBUG=$2 start "$1" "$driver" skip-backward 1
  finish; show
  [ "$rc" != 0 ] && elapsed_below "$t0" $limit &&
    grep -q "rank 1: tdm_allreduce.*TDM_ERR_TIMEOUT.*rank 0 waits in tdm_backward_end" "$tmp/run.log" &&
    survivors_say "$1" 1 "tdm_backward_end.*TDM_ERR_TIMEOUT.*rank 1 waits in tdm_allreduce"
}

stopped_in_large() { # np: 4 MiB tdm_allreduce, MPI's blocking call
  t0=$(now)
  start "$1" "$driver" stop-big 1
  finish; show
  [ "$rc" != 0 ] && elapsed_below "$t0" $limit &&
    survivors_say "$1" 1 "TDM_ERR_TIMEOUT.*tdm_allreduce \(#[0-9]+ on tandem context\) timed out.*stalled: rank 1 did not answer.*stopped"
}

mismatch_debug() { # np: TANDEM_DEBUG names both calls on every rank
  t0=$(now)
  TANDEM_DEBUG=1 start "$1" "$driver" mismatch 1
  finish; show
  [ "$rc" != 0 ] && elapsed_below "$t0" $limit &&
    survivors_say "$1" -1 "TDM_ERR_MISMATCH.*rank 0 called allreduce.*rank 1 called broadcast"
}

stop_and_resume() { # np: SIGUSR1 on the last rank; resume; same weights
  np=$1 d=$tmp/usr1-$1 ref=$tmp/ref-$1 last=$(($1 - 1))
  timeout -k 5 120 mpirun --oversubscribe --mca pml ob1 $TDM_SANITIZER_MPI_ARGS -np "$np" \
    "$mlp" --steps 3000 --save-dir "$ref" --save-every 1000 >"$tmp/ref.log" 2>&1
  start "$np" "$mlp" --steps 3000 --save-dir "$d" --save-every 1000
  signal_rank USR1 "$last" || return 1
  finish; show
  [ "$rc" = 75 ] || { echo "exit status $rc, not 75"; return 1; }
  step=$(sed -n 's/^mlp: stopped by signal at step \([0-9]*\), checkpoint saved$/\1/p' "$tmp/run.log")
  [ -n "$step" ] && [ -d "$d/checkpoint-$step" ] || { echo "no checkpoint of the stop"; return 1; }
  grep -q "rank $last received SIGUSR1" "$tmp/run.log" || return 1
  timeout -k 5 120 mpirun --oversubscribe --mca pml ob1 $TDM_SANITIZER_MPI_ARGS -np "$np" \
    "$mlp" --steps 3000 --save-dir "$d" --save-every 1000 --resume "$d" >"$tmp/resume.log" 2>&1
  grep "resumed from $d/checkpoint-$step at step $step" "$tmp/resume.log" &&
    cmp "$ref/checkpoint-3000/model.safetensors" "$d/checkpoint-3000/model.safetensors"
}

dump_on_signal() { # np: SIGUSR2 dumps the recorder; training goes on
  TANDEM_DUMP_ON_SIGNAL=1 start "$1" "$mlp" --steps 1000000
  signal_rank USR2 0 || return 1
  wait_for "rank 0/$1 .*flight recorder (SIGUSR2)" &&
    wait_for "tdm_should_stop #[0-9]* on tandem context, 8 bytes" &&
    kill -USR1 "$pid" # and on, until SIGUSR1 stops it
  finish; show
  [ "$rc" = 75 ] && grep -q "rank 0/$1 .*flight recorder (SIGUSR2)" "$tmp/run.log"
}

for np in $nps; do
  last=$((np - 1))
  check "N=$np: kill -9 of rank $last: mpirun ends the job within 12 s, naming it" killed_rank "$np" "$last"
  check "N=$np: kill -9 of rank 0: the same" killed_rank "$np" 0
  check "N=$np: kill -9 of rank $last, survivors kept running: each names it dead within 12 s" \
    killed_rank_survivors_diagnose "$np" "$last"
  check "N=$np: kill -STOP of rank $last: the others time out naming it and their wait" stopped_rank "$np" "$last"
  check "N=$np: kill -STOP of rank 0: the same" stopped_rank "$np" 0
  check "N=$np: rank 1 stops before a 4 MiB tdm_allreduce: the others time out naming it" \
    stopped_in_large "$np"
  check "N=$np: rank 1 skips tdm_backward_end: every rank times out with the diagnosis" skipped_backward "$np" 0
  check "N=$np: the same under TANDEM_DEBUG" skipped_backward "$np" 1
  check "N=$np: TANDEM_DEBUG: rank 1 calls tdm_broadcast for tdm_allreduce: TDM_ERR_MISMATCH everywhere" \
    mismatch_debug "$np"
  check "N=$np: SIGUSR1 to rank $last: all stop at one step with exit 75; resumed, the same final weights" \
    stop_and_resume "$np"
  check "N=$np: SIGUSR2 with TANDEM_DUMP_ON_SIGNAL=1 dumps the flight recorder; training goes on" \
    dump_on_signal "$np"
done
echo "1..$n"
