/* optim.h - internal interface of the optimizer layer: update rules,
 * parameter groups, schedules, clipping and the fp16 loss scaler, on spans
 * (values, gradients, state) handed over by the engine, which may be a
 * full replica or a shard.  The arithmetic is the device layer's kernels.
 * Not installed. */
#ifndef TDM_OPTIM_H
#define TDM_OPTIM_H

#include "../engine/engine.h"

typedef struct {
  double lr, weight_decay;
} tdmi_group;

/* Elements [begin, end) of a span whose parameters share a group; the
 * padding after a parameter goes with it. */
typedef struct {
  size_t begin, end;
  int group;
} tdmi_segment;

typedef struct {
  tdmi_span span;
  void *state0, *state1; /* span.dtype; NULL when the kind has none */
  tdmi_mem_kind state_kind;
  tdmi_segment *segments;
  int nsegments;
} tdmi_opt_span;

/* The clip requested at the boundary in progress; tdm_step applies
 * g = clamp(g * inv_scale * pre, lo, hi) * post. */
typedef struct {
  double pre, lo, hi, post;
  int nonfinite_known; /* a norm was computed: nonfinite is valid */
  int nonfinite;
  int norm_known;      /* tdm_clip_grad_norm ran: norm is the total  */
  double norm;
} tdmi_clip;

struct tdm_optimizer {
  tdm_engine *engine;
  tdm_optimizer_options o; /* every default resolved */
  tdmi_group *groups;
  int ngroups;
  int *param_group;        /* per engine parameter */
  tdmi_opt_span *spans;
  int nspans;
  int started;             /* the first boundary came: groups are frozen */
  int64_t steps, skipped;
  int last_skipped;
  tdm_schedule_options schedule;
  int scaling;             /* fp16: the dynamic loss scale is on */
  double scale;
  int growth_tracker;      /* clean steps since the scale last changed */
  tdmi_clip clip;
  tdm_update_fn custom;    /* TDM_OPTIMIZER_CUSTOM: the program's update */
  float *scratch;          /* custom: one stretch of f32 gradients */
  size_t scratch_count;
  double last_boundary;    /* when the previous boundary ended (metrics) */
  uint64_t comm_bytes;     /* tdm_get_comm_volume then                  */
};

tdm_status tdmi_optim_check(const tdm_optimizer *opt, const char *fn);
/* TDM_ERR_INVALID_USAGE unless the micro-step that just ended closes an
 * accumulation cycle (the optimizer steps now). */
tdm_status tdmi_optim_check_boundary(tdm_optimizer *opt, const char *fn);
/* Splits every span into segments by group (groups.c). */
tdm_status tdmi_optim_build_segments(tdm_optimizer *opt);
/* Group g's learning rate for the next step: base times the schedule. */
double tdmi_optim_lr(const tdm_optimizer *opt, int group);
/* No clip: the identity transform. */
void tdmi_optim_clip_reset(tdm_optimizer *opt);
/* Whether any gradient is inf or nan, over all ranks' parts (clip.c). */
tdm_status tdmi_optim_nonfinite(tdm_optimizer *opt, int *nonfinite);
/* Collective: the first parameter, in registration order, whose gradient
 * holds an inf or NaN on any rank (nparams when none). */
tdm_status tdmi_optim_first_nonfinite(tdm_optimizer *opt, int *param);
/* The factor every reduced gradient is read with before the clamp of
 * clip c: the clip's own scale over the fp16 loss scale and the engine's
 * divisor (the gradients are sums over ranks and micro-steps). */
static inline double tdmi_optim_grad_factor(const tdm_optimizer *opt,
                                            const tdmi_clip *c) {
  return c->pre / (opt->scale * tdmi_engine_grad_divisor(opt->engine));
}

#endif /* TDM_OPTIM_H */
