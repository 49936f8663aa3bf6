/* kernels_rules.h - the update rules on one block of REAL values (float
 * or double), in torch.optim's operation order.  Included by
 * kernels_impl.h (f32, once per instruction set) and kernels_f64.c, with
 *   REAL, SQRT  float and sqrtf, or double and sqrt
 *   RULE(name)  the name of each function for that type
 *   K           the function qualifiers
 * Constants arrive as doubles and are rounded to REAL once, as torch
 * rounds the Python floats it passes to its kernels. */

/* The gradient transform: clamp(g * pre, lo, hi) * post, in place or
 * not; the comparisons keep NaN. */
K void RULE(transform)(const tdmi_update *u, const REAL *g, REAL *out,
                       size_t n) {
  const REAL pre = (REAL)u->pre, lo = (REAL)u->lo, hi = (REAL)u->hi;
  const REAL post = (REAL)u->post;
#pragma omp simd
  for (size_t i = 0; i < n; i++) {
    REAL t = g[i] * pre;
    t = t < lo ? lo : t;
    t = t > hi ? hi : t;
    out[i] = t * post;
  }
}

/* SGD: d = g + wd p (torch skips wd 0); b = first ? d : b mu +
 * (1 - dampening) d; d = nesterov ? d + mu b : b; p += -lr d.  The loops
 * hold no branch, only selects, so that they vectorize. */
K void RULE(sgd)(const tdmi_update *u, REAL *restrict p,
                 const REAL *restrict g, REAL *restrict buf, size_t n) {
  const REAL lr = (REAL)u->lr, wd = (REAL)u->weight_decay;
  const REAL mu = (REAL)u->momentum, keep = (REAL)u->keep;
  const int decays = wd != 0, first = u->first, nesterov = u->nesterov;
  if (!buf) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
      REAL d = decays ? g[i] + wd * p[i] : g[i];
      p[i] = p[i] + -lr * d;
    }
    return;
  }
#pragma omp simd
  for (size_t i = 0; i < n; i++) {
    REAL d = decays ? g[i] + wd * p[i] : g[i];
    REAL b = first ? d : buf[i] * mu + keep * d;
    buf[i] = b;
    d = nesterov ? d + mu * b : b;
    p[i] = p[i] + -lr * d;
  }
}

/* Adam and AdamW: p *= decay (AdamW); d = g + l2 p (Adam);
 * m = lerp(m, d, 1 - beta1) in lerp's two forms; v = v beta2 + (1 - beta2)
 * d d; p += -step_size m / (sqrt(v) / bias2_sqrt + eps). */
K void RULE(adam)(const tdmi_update *u, REAL *restrict p,
                  const REAL *restrict g, REAL *restrict m, REAL *restrict v,
                  size_t n) {
  const REAL w = (REAL)u->c1, b2 = (REAL)u->beta2, c2 = (REAL)u->c2;
  const REAL decay = (REAL)u->decay, eps = (REAL)u->eps;
  const REAL l2 = u->kind == TDM_OPTIMIZER_ADAM ? (REAL)u->weight_decay : 0;
  const REAL step = (REAL)-u->step_size, bias2 = (REAL)u->bias2_sqrt;
  /* lerp(m, d, w) = m + w (d - m) for w < 0.5, else d - (d - m)(1 - w):
   * as m + a (d - m) + b with a, b chosen once, both forms are one
   * expression and the loop has no branch. */
  const int small = w < (REAL)0.5, decays = l2 != 0;
  const REAL a = small ? w : -((REAL)1 - w);
#pragma omp simd
  for (size_t i = 0; i < n; i++) {
    REAL pi = p[i] * decay;
    REAL d = decays ? g[i] + l2 * pi : g[i];
    REAL delta = d - m[i];
    REAL mi = small ? m[i] + a * delta : d + a * delta;
    REAL vi = v[i] * b2 + c2 * (d * d);
    m[i] = mi;
    v[i] = vi;
    p[i] = pi + step * (mi / (SQRT(vi) / bias2 + eps));
  }
}

/* Lion: p *= decay; p += -lr sign(m beta1 + (1 - beta1) g);
 * m = m beta2 + (1 - beta2) g. */
K void RULE(lion)(const tdmi_update *u, REAL *restrict p,
                  const REAL *restrict g, REAL *restrict m, size_t n) {
  const REAL b1 = (REAL)u->beta1, c1 = (REAL)u->c1;
  const REAL b2 = (REAL)u->beta2, c2 = (REAL)u->c2;
  const REAL decay = (REAL)u->decay, neg_lr = (REAL)-u->lr;
#pragma omp simd
  for (size_t i = 0; i < n; i++) {
    REAL c = m[i] * b1 + c1 * g[i];
    REAL s = c > 0 ? (REAL)1 : c; /* sign: keeps 0 and NaN */
    s = c < 0 ? (REAL)-1 : s;
    p[i] = p[i] * decay + neg_lr * s;
    m[i] = m[i] * b2 + c2 * g[i];
  }
}

/* One rule on one block; g is already transformed. */
K void RULE(apply)(const tdmi_update *u, REAL *p, const REAL *g, REAL *s0,
                   REAL *s1, size_t n) {
  switch (u->kind) {
  case TDM_OPTIMIZER_SGD: RULE(sgd)(u, p, g, s0, n); break;
  case TDM_OPTIMIZER_ADAM:
  case TDM_OPTIMIZER_ADAMW: RULE(adam)(u, p, g, s0, s1, n); break;
  case TDM_OPTIMIZER_LION: RULE(lion)(u, p, g, s0, n); break;
  }
}
