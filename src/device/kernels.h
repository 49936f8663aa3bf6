/* kernels.h - the CPU kernels table of the device layer: fused optimizer
 * updates, dtype conversions and gradient statistics, compiled for
 * several instruction sets and chosen at run time.  Every variant does
 * the same IEEE operations in the same order (no contraction into FMA),
 * so all give the same bits.  Not installed. */
#ifndef TDM_KERNELS_H
#define TDM_KERNELS_H

#include "../core/core.h"
#include "kernels_update.h" /* tdmi_update, tdmi_update_arrays */

typedef struct {
  tdm_cpu_isa isa;    /* the variant in use */
  int threads;        /* OpenMP threads of the kernels */
} tdmi_kernels;

/* Picks want (TDM_CPU_ISA_AUTO: the widest supported); an instruction set
 * the CPU lacks is TDM_ERR_NOT_SUPPORTED.  threads <= 0: one. */
tdm_status tdmi_kernels_init(tdmi_kernels *k, tdm_cpu_isa want, int threads);
const char *tdmi_cpu_isa_name(tdm_cpu_isa isa);

/* The fused update: one pass over param, grad, state and copy. */
void tdmi_kernel_update(const tdmi_kernels *k, const tdmi_update *u,
                        const tdmi_update_arrays *a);

/* Sum of squares (in double) of clamp(g * pre, lo, hi) over n gradients
 * of dtype (f32, f64, bf16, f16); inf or nan when any gradient is. */
double tdmi_kernel_sumsq(const tdmi_kernels *k, const void *grad,
                         tdm_dtype dtype, size_t n, double pre, double lo,
                         double hi);

/* out[i] = in[i] converted, round to nearest even; from/to are TDM_F32,
 * TDM_BF16 or TDM_F16 and one of them is TDM_F32. */
void tdmi_kernel_convert(const tdmi_kernels *k, tdm_dtype from,
                         const void *in, tdm_dtype to, void *out, size_t n);

/* dst[i] += src[i] over n elements of dtype (f32, f64, bf16, f16); 16-bit
 * pairs are added in f32 and rounded back, as the bucket sums do. */
void tdmi_kernel_accumulate(const tdmi_kernels *k, tdm_dtype dtype,
                            const void *src, void *dst, size_t n);

#endif /* TDM_KERNELS_H */
