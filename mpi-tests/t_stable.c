/* t_stable.c - parameter and gradient pointers never move.  A three-layer
 * perceptron (odd widths, so no shard divides evenly) caches every data
 * and gradient pointer once, right after tdm_prepare, and trains only
 * through those pointers: forward reads the cached values, backward adds
 * into the cached gradients.  At ZeRO 1, 2 and 3, with offload and with 2
 * accumulation micro-steps, the final weights must match stage 0's on the
 * same ranks (1e-6 relative L2 per parameter), and tdm_param_buffers must
 * still return the cached addresses after the run.  Stage 3 fetches each
 * module around its use (the values are there only then); nothing else is
 * asked per step. */
#include "harness.h"
#include "tandem_mpi.h"

#define LAYERS 3
#define BATCH 12 /* per rank and micro-step */
#define STEPS 6
static const int width[LAYERS + 1] = {7, 33, 21, 3};

typedef struct {
  const char *name;
  int stage, offload, accumulation;
} config;

typedef struct {
  tdm_context *ctx;
  tdm_engine *e;
  tdm_optimizer *opt;
  int module[LAYERS], param[2 * LAYERS];
  float *value[2 * LAYERS], *grad[2 * LAYERS]; /* cached once */
} net;

static int rank, size;

static size_t numel(int p) {
  int l = p / 2;
  return p % 2 ? (size_t)width[l + 1] : (size_t)width[l + 1] * width[l];
}

/* The same initial values on every rank and in every run. */
static void initial(int p, float *out) {
  for (size_t i = 0; i < numel(p); i++)
    out[i] = (float)sin(0.37 * (double)(i + 1) + p) / (float)width[p / 2];
}

static int open_net(const config *c, net *n) {
  memset(n, 0, sizeof *n);
  tdm_options o = TDM_OPTIONS_INIT;
  o.zero_stage = c->stage;
  o.offload = c->offload;
  o.gradient_accumulation_steps = c->accumulation;
  o.zero3_persistence_threshold = 0; /* every module really sharded */
  o.mixed_precision = TDM_PRECISION_NO;
  o.reduce_dtype = TDM_F32;
  tdm_status st = tdm_init_comm(MPI_COMM_WORLD, &o, &n->ctx);
  if (st == TDM_ERR_NOT_SUPPORTED)
    return 0;
  TH_OK(st);
  TH_OK(tdm_engine_create(n->ctx, &n->e));
  float init[33 * 21];
  for (int l = 0; l < LAYERS; l++) {
    char name[32];
    snprintf(name, sizeof name, "fc%d", l + 1);
    TH_OK(tdm_add_module(n->e, name, &n->module[l]));
    for (int k = 0; k < 2; k++) {
      int p = 2 * l + k;
      int64_t shape[2] = {width[l + 1], width[l]};
      snprintf(name, sizeof name, "fc%d.%s", l + 1, k ? "bias" : "weight");
      initial(p, init);
      TH_OK(tdm_add_param(n->e, n->module[l], name, TDM_F32, k ? 1 : 2, shape,
                          init, 0, &n->param[p]));
    }
  }
  TH_OK(tdm_prepare(n->e));
  for (int p = 0; p < 2 * LAYERS; p++)
    TH_OK(tdm_param_buffers(n->e, n->param[p], (void **)&n->value[p],
                            (void **)&n->grad[p]));
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  oo.kind = TDM_OPTIMIZER_ADAMW;
  oo.lr = 0.01;
  oo.weight_decay = 0.01;
  TH_OK(tdm_optimizer_create(n->e, &oo, &n->opt));
  return 1;
}

static void close_net(net *n) {
  TH_OK(tdm_optimizer_destroy(n->opt));
  TH_OK(tdm_engine_destroy(n->e));
  TH_OK(tdm_finalize(n->ctx));
}

/* The global batch of (micro-)step s: sample j of rank r at row
 * (s * size + r) * BATCH + j of a fixed data set. */
static void sample(long row, float *x, float *y) {
  for (int i = 0; i < width[0]; i++)
    x[i] = (float)cos(0.11 * (double)row * (i + 1) + i);
  for (int o = 0; o < width[LAYERS]; o++)
    y[o] = (float)sin(x[o] * 2.0 + x[o + 1]) * 0.5f;
}

/* act[l + 1] = tanh(W act[l] + b) (the last layer linear), then the
 * squared error's gradient back through the layers, all through the
 * cached pointers. */
static void forward_backward(net *n, long micro, double scale) {
  static float act[LAYERS + 1][BATCH * 33], dact[LAYERS + 1][BATCH * 33];
  float y[BATCH * 3];
  for (int j = 0; j < BATCH; j++)
    sample((micro * size + rank) * BATCH + j, &act[0][j * width[0]],
           &y[j * width[LAYERS]]);
  for (int l = 0; l < LAYERS; l++) {
    int in = width[l], out = width[l + 1];
    const float *w = n->value[2 * l], *b = n->value[2 * l + 1];
    TH_OK(tdm_fetch_module(n->e, n->module[l]));
    for (int j = 0; j < BATCH; j++)
      for (int o = 0; o < out; o++) {
        float s = b[o];
        for (int i = 0; i < in; i++)
          s += w[o * in + i] * act[l][j * in + i];
        act[l + 1][j * out + o] = l < LAYERS - 1 ? tanhf(s) : s;
      }
    TH_OK(tdm_release_module(n->e, n->module[l]));
  }
  for (int j = 0; j < BATCH * width[LAYERS]; j++)
    dact[LAYERS][j] = (float)(2.0 * (act[LAYERS][j] - y[j]) /
                              (BATCH * width[LAYERS]) * scale);
  for (int l = LAYERS - 1; l >= 0; l--) {
    int in = width[l], out = width[l + 1];
    const float *w = n->value[2 * l];
    float *dw = n->grad[2 * l], *db = n->grad[2 * l + 1];
    TH_OK(tdm_fetch_module(n->e, n->module[l]));
    memset(dact[l], 0, sizeof dact[l]);
    for (int j = 0; j < BATCH; j++)
      for (int o = 0; o < out; o++) {
        float yv = act[l + 1][j * out + o], d = dact[l + 1][j * out + o];
        if (l < LAYERS - 1)
          d *= 1 - yv * yv;
        db[o] += d;
        for (int i = 0; i < in; i++) {
          dw[o * in + i] += d * act[l][j * in + i];
          dact[l][j * in + i] += d * w[o * in + i];
        }
      }
    TH_OK(tdm_module_grads_ready(n->e, n->module[l]));
    TH_OK(tdm_release_module(n->e, n->module[l]));
  }
}

/* Trains STEPS optimizer steps; out gets every parameter's final values. */
static int train(const config *c, float *out) {
  net n;
  if (!open_net(c, &n))
    return 0;
  long micro = 0;
  for (int step = 0; step < STEPS;) {
    double scale;
    int stepped = 0;
    TH_OK(tdm_loss_scale(n.e, &scale));
    TH_OK(tdm_backward_begin(n.e));
    forward_backward(&n, micro++, scale);
    TH_OK(tdm_backward_end(n.e));
    TH_OK(tdm_step(n.opt, &stepped));
    step += stepped;
  }
  for (int p = 0; p < 2 * LAYERS; p++) {
    void *data = NULL, *grad = NULL;
    TH_OK(tdm_fetch_module(n.e, n.module[p / 2]));
    TH_OK(tdm_param_buffers(n.e, n.param[p], &data, &grad));
    TH_OK(tdm_release_module(n.e, n.module[p / 2]));
    TH_CHECK(data == n.value[p] && grad == n.grad[p],
             "%s: param %d moved: data %p -> %p, grad %p -> %p", c->name, p,
             (void *)n.value[p], data, (void *)n.grad[p], grad);
    TH_OK(tdm_gather_param(n.e, n.param[p], out));
    out += numel(p);
  }
  close_net(&n);
  return 1;
}

/* tests/debug-touch.sh's half: with TANDEM_DEBUG set, read fc2.weight's
 * values at stage 3 without fetching them.  That must die in the
 * library's fault handler, which names rank, tensor and rule; returning
 * is a failure. */
static int touch(void) {
  config c = {"touch", 3, TDM_OFFLOAD_NONE, 1};
  net n;
  if (!open_net(&c, &n))
    return 0;
  volatile float *at = n.value[2];
  fprintf(stderr, "rank %d: reading fc2.weight unfetched\n", rank);
  at[numel(2) / 2] += 1.0f; /* faults */
  fprintf(stderr, "rank %d: the read did not fault\n", rank);
  close_net(&n);
  return 2;
}

int main(int argc, char **argv) {
  th_init(&argc, &argv, MPI_THREAD_MULTIPLE, &rank, &size);
  if (argc == 2 && strcmp(argv[1], "--touch") == 0) {
    int rc = touch();
    MPI_Finalize();
    return rc;
  }
  size_t total = 0;
  for (int p = 0; p < 2 * LAYERS; p++)
    total += numel(p);
  float *ref = malloc(total * sizeof *ref), *got = malloc(total * sizeof *got);
  static const config configs[] = {
      {"stage 1", 1, TDM_OFFLOAD_NONE, 1},
      {"stage 2", 2, TDM_OFFLOAD_NONE, 1},
      {"stage 3", 3, TDM_OFFLOAD_NONE, 1},
      {"stage 2, offload optimizer", 2, TDM_OFFLOAD_OPTIMIZER, 1},
      {"stage 3, offload params", 3, TDM_OFFLOAD_PARAMS, 1},
      {"stage 1, 2 micro-steps", 1, TDM_OFFLOAD_NONE, 2},
      {"stage 2, 2 micro-steps", 2, TDM_OFFLOAD_NONE, 2},
      {"stage 3, 2 micro-steps, offload params", 3, TDM_OFFLOAD_PARAMS, 2}};
  for (int accumulation = 1; accumulation <= 2; accumulation++) {
    config base = {"stage 0", 0, TDM_OFFLOAD_NONE, accumulation};
    if (!train(&base, ref))
      continue;
    for (size_t k = 0; k < sizeof configs / sizeof *configs; k++) {
      const config *c = &configs[k];
      if (c->accumulation != accumulation || !train(c, got))
        continue;
      double worst = 0; /* relative L2 error, the worst parameter */
      for (size_t p = 0, at = 0; p < 2 * LAYERS; at += numel((int)p++)) {
        double diff = 0, norm = 0;
        for (size_t i = at; i < at + numel((int)p); i++) {
          diff += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
          norm += (double)ref[i] * ref[i];
        }
        worst = fmax(worst, sqrt(diff / norm));
      }
      TH_CHECK(worst <= 1e-6, "%s N=%d: final weights differ from stage 0 "
               "by %.3g (relative L2)", c->name, size, worst);
      if (rank == 0)
        printf("# %s N=%d: relative L2 difference from stage 0 %.3g\n",
               c->name, size, worst);
    }
  }
  free(ref);
  free(got);
  int rc = th_finish("t_stable");
  MPI_Finalize();
  return rc;
}
