/* ddp.c - stage 0: every rank keeps a full replica, and each bucket's
 * gradients are summed in place across ranks.  The averaging factor is in
 * tdm_loss_scale, so the sum is the average. */
#include "engine.h"

static tdm_status ddp_launch(tdm_engine *e, tdmi_bucket *b) {
  void *grad = (char *)e->flat[b->dtype].grad + b->offset;
  return tdmi_isum(e->comm, grad, b->bytes / tdmi_dtype_size(b->dtype),
                   b->dtype, &b->request);
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
  void *grad = (char *)e->flat[b->dtype].grad + b->offset;
  return tdmi_sum(e->comm, grad, b->bytes / tdmi_dtype_size(b->dtype),
                  b->dtype);
}

const tdmi_strategy tdmi_strategy_ddp = {"ddp", ddp_launch, ddp_test,
                                         ddp_wait, ddp_reduce};
