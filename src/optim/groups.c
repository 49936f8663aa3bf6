/* groups.c - parameter groups (torch's param_groups): each has its own
 * learning rate and weight decay.  At the first step every span is cut
 * into segments of one group each, so the fused kernel runs once per
 * segment. */
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

#include "optim.h"

static tdm_status check_unstarted(const tdm_optimizer *opt, const char *fn) {
  TDMI_TRY(tdmi_optim_check(opt, fn));
  if (opt->started)
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "%s: parameter groups are fixed once the optimizer has "
                      "stepped; set them up before the first tdm_step", fn);
  return TDM_SUCCESS;
}

static tdm_status new_group(tdm_optimizer *opt, const char *fn, double lr,
                            double weight_decay, int *group) {
  if (!(lr >= 0) || !(weight_decay >= 0))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: lr = %g and weight_decay = %g must be >= 0", fn, lr,
                      weight_decay);
  tdmi_group *g = realloc(opt->groups, sizeof *g * (size_t)(opt->ngroups + 1));
  if (!g)
    return tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", fn);
  opt->groups = g;
  g[opt->ngroups] = (tdmi_group){lr, weight_decay};
  *group = opt->ngroups++;
  return TDM_SUCCESS;
}

tdm_status tdm_optimizer_add_group(tdm_optimizer *opt, double lr,
                                   double weight_decay, int *group) {
  const char *fn = "tdm_optimizer_add_group";
  TDMI_TRY(check_unstarted(opt, fn));
  TDMI_CHECK_PTR(group, fn);
  return new_group(opt, fn, lr, weight_decay, group);
}

tdm_status tdm_optimizer_set_group(tdm_optimizer *opt, int param, int group) {
  const char *fn = "tdm_optimizer_set_group";
  TDMI_TRY(check_unstarted(opt, fn));
  if (param < 0 || param >= opt->engine->nparams)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: param %d is not registered (%d params)", fn, param,
                      opt->engine->nparams);
  if (group < 0 || group >= opt->ngroups)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: group %d does not exist (%d groups)", fn, group,
                      opt->ngroups);
  opt->param_group[param] = group;
  return TDM_SUCCESS;
}

/* Whether name matches one of the comma-separated fnmatch patterns. */
static int matches(const char *patterns, const char *name) {
  char pattern[256];
  for (const char *p = patterns; *p;) {
    size_t len = strcspn(p, ",");
    if (len > 0 && len < sizeof pattern) {
      memcpy(pattern, p, len);
      pattern[len] = '\0';
      if (fnmatch(pattern, name, 0) == 0)
        return 1;
    }
    p += len + (p[len] == ',');
  }
  return 0;
}

tdm_status tdm_optimizer_add_no_decay_group(tdm_optimizer *opt,
                                            const char *patterns, int *group,
                                            int *count) {
  const char *fn = "tdm_optimizer_add_no_decay_group";
  TDMI_TRY(check_unstarted(opt, fn));
  TDMI_CHECK_PTR(group, fn);
  if (!patterns)
    patterns = TDM_NO_DECAY_PATTERNS;
  for (const char *p = patterns; *p; p++)
    if (strcspn(p, ",") >= 256)
      return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                        "%s: a pattern in '%.40s...' is 256 characters or "
                        "longer", fn, patterns);
  int g = 0;
  TDMI_TRY(new_group(opt, fn, opt->groups[0].lr, 0.0, &g));
  int moved = 0;
  for (int i = 0; i < opt->engine->nparams; i++)
    if (matches(patterns, opt->engine->params[i].name)) {
      opt->param_group[i] = g;
      moved++;
    }
  *group = g;
  if (count)
    *count = moved;
  return TDM_SUCCESS;
}

/* Cuts span s at each parameter (overlapping it) whose group differs
 * from the one before. */
static tdm_status cut_span(tdm_optimizer *opt, tdmi_opt_span *s) {
  const tdm_engine *e = opt->engine;
  tdmi_segment *seg = malloc(sizeof *seg * (size_t)(e->nparams + 1));
  if (!seg)
    return tdmi_error(TDM_ERR_NO_MEMORY, "tdm_step: out of memory");
  int n = 0;
  /* Parameters are laid out in reverse registration order. */
  for (int i = e->nparams - 1; i >= 0; i--) {
    tdm_dtype d;
    size_t first, count;
    tdmi_engine_param_range(e, i, &d, &first, &count);
    if (d != s->span.dtype || first + count <= s->span.first ||
        first >= s->span.first + s->span.count)
      continue;
    size_t begin = first > s->span.first ? first - s->span.first : 0;
    int g = opt->param_group[i];
    if (n > 0 && seg[n - 1].group == g)
      continue; /* the run goes on */
    if (n > 0)
      seg[n - 1].end = begin;
    seg[n++] = (tdmi_segment){begin, 0, g};
  }
  if (n == 0) /* a span without parameters: padding only */
    seg[n++] = (tdmi_segment){0, 0, 0};
  seg[0].begin = 0;
  seg[n - 1].end = s->span.count;
  s->segments = seg;
  s->nsegments = n;
  return TDM_SUCCESS;
}

tdm_status tdmi_optim_build_segments(tdm_optimizer *opt) {
  for (int i = 0; i < opt->nspans; i++)
    TDMI_TRY(cut_span(opt, &opt->spans[i]));
  return TDM_SUCCESS;
}
