/* t_gpt_grad.c - examples/gpt's backward against PyTorch autograd.
 * tests/data/gpt_ref.safetensors (tests/gen_gpt_ref.py) holds a tiny
 * GPT's weights, 12 rows of tokens, and torch's float64 loss and
 * gradients.  Every rank loads the weights with tdm_load_weights, runs
 * forward and backward on its 12 / N rows in one micro-step, and the
 * engine's gradients, averaged over the ranks, must match torch's: ||g - ref||
 * / ||ref||
 * <= 1e-4 for every tensor, and elementwise within 1e-4 of the tensor's
 * largest |ref|; the loss averaged over ranks within 1e-5.  At ZeRO 0 the
 * gradients are read from tdm_param_buffers (which hold the sums over
 * the ranks: tdm_step averages them); at every stage (1, 2, and 3
 * with each module sharded) a custom optimizer step copies the reduced
 * gradient into the parameters, which tdm_gather_param then reads whole.
 * bf16 and fp16 runs check the 16-bit views of model.c with tolerances
 * of their rounding.  Skips where 12 rows do not split evenly. */
#include <stdint.h>

#include "harness.h"
#include "model.h"

#define ROWS 12

static int rank, size;
static char path[4096];

/* ---- the reference file: just enough safetensors --------------------------
 */

typedef struct {
  unsigned char *bytes;
  size_t size, data; /* file size, offset of the data section */
  char *json;        /* NUL-terminated header */
} ref_file;

static int ref_open(const char *file, ref_file *f) {
  memset(f, 0, sizeof *f);
  FILE *fp = fopen(file, "rb");
  if (!fp)
    return -1;
  if (fseek(fp, 0, SEEK_END) == 0 && (f->size = (size_t)ftell(fp)) > 8 &&
      fseek(fp, 0, SEEK_SET) == 0 && (f->bytes = malloc(f->size)) &&
      fread(f->bytes, 1, f->size, fp) != f->size)
    f->size = 0;
  fclose(fp);
  uint64_t len = 0;
  for (int i = 7; f->bytes && f->size > 8 && i >= 0; i--)
    len = len << 8 | f->bytes[i]; /* little-endian */
  if (!f->bytes || f->size <= 8 || len > f->size - 8 ||
      !(f->json = malloc(len + 1))) {
    free(f->bytes);
    return -1;
  }
  memcpy(f->json, f->bytes + 8, len);
  f->json[len] = 0;
  f->data = 8 + len;
  return 0;
}

static void ref_close(ref_file *f) {
  free(f->bytes);
  free(f->json);
}

/* Tensor name as doubles (dtype "F64", "F32" or "I32"), malloc'ed; *count
 * its elements.  NULL if missing or malformed.  The keys are quoted, so
 * "wte.weight" never matches inside "grad.wte.weight". */
static double *ref_get(const ref_file *f, const char *name, size_t *count) {
  char key[256];
  snprintf(key, sizeof key, "\"%s\":{", name);
  const char *k = strstr(f->json, key);
  const char *end = k ? strchr(k, '}') : NULL;
  const char *d = k ? strstr(k, "\"dtype\":\"") : NULL;
  const char *o = k ? strstr(k, "\"data_offsets\":[") : NULL;
  size_t a, b;
  if (!end || !d || !o || d > end || o > end ||
      sscanf(o + strlen("\"data_offsets\":["), "%zu,%zu", &a, &b) != 2)
    return NULL;
  d += strlen("\"dtype\":\"");
  size_t es = !strncmp(d, "F64\"", 4)                              ? 8
              : !strncmp(d, "F32\"", 4) || !strncmp(d, "I32\"", 4) ? 4
                                                                   : 0;
  if (!es || b < a || (b - a) % es || b > f->size - f->data)
    return NULL;
  *count = (b - a) / es;
  double *out = malloc((*count ? *count : 1) * sizeof *out);
  const unsigned char *p = f->bytes + f->data + a;
  for (size_t i = 0; out && i < *count; i++, p += es) {
    double v64;
    float v32;
    int32_t i32;
    if (es == 8)
      memcpy(&v64, p, 8);
    else if (d[0] == 'F')
      memcpy(&v32, p, 4), v64 = v32;
    else
      memcpy(&i32, p, 4), v64 = i32;
    out[i] = v64;
  }
  return out;
}

/* ---- the runs ------------------------------------------------------------ */

typedef struct {
  const char *name;
  int stage, precision, reduce_dtype;
  double grad_tol, loss_tol;
} run_cfg;

static const run_cfg runs[] = {
    {"stage 0 f32", 0, TDM_PRECISION_NO, TDM_F32, 1e-4, 1e-5},
    {"stage 1 f32", 1, TDM_PRECISION_NO, TDM_F32, 1e-4, 1e-5},
    {"stage 2 f32", 2, TDM_PRECISION_NO, TDM_F32, 1e-4, 1e-5},
    {"stage 3 f32", 3, TDM_PRECISION_NO, TDM_F32, 1e-4, 1e-5},
    {"stage 0 bf16", 0, TDM_PRECISION_BF16, TDM_BF16, 5e-2, 1e-2},
    {"stage 3 fp16", 3, TDM_PRECISION_FP16, TDM_F16, 1e-2, 3e-3},
};

static const char *const block_names[] = {
    "ln_1.weight",      "ln_1.bias",          "attn.c_attn.weight",
    "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
    "ln_2.weight",      "ln_2.bias",          "mlp.c_fc.weight",
    "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias"};
#define NBLOCK (int)(sizeof block_names / sizeof *block_names)

/* The i-th parameter name of a model of layers blocks. */
static void param_name(int i, int layers, char *out, size_t n) {
  if (i < 2)
    snprintf(out, n, i ? "wpe.weight" : "wte.weight");
  else if (i < 2 + NBLOCK * layers)
    snprintf(out, n, "h.%d.%s", (i - 2) / NBLOCK,
             block_names[(i - 2) % NBLOCK]);
  else
    snprintf(out, n, i == 2 + NBLOCK * layers ? "ln_f.weight" : "ln_f.bias");
}

/* The custom update that makes the parameters the reduced gradients. */
static void take_grad(float *param, float *grad, float *s0, float *s1, int n,
                      int step) {
  (void)s0, (void)s1, (void)step;
  memcpy(param, grad, (size_t)n * sizeof *param);
}

/* Compares got[n] with the reference; tracks the worst relative error. */
static void compare(const run_cfg *r, const char *name, const char *how,
                    const float *got, const double *ref, size_t n,
                    double *worst) {
  double num = 0, den = 0, maxerr = 0, maxref = 0;
  for (size_t i = 0; i < n; i++) {
    double e = fabs(got[i] - ref[i]);
    num += e * e;
    den += ref[i] * ref[i];
    maxerr = fmax(maxerr, e);
    maxref = fmax(maxref, fabs(ref[i]));
  }
  double rel = sqrt(num / fmax(den, 1e-300)),
         elem = maxerr / fmax(maxref, 1e-300);
  TH_CHECK(rel <= r->grad_tol, "%s: grad %s (%s): relative L2 error %.3g",
           r->name, name, how, rel);
  TH_CHECK(elem <= r->grad_tol,
           "%s: grad %s (%s): max elementwise error %.3g of max |ref|", r->name,
           name, how, elem);
  *worst = fmax(*worst, fmax(rel, elem));
}

static tdm_engine *open_engine(const run_cfg *r, tdm_context **ctx) {
  tdm_options o = TDM_OPTIONS_INIT;
  o.device = TDM_DEVICE_CPU;
  o.zero_stage = r->stage;
  o.mixed_precision = r->precision;
  o.reduce_dtype = r->reduce_dtype;
  o.gradient_accumulation_steps = 1;
  o.offload = TDM_OFFLOAD_NONE;
  o.zero3_persistence_threshold = 0; /* every module really sharded */
  tdm_engine *e = NULL;
  TH_OK(tdm_init(NULL, NULL, &o, ctx));
  if (*ctx)
    TH_OK(tdm_engine_create(*ctx, &e));
  return e;
}

/* Gradient of every parameter: at stage 0 straight from the engine's
 * buffer, then (every stage) through the custom step and a gather. */
static void check_grads(const run_cfg *r, tdm_engine *e, const ref_file *f,
                        int layers, double *worst) {
  int nparams = 2 + NBLOCK * layers + 2;
  float *grads[2 + NBLOCK * 8 + 2] = {0};
  double *refs[2 + NBLOCK * 8 + 2] = {0};
  size_t counts[2 + NBLOCK * 8 + 2] = {0};
  int ids[2 + NBLOCK * 8 + 2] = {0};
  for (int i = 0; i < nparams; i++) {
    char name[128], gname[160];
    param_name(i, layers, name, sizeof name);
    snprintf(gname, sizeof gname, "grad.%s", name);
    refs[i] = ref_get(f, gname, &counts[i]);
    TH_CHECK(refs[i], "%s missing from %s", gname, path);
    TH_OK(tdm_find_param(e, name, &ids[i]));
    void *g = NULL;
    if (refs[i] && r->stage == 0 && r->precision == TDM_PRECISION_NO &&
        tdm_param_buffers(e, ids[i], NULL, &g) == TDM_SUCCESS &&
        (grads[i] = malloc(counts[i] * sizeof(float)))) {
      /* the buffers hold the sums over ranks; tdm_step averages */
      for (size_t j = 0; j < counts[i]; j++)
        grads[i][j] = ((const float *)g)[j] / (float)size;
      compare(r, name, "buffer", grads[i], refs[i], counts[i], worst);
      free(grads[i]);
    }
  }
  tdm_optimizer *opt = NULL;
  TH_OK(tdm_optimizer_create_custom(e, take_grad, &opt));
  int stepped = 0;
  TH_OK(tdm_step(opt, &stepped));
  TH_CHECK(stepped, "%s: no optimizer step", r->name);
  for (int i = 0; i < nparams; i++) {
    char name[128];
    param_name(i, layers, name, sizeof name);
    grads[i] = malloc((counts[i] ? counts[i] : 1) * sizeof(float));
    if (refs[i] && grads[i]) {
      TH_OK(tdm_gather_param(e, ids[i], grads[i]));
      compare(r, name, "gathered", grads[i], refs[i], counts[i], worst);
    }
    free(grads[i]);
    free(refs[i]);
  }
  if (opt)
    TH_OK(tdm_optimizer_destroy(opt));
}

/* The loaded weights are the file's (checks load and parser alike). */
static void check_weights(tdm_engine *e, const ref_file *f) {
  size_t n = 0;
  double *want = ref_get(f, "h.1.attn.c_attn.weight", &n);
  int p = -1;
  TH_OK(tdm_find_param(e, "h.1.attn.c_attn.weight", &p));
  float *got = want ? malloc(n * sizeof *got) : NULL;
  TH_CHECK(got, "h.1.attn.c_attn.weight missing from %s", path);
  if (got && p >= 0) {
    TH_OK(tdm_gather_param(e, p, got));
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
      bad += got[i] != (float)want[i];
    TH_CHECK(bad == 0, "%zu loaded values differ from the file", bad);
  }
  free(got);
  free(want);
}

static void one_run(const run_cfg *r, const ref_file *f, const double *cfgv,
                    const double *tokens, double ref_loss) {
  gpt_config cfg = {(int)cfgv[0], (int)cfgv[1], (int)cfgv[2], (int)cfgv[3],
                    (int)cfgv[4]};
  int rows = ROWS / size, stride = cfg.seq_len + 1;
  tdm_context *ctx = NULL;
  tdm_engine *e = open_engine(r, &ctx);
  gpt_model *m = NULL;
  if (e)
    TH_OK(gpt_create(ctx, e, &cfg, rows, 7, &m));
  if (!m) {
    if (e)
      TH_OK(tdm_engine_destroy(e));
    if (ctx)
      TH_OK(tdm_finalize(ctx));
    return;
  }
  TH_OK(tdm_prepare(e));
  TH_OK(tdm_load_weights(e, path, 0));
  check_weights(e, f);
  int32_t *tok = malloc((size_t)rows * stride * sizeof *tok);
  for (int i = 0; tok && i < rows * stride; i++)
    tok[i] = (int32_t)tokens[(size_t)rank * rows * stride + i];
  float loss = 0;
  double scale = 0, mean = 0, worst = 0;
  TH_OK(tdm_backward_begin(e));
  TH_OK(gpt_forward(m, tok, stride, rows, cfg.seq_len, &loss));
  TH_OK(tdm_loss_scale(e, &scale));
  TH_OK(gpt_backward(m, (float)scale));
  TH_OK(tdm_backward_end(e));
  double l = loss;
  TH_OK(tdm_allreduce(ctx, &l, &mean, 1, TDM_F64, TDM_MEAN));
  TH_CHECK(fabs(mean - ref_loss) <= r->loss_tol * fabs(ref_loss),
           "%s: loss %.9g, torch %.9g", r->name, mean, ref_loss);
  check_grads(r, e, f, cfg.layers, &worst);
  if (rank == 0)
    printf("t_gpt_grad: %s, %d ranks: loss %.9g (torch %.9g), worst "
           "gradient error %.3g\n",
           r->name, size, mean, ref_loss, worst);
  free(tok);
  gpt_destroy(m);
  TH_OK(tdm_engine_destroy(e));
  TH_OK(tdm_finalize(ctx));
}

int main(int argc, char **argv) {
  th_init(&argc, &argv, MPI_THREAD_FUNNELED, &rank, &size);
  if (ROWS % size) {
    if (rank == 0)
      printf("t_gpt_grad: SKIP: %d rows do not split over %d ranks\n", ROWS,
             size);
    MPI_Finalize();
    return 77;
  }
  const char *src = getenv("TDM_SRCDIR");
  snprintf(path, sizeof path, "%s/tests/data/gpt_ref.safetensors",
           src ? src : ".");
  ref_file f;
  int opened = ref_open(path, &f) == 0;
  TH_CHECK(opened,
           "cannot read %s (set TDM_SRCDIR to the source tree; "
           "regenerate with python3 tests/gen_gpt_ref.py)",
           path);
  size_t nc = 0, nt = 0, nl = 0;
  double *cfgv = opened ? ref_get(&f, "ref.config", &nc) : NULL;
  double *tokens = opened ? ref_get(&f, "ref.tokens", &nt) : NULL;
  double *loss = opened ? ref_get(&f, "ref.loss", &nl) : NULL;
  int ok = cfgv && nc == 5 && tokens && loss && nl == 1 && cfgv[2] >= 1 &&
           cfgv[2] <= 8 && nt == (size_t)ROWS * (size_t)(cfgv[1] + 1);
  TH_CHECK(!opened || ok, "%s: ref.config, ref.tokens or ref.loss malformed",
           path);
  for (size_t i = 0; ok && i < sizeof runs / sizeof *runs; i++)
    one_run(&runs[i], &f, cfgv, tokens, loss[0]);
  free(cfgv);
  free(tokens);
  free(loss);
  if (opened)
    ref_close(&f);
  int rc = th_finish("t_gpt_grad");
  MPI_Finalize();
  return rc;
}
