/* t_engine_errors.c - the engine's clear errors: registrations that differ
 * across ranks, a parameter without gradient, a gradient marked ready
 * twice, a step before backward finished, calls out of order and bad
 * arguments.  Failures that involve other ranks must fail on every rank
 * (never hang), and the engine must keep working afterwards. */
#include "harness.h"
#include "tandem_mpi.h"

static int rank, size;
static const int64_t shape4[1] = {4}, shape6[1] = {6};

static tdm_context *ctx;

/* An engine with modules "a" (a.w [4], a.b [4]) and "b" (b.w [4]);
 * on the rank named by odd, tweak changes one thing. */
typedef enum { SAME, SHAPE, NAME, DTYPE, ORDER, EXTRA, FLAGS } tweak;

static tdm_engine *build(tweak t, int odd) {
  tdm_engine *e = NULL;
  int a, b, p;
  TH_OK(tdm_engine_create(ctx, &e));
  TH_OK(tdm_add_module(e, "a", &a));
  TH_OK(tdm_add_module(e, "b", &b));
  int me = rank == odd ? t : SAME;
  const char *first = me == ORDER ? "a.b" : "a.w";
  const char *second = me == ORDER ? "a.w" : "a.b";
  TH_OK(tdm_add_param(e, a, first, TDM_F32, 1, shape4, NULL, 0, &p));
  TH_OK(tdm_add_param(e, a, second, TDM_F32, 1, me == SHAPE ? shape6 : shape4,
                      NULL, 0, &p));
  TH_OK(tdm_add_param(e, b, me == NAME ? "b.weight" : "b.w",
                      me == DTYPE ? TDM_F64 : TDM_F32, 1, shape4, NULL,
                      me == FLAGS ? TDM_PARAM_MAYBE_UNUSED : 0, &p));
  if (me == EXTRA)
    TH_OK(tdm_add_param(e, b, "b.extra", TDM_F32, 1, shape4, NULL, 0, &p));
  return e;
}

static void mismatched_registration(void) {
  static const char *const what[] = {"", "f32 [6]", "'b.weight'", "f64",
                                     "'a.b'", "'b.extra'", "maybe-unused"};
  for (int t = SHAPE; t <= FLAGS; t++) {
    int odd = size - 1; /* on 1 rank nothing can differ */
    tdm_engine *e = build((tweak)t, size > 1 ? odd : -1);
    tdm_status st = tdm_prepare(e);
    if (size == 1) {
      TH_CHECK(st == TDM_SUCCESS, "1 rank: %s", tdm_last_error());
    } else if (rank == odd) {
      TH_FAILS(st, TDM_ERR_MISMATCH, "registration differs from rank 0");
      TH_CHECK(strstr(tdm_last_error(), what[t]) != NULL,
               "tweak %d: '%s' does not name '%s'", t, tdm_last_error(),
               what[t]);
    } else {
      TH_FAILS(st, TDM_ERR_MISMATCH, "registration differs from rank 0");
      TH_CHECK(strstr(tdm_last_error(), what[t]) != NULL,
               "tweak %d: '%s' does not name '%s'", t, tdm_last_error(),
               what[t]);
    }
    TH_OK(tdm_engine_destroy(e));
  }
}

/* One micro-step where every rank marks all parameters except that the
 * rank `odd` skips `skip` or marks `twice` a second time. */
static tdm_status micro_step(tdm_engine *e, int odd, int skip, int twice,
                             tdm_status *mark_status) {
  TH_OK(tdm_backward_begin(e));
  for (int p = 0; p < 3; p++) {
    if (rank == odd && p == skip)
      continue;
    TH_OK(tdm_grad_ready(e, p));
  }
  if (rank == odd && twice >= 0)
    *mark_status = tdm_grad_ready(e, twice);
  return tdm_backward_end(e);
}

static void step_errors(void) {
  tdm_engine *e = build(SAME, -1);
  TH_OK(tdm_prepare(e));
  int odd = size - 1;
  tdm_status mark = TDM_SUCCESS;

  /* A parameter without gradient fails on every rank, naming it. */
  tdm_status st = micro_step(e, odd, 1, -1, &mark);
  TH_FAILS(st, TDM_ERR_INVALID_USAGE, "'a.b' (param 1, module 'a') got no "
                                      "gradient");
  char who[32]; /* every rank's message names the rank that failed */
  snprintf(who, sizeof who, "rank %d: ", odd);
  TH_CHECK(strstr(tdm_last_error(), who) != NULL, "%s", tdm_last_error());
  TH_OK(micro_step(e, odd, -1, -1, &mark)); /* and the engine goes on */

  /* The same gradient marked twice: an error at once, and again from
   * tdm_backward_end on every rank. */
  st = micro_step(e, odd, -1, 2, &mark);
  if (rank == odd) {
    TH_FAILS(mark, TDM_ERR_INVALID_USAGE,
             "'b.w' (param 2) was already marked ready");
    TH_FAILS(st, TDM_ERR_INVALID_USAGE, "already marked ready");
  } else {
    TH_FAILS(st, TDM_ERR_INVALID_USAGE, "already marked ready");
  }
  TH_OK(micro_step(e, odd, -1, -1, &mark));

  /* A step before backward has finished. */
  tdm_optimizer *opt;
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  TH_OK(tdm_optimizer_create(e, &oo, &opt));
  int stepped = -1;
  TH_OK(tdm_step(opt, &stepped)); /* the boundary of the last micro-step */
  TH_CHECK(stepped == 1, "stepped %d", stepped);
  /* Each tdm_step ends a micro-step: with nothing marked, a whole one. */
  TH_OK(tdm_step(opt, &stepped));
  TH_CHECK(stepped == 1, "stepped %d: a micro-step of its own", stepped);
  /* tdm_step ends the micro-step in progress. */
  TH_OK(tdm_backward_begin(e));
  TH_OK(tdm_module_grads_ready(e, 0));
  TH_OK(tdm_module_grads_ready(e, 1));
  TH_OK(tdm_step(opt, &stepped));
  TH_CHECK(stepped == 1, "stepped %d ending the micro-step", stepped);
  TH_OK(tdm_backward_begin(e));
  TH_OK(tdm_module_grads_ready(e, 0));
  TH_OK(tdm_module_grads_ready(e, 1));
  TH_FAILS(tdm_sync_now(e), TDM_ERR_INVALID_USAGE, "micro-step is in progress");
  TH_FAILS(tdm_backward_begin(e), TDM_ERR_INVALID_USAGE, "has not ended");
  TH_FAILS(tdm_module_grads_ready(e, 2), TDM_ERR_INVALID_ARGUMENT,
           "module 2 is not registered");
  TH_FAILS(tdm_grad_ready(e, -1), TDM_ERR_INVALID_ARGUMENT,
           "param -1 is not registered");
  /* those errors are reported again at the end, on every rank */
  TH_FAILS(tdm_backward_end(e), TDM_ERR_INVALID_ARGUMENT,
           "module 2 is not registered");
  /* A cycle whose last micro-step failed is dropped: no update, and its
   * gradients are cleared for the next cycle. */
  TH_OK(tdm_step(opt, &stepped));
  TH_CHECK(stepped == 0, "stepped %d after a failed backward_end", stepped);
  float *g0 = NULL;
  TH_OK(tdm_param_buffers(e, 0, NULL, (void **)&g0));
  TH_CHECK(g0 && g0[0] == 0.0f, "gradient %g kept after a failed cycle",
           g0 ? (double)g0[0] : -1.0);

  /* tdm_backward_begin is optional: a mark opens the micro-step, and
   * once one parameter is marked the others must be too. */
  TH_OK(tdm_grad_ready(e, 0));
  TH_FAILS(tdm_backward_end(e), TDM_ERR_INVALID_USAGE, "got no gradient");
  TH_OK(tdm_step(opt, &stepped));
  TH_CHECK(stepped == 0, "stepped %d after a failed backward_end", stepped);
  /* Out of order. */
  int m;
  TH_FAILS(tdm_add_module(e, "late", &m), TDM_ERR_INVALID_USAGE,
           "already prepared");
  TH_FAILS(tdm_prepare(e), TDM_ERR_INVALID_USAGE, "already prepared");
  TH_FAILS(tdm_get_bucket(e, 5, NULL, NULL, NULL), TDM_ERR_INVALID_ARGUMENT,
           "bucket 5 does not exist");
  TH_FAILS(tdm_param_buffers(e, 3, NULL, NULL), TDM_ERR_INVALID_ARGUMENT,
           "param 3 is not registered");
  TH_FAILS(tdm_find_param(e, "nope", &m), TDM_ERR_INVALID_ARGUMENT,
           "no parameter is named 'nope'");
  TH_OK(tdm_find_param(e, "b.w", &m));
  TH_CHECK(m == 2, "b.w is param %d", m);
  TH_OK(tdm_optimizer_destroy(opt));
  TH_FAILS(tdm_step(opt, &stepped), TDM_ERR_INVALID_USAGE,
           "not a live optimizer");
  TH_OK(tdm_engine_destroy(e));
  TH_FAILS(tdm_backward_begin(e), TDM_ERR_INVALID_USAGE, "not a live engine");
  TH_FAILS(tdm_engine_destroy(e), TDM_ERR_INVALID_USAGE, "not a live engine");
}

static void bad_arguments(void) {
  tdm_engine *e;
  int m, p;
  TH_FAILS(tdm_engine_create(NULL, &e), TDM_ERR_INVALID_ARGUMENT,
           "ctx is NULL");
  TH_FAILS(tdm_engine_create(ctx, NULL), TDM_ERR_INVALID_ARGUMENT,
           "engine is NULL");
  TH_FAILS(tdm_add_module(NULL, "x", &m), TDM_ERR_INVALID_ARGUMENT,
           "engine is NULL");
  TH_OK(tdm_engine_create(ctx, &e));
  TH_FAILS(tdm_prepare(e), TDM_ERR_INVALID_USAGE, "no parameters");
  TH_FAILS(tdm_add_module(e, NULL, &m), TDM_ERR_INVALID_ARGUMENT,
           "name is NULL");
  TH_FAILS(tdm_add_module(e, "", &m), TDM_ERR_INVALID_ARGUMENT,
           "name is empty");
  TH_OK(tdm_add_module(e, "x", &m));
  TH_FAILS(tdm_add_module(e, "x", &m), TDM_ERR_INVALID_ARGUMENT,
           "module 'x' is already registered");
  TH_FAILS(tdm_add_param(e, 7, "w", TDM_F32, 1, shape4, NULL, 0, &p),
           TDM_ERR_INVALID_ARGUMENT, "module 7 is not registered");
  TH_FAILS(tdm_add_param(e, m, "w", TDM_BF16, 1, shape4, NULL, 0, &p),
           TDM_ERR_NOT_SUPPORTED, "dtype bf16");
  TH_FAILS(tdm_add_param(e, m, "w", TDM_I32, 1, shape4, NULL, 0, &p),
           TDM_ERR_NOT_SUPPORTED, "dtype i32");
  TH_FAILS(tdm_add_param(e, m, "w", (tdm_dtype)42, 1, shape4, NULL, 0, &p),
           TDM_ERR_INVALID_ARGUMENT, "dtype 42");
  TH_FAILS(tdm_add_param(e, m, "w", TDM_F32, 9, shape4, NULL, 0, &p),
           TDM_ERR_INVALID_ARGUMENT, "ndim 9");
  TH_FAILS(tdm_add_param(e, m, "w", TDM_F32, 1, NULL, NULL, 0, &p),
           TDM_ERR_INVALID_ARGUMENT, "shape is NULL");
  const int64_t zero[2] = {3, 0};
  TH_FAILS(tdm_add_param(e, m, "w", TDM_F32, 2, zero, NULL, 0, &p),
           TDM_ERR_INVALID_ARGUMENT, "shape[1] = 0");
  TH_FAILS(tdm_add_param(e, m, "w", TDM_F32, 1, shape4, NULL, 8, &p),
           TDM_ERR_INVALID_ARGUMENT, "unknown flags");
  TH_FAILS(tdm_add_param(e, m, "w", TDM_F32, 1, shape4, NULL, 0, NULL),
           TDM_ERR_INVALID_ARGUMENT, "param is NULL");
  const float init[4] = {1, 2, 3, 4};
  TH_OK(tdm_add_param(e, m, "w", TDM_F32, 1, shape4, init, 0, &p));
  TH_FAILS(tdm_add_param(e, m, "w", TDM_F32, 1, shape4, NULL, 0, &p),
           TDM_ERR_INVALID_ARGUMENT, "'w' is already registered");
  TH_FAILS(tdm_param_buffers(e, 0, NULL, NULL), TDM_ERR_INVALID_USAGE,
           "not prepared");
  TH_FAILS(tdm_backward_begin(e), TDM_ERR_INVALID_USAGE, "not prepared");
  tdm_optimizer *opt;
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  TH_FAILS(tdm_optimizer_create(e, &oo, &opt), TDM_ERR_INVALID_USAGE,
           "not prepared");
  TH_OK(tdm_prepare(e));
  float *w;
  TH_OK(tdm_param_buffers(e, p, (void **)&w, NULL));
  TH_CHECK(w[0] == 1 && w[3] == 4, "initial values not copied");
  oo.lr = -1;
  TH_FAILS(tdm_optimizer_create(e, &oo, &opt), TDM_ERR_INVALID_ARGUMENT,
           "lr = -1");
  oo.lr = 0.1;
  oo.nesterov = 1;
  TH_FAILS(tdm_optimizer_create(e, &oo, &opt), TDM_ERR_INVALID_ARGUMENT,
           "nesterov needs momentum");
  oo.nesterov = 0;
  oo.kind = 9;
  TH_FAILS(tdm_optimizer_create(e, &oo, &opt), TDM_ERR_INVALID_ARGUMENT,
           "kind 9");
  oo.kind = TDM_OPTIMIZER_SGD;
  oo.size = 3;
  TH_FAILS(tdm_optimizer_create(e, &oo, &opt), TDM_ERR_INVALID_ARGUMENT,
           "options->size = 3");
  TH_FAILS(tdm_optimizer_create(e, NULL, &opt), TDM_ERR_INVALID_ARGUMENT,
           "options is NULL");
  TH_FAILS(tdm_step(NULL, NULL), TDM_ERR_INVALID_ARGUMENT, "is NULL");
  TH_OK(tdm_engine_destroy(e));
}

/* Engine options from the environment and the API are checked. */
static void bad_options(void) {
  tdm_options o = TDM_OPTIONS_INIT;
  tdm_context *c = NULL;
  o.bucket_cap_bytes = 0;
  TH_FAILS(tdm_init_comm(MPI_COMM_WORLD, &o, &c), TDM_ERR_INVALID_ARGUMENT,
           "bucket_cap_bytes = 0");
  o = (tdm_options)TDM_OPTIONS_INIT;
  o.progress = 7;
  TH_FAILS(tdm_init_comm(MPI_COMM_WORLD, &o, &c), TDM_ERR_INVALID_ARGUMENT,
           "progress = 7");
  setenv("TANDEM_GRADIENT_ACCUMULATION_STEPS", "0", 1);
  TH_FAILS(tdm_init_comm(MPI_COMM_WORLD, NULL, &c), TDM_ERR_CONFIG,
           "expected a positive integer");
  unsetenv("TANDEM_GRADIENT_ACCUMULATION_STEPS");
  setenv("TANDEM_PROGRESS", "sometimes", 1);
  TH_FAILS(tdm_init_comm(MPI_COMM_WORLD, NULL, &c), TDM_ERR_CONFIG,
           "auto, poll or thread");
  setenv("TANDEM_PROGRESS", "poll", 1);
  setenv("TANDEM_BUCKET_CAP_BYTES", "4096", 1);
  TH_OK(tdm_init_comm(MPI_COMM_WORLD, NULL, &c));
  unsetenv("TANDEM_PROGRESS");
  unsetenv("TANDEM_BUCKET_CAP_BYTES");
  tdm_options got = TDM_OPTIONS_INIT;
  TH_OK(tdm_get_options(c, &got));
  TH_CHECK(got.progress == TDM_PROGRESS_POLL && got.bucket_cap_bytes == 4096 &&
               got.first_bucket_bytes == 1 << 20 &&
               got.gradient_accumulation_steps == 1,
           "resolved %d %d %d %d", got.progress, got.bucket_cap_bytes,
           got.first_bucket_bytes, got.gradient_accumulation_steps);
  TH_OK(tdm_finalize(c));
}

int main(int argc, char **argv) {
  int provided = th_init(&argc, &argv, MPI_THREAD_MULTIPLE, &rank, &size);
  const char *modes[2] = {"poll", "thread"};
  for (int m = 0; m < (provided == MPI_THREAD_MULTIPLE ? 2 : 1); m++) {
    tdm_options o = TDM_OPTIONS_INIT;
    o.progress = m == 0 ? TDM_PROGRESS_POLL : TDM_PROGRESS_THREAD;
    TH_OK(tdm_init_comm(MPI_COMM_WORLD, &o, &ctx));
    if (rank == 0)
      printf("progress %s\n", modes[m]);
    mismatched_registration();
    step_errors();
    bad_arguments();
    TH_OK(tdm_finalize(ctx));
  }
  bad_options();
  int rc = th_finish("t_engine_errors");
  MPI_Finalize();
  return rc;
}
