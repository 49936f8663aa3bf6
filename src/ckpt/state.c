/* state.c - state.json: what a checkpoint holds besides tensors, written
 * and read with jansson.  Reals print with 17 significant digits, so the
 * loss scale and schedule factor come back bit for bit. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"

static const char *const precision_names[] = {"no", "bf16", "fp16"};
static const char *const offload_names[] = {"none", "optimizer", "params"};
static const char *const kind_names[] = {"sgd", "adam", "adamw", "lion",
                                         "custom"};

static const char *dtype_text(int dtype) {
  return dtype == TDM_UNSET ? "param" : tdmi_dtype_name((tdm_dtype)dtype);
}

static json_t *rngs_json(const tdmi_ckpt_state *s) {
  json_t *rngs = json_array();
  for (int i = 0; rngs && i < s->nrngs; i++) {
    json_t *per_rank = json_array();
    for (int r = 0; per_rank && r < s->world_size; r++)
      json_array_append_new(per_rank, json_integer(
          (json_int_t)s->rng_offsets[(size_t)i * s->world_size + r]));
    json_array_append_new(rngs, per_rank);
  }
  return rngs;
}

static json_t *samplers_json(const tdmi_ckpt_state *s) {
  json_t *all = json_array();
  for (int i = 0; all && i < s->nsamplers; i++)
    json_array_append_new(all, json_pack("{s:I, s:I}", "epoch",
                                         (json_int_t)s->sampler_pos[2 * i],
                                         "batch",
                                         (json_int_t)s->sampler_pos[2 * i + 1]));
  return all;
}

static json_t *optimizer_json(const tdmi_ckpt_state *s) {
  if (!s->has_optimizer)
    return json_null();
  return json_pack("{s:s, s:I, s:I, s:b, s:I, s:f, s:{s:b, s:f, s:i}}",
                   "kind", kind_names[s->optimizer_kind],
                   "steps", (json_int_t)s->opt_steps,
                   "skipped_steps", (json_int_t)s->opt_skipped,
                   "last_skipped", s->last_skipped,
                   "schedule_step", (json_int_t)s->opt_steps,
                   "schedule_factor", s->schedule_factor,
                   "loss_scaler", "enabled", s->scaling, "scale",
                   s->loss_scale, "growth_tracker", s->growth_tracker);
}

tdm_status tdmi_state_dump(const tdmi_ckpt_state *s, char **text) {
  char version[32];
  snprintf(version, sizeof version, "%d.%d.%d", TDM_VERSION_MAJOR,
           TDM_VERSION_MINOR, TDM_VERSION_PATCH);
  json_t *root = json_pack(
      "{s:s, s:i, s:s, s:I, s:i, s:i, s:s, s:s, s:s, s:i, s:i, s:s, s:i, "
      "s:o, s:o, s:I, s:o}",
      "format", "tandem-checkpoint", "format_version",
      TDMI_CKPT_FORMAT_VERSION, "tandem_version", version,
      "step", (json_int_t)s->step, "world_size", s->world_size,
      "zero_stage", s->zero_stage, "offload", offload_names[s->offload],
      "mixed_precision", precision_names[s->precision],
      "reduce_dtype", tdmi_dtype_name((tdm_dtype)s->reduce_dtype),
      "gradient_accumulation_steps", s->accumulation_steps,
      "accumulation_position", s->accumulation_position,
      "weights_dtype", dtype_text(s->weights_dtype),
      "model_files", s->nmodel_files,
      "optimizer", optimizer_json(s), "rng_offsets", rngs_json(s),
      "user_data_bytes", (json_int_t)s->user_bytes, "samplers",
      samplers_json(s));
  *text = root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER |
                                      JSON_REAL_PRECISION(17))
               : NULL;
  json_decref(root);
  if (!*text)
    return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: cannot build %s",
                      TDMI_CKPT_STATE);
  return TDM_SUCCESS;
}

/* ---- reading ---- */

static tdm_status bad(const char *file, const char *field, const char *why) {
  return tdmi_error(TDM_ERR_FORMAT, "%s: field \"%s\" %s", file, field, why);
}

static int index_of(const char *const *names, int n, const char *s) {
  for (int i = 0; s && i < n; i++)
    if (!strcmp(names[i], s))
      return i;
  return -1;
}

static tdm_status get_int(json_t *obj, const char *key, const char *file,
                          int64_t lo, int64_t hi, int64_t *out) {
  json_t *v = json_object_get(obj, key);
  if (!json_is_integer(v))
    return bad(file, key, "is missing or not an integer");
  json_int_t x = json_integer_value(v);
  if (x < lo || x > hi)
    return bad(file, key, "is out of range");
  *out = x;
  return TDM_SUCCESS;
}

static tdm_status get_enum(json_t *obj, const char *key, const char *file,
                           const char *const *names, int n, int *out) {
  *out = index_of(names, n, json_string_value(json_object_get(obj, key)));
  return *out < 0 ? bad(file, key, "is missing or not a known name")
                  : TDM_SUCCESS;
}

static tdm_status get_real(json_t *obj, const char *key, const char *file,
                           double *out) {
  json_t *v = json_object_get(obj, key);
  if (!json_is_number(v))
    return bad(file, key, "is missing or not a number");
  *out = json_number_value(v);
  return TDM_SUCCESS;
}

static tdm_status parse_optimizer(json_t *o, const char *file,
                                  tdmi_ckpt_state *s) {
  int64_t v = 0;
  s->has_optimizer = !json_is_null(o);
  if (!s->has_optimizer)
    return TDM_SUCCESS;
  if (!json_is_object(o))
    return bad(file, "optimizer", "is not an object or null");
  TDMI_TRY(get_enum(o, "kind", file, kind_names, 5, &s->optimizer_kind));
  TDMI_TRY(get_int(o, "steps", file, 0, INT64_MAX, &s->opt_steps));
  TDMI_TRY(get_int(o, "skipped_steps", file, 0, INT64_MAX, &s->opt_skipped));
  json_t *ls = json_object_get(o, "last_skipped");
  if (!json_is_boolean(ls))
    return bad(file, "last_skipped", "is missing or not a boolean");
  s->last_skipped = json_is_true(ls);
  TDMI_TRY(get_real(o, "schedule_factor", file, &s->schedule_factor));
  json_t *sc = json_object_get(o, "loss_scaler");
  if (!json_is_object(sc) || !json_is_boolean(json_object_get(sc, "enabled")))
    return bad(file, "loss_scaler", "is missing or malformed");
  s->scaling = json_is_true(json_object_get(sc, "enabled"));
  TDMI_TRY(get_real(sc, "scale", file, &s->loss_scale));
  if (!(s->loss_scale > 0))
    return bad(file, "scale", "is not positive");
  TDMI_TRY(get_int(sc, "growth_tracker", file, 0, INT32_MAX, &v));
  s->growth_tracker = (int)v;
  return TDM_SUCCESS;
}

/* Optional: checkpoints of tandem 0.2 have no samplers. */
static tdm_status parse_samplers(json_t *a, const char *file,
                                 tdmi_ckpt_state *s) {
  if (!a)
    return TDM_SUCCESS;
  if (!json_is_array(a))
    return bad(file, "samplers", "is not an array");
  s->nsamplers = (int)json_array_size(a);
  s->sampler_pos = calloc(2 * (size_t)s->nsamplers + 1, sizeof *s->sampler_pos);
  if (!s->sampler_pos)
    return tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", file);
  for (int i = 0; i < s->nsamplers; i++) {
    int64_t v;
    json_t *one = json_array_get(a, (size_t)i);
    TDMI_TRY(get_int(one, "epoch", file, 0, INT64_MAX, &v));
    s->sampler_pos[2 * i] = (uint64_t)v;
    TDMI_TRY(get_int(one, "batch", file, 0, INT64_MAX, &v));
    s->sampler_pos[2 * i + 1] = (uint64_t)v;
  }
  return TDM_SUCCESS;
}

static tdm_status parse_rngs(json_t *a, const char *file, tdmi_ckpt_state *s) {
  if (!json_is_array(a) || json_array_size(a) > 4096)
    return bad(file, "rng_offsets", "is missing or not an array");
  s->nrngs = (int)json_array_size(a);
  /* The lengths first: the allocation is then bounded by the text, not by
   * world_size (up to 2^24) alone, which with one short array asked for
   * 128 MiB, with 4096 for 512 GiB (found by tests/fuzz/fuzz_state.c). */
  for (int i = 0; i < s->nrngs; i++) {
    json_t *per_rank = json_array_get(a, (size_t)i);
    if (!json_is_array(per_rank) ||
        json_array_size(per_rank) != (size_t)s->world_size)
      return bad(file, "rng_offsets", "needs world_size offsets per stream");
  }
  s->rng_offsets = calloc((size_t)s->nrngs * s->world_size + 1,
                          sizeof *s->rng_offsets);
  if (!s->rng_offsets)
    return tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", file);
  for (int i = 0; i < s->nrngs; i++) {
    json_t *per_rank = json_array_get(a, (size_t)i);
    for (int r = 0; r < s->world_size; r++) {
      json_t *v = json_array_get(per_rank, (size_t)r);
      if (!json_is_integer(v) || json_integer_value(v) < 0)
        return bad(file, "rng_offsets", "holds a bad offset");
      s->rng_offsets[(size_t)i * s->world_size + r] =
          (uint64_t)json_integer_value(v);
    }
  }
  return TDM_SUCCESS;
}

static tdm_status parse_root(json_t *root, const char *file,
                             tdmi_ckpt_state *s) {
  int64_t v = 0;
  if (!json_is_object(root))
    return tdmi_error(TDM_ERR_FORMAT, "%s: not a JSON object", file);
  const char *format = json_string_value(json_object_get(root, "format"));
  if (!format || strcmp(format, "tandem-checkpoint") != 0)
    return bad(file, "format", "is not \"tandem-checkpoint\"");
  TDMI_TRY(get_int(root, "format_version", file, TDMI_CKPT_FORMAT_VERSION,
                   TDMI_CKPT_FORMAT_VERSION, &v));
  TDMI_TRY(get_int(root, "step", file, 0, INT64_MAX, &s->step));
  TDMI_TRY(get_int(root, "world_size", file, 1, 1 << 24, &v));
  s->world_size = (int)v;
  TDMI_TRY(get_int(root, "zero_stage", file, 0, 3, &v));
  s->zero_stage = (int)v;
  TDMI_TRY(get_enum(root, "offload", file, offload_names, 3, &s->offload));
  TDMI_TRY(get_enum(root, "mixed_precision", file, precision_names, 3,
                    &s->precision));
  TDMI_TRY(get_int(root, "gradient_accumulation_steps", file, 1, INT32_MAX,
                   &v));
  s->accumulation_steps = (int)v;
  TDMI_TRY(get_int(root, "accumulation_position", file, 0,
                   s->accumulation_steps - 1, &v));
  s->accumulation_position = (int)v;
  const char *wd = json_string_value(json_object_get(root, "weights_dtype"));
  s->weights_dtype = wd && !strcmp(wd, "param") ? TDM_UNSET : -2;
  for (int d = 0; wd && d < TDM_NUM_DTYPES; d++)
    if (!strcmp(wd, tdmi_dtype_name((tdm_dtype)d)))
      s->weights_dtype = d;
  if (s->weights_dtype == -2)
    return bad(file, "weights_dtype", "is missing or not a dtype");
  TDMI_TRY(get_int(root, "model_files", file, 1, 99999, &v));
  s->nmodel_files = (int)v;
  TDMI_TRY(parse_optimizer(json_object_get(root, "optimizer"), file, s));
  TDMI_TRY(parse_rngs(json_object_get(root, "rng_offsets"), file, s));
  TDMI_TRY(get_int(root, "user_data_bytes", file, 0, INT64_MAX, &v));
  s->user_bytes = (uint64_t)v;
  return parse_samplers(json_object_get(root, "samplers"), file, s);
}

tdm_status tdmi_state_parse(const char *file, const char *text, size_t n,
                            tdmi_ckpt_state *s) {
  memset(s, 0, sizeof *s);
  json_error_t err;
  json_t *root = json_loadb(text, n, JSON_REJECT_DUPLICATES, &err);
  if (!root)
    return tdmi_error(TDM_ERR_FORMAT, "%s: line %d column %d: %s", file,
                      err.line, err.column, err.text);
  tdm_status st = parse_root(root, file, s);
  json_decref(root);
  if (st != TDM_SUCCESS)
    tdmi_state_free(s);
  return st;
}

void tdmi_state_free(tdmi_ckpt_state *s) {
  free(s->rng_offsets);
  s->rng_offsets = NULL;
  free(s->sampler_pos);
  s->sampler_pos = NULL;
}

/* ---- model.safetensors.index.json ---- */

tdm_status tdmi_index_dump(uint64_t total, const char *const *tensors,
                           const char *const *files, int n, char **text) {
  json_t *map = json_object();
  for (int i = 0; map && i < n; i++)
    json_object_set_new(map, tensors[i], json_string(files[i]));
  json_t *root = json_pack("{s:{s:I}, s:o}", "metadata", "total_size",
                           (json_int_t)total, "weight_map", map);
  *text = root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
  json_decref(root);
  if (!*text)
    return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: cannot build %s",
                      TDMI_CKPT_INDEX);
  return TDM_SUCCESS;
}

void tdmi_strings_free(char **v, int n) {
  for (int i = 0; v && i < n; i++)
    free(v[i]);
  free(v);
}

static int listed(char **v, int n, const char *s) {
  for (int i = 0; i < n; i++)
    if (!strcmp(v[i], s))
      return 1;
  return 0;
}

static tdm_status index_files(json_t *map, const char *file, char **v,
                              int *n) {
  const char *tensor;
  json_t *value;
  json_object_foreach(map, tensor, value) {
    const char *f = json_string_value(value);
    /* No '\n' either: load.c passes the files on as "folder/file\n"
     * lines, and a newline would make a second file outside the folder
     * (found by tests/fuzz/fuzz_index.c). */
    if (!f || !f[0] || strpbrk(f, "/\n") || f[0] == '.')
      return tdmi_error(TDM_ERR_FORMAT, "%s: weight_map[\"%s\"] is not a "
                        "plain file name", file, tensor);
    if (listed(v, *n, f))
      continue;
    if (!(v[*n] = strdup(f)))
      return tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", file);
    (*n)++;
  }
  return TDM_SUCCESS;
}

tdm_status tdmi_index_parse(const char *file, const char *text, size_t n,
                            char ***files, int *nfiles) {
  json_error_t err;
  json_t *root = json_loadb(text, n, JSON_REJECT_DUPLICATES, &err);
  if (!root)
    return tdmi_error(TDM_ERR_FORMAT, "%s: line %d column %d: %s", file,
                      err.line, err.column, err.text);
  json_t *map = json_object_get(root, "weight_map");
  tdm_status st = TDM_SUCCESS;
  *nfiles = 0;
  *files = NULL;
  if (!json_is_object(map) || json_object_size(map) == 0)
    st = bad(file, "weight_map", "is missing, empty or not an object");
  else if (!(*files = calloc(json_object_size(map), sizeof **files)))
    st = tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", file);
  else
    st = index_files(map, file, *files, nfiles);
  json_decref(root);
  if (st != TDM_SUCCESS) {
    tdmi_strings_free(*files, *nfiles);
    *files = NULL;
    *nfiles = 0;
  }
  return st;
}
