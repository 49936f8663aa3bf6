/* t_cuda_stream.c - tdm_set_cuda_stream / tdm_get_cuda_stream
 * (tandem_cuda.h).
 *  - Misuse: a NULL engine, a NULL result pointer, an engine on the CPU,
 *    a change inside a micro-step, each with its status and message.
 *  - On a GPU (real, or the fake one with TANDEM_TEST_FAKE_GPU=1): the
 *    default compute stream is NULL and NULL may be set again; the fake
 *    GPU refuses a real stream (TDM_ERR_NOT_SUPPORTED).
 *  - On real GPUs, one per rank: a model whose work runs on a stream
 *    created with cudaStreamNonBlocking, which never waits for the
 *    default stream nor it for it.  ZeRO stages 0 and 2, f32, SGD with lr
 *    1, 3 steps; each step every rank queues on its stream a long run of
 *    device-to-device copies and then the host-to-device copy of its
 *    gradient g = 0.25 (step + 1) (rank + 1), and marks it ready at once.
 *    The values read back on the stream right after tdm_step (a
 *    device-to-host copy queued there, then a wait for that stream only)
 *    must be w0 minus the sum over steps and ranks of g exactly (the
 *    engine sums; every number is exact in f32), at every step: the engine has ordered its reduction
 *    after the stream's copies and its update and gathers before the
 *    stream's next work.  tdm_get_cuda_stream returns the stream.
 * Skips (77) in builds without CUDA, where tandem_cuda.h cannot be
 * compiled. */
#include "config.h"
#include "harness.h"
#include "tandem_mpi.h"
#include "gpu_util.h"

#ifndef HAVE_CUDA
int main(int argc, char **argv) {
  int rank;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0)
    printf("t_cuda_stream: skip: built without CUDA\n");
  MPI_Finalize();
  return 77;
}
#else
#include "tandem_cuda.h"

#define N_ELEMS (1 << 20)   /* the parameter: 4 MiB                    */
#define DELAY_BYTES (256u << 20) /* each delaying copy               */
#define DELAY_COPIES 8
#define STEPS 3
#define W0 1.0f

static int rank, size;

/* An engine on device with stage; NULL (after a failed check) on error. */
static tdm_engine *engine_on(tdm_device_kind device, int stage,
                             tdm_context **ctx) {
  tdm_options o = TDM_OPTIONS_INIT;
  o.device = device;
  o.zero_stage = stage;
  tdm_engine *e = NULL;
  TH_OK(tdm_init_comm(MPI_COMM_WORLD, &o, ctx));
  if (*ctx)
    TH_OK(tdm_engine_create(*ctx, &e));
  return e;
}

static void close_engine(tdm_engine *e, tdm_context *ctx) {
  if (e)
    TH_OK(tdm_engine_destroy(e));
  if (ctx)
    TH_OK(tdm_finalize(ctx));
}

static void misuse(void) {
  cudaStream_t s = NULL;
  TH_FAILS(tdm_set_cuda_stream(NULL, NULL), TDM_ERR_INVALID_ARGUMENT,
           "engine is NULL");
  TH_FAILS(tdm_get_cuda_stream(NULL, &s), TDM_ERR_INVALID_ARGUMENT,
           "engine is NULL");
  tdm_context *ctx = NULL;
  tdm_engine *e = engine_on(TDM_DEVICE_CPU, 0, &ctx);
  if (!e) {
    close_engine(e, ctx);
    return;
  }
  TH_FAILS(tdm_set_cuda_stream(e, NULL), TDM_ERR_INVALID_USAGE,
           "engine is on the CPU");
  TH_FAILS(tdm_get_cuda_stream(e, &s), TDM_ERR_INVALID_USAGE,
           "engine is on the CPU");
  close_engine(e, ctx);
}

/* The default stream, NULL again, and what a micro-step forbids. */
static void defaults(int fake) {
  tdm_context *ctx = NULL;
  tdm_engine *e = engine_on(TDM_DEVICE_CUDA, 0, &ctx);
  if (!e) {
    close_engine(e, ctx);
    return;
  }
  cudaStream_t s = (cudaStream_t)&s; /* not NULL */
  TH_OK(tdm_get_cuda_stream(e, &s));
  TH_CHECK(s == NULL, "default compute stream %p, want NULL", (void *)s);
  TH_FAILS(tdm_get_cuda_stream(e, NULL), TDM_ERR_INVALID_ARGUMENT,
           "stream is NULL");
  TH_OK(tdm_set_cuda_stream(e, NULL));
  int64_t shape[1] = {4};
  int m = 0, p = 0;
  TH_OK(tdm_add_module(e, "m", &m));
  TH_OK(tdm_add_param(e, m, "w", TDM_F32, 1, shape, NULL, 0, &p));
  TH_OK(tdm_prepare(e));
  TH_OK(tdm_backward_begin(e));
  TH_FAILS(tdm_set_cuda_stream(e, NULL), TDM_ERR_INVALID_USAGE,
           "micro-step is in progress");
  TH_OK(tdm_grad_ready(e, p));
  TH_OK(tdm_backward_end(e));
  if (fake) /* any handle: the fake GPU has no CUDA streams */
    TH_FAILS(tdm_set_cuda_stream(e, (cudaStream_t)&ctx),
             TDM_ERR_NOT_SUPPORTED, "fake GPU");
  close_engine(e, ctx);
}

#define CU(call)                                                          \
  do {                                                                    \
    cudaError_t cu_ = (call);                                             \
    TH_CHECK(cu_ == cudaSuccess, "%s: %s", #call, cudaGetErrorString(cu_)); \
  } while (0)

typedef struct {
  cudaStream_t stream;
  void *delay;   /* two halves: copied back and forth to keep s busy */
  float *grad_host, *value_host; /* pinned */
} user_side;

/* Queues on s what takes a while, then this step's gradient into grad. */
static void queue_gradient(user_side *u, void *grad, int step) {
  char *half = (char *)u->delay + DELAY_BYTES / 2;
  for (int i = 0; i < DELAY_COPIES; i++)
    CU(cudaMemcpyAsync(i % 2 ? u->delay : half, i % 2 ? half : u->delay,
                       DELAY_BYTES / 2, cudaMemcpyDeviceToDevice, u->stream));
  float g = 0.25f * (float)(step + 1) * (float)(rank + 1);
  for (size_t i = 0; i < N_ELEMS; i++)
    u->grad_host[i] = g;
  CU(cudaMemcpyAsync(grad, u->grad_host, N_ELEMS * sizeof(float),
                     cudaMemcpyHostToDevice, u->stream));
}

/* The values as the stream sees them now; the worst element's error. */
static double values_on_stream(user_side *u, const void *data, float want) {
  CU(cudaMemcpyAsync(u->value_host, data, N_ELEMS * sizeof(float),
                     cudaMemcpyDeviceToHost, u->stream));
  CU(cudaStreamSynchronize(u->stream));
  double worst = 0;
  for (size_t i = 0; i < N_ELEMS; i++)
    worst = fmax(worst, fabs((double)u->value_host[i] - want));
  return worst;
}

static void train_on_stream(int stage, user_side *u) {
  tdm_context *ctx = NULL;
  tdm_engine *e = engine_on(TDM_DEVICE_CUDA, stage, &ctx);
  if (!e) {
    close_engine(e, ctx);
    return;
  }
  TH_OK(tdm_set_cuda_stream(e, u->stream));
  cudaStream_t got = NULL;
  TH_OK(tdm_get_cuda_stream(e, &got));
  TH_CHECK(got == u->stream, "tdm_get_cuda_stream %p, set %p", (void *)got,
           (void *)u->stream);
  float *w0 = malloc(N_ELEMS * sizeof *w0);
  for (size_t i = 0; i < N_ELEMS; i++)
    w0[i] = W0;
  int64_t shape[1] = {N_ELEMS};
  int m = 0, p = 0;
  TH_OK(tdm_add_module(e, "m", &m));
  TH_OK(tdm_add_param(e, m, "w", TDM_F32, 1, shape, w0, 0, &p));
  TH_OK(tdm_prepare(e));
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  oo.lr = 1.0;
  tdm_optimizer *opt = NULL;
  TH_OK(tdm_optimizer_create(e, &oo, &opt));
  float want = W0;
  for (int step = 0; step < STEPS && opt; step++) {
    void *data = NULL, *grad = NULL;
    TH_OK(tdm_backward_begin(e));
    TH_OK(tdm_param_buffers(e, p, NULL, &grad));
    if (grad)
      queue_gradient(u, grad, step);
    TH_OK(tdm_grad_ready(e, p));
    TH_OK(tdm_backward_end(e));
    TH_OK(tdm_step(opt, NULL));
    /* the engine sums (the model would scale by tdm_loss_scale) */
    want -= 0.25f * (float)(step + 1) * (float)(size * (size + 1) / 2);
    TH_OK(tdm_param_buffers(e, p, &data, NULL));
    double err = data ? values_on_stream(u, data, want) : 1e30;
    TH_CHECK(err == 0, "stage %d N=%d step %d: values on the user's stream "
             "off by %g from %g", stage, size, step, err, (double)want);
  }
  if (opt)
    TH_OK(tdm_optimizer_destroy(opt));
  free(w0);
  close_engine(e, ctx);
}

static void user_stream(void) {
  int lrank = 0;
  th_gpu_per_rank(&lrank);
  CU(cudaSetDevice(lrank));
  user_side u = {0};
  CU(cudaStreamCreateWithFlags(&u.stream, cudaStreamNonBlocking));
  CU(cudaMalloc(&u.delay, DELAY_BYTES));
  CU(cudaMallocHost((void **)&u.grad_host, N_ELEMS * sizeof(float)));
  CU(cudaMallocHost((void **)&u.value_host, N_ELEMS * sizeof(float)));
  if (u.stream && u.delay && u.grad_host && u.value_host) {
    train_on_stream(0, &u);
    train_on_stream(2, &u);
  }
  cudaFreeHost(u.grad_host);
  cudaFreeHost(u.value_host);
  cudaFree(u.delay);
  if (u.stream)
    cudaStreamDestroy(u.stream);
}

int main(int argc, char **argv) {
  th_init(&argc, &argv, MPI_THREAD_SINGLE, &rank, &size);
  const char *f = getenv("TANDEM_TEST_FAKE_GPU");
  int gpus = th_visible_gpus();
  int fake = gpus == 0 && f && strcmp(f, "1") == 0;
  int own = th_gpu_per_rank(NULL); /* NCCL: one GPU per rank */
  misuse();
  if (fake || own)
    defaults(fake);
  else if (rank == 0)
    printf("t_cuda_stream: GPU part: skip (no GPU of its own on every "
           "rank; TANDEM_TEST_FAKE_GPU=1 runs the fake one)\n");
  if (own)
    user_stream();
  int rc = th_finish("t_cuda_stream");
  MPI_Finalize();
  return rc;
}
#endif /* HAVE_CUDA */
