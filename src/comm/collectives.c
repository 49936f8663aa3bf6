/* collectives.c - blocking host collectives for user code.  Native types go
 * straight to MPI on tandem's communicator; f16/bf16 reductions are widened
 * to f32 chunk by chunk, reduced, and rounded back to nearest even. */
#include <limits.h>
#include <stdlib.h>

#include "comm.h"

#define MPI_CHUNK ((size_t)1 << 30) /* elements per MPI call (< INT_MAX)   */
#define HALF_CHUNK ((size_t)1 << 20) /* f16/bf16 elements widened per pass */

static MPI_Op mpi_op(tdm_op op) {
  return op == TDM_MAX ? MPI_MAX : op == TDM_MIN ? MPI_MIN : MPI_SUM;
}

static int is_half(tdm_dtype dtype) {
  return dtype == TDM_F16 || dtype == TDM_BF16;
}

static tdm_status check_op(const char *fn, tdm_op op, tdm_dtype dtype) {
  if ((unsigned)op >= TDM_NUM_OPS)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: op %d is not a tdm_op",
                      fn, (int)op);
  if (op == TDM_MEAN && !tdmi_dtype_is_float(dtype))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: op mean needs a floating dtype, got %s", fn,
                      tdmi_dtype_name(dtype));
  return TDM_SUCCESS;
}

static tdm_status check_root(const char *fn, const tdm_context *ctx, int root) {
  if (root < 0 || root >= ctx->size)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: root %d is out of range [0, %d)", fn, root,
                      ctx->size);
  return TDM_SUCCESS;
}

static tdm_status check_int_count(const char *fn, size_t count) {
  if (count > INT_MAX)
    return tdmi_error(TDM_ERR_NOT_SUPPORTED,
                      "%s: count %zu per rank exceeds MPI's int count", fn,
                      count);
  return TDM_SUCCESS;
}

static void divide_by(tdm_dtype dtype, void *buf, size_t n, int size) {
  if (dtype == TDM_F32)
    for (size_t i = 0; i < n; i++)
      ((float *)buf)[i] /= (float)size;
  else if (dtype == TDM_F64)
    for (size_t i = 0; i < n; i++)
      ((double *)buf)[i] /= (double)size;
}

/* ---- allreduce ---- */

static tdm_status allreduce_native(tdm_context *ctx, const void *send,
                                   void *recv, size_t count, tdm_dtype dtype,
                                   tdm_op op) {
  size_t esize = tdmi_dtype_size(dtype);
  for (size_t off = 0; off < count; off += MPI_CHUNK) {
    size_t n = count - off < MPI_CHUNK ? count - off : MPI_CHUNK;
    const void *s = send == recv ? MPI_IN_PLACE
                                 : (const char *)send + off * esize;
    tdmi_mpi_call c = {TDMI_RUN_ALLREDUCE, s, (char *)recv + off * esize,
                       (int)n, tdmi_mpi_move_type(dtype), mpi_op(op), 0,
                       ctx->comm};
    TDMI_TRY(tdmi_run(&c, "tdm_allreduce", n * esize));
  }
  if (op == TDM_MEAN)
    divide_by(dtype, recv, count, ctx->size);
  return TDM_SUCCESS;
}

static tdm_status allreduce_half(tdm_context *ctx, const uint16_t *send,
                                 uint16_t *recv, size_t count, tdm_dtype dtype,
                                 tdm_op op) {
  size_t chunk = count < HALF_CHUNK ? count : HALF_CHUNK;
  float *wide = malloc(chunk * sizeof *wide);
  if (!wide)
    return tdmi_error(TDM_ERR_NO_MEMORY, "tdm_allreduce: out of memory");
  tdm_status st = TDM_SUCCESS;
  for (size_t off = 0; off < count && st == TDM_SUCCESS; off += chunk) {
    size_t n = count - off < chunk ? count - off : chunk;
    tdmi_half_to_f32(dtype, send + off, wide, n);
    tdmi_mpi_call c = {TDMI_RUN_ALLREDUCE, MPI_IN_PLACE, wide, (int)n,
                       MPI_FLOAT, mpi_op(op), 0, ctx->comm};
    st = tdmi_run(&c, "tdm_allreduce", n * sizeof *wide);
    if (st != TDM_SUCCESS)
      break;
    if (op == TDM_MEAN)
      divide_by(TDM_F32, wide, n, ctx->size);
    tdmi_f32_to_half(dtype, wide, recv + off, n);
  }
  free(wide);
  return st;
}

tdm_status tdm_allreduce(tdm_context *ctx, const void *send, void *recv,
                         size_t count, tdm_dtype dtype, tdm_op op) {
  static const char fn[] = "tdm_allreduce";
  TDMI_CHECK_CTX(ctx, fn);
  size_t bytes;
  tdm_status st = tdmi_check_ptr(fn, send, "send");
  FIRST_FAILURE(st, tdmi_check_ptr(fn, recv, "recv"));
  FIRST_FAILURE(st, tdmi_check_count(fn, count, dtype, 0, &bytes));
  FIRST_FAILURE(st, check_op(fn, op, dtype));
  tdmi_signature sig = {TDMI_COLL_ALLREDUCE, dtype, op, TDMI_NO_ROOT, count};
  TDMI_TRY(tdmi_coll_enter(ctx, fn, &sig, st));
  if (is_half(dtype))
    return allreduce_half(ctx, send, recv, count, dtype, op);
  return allreduce_native(ctx, send, recv, count, dtype, op);
}

/* ---- broadcast, allgather, gather: data movement only ---- */

tdm_status tdm_broadcast(tdm_context *ctx, void *buf, size_t count,
                         tdm_dtype dtype, int root) {
  static const char fn[] = "tdm_broadcast";
  TDMI_CHECK_CTX(ctx, fn);
  size_t bytes;
  tdm_status st = tdmi_check_ptr(fn, buf, "buf");
  FIRST_FAILURE(st, tdmi_check_count(fn, count, dtype, 0, &bytes));
  FIRST_FAILURE(st, check_root(fn, ctx, root));
  tdmi_signature sig = {TDMI_COLL_BROADCAST, dtype, -1, root, count};
  TDMI_TRY(tdmi_coll_enter(ctx, fn, &sig, st));
  size_t esize = tdmi_dtype_size(dtype);
  for (size_t off = 0; off < count; off += MPI_CHUNK) {
    size_t n = count - off < MPI_CHUNK ? count - off : MPI_CHUNK;
    tdmi_mpi_call c = {TDMI_RUN_BCAST, NULL, (char *)buf + off * esize,
                       (int)n, tdmi_mpi_move_type(dtype), MPI_OP_NULL, root,
                       ctx->comm};
    TDMI_TRY(tdmi_run(&c, "tdm_broadcast", n * esize));
  }
  return TDM_SUCCESS;
}

tdm_status tdm_allgather(tdm_context *ctx, const void *send, void *recv,
                         size_t count, tdm_dtype dtype) {
  static const char fn[] = "tdm_allgather";
  TDMI_CHECK_CTX(ctx, fn);
  size_t bytes;
  tdm_status st = tdmi_check_ptr(fn, send, "send");
  FIRST_FAILURE(st, tdmi_check_ptr(fn, recv, "recv"));
  FIRST_FAILURE(st, tdmi_check_count(fn, count, dtype, 0, &bytes));
  FIRST_FAILURE(st, check_int_count(fn, count));
  tdmi_signature sig = {TDMI_COLL_ALLGATHER, dtype, -1, TDMI_NO_ROOT, count};
  TDMI_TRY(tdmi_coll_enter(ctx, fn, &sig, st));
  MPI_Datatype t = tdmi_mpi_move_type(dtype);
  tdmi_mpi_call c = {TDMI_RUN_ALLGATHER, send, recv, (int)count, t,
                     MPI_OP_NULL, 0, ctx->comm};
  return tdmi_run(&c, "tdm_allgather", bytes * (size_t)ctx->size);
}

tdm_status tdm_gather(tdm_context *ctx, const void *send, void *recv,
                      size_t count, tdm_dtype dtype, int root) {
  static const char fn[] = "tdm_gather";
  TDMI_CHECK_CTX(ctx, fn);
  size_t bytes;
  tdm_status st = tdmi_check_ptr(fn, send, "send");
  FIRST_FAILURE(st, tdmi_check_count(fn, count, dtype, 0, &bytes));
  FIRST_FAILURE(st, check_int_count(fn, count));
  FIRST_FAILURE(st, check_root(fn, ctx, root));
  if (ctx->rank == root)
    FIRST_FAILURE(st, tdmi_check_ptr(fn, recv, "recv (on the root)"));
  tdmi_signature sig = {TDMI_COLL_GATHER, dtype, -1, root, count};
  TDMI_TRY(tdmi_coll_enter(ctx, fn, &sig, st));
  MPI_Datatype t = tdmi_mpi_move_type(dtype);
  tdmi_mpi_call c = {TDMI_RUN_GATHER, send, recv, (int)count, t, MPI_OP_NULL,
                     root, ctx->comm};
  return tdmi_run(&c, "tdm_gather", bytes * (size_t)ctx->size);
}

/* ---- reduce-scatter ---- */

static tdm_status reduce_scatter_half(tdm_context *ctx, const uint16_t *send,
                                      uint16_t *recv, size_t recv_count,
                                      tdm_dtype dtype, tdm_op op) {
  size_t total = recv_count * (size_t)ctx->size;
  float *wide = malloc((total + recv_count) * sizeof *wide);
  if (!wide)
    return tdmi_error(TDM_ERR_NO_MEMORY, "tdm_reduce_scatter: out of memory");
  float *mine = wide + total;
  tdmi_half_to_f32(dtype, send, wide, total);
  tdmi_mpi_call c = {TDMI_RUN_REDUCE_SCATTER, wide, mine, (int)recv_count,
                     MPI_FLOAT, mpi_op(op), 0, ctx->comm};
  tdm_status st = tdmi_run(&c, "tdm_reduce_scatter", total * sizeof *wide);
  if (st == TDM_SUCCESS) {
    if (op == TDM_MEAN)
      divide_by(TDM_F32, mine, recv_count, ctx->size);
    tdmi_f32_to_half(dtype, mine, recv, recv_count);
  }
  free(wide);
  return st;
}

tdm_status tdm_reduce_scatter(tdm_context *ctx, const void *send, void *recv,
                              size_t recv_count, tdm_dtype dtype, tdm_op op) {
  static const char fn[] = "tdm_reduce_scatter";
  TDMI_CHECK_CTX(ctx, fn);
  size_t bytes;
  tdm_status st = tdmi_check_ptr(fn, send, "send");
  FIRST_FAILURE(st, tdmi_check_ptr(fn, recv, "recv"));
  FIRST_FAILURE(st, tdmi_check_count(fn, recv_count, dtype, 0, &bytes));
  FIRST_FAILURE(st, check_int_count(fn, recv_count));
  FIRST_FAILURE(st, check_op(fn, op, dtype));
  tdmi_signature sig = {TDMI_COLL_REDUCE_SCATTER, dtype, op, TDMI_NO_ROOT,
                        recv_count};
  TDMI_TRY(tdmi_coll_enter(ctx, fn, &sig, st));
  if (is_half(dtype))
    return reduce_scatter_half(ctx, send, recv, recv_count, dtype, op);
  tdmi_mpi_call c = {TDMI_RUN_REDUCE_SCATTER, send, recv, (int)recv_count,
                     tdmi_mpi_move_type(dtype), mpi_op(op), 0, ctx->comm};
  TDMI_TRY(tdmi_run(&c, "tdm_reduce_scatter", bytes * (size_t)ctx->size));
  if (op == TDM_MEAN)
    divide_by(dtype, recv, recv_count, ctx->size);
  return TDM_SUCCESS;
}
