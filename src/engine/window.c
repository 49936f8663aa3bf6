/* window.c - addresses that never move under ZeRO-2 and 3.  The buffers a
 * rank holds only part of the time (stage 3's gathered values, the
 * micro-step gradients of stages 2-3) live in a full-size reserved range
 * per dtype, so that a parameter's pointers are the same for the whole
 * run; only the pages in use are backed.  A bucket is held (counted) and
 * dropped (its pages given back, reading zero when touched again).  The
 * gradients are always writable: the model adds into zero pages, which
 * the kernel backs as it writes, and a bucket's pages go back once it is
 * reduced, zero for the next micro-step.  Stage 3's values are there only
 * while held; with TANDEM_DEBUG the rest is inaccessible, so a read of a
 * module that was not fetched faults and the handler below names the
 * parameter.  In the windows every bucket starts on a page
 * (window_first), so dropping one never touches another; the buffers
 * that are always there keep the tighter layout of layout.c.  Where
 * memory cannot be reserved (a real GPU, for now) buckets are allocated
 * and freed as before. */
#define _POSIX_C_SOURCE 200809L /* sigaction, siginfo_t */
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"

static int wanted(const tdm_engine *e) {
  return e->stage >= 2 && (tdmi_ops_compute_mem(&e->ops) == TDMI_MEM_HOST ||
                           tdmi_device_fake());
}

static size_t pages(size_t bytes) {
  size_t page = tdmi_mem_page_size();
  return (bytes + page - 1) / page * page;
}

static tdm_dtype value_dtype(const tdm_engine *e, const tdmi_bucket *b) {
  return tdmi_flat_compute_dtype(&e->flat[b->dtype], b->dtype);
}

/* ---- TANDEM_DEBUG: a touch of a dropped bucket names the parameter ---- */

enum { MAX_WATCHED = 64 };
typedef struct {
  const tdm_engine *engine;
  const tdmi_flat *flat;
  const char *base;
  size_t bytes, esize;
} watched;
static watched watch[MAX_WATCHED];
static int nwatch;
static struct sigaction previous;
static int installed;

/* The fault's line is built with async-signal-safe code only and written
 * in one write(), so that it stays whole among other ranks' output. */
typedef struct {
  char text[512];
  size_t len;
} line;

static void put(line *l, const char *s) {
  while (*s && l->len < sizeof l->text - 1)
    l->text[l->len++] = *s++;
}

static void put_int(line *l, long v) {
  char buf[24], *p = buf + sizeof buf;
  *--p = 0;
  do
    *--p = (char)('0' + v % 10);
  while ((v /= 10) > 0);
  put(l, p);
}

/* The parameter at window element w_elem, or NULL (padding). */
static const tdmi_param *param_at(const watched *w, size_t w_elem) {
  const tdm_engine *e = w->engine;
  for (int b = 0; b < e->nbuckets; b++) {
    const tdmi_bucket *bk = &e->buckets[b];
    if (&e->flat[bk->dtype] != w->flat || w_elem < bk->window_first ||
        w_elem >= bk->window_first + bk->count)
      continue;
    size_t elem = bk->first + (w_elem - bk->window_first);
    for (int k = bk->order_first; k < bk->order_first + bk->nparams; k++) {
      const tdmi_param *p = &e->params[e->order[k]];
      if (elem >= p->first && elem < p->first + p->numel)
        return p;
    }
  }
  return NULL;
}

static void on_fault(int sig, siginfo_t *info, void *uc) {
  (void)uc;
  const char *addr = info->si_addr;
  for (int i = 0; i < nwatch; i++) {
    const watched *w = &watch[i];
    if (!w->engine || addr < w->base || addr >= w->base + w->bytes)
      continue;
    const tdmi_param *p = param_at(w, (size_t)(addr - w->base) / w->esize);
    line l = {.len = 0};
    put(&l, "tandem: rank ");
    put_int(&l, w->engine->ctx->rank);
    put(&l, ": the values of '");
    put(&l, p ? p->name : "(padding)");
    put(&l, "' were touched while not held (ZeRO-");
    put_int(&l, w->engine->stage);
    put(&l, "): call tdm_fetch_module for its module first\n");
    ssize_t r = write(STDERR_FILENO, l.text, l.len);
    (void)r;
    break;
  }
  /* The default (or the user's) action takes the fault when it recurs. */
  sigaction(sig, &previous, NULL);
}

static void watch_range(const tdm_engine *e, const tdmi_flat *f,
                        const void *base, size_t bytes, size_t esize) {
  if (!installed) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, &previous) == 0)
      installed = 1;
  }
  for (int i = 0; i < MAX_WATCHED; i++)
    if (!watch[i].engine) {
      watch[i] = (watched){e, f, base, bytes, esize};
      if (i >= nwatch)
        nwatch = i + 1;
      return;
    }
}

static void unwatch(const tdm_engine *e) {
  for (int i = 0; i < nwatch; i++)
    if (watch[i].engine == e)
      watch[i].engine = NULL;
}

/* ---- the windows ---- */

/* Each bucket's place in the windows of its dtype: on a page in every
 * element size (2 to 8 bytes). */
static void place_buckets(tdm_engine *e) {
  size_t align = tdmi_mem_page_size() / 2;
  for (int b = 0; b < e->nbuckets; b++) {
    tdmi_bucket *bk = &e->buckets[b];
    tdmi_flat *f = &e->flat[bk->dtype];
    bk->window_first = (f->window_count + align - 1) / align * align;
    f->window_count = bk->window_first + bk->count;
  }
}

tdm_status tdmi_window_reserve(tdm_engine *e) {
  if (!wanted(e))
    return TDM_SUCCESS;
  place_buckets(e);
  e->protect = e->ctx->config.debug;
  tdmi_mem_kind kind = tdmi_ops_compute_mem(&e->ops);
  for (int d = 0; d < TDM_NUM_DTYPES; d++) {
    tdmi_flat *f = &e->flat[d];
    if (!f->window_count)
      continue;
    size_t vsize = tdmi_dtype_size(tdmi_flat_compute_dtype(f, (tdm_dtype)d));
    size_t gsize = tdmi_dtype_size(f->grad_dtype);
    f->grad_window_bytes = pages(f->window_count * gsize);
    TDMI_TRY(tdmi_mem_reserve(kind, f->grad_window_bytes, &f->grad_window));
    if (e->stage == 3) {
      f->value_window_bytes = pages(f->window_count * vsize);
      TDMI_TRY(tdmi_mem_reserve(kind, f->value_window_bytes,
                                &f->value_window));
    }
    if (!e->protect || !f->value_window)
      continue;
    /* Nothing is held yet: all of it faults until held. */
    TDMI_TRY(tdmi_mem_protect(f->value_window, f->value_window_bytes, 0));
    watch_range(e, f, f->value_window, f->value_window_bytes, vsize);
  }
  return TDM_SUCCESS;
}

void tdmi_window_free(tdm_engine *e) {
  unwatch(e);
  for (int d = 0; d < TDM_NUM_DTYPES; d++) {
    tdmi_flat *f = &e->flat[d];
    tdmi_mem_unreserve(f->grad_window, f->grad_window_bytes);
    tdmi_mem_unreserve(f->value_window, f->value_window_bytes);
    f->grad_window = f->value_window = NULL;
  }
}

/* Bucket b's range in a window of elements of esize bytes. */
static char *range(void *window, const tdmi_bucket *b, size_t esize) {
  return window ? (char *)window + b->window_first * esize : NULL;
}

/* guarded: the values window, inaccessible when not held (TANDEM_DEBUG) */
static tdm_status hold(tdm_engine *e, tdm_memory_category c, void *window,
                       int guarded, const tdmi_bucket *b, tdm_dtype t,
                       void **slot) {
  size_t esize = tdmi_dtype_size(t);
  char *at = range(window, b, esize);
  if (!at) {
    *slot = tdmi_engine_alloc(e, c, b->count, t);
    return *slot ? TDM_SUCCESS : TDM_ERR_NO_MEMORY;
  }
  if (e->protect && guarded)
    TDMI_TRY(tdmi_mem_protect(at, pages(b->count * esize), 1));
  tdmi_engine_count(e, c, b->count, t, 1);
  *slot = at;
  return TDM_SUCCESS;
}

static void drop(tdm_engine *e, tdm_memory_category c, void *window,
                 int guarded, const tdmi_bucket *b, tdm_dtype t,
                 void **slot) {
  if (!*slot)
    return;
  size_t esize = tdmi_dtype_size(t);
  char *at = range(window, b, esize);
  if (!at) {
    tdmi_engine_free(e, c, *slot, b->count, t);
  } else {
    size_t bytes = pages(b->count * esize);
    tdmi_mem_discard(at, bytes); /* our own pages: cannot fail */
    if (e->protect && guarded)
      tdmi_mem_protect(at, bytes, 0);
    tdmi_engine_count(e, c, b->count, t, -1);
  }
  *slot = NULL;
}

tdm_status tdmi_bucket_hold_values(tdm_engine *e, tdmi_bucket *b,
                                   const char *fn) {
  if (b->gathered)
    return TDM_SUCCESS;
  tdm_status st = hold(e, TDM_MEM_PARAMS, e->flat[b->dtype].value_window, 1,
                       b, value_dtype(e, b), &b->gathered);
  if (st != TDM_SUCCESS)
    return tdmi_error(st, "%s: out of memory for %zu bytes of gathered "
                      "parameters", fn,
                      b->count * tdmi_dtype_size(value_dtype(e, b)));
  return TDM_SUCCESS;
}

void tdmi_bucket_drop_values(tdm_engine *e, tdmi_bucket *b) {
  drop(e, TDM_MEM_PARAMS, e->flat[b->dtype].value_window, 1, b,
       value_dtype(e, b), &b->gathered);
}

tdm_status tdmi_bucket_hold_grads(tdm_engine *e, tdmi_bucket *b,
                                  const char *fn) {
  if (b->staging)
    return TDM_SUCCESS;
  tdm_status st = hold(e, TDM_MEM_COMM_BUFFERS, e->flat[b->dtype].grad_window,
                       0, b, b->grad_dtype, &b->staging);
  if (st != TDM_SUCCESS)
    return tdmi_error(st, "%s: out of memory for %zu bytes of bucket "
                      "gradients", fn, b->bytes);
  return TDM_SUCCESS;
}

void tdmi_bucket_drop_grads(tdm_engine *e, tdmi_bucket *b) {
  drop(e, TDM_MEM_COMM_BUFFERS, e->flat[b->dtype].grad_window, 0, b,
       b->grad_dtype, &b->staging);
}

void tdmi_window_clear_grads(tdm_engine *e) {
  for (int b = 0; b < e->nbuckets; b++) {
    tdmi_bucket_drop_grads(e, &e->buckets[b]);
    tdmi_wire_close(e, &e->buckets[b]);
  }
  for (int d = 0; d < TDM_NUM_DTYPES; d++) {
    tdmi_flat *f = &e->flat[d];
    if (f->grad_window) /* our own pages: cannot fail */
      tdmi_mem_discard(f->grad_window, f->grad_window_bytes);
  }
}

/* p's element index in the windows of its dtype. */
static size_t window_elem(const tdm_engine *e, const tdmi_param *p) {
  const tdmi_bucket *b = &e->buckets[p->bucket];
  return b->window_first + (p->first - b->first);
}

void *tdmi_window_values(const tdm_engine *e, const tdmi_param *p) {
  const tdmi_flat *f = &e->flat[p->dtype];
  size_t vsize = tdmi_dtype_size(tdmi_flat_compute_dtype(f, p->dtype));
  return f->value_window
             ? (char *)f->value_window + window_elem(e, p) * vsize
             : NULL;
}

void *tdmi_window_grads(const tdm_engine *e, const tdmi_param *p) {
  const tdmi_flat *f = &e->flat[p->dtype];
  size_t gsize = tdmi_dtype_size(f->grad_dtype);
  return f->grad_window ? (char *)f->grad_window + window_elem(e, p) * gsize
                        : NULL;
}
