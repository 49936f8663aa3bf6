/* t_engine.c - the data-parallel engine against independent references:
 *  - equivalence: the MLP trained 50 steps on N ranks with batch B (and k
 *    accumulation micro-steps) ends with the weights of a 1-rank run
 *    (MPI_COMM_SELF) with batch N*k*B, relative error <= 1e-5;
 *  - inside an accumulation cycle gradients differ across ranks, after the
 *    boundary they are identical and are N*k times the 1-rank gradients
 *    (sums; the optimizer divides);
 *  - the frozen bucket layout and each bucket's state machine, with
 *    gradients marked ready in a different order on every rank;
 *  - sync_now, possibly-unused parameters;
 * in poll mode and on the communication thread. */
#include "harness.h"
#include "model.h"
#include "tandem_mpi.h"

#define B 8
#define STEPS 50
/* Caps that cut the MLP into three buckets: [fc2.bias], [fc2.weight,
 * fc1.bias], [fc1.weight] (bigger than the cap, alone). */
#define FIRST_CAP 256
#define CAP 1024

static int rank, size;

typedef struct {
  tdm_context *ctx;
  tdm_engine *e;
  tdm_optimizer *opt;
  mlp_model m;
  float *value[MLP_PARAMS], *grad[MLP_PARAMS]; /* f32, stage 0: stable */
} run;

static tdm_context *context(MPI_Comm comm, int accum, int progress) {
  tdm_options o = TDM_OPTIONS_INIT;
  o.gradient_accumulation_steps = accum;
  o.progress = progress;
  o.first_bucket_bytes = FIRST_CAP;
  o.bucket_cap_bytes = CAP;
  tdm_context *ctx = NULL;
  TH_OK(tdm_init_comm(comm, &o, &ctx));
  return ctx;
}

static void start(run *r, MPI_Comm comm, int accum, int progress) {
  r->ctx = context(comm, accum, progress);
  TH_OK(tdm_engine_create(r->ctx, &r->e));
  TH_OK(mlp_register(r->ctx, r->e, 77, &r->m));
  TH_OK(tdm_prepare(r->e));
  for (int p = 0; p < MLP_PARAMS; p++)
    TH_OK(tdm_param_buffers(r->e, r->m.param[p], (void **)&r->value[p],
                            (void **)&r->grad[p]));
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  oo.lr = 0.05;
  oo.momentum = 0.9;
  oo.weight_decay = 1e-3;
  TH_OK(tdm_optimizer_create(r->e, &oo, &r->opt));
}

static void stop(run *r) {
  TH_OK(tdm_optimizer_destroy(r->opt));
  TH_OK(tdm_engine_destroy(r->e));
  TH_OK(tdm_finalize(r->ctx));
}

static void micro_step(run *r, const float *x, const float *y, long first,
                       int n) {
  double scale, loss;
  TH_OK(tdm_loss_scale(r->e, &scale));
  TH_OK(tdm_backward_begin(r->e));
  TH_OK(mlp_forward_backward(r->e, &r->m, &x[first * MLP_IN], &y[first], n,
                             scale, &loss));
  TH_OK(tdm_backward_end(r->e));
}

static const int counts[MLP_PARAMS] = {MLP_HIDDEN * MLP_IN, MLP_HIDDEN,
                                       MLP_HIDDEN, 1};

/* max |a / divisor - b| / max |b| over every parameter's values or
 * gradients; synced gradients are sums over ranks and micro-steps, which
 * the optimizer divides by their count (divisor). */
static double rel_err_div(run *a, run *b, int grads, double divisor) {
  double diff = 0, ref = 0;
  for (int p = 0; p < MLP_PARAMS; p++) {
    const float *x = grads ? a->grad[p] : a->value[p];
    const float *y = grads ? b->grad[p] : b->value[p];
    for (int i = 0; i < counts[p]; i++) {
      diff = fmax(diff, fabs((double)x[i] / divisor - y[i]));
      ref = fmax(ref, fabs((double)y[i]));
    }
  }
  return diff / ref;
}

static double rel_err(run *a, run *b, int grads) {
  return rel_err_div(a, b, grads, 1.0);
}

/* Whether every rank holds bit-identical gradients (or values). */
static int same_on_all_ranks(run *r, int grads) {
  int same = 1;
  for (int p = 0; p < MLP_PARAMS; p++) {
    float *all = malloc(sizeof *all * (size_t)counts[p] * size);
    const float *mine = grads ? r->grad[p] : r->value[p];
    MPI_Allgather(mine, counts[p], MPI_FLOAT, all, counts[p], MPI_FLOAT,
                  MPI_COMM_WORLD);
    for (int q = 1; q < size; q++)
      same &= memcmp(all, all + (size_t)q * counts[p],
                     sizeof *all * counts[p]) == 0;
    free(all);
  }
  return same;
}

static void equivalence(int progress, int accum) {
  run world, ref;
  start(&world, MPI_COMM_WORLD, accum, progress);
  start(&ref, MPI_COMM_SELF, 1, TDM_PROGRESS_POLL);
  /* Every rank drew its own initial values; tdm_prepare gave all of them
   * rank 0's, which the 1-rank run drew too (same per-rank stream). */
  TH_CHECK(same_on_all_ranks(&world, 0), "values differ after tdm_prepare");
  TH_CHECK(rel_err(&world, &ref, 0) == 0, "initial values are not rank 0's");

  int global = size * accum * B;
  float *x = malloc(sizeof *x * (size_t)STEPS * global * MLP_IN);
  float *y = malloc(sizeof *y * (size_t)STEPS * global);
  TH_OK(mlp_make_data(world.ctx, 5, STEPS * global, x, y));
  int in_cycle_differ = 0, boundary_same = 1;
  double grad_err = 0;
  for (int step = 0; step < STEPS; step++) {
    for (int j = 0; j < accum; j++) {
      micro_step(&world, x, y, (long)step * global + (j * size + rank) * B, B);
      if (j < accum - 1)
        in_cycle_differ += !same_on_all_ranks(&world, 1);
    }
    boundary_same &= same_on_all_ranks(&world, 1);
    micro_step(&ref, x, y, (long)step * global, global);
    grad_err = fmax(grad_err, rel_err_div(&world, &ref, 1, size * accum));
    int stepped = -1;
    TH_OK(tdm_step(world.opt, &stepped));
    TH_CHECK(stepped == 1, "no step at the boundary of step %d", step);
    TH_OK(tdm_step(ref.opt, &stepped));
  }
  const char *mode = progress == TDM_PROGRESS_POLL ? "poll" : "thread";
  TH_CHECK(boundary_same, "%s k=%d: gradients differ across ranks after the "
           "boundary", mode, accum);
  if (size > 1 && accum > 1)
    TH_CHECK(in_cycle_differ == STEPS * (accum - 1),
             "%s k=%d: gradients were equal across ranks inside the cycle in "
             "%d of %d micro-steps", mode, accum,
             STEPS * (accum - 1) - in_cycle_differ, STEPS * (accum - 1));
  TH_CHECK(grad_err <= 1e-5, "%s k=%d: synced gradients vs 1 rank: rel err "
           "%.3g", mode, accum, grad_err);
  double err = rel_err(&world, &ref, 0);
  TH_CHECK(err <= 1e-5, "%s k=%d: weights after %d steps vs 1 rank x batch "
           "%d: rel err %.3g", mode, accum, STEPS, global, err);
  TH_CHECK(same_on_all_ranks(&world, 0), "weights differ across ranks");
  if (rank == 0)
    printf("equivalence %s N=%d k=%d: weights rel err %.3g, grads %.3g\n",
           mode, size, accum, err, grad_err);
  free(x);
  free(y);
  stop(&ref);
  stop(&world);
}

static tdm_bucket_state state_of(run *r, int b) {
  tdm_bucket_state s = TDM_BUCKET_IDLE;
  TH_OK(tdm_get_bucket(r->e, b, &s, NULL, NULL));
  return s;
}

static void check_layout(run *r) {
  int n = 0, bucket = -1;
  TH_OK(tdm_get_bucket_count(r->e, &n));
  TH_CHECK(n == 3, "%d buckets, want 3", n);
  const int want_bucket[MLP_PARAMS] = {2, 1, 1, 0};
  const size_t want_bytes[3] = {4, 512, 2560}; /* fc2.weight 64-B aligned */
  const int want_params[3] = {1, 2, 1};
  for (int p = 0; p < MLP_PARAMS; p++) {
    TH_OK(tdm_get_param_bucket(r->e, r->m.param[p], &bucket));
    TH_CHECK(bucket == want_bucket[p], "param %d in bucket %d, want %d", p,
             bucket, want_bucket[p]);
  }
  for (int b = 0; b < 3 && n == 3; b++) {
    size_t bytes = 0;
    int params = 0;
    TH_OK(tdm_get_bucket(r->e, b, NULL, &bytes, &params));
    TH_CHECK(bytes == want_bytes[b] && params == want_params[b],
             "bucket %d: %zu bytes, %d params", b, bytes, params);
  }
}

/* Marks the parameters in a rank-dependent order; the sum is checked
 * against its closed form. */
static void state_machine(int progress) {
  run r;
  start(&r, MPI_COMM_WORLD, 1, progress);
  check_layout(&r);
  double scale;
  TH_OK(tdm_loss_scale(r.e, &scale));
  TH_OK(tdm_backward_begin(r.e));
  for (int b = 0; b < 3; b++)
    TH_CHECK(state_of(&r, b) == TDM_BUCKET_IDLE, "bucket %d not IDLE", b);
  for (int p = 0; p < MLP_PARAMS; p++)
    for (int i = 0; i < counts[p]; i++)
      r.grad[p][i] = (float)((rank + 1) * (p + 1) * scale);
  /* fc1.weight first: bucket 2 is READY but must wait for 0 and 1. */
  TH_OK(tdm_grad_ready(r.e, r.m.param[MLP_W1]));
  TH_CHECK(state_of(&r, 2) == TDM_BUCKET_READY, "bucket 2 launched early");
  int order[2] = {MLP_B1, MLP_W2};
  if (rank % 2)
    order[0] = MLP_W2, order[1] = MLP_B1;
  TH_OK(tdm_grad_ready(r.e, r.m.param[order[0]]));
  TH_CHECK(state_of(&r, 1) == TDM_BUCKET_FILLING, "bucket 1 not FILLING");
  TH_OK(tdm_grad_ready(r.e, r.m.param[order[1]]));
  TH_CHECK(state_of(&r, 1) == TDM_BUCKET_READY, "bucket 1 not READY");
  TH_CHECK(state_of(&r, 0) == TDM_BUCKET_IDLE, "bucket 0 not IDLE");
  TH_OK(tdm_grad_ready(r.e, r.m.param[MLP_B2]));
  /* All three are READY or further on, and none launched before a lower
   * one.  Read from the top: bucket b launched implies b - 1 launched
   * earlier.  Poll mode has launched bucket 0 in this very call. */
  tdm_bucket_state s[3];
  for (int b = 2; b >= 0; b--)
    s[b] = state_of(&r, b);
  for (int b = 0; b < 3; b++) {
    tdm_bucket_state least = progress == TDM_PROGRESS_POLL && b == 0
                                 ? TDM_BUCKET_IN_FLIGHT
                                 : TDM_BUCKET_READY;
    TH_CHECK(s[b] >= least, "bucket %d is %d after all were ready", b,
             (int)s[b]);
    if (b > 0 && s[b] >= TDM_BUCKET_IN_FLIGHT)
      TH_CHECK(s[b - 1] >= TDM_BUCKET_IN_FLIGHT,
               "bucket %d launched before bucket %d", b, b - 1);
  }
  TH_OK(tdm_backward_end(r.e));
  double sum_ranks = size * (size + 1) / 2.0;
  for (int p = 0; p < MLP_PARAMS; p++)
    for (int i = 0; i < counts[p]; i++)
      TH_CLOSE(r.grad[p][i], sum_ranks * (p + 1) * scale, 1e-6,
               "summed gradient");
  for (int b = 0; b < 3; b++)
    TH_CHECK(state_of(&r, b) == TDM_BUCKET_REDUCED, "bucket %d not REDUCED",
             b);
  TH_OK(tdm_backward_begin(r.e));
  TH_CHECK(state_of(&r, 0) == TDM_BUCKET_IDLE, "bucket 0 not IDLE again");
  TH_OK(tdm_module_grads_ready(r.e, r.m.module[MLP_FC2]));
  TH_OK(tdm_progress(r.e));
  TH_OK(tdm_module_grads_ready(r.e, r.m.module[MLP_FC1]));
  TH_OK(tdm_backward_end(r.e));
  stop(&r);
}

/* k = 3: syncs on every third micro-step, buckets stay IDLE in between;
 * tdm_sync_now ends a cycle early. */
static void accumulation(int progress) {
  run r;
  start(&r, MPI_COMM_WORLD, 3, progress);
  const int want_sync[8] = {0, 0, 1, 0, 1, 0, 0, 1};
  for (int s = 0; s < 8; s++) {
    if (s == 4)
      TH_OK(tdm_sync_now(r.e)); /* the cycle 3..5 ends at 4 */
    int sync = -1, stepped = -1;
    TH_OK(tdm_is_sync_step(r.e, &sync));
    TH_CHECK(sync == want_sync[s], "micro-step %d: sync %d", s, sync);
    TH_OK(tdm_backward_begin(r.e));
    TH_OK(tdm_is_sync_step(r.e, &sync));
    TH_CHECK(sync == want_sync[s], "micro-step %d: sync %d inside", s, sync);
    TH_OK(tdm_module_grads_ready(r.e, r.m.module[MLP_FC2]));
    TH_OK(tdm_module_grads_ready(r.e, r.m.module[MLP_FC1]));
    if (!sync)
      TH_CHECK(state_of(&r, 0) == TDM_BUCKET_IDLE,
               "micro-step %d: bucket 0 left IDLE without sync", s);
    TH_OK(tdm_backward_end(r.e));
    TH_OK(tdm_step(r.opt, &stepped));
    TH_CHECK(stepped == want_sync[s], "micro-step %d: stepped %d", s, stepped);
  }
  stop(&r);
}

/* A possibly-unused parameter: only rank 0 gives it a gradient. */
static void maybe_unused(int progress) {
  tdm_context *ctx = context(MPI_COMM_WORLD, 1, progress);
  tdm_engine *e;
  int mod, used, spare;
  const int64_t shape[1] = {5};
  TH_OK(tdm_engine_create(ctx, &e));
  TH_OK(tdm_add_module(e, "m", &mod));
  TH_OK(tdm_add_param(e, mod, "used", TDM_F64, 1, shape, NULL, 0, &used));
  TH_OK(tdm_add_param(e, mod, "spare", TDM_F64, 1, shape, NULL,
                      TDM_PARAM_MAYBE_UNUSED, &spare));
  TH_OK(tdm_prepare(e));
  double *g_used, *g_spare;
  TH_OK(tdm_param_buffers(e, used, NULL, (void **)&g_used));
  TH_OK(tdm_param_buffers(e, spare, NULL, (void **)&g_spare));
  for (int round = 0; round < 2; round++) {
    TH_OK(tdm_backward_begin(e));
    for (int i = 0; i < 5; i++)
      g_used[i] = 1;
    TH_OK(tdm_grad_ready(e, used));
    if (rank == 0 && round == 1) {
      for (int i = 0; i < 5; i++)
        g_spare[i] = 3;
      TH_OK(tdm_grad_ready(e, spare));
    }
    TH_OK(tdm_backward_end(e));
    for (int i = 0; i < 5; i++) {
      TH_CLOSE(g_used[i], size, 1e-12, "used");
      TH_CLOSE(g_spare[i], round == 1 ? 3 : 0, 1e-12, "spare");
    }
    for (int i = 0; i < 5; i++)
      g_spare[i] = 0;
  }
  TH_OK(tdm_engine_destroy(e));
  TH_OK(tdm_finalize(ctx));
}

int main(int argc, char **argv) {
  int provided = th_init(&argc, &argv, MPI_THREAD_MULTIPLE, &rank, &size);
  int modes[2] = {TDM_PROGRESS_POLL, TDM_PROGRESS_THREAD};
  int nmodes = provided == MPI_THREAD_MULTIPLE ? 2 : 1;
  if (nmodes == 1 && rank == 0)
    printf("MPI_THREAD_MULTIPLE not provided: thread mode not tested\n");
  for (int m = 0; m < nmodes; m++) {
    run probe;
    probe.ctx = context(MPI_COMM_WORLD, 1, modes[m]);
    probe.e = NULL;
    TH_OK(tdm_engine_create(probe.ctx, &probe.e));
    if (!probe.e) { /* the rest would only use a missing engine */
      tdm_finalize(probe.ctx);
      break;
    }
    tdm_progress_mode got;
    tdm_device_kind kind;
    int index;
    TH_OK(tdm_get_progress_mode(probe.e, &got));
    TH_OK(tdm_get_device(probe.ctx, &kind, &index));
    /* On a GPU (TANDEM_TEST_FAKE_GPU runs) the engine always polls. */
    int want = kind == TDM_DEVICE_CUDA ? TDM_PROGRESS_POLL : modes[m];
    TH_CHECK((int)got == want, "progress mode %d, want %d", got, want);
    TH_OK(tdm_engine_destroy(probe.e));
    TH_OK(tdm_finalize(probe.ctx));
    equivalence(modes[m], 1);
    equivalence(modes[m], 3);
    state_machine(modes[m]);
    accumulation(modes[m]);
    maybe_unused(modes[m]);
  }
  int rc = th_finish("t_engine");
  MPI_Finalize();
  return nmodes == 2 || rc ? rc : 77;
}
