/* u_data.c - serial unit tests of the dataset readers (src/data/npy.c,
 * tokens.c, dataset.c) on the files of tests/data/readers, written by
 * NumPy and by tests/gen_data_files.py: every good array's shape and rows
 * as NumPy has them, token rows across shards, the exact bytes read,
 * reads from 4 threads at once, and every kind of bad file (unsupported
 * dtypes, and corrupt copies made here in a temporary folder) refused with
 * the right status and a message naming the file.  No MPI. */
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/data.h"

#include "unit_check.h"

static char dir[4096]; /* tests/data/readers */
static char tmp[64];   /* this run's corrupt files */

static const char *in_dir(const char *base, const char *name) {
  static char path[8][4200]; /* a few paths alive at once */
  static int next;
  char *p = path[next++ % 8];
  snprintf(p, sizeof path[0], "%s/%s", base, name);
  return p;
}

/* The whole file (*n bytes), or NULL with *n 0. */
static unsigned char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  unsigned char *b = NULL;
  *n = 0;
  if (f && fseek(f, 0, SEEK_END) == 0) {
    long size = ftell(f);
    rewind(f);
    /* 8 zero bytes more, for the too-long copies */
    b = size >= 0 ? calloc((size_t)size + 8, 1) : NULL;
    if (b && fread(b, 1, (size_t)size, f) == (size_t)size)
      *n = (size_t)size;
  }
  if (f)
    fclose(f);
  CHECK(*n > 0, "cannot read %s", path);
  return b;
}

static void spit(const char *path, const void *b, size_t n) {
  FILE *f = fopen(path, "wb");
  CHECK(f && fwrite(b, 1, n, f) == n && fclose(f) == 0, "cannot write %s",
        path);
}

/* ---- expected.txt ---- */

typedef struct {
  char name[64];
  tdm_dtype dtype;
  int ndim;
  int64_t shape[8];
  unsigned char data[512];
  size_t bytes;
} expect;

static tdm_dtype dtype_of(const char *s) {
  static const char *names[] = {"F32", "F64", "F16", "BF16", "I32", "I64",
                                "U8"};
  for (int i = 0; i < TDM_NUM_DTYPES; i++)
    if (!strcmp(s, names[i]))
      return (tdm_dtype)i;
  return TDM_NUM_DTYPES;
}

static void parse_hex(const char *hex, expect *e) {
  e->bytes = 0;
  if (!strcmp(hex, "-"))
    return;
  for (; hex[0] && hex[1] && e->bytes < sizeof e->data; hex += 2) {
    unsigned v;
    sscanf(hex, "%2x", &v);
    e->data[e->bytes++] = (unsigned char)v;
  }
}

/* "npy NAME DTYPE NDIM SHAPE... DATA" */
static int parse_expect(char *line, expect *e) {
  char *tok = strtok(line, " \n");
  if (!tok || strcmp(tok, "npy"))
    return 0;
  snprintf(e->name, sizeof e->name, "%s", strtok(NULL, " \n"));
  e->dtype = dtype_of(strtok(NULL, " \n"));
  e->ndim = atoi(strtok(NULL, " \n"));
  for (int i = 0; i < e->ndim && i < 8; i++)
    e->shape[i] = atoll(strtok(NULL, " \n"));
  parse_hex(strtok(NULL, " \n"), e);
  return 1;
}

static int read_expected(expect *out, int max) {
  FILE *f = fopen(in_dir(dir, "expected.txt"), "r");
  CHECK(f != NULL, "cannot open %s/expected.txt", dir);
  char line[2048];
  int n = 0;
  while (f && n < max && fgets(line, sizeof line, f))
    n += parse_expect(line, &out[n]);
  if (f)
    fclose(f);
  CHECK(n == 10, "%d arrays in expected.txt", n);
  return n;
}

/* ---- good .npy files ---- */

static void check_rows(tdm_dataset *ds, const expect *e, size_t rows,
                       size_t row_bytes) {
  unsigned char buf[512];
  CHECK(rows * row_bytes == e->bytes, "%s: %zu rows of %zu bytes, %zu "
        "expected", e->name, rows, row_bytes, e->bytes);
  for (size_t r = 0; r < rows && (r + 1) * row_bytes <= e->bytes; r++) {
    memset(buf, 0xa5, sizeof buf);
    OK(tdm_dataset_read(ds, r, buf));
    CHECK(!memcmp(buf, e->data + r * row_bytes, row_bytes), "%s: row %zu",
          e->name, r);
    CHECK(buf[row_bytes] == 0xa5, "%s: row %zu wrote past its end",
          e->name, r);
  }
  FAILS(tdm_dataset_read(ds, rows, buf), TDM_ERR_INVALID_ARGUMENT, "row");
  char text[64];
  snprintf(text, sizeof text, "row %zu out of range (the dataset has %zu "
           "rows)", rows, rows);
  CHECK(strstr(tdm_last_error(), text), "%s", tdm_last_error());
}

static void check_npy(const expect *e) {
  tdm_dataset *ds = NULL;
  const char *path = in_dir(dir, e->name);
  OK(tdm_dataset_open_npy(path, &ds));
  if (!ds)
    return;
  size_t rows = 0, row_bytes = 0, file_bytes;
  tdm_dtype dtype = TDM_NUM_DTYPES;
  int ndim = -1;
  int64_t shape[8];
  uint64_t bytes = 0;
  OK(tdm_dataset_info(ds, &rows, &row_bytes, &dtype));
  OK(tdm_dataset_shape(ds, &ndim, shape));
  CHECK(dtype == e->dtype && ndim == e->ndim, "%s: dtype %d ndim %d",
        e->name, (int)dtype, ndim);
  for (int i = 0; i < ndim && i < 8; i++)
    CHECK(shape[i] == e->shape[i], "%s: shape[%d] = %lld", e->name, i,
          (long long)shape[i]);
  CHECK(rows == (e->ndim ? (size_t)e->shape[0] : 1), "%s: %zu rows",
        e->name, rows);
  check_rows(ds, e, rows, row_bytes);
  /* Only the header is read: every byte before the data. */
  free(slurp(path, &file_bytes));
  OK(tdm_dataset_bytes_read(ds, &bytes));
  CHECK(bytes == file_bytes - e->bytes, "%s: %llu bytes read", e->name,
        (unsigned long long)bytes);
  OK(tdm_dataset_close(ds));
}

/* A few values by hand, against a misreading of expected.txt itself. */
static void check_values(void) {
  tdm_dataset *ds = NULL;
  float f[3];
  OK(tdm_dataset_open_npy(in_dir(dir, "f4_2d.npy"), &ds));
  OK(tdm_dataset_read(ds, 6, f));
  CHECK(f[0] == 6.0f && f[1] == 6.5f && f[2] == 7.0f, "%g %g %g", f[0],
        f[1], f[2]);
  OK(tdm_dataset_close(ds));
  uint16_t h[2];
  OK(tdm_dataset_open_npy(in_dir(dir, "f2.npy"), &ds));
  OK(tdm_dataset_read(ds, 3, h));
  CHECK(tdmi_f16_to_f32(h[0]) == 1.5f && tdmi_f16_to_f32(h[1]) == 1.75f,
        "%04x %04x", h[0], h[1]);
  OK(tdm_dataset_close(ds));
  int64_t q[2];
  OK(tdm_dataset_open_npy(in_dir(dir, "i8.npy"), &ds));
  OK(tdm_dataset_read(ds, 2, q));
  CHECK(q[0] == 4000000000000 - 5 && q[1] == 5000000000000 - 5, "%lld",
        (long long)q[1]);
  OK(tdm_dataset_close(ds));
  double d;
  OK(tdm_dataset_open_npy(in_dir(dir, "scalar.npy"), &ds));
  OK(tdm_dataset_read(ds, 0, &d));
  CHECK(d == 2.5, "%g", d);
  OK(tdm_dataset_close(ds));
}

static void test_good_npy(void) {
  static expect e[16];
  int n = read_expected(e, 16);
  for (int i = 0; i < n; i++)
    check_npy(&e[i]);
  check_values();
}

/* ---- refused .npy files ---- */

/* path must be refused with status and both texts in the message. */
static void refused_npy(const char *path, tdm_status status,
                        const char *text) {
  tdm_dataset *ds = (tdm_dataset *)&ds;
  FAILS(tdm_dataset_open_npy(path, &ds), status, text);
  CHECK(strstr(tdm_last_error(), path) &&
            strstr(tdm_last_error(), "tdm_dataset_open_npy: "),
        "%s", tdm_last_error());
  CHECK(ds == NULL, "%s: dataset not NULL", path);
  if (ds && ds != (tdm_dataset *)&ds)
    tdm_dataset_close(ds);
}

static void test_unsupported(void) {
  refused_npy(in_dir(dir, "fortran.npy"), TDM_ERR_NOT_SUPPORTED,
              "header field 'fortran_order': True not supported");
  refused_npy(in_dir(dir, "be_f4.npy"), TDM_ERR_NOT_SUPPORTED,
              "header field 'descr': dtype '>f4' not supported");
  refused_npy(in_dir(dir, "u2.npy"), TDM_ERR_NOT_SUPPORTED, "'<u2'");
  refused_npy(in_dir(dir, "b1.npy"), TDM_ERR_NOT_SUPPORTED, "'|b1'");
  refused_npy(in_dir(dir, "struct.npy"), TDM_ERR_NOT_SUPPORTED,
              "structured dtype [('a', '<f4'), ('b', '<i4')]");
  refused_npy(in_dir(dir, "no_such_file.npy"), TDM_ERR_IO, "cannot open");
  refused_npy(dir, TDM_ERR_IO, "not a regular file");
}

/* A .npy file as NumPy lays it out: version major.0, header padded with
 * spaces to a multiple of 64 and a '\n' (unless raw), then data. */
static const char *make_npy(const char *name, int major, const char *dict,
                            int raw, size_t data_bytes) {
  unsigned char b[1024] = "\x93NUMPY";
  size_t pre = major == 1 ? 10 : 12, len = strlen(dict);
  if (!raw)
    len = (pre + len + 1 + 63) / 64 * 64 - pre;
  b[6] = (unsigned char)major;
  for (size_t i = 8; i < pre; i++)
    b[i] = (unsigned char)(len >> 8 * (i - 8));
  memset(b + pre, ' ', len);
  memcpy(b + pre, dict, strlen(dict));
  if (!raw)
    b[pre + len - 1] = '\n';
  memset(b + pre + len, 0x3c, data_bytes);
  const char *path = in_dir(tmp, name);
  spit(path, b, pre + len + data_bytes);
  return path;
}

#define D(descr, fortran, shape)                                     \
  "{'descr': '" descr "', 'fortran_order': " fortran ", 'shape': " \
  shape ", }"

static void refused_dict(const char *dict, size_t data, const char *text) {
  refused_npy(make_npy("dict.npy", 1, dict, 0, data), TDM_ERR_FORMAT, text);
}

static void test_bad_dicts(void) {
  refused_dict("{'descr': '<f4', 'fortran_order': False, }", 8,
               "header field 'shape': missing");
  refused_dict("{'fortran_order': False, 'shape': (2,)}", 8,
               "header field 'descr': missing");
  refused_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), "
               "'x': 1, }", 8, "header dict: unknown key 'x'");
  refused_dict("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, "
               "'shape': (2,), }", 8, "header dict: duplicate key");
  refused_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), ", 8,
               "header dict: unterminated");
  refused_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (2,", 8,
               "header field 'shape': unterminated tuple");
  refused_dict("{'descr': '<f4, 'fortran_order': False, 'shape': (2,), }",
               8, "header dict: expected ',' or '}'");
  refused_dict("{'descr' '<f4', 'fortran_order': False, 'shape': (2,), }",
               8, "header dict: expected ':' after a key");
  refused_dict("{'descr': [('a', '<f4'), 'fortran_order': False}", 8,
               "header field 'descr': unterminated list");
  refused_dict("{'descr: '<f4', 'fortran_order': False, 'shape': (2,), }",
               8, "header dict: unknown key");
  refused_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (2,) "
               "'x': 1}", 8, "expected ',' or '}'");
  refused_dict("['descr', '<f4']", 8, "does not start with '{'");
  refused_dict(D("<f4", "False", "(2, -1)"), 8,
               "header field 'shape': negative extent");
  refused_dict(D("<f4", "False", "(1, 2, 3, 4, 5, 6, 7, 8, 9)"), 8,
               "header field 'shape': more than 8 dimensions");
  refused_dict(D("<f4", "False", "(2.0,)"), 8, "extent is not an integer");
  refused_dict(D("<f4", "False", "(2L,)"), 8, "extent is not an integer");
  refused_dict(D("<f4", "False", "(x,)"), 8, "extent is not an integer");
  refused_dict(D("<f4", "False", "(2)"), 8, "not a tuple");
  refused_dict(D("<f4", "False", "[2]"), 8, "expected a tuple");
  refused_dict(D("<f4", "False", "(99999999999999999999,)"), 8, "2^63");
  refused_dict(D("<f4", "False", "(4294967296, 4294967296, 16)"), 8,
               "header field 'shape': the array would exceed");
  refused_dict(D("<f4", "0", "(2,)"), 8,
               "header field 'fortran_order': expected True or False");
  refused_dict("{'descr': 4, 'fortran_order': False, 'shape': (2,)}", 8,
               "header field 'descr': expected a quoted string");
  refused_dict(D("<f4", "False", "(2,)"), 4,
               "data: header fields 'descr' and 'shape' need 8 bytes after "
               "the header, the file has 4 (truncated)");
  refused_dict(D("<f4", "False", "(2,)"), 12, "has 12 (extra bytes)");
  refused_npy(make_npy("raw.npy", 1, D("<f4", "False", "(2,)"), 1, 8),
              TDM_ERR_FORMAT, "not followed by spaces and a final '\\n'");
  refused_npy(make_npy("raw.npy", 1, D("<f4", "False", "(2,)") " x\n", 1, 8),
              TDM_ERR_FORMAT, "not followed by spaces");
}

/* What NumPy would also read: other orders, quotes, no trailing comma. */
static void test_lenient_dicts(void) {
  static const char *ok[] = {
      "{\"shape\": (2, 3), \"fortran_order\": False, \"descr\": \"<f4\"}",
      "{'descr':'<f4','fortran_order':False,'shape':(2,3,)}",
      "  {'shape': (2,3), 'descr': '<f4', 'fortran_order': False,}"};
  for (int i = 0; i < 3; i++) {
    tdm_dataset *ds = NULL;
    int ndim = 0;
    int64_t shape[8];
    OK(tdm_dataset_open_npy(make_npy("ok.npy", 1 + i, ok[i], 0, 24), &ds));
    if (!ds)
      continue;
    OK(tdm_dataset_shape(ds, &ndim, shape));
    CHECK(ndim == 2 && shape[0] == 2 && shape[1] == 3 && shape[2] == 0,
          "%s", ok[i]);
    OK(tdm_dataset_close(ds));
  }
}

/* Copies of a good file with one thing broken. */
static void test_bad_preamble(void) {
  size_t n;
  unsigned char *b = slurp(in_dir(dir, "f4_2d.npy"), &n);
  if (!b)
    return;
  const char *path = in_dir(tmp, "bad.npy");
  b[1] ^= 1;
  spit(path, b, n);
  refused_npy(path, TDM_ERR_FORMAT, "field 'magic'");
  b[1] ^= 1;
  b[6] = 4;
  spit(path, b, n);
  refused_npy(path, TDM_ERR_FORMAT, "field 'version': not 1.0, 2.0 or 3.0");
  b[6] = 1, b[7] = 1;
  spit(path, b, n);
  refused_npy(path, TDM_ERR_FORMAT, "field 'version'");
  b[7] = 0;
  spit(path, b, n - 4);
  refused_npy(path, TDM_ERR_FORMAT, "the file has 80 (truncated)");
  spit(path, b, 50);
  refused_npy(path, TDM_ERR_FORMAT, "field 'header_len': 118 bytes of "
              "header run past the end of the 50-byte file");
  spit(path, b, 9);
  refused_npy(path, TDM_ERR_FORMAT, "field 'header_len': truncated");
  spit(path, b, 0);
  refused_npy(path, TDM_ERR_FORMAT, "empty file");
  b[8] = b[9] = 0;
  spit(path, b, n);
  refused_npy(path, TDM_ERR_FORMAT, "empty header");
  free(b);
}

/* ---- token shards ---- */

static int32_t tok(size_t i) { return (int32_t)((i * 7 + 3) % 50257); }

/* Every row of the seq_len dataset, each checked against the formula. */
static int rows_match(tdm_dataset *ds, size_t seq_len, size_t rows,
                      size_t first_row, size_t step) {
  int32_t *buf = malloc((seq_len + 1) * sizeof *buf);
  int bad = !buf;
  for (size_t k = 0; k < rows && !bad; k++) {
    size_t r = (first_row + k * step) % rows;
    bad |= tdm_dataset_read(ds, r, buf) != TDM_SUCCESS;
    for (size_t j = 0; j <= seq_len && !bad; j++)
      bad |= buf[j] != tok(r * seq_len + j);
  }
  free(buf);
  return !bad;
}

static tdm_dataset *open_stream(const char *const *names, int count,
                                size_t seq_len) {
  const char *paths[8];
  for (int i = 0; i < count; i++)
    paths[i] = in_dir(dir, names[i]);
  tdm_dataset *ds = NULL;
  OK(tdm_dataset_open_tokens(paths, count, seq_len, &ds));
  return ds;
}

static uint64_t bytes_read(const tdm_dataset *ds) {
  uint64_t b = 0;
  OK(tdm_dataset_bytes_read(ds, &b));
  return b;
}

static void test_two_shards(void) {
  static const char *ab[] = {"tok_a.bin", "tok_b.bin"};
  tdm_dataset *ds = open_stream(ab, 2, 64);
  if (!ds)
    return;
  size_t rows = 0, row_bytes = 0;
  tdm_dtype dtype = TDM_F32;
  int ndim = 0;
  int64_t shape[8];
  OK(tdm_dataset_info(ds, &rows, &row_bytes, &dtype));
  OK(tdm_dataset_shape(ds, &ndim, shape));
  CHECK(rows == 1336 / 64 && row_bytes == 65 * 4 && dtype == TDM_I32,
        "%zu rows of %zu", rows, row_bytes);
  CHECK(ndim == 2 && shape[0] == 20 && shape[1] == 65, "%d", ndim);
  CHECK(bytes_read(ds) == 2048, "after open: %llu",
        (unsigned long long)bytes_read(ds));
  int32_t row[65];
  OK(tdm_dataset_read(ds, 15, row)); /* tokens 960..1024: both shards */
  CHECK(row[0] == tok(960) && row[39] == tok(999) && row[40] == tok(1000) &&
            row[64] == tok(1024), "%d %d", row[39], row[40]);
  CHECK(bytes_read(ds) == 2048 + 65 * 2, "%llu",
        (unsigned long long)bytes_read(ds));
  CHECK(rows_match(ds, 64, rows, 0, 1), "rows differ");
  CHECK(bytes_read(ds) == 2048 + 21 * 65 * 2, "%llu",
        (unsigned long long)bytes_read(ds));
  FAILS(tdm_dataset_read(ds, 20, row), TDM_ERR_INVALID_ARGUMENT,
        "tdm_dataset_read: row 20 out of range (the dataset has 20 rows)");
  OK(tdm_dataset_close(ds));
}

static size_t rows_of(const char *const *names, int count, size_t seq_len) {
  size_t rows = 99;
  tdm_dataset *ds = open_stream(names, count, seq_len);
  if (ds) {
    OK(tdm_dataset_info(ds, &rows, NULL, NULL));
    OK(tdm_dataset_close(ds));
  }
  return rows;
}

static void test_row_counts(void) {
  static const char *ab[] = {"tok_a.bin", "tok_b.bin"};
  static const char *e[] = {"tok_empty.bin"};
  static const char *eaebe[] = {"tok_empty.bin", "tok_a.bin", "tok_empty.bin",
                                "tok_b.bin", "tok_empty.bin"};
  CHECK(rows_of(ab, 2, 1) == 1336, "seq_len 1");
  CHECK(rows_of(ab, 2, 1336) == 1, "seq_len 1336");
  CHECK(rows_of(ab, 2, 1337) == 0, "seq_len 1337");
  CHECK(rows_of(ab, 1, 999) == 1 && rows_of(ab, 1, 1000) == 0, "one shard");
  CHECK(rows_of(e, 1, 4) == 0, "empty shard");
  tdm_dataset *ds = open_stream(eaebe, 5, 1);
  if (ds) { /* empty shards anywhere change nothing */
    CHECK(bytes_read(ds) == 5 * 1024, "%llu",
          (unsigned long long)bytes_read(ds));
    CHECK(rows_match(ds, 1, 1336, 0, 1), "rows differ");
    CHECK(rows_match(ds, 1, 1336, 998, 1), "rows differ");
    OK(tdm_dataset_close(ds));
  }
}

static void test_uint32_shards(void) {
  static const char *va[] = {"tok_v2.bin", "tok_a.bin"};
  tdm_dataset *ds = open_stream(va, 2, 100);
  if (!ds)
    return;
  size_t rows = 0;
  OK(tdm_dataset_info(ds, &rows, NULL, NULL));
  CHECK(rows == 1299 / 100, "%zu rows", rows);
  int32_t row[101];
  OK(tdm_dataset_read(ds, 2, row)); /* tok_v2's last 100, tok_a's first */
  int ok = 1;
  for (int j = 0; j < 100; j++)
    ok &= row[j] == 70000 + 13 * (200 + j);
  CHECK(ok && row[100] == tok(0), "%d %d", row[0], row[100]);
  CHECK(bytes_read(ds) == 2048 + 400 + 2, "%llu",
        (unsigned long long)bytes_read(ds));
  OK(tdm_dataset_read(ds, 5, row)); /* inside tok_a: tokens 200..300 */
  CHECK(row[0] == tok(200) && row[100] == tok(300), "%d", row[0]);
  OK(tdm_dataset_close(ds));
}

static void test_token_args(void) {
  const char *paths[2] = {in_dir(dir, "tok_a.bin"), NULL};
  tdm_dataset *ds = (tdm_dataset *)&ds;
  const char *fn = "tdm_dataset_open_tokens: ";
  FAILS(tdm_dataset_open_tokens(NULL, 1, 8, &ds), TDM_ERR_INVALID_ARGUMENT,
        "paths is NULL");
  CHECK(ds == NULL, "dataset not NULL");
  FAILS(tdm_dataset_open_tokens(paths, 0, 8, &ds), TDM_ERR_INVALID_ARGUMENT,
        "count is 0");
  FAILS(tdm_dataset_open_tokens(paths, -1, 8, &ds), TDM_ERR_INVALID_ARGUMENT,
        "count is -1");
  FAILS(tdm_dataset_open_tokens(paths, 2, 8, &ds), TDM_ERR_INVALID_ARGUMENT,
        "paths[1] is NULL");
  FAILS(tdm_dataset_open_tokens(paths, 1, 0, &ds), TDM_ERR_INVALID_ARGUMENT,
        "seq_len 0");
  FAILS(tdm_dataset_open_tokens(paths, 1, SIZE_MAX, &ds),
        TDM_ERR_INVALID_ARGUMENT, "too large");
  CHECK(strstr(tdm_last_error(), fn), "%s", tdm_last_error());
  FAILS(tdm_dataset_open_tokens(paths, 1, 8, NULL), TDM_ERR_INVALID_ARGUMENT,
        "dataset is NULL");
  paths[1] = in_dir(dir, "missing.bin");
  FAILS(tdm_dataset_open_tokens(paths, 2, 8, &ds), TDM_ERR_IO,
        "missing.bin: cannot open: No such file or directory");
  CHECK(ds == NULL, "dataset not NULL");
}

/* ---- corrupt shards ---- */

static void put32(unsigned char *b, uint32_t v) {
  for (int i = 0; i < 4; i++)
    b[i] = (unsigned char)(v >> 8 * i);
}

static void refused_shard(const char *path, const char *text) {
  const char *paths[2] = {in_dir(dir, "tok_a.bin"), path};
  tdm_dataset *ds = (tdm_dataset *)&ds;
  FAILS(tdm_dataset_open_tokens(paths, 2, 8, &ds), TDM_ERR_FORMAT, text);
  CHECK(strstr(tdm_last_error(), path) &&
            strstr(tdm_last_error(), "tdm_dataset_open_tokens: "),
        "%s", tdm_last_error());
  CHECK(ds == NULL, "dataset not NULL");
}

static void test_bad_shards(void) {
  size_t n;
  unsigned char *b = slurp(in_dir(dir, "tok_b.bin"), &n);
  if (!b)
    return;
  const char *path = in_dir(tmp, "bad.bin");
  put32(b, 20240521);
  spit(path, b, n);
  refused_shard(path, "header[0]: bad magic 20240521, not 20240520");
  put32(b, 20240520);
  put32(b + 4, 3);
  spit(path, b, n);
  refused_shard(path, "header[1]: version 3, not 1 (uint16 tokens) or 2");
  put32(b + 4, 1);
  spit(path, b, n - 2);
  refused_shard(path, "header[2]: 337 tokens need a 1698-byte file, it has "
                "1696 bytes (truncated)");
  spit(path, b, n + 2);
  refused_shard(path, "it has 1700 bytes (too long)");
  put32(b + 8, 2000);
  spit(path, b, n);
  refused_shard(path, "2000 tokens need a 5024-byte file, it has 1698 bytes "
                "(truncated)");
  put32(b + 8, 0xffffffffu);
  spit(path, b, n);
  refused_shard(path, "header[2]: token count -1 is negative");
  spit(path, b, 100);
  refused_shard(path, "truncated: 100 bytes, less than the 1024-byte header");
  free(b);
}

/* A uint32 token above INT32_MAX is refused when its row is read. */
static void test_big_token(void) {
  unsigned char b[1024 + 4 * 8] = {0};
  put32(b, 20240520);
  put32(b + 4, 2);
  put32(b + 8, 8);
  put32(b + 1024 + 4 * 5, 0x80000000u);
  const char *path = in_dir(tmp, "big.bin");
  spit(path, b, sizeof b);
  tdm_dataset *ds = NULL;
  OK(tdm_dataset_open_tokens(&path, 1, 2, &ds));
  if (!ds)
    return;
  int32_t row[3];
  OK(tdm_dataset_read(ds, 1, row)); /* tokens 2..4 */
  FAILS(tdm_dataset_read(ds, 2, row), TDM_ERR_FORMAT,
        "token 5 is 2147483648, above INT32_MAX");
  CHECK(strstr(tdm_last_error(), path) &&
            strstr(tdm_last_error(), "tdm_dataset_read: "),
        "%s", tdm_last_error());
  OK(tdm_dataset_close(ds));
}

/* ---- threads ---- */

typedef struct {
  tdm_dataset *tokens, *npy;
  int id, ok;
  unsigned char npy_rows[7 * 12];
} reader;

static void *read_all(void *arg) {
  reader *r = arg;
  /* each thread its own order: rows id, id + 7, ... mod rows */
  r->ok = rows_match(r->tokens, 7, 1336 / 7, (size_t)r->id, 7);
  for (size_t row = 0; row < 7; row++)
    r->ok &= tdm_dataset_read(r->npy, (row + (size_t)r->id) % 7,
                              r->npy_rows + 12 * ((row + r->id) % 7)) ==
             TDM_SUCCESS;
  return NULL;
}

static void test_threads(void) {
  static const char *ab[] = {"tok_a.bin", "tok_b.bin"};
  tdm_dataset *tokens = open_stream(ab, 2, 7), *npy = NULL;
  OK(tdm_dataset_open_npy(in_dir(dir, "f4_2d.npy"), &npy));
  if (!tokens || !npy)
    return;
  reader r[4];
  pthread_t t[4];
  for (int i = 0; i < 4; i++) {
    r[i] = (reader){tokens, npy, i, 0, {0}};
    CHECK(pthread_create(&t[i], NULL, read_all, &r[i]) == 0, "thread %d", i);
  }
  for (int i = 0; i < 4; i++)
    pthread_join(t[i], NULL);
  for (int i = 0; i < 4; i++) {
    CHECK(r[i].ok, "thread %d read other rows", i);
    CHECK(!memcmp(r[i].npy_rows, r[0].npy_rows, sizeof r[0].npy_rows),
          "thread %d", i);
  }
  float first;
  memcpy(&first, r[3].npy_rows, 4);
  CHECK(first == -3.0f, "%g", first);
  /* the counter lost no thread's bytes: 4 x 190 rows of 8 uint16 */
  CHECK(bytes_read(tokens) == 2048 + 4 * 190 * 8 * 2, "%llu",
        (unsigned long long)bytes_read(tokens));
  OK(tdm_dataset_close(tokens));
  OK(tdm_dataset_close(npy));
}

/* ---- handles ---- */

static void test_handles(void) {
  size_t rows;
  char out[4];
  uint64_t b;
  FAILS(tdm_dataset_info(NULL, &rows, NULL, NULL), TDM_ERR_INVALID_ARGUMENT,
        "tdm_dataset_info: dataset is NULL");
  FAILS(tdm_dataset_read(NULL, 0, out), TDM_ERR_INVALID_ARGUMENT,
        "tdm_dataset_read: dataset is NULL");
  FAILS(tdm_dataset_close(NULL), TDM_ERR_INVALID_ARGUMENT, "is NULL");
  FAILS(tdm_dataset_open_npy(NULL, NULL), TDM_ERR_INVALID_ARGUMENT,
        "tdm_dataset_open_npy: dataset is NULL");
  tdm_dataset *ds = NULL;
  FAILS(tdm_dataset_open_npy(NULL, &ds), TDM_ERR_INVALID_ARGUMENT,
        "tdm_dataset_open_npy: path is NULL");
  OK(tdm_dataset_open_npy(in_dir(dir, "scalar.npy"), &ds));
  FAILS(tdm_dataset_read(ds, 0, NULL), TDM_ERR_INVALID_ARGUMENT,
        "tdm_dataset_read: out is NULL");
  FAILS(tdm_dataset_bytes_read(ds, NULL), TDM_ERR_INVALID_ARGUMENT,
        "bytes is NULL");
  OK(tdm_dataset_info(ds, NULL, NULL, NULL));
  OK(tdm_dataset_shape(ds, NULL, NULL));
  OK(tdm_dataset_close(ds));
  /* the registry compares the pointer only: nothing is dereferenced */
  FAILS(tdm_dataset_close(ds), TDM_ERR_INVALID_USAGE, "not live");
  FAILS(tdm_dataset_bytes_read(ds, &b), TDM_ERR_INVALID_USAGE, "not live");
}

/* Open descriptors (Linux), or -1: a failed open must close its shards. */
static int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  int n = -1;
  if (d) {
    while (readdir(d))
      n++;
    closedir(d);
  }
  return n;
}

static void remove_tmp(void) {
  static const char *names[] = {"dict.npy", "raw.npy", "ok.npy", "bad.npy",
                                "bad.bin", "big.bin"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    unlink(in_dir(tmp, names[i]));
  CHECK(rmdir(tmp) == 0, "cannot remove %s", tmp);
}

int main(void) {
  const char *src = getenv("TDM_SRCDIR");
  snprintf(dir, sizeof dir, "%s/tests/data/readers", src ? src : ".");
  snprintf(tmp, sizeof tmp, "/tmp/u_data.XXXXXX");
  if (!mkdtemp(tmp)) {
    printf("u_data: FAIL (no temporary folder)\n");
    return 1;
  }
  int fds = count_fds();
  test_good_npy();
  test_unsupported();
  test_bad_dicts();
  test_lenient_dicts();
  test_bad_preamble();
  test_two_shards();
  test_row_counts();
  test_uint32_shards();
  test_token_args();
  test_bad_shards();
  test_big_token();
  test_threads();
  test_handles();
  remove_tmp();
  CHECK(count_fds() == fds, "%d descriptors open, %d before", count_fds(),
        fds);
  printf("u_data: %s (%d failed checks)\n", failures ? "FAIL" : "PASS",
         failures);
  return failures ? 1 : 0;
}
