/* transport.c - the engine's collectives on its own buffers.  Host
 * buffers go to MPI.  Device buffers go, as gpu_collectives chooses, to
 * NCCL on a communication stream that waits for an event on the compute
 * stream (the host never blocks for it); to MPI on the device pointers
 * once the compute stream has produced them (CUDA-aware MPI); or to MPI
 * on pinned host copies (staged).  Each channel has its own MPI and NCCL
 * communicators, so reductions and ZeRO-3 gathers never depend on each
 * other's order across ranks. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "engine.h"

/* Forming an NCCL communicator waits for every rank; a rank that never
 * arrives becomes an error, not a hang (as in tdm_init). */
#define NCCL_INIT_TIMEOUT_S 300.0
/* A reduction that has not finished after this long is taken for a dead
 * peer (PyTorch's NCCL watchdog waits 10 minutes too). */
#define NCCL_WATCH_TIMEOUT_S 600.0

static const char *const xport_names[] = {"host", "nccl", "mpi", "staged"};

/* The transport every rank can use, as gpu_collectives asks. */
static tdm_status pick_xport(tdm_engine *e) {
  int want = e->ctx->config.gpu_collectives;
  /* What every rank has: NCCL (not asked away), and MPI that takes device
   * pointers (fake GPU memory is host memory: any MPI takes it). */
  int mine[2] = {tdmi_nccl_version() > 0 && !tdmi_device_fake() &&
                     want != TDM_GPU_COLLECTIVES_MPI &&
                     want != TDM_GPU_COLLECTIVES_STAGED,
                 tdmi_mpi_cuda_aware() || tdmi_device_fake()};
  int all[2] = {0, 0};
  tdmi_mpi_call c = {TDMI_RUN_ALLREDUCE, mine, all, 2, MPI_INT, MPI_MIN, 0,
                     e->ctx->comm};
  TDMI_TRY(tdmi_run(&c, "tdm_engine_create (NCCL and CUDA-aware MPI)",
                    sizeof all));
  int nccl_everywhere = all[0], all_aware = all[1];
  if (want == TDM_GPU_COLLECTIVES_NCCL && !nccl_everywhere)
    return tdmi_error(TDM_ERR_CONFIG, "tdm_engine_create: gpu_collectives="
                      "nccl, but NCCL is not available on every rank "
                      "(built without it, or a fake GPU)");
  if (want == TDM_GPU_COLLECTIVES_MPI && !all_aware)
    return tdmi_error(TDM_ERR_CONFIG, "tdm_engine_create: gpu_collectives="
                      "mpi, but MPI is not CUDA-aware on every rank (use "
                      "staged or auto)");
  e->xport = want == TDM_GPU_COLLECTIVES_NCCL     ? TDMI_XPORT_NCCL
             : want == TDM_GPU_COLLECTIVES_MPI    ? TDMI_XPORT_MPI
             : want == TDM_GPU_COLLECTIVES_STAGED ? TDMI_XPORT_STAGED
             : nccl_everywhere                    ? TDMI_XPORT_NCCL
             : all_aware                          ? TDMI_XPORT_MPI
                                                  : TDMI_XPORT_STAGED;
  return TDM_SUCCESS;
}

static tdm_status open_channel(tdm_engine *e, tdmi_channel *ch, int nccl,
                               const char *name) {
  ch->nccl = NULL;
  ch->stream = NULL;
  ch->watch = NULL;
  TDMI_TRY(tdmi_comm_dup(e->ctx->comm, &ch->comm, name));
  if (!nccl)
    return TDM_SUCCESS;
  /* Every rank joins NCCL, or none when a stream failed somewhere. */
  tdm_status st = tdmi_stream_create(1, &ch->stream);
  TDMI_TRY(tdmi_nccl_create_if_all(ch->comm, st == TDM_SUCCESS,
                                   NCCL_INIT_TIMEOUT_S, &ch->nccl));
  return tdmi_agree(ch->comm, st, "tdm_engine_create (communication "
                    "stream)");
}

static void close_channel(tdmi_channel *ch) {
  tdmi_event_destroy(ch->watch);
  ch->watch = NULL;
  tdmi_nccl_destroy(ch->nccl);
  ch->nccl = NULL;
  tdmi_stream_destroy(ch->stream);
  ch->stream = NULL;
  tdmi_comm_free(&ch->comm);
}

/* Collective over the context's communicator; every rank gets the same
 * outcome from the callers' tdmi_agree. */
tdm_status tdmi_xport_open(tdm_engine *e) {
  e->reduce_ch.comm = e->gather_ch.comm = MPI_COMM_NULL;
  e->xport = TDMI_XPORT_HOST;
  if (e->ops.on_device)
    TDMI_TRY(pick_xport(e));
  int nccl = e->xport == TDMI_XPORT_NCCL;
  TDMI_TRY(open_channel(e, &e->reduce_ch, nccl, "engine reductions"));
  e->comm = e->reduce_ch.comm;
  TDMI_TRY(open_channel(e, &e->gather_ch, nccl, "engine gathers"));
  tdmi_log(e->ctx, TDM_LOG_INFO, "engine: buffers on the %s, collectives "
           "%s", e->ops.on_device ? "device" : "host", xport_names[e->xport]);
  return TDM_SUCCESS;
}

void tdmi_xport_close(tdm_engine *e) {
  close_channel(&e->reduce_ch);
  close_channel(&e->gather_ch);
  e->comm = MPI_COMM_NULL;
}

void tdmi_xfer_init(tdmi_xfer *x) {
  memset(x, 0, sizeof *x);
  x->request = MPI_REQUEST_NULL;
  x->comm = MPI_COMM_NULL;
}

/* Staged: the pinned copy goes once the collective is over. */
static void release_host(tdm_engine *e, tdmi_xfer *x) {
  tdmi_engine_free_in(e, TDMI_MEM_PINNED, TDM_MEM_COMM_BUFFERS, x->host,
                      x->host_bytes, TDM_U8);
  x->host = NULL;
  x->host_bytes = 0;
  x->device = NULL;
}

void tdmi_xfer_free(tdm_engine *e, tdmi_xfer *x) {
  int bucket = x->bucket;
  /* Nothing is freed under a collective -- unless one timed out: then
   * it never ends, and the job is over anyway. */
  if (!tdmi_watch_broken(e->ctx))
    tdmi_xfer_wait(e, x);
  tdmi_event_destroy(x->done);
  if (!x->active)
    release_host(e, x);
  tdmi_xfer_init(x);
  x->bucket = bucket;
}

/* ---- starting: the buffer as the transport sees it ---- */

/* NCCL: the communication stream starts after the compute stream's work
 * so far (the buffer's producers). */
static tdm_status nccl_begin(tdm_engine *e, tdmi_channel *ch, tdmi_xfer *x) {
  if (!x->done)
    TDMI_TRY(tdmi_event_create(1, &x->done));
  TDMI_TRY(tdmi_event_record(x->done, e->ops.stream));
  return tdmi_stream_wait_event(ch->stream, x->done);
}

static tdm_status nccl_end(tdmi_channel *ch, tdmi_xfer *x) {
  TDMI_TRY(tdmi_event_record(x->done, ch->stream));
  x->active = 1;
  return TDM_SUCCESS;
}

/* MPI on device memory: the compute stream must have produced it.
 * Staged: a pinned copy of its bytes, of which back_bytes return. */
static tdm_status mpi_begin(tdm_engine *e, tdmi_xfer *x, void **buf,
                            size_t bytes, size_t back_bytes) {
  x->device = NULL;
  if (e->xport != TDMI_XPORT_STAGED)
    return tdmi_ops_synchronize(&e->ops);
  /* Held only while the collective runs: a copy of every bucket kept
   * between steps would double the gradients' memory. */
  x->host = tdmi_engine_alloc_in(e, TDMI_MEM_PINNED, TDM_MEM_COMM_BUFFERS,
                                 bytes, TDM_U8);
  if (!x->host)
    return tdmi_error(TDM_ERR_NO_MEMORY, "out of pinned host memory for "
                      "%zu bytes of staged collective", bytes);
  x->host_bytes = bytes;
  tdm_status st = tdmi_ops_copy(&e->ops, x->host, *buf, bytes);
  if (st == TDM_SUCCESS)
    st = tdmi_ops_synchronize(&e->ops);
  if (st != TDM_SUCCESS) {
    release_host(e, x);
    return st;
  }
  x->device = *buf;
  x->back_bytes = back_bytes;
  *buf = x->host;
  return TDM_SUCCESS;
}

/* The flight recorder's name of x's collective. */
static void start_flight(tdmi_channel *ch, tdmi_xfer *x, const char *op,
                         size_t bytes) {
  char what[64];
  snprintf(what, sizeof what, "bucket %d %s", x->bucket, op);
  x->comm = ch->comm;
  x->flight = tdmi_flight_begin(ch->comm, what, bytes);
}

static tdm_status mpi_started(tdm_engine *e, tdmi_xfer *x, tdm_status st) {
  x->active = st == TDM_SUCCESS;
  if (!x->active)
    release_host(e, x);
  return st;
}

static int on_nccl(const tdm_engine *e) { return e->xport == TDMI_XPORT_NCCL; }

tdm_status tdmi_xfer_sum(tdm_engine *e, tdmi_channel *ch, tdmi_xfer *x,
                         void *buf, size_t count, tdm_dtype dtype, MPI_Op op) {
  size_t bytes = count * tdmi_dtype_size(dtype);
  if (on_nccl(e)) {
    TDMI_TRY(nccl_begin(e, ch, x));
    TDMI_TRY(tdmi_nccl_sum(ch->nccl, buf, count, dtype,
                           tdmi_stream_handle(ch->stream)));
    return nccl_end(ch, x);
  }
  if (e->xport != TDMI_XPORT_HOST)
    TDMI_TRY(mpi_begin(e, x, &buf, bytes, bytes));
  TDMI_TRY(tdmi_watch_check(ch->comm, "bucket allreduce"));
  start_flight(ch, x, "allreduce", bytes);
  return mpi_started(e, x, tdmi_isum(ch->comm, buf, count, dtype, op,
                                  &x->request));
}

size_t tdmi_xfer_rs_offset(const tdm_engine *e, size_t chunk) {
  return on_nccl(e) ? (size_t)e->ctx->rank * chunk : 0;
}

tdm_status tdmi_xfer_reduce_scatter(tdm_engine *e, tdmi_channel *ch,
                                    tdmi_xfer *x, void *buf, size_t chunk,
                                    tdm_dtype dtype, MPI_Op op) {
  size_t chunk_bytes = chunk * tdmi_dtype_size(dtype);
  if (on_nccl(e)) {
    TDMI_TRY(nccl_begin(e, ch, x));
    TDMI_TRY(tdmi_nccl_reduce_scatter(ch->nccl, buf, chunk, dtype,
                                      tdmi_stream_handle(ch->stream)));
    return nccl_end(ch, x);
  }
  if (e->xport != TDMI_XPORT_HOST)
    TDMI_TRY(mpi_begin(e, x, &buf, chunk_bytes * (size_t)e->ctx->size,
                       chunk_bytes));
  TDMI_TRY(tdmi_watch_check(ch->comm, "bucket reduce-scatter"));
  start_flight(ch, x, "reduce-scatter", chunk_bytes * (size_t)e->ctx->size);
  return mpi_started(e, x, tdmi_ireduce_scatter(ch->comm, buf, chunk, dtype, op,
                                             &x->request));
}

tdm_status tdmi_xfer_allgather(tdm_engine *e, tdmi_channel *ch,
                               tdmi_xfer *x, void *recv, size_t bytes) {
  size_t total = bytes * (size_t)e->ctx->size;
  if (on_nccl(e)) {
    TDMI_TRY(nccl_begin(e, ch, x));
    TDMI_TRY(tdmi_nccl_allgather_bytes(ch->nccl, recv, bytes,
                                       tdmi_stream_handle(ch->stream)));
    return nccl_end(ch, x);
  }
  if (e->xport != TDMI_XPORT_HOST)
    TDMI_TRY(mpi_begin(e, x, &recv, total, total));
  TDMI_TRY(tdmi_watch_check(ch->comm, "bucket allgather"));
  start_flight(ch, x, ch == &e->gather_ch ? "allgather (ZeRO-3 fetch)"
                                          : "allgather (updated values)",
               total);
  return mpi_started(e, x, tdmi_iallgather_bytes(ch->comm, NULL, recv, bytes,
                                              &x->request));
}

/* ---- finishing ---- */

/* After MPI: a staged result goes back to the device, ordered on the
 * compute stream before whatever reads it. */
static tdm_status mpi_done(tdm_engine *e, tdmi_xfer *x) {
  x->active = 0;
  if (!x->device)
    return TDM_SUCCESS;
  void *dst = x->device;
  x->device = NULL;
  tdm_status st = tdmi_ops_copy(&e->ops, dst, x->host, x->back_bytes);
  release_host(e, x); /* after the copy: the free waits for it */
  return st;
}

/* NCCL: later compute-stream work waits for the communication stream. */
static tdm_status nccl_done(tdm_engine *e, tdmi_xfer *x) {
  x->active = 0;
  return tdmi_stream_wait_event(e->ops.stream, x->done);
}

tdm_status tdmi_xfer_test(tdm_engine *e, tdmi_xfer *x, int *done) {
  *done = !x->active;
  if (!x->active)
    return TDM_SUCCESS;
  if (on_nccl(e)) {
    TDMI_TRY(tdmi_event_query(x->done, done));
    return *done ? nccl_done(e, x) : TDM_SUCCESS;
  }
  tdm_status st = tdmi_watch_test(x->comm, &x->request, x->flight, done,
                                  "bucket collective (MPI_Test)");
  if (st != TDM_SUCCESS) {
    x->active = 0;
    release_host(e, x);
    return st;
  }
  return *done ? mpi_done(e, x) : TDM_SUCCESS;
}

tdm_status tdmi_xfer_wait(tdm_engine *e, tdmi_xfer *x) {
  if (!x->active)
    return TDM_SUCCESS;
  if (on_nccl(e))
    return nccl_done(e, x);
  tdm_status st = tdmi_watch_wait(x->comm, &x->request, x->flight,
                                  "bucket collective");
  if (st != TDM_SUCCESS) {
    x->active = 0;
    release_host(e, x);
    return st;
  }
  return mpi_done(e, x);
}

tdm_status tdmi_xport_watch(tdm_engine *e, const char *what) {
  tdmi_channel *ch = &e->reduce_ch;
  if (!on_nccl(e))
    return TDM_SUCCESS;
  if (!ch->watch)
    TDMI_TRY(tdmi_event_create(1, &ch->watch));
  TDMI_TRY(tdmi_event_record(ch->watch, ch->stream));
  /* TANDEM_TIMEOUT, as for MPI; 0 (none) keeps PyTorch's 10 minutes:
   * an NCCL wait cannot be diagnosed like MPI's. */
  double limit = e->ctx->config.timeout > 0 ? e->ctx->config.timeout
                                            : NCCL_WATCH_TIMEOUT_S;
  double deadline = tdmi_seconds_now() + limit;
  for (;;) {
    int done = 0;
    TDMI_TRY(tdmi_event_query(ch->watch, &done));
    if (done)
      return TDM_SUCCESS;
    TDMI_TRY(tdmi_nccl_check(ch->nccl, what));
    if (tdmi_seconds_now() > deadline)
      return tdmi_nccl_abort(ch->nccl, what, limit);
    struct timespec pause = {0, 50000}; /* between polls, not a sync */
    nanosleep(&pause, NULL);
  }
}
