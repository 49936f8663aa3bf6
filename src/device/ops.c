/* ops.c - buffers and kernels on the compute stream (ops.h): the CUDA
 * kernels on a real GPU, else the CPU kernels.  Host work on a real GPU
 * first waits for the stream, so that it sees the copies queued before
 * it (offloaded state is copied to and from host memory on the stream). */
#include <string.h>

#include "config.h"
#include "ops.h"

#ifdef HAVE_CUDA
#include <cuda_runtime_api.h>
#endif
/* The launchers exist where nvcc built kernels_cuda.cu (cuda.am). */
#if defined(HAVE_CUDA) && defined(TDM_CUDA_KERNELS)
#include "kernels_cuda.h"
#define OPS_CUDA 1
#endif

#ifdef OPS_CUDA
static tdm_status launched(tdm_status st) {
  return st == TDM_SUCCESS ? st
                           : tdmi_error(st, "%s", tdmi_cuda_last_error());
}

static void *handle(const tdmi_ops *o) {
  return tdmi_stream_handle(o->stream);
}

/* The sum-of-squares workspace with its result in the last double (the
 * launcher wants them apart), and the inf/nan flag. */
static tdm_status cuda_buffers(tdmi_ops *o) {
  tdm_status st = tdmi_mem_alloc(TDMI_MEM_DEVICE,
                                 (TDMI_CUDA_SUMSQ_WORK + 1) * sizeof(double),
                                 (void **)&o->work);
  if (st == TDM_SUCCESS)
    st = tdmi_mem_alloc(TDMI_MEM_DEVICE, sizeof(int), (void **)&o->flag);
  return st;
}
#endif

/* Whether o runs the CUDA kernels on a real GPU. */
static int wants_cuda(int on_device) {
  return on_device && !tdmi_device_fake();
}

tdm_status tdmi_ops_init(tdmi_ops *o, const tdmi_kernels *cpu, int on_device) {
  memset(o, 0, sizeof *o);
  o->cpu = *cpu;
  o->on_device = on_device != 0;
  tdm_status st = tdmi_stream_default(o->on_device, &o->stream);
  if (st != TDM_SUCCESS || !wants_cuda(o->on_device))
    return st;
#ifdef OPS_CUDA
  o->cuda = 1;
  st = cuda_buffers(o);
#else
  st = tdmi_error(TDM_ERR_NOT_SUPPORTED, "buffers on a GPU: this tandem "
                  "was built without the CUDA kernels (no nvcc)");
#endif
  if (st != TDM_SUCCESS)
    tdmi_ops_destroy(o);
  return st;
}

void tdmi_ops_destroy(tdmi_ops *o) {
  if (o->stream)
    tdmi_stream_synchronize(o->stream); /* the kernels may use work */
  tdmi_mem_free(TDMI_MEM_DEVICE, o->work);
  tdmi_mem_free(TDMI_MEM_DEVICE, o->flag);
  tdmi_stream_destroy(o->stream);
  memset(o, 0, sizeof *o);
}

tdm_status tdmi_ops_set_stream(tdmi_ops *o, void *handle) {
  tdmi_stream *s = NULL;
  TDMI_TRY(tdmi_stream_wrap(handle, &s));
  tdm_status st = tdmi_stream_synchronize(o->stream);
  if (st != TDM_SUCCESS) {
    tdmi_stream_destroy(s);
    return st;
  }
  tdmi_stream_destroy(o->stream);
  o->stream = s;
  return TDM_SUCCESS;
}

tdmi_mem_kind tdmi_ops_compute_mem(const tdmi_ops *o) {
  return o->on_device ? TDMI_MEM_DEVICE : TDMI_MEM_HOST;
}

/* Before host work on host memory that stream work may touch. */
static tdm_status host_turn(tdmi_ops *o) {
  return o->cuda ? tdmi_stream_synchronize(o->stream) : TDM_SUCCESS;
}

tdm_status tdmi_ops_alloc(tdmi_ops *o, tdmi_mem_kind kind, size_t bytes,
                          void **out) {
  tdm_status st = tdmi_mem_alloc(kind, bytes, out);
  if (st != TDM_SUCCESS)
    return st;
#ifdef OPS_CUDA
  /* device memory is zeroed in stream order; new host memory has no
   * queued work to wait for */
  if (o->cuda && kind == TDMI_MEM_DEVICE) {
    cudaError_t err = cudaMemsetAsync(*out, 0, bytes, handle(o));
    if (err == cudaSuccess)
      return TDM_SUCCESS;
    cudaGetLastError();
    tdmi_mem_free(kind, *out);
    *out = NULL;
    return tdmi_error(TDM_ERR_DEVICE, "cudaMemsetAsync failed: %s",
                      cudaGetErrorString(err));
  }
#endif
  (void)o;
  memset(*out, 0, bytes);
  return TDM_SUCCESS;
}

void tdmi_ops_free(tdmi_ops *o, tdmi_mem_kind kind, void *p) {
  /* cudaFree would wait for device memory, but pinned and host memory
   * may still be the source or target of a queued copy */
  if (p && o->cuda)
    tdmi_stream_synchronize(o->stream);
  tdmi_mem_free(kind, p);
}

tdm_status tdmi_ops_zero(tdmi_ops *o, void *p, size_t bytes) {
  if (bytes == 0)
    return TDM_SUCCESS;
#ifdef OPS_CUDA
  /* cudaMemsetAsync takes device (and pinned) memory, not pageable */
  if (o->cuda && tdmi_mem_is_device(p)) {
    cudaError_t err = cudaMemsetAsync(p, 0, bytes, handle(o));
    if (err == cudaSuccess)
      return TDM_SUCCESS;
    cudaGetLastError();
    return tdmi_error(TDM_ERR_DEVICE, "cudaMemsetAsync failed: %s",
                      cudaGetErrorString(err));
  }
#endif
  tdm_status st = host_turn(o);
  if (st == TDM_SUCCESS)
    memset(p, 0, bytes);
  return st;
}

tdm_status tdmi_ops_copy(tdmi_ops *o, void *dst, const void *src,
                         size_t bytes) {
  return tdmi_copy_async(dst, src, bytes, o->stream);
}

tdm_status tdmi_ops_synchronize(tdmi_ops *o) {
  return tdmi_stream_synchronize(o->stream);
}

/* ---- kernels ---- */

tdm_status tdmi_ops_update(tdmi_ops *o, const tdmi_update *u,
                           const tdmi_update_arrays *a, int host_arrays) {
#ifdef OPS_CUDA
  if (o->cuda && !host_arrays)
    return launched(tdmi_cuda_update(u, a, handle(o)));
#endif
  (void)host_arrays;
  tdm_status st = host_turn(o);
  if (st == TDM_SUCCESS)
    tdmi_kernel_update(&o->cpu, u, a);
  return st;
}

#ifdef OPS_CUDA
/* On the GPU into o->work's last double, then to *out (blocks). */
static tdm_status cuda_sumsq(tdmi_ops *o, const void *grad, tdm_dtype dtype,
                             size_t n, double pre, double lo, double hi,
                             double *out) {
  double *result = o->work + TDMI_CUDA_SUMSQ_WORK;
  tdm_status st = launched(tdmi_cuda_sumsq(grad, dtype, n, pre, lo, hi,
                                           o->work, result, 0, handle(o)));
  if (st == TDM_SUCCESS)
    st = tdmi_copy_async(out, result, sizeof *out, o->stream);
  if (st == TDM_SUCCESS)
    st = tdmi_stream_synchronize(o->stream);
  return st;
}
#endif

tdm_status tdmi_ops_sumsq(tdmi_ops *o, const void *grad, tdm_dtype dtype,
                          size_t n, double pre, double lo, double hi,
                          int host_array, double *out) {
#ifdef OPS_CUDA
  if (o->cuda && !host_array)
    return cuda_sumsq(o, grad, dtype, n, pre, lo, hi, out);
#endif
  (void)host_array;
  tdm_status st = host_turn(o);
  if (st == TDM_SUCCESS)
    *out = tdmi_kernel_sumsq(&o->cpu, grad, dtype, n, pre, lo, hi);
  return st;
}

tdm_status tdmi_ops_convert(tdmi_ops *o, tdm_dtype from, const void *in,
                            tdm_dtype to, void *out, size_t n) {
#ifdef OPS_CUDA
  if (o->cuda && tdmi_mem_is_device(out))
    return launched(tdmi_cuda_convert(from, in, to, out, n, handle(o)));
#endif
  tdm_status st = host_turn(o);
  if (st == TDM_SUCCESS)
    tdmi_kernel_convert(&o->cpu, from, in, to, out, n);
  return st;
}

tdm_status tdmi_ops_accumulate(tdmi_ops *o, tdm_dtype dtype, const void *src,
                               void *dst, size_t n) {
#ifdef OPS_CUDA
  if (o->cuda)
    return launched(tdmi_cuda_accumulate(dtype, src, dst, n, handle(o)));
#endif
  tdmi_kernel_accumulate(&o->cpu, dtype, src, dst, n);
  return TDM_SUCCESS;
}
