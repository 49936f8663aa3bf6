/* u_kernels.c - serial unit tests of the CPU kernels (src/device), for
 * every instruction set this CPU supports, on 1 and 2 threads:
 *  - tdmi_kernel_convert f32 -> bf16 / f16 against PyTorch's bits
 *    (tests/data/half_torch.txt, made by tests/gen_precision_ref.py), NaNs
 *    included, and bf16 / f16 -> f32 of all 65536 patterns against the
 *    scalar converters of core; aligned and unaligned, short and long
 *    enough to be split over threads;
 *  - tdmi_kernel_update: the variants give identical bits (params, state,
 *    compute copy, gradients) for every optimizer kind, gradient dtype,
 *    copy dtype, zero_grad, gradient transform, over sizes that end in
 *    vector tails and unaligned pointers; the generic variant equals the
 *    scalar reference below, written from torch.optim's formulas;
 *  - tdmi_kernel_sumsq against a double-precision sum, with inf and nan
 *    propagating, and identical bits across variants and threads. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device/kernels.h"
#include "kernel_test.h"


static const tdm_cpu_isa all_isas[3] = {TDM_CPU_ISA_GENERIC, TDM_CPU_ISA_AVX2,
                                        TDM_CPU_ISA_AVX512};
static tdm_cpu_isa isas[3];
static int nisas;

/* ---- conversions ------------------------------------------------------- */


/* The scalar converters of core agree with torch's vectorized bits. */
static void test_scalar_vs_torch(void) {
  for (size_t i = 0; i < nref; i++) {
    float f = from_bits(ref_f32[i]);
    uint16_t b = tdmi_f32_to_bf16(f), h = tdmi_f32_to_f16(f);
    CHECK(b == ref_bf16[i], "tdmi_f32_to_bf16(%08x) = %04x, torch %04x",
          ref_f32[i], b, ref_bf16[i]);
    CHECK(h == ref_f16[i], "tdmi_f32_to_f16(%08x) = %04x, torch %04x",
          ref_f32[i], h, ref_f16[i]);
  }
}

/* f32 -> half of n values taken cyclically from the reference (starting
 * at element start), written at out + off. */
static void convert_down(const tdmi_kernels *k, tdm_dtype to, size_t n,
                         size_t start, int off) {
  float *in = malloc((n + 1) * sizeof *in);
  uint16_t *out = malloc((n + 2) * sizeof *out);
  for (size_t i = 0; i < n; i++)
    in[off + i] = from_bits(ref_f32[(start + i) % nref]);
  for (size_t i = 0; i < n + 2; i++)
    out[i] = 0x5a5a;
  tdmi_kernel_convert(k, TDM_F32, in + off, to, out + off, n);
  const uint16_t *want = to == TDM_BF16 ? ref_bf16 : ref_f16;
  for (size_t i = 0; i < n; i++) {
    size_t r = (start + i) % nref;
    CHECK(out[off + i] == want[r],
          "convert f32->%s isa %s threads %d n %zu off %d: element %zu "
          "(f32 %08x) got %04x, torch %04x",
          dtype_name(to), tdmi_cpu_isa_name(k->isa), k->threads, n, off, i,
          ref_f32[r], out[off + i], want[r]);
  }
  CHECK(out[off + n] == 0x5a5a && (off == 0 || out[0] == 0x5a5a),
        "convert f32->%s isa %s n %zu: wrote outside the array",
        dtype_name(to), tdmi_cpu_isa_name(k->isa), n);
  free(in);
  free(out);
}

static float (*const half_to_f32[2])(uint16_t) = {tdmi_bf16_to_f32,
                                                   tdmi_f16_to_f32};

/* half -> f32 of every 16-bit pattern, cyclically over n elements:
 * against the scalar converter (NaN: NaN-ness and sign) and, bit for bit,
 * against *generic (the generic variant's result, when given). */
static void convert_up(const tdmi_kernels *k, tdm_dtype from, size_t n,
                       int off, uint32_t *generic) {
  uint16_t *in = malloc((n + 1) * sizeof *in);
  float *out = malloc((n + 2) * sizeof *out);
  for (size_t i = 0; i < n; i++)
    in[off + i] = (uint16_t)((i * 40503u + 7u) & 0xffffu); /* odd: bijective */
  for (size_t i = 0; i < n + 2; i++)
    out[i] = -7.0f;
  tdmi_kernel_convert(k, from, in + off, TDM_F32, out + off, n);
  size_t bad = 0, first_bad = 0;
  for (size_t i = 0; i < n; i++) {
    uint16_t h = in[off + i];
    float want = half_to_f32[from == TDM_F16](h), got = out[off + i];
    uint32_t gb = bits_of(got), wb = bits_of(want);
    int ok = isnan(want) ? isnan(got) && (gb >> 31) == (wb >> 31) : gb == wb;
    CHECK(ok, "convert %s->f32 isa %s threads %d n %zu: %04x got %08x, "
          "scalar %08x", dtype_name(from), tdmi_cpu_isa_name(k->isa),
          k->threads, n, h, gb, wb);
    if (generic && generic[i] != gb && bad++ == 0)
      first_bad = i;
  }
  /* The variants give the same bits, NaN payloads included. */
  CHECK(bad == 0, "convert %s->f32 isa %s threads %d n %zu off %d: %zu "
        "elements differ from generic, first %04x: %08x, generic %08x",
        dtype_name(from), tdmi_cpu_isa_name(k->isa), k->threads, n, off, bad,
        bad ? in[off + first_bad] : 0, bad ? bits_of(out[off + first_bad]) : 0,
        bad ? generic[first_bad] : 0);
  CHECK(bits_of(out[off + n]) == bits_of(-7.0f), "convert %s->f32 isa %s: "
        "wrote past the end", dtype_name(from), tdmi_cpu_isa_name(k->isa));
  free(in);
  free(out);
}

static void test_convert(void) {
  static const size_t sizes[] = {0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 1000, 4099};
  /* Long enough for two threads (kernels.c splits from 2 x 32768). */
  const size_t big = 100003;
  uint32_t *generic[2] = {NULL, NULL}; /* bf16, f16 -> f32 of generic */
  for (int v = 0; v < nisas; v++) {
    for (int threads = 1; threads <= 2; threads++) {
      tdmi_kernels k;
      if (tdmi_kernels_init(&k, isas[v], threads) != TDM_SUCCESS)
        continue;
      for (int t = 0; t < 2; t++) {
        tdm_dtype to = t ? TDM_F16 : TDM_BF16;
        convert_down(&k, to, nref, 0, 0);
        convert_down(&k, to, nref, 0, 1);
        convert_down(&k, to, big, 5, 1);
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
          for (int off = 0; off < 2; off++)
            convert_down(&k, to, sizes[s], 3 * s, off);
        /* up: the generic variant's bits are the reference of the others */
        if (generic[t] == NULL) {
          tdmi_kernels g;
          tdmi_kernels_init(&g, TDM_CPU_ISA_GENERIC, 1);
          uint16_t *in = malloc(big * sizeof *in);
          generic[t] = malloc(big * sizeof *generic[t]);
          for (size_t i = 0; i < big; i++)
            in[i] = (uint16_t)((i * 40503u + 7u) & 0xffffu);
          tdmi_kernel_convert(&g, to, in, TDM_F32, generic[t], big);
          free(in);
        }
        convert_up(&k, to, big, 0, generic[t]);
        convert_up(&k, to, big, 1, generic[t]);
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
          convert_up(&k, to, sizes[s], (int)(s & 1), generic[t]);
      }
    }
  }
  free(generic[0]);
  free(generic[1]);
}

/* ---- the update: scalar reference ------------------------------------ */

static float load_grad(tdm_dtype d, const void *g, size_t i) {
  if (d == TDM_BF16)
    return tdmi_bf16_to_f32(((const uint16_t *)g)[i]);
  if (d == TDM_F16)
    return tdmi_f16_to_f32(((const uint16_t *)g)[i]);
  return ((const float *)g)[i];
}

static size_t dsize(tdm_dtype d) {
  return d == TDM_F64 ? 8 : d == TDM_F32 ? 4 : 2;
}

/* torch.optim's single-tensor formulas, one element at a time, each
 * operation rounded to REAL (the test is built with -ffp-contract=off);
 * the hyperparameters are rounded from double once, as torch rounds the
 * Python floats it passes to its kernels.  Where torch's own CPU kernels
 * fuse (fma in add with alpha, addcmul), the unfused order of
 * kernels_rules.h: v * beta2 + (1 - beta2) * (g * g) and
 * p + -step_size * (m / denom). */
#define REFERENCE_UPDATE(NAME, REAL, SQRT, LOAD)                              \
  static void NAME(const tdmi_update *u, const tdmi_update_arrays *a) {      \
    REAL *param = a->param, *s0 = a->state0, *s1 = a->state1;               \
    const REAL pre = (REAL)u->pre, lo = (REAL)u->lo, hi = (REAL)u->hi;      \
    const REAL post = (REAL)u->post, lr = (REAL)u->lr;                       \
    const REAL wd = (REAL)u->weight_decay, mu = (REAL)u->momentum;          \
    const REAL keep = (REAL)u->keep, b1 = (REAL)u->beta1, c1 = (REAL)u->c1; \
    const REAL b2 = (REAL)u->beta2, c2 = (REAL)u->c2, eps = (REAL)u->eps;   \
    const REAL decay = (REAL)u->decay, step = (REAL)-u->step_size;          \
    const REAL bias2 = (REAL)u->bias2_sqrt;                                  \
    for (size_t i = 0; i < a->n; i++) {                                      \
      REAL t = (REAL)LOAD * pre; /* the clamp keeps NaN */                  \
      if (t < lo)                                                            \
        t = lo;                                                              \
      if (t > hi)                                                            \
        t = hi;                                                              \
      REAL g = t * post, *p = &param[i];                                     \
      switch (u->kind) {                                                     \
      case TDM_OPTIMIZER_SGD: {                                              \
        /* g = g.add(p, alpha=wd); buf.mul_(mu).add_(g, alpha=1-damp);      \
         * g = g.add(buf, alpha=mu) or buf; p.add_(g, alpha=-lr) */          \
        REAL d = wd != 0 ? g + wd * *p : g;                                  \
        if (s0) {                                                            \
          REAL b = u->first ? d : s0[i] * mu + keep * d;                     \
          s0[i] = b;                                                         \
          d = u->nesterov ? d + mu * b : b;                                  \
        }                                                                    \
        *p = *p + -lr * d;                                                   \
        break;                                                               \
      }                                                                      \
      case TDM_OPTIMIZER_ADAM:                                               \
      case TDM_OPTIMIZER_ADAMW: {                                            \
        /* AdamW: p.mul_(1 - lr wd).  Adam: g = g.add(p, alpha=wd).         \
         * exp_avg.lerp_(g, 1 - beta1) (weight < 0.5: m + w (g - m), else   \
         * g - (g - m)(1 - w)); exp_avg_sq.mul_(beta2).addcmul_(g, g,        \
         * value=1 - beta2); denom = sqrt(v) / bias2_sqrt + eps;             \
         * p.addcdiv_(m, denom, value=-step_size) */                        \
        REAL pi = *p * decay;                                                \
        REAL d = u->kind == TDM_OPTIMIZER_ADAM && wd != 0 ? g + wd * pi : g; \
        REAL m = s0[i], v = s1[i];                                           \
        m = c1 < (REAL)0.5 ? m + c1 * (d - m) : d - (d - m) * ((REAL)1 - c1); \
        v = v * b2 + c2 * (d * d);                                           \
        s0[i] = m;                                                           \
        s1[i] = v;                                                           \
        *p = pi + step * (m / (SQRT(v) / bias2 + eps));                      \
        break;                                                               \
      }                                                                      \
      case TDM_OPTIMIZER_LION: {                                             \
        /* p.mul_(1 - lr wd); p.add_(sign(m b1 + (1-b1) g), alpha=-lr);     \
         * m.mul_(b2).add_(g, alpha=1-b2) */                                 \
        REAL m = s0[i], c = m * b1 + c1 * g;                                 \
        REAL sg = c > 0 ? (REAL)1 : c < 0 ? (REAL)-1 : c;                    \
        *p = *p * decay + -lr * sg;                                          \
        s0[i] = m * b2 + c2 * g;                                             \
        break;                                                               \
      }                                                                      \
      }                                                                      \
      if (a->copy)                                                           \
        ((uint16_t *)a->copy)[i] = a->copy_dtype == TDM_BF16                 \
                                       ? tdmi_f32_to_bf16((float)*p)         \
                                       : tdmi_f32_to_f16((float)*p);         \
    }                                                                        \
    if (a->zero_grad)                                                        \
      memset(a->grad, 0, a->n * dsize(a->grad_dtype));                       \
  }

REFERENCE_UPDATE(reference_f32, float, sqrtf, load_grad(a->grad_dtype, a->grad, i))
REFERENCE_UPDATE(reference_f64, double, sqrt, ((const double *)a->grad)[i])

/* ---- the update: variants against each other and the reference ------ */

typedef struct {
  const char *name;
  tdmi_update u;
  int states;
} update_case;

/* One set of arrays of n elements, each starting off elements into its
 * allocation (off 1: unaligned for any vector width); one guard element
 * after each. */
typedef struct {
  void *param, *s0, *s1, *grad, *copy;
  void *base[5];
  size_t bytes[5];
} arrays;

static void arrays_alloc(arrays *x, size_t n, int off, tdm_dtype pd,
                         tdm_dtype gd) {
  size_t m = n + 2, ps = dsize(pd), gs = dsize(gd);
  size_t sizes[5] = {ps, ps, ps, gs, 2};
  for (int i = 0; i < 5; i++) {
    x->bytes[i] = m * sizes[i];
    x->base[i] = malloc(x->bytes[i]);
  }
  x->param = (char *)x->base[0] + off * ps;
  x->s0 = (char *)x->base[1] + off * ps;
  x->s1 = (char *)x->base[2] + off * ps;
  x->grad = (char *)x->base[3] + off * gs;
  x->copy = (char *)x->base[4] + off * 2;
}

static void arrays_copy(arrays *dst, const arrays *src) {
  for (int i = 0; i < 5; i++)
    memcpy(dst->base[i], src->base[i], src->bytes[i]);
}

static void arrays_free(arrays *x) {
  for (int i = 0; i < 5; i++)
    free(x->base[i]);
}

/* Random values: params in [-1, 1), gradients of about gscale, a few
 * exact and signed zeros, tiny values (f16 subnormals), and with specials
 * some infinities and NaNs; moments, and Adam's second moments >= 0. */
static void arrays_fill(arrays *x, size_t n, tdm_dtype pd, tdm_dtype gd,
                        float gscale, int specials) {
  size_t m = n + 2;
  for (size_t i = 0; i < m; i++) {
    double v[3] = {unif(), 0.1 * unif(), 0.01 * fabsf(unif())};
    if (pd == TDM_F64) {
      v[0] += unif() * 0x1p-30; /* bits below f32's */
      for (int k = 0; k < 3; k++)
        ((double *)x->base[k])[i] = v[k];
    } else {
      for (int k = 0; k < 3; k++)
        ((float *)x->base[k])[i] = (float)v[k];
    }
  }
  uint16_t *c = x->base[4];
  for (size_t i = 0; i < m; i++)
    c[i] = 0x1234;
  for (size_t i = 0; i < m; i++) {
    float g = unif() * gscale;
    uint32_t r = rnd() % 64;
    if (r == 0)
      g = 0.0f;
    else if (r == 1)
      g = -0.0f;
    else if (r == 2 && specials)
      g = (rnd() & 1) ? INFINITY : -INFINITY;
    else if (r == 3 && specials)
      g = NAN;
    else if (r == 4)
      g *= 1e-6f; /* tiny: subnormal in f16 */
    if (gd == TDM_F64)
      ((double *)x->base[3])[i] = g + (double)unif() * 0x1p-35;
    else if (gd == TDM_F32)
      ((float *)x->base[3])[i] = g;
    else if (gd == TDM_BF16)
      ((uint16_t *)x->base[3])[i] = tdmi_f32_to_bf16(g);
    else
      ((uint16_t *)x->base[3])[i] = tdmi_f32_to_f16(g);
  }
}

static tdmi_update_arrays view(arrays *x, size_t n, tdm_dtype pd,
                               tdm_dtype gd, tdm_dtype cd, int states,
                               int zero_grad) {
  tdmi_update_arrays a = {x->param, pd, x->grad, gd,
                          cd != TDM_F32 ? x->copy : NULL,
                          cd != TDM_F32 ? cd : TDM_BF16,
                          states > 0 ? x->s0 : NULL,
                          states > 1 ? x->s1 : NULL, n, zero_grad};
  return a;
}

static int is_nan(const void *x, size_t size) {
  if (size == 4) {
    float f;
    memcpy(&f, x, 4);
    return isnan(f);
  }
  if (size == 8) {
    double d;
    memcpy(&d, x, 8);
    return isnan(d);
  }
  return 0;
}

/* First differing element of two arrays of n elements of size bytes;
 * with nan_ok, NaNs of any payload count as equal. */
static long differ(const void *a, const void *b, size_t n, size_t size,
                   int nan_ok) {
  for (size_t i = 0; i < n; i++) {
    const char *x = (const char *)a + i * size, *y = (const char *)b + i * size;
    if (memcmp(x, y, size) != 0 && !(nan_ok && is_nan(x, size) &&
                                     is_nan(y, size)))
      return (long)i;
  }
  return -1;
}

static void compare(const char *what, const char *tag, const arrays *got,
                    const arrays *want, size_t n, int nan_ok, tdm_dtype pd,
                    tdm_dtype gd, int copy) {
  static const char *names[5] = {"param", "state0", "state1", "grad", "copy"};
  const void *g[5] = {got->param, got->s0, got->s1, got->grad, got->copy};
  const void *w[5] = {want->param, want->s0, want->s1, want->grad, want->copy};
  size_t sz[5] = {dsize(pd), dsize(pd), dsize(pd), dsize(gd), 2};
  for (int k = 0; k < 5; k++) {
    if (k == 4 && !copy)
      continue;
    long i = differ(g[k], w[k], n + 1, sz[k], nan_ok && k < 3);
    if (i < 0)
      continue;
    uint64_t gb = 0, wb = 0;
    memcpy(&gb, (const char *)g[k] + i * sz[k], sz[k]);
    memcpy(&wb, (const char *)w[k] + i * sz[k], sz[k]);
    CHECK(0, "%s: %s: %s[%ld] of %zu: got %0*llx want %0*llx%s", what, tag,
          names[k], i, n, (int)sz[k] * 2, (unsigned long long)gb,
          (int)sz[k] * 2, (unsigned long long)wb,
          (size_t)i == n ? " (past the end)" : "");
  }
}

static void run_steps(const tdmi_kernels *k, const tdmi_update *u,
                      arrays *x, const arrays *init, size_t n, tdm_dtype pd,
                      tdm_dtype gd, tdm_dtype cd, int states, int zero_grad) {
  /* Two steps: the first (momentum buffer = gradient, Adam t = 1), then
   * one more from that state with the same gradients. */
  arrays_copy(x, init);
  for (int step = 1; step <= 2; step++) {
    tdmi_update us = *u;
    us.first = step == 1;
    us.step_size = u->lr / (1 - pow(u->beta1, step));
    us.bias2_sqrt = sqrt(1 - pow(u->beta2, step));
    if (step == 2 && zero_grad) /* refill the zeroed gradients */
      memcpy(x->base[3], init->base[3], init->bytes[3]);
    tdmi_update_arrays a = view(x, n, pd, gd, cd, states, zero_grad);
    if (k)
      tdmi_kernel_update(k, &us, &a);
    else if (pd == TDM_F64)
      reference_f64(&us, &a);
    else
      reference_f32(&us, &a);
  }
}

static void test_update(void) {
  /* beta1 0.9 takes lerp's first form, 0.3 the second. */
  update_case cases[] = {
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
        .nesterov = 1, .weight_decay = 1e-4},
       1},
      {"adam",
       {.kind = TDM_OPTIMIZER_ADAM, .lr = 0.01, .weight_decay = 0.01,
        .beta1 = 0.9, .c1 = 1 - 0.9, .beta2 = 0.999, .c2 = 1 - 0.999,
        .eps = 1e-8, .decay = 1.0},
       2},
      {"adamw beta1 0.3",
       {.kind = TDM_OPTIMIZER_ADAMW, .lr = 0.01, .weight_decay = 0.1,
        .beta1 = 0.3, .c1 = 1 - 0.3, .beta2 = 0.95, .c2 = 1 - 0.95,
        .eps = 1e-6, .decay = 1 - 0.01 * 0.1},
       2},
      {"lion",
       {.kind = TDM_OPTIMIZER_LION, .lr = 1e-3, .weight_decay = 0.5,
        .beta1 = 0.9, .c1 = 1 - 0.9, .beta2 = 0.99, .c2 = 1 - 0.99,
        .decay = 1 - 1e-3 * 0.5},
       1},
  };
  static const size_t sizes[] = {0, 1, 7, 17, 1000, 4099, 70001};
  /* {param, grad, copy}; copy TDM_F32 means none */
  static const tdm_dtype combos[][3] = {
      {TDM_F32, TDM_F32, TDM_F32},   {TDM_F32, TDM_F32, TDM_BF16},
      {TDM_F32, TDM_F32, TDM_F16},   {TDM_F32, TDM_BF16, TDM_F32},
      {TDM_F32, TDM_BF16, TDM_BF16}, {TDM_F32, TDM_BF16, TDM_F16},
      {TDM_F32, TDM_F16, TDM_F32},   {TDM_F32, TDM_F16, TDM_BF16},
      {TDM_F32, TDM_F16, TDM_F16},   {TDM_F64, TDM_F64, TDM_F32}};
  int ncases = (int)(sizeof cases / sizeof cases[0]), runs = 0;
  int ncombos = (int)(sizeof combos / sizeof combos[0]);
  for (int c = 0; c < ncases; c++)
    for (int ci = 0; ci < ncombos; ci++)
      for (int tr = 0; tr < 3; tr++) /* identity, unscale+clip, specials */
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
          size_t n = sizes[s];
          tdm_dtype pd = combos[ci][0], gd = combos[ci][1], cd = combos[ci][2];
          int off = (int)((s + c + ci) & 1);
          int zero_grad = (int)((s + ci + tr) & 1);
          int specials = tr == 2, states = cases[c].states;
          tdmi_update u = cases[c].u;
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
          arrays init, ref, out, first;
          arrays_alloc(&init, n, off, pd, gd);
          arrays_alloc(&ref, n, off, pd, gd);
          arrays_alloc(&out, n, off, pd, gd);
          arrays_alloc(&first, n, off, pd, gd);
          arrays_fill(&init, n, pd, gd, gscale, specials);
          char tag[160];
          snprintf(tag, sizeof tag, "%s param %s grad %s copy %s %s%s n %zu "
                   "off %d", cases[c].name, dtype_name(pd), dtype_name(gd),
                   cd != TDM_F32 ? dtype_name(cd) : "-",
                   tr == 0 ? "identity" : tr == 1 ? "unscale+clip" : "inf/nan",
                   zero_grad ? " zero_grad" : "", n, off);
          run_steps(NULL, &u, &ref, &init, n, pd, gd, cd, states, zero_grad);
          for (int v = 0; v < nisas; v++)
            for (int threads = 1; threads <= 2; threads++) {
              tdmi_kernels k;
              if (tdmi_kernels_init(&k, isas[v], threads) != TDM_SUCCESS)
                continue;
              run_steps(&k, &u, &out, &init, n, pd, gd, cd, states, zero_grad);
              runs++;
              char what[64];
              snprintf(what, sizeof what, "update isa %s threads %d",
                       tdmi_cpu_isa_name(k.isa), threads);
              if (v == 0 && threads == 1) {
                /* generic = reference (NaN payloads aside with specials) */
                compare(what, tag, &out, &ref, n, specials, pd, gd,
                        cd != TDM_F32);
                arrays_copy(&first, &out);
              } else {
                /* every variant and thread count: the generic bits */
                compare(what, tag, &out, &first, n, 0, pd, gd, cd != TDM_F32);
              }
            }
          arrays_free(&init);
          arrays_free(&ref);
          arrays_free(&out);
          arrays_free(&first);
        }
  printf("update: %d kernel runs compared\n", runs);
}

/* ---- sum of squares --------------------------------------------------- */

static void test_sumsq(void) {
  static const size_t sizes[] = {0, 1, 7, 17, 1000, 4099, 8192, 8193, 70001};
  const tdm_dtype gdts[4] = {TDM_F32, TDM_BF16, TDM_F16, TDM_F64};
  for (int gi = 0; gi < 4; gi++)
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
      for (int tr = 0; tr < 2; tr++)
        for (int special = 0; special < 4; special++) { /* -, inf, nan, both */
          size_t n = sizes[s];
          tdm_dtype gd = gdts[gi];
          if (special && n < 2)
            continue;
          int off = (int)(s & 1);
          char *base = malloc((n + 1) * 8);
          void *g = base + off * dsize(gd);
          double pre = 1.0, lo = -INFINITY, hi = INFINITY;
          if (tr) {
            pre = 0.5;
            lo = -0.25;
            hi = 0.375;
          }
          double want = 0;
          for (size_t i = 0; i < n; i++) {
            double x = unif();
            if (special & 1 && i == n / 3)
              x = -INFINITY;
            if (special & 2 && i == n - 1)
              x = NAN;
            double t;
            if (gd == TDM_F64) {
              x += unif() * 0x1p-35;
              ((double *)g)[i] = x;
              t = x * pre;
            } else {
              if (gd == TDM_F32)
                ((float *)g)[i] = (float)x;
              else if (gd == TDM_BF16)
                ((uint16_t *)g)[i] = tdmi_f32_to_bf16((float)x);
              else
                ((uint16_t *)g)[i] = tdmi_f32_to_f16((float)x);
              t = load_grad(gd, g, i) * (float)pre; /* in f32 */
              t = (float)t;
            }
            if (t < lo)
              t = lo;
            if (t > hi)
              t = hi;
            want += t * t;
          }
          double first = 0;
          int have_first = 0;
          for (int v = 0; v < nisas; v++)
            for (int threads = 1; threads <= 2; threads++) {
              tdmi_kernels k;
              if (tdmi_kernels_init(&k, isas[v], threads) != TDM_SUCCESS)
                continue;
              double got = tdmi_kernel_sumsq(&k, g, gd, n, pre, lo, hi);
              const char *isa = tdmi_cpu_isa_name(k.isa);
              if (special & 2)
                CHECK(isnan(got), "sumsq %s isa %s n %zu: nan gives %g",
                      dtype_name(gd), isa, n, got);
              else if (special & 1 && !tr)
                CHECK(isinf(got) && got > 0, "sumsq %s isa %s n %zu: -inf "
                      "gives %g", dtype_name(gd), isa, n, got);
              else
                CHECK(fabs(got - want) <= 1e-11 * want,
                      "sumsq %s isa %s threads %d n %zu clamp %d: got %.17g "
                      "want %.17g", dtype_name(gd), isa, threads, n, tr, got,
                      want);
              if (!have_first) {
                first = got;
                have_first = 1;
              } else {
                CHECK(memcmp(&got, &first, sizeof got) == 0 ||
                          (isnan(got) && isnan(first)),
                      "sumsq %s isa %s threads %d n %zu: %.17g differs from "
                      "generic's %.17g", dtype_name(gd), isa, threads, n, got,
                      first);
              }
            }
          free(base);
        }
}

int main(void) {
  const char *src = getenv("TDM_SRCDIR");
  char path[4096];
  snprintf(path, sizeof path, "%s/tests/data/half_torch.txt", src ? src : ".");
  for (int v = 0; v < 3; v++) {
    tdmi_kernels k;
    if (tdmi_kernels_init(&k, all_isas[v], 1) == TDM_SUCCESS)
      isas[nisas++] = all_isas[v];
    else
      printf("isa %s: not supported by this CPU, skipped\n",
             tdmi_cpu_isa_name(all_isas[v]));
  }
  tdmi_kernels k;
  CHECK(tdmi_kernels_init(&k, TDM_CPU_ISA_AUTO, 0) == TDM_SUCCESS &&
            k.isa == isas[nisas - 1] && k.threads == 1,
        "auto picks %s with %d threads", tdmi_cpu_isa_name(k.isa), k.threads);
  read_reference(path);
  if (nref) {
    test_scalar_vs_torch();
    test_convert();
  }
  test_sumsq();
  test_update();
  printf("u_kernels: %s (%d failed checks; isas:", failures ? "FAIL" : "PASS",
         failures);
  for (int v = 0; v < nisas; v++)
    printf(" %s", tdmi_cpu_isa_name(isas[v]));
  printf(")\n");
  return failures ? 1 : 0;
}
