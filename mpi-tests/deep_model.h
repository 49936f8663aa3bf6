/* deep_model.h - a deeper model for the ZeRO tests and bench/zero: a chain
 * of fully connected layers (weight [out][in], bias [out]) with tanh
 * between them and a mean squared error on the last, each layer its own
 * module, widths chosen by the caller (odd sizes: not divisible by the
 * world size).  Forward and backward by hand, in f32, following the
 * protocol every ZeRO stage accepts: fetch each module before use,
 * release it after, gradients added into tandem's buffers and each module
 * marked ready as soon as backward has finished it. */
#ifndef DEEP_MODEL_H
#define DEEP_MODEL_H

#include "tandem.h"

typedef struct {
  int nlayers;
  int *width;   /* nlayers + 1: width[0] inputs ... width[nlayers] outputs */
  int *module;  /* per layer */
  int *weight;  /* parameter indices, per layer */
  int *bias;
} deep_model;

/* Registers layer i as module "layer<i>" with "layer<i>.weight" and
 * "layer<i>.bias", initialized like torch.nn.Linear from this rank's own
 * stream (tdm_prepare makes rank 0's values everyone's). */
tdm_status deep_register(tdm_context *ctx, tdm_engine *e, int nlayers,
                         const int *width, uint64_t seed, deep_model *m);
void deep_free(deep_model *m);
/* Parameters in the model. */
size_t deep_numel(const deep_model *m);

/* n samples x[n][width[0]] with targets y[n][width[nlayers]]: returns the
 * mean squared error (over samples and outputs) and adds grad_scale times
 * its gradient into tandem's buffers.  Works for every ZeRO stage and for
 * 16-bit compute copies and reduce dtypes (converted with tdm_convert). */
tdm_status deep_forward_backward(tdm_engine *e, const deep_model *m,
                                 const float *x, const float *y, int n,
                                 double grad_scale, double *loss);

#endif
