/* model.h - the regression MLP of examples/mlp: Linear(10, 64), ReLU,
 * Linear(64, 1), MSE loss.  The user's own math: forward and backward by
 * hand, in f32 (16-bit buffers are converted with tdm_convert), gradients
 * added into tandem's buffers, each module marked ready as soon as
 * backward has finished it. */
#ifndef MLP_MODEL_H
#define MLP_MODEL_H

#include "tandem.h"

#define MLP_IN 10
#define MLP_HIDDEN 64

enum { MLP_FC1, MLP_FC2, MLP_MODULES };
enum { MLP_W1, MLP_B1, MLP_W2, MLP_B2, MLP_PARAMS };

typedef struct {
  int module[MLP_MODULES];
  int param[MLP_PARAMS];
} mlp_model;

/* Registers fc1 and fc2 with PyTorch's default Linear init,
 * U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from this rank's own stream:
 * tdm_prepare makes rank 0's values everyone's. */
tdm_status mlp_register(tdm_context *ctx, tdm_engine *e, uint64_t seed,
                        mlp_model *m);

/* n samples: x[n][MLP_IN] ~ N(0, 1) and a smooth nonlinear target y[n]
 * with a little noise; the same on every rank (shared stream). */
tdm_status mlp_make_data(tdm_context *ctx, uint64_t seed, int n, float *x,
                         float *y);

/* Forward and backward over n samples.  Returns the mean squared error;
 * adds grad_scale * d(loss)/d(param) into the gradients, marking fc2 then
 * fc1 ready.  Each layer is fetched before use and released after, and
 * its buffers are asked for each time, so the same code runs under every
 * ZeRO stage. */
tdm_status mlp_forward_backward(tdm_engine *e, mlp_model *m, const float *x,
                                const float *y, int n, double grad_scale,
                                double *loss);

#endif
