/* selftest.c - tandem test: launches itself on N ranks (as tandem launch
 * would) and checks this installation: host collectives at several sizes
 * and dtypes against their closed forms, and a short training run at
 * every ZeRO stage against the same model trained in plain C on the
 * whole batch (the single-rank reference each rank computes itself).
 * Rank 0 prints PASS or FAIL per item.  TANDEM_SELFTEST_FAULT=allreduce
 * (or =engine) makes rank 0 feed a wrong value into one allreduce (one
 * gradient), to show that a fault fails visibly; for testing only. */
#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "tandem_mpi.h"

#define IN 16
#define OUT 8
#define BATCH 4 /* samples per rank and step */
#define STEPS 10
#define LR 0.1

static int rank, size, passed, failed;
static const char *fault;

/* Every rank's verdict, agreed with MPI itself (not the code under test);
 * rank 0 prints the first failing rank's reason. */
static void report(const char *item, int ok, const char *why) {
  int all = 0, worst = ok ? size : rank;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  char reason[256] = "";
  if (!all) {
    if (rank == worst)
      snprintf(reason, sizeof reason, "%s", why);
    MPI_Bcast(reason, sizeof reason, MPI_CHAR, worst, MPI_COMM_WORLD);
  }
  if (rank == 0) {
    if (all)
      printf("PASS: %s\n", item);
    else
      printf("FAIL: %s (rank %d: %s)\n", item, worst, reason);
    fflush(stdout);
  }
  all ? passed++ : failed++;
}

static void check_status(const char *item, tdm_status st) {
  report(item, st == TDM_SUCCESS, tdm_last_error());
}

static double value_of(tdm_dtype d, const void *buf, size_t i) {
  switch (d) {
  case TDM_F32: return ((const float *)buf)[i];
  case TDM_F64: return ((const double *)buf)[i];
  case TDM_I32: return ((const int32_t *)buf)[i];
  default: return ((const int64_t *)buf)[i];
  }
}

static void set_value(tdm_dtype d, void *buf, size_t i, double v) {
  switch (d) {
  case TDM_F32: ((float *)buf)[i] = (float)v; break;
  case TDM_F64: ((double *)buf)[i] = v; break;
  case TDM_I32: ((int32_t *)buf)[i] = (int32_t)v; break;
  default: ((int64_t *)buf)[i] = (int64_t)v; break;
  }
}

static const char *dtype_name(tdm_dtype d) {
  return d == TDM_F32 ? "f32" : d == TDM_F64 ? "f64" : d == TDM_I32 ? "i32" : "i64";
}

/* Small integers: every sum is exact in every dtype. */
static double contribution(int r, size_t i) { return r + 1 + (double)(i % 7); }

static void allreduce_item(tdm_context *ctx, tdm_dtype d, size_t n) {
  size_t es = 0;
  tdm_dtype_size(d, &es);
  void *send = malloc(n * es), *recv = malloc(n * es);
  for (size_t i = 0; send && i < n; i++)
    set_value(d, send, i, contribution(rank, i));
  if (send && fault && strcmp(fault, "allreduce") == 0 && rank == 0)
    set_value(d, send, 0, contribution(rank, 0) + 1);
  char item[128], why[160] = "";
  snprintf(item, sizeof item, "allreduce sum %s x%zu", dtype_name(d), n);
  tdm_status st = send && recv ? tdm_allreduce(ctx, send, recv, n, d, TDM_SUM)
                               : TDM_ERR_NO_MEMORY;
  int ok = st == TDM_SUCCESS;
  for (size_t i = 0; ok && i < n; i++) {
    double want = size * (size + 1) / 2.0 + size * (double)(i % 7);
    if (value_of(d, recv, i) != want) {
      snprintf(why, sizeof why, "element %zu is %g, want %g", i,
               value_of(d, recv, i), want);
      ok = 0;
    }
  }
  report(item, ok, st == TDM_SUCCESS ? why : tdm_last_error());
  free(send), free(recv);
}

static void gather_items(tdm_context *ctx, size_t n) {
  int32_t *mine = malloc(n * sizeof *mine);
  int32_t *all = malloc(n * (size_t)size * sizeof *all);
  double *buf = malloc(n * sizeof *buf);
  char item[128], why[160] = "";
  int ok = mine && all && buf;
  for (size_t i = 0; ok && i < n; i++)
    mine[i] = rank * 1000 + (int32_t)(i % 1000);
  tdm_status st = ok ? tdm_allgather(ctx, mine, all, n, TDM_I32) : TDM_ERR_NO_MEMORY;
  ok = st == TDM_SUCCESS;
  for (int r = 0; ok && r < size; r++)
    for (size_t i = 0; ok && i < n; i++)
      if (all[(size_t)r * n + i] != r * 1000 + (int32_t)(i % 1000)) {
        snprintf(why, sizeof why, "rank %d's element %zu is %d", r, i,
                 all[(size_t)r * n + i]);
        ok = 0;
      }
  snprintf(item, sizeof item, "allgather i32 x%zu", n);
  report(item, ok, st == TDM_SUCCESS ? why : tdm_last_error());
  int root = size - 1;
  for (size_t i = 0; buf && i < n; i++)
    buf[i] = rank == root ? 0.25 * (double)i : -1;
  st = buf ? tdm_broadcast(ctx, buf, n, TDM_F64, root) : TDM_ERR_NO_MEMORY;
  ok = st == TDM_SUCCESS;
  for (size_t i = 0; ok && i < n; i++)
    if (buf[i] != 0.25 * (double)i) {
      snprintf(why, sizeof why, "element %zu is %g", i, buf[i]);
      ok = 0;
    }
  snprintf(item, sizeof item, "broadcast f64 x%zu from rank %d", n, root);
  report(item, ok, st == TDM_SUCCESS ? why : tdm_last_error());
  free(mine), free(all), free(buf);
}

/* ---- training: y = W x + b, mean squared error, SGD ---- */

static float sample_x(size_t s, int i) { return sinf(0.37f * (float)(s * IN + i)); }
static float sample_y(size_t s, int o) { return cosf(0.11f * (float)(s * OUT + o)); }

/* Adds the gradient of the mean loss over samples [first, first + n) of
 * a batch of total samples to gw, gb. */
static void gradient(const float *w, const float *b, size_t first, size_t n,
                     size_t total, float *gw, float *gb) {
  for (size_t s = first; s < first + n; s++)
    for (int o = 0; o < OUT; o++) {
      float y = b[o];
      for (int i = 0; i < IN; i++)
        y += w[o * IN + i] * sample_x(s, i);
      float d = 2 * (y - sample_y(s, o)) / (float)(total * OUT);
      gb[o] += d;
      for (int i = 0; i < IN; i++)
        gw[o * IN + i] += d * sample_x(s, i);
    }
}

static void initial(float *w, float *b) {
  for (int k = 0; k < OUT * IN; k++)
    w[k] = 0.1f * sinf((float)k);
  for (int o = 0; o < OUT; o++)
    b[o] = 0.05f * (float)o;
}

/* The same steps in plain C on the whole batch: the reference. */
static void reference(float *w, float *b) {
  initial(w, b);
  size_t total = (size_t)size * BATCH;
  for (int step = 0; step < STEPS; step++) {
    float gw[OUT * IN] = {0}, gb[OUT] = {0};
    gradient(w, b, step * total, total, total, gw, gb);
    for (int k = 0; k < OUT * IN; k++)
      w[k] -= (float)LR * gw[k];
    for (int o = 0; o < OUT; o++)
      b[o] -= (float)LR * gb[o];
  }
}

#define TDM_TRY_CLI(call)                                                \
  do {                                                                   \
    tdm_status st_ = (call);                                             \
    if (st_ != TDM_SUCCESS)                                              \
      return st_;                                                        \
  } while (0)

static tdm_status train_steps(tdm_engine *e, tdm_optimizer *opt, int module,
                              int pw, int pb) {
  size_t total = (size_t)size * BATCH;
  for (int step = 0; step < STEPS; step++) {
    float *w = NULL, *b = NULL, *gw = NULL, *gb = NULL;
    TDM_TRY_CLI(tdm_backward_begin(e));
    TDM_TRY_CLI(tdm_fetch_module(e, module));
    TDM_TRY_CLI(tdm_param_buffers(e, pw, (void **)&w, (void **)&gw));
    TDM_TRY_CLI(tdm_param_buffers(e, pb, (void **)&b, (void **)&gb));
    /* this rank's slice; the engine averages over ranks */
    gradient(w, b, step * total + (size_t)rank * BATCH, BATCH, BATCH, gw, gb);
    if (fault && strcmp(fault, "engine") == 0 && rank == 0 && step == 3)
      gw[0] += 1.0f;
    TDM_TRY_CLI(tdm_module_grads_ready(e, module));
    TDM_TRY_CLI(tdm_release_module(e, module));
    TDM_TRY_CLI(tdm_backward_end(e));
    TDM_TRY_CLI(tdm_step(opt, NULL));
  }
  return TDM_SUCCESS;
}

static void training_item(int stage) {
  char item[128], why[200] = "";
  snprintf(item, sizeof item, "training, ZeRO stage %d, %d SGD steps vs "
           "plain C on the whole batch", stage, STEPS);
  tdm_options o = TDM_OPTIONS_INIT;
  o.zero_stage = stage;
  o.zero3_persistence_threshold = 0; /* stage 3 gathers for real */
  o.device = TDM_DEVICE_CPU;
  o.mixed_precision = TDM_PRECISION_NO;
  o.offload = TDM_OFFLOAD_NONE; /* whatever TANDEM_OFFLOAD says */
  tdm_context *ctx = NULL;
  tdm_engine *e = NULL;
  tdm_optimizer *opt = NULL;
  float w0[OUT * IN], b0[OUT], w[OUT * IN], b[OUT], rw[OUT * IN], rb[OUT];
  initial(w0, b0);
  int64_t wshape[2] = {OUT, IN}, bshape[1] = {OUT};
  int module = 0, pw = 0, pb = 0;
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  oo.lr = LR;
  tdm_status st = tdm_init_comm(MPI_COMM_WORLD, &o, &ctx);
  if (st == TDM_SUCCESS) st = tdm_engine_create(ctx, &e);
  if (st == TDM_SUCCESS) st = tdm_add_module(e, "linear", &module);
  if (st == TDM_SUCCESS)
    st = tdm_add_param(e, module, "weight", TDM_F32, 2, wshape, w0, 0, &pw);
  if (st == TDM_SUCCESS)
    st = tdm_add_param(e, module, "bias", TDM_F32, 1, bshape, b0, 0, &pb);
  if (st == TDM_SUCCESS) st = tdm_prepare(e);
  if (st == TDM_SUCCESS) st = tdm_optimizer_create(e, &oo, &opt);
  if (st == TDM_SUCCESS) st = train_steps(e, opt, module, pw, pb);
  if (st == TDM_SUCCESS) st = tdm_gather_param(e, pw, w);
  if (st == TDM_SUCCESS) st = tdm_gather_param(e, pb, b);
  int ok = st == TDM_SUCCESS;
  if (ok) {
    reference(rw, rb);
    double err = 0, norm = 0;
    for (int k = 0; k < OUT * IN; k++)
      err += (w[k] - rw[k]) * (double)(w[k] - rw[k]), norm += rw[k] * (double)rw[k];
    for (int k = 0; k < OUT; k++)
      err += (b[k] - rb[k]) * (double)(b[k] - rb[k]), norm += rb[k] * (double)rb[k];
    ok = sqrt(err) <= 1e-5 * sqrt(norm);
    snprintf(why, sizeof why, "weights differ from the reference: relative "
             "error %.3g (tolerance 1e-5)", sqrt(err / norm));
  } else {
    snprintf(why, sizeof why, "%s", tdm_last_error());
  }
  if (opt) tdm_optimizer_destroy(opt);
  if (e) tdm_engine_destroy(e);
  if (ctx) tdm_finalize(ctx);
  report(item, ok, why);
}

static int worker(void) {
  int provided = 0;
  if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
    return cli_fail("test", "MPI_Init_thread failed");
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  fault = getenv("TANDEM_SELFTEST_FAULT");
  if (fault && !*fault)
    fault = NULL;
  if (rank == 0)
    printf("tandem test on %d rank%s%s%s\n", size, size > 1 ? "s" : "",
           fault ? ", injected fault: " : "", fault ? fault : "");
  tdm_options o = TDM_OPTIONS_INIT;
  o.device = TDM_DEVICE_CPU;
  tdm_context *ctx = NULL;
  tdm_status st = tdm_init_comm(MPI_COMM_WORLD, &o, &ctx);
  check_status("tdm_init_comm on MPI_COMM_WORLD", st);
  if (st == TDM_SUCCESS) {
    static const tdm_dtype types[] = {TDM_F32, TDM_F64, TDM_I32, TDM_I64};
    static const size_t counts[] = {1, 1000, 262144}; /* to 1 MiB of f32 */
    for (int t = 0; t < 4; t++)
      for (int c = 0; c < 3; c++)
        allreduce_item(ctx, types[t], counts[c]);
    gather_items(ctx, 1000);
    gather_items(ctx, 100000);
    check_status("tdm_finalize", tdm_finalize(ctx));
  }
  for (int stage = 0; stage <= 3; stage++)
    training_item(stage);
  if (rank == 0)
    printf("tandem test: %d passed, %d failed on %d rank%s\n", passed, failed,
           size, size > 1 ? "s" : "");
  MPI_Finalize();
  return failed ? 1 : 0;
}

int cli_test(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--worker") == 0)
    return worker();
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0)
    return cli_fail("test", "cannot find this program (/proc/self/exe)");
  self[n] = '\0';
  char *program[] = {self, "test", "--worker", NULL};
  return cli_launch_program("test", argc, argv, program);
}
