/* optimizer.c - tdm_optimizer: hyperparameters, state per engine span,
 * the fp16 loss scaler, and tdm_step, which updates only at the end of an
 * accumulation cycle. */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "optim.h"
#include "../track/track.h"

tdm_status tdm_optimizer_options_init(tdm_optimizer_options *options) {
  TDMI_CHECK_PTR(options, "tdm_optimizer_options_init");
  tdm_optimizer_options init = TDM_OPTIMIZER_OPTIONS_INIT;
  *options = init;
  return TDM_SUCCESS;
}

static tdm_status bad(const char *what, double v, const char *expect) {
  return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                    "tdm_optimizer_create: options->%s = %g is invalid; "
                    "expected %s", what, v, expect);
}

/* Negative means the kind's default. */
static void fill_defaults(tdm_optimizer_options *o) {
  int lion = o->kind == TDM_OPTIMIZER_LION;
  if (o->beta1 < 0)
    o->beta1 = 0.9;
  if (o->beta2 < 0)
    o->beta2 = lion ? 0.99 : 0.999;
  if (o->eps < 0)
    o->eps = 1e-8;
  if (o->weight_decay < 0) /* torch's: AdamW 0.01, the others 0 */
    o->weight_decay = o->kind == TDM_OPTIMIZER_ADAMW ? 0.01 : 0.0;
  if (o->init_scale < 0)
    o->init_scale = 65536.0;
  if (o->growth_factor < 0)
    o->growth_factor = 2.0;
  if (o->backoff_factor < 0)
    o->backoff_factor = 0.5;
  if (o->growth_interval < 0)
    o->growth_interval = 2000;
}

static tdm_status check_values(const tdm_optimizer_options *o) {
  if ((int)o->kind < TDM_OPTIMIZER_SGD || (int)o->kind > TDM_OPTIMIZER_LION)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "tdm_optimizer_create: kind %d is not a "
                      "tdm_optimizer_kind (TDM_OPTIMIZER_CUSTOM comes with "
                      "tdm_optimizer_create_custom)", (int)o->kind);
  if (!(o->lr >= 0))
    return bad("lr", o->lr, ">= 0");
  if (!(o->momentum >= 0))
    return bad("momentum", o->momentum, ">= 0");
  if (!(o->weight_decay >= 0))
    return bad("weight_decay", o->weight_decay, ">= 0");
  if (!(o->dampening >= 0 && o->dampening <= 1))
    return bad("dampening", o->dampening, "in [0, 1]");
  if (o->nesterov && (o->momentum <= 0 || o->dampening != 0))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "tdm_optimizer_create: nesterov needs momentum > 0 and "
                      "dampening 0");
  if (!(o->beta1 < 1))
    return bad("beta1", o->beta1, "in [0, 1)");
  if (!(o->beta2 < 1))
    return bad("beta2", o->beta2, "in [0, 1)");
  if (!(o->eps >= 0 && isfinite(o->eps)))
    return bad("eps", o->eps, ">= 0");
  if (!(o->init_scale > 0 && isfinite(o->init_scale)))
    return bad("init_scale", o->init_scale, "> 0");
  if (!(o->growth_factor > 1))
    return bad("growth_factor", o->growth_factor, "> 1");
  if (!(o->backoff_factor > 0 && o->backoff_factor < 1))
    return bad("backoff_factor", o->backoff_factor, "in (0, 1)");
  if (o->growth_interval == 0)
    return bad("growth_interval", 0, ">= 1");
  return TDM_SUCCESS;
}

/* Reads the caller's struct up to its own size; missing fields keep their
 * TDM_OPTIMIZER_OPTIONS_INIT values. */
static tdm_status read_options(const tdm_optimizer_options *in,
                               tdm_optimizer_options *out) {
  tdm_optimizer_options o = TDM_OPTIMIZER_OPTIONS_INIT;
  if (in->size < offsetof(tdm_optimizer_options, kind) + sizeof(int) ||
      in->size > sizeof o)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "tdm_optimizer_create: options->size = %zu is not a "
                      "tdm_optimizer_options size (start from "
                      "TDM_OPTIMIZER_OPTIONS_INIT)", in->size);
  memcpy(&o, in, in->size);
  o.size = sizeof o;
  fill_defaults(&o);
  TDMI_TRY(check_values(&o));
  *out = o;
  return TDM_SUCCESS;
}

static tdm_status check_live(const tdm_optimizer *opt, const char *fn) {
  TDMI_CHECK_PTR(opt, fn);
  if (!tdmi_handle_live(opt, TDMI_HANDLE_OPTIMIZER))
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "%s: optimizer %p is not a live optimizer (destroyed, "
                      "or never returned by tdm_optimizer_create)", fn,
                      (const void *)opt);
  return TDM_SUCCESS;
}

tdm_status tdmi_optim_check(const tdm_optimizer *opt, const char *fn) {
  TDMI_TRY(check_live(opt, fn));
  return tdmi_engine_check(opt->engine, fn);
}

tdm_status tdmi_optim_check_boundary(tdm_optimizer *opt, const char *fn) {
  int now = 0;
  TDMI_TRY(tdmi_engine_step_begin(opt->engine, fn, 0, &now));
  if (!now)
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "%s: only between tdm_backward_end and tdm_step of the "
                      "micro-step that ends an accumulation cycle", fn);
  return TDM_SUCCESS;
}

/* The state lives in the engine's accounting while the engine does; an
 * optimizer may outlive its engine. */
static void free_state(tdm_optimizer *opt, void *state,
                       const tdmi_opt_span *s) {
  if (tdmi_handle_live(opt->engine, TDMI_HANDLE_ENGINE))
    tdmi_engine_free_in(opt->engine, s->state_kind, TDM_MEM_OPTIMIZER_STATE,
                        state, s->span.count, s->span.dtype);
  else
    tdmi_mem_free(s->state_kind, state);
}

static void optimizer_free(tdm_optimizer *opt) {
  tdmi_handle_unregister(opt, TDMI_HANDLE_OPTIMIZER);
  for (int i = 0; opt->spans && i < opt->nspans; i++) {
    free_state(opt, opt->spans[i].state0, &opt->spans[i]);
    free_state(opt, opt->spans[i].state1, &opt->spans[i]);
    free(opt->spans[i].segments);
  }
  free(opt->spans);
  free(opt->groups);
  free(opt->param_group);
  free(opt->scratch);
  free(opt);
}

/* Zeroed state for span s, on cache lines like the values it goes with
 * (a vector load never spans two lines), or NULL when the kind does not
 * use it. */
static tdm_status state_array(tdm_optimizer *opt, int used,
                              const tdmi_opt_span *os, void **out) {
  const tdmi_span *s = &os->span;
  *out = used ? tdmi_engine_alloc_in(opt->engine, os->state_kind,
                                     TDM_MEM_OPTIMIZER_STATE, s->count,
                                     s->dtype)
              : NULL;
  if (used && !*out)
    return tdmi_error(TDM_ERR_NO_MEMORY,
                      "tdm_optimizer_create: out of memory for %zu elements "
                      "of optimizer state", s->count);
  return TDM_SUCCESS;
}

static tdm_status allocate_state(tdm_optimizer *opt) {
  const tdm_optimizer_options *o = &opt->o;
  int kind = o->kind;
  int uses0 = kind != TDM_OPTIMIZER_SGD || o->momentum > 0; /* custom: both */
  int uses1 = kind == TDM_OPTIMIZER_ADAM || kind == TDM_OPTIMIZER_ADAMW ||
              kind == TDM_OPTIMIZER_CUSTOM;
  opt->nspans = tdmi_engine_span_count(opt->engine);
  opt->spans = calloc((size_t)opt->nspans, sizeof *opt->spans);
  opt->groups = malloc(sizeof *opt->groups);
  opt->param_group = calloc((size_t)opt->engine->nparams, sizeof(int));
  if (!opt->spans || !opt->groups || !opt->param_group)
    return tdmi_error(TDM_ERR_NO_MEMORY, "tdm_optimizer_create: out of memory");
  opt->groups[0] = (tdmi_group){o->lr, o->weight_decay};
  opt->ngroups = 1;
  for (int i = 0; i < opt->nspans; i++) {
    tdmi_opt_span *s = &opt->spans[i];
    s->span = tdmi_engine_span(opt->engine, i);
    s->state_kind = tdmi_engine_kind(opt->engine, TDM_MEM_OPTIMIZER_STATE);
    TDMI_TRY(state_array(opt, uses0, s, &s->state0));
    TDMI_TRY(state_array(opt, uses1, s, &s->state1));
  }
  return TDM_SUCCESS;
}

/* A custom update runs on the CPU, on f32 values. */
static tdm_status check_custom(const tdm_optimizer *opt, const char *fn) {
  for (int i = 0; i < opt->nspans; i++) {
    const tdmi_span *s = &opt->spans[i].span;
    if (s->dtype != TDM_F32)
      return tdmi_error(TDM_ERR_NOT_SUPPORTED, "%s: a custom update takes "
                        "f32 parameters; this engine has %s ones", fn,
                        tdmi_dtype_name(s->dtype));
    if (opt->engine->ops.on_device && !s->host)
      return tdmi_error(TDM_ERR_NOT_SUPPORTED, "%s: a custom update runs on "
                        "the CPU; on a GPU set offload = optimizer "
                        "(TANDEM_OFFLOAD=optimizer)", fn);
  }
  return TDM_SUCCESS;
}

static tdm_status create(tdm_engine *engine, const tdm_optimizer_options *o,
                         tdm_update_fn custom, const char *fn,
                         tdm_optimizer **optimizer) {
  tdm_optimizer *opt = calloc(1, sizeof *opt);
  if (!opt)
    return tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", fn);
  opt->engine = engine;
  opt->o = *o;
  opt->custom = custom;
  if (custom)
    opt->o.kind = TDM_OPTIMIZER_CUSTOM;
  tdm_schedule_options constant = TDM_SCHEDULE_OPTIONS_INIT;
  opt->schedule = constant;
  opt->scaling = engine->precision == TDM_PRECISION_FP16;
  opt->scale = opt->scaling ? o->init_scale : 1.0;
  tdmi_engine_set_loss_scale(engine, opt->scale);
  tdmi_optim_clip_reset(opt);
  tdm_status st = allocate_state(opt);
  if (st == TDM_SUCCESS && custom)
    st = check_custom(opt, fn);
  if (st == TDM_SUCCESS)
    st = tdmi_handle_register(opt, TDMI_HANDLE_OPTIMIZER);
  if (st != TDM_SUCCESS) {
    optimizer_free(opt);
    return st;
  }
  *optimizer = opt;
  return TDM_SUCCESS;
}

tdm_status tdm_optimizer_create(tdm_engine *engine,
                                const tdm_optimizer_options *options,
                                tdm_optimizer **optimizer) {
  const char *fn = "tdm_optimizer_create";
  TDMI_TRY(tdmi_engine_check_prepared(engine, fn));
  TDMI_CHECK_PTR(options, fn);
  TDMI_CHECK_PTR(optimizer, fn);
  tdm_optimizer_options o;
  TDMI_TRY(read_options(options, &o));
  return create(engine, &o, NULL, fn, optimizer);
}

tdm_status tdm_optimizer_create_custom(tdm_engine *engine,
                                       tdm_update_fn update,
                                       tdm_optimizer **optimizer) {
  const char *fn = "tdm_optimizer_create_custom";
  TDMI_TRY(tdmi_engine_check_prepared(engine, fn));
  if (!update)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: update is NULL", fn);
  TDMI_CHECK_PTR(optimizer, fn);
  tdm_optimizer_options o = TDM_OPTIMIZER_OPTIONS_INIT;
  fill_defaults(&o); /* the loss scaler's */
  return create(engine, &o, update, fn, optimizer);
}

/* Only the optimizer itself must be live: it may outlive its engine. */
tdm_status tdm_optimizer_destroy(tdm_optimizer *optimizer) {
  TDMI_TRY(check_live(optimizer, "tdm_optimizer_destroy"));
  optimizer_free(optimizer);
  return TDM_SUCCESS;
}

/* The update of group g at step t = steps + 1, as torch computes it. */
static tdmi_update update_of(const tdm_optimizer *opt, int g) {
  const tdm_optimizer_options *o = &opt->o;
  double lr = tdmi_optim_lr(opt, g), wd = opt->groups[g].weight_decay;
  double t = (double)(opt->steps + 1);
  int decoupled = o->kind == TDM_OPTIMIZER_ADAMW || o->kind == TDM_OPTIMIZER_LION;
  const tdmi_clip *c = &opt->clip;
  return (tdmi_update){
      .kind = o->kind,
      .pre = tdmi_optim_grad_factor(opt, c), .lo = c->lo, .hi = c->hi, .post = c->post,
      .lr = lr, .weight_decay = wd,
      .momentum = o->momentum, .keep = 1.0 - o->dampening,
      .nesterov = o->nesterov, .first = opt->steps == 0,
      .beta1 = o->beta1, .c1 = 1.0 - o->beta1,
      .beta2 = o->beta2, .c2 = 1.0 - o->beta2, .eps = o->eps,
      .decay = decoupled ? 1.0 - lr * wd : 1.0,
      .step_size = lr / (1.0 - pow(o->beta1, t)),
      .bias2_sqrt = sqrt(1.0 - pow(o->beta2, t))};
}

static void *at(void *base, size_t i, tdm_dtype dtype) {
  return base ? (char *)base + i * tdmi_dtype_size(dtype) : NULL;
}

static tdm_status update_segment(const tdm_optimizer *opt,
                                 const tdmi_opt_span *s,
                                 const tdmi_segment *seg,
                                 const tdmi_update *u) {
  const tdmi_span *sp = &s->span;
  tdmi_update_arrays a = {
      .param = at(sp->data, seg->begin, sp->dtype), .dtype = sp->dtype,
      .grad = at(sp->grad, seg->begin, sp->grad_dtype),
      .grad_dtype = sp->grad_dtype,
      .copy = at(sp->copy, seg->begin, sp->copy_dtype),
      .copy_dtype = sp->copy_dtype,
      .state0 = at(s->state0, seg->begin, sp->dtype),
      .state1 = at(s->state1, seg->begin, sp->dtype),
      .n = seg->end - seg->begin, .zero_grad = 1};
  return tdmi_ops_update(&opt->engine->ops, u, &a, sp->host);
}

/* torch.amp.GradScaler.update: back off on inf/nan, grow after
 * growth_interval clean steps in a row. */
static void update_scale(tdm_optimizer *opt, int nonfinite) {
  if (nonfinite) {
    opt->scale *= opt->o.backoff_factor;
    opt->growth_tracker = 0;
  } else if (++opt->growth_tracker == opt->o.growth_interval) {
    double grown = opt->scale * opt->o.growth_factor;
    if (grown <= FLT_MAX) /* torch keeps a scale that would overflow f32 */
      opt->scale = grown;
    opt->growth_tracker = 0;
  }
  tdmi_engine_set_loss_scale(opt->engine, opt->scale);
}

/* TDM_OPTIMIZER_CUSTOM on elements [begin, end) of span s: the gradient
 * as f32 through the clip transform into scratch, the program's update in
 * stretches of at most INT_MAX, then the gradient zeroed and the compute
 * copy refreshed, as the fused kernels do. */
static tdm_status custom_segment(tdm_optimizer *opt, const tdmi_opt_span *s,
                                 size_t begin, size_t end) {
  const tdmi_span *sp = &s->span;
  tdmi_ops *ops = &opt->engine->ops;
  size_t n = end - begin;
  if (n > opt->scratch_count) {
    float *grown = realloc(opt->scratch, n * sizeof *grown);
    if (!grown)
      return tdmi_error(TDM_ERR_NO_MEMORY, "tdm_step: out of memory for %zu "
                        "gradients of the custom update", n);
    opt->scratch = grown;
    opt->scratch_count = n;
  }
  float *g = opt->scratch;
  TDMI_TRY(tdmi_ops_convert(ops, sp->grad_dtype, at(sp->grad, begin,
                            sp->grad_dtype), TDM_F32, g, n));
  TDMI_TRY(tdmi_ops_synchronize(ops));
  const tdmi_clip *c = &opt->clip;
  float pre = (float)tdmi_optim_grad_factor(opt, c), lo = (float)c->lo,
        hi = (float)c->hi, post = (float)c->post;
  for (size_t i = 0; i < n; i++) {
    float t = g[i] * pre;
    g[i] = (t < lo ? lo : t > hi ? hi : t) * post;
  }
  float *p = at(sp->data, begin, TDM_F32), *m = at(s->state0, begin, TDM_F32),
        *v = at(s->state1, begin, TDM_F32);
  int step = (int)(opt->steps + 1);
  for (size_t done = 0; done < n;) {
    int part = n - done > INT_MAX ? INT_MAX : (int)(n - done);
    opt->custom(p + done, g + done, m + done, v + done, part, step);
    done += (size_t)part;
  }
  TDMI_TRY(tdmi_ops_zero(ops, at(sp->grad, begin, sp->grad_dtype),
                         n * tdmi_dtype_size(sp->grad_dtype)));
  if (sp->copy)
    TDMI_TRY(tdmi_ops_convert(ops, TDM_F32, p, sp->copy_dtype,
                              at(sp->copy, begin, sp->copy_dtype), n));
  return TDM_SUCCESS;
}

static tdm_status update_all(tdm_optimizer *opt) {
  for (int i = 0; i < opt->nspans; i++) {
    const tdmi_opt_span *s = &opt->spans[i];
    for (int j = 0; j < s->nsegments; j++) {
      const tdmi_segment *seg = &s->segments[j];
      if (opt->custom) {
        TDMI_TRY(custom_segment(opt, s, seg->begin, seg->end));
        continue;
      }
      tdmi_update u = update_of(opt, seg->group);
      TDMI_TRY(update_segment(opt, s, seg, &u));
    }
  }
  return TDM_SUCCESS;
}

/* TANDEM_NONFINITE outside fp16: names the first parameter whose
 * gradient is inf or NaN; TDM_ERR_NONFINITE in error mode. */
static tdm_status nonfinite_guard(tdm_optimizer *opt, int guard) {
  static const char *const action[] = {"", "stepping anyway (warn)",
                                       "step skipped", "step not taken"};
  tdm_engine *e = opt->engine;
  int p;
  TDMI_TRY(tdmi_optim_first_nonfinite(opt, &p));
  char msg[600];
  snprintf(msg, sizeof msg, "tdm_step: the gradient of '%s' (parameter %d) "
           "holds inf or NaN at optimizer step %lld (TANDEM_NONFINITE=%s): "
           "%s", p < e->nparams ? e->params[p].name : "?", p,
           (long long)opt->steps + opt->skipped + 1,
           guard == TDM_NONFINITE_WARN   ? "warn"
           : guard == TDM_NONFINITE_SKIP ? "skip"
                                         : "error",
           action[guard]);
  tdmi_log(e->ctx, TDM_LOG_WARN, "%s", msg);
  return guard == TDM_NONFINITE_ERROR ? tdmi_error(TDM_ERR_NONFINITE, "%s", msg)
                                      : TDM_SUCCESS;
}

/* The engine's own metrics of the boundary just ended (tdm_log_scalar's
 * tandem/...).  A failed write is a warning: the step itself is done. */
static void log_boundary(tdm_optimizer *opt, double lr, double scale) {
  tdm_context *ctx = opt->engine->ctx;
  if (!ctx->metrics)
    return;
  static const char *const mem_names[TDM_MEM_NUM_CATEGORIES] = {
      "tandem/memory/params_bytes", "tandem/memory/grads_bytes",
      "tandem/memory/optimizer_state_bytes",
      "tandem/memory/master_weights_bytes", "tandem/memory/comm_buffers_bytes"};
  const char *names[8 + TDM_MEM_NUM_CATEGORIES];
  double values[8 + TDM_MEM_NUM_CATEGORIES];
  int n = 0;
#define ADD(name, value) (names[n] = (name), values[n++] = (value))
  double now = tdmi_seconds_now();
  uint64_t bytes = 0;
  tdm_get_comm_volume(opt->engine, &bytes);
  ADD("tandem/lr", lr);
  ADD("tandem/loss_scale", scale);
  ADD("tandem/skipped_steps", (double)opt->skipped);
  if (opt->clip.norm_known)
    ADD("tandem/grad_norm", opt->clip.norm);
  if (opt->last_boundary > 0)
    ADD("tandem/step_time_s", now - opt->last_boundary);
  ADD("tandem/comm_bytes", (double)(bytes - opt->comm_bytes));
  tdm_memory_info mem = {.size = sizeof mem};
  if (tdm_get_memory_info(opt->engine, &mem) == TDM_SUCCESS) {
    for (int c = 0; c < TDM_MEM_NUM_CATEGORIES; c++)
      ADD(mem_names[c], (double)(mem.current[c][TDM_MEM_HOST] +
                                 mem.current[c][TDM_MEM_DEVICE]));
    ADD("tandem/memory/peak_bytes", (double)mem.peak_total);
  }
#undef ADD
  opt->last_boundary = now;
  opt->comm_bytes = bytes;
  if (tdmi_metrics_write(ctx, opt->steps + opt->skipped - 1, n, names,
                         values) != TDM_SUCCESS)
    tdmi_log(ctx, TDM_LOG_WARN, "tdm_step: %s", tdm_last_error());
}

tdm_status tdm_step(tdm_optimizer *opt, int *stepped) {
  TDMI_TRY(tdmi_optim_check(opt, "tdm_step"));
  int now = 0;
  TDMI_TRY(tdmi_engine_step_begin(opt->engine, "tdm_step", 1, &now));
  if (stepped)
    *stepped = 0;
  if (!now)
    return TDM_SUCCESS;
  if (!opt->started) {
    TDMI_TRY(tdmi_optim_build_segments(opt));
    opt->started = 1;
  }
  int nonfinite = 0, guard = opt->engine->ctx->config.nonfinite;
  if (opt->scaling || guard != TDM_NONFINITE_OFF)
    TDMI_TRY(tdmi_optim_nonfinite(opt, &nonfinite));
  if (nonfinite && !opt->scaling) {
    tdm_status st = nonfinite_guard(opt, guard);
    if (st != TDM_SUCCESS) { /* error: the cycle is dropped */
      tdmi_optim_clip_reset(opt);
      tdmi_engine_step_end(opt->engine, 0);
      return st;
    }
    nonfinite = guard == TDM_NONFINITE_SKIP;
  }
  opt->last_skipped = nonfinite;
  /* what the step is taken with, for its metrics */
  double lr = opt->engine->ctx->metrics ? tdmi_optim_lr(opt, 0) : 0.0;
  double scale = opt->scaling ? opt->scale : 1.0;
  if (nonfinite) {
    opt->skipped++;
    if (opt->scaling)
      tdmi_log(opt->engine->ctx, TDM_LOG_INFO, "optimizer: inf/nan "
               "gradients at loss scale %g: step skipped", opt->scale);
  } else {
    tdm_status st = update_all(opt);
    /* A kernel fails on one device only; the gathers that follow the
     * update are collective, so every rank learns of it first. */
    if (opt->engine->stage > 0 || opt->engine->ops.on_device)
      st = tdmi_agree(opt->engine->comm, st, "tdm_step (update)");
    if (st != TDM_SUCCESS) { /* the cycle is dropped */
      tdmi_optim_clip_reset(opt);
      tdmi_engine_step_end(opt->engine, 0);
      return st;
    }
    opt->steps++;
  }
  if (opt->scaling)
    update_scale(opt, nonfinite);
  log_boundary(opt, lr, scale);
  tdmi_optim_clip_reset(opt);
  if (stepped)
    *stepped = !nonfinite;
  return tdmi_engine_step_end(opt->engine, !nonfinite);
}

tdm_status tdm_get_optimizer_info(const tdm_optimizer *opt,
                                  tdm_optimizer_info *info) {
  const char *fn = "tdm_get_optimizer_info";
  TDMI_TRY(tdmi_optim_check(opt, fn));
  TDMI_CHECK_PTR(info, fn);
  if (info->size < offsetof(tdm_optimizer_info, steps) + sizeof(int64_t) ||
      info->size > sizeof *info)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: info->size = %zu is not a tdm_optimizer_info size "
                      "(set it to sizeof(tdm_optimizer_info))", fn,
                      info->size);
  tdm_optimizer_info full = {sizeof full, opt->steps, opt->skipped,
                             opt->last_skipped, tdmi_optim_lr(opt, 0),
                             opt->scale};
  memcpy(info, &full, info->size);
  return TDM_SUCCESS;
}
