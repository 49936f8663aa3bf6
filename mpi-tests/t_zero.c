/* t_zero.c - ZeRO stages 1-3, offload and memory accounting, against
 * stage 0 (DDP, itself checked against a 1-rank run by t_engine) and
 * against formulas written here independently of the library:
 *  (a) equivalence: the MLP of examples/mlp and a 10-layer chain of fully
 *      connected layers with odd widths (deep_model.c, so no tensor or bucket
 *      divides evenly among 2, 3 or 4 ranks), trained 50 AdamW steps (20
 *      under sanitizers; lr 1e-3, weight decay 0.01, tdm_clip_grad_norm 1.0
 *      at every boundary) in f32 and under bf16 compute copies, with 1 and 2
 *      accumulation micro-steps, each rank on its own slice of the global
 *      batch, under stage 1, 2, 3 (every module sharded, a small prefetch
 *      window), 3 (default persistence threshold: every module stays
 *      gathered), 1, 2 and 3 with the optimizer offloaded and 3 with the
 *      parameters offloaded: every parameter read back with tdm_gather_param
 *      equals the stage-0 run's, ||a - b|| / ||b|| <= 1e-6 per parameter, and
 *      the same on every rank; the clip norm of every step agrees within 1e-6
 *      relative and the stepped flags are the same.  Small bucket caps give
 *      stages 0-2 many buckets.  Runs with 2 micro-steps use the
 *      communication thread when MPI provides MPI_THREAD_MULTIPLE, the others
 *      poll;
 *  (b) the fp16 loss scaler on shards: the deep model under fp16, every
 *      configuration of (a) but the persistent stage 3 (offload included),
 *      12 steps of 2 micro-steps, a NaN input on the last rank in the
 *      first micro-step of step 7: every stage skips that step and only it
 *      on every rank (skipped_steps 1, last_skipped set after step 7
 *      only, clip norm nan there), and ends with stage 0's loss scale,
 *      norms and weights (1e-6);
 *  (c) memory: after a step with every module released, fp32 and bf16,
 *      AdamW, stages 0-3: tdm_get_memory_info per category against the
 *      ZeRO paper's per-rank bytes (params 4 or 2 bytes, / N at stage 3;
 *      gradients 4, / N from stage 2; optimizer state 8, / N from stage
 *      1; f32 masters of bf16 copies 4, / N from stage 1; 0 in f32),
 *      formula <= reported <= formula + the padding bound 4 * 32 *
 *      (parameters + N * buckets), nothing in the other location (with
 *      TANDEM_TEST_FAKE_GPU=1 every run is on the fake GPU, where the
 *      model math still reads host-addressable memory, and the bytes
 *      are on the device; staged copies add pinned comm buffers); the totals
 *      strictly decrease with the stage when N >= 2;
 *      tdm_estimate_model_state against the paper's 7.5B-parameter,
 *      64-GPU example (120, 31.4, 16.6, 1.9 GB) and against the formula
 *      for other inputs; tdm_memory_report names every category and
 *      truncates like snprintf; offload, each configuration of (a), f32
 *      and bf16: on the CPU the same bytes as without offload, all on the
 *      host; on the fake GPU the optimizer state (8 / N), the master shard
 *      (4 / N, in f32 too, except where offload=params makes it the
 *      parameter shard) and a copy of the gradient shard (4 / N) on the
 *      host, the gradients of the stage on the device, the parameters
 *      of the stage on the device (plus a 2 / N host shard of the new
 *      bf16 copy) or, with offload=params, their shards on the host and
 *      nothing on the device; per category and location within the
 *      padding bound of two buffers;
 *  (d) the ZeRO-3 window: the gathered bytes peak at the largest module
 *      without prefetch and stay within prefetch window + largest module
 *      with it; nothing stays gathered after the last release;
 *  (e) misuse: unfetched data, a ZeRO-2 gradient outside a micro-step, a
 *      bad module index, tdm_gather_param inside a micro-step, offload or
 *      zero_stage values that do not fit, TANDEM_ZERO_STAGE, and ranks
 *      configured with different stages;
 *  (f) mixed dtypes: modules of an f32 and an f64 parameter (two buckets
 *      each at stage 3) trained by SGD on a quadratic whose gradient the
 *      test writes: every stage ends at the closed form c + (w0 - c) 0.9^k.
 * Set TDM_TEST_VERBOSE=1 for a summary line per configuration (printed
 * anyway when a check of it fails). */
#include <stdint.h>

#include "deep_model.h"
#include "harness.h"
#include "model.h"
#include "tandem_mpi.h"

#define B 4       /* samples per rank and micro-step */
#define STEPS 50 /* at most; equiv_steps */
#define FIRST_CAP 256
#define CAP 1024
#define TOL 1e-6
#define MAXP 24

static int rank, size, verbose, thread_ok, equiv_steps = STEPS;
/* TANDEM_TEST_FAKE_GPU=1: every run on the fake GPU (device path). */
static int fake_gpu;
static tdm_device_kind run_device(void) {
  return fake_gpu ? TDM_DEVICE_CUDA : TDM_DEVICE_CPU;
}

/* The deep model of (a) and (b): 10 layers, widths prime >= 5. */
static const int small_width[] = {13, 29, 7, 41, 11, 23, 5, 37, 19, 31, 17};
/* (c) and (d): the same shape, about 91k parameters, so that the padding
 * is small beside the formulas. */
static const int big_width[] = {61, 127, 37, 211, 53, 113, 29, 173, 97, 151,
                                83};
#define NLAYERS 10

enum { MODEL_MLP, MODEL_DEEP };

typedef struct {
  const char *name;
  int stage, offload, prefetch, persistence;
} zconfig;

/* "small but nonzero" prefetch: about one module of the small model */
#define SMALL_PREFETCH 1536

static const zconfig configs[] = {
    {"stage 0", 0, TDM_OFFLOAD_NONE, TDM_UNSET, TDM_UNSET},
    {"stage 1", 1, TDM_OFFLOAD_NONE, TDM_UNSET, TDM_UNSET},
    {"stage 2", 2, TDM_OFFLOAD_NONE, TDM_UNSET, TDM_UNSET},
    {"stage 3", 3, TDM_OFFLOAD_NONE, SMALL_PREFETCH, 0},
    {"stage 3 persistent", 3, TDM_OFFLOAD_NONE, TDM_UNSET, TDM_UNSET},
    {"stage 1 + offload optimizer", 1, TDM_OFFLOAD_OPTIMIZER, TDM_UNSET,
     TDM_UNSET},
    {"stage 2 + offload optimizer", 2, TDM_OFFLOAD_OPTIMIZER, TDM_UNSET,
     TDM_UNSET},
    {"stage 3 + offload optimizer", 3, TDM_OFFLOAD_OPTIMIZER, SMALL_PREFETCH,
     0},
    {"stage 3 + offload params", 3, TDM_OFFLOAD_PARAMS, SMALL_PREFETCH, 0},
};
#define NCONFIGS ((int)(sizeof configs / sizeof configs[0]))

static const char *precision_name(int p) {
  return p == TDM_PRECISION_NO ? "f32" : p == TDM_PRECISION_BF16 ? "bf16"
                                                                  : "fp16";
}

/* ---- a training run ---------------------------------------------------- */

typedef struct {
  tdm_context *ctx;
  tdm_engine *e;
  tdm_optimizer *opt;
  int model;
  mlp_model mlp;
  deep_model deep;
  const int *width;
  int np;
  int param[MAXP];
  size_t count[MAXP];
  char pname[MAXP][32];
} run;

typedef struct {
  int precision, accum;
  int width_big;   /* deep model: big_width instead of small_width */
  zconfig z;
} setup;

/* Opens context, engine, model and AdamW; 0 (after a failed check) when
 * something failed. */
static int open_run(run *r, int model, const setup *s) {
  memset(r, 0, sizeof *r);
  r->model = model;
  tdm_options o = TDM_OPTIONS_INIT;
  o.device = run_device();
  o.first_bucket_bytes = FIRST_CAP;
  o.bucket_cap_bytes = CAP;
  o.gradient_accumulation_steps = s->accum;
  o.mixed_precision = s->precision;
  o.progress = s->accum > 1 && thread_ok ? TDM_PROGRESS_THREAD
                                         : TDM_PROGRESS_POLL;
  o.zero_stage = s->z.stage;
  o.offload = s->z.offload;
  o.zero3_prefetch_bytes = s->z.prefetch;
  o.zero3_persistence_threshold = s->z.persistence;
  tdm_status st = tdm_init_comm(MPI_COMM_WORLD, &o, &r->ctx);
  TH_CHECK(st == TDM_SUCCESS, "%s: tdm_init_comm: %s", s->z.name,
           tdm_last_error());
  if (st != TDM_SUCCESS)
    return 0;
  st = tdm_engine_create(r->ctx, &r->e);
  TH_CHECK(st == TDM_SUCCESS, "%s: tdm_engine_create: %s", s->z.name,
           tdm_last_error());
  if (st != TDM_SUCCESS) {
    tdm_finalize(r->ctx);
    return 0;
  }
  if (model == MODEL_MLP) {
    static const size_t counts[MLP_PARAMS] = {MLP_HIDDEN * MLP_IN, MLP_HIDDEN,
                                              MLP_HIDDEN, 1};
    static const char *const names[MLP_PARAMS] = {"fc1.weight", "fc1.bias",
                                                  "fc2.weight", "fc2.bias"};
    st = mlp_register(r->ctx, r->e, 77, &r->mlp);
    r->np = MLP_PARAMS;
    for (int p = 0; p < MLP_PARAMS; p++) {
      r->param[p] = r->mlp.param[p];
      r->count[p] = counts[p];
      snprintf(r->pname[p], sizeof r->pname[p], "%s", names[p]);
    }
  } else {
    r->width = s->width_big ? big_width : small_width;
    st = deep_register(r->ctx, r->e, NLAYERS, r->width, 77, &r->deep);
    r->np = 2 * NLAYERS;
    for (int l = 0; l < NLAYERS && st == TDM_SUCCESS; l++) {
      size_t in = (size_t)r->width[l], out = (size_t)r->width[l + 1];
      r->param[2 * l] = r->deep.weight[l];
      r->count[2 * l] = out * in;
      snprintf(r->pname[2 * l], sizeof r->pname[0], "layer%d.weight", l);
      r->param[2 * l + 1] = r->deep.bias[l];
      r->count[2 * l + 1] = out;
      snprintf(r->pname[2 * l + 1], sizeof r->pname[0], "layer%d.bias", l);
    }
  }
  TH_CHECK(st == TDM_SUCCESS, "%s: registering the model: %s", s->z.name,
           tdm_last_error());
  if (st == TDM_SUCCESS) {
    st = tdm_prepare(r->e);
    TH_CHECK(st == TDM_SUCCESS, "%s: tdm_prepare: %s", s->z.name,
             tdm_last_error());
  }
  if (st == TDM_SUCCESS) {
    tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
    oo.kind = TDM_OPTIMIZER_ADAMW;
    oo.lr = 1e-3;
    oo.weight_decay = 0.01;
    st = tdm_optimizer_create(r->e, &oo, &r->opt);
    TH_CHECK(st == TDM_SUCCESS, "%s: tdm_optimizer_create: %s", s->z.name,
             tdm_last_error());
  }
  if (st != TDM_SUCCESS) {
    tdm_engine_destroy(r->e);
    deep_free(&r->deep);
    tdm_finalize(r->ctx);
    return 0;
  }
  return 1;
}

static void close_run(run *r) {
  TH_OK(tdm_optimizer_destroy(r->opt));
  TH_OK(tdm_engine_destroy(r->e));
  TH_OK(tdm_finalize(r->ctx));
  deep_free(&r->deep);
}

/* The training data of a model: total samples, the same on every rank. */
typedef struct {
  float *x, *y;
  int in, out;
} dataset;

static void make_data(run *r, int total, dataset *d) {
  if (r->model == MODEL_MLP) {
    d->in = MLP_IN;
    d->out = 1;
  } else {
    d->in = r->width[0];
    d->out = r->width[NLAYERS];
  }
  d->x = malloc(sizeof *d->x * (size_t)total * d->in);
  d->y = malloc(sizeof *d->y * (size_t)total * d->out);
  if (r->model == MODEL_MLP) {
    TH_OK(mlp_make_data(r->ctx, 5, total, d->x, d->y));
    return;
  }
  tdm_rng *rng = NULL;
  TH_OK(tdm_rng_create(r->ctx, 5, TDM_RNG_SHARED, &rng));
  TH_OK(tdm_rng_normal_f32(rng, d->x, (size_t)total * d->in, 0.0f, 1.0f));
  TH_OK(tdm_rng_destroy(rng));
  /* a smooth target of the inputs */
  for (int i = 0; i < total; i++)
    for (int o = 0; o < d->out; o++)
      d->y[(size_t)i * d->out + o] =
          0.5f * sinf((float)(1 + o % 3) * d->x[(size_t)i * d->in + o % d->in] +
                      0.1f * (float)o);
}

static void free_data(dataset *d) {
  free(d->x);
  free(d->y);
}

typedef struct {
  double norm[STEPS];
  int stepped[STEPS], last_skipped[STEPS];
  int64_t steps, skipped;
  double loss_scale;
  float *value[MAXP];
} result;

static void free_result(result *res) {
  for (int p = 0; p < MAXP; p++)
    free(res->value[p]);
}

/* One micro-step of n samples from first; returns its status. */
static tdm_status forward_backward(run *r, const float *x, const float *y,
                                   int n, double scale) {
  double loss;
  if (r->model == MODEL_MLP)
    return mlp_forward_backward(r->e, &r->mlp, x, y, n, scale, &loss);
  return deep_forward_backward(r->e, &r->deep, x, y, n, scale, &loss);
}

/* Trains steps optimizer steps of accum micro-steps; the last rank puts a
 * NaN into its first input of micro-step 0 of step nan_step (-1: none).
 * Fills res (values read with tdm_gather_param). */
static void train(run *r, const dataset *d, int steps, int accum, int nan_step,
                  const char *label, result *res) {
  memset(res, 0, sizeof *res);
  int bad_sync = 0, bad_stepped = 0, failed = 0;
  float *xb = malloc(sizeof *xb * (size_t)B * d->in);
  for (int step = 0; step < steps && !failed; step++) {
    for (int j = 0; j < accum && !failed; j++) {
      long first = ((long)(step * accum + j) * size + rank) * B;
      const float *x = &d->x[first * d->in];
      if (step == nan_step && j == 0 && rank == size - 1) {
        memcpy(xb, x, sizeof *xb * (size_t)B * d->in);
        xb[0] = NAN;
        x = xb;
      }
      int sync = -1, stepped = -1;
      double scale = 0;
      TH_OK(tdm_is_sync_step(r->e, &sync));
      if (sync != (j == accum - 1) && bad_sync++ == 0)
        TH_CHECK(0, "%s: step %d micro-step %d: tdm_is_sync_step %d", label,
                 step, j, sync);
      TH_OK(tdm_loss_scale(r->e, &scale));
      TH_OK(tdm_backward_begin(r->e));
      tdm_status st =
          forward_backward(r, x, &d->y[first * d->out], B, scale);
      TH_CHECK(st == TDM_SUCCESS, "%s: step %d micro-step %d: forward/"
               "backward: %s: %s", label, step, j, tdm_status_string(st),
               tdm_last_error());
      failed |= st != TDM_SUCCESS;
      TH_OK(tdm_backward_end(r->e));
      if (sync)
        TH_OK(tdm_clip_grad_norm(r->opt, 1.0, &res->norm[step]));
      TH_OK(tdm_step(r->opt, &stepped));
      if (sync) {
        tdm_optimizer_info info;
        memset(&info, 0, sizeof info);
        info.size = sizeof info;
        TH_OK(tdm_get_optimizer_info(r->opt, &info));
        res->stepped[step] = stepped;
        res->last_skipped[step] = info.last_skipped;
      } else if (stepped != 0 && bad_stepped++ == 0) {
        TH_CHECK(0, "%s: step %d micro-step %d: stepped %d inside the cycle",
                 label, step, j, stepped);
      }
    }
  }
  free(xb);
  tdm_optimizer_info info;
  memset(&info, 0, sizeof info);
  info.size = sizeof info;
  TH_OK(tdm_get_optimizer_info(r->opt, &info));
  res->steps = info.steps;
  res->skipped = info.skipped_steps;
  res->loss_scale = info.loss_scale;
  /* every rank reads the same values, bit for bit */
  uint64_t hash = 1469598103934665603ull, lo, hi;
  for (int p = 0; p < r->np; p++) {
    res->value[p] = calloc(r->count[p], sizeof(float));
    TH_OK(tdm_gather_param(r->e, r->param[p], res->value[p]));
    const unsigned char *b = (const unsigned char *)res->value[p];
    for (size_t i = 0; i < r->count[p] * sizeof(float); i++)
      hash = (hash ^ b[i]) * 1099511628211ull; /* FNV-1a */
  }
  MPI_Allreduce(&hash, &lo, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&hash, &hi, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  TH_CHECK(lo == hi, "%s: tdm_gather_param gives different values on "
           "different ranks", label);
}

/* ||a - b|| / ||b||, or ||a - b|| when b is 0; huge when not finite. */
static double rel_l2(const float *a, const float *b, size_t n) {
  double diff = 0, ref = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)a[i] - b[i];
    diff += d * d;
    ref += (double)b[i] * b[i];
  }
  double e = ref > 0 ? sqrt(diff / ref) : sqrt(diff);
  return isfinite(e) ? e : 1e300;
}

static double rel_norm(double a, double b) {
  if (isnan(a) && isnan(b))
    return 0;
  double e = fabs(a - b) / fmax(fabs(b), 1e-30);
  return isfinite(e) ? e : (a == b ? 0 : 1e300);
}

/* Compares res with the stage-0 reference: weights, norms, stepped
 * flags; the worst over ranks is checked on rank 0. */
static void compare(const run *r, const result *res, const result *ref,
                    int steps, const char *label) {
  double err[MAXP + 2];
  for (int p = 0; p < r->np; p++)
    err[p] = rel_l2(res->value[p], ref->value[p], r->count[p]);
  double norm_err = 0;
  int norm_step = -1;
  for (int s = 0; s < steps; s++) {
    double e = rel_norm(res->norm[s], ref->norm[s]);
    if (e > norm_err)
      norm_err = e, norm_step = s;
  }
  err[r->np] = norm_err;
  int diff_stepped = 0;
  for (int s = 0; s < steps; s++)
    diff_stepped += res->stepped[s] != ref->stepped[s] ||
                    res->last_skipped[s] != ref->last_skipped[s];
  err[r->np + 1] = diff_stepped;
  double worst[MAXP + 2];
  MPI_Allreduce(err, worst, r->np + 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  int failures = th_failures;
  double max_err = 0;
  if (rank == 0) {
    int shown = 0, bad = 0;
    for (int p = 0; p < r->np; p++) {
      max_err = fmax(max_err, worst[p]);
      if (worst[p] <= TOL)
        continue;
      bad++;
      if (shown++ < 4)
        TH_CHECK(0, "%s N=%d: %s rel err %.3g vs stage 0", label, size,
                 r->pname[p], worst[p]);
    }
    TH_CHECK(bad <= 4, "%s N=%d: %d more parameters differ from stage 0",
             label, size, bad - 4);
    TH_CHECK(worst[r->np] <= TOL, "%s N=%d: clip norm rel err %.3g vs stage "
             "0 (worst step on rank %d: %d, %.9g vs %.9g)", label, size,
             worst[r->np], rank, norm_step,
             norm_step >= 0 ? res->norm[norm_step] : 0.0,
             norm_step >= 0 ? ref->norm[norm_step] : 0.0);
    TH_CHECK(worst[r->np + 1] == 0, "%s N=%d: stepped/last_skipped differ "
             "from stage 0 in %g steps", label, size, worst[r->np + 1]);
  }
  if (rank == 0 && (verbose || th_failures > failures))
    printf("%-44s N=%d: weights rel err %.3g, norms %.3g, %lld steps, "
           "%lld skipped\n", label, size, max_err, worst[r->np],
           (long long)res->steps, (long long)res->skipped);
}

/* ---- (a) equivalence ------------------------------------------------------ */

static void equivalence(int model, int precision, int accum) {
  setup s = {precision, accum, 0, configs[0]};
  run r;
  char label[128];
  result ref;
  if (!open_run(&r, model, &s))
    return;
  int total = equiv_steps * accum * size * B;
  dataset d;
  make_data(&r, total, &d);
  snprintf(label, sizeof label, "%s %s k=%d %s",
           model == MODEL_MLP ? "mlp" : "deep", precision_name(precision),
           accum, configs[0].name);
  train(&r, &d, equiv_steps, accum, -1, label, &ref);
  for (int t = 0; t < equiv_steps; t++)
    TH_CHECK(ref.stepped[t] == 1, "%s: no update at step %d", label, t);
  close_run(&r);
  for (int c = 1; c < NCONFIGS; c++) {
    s.z = configs[c];
    snprintf(label, sizeof label, "%s %s k=%d %s",
             model == MODEL_MLP ? "mlp" : "deep", precision_name(precision),
             accum, configs[c].name);
    if (!open_run(&r, model, &s))
      continue;
    if (model == MODEL_DEEP && configs[c].stage < 3) {
      int nb = 0;
      TH_OK(tdm_get_bucket_count(r.e, &nb));
      TH_CHECK(nb >= 4, "%s: only %d buckets", label, nb);
    }
    result res;
    train(&r, &d, equiv_steps, accum, -1, label, &res);
    compare(&r, &res, &ref, equiv_steps, label);
    if (configs[c].stage == 3 && configs[c].persistence == TDM_UNSET) {
      /* every module of these small models is below the default
       * threshold: its values stay readable without a fetch */
      void *data = NULL;
      for (int p = 0; p < r.np; p++)
        TH_OK(tdm_param_buffers(r.e, r.param[p], &data, NULL));
    }
    free_result(&res);
    close_run(&r);
  }
  free_result(&ref);
  free_data(&d);
}

/* ---- (b) the fp16 loss scaler ------------------------------------------- */

#define NAN_STEP 7
#define FP16_STEPS 12

static void fp16_scaler(void) {
  const int accum = 2;
  result ref;
  dataset d = {0};
  for (int c = 0; c < NCONFIGS; c++) {
    if (configs[c].stage == 3 && configs[c].persistence == TDM_UNSET)
      continue; /* gathers nothing: stage 3 adds nothing to the scaler */
    setup s = {TDM_PRECISION_FP16, accum, 0, configs[c]};
    char label[128];
    snprintf(label, sizeof label, "deep fp16 k=2 NaN at step %d %s",
             NAN_STEP, configs[c].name);
    run r;
    if (!open_run(&r, MODEL_DEEP, &s))
      continue;
    if (c == 0)
      make_data(&r, FP16_STEPS * accum * size * B, &d);
    result res;
    train(&r, &d, FP16_STEPS, accum, NAN_STEP, label, c == 0 ? &ref : &res);
    const result *got = c == 0 ? &ref : &res;
    int bad = 0;
    for (int t = 0; t < FP16_STEPS; t++)
      bad += got->stepped[t] != (t != NAN_STEP) ||
             got->last_skipped[t] != (t == NAN_STEP);
    TH_CHECK(bad == 0, "%s: %d steps with the wrong stepped / last_skipped "
             "(want a skip at step %d only)", label, bad, NAN_STEP);
    TH_CHECK(got->skipped == 1 && got->steps == FP16_STEPS - 1,
             "%s: skipped_steps %lld, steps %lld; want 1 and %d", label,
             (long long)got->skipped, (long long)got->steps, FP16_STEPS - 1);
    TH_CHECK(isnan(got->norm[NAN_STEP]), "%s: clip norm %g at step %d, want "
             "nan", label, got->norm[NAN_STEP], NAN_STEP);
    if (c > 0) {
      TH_CHECK(res.loss_scale == ref.loss_scale, "%s: loss scale %g, stage 0 "
               "%g", label, res.loss_scale, ref.loss_scale);
      compare(&r, &res, &ref, FP16_STEPS, label);
      free_result(&res);
    }
    close_run(&r);
  }
  free_result(&ref);
  free_data(&d);
}

/* ---- (c) memory ------------------------------------------------------------- */

static const char *const category[TDM_MEM_NUM_CATEGORIES] = {
    "params", "grads", "optimizer state", "master weights", "comm buffers"};

/* The ZeRO paper's bytes per rank, written here on purpose (not
 * tdm_estimate_model_state): numel f32 parameters, compute copies of
 * param_bytes, gradients of grad_bytes, states f32 optimizer states. */
static void paper_bytes(double numel, int n, int stage, int param_bytes,
                        int grad_bytes, int states, int master,
                        double out[TDM_MEM_NUM_CATEGORIES]) {
  out[TDM_MEM_PARAMS] = param_bytes * numel / (stage >= 3 ? n : 1);
  out[TDM_MEM_GRADS] = grad_bytes * numel / (stage >= 2 ? n : 1);
  out[TDM_MEM_OPTIMIZER_STATE] = 4.0 * states * numel / (stage >= 1 ? n : 1);
  out[TDM_MEM_MASTER_WEIGHTS] = master ? 4 * numel / (stage >= 1 ? n : 1) : 0;
  out[TDM_MEM_COMM_BUFFERS] = 0;
}

static int contains_ci(const char *hay, const char *needle) {
  size_t n = strlen(hay);
  char *low = malloc(n + 1);
  for (size_t i = 0; i <= n; i++)
    low[i] = (char)(hay[i] >= 'A' && hay[i] <= 'Z' ? hay[i] - 'A' + 'a'
                                                   : hay[i]);
  int found = strstr(low, needle) != NULL;
  free(low);
  return found;
}

static void check_report(run *r, const char *label) {
  static const char *const names[TDM_MEM_NUM_CATEGORIES] = {
      "param", "grad", "optimizer state", "master", "comm"};
  size_t needed = 0, again = 0;
  TH_OK(tdm_memory_report(r->e, NULL, 0, &needed));
  char *full = malloc(needed + 1);
  TH_OK(tdm_memory_report(r->e, full, needed + 1, &again));
  TH_CHECK(again == needed && strlen(full) == needed,
           "%s: report length %zu, needed %zu then %zu", label, strlen(full),
           needed, again);
  for (int c = 0; c < TDM_MEM_NUM_CATEGORIES; c++)
    TH_CHECK(contains_ci(full, names[c]), "%s: report does not name '%s':\n%s",
             label, names[c], full);
  /* a small buffer: truncated, terminated, nothing written past it */
  char small[64];
  memset(small, 'X', sizeof small);
  TH_OK(tdm_memory_report(r->e, small, 16, &again));
  TH_CHECK(again == needed && needed > 15, "%s: needed %zu with a small "
           "buffer, %zu with a large one", label, again, needed);
  TH_CHECK(small[15] == '\0' && memcmp(small, full, 15) == 0,
           "%s: truncated report is not the first 15 characters", label);
  int overflow = 0;
  for (size_t i = 16; i < sizeof small; i++)
    overflow |= small[i] != 'X';
  TH_CHECK(!overflow, "%s: tdm_memory_report wrote past size 16", label);
  if (verbose && rank == 0)
    printf("%s", full);
  free(full);
}

/* Opens a run of the big deep model, trains one step and reads its
 * memory and bucket count; 0 when it could not open. */
static int after_a_step(run *r, const setup *s, const char *label,
                        tdm_memory_info *info, int *nb) {
  if (!open_run(r, MODEL_DEEP, s))
    return 0;
  dataset d;
  make_data(r, size * B, &d);
  result res;
  train(r, &d, 1, 1, -1, label, &res);
  free_result(&res);
  free_data(&d);
  memset(info, 0, sizeof *info);
  info->size = sizeof *info;
  TH_OK(tdm_get_memory_info(r->e, info));
  TH_OK(tdm_get_bucket_count(r->e, nb));
  return 1;
}

static void memory(int precision) {
  uint64_t totals[4] = {0};
  for (int stage = 0; stage <= 3; stage++) {
    zconfig z = {"memory", stage, TDM_OFFLOAD_NONE, TDM_UNSET, 0};
    setup s = {precision, 1, 1, z};
    char label[96];
    snprintf(label, sizeof label, "memory %s stage %d",
             precision_name(precision), stage);
    run r;
    tdm_memory_info info;
    int nb = 0;
    if (!after_a_step(&r, &s, label, &info, &nb))
      continue;
    double psi = (double)deep_numel(&r.deep);
    int bf16 = precision == TDM_PRECISION_BF16;
    double want[TDM_MEM_NUM_CATEGORIES];
    paper_bytes(psi, size, stage, bf16 ? 2 : 4, 4, 2, bf16, want);
    double slack = 4.0 * 32 * (r.np + (double)size * nb);
    int here = fake_gpu ? TDM_MEM_DEVICE : TDM_MEM_HOST, there = 1 - here;
    int failures = th_failures;
    for (int c = 0; c < TDM_MEM_MASTER_WEIGHTS + 1; c++) {
      double got = (double)info.current[c][here];
      if (c == TDM_MEM_MASTER_WEIGHTS && !bf16)
        TH_CHECK(got == 0, "%s N=%d: %s %.0f bytes, want 0 in f32", label,
                 size, category[c], got);
      else
        TH_CHECK(got >= want[c] && got <= want[c] + slack,
                 "%s N=%d: %s %.0f bytes, want %.1f .. %.1f (psi %.0f, %d "
                 "buckets)", label, size, category[c], got, want[c],
                 want[c] + slack, psi, nb);
    }
    uint64_t total = 0;
    for (int c = 0; c < TDM_MEM_NUM_CATEGORIES; c++) {
      TH_CHECK(c == TDM_MEM_COMM_BUFFERS || info.current[c][there] == 0,
               "%s: %s has %llu bytes in location %d", label, category[c],
               (unsigned long long)info.current[c][there], there);
      TH_CHECK(info.peak[c][here] >= info.current[c][here],
               "%s: %s peak below current", label, category[c]);
      total += info.current[c][TDM_MEM_HOST] + info.current[c][TDM_MEM_DEVICE];
    }
    TH_CHECK(info.peak_total >= total, "%s: peak_total %llu below the total "
             "%llu", label, (unsigned long long)info.peak_total,
             (unsigned long long)total);
    if (stage == 3)
      TH_CHECK(info.gathered_params == 0, "%s: %llu bytes still gathered",
               label, (unsigned long long)info.gathered_params);
    totals[stage] = total;
    if (rank == 0 && (verbose || th_failures > failures))
      printf("%s N=%d (psi %.0f, %d buckets): params %llu grads %llu state "
             "%llu master %llu comm %llu total %llu\n", label, size, psi, nb,
             (unsigned long long)info.current[0][here],
             (unsigned long long)info.current[1][here],
             (unsigned long long)info.current[2][here],
             (unsigned long long)info.current[3][here],
             (unsigned long long)info.current[4][here],
             (unsigned long long)total);
    if (stage == 3)
      check_report(&r, label);
    close_run(&r);
  }
  for (int stage = 0; stage < 3 && size >= 2; stage++)
    TH_CHECK(totals[stage + 1] < totals[stage], "memory %s N=%d: stage %d "
             "holds %llu bytes, stage %d %llu", precision_name(precision),
             size, stage + 1, (unsigned long long)totals[stage + 1], stage,
             (unsigned long long)totals[stage]);
}

/* Offload, per category and location, in bytes per element of the
 * model: on the CPU everything stays where memory() found it; on a
 * device the master, the optimizer state and a copy of the gradient shard
 * are host memory (with the shard's new compute copy under mixed
 * precision), and offload=params puts the parameter shards there too. */
static void offload_bytes(const zconfig *z, int bf16, double psi,
                          double want[][TDM_MEM_NUM_LOCATIONS]) {
  double n = size, cs = bf16 ? 2 : 4;
  int params = z->offload == TDM_OFFLOAD_PARAMS;
  double full[TDM_MEM_NUM_CATEGORIES];
  paper_bytes(psi, size, z->stage, (int)cs, 4, 2, bf16, full);
  memset(want, 0, sizeof(double) * TDM_MEM_NUM_CATEGORIES *
                      TDM_MEM_NUM_LOCATIONS);
  if (!fake_gpu) {
    for (int c = 0; c < TDM_MEM_NUM_CATEGORIES; c++)
      want[c][TDM_MEM_HOST] = full[c];
    return;
  }
  double *param = want[TDM_MEM_PARAMS];
  if (params) { /* the shards on the host, gathered ones freed */
    param[TDM_MEM_HOST] = cs * psi / n;
  } else {      /* the values on the device, a bf16 shard copy on the host */
    param[TDM_MEM_DEVICE] = full[TDM_MEM_PARAMS];
    param[TDM_MEM_HOST] = bf16 ? 2 * psi / n : 0;
  }
  want[TDM_MEM_GRADS][TDM_MEM_DEVICE] = full[TDM_MEM_GRADS];
  want[TDM_MEM_GRADS][TDM_MEM_HOST] = 4 * psi / n;
  want[TDM_MEM_OPTIMIZER_STATE][TDM_MEM_HOST] = 8 * psi / n;
  /* a host master even in f32, unless it is the parameter shard */
  want[TDM_MEM_MASTER_WEIGHTS][TDM_MEM_HOST] =
      bf16 || !params ? 4 * psi / n : 0;
}

static void memory_offload(const zconfig *z, int precision) {
  setup s = {precision, 1, 1, *z};
  s.z.persistence = 0; /* nothing stays gathered after the step */
  char label[96];
  snprintf(label, sizeof label, "memory %s %s", precision_name(precision),
           z->name);
  run r;
  tdm_memory_info info;
  int nb = 0;
  if (!after_a_step(&r, &s, label, &info, &nb))
    return;
  double psi = (double)deep_numel(&r.deep);
  double want[TDM_MEM_NUM_CATEGORIES][TDM_MEM_NUM_LOCATIONS];
  offload_bytes(z, precision == TDM_PRECISION_BF16, psi, want);
  /* up to two buffers per category and location */
  double slack = 2 * 4.0 * 32 * (r.np + (double)size * nb);
  int failures = th_failures;
  for (int c = 0; c < TDM_MEM_COMM_BUFFERS; c++)
    for (int l = 0; l < TDM_MEM_NUM_LOCATIONS; l++) {
      double got = (double)info.current[c][l];
      TH_CHECK(got >= want[c][l] && got <= want[c][l] + (want[c][l] ? slack
                                                                     : 0),
               "%s N=%d: %s %.0f bytes on the %s, want %.1f .. %.1f (psi "
               "%.0f, %d buckets)", label, size, category[c], got,
               l == TDM_MEM_HOST ? "host" : "device", want[c][l],
               want[c][l] + (want[c][l] ? slack : 0), psi, nb);
    }
  if (rank == 0 && (verbose || th_failures > failures)) {
    char report[2048];
    TH_OK(tdm_memory_report(r.e, report, sizeof report, NULL));
    printf("%s N=%d:\n%s", label, size, report);
  }
  close_run(&r);
}

static uint64_t estimate_total(uint64_t numel, int n, int stage,
                               tdm_precision precision, tdm_dtype reduce,
                               int states, uint64_t bytes[5]) {
  for (int c = 0; c < TDM_MEM_NUM_CATEGORIES; c++)
    bytes[c] = UINT64_MAX;
  TH_OK(tdm_estimate_model_state(numel, n, stage, precision, reduce, states,
                                 bytes));
  uint64_t total = 0;
  for (int c = 0; c < TDM_MEM_NUM_CATEGORIES; c++)
    total += bytes[c];
  return total;
}

static void estimates(void) {
  /* Rajbhandari et al. 2020, figure 1: 7.5B parameters, 64 GPUs, mixed
   * precision Adam (K = 12): 120, 31.4, 16.6 and 1.9 GB per GPU. */
  static const double paper[4] = {120e9, 31.4e9, 16.6e9, 1.9e9};
  uint64_t bytes[5];
  for (int stage = 0; stage <= 3; stage++) {
    uint64_t total = estimate_total(7500000000ull, 64, stage,
                                    TDM_PRECISION_FP16, TDM_F16, 2, bytes);
    TH_CHECK(fabs((double)total - paper[stage]) <= 0.05e9, "estimate stage "
             "%d: %.4g bytes, the paper %.4g", stage, (double)total,
             paper[stage]);
  }
  /* Other inputs against the formula of paper_bytes (numel divisible by
   * N, so that no rounding is involved). */
  static const struct {
    uint64_t numel;
    int n, stage, precision, reduce, states;
  } cases[] = {
      {1000000, 8, 0, TDM_PRECISION_NO, TDM_F32, 2},
      {1000000, 8, 1, TDM_PRECISION_NO, TDM_F32, 1},
      {1000000, 8, 2, TDM_PRECISION_BF16, TDM_F32, 2},
      {1000000, 8, 3, TDM_PRECISION_BF16, TDM_BF16, 2},
      {3000000, 3, 1, TDM_PRECISION_FP16, TDM_F16, 1},
      {3000000, 3, 2, TDM_PRECISION_NO, TDM_BF16, 0},
      {3000000, 3, 3, TDM_PRECISION_NO, TDM_F32, 2},
      {7000000000ull, 1000, 3, TDM_PRECISION_BF16, TDM_F32, 2},
      {123456, 1, 3, TDM_PRECISION_FP16, TDM_F32, 2},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int mixed = cases[i].precision != TDM_PRECISION_NO;
    double want[5];
    /* gradients: the reduce dtype under mixed precision, f32 with f32
     * math (where the reduce dtype is only the wire's) */
    paper_bytes((double)cases[i].numel, cases[i].n, cases[i].stage,
                mixed ? 2 : 4, !mixed || cases[i].reduce == TDM_F32 ? 4 : 2,
                cases[i].states, mixed, want);
    estimate_total(cases[i].numel, cases[i].n, cases[i].stage,
                   (tdm_precision)cases[i].precision,
                   (tdm_dtype)cases[i].reduce, cases[i].states, bytes);
    for (int c = 0; c < TDM_MEM_NUM_CATEGORIES; c++)
      TH_CHECK((double)bytes[c] == want[c], "estimate case %zu: %s %llu, "
               "want %.0f", i, category[c], (unsigned long long)bytes[c],
               want[c]);
  }
}

/* ---- (d) the ZeRO-3 window -------------------------------------------------- */

/* One micro-step and step with prefetch window w; fills the module sizes
 * when sizes is not NULL.  Returns the peak of gathered bytes. */
static uint64_t window_run(int w, uint64_t *module_bytes, uint64_t *largest) {
  zconfig z = {"window", 3, TDM_OFFLOAD_NONE, w, 0};
  setup s = {TDM_PRECISION_NO, 1, 1, z};
  run r;
  if (!open_run(&r, MODEL_DEEP, &s))
    return 0;
  *largest = 0;
  int nb = 0;
  TH_OK(tdm_get_bucket_count(r.e, &nb));
  TH_CHECK(nb == NLAYERS, "stage 3: %d buckets for %d modules", nb, NLAYERS);
  for (int l = 0; l < NLAYERS; l++) {
    int bw = -1, bb = -2;
    size_t bytes = 0;
    TH_OK(tdm_get_param_bucket(r.e, r.deep.weight[l], &bw));
    TH_OK(tdm_get_param_bucket(r.e, r.deep.bias[l], &bb));
    TH_CHECK(bw == bb, "stage 3: layer%d's weight in bucket %d, bias in %d",
             l, bw, bb);
    TH_OK(tdm_get_bucket(r.e, bw, NULL, &bytes, NULL));
    TH_CHECK(bytes >= 4 * (size_t)r.width[l + 1] * (r.width[l] + 1),
             "stage 3: layer%d's bucket has %zu bytes for %d elements", l,
             bytes, r.width[l + 1] * (r.width[l] + 1));
    module_bytes[l] = bytes;
    if (bytes > *largest)
      *largest = bytes;
  }
  tdm_memory_info info;
  memset(&info, 0, sizeof info);
  info.size = sizeof info;
  TH_OK(tdm_get_memory_info(r.e, &info));
  TH_CHECK(info.gathered_params == 0, "window %d: %llu bytes gathered before "
           "any fetch", w, (unsigned long long)info.gathered_params);
  TH_OK(tdm_reset_peak_memory(r.e));
  dataset d;
  make_data(&r, size * B, &d);
  result res;
  train(&r, &d, 1, 1, -1, "window", &res);
  free_result(&res);
  free_data(&d);
  memset(&info, 0, sizeof info);
  info.size = sizeof info;
  TH_OK(tdm_get_memory_info(r.e, &info));
  TH_CHECK(info.gathered_params == 0, "window %d: %llu bytes still gathered "
           "after every module was released", w,
           (unsigned long long)info.gathered_params);
  close_run(&r);
  return info.peak_gathered_params;
}

static void window(void) {
  uint64_t bytes[NLAYERS], largest = 0, sum = 0;
  uint64_t peak = window_run(0, bytes, &largest);
  TH_CHECK(peak == largest, "window 0 N=%d: peak gathered %llu bytes, want "
           "the largest module's %llu", size, (unsigned long long)peak,
           (unsigned long long)largest);
  for (int l = 0; l < NLAYERS; l++)
    sum += bytes[l];
  int w = (int)(2 * sum / NLAYERS);
  uint64_t peak_w = window_run(w, bytes, &largest);
  TH_CHECK(peak_w >= largest && peak_w <= (uint64_t)w + largest,
           "window %d N=%d: peak gathered %llu bytes, want %llu .. %llu", w,
           size, (unsigned long long)peak_w, (unsigned long long)largest,
           (unsigned long long)(w + largest));
  if (rank == 0 && verbose)
    printf("window N=%d: largest module %llu bytes; peak %llu without "
           "prefetch, %llu with %d bytes\n", size,
           (unsigned long long)largest, (unsigned long long)peak,
           (unsigned long long)peak_w, w);
}

/* ---- (e) misuse -------------------------------------------------------------- */

/* Finalizes a context that should not have been created. */
static void drop(tdm_context **ctx) {
  if (*ctx)
    tdm_finalize(*ctx);
  *ctx = NULL;
}

static void misuse(void) {
  /* stage 3: the data pointer of a module not fetched is the one it has
   * while fetched (values only then); bad module indices */
  zconfig z3 = {"misuse", 3, TDM_OFFLOAD_NONE, TDM_UNSET, 0};
  setup s = {TDM_PRECISION_NO, 1, 0, z3};
  run r;
  void *data = NULL, *grad = NULL;
  if (open_run(&r, MODEL_DEEP, &s)) {
    void *unfetched = NULL;
    TH_OK(tdm_param_buffers(r.e, r.deep.weight[3], &unfetched, NULL));
    TH_FAILS(tdm_fetch_module(r.e, -1), TDM_ERR_INVALID_ARGUMENT, "module");
    TH_FAILS(tdm_fetch_module(r.e, NLAYERS), TDM_ERR_INVALID_ARGUMENT,
             "module");
    TH_FAILS(tdm_release_module(r.e, NLAYERS), TDM_ERR_INVALID_ARGUMENT,
             "module");
    TH_OK(tdm_fetch_module(r.e, r.deep.module[3]));
    TH_OK(tdm_param_buffers(r.e, r.deep.weight[3], &data, NULL));
    TH_CHECK(data == unfetched, "stage 3: the data pointer moved when the "
             "module was fetched (%p, then %p)", unfetched, data);
    TH_OK(tdm_release_module(r.e, r.deep.module[3]));
    /* inside a micro-step: tdm_gather_param is refused, and the micro-step
     * goes on */
    dataset d;
    make_data(&r, 2 * size * B, &d);
    float *out = malloc(sizeof *out * r.count[0]);
    double scale = 0;
    int stepped = -1;
    TH_OK(tdm_loss_scale(r.e, &scale));
    TH_OK(tdm_backward_begin(r.e));
    TH_FAILS(tdm_gather_param(r.e, r.param[0], out), TDM_ERR_INVALID_USAGE,
             "micro-step");
    TH_OK(forward_backward(&r, &d.x[(size_t)rank * B * d.in],
                           &d.y[(size_t)rank * B * d.out], B, scale));
    TH_OK(tdm_backward_end(r.e));
    TH_OK(tdm_step(r.opt, &stepped));
    TH_CHECK(stepped == 1, "stage 3: no update after the errors");
    TH_OK(tdm_gather_param(r.e, r.param[0], out));
    free(out);
    free_data(&d);
    close_run(&r);
  }
  /* stage 2: gradient pointers outside a micro-step too (t_stable checks
   * that they never move); stage 0: module range */
  for (int stage = 0; stage <= 2; stage += 2) {
    zconfig z = {"misuse", stage, TDM_OFFLOAD_NONE, TDM_UNSET, TDM_UNSET};
    s.z = z;
    if (!open_run(&r, MODEL_DEEP, &s))
      continue;
    TH_FAILS(tdm_fetch_module(r.e, -1), TDM_ERR_INVALID_ARGUMENT, "module");
    TH_FAILS(tdm_fetch_module(r.e, NLAYERS), TDM_ERR_INVALID_ARGUMENT,
             "module");
    TH_OK(tdm_param_buffers(r.e, r.deep.weight[0], &data, NULL));
    TH_OK(tdm_param_buffers(r.e, r.deep.weight[0], NULL, &grad));
    close_run(&r);
  }

  /* options that do not fit */
  tdm_context *ctx = NULL;
  tdm_options o = TDM_OPTIONS_INIT;
  o.zero_stage = 0;
  o.offload = TDM_OFFLOAD_OPTIMIZER;
  TH_FAILS(tdm_init_comm(MPI_COMM_WORLD, &o, &ctx), TDM_ERR_CONFIG,
           "offload=optimizer needs zero_stage");
  drop(&ctx);
  o.zero_stage = 2;
  o.offload = TDM_OFFLOAD_PARAMS;
  TH_FAILS(tdm_init_comm(MPI_COMM_WORLD, &o, &ctx), TDM_ERR_CONFIG,
           "offload=params needs zero_stage 3");
  drop(&ctx);
  /* An out-of-range tdm_options field is an invalid argument (as for
   * every field, t_options); the same value from the environment is a
   * configuration error. */
  o.offload = TDM_UNSET;
  o.zero_stage = 4;
  TH_FAILS(tdm_init_comm(MPI_COMM_WORLD, &o, &ctx), TDM_ERR_INVALID_ARGUMENT,
           "zero_stage = 4");
  drop(&ctx);
  setenv("TANDEM_ZERO_STAGE", "4", 1);
  TH_FAILS(tdm_init_comm(MPI_COMM_WORLD, NULL, &ctx), TDM_ERR_CONFIG,
           "TANDEM_ZERO_STAGE");
  drop(&ctx);
  setenv("TANDEM_ZERO_STAGE", "2", 1);
  TH_OK(tdm_init_comm(MPI_COMM_WORLD, NULL, &ctx));
  unsetenv("TANDEM_ZERO_STAGE");
  if (ctx) {
    tdm_options got = TDM_OPTIONS_INIT;
    TH_OK(tdm_get_options(ctx, &got));
    TH_CHECK(got.zero_stage == 2, "TANDEM_ZERO_STAGE=2 read as zero_stage %d",
             got.zero_stage);
    TH_OK(tdm_finalize(ctx));
  }

  /* ranks configured with different stages */
  if (size >= 2) {
    tdm_options m = TDM_OPTIONS_INIT;
    m.device = run_device();
    m.zero_stage = rank == 0 ? 1 : 2;
    ctx = NULL;
    TH_OK(tdm_init_comm(MPI_COMM_WORLD, &m, &ctx));
    tdm_engine *e = NULL;
    deep_model dm;
    TH_OK(tdm_engine_create(ctx, &e));
    TH_OK(deep_register(ctx, e, NLAYERS, small_width, 77, &dm));
    /* The ranks that differ from rank 0 find the mismatch; every rank
     * returns it, naming rank 1 (as for any registration mismatch). */
    TH_FAILS(tdm_prepare(e), TDM_ERR_MISMATCH, "zero stage");
    TH_CHECK(strstr(tdm_last_error(), "rank 1: ") != NULL, "%s",
             tdm_last_error());
    TH_OK(tdm_engine_destroy(e));
    deep_free(&dm);
    TH_OK(tdm_finalize(ctx));
  }
}

/* (f) Modules holding an f32 and an f64 parameter each (two buckets per
 * module at stage 3), SGD lr 0.1 on the loss sum (w - c)^2 / 2, whose
 * gradient w - c the test writes itself: after k steps every value is
 * c + (w0 - c) 0.9^k, at every stage, with a prefetch window smaller
 * than any module. */
#define MIXED_MODULES 5
#define MIXED_STEPS 10

static void mixed_dtypes(int stage) {
  tdm_options o = TDM_OPTIONS_INIT;
  o.zero_stage = stage;
  o.zero3_persistence_threshold = 0;
  o.zero3_prefetch_bytes = 100;
  o.first_bucket_bytes = 64;
  o.bucket_cap_bytes = 256;
  tdm_context *ctx = NULL;
  tdm_engine *e = NULL;
  tdm_optimizer *opt = NULL;
  TH_OK(tdm_init_comm(MPI_COMM_WORLD, &o, &ctx));
  TH_OK(tdm_engine_create(ctx, &e));
  int mod[MIXED_MODULES], p32[MIXED_MODULES], p64[MIXED_MODULES];
  int64_t n32[MIXED_MODULES], n64[MIXED_MODULES];
  for (int m = 0; m < MIXED_MODULES; m++) {
    char name[32];
    float a[64];
    double b[32];
    n32[m] = 7 + 13 * m;
    n64[m] = 3 + 5 * m;
    for (int i = 0; i < n32[m]; i++)
      a[i] = (float)(i + m);
    for (int i = 0; i < n64[m]; i++)
      b[i] = -(double)(i + 2 * m);
    snprintf(name, sizeof name, "m%d", m);
    TH_OK(tdm_add_module(e, name, &mod[m]));
    snprintf(name, sizeof name, "m%d.w", m);
    TH_OK(tdm_add_param(e, mod[m], name, TDM_F32, 1, &n32[m], a, 0, &p32[m]));
    snprintf(name, sizeof name, "m%d.d", m);
    TH_OK(tdm_add_param(e, mod[m], name, TDM_F64, 1, &n64[m], b, 0, &p64[m]));
  }
  TH_OK(tdm_prepare(e));
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  oo.lr = 0.1;
  TH_OK(tdm_optimizer_create(e, &oo, &opt));
  for (int k = 0; k < MIXED_STEPS; k++) {
    double scale;
    TH_OK(tdm_loss_scale(e, &scale));
    TH_OK(tdm_backward_begin(e));
    for (int m = 0; m < MIXED_MODULES; m++) {
      TH_OK(tdm_fetch_module(e, mod[m]));
      TH_OK(tdm_release_module(e, mod[m]));
    }
    for (int m = MIXED_MODULES - 1; m >= 0; m--) {
      float *w = NULL, *gw = NULL;
      double *d = NULL, *gd = NULL;
      TH_OK(tdm_fetch_module(e, mod[m]));
      TH_OK(tdm_param_buffers(e, p32[m], (void **)&w, (void **)&gw));
      TH_OK(tdm_param_buffers(e, p64[m], (void **)&d, (void **)&gd));
      for (int i = 0; w && gw && i < n32[m]; i++)
        gw[i] += (float)(scale * (w[i] - 1.0f));
      for (int i = 0; d && gd && i < n64[m]; i++)
        gd[i] += scale * (d[i] - 2.0);
      TH_OK(tdm_module_grads_ready(e, mod[m]));
      TH_OK(tdm_release_module(e, mod[m]));
    }
    TH_OK(tdm_backward_end(e));
    TH_OK(tdm_step(opt, NULL));
  }
  double f = pow(0.9, MIXED_STEPS), err32 = 0, err64 = 0;
  for (int m = 0; m < MIXED_MODULES; m++) {
    float a[64];
    double b[32];
    TH_OK(tdm_gather_param(e, p32[m], a));
    TH_OK(tdm_gather_param(e, p64[m], b));
    for (int i = 0; i < n32[m]; i++) {
      double w0 = i + m, want = 1.0 + (w0 - 1.0) * f;
      err32 = fmax(err32, fabs(a[i] - want) / fmax(1.0, fabs(want)));
    }
    for (int i = 0; i < n64[m]; i++) {
      double w0 = -(double)(i + 2 * m), want = 2.0 + (w0 - 2.0) * f;
      err64 = fmax(err64, fabs(b[i] - want) / fmax(1.0, fabs(want)));
    }
  }
  TH_CHECK(err32 <= 1e-6 && err64 <= 1e-12,
           "mixed f32/f64 modules, stage %d N=%d: relative error f32 %.3g "
           "f64 %.3g against the closed form", stage, size, err32, err64);
  TH_OK(tdm_optimizer_destroy(opt));
  TH_OK(tdm_engine_destroy(e));
  TH_OK(tdm_finalize(ctx));
}

int main(int argc, char **argv) {
  int provided = th_init(&argc, &argv, MPI_THREAD_MULTIPLE, &rank, &size);
  thread_ok = provided == MPI_THREAD_MULTIPLE;
  const char *v = getenv("TDM_TEST_VERBOSE");
  verbose = v && *v && strcmp(v, "0") != 0;
  const char *f = getenv("TANDEM_TEST_FAKE_GPU");
  fake_gpu = f && strcmp(f, "1") == 0;
  const char *san = getenv("TDM_SANITIZERS");
  if (san && strcmp(san, "yes") == 0)
    equiv_steps = 20; /* the same paths; two such runs side by side
                         took > 120 s */
  double t0 = MPI_Wtime();
  for (int model = MODEL_MLP; model <= MODEL_DEEP; model++)
    for (int p = TDM_PRECISION_NO; p <= TDM_PRECISION_BF16; p++)
      for (int accum = 1; accum <= 2; accum++)
        equivalence(model, p, accum);
  double t1 = MPI_Wtime();
  fp16_scaler();
  memory(TDM_PRECISION_NO);
  memory(TDM_PRECISION_BF16);
  for (int c = 0; c < NCONFIGS; c++)
    if (configs[c].offload != TDM_OFFLOAD_NONE) {
      memory_offload(&configs[c], TDM_PRECISION_NO);
      memory_offload(&configs[c], TDM_PRECISION_BF16);
    }
  estimates();
  window();
  for (int stage = 0; stage <= 3; stage++)
    mixed_dtypes(stage);
  misuse();
  if (rank == 0)
    printf("t_zero N=%d: equivalence %.1f s, the rest %.1f s%s\n", size,
           t1 - t0, MPI_Wtime() - t1,
           thread_ok ? "" : " (no MPI_THREAD_MULTIPLE: all runs poll)");
  int rc = th_finish("t_zero");
  MPI_Finalize();
  return rc;
}
