/* u_device.c - memory, streams, events and copies of the device layer
 * (src/device/memory.c), against plain memcmp:
 *  - host and pinned allocations are 64-byte aligned and hold what a copy
 *    on a host stream put there; a host event is done at once;
 *  - device memory: where a GPU is visible, bytes go host -> device on one
 *    stream and device -> host on another that waits for the first's
 *    event, and come back unchanged; device pointers are recognised as
 *    such.  Without a GPU (or CUDA) the allocation fails with a clear
 *    status and the GPU part reports a skip;
 *  - host pointers are never taken for device memory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device/device.h"

static int failures;

#define CHECK(cond, ...)                                                  \
  do {                                                                    \
    if (!(cond)) {                                                        \
      failures++;                                                         \
      fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__,    \
              #cond);                                                     \
      fprintf(stderr, __VA_ARGS__);                                       \
      fputc('\n', stderr);                                                \
    }                                                                     \
  } while (0)

#define BYTES 100003 /* odd: no transfer size is a power of two */

static void fill(unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++)
    p[i] = (unsigned char)(seed * 2654435761u + i * 40503u >> 7);
}

static void host_side(void) {
  unsigned char *host = NULL, *pinned = NULL;
  CHECK(tdmi_mem_alloc(TDMI_MEM_HOST, BYTES, (void **)&host) == TDM_SUCCESS,
        "%s", tdm_last_error());
  CHECK(tdmi_mem_alloc(TDMI_MEM_PINNED, BYTES, (void **)&pinned) ==
            TDM_SUCCESS, "%s", tdm_last_error());
  if (!host || !pinned)
    return;
  CHECK((uintptr_t)host % 64 == 0 && (uintptr_t)pinned % 64 == 0,
        "not aligned: %p %p", (void *)host, (void *)pinned);
  tdmi_stream *s = NULL;
  tdmi_event *ev = NULL;
  CHECK(tdmi_stream_create(0, &s) == TDM_SUCCESS, "%s", tdm_last_error());
  CHECK(tdmi_event_create(0, &ev) == TDM_SUCCESS, "%s", tdm_last_error());
  fill(host, BYTES, 1);
  CHECK(tdmi_copy_async(pinned, host, BYTES, s) == TDM_SUCCESS, "copy");
  CHECK(tdmi_event_record(ev, s) == TDM_SUCCESS, "record");
  int done = 0;
  CHECK(tdmi_event_query(ev, &done) == TDM_SUCCESS && done, "host event");
  CHECK(tdmi_stream_synchronize(s) == TDM_SUCCESS, "synchronize");
  CHECK(memcmp(host, pinned, BYTES) == 0, "host copy differs");
  CHECK(!tdmi_mem_is_device(host) && !tdmi_mem_is_device(pinned),
        "host memory taken for device memory");
  tdmi_event_destroy(ev);
  tdmi_stream_destroy(s);
  tdmi_mem_free(TDMI_MEM_HOST, host);
  tdmi_mem_free(TDMI_MEM_PINNED, pinned);
}

/* Host -> device on one stream, device -> host on another after it. */
static void device_round_trip(void) {
  unsigned char *in = malloc(BYTES), *out = calloc(1, BYTES), *dev = NULL;
  tdmi_stream *up = NULL, *down = NULL;
  tdmi_event *ev = NULL;
  fill(in, BYTES, 2);
  CHECK(tdmi_mem_alloc(TDMI_MEM_DEVICE, BYTES, (void **)&dev) == TDM_SUCCESS,
        "%s", tdm_last_error());
  CHECK(tdmi_mem_is_device(dev), "device memory not recognised");
  CHECK(tdmi_stream_create(1, &up) == TDM_SUCCESS, "%s", tdm_last_error());
  CHECK(tdmi_stream_create(1, &down) == TDM_SUCCESS, "%s", tdm_last_error());
  CHECK(tdmi_event_create(1, &ev) == TDM_SUCCESS, "%s", tdm_last_error());
  CHECK(tdmi_copy_async(dev, in, BYTES, up) == TDM_SUCCESS, "%s",
        tdm_last_error());
  CHECK(tdmi_event_record(ev, up) == TDM_SUCCESS, "%s", tdm_last_error());
  CHECK(tdmi_stream_wait_event(down, ev) == TDM_SUCCESS, "%s",
        tdm_last_error());
  CHECK(tdmi_copy_async(out, dev, BYTES, down) == TDM_SUCCESS, "%s",
        tdm_last_error());
  CHECK(tdmi_stream_synchronize(down) == TDM_SUCCESS, "%s", tdm_last_error());
  CHECK(memcmp(in, out, BYTES) == 0, "bytes changed on the round trip");
  tdmi_event_destroy(ev);
  tdmi_stream_destroy(up);
  tdmi_stream_destroy(down);
  tdmi_mem_free(TDMI_MEM_DEVICE, dev);
  free(in);
  free(out);
}

int main(void) {
  host_side();
  if (tdmi_device_count() > 0) {
    device_round_trip();
  } else {
    void *dev = NULL;
    tdm_status st = tdmi_mem_alloc(TDMI_MEM_DEVICE, BYTES, &dev);
    CHECK((st == TDM_ERR_DEVICE || st == TDM_ERR_NOT_SUPPORTED) && !dev,
          "device memory without a GPU: %s: %s", tdm_status_string(st),
          tdm_last_error());
    printf("u_device: GPU part: skip (no GPU visible)\n");
  }
  printf("u_device: %s (%d failed checks)\n", failures ? "FAIL" : "PASS",
         failures);
  return failures ? 1 : 0;
}
