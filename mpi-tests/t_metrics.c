/* t_metrics.c - tdm_log_scalar's files and its bad input:
 *  - main rank only by default: rank 0's metrics.jsonl holds exactly the
 *    lines logged, values as written (NaN as null), and no other rank
 *    writes; with metrics_all_ranks each rank writes metrics.rankN.jsonl;
 *  - NULL context, names or values, an empty, reserved or control-
 *    character name, count < 1, step < 0: TDM_ERR_INVALID_ARGUMENT naming
 *    the argument, on every rank, whether or not it writes;
 *  - a metrics_dir that cannot be created fails tdm_init on every rank
 *    with TDM_ERR_IO naming the folder.
 * (The TensorBoard side is tests/metrics.sh's, read back by Python.) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static int rank, size;

static int count_lines(const char *path, const char *want, int *matches) {
  FILE *fp = fopen(path, "r");
  if (!fp)
    return -1;
  char line[4096];
  int n = 0;
  *matches = 0;
  while (fgets(line, sizeof line, fp)) {
    n++;
    if (strstr(line, want))
      (*matches)++;
  }
  fclose(fp);
  return n;
}

static tdm_context *open_with(const char *dir, int all_ranks) {
  tdm_options o = TDM_OPTIONS_INIT;
  o.metrics_dir = dir;
  o.metrics_all_ranks = all_ranks;
  tdm_context *ctx = NULL;
  TH_OK(tdm_init(NULL, NULL, &o, &ctx));
  return ctx;
}

static void test_files(const char *dir, int all_ranks) {
  tdm_context *ctx = open_with(dir, all_ranks);
  if (!ctx)
    return;
  const char *names[] = {"a/b", "nan"};
  double values[] = {0.5, NAN};
  for (int step = 0; step < 5; step++)
    TH_OK(tdm_log_scalar(ctx, "loss", step, 0.25 * step));
  TH_OK(tdm_log_scalars(ctx, 7, 2, names, values));
  TH_OK(tdm_finalize(ctx)); /* flushes */
  char path[4096];
  snprintf(path, sizeof path, all_ranks ? "%s/metrics.rank%d.jsonl"
                                        : "%s/metrics.jsonl", dir, rank);
  int matches, lines = count_lines(path, "\"loss\":0.75", &matches);
  if (all_ranks || rank == 0) {
    TH_CHECK(lines == 6 && matches == 1, "%s: %d lines, %d with loss 0.75",
             path, lines, matches);
    count_lines(path, "{\"step\":7,", &matches);
    TH_CHECK(matches == 1, "%s: no line of step 7", path);
    count_lines(path, "\"a/b\":0.5,\"nan\":null}", &matches);
    TH_CHECK(matches == 1, "%s: the batch line is not as written", path);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (!all_ranks && rank == 0) { /* nobody else wrote */
    snprintf(path, sizeof path, "%s/metrics.rank1.jsonl", dir);
    TH_CHECK(access(path, F_OK) != 0, "%s exists", path);
  }
}

static void test_bad_input(const char *dir) {
  tdm_context *ctx = open_with(dir, 0); /* rank 0 writes, others do not */
  if (!ctx)
    return;
  const char *one[] = {"x"}, *nul[] = {NULL};
  double v[] = {1.0};
  TH_FAILS(tdm_log_scalar(NULL, "x", 0, 1.0), TDM_ERR_INVALID_ARGUMENT,
           "tdm_log_scalar: ctx is NULL");
  TH_FAILS(tdm_log_scalar(ctx, NULL, 0, 1.0), TDM_ERR_INVALID_ARGUMENT,
           "name is NULL");
  TH_FAILS(tdm_log_scalar(ctx, "", 0, 1.0), TDM_ERR_INVALID_ARGUMENT,
           "1 to 200 characters");
  TH_FAILS(tdm_log_scalar(ctx, "step", 0, 1.0), TDM_ERR_INVALID_ARGUMENT,
           "'step' is the name");
  TH_FAILS(tdm_log_scalar(ctx, "a\nb", 0, 1.0), TDM_ERR_INVALID_ARGUMENT,
           "control character at byte 1");
  TH_FAILS(tdm_log_scalar(ctx, "x", -1, 1.0), TDM_ERR_INVALID_ARGUMENT,
           "step = -1");
  TH_FAILS(tdm_log_scalars(ctx, 0, 0, one, v), TDM_ERR_INVALID_ARGUMENT,
           "count = 0");
  TH_FAILS(tdm_log_scalars(ctx, 0, 1, NULL, v), TDM_ERR_INVALID_ARGUMENT,
           "names is NULL");
  TH_FAILS(tdm_log_scalars(ctx, 0, 1, one, NULL), TDM_ERR_INVALID_ARGUMENT,
           "values is NULL");
  TH_FAILS(tdm_log_scalars(ctx, 0, 1, nul, v), TDM_ERR_INVALID_ARGUMENT,
           "names[0] is NULL");
  TH_OK(tdm_finalize(ctx));

  /* /dev/null is a file: no folder can be made under it. */
  tdm_options o = TDM_OPTIONS_INIT;
  o.metrics_dir = "/dev/null/metrics";
  tdm_context *bad = NULL;
  TH_FAILS(tdm_init(NULL, NULL, &o, &bad), TDM_ERR_IO, "/dev/null/metrics");
  TH_CHECK(bad == NULL, "a failed tdm_init left a context");
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv); /* the host's MPI: each tdm_init is a context */
  th_start();
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  char dir[4096] = "";
  if (rank == 0) {
    const char *t = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/t_metrics.XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(dir))
      dir[0] = '\0';
  }
  MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
  TH_CHECK(dir[0], "no temporary folder");
  char main_dir[4200], all_dir[4200], bad_dir[4200];
  snprintf(main_dir, sizeof main_dir, "%s/main", dir);
  snprintf(all_dir, sizeof all_dir, "%s/all/deeper", dir); /* mkdir -p */
  snprintf(bad_dir, sizeof bad_dir, "%s/bad", dir);
  if (dir[0]) {
    test_files(main_dir, 0);
    test_files(all_dir, 1);
    test_bad_input(bad_dir);
  }
  int code = th_finish("t_metrics");
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0 && dir[0]) {
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
      fprintf(stderr, "t_metrics: could not remove %s\n", dir);
  }
  MPI_Finalize();
  return code;
}
