/* metrics.c - tdm_log_scalar: scalars to DIR/metrics.jsonl (one JSON
 * object a line, through jansson) and to a TensorBoard event file in
 * DIR, on the main rank or on every rank (metrics_all_ranks).
 * Files are appended to, so a resumed run continues its curves; they
 * are flushed at most once a second and at tdm_finalize, so logging
 * every step costs a buffered write, not a system call. */
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "track.h"

#define FLUSH_S 1.0
#define NAME_MAX_LEN 200

struct tdmi_metrics {
  pthread_mutex_t lock; /* tdm_log_scalar may be called from any thread */
  FILE *jsonl, *events;
  char jsonl_path[4096], events_path[4096];
  double last_flush;
};

static double wall_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static tdm_status open_file(const tdm_context *ctx, char *path, FILE **fp) {
  *fp = fopen(path, "ab");
  if (!*fp)
    return tdmi_error(TDM_ERR_IO, "rank %d: metrics file '%s' cannot be "
                      "opened: %s", ctx->rank, path, strerror(errno));
  return TDM_SUCCESS;
}

static void close_files(struct tdmi_metrics *m) {
  if (m->jsonl)
    fclose(m->jsonl);
  if (m->events)
    fclose(m->events);
  pthread_mutex_destroy(&m->lock);
  free(m);
}

tdm_status tdmi_metrics_open(tdm_context *ctx) {
  const char *dir = ctx->config.metrics_dir;
  ctx->metrics = NULL;
  if (!dir || (ctx->rank != 0 && !ctx->config.metrics_all_ranks))
    return TDM_SUCCESS;
  if (tdmi_make_dirs(dir) != TDM_SUCCESS) {
    char why[512];
    snprintf(why, sizeof why, "%s", tdm_last_error());
    return tdmi_error(TDM_ERR_IO, "rank %d: metrics_dir '%s': %s", ctx->rank,
                      dir, why);
  }
  struct tdmi_metrics *m = calloc(1, sizeof *m);
  if (!m)
    return tdmi_error(TDM_ERR_NO_MEMORY, "out of memory");
  pthread_mutex_init(&m->lock, NULL);
  char suffix[32] = "";
  if (ctx->config.metrics_all_ranks)
    snprintf(suffix, sizeof suffix, ".rank%d", ctx->rank);
  double now = wall_now();
  /* TensorBoard's own name: events.out.tfevents.<time>.<host>, with
   * the pid so that two runs into one folder never share a file. */
  int long_path =
      snprintf(m->jsonl_path, sizeof m->jsonl_path, "%s/metrics%s.jsonl",
               dir, suffix) >= (int)sizeof m->jsonl_path ||
      snprintf(m->events_path, sizeof m->events_path,
               "%s/events.out.tfevents.%ld.%s.%ld%s", dir, (long)now,
               ctx->host, (long)getpid(), suffix) >= (int)sizeof m->events_path;
  tdm_status st = long_path ? tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                                         "metrics_dir '%s' is too long", dir)
                            : open_file(ctx, m->jsonl_path, &m->jsonl);
  if (st == TDM_SUCCESS)
    st = open_file(ctx, m->events_path, &m->events);
  if (st == TDM_SUCCESS && tdmi_tfevents_header(m->events, now) != 0)
    st = tdmi_error(TDM_ERR_IO, "rank %d: metrics file '%s': %s", ctx->rank,
                    m->events_path, strerror(errno));
  if (st != TDM_SUCCESS) {
    close_files(m);
    return st;
  }
  m->last_flush = now;
  ctx->metrics = m;
  return TDM_SUCCESS;
}

void tdmi_metrics_close(tdm_context *ctx) {
  if (ctx->metrics)
    close_files(ctx->metrics);
  ctx->metrics = NULL;
}

/* One line: {"step": N, "time": T, "name": value, ...}; inf and NaN,
 * which JSON cannot spell, as null. */
static int write_line(FILE *fp, double now, int64_t step, int count,
                      const char *const *names, const double *values) {
  json_t *o = json_object();
  int rc = o ? 0 : -1;
  if (!rc)
    rc = json_object_set_new(o, "step", json_integer(step)) |
         json_object_set_new(o, "time", json_real(now));
  for (int i = 0; !rc && i < count; i++) {
    json_t *v = json_real(values[i]); /* NULL for inf and NaN */
    rc = json_object_set_new(o, names[i], v ? v : json_null());
  }
  if (!rc)
    rc = json_dumpf(o, fp, JSON_COMPACT | JSON_PRESERVE_ORDER |
                               JSON_REAL_PRECISION(17));
  if (!rc && fputc('\n', fp) == EOF)
    rc = -1;
  json_decref(o);
  return rc;
}

tdm_status tdmi_metrics_write(tdm_context *ctx, int64_t step, int count,
                              const char *const *names, const double *values) {
  struct tdmi_metrics *m = ctx->metrics;
  if (!m)
    return TDM_SUCCESS;
  pthread_mutex_lock(&m->lock);
  double now = wall_now();
  errno = 0;
  const char *failed = NULL;
  if (write_line(m->jsonl, now, step, count, names, values) != 0)
    failed = m->jsonl_path;
  else if (tdmi_tfevents_scalars(m->events, now, step, count, names,
                                 values) != 0)
    failed = m->events_path;
  else if (now - m->last_flush >= FLUSH_S) {
    if (fflush(m->jsonl) != 0)
      failed = m->jsonl_path;
    else if (fflush(m->events) != 0)
      failed = m->events_path;
    m->last_flush = now;
  }
  int err = errno;
  pthread_mutex_unlock(&m->lock);
  if (failed)
    return tdmi_error(TDM_ERR_IO, "rank %d: metrics file '%s' cannot be "
                      "written: %s", ctx->rank, failed,
                      err ? strerror(err) : "out of memory");
  return TDM_SUCCESS;
}

/* ---- the public calls ---- */

static tdm_status check_name(const char *name, int i, const char *fn) {
  if (!name)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: names[%d] is NULL", fn,
                      i);
  size_t n = strlen(name);
  if (n == 0 || n > NAME_MAX_LEN)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: name %d '%s' must have "
                      "1 to %d characters", fn, i, name, NAME_MAX_LEN);
  for (size_t k = 0; k < n; k++)
    if ((unsigned char)name[k] < 0x20 || name[k] == 0x7F)
      return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: name %d has a control "
                        "character at byte %zu", fn, i, k);
  if (!strcmp(name, "step") || !strcmp(name, "time"))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: '%s' is the name of "
                      "every line's own field; choose another", fn, name);
  return TDM_SUCCESS;
}

static tdm_status log_checked(tdm_context *ctx, int64_t step, int count,
                              const char *const *names, const double *values,
                              const char *fn) {
  TDMI_CHECK_CTX(ctx, fn);
  TDMI_CHECK_PTR(names, fn);
  TDMI_CHECK_PTR(values, fn);
  if (count < 1)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: count = %d must be >= 1",
                      fn, count);
  if (step < 0)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: step = %lld must be "
                      ">= 0", fn, (long long)step);
  for (int i = 0; i < count; i++)
    TDMI_TRY(check_name(names[i], i, fn));
  return tdmi_metrics_write(ctx, step, count, names, values);
}

tdm_status tdm_log_scalars(tdm_context *ctx, int64_t step, int count,
                           const char *const *names, const double *values) {
  return log_checked(ctx, step, count, names, values, "tdm_log_scalars");
}

tdm_status tdm_log_scalar(tdm_context *ctx, const char *name, int64_t step,
                          double value) {
  TDMI_CHECK_PTR(name, "tdm_log_scalar");
  return log_checked(ctx, step, 1, &name, &value, "tdm_log_scalar");
}
