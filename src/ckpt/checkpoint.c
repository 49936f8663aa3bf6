/* checkpoint.c - tdm_save_state, tdm_load_state, tdm_load_weights.
 *
 * Every tensor of a checkpoint is a whole logical tensor.  Each rank moves
 * only its part of each: under ZeRO the elements it owns (so a ZeRO-3
 * model is saved without any rank holding it whole); under DDP, where
 * every rank holds everything, an even split of each tensor on save and
 * everything on load.  Loading reads the parts the engine of now owns,
 * whatever the world size and stage at save, then refreshes compute
 * copies and gathers as after an update. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt.h"

#define MAX_STATE_JSON (16u << 20)
#define MAX_INDEX_JSON (64u << 20)

enum { VALUES = 0, STATE0 = 1, STATE1 = 2 };

/* One tensor of a file: which array of which parameter, in what dtype. */
typedef struct {
  int param;
  int which;       /* VALUES, STATE0, STATE1 */
  tdm_dtype dtype; /* in the file */
  char *name;
} item;

typedef struct {
  tdm_engine *e;
  tdm_optimizer *opt; /* NULL: values only */
  int loading;
} ctx_t;

/* ---- where a parameter's arrays are ---- */

static int span_of(const tdm_engine *e, const tdmi_param *p) {
  if (e->stage > 0)
    return p->bucket;
  int i = 0;
  for (int d = 0; d < (int)p->dtype; d++)
    i += e->flat[d].count > 0;
  return i;
}

/* The array of what holding parameter p's layout elements, or NULL. */
static char *array_at(const ctx_t *c, const tdmi_param *p, int which,
                      size_t elem) {
  int i = span_of(c->e, p);
  tdmi_span s = tdmi_engine_span(c->e, i);
  void *base = which == VALUES   ? s.data
               : which == STATE0 ? c->opt->spans[i].state0
                                 : c->opt->spans[i].state1;
  return base ? (char *)base + (elem - s.first) * tdmi_dtype_size(s.dtype)
              : NULL;
}

/* This rank's elements [*lo, *hi) of p (counted within p). */
static void own_range(const ctx_t *c, const tdmi_param *p, size_t *lo,
                      size_t *hi) {
  const tdm_engine *e = c->e;
  if (e->stage == 0) {
    size_t r = (size_t)e->ctx->rank, n = (size_t)e->ctx->size;
    *lo = c->loading ? 0 : p->numel * r / n;
    *hi = c->loading ? p->numel : p->numel * (r + 1) / n;
    return;
  }
  const tdmi_bucket *b = &e->buckets[p->bucket];
  size_t own = tdmi_own_first(e, b);
  size_t from = p->first > own ? p->first : own;
  size_t to = p->first + p->numel < own + b->chunk ? p->first + p->numel
                                                   : own + b->chunk;
  *lo = from < to ? from - p->first : 0;
  *hi = from < to ? to - p->first : 0;
}

/* ---- host conversions between a file's dtype and an array's ---- */

static int is_half(tdm_dtype d) { return d == TDM_BF16 || d == TDM_F16; }

static tdm_status convert(tdm_dtype from, const void *in, tdm_dtype to,
                          void *out, size_t n) {
  if (from == to) {
    memcpy(out, in, n * tdmi_dtype_size(from));
    return TDM_SUCCESS;
  }
  if (from == TDM_F64 || to == TDM_F64) { /* through doubles */
    for (size_t i = 0; i < n; i++) {
      double v = from == TDM_F64   ? ((const double *)in)[i]
                 : from == TDM_F32 ? ((const float *)in)[i]
                 : from == TDM_BF16
                     ? tdmi_bf16_to_f32(((const uint16_t *)in)[i])
                     : tdmi_f16_to_f32(((const uint16_t *)in)[i]);
      if (to == TDM_F64)
        ((double *)out)[i] = v;
      else if (to == TDM_F32)
        ((float *)out)[i] = (float)v;
      else
        ((uint16_t *)out)[i] = to == TDM_BF16 ? tdmi_f32_to_bf16((float)v)
                                              : tdmi_f32_to_f16((float)v);
    }
    return TDM_SUCCESS;
  }
  if (is_half(from) && is_half(to)) {
    for (size_t i = 0; i < n; i++) {
      uint16_t h = ((const uint16_t *)in)[i];
      float v = from == TDM_BF16 ? tdmi_bf16_to_f32(h) : tdmi_f16_to_f32(h);
      ((uint16_t *)out)[i] = to == TDM_BF16 ? tdmi_f32_to_bf16(v)
                                            : tdmi_f32_to_f16(v);
    }
    return TDM_SUCCESS;
  }
  return tdm_convert(from, in, to, out, n);
}

/* ---- staging: an engine array's part <-> the file bytes ---- */

/* Copies (saving) or places (loading) elements [lo, hi) of item it
 * between the engine and bytes (it->dtype). */
static tdm_status stage(const ctx_t *c, const item *it, size_t lo, size_t hi,
                        char *bytes) {
  const tdmi_param *p = &c->e->params[it->param];
  char *arr = array_at(c, p, it->which, p->first + lo);
  size_t n = hi - lo, asize = tdmi_dtype_size(p->dtype);
  if (it->dtype == p->dtype)
    return c->loading ? tdmi_ops_copy(&c->e->ops, arr, bytes, n * asize)
                      : tdmi_ops_copy(&c->e->ops, bytes, arr, n * asize);
  char *tmp = malloc(n * asize);
  if (!tmp)
    return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory for "
                      "%zu elements of %s", n, it->name);
  tdm_status st;
  if (c->loading) {
    st = convert(it->dtype, bytes, p->dtype, tmp, n);
    if (st == TDM_SUCCESS)
      st = tdmi_ops_copy(&c->e->ops, arr, tmp, n * asize);
  } else {
    st = tdmi_ops_copy(&c->e->ops, tmp, arr, n * asize);
    if (st == TDM_SUCCESS)
      st = tdmi_ops_synchronize(&c->e->ops);
    if (st == TDM_SUCCESS)
      st = convert(p->dtype, tmp, it->dtype, bytes, n);
  }
  if (st == TDM_SUCCESS) /* tmp is freed once its copy has run */
    st = tdmi_ops_synchronize(&c->e->ops);
  free(tmp);
  return st;
}

/* One file's worth of moves: the pieces and, for each, what it is. */
typedef struct {
  tdmi_pieces pieces;
  const item **what; /* per piece added, or NULL (the header) */
  size_t *lo, *hi;
  size_t *buf_off;
  size_t n, cap;
} moves;

static tdm_status moves_add(moves *m, const item *it, uint64_t file_off,
                            size_t lo, size_t hi, size_t esize) {
  if (m->n == m->cap) {
    size_t cap = m->cap ? 2 * m->cap : 32;
    const item **w = realloc(m->what, cap * sizeof *w);
    if (w)
      m->what = w;
    size_t *l = realloc(m->lo, cap * sizeof *l);
    if (l)
      m->lo = l;
    size_t *h = realloc(m->hi, cap * sizeof *h);
    if (h)
      m->hi = h;
    size_t *b = realloc(m->buf_off, cap * sizeof *b);
    if (b)
      m->buf_off = b;
    if (!w || !l || !h || !b)
      return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory");
    m->cap = cap;
  }
  m->what[m->n] = it;
  m->lo[m->n] = lo;
  m->hi[m->n] = hi;
  TDMI_TRY(tdmi_pieces_add(&m->pieces, file_off, (hi - lo) * esize,
                           &m->buf_off[m->n]));
  m->n++;
  return TDM_SUCCESS;
}

static void moves_free(moves *m) {
  tdmi_pieces_free(&m->pieces);
  free(m->what);
  free(m->lo);
  free(m->hi);
  free(m->buf_off);
}

/* Moves every item of file between the engine and the file: data_start
 * and begins[i] place item i's tensor.  prefix (rank 0, saving) is the
 * header written at offset 0. */
static tdm_status move_file(const ctx_t *c, const char *file, const item *items,
                            int nitems, const uint64_t *begins,
                            uint64_t data_start, const uint8_t *prefix,
                            size_t prefix_len) {
  moves m = {0};
  tdm_status st = TDM_SUCCESS;
  if (prefix_len)
    st = moves_add(&m, NULL, 0, 0, prefix_len, 1);
  for (int i = 0; st == TDM_SUCCESS && i < nitems; i++) {
    const tdmi_param *p = &c->e->params[items[i].param];
    size_t lo, hi, esize = tdmi_dtype_size(items[i].dtype);
    own_range(c, p, &lo, &hi);
    if (hi > lo)
      st = moves_add(&m, &items[i], data_start + begins[i] + lo * esize, lo,
                     hi, esize);
  }
  char *buf = st == TDM_SUCCESS ? malloc(m.pieces.total + 1) : NULL;
  if (st == TDM_SUCCESS && !buf)
    st = tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory for %zu staging "
                    "bytes", file, m.pieces.total);
  if (!c->loading) {
    for (size_t k = 0; st == TDM_SUCCESS && k < m.n; k++)
      st = m.what[k] ? stage(c, m.what[k], m.lo[k], m.hi[k], buf + m.buf_off[k])
                     : (memcpy(buf, prefix, prefix_len), TDM_SUCCESS);
    if (st == TDM_SUCCESS)
      st = tdmi_ops_synchronize(&c->e->ops);
  }
  st = tdmi_agree_status(c->e->comm, st, file);
  if (st == TDM_SUCCESS)
    st = c->loading ? tdmi_tensorio_read(c->e->comm, file, &m.pieces, buf)
                    : tdmi_tensorio_write(c->e->comm, file, &m.pieces, buf);
  for (size_t k = 0; st == TDM_SUCCESS && c->loading && k < m.n; k++)
    st = stage(c, m.what[k], m.lo[k], m.hi[k], buf + m.buf_off[k]);
  if (c->loading && st == TDM_SUCCESS)
    st = tdmi_ops_synchronize(&c->e->ops);
  free(buf);
  moves_free(&m);
  return c->loading ? tdmi_agree_status(c->e->comm, st, file) : st;
}

/* ---- options ---- */

static tdm_status read_options(const tdm_checkpoint_options *in,
                               tdm_checkpoint_options *out, const char *fn) {
  tdm_checkpoint_options o = TDM_CHECKPOINT_OPTIONS_INIT;
  if (in) {
    if (in->size < sizeof(size_t) || in->size > sizeof o)
      return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: options->size = %zu "
                        "is not a tdm_checkpoint_options size (start from "
                        "TDM_CHECKPOINT_OPTIONS_INIT)", fn, in->size);
    memcpy(&o, in, in->size);
  }
  o.size = sizeof o;
  if (o.total_limit < 0 || o.max_shard_bytes < 0 || o.rng_count < 0 ||
      (o.rng_count > 0 && !o.rngs) || (o.user_bytes > 0 && !o.user_data))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: options: total_limit, "
                      "max_shard_bytes and rng_count must be >= 0, rngs and "
                      "user_data non-NULL where counted", fn);
  if (o.weights_dtype != TDM_UNSET && o.weights_dtype != TDM_F32 &&
      o.weights_dtype != TDM_BF16 && o.weights_dtype != TDM_F16)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: options->weights_dtype "
                      "= %d; expected TDM_UNSET, TDM_F32, TDM_BF16 or "
                      "TDM_F16", fn, o.weights_dtype);
  for (int i = 0; i < o.rng_count; i++)
    if (!o.rngs[i])
      return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: options->rngs[%d] is "
                        "NULL", fn, i);
  *out = o;
  return TDM_SUCCESS;
}

/* Between micro-steps, after tdm_step, at the start of a cycle. */
static tdm_status check_between_steps(tdm_engine *e, tdm_optimizer *opt,
                                      const char *fn) {
  TDMI_TRY(tdmi_engine_check_prepared(e, fn));
  if (opt) {
    TDMI_TRY(tdmi_optim_check(opt, fn));
    if (opt->engine != e)
      return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: the optimizer belongs "
                        "to another engine", fn);
  }
  if (e->in_backward || e->at_boundary || e->micro != 0)
    return tdmi_error(TDM_ERR_INVALID_USAGE, "%s: only between accumulation "
                      "cycles: after tdm_step of a cycle's last micro-step "
                      "and before the next tdm_backward_begin (micro-step "
                      "%d of %d in progress)", fn, e->micro,
                      e->accumulation_steps);
  return TDM_SUCCESS;
}

static void put_path(const tdm_checkpoint_options *o, const char *dir) {
  if (o->path_out && o->path_capacity > 0)
    snprintf(o->path_out, o->path_capacity, "%s", dir);
}

/* ---- the tensors of a checkpoint ---- */

static const char *state_name(int kind, int which) {
  if (kind == TDM_OPTIMIZER_SGD)
    return "momentum_buffer";
  return which == STATE0 ? "exp_avg" : "exp_avg_sq";
}

static char *concat(const char *a, const char *b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char *s = malloc(n);
  if (s)
    snprintf(s, n, "%s%s%s", a, *b ? "." : "", b);
  return s;
}

static void items_free(item *v, int n) {
  for (int i = 0; v && i < n; i++)
    free(v[i].name);
  free(v);
}

/* The model file's items: every parameter's values in dtype (TDM_UNSET:
 * its own). */
static tdm_status model_items(const tdm_engine *e, int dtype, item **out) {
  item *v = calloc((size_t)e->nparams + 1, sizeof *v);
  if (!v)
    return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory");
  for (int i = 0; i < e->nparams; i++) {
    v[i] = (item){i, VALUES,
                  dtype == TDM_UNSET ? e->params[i].dtype : (tdm_dtype)dtype,
                  strdup(e->params[i].name)};
    if (!v[i].name) {
      items_free(v, i);
      return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory");
    }
  }
  *out = v;
  return TDM_SUCCESS;
}

/* Whether the optimizer keeps state buffer which (the kind's; every span
 * has the same ones). */
static int opt_has(const tdm_optimizer *opt, int which) {
  if (!opt || opt->nspans == 0)
    return 0;
  return (which == STATE0 ? opt->spans[0].state0 : opt->spans[0].state1) !=
         NULL;
}

/* optimizer.safetensors: each state buffer per parameter, and the master
 * values when the model file holds them in another dtype. */
static tdm_status optimizer_items(const ctx_t *c, int weights_dtype,
                                  item **out, int *n) {
  const tdm_engine *e = c->e;
  item *v = calloc(3 * (size_t)e->nparams + 1, sizeof *v);
  if (!v)
    return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory");
  *n = 0;
  int kind = c->opt ? c->opt->o.kind : 0;
  for (int i = 0; i < e->nparams; i++) {
    const tdmi_param *p = &e->params[i];
    int master = weights_dtype != TDM_UNSET && weights_dtype != (int)p->dtype;
    for (int which = VALUES; which <= STATE1; which++) {
      int used = which == VALUES ? master : opt_has(c->opt, which);
      if (!used)
        continue;
      v[*n] = (item){i, which, p->dtype,
                     concat(p->name, which == VALUES ? "master"
                                                     : state_name(kind, which))};
      if (!v[(*n)++].name) {
        items_free(v, *n);
        return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory");
      }
    }
  }
  *out = v;
  return TDM_SUCCESS;
}

/* ---- saving ---- */

/* Writes items[0..n) as the safetensors file path. */
static tdm_status save_file(const ctx_t *c, const char *path,
                            const item *items, int n) {
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
  st = tdmi_agree_status(c->e->comm, st, path);
  if (st == TDM_SUCCESS)
    st = move_file(c, path, items, n, begins, len, prefix,
                   c->e->ctx->rank == 0 ? len : 0);
  free(prefix);
  free(begins);
  return st;
}

static uint64_t tensor_bytes(const tdm_engine *e, const item *it) {
  return e->params[it->param].numel * tdmi_dtype_size(it->dtype);
}

static char *path_in(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *s = malloc(n);
  if (s)
    snprintf(s, n, "%s/%s", dir, name);
  return s;
}

static tdm_status no_memory(void) {
  return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory");
}

/* Rank 0 writes a small file of the checkpoint. */
static tdm_status write_small(const char *dir, const char *name,
                              const void *bytes, size_t n) {
  char *path = path_in(dir, name);
  tdm_status st = path ? tdmi_write_file(path, bytes, n) : no_memory();
  free(path);
  return st;
}

/* Shard k's first item: a new shard starts where the next tensor would
 * take the shard past max_shard bytes (a larger tensor gets its own). */
static int plan_shards(const tdm_engine *e, const item *items,
                       int64_t max_shard, int *first, uint64_t *total) {
  int nshards = 0;
  uint64_t in_shard = 0;
  *total = 0;
  for (int i = 0; i < e->nparams; i++) {
    uint64_t bytes = tensor_bytes(e, &items[i]);
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
                              const item *items, const int *first,
                              int nshards, uint64_t total) {
  const char **tensors = calloc((size_t)e->nparams + 1, sizeof *tensors);
  const char **files = calloc((size_t)e->nparams + 1, sizeof *files);
  char **names = calloc((size_t)nshards + 1, sizeof *names);
  tdm_status st = tensors && files && names ? TDM_SUCCESS : no_memory();
  for (int k = 0; st == TDM_SUCCESS && k < nshards; k++) {
    names[k] = malloc(64);
    if (!names[k])
      st = no_memory();
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
    st = write_small(dir, TDMI_CKPT_INDEX, json, strlen(json));
  free(json);
  tdmi_strings_free(names, nshards);
  free(tensors);
  free(files);
  return st;
}

/* The model weights: model.safetensors, or shards and their index. */
static tdm_status save_model(const ctx_t *c, const char *dir, int dtype,
                             int64_t max_shard, int *nfiles) {
  const tdm_engine *e = c->e;
  item *items = NULL;
  TDMI_TRY(model_items(e, dtype, &items));
  int *first = calloc((size_t)e->nparams + 2, sizeof *first);
  uint64_t total = 0;
  int nshards = first ? plan_shards(e, items, max_shard, first, &total) : 0;
  tdm_status st = first ? TDM_SUCCESS : no_memory();
  for (int k = 0; st == TDM_SUCCESS && k < nshards; k++) {
    char name[64];
    if (nshards == 1)
      snprintf(name, sizeof name, "%s", TDMI_CKPT_MODEL);
    else
      snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", k + 1,
               nshards);
    char *path = path_in(dir, name);
    st = path ? save_file(c, path, items + first[k], first[k + 1] - first[k])
              : no_memory();
    free(path);
  }
  if (st == TDM_SUCCESS && nshards > 1 && e->ctx->rank == 0)
    st = write_index(e, dir, items, first, nshards, total);
  free(first);
  items_free(items, e->nparams);
  *nfiles = nshards;
  return tdmi_agree_status(e->comm, st, TDMI_CKPT_INDEX);
}

static tdm_status save_optimizer(const ctx_t *c, const char *dir,
                                 int weights_dtype) {
  item *items = NULL;
  int n = 0;
  TDMI_TRY(optimizer_items(c, weights_dtype, &items, &n));
  char *path = path_in(dir, TDMI_CKPT_OPTIMIZER);
  tdm_status st = !path ? no_memory()
                  : n > 0 ? save_file(c, path, items, n) : TDM_SUCCESS;
  free(path);
  items_free(items, n);
  return st;
}

/* The counters of state.json (rank 0 fills in the RNG offsets). */
static tdm_status collect_state(const ctx_t *c,
                                const tdm_checkpoint_options *o, int nfiles,
                                tdmi_ckpt_state *s) {
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
  uint64_t *mine = calloc((size_t)o->rng_count + 1, sizeof *mine);
  s->rng_offsets = calloc((size_t)o->rng_count * e->ctx->size + 1,
                          sizeof *s->rng_offsets);
  tdm_status st = mine && s->rng_offsets ? TDM_SUCCESS : no_memory();
  for (int i = 0; st == TDM_SUCCESS && i < o->rng_count; i++)
    st = tdm_rng_get_offset(o->rngs[i], &mine[i]);
  st = tdmi_agree_status(e->comm, st, "tdm_save_state (RNG offsets)");
  /* rank-major: offsets[r * nrngs + i]; state.json wants per stream */
  uint64_t *by_rank = st == TDM_SUCCESS
                          ? calloc((size_t)o->rng_count * e->ctx->size + 1,
                                   sizeof *by_rank)
                          : NULL;
  if (st == TDM_SUCCESS && o->rng_count > 0) {
    MPI_Allgather(mine, o->rng_count, MPI_UINT64_T, by_rank, o->rng_count,
                  MPI_UINT64_T, e->comm);
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
    st = write_small(dir, TDMI_CKPT_STATE, json, strlen(json));
  free(json);
  if (st == TDM_SUCCESS && o->user_bytes > 0)
    st = write_small(dir, TDMI_CKPT_USER, o->user_data, o->user_bytes);
  return st;
}

/* The folder names rank 0 chose, on every rank. */
static tdm_status share_string(MPI_Comm comm, char *s, size_t cap) {
  return tdmi_bcast_bytes(comm, s, cap, 0);
}

static tdm_status save_body(const ctx_t *c, const char *tmp,
                            const tdm_checkpoint_options *o) {
  int nfiles = 0;
  TDMI_TRY(save_model(c, tmp, o->weights_dtype, o->max_shard_bytes, &nfiles));
  TDMI_TRY(save_optimizer(c, tmp, o->weights_dtype));
  tdmi_ckpt_state s;
  tdm_status st = collect_state(c, o, nfiles, &s);
  if (st == TDM_SUCCESS && c->e->ctx->rank == 0)
    st = save_small(tmp, &s, o);
  tdmi_state_free(&s);
  return tdmi_agree_status(c->e->comm, st, "tdm_save_state (state.json)");
}

tdm_status tdm_save_state(tdm_engine *e, tdm_optimizer *opt, const char *root,
                          const tdm_checkpoint_options *options) {
  const char *fn = "tdm_save_state";
  tdm_checkpoint_options o;
  tdm_status st = check_between_steps(e, opt, fn);
  if (st == TDM_SUCCESS)
    st = tdmi_check_ptr(fn, root, "root");
  if (st == TDM_SUCCESS)
    st = read_options(options, &o, fn);
  if (st == TDM_SUCCESS && strlen(root) > 3000)
    st = tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: root is too long", fn);
  if (tdmi_engine_check(e, fn) != TDM_SUCCESS)
    return st; /* no engine: no communicator to agree on */
  TDMI_TRY(tdmi_agree_status(e->comm, st, fn));
  const ctx_t c = {e, opt, 0};
  int64_t step = opt ? opt->steps + opt->skipped : 0;
  char final[3200], tmp[3300];
  snprintf(final, sizeof final, "%s/" TDMI_CKPT_PREFIX "%lld", root,
           (long long)step);
  snprintf(tmp, sizeof tmp, "%s.tmp-%ld", final, (long)getpid());
  st = e->ctx->rank == 0 ? tdmi_commit_begin(root, final, tmp) : TDM_SUCCESS;
  TDMI_TRY(tdmi_agree_status(e->comm, st, fn));
  TDMI_TRY(share_string(e->comm, tmp, sizeof tmp));
  st = save_body(&c, tmp, &o);
  if (st == TDM_SUCCESS && e->ctx->rank == 0) {
    st = tdmi_commit_finish(root, tmp, final);
    if (st == TDM_SUCCESS && o.total_limit > 0)
      st = tdmi_commit_rotate(root, o.total_limit);
  }
  if (st != TDM_SUCCESS && e->ctx->rank == 0)
    tdmi_remove_tree(tmp); /* the failed attempt; older ones stay */
  st = tdmi_agree_status(e->comm, st, fn);
  if (st == TDM_SUCCESS)
    put_path(&o, final);
  return st;
}

/* ---- loading ---- */

/* Rank 0 reads a small file (n <= max), every rank gets its bytes. */
static tdm_status read_shared(MPI_Comm comm, const char *path, size_t max,
                              char **text, size_t *n) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  unsigned long long len = 0;
  *text = NULL;
  tdm_status st = rank == 0 ? tdmi_read_file(path, max, text, n)
                            : TDM_SUCCESS;
  if (st == TDM_SUCCESS && rank == 0)
    len = *n;
  TDMI_TRY(tdmi_agree_status(comm, st, path));
  MPI_Bcast(&len, 1, MPI_UNSIGNED_LONG_LONG, 0, comm);
  if (rank != 0 && !(*text = malloc(len + 1)))
    st = no_memory();
  st = tdmi_agree_status(comm, st, path);
  if (st == TDM_SUCCESS)
    st = tdmi_bcast_bytes(comm, *text, len, 0);
  if (st == TDM_SUCCESS) {
    (*text)[len] = '\0';
    *n = len;
  } else {
    free(*text);
    *text = NULL;
  }
  return st;
}

static int is_dir(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static int exists(const char *dir, const char *name) {
  char *p = path_in(dir, name);
  struct stat sb;
  int yes = p && stat(p, &sb) == 0;
  free(p);
  return yes;
}

/* Rank 0: the checkpoint folder path names (itself, or the newest
 * complete one under it), verified against its done marker. */
static tdm_status resolve_checkpoint(const char *path, char *dir, size_t cap) {
  if (!is_dir(path))
    return tdmi_error(TDM_ERR_IO, "tdm_load_state: %s is not a folder", path);
  if (exists(path, TDMI_CKPT_STATE) || exists(path, TDMI_CKPT_DONE))
    snprintf(dir, cap, "%s", path);
  else
    TDMI_TRY(tdm_latest_checkpoint(path, dir, cap));
  return tdmi_commit_verify(dir);
}

/* Rank 0: which safetensors files hold the model at path (a file, an
 * index, or a folder with either), as "file\n" lines; base is the folder
 * the index names files in. */
static tdm_status model_files_local(const char *path, char **lines) {
  char *index = NULL, *text = NULL;
  const char *base = path;
  size_t n = 0;
  char *dir = NULL;
  *lines = NULL;
  if (is_dir(path)) {
    if (exists(path, TDMI_CKPT_INDEX))
      index = path_in(path, TDMI_CKPT_INDEX);
    else if (exists(path, TDMI_CKPT_MODEL))
      *lines = path_in(path, TDMI_CKPT_MODEL);
    else
      return tdmi_error(TDM_ERR_IO, "%s: holds neither %s nor %s", path,
                        TDMI_CKPT_MODEL, TDMI_CKPT_INDEX);
  } else {
    size_t len = strlen(path);
    if (len < 5 || strcmp(path + len - 5, ".json") != 0)
      *lines = strdup(path);
    else if ((index = strdup(path)) && (dir = strdup(path))) {
      char *slash = strrchr(dir, '/');
      if (slash)
        *slash = '\0';
      base = slash ? dir : ".";
    }
  }
  tdm_status st = TDM_SUCCESS;
  if (index) {
    char **files = NULL;
    int nfiles = 0;
    st = tdmi_read_file(index, MAX_INDEX_JSON, &text, &n);
    if (st == TDM_SUCCESS)
      st = tdmi_index_parse(index, text, n, &files, &nfiles);
    size_t cap = 1;
    for (int i = 0; st == TDM_SUCCESS && i < nfiles; i++)
      cap += strlen(base) + strlen(files[i]) + 2;
    if (st == TDM_SUCCESS && (*lines = calloc(cap, 1)))
      for (int i = 0; i < nfiles; i++)
        snprintf(*lines + strlen(*lines), cap - strlen(*lines), "%s/%s\n",
                 base, files[i]);
    tdmi_strings_free(files, nfiles);
  } else if (*lines) {
    size_t len = strlen(*lines);
    char *grown = realloc(*lines, len + 2);
    if (grown)
      memcpy(grown + len, "\n", 2);
    *lines = grown;
  }
  if (st == TDM_SUCCESS && !*lines)
    st = no_memory();
  free(index);
  free(dir);
  free(text);
  return st;
}

/* The same on every rank. */
static tdm_status model_files(MPI_Comm comm, const char *path, char **lines) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  unsigned long long len = 0;
  tdm_status st = rank == 0 ? model_files_local(path, lines) : TDM_SUCCESS;
  if (rank == 0 && st == TDM_SUCCESS)
    len = strlen(*lines);
  TDMI_TRY(tdmi_agree_status(comm, st, path));
  MPI_Bcast(&len, 1, MPI_UNSIGNED_LONG_LONG, 0, comm);
  if (rank != 0 && !(*lines = calloc(len + 1, 1)))
    st = no_memory();
  st = tdmi_agree_status(comm, st, path);
  if (st == TDM_SUCCESS)
    st = tdmi_bcast_bytes(comm, *lines, len, 0);
  return st;
}

/* Checks tensor t of file against parameter p; *dtype is the dtype to
 * read it in. */
static tdm_status match(const char *file, const tdmi_st_tensor *t,
                        const tdmi_param *p, int convert_ok) {
  int same = t->ndim == p->ndim;
  for (int d = 0; same && d < p->ndim; d++)
    same = t->shape[d] == p->shape[d];
  if (!same) {
    char want[128] = "", got[128] = "";
    for (int d = 0; d < p->ndim; d++)
      snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld",
               d ? ", " : "", (long long)p->shape[d]);
    for (int d = 0; d < t->ndim; d++)
      snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld",
               d ? ", " : "", (long long)t->shape[d]);
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: tensor \"%s\" has "
                      "shape [%s], the parameter \"%s\" has [%s]", file,
                      t->name, got, p->name, want);
  }
  int floating = t->dtype == TDM_F32 || t->dtype == TDM_F64 ||
                 t->dtype == TDM_BF16 || t->dtype == TDM_F16;
  if (t->dtype == (int)p->dtype || (convert_ok && floating))
    return TDM_SUCCESS;
  return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: tensor \"%s\" is %s, the "
                    "parameter \"%s\" is %s%s", file, t->name, t->dtype_name,
                    p->name, tdmi_st_dtype_name(p->dtype),
                    convert_ok || !floating ? ""
                                            : " (TDM_WEIGHTS_CONVERT converts)");
}

/* A tensor to load: wanted[i] names it, found[i] says it was. */
typedef struct {
  item *v;
  int n;
  int *found;
} wanted;

/* Loads from file every wanted item it holds and has not been found. */
static tdm_status load_file(const ctx_t *c, const char *file, wanted *w,
                            int convert_ok) {
  tdmi_st_header h = {0};
  TDMI_TRY(tdmi_tensorio_header(c->e->comm, file, &h));
  item *items = calloc((size_t)w->n + 1, sizeof *items);
  uint64_t *begins = calloc((size_t)w->n + 1, sizeof *begins);
  int n = 0;
  tdm_status st = items && begins ? TDM_SUCCESS : no_memory();
  for (int i = 0; st == TDM_SUCCESS && i < w->n; i++) {
    const tdmi_st_tensor *t = w->found[i] ? NULL
                                          : tdmi_st_find(&h, w->v[i].name);
    if (!t)
      continue;
    st = match(file, t, &c->e->params[w->v[i].param], convert_ok);
    items[n] = w->v[i];
    items[n].dtype = (tdm_dtype)t->dtype;
    begins[n++] = t->begin;
    w->found[i] = 1;
  }
  /* Every rank parsed the same header: the same verdict everywhere. */
  if (st == TDM_SUCCESS)
    st = move_file(c, file, items, n, begins, h.data_start, NULL, 0);
  free(items);
  free(begins);
  tdmi_st_header_free(&h);
  return st;
}

static tdm_status check_found(const wanted *w, const char *where) {
  for (int i = 0; i < w->n; i++)
    if (!w->found[i])
      return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: no tensor \"%s\"",
                        where, w->v[i].name);
  return TDM_SUCCESS;
}

/* Loads the wanted items from each file of lines ("file\n" each). */
static tdm_status load_files(const ctx_t *c, char *lines, wanted *w,
                             int convert_ok, const char *where) {
  tdm_status st = TDM_SUCCESS;
  for (char *f = lines, *end; st == TDM_SUCCESS && (end = strchr(f, '\n'));
       f = end + 1) {
    *end = '\0';
    st = load_file(c, f, w, convert_ok);
  }
  return st == TDM_SUCCESS ? check_found(w, where) : st;
}

static tdm_status wanted_make(item *v, int n, wanted *w) {
  w->v = v;
  w->n = n;
  w->found = calloc((size_t)n + 1, sizeof *w->found);
  return w->found ? TDM_SUCCESS : no_memory();
}

/* The model's values from the model files at path. */
static tdm_status load_values(const ctx_t *c, const char *path,
                              int weights_dtype, int convert_ok,
                              const char *where) {
  item *items = NULL;
  TDMI_TRY(model_items(c->e, TDM_UNSET, &items));
  int n = 0; /* the parameters the model file holds in their own dtype */
  for (int i = 0; i < c->e->nparams; i++)
    if (weights_dtype == TDM_UNSET || weights_dtype == (int)items[i].dtype)
      items[n++] = items[i];
    else
      free(items[i].name);
  wanted w;
  char *lines = NULL;
  tdm_status st = wanted_make(items, n, &w);
  if (st == TDM_SUCCESS && n > 0)
    st = model_files(c->e->comm, path, &lines);
  if (st == TDM_SUCCESS && n > 0)
    st = load_files(c, lines, &w, convert_ok, where);
  free(lines);
  free(w.found);
  items_free(items, n);
  return st;
}

/* optimizer.safetensors: the state buffers, and the masters the model
 * file holds in another dtype. */
static tdm_status load_optimizer(const ctx_t *c, const char *dir,
                                 int weights_dtype) {
  item *items = NULL;
  int n = 0;
  TDMI_TRY(optimizer_items(c, weights_dtype, &items, &n));
  wanted w;
  char *path = path_in(dir, TDMI_CKPT_OPTIMIZER);
  size_t len = path ? strlen(path) : 0;
  char *lines = path ? realloc(path, len + 2) : NULL;
  if (lines)
    memcpy(lines + len, "\n", 2);
  else
    free(path);
  tdm_status st = lines ? wanted_make(items, n, &w) : no_memory();
  if (st == TDM_SUCCESS && n > 0)
    st = load_files(c, lines, &w, 0, dir);
  if (lines)
    free(w.found);
  free(lines);
  items_free(items, n);
  return st;
}

static tdm_status restore_counters(const ctx_t *c, const tdmi_ckpt_state *s) {
  tdm_optimizer *opt = c->opt;
  if (!opt)
    return TDM_SUCCESS;
  opt->steps = s->opt_steps;
  opt->skipped = s->opt_skipped;
  opt->last_skipped = s->last_skipped;
  if (opt->scaling && s->scaling) {
    opt->scale = s->loss_scale;
    opt->growth_tracker = s->growth_tracker;
    tdmi_engine_set_loss_scale(c->e, opt->scale);
  }
  return TDM_SUCCESS;
}

static tdm_status restore_rngs(const ctx_t *c, const tdmi_ckpt_state *s,
                               const tdm_checkpoint_options *o) {
  if (o->rng_count > s->nrngs)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "tdm_load_state: "
                      "options->rng_count = %d, but the checkpoint holds %d "
                      "RNG streams", o->rng_count, s->nrngs);
  /* A rank beyond the saved world size continues rank 0's position. */
  int r = c->e->ctx->rank < s->world_size ? c->e->ctx->rank : 0;
  for (int i = 0; i < o->rng_count; i++)
    TDMI_TRY(tdm_rng_set_offset(o->rngs[i],
                                s->rng_offsets[(size_t)i * s->world_size + r]));
  return TDM_SUCCESS;
}

static tdm_status restore_user(const ctx_t *c, const char *dir,
                               const tdmi_ckpt_state *s,
                               const tdm_checkpoint_options *o) {
  if (o->user_out)
    *o->user_out = (size_t)s->user_bytes;
  if (!o->user_buffer || s->user_bytes == 0)
    return TDM_SUCCESS;
  tdm_status st = TDM_SUCCESS;
  if (o->user_capacity < s->user_bytes)
    st = tdmi_error(TDM_ERR_INVALID_ARGUMENT, "tdm_load_state: "
                    "options->user_capacity = %zu, the saved user data has "
                    "%llu bytes", o->user_capacity,
                    (unsigned long long)s->user_bytes);
  TDMI_TRY(tdmi_agree_status(c->e->comm, st, "tdm_load_state (user data)"));
  char *path = path_in(dir, TDMI_CKPT_USER), *bytes = NULL;
  size_t n = 0;
  st = path ? read_shared(c->e->comm, path, (size_t)s->user_bytes, &bytes, &n)
            : no_memory();
  if (st == TDM_SUCCESS && n != s->user_bytes)
    st = tdmi_error(TDM_ERR_FORMAT, "%s: %zu bytes, state.json says %llu",
                    path, n, (unsigned long long)s->user_bytes);
  if (st == TDM_SUCCESS)
    memcpy(o->user_buffer, bytes, n);
  free(bytes);
  free(path);
  return st;
}

static tdm_status check_compatible(const ctx_t *c, const char *dir,
                                   const tdmi_ckpt_state *s) {
  static const char *const kinds[] = {"sgd", "adam", "adamw", "lion"};
  if (!c->opt)
    return TDM_SUCCESS;
  if (!s->has_optimizer)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "tdm_load_state: %s was "
                      "saved without an optimizer; pass NULL, or "
                      "tdm_load_weights for the values only", dir);
  if (s->optimizer_kind != c->opt->o.kind)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "tdm_load_state: %s holds "
                      "the state of a %s optimizer, this one is %s", dir,
                      kinds[s->optimizer_kind], kinds[c->opt->o.kind]);
  return TDM_SUCCESS;
}

static tdm_status load_body(const ctx_t *c, const char *dir,
                            const tdm_checkpoint_options *o) {
  char *json = NULL, *path = path_in(dir, TDMI_CKPT_STATE);
  size_t n = 0;
  tdmi_ckpt_state s = {0};
  tdm_status st = path ? read_shared(c->e->comm, path, MAX_STATE_JSON, &json,
                                     &n)
                       : no_memory();
  if (st == TDM_SUCCESS) /* the same text everywhere: the same verdict */
    st = tdmi_state_parse(path, json, n, &s);
  if (st == TDM_SUCCESS)
    st = check_compatible(c, dir, &s);
  if (st == TDM_SUCCESS)
    st = load_values(c, dir, s.weights_dtype, 0, dir);
  if (st == TDM_SUCCESS && (c->opt || s.weights_dtype != TDM_UNSET))
    st = load_optimizer(c, dir, s.weights_dtype);
  if (st == TDM_SUCCESS)
    st = tdmi_agree_status(c->e->comm, restore_rngs(c, &s, o), "tdm_load_state");
  if (st == TDM_SUCCESS)
    st = restore_user(c, dir, &s, o);
  if (st == TDM_SUCCESS)
    st = restore_counters(c, &s);
  if (st == TDM_SUCCESS)
    st = tdmi_engine_values_loaded(c->e);
  tdmi_state_free(&s);
  free(json);
  free(path);
  return st;
}

tdm_status tdm_load_state(tdm_engine *e, tdm_optimizer *opt, const char *path,
                          const tdm_checkpoint_options *options) {
  const char *fn = "tdm_load_state";
  tdm_checkpoint_options o;
  tdm_status st = check_between_steps(e, opt, fn);
  if (st == TDM_SUCCESS)
    st = tdmi_check_ptr(fn, path, "path");
  if (st == TDM_SUCCESS)
    st = read_options(options, &o, fn);
  if (tdmi_engine_check(e, fn) != TDM_SUCCESS)
    return st;
  TDMI_TRY(tdmi_agree_status(e->comm, st, fn));
  char dir[4096] = "";
  st = e->ctx->rank == 0 ? resolve_checkpoint(path, dir, sizeof dir)
                         : TDM_SUCCESS;
  TDMI_TRY(tdmi_agree_status(e->comm, st, fn));
  TDMI_TRY(share_string(e->comm, dir, sizeof dir));
  const ctx_t c = {e, opt, 1};
  TDMI_TRY(load_body(&c, dir, &o));
  put_path(&o, dir);
  return TDM_SUCCESS;
}

tdm_status tdm_load_weights(tdm_engine *e, const char *path, int flags) {
  const char *fn = "tdm_load_weights";
  tdm_status st = check_between_steps(e, NULL, fn);
  if (st == TDM_SUCCESS)
    st = tdmi_check_ptr(fn, path, "path");
  if (st == TDM_SUCCESS && (flags & ~TDM_WEIGHTS_CONVERT))
    st = tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: flags = %d; expected 0 "
                    "or TDM_WEIGHTS_CONVERT", fn, flags);
  if (tdmi_engine_check(e, fn) != TDM_SUCCESS)
    return st;
  TDMI_TRY(tdmi_agree_status(e->comm, st, fn));
  const ctx_t c = {e, NULL, 1};
  TDMI_TRY(load_values(&c, path, TDM_UNSET, flags & TDM_WEIGHTS_CONVERT,
                       path));
  return tdmi_engine_values_loaded(e);
}

tdm_status tdm_checkpoint_options_init(tdm_checkpoint_options *options) {
  TDMI_CHECK_PTR(options, "tdm_checkpoint_options_init");
  tdm_checkpoint_options init = TDM_CHECKPOINT_OPTIONS_INIT;
  *options = init;
  return TDM_SUCCESS;
}
