/* run.c - one MPI collective under the watchdog: small ones non-blocking,
 * polled against the deadline; large ones, where MPI_THREAD_MULTIPLE
 * allows, as MPI's blocking call (its fastest algorithms) on the watch's
 * worker thread while the caller waits under the deadline. */
#include "comm.h"

static int blocking(void *arg) {
  const tdmi_mpi_call *c = arg;
  switch (c->kind) {
  case TDMI_RUN_ALLREDUCE:
    return MPI_Allreduce(c->send, c->recv, c->count, c->type, c->op, c->comm);
  case TDMI_RUN_BCAST:
    return MPI_Bcast(c->recv, c->count, c->type, c->root, c->comm);
  case TDMI_RUN_ALLGATHER:
    return MPI_Allgather(c->send, c->count, c->type, c->recv, c->count,
                         c->type, c->comm);
  case TDMI_RUN_GATHER:
    return MPI_Gather(c->send, c->count, c->type, c->recv, c->count, c->type,
                      c->root, c->comm);
  case TDMI_RUN_REDUCE_SCATTER:
    return MPI_Reduce_scatter_block(c->send, c->recv, c->count, c->type,
                                    c->op, c->comm);
  }
  return MPI_ERR_OTHER;
}

static int start(const tdmi_mpi_call *c, MPI_Request *req) {
  switch (c->kind) {
  case TDMI_RUN_ALLREDUCE:
    return MPI_Iallreduce(c->send, c->recv, c->count, c->type, c->op,
                          c->comm, req);
  case TDMI_RUN_BCAST:
    return MPI_Ibcast(c->recv, c->count, c->type, c->root, c->comm, req);
  case TDMI_RUN_ALLGATHER:
    return MPI_Iallgather(c->send, c->count, c->type, c->recv, c->count,
                          c->type, c->comm, req);
  case TDMI_RUN_GATHER:
    return MPI_Igather(c->send, c->count, c->type, c->recv, c->count,
                       c->type, c->root, c->comm, req);
  case TDMI_RUN_REDUCE_SCATTER:
    return MPI_Ireduce_scatter_block(c->send, c->recv, c->count, c->type,
                                     c->op, c->comm, req);
  }
  return MPI_ERR_OTHER;
}

tdm_status tdmi_run_fn(MPI_Comm comm, const char *what, size_t bytes,
                       tdmi_blocking_fn fn, void *arg) {
  if (tdmi_watch_offload(comm, TDMI_BLOCKING_MIN_BYTES))
    return tdmi_watched_blocking(comm, what, bytes, fn, arg);
  TDMI_TRY(tdmi_watch_check(comm, what));
  int rc = fn(arg); /* no worker thread: no deadline either */
  return rc == MPI_SUCCESS ? TDM_SUCCESS : tdmi_mpi_error(rc, what);
}

tdm_status tdmi_run(const tdmi_mpi_call *c, const char *what, size_t bytes) {
  if (tdmi_watch_offload(c->comm, bytes))
    return tdmi_watched_blocking(c->comm, what, bytes, blocking, (void *)c);
  MPI_Request req;
  int rc = start(c, &req);
  return tdmi_watched(c->comm, rc, &req, what, bytes);
}
