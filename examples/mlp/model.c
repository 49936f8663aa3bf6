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

/* An f32 view of a buffer: the buffer itself, or a new f32 copy. */
static float *f32_view(void *buffer, tdm_dtype dtype, size_t n) {
  return dtype == TDM_F32 ? buffer : calloc(n, sizeof(float));
}

tdm_status mlp_bind(tdm_engine *e, mlp_model *m) {
  static const size_t numel[MLP_PARAMS] = {MLP_HIDDEN * MLP_IN, MLP_HIDDEN,
                                           MLP_HIDDEN, 1};
  for (int p = 0; p < MLP_PARAMS; p++) {
    m->numel[p] = numel[p];
    tdm_status st = tdm_param_buffers(e, m->param[p], &m->data[p],
                                      &m->grad_buffer[p]);
    if (st == TDM_SUCCESS)
      st = tdm_get_param_dtypes(e, m->param[p], &m->data_dtype[p],
                                &m->grad_dtype[p]);
    if (st != TDM_SUCCESS)
      return st;
    m->value[p] = f32_view(m->data[p], m->data_dtype[p], numel[p]);
    m->grad[p] = f32_view(m->grad_buffer[p], m->grad_dtype[p], numel[p]);
    if (!m->value[p] || !m->grad[p])
      return TDM_ERR_NO_MEMORY;
  }
  return TDM_SUCCESS;
}

void mlp_unbind(mlp_model *m) {
  for (int p = 0; p < MLP_PARAMS; p++) {
    if (m->value[p] != m->data[p])
      free(m->value[p]);
    if (m->grad[p] != m->grad_buffer[p])
      free(m->grad[p]);
    m->value[p] = m->grad[p] = NULL;
  }
}

/* Mixed precision: refresh the f32 copies of 16-bit values, and clear
 * the f32 gradients of this micro-step. */
static tdm_status load_values(mlp_model *m) {
  tdm_status st = TDM_SUCCESS;
  for (int p = 0; p < MLP_PARAMS && st == TDM_SUCCESS; p++) {
    if (m->value[p] != m->data[p])
      st = tdm_convert(m->data_dtype[p], m->data[p], TDM_F32, m->value[p],
                       m->numel[p]);
    if (m->grad[p] != m->grad_buffer[p])
      memset(m->grad[p], 0, m->numel[p] * sizeof(float));
  }
  return st;
}

/* Adds this micro-step's f32 gradients of param p into a 16-bit buffer. */
static tdm_status store_grad(mlp_model *m, int p) {
  if (m->grad[p] == m->grad_buffer[p])
    return TDM_SUCCESS; /* accumulated in place */
  float *sum = malloc(m->numel[p] * sizeof *sum);
  if (!sum)
    return TDM_ERR_NO_MEMORY;
  tdm_status st = tdm_convert(m->grad_dtype[p], m->grad_buffer[p], TDM_F32,
                              sum, m->numel[p]);
  for (size_t i = 0; i < m->numel[p]; i++)
    sum[i] += m->grad[p][i];
  if (st == TDM_SUCCESS)
    st = tdm_convert(TDM_F32, sum, m->grad_dtype[p], m->grad_buffer[p],
                     m->numel[p]);
  free(sum);
  return st;
}

/* Marks module mod ready once its gradients are in tandem's buffers. */
static tdm_status module_done(tdm_engine *e, mlp_model *m, int mod, int p0,
                              int p1) {
  tdm_status st = store_grad(m, p0);
  if (st == TDM_SUCCESS)
    st = store_grad(m, p1);
  return st == TDM_SUCCESS ? tdm_module_grads_ready(e, m->module[mod]) : st;
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

/* h = relu(W1 x + b1); out = W2 h + b2 */
static float forward(const mlp_model *m, const float *x, float *h) {
  const float *w1 = m->value[MLP_W1], *b1 = m->value[MLP_B1];
  float out = m->value[MLP_B2][0];
  for (int j = 0; j < MLP_HIDDEN; j++) {
    float a = b1[j];
    for (int k = 0; k < MLP_IN; k++)
      a += w1[j * MLP_IN + k] * x[k];
    h[j] = a > 0 ? a : 0;
    out += m->value[MLP_W2][j] * h[j];
  }
  return out;
}

tdm_status mlp_forward_backward(tdm_engine *e, mlp_model *m, const float *x,
                                const float *y, int n, double grad_scale,
                                double *loss) {
  float *h = malloc(sizeof *h * (size_t)n * MLP_HIDDEN);
  float *dout = malloc(sizeof *dout * (size_t)n);
  if (!h || !dout || load_values(m) != TDM_SUCCESS) {
    free(h);
    free(dout);
    return TDM_ERR_NO_MEMORY;
  }
  double sum = 0;
  for (int i = 0; i < n; i++) {
    float err = forward(m, &x[(size_t)i * MLP_IN], &h[(size_t)i * MLP_HIDDEN]) - y[i];
    sum += (double)err * err;
    dout[i] = (float)(2.0 * err / n * grad_scale);
  }
  *loss = sum / n;
  /* fc2 first: backward runs last layer first. */
  for (int i = 0; i < n; i++) {
    m->grad[MLP_B2][0] += dout[i];
    for (int j = 0; j < MLP_HIDDEN; j++)
      m->grad[MLP_W2][j] += dout[i] * h[(size_t)i * MLP_HIDDEN + j];
  }
  tdm_status st = module_done(e, m, MLP_FC2, MLP_W2, MLP_B2);
  for (int i = 0; i < n && st == TDM_SUCCESS; i++)
    for (int j = 0; j < MLP_HIDDEN; j++) {
      if (h[(size_t)i * MLP_HIDDEN + j] <= 0)
        continue;
      float dh = dout[i] * m->value[MLP_W2][j];
      m->grad[MLP_B1][j] += dh;
      for (int k = 0; k < MLP_IN; k++)
        m->grad[MLP_W1][j * MLP_IN + k] += dh * x[(size_t)i * MLP_IN + k];
    }
  if (st == TDM_SUCCESS)
    st = module_done(e, m, MLP_FC1, MLP_W1, MLP_B1);
  free(h);
  free(dout);
  return st;
}
