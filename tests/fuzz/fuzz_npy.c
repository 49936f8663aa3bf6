/* fuzz_npy.c - libFuzzer harness of the .npy header parser (src/data/
 * npy.c; scripts/fuzz.sh builds and runs it).  The input is a whole
 * file, written to a temporary file that tdmi_npy_open maps.  The
 * properties, besides no crash and no leak:
 *   - refused: TDM_ERR_FORMAT or TDM_ERR_NOT_SUPPORTED (the file exists
 *     and is readable), with a message naming the file;
 *   - accepted: the preamble is \x93NUMPY, version 1-3 and a header
 *     length that ends with '\n' where the data starts; the dtype is one
 *     tandem has; rows and row_bytes follow from the shape and the dtype;
 *     the data (header end to rows * row_bytes) fills the rest of the file
 *     exactly, and every row the reader hands out is those bytes of the
 *     input;
 *   - the same shape and dtype, written with the header NumPy 1.x
 *     writes (format.py: sorted keys, ", }", spaces to a multiple of 64
 *     bytes, '\n') before the same data, read back the same. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/data.h"

static char dir[4096], input[4200], again[4200];

static void cleanup(void) {
  unlink(input);
  unlink(again);
  rmdir(dir);
}

static void write_file(const char *path, const void *head, size_t n1,
                       const void *data, size_t n2) {
  FILE *fp = fopen(path, "wb");
  if (!fp || fwrite(head, 1, n1, fp) != n1 ||
      (n2 && fwrite(data, 1, n2, fp) != n2) || fclose(fp) != 0)
    abort(); /* the harness's own failure, not a finding */
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  const char *tmp = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/fuzz-npy.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(dir))
    abort();
  snprintf(input, sizeof input, "%s/input.npy", dir);
  snprintf(again, sizeof again, "%s/again.npy", dir);
  atexit(cleanup);
  return 0;
}

static const struct {
  tdm_dtype dtype;
  const char *descr;
  size_t size;
} types[] = {{TDM_F32, "<f4", 4}, {TDM_F64, "<f8", 8}, {TDM_F16, "<f2", 2},
             {TDM_I32, "<i4", 4}, {TDM_I64, "<i8", 8}, {TDM_U8, "|u1", 1}};

static int type_of(tdm_dtype dtype) {
  for (int i = 0; i < (int)(sizeof types / sizeof types[0]); i++)
    if (types[i].dtype == dtype)
      return i;
  __builtin_trap(); /* a dtype the format does not have */
}

/* The preamble's own reading: where the data starts. */
static size_t data_start(const uint8_t *b, size_t size) {
  if (size < 10 || memcmp(b, "\x93NUMPY", 6) != 0 || b[6] < 1 || b[6] > 3 ||
      b[7] != 0)
    __builtin_trap();
  size_t at = b[6] == 1 ? 10 : 12, len = 0;
  if (size < at)
    __builtin_trap();
  for (size_t i = at; i-- > 8;)
    len = len << 8 | b[i];
  if (len == 0 || len > size - at || b[at + len - 1] != '\n')
    __builtin_trap();
  return at + len;
}

/* The header NumPy's format.write_array_header_1_0 writes for r (a
 * version 1.0 header; 2.0 when it does not fit 65535 bytes). */
static size_t numpy_header(const tdmi_rows *r, char *out, size_t cap) {
  char dict[512];
  int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': "
                   "False, 'shape': (", types[type_of(r->dtype)].descr);
  for (int i = 0; i < r->ndim; i++)
    n += snprintf(dict + n, sizeof dict - (size_t)n, "%s%lld",
                  i ? ", " : "", (long long)r->shape[i]);
  n += snprintf(dict + n, sizeof dict - (size_t)n, "%s), }",
                r->ndim == 1 ? "," : "");
  size_t len = (size_t)n + 1, pad = 64 - (10 + len) % 64;
  if (10 + len + pad > cap)
    __builtin_trap();
  memcpy(out, "\x93NUMPY\x01\x00", 8);
  out[8] = (char)((len + pad) & 0xff);
  out[9] = (char)((len + pad) >> 8);
  memcpy(out + 10, dict, (size_t)n);
  memset(out + 10 + n, ' ', pad);
  out[10 + len + pad - 1] = '\n';
  return 10 + len + pad;
}

static void check_rows(const tdmi_rows *r) {
  size_t itemsize = types[type_of(r->dtype)].size;
  if (r->ndim < 0 || r->ndim > TDMI_DATASET_MAX_NDIM)
    __builtin_trap();
  unsigned __int128 row = itemsize;
  for (int i = 0; i < r->ndim; i++)
    if (r->shape[i] < 0)
      __builtin_trap();
  for (int i = 1; i < r->ndim; i++)
    row *= (uint64_t)r->shape[i];
  if (r->rows != (r->ndim ? (size_t)r->shape[0] : 1) || r->row_bytes != row)
    __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  write_file(input, data, size, NULL, 0);
  tdmi_npy *npy = NULL;
  tdmi_rows r;
  tdm_status st = tdmi_npy_open(input, &npy, &r);
  if (st != TDM_SUCCESS) {
    if ((st != TDM_ERR_FORMAT && st != TDM_ERR_NOT_SUPPORTED) || npy ||
        !strstr(tdm_last_error(), input))
      __builtin_trap();
    return 0;
  }
  check_rows(&r);
  size_t start = data_start(data, size);
  if (tdmi_npy_bytes_read(npy) != start)
    __builtin_trap();
  /* The data fills the file: no read past its end, no bytes unread. */
  if (r.row_bytes && r.rows > (size - start) / r.row_bytes)
    __builtin_trap();
  if (start + r.rows * r.row_bytes != size)
    __builtin_trap();
  for (size_t i = 0; i < r.rows; i++)
    if (memcmp(tdmi_npy_row(npy, i), data + start + i * r.row_bytes,
               r.row_bytes) != 0)
      __builtin_trap();
  tdmi_npy_close(npy);

  char head[1024];
  size_t n = numpy_header(&r, head, sizeof head);
  write_file(again, head, n, data + start, size - start);
  tdmi_rows r2;
  if (tdmi_npy_open(again, &npy, &r2) != TDM_SUCCESS)
    __builtin_trap();
  if (r2.rows != r.rows || r2.row_bytes != r.row_bytes ||
      r2.dtype != r.dtype || r2.ndim != r.ndim ||
      memcmp(r2.shape, r.shape, (size_t)r.ndim * sizeof r.shape[0]) != 0 ||
      tdmi_npy_bytes_read(npy) != n)
    __builtin_trap();
  tdmi_npy_close(npy);
  return 0;
}
