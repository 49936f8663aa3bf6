/* sgd.c - torch.optim.SGD's update, one fused pass:
 *   g = grad + weight_decay * p
 *   b = first ? g : momentum * b + (1 - dampening) * g
 *   g = nesterov ? g + momentum * b : b
 *   p = p - lr * g                                                      */
#include "optim.h"

#define SGD_KERNEL(name, T)                                                \
  void name(const tdmi_sgd *h, T *param, const T *grad, T *momentum,       \
            size_t n, int first) {                                         \
    const T lr = (T)h->lr, wd = (T)h->weight_decay, mu = (T)h->momentum;   \
    const T keep = (T)(1.0 - h->dampening);                                \
    for (size_t i = 0; i < n; i++) {                                       \
      T g = grad[i] + wd * param[i];                                       \
      if (momentum) {                                                      \
        T b = first ? g : mu * momentum[i] + keep * g;                     \
        momentum[i] = b;                                                   \
        g = h->nesterov ? g + mu * b : b;                                  \
      }                                                                    \
      param[i] -= lr * g;                                                  \
    }                                                                      \
  }

SGD_KERNEL(tdmi_sgd_f32, float)
SGD_KERNEL(tdmi_sgd_f64, double)
