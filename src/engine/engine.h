/* engine.h - internal interface of the engine layer: the parameter
 * registry, flat storage per dtype, gradient buckets and their state
 * machines, and the strategies that choose each bucket's collective.
 * Not installed. */
#ifndef TDM_ENGINE_H
#define TDM_ENGINE_H

#include <pthread.h>

#include "../comm/comm.h"
#include "../device/kernels.h"

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
  size_t first;   /* element index into the flat buffers of its dtype */
  int bucket;
  int ready;      /* marked in the micro-step in progress */
} tdmi_param;

typedef struct {
  char *name;
  int *params;    /* indices, in registration order */
  int nparams;
} tdmi_module;

typedef struct {
  tdm_dtype dtype;  /* of its parameters (the flat buffers' index)      */
  tdm_dtype grad_dtype;
  size_t first;     /* element index into the flat gradient buffer      */
  size_t count;     /* elements                                         */
  size_t bytes;     /* count * size of grad_dtype                       */
  int nparams;
  int pending;    /* parameters not yet ready in this micro-step */
  tdm_bucket_state state;
  MPI_Request request;
} tdmi_bucket;

/* One parameter dtype's storage, every buffer in the same element layout:
 * the values (f32 master weights under mixed precision), the compute
 * copy (bf16/f16 under mixed precision, else NULL) and the gradients. */
typedef struct {
  size_t count;          /* elements, padding included */
  void *data;
  void *copy;
  tdm_dtype copy_dtype;  /* valid when copy is set */
  void *grad;
  tdm_dtype grad_dtype;
} tdmi_flat;

typedef struct tdmi_strategy {
  const char *name;
  /* Poll mode: starts the bucket's gradient collective, tests whether it
   * finished, or waits for it. */
  tdm_status (*launch)(tdm_engine *e, tdmi_bucket *b);
  tdm_status (*test)(tdm_engine *e, tdmi_bucket *b, int *done);
  tdm_status (*wait)(tdm_engine *e, tdmi_bucket *b);
  /* Thread mode: the whole collective, blocking. */
  tdm_status (*reduce)(tdm_engine *e, tdmi_bucket *b);
} tdmi_strategy;

extern const tdmi_strategy tdmi_strategy_ddp;

struct tdm_engine {
  tdm_context *ctx;
  MPI_Comm comm; /* private duplicate of ctx->comm (same ranks): gradient
                    traffic never meets user calls */
  int prepared;
  const tdmi_strategy *strategy;

  tdmi_param *params;
  int nparams, params_cap;
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
  tdmi_kernels kernels;   /* CPU kernels of this engine and its optimizer */
  double loss_scale;      /* fp16 dynamic scale, set by the optimizer */

  /* the micro-step */
  int in_backward;
  int syncing;       /* the micro-step in progress reduces */
  int micro;         /* index in the accumulation cycle */
  int force_sync;    /* tdm_sync_now was called */
  int at_boundary;   /* a sync micro-step ended; the optimizer may step */
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

/* NULL check and a live context. */
tdm_status tdmi_engine_check(const tdm_engine *e, const char *fn);
/* TDM_ERR_INVALID_USAGE unless tdm_prepare succeeded. */
tdm_status tdmi_engine_check_prepared(const tdm_engine *e, const char *fn);

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
tdm_status tdmi_engine_step_begin(tdm_engine *e, const char *fn, int *step);
/* Ends the cycle's step: zeroes the gradients unless the update already
 * did (grads_zeroed). */
void tdmi_engine_step_end(tdm_engine *e, int grads_zeroed);
/* The fp16 loss scale tdm_loss_scale multiplies in. */
void tdmi_engine_set_loss_scale(tdm_engine *e, double scale);

#endif /* TDM_ENGINE_H */
