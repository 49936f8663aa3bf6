/* t_collectives.c - every host collective, every dtype, against analytic
 * results.  Element i on rank r is (r + 1) + i % 5, so over n ranks:
 * sum = n(n+1)/2 + n(i%5), mean = (n+1)/2 + i%5, max = n + i%5,
 * min = 1 + i%5 - small integers and halves, exact in every dtype. */
#include <stdlib.h>

#include "harness.h"
#include "testutil.h"

static int rank, size;

static double value(int r, size_t i) { return (r + 1) + (double)(i % 5); }

static double reduced(tdm_op op, size_t i) {
  double n = size, m = (double)(i % 5);
  switch (op) {
  case TDM_SUM: return n * (n + 1) / 2 + n * m;
  case TDM_MEAN: return (n + 1) / 2 + m;
  case TDM_MAX: return n + m;
  default: return 1 + m;
  }
}

/* mean is defined for floating types only */
static int op_applies(tdm_dtype t, int op) {
  return op != TDM_MEAN || t == TDM_F32 || t == TDM_F64 || t == TDM_F16 ||
         t == TDM_BF16;
}

static void fill(tdm_dtype t, void *buf, size_t count, int r, size_t base) {
  for (size_t i = 0; i < count; i++)
    tu_set(t, buf, i, value(r, base + i));
}

/* Counts elements of buf that differ from want(i), reporting the first. */
#define EXPECT_ALL(t, buf, count, want_expr, what)                          \
  do {                                                                      \
    size_t bad_ = 0, first_ = 0;                                            \
    double got_ = 0, want_ = 0;                                             \
    for (size_t i = 0; i < (count); i++) {                                  \
      double w = (want_expr), g = tu_get((t), (buf), i);                   \
      if (g != w && bad_++ == 0)                                            \
        first_ = i, got_ = g, want_ = w;                                    \
    }                                                                       \
    TH_CHECK(bad_ == 0, "%s %s count=%zu: %zu wrong, first at %zu: got %g " \
             "want %g", what, tu_name(t), (size_t)(count), bad_, first_,    \
             got_, want_);                                                  \
  } while (0)

static void test_allreduce(tdm_context *ctx, tdm_dtype t, size_t count) {
  size_t es = tu_size(t);
  char *send = malloc(count * es), *recv = malloc(count * es);
  for (int op = 0; op < TDM_NUM_OPS; op++) {
    if (!op_applies(t, op))
      continue;
    fill(t, send, count, rank, 0);
    TH_OK(tdm_allreduce(ctx, send, recv, count, t, (tdm_op)op));
    EXPECT_ALL(t, recv, count, reduced((tdm_op)op, i), "allreduce");
    fill(t, recv, count, rank, 0); /* in place */
    TH_OK(tdm_allreduce(ctx, recv, recv, count, t, (tdm_op)op));
    EXPECT_ALL(t, recv, count, reduced((tdm_op)op, i), "allreduce in place");
  }
  free(send);
  free(recv);
}

static void test_broadcast(tdm_context *ctx, tdm_dtype t, size_t count) {
  char *buf = malloc(count * tu_size(t));
  for (int root = 0; root < size; root++) {
    fill(t, buf, count, rank == root ? root : size + 7, 0);
    TH_OK(tdm_broadcast(ctx, buf, count, t, root));
    EXPECT_ALL(t, buf, count, value(root, i), "broadcast");
  }
  free(buf);
}

static void test_gathers(tdm_context *ctx, tdm_dtype t, size_t count) {
  size_t es = tu_size(t), total = count * (size_t)size;
  char *send = malloc(count * es), *recv = malloc(total * es);
  fill(t, send, count, rank, 0);
  TH_OK(tdm_allgather(ctx, send, recv, count, t));
  EXPECT_ALL(t, recv, total, value((int)(i / count), i % count), "allgather");
  int root = size - 1;
  memset(recv, 0, total * es);
  TH_OK(tdm_gather(ctx, send, rank == root ? recv : NULL, count, t, root));
  if (rank == root)
    EXPECT_ALL(t, recv, total, value((int)(i / count), i % count), "gather");
  free(send);
  free(recv);
}

static void test_reduce_scatter(tdm_context *ctx, tdm_dtype t, size_t count) {
  size_t es = tu_size(t), total = count * (size_t)size;
  char *send = malloc(total * es), *recv = malloc(count * es);
  for (int op = 0; op < TDM_NUM_OPS; op++) {
    if (!op_applies(t, op))
      continue;
    fill(t, send, total, rank, 0);
    TH_OK(tdm_reduce_scatter(ctx, send, recv, count, t, (tdm_op)op));
    size_t base = (size_t)rank * count;
    EXPECT_ALL(t, recv, count, reduced((tdm_op)op, base + i), "reduce_scatter");
  }
  free(send);
  free(recv);
}

/* f16/bf16 sums accumulate in f32: rank 0 holds 2^k (k = 11 for f16, 8 for
 * bf16, where the spacing is 2) and every other rank 1.  Exact f32 sums
 * 2^k + n - 1 round once, to nearest even; accumulating in the narrow type
 * would round each partial sum 2^k + 1 back down to 2^k. */
static void test_half_accumulation(tdm_context *ctx) {
  static const double f16_want[] = {2048, 2048, 2050, 2052};
  static const double bf16_want[] = {256, 256, 258, 260};
  if (size > 4)
    return;
  for (int k = 0; k < 2; k++) {
    tdm_dtype t = k ? TDM_BF16 : TDM_F16;
    double big = k ? 256 : 2048, want = k ? bf16_want[size - 1]
                                          : f16_want[size - 1];
    uint16_t in[3], out[3];
    for (int i = 0; i < 3; i++)
      tu_set(t, in, (size_t)i, rank == 0 ? big : 1);
    TH_OK(tdm_allreduce(ctx, in, out, 3, t, TDM_SUM));
    EXPECT_ALL(t, out, 3, want, "f32 accumulation");
  }
}

int main(int argc, char **argv) {
  tdm_context *ctx = NULL;
  TH_OK(tdm_init(&argc, &argv, NULL, &ctx));
  th_start();
  tdm_get_rank(ctx, &rank);
  tdm_get_world_size(ctx, &size);
  static const size_t counts[] = {1, 7, 1000, 70001};
  for (size_t d = 0; d < NDTYPES; d++)
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
      test_allreduce(ctx, all_dtypes[d], counts[c]);
      test_broadcast(ctx, all_dtypes[d], counts[c]);
      test_gathers(ctx, all_dtypes[d], counts[c]);
      test_reduce_scatter(ctx, all_dtypes[d], counts[c]);
    }
  test_half_accumulation(ctx);
  int code = th_finish("t_collectives");
  TH_OK(tdm_finalize(ctx));
  return code;
}
