/* kernels_generic.c - the CPU kernels in portable C (the baseline ISA). */
#define KERNEL_TARGET
#define KERNEL_TABLE tdmi_kernels_generic
#define KERNEL_F16C 0
#include "kernels_impl.h"
