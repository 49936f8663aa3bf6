/* dataset.c - the public dataset calls: argument and handle checks, then
 * the reader of the dataset's kind (npy.c or tokens.c). */
#include <stdlib.h>
#include <string.h>

#include "data.h"

struct tdm_dataset {
  tdmi_rows rows;
  tdmi_npy *npy;       /* exactly one of the two */
  tdmi_tokens *tokens;
};

#define CHECK_DATASET(d, fn) \
  TDMI_TRY(tdmi_data_check((d), TDMI_HANDLE_DATASET, (fn), "dataset"))

static void free_dataset(tdm_dataset *d) {
  tdmi_npy_close(d->npy);
  tdmi_tokens_close(d->tokens);
  free(d);
}

/* Registers d, so that a call on a closed dataset is an error. */
static tdm_status publish(tdm_dataset *d, tdm_dataset **dataset) {
  tdm_status st = tdmi_handle_register(d, TDMI_HANDLE_DATASET);
  if (st != TDM_SUCCESS) {
    free_dataset(d);
    return st;
  }
  *dataset = d;
  return TDM_SUCCESS;
}

static tdm_dataset *new_dataset(const char *fn) {
  tdm_dataset *d = calloc(1, sizeof *d);
  if (!d)
    tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", fn);
  return d;
}

tdm_status tdm_dataset_open_npy(const char *path, tdm_dataset **dataset) {
  const char *fn = "tdm_dataset_open_npy";
  TDMI_CHECK_PTR(dataset, fn);
  *dataset = NULL;
  TDMI_CHECK_PTR(path, fn);
  tdm_dataset *d = new_dataset(fn);
  if (!d)
    return TDM_ERR_NO_MEMORY;
  tdm_status st = tdmi_npy_open(path, &d->npy, &d->rows);
  if (st != TDM_SUCCESS) {
    free_dataset(d);
    return st;
  }
  return publish(d, dataset);
}

tdm_status tdm_dataset_open_tokens(const char *const *paths, int count,
                                   size_t seq_len, tdm_dataset **dataset) {
  const char *fn = "tdm_dataset_open_tokens";
  TDMI_CHECK_PTR(dataset, fn);
  *dataset = NULL;
  tdm_dataset *d = new_dataset(fn);
  if (!d)
    return TDM_ERR_NO_MEMORY;
  tdm_status st = tdmi_tokens_open(paths, count, seq_len, &d->tokens,
                                   &d->rows);
  if (st != TDM_SUCCESS) {
    free_dataset(d);
    return st;
  }
  return publish(d, dataset);
}

tdm_status tdm_dataset_info(const tdm_dataset *dataset, size_t *rows,
                            size_t *row_bytes, tdm_dtype *dtype) {
  CHECK_DATASET(dataset, "tdm_dataset_info");
  if (rows)
    *rows = dataset->rows.rows;
  if (row_bytes)
    *row_bytes = dataset->rows.row_bytes;
  if (dtype)
    *dtype = dataset->rows.dtype;
  return TDM_SUCCESS;
}

tdm_status tdm_dataset_shape(const tdm_dataset *dataset, int *ndim,
                             int64_t shape[8]) {
  CHECK_DATASET(dataset, "tdm_dataset_shape");
  if (ndim)
    *ndim = dataset->rows.ndim;
  if (shape) /* all 8, zero past ndim, so the caller sees no garbage */
    for (int i = 0; i < TDMI_DATASET_MAX_NDIM; i++)
      shape[i] = i < dataset->rows.ndim ? dataset->rows.shape[i] : 0;
  return TDM_SUCCESS;
}

tdm_status tdm_dataset_read(const tdm_dataset *dataset, size_t row,
                            void *out) {
  const char *fn = "tdm_dataset_read";
  CHECK_DATASET(dataset, fn);
  TDMI_CHECK_PTR(out, fn);
  const tdmi_rows *r = &dataset->rows;
  if (row >= r->rows)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: row %zu out of range "
                      "(the dataset has %zu rows)", fn, row, r->rows);
  if (dataset->tokens)
    return tdmi_tokens_read(dataset->tokens, row, out);
  if (r->row_bytes > 0)
    memcpy(out, tdmi_npy_row(dataset->npy, row), r->row_bytes);
  return TDM_SUCCESS;
}

tdm_status tdm_dataset_bytes_read(const tdm_dataset *dataset,
                                  uint64_t *bytes) {
  const char *fn = "tdm_dataset_bytes_read";
  CHECK_DATASET(dataset, fn);
  TDMI_CHECK_PTR(bytes, fn);
  *bytes = dataset->tokens ? tdmi_tokens_bytes_read(dataset->tokens)
                           : tdmi_npy_bytes_read(dataset->npy);
  return TDM_SUCCESS;
}

tdm_status tdm_dataset_close(tdm_dataset *dataset) {
  CHECK_DATASET(dataset, "tdm_dataset_close");
  tdmi_handle_unregister(dataset, TDMI_HANDLE_DATASET);
  free_dataset(dataset);
  return TDM_SUCCESS;
}
