/* nccl.c - NCCL communicators bootstrapped over MPI: rank 0 of an MPI
 * communicator makes the unique ID, MPI_Bcast gives it to every rank, and
 * each rank joins on its current device.  Initialization is non-blocking
 * and polled with ncclCommGetAsyncError under a timeout, so a rank that
 * never arrives or a failed peer ends in ncclCommAbort and an error
 * status, never in a silent hang. */
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
  int rc = MPI_Allreduce(&want, &all, 1, MPI_INT, MPI_MIN, comm);
  if (rc != MPI_SUCCESS)
    return tdmi_mpi_error(rc, "MPI_Allreduce (NCCL wanted)");
  return all ? tdmi_nccl_create(comm, timeout_s, out) : TDM_SUCCESS;
}

#ifdef HAVE_NCCL

struct tdmi_nccl {
  ncclComm_t comm;
  int rank, size;
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

static double seconds_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

tdm_status tdmi_nccl_poll(tdmi_nccl *n, double timeout_s, const char *what) {
  double deadline = seconds_now() + timeout_s;
  ncclResult_t state = ncclInProgress;
  for (;;) {
    ncclResult_t r = ncclCommGetAsyncError(n->comm, &state);
    if (r != ncclSuccess)
      state = r;
    if (state != ncclInProgress || seconds_now() > deadline)
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

#endif
