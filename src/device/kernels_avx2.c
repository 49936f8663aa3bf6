/* kernels_avx2.c - the CPU kernels for AVX2 with F16C conversions. */
#if defined(__x86_64__) || defined(__i386__)
#define KERNEL_TARGET __attribute__((target("avx2,f16c")))
#define KERNEL_TABLE tdmi_kernels_avx2
#define KERNEL_F16C 1
#include "kernels_impl.h"
#else /* not x86: never selected (tdmi_kernels_init) */
#include "kernels_table.h"
const tdmi_kernel_table tdmi_kernels_avx2 = {NULL, NULL, NULL};
#endif
