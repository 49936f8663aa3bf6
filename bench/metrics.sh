#!/bin/sh
# bench/metrics.sh - the cost of metrics in a real run: examples/mlp on
# NP ranks (default 2) with and without TANDEM_METRICS_DIR, in the same
# run, alternating (off, on, off, on, ...) so that drift hits both.
# A step's time is the difference of two runs' wall times, of SHORT and
# LONG steps, over LONG - SHORT: start-up and teardown cancel.  Each
# metrics step writes the loss line and the engine's 12 tandem/ scalars.
#   bench/metrics.sh [BUILD_DIR]    env: NP, REPS (5), SHORT (500), LONG (2500)
build=${1:-_build/nocuda}
mlp=$build/examples/mlp/mlp
np=${NP:-2} reps=${REPS:-5} short=${SHORT:-500} long=${LONG:-2500}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export TANDEM_DEVICE=cpu
unset TANDEM_METRICS_DIR TANDEM_METRICS_ALL_RANKS
wall() { # steps, metrics (0 or 1): prints seconds
  start=$(date +%s.%N)
  if [ "$2" = 1 ]; then
    rm -rf "$tmp/m"
    TANDEM_METRICS_DIR="$tmp/m" timeout 300 mpirun --oversubscribe --mca pml ob1 \
      -np "$np" "$mlp" --steps "$1" >/dev/null 2>&1 || echo FAILED >&2
  else
    timeout 300 mpirun --oversubscribe --mca pml ob1 -np "$np" "$mlp" \
      --steps "$1" >/dev/null 2>&1 || echo FAILED >&2
  fi
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN {printf "%.6f\n", b - a}'
}
: >"$tmp/off"; : >"$tmp/on"
for r in $(seq "$reps"); do
  for m in 0 1; do
    a=$(wall "$short" $m); b=$(wall "$long" $m)
    step=$(awk -v a="$a" -v b="$b" -v n=$((long - short)) \
      'BEGIN {printf "%.3f\n", (b - a) * 1e6 / n}')
    [ $m = 1 ] && echo "$step" >>"$tmp/on" || echo "$step" >>"$tmp/off"
  done
done
median() { sort -g "$1" | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
off=$(median "$tmp/off") on=$(median "$tmp/on")
printf 'examples/mlp, %d ranks, median of %d (steps %d..%d), us per step\n' \
  "$np" "$reps" "$short" "$long"
awk -v off="$off" -v on="$on" 'BEGIN {
  printf "%-24s %10.1f\n%-24s %10.1f\n%-24s %9.2f%%\n",
    "metrics off (baseline)", off, "metrics on", on, "overhead",
    (on - off) * 100 / off }'
