/* device.c - device discovery and activation (CPU, or CUDA when built with
 * it).  CUDA is reached through the runtime API only here. */
#include "config.h"
#include "device.h"

#ifdef HAVE_CUDA
#include <cuda_runtime_api.h>

int tdmi_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError(); /* clear the sticky "no device" error */
    return 0;
  }
  return n;
}

tdm_status tdmi_device_activate(tdm_device_kind kind, int index) {
  if (kind != TDM_DEVICE_CUDA)
    return TDM_SUCCESS;
  cudaError_t err = cudaSetDevice(index);
  if (err != cudaSuccess)
    return tdmi_error(TDM_ERR_DEVICE, "cudaSetDevice(%d) failed: %s", index,
                      cudaGetErrorString(err));
  return TDM_SUCCESS;
}

#else

int tdmi_device_count(void) { return 0; }

tdm_status tdmi_device_activate(tdm_device_kind kind, int index) {
  (void)index;
  if (kind == TDM_DEVICE_CUDA)
    return tdmi_error(TDM_ERR_NOT_SUPPORTED,
                      "this tandem was built without CUDA");
  return TDM_SUCCESS;
}

#endif
