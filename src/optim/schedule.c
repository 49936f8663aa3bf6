/* schedule.c - learning-rate schedules with the formulas of Hugging Face
 * transformers' get_scheduler (optimization.py): the factor on each
 * group's base learning rate after a number of optimizer steps. */
#include <math.h>
#include <string.h>

#include "optim.h"

#define PI 3.14159265358979323846 /* Python's math.pi as a double */

tdm_status tdm_schedule_options_init(tdm_schedule_options *options) {
  TDMI_CHECK_PTR(options, "tdm_schedule_options_init");
  tdm_schedule_options init = TDM_SCHEDULE_OPTIONS_INIT;
  *options = init;
  return TDM_SUCCESS;
}

/* The caller's struct up to its size, defaults resolved and checked. */
static tdm_status read_schedule(const char *fn, const tdm_schedule_options *in,
                                tdm_schedule_options *out) {
  TDMI_CHECK_PTR(in, fn);
  tdm_schedule_options s = TDM_SCHEDULE_OPTIONS_INIT;
  if (in->size < offsetof(tdm_schedule_options, kind) + sizeof(int) ||
      in->size > sizeof s)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: schedule->size = %zu is not a tdm_schedule_options "
                      "size (start from TDM_SCHEDULE_OPTIONS_INIT)", fn,
                      in->size);
  memcpy(&s, in, in->size);
  s.size = sizeof s;
  if ((int)s.kind < TDM_SCHEDULE_CONSTANT ||
      (int)s.kind > TDM_SCHEDULE_INVERSE_SQRT)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: schedule->kind = %d is not a tdm_schedule_kind", fn,
                      (int)s.kind);
  if (s.num_cycles < 0)
    s.num_cycles = s.kind == TDM_SCHEDULE_COSINE_WITH_RESTARTS ? 1.0 : 0.5;
  if (s.lr_end < 0)
    s.lr_end = 1e-7;
  if (s.power < 0)
    s.power = 1.0;
  if (s.timescale < 0)
    s.timescale = s.warmup_steps > 0 ? s.warmup_steps : 10000;
  if (s.warmup_steps < 0 || s.training_steps < 0 || !(s.min_lr >= 0) ||
      s.timescale == 0)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: warmup_steps %lld, training_steps %lld, min_lr %g "
                      "and timescale %lld must be >= 0 (timescale > 0)", fn,
                      (long long)s.warmup_steps, (long long)s.training_steps,
                      s.min_lr, (long long)s.timescale);
  int decays = s.kind == TDM_SCHEDULE_LINEAR || s.kind == TDM_SCHEDULE_COSINE ||
               s.kind == TDM_SCHEDULE_COSINE_WITH_RESTARTS ||
               s.kind == TDM_SCHEDULE_POLYNOMIAL;
  if (decays && s.training_steps == 0)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: schedule kind %d decays over training_steps, "
                      "which is 0", fn, s.kind);
  if (!isfinite(s.num_cycles) || !isfinite(s.lr_end) || !isfinite(s.power) ||
      !isfinite(s.min_lr))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: num_cycles %g, lr_end %g, power %g and min_lr %g "
                      "must be finite", fn, s.num_cycles, s.lr_end, s.power,
                      s.min_lr);
  *out = s;
  return TDM_SUCCESS;
}

static double max1(int64_t n) { return n > 1 ? (double)n : 1.0; }

/* Progress through the decay phase, in [0, ...). */
static double progress(const tdm_schedule_options *s, int64_t step) {
  return (double)(step - s->warmup_steps) /
         max1(s->training_steps - s->warmup_steps);
}

static double cosine(const tdm_schedule_options *s, double base_lr,
                     int64_t step) {
  double f = 0.5 * (1.0 + cos(PI * s->num_cycles * 2.0 * progress(s, step)));
  if (s->min_lr > 0) {
    double rate = base_lr > 0 ? s->min_lr / base_lr : 0.0;
    f = f * (1.0 - rate) + rate;
  }
  return f > 0 ? f : 0.0;
}

static double restarts(const tdm_schedule_options *s, int64_t step) {
  double p = progress(s, step);
  if (p >= 1.0)
    return 0.0;
  double f = 0.5 * (1.0 + cos(PI * fmod(s->num_cycles * p, 1.0)));
  return f > 0 ? f : 0.0;
}

static double polynomial(const tdm_schedule_options *s, double base_lr,
                         int64_t step) {
  if (step > s->training_steps)
    return s->lr_end / base_lr;
  double range = base_lr - s->lr_end;
  double remaining = 1.0 - (double)(step - s->warmup_steps) /
                               (double)(s->training_steps - s->warmup_steps);
  return (range * pow(remaining, s->power) + s->lr_end) / base_lr;
}

static double factor_of(const tdm_schedule_options *s, double base_lr,
                        int64_t step) {
  if (s->kind == TDM_SCHEDULE_CONSTANT)
    return 1.0;
  if (step < s->warmup_steps)
    return (double)step / max1(s->warmup_steps);
  switch (s->kind) {
  case TDM_SCHEDULE_LINEAR: {
    double f = (double)(s->training_steps - step) /
               max1(s->training_steps - s->warmup_steps);
    return f > 0 ? f : 0.0;
  }
  case TDM_SCHEDULE_COSINE: return cosine(s, base_lr, step);
  case TDM_SCHEDULE_COSINE_WITH_RESTARTS: return restarts(s, step);
  case TDM_SCHEDULE_POLYNOMIAL: return polynomial(s, base_lr, step);
  case TDM_SCHEDULE_INVERSE_SQRT: {
    double shift = (double)(s->timescale - s->warmup_steps);
    return 1.0 / sqrt(((double)step + shift) / (double)s->timescale);
  }
  default: return 1.0; /* constant with warmup, after the warmup */
  }
}

/* Polynomial decay divides by base_lr and needs it above lr_end, as
 * transformers insists. */
static tdm_status check_base(const char *fn, const tdm_schedule_options *s,
                             double base_lr) {
  if (s->kind == TDM_SCHEDULE_POLYNOMIAL &&
      (!(base_lr > s->lr_end) || s->training_steps <= s->warmup_steps))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: polynomial decay needs lr (%g) > lr_end (%g) and "
                      "training_steps > warmup_steps", fn, base_lr, s->lr_end);
  return TDM_SUCCESS;
}

tdm_status tdm_schedule_factor(const tdm_schedule_options *schedule,
                               double base_lr, int64_t step, double *factor) {
  const char *fn = "tdm_schedule_factor";
  tdm_schedule_options s = TDM_SCHEDULE_OPTIONS_INIT;
  TDMI_TRY(read_schedule(fn, schedule, &s));
  TDMI_CHECK_PTR(factor, fn);
  if (step < 0)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: step %lld < 0", fn,
                      (long long)step);
  TDMI_TRY(check_base(fn, &s, base_lr));
  *factor = factor_of(&s, base_lr, step);
  return TDM_SUCCESS;
}

tdm_status tdm_optimizer_set_schedule(tdm_optimizer *opt,
                                      const tdm_schedule_options *schedule) {
  const char *fn = "tdm_optimizer_set_schedule";
  TDMI_TRY(tdmi_optim_check(opt, fn));
  if (opt->started)
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "%s: the optimizer has already stepped; set the "
                      "schedule before the first tdm_step", fn);
  tdm_schedule_options s = TDM_SCHEDULE_OPTIONS_INIT;
  TDMI_TRY(read_schedule(fn, schedule, &s));
  TDMI_TRY(check_base(fn, &s, opt->o.lr));
  opt->schedule = s;
  return TDM_SUCCESS;
}

/* HF's polynomial and min_lr forms take the optimizer's default lr (group
 * 0's) as lr_init for every group. */
double tdmi_optim_lr(const tdm_optimizer *opt, int group) {
  return opt->groups[group].lr *
         factor_of(&opt->schedule, opt->o.lr, opt->steps);
}
