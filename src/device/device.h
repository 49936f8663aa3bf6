/* device.h - internal interface of the device layer.  Knows nothing of
 * ranks: the caller decides which device a rank takes. */
#ifndef TDM_DEVICE_H
#define TDM_DEVICE_H

#include "../core/core.h"

/* Number of visible CUDA devices; 0 in a build without CUDA or when no
 * driver or GPU is present. */
int tdmi_device_count(void);

/* A fake GPU for the test suite: with TANDEM_TEST_FAKE_GPU=1 in the
 * environment and no real GPU visible, the device layer shows one device
 * whose memory is host memory (tdmi_mem_is_device still tells it apart),
 * whose streams run at once and whose kernels are the CPU's; NCCL is not
 * available on it.  It lets the device path of the engine run in CI. */
int tdmi_device_fake(void);

/* Makes device index current for the calling thread. */
tdm_status tdmi_device_activate(tdm_device_kind kind, int index);

/* ---- memory, streams, events (memory.c) ---- */

typedef enum {
  TDMI_MEM_HOST = 0,   /* pageable host memory, 64-byte aligned          */
  TDMI_MEM_PINNED = 1, /* page-locked host memory, for fast asynchronous
                          copies; plain host memory where no GPU is     */
  TDMI_MEM_DEVICE = 2  /* GPU memory of the current device              */
} tdmi_mem_kind;

/* bytes of kind into *out; TDM_ERR_NOT_SUPPORTED for device memory
 * without CUDA, TDM_ERR_DEVICE or TDM_ERR_NO_MEMORY on failure. */
tdm_status tdmi_mem_alloc(tdmi_mem_kind kind, size_t bytes, void **out);
void tdmi_mem_free(tdmi_mem_kind kind, void *p);
/* Whether p points into GPU memory (collectives then take NCCL). */
int tdmi_mem_is_device(const void *p);

/* Reserved address space: bytes of kind whose pages are
 * backed only once touched, so a pointer into it stays valid while its
 * memory comes and goes.  Host memory and the fake GPU's device memory:
 * an anonymous mapping, its pages given back by tdmi_mem_discard (they
 * read zero when touched again).  *out is NULL, with success, where kind
 * cannot do it (a real GPU: CUDA's virtual memory calls are not wired
 * yet), and the caller allocates as before. */
tdm_status tdmi_mem_reserve(tdmi_mem_kind kind, size_t bytes, void **out);
void tdmi_mem_unreserve(void *p, size_t bytes);
/* The page size: reserved ranges are discarded and protected in pages. */
size_t tdmi_mem_page_size(void);
/* Gives back the pages of [p, p + bytes) (page-aligned); their contents
 * are lost and read zero when touched again. */
tdm_status tdmi_mem_discard(void *p, size_t bytes);
/* Makes [p, p + bytes) (page-aligned) readable and writable, or (access
 * 0) inaccessible: a touch then faults (TANDEM_DEBUG's check). */
tdm_status tdmi_mem_protect(void *p, size_t bytes, int access);

/* A stream orders copies and kernels; a host stream (on_device 0) runs
 * each one at once.  Events order one stream after another. */
typedef struct tdmi_stream tdmi_stream;
typedef struct tdmi_event tdmi_event;
tdm_status tdmi_stream_create(int on_device, tdmi_stream **out);
/* Wraps the device's legacy default stream (cudaStream_t 0, where a
 * user's kernels run unless told otherwise), or makes a host stream;
 * tdmi_stream_destroy frees the wrapper and leaves the stream to CUDA. */
tdm_status tdmi_stream_default(int on_device, tdmi_stream **out);
/* Wraps the caller's cudaStream_t (NULL: as tdmi_stream_default on a
 * device); tdmi_stream_destroy frees the wrapper only.  TDM_ERR_INVALID_
 * ARGUMENT for a handle CUDA does not know, TDM_ERR_NOT_SUPPORTED without
 * CUDA or on the fake GPU. */
tdm_status tdmi_stream_wrap(void *handle, tdmi_stream **out);
void tdmi_stream_destroy(tdmi_stream *s);
/* The cudaStream_t (NULL for a host stream), for kernels and NCCL. */
void *tdmi_stream_handle(const tdmi_stream *s);
tdm_status tdmi_stream_synchronize(tdmi_stream *s);
/* Copies bytes in any direction (host, pinned, device) on s. */
tdm_status tdmi_copy_async(void *dst, const void *src, size_t bytes,
                           tdmi_stream *s);
tdm_status tdmi_event_create(int on_device, tdmi_event **out);
void tdmi_event_destroy(tdmi_event *ev);
tdm_status tdmi_event_record(tdmi_event *ev, tdmi_stream *s);
tdm_status tdmi_stream_wait_event(tdmi_stream *s, tdmi_event *ev);
/* *done: whether the work the event marks has finished. */
tdm_status tdmi_event_query(tdmi_event *ev, int *done);

#endif /* TDM_DEVICE_H */
