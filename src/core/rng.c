/* rng.c - Philox4x32-10 (Salmon et al., SC'11), counter-based: word w of a
 * stream is a pure function of (seed, stream id, w), so every rank can
 * produce the same stream, or its own, with no communication, and a
 * position is resumed by setting an offset. */
#include <math.h>
#include <stdlib.h>

#include "core.h"

struct tdm_rng {
  uint32_t key[2];    /* the seed */
  uint64_t stream;    /* 0: shared; rank + 1: per rank */
  uint64_t offset;    /* 32-bit words drawn so far */
  uint64_t block;     /* the block in words[], valid when has_block */
  int has_block;
  uint32_t words[4];
};

static void mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo) {
  uint64_t p = (uint64_t)a * b;
  *hi = (uint32_t)(p >> 32);
  *lo = (uint32_t)p;
}

/* One Philox4x32-10 block: 4 words from counter c under key k. */
void tdmi_philox4x32_10(const uint32_t c_in[4], const uint32_t k_in[2],
                        uint32_t out[4]) {
  uint32_t c[4] = {c_in[0], c_in[1], c_in[2], c_in[3]};
  uint32_t k0 = k_in[0], k1 = k_in[1];
  for (int round = 0; round < 10; round++) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(0xD2511F53u, c[0], &hi0, &lo0);
    mulhilo(0xCD9E8D57u, c[2], &hi1, &lo1);
    uint32_t n[4] = {hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0};
    c[0] = n[0], c[1] = n[1], c[2] = n[2], c[3] = n[3];
    k0 += 0x9E3779B9u; /* Weyl key schedule */
    k1 += 0xBB67AE85u;
  }
  out[0] = c[0], out[1] = c[1], out[2] = c[2], out[3] = c[3];
}

static uint32_t next_word(tdm_rng *rng) {
  uint64_t block = rng->offset / 4;
  if (!rng->has_block || rng->block != block) {
    uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32),
                       (uint32_t)rng->stream, (uint32_t)(rng->stream >> 32)};
    tdmi_philox4x32_10(ctr, rng->key, rng->words);
    rng->block = block;
    rng->has_block = 1;
  }
  return rng->words[rng->offset++ % 4];
}

tdm_status tdm_rng_create(const tdm_context *ctx, uint64_t seed,
                          tdm_rng_kind kind, tdm_rng **rng) {
  TDMI_CHECK_CTX(ctx, "tdm_rng_create");
  TDMI_CHECK_PTR(rng, "tdm_rng_create");
  if (kind != TDM_RNG_SHARED && kind != TDM_RNG_PER_RANK)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "tdm_rng_create: kind %d is not a tdm_rng_kind",
                      (int)kind);
  tdm_rng *r = calloc(1, sizeof *r);
  if (!r)
    return tdmi_error(TDM_ERR_NO_MEMORY, "tdm_rng_create: out of memory");
  r->key[0] = (uint32_t)seed;
  r->key[1] = (uint32_t)(seed >> 32);
  r->stream = kind == TDM_RNG_SHARED ? 0 : (uint64_t)ctx->rank + 1;
  *rng = r;
  return TDM_SUCCESS;
}

tdm_status tdm_rng_destroy(tdm_rng *rng) {
  TDMI_CHECK_PTR(rng, "tdm_rng_destroy");
  free(rng);
  return TDM_SUCCESS;
}

#define CHECK_DRAW(rng, out, fn)                                          \
  do {                                                                    \
    TDMI_CHECK_PTR(rng, fn);                                              \
    if ((out) == NULL && n > 0)                                           \
      return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: out is NULL", fn); \
  } while (0)

tdm_status tdm_rng_u32(tdm_rng *rng, uint32_t *out, size_t n) {
  CHECK_DRAW(rng, out, "tdm_rng_u32");
  for (size_t i = 0; i < n; i++)
    out[i] = next_word(rng);
  return TDM_SUCCESS;
}

/* Top 24 bits: every value is an exact float in [0, 1). */
static float uniform24(uint32_t w) { return (float)(w >> 8) * 0x1p-24f; }

tdm_status tdm_rng_uniform_f32(tdm_rng *rng, float *out, size_t n) {
  CHECK_DRAW(rng, out, "tdm_rng_uniform_f32");
  for (size_t i = 0; i < n; i++)
    out[i] = uniform24(next_word(rng));
  return TDM_SUCCESS;
}

/* Box-Muller on pairs of words; an odd n still consumes the whole pair so
 * the offset stays a function of n alone. */
tdm_status tdm_rng_normal_f32(tdm_rng *rng, float *out, size_t n, float mean,
                              float stddev) {
  CHECK_DRAW(rng, out, "tdm_rng_normal_f32");
  if (!(stddev >= 0))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "tdm_rng_normal_f32: stddev %g is negative or NaN",
                      (double)stddev);
  const double two_pi = 6.283185307179586476925;
  for (size_t i = 0; i < n; i += 2) {
    double u1 = uniform24(next_word(rng)) + 0x1p-25; /* in (0, 1) */
    double u2 = uniform24(next_word(rng));
    double r = sqrt(-2.0 * log(u1));
    out[i] = (float)(mean + stddev * r * cos(two_pi * u2));
    if (i + 1 < n)
      out[i + 1] = (float)(mean + stddev * r * sin(two_pi * u2));
  }
  return TDM_SUCCESS;
}

tdm_status tdm_rng_get_offset(const tdm_rng *rng, uint64_t *offset) {
  TDMI_CHECK_PTR(rng, "tdm_rng_get_offset");
  TDMI_CHECK_PTR(offset, "tdm_rng_get_offset");
  *offset = rng->offset;
  return TDM_SUCCESS;
}

tdm_status tdm_rng_set_offset(tdm_rng *rng, uint64_t offset) {
  TDMI_CHECK_PTR(rng, "tdm_rng_set_offset");
  rng->offset = offset;
  return TDM_SUCCESS;
}
