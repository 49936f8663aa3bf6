/* sync.c - barrier, main-process-first sections, triggers. */
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
  int rc = MPI_Barrier(comm);
  if (rc != MPI_SUCCESS)
    return tdmi_mpi_error(rc, "MPI_Barrier");
  return TDM_SUCCESS;
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
  int rc = MPI_Allreduce(&ctx->trigger, &any, 1, MPI_INT, MPI_MAX, ctx->comm);
  if (rc != MPI_SUCCESS)
    return tdmi_mpi_error(rc, "tdm_check_trigger: MPI_Allreduce");
  *triggered = any;
  if (any)
    ctx->trigger = 0;
  return TDM_SUCCESS;
}
