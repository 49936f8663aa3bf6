/* kernels_table.h - one instruction set's kernels, for kernels.c's
 * dispatch.  Not installed. */
#ifndef TDM_KERNELS_TABLE_H
#define TDM_KERNELS_TABLE_H

#include "kernels.h"

typedef struct {
  void (*update)(const tdmi_update *u, const tdmi_update_arrays *a);
  double (*sumsq)(const void *grad, tdm_dtype dtype, size_t n, double pre,
                  double lo, double hi);
  void (*convert)(tdm_dtype from, const void *in, tdm_dtype to, void *out,
                  size_t n);
} tdmi_kernel_table;

extern const tdmi_kernel_table tdmi_kernels_generic, tdmi_kernels_avx2,
    tdmi_kernels_avx512;
/* f64 values (no conversions): portable C for every instruction set. */
extern const tdmi_kernel_table tdmi_kernels_f64;

#endif /* TDM_KERNELS_TABLE_H */
