/* save.c - tdm_save_state: the model (one file or shards and their index),
 * optimizer.safetensors, state.json and the user data, written into a
 * temporary folder that commit.c then puts in place. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt.h"


/* Writes items[0..n) as the safetensors file path. */
static tdm_status save_file(const tdmi_ckpt_ctx *c, const char *path,
                            const tdmi_ckpt_item *items, int n) {
  tdmi_st_builder *b = NULL;
  uint64_t *begins = calloc((size_t)n + 1, sizeof *begins);
  uint8_t *prefix = NULL;
  size_t len = 0;
  tdm_status st = begins ? tdmi_st_build_start(&b)
                         : tdmi_error(TDM_ERR_NO_MEMORY, "out of memory");
  for (int i = 0; st == TDM_SUCCESS && i < n; i++) {
    const tdmi_param *p = &c->e->params[items[i].param];
    st = tdmi_st_build_add(b, items[i].name, items[i].dtype, p->ndim,
                           p->shape, &begins[i]);
  }
  const char *key = "format", *value = "pt"; /* what transformers expects */
  if (st == TDM_SUCCESS)
    st = tdmi_st_build_finish(b, &key, &value, 1, &prefix, &len);
  tdmi_st_build_free(b);
  st = tdmi_agree(c->e->comm, st, path);
  if (st == TDM_SUCCESS)
    st = tdmi_ckpt_move_file(c, path, items, n, begins, len, prefix,
                   c->e->ctx->rank == 0 ? len : 0);
  free(prefix);
  free(begins);
  return st;
}





/* Shard k's first tdmi_ckpt_item: a new shard starts where the next tensor would
 * take the shard past max_shard bytes (a larger tensor gets its own). */
static int plan_shards(const tdm_engine *e, const tdmi_ckpt_item *items,
                       int64_t max_shard, int *first, uint64_t *total) {
  int nshards = 0;
  uint64_t in_shard = 0;
  *total = 0;
  for (int i = 0; i < e->nparams; i++) {
    uint64_t bytes = tdmi_ckpt_tensor_bytes(e, &items[i]);
    if (i == 0 || (max_shard > 0 && in_shard > 0 &&
                   in_shard + bytes > (uint64_t)max_shard)) {
      first[nshards++] = i;
      in_shard = 0;
    }
    in_shard += bytes;
    *total += bytes;
  }
  first[nshards] = e->nparams;
  return nshards;
}

static tdm_status write_index(const tdm_engine *e, const char *dir,
                              const tdmi_ckpt_item *items, const int *first,
                              int nshards, uint64_t total) {
  const char **tensors = calloc((size_t)e->nparams + 1, sizeof *tensors);
  const char **files = calloc((size_t)e->nparams + 1, sizeof *files);
  char **names = calloc((size_t)nshards + 1, sizeof *names);
  tdm_status st = tensors && files && names ? TDM_SUCCESS : tdmi_ckpt_no_memory();
  for (int k = 0; st == TDM_SUCCESS && k < nshards; k++) {
    names[k] = malloc(64);
    if (!names[k])
      st = tdmi_ckpt_no_memory();
    else
      snprintf(names[k], 64, "model-%05d-of-%05d.safetensors", k + 1,
               nshards);
    for (int i = first[k]; st == TDM_SUCCESS && i < first[k + 1]; i++) {
      tensors[i] = items[i].name;
      files[i] = names[k];
    }
  }
  char *json = NULL;
  if (st == TDM_SUCCESS)
    st = tdmi_index_dump(total, tensors, files, e->nparams, &json);
  if (st == TDM_SUCCESS)
    st = tdmi_ckpt_write_small(dir, TDMI_CKPT_INDEX, json, strlen(json));
  free(json);
  tdmi_strings_free(names, nshards);
  free(tensors);
  free(files);
  return st;
}

/* The model weights: model.safetensors, or shards and their index. */
static tdm_status save_model(const tdmi_ckpt_ctx *c, const char *dir, int dtype,
                             int64_t max_shard, int *nfiles) {
  const tdm_engine *e = c->e;
  tdmi_ckpt_item *items = NULL;
  TDMI_TRY(tdmi_ckpt_model_items(e, dtype, &items));
  int *first = calloc((size_t)e->nparams + 2, sizeof *first);
  uint64_t total = 0;
  int nshards = first ? plan_shards(e, items, max_shard, first, &total) : 0;
  tdm_status st = first ? TDM_SUCCESS : tdmi_ckpt_no_memory();
  for (int k = 0; st == TDM_SUCCESS && k < nshards; k++) {
    char name[64];
    if (nshards == 1)
      snprintf(name, sizeof name, "%s", TDMI_CKPT_MODEL);
    else
      snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", k + 1,
               nshards);
    char *path = tdmi_path_in(dir, name);
    st = path ? save_file(c, path, items + first[k], first[k + 1] - first[k])
              : tdmi_ckpt_no_memory();
    free(path);
  }
  if (st == TDM_SUCCESS && nshards > 1 && e->ctx->rank == 0)
    st = write_index(e, dir, items, first, nshards, total);
  free(first);
  tdmi_ckpt_items_free(items, e->nparams);
  *nfiles = nshards;
  return tdmi_agree(e->comm, st, TDMI_CKPT_INDEX);
}

static tdm_status save_optimizer(const tdmi_ckpt_ctx *c, const char *dir,
                                 int weights_dtype) {
  tdmi_ckpt_item *items = NULL;
  int n = 0;
  TDMI_TRY(tdmi_ckpt_optimizer_items(c, weights_dtype, &items, &n));
  char *path = tdmi_path_in(dir, TDMI_CKPT_OPTIMIZER);
  tdm_status st = !path ? tdmi_ckpt_no_memory()
                  : n > 0 ? save_file(c, path, items, n) : TDM_SUCCESS;
  free(path);
  tdmi_ckpt_items_free(items, n);
  return st;
}

/* The counters of state.json (rank 0 fills in the RNG offsets). */
static tdm_status collect_state(const tdmi_ckpt_ctx *c,
                                const tdm_checkpoint_options *o,
                                const tdmi_ckpt_samplers *samplers,
                                int nfiles, tdmi_ckpt_state *s) {
  const tdm_engine *e = c->e;
  const tdm_optimizer *opt = c->opt;
  *s = (tdmi_ckpt_state){0};
  s->step = opt ? opt->steps + opt->skipped : 0;
  s->world_size = e->ctx->size;
  s->zero_stage = e->stage;
  s->offload = e->offload;
  s->precision = e->precision;
  s->reduce_dtype = e->reduce_dtype;
  s->accumulation_steps = e->accumulation_steps;
  s->accumulation_position = e->micro;
  s->weights_dtype = o->weights_dtype;
  s->nmodel_files = nfiles;
  s->has_optimizer = opt != NULL;
  if (opt) {
    s->optimizer_kind = opt->o.kind;
    s->opt_steps = opt->steps;
    s->opt_skipped = opt->skipped;
    s->last_skipped = opt->last_skipped;
    s->schedule_factor = tdmi_optim_lr(opt, 0) / (opt->groups[0].lr > 0
                                                      ? opt->groups[0].lr
                                                      : 1.0);
    s->scaling = opt->scaling;
    s->loss_scale = opt->scale;
    s->growth_tracker = opt->growth_tracker;
  }
  s->nrngs = o->rng_count;
  s->user_bytes = o->user_bytes;
  s->nsamplers = samplers->count;
  s->sampler_pos = calloc(2 * (size_t)samplers->count + 1,
                          sizeof *s->sampler_pos);
  if (s->sampler_pos && samplers->count > 0)
    memcpy(s->sampler_pos, samplers->pos,
           2 * (size_t)samplers->count * sizeof *s->sampler_pos);
  uint64_t *mine = calloc((size_t)o->rng_count + 1, sizeof *mine);
  s->rng_offsets = calloc((size_t)o->rng_count * e->ctx->size + 1,
                          sizeof *s->rng_offsets);
  tdm_status st = mine && s->rng_offsets && s->sampler_pos
                      ? TDM_SUCCESS
                      : tdmi_ckpt_no_memory();
  for (int i = 0; st == TDM_SUCCESS && i < o->rng_count; i++)
    st = tdm_rng_get_offset(o->rngs[i], &mine[i]);
  st = tdmi_agree(e->comm, st, "tdm_save_state (RNG offsets)");
  /* rank-major: offsets[r * nrngs + i]; state.json wants per stream */
  uint64_t *by_rank = st == TDM_SUCCESS
                          ? calloc((size_t)o->rng_count * e->ctx->size + 1,
                                   sizeof *by_rank)
                          : NULL;
  if (st == TDM_SUCCESS && o->rng_count > 0) {
    tdmi_mpi_call c = {TDMI_RUN_ALLGATHER, mine, by_rank, o->rng_count,
                       MPI_UINT64_T, MPI_OP_NULL, 0, e->comm};
    st = tdmi_run(&c, "tdm_save_state (RNG offsets)",
                  sizeof *by_rank * (size_t)o->rng_count);
    for (int r = 0; r < e->ctx->size; r++)
      for (int i = 0; i < o->rng_count; i++)
        s->rng_offsets[(size_t)i * e->ctx->size + r] =
            by_rank[(size_t)r * o->rng_count + i];
  }
  free(by_rank);
  free(mine);
  return st;
}

/* Rank 0: state.json and the user data. */
static tdm_status save_small(const char *dir, const tdmi_ckpt_state *s,
                             const tdm_checkpoint_options *o) {
  char *json = NULL;
  tdm_status st = tdmi_state_dump(s, &json);
  if (st == TDM_SUCCESS)
    st = tdmi_ckpt_write_small(dir, TDMI_CKPT_STATE, json, strlen(json));
  free(json);
  if (st == TDM_SUCCESS && o->user_bytes > 0)
    st = tdmi_ckpt_write_small(dir, TDMI_CKPT_USER, o->user_data, o->user_bytes);
  return st;
}


static tdm_status save_body(const tdmi_ckpt_ctx *c, const char *tmp,
                            const tdm_checkpoint_options *o,
                            const tdmi_ckpt_samplers *samplers) {
  int nfiles = 0;
  TDMI_TRY(save_model(c, tmp, o->weights_dtype, o->max_shard_bytes, &nfiles));
  TDMI_TRY(save_optimizer(c, tmp, o->weights_dtype));
  tdmi_ckpt_state s;
  tdm_status st = collect_state(c, o, samplers, nfiles, &s);
  if (st == TDM_SUCCESS && c->e->ctx->rank == 0)
    st = save_small(tmp, &s, o);
  tdmi_state_free(&s);
  return tdmi_agree(c->e->comm, st, "tdm_save_state (state.json)");
}

tdm_status tdmi_save_state(tdm_engine *e, tdm_optimizer *opt, const char *root,
                           const tdm_checkpoint_options *options,
                           const tdmi_ckpt_samplers *samplers) {
  const char *fn = "tdm_save_state";
  tdm_checkpoint_options o;
  tdm_status st = tdmi_ckpt_check_between_steps(e, opt, fn);
  if (st == TDM_SUCCESS)
    st = samplers->status;
  if (st == TDM_SUCCESS)
    st = tdmi_check_ptr(fn, root, "root");
  if (st == TDM_SUCCESS)
    st = tdmi_ckpt_read_options(options, &o, fn);
  if (st == TDM_SUCCESS && strlen(root) > 3000)
    st = tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: root is too long", fn);
  if (tdmi_engine_check(e, fn) != TDM_SUCCESS)
    return st; /* no engine: no communicator to agree on */
  TDMI_TRY(tdmi_agree(e->comm, st, fn));
  const tdmi_ckpt_ctx c = {e, opt, 0};
  int64_t step = opt ? opt->steps + opt->skipped : 0;
  char final[3200], tmp[3300];
  snprintf(final, sizeof final, "%s/" TDMI_CKPT_PREFIX "%lld", root,
           (long long)step);
  snprintf(tmp, sizeof tmp, "%s.tmp-%ld", final, (long)getpid());
  st = e->ctx->rank == 0 ? tdmi_commit_begin(root, final, tmp) : TDM_SUCCESS;
  TDMI_TRY(tdmi_agree(e->comm, st, fn));
  TDMI_TRY(tdmi_ckpt_share_string(e->comm, tmp, sizeof tmp));
  st = save_body(&c, tmp, &o, samplers);
  if (st == TDM_SUCCESS && e->ctx->rank == 0) {
    st = tdmi_commit_finish(root, tmp, final);
    if (st == TDM_SUCCESS && o.total_limit > 0)
      st = tdmi_commit_rotate(root, o.total_limit);
  }
  if (st != TDM_SUCCESS && e->ctx->rank == 0)
    tdmi_remove_tree(tmp); /* the failed attempt; older ones stay */
  st = tdmi_agree(e->comm, st, fn);
  if (st == TDM_SUCCESS)
    tdmi_ckpt_put_path(&o, final);
  return st;
}
