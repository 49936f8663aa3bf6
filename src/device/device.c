/* device.c - device discovery and activation (CPU, or CUDA when built with
 * it, or the test suite's fake GPU).  CUDA is reached through the runtime
 * API only here. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "device.h"

/* The fake GPU is device 0 only: the tests need one device, not many. */
static tdm_status fake_activate(int index) {
  if (index == 0)
    return TDM_SUCCESS;
  return tdmi_error(TDM_ERR_DEVICE, "device %d: the fake GPU "
                    "(TANDEM_TEST_FAKE_GPU=1) has device 0 only", index);
}

#ifdef HAVE_CUDA
#include <cuda_runtime_api.h>

static int real_count(void) {
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
  if (tdmi_device_fake())
    return fake_activate(index);
  cudaError_t err = cudaSetDevice(index);
  if (err != cudaSuccess)
    return tdmi_error(TDM_ERR_DEVICE, "cudaSetDevice(%d) failed: %s", index,
                      cudaGetErrorString(err));
  return TDM_SUCCESS;
}

#else

static int real_count(void) { return 0; }

tdm_status tdmi_device_activate(tdm_device_kind kind, int index) {
  if (kind != TDM_DEVICE_CUDA)
    return TDM_SUCCESS;
  if (tdmi_device_fake())
    return fake_activate(index);
  return tdmi_error(TDM_ERR_NOT_SUPPORTED,
                    "this tandem was built without CUDA");
}

#endif

/* Decided once: memory allocated as fake device memory must stay fake
 * (and be freed as such) for the life of the process. */
static pthread_once_t fake_once = PTHREAD_ONCE_INIT;
static int fake;

static void fake_decide(void) {
  const char *v = getenv("TANDEM_TEST_FAKE_GPU");
  fake = v && strcmp(v, "1") == 0 && real_count() == 0;
}

int tdmi_device_fake(void) {
  pthread_once(&fake_once, fake_decide);
  return fake;
}

int tdmi_device_count(void) { return tdmi_device_fake() ? 1 : real_count(); }
