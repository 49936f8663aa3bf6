#!/bin/sh
# scripts/slurm-local.sh - a real one-node Slurm cluster on this machine,
# for trying examples/slurm/train.sbatch and for tests/slurm.sh:
#
#   scripts/slurm-local.sh start DIR [CPUS]
#   export SLURM_CONF=DIR/slurm.conf      # then sbatch, squeue, scontrol ...
#   scripts/slurm-local.sh stop DIR
#
# With SLURM_LOCAL_OWNER=PID in the environment, start also leaves a
# watcher that stops the cluster (as stop does) once process PID has
# ended, however it ended: tests/slurm.sh passes its own pid.
# start runs munged (a new key), slurmctld and slurmd as the calling user
# (root: slurmd needs it to start jobs) with everything - slurm.conf, the
# munge socket, state, spool, pid files and logs (DIR/log) - inside DIR,
# on two free TCP ports, so it disturbs no Slurm or munge already on the
# machine.  It returns once the node is idle.  The node has CPUS CPUs
# (default: those of the machine, at least 2) whatever the hardware has.
# No cgroups, no accounting (sacct does not work), no mail.
# For tests, two settings differ from Slurm's defaults: a requeued job may
# start again 11 s after its requeue (AuthInfo cred_expire=10: Slurm
# makes it wait for the job credential's lifetime, 120 s by default), and
# the scheduler looks at the queue every 2 s (default 60).
# stop cancels the cluster's jobs, stops the three daemons (checked by
# their pid files and command lines) and removes DIR.
# Needs Debian's slurm-wlm and munge (scripts/deps.sh --test installs
# them).  Exit status: 0; 77 when they are missing or the daemons do not
# start here (the reason on stderr, the logs in DIR/log); 2 usage.
set -u
me=slurm-local
usage() { echo "usage: $0 start DIR [CPUS] | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1
case $2 in /*) dir=$2 ;; *) dir=$(pwd)/$2 ;; esac
conf=$dir/slurm.conf
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")

# The pid in FILE when it is a live process whose command line names DIR
# (so a recycled pid is never signalled).
our_pid() {
  [ -s "$1" ] || return 1
  p=$(cat "$1")
  case $p in '' | *[!0-9]*) return 1 ;; esac
  tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF "$dir" || return 1
  echo "$p"
}

alive() { # pid: running, not a zombie waiting for its parent
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)
  [ -n "$st" ] && [ "$st" != Z ]
}

stop_daemon() { # pid file
  p=$(our_pid "$1") || return 0
  kill "$p" 2>/dev/null
  i=0
  while alive "$p" && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  alive "$p" && kill -9 "$p" 2>/dev/null
  return 0
}

stop() {
  if [ -f "$conf" ] && our_pid "$dir/run/slurmctld.pid" >/dev/null; then
    export SLURM_CONF="$conf"
    timeout 15 scancel --user="$(id -un)" 2>/dev/null
    i=0 # slurmd ends the jobs' processes (KillWait=5 s from TERM to KILL)
    while [ -n "$(timeout 10 squeue -h -o %i 2>/dev/null)" ] && [ $i -lt 150 ]; do
      sleep 0.1; i=$((i + 1))
    done
  fi
  stop_daemon "$dir/run/slurmd.pid"
  stop_daemon "$dir/run/slurmctld.pid"
  stop_daemon "$dir/run/munged.pid"
  rm -rf "$dir"
}

fail() { # reason: the daemons are stopped, DIR is kept for its logs
  echo "$me: $*" >&2
  for f in "$dir"/log/*.log; do
    [ -s "$f" ] && { echo "$me: $f:" >&2; tail -5 "$f" | sed 's/^/  /' >&2; }
  done
  stop_daemon "$dir/run/slurmd.pid"
  stop_daemon "$dir/run/slurmctld.pid"
  stop_daemon "$dir/run/munged.pid"
  exit 77
}

# A TCP port no socket on this machine uses, from 20000 + a hash of our
# pid on; $1: a port to avoid as well.
free_port() {
  port=$((20000 + ($$ * 37 + ${1:-0}) % 20000))
  tries=0
  while [ $tries -lt 500 ]; do
    hex=$(printf '%04X' "$port")
    if [ "$port" != "${1:-0}" ] &&
      ! cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -q ":$hex "; then
      echo "$port"; return 0
    fi
    port=$((port + 1)); tries=$((tries + 1))
  done
  return 1
}

start() {
  cpus=${1:-$(nproc)}
  [ "$cpus" -ge 2 ] 2>/dev/null || cpus=2
  for c in munged munge slurmctld slurmd sbatch scontrol scancel squeue sinfo; do
    command -v "$c" >/dev/null 2>&1 ||
      { echo "$me: no $c (Debian: apt-get install slurm-wlm munge)" >&2; exit 77; }
  done
  [ -e "$conf" ] && { echo "$me: $conf exists: stop that cluster first" >&2; exit 2; }
  user=$(id -un)
  node=$(uname -n | cut -d. -f1)
  mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/run" "$dir/log" \
    "$dir/tmp" || exit 77
  # munged wants the folders above its socket open to all (o+x), else
  # only warns with --force (as every daemon here runs as this user, the
  # socket is theirs anyway), and its key private.
  chmod 755 "$dir" "$dir/munge"
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 2>/dev/null
  chmod 600 "$dir/munge/munge.key"
  sock=$dir/munge/munge.socket
  # The daemons' own messages before they detach: DIR/log/daemons.log.
  daemons=$dir/log/daemons.log
  timeout 20 munged --force --socket="$sock" --key-file="$dir/munge/munge.key" \
    --log-file="$dir/log/munged.log" --pid-file="$dir/run/munged.pid" \
    --seed-file="$dir/munge/munged.seed" </dev/null >>"$daemons" 2>&1 ||
    fail "munged does not start"
  timeout 10 munge -n -S "$sock" | timeout 10 unmunge -S "$sock" >/dev/null ||
    fail "munge credentials do not work"

  ctld_port=$(free_port) || fail "no free TCP port"
  slurmd_port=$(free_port "$ctld_port") || fail "no free TCP port"
  : >"$dir/plugstack.conf"
  cat >"$conf" <<EOF
# A one-node cluster for tandem's tests (scripts/slurm-local.sh).
ClusterName=tandem
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
# (srun --mpi=pmix's per-step folders: not /tmp, which other clusters share)
TmpFS=$dir/tmp
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
PlugStackConfig=$dir/plugstack.conf
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=5
InactiveLimit=0
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF="$conf"
  timeout 30 slurmctld -f "$conf" </dev/null >>"$daemons" 2>&1 ||
    fail "slurmctld does not start"
  timeout 30 slurmd -f "$conf" -N "$node" </dev/null >>"$daemons" 2>&1 ||
    fail "slurmd does not start"
  i=0 state=
  while [ $i -lt 300 ]; do # 30 s
    state=$(timeout 10 sinfo -h -n "$node" -o %T 2>/dev/null)
    case $state in idle*) break ;; esac
    sleep 0.1; i=$((i + 1))
  done
  case $state in
  idle*) ;;
  *) fail "node $node is not idle after 30 s (state '${state:-no answer}')" ;;
  esac
  owner=${SLURM_LOCAL_OWNER:-}
  if [ -n "$owner" ]; then
    (
      while kill -0 "$owner" 2>/dev/null && [ -e "$conf" ]; do sleep 1; done
      [ -e "$conf" ] && sh "$self" stop "$dir"
    ) </dev/null >/dev/null 2>&1 &
  fi
  echo "$me: Slurm is up in $dir: export SLURM_CONF=$conf"
}

case $cmd in
start) start "${3:-}" ;;
stop) stop ;;
*) usage ;;
esac
