/* signature.c - TANDEM_DEBUG collective signature checks and cross-rank
 * agreement on failures. */
#include <stdlib.h>
#include <string.h>

#include "comm.h"

static const char *const coll_names[TDMI_NUM_COLLS] = {
    "allreduce", "broadcast", "allgather", "gather", "reduce_scatter",
    "pad_across_processes", "gather_for_metrics", "barrier", "main_first",
    "check_trigger", "should_stop"};

static int describe(const tdmi_signature *s, char *out, size_t cap) {
  const char *coll = (unsigned)s->coll < TDMI_NUM_COLLS ? coll_names[s->coll]
                                                        : "?";
  int n = snprintf(out, cap, "%s(dtype=%s, op=%s", coll,
                   tdmi_dtype_name((tdm_dtype)s->dtype),
                   s->op < 0 ? "none" : tdmi_op_name((tdm_op)s->op));
  if (s->count != TDMI_ANY_COUNT)
    n += snprintf(out + n, cap - (size_t)n, ", count=%llu",
                  (unsigned long long)s->count);
  if (s->root != TDMI_NO_ROOT)
    n += snprintf(out + n, cap - (size_t)n, ", root=%d", (int)s->root);
  return n + snprintf(out + n, cap - (size_t)n, ")");
}

static int same(const tdmi_signature *a, const tdmi_signature *b) {
  return a->coll == b->coll && a->dtype == b->dtype && a->op == b->op &&
         a->root == b->root && a->count == b->count;
}

typedef struct {
  tdmi_signature sig;
  int32_t status;
  int32_t pad;
} sig_record;

/* Names rank 0's call and up to four ranks whose call differs from it. */
static tdm_status report_mismatch(const char *fn, const sig_record *all,
                                  int size) {
  char msg[900], call[160];
  describe(&all[0].sig, call, sizeof call);
  int n = snprintf(msg, sizeof msg, "rank 0 called %s", call);
  int shown = 0;
  for (int r = 1; r < size && shown < 4; r++) {
    if (same(&all[r].sig, &all[0].sig))
      continue;
    describe(&all[r].sig, call, sizeof call);
    n += snprintf(msg + n, sizeof msg - (size_t)n, "; rank %d called %s", r,
                  call);
    shown++;
  }
  return tdmi_error(TDM_ERR_MISMATCH, "%s: ranks disagree (TANDEM_DEBUG): %s",
                    fn, msg);
}

tdm_status tdmi_coll_enter(tdm_context *ctx, const char *fn,
                           const tdmi_signature *sig, tdm_status local) {
  if (!ctx->config.debug)
    return local;
  sig_record mine = {*sig, (int32_t)local, 0};
  sig_record *all = malloc(sizeof *all * (size_t)ctx->size);
  if (!all)
    return tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", fn);
  MPI_Request req;
  int rc = MPI_Iallgather(&mine, (int)sizeof mine, MPI_BYTE, all,
                          (int)sizeof mine, MPI_BYTE, ctx->comm, &req);
  tdm_status got = tdmi_watched(ctx->comm, rc, &req, fn, sizeof mine);
  tdm_status st = local;
  int bad = -1, differ = 0;
  for (int r = 0; got == TDM_SUCCESS && r < ctx->size; r++) {
    if (all[r].status != TDM_SUCCESS && bad < 0)
      bad = r;
    differ |= !same(&all[r].sig, &all[0].sig);
  }
  if (got != TDM_SUCCESS)
    st = got;
  else if (bad >= 0) /* every rank saw it: all agree on one status */
    st = tdmi_agree(ctx->comm, local, fn);
  else if (differ)
    st = report_mismatch(fn, all, ctx->size);
  free(all);
  if (st != TDM_SUCCESS)
    tdmi_log(ctx, TDM_LOG_WARN, "%s", tdm_last_error());
  return st;
}

/* One failure, one status: every rank returns the status of the lowest
 * failing rank, with a message naming that rank and quoting its own (which
 * names the call); a rank that failed too, differently, adds its own. */
tdm_status tdmi_agree(MPI_Comm comm, tdm_status local, const char *what) {
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  int failing = local == TDM_SUCCESS ? size : rank, first = size;
  /* Whatever failed locally, a timeout of this agreement says more. */
  char own_error[768];
  snprintf(own_error, sizeof own_error, "%s", tdm_last_error());
  MPI_Request req;
  int rc = MPI_Iallreduce(&failing, &first, 1, MPI_INT, MPI_MIN, comm, &req);
  TDMI_TRY(tdmi_watched(comm, rc, &req, what, sizeof first));
  if (first == size)
    return TDM_SUCCESS;
  char msg[768] = "", own[768] = "";
  int status = local;
  if (local != TDM_SUCCESS)
    snprintf(rank == first ? msg : own, sizeof msg, "%s", own_error);
  MPI_Request reqs[2];
  MPI_Ibcast(&status, 1, MPI_INT, first, comm, &reqs[0]);
  rc = MPI_Ibcast(msg, (int)sizeof msg, MPI_CHAR, first, comm, &reqs[1]);
  tdm_status st = tdmi_watched(comm, MPI_SUCCESS, &reqs[0], what, sizeof status);
  if (st == TDM_SUCCESS)
    st = tdmi_watched(comm, rc, &reqs[1], what, sizeof msg);
  if (st != TDM_SUCCESS)
    return st;
  /* the message names the call; else what the ranks were agreeing on */
  size_t wl = strlen(what);
  int names_call = strncmp(msg, what, wl) == 0 && msg[wl] == ':';
  return tdmi_error((tdm_status)status, "rank %d: %s%s%s%s%s", first,
                    names_call ? "" : what, names_call ? "" : ": ", msg,
                    own[0] ? "; this rank also: " : "", own);
}

tdm_status tdmi_check_ptr(const char *fn, const void *p, const char *name) {
  return p ? TDM_SUCCESS
           : tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, name);
}

tdm_status tdmi_check_count(const char *fn, size_t count, tdm_dtype dtype,
                            int allow_zero, size_t *bytes) {
  size_t esize = tdmi_dtype_size(dtype);
  if (esize == 0)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: dtype %d is not a tdm_dtype", fn, (int)dtype);
  if (count == 0 && !allow_zero)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: count is 0", fn);
  if (count > (size_t)PTRDIFF_MAX / esize)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: count %zu is negative or too large (as signed: "
                      "%lld)", fn, count, (long long)(ptrdiff_t)count);
  *bytes = count * esize;
  return TDM_SUCCESS;
}

MPI_Datatype tdmi_mpi_move_type(tdm_dtype dtype) {
  switch (dtype) {
  case TDM_F32: return MPI_FLOAT;
  case TDM_F64: return MPI_DOUBLE;
  case TDM_F16:
  case TDM_BF16: return MPI_UINT16_T;
  case TDM_I32: return MPI_INT32_T;
  case TDM_I64: return MPI_INT64_T;
  default: return MPI_UINT8_T;
  }
}
