/* optimizer.c - tdm_optimizer: hyperparameters, state per engine span,
 * and tdm_step, which updates only at the end of an accumulation cycle. */
#include <stdlib.h>
#include <string.h>

#include "optim.h"

struct tdm_optimizer {
  tdm_engine *engine;
  tdmi_sgd sgd;
  int64_t steps;   /* updates done; the first initializes momentum */
  int nspans;
  void **momentum; /* per span; NULL entries without momentum */
};

tdm_status tdm_optimizer_options_init(tdm_optimizer_options *options) {
  TDMI_CHECK_PTR(options, "tdm_optimizer_options_init");
  tdm_optimizer_options init = TDM_OPTIMIZER_OPTIONS_INIT;
  *options = init;
  return TDM_SUCCESS;
}

static tdm_status bad(const char *what, double v) {
  return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                    "tdm_optimizer_create: %s = %g is invalid", what, v);
}

/* Reads the caller's struct up to its own size; missing fields keep their
 * TDM_OPTIMIZER_OPTIONS_INIT values. */
static tdm_status read_options(const tdm_optimizer_options *in, tdmi_sgd *out) {
  tdm_optimizer_options o = TDM_OPTIMIZER_OPTIONS_INIT;
  if (in->size < offsetof(tdm_optimizer_options, kind) + sizeof(int) ||
      in->size > sizeof o)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "tdm_optimizer_create: options->size = %zu is not a "
                      "tdm_optimizer_options size (start from "
                      "TDM_OPTIMIZER_OPTIONS_INIT)", in->size);
  memcpy(&o, in, in->size);
  if (o.kind != TDM_OPTIMIZER_SGD)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "tdm_optimizer_create: kind %d is not a "
                      "tdm_optimizer_kind", o.kind);
  if (!(o.lr >= 0))
    return bad("lr", o.lr);
  if (!(o.momentum >= 0))
    return bad("momentum", o.momentum);
  if (!(o.weight_decay >= 0))
    return bad("weight_decay", o.weight_decay);
  if (!(o.dampening >= 0 && o.dampening <= 1))
    return bad("dampening", o.dampening);
  if (o.nesterov && (o.momentum <= 0 || o.dampening != 0))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "tdm_optimizer_create: nesterov needs momentum > 0 and "
                      "dampening 0");
  *out = (tdmi_sgd){o.lr, o.momentum, o.dampening, o.weight_decay,
                    o.nesterov != 0};
  return TDM_SUCCESS;
}

static tdm_status check_optimizer(const tdm_optimizer *opt, const char *fn) {
  TDMI_CHECK_PTR(opt, fn);
  if (!tdmi_handle_live(opt, TDMI_HANDLE_OPTIMIZER))
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "%s: optimizer %p is not a live optimizer (destroyed, "
                      "or never returned by tdm_optimizer_create)", fn,
                      (const void *)opt);
  return TDM_SUCCESS;
}

static void optimizer_free(tdm_optimizer *opt) {
  tdmi_handle_unregister(opt, TDMI_HANDLE_OPTIMIZER);
  for (int i = 0; opt->momentum && i < opt->nspans; i++)
    free(opt->momentum[i]);
  free(opt->momentum);
  free(opt);
}

static tdm_status allocate_state(tdm_optimizer *opt) {
  opt->nspans = tdmi_engine_span_count(opt->engine);
  opt->momentum = calloc((size_t)opt->nspans, sizeof *opt->momentum);
  if (!opt->momentum)
    return tdmi_error(TDM_ERR_NO_MEMORY, "tdm_optimizer_create: out of memory");
  for (int i = 0; i < opt->nspans && opt->sgd.momentum > 0; i++) {
    tdmi_span s = tdmi_engine_span(opt->engine, i);
    opt->momentum[i] = calloc(s.count, tdmi_dtype_size(s.dtype));
    if (!opt->momentum[i])
      return tdmi_error(TDM_ERR_NO_MEMORY,
                        "tdm_optimizer_create: out of memory for momentum");
  }
  return TDM_SUCCESS;
}

tdm_status tdm_optimizer_create(tdm_engine *engine,
                                const tdm_optimizer_options *options,
                                tdm_optimizer **optimizer) {
  const char *fn = "tdm_optimizer_create";
  TDMI_TRY(tdmi_engine_check_prepared(engine, fn));
  TDMI_CHECK_PTR(options, fn);
  TDMI_CHECK_PTR(optimizer, fn);
  tdmi_sgd sgd;
  TDMI_TRY(read_options(options, &sgd));
  tdm_optimizer *opt = calloc(1, sizeof *opt);
  if (!opt)
    return tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", fn);
  opt->engine = engine;
  opt->sgd = sgd;
  tdm_status st = allocate_state(opt);
  if (st == TDM_SUCCESS)
    st = tdmi_handle_register(opt, TDMI_HANDLE_OPTIMIZER);
  if (st != TDM_SUCCESS) {
    optimizer_free(opt);
    return st;
  }
  *optimizer = opt;
  return TDM_SUCCESS;
}

tdm_status tdm_optimizer_destroy(tdm_optimizer *optimizer) {
  TDMI_TRY(check_optimizer(optimizer, "tdm_optimizer_destroy"));
  optimizer_free(optimizer);
  return TDM_SUCCESS;
}

tdm_status tdm_step(tdm_optimizer *opt, int *stepped) {
  TDMI_TRY(check_optimizer(opt, "tdm_step"));
  int now = 0;
  TDMI_TRY(tdmi_engine_step_begin(opt->engine, "tdm_step", &now));
  if (stepped)
    *stepped = now;
  if (!now)
    return TDM_SUCCESS;
  int first = opt->steps++ == 0;
  for (int i = 0; i < opt->nspans; i++) {
    tdmi_span s = tdmi_engine_span(opt->engine, i);
    if (s.dtype == TDM_F32)
      tdmi_sgd_f32(&opt->sgd, s.data, s.grad, opt->momentum[i], s.count, first);
    else
      tdmi_sgd_f64(&opt->sgd, s.data, s.grad, opt->momentum[i], s.count, first);
  }
  tdmi_engine_step_end(opt->engine);
  return TDM_SUCCESS;
}
