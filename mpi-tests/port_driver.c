/* port_driver.c - examples/port/after.c, unchanged, run for tests/port.sh:
 * its main is renamed, and once it returns, rank 0 writes the weights it
 * ends with, one value per line in registration order, to the file
 * PORT_WEIGHTS names.  They are read from after.c's own arrays, which
 * tdm_stop gave back holding the trained values (tdm_bind_param), so the
 * test checks that too. */
#include <stdio.h>
#include <stdlib.h>

#define main port_main
#include "../examples/port/after.c"
#undef main

static int write_weights(const char *path) {
  FILE *out = fopen(path, "w");
  if (!out) {
    perror(path);
    return 1;
  }
  for (int l = 0; l < LAYERS; l++) {
    for (int i = 0; i < fan_in[l] * fan_out[l]; i++)
      fprintf(out, "%.9g\n", weight[l][i]);
    for (int i = 0; i < fan_out[l]; i++)
      fprintf(out, "%.9g\n", bias[l][i]);
  }
  return fclose(out) != 0;
}

/* The exit status says whether the weights were written; whether a short
 * run learned is not asked. */
int main(int argc, char **argv) {
  port_main(argc, argv);
  const char *path = getenv("PORT_WEIGHTS");
  return path && tdm.rank == 0 ? write_weights(path) : 0;
}
