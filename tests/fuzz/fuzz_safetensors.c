/* fuzz_safetensors.c - libFuzzer harness of the safetensors header parser
 * (scripts/fuzz.sh builds and runs it).  The input is a whole file.  The
 * property: whatever the bytes, the parser neither crashes nor leaks,
 * and every tensor it accepts has its data range inside the file, so a
 * reader that trusts the offsets never reads past the end. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt/safetensors.h"

static uint8_t sink; /* keeps the reads of the data ranges */

static void touch(const tdmi_st_header *h, const uint8_t *data, size_t size) {
  for (int i = 0; i < h->ntensors; i++) {
    const tdmi_st_tensor *t = &h->tensors[i];
    if (t->begin > t->end || t->end > size - h->data_start ||
        t->end - t->begin != t->numel * t->elem_size)
      __builtin_trap();
    if (i > 0 && h->tensors[i - 1].begin > t->begin)
      __builtin_trap(); /* not sorted by begin */
    for (uint64_t b = t->begin; b < t->end; b++)
      sink ^= data[h->data_start + b];
    if (tdmi_st_find(h, t->name) == NULL)
      __builtin_trap();
  }
}

/* The tensors tandem can hold, built into a new header: that header
 * must parse back with all of them. */
static void rebuild(const tdmi_st_header *h) {
  tdmi_st_builder *b = NULL;
  if (tdmi_st_build_start(&b) != TDM_SUCCESS)
    return;
  int added = 0;
  uint64_t data = 0;
  for (int i = 0; i < h->ntensors; i++) {
    const tdmi_st_tensor *t = &h->tensors[i];
    if (t->dtype >= 0 && tdmi_st_build_add(b, t->name, (tdm_dtype)t->dtype,
                                           t->ndim, t->shape, NULL) ==
                             TDM_SUCCESS) {
      added++;
      data += t->end - t->begin;
    }
  }
  uint8_t *bytes = NULL;
  size_t len = 0;
  if (tdmi_st_build_finish(b, NULL, NULL, 0, &bytes, &len) == TDM_SUCCESS) {
    tdmi_st_header h2;
    if (len % 8 != 0 ||
        tdmi_st_parse("rebuilt", (const char *)bytes + 8, len - 8,
                      len + data, &h2) != TDM_SUCCESS ||
        h2.ntensors != added)
      __builtin_trap();
    tdmi_st_header_free(&h2);
    free(bytes);
  }
  tdmi_st_build_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint64_t n = 0;
  if (tdmi_st_header_length("fuzz", data, size, &n) != TDM_SUCCESS)
    return 0;
  if (n > size - 8)
    __builtin_trap();
  /* A copy of exactly n bytes, so ASan sees any read past the header. */
  char *json = malloc(n ? n : 1);
  if (!json)
    return 0;
  memcpy(json, data + 8, n);
  tdmi_st_header h;
  if (tdmi_st_parse("fuzz", json, n, size, &h) == TDM_SUCCESS) {
    if (h.data_start != 8 + n || h.data_start > size)
      __builtin_trap();
    touch(&h, data, size);
    rebuild(&h);
    (void)tdmi_st_find(&h, "weight");
    tdmi_st_header_free(&h);
  } else if (h.ntensors != 0 || h.tensors != NULL) {
    __builtin_trap(); /* a failed parse leaves an empty header */
  }
  free(json);
  return 0;
}
