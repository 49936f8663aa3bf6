/* before.c - a small trainer in plain C, without tandem: a three-layer
 * perceptron learns a smooth function of 8 inputs from a synthetic data
 * set, with mean squared error and AdamW.  One process, one core.
 *   cc -O2 before.c -o before -lm && ./before [steps]
 * examples/port/after.c is this file made distributed with tandem. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tandem.h>

#define IN 8
#define HIDDEN 64
#define LAYERS 3
#define SAMPLES 4800
#define BATCH 48
#define LR 0.003f
#define BETA1 0.9f
#define BETA2 0.999f
#define EPS 1e-8f
#define WEIGHT_DECAY 0.01f

static const int fan_in[LAYERS] = {IN, HIDDEN, HIDDEN};
static const int fan_out[LAYERS] = {HIDDEN, HIDDEN, 1};

/* Layer l: weight[l] is fan_out x fan_in (row-major), bias[l] fan_out. */
static float *weight[LAYERS], *bias[LAYERS];
static float *dweight[LAYERS], *dbias[LAYERS];
static float *m_weight[LAYERS], *v_weight[LAYERS], *m_bias[LAYERS],
    *v_bias[LAYERS];
/* act[0] is the input batch, act[l + 1] the output of layer l; dact the
 * loss's derivatives with respect to them. */
static float *act[LAYERS + 1], *dact[LAYERS + 1];
static float data_x[SAMPLES * IN], data_y[SAMPLES];
static tdm_session tdm = TDM_SESSION_INIT; /* this rank, its engine */

static unsigned long long rng_state = 88172645463325252ull;

static float uniform(void) { /* xorshift64, in [0, 1) */
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (float)(rng_state >> 40) / 16777216.0f;
}

static void make_data(void) {
  for (int s = 0; s < SAMPLES; s++) {
    float *x = &data_x[s * IN];
    for (int i = 0; i < IN; i++)
      x[i] = 2 * uniform() - 1;
    data_y[s] = sinf(3 * x[0]) + x[1] * x[2] - 0.5f * x[3] + 0.25f * x[4] * x[5];
  }
}

static void init_model(void) {
  for (int l = 0; l < LAYERS; l++) {
    int nw = fan_in[l] * fan_out[l], nb = fan_out[l];
    float bound = 1 / sqrtf((float)fan_in[l]);
    weight[l] = malloc(nw * sizeof(float));
    bias[l] = malloc(nb * sizeof(float));
    for (int i = 0; i < nw; i++)
      weight[l][i] = bound * (2 * uniform() - 1);
    for (int i = 0; i < nb; i++)
      bias[l][i] = bound * (2 * uniform() - 1);
    tdm_bind_param(tdm.engine, l, "weight", TDM_F32, nw, &weight[l], &dweight[l]);
    tdm_bind_param(tdm.engine, l, "bias", TDM_F32, nb, &bias[l], &dbias[l]);
    dweight[l] = calloc(nw, sizeof(float));
    dbias[l] = calloc(nb, sizeof(float));
    m_weight[l] = calloc(nw, sizeof(float));
    v_weight[l] = calloc(nw, sizeof(float));
    m_bias[l] = calloc(nb, sizeof(float));
    v_bias[l] = calloc(nb, sizeof(float));
  }
  for (int l = 0; l <= LAYERS; l++) {
    int width = l == 0 ? IN : fan_out[l - 1];
    act[l] = malloc(BATCH * width * sizeof(float));
    dact[l] = malloc(BATCH * width * sizeof(float));
  }
}

/* act[l + 1] = tanh(weight act[l] + bias); the last layer is linear. */
static void layer_forward(int l, int rows) {
  int in = fan_in[l], out = fan_out[l];
  for (int r = 0; r < rows; r++)
    for (int o = 0; o < out; o++) {
      float s = bias[l][o];
      for (int i = 0; i < in; i++)
        s += weight[l][o * in + i] * act[l][r * in + i];
      act[l + 1][r * out + o] = l < LAYERS - 1 ? tanhf(s) : s;
    }
}

/* From dact[l + 1]: adds the layer's gradients, and sets dact[l]. */
static void layer_backward(int l, int rows) {
  int in = fan_in[l], out = fan_out[l];
  memset(dact[l], 0, rows * in * sizeof(float));
  for (int r = 0; r < rows; r++)
    for (int o = 0; o < out; o++) {
      float y = act[l + 1][r * out + o], d = dact[l + 1][r * out + o];
      if (l < LAYERS - 1)
        d *= 1 - y * y;
      dbias[l][o] += d;
      for (int i = 0; i < in; i++) {
        dweight[l][o * in + i] += d * act[l][r * in + i];
        dact[l][r * in + i] += d * weight[l][o * in + i];
      }
    }
}

/* Mean squared error of the batch; sets dact[LAYERS]. */
static float mse(const float *target, int rows) {
  float sum = 0;
  for (int r = 0; r < rows; r++) {
    float err = act[LAYERS][r] - target[r];
    sum += err * err;
    dact[LAYERS][r] = 2 * err / rows;
  }
  return sum / rows;
}

/* torch.optim.AdamW's update of one tensor at step t (from 1); clears
 * the gradient for the next step. */
static void adamw(float *p, float *g, float *m, float *v, int n, int t) {
  float c1 = 1 - powf(BETA1, (float)t), c2 = 1 - powf(BETA2, (float)t);
  for (int i = 0; i < n; i++) {
    m[i] = BETA1 * m[i] + (1 - BETA1) * g[i];
    v[i] = BETA2 * v[i] + (1 - BETA2) * g[i] * g[i];
    p[i] *= 1 - LR * WEIGHT_DECAY;
    p[i] -= LR * (m[i] / c1) / (sqrtf(v[i] / c2) + EPS);
    g[i] = 0;
  }
}

int main(int argc, char **argv) {
  tdm_start(&argc, &argv, &tdm);
  int steps = argc > 1 ? atoi(argv[1]) : 300;
  make_data();
  init_model();
  tdm_prepare(tdm.engine);
  tdm_optimizer_create_custom(tdm.engine, adamw, &tdm.optimizer);
  float loss = 0;
  for (int step = 0; step < steps; step++) {
    int first = (step * tdm.world_size + tdm.rank) * BATCH % SAMPLES;
    memcpy(act[0], &data_x[first * IN], BATCH * IN * sizeof(float));
    for (int l = 0; l < LAYERS; l++)
      layer_forward(l, BATCH);
    loss = mse(&data_y[first], BATCH);
    for (int l = LAYERS - 1; l >= 0; l--)
      layer_backward(l, BATCH);
    tdm_step(tdm.optimizer, NULL); /* averages over ranks, syncs, updates */
    if (tdm.rank == 0 && (step % 25 == 0 || step == steps - 1))
      printf("step %4d  loss %.9g\n", step, loss);
  }
  tdm_stop(&tdm);
  return loss < 0.05f ? 0 : 1;
}
