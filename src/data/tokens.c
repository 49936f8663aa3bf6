/* tokens.c - llm.c's token shards (dev/data/data_common.py's
 * write_datafile): a header of 256 little-endian int32, header[0] the
 * magic 20240520, header[1] the version (1: uint16 tokens, 2: uint32),
 * header[2] the token count; then the tokens.  The shards are one stream;
 * a row is read with pread alone, so threads share no file offset. */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data.h"

#define FN_OPEN "tdm_dataset_open_tokens"
#define FN_READ "tdm_dataset_read"
#define MAGIC 20240520u
#define HEADER_BYTES 1024u

typedef unsigned long long ull; /* for printf's %llu */

typedef struct {
  char *path;
  int fd;
  unsigned tokbytes; /* 2 or 4 */
  uint64_t first;    /* its first token's index in the stream */
  uint64_t ntok;
} shard;

struct tdmi_tokens {
  shard *shards;
  int count;
  size_t seq_len;
  _Atomic uint64_t bytes_read;
};

static uint32_t le32(const unsigned char *b) {
  return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
         (uint32_t)b[3] << 24;
}

/* n bytes at offset, whatever pieces pread returns them in. */
static tdm_status pread_all(const char *fn, const shard *s, void *buf,
                            size_t n, uint64_t offset) {
  unsigned char *p = buf;
  while (n > 0) {
    ssize_t got = pread(s->fd, p, n, (off_t)offset);
    if (got < 0 && errno == EINTR)
      continue;
    if (got < 0)
      return tdmi_error(TDM_ERR_IO, "%s: %s: read at byte %llu: %s", fn,
                        s->path, (ull)offset, strerror(errno));
    if (got == 0)
      return tdmi_error(TDM_ERR_IO, "%s: %s: end of file at byte %llu "
                        "(truncated since it was opened?)", fn, s->path,
                        (ull)offset);
    p += got;
    n -= (size_t)got;
    offset += (uint64_t)got;
  }
  return TDM_SUCCESS;
}

/* ---- opening ---- */

static tdm_status open_fd(shard *s, uint64_t *size) {
  s->fd = open(s->path, O_RDONLY | O_CLOEXEC);
  if (s->fd < 0)
    return tdmi_error(TDM_ERR_IO, "%s: %s: cannot open: %s", FN_OPEN,
                      s->path, strerror(errno));
  struct stat sb;
  if (fstat(s->fd, &sb) != 0)
    return tdmi_error(TDM_ERR_IO, "%s: %s: cannot stat: %s", FN_OPEN,
                      s->path, strerror(errno));
  if (!S_ISREG(sb.st_mode))
    return tdmi_error(TDM_ERR_IO, "%s: %s: not a regular file", FN_OPEN,
                      s->path);
  *size = (uint64_t)sb.st_size;
  return TDM_SUCCESS;
}

/* The header's fields, and the file size they imply. */
static tdm_status check_header(shard *s, const unsigned char *h,
                               uint64_t size) {
  uint32_t magic = le32(h), version = le32(h + 4);
  int32_t count = (int32_t)le32(h + 8);
  if (magic != MAGIC)
    return tdmi_error(TDM_ERR_FORMAT, "%s: %s: header[0]: bad magic %u, "
                      "not %u (not an llm.c token shard)", FN_OPEN, s->path,
                      magic, MAGIC);
  if (version != 1 && version != 2)
    return tdmi_error(TDM_ERR_FORMAT, "%s: %s: header[1]: version %u, not "
                      "1 (uint16 tokens) or 2 (uint32 tokens)", FN_OPEN,
                      s->path, version);
  if (count < 0)
    return tdmi_error(TDM_ERR_FORMAT, "%s: %s: header[2]: token count %d "
                      "is negative", FN_OPEN, s->path, (int)count);
  s->tokbytes = version == 1 ? 2 : 4;
  s->ntok = (uint64_t)count;
  uint64_t want = HEADER_BYTES + s->ntok * s->tokbytes; /* < 2^34 */
  if (size != want)
    return tdmi_error(TDM_ERR_FORMAT, "%s: %s: header[2]: %llu tokens need "
                      "a %llu-byte file, it has %llu bytes (%s)", FN_OPEN,
                      s->path, (ull)s->ntok, (ull)want, (ull)size,
                      size < want ? "truncated" : "too long");
  return TDM_SUCCESS;
}

static tdm_status open_shard(tdmi_tokens *t, shard *s, const char *path) {
  if (!(s->path = strdup(path)))
    return tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", FN_OPEN);
  uint64_t size = 0;
  TDMI_TRY(open_fd(s, &size));
  if (size < HEADER_BYTES)
    return tdmi_error(TDM_ERR_FORMAT, "%s: %s: truncated: %llu bytes, less "
                      "than the %u-byte header", FN_OPEN, path, (ull)size,
                      HEADER_BYTES);
  unsigned char h[HEADER_BYTES];
  TDMI_TRY(pread_all(FN_OPEN, s, h, sizeof h, 0));
  atomic_fetch_add_explicit(&t->bytes_read, sizeof h, memory_order_relaxed);
  return check_header(s, h, size);
}

static tdm_status check_args(const char *const *paths, int count,
                             size_t seq_len) {
  TDMI_CHECK_PTR(paths, FN_OPEN);
  if (count <= 0)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: count is %d, not "
                      "positive", FN_OPEN, count);
  for (int i = 0; i < count; i++)
    if (!paths[i])
      return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: paths[%d] is NULL",
                        FN_OPEN, i);
  /* A row is seq_len + 1 int32, its shape an int64. */
  if (seq_len == 0 || seq_len > SIZE_MAX / 4 - 1 ||
      (uint64_t)seq_len > (uint64_t)INT64_MAX - 1)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: seq_len %zu is %s",
                      FN_OPEN, seq_len, seq_len ? "too large" : "0");
  return TDM_SUCCESS;
}

static void describe(const tdmi_tokens *t, uint64_t total, tdmi_rows *r) {
  r->rows = total < 2 ? 0 : (size_t)((total - 1) / t->seq_len);
  r->row_bytes = (t->seq_len + 1) * sizeof(int32_t);
  r->dtype = TDM_I32;
  r->ndim = 2;
  r->shape[0] = (int64_t)r->rows;
  r->shape[1] = (int64_t)t->seq_len + 1;
}

tdm_status tdmi_tokens_open(const char *const *paths, int count,
                            size_t seq_len, tdmi_tokens **tokens,
                            tdmi_rows *rows) {
  TDMI_TRY(check_args(paths, count, seq_len));
  tdmi_tokens *t = calloc(1, sizeof *t);
  if (t && !(t->shards = calloc((size_t)count, sizeof *t->shards))) {
    free(t);
    t = NULL;
  }
  if (!t)
    return tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory for %d shards",
                      FN_OPEN, count);
  t->seq_len = seq_len;
  atomic_init(&t->bytes_read, 0);
  tdm_status st = TDM_SUCCESS;
  uint64_t total = 0; /* under 2^31 shards of under 2^31 tokens */
  for (; t->count < count && st == TDM_SUCCESS; t->count++) {
    shard *s = &t->shards[t->count];
    s->fd = -1;
    s->first = total;
    st = open_shard(t, s, paths[t->count]);
    total += s->ntok;
  }
  if (st != TDM_SUCCESS) {
    tdmi_tokens_close(t);
    return st;
  }
  describe(t, total, rows);
  *tokens = t;
  return TDM_SUCCESS;
}

/* ---- reading ---- */

/* The shard holding token pos: the last one starting at or before it
 * (empty shards start where the next does, so they are never it). */
static int shard_of(const tdmi_tokens *t, uint64_t pos) {
  int lo = 0, hi = t->count - 1;
  while (lo < hi) {
    int mid = lo + (hi - lo + 1) / 2;
    if (t->shards[mid].first <= pos)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

/* n tokens of s from its token off, as int32 into out.  The raw tokens
 * are read into the tail of out and widened front to back in place:
 * int32 i ends at byte 4i + 3, before the first byte of uint16 i + 1
 * (at 2n + 2i + 2), so nothing is overwritten before it is read. */
static tdm_status read_span(tdmi_tokens *t, const shard *s, uint64_t off,
                            size_t n, unsigned char *out) {
  size_t raw_bytes = n * s->tokbytes;
  unsigned char *raw = out + n * 4 - raw_bytes;
  TDMI_TRY(pread_all(FN_READ, s, raw, raw_bytes,
                     HEADER_BYTES + off * s->tokbytes));
  atomic_fetch_add_explicit(&t->bytes_read, raw_bytes, memory_order_relaxed);
  for (size_t i = 0; i < n; i++) {
    const unsigned char *b = raw + i * s->tokbytes;
    uint32_t v = s->tokbytes == 2 ? (uint32_t)(b[0] | b[1] << 8) : le32(b);
    if (v > INT32_MAX)
      return tdmi_error(TDM_ERR_FORMAT, "%s: %s: token %llu is %u, above "
                        "INT32_MAX", FN_READ, s->path, (ull)(off + i), v);
    int32_t x = (int32_t)v;
    memcpy(out + 4 * i, &x, sizeof x);
  }
  return TDM_SUCCESS;
}

tdm_status tdmi_tokens_read(tdmi_tokens *t, size_t row, void *out) {
  uint64_t pos = (uint64_t)row * t->seq_len; /* < the total: no wrap */
  uint64_t left = (uint64_t)t->seq_len + 1;
  unsigned char *dst = out;
  /* row < rows puts the whole window inside the stream. */
  for (int i = shard_of(t, pos); left > 0; i++) {
    const shard *s = &t->shards[i];
    uint64_t off = pos - s->first;
    size_t n = (size_t)(s->ntok - off < left ? s->ntok - off : left);
    if (n > 0)
      TDMI_TRY(read_span(t, s, off, n, dst));
    dst += n * 4;
    pos += n;
    left -= n;
  }
  return TDM_SUCCESS;
}

uint64_t tdmi_tokens_bytes_read(tdmi_tokens *t) {
  return atomic_load_explicit(&t->bytes_read, memory_order_relaxed);
}

void tdmi_tokens_close(tdmi_tokens *t) {
  if (!t)
    return;
  for (int i = 0; i < t->count; i++) {
    if (t->shards[i].fd >= 0)
      close(t->shards[i].fd);
    free(t->shards[i].path);
  }
  free(t->shards);
  free(t);
}
