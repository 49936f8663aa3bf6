/* tensors.c - what the checkpoint calls share: which tensors a checkpoint
 * holds, where each rank's part of each lives in the engine, and moving
 * those parts between the engine and a file (save.c, load.c).
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
static char *array_at(const tdmi_ckpt_ctx *c, const tdmi_param *p, int which,
                      size_t elem) {
  int i = span_of(c->e, p);
  tdmi_span s = tdmi_engine_span(c->e, i);
  void *base = which == TDMI_CKPT_VALUES   ? s.data
               : which == TDMI_CKPT_STATE0 ? c->opt->spans[i].state0
                                 : c->opt->spans[i].state1;
  return base ? (char *)base + (elem - s.first) * tdmi_dtype_size(s.dtype)
              : NULL;
}

/* This rank's elements [*lo, *hi) of p (counted within p). */
static void own_range(const tdmi_ckpt_ctx *c, const tdmi_param *p, size_t *lo,
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

/* Copies (saving) or places (loading) elements [lo, hi) of tdmi_ckpt_item it
 * between the engine and bytes (it->dtype). */
static tdm_status stage(const tdmi_ckpt_ctx *c, const tdmi_ckpt_item *it, size_t lo, size_t hi,
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
  const tdmi_ckpt_item **what; /* per piece added, or NULL (the header) */
  size_t *lo, *hi;
  size_t *buf_off;
  size_t n, cap;
} moves;

static tdm_status moves_add(moves *m, const tdmi_ckpt_item *it, uint64_t file_off,
                            size_t lo, size_t hi, size_t esize) {
  if (m->n == m->cap) {
    size_t cap = m->cap ? 2 * m->cap : 32;
    const tdmi_ckpt_item **w = realloc(m->what, cap * sizeof *w);
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

/* Moves every tdmi_ckpt_item of file between the engine and the file: data_start
 * and begins[i] place tdmi_ckpt_item i's tensor.  prefix (rank 0, saving) is the
 * header written at offset 0. */
tdm_status tdmi_ckpt_move_file(const tdmi_ckpt_ctx *c, const char *file, const tdmi_ckpt_item *items,
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

tdm_status tdmi_ckpt_read_options(const tdm_checkpoint_options *in,
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
tdm_status tdmi_ckpt_check_between_steps(tdm_engine *e, tdm_optimizer *opt,
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

void tdmi_ckpt_put_path(const tdm_checkpoint_options *o, const char *dir) {
  if (o->path_out && o->path_capacity > 0)
    snprintf(o->path_out, o->path_capacity, "%s", dir);
}

/* ---- the tensors of a checkpoint ---- */

static const char *state_name(int kind, int which) {
  if (kind == TDM_OPTIMIZER_SGD)
    return "momentum_buffer";
  return which == TDMI_CKPT_STATE0 ? "exp_avg" : "exp_avg_sq";
}

char *tdmi_ckpt_concat(const char *a, const char *b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char *s = malloc(n);
  if (s)
    snprintf(s, n, "%s%s%s", a, *b ? "." : "", b);
  return s;
}

void tdmi_ckpt_items_free(tdmi_ckpt_item *v, int n) {
  for (int i = 0; v && i < n; i++)
    free(v[i].name);
  free(v);
}

/* The model file's items: every parameter's values in dtype (TDM_UNSET:
 * its own). */
tdm_status tdmi_ckpt_model_items(const tdm_engine *e, int dtype, tdmi_ckpt_item **out) {
  tdmi_ckpt_item *v = calloc((size_t)e->nparams + 1, sizeof *v);
  if (!v)
    return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory");
  for (int i = 0; i < e->nparams; i++) {
    v[i] = (tdmi_ckpt_item){i, TDMI_CKPT_VALUES,
                  dtype == TDM_UNSET ? e->params[i].dtype : (tdm_dtype)dtype,
                  strdup(e->params[i].name)};
    if (!v[i].name) {
      tdmi_ckpt_items_free(v, i);
      return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory");
    }
  }
  *out = v;
  return TDM_SUCCESS;
}

/* Whether the optimizer keeps state buffer which (the kind's; every span
 * has the same ones). */
int tdmi_ckpt_opt_has(const tdm_optimizer *opt, int which) {
  if (!opt || opt->nspans == 0)
    return 0;
  return (which == TDMI_CKPT_STATE0 ? opt->spans[0].state0 : opt->spans[0].state1) !=
         NULL;
}

/* optimizer.safetensors: each state buffer per parameter, and the master
 * values when the model file holds them in another dtype. */
tdm_status tdmi_ckpt_optimizer_items(const tdmi_ckpt_ctx *c, int weights_dtype,
                                  tdmi_ckpt_item **out, int *n) {
  const tdm_engine *e = c->e;
  tdmi_ckpt_item *v = calloc(3 * (size_t)e->nparams + 1, sizeof *v);
  if (!v)
    return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory");
  *n = 0;
  int kind = c->opt ? c->opt->o.kind : 0;
  for (int i = 0; i < e->nparams; i++) {
    const tdmi_param *p = &e->params[i];
    int master = weights_dtype != TDM_UNSET && weights_dtype != (int)p->dtype;
    for (int which = TDMI_CKPT_VALUES; which <= TDMI_CKPT_STATE1; which++) {
      int used = which == TDMI_CKPT_VALUES ? master : tdmi_ckpt_opt_has(c->opt, which);
      if (!used)
        continue;
      v[*n] = (tdmi_ckpt_item){i, which, p->dtype,
                     tdmi_ckpt_concat(p->name, which == TDMI_CKPT_VALUES ? "master"
                                                     : state_name(kind, which))};
      if (!v[(*n)++].name) {
        tdmi_ckpt_items_free(v, *n);
        return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory");
      }
    }
  }
  *out = v;
  return TDM_SUCCESS;
}

/* ---- small helpers ---- */

char *tdmi_path_in(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *s = malloc(n);
  if (s)
    snprintf(s, n, "%s/%s", dir, name);
  return s;
}

tdm_status tdmi_ckpt_no_memory(void) {
  return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory");
}

uint64_t tdmi_ckpt_tensor_bytes(const tdm_engine *e, const tdmi_ckpt_item *it) {
  return e->params[it->param].numel * tdmi_dtype_size(it->dtype);
}

/* Rank 0 writes a small file of the checkpoint. */
tdm_status tdmi_ckpt_write_small(const char *dir, const char *name,
                              const void *bytes, size_t n) {
  char *path = tdmi_path_in(dir, name);
  tdm_status st = path ? tdmi_write_file(path, bytes, n) : tdmi_ckpt_no_memory();
  free(path);
  return st;
}

/* The folder names rank 0 chose, on every rank. */
tdm_status tdmi_ckpt_share_string(MPI_Comm comm, char *s, size_t cap) {
  return tdmi_bcast_bytes(comm, s, cap, 0);
}

tdm_status tdm_checkpoint_options_init(tdm_checkpoint_options *options) {
  TDMI_CHECK_PTR(options, "tdm_checkpoint_options_init");
  tdm_checkpoint_options init = TDM_CHECKPOINT_OPTIONS_INIT;
  *options = init;
  return TDM_SUCCESS;
}
