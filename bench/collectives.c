/*
 * collectives.c - tandem's host collectives against raw MPI, nccl-tests
 * style.
 *
 *   mpirun -np N ./bench/collectives [-b MIN] [-e MAX] [-f FACTOR] [-n ITERS]
 *          [-w WARMUP] [-R ROUNDS] [-d DTYPE] [-o OP] [-r ROOT] [-c 0|1]
 *          [-l LIST]
 *
 * For every collective and size it times tdm_<op> and the matching MPI call
 * on the same buffers and the same communicator (tandem's private duplicate,
 * from tdm_get_comm), in alternating blocks, then checks both results
 * against values known in advance.  See bench/README.md.
 */
#define _POSIX_C_SOURCE 200809L

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mpi.h>

#include "tandem.h"
#include "bench_util.h"
#include "tandem_mpi.h"

#define MAX_ROUNDS 64
#define MAX_ITERS 100000L
#define BLOCK_TARGET_S 0.005 /* auto iterations: ~5 ms per timed block  */
#define CALIB_MIN_S 0.001    /* calibration block long enough to trust   */
#define ALIGN 64
#define MIB (1024.0 * 1024.0)
#define TARGET_RATIO 1.05

/* ---- options ------------------------------------------------------------ */

enum { COLL_ALLREDUCE, COLL_ALLGATHER, COLL_REDUCE_SCATTER, COLL_BROADCAST,
       NUM_COLLS };

typedef struct {
  size_t min_bytes, max_bytes, factor;
  long iters; /* 0: auto */
  int warmup, rounds, check, root;
  tdm_dtype dtype;
  tdm_op op;
  unsigned colls; /* bit mask of COLL_* */
} options_t;

static const char *const dtype_names[TDM_NUM_DTYPES] = {
    "f32", "f64", "f16", "bf16", "i32", "i64", "u8"};
static const char *const op_names[TDM_NUM_OPS] = {"sum", "mean", "max",
                                                  "min"};
static const char *const coll_names[NUM_COLLS] = {
    "allreduce", "allgather", "reduce_scatter", "broadcast"};

static int lookup(const char *s, const char *const *names, int n) {
  for (int i = 0; i < n; i++)
    if (strcmp(s, names[i]) == 0) return i;
  return -1;
}

/* Comma-separated collective names, or "all". */
static unsigned parse_colls(const char *s, int *ok) {
  char buf[256];
  unsigned mask = 0;
  snprintf(buf, sizeof buf, "%s", s);
  for (char *tok = strtok(buf, ","); tok != NULL; tok = strtok(NULL, ",")) {
    int c = lookup(tok, coll_names, NUM_COLLS);
    if (strcmp(tok, "all") == 0) mask |= (1u << NUM_COLLS) - 1;
    else if (c < 0) *ok = 0;
    else mask |= 1u << c;
  }
  if (mask == 0) *ok = 0;
  return mask;
}

static void usage(FILE *out) {
  fprintf(out,
      "usage: mpirun -np N collectives [options]\n"
      "  -b MINBYTES  smallest size (default 8; K/M/G suffixes)\n"
      "  -e MAXBYTES  largest size (default 64M; at most 2G-1)\n"
      "  -f FACTOR    size multiplier between rows (default 2)\n"
      "  -n ITERS     timed iterations per block (default: auto, ~5 ms)\n"
      "  -w WARMUP    warmup iterations per implementation (default 5)\n"
      "  -R ROUNDS    timed blocks per implementation; the median is\n"
      "               reported (default 9)\n"
      "  -d DTYPE     f32 f64 f16 bf16 i32 i64 u8 (default f32)\n"
      "  -o OP        sum mean max min (default sum)\n"
      "  -r ROOT      broadcast root (default 0)\n"
      "  -c 0|1       check results (default 1)\n"
      "  -l LIST      collectives, comma-separated: allreduce,allgather,\n"
      "               reduce_scatter,broadcast or all (default all)\n");
}

static int apply_option(options_t *o, int c, const char *arg) {
  int ok = 1, v;
  switch (c) {
    case 'b': o->min_bytes = parse_bytes(arg); ok = o->min_bytes > 0; break;
    case 'e': o->max_bytes = parse_bytes(arg); ok = o->max_bytes > 0; break;
    case 'f': o->factor = (size_t)parse_long(arg, 2, 1024, &ok); break;
    case 'n': o->iters = parse_long(arg, 1, MAX_ITERS, &ok); break;
    case 'w': o->warmup = (int)parse_long(arg, 0, 100000, &ok); break;
    case 'R': o->rounds = (int)parse_long(arg, 1, MAX_ROUNDS, &ok); break;
    case 'c': o->check = (int)parse_long(arg, 0, 1, &ok); break;
    case 'r': o->root = (int)parse_long(arg, 0, INT_MAX, &ok); break;
    case 'l': o->colls = parse_colls(arg, &ok); break;
    case 'd':
      v = lookup(arg, dtype_names, TDM_NUM_DTYPES);
      ok = v >= 0;
      o->dtype = (tdm_dtype)(ok ? v : 0);
      break;
    case 'o':
      v = lookup(arg, op_names, TDM_NUM_OPS);
      ok = v >= 0;
      o->op = (tdm_op)(ok ? v : 0);
      break;
    default: ok = 0; break;
  }
  return ok;
}

static int is_float(tdm_dtype d) {
  return d == TDM_F32 || d == TDM_F64 || d == TDM_F16 || d == TDM_BF16;
}

/* 0: go on; -1: help was printed (exit 0); 2: bad usage (exit 2). */
static int parse_options(int argc, char **argv, int nranks, options_t *o) {
  const options_t defaults = {8, 64u << 20, 2, 0, 5, 9, 1, 0,
                              TDM_F32, TDM_SUM, (1u << NUM_COLLS) - 1};
  const char *bad = NULL;
  int c;
  *o = defaults;
  opterr = 0;
  while ((c = getopt(argc, argv, "b:e:f:n:w:R:d:o:r:c:l:h")) != -1) {
    if (c == 'h') {
      if (g_rank == 0) usage(stdout);
      return -1;
    }
    if (!apply_option(o, c, optarg)) bad = "bad option or value";
  }
  if (bad == NULL && optind < argc) bad = "unexpected argument";
  if (bad == NULL && o->min_bytes > o->max_bytes) bad = "-b is above -e";
  if (bad == NULL && o->root >= nranks) bad = "-r is not a rank";
  if (bad == NULL && o->op == TDM_MEAN && !is_float(o->dtype))
    bad = "-o mean needs a floating dtype";
  if (bad == NULL) return 0;
  if (g_rank == 0) {
    fprintf(stderr, "collectives: %s\n", bad);
    usage(stderr);
  }
  return 2;
}

/* ---- element access ------------------------------------------------------ */

static float bits_to_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static uint32_t f32_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

/* Round to nearest even; NaN stays NaN. */
static uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

static float bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }

static uint16_t round_shift(uint32_t m, int shift) {
  uint32_t h = m >> shift, rem = m & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1u))) h++;
  return (uint16_t)h;
}

/* IEEE binary16, round to nearest even (the carry may bump the exponent). */
static uint16_t f32_to_f16(float f) {
  uint32_t u = f32_to_bits(f);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  int e = (int)((u >> 23) & 0xffu);
  uint32_t m = u & 0x7fffffu;
  if (e == 0xff) return (uint16_t)(sign | 0x7c00u | (m ? 0x200u : 0u));
  e = e - 127 + 15;
  if (e >= 31) return (uint16_t)(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return sign;
    return (uint16_t)(sign | round_shift(m | 0x800000u, 14 - e));
  }
  uint32_t h = ((uint32_t)e << 10) | (m >> 13), rem = m & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}

static float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    float v = (float)m / 16777216.0f; /* m * 2^-24 */
    return sign ? -v : v;
  }
  if (e == 31) return bits_to_f32(sign | 0x7f800000u | (m << 13));
  return bits_to_f32(sign | ((e - 15 + 127) << 23) | (m << 13));
}

static double load_elem(const void *buf, tdm_dtype d, size_t i) {
  switch (d) {
    case TDM_F32: return ((const float *)buf)[i];
    case TDM_F64: return ((const double *)buf)[i];
    case TDM_F16: return f16_to_f32(((const uint16_t *)buf)[i]);
    case TDM_BF16: return bf16_to_f32(((const uint16_t *)buf)[i]);
    case TDM_I32: return ((const int32_t *)buf)[i];
    case TDM_I64: return (double)((const int64_t *)buf)[i];
    case TDM_U8: return ((const uint8_t *)buf)[i];
    default: return 0.0;
  }
}

/* v is a small non-negative integer or half-integer; u8 wraps mod 256. */
static void store_elem(void *buf, tdm_dtype d, size_t i, double v) {
  switch (d) {
    case TDM_F32: ((float *)buf)[i] = (float)v; break;
    case TDM_F64: ((double *)buf)[i] = v; break;
    case TDM_F16: ((uint16_t *)buf)[i] = f32_to_f16((float)v); break;
    case TDM_BF16: ((uint16_t *)buf)[i] = f32_to_bf16((float)v); break;
    case TDM_I32: ((int32_t *)buf)[i] = (int32_t)v; break;
    case TDM_I64: ((int64_t *)buf)[i] = (int64_t)v; break;
    case TDM_U8: ((uint8_t *)buf)[i] = (uint8_t)((uint64_t)v & 0xffu); break;
    default: break;
  }
}

/* v as the dtype holds it (rounding, wrap-around). */
static double quantize(tdm_dtype d, double v) {
  unsigned char tmp[8];
  store_elem(tmp, d, 0, v);
  return load_elem(tmp, d, 0);
}

static MPI_Datatype mpi_dtype(tdm_dtype d) {
  switch (d) {
    case TDM_F32: return MPI_FLOAT;
    case TDM_F64: return MPI_DOUBLE;
    case TDM_I32: return MPI_INT32_T;
    case TDM_I64: return MPI_INT64_T;
    case TDM_U8: return MPI_UINT8_T;
    default: return MPI_UINT16_T; /* f16/bf16: moved as bits, not reduced */
  }
}

static MPI_Op mpi_op(tdm_op op) {
  switch (op) {
    case TDM_MAX: return MPI_MAX;
    case TDM_MIN: return MPI_MIN;
    default: return MPI_SUM; /* mean: MPI_SUM, then divide by n */
  }
}

/* ---- benchmark state and the collectives --------------------------------- */

typedef struct {
  tdm_context *ctx;
  MPI_Comm comm;
  int rank, nranks, root;
  void *send, *recv;
  tdm_dtype dtype;
  size_t esz;
  MPI_Datatype mtype;
  tdm_op op;
  MPI_Op mop;
  size_t count;      /* the count argument of the call being measured */
  int reducing;      /* the collective being measured reduces          */
  double expected[7]; /* its checked result per element index % 7      */
} bench_t;

typedef void (*coll_fn)(bench_t *b);

/* Hand-written mean after an MPI_SUM: what a code without tandem does. */
static void mpi_mean_fixup(bench_t *b, size_t n) {
  if (b->op != TDM_MEAN) return;
  if (b->dtype == TDM_F32) {
    float *p = b->recv, div = (float)b->nranks;
    for (size_t i = 0; i < n; i++) p[i] /= div;
  } else if (b->dtype == TDM_F64) {
    double *p = b->recv, div = (double)b->nranks;
    for (size_t i = 0; i < n; i++) p[i] /= div;
  }
}

static void tdm_allreduce_fn(bench_t *b) {
  TDM_CHECK(tdm_allreduce(b->ctx, b->send, b->recv, b->count, b->dtype,
                          b->op));
}

static void mpi_allreduce_fn(bench_t *b) {
  MPI_CHECK(MPI_Allreduce(b->send, b->recv, (int)b->count, b->mtype, b->mop,
                          b->comm));
  mpi_mean_fixup(b, b->count);
}

static void tdm_allgather_fn(bench_t *b) {
  TDM_CHECK(tdm_allgather(b->ctx, b->send, b->recv, b->count, b->dtype));
}

static void mpi_allgather_fn(bench_t *b) {
  MPI_CHECK(MPI_Allgather(b->send, (int)b->count, b->mtype, b->recv,
                          (int)b->count, b->mtype, b->comm));
}

static void tdm_reduce_scatter_fn(bench_t *b) {
  TDM_CHECK(tdm_reduce_scatter(b->ctx, b->send, b->recv, b->count, b->dtype,
                               b->op));
}

static void mpi_reduce_scatter_fn(bench_t *b) {
  MPI_CHECK(MPI_Reduce_scatter_block(b->send, b->recv, (int)b->count,
                                     b->mtype, b->mop, b->comm));
  mpi_mean_fixup(b, b->count);
}

static void tdm_broadcast_fn(bench_t *b) {
  TDM_CHECK(tdm_broadcast(b->ctx, b->recv, b->count, b->dtype, b->root));
}

static void mpi_broadcast_fn(bench_t *b) {
  MPI_CHECK(MPI_Bcast(b->recv, (int)b->count, b->mtype, b->root, b->comm));
}

/* ---- known results -------------------------------------------------------- */
/*
 * Element j of rank r's input is (r + 1) + (j % 7) (r taken mod 200), a small
 * integer exact in every dtype.  Reductions must stay exact too, partial
 * sums included: u8 stops at 255, bf16 integers at 256, and Open MPI 4.1's
 * AVX reductions saturate instead of wrapping on overflow (open-mpi/ompi
 * #8045).  So for sum only the first 17 ranks contribute and the others
 * give 0 (at most 153 + 17*6 = 255); for max/min ranks from 200 on give 0;
 * mean (floating types only) uses every rank.  With n <= 17 ranks:
 *   sum  n(n+1)/2 + n*(j%7)   mean (n+1)/2 + (j%7)
 *   max  n + (j%7)            min  1 + (j%7)
 * The expected results are tabulated per j % 7 by running over the ranks.
 */
#define SUM_RANKS 17
#define VALUE_RANKS 200

static int active_ranks(tdm_op op, int n) {
  int cap = op == TDM_SUM ? SUM_RANKS : op == TDM_MEAN ? n : VALUE_RANKS;
  return n < cap ? n : cap;
}

static double input_value(const bench_t *b, int r, size_t j) {
  if (b->reducing && r >= active_ranks(b->op, b->nranks)) return 0.0;
  return (double)(r % VALUE_RANKS + 1) + (double)(j % 7);
}

/* b->expected[k]: the reduction over ranks of elements with j % 7 == k, as
 * the dtype holds it. */
static void tabulate_reduction(bench_t *b) {
  for (size_t k = 0; k < 7; k++) {
    double acc = input_value(b, 0, k);
    for (int r = 1; r < b->nranks; r++) {
      double v = input_value(b, r, k);
      if (b->op == TDM_MAX) acc = v > acc ? v : acc;
      else if (b->op == TDM_MIN) acc = v < acc ? v : acc;
      else acc += v;
    }
    if (b->op == TDM_MEAN) acc /= b->nranks;
    b->expected[k] = quantize(b->dtype, acc);
  }
}

static double expect_allreduce(const bench_t *b, size_t i) {
  return b->expected[i % 7];
}

static double expect_allgather(const bench_t *b, size_t i) {
  return quantize(b->dtype, input_value(b, (int)(i / b->count), i % b->count));
}

static double expect_reduce_scatter(const bench_t *b, size_t i) {
  return b->expected[((size_t)b->rank * b->count + i) % 7];
}

static double expect_broadcast(const bench_t *b, size_t i) {
  return quantize(b->dtype, input_value(b, b->root, i));
}

typedef struct {
  const char *name;
  int reduces, rooted, per_rank; /* per_rank: count = size / n elements */
  double (*expect)(const bench_t *b, size_t i);
  coll_fn run_tdm, run_mpi;
} coll_desc;

static const coll_desc colls[NUM_COLLS] = {
    {"allreduce", 1, 0, 0, expect_allreduce, tdm_allreduce_fn,
     mpi_allreduce_fn},
    {"allgather", 0, 0, 1, expect_allgather, tdm_allgather_fn,
     mpi_allgather_fn},
    {"reduce_scatter", 1, 0, 1, expect_reduce_scatter, tdm_reduce_scatter_fn,
     mpi_reduce_scatter_fn},
    {"broadcast", 0, 1, 0, expect_broadcast, tdm_broadcast_fn,
     mpi_broadcast_fn},
};

static double busbw_factor(int c, int n) {
  switch (c) {
    case COLL_ALLREDUCE: return 2.0 * (n - 1) / n;
    case COLL_ALLGATHER:
    case COLL_REDUCE_SCATTER: return (double)(n - 1) / n;
    default: return 1.0;
  }
}

/* Element counts of the send and recv buffers for the current count. */
static size_t send_len(const bench_t *b, int c) {
  return c == COLL_REDUCE_SCATTER ? b->count * (size_t)b->nranks : b->count;
}

static size_t recv_len(const bench_t *b, int c) {
  return c == COLL_ALLGATHER ? b->count * (size_t)b->nranks : b->count;
}

/* Inputs from the pattern, outputs poisoned (0xff bytes: NaN for floats). */
static void fill_buffers(bench_t *b, int c) {
  size_t ns = send_len(b, c), nr = recv_len(b, c);
  memset(b->recv, 0xff, nr * b->esz);
  if (c == COLL_BROADCAST) {
    if (b->rank == b->root)
      for (size_t i = 0; i < nr; i++)
        store_elem(b->recv, b->dtype, i, input_value(b, b->rank, i));
    return;
  }
  for (size_t i = 0; i < ns; i++)
    store_elem(b->send, b->dtype, i, input_value(b, b->rank, i));
}

/* Runs fn once on fresh inputs; wrong elements summed over ranks. */
static long count_wrong(bench_t *b, int c, coll_fn fn) {
  const coll_desc *d = &colls[c];
  size_t nr = recv_len(b, c);
  long wrong = 0, total = 0;
  fill_buffers(b, c);
  fn(b);
  if (d->reduces) tabulate_reduction(b);
  for (size_t i = 0; i < nr; i++)
    if (load_elem(b->recv, b->dtype, i) != d->expect(b, i)) wrong++;
  MPI_CHECK(MPI_Allreduce(&wrong, &total, 1, MPI_LONG, MPI_SUM, b->comm));
  return total;
}

/* ---- timing ---------------------------------------------------------------- */

/* Seconds per call on this rank, after a barrier. */
static double time_block(bench_t *b, coll_fn fn, long iters) {
  MPI_CHECK(MPI_Barrier(b->comm));
  double t0 = MPI_Wtime();
  for (long i = 0; i < iters; i++) fn(b);
  return (MPI_Wtime() - t0) / (double)iters;
}

static double max_over_ranks(bench_t *b, double v) {
  double out = 0.0;
  MPI_CHECK(MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, MPI_MAX, b->comm));
  return out;
}

/* Iterations per block so that one block of tandem calls takes about
 * BLOCK_TARGET_S; the same on every rank (decided on max-over-ranks). */
static long auto_iters(bench_t *b, coll_fn fn) {
  long k = 1;
  double per = 0.0;
  for (;;) {
    per = max_over_ranks(b, time_block(b, fn, k));
    if (per * (double)k >= CALIB_MIN_S || k >= MAX_ITERS) break;
    k *= 4;
  }
  double want = per > 0.0 ? BLOCK_TARGET_S / per : (double)MAX_ITERS;
  if (want < 1.0) return 1;
  return want > (double)MAX_ITERS ? MAX_ITERS : (long)want;
}

/* Alternating blocks (tandem first in even rounds, MPI first in odd ones);
 * each block's time is the max over ranks of its per-call average, and the
 * reported time is the median over rounds.  t[1] is 0 without MPI. */
static void measure(bench_t *b, const coll_desc *d, int has_mpi, long iters,
                    int rounds, double t[2]) {
  double local[2 * MAX_ROUNDS] = {0}, all[2 * MAX_ROUNDS];
  coll_fn fns[2] = {d->run_tdm, d->run_mpi};
  for (int k = 0; k < rounds; k++)
    for (int s = 0; s < 2; s++) {
      int impl = s ^ (k & 1);
      if (impl == 0 || has_mpi)
        local[impl * rounds + k] = time_block(b, fns[impl], iters);
    }
  MPI_CHECK(MPI_Allreduce(local, all, 2 * rounds, MPI_DOUBLE, MPI_MAX,
                          b->comm));
  t[0] = median(all, rounds);
  t[1] = has_mpi ? median(all + rounds, rounds) : 0.0;
}

/* ---- one row of the table --------------------------------------------------- */

typedef struct {
  size_t bytes;    /* as nccl-tests reports it (count-rounded) */
  size_t asked;    /* the size on the -b..-e ladder           */
  double t[2];     /* seconds per call: tandem, MPI */
  long wrong[2];   /* -1: not checked */
  int has_mpi;
} row_t;

typedef struct {
  double ratio_sum;  /* over rows >= 1 MiB with MPI */
  int ratio_rows;
  double busbw_sum[2];
  int busbw_rows[2];
  long wrong;
} summary_t;

static void warm_up(bench_t *b, const coll_desc *d, int has_mpi, int n) {
  for (int i = 0; i < n; i++) d->run_tdm(b);
  for (int i = 0; has_mpi && i < n; i++) d->run_mpi(b);
}

static void run_row(bench_t *b, int c, const options_t *o, row_t *row) {
  const coll_desc *d = &colls[c];
  row->has_mpi = !(d->reduces && (b->dtype == TDM_F16 ||
                                  b->dtype == TDM_BF16));
  fill_buffers(b, c); /* finite, small inputs for the timed loop */
  warm_up(b, d, row->has_mpi, o->warmup);
  long iters = o->iters > 0 ? o->iters : auto_iters(b, d->run_tdm);
  measure(b, d, row->has_mpi, iters, o->rounds, row->t);
  row->wrong[0] = row->wrong[1] = -1;
  if (!o->check) return;
  row->wrong[0] = count_wrong(b, c, d->run_tdm);
  if (row->has_mpi) row->wrong[1] = count_wrong(b, c, d->run_mpi);
}

/* ---- output ------------------------------------------------------------------ */

static void fmt_time(char *out, size_t n, double us) {
  if (us >= 10000.0) snprintf(out, n, "%9.0f", us);
  else if (us >= 100.0) snprintf(out, n, "%9.1f", us);
  else snprintf(out, n, "%9.2f", us);
}

/* "  time  algbw  busbw  #wrong" for one implementation. */
static void fmt_impl(char *out, size_t n, double t, size_t bytes,
                     double factor, long wrong, int present) {
  char ts[32], ws[32];
  if (!present) {
    snprintf(out, n, " %9s %7s %7s %6s", "n/a", "n/a", "n/a", "n/a");
    return;
  }
  double algbw = t > 0.0 ? (double)bytes / t / 1e9 : 0.0;
  fmt_time(ts, sizeof ts, t * 1e6);
  if (wrong < 0) snprintf(ws, sizeof ws, "N/A");
  else snprintf(ws, sizeof ws, "%ld", wrong);
  snprintf(out, n, " %s %7.2f %7.2f %6s", ts, algbw, algbw * factor, ws);
}

static void print_header(const bench_t *b, int c) {
  TDM_CHECK(tdm_print(b->ctx, "#\n# %s\n#\n", colls[c].name));
  TDM_CHECK(tdm_print(b->ctx, "# %43s %32s %32s\n", "",
                      "------------ tandem ------------",
                      "----------- raw MPI ------------"));
  TDM_CHECK(tdm_print(b->ctx,
      "# %11s %12s %5s %6s %5s %9s %7s %7s %6s %9s %7s %7s %6s %7s\n",
      "size", "count", "type", "redop", "root", "time", "algbw", "busbw",
      "#wrong", "time", "algbw", "busbw", "#wrong", "ratio"));
  TDM_CHECK(tdm_print(b->ctx,
      "# %11s %12s %5s %6s %5s %9s %7s %7s %6s %9s %7s %7s %6s %7s\n",
      "(B)", "(elements)", "", "", "", "(us)", "(GB/s)", "(GB/s)", "",
      "(us)", "(GB/s)", "(GB/s)", "", "tdm/mpi"));
}

static void print_row(const bench_t *b, int c, const row_t *r) {
  const coll_desc *d = &colls[c];
  double f = busbw_factor(c, b->nranks);
  char tdm[96], mpi[96], ratio[32];
  fmt_impl(tdm, sizeof tdm, r->t[0], r->bytes, f, r->wrong[0], 1);
  fmt_impl(mpi, sizeof mpi, r->t[1], r->bytes, f, r->wrong[1], r->has_mpi);
  if (r->has_mpi && r->t[1] > 0.0)
    snprintf(ratio, sizeof ratio, "%7.3f", r->t[0] / r->t[1]);
  else
    snprintf(ratio, sizeof ratio, "%7s", "n/a");
  TDM_CHECK(tdm_print(b->ctx, "  %11zu %12zu %5s %6s %5d%s%s %s\n",
                      r->bytes, b->count, dtype_names[b->dtype],
                      d->reduces ? op_names[b->op] : "none",
                      d->rooted ? b->root : -1, tdm, mpi, ratio));
}

static void account(const bench_t *b, int c, const row_t *r, summary_t *s) {
  double f = busbw_factor(c, b->nranks);
  for (int i = 0; i < 2; i++) {
    if (r->wrong[i] > 0) s->wrong += r->wrong[i];
    if ((i == 0 || r->has_mpi) && r->t[i] > 0.0) {
      s->busbw_sum[i] += (double)r->bytes / r->t[i] / 1e9 * f;
      s->busbw_rows[i]++;
    }
  }
  if (r->has_mpi && r->t[1] > 0.0 && (double)r->asked >= MIB) {
    s->ratio_sum += r->t[0] / r->t[1];
    s->ratio_rows++;
  }
}

/* ---- driver -------------------------------------------------------------------- */

/* The count argument for a requested size (0: skip the size). */
static size_t count_for(const bench_t *b, int c, size_t bytes) {
  size_t per = colls[c].per_rank ? b->esz * (size_t)b->nranks : b->esz;
  return bytes / per;
}

static void run_coll(bench_t *b, int c, const options_t *o, summary_t *s) {
  size_t last = 0;
  print_header(b, c);
  for (size_t bytes = o->min_bytes; bytes <= o->max_bytes;
       bytes *= o->factor) {
    size_t count = count_for(b, c, bytes);
    if (count > 0 && count != last) {
      row_t row;
      b->count = last = count;
      b->reducing = colls[c].reduces;
      row.asked = bytes;
      row.bytes = count * b->esz * (colls[c].per_rank ? (size_t)b->nranks : 1);
      run_row(b, c, o, &row);
      print_row(b, c, &row);
      account(b, c, &row, s);
    }
    if (bytes > o->max_bytes / o->factor) break; /* no overflow */
  }
}

/* Mean tandem/MPI ratio over sizes >= 1 MiB and the 5% target verdict. */
static void print_target(const bench_t *b, const char *name,
                         const summary_t *x) {
  char mean[64] = "n/a (no MPI baseline or no size >= 1 MiB)";
  const char *verdict = "n/a";
  if (x->ratio_rows > 0) {
    double m = x->ratio_sum / x->ratio_rows;
    snprintf(mean, sizeof mean, "%.3f over %d sizes", m, x->ratio_rows);
    verdict = m <= TARGET_RATIO ? "MET" : "NOT MET";
  }
  TDM_CHECK(tdm_print(b->ctx, "# %-15s mean ratio: %s\n# %-15s target: "
                      "tandem within 5%% of raw MPI at >= 1 MiB: %s\n",
                      name, mean, name, verdict));
}

static void print_summary(const bench_t *b, const options_t *o,
                          const summary_t s[NUM_COLLS]) {
  long wrong = 0;
  double bw[2] = {0, 0};
  int rows[2] = {0, 0};
  TDM_CHECK(tdm_print(b->ctx, "#\n# Summary: tandem time / raw MPI time, "
                              "mean over sizes >= 1 MiB\n"));
  for (int c = 0; c < NUM_COLLS; c++) {
    if (!(o->colls & (1u << c))) continue;
    const summary_t *x = &s[c];
    wrong += x->wrong;
    for (int i = 0; i < 2; i++) {
      bw[i] += x->busbw_sum[i];
      rows[i] += x->busbw_rows[i];
    }
    print_target(b, colls[c].name, x);
  }
  TDM_CHECK(tdm_print(b->ctx, "#\n# Out of bounds values : %ld %s%s\n",
                      wrong, wrong ? "ERROR" : "OK",
                      o->check ? "" : " (check disabled: -c 0)"));
  char mpi_bw[48] = "n/a";
  if (rows[1])
    snprintf(mpi_bw, sizeof mpi_bw, "%.3f GB/s (%d rows)", bw[1] / rows[1],
             rows[1]);
  TDM_CHECK(tdm_print(b->ctx, "# Avg bus bandwidth    : tandem %.3f GB/s "
                      "(%d rows), raw MPI %s\n#\n",
                      rows[0] ? bw[0] / rows[0] : 0.0, rows[0], mpi_bw));
}

static void print_banner(const bench_t *b, const options_t *o) {
  int major = 0, minor = 0, patch = 0, nodes = 0;
  TDM_CHECK(tdm_get_version(&major, &minor, &patch));
  TDM_CHECK(tdm_get_node_count(b->ctx, &nodes));
  TDM_CHECK(tdm_print(b->ctx,
      "# tandem %d.%d.%d collectives benchmark: tandem vs raw MPI on the "
      "same buffers and communicator\n"
      "# nranks %d  nodes %d  dtype %s  redop %s  root %d\n"
      "# minBytes %zu  maxBytes %zu  step: %zu(factor)  warmup iters: %d  "
      "iters: ", major, minor, patch, b->nranks, nodes,
      dtype_names[o->dtype], op_names[o->op], o->root, o->min_bytes,
      o->max_bytes, o->factor, o->warmup));
  if (o->iters > 0) TDM_CHECK(tdm_print(b->ctx, "%ld", o->iters));
  else TDM_CHECK(tdm_print(b->ctx, "auto (~%.0f ms/block)",
                           BLOCK_TARGET_S * 1e3));
  TDM_CHECK(tdm_print(b->ctx, "  rounds: %d (median)  validation: %d\n"
                      "# time: median over rounds of the max over ranks of "
                      "the mean time per call\n", o->rounds, o->check));
}

static void *alloc_buffer(size_t bytes) {
  size_t n = (bytes + ALIGN - 1) / ALIGN * ALIGN;
  void *p = aligned_alloc(ALIGN, n);
  if (p == NULL) die("aligned_alloc", "out of memory", __FILE__, __LINE__);
  memset(p, 0, n);
  return p;
}

static void setup(bench_t *b, tdm_context *ctx, const options_t *o) {
  memset(b, 0, sizeof *b);
  b->ctx = ctx;
  TDM_CHECK(tdm_get_comm(ctx, &b->comm));
  TDM_CHECK(tdm_get_rank(ctx, &b->rank));
  TDM_CHECK(tdm_get_world_size(ctx, &b->nranks));
  TDM_CHECK(tdm_dtype_size(o->dtype, &b->esz));
  b->dtype = o->dtype;
  b->op = o->op;
  b->root = o->root;
  b->mtype = mpi_dtype(o->dtype);
  b->mop = mpi_op(o->op);
  b->send = alloc_buffer(o->max_bytes);
  b->recv = alloc_buffer(o->max_bytes);
}

int main(int argc, char **argv) {
  tdm_context *ctx = NULL;
  bench_t b;
  options_t o;
  summary_t sum[NUM_COLLS];
  int nranks = 0;

  bench_name = "collectives";
  TDM_CHECK(tdm_init(&argc, &argv, NULL, &ctx));
  g_ctx = ctx;
  TDM_CHECK(tdm_get_rank(ctx, &g_rank));
  TDM_CHECK(tdm_get_world_size(ctx, &nranks));
  int rc = parse_options(argc, argv, nranks, &o);
  if (rc != 0) {
    TDM_CHECK(tdm_finalize(ctx));
    return rc < 0 ? 0 : rc;
  }
  setup(&b, ctx, &o);
  print_banner(&b, &o);
  memset(sum, 0, sizeof sum);
  for (int c = 0; c < NUM_COLLS; c++)
    if (o.colls & (1u << c)) run_coll(&b, c, &o, &sum[c]);
  print_summary(&b, &o, sum);
  long wrong = 0;
  for (int c = 0; c < NUM_COLLS; c++) wrong += sum[c].wrong;
  free(b.send);
  free(b.recv);
  g_ctx = NULL;
  TDM_CHECK(tdm_finalize(ctx));
  return wrong > 0 ? 1 : 0;
}
