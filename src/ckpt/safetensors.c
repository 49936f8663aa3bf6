/* safetensors.c - parsing, validating and building safetensors headers.
 * jansson does all the JSON; this file checks what the format asks of
 * it (every field of every tensor, and that data ranges lie inside the
 * file and do not overlap), so that a reader may trust the offsets. */
#include "safetensors.h"

#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "../core/core.h"

typedef unsigned long long ull; /* for printf's %llu */

/* The dtypes of the format: size and, where tandem has one, tdm_dtype. */
static const struct {
  const char *name;
  size_t size;
  int dtype;
} st_types[] = {
    {"BOOL", 1, -1},       {"U8", 1, TDM_U8},   {"I8", 1, -1},
    {"U16", 2, -1},        {"I16", 2, -1},      {"F16", 2, TDM_F16},
    {"BF16", 2, TDM_BF16}, {"U32", 4, -1},      {"I32", 4, TDM_I32},
    {"F32", 4, TDM_F32},   {"U64", 8, -1},      {"I64", 8, TDM_I64},
    {"F64", 8, TDM_F64},   {"F8_E4M3", 1, -1},  {"F8_E5M2", 1, -1}};
#define ST_NTYPES (sizeof st_types / sizeof st_types[0])

static const char *fname(const char *file) {
  return file ? file : "safetensors header";
}

/* "[3, 4]" (at most 8 extents of 20 digits: fits 256 bytes). */
static const char *shape_text(const tdmi_st_tensor *t, char *buf,
                              size_t size) {
  size_t at = (size_t)snprintf(buf, size, "[");
  for (int i = 0; i < t->ndim && at < size; i++)
    at += (size_t)snprintf(buf + at, size - at, "%s%lld", i ? ", " : "",
                           (long long)t->shape[i]);
  if (at < size)
    snprintf(buf + at, size - at, "]");
  return buf;
}

/* a * b, or 0 with *overflow set when it does not fit 64 bits. */
static uint64_t mul_u64(uint64_t a, uint64_t b, int *overflow) {
  if (b != 0 && a > UINT64_MAX / b) {
    *overflow = 1;
    return 0;
  }
  return a * b;
}

/* Product of the extents; a zero extent makes it 0 whatever the others
 * are, so an overflow counts only when no extent is 0. */
static uint64_t shape_numel(const int64_t *shape, int ndim, int *overflow) {
  uint64_t numel = 1;
  int zero = 0, over = 0;
  for (int i = 0; i < ndim; i++) {
    zero |= shape[i] == 0;
    numel = mul_u64(numel, (uint64_t)shape[i], &over);
  }
  *overflow = over && !zero;
  return zero ? 0 : numel;
}

/* ---- the header length ---- */

tdm_status tdmi_st_header_length(const char *file, const uint8_t *first8,
                                 uint64_t file_size, uint64_t *n) {
  file = fname(file);
  TDMI_CHECK_PTR(n, "tdmi_st_header_length");
  *n = 0;
  if (file_size < 8)
    return tdmi_error(TDM_ERR_FORMAT, "%s: %llu bytes, too short for the "
                      "8-byte header length", file, (ull)file_size);
  TDMI_CHECK_PTR(first8, "tdmi_st_header_length");
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) /* little-endian whatever the host */
    v = v << 8 | first8[i];
  if (v > TDMI_ST_MAX_HEADER)
    return tdmi_error(TDM_ERR_FORMAT, "%s: header length %llu exceeds "
                      "safetensors' limit of %u bytes", file, (ull)v,
                      TDMI_ST_MAX_HEADER);
  if (v > file_size - 8)
    return tdmi_error(TDM_ERR_FORMAT, "%s: header length %llu runs past "
                      "the end of the %llu-byte file", file, (ull)v,
                      (ull)file_size);
  *n = v;
  return TDM_SUCCESS;
}

/* ---- one tensor's fields ---- */

static tdm_status parse_dtype(const char *file, const json_t *v,
                              tdmi_st_tensor *t) {
  if (!v)
    return tdmi_error(TDM_ERR_FORMAT, "%s: tensor \"%s\": no \"dtype\" "
                      "field", file, t->name);
  if (!json_is_string(v))
    return tdmi_error(TDM_ERR_FORMAT, "%s: tensor \"%s\": dtype is not a "
                      "string", file, t->name);
  for (size_t i = 0; i < ST_NTYPES; i++)
    if (!strcmp(json_string_value(v), st_types[i].name)) {
      strcpy(t->dtype_name, st_types[i].name); /* at most 7 chars */
      t->elem_size = st_types[i].size;
      t->dtype = st_types[i].dtype;
      return TDM_SUCCESS;
    }
  return tdmi_error(TDM_ERR_FORMAT, "%s: tensor \"%s\": dtype \"%s\" "
                    "unknown", file, t->name, json_string_value(v));
}

static tdm_status parse_shape(const char *file, const json_t *v,
                              tdmi_st_tensor *t) {
  if (!v)
    return tdmi_error(TDM_ERR_FORMAT, "%s: tensor \"%s\": no \"shape\" "
                      "field", file, t->name);
  if (!json_is_array(v))
    return tdmi_error(TDM_ERR_FORMAT, "%s: tensor \"%s\": shape is not an "
                      "array", file, t->name);
  size_t nd = json_array_size(v);
  if (nd > TDMI_ST_MAX_NDIM)
    return tdmi_error(TDM_ERR_FORMAT, "%s: tensor \"%s\": shape has %zu "
                      "dimensions, more than %d", file, t->name, nd,
                      TDMI_ST_MAX_NDIM);
  for (size_t i = 0; i < nd; i++) {
    const json_t *e = json_array_get(v, i);
    if (!json_is_integer(e) || json_integer_value(e) < 0)
      return tdmi_error(TDM_ERR_FORMAT, "%s: tensor \"%s\": shape[%zu] is "
                        "not a non-negative integer", file, t->name, i);
    t->shape[i] = json_integer_value(e);
  }
  t->ndim = (int)nd;
  int overflow;
  t->numel = shape_numel(t->shape, t->ndim, &overflow);
  char buf[256];
  if (overflow)
    return tdmi_error(TDM_ERR_FORMAT, "%s: tensor \"%s\": shape %s has 2^64 "
                      "or more elements", file, t->name,
                      shape_text(t, buf, sizeof buf));
  return TDM_SUCCESS;
}

static tdm_status parse_offsets(const char *file, const json_t *v,
                                uint64_t data_size, tdmi_st_tensor *t) {
  if (!v)
    return tdmi_error(TDM_ERR_FORMAT, "%s: tensor \"%s\": no "
                      "\"data_offsets\" field", file, t->name);
  const json_t *b = json_array_get(v, 0), *e = json_array_get(v, 1);
  if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_integer(b) ||
      !json_is_integer(e) || json_integer_value(b) < 0 ||
      json_integer_value(e) < 0)
    return tdmi_error(TDM_ERR_FORMAT, "%s: tensor \"%s\": data_offsets is "
                      "not an array of 2 non-negative integers", file,
                      t->name);
  t->begin = (uint64_t)json_integer_value(b);
  t->end = (uint64_t)json_integer_value(e);
  if (t->begin > t->end)
    return tdmi_error(TDM_ERR_FORMAT, "%s: tensor \"%s\": data_offsets "
                      "[%llu, %llu] begin after their end", file, t->name,
                      (ull)t->begin, (ull)t->end);
  if (t->end > data_size)
    return tdmi_error(TDM_ERR_FORMAT, "%s: tensor \"%s\": data_offsets "
                      "[%llu, %llu] run past the %llu-byte data section",
                      file, t->name, (ull)t->begin, (ull)t->end,
                      (ull)data_size);
  return TDM_SUCCESS;
}

/* The byte range must hold exactly numel elements of the dtype. */
static tdm_status check_bytes(const char *file, const tdmi_st_tensor *t) {
  int overflow = 0;
  uint64_t need = mul_u64(t->numel, t->elem_size, &overflow);
  if (!overflow && need == t->end - t->begin)
    return TDM_SUCCESS;
  char buf[256], needs[32];
  if (overflow)
    snprintf(needs, sizeof needs, "2^64 or more");
  else
    snprintf(needs, sizeof needs, "%llu", (ull)need);
  return tdmi_error(TDM_ERR_FORMAT, "%s: tensor \"%s\": data_offsets [%llu, "
                    "%llu] hold %llu bytes, but dtype %s and shape %s need "
                    "%s", file, t->name, (ull)t->begin, (ull)t->end,
                    (ull)(t->end - t->begin), t->dtype_name,
                    shape_text(t, buf, sizeof buf), needs);
}

static int known_field(const char *field) {
  return !strcmp(field, "dtype") || !strcmp(field, "shape") ||
         !strcmp(field, "data_offsets");
}

static tdm_status parse_tensor(const char *file, json_t *value,
                               uint64_t data_size, tdmi_st_tensor *t) {
  if (!json_is_object(value))
    return tdmi_error(TDM_ERR_FORMAT, "%s: tensor \"%s\": value is not an "
                      "object", file, t->name);
  const char *field;
  json_t *v;
  /* The format has no optional tensor fields: anything else is a sign of
   * a different format or of corruption. */
  json_object_foreach(value, field, v) {
    if (!known_field(field))
      return tdmi_error(TDM_ERR_FORMAT, "%s: tensor \"%s\": unknown field "
                        "\"%s\"", file, t->name, field);
  }
  TDMI_TRY(parse_dtype(file, json_object_get(value, "dtype"), t));
  TDMI_TRY(parse_shape(file, json_object_get(value, "shape"), t));
  TDMI_TRY(parse_offsets(file, json_object_get(value, "data_offsets"),
                         data_size, t));
  return check_bytes(file, t);
}

/* ---- the whole header ---- */

static tdm_status check_metadata(const char *file, json_t *meta) {
  if (!json_is_object(meta))
    return tdmi_error(TDM_ERR_FORMAT, "%s: __metadata__ is not an object",
                      file);
  const char *key;
  json_t *v;
  json_object_foreach(meta, key, v) {
    if (!json_is_string(v))
      return tdmi_error(TDM_ERR_FORMAT, "%s: __metadata__ \"%s\" is not a "
                        "string", file, key);
  }
  return TDM_SUCCESS;
}

/* By begin; end and name only make the order total (qsort is not
 * stable) so every rank sorts alike. */
static int by_begin(const void *pa, const void *pb) {
  const tdmi_st_tensor *a = pa, *b = pb;
  if (a->begin != b->begin)
    return a->begin < b->begin ? -1 : 1;
  if (a->end != b->end)
    return a->end < b->end ? -1 : 1;
  return strcmp(a->name, b->name);
}

/* Sorted by begin, a non-empty tensor must start at or after the end of
 * the previous non-empty one (that end is then the largest so far).
 * Empty tensors hold no bytes and may sit anywhere. */
static tdm_status check_overlaps(const char *file, const tdmi_st_header *h) {
  const tdmi_st_tensor *prev = NULL;
  for (int i = 0; i < h->ntensors; i++) {
    const tdmi_st_tensor *t = &h->tensors[i];
    if (t->begin == t->end)
      continue;
    if (prev && t->begin < prev->end)
      return tdmi_error(TDM_ERR_FORMAT, "%s: tensors \"%s\" (data_offsets "
                        "[%llu, %llu]) and \"%s\" ([%llu, %llu]) overlap",
                        file, prev->name, (ull)prev->begin, (ull)prev->end,
                        t->name, (ull)t->begin, (ull)t->end);
    prev = t;
  }
  return TDM_SUCCESS;
}

static tdm_status parse_root(const char *file, json_t *root,
                             uint64_t data_size, tdmi_st_header *out) {
  json_t *meta = json_object_get(root, "__metadata__");
  if (meta)
    TDMI_TRY(check_metadata(file, meta));
  size_t count = json_object_size(root) - (meta != NULL);
  if (count > INT_MAX) /* cannot happen under the 100 MB limit */
    return tdmi_error(TDM_ERR_FORMAT, "%s: %zu tensors", file, count);
  out->tensors = calloc(count + 1, sizeof *out->tensors);
  if (!out->tensors)
    return tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory for %zu "
                      "tensors", file, count);
  const char *key;
  json_t *value;
  json_object_foreach(root, key, value) {
    if (!strcmp(key, "__metadata__"))
      continue;
    tdmi_st_tensor *t = &out->tensors[out->ntensors];
    if (!(t->name = strdup(key)))
      return tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", file);
    out->ntensors++; /* freed with the header from here on */
    TDMI_TRY(parse_tensor(file, value, data_size, t));
  }
  qsort(out->tensors, (size_t)out->ntensors, sizeof *out->tensors, by_begin);
  return check_overlaps(file, out);
}

tdm_status tdmi_st_parse(const char *file, const char *json, size_t n,
                         uint64_t file_size, tdmi_st_header *out) {
  file = fname(file);
  TDMI_CHECK_PTR(out, "tdmi_st_parse");
  memset(out, 0, sizeof *out);
  if (!json && n > 0)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "tdmi_st_parse: json is "
                      "NULL");
  if (n > TDMI_ST_MAX_HEADER || file_size < 8 || n > file_size - 8)
    return tdmi_error(TDM_ERR_FORMAT, "%s: header length %zu does not fit "
                      "the %llu-byte file", file, n, (ull)file_size);
  json_error_t err;
  /* JSON_DECODE_ANY: a scalar parses, to be refused as "not an object" */
  json_t *root = json_loadb(json ? json : "", n,
                            JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);
  if (!root && json_error_code(&err) == json_error_out_of_memory)
    return tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory for the header",
                      file);
  if (!root)
    return tdmi_error(TDM_ERR_FORMAT, "%s: header is not valid JSON: %s "
                      "(byte %d)", file, err.text, err.position);
  tdm_status st = json_is_object(root)
                      ? parse_root(file, root, file_size - 8 - n, out)
                      : tdmi_error(TDM_ERR_FORMAT, "%s: header is not a "
                                   "JSON object", file);
  json_decref(root);
  if (st != TDM_SUCCESS) {
    tdmi_st_header_free(out);
    return st;
  }
  out->header_bytes = n;
  out->data_start = 8 + (uint64_t)n;
  return TDM_SUCCESS;
}

void tdmi_st_header_free(tdmi_st_header *h) {
  if (!h)
    return;
  for (int i = 0; i < h->ntensors; i++)
    free(h->tensors[i].name);
  free(h->tensors);
  memset(h, 0, sizeof *h);
}

/* Linear: a model has thousands of tensors at most, looked up once. */
const tdmi_st_tensor *tdmi_st_find(const tdmi_st_header *h,
                                   const char *name) {
  if (!h || !name)
    return NULL;
  for (int i = 0; i < h->ntensors; i++)
    if (!strcmp(h->tensors[i].name, name))
      return &h->tensors[i];
  return NULL;
}

/* The index in st_types of a tdm_dtype, or -1. */
static int type_of(tdm_dtype dtype) {
  for (size_t i = 0; i < ST_NTYPES; i++)
    if (st_types[i].dtype >= 0 && st_types[i].dtype == (int)dtype)
      return (int)i;
  return -1;
}

const char *tdmi_st_dtype_name(tdm_dtype dtype) {
  int i = type_of(dtype);
  return i >= 0 ? st_types[i].name : "?";
}

/* ---- building ---- */

struct tdmi_st_builder {
  json_t *tensors; /* name -> {dtype, shape, data_offsets}, in add order */
  uint64_t total;  /* data bytes so far: the next tensor's begin */
};

/* jansson refuses invalid UTF-8 and reports it like a failed malloc;
 * json_string_nocheck tells the two apart. */
static tdm_status check_utf8(const char *s, const char *what) {
  json_t *j = json_string(s);
  int ok = j != NULL;
  json_decref(j);
  if (ok)
    return TDM_SUCCESS;
  j = json_string_nocheck(s);
  ok = j != NULL;
  json_decref(j);
  return ok ? tdmi_error(TDM_ERR_INVALID_ARGUMENT, "safetensors: %s is not "
                         "valid UTF-8", what)
            : tdmi_error(TDM_ERR_NO_MEMORY, "safetensors: out of memory");
}

static json_t *int_array(const int64_t *v, int n) {
  json_t *a = json_array();
  for (int i = 0; a && i < n; i++)
    if (json_array_append_new(a, json_integer((json_int_t)v[i])) != 0) {
      json_decref(a);
      a = NULL;
    }
  return a;
}

tdm_status tdmi_st_build_start(tdmi_st_builder **b) {
  TDMI_CHECK_PTR(b, "tdmi_st_build_start");
  *b = calloc(1, sizeof **b);
  if (*b && !((*b)->tensors = json_object())) {
    free(*b);
    *b = NULL;
  }
  return *b ? TDM_SUCCESS
            : tdmi_error(TDM_ERR_NO_MEMORY, "safetensors: out of memory");
}

/* The arguments of tdmi_st_build_add, and the tensor's byte count. */
static tdm_status check_add(const tdmi_st_builder *b, const char *name,
                            tdm_dtype dtype, int ndim, const int64_t *shape,
                            uint64_t *bytes) {
  int type = type_of(dtype);
  if (type < 0 || ndim < 0 ||
      ndim > TDMI_ST_MAX_NDIM || (ndim > 0 && !shape))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "safetensors: tensor \"%s\": "
                      "bad dtype %d or shape (%d dimensions)", name,
                      (int)dtype, ndim);
  for (int i = 0; i < ndim; i++)
    if (shape[i] < 0)
      return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "safetensors: tensor "
                        "\"%s\": shape[%d] = %lld", name, i,
                        (long long)shape[i]);
  if (!strcmp(name, "__metadata__") || json_object_get(b->tensors, name))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "safetensors: tensor name "
                      "\"%s\" is reserved or used twice", name);
  TDMI_TRY(check_utf8(name, "a tensor name"));
  int overflow = 0;
  uint64_t numel = shape_numel(shape, ndim, &overflow);
  *bytes = mul_u64(numel, st_types[type].size, &overflow);
  /* offsets are JSON integers: json_int_t, signed 64 bits */
  if (overflow || *bytes > (uint64_t)INT64_MAX - b->total)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "safetensors: tensor \"%s\": "
                      "data past 2^63 bytes", name);
  return TDM_SUCCESS;
}

tdm_status tdmi_st_build_add(tdmi_st_builder *b, const char *name,
                             tdm_dtype dtype, int ndim, const int64_t *shape,
                             uint64_t *begin) {
  TDMI_CHECK_PTR(b, "tdmi_st_build_add");
  TDMI_CHECK_PTR(name, "tdmi_st_build_add");
  uint64_t bytes = 0;
  TDMI_TRY(check_add(b, name, dtype, ndim, shape, &bytes));
  const int64_t offsets[2] = {(int64_t)b->total, (int64_t)(b->total + bytes)};
  /* safetensors' own order of fields; the _new calls take the values'
   * references, also when they fail */
  json_t *obj = json_object();
  const char *dt = tdmi_st_dtype_name(dtype);
  if (!obj || json_object_set_new(obj, "dtype", json_string(dt)) ||
      json_object_set_new(obj, "shape", int_array(shape, ndim)) ||
      json_object_set_new(obj, "data_offsets", int_array(offsets, 2))) {
    json_decref(obj);
    return tdmi_error(TDM_ERR_NO_MEMORY, "safetensors: out of memory");
  }
  if (json_object_set_new(b->tensors, name, obj))
    return tdmi_error(TDM_ERR_NO_MEMORY, "safetensors: out of memory");
  if (begin)
    *begin = b->total;
  b->total += bytes;
  return TDM_SUCCESS;
}

static tdm_status add_metadata(json_t *root, const char *const *keys,
                               const char *const *values, int count) {
  json_t *meta = json_object();
  tdm_status st = meta ? TDM_SUCCESS
                       : tdmi_error(TDM_ERR_NO_MEMORY, "safetensors: out of "
                                    "memory");
  for (int i = 0; st == TDM_SUCCESS && i < count; i++) {
    if (!keys[i] || !values[i] || json_object_get(meta, keys[i]))
      st = tdmi_error(TDM_ERR_INVALID_ARGUMENT, "safetensors: __metadata__ "
                      "entry %d is NULL or repeats its key", i);
    if (st == TDM_SUCCESS)
      st = check_utf8(keys[i], "a __metadata__ key");
    if (st == TDM_SUCCESS)
      st = check_utf8(values[i], "a __metadata__ value");
    if (st == TDM_SUCCESS &&
        json_object_set_new(meta, keys[i], json_string(values[i])))
      st = tdmi_error(TDM_ERR_NO_MEMORY, "safetensors: out of memory");
  }
  if (st != TDM_SUCCESS) {
    json_decref(meta);
    return st;
  }
  if (json_object_set_new(root, "__metadata__", meta))
    return tdmi_error(TDM_ERR_NO_MEMORY, "safetensors: out of memory");
  return TDM_SUCCESS;
}

/* 8-byte length, compact JSON, spaces up to a multiple of 8 bytes so
 * that the data section (and each 8-byte-aligned tensor) is aligned. */
static tdm_status dump(const json_t *root, uint8_t **bytes, size_t *len) {
  const size_t flags = JSON_COMPACT | JSON_PRESERVE_ORDER;
  size_t n = json_dumpb(root, NULL, 0, flags);
  if (n == 0)
    return tdmi_error(TDM_ERR_NO_MEMORY, "safetensors: out of memory");
  size_t total = (8 + n + 7) / 8 * 8;
  if (total - 8 > TDMI_ST_MAX_HEADER)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "safetensors: a %zu-byte "
                      "header exceeds safetensors' limit of %u bytes",
                      total - 8, TDMI_ST_MAX_HEADER);
  uint8_t *p = malloc(total);
  if (!p)
    return tdmi_error(TDM_ERR_NO_MEMORY, "safetensors: out of memory for a "
                      "%zu-byte header", total);
  size_t got = json_dumpb(root, (char *)p + 8, n, flags);
  if (got != n) { /* 0: jansson's own allocations failed */
    free(p);
    return got == 0 ? tdmi_error(TDM_ERR_NO_MEMORY, "safetensors: out of "
                                 "memory")
                    : tdmi_error(TDM_ERR_INTERNAL, "safetensors: header "
                                 "changed size");
  }
  memset(p + 8 + n, ' ', total - 8 - n);
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)((uint64_t)(total - 8) >> (8 * i));
  *bytes = p;
  *len = total;
  return TDM_SUCCESS;
}

tdm_status tdmi_st_build_finish(tdmi_st_builder *b, const char *const *keys,
                                const char *const *values, int count,
                                uint8_t **bytes, size_t *len) {
  TDMI_CHECK_PTR(b, "tdmi_st_build_finish");
  TDMI_CHECK_PTR(bytes, "tdmi_st_build_finish");
  TDMI_CHECK_PTR(len, "tdmi_st_build_finish");
  *bytes = NULL;
  *len = 0;
  if (count < 0 || (count > 0 && (!keys || !values)))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "tdmi_st_build_finish: %d "
                      "metadata entries without keys or values", count);
  json_t *root = json_object();
  if (!root)
    return tdmi_error(TDM_ERR_NO_MEMORY, "safetensors: out of memory");
  /* __metadata__ first, as safetensors writes it; objects keep insertion
   * order (jansson >= 2.8), so the tensors follow in add order */
  tdm_status st = count > 0 ? add_metadata(root, keys, values, count)
                            : TDM_SUCCESS;
  const char *key;
  json_t *value;
  json_object_foreach(b->tensors, key, value) {
    if (st == TDM_SUCCESS && json_object_set(root, key, value))
      st = tdmi_error(TDM_ERR_NO_MEMORY, "safetensors: out of memory");
  }
  if (st == TDM_SUCCESS)
    st = dump(root, bytes, len);
  json_decref(root);
  return st;
}

void tdmi_st_build_free(tdmi_st_builder *b) {
  if (!b)
    return;
  json_decref(b->tensors);
  free(b);
}
