/* u_cuda_kernels.c - serial unit test of the CUDA kernels (src/device/
 * kernels_cuda.cu) against the CPU kernels (src/device/kernels.c) on the
 * same inputs.  Skips (exit 77) where no GPU is visible.
 *  - tdmi_cuda_update: every optimizer kind with and without weight decay,
 *    momentum, dampening and nesterov, gradients f32 / bf16 / f16, compute
 *    copies bf16 / f16, f64, gradient transforms, zero_grad, sizes around
 *    the block and tile sizes and past the grid's stride, unaligned
 *    pointers: within 1e-6 relative of the CPU (expected: the same bits);
 *  - tdmi_cuda_sumsq: within 1e-6 relative, inf and nan propagating;
 *  - tdmi_cuda_convert: the CPU's bits for every bf16 / f16 pattern, for
 *    PyTorch's reference values (tests/data/half_torch.txt) and for f32
 *    patterns around every rounding boundary and across the whole range
 *    (all 2^32 with TDM_TEST_FULL=1);
 *  - tdmi_cuda_accumulate, tdmi_cuda_scale: the CPU's bits;
 *  - tdmi_cuda_nonfinite; argument errors. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device/kernels.h"
#include "kernel_test.h"
#include "device/kernels_cuda.h"

/* A CUDA runtime call that must work: the test cannot go on otherwise. */
#define CUDA_OK(call)                                                   \
  do {                                                                  \
    cudaError_t e_ = (call);                                            \
    if (e_ != cudaSuccess) {                                            \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,     \
              cudaGetErrorString(e_));                                  \
      exit(1);                                                          \
    }                                                                   \
  } while (0)

/* A launcher that must succeed, then the device finishing its work. */
#define LAUNCH_OK(call)                                                 \
  do {                                                                  \
    tdm_status st_ = (call);                                            \
    if (st_ != TDM_SUCCESS) {                                           \
      fprintf(stderr, "%s:%d: %s: status %d: %s\n", __FILE__, __LINE__, \
              #call, (int)st_, tdmi_cuda_last_error());                 \
      exit(1);                                                          \
    }                                                                   \
    CUDA_OK(cudaDeviceSynchronize());                                   \
  } while (0)

static tdmi_kernels cpu;

/* ---- values ------------------------------------------------------------- */


static size_t dsize(tdm_dtype d) {
  return d == TDM_F64 ? 8 : d == TDM_F32 ? 4 : 2;
}

static uint16_t to_half(tdm_dtype d, float f) {
  return d == TDM_BF16 ? tdmi_f32_to_bf16(f) : tdmi_f32_to_f16(f);
}

static float from_half(tdm_dtype d, uint16_t h) {
  return d == TDM_BF16 ? tdmi_bf16_to_f32(h) : tdmi_f16_to_f32(h);
}

/* Element i of an array of dtype d as a double. */
static double value_at(const void *x, tdm_dtype d, size_t i) {
  if (d == TDM_F64)
    return ((const double *)x)[i];
  if (d == TDM_F32)
    return ((const float *)x)[i];
  return from_half(d, ((const uint16_t *)x)[i]);
}

/* ---- device memory ------------------------------------------------------ */

static void *dev_alloc(size_t bytes) {
  void *p = NULL;
  CUDA_OK(cudaMalloc(&p, bytes ? bytes : 1));
  return p;
}

static void to_dev(void *dst, const void *src, size_t bytes) {
  CUDA_OK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

static void to_host(void *dst, const void *src, size_t bytes) {
  CUDA_OK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

/* ---- comparisons ------------------------------------------------------- */

/* Totals over the whole test, for the closing lines. */
static long arrays_compared, arrays_inexact;
static double max_rel;

/* Relative difference of got from want; 0 for the same bits or two NaNs
 * (payloads differ: the GPU's arithmetic makes canonical NaNs). */
static double rel_diff(double got, double want, int same_bits) {
  if (same_bits || (isnan(got) && isnan(want)))
    return 0.0;
  if (isnan(got) || isnan(want) || isinf(got) || isinf(want))
    return INFINITY;
  double d = fabs(got - want), w = fabs(want);
  return d == 0.0 ? 0.0 : d / (w > 1e-30 ? w : 1e-30);
}

/* n elements of dtype d: each within tol relative; counts the array as
 * inexact unless all bits agree (NaNs of any payload counted equal). */
static void compare_values(const char *what, const char *tag, const void *got,
                           const void *want, size_t n, tdm_dtype d,
                           double tol) {
  size_t size = dsize(d), bad = 0, first = 0;
  int exact = 1;
  double worst = 0.0;
  for (size_t i = 0; i < n; i++) {
    const char *g = (const char *)got + i * size;
    const char *w = (const char *)want + i * size;
    double gv = value_at(got, d, i), wv = value_at(want, d, i);
    double r = rel_diff(gv, wv, memcmp(g, w, size) == 0);
    if (r > 0.0)
      exact = 0;
    if (r > worst)
      worst = r;
    if (r > tol && bad++ == 0)
      first = i;
  }
  arrays_compared++;
  arrays_inexact += !exact;
  if (worst > max_rel)
    max_rel = worst;
  CHECK(bad == 0, "%s: %s: %zu of %zu elements differ, first [%zu]: gpu "
        "%.9g cpu %.9g", what, tag, bad, n, first, value_at(got, d, first),
        value_at(want, d, first));
}

/* ---- the update ------------------------------------------------------- */

typedef struct {
  const char *name;
  tdmi_update u;
  int states;
} update_case;

/* One set of arrays of n elements plus a guard element, each starting off
 * elements into its allocation; host and device alike. */
enum { PARAM, STATE0, STATE1, GRAD, COPY, NARRAYS };
typedef struct {
  void *base[NARRAYS];
  size_t bytes[NARRAYS], offset[NARRAYS];
} arrays;

static void arrays_sizes(arrays *x, size_t n, int off, tdm_dtype pd,
                         tdm_dtype gd) {
  size_t sizes[NARRAYS] = {dsize(pd), dsize(pd), dsize(pd), dsize(gd), 2};
  for (int k = 0; k < NARRAYS; k++) {
    x->bytes[k] = (n + 2) * sizes[k];
    x->offset[k] = (size_t)off * sizes[k];
  }
}

static void arrays_alloc(arrays *x, int device) {
  for (int k = 0; k < NARRAYS; k++)
    x->base[k] = device ? dev_alloc(x->bytes[k]) : malloc(x->bytes[k]);
}

static void arrays_free(arrays *x, int device) {
  for (int k = 0; k < NARRAYS; k++)
    if (device)
      CUDA_OK(cudaFree(x->base[k]));
    else
      free(x->base[k]);
}

static void *at(const arrays *x, int k) {
  return (char *)x->base[k] + x->offset[k];
}

/* Random values: params in [-1, 1), gradients of about gscale, a few
 * exact and signed zeros, tiny values (f16 subnormals), and with specials
 * some infinities and NaNs; moments, and second moments >= 0. */
static void arrays_fill(arrays *x, size_t n, tdm_dtype pd, tdm_dtype gd,
                        float gscale, int specials) {
  for (size_t i = 0; i < n + 2; i++) {
    double v[3] = {unif(), 0.1 * unif(), 0.01 * fabsf(unif())};
    for (int k = 0; k < 3; k++)
      if (pd == TDM_F64)
        ((double *)x->base[k])[i] = v[k] + (k ? 0 : unif() * 0x1p-30);
      else
        ((float *)x->base[k])[i] = (float)v[k];
    ((uint16_t *)x->base[COPY])[i] = 0x1234;
    float g = unif() * gscale;
    uint32_t r = rnd() % 64;
    g = r == 0 ? 0.0f : r == 1 ? -0.0f : r == 4 ? g * 1e-6f : g;
    if (specials && r == 2)
      g = (rnd() & 1) ? INFINITY : -INFINITY;
    if (specials && r == 3)
      g = NAN;
    if (gd == TDM_F64)
      ((double *)x->base[GRAD])[i] = g + (double)unif() * 0x1p-35;
    else if (gd == TDM_F32)
      ((float *)x->base[GRAD])[i] = g;
    else
      ((uint16_t *)x->base[GRAD])[i] = to_half(gd, g);
  }
}

static tdmi_update_arrays view(const arrays *x, size_t n, tdm_dtype pd,
                               tdm_dtype gd, tdm_dtype cd, int states,
                               int zero_grad) {
  tdmi_update_arrays a = {at(x, PARAM), pd, at(x, GRAD), gd,
                          cd != TDM_F32 ? at(x, COPY) : NULL,
                          cd != TDM_F32 ? cd : TDM_BF16,
                          states > 0 ? at(x, STATE0) : NULL,
                          states > 1 ? at(x, STATE1) : NULL, n, zero_grad};
  return a;
}

typedef struct {
  size_t n;
  int off, states, zero_grad;
  tdm_dtype pd, gd, cd;
} update_shape;

/* Two steps (the first: momentum buffer = gradient, Adam t = 1; then one
 * from that state with the same gradients) on the CPU and on the GPU. */
static void run_steps(const tdmi_update *u, const update_shape *s,
                      arrays *host, const arrays *init, arrays *dev) {
  for (int k = 0; k < NARRAYS; k++) {
    memcpy(host->base[k], init->base[k], init->bytes[k]);
    to_dev(dev->base[k], init->base[k], init->bytes[k]);
  }
  for (int step = 1; step <= 2; step++) {
    tdmi_update us = *u;
    us.first = step == 1;
    us.step_size = u->lr / (1 - pow(u->beta1, step));
    us.bias2_sqrt = sqrt(1 - pow(u->beta2, step));
    if (step == 2 && s->zero_grad) { /* refill the zeroed gradients */
      memcpy(host->base[GRAD], init->base[GRAD], init->bytes[GRAD]);
      to_dev(dev->base[GRAD], init->base[GRAD], init->bytes[GRAD]);
    }
    tdmi_update_arrays a = view(host, s->n, s->pd, s->gd, s->cd, s->states,
                                s->zero_grad);
    tdmi_update_arrays d = view(dev, s->n, s->pd, s->gd, s->cd, s->states,
                                s->zero_grad);
    tdmi_kernel_update(&cpu, &us, &a);
    LAUNCH_OK(tdmi_cuda_update(&us, &d, NULL));
  }
}

/* The GPU's arrays against the CPU's, guard elements included; the copy
 * must also be exactly the GPU's own params converted. */
static void compare_update(const char *tag, const update_shape *s,
                           const arrays *gpu, const arrays *cpu_out) {
  static const char *names[NARRAYS] = {"param", "state0", "state1", "grad",
                                       "copy"};
  tdm_dtype d[NARRAYS] = {s->pd, s->pd, s->pd, s->gd, s->cd};
  for (int k = 0; k < NARRAYS; k++) {
    if ((k == COPY && s->cd == TDM_F32) || (k == STATE0 && s->states < 1) ||
        (k == STATE1 && s->states < 2))
      continue;
    /* The copy rounds the params: a param 1e-6 off may round to the
     * neighbouring 16-bit value, but must be the GPU's param converted. */
    double tol = k == GRAD ? 0.0 : k == COPY ? 1e-2 : 1e-6;
    char what[64];
    snprintf(what, sizeof what, "update %s", names[k]);
    compare_values(what, tag, gpu->base[k], cpu_out->base[k], s->n + 2, d[k],
                   tol);
  }
  if (s->cd == TDM_F32)
    return;
  const uint16_t *copy = at(gpu, COPY);
  const float *param = at(gpu, PARAM);
  for (size_t i = 0; i < s->n; i++)
    if (copy[i] != to_half(s->cd, param[i])) {
      CHECK(0, "update copy: %s: [%zu] %04x is not the gpu's param %08x "
            "converted", tag, i, copy[i], bits_of(param[i]));
      break;
    }
}

static void update_one(const update_case *c, const update_shape *s, int tr) {
  tdmi_update u = c->u;
  u.pre = 1.0;
  u.lo = -INFINITY;
  u.hi = INFINITY;
  u.post = 1.0;
  float gscale = 1.0f;
  if (tr == 1) { /* fp16 unscaling by 2^-10, clamp, clip factor */
    u.pre = 0x1p-10;
    u.lo = -0.5;
    u.hi = 0.75;
    u.post = 0.8125;
    gscale = 1024.0f;
  }
  arrays init, host, gpu, dev;
  arrays_sizes(&init, s->n, s->off, s->pd, s->gd);
  arrays_sizes(&host, s->n, s->off, s->pd, s->gd);
  arrays_sizes(&gpu, s->n, s->off, s->pd, s->gd);
  arrays_sizes(&dev, s->n, s->off, s->pd, s->gd);
  arrays_alloc(&init, 0);
  arrays_alloc(&host, 0);
  arrays_alloc(&gpu, 0);
  arrays_alloc(&dev, 1);
  arrays_fill(&init, s->n, s->pd, s->gd, gscale, tr == 2);
  run_steps(&u, s, &host, &init, &dev);
  for (int k = 0; k < NARRAYS; k++)
    to_host(gpu.base[k], dev.base[k], dev.bytes[k]);
  char tag[160];
  snprintf(tag, sizeof tag, "%s param %s grad %s copy %s %s%s n %zu off %d",
           c->name, dtype_name(s->pd), dtype_name(s->gd),
           s->cd != TDM_F32 ? dtype_name(s->cd) : "-",
           tr == 0 ? "identity" : tr == 1 ? "unscale+clip" : "inf/nan",
           s->zero_grad ? " zero_grad" : "", s->n, s->off);
  compare_update(tag, s, &gpu, &host);
  arrays_free(&init, 0);
  arrays_free(&host, 0);
  arrays_free(&gpu, 0);
  arrays_free(&dev, 1);
}

static const update_case cases[] = {
    {"sgd", {.kind = TDM_OPTIMIZER_SGD, .lr = 0.1}, 0},
    {"sgd wd", {.kind = TDM_OPTIMIZER_SGD, .lr = 0.1, .weight_decay = 0.01},
     0},
    {"sgd momentum",
     {.kind = TDM_OPTIMIZER_SGD, .lr = 0.05, .momentum = 0.9, .keep = 1.0},
     1},
    {"sgd momentum dampening wd",
     {.kind = TDM_OPTIMIZER_SGD, .lr = 0.05, .momentum = 0.8,
      .keep = 1 - 0.25, .weight_decay = 1e-3},
     1},
    {"sgd nesterov",
     {.kind = TDM_OPTIMIZER_SGD, .lr = 0.03, .momentum = 0.9, .keep = 1.0,
      .nesterov = 1},
     1},
    {"sgd nesterov wd",
     {.kind = TDM_OPTIMIZER_SGD, .lr = 0.03, .momentum = 0.9, .keep = 1.0,
      .nesterov = 1, .weight_decay = 1e-4},
     1},
    {"adam",
     {.kind = TDM_OPTIMIZER_ADAM, .lr = 0.01, .beta1 = 0.9, .c1 = 1 - 0.9,
      .beta2 = 0.999, .c2 = 1 - 0.999, .eps = 1e-8, .decay = 1.0},
     2},
    {"adam wd",
     {.kind = TDM_OPTIMIZER_ADAM, .lr = 0.01, .weight_decay = 0.01,
      .beta1 = 0.9, .c1 = 1 - 0.9, .beta2 = 0.999, .c2 = 1 - 0.999,
      .eps = 1e-8, .decay = 1.0},
     2},
    {"adamw",
     {.kind = TDM_OPTIMIZER_ADAMW, .lr = 0.001, .beta1 = 0.9, .c1 = 1 - 0.9,
      .beta2 = 0.999, .c2 = 1 - 0.999, .eps = 1e-8, .decay = 1.0},
     2},
    {"adamw wd beta1 0.3", /* lerp's second form */
     {.kind = TDM_OPTIMIZER_ADAMW, .lr = 0.01, .weight_decay = 0.1,
      .beta1 = 0.3, .c1 = 1 - 0.3, .beta2 = 0.95, .c2 = 1 - 0.95,
      .eps = 1e-6, .decay = 1 - 0.01 * 0.1},
     2},
    {"lion",
     {.kind = TDM_OPTIMIZER_LION, .lr = 1e-3, .beta1 = 0.9, .c1 = 1 - 0.9,
      .beta2 = 0.99, .c2 = 1 - 0.99, .decay = 1.0},
     1},
    {"lion wd",
     {.kind = TDM_OPTIMIZER_LION, .lr = 1e-3, .weight_decay = 0.5,
      .beta1 = 0.9, .c1 = 1 - 0.9, .beta2 = 0.99, .c2 = 1 - 0.99,
      .decay = 1 - 1e-3 * 0.5},
     1},
};

static void test_update(void) {
  /* Around a block (256) and a tile (1024 elements), and odd. */
  static const size_t sizes[] = {0,    1,    7,    255,  256,  257, 1023,
                                 1024, 1025, 4099, 70001, 1048579};
  /* {param, grad, copy}; copy TDM_F32 means none */
  static const tdm_dtype combos[][3] = {
      {TDM_F32, TDM_F32, TDM_F32},   {TDM_F32, TDM_F32, TDM_BF16},
      {TDM_F32, TDM_F32, TDM_F16},   {TDM_F32, TDM_BF16, TDM_F32},
      {TDM_F32, TDM_BF16, TDM_BF16}, {TDM_F32, TDM_BF16, TDM_F16},
      {TDM_F32, TDM_F16, TDM_F32},   {TDM_F32, TDM_F16, TDM_BF16},
      {TDM_F32, TDM_F16, TDM_F16},   {TDM_F64, TDM_F64, TDM_F32}};
  const int ncases = (int)(sizeof cases / sizeof cases[0]);
  const int ncombos = (int)(sizeof combos / sizeof combos[0]);
  const int nsizes = (int)(sizeof sizes / sizeof sizes[0]);
  long runs = 0, before = arrays_inexact;
  for (int c = 0; c < ncases; c++)
    for (int ci = 0; ci < ncombos; ci++)
      for (int tr = 0; tr < 3; tr++) /* identity, unscale+clip, specials */
        for (int si = 0; si < nsizes; si++) {
          if (si == nsizes - 1 && tr != 0) /* the large size: once */
            continue;
          update_shape s = {sizes[si], (si + c + ci) & 1, cases[c].states,
                            (si + ci + tr) & 1, combos[ci][0], combos[ci][1],
                            combos[ci][2]};
          update_one(&cases[c], &s, tr);
          runs++;
        }
  /* Past one grid's stride (16384 blocks of 1024 elements). */
  update_shape big = {16384u * 1024u + 5, 1, 2, 1, TDM_F32, TDM_BF16,
                      TDM_BF16};
  update_one(&cases[9], &big, 1);
  runs++;
  printf("update: %ld runs of 2 steps; %s\n", runs,
         arrays_inexact == before ? "every array bit-identical to the CPU"
                                  : "some arrays not bit-identical");
}

/* ---- sum of squares --------------------------------------------------- */

static int same_or_close(double got, double want) {
  if (isnan(want))
    return isnan(got);
  if (isinf(want))
    return got == want;
  return fabs(got - want) <= 1e-6 * fabs(want);
}

static void sumsq_one(tdm_dtype gd, size_t n, int tr, int special,
                      double *work, double *out, long *exact) {
  size_t size = dsize(gd);
  int off = (int)(n & 1);
  char *host = malloc((n + 1) * size);
  void *g = host + off * size;
  for (size_t i = 0; i < n; i++) {
    double x = unif();
    if (special & 1 && i == n / 3)
      x = -INFINITY;
    if (special & 2 && i == n - 1)
      x = NAN;
    if (gd == TDM_F64)
      ((double *)g)[i] = x + unif() * 0x1p-35;
    else if (gd == TDM_F32)
      ((float *)g)[i] = (float)x;
    else
      ((uint16_t *)g)[i] = to_half(gd, (float)x);
  }
  double pre = tr ? 0.5 : 1.0, lo = tr ? -0.25 : -INFINITY;
  double hi = tr ? 0.375 : INFINITY;
  double want = tdmi_kernel_sumsq(&cpu, g, gd, n, pre, lo, hi), got;
  char *dev = dev_alloc((n + 1) * size);
  to_dev(dev, host, (n + 1) * size);
  LAUNCH_OK(tdmi_cuda_sumsq(dev + off * size, gd, n, pre, lo, hi, work, out,
                            0, NULL));
  to_host(&got, out, sizeof got);
  CHECK(same_or_close(got, want), "sumsq %s n %zu clamp %d special %d: gpu "
        "%.17g cpu %.17g", dtype_name(gd), n, tr, special, got, want);
  *exact += memcmp(&got, &want, sizeof got) == 0 ||
            (isnan(got) && isnan(want));
  /* add: a second sum on top of the first */
  LAUNCH_OK(tdmi_cuda_sumsq(dev + off * size, gd, n, pre, lo, hi, work, out,
                            1, NULL));
  to_host(&got, out, sizeof got);
  CHECK(same_or_close(got, want + want), "sumsq %s n %zu add: gpu %.17g, "
        "want %.17g", dtype_name(gd), n, got, want + want);
  CUDA_OK(cudaFree(dev));
  free(host);
}

static void test_sumsq(void) {
  static const size_t sizes[] = {0,    1,    7,    17,    255,     256,
                                 257,  1000, 4099, 8192,  8193,    70001,
                                 1048576, 1048579, 3000017};
  const tdm_dtype gdts[4] = {TDM_F32, TDM_BF16, TDM_F16, TDM_F64};
  double *work = dev_alloc(TDMI_CUDA_SUMSQ_WORK * sizeof(double));
  double *out = dev_alloc(sizeof(double));
  long runs = 0, exact = 0;
  for (int gi = 0; gi < 4; gi++)
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
      for (int tr = 0; tr < 2; tr++)
        for (int special = 0; special < 4; special++) { /* -, inf, nan, both */
          if (special && sizes[s] < 2)
            continue;
          sumsq_one(gdts[gi], sizes[s], tr, special, work, out, &exact);
          runs++;
        }
  CUDA_OK(cudaFree(work));
  CUDA_OK(cudaFree(out));
  printf("sumsq: %ld sums within 1e-6 of the CPU, %ld of them bit-identical "
         "(the orders of addition differ)\n", runs, exact);
}

/* ---- conversions ------------------------------------------------------- */


/* GPU buffers reused by the conversion tests. */
static void *conv_in, *conv_out;
#define CONV_CHUNK ((size_t)1 << 24)

/* f32 -> half of n f32 values (n <= CONV_CHUNK) on both sides, starting
 * off elements into the device buffers; the number of elements whose bits
 * differ. */
static size_t down_differs(tdm_dtype to, const float *in, uint16_t *cpu_out,
                           uint16_t *gpu_out, size_t n, int off) {
  to_dev((float *)conv_in + off, in, n * 4);
  LAUNCH_OK(tdmi_cuda_convert(TDM_F32, (float *)conv_in + off, to,
                              (uint16_t *)conv_out + off, n, NULL));
  to_host(gpu_out, (uint16_t *)conv_out + off, n * 2);
  tdmi_kernel_convert(&cpu, TDM_F32, in, to, cpu_out, n);
  size_t bad = 0;
  for (size_t i = 0; i < n; i++)
    if (gpu_out[i] != cpu_out[i] && bad++ < 3)
      CHECK(0, "convert f32->%s: %08x gives %04x, cpu %04x", dtype_name(to),
            bits_of(in[i]), gpu_out[i], cpu_out[i]);
  return bad;
}

/* f32 patterns first + k * stride (k < count) through both converters,
 * in chunks. */
static size_t sweep(tdm_dtype to, uint64_t first, uint64_t stride,
                    uint64_t count, float *in, uint16_t *a, uint16_t *b) {
  size_t bad = 0;
  for (uint64_t k = 0; k < count; k += CONV_CHUNK) {
    size_t m = count - k < CONV_CHUNK ? (size_t)(count - k) : CONV_CHUNK;
    for (size_t i = 0; i < m; i++)
      in[i] = from_bits((uint32_t)(first + (k + i) * stride));
    bad += down_differs(to, in, a, b, m, (int)(k & 1));
  }
  return bad;
}

/* Every upper half with low halves around the bf16 (bit 16) and f16
 * (bit 13, and higher bits for subnormal results) rounding points. */
static size_t boundaries(tdm_dtype to, float *in, uint16_t *a, uint16_t *b) {
  static const uint16_t lows[] = {0x0000, 0x0001, 0x0fff, 0x1000, 0x1001,
                                  0x1fff, 0x2000, 0x2fff, 0x3000, 0x3001,
                                  0x3fff, 0x4000, 0x7fff, 0x8000, 0x8001,
                                  0xbfff, 0xc000, 0xffff};
  const size_t nl = sizeof lows / sizeof lows[0];
  size_t n = 0;
  for (uint32_t hi = 0; hi < 65536; hi++)
    for (size_t l = 0; l < nl; l++)
      in[n++] = from_bits(hi << 16 | lows[l]);
  return down_differs(to, in, a, b, n, 1);
}

static void test_convert_down(int full) {
  float *in = malloc(CONV_CHUNK * sizeof *in);
  uint16_t *a = malloc(CONV_CHUNK * 2), *b = malloc(CONV_CHUNK * 2);
  for (int t = 0; t < 2; t++) {
    tdm_dtype to = t ? TDM_F16 : TDM_BF16;
    const uint16_t *torch = t ? ref_f16 : ref_bf16;
    size_t bad = 0;
    for (size_t i = 0; i < nref; i++)
      in[i] = from_bits(ref_f32[i]);
    bad += down_differs(to, in, a, b, nref, 0);
    for (size_t i = 0; i < nref; i++)
      CHECK(b[i] == torch[i], "convert f32->%s: %08x gives %04x, torch %04x",
            dtype_name(to), ref_f32[i], b[i], torch[i]);
    static const size_t small[] = {1, 7, 255, 257, 1025};
    for (size_t s = 0; s < sizeof small / sizeof small[0]; s++)
      bad += down_differs(to, in, a, b, small[s], (int)s & 1);
    bad += boundaries(to, in, a, b);
    /* all patterns, or a stride prime to 2^32 through all exponents */
    bad += full ? sweep(to, 0, 1, (uint64_t)1 << 32, in, a, b)
                : sweep(to, 12345, 251, ((uint64_t)1 << 32) / 251, in, a, b);
    printf("convert f32->%s: %s%s\n", dtype_name(to),
           bad ? "bits differ from the CPU" : "bit-identical to the CPU",
           full ? " (all 2^32 patterns)" : "");
  }
  free(in);
  free(a);
  free(b);
}

/* Every 16-bit pattern, from an odd offset too. */
static void test_convert_up(void) {
  uint16_t *in = malloc(65536 * 2);
  float *a = malloc(65536 * 4), *b = malloc(65536 * 4);
  for (uint32_t h = 0; h < 65536; h++)
    in[h] = (uint16_t)h;
  for (int t = 0; t < 2; t++) {
    tdm_dtype from = t ? TDM_F16 : TDM_BF16;
    size_t bad = 0;
    for (int off = 0; off < 2; off++) {
      size_t n = 65536 - (size_t)off;
      to_dev((uint16_t *)conv_in + off, in, n * 2);
      LAUNCH_OK(tdmi_cuda_convert(from, (uint16_t *)conv_in + off, TDM_F32,
                                  (float *)conv_out + off, n, NULL));
      to_host(b, (float *)conv_out + off, n * 4);
      tdmi_kernel_convert(&cpu, from, in, TDM_F32, a, n);
      for (size_t i = 0; i < n; i++)
        if (bits_of(a[i]) != bits_of(b[i]) && bad++ < 3)
          CHECK(0, "convert %s->f32: %04x gives %08x, cpu %08x",
                dtype_name(from), in[i], bits_of(b[i]), bits_of(a[i]));
    }
    CHECK(bad == 0, "convert %s->f32: %zu patterns differ", dtype_name(from),
          bad);
    printf("convert %s->f32: all 65536 patterns %s\n", dtype_name(from),
           bad ? "checked, some differ" : "bit-identical to the CPU");
  }
  free(in);
  free(a);
  free(b);
}

/* ---- accumulate, scale, nonfinite --------------------------------------- */

/* n random values of dtype d, some large enough to overflow f16 sums. */
static void fill_random(void *x, tdm_dtype d, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float f = unif() * ((rnd() % 16) == 0 ? 40000.0f : 3.0f);
    if (d == TDM_F64)
      ((double *)x)[i] = f + unif() * 0x1p-40;
    else if (d == TDM_F32)
      ((float *)x)[i] = f;
    else
      ((uint16_t *)x)[i] = to_half(d, f);
  }
}

static void test_accumulate_scale(void) {
  static const size_t sizes[] = {1, 7, 257, 4099, 70001};
  static const tdm_dtype dts[4] = {TDM_F32, TDM_F64, TDM_BF16, TDM_F16};
  const double s = 0.123456789;
  for (int di = 0; di < 4; di++)
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
      tdm_dtype d = dts[di];
      size_t n = sizes[si], bytes = n * dsize(d);
      char *src = malloc(bytes), *dst = malloc(bytes), *got = malloc(bytes);
      char *want = malloc(bytes);
      fill_random(src, d, n);
      fill_random(dst, d, n);
      void *dsrc = dev_alloc(bytes), *ddst = dev_alloc(bytes);
      to_dev(dsrc, src, bytes);
      to_dev(ddst, dst, bytes);
      memcpy(want, dst, bytes);
      tdmi_kernel_accumulate(&cpu, d, src, want, n);
      LAUNCH_OK(tdmi_cuda_accumulate(d, dsrc, ddst, n, NULL));
      to_host(got, ddst, bytes);
      CHECK(memcmp(got, want, bytes) == 0, "accumulate %s n %zu: bits "
            "differ from the CPU", dtype_name(d), n);
      /* scale: x * (float)s, or in double for f64 */
      for (size_t i = 0; i < n; i++)
        if (d == TDM_F64)
          ((double *)want)[i] = ((double *)src)[i] * s;
        else if (d == TDM_F32)
          ((float *)want)[i] = ((float *)src)[i] * (float)s;
        else
          ((uint16_t *)want)[i] =
              to_half(d, from_half(d, ((uint16_t *)src)[i]) * (float)s);
      LAUNCH_OK(tdmi_cuda_scale(dsrc, d, n, s, NULL));
      to_host(got, dsrc, bytes);
      CHECK(memcmp(got, want, bytes) == 0, "scale %s n %zu: bits differ",
            dtype_name(d), n);
      CUDA_OK(cudaFree(dsrc));
      CUDA_OK(cudaFree(ddst));
      free(src);
      free(dst);
      free(got);
      free(want);
    }
  printf("accumulate, scale: checked against the CPU's bits\n");
}

/* Writes an inf or a NaN (kind 0 or 1) of dtype d at element i. */
static void put_special(void *x, tdm_dtype d, size_t i, int kind) {
  if (d == TDM_F64)
    ((double *)x)[i] = kind ? NAN : -INFINITY;
  else if (d == TDM_F32)
    ((float *)x)[i] = kind ? NAN : -INFINITY;
  else
    ((uint16_t *)x)[i] = d == TDM_F16 ? (kind ? 0x7e01 : 0xfc00)
                                      : (kind ? 0xffc1 : 0xff80);
}

static int nonfinite_flag(const void *dx, tdm_dtype d, size_t n, int start,
                          int *dflag) {
  int flag = start;
  to_dev(dflag, &flag, sizeof flag);
  LAUNCH_OK(tdmi_cuda_nonfinite(dx, d, n, dflag, NULL));
  to_host(&flag, dflag, sizeof flag);
  return flag;
}

static void test_nonfinite(void) {
  static const size_t sizes[] = {1, 1000, 70001, 3000017};
  static const tdm_dtype dts[4] = {TDM_F32, TDM_F64, TDM_BF16, TDM_F16};
  int *dflag = dev_alloc(sizeof(int));
  for (int di = 0; di < 4; di++)
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
      tdm_dtype d = dts[di];
      size_t n = sizes[si], bytes = n * dsize(d);
      char *x = malloc(bytes);
      fill_random(x, d, n); /* finite: |x| <= 40000 */
      void *dx = dev_alloc(bytes);
      to_dev(dx, x, bytes);
      CHECK(nonfinite_flag(dx, d, n, 0, dflag) == 0, "nonfinite %s n %zu: "
            "finite values flagged", dtype_name(d), n);
      CHECK(nonfinite_flag(dx, d, n, 1, dflag) == 1, "nonfinite %s n %zu: "
            "cleared a set flag", dtype_name(d), n);
      for (int kind = 0; kind < 2; kind++) {
        size_t i = kind ? n - 1 : n / 3;
        put_special(x, d, i, kind);
        to_dev(dx, x, bytes);
        CHECK(nonfinite_flag(dx, d, n, 0, dflag) == 1, "nonfinite %s n %zu: "
              "%s at %zu missed", dtype_name(d), n, kind ? "nan" : "inf", i);
      }
      CUDA_OK(cudaFree(dx));
      free(x);
    }
  CUDA_OK(cudaFree(dflag));
  printf("nonfinite: checked\n");
}

/* ---- arguments ------------------------------------------------------- */

static void test_errors(void) {
  tdmi_update u = {.kind = TDM_OPTIMIZER_ADAM};
  float x;
  tdmi_update_arrays a = {&x, TDM_F64, &x, TDM_F32, NULL, TDM_BF16,
                          NULL, NULL, 1, 0};
  CHECK(tdmi_cuda_update(&u, &a, NULL) == TDM_ERR_NOT_SUPPORTED &&
            strstr(tdmi_cuda_last_error(), "f64"),
        "update f64 param, f32 grad: %s", tdmi_cuda_last_error());
  a.dtype = TDM_F32;
  CHECK(tdmi_cuda_update(&u, &a, NULL) == TDM_ERR_INVALID_ARGUMENT,
        "update adam without state: %s", tdmi_cuda_last_error());
  CHECK(tdmi_cuda_convert(TDM_BF16, &x, TDM_F16, &x, 1, NULL) ==
            TDM_ERR_NOT_SUPPORTED,
        "convert bf16->f16 accepted");
  CHECK(tdmi_cuda_accumulate(TDM_I32, &x, &x, 1, NULL) ==
            TDM_ERR_NOT_SUPPORTED,
        "accumulate i32 accepted");
  CHECK(tdmi_cuda_scale(NULL, TDM_F32, 0, 2.0, NULL) == TDM_SUCCESS,
        "scale of nothing: %s", tdmi_cuda_last_error());
  CHECK(tdmi_cuda_sumsq(NULL, TDM_F32, 1, 1, 0, 0, NULL, NULL, 0, NULL) ==
            TDM_ERR_INVALID_ARGUMENT,
        "sumsq without workspace accepted");
}

int main(void) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    printf("u_cuda_kernels: SKIP: no GPU visible\n");
    return 77;
  }
  struct cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  printf("device 0: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  tdmi_kernels_init(&cpu, TDM_CPU_ISA_AUTO, 1);
  const char *src = getenv("TDM_SRCDIR"), *full = getenv("TDM_TEST_FULL");
  char path[4096];
  snprintf(path, sizeof path, "%s/tests/data/half_torch.txt", src ? src : ".");
  read_reference(path);
  conv_in = dev_alloc(CONV_CHUNK * 4 + 8);
  conv_out = dev_alloc(CONV_CHUNK * 4 + 8);
  if (nref)
    test_convert_down(full && *full == '1');
  test_convert_up();
  CUDA_OK(cudaFree(conv_in));
  CUDA_OK(cudaFree(conv_out));
  test_errors();
  test_accumulate_scale();
  test_nonfinite();
  test_sumsq();
  test_update();
  printf("arrays compared: %ld, not bit-identical: %ld (largest relative "
         "difference %.3g)\n", arrays_compared, arrays_inexact, max_rel);
  printf("u_cuda_kernels: %s (%d failed checks; cpu isa %s)\n",
         failures ? "FAIL" : "PASS", failures, tdmi_cpu_isa_name(cpu.isa));
  free(ref_f32);
  free(ref_bf16);
  free(ref_f16);
  return failures ? 1 : 0;
}
