/* deep_model.c - the chain of fully connected layers of deep_model.h.
 *
 * Layer l computes z = W a + b (W [out][in] row-major) on the whole batch;
 * tanh follows every layer but the last, and the loss is the mean squared
 * error over samples and outputs.  The math is f32 in a fixed order, so
 * that every ZeRO stage sees the same gradients bit for bit.  The
 * parameters are read and the gradients written only between
 * tdm_fetch_module and tdm_release_module of their module, in the order of
 * the ZeRO protocol of tandem.h; 16-bit data (compute copies) and
 * gradients (reduce dtype) go through f32 scratch with tdm_convert. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deep_model.h"

void deep_free(deep_model *m) {
  if (!m)
    return;
  free(m->width);
  free(m->module);
  free(m->weight);
  free(m->bias);
  memset(m, 0, sizeof *m);
}

tdm_status deep_register(tdm_context *ctx, tdm_engine *e, int nlayers,
                         const int *width, uint64_t seed, deep_model *m) {
  if (!m)
    return TDM_ERR_INVALID_ARGUMENT;
  memset(m, 0, sizeof *m);
  if (!ctx || !e || !width || nlayers < 1)
    return TDM_ERR_INVALID_ARGUMENT;
  size_t largest = 0;
  for (int l = 0; l <= nlayers; l++) {
    if (width[l] < 1)
      return TDM_ERR_INVALID_ARGUMENT;
    if (l > 0 && (size_t)width[l - 1] * (size_t)width[l] > largest)
      largest = (size_t)width[l - 1] * (size_t)width[l];
  }
  m->nlayers = nlayers;
  m->width = malloc(sizeof *m->width * (size_t)(nlayers + 1));
  m->module = malloc(sizeof *m->module * (size_t)nlayers);
  m->weight = malloc(sizeof *m->weight * (size_t)nlayers);
  m->bias = malloc(sizeof *m->bias * (size_t)nlayers);
  float *init = malloc(sizeof *init * largest);
  if (!m->width || !m->module || !m->weight || !m->bias || !init) {
    free(init);
    deep_free(m);
    return TDM_ERR_NO_MEMORY;
  }
  memcpy(m->width, width, sizeof *m->width * (size_t)(nlayers + 1));
  tdm_rng *rng = NULL;
  tdm_status st = tdm_rng_create(ctx, seed, TDM_RNG_PER_RANK, &rng);
  for (int l = 0; l < nlayers && st == TDM_SUCCESS; l++) {
    int in = width[l], out = width[l + 1];
    char name[64];
    snprintf(name, sizeof name, "layer%d", l);
    st = tdm_add_module(e, name, &m->module[l]);
    /* torch.nn.Linear: weight and bias U(-1/sqrt(in), 1/sqrt(in)) */
    const float bound = 1.0f / sqrtf((float)in);
    for (int which = 0; which < 2 && st == TDM_SUCCESS; which++) {
      size_t n = which == 0 ? (size_t)out * (size_t)in : (size_t)out;
      st = tdm_rng_uniform_f32(rng, init, n);
      for (size_t i = 0; i < n; i++)
        init[i] = (2.0f * init[i] - 1.0f) * bound;
      const int64_t shape[2] = {out, in}; /* bias: {out} */
      snprintf(name, sizeof name, "layer%d.%s", l,
               which == 0 ? "weight" : "bias");
      if (st == TDM_SUCCESS)
        st = tdm_add_param(e, m->module[l], name, TDM_F32, which == 0 ? 2 : 1,
                           shape, init, 0,
                           which == 0 ? &m->weight[l] : &m->bias[l]);
    }
  }
  if (rng)
    tdm_rng_destroy(rng);
  free(init);
  return st;
}

size_t deep_numel(const deep_model *m) {
  size_t n = 0;
  for (int l = 0; m && l < m->nlayers; l++)
    n += (size_t)m->width[l + 1] * ((size_t)m->width[l] + 1);
  return n;
}

/* An f32 view of count values of dtype: the buffer itself, or its
 * conversion into scratch. */
static tdm_status f32_view(tdm_dtype dtype, void *data, size_t count,
                           float *scratch, const float **view) {
  if (dtype == TDM_F32) {
    *view = data;
    return TDM_SUCCESS;
  }
  *view = scratch;
  return tdm_convert(dtype, data, TDM_F32, scratch, count);
}

/* buffer += g, the buffer of dtype (16-bit: through scratch, one rounding
 * of the f32 sum). */
static tdm_status add_grad(tdm_dtype dtype, void *buffer, const float *g,
                           size_t count, float *scratch) {
  if (dtype == TDM_F32) {
    float *b = buffer;
    for (size_t i = 0; i < count; i++)
      b[i] += g[i];
    return TDM_SUCCESS;
  }
  tdm_status st = tdm_convert(dtype, buffer, TDM_F32, scratch, count);
  for (size_t i = 0; i < count && st == TDM_SUCCESS; i++)
    scratch[i] += g[i];
  if (st == TDM_SUCCESS)
    st = tdm_convert(TDM_F32, scratch, dtype, buffer, count);
  return st;
}

/* The layer's weight and bias data (f32 views) after tdm_fetch_module; the
 * gradient buffers too when wgrad is not NULL. */
static tdm_status layer_buffers(tdm_engine *e, const deep_model *m, int l,
                                float *wscratch, float *bscratch,
                                const float **w, const float **b,
                                void **wgrad, void **bgrad,
                                tdm_dtype *wgrad_dt, tdm_dtype *bgrad_dt) {
  size_t out = (size_t)m->width[l + 1], in = (size_t)m->width[l];
  void *wd = NULL, *bd = NULL;
  tdm_dtype wdt = TDM_F32, bdt = TDM_F32;
  tdm_status st = tdm_param_buffers(e, m->weight[l], &wd, wgrad);
  if (st == TDM_SUCCESS)
    st = tdm_param_buffers(e, m->bias[l], &bd, bgrad);
  if (st == TDM_SUCCESS)
    st = tdm_get_param_dtypes(e, m->weight[l], &wdt, wgrad_dt);
  if (st == TDM_SUCCESS)
    st = tdm_get_param_dtypes(e, m->bias[l], &bdt, bgrad_dt);
  if (st == TDM_SUCCESS)
    st = f32_view(wdt, wd, out * in, wscratch, w);
  if (st == TDM_SUCCESS)
    st = f32_view(bdt, bd, out, bscratch, b);
  return st;
}

tdm_status deep_forward_backward(tdm_engine *e, const deep_model *m,
                                 const float *x, const float *y, int n,
                                 double grad_scale, double *loss) {
  if (!e || !m || m->nlayers < 1 || !x || !y || n < 1 || !loss)
    return TDM_ERR_INVALID_ARGUMENT;
  const int L = m->nlayers;
  size_t wmax = 0, amax = 0;
  for (int l = 0; l < L; l++) {
    size_t wn = (size_t)m->width[l] * (size_t)m->width[l + 1];
    wmax = wn > wmax ? wn : wmax;
  }
  for (int l = 0; l <= L; l++)
    amax = (size_t)m->width[l] > amax ? (size_t)m->width[l] : amax;
  /* act[l]: the input of layer l (act[0] = x), act[L] the output. */
  float **act = calloc((size_t)L + 1, sizeof *act);
  float *wscratch = malloc(sizeof(float) * wmax);   /* 16-bit W as f32  */
  float *bscratch = malloc(sizeof(float) * amax);   /* 16-bit b as f32  */
  float *gscratch = malloc(sizeof(float) * wmax);   /* 16-bit gradients */
  float *gw = malloc(sizeof(float) * wmax);         /* this step's dW   */
  float *gb = malloc(sizeof(float) * amax);         /* this step's db   */
  float *delta = malloc(sizeof(float) * (size_t)n * amax);
  float *prev = malloc(sizeof(float) * (size_t)n * amax);
  tdm_status st = act && wscratch && bscratch && gscratch && gw && gb &&
                          delta && prev
                      ? TDM_SUCCESS
                      : TDM_ERR_NO_MEMORY;
  for (int l = 1; l <= L && st == TDM_SUCCESS; l++)
    if (!(act[l] = malloc(sizeof(float) * (size_t)n * (size_t)m->width[l])))
      st = TDM_ERR_NO_MEMORY;

  /* ---- forward ---- */
  for (int l = 0; l < L && st == TDM_SUCCESS; l++) {
    const int in = m->width[l], out = m->width[l + 1];
    const float *a = l == 0 ? x : act[l];
    float *z = act[l + 1];
    st = tdm_fetch_module(e, m->module[l]);
    if (st != TDM_SUCCESS)
      break;
    const float *w = NULL, *b = NULL;
    st = layer_buffers(e, m, l, wscratch, bscratch, &w, &b, NULL, NULL, NULL,
                       NULL);
    for (int i = 0; i < n && st == TDM_SUCCESS; i++) {
      const float *ai = &a[(size_t)i * in];
      for (int o = 0; o < out; o++) {
        const float *wo = &w[(size_t)o * in];
        float s = b[o];
        for (int k = 0; k < in; k++)
          s += wo[k] * ai[k];
        z[(size_t)i * out + o] = l < L - 1 ? tanhf(s) : s;
      }
    }
    tdm_status rs = tdm_release_module(e, m->module[l]);
    if (st == TDM_SUCCESS)
      st = rs;
  }

  /* ---- loss: mean over n samples and outputs ---- */
  if (st == TDM_SUCCESS) {
    const int out = m->width[L];
    const double count = (double)n * out;
    double sum = 0;
    for (size_t i = 0; i < (size_t)n * out; i++) {
      double d = (double)act[L][i] - y[i];
      sum += d * d;
      delta[i] = (float)(2.0 * d / count * grad_scale);
    }
    *loss = sum / count;
  }

  /* ---- backward: delta is d(scaled loss)/dz of layer l ---- */
  for (int l = L - 1; l >= 0 && st == TDM_SUCCESS; l--) {
    const int in = m->width[l], out = m->width[l + 1];
    const float *a = l == 0 ? x : act[l];
    st = tdm_fetch_module(e, m->module[l]);
    if (st != TDM_SUCCESS)
      break;
    const float *w = NULL, *b = NULL;
    void *wgrad = NULL, *bgrad = NULL;
    tdm_dtype wgdt = TDM_F32, bgdt = TDM_F32;
    st = layer_buffers(e, m, l, wscratch, bscratch, &w, &b, &wgrad, &bgrad,
                       &wgdt, &bgdt);
    if (st == TDM_SUCCESS) {
      /* dW[o][k] = sum_i delta[i][o] a[i][k], db[o] = sum_i delta[i][o] */
      for (int o = 0; o < out; o++) {
        float sb = 0;
        for (int i = 0; i < n; i++)
          sb += delta[(size_t)i * out + o];
        gb[o] = sb;
        for (int k = 0; k < in; k++) {
          float s = 0;
          for (int i = 0; i < n; i++)
            s += delta[(size_t)i * out + o] * a[(size_t)i * in + k];
          gw[(size_t)o * in + k] = s;
        }
      }
      /* the input's delta: (W^T delta) * tanh'(z), tanh' = 1 - a^2 */
      if (l > 0)
        for (int i = 0; i < n; i++)
          for (int k = 0; k < in; k++) {
            float s = 0;
            for (int o = 0; o < out; o++)
              s += w[(size_t)o * in + k] * delta[(size_t)i * out + o];
            float ak = a[(size_t)i * in + k];
            prev[(size_t)i * in + k] = s * (1.0f - ak * ak);
          }
      st = add_grad(wgdt, wgrad, gw, (size_t)out * in, gscratch);
      if (st == TDM_SUCCESS)
        st = add_grad(bgdt, bgrad, gb, (size_t)out, gscratch);
      if (st == TDM_SUCCESS)
        st = tdm_module_grads_ready(e, m->module[l]);
    }
    tdm_status rs = tdm_release_module(e, m->module[l]);
    if (st == TDM_SUCCESS)
      st = rs;
    float *t = delta;
    delta = prev;
    prev = t;
  }

  for (int l = 1; act && l <= L; l++)
    free(act[l]);
  free(act);
  free(wscratch);
  free(bscratch);
  free(gscratch);
  free(gw);
  free(gb);
  free(delta);
  free(prev);
  return st;
}
