/* model.c - the GPT-2's math (see model.h).  Activations are kept for
 * backward, as llm.c does; every Linear and the head are cblas_sgemm calls
 * each way, the rest plain loops (OpenMP threads and simd). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "model.h"

/* A block's parameters, in registration order. */
enum { LN1W, LN1B, QKVW, QKVB, APW, APB, LN2W, LN2B, FCW, FCB, MPW, MPB };
enum { NBLOCK = MPB + 1 };
enum { WTE, WPE }; /* the embedding's; ln_f's are weight 0, bias 1 */
enum { INIT_ZERO, INIT_ONE, INIT_NORMAL, INIT_PROJ };

/* rows and cols in units of C (cols 0: a vector) */
static const struct {
  const char *name;
  int rows, cols, init;
} block_spec[NBLOCK] = {{"ln_1.weight", 1, 0, INIT_ONE},
                        {"ln_1.bias", 1, 0, INIT_ZERO},
                        {"attn.c_attn.weight", 3, 1, INIT_NORMAL},
                        {"attn.c_attn.bias", 3, 0, INIT_ZERO},
                        {"attn.c_proj.weight", 1, 1, INIT_PROJ},
                        {"attn.c_proj.bias", 1, 0, INIT_ZERO},
                        {"ln_2.weight", 1, 0, INIT_ONE},
                        {"ln_2.bias", 1, 0, INIT_ZERO},
                        {"mlp.c_fc.weight", 4, 1, INIT_NORMAL},
                        {"mlp.c_fc.bias", 4, 0, INIT_ZERO},
                        {"mlp.c_proj.weight", 1, 4, INIT_PROJ},
                        {"mlp.c_proj.bias", 1, 0, INIT_ZERO}};

/* Loops over fewer elements stay on one thread: a team costs more. */
#define PAR_MIN 32768
#define GEMM_PAR_MIN 8e6 /* multiply-adds */
#define LN_EPS 1e-5f

/* Activations of up to max_batch * seq_len rows; the per-layer ones are
 * layers consecutive slices. */
typedef struct {
  float *enc; /* embeddings: block 0's input */
  float *ln1, *ln1_mean, *ln1_rstd, *qkv, *att, *atty, *res2; /* att: P */
  float *ln2, *ln2_mean, *ln2_rstd, *fch, *fchg, *res3;
  float *lnf, *lnf_mean, *lnf_rstd, *probs;
  /* backward scratch */
  float *dres, *dln, *datty, *dqkv, *dfc, *dlogits, *datt, *dwte;
} acts;

struct gpt_model {
  tdm_engine *e;
  gpt_config c;
  int max_batch, threads;
  size_t rows;   /* max_batch * seq_len */
  int *module;   /* [layers + 2] */
  int *first;    /* [layers + 3]: module i owns slots first[i].. */
  int *param;    /* [slots]: tandem's parameter index */
  size_t *numel; /* [slots] */
  int nslots;
  int B, T, has_targets; /* the last forward */
  int32_t *inp, *tgt;    /* [rows] */
  acts a;
  float *arena;
};

size_t gpt_param_count(const gpt_config *cfg) {
  size_t C = (size_t)cfg->channels;
  return ((size_t)cfg->vocab + (size_t)cfg->seq_len) * C +
         (size_t)cfg->layers * (12 * C * C + 13 * C) + 2 * C;
}

/* ---- f32 views of a module's buffers ------------------------------------ */

/* A parameter's values or gradient as f32: tandem's buffer itself when it
 * is f32, else a copy (values converted in; a gradient copy starts at zero
 * and is added into the 16-bit buffer when stored). */
typedef struct {
  void *buf;
  tdm_dtype dtype;
  size_t n;
  float *f;
} view;

static tdm_status view_open(view *v, void *buf, tdm_dtype dtype, size_t n,
                            int load) {
  *v = (view){buf, dtype, n, buf};
  if (dtype == TDM_F32)
    return TDM_SUCCESS;
  if (!(v->f = calloc(n, sizeof(float))))
    return TDM_ERR_NO_MEMORY;
  return load ? tdm_convert(dtype, buf, TDM_F32, v->f, n) : TDM_SUCCESS;
}

/* Adds a gradient copy into its buffer (store) and frees the copy. */
static tdm_status view_close(view *v, int store) {
  tdm_status st = TDM_SUCCESS;
  if (!v->f || v->f == v->buf)
    return st;
  float *sum = store ? malloc(v->n * sizeof *sum) : NULL;
  if (store)
    st = sum ? tdm_convert(v->dtype, v->buf, TDM_F32, sum, v->n)
             : TDM_ERR_NO_MEMORY;
  for (size_t i = 0; store && st == TDM_SUCCESS && i < v->n; i++)
    sum[i] += v->f[i];
  if (store && st == TDM_SUCCESS)
    st = tdm_convert(TDM_F32, sum, v->dtype, v->buf, v->n);
  free(sum);
  free(v->f);
  v->f = NULL;
  return st;
}

/* One fetched module: w[k] its k-th parameter's values, g[k] (backward)
 * its gradient, both f32. */
typedef struct {
  int mod, count, grads;
  view vw[NBLOCK], vg[NBLOCK];
  float *w[NBLOCK], *g[NBLOCK];
} mod_io;

/* Fetches module mod (ZeRO-3 gathers it) and opens its views; the
 * buffers are asked for anew each time, as ZeRO-2/3 may move them. */
static tdm_status mod_open(gpt_model *m, int mod, int grads, mod_io *io) {
  memset(io, 0, sizeof *io);
  io->mod = mod;
  io->grads = grads;
  io->count = m->first[mod + 1] - m->first[mod];
  tdm_status st = tdm_fetch_module(m->e, m->module[mod]);
  for (int k = 0; k < io->count && st == TDM_SUCCESS; k++) {
    int s = m->first[mod] + k;
    void *data, *grad;
    tdm_dtype dd, gd;
    st = tdm_param_buffers(m->e, m->param[s], &data, grads ? &grad : NULL);
    if (st == TDM_SUCCESS)
      st = tdm_get_param_dtypes(m->e, m->param[s], &dd, &gd);
    if (st == TDM_SUCCESS)
      st = view_open(&io->vw[k], data, dd, m->numel[s], 1);
    if (st == TDM_SUCCESS && grads)
      st = view_open(&io->vg[k], grad, gd, m->numel[s], 0);
    io->w[k] = io->vw[k].f;
    io->g[k] = io->vg[k].f;
  }
  return st;
}

/* Stores the gradients, marks the module ready (backward) and releases
 * it; returns the first failure, st included. */
static tdm_status mod_close(gpt_model *m, mod_io *io, tdm_status st) {
  for (int k = 0; k < io->count; k++) {
    view_close(&io->vw[k], 0);
    tdm_status g = view_close(&io->vg[k], st == TDM_SUCCESS);
    st = st == TDM_SUCCESS ? g : st;
  }
  if (st == TDM_SUCCESS && io->grads)
    st = tdm_module_grads_ready(m->e, m->module[io->mod]);
  tdm_status r = tdm_release_module(m->e, m->module[io->mod]);
  return st == TDM_SUCCESS ? r : st;
}

/* ---- kernels --------------------------------------------------------------
 */

/* C[M, N] = op(A) op(B) + beta C (row-major; op transposes where ta, tb),
 * its rows split over the model's threads, each part one sgemm: one
 * thread pool for the matmuls and the loops, as BLAS's own threads and
 * OpenMP's would spin against each other between calls. */
static void gemm(const gpt_model *m, int ta, int tb, int M, int N, int K,
                 const float *A, int lda, const float *B, int ldb, float beta,
                 float *C, int ldc) {
  int parts = (double)M * N * K < GEMM_PAR_MIN ? 1 : m->threads;
  parts = parts < M ? parts : M;
#pragma omp parallel for num_threads(parts) if (parts > 1)
  for (int p = 0; p < parts; p++) {
    int m0 = (int)((long)M * p / parts), m1 = (int)((long)M * (p + 1) / parts);
    const float *a = ta ? A + m0 : A + (size_t)m0 * lda;
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                tb ? CblasTrans : CblasNoTrans, m1 - m0, N, K, 1.0f, a, lda, B,
                ldb, beta, C + (size_t)m0 * ldc, ldc);
  }
}

/* out[N, OC] = add + in[N, IC] w[OC, IC]^T + b (add may be NULL; it may
 * not be out) */
static void linear_fwd(const gpt_model *m, float *out, const float *add,
                       const float *in, const float *w, const float *b, int N,
                       int IC, int OC) {
  for (int i = 0; i < N; i++) {
    float *o = out + (size_t)i * OC;
    const float *a = add ? add + (size_t)i * OC : NULL;
    if (a) {
#pragma omp simd
      for (int j = 0; j < OC; j++)
        o[j] = a[j] + b[j];
    } else {
      memcpy(o, b, (size_t)OC * sizeof *o);
    }
  }
  gemm(m, 0, 1, N, OC, IC, in, IC, w, IC, 1.0f, out, OC);
}

/* din = dout w (overwritten); dw += dout^T in; db += column sums */
static void linear_bwd(const gpt_model *m, float *din, float *dw, float *db,
                       const float *dout, const float *in, const float *w,
                       int N, int IC, int OC) {
  gemm(m, 0, 0, N, IC, OC, dout, OC, w, IC, 0.0f, din, IC);
  gemm(m, 1, 0, OC, IC, N, dout, OC, in, IC, 1.0f, dw, IC);
  for (int i = 0; i < N; i++) {
    const float *d = dout + (size_t)i * OC;
#pragma omp simd
    for (int j = 0; j < OC; j++)
      db[j] += d[j];
  }
}

static void layernorm_fwd(const gpt_model *m, float *out, float *mean,
                          float *rstd, const float *x, const float *w,
                          const float *b, int N) {
  const int C = m->c.channels;
#pragma omp parallel for num_threads(m->threads) if ((size_t)N * C >= PAR_MIN)
  for (int i = 0; i < N; i++) {
    const float *xi = x + (size_t)i * C;
    float mu = 0, var = 0;
#pragma omp simd reduction(+ : mu)
    for (int c = 0; c < C; c++)
      mu += xi[c];
    mu /= C;
#pragma omp simd reduction(+ : var)
    for (int c = 0; c < C; c++)
      var += (xi[c] - mu) * (xi[c] - mu);
    float rs = 1.0f / sqrtf(var / C + LN_EPS);
#pragma omp simd
    for (int c = 0; c < C; c++)
      out[(size_t)i * C + c] = (xi[c] - mu) * rs * w[c] + b[c];
    mean[i] = mu;
    rstd[i] = rs;
  }
}

/* dx += LayerNorm's input gradient; dw, db += its parameter gradients */
static void layernorm_bwd(const gpt_model *m, float *dx, float *dw, float *db,
                          const float *dout, const float *x, const float *w,
                          const float *mean, const float *rstd, int N) {
  const int C = m->c.channels;
#pragma omp parallel for num_threads(m->threads) if ((size_t)N * C >= PAR_MIN)
  for (int i = 0; i < N; i++) {
    const float *xi = x + (size_t)i * C, *di = dout + (size_t)i * C;
    float s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
    for (int c = 0; c < C; c++) {
      float dn = di[c] * w[c];
      s1 += dn;
      s2 += dn * (xi[c] - mean[i]) * rstd[i];
    }
    s1 /= C;
    s2 /= C;
#pragma omp simd
    for (int c = 0; c < C; c++) {
      float xhat = (xi[c] - mean[i]) * rstd[i];
      dx[(size_t)i * C + c] += (di[c] * w[c] - s1 - xhat * s2) * rstd[i];
    }
  }
  /* The parameter sums run across rows: one thread, no races. */
  for (int i = 0; i < N; i++)
#pragma omp simd
    for (int c = 0; c < C; c++) {
      float d = dout[(size_t)i * C + c];
      dw[c] += d * (x[(size_t)i * C + c] - mean[i]) * rstd[i];
      db[c] += d;
    }
}

/* x limited to [-87, 87] (e^x stays a normal float) through its bits:
 * integer compares vectorize, float ones (which may trap) keep GCC from
 * if-converting the loop. */
static inline float clamp87(float x) {
  union {
    float f;
    uint32_t u;
  } b = {.f = x};
  int32_t mag = (int32_t)(b.u & 0x7fffffffu), lim = 0x42ae0000; /* 87.0f */
  b.u = (b.u & 0x80000000u) | (uint32_t)(mag > lim ? lim : mag);
  return b.f;
}

/* e^x in arithmetic that vectorizes (libm's expf and tanhf are scalar
 * calls: tanhf alone took a third of a step): 2^n e^r, n = round(x / ln 2)
 * (by the 1.5 * 2^23 trick), ln 2 split in two so that r is exact, e^r by
 * its degree-7 Taylor polynomial (|r| <= ln 2 / 2: about 1 ulp). */
static inline float exp_approx(float x) {
  x = clamp87(x);
  float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693145751953125f - n * 1.42860682e-06f;
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  union {
    int32_t i;
    float f;
  } two_n = {.i = ((int32_t)n + 127) * (1 << 23)};
  return p * two_n.f;
}

/* tanh to about 1e-7 absolute, all the GELU needs */
static inline float tanh_approx(float u) {
  return 1.0f - 2.0f / (exp_approx(2.0f * u) + 1.0f);
}

#define GELU_K 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_A 0.044715f

/* torch.nn.GELU(approximate='tanh') */
static void gelu_fwd(const gpt_model *m, float *out, const float *x, size_t n) {
#pragma omp parallel for simd num_threads(m->threads) if (n >= PAR_MIN)
  for (size_t i = 0; i < n; i++) {
    float u = GELU_K * (x[i] + GELU_A * x[i] * x[i] * x[i]);
    out[i] = 0.5f * x[i] * (1.0f + tanh_approx(u));
  }
}

/* d *= GELU'(x) */
static void gelu_bwd(const gpt_model *m, float *d, const float *x, size_t n) {
#pragma omp parallel for simd num_threads(m->threads) if (n >= PAR_MIN)
  for (size_t i = 0; i < n; i++) {
    float x2 = x[i] * x[i];
    float th = tanh_approx(GELU_K * (x[i] + GELU_A * x2 * x[i]));
    float du = GELU_K * (1.0f + 3.0f * GELU_A * x2);
    d[i] *= 0.5f * (1.0f + th) + 0.5f * x[i] * (1.0f - th * th) * du;
  }
}

/* ---- attention --------------------------------------------------------------
 */

/* y += a x */
static inline void axpy(float *y, float a, const float *x, int n) {
#pragma omp simd
  for (int i = 0; i < n; i++)
    y[i] += a * x[i];
}

/* Row-major single-threaded sgemm: the callers run one per thread. */
static void sgemm1(int ta, int tb, int M, int N, int K, float alpha,
                   const float *A, int lda, const float *B, int ldb, float *C,
                   int ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
              tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb,
              0.0f, C, ldc);
}

/* Causal softmax of each row of the T x T scores p (in place): row t
 * over columns 0..t, zero past t. */
static void causal_softmax(float *p, int T) {
  for (int t = 0; t < T; t++) {
    float *r = p + (size_t)t * T, mx = -INFINITY, sum = 0;
    for (int j = 0; j <= t; j++)
      mx = r[j] > mx ? r[j] : mx;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j <= t; j++)
      sum += r[j] = exp_approx(r[j] - mx);
    for (int j = 0; j <= t; j++)
      r[j] /= sum;
    for (int j = t + 1; j < T; j++)
      r[j] = 0;
  }
}

/* Per (row b, head h): P = softmax(Q K^T / sqrt(hs)) (att), Y = P V.  The
 * qkv rows hold q, k, v, each C wide, head h at columns h*hs of each;
 * the masked half of the products is computed too: a full matmul is
 * still faster than loops over the causal half. */
static void attention_fwd(const gpt_model *m, float *atty, float *att,
                          const float *qkv) {
  const int B = m->B, T = m->T, H = m->c.heads, C = m->c.channels;
  const int hs = C / H;
  const float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(2)                                           \
    num_threads(m->threads) if ((size_t)B * T * T * C >= PAR_MIN)
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      const float *q = qkv + (size_t)b * T * 3 * C + h * hs;
      float *p = att + ((size_t)b * H + h) * T * T;
      sgemm1(0, 1, T, T, hs, scale, q, 3 * C, q + C, 3 * C, p, T);
      causal_softmax(p, T);
      sgemm1(0, 0, T, hs, T, 1.0f, p, T, q + 2 * C, 3 * C,
             atty + (size_t)b * T * C + h * hs, C);
    }
}

/* d(scores) from dP in place: P (dP - rowsum(P dP)) / sqrt(hs), the
 * softmax's backward (zero past the diagonal, where P is). */
static void softmax_bwd(float *dp, const float *p, int T, float scale) {
  for (int t = 0; t < T; t++) {
    float *d = dp + (size_t)t * T, s = 0;
    const float *r = p + (size_t)t * T;
#pragma omp simd reduction(+ : s)
    for (int j = 0; j < T; j++)
      s += r[j] * d[j];
#pragma omp simd
    for (int j = 0; j < T; j++)
      d[j] = r[j] * (d[j] - s) * scale;
  }
}

/* dqkv = attention's input gradient (overwritten): dP = dY V^T,
 * dV = P^T dY, dS = softmax_bwd(dP), dQ = dS K, dK = dS^T Q.  Each
 * (row, head) pair writes only its own columns. */
static void attention_bwd(const gpt_model *m, float *dqkv, const float *datty,
                          const float *att, const float *qkv) {
  const int B = m->B, T = m->T, H = m->c.heads, C = m->c.channels;
  const int hs = C / H;
  const float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(2)                                           \
    num_threads(m->threads) if ((size_t)B * T * T * C >= PAR_MIN)
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      size_t bh = (size_t)b * H + h;
      const float *q = qkv + (size_t)b * T * 3 * C + h * hs;
      const float *p = att + bh * T * T;
      const float *dy = datty + (size_t)b * T * C + h * hs;
      float *dq = dqkv + (size_t)b * T * 3 * C + h * hs;
      float *dp = m->a.datt + bh * T * T;
      sgemm1(0, 1, T, T, hs, 1.0f, dy, C, q + 2 * C, 3 * C, dp, T);
      sgemm1(1, 0, T, hs, T, 1.0f, p, T, dy, C, dq + 2 * C, 3 * C);
      softmax_bwd(dp, p, T, scale);
      sgemm1(0, 0, T, hs, T, 1.0f, dp, T, q + C, 3 * C, dq, 3 * C);
      sgemm1(1, 0, T, hs, T, 1.0f, dp, T, q, 3 * C, dq + C, 3 * C);
    }
}

/* ---- the model ---------------------------------------------------------- */

/* Layer l's slice of a per-layer activation of width floats a row. */
static float *at(const gpt_model *m, float *base, int l, size_t width) {
  return base + (size_t)l * m->rows * width;
}

/* Block l's input: the embeddings, or block l-1's output. */
static float *block_in(const gpt_model *m, int l) {
  return l == 0 ? m->a.enc : at(m, m->a.res3, l - 1, m->c.channels);
}

static void block_forward(gpt_model *m, int l, float *const *w) {
  const acts *a = &m->a;
  const int N = m->B * m->T, C = m->c.channels;
  const size_t TT = (size_t)m->c.heads * m->c.seq_len;
  float *x = block_in(m, l), *ln1 = at(m, a->ln1, l, C);
  float *qkv = at(m, a->qkv, l, 3 * C), *atty = at(m, a->atty, l, C);
  float *res2 = at(m, a->res2, l, C), *ln2 = at(m, a->ln2, l, C);
  float *fch = at(m, a->fch, l, 4 * C), *fchg = at(m, a->fchg, l, 4 * C);
  layernorm_fwd(m, ln1, at(m, a->ln1_mean, l, 1), at(m, a->ln1_rstd, l, 1), x,
                w[LN1W], w[LN1B], N);
  linear_fwd(m, qkv, NULL, ln1, w[QKVW], w[QKVB], N, C, 3 * C);
  attention_fwd(m, atty, at(m, a->att, l, TT), qkv);
  linear_fwd(m, res2, x, atty, w[APW], w[APB], N, C, C);
  layernorm_fwd(m, ln2, at(m, a->ln2_mean, l, 1), at(m, a->ln2_rstd, l, 1),
                res2, w[LN2W], w[LN2B], N);
  linear_fwd(m, fch, NULL, ln2, w[FCW], w[FCB], N, C, 4 * C);
  gelu_fwd(m, fchg, fch, (size_t)N * 4 * C);
  linear_fwd(m, at(m, a->res3, l, C), res2, fchg, w[MPW], w[MPB], N, 4 * C, C);
}

/* a.dres holds d(block output) and becomes d(block input). */
static void block_backward(gpt_model *m, int l, float *const *w,
                           float *const *g) {
  const acts *a = &m->a;
  const int N = m->B * m->T, C = m->c.channels;
  const size_t TT = (size_t)m->c.heads * m->c.seq_len;
  float *fch = at(m, a->fch, l, 4 * C);
  linear_bwd(m, a->dfc, g[MPW], g[MPB], a->dres, at(m, a->fchg, l, 4 * C),
             w[MPW], N, 4 * C, C);
  gelu_bwd(m, a->dfc, fch, (size_t)N * 4 * C);
  linear_bwd(m, a->dln, g[FCW], g[FCB], a->dfc, at(m, a->ln2, l, C), w[FCW], N,
             C, 4 * C);
  layernorm_bwd(m, a->dres, g[LN2W], g[LN2B], a->dln, at(m, a->res2, l, C),
                w[LN2W], at(m, a->ln2_mean, l, 1), at(m, a->ln2_rstd, l, 1), N);
  linear_bwd(m, a->datty, g[APW], g[APB], a->dres, at(m, a->atty, l, C), w[APW],
             N, C, C);
  attention_bwd(m, a->dqkv, a->datty, at(m, a->att, l, TT),
                at(m, a->qkv, l, 3 * C));
  linear_bwd(m, a->dln, g[QKVW], g[QKVB], a->dqkv, at(m, a->ln1, l, C), w[QKVW],
             N, C, 3 * C);
  layernorm_bwd(m, a->dres, g[LN1W], g[LN1B], a->dln, block_in(m, l), w[LN1W],
                at(m, a->ln1_mean, l, 1), at(m, a->ln1_rstd, l, 1), N);
}

static tdm_status embed_forward(gpt_model *m) {
  mod_io io;
  tdm_status st = mod_open(m, 0, 0, &io);
  const int C = m->c.channels;
  for (int i = 0; st == TDM_SUCCESS && i < m->B * m->T; i++) {
    const float *te = io.w[WTE] + (size_t)m->inp[i] * C;
    const float *pe = io.w[WPE] + (size_t)(i % m->T) * C;
    for (int c = 0; c < C; c++)
      m->a.enc[(size_t)i * C + c] = te[c] + pe[c];
  }
  return mod_close(m, &io, st);
}

/* Softmax of each row of logits (in place in a.probs); returns the mean
 * cross-entropy against the targets (with them). */
static double softmax_xent(gpt_model *m) {
  const int N = m->B * m->T, V = m->c.vocab;
  double loss = 0;
#pragma omp parallel for reduction(+ : loss) num_threads(m->threads) \
    if ((size_t)N * V >= PAR_MIN)
  for (int i = 0; i < N; i++) {
    float *p = m->a.probs + (size_t)i * V, mx = -INFINITY;
    for (int v = 0; v < V; v++)
      mx = p[v] > mx ? p[v] : mx;
    double sum = 0;
    float target = m->has_targets ? p[m->tgt[i]] - mx : 0;
#pragma omp simd reduction(+ : sum)
    for (int v = 0; v < V; v++)
      sum += p[v] = exp_approx(p[v] - mx);
    for (int v = 0; v < V; v++)
      p[v] = (float)(p[v] / sum);
    /* -log softmax[target], without the rounding of a tiny probability */
    loss += m->has_targets ? log(sum) - target : 0;
  }
  return loss / N;
}

static tdm_status head_forward(gpt_model *m, float *loss) {
  const int N = m->B * m->T, C = m->c.channels, V = m->c.vocab;
  mod_io io;
  tdm_status st = mod_open(m, m->c.layers + 1, 0, &io);
  if (st == TDM_SUCCESS)
    layernorm_fwd(m, m->a.lnf, m->a.lnf_mean, m->a.lnf_rstd,
                  block_in(m, m->c.layers), io.w[0], io.w[1], N);
  st = mod_close(m, &io, st);
  /* The head is tied to wte: the embedding module again. */
  if (st == TDM_SUCCESS) {
    st = mod_open(m, 0, 0, &io);
    if (st == TDM_SUCCESS)
      gemm(m, 0, 1, N, V, C, m->a.lnf, C, io.w[WTE], C, 0.0f, m->a.probs, V);
    st = mod_close(m, &io, st);
  }
  double l = st == TDM_SUCCESS ? softmax_xent(m) : 0;
  if (loss)
    *loss = (float)l;
  return st;
}

/* Copies the inputs (and targets) so that backward may use them. */
static tdm_status take_tokens(gpt_model *m, const int32_t *tokens, int stride,
                              int B, int T, int targets) {
  if (!tokens || B < 1 || B > m->max_batch || T < 1 || T > m->c.seq_len ||
      stride < T + targets) {
    fprintf(stderr, "gpt_forward: bad shape B %d T %d stride %d\n", B, T,
            stride);
    return TDM_ERR_INVALID_ARGUMENT;
  }
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T + targets; t++) {
      int32_t tok = tokens[(size_t)b * stride + t];
      if (tok < 0 || tok >= m->c.vocab) {
        fprintf(stderr, "gpt_forward: token %d out of range\n", (int)tok);
        return TDM_ERR_INVALID_ARGUMENT;
      }
      if (t < T)
        m->inp[b * T + t] = tok;
      if (t > 0)
        m->tgt[b * T + t - 1] = tok;
    }
  m->B = B;
  m->T = T;
  m->has_targets = targets;
  return TDM_SUCCESS;
}

tdm_status gpt_forward(gpt_model *m, const int32_t *tokens, int stride, int B,
                       int T, float *loss) {
  if (!m)
    return TDM_ERR_INVALID_ARGUMENT;
  m->has_targets = 0;
  tdm_status st = take_tokens(m, tokens, stride, B, T, loss != NULL);
  if (st == TDM_SUCCESS)
    st = embed_forward(m);
  for (int l = 0; st == TDM_SUCCESS && l < m->c.layers; l++) {
    mod_io io;
    st = mod_open(m, l + 1, 0, &io);
    if (st == TDM_SUCCESS)
      block_forward(m, l, io.w);
    st = mod_close(m, &io, st);
  }
  if (st == TDM_SUCCESS)
    st = head_forward(m, loss);
  if (st != TDM_SUCCESS)
    m->has_targets = 0;
  return st;
}

/* d(loss)/d(logits) * scale; then through the tied head: a.dln = d(lnf),
 * a.dwte = the head's share of wte's gradient (added at the embedding). */
static tdm_status head_backward(gpt_model *m, float scale) {
  const int N = m->B * m->T, C = m->c.channels, V = m->c.vocab;
  const float k = scale / (float)N;
  float *dl = m->a.dlogits;
#pragma omp parallel for num_threads(m->threads) if ((size_t)N * V >= PAR_MIN)
  for (int i = 0; i < N; i++) {
    for (int v = 0; v < V; v++)
      dl[(size_t)i * V + v] = m->a.probs[(size_t)i * V + v] * k;
    dl[(size_t)i * V + m->tgt[i]] -= k;
  }
  mod_io io;
  tdm_status st = mod_open(m, 0, 0, &io);
  if (st == TDM_SUCCESS) {
    gemm(m, 0, 0, N, C, V, dl, V, io.w[WTE], C, 0.0f, m->a.dln, C);
    gemm(m, 1, 0, V, C, N, dl, V, m->a.lnf, C, 0.0f, m->a.dwte, C);
  }
  return mod_close(m, &io, st);
}

static tdm_status lnf_backward(gpt_model *m) {
  const int N = m->B * m->T;
  mod_io io;
  tdm_status st = mod_open(m, m->c.layers + 1, 1, &io);
  memset(m->a.dres, 0, (size_t)N * m->c.channels * sizeof(float));
  if (st == TDM_SUCCESS)
    layernorm_bwd(m, m->a.dres, io.g[0], io.g[1], m->a.dln,
                  block_in(m, m->c.layers), io.w[0], m->a.lnf_mean,
                  m->a.lnf_rstd, N);
  return mod_close(m, &io, st);
}

static tdm_status embed_backward(gpt_model *m) {
  const int C = m->c.channels;
  mod_io io;
  tdm_status st = mod_open(m, 0, 1, &io);
  if (st == TDM_SUCCESS) {
    size_t n = (size_t)m->c.vocab * C;
    for (size_t i = 0; i < n; i++)
      io.g[WTE][i] += m->a.dwte[i];
    for (int i = 0; i < m->B * m->T; i++) {
      const float *d = m->a.dres + (size_t)i * C;
      axpy(io.g[WTE] + (size_t)m->inp[i] * C, 1.0f, d, C);
      axpy(io.g[WPE] + (size_t)(i % m->T) * C, 1.0f, d, C);
    }
  }
  return mod_close(m, &io, st);
}

tdm_status gpt_backward(gpt_model *m, float scale) {
  if (!m)
    return TDM_ERR_INVALID_ARGUMENT;
  if (!m->has_targets) {
    fprintf(stderr, "gpt_backward: the last forward had no targets\n");
    return TDM_ERR_INVALID_USAGE;
  }
  tdm_status st = head_backward(m, scale);
  if (st == TDM_SUCCESS)
    st = lnf_backward(m);
  for (int l = m->c.layers - 1; st == TDM_SUCCESS && l >= 0; l--) {
    mod_io io;
    st = mod_open(m, l + 1, 1, &io);
    if (st == TDM_SUCCESS)
      block_backward(m, l, io.w, io.g);
    st = mod_close(m, &io, st);
  }
  return st == TDM_SUCCESS ? embed_backward(m) : st;
}

const float *gpt_probs(const gpt_model *m, int b, int t) {
  if (!m || b < 0 || b >= m->B || t < 0 || t >= m->T)
    return NULL;
  return m->a.probs + ((size_t)b * m->T + t) * m->c.vocab;
}

/* ---- construction -------------------------------------------------------- */

/* Points every activation into one arena (each array 64-byte aligned). */
static tdm_status alloc_acts(gpt_model *m) {
  acts *a = &m->a;
  const size_t R = m->rows, C = (size_t)m->c.channels, L = (size_t)m->c.layers;
  const size_t S = (size_t)m->c.seq_len, BH = (size_t)m->max_batch * m->c.heads;
  struct {
    float **p;
    size_t n;
  } t[] = {{&a->enc, R * C},          {&a->ln1, L * R * C},
           {&a->ln1_mean, L * R},     {&a->ln1_rstd, L * R},
           {&a->qkv, L * R * 3 * C},  {&a->att, L * BH * S * S},
           {&a->atty, L * R * C},     {&a->res2, L * R * C},
           {&a->ln2, L * R * C},      {&a->ln2_mean, L * R},
           {&a->ln2_rstd, L * R},     {&a->fch, L * R * 4 * C},
           {&a->fchg, L * R * 4 * C}, {&a->res3, L * R * C},
           {&a->lnf, R * C},          {&a->lnf_mean, R},
           {&a->lnf_rstd, R},         {&a->probs, R * m->c.vocab},
           {&a->dres, R * C},         {&a->dln, R * C},
           {&a->datty, R * C},        {&a->dqkv, R * 3 * C},
           {&a->dfc, R * 4 * C},      {&a->dlogits, R * m->c.vocab},
           {&a->datt, BH * S * S},    {&a->dwte, m->c.vocab * C}};
  const size_t count = sizeof t / sizeof *t;
  size_t total = 0;
  for (size_t i = 0; i < count; i++)
    total += (t[i].n + 15) / 16 * 16;
  if (!(m->arena = aligned_alloc(64, (total ? total : 16) * sizeof(float))))
    return TDM_ERR_NO_MEMORY;
  memset(m->arena, 0, total * sizeof(float));
  float *p = m->arena;
  for (size_t i = 0; i < count; i++) {
    *t[i].p = p;
    p += (t[i].n + 15) / 16 * 16;
  }
  return TDM_SUCCESS;
}

/* Registers one f32 parameter of rows x cols (cols 0: a vector), its
 * initial values drawn into buf by init. */
static tdm_status add_param(gpt_model *m, tdm_rng *rng, float *buf, int mod,
                            const char *name, int rows, int cols, int init) {
  const int64_t shape[2] = {rows, cols};
  const size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
  tdm_status st = TDM_SUCCESS;
  if (init >= INIT_NORMAL)
    st = tdm_rng_normal_f32(
        rng, buf, n, 0.0f,
        init == INIT_PROJ ? 0.02f / sqrtf(2.0f * (float)m->c.layers) : 0.02f);
  else
    for (size_t i = 0; i < n; i++)
      buf[i] = init == INIT_ONE ? 1.0f : 0.0f;
  if (st == TDM_SUCCESS)
    st = tdm_add_param(m->e, m->module[mod], name, TDM_F32, cols ? 2 : 1, shape,
                       buf, 0, &m->param[m->nslots]);
  m->numel[m->nslots++] = n;
  return st;
}

static tdm_status add_module(gpt_model *m, int mod, const char *name) {
  m->first[mod] = m->nslots;
  return tdm_add_module(m->e, name, &m->module[mod]);
}

static tdm_status register_params(gpt_model *m, tdm_rng *rng, float *buf) {
  const int C = m->c.channels, L = m->c.layers;
  char name[64];
  tdm_status st = add_module(m, 0, "embed");
  if (st == TDM_SUCCESS)
    st = add_param(m, rng, buf, 0, "wte.weight", m->c.vocab, C, INIT_NORMAL);
  if (st == TDM_SUCCESS)
    st = add_param(m, rng, buf, 0, "wpe.weight", m->c.seq_len, C, INIT_NORMAL);
  for (int l = 0; l < L && st == TDM_SUCCESS; l++) {
    snprintf(name, sizeof name, "h.%d", l);
    st = add_module(m, l + 1, name);
    for (int k = 0; k < NBLOCK && st == TDM_SUCCESS; k++) {
      snprintf(name, sizeof name, "h.%d.%s", l, block_spec[k].name);
      st = add_param(m, rng, buf, l + 1, name, block_spec[k].rows * C,
                     block_spec[k].cols * C, block_spec[k].init);
    }
  }
  if (st == TDM_SUCCESS)
    st = add_module(m, L + 1, "ln_f");
  if (st == TDM_SUCCESS)
    st = add_param(m, rng, buf, L + 1, "ln_f.weight", C, 0, INIT_ONE);
  if (st == TDM_SUCCESS)
    st = add_param(m, rng, buf, L + 1, "ln_f.bias", C, 0, INIT_ZERO);
  m->first[L + 2] = m->nslots;
  return st;
}

static int config_ok(const gpt_config *c, int max_batch) {
  return c->vocab > 0 && c->seq_len > 0 && c->layers > 0 && c->heads > 0 &&
         c->channels > 0 && c->channels % c->heads == 0 && max_batch > 0;
}

/* The ranks of a node share its cores as tandem's own kernels do
 * (tdm_options.cpu_threads); OMP_NUM_THREADS, where lower, caps it. */
static int cpu_threads(const tdm_context *ctx) {
  tdm_options o = TDM_OPTIONS_INIT;
  if (tdm_get_options(ctx, &o) != TDM_SUCCESS || o.cpu_threads < 1)
    return 1;
#ifdef _OPENMP
  if (omp_get_max_threads() < o.cpu_threads)
    return omp_get_max_threads();
#endif
  return o.cpu_threads;
}

tdm_status gpt_create(tdm_context *ctx, tdm_engine *e, const gpt_config *cfg,
                      int max_batch, uint64_t seed, gpt_model **out) {
  if (!ctx || !e || !cfg || !out || !config_ok(cfg, max_batch))
    return TDM_ERR_INVALID_ARGUMENT;
  gpt_model *m = calloc(1, sizeof *m);
  if (!m)
    return TDM_ERR_NO_MEMORY;
  const int L = cfg->layers, nslots = 2 + NBLOCK * L + 2;
  *m = (gpt_model){.e = e, .c = *cfg, .max_batch = max_batch};
  m->threads = cpu_threads(ctx);
#ifdef OPENBLAS_VERSION
  /* gemm() runs the threads; OpenBLAS's own would compete with them. */
  openblas_set_num_threads(1);
#endif
  m->rows = (size_t)max_batch * cfg->seq_len;
  m->module = calloc((size_t)L + 2, sizeof *m->module);
  m->first = calloc((size_t)L + 3, sizeof *m->first);
  m->param = calloc((size_t)nslots, sizeof *m->param);
  m->numel = calloc((size_t)nslots, sizeof *m->numel);
  m->inp = calloc(m->rows, sizeof *m->inp);
  m->tgt = calloc(m->rows, sizeof *m->tgt);
  size_t C = (size_t)cfg->channels, big = (size_t)cfg->vocab * C;
  big = big > 4 * C * C ? big : 4 * C * C;
  big = big > (size_t)cfg->seq_len * C ? big : (size_t)cfg->seq_len * C;
  float *buf = malloc(big * sizeof *buf);
  tdm_rng *rng = NULL;
  tdm_status st =
      m->module && m->first && m->param && m->numel && m->inp && m->tgt && buf
          ? alloc_acts(m)
          : TDM_ERR_NO_MEMORY;
  if (st == TDM_SUCCESS)
    st = tdm_rng_create(ctx, seed, TDM_RNG_SHARED, &rng);
  if (st == TDM_SUCCESS)
    st = register_params(m, rng, buf);
  if (rng)
    tdm_rng_destroy(rng);
  free(buf);
  if (st != TDM_SUCCESS) {
    gpt_destroy(m);
    return st;
  }
  *out = m;
  return TDM_SUCCESS;
}

void gpt_destroy(gpt_model *m) {
  if (!m)
    return;
  free(m->module);
  free(m->first);
  free(m->param);
  free(m->numel);
  free(m->inp);
  free(m->tgt);
  free(m->arena);
  free(m);
}
