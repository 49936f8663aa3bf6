/* text_to_shard.c - byte-level tokenizer: text files to token shards in
 * llm.c's format (a header of 256 int32: magic 20240520, version 1, the
 * token count; then one uint16 token per byte), the last --val percent of
 * the bytes into a second shard held out for validation.
 *   text_to_shard [--val PERCENT] TRAIN.bin VAL.bin FILE...
 * Files reached twice (the symbolic links of /usr/share/common-licenses)
 * are read once.  Plain C, no tandem. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int write_shard(const char *path, const unsigned char *bytes,
                       size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) {
    perror(path);
    return 0;
  }
  int32_t header[256] = {20240520, 1, (int32_t)n};
  int ok = fwrite(header, sizeof header, 1, f) == 1;
  for (size_t i = 0; ok && i < n; i++) {
    uint16_t token = bytes[i]; /* little-endian hosts, as llm.c */
    ok = fwrite(&token, sizeof token, 1, f) == 1;
  }
  if (fclose(f) != 0 || !ok) {
    perror(path);
    return 0;
  }
  return 1;
}

/* Appends the file to *text, unless an earlier argument was that file. */
static int append(const char *path, struct stat *seen, int nseen,
                  unsigned char **text, size_t *n) {
  struct stat st;
  if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
    fprintf(stderr, "text_to_shard: %s: not a readable file\n", path);
    return 0;
  }
  for (int i = 0; i < nseen; i++)
    if (seen[i].st_dev == st.st_dev && seen[i].st_ino == st.st_ino)
      return 1;
  seen[nseen] = st;
  FILE *f = fopen(path, "rb");
  unsigned char *grown = realloc(*text, *n + (size_t)st.st_size + 1);
  if (!f || !grown) {
    fprintf(stderr, "text_to_shard: %s: cannot read\n", path);
    if (f)
      fclose(f);
    return 0;
  }
  *text = grown;
  *n += fread(*text + *n, 1, (size_t)st.st_size, f);
  fclose(f);
  return 2;
}

int main(int argc, char **argv) {
  int first = 1;
  double val_percent = 5;
  if (argc > 2 && !strcmp(argv[1], "--val")) {
    val_percent = atof(argv[2]);
    first = 3;
  }
  if (argc - first < 3 || val_percent < 0 || val_percent >= 100) {
    fprintf(stderr, "usage: text_to_shard [--val PERCENT] TRAIN.bin VAL.bin "
            "FILE...\n");
    return 2;
  }
  struct stat *seen = calloc((size_t)argc, sizeof *seen);
  unsigned char *text = NULL;
  size_t n = 0;
  int nseen = 0;
  for (int i = first + 2; i < argc; i++) {
    int r = append(argv[i], seen, nseen, &text, &n);
    if (!r)
      return 1;
    nseen += r == 2;
  }
  size_t nval = (size_t)((double)n * val_percent / 100);
  if (n > INT32_MAX || !write_shard(argv[first], text, n - nval) ||
      !write_shard(argv[first + 1], text + (n - nval), nval))
    return 1;
  printf("text_to_shard: %d files, %zu bytes: %zu training tokens in %s, "
         "%zu validation tokens in %s\n", nseen, n, n - nval, argv[first],
         nval, argv[first + 1]);
  free(text);
  free(seen);
  return 0;
}
