/* clip.c - gradient clipping by global L2 norm and by value, and the
 * inf/nan check of the fp16 loss scaler.  Norms come from partial sums
 * over this rank's spans, added across the ranks holding other parts, so
 * they work on shards.  The clip itself is applied by tdm_step's fused
 * update: gradients go through clamp(g / scale * pre, lo, hi) * post. */
#include <math.h>

#include "optim.h"

void tdmi_optim_clip_reset(tdm_optimizer *opt) {
  opt->clip = (tdmi_clip){1.0, -INFINITY, INFINITY, 1.0, 0, 0, 0, 0.0};
}

/* Whether no value clip is pending: clamping would hide inf. */
static int unclamped(const tdmi_clip *c) {
  return isinf(c->lo) && isinf(c->hi);
}

/* Sum of squares of the gradients as tdm_step would read them now. */
static tdm_status grad_sumsq(tdm_optimizer *opt, const tdmi_clip *c,
                             double *sum) {
  double local = 0.0;
  for (int i = 0; i < opt->nspans; i++) {
    const tdmi_span *s = &opt->spans[i].span;
    double part = 0.0;
    TDMI_TRY(tdmi_ops_sumsq(&opt->engine->ops, s->grad, s->grad_dtype,
                            s->count, tdmi_optim_grad_factor(opt, c), c->lo, c->hi,
                            s->host, &part));
    local += part;
  }
  TDMI_TRY(tdmi_engine_sum_partials(opt->engine, &local, 1));
  *sum = local * c->post * c->post;
  return TDM_SUCCESS;
}

tdm_status tdm_clip_grad_norm(tdm_optimizer *opt, double max_norm,
                              double *total_norm) {
  const char *fn = "tdm_clip_grad_norm";
  TDMI_TRY(tdmi_optim_check(opt, fn));
  if (!(max_norm > 0))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: max_norm = %g must be > 0", fn, max_norm);
  TDMI_TRY(tdmi_optim_check_boundary(opt, fn));
  double sum;
  tdmi_clip *c = &opt->clip;
  TDMI_TRY(grad_sumsq(opt, c, &sum));
  double norm = sqrt(sum);
  /* torch computes the coefficient on f32 tensors, clamped at 1 (NaN
   * stays NaN). */
  float coef = (float)max_norm / ((float)norm + 1e-6f);
  coef = coef > 1.0f ? 1.0f : coef;
  if (unclamped(c)) { /* scale before any clamp; the sum saw every inf */
    c->nonfinite_known = 1;
    c->nonfinite = !isfinite(sum);
    c->pre *= coef;
  } else {
    c->post *= coef;
  }
  c->norm_known = 1;
  c->norm = norm;
  if (total_norm)
    *total_norm = norm;
  return TDM_SUCCESS;
}

tdm_status tdm_clip_grad_value(tdm_optimizer *opt, double clip_value) {
  const char *fn = "tdm_clip_grad_value";
  TDMI_TRY(tdmi_optim_check(opt, fn));
  if (!(clip_value >= 0))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: clip_value = %g must be >= 0", fn, clip_value);
  TDMI_TRY(tdmi_optim_check_boundary(opt, fn));
  tdmi_clip *c = &opt->clip;
  if (!c->nonfinite_known && opt->scaling) /* check before clamping */
    TDMI_TRY(tdmi_optim_nonfinite(opt, &(int){0}));
  if (c->post != 1.0)
    return tdmi_error(TDM_ERR_NOT_SUPPORTED,
                      "%s: a value clip after a norm clip that followed a "
                      "value clip is not supported (clip by value once, "
                      "before or after clipping the norm)", fn);
  c->lo = fmax(c->lo, -clip_value);
  c->hi = fmin(c->hi, clip_value);
  return TDM_SUCCESS;
}

tdm_status tdmi_optim_nonfinite(tdm_optimizer *opt, int *nonfinite) {
  if (!opt->clip.nonfinite_known) { /* the raw gradients, unclamped */
    tdmi_clip raw = {1.0, -INFINITY, INFINITY, 1.0, 0, 0, 0, 0.0};
    double sum;
    TDMI_TRY(grad_sumsq(opt, &raw, &sum));
    opt->clip.nonfinite_known = 1;
    opt->clip.nonfinite = !isfinite(sum);
  }
  *nonfinite = opt->clip.nonfinite;
  return TDM_SUCCESS;
}

/* Whether elements [first, first + count) of a dtype's layout, where they
 * lie in span s, hold an inf or NaN. */
static tdm_status span_nonfinite(tdm_optimizer *opt, const tdmi_span *s,
                                 size_t first, size_t count, int *bad) {
  size_t lo = first > s->first ? first : s->first;
  size_t hi = first + count < s->first + s->count ? first + count
                                                   : s->first + s->count;
  *bad = 0;
  if (lo >= hi)
    return TDM_SUCCESS;
  double sum = 0.0;
  const char *g = (const char *)s->grad +
                  (lo - s->first) * tdmi_dtype_size(s->grad_dtype);
  TDMI_TRY(tdmi_ops_sumsq(&opt->engine->ops, g, s->grad_dtype, hi - lo, 1.0,
                          -INFINITY, INFINITY, s->host, &sum));
  *bad = !isfinite(sum);
  return TDM_SUCCESS;
}

tdm_status tdmi_optim_first_nonfinite(tdm_optimizer *opt, int *param) {
  tdm_engine *e = opt->engine;
  int first = e->nparams;
  for (int p = 0; p < e->nparams && first == e->nparams; p++) {
    tdm_dtype dtype;
    size_t begin, count;
    tdmi_engine_param_range(e, p, &dtype, &begin, &count);
    for (int i = 0; i < opt->nspans; i++) {
      const tdmi_span *s = &opt->spans[i].span;
      int bad = 0;
      if (s->dtype == dtype)
        TDMI_TRY(span_nonfinite(opt, s, begin, count, &bad));
      if (bad) {
        first = p;
        break;
      }
    }
  }
  *param = first;
  return tdmi_min_int(e->comm, param, "tdm_step (non-finite gradients)");
}
