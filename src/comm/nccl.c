/* nccl.c - NCCL facts the comm layer reports (the NCCL communicators
 * themselves come with the GPU path). */
#include "config.h"
#include "comm.h"

#ifdef HAVE_NCCL
#include <nccl.h>
#endif

int tdmi_nccl_version(void) {
#ifdef HAVE_NCCL
  int v = 0;
  return ncclGetVersion(&v) == ncclSuccess ? v : 0;
#else
  return 0;
#endif
}
