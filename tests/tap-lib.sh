# tests/tap-lib.sh - sourced by the shell tests: a temporary folder $tmp
# (removed at exit), Open MPI's switches for root, the sanitizer settings
# (mpi-tests/sanitizer-env.sh), and check, which runs one TAP point.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_btl_base_warn_component_unused=0
. "${TDM_SRCDIR:-.}/mpi-tests/sanitizer-env.sh"
n=0
check() { # description, command...: its output is shown when it fails
  desc=$1; shift
  n=$((n + 1))
  if "$@" >"$tmp/out" 2>&1; then echo "ok $n - $desc"
  else echo "not ok $n - $desc"; sed 's/^/# /' "$tmp/out"; fi
}
