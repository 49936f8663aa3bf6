/* nccl.c - NCCL communicators bootstrapped over MPI: rank 0 of an MPI
 * communicator makes the unique ID, MPI_Bcast gives it to every rank, and
 * each rank joins on its current device.  Initialization is non-blocking
 * and polled with ncclCommGetAsyncError under a timeout, so a rank that
 * never arrives or a failed peer ends in ncclCommAbort and an error
 * status, never in a silent hang.  On such a communicator, in-place
 * collectives on device buffers queue work on a caller's stream and
 * return without waiting for it. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "comm.h"

#ifdef HAVE_NCCL
#include <nccl.h>
#endif

int tdmi_nccl_version(void) {
#ifdef HAVE_NCCL
  int v = 0;
  return ncclGetVersion(&v) == ncclSuccess ? v : 0;
#else
  return 0;
#endif
}

tdm_status tdmi_comm_split_node(MPI_Comm comm, MPI_Comm *local,
                                MPI_Comm *cross) {
  int rank, local_rank;
  *local = *cross = MPI_COMM_NULL;
  int rc = MPI_Comm_rank(comm, &rank);
  if (rc == MPI_SUCCESS)
    rc = MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL,
                             local);
  if (rc == MPI_SUCCESS)
    rc = MPI_Comm_rank(*local, &local_rank);
  /* Ranks with the same local rank, one per node, in node order. */
  if (rc == MPI_SUCCESS)
    rc = MPI_Comm_split(comm, local_rank, rank, cross);
  if (rc != MPI_SUCCESS) {
    tdmi_comm_free(local);
    tdmi_comm_free(cross);
    return tdmi_mpi_error(rc, "MPI_Comm_split (node-local and cross-node)");
  }
  return TDM_SUCCESS;
}

tdm_status tdmi_nccl_create_if_all(MPI_Comm comm, int want, double timeout_s,
                                   tdmi_nccl **out) {
  int all = 0;
  *out = NULL;
  tdmi_mpi_call c = {TDMI_RUN_ALLREDUCE, &want, &all, 1, MPI_INT, MPI_MIN, 0,
                     comm};
  TDMI_TRY(tdmi_run(&c, "NCCL wanted on every rank", sizeof all));
  return all ? tdmi_nccl_create(comm, timeout_s, out) : TDM_SUCCESS;
}

#ifdef HAVE_NCCL

struct tdmi_nccl {
  ncclComm_t comm; /* NULL once aborted */
  int rank, size;
  double timeout_s; /* the creation timeout, reused for later polls */
};

static tdm_status nccl_error(ncclResult_t r, const char *call) {
  return tdmi_error(TDM_ERR_NCCL, "%s failed: %s (%s)", call,
                    ncclGetErrorString(r), ncclGetLastError(NULL));
}

tdm_status tdmi_nccl_unique_id(MPI_Comm comm, void *id) {
  int rank;
  int rc = MPI_Comm_rank(comm, &rank);
  if (rc != MPI_SUCCESS)
    return tdmi_mpi_error(rc, "MPI_Comm_rank");
  ncclResult_t r = ncclSuccess;
  if (rank == 0)
    r = ncclGetUniqueId((ncclUniqueId *)id);
  /* Every rank learns whether rank 0 made one before using it. */
  tdm_status st = r == ncclSuccess ? TDM_SUCCESS
                                   : nccl_error(r, "ncclGetUniqueId");
  TDMI_TRY(tdmi_agree(comm, st, "NCCL unique id on rank 0"));
  return tdmi_bcast_bytes(comm, id, sizeof(ncclUniqueId), 0);
}

tdm_status tdmi_nccl_poll(tdmi_nccl *n, double timeout_s, const char *what) {
  double deadline = tdmi_seconds_now() + timeout_s;
  ncclResult_t state = ncclInProgress;
  for (;;) {
    ncclResult_t r = ncclCommGetAsyncError(n->comm, &state);
    if (r != ncclSuccess)
      state = r;
    if (state != ncclInProgress || tdmi_seconds_now() > deadline)
      break;
    struct timespec pause = {0, 100000}; /* 0.1 ms between polls */
    nanosleep(&pause, NULL);
  }
  if (state == ncclSuccess)
    return TDM_SUCCESS;
  tdm_status st = state == ncclInProgress
                      ? tdmi_error(TDM_ERR_NCCL,
                                   "%s: NCCL did not finish within %g s on "
                                   "rank %d of %d; communicator aborted", what,
                                   timeout_s, n->rank, n->size)
                      : nccl_error(state, what);
  ncclCommAbort(n->comm);
  n->comm = NULL;
  return st;
}

tdm_status tdmi_nccl_create(MPI_Comm comm, double timeout_s,
                            tdmi_nccl **out) {
  *out = NULL;
  ncclUniqueId id;
  TDMI_TRY(tdmi_nccl_unique_id(comm, &id));
  tdmi_nccl *n = calloc(1, sizeof *n);
  if (!n)
    return tdmi_error(TDM_ERR_NO_MEMORY, "NCCL communicator: out of memory");
  MPI_Comm_rank(comm, &n->rank);
  MPI_Comm_size(comm, &n->size);
  n->timeout_s = timeout_s;
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t r =
      ncclCommInitRankConfig(&n->comm, n->size, id, n->rank, &config);
  tdm_status st = TDM_SUCCESS;
  if (r != ncclSuccess && r != ncclInProgress)
    st = nccl_error(r, "ncclCommInitRankConfig");
  else
    st = tdmi_nccl_poll(n, timeout_s, "ncclCommInitRankConfig");
  st = tdmi_agree(comm, st, "NCCL communicator");
  if (st != TDM_SUCCESS) {
    tdmi_nccl_destroy(n);
    return st;
  }
  *out = n;
  return TDM_SUCCESS;
}

void tdmi_nccl_destroy(tdmi_nccl *n) {
  if (!n)
    return;
  if (n->comm)
    ncclCommDestroy(n->comm);
  free(n);
}

/* ---- stream-ordered collectives on device buffers ---- */

int tdmi_nccl_rank(const tdmi_nccl *n) { return n ? n->rank : -1; }
int tdmi_nccl_size(const tdmi_nccl *n) { return n ? n->size : -1; }

/* A communicator that can take work: not NULL and not aborted by an
 * earlier error or timeout (tdmi_nccl_poll). */
static tdm_status check_comm(const char *fn, const tdmi_nccl *n) {
  TDMI_TRY(tdmi_check_ptr(fn, n, "communicator"));
  if (!n->comm)
    return tdmi_error(TDM_ERR_NCCL, "%s: the NCCL communicator was aborted "
                      "by an earlier error", fn);
  return TDM_SUCCESS;
}

/* NCCL's type for the float dtypes it sums. */
static tdm_status sum_type(const char *fn, tdm_dtype dtype,
                           ncclDataType_t *t) {
  switch (dtype) {
  case TDM_F32: *t = ncclFloat32; return TDM_SUCCESS;
  case TDM_F64: *t = ncclFloat64; return TDM_SUCCESS;
  case TDM_F16: *t = ncclFloat16; return TDM_SUCCESS;
  case TDM_BF16: *t = ncclBfloat16; return TDM_SUCCESS;
  default:
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: dtype %s: NCCL sums "
                      "only f32, f64, f16 and bf16", fn,
                      tdmi_dtype_name(dtype));
  }
}

/* Checks count elements of dtype (0 allowed) and, when the call spans
 * every rank's part (per_rank), that size * count * element fits
 * memory; sets *bytes to count * element. */
static tdm_status check_span(const char *fn, const tdmi_nccl *n,
                             size_t count, tdm_dtype dtype, int per_rank,
                             size_t *bytes) {
  TDMI_TRY(tdmi_check_count(fn, count, dtype, 1, bytes));
  if (per_rank && *bytes > (size_t)PTRDIFF_MAX / (size_t)n->size)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: %d ranks x %zu bytes "
                      "overflows the buffer's size", fn, n->size, *bytes);
  return TDM_SUCCESS;
}

/* A call that failed outright may have left the communicator in an error
 * state; abort it then, so that later calls fail at once instead of
 * queueing work that can never complete. */
static void abort_if_broken(tdmi_nccl *n) {
  ncclResult_t state = ncclSuccess;
  if (ncclCommGetAsyncError(n->comm, &state) != ncclSuccess ||
      (state != ncclSuccess && state != ncclInProgress)) {
    ncclCommAbort(n->comm);
    n->comm = NULL;
  }
}

/* The outcome of queueing one collective.  On a non-blocking communicator
 * ncclInProgress means NCCL is still enqueuing the work (not that the GPU
 * is still running it), so polling waits for the enqueue only and the host
 * never waits on the stream; the creation timeout bounds it. */
static tdm_status queued(tdmi_nccl *n, ncclResult_t r, const char *call) {
  if (r == ncclSuccess)
    return TDM_SUCCESS;
  if (r == ncclInProgress)
    return tdmi_nccl_poll(n, n->timeout_s, call);
  tdm_status st = nccl_error(r, call);
  abort_if_broken(n);
  return st;
}

tdm_status tdmi_nccl_sum(tdmi_nccl *n, void *buf, size_t count,
                         tdm_dtype dtype, void *stream) {
  static const char fn[] = "tdmi_nccl_sum";
  size_t bytes;
  ncclDataType_t t;
  TDMI_TRY(check_comm(fn, n));
  TDMI_TRY(check_span(fn, n, count, dtype, 0, &bytes));
  TDMI_TRY(sum_type(fn, dtype, &t));
  if (count == 0)
    return TDM_SUCCESS;
  TDMI_TRY(tdmi_check_ptr(fn, buf, "buf"));
  return queued(n, ncclAllReduce(buf, buf, count, t, ncclSum, n->comm,
                                 (cudaStream_t)stream),
                "ncclAllReduce");
}

tdm_status tdmi_nccl_reduce_scatter(tdmi_nccl *n, void *buf, size_t chunk,
                                    tdm_dtype dtype, void *stream) {
  static const char fn[] = "tdmi_nccl_reduce_scatter";
  size_t bytes;
  ncclDataType_t t;
  TDMI_TRY(check_comm(fn, n));
  TDMI_TRY(check_span(fn, n, chunk, dtype, 1, &bytes));
  TDMI_TRY(sum_type(fn, dtype, &t));
  if (chunk == 0)
    return TDM_SUCCESS;
  TDMI_TRY(tdmi_check_ptr(fn, buf, "buf"));
  /* NCCL's in-place form: the receive buffer is this rank's own chunk. */
  char *mine = (char *)buf + (size_t)n->rank * bytes;
  return queued(n, ncclReduceScatter(buf, mine, chunk, t, ncclSum, n->comm,
                                     (cudaStream_t)stream),
                "ncclReduceScatter");
}

tdm_status tdmi_nccl_allgather_bytes(tdmi_nccl *n, void *recv, size_t bytes,
                                     void *stream) {
  static const char fn[] = "tdmi_nccl_allgather_bytes";
  size_t b;
  TDMI_TRY(check_comm(fn, n));
  TDMI_TRY(check_span(fn, n, bytes, TDM_U8, 1, &b));
  if (bytes == 0)
    return TDM_SUCCESS;
  TDMI_TRY(tdmi_check_ptr(fn, recv, "recv"));
  /* NCCL's in-place form: the send buffer is this rank's own part. */
  const char *mine = (const char *)recv + (size_t)n->rank * bytes;
  return queued(n, ncclAllGather(mine, recv, bytes, ncclUint8, n->comm,
                                 (cudaStream_t)stream),
                "ncclAllGather");
}

tdm_status tdmi_nccl_bcast_bytes(tdmi_nccl *n, void *buf, size_t bytes,
                                 int root, void *stream) {
  static const char fn[] = "tdmi_nccl_bcast_bytes";
  size_t b;
  TDMI_TRY(check_comm(fn, n));
  TDMI_TRY(check_span(fn, n, bytes, TDM_U8, 0, &b));
  if (root < 0 || root >= n->size)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: root %d is outside "
                      "ranks [0, %d)", fn, root, n->size);
  if (bytes == 0)
    return TDM_SUCCESS;
  TDMI_TRY(tdmi_check_ptr(fn, buf, "buf"));
  return queued(n, ncclBroadcast(buf, buf, bytes, ncclUint8, root, n->comm,
                                 (cudaStream_t)stream),
                "ncclBroadcast");
}

tdm_status tdmi_nccl_check(tdmi_nccl *n, const char *what) {
  TDMI_TRY(check_comm(what, n));
  ncclResult_t state = ncclSuccess;
  ncclResult_t r = ncclCommGetAsyncError(n->comm, &state);
  if (r != ncclSuccess)
    state = r;
  if (state == ncclSuccess || state == ncclInProgress)
    return TDM_SUCCESS;
  tdm_status st = tdmi_error(TDM_ERR_NCCL, "%s: NCCL failed on rank %d of "
                             "%d: %s; communicator aborted", what, n->rank,
                             n->size, ncclGetErrorString(state));
  ncclCommAbort(n->comm);
  n->comm = NULL;
  return st;
}

tdm_status tdmi_nccl_abort(tdmi_nccl *n, const char *what, double waited_s) {
  TDMI_TRY(check_comm(what, n));
  ncclCommAbort(n->comm);
  n->comm = NULL;
  return tdmi_error(TDM_ERR_NCCL, "%s: NCCL did not finish within %g s on "
                    "rank %d of %d (a peer died or never arrived); "
                    "communicator aborted", what, waited_s, n->rank, n->size);
}

#else /* without NCCL */

struct tdmi_nccl {
  int unused;
};

static tdm_status without(void) {
  return tdmi_error(TDM_ERR_NOT_SUPPORTED, "this tandem was built without "
                    "NCCL");
}

tdm_status tdmi_nccl_unique_id(MPI_Comm comm, void *id) {
  (void)comm, (void)id;
  return without();
}

tdm_status tdmi_nccl_poll(tdmi_nccl *n, double timeout_s, const char *what) {
  (void)n, (void)timeout_s, (void)what;
  return without();
}

tdm_status tdmi_nccl_create(MPI_Comm comm, double timeout_s,
                            tdmi_nccl **out) {
  (void)comm, (void)timeout_s;
  *out = NULL;
  return without();
}

void tdmi_nccl_destroy(tdmi_nccl *n) { (void)n; }

/* No communicator can exist without NCCL: these only report so. */
int tdmi_nccl_rank(const tdmi_nccl *n) { (void)n; return -1; }
int tdmi_nccl_size(const tdmi_nccl *n) { (void)n; return -1; }

tdm_status tdmi_nccl_sum(tdmi_nccl *n, void *buf, size_t count,
                         tdm_dtype dtype, void *stream) {
  (void)n, (void)buf, (void)count, (void)dtype, (void)stream;
  return without();
}

tdm_status tdmi_nccl_reduce_scatter(tdmi_nccl *n, void *buf, size_t chunk,
                                    tdm_dtype dtype, void *stream) {
  (void)n, (void)buf, (void)chunk, (void)dtype, (void)stream;
  return without();
}

tdm_status tdmi_nccl_allgather_bytes(tdmi_nccl *n, void *recv, size_t bytes,
                                     void *stream) {
  (void)n, (void)recv, (void)bytes, (void)stream;
  return without();
}

tdm_status tdmi_nccl_bcast_bytes(tdmi_nccl *n, void *buf, size_t bytes,
                                 int root, void *stream) {
  (void)n, (void)buf, (void)bytes, (void)root, (void)stream;
  return without();
}

tdm_status tdmi_nccl_check(tdmi_nccl *n, const char *what) {
  (void)n, (void)what;
  return without();
}

tdm_status tdmi_nccl_abort(tdmi_nccl *n, const char *what, double waited_s) {
  (void)n, (void)what, (void)waited_s;
  return without();
}

#endif
