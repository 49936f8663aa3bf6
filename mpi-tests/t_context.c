/* t_context.c - tdm_init owning MPI, topology, device choice on a CPU
 * machine, process utilities, triggers, the per-rank log file. */
#include <stdlib.h>
#include <unistd.h>

#include "harness.h"
#include "tandem_mpi.h"

static int rank, size;

static void test_topology(tdm_context *ctx) {
  int v, wr, ws;
  MPI_Comm_rank(MPI_COMM_WORLD, &wr);
  MPI_Comm_size(MPI_COMM_WORLD, &ws);
  TH_OK(tdm_get_rank(ctx, &v));
  TH_CHECK(v == wr, "rank %d vs MPI %d", v, wr);
  TH_OK(tdm_get_world_size(ctx, &v));
  TH_CHECK(v == ws, "size %d vs MPI %d", v, ws);
  /* mpirun on one host: one node holding every rank. */
  TH_OK(tdm_get_local_rank(ctx, &v));
  TH_CHECK(v == wr, "local rank %d", v);
  TH_OK(tdm_get_local_size(ctx, &v));
  TH_CHECK(v == ws, "local size %d", v);
  TH_OK(tdm_get_node_count(ctx, &v));
  TH_CHECK(v == 1, "node count %d", v);
  TH_OK(tdm_get_node_index(ctx, &v));
  TH_CHECK(v == 0, "node index %d", v);
  TH_OK(tdm_is_main(ctx, &v));
  TH_CHECK(v == (wr == 0), "is_main %d", v);
  TH_OK(tdm_is_local_main(ctx, &v));
  TH_CHECK(v == (wr == 0), "is_local_main %d", v);
  TH_OK(tdm_is_last(ctx, &v));
  TH_CHECK(v == (wr == ws - 1), "is_last %d", v);
  MPI_Comm comm;
  TH_OK(tdm_get_comm(ctx, &comm));
  int cmp;
  MPI_Comm_compare(comm, MPI_COMM_WORLD, &cmp);
  TH_CHECK(cmp == MPI_CONGRUENT, "tandem's comm is a duplicate (%d)", cmp);
}

/* Inside the section the main rank creates a file; a rank entering the
 * section after it must find the file. */
static void test_main_first(tdm_context *ctx, tdm_scope scope) {
  long id = (long)getpid();
  MPI_Bcast(&id, 1, MPI_LONG, 0, MPI_COMM_WORLD);
  char path[128];
  snprintf(path, sizeof path, "/tmp/tdm_main_first_%ld_%d", id, (int)scope);
  TH_OK(tdm_main_first_begin(ctx, scope));
  if (rank == 0) {
    FILE *fp = fopen(path, "w");
    TH_CHECK(fp != NULL, "cannot create %s", path);
    if (fp)
      fclose(fp);
  } else {
    TH_CHECK(access(path, F_OK) == 0, "scope %d: entered before the main rank "
             "finished", (int)scope);
  }
  TH_OK(tdm_main_first_end(ctx, scope));
  TH_OK(tdm_barrier(ctx));
  if (rank == 0)
    unlink(path);
}

static void test_trigger(tdm_context *ctx) {
  int hit = -1;
  TH_OK(tdm_check_trigger(ctx, &hit));
  TH_CHECK(hit == 0, "no rank set the trigger, got %d", hit);
  if (rank == size - 1)
    TH_OK(tdm_set_trigger(ctx));
  TH_OK(tdm_check_trigger(ctx, &hit));
  TH_CHECK(hit == 1, "last rank set the trigger, got %d", hit);
  TH_OK(tdm_check_trigger(ctx, &hit));
  TH_CHECK(hit == 0, "trigger is cleared once seen, got %d", hit);
}

static void test_device(tdm_context *ctx) {
  tdm_device_kind kind;
  int index, cuda = 0;
  TH_OK(tdm_get_device(ctx, &kind, &index));
  TH_OK(tdm_has_feature(TDM_FEATURE_CUDA, &cuda));
  if (!cuda) /* a GPU build with a visible GPU is checked in t_device */
    TH_CHECK(kind == TDM_DEVICE_CPU, "build without CUDA chose device %d",
             (int)kind);
}

/* The log file pattern expands %r and %p per rank; info lines land there. */
static void test_log_file(void) {
  char pattern[] = "/tmp/tdm_log_%p_r%r.log", path[128];
  snprintf(path, sizeof path, "/tmp/tdm_log_%ld_r%d.log", (long)getpid(), rank);
  tdm_options opt = TDM_OPTIONS_INIT;
  opt.log_file = pattern;
  opt.log_level = TDM_LOG_INFO;
  tdm_context *c2 = NULL;
  TH_OK(tdm_init_comm(MPI_COMM_WORLD, &opt, &c2));
  TH_OK(tdm_log(c2, TDM_LOG_INFO, "hello from %d", rank));
  TH_OK(tdm_log(c2, TDM_LOG_DEBUG, "debug line must not appear"));
  TH_OK(tdm_finalize(c2));
  FILE *fp = fopen(path, "r");
  TH_CHECK(fp != NULL, "log file %s missing", path);
  if (!fp)
    return;
  char text[8192] = "", want[64];
  size_t n = fread(text, 1, sizeof text - 1, fp);
  text[n] = '\0';
  fclose(fp);
  snprintf(want, sizeof want, "[rank %d/%d ", rank, size);
  TH_CHECK(strstr(text, want) && strstr(text, "tandem INFO: hello from"),
           "log file lacks the rank prefix or the line: %s", text);
  TH_CHECK(!strstr(text, "must not appear"), "debug line shown at info");
  unlink(path);
}

int main(int argc, char **argv) {
  int initialized = 1;
  MPI_Initialized(&initialized);
  tdm_context *ctx = NULL;
  TH_OK(tdm_init(&argc, &argv, NULL, &ctx)); /* starts MPI */
  th_start();
  TH_CHECK(!initialized, "MPI was initialized before tdm_init");
  tdm_get_rank(ctx, &rank);
  tdm_get_world_size(ctx, &size);
  test_topology(ctx);
  test_main_first(ctx, TDM_SCOPE_GLOBAL);
  test_main_first(ctx, TDM_SCOPE_LOCAL);
  test_trigger(ctx);
  test_device(ctx);
  test_log_file();
  TH_OK(tdm_print(ctx, "t_context: printed once, by the main rank\n"));
  int code = th_finish("t_context");
  TH_OK(tdm_finalize(ctx)); /* the last context: finalizes MPI */
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) {
    fprintf(stderr, "rank %d: MPI was NOT finalized by tdm_finalize\n", rank);
    return 1;
  }
  return code;
}
