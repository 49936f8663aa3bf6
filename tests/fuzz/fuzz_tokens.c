/* fuzz_tokens.c - libFuzzer harness of the llm.c token-shard reader
 * (src/data/tokens.c; scripts/fuzz.sh builds and runs it).  The input is
 * a whole shard, written to a temporary file, and opened twice: alone,
 * and as the stream [input, an empty shard, input], so that rows cross
 * shard boundaries and skip an empty one.  seq_len is 1 + the low four
 * bits of header[3], a word the format leaves unused (llm.c writes 0).
 *
 * The format is small enough to be checked whole: the reader must accept
 * the input exactly when it is at least 1024 bytes, header[0] is 20240520,
 * header[1] is 1 or 2, header[2] >= 0 and the file is 1024 + header[2]
 * tokens of 2 (version 1) or 4 bytes long; refuse it with TDM_ERR_FORMAT
 * naming the file otherwise.  Accepted, it must serve (total - 1) /
 * seq_len rows of seq_len + 1 int32 (0 rows under 2 tokens); row i the
 * tokens i * seq_len .. i * seq_len + seq_len of the stream, or
 * TDM_ERR_FORMAT when one of them is above INT32_MAX; and count as read
 * the headers plus the tokens of every row read. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/data.h"

static char dir[4096], input[4200], empty[4200];

static void cleanup(void) {
  unlink(input);
  unlink(empty);
  rmdir(dir);
}

static void write_file(const char *path, const void *data, size_t size) {
  FILE *fp = fopen(path, "wb");
  if (!fp || (size && fwrite(data, 1, size, fp) != size) || fclose(fp) != 0)
    abort(); /* the harness's own failure, not a finding */
}

static uint32_t le32(const uint8_t *b) {
  return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
         (uint32_t)b[3] << 24;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  const char *tmp = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/fuzz-tokens.XXXXXX",
           tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(dir))
    abort();
  snprintf(input, sizeof input, "%s/input.bin", dir);
  snprintf(empty, sizeof empty, "%s/empty.bin", dir);
  atexit(cleanup);
  uint8_t h[1024] = {0};
  uint32_t fields[3] = {20240520u, 1, 0};
  for (int i = 0; i < 12; i++)
    h[i] = (uint8_t)(fields[i / 4] >> (8 * (i % 4)));
  write_file(empty, h, sizeof h);
  return 0;
}

/* Token pos of the stream of nshards copies of the input's tokens (the
 * empty shard has none). */
static uint32_t token(const uint8_t *data, uint64_t ntok, unsigned tb,
                      uint64_t pos) {
  const uint8_t *b = data + 1024 + (pos % ntok) * tb;
  return tb == 2 ? (uint32_t)(b[0] | b[1] << 8) : le32(b);
}

static void check_stream(const uint8_t *data, const char *const *paths,
                         int count, int copies, uint64_t ntok, unsigned tb,
                         size_t seq_len) {
  tdmi_tokens *t = NULL;
  tdmi_rows r;
  if (tdmi_tokens_open(paths, count, seq_len, &t, &r) != TDM_SUCCESS)
    __builtin_trap();
  uint64_t total = ntok * (uint64_t)copies;
  size_t rows = total < 2 ? 0 : (size_t)((total - 1) / seq_len);
  if (r.rows != rows || r.row_bytes != (seq_len + 1) * 4 ||
      r.dtype != TDM_I32 || r.ndim != 2 || r.shape[0] != (int64_t)rows ||
      r.shape[1] != (int64_t)seq_len + 1 ||
      tdmi_tokens_bytes_read(t) != 1024u * (unsigned)count)
    __builtin_trap();
  int32_t out[17];
  int all_read = 1;
  for (size_t i = 0; i < rows; i++) {
    int big = 0;
    for (size_t j = 0; j <= seq_len; j++)
      big |= token(data, ntok, tb, i * seq_len + j) > INT32_MAX;
    tdm_status st = tdmi_tokens_read(t, i, out);
    if (big) {
      if (st != TDM_ERR_FORMAT)
        __builtin_trap();
      all_read = 0;
      continue;
    }
    if (st != TDM_SUCCESS)
      __builtin_trap();
    for (size_t j = 0; j <= seq_len; j++)
      if ((uint32_t)out[j] != token(data, ntok, tb, i * seq_len + j))
        __builtin_trap();
  }
  if (all_read && tdmi_tokens_bytes_read(t) !=
                      1024u * (unsigned)count + rows * (seq_len + 1) * tb)
    __builtin_trap();
  tdmi_tokens_close(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  write_file(input, data, size);
  int valid = size >= 1024 && le32(data) == 20240520u &&
              (le32(data + 4) == 1 || le32(data + 4) == 2) &&
              (int32_t)le32(data + 8) >= 0 &&
              size == 1024 + (uint64_t)le32(data + 8) *
                                 (le32(data + 4) == 1 ? 2 : 4);
  size_t seq_len = 1 + (size >= 16 ? data[12] & 15 : 0);
  const char *one[1] = {input};
  tdmi_tokens *t = NULL;
  tdmi_rows r;
  tdm_status st = tdmi_tokens_open(one, 1, seq_len, &t, &r);
  if (!valid) {
    if (st != TDM_ERR_FORMAT || !strstr(tdm_last_error(), input))
      __builtin_trap();
    return 0;
  }
  if (st != TDM_SUCCESS)
    __builtin_trap();
  tdmi_tokens_close(t);
  uint64_t ntok = le32(data + 8);
  unsigned tb = le32(data + 4) == 1 ? 2 : 4;
  check_stream(data, one, 1, 1, ntok, tb, seq_len);
  const char *three[3] = {input, empty, input};
  if (ntok > 0)
    check_stream(data, three, 3, 2, ntok, tb, seq_len);
  return 0;
}
