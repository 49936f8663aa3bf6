/* model.c - the MLP's math (see model.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

static const int64_t shapes[MLP_PARAMS][2] = {
    {MLP_HIDDEN, MLP_IN}, {MLP_HIDDEN, 1}, {1, MLP_HIDDEN}, {1, 1}};
static const int ndims[MLP_PARAMS] = {2, 1, 2, 1};
static const char *const names[MLP_PARAMS] = {"fc1.weight", "fc1.bias",
                                              "fc2.weight", "fc2.bias"};

tdm_status mlp_register(tdm_context *ctx, tdm_engine *e, uint64_t seed,
                        mlp_model *m) {
  tdm_status st = tdm_add_module(e, "fc1", &m->module[MLP_FC1]);
  if (st == TDM_SUCCESS)
    st = tdm_add_module(e, "fc2", &m->module[MLP_FC2]);
  tdm_rng *rng = NULL;
  if (st == TDM_SUCCESS)
    st = tdm_rng_create(ctx, seed, TDM_RNG_PER_RANK, &rng);
  float init[MLP_HIDDEN * MLP_IN];
  for (int p = 0; p < MLP_PARAMS && st == TDM_SUCCESS; p++) {
    int fan_in = p < MLP_W2 ? MLP_IN : MLP_HIDDEN;
    size_t n = (size_t)(shapes[p][0] * shapes[p][1]);
    st = tdm_rng_uniform_f32(rng, init, n);
    for (size_t i = 0; i < n; i++)
      init[i] = (2.0f * init[i] - 1.0f) / sqrtf((float)fan_in);
    if (st == TDM_SUCCESS)
      st = tdm_add_param(e, m->module[p < MLP_W2 ? MLP_FC1 : MLP_FC2],
                         names[p], TDM_F32, ndims[p], shapes[p], init, 0,
                         &m->param[p]);
  }
  if (rng)
    tdm_rng_destroy(rng);
  return st;
}

static const size_t numel[MLP_PARAMS] = {MLP_HIDDEN * MLP_IN, MLP_HIDDEN,
                                         MLP_HIDDEN, 1};

/* A parameter's values or gradient as f32: tandem's buffer itself, or an
 * f32 copy of a 16-bit one (values converted in; a gradient copy starts
 * at zero and is added back into the buffer when closed). */
typedef struct {
  void *buffer;
  tdm_dtype dtype;
  size_t n;
  float *f32;
} view;

static tdm_status view_open(view *v, void *buffer, tdm_dtype dtype, size_t n,
                            int load) {
  *v = (view){buffer, dtype, n, buffer};
  if (dtype == TDM_F32)
    return TDM_SUCCESS;
  if (!(v->f32 = calloc(n, sizeof(float))))
    return TDM_ERR_NO_MEMORY;
  return load ? tdm_convert(dtype, buffer, TDM_F32, v->f32, n) : TDM_SUCCESS;
}

/* Adds a gradient copy into its 16-bit buffer, then frees the copy. */
static tdm_status view_close(view *v, int store) {
  tdm_status st = TDM_SUCCESS;
  if (v->f32 == v->buffer || !v->f32)
    return st;
  if (store) {
    float *sum = malloc(v->n * sizeof *sum);
    st = sum ? tdm_convert(v->dtype, v->buffer, TDM_F32, sum, v->n)
             : TDM_ERR_NO_MEMORY;
    for (size_t i = 0; st == TDM_SUCCESS && i < v->n; i++)
      sum[i] += v->f32[i];
    if (st == TDM_SUCCESS)
      st = tdm_convert(TDM_F32, sum, v->dtype, v->buffer, v->n);
    free(sum);
  }
  free(v->f32);
  v->f32 = NULL;
  return st;
}

/* One layer's weight and bias (values, and gradients in backward). */
typedef struct {
  int module, p0;
  view value[2], grad[2];
  int with_grad;
} layer;

static tdm_status open_param(tdm_engine *e, const mlp_model *m, layer *l,
                             int k) {
  int p = l->p0 + k;
  void *data, *grad;
  tdm_dtype dd, gd;
  tdm_status st = tdm_param_buffers(e, m->param[p], &data,
                                    l->with_grad ? &grad : NULL);
  if (st == TDM_SUCCESS)
    st = tdm_get_param_dtypes(e, m->param[p], &dd, &gd);
  if (st == TDM_SUCCESS)
    st = view_open(&l->value[k], data, dd, numel[p], 1);
  if (st == TDM_SUCCESS && l->with_grad)
    st = view_open(&l->grad[k], grad, gd, numel[p], 0);
  return st;
}

/* Fetches the layer (ZeRO-3 gathers it) and opens its views. */
static tdm_status layer_open(tdm_engine *e, const mlp_model *m, int mod,
                             int with_grad, layer *l) {
  memset(l, 0, sizeof *l);
  l->module = m->module[mod];
  l->p0 = mod == MLP_FC1 ? MLP_W1 : MLP_W2;
  l->with_grad = with_grad;
  tdm_status st = tdm_fetch_module(e, l->module);
  for (int k = 0; k < 2 && st == TDM_SUCCESS; k++)
    st = open_param(e, m, l, k);
  return st;
}

/* Stores the gradients, marks the module ready (backward) and releases
 * it; the first failure is returned. */
static tdm_status layer_close(tdm_engine *e, layer *l, tdm_status st) {
  for (int k = 0; k < 2; k++) {
    view_close(&l->value[k], 0);
    tdm_status g = view_close(&l->grad[k], st == TDM_SUCCESS);
    st = st == TDM_SUCCESS ? g : st;
  }
  if (st == TDM_SUCCESS && l->with_grad)
    st = tdm_module_grads_ready(e, l->module);
  tdm_status r = tdm_release_module(e, l->module);
  return st == TDM_SUCCESS ? r : st;
}

static float target(const float *x) {
  return sinf(x[0]) + 0.5f * x[1] * x[2] - 0.3f * x[3] + 0.2f * cosf(x[4]);
}

tdm_status mlp_make_data(tdm_context *ctx, uint64_t seed, int n, float *x,
                         float *y) {
  tdm_rng *rng;
  tdm_status st = tdm_rng_create(ctx, seed, TDM_RNG_SHARED, &rng);
  if (st != TDM_SUCCESS)
    return st;
  st = tdm_rng_normal_f32(rng, x, (size_t)n * MLP_IN, 0.0f, 1.0f);
  if (st == TDM_SUCCESS)
    st = tdm_rng_normal_f32(rng, y, (size_t)n, 0.0f, 0.05f);
  for (int i = 0; i < n; i++)
    y[i] += target(&x[(size_t)i * MLP_IN]);
  tdm_rng_destroy(rng);
  return st;
}

/* h = relu(W1 x + b1) for n samples */
static tdm_status forward_fc1(tdm_engine *e, const mlp_model *m,
                              const float *x, int n, float *h) {
  layer l;
  tdm_status st = layer_open(e, m, MLP_FC1, 0, &l);
  const float *w1 = l.value[0].f32, *b1 = l.value[1].f32;
  for (int i = 0; i < n && st == TDM_SUCCESS; i++)
    for (int j = 0; j < MLP_HIDDEN; j++) {
      float a = b1[j];
      for (int k = 0; k < MLP_IN; k++)
        a += w1[j * MLP_IN + k] * x[(size_t)i * MLP_IN + k];
      h[(size_t)i * MLP_HIDDEN + j] = a > 0 ? a : 0;
    }
  return layer_close(e, &l, st);
}

/* out = W2 h + b2; dout = d(loss)/d(out) * grad_scale; the loss. */
static tdm_status forward_fc2(tdm_engine *e, const mlp_model *m,
                              const float *h, const float *y, int n,
                              double grad_scale, float *dout, double *loss) {
  layer l;
  tdm_status st = layer_open(e, m, MLP_FC2, 0, &l);
  double sum = 0;
  for (int i = 0; i < n && st == TDM_SUCCESS; i++) {
    float out = l.value[1].f32[0];
    for (int j = 0; j < MLP_HIDDEN; j++)
      out += l.value[0].f32[j] * h[(size_t)i * MLP_HIDDEN + j];
    float err = out - y[i];
    sum += (double)err * err;
    dout[i] = (float)(2.0 * err / n * grad_scale);
  }
  *loss = sum / n;
  return layer_close(e, &l, st);
}

/* fc2's gradients, and dh = dout W2 masked by the ReLU. */
static tdm_status backward_fc2(tdm_engine *e, const mlp_model *m,
                               const float *h, const float *dout, int n,
                               float *dh) {
  layer l;
  tdm_status st = layer_open(e, m, MLP_FC2, 1, &l);
  for (int i = 0; i < n && st == TDM_SUCCESS; i++) {
    l.grad[1].f32[0] += dout[i];
    for (int j = 0; j < MLP_HIDDEN; j++) {
      size_t ij = (size_t)i * MLP_HIDDEN + j;
      l.grad[0].f32[j] += dout[i] * h[ij];
      dh[ij] = h[ij] <= 0 ? 0 : dout[i] * l.value[0].f32[j];
    }
  }
  return layer_close(e, &l, st);
}

static tdm_status backward_fc1(tdm_engine *e, const mlp_model *m,
                               const float *x, const float *dh, int n) {
  layer l;
  tdm_status st = layer_open(e, m, MLP_FC1, 1, &l);
  for (int i = 0; i < n && st == TDM_SUCCESS; i++)
    for (int j = 0; j < MLP_HIDDEN; j++) {
      float d = dh[(size_t)i * MLP_HIDDEN + j];
      l.grad[1].f32[j] += d;
      for (int k = 0; k < MLP_IN; k++)
        l.grad[0].f32[j * MLP_IN + k] += d * x[(size_t)i * MLP_IN + k];
    }
  return layer_close(e, &l, st);
}

tdm_status mlp_forward_backward(tdm_engine *e, mlp_model *m, const float *x,
                                const float *y, int n, double grad_scale,
                                double *loss) {
  float *h = malloc(sizeof *h * (size_t)n * MLP_HIDDEN);
  float *dh = malloc(sizeof *dh * (size_t)n * MLP_HIDDEN);
  float *dout = malloc(sizeof *dout * (size_t)n);
  tdm_status st = h && dh && dout ? TDM_SUCCESS : TDM_ERR_NO_MEMORY;
  if (st == TDM_SUCCESS)
    st = forward_fc1(e, m, x, n, h);
  if (st == TDM_SUCCESS)
    st = forward_fc2(e, m, h, y, n, grad_scale, dout, loss);
  /* Backward, last layer first. */
  if (st == TDM_SUCCESS)
    st = backward_fc2(e, m, h, dout, n, dh);
  if (st == TDM_SUCCESS)
    st = backward_fc1(e, m, x, dh, n);
  free(h);
  free(dh);
  free(dout);
  return st;
}
