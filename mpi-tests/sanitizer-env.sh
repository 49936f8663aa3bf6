# Sourced by the test scripts.  Sanitizer builds: leaks are checked, with
# MPI's own suppressed by library name (mpi-tests/lsan.supp); keep_dso.so
# keeps MPI's plugins loaded so their names are known.  It is preloaded
# into the ranks only (mpirun -x), never into python3 or the shell:
# $TDM_SANITIZER_MPI_ARGS goes on every mpirun line.
TDM_SANITIZER_MPI_ARGS= TDM_SANITIZER_PRELOAD=
if [ "${TDM_SANITIZERS:-no}" = yes ]; then
  export ASAN_OPTIONS="detect_leaks=1:verify_asan_link_order=0:fast_unwind_on_malloc=0"
  export LSAN_OPTIONS="suppressions=$TDM_SRCDIR/mpi-tests/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  TDM_SANITIZER_PRELOAD=$TDM_BUILDDIR/mpi-tests/.libs/keep_dso.so
  TDM_SANITIZER_MPI_ARGS="-x LD_PRELOAD=$TDM_SANITIZER_PRELOAD"
fi
