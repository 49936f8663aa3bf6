/* keep_dso.c - test-only LD_PRELOAD shim: dlclose does nothing, so Open
 * MPI's plugins stay mapped until exit and LeakSanitizer can name them in
 * stack traces; mpi-tests/lsan.supp then suppresses MPI's own leaks by
 * library name while leaks in tandem are still reported. */
int dlclose(void *handle);

int dlclose(void *handle) {
  (void)handle;
  return 0;
}
