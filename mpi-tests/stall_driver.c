/* stall_driver.c - a training loop that goes wrong on one rank, for
 * tests/resilience.sh:
 *   stall_driver skip-backward R   rank R skips tdm_backward_end and
 *                                  tdm_step at step 5 and goes on to the
 *                                  loss allreduce
 *   stall_driver mismatch R        at step 5 rank R calls tdm_broadcast
 *                                  where the others call tdm_allreduce
 *   stall_driver stop-big R        at step 5 rank R stops itself (SIGSTOP)
 *                                  before a 4 MiB tdm_allreduce: the
 *                                  others wait in MPI's blocking call on
 *                                  the watchdog's worker thread
 * Every rank prints "rank N: STATUS: message" for the first failure and
 * then, after a timeout, brings the job down with tdm_abort (the only
 * way to end a rank that waits forever); a run that fails nowhere exits
 * 0 after 20 steps. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tandem.h"

#define N 4096

static tdm_context *ctx;
static int rank;

static void check(tdm_status st, const char *call) {
  if (st == TDM_SUCCESS)
    return;
  printf("rank %d: %s: %s: %s\n", rank, call, tdm_status_string(st),
         tdm_last_error());
  fflush(stdout);
  if (st == TDM_ERR_TIMEOUT)
    tdm_abort(ctx, 3);
  /* Every rank got the same error (tandem agrees on it): all of them
   * print it before any exits, or mpirun would kill the slower ones. */
  tdm_finalize(ctx);
  exit(2);
}
#define CHECK(call) check((call), #call)

int main(int argc, char **argv) {
  if (argc != 3 || (strcmp(argv[1], "skip-backward") &&
                    strcmp(argv[1], "mismatch") && strcmp(argv[1], "stop-big"))) {
    fprintf(stderr, "usage: stall_driver skip-backward|mismatch|stop-big "
            "RANK\n");
    return 64;
  }
  int bad_rank = atoi(argv[2]), skip = !strcmp(argv[1], "skip-backward");
  int stop_big = !strcmp(argv[1], "stop-big");
  static float big[1 << 20], big_sum[1 << 20];
  CHECK(tdm_init(&argc, &argv, NULL, &ctx));
  CHECK(tdm_get_rank(ctx, &rank));
  tdm_engine *e;
  tdm_optimizer *opt;
  int m, p;
  int64_t shape[1] = {N};
  CHECK(tdm_engine_create(ctx, &e));
  CHECK(tdm_add_module(e, "layer", &m));
  CHECK(tdm_add_param(e, m, "layer.w", TDM_F32, 1, shape, NULL, 0, &p));
  CHECK(tdm_prepare(e));
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  CHECK(tdm_optimizer_create(e, &oo, &opt));
  for (int step = 0; step < 20; step++) {
    int wrong = step == 5 && rank == bad_rank;
    CHECK(tdm_backward_begin(e));
    CHECK(tdm_fetch_module(e, m));
    void *data, *grad;
    CHECK(tdm_param_buffers(e, p, &data, &grad));
    for (int i = 0; i < N; i++)
      ((float *)grad)[i] = 0.001f * (float)(i % 7);
    CHECK(tdm_grad_ready(e, p));
    CHECK(tdm_release_module(e, m));
    if (!(wrong && skip)) {
      CHECK(tdm_backward_end(e));
      CHECK(tdm_step(opt, NULL));
    }
    if (stop_big) {
      if (wrong)
        raise(SIGSTOP);
      CHECK(tdm_allreduce(ctx, big, big_sum, 1 << 20, TDM_F32, TDM_SUM));
    }
    double loss = 1.0 / (step + 1), mean;
    if (wrong && !skip && !stop_big)
      CHECK(tdm_broadcast(ctx, &loss, 1, TDM_F64, 0));
    else
      CHECK(tdm_allreduce(ctx, &loss, &mean, 1, TDM_F64, TDM_MEAN));
  }
  CHECK(tdm_optimizer_destroy(opt));
  CHECK(tdm_engine_destroy(e));
  CHECK(tdm_finalize(ctx));
  printf("rank %d: no failure\n", rank);
  return 0;
}
