/*
 * zero.c - ZeRO stages 0-3 and offload: per-rank memory by category and
 * communication volume per step, measured on a deep_model trained with
 * AdamW, beside the ZeRO paper's formulas for the same parameter count
 * and world size; and the paper's own 7.5B-parameter example.
 *
 *   mpirun -np N ./bench/zero [--layers L] [--width W] [--batch B]
 *          [--steps S] [--warmup W] [--bf16] [--reduce-dtype f32|bf16]
 *          [--prefetch BYTES] [--bucket-cap BYTES] [--configs LIST]
 *          [--verbose] [--check]
 *
 * Each configuration (stage 0, 1, 2, 2 with TDM_OFFLOAD_OPTIMIZER, 3, 3
 * with TDM_OFFLOAD_PARAMS) gets its own context (tdm_init_comm on
 * MPI_COMM_WORLD, which the benchmark initialized) with zero_stage,
 * offload and mixed precision in tdm_options, and
 * zero3_persistence_threshold 0, so that no module stays gathered.  It
 * trains a few AdamW steps and prints:
 *   [1] memory per rank: params, grads, optimizer state, master weights
 *       and comm buffers (current after a step, every module released),
 *       peak_total, and the model-state total beside
 *       tdm_estimate_model_state (Rajbhandari et al. 2020, section 5),
 *       and the growth of the resident set the OS counts (VmRSS) beside
 *       the same total, within 10% + 16 MiB;
 *   [2] median step time and communication volume per step
 *       (tdm_get_comm_volume over the timed steps) beside the formula:
 *       stage 0 2 Psi b (N-1)/N, stages 1-2 (Psi b_r + Psi b_c) (N-1)/N,
 *       stage 3 (Psi b_r + 2 Psi b_c) (N-1)/N, where b_r is the reduce
 *       dtype's size and b_c the compute dtype's;
 *   [3] the paper's row: Psi = 7.5B, N = 64, mixed-precision Adam (K = 12),
 *       stages 0-3 against 120 / 31.4 / 16.6 / 1.9 GB.
 * The memory and volume comparisons allow the 32-element padding of
 * parameters and bucket chunks; timings never decide the exit status.
 * --check runs a tiny model (fp32 and bf16) in a second.  See
 * bench/README.md.
 */
#define _POSIX_C_SOURCE 200809L

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <mpi.h>

#include "tandem.h"
#include "bench_util.h"
#include "tandem_mpi.h"
#include "deep_model.h"

#define MAX_STEPS 1000
#define MAX_LAYERS 1000
#define NCAT 4            /* model-state categories: params .. master     */
#define PAD_ELEMS 32      /* the library's padding unit, in elements      */
#define PAD_BYTES 4       /* widest element of a padded buffer (f32)      */
#define VOL_TOL 0.05      /* relative tolerance of the volume per step    */
#define LR 1e-3
#define WD 1e-2
#define SEED 20240531u
#define DATA_SEED 7u
#define LOSS_TOL_F32 1e-4 /* relative, every fp32 config vs stage 0's     */
#define LOSS_TOL_16 1e-2  /* the same under bf16                           */
#define RSS_TOL 0.10      /* relative, the measured resident set growth  */
#define RSS_SLACK (16u << 20) /* and bytes: MPI's and malloc's own       */
#define PAPER_PSI 7500000000ull
#define PAPER_N 64


/* ---- configurations ----------------------------------------------------- */

typedef struct {
  const char *name;  /* --configs token */
  const char *label; /* table row */
  int stage, offload;
} config_t;

static const config_t CONFIGS[] = {
    {"0", "stage 0 (DDP)", 0, TDM_OFFLOAD_NONE},
    {"1", "stage 1", 1, TDM_OFFLOAD_NONE},
    {"2", "stage 2", 2, TDM_OFFLOAD_NONE},
    {"2+opt", "stage 2 +offload opt", 2, TDM_OFFLOAD_OPTIMIZER},
    {"3", "stage 3", 3, TDM_OFFLOAD_NONE},
    {"3+params", "stage 3 +offload params", 3, TDM_OFFLOAD_PARAMS},
};
#define NCONFIGS ((int)(sizeof CONFIGS / sizeof CONFIGS[0]))

static const char *const CAT_NAMES[TDM_MEM_NUM_CATEGORIES] = {
    "params", "grads", "optim", "master", "comm"};

/* ---- options ------------------------------------------------------------ */

typedef struct {
  int layers, width, batch, steps, warmup;
  int bf16;          /* --bf16: mixed precision bf16 */
  int reduce_dtype;  /* TDM_UNSET: f32, or bf16 under --bf16 */
  int prefetch;      /* TDM_UNSET: the library's */
  int bucket_cap;    /* TDM_UNSET: the library's (--check: small) */
  int first_bucket;  /* TDM_UNSET: the library's (--check: small) */
  unsigned configs;  /* bit i: CONFIGS[i] */
  int verbose, check;
} options_t;

static void usage(FILE *out) {
  fprintf(out,
      "usage: mpirun -np N zero [options]\n"
      "  --layers L          fully connected layers (default 12)\n"
      "  --width W           width of every layer (default 1000: about\n"
      "                      12M parameters with 12 layers)\n"
      "  --batch B           samples per rank per step (default 8)\n"
      "  --steps S           timed steps; the median is reported "
      "(default 5)\n"
      "  --warmup W          untimed steps first (default 1)\n"
      "  --bf16              mixed precision: bf16 compute copies, f32\n"
      "                      master weights (default: fp32 throughout)\n"
      "  --reduce-dtype D    f32 or bf16: dtype of the gradients and their\n"
      "                      reduction (default f32; bf16 under --bf16)\n"
      "  --prefetch BYTES    ZeRO-3 zero3_prefetch_bytes (K, M, G; default:\n"
      "                      the library's, 50 MiB)\n"
      "  --bucket-cap BYTES  gradient bucket cap (default: the library's)\n"
      "  --configs LIST      comma-separated among 0,1,2,2+opt,3,3+params,\n"
      "                      or all (default all)\n"
      "  --verbose           also print tdm_memory_report per configuration\n"
      "  --check             quick run for the tests: a 5-layer model of odd\n"
      "                      widths, fp32 and bf16, 1 warmup + 2 steps, small\n"
      "                      buckets; exit 1 unless every check holds\n");
}

static unsigned parse_configs(const char *s, int *ok) {
  char buf[128];
  unsigned mask = 0;
  snprintf(buf, sizeof buf, "%s", s);
  for (char *tok = strtok(buf, ","); tok != NULL; tok = strtok(NULL, ",")) {
    int found = 0;
    if (strcmp(tok, "all") == 0) {
      mask |= (1u << NCONFIGS) - 1u;
      continue;
    }
    for (int i = 0; i < NCONFIGS; i++)
      if (strcmp(tok, CONFIGS[i].name) == 0) {
        mask |= 1u << i;
        found = 1;
      }
    if (!found) *ok = 0;
  }
  if (mask == 0) *ok = 0;
  return mask;
}

/* 0: go on; -1: help printed (exit 0); 2: bad usage. */
static int parse_options(int argc, char **argv, options_t *o) {
  int given_layers = 0, given_width = 0, given_batch = 0, given_steps = 0,
      given_warmup = 0;
  const char *bad = NULL;
  memset(o, 0, sizeof *o);
  o->layers = 12;
  o->width = 1000;
  o->batch = 8;
  o->steps = 5;
  o->warmup = 1;
  o->reduce_dtype = o->prefetch = o->bucket_cap = o->first_bucket =
      TDM_UNSET;
  o->configs = (1u << NCONFIGS) - 1u;
  for (int i = 1; i < argc && bad == NULL; i++) {
    const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    int ok = 1;
    size_t b = 0;
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      if (g_rank == 0) usage(stdout);
      return -1;
    }
    if (strcmp(a, "--check") == 0) { o->check = 1; continue; }
    if (strcmp(a, "--bf16") == 0) { o->bf16 = 1; continue; }
    if (strcmp(a, "--verbose") == 0) { o->verbose = 1; continue; }
    if (val == NULL) ok = 0;
    else if (strcmp(a, "--layers") == 0)
      o->layers = (int)parse_long(val, 1, MAX_LAYERS, &ok), given_layers = 1;
    else if (strcmp(a, "--width") == 0)
      o->width = (int)parse_long(val, 1, 1 << 20, &ok), given_width = 1;
    else if (strcmp(a, "--batch") == 0)
      o->batch = (int)parse_long(val, 1, 1 << 20, &ok), given_batch = 1;
    else if (strcmp(a, "--steps") == 0)
      o->steps = (int)parse_long(val, 1, MAX_STEPS, &ok), given_steps = 1;
    else if (strcmp(a, "--warmup") == 0)
      o->warmup = (int)parse_long(val, 0, MAX_STEPS, &ok), given_warmup = 1;
    else if (strcmp(a, "--reduce-dtype") == 0)
      o->reduce_dtype = strcmp(val, "f32") == 0    ? TDM_F32
                        : strcmp(val, "bf16") == 0 ? TDM_BF16
                                                   : (ok = 0, TDM_UNSET);
    else if (strcmp(a, "--prefetch") == 0)
      ok = (b = parse_bytes(val)) > 0, o->prefetch = (int)b;
    else if (strcmp(a, "--bucket-cap") == 0)
      ok = (b = parse_bytes(val)) > 0, o->bucket_cap = (int)b;
    else if (strcmp(a, "--configs") == 0)
      o->configs = parse_configs(val, &ok);
    else
      ok = 0;
    if (!ok) bad = a;
    i++;
  }
  if (bad == NULL && o->check) {
    if (!given_layers) o->layers = 5;
    if (!given_width) o->width = 0; /* the odd widths of check_width */
    if (!given_batch) o->batch = 4;
    if (!given_steps) o->steps = 2;
    if (!given_warmup) o->warmup = 1;
    if (o->bucket_cap == TDM_UNSET) o->bucket_cap = 2048;
    o->first_bucket = 1024;
  }
  if (bad == NULL &&
      (double)o->width * o->width * o->layers > (double)INT32_MAX)
    bad = "--width x --width x --layers (over 2^31 parameters)";
  if (bad == NULL) return 0;
  if (g_rank == 0) {
    fprintf(stderr, "zero: bad option or value: %s\n", bad);
    usage(stderr);
  }
  return 2;
}

/* --check's layer widths: primes, so that no tensor is a multiple of the
 * 32-element padding unit. */
static int check_width(int i) {
  static const int w[] = {23, 37, 29, 41, 19, 13, 31, 17};
  return w[i % (int)(sizeof w / sizeof w[0])];
}

/* ---- one configuration -------------------------------------------------- */

typedef struct {
  const config_t *c;
  int precision, reduce_dtype;
  size_t bc, br; /* bytes per element: compute copies, gradients */
  uint64_t psi;
  int nparams, nbuckets;
  tdm_progress_mode mode;
  int prefetch, bucket_cap, first_bucket; /* resolved options */
  /* Max and min over ranks, summed over host and device. */
  uint64_t cur_max[TDM_MEM_NUM_CATEGORIES], cur_min[TDM_MEM_NUM_CATEGORIES];
  uint64_t states_max, states_min;
  uint64_t peak_total, peak_comm, gathered, peak_gathered;
  uint64_t formula[TDM_MEM_NUM_CATEGORIES], formula_states;
  uint64_t mem_slack; /* per category */
  double ms, ms_min;  /* median and minimum step time (max over ranks) */
  double vol_max, vol_min, vol_formula, vol_slack; /* bytes per step */
  char terms[64];
  double loss; /* last step's, mean over ranks */
  int stepped_all;
  char *report; /* --verbose: tdm_memory_report of rank 0 */
  int mem_ok, vol_ok, loss_ok;
  /* The resident set the OS counts (VmRSS), max and min over ranks: its
   * growth from before tdm_engine_create to after the steps, less the
   * batch; beside formula_states, within RSS_TOL + RSS_SLACK. */
  uint64_t rss_max, rss_min;
  int rss_ok;
} result_t;

static void *xmalloc(size_t bytes) {
  void *p = malloc(bytes ? bytes : 1);
  if (p == NULL) die("malloc", "out of memory", __FILE__, __LINE__);
  return p;
}

/* The formula's volume per step and its padding allowance; *terms names
 * the collectives and their element sizes. */
static void volume_formula(result_t *r, int n) {
  double f = n > 0 ? (double)(n - 1) / n : 0.0;
  double psi = (double)r->psi;
  double pad = (double)PAD_ELEMS * (r->nparams + (double)n * r->nbuckets);
  double br = (double)r->br, bc = (double)r->bc;
  if (r->c->stage == 0) {
    r->vol_formula = 2.0 * psi * br * f;
    r->vol_slack = 2.0 * pad * br * f;
    snprintf(r->terms, sizeof r->terms, "allreduce %zuB", r->br);
  } else if (r->c->stage < 3) {
    r->vol_formula = psi * (br + bc) * f;
    r->vol_slack = pad * (br + bc) * f;
    snprintf(r->terms, sizeof r->terms, "rs %zuB + ag %zuB", r->br, r->bc);
  } else {
    r->vol_formula = psi * (br + 2.0 * bc) * f;
    r->vol_slack = pad * (br + 2.0 * bc) * f;
    snprintf(r->terms, sizeof r->terms, "2 ag %zuB + rs %zuB", r->bc, r->br);
  }
}

/* This process's resident set, as the OS counts it (/proc/self/statm),
 * after glibc gave back the free memory it keeps (the configurations run
 * one after the other in this process). */
static uint64_t rss_bytes(void) {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
  unsigned long long size = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL) return 0;
  if (fscanf(f, "%llu %llu", &size, &resident) != 2) resident = 0;
  fclose(f);
  return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

static void minmax_u64(uint64_t v, uint64_t *mx, uint64_t *mn) {
  uint64_t a = v, b = v;
  MPI_CHECK(MPI_Allreduce(&a, mx, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD));
  MPI_CHECK(MPI_Allreduce(&b, mn, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD));
}

static void run_config(const options_t *o, const config_t *c, int bf16,
                       int reduce_dtype, result_t *r) {
  tdm_options to = TDM_OPTIONS_INIT;
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  tdm_context *ctx = NULL;
  tdm_engine *e = NULL;
  tdm_optimizer *opt = NULL;
  tdm_rng *rng = NULL;
  deep_model m;
  int n = 0, total = o->warmup + o->steps;
  int *width = xmalloc(sizeof *width * (size_t)(o->layers + 1));
  double t[MAX_STEPS];
  uint64_t vol0 = 0, vol1 = 0;

  memset(r, 0, sizeof *r);
  r->c = c;
  r->precision = bf16 ? TDM_PRECISION_BF16 : TDM_PRECISION_NO;
  r->reduce_dtype = reduce_dtype;
  TDM_CHECK(tdm_dtype_size(bf16 ? TDM_BF16 : TDM_F32, &r->bc));
  TDM_CHECK(tdm_dtype_size((tdm_dtype)reduce_dtype, &r->br));

  to.device = TDM_DEVICE_CPU; /* deep_model computes on host pointers */
  to.gradient_accumulation_steps = 1;
  to.mixed_precision = r->precision;
  to.reduce_dtype = reduce_dtype;
  to.zero_stage = c->stage;
  to.offload = c->offload;
  to.zero3_persistence_threshold = 0; /* purely sharded stage 3 */
  to.zero3_prefetch_bytes = o->prefetch;
  to.bucket_cap_bytes = o->bucket_cap;
  to.first_bucket_bytes = o->first_bucket;
  TDM_CHECK(tdm_init_comm(MPI_COMM_WORLD, &to, &ctx));
  g_ctx = ctx;
  TDM_CHECK(tdm_get_world_size(ctx, &n));
  tdm_options res = TDM_OPTIONS_INIT;
  TDM_CHECK(tdm_get_options(ctx, &res));
  r->prefetch = res.zero3_prefetch_bytes;
  r->bucket_cap = res.bucket_cap_bytes;
  r->first_bucket = res.first_bucket_bytes;
  uint64_t rss0 = rss_bytes();
  TDM_CHECK(tdm_engine_create(ctx, &e));
  for (int i = 0; i <= o->layers; i++)
    width[i] = o->width > 0 ? o->width : check_width(i);
  TDM_CHECK(deep_register(ctx, e, o->layers, width, SEED, &m));
  TDM_CHECK(tdm_prepare(e));
  r->psi = (uint64_t)deep_numel(&m);
  r->nparams = 2 * o->layers;
  TDM_CHECK(tdm_get_bucket_count(e, &r->nbuckets));
  TDM_CHECK(tdm_get_progress_mode(e, &r->mode));
  oo.kind = TDM_OPTIMIZER_ADAMW;
  oo.lr = LR;
  oo.weight_decay = WD;
  TDM_CHECK(tdm_optimizer_create(e, &oo, &opt));

  /* This rank's batch, the same in every configuration and step. */
  size_t nx = (size_t)o->batch * (size_t)width[0];
  size_t ny = (size_t)o->batch * (size_t)width[o->layers];
  float *x = xmalloc(sizeof *x * nx), *y = xmalloc(sizeof *y * ny);
  TDM_CHECK(tdm_rng_create(ctx, DATA_SEED, TDM_RNG_PER_RANK, &rng));
  TDM_CHECK(tdm_rng_normal_f32(rng, x, nx, 0.0f, 1.0f));
  TDM_CHECK(tdm_rng_normal_f32(rng, y, ny, 0.0f, 0.5f));
  TDM_CHECK(tdm_rng_destroy(rng));

  /* The peaks cover the training steps (optimizer state included), not
   * tdm_prepare's broadcast. */
  TDM_CHECK(tdm_reset_peak_memory(e));
  r->stepped_all = 1;
  double loss = 0.0;
  for (int s = 0; s < total; s++) {
    double scale = 0.0;
    int stepped = 0;
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    if (s == o->warmup) TDM_CHECK(tdm_get_comm_volume(e, &vol0));
    double t0 = MPI_Wtime();
    TDM_CHECK(tdm_backward_begin(e));
    TDM_CHECK(tdm_loss_scale(e, &scale));
    TDM_CHECK(deep_forward_backward(e, &m, x, y, o->batch, scale, &loss));
    TDM_CHECK(tdm_backward_end(e));
    TDM_CHECK(tdm_step(opt, &stepped));
    double dt = MPI_Wtime() - t0;
    if (s >= o->warmup) t[s - o->warmup] = dt;
    if (!stepped) r->stepped_all = 0;
  }
  TDM_CHECK(tdm_get_comm_volume(e, &vol1));
  uint64_t rss1 = rss_bytes(), batch = sizeof(float) * (nx + ny);
  uint64_t grown = rss1 > rss0 + batch ? rss1 - rss0 - batch : 0;

  /* Step times: the max over ranks, then median and minimum. */
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, t, o->steps, MPI_DOUBLE, MPI_MAX,
                          MPI_COMM_WORLD));
  r->ms = median(t, o->steps) * 1e3;
  r->ms_min = t[0];
  for (int s = 1; s < o->steps; s++) r->ms_min = t[s] < r->ms_min ? t[s]
                                                                   : r->ms_min;
  r->ms_min *= 1e3;
  MPI_CHECK(MPI_Allreduce(&loss, &r->loss, 1, MPI_DOUBLE, MPI_SUM,
                          MPI_COMM_WORLD));
  r->loss /= n;
  int st_all = r->stepped_all;
  MPI_CHECK(MPI_Allreduce(&st_all, &r->stepped_all, 1, MPI_INT, MPI_MIN,
                          MPI_COMM_WORLD));

  /* Memory now: after a step, with every module released. */
  tdm_memory_info mi;
  memset(&mi, 0, sizeof mi);
  mi.size = sizeof mi;
  TDM_CHECK(tdm_get_memory_info(e, &mi));
  uint64_t states = 0;
  for (int k = 0; k < TDM_MEM_NUM_CATEGORIES; k++) {
    uint64_t v = mi.current[k][TDM_MEM_HOST] + mi.current[k][TDM_MEM_DEVICE];
    if (k < NCAT) states += v;
    minmax_u64(v, &r->cur_max[k], &r->cur_min[k]);
  }
  uint64_t dummy;
  minmax_u64(states, &r->states_max, &r->states_min);
  minmax_u64(mi.peak_total, &r->peak_total, &dummy);
  minmax_u64(mi.peak[TDM_MEM_COMM_BUFFERS][TDM_MEM_HOST] +
                 mi.peak[TDM_MEM_COMM_BUFFERS][TDM_MEM_DEVICE],
             &r->peak_comm, &dummy);
  minmax_u64(mi.gathered_params, &r->gathered, &dummy);
  minmax_u64(mi.peak_gathered_params, &r->peak_gathered, &dummy);
  uint64_t v = vol1 - vol0, vmax = 0, vmin = 0;
  minmax_u64(v, &vmax, &vmin);
  r->vol_max = (double)vmax / o->steps;
  r->vol_min = (double)vmin / o->steps;

  if (o->verbose) {
    size_t need = 0;
    TDM_CHECK(tdm_memory_report(e, NULL, 0, &need));
    char *buf = xmalloc(need + 1);
    TDM_CHECK(tdm_memory_report(e, buf, need + 1, NULL));
    r->report = buf;
  }

  /* The formulas for the same Psi and N. */
  TDM_CHECK(tdm_estimate_model_state(r->psi, n, c->stage,
                                     (tdm_precision)r->precision,
                                     (tdm_dtype)reduce_dtype, 2,
                                     r->formula));
  for (int k = 0; k < NCAT; k++) r->formula_states += r->formula[k];
  r->mem_slack = (uint64_t)PAD_BYTES * PAD_ELEMS *
                 ((uint64_t)r->nparams + (uint64_t)n * (uint64_t)r->nbuckets);
  volume_formula(r, n);
  minmax_u64(grown, &r->rss_max, &r->rss_min);
  double rss_tol = RSS_TOL * (double)r->formula_states + RSS_SLACK;
  r->rss_ok = rss0 > 0 &&
              fabs((double)r->rss_max - (double)r->formula_states) <= rss_tol &&
              fabs((double)r->rss_min - (double)r->formula_states) <= rss_tol;

  /* (b) every category within [formula, formula + slack], on every rank;
   * (c) the volume within 5% + padding of the formula. */
  r->mem_ok = 1;
  for (int k = 0; k < NCAT; k++)
    if (r->cur_min[k] < r->formula[k] ||
        r->cur_max[k] > r->formula[k] + r->mem_slack)
      r->mem_ok = 0;
  double tol = VOL_TOL * r->vol_formula + r->vol_slack;
  r->vol_ok = fabs(r->vol_max - r->vol_formula) <= tol &&
              fabs(r->vol_min - r->vol_formula) <= tol;
  r->loss_ok = isfinite(r->loss) && r->stepped_all;

  TDM_CHECK(tdm_optimizer_destroy(opt));
  TDM_CHECK(tdm_engine_destroy(e));
  deep_free(&m);
  g_ctx = NULL;
  TDM_CHECK(tdm_finalize(ctx));
  free(x);
  free(y);
  free(width);
}

/* ---- output ------------------------------------------------------------- */

typedef struct {
  double div;
  const char *name, *size;
} unit_t;

static const char *mode_name(tdm_progress_mode m) {
  return m == TDM_PROGRESS_THREAD ? "thread" : "poll";
}

static const char *dtype_name(int d) {
  return d == TDM_BF16 ? "bf16" : d == TDM_F16 ? "f16" : "f32";
}

static void print_memory_table(const result_t *r, int nr, unit_t u) {
  say("#   %-24s %9s %9s %9s %9s %9s %10s %10s %7s %10s %9s %9s\n",
      "config", "params", "grads", "optim", "master", "comm", "states",
      "formula", "ratio", "peak_total", "comm.pk", "gath.pk");
  for (int i = 0; i < nr; i++) {
    const result_t *x = &r[i];
    say("    %-24s", x->c->label);
    for (int k = 0; k < TDM_MEM_NUM_CATEGORIES; k++)
      say(" %9.3f", (double)x->cur_max[k] / u.div);
    say(" %10.3f %10.3f %7.4f %10.3f %9.3f %9.3f%s\n",
        (double)x->states_max / u.div, (double)x->formula_states / u.div,
        x->formula_states ? (double)x->states_max / (double)x->formula_states
                          : 0.0,
        (double)x->peak_total / u.div, (double)x->peak_comm / u.div,
        (double)x->peak_gathered / u.div,
        x->mem_ok ? "" : "  MISMATCH");
  }
}

static void print_formula_table(const result_t *r, int nr, unit_t u) {
  say("#   formula by category (tdm_estimate_model_state):\n");
  for (int i = 0; i < nr; i++) {
    const result_t *x = &r[i];
    say("    %-24s", x->c->label);
    for (int k = 0; k < NCAT; k++)
      say(" %9.3f", (double)x->formula[k] / u.div);
    say("    %d buckets; padding allowance %.3f per category\n",
        x->nbuckets, (double)x->mem_slack / u.div);
  }
}

static void print_step_table(const result_t *r, int nr, unit_t u) {
  say("#   %-24s %9s %9s %11s %11s %7s  %-18s %10s\n", "config", "ms/step",
      "min ms", "comm/step", "formula", "ratio", "formula terms", "loss");
  for (int i = 0; i < nr; i++) {
    const result_t *x = &r[i];
    double ratio = x->vol_formula > 0.0 ? x->vol_max / x->vol_formula
                                        : (x->vol_max == 0.0 ? 1.0 : 0.0);
    say("    %-24s %9.2f %9.2f %11.3f %11.3f %7.4f  %-18s %10.6f%s%s\n",
        x->c->label, x->ms, x->ms_min, x->vol_max / u.div,
        x->vol_formula / u.div, ratio, x->terms, x->loss,
        x->vol_ok ? "" : "  MISMATCH", x->loss_ok ? "" : "  BAD LOSS");
  }
}

/* One precision: every selected configuration, then the two tables. */
static int run_set(const options_t *o, int bf16, int n, double *mem_lo,
                   double *mem_hi, double *vol_lo, double *vol_hi) {
  result_t r[NCONFIGS];
  int nr = 0, failures = 0;
  int rdt = o->reduce_dtype != TDM_UNSET ? o->reduce_dtype
                                         : bf16 ? TDM_BF16 : TDM_F32;
  char widths[160];
  uint64_t psi = 0;
  size_t len = 0;
  for (int i = 0; i <= o->layers; i++) {
    int w = o->width > 0 ? o->width : check_width(i);
    if (i < o->layers) {
      int w1 = o->width > 0 ? o->width : check_width(i + 1);
      psi += (uint64_t)w * (uint64_t)w1 + (uint64_t)w1;
    }
    if (o->width > 0 || len + 16 >= sizeof widths) continue;
    len += (size_t)snprintf(widths + len, sizeof widths - len, "%s%d",
                            i ? "-" : "", w);
  }
  if (o->width > 0)
    snprintf(widths, sizeof widths, "%d wide", o->width);
  say("#\n# %s AdamW (lr %g, weight decay %g): deep_model of %d layers "
      "(%s), Psi = %llu parameters in %d tensors; N = %d, batch %d per "
      "rank\n", bf16 ? "mixed-precision bf16" : "fp32", LR, WD, o->layers,
      widths, (unsigned long long)psi, 2 * o->layers, n, o->batch);
  for (int i = 0; i < NCONFIGS; i++)
    if (o->configs & (1u << i)) run_config(o, &CONFIGS[i], bf16, rdt, &r[nr++]);
  if (r[0].psi != psi) {
    failures++;
    say("# MISMATCH: deep_numel says %llu parameters\n",
        (unsigned long long)r[0].psi);
  }
  uint64_t ref = 0; /* the unit: from the largest formula */
  for (int i = 0; i < nr; i++)
    if (r[i].formula_states > ref) ref = r[i].formula_states;
  unit_t u = ref >= 10000000u ? (unit_t){1e6, "MB", "1e6"}
                              : (unit_t){1e3, "kB", "1e3"};
  say("#   compute copies %s (b_c %zu B), gradients and their reduction %s "
      "(b_r %zu B); progress %s; zero3_persistence_threshold 0; "
      "zero3_prefetch_bytes %d; buckets: first %d B, cap %d B; %d warmup "
      "+ %d timed steps\n", bf16 ? "bf16" : "f32", r[0].bc, dtype_name(rdt),
      r[0].br, mode_name(r[0].mode), r[0].prefetch, r[0].first_bucket,
      r[0].bucket_cap, o->warmup, o->steps);
  say("#\n# [1] memory per rank, %s = %s bytes: current after a step with "
      "every module released (max over ranks)\n", u.name, u.size);
  say("#   states = params + grads + optim + master; formula = "
      "tdm_estimate_model_state(Psi, N) (no padding); ratio = states / "
      "formula\n");
  say("#   peak_total: of the sum of all categories, since the first step; "
      "comm.pk: peak of comm; gath.pk: peak of the gathered ZeRO-3 modules "
      "(part of params)\n");
  print_memory_table(r, nr, u);
  print_formula_table(r, nr, u);
  say("#   resident set per rank as the OS counts it (VmRSS): its growth "
      "from before tdm_engine_create to after the steps, less the batch, "
      "min..max over ranks, beside the formula (allowed: %.0f%% + %u "
      "MiB)\n", RSS_TOL * 100, RSS_SLACK >> 20);
  for (int i = 0; i < nr; i++)
    say("    %-24s %10.3f..%-10.3f formula %10.3f  ratio %.4f%s\n",
        r[i].c->label, (double)r[i].rss_min / u.div,
        (double)r[i].rss_max / u.div, (double)r[i].formula_states / u.div,
        r[i].formula_states ? (double)r[i].rss_max / r[i].formula_states
                            : 0.0,
        r[i].rss_ok ? "" : "  MISMATCH");
  say("#\n# [2] step time (median and minimum over the timed steps of the "
      "max over ranks) and communication per rank per step, %s\n", u.name);
  say("#   comm/step: tdm_get_comm_volume over the timed steps / steps; "
      "formula: stage 0 2 Psi b_r (N-1)/N, stages 1-2 Psi (b_r + b_c) "
      "(N-1)/N, stage 3 Psi (b_r + 2 b_c) (N-1)/N\n");
  say("#   (rs: reduce-scatter of gradients, ag: all-gather of parameters; "
      "b_r %zu B, b_c %zu B); loss: the last step's, mean over ranks\n",
      r[0].br, r[0].bc);
  print_step_table(r, nr, u);
  for (int i = 0; i < nr; i++) {
    if (r[i].report == NULL) continue;
    size_t rlen = strlen(r[i].report);
    say("#   tdm_memory_report, %s (rank 0):\n%s%s", r[i].c->label,
        r[i].report, rlen > 0 && r[i].report[rlen - 1] != '\n' ? "\n" : "");
    free(r[i].report);
  }
  for (int i = 0; i < nr; i++) {
    double mr = r[i].formula_states
                    ? (double)r[i].states_max / (double)r[i].formula_states
                    : 1.0;
    double vr = r[i].vol_formula > 0.0 ? r[i].vol_max / r[i].vol_formula
                                       : (r[i].vol_max == 0.0 ? 1.0 : 0.0);
    if (mr < *mem_lo) *mem_lo = mr;
    if (mr > *mem_hi) *mem_hi = mr;
    if (vr < *vol_lo) *vol_lo = vr;
    if (vr > *vol_hi) *vol_hi = vr;
    if (!r[i].mem_ok) {
      failures++;
      say("# MISMATCH: %s: a model-state category is outside [formula, "
          "formula + %llu B] on some rank:", r[i].c->label,
          (unsigned long long)r[i].mem_slack);
      for (int k = 0; k < NCAT; k++)
        say(" %s %llu..%llu vs %llu", CAT_NAMES[k],
            (unsigned long long)r[i].cur_min[k],
            (unsigned long long)r[i].cur_max[k],
            (unsigned long long)r[i].formula[k]);
      say("\n");
    }
    if (!r[i].rss_ok) {
      failures++;
      say("# MISMATCH: %s: resident set grew %llu..%llu B vs formula %llu B "
          "(allowed: %.0f%% + %u MiB)\n", r[i].c->label,
          (unsigned long long)r[i].rss_min, (unsigned long long)r[i].rss_max,
          (unsigned long long)r[i].formula_states, RSS_TOL * 100,
          RSS_SLACK >> 20);
    }
    if (!r[i].vol_ok) {
      failures++;
      say("# MISMATCH: %s: communication %.0f..%.0f B per step vs formula "
          "%.0f B (allowed: 5%% + %.0f B of padding)\n", r[i].c->label,
          r[i].vol_min, r[i].vol_max, r[i].vol_formula, r[i].vol_slack);
    }
    /* Every configuration trains the same model on the same data. */
    double tol = bf16 ? LOSS_TOL_16 : LOSS_TOL_F32;
    int ok = r[i].loss_ok &&
             fabs(r[i].loss - r[0].loss) <= tol * fabs(r[0].loss);
    if (!ok) {
      failures++;
      say("# MISMATCH: %s: last loss %.9g vs %.9g of %s (relative tolerance "
          "%g)%s\n", r[i].c->label, r[i].loss, r[0].loss, r[0].c->label, tol,
          r[i].stepped_all ? "" : "; a step was skipped");
    }
  }
  return failures;
}

/* [3] The ZeRO paper's example: returns the number of mismatches. */
static int paper_row(void) {
  static const char *const paper[4] = {"120", "31.4", "16.6", "1.9"};
  int failures = 0;
  say("#\n# [3] ZeRO paper (Rajbhandari et al. 2020, Figure 1 / section 5): "
      "Psi = 7.5B, N = %d, mixed-precision Adam (K = 12),\n"
      "#   tdm_estimate_model_state(7500000000, %d, stage, "
      "TDM_PRECISION_FP16, TDM_F16, 2), GB = 1e9 bytes per rank\n",
      PAPER_N, PAPER_N);
  say("#   %-8s %9s %9s %9s %9s %10s %7s\n", "stage", "params", "grads",
      "optim", "master", "total", "paper");
  for (int s = 0; s <= 3; s++) {
    uint64_t b[TDM_MEM_NUM_CATEGORIES] = {0}, total = 0;
    char got[32];
    TDM_CHECK(tdm_estimate_model_state(PAPER_PSI, PAPER_N, s,
                                       TDM_PRECISION_FP16, TDM_F16, 2, b));
    for (int k = 0; k < NCAT; k++) total += b[k];
    double gb = (double)total / 1e9;
    snprintf(got, sizeof got, s == 0 ? "%.0f" : "%.1f", gb);
    int ok = strcmp(got, paper[s]) == 0 && b[TDM_MEM_COMM_BUFFERS] == 0;
    failures += !ok;
    say("    %-8d %9.3f %9.3f %9.3f %9.3f %10.3f %7s  %s\n", s,
        (double)b[0] / 1e9, (double)b[1] / 1e9, (double)b[2] / 1e9,
        (double)b[3] / 1e9, gb, paper[s], ok ? "ok" : "MISMATCH");
  }
  return failures;
}

static void print_banner(const options_t *o, int n) {
  char lib[MPI_MAX_LIBRARY_VERSION_STRING] = "";
  int len = 0, level = 0, major = 0, minor = 0, patch = 0;
  MPI_CHECK(MPI_Get_library_version(lib, &len));
  MPI_CHECK(MPI_Query_thread(&level));
  char *cut = strchr(lib, '\n');
  if (cut) *cut = '\0';
  cut = strchr(lib, ',');
  if (cut) *cut = '\0';
  TDM_CHECK(tdm_get_version(&major, &minor, &patch));
  say("# tandem %d.%d.%d zero benchmark: ZeRO stages and offload, measured "
      "memory and communication vs the paper's formulas%s\n", major, minor,
      patch, o->check ? " (--check)" : "");
  say("# nranks %d  MPI: %s  thread level %s; device cpu (offload changes "
      "nothing on a CPU build)\n", n, lib,
      level == MPI_THREAD_MULTIPLE ? "MULTIPLE" : "below MULTIPLE");
}

int main(int argc, char **argv) {
  options_t o;
  int provided = 0, n = 0, rc;
  bench_name = "zero";
#ifdef __GLIBC__
  /* Large blocks always mapped, so freeing them shrinks the resident set
   * (glibc otherwise raises the threshold after a large free). */
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
  MPI_CHECK(MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided));
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &g_rank));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &n));
  setvbuf(stdout, NULL, _IOLBF, 0);
  rc = parse_options(argc, argv, &o);
  if (rc != 0) {
    MPI_CHECK(MPI_Finalize());
    return rc < 0 ? 0 : rc;
  }
  print_banner(&o, n);
  double mem_lo = INFINITY, mem_hi = 0.0, vol_lo = INFINITY, vol_hi = 0.0;
  int failures = 0;
  if (o.check) {
    failures += run_set(&o, 0, n, &mem_lo, &mem_hi, &vol_lo, &vol_hi);
    failures += run_set(&o, 1, n, &mem_lo, &mem_hi, &vol_lo, &vol_hi);
  } else {
    failures += run_set(&o, o.bf16, n, &mem_lo, &mem_hi, &vol_lo, &vol_hi);
  }
  int paper = paper_row();
  failures += paper;
  say("#\n# zero: N = %d: model states measured / formula %.4f..%.4f, "
      "communication measured / formula %.4f..%.4f, paper row %s; %d "
      "mismatch%s: %s\n", n, mem_lo, mem_hi, vol_lo, vol_hi,
      paper ? "MISMATCH" : "ok", failures, failures == 1 ? "" : "es",
      failures ? "FAIL" : "OK");
  MPI_CHECK(MPI_Finalize());
  return failures ? 1 : 0;
}
