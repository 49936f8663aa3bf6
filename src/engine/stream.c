/* stream.c - the gradient stream of one micro-step.  Each bucket runs
 *   IDLE -> FILLING -> READY -> IN_FLIGHT -> REDUCED -> IDLE
 * and launches strictly in index order, so every rank issues the same
 * collectives in the same order whatever order its gradients arrive in.
 * Reductions progress by polling from tandem's calls, or on a
 * communication thread (MPI_THREAD_MULTIPLE).  Bucket state is guarded by
 * e->lock in both modes. */
#include <string.h>
#include <time.h>

#include "engine.h"

static const char *const state_names[] = {"IDLE", "FILLING", "READY",
                                          "IN_FLIGHT", "REDUCED"};

static void set_state(tdm_engine *e, int b, tdm_bucket_state to) {
  tdmi_log(e->ctx, TDM_LOG_DEBUG, "engine: bucket %d %s -> %s", b,
           state_names[e->buckets[b].state], state_names[to]);
  e->buckets[b].state = to;
}

/* Keeps the first communication failure; its sentence is re-raised by the
 * thread that reports it.  Called with the lock held. */
static void note_comm_failure(tdm_engine *e, tdm_status st) {
  if (st == TDM_SUCCESS || e->comm_status != TDM_SUCCESS)
    return;
  e->comm_status = st;
  snprintf(e->comm_msg, sizeof e->comm_msg, "%s", tdm_last_error());
}

/* The collective's result goes where the optimizer reads it. */
static tdm_status complete(tdm_engine *e, int b, tdm_status st) {
  if (st == TDM_SUCCESS && e->strategy->finish)
    st = e->strategy->finish(e, &e->buckets[b]);
  return st;
}

static void finish_bucket(tdm_engine *e, int b, tdm_status st) {
  note_comm_failure(e, st);
  set_state(e, b, TDM_BUCKET_REDUCED);
  e->nreduced++;
}

static int next_is_ready(const tdm_engine *e) {
  return e->next_launch < e->nbuckets &&
         e->buckets[e->next_launch].state == TDM_BUCKET_READY;
}

/* ---- poll mode ---- */

/* Whether the next bucket may launch while others are in flight: with MPI
 * one non-blocking allreduce at a time finishes sooner than several that
 * compete (measured with Open MPI's libnbc, see bench/README.md); NCCL
 * runs its queue in order on the communication stream by itself. */
static int may_launch(const tdm_engine *e) {
  return e->xport == TDMI_XPORT_NCCL || e->nreduced == e->next_launch;
}

/* Launches the next buckets in order while they are READY.  Lock held. */
static void launch_in_order(tdm_engine *e) {
  while (e->next_launch < e->nbuckets && may_launch(e) &&
         e->buckets[e->next_launch].state == TDM_BUCKET_READY) {
    int b = e->next_launch++;
    tdm_status st = e->strategy->launch(e, &e->buckets[b]);
    set_state(e, b, TDM_BUCKET_IN_FLIGHT);
    if (st != TDM_SUCCESS)
      finish_bucket(e, b, st);
  }
}

/* Tests the buckets in flight in launch order, up to the first that has
 * not finished.  Lock held. */
static void poll_in_flight(tdm_engine *e) {
  for (int b = 0; b < e->next_launch; b++) {
    if (e->buckets[b].state != TDM_BUCKET_IN_FLIGHT)
      continue;
    int done = 0;
    tdm_status st = e->strategy->test(e, &e->buckets[b], &done);
    if (!done && st == TDM_SUCCESS)
      return;
    finish_bucket(e, b, complete(e, b, st));
  }
}

/* Waits for every bucket in flight, in launch order.  Lock held. */
static void wait_launched(tdm_engine *e) {
  for (int b = 0; b < e->next_launch; b++)
    if (e->buckets[b].state == TDM_BUCKET_IN_FLIGHT)
      finish_bucket(e, b, complete(e, b, e->strategy->wait(e, &e->buckets[b])));
}

static void advance(tdm_engine *e) {
  launch_in_order(e);
  poll_in_flight(e);
  launch_in_order(e);
}

/* ---- thread mode ---- */

static void *comm_thread(void *arg) {
  tdm_engine *e = arg;
  pthread_mutex_lock(&e->lock);
  for (;;) {
    while (!e->quit && !next_is_ready(e))
      pthread_cond_wait(&e->cond, &e->lock);
    if (!next_is_ready(e)) /* quit, and nothing left to reduce */
      break;
    int b = e->next_launch++;
    set_state(e, b, TDM_BUCKET_IN_FLIGHT);
    pthread_mutex_unlock(&e->lock);
    tdm_status st = complete(e, b, e->strategy->reduce(e, &e->buckets[b]));
    pthread_mutex_lock(&e->lock);
    finish_bucket(e, b, st);
    pthread_cond_broadcast(&e->cond);
  }
  pthread_mutex_unlock(&e->lock);
  return NULL;
}

tdm_status tdmi_stream_start(tdm_engine *e) {
  if (e->mode != TDM_PROGRESS_THREAD)
    return TDM_SUCCESS;
  if (pthread_create(&e->thread, NULL, comm_thread, e) != 0)
    return tdmi_error(TDM_ERR_INTERNAL,
                      "tdm_prepare: cannot start the communication thread");
  e->thread_running = 1;
  return TDM_SUCCESS;
}

/* Finishes what is in flight, then stops the thread (never after a
 * timeout: tdm_engine_destroy refuses then). */
void tdmi_stream_stop(tdm_engine *e) {
  pthread_mutex_lock(&e->lock);
  if (e->mode == TDM_PROGRESS_POLL) {
    wait_launched(e);
  }
  e->quit = 1;
  pthread_cond_broadcast(&e->cond);
  pthread_mutex_unlock(&e->lock);
  if (e->thread_running)
    pthread_join(e->thread, NULL);
  e->thread_running = 0;
}

/* Blocks until every launched bucket is reduced. */
static void wait_all(tdm_engine *e) {
  pthread_mutex_lock(&e->lock);
  if (e->mode == TDM_PROGRESS_POLL) {
    while (e->nreduced < e->next_launch || next_is_ready(e)) {
      launch_in_order(e);
      wait_launched(e);
    }
  } else {
    pthread_cond_broadcast(&e->cond);
    /* The thread's collectives block in MPI (its fastest calls) with no
     * deadline: this wait has it, and answers the watchdog's queries. */
    double since = 0;
    while (e->nreduced < e->nbuckets) {
      struct timespec until;
      tdmi_realtime_in(&until, 20 * 1000 * 1000);
      pthread_cond_timedwait(&e->cond, &e->lock, &until);
      tdm_status st = tdmi_watch_idle(e->comm, &since, "bucket reductions "
                                      "(communication thread)");
      if (st != TDM_SUCCESS) {
        note_comm_failure(e, st);
        break;
      }
    }
  }
  pthread_mutex_unlock(&e->lock);
}

/* ---- the micro-step ---- */

static tdm_status end_micro_step(tdm_engine *e, const char *fn);

/* Whether the next micro-step ends the accumulation cycle. */
static int next_syncs(const tdm_engine *e) {
  return e->force_sync || e->micro == e->accumulation_steps - 1;
}

/* Whether this thread drives reductions now: poll mode, in a sync
 * micro-step. */
static int polling(const tdm_engine *e) {
  return e->mode == TDM_PROGRESS_POLL && e->in_backward && e->syncing;
}

/* A micro-step starts: explicitly, or implicitly at the first call that
 * needs one (tdmi_engine_open_micro_step).  The gradients need nothing
 * here: they start at zero because every micro-step's end leaves them so
 * (reduced and given back, or zeroed with a dropped cycle). */
static void begin(tdm_engine *e) {
  e->boundary = next_syncs(e);
  e->syncing = e->boundary || e->stage >= 2; /* ZeRO-2/3: every micro-step */
  e->force_sync = 0;
  e->at_boundary = 0;
  e->sticky = TDM_SUCCESS;
  for (int i = 0; i < e->nparams; i++)
    e->params[i].ready = 0;
  pthread_mutex_lock(&e->lock);
  for (int b = 0; b < e->nbuckets; b++) {
    tdmi_bucket *bk = &e->buckets[b];
    if (bk->state != TDM_BUCKET_IDLE)
      set_state(e, b, TDM_BUCKET_IDLE);
    bk->pending = bk->nparams;
  }
  e->next_launch = e->nreduced = 0;
  e->comm_status = TDM_SUCCESS;
  pthread_mutex_unlock(&e->lock);
  e->in_backward = 1;
  e->ended = 0;
}

tdm_status tdm_backward_begin(tdm_engine *e) {
  const char *fn = "tdm_backward_begin";
  TDMI_TRY(tdmi_engine_check_prepared(e, fn));
  if (e->in_backward)
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "%s: the micro-step in progress has not ended (call "
                      "tdm_backward_end or tdm_step first)", fn);
  begin(e);
  return TDM_SUCCESS;
}

void tdmi_engine_open_micro_step(tdm_engine *e) {
  if (!e->in_backward)
    begin(e);
}

/* Counts the parameter in its bucket; the bucket may become READY. */
static void mark(tdm_engine *e, int param) {
  e->params[param].ready = 1;
  if (!e->syncing)
    return;
  int b = e->params[param].bucket;
  tdmi_bucket *bk = &e->buckets[b];
  pthread_mutex_lock(&e->lock);
  if (bk->state == TDM_BUCKET_IDLE)
    set_state(e, b, TDM_BUCKET_FILLING);
  if (--bk->pending == 0) {
    set_state(e, b, TDM_BUCKET_READY);
    if (e->mode == TDM_PROGRESS_THREAD)
      pthread_cond_broadcast(&e->cond);
  }
  if (e->mode == TDM_PROGRESS_POLL)
    advance(e);
  pthread_mutex_unlock(&e->lock);
}

/* The first error of a micro-step is reported again by tdm_backward_end,
 * so that every rank fails there together. */
static tdm_status remember(tdm_engine *e, tdm_status st) {
  if (st != TDM_SUCCESS && e->sticky == TDM_SUCCESS) {
    e->sticky = st;
    snprintf(e->sticky_msg, sizeof e->sticky_msg, "%s", tdm_last_error());
  }
  return st;
}

static tdm_status mark_checked(tdm_engine *e, int param, const char *fn) {
  if (param < 0 || param >= e->nparams)
    return remember(e, tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                                  "%s: param %d is not registered (%d params)",
                                  fn, param, e->nparams));
  if (e->params[param].ready)
    return remember(e, tdmi_error(TDM_ERR_INVALID_USAGE,
                                  "%s: the gradient of '%s' (param %d) was "
                                  "already marked ready in this micro-step",
                                  fn, e->params[param].name, param));
  mark(e, param);
  return TDM_SUCCESS;
}

tdm_status tdm_grad_ready(tdm_engine *e, int param) {
  const char *fn = "tdm_grad_ready";
  TDMI_TRY(tdmi_engine_check_prepared(e, fn));
  tdmi_engine_open_micro_step(e);
  return mark_checked(e, param, fn);
}

tdm_status tdm_module_grads_ready(tdm_engine *e, int module) {
  const char *fn = "tdm_module_grads_ready";
  TDMI_TRY(tdmi_engine_check_prepared(e, fn));
  tdmi_engine_open_micro_step(e);
  if (module < 0 || module >= e->nmodules)
    return remember(e, tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                                  "%s: module %d is not registered (%d "
                                  "modules)", fn, module, e->nmodules));
  const tdmi_module *m = &e->modules[module];
  for (int i = 0; i < m->nparams; i++)
    TDMI_TRY(mark_checked(e, m->params[i], fn));
  return TDM_SUCCESS;
}

tdm_status tdm_progress(tdm_engine *e) {
  TDMI_TRY(tdmi_engine_check_prepared(e, "tdm_progress"));
  if (polling(e)) {
    pthread_mutex_lock(&e->lock);
    advance(e);
    pthread_mutex_unlock(&e->lock);
  }
  return TDM_SUCCESS;
}

/* Parameters not marked ready.  A micro-step that marked none has its
 * gradients complete now (a program that does not overlap, or the
 * whole backward between two tandem calls): all are marked.  Otherwise
 * the ones left got no gradient: zero if maybe-unused, else an error
 * naming the first.  Either way they are marked, so that every bucket
 * launches and no other rank waits for this one. */
static tdm_status mark_unused(tdm_engine *e) {
  tdm_status st = TDM_SUCCESS;
  int none = 1;
  for (int i = 0; i < e->nparams && none; i++)
    none = !e->params[i].ready;
  for (int i = 0; i < e->nparams; i++) {
    const tdmi_param *p = &e->params[i];
    if (p->ready)
      continue;
    if (!none && !(p->flags & TDM_PARAM_MAYBE_UNUSED) && st == TDM_SUCCESS)
      st = tdmi_error(TDM_ERR_INVALID_USAGE,
                      "tdm_backward_end: parameter '%s' (param %d, module "
                      "'%s') got no gradient in this micro-step; mark it "
                      "ready, or register it with TDM_PARAM_MAYBE_UNUSED",
                      p->name, i, e->modules[p->module].name);
    mark(e, i);
  }
  return st;
}

static void end_cycle(tdm_engine *e) {
  if (e->boundary) {
    e->cycle_micro_steps = e->micro + 1;
    e->micro = 0;
    e->at_boundary = 1;
  } else {
    e->micro++;
  }
}

tdm_status tdm_backward_end(tdm_engine *e) {
  const char *fn = "tdm_backward_end";
  TDMI_TRY(tdmi_engine_check_prepared(e, fn));
  return end_micro_step(e, fn);
}

/* Ends the micro-step in progress, opening it first if no call did. */
static tdm_status end_micro_step(tdm_engine *e, const char *fn) {
  tdmi_engine_open_micro_step(e);
  tdm_status unused = mark_unused(e);
  tdm_status fetched = tdmi_fetch_check_used(e, fn);
  if (unused == TDM_SUCCESS)
    unused = fetched;
  if (e->syncing) {
    wait_all(e);
    pthread_mutex_lock(&e->lock);
    note_comm_failure(e, tdmi_xport_watch(e, fn));
    pthread_mutex_unlock(&e->lock);
  }
  e->in_backward = 0;
  e->ended = 1;
  end_cycle(e);
  tdm_status st = e->sticky;
  if (st != TDM_SUCCESS)
    tdmi_error(st, "%s", e->sticky_msg);
  else if (e->comm_status != TDM_SUCCESS)
    st = tdmi_error(e->comm_status, "%s: %s", fn, e->comm_msg);
  else
    st = unused;
  if (st == TDM_SUCCESS && e->at_boundary && e->offloaded)
    st = tdmi_offload_pull_grads(e);
  st = tdmi_agree(e->comm, st, fn);
  if (st != TDM_SUCCESS) { /* what a failed reduction left is not kept */
    /* said at warn level too: a dropped step must not pass unnoticed */
    tdmi_log(e->ctx, TDM_LOG_WARN, "%s", tdm_last_error());
    tdmi_window_clear_grads(e);
  }
  if (st != TDM_SUCCESS && e->at_boundary)
    tdmi_engine_step_end(e, 0); /* a failed cycle is dropped, not stepped */
  return st;
}

/* What the model seeds its backward with: 1, as one process would, and
 * the engine averages the sums; under fp16 the loss scale, divided by
 * the ranks and micro-steps so that f16 sums stay in range (as DDP's fp16
 * hook divides before it sums). */
static double seed_scale(const tdm_engine *e) {
  if (e->precision != TDM_PRECISION_FP16)
    return 1.0;
  return e->loss_scale / ((double)e->ctx->size * e->accumulation_steps);
}

tdm_status tdm_loss_scale(const tdm_engine *e, double *scale) {
  TDMI_TRY(tdmi_engine_check(e, "tdm_loss_scale"));
  TDMI_TRY(tdmi_check_ptr("tdm_loss_scale", scale, "scale"));
  *scale = seed_scale(e);
  return TDM_SUCCESS;
}

double tdmi_engine_grad_divisor(const tdm_engine *e) {
  if (e->precision == TDM_PRECISION_FP16)
    return 1.0; /* the seed divided already */
  int micro = e->cycle_micro_steps > 0 ? e->cycle_micro_steps : 1;
  return (double)e->ctx->size * micro;
}

tdm_status tdm_get_gradient_accumulation_steps(const tdm_engine *e,
                                               int *steps) {
  const char *fn = "tdm_get_gradient_accumulation_steps";
  TDMI_TRY(tdmi_engine_check(e, fn));
  TDMI_TRY(tdmi_check_ptr(fn, steps, "steps"));
  *steps = e->accumulation_steps;
  return TDM_SUCCESS;
}

tdm_status tdm_is_sync_step(const tdm_engine *e, int *yes) {
  TDMI_TRY(tdmi_engine_check(e, "tdm_is_sync_step"));
  TDMI_TRY(tdmi_check_ptr("tdm_is_sync_step", yes, "yes"));
  *yes = e->in_backward ? e->boundary : next_syncs(e);
  return TDM_SUCCESS;
}

tdm_status tdm_sync_now(tdm_engine *e) {
  TDMI_TRY(tdmi_engine_check_prepared(e, "tdm_sync_now"));
  if (e->in_backward)
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "tdm_sync_now: a micro-step is in progress; call it "
                      "before tdm_backward_begin of the micro-step to sync");
  e->force_sync = 1;
  return TDM_SUCCESS;
}

tdm_status tdm_get_bucket(tdm_engine *e, int bucket, tdm_bucket_state *state,
                          size_t *bytes, int *param_count) {
  const char *fn = "tdm_get_bucket";
  TDMI_TRY(tdmi_engine_check_prepared(e, fn));
  if (bucket < 0 || bucket >= e->nbuckets)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: bucket %d does not exist (%d buckets)", fn, bucket,
                      e->nbuckets);
  pthread_mutex_lock(&e->lock);
  if (polling(e))
    poll_in_flight(e);
  if (state)
    *state = e->buckets[bucket].state;
  pthread_mutex_unlock(&e->lock);
  if (bytes)
    *bytes = e->buckets[bucket].bytes;
  if (param_count)
    *param_count = e->buckets[bucket].nparams;
  return TDM_SUCCESS;
}

/* ---- the step protocol for the optimizer layer ---- */

tdm_status tdmi_engine_step_begin(tdm_engine *e, const char *fn, int consume,
                                  int *step) {
  TDMI_TRY(tdmi_engine_check_prepared(e, fn));
  *step = 0;
  if (e->in_backward || !e->ended)
    TDMI_TRY(end_micro_step(e, fn));
  if (consume)
    e->ended = 0;
  *step = e->at_boundary;
  return TDM_SUCCESS;
}

/* The gradients kept across micro-steps: full (stages 0-1) or this
 * rank's shard (2-3).  The update zeroes what it reads; stage 1 keeps the
 * other ranks' chunks too, and offload reads host copies. */
static tdm_status zero_grads(tdm_engine *e, int updated) {
  for (int d = 0; d < TDM_NUM_DTYPES; d++) {
    tdmi_flat *f = &e->flat[d];
    size_t gsize = tdmi_dtype_size(f->grad_dtype);
    if (f->grad && (!updated || e->stage == 1))
      TDMI_TRY(tdmi_ops_zero(&e->ops, f->grad, f->count * gsize));
    if (f->shard_grad && (!updated || e->offloaded))
      TDMI_TRY(tdmi_ops_zero(&e->ops, f->shard_grad, f->shard_count * gsize));
  }
  return TDM_SUCCESS;
}

tdm_status tdmi_engine_step_end(tdm_engine *e, int updated) {
  tdm_status zeroed = zero_grads(e, updated);
  e->at_boundary = 0;
  if (!updated || e->stage == 0)
    return zeroed;
  tdm_status st = e->offloaded ? tdmi_offload_push_values(e) : TDM_SUCCESS;
  if (st == TDM_SUCCESS)
    st = e->stage == 3 ? tdmi_fetch_regather(e) : tdmi_zero_gather_params(e);
  if (st == TDM_SUCCESS)
    st = zeroed;
  return tdmi_agree(e->comm, st, "tdm_step (gathering updated parameters)");
}

void tdmi_engine_set_loss_scale(tdm_engine *e, double scale) {
  e->loss_scale = scale;
}

/* New master values were written into every span (a checkpoint, loaded
 * weights): the compute copies follow, then every rank's parts go where
 * the model reads them, as after an update. */
tdm_status tdmi_engine_values_loaded(tdm_engine *e) {
  tdm_status st = TDM_SUCCESS;
  for (int i = 0; st == TDM_SUCCESS && i < tdmi_engine_span_count(e); i++) {
    tdmi_span s = tdmi_engine_span(e, i);
    if (s.copy)
      st = tdmi_ops_convert(&e->ops, s.dtype, s.data, s.copy_dtype, s.copy,
                            s.count);
  }
  if (st == TDM_SUCCESS)
    st = tdmi_ops_synchronize(&e->ops);
  TDMI_TRY(tdmi_agree(e->comm, st, "loading parameter values"));
  if (e->stage == 0)
    return TDM_SUCCESS;
  e->at_boundary = 1;
  return tdmi_engine_step_end(e, 1);
}
