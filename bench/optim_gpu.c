/* optim_gpu.c - the fused AdamW kernel of the CUDA device layer on one GPU,
 * beside the two baselines measured in the same run:
 *  - a device-to-device copy (cudaMemcpyAsync) of 512 MiB, whose bytes
 *    read + written per second are the memory roofline;
 *  - torch.optim.AdamW(fused=True) (and foreach=True) on the same GPU and
 *    N, timed by bench/optim_torch.py --device cuda in a child python3.
 * AdamW on f32 reads param, grad, exp_avg, exp_avg_sq (16 B) and writes
 * param, exp_avg, exp_avg_sq (12 B) per element: 28 B, as torch's fused
 * kernel (which does not zero the gradient either).  Targets (issue 6):
 * >= 85% of the copy bandwidth, >= 1.0x torch fused.
 *   bench/optim_gpu [--n N] [--iters I] [--torch-script P]
 * Without a GPU it says so and exits 0. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "device/kernels_cuda.h"

#define CUDA_TRY(call)                                                   \
  do {                                                                   \
    cudaError_t e_ = (call);                                             \
    if (e_ != cudaSuccess)                                               \
      die(#call, cudaGetErrorString(e_), __FILE__, __LINE__);            \
  } while (0)

#define COPY_BYTES ((size_t)512 << 20)

static float *device_floats(size_t n, float value) {
  float *d = NULL, *h = malloc(n * sizeof *h);
  for (size_t i = 0; h && i < n; i++)
    h[i] = value * (float)((i % 1000) + 1) * 1e-3f;
  CUDA_TRY(cudaMalloc((void **)&d, n * sizeof *d));
  CUDA_TRY(cudaMemcpy(d, h, n * sizeof *d, cudaMemcpyHostToDevice));
  free(h);
  return d;
}

/* torch.optim.AdamW's step t with lr 1e-3, weight decay 0.01, as
 * optimizer.c resolves it. */
static tdmi_update adamw(int t) {
  double lr = 1e-3, wd = 0.01, b1 = 0.9, b2 = 0.999;
  tdmi_update u = {.kind = TDM_OPTIMIZER_ADAMW, .pre = 1, .lo = -INFINITY,
                   .hi = INFINITY, .post = 1, .lr = lr, .weight_decay = wd,
                   .beta1 = b1, .c1 = 1 - b1, .beta2 = b2, .c2 = 1 - b2,
                   .eps = 1e-8, .decay = 1 - lr * wd,
                   .step_size = lr / (1 - pow(b1, t)),
                   .bias2_sqrt = sqrt(1 - pow(b2, t))};
  return u;
}

/* Median milliseconds of iters timed runs of one step (after 3 untimed). */
typedef void (*step_fn)(void *arg, int t);

static double median_ms(step_fn fn, void *arg, int iters) {
  cudaEvent_t a, b;
  CUDA_TRY(cudaEventCreate(&a));
  CUDA_TRY(cudaEventCreate(&b));
  double *ms = malloc(sizeof *ms * (size_t)iters);
  for (int i = -3; i < iters; i++) {
    CUDA_TRY(cudaEventRecord(a, 0));
    fn(arg, i + 4);
    CUDA_TRY(cudaEventRecord(b, 0));
    CUDA_TRY(cudaEventSynchronize(b));
    float t;
    CUDA_TRY(cudaEventElapsedTime(&t, a, b));
    if (i >= 0)
      ms[i] = t;
  }
  double m = median(ms, iters);
  free(ms);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return m;
}

typedef struct {
  tdmi_update_arrays a;
} update_arg;

static void run_update(void *arg, int t) {
  update_arg *u = arg;
  tdmi_update up = adamw(t);
  tdm_status st = tdmi_cuda_update(&up, &u->a, NULL);
  if (st != TDM_SUCCESS)
    die("tdmi_cuda_update", tdmi_cuda_last_error(), __FILE__, __LINE__);
}

typedef struct {
  void *src, *dst;
} copy_arg;

static void run_copy(void *arg, int t) {
  copy_arg *c = arg;
  (void)t;
  CUDA_TRY(cudaMemcpyAsync(c->dst, c->src, COPY_BYTES,
                           cudaMemcpyDeviceToDevice, 0));
}

/* torch's median ms for impl, from the child's output; < 0 if none. */
static double torch_ms(const char *script, size_t n, int iters,
                       const char *impl, char *version, size_t vcap) {
  char cmd[1024], line[512];
  snprintf(cmd, sizeof cmd, "python3 '%s' --device cuda --impl %s --n %zu "
           "--iters %d 2>&1", script, impl, n, iters);
  FILE *p = popen(cmd, "r");
  double ms = -1;
  while (p && fgets(line, sizeof line, p)) {
    const char *m = strstr(line, "median_ms=");
    if (m)
      ms = atof(m + 10);
    if (strncmp(line, "torch_adamw version=", 20) == 0)
      snprintf(version, vcap, "%.*s", (int)strcspn(line + 20, "\n"),
               line + 20);
  }
  if (p)
    pclose(p);
  return ms;
}

int main(int argc, char **argv) {
  bench_name = "optim_gpu";
  size_t n = (size_t)1 << 24;
  int iters = 20;
  const char *script = "bench/optim_torch.py";
  int ok = 1;
  for (int i = 1; i < argc && ok; i++) {
    if (strcmp(argv[i], "--n") == 0 && i + 1 < argc)
      n = parse_bytes(argv[++i]); /* accepts 16M */
    else if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc)
      iters = (int)parse_long(argv[++i], 1, 10000, &ok);
    else if (strcmp(argv[i], "--torch-script") == 0 && i + 1 < argc)
      script = argv[++i];
    else
      ok = strcmp(argv[i], "--help") == 0 ? -1 : 0;
  }
  if (ok != 1 || n == 0) {
    printf("usage: optim_gpu [--n N (K, M, G)] [--iters I] "
           "[--torch-script P]\n");
    return ok == -1 ? 0 : 2;
  }
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus == 0) {
    printf("optim_gpu: skip (no GPU visible)\n");
    return 0;
  }
  struct cudaDeviceProp prop;
  CUDA_TRY(cudaGetDeviceProperties(&prop, 0));
  update_arg u = {{.param = device_floats(n, 0.05f), .dtype = TDM_F32,
                   .grad = device_floats(n, 1.0f), .grad_dtype = TDM_F32,
                   .copy_dtype = TDM_BF16, .state0 = device_floats(n, 0),
                   .state1 = device_floats(n, 0), .n = n, .zero_grad = 0}};
  copy_arg c = {NULL, NULL};
  CUDA_TRY(cudaMalloc(&c.src, COPY_BYTES));
  CUDA_TRY(cudaMalloc(&c.dst, COPY_BYTES));
  CUDA_TRY(cudaMemset(c.src, 1, COPY_BYTES));
  double copy = median_ms(run_copy, &c, iters);
  double ours = median_ms(run_update, &u, iters);
  double copy_gbs = 2.0 * COPY_BYTES / copy / 1e6;
  double ours_gbs = 28.0 * (double)n / ours / 1e6;
  char version[64] = "?";
  double fused = torch_ms(script, n, iters, "fused", version, sizeof version);
  double foreach = torch_ms(script, n, iters, "foreach", version,
                            sizeof version);
  printf("# %s, %zu f32 parameters, AdamW, median of %d steps\n", prop.name,
         n, iters);
  printf("%-34s %10s %10s\n", "", "ms", "GB/s");
  printf("%-34s %10.3f %10.1f\n", "device-to-device copy (roofline)", copy,
         copy_gbs);
  printf("%-34s %10.3f %10.1f   %5.1f%% of copy (target 85%%): %s\n",
         "tandem fused AdamW", ours, ours_gbs, 100 * ours_gbs / copy_gbs,
         ours_gbs >= 0.85 * copy_gbs ? "MET" : "NOT MET");
  if (fused > 0)
    printf("%-34s %10.3f %10.1f   tandem %.2fx (target 1.0x): %s\n",
           "torch AdamW(fused=True)", fused, 28.0 * n / fused / 1e6,
           fused / ours, fused >= ours ? "MET" : "NOT MET");
  else
    printf("torch AdamW(fused=True): not measured (torch %s)\n", version);
  if (foreach > 0)
    printf("%-34s %10.3f %10.1f   tandem %.2fx\n", "torch AdamW(foreach=True)",
           foreach, 28.0 * n / foreach / 1e6, foreach / ours);
  printf("# torch %s\n", version);
  return 0;
}
