/* kernels_update.h - the arguments of one fused optimizer update, shared
 * by the CPU kernels (kernels.h) and the CUDA kernels (kernels_cuda.h).
 * Includes no MPI or CUDA header, so nvcc and C callers alike can use it.
 * Not installed. */
#ifndef TDM_KERNELS_UPDATE_H
#define TDM_KERNELS_UPDATE_H

#include <stddef.h>

#include "tandem.h"

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

#endif /* TDM_KERNELS_UPDATE_H */
