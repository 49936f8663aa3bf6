/* t_bad_input.c - the bad-input table: every row is a call with a bad
 * argument, the status it must return and a phrase its message must hold.
 * Then the TANDEM_DEBUG rows, where ranks disagree and every rank must
 * fail together instead of hanging, and tdm_start / tdm_stop. */
#include <stdint.h>
#include <stdlib.h>

#include "harness.h"

static int rank, size;
static float a[16], b[16 * 64];

static void table(tdm_context *ctx, tdm_context *dead) {
  size_t neg = (size_t)-5, out;
  int v;
  /* NULL handles */
  TH_FAILS(tdm_allreduce(NULL, a, b, 4, TDM_F32, TDM_SUM),
           TDM_ERR_INVALID_ARGUMENT, "ctx is NULL");
  TH_FAILS(tdm_get_rank(NULL, &v), TDM_ERR_INVALID_ARGUMENT, "ctx is NULL");
  TH_FAILS(tdm_barrier(NULL), TDM_ERR_INVALID_ARGUMENT, "ctx is NULL");
  TH_FAILS(tdm_finalize(NULL), TDM_ERR_INVALID_ARGUMENT, "ctx is NULL");
  TH_FAILS(tdm_rng_u32(NULL, NULL, 1), TDM_ERR_INVALID_ARGUMENT, "rng is NULL");
  TH_FAILS(tdm_init(NULL, NULL, NULL, NULL), TDM_ERR_INVALID_ARGUMENT,
           "ctx is NULL");
  /* NULL pointers */
  TH_FAILS(tdm_allreduce(ctx, NULL, b, 4, TDM_F32, TDM_SUM),
           TDM_ERR_INVALID_ARGUMENT, "send is NULL");
  TH_FAILS(tdm_allgather(ctx, a, NULL, 4, TDM_F32), TDM_ERR_INVALID_ARGUMENT,
           "recv is NULL");
  TH_FAILS(tdm_broadcast(ctx, NULL, 4, TDM_F32, 0), TDM_ERR_INVALID_ARGUMENT,
           "buf is NULL");
  TH_FAILS(tdm_get_rank(ctx, NULL), TDM_ERR_INVALID_ARGUMENT, "out is NULL");
  TH_FAILS(tdm_check_trigger(ctx, NULL), TDM_ERR_INVALID_ARGUMENT,
           "triggered is NULL");
  TH_FAILS(tdm_pad_across_processes(ctx, a, 1, TDM_F32, 0, 0, b, 64, NULL),
           TDM_ERR_INVALID_ARGUMENT, "out_count is NULL");
  if (rank == 0)
    TH_FAILS(tdm_gather(ctx, a, NULL, 4, TDM_F32, 0), TDM_ERR_INVALID_ARGUMENT,
             "recv (on the root) is NULL");
  /* zero and negative counts */
  TH_FAILS(tdm_allreduce(ctx, a, b, 0, TDM_F32, TDM_SUM),
           TDM_ERR_INVALID_ARGUMENT, "count is 0");
  TH_FAILS(tdm_reduce_scatter(ctx, a, b, 0, TDM_F32, TDM_SUM),
           TDM_ERR_INVALID_ARGUMENT, "count is 0");
  TH_FAILS(tdm_allreduce(ctx, a, b, neg, TDM_F32, TDM_SUM),
           TDM_ERR_INVALID_ARGUMENT, "negative or too large (as signed: -5)");
  TH_FAILS(tdm_broadcast(ctx, a, neg, TDM_F64, 0), TDM_ERR_INVALID_ARGUMENT,
           "negative");
  TH_FAILS(tdm_gather_for_metrics(ctx, a, 2, 3, TDM_F32, b, 64, &out),
           TDM_ERR_INVALID_ARGUMENT, "valid_count 3 exceeds count 2");
  /* unknown enums, bad roots, bad combinations */
  TH_FAILS(tdm_allreduce(ctx, a, b, 4, (tdm_dtype)99, TDM_SUM),
           TDM_ERR_INVALID_ARGUMENT, "dtype 99 is not a tdm_dtype");
  TH_FAILS(tdm_allreduce(ctx, a, b, 4, TDM_F32, (tdm_op)42),
           TDM_ERR_INVALID_ARGUMENT, "op 42 is not a tdm_op");
  TH_FAILS(tdm_allreduce(ctx, a, b, 4, TDM_I32, TDM_MEAN),
           TDM_ERR_INVALID_ARGUMENT, "mean needs a floating dtype, got i32");
  TH_FAILS(tdm_broadcast(ctx, a, 4, TDM_F32, size), TDM_ERR_INVALID_ARGUMENT,
           "out of range");
  TH_FAILS(tdm_gather(ctx, a, b, 4, TDM_F32, -1), TDM_ERR_INVALID_ARGUMENT,
           "root -1 is out of range");
  TH_FAILS(tdm_pad_across_processes(ctx, a, 1, TDM_U8, 300, 0, b, 64, &out),
           TDM_ERR_INVALID_ARGUMENT, "pad_value 300 is not representable");
  TH_FAILS(tdm_dtype_size((tdm_dtype)7, &out), TDM_ERR_INVALID_ARGUMENT,
           "dtype 7");
  TH_FAILS(tdm_has_feature((tdm_feature)5, &v), TDM_ERR_INVALID_ARGUMENT,
           "feature 5");
  TH_FAILS(tdm_log(ctx, (tdm_log_level)9, "x"), TDM_ERR_INVALID_ARGUMENT,
           "level 9");
  TH_FAILS(tdm_main_first_begin(ctx, (tdm_scope)3), TDM_ERR_INVALID_ARGUMENT,
           "scope 3");
  TH_FAILS(tdm_rng_create(ctx, 1, (tdm_rng_kind)2, NULL),
           TDM_ERR_INVALID_ARGUMENT, "rng is NULL");
  tdm_rng *g = NULL;
  TH_FAILS(tdm_rng_create(ctx, 1, (tdm_rng_kind)2, &g),
           TDM_ERR_INVALID_ARGUMENT, "kind 2 is not a tdm_rng_kind");
  TH_OK(tdm_rng_create(ctx, 1, TDM_RNG_SHARED, &g));
  TH_FAILS(tdm_rng_normal_f32(g, a, 4, 0.0f, -1.0f), TDM_ERR_INVALID_ARGUMENT,
           "stddev -1 is negative");
  TH_FAILS(tdm_log(ctx, TDM_LOG_OFF, "x"), TDM_ERR_INVALID_ARGUMENT,
           "not a message level");
  TH_OK(tdm_rng_destroy(g));
  TH_CHECK(strcmp(tdm_status_string((tdm_status)1000), "unknown tdm_status") == 0,
           "status string of an unknown status");
  /* calls out of order, and on a finalized context */
  TH_FAILS(tdm_main_first_end(ctx, TDM_SCOPE_GLOBAL), TDM_ERR_INVALID_USAGE,
           "no main-first section");
  TH_FAILS(tdm_allreduce(dead, a, b, 4, TDM_F32, TDM_SUM),
           TDM_ERR_INVALID_USAGE, "not a live context");
  TH_FAILS(tdm_get_world_size(dead, &v), TDM_ERR_INVALID_USAGE,
           "not a live context");
  TH_FAILS(tdm_finalize(dead), TDM_ERR_INVALID_USAGE, "not a live context");
}

/* Under TANDEM_DEBUG the last rank disagrees; every rank must fail. */
static void debug_rows(tdm_context *dbg) {
  int last = rank == size - 1;
  char want[96];
  snprintf(want, sizeof want, "rank %d called allreduce(dtype=f32, op=sum, "
           "count=5)", size - 1);
  TH_FAILS(tdm_allreduce(dbg, a, b, last ? 5 : 4, TDM_F32, TDM_SUM),
           TDM_ERR_MISMATCH, want);
  TH_CHECK(strstr(tdm_last_error(), "rank 0 called allreduce(dtype=f32, op=sum, "
                  "count=4)"), "%s", tdm_last_error());
  TH_FAILS(tdm_allreduce(dbg, a, b, 4, last ? TDM_I32 : TDM_F32, TDM_SUM),
           TDM_ERR_MISMATCH, "dtype=i32");
  TH_FAILS(tdm_broadcast(dbg, a, 4, TDM_F32, last ? 1 : 0), TDM_ERR_MISMATCH,
           "root=1");
  /* different collectives altogether */
  tdm_status st = last ? tdm_broadcast(dbg, a, 4, TDM_F32, 0)
                       : tdm_allreduce(dbg, a, b, 4, TDM_F32, TDM_SUM);
  TH_CHECK(st == TDM_ERR_MISMATCH && strstr(tdm_last_error(), "broadcast("),
           "allreduce vs broadcast: %s", tdm_last_error());
  /* invalid arguments on one rank: every rank returns its status, with
   * a message naming it and the call */
  st = tdm_allreduce(dbg, a, last ? NULL : b, 4, TDM_F32, TDM_SUM);
  char who[32];
  snprintf(who, sizeof who, "rank %d: tdm_allreduce", size - 1);
  TH_CHECK(st == TDM_ERR_INVALID_ARGUMENT && strstr(tdm_last_error(), who),
           "%s: %s", tdm_status_string(st), tdm_last_error());
  /* the context is still usable afterwards */
  float one = 1, sum = 0;
  TH_OK(tdm_allreduce(dbg, &one, &sum, 1, TDM_F32, TDM_SUM));
  TH_CHECK(sum == (float)size, "sum after mismatches %g", sum);
}

/* tdm_start and tdm_stop: bad sessions refused, a good one filled in
 * with this rank's place and an engine, and emptied by tdm_stop. */
static void sessions(void) {
  TH_FAILS(tdm_start(NULL, NULL, NULL), TDM_ERR_INVALID_ARGUMENT,
           "tdm_start: session is NULL");
  TH_FAILS(tdm_stop(NULL), TDM_ERR_INVALID_ARGUMENT,
           "tdm_stop: session is NULL");
  tdm_session bad = TDM_SESSION_INIT;
  bad.size = 8;
  TH_FAILS(tdm_start(NULL, NULL, &bad), TDM_ERR_INVALID_ARGUMENT,
           "session->size = 8");
  tdm_session s = TDM_SESSION_INIT;
  TH_OK(tdm_start(NULL, NULL, &s));
  TH_CHECK(s.ctx && s.engine && !s.optimizer && s.rank == rank &&
               s.world_size == size,
           "session: ctx %p engine %p rank %d of %d", (void *)s.ctx,
           (void *)s.engine, s.rank, s.world_size);
  tdm_device_kind kind = TDM_DEVICE_AUTO;
  int index = -1;
  TH_OK(tdm_get_device(s.ctx, &kind, &index));
  TH_CHECK(kind == TDM_DEVICE_CPU, "session device %d, want the CPU",
           (int)kind);
  TH_OK(tdm_stop(&s));
  TH_CHECK(!s.ctx && !s.engine, "tdm_stop left handles behind");
  TH_FAILS(tdm_stop(&s), TDM_ERR_INVALID_ARGUMENT, "ctx");
}

int main(int argc, char **argv) {
  tdm_context *ctx = NULL, *dead = NULL, *dbg = NULL;
  TH_OK(tdm_init(&argc, &argv, NULL, &ctx));
  th_start();
  tdm_get_rank(ctx, &rank);
  tdm_get_world_size(ctx, &size);
  TH_OK(tdm_init(NULL, NULL, NULL, &dead));
  TH_OK(tdm_finalize(dead));
  table(ctx, dead);
  tdm_options opt = TDM_OPTIONS_INIT;
  opt.debug = 1;
  TH_OK(tdm_init(NULL, NULL, &opt, &dbg));
  if (size > 1)
    debug_rows(dbg);
  TH_OK(tdm_finalize(dbg));
  sessions();
  int code = th_finish("t_bad_input");
  TH_OK(tdm_finalize(ctx));
  return code;
}
