/* fuzz_marker.c - libFuzzer harness of the checkpoint's done marker
 * parser (tdmi_commit_verify, src/ckpt/commit.c; scripts/fuzz.sh builds
 * and runs it).  The marker is "tandem-checkpoint 1\n" then a line
 * "<size> <name>\n" per file of the folder.  The input is a whole marker,
 * written as the file done of a temporary checkpoint folder whose other
 * files the harness made with sizes it knows (files[] below).
 *
 * The properties, besides no crash and no leak:
 *   - refused: TDM_ERR_FORMAT (or TDM_ERR_NO_MEMORY) naming the folder;
 *   - accepted: the text holds no NUL byte (the parser's string functions
 *     would stop there, and whatever follows go unchecked); its first
 *     line is "tandem-checkpoint 1"; and every line after it (read here
 *     as the grammar the parser's sscanf format accepts: white space, a
 *     decimal size, white space, a name to the line's end) ends with '\n'
 *     and names a file of files[] with its size: a marker that verifies
 *     lists nothing missing or truncated. */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt/ckpt.h"

static char dir[4096], marker[4200];

static const struct {
  const char *name;
  long long size; /* -1: the marker itself */
} files[] = {{"model.safetensors", 24}, {"optimizer.safetensors", 0},
             {"state.json", 3},         {"user_data.bin", 7},
             {"done", -1}};
#define NFILES (sizeof files / sizeof files[0])

static char *path_of(const char *name) {
  static char p[4400];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  return p;
}

static void write_file(const char *path, const void *data, size_t size) {
  FILE *fp = fopen(path, "wb");
  if (!fp || (size && fwrite(data, 1, size, fp) != size) || fclose(fp) != 0)
    abort(); /* the harness's own failure, not a finding */
}

static void cleanup(void) {
  for (size_t i = 0; i < NFILES; i++)
    unlink(path_of(files[i].name));
  rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  const char *tmp = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/fuzz-marker.XXXXXX",
           tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(dir))
    abort();
  snprintf(marker, sizeof marker, "%s/done", dir);
  atexit(cleanup);
  static const char zeros[64];
  for (size_t i = 0; i < NFILES; i++)
    if (files[i].size >= 0)
      write_file(path_of(files[i].name), zeros, (size_t)files[i].size);
  return 0;
}

/* The size of the folder's file name; -1 when there is none. */
static long long size_of(const char *name, size_t n, size_t marker_size) {
  for (size_t i = 0; i < NFILES; i++)
    if (strlen(files[i].name) == n && memcmp(files[i].name, name, n) == 0)
      return files[i].size < 0 ? (long long)marker_size : files[i].size;
  return -1;
}

/* An optional sign and decimal digits at *p; 0 when none or too large. */
static int number(const char **p, const char *end, long long *v) {
  const char *s = *p;
  int neg = s < end && *s == '-';
  s += s < end && (*s == '-' || *s == '+');
  if (s == end || !isdigit((unsigned char)*s))
    return 0;
  long long x = 0;
  for (; s < end && isdigit((unsigned char)*s); s++) {
    if (x > (INT64_MAX - 9) / 10)
      return 0;
    x = x * 10 + (*s - '0');
  }
  *v = neg ? -x : x;
  *p = s;
  return 1;
}

static const char *spaces(const char *p, const char *end) {
  while (p < end && isspace((unsigned char)*p))
    p++;
  return p;
}

static void check_accepted(const uint8_t *data, size_t size) {
  const char *p = (const char *)data, *end = p + size;
  if (memchr(p, '\0', size))
    __builtin_trap(); /* verified a marker cut short by a NUL */
  long long v = 0;
  char head[32];
  size_t n = (size_t)snprintf(head, sizeof head, "tandem-checkpoint %d\n",
                              TDMI_CKPT_FORMAT_VERSION);
  if (size < n || memcmp(p, head, n) != 0)
    __builtin_trap(); /* not the first line the writer writes */
  for (p += n; p < end;) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl)
      __builtin_trap(); /* a last line without its '\n' */
    const char *q = spaces(p, nl);
    if (!number(&q, nl, &v))
      __builtin_trap();
    q = spaces(q, nl);
    if (size_of(q, (size_t)(nl - q), size) != v)
      __builtin_trap(); /* a file missing, or not of the listed size */
    p = nl + 1;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  write_file(marker, data, size);
  tdm_status st = tdmi_commit_verify(dir);
  if (st != TDM_SUCCESS) {
    if ((st != TDM_ERR_FORMAT && st != TDM_ERR_NO_MEMORY) ||
        !strstr(tdm_last_error(), dir))
      __builtin_trap();
    return 0;
  }
  check_accepted(data, size);
  return 0;
}
