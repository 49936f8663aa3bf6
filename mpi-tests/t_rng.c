/* t_rng.c - Philox streams: the Random123 known answer for counter 0 /
 * key 0, shared streams equal on every rank, per-rank streams distinct,
 * resumable offsets, and the moments of uniform and normal draws. */
#include <stdlib.h>

#include "harness.h"

#define N 200000

static int rank, size;

static void test_known_answer(tdm_context *ctx) {
  /* Random123 kat_vectors: philox4x32 10, counter 0, key 0. */
  static const uint32_t want[4] = {0x6627e8d5, 0xe169c58d, 0xbc57ac4c,
                                   0x9b00dbd8};
  tdm_rng *g;
  uint32_t w[4];
  TH_OK(tdm_rng_create(ctx, 0, TDM_RNG_SHARED, &g));
  TH_OK(tdm_rng_u32(g, w, 4));
  for (int i = 0; i < 4; i++)
    TH_CHECK(w[i] == want[i], "word %d: %08x want %08x", i, w[i], want[i]);
  TH_OK(tdm_rng_destroy(g));
}

static void test_streams(tdm_context *ctx) {
  enum { W = 1000 };
  uint32_t *mine = malloc(W * sizeof *mine);
  uint32_t *all = malloc((size_t)W * (size_t)size * sizeof *all);
  for (int kind = 0; kind < 2; kind++) {
    tdm_rng *g;
    TH_OK(tdm_rng_create(ctx, 1234567, (tdm_rng_kind)kind, &g));
    TH_OK(tdm_rng_u32(g, mine, W));
    MPI_Allgather(mine, W, MPI_UINT32_T, all, W, MPI_UINT32_T, MPI_COMM_WORLD);
    for (int r = 1; r < size; r++) {
      int equal = memcmp(all, all + (size_t)r * W, W * sizeof *all) == 0;
      TH_CHECK(equal == (kind == TDM_RNG_SHARED), "kind %d: rank %d stream "
               "%s rank 0's", kind, r, equal ? "equals" : "differs from");
    }
    TH_OK(tdm_rng_destroy(g));
  }
  free(mine);
  free(all);
}

static void test_offset(tdm_context *ctx) {
  tdm_rng *g;
  uint32_t a[7], b[7];
  uint64_t off;
  TH_OK(tdm_rng_create(ctx, 42, TDM_RNG_PER_RANK, &g));
  TH_OK(tdm_rng_u32(g, a, 5));
  TH_OK(tdm_rng_get_offset(g, &off));
  TH_CHECK(off == 5, "offset %llu", (unsigned long long)off);
  TH_OK(tdm_rng_u32(g, a, 7));
  TH_OK(tdm_rng_set_offset(g, 5));
  TH_OK(tdm_rng_u32(g, b, 7));
  TH_CHECK(memcmp(a, b, sizeof a) == 0, "resumed stream differs");
  TH_OK(tdm_rng_destroy(g));
}

/* Fixed seeds make these deterministic; the bounds are 5 standard errors. */
static void test_moments(tdm_context *ctx) {
  float *x = malloc(N * sizeof *x);
  tdm_rng *g;
  TH_OK(tdm_rng_create(ctx, 7, TDM_RNG_PER_RANK, &g));
  TH_OK(tdm_rng_uniform_f32(g, x, N));
  double s = 0, lo = 1, hi = 0;
  for (int i = 0; i < N; i++)
    s += x[i], lo = fmin(lo, x[i]), hi = fmax(hi, x[i]);
  TH_CHECK(lo >= 0 && hi < 1, "uniform range [%g, %g]", lo, hi);
  TH_CHECK(fabs(s / N - 0.5) < 5 * sqrt(1.0 / 12 / N), "uniform mean %g",
           s / N);
  TH_OK(tdm_rng_normal_f32(g, x, N, 2.0f, 3.0f));
  double m = 0, v = 0;
  for (int i = 0; i < N; i++)
    m += x[i];
  m /= N;
  for (int i = 0; i < N; i++)
    v += (x[i] - m) * (x[i] - m);
  v /= N - 1;
  TH_CHECK(fabs(m - 2.0) < 5 * 3.0 / sqrt(N), "normal mean %g", m);
  TH_CHECK(fabs(v - 9.0) < 5 * 9.0 * sqrt(2.0 / N), "normal variance %g", v);
  uint64_t off;
  TH_OK(tdm_rng_get_offset(g, &off));
  TH_CHECK(off == 2 * (uint64_t)N, "offset after uniform+normal %llu",
           (unsigned long long)off);
  TH_OK(tdm_rng_destroy(g));
  free(x);
}

int main(int argc, char **argv) {
  tdm_context *ctx = NULL;
  TH_OK(tdm_init(&argc, &argv, NULL, &ctx));
  th_start();
  tdm_get_rank(ctx, &rank);
  tdm_get_world_size(ctx, &size);
  test_known_answer(ctx);
  test_streams(ctx);
  test_offset(ctx);
  test_moments(ctx);
  int code = th_finish("t_rng");
  TH_OK(tdm_finalize(ctx));
  return code;
}
