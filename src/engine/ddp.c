/* ddp.c - stage 0: every rank keeps a full replica, and each bucket's
 * gradients are summed in place across ranks.  The averaging factor is in
 * tdm_loss_scale, so the sum is the average. */
#include "engine.h"

static void *bucket_grad(tdm_engine *e, const tdmi_bucket *b) {
  return (char *)e->flat[b->dtype].grad +
         b->first * tdmi_dtype_size(b->grad_dtype);
}

static MPI_Op bucket_op(const tdm_engine *e, const tdmi_bucket *b) {
  return b->grad_dtype == e->reduce_dtype ? e->reduce_op : MPI_SUM;
}

/* A ring allreduce sends 2 (N-1)/N of the buffer. */
static void count_traffic(tdm_engine *e, const tdmi_bucket *b) {
  uint64_t n = (uint64_t)e->ctx->size;
  tdmi_mem_traffic(e, 2 * (uint64_t)b->bytes * (n - 1) / n);
}

static tdm_status ddp_launch(tdm_engine *e, tdmi_bucket *b) {
  count_traffic(e, b);
  return tdmi_xfer_sum(e, &e->reduce_ch, &b->reduce, bucket_grad(e, b),
                       b->count, b->grad_dtype, bucket_op(e, b));
}

tdm_status tdmi_bucket_test(tdm_engine *e, tdmi_bucket *b, int *done) {
  return tdmi_xfer_test(e, &b->reduce, done);
}

tdm_status tdmi_bucket_wait(tdm_engine *e, tdmi_bucket *b) {
  return tdmi_xfer_wait(e, &b->reduce);
}

static tdm_status ddp_reduce(tdm_engine *e, tdmi_bucket *b) {
  count_traffic(e, b);
  return tdmi_sum(e->comm, bucket_grad(e, b), b->count, b->grad_dtype,
                  bucket_op(e, b));
}

const tdmi_strategy tdmi_strategy_ddp = {"ddp", ddp_launch,
                                         tdmi_bucket_test, tdmi_bucket_wait,
                                         ddp_reduce, NULL};
