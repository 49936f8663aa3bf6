/* context.c - the context: a private duplicate of the parent communicator,
 * the topology, and the registry that lets every call detect a handle that
 * was finalized or never created. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
  const void *handle;
  tdmi_handle_kind kind;
} *live;
static int nlive, live_cap;

tdm_status tdmi_handle_register(const void *h, tdmi_handle_kind kind) {
  tdm_status st = TDM_SUCCESS;
  pthread_mutex_lock(&registry_lock);
  if (nlive == live_cap) {
    int cap = live_cap ? 2 * live_cap : 8;
    void *grown = realloc(live, sizeof *live * (size_t)cap);
    if (grown)
      live = grown, live_cap = cap;
    else
      st = tdmi_error(TDM_ERR_NO_MEMORY, "out of memory registering a handle");
  }
  if (st == TDM_SUCCESS) {
    live[nlive].handle = h;
    live[nlive++].kind = kind;
  }
  pthread_mutex_unlock(&registry_lock);
  return st;
}

static int count_kind(tdmi_handle_kind kind) {
  int n = 0;
  for (int i = 0; i < nlive; i++)
    n += live[i].kind == kind;
  return n;
}

int tdmi_handle_unregister(const void *h, tdmi_handle_kind kind) {
  pthread_mutex_lock(&registry_lock);
  for (int i = 0; i < nlive; i++)
    if (live[i].handle == h && live[i].kind == kind) {
      live[i] = live[--nlive];
      break;
    }
  int left = count_kind(kind);
  pthread_mutex_unlock(&registry_lock);
  return left;
}

int tdmi_handle_live(const void *h, tdmi_handle_kind kind) {
  int found = 0;
  pthread_mutex_lock(&registry_lock);
  for (int i = 0; i < nlive && !found; i++)
    found = live[i].handle == h && live[i].kind == kind;
  pthread_mutex_unlock(&registry_lock);
  return found;
}

tdm_status tdmi_context_register(tdm_context *ctx) {
  return tdmi_handle_register(ctx, TDMI_HANDLE_CONTEXT);
}

int tdmi_context_unregister(tdm_context *ctx) {
  return tdmi_handle_unregister(ctx, TDMI_HANDLE_CONTEXT);
}

int tdmi_context_count(void) {
  pthread_mutex_lock(&registry_lock);
  int n = count_kind(TDMI_HANDLE_CONTEXT);
  pthread_mutex_unlock(&registry_lock);
  return n;
}

tdm_status tdmi_context_check(const tdm_context *ctx, const char *fn) {
  if (ctx == NULL)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: ctx is NULL", fn);
  if (!tdmi_handle_live(ctx, TDMI_HANDLE_CONTEXT))
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "%s: ctx %p is not a live context (finalized, or never "
                      "returned by tdm_init)", fn, (const void *)ctx);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized)
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "%s: MPI was finalized before this context", fn);
  return TDM_SUCCESS;
}

/* Node count and index: the local main ranks number the nodes. */
static tdm_status read_nodes(tdm_context *ctx) {
  MPI_Comm leaders;
  int rc = MPI_Comm_split(ctx->comm, ctx->local_rank == 0 ? 0 : MPI_UNDEFINED,
                          ctx->rank, &leaders);
  if (rc != MPI_SUCCESS)
    return tdmi_mpi_error(rc, "MPI_Comm_split (node leaders)");
  int node[2] = {0, 0};
  if (leaders != MPI_COMM_NULL) {
    MPI_Comm_rank(leaders, &node[0]);
    MPI_Comm_size(leaders, &node[1]);
    MPI_Comm_free(&leaders);
  }
  rc = MPI_Bcast(node, 2, MPI_INT, 0, ctx->local_comm);
  if (rc != MPI_SUCCESS)
    return tdmi_mpi_error(rc, "MPI_Bcast (node index)");
  ctx->node_index = node[0];
  ctx->node_count = node[1];
  return TDM_SUCCESS;
}

static tdm_status read_topology(tdm_context *ctx) {
  MPI_Comm_rank(ctx->comm, &ctx->rank);
  MPI_Comm_size(ctx->comm, &ctx->size);
  int rc = MPI_Comm_split_type(ctx->comm, MPI_COMM_TYPE_SHARED, ctx->rank,
                               MPI_INFO_NULL, &ctx->local_comm);
  if (rc != MPI_SUCCESS)
    return tdmi_mpi_error(rc, "MPI_Comm_split_type (shared memory)");
  MPI_Comm_set_errhandler(ctx->local_comm, MPI_ERRORS_RETURN);
  MPI_Comm_set_name(ctx->local_comm, "tandem node");
  MPI_Comm_rank(ctx->local_comm, &ctx->local_rank);
  MPI_Comm_size(ctx->local_comm, &ctx->local_size);
  return read_nodes(ctx);
}

tdm_status tdmi_context_create(MPI_Comm parent, tdm_context **out) {
  tdm_context *ctx = calloc(1, sizeof *ctx);
  if (!ctx)
    return tdmi_error(TDM_ERR_NO_MEMORY, "out of memory allocating a context");
  ctx->comm = ctx->local_comm = MPI_COMM_NULL;
  ctx->log_fp = stderr;
  int rc = MPI_Comm_dup(parent, &ctx->comm);
  if (rc != MPI_SUCCESS) {
    free(ctx);
    return tdmi_mpi_error(rc, "MPI_Comm_dup");
  }
  /* Errors come back as codes we turn into statuses, never an abort. */
  MPI_Comm_set_errhandler(ctx->comm, MPI_ERRORS_RETURN);
  MPI_Comm_set_name(ctx->comm, "tandem context");
  tdm_status st = read_topology(ctx);
  if (st != TDM_SUCCESS) {
    tdmi_context_destroy(ctx);
    return st;
  }
  if (gethostname(ctx->host, sizeof ctx->host - 1) != 0)
    strcpy(ctx->host, "unknown");
  *out = ctx;
  return TDM_SUCCESS;
}

void tdmi_context_destroy(tdm_context *ctx) {
  if (ctx->local_comm != MPI_COMM_NULL)
    MPI_Comm_free(&ctx->local_comm);
  if (ctx->comm != MPI_COMM_NULL)
    MPI_Comm_free(&ctx->comm);
  tdmi_log_close(ctx);
  tdmi_config_free(&ctx->config);
  free(ctx);
}

/* ---- topology getters ---- */

#define TOPOLOGY_GETTER(name, field)                          \
  tdm_status name(const tdm_context *ctx, int *out) {         \
    TDMI_CHECK_CTX(ctx, #name);                               \
    TDMI_CHECK_PTR(out, #name);                               \
    *out = ctx->field;                                        \
    return TDM_SUCCESS;                                       \
  }

TOPOLOGY_GETTER(tdm_get_rank, rank)
TOPOLOGY_GETTER(tdm_get_world_size, size)
TOPOLOGY_GETTER(tdm_get_local_rank, local_rank)
TOPOLOGY_GETTER(tdm_get_local_size, local_size)
TOPOLOGY_GETTER(tdm_get_node_count, node_count)
TOPOLOGY_GETTER(tdm_get_node_index, node_index)

#define PREDICATE(name, expr)                                 \
  tdm_status name(const tdm_context *ctx, int *yes) {         \
    TDMI_CHECK_CTX(ctx, #name);                               \
    TDMI_CHECK_PTR(yes, #name);                               \
    *yes = (expr);                                            \
    return TDM_SUCCESS;                                       \
  }

PREDICATE(tdm_is_main, ctx->rank == 0)
PREDICATE(tdm_is_local_main, ctx->local_rank == 0)
PREDICATE(tdm_is_last, ctx->rank == ctx->size - 1)

tdm_status tdm_get_device(const tdm_context *ctx, tdm_device_kind *kind,
                          int *index) {
  TDMI_CHECK_CTX(ctx, "tdm_get_device");
  TDMI_CHECK_PTR(kind, "tdm_get_device");
  TDMI_CHECK_PTR(index, "tdm_get_device");
  *kind = ctx->device_kind;
  *index = ctx->device_index;
  return TDM_SUCCESS;
}

tdm_status tdm_get_options(const tdm_context *ctx, tdm_options *out) {
  TDMI_CHECK_CTX(ctx, "tdm_get_options");
  TDMI_CHECK_PTR(out, "tdm_get_options");
  if (out->size < offsetof(tdm_options, config_file) ||
      out->size > sizeof(tdm_options))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "tdm_get_options: out->size = %zu is not a tdm_options "
                      "size (set it to sizeof(tdm_options))", out->size);
  const tdmi_config *c = &ctx->config;
  tdm_options full = {sizeof full,
                      c->config_file,
                      c->log_level,
                      c->log_file,
                      c->debug,
                      c->device,
                      c->device_index,
                      c->bucket_cap_bytes,
                      c->first_bucket_bytes,
                      c->gradient_accumulation_steps,
                      c->progress,
                      c->mixed_precision,
                      c->reduce_dtype,
                      c->cpu_threads,
                      c->cpu_isa,
                      c->zero_stage,
                      c->offload,
                      c->zero3_prefetch_bytes,
                      c->zero3_persistence_threshold,
                      c->gpu_collectives,
                      c->timeout,
                      c->nonfinite,
                      c->dump_on_signal,
                      c->metrics_dir,
                      c->metrics_all_ranks};
  memcpy(out, &full, out->size);
  return TDM_SUCCESS;
}
