/* t_precision.c - mixed precision and the fp16 loss scaler, against
 * PyTorch and independent f32 references:
 *  (a) fp16: the GradScaler runs of tests/data/scaler_ref.txt (made by
 *      tests/gen_precision_ref.py from torch.amp.GradScaler): inf / -inf /
 *      nan injected into one gradient element by one rank at the listed
 *      steps; per step the skip, the loss scale, tdm_loss_scale, the step
 *      count, the compute copies (unchanged when skipped, the conversion
 *      of the f32 reference when not), zeroed gradients;
 *  (b) bf16 and fp16 compute copies equal round-to-nearest-even of an f32
 *      reference SGD update, f64 parameters stay f64, the dtypes reported;
 *  (c) gradients reduced in bf16 / f16 (also without mixed precision) are
 *      the exact sums of the ranks' values, with accumulation;
 *  (d) bad option values. */
#include <stdlib.h>

#include "harness.h"
#include "tandem_mpi.h"

static int rank, size;

/* ---- f32 -> bf16 / f16, round to nearest even (independent of tandem:
 * through double and rint) ---- */

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static uint16_t to_f16(float f) {
  uint32_t x = f32_bits(f);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  if (isnan(f)) /* PyTorch (x86 F16C): quiet, top payload bits kept */
    return sign | 0x7e00u | (uint16_t)((x & 0x7fffffu) >> 13);
  double a = fabs((double)f);
  if (a >= 65520.0)
    return sign | 0x7c00u;
  int e;
  frexp(a, &e);
  int lead = e - 1 < -14 ? -14 : e - 1; /* exponent of the leading bit */
  double q = rint(ldexp(a, 10 - lead)); /* significand in 2^(lead-10) */
  if (q >= 2048.0) {
    q /= 2;
    lead++;
  }
  if (q < 1024.0) /* subnormal or zero */
    return sign | (uint16_t)q;
  return sign | (uint16_t)(((lead + 15) << 10) | ((int)q - 1024));
}

static uint16_t to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if (isnan(f))
    return 0xffffu; /* PyTorch's vectorized conversion */
  if (isinf(f) || f == 0.0f)
    return (uint16_t)(x >> 16);
  double a = fabs((double)f);
  int e;
  frexp(a, &e);
  int lead = e - 1 < -126 ? -126 : e - 1;
  double r = ldexp(rint(ldexp(a, 7 - lead)), lead - 7);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  if (r >= 0x1p128)
    return sign | 0x7f80u;
  return sign | (uint16_t)(f32_bits((float)r) >> 16);
}

static double from_f16(uint16_t h) {
  int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  double v = e == 0 ? ldexp(m, -24)
             : e == 31 ? (m ? NAN : INFINITY)
                       : ldexp(1024 + m, e - 25);
  return h & 0x8000u ? -v : v;
}

static double from_bf16(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static const char *dt_name(tdm_dtype d) {
  switch (d) {
  case TDM_F32: return "f32";
  case TDM_F64: return "f64";
  case TDM_BF16: return "bf16";
  case TDM_F16: return "f16";
  default: return "?";
  }
}

/* Element i of a buffer of dtype, as a double. */
static double get(tdm_dtype d, const void *buf, int64_t i) {
  switch (d) {
  case TDM_F32: return ((const float *)buf)[i];
  case TDM_F64: return ((const double *)buf)[i];
  case TDM_BF16: return from_bf16(((const uint16_t *)buf)[i]);
  case TDM_F16: return from_f16(((const uint16_t *)buf)[i]);
  default: return NAN;
  }
}

/* Stores v (exactly representable, or inf/nan) as element i. */
static void put(tdm_dtype d, void *buf, int64_t i, double v) {
  switch (d) {
  case TDM_F32: ((float *)buf)[i] = (float)v; break;
  case TDM_F64: ((double *)buf)[i] = v; break;
  case TDM_BF16: ((uint16_t *)buf)[i] = to_bf16((float)v); break;
  case TDM_F16: ((uint16_t *)buf)[i] = to_f16((float)v); break;
  default: break;
  }
}

static size_t dt_size(tdm_dtype d) {
  return d == TDM_F64 ? 8 : d == TDM_F32 ? 4 : 2;
}

/* ---- a small engine ---- */

#define MAXP 3

typedef struct {
  tdm_context *ctx;
  tdm_engine *e;
  tdm_optimizer *opt;
  int np;
  int param[MAXP];
  int64_t count[MAXP];
  tdm_dtype dtype[MAXP];           /* registered: f32 or f64 */
  tdm_dtype data_dt[MAXP], grad_dt[MAXP];
  void *data[MAXP], *grad[MAXP];
} engine;

typedef struct {
  int precision, reduce, isa, accum;
} setup;

/* Opens ctx, engine, parameters (initial values in f64, converted) and
 * an SGD optimizer; 0 when the instruction set is not supported. */
static int open_engine(engine *r, const setup *s, int np,
                       const tdm_dtype *dtype, const int64_t *count,
                       double **init, const tdm_optimizer_options *oo) {
  memset(r, 0, sizeof *r);
  tdm_options o = TDM_OPTIONS_INIT;
  o.mixed_precision = s->precision;
  o.reduce_dtype = s->reduce;
  o.cpu_isa = s->isa;
  o.gradient_accumulation_steps = s->accum;
  o.progress = TDM_PROGRESS_POLL;
  tdm_status st = tdm_init_comm(MPI_COMM_WORLD, &o, &r->ctx);
  if (st == TDM_ERR_NOT_SUPPORTED)
    return 0;
  TH_CHECK(st == TDM_SUCCESS, "tdm_init_comm: %s", tdm_last_error());
  if (st != TDM_SUCCESS)
    return 0;
  st = tdm_engine_create(r->ctx, &r->e);
  if (st == TDM_ERR_NOT_SUPPORTED) {
    tdm_finalize(r->ctx);
    return 0;
  }
  TH_CHECK(st == TDM_SUCCESS, "tdm_engine_create: %s", tdm_last_error());
  int module;
  TH_OK(tdm_add_module(r->e, "layer", &module));
  static const char *names[MAXP] = {"layer.weight", "layer.bias",
                                    "layer.scale64"};
  r->np = np;
  for (int p = 0; p < np; p++) {
    r->dtype[p] = dtype[p];
    r->count[p] = count[p];
    void *v = malloc((size_t)count[p] * dt_size(dtype[p]));
    for (int64_t i = 0; i < count[p]; i++)
      put(dtype[p], v, i, init[p][i]);
    TH_OK(tdm_add_param(r->e, module, names[p], dtype[p], 1, &count[p], v, 0,
                        &r->param[p]));
    free(v);
  }
  TH_OK(tdm_prepare(r->e));
  for (int p = 0; p < np; p++) {
    TH_OK(tdm_param_buffers(r->e, r->param[p], &r->data[p], &r->grad[p]));
    TH_OK(tdm_get_param_dtypes(r->e, r->param[p], &r->data_dt[p],
                               &r->grad_dt[p]));
  }
  TH_OK(tdm_optimizer_create(r->e, oo, &r->opt));
  return 1;
}

static void close_engine(engine *r) {
  TH_OK(tdm_optimizer_destroy(r->opt));
  TH_OK(tdm_engine_destroy(r->e));
  TH_OK(tdm_finalize(r->ctx));
}

static tdm_optimizer_info info_of(engine *r) {
  tdm_optimizer_info info;
  memset(&info, 0, sizeof info);
  info.size = sizeof info;
  TH_OK(tdm_get_optimizer_info(r->opt, &info));
  return info;
}

/* This rank's exact share of a value: 1/2, 1/4, ... and the last rank the
 * rest, so the sum over ranks is exact in any format. */
static double share(int r) {
  return r < size - 1 ? ldexp(1.0, -(r + 1)) : ldexp(1.0, -(size - 1));
}

static int all_zero(const void *buf, size_t bytes) {
  const unsigned char *b = buf;
  for (size_t i = 0; i < bytes; i++)
    if (b[i])
      return 0;
  return 1;
}

/* ---- (a) the loss scaler against torch ---- */

typedef struct {
  char name[32];
  double init, growth, backoff;
  int interval, steps;
  char (*inject)[8];
  int *skipped;
  double *scale;
} scaler_run;

static int read_scaler_runs(const char *path, scaler_run *runs, int max) {
  FILE *fp = fopen(path, "r");
  TH_CHECK(fp != NULL, "cannot open %s", path);
  if (!fp)
    return 0;
  char line[256];
  int n = -1, at = 0;
  while (fgets(line, sizeof line, fp)) {
    if (line[0] == '#')
      continue;
    if (strncmp(line, "run ", 4) == 0) {
      if (++n >= max)
        break;
      scaler_run *s = &runs[n];
      if (sscanf(line, "run %31s %lf %lf %lf %d %d", s->name, &s->init,
                 &s->growth, &s->backoff, &s->interval, &s->steps) != 6) {
        TH_CHECK(0, "bad run line in %s: %s", path, line);
        break;
      }
      s->inject = calloc((size_t)s->steps, sizeof *s->inject);
      s->skipped = calloc((size_t)s->steps, sizeof *s->skipped);
      s->scale = calloc((size_t)s->steps, sizeof *s->scale);
      at = 0;
      continue;
    }
    scaler_run *s = &runs[n];
    int step, skipped;
    char inject[8];
    double scale;
    if (n < 0 || sscanf(line, "%d %7s %d %lf", &step, inject, &skipped,
                        &scale) != 4 || step != at || step >= s->steps) {
      TH_CHECK(0, "bad step line in %s: %s", path, line);
      break;
    }
    memcpy(s->inject[step], inject, sizeof inject);
    s->skipped[step] = skipped;
    s->scale[step] = scale;
    at++;
  }
  fclose(fp);
  return n + 1 > max ? max : n + 1;
}

static double inject_value(const char *kind) {
  return strcmp(kind, "inf") == 0    ? INFINITY
         : strcmp(kind, "-inf") == 0 ? -INFINITY
                                     : NAN;
}

/* Trains w (f32, 5), b (f32, 1), d (f64, 2) with SGD lr 0.5 on the
 * gradient 4p: each clean step flips every value's sign exactly.  The
 * ranks' shares of the scaled gradient sum to exactly 4p * scale; rank
 * inj_rank writes the run's inf/nan into parameter step % 3. */
static void test_scaler(const scaler_run *run, int reduce, int inj_rank,
                        int steps) {
  static const tdm_dtype dtype[3] = {TDM_F32, TDM_F32, TDM_F64};
  static const int64_t count[3] = {5, 1, 2};
  double w0[5], b0[1] = {3.0 / 64}, d0[2] = {-2.0 / 64, 5.0 / 64};
  for (int i = 0; i < 5; i++)
    w0[i] = (i & 1 ? -1 : 1) * (i + 1) / 64.0;
  double *init[3] = {w0, b0, d0};
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  oo.lr = 0.5;
  oo.init_scale = run->init;
  oo.growth_factor = run->growth;
  oo.backoff_factor = run->backoff;
  oo.growth_interval = run->interval;
  setup s = {TDM_PRECISION_FP16, reduce, TDM_CPU_ISA_AUTO, 1};
  engine r;
  if (!open_engine(&r, &s, 3, dtype, count, init, &oo))
    return;
  /* exact powers of two, or rounded to f32 by torch */
  const double tol = strcmp(run->name, "odd") == 0 ? 1e-6 : 0.0;
  /* With a scale that is not a power of two the scaled gradients round:
   * then only whether the copies changed is checked. */
  const int exact = tol == 0.0;
  float ref32[6];
  double ref64[2];
  for (int i = 0; i < 5; i++)
    ref32[i] = (float)w0[i];
  ref32[5] = (float)b0[0];
  ref64[0] = d0[0];
  ref64[1] = d0[1];
  float *ref[2] = {ref32, ref32 + 5};
  double scale = run->init;
  int64_t clean = 0, skipped = 0;
  int bad_scale = 0, bad_skip = 0, bad_copy = 0, bad_grad = 0, bad_info = 0;
  int bad_zero = 0, bad_loss_scale = 0;
  uint16_t before[6];
  for (int step = 0; step < steps; step++) {
    double ls;
    TH_OK(tdm_loss_scale(r.e, &ls));
    if (!(fabs(ls - scale / size) <= (tol + 1e-15) * (scale / size)) &&
        bad_loss_scale++ < 3)
      TH_CHECK(0, "%s step %d: tdm_loss_scale %.17g, want %.17g / %d",
               run->name, step, ls, scale, size);
    TH_OK(tdm_backward_begin(r.e));
    for (int p = 0; p < 3; p++) {
      for (int64_t i = 0; i < count[p]; i++) {
        double g = p < 2 ? 4.0 * ref[p][i] : 4.0 * ref64[i];
        put(r.grad_dt[p], r.grad[p], i, g * scale * share(rank));
      }
    }
    const char *kind = run->inject[step];
    int injected = strcmp(kind, "none") != 0;
    int tp = step % 3;
    if (injected && rank == inj_rank)
      put(r.grad_dt[tp], r.grad[tp], step % count[tp], inject_value(kind));
    for (int p = 0; p < 3; p++)
      TH_OK(tdm_grad_ready(r.e, r.param[p]));
    TH_OK(tdm_backward_end(r.e));
    /* the reduced gradients: the exact sums, or the injected value */
    for (int p = 0; p < 3; p++)
      for (int64_t i = 0; i < count[p]; i++) {
        double got = get(r.grad_dt[p], r.grad[p], i);
        double want = (p < 2 ? 4.0 * ref[p][i] : 4.0 * ref64[i]) * scale;
        if (injected && p == tp && i == step % count[p]) {
          double v = inject_value(kind);
          if (!(isnan(v) ? isnan(got) : got == v || isnan(got)) &&
              bad_grad++ < 3)
            TH_CHECK(0, "%s step %d: injected %s reduced to %g", run->name,
                     step, kind, got);
        } else if (exact && got != want && bad_grad++ < 3) {
          TH_CHECK(0, "%s step %d: param %d grad[%lld] %.17g, want %.17g",
                   run->name, step, p, (long long)i, got, want);
        }
      }
    for (int p = 0, k = 0; p < 2; p++)
      for (int64_t i = 0; i < count[p]; i++)
        before[k++] = ((uint16_t *)r.data[p])[i];
    int stepped = -1;
    TH_OK(tdm_step(r.opt, &stepped));
    int want_skip = run->skipped[step];
    if (want_skip) {
      skipped++;
    } else {
      clean++;
      for (int k = 0; k < 6; k++)
        ref32[k] = ref32[k] + -0.5f * (4.0f * ref32[k]);
      for (int i = 0; i < 2; i++)
        ref64[i] = ref64[i] + -0.5 * (4.0 * ref64[i]);
    }
    scale = run->scale[step];
    if (stepped != !want_skip && bad_skip++ < 3)
      TH_CHECK(0, "%s step %d (%s): stepped %d, torch skipped %d", run->name,
               step, kind, stepped, want_skip);
    tdm_optimizer_info info = info_of(&r);
    if (!(fabs(info.loss_scale - scale) <= tol * scale) && bad_scale++ < 3)
      TH_CHECK(0, "%s step %d (%s): loss scale %.17g, torch %.17g", run->name,
               step, kind, info.loss_scale, scale);
    if ((info.steps != clean || info.skipped_steps != skipped ||
         info.last_skipped != want_skip) &&
        bad_info++ < 3)
      TH_CHECK(0, "%s step %d (%s): steps %lld skipped_steps %lld "
               "last_skipped %d, want %lld %lld %d", run->name, step, kind,
               (long long)info.steps, (long long)info.skipped_steps,
               info.last_skipped, (long long)clean, (long long)skipped,
               want_skip);
    /* copies: unchanged when skipped, the f16 of the reference when not */
    for (int p = 0, k = 0; p < 2; p++)
      for (int64_t i = 0; i < count[p]; i++, k++) {
        uint16_t got = ((uint16_t *)r.data[p])[i];
        int ok = want_skip ? got == before[k]
                           : (!exact || got == to_f16(ref[p][i])) &&
                                 got != before[k];
        if (!ok && bad_copy++ < 3)
          TH_CHECK(0, "%s step %d (%s): copy of param %d [%lld] %04x, before "
                   "%04x, f16 of the reference %04x", run->name, step, kind, p,
                   (long long)i, got, before[k], to_f16(ref[p][i]));
      }
    for (int i = 0; i < 2 && exact; i++)
      if (((double *)r.data[2])[i] != ref64[i] && bad_copy++ < 3)
        TH_CHECK(0, "%s step %d: f64 param [%d] %.17g, want %.17g", run->name,
                 step, i, ((double *)r.data[2])[i], ref64[i]);
    for (int p = 0; p < 3; p++)
      if (!all_zero(r.grad[p], (size_t)count[p] * dt_size(r.grad_dt[p])) &&
          bad_zero++ < 3)
        TH_CHECK(0, "%s step %d: gradient of param %d not zeroed by tdm_step",
                 run->name, step, p);
  }
  if (rank == 0)
    printf("scaler run %s (%d steps, reduce %s, inf/nan from rank %d): "
           "%lld updates, %lld skipped, scale %g\n", run->name, steps,
           dt_name((tdm_dtype)reduce), inj_rank, (long long)clean,
           (long long)skipped, scale);
  close_engine(&r);
}

/* ---- (b), (c) compute copies and reduced sums ---- */

/* Rank r's unscaled gradient of element i at step t, micro-step j: a
 * small integer times 2^-(6..9), so every partial sum is exact in bf16
 * and f16 (also times 65536). */
static double grad_of(int r, int64_t i, int t, int j) {
  int k = (int)((i * 3 + t * 5 + r * 7 + j * 11) % 15) - 7;
  return ldexp(k, -(6 + (int)((i + t + j) % 4)));
}

static void test_copies(const setup *s) {
  static const tdm_dtype dtype[3] = {TDM_F32, TDM_F32, TDM_F64};
  static const int64_t count[3] = {37, 3, 4};
  double w0[37], b0[3], d0[4];
  for (int i = 0; i < 37; i++)
    w0[i] = ((i * 7) % 19 - 9) / 10.0 + i / 3.0; /* not binary fractions */
  for (int i = 0; i < 3; i++)
    b0[i] = 0.1 * (i + 1);
  for (int i = 0; i < 4; i++)
    d0[i] = 1.0 / (i + 3);
  double *init[3] = {w0, b0, d0};
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  oo.lr = 0.1;
  engine r;
  if (!open_engine(&r, s, 3, dtype, count, init, &oo)) {
    if (rank == 0)
      printf("copies: cpu_isa %d not supported here, skipped\n", s->isa);
    return;
  }
  char tag[96];
  snprintf(tag, sizeof tag, "precision %d reduce %s isa %d accum %d",
           s->precision, dt_name((tdm_dtype)s->reduce), s->isa, s->accum);
  tdm_dtype copy_dt = s->precision == TDM_PRECISION_BF16   ? TDM_BF16
                      : s->precision == TDM_PRECISION_FP16 ? TDM_F16
                                                           : TDM_F32;
  for (int p = 0; p < 3; p++) {
    tdm_dtype wd = dtype[p] == TDM_F32 ? copy_dt : TDM_F64;
    /* f32 math keeps f32 gradients: the reduce dtype is the wire's */
    tdm_dtype wg = dtype[p] == TDM_F64                   ? TDM_F64
                   : s->precision == TDM_PRECISION_NO ? TDM_F32
                                                        : (tdm_dtype)s->reduce;
    TH_CHECK(r.data_dt[p] == wd && r.grad_dt[p] == wg,
             "%s: param %d dtypes (%s, %s), want (%s, %s)", tag, p,
             dt_name(r.data_dt[p]), dt_name(r.grad_dt[p]), dt_name(wd),
             dt_name(wg));
  }
  /* Before any step the copies are the conversion of the initial values. */
  float ref32[40];
  double ref64[4];
  for (int i = 0; i < 37; i++)
    ref32[i] = (float)w0[i];
  for (int i = 0; i < 3; i++)
    ref32[37 + i] = (float)b0[i];
  for (int i = 0; i < 4; i++)
    ref64[i] = d0[i];
  float *ref[2] = {ref32, ref32 + 37};
  const float lr = (float)0.1;
  int bad = 0;
  for (int t = 0; t <= 12; t++) {
    if (t > 0) { /* one optimizer step of s->accum micro-steps */
      double scale = info_of(&r).loss_scale;
      double want_scale = s->precision == TDM_PRECISION_FP16 ? 65536.0 : 1.0;
      TH_CHECK(scale == want_scale, "%s: loss scale %g, want %g", tag, scale,
               want_scale);
      for (int j = 0; j < s->accum; j++) {
        double ls;
        TH_OK(tdm_loss_scale(r.e, &ls));
        /* fp16: the seed carries 1 / (ranks * micro-steps), to keep f16
         * sums in range; otherwise the optimizer averages */
        double want_ls = s->precision == TDM_PRECISION_FP16
                             ? want_scale / (size * s->accum)
                             : 1.0;
        TH_CHECK(fabs(ls - want_ls) <= 1e-15 * ls,
                 "%s: tdm_loss_scale %.17g, want %.17g", tag, ls, want_ls);
        TH_OK(tdm_backward_begin(r.e));
        for (int p = 0; p < 3; p++)
          for (int64_t i = 0; i < count[p]; i++) {
            double acc = get(r.grad_dt[p], r.grad[p], i); /* += */
            put(r.grad_dt[p], r.grad[p], i,
                acc + grad_of(rank, p * 100 + i, t, j) * scale);
          }
        for (int p = 2; p >= 0; p--)
          TH_OK(tdm_grad_ready(r.e, r.param[p]));
        TH_OK(tdm_backward_end(r.e));
        if (j < s->accum - 1) {
          int stepped = -1;
          TH_OK(tdm_step(r.opt, &stepped));
          TH_CHECK(stepped == 0, "%s: stepped inside the accumulation cycle",
                   tag);
        }
      }
      /* (c) the reduced gradients are the exact sums over ranks and
       * micro-steps */
      for (int p = 0; p < 3; p++)
        for (int64_t i = 0; i < count[p]; i++) {
          double want = 0;
          for (int q = 0; q < size; q++)
            for (int j = 0; j < s->accum; j++)
              want += grad_of(q, p * 100 + i, t, j);
          double got = get(r.grad_dt[p], r.grad[p], i);
          if (got != want * scale && bad++ < 5)
            TH_CHECK(0, "%s step %d: reduced %s gradient of param %d [%lld] "
                     "%.17g, want %.17g", tag, t, dt_name(r.grad_dt[p]), p,
                     (long long)i, got, want * scale);
          /* the f32 / f64 reference SGD step: the kernel multiplies the
           * sum by 1 / (loss scale), without fp16 also by 1 / (ranks *
           * micro-steps) */
          double pre = 1.0 / (scale * (s->precision == TDM_PRECISION_FP16
                                           ? 1.0
                                           : (double)size * s->accum));
          if (p < 2)
            ref[p][i] = ref[p][i] + -lr * ((float)(want * scale) * (float)pre);
          else
            ref64[i] = ref64[i] + -0.1 * (want * scale * pre);
        }
      int stepped = -1;
      TH_OK(tdm_step(r.opt, &stepped));
      TH_CHECK(stepped == 1, "%s step %d: no update", tag, t);
    }
    /* (b) every copy is round-to-nearest-even of the f32 reference */
    for (int p = 0; p < 2; p++)
      for (int64_t i = 0; i < count[p]; i++) {
        float want = ref[p][i];
        int ok;
        uint32_t got_bits, want_bits;
        if (copy_dt == TDM_F32) {
          got_bits = f32_bits(((float *)r.data[p])[i]);
          want_bits = f32_bits(want);
        } else {
          got_bits = ((uint16_t *)r.data[p])[i];
          want_bits = copy_dt == TDM_BF16 ? to_bf16(want) : to_f16(want);
        }
        ok = got_bits == want_bits;
        if (!ok && bad++ < 5)
          TH_CHECK(0, "%s after step %d: param %d [%lld] data %x, want %x "
                   "(f32 reference %.9g)", tag, t, p, (long long)i, got_bits,
                   want_bits, (double)want);
      }
    for (int i = 0; i < 4; i++)
      if (((double *)r.data[2])[i] != ref64[i] && bad++ < 5)
        TH_CHECK(0, "%s after step %d: f64 param [%d] %.17g, want %.17g", tag,
                 t, i, ((double *)r.data[2])[i], ref64[i]);
  }
  /* the values are the same on every rank */
  for (int p = 0; p < 3; p++) {
    size_t bytes = (size_t)count[p] * dt_size(r.data_dt[p]);
    unsigned char *all = malloc(bytes * (size_t)size);
    MPI_Allgather(r.data[p], (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE,
                  MPI_COMM_WORLD);
    for (int q = 1; q < size; q++)
      TH_CHECK(memcmp(all, all + bytes * (size_t)q, bytes) == 0,
               "%s: param %d differs between ranks 0 and %d", tag, p, q);
    free(all);
  }
  tdm_optimizer_info info = info_of(&r);
  TH_CHECK(info.steps == 12 && info.skipped_steps == 0 && !info.last_skipped,
           "%s: steps %lld skipped %lld", tag, (long long)info.steps,
           (long long)info.skipped_steps);
  if (rank == 0)
    printf("copies %s: ok through 12 steps\n", tag);
  close_engine(&r);
}

/* ---- (d) option errors ---- */

static void test_errors(void) {
  tdm_context *c = NULL;
  setenv("TANDEM_MIXED_PRECISION", "fp8", 1);
  TH_FAILS(tdm_init_comm(MPI_COMM_WORLD, NULL, &c), TDM_ERR_CONFIG,
           "TANDEM_MIXED_PRECISION");
  setenv("TANDEM_MIXED_PRECISION", "bf16", 1);
  setenv("TANDEM_REDUCE_DTYPE", "f64", 1);
  TH_FAILS(tdm_init_comm(MPI_COMM_WORLD, NULL, &c), TDM_ERR_CONFIG,
           "TANDEM_REDUCE_DTYPE");
  setenv("TANDEM_REDUCE_DTYPE", "bf16", 1);
  c = NULL;
  TH_OK(tdm_init_comm(MPI_COMM_WORLD, NULL, &c));
  if (c) {
    tdm_options got = TDM_OPTIONS_INIT;
    TH_OK(tdm_get_options(c, &got));
    TH_CHECK(got.mixed_precision == TDM_PRECISION_BF16 &&
                 got.reduce_dtype == TDM_BF16,
             "from the environment: mixed_precision %d reduce_dtype %d",
             got.mixed_precision, got.reduce_dtype);
    TH_OK(tdm_finalize(c));
  }
  unsetenv("TANDEM_MIXED_PRECISION");
  unsetenv("TANDEM_REDUCE_DTYPE");
  tdm_options o = TDM_OPTIONS_INIT;
  o.mixed_precision = 3;
  tdm_status st = tdm_init_comm(MPI_COMM_WORLD, &o, &c);
  TH_CHECK(st != TDM_SUCCESS && strstr(tdm_last_error(), "mixed_precision"),
           "mixed_precision = 3 -> %s \"%s\"", tdm_status_string(st),
           tdm_last_error());
  o = (tdm_options)TDM_OPTIONS_INIT;
  o.reduce_dtype = TDM_F64;
  st = tdm_init_comm(MPI_COMM_WORLD, &o, &c);
  TH_CHECK(st != TDM_SUCCESS && strstr(tdm_last_error(), "reduce_dtype"),
           "reduce_dtype = f64 -> %s \"%s\"", tdm_status_string(st),
           tdm_last_error());
}

/* fp16: a value clip must not hide an inf from the loss scaler, which
 * looks before any clipping (as torch's GradScaler). */
static void test_clip_value_sees_inf(void) {
  engine r;
  setup s = {TDM_PRECISION_FP16, TDM_F32, TDM_CPU_ISA_AUTO, 1};
  tdm_dtype dt[1] = {TDM_F32};
  int64_t count[1] = {4};
  double init0[4] = {1, 2, 3, 4}, *init[1] = {init0};
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  oo.lr = 0.1;
  if (!open_engine(&r, &s, 1, dt, count, init, &oo))
    return;
  for (int t = 0; t < 2; t++) { /* t 0: inf on rank 0; t 1: finite */
    TH_OK(tdm_backward_begin(r.e));
    float *g = r.grad[0];
    for (int i = 0; i < 4; i++)
      g[i] = t == 0 && rank == 0 && i == 0 ? INFINITY : 1000.0f;
    TH_OK(tdm_grad_ready(r.e, r.param[0]));
    TH_OK(tdm_backward_end(r.e));
    TH_OK(tdm_clip_grad_value(r.opt, 0.5));
    int stepped = -1;
    TH_OK(tdm_step(r.opt, &stepped));
    tdm_optimizer_info info = info_of(&r);
    TH_CHECK(stepped == t && info.last_skipped == !t,
             "step %d after a value clip: stepped %d, last_skipped %d", t,
             stepped, info.last_skipped);
  }
  close_engine(&r);
}

int main(int argc, char **argv) {
  th_init(&argc, &argv, MPI_THREAD_MULTIPLE, &rank, &size);
  const char *src = getenv("TDM_SRCDIR");
  char path[4096];
  snprintf(path, sizeof path, "%s/tests/data/scaler_ref.txt",
           src ? src : ".");
  scaler_run runs[4];
  memset(runs, 0, sizeof runs);
  int nruns = read_scaler_runs(path, runs, 4);
  TH_CHECK(nruns == 3, "%d runs in %s, want 3", nruns, path);
  for (int i = 0; i < nruns; i++) {
    scaler_run *run = &runs[i];
    if (strcmp(run->name, "default") == 0) {
      /* the whole run, rank 0 injecting, f32 gradients; again with f16
       * gradients and the last rank injecting */
      test_scaler(run, TDM_F32, 0, run->steps);
      test_scaler(run, TDM_F16, size - 1, run->steps);
    } else {
      test_scaler(run, i % 2 ? TDM_BF16 : TDM_F32, 1 % size, run->steps);
    }
  }
  for (int i = 0; i < nruns; i++) {
    free(runs[i].inject);
    free(runs[i].skipped);
    free(runs[i].scale);
  }
  static const setup setups[] = {
      {TDM_PRECISION_BF16, TDM_F32, TDM_CPU_ISA_AUTO, 1},
      {TDM_PRECISION_BF16, TDM_BF16, TDM_CPU_ISA_GENERIC, 1},
      {TDM_PRECISION_BF16, TDM_F16, TDM_CPU_ISA_AVX2, 1},
      {TDM_PRECISION_FP16, TDM_F32, TDM_CPU_ISA_AVX2, 1},
      {TDM_PRECISION_FP16, TDM_F16, TDM_CPU_ISA_AUTO, 1},
      {TDM_PRECISION_FP16, TDM_F16, TDM_CPU_ISA_GENERIC, 2},
      {TDM_PRECISION_FP16, TDM_BF16, TDM_CPU_ISA_AVX512, 1},
      {TDM_PRECISION_NO, TDM_BF16, TDM_CPU_ISA_GENERIC, 1},
      {TDM_PRECISION_NO, TDM_F16, TDM_CPU_ISA_AUTO, 3},
      {TDM_PRECISION_NO, TDM_F32, TDM_CPU_ISA_AUTO, 1},
  };
  for (size_t i = 0; i < sizeof setups / sizeof setups[0]; i++)
    test_copies(&setups[i]);
  test_errors();
  test_clip_value_sees_inf();
  int rc = th_finish("t_precision");
  MPI_Finalize();
  return rc;
}
