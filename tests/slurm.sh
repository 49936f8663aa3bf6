#!/bin/sh
# Preempt -> checkpoint -> requeue -> resume under a real Slurm, as TAP
# (issue 16).  A one-node Slurm cluster (munged, slurmctld, slurmd) is
# started on this machine (scripts/slurm-local.sh) and stopped at the end.
# examples/mlp trains on 2 ranks straight through as the reference; then
# the same training is submitted with examples/slurm/train.sbatch, and
# once it has saved a checkpoint the job gets `scancel --batch
# --signal=USR1`, the signal that the script's --signal=B:USR1@120 sends
# before the time limit.  The job must stop at the next step with a
# checkpoint (status 75 through mpirun), requeue itself, start again
# (Restarts=1), resume from that checkpoint, finish, and end with final
# weights byte-identical to the reference's.
# Skipped without Debian's slurm-wlm and munge (scripts/deps.sh --test),
# when not root (slurmd is), or when the daemons cannot start here.
#   MLP                   the trainer (default $TDM_BUILDDIR/examples/mlp/mlp)
#   TDM_SLURM_STEPS       steps (default 10000: 400 steps of examples/mlp
#                         take 0.1 s, too few for a signal to arrive on
#                         the way; 10000 take about 2 s)
#   TDM_SLURM_SAVE_EVERY  steps between checkpoints (default 50)
#   TDM_SLURM_LAUNCHER    what starts the job's ranks (TANDEM_LAUNCHER of
#                         train.sbatch; default mpirun; "srun --mpi=pmix"
#                         works with Debian's Slurm and Open MPI too)
build=${TDM_BUILDDIR:-.}
src=${TDM_SRCDIR:-.}
mlp=${MLP:-$build/examples/mlp/mlp}
steps=${TDM_SLURM_STEPS:-10000}
every=${TDM_SLURM_SAVE_EVERY:-50}
MPIRUN=${MPIRUN:-mpirun}
. "$src/tests/tap-lib.sh"
export TANDEM_DEVICE=cpu
unset TANDEM_ZERO_STAGE TANDEM_MIXED_PRECISION TANDEM_GRADIENT_ACCUMULATION_STEPS
# Not the settings of a Slurm job this test may itself run in.
for v in $(env | grep -E '^(SLURM|SBATCH|SALLOC|SRUN)_[A-Za-z0-9_]*=' | cut -d= -f1); do
  unset "$v"
done
case $mlp in /*) ;; *) mlp=$(pwd)/$mlp ;; esac # the job runs elsewhere
case $src in /*) ;; *) src=$(pwd)/$src ;; esac

skip() { echo "1..0 # SKIP $*"; exit 0; }
[ -x "$mlp" ] || skip "no $mlp (build examples/mlp)"
# scripts/test.sh runs it in its first suite only (CI time).
[ "${TDM_SLURM_TEST:-1}" = 0 ] && skip "TDM_SLURM_TEST=0"
for c in "$MPIRUN" timeout munged munge slurmctld slurmd sbatch scontrol scancel squeue sinfo; do
  command -v "$c" >/dev/null 2>&1 ||
    skip "no $c (Debian: slurm-wlm and munge; scripts/deps.sh --test)"
done
[ "$(id -u)" = 0 ] || skip "not root: slurmd runs as root to start jobs"

cluster=$tmp/slurm
trap 'sh "$src/scripts/slurm-local.sh" stop "$cluster" >/dev/null 2>&1; rm -rf "$tmp"' EXIT
trap 'exit 1' HUP INT PIPE TERM
# (and should this shell be killed, its watcher stops them once it is gone)
SLURM_LOCAL_OWNER=$$ sh "$src/scripts/slurm-local.sh" start "$cluster" >"$tmp/start.log" 2>&1
rc=$?
if [ $rc = 77 ]; then
  skip "Slurm does not start here: $(sed -n '/^slurm-local:/{p;q;}' "$tmp/start.log")"
elif [ $rc != 0 ]; then
  echo "Bail out! scripts/slurm-local.sh start failed (status $rc)"
  sed 's/^/# /' "$tmp/start.log"
  exit 1
fi
export SLURM_CONF="$cluster/slurm.conf"

ref=$tmp/ref save=$tmp/save out=$tmp/job.out
launcher="$MPIRUN --oversubscribe --mca pml ob1 $TDM_SANITIZER_MPI_ARGS -np 2"
job_launcher=${TDM_SLURM_LAUNCHER:-$launcher}

# Polls COMMAND every 0.1 s until it succeeds or SECONDS have passed.
wait_until() { # seconds command...
  end=$(($(date +%s) + $1)); shift
  until "$@"; do
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.1
  done
}
field() { # name: its value in `scontrol show job` (one line, -o)
  timeout 10 scontrol -o show job "$job" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$1=//p"
}
has_checkpoint() { ls -d "$save"/checkpoint-* >/dev/null 2>&1; }
job_over() { # not pending, running, requeued or completing
  state=$(field JobState)
  case $state in '' | PENDING | RUNNING | REQUEUED | COMPLETING | CONFIGURING | SUSPENDED) return 1 ;; esac
}
started_over() { job_over || has_checkpoint; }
diagnose() { # what went on, as TAP comments
  {
    echo "job $job: $(timeout 10 scontrol -o show job "$job" 2>&1)"
    echo "--- $out"; cat "$out"
    for f in "$cluster"/log/slurmctld.log "$cluster"/log/slurmd.log; do
      echo "--- $f (end)"; tail -15 "$f"
    done
  } 2>&1 | sed 's/^/# /'
}

reference() { # shellcheck disable=SC2086 # $launcher: a command line
  timeout -k 5 300 $launcher "$mlp" --steps "$steps" --save-dir "$ref" \
    --save-every "$every" &&
    test -s "$ref/checkpoint-$steps/model.safetensors"
}
check "reference: $steps steps straight through on 2 ranks, outside Slurm" reference

job=$(TANDEM_TRAINER=$mlp TANDEM_LAUNCHER=$job_launcher timeout 30 sbatch --parsable \
  --ntasks=2 --time=10 --output="$out" --chdir="$tmp" \
  "$src/examples/slurm/train.sbatch" --steps "$steps" --save-dir "$save" \
  --save-every "$every" 2>"$tmp/sbatch.err")
job=${job%%;*}
if [ -z "$job" ]; then
  echo "Bail out! sbatch failed"; sed 's/^/# /' "$tmp/sbatch.err"; exit 1
fi
t0=$(date +%s)
# The signal once the job has written a checkpoint: it is training.
if wait_until 60 started_over && ! job_over; then
  check "the job (2 tasks) is training: a checkpoint in its save dir" true
  timeout 10 scancel --batch --signal=USR1 "$job"
  echo "# job $job: SIGUSR1 to the batch shell at $(($(date +%s) - t0)) s"
else
  check "the job (2 tasks) is training: a checkpoint in its save dir" false
fi
# Requeued, pending (cred_expire: about 11 s), run again to the end.
wait_until 180 job_over
echo "# job $job: $(field JobState) at $(($(date +%s) - t0)) s, Restarts=$(field Restarts)"

stopped=$(sed -n 's/^mlp: stopped by signal at step \([0-9]*\).*/\1/p' "$out" | head -1)
stopped_early() { [ -n "$stopped" ] && [ "$stopped" -lt "$steps" ]; }
check "SIGUSR1 reached the ranks: they stopped at step ${stopped:-?} (< $steps)" stopped_early
check "status 75 came through ${job_launcher%% *}: the script requeued the job" \
  grep -q "^train.sbatch: job $job stopped after a checkpoint: requeued" "$out"
requeued_once() {
  [ "$(field Restarts)" = 1 ] &&
    grep -q "^train.sbatch: job $job, restart 1: resuming from $save\$" "$out"
}
check "Slurm started it again once (Restarts=1, SLURM_RESTART_COUNT=1)" requeued_once
check "it resumed from the signal's checkpoint ($save/checkpoint-${stopped:-?})" \
  grep -q "^mlp: resumed from $save/checkpoint-$stopped at step $stopped\$" "$out"
finished() {
  [ "$(field JobState)" = COMPLETED ] && [ "$(field ExitCode)" = 0:0 ] &&
    grep -q "^train.sbatch: job $job finished" "$out"
}
check "and finished: COMPLETED, exit code 0" finished
check "its final weights are byte-identical to the reference's" \
  cmp "$ref/checkpoint-$steps/model.safetensors" "$save/checkpoint-$steps/model.safetensors"
{ stopped_early && requeued_once && finished &&
  cmp -s "$ref/checkpoint-$steps/model.safetensors" "$save/checkpoint-$steps/model.safetensors"
} >/dev/null 2>&1 || diagnose
echo "1..$n"
