/* ops.h - where the engine's and the optimizer's buffers live and what
 * runs on them: host memory and the CPU kernels, or device memory and the
 * CUDA kernels queued on a compute stream.  The layers above call these and
 * never branch on the device themselves.  Not installed.
 *
 * Every call is ordered on the compute stream: on a GPU it is queued and
 * returns at once (except where it says it blocks); on the host it runs
 * before it returns.  A fake GPU (tdmi_device_fake) has device memory that
 * is host memory and runs the CPU kernels, so the device path of the
 * layers above runs on machines without a GPU. */
#ifndef TDM_OPS_H
#define TDM_OPS_H

#include "device.h"
#include "kernels.h"

typedef struct {
  tdmi_kernels cpu;    /* the CPU kernels (also on a device: offload)    */
  int on_device;       /* buffers are device memory (a real or fake GPU) */
  int cuda;            /* a real GPU: the CUDA kernels on stream         */
  tdmi_stream *stream; /* the compute stream (a host stream on the CPU)  */
  double *work;        /* cuda: sum-of-squares workspace and result      */
  int *flag;           /* cuda: the inf/nan flag                         */
} tdmi_ops;

/* on_device: buffers on the current device.  The compute stream is the
 * device's default stream (the one a user's kernels run on unless they
 * say otherwise) or a host stream. */
tdm_status tdmi_ops_init(tdmi_ops *o, const tdmi_kernels *cpu, int on_device);
void tdmi_ops_destroy(tdmi_ops *o);
/* On a device: the caller's cudaStream_t (NULL: the default stream)
 * becomes the compute stream, after the work queued on the old one. */
tdm_status tdmi_ops_set_stream(tdmi_ops *o, void *handle);

/* The memory kind of buffers the model computes with: TDMI_MEM_DEVICE on
 * a device, else TDMI_MEM_HOST. */
tdmi_mem_kind tdmi_ops_compute_mem(const tdmi_ops *o);

/* bytes of kind, zeroed (in stream order on a device). */
tdm_status tdmi_ops_alloc(tdmi_ops *o, tdmi_mem_kind kind, size_t bytes,
                          void **out);
/* Frees after the work queued so far that uses p (blocks on a GPU). */
void tdmi_ops_free(tdmi_ops *o, tdmi_mem_kind kind, void *p);

tdm_status tdmi_ops_zero(tdmi_ops *o, void *p, size_t bytes);
/* Any direction between host, pinned and device memory. */
tdm_status tdmi_ops_copy(tdmi_ops *o, void *dst, const void *src,
                         size_t bytes);
/* Blocks until everything queued on the compute stream has finished. */
tdm_status tdmi_ops_synchronize(tdmi_ops *o);

/* The kernels of kernels.h, on o's memory.  Arrays are all device memory
 * or all host memory, as o->on_device says, except that host_arrays 1
 * forces the CPU kernels on host arrays (offloaded optimizer state). */
tdm_status tdmi_ops_update(tdmi_ops *o, const tdmi_update *u,
                           const tdmi_update_arrays *a, int host_arrays);
/* *out = tdmi_kernel_sumsq(...); blocks until it is known. */
tdm_status tdmi_ops_sumsq(tdmi_ops *o, const void *grad, tdm_dtype dtype,
                          size_t n, double pre, double lo, double hi,
                          int host_array, double *out);
/* in and out are both device memory or both host memory, as out is. */
tdm_status tdmi_ops_convert(tdmi_ops *o, tdm_dtype from, const void *in,
                            tdm_dtype to, void *out, size_t n);
tdm_status tdmi_ops_accumulate(tdmi_ops *o, tdm_dtype dtype, const void *src,
                               void *dst, size_t n);

#endif /* TDM_OPS_H */
