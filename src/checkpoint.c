/* checkpoint.c - tdm_save_state and tdm_load_state.  The ckpt layer does
 * the work; the samplers of tdm_checkpoint_options belong to the data
 * layer above it, so their positions are read and restored here. */
#include <stddef.h>
#include <stdlib.h>

#include "ckpt/ckpt.h"
#include "data/data.h"

/* The options' samplers, or none when the caller's struct predates them. */
static int sampler_count(const tdm_checkpoint_options *o,
                         tdm_sampler *const **samplers) {
  *samplers = NULL;
  if (!o || o->size < offsetof(tdm_checkpoint_options, sampler_count) +
                          sizeof o->sampler_count)
    return 0;
  *samplers = o->samplers;
  return o->sampler_count;
}

/* Checks the samplers (the ckpt layer agrees on the verdict) and makes
 * room for their positions. */
static void samplers_open(const tdm_checkpoint_options *o,
                          tdmi_ckpt_samplers *out, tdm_sampler *const **v,
                          const char *fn) {
  int n = sampler_count(o, v);
  *out = (tdmi_ckpt_samplers){0, NULL, TDM_SUCCESS};
  if (n < 0 || (n > 0 && !*v)) {
    out->status = tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: "
                             "options->sampler_count = %d with samplers %s",
                             fn, n, *v ? "set" : "NULL");
    return;
  }
  for (int i = 0; i < n && out->status == TDM_SUCCESS; i++)
    out->status = tdmi_data_check((*v)[i], TDMI_HANDLE_SAMPLER, fn,
                                  "options->samplers[i]");
  if (out->status != TDM_SUCCESS)
    return;
  out->pos = calloc(2 * (size_t)n + 1, sizeof *out->pos);
  if (!out->pos) {
    out->status = tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", fn);
    return;
  }
  out->count = n;
}

tdm_status tdm_save_state(tdm_engine *engine, tdm_optimizer *optimizer,
                          const char *root,
                          const tdm_checkpoint_options *options) {
  tdm_sampler *const *v;
  tdmi_ckpt_samplers pos;
  samplers_open(options, &pos, &v, "tdm_save_state");
  for (int i = 0; i < pos.count; i++) {
    tdmi_position p = tdmi_sampler_position(v[i]);
    pos.pos[2 * i] = p.epoch;
    pos.pos[2 * i + 1] = p.batch;
  }
  tdm_status st = tdmi_save_state(engine, optimizer, root, options, &pos);
  free(pos.pos);
  return st;
}

tdm_status tdm_load_state(tdm_engine *engine, tdm_optimizer *optimizer,
                          const char *path,
                          const tdm_checkpoint_options *options) {
  tdm_sampler *const *v;
  tdmi_ckpt_samplers pos;
  samplers_open(options, &pos, &v, "tdm_load_state");
  tdm_status st = tdmi_load_state(engine, optimizer, path, options, &pos);
  /* The same positions and samplers on every rank: the same verdict. */
  for (int i = 0; st == TDM_SUCCESS && i < pos.count; i++)
    st = tdmi_sampler_seek(v[i], (tdmi_position){pos.pos[2 * i],
                                                 pos.pos[2 * i + 1]},
                           "tdm_load_state");
  free(pos.pos);
  return st;
}
