/* info.c - tdm_weights_info: what a model's safetensors files hold, from
 * their headers alone (tandem estimate-memory sizes models with it). */
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"

static tdm_status add_file(const char *file, uint64_t *numel,
                           uint64_t *bytes, int *tensors) {
  tdmi_st_header h;
  memset(&h, 0, sizeof h);
  tdm_status st = tdmi_st_load_header(file, &h);
  for (int i = 0; st == TDM_SUCCESS && i < h.ntensors; i++) {
    *numel += h.tensors[i].numel;
    *bytes += h.tensors[i].end - h.tensors[i].begin;
  }
  *tensors += st == TDM_SUCCESS ? h.ntensors : 0;
  tdmi_st_header_free(&h);
  return st;
}

tdm_status tdm_weights_info(const char *path, uint64_t *numel,
                            uint64_t *bytes, int *tensors) {
  TDMI_CHECK_PTR(path, "tdm_weights_info");
  char *lines = NULL;
  TDMI_TRY(tdmi_model_files_local(path, &lines));
  uint64_t all_numel = 0, all_bytes = 0;
  int all_tensors = 0;
  tdm_status st = TDM_SUCCESS;
  char *save = NULL;
  for (char *file = strtok_r(lines, "\n", &save); st == TDM_SUCCESS && file;
       file = strtok_r(NULL, "\n", &save))
    st = add_file(file, &all_numel, &all_bytes, &all_tensors);
  free(lines);
  if (st != TDM_SUCCESS)
    return st;
  if (numel)
    *numel = all_numel;
  if (bytes)
    *bytes = all_bytes;
  if (tensors)
    *tensors = all_tensors;
  return TDM_SUCCESS;
}
