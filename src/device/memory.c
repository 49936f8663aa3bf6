/* memory.c - memory, streams, events and copies of the device layer.
 * With CUDA: device memory, pinned host memory, CUDA streams and events.
 * Without CUDA, or for host memory: aligned host allocations, and streams
 * that run every copy at once (a CPU "stream" is already in order). */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "device.h"

#ifdef HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#define HOST_ALIGN 64 /* a cache line */

#ifdef HAVE_CUDA
static tdm_status cuda_error(cudaError_t err, const char *call) {
  cudaGetLastError(); /* clear a non-sticky error */
  return tdmi_error(TDM_ERR_DEVICE, "%s failed: %s", call,
                    cudaGetErrorString(err));
}
#endif

static tdm_status host_alloc(size_t bytes, void **out) {
  size_t padded = (bytes + HOST_ALIGN - 1) / HOST_ALIGN * HOST_ALIGN;
  *out = aligned_alloc(HOST_ALIGN, padded ? padded : HOST_ALIGN);
  return *out ? TDM_SUCCESS
              : tdmi_error(TDM_ERR_NO_MEMORY, "out of host memory for %zu "
                           "bytes", bytes);
}

/* Pinned memory serves copies to a GPU; without one it is host memory. */
static tdmi_mem_kind effective(tdmi_mem_kind kind) {
  return kind == TDMI_MEM_PINNED && tdmi_device_count() == 0 ? TDMI_MEM_HOST
                                                             : kind;
}

tdm_status tdmi_mem_alloc(tdmi_mem_kind kind, size_t bytes, void **out) {
  *out = NULL;
  kind = effective(kind);
  if (kind == TDMI_MEM_HOST)
    return host_alloc(bytes, out);
#ifdef HAVE_CUDA
  cudaError_t err = kind == TDMI_MEM_DEVICE ? cudaMalloc(out, bytes)
                                            : cudaMallocHost(out, bytes);
  if (err != cudaSuccess) {
    *out = NULL;
    return cuda_error(err, kind == TDMI_MEM_DEVICE ? "cudaMalloc"
                                                   : "cudaMallocHost");
  }
  return TDM_SUCCESS;
#else
  return tdmi_error(TDM_ERR_NOT_SUPPORTED, "device memory: this tandem "
                    "was built without CUDA");
#endif
}

void tdmi_mem_free(tdmi_mem_kind kind, void *p) {
  if (!p)
    return;
  kind = effective(kind);
#ifdef HAVE_CUDA
  if (kind == TDMI_MEM_DEVICE) {
    cudaFree(p);
    return;
  }
  if (kind == TDMI_MEM_PINNED) {
    cudaFreeHost(p);
    return;
  }
#endif
  (void)kind;
  free(p);
}

int tdmi_mem_is_device(const void *p) {
#ifdef HAVE_CUDA
  struct cudaPointerAttributes a;
  if (!p || cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError(); /* plain host memory may report an error */
    return 0;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
#else
  (void)p;
  return 0;
#endif
}

/* ---- streams and events ---- */

struct tdmi_stream {
#ifdef HAVE_CUDA
  cudaStream_t cuda; /* NULL for a host stream */
#endif
  int on_device;
};

struct tdmi_event {
#ifdef HAVE_CUDA
  cudaEvent_t cuda;
#endif
  int on_device;
};

tdm_status tdmi_stream_create(int on_device, tdmi_stream **out) {
  tdmi_stream *s = calloc(1, sizeof *s);
  if (!s)
    return tdmi_error(TDM_ERR_NO_MEMORY, "stream: out of memory");
  s->on_device = on_device;
#ifdef HAVE_CUDA
  cudaError_t err = on_device ? cudaStreamCreateWithFlags(
                                    &s->cuda, cudaStreamNonBlocking)
                              : cudaSuccess;
  if (err != cudaSuccess) {
    free(s);
    return cuda_error(err, "cudaStreamCreateWithFlags");
  }
#else
  if (on_device) {
    free(s);
    return tdmi_error(TDM_ERR_NOT_SUPPORTED, "device stream: this tandem "
                      "was built without CUDA");
  }
#endif
  *out = s;
  return TDM_SUCCESS;
}

void tdmi_stream_destroy(tdmi_stream *s) {
  if (!s)
    return;
#ifdef HAVE_CUDA
  if (s->cuda)
    cudaStreamDestroy(s->cuda);
#endif
  free(s);
}

void *tdmi_stream_handle(const tdmi_stream *s) {
#ifdef HAVE_CUDA
  return s ? (void *)s->cuda : NULL;
#else
  (void)s;
  return NULL;
#endif
}

tdm_status tdmi_stream_synchronize(tdmi_stream *s) {
#ifdef HAVE_CUDA
  if (s->on_device) {
    cudaError_t err = cudaStreamSynchronize(s->cuda);
    return err == cudaSuccess ? TDM_SUCCESS
                              : cuda_error(err, "cudaStreamSynchronize");
  }
#endif
  (void)s; /* a host stream has finished everything already */
  return TDM_SUCCESS;
}

tdm_status tdmi_copy_async(void *dst, const void *src, size_t bytes,
                           tdmi_stream *s) {
  if (bytes == 0)
    return TDM_SUCCESS;
#ifdef HAVE_CUDA
  if (s->on_device) {
    cudaError_t err =
        cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s->cuda);
    return err == cudaSuccess ? TDM_SUCCESS
                              : cuda_error(err, "cudaMemcpyAsync");
  }
#endif
  (void)s;
  memcpy(dst, src, bytes);
  return TDM_SUCCESS;
}

tdm_status tdmi_event_create(int on_device, tdmi_event **out) {
  tdmi_event *ev = calloc(1, sizeof *ev);
  if (!ev)
    return tdmi_error(TDM_ERR_NO_MEMORY, "event: out of memory");
  ev->on_device = on_device;
#ifdef HAVE_CUDA
  cudaError_t err = on_device ? cudaEventCreateWithFlags(
                                    &ev->cuda, cudaEventDisableTiming)
                              : cudaSuccess;
  if (err != cudaSuccess) {
    free(ev);
    return cuda_error(err, "cudaEventCreateWithFlags");
  }
#else
  if (on_device) {
    free(ev);
    return tdmi_error(TDM_ERR_NOT_SUPPORTED, "device event: this tandem "
                      "was built without CUDA");
  }
#endif
  *out = ev;
  return TDM_SUCCESS;
}

void tdmi_event_destroy(tdmi_event *ev) {
  if (!ev)
    return;
#ifdef HAVE_CUDA
  if (ev->cuda)
    cudaEventDestroy(ev->cuda);
#endif
  free(ev);
}

/* The event marks everything queued on s so far. */
tdm_status tdmi_event_record(tdmi_event *ev, tdmi_stream *s) {
#ifdef HAVE_CUDA
  if (ev->on_device && s->on_device) {
    cudaError_t err = cudaEventRecord(ev->cuda, s->cuda);
    return err == cudaSuccess ? TDM_SUCCESS : cuda_error(err, "cudaEventRecord");
  }
#endif
  (void)ev, (void)s; /* host work is done when it is queued */
  return TDM_SUCCESS;
}

/* Work queued on s later starts after the event. */
tdm_status tdmi_stream_wait_event(tdmi_stream *s, tdmi_event *ev) {
#ifdef HAVE_CUDA
  if (ev->on_device && s->on_device) {
    cudaError_t err = cudaStreamWaitEvent(s->cuda, ev->cuda, 0);
    return err == cudaSuccess ? TDM_SUCCESS
                              : cuda_error(err, "cudaStreamWaitEvent");
  }
#endif
  (void)ev, (void)s;
  return TDM_SUCCESS;
}

tdm_status tdmi_event_query(tdmi_event *ev, int *done) {
  *done = 1;
#ifdef HAVE_CUDA
  if (ev->on_device) {
    cudaError_t err = cudaEventQuery(ev->cuda);
    if (err == cudaErrorNotReady) {
      *done = 0;
      return TDM_SUCCESS;
    }
    return err == cudaSuccess ? TDM_SUCCESS : cuda_error(err, "cudaEventQuery");
  }
#endif
  (void)ev;
  return TDM_SUCCESS;
}
