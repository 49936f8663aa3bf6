/* hello_tandem.c - a program outside the tree, built only with
 *   mpicc hello_tandem.c $(pkg-config --cflags --libs tandem)
 * against the installed library: every rank checks one allreduce. */
#include <stdio.h>
#include <tandem.h>

int main(int argc, char **argv) {
  tdm_context *ctx;
  int rank, size, major, minor, patch;
  if (tdm_init(&argc, &argv, NULL, &ctx) != TDM_SUCCESS) {
    fprintf(stderr, "tdm_init: %s\n", tdm_last_error());
    return 1;
  }
  tdm_get_rank(ctx, &rank);
  tdm_get_world_size(ctx, &size);
  tdm_get_version(&major, &minor, &patch);
  double x = rank + 1, sum = 0;
  tdm_status st = tdm_allreduce(ctx, &x, &sum, 1, TDM_F64, TDM_SUM);
  int ok = st == TDM_SUCCESS && sum == size * (size + 1) / 2.0 &&
           major == TDM_VERSION_MAJOR && minor == TDM_VERSION_MINOR;
  tdm_print(ctx, "hello from tandem %d.%d.%d on %d ranks: sum %g %s\n", major,
            minor, patch, size, sum, ok ? "ok" : "WRONG");
  tdm_finalize(ctx);
  return ok ? 0 : 1;
}
