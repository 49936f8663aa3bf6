/* async.c - the engine's traffic: a private communicator, in-place
 * non-blocking sums of gradient buckets, and a chunked byte broadcast.
 * The engine sees requests, never MPI calls. */
#include <limits.h>

#include "config.h"
#include "comm.h"

#ifdef HAVE_MPI_EXT_H
#include <mpi-ext.h> /* Open MPI's extensions; needs mpi.h first */
#endif

#define BCAST_CHUNK ((size_t)1 << 30) /* bytes per MPI_Bcast (< INT_MAX) */

tdm_status tdmi_comm_dup(MPI_Comm parent, MPI_Comm *out, const char *name) {
  int rc = MPI_Comm_dup(parent, out);
  if (rc != MPI_SUCCESS)
    return tdmi_mpi_error(rc, "MPI_Comm_dup (engine)");
  MPI_Comm_set_errhandler(*out, MPI_ERRORS_RETURN);
  MPI_Comm_set_name(*out, name);
  return TDM_SUCCESS;
}

void tdmi_comm_free(MPI_Comm *comm) {
  if (*comm != MPI_COMM_NULL)
    MPI_Comm_free(comm);
}

int tdmi_thread_multiple(void) {
  int level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&level);
  return level == MPI_THREAD_MULTIPLE;
}

int tdmi_mpi_cuda_aware(void) {
#if defined(MPIX_CUDA_AWARE_SUPPORT)
  /* The macro only says how Open MPI was built; whether CUDA support is
   * usable (its accelerator component loaded) is known at run time. */
  return MPIX_Query_cuda_support() == 1;
#else
  return 0; /* no way to ask: assume host pointers only */
#endif
}

static int is_half(tdm_dtype dtype) {
  return dtype == TDM_BF16 || dtype == TDM_F16;
}

/* MPI_User_function: inout[i] += in[i] over 16-bit words. */
#define HALF_SUM(name, to_f32, from_f32)                                   \
  static void name(void *in, void *inout, int *len, MPI_Datatype *type) {  \
    (void)type;                                                            \
    const uint16_t *a = in;                                                \
    uint16_t *b = inout;                                                   \
    for (int i = 0; i < *len; i++)                                        \
      b[i] = from_f32(to_f32(a[i]) + to_f32(b[i]));                        \
  }
HALF_SUM(sum_bf16, tdmi_bf16_to_f32, tdmi_f32_to_bf16)
HALF_SUM(sum_f16, tdmi_f16_to_f32, tdmi_f32_to_f16)

tdm_status tdmi_sum_op_create(tdm_dtype dtype, MPI_Op *op) {
  *op = MPI_SUM;
  if (!is_half(dtype))
    return TDM_SUCCESS;
  int rc = MPI_Op_create(dtype == TDM_BF16 ? sum_bf16 : sum_f16, 1, op);
  return rc == MPI_SUCCESS ? TDM_SUCCESS
                           : tdmi_mpi_error(rc, "MPI_Op_create (half sum)");
}

void tdmi_sum_op_free(MPI_Op *op) {
  if (*op != MPI_SUM && *op != MPI_OP_NULL)
    MPI_Op_free(op);
  *op = MPI_OP_NULL;
}

/* A bucket MPI can sum in one call: a float dtype, an int count. */
static tdm_status check_bucket(size_t count, tdm_dtype dtype) {
  if (count > INT_MAX)
    return tdmi_error(TDM_ERR_NOT_SUPPORTED,
                      "bucket of %zu elements exceeds MPI's int count", count);
  if (dtype != TDM_F32 && dtype != TDM_F64 && !is_half(dtype))
    return tdmi_error(TDM_ERR_INTERNAL, "bucket sum: dtype %s",
                      tdmi_dtype_name(dtype));
  return TDM_SUCCESS;
}

tdm_status tdmi_isum(MPI_Comm comm, void *buf, size_t count, tdm_dtype dtype,
                     MPI_Op op, MPI_Request *req) {
  TDMI_TRY(check_bucket(count, dtype));
  int rc = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)count,
                          tdmi_mpi_move_type(dtype), op, comm, req);
  return rc == MPI_SUCCESS ? TDM_SUCCESS
                           : tdmi_mpi_error(rc, "MPI_Iallreduce (bucket)");
}

tdm_status tdmi_sum(MPI_Comm comm, void *buf, size_t count, tdm_dtype dtype,
                    MPI_Op op, const char *what) {
  TDMI_TRY(check_bucket(count, dtype));
  uint64_t seq = tdmi_flight_blocked(comm, what,
                                     count * tdmi_dtype_size(dtype));
  int rc = MPI_Allreduce(MPI_IN_PLACE, buf, (int)count,
                         tdmi_mpi_move_type(dtype), op, comm);
  tdmi_flight_end(comm, seq, rc == MPI_SUCCESS);
  return rc == MPI_SUCCESS ? TDM_SUCCESS : tdmi_mpi_error(rc, what);
}

tdm_status tdmi_ireduce_scatter(MPI_Comm comm, void *buf, size_t chunk,
                                tdm_dtype dtype, MPI_Op op, MPI_Request *req) {
  TDMI_TRY(check_bucket(chunk, dtype));
  int rc = MPI_Ireduce_scatter_block(MPI_IN_PLACE, buf, (int)chunk,
                                     tdmi_mpi_move_type(dtype), op, comm, req);
  return rc == MPI_SUCCESS
             ? TDM_SUCCESS
             : tdmi_mpi_error(rc, "MPI_Ireduce_scatter_block (bucket)");
}

tdm_status tdmi_reduce_scatter(MPI_Comm comm, void *buf, size_t chunk,
                               tdm_dtype dtype, MPI_Op op, const char *what) {
  TDMI_TRY(check_bucket(chunk, dtype));
  uint64_t seq = tdmi_flight_blocked(comm, what,
                                     chunk * tdmi_dtype_size(dtype));
  int rc = MPI_Reduce_scatter_block(MPI_IN_PLACE, buf, (int)chunk,
                                    tdmi_mpi_move_type(dtype), op, comm);
  tdmi_flight_end(comm, seq, rc == MPI_SUCCESS);
  return rc == MPI_SUCCESS ? TDM_SUCCESS : tdmi_mpi_error(rc, what);
}

static tdm_status check_bytes(size_t bytes) {
  if (bytes > INT_MAX)
    return tdmi_error(TDM_ERR_NOT_SUPPORTED,
                      "a shard of %zu bytes exceeds MPI's int count", bytes);
  return TDM_SUCCESS;
}

tdm_status tdmi_iallgather_bytes(MPI_Comm comm, const void *send, void *recv,
                                 size_t bytes, MPI_Request *req) {
  TDMI_TRY(check_bytes(bytes));
  int rc = MPI_Iallgather(send ? send : MPI_IN_PLACE, (int)bytes, MPI_BYTE,
                          recv, (int)bytes, MPI_BYTE, comm, req);
  return rc == MPI_SUCCESS ? TDM_SUCCESS
                           : tdmi_mpi_error(rc, "MPI_Iallgather (shards)");
}

tdm_status tdmi_allgather_bytes(MPI_Comm comm, const void *send, void *recv,
                                size_t bytes) {
  TDMI_TRY(check_bytes(bytes));
  tdmi_mpi_call c = {TDMI_RUN_ALLGATHER, send ? send : MPI_IN_PLACE, recv,
                     (int)bytes, MPI_BYTE, MPI_OP_NULL, 0, comm};
  return tdmi_run(&c, "shard allgather", bytes);
}

tdm_status tdmi_bor_bytes(MPI_Comm comm, void *buf, size_t bytes) {
  TDMI_TRY(check_bytes(bytes));
  tdmi_mpi_call c = {TDMI_RUN_ALLREDUCE, MPI_IN_PLACE, buf, (int)bytes,
                     MPI_BYTE, MPI_BOR, 0, comm};
  return tdmi_run(&c, "allreduce (bitwise or of shards)", bytes);
}

tdm_status tdmi_min_int(MPI_Comm comm, int *value, const char *what) {
  MPI_Request req;
  int rc = MPI_Iallreduce(MPI_IN_PLACE, value, 1, MPI_INT, MPI_MIN, comm, &req);
  return tdmi_watched(comm, rc, &req, what, sizeof *value);
}

tdm_status tdmi_sum_doubles(MPI_Comm comm, double *values, int n) {
  MPI_Request req;
  int rc = MPI_Iallreduce(MPI_IN_PLACE, values, n, MPI_DOUBLE, MPI_SUM, comm,
                          &req);
  return tdmi_watched(comm, rc, &req, "allreduce (partial sums)",
                      (size_t)n * sizeof *values);
}

tdm_status tdmi_bcast_bytes(MPI_Comm comm, void *buf, size_t bytes, int root) {
  for (size_t off = 0; off < bytes; off += BCAST_CHUNK) {
    size_t n = bytes - off < BCAST_CHUNK ? bytes - off : BCAST_CHUNK;
    tdmi_mpi_call c = {TDMI_RUN_BCAST, NULL, (char *)buf + off, (int)n,
                       MPI_BYTE, MPI_OP_NULL, root, comm};
    TDMI_TRY(tdmi_run(&c, "broadcast", n));
  }
  return TDM_SUCCESS;
}

