#!/bin/sh
# Crash safety of checkpoints, as TAP: examples/mlp on 2 ranks saves every
# step (total_limit 3) while one of its rank processes is killed with
# SIGKILL at a random moment, round after round, until at least
# CKPT_CRASH_SAVES (100) checkpoints were committed.  After every kill the
# newest complete checkpoint (a folder with its done marker) is checked
# without tandem (every listed file there with its listed size, the
# safetensors headers sound, state.json JSON), and a resume from the
# folder must load it and train on with the losses of a run that was
# never stopped; a failed or different load is a corrupt load.
#   CKPT_CRASH_SAVES    saves to reach (default 100)
#   CKPT_CRASH_SECONDS  global deadline (default 480): the test then
#                       reports what it has
#   CKPT_CRASH_WINDOW_MS the kill comes 0..this many ms after the run's
#                       first save began or completed (default: about
#                       one save's time, measured as the test goes)
#   CKPT_CRASH_SEED     seed of the kill schedule (printed; default random)
#   MLP                 the mlp program (default $TDM_BUILDDIR/examples/mlp/mlp)
build=${TDM_BUILDDIR:-.}
mlp=${MLP:-$build/examples/mlp/mlp}
MPIRUN=${MPIRUN:-mpirun}
want=${CKPT_CRASH_SAVES:-100}
budget=${CKPT_CRASH_SECONDS:-480}
fixed_window=${CKPT_CRASH_WINDOW_MS:-}
window=${CKPT_CRASH_WINDOW_MS:-10}
seed=${CKPT_CRASH_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
seed0=$seed
seed=$((seed % 2147483648))

for tool in "$MPIRUN" timeout pgrep python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "1..0 # SKIP no $tool"; exit 0; }
done
[ -x "$mlp" ] || { echo "1..0 # SKIP no $mlp (build examples/mlp)"; exit 0; }

if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_btl_base_warn_component_unused=0 TANDEM_DEVICE=cpu
. "${TDM_SRCDIR:-.}/mpi-tests/sanitizer-env.sh"
unset TANDEM_ZERO_STAGE TANDEM_MIXED_PRECISION TANDEM_GRADIENT_ACCUMULATION_STEPS

tmp=$(mktemp -d)
root=$tmp/ckpt-crash-root # unique: its processes are found by this path
job=

# Every process of the test's runs: descendants of pid.
children() { # (/proc's lists are quick; pgrep scans every process)
  if [ -r "/proc/$1/task/$1/children" ]; then
    cat /proc/"$1"/task/*/children 2>/dev/null
  else
    pgrep -P "$1" 2>/dev/null
  fi
}
descendants() {
  for c in $(children "$1"); do
    echo "$c"
    descendants "$c"
  done
}
# Ends what this test started, and only that: the current run's process
# tree, then anything still naming the test's unique root.
reap() {
  if [ -n "$job" ]; then
    for p in $(descendants "$job"); do kill -9 "$p" 2>/dev/null; done
  fi
  for p in $(pgrep -f -- "$root" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
}
cleanup() {
  reap
  [ -n "$job" ] && wait "$job" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# The kill schedule: an LCG on the printed seed, so a failure's schedule
# can be replayed with CKPT_CRASH_SEED.
rand() { # sets r to 0..$1-1
  seed=$(( (seed * 1103515245 + 12345) % 2147483648 ))
  r=$(( (seed / 65536) % $1 ))
}
msleep() { sleep "$(( $1 / 1000 )).$(printf %03d $(( $1 % 1000 )))"; }
now() { date +%s; }
ms_now() { # (GNU date; elsewhere whole seconds)
  case ${ms_ok:=$(date +%3N)} in
    *N*) echo $(( $(date +%s) * 1000 )) ;;
    *) date +%s%3N ;;
  esac
}
start=$(now)
deadline=$((start + budget))

# The independent check: python3 with json and struct only.
cat >"$tmp/check.py" <<'EOF'
import json, os, re, struct, sys

root = sys.argv[1]
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4,
         "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1,
         "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}

def marker(d):
    """The files the done marker lists, {name: size}; raises on a bad one."""
    with open(os.path.join(d, "done"), "rb") as f:
        text = f.read()
    lines = text.split(b"\n")
    if lines[0] != b"tandem-checkpoint 1" or lines[-1] != b"":
        raise ValueError("done: not a complete tandem marker: %r" % text[:60])
    listed = {}
    for line in lines[1:-1]:
        m = re.fullmatch(rb"(\d+) ([^/\n]+)", line)
        if not m:
            raise ValueError("done: bad line %r" % line)
        listed[m.group(2).decode()] = int(m.group(1))
    return listed

def missing(d, listed):
    bad = []
    for name, size in listed.items():
        p = os.path.join(d, name)
        if not os.path.isfile(p):
            bad.append("%s: listed, missing" % name)
        elif os.path.getsize(p) != size:
            bad.append("%s: %d bytes, done lists %d"
                       % (name, os.path.getsize(p), size))
    return bad

def safetensors(p):
    size = os.path.getsize(p)
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("shorter than 8 bytes")
        n = struct.unpack("<Q", head)[0]
        if n > size - 8:
            raise ValueError("header of %d bytes in a %d-byte file" % (n, size))
        h = json.loads(f.read(n))
    if not isinstance(h, dict):
        raise ValueError("header is not a JSON object")
    data = size - 8 - n
    for name, t in h.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        count = 1
        for s in t["shape"]:
            count *= s
        if not 0 <= b <= e <= data:
            raise ValueError("%s: offsets %d..%d outside %d data bytes"
                             % (name, b, e, data))
        if t["dtype"] not in SIZES or e - b != count * SIZES[t["dtype"]]:
            raise ValueError("%s: %s %s in %d bytes"
                             % (name, t["dtype"], t["shape"], e - b))
    return len(h)

tmp = unmarked = partial = torn = 0
steps = []
names = sorted(os.listdir(root)) if os.path.isdir(root) else []
for name in names:
    d = os.path.join(root, name)
    m = re.fullmatch(r"checkpoint-(\d+)", name)
    if re.fullmatch(r"checkpoint-\d+\.tmp-\d+", name):
        tmp += 1
    elif m and not os.path.exists(os.path.join(d, "done")):
        unmarked += 1
    elif m:
        steps.append(int(m.group(1)))
        try:
            marker(d)
        except (OSError, ValueError):
            torn += 1
steps.sort()
errors = []
for s in steps[:-1]:  # older ones may be half removed by the rotation
    d = os.path.join(root, "checkpoint-%d" % s)
    try:
        if missing(d, marker(d)):
            partial += 1
    except (OSError, ValueError):
        partial += 1
if steps:
    d = os.path.join(root, "checkpoint-%d" % steps[-1])
    try:
        listed = marker(d)
        errors += missing(d, listed)
        for need in ("state.json",):
            if need not in listed:
                errors.append("done does not list " + need)
        if "model.safetensors" not in listed and \
           "model.safetensors.index.json" not in listed:
            errors.append("done lists no model")
        for name in sorted(listed):
            p = os.path.join(d, name)
            if not os.path.isfile(p):
                continue
            try:
                if name.endswith(".safetensors"):
                    safetensors(p)
                elif name.endswith(".json"):
                    with open(p, "rb") as f:
                        json.loads(f.read())
            except (OSError, ValueError, KeyError, TypeError) as e:
                errors.append("%s: %s" % (name, e))
    except (OSError, ValueError) as e:
        errors.append(str(e))
print("newest %d" % (steps[-1] if steps else -1))
print("left tmp=%d unmarked=%d complete=%d partial=%d torn_marker=%d"
      % (tmp, unmarked, len(steps), partial, torn))
print("names " + " ".join(names))
for e in errors:
    print("error checkpoint-%d/%s" % (steps[-1], e))
sys.exit(1 if errors else 0)
EOF

mpi() { # seconds, then mpirun arguments
  secs=$1; shift
  timeout -k 5 "$secs" "$MPIRUN" --oversubscribe --mca pml ob1 $TDM_SANITIZER_MPI_ARGS "$@" </dev/null
}
# The losses of an uninterrupted run of $1 steps from step $2 on, and the
# final line (cached per length).
reference() {
  if [ ! -e "$tmp/ref-$1.rc" ]; then
    mpi 120 -np 2 "$mlp" --steps "$1" >"$tmp/ref-$1.log" 2>&1
    echo $? >"$tmp/ref-$1.rc"
  fi
  losses "$2" <"$tmp/ref-$1.log"
}
losses() { awk -v s="$1" '($1 == "step" && $2 + 0 >= s + 0) ||
                           ($1 == "mlp:" && $2 == "loss")'; }

# Sets victim (and rank) to rank process $pick of mpirun, once both ranks
# are there.
find_victim() {
  for p in $(descendants "$job"); do
    case $(cat "/proc/$p/comm" 2>/dev/null) in
      mpirun|orterun|prterun)
        set -- $(children "$p")
        if [ $# = 2 ]; then
          shift "$pick"
          victim=$1
          rank=$(tr '\0' '\n' <"/proc/$victim/environ" 2>/dev/null |
                 sed -n 's/^OMPI_COMM_WORLD_RANK=//p')
        fi ;;
    esac
  done
}

n=0 fails=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
notok() { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $*"; }
quote() { sed 's/^/#   /' "$@" | head -40; }
folders() { # the root's folders, files and done markers, as TAP comments
  for d in "$root"/*; do
    [ -d "$d" ] || continue
    echo "${d##*/}:"
    ls -l "$d" | sed 1d
    [ -f "$d/done" ] && sed 's/^/  done: /' "$d/done"
  done | sed 's/^/#     /'
}

echo "# seed $seed0 (CKPT_CRASH_SEED=$seed0 replays the kill schedule), saves wanted $want, deadline ${budget}s"
saves=0 kills=0 resumes=0 corrupt=0 rounds=0 invalid=0
during_write=0 after_rename=0 marking=0 rotating=0 between=0
newest=-1  # the newest complete step (-1: none yet)
ever=0     # whether a checkpoint was ever complete
while [ "$saves" -lt "$want" ] && [ "$(now)" -lt "$deadline" ] &&
      [ "$fails" -lt 3 ] && [ "$corrupt" = 0 ]; do
  rounds=$((rounds + 1))
  resume=
  [ "$newest" -ge 0 ] && resume="--resume $root"
  before=$(ls -a "$root" 2>/dev/null)
  base=$((newest < 0 ? 0 : newest))
  rm -f "$tmp/run.rc"
  # shellcheck disable=SC2086
  ( mpi 300 -np 2 "$mlp" --steps 100000000 --save-dir "$root" \
      --save-every 1 $resume >"$tmp/run.log" 2>&1
    echo $? >"$tmp/run.rc" ) &
  job=$!
  # Meanwhile the victim: one of this mpirun's 2 ranks, chosen at random.
  # Then, until the run's first save begins (the root's entries change),
  # bounded; then the random moment.
  victim= rank=? i=0
  rand 2
  pick=$r
  while [ $i -lt 1500 ] && [ ! -e "$tmp/run.rc" ] &&
        [ "$(ls -a "$root" 2>/dev/null)" = "$before" ]; do
    [ -z "$victim" ] && find_victim
    sleep 0.01
    i=$((i + 1))
  done
  [ -z "$victim" ] && find_victim
  # The moment: k (0 or 1) saves of this run complete, then 0..window ms,
  # window about one save's time (measured, unless CKPT_CRASH_WINDOW_MS).
  rand 2
  k=$r
  t0=$(ms_now)
  i=0
  while [ "$k" -gt 0 ] && [ $i -lt 3000 ] && [ ! -e "$tmp/run.rc" ] &&
        [ ! -e "$root/checkpoint-$((base + k))/done" ]; do
    sleep 0.005
    i=$((i + 1))
  done
  if [ "$k" -gt 0 ] && [ -e "$root/checkpoint-$((base + k))/done" ] &&
     [ -z "$fixed_window" ]; then
    per=$(( ($(ms_now) - t0) / k ))
    window=$(( (3 * window + per + 3) / 4 ))
  fi
  rand $((window + 1))
  delay=$r
  [ "$delay" -gt 0 ] && msleep "$delay"
  if [ ! -e "$tmp/run.rc" ] && [ -n "$victim" ]; then
    kill -9 "$victim" 2>/dev/null && kills=$((kills + 1))
  elif [ -e "$tmp/run.rc" ]; then
    notok "round $rounds: the run ended by itself, exit $(cat "$tmp/run.rc"), before the kill"
    quote "$tmp/run.log"
    grep -q 'TDM_ERR_FORMAT\|TDM_ERR_IO\|holds no complete' "$tmp/run.log" &&
      corrupt=$((corrupt + 1))
    wait "$job"
    job=
    continue
  fi
  # mpirun ends the job; bounded, then SIGKILL to all of it.
  i=0
  while [ $i -lt 300 ] && [ ! -e "$tmp/run.rc" ]; do sleep 0.05; i=$((i + 1)); done
  [ -e "$tmp/run.rc" ] || reap
  wait "$job"
  job=
  left=$(pgrep -f -- "$root")
  if [ -n "$left" ]; then
    notok "round $rounds: processes left running after mpirun ended: $left"
    reap
  fi
  [ -n "$victim" ] || { notok "round $rounds: no rank process found to kill"; quote "$tmp/run.log"; continue; }

  # What the kill left, checked without tandem.
  python3 "$tmp/check.py" "$root" >"$tmp/check.out" 2>&1
  valid=$?
  now_newest=$(sed -n 's/^newest //p' "$tmp/check.out")
  state=$(sed -n 's/^left //p' "$tmp/check.out")
  st_tmp=0 st_unmarked=0 st_complete=0 st_partial=0 st_torn_marker=0
  eval "$(echo "$state" | tr ' ' '\n' | sed 's/^/st_/')"
  if [ "$st_torn_marker" -gt 0 ]; then marking=$((marking + 1)); moment="writing the done marker"
  elif [ "${st_tmp:-0}" -gt 0 ]; then during_write=$((during_write + 1)); moment="writing"
  elif [ "${st_unmarked:-0}" -gt 0 ]; then after_rename=$((after_rename + 1)); moment="renamed, unmarked"
  elif [ "${st_complete:-0}" -gt 3 ] || [ "${st_partial:-0}" -gt 0 ]; then
    rotating=$((rotating + 1)); moment="rotating"
  else between=$((between + 1)); moment="between saves"; fi
  what="round $rounds: rank $rank killed ${delay}ms after save +$k ($moment: $state)"
  if [ -z "$now_newest" ]; then
    notok "$what: the folder check failed"
    quote "$tmp/check.out"
    continue
  fi
  if [ "$valid" != 0 ]; then # (and the resume below tells what tandem makes of it)
    invalid=$((invalid + 1))
    notok "$what: the newest complete checkpoint is not intact"
    quote "$tmp/check.out"
    folders
  fi
  if [ "$now_newest" -lt "$newest" ]; then
    notok "$what: the newest complete checkpoint went from $newest back to $now_newest"
    quote "$tmp/check.out"
    newest=$now_newest
    continue
  fi
  gained=$((now_newest - (newest < 0 ? 0 : newest)))
  [ "$now_newest" -ge 0 ] && saves=$((saves + gained)) && newest=$now_newest
  if [ "$newest" -lt 0 ]; then
    if [ "$ever" = 1 ]; then
      corrupt=$((corrupt + 1))
      notok "$what: no complete checkpoint is left"
      quote "$tmp/check.out"
    else
      ok "$what: no save completed yet, nothing to resume"
    fi
    continue
  fi
  ever=1

  # The resume: checkpoint-$newest, then the losses of a straight run.
  steps=$(( (newest + 2 + 99) / 100 * 100 ))
  [ "$steps" -lt 200 ] && steps=200
  left_s=$((deadline - $(now)))
  t=120
  [ "$left_s" -lt 100 ] && t=$((left_s + 20))
  [ "$t" -lt 15 ] && t=15
  mpi "$t" -np 2 "$mlp" --steps "$steps" --resume "$root" >"$tmp/resume.log" 2>&1
  rc=$?
  reference "$steps" "$newest" >"$tmp/expected"
  losses "$newest" <"$tmp/resume.log" >"$tmp/got"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    notok "$what: the resume timed out after ${t}s"
    quote "$tmp/resume.log"
  elif grep -q 'TDM_ERR_FORMAT\|TDM_ERR_IO\|holds no complete' "$tmp/resume.log"; then
    corrupt=$((corrupt + 1))
    notok "$what: the resume failed to load (exit $rc)"
    quote "$tmp/check.out" "$tmp/resume.log"
    folders
  elif ! grep -qF "mlp: resumed from $root/checkpoint-$newest at step $newest" "$tmp/resume.log"; then
    corrupt=$((corrupt + 1))
    notok "$what: the resume did not load checkpoint-$newest (exit $rc)"
    quote "$tmp/check.out" "$tmp/resume.log"
    folders
  elif ! cmp -s "$tmp/expected" "$tmp/got" || [ ! -s "$tmp/got" ]; then
    corrupt=$((corrupt + 1))
    notok "$what: resumed from checkpoint-$newest, but its losses are not an uninterrupted run's"
    diff "$tmp/expected" "$tmp/got" | quote
    folders
  elif [ "$rc" != "$(cat "$tmp/ref-$steps.rc")" ] || [ "$rc" != 0 ]; then
    notok "$what: the resume to step $steps exited $rc"
    quote "$tmp/resume.log"
  else
    resumes=$((resumes + 1))
    ok "$what: saves $saves, resumed from checkpoint-$newest to step $steps, same losses"
  fi
done
elapsed=$(( $(now) - start ))

left=$(pgrep -f -- "$root")
if [ -z "$left" ]; then ok "no process of the test left running"
else notok "processes left running: $left"; reap; fi
if [ "$saves" -ge "$want" ]; then ok "$saves saves (at least $want) under $kills kills"
elif [ "$fails" -gt 0 ]; then notok "stopped at $saves of $want saves after $fails failures"
else ok "$saves of $want saves when the ${budget}s deadline came # SKIP deadline"
fi
echo "# kill moments: writing $during_write, renamed but unmarked $after_rename, writing the marker $marking, rotating $rotating, between saves $between"
echo "# rounds $rounds in ${elapsed}s, seed $seed0, window at the end ${window}ms, invalid newest checkpoints $invalid"
echo "# saves $saves, kills $kills, resumes $resumes, corrupt loads $corrupt"
echo "1..$n"
[ "$fails" = 0 ] && [ "$corrupt" = 0 ]
