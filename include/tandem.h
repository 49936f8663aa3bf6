/*
 * tandem.h - the whole public C API of tandem.
 *
 * Includes no MPI and no CUDA header: MPI_Comm interop lives in
 * tandem_mpi.h.  Every call returns a tdm_status, except the two that
 * return strings (tdm_status_string, tdm_last_error).  Handles are
 * opaque.  Option structs carry their own size so that a newer library
 * accepts a caller compiled against an older header.
 *
 * Thread safety (per call, in the man pages): a tdm_context may be used
 * by one thread at a time; calls on different contexts may run
 * concurrently when MPI provides MPI_THREAD_MULTIPLE.  tdm_status_string,
 * tdm_last_error, tdm_get_version, tdm_has_feature, tdm_dtype_size and the
 * tdm_rng calls on distinct generators are thread-safe.
 */
#ifndef TANDEM_H
#define TANDEM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Everything declared here is exported; the rest of libtandem is hidden. */
#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

#define TDM_VERSION_MAJOR 0
#define TDM_VERSION_MINOR 1
#define TDM_VERSION_PATCH 0
#define TDM_VERSION_CODE(major, minor, patch) \
  ((major) * 10000 + (minor) * 100 + (patch))
#define TDM_VERSION \
  TDM_VERSION_CODE(TDM_VERSION_MAJOR, TDM_VERSION_MINOR, TDM_VERSION_PATCH)

/* ---- results ---------------------------------------------------------- */

typedef enum {
  TDM_SUCCESS = 0,
  TDM_ERR_INVALID_ARGUMENT = 1, /* NULL pointer, bad count, unknown enum   */
  TDM_ERR_INVALID_USAGE = 2,    /* call out of order, handle finalized     */
  TDM_ERR_MISMATCH = 3,         /* ranks disagree (TANDEM_DEBUG, init)     */
  TDM_ERR_CONFIG = 4,           /* bad option, environment or config file  */
  TDM_ERR_MPI = 5,              /* an MPI call failed                      */
  TDM_ERR_DEVICE = 6,           /* CUDA / device failure                   */
  TDM_ERR_NO_MEMORY = 7,        /* allocation failed                       */
  TDM_ERR_IO = 8,               /* file could not be read or written       */
  TDM_ERR_NOT_SUPPORTED = 9,    /* feature not built in                    */
  TDM_ERR_REMOTE = 10,          /* another rank failed (0.1; since 0.2 a
                                   collective failure returns the failing
                                   rank's own status on every rank)        */
  TDM_ERR_INTERNAL = 11,        /* a bug in tandem                         */
  TDM_ERR_NCCL = 12,            /* an NCCL call failed or timed out; the
                                   communicator was aborted               */
  TDM_ERR_FORMAT = 13,          /* a file's contents are corrupt,
                                   truncated or inconsistent              */
  TDM_ERR_TIMEOUT = 14,         /* a collective did not finish within
                                   TANDEM_TIMEOUT (0.4): a rank stalled,
                                   died or called another collective; the
                                   job cannot go on (tdm_abort)           */
  TDM_ERR_NONFINITE = 15,       /* a gradient is inf or NaN and
                                   TANDEM_NONFINITE=error (0.4)           */
  TDM_NUM_STATUSES
} tdm_status;

/* Name of a status ("TDM_ERR_CONFIG: bad option, environment or config
 * file"); never NULL. */
const char *tdm_status_string(tdm_status status);

/* The sentence describing the last error raised on the calling thread
 * (which argument, which rank, which file).  Not cleared by successful
 * calls; "" if no error happened yet.  Valid until the next tandem call on
 * this thread. */
const char *tdm_last_error(void);

/* Runtime version, to compare with the TDM_VERSION_* macros. */
tdm_status tdm_get_version(int *major, int *minor, int *patch);

typedef enum {
  TDM_FEATURE_CUDA = 0,  /* built with the CUDA device layer             */
  TDM_FEATURE_NCCL = 1,  /* built with NCCL                               */
  TDM_NUM_FEATURES
} tdm_feature;

tdm_status tdm_has_feature(tdm_feature feature, int *available);

/* ---- element types and reductions ------------------------------------- */

typedef enum {
  TDM_F32 = 0,
  TDM_F64 = 1,
  TDM_F16 = 2,  /* IEEE binary16 */
  TDM_BF16 = 3, /* bfloat16 */
  TDM_I32 = 4,
  TDM_I64 = 5,
  TDM_U8 = 6,
  TDM_NUM_DTYPES
} tdm_dtype;

/* Bytes per element of dtype. */
tdm_status tdm_dtype_size(tdm_dtype dtype, size_t *bytes);

/* out[i] = in[i] converted from dtype from to dtype to, for i < count:
 * TDM_F32 to or from TDM_BF16 or TDM_F16 (round to nearest even, bit for
 * bit as PyTorch's CPU conversion), or a copy when from == to.  Both run
 * the vectorized kernels of the CPU; in and out must not overlap.
 * Thread-safe. */
tdm_status tdm_convert(tdm_dtype from, const void *in, tdm_dtype to,
                       void *out, size_t count);

typedef enum {
  TDM_SUM = 0,
  TDM_MEAN = 1, /* sum divided by the number of ranks; floating types only */
  TDM_MAX = 2,
  TDM_MIN = 3,
  TDM_NUM_OPS
} tdm_op;

/* ---- options ------------------------------------------------------------ */

typedef enum {
  TDM_LOG_OFF = 0,
  TDM_LOG_WARN = 1,
  TDM_LOG_INFO = 2,
  TDM_LOG_DEBUG = 3,
  TDM_LOG_TRACE = 4
} tdm_log_level;

typedef enum {
  TDM_DEVICE_AUTO = 0, /* CUDA if built with it and a GPU is visible */
  TDM_DEVICE_CPU = 1,
  TDM_DEVICE_CUDA = 2
} tdm_device_kind;

/* How the engine's non-blocking gradient reductions make progress.  On a
 * GPU the engine always polls: NCCL runs on its own stream, and staged
 * copies are issued from the calls that launch them. */
typedef enum {
  TDM_PROGRESS_AUTO = 0,  /* thread when MPI provides MPI_THREAD_MULTIPLE,
                             else poll                                     */
  TDM_PROGRESS_POLL = 1,  /* tandem's own calls test the requests: works at
                             any MPI thread level                          */
  TDM_PROGRESS_THREAD = 2 /* a communication thread per engine; needs
                             MPI_THREAD_MULTIPLE                           */
} tdm_progress_mode;

/* Compute copies of f32 parameters (tdm_param_buffers' data); the f32
 * values stay as master weights, updated by the optimizer. */
typedef enum {
  TDM_PRECISION_NO = 0,   /* compute on the f32 values themselves          */
  TDM_PRECISION_BF16 = 1, /* bfloat16 compute copies                       */
  TDM_PRECISION_FP16 = 2  /* binary16 compute copies and a dynamic loss
                             scale (tdm_loss_scale carries it)             */
} tdm_precision;

/* Instruction set of the CPU kernels (optimizer steps, conversions). */
typedef enum {
  TDM_CPU_ISA_AUTO = 0,
  TDM_CPU_ISA_GENERIC = 1, /* portable C                                   */
  TDM_CPU_ISA_AVX2 = 2,    /* AVX2 + F16C                                  */
  TDM_CPU_ISA_AVX512 = 3   /* AVX-512 F/BW/VL                              */
} tdm_cpu_isa;

/* Where the f32 master weights, optimizer state (and, under ZeRO-3, the
 * parameter shards) live.  On a CPU build everything is host memory
 * already; on GPU builds this moves them to (pinned) host memory and runs
 * the optimizer step on the CPU. */
typedef enum {
  TDM_OFFLOAD_NONE = 0,
  TDM_OFFLOAD_OPTIMIZER = 1, /* master shard and optimizer state; ZeRO >= 1 */
  TDM_OFFLOAD_PARAMS = 2     /* that, plus the parameter shards; ZeRO-3    */
} tdm_offload;

/* How the engine reduces gradients that live on a GPU. */
typedef enum {
  TDM_GPU_COLLECTIVES_AUTO = 0,   /* nccl where every rank has it, else mpi
                                     when MPI is CUDA-aware, else staged  */
  TDM_GPU_COLLECTIVES_NCCL = 1,   /* NCCL on a communication stream        */
  TDM_GPU_COLLECTIVES_MPI = 2,    /* MPI on device pointers (CUDA-aware)   */
  TDM_GPU_COLLECTIVES_STAGED = 3  /* copies through pinned host memory and
                                     MPI on the host                       */
} tdm_gpu_collectives;

/* What tdm_step does when a gradient is inf or NaN (0.4).  fp16 runs
 * always skip such a step through their loss scaler. */
typedef enum {
  TDM_NONFINITE_OFF = 0,   /* nothing is checked (no extra pass)           */
  TDM_NONFINITE_WARN = 1,  /* logs the first such parameter, steps anyway  */
  TDM_NONFINITE_SKIP = 2,  /* logs it and skips the step, as fp16 does     */
  TDM_NONFINITE_ERROR = 3  /* TDM_ERR_NONFINITE naming the parameter; the
                              step is not taken                           */
} tdm_nonfinite;

/* Marks an option field the caller leaves to environment / file / default. */
#define TDM_UNSET (-1)

/*
 * Options given to tdm_init.  Precedence per field: this struct (a field
 * that is not TDM_UNSET / NULL) > environment TANDEM_* > config file >
 * default.  Always start from TDM_OPTIONS_INIT (or tdm_options_init): it
 * records sizeof(tdm_options) as the caller compiled it, so fields added
 * later are read as unset.
 */
typedef struct tdm_options {
  size_t size;             /* sizeof(tdm_options) in the caller          */
  const char *config_file; /* YAML file; env TANDEM_CONFIG               */
  int log_level;           /* tdm_log_level; env TANDEM_LOG; default warn */
  const char *log_file;    /* pattern with %r %h %p; env TANDEM_LOG_FILE;
                              default stderr                              */
  int debug;               /* 1: check every collective's signature across
                              ranks; env TANDEM_DEBUG; default 0          */
  int device;              /* tdm_device_kind; env TANDEM_DEVICE          */
  int device_index;        /* env TANDEM_DEVICE_INDEX; default
                              local_rank % device count                   */
  /* Data-parallel engine (tdm_engine_create reads these). */
  int bucket_cap_bytes;    /* gradient bucket cap in bytes; env
                              TANDEM_BUCKET_CAP_BYTES; default 25 MiB     */
  int first_bucket_bytes;  /* cap of bucket 0, the first to fill; env
                              TANDEM_FIRST_BUCKET_BYTES; default 1 MiB    */
  int gradient_accumulation_steps; /* micro-steps per optimizer step; env
                              TANDEM_GRADIENT_ACCUMULATION_STEPS; default 1 */
  int progress;            /* tdm_progress_mode; env TANDEM_PROGRESS
                              (auto, poll, thread); default auto          */
  /* Mixed precision and CPU kernels. */
  int mixed_precision;     /* tdm_precision; env TANDEM_MIXED_PRECISION
                              (no, bf16, fp16); default no               */
  int reduce_dtype;        /* tdm_dtype in which the gradients of f32
                              parameters are summed: TDM_F32, TDM_BF16 or
                              TDM_F16 (under mixed precision also kept in
                              it; without, f32 gradients converted for
                              the wire by tandem); env
                              TANDEM_REDUCE_DTYPE (f32, bf16, f16);
                              default f32                               */
  int cpu_threads;         /* OpenMP threads of the CPU kernels; env
                              TANDEM_CPU_THREADS; default: the CPUs this
                              process may run on / ranks on the node      */
  int cpu_isa;             /* tdm_cpu_isa; env TANDEM_CPU_ISA (auto,
                              generic, avx2, avx512); default auto: the
                              widest the CPU supports                     */
  /* Sharding (ZeRO) and offload (tdm_engine_create reads these). */
  int zero_stage;          /* 0 (DDP), 1 (optimizer state sharded), 2 (and
                              gradients), 3 (and parameters); env
                              TANDEM_ZERO_STAGE; default 0               */
  int offload;             /* tdm_offload; env TANDEM_OFFLOAD (none,
                              optimizer, params); default none           */
  int zero3_prefetch_bytes; /* ZeRO-3: bytes of the modules gathered ahead
                              of the one fetched; env
                              TANDEM_ZERO3_PREFETCH_BYTES; default 50 MiB */
  int zero3_persistence_threshold; /* ZeRO-3: a module with fewer
                              elements stays gathered; env
                              TANDEM_ZERO3_PERSISTENCE_THRESHOLD; default
                              100000 (DeepSpeed's)                        */
  int gpu_collectives;     /* tdm_gpu_collectives; env
                              TANDEM_GPU_COLLECTIVES (auto, nccl, mpi,
                              staged); default auto                       */
  /* Resilience (0.4). */
  int timeout;             /* seconds any collective may wait before it
                              fails with TDM_ERR_TIMEOUT, naming the
                              ranks it waits for; 0: wait forever; env
                              TANDEM_TIMEOUT; default 600                 */
  int nonfinite;           /* tdm_nonfinite: what tdm_step does with inf
                              or NaN gradients outside fp16 (whose loss
                              scaler skips the step); env
                              TANDEM_NONFINITE (off, warn, skip, error);
                              default off                                 */
  int dump_on_signal;      /* 1: SIGUSR2 dumps each rank's last
                              collectives (the flight recorder) to its
                              log; env TANDEM_DUMP_ON_SIGNAL; default 0   */
  /* Metrics (0.6). */
  const char *metrics_dir; /* folder for metrics.jsonl and a TensorBoard
                              event file, written by tdm_log_scalar and
                              by tdm_step (the engine's own metrics,
                              named tandem/...); env TANDEM_METRICS_DIR;
                              default none: nothing is written           */
  int metrics_all_ranks;   /* 1: every rank writes its own files (rank N
                              adds .rankN); env TANDEM_METRICS_ALL_RANKS;
                              default 0: the main rank only              */
} tdm_options;

#define TDM_OPTIONS_INIT                                                 \
  { sizeof(tdm_options), NULL, TDM_UNSET, NULL, TDM_UNSET, TDM_UNSET,    \
    TDM_UNSET, TDM_UNSET, TDM_UNSET, TDM_UNSET, TDM_UNSET, TDM_UNSET,    \
    TDM_UNSET, TDM_UNSET, TDM_UNSET, TDM_UNSET, TDM_UNSET, TDM_UNSET,    \
    TDM_UNSET, TDM_UNSET, TDM_UNSET, TDM_UNSET, TDM_UNSET, NULL,         \
    TDM_UNSET }

tdm_status tdm_options_init(tdm_options *options);

/* The settings tdm_init would use with these options (may be NULL), one
 * line each with where its value came from -- "key = value (origin)",
 * the origin being default, TANDEM_X, config file 'f' line N or
 * tdm_options -- then the CPU kernels cpu_isa picks on this CPU.
 * Reads the environment and the config file; needs no MPI.  Writes buf
 * NUL-terminated, truncating like snprintf; *needed (may be NULL) is the
 * length without the NUL.  An invalid setting fails as tdm_init would
 * (0.5). */
tdm_status tdm_options_report(const tdm_options *options, char *buf,
                              size_t size, size_t *needed);

/* ---- context ------------------------------------------------------------ */

typedef struct tdm_context tdm_context;

/* Collective over MPI_COMM_WORLD.  Initializes MPI (highest thread level
 * available) if the host has not; tdm_finalize then finalizes it when the
 * last context goes.  argc/argv may be NULL.  options may be NULL. */
tdm_status tdm_init(int *argc, char ***argv, const tdm_options *options,
                    tdm_context **ctx);

/* Collective.  Frees the context; calls on it afterwards return
 * TDM_ERR_INVALID_USAGE. */
tdm_status tdm_finalize(tdm_context *ctx);

/* The resolved options (after environment, file and defaults).  Strings
 * stay owned by ctx.  out->size must be set by the caller. */
tdm_status tdm_get_options(const tdm_context *ctx, tdm_options *out);

/* Aborts every rank of the context's communicator (MPI_Abort).  The only
 * call that terminates the process. */
tdm_status tdm_abort(tdm_context *ctx, int exit_code);

/* ---- topology ------------------------------------------------------------ */

tdm_status tdm_get_rank(const tdm_context *ctx, int *rank);
tdm_status tdm_get_world_size(const tdm_context *ctx, int *size);
tdm_status tdm_get_local_rank(const tdm_context *ctx, int *local_rank);
tdm_status tdm_get_local_size(const tdm_context *ctx, int *local_size);
tdm_status tdm_get_node_count(const tdm_context *ctx, int *node_count);
tdm_status tdm_get_node_index(const tdm_context *ctx, int *node_index);
tdm_status tdm_get_device(const tdm_context *ctx, tdm_device_kind *kind,
                          int *index);

/* ---- process utilities ---------------------------------------------------- */

tdm_status tdm_is_main(const tdm_context *ctx, int *yes);       /* rank 0     */
tdm_status tdm_is_local_main(const tdm_context *ctx, int *yes); /* local 0    */
tdm_status tdm_is_last(const tdm_context *ctx, int *yes);       /* rank n - 1 */

tdm_status tdm_barrier(tdm_context *ctx);

typedef enum {
  TDM_SCOPE_GLOBAL = 0, /* the main rank of the context               */
  TDM_SCOPE_LOCAL = 1   /* the local main rank of each node            */
} tdm_scope;

/* Collective.  The main rank (of the scope) runs the section first; the
 * others enter it after the main rank called tdm_main_first_end. */
tdm_status tdm_main_first_begin(tdm_context *ctx, tdm_scope scope);
tdm_status tdm_main_first_end(tdm_context *ctx, tdm_scope scope);

/* printf on the main rank only, to stdout, flushed. */
tdm_status tdm_print(const tdm_context *ctx, const char *format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Rank-prefixed log line at level (shown when level <= TANDEM_LOG). */
tdm_status tdm_log(const tdm_context *ctx, tdm_log_level level,
                   const char *format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Any rank sets the trigger; tdm_check_trigger (collective) reports it on
 * every rank and clears it. */
tdm_status tdm_set_trigger(tdm_context *ctx);
tdm_status tdm_check_trigger(tdm_context *ctx, int *triggered);

/* Collective, at a step boundary (0.4): *stop is 1 on every rank once any
 * rank received SIGUSR1 or SIGTERM -- what Slurm sends before it preempts
 * a job (#SBATCH --signal=USR1@120, scancel --signal) -- so that all
 * ranks save a checkpoint at the same step and exit, with
 * TDM_EXIT_REQUEUE where the job should run again.  The first call
 * installs the handlers, only for signals whose action is still the
 * default; repeated signals are ignored (Slurm often delivers one
 * twice).  Cost: one 8-byte
 * allreduce. */
tdm_status tdm_should_stop(tdm_context *ctx, int *stop);

/* The exit status of a trainer that stopped early on a signal after
 * saving its checkpoint: sysexits.h's EX_TEMPFAIL, "try again later".
 * examples/slurm/train.sbatch requeues the job on it. */
#define TDM_EXIT_REQUEUE 75

/* ---- random numbers ------------------------------------------------------- */

typedef struct tdm_rng tdm_rng;

typedef enum {
  TDM_RNG_SHARED = 0,  /* the same stream on every rank   */
  TDM_RNG_PER_RANK = 1 /* an independent stream per rank  */
} tdm_rng_kind;

/* Philox4x32-10, counter-based: the stream is a pure function of seed,
 * stream id (0 for shared, the rank for per-rank) and position. */
tdm_status tdm_rng_create(const tdm_context *ctx, uint64_t seed,
                          tdm_rng_kind kind, tdm_rng **rng);
tdm_status tdm_rng_destroy(tdm_rng *rng);
tdm_status tdm_rng_u32(tdm_rng *rng, uint32_t *out, size_t n);
/* Uniform in [0, 1), 24 random bits each. */
tdm_status tdm_rng_uniform_f32(tdm_rng *rng, float *out, size_t n);
/* Normal(mean, stddev) by Box-Muller. */
tdm_status tdm_rng_normal_f32(tdm_rng *rng, float *out, size_t n, float mean,
                              float stddev);
/* Position in the stream, in 32-bit words drawn; set it to resume. */
tdm_status tdm_rng_get_offset(const tdm_rng *rng, uint64_t *offset);
tdm_status tdm_rng_set_offset(tdm_rng *rng, uint64_t offset);

/* ---- host collectives ----------------------------------------------------- */
/*
 * Blocking collectives on host buffers over the context's communicator.
 * count is in elements and must be > 0 and agree on all ranks (except the
 * uneven calls at the end).  f16/bf16 reductions accumulate in f32.
 * Buffers must not overlap, except send == recv in tdm_allreduce (in
 * place).  With TANDEM_DEBUG=1 the ranks first compare operation, dtype,
 * count and root and fail together with TDM_ERR_MISMATCH on disagreement.
 */
tdm_status tdm_allreduce(tdm_context *ctx, const void *send, void *recv,
                         size_t count, tdm_dtype dtype, tdm_op op);
tdm_status tdm_broadcast(tdm_context *ctx, void *buf, size_t count,
                         tdm_dtype dtype, int root);
/* recv holds count * world_size elements, in rank order. */
tdm_status tdm_allgather(tdm_context *ctx, const void *send, void *recv,
                         size_t count, tdm_dtype dtype);
/* recv (count * world_size elements) is used on root only; may be NULL
 * elsewhere. */
tdm_status tdm_gather(tdm_context *ctx, const void *send, void *recv,
                      size_t count, tdm_dtype dtype, int root);
/* send holds recv_count * world_size elements; rank r receives the
 * reduction of chunk r. */
tdm_status tdm_reduce_scatter(tdm_context *ctx, const void *send, void *recv,
                              size_t recv_count, tdm_dtype dtype, tdm_op op);

/*
 * Uneven data.  These three take a count that may differ across ranks
 * (0 allowed).  recv_capacity is the size of recv in elements; with
 * recv == NULL they only compute *out_count (still collective).
 */

/* Pads every rank's count elements with pad_value to the largest count on
 * any rank (at the end, or at the front with pad_first). */
tdm_status tdm_pad_across_processes(tdm_context *ctx, const void *send,
                                    size_t count, tdm_dtype dtype,
                                    double pad_value, int pad_first,
                                    void *recv, size_t recv_capacity,
                                    size_t *out_count);

/* Gathers on every rank the first valid_count of each rank's count
 * elements, in rank order: the padding duplicates that made an uneven
 * last batch even are dropped.  The inverse of
 * tdm_split_between_processes with padding. */
tdm_status tdm_gather_for_metrics(tdm_context *ctx, const void *send,
                                  size_t count, size_t valid_count,
                                  tdm_dtype dtype, void *recv,
                                  size_t recv_capacity, size_t *out_count);

/* Contiguous slice [*begin, *begin + *count) of total items for this rank;
 * the first total % world_size ranks get one more.  With pad set,
 * *pad_count is how many copies of the slice's last item (of item
 * total - 1 when the slice is empty) this rank appends so that every rank
 * has ceil(total / world_size) items; else 0.  Local, no communication. */
tdm_status tdm_split_between_processes(const tdm_context *ctx, size_t total,
                                       int pad, size_t *begin, size_t *count,
                                       size_t *pad_count);


/* ---- data-parallel engine -------------------------------------------------- */
/*
 * The engine owns the parameters and their gradients.  Register modules
 * and parameters, call tdm_prepare, then train:
 *
 *   for each micro-step:
 *     tdm_backward_begin(e)
 *     forward; backward seeded with tdm_loss_scale(), adding (+=) into the
 *       gradients and calling tdm_grad_ready / tdm_module_grads_ready as
 *       each is complete
 *     tdm_backward_end(e)             collective: waits for the buckets
 *     tdm_step(opt, &stepped)         optimizer step at the boundary only
 *
 * Gradients are averaged over ranks and micro-steps: the reduction is a
 * plain sum, and the optimizer's pass divides by world size times the
 * cycle's micro-steps as it reads them (under fp16 the seed,
 * tdm_loss_scale(), carries that factor instead).  Buckets are
 * views into one flat gradient buffer per dtype, filled in reverse
 * registration order (bucket 0 is the last module's), capped by
 * tdm_options.first_bucket_bytes and bucket_cap_bytes, frozen at
 * tdm_prepare and launched strictly in index order.
 *
 * An engine is used by one thread at a time (its communication thread is
 * internal).  Calls marked collective must be made on every rank of the
 * context, in the same order.
 */

typedef struct tdm_engine tdm_engine;

/* Collective.  Duplicates the context's communicator for gradient traffic
 * and reads the engine options of ctx. */
tdm_status tdm_engine_create(tdm_context *ctx, tdm_engine **engine);
/* Collective.  Waits for reductions in flight, stops the communication
 * thread and frees parameters, gradients and buckets. */
tdm_status tdm_engine_destroy(tdm_engine *engine);

/* A module groups parameters (a layer); names are unique.  Before
 * tdm_prepare only. */
tdm_status tdm_add_module(tdm_engine *engine, const char *name, int *module);

/* Parameter may get no gradient in some steps; it then counts as zero. */
#define TDM_PARAM_MAYBE_UNUSED 1

/*
 * Registers parameter name (unique) of module, dtype TDM_F32 or TDM_F64,
 * shape[0..ndim) (ndim 0..8, every extent > 0).  initial holds the
 * element count of values, copied now (NULL: zeros); only rank 0's values
 * matter, tdm_prepare broadcasts them.  flags: 0 or TDM_PARAM_MAYBE_UNUSED.
 * *param is the index, counting from 0 in registration order.  Under
 * mixed precision an f32 parameter's data is a bf16/f16 compute copy of
 * f32 master values, and its gradient has the reduce dtype
 * (tdm_get_param_dtypes tells both).
 */
tdm_status tdm_add_param(tdm_engine *engine, int module, const char *name,
                         tdm_dtype dtype, int ndim, const int64_t *shape,
                         const void *initial, int flags, int *param);

/* A parameter the program keeps pointers to: data and grad are the
 * addresses of its two pointer variables (float ** for an f32 one; grad
 * may be NULL).  Registers count elements of dtype, their initial values
 * read from *data now, in module, which is created on first use when it
 * is the next index (named by its index); the parameter is named
 * "<module's name>.<name>", as torch.nn.Sequential names them ("0.weight").
 * tdm_prepare then points *data and *grad at the engine's buffers, which
 * never move (see tdm_param_buffers); tdm_engine_destroy points them
 * back at the program's own arrays, the values one now holding the
 * trained values.  The variables must live as long as the engine.  The data must be what the model computes with: under
 * TANDEM_MIXED_PRECISION bf16/fp16 an f32 parameter's is not f32, and
 * tdm_prepare refuses. */
tdm_status tdm_bind_param(tdm_engine *engine, int module, const char *name,
                          tdm_dtype dtype, int64_t count, void *data,
                          void *grad);

/* Collective.  Checks that every rank registered the same modules and
 * parameters (else fails everywhere naming the first difference), lays out
 * the storage and the buckets, and broadcasts rank 0's initial values. */
tdm_status tdm_prepare(tdm_engine *engine);

/* After tdm_prepare: the parameter's values and gradient (either pointer
 * may be NULL).  The addresses never change until tdm_engine_destroy, at
 * every ZeRO stage (on a real GPU, for now, only at stages 0 and 1).
 * ZeRO-2 and 3 (see tdm_fetch_module): the gradient holds memory only
 * inside a micro-step, until its bucket is reduced; ZeRO-3: the values
 * only while the module is fetched (always for a persistent module). */
tdm_status tdm_param_buffers(tdm_engine *engine, int param, void **data,
                             void **grad);
tdm_status tdm_find_param(const tdm_engine *engine, const char *name,
                          int *param);
/* The dtypes of the parameter's data (the compute copy under mixed
 * precision) and of its gradient (the reduce dtype for f32 parameters).
 * Either out may be NULL. */
tdm_status tdm_get_param_dtypes(const tdm_engine *engine, int param,
                                tdm_dtype *data_dtype, tdm_dtype *grad_dtype);

/* Starts a micro-step.  Gradients keep their accumulated values. */
tdm_status tdm_backward_begin(tdm_engine *engine);
/* The factor to seed backward with: 1, or under TDM_PRECISION_FP16 the
 * loss scale divided by world size times accumulation steps. */
tdm_status tdm_loss_scale(const tdm_engine *engine, double *scale);
/* The parameter's gradient for this micro-step is complete.  Marking it
 * twice in one micro-step is TDM_ERR_INVALID_USAGE. */
tdm_status tdm_grad_ready(tdm_engine *engine, int param);
/* Every parameter of module is complete. */
tdm_status tdm_module_grads_ready(tdm_engine *engine, int module);
/* Lets reductions in flight advance; call it from long computations in
 * poll mode.  A no-op in thread mode. */
tdm_status tdm_progress(tdm_engine *engine);
/* Collective.  Ends the micro-step: parameters not marked are an error
 * naming them unless registered TDM_PARAM_MAYBE_UNUSED; on a sync
 * micro-step waits until every bucket is reduced.  Every rank returns
 * the same success or failure.  When the micro-step that ends a cycle
 * fails, the cycle is dropped: its gradients are zeroed and tdm_step does
 * not update. */
tdm_status tdm_backward_end(tdm_engine *engine);

/* Whether the micro-step in progress (or the next one, between
 * micro-steps) ends the accumulation cycle, so that tdm_step updates after
 * it: the last of each cycle, or one forced by tdm_sync_now.  Stages 0 and
 * 1 synchronize gradients only then; stages 2 and 3 reduce-scatter in
 * every micro-step. */
tdm_status tdm_is_sync_step(const tdm_engine *engine, int *yes);
/* Makes the next micro-step the end of the accumulation cycle (for
 * example the last batch of an epoch).  Between micro-steps only. */
tdm_status tdm_sync_now(tdm_engine *engine);

typedef enum {
  TDM_BUCKET_IDLE = 0,
  TDM_BUCKET_FILLING = 1,   /* some of its gradients are ready            */
  TDM_BUCKET_READY = 2,     /* all ready; waits for lower buckets to launch */
  TDM_BUCKET_IN_FLIGHT = 3, /* reduction started                          */
  TDM_BUCKET_REDUCED = 4    /* reduced on this rank                       */
} tdm_bucket_state;

tdm_status tdm_get_bucket_count(const tdm_engine *engine, int *count);
/* State, size in bytes and number of parameters of bucket; any out may be
 * NULL. */
tdm_status tdm_get_bucket(tdm_engine *engine, int bucket,
                          tdm_bucket_state *state, size_t *bytes,
                          int *param_count);
tdm_status tdm_get_param_bucket(const tdm_engine *engine, int param,
                                int *bucket);
/* The micro-steps of an accumulation cycle (gradient_accumulation_steps). */
tdm_status tdm_get_gradient_accumulation_steps(const tdm_engine *engine,
                                               int *steps);
/* The progress mode in use (TDM_PROGRESS_POLL or TDM_PROGRESS_THREAD). */
tdm_status tdm_get_progress_mode(const tdm_engine *engine,
                                 tdm_progress_mode *mode);

/* ---- sharding (ZeRO) ---------------------------------------------------- */
/*
 * tdm_options.zero_stage picks the strategy; the training loop is the
 * same for every stage when it fetches each module before using it:
 *
 *   forward, for each module m in order:
 *     tdm_fetch_module(e, m); tdm_param_buffers(...); compute;
 *     tdm_release_module(e, m)
 *   backward, for each module m in reverse order:
 *     tdm_fetch_module(e, m); tdm_param_buffers(..., &data, &grad);
 *     add into grad; tdm_module_grads_ready(e, m); tdm_release_module(e, m)
 *
 * Stage 0 keeps a full replica and allreduces gradients.  Stage 1 keeps
 * full parameters and gradients, reduce-scatters the gradients at the end
 * of the accumulation cycle and steps only this rank's shard of the
 * master weights and optimizer state, then all-gathers the parameters.
 * Stage 2 also shards the gradients: every micro-step's gradients are
 * reduce-scattered bucket by bucket and added into this rank's shard, so
 * a gradient holds memory only in a micro-step, until its bucket is
 * reduced, and starts at zero.  Stage 3 also
 * shards the parameters: each module is one bucket, gathered by
 * tdm_fetch_module (the modules that follow it by index, in the direction
 * of the last fetches: ascending in forward, descending in backward, are
 * gathered ahead up to zero3_prefetch_bytes) and freed by
 * tdm_release_module; its data holds the values in between.  Modules with
 * fewer than zero3_persistence_threshold elements stay gathered.  Each
 * bucket is cut into world-size equal chunks (padded), so every gradient
 * collective is a real reduce-scatter.
 */

/* Collective over the engine's ranks, in the same order on all.  Makes the
 * module's parameters present (ZeRO-3: gathers them, waiting for a
 * prefetch in flight, and starts the prefetch of the next modules); a
 * no-op for stages 0-2. */
tdm_status tdm_fetch_module(tdm_engine *engine, int module);
/* The module's gathered parameters may be freed (ZeRO-3); a no-op for
 * stages 0-2 and for persistent modules. */
tdm_status tdm_release_module(tdm_engine *engine, int module);
/* Collective.  Copies the full master values of param (its registered
 * dtype: f32 master weights under mixed precision) into out, on every
 * rank, whatever the stage.  Between micro-steps. */
tdm_status tdm_gather_param(tdm_engine *engine, int param, void *out);

/* ---- memory accounting -------------------------------------------------- */

typedef enum {
  TDM_MEM_PARAMS = 0,          /* values the model computes with: compute
                                  copies under mixed precision; ZeRO-3:
                                  shards plus gathered modules            */
  TDM_MEM_GRADS = 1,           /* gradients kept across micro-steps (full,
                                  or this rank's shard)                   */
  TDM_MEM_OPTIMIZER_STATE = 2, /* momentum, moments                       */
  TDM_MEM_MASTER_WEIGHTS = 3,  /* f32 masters of 16-bit compute copies     */
  TDM_MEM_COMM_BUFFERS = 4,    /* per-micro-step bucket gradients of ZeRO-2
                                  and 3 and other collective scratch      */
  TDM_MEM_NUM_CATEGORIES = 5
} tdm_memory_category;

typedef enum {
  TDM_MEM_HOST = 0,
  TDM_MEM_DEVICE = 1,
  TDM_MEM_NUM_LOCATIONS = 2
} tdm_memory_location;

typedef struct tdm_memory_info {
  size_t size; /* sizeof(tdm_memory_info) in the caller */
  /* Bytes this rank holds now and at most since tdm_prepare (or the last
   * tdm_reset_peak_memory), padding included. */
  uint64_t current[TDM_MEM_NUM_CATEGORIES][TDM_MEM_NUM_LOCATIONS];
  uint64_t peak[TDM_MEM_NUM_CATEGORIES][TDM_MEM_NUM_LOCATIONS];
  uint64_t peak_total;  /* of the sum over categories and locations   */
  /* ZeRO-3: bytes of gathered modules that are not persistent (part of
   * TDM_MEM_PARAMS), now and at most. */
  uint64_t gathered_params;
  uint64_t peak_gathered_params;
} tdm_memory_info;

/* The engine's and its optimizer's memory on this rank.  info->size must
 * be set by the caller. */
tdm_status tdm_get_memory_info(const tdm_engine *engine,
                               tdm_memory_info *info);
/* Restarts the peaks from the current values. */
tdm_status tdm_reset_peak_memory(tdm_engine *engine);
/* A printable table of tdm_get_memory_info (one line per category, with
 * current and peak per location) into buf, NUL-terminated; *needed (may
 * be NULL) is the length it needs without the NUL.  Truncates like
 * snprintf. */
tdm_status tdm_memory_report(const tdm_engine *engine, char *buf,
                             size_t size, size_t *needed);
/* Bytes this rank has sent in the engine's collectives since tdm_prepare,
 * counted as a ring algorithm sends them: an allreduce of S bytes over N
 * ranks 2 S (N-1)/N, a reduce-scatter or an all-gather S (N-1)/N. */
tdm_status tdm_get_comm_volume(const tdm_engine *engine, uint64_t *bytes);

/* ---- optimizer -------------------------------------------------------------- */
/*
 * Update rules of torch.optim, on the parameters of an engine (a full
 * replica, or this rank's shard).  The state (momentum, moments) is f32
 * for f32 parameters, also under mixed precision, where the update runs on
 * the f32 master values and refreshes the compute copies in the same
 * pass.  At each accumulation boundary:
 *
 *   tdm_backward_end(e)
 *   tdm_clip_grad_norm(opt, 1.0, &norm)    optional
 *   tdm_step(opt, &stepped)                update, schedule, zero gradients
 *
 * An optimizer is used by one thread at a time, the thread of its engine.
 */

typedef enum {
  TDM_OPTIMIZER_SGD = 0,   /* torch.optim.SGD                              */
  TDM_OPTIMIZER_ADAM = 1,  /* torch.optim.Adam (weight decay added to the
                              gradient)                                    */
  TDM_OPTIMIZER_ADAMW = 2, /* torch.optim.AdamW (decoupled weight decay)   */
  TDM_OPTIMIZER_LION = 3,  /* Lion (Chen et al. 2023; lion-pytorch)        */
  TDM_OPTIMIZER_CUSTOM = 4 /* the program's own update function
                              (tdm_optimizer_create_custom)               */
} tdm_optimizer_kind;

/* Start from TDM_OPTIMIZER_OPTIONS_INIT (SGD, lr 1e-3, no momentum; the
 * kind's own weight decay, betas and eps, as torch has them).  A negative
 * weight_decay, beta1, beta2, eps or loss-scaler field means the default
 * named beside it. */
typedef struct tdm_optimizer_options {
  size_t size;         /* sizeof(tdm_optimizer_options) in the caller */
  tdm_optimizer_kind kind;
  double lr;
  double momentum;     /* SGD                                          */
  double dampening;    /* SGD                                          */
  int nesterov;        /* SGD; needs momentum > 0 and dampening 0      */
  double weight_decay; /* SGD, Adam: L2 added to the gradient; AdamW,
                          Lion: decoupled, p *= 1 - lr * weight_decay.
                          AdamW 0.01; SGD, Adam, Lion 0                */
  double beta1;        /* Adam, AdamW 0.9; Lion 0.9                    */
  double beta2;        /* Adam, AdamW 0.999; Lion 0.99                 */
  double eps;          /* Adam, AdamW 1e-8                             */
  /* Dynamic loss scale of TDM_PRECISION_FP16 (torch.amp.GradScaler). */
  double init_scale;      /* 65536                                     */
  double growth_factor;   /* 2                                         */
  double backoff_factor;  /* 0.5                                       */
  int growth_interval;    /* 2000 clean steps                          */
} tdm_optimizer_options;

#define TDM_OPTIMIZER_OPTIONS_INIT                                        \
  { sizeof(tdm_optimizer_options), TDM_OPTIMIZER_SGD, 1e-3, 0.0, 0.0, 0,  \
    -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1 }

tdm_status tdm_optimizer_options_init(tdm_optimizer_options *options);

typedef struct tdm_optimizer tdm_optimizer;

/* After tdm_prepare.  Optimizes every parameter of engine; they all start
 * in group 0, which has the learning rate and weight decay of options. */
tdm_status tdm_optimizer_create(tdm_engine *engine,
                                const tdm_optimizer_options *options,
                                tdm_optimizer **optimizer);
tdm_status tdm_optimizer_destroy(tdm_optimizer *optimizer);

/* The program's own elementwise update, with tandem's sharding: at each
 * boundary tdm_step calls update on every stretch of this rank's part of
 * the f32 parameters (its shard under ZeRO-1..3): param the f32 values
 * (the master weights under mixed precision; the compute copies follow),
 * grad the gradient as f32, averaged over ranks and micro-steps, unscaled
 * and clipped (zeroed by tandem afterwards), state0 and state1 two arrays
 * of n floats that tandem keeps for it (zero at first, sharded like the
 * values, saved by tdm_save_state as <name>.state0 and .state1), and step
 * the update's count, from 1.  An Adam-style function written for one
 * process, update(float *p, float *g, float *m, float *v, int n, int t),
 * fits as it is.  It runs on the CPU: on a GPU it needs
 * offload = TDM_OFFLOAD_OPTIMIZER.  Learning-rate schedules and groups do
 * not apply (the function has its own rate); clipping does. */
typedef void (*tdm_update_fn)(float *param, float *grad, float *state0,
                              float *state1, int n, int step);
tdm_status tdm_optimizer_create_custom(tdm_engine *engine,
                                       tdm_update_fn update,
                                       tdm_optimizer **optimizer);

/* Parameter groups (torch's param_groups): a new group with its own
 * learning rate and weight decay; *group is its index.  Groups are set up
 * before the first tdm_step. */
tdm_status tdm_optimizer_add_group(tdm_optimizer *optimizer, double lr,
                                   double weight_decay, int *group);
/* Moves parameter param into group. */
tdm_status tdm_optimizer_set_group(tdm_optimizer *optimizer, int param,
                                   int group);
/* Adds a group with group 0's learning rate and weight decay 0, and moves
 * into it every parameter whose name matches one of the comma-separated
 * fnmatch(3) patterns; NULL means TDM_NO_DECAY_PATTERNS (biases and
 * normalization weights).  *count (may be NULL) is how many moved. */
#define TDM_NO_DECAY_PATTERNS "*bias,*norm*,*ln_*,*ln[0-9]*"
tdm_status tdm_optimizer_add_no_decay_group(tdm_optimizer *optimizer,
                                            const char *patterns, int *group,
                                            int *count);

/* Learning-rate schedules: the formulas of Hugging Face transformers'
 * get_scheduler.  The factor multiplies every group's learning rate; the
 * schedule advances once per optimizer step actually taken. */
typedef enum {
  TDM_SCHEDULE_CONSTANT = 0,
  TDM_SCHEDULE_CONSTANT_WITH_WARMUP = 1,
  TDM_SCHEDULE_LINEAR = 2,
  TDM_SCHEDULE_COSINE = 3,               /* min_lr > 0: cosine_with_min_lr */
  TDM_SCHEDULE_COSINE_WITH_RESTARTS = 4, /* cosine_with_hard_restarts      */
  TDM_SCHEDULE_POLYNOMIAL = 5,
  TDM_SCHEDULE_INVERSE_SQRT = 6
} tdm_schedule_kind;

typedef struct tdm_schedule_options {
  size_t size;            /* sizeof(tdm_schedule_options) in the caller */
  tdm_schedule_kind kind;
  int64_t warmup_steps;   /* linear warmup from 0                       */
  int64_t training_steps; /* total steps (linear, cosine, polynomial)   */
  double num_cycles;      /* cosine 0.5 (half a wave), restarts 1       */
  double min_lr;          /* cosine: floor, as an absolute lr; 0: none  */
  double lr_end;          /* polynomial: final lr; 1e-7                 */
  double power;           /* polynomial: 1                              */
  int64_t timescale;      /* inverse sqrt: warmup_steps, or 10000       */
} tdm_schedule_options;

/* Constant; negative num_cycles, lr_end, power, timescale: the default. */
#define TDM_SCHEDULE_OPTIONS_INIT                                          \
  { sizeof(tdm_schedule_options), TDM_SCHEDULE_CONSTANT, 0, 0, -1.0, 0.0,  \
    -1.0, -1.0, -1 }

tdm_status tdm_schedule_options_init(tdm_schedule_options *options);
/* The factor on base_lr after step optimizer steps (step 0: the first
 * step's).  base_lr matters only to the polynomial and min_lr forms. */
tdm_status tdm_schedule_factor(const tdm_schedule_options *schedule,
                               double base_lr, int64_t step, double *factor);
/* Before the first tdm_step. */
tdm_status tdm_optimizer_set_schedule(tdm_optimizer *optimizer,
                                      const tdm_schedule_options *schedule);

/* Gradient clipping, between tdm_backward_end and tdm_step of a boundary
 * micro-step; collective over the engine's ranks (sharded parameters add
 * their partial sums).  The clip is applied in tdm_step's fused pass:
 * the gradient buffers keep their values.  Both see gradients unscaled
 * by the fp16 loss scale.
 *
 * tdm_clip_grad_norm: *total_norm (may be NULL) is the L2 norm of all
 * gradients before clipping, inf or nan when a gradient is; gradients are
 * multiplied by min(1, max_norm / (norm + 1e-6)), as
 * torch.nn.utils.clip_grad_norm_. */
tdm_status tdm_clip_grad_norm(tdm_optimizer *optimizer, double max_norm,
                              double *total_norm);
/* Clamps every gradient to [-clip_value, clip_value]. */
tdm_status tdm_clip_grad_value(tdm_optimizer *optimizer, double clip_value);

/* Call after every tdm_backward_end.  At the end of an accumulation cycle
 * it updates the parameters (unless the fp16 loss scaler finds inf or nan
 * gradients: then the step is skipped and the scale backs off), advances
 * the schedule, zeroes the gradients and sets *stepped to 1 if the
 * parameters were updated; otherwise *stepped is 0.  stepped may be NULL.
 * Before tdm_backward_end of the micro-step it is TDM_ERR_INVALID_USAGE. */
tdm_status tdm_step(tdm_optimizer *optimizer, int *stepped);

typedef struct tdm_optimizer_info {
  size_t size;           /* sizeof(tdm_optimizer_info) in the caller   */
  int64_t steps;         /* updates done (the schedule's step count)   */
  int64_t skipped_steps; /* boundaries skipped for inf/nan gradients   */
  int last_skipped;      /* the last boundary was skipped              */
  double lr;             /* group 0's learning rate of the next step   */
  double loss_scale;     /* the fp16 loss scale; 1 without fp16        */
} tdm_optimizer_info;

/* info->size must be set by the caller. */
tdm_status tdm_get_optimizer_info(const tdm_optimizer *optimizer,
                                  tdm_optimizer_info *info);

/* ---- data: datasets, distributed sampler, prefetching loader ------------ */
/*
 * A dataset is rows of equal size in files; a sampler says which rows
 * this rank takes in each batch; a loader reads them ahead on a thread
 * into contiguous memory (Accelerate's prepare(dataloader)):
 *
 *   tdm_dataset_open_tokens(files, 1, seq_len, &ds);
 *   tdm_dataset_info(ds, &rows, NULL, NULL);
 *   tdm_sampler_options so = TDM_SAMPLER_OPTIONS_INIT;
 *   so.batch_size = 8;
 *   tdm_sampler_create(ctx, rows, &so, &sampler);
 *   tdm_loader_create(ds, sampler, NULL, &loader);
 *   each step: tdm_loader_next(loader, &batch);   batch.data, batch.count
 *
 * Datasets read only the rows asked for (.npy arrays are memory-mapped,
 * token shards read with pread), and may be read from several threads at
 * once.  Samplers and loaders are used by one thread at a time.
 */

typedef struct tdm_dataset tdm_dataset;

/* A NumPy .npy file (format 1.0, 2.0 or 3.0), memory-mapped.  Rows run
 * along the first axis (a 0-d or 1-d array: one element per row); the
 * header is checked strictly: little-endian (or one-byte) f4, f8, f2, i4,
 * i8 or u1 (TDM_F32 ... TDM_U8), C order (fortran_order False), and a
 * file size that matches the shape.  TDM_ERR_FORMAT names the file and
 * the field, TDM_ERR_NOT_SUPPORTED an unsupported dtype or Fortran order. */
tdm_status tdm_dataset_open_npy(const char *path, tdm_dataset **dataset);

/* Token shards in llm.c's format (a header of 256 little-endian int32:
 * magic 20240520, version 1 for uint16 tokens or 2 for uint32, the token
 * count; then the tokens), read as one stream in the order given.  Row i
 * is the window of seq_len + 1 tokens starting at token i * seq_len, as
 * int32 (TDM_I32): a model's inputs are its first seq_len, the targets its
 * last seq_len.  rows = (total tokens - 1) / seq_len (0 under 2 tokens).
 * Every header is checked at open (the file size must be exactly what it
 * says: TDM_ERR_FORMAT); the files stay open until tdm_dataset_close. */
tdm_status tdm_dataset_open_tokens(const char *const *paths, int count,
                                   size_t seq_len, tdm_dataset **dataset);

/* Rows, bytes per row as delivered, and element dtype; any out may be
 * NULL.  Thread-safe. */
tdm_status tdm_dataset_info(const tdm_dataset *dataset, size_t *rows,
                            size_t *row_bytes, tdm_dtype *dtype);
/* The .npy array's shape (ndim 0..8); token datasets: {rows, seq_len + 1}.
 * All 8 of shape are written, 0 past ndim; either out may be NULL. */
tdm_status tdm_dataset_shape(const tdm_dataset *dataset, int *ndim,
                             int64_t shape[8]);
/* Copies row (< rows) into out (row_bytes).  Thread-safe.  Token shards:
 * TDM_ERR_FORMAT for a uint32 token above INT32_MAX. */
tdm_status tdm_dataset_read(const tdm_dataset *dataset, size_t row,
                            void *out);
/* File bytes read so far (token shards: headers and rows; .npy: the
 * header, as rows are mapped, not read).  Thread-safe. */
tdm_status tdm_dataset_bytes_read(const tdm_dataset *dataset,
                                  uint64_t *bytes);
tdm_status tdm_dataset_close(tdm_dataset *dataset);

typedef struct tdm_sampler tdm_sampler;

/*
 * Batches of an epoch.  G rows make a global batch: batch_size * world
 * size, or batch_size itself with split_batches (then it must divide by
 * the world size).  Each rank takes B = G / world size of them: in batch
 * k, rank r takes positions k * G + r * B ... + B - 1 of the epoch's
 * order, which is a permutation of the rows (with shuffle: Fisher-Yates,
 * for i = rows - 1 down to 1 swapping i with j = u % (i + 1), u the next
 * two words (low, high) of the shared Philox stream of seed + epoch, as
 * tdm_rng_create(ctx, seed + epoch, TDM_RNG_SHARED) draws them), else the
 * identity.  The same on every rank, with no communication.  A last
 * global batch of R < G rows is dropped with drop_last; else with
 * even_batches it is filled by wrapping around to the epoch's first
 * positions, every rank taking B rows of which max(0, min(B, R - r * B))
 * are real (tdm_gather_for_metrics's valid_count); else rank r takes only
 * its real rows, which may be none.
 */
typedef struct tdm_sampler_options {
  size_t size;        /* sizeof(tdm_sampler_options) in the caller        */
  size_t batch_size;  /* rows per rank per batch (> 0); with split_batches
                         the global batch                                 */
  int shuffle;        /* 1 (default): a new order each epoch; 0: in order */
  uint64_t seed;      /* of the shuffle; default 0                        */
  int drop_last;      /* 1: drop an incomplete last batch; default 0      */
  int even_batches;   /* 1 (default): pad it by wrapping around            */
  int split_batches;  /* 1: batch_size is the global batch; default 0     */
} tdm_sampler_options;

#define TDM_SAMPLER_OPTIONS_INIT \
  { sizeof(tdm_sampler_options), 0, 1, 0, 0, 1, 0 }

tdm_status tdm_sampler_options_init(tdm_sampler_options *options);

/* Local, no communication: every rank must give the same rows and
 * options.  The position starts at (epoch 0, batch 0). */
tdm_status tdm_sampler_create(const tdm_context *ctx, size_t rows,
                              const tdm_sampler_options *options,
                              tdm_sampler **sampler);
tdm_status tdm_sampler_destroy(tdm_sampler *sampler);
/* Batches per epoch (the same on every rank), and this rank's rows per
 * batch at most (B); either out may be NULL. */
tdm_status tdm_sampler_info(const tdm_sampler *sampler, size_t *batches,
                            size_t *batch_rows);
/* This rank's rows of the batch at the position into rows[] (capacity
 * batch_rows), *count of them, the first *valid real; then moves to the
 * next batch, after an epoch's last to (epoch + 1, 0).  epoch and batch
 * (either may be NULL) tell the position the rows came from. */
tdm_status tdm_sampler_next(tdm_sampler *sampler, size_t *rows,
                            size_t *count, size_t *valid, uint64_t *epoch,
                            uint64_t *batch);
/* Moves to (epoch, 0): PyTorch's DistributedSampler.set_epoch. */
tdm_status tdm_sampler_set_epoch(tdm_sampler *sampler, uint64_t epoch);
/* Moves to (this epoch, batches): the next batch is the epoch's
 * batches-th (Accelerate's skip_first_batches). */
tdm_status tdm_sampler_skip_first_batches(tdm_sampler *sampler,
                                          uint64_t batches);
/* The position of the next batch.  tdm_save_state saves it (see
 * tdm_checkpoint_options.samplers) and tdm_load_state restores it. */
tdm_status tdm_sampler_get_position(const tdm_sampler *sampler,
                                    uint64_t *epoch, uint64_t *batch);

typedef struct tdm_loader tdm_loader;

typedef struct tdm_loader_options {
  size_t size;   /* sizeof(tdm_loader_options) in the caller             */
  int prefetch;  /* batches read ahead by the loader's thread (default 2);
                    0: no thread, tdm_loader_next reads                   */
} tdm_loader_options;

#define TDM_LOADER_OPTIONS_INIT { sizeof(tdm_loader_options), 2 }

/* One batch: count rows of row_bytes each, contiguous, the first valid of
 * them real; from position (epoch, index) of the sampler. */
typedef struct tdm_batch {
  void *data;
  size_t count, valid, row_bytes;
  uint64_t epoch, index;
} tdm_batch;

/* Reads the sampler's batches from dataset; neither is owned, both must
 * outlive the loader.  options may be NULL. */
tdm_status tdm_loader_create(tdm_dataset *dataset, tdm_sampler *sampler,
                             const tdm_loader_options *options,
                             tdm_loader **loader);
/* The batch at the sampler's position (after a set_epoch or skip too),
 * which then moves on.  batch->data stays valid until the next call or
 * tdm_loader_destroy.  A read error of the thread is returned here, with
 * its message. */
tdm_status tdm_loader_next(tdm_loader *loader, tdm_batch *batch);
/* Stops the thread (waiting for a read in progress) and frees. */
tdm_status tdm_loader_destroy(tdm_loader *loader);

/* ---- checkpoints -------------------------------------------------------------- */
/*
 * A checkpoint is a folder:
 *
 *   model.safetensors                    the parameters by registered name
 *     (or model-00001-of-0000N.safetensors ... and
 *      model.safetensors.index.json, Hugging Face's sharded layout)
 *   optimizer.safetensors                every state buffer per parameter,
 *                                        "<name>.exp_avg", "<name>.exp_avg_sq",
 *                                        "<name>.momentum_buffer"; with
 *                                        16-bit weights also "<name>.master"
 *   state.json                           step, schedule, loss scaler, RNG
 *                                        offsets, options, user data
 *   done                                 written last: the folder is complete
 *
 * Tensors are whole (logical) tensors, whatever the world size and ZeRO
 * stage at save; each rank writes and reads only its own byte ranges with
 * collective MPI-IO.  tdm_save_state writes into ROOT/checkpoint-<step>
 * (step: optimizer boundaries so far, skipped fp16 steps included) through
 * ROOT/checkpoint-<step>.tmp-<pid>: files and folders are fsynced, the
 * folder renamed, then the done marker written, so a crash at any moment
 * leaves every earlier checkpoint intact.
 */

typedef struct tdm_checkpoint_options {
  size_t size;             /* sizeof(tdm_checkpoint_options) in the caller */
  /* save */
  int total_limit;         /* keep the newest total_limit checkpoints under
                              ROOT, removing older ones after the new one is
                              committed; 0: keep all                       */
  int64_t max_shard_bytes; /* model weights in shards of at most this many
                              tensor bytes (a larger tensor gets its own
                              shard); 0: one model.safetensors             */
  int weights_dtype;       /* dtype of model.safetensors: TDM_UNSET: each
                              parameter's own (the f32/f64 master values);
                              TDM_BF16, TDM_F16 or TDM_F32: converted (the
                              masters then also go to optimizer.safetensors,
                              so a resume stays exact)                      */
  const void *user_data;   /* save: rank 0's bytes, restored by load; may be
                              NULL                                         */
  size_t user_bytes;
  /* load */
  void *user_buffer;       /* load: receives the saved user data           */
  size_t user_capacity;    /* bytes of user_buffer                         */
  size_t *user_out;        /* load: the saved size (may be NULL)           */
  /* both: RNG streams whose offsets are saved and restored */
  tdm_rng *const *rngs;
  int rng_count;
  /* out, both: the checkpoint folder written or read (may be NULL) */
  char *path_out;
  size_t path_capacity;
  /* both (since 0.3): samplers whose positions are saved and restored, so
     a resumed run sees the batches it would have seen */
  tdm_sampler *const *samplers;
  int sampler_count;
} tdm_checkpoint_options;

#define TDM_CHECKPOINT_OPTIONS_INIT                                        \
  { sizeof(tdm_checkpoint_options), 0, 0, TDM_UNSET, NULL, 0, NULL, 0,     \
    NULL, NULL, 0, NULL, 0, NULL, 0 }

tdm_status tdm_checkpoint_options_init(tdm_checkpoint_options *options);

/* Collective over the engine's ranks, between micro-steps at the end of an
 * accumulation cycle (after tdm_step; never mid-cycle).  Saves parameters,
 * optimizer state (optimizer may be NULL: weights and state.json only) and
 * the options' extras into ROOT/checkpoint-<step>; root is created if
 * missing.  Every rank returns the same status.  options may be NULL. */
tdm_status tdm_save_state(tdm_engine *engine, tdm_optimizer *optimizer,
                          const char *root,
                          const tdm_checkpoint_options *options);

/* Collective.  path is a checkpoint folder, or a ROOT of tdm_save_state:
 * then its newest complete checkpoint.  Restores parameters, optimizer
 * state and counters, the loss scaler and the RNG offsets; the engine
 * may have another world size, ZeRO stage or offload than at save (the
 * tensors are re-sharded), the registered parameters must match by name,
 * shape and dtype.  Same settings: training continues bit for bit.
 * After tdm_prepare and tdm_optimizer_create (its groups and schedule set
 * up), between micro-steps at a cycle boundary.  options may be NULL. */
tdm_status tdm_load_state(tdm_engine *engine, tdm_optimizer *optimizer,
                          const char *path,
                          const tdm_checkpoint_options *options);

/* Not collective, no MPI.  The newest complete checkpoint-<step> folder
 * under root (one with its done marker) into path (size bytes);
 * TDM_ERR_IO naming root when there is none. */
tdm_status tdm_latest_checkpoint(const char *root, char *path, size_t size);

/* tdm_load_weights flags: convert tensors of another floating dtype to
 * the parameter's (else a dtype mismatch is an error). */
#define TDM_WEIGHTS_CONVERT 1

/* Collective.  Loads parameter values by name from a safetensors file, a
 * Hugging Face model.safetensors.index.json, or a folder holding either
 * (a checkpoint, a PyTorch export).  Every registered parameter must be
 * present with its shape; tensors of other names are ignored.  The
 * optimizer state is not touched.  After tdm_prepare, between
 * micro-steps. */
tdm_status tdm_load_weights(tdm_engine *engine, const char *path, int flags);

/* The ZeRO paper's model-state bytes per rank (Rajbhandari et al. 2020,
 * section 5): numel f32 parameters over world_size ranks at zero_stage,
 * with compute copies under precision, gradients in reduce_dtype, and
 * states_per_param f32 optimizer states per parameter (Adam 2, SGD with
 * momentum and Lion 1).  bytes[c] is category c's share, without padding
 * or communication buffers (bytes[TDM_MEM_COMM_BUFFERS] is 0). */
tdm_status tdm_estimate_model_state(uint64_t numel, int world_size,
                                    int zero_stage, tdm_precision precision,
                                    tdm_dtype reduce_dtype,
                                    int states_per_param,
                                    uint64_t bytes[TDM_MEM_NUM_CATEGORIES]);

/* What a model's weights hold, from the safetensors headers alone (no
 * tensor data is read): path is a .safetensors file, an index
 * (model.safetensors.index.json, whose files are in its folder) or a
 * folder with either.  numel: elements of all tensors; bytes: their data
 * bytes; tensors: how many (each may be NULL).  A corrupt header is
 * TDM_ERR_FORMAT naming the file and the field (0.5). */
tdm_status tdm_weights_info(const char *path, uint64_t *numel,
                            uint64_t *bytes, int *tensors);

/* Rewrites the weights at in (as tdm_weights_info takes them) as
 * safetensors at out: one file when max_shard_bytes is 0, else a folder
 * out of shards model-0000K-of-0000N.safetensors of at most
 * max_shard_bytes data bytes each (a larger tensor gets one of its own)
 * and model.safetensors.index.json.  dtype TDM_UNSET keeps each tensor's
 * dtype; TDM_F32, TDM_BF16 or TDM_F16 converts every floating tensor
 * (f64, f32, bf16, f16) to it, rounding to nearest even (through f32
 * from f64 and between the 16-bit types); other tensors are copied.  One
 * tensor is in memory at a time.  Each file is written under a
 * temporary name and renamed when complete.  Names, shapes and order are
 * kept; a name in two input files is TDM_ERR_FORMAT (0.5). */
tdm_status tdm_weights_convert(const char *in, const char *out, int dtype,
                               uint64_t max_shard_bytes);

/* ---- metrics ------------------------------------------------------------ */
/*
 * Scalars for TensorBoard and for scripts (Accelerate's log()):
 *
 *   TANDEM_METRICS_DIR=runs/exp1 mpirun -np 4 ./trainer
 *   tdm_log_scalar(ctx, "loss", step, loss);
 *
 * writes, on the main rank (every rank with metrics_all_ranks), one line
 * {"step":N,"time":T,"loss":V} to DIR/metrics.jsonl and one Event with
 * a scalar summary per call to DIR/events.out.tfevents.<time>.<host>.
 * <pid> (tensorboard --logdir DIR shows it).  tdm_step adds the engine's
 * own at each accumulation boundary, at step = the boundary's index from
 * 0: tandem/lr (of that step), tandem/loss_scale, tandem/skipped_steps,
 * tandem/grad_norm (when tdm_clip_grad_norm computed it),
 * tandem/step_time_s (since the previous boundary), tandem/comm_bytes
 * (sent in that step, as tdm_get_comm_volume counts), and
 * tandem/memory/<category>_bytes and tandem/memory/peak_bytes.  Files
 * are appended to (a resumed run continues its curves) and flushed at
 * most once a second and by tdm_finalize.  Without metrics_dir these
 * calls check their arguments and write nothing.  Not collective; safe
 * from any thread.  A name has 1 to 200 printable characters and is not
 * "step" or "time"; inf and NaN are written as null in the JSON lines
 * (0.6).
 */
tdm_status tdm_log_scalar(tdm_context *ctx, const char *name, int64_t step,
                          double value);
/* count scalars of one step in one record. */
tdm_status tdm_log_scalars(tdm_context *ctx, int64_t step, int count,
                           const char *const *names, const double *values);

/* ---- session: one engine, set up in one call ---------------------------- */
/*
 * For a program with one engine, what tdm_init, tdm_get_rank,
 * tdm_get_world_size and tdm_engine_create give, in one struct
 * (Accelerate's Accelerator()):
 *
 *   static tdm_session tdm = TDM_SESSION_INIT;
 *   tdm_start(&argc, &argv, &tdm);          options from TANDEM_* and the
 *   tdm_bind_param(tdm.engine, ...);        config file, as tdm_init
 *   tdm_prepare(tdm.engine);
 *   tdm_optimizer_create(tdm.engine, &o, &tdm.optimizer);
 *   ... tdm_step(tdm.optimizer, NULL) per micro-step ...
 *   tdm_stop(&tdm);                         destroys what it holds
 *
 * device says where the model's math runs, so where its pointers must
 * point: TDM_DEVICE_CPU (the default: plain C), TDM_DEVICE_CUDA, or
 * TDM_DEVICE_AUTO (tdm_init's rule).  TANDEM_DEVICE does not override it.
 */
typedef struct tdm_session {
  size_t size;              /* sizeof(tdm_session) in the caller */
  tdm_device_kind device;   /* in: where the model computes       */
  tdm_context *ctx;         /* out */
  tdm_engine *engine;       /* out */
  tdm_optimizer *optimizer; /* the program's: tdm_stop destroys it */
  int rank, world_size;     /* out */
} tdm_session;

#define TDM_SESSION_INIT                                                  \
  { sizeof(tdm_session), TDM_DEVICE_CPU, NULL, NULL, NULL, 0, 1 }

/* Collective: tdm_init (with session->device), then tdm_engine_create.
 * On failure nothing is left open. */
tdm_status tdm_start(int *argc, char ***argv, tdm_session *session);
/* Collective: destroys the session's optimizer (if set) and engine, then
 * tdm_finalize.  Returns the first failure. */
tdm_status tdm_stop(tdm_session *session);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif

#endif /* TANDEM_H */
