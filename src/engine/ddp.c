/* ddp.c - stage 0: every rank keeps a full replica, and each bucket's
 * gradients are summed in place across ranks (or their 16-bit conversion,
 * wire.c); the optimizer averages the sums as it reads them. */
#include "engine.h"

static void *bucket_grad(tdm_engine *e, const tdmi_bucket *b) {
  return (char *)e->flat[b->dtype].grad +
         b->first * tdmi_dtype_size(b->grad_dtype);
}

/* A ring allreduce sends 2 (N-1)/N of the buffer, as it goes on the
 * wire. */
static void count_traffic(tdm_engine *e, const tdmi_bucket *b) {
  uint64_t n = (uint64_t)e->ctx->size;
  uint64_t bytes = b->count * tdmi_dtype_size(b->wire_dtype);
  tdmi_mem_traffic(e, 2 * bytes * (n - 1) / n);
}

static tdm_status ddp_launch(tdm_engine *e, tdmi_bucket *b) {
  void *buf;
  TDMI_TRY(tdmi_wire_open(e, b, bucket_grad(e, b), &buf));
  count_traffic(e, b);
  return tdmi_xfer_sum(e, &e->reduce_ch, &b->reduce, buf, b->count,
                       b->wire_dtype, tdmi_wire_op(e, b));
}

tdm_status tdmi_bucket_test(tdm_engine *e, tdmi_bucket *b, int *done) {
  return tdmi_xfer_test(e, &b->reduce, done);
}

tdm_status tdmi_bucket_wait(tdm_engine *e, tdmi_bucket *b) {
  return tdmi_xfer_wait(e, &b->reduce);
}

static tdm_status ddp_reduce(tdm_engine *e, tdmi_bucket *b) {
  void *buf;
  TDMI_TRY(tdmi_wire_open(e, b, bucket_grad(e, b), &buf));
  count_traffic(e, b);
  char what[48];
  snprintf(what, sizeof what, "bucket %d allreduce", b->reduce.bucket);
  return tdmi_sum(e->comm, buf, b->count, b->wire_dtype, tdmi_wire_op(e, b),
                  what);
}

/* A compressed bucket's sum back into its gradients. */
static tdm_status ddp_finish(tdm_engine *e, tdmi_bucket *b) {
  if (!b->wire)
    return TDM_SUCCESS;
  tdm_status st = tdmi_wire_result(e, b, 0, bucket_grad(e, b), b->count);
  tdmi_wire_close(e, b);
  return st;
}

const tdmi_strategy tdmi_strategy_ddp = {"ddp", ddp_launch,
                                         tdmi_bucket_test, tdmi_bucket_wait,
                                         ddp_reduce, ddp_finish};
