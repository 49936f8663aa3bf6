/* safetensors.h - the safetensors format (Hugging Face's): parsing and
 * validating a header, and building one.  Pure functions on bytes, no
 * file or MPI access, so the fuzzer drives the parser directly.
 *
 * A file is: 8 bytes little-endian header length n, n bytes of JSON
 * (an object: tensor name -> {"dtype", "shape", "data_offsets": [begin,
 * end]}, plus an optional "__metadata__" object of strings), then the
 * data section; offsets count from the start of the data section.
 * Not installed. */
#ifndef TDM_SAFETENSORS_H
#define TDM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "tandem.h"

#define TDMI_ST_MAX_HEADER (100u * 1000u * 1000u) /* safetensors' limit */
#define TDMI_ST_MAX_NDIM 8

typedef struct {
  char *name;
  char dtype_name[8];  /* as written: "F32", "BF16", "I8", ... */
  int dtype;           /* tdm_dtype, or -1 for a type tandem cannot hold */
  size_t elem_size;    /* bytes per element (1 for BOOL, U8, I8, F8_*) */
  int ndim;
  int64_t shape[TDMI_ST_MAX_NDIM];
  uint64_t numel;
  uint64_t begin, end; /* byte offsets in the data section */
} tdmi_st_tensor;

typedef struct {
  uint64_t header_bytes; /* n */
  uint64_t data_start;   /* 8 + n: where the data section starts */
  tdmi_st_tensor *tensors; /* sorted by begin offset */
  int ntensors;
} tdmi_st_header;

/* The header length n from the first 8 bytes of file (named in errors)
 * of file_size bytes: TDM_ERR_FORMAT when the file is shorter than 8
 * bytes, n exceeds TDMI_ST_MAX_HEADER or 8 + n exceeds file_size. */
tdm_status tdmi_st_header_length(const char *file, const uint8_t *first8,
                                 uint64_t file_size, uint64_t *n);

/* Parses and validates the n-byte JSON header json (not NUL-terminated)
 * of file (file_size bytes in all).  Checks every field: known dtype,
 * shape of non-negative extents, 0 <= begin <= end <= data size,
 * end - begin == numel * element size, no two tensors overlapping, no
 * duplicate names.  TDM_ERR_FORMAT naming file, tensor and field. */
tdm_status tdmi_st_parse(const char *file, const char *json, size_t n,
                         uint64_t file_size, tdmi_st_header *out);
void tdmi_st_header_free(tdmi_st_header *h);
/* The tensor of that name, or NULL. */
const tdmi_st_tensor *tdmi_st_find(const tdmi_st_header *h, const char *name);

/* safetensors' dtype name of a tdm_dtype ("F32", ...). */
const char *tdmi_st_dtype_name(tdm_dtype dtype);

/* Building a header: add tensors in order (their data is laid out
 * back to back in that order), then tdmi_st_build_finish gives the whole
 * prefix (8-byte length + JSON padded with spaces to a multiple of 8)
 * in malloc'd *bytes (*len bytes); tensor i's data then starts at file
 * offset *len + its begin. */
typedef struct tdmi_st_builder tdmi_st_builder;
tdm_status tdmi_st_build_start(tdmi_st_builder **b);
tdm_status tdmi_st_build_add(tdmi_st_builder *b, const char *name,
                             tdm_dtype dtype, int ndim, const int64_t *shape,
                             uint64_t *begin);
/* metadata: "__metadata__" key/value pairs (may be NULL, count 0). */
tdm_status tdmi_st_build_finish(tdmi_st_builder *b, const char *const *keys,
                                const char *const *values, int count,
                                uint8_t **bytes, size_t *len);
void tdmi_st_build_free(tdmi_st_builder *b);

#endif /* TDM_SAFETENSORS_H */
