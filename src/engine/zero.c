/* zero.c - the ZeRO strategies (stages 1-3) on the bucket state machine.
 * A bucket's gradients are reduce-scattered in place: each rank gets the
 * sum of its own chunk.  Stage 1 reduces the full gradient buffer at the
 * end of the accumulation cycle and keeps its chunk in place; stages 2
 * and 3 reduce each micro-step's bucket gradients (held in the gradient
 * window, dropped afterwards) and add the chunk into the rank's gradient shard.
 * After an update every rank's chunks of the values are all-gathered
 * (stages 1-2); stage 3 keeps values sharded and gathers per module. */
#include <string.h>

#include "engine.h"

/* Reduce-scatter and all-gather both send (N-1)/N of the buffer. */
static void count_traffic(tdm_engine *e, size_t bytes) {
  uint64_t n = (uint64_t)e->ctx->size;
  tdmi_mem_traffic(e, (uint64_t)bytes * (n - 1) / n);
}

/* The buffer reduced in place: the full gradients (stage 1) or the
 * micro-step's bucket gradients (stages 2-3; all zero when no parameter
 * of the bucket asked for its gradient). */
static tdm_status source(tdm_engine *e, tdmi_bucket *b, void **buf) {
  void *grads;
  if (e->stage == 1) {
    grads = (char *)e->flat[b->dtype].grad +
            b->first * tdmi_dtype_size(b->grad_dtype);
  } else {
    TDMI_TRY(tdmi_bucket_hold_grads(e, b, "bucket reduction"));
    grads = b->staging;
  }
  TDMI_TRY(tdmi_wire_open(e, b, grads, buf)); /* compressed: converted */
  count_traffic(e, b->count * tdmi_dtype_size(b->wire_dtype));
  return TDM_SUCCESS;
}

static tdm_status zero_launch(tdm_engine *e, tdmi_bucket *b) {
  void *buf = NULL;
  TDMI_TRY(source(e, b, &buf));
  return tdmi_xfer_reduce_scatter(e, &e->reduce_ch, &b->reduce, buf,
                                  b->chunk, b->wire_dtype, tdmi_wire_op(e, b));
}

static tdm_status zero_reduce(tdm_engine *e, tdmi_bucket *b) {
  void *buf = NULL;
  TDMI_TRY(source(e, b, &buf));
  char what[48];
  snprintf(what, sizeof what, "bucket %d reduce-scatter", b->reduce.bucket);
  return tdmi_reduce_scatter(e->comm, buf, b->chunk, b->wire_dtype,
                             tdmi_wire_op(e, b), what);
}

/* The reduced chunk is where the transport left it (the start of the
 * buffer with MPI, the rank's own chunk with NCCL); stage 1 keeps it in
 * the rank's chunk, stages 2-3 add it into the shard. */
static tdm_status zero_finish(tdm_engine *e, tdmi_bucket *b) {
  size_t gsize = tdmi_dtype_size(b->grad_dtype);
  tdmi_flat *f = &e->flat[b->dtype];
  size_t at = tdmi_xfer_rs_offset(e, b->chunk);
  size_t mine = (size_t)e->ctx->rank * b->chunk * gsize;
  tdm_status st = TDM_SUCCESS;
  if (e->stage == 1) {
    char *g = (char *)f->grad + b->first * gsize;
    if (b->wire) /* the reduced chunk back from the wire into place */
      st = tdmi_wire_result(e, b, at, g + mine, b->chunk);
    else if (mine != at * gsize) /* chunks never overlap */
      st = tdmi_ops_copy(&e->ops, g + mine, g + at * gsize, b->chunk * gsize);
    tdmi_wire_close(e, b);
    return st;
  }
  /* Stages 2-3: added into the shard; a compressed chunk first comes back
   * into the bucket's own gradients, which are spent already. */
  char *reduced = (char *)b->staging + at * gsize;
  if (b->wire)
    st = tdmi_wire_result(e, b, at, reduced, b->chunk);
  if (st == TDM_SUCCESS)
    st = tdmi_ops_accumulate(&e->ops, b->grad_dtype, reduced,
                             (char *)f->shard_grad + b->shard_first * gsize,
                             b->chunk);
  tdmi_wire_close(e, b);
  tdmi_bucket_drop_grads(e, b);
  return st;
}

const tdmi_strategy tdmi_strategy_zero = {"zero", zero_launch,
                                          tdmi_bucket_test, tdmi_bucket_wait,
                                          zero_reduce, zero_finish};

/* Stages 1-2: the updated chunks of the values the model computes with,
 * from every rank to every rank, in place. */
tdm_status tdmi_zero_gather_params(tdm_engine *e) {
  for (int i = 0; i < e->nbuckets; i++) {
    const tdmi_bucket *b = &e->buckets[i];
    const tdmi_flat *f = &e->flat[b->dtype];
    tdm_dtype cd = tdmi_flat_compute_dtype(f, b->dtype);
    size_t csize = tdmi_dtype_size(cd);
    char *full = (char *)(f->copied ? f->copy : f->data) + b->first * csize;
    count_traffic(e, b->count * csize);
    tdmi_xfer *x = &e->buckets[i].reduce;
    TDMI_TRY(tdmi_xfer_allgather(e, &e->reduce_ch, x, full,
                                 b->chunk * csize));
    TDMI_TRY(tdmi_xfer_wait(e, x));
  }
  return TDM_SUCCESS;
}

/* ---- reading the master values ---- */

/* Where parameter p's master values are complete on every rank. */
static const void *full_master(const tdm_engine *e, const tdmi_param *p) {
  const tdmi_flat *f = &e->flat[p->dtype];
  return f->data ? (const char *)f->data + p->first * tdmi_dtype_size(p->dtype)
                 : NULL;
}

/* Copies the part of p this rank owns into out (zero elsewhere). */
static tdm_status own_part(tdm_engine *e, const tdmi_param *p, char *out) {
  const tdmi_bucket *b = &e->buckets[p->bucket];
  const tdmi_flat *f = &e->flat[p->dtype];
  size_t esize = tdmi_dtype_size(p->dtype);
  size_t lo = tdmi_own_first(e, b), hi = lo + b->chunk;
  size_t from = p->first > lo ? p->first : lo;
  size_t to = p->first + p->numel < hi ? p->first + p->numel : hi;
  memset(out, 0, p->numel * esize);
  if (from >= to)
    return TDM_SUCCESS;
  return tdmi_ops_copy(&e->ops, out + (from - p->first) * esize,
                       (const char *)f->master +
                           (b->shard_first + from - lo) * esize,
                       (to - from) * esize);
}

tdm_status tdm_gather_param(tdm_engine *e, int param, void *out) {
  const char *fn = "tdm_gather_param";
  TDMI_TRY(tdmi_engine_check_prepared(e, fn));
  if (param < 0 || param >= e->nparams)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: param %d is not registered (%d params)", fn, param,
                      e->nparams);
  TDMI_CHECK_PTR(out, fn);
  if (e->in_backward)
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "%s: a micro-step is in progress; call it between "
                      "tdm_backward_end (and tdm_step) and the next "
                      "tdm_backward_begin", fn);
  const tdmi_param *p = &e->params[param];
  const void *full = full_master(e, p);
  size_t bytes = p->numel * tdmi_dtype_size(p->dtype);
  /* out is the caller's host memory; the values may be on the device. */
  TDMI_TRY(full ? tdmi_ops_copy(&e->ops, out, full, bytes)
                : own_part(e, p, out));
  TDMI_TRY(tdmi_ops_synchronize(&e->ops));
  if (full)
    return TDM_SUCCESS;
  /* The parts are disjoint and zero elsewhere: OR assembles them bit for
   * bit (a sum would turn -0 into +0). */
  return tdmi_bor_bytes(e->comm, out, bytes);
}
