/* log.c - rank-prefixed logging (TANDEM_LOG, TANDEM_LOG_FILE) and printing
 * on the main rank. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "core.h"

/* Expands %r (rank), %h (host), %p (pid) and %% in pattern. */
static int expand_pattern(const tdm_context *ctx, const char *pattern,
                          char *out, size_t cap) {
  size_t n = 0;
  for (const char *p = pattern; *p; p++) {
    char piece[80];
    if (p[0] == '%' && p[1]) {
      switch (*++p) {
      case 'r': snprintf(piece, sizeof piece, "%d", ctx->rank); break;
      case 'h': snprintf(piece, sizeof piece, "%s", ctx->host); break;
      case 'p': snprintf(piece, sizeof piece, "%ld", (long)getpid()); break;
      case '%': strcpy(piece, "%"); break;
      default: snprintf(piece, sizeof piece, "%%%c", *p); break;
      }
    } else {
      piece[0] = *p;
      piece[1] = '\0';
    }
    size_t len = strlen(piece);
    if (n + len >= cap)
      return -1;
    memcpy(out + n, piece, len + 1);
    n += len;
  }
  return 0;
}

tdm_status tdmi_log_open(tdm_context *ctx) {
  ctx->log_fp = stderr;
  if (!ctx->config.log_file)
    return TDM_SUCCESS;
  char path[4096];
  if (expand_pattern(ctx, ctx->config.log_file, path, sizeof path) != 0)
    return tdmi_error(TDM_ERR_CONFIG, "log file pattern '%s' is too long",
                      ctx->config.log_file);
  FILE *fp = fopen(path, "a");
  if (!fp)
    return tdmi_error(TDM_ERR_IO, "rank %d: log file '%s' cannot be opened: %s",
                      ctx->rank, path, strerror(errno));
  setvbuf(fp, NULL, _IOLBF, 0);
  ctx->log_fp = fp;
  return TDM_SUCCESS;
}

void tdmi_log_close(tdm_context *ctx) {
  if (ctx->log_fp && ctx->log_fp != stderr)
    fclose(ctx->log_fp);
  ctx->log_fp = stderr;
}

void tdmi_vlog(const tdm_context *ctx, tdm_log_level level,
               const char *format, va_list ap) {
  if (level <= TDM_LOG_OFF || level > TDM_LOG_TRACE ||
      (int)level > ctx->config.log_level)
    return;
  /* One write per line so lines of different ranks do not interleave. */
  static const char *const tags[] = {"", "WARN", "INFO", "DEBUG", "TRACE"};
  char line[2048];
  int n = snprintf(line, sizeof line, "[rank %d/%d %s:%ld] tandem %s: ",
                   ctx->rank, ctx->size, ctx->host, (long)getpid(),
                   tags[level]);
  if (n < 0 || (size_t)n >= sizeof line)
    return;
  vsnprintf(line + n, sizeof line - (size_t)n - 1, format, ap);
  strcat(line, "\n");
  fputs(line, ctx->log_fp);
  fflush(ctx->log_fp);
}

void tdmi_log(const tdm_context *ctx, tdm_log_level level, const char *format,
              ...) {
  va_list ap;
  va_start(ap, format);
  tdmi_vlog(ctx, level, format, ap);
  va_end(ap);
}

tdm_status tdm_log(const tdm_context *ctx, tdm_log_level level,
                   const char *format, ...) {
  TDMI_CHECK_CTX(ctx, "tdm_log");
  TDMI_CHECK_PTR(format, "tdm_log");
  if (level == TDM_LOG_OFF || (unsigned)level > TDM_LOG_TRACE)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "tdm_log: level %d is not a message level (warn .. "
                      "trace)", (int)level);
  va_list ap;
  va_start(ap, format);
  tdmi_vlog(ctx, level, format, ap);
  va_end(ap);
  return TDM_SUCCESS;
}

tdm_status tdm_print(const tdm_context *ctx, const char *format, ...) {
  TDMI_CHECK_CTX(ctx, "tdm_print");
  TDMI_CHECK_PTR(format, "tdm_print");
  if (ctx->rank != 0)
    return TDM_SUCCESS;
  va_list ap;
  va_start(ap, format);
  vfprintf(stdout, format, ap);
  va_end(ap);
  fflush(stdout);
  return TDM_SUCCESS;
}
