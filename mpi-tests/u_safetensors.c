/* u_safetensors.c - serial unit tests of the safetensors header parser
 * and builder (src/ckpt/safetensors.c): every kind of malformed header is
 * refused with TDM_ERR_FORMAT and a sentence naming the field, a header
 * built here parses back, and a file written by Python's safetensors
 * package parses.  No MPI: every rank runs the same checks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ckpt/safetensors.h"
#include "core/core.h"

#include "unit_check.h"

/* Parses json as the header of a file with data_size bytes of data. */
static tdm_status parse(const char *json, uint64_t data_size,
                        tdmi_st_header *h) {
  size_t n = strlen(json);
  return tdmi_st_parse("x.safetensors", json, n, 8 + n + data_size, h);
}

/* json must be refused with TDM_ERR_FORMAT and a message holding text;
 * the header is left empty. */
#define REFUSED(json, data_size, text)                                 \
  do {                                                                 \
    tdmi_st_header h_;                                                 \
    FAILS(parse((json), (data_size), &h_), TDM_ERR_FORMAT, (text));    \
    CHECK(h_.ntensors == 0 && h_.tensors == NULL, "%s", (json));       \
    CHECK(strstr(tdm_last_error(), "x.safetensors") != NULL, "%s",     \
          tdm_last_error());                                           \
    tdmi_st_header_free(&h_); /* in case it parsed after all */        \
  } while (0)

static void put_le64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static void test_header_length(void) {
  uint8_t b[8] = {0};
  uint64_t n = 7;
  FAILS(tdmi_st_header_length("x.safetensors", b, 5, &n), TDM_ERR_FORMAT,
        "too short for the 8-byte header length");
  CHECK(n == 0, "n = %llu", (unsigned long long)n);
  put_le64(b, 100);
  FAILS(tdmi_st_header_length("x.safetensors", b, 50, &n), TDM_ERR_FORMAT,
        "header length 100 runs past the end of the 50-byte file");
  put_le64(b, TDMI_ST_MAX_HEADER + 1ull);
  FAILS(tdmi_st_header_length("x.safetensors", b, 1ull << 40, &n),
        TDM_ERR_FORMAT, "header length 100000001 exceeds");
  put_le64(b, UINT64_MAX); /* 8 + n must not wrap around */
  FAILS(tdmi_st_header_length("x.safetensors", b, 1ull << 40, &n),
        TDM_ERR_FORMAT, "exceeds");
  put_le64(b, 0x0102030405060708ull >> 40); /* little-endian: 0x010203 */
  OK(tdmi_st_header_length("x.safetensors", b, 1ull << 30, &n));
  CHECK(n == 0x010203, "n = %llx", (unsigned long long)n);
  put_le64(b, 42);
  OK(tdmi_st_header_length("x.safetensors", b, 50, &n));
  CHECK(n == 42, "n = %llu", (unsigned long long)n);
  tdmi_st_header h;
  FAILS(tdmi_st_parse("x.safetensors", "{}", 2, 9, &h), TDM_ERR_FORMAT,
        "header length 2 does not fit the 9-byte file");
}

#define T(dtype, shape, offsets) \
  "{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":" offsets "}"

static void test_not_json(void) {
  REFUSED("{\"a\":", 0, "header is not valid JSON");
  REFUSED("", 0, "header is not valid JSON");
  REFUSED("{} x", 0, "header is not valid JSON");
  REFUSED("[1, 2]", 0, "header is not a JSON object");
  REFUSED("\"text\"", 0, "header is not a JSON object");
  REFUSED("{\"a\":3}", 0, "tensor \"a\": value is not an object");
  REFUSED("{\"a\":[1]}", 0, "tensor \"a\": value is not an object");
  REFUSED("{\"a\":" T("F32", "[1]", "[0,4]") ",\"a\":" T("F32", "[1]",
          "[4,8]") "}", 8, "duplicate object key");
  /* bigger than json_int_t: jansson refuses it */
  REFUSED("{\"a\":" T("U8", "[1]", "[0,99999999999999999999]") "}", 1,
          "not valid JSON");
}

static void test_fields(void) {
  REFUSED("{\"a\":" T("F128", "[1]", "[0,16]") "}", 16,
          "tensor \"a\": dtype \"F128\" unknown");
  REFUSED("{\"a\":" T("f32", "[1]", "[0,4]") "}", 4, "dtype \"f32\" unknown");
  REFUSED("{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
          "tensor \"a\": dtype is not a string");
  REFUSED("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
          "tensor \"a\": no \"dtype\" field");
  REFUSED("{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,4]}}", 4,
          "tensor \"a\": no \"shape\" field");
  REFUSED("{\"a\":{\"dtype\":\"U8\",\"shape\":[4]}}", 4,
          "tensor \"a\": no \"data_offsets\" field");
  REFUSED("{\"a\":" T("F32", "3", "[0,12]") "}", 12,
          "tensor \"a\": shape is not an array");
  REFUSED("{\"a\":" T("F32", "[3,-1]", "[0,12]") "}", 12,
          "tensor \"a\": shape[1] is not a non-negative integer");
  REFUSED("{\"a\":" T("F32", "[3,1.0]", "[0,12]") "}", 12,
          "shape[1] is not a non-negative integer");
  REFUSED("{\"a\":" T("U8", "[1,1,1,1,1,1,1,1,1]", "[0,1]") "}", 1,
          "tensor \"a\": shape has 9 dimensions, more than 8");
  REFUSED("{\"a\":" T("U8", "[4294967296,4294967296]", "[0,1]") "}", 1,
          "shape [4294967296, 4294967296] has 2^64 or more elements");
  REFUSED("{\"a\":" T("F32", "[1]", "[0]") "}", 4,
          "tensor \"a\": data_offsets is not an array of 2");
  REFUSED("{\"a\":" T("F32", "[1]", "[0,4,8]") "}", 8,
          "data_offsets is not an array of 2");
  REFUSED("{\"a\":" T("F32", "[1]", "[-4,0]") "}", 8,
          "data_offsets is not an array of 2 non-negative integers");
  REFUSED("{\"a\":" T("F32", "[1]", "{}") "}", 8,
          "data_offsets is not an array of 2");
  REFUSED("{\"a\":" T("F32", "[1]", "[8,4]") "}", 8,
          "tensor \"a\": data_offsets [8, 4] begin after their end");
  REFUSED("{\"a\":" T("F32", "[1]", "[4,8]") "}", 7,
          "tensor \"a\": data_offsets [4, 8] run past the 7-byte data "
          "section");
  REFUSED("{\"a\":" T("F32", "[3,4]", "[0,40]") "}", 64,
          "tensor \"a\": data_offsets [0, 40] hold 40 bytes, but dtype F32 "
          "and shape [3, 4] need 48");
  REFUSED("{\"a\":" T("I64", "[2305843009213693952]", "[0,8]") "}", 8,
          "but dtype I64 and shape [2305843009213693952] need 2^64 or more");
  REFUSED("{\"a\":" T("BF16", "[]", "[0,4]") "}", 8,
          "hold 4 bytes, but dtype BF16 and shape [] need 2");
  REFUSED("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],"
          "\"extra\":0}}", 1, "tensor \"a\": unknown field \"extra\"");
}

static void test_layout(void) {
  REFUSED("{\"a\":" T("U8", "[8]", "[0,8]") ",\"b\":" T("U8", "[8]",
          "[4,12]") "}", 12, "tensors \"a\" (data_offsets [0, 8]) and \"b\" "
          "([4, 12]) overlap");
  /* b lies inside a: sorted by begin, b after a */
  REFUSED("{\"b\":" T("U8", "[2]", "[2,4]") ",\"a\":" T("U8", "[8]",
          "[0,8]") "}", 8, "tensors \"a\" (data_offsets [0, 8]) and \"b\"");
  REFUSED("{\"a\":" T("U8", "[8]", "[0,8]") ",\"b\":" T("U8", "[8]",
          "[0,8]") "}", 8, "overlap");
  REFUSED("{\"__metadata__\":{\"k\":1},\"a\":" T("U8", "[1]", "[0,1]") "}",
          1, "__metadata__ \"k\" is not a string");
  REFUSED("{\"__metadata__\":[\"k\"]}", 0, "__metadata__ is not an object");
  REFUSED("{\"__metadata__\":{\"k\":\"v\",\"k\":\"w\"}}", 0, "duplicate");

  /* Empty tensors anywhere in range, gaps and a trailing slack are fine. */
  tdmi_st_header h;
  OK(parse("{\"__metadata__\":{\"k\":\"v\"},\"b\":" T("U8", "[4]", "[4,8]")
           ",\"e\":" T("F32", "[0,3]", "[6,6]") ",\"a\":" T("U8", "[2]",
           "[0,2]") "}   ", 16, &h));
  CHECK(h.ntensors == 3, "%d tensors", h.ntensors);
  if (h.ntensors == 3)
    CHECK(!strcmp(h.tensors[0].name, "a") && !strcmp(h.tensors[1].name, "b")
              && !strcmp(h.tensors[2].name, "e") && h.tensors[2].numel == 0,
          "order %s %s %s", h.tensors[0].name, h.tensors[1].name,
          h.tensors[2].name);
  CHECK(tdmi_st_find(&h, "__metadata__") == NULL, "metadata is no tensor");
  tdmi_st_header_free(&h);
  CHECK(h.ntensors == 0 && h.tensors == NULL, "freed header is empty");
  tdmi_st_header_free(&h); /* twice is harmless */

  OK(parse("{}", 0, &h));
  CHECK(h.ntensors == 0 && h.data_start == 10, "%d, %llu", h.ntensors,
        (unsigned long long)h.data_start);
  tdmi_st_header_free(&h);
  OK(parse("{\"x\":" T("F8_E5M2", "[3]", "[0,3]") ",\"y\":" T("U16", "[1]",
           "[3,5]") "}", 5, &h));
  const tdmi_st_tensor *x = tdmi_st_find(&h, "x"), *y = tdmi_st_find(&h, "y");
  CHECK(x && x->dtype == -1 && x->elem_size == 1 &&
            !strcmp(x->dtype_name, "F8_E5M2"), "F8_E5M2");
  CHECK(y && y->dtype == -1 && y->elem_size == 2, "U16");
  tdmi_st_header_free(&h);
  /* A zero extent makes 0 elements, however large the others. */
  OK(parse("{\"z\":" T("F64", "[4294967296,4294967296,0]", "[0,0]") "}", 0,
           &h));
  CHECK(h.ntensors == 1 && h.tensors[0].numel == 0, "z");
  tdmi_st_header_free(&h);
}

/* Three tensors, a BF16 and a 0-d scalar among them, built and parsed. */
static void test_round_trip(void) {
  static const char want[] =
      "{\"__metadata__\":{\"format\":\"pt\"},"
      "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
      "\"b\":{\"dtype\":\"BF16\",\"shape\":[5],\"data_offsets\":[24,34]},"
      "\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[34,42]}}";
  tdmi_st_builder *b = NULL;
  uint64_t begin[3] = {9, 9, 9};
  const int64_t sw[2] = {2, 3}, sb[1] = {5};
  OK(tdmi_st_build_start(&b));
  OK(tdmi_st_build_add(b, "w", TDM_F32, 2, sw, &begin[0]));
  OK(tdmi_st_build_add(b, "b", TDM_BF16, 1, sb, &begin[1]));
  OK(tdmi_st_build_add(b, "s", TDM_F64, 0, NULL, &begin[2]));
  FAILS(tdmi_st_build_add(b, "w", TDM_U8, 1, sb, NULL),
        TDM_ERR_INVALID_ARGUMENT, "\"w\" is reserved or used twice");
  FAILS(tdmi_st_build_add(b, "__metadata__", TDM_U8, 1, sb, NULL),
        TDM_ERR_INVALID_ARGUMENT, "reserved");
  FAILS(tdmi_st_build_add(b, "\xff", TDM_U8, 1, sb, NULL),
        TDM_ERR_INVALID_ARGUMENT, "not valid UTF-8");
  FAILS(tdmi_st_build_add(b, "q", TDM_NUM_DTYPES, 1, sb, NULL),
        TDM_ERR_INVALID_ARGUMENT, "bad dtype");
  CHECK(begin[0] == 0 && begin[1] == 24 && begin[2] == 34, "begins %llu "
        "%llu %llu", (unsigned long long)begin[0],
        (unsigned long long)begin[1], (unsigned long long)begin[2]);
  const char *key = "format", *value = "pt";
  uint8_t *bytes = NULL;
  size_t len = 0;
  const char *keys2[2] = {"k", "k"}, *values2[2] = {"1", "2"};
  FAILS(tdmi_st_build_finish(b, keys2, values2, 2, &bytes, &len),
        TDM_ERR_INVALID_ARGUMENT, "repeats its key");
  OK(tdmi_st_build_finish(b, &key, &value, 1, &bytes, &len));
  tdmi_st_build_free(b);
  if (!bytes)
    return;
  uint64_t n = 0;
  OK(tdmi_st_header_length("built", bytes, len + 42, &n));
  CHECK(len % 8 == 0 && n == len - 8, "len %zu n %llu", len,
        (unsigned long long)n);
  CHECK(n >= sizeof want - 1 && !memcmp(bytes + 8, want, sizeof want - 1),
        "JSON %.*s", (int)n, (const char *)bytes + 8);
  for (size_t i = 8 + sizeof want - 1; i < len; i++)
    CHECK(bytes[i] == ' ', "padding byte %zu is %02x", i, bytes[i]);
  tdmi_st_header h;
  OK(tdmi_st_parse("built", (const char *)bytes + 8, n, len + 42, &h));
  free(bytes);
  CHECK(h.ntensors == 3 && h.data_start == len, "%d tensors at %llu",
        h.ntensors, (unsigned long long)h.data_start);
  if (h.ntensors != 3) {
    tdmi_st_header_free(&h);
    return;
  }
  const tdmi_st_tensor *t = h.tensors;
  CHECK(!strcmp(t[0].name, "w") && t[0].dtype == TDM_F32 && t[0].ndim == 2 &&
            t[0].shape[0] == 2 && t[0].shape[1] == 3 && t[0].numel == 6 &&
            t[0].begin == 0 && t[0].end == 24, "w");
  CHECK(!strcmp(t[1].name, "b") && t[1].dtype == TDM_BF16 &&
            !strcmp(t[1].dtype_name, "BF16") && t[1].elem_size == 2 &&
            t[1].ndim == 1 && t[1].shape[0] == 5 && t[1].begin == 24 &&
            t[1].end == 34, "b");
  CHECK(!strcmp(t[2].name, "s") && t[2].dtype == TDM_F64 && t[2].ndim == 0 &&
            t[2].numel == 1 && t[2].begin == 34 && t[2].end == 42, "s");
  CHECK(tdmi_st_find(&h, "b") == &t[1] && !tdmi_st_find(&h, "c"), "find");
  tdmi_st_header_free(&h);
}

static void test_empty_builder(void) {
  tdmi_st_builder *b = NULL;
  uint8_t *bytes = NULL;
  size_t len = 0;
  OK(tdmi_st_build_start(&b));
  OK(tdmi_st_build_finish(b, NULL, NULL, 0, &bytes, &len));
  CHECK(len == 16 && bytes && !memcmp(bytes, "\x08\0\0\0\0\0\0\0{}      ",
                                      16), "len %zu", len);
  free(bytes);
  tdmi_st_build_free(b);
  tdmi_st_build_free(NULL);
  for (int d = 0; d < TDM_NUM_DTYPES; d++)
    CHECK(strlen(tdmi_st_dtype_name((tdm_dtype)d)) >= 2, "dtype %d", d);
  CHECK(!strcmp(tdmi_st_dtype_name(TDM_BF16), "BF16"), "BF16");
  CHECK(!strcmp(tdmi_st_dtype_name(TDM_NUM_DTYPES), "?"), "unknown");
}

/* jansson's allocations fail after a budget: every builder call then
 * either succeeds or says TDM_ERR_NO_MEMORY, and nothing leaks (ASan).
 * jansson 2.14's parser reports most of its failed allocations as
 * syntax errors, so the parser may say TDM_ERR_FORMAT instead. */
static long budget = -1; /* allocations left; -1: no limit */
static void *budget_malloc(size_t n) {
  if (budget == 0)
    return NULL;
  if (budget > 0)
    budget--;
  return malloc(n);
}

static tdm_status build(uint8_t **bytes, size_t *len) {
  tdmi_st_builder *b = NULL;
  const int64_t shape[2] = {2, 3};
  const char *key = "format", *value = "pt";
  tdm_status st = tdmi_st_build_start(&b);
  if (st == TDM_SUCCESS)
    st = tdmi_st_build_add(b, "w", TDM_F32, 2, shape, NULL);
  if (st == TDM_SUCCESS)
    st = tdmi_st_build_add(b, "b", TDM_BF16, 1, shape, NULL);
  if (st == TDM_SUCCESS)
    st = tdmi_st_build_finish(b, &key, &value, 1, bytes, len);
  tdmi_st_build_free(b);
  return st;
}

static void test_out_of_memory(void) {
  json_set_alloc_funcs(budget_malloc, free);
  uint8_t *bytes = NULL;
  size_t len = 0;
  long k;
  tdm_status st = TDM_ERR_NO_MEMORY;
  for (k = 0; k < 10000 && st != TDM_SUCCESS; k++) {
    budget = k;
    st = build(&bytes, &len);
    CHECK(st == TDM_SUCCESS || st == TDM_ERR_NO_MEMORY, "building after %ld "
          "allocations: %s (%s)", k, tdm_status_string(st), tdm_last_error());
  }
  CHECK(st == TDM_SUCCESS && k > 10, "built after %ld allocations", k);
  st = TDM_ERR_NO_MEMORY;
  for (k = 0; k < 10000 && bytes && st != TDM_SUCCESS; k++) {
    tdmi_st_header h;
    budget = k;
    st = tdmi_st_parse("oom", (const char *)bytes + 8, len - 8, len + 28, &h);
    CHECK(st == TDM_SUCCESS || st == TDM_ERR_NO_MEMORY ||
              st == TDM_ERR_FORMAT, "parsing after %ld allocations: %s", k,
          tdm_status_string(st));
    CHECK(st == TDM_SUCCESS || (h.ntensors == 0 && !h.tensors), "%ld", k);
    CHECK(st != TDM_SUCCESS || h.ntensors == 2, "%d tensors", h.ntensors);
    tdmi_st_header_free(&h);
  }
  CHECK(st == TDM_SUCCESS && k > 10, "parsed after %ld allocations", k);
  free(bytes);
  budget = -1;
  json_set_alloc_funcs(malloc, free);
}

/* A whole file written by Python's safetensors 0.8.0 (numpy 2.4):
 *   python3 -c 'import numpy as np; from safetensors.numpy import save;
 *     open("py.st", "wb").write(save({"w": np.arange(6, dtype=np.float32)
 *     .reshape(2, 3), "b": np.array([1, 2], dtype=np.int64)},
 *     metadata={"format": "np"}))'
 * then xxd -i py.st. */
static const unsigned char py_st[] = {
  0x90, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7b, 0x22, 0x5f, 0x5f,
  0x6d, 0x65, 0x74, 0x61, 0x64, 0x61, 0x74, 0x61, 0x5f, 0x5f, 0x22, 0x3a,
  0x7b, 0x22, 0x66, 0x6f, 0x72, 0x6d, 0x61, 0x74, 0x22, 0x3a, 0x22, 0x6e,
  0x70, 0x22, 0x7d, 0x2c, 0x22, 0x62, 0x22, 0x3a, 0x7b, 0x22, 0x64, 0x74,
  0x79, 0x70, 0x65, 0x22, 0x3a, 0x22, 0x49, 0x36, 0x34, 0x22, 0x2c, 0x22,
  0x73, 0x68, 0x61, 0x70, 0x65, 0x22, 0x3a, 0x5b, 0x32, 0x5d, 0x2c, 0x22,
  0x64, 0x61, 0x74, 0x61, 0x5f, 0x6f, 0x66, 0x66, 0x73, 0x65, 0x74, 0x73,
  0x22, 0x3a, 0x5b, 0x30, 0x2c, 0x31, 0x36, 0x5d, 0x7d, 0x2c, 0x22, 0x77,
  0x22, 0x3a, 0x7b, 0x22, 0x64, 0x74, 0x79, 0x70, 0x65, 0x22, 0x3a, 0x22,
  0x46, 0x33, 0x32, 0x22, 0x2c, 0x22, 0x73, 0x68, 0x61, 0x70, 0x65, 0x22,
  0x3a, 0x5b, 0x32, 0x2c, 0x33, 0x5d, 0x2c, 0x22, 0x64, 0x61, 0x74, 0x61,
  0x5f, 0x6f, 0x66, 0x66, 0x73, 0x65, 0x74, 0x73, 0x22, 0x3a, 0x5b, 0x31,
  0x36, 0x2c, 0x34, 0x30, 0x5d, 0x7d, 0x7d, 0x20, 0x01, 0x00, 0x00, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40,
  0x00, 0x00, 0x40, 0x40, 0x00, 0x00, 0x80, 0x40, 0x00, 0x00, 0xa0, 0x40
};

static void test_python_file(void) {
  uint64_t n = 0;
  tdmi_st_header h;
  OK(tdmi_st_header_length("py.st", py_st, sizeof py_st, &n));
  CHECK(n == 144, "n = %llu", (unsigned long long)n);
  OK(tdmi_st_parse("py.st", (const char *)py_st + 8, n, sizeof py_st, &h));
  CHECK(h.ntensors == 2 && h.data_start == 152, "%d", h.ntensors);
  const tdmi_st_tensor *w = tdmi_st_find(&h, "w"), *b = tdmi_st_find(&h, "b");
  CHECK(b && b->dtype == TDM_I64 && b->ndim == 1 && b->shape[0] == 2 &&
            b->begin == 0 && b->end == 16, "b");
  CHECK(w && w->dtype == TDM_F32 && w->ndim == 2 && w->shape[0] == 2 &&
            w->shape[1] == 3 && w->begin == 16 && w->end == 40, "w");
  if (w && w->end <= sizeof py_st - h.data_start) {
    float f[6];
    memcpy(f, py_st + h.data_start + w->begin, sizeof f);
    CHECK(f[0] == 0.0f && f[5] == 5.0f, "w = %g .. %g", f[0], f[5]);
  }
  tdmi_st_header_free(&h);
  /* One byte fewer of data: w no longer fits. */
  FAILS(tdmi_st_parse("py.st", (const char *)py_st + 8, n, sizeof py_st - 1,
                      &h), TDM_ERR_FORMAT, "tensor \"w\": data_offsets "
        "[16, 40] run past the 39-byte data section");
}

int main(void) {
  test_header_length();
  test_not_json();
  test_fields();
  test_layout();
  test_round_trip();
  test_empty_builder();
  test_python_file();
  test_out_of_memory();
  printf("u_safetensors: %s (%d failed checks)\n", failures ? "FAIL" : "PASS",
         failures);
  return failures ? 1 : 0;
}
