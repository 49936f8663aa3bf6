/* port_driver.c - examples/port/after.c, unchanged, with its end observed
 * for tests/port.sh: main is renamed and tdm_stop is interposed by macros,
 * so that before the session ends every parameter is gathered
 * (tdm_gather_param, collective) and rank 0 writes the values, one per
 * line in registration order, to the file PORT_WEIGHTS names. */
#include <stdio.h>
#include <stdlib.h>

#include "tandem.h"

static tdm_status port_stop(tdm_session *s);
static tdm_status stopped = TDM_ERR_INVALID_USAGE; /* until port_stop */
#define main port_main
#define tdm_stop port_stop
#include "../examples/port/after.c"
#undef main
#undef tdm_stop

static tdm_status port_stop(tdm_session *s) {
  const char *path = getenv("PORT_WEIGHTS");
  FILE *out = path && s->rank == 0 ? fopen(path, "w") : NULL;
  tdm_status st = path && s->rank == 0 && !out ? TDM_ERR_IO : TDM_SUCCESS;
  float *values = malloc(sizeof *values * HIDDEN * HIDDEN);
  for (int l = 0; l < LAYERS && values; l++)
    for (int k = 0; k < 2; k++) {
      int count = k ? fan_out[l] : fan_in[l] * fan_out[l];
      tdm_status one = tdm_gather_param(s->engine, 2 * l + k, values);
      if (one != TDM_SUCCESS && st == TDM_SUCCESS)
        st = one;
      for (int i = 0; out && one == TDM_SUCCESS && i < count; i++)
        fprintf(out, "%.9g\n", values[i]);
    }
  if (out)
    fclose(out);
  free(values);
  if (st != TDM_SUCCESS)
    fprintf(stderr, "port_driver: rank %d: %s: %s\n", s->rank,
            path && !out && s->rank == 0 ? path : "tdm_gather_param",
            tdm_last_error());
  tdm_status end = tdm_stop(s);
  stopped = st != TDM_SUCCESS ? st : end;
  return stopped;
}

/* The exit status is whether the weights were written and the session
 * ended cleanly; whether a short run learned is not asked. */
int main(int argc, char **argv) {
  port_main(argc, argv);
  return stopped == TDM_SUCCESS ? 0 : 1;
}
