/* engine.h - internal interface of the engine layer: the parameter
 * registry, flat storage per dtype, gradient buckets and their state
 * machines, and the strategies that choose each bucket's collective.
 * Not installed. */
#ifndef TDM_ENGINE_H
#define TDM_ENGINE_H

#include <pthread.h>

#include "../comm/comm.h"
#include "../device/ops.h"

#define TDMI_MAX_NDIM 8
#define TDMI_ALIGN 64       /* bytes: buffers start on a cache line      */
#define TDMI_ALIGN_ELEMS 32 /* elements: every tensor starts on a cache
                               line in all its buffers (2 to 8 B each)   */

typedef struct {
  char *name;
  int module;
  tdm_dtype dtype;
  int ndim;
  int64_t shape[TDMI_MAX_NDIM];
  size_t numel;
  int flags;      /* TDM_PARAM_* */
  void *initial;  /* staged values until tdm_prepare; NULL: zeros */
  void **bind_data, **bind_grad; /* tdm_bind_param: the program's pointers */
  void *own_data, *own_grad;     /* what they held before tdm_prepare */
  int rebound;                   /* tdm_prepare pointed them at ours */
  size_t first;   /* element index into the flat buffers of its dtype */
  int bucket;
  int ready;      /* marked in the micro-step in progress */
} tdmi_param;

typedef struct {
  char *name;
  int *params;    /* indices, in registration order */
  int nparams;
  int bucket_first, nbuckets; /* stage 3: its buckets, consecutive */
  int fetched_in_micro; /* stage 3: fetched since the last micro-step ended */
} tdmi_module;

/* How the engine's collectives move bytes (transport.c): MPI on host
 * memory; on a device NCCL on a communication stream, MPI on device
 * pointers (CUDA-aware), or MPI on pinned host copies. */
typedef enum {
  TDMI_XPORT_HOST,
  TDMI_XPORT_NCCL,
  TDMI_XPORT_MPI,
  TDMI_XPORT_STAGED
} tdmi_xport;

/* A channel: one ordered sequence of collectives (the gradient
 * reductions, or the ZeRO-3 gathers), with its own communicators and
 * stream so that the two never depend on each other's order. */
typedef struct {
  MPI_Comm comm;
  tdmi_nccl *nccl;      /* NCCL: its communicator              */
  tdmi_stream *stream;  /* NCCL: the communication stream      */
  tdmi_event *watch;    /* NCCL: marks what the host waits for */
} tdmi_channel;

/* One collective in flight on a channel. */
typedef struct {
  int active;           /* started, not yet finished (test or wait)    */
  MPI_Request request;  /* MPI and staged                              */
  tdmi_event *done;     /* NCCL: recorded on the channel's stream after */
  void *host;           /* staged: pinned copy of the buffer            */
  size_t host_bytes;    /* staged: its size                             */
  void *device;         /* staged: where the result goes back, or NULL  */
  size_t back_bytes;    /* staged: how many bytes go back               */
  int bucket;           /* whose collective (the flight recorder's name) */
  MPI_Comm comm;        /* MPI: the channel's communicator              */
  uint64_t flight;      /* MPI: its flight-recorder entry               */
} tdmi_xfer;

typedef struct {
  tdm_dtype dtype;  /* of its parameters (the flat buffers' index)      */
  tdm_dtype grad_dtype;
  tdm_dtype wire_dtype; /* what its collective carries: grad_dtype, or the
                           16-bit reduce dtype of f32 gradients (wire.c) */
  void *wire;       /* that conversion while the collective runs, or NULL */
  size_t first;     /* element index into the flat layout               */
  size_t count;     /* elements; ZeRO: size * chunk, padding included   */
  size_t chunk;     /* ZeRO: each rank's share; stage 0: count          */
  size_t shard_first; /* ZeRO: this rank's chunk in the shard buffers   */
  size_t bytes;     /* count * size of grad_dtype                       */
  int order_first;  /* its parameters: order[order_first ...]           */
  int module;       /* stage 3: the module it holds; else -1            */
  int nparams;
  int pending;    /* parameters not yet ready in this micro-step */
  tdm_bucket_state state;
  tdmi_xfer reduce;   /* its gradient collective */
  void *staging;  /* ZeRO-2/3: this micro-step's gradients, or NULL */
  /* ZeRO-3: the module's gathered compute values */
  void *gathered;       /* NULL when not gathered                       */
  tdmi_xfer gather;     /* its gather                                   */
  int fetched;          /* between tdm_fetch_module and release         */
  int prefetched;       /* gathered ahead, not yet fetched              */
  int persistent;       /* stays gathered                               */
  size_t window_first;  /* ZeRO-2/3: its element index in the windows,
                           on a page boundary (window.c)                */
} tdmi_bucket;

/* One parameter dtype's storage, in one element layout.  Which buffers
 * exist depends on the stage (see layout.c):
 *   data        full values (param dtype): stage 0; stages 1-2 when they
 *               are their own master (no compute copy)
 *   copy        full compute copy (bf16/f16): mixed precision, stages 0-2
 *   grad        full gradients: stages 0-1
 *   master      this rank's shard of the values: stages 1-2 with a copy
 *               or offloaded, stage 3
 *   shard_copy  this rank's shard of the values the model computes with
 *               (compute dtype) where they are not the master: stage 3
 *               with a copy, or with offload=optimizer on a device
 *   shard_grad  this rank's shard of the gradients: stages 2-3
 * Offload on a device (tdm_engine.offloaded) moves the optimizer's side to
 * pinned host memory: master (and the optimizer state), plus
 *   host_grad   the gradient shard, copied from the device at the boundary
 *   host_copy   the shard's new compute copy, copied to the device after
 *               the update (mixed precision; not with offload=params,
 *               whose shard_copy is host memory already) */
typedef struct {
  size_t count;          /* layout elements, padding included */
  size_t shard_count;    /* ZeRO: this rank's elements        */
  int copied;            /* mixed precision: a bf16/f16 compute copy */
  void *data;
  void *copy;
  tdm_dtype copy_dtype;  /* valid when copied */
  void *grad;
  tdm_dtype grad_dtype;
  tdm_dtype wire_dtype;  /* what the gradient collectives carry */
  void *master, *shard_copy, *shard_grad;
  void *host_grad, *host_copy;
  /* ZeRO-2/3 (window.c): full-size reserved ranges at fixed addresses,
   * backed only where a bucket is held; NULL where not reserved */
  void *grad_window;     /* micro-step gradients (grad dtype)         */
  void *value_window;    /* stage 3: gathered values (compute dtype)  */
  size_t window_count;   /* elements of both, buckets on pages        */
  size_t grad_window_bytes, value_window_bytes;
} tdmi_flat;

/* The dtype the model computes with. */
static inline tdm_dtype tdmi_flat_compute_dtype(const tdmi_flat *f,
                                                tdm_dtype d) {
  return f->copied ? f->copy_dtype : d;
}

/* Memory accounting (memory.c); guarded by its own lock, since the
 * communication thread frees bucket gradients. */
typedef struct {
  pthread_mutex_t lock;
  uint64_t current[TDM_MEM_NUM_CATEGORIES][TDM_MEM_NUM_LOCATIONS];
  uint64_t peak[TDM_MEM_NUM_CATEGORIES][TDM_MEM_NUM_LOCATIONS];
  uint64_t total, peak_total;
  uint64_t gathered, peak_gathered;
  uint64_t comm_bytes;
} tdmi_memory;

typedef struct tdmi_strategy {
  const char *name;
  /* Poll mode: starts the bucket's gradient collective, tests whether it
   * finished, or waits for it. */
  tdm_status (*launch)(tdm_engine *e, tdmi_bucket *b);
  tdm_status (*test)(tdm_engine *e, tdmi_bucket *b, int *done);
  tdm_status (*wait)(tdm_engine *e, tdmi_bucket *b);
  /* Thread mode: the whole collective, blocking. */
  tdm_status (*reduce)(tdm_engine *e, tdmi_bucket *b);
  /* After the collective: moves its result where the optimizer reads it
   * (NULL: nothing to do). */
  tdm_status (*finish)(tdm_engine *e, tdmi_bucket *b);
} tdmi_strategy;

extern const tdmi_strategy tdmi_strategy_ddp;
/* test and wait of every strategy: the bucket's request. */
tdm_status tdmi_bucket_test(tdm_engine *e, tdmi_bucket *b, int *done);
tdm_status tdmi_bucket_wait(tdm_engine *e, tdmi_bucket *b);
extern const tdmi_strategy tdmi_strategy_zero;

struct tdm_engine {
  tdm_context *ctx;
  MPI_Comm comm; /* private duplicate of ctx->comm (same ranks): gradient
                    traffic never meets user calls (reduce_ch.comm) */
  int prepared;
  const tdmi_strategy *strategy;

  tdmi_param *params;
  int nparams, params_cap;
  int *order;      /* parameter indices in layout order */
  tdmi_module *modules;
  int nmodules, modules_cap;
  tdmi_flat flat[TDM_NUM_DTYPES];
  tdmi_bucket *buckets;
  int nbuckets;

  /* options, frozen at creation */
  size_t bucket_cap, first_bucket_cap;
  int accumulation_steps;
  tdm_progress_mode mode;
  tdm_precision precision;
  tdm_dtype reduce_dtype; /* gradients of f32 parameters */
  MPI_Op reduce_op;       /* sums reduce_dtype */
  tdmi_ops ops;           /* where buffers live and the kernels on them */
  tdmi_xport xport;       /* how collectives move device buffers        */
  tdmi_channel reduce_ch; /* gradient reductions and parameter gathers  */
  tdmi_channel gather_ch; /* ZeRO-3 module gathers                      */
  double loss_scale;      /* fp16 dynamic scale, set by the optimizer */
  int stage;              /* ZeRO stage 0..3 */
  tdm_offload offload;
  int offloaded;          /* offload with buffers on a device (layout.c) */
  size_t prefetch_bytes;  /* ZeRO-3 */
  size_t persist_numel;   /* ZeRO-3 */
  int last_fetch, fetch_dir; /* ZeRO-3: the prefetch follows fetches  */
  int protect;            /* TANDEM_DEBUG with windows: dropped buckets
                             are inaccessible (window.c)               */
  tdmi_memory mem;

  /* the micro-step */
  int in_backward;
  int boundary;      /* the micro-step in progress ends the cycle */
  int syncing;       /* the micro-step in progress reduces */
  int micro;         /* index in the accumulation cycle */
  int force_sync;    /* tdm_sync_now was called */
  int at_boundary;   /* a sync micro-step ended; the optimizer may step */
  int ended;         /* a micro-step ended and tdm_step has not seen it */
  int cycle_micro_steps; /* the micro-steps of the cycle that ended there */
  tdm_status sticky; /* first error of the micro-step, reported again */
  char sticky_msg[512];

  /* bucket progress; guarded by lock (shared with the thread) */
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int next_launch;   /* buckets launch strictly in index order */
  int nreduced;
  int thread_running, quit;
  pthread_t thread;
  tdm_status comm_status;
  char comm_msg[512];
};

/* ZeRO: the element index, in the full buffers, of this rank's chunk of
 * bucket b. */
static inline size_t tdmi_own_first(const tdm_engine *e,
                                    const tdmi_bucket *b) {
  return b->first + (size_t)e->ctx->rank * b->chunk;
}

/* NULL check and a live context. */
tdm_status tdmi_engine_check(const tdm_engine *e, const char *fn);
/* TDM_ERR_INVALID_USAGE unless tdm_prepare succeeded. */
tdm_status tdmi_engine_check_prepared(const tdm_engine *e, const char *fn);

/* The dtypes of each flat buffer (copies, gradients), from the precision
 * and reduce dtype; at engine creation (layout.c). */
void tdmi_layout_dtypes(tdm_engine *e);
/* Storage (layout.c): the layout order, buckets and shards, the
 * buffers of the stage, and rank 0's initial values everywhere. */
tdm_status tdmi_layout_build(tdm_engine *e);
tdm_status tdmi_layout_load_initial(tdm_engine *e);
void tdmi_layout_free(tdm_engine *e);

/* Memory (memory.c): zeroed, cache-line aligned buffers of count
 * elements of dtype, counted in category. */
void *tdmi_engine_alloc(tdm_engine *e, tdm_memory_category category,
                        size_t count, tdm_dtype dtype);
void tdmi_engine_free(tdm_engine *e, tdm_memory_category category, void *p,
                      size_t count, tdm_dtype dtype);
/* The kind of memory tdmi_engine_alloc gives category. */
tdmi_mem_kind tdmi_engine_kind(const tdm_engine *e,
                               tdm_memory_category category);
/* The same in memory of a given kind (pinned staging, offload). */
void *tdmi_engine_alloc_in(tdm_engine *e, tdmi_mem_kind kind,
                           tdm_memory_category category, size_t count,
                           tdm_dtype dtype);
void tdmi_engine_free_in(tdm_engine *e, tdmi_mem_kind kind,
                         tdm_memory_category category, void *p, size_t count,
                         tdm_dtype dtype);
/* Counts (sign 1) or uncounts (-1) count elements of dtype in category
 * held in memory that is not allocated here (window.c). */
void tdmi_engine_count(tdm_engine *e, tdm_memory_category category,
                       size_t count, tdm_dtype dtype, int sign);
void tdmi_mem_init(tdmi_memory *m);
void tdmi_mem_destroy(tdmi_memory *m);
/* ZeRO-3 gathered bytes (delta may be negative) and collective traffic. */
void tdmi_mem_gathered(tdm_engine *e, int64_t delta);
void tdmi_mem_traffic(tdm_engine *e, uint64_t bytes);

/* ZeRO-3 (fetch.c): the gathered module buffers. */
tdm_status tdmi_fetch_regather(tdm_engine *e); /* after an update */
void tdmi_fetch_free(tdm_engine *e);
/* Stage 3, at the end of a micro-step: the first module that is not
 * persistent and was not fetched in it (the model read zeros for it) is
 * an error; then every module counts as not fetched again. */
tdm_status tdmi_fetch_check_used(tdm_engine *e, const char *fn);
/* The parameter's compute values and gradient for tdm_param_buffers. */
tdm_status tdmi_param_data(tdm_engine *e, int param, void **data);
tdm_status tdmi_param_grad(tdm_engine *e, int param, void **grad);

/* Stable addresses under ZeRO-2/3 (window.c). */
/* After the layout: the windows of every dtype in use. */
tdm_status tdmi_window_reserve(tdm_engine *e);
void tdmi_window_free(tdm_engine *e);
/* Bucket b's gathered values (b->gathered, stage 3) or micro-step
 * gradients (b->staging, stages 2-3): held (zeroed when first held, and
 * counted), then dropped (given back).  fn names the caller in errors. */
tdm_status tdmi_bucket_hold_values(tdm_engine *e, tdmi_bucket *b,
                                   const char *fn);
void tdmi_bucket_drop_values(tdm_engine *e, tdmi_bucket *b);
tdm_status tdmi_bucket_hold_grads(tdm_engine *e, tdmi_bucket *b,
                                  const char *fn);
void tdmi_bucket_drop_grads(tdm_engine *e, tdmi_bucket *b);
/* After a failed micro-step: every gradient in the windows reads zero
 * again, whether its bucket was held or only written by the model. */
void tdmi_window_clear_grads(tdm_engine *e);
/* Parameter p's fixed address in the value or gradient window, or NULL
 * where there is none. */
void *tdmi_window_values(const tdm_engine *e, const tdmi_param *p);
void *tdmi_window_grads(const tdm_engine *e, const tdmi_param *p);
/* Gradient compression (wire.c): an f32 model's gradients on the wire in
 * the 16-bit reduce dtype, converted by tandem.  tdmi_wire_open gives
 * the buffer bucket b's collective runs on: grads itself, or their
 * conversion (counted as comm buffers); tdmi_wire_result converts count
 * reduced elements from element at of the wire into out, in grad_dtype;
 * tdmi_wire_close frees the conversion. */
tdm_status tdmi_wire_open(tdm_engine *e, tdmi_bucket *b, void *grads,
                          void **buf);
tdm_status tdmi_wire_result(tdm_engine *e, const tdmi_bucket *b, size_t at,
                            void *out, size_t count);
void tdmi_wire_close(tdm_engine *e, tdmi_bucket *b);
/* The collective's MPI op: 16-bit sums accumulate in f32. */
MPI_Op tdmi_wire_op(const tdm_engine *e, const tdmi_bucket *b);

/* ZeRO (zero.c): after an update, every rank's chunks to all. */
tdm_status tdmi_zero_gather_params(tdm_engine *e);

/* Offload on a device (offload.c): the reduced gradient shards to the
 * host before the update; the updated values back to the device after. */
tdm_status tdmi_offload_pull_grads(tdm_engine *e);
tdm_status tdmi_offload_push_values(tdm_engine *e);

/* Collectives on engine buffers (transport.c).  Each starts one
 * collective on channel ch into x; test and wait finish it (wait leaves
 * later work on the compute stream ordered after it, without blocking the
 * host where NCCL runs it). */
tdm_status tdmi_xport_open(tdm_engine *e);
void tdmi_xport_close(tdm_engine *e);
void tdmi_xfer_init(tdmi_xfer *x);
void tdmi_xfer_free(tdm_engine *e, tdmi_xfer *x);
/* In-place sum of count elements of dtype; op from tdmi_sum_op_create. */
tdm_status tdmi_xfer_sum(tdm_engine *e, tdmi_channel *ch, tdmi_xfer *x,
                         void *buf, size_t count, tdm_dtype dtype, MPI_Op op);
/* In-place reduce-scatter of size * chunk elements: this rank's sum lands
 * at buf + tdmi_xfer_rs_offset(e, chunk) elements. */
tdm_status tdmi_xfer_reduce_scatter(tdm_engine *e, tdmi_channel *ch,
                                    tdmi_xfer *x, void *buf, size_t chunk,
                                    tdm_dtype dtype, MPI_Op op);
size_t tdmi_xfer_rs_offset(const tdm_engine *e, size_t chunk);
/* In-place all-gather of bytes per rank from recv + rank * bytes. */
tdm_status tdmi_xfer_allgather(tdm_engine *e, tdmi_channel *ch,
                               tdmi_xfer *x, void *recv, size_t bytes);
tdm_status tdmi_xfer_test(tdm_engine *e, tdmi_xfer *x, int *done);
tdm_status tdmi_xfer_wait(tdm_engine *e, tdmi_xfer *x);
/* NCCL: blocks until the reductions queued so far have finished, watching
 * for NCCL errors and a peer that never arrives (then aborts: TDM_ERR_NCCL
 * naming what).  Other transports have finished already. */
tdm_status tdmi_xport_watch(tdm_engine *e, const char *what);

/* Buckets (stream.c). */
tdm_status tdmi_stream_start(tdm_engine *e); /* thread mode: the thread */
void tdmi_stream_stop(tdm_engine *e);

/* For the optimizer layer: the spans of values and gradients this rank
 * updates (one per dtype in use), and the step protocol. */
typedef struct {
  tdm_dtype dtype;       /* of data and of the optimizer state          */
  void *data;
  void *grad;
  tdm_dtype grad_dtype;
  void *copy;            /* compute copy to refresh, or NULL            */
  tdm_dtype copy_dtype;
  size_t first;          /* element index of data[0] in its dtype       */
  size_t count;          /* elements, padding included (always zero)    */
  int host;              /* the arrays are host memory although the
                            engine is on a device (offload)             */
} tdmi_span;

int tdmi_engine_span_count(const tdm_engine *e);
tdmi_span tdmi_engine_span(const tdm_engine *e, int i);
/* Where parameter i lies: its dtype and element range in that dtype. */
void tdmi_engine_param_range(const tdm_engine *e, int i, tdm_dtype *dtype,
                             size_t *first, size_t *count);
/* Sums n partial results computed over this rank's spans with the ranks
 * holding the other parts (a no-op where every rank holds everything). */
tdm_status tdmi_engine_sum_partials(tdm_engine *e, double *values, int n);
/* Whether the optimizer steps now: 1 at the end of an accumulation cycle,
 * 0 otherwise, an error inside backward. */
tdm_status tdmi_engine_step_begin(tdm_engine *e, const char *fn, int consume,
                                  int *step);
/* A micro-step is in progress from here on, if none was (the first call
 * of a micro-step that needs one opens it: tdm_backward_begin is
 * optional). */
void tdmi_engine_open_micro_step(tdm_engine *e);
/* Ends the cycle's step: zeroes the gradients the update did not, and
 * after an update (updated) gives every rank the new values.
 * Collective. */
tdm_status tdmi_engine_step_end(tdm_engine *e, int updated);
/* After new master values were written into the spans: refreshes the
 * compute copies and gathers them as after an update.  Collective. */
tdm_status tdmi_engine_values_loaded(tdm_engine *e);
/* The fp16 loss scale tdm_loss_scale returns. */
void tdmi_engine_set_loss_scale(tdm_engine *e, double scale);
/* What the reduced gradients are divided by to be the average the
 * optimizer steps with: ranks times the micro-steps of the cycle (the
 * model seeds its backward as one process would, and the reductions sum). */
double tdmi_engine_grad_divisor(const tdm_engine *e);

#endif /* TDM_ENGINE_H */
