/* fuzz_state.c - libFuzzer harness of the checkpoint's state.json parser
 * (tdmi_state_parse, src/ckpt/state.c, over jansson; scripts/fuzz.sh
 * builds and runs it).  The input is a whole state.json.  The properties,
 * besides no crash and no leak:
 *   - refused: TDM_ERR_FORMAT (or TDM_ERR_NO_MEMORY), naming the file,
 *     and nothing left allocated in the state;
 *   - accepted: every field inside the range tdm_load_state relies on,
 *     the counts of rng streams and samplers those of the JSON arrays,
 *     the scalars those of the JSON (read here with jansson directly);
 *   - round trip: tdmi_state_dump of the state parses back to the same
 *     state, and dumps again to the same text. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt/ckpt.h"

static void check_ranges(const tdmi_ckpt_state *s) {
  if (s->step < 0 || s->world_size < 1 || s->world_size > 1 << 24 ||
      s->zero_stage < 0 || s->zero_stage > 3 || s->offload < 0 ||
      s->offload > 2 || s->precision < 0 || s->precision > 2 ||
      s->accumulation_steps < 1 || s->accumulation_position < 0 ||
      s->accumulation_position >= s->accumulation_steps ||
      (s->weights_dtype != TDM_UNSET &&
       (s->weights_dtype < 0 || s->weights_dtype >= TDM_NUM_DTYPES)) ||
      s->nmodel_files < 1 || s->nmodel_files > 99999 || s->nrngs < 0 ||
      s->nrngs > 4096 || s->nsamplers < 0 || !s->rng_offsets ||
      (s->nsamplers > 0 && !s->sampler_pos))
    __builtin_trap();
  if (s->has_optimizer &&
      (s->optimizer_kind < 0 || s->optimizer_kind > 4 || s->opt_steps < 0 ||
       s->opt_skipped < 0 || (s->last_skipped != 0 && s->last_skipped != 1) ||
       (s->scaling != 0 && s->scaling != 1) || !(s->loss_scale > 0) ||
       s->growth_tracker < 0))
    __builtin_trap();
  for (size_t i = 0; i < (size_t)s->nrngs * (size_t)s->world_size; i++)
    if (s->rng_offsets[i] > INT64_MAX)
      __builtin_trap();
  for (int i = 0; i < 2 * s->nsamplers; i++)
    if (s->sampler_pos[i] > INT64_MAX)
      __builtin_trap();
}

/* The JSON's own scalars and array sizes, read here with jansson. */
static void check_json(const uint8_t *data, size_t size,
                       const tdmi_ckpt_state *s) {
  json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES,
                            NULL);
  if (!root)
    __builtin_trap(); /* accepted what jansson refuses */
  json_t *samplers = json_object_get(root, "samplers");
  if (json_integer_value(json_object_get(root, "step")) != s->step ||
      json_integer_value(json_object_get(root, "world_size")) !=
          s->world_size ||
      (uint64_t)json_integer_value(json_object_get(root, "user_data_bytes")) !=
          s->user_bytes ||
      json_array_size(json_object_get(root, "rng_offsets")) !=
          (size_t)s->nrngs ||
      (samplers ? json_array_size(samplers) : 0) != (size_t)s->nsamplers ||
      json_is_object(json_object_get(root, "optimizer")) != s->has_optimizer)
    __builtin_trap();
  json_decref(root);
}

static int same(const tdmi_ckpt_state *a, const tdmi_ckpt_state *b) {
  size_t nr = (size_t)a->nrngs * (size_t)a->world_size;
  return a->step == b->step && a->world_size == b->world_size &&
         a->zero_stage == b->zero_stage && a->offload == b->offload &&
         a->precision == b->precision &&
         a->reduce_dtype == b->reduce_dtype &&
         a->accumulation_steps == b->accumulation_steps &&
         a->accumulation_position == b->accumulation_position &&
         a->weights_dtype == b->weights_dtype &&
         a->nmodel_files == b->nmodel_files &&
         a->has_optimizer == b->has_optimizer &&
         (!a->has_optimizer ||
          (a->optimizer_kind == b->optimizer_kind &&
           a->opt_steps == b->opt_steps && a->opt_skipped == b->opt_skipped &&
           a->last_skipped == b->last_skipped &&
           memcmp(&a->schedule_factor, &b->schedule_factor,
                  sizeof(double)) == 0 &&
           a->scaling == b->scaling &&
           memcmp(&a->loss_scale, &b->loss_scale, sizeof(double)) == 0 &&
           a->growth_tracker == b->growth_tracker)) &&
         a->nrngs == b->nrngs &&
         (nr == 0 || memcmp(a->rng_offsets, b->rng_offsets,
                            nr * sizeof *a->rng_offsets) == 0) &&
         a->user_bytes == b->user_bytes && a->nsamplers == b->nsamplers &&
         (a->nsamplers == 0 ||
          memcmp(a->sampler_pos, b->sampler_pos,
                 2 * (size_t)a->nsamplers * sizeof *a->sampler_pos) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  tdmi_ckpt_state s;
  /* A copy of exactly size bytes, so ASan sees any read past the end. */
  char *text = malloc(size ? size : 1);
  if (!text)
    return 0;
  memcpy(text, data, size);
  tdm_status st = tdmi_state_parse("state.json", text, size, &s);
  free(text);
  if (st != TDM_SUCCESS) {
    if ((st != TDM_ERR_FORMAT && st != TDM_ERR_NO_MEMORY) ||
        !strstr(tdm_last_error(), "state.json") || s.rng_offsets ||
        s.sampler_pos)
      __builtin_trap();
    return 0;
  }
  check_ranges(&s);
  check_json(data, size, &s);
  char *dump = NULL, *dump2 = NULL;
  if (tdmi_state_dump(&s, &dump) != TDM_SUCCESS)
    __builtin_trap();
  tdmi_ckpt_state back;
  if (tdmi_state_parse("dumped", dump, strlen(dump), &back) != TDM_SUCCESS)
    __builtin_trap(); /* what tandem writes, it must read */
  if (!same(&s, &back))
    __builtin_trap();
  if (tdmi_state_dump(&back, &dump2) != TDM_SUCCESS ||
      strcmp(dump, dump2) != 0)
    __builtin_trap();
  free(dump);
  free(dump2);
  tdmi_state_free(&back);
  tdmi_state_free(&s);
  return 0;
}
