/* layout.c - where every element lives.  Parameters are laid out in the
 * order gradients arrive (reverse registration; ZeRO-3: module by module,
 * last module first), every tensor on a 32-element boundary, and cut into
 * buckets.  Under ZeRO each bucket is padded to world-size equal chunks,
 * so its gradients are reduce-scattered as they are and rank r owns chunk
 * r of every bucket; a rank's chunks, bucket after bucket, form its shard
 * buffers.  Then the buffers of the stage are allocated and filled with
 * rank 0's initial values, one bucket at a time. */
#include <stdlib.h>
#include <string.h>

#include "engine.h"

static size_t align_up(size_t n) {
  return (n + TDMI_ALIGN_ELEMS - 1) / TDMI_ALIGN_ELEMS * TDMI_ALIGN_ELEMS;
}

/* Stages 0-2: reverse registration.  Stage 3: whole modules, last first,
 * each module's parameters in reverse registration order. */
static void fill_order(tdm_engine *e) {
  int n = 0;
  if (e->stage < 3) {
    for (int i = e->nparams - 1; i >= 0; i--)
      e->order[n++] = i;
    return;
  }
  for (int m = e->nmodules - 1; m >= 0; m--)
    for (int j = e->modules[m].nparams - 1; j >= 0; j--)
      e->order[n++] = e->modules[m].params[j];
}

/* Whether parameter p cannot join bucket b. */
static int closes(const tdm_engine *e, const tdmi_bucket *b, int nb,
                  const tdmi_param *p) {
  if (!b || b->dtype != p->dtype)
    return 1;
  if (e->stage == 3)
    return b->module != p->module;
  const tdmi_flat *f = &e->flat[p->dtype];
  size_t end = align_up(f->count) + p->numel;
  size_t cap = nb <= 1 ? e->first_bucket_cap : e->bucket_cap;
  return (end - b->first) * tdmi_dtype_size(f->grad_dtype) > cap;
}

/* ZeRO: pads bucket b to size equal chunks of whole cache lines and
 * places this rank's chunk in the shard buffers. */
static void seal(tdm_engine *e, tdmi_bucket *b) {
  tdmi_flat *f = &e->flat[b->dtype];
  size_t n = (size_t)e->ctx->size;
  if (e->stage > 0) {
    b->chunk = align_up((b->count + n - 1) / n);
    b->count = b->chunk * n;
    f->count = b->first + b->count;
    b->shard_first = f->shard_count;
    f->shard_count += b->chunk;
  } else {
    b->chunk = b->count;
  }
  b->bytes = b->count * tdmi_dtype_size(b->grad_dtype);
}

void tdmi_layout_dtypes(tdm_engine *e) {
  tdm_dtype copy = e->precision == TDM_PRECISION_BF16 ? TDM_BF16 : TDM_F16;
  for (int d = 0; d < TDM_NUM_DTYPES; d++) {
    tdmi_flat *f = &e->flat[d];
    /* f32 math keeps f32 gradients, and a 16-bit reduce dtype is only
     * what goes on the wire; 16-bit compute copies get 16-bit gradients */
    int mixed = e->precision != TDM_PRECISION_NO;
    f->grad_dtype = d == TDM_F32 && mixed ? e->reduce_dtype : (tdm_dtype)d;
    f->wire_dtype = d == TDM_F32 ? e->reduce_dtype : (tdm_dtype)d;
    f->copied = d == TDM_F32 && e->precision != TDM_PRECISION_NO;
    f->copy_dtype = copy;
  }
}

/* Element offsets of every parameter and the buckets, walking the layout
 * order; a bucket closes at a dtype change, at the cap (stages 0-2) or at
 * a module change (stage 3). */
static int assign(tdm_engine *e) {
  int nb = 0;
  tdmi_bucket *b = NULL;
  for (int k = 0; k < e->nparams; k++) {
    tdmi_param *p = &e->params[e->order[k]];
    tdmi_flat *f = &e->flat[p->dtype];
    if (closes(e, b, nb, p)) {
      if (b)
        seal(e, b);
      b = &e->buckets[nb++];
      memset(b, 0, sizeof *b);
      b->dtype = p->dtype;
      b->grad_dtype = f->grad_dtype;
      b->wire_dtype = f->wire_dtype;
      b->first = align_up(f->count);
      b->order_first = k;
      b->module = e->stage == 3 ? p->module : -1;
      tdmi_xfer_init(&b->reduce);
      tdmi_xfer_init(&b->gather);
      b->reduce.bucket = b->gather.bucket = nb - 1;
      if (e->stage == 3 && e->modules[p->module].nbuckets++ == 0)
        e->modules[p->module].bucket_first = nb - 1;
    }
    p->first = align_up(f->count);
    f->count = p->first + p->numel;
    b->count = f->count - b->first;
    b->nparams++;
    p->bucket = nb - 1;
  }
  if (b)
    seal(e, b);
  for (int d = 0; d < TDM_NUM_DTYPES; d++)
    e->flat[d].count = align_up(e->flat[d].count);
  return nb;
}

/* One buffer of a tdmi_flat: its pointer and what it holds. */
typedef struct {
  void **slot;
  size_t count;
  tdm_dtype dtype;
  tdm_memory_category category;
  tdmi_mem_kind kind;
} flat_buffer;

enum { MAX_FLAT_BUFFERS = 8 };

/* The buffers dtype d has at this stage and offload (see tdmi_flat), in
 * out; returns how many. */
static int flat_buffers(tdm_engine *e, tdm_dtype d, flat_buffer *out) {
  tdmi_flat *f = &e->flat[d];
  int s = e->stage, n = 0;
  tdmi_mem_kind dev = tdmi_ops_compute_mem(&e->ops);
  tdmi_mem_kind host = e->offloaded ? TDMI_MEM_PINNED : dev;
  int params_out = e->offloaded && e->offload == TDM_OFFLOAD_PARAMS;
  /* compute values apart from the master, so the master is "master
   * weights" even in f32 */
  int apart = f->copied || (e->offloaded && !params_out);
  tdm_memory_category values = apart ? TDM_MEM_MASTER_WEIGHTS : TDM_MEM_PARAMS;
  size_t full = f->count, shard = f->shard_count;
#define ADD(p, c, t, cat, k) \
  out[n++] = (flat_buffer){(void **)&(p), c, t, cat, k}
  if (s == 0 || (s <= 2 && !f->copied))
    ADD(f->data, full, d, f->copied ? TDM_MEM_MASTER_WEIGHTS : TDM_MEM_PARAMS,
        dev);
  if (f->copied && s <= 2)
    ADD(f->copy, full, f->copy_dtype, TDM_MEM_PARAMS, dev);
  if (s <= 1)
    ADD(f->grad, full, f->grad_dtype, TDM_MEM_GRADS, dev);
  if ((s >= 1 && s <= 2 && (f->copied || e->offloaded)) || s == 3)
    ADD(f->master, shard, d, values, host);
  if (s == 3 && apart)
    ADD(f->shard_copy, shard, tdmi_flat_compute_dtype(f, d), TDM_MEM_PARAMS,
        params_out ? TDMI_MEM_PINNED : dev);
  if (s >= 2)
    ADD(f->shard_grad, shard, f->grad_dtype, TDM_MEM_GRADS, dev);
  if (e->offloaded)
    ADD(f->host_grad, shard, f->grad_dtype, TDM_MEM_GRADS, TDMI_MEM_PINNED);
  if (e->offloaded && f->copied && !params_out)
    ADD(f->host_copy, shard, f->copy_dtype, TDM_MEM_PARAMS, TDMI_MEM_PINNED);
#undef ADD
  return n;
}

static tdm_status allocate_flat(tdm_engine *e, tdm_dtype d) {
  flat_buffer buf[MAX_FLAT_BUFFERS];
  int n = flat_buffers(e, d, buf);
  for (int i = 0; i < n; i++) {
    flat_buffer *b = &buf[i];
    *b->slot = tdmi_engine_alloc_in(e, b->kind, b->category, b->count,
                                    b->dtype);
    if (b->count && !*b->slot)
      return tdmi_error(TDM_ERR_NO_MEMORY,
                        "tdm_prepare: out of %s memory for %zu %s "
                        "parameters (zero stage %d)",
                        b->kind == TDMI_MEM_DEVICE ? "device" : "host",
                        e->flat[d].count, tdmi_dtype_name(d), e->stage);
  }
  return TDM_SUCCESS;
}

static void free_flat(tdm_engine *e, tdm_dtype d) {
  flat_buffer buf[MAX_FLAT_BUFFERS];
  int n = flat_buffers(e, d, buf);
  for (int i = 0; i < n; i++)
    tdmi_engine_free_in(e, buf[i].kind, buf[i].category, *buf[i].slot,
                        buf[i].count, buf[i].dtype);
}

tdm_status tdmi_layout_build(tdm_engine *e) {
  size_t n = (size_t)(e->nparams ? e->nparams : 1);
  e->order = malloc(sizeof *e->order * n);
  e->buckets = malloc(sizeof *e->buckets * n);
  if (!e->order || !e->buckets)
    return tdmi_error(TDM_ERR_NO_MEMORY, "tdm_prepare: out of memory");
  fill_order(e);
  e->nbuckets = assign(e);
  TDMI_TRY(tdmi_window_reserve(e));
  for (int d = 0; d < TDM_NUM_DTYPES; d++)
    if (e->flat[d].count)
      TDMI_TRY(allocate_flat(e, (tdm_dtype)d));
  return TDM_SUCCESS;
}

static size_t module_numel(const tdm_engine *e, int m) {
  size_t n = 0;
  for (int j = 0; j < e->modules[m].nparams; j++)
    n += e->params[e->modules[m].params[j]].numel;
  return n;
}

/* ZeRO-3: a small module's bucket stays gathered, from these values. */
static tdm_status keep_gathered(tdm_engine *e, tdmi_bucket *b,
                                const void *values) {
  const tdmi_flat *f = &e->flat[b->dtype];
  tdm_dtype cd = tdmi_flat_compute_dtype(f, b->dtype);
  b->persistent = 1;
  TDMI_TRY(tdmi_bucket_hold_values(e, b, "tdm_prepare"));
  return f->copied ? tdmi_ops_convert(&e->ops, b->dtype, values, cd,
                                      b->gathered, b->count)
                   : tdmi_ops_copy(&e->ops, b->gathered, values,
                                   b->count * tdmi_dtype_size(cd));
}

/* Copies the full values of bucket b (rank 0's, already broadcast) into
 * the buffers of the stage. */
static tdm_status distribute(tdm_engine *e, tdmi_bucket *b,
                             const char *values, const char *host) {
  tdmi_flat *f = &e->flat[b->dtype];
  size_t esize = tdmi_dtype_size(b->dtype);
  size_t csize = tdmi_dtype_size(f->copy_dtype);
  const char *mine = values + (size_t)e->ctx->rank * b->chunk * esize;
  tdmi_ops *o = &e->ops;
  if (f->copy)
    TDMI_TRY(tdmi_ops_convert(o, b->dtype, values, f->copy_dtype,
                              (char *)f->copy + b->first * csize, b->count));
  if (f->master)
    TDMI_TRY(tdmi_ops_copy(o, (char *)f->master + b->shard_first * esize,
                           mine, b->chunk * esize));
  /* offload=params: a host shard, converted from the host's values */
  int host_shard = e->offloaded && e->offload == TDM_OFFLOAD_PARAMS;
  const char *src = host_shard ? host + (mine - values) : mine;
  if (f->shard_copy && f->copied)
    TDMI_TRY(tdmi_ops_convert(o, b->dtype, src, f->copy_dtype,
                              (char *)f->shard_copy + b->shard_first * csize,
                              b->chunk));
  else if (f->shard_copy)
    TDMI_TRY(tdmi_ops_copy(o, (char *)f->shard_copy + b->shard_first * esize,
                           mine, b->chunk * esize));
  if (e->stage == 3 && module_numel(e, b->module) < e->persist_numel)
    return keep_gathered(e, b, values);
  return TDM_SUCCESS;
}

/* Rank 0's registered values of bucket b, on every rank, in host memory
 * (zero where none were given). */
static tdm_status bucket_values(tdm_engine *e, const tdmi_bucket *b,
                                char *values) {
  size_t esize = tdmi_dtype_size(b->dtype);
  memset(values, 0, b->count * esize);
  for (int k = b->order_first; k < b->order_first + b->nparams; k++) {
    tdmi_param *p = &e->params[e->order[k]];
    if (p->initial)
      memcpy(values + (p->first - b->first) * esize, p->initial,
             p->numel * esize);
  }
  return tdmi_bcast_bytes(e->comm, values, b->count * esize, 0);
}

/* Bucket b's values: registered values, broadcast from rank 0, then
 * distributed.  Where full values are kept they are filled in place;
 * otherwise a bucket-sized scratch is used, so no rank ever holds the
 * whole model at once.  On a device the values cross once, then are
 * distributed there. */
static tdm_status load_bucket(tdm_engine *e, tdmi_bucket *b) {
  tdmi_flat *f = &e->flat[b->dtype];
  size_t bytes = b->count * tdmi_dtype_size(b->dtype);
  char *full = f->data ? (char *)f->data + b->first * tdmi_dtype_size(b->dtype)
                       : NULL;
  tdmi_mem_kind kind = tdmi_ops_compute_mem(&e->ops);
  int device = kind == TDMI_MEM_DEVICE;
  size_t lines = (bytes / TDMI_ALIGN + 1) * TDMI_ALIGN; /* never 0 */
  char *host = device || !full ? aligned_alloc(TDMI_ALIGN, lines) : full;
  char *values = full, *scratch = NULL;
  tdm_status st = host ? TDM_SUCCESS
                       : tdmi_error(TDM_ERR_NO_MEMORY, "tdm_prepare: out of "
                                    "memory for %zu bytes", bytes);
  if (st == TDM_SUCCESS && !full)
    st = device ? tdmi_ops_alloc(&e->ops, kind, bytes, (void **)&scratch)
                : TDM_SUCCESS;
  if (!full)
    values = device ? scratch : host;
  if (st == TDM_SUCCESS)
    st = bucket_values(e, b, host);
  if (st == TDM_SUCCESS && values != host)
    st = tdmi_ops_copy(&e->ops, values, host, bytes);
  if (st == TDM_SUCCESS)
    st = distribute(e, b, values, host);
  if (st == TDM_SUCCESS) /* the copies read host before it goes */
    st = tdmi_ops_synchronize(&e->ops);
  if (host != full)
    free(host);
  tdmi_ops_free(&e->ops, kind, scratch);
  return st;
}

tdm_status tdmi_layout_load_initial(tdm_engine *e) {
  tdm_status st = TDM_SUCCESS;
  for (int b = 0; b < e->nbuckets && st == TDM_SUCCESS; b++)
    st = load_bucket(e, &e->buckets[b]);
  for (int i = 0; i < e->nparams; i++) {
    free(e->params[i].initial);
    e->params[i].initial = NULL;
  }
  return st;
}

void tdmi_layout_free(tdm_engine *e) {
  for (int b = 0; b < e->nbuckets; b++) {
    tdmi_bucket *bk = &e->buckets[b];
    tdmi_xfer_free(e, &bk->reduce);
    tdmi_xfer_free(e, &bk->gather);
    tdmi_bucket_drop_grads(e, bk);
    tdmi_wire_close(e, bk);
  }
  tdmi_window_free(e);
  for (int d = 0; d < TDM_NUM_DTYPES; d++) {
    free_flat(e, (tdm_dtype)d);
    memset(&e->flat[d], 0, sizeof e->flat[d]);
  }
  free(e->order);
  free(e->buckets);
  e->order = NULL;
  e->buckets = NULL;
  e->nbuckets = 0;
}
