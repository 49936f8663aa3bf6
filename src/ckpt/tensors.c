/* tensors.c - what the checkpoint calls share: which tensors a checkpoint
 * holds, where each rank's part of each lives in the engine, and moving
 * those parts between the engine and a file (save.c, load.c).
 *
 * Every tensor of a checkpoint is a whole logical tensor.  Each rank moves
 * only its part of each: under ZeRO the elements it owns (so a ZeRO-3
 * model is saved without any rank holding it whole); under DDP, where
 * every rank holds everything, an even split of each tensor, read shares
 * then going to every rank with an allgather.  Loading reads the parts
 * the engine of now owns, whatever the world size and stage at save, then
 * refreshes compute copies and gathers as after an update.  Host arrays
 * in the file's dtype move straight between the file and the engine;
 * device arrays and converted dtypes go through a staging buffer. */
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
    *lo = p->numel * r / n;
    *hi = p->numel * (r + 1) / n;
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

tdm_status tdmi_ckpt_convert(tdm_dtype from, const void *in, tdm_dtype to,
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

/* ---- moving the parts ---- */

/* Whether item it's part moves straight between its engine array and the
 * file: host memory (the CPU, or offloaded state) in the file's dtype. */
static int direct(const tdmi_ckpt_ctx *c, const tdmi_ckpt_item *it) {
  const tdmi_param *p = &c->e->params[it->param];
  return it->dtype == p->dtype &&
         (!c->e->ops.on_device ||
          tdmi_engine_span(c->e, span_of(c->e, p)).host);
}

/* Copies (saving) or places (loading) elements [lo, hi) of item it
 * between the engine and bytes (it->dtype): through a device copy or a
 * dtype conversion. */
static tdm_status stage(const tdmi_ckpt_ctx *c, const tdmi_ckpt_item *it,
                        size_t lo, size_t hi, char *bytes) {
  const tdmi_param *p = &c->e->params[it->param];
  char *arr = array_at(c, p, it->which, p->first + lo);
  size_t n = hi - lo, asize = tdmi_dtype_size(p->dtype);
  if (it->dtype == p->dtype)
    return c->loading ? tdmi_ops_copy(&c->e->ops, arr, bytes, n * asize)
                      : tdmi_ops_copy(&c->e->ops, bytes, arr, n * asize);
  char *tmp = malloc(n * asize + 1);
  if (!tmp)
    return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory for "
                      "%zu elements of %s", n, it->name);
  tdm_status st;
  if (c->loading) {
    st = tdmi_ckpt_convert(it->dtype, bytes, p->dtype, tmp, n);
    if (st == TDM_SUCCESS)
      st = tdmi_ops_copy(&c->e->ops, arr, tmp, n * asize);
  } else {
    st = tdmi_ops_copy(&c->e->ops, tmp, arr, n * asize);
    if (st == TDM_SUCCESS)
      st = tdmi_ops_synchronize(&c->e->ops);
    if (st == TDM_SUCCESS)
      st = tdmi_ckpt_convert(p->dtype, tmp, it->dtype, bytes, n);
  }
  if (st == TDM_SUCCESS) /* tmp is freed once its copy has run */
    st = tdmi_ops_synchronize(&c->e->ops);
  free(tmp);
  return st;
}

/* Bytes of item it's part [lo, hi) that go through staging (0: direct). */
static size_t staged_bytes(const tdmi_ckpt_ctx *c, const tdmi_ckpt_item *it,
                           size_t lo, size_t hi) {
  return direct(c, it) ? 0 : (hi - lo) * tdmi_dtype_size(it->dtype);
}

/* The staging buffer of a file and where each item's part is in it. */
typedef struct {
  char *buf;
  size_t *at; /* per item; unused for direct ones */
} staging;

static tdm_status staging_make(const tdmi_ckpt_ctx *c,
                               const tdmi_ckpt_item *items, int n,
                               staging *sg) {
  size_t total = 0, lo, hi;
  sg->buf = NULL;
  sg->at = calloc((size_t)n + 1, sizeof *sg->at);
  for (int i = 0; sg->at && i < n; i++) {
    own_range(c, &c->e->params[items[i].param], &lo, &hi);
    sg->at[i] = total;
    total += staged_bytes(c, &items[i], lo, hi);
  }
  if (sg->at && total > 0)
    sg->buf = malloc(total);
  if (!sg->at || (total > 0 && !sg->buf))
    return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory for "
                      "%zu staging bytes", total);
  return TDM_SUCCESS;
}

static void staging_free(staging *sg) {
  free(sg->buf);
  free(sg->at);
}

/* Where item i's part is in memory: its engine array, or staging. */
static char *part_memory(const tdmi_ckpt_ctx *c, const tdmi_ckpt_item *it,
                         const staging *sg, int i, size_t lo) {
  const tdmi_param *p = &c->e->params[it->param];
  return direct(c, it) ? array_at(c, p, it->which, p->first + lo)
                       : sg->buf + sg->at[i];
}

/* Each item's part: staged before a write, or placed after a read. */
static tdm_status stage_all(const tdmi_ckpt_ctx *c,
                            const tdmi_ckpt_item *items, int n,
                            const staging *sg) {
  size_t lo, hi;
  for (int i = 0; i < n; i++) {
    own_range(c, &c->e->params[items[i].param], &lo, &hi);
    if (hi > lo && !direct(c, &items[i]))
      TDMI_TRY(stage(c, &items[i], lo, hi, sg->buf + sg->at[i]));
  }
  return tdmi_ops_synchronize(&c->e->ops);
}

/* The all-gather of the shares, for tdmi_run_fn. */
typedef struct {
  void *full;
  const int *count, *disp;
  MPI_Datatype elem;
  MPI_Comm comm;
} gatherv_call;

static int gatherv(void *arg) {
  gatherv_call *g = arg;
  return MPI_Allgatherv(MPI_IN_PLACE, 0, g->elem, g->full, g->count, g->disp,
                        g->elem, g->comm);
}

/* DDP: every rank read its share of item it; the shares go to all. */
static tdm_status share_loaded(const tdmi_ckpt_ctx *c,
                               const tdmi_ckpt_item *it) {
  const tdmi_param *p = &c->e->params[it->param];
  int n = c->e->ctx->size;
  size_t esize = tdmi_dtype_size(p->dtype), bytes = p->numel * esize;
  char *arr = array_at(c, p, it->which, p->first);
  int host = !c->e->ops.on_device;
  char *full = host ? arr : malloc(bytes + 1);
  int *count = calloc((size_t)n, sizeof *count);
  int *disp = calloc((size_t)n, sizeof *disp);
  tdm_status st = full && count && disp ? TDM_SUCCESS : tdmi_ckpt_no_memory();
  if (p->numel > (size_t)INT32_MAX)
    st = tdmi_error(TDM_ERR_NOT_SUPPORTED, "%s: %zu elements: a DDP load of "
                    "a tensor over 2^31 elements is not supported (load it "
                    "at ZeRO stage 1 or above)", it->name, p->numel);
  for (int r = 0; st == TDM_SUCCESS && r < n; r++) {
    disp[r] = (int)(p->numel * (size_t)r / (size_t)n);
    count[r] = (int)(p->numel * (size_t)(r + 1) / (size_t)n) - disp[r];
  }
  size_t mine = (size_t)disp[c->e->ctx->rank];
  if (st == TDM_SUCCESS && !host)
    st = tdmi_ops_copy(&c->e->ops, full + mine * esize, arr + mine * esize,
                       (size_t)count[c->e->ctx->rank] * esize);
  if (st == TDM_SUCCESS && !host)
    st = tdmi_ops_synchronize(&c->e->ops);
  st = tdmi_agree(c->e->comm, st, it->name);
  MPI_Datatype elem = MPI_DATATYPE_NULL;
  if (st == TDM_SUCCESS) {
    MPI_Type_contiguous((int)esize, MPI_BYTE, &elem);
    MPI_Type_commit(&elem);
    gatherv_call g = {full, count, disp, elem, c->e->comm};
    st = tdmi_run_fn(c->e->comm, "MPI_Allgatherv (checkpoint tensor)", bytes,
                     gatherv, &g);
    MPI_Type_free(&elem);
  }
  if (st == TDM_SUCCESS && !host)
    st = tdmi_ops_copy(&c->e->ops, arr, full, bytes);
  if (st == TDM_SUCCESS && !host)
    st = tdmi_ops_synchronize(&c->e->ops);
  if (!host)
    free(full);
  free(count);
  free(disp);
  return st;
}

/* The pieces of a file: the header (rank 0, saving) and each item's
 * part. */
static tdm_status pieces_of(const tdmi_ckpt_ctx *c,
                            const tdmi_ckpt_item *items, int n,
                            const uint64_t *begins, uint64_t data_start,
                            const uint8_t *prefix, size_t prefix_len,
                            const staging *sg, tdmi_pieces *pc) {
  TDMI_TRY(tdmi_pieces_add(pc, 0, prefix_len, prefix));
  for (int i = 0; i < n; i++) {
    size_t lo, hi, esize = tdmi_dtype_size(items[i].dtype);
    own_range(c, &c->e->params[items[i].param], &lo, &hi);
    if (hi > lo)
      TDMI_TRY(tdmi_pieces_add(pc, data_start + begins[i] + lo * esize,
                               (hi - lo) * esize,
                               part_memory(c, &items[i], sg, i, lo)));
  }
  return TDM_SUCCESS;
}

tdm_status tdmi_ckpt_move_file(const tdmi_ckpt_ctx *c, const char *file,
                               const tdmi_ckpt_item *items, int nitems,
                               const uint64_t *begins, uint64_t data_start,
                               const uint8_t *prefix, size_t prefix_len) {
  staging sg = {0};
  tdmi_pieces pc = {0};
  tdm_status st = staging_make(c, items, nitems, &sg);
  if (st == TDM_SUCCESS)
    st = pieces_of(c, items, nitems, begins, data_start, prefix, prefix_len,
                   &sg, &pc);
  if (st == TDM_SUCCESS && !c->loading)
    st = stage_all(c, items, nitems, &sg);
  st = tdmi_agree(c->e->comm, st, file);
  if (st == TDM_SUCCESS)
    st = c->loading ? tdmi_tensorio_read(c->e->comm, file, &pc)
                    : tdmi_tensorio_write(c->e->comm, file, &pc);
  if (st == TDM_SUCCESS && c->loading)
    st = tdmi_agree(c->e->comm, stage_all(c, items, nitems, &sg), file);
  for (int i = 0; st == TDM_SUCCESS && c->loading && c->e->stage == 0 &&
                  c->e->ctx->size > 1 && i < nitems; i++)
    st = share_loaded(c, &items[i]);
  tdmi_pieces_free(&pc);
  staging_free(&sg);
  return st;
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
  if (kind == TDM_OPTIMIZER_CUSTOM)
    return which == TDMI_CKPT_STATE0 ? "state0" : "state1";
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
