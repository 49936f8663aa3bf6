/* ckpt_torch.c - weights written by PyTorch load into tandem:
 * tests/data/torch_mlp.safetensors (safetensors.torch.save_file of a
 * torch nn.Sequential(Linear(10, 64), ReLU(), Linear(64, 1)) under the
 * names of examples/mlp, tests/gen_torch_mlp.py) is loaded with
 * tdm_load_weights into examples/mlp's model registered with other
 * initial values, at ZeRO stages 0-3 (stage 3 also with every module
 * sharded).  The values read back with tdm_gather_param give, computed
 * here in plain C as torch's Linear does (x @ W^T + b), torch's forward
 * outputs (tests/data/torch_mlp_forward.txt, 1e-5 relative), and
 * mlp_forward_backward's loss is torch's MSE (1e-5 relative).  The
 * float64 copy of the file is refused without TDM_WEIGHTS_CONVERT
 * (TDM_ERR_INVALID_ARGUMENT naming F64 and the flag) and with it gives
 * the same loss (1e-6).  Runs at any world size; reads TDM_SRCDIR
 * (default "."). */
#include <stdint.h>

#include "harness.h"
#include "model.h"
#include "tandem_mpi.h"

#define N 32
#define REL 1e-5

static int rank, size;

typedef struct {
  float x[N * MLP_IN], y[N], out[N];
  double loss, loss_f64;
} reference;

static const int64_t numel[MLP_PARAMS] = {MLP_HIDDEN * MLP_IN, MLP_HIDDEN,
                                          MLP_HIDDEN, 1};
static const char *const names[MLP_PARAMS] = {"fc1.weight", "fc1.bias",
                                              "fc2.weight", "fc2.bias"};

/* Reads torch_mlp_forward.txt; 1 when every value was there. */
static int read_reference(const char *path, reference *r) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "rank %d: cannot open %s\n", rank, path);
    return 0;
  }
  char line[4096];
  int nx = 0, ny = 0, nout = 0, nloss = 0, n64 = 0, bad = 0;
  while (fgets(line, sizeof line, f)) {
    char *p = line, *end;
    if (!strncmp(line, "x ", 2)) {
      p += 2;
      for (int k = 0; k < MLP_IN; k++, p = end) {
        float v = strtof(p, &end);
        bad |= end == p || nx >= N;
        if (nx < N)
          r->x[nx * MLP_IN + k] = v;
      }
      nx++;
    } else if (!strncmp(line, "y ", 2)) {
      bad |= ny >= N || sscanf(line + 2, "%f", &r->y[ny < N ? ny : 0]) != 1;
      ny++;
    } else if (!strncmp(line, "out ", 4)) {
      bad |= nout >= N ||
             sscanf(line + 4, "%f", &r->out[nout < N ? nout : 0]) != 1;
      nout++;
    } else if (!strncmp(line, "loss ", 5)) {
      bad |= sscanf(line + 5, "%lf", &r->loss) != 1;
      nloss++;
    } else if (!strncmp(line, "loss_f64 ", 9)) {
      bad |= sscanf(line + 9, "%lf", &r->loss_f64) != 1;
      n64++;
    }
  }
  fclose(f);
  if (bad || nx != N || ny != N || nout != N || nloss != 1 || n64 != 1) {
    fprintf(stderr, "rank %d: %s: malformed (%d x, %d y, %d out, %d loss "
            "lines)\n", rank, path, nx, ny, nout, nloss);
    return 0;
  }
  return 1;
}

/* torch.nn.Linear: out[j] = sum_k x[k] W[j][k], then + b[j] (f32). */
static void forward(float *const w[MLP_PARAMS], const float *x, float *out) {
  for (int i = 0; i < N; i++) {
    float h[MLP_HIDDEN];
    for (int j = 0; j < MLP_HIDDEN; j++) {
      float a = 0;
      for (int k = 0; k < MLP_IN; k++)
        a += x[i * MLP_IN + k] * w[MLP_W1][j * MLP_IN + k];
      a += w[MLP_B1][j];
      h[j] = a > 0 ? a : 0;
    }
    float o = 0;
    for (int j = 0; j < MLP_HIDDEN; j++)
      o += h[j] * w[MLP_W2][j];
    out[i] = o + w[MLP_B2][0];
  }
}

typedef struct {
  const char *name;
  int stage;
  int persistence; /* zero3_persistence_threshold, TDM_UNSET: default */
} cfg;

/* A fresh engine of cfg c on every rank (seeded other than torch). */
static int start(const cfg *c, tdm_context **ctx, tdm_engine **e,
                 mlp_model *m) {
  tdm_options o = TDM_OPTIONS_INIT;
  o.device = TDM_DEVICE_CPU; /* the model's math is on the host */
  o.zero_stage = c->stage;
  o.zero3_persistence_threshold = c->persistence;
  o.gradient_accumulation_steps = 1;
  *ctx = NULL;
  *e = NULL;
  tdm_status st = tdm_init_comm(MPI_COMM_WORLD, &o, ctx);
  TH_CHECK(st == TDM_SUCCESS, "%s: tdm_init_comm: %s", c->name,
           tdm_last_error());
  if (st != TDM_SUCCESS)
    return 0;
  TH_OK(st = tdm_engine_create(*ctx, e));
  if (st == TDM_SUCCESS)
    TH_OK(st = mlp_register(*ctx, *e, 4321 + (uint64_t)c->stage, m));
  if (st == TDM_SUCCESS)
    TH_OK(st = tdm_prepare(*e));
  return st == TDM_SUCCESS;
}

static void stop(tdm_context *ctx, tdm_engine *e) {
  if (e)
    TH_OK(tdm_engine_destroy(e));
  if (ctx)
    TH_OK(tdm_finalize(ctx));
}

/* Gathers every parameter, computes the forward outputs here and
 * compares them with torch's; returns mlp_forward_backward's loss (NAN
 * on failure).  Leaves the engine at the boundary of its cycle. */
static double check_values(const cfg *c, const char *what, tdm_engine *e,
                           mlp_model *m, const reference *r) {
  float *w[MLP_PARAMS];
  int ok = 1;
  for (int p = 0; p < MLP_PARAMS; p++) {
    w[p] = calloc((size_t)numel[p], sizeof *w[p]);
    int found = -1;
    TH_OK(tdm_find_param(e, names[p], &found));
    TH_CHECK(found == m->param[p], "%s: %s is param %d, registered as %d",
             c->name, names[p], found, m->param[p]);
    tdm_status st = tdm_gather_param(e, m->param[p], w[p]);
    TH_CHECK(st == TDM_SUCCESS, "%s %s: tdm_gather_param(%s): %s", c->name,
             what, names[p], tdm_last_error());
    ok &= st == TDM_SUCCESS;
  }
  double loss = NAN;
  if (ok) {
    float out[N];
    forward(w, r->x, out);
    double worst = 0, sum = 0;
    int worst_i = 0;
    for (int i = 0; i < N; i++) {
      double rel = fabs((double)out[i] - r->out[i]) / fabs((double)r->out[i]);
      if (!(rel <= worst)) {
        worst = rel;
        worst_i = i;
      }
      double err = (double)out[i] - r->y[i];
      sum += err * err;
    }
    TH_CHECK(worst <= REL, "%s %s: forward output %d is %.9g, torch's "
             "%.9g (relative error %.3g)", c->name, what, worst_i,
             out[worst_i], r->out[worst_i], worst);
    TH_CHECK(fabs(sum / N - r->loss) <= REL * r->loss, "%s %s: the loss of "
             "the outputs computed here is %.9g, torch's %.9g", c->name,
             what, sum / N, r->loss);
    if (rank == 0)
      printf("%s %s: forward outputs vs torch: max relative error %.3g\n",
             c->name, what, worst);
    double scale = 0;
    tdm_status st;
    TH_OK(st = tdm_loss_scale(e, &scale));
    if (st == TDM_SUCCESS)
      TH_OK(st = tdm_backward_begin(e));
    if (st == TDM_SUCCESS) {
      tdm_status fb = mlp_forward_backward(e, m, r->x, r->y, N, scale, &loss);
      TH_CHECK(fb == TDM_SUCCESS, "%s %s: mlp_forward_backward: %s", c->name,
               what, tdm_last_error());
      TH_OK(tdm_backward_end(e));
      if (fb != TDM_SUCCESS)
        loss = NAN;
    }
    TH_CHECK(fabs(loss - r->loss) <= REL * r->loss, "%s %s: "
             "mlp_forward_backward's loss %.9g, torch's %.9g", c->name, what,
             loss, r->loss);
  }
  for (int p = 0; p < MLP_PARAMS; p++)
    free(w[p]);
  return loss;
}

static void run(const cfg *c, const char *f32_file, const char *f64_file,
                const reference *r) {
  tdm_context *ctx;
  tdm_engine *e;
  mlp_model m;
  /* The float32 file, as PyTorch wrote it. */
  double loss32 = NAN, loss64 = NAN;
  if (start(c, &ctx, &e, &m)) {
    tdm_status st = tdm_load_weights(e, f32_file, 0);
    TH_CHECK(st == TDM_SUCCESS, "%s: tdm_load_weights(%s): %s", c->name,
             f32_file, tdm_last_error());
    if (st == TDM_SUCCESS)
      loss32 = check_values(c, "f32", e, &m, r);
  }
  stop(ctx, e);
  /* The float64 copy: refused unless converted. */
  if (start(c, &ctx, &e, &m)) {
    TH_FAILS(tdm_load_weights(e, f64_file, 0), TDM_ERR_INVALID_ARGUMENT,
             "F64");
    TH_FAILS(tdm_load_weights(e, f64_file, 0), TDM_ERR_INVALID_ARGUMENT,
             "TDM_WEIGHTS_CONVERT");
    tdm_status st = tdm_load_weights(e, f64_file, TDM_WEIGHTS_CONVERT);
    TH_CHECK(st == TDM_SUCCESS, "%s: tdm_load_weights(%s, "
             "TDM_WEIGHTS_CONVERT): %s", c->name, f64_file, tdm_last_error());
    if (st == TDM_SUCCESS)
      loss64 = check_values(c, "f64 converted", e, &m, r);
  }
  stop(ctx, e);
  TH_CHECK(fabs(loss64 - loss32) <= 1e-6 * fabs(loss32), "%s: loss %.9g "
           "after the converted f64 load, %.9g after the f32 one", c->name,
           loss64, loss32);
  if (rank == 0)
    printf("%s: loss %.9g (f32 file), %.9g (f64 file converted), torch "
           "%.9g\n", c->name, loss32, loss64, r->loss);
}

int main(int argc, char **argv) {
  th_init(&argc, &argv, MPI_THREAD_FUNNELED, &rank, &size);
  const char *src = getenv("TDM_SRCDIR");
  if (!src || !*src)
    src = ".";
  char f32_file[4096], f64_file[4096], ref_file[4096];
  snprintf(f32_file, sizeof f32_file, "%s/tests/data/torch_mlp.safetensors",
           src);
  snprintf(f64_file, sizeof f64_file,
           "%s/tests/data/torch_mlp_f64.safetensors", src);
  snprintf(ref_file, sizeof ref_file, "%s/tests/data/torch_mlp_forward.txt",
           src);
  static reference r;
  int have = read_reference(ref_file, &r), all = 0;
  MPI_Allreduce(&have, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  TH_CHECK(all, "%s is missing or malformed on some rank", ref_file);
  if (all) {
    const cfg cfgs[] = {
        {"ZeRO-0", 0, TDM_UNSET},
        {"ZeRO-1", 1, TDM_UNSET},
        {"ZeRO-2", 2, TDM_UNSET},
        {"ZeRO-3", 3, TDM_UNSET},
        {"ZeRO-3 (every module sharded)", 3, 0},
    };
    for (size_t i = 0; i < sizeof cfgs / sizeof *cfgs; i++)
      run(&cfgs[i], f32_file, f64_file, &r);
  }
  int rc = th_finish("ckpt_torch");
  MPI_Finalize();
  return rc;
}
