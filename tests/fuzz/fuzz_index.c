/* fuzz_index.c - libFuzzer harness of the model.safetensors.index.json
 * parser (tdmi_index_parse, src/ckpt/state.c, over jansson; scripts/
 * fuzz.sh builds and runs it).  The input is a whole index file.  The
 * properties, besides no crash and no leak:
 *   - refused: TDM_ERR_FORMAT (or TDM_ERR_NO_MEMORY) naming the file, and
 *     no list handed out (nor leaked);
 *   - accepted: the files are the distinct values of weight_map (read
 *     here with jansson directly) in order of first appearance, each a
 *     plain name the loader can put under the checkpoint folder: not
 *     empty, no '/', no leading '.', and no '\n' (load.c hands the list
 *     on as "folder/file\n" lines);
 *   - round trip: the same weight_map written by tdmi_index_dump parses
 *     back to the same files. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt/ckpt.h"

static void check_names(char **files, int n) {
  if (n < 1 || !files)
    __builtin_trap();
  for (int i = 0; i < n; i++) {
    const char *f = files[i];
    if (!f || !f[0] || f[0] == '.' || strchr(f, '/') || strchr(f, '\n'))
      __builtin_trap();
    for (int j = 0; j < i; j++)
      if (strcmp(files[j], f) == 0)
        __builtin_trap(); /* listed twice */
  }
}

/* files against weight_map read with jansson; the map's keys and values
 * into *tensors and *values (borrowed from root) for the round trip. */
static void check_map(json_t *root, char **files, int n,
                      const char ***tensors, const char ***values,
                      int *count) {
  json_t *map = json_object_get(root, "weight_map");
  *count = (int)json_object_size(map);
  *tensors = calloc((size_t)*count, sizeof **tensors);
  *values = calloc((size_t)*count, sizeof **values);
  if (!*tensors || !*values)
    abort();
  const char *key;
  json_t *value;
  int k = 0, next = 0;
  json_object_foreach(map, key, value) {
    const char *f = json_string_value(value);
    if (!f)
      __builtin_trap(); /* accepted a value that is not a string */
    (*tensors)[k] = key;
    (*values)[k++] = f;
    int seen = 0;
    for (int j = 0; j < next; j++)
      seen |= strcmp(files[j], f) == 0;
    if (!seen && (next == n || strcmp(files[next++], f) != 0))
      __builtin_trap(); /* not the next new file of the map */
  }
  if (next != n)
    __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* A copy of exactly size bytes, so ASan sees any read past the end. */
  char *text = malloc(size ? size : 1);
  if (!text)
    return 0;
  memcpy(text, data, size);
  char **files = NULL; /* as load.c calls it */
  int n = 0;
  tdm_status st = tdmi_index_parse("index.json", text, size, &files, &n);
  free(text);
  if (st != TDM_SUCCESS) {
    if ((st != TDM_ERR_FORMAT && st != TDM_ERR_NO_MEMORY) ||
        !strstr(tdm_last_error(), "index.json") || files || n != 0)
      __builtin_trap();
    return 0;
  }
  check_names(files, n);
  json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES,
                            NULL);
  if (!root)
    __builtin_trap(); /* accepted what jansson refuses */
  const char **tensors, **values;
  int count;
  check_map(root, files, n, &tensors, &values, &count);

  char *dump = NULL, **back = NULL;
  int nback = 0;
  if (tdmi_index_dump(12345, tensors, values, count, &dump) != TDM_SUCCESS ||
      tdmi_index_parse("dumped", dump, strlen(dump), &back, &nback) !=
          TDM_SUCCESS ||
      nback != n)
    __builtin_trap();
  for (int i = 0; i < n; i++)
    if (strcmp(back[i], files[i]) != 0)
      __builtin_trap();
  tdmi_strings_free(back, nback);
  free(dump);
  free(tensors);
  free(values);
  json_decref(root);
  tdmi_strings_free(files, n);
  return 0;
}
