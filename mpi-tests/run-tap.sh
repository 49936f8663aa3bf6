#!/bin/sh
# Runs one test program and reports TAP, one line per run.
#   t_*  : under mpirun at every size in TDM_TEST_NP (default 1 2 3 4) and on
#          every transport in TDM_TEST_PML (default: ob1 = Open MPI's default
#          BTLs, ucx = UCX), each run under a timeout so nothing hangs.
#   u_*  : a serial unit test, run once.
# Exit status 77 from a program reports the run as skipped.
prog=$1
name=$(basename "$prog")
# A hang guard, not a speed limit: sanitizer builds run several times
# slower, and make check -j runs two tests side by side.
if [ "${TDM_SANITIZERS:-no}" = yes ]; then timeout_s=${TDM_TEST_TIMEOUT:-300}
else timeout_s=${TDM_TEST_TIMEOUT:-120}; fi
MPIRUN=${MPIRUN:-mpirun}
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# The tests' models compute on the host: their engines stay there where a
# GPU is visible, unless a run asks for the fake GPU's device path.  The
# GPU tests ask for cuda in their options, which the environment cannot
# override.
if [ "${TANDEM_TEST_FAKE_GPU:-0}" != 1 ]; then
  export TANDEM_DEVICE="${TANDEM_DEVICE:-cpu}"
fi
# Keep Open MPI quiet about missing high-speed devices in containers.
export OMPI_MCA_btl_base_warn_component_unused=0
. "$TDM_SRCDIR/mpi-tests/sanitizer-env.sh"
[ -n "$TDM_SANITIZER_PRELOAD" ] && export LD_PRELOAD="$TDM_SANITIZER_PRELOAD"

n=0
report() { # status description logfile
  n=$((n + 1))
  case $1 in
    0) echo "ok $n - $2" ;;
    77) echo "ok $n - $2 # SKIP $(grep -m1 -i skip "$3" | cut -c1-120)" ;;
    124|137) echo "not ok $n - $2 (timed out after ${timeout_s}s)"; sed 's/^/# /' "$3" ;;
    *) echo "not ok $n - $2 (exit $1)"; sed 's/^/# /' "$3" ;;
  esac
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
case $name in
  u_*)
    timeout -k 5 "$timeout_s" "$prog" >"$log" 2>&1
    report $? "$name" "$log"
    ;;
  *)
    for np in ${TDM_TEST_NP:-1 2 3 4}; do
      for pml in ${TDM_TEST_PML:-ob1 ucx}; do
        case $pml in
          ucx) mca="--mca pml ucx --mca pml_ucx_tls any --mca pml_ucx_devices any" ;;
          *) mca="--mca pml ob1" ;;
        esac
        # shellcheck disable=SC2086
        timeout -k 5 "$timeout_s" "$MPIRUN" --oversubscribe $mca -np "$np" \
          "$prog" >"$log" 2>&1
        report $? "$name np=$np pml=$pml" "$log"
      done
    done
    ;;
esac
echo "1..$n"
