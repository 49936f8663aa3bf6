/* t_gpu_train.c - training on the GPU equals training on the CPU.
 *
 * The deep model of deep_model.c (10 fully connected layers of odd
 * widths, none divisible by 2, 3 or 4 ranks) is trained twice in one
 * process: once by an engine on the CPU (device = TDM_DEVICE_CPU) and once
 * by an engine on CUDA (device = TDM_DEVICE_CUDA, whose tdm_param_buffers
 * hands out device pointers and whose gradients are reduced by NCCL,
 * CUDA-aware MPI or staged copies: TANDEM_GPU_COLLECTIVES), 10 AdamW steps
 * with tdm_clip_grad_norm(1.0), each rank on its own slice of the global
 * batch, for zero_stage 0, 1, 2 and 3 (every module sharded, a window of
 * about one module prefetched), offload=optimizer at stages 1, 2 and 3,
 * offload=params at stage 3, f32 and bf16 compute copies, 1 and 2
 * accumulation micro-steps.  The loss of every micro-step, the clip norm
 * of every step and every parameter read back with tdm_gather_param (host
 * memory in both cases) agree within 1e-6 relative on every rank (on a
 * real GPU NCCL may sum in another order than MPI; on the fake GPU the
 * runs agree bit for bit, as both engines poll: a CPU engine with a
 * communication thread takes other MPI collectives, which round
 * differently).  tdm_get_memory_info puts the parameters, gradients,
 * optimizer state (and bf16's master weights) on the device for the CUDA
 * engine and on the host for the CPU engine, and nothing of them on the
 * other side; with offload the CUDA engine's optimizer state and masters
 * (f32 too, unless offload=params makes the master the parameter shard)
 * only on the host, its gradients on both sides (a host copy of the
 * shard), its parameters on the device (and a bf16 shard copy on the
 * host) or, with offload=params, on the host.
 *
 * Design: the model's math is deep_model.c's, reused unchanged, but
 * deep_forward_backward reads tdm_param_buffers directly and so needs host
 * pointers.  The CUDA run therefore gives it a host "mirror": a second
 * engine, on the CPU and on MPI_COMM_SELF, with the same registration and
 * precision (ZeRO stage 0, no optimizer), whose buffers serve as host
 * copies of the CUDA engine's.  A micro-step of the CUDA run is
 *   1. forward order, for each module of the CUDA engine: fetch, copy its
 *      device values into the mirror's data buffers, release;
 *   2. deep_forward_backward on the mirror (gradients zeroed first, seeded
 *      with the CUDA engine's tdm_loss_scale): the loss, and this
 *      micro-step's gradients in the mirror's host gradient buffers (a
 *      sum over one rank leaves them as they are);
 *   3. backward order, for each module of the CUDA engine: fetch, check
 *      that the values are still those copied in step 1 (the ZeRO-3
 *      re-gather), add the mirror's gradients into the device gradients
 *      (read, add, write back), mark the module ready, release.
 * So the CUDA run's gradients come from its own device values alone, and
 * its engine sees the fetch / release / ready sequence of the CPU run.  A
 * lock-step twin that borrowed the CPU run's gradients would not test the
 * device path; a copy of the model's math in this file would not be the
 * same math.  Device reads and writes are cudaMemcpy (cudaMemcpyDefault)
 * on a real GPU and memcpy on the fake one (TANDEM_TEST_FAKE_GPU=1 with
 * no GPU visible, or a build without CUDA), whose device memory is host
 * memory; on a real GPU every buffer the CUDA engine hands out must be
 * device memory by cudaPointerGetAttributes.  Gradients are reduced in
 * f32 (reduce_dtype), where the mirror's zero + g is exactly g.
 *
 * Skips (exit 77) without a GPU unless TANDEM_TEST_FAKE_GPU=1, and on a
 * real GPU when a node has more ranks than GPUs (NCCL needs one GPU per
 * rank).  TDM_TEST_VERBOSE=1 prints a line per configuration;
 * TDM_TEST_QUICK=1 runs a smaller set (2 micro-steps; stages 0, 2, 3,
 * offload=optimizer at stage 3, offload=params), for compute-sanitizer. */
#include <stdint.h>

#include "config.h"
#include "deep_model.h"
#include "harness.h"
#include "tandem_mpi.h"
#include "gpu_util.h"

#define NLAYERS 10
#define NPARAMS (2 * NLAYERS)
#define B 4      /* samples per rank and micro-step */
#define STEPS 10
#define MAX_ACCUM 2
#define TOL 1e-6
#define SMALL_PREFETCH 1536 /* about one module of the model */

static const int width[NLAYERS + 1] = {13, 29, 7, 41, 11, 23, 5, 37, 19, 31,
                                       17};

static int rank, size, verbose, fake;
static int collectives = -1; /* the CUDA engine's, as resolved */

typedef struct {
  int stage, precision, accum;
  int offload; /* tdm_offload */
} config;

/* ---- device copies ------------------------------------------------------- */

/* bytes from src to dst, either of them device memory. */
static tdm_status dev_copy(void *dst, const void *src, size_t bytes) {
#ifdef HAVE_CUDA
  if (!fake) {
    cudaError_t err = cudaMemcpy(dst, src, bytes, cudaMemcpyDefault);
    TH_CHECK(err == cudaSuccess, "cudaMemcpy: %s", cudaGetErrorString(err));
    return err == cudaSuccess ? TDM_SUCCESS : TDM_ERR_DEVICE;
  }
#endif
  memcpy(dst, src, bytes);
  return TDM_SUCCESS;
}

/* Whether p is device memory: always on the fake GPU (host memory that
 * only the library tells apart), by CUDA's pointer attributes on a real
 * one. */
static int is_device_memory(const void *p) {
#ifdef HAVE_CUDA
  struct cudaPointerAttributes a;
  if (!fake) {
    memset(&a, 0, sizeof a);
    int ok = cudaPointerGetAttributes(&a, p) == cudaSuccess &&
             a.type == cudaMemoryTypeDevice;
    cudaGetLastError();
    return ok;
  }
#endif
  (void)p;
  return 1;
}

/* ---- engines --------------------------------------------------------------- */

typedef struct {
  tdm_context *ctx;
  tdm_engine *e;
  tdm_optimizer *opt; /* NULL for the mirror */
  deep_model m;
} trainer;

typedef struct {
  int cuda;
  trainer main;  /* the engine under test                            */
  trainer host;  /* CUDA runs: the host mirror (CPU, MPI_COMM_SELF)  */
  float *scratch; /* one parameter read from the device              */
  int changed, first_changed; /* values of backward not those of forward:
                                 how often, the first parameter         */
} run;

static tdm_options options_for(const config *c, int device) {
  tdm_options o = TDM_OPTIONS_INIT;
  o.device = device;
  o.first_bucket_bytes = 256;
  o.bucket_cap_bytes = 1024;
  o.gradient_accumulation_steps = c->accum;
  o.mixed_precision = c->precision;
  o.reduce_dtype = TDM_F32;
  o.zero_stage = c->stage;
  o.offload = c->offload;
  o.progress = TDM_PROGRESS_POLL; /* as a CUDA engine always does */
  if (c->stage == 3) {
    o.zero3_prefetch_bytes = SMALL_PREFETCH;
    o.zero3_persistence_threshold = 0;
  }
  return o;
}

static tdm_status create_optimizer(trainer *t) {
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  oo.kind = TDM_OPTIMIZER_ADAMW;
  oo.lr = 1e-3;
  oo.weight_decay = 0.01;
  return tdm_optimizer_create(t->e, &oo, &t->opt);
}

static void close_trainer(trainer *t) {
  if (t->opt)
    TH_OK(tdm_optimizer_destroy(t->opt));
  if (t->e)
    TH_OK(tdm_engine_destroy(t->e));
  if (t->ctx)
    TH_OK(tdm_finalize(t->ctx));
  deep_free(&t->m);
  memset(t, 0, sizeof *t);
}

/* Context, engine, model (and AdamW when with_opt); 0 after a failed
 * check. */
static int open_trainer(trainer *t, MPI_Comm comm, const tdm_options *o,
                        int with_opt) {
  memset(t, 0, sizeof *t);
  tdm_status st = tdm_init_comm(comm, o, &t->ctx);
  if (st == TDM_SUCCESS)
    st = tdm_engine_create(t->ctx, &t->e);
  if (st == TDM_SUCCESS)
    st = deep_register(t->ctx, t->e, NLAYERS, width, 77, &t->m);
  if (st == TDM_SUCCESS)
    st = tdm_prepare(t->e);
  if (st == TDM_SUCCESS && with_opt)
    st = create_optimizer(t);
  TH_CHECK(st == TDM_SUCCESS, "opening a %s engine: %s: %s",
           o->device == TDM_DEVICE_CUDA ? "CUDA" : "CPU",
           tdm_status_string(st), tdm_last_error());
  if (st != TDM_SUCCESS)
    close_trainer(t);
  return st == TDM_SUCCESS;
}

static void close_run(run *r) {
  close_trainer(&r->main);
  close_trainer(&r->host);
  free(r->scratch);
}

static int open_run(run *r, const config *c, int cuda) {
  memset(r, 0, sizeof *r);
  r->cuda = cuda;
  tdm_options o = options_for(c, cuda ? TDM_DEVICE_CUDA : TDM_DEVICE_CPU);
  if (!open_trainer(&r->main, MPI_COMM_WORLD, &o, 1))
    return 0;
  tdm_device_kind kind = TDM_DEVICE_AUTO;
  int index = -1;
  TH_OK(tdm_get_device(r->main.ctx, &kind, &index));
  TH_CHECK(kind == (tdm_device_kind)o.device, "device %d, asked for %d",
           (int)kind, o.device);
  if (!cuda)
    return 1;
  tdm_options got = TDM_OPTIONS_INIT;
  TH_OK(tdm_get_options(r->main.ctx, &got));
  collectives = got.gpu_collectives;
  config mc = {0, c->precision, 1, TDM_OFFLOAD_NONE};
  tdm_options h = options_for(&mc, TDM_DEVICE_CPU);
  size_t largest = 0;
  for (int l = 0; l < NLAYERS; l++)
    if ((size_t)width[l] * (size_t)width[l + 1] > largest)
      largest = (size_t)width[l] * (size_t)width[l + 1];
  r->scratch = malloc(sizeof *r->scratch * largest);
  if (!open_trainer(&r->host, MPI_COMM_SELF, &h, 0) || !r->scratch) {
    close_run(r);
    return 0;
  }
  return 1;
}

/* ---- the host mirror of a CUDA engine -------------------------------------- */

static size_t param_count(int l, int which) {
  size_t out = (size_t)width[l + 1];
  return which == 0 ? out * (size_t)width[l] : out;
}

static int param_of(const deep_model *m, int l, int which) {
  return which == 0 ? m->weight[l] : m->bias[l];
}

/* The data (grad 0) or gradient (grad 1) of a parameter in the CUDA
 * engine and in the mirror, and its bytes. */
static tdm_status buffer_pair(run *r, int l, int which, int grad, void **dev,
                              void **host, size_t *bytes) {
  int p = param_of(&r->main.m, l, which), q = param_of(&r->host.m, l, which);
  tdm_dtype dd[2] = {TDM_F32, TDM_F32}, hd[2] = {TDM_F32, TDM_F32};
  size_t esize = 0;
  tdm_status st = tdm_param_buffers(r->main.e, p, grad ? NULL : dev,
                                    grad ? dev : NULL);
  if (st == TDM_SUCCESS)
    st = tdm_param_buffers(r->host.e, q, grad ? NULL : host,
                           grad ? host : NULL);
  if (st == TDM_SUCCESS)
    st = tdm_get_param_dtypes(r->main.e, p, &dd[0], &dd[1]);
  if (st == TDM_SUCCESS)
    st = tdm_get_param_dtypes(r->host.e, q, &hd[0], &hd[1]);
  if (st == TDM_SUCCESS)
    st = tdm_dtype_size(dd[grad], &esize);
  if (st == TDM_SUCCESS && !is_device_memory(*dev)) {
    TH_CHECK(0, "layer%d: the CUDA engine's %s is not device memory", l,
             grad ? "gradient" : "data");
    st = TDM_ERR_DEVICE;
  }
  if (st == TDM_SUCCESS && (dd[grad] != hd[grad] ||
                            (grad && dd[grad] != TDM_F32))) {
    TH_CHECK(0, "layer%d: %s dtype %d on the device, %d in the mirror", l,
             grad ? "gradient" : "data", (int)dd[grad], (int)hd[grad]);
    st = TDM_ERR_INTERNAL;
  }
  *bytes = esize * param_count(l, which);
  return st;
}

/* Step 1: the fetched module's device values into the mirror. */
static tdm_status pull_values(run *r, int l) {
  tdm_status st = TDM_SUCCESS;
  for (int which = 0; which < 2 && st == TDM_SUCCESS; which++) {
    void *dev = NULL, *host = NULL;
    size_t bytes = 0;
    st = buffer_pair(r, l, which, 0, &dev, &host, &bytes);
    if (st == TDM_SUCCESS)
      st = dev_copy(host, dev, bytes);
  }
  return st;
}

/* Step 3, before the gradients: the values fetched again are those the
 * mirror computed with.  A difference fails the test but not the step, so
 * that every rank goes on with the same collectives. */
static tdm_status check_values(run *r, int l) {
  tdm_status st = TDM_SUCCESS;
  for (int which = 0; which < 2 && st == TDM_SUCCESS; which++) {
    void *dev = NULL, *host = NULL;
    size_t bytes = 0;
    st = buffer_pair(r, l, which, 0, &dev, &host, &bytes);
    if (st == TDM_SUCCESS)
      st = dev_copy(r->scratch, dev, bytes);
    if (st == TDM_SUCCESS && memcmp(r->scratch, host, bytes) != 0 &&
        r->changed++ == 0)
      r->first_changed = 2 * l + which;
  }
  return st;
}

/* Step 3: device gradient += the mirror's (read, add, write back). */
static tdm_status push_grads(run *r, int l) {
  tdm_status st = check_values(r, l);
  for (int which = 0; which < 2 && st == TDM_SUCCESS; which++) {
    void *dev = NULL, *host = NULL;
    size_t bytes = 0;
    st = buffer_pair(r, l, which, 1, &dev, &host, &bytes);
    if (st == TDM_SUCCESS)
      st = dev_copy(r->scratch, dev, bytes);
    const float *g = host;
    for (size_t i = 0; st == TDM_SUCCESS && i < param_count(l, which); i++)
      r->scratch[i] += g[i];
    if (st == TDM_SUCCESS)
      st = dev_copy(dev, r->scratch, bytes);
  }
  if (st == TDM_SUCCESS)
    st = tdm_module_grads_ready(r->main.e, r->main.m.module[l]);
  return st;
}

/* fn between fetch and release of module l of the CUDA engine. */
static tdm_status with_module(run *r, int l,
                              tdm_status (*fn)(run *r, int l)) {
  tdm_status st = tdm_fetch_module(r->main.e, r->main.m.module[l]);
  if (st != TDM_SUCCESS)
    return st;
  st = fn(r, l);
  tdm_status rs = tdm_release_module(r->main.e, r->main.m.module[l]);
  return st == TDM_SUCCESS ? rs : st;
}

/* Step 2: this micro-step's loss and gradients, on the mirror. */
static tdm_status host_forward_backward(run *r, const float *x,
                                        const float *y, double scale,
                                        double *loss) {
  tdm_status st = TDM_SUCCESS;
  for (int l = 0; l < NLAYERS && st == TDM_SUCCESS; l++)
    for (int which = 0; which < 2 && st == TDM_SUCCESS; which++) {
      void *g = NULL;
      st = tdm_param_buffers(r->host.e, param_of(&r->host.m, l, which), NULL,
                             &g);
      if (st == TDM_SUCCESS)
        memset(g, 0, sizeof(float) * param_count(l, which));
    }
  if (st == TDM_SUCCESS)
    st = tdm_backward_begin(r->host.e);
  if (st == TDM_SUCCESS) {
    st = deep_forward_backward(r->host.e, &r->host.m, x, y, B, scale, loss);
    tdm_status es = tdm_backward_end(r->host.e);
    st = st == TDM_SUCCESS ? es : st;
  }
  return st;
}

static tdm_status mirrored_micro_step(run *r, const float *x, const float *y,
                                      double scale, double *loss) {
  tdm_status st = TDM_SUCCESS;
  for (int l = 0; l < NLAYERS && st == TDM_SUCCESS; l++)
    st = with_module(r, l, pull_values);
  if (st == TDM_SUCCESS)
    st = host_forward_backward(r, x, y, scale, loss);
  for (int l = NLAYERS - 1; l >= 0 && st == TDM_SUCCESS; l--)
    st = with_module(r, l, push_grads);
  return st;
}

/* ---- training ---------------------------------------------------------------- */

typedef struct {
  float *x, *y; /* STEPS * MAX_ACCUM * size * B samples */
} dataset;

/* A deterministic generator in [-1, 1) (splitmix64). */
static float uniform(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (float)((double)(z >> 11) / 4503599627370496.0 - 1.0);
}

static int make_data(dataset *d) {
  const int in = width[0], out = width[NLAYERS];
  size_t total = (size_t)STEPS * MAX_ACCUM * (size_t)size * B;
  d->x = malloc(sizeof *d->x * total * (size_t)in);
  d->y = malloc(sizeof *d->y * total * (size_t)out);
  if (!d->x || !d->y)
    return 0;
  uint64_t s = 5;
  for (size_t i = 0; i < total * (size_t)in; i++)
    d->x[i] = 2.0f * uniform(&s);
  for (size_t i = 0; i < total; i++)
    for (int o = 0; o < out; o++)
      d->y[i * out + o] = 0.5f * sinf((float)(1 + o % 3) *
                                          d->x[i * in + o % in] +
                                      0.1f * (float)o);
  return 1;
}

typedef struct {
  double loss[STEPS * MAX_ACCUM];
  double norm[STEPS];
  int stepped[STEPS];
  float *value[NPARAMS];
} result;

static void free_result(result *res) {
  for (int p = 0; p < NPARAMS; p++)
    free(res->value[p]);
}

/* One micro-step of this rank's B samples; returns its status. */
static tdm_status micro_step(run *r, const dataset *d, long first,
                             double *loss) {
  const float *x = &d->x[first * width[0]];
  const float *y = &d->y[first * width[NLAYERS]];
  double scale = 0;
  tdm_status st = tdm_loss_scale(r->main.e, &scale);
  if (st == TDM_SUCCESS)
    st = tdm_backward_begin(r->main.e);
  if (st != TDM_SUCCESS)
    return st;
  st = r->cuda ? mirrored_micro_step(r, x, y, scale, loss)
               : deep_forward_backward(r->main.e, &r->main.m, x, y, B, scale,
                                       loss);
  tdm_status es = tdm_backward_end(r->main.e);
  return st == TDM_SUCCESS ? es : st;
}

/* The full values of every parameter, on every rank. */
static void gather_values(run *r, result *res) {
  for (int l = 0; l < NLAYERS; l++)
    for (int which = 0; which < 2; which++) {
      float *v = calloc(param_count(l, which), sizeof *v);
      res->value[2 * l + which] = v;
      if (v)
        TH_OK(tdm_gather_param(r->main.e, param_of(&r->main.m, l, which),
                               v));
    }
}

static void train(run *r, const config *c, const dataset *d, result *res) {
  memset(res, 0, sizeof *res);
  int failed = 0;
  for (int step = 0; step < STEPS && !failed; step++)
    for (int j = 0; j < c->accum && !failed; j++) {
      long first = ((long)(step * c->accum + j) * size + rank) * B;
      tdm_status st = micro_step(r, d, first, &res->loss[step * c->accum + j]);
      TH_CHECK(st == TDM_SUCCESS, "%s run: step %d micro-step %d: %s: %s",
               r->cuda ? "CUDA" : "CPU", step, j, tdm_status_string(st),
               tdm_last_error());
      if ((failed = st != TDM_SUCCESS))
        break; /* the engine dropped the cycle */
      int stepped = -1;
      if (j == c->accum - 1)
        TH_OK(tdm_clip_grad_norm(r->main.opt, 1.0, &res->norm[step]));
      TH_OK(tdm_step(r->main.opt, &stepped));
      if (j == c->accum - 1)
        res->stepped[step] = stepped;
    }
  TH_CHECK(r->changed == 0, "%d times the values fetched for backward "
           "differed from those of forward, first in layer%d.%s", r->changed,
           r->first_changed / 2, r->first_changed % 2 ? "bias" : "weight");
  gather_values(r, res);
}

/* ---- checks -------------------------------------------------------------------- */

static const char *const category_names[] = {"params", "grads",
                                             "optimizer state",
                                             "master weights"};

/* That category cat of the memory report holds bytes on the host when
 * host says so, else none, and likewise on the device. */
static void check_where(const tdm_memory_info *info, int cat, int host,
                        int device, const char *label, const char *engine) {
  uint64_t h = info->current[cat][TDM_MEM_HOST];
  uint64_t d = info->current[cat][TDM_MEM_DEVICE];
  TH_CHECK((h > 0) == host && (d > 0) == device,
           "%s %s: %s %llu bytes on the host, %llu on the device; want %s "
           "on the host, %s on the device", label, engine,
           category_names[cat], (unsigned long long)h, (unsigned long long)d,
           host ? "some" : "none", device ? "some" : "none");
}

/* Where the model state lives: params, grads, optimizer state (and the
 * masters of bf16 copies) all at the engine's device, none elsewhere;
 * with offload on the device, the optimizer's side (state, masters, a
 * copy of the gradient shard) on the host, and with offload=params the
 * parameter shards too. */
static void check_memory(const run *r, const config *c, const char *label) {
  tdm_memory_info info;
  memset(&info, 0, sizeof info);
  info.size = sizeof info;
  TH_OK(tdm_get_memory_info(r->main.e, &info));
  const char *engine = r->cuda ? "CUDA" : "CPU";
  int mixed = c->precision != TDM_PRECISION_NO;
  if (!r->cuda || c->offload == TDM_OFFLOAD_NONE) {
    for (int cat = TDM_MEM_PARAMS; cat <= TDM_MEM_MASTER_WEIGHTS; cat++) {
      int some = cat != TDM_MEM_MASTER_WEIGHTS || mixed;
      check_where(&info, cat, some && !r->cuda, some && r->cuda, label,
                  engine);
    }
    return;
  }
  int params = c->offload == TDM_OFFLOAD_PARAMS;
  /* the host holds a bf16 shard copy, or the shards themselves */
  check_where(&info, TDM_MEM_PARAMS, mixed || params, !params, label, engine);
  check_where(&info, TDM_MEM_GRADS, 1, 1, label, engine);
  check_where(&info, TDM_MEM_OPTIMIZER_STATE, 1, 0, label, engine);
  check_where(&info, TDM_MEM_MASTER_WEIGHTS, mixed || !params, 0, label,
              engine);
}

/* ||a - b|| / ||b||, or ||a - b|| when b is 0; huge when not finite. */
static double rel_l2(const float *a, const float *b, size_t n) {
  double diff = 0, ref = 0;
  for (size_t i = 0; a && b && i < n; i++) {
    double d = (double)a[i] - b[i];
    diff += d * d;
    ref += (double)b[i] * b[i];
  }
  double e = ref > 0 ? sqrt(diff / ref) : sqrt(diff);
  return a && b && isfinite(e) ? e : 1e300;
}

static double rel_err(double a, double b) {
  double e = fabs(a - b) / fmax(fabs(b), 1e-30);
  return isfinite(e) ? e : 1e300;
}

enum { E_WEIGHTS, E_LOSS, E_NORM, E_STEPPED, E_COUNT };

/* The worst errors of the CUDA run against the CPU run on this rank. */
static void errors(const config *c, const result *gpu, const result *cpu,
                   double err[E_COUNT]) {
  memset(err, 0, sizeof(double) * E_COUNT);
  for (int l = 0; l < NLAYERS; l++)
    for (int which = 0; which < 2; which++) {
      int p = 2 * l + which;
      err[E_WEIGHTS] = fmax(err[E_WEIGHTS],
                            rel_l2(gpu->value[p], cpu->value[p],
                                   param_count(l, which)));
    }
  for (int s = 0; s < STEPS * c->accum; s++)
    err[E_LOSS] = fmax(err[E_LOSS], rel_err(gpu->loss[s], cpu->loss[s]));
  for (int s = 0; s < STEPS; s++) {
    err[E_NORM] = fmax(err[E_NORM], rel_err(gpu->norm[s], cpu->norm[s]));
    err[E_STEPPED] += gpu->stepped[s] != 1 || cpu->stepped[s] != 1;
  }
}

static void compare(const config *c, const result *gpu, const result *cpu,
                    const char *label) {
  double err[E_COUNT], worst[E_COUNT];
  errors(c, gpu, cpu, err);
  MPI_Allreduce(err, worst, E_COUNT, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (rank != 0)
    return;
  int before = th_failures;
  TH_CHECK(worst[E_WEIGHTS] <= TOL, "%s N=%d: weights rel err %.3g", label,
           size, worst[E_WEIGHTS]);
  TH_CHECK(worst[E_LOSS] <= TOL, "%s N=%d: loss rel err %.3g", label, size,
           worst[E_LOSS]);
  TH_CHECK(worst[E_NORM] <= TOL, "%s N=%d: clip norm rel err %.3g", label,
           size, worst[E_NORM]);
  TH_CHECK(worst[E_STEPPED] == 0, "%s N=%d: %g steps without an update",
           label, size, worst[E_STEPPED]);
  if (verbose || th_failures > before)
    printf("%-36s N=%d: CUDA vs CPU rel err: weights %.3g, losses %.3g, "
           "norms %.3g\n", label, size, worst[E_WEIGHTS], worst[E_LOSS],
           worst[E_NORM]);
}

static void configuration(const config *c, const dataset *d) {
  char label[80];
  static const char *const offload_names[] = {"", " offload optimizer",
                                               " offload params"};
  snprintf(label, sizeof label, "stage %d%s %s k=%d", c->stage,
           offload_names[c->offload],
           c->precision == TDM_PRECISION_NO ? "f32" : "bf16", c->accum);
  result res[2];
  int ok[2] = {0, 0};
  for (int cuda = 0; cuda <= 1; cuda++) {
    run r;
    memset(&res[cuda], 0, sizeof res[cuda]);
    if (!(ok[cuda] = open_run(&r, c, cuda)))
      continue;
    train(&r, c, d, &res[cuda]);
    check_memory(&r, c, label);
    close_run(&r);
  }
  if (ok[0] && ok[1])
    compare(c, &res[1], &res[0], label);
  free_result(&res[0]);
  free_result(&res[1]);
}

/* ---- main ------------------------------------------------------------------------ */

/* The skip message (NULL: run), decided from every rank's view. */
static const char *skip_reason(int gpus) {
  const char *env = getenv("TANDEM_TEST_FAKE_GPU");
  int none = gpus == 0 && !(env && strcmp(env, "1") == 0), any = 0;
  MPI_Allreduce(&none, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  int own = th_gpu_per_rank(NULL); /* collective */
  if (any)
    return "skip: no GPU visible; set TANDEM_TEST_FAKE_GPU=1 to run the "
           "device path on the CPU";
  if (gpus > 0 && !own)
    return "skip: one GPU per rank needed (NCCL cannot put two ranks on "
           "one GPU)";
  return NULL;
}

int main(int argc, char **argv) {
  th_init(&argc, &argv, MPI_THREAD_MULTIPLE, &rank, &size);
  const char *v = getenv("TDM_TEST_VERBOSE");
  verbose = v && *v && strcmp(v, "0") != 0;
  int gpus = th_visible_gpus();
  const char *skip = skip_reason(gpus);
  if (skip) {
    if (rank == 0)
      printf("t_gpu_train N=%d: %s\n", size, skip);
    MPI_Finalize();
    return 77;
  }
  fake = gpus == 0;
  double t0 = MPI_Wtime();
  dataset d;
  TH_CHECK(make_data(&d), "no memory for the data");
  /* every stage, then the offloads */
  static const int placements[][2] = {
      {0, TDM_OFFLOAD_NONE},      {1, TDM_OFFLOAD_NONE},
      {2, TDM_OFFLOAD_NONE},      {3, TDM_OFFLOAD_NONE},
      {1, TDM_OFFLOAD_OPTIMIZER}, {2, TDM_OFFLOAD_OPTIMIZER},
      {3, TDM_OFFLOAD_OPTIMIZER}, {3, TDM_OFFLOAD_PARAMS}};
  /* TDM_TEST_QUICK=1 (under compute-sanitizer): every kernel and copy
   * path still, 2 micro-steps only, stages 0, 2, 3 and both offloads */
  const char *q = getenv("TDM_TEST_QUICK");
  int quick = q && strcmp(q, "1") == 0;
  for (size_t i = 0; i < sizeof placements / sizeof placements[0]; i++) {
    if (quick && (placements[i][0] == 1 || (placements[i][0] == 2 &&
                                             placements[i][1])))
      continue;
    for (int p = TDM_PRECISION_NO; p <= TDM_PRECISION_BF16 && d.x && d.y; p++)
      for (int accum = quick ? MAX_ACCUM : 1; accum <= MAX_ACCUM; accum++) {
        config c = {placements[i][0], p, accum, placements[i][1]};
        configuration(&c, &d);
      }
  }
  free(d.x);
  free(d.y);
  if (rank == 0)
    printf("t_gpu_train N=%d on %s, gpu_collectives %d: %.2f s\n", size,
           fake ? "the fake GPU" : "a real GPU", collectives,
           MPI_Wtime() - t0);
  int rc = th_finish("t_gpu_train");
  MPI_Finalize();
  return rc;
}
