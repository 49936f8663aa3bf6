/* collectives_report.c - the main job until the training engine lands:
 * every rank contributes data, the host collectives combine it, every
 * result is checked against its closed form, and the main rank prints a
 * report.   mpirun -np 4 ./examples/collectives_report */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tandem.h"

#define TRY(call)                                                          \
  do {                                                                     \
    tdm_status st_ = (call);                                               \
    if (st_ != TDM_SUCCESS) {                                              \
      fprintf(stderr, "%s failed: %s: %s\n", #call,                        \
              tdm_status_string(st_), tdm_last_error());                   \
      exit(1);                                                             \
    }                                                                      \
  } while (0)

static int rank, size, wrong;

static void expect(tdm_context *ctx, const char *what, double got, double want) {
  int ok = got == want;
  wrong += !ok;
  int all_ok = 0, mine = ok;
  TRY(tdm_allreduce(ctx, &mine, &all_ok, 1, TDM_I32, TDM_MIN));
  TRY(tdm_print(ctx, "  %-44s %14.6g  %s\n", what, want,
                all_ok ? "ok" : "WRONG"));
}

int main(int argc, char **argv) {
  tdm_context *ctx;
  TRY(tdm_init(&argc, &argv, NULL, &ctx));
  TRY(tdm_get_rank(ctx, &rank));
  TRY(tdm_get_world_size(ctx, &size));
  int nodes, local_size;
  TRY(tdm_get_node_count(ctx, &nodes));
  TRY(tdm_get_local_size(ctx, &local_size));
  TRY(tdm_print(ctx, "tandem collectives report: %d ranks on %d node(s), "
                "%d per node\n", size, nodes, local_size));

  /* A metric per rank: each rank's "loss" is rank + 1. */
  double loss = rank + 1, sum, mean, max;
  TRY(tdm_allreduce(ctx, &loss, &sum, 1, TDM_F64, TDM_SUM));
  TRY(tdm_allreduce(ctx, &loss, &mean, 1, TDM_F64, TDM_MEAN));
  TRY(tdm_allreduce(ctx, &loss, &max, 1, TDM_F64, TDM_MAX));
  expect(ctx, "allreduce sum of rank+1", sum, size * (size + 1) / 2.0);
  expect(ctx, "allreduce mean of rank+1", mean, (size + 1) / 2.0);
  expect(ctx, "allreduce max of rank+1", max, size);

  /* bf16 gradients summed in f32: 1/8 from every rank. */
  uint16_t g = 0x3e00, gsum; /* bf16 0.125 */
  TRY(tdm_allreduce(ctx, &g, &gsum, 1, TDM_BF16, TDM_SUM));
  uint32_t bits = (uint32_t)gsum << 16;
  float gs;
  memcpy(&gs, &bits, 4);
  expect(ctx, "bf16 allreduce sum of 0.125", gs, 0.125 * size);

  /* A shared random seed from rank 0, and evaluation over 10 samples. */
  int64_t seed = rank == 0 ? 1234 : -1;
  TRY(tdm_broadcast(ctx, &seed, 1, TDM_I64, 0));
  expect(ctx, "broadcast of rank 0's seed", (double)seed, 1234);
  size_t begin, count, pad;
  TRY(tdm_split_between_processes(ctx, 10, 1, &begin, &count, &pad));
  float scores[16];
  for (size_t i = 0; i < count + pad; i++) /* score of sample k is k * k */
    scores[i] = (float)((begin + (i < count ? i : count - 1)) *
                        (begin + (i < count ? i : count - 1)));
  float all[16];
  size_t n = 0;
  TRY(tdm_gather_for_metrics(ctx, scores, count + pad, count, TDM_F32, all,
                             16, &n));
  double total = 0;
  for (size_t i = 0; i < n; i++)
    total += all[i];
  expect(ctx, "gather_for_metrics: samples kept", (double)n, 10);
  expect(ctx, "gather_for_metrics: sum of k^2, k < 10", total, 285);

  /* Every rank's id, gathered. */
  int32_t *ids = malloc(sizeof *ids * (size_t)size);
  int32_t me = rank;
  TRY(tdm_allgather(ctx, &me, ids, 1, TDM_I32));
  double idsum = 0;
  for (int r = 0; r < size; r++)
    idsum += ids[r] == r ? r : -1000;
  expect(ctx, "allgather of rank ids (sum)", idsum, size * (size - 1) / 2.0);
  free(ids);

  int bad = 0;
  TRY(tdm_allreduce(ctx, &wrong, &bad, 1, TDM_I32, TDM_SUM));
  TRY(tdm_print(ctx, "%s\n", bad ? "FAILED" : "all results match"));
  TRY(tdm_finalize(ctx));
  return bad ? 1 : 0;
}
