/* bench_util.h - what the benchmarks share: fatal-error reporting that
 * names the rank and call (then tdm_abort, so no rank hangs), and
 * command-line number parsing, rank-0 printing and the median of
 * timings.  Each benchmark sets g_ctx and g_rank once tdm_init succeeded,
 * and bench_name before anything can fail. */
#ifndef TDM_BENCH_UTIL_H
#define TDM_BENCH_UTIL_H

#include <limits.h>
#include <stdarg.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tandem.h"

static tdm_context *g_ctx;
static int g_rank = -1; /* -1 until tdm_init has succeeded */
static const char *bench_name = "bench";

/* printf on rank 0 only, flushed (unused by some benchmarks). */
static void say(const char *format, ...)
    __attribute__((format(printf, 1, 2), unused));
static void say(const char *format, ...) {
  if (g_rank != 0) return;
  va_list ap;
  va_start(ap, format);
  vprintf(format, ap);
  va_end(ap);
  fflush(stdout);
}

static void die(const char *what, const char *detail, const char *file,
                int line) {
  char who[32];
  snprintf(who, sizeof who, "[%s]", bench_name);
  if (g_rank >= 0) snprintf(who, sizeof who, "[rank %d]", g_rank);
  fprintf(stderr, "%s %s:%d: %s failed: %s\n", who, file, line, what,
          detail);
  fflush(stderr);
  if (g_ctx != NULL) tdm_abort(g_ctx, 1);
  exit(1);
}

/* Unused by some benchmarks (bench/optim_gpu). */
static void die_tdm(const char *what, tdm_status st, const char *file,
                    int line) __attribute__((unused));
static void die_tdm(const char *what, tdm_status st, const char *file,
                    int line) {
  char msg[1024], full[1400];
  /* tdm_last_error is valid only until the next tandem call: copy it. */
  snprintf(msg, sizeof msg, "%s", tdm_last_error());
  snprintf(full, sizeof full, "%s (%s)", msg, tdm_status_string(st));
  die(what, full, file, line);
}

static void die_mpi(const char *what, int err, const char *file, int line)
    __attribute__((unused));
static void die_mpi(const char *what, int err, const char *file, int line) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(err, msg, &len) != MPI_SUCCESS)
    snprintf(msg, sizeof msg, "MPI error %d", err);
  die(what, msg, file, line);
}

#define TDM_CHECK(call)                                              \
  do {                                                               \
    tdm_status st_ = (call);                                         \
    if (st_ != TDM_SUCCESS) die_tdm(#call, st_, __FILE__, __LINE__); \
  } while (0)

#define MPI_CHECK(call)                                                \
  do {                                                                 \
    int err_ = (call);                                                 \
    if (err_ != MPI_SUCCESS) die_mpi(#call, err_, __FILE__, __LINE__); \
  } while (0)

/* "64M", "8", "1K", "2G" (binary multiples) -> bytes; 0 on error. */
static size_t parse_bytes(const char *s) {
  char *end = NULL;
  unsigned long long v = strtoull(s, &end, 10);
  if (end == s) return 0;
  switch (*end) {
    case 'K': case 'k': v <<= 10; end++; break;
    case 'M': case 'm': v <<= 20; end++; break;
    case 'G': case 'g': v <<= 30; end++; break;
    default: break;
  }
  if (*end != '\0' || v > (unsigned long long)INT_MAX) return 0;
  return (size_t)v;
}

/* A decimal in [lo, hi]; clears *ok otherwise. */
static long parse_long(const char *s, long lo, long hi, int *ok) {
  char *end = NULL;
  long v = strtol(s, &end, 10);
  if (end == s || *end != '\0' || v < lo || v > hi) *ok = 0;
  return v;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* The median of v[0..n), n >= 1; v is left as it is. */
static double median(const double *v, int n) {
  double *tmp = malloc(sizeof *v * (size_t)n);
  if (!tmp) die("malloc", "out of memory", __FILE__, __LINE__);
  memcpy(tmp, v, sizeof *v * (size_t)n);
  qsort(tmp, (size_t)n, sizeof *tmp, cmp_double);
  double m = n % 2 ? tmp[n / 2] : 0.5 * (tmp[n / 2 - 1] + tmp[n / 2]);
  free(tmp);
  return m;
}

#endif /* TDM_BENCH_UTIL_H */
