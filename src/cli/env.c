/* env.c - tandem env: what a bug report needs, in one paste: versions of
 * tandem, MPI (library and runtime), UCX, CUDA and NCCL, the devices,
 * the CPU, Slurm's allocation, and every setting in force with where its
 * value came from.  CUDA and NCCL are looked up with dlopen, so this
 * works the same in CPU-only builds. */
#define _GNU_SOURCE /* realpath */
#include <dlfcn.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <mpi.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"

extern char **environ;

/* The first line of `program arg` containing key (NULL: the first), or
 * "not found". */
static void first_line_of(const char *program, const char *arg,
                          const char *key, char *out, size_t cap) {
  snprintf(out, cap, "not found");
  int fd[2];
  if (pipe(fd) != 0)
    return;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fd[1], 1);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addclose(&fa, fd[0]);
  char *argv[] = {(char *)program, (char *)arg, NULL};
  pid_t pid;
  int ok = posix_spawnp(&pid, program, &fa, NULL, argv, environ) == 0;
  posix_spawn_file_actions_destroy(&fa);
  close(fd[1]);
  FILE *fp = fdopen(fd[0], "r");
  char line[512];
  int found = 0;
  while (fp && fgets(line, sizeof line, fp))
    if (ok && !found && (!key || strstr(line, key))) {
      line[strcspn(line, "\n")] = '\0';
      snprintf(out, cap, "%s", line);
      found = 1;
    }
  if (fp)
    fclose(fp);
  else
    close(fd[0]);
  int status = 0;
  if (ok)
    waitpid(pid, &status, 0);
  if (ok && (!WIFEXITED(status) || WEXITSTATUS(status) == 127))
    snprintf(out, cap, "not found");
}

static void *open_first(const char *const *names) {
  for (; *names; names++) {
    void *h = dlopen(*names, RTLD_NOW | RTLD_LOCAL);
    if (h)
      return h;
  }
  return NULL;
}

static void cuda_report(void) {
  static const char *const driver_libs[] = {"libcuda.so.1", "libcuda.so", NULL};
  static const char *const runtime_libs[] = {"libcudart.so", "libcudart.so.12",
                                             "libcudart.so.11.0", NULL};
  static const char *const nccl_libs[] = {"libnccl.so.2", "libnccl.so", NULL};
  void *drv = open_first(driver_libs);
  int (*init)(unsigned) = drv ? (int (*)(unsigned))dlsym(drv, "cuInit") : NULL;
  int (*version)(int *) =
      drv ? (int (*)(int *))dlsym(drv, "cuDriverGetVersion") : NULL;
  int (*count)(int *) = drv ? (int (*)(int *))dlsym(drv, "cuDeviceGetCount") : NULL;
  int (*get)(int *, int) = drv ? (int (*)(int *, int))dlsym(drv, "cuDeviceGet") : NULL;
  int (*name)(char *, int, int) =
      drv ? (int (*)(char *, int, int))dlsym(drv, "cuDeviceGetName") : NULL;
  int v = 0, n = 0;
  if (version && version(&v) == 0)
    printf("CUDA driver: %d.%d\n", v / 1000, v % 1000 / 10);
  else
    printf("CUDA driver: not found\n");
  if (init && count && init(0) == 0 && count(&n) == 0) {
    printf("GPUs: %d\n", n);
    for (int i = 0; i < n && get && name; i++) {
      int dev = 0;
      char text[256] = "?";
      if (get(&dev, i) == 0)
        name(text, (int)sizeof text, dev);
      printf("  GPU %d: %s\n", i, text);
    }
  } else {
    printf("GPUs: 0\n");
  }
  void *rt = open_first(runtime_libs);
  int (*rt_version)(int *) =
      rt ? (int (*)(int *))dlsym(rt, "cudaRuntimeGetVersion") : NULL;
  if (rt_version && rt_version(&v) == 0)
    printf("CUDA runtime: %d.%d\n", v / 1000, v % 1000 / 10);
  else
    printf("CUDA runtime: not found\n");
  void *nccl = open_first(nccl_libs);
  int (*nccl_version)(int *) =
      nccl ? (int (*)(int *))dlsym(nccl, "ncclGetVersion") : NULL;
  if (nccl_version && nccl_version(&v) == 0)
    printf("NCCL: %d.%d.%d\n", v >= 10000 ? v / 10000 : v / 1000,
           v >= 10000 ? v % 10000 / 100 : v % 1000 / 100, v % 100);
  else
    printf("NCCL: not found\n");
}

static void cpu_report(void) {
  FILE *fp = fopen("/proc/cpuinfo", "r");
  char line[512], model[256] = "unknown";
  while (fp && fgets(line, sizeof line, fp))
    if (strncmp(line, "model name", 10) == 0 && strchr(line, ':')) {
      snprintf(model, sizeof model, "%s", strchr(line, ':') + 2);
      model[strcspn(model, "\n")] = '\0';
      break;
    }
  if (fp)
    fclose(fp);
  printf("CPU: %s, %ld online\n", model, sysconf(_SC_NPROCESSORS_ONLN));
}

static void slurm_report(void) {
  static const char *const vars[] = {"SLURM_JOB_ID", "SLURM_NTASKS",
                                     "SLURM_JOB_NUM_NODES",
                                     "SLURM_JOB_NODELIST", NULL};
  if (!getenv("SLURM_JOB_ID")) {
    printf("Slurm: not in an allocation\n");
    return;
  }
  printf("Slurm:");
  for (int i = 0; vars[i]; i++)
    if (getenv(vars[i]))
      printf(" %s=%s", vars[i], getenv(vars[i]));
  putchar('\n');
}

int cli_env(int argc, char **argv) {
  const char *cmd = "env";
  static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  optind = 1;
  opterr = 0;
  for (int c; (c = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
    if (c == 'c') {
      char path[PATH_MAX];
      if (!realpath(optarg, path) || access(path, R_OK) != 0)
        return cli_fail(cmd, "--config %s: cannot read it", optarg);
      setenv("TANDEM_CONFIG", path, 1);
    } else if (c == 'h') {
      printf("usage: tandem env [--config FILE]\n\n"
             "Prints versions, devices and the settings in force (with where\n"
             "each value comes from: default, TANDEM_*, the config file).\n");
      return 0;
    } else {
      return cli_bad_option(cmd, argv, opts, "h");
    }
  }
  if (optind < argc)
    return cli_fail(cmd, "'%s': unexpected argument", argv[optind]);
  char report[16384];
  if (tdm_options_report(NULL, report, sizeof report, NULL) != TDM_SUCCESS)
    return cli_fail(cmd, "%s", tdm_last_error());
  int major = 0, minor = 0, patch = 0, cuda = 0, nccl = 0;
  tdm_get_version(&major, &minor, &patch);
  tdm_has_feature(TDM_FEATURE_CUDA, &cuda);
  tdm_has_feature(TDM_FEATURE_NCCL, &nccl);
  printf("tandem: %d.%d.%d (CUDA %s, NCCL %s)\n", major, minor, patch,
         cuda ? "built in" : "not built", nccl ? "built in" : "not built");
  char mpi[MPI_MAX_LIBRARY_VERSION_STRING] = "";
  int len = 0;
  MPI_Get_library_version(mpi, &len);
  mpi[strcspn(mpi, "\n,")] = '\0';
  printf("MPI library: %s (MPI %d.%d)\n", mpi, MPI_VERSION, MPI_SUBVERSION);
  char line[512];
  const char *mpirun = getenv("TANDEM_MPIRUN");
  first_line_of(mpirun && *mpirun ? mpirun : "mpirun", "--version", NULL,
                line, sizeof line);
  printf("MPI runtime: %s\n", line);
  static const char *const ucx_libs[] = {"libucp.so.0", "libucp.so", NULL};
  void *ucp = open_first(ucx_libs);
  const char *(*ucx_version)(void) =
      ucp ? (const char *(*)(void))dlsym(ucp, "ucp_get_version_string") : NULL;
  printf("UCX: %s\n", ucx_version ? ucx_version() : "not found");
  first_line_of("srun", "--version", NULL, line, sizeof line);
  printf("srun: %s\n", line);
  cuda_report();
  cpu_report();
  slurm_report();
  printf("settings (key = value (origin)):\n");
  for (char *p = report, *end; *p; p = end + 1) {
    end = strchr(p, '\n');
    if (!end)
      break;
    printf("  %.*s\n", (int)(end - p), p);
  }
  return 0;
}
