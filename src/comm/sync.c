/* sync.c - barrier, main-process-first sections, triggers, and the stop
 * on a signal (Slurm's preemption warning). */
#include <pthread.h>
#include <signal.h>
#include <string.h>

#include "comm.h"

static MPI_Comm scope_comm(const tdm_context *ctx, tdm_scope scope) {
  return scope == TDM_SCOPE_LOCAL ? ctx->local_comm : ctx->comm;
}

static int scope_is_main(const tdm_context *ctx, tdm_scope scope) {
  return scope == TDM_SCOPE_LOCAL ? ctx->local_rank == 0 : ctx->rank == 0;
}

static tdm_status barrier_on(tdm_context *ctx, MPI_Comm comm, const char *fn) {
  tdmi_signature sig = {TDMI_COLL_BARRIER, -1, -1, TDMI_NO_ROOT, 0};
  if (comm == ctx->comm)
    TDMI_TRY(tdmi_coll_enter(ctx, fn, &sig, TDM_SUCCESS));
  MPI_Request req;
  int rc = MPI_Ibarrier(comm, &req);
  return tdmi_watched(comm, rc, &req, fn, 0);
}

tdm_status tdm_barrier(tdm_context *ctx) {
  TDMI_CHECK_CTX(ctx, "tdm_barrier");
  return barrier_on(ctx, ctx->comm, "tdm_barrier");
}

static tdm_status check_scope(const char *fn, tdm_scope scope) {
  if (scope != TDM_SCOPE_GLOBAL && scope != TDM_SCOPE_LOCAL)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: scope %d is not a "
                      "tdm_scope", fn, (int)scope);
  return TDM_SUCCESS;
}

/* The others wait in begin for the barrier the main rank joins in end. */
tdm_status tdm_main_first_begin(tdm_context *ctx, tdm_scope scope) {
  static const char fn[] = "tdm_main_first_begin";
  TDMI_CHECK_CTX(ctx, fn);
  TDMI_TRY(check_scope(fn, scope));
  if (ctx->main_first_open[scope == TDM_SCOPE_LOCAL])
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "%s: a main-first section of this scope is already open",
                      fn);
  if (!scope_is_main(ctx, scope))
    TDMI_TRY(barrier_on(ctx, scope_comm(ctx, scope), fn));
  ctx->main_first_open[scope == TDM_SCOPE_LOCAL] = 1;
  return TDM_SUCCESS;
}

tdm_status tdm_main_first_end(tdm_context *ctx, tdm_scope scope) {
  static const char fn[] = "tdm_main_first_end";
  TDMI_CHECK_CTX(ctx, fn);
  TDMI_TRY(check_scope(fn, scope));
  if (!ctx->main_first_open[scope == TDM_SCOPE_LOCAL])
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "%s: no main-first section of this scope is open "
                      "(call tdm_main_first_begin first)", fn);
  ctx->main_first_open[scope == TDM_SCOPE_LOCAL] = 0;
  if (scope_is_main(ctx, scope))
    TDMI_TRY(barrier_on(ctx, scope_comm(ctx, scope), fn));
  return TDM_SUCCESS;
}

tdm_status tdm_set_trigger(tdm_context *ctx) {
  TDMI_CHECK_CTX(ctx, "tdm_set_trigger");
  ctx->trigger = 1;
  return TDM_SUCCESS;
}

tdm_status tdm_check_trigger(tdm_context *ctx, int *triggered) {
  static const char fn[] = "tdm_check_trigger";
  TDMI_CHECK_CTX(ctx, fn);
  tdm_status st = tdmi_check_ptr(fn, triggered, "triggered");
  tdmi_signature sig = {TDMI_COLL_TRIGGER, -1, -1, TDMI_NO_ROOT, 0};
  TDMI_TRY(tdmi_coll_enter(ctx, fn, &sig, st));
  int any = 0;
  MPI_Request req;
  int rc = MPI_Iallreduce(&ctx->trigger, &any, 1, MPI_INT, MPI_MAX, ctx->comm,
                          &req);
  TDMI_TRY(tdmi_watched(ctx->comm, rc, &req, fn, sizeof any));
  *triggered = any;
  if (any)
    ctx->trigger = 0;
  return TDM_SUCCESS;
}

/* ---- stopping on SIGUSR1 / SIGTERM ---- */

static volatile sig_atomic_t stop_signal;
static pthread_once_t stop_armed = PTHREAD_ONCE_INIT;

/* A signal asks for a stop at the next step boundary.  Repeats are
 * ignored: under Slurm a rank often gets the same signal twice within
 * milliseconds (from slurmstepd and forwarded by mpirun or srun), and
 * terminating on the second would kill it in the middle of its save.
 * A rank that never reaches a boundary is ended by the watchdog (the
 * others time out) or by Slurm's SIGKILL after KillWait. */
static void on_stop_signal(int sig) {
  if (!stop_signal)
    stop_signal = sig;
}

/* Installs the handler where the program left the default action: a
 * handler of its own stays. */
static void arm_stop_signals(void) {
  static const int sigs[] = {SIGUSR1, SIGTERM};
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
    struct sigaction old, sa;
    if (sigaction(sigs[i], NULL, &old) != 0 || old.sa_handler != SIG_DFL ||
        (old.sa_flags & SA_SIGINFO))
      continue;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(sigs[i], &sa, NULL);
  }
}

static const char *signal_name(int sig) {
  return sig == SIGUSR1 ? "SIGUSR1" : sig == SIGTERM ? "SIGTERM" : "a signal";
}

tdm_status tdm_should_stop(tdm_context *ctx, int *stop) {
  static const char fn[] = "tdm_should_stop";
  TDMI_CHECK_CTX(ctx, fn);
  tdm_status st = tdmi_check_ptr(fn, stop, "stop");
  tdmi_signature sig = {TDMI_COLL_SHOULD_STOP, -1, -1, TDMI_NO_ROOT, 0};
  TDMI_TRY(tdmi_coll_enter(ctx, fn, &sig, st));
  pthread_once(&stop_armed, arm_stop_signals);
  /* MINLOC of -signal: the largest signal number, and the lowest rank
   * that received it. */
  struct {
    int value, rank;
  } mine = {-(int)stop_signal, ctx->rank}, first = {0, 0};
  MPI_Request req;
  int rc = MPI_Iallreduce(&mine, &first, 1, MPI_2INT, MPI_MINLOC, ctx->comm,
                          &req);
  TDMI_TRY(tdmi_watched(ctx->comm, rc, &req, fn, sizeof first));
  *stop = first.value != 0;
  if (*stop && !ctx->stop_agreed)
    tdmi_log(ctx, TDM_LOG_WARN, "%s: rank %d received %s: every rank stops "
             "at this step", fn, first.rank, signal_name(-first.value));
  ctx->stop_agreed |= *stop;
  return TDM_SUCCESS;
}
