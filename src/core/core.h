/* core.h - internal interface of the core layer: context, errors, options,
 * logging, half-precision conversions.  Not installed. */
#ifndef TDM_CORE_H
#define TDM_CORE_H

#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#include "tandem.h"

/* ---- errors (error.c) ---- */

/* Records the thread-local message and returns status. */
tdm_status tdmi_error(tdm_status status, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
/* Turns an MPI return code into TDM_ERR_MPI with MPI's own sentence. */
tdm_status tdmi_mpi_error(int mpi_code, const char *call);

/* Bail out of the enclosing function on a non-success status. */
#define TDMI_TRY(expr)                       \
  do {                                       \
    tdm_status tdmi_try_st_ = (expr);        \
    if (tdmi_try_st_ != TDM_SUCCESS)         \
      return tdmi_try_st_;                   \
  } while (0)

#define TDMI_CHECK_PTR(ptr, fn)                                          \
  do {                                                                   \
    if ((ptr) == NULL)                                                   \
      return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, \
                        #ptr);                                           \
  } while (0)

/* ---- resolved options (options.c) ---- */

#define TDMI_ORIGIN_LEN 200

typedef struct {
  char *config_file; /* NULL when none */
  int log_level;
  char *log_file;    /* pattern; NULL: stderr */
  int debug;
  int device;
  int device_index;  /* TDM_UNSET: local_rank % count */
  int bucket_cap_bytes;
  int first_bucket_bytes;
  int gradient_accumulation_steps;
  int progress;      /* tdm_progress_mode */
  int mixed_precision; /* tdm_precision */
  int reduce_dtype;  /* tdm_dtype: TDM_F32, TDM_BF16 or TDM_F16 */
  int cpu_threads;   /* TDM_UNSET: CPUs of this process / local ranks */
  int cpu_isa;       /* tdm_cpu_isa */
  int zero_stage;    /* 0..3 */
  int offload;       /* tdm_offload */
  int zero3_prefetch_bytes;
  int zero3_persistence_threshold; /* elements */
  int gpu_collectives; /* tdm_gpu_collectives */
  int timeout;       /* seconds; 0: none */
  int nonfinite;     /* tdm_nonfinite */
  int dump_on_signal;
  char *metrics_dir; /* NULL: no metrics files */
  int metrics_all_ranks;
  /* NULL, or one origin per setting ("default", "TANDEM_X", "config file
   * 'f' line 3", "tdm_options") and one for config_file after them,
   * filled in by tdmi_config_report. */
  char (*origin)[TDMI_ORIGIN_LEN];
} tdmi_config;

/* Merges defaults < config file < environment < api into *out. */
tdm_status tdmi_config_resolve(const tdm_options *api, tdmi_config *out);
void tdmi_config_free(tdmi_config *config);
/* Resolves as tdmi_config_resolve, then appends to buf (snprintf-style
 * at offset *len, which grows by what it needs) a line per setting:
 * "key = value   (origin)"; *out (may be NULL) receives the config. */
tdm_status tdmi_config_report(const tdm_options *api, char *buf, size_t size,
                              size_t *len, tdmi_config *out);
/* snprintf at buf + *len, counting what it needs in *len. */
void tdmi_appendf(char *buf, size_t size, size_t *len, const char *format, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- the context (context.c) ---- */

struct tdm_context {
  MPI_Comm comm;       /* private duplicate of the parent communicator */
  MPI_Comm local_comm; /* ranks sharing memory (a node)                 */
  int rank, size;
  int local_rank, local_size;
  int node_count, node_index;
  tdmi_config config;
  char host[64];
  FILE *log_fp;        /* stderr, or the expanded log_file            */
  tdm_device_kind device_kind;
  int device_index;
  int trigger;
  int main_first_open[2]; /* indexed by tdm_scope */
  void *nccl;          /* the comm layer's NCCL communicator over comm
                          (device cuda with NCCL), else NULL           */
  struct tdmi_watch *watch; /* the comm layer's watchdog (watch.c)       */
  int stop_agreed;     /* tdm_should_stop said stop                     */
  struct tdmi_metrics *metrics; /* the track layer's writers (metrics.c),
                          NULL when this rank writes none              */
};

/* Duplicates parent and reads the topology (collective over parent). */
tdm_status tdmi_context_create(MPI_Comm parent, tdm_context **ctx);
/* Frees communicators and memory (collective). */
void tdmi_context_destroy(tdm_context *ctx);

/* Registry of live handles, so that a call on a destroyed or unknown
 * handle is an error instead of a use after free. */
typedef enum {
  TDMI_HANDLE_CONTEXT,
  TDMI_HANDLE_ENGINE,
  TDMI_HANDLE_OPTIMIZER,
  TDMI_HANDLE_DATASET,
  TDMI_HANDLE_SAMPLER,
  TDMI_HANDLE_LOADER
} tdmi_handle_kind;
tdm_status tdmi_handle_register(const void *h, tdmi_handle_kind kind);
int tdmi_handle_unregister(const void *h, tdmi_handle_kind kind); /* left */
int tdmi_handle_live(const void *h, tdmi_handle_kind kind);

/* Live-context registry: the guard every public call on a context runs. */
tdm_status tdmi_context_register(tdm_context *ctx);
int tdmi_context_unregister(tdm_context *ctx); /* returns contexts left */
int tdmi_context_count(void);
tdm_status tdmi_context_check(const tdm_context *ctx, const char *fn);

#define TDMI_CHECK_CTX(ctx, fn) TDMI_TRY(tdmi_context_check((ctx), (fn)))

/* ---- paths (files.c) ---- */

/* TDM_ERR_IO "path: what: strerror(errno)". */
tdm_status tdmi_io_error(const char *what, const char *path);
/* mkdir -p path (0755); an existing folder is fine.  The error names the
 * part that could not be made. */
tdm_status tdmi_make_dirs(const char *path);

/* ---- logging (log.c) ---- */

tdm_status tdmi_log_open(tdm_context *ctx);
void tdmi_log_close(tdm_context *ctx);
void tdmi_log(const tdm_context *ctx, tdm_log_level level, const char *format,
              ...) __attribute__((format(printf, 3, 4)));
void tdmi_vlog(const tdm_context *ctx, tdm_log_level level,
               const char *format, va_list ap);

/* ---- element types (dtype.c) ---- */

size_t tdmi_dtype_size(tdm_dtype dtype); /* 0 if unknown */
const char *tdmi_dtype_name(tdm_dtype dtype);
const char *tdmi_op_name(tdm_op op);
int tdmi_dtype_is_float(tdm_dtype dtype);
/* Stores value as element i of buf (rounded to nearest even for
 * f16/bf16, truncated toward zero for integers). */
void tdmi_store(tdm_dtype dtype, void *buf, size_t i, double value);

/* ---- half precision (half.c) ---- */

float tdmi_f16_to_f32(uint16_t h);
uint16_t tdmi_f32_to_f16(float f);  /* round to nearest even */
float tdmi_bf16_to_f32(uint16_t h);
uint16_t tdmi_f32_to_bf16(float f); /* round to nearest even */
/* Vector forms used by the f16/bf16 collectives. */
void tdmi_half_to_f32(tdm_dtype dtype, const uint16_t *in, float *out,
                      size_t n);
void tdmi_f32_to_half(tdm_dtype dtype, const float *in, uint16_t *out,
                      size_t n);

/* ---- random numbers (rng.c) ---- */

/* One Philox4x32-10 block: 4 words from counter c under key k. */
void tdmi_philox4x32_10(const uint32_t c[4], const uint32_t k[2],
                        uint32_t out[4]);

#endif /* TDM_CORE_H */
