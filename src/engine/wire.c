/* wire.c - gradient compression for f32 models (DDP's bf16 compression
 * hook): with TANDEM_MIXED_PRECISION=no and a 16-bit reduce dtype, the
 * model computes and writes f32 gradients, and each bucket goes on the
 * wire converted to the reduce dtype, half the bytes; the reduced result
 * comes back to f32.  The conversions are round to nearest even, the
 * 16-bit sums accumulate in f32 pair by pair (tdmi_sum_op_create). */
#include "engine.h"

static int compressed(const tdmi_bucket *b) {
  return b->wire_dtype != b->grad_dtype;
}

MPI_Op tdmi_wire_op(const tdm_engine *e, const tdmi_bucket *b) {
  return b->wire_dtype == e->reduce_dtype ? e->reduce_op : MPI_SUM;
}

tdm_status tdmi_wire_open(tdm_engine *e, tdmi_bucket *b, void *grads,
                          void **buf) {
  *buf = grads;
  if (!compressed(b))
    return TDM_SUCCESS;
  if (!b->wire) {
    b->wire = tdmi_engine_alloc(e, TDM_MEM_COMM_BUFFERS, b->count,
                                b->wire_dtype);
    if (!b->wire)
      return tdmi_error(TDM_ERR_NO_MEMORY, "bucket reduction: out of memory "
                        "for %zu elements of %s gradients on the wire",
                        b->count, tdmi_dtype_name(b->wire_dtype));
  }
  *buf = b->wire;
  return tdmi_ops_convert(&e->ops, b->grad_dtype, grads, b->wire_dtype,
                          b->wire, b->count);
}

tdm_status tdmi_wire_result(tdm_engine *e, const tdmi_bucket *b, size_t at,
                            void *out, size_t count) {
  const char *from = (const char *)b->wire + at * tdmi_dtype_size(b->wire_dtype);
  return tdmi_ops_convert(&e->ops, b->wire_dtype, from, b->grad_dtype, out,
                          count);
}

void tdmi_wire_close(tdm_engine *e, tdmi_bucket *b) {
  if (!b->wire)
    return;
  tdmi_engine_free(e, TDM_MEM_COMM_BUFFERS, b->wire, b->count, b->wire_dtype);
  b->wire = NULL;
}
