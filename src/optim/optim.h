/* optim.h - internal interface of the optimizer layer: update rules on
 * spans (values, gradients, state) handed over by the engine, which may be
 * a full replica or a shard.  Not installed. */
#ifndef TDM_OPTIM_H
#define TDM_OPTIM_H

#include "../engine/engine.h"

typedef struct {
  double lr, momentum, dampening, weight_decay;
  int nesterov;
} tdmi_sgd;

/* One SGD step over n elements; momentum is NULL without momentum.
 * first: the momentum buffer is initialized from the gradient (PyTorch). */
void tdmi_sgd_f32(const tdmi_sgd *h, float *param, const float *grad,
                  float *momentum, size_t n, int first);
void tdmi_sgd_f64(const tdmi_sgd *h, double *param, const double *grad,
                  double *momentum, size_t n, int first);

#endif /* TDM_OPTIM_H */
