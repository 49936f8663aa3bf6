/* init.c - tdm_init / tdm_init_comm / tdm_finalize: the one place that
 * joins the layers (core context, comm agreement, device choice). */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <unistd.h>

#include "config.h"
#include "tandem_mpi.h"
#include "comm/comm.h"
#include "device/device.h"
#include "device/kernels.h"
#include "track/track.h"

/* Whether tdm_init started MPI, and so must finalize it with the last
 * context. */
static pthread_mutex_t mpi_lock = PTHREAD_MUTEX_INITIALIZER;
static int tandem_owns_mpi;

static tdm_status start_mpi(int *argc, char ***argv) {
  int initialized = 0, finalized = 0, provided = 0;
  MPI_Finalized(&finalized);
  if (finalized)
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "tdm_init: MPI was already finalized and cannot be "
                      "initialized again");
  MPI_Initialized(&initialized);
  if (initialized)
    return TDM_SUCCESS;
  int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
  if (rc != MPI_SUCCESS)
    return tdmi_mpi_error(rc, "tdm_init: MPI_Init_thread");
  tandem_owns_mpi = 1;
  return TDM_SUCCESS;
}

static tdm_status cuda_index(tdm_context *ctx, int ndevices, int *index) {
  if (ndevices == 0)
    return tdmi_error(TDM_ERR_DEVICE,
                      "rank %d: device cuda was requested but no CUDA device "
                      "is visible", ctx->rank);
  int want = ctx->config.device_index;
  *index = want == TDM_UNSET ? ctx->local_rank % ndevices : want;
  if (*index >= ndevices)
    return tdmi_error(TDM_ERR_DEVICE,
                      "rank %d: device_index %d, but only %d CUDA devices are "
                      "visible", ctx->rank, *index, ndevices);
  return TDM_SUCCESS;
}

/* CPU unless built with CUDA and a GPU is visible (or asked for). */
static tdm_status choose_device(tdm_context *ctx) {
  int ndevices = tdmi_device_count();
  tdm_device_kind kind = (tdm_device_kind)ctx->config.device;
  if (kind == TDM_DEVICE_AUTO)
    kind = ndevices > 0 ? TDM_DEVICE_CUDA : TDM_DEVICE_CPU;
  int index = 0;
#ifndef HAVE_CUDA
  if (kind == TDM_DEVICE_CUDA && !tdmi_device_fake()) /* tests: fake GPU */
    return tdmi_error(TDM_ERR_NOT_SUPPORTED,
                      "device cuda was requested, but this tandem was built "
                      "without CUDA");
#endif
  if (kind == TDM_DEVICE_CUDA)
    TDMI_TRY(cuda_index(ctx, ndevices, &index));
  TDMI_TRY(tdmi_device_activate(kind, index));
  ctx->device_kind = kind;
  ctx->device_index = index;
  return TDM_SUCCESS;
}

/* The CPUs this process may run on, shared by the ranks of the node that
 * see as many: bound ranks get their own cores, unbound ones a share. */
static int default_cpu_threads(const tdm_context *ctx) {
  cpu_set_t set;
  int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  int share = online > 0 && cpus >= online ? ctx->local_size : 1;
  int threads = cpus / (share > 0 ? share : 1);
  return threads > 0 ? threads : 1;
}

/* This rank's part of initialization; every step is local. */
static tdm_status setup(tdm_context *ctx, const tdm_options *options,
                        tdm_context **out, const char *fn) {
  if (!out)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: ctx is NULL", fn);
  TDMI_TRY(tdmi_config_resolve(options, &ctx->config));
  if (ctx->config.cpu_threads == TDM_UNSET)
    ctx->config.cpu_threads = default_cpu_threads(ctx);
  TDMI_TRY(tdmi_log_open(ctx));
  TDMI_TRY(tdmi_metrics_open(ctx));
  TDMI_TRY(choose_device(ctx));
  return tdmi_context_register(ctx);
}

static void log_start(const tdm_context *ctx) {
  int level = 0;
  MPI_Query_thread(&level);
  tdmi_log(ctx, TDM_LOG_INFO,
           "tandem %d.%d.%d: rank %d/%d, local %d/%d, node %d/%d, device %s "
           "%d, MPI thread level %d, NCCL %d, debug %d",
           TDM_VERSION_MAJOR, TDM_VERSION_MINOR, TDM_VERSION_PATCH, ctx->rank,
           ctx->size, ctx->local_rank, ctx->local_size, ctx->node_index,
           ctx->node_count, ctx->device_kind == TDM_DEVICE_CUDA ? "cuda" : "cpu",
           ctx->device_index, level, tdmi_nccl_version(), ctx->config.debug);
}

/* Seconds NCCL may take to form a communicator before it is aborted: a
 * rank that never arrives becomes an error, not a hang. */
#define NCCL_INIT_TIMEOUT_S 300.0

/* On GPUs with NCCL: the world's NCCL communicator, bootstrapped over
 * ctx's MPI communicator (every rank on its own device).  Collective. */
static tdm_status join_nccl(tdm_context *ctx) {
  /* A fake GPU (tests) has host memory: NCCL cannot run on it. */
  int want = ctx->device_kind == TDM_DEVICE_CUDA &&
             tdmi_nccl_version() > 0 && !tdmi_device_fake();
  tdmi_nccl *n = NULL;
  tdm_status st = tdmi_nccl_create_if_all(ctx->comm, want,
                                          NCCL_INIT_TIMEOUT_S, &n);
  ctx->nccl = n;
  return st;
}

/* Collective over parent: every rank succeeds, or every rank fails. */
static tdm_status init_on(MPI_Comm parent, const tdm_options *options,
                          tdm_context **out, const char *fn) {
  tdm_context *ctx;
  TDMI_TRY(tdmi_context_create(parent, &ctx));
  tdm_status st = setup(ctx, options, out, fn);
  int registered = st == TDM_SUCCESS;
  /* Every rank joins the watchdog's communicator, even one whose setup
   * failed, so that the agreement below runs under its deadline. */
  tdm_status watched = tdmi_watch_create(ctx);
  if (st == TDM_SUCCESS)
    st = watched;
  st = tdmi_agree(ctx->comm, st, fn);
  if (st == TDM_SUCCESS)
    st = join_nccl(ctx); /* every rank returns its outcome */
  if (st != TDM_SUCCESS) {
    if (registered)
      tdmi_context_unregister(ctx);
    tdmi_metrics_close(ctx);
    tdmi_watch_destroy(ctx);
    tdmi_context_destroy(ctx);
    return st;
  }
  log_start(ctx);
  *out = ctx;
  return TDM_SUCCESS;
}

/* Finalizes MPI once no context is left, if tandem started it. */
static tdm_status release_mpi(int contexts_left) {
  int rc = MPI_SUCCESS;
  pthread_mutex_lock(&mpi_lock);
  if (contexts_left == 0 && tandem_owns_mpi) {
    rc = MPI_Finalize();
    tandem_owns_mpi = 0;
  }
  pthread_mutex_unlock(&mpi_lock);
  return rc == MPI_SUCCESS ? TDM_SUCCESS
                           : tdmi_mpi_error(rc, "tdm_finalize: MPI_Finalize");
}

tdm_status tdm_init(int *argc, char ***argv, const tdm_options *options,
                    tdm_context **ctx) {
  pthread_mutex_lock(&mpi_lock);
  tdm_status st = start_mpi(argc, argv);
  pthread_mutex_unlock(&mpi_lock);
  TDMI_TRY(st);
  st = init_on(MPI_COMM_WORLD, options, ctx, "tdm_init");
  if (st != TDM_SUCCESS) {
    char reason[1024];
    snprintf(reason, sizeof reason, "%s", tdm_last_error());
    release_mpi(tdmi_context_count()); /* keep the init failure's message */
    tdmi_error(st, "%s", reason);
  }
  return st;
}

tdm_status tdm_init_comm(MPI_Comm comm, const tdm_options *options,
                         tdm_context **ctx) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized)
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "tdm_init_comm: MPI is %s; the host code owns MPI here",
                      finalized ? "already finalized" : "not initialized");
  if (comm == MPI_COMM_NULL)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "tdm_init_comm: comm is MPI_COMM_NULL");
  return init_on(comm, options, ctx, "tdm_init_comm");
}

tdm_status tdm_init_comm_f(MPI_Fint comm, const tdm_options *options,
                           tdm_context **ctx) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized)
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "tdm_init_comm_f: MPI is not initialized");
  return tdm_init_comm(MPI_Comm_f2c(comm), options, ctx);
}

tdm_status tdm_get_comm(const tdm_context *ctx, MPI_Comm *comm) {
  TDMI_CHECK_CTX(ctx, "tdm_get_comm");
  TDMI_CHECK_PTR(comm, "tdm_get_comm");
  *comm = ctx->comm;
  return TDM_SUCCESS;
}

tdm_status tdm_finalize(tdm_context *ctx) {
  TDMI_CHECK_CTX(ctx, "tdm_finalize");
  if (ctx->main_first_open[TDM_SCOPE_GLOBAL] ||
      ctx->main_first_open[TDM_SCOPE_LOCAL])
    tdmi_log(ctx, TDM_LOG_WARN, "tdm_finalize: a main-first section is open");
  /* After a timeout the communicators hold collectives that never end:
   * freeing them, or finalizing MPI, could wait forever. */
  if (tdmi_watch_broken(ctx))
    return tdmi_error(TDM_ERR_TIMEOUT, "tdm_finalize: a collective timed "
                      "out earlier; MPI cannot be finalized cleanly (call "
                      "tdm_abort)");
  tdmi_log(ctx, TDM_LOG_INFO, "tdm_finalize");
  int left = tdmi_context_unregister(ctx);
  tdmi_nccl_destroy(ctx->nccl);
  tdmi_metrics_close(ctx);
  tdmi_watch_destroy(ctx);
  tdmi_context_destroy(ctx);
  return release_mpi(left);
}

tdm_status tdm_abort(tdm_context *ctx, int exit_code) {
  TDMI_CHECK_CTX(ctx, "tdm_abort");
  tdmi_log(ctx, TDM_LOG_WARN, "tdm_abort(%d)", exit_code);
  /* The other survivors of a timeout log their diagnosis first. */
  tdmi_watch_settle(ctx);
  tdmi_metrics_close(ctx); /* what was logged reaches its files */
  if (ctx->nccl)
    tdmi_nccl_abort(ctx->nccl, "tdm_abort", 0.0);
  int rc = MPI_Abort(ctx->comm, exit_code);
  return tdmi_mpi_error(rc, "tdm_abort: MPI_Abort");
}

tdm_status tdm_options_report(const tdm_options *options, char *buf,
                              size_t size, size_t *needed) {
  if (!buf && size)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "tdm_options_report: buf is NULL with size %zu", size);
  if (buf && size)
    buf[0] = '\0';
  size_t len = 0;
  tdmi_config cfg;
  TDMI_TRY(tdmi_config_report(options, buf, size, &len, &cfg));
  /* What cpu_isa picks here: the kernels tdm_engine_create would use. */
  tdmi_kernels k;
  tdm_status st = tdmi_kernels_init(&k, (tdm_cpu_isa)cfg.cpu_isa, 1);
  tdmi_appendf(buf, size, &len, "%-28s = %-12s (%s)\n", "cpu kernels",
               st == TDM_SUCCESS ? tdmi_cpu_isa_name(k.isa) : "none",
               st == TDM_SUCCESS ? "cpu_isa on this CPU" : tdm_last_error());
  tdmi_config_free(&cfg);
  if (needed)
    *needed = len;
  return TDM_SUCCESS;
}
