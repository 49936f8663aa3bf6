/* tfevents.c - TensorBoard event files, written without protobuf.
 *
 * The format (tensorflow/core/lib/io/record_writer.cc and
 * tensorflow/core/util/event.proto; TensorBoard reads it back with
 * tensorboard/backend/event_processing):
 *   record = uint64 length (little-endian), uint32 masked_crc32c(length),
 *            length bytes of data, uint32 masked_crc32c(data)
 *   masked_crc32c(x) = ((c >> 15) | (c << 17)) + 0xa282ead8, c = CRC32C
 * and each record's data is an Event message, of which only these fields
 * are written:
 *   Event   { double wall_time = 1; int64 step = 2;
 *             string file_version = 3; Summary summary = 5; }
 *   Summary { repeated Value value = 1; }
 *   Value   { string tag = 1; float simple_value = 2; }
 * Protobuf's wire format: a key is (field << 3 | wire type), wire type 0
 * a varint, 1 eight bytes, 2 a varint length then the bytes, 5 four
 * bytes; all little-endian. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "track.h"

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void fill_crc_table(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) /* reflected polynomial 0x1EDC6F41 */
      c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    crc_table[i] = c;
  }
}

static uint32_t crc32c(const unsigned char *data, size_t len) {
  pthread_once(&crc_once, fill_crc_table);
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < len; i++)
    c = crc_table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

static uint32_t masked_crc(const unsigned char *data, size_t len) {
  uint32_t c = crc32c(data, len);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

static void put_le(unsigned char *out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; i++)
    out[i] = (unsigned char)(v >> (8 * i));
}

int tdmi_tfevents_record(FILE *fp, const unsigned char *data, size_t len) {
  unsigned char head[12], tail[4];
  put_le(head, len, 8);
  put_le(head + 8, masked_crc(head, 8), 4);
  put_le(tail, masked_crc(data, len), 4);
  if (fwrite(head, 1, 12, fp) != 12 || fwrite(data, 1, len, fp) != len ||
      fwrite(tail, 1, 4, fp) != 4)
    return -1;
  return 0;
}

/* A growing message buffer; a failed allocation sticks in failed. */
typedef struct {
  unsigned char *p;
  size_t len, cap;
  int failed;
} msg;

static void put(msg *m, const void *bytes, size_t n) {
  if (m->failed)
    return;
  if (m->len + n > m->cap) {
    size_t cap = m->cap ? m->cap : 256;
    while (cap < m->len + n)
      cap *= 2;
    unsigned char *p = realloc(m->p, cap);
    if (!p) {
      m->failed = 1;
      return;
    }
    m->p = p;
    m->cap = cap;
  }
  memcpy(m->p + m->len, bytes, n);
  m->len += n;
}

static void put_varint(msg *m, uint64_t v) {
  unsigned char b[10];
  int n = 0;
  do {
    b[n] = (unsigned char)(v & 0x7F);
    v >>= 7;
    b[n++] |= v ? 0x80 : 0;
  } while (v);
  put(m, b, (size_t)n);
}

static void put_key(msg *m, int field, int wire) {
  put_varint(m, (uint64_t)(field << 3 | wire));
}

static void put_bytes(msg *m, int field, const void *bytes, size_t n) {
  put_key(m, field, 2);
  put_varint(m, n);
  put(m, bytes, n);
}

static void put_event_head(msg *m, double wall_time, int64_t step) {
  unsigned char b[8];
  uint64_t bits;
  memcpy(&bits, &wall_time, 8);
  put_le(b, bits, 8);
  put_key(m, 1, 1);
  put(m, b, 8);
  if (step) { /* proto3: a zero field is left out */
    put_key(m, 2, 0);
    put_varint(m, (uint64_t)step);
  }
}

static int finish(FILE *fp, msg *m) {
  int rc = m->failed ? -1 : tdmi_tfevents_record(fp, m->p, m->len);
  free(m->p);
  return rc;
}

int tdmi_tfevents_header(FILE *fp, double wall_time) {
  static const char version[] = "brain.Event:2";
  msg m = {0};
  put_event_head(&m, wall_time, 0);
  put_bytes(&m, 3, version, sizeof version - 1);
  return finish(fp, &m);
}

int tdmi_tfevents_scalars(FILE *fp, double wall_time, int64_t step,
                          int count, const char *const *names,
                          const double *values) {
  msg summary = {0}, m = {0};
  for (int i = 0; i < count; i++) {
    msg value = {0};
    float f = (float)values[i];
    uint32_t bits;
    unsigned char b[4];
    memcpy(&bits, &f, 4);
    put_le(b, bits, 4);
    put_bytes(&value, 1, names[i], strlen(names[i]));
    put_key(&value, 2, 5);
    put(&value, b, 4);
    if (value.failed)
      summary.failed = 1;
    else
      put_bytes(&summary, 1, value.p, value.len);
    free(value.p);
  }
  put_event_head(&m, wall_time, step);
  if (summary.failed)
    m.failed = 1;
  else
    put_bytes(&m, 5, summary.p, summary.len);
  free(summary.p);
  return finish(fp, &m);
}
