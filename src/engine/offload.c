/* offload.c - the optimizer in host memory for an engine on a device
 * (ZeRO-Offload).  The master shard and the optimizer state are pinned
 * host memory and the update runs on the CPU kernels.  At the end of an
 * accumulation cycle the reduced gradient shard crosses to the host; after
 * the update the shard's new compute values cross back, and the usual
 * gathers spread them.  Both copies are queued on the compute stream; the
 * CPU kernels wait for it before they read (ops.c). */
#include "engine.h"

/* Where bucket b's chunk of the reduced gradients is on the device. */
static const void *device_grad_chunk(const tdm_engine *e,
                                     const tdmi_bucket *b) {
  const tdmi_flat *f = &e->flat[b->dtype];
  size_t gsize = tdmi_dtype_size(b->grad_dtype);
  if (f->shard_grad)
    return (const char *)f->shard_grad + b->shard_first * gsize;
  return (const char *)f->grad + tdmi_own_first(e, b) * gsize;
}

tdm_status tdmi_offload_pull_grads(tdm_engine *e) {
  for (int i = 0; i < e->nbuckets; i++) {
    const tdmi_bucket *b = &e->buckets[i];
    const tdmi_flat *f = &e->flat[b->dtype];
    size_t gsize = tdmi_dtype_size(b->grad_dtype);
    TDMI_TRY(tdmi_ops_copy(&e->ops,
                           (char *)f->host_grad + b->shard_first * gsize,
                           device_grad_chunk(e, b), b->chunk * gsize));
  }
  return TDM_SUCCESS;
}

/* Where bucket b's chunk of the values the model computes with is on the
 * device, or NULL where the optimizer wrote them in place (stage 3 with
 * offload=params: the shards gathers read are host memory). */
static void *device_values_chunk(const tdm_engine *e, const tdmi_bucket *b) {
  const tdmi_flat *f = &e->flat[b->dtype];
  size_t csize = tdmi_dtype_size(tdmi_flat_compute_dtype(f, b->dtype));
  if (e->stage == 3)
    return e->offload == TDM_OFFLOAD_PARAMS
               ? NULL
               : (char *)f->shard_copy + b->shard_first * csize;
  return (char *)(f->copied ? f->copy : f->data) +
         tdmi_own_first(e, b) * csize;
}

tdm_status tdmi_offload_push_values(tdm_engine *e) {
  for (int i = 0; i < e->nbuckets; i++) {
    const tdmi_bucket *b = &e->buckets[i];
    const tdmi_flat *f = &e->flat[b->dtype];
    void *dst = device_values_chunk(e, b);
    if (!dst)
      continue;
    size_t csize = tdmi_dtype_size(tdmi_flat_compute_dtype(f, b->dtype));
    const char *src = f->copied ? f->host_copy : f->master;
    TDMI_TRY(tdmi_ops_copy(&e->ops, dst, src + b->shard_first * csize,
                           b->chunk * csize));
  }
  return TDM_SUCCESS;
}
