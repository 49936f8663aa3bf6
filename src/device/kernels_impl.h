/* kernels_impl.h - the body of the CPU kernels, included once per
 * instruction set by kernels_<isa>.c, which defines
 *   KERNEL_TARGET  a function attribute (target("...")) or nothing
 *   KERNEL_TABLE   the name of the table to define
 *   KERNEL_F16C    1 where F16C converts binary16 in hardware
 * The loops are plain C the compiler vectorizes for the target; values
 * pass through float temporaries a block at a time, so each array is
 * read and written once (one pass over memory). */
#include <math.h>
#include <string.h>

#include "kernels_table.h"

#if KERNEL_F16C
#include <immintrin.h>
#endif

#define BLOCK 256 /* elements per temporary block: 1 KiB of floats */
#define K static inline KERNEL_TARGET

/* ---- conversions of one block ---- */

K void bf16_to_f32(const uint16_t *restrict in, float *restrict out,
                   size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; i++) {
    uint32_t u = (uint32_t)in[i] << 16;
    memcpy(&out[i], &u, sizeof u);
  }
}

/* Round to nearest even; NaN -> 0xffff, as PyTorch. */
K void f32_to_bf16(const float *restrict in, uint16_t *restrict out,
                   size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; i++) {
    uint32_t x;
    memcpy(&x, &in[i], sizeof x);
    uint32_t r = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    out[i] = (x & 0x7fffffffu) > 0x7f800000u ? 0xffffu : (uint16_t)r;
  }
}

K void f16_to_f32(const uint16_t *restrict in, float *restrict out,
                  size_t n) {
  size_t i = 0;
#if KERNEL_F16C
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i,
                     _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + i))));
#endif
  for (; i < n; i++)
    out[i] = tdmi_f16_to_f32(in[i]);
}

K void f32_to_f16(const float *restrict in, uint16_t *restrict out,
                  size_t n) {
  size_t i = 0;
#if KERNEL_F16C
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i *)(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(in + i),
                                     _MM_FROUND_TO_NEAREST_INT |
                                         _MM_FROUND_NO_EXC));
#endif
  for (; i < n; i++)
    out[i] = tdmi_f32_to_f16(in[i]);
}

/* Loads n values of dtype as floats: a view of f32, or a conversion. */
K const float *load(tdm_dtype dtype, const void *in, float *tmp, size_t n) {
  if (dtype == TDM_BF16)
    bf16_to_f32(in, tmp, n);
  else if (dtype == TDM_F16)
    f16_to_f32(in, tmp, n);
  else
    return in;
  return tmp;
}

K void store(tdm_dtype dtype, const float *in, void *out, size_t n) {
  if (dtype == TDM_BF16)
    f32_to_bf16(in, out, n);
  else if (dtype == TDM_F16)
    f32_to_f16(in, out, n);
  else
    memcpy(out, in, n * sizeof(float));
}

#define REAL float
#define SQRT sqrtf
#define RULE(name) name
#include "kernels_rules.h"

/* ---- whole arrays ---- */

static KERNEL_TARGET void update(const tdmi_update *u,
                                 const tdmi_update_arrays *a) {
  float gtmp[BLOCK];
  size_t gsize = a->grad_dtype == TDM_F32 ? 4 : 2;
  for (size_t at = 0; at < a->n; at += BLOCK) {
    size_t n = a->n - at < BLOCK ? a->n - at : BLOCK;
    char *grad = (char *)a->grad + at * gsize;
    transform(u, load(a->grad_dtype, grad, gtmp, n), gtmp, n);
    if (a->zero_grad)
      memset(grad, 0, n * gsize);
    float *p = (float *)a->param + at;
    apply(u, p, gtmp, a->state0 ? (float *)a->state0 + at : NULL,
          a->state1 ? (float *)a->state1 + at : NULL, n);
    if (a->copy)
      store(a->copy_dtype, p, (char *)a->copy + at * 2, n);
  }
}

/* Sum of squares of one block of TDMI_SUMSQ_BLOCK elements or fewer, in a
 * fixed order: 8 interleaved double accumulators, then a fixed tree.
 * Every variant and thread count adds in this order. */
static KERNEL_TARGET double sumsq(const void *grad, tdm_dtype dtype,
                                  size_t n, double pre, double lo, double hi) {
  double acc[8] = {0};
  float tmp[BLOCK];
  tdmi_update u = {.pre = pre, .lo = lo, .hi = hi, .post = 1.0};
  size_t gsize = dtype == TDM_F32 ? 4 : 2;
  for (size_t at = 0; at < n; at += BLOCK) {
    size_t m = n - at < BLOCK ? n - at : BLOCK;
    transform(&u, load(dtype, (const char *)grad + at * gsize, tmp, m), tmp, m);
    for (size_t i = m; i % 8; i++)
      tmp[i] = 0.0f; /* pad the tail to a whole group of 8 */
    for (size_t i = 0; i < m; i += 8)
#pragma omp simd
      for (int j = 0; j < 8; j++)
        acc[j] += (double)tmp[i + j] * (double)tmp[i + j];
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
         ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

static KERNEL_TARGET void convert(tdm_dtype from, const void *in,
                                  tdm_dtype to, void *out, size_t n) {
  if (from == TDM_F32)
    store(to, in, out, n);
  else if (to == TDM_F32)
    load(from, in, out, n); /* converts into out */
}

const tdmi_kernel_table KERNEL_TABLE = {update, sumsq, convert};
