/* npy.c - NumPy .npy files, memory-mapped.  No Debian package parses .npy
 * in C, so this is a small strict parser by hand of the header NumPy
 * writes: a Python dict literal with exactly the keys 'descr',
 * 'fortran_order' and 'shape', padded with spaces and ended by '\n'.
 * Everything else is refused rather than guessed at, so a row read later
 * is always inside the file. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data.h"

#define FN "tdm_dataset_open_npy"

typedef unsigned long long ull; /* for printf's %llu */

struct tdmi_npy {
  void *map;
  size_t map_bytes;
  const unsigned char *data; /* row 0 */
  size_t row_bytes;
  uint64_t header_bytes;     /* magic to the header's '\n' */
};

/* The dtypes tandem has, as NumPy spells them in descr. */
static const struct {
  const char *descr;
  tdm_dtype dtype;
  size_t size;
} npy_types[] = {{"<f4", TDM_F32, 4}, {"<f8", TDM_F64, 8},
                 {"<f2", TDM_F16, 2}, {"<i4", TDM_I32, 4},
                 {"<i8", TDM_I64, 8}, {"|u1", TDM_U8, 1}};
#define NPY_NTYPES (sizeof npy_types / sizeof npy_types[0])

/* ---- the header dict ---- */

typedef struct {
  const char *path;
  const char *start, *p, *end; /* the header text; p: next to parse */
} cursor;

typedef struct {
  const char *descr; /* the string's text, or the list for a structured */
  int descr_len;     /* dtype; NULL: no 'descr' key yet                 */
  int structured;
  int fortran;       /* -1: no 'fortran_order' key yet */
  int ndim;          /* -1: no 'shape' key yet         */
  int64_t shape[TDMI_DATASET_MAX_NDIM];
} npy_header;

/* TDM_ERR_FORMAT at the cursor: where is "dict" or "field 'NAME'". */
static tdm_status bad(const cursor *c, const char *where, const char *what) {
  return tdmi_error(TDM_ERR_FORMAT, "%s: %s: header %s: %s (header byte "
                    "%td)", FN, c->path, where, what, c->p - c->start);
}

static void skip_spaces(cursor *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t'))
    c->p++;
}

static int peek(const cursor *c) {
  return c->p < c->end ? (unsigned char)*c->p : -1;
}

/* The header's text ends with its '\n'. */
static int at_end(const cursor *c) {
  return peek(c) < 0 || peek(c) == '\n';
}

/* A quoted Python string: *s, *n its text between the quotes. */
static tdm_status parse_string(cursor *c, const char *where, const char **s,
                               size_t *n) {
  int quote = peek(c);
  if (quote != '\'' && quote != '"')
    return bad(c, where, "expected a quoted string");
  const char *q = ++c->p;
  while (c->p < c->end && *c->p != quote && *c->p != '\n')
    c->p += *c->p == '\\' && c->p + 1 < c->end ? 2 : 1;
  if (peek(c) != quote)
    return bad(c, where, "unterminated string");
  *s = q;
  *n = (size_t)(c->p++ - q);
  return TDM_SUCCESS;
}

/* A structured dtype's list of tuples, skipped by matching brackets: it
 * is refused as unsupported whatever it holds. */
static tdm_status skip_brackets(cursor *c, const char *where) {
  int depth = 0;
  do {
    int ch = peek(c);
    if (at_end(c))
      return bad(c, where, "unterminated list");
    if (ch == '\'' || ch == '"') {
      const char *s;
      size_t n;
      TDMI_TRY(parse_string(c, where, &s, &n));
      continue;
    }
    depth += ch == '[' || ch == '(';
    depth -= ch == ']' || ch == ')';
    c->p++;
  } while (depth > 0);
  return TDM_SUCCESS;
}

static tdm_status parse_descr(cursor *c, npy_header *h) {
  const char *where = "field 'descr'";
  if (peek(c) == '[') {
    const char *at = c->p;
    TDMI_TRY(skip_brackets(c, where));
    h->descr = at;
    h->descr_len = (int)(c->p - at > 60 ? 60 : c->p - at);
    h->structured = 1;
    return TDM_SUCCESS;
  }
  size_t n;
  TDMI_TRY(parse_string(c, where, &h->descr, &n));
  h->descr_len = (int)(n > 60 ? 60 : n); /* longer: no dtype, printed cut */
  return TDM_SUCCESS;
}

static tdm_status parse_bool(cursor *c, npy_header *h) {
  size_t left = (size_t)(c->end - c->p);
  if (left >= 4 && !memcmp(c->p, "True", 4))
    h->fortran = 1;
  else if (left >= 5 && !memcmp(c->p, "False", 5))
    h->fortran = 0;
  else
    return bad(c, "field 'fortran_order'", "expected True or False");
  c->p += h->fortran ? 4 : 5;
  return TDM_SUCCESS;
}

/* One extent: decimal digits only (no sign, no L, no float). */
static tdm_status parse_extent(cursor *c, int64_t *v) {
  const char *where = "field 'shape'";
  if (peek(c) == '-')
    return bad(c, where, "negative extent");
  if (peek(c) < '0' || peek(c) > '9')
    return bad(c, where, "extent is not an integer");
  int64_t x = 0;
  for (; peek(c) >= '0' && peek(c) <= '9'; c->p++) {
    int d = *c->p - '0';
    if (x > (INT64_MAX - d) / 10)
      return bad(c, where, "extent exceeds 2^63 - 1");
    x = x * 10 + d;
  }
  int ch = peek(c);
  if (ch == '.' || ch == '_' || (ch >= 'A' && ch <= 'Z') ||
      (ch >= 'a' && ch <= 'z'))
    return bad(c, where, "extent is not an integer");
  *v = x;
  return TDM_SUCCESS;
}

/* A tuple of extents: "()", "(5,)", "(7, 3)", "(7, 3,)"; "(5)" is an
 * int in parentheses, not a tuple. */
static tdm_status parse_shape(cursor *c, npy_header *h) {
  const char *where = "field 'shape'";
  if (peek(c) != '(')
    return bad(c, where, "expected a tuple");
  c->p++;
  int n = 0, commas = 0;
  for (;;) {
    skip_spaces(c);
    if (peek(c) == ')')
      break;
    if (at_end(c))
      return bad(c, where, "unterminated tuple");
    if (n == TDMI_DATASET_MAX_NDIM)
      return bad(c, where, "more than 8 dimensions");
    TDMI_TRY(parse_extent(c, &h->shape[n++]));
    skip_spaces(c);
    if (peek(c) == ',') {
      c->p++;
      commas++;
      continue;
    }
    if (peek(c) != ')')
      return bad(c, where, at_end(c) ? "unterminated tuple"
                                     : "expected ',' or ')'");
  }
  c->p++;
  if (n == 1 && commas == 0)
    return bad(c, where, "not a tuple (a 1-d shape is written (n,))");
  h->ndim = n;
  return TDM_SUCCESS;
}

/* 0: 'descr', 1: 'fortran_order', 2: 'shape', -1: another key. */
static int key_index(const char *key, size_t n) {
  static const char *const keys[] = {"descr", "fortran_order", "shape"};
  for (int i = 0; i < 3; i++)
    if (n == strlen(keys[i]) && !memcmp(key, keys[i], n))
      return i;
  return -1;
}

/* key: value, the key one of the three and not seen before. */
static tdm_status parse_entry(cursor *c, npy_header *h) {
  const char *key;
  size_t n;
  TDMI_TRY(parse_string(c, "dict", &key, &n));
  int which = key_index(key, n);
  if (which < 0) {
    char msg[96];
    snprintf(msg, sizeof msg, "unknown key '%.*s' (only 'descr', "
             "'fortran_order', 'shape')", (int)(n > 30 ? 30 : n), key);
    return bad(c, "dict", msg);
  }
  int seen[3] = {h->descr != NULL, h->fortran >= 0, h->ndim >= 0};
  if (seen[which])
    return bad(c, "dict", "duplicate key");
  skip_spaces(c);
  if (peek(c) != ':')
    return bad(c, "dict", "expected ':' after a key");
  c->p++;
  skip_spaces(c);
  if (which == 0)
    return parse_descr(c, h);
  return which == 1 ? parse_bool(c, h) : parse_shape(c, h);
}

/* After '}': only the spaces NumPy pads with, then the final '\n'. */
static tdm_status check_padding(cursor *c) {
  while (c->p < c->end - 1 && *c->p == ' ')
    c->p++;
  if (c->p != c->end - 1 || *c->p != '\n')
    return bad(c, "dict", "not followed by spaces and a final '\\n'");
  return TDM_SUCCESS;
}

static tdm_status missing(const cursor *c, const char *key) {
  return tdmi_error(TDM_ERR_FORMAT, "%s: %s: header field '%s': missing",
                    FN, c->path, key);
}

static tdm_status parse_dict(cursor *c, npy_header *h) {
  skip_spaces(c);
  if (peek(c) != '{')
    return bad(c, "dict", "does not start with '{'");
  c->p++;
  for (;;) {
    skip_spaces(c);
    if (peek(c) == '}')
      break; /* also after a trailing comma */
    if (at_end(c))
      return bad(c, "dict", "unterminated (no closing '}')");
    TDMI_TRY(parse_entry(c, h));
    skip_spaces(c);
    if (peek(c) == ',') {
      c->p++;
      continue;
    }
    if (peek(c) != '}')
      return bad(c, "dict", at_end(c) ? "unterminated (no closing '}')"
                                      : "expected ',' or '}'");
  }
  c->p++;
  TDMI_TRY(check_padding(c));
  if (!h->descr)
    return missing(c, "descr");
  if (h->fortran < 0)
    return missing(c, "fortran_order");
  return h->ndim < 0 ? missing(c, "shape") : TDM_SUCCESS;
}

/* ---- from the header to rows ---- */

static tdm_status find_type(const char *path, const npy_header *h,
                            int *type) {
  for (size_t i = 0; !h->structured && i < NPY_NTYPES; i++)
    if ((size_t)h->descr_len == strlen(npy_types[i].descr) &&
        !memcmp(h->descr, npy_types[i].descr, (size_t)h->descr_len)) {
      *type = (int)i;
      return TDM_SUCCESS;
    }
  return tdmi_error(TDM_ERR_NOT_SUPPORTED, "%s: %s: header field 'descr': "
                    "%s%.*s%s not supported (only '<f4', '<f8', '<f2', "
                    "'<i4', '<i8', '|u1')", FN, path,
                    h->structured ? "structured dtype " : "dtype '",
                    h->descr_len, h->descr, h->structured ? "" : "'");
}

/* a * b into *out and 1, or 0 when it does not fit size_t. */
static int mul_size(size_t a, size_t b, size_t *out) {
  if (b != 0 && a > SIZE_MAX / b)
    return 0;
  *out = a * b;
  return 1;
}

/* rows, row_bytes and the data size the shape asks for.  A zero extent
 * makes the product 0 whatever the others are, so it counts first. */
static tdm_status shape_sizes(const char *path, const npy_header *h,
                              size_t itemsize, tdmi_rows *r,
                              size_t *data_bytes) {
  size_t row = itemsize;
  int ok = 1;
  for (int i = 1; i < h->ndim; i++)
    row = h->shape[i] == 0 ? 0 : row;
  for (int i = 1; i < h->ndim && row; i++)
    ok = ok && (uint64_t)h->shape[i] <= SIZE_MAX &&
         mul_size(row, (size_t)h->shape[i], &row);
  uint64_t rows = h->ndim ? (uint64_t)h->shape[0] : 1;
  ok = ok && rows <= SIZE_MAX && mul_size(row, (size_t)rows, data_bytes);
  if (!ok)
    return tdmi_error(TDM_ERR_FORMAT, "%s: %s: header field 'shape': the "
                      "array would exceed %zu bytes", FN, path,
                      (size_t)SIZE_MAX);
  r->rows = (size_t)rows;
  r->row_bytes = row;
  return TDM_SUCCESS;
}

static tdm_status check_data(const char *path, size_t need, size_t have) {
  if (need == have)
    return TDM_SUCCESS;
  return tdmi_error(TDM_ERR_FORMAT, "%s: %s: data: header fields 'descr' "
                    "and 'shape' need %zu bytes after the header, the file "
                    "has %zu (%s)", FN, path, need, have,
                    have < need ? "truncated" : "extra bytes");
}

/* ---- the preamble: magic, version, header length ---- */

/* Checks the preamble of the size-byte file at b; *at: the header. */
static tdm_status parse_preamble(const char *path, const unsigned char *b,
                                 size_t size, size_t *at, size_t *len) {
  if (size < 6 || memcmp(b, "\x93NUMPY", 6) != 0)
    return tdmi_error(TDM_ERR_FORMAT, "%s: %s: field 'magic': the file "
                      "does not start with \\x93NUMPY (not a .npy file)",
                      FN, path);
  if (size < 8 || b[6] < 1 || b[6] > 3 || b[7] != 0)
    return tdmi_error(TDM_ERR_FORMAT, "%s: %s: field 'version': %s", FN,
                      path, size < 8 ? "truncated" : "not 1.0, 2.0 or 3.0");
  *at = b[6] == 1 ? 10 : 12; /* 1.0: a 2-byte length; 2.0, 3.0: 4 */
  if (size < *at)
    return tdmi_error(TDM_ERR_FORMAT, "%s: %s: field 'header_len': "
                      "truncated", FN, path);
  *len = 0;
  for (size_t i = *at; i-- > 8;) /* little-endian whatever the host */
    *len = *len << 8 | b[i];
  if (*len > size - *at)
    return tdmi_error(TDM_ERR_FORMAT, "%s: %s: field 'header_len': %zu "
                      "bytes of header run past the end of the %zu-byte "
                      "file", FN, path, *len, size);
  if (*len == 0)
    return tdmi_error(TDM_ERR_FORMAT, "%s: %s: field 'header_len': 0, an "
                      "empty header", FN, path);
  return TDM_SUCCESS;
}

/* Everything about the mapped file but the mapping itself. */
static tdm_status parse_file(const char *path, tdmi_npy *npy,
                             tdmi_rows *r) {
  const unsigned char *b = npy->map;
  size_t at = 0, len = 0;
  TDMI_TRY(parse_preamble(path, b, npy->map_bytes, &at, &len));
  npy_header h = {.fortran = -1, .ndim = -1};
  cursor c = {path, (const char *)b + at, (const char *)b + at,
              (const char *)b + at + len};
  TDMI_TRY(parse_dict(&c, &h));
  int type = 0;
  TDMI_TRY(find_type(path, &h, &type));
  if (h.fortran)
    return tdmi_error(TDM_ERR_NOT_SUPPORTED, "%s: %s: header field "
                      "'fortran_order': True not supported (save a C-order "
                      "array, numpy.ascontiguousarray)", FN, path);
  size_t need = 0;
  TDMI_TRY(shape_sizes(path, &h, npy_types[type].size, r, &need));
  TDMI_TRY(check_data(path, need, npy->map_bytes - at - len));
  r->dtype = npy_types[type].dtype;
  r->ndim = h.ndim;
  memcpy(r->shape, h.shape, sizeof r->shape);
  npy->data = b + at + len;
  npy->row_bytes = r->row_bytes;
  npy->header_bytes = at + len;
  return TDM_SUCCESS;
}

/* ---- opening ---- */

static tdm_status io_error(const char *path, const char *what) {
  return tdmi_error(TDM_ERR_IO, "%s: %s: %s: %s", FN, path, what,
                    strerror(errno));
}

/* Maps the whole file read-only; the mapping outlives the descriptor. */
static tdm_status map_file(const char *path, tdmi_npy *npy) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return io_error(path, "cannot open");
  struct stat sb;
  tdm_status st = TDM_SUCCESS;
  if (fstat(fd, &sb) != 0)
    st = io_error(path, "cannot stat");
  else if (!S_ISREG(sb.st_mode))
    st = tdmi_error(TDM_ERR_IO, "%s: %s: not a regular file", FN, path);
  else if (sb.st_size == 0) /* mmap refuses 0 bytes */
    st = tdmi_error(TDM_ERR_FORMAT, "%s: %s: field 'magic': empty file "
                    "(not a .npy file)", FN, path);
  else if ((uint64_t)sb.st_size > SIZE_MAX)
    st = tdmi_error(TDM_ERR_IO, "%s: %s: too large to map", FN, path);
  if (st == TDM_SUCCESS) {
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      st = io_error(path, "cannot mmap");
    } else {
      npy->map = m;
      npy->map_bytes = (size_t)sb.st_size;
    }
  }
  close(fd);
  return st;
}

tdm_status tdmi_npy_open(const char *path, tdmi_npy **npy, tdmi_rows *rows) {
  *npy = calloc(1, sizeof **npy);
  if (!*npy)
    return tdmi_error(TDM_ERR_NO_MEMORY, "%s: %s: out of memory", FN, path);
  tdm_status st = map_file(path, *npy);
  if (st == TDM_SUCCESS)
    st = parse_file(path, *npy, rows);
  if (st != TDM_SUCCESS) {
    tdmi_npy_close(*npy);
    *npy = NULL;
  }
  return st;
}

const void *tdmi_npy_row(const tdmi_npy *npy, size_t row) {
  return npy->data + row * npy->row_bytes;
}

uint64_t tdmi_npy_bytes_read(const tdmi_npy *npy) {
  return npy->header_bytes;
}

void tdmi_npy_close(tdmi_npy *npy) {
  if (!npy)
    return;
  if (npy->map)
    munmap(npy->map, npy->map_bytes);
  free(npy);
}
