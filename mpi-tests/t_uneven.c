/* t_uneven.c - pad_across_processes, gather_for_metrics and
 * split_between_processes on counts that differ across ranks. */
#include <stdlib.h>

#include "harness.h"
#include "testutil.h"

static int rank, size;

/* Rank r holds r + 1 elements r*100 + i; all are padded to size elements. */
static void test_pad(tdm_context *ctx, tdm_dtype t, int pad_first) {
  size_t count = (size_t)rank + 1, es = tu_size(t), out = 0;
  char *send = malloc(count * es), *recv = malloc((size_t)size * es);
  for (size_t i = 0; i < count; i++)
    tu_set(t, send, i, (double)(rank * 10 + (int)i));
  TH_OK(tdm_pad_across_processes(ctx, send, count, t, 99, pad_first, NULL, 0,
                                 &out));
  TH_CHECK(out == (size_t)size, "query: out_count %zu", out);
  TH_OK(tdm_pad_across_processes(ctx, send, count, t, 99, pad_first, recv,
                                 (size_t)size, &out));
  size_t npad = (size_t)size - count;
  for (size_t i = 0; i < (size_t)size; i++) {
    int is_pad = pad_first ? i < npad : i >= count;
    double want = is_pad ? 99 : rank * 10 + (double)(pad_first ? i - npad : i);
    TH_CHECK(tu_get(t, recv, i) == want, "pad %s pad_first=%d [%zu] = %g, "
             "want %g", tu_name(t), pad_first, i, tu_get(t, recv, i), want);
  }
  free(send);
  free(recv);
}

/* Splitting total items with padding, then gathering for metrics, gives
 * back exactly items 0 .. total-1 on every rank. */
static void test_split_and_gather(tdm_context *ctx, size_t total) {
  size_t begin, count, pad;
  TH_OK(tdm_split_between_processes(ctx, total, 1, &begin, &count, &pad));
  size_t per = (total + (size_t)size - 1) / (size_t)size;
  TH_CHECK(count + pad == (total ? per : 0), "total %zu: %zu + %zu != %zu",
           total, count, pad, per);
  int32_t *mine = malloc((count + pad + 1) * sizeof *mine);
  for (size_t i = 0; i < count; i++)
    mine[i] = (int32_t)(begin + i);
  for (size_t i = 0; i < pad; i++) /* duplicates of the last item */
    mine[count + i] = (int32_t)(count ? begin + count - 1 : total - 1);
  int32_t *all = malloc((total + 1) * sizeof *all);
  size_t got = 0;
  TH_OK(tdm_gather_for_metrics(ctx, mine, count + pad, count, TDM_I32, all,
                               total, &got));
  TH_CHECK(got == total, "gather_for_metrics total %zu got %zu", total, got);
  for (size_t i = 0; i < got && i < total; i++)
    TH_CHECK(all[i] == (int32_t)i, "total %zu: item %zu is %d", total, i,
             (int)all[i]);
  free(mine);
  free(all);
}

/* The slices tile [0, total): contiguous, in rank order, sizes differing
 * by at most one, larger ones first. */
static void test_split_tiles(tdm_context *ctx, size_t total) {
  size_t b, c, p;
  TH_OK(tdm_split_between_processes(ctx, total, 0, &b, &c, &p));
  TH_CHECK(p == 0, "no padding asked, got %zu", p);
  unsigned long long mine[2] = {b, c}, all[2 * 64];
  if (size > 64)
    return;
  MPI_Allgather(mine, 2, MPI_UNSIGNED_LONG_LONG, all, 2,
                MPI_UNSIGNED_LONG_LONG, MPI_COMM_WORLD);
  unsigned long long next = 0;
  for (int r = 0; r < size; r++) {
    TH_CHECK(all[2 * r] == next, "total %zu: rank %d begins at %llu, want %llu",
             total, r, all[2 * r], next);
    unsigned long long want = total / (size_t)size + ((size_t)r < total % (size_t)size);
    TH_CHECK(all[2 * r + 1] == want, "total %zu: rank %d count %llu want %llu",
             total, r, all[2 * r + 1], want);
    next += all[2 * r + 1];
  }
  TH_CHECK(next == total, "slices cover %llu of %zu", next, total);
}

static void test_capacity(tdm_context *ctx) {
  float x[1] = {1}, y[1];
  size_t out = 0;
  /* One element needs one slot; capacity 0 is too small. */
  tdm_status st = tdm_pad_across_processes(ctx, x, 1,
                                           TDM_F32, 0, 0, y, 0, &out);
  TH_CHECK(st == TDM_ERR_INVALID_ARGUMENT && strstr(tdm_last_error(), "recv_capacity"),
           "capacity 0: %s %s", tdm_status_string(st), tdm_last_error());
  st = tdm_gather_for_metrics(ctx, x, 1, 1, TDM_F32, y, 0, &out);
  TH_CHECK(st == TDM_ERR_INVALID_ARGUMENT && out == (size_t)size,
           "gather_for_metrics capacity 0: %s %s", tdm_status_string(st),
           tdm_last_error());
}

int main(int argc, char **argv) {
  tdm_context *ctx = NULL;
  TH_OK(tdm_init(&argc, &argv, NULL, &ctx));
  th_start();
  tdm_get_rank(ctx, &rank);
  tdm_get_world_size(ctx, &size);
  for (size_t d = 0; d < NDTYPES; d++)
    for (int pf = 0; pf < 2; pf++)
      test_pad(ctx, all_dtypes[d], pf);
  static const size_t totals[] = {0, 1, 2, 3, 5, 10, 11, 1000, 1001};
  for (size_t k = 0; k < sizeof totals / sizeof totals[0]; k++) {
    test_split_and_gather(ctx, totals[k]);
    test_split_tiles(ctx, totals[k]);
  }
  test_capacity(ctx);
  int code = th_finish("t_uneven");
  TH_OK(tdm_finalize(ctx));
  return code;
}
