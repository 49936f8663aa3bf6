/* kernels.h - the CPU kernels table of the device layer: fused optimizer
 * updates, dtype conversions and gradient statistics, compiled for
 * several instruction sets and chosen at run time.  Every variant does
 * the same IEEE operations in the same order (no contraction into FMA),
 * so all give the same bits.  Not installed. */
#ifndef TDM_KERNELS_H
#define TDM_KERNELS_H

#include "../core/core.h"

/* One optimizer update, its hyperparameters resolved for this step (in
 * double; the f32 kernels round each to float once).  Each gradient first
 * goes through g = clamp(g * pre, lo, hi) * post (fp16 unscaling and
 * clipping; pre = post = 1, lo = -inf, hi = inf leave it unchanged). */
typedef struct {
  int kind;          /* tdm_optimizer_kind */
  double pre, lo, hi, post;
  double lr, weight_decay;
  /* SGD */
  double momentum;
  double keep;       /* 1 - dampening */
  int nesterov;
  int first;         /* first step: the momentum buffer is the gradient */
  /* Adam, AdamW, Lion */
  double beta1, c1;  /* c1 = 1 - beta1 */
  double beta2, c2;  /* c2 = 1 - beta2 */
  double eps;
  double decay;      /* AdamW, Lion: 1 - lr * weight_decay; else 1 */
  double step_size;  /* Adam: lr / (1 - beta1^t) */
  double bias2_sqrt; /* Adam: sqrt(1 - beta2^t) */
} tdmi_update;

/* The arrays of one update: n elements from each. */
typedef struct {
  void *param;           /* dtype values (the master weights)          */
  tdm_dtype dtype;       /* TDM_F32 or TDM_F64; also the state's dtype */
  void *grad;            /* grad_dtype: dtype, or TDM_BF16 / TDM_F16
                            for f32 values                             */
  tdm_dtype grad_dtype;
  void *copy;            /* NULL, or the compute copy to refresh (f32) */
  tdm_dtype copy_dtype;  /* TDM_BF16 or TDM_F16                        */
  void *state0, *state1; /* momentum / exp_avg, exp_avg_sq; NULL when
                            the kind has none                          */
  size_t n;
  int zero_grad;         /* set the gradients to 0 after reading them  */
} tdmi_update_arrays;

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
