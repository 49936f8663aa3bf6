/* kernels.c - choice of the CPU kernels' instruction set, and the OpenMP
 * split of each kernel into per-thread ranges.  Elementwise kernels give
 * the same bits for any split; the sum of squares adds fixed blocks in a
 * fixed order, so it does too. */
#include <stdlib.h>
#include <string.h>

#include "kernels_table.h"

#define SUMSQ_BLOCK 8192 /* elements per partial sum */
#define MIN_PER_THREAD 32768 /* smaller ranges are not worth a thread */
#define SPLIT_ALIGN 64   /* elements: ranges start on cache lines */

static int supported(tdm_cpu_isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (isa == TDM_CPU_ISA_AVX512)
    return __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx2");
  if (isa == TDM_CPU_ISA_AVX2)
    return __builtin_cpu_supports("avx2");
#endif
  return isa == TDM_CPU_ISA_GENERIC;
}

const char *tdmi_cpu_isa_name(tdm_cpu_isa isa) {
  static const char *const names[] = {"auto", "generic", "avx2", "avx512"};
  return isa >= 0 && isa <= TDM_CPU_ISA_AVX512 ? names[isa] : "unknown";
}

tdm_status tdmi_kernels_init(tdmi_kernels *k, tdm_cpu_isa want, int threads) {
  if (want == TDM_CPU_ISA_AUTO) {
    want = supported(TDM_CPU_ISA_AVX512) ? TDM_CPU_ISA_AVX512
           : supported(TDM_CPU_ISA_AVX2) ? TDM_CPU_ISA_AVX2
                                         : TDM_CPU_ISA_GENERIC;
  } else if (!supported(want)) {
    return tdmi_error(TDM_ERR_NOT_SUPPORTED,
                      "cpu_isa %s: this CPU does not support it",
                      tdmi_cpu_isa_name(want));
  }
  k->isa = want;
  k->threads = threads > 0 ? threads : 1;
  return TDM_SUCCESS;
}

static const tdmi_kernel_table *table(const tdmi_kernels *k, tdm_dtype d) {
  return d == TDM_F64                   ? &tdmi_kernels_f64
         : k->isa == TDM_CPU_ISA_AVX512 ? &tdmi_kernels_avx512
         : k->isa == TDM_CPU_ISA_AVX2 ? &tdmi_kernels_avx2
                                      : &tdmi_kernels_generic;
}

static int threads_for(const tdmi_kernels *k, size_t n) {
  size_t most = n / MIN_PER_THREAD;
  return most < 2 ? 1 : most < (size_t)k->threads ? (int)most : k->threads;
}

/* [begin, end) of part t of nt over n elements, on SPLIT_ALIGN bounds. */
static void split(size_t n, int t, int nt, size_t *begin, size_t *end) {
  size_t units = (n + SPLIT_ALIGN - 1) / SPLIT_ALIGN;
  size_t b = units * (size_t)t / (size_t)nt * SPLIT_ALIGN;
  size_t e = units * (size_t)(t + 1) / (size_t)nt * SPLIT_ALIGN;
  *begin = b < n ? b : n;
  *end = e < n ? e : n;
}

static void *advance(void *p, size_t elems, size_t size) {
  return p ? (char *)p + elems * size : NULL;
}

void tdmi_kernel_update(const tdmi_kernels *k, const tdmi_update *u,
                        const tdmi_update_arrays *a) {
  const tdmi_kernel_table *t = table(k, a->dtype);
  int nt = threads_for(k, a->n);
  size_t size = tdmi_dtype_size(a->dtype);
  size_t gsize = tdmi_dtype_size(a->grad_dtype);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int i = 0; i < nt; i++) {
    size_t b, e;
    split(a->n, i, nt, &b, &e);
    tdmi_update_arrays part = *a;
    part.param = advance(a->param, b, size);
    part.grad = advance(a->grad, b, gsize);
    part.copy = advance(a->copy, b, 2);
    part.state0 = advance(a->state0, b, size);
    part.state1 = advance(a->state1, b, size);
    part.n = e - b;
    t->update(u, &part);
  }
}

double tdmi_kernel_sumsq(const tdmi_kernels *k, const void *grad,
                         tdm_dtype dtype, size_t n, double pre, double lo,
                         double hi) {
  const tdmi_kernel_table *t = table(k, dtype);
  size_t size = tdmi_dtype_size(dtype);
  size_t nblocks = (n + SUMSQ_BLOCK - 1) / SUMSQ_BLOCK;
  double one, *partial = nblocks > 1 ? malloc(nblocks * sizeof *partial) : &one;
  if (!partial) /* no memory for the partial sums: one thread, same order */
    nblocks = 0;
  int nt = threads_for(k, n);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (size_t b = 0; b < nblocks; b++) {
    size_t m = n - b * SUMSQ_BLOCK < SUMSQ_BLOCK ? n - b * SUMSQ_BLOCK
                                                 : SUMSQ_BLOCK;
    partial[b] = t->sumsq((const char *)grad + b * SUMSQ_BLOCK * size, dtype,
                          m, pre, lo, hi);
  }
  double sum = 0.0;
  for (size_t b = 0; b < nblocks; b++)
    sum += partial[b];
  for (size_t at = 0; !partial && at < n; at += SUMSQ_BLOCK)
    sum += t->sumsq((const char *)grad + at * size, dtype,
                    n - at < SUMSQ_BLOCK ? n - at : SUMSQ_BLOCK, pre, lo, hi);
  if (partial != &one)
    free(partial);
  return sum;
}

void tdmi_kernel_convert(const tdmi_kernels *k, tdm_dtype from, const void *in,
                         tdm_dtype to, void *out, size_t n) {
  const tdmi_kernel_table *t = table(k, TDM_F32);
  int nt = threads_for(k, n);
  size_t from_size = from == TDM_F32 ? 4 : 2, to_size = to == TDM_F32 ? 4 : 2;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int i = 0; i < nt; i++) {
    size_t b, e;
    split(n, i, nt, &b, &e);
    t->convert(from, (const char *)in + b * from_size, to,
               (char *)out + b * to_size, e - b);
  }
}

/* Elements [b, e) of dst += src. */
static void accumulate_range(tdm_dtype dtype, const void *src, void *dst,
                             size_t b, size_t e) {
  switch (dtype) {
  case TDM_F32: {
    const float *s = src;
    float *d = dst;
    for (size_t i = b; i < e; i++)
      d[i] += s[i];
    break;
  }
  case TDM_F64: {
    const double *s = src;
    double *d = dst;
    for (size_t i = b; i < e; i++)
      d[i] += s[i];
    break;
  }
  case TDM_BF16: {
    const uint16_t *s = src;
    uint16_t *d = dst;
    for (size_t i = b; i < e; i++)
      d[i] = tdmi_f32_to_bf16(tdmi_bf16_to_f32(d[i]) + tdmi_bf16_to_f32(s[i]));
    break;
  }
  default: {
    const uint16_t *s = src;
    uint16_t *d = dst;
    for (size_t i = b; i < e; i++)
      d[i] = tdmi_f32_to_f16(tdmi_f16_to_f32(d[i]) + tdmi_f16_to_f32(s[i]));
    break;
  }
  }
}

void tdmi_kernel_accumulate(const tdmi_kernels *k, tdm_dtype dtype,
                            const void *src, void *dst, size_t n) {
  int nt = threads_for(k, n);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int i = 0; i < nt; i++) {
    size_t b, e;
    split(n, i, nt, &b, &e);
    accumulate_range(dtype, src, dst, b, e);
  }
}

static int convertible(tdm_dtype d) {
  return d == TDM_F32 || d == TDM_BF16 || d == TDM_F16;
}

tdm_status tdm_convert(tdm_dtype from, const void *in, tdm_dtype to,
                       void *out, size_t count) {
  const char *fn = "tdm_convert";
  if (count && (!in || !out))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                      in ? "out" : "in");
  if (from == to && (int)from >= 0 && from < TDM_NUM_DTYPES) {
    if (count)
      memcpy(out, in, count * tdmi_dtype_size(from));
    return TDM_SUCCESS;
  }
  if (!convertible(from) || !convertible(to) ||
      (from != TDM_F32 && to != TDM_F32))
    return tdmi_error(TDM_ERR_NOT_SUPPORTED,
                      "%s: %s to %s; conversions are between f32 and bf16 or "
                      "f16", fn, tdmi_dtype_name(from), tdmi_dtype_name(to));
  tdmi_kernels k;
  tdmi_kernels_init(&k, TDM_CPU_ISA_AUTO, 1);
  tdmi_kernel_convert(&k, from, in, to, out, count);
  return TDM_SUCCESS;
}
