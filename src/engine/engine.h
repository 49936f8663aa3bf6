/* engine.h - internal interface of the engine layer: the parameter
 * registry, flat storage per dtype, gradient buckets and their state
 * machines, and the strategies that choose each bucket's collective.
 * Not installed. */
#ifndef TDM_ENGINE_H
#define TDM_ENGINE_H

#include <pthread.h>

#include "../comm/comm.h"

#define TDMI_MAX_NDIM 8
#define TDMI_ALIGN 64 /* bytes; every tensor starts on a cache line */

typedef struct {
  char *name;
  int module;
  tdm_dtype dtype;
  int ndim;
  int64_t shape[TDMI_MAX_NDIM];
  size_t numel;
  int flags;      /* TDM_PARAM_* */
  void *initial;  /* staged values until tdm_prepare; NULL: zeros */
  size_t offset;  /* bytes into the flat buffers of its dtype */
  int bucket;
  int ready;      /* marked in the micro-step in progress */
} tdmi_param;

typedef struct {
  char *name;
  int *params;    /* indices, in registration order */
  int nparams;
} tdmi_module;

typedef struct {
  tdm_dtype dtype;
  size_t offset;  /* bytes into the flat gradient buffer of dtype */
  size_t bytes;
  int nparams;
  int pending;    /* parameters not yet ready in this micro-step */
  tdm_bucket_state state;
  MPI_Request request;
} tdmi_bucket;

/* One dtype's storage: values and gradients, same layout. */
typedef struct {
  size_t bytes;
  void *data;
  void *grad;
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
  tdm_dtype dtype;
  void *data;
  void *grad;
  size_t count; /* elements, padding included (always zero) */
} tdmi_span;

int tdmi_engine_span_count(const tdm_engine *e);
tdmi_span tdmi_engine_span(const tdm_engine *e, int i);
/* Whether the optimizer steps now: 1 at the end of an accumulation cycle,
 * 0 otherwise, an error inside backward. */
tdm_status tdmi_engine_step_begin(tdm_engine *e, const char *fn, int *step);
/* Zeroes the gradients; the cycle's step is done. */
void tdmi_engine_step_end(tdm_engine *e);

#endif /* TDM_ENGINE_H */
