/* comm.h - internal interface of the comm layer, the one place that calls
 * MPI collectives.  Not installed. */
#ifndef TDM_COMM_H
#define TDM_COMM_H

#include "../core/core.h"

typedef enum {
  TDMI_COLL_ALLREDUCE,
  TDMI_COLL_BROADCAST,
  TDMI_COLL_ALLGATHER,
  TDMI_COLL_GATHER,
  TDMI_COLL_REDUCE_SCATTER,
  TDMI_COLL_PAD,
  TDMI_COLL_GATHER_METRICS,
  TDMI_COLL_BARRIER,
  TDMI_COLL_MAIN_FIRST,
  TDMI_COLL_TRIGGER,
  TDMI_COLL_SHOULD_STOP,
  TDMI_NUM_COLLS
} tdmi_coll;

/* What every rank must agree on for one collective call.  count is
 * TDMI_ANY_COUNT for calls whose counts may differ. */
typedef struct {
  int32_t coll;
  int32_t dtype;
  int32_t op;
  int32_t root;
  uint64_t count;
} tdmi_signature;

#define TDMI_ANY_COUNT UINT64_MAX
#define TDMI_NO_ROOT (-1)

/*
 * Entry of every collective.  local is the outcome of this rank's own
 * argument checks.  Without TANDEM_DEBUG it is returned as is.  With it,
 * the ranks exchange signatures first, so that bad arguments on one rank or
 * a disagreement fail on every rank (TDM_ERR_REMOTE / TDM_ERR_MISMATCH)
 * instead of hanging the others.
 */
tdm_status tdmi_coll_enter(tdm_context *ctx, const char *fn,
                           const tdmi_signature *sig, tdm_status local);

/*
 * Collective: every rank of comm learns whether any rank failed, and all
 * return the status of the lowest failing rank, with its message prefixed
 * by "rank R: " (and by what, the step, unless the message starts with
 * it); a rank that failed differently appends its own message.
 */
tdm_status tdmi_agree(MPI_Comm comm, tdm_status local, const char *what);

/* TDM_ERR_INVALID_ARGUMENT "fn: name is NULL" when p is NULL; a status
 * rather than a return, so it can feed FIRST_FAILURE. */
tdm_status tdmi_check_ptr(const char *fn, const void *p, const char *name);

/* Checks count (> 0, not a negative number cast) and dtype; sets *bytes. */
tdm_status tdmi_check_count(const char *fn, size_t count, tdm_dtype dtype,
                            int allow_zero, size_t *bytes);

MPI_Datatype tdmi_mpi_move_type(tdm_dtype dtype);

/* ---- the engine's traffic (async.c) ---- */

/* A duplicate of parent that returns errors instead of aborting, named
 * (MPI_Comm_set_name) for the watchdog's messages. */
tdm_status tdmi_comm_dup(MPI_Comm parent, MPI_Comm *out, const char *name);
void tdmi_comm_free(MPI_Comm *comm);
/* Whether MPI provides MPI_THREAD_MULTIPLE. */
int tdmi_thread_multiple(void);
/* The operation that sums dtype: MPI_SUM for f32 and f64; for bf16 and
 * f16 a user operation that adds each pair in f32 and rounds back (as
 * NCCL does).  Free with tdmi_sum_op_free. */
tdm_status tdmi_sum_op_create(tdm_dtype dtype, MPI_Op *op);
void tdmi_sum_op_free(MPI_Op *op);
/* Starts an in-place sum of count elements (f32, f64, bf16, f16) over
 * comm with op from tdmi_sum_op_create(dtype). */
tdm_status tdmi_isum(MPI_Comm comm, void *buf, size_t count, tdm_dtype dtype,
                     MPI_Op op, MPI_Request *req);
/* The same, blocking: the communication thread's call, since MPI's
 * blocking allreduce is its fastest algorithm.  It has no deadline of its
 * own: the thread that waits for it polls tdmi_watch_idle. */
tdm_status tdmi_sum(MPI_Comm comm, void *buf, size_t count, tdm_dtype dtype,
                    MPI_Op op, const char *what);
/* Starts an in-place reduce-scatter: buf holds size * chunk elements;
 * the sum of this rank's chunk lands in buf[0, chunk). */
tdm_status tdmi_ireduce_scatter(MPI_Comm comm, void *buf, size_t chunk,
                                tdm_dtype dtype, MPI_Op op, MPI_Request *req);
tdm_status tdmi_reduce_scatter(MPI_Comm comm, void *buf, size_t chunk,
                               tdm_dtype dtype, MPI_Op op, const char *what);
/* All-gather of bytes per rank into recv (size * bytes): from send, or
 * in place (send NULL) from recv + rank * bytes. */
tdm_status tdmi_iallgather_bytes(MPI_Comm comm, const void *send, void *recv,
                                 size_t bytes, MPI_Request *req);
tdm_status tdmi_allgather_bytes(MPI_Comm comm, const void *send, void *recv,
                                size_t bytes);
/* In-place bitwise OR of bytes over comm: assembles a buffer whose parts
 * each rank filled, the rest being zero bits. */
tdm_status tdmi_bor_bytes(MPI_Comm comm, void *buf, size_t bytes);
/* The smallest value over comm, in place, blocking. */
tdm_status tdmi_min_int(MPI_Comm comm, int *value, const char *what);
/* In-place sum of n doubles over comm, blocking. */
tdm_status tdmi_sum_doubles(MPI_Comm comm, double *values, int n);
/* Broadcasts bytes from root, in chunks that fit MPI's int count. */
tdm_status tdmi_bcast_bytes(MPI_Comm comm, void *buf, size_t bytes, int root);

/* NCCL's version code (e.g. 22803), or 0 when built without NCCL. */
int tdmi_nccl_version(void);

/* ---- NCCL over MPI (nccl.c) ---- */

/* Splits comm into the ranks of this node (local) and the ranks with the
 * same local rank on every node (cross), for hierarchical reductions.
 * Collective. */
tdm_status tdmi_comm_split_node(MPI_Comm comm, MPI_Comm *local,
                                MPI_Comm *cross);
/* The NCCL unique id (NCCL_UNIQUE_ID_BYTES) rank 0 of comm made, on every
 * rank.  Collective; TDM_ERR_NOT_SUPPORTED without NCCL. */
tdm_status tdmi_nccl_unique_id(MPI_Comm comm, void *id);
typedef struct tdmi_nccl tdmi_nccl;
/* An NCCL communicator over comm's ranks on each rank's current device,
 * its initialization polled for at most timeout_s seconds (then aborted).
 * Collective; every rank returns the same success or failure. */
tdm_status tdmi_nccl_create(MPI_Comm comm, double timeout_s, tdmi_nccl **out);
void tdmi_nccl_destroy(tdmi_nccl *n);
/* tdmi_nccl_create when every rank of comm wants one (want), else *out is
 * NULL on every rank: ranks never split between NCCL and MPI. */
tdm_status tdmi_nccl_create_if_all(MPI_Comm comm, int want, double timeout_s,
                                   tdmi_nccl **out);
/* Polls the communicator's asynchronous state until its operations in
 * progress are done, an error, or timeout_s; on error or timeout aborts
 * it (TDM_ERR_NCCL naming what, the rank and the timeout). */
tdm_status tdmi_nccl_poll(tdmi_nccl *n, double timeout_s, const char *what);
/* This rank and the number of ranks of n; -1 for NULL (always, without
 * NCCL). */
/* Non-blocking: TDM_ERR_NCCL (and the communicator aborted) when NCCL
 * reports an asynchronous error, naming what and the rank. */
tdm_status tdmi_nccl_check(tdmi_nccl *n, const char *what);
/* Aborts the communicator after waiting waited_s seconds for it:
 * TDM_ERR_NCCL naming what, the rank and the wait. */
tdm_status tdmi_nccl_abort(tdmi_nccl *n, const char *what, double waited_s);
int tdmi_nccl_rank(const tdmi_nccl *n);
int tdmi_nccl_size(const tdmi_nccl *n);

/*
 * In-place collectives on device buffers, queued on stream (a cudaStream_t
 * passed as void *, so that comm needs no device header; NULL is the
 * default stream).  They return once the work is queued, never waiting for
 * it: the caller orders later work on stream or synchronizes it.  Every
 * rank of n must make the same calls in the same order.  A count of 0
 * succeeds doing nothing.  Errors: TDM_ERR_INVALID_ARGUMENT naming the
 * argument; TDM_ERR_NCCL with NCCL's sentence, after which a communicator
 * NCCL left broken has been aborted (later calls fail at once);
 * TDM_ERR_NOT_SUPPORTED without NCCL.
 */
/* Sum of count elements (f32, f64, f16, bf16) over n, in buf. */
tdm_status tdmi_nccl_sum(tdmi_nccl *n, void *buf, size_t count,
                         tdm_dtype dtype, void *stream);
/* buf holds size * chunk elements; the sum of this rank's chunk lands at
 * buf + rank * chunk (NCCL's in-place rule) -- unlike tdmi_ireduce_scatter,
 * whose result is at buf[0, chunk).  The other chunks are left undefined. */
tdm_status tdmi_nccl_reduce_scatter(tdmi_nccl *n, void *buf, size_t chunk,
                                    tdm_dtype dtype, void *stream);
/* All-gather of bytes per rank into recv (size * bytes), in place from
 * recv + rank * bytes, as tdmi_allgather_bytes with send NULL. */
tdm_status tdmi_nccl_allgather_bytes(tdmi_nccl *n, void *recv, size_t bytes,
                                     void *stream);
/* Broadcast of bytes of buf from root. */
tdm_status tdmi_nccl_bcast_bytes(tdmi_nccl *n, void *buf, size_t bytes,
                                 int root, void *stream);
/* 1 when MPI itself takes device pointers (a CUDA-aware Open MPI, asked
 * through mpi-ext.h at run time), else 0.  After MPI_Init; prints nothing.
 * (async.c) */
int tdmi_mpi_cuda_aware(void);

/* ---- the watchdog and flight recorder (watch.c) ---- */

typedef struct tdmi_watch tdmi_watch;
/* Collective over ctx->comm: the side communicator the diagnosis uses,
 * attached to ctx->comm and ctx->local_comm (and so to their
 * duplicates). */
tdm_status tdmi_watch_create(tdm_context *ctx);
void tdmi_watch_destroy(tdm_context *ctx);
/* The watch of comm, or NULL (a communicator tandem does not own). */
tdmi_watch *tdmi_watch_of(MPI_Comm comm);
/* Whether a collective of ctx timed out: the job cannot go on. */
int tdmi_watch_broken(const tdm_context *ctx);
/* TDM_ERR_TIMEOUT when comm's context is broken, naming what. */
tdm_status tdmi_watch_check(MPI_Comm comm, const char *what);
/* Records a collective on comm that starts now (what: its description,
 * e.g. "tdm_allreduce" or "bucket 3 allreduce"); returns its sequence
 * number for the calls below (0 when comm has no watch). */
uint64_t tdmi_flight_begin(MPI_Comm comm, const char *what, size_t bytes);
/* Waits for req under the deadline: TDM_ERR_TIMEOUT with the diagnosis
 * (which ranks did not answer, which wait in another collective);
 * TDM_ERR_MPI naming what when MPI fails. */
tdm_status tdmi_watch_wait(MPI_Comm comm, MPI_Request *req, uint64_t seq,
                           const char *what);
/* A blocking collective on comm starts now in this thread: recorded, and
 * reported as waited for; end it with tdmi_flight_end. */
uint64_t tdmi_flight_blocked(MPI_Comm comm, const char *what, size_t bytes);
void tdmi_flight_end(MPI_Comm comm, uint64_t seq, int ok);
/* For a thread that waits for another thread's blocking collective on
 * comm (*since: 0 on the first call): answers queries, and past the
 * deadline diagnoses the oldest collective waited for (TDM_ERR_TIMEOUT),
 * naming what otherwise. */
tdm_status tdmi_watch_idle(MPI_Comm comm, double *since, const char *what);
/* Seconds on the monotonic clock: deadlines and durations. */
double tdmi_seconds_now(void);
/* *t = CLOCK_REALTIME + ns: the deadline pthread_cond_timedwait takes,
 * for such a waiting thread's slices. */
struct timespec;
void tdmi_realtime_in(struct timespec *t, long ns);
/* One MPI_Test of req, answering the other ranks' queries. */
tdm_status tdmi_watch_test(MPI_Comm comm, MPI_Request *req, uint64_t seq,
                           int *done, const char *what);
/* A non-blocking collective just started (rc is the start's return) run
 * to completion under the watchdog: the blocking collectives' body. */
tdm_status tdmi_watched(MPI_Comm comm, int rc, MPI_Request *req,
                        const char *what, size_t bytes);
/* Large collectives: MPI's blocking calls are its fastest (libnbc's
 * non-blocking ones are up to 5x slower at a few MiB), but have no
 * deadline.  Where MPI_THREAD_MULTIPLE allows, tdmi_watch_offload says
 * yes from TDMI_BLOCKING_MIN_BYTES, and tdmi_watched_blocking runs fn(arg)
 * (a blocking collective on comm returning an MPI code) on a worker
 * thread while the calling thread waits under the deadline. */
#define TDMI_BLOCKING_MIN_BYTES ((size_t)64 << 10)
typedef int (*tdmi_blocking_fn)(void *arg);
int tdmi_watch_offload(MPI_Comm comm, size_t bytes);
tdm_status tdmi_watched_blocking(MPI_Comm comm, const char *what,
                                 size_t bytes, tdmi_blocking_fn fn,
                                 void *arg);
/* One collective, described for tdmi_run (run.c), which picks the
 * blocking or the non-blocking call by size.  Fields a kind does not use
 * are ignored. */
typedef enum {
  TDMI_RUN_ALLREDUCE,
  TDMI_RUN_BCAST,
  TDMI_RUN_ALLGATHER,
  TDMI_RUN_GATHER,
  TDMI_RUN_REDUCE_SCATTER
} tdmi_run_kind;
typedef struct {
  tdmi_run_kind kind;
  const void *send; /* MPI_IN_PLACE where in place */
  void *recv;       /* the buffer of a broadcast */
  int count;        /* per rank, as MPI takes it */
  MPI_Datatype type;
  MPI_Op op;
  int root;
  MPI_Comm comm;
} tdmi_mpi_call;
tdm_status tdmi_run(const tdmi_mpi_call *c, const char *what, size_t bytes);
/* A blocking collective with no non-blocking form (MPI-IO, or one with
 * per-rank counts): on the worker under the deadline where
 * MPI_THREAD_MULTIPLE allows, else inline. */
tdm_status tdmi_run_fn(MPI_Comm comm, const char *what, size_t bytes,
                       tdmi_blocking_fn fn, void *arg);
/* tdm_abort after a timeout: waits at most a few seconds for the ranks
 * that answered to finish their own diagnosis. */
void tdmi_watch_settle(tdm_context *ctx);

/* Runs a local argument check unless an earlier one already failed: the
 * first failure is kept so it can take part in tdmi_coll_enter. */
#define FIRST_FAILURE(st, expr) \
  if ((st) == TDM_SUCCESS)      \
  (st) = (expr)

#endif /* TDM_COMM_H */
