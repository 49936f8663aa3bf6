/* fetch.c - ZeRO-3 parameter gathering, and the buffers tdm_param_buffers
 * hands out.  A module's buckets are all-gathered from every rank's shard
 * when it is fetched; the modules that follow in the direction of the
 * last fetches are gathered ahead, up to prefetch_bytes, while the user
 * computes.  Gathers run on their own communicator: their order (the
 * user's fetches) is the same on every rank, independent of when
 * gradient buckets become ready. */
#include <string.h>

#include "engine.h"

static tdm_dtype compute_dtype(const tdm_engine *e, const tdmi_bucket *b) {
  return tdmi_flat_compute_dtype(&e->flat[b->dtype], b->dtype);
}

static size_t gathered_bytes(const tdm_engine *e, const tdmi_bucket *b) {
  return b->count * tdmi_dtype_size(compute_dtype(e, b));
}

/* The shard gathers come from: the compute copy's shard, or the values'. */
static const void *shard_source(const tdm_engine *e, const tdmi_bucket *b) {
  const tdmi_flat *f = &e->flat[b->dtype];
  size_t csize = tdmi_dtype_size(compute_dtype(e, b));
  const char *base = f->shard_copy ? f->shard_copy : f->master;
  return base + b->shard_first * csize;
}

static tdm_status start_gather(tdm_engine *e, tdmi_bucket *b) {
  tdm_dtype cd = compute_dtype(e, b);
  if (!b->gathered) {
    TDMI_TRY(tdmi_bucket_hold_values(e, b, "tdm_fetch_module"));
    if (!b->persistent)
      tdmi_mem_gathered(e, (int64_t)gathered_bytes(e, b));
  }
  size_t bytes = b->chunk * tdmi_dtype_size(cd);
  uint64_t n = (uint64_t)e->ctx->size;
  tdmi_mem_traffic(e, (uint64_t)gathered_bytes(e, b) * (n - 1) / n);
  /* In place: every transport gathers that way. */
  char *slot = (char *)b->gathered + (size_t)e->ctx->rank * bytes;
  TDMI_TRY(tdmi_ops_copy(&e->ops, slot, shard_source(e, b), bytes));
  return tdmi_xfer_allgather(e, &e->gather_ch, &b->gather, b->gathered,
                             bytes);
}

static tdm_status finish_gather(tdm_engine *e, tdmi_bucket *b) {
  return tdmi_xfer_wait(e, &b->gather);
}

static void drop_gathered(tdm_engine *e, tdmi_bucket *b) {
  if (b->persistent || !b->gathered)
    return;
  tdmi_mem_gathered(e, -(int64_t)gathered_bytes(e, b));
  tdmi_bucket_drop_values(e, b);
  b->prefetched = 0;
}

/* Module m's buckets: stage 3 lays them out consecutively. */
static int bucket_range(const tdm_engine *e, int m, int *first) {
  *first = e->modules[m].bucket_first;
  return e->modules[m].nbuckets;
}

static size_t module_gather_bytes(const tdm_engine *e, int m, int *sharded) {
  int first, n = bucket_range(e, m, &first);
  size_t bytes = 0;
  *sharded = 0;
  for (int b = first; b < first + n; b++)
    if (!e->buckets[b].persistent) {
      bytes += gathered_bytes(e, &e->buckets[b]);
      *sharded = 1;
    }
  return bytes;
}

static size_t prefetched_bytes(const tdm_engine *e) {
  size_t bytes = 0;
  for (int b = 0; b < e->nbuckets; b++)
    if (e->buckets[b].prefetched)
      bytes += gathered_bytes(e, &e->buckets[b]);
  return bytes;
}

/* Gathers ahead the modules after m in the fetch direction while they fit
 * in the window with those already gathered ahead. */
static tdm_status prefetch(tdm_engine *e, int m) {
  size_t used = prefetched_bytes(e);
  for (int k = m + e->fetch_dir; k >= 0 && k < e->nmodules; k += e->fetch_dir) {
    int sharded, first, n = bucket_range(e, k, &first);
    size_t bytes = module_gather_bytes(e, k, &sharded);
    if (!sharded || e->buckets[first].gathered)
      continue; /* nothing to gather, or gathered already */
    if (used + bytes > e->prefetch_bytes)
      break;
    for (int b = first; b < first + n; b++) {
      tdmi_bucket *bk = &e->buckets[b];
      if (bk->persistent)
        continue;
      TDMI_TRY(start_gather(e, bk));
      bk->prefetched = 1;
    }
    used += bytes;
  }
  return TDM_SUCCESS;
}

static tdm_status check_module(const tdm_engine *e, const char *fn, int m) {
  TDMI_TRY(tdmi_engine_check_prepared(e, fn));
  if (m < 0 || m >= e->nmodules)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: module %d is not registered (%d modules)", fn, m,
                      e->nmodules);
  return TDM_SUCCESS;
}

tdm_status tdm_fetch_module(tdm_engine *e, int module) {
  const char *fn = "tdm_fetch_module";
  TDMI_TRY(check_module(e, fn, module));
  if (e->stage < 3)
    return TDM_SUCCESS;
  int first, n = bucket_range(e, module, &first);
  for (int b = first; b < first + n; b++) {
    tdmi_bucket *bk = &e->buckets[b];
    if (!bk->gathered)
      TDMI_TRY(start_gather(e, bk));
    TDMI_TRY(finish_gather(e, bk));
    bk->fetched = 1;
    bk->prefetched = 0;
  }
  e->modules[module].fetched_in_micro = 1;
  if (module != e->last_fetch)
    e->fetch_dir = module > e->last_fetch ? 1 : -1;
  e->last_fetch = module;
  return prefetch(e, module);
}

static int maybe_unused(const tdm_engine *e, const tdmi_module *m) {
  for (int i = 0; i < m->nparams; i++)
    if (!(e->params[m->params[i]].flags & TDM_PARAM_MAYBE_UNUSED))
      return 0;
  return 1;
}

tdm_status tdmi_fetch_check_used(tdm_engine *e, const char *fn) {
  tdm_status st = TDM_SUCCESS;
  for (int i = 0; e->stage == 3 && i < e->nmodules; i++) {
    tdmi_module *m = &e->modules[i];
    int first, n = bucket_range(e, i, &first), persistent = 1;
    size_t elems = 0;
    for (int b = first; b < first + n; b++) {
      persistent &= e->buckets[b].persistent;
      elems += e->buckets[b].count;
    }
    if (st == TDM_SUCCESS && !m->fetched_in_micro && !persistent &&
        !maybe_unused(e, m))
      st = tdmi_error(TDM_ERR_INVALID_USAGE,
                      "%s: ZeRO-3: module '%s' (%zu elements) was not "
                      "fetched in this micro-step, so its values read zero; "
                      "call tdm_fetch_module and tdm_release_module around "
                      "its use, or keep it gathered with "
                      "zero3_persistence_threshold "
                      "(TANDEM_ZERO3_PERSISTENCE_THRESHOLD) above %zu", fn,
                      m->name, elems, elems);
    m->fetched_in_micro = 0;
  }
  return st;
}

tdm_status tdm_release_module(tdm_engine *e, int module) {
  TDMI_TRY(check_module(e, "tdm_release_module", module));
  if (e->stage < 3)
    return TDM_SUCCESS;
  int first, n = bucket_range(e, module, &first);
  for (int b = first; b < first + n; b++) {
    tdmi_bucket *bk = &e->buckets[b];
    if (!bk->fetched)
      continue;
    bk->fetched = 0;
    drop_gathered(e, bk);
  }
  return TDM_SUCCESS;
}

/* After an update: what stays gathered (persistent or still fetched) is
 * gathered again from the new shards; gathers ahead are dropped. */
tdm_status tdmi_fetch_regather(tdm_engine *e) {
  for (int b = 0; b < e->nbuckets; b++) {
    tdmi_bucket *bk = &e->buckets[b];
    TDMI_TRY(finish_gather(e, bk));
    if (bk->prefetched)
      drop_gathered(e, bk);
    if (!bk->gathered)
      continue;
    TDMI_TRY(start_gather(e, bk));
    TDMI_TRY(finish_gather(e, bk));
  }
  e->last_fetch = -1;
  e->fetch_dir = 1; /* the next step starts with forward */
  return TDM_SUCCESS;
}

void tdmi_fetch_free(tdm_engine *e) {
  for (int b = 0; b < e->nbuckets; b++) {
    tdmi_bucket *bk = &e->buckets[b];
    finish_gather(e, bk);
    if (bk->persistent)
      tdmi_bucket_drop_values(e, bk);
    drop_gathered(e, bk);
  }
}

/* ---- the buffers of tdm_param_buffers ---- */

tdm_status tdmi_param_data(tdm_engine *e, int param, void **data) {
  const tdmi_param *p = &e->params[param];
  const tdmi_flat *f = &e->flat[p->dtype];
  tdmi_bucket *b = &e->buckets[p->bucket];
  size_t csize = tdmi_dtype_size(compute_dtype(e, b));
  if (e->stage < 3) {
    *data = (char *)(f->copied ? f->copy : f->data) + p->first * csize;
    return TDM_SUCCESS;
  }
  if ((*data = tdmi_window_values(e, p)))
    return TDM_SUCCESS; /* the same address, fetched or not */
  if (!b->fetched && !b->persistent)
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "tdm_param_buffers: module '%s' of '%s' is not fetched "
                      "(zero stage 3: call tdm_fetch_module first)",
                      e->modules[p->module].name, p->name);
  *data = (char *)b->gathered + (p->first - b->first) * csize;
  return TDM_SUCCESS;
}

tdm_status tdmi_param_grad(tdm_engine *e, int param, void **grad) {
  const tdmi_param *p = &e->params[param];
  const tdmi_flat *f = &e->flat[p->dtype];
  tdmi_bucket *b = &e->buckets[p->bucket];
  size_t gsize = tdmi_dtype_size(b->grad_dtype);
  if (e->stage < 2) {
    *grad = (char *)f->grad + p->first * gsize;
    return TDM_SUCCESS;
  }
  if ((*grad = tdmi_window_grads(e, p)))
    return TDM_SUCCESS; /* the same address in every micro-step */
  tdmi_engine_open_micro_step(e);
  if (p->ready)
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "tdm_param_buffers: the gradient of '%s' exists only "
                      "inside a micro-step until it is marked ready (zero "
                      "stage %d); it was marked ready already", p->name,
                      e->stage);
  TDMI_TRY(tdmi_bucket_hold_grads(e, b, "tdm_param_buffers"));
  *grad = (char *)b->staging + (p->first - b->first) * gsize;
  return TDM_SUCCESS;
}
