/* uneven.c - data whose count differs across ranks: padding, gathering for
 * metrics without the padding duplicates, splitting between processes. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"

/* pad_value must be representable in dtype, or storing it is undefined. */
static tdm_status check_pad_value(const char *fn, tdm_dtype dtype, double v) {
  double lo = 0, hi = 0;
  switch (dtype) {
  case TDM_I32: lo = INT32_MIN, hi = INT32_MAX; break;
  case TDM_I64: lo = -0x1p63, hi = 0x1p63 - 1024; break;
  case TDM_U8: lo = 0, hi = 255; break;
  default: return TDM_SUCCESS;
  }
  if (!(v >= lo && v <= hi) || v != floor(v))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: pad_value %g is not representable as %s", fn, v,
                      tdmi_dtype_name(dtype));
  return TDM_SUCCESS;
}

static tdm_status check_capacity(const char *fn, size_t need, size_t cap) {
  if (need > cap)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: recv_capacity %zu is too small; %zu elements needed",
                      fn, cap, need);
  return TDM_SUCCESS;
}


static tdm_status check_uneven(const char *fn, const void *send, size_t count,
                               tdm_dtype dtype, size_t *out_count) {
  size_t bytes;
  tdm_status st = tdmi_check_count(fn, count, dtype, 1, &bytes);
  if (count > 0)
    FIRST_FAILURE(st, tdmi_check_ptr(fn, send, "send"));
  FIRST_FAILURE(st, tdmi_check_ptr(fn, out_count, "out_count"));
  if (st == TDM_SUCCESS && count > INT_MAX)
    st = tdmi_error(TDM_ERR_NOT_SUPPORTED,
                    "%s: count %zu exceeds MPI's int count", fn, count);
  return st;
}

tdm_status tdm_pad_across_processes(tdm_context *ctx, const void *send,
                                    size_t count, tdm_dtype dtype,
                                    double pad_value, int pad_first,
                                    void *recv, size_t recv_capacity,
                                    size_t *out_count) {
  static const char fn[] = "tdm_pad_across_processes";
  TDMI_CHECK_CTX(ctx, fn);
  tdm_status st = check_uneven(fn, send, count, dtype, out_count);
  FIRST_FAILURE(st, check_pad_value(fn, dtype, pad_value));
  tdmi_signature sig = {TDMI_COLL_PAD, dtype, -1, TDMI_NO_ROOT, TDMI_ANY_COUNT};
  TDMI_TRY(tdmi_coll_enter(ctx, fn, &sig, st));
  unsigned long long mine = count, max = 0;
  MPI_Request req;
  int rc = MPI_Iallreduce(&mine, &max, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX,
                          ctx->comm, &req);
  TDMI_TRY(tdmi_watched(ctx->comm, rc, &req, fn, sizeof max));
  *out_count = (size_t)max;
  if (!recv)
    return TDM_SUCCESS;
  TDMI_TRY(check_capacity(fn, *out_count, recv_capacity));
  size_t esize = tdmi_dtype_size(dtype), npad = *out_count - count;
  size_t data_at = pad_first ? npad : 0, pad_at = pad_first ? 0 : count;
  if (count > 0)
    memmove((char *)recv + data_at * esize, send, count * esize);
  for (size_t i = 0; i < npad; i++)
    tdmi_store(dtype, recv, pad_at + i, pad_value);
  return TDM_SUCCESS;
}

/* Fills counts[] and displs[] (MPI ints) from every rank's valid count. */
static tdm_status exchange_counts(tdm_context *ctx, size_t valid, int *counts,
                                  int *displs, size_t *total) {
  int mine = (int)valid;
  MPI_Request req;
  int rc = MPI_Iallgather(&mine, 1, MPI_INT, counts, 1, MPI_INT, ctx->comm,
                          &req);
  TDMI_TRY(tdmi_watched(ctx->comm, rc, &req, "tdm_gather_for_metrics",
                        sizeof mine));
  *total = 0;
  for (int r = 0; r < ctx->size; r++) {
    if (*total > INT_MAX)
      return tdmi_error(TDM_ERR_NOT_SUPPORTED,
                        "tdm_gather_for_metrics: more than INT_MAX elements");
    displs[r] = (int)*total;
    *total += (size_t)counts[r];
  }
  return TDM_SUCCESS;
}

tdm_status tdm_gather_for_metrics(tdm_context *ctx, const void *send,
                                  size_t count, size_t valid_count,
                                  tdm_dtype dtype, void *recv,
                                  size_t recv_capacity, size_t *out_count) {
  static const char fn[] = "tdm_gather_for_metrics";
  TDMI_CHECK_CTX(ctx, fn);
  tdm_status st = check_uneven(fn, send, count, dtype, out_count);
  if (st == TDM_SUCCESS && valid_count > count)
    st = tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                    "%s: valid_count %zu exceeds count %zu", fn, valid_count,
                    count);
  tdmi_signature sig = {TDMI_COLL_GATHER_METRICS, dtype, -1, TDMI_NO_ROOT,
                        TDMI_ANY_COUNT};
  TDMI_TRY(tdmi_coll_enter(ctx, fn, &sig, st));
  int *counts = malloc(2 * sizeof *counts * (size_t)ctx->size);
  if (!counts)
    return tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", fn);
  int *displs = counts + ctx->size;
  size_t total = 0;
  st = exchange_counts(ctx, valid_count, counts, displs, &total);
  if (st == TDM_SUCCESS) {
    *out_count = total;
    /* Every rank joins the data exchange, or none does. */
    tdm_status fits = recv ? check_capacity(fn, total, recv_capacity)
                           : TDM_SUCCESS;
    st = tdmi_agree(ctx->comm, fits, fn);
  }
  if (st == TDM_SUCCESS && recv) {
    MPI_Datatype t = tdmi_mpi_move_type(dtype);
    MPI_Request req;
    int rc = MPI_Iallgatherv(send, (int)valid_count, t, recv, counts, displs,
                             t, ctx->comm, &req);
    st = tdmi_watched(ctx->comm, rc, &req, fn,
                      total * tdmi_dtype_size(dtype));
  }
  free(counts);
  return st;
}

tdm_status tdm_split_between_processes(const tdm_context *ctx, size_t total,
                                       int pad, size_t *begin, size_t *count,
                                       size_t *pad_count) {
  static const char fn[] = "tdm_split_between_processes";
  TDMI_CHECK_CTX(ctx, fn);
  TDMI_CHECK_PTR(begin, fn);
  TDMI_CHECK_PTR(count, fn);
  TDMI_CHECK_PTR(pad_count, fn);
  size_t n = (size_t)ctx->size, r = (size_t)ctx->rank;
  size_t base = total / n, extra = total % n;
  *count = base + (r < extra ? 1 : 0);
  *begin = r * base + (r < extra ? r : extra);
  size_t most = base + (extra ? 1 : 0);
  *pad_count = pad && total > 0 ? most - *count : 0;
  return TDM_SUCCESS;
}
