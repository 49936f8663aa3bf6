/* kernels_f64.c - the optimizer update and the sum of squares for f64
 * parameters, whose gradients and state are f64 too: the same rules as
 * the f32 kernels, in portable C. */
#include <math.h>
#include <string.h>

#include "kernels_table.h"

#define BLOCK 256
#define K static inline
#define REAL double
#define SQRT sqrt
#define RULE(name) name##_f64
#include "kernels_rules.h"

static void update(const tdmi_update *u, const tdmi_update_arrays *a) {
  double gtmp[BLOCK];
  for (size_t at = 0; at < a->n; at += BLOCK) {
    size_t n = a->n - at < BLOCK ? a->n - at : BLOCK;
    double *grad = (double *)a->grad + at;
    transform_f64(u, grad, gtmp, n);
    if (a->zero_grad)
      memset(grad, 0, n * sizeof *grad);
    apply_f64(u, (double *)a->param + at, gtmp,
              a->state0 ? (double *)a->state0 + at : NULL,
              a->state1 ? (double *)a->state1 + at : NULL, n);
  }
}

/* In the order of the f32 kernels' sum: 8 interleaved accumulators. */
static double sumsq(const void *grad, tdm_dtype dtype, size_t n, double pre,
                    double lo, double hi) {
  (void)dtype;
  double acc[8] = {0}, tmp[BLOCK];
  tdmi_update u = {.pre = pre, .lo = lo, .hi = hi, .post = 1.0};
  for (size_t at = 0; at < n; at += BLOCK) {
    size_t m = n - at < BLOCK ? n - at : BLOCK;
    transform_f64(&u, (const double *)grad + at, tmp, m);
    for (size_t i = m; i % 8; i++)
      tmp[i] = 0.0;
    for (size_t i = 0; i < m; i += 8)
      for (int j = 0; j < 8; j++)
        acc[j] += tmp[i + j] * tmp[i + j];
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
         ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

const tdmi_kernel_table tdmi_kernels_f64 = {update, sumsq, NULL};
