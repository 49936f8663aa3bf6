/* memory.c - memory, streams, events and copies of the device layer.
 * With CUDA: device memory, pinned host memory, CUDA streams and events.
 * Without CUDA, or for host memory: aligned host allocations, and streams
 * that run every copy at once (a CPU "stream" is already in order).
 * The fake GPU (tdmi_device_fake) is host memory and host streams, its
 * device blocks remembered so that tdmi_mem_is_device knows them. */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, MAP_NORESERVE, madvise */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

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

/* ---- the fake GPU's device memory ---- */

/* Fake device blocks [base, end), sorted by base, so that interior
 * pointers are found by binary search; the engine asks per collective. */
typedef struct {
  uintptr_t base, end;
} fake_block;

static pthread_mutex_t fake_lock = PTHREAD_MUTEX_INITIALIZER;
static fake_block *fake_blocks;
static size_t fake_n, fake_cap;

/* Index of the first block whose base is above p (fake_lock held). */
static size_t fake_upper(uintptr_t p) {
  size_t lo = 0, hi = fake_n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (fake_blocks[mid].base <= p)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Remembers [p, p + bytes); a zero-byte block still owns its base. */
static int fake_remember(void *p, size_t bytes) {
  int ok = 1;
  pthread_mutex_lock(&fake_lock);
  if (fake_n == fake_cap) {
    size_t cap = fake_cap ? 2 * fake_cap : 64;
    fake_block *b = realloc(fake_blocks, cap * sizeof *b);
    if (b) {
      fake_blocks = b;
      fake_cap = cap;
    }
    ok = b != NULL;
  }
  if (ok) {
    size_t i = fake_upper((uintptr_t)p);
    memmove(fake_blocks + i + 1, fake_blocks + i,
            (fake_n - i) * sizeof *fake_blocks);
    fake_blocks[i] = (fake_block){(uintptr_t)p,
                                  (uintptr_t)p + (bytes ? bytes : 1)};
    fake_n++;
  }
  pthread_mutex_unlock(&fake_lock);
  return ok;
}

static void fake_forget(void *p) {
  pthread_mutex_lock(&fake_lock);
  size_t i = fake_upper((uintptr_t)p);
  if (i > 0 && fake_blocks[i - 1].base == (uintptr_t)p) {
    memmove(fake_blocks + i - 1, fake_blocks + i,
            (fake_n - i) * sizeof *fake_blocks);
    fake_n--;
  }
  if (fake_n == 0) { /* nothing left: give the table back */
    free(fake_blocks);
    fake_blocks = NULL;
    fake_cap = 0;
  }
  pthread_mutex_unlock(&fake_lock);
}

static int fake_contains(const void *p) {
  pthread_mutex_lock(&fake_lock);
  size_t i = fake_upper((uintptr_t)p);
  int in = i > 0 && (uintptr_t)p < fake_blocks[i - 1].end;
  pthread_mutex_unlock(&fake_lock);
  return in;
}

static tdm_status fake_alloc(size_t bytes, void **out) {
  tdm_status st = host_alloc(bytes, out);
  if (st != TDM_SUCCESS)
    return st;
  if (!fake_remember(*out, bytes)) {
    free(*out);
    *out = NULL;
    return tdmi_error(TDM_ERR_NO_MEMORY, "fake GPU: out of host memory "
                      "for the table of device blocks");
  }
  return TDM_SUCCESS;
}

/* ---- allocation ---- */

/* Pinned memory serves copies to a GPU; without one, or on the fake GPU,
 * it is host memory. */
static tdmi_mem_kind effective(tdmi_mem_kind kind) {
  if (kind == TDMI_MEM_PINNED &&
      (tdmi_device_fake() || tdmi_device_count() == 0))
    return TDMI_MEM_HOST;
  return kind;
}

tdm_status tdmi_mem_alloc(tdmi_mem_kind kind, size_t bytes, void **out) {
  *out = NULL;
  kind = effective(kind);
  if (kind == TDMI_MEM_HOST)
    return host_alloc(bytes, out);
  if (tdmi_device_fake()) /* device memory, as pinned went to host above */
    return fake_alloc(bytes, out);
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
  if (kind == TDMI_MEM_DEVICE && tdmi_device_fake()) {
    fake_forget(p);
    free(p);
    return;
  }
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
  if (tdmi_device_fake())
    return p && fake_contains(p);
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

/* ---- reserved address space ---- */

size_t tdmi_mem_page_size(void) {
  long page = sysconf(_SC_PAGESIZE);
  return page > 0 ? (size_t)page : 4096;
}

static tdm_status errno_error(const char *call, size_t bytes) {
  return tdmi_error(errno == ENOMEM ? TDM_ERR_NO_MEMORY : TDM_ERR_INTERNAL,
                    "%s of %zu bytes failed: %s", call, bytes,
                    strerror(errno));
}

tdm_status tdmi_mem_reserve(tdmi_mem_kind kind, size_t bytes, void **out) {
  *out = NULL;
  kind = effective(kind);
  int fake = kind == TDMI_MEM_DEVICE && tdmi_device_fake();
  if (kind != TDMI_MEM_HOST && !fake)
    return TDM_SUCCESS; /* pinned or a real GPU: not reserved */
  /* Anonymous private pages exist once touched; NORESERVE: address
   * space, not committed memory. */
  void *p = mmap(NULL, bytes ? bytes : 1, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    return errno_error("mmap", bytes);
  if (fake && !fake_remember(p, bytes)) {
    munmap(p, bytes ? bytes : 1);
    return tdmi_error(TDM_ERR_NO_MEMORY, "fake GPU: out of host memory");
  }
  *out = p;
  return TDM_SUCCESS;
}

void tdmi_mem_unreserve(void *p, size_t bytes) {
  if (!p)
    return;
  if (tdmi_device_fake())
    fake_forget(p);
  munmap(p, bytes ? bytes : 1);
}

tdm_status tdmi_mem_discard(void *p, size_t bytes) {
  if (bytes && madvise(p, bytes, MADV_DONTNEED) != 0)
    return errno_error("madvise(MADV_DONTNEED)", bytes);
  return TDM_SUCCESS;
}

tdm_status tdmi_mem_protect(void *p, size_t bytes, int access) {
  int prot = access ? PROT_READ | PROT_WRITE : PROT_NONE;
  if (bytes && mprotect(p, bytes, prot) != 0)
    return errno_error("mprotect", bytes);
  return TDM_SUCCESS;
}

/* ---- streams and events ---- */

struct tdmi_stream {
#ifdef HAVE_CUDA
  cudaStream_t cuda; /* NULL: a host stream, or the default stream */
#endif
  int on_device;     /* a CUDA stream (never on the fake GPU) */
  int borrowed;      /* the caller's: destroy frees the wrapper only */
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
  /* the fake GPU's streams are host streams: they run at once */
  on_device = on_device && !tdmi_device_fake();
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

/* The default stream belongs to CUDA: its wrapper holds no handle (NULL)
 * and only the wrapper goes; user kernels keep running on it. */
tdm_status tdmi_stream_default(int on_device, tdmi_stream **out) {
  on_device = on_device && !tdmi_device_fake();
#ifdef HAVE_CUDA
  if (on_device && tdmi_device_count() == 0)
    return tdmi_error(TDM_ERR_DEVICE, "default stream: no GPU is visible");
#else
  if (on_device)
    return tdmi_error(TDM_ERR_NOT_SUPPORTED, "device stream: this tandem "
                      "was built without CUDA");
#endif
  tdmi_stream *s = calloc(1, sizeof *s);
  if (!s)
    return tdmi_error(TDM_ERR_NO_MEMORY, "stream: out of memory");
  s->on_device = on_device; /* s->cuda NULL: the legacy default stream */
  *out = s;
  return TDM_SUCCESS;
}

tdm_status tdmi_stream_wrap(void *handle, tdmi_stream **out) {
  if (!handle)
    return tdmi_stream_default(1, out);
#ifdef HAVE_CUDA
  if (!tdmi_device_fake()) {
    cudaError_t err = cudaStreamQuery((cudaStream_t)handle);
    if (err != cudaSuccess && err != cudaErrorNotReady) {
      cudaGetLastError();
      return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "stream %p is not a live "
                        "CUDA stream: %s", handle, cudaGetErrorString(err));
    }
    tdmi_stream *s = calloc(1, sizeof *s);
    if (!s)
      return tdmi_error(TDM_ERR_NO_MEMORY, "stream: out of memory");
    s->cuda = (cudaStream_t)handle;
    s->on_device = 1;
    s->borrowed = 1;
    *out = s;
    return TDM_SUCCESS;
  }
#endif
  return tdmi_error(TDM_ERR_NOT_SUPPORTED, "stream %p: %s", handle,
                    tdmi_device_fake() ? "the fake GPU has no CUDA streams "
                                         "(only NULL, its default stream)"
                                       : "this tandem was built without "
                                         "CUDA");
}

void tdmi_stream_destroy(tdmi_stream *s) {
  if (!s)
    return;
#ifdef HAVE_CUDA
  /* NULL for the default stream, which is not ours, nor is a borrowed */
  if (s->cuda && !s->borrowed)
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
  /* the fake GPU's events mark host streams: done at once */
  on_device = on_device && !tdmi_device_fake();
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
