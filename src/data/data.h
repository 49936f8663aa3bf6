/* data.h - the data layer's internals: datasets (dataset.c, npy.c,
 * tokens.c), the distributed sampler (sampler.c) and the prefetching
 * loader (loader.c).  Above core; calls no MPI. */
#ifndef TDM_DATA_H
#define TDM_DATA_H

#include "../core/core.h"

/* ---- datasets (dataset.c over npy.c and tokens.c) ---- */

#define TDMI_DATASET_MAX_NDIM 8

/* What a reader serves: tdm_dataset_info's and tdm_dataset_shape's. */
typedef struct {
  size_t rows, row_bytes;
  tdm_dtype dtype;
  int ndim;
  int64_t shape[TDMI_DATASET_MAX_NDIM];
} tdmi_rows;

/* A memory-mapped .npy file (npy.c).  Errors name tdm_dataset_open_npy. */
typedef struct tdmi_npy tdmi_npy;
tdm_status tdmi_npy_open(const char *path, tdmi_npy **npy, tdmi_rows *rows);
/* Where row (< rows) starts in the mapping. */
const void *tdmi_npy_row(const tdmi_npy *npy, size_t row);
uint64_t tdmi_npy_bytes_read(const tdmi_npy *npy); /* the header's */
void tdmi_npy_close(tdmi_npy *npy);

/* llm.c token shards as one stream (tokens.c); errors name the public
 * calls.  Reads are thread-safe. */
typedef struct tdmi_tokens tdmi_tokens;
tdm_status tdmi_tokens_open(const char *const *paths, int count,
                            size_t seq_len, tdmi_tokens **tokens,
                            tdmi_rows *rows);
/* Row (< rows) as rows->row_bytes of int32. */
tdm_status tdmi_tokens_read(tdmi_tokens *tokens, size_t row, void *out);
uint64_t tdmi_tokens_bytes_read(tdmi_tokens *tokens);
void tdmi_tokens_close(tdmi_tokens *tokens);

/* ---- the sampler (sampler.c) ---- */

/* A position in the sampler's stream of batches. */
typedef struct {
  uint64_t epoch, batch;
} tdmi_position;

/* An epoch's order of the rows, computed once per epoch by whoever reads
 * batches (the sampler for tdm_sampler_next, the loader's thread). */
typedef struct {
  uint64_t epoch;
  size_t *perm; /* NULL until computed, or when not shuffling */
  int valid;
} tdmi_order;

/* This rank's rows of the batch at pos (pos.batch < batches per epoch). */
tdm_status tdmi_sampler_rows(const tdm_sampler *s, tdmi_order *order,
                             tdmi_position pos, size_t *rows, size_t *count,
                             size_t *valid);
void tdmi_order_free(tdmi_order *order);
/* The position after pos. */
tdmi_position tdmi_sampler_after(const tdm_sampler *s, tdmi_position pos);
tdmi_position tdmi_sampler_position(const tdm_sampler *s);
/* The rows the sampler draws from. */
size_t tdmi_sampler_total(const tdm_sampler *s);
/* Checks pos against the epoch's batches (what a checkpoint restores). */
tdm_status tdmi_sampler_seek(tdm_sampler *s, tdmi_position pos,
                             const char *fn);
/* The error for a handle of kind that is not live. */
tdm_status tdmi_data_check(const void *h, tdmi_handle_kind kind,
                           const char *fn, const char *what);

#endif
