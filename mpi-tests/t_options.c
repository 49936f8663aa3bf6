/* t_options.c - precedence API > environment > config file > default, and
 * the errors for bad files, keys, values and sizes, which fail on every
 * rank together. */
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

#include "harness.h"
#include "tandem_mpi.h"

static int rank, size;
static char dir[64];

static const char *write_file(const char *name, const char *text) {
  static char path[160];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *fp = fopen(path, "w");
  fputs(text, fp);
  fclose(fp);
  return path;
}

/* Initializes with options, reads back the resolved options, finalizes. */
static tdm_status resolve(const tdm_options *opt, tdm_options *got) {
  tdm_context *c = NULL;
  tdm_status st = tdm_init_comm(MPI_COMM_WORLD, opt, &c);
  if (st != TDM_SUCCESS)
    return st;
  got->size = sizeof *got;
  tdm_status g = tdm_get_options(c, got);
  /* The strings belong to the context: keep copies past tdm_finalize. */
  static char config_file[256], log_file[256];
  if (g == TDM_SUCCESS && got->config_file) {
    snprintf(config_file, sizeof config_file, "%s", got->config_file);
    got->config_file = config_file;
  }
  if (g == TDM_SUCCESS && got->log_file) {
    snprintf(log_file, sizeof log_file, "%s", got->log_file);
    got->log_file = log_file;
  }
  tdm_finalize(c);
  return g;
}

static void test_precedence(void) {
  tdm_options opt = TDM_OPTIONS_INIT, got;
  TH_OK(resolve(NULL, &got));
  TH_CHECK(got.log_level == TDM_LOG_WARN && got.debug == 0 &&
           got.device == TDM_DEVICE_AUTO && got.device_index == TDM_UNSET &&
           got.log_file == NULL && got.config_file == NULL,
           "defaults: level %d debug %d device %d index %d", got.log_level,
           got.debug, got.device, got.device_index);

  opt.config_file = write_file("a.yaml", "# comment\nlog_level: debug\n"
                               "debug: true\ndevice: cpu\ndevice_index: 0\n");
  TH_OK(resolve(&opt, &got));
  TH_CHECK(got.log_level == TDM_LOG_DEBUG && got.debug == 1 &&
           got.device == TDM_DEVICE_CPU && got.device_index == 0,
           "file: level %d debug %d device %d", got.log_level, got.debug,
           got.device);
  TH_CHECK(got.config_file && strcmp(got.config_file, opt.config_file) == 0,
           "config_file reported back");

  setenv("TANDEM_LOG", "info", 1); /* environment beats the file */
  TH_OK(resolve(&opt, &got));
  TH_CHECK(got.log_level == TDM_LOG_INFO && got.debug == 1,
           "env > file: level %d debug %d", got.log_level, got.debug);

  opt.log_level = TDM_LOG_OFF; /* the API beats both */
  TH_OK(resolve(&opt, &got));
  TH_CHECK(got.log_level == TDM_LOG_OFF, "api > env: level %d", got.log_level);
  unsetenv("TANDEM_LOG");

  tdm_options plain = TDM_OPTIONS_INIT;
  setenv("TANDEM_CONFIG", opt.config_file, 1); /* file named by the env */
  TH_OK(resolve(&plain, &got));
  TH_CHECK(got.log_level == TDM_LOG_DEBUG, "TANDEM_CONFIG: level %d",
           got.log_level);
  unsetenv("TANDEM_CONFIG");

  plain.config_file = write_file("empty.yaml", "");
  TH_OK(resolve(&plain, &got));
  TH_CHECK(got.log_level == TDM_LOG_WARN, "empty file keeps defaults");
}

/* An older caller's struct ends before debug: fields past its size are
 * never read, whatever the memory behind holds. */
static void test_sizes(void) {
  tdm_options opt = TDM_OPTIONS_INIT, got;
  opt.debug = 1;
  opt.size = offsetof(tdm_options, debug);
  TH_OK(resolve(&opt, &got));
  TH_CHECK(got.debug == 0, "field beyond size was read");
  opt.size = sizeof opt + 8;
  TH_FAILS(resolve(&opt, &got), TDM_ERR_INVALID_ARGUMENT, "tdm_options.size");
  tdm_options init;
  TH_OK(tdm_options_init(&init));
  tdm_options ref = TDM_OPTIONS_INIT;
  TH_CHECK(init.size == ref.size && init.config_file == NULL &&
           init.log_level == TDM_UNSET && init.log_file == NULL &&
           init.debug == TDM_UNSET && init.device == TDM_UNSET &&
           init.device_index == TDM_UNSET, "tdm_options_init differs");
  opt = ref;
  opt.log_level = 9;
  TH_FAILS(resolve(&opt, &got), TDM_ERR_INVALID_ARGUMENT, "log_level = 9");
}

static void test_bad_config(void) {
  tdm_options opt = TDM_OPTIONS_INIT, got;
  opt.config_file = write_file("typo.yaml", "debug: false\nlog_levle: info\n");
  TH_FAILS(resolve(&opt, &got), TDM_ERR_CONFIG, "unknown key 'log_levle'");
  TH_CHECK(strstr(tdm_last_error(), "typo.yaml") &&
           strstr(tdm_last_error(), "line 2"), "names file and line: %s",
           tdm_last_error());
  opt.config_file = write_file("value.yaml", "device: tpu\n");
  TH_FAILS(resolve(&opt, &got), TDM_ERR_CONFIG, "'tpu' for device");
  opt.config_file = write_file("syntax.yaml", "log_level: [info\n");
  TH_FAILS(resolve(&opt, &got), TDM_ERR_CONFIG, "syntax.yaml");
  opt.config_file = write_file("list.yaml", "- log_level\n- info\n");
  TH_FAILS(resolve(&opt, &got), TDM_ERR_CONFIG, "must be a mapping");
  opt.config_file = write_file("nested.yaml", "debug:\n  x: 1\n");
  TH_FAILS(resolve(&opt, &got), TDM_ERR_CONFIG, "must be a scalar");
  opt.config_file = "/nonexistent/tandem.yaml";
  TH_FAILS(resolve(&opt, &got), TDM_ERR_IO, "/nonexistent/tandem.yaml");
  setenv("TANDEM_LOG", "loud", 1);
  TH_FAILS(resolve(NULL, &got), TDM_ERR_CONFIG, "TANDEM_LOG");
  TH_CHECK(strstr(tdm_last_error(), "'loud'"), "%s", tdm_last_error());
  unsetenv("TANDEM_LOG");
  setenv("TANDEM_DEBUG", "maybe", 1);
  TH_FAILS(resolve(NULL, &got), TDM_ERR_CONFIG, "TANDEM_DEBUG");
  unsetenv("TANDEM_DEBUG");
}

/* Only the last rank gets a broken file: every rank returns its
 * TDM_ERR_CONFIG, naming it - nobody hangs. */
static void test_one_rank_fails(void) {
  if (size < 2)
    return;
  tdm_options opt = TDM_OPTIONS_INIT, got;
  if (rank == size - 1)
    opt.config_file = write_file("bad.yaml", "nonsense_key: 1\n");
  tdm_status st = resolve(&opt, &got);
  if (rank == size - 1) {
    TH_CHECK(st == TDM_ERR_CONFIG, "failing rank got %s", tdm_status_string(st));
  } else {
    char want[64];
    snprintf(want, sizeof want, "rank %d", size - 1);
    TH_CHECK(st == TDM_ERR_CONFIG && strstr(tdm_last_error(), want) &&
             strstr(tdm_last_error(), "nonsense_key"),
             "other rank got %s: %s", tdm_status_string(st), tdm_last_error());
  }
}

int main(int argc, char **argv) {
  th_init(&argc, &argv, MPI_THREAD_SINGLE, &rank, &size);
  snprintf(dir, sizeof dir, "/tmp/tdm_options_XXXXXX");
  TH_CHECK(mkdtemp(dir) != NULL, "mkdtemp");
  unsetenv("TANDEM_LOG");
  unsetenv("TANDEM_CONFIG");
  unsetenv("TANDEM_DEBUG");
  unsetenv("TANDEM_DEVICE"); /* run-tap.sh sets it; the defaults are checked */
  test_precedence();
  test_sizes();
  test_bad_config();
  test_one_rank_fails();
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  TH_CHECK(system(cmd) == 0, "cleanup");
  int code = th_finish("t_options");
  MPI_Finalize();
  return code;
}
