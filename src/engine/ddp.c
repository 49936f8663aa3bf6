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

static tdm_status ddp_launch(tdm_engine *e, tdmi_bucket *b) {
  return tdmi_isum(e->comm, bucket_grad(e, b), b->count, b->grad_dtype,
                   bucket_op(e, b), &b->request);
}

static tdm_status ddp_test(tdm_engine *e, tdmi_bucket *b, int *done) {
  (void)e;
  return tdmi_test(&b->request, done);
}

static tdm_status ddp_wait(tdm_engine *e, tdmi_bucket *b) {
  (void)e;
  return tdmi_wait(&b->request);
}

static tdm_status ddp_reduce(tdm_engine *e, tdmi_bucket *b) {
  return tdmi_sum(e->comm, bucket_grad(e, b), b->count, b->grad_dtype,
                  bucket_op(e, b));
}

const tdmi_strategy tdmi_strategy_ddp = {"ddp", ddp_launch, ddp_test,
                                         ddp_wait, ddp_reduce};
