/* u_device.c - memory, streams, events and copies of the device layer
 * (src/device/memory.c), against plain memcmp:
 *  - host and pinned allocations are 64-byte aligned and hold what a copy
 *    on a host stream put there; a host event is done at once;
 *  - device memory: where a GPU is visible, bytes go host -> device on one
 *    stream and device -> host on another that waits for the first's
 *    event, and come back unchanged; device pointers are recognised as
 *    such.  Without a GPU (or CUDA) the allocation fails with a clear
 *    status and the GPU part reports a skip;
 *  - host pointers are never taken for device memory;
 *  - ops (src/device/ops.c) on the host: allocations are zeroed, copies
 *    and zeroing move the right bytes, and convert, accumulate, update
 *    and sumsq give the CPU kernels' bits (and a few values by hand);
 *  - the fake GPU (built as u_device_fake, which sets
 *    TANDEM_TEST_FAKE_GPU=1 before the first device call; or any run with
 *    it set): one device that activates, device memory that
 *    tdmi_mem_is_device knows by any interior pointer and forgets when
 *    freed, host streams and events, and the same ops checks with
 *    on_device 1.  Where a real GPU is visible the fake stays off and
 *    u_device_fake reports a skip;
 *  - a real GPU: the ops checks with on_device 1 within 1e-6 relative of
 *    the CPU kernels. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device/device.h"
#include "device/ops.h"

#include "unit_check.h"

#define BYTES 100003 /* odd: no transfer size is a power of two */

static void fill(unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++)
    p[i] = (unsigned char)((seed * 2654435761u + i * 40503u) >> 7);
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

/* ---- the fake GPU ------------------------------------------------------ */

#define NBLOCKS 200 /* past the registry's first table of 64 */

static size_t block_bytes(int i) { return i == 0 ? 0 : 1000 + 37 * (size_t)i; }

/* Device blocks are known by base, interior and last byte, and forgotten
 * once freed; host memory of every kind is never taken for them. */
static void fake_memory(void) {
  static unsigned char *blocks[NBLOCKS];
  for (int i = 0; i < NBLOCKS; i++)
    CHECK(tdmi_mem_alloc(TDMI_MEM_DEVICE, block_bytes(i),
                         (void **)&blocks[i]) == TDM_SUCCESS && blocks[i],
          "fake device block %d: %s", i, tdm_last_error());
  for (int i = 0; i < NBLOCKS; i++) {
    size_t n = block_bytes(i);
    unsigned char *b = blocks[i];
    CHECK(tdmi_mem_is_device(b), "block %d: base not device memory", i);
    if (n > 1)
      CHECK(tdmi_mem_is_device(b + n / 2) && tdmi_mem_is_device(b + n - 1),
            "block %d: interior pointer not device memory", i);
    if (n > 0) /* one past the end lies in the block's own padding */
      CHECK(!tdmi_mem_is_device(b + n), "block %d: end taken for device", i);
  }
  unsigned char stack_byte = 0, *host = NULL, *pinned = NULL;
  tdmi_mem_alloc(TDMI_MEM_HOST, 4096, (void **)&host);
  tdmi_mem_alloc(TDMI_MEM_PINNED, 4096, (void **)&pinned);
  CHECK(host && pinned, "host or pinned allocation on the fake GPU");
  CHECK(!tdmi_mem_is_device(host) && !tdmi_mem_is_device(host + 100) &&
            !tdmi_mem_is_device(pinned) && !tdmi_mem_is_device(&stack_byte) &&
            !tdmi_mem_is_device(NULL),
        "host memory taken for fake device memory");
  tdmi_mem_free(TDMI_MEM_HOST, host);
  tdmi_mem_free(TDMI_MEM_PINNED, pinned);
  for (int i = 0; i < NBLOCKS; i += 2) /* every other one, table kept */
    tdmi_mem_free(TDMI_MEM_DEVICE, blocks[i]);
  for (int i = 0; i < NBLOCKS; i++) {
    size_t n = block_bytes(i);
    int want = i % 2; /* addresses of freed blocks compare, not read */
    CHECK(tdmi_mem_is_device(blocks[i]) == want &&
              (n < 2 || tdmi_mem_is_device(blocks[i] + n - 1) == want),
          "block %d (%s): is_device %d", i, want ? "kept" : "freed", !want);
  }
  for (int i = 1; i < NBLOCKS; i += 2)
    tdmi_mem_free(TDMI_MEM_DEVICE, blocks[i]);
  CHECK(!tdmi_mem_is_device(blocks[1]), "last blocks not forgotten");
}

/* One device that activates, and streams and events that run at once. */
static void fake_gpu(void) {
  CHECK(tdmi_device_count() == 1, "fake GPU: %d devices",
        tdmi_device_count());
  CHECK(tdmi_device_activate(TDM_DEVICE_CUDA, 0) == TDM_SUCCESS, "%s",
        tdm_last_error());
  CHECK(tdmi_device_activate(TDM_DEVICE_CUDA, 1) != TDM_SUCCESS,
        "fake GPU: device 1 activated");
  tdmi_stream *s = NULL, *d = NULL;
  tdmi_event *ev = NULL;
  CHECK(tdmi_stream_create(1, &s) == TDM_SUCCESS, "%s", tdm_last_error());
  CHECK(tdmi_stream_default(1, &d) == TDM_SUCCESS, "%s", tdm_last_error());
  CHECK(tdmi_event_create(1, &ev) == TDM_SUCCESS, "%s", tdm_last_error());
  CHECK(tdmi_stream_handle(s) == NULL, "fake stream has a CUDA handle");
  int done = 0;
  if (s && ev) {
    CHECK(tdmi_event_record(ev, s) == TDM_SUCCESS &&
              tdmi_event_query(ev, &done) == TDM_SUCCESS && done,
          "fake event not done at once");
    CHECK(tdmi_stream_synchronize(s) == TDM_SUCCESS, "%s", tdm_last_error());
  }
  tdmi_event_destroy(ev);
  tdmi_stream_destroy(s);
  tdmi_stream_destroy(d);
  fake_memory();
}

/* ---- ops against the CPU kernels -------------------------------------- */

#define N 1003 /* odd: no vector width divides it */

static tdmi_kernels cpu;

/* Relative difference, 0 for equal values or two NaNs. */
static double rel(double got, double want) {
  if (got == want || (isnan(got) && isnan(want)))
    return 0.0;
  double w = fabs(want);
  return fabs(got - want) / (w > 1e-30 ? w : 1e-30);
}

static double value(const void *x, tdm_dtype d, size_t i) {
  switch (d) {
  case TDM_F64: return ((const double *)x)[i];
  case TDM_F32: return ((const float *)x)[i];
  case TDM_BF16: return tdmi_bf16_to_f32(((const uint16_t *)x)[i]);
  default: return tdmi_f16_to_f32(((const uint16_t *)x)[i]);
  }
}

static size_t dsize(tdm_dtype d) {
  return d == TDM_F64 ? 8 : d == TDM_F32 ? 4 : 2;
}

/* tol 0: the same bits; else each element within tol relative. */
static void same(const char *what, const char *label, const void *got,
                 const void *want, tdm_dtype d, size_t n, double tol) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < n; i++) {
    int ok = tol == 0.0 ? memcmp((const char *)got + i * dsize(d),
                                 (const char *)want + i * dsize(d),
                                 dsize(d)) == 0
                        : rel(value(got, d, i), value(want, d, i)) <= tol;
    if (!ok && bad++ == 0)
      first = i;
  }
  CHECK(bad == 0, "%s: %s: %zu of %zu differ, first [%zu]: %.9g, want %.9g",
        label, what, bad, n, first, value(got, d, first),
        value(want, d, first));
}

/* Uniform in [-1, 1), deterministic. */
static uint64_t seed = 0x9e3779b97f4a7c15u;
static float unif(void) {
  seed = seed * 6364136223846793005u + 1442695040888963407u;
  return (float)(int32_t)(seed >> 32) * 0x1p-31f;
}

typedef struct {
  tdmi_ops o;
  const char *label;
  double tol; /* 0 on the CPU kernels: the same bits */
} ops_case;

/* Compute memory of o holding bytes of src (NULL: zeroed). */
static void *upload(ops_case *c, const void *src, size_t bytes) {
  void *p = NULL;
  CHECK(tdmi_ops_alloc(&c->o, tdmi_ops_compute_mem(&c->o), bytes, &p) ==
            TDM_SUCCESS && p, "%s: alloc: %s", c->label, tdm_last_error());
  if (p && src)
    CHECK(tdmi_ops_copy(&c->o, p, src, bytes) == TDM_SUCCESS, "%s: copy: %s",
          c->label, tdm_last_error());
  return p;
}

/* bytes of compute memory src into host dst, waiting for them. */
static void download(ops_case *c, void *dst, const void *src, size_t bytes) {
  CHECK(tdmi_ops_copy(&c->o, dst, src, bytes) == TDM_SUCCESS &&
            tdmi_ops_synchronize(&c->o) == TDM_SUCCESS,
        "%s: copy back: %s", c->label, tdm_last_error());
}

static void release(ops_case *c, void *p) {
  tdmi_ops_free(&c->o, tdmi_ops_compute_mem(&c->o), p);
}

static int all_zero(const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i])
      return 0;
  return 1;
}

/* Allocations come zeroed even where the allocator hands back a block
 * that was just dirtied and freed (each kind ops can allocate). */
static void ops_alloc_zeroed(ops_case *c) {
  static unsigned char dirty[N * 4], back[N * 4];
  memset(dirty, 0xa5, sizeof dirty);
  tdmi_mem_kind kinds[3] = {TDMI_MEM_HOST, TDMI_MEM_PINNED,
                            tdmi_ops_compute_mem(&c->o)};
  for (int k = 0; k < 3; k++) {
    for (int round = 0; round < 2; round++) {
      void *p = NULL;
      CHECK(tdmi_ops_alloc(&c->o, kinds[k], sizeof dirty, &p) ==
                TDM_SUCCESS && p, "%s: alloc kind %d: %s", c->label,
            (int)kinds[k], tdm_last_error());
      if (!p)
        continue;
      memset(back, 0x5a, sizeof back);
      download(c, back, p, sizeof back);
      CHECK(all_zero(back, sizeof back), "%s: alloc kind %d not zeroed",
            c->label, (int)kinds[k]);
      tdmi_ops_copy(&c->o, p, dirty, sizeof dirty); /* for the next round */
      tdmi_ops_free(&c->o, kinds[k], p);
    }
  }
}

/* Host -> compute -> compute -> host, then a zeroed middle part. */
static void ops_copy_zero(ops_case *c, const float *x) {
  static float back[N];
  float *d1 = upload(c, x, sizeof back), *d2 = upload(c, NULL, sizeof back);
  if (!d1 || !d2)
    return;
  CHECK(tdmi_mem_is_device(d1) == c->o.on_device,
        "%s: compute memory is_device %d", c->label, !c->o.on_device);
  CHECK(tdmi_ops_copy(&c->o, d2, d1, sizeof back) == TDM_SUCCESS, "%s",
        tdm_last_error());
  download(c, back, d2, sizeof back);
  CHECK(memcmp(back, x, sizeof back) == 0, "%s: copies changed bytes",
        c->label);
  CHECK(tdmi_ops_zero(&c->o, d2 + 100, 200 * sizeof *d2) == TDM_SUCCESS,
        "%s", tdm_last_error());
  download(c, back, d2, sizeof back);
  CHECK(all_zero((unsigned char *)(back + 100), 200 * sizeof *back) &&
            memcmp(back, x, 100 * sizeof *x) == 0 &&
            memcmp(back + 300, x + 300, (N - 300) * sizeof *x) == 0,
        "%s: zero: wrong bytes zeroed", c->label);
  release(c, d1);
  release(c, d2);
}

/* f32 -> half -> f32 for bf16 and f16, against tdmi_kernel_convert. */
static void ops_convert(ops_case *c, const float *x, tdm_dtype half) {
  static uint16_t h[N], want_h[N];
  static float f[N], want_f[N];
  const char *what = half == TDM_BF16 ? "convert bf16" : "convert f16";
  float *d1 = upload(c, x, sizeof f), *d2 = upload(c, NULL, sizeof f);
  uint16_t *dh = upload(c, NULL, sizeof h);
  if (d1 && d2 && dh) {
    CHECK(tdmi_ops_convert(&c->o, TDM_F32, d1, half, dh, N) == TDM_SUCCESS &&
              tdmi_ops_convert(&c->o, half, dh, TDM_F32, d2, N) ==
                  TDM_SUCCESS, "%s: %s: %s", c->label, what, tdm_last_error());
    download(c, h, dh, sizeof h);
    download(c, f, d2, sizeof f);
    tdmi_kernel_convert(&cpu, TDM_F32, x, half, want_h, N);
    tdmi_kernel_convert(&cpu, half, want_h, TDM_F32, want_f, N);
    same(what, c->label, h, want_h, half, N, c->tol);
    same(what, c->label, f, want_f, TDM_F32, N, c->tol);
    /* by hand: x[0] = 1, x[1] = -2 are exact in both */
    uint16_t one = half == TDM_BF16 ? 0x3f80 : 0x3c00;
    CHECK(h[0] == one && h[1] == 0xc000 && f[0] == 1.0f && f[1] == -2.0f,
          "%s: %s: 1, -2 -> %#x %#x -> %g %g", c->label, what, h[0], h[1],
          f[0], f[1]);
  }
  release(c, d1);
  release(c, d2);
  release(c, dh);
}

/* dst += src in f32 and bf16, against tdmi_kernel_accumulate. */
static void ops_accumulate(ops_case *c, const float *x, const float *y) {
  static float got[N], want[N];
  static uint16_t xh[N], yh[N], goth[N];
  float *dx = upload(c, x, sizeof got), *dy = upload(c, y, sizeof got);
  tdmi_kernel_convert(&cpu, TDM_F32, x, TDM_BF16, xh, N);
  tdmi_kernel_convert(&cpu, TDM_F32, y, TDM_BF16, yh, N);
  uint16_t *dxh = upload(c, xh, sizeof xh), *dyh = upload(c, yh, sizeof yh);
  if (dx && dy && dxh && dyh) {
    CHECK(tdmi_ops_accumulate(&c->o, TDM_F32, dx, dy, N) == TDM_SUCCESS &&
              tdmi_ops_accumulate(&c->o, TDM_BF16, dxh, dyh, N) ==
                  TDM_SUCCESS, "%s: accumulate: %s", c->label,
          tdm_last_error());
    download(c, got, dy, sizeof got);
    download(c, goth, dyh, sizeof goth);
    memcpy(want, y, sizeof want);
    tdmi_kernel_accumulate(&cpu, TDM_F32, x, want, N);
    tdmi_kernel_accumulate(&cpu, TDM_BF16, xh, yh, N);
    same("accumulate f32", c->label, got, want, TDM_F32, N, c->tol);
    same("accumulate bf16", c->label, goth, yh, TDM_BF16, N, c->tol);
    CHECK(got[0] == 1.0f + 0.5f && goth[0] == 0x3fc0, /* 1.5 in bf16 */
          "%s: accumulate by hand: 1 + 0.5 = %g, bf16 %#x", c->label,
          got[0], goth[0]);
  }
  release(c, dx);
  release(c, dy);
  release(c, dxh);
  release(c, dyh);
}

/* sumsq of compute and host arrays; a plain and a clipping transform. */
static void ops_sumsq(ops_case *c, const float *x) {
  float *dx = upload(c, x, N * sizeof *x);
  static const float pair[2] = {3.0f, -4.0f};
  float *dp = upload(c, pair, sizeof pair);
  const double t[2][3] = {{1.0, -INFINITY, INFINITY}, {2.0, -0.25, 0.5}};
  for (int k = 0; k < 2 && dx && dp; k++) {
    double got = -1, host = -1, hand = -1;
    double want = tdmi_kernel_sumsq(&cpu, x, TDM_F32, N, t[k][0], t[k][1],
                                    t[k][2]);
    CHECK(tdmi_ops_sumsq(&c->o, dx, TDM_F32, N, t[k][0], t[k][1], t[k][2], 0,
                         &got) == TDM_SUCCESS &&
              tdmi_ops_sumsq(&c->o, x, TDM_F32, N, t[k][0], t[k][1], t[k][2],
                             1, &host) == TDM_SUCCESS &&
              tdmi_ops_sumsq(&c->o, dp, TDM_F32, 2, 2.0, -5.0, 7.0, 0,
                             &hand) == TDM_SUCCESS,
          "%s: sumsq: %s", c->label, tdm_last_error());
    CHECK(rel(got, want) <= c->tol && host == want,
          "%s: sumsq %d: %.17g, host array %.17g, want %.17g", c->label, k,
          got, host, want);
    /* by hand: 2 * (3, -4) = (6, -8), clamped to [-5, 7]: 36 + 25 */
    CHECK(hand == 61.0, "%s: sumsq of clip(3, -4): %.17g, want 61",
          c->label, hand);
  }
  release(c, dx);
  release(c, dp);
}

/* An AdamW step: f32 param and state, bf16 gradients (zeroed after) and
 * a bf16 copy. */
typedef struct {
  float p[N], m[N], v[N];
  uint16_t g[N], copy[N];
} adam_arrays;

static void adam_fill(adam_arrays *h, const float *x, const float *y) {
  for (size_t i = 0; i < N; i++) {
    h->p[i] = x[i];
    h->m[i] = 0.1f * y[i];
    h->v[i] = 0.01f * fabsf(x[N - 1 - i]);
    h->copy[i] = 0x1234;
  }
  tdmi_kernel_convert(&cpu, TDM_F32, y, TDM_BF16, h->g, N);
}

static tdmi_update_arrays adam_view(void *p, void *g, void *m, void *v,
                                    void *copy) {
  return (tdmi_update_arrays){.param = p, .dtype = TDM_F32, .grad = g,
                              .grad_dtype = TDM_BF16, .copy = copy,
                              .copy_dtype = TDM_BF16, .state0 = m,
                              .state1 = v, .n = N, .zero_grad = 1};
}

static void ops_update_adamw(ops_case *c, const float *x, const float *y) {
  static adam_arrays want, host, got;
  const tdmi_update u = {
      .kind = TDM_OPTIMIZER_ADAMW, .pre = 1, .lo = -INFINITY,
      .hi = INFINITY, .post = 1, .lr = 1e-2, .weight_decay = 0.1,
      .beta1 = 0.9, .c1 = 0.1, .beta2 = 0.999, .c2 = 0.001, .eps = 1e-8,
      .decay = 1 - 1e-2 * 0.1, .step_size = 1e-2 / (1 - 0.9 * 0.9),
      .bias2_sqrt = sqrt(1 - 0.999 * 0.999)};
  adam_fill(&want, x, y);
  adam_fill(&host, x, y);
  float *dp = upload(c, want.p, sizeof want.p);
  float *dm = upload(c, want.m, sizeof want.m);
  float *dv = upload(c, want.v, sizeof want.v);
  uint16_t *dg = upload(c, want.g, sizeof want.g);
  uint16_t *dc = upload(c, want.copy, sizeof want.copy);
  if (dp && dm && dv && dg && dc) {
    tdmi_update_arrays a = adam_view(dp, dg, dm, dv, dc);
    tdmi_update_arrays ha = adam_view(host.p, host.g, host.m, host.v,
                                      host.copy);
    CHECK(tdmi_ops_update(&c->o, &u, &a, 0) == TDM_SUCCESS &&
              tdmi_ops_update(&c->o, &u, &ha, 1) == TDM_SUCCESS,
          "%s: update: %s", c->label, tdm_last_error());
    download(c, got.p, dp, sizeof got.p);
    download(c, got.m, dm, sizeof got.m);
    download(c, got.v, dv, sizeof got.v);
    download(c, got.g, dg, sizeof got.g);
    download(c, got.copy, dc, sizeof got.copy);
    tdmi_update_arrays wa = adam_view(want.p, want.g, want.m, want.v,
                                      want.copy);
    tdmi_kernel_update(&cpu, &u, &wa);
    CHECK(memcmp(&host, &want, sizeof want) == 0,
          "%s: update of host arrays differs from the CPU kernel", c->label);
    CHECK(all_zero((unsigned char *)want.g, sizeof want.g) &&
              memcmp(want.p, x, sizeof want.p) != 0,
          "the CPU reference did not update");
    same("update param", c->label, got.p, want.p, TDM_F32, N, c->tol);
    same("update exp_avg", c->label, got.m, want.m, TDM_F32, N, c->tol);
    same("update exp_avg_sq", c->label, got.v, want.v, TDM_F32, N, c->tol);
    same("update grad", c->label, got.g, want.g, TDM_BF16, N, 0.0);
    same("update copy", c->label, got.copy, want.copy, TDM_BF16, N, c->tol);
  }
  release(c, dp);
  release(c, dm);
  release(c, dv);
  release(c, dg);
  release(c, dc);
}

/* SGD by hand: p - lr g = 1 - 0.5 * 0.5 = 0.75, -2 - 0.5 * 1 = -2.5. */
static void ops_update_sgd(ops_case *c) {
  const float p0[2] = {1.0f, -2.0f}, g0[2] = {0.5f, 1.0f};
  float p[2] = {0, 0};
  const tdmi_update u = {.kind = TDM_OPTIMIZER_SGD, .pre = 1,
                         .lo = -INFINITY, .hi = INFINITY, .post = 1,
                         .lr = 0.5, .keep = 1, .decay = 1};
  float *dp = upload(c, p0, sizeof p0), *dg = upload(c, g0, sizeof g0);
  if (dp && dg) {
    tdmi_update_arrays a = {.param = dp, .dtype = TDM_F32, .grad = dg,
                            .grad_dtype = TDM_F32, .n = 2};
    CHECK(tdmi_ops_update(&c->o, &u, &a, 0) == TDM_SUCCESS, "%s: sgd: %s",
          c->label, tdm_last_error());
    download(c, p, dp, sizeof p);
    CHECK(p[0] == 0.75f && p[1] == -2.5f, "%s: sgd by hand: %g %g",
          c->label, p[0], p[1]);
  }
  release(c, dp);
  release(c, dg);
}

/* Every ops check on one kind of buffers. */
static void ops_checks(const char *label, int on_device, double tol) {
  static float x[N], y[N];
  for (size_t i = 0; i < N; i++) {
    x[i] = unif();
    y[i] = 0.25f * unif();
  }
  x[0] = 1.0f, x[1] = -2.0f, y[0] = 0.5f; /* the values checked by hand */
  ops_case c = {.label = label, .tol = tol};
  tdm_status st = tdmi_ops_init(&c.o, &cpu, on_device);
  CHECK(st == TDM_SUCCESS, "%s: ops init: %s", label, tdm_last_error());
  if (st != TDM_SUCCESS)
    return;
  int real = on_device && !tdmi_device_fake();
  CHECK(c.o.on_device == on_device && c.o.cuda == real &&
            (c.o.work != NULL) == real && (c.o.flag != NULL) == real,
        "%s: on_device %d cuda %d work %p", label, c.o.on_device, c.o.cuda,
        (void *)c.o.work);
  CHECK(tdmi_ops_compute_mem(&c.o) ==
            (on_device ? TDMI_MEM_DEVICE : TDMI_MEM_HOST),
        "%s: compute memory kind", label);
  ops_alloc_zeroed(&c);
  ops_copy_zero(&c, x);
  ops_convert(&c, x, TDM_BF16);
  ops_convert(&c, x, TDM_F16);
  ops_accumulate(&c, y, x);
  ops_sumsq(&c, x);
  ops_update_adamw(&c, x, y);
  ops_update_sgd(&c);
  tdmi_ops_destroy(&c.o);
  CHECK(c.o.stream == NULL && c.o.work == NULL, "%s: destroy", label);
}

/* No GPU and no fake: device memory fails with a clear status. */
static void no_gpu(void) {
  void *dev = NULL;
  tdm_status st = tdmi_mem_alloc(TDMI_MEM_DEVICE, BYTES, &dev);
  CHECK((st == TDM_ERR_DEVICE || st == TDM_ERR_NOT_SUPPORTED) && !dev,
        "device memory without a GPU: %s: %s", tdm_status_string(st),
        tdm_last_error());
  tdmi_ops o;
  st = tdmi_ops_init(&o, &cpu, 1);
  CHECK(st == TDM_ERR_DEVICE || st == TDM_ERR_NOT_SUPPORTED,
        "ops on a device without a GPU: %s", tdm_status_string(st));
  if (st == TDM_SUCCESS)
    tdmi_ops_destroy(&o);
}

int main(void) {
#ifdef U_DEVICE_FAKE
  /* before the first device call: the device layer reads it once */
  setenv("TANDEM_TEST_FAKE_GPU", "1", 1);
#endif
  const char *env = getenv("TANDEM_TEST_FAKE_GPU");
  int asked = env && strcmp(env, "1") == 0;
  CHECK(tdmi_kernels_init(&cpu, TDM_CPU_ISA_AUTO, 1) == TDM_SUCCESS, "%s",
        tdm_last_error());
  host_side();
  ops_checks("ops on the host", 0, 0.0);
  const char *skip = NULL;
  if (tdmi_device_fake()) {
    fake_gpu();
    device_round_trip();
    ops_checks("ops on the fake GPU", 1, 0.0);
  } else if (tdmi_device_count() > 0) {
    device_round_trip();
    ops_checks("ops on the GPU", 1, 1e-6);
    skip = asked ? "fake GPU: skip (a real GPU is visible)" : NULL;
  } else {
    CHECK(!asked, "TANDEM_TEST_FAKE_GPU=1 without a GPU, but no fake GPU");
    no_gpu();
    printf("u_device: GPU part: skip (no GPU visible)\n");
  }
  if (skip)
    printf("u_device: %s\n", skip);
  printf("u_device: %s (%d failed checks)\n", failures ? "FAIL" : "PASS",
         failures);
#ifdef U_DEVICE_FAKE
  if (skip && !failures)
    return 77; /* what this program is for could not run */
#endif
  return failures ? 1 : 0;
}
