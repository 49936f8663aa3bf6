/* session.c - tdm_start and tdm_stop: the handles of a program with one
 * engine, set up and torn down in one call each (Accelerate's
 * Accelerator()).  Nothing here that the calls it is made of cannot do. */
#include "core/core.h"

static tdm_status check_session(const tdm_session *s, const char *fn) {
  if (!s)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: session is NULL", fn);
  if (s->size != sizeof *s)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: session->size = %zu "
                      "is not sizeof(tdm_session) = %zu (start from "
                      "TDM_SESSION_INIT)", fn, s->size, sizeof *s);
  return TDM_SUCCESS;
}

tdm_status tdm_start(int *argc, char ***argv, tdm_session *s) {
  TDMI_TRY(check_session(s, "tdm_start"));
  tdm_options o = TDM_OPTIONS_INIT;
  o.device = s->device;
  s->ctx = NULL;
  s->engine = NULL;
  s->optimizer = NULL;
  tdm_status st = tdm_init(argc, argv, &o, &s->ctx);
  if (st == TDM_SUCCESS)
    st = tdm_get_rank(s->ctx, &s->rank);
  if (st == TDM_SUCCESS)
    st = tdm_get_world_size(s->ctx, &s->world_size);
  if (st == TDM_SUCCESS)
    st = tdm_engine_create(s->ctx, &s->engine);
  if (st != TDM_SUCCESS && s->ctx) {
    tdm_finalize(s->ctx); /* the first failure's message stays */
    s->ctx = NULL;
  }
  return st;
}

tdm_status tdm_stop(tdm_session *s) {
  TDMI_TRY(check_session(s, "tdm_stop"));
  tdm_status st = TDM_SUCCESS, one;
  if (s->optimizer && (one = tdm_optimizer_destroy(s->optimizer)) != TDM_SUCCESS)
    st = one;
  if (s->engine && (one = tdm_engine_destroy(s->engine)) != TDM_SUCCESS &&
      st == TDM_SUCCESS)
    st = one;
  if ((one = tdm_finalize(s->ctx)) != TDM_SUCCESS && st == TDM_SUCCESS)
    st = one;
  s->optimizer = NULL;
  s->engine = NULL;
  s->ctx = NULL;
  return st;
}
