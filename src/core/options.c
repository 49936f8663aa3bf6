/* options.c - resolve options: defaults < config file < environment < API.
 * One table describes every setting, so the YAML key, the environment
 * variable and the tdm_options field of a setting cannot drift apart. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "core.h"

typedef enum {
  KIND_ENUM,     /* one of names[]; the value is the index */
  KIND_BOOL,
  KIND_INDEX,    /* >= 0 */
  KIND_POSITIVE, /* >= 1 */
  KIND_STRING
} kind;

/* Names of enumerated values, indexed by value; NULL: not accepted. */
typedef struct {
  const char *const *names;
  int count;
  const char *expect; /* for messages */
} enum_names;

typedef struct {
  const char *key;     /* YAML key                        */
  const char *env;     /* environment variable            */
  kind kind;
  size_t config_off;   /* offset in tdmi_config           */
  size_t api_off;      /* offset in tdm_options           */
  size_t api_end;      /* offset just past the API field  */
  const enum_names *names; /* KIND_ENUM                   */
} setting;

#define API_FIELD(f) offsetof(tdm_options, f), \
  offsetof(tdm_options, f) + sizeof(((tdm_options *)0)->f)

#define ENUM_NAMES(var, expect, ...)                                  \
  static const char *const var##_list[] = {__VA_ARGS__};              \
  static const enum_names var = {                                     \
      var##_list, (int)(sizeof var##_list / sizeof var##_list[0]), expect}

ENUM_NAMES(level_names, "off, warn, info, debug or trace", "off", "warn",
           "info", "debug", "trace");
ENUM_NAMES(device_names, "auto, cpu or cuda", "auto", "cpu", "cuda");
ENUM_NAMES(progress_names, "auto, poll or thread", "auto", "poll", "thread");
ENUM_NAMES(precision_names, "no, bf16 or fp16", "no", "bf16", "fp16");
/* Indexed by tdm_dtype: the dtypes gradients may be reduced in. */
ENUM_NAMES(reduce_names, "f32, bf16 or f16", "f32", NULL, "f16", "bf16");
ENUM_NAMES(isa_names, "auto, generic, avx2 or avx512", "auto", "generic",
           "avx2", "avx512");
ENUM_NAMES(stage_names, "0, 1, 2 or 3", "0", "1", "2", "3");
ENUM_NAMES(gpu_coll_names, "auto, nccl, mpi or staged", "auto", "nccl",
           "mpi", "staged");
ENUM_NAMES(nonfinite_names, "off, warn, skip or error", "off", "warn",
           "skip", "error");
ENUM_NAMES(offload_names, "none, optimizer or params", "none", "optimizer",
           "params");

static const setting settings[] = {
    {"log_level", "TANDEM_LOG", KIND_ENUM, offsetof(tdmi_config, log_level),
     API_FIELD(log_level), &level_names},
    {"log_file", "TANDEM_LOG_FILE", KIND_STRING, offsetof(tdmi_config, log_file),
     API_FIELD(log_file), NULL},
    {"debug", "TANDEM_DEBUG", KIND_BOOL, offsetof(tdmi_config, debug),
     API_FIELD(debug), NULL},
    {"device", "TANDEM_DEVICE", KIND_ENUM, offsetof(tdmi_config, device),
     API_FIELD(device), &device_names},
    {"device_index", "TANDEM_DEVICE_INDEX", KIND_INDEX,
     offsetof(tdmi_config, device_index), API_FIELD(device_index), NULL},
    {"bucket_cap_bytes", "TANDEM_BUCKET_CAP_BYTES", KIND_POSITIVE,
     offsetof(tdmi_config, bucket_cap_bytes), API_FIELD(bucket_cap_bytes),
     NULL},
    {"first_bucket_bytes", "TANDEM_FIRST_BUCKET_BYTES", KIND_POSITIVE,
     offsetof(tdmi_config, first_bucket_bytes), API_FIELD(first_bucket_bytes),
     NULL},
    {"gradient_accumulation_steps", "TANDEM_GRADIENT_ACCUMULATION_STEPS",
     KIND_POSITIVE, offsetof(tdmi_config, gradient_accumulation_steps),
     API_FIELD(gradient_accumulation_steps), NULL},
    {"progress", "TANDEM_PROGRESS", KIND_ENUM,
     offsetof(tdmi_config, progress), API_FIELD(progress), &progress_names},
    {"mixed_precision", "TANDEM_MIXED_PRECISION", KIND_ENUM,
     offsetof(tdmi_config, mixed_precision), API_FIELD(mixed_precision),
     &precision_names},
    {"reduce_dtype", "TANDEM_REDUCE_DTYPE", KIND_ENUM,
     offsetof(tdmi_config, reduce_dtype), API_FIELD(reduce_dtype),
     &reduce_names},
    {"cpu_threads", "TANDEM_CPU_THREADS", KIND_POSITIVE,
     offsetof(tdmi_config, cpu_threads), API_FIELD(cpu_threads), NULL},
    {"cpu_isa", "TANDEM_CPU_ISA", KIND_ENUM, offsetof(tdmi_config, cpu_isa),
     API_FIELD(cpu_isa), &isa_names},
    {"zero_stage", "TANDEM_ZERO_STAGE", KIND_ENUM,
     offsetof(tdmi_config, zero_stage), API_FIELD(zero_stage), &stage_names},
    {"offload", "TANDEM_OFFLOAD", KIND_ENUM, offsetof(tdmi_config, offload),
     API_FIELD(offload), &offload_names},
    {"zero3_prefetch_bytes", "TANDEM_ZERO3_PREFETCH_BYTES", KIND_INDEX,
     offsetof(tdmi_config, zero3_prefetch_bytes),
     API_FIELD(zero3_prefetch_bytes), NULL},
    {"zero3_persistence_threshold", "TANDEM_ZERO3_PERSISTENCE_THRESHOLD",
     KIND_INDEX, offsetof(tdmi_config, zero3_persistence_threshold),
     API_FIELD(zero3_persistence_threshold), NULL},
    {"gpu_collectives", "TANDEM_GPU_COLLECTIVES", KIND_ENUM,
     offsetof(tdmi_config, gpu_collectives), API_FIELD(gpu_collectives),
     &gpu_coll_names},
    {"timeout", "TANDEM_TIMEOUT", KIND_INDEX, offsetof(tdmi_config, timeout),
     API_FIELD(timeout), NULL},
    {"nonfinite", "TANDEM_NONFINITE", KIND_ENUM,
     offsetof(tdmi_config, nonfinite), API_FIELD(nonfinite), &nonfinite_names},
    {"dump_on_signal", "TANDEM_DUMP_ON_SIGNAL", KIND_BOOL,
     offsetof(tdmi_config, dump_on_signal), API_FIELD(dump_on_signal), NULL},
    {"metrics_dir", "TANDEM_METRICS_DIR", KIND_STRING,
     offsetof(tdmi_config, metrics_dir), API_FIELD(metrics_dir), NULL},
    {"metrics_all_ranks", "TANDEM_METRICS_ALL_RANKS", KIND_BOOL,
     offsetof(tdmi_config, metrics_all_ranks), API_FIELD(metrics_all_ranks),
     NULL},
};
#define NSETTINGS (sizeof settings / sizeof settings[0])

static int lookup(const char *const *names, int n, const char *text) {
  for (int i = 0; i < n; i++)
    if (names[i] && strcasecmp(names[i], text) == 0)
      return i;
  return -1;
}

static int parse_bool(const char *text) {
  static const char *const yes[] = {"1", "true", "yes", "on"};
  static const char *const no[] = {"0", "false", "no", "off"};
  if (lookup(yes, 4, text) >= 0)
    return 1;
  return lookup(no, 4, text) >= 0 ? 0 : -1;
}

static int parse_index(const char *text) {
  char *end;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (errno || end == text || *end != '\0' || v < 0 || v > INT_MAX)
    return -1;
  return (int)v;
}

/* Parses text for setting s into the config; where names the source for
 * the message ("TANDEM_LOG", "file 'x.yaml' line 3"). */
static void note_origin(const setting *s, const char *where,
                        tdmi_config *cfg) {
  if (cfg->origin)
    snprintf(cfg->origin[s - settings], TDMI_ORIGIN_LEN, "%s", where);
}

static tdm_status set_from_text(const setting *s, const char *text,
                                const char *where, tdmi_config *cfg) {
  void *field = (char *)cfg + s->config_off;
  note_origin(s, where, cfg);
  int v = 0;
  const char *expect = NULL;
  switch (s->kind) {
  case KIND_ENUM:
    v = lookup(s->names->names, s->names->count, text);
    expect = s->names->expect;
    break;
  case KIND_BOOL:
    v = parse_bool(text);
    expect = "a boolean (0/1, true/false, yes/no, on/off)";
    break;
  case KIND_INDEX:
    v = parse_index(text);
    expect = "a non-negative integer";
    break;
  case KIND_POSITIVE:
    v = parse_index(text);
    v = v == 0 ? -1 : v;
    expect = "a positive integer";
    break;
  case KIND_STRING: {
    char **str = field;
    char *copy = strdup(text);
    if (!copy)
      return tdmi_error(TDM_ERR_NO_MEMORY, "out of memory copying %s", where);
    free(*str);
    *str = copy;
    return TDM_SUCCESS;
  }
  }
  if (v < 0)
    return tdmi_error(TDM_ERR_CONFIG, "%s: '%s' for %s is invalid; expected %s",
                      where, text, s->key, expect);
  *(int *)field = v;
  return TDM_SUCCESS;
}

static const setting *find_key(const char *key) {
  for (size_t i = 0; i < NSETTINGS; i++)
    if (strcmp(settings[i].key, key) == 0)
      return &settings[i];
  return NULL;
}

static tdm_status apply_pair(yaml_document_t *doc, yaml_node_pair_t *pair,
                             const char *path, tdmi_config *cfg) {
  yaml_node_t *key = yaml_document_get_node(doc, pair->key);
  yaml_node_t *val = yaml_document_get_node(doc, pair->value);
  unsigned long line = key->start_mark.line + 1;
  if (key->type != YAML_SCALAR_NODE)
    return tdmi_error(TDM_ERR_CONFIG,
                      "config file '%s' line %lu: keys must be scalars", path,
                      line);
  const char *name = (const char *)key->data.scalar.value;
  if (strcmp(name, "launch") == 0) /* the tandem command's: ranks, hosts */
    return val->type == YAML_MAPPING_NODE
               ? TDM_SUCCESS
               : tdmi_error(TDM_ERR_CONFIG, "config file '%s' line %lu: "
                            "'launch' must be a mapping", path, line);
  const setting *s = find_key(name);
  if (!s)
    return tdmi_error(TDM_ERR_CONFIG,
                      "config file '%s' line %lu: unknown key '%s'", path,
                      line, name);
  if (val->type != YAML_SCALAR_NODE)
    return tdmi_error(TDM_ERR_CONFIG,
                      "config file '%s' line %lu: the value of '%s' must be "
                      "a scalar", path, line, name);
  char where[512];
  snprintf(where, sizeof where, "config file '%s' line %lu", path, line);
  return set_from_text(s, (const char *)val->data.scalar.value, where, cfg);
}

static tdm_status apply_document(yaml_document_t *doc, const char *path,
                                 tdmi_config *cfg) {
  yaml_node_t *root = yaml_document_get_root_node(doc);
  if (!root) /* empty file: nothing set */
    return TDM_SUCCESS;
  if (root->type != YAML_MAPPING_NODE)
    return tdmi_error(TDM_ERR_CONFIG,
                      "config file '%s': the top level must be a mapping of "
                      "key: value", path);
  for (yaml_node_pair_t *p = root->data.mapping.pairs.start;
       p < root->data.mapping.pairs.top; p++)
    TDMI_TRY(apply_pair(doc, p, path, cfg));
  return TDM_SUCCESS;
}

static tdm_status apply_file(const char *path, tdmi_config *cfg) {
  FILE *fp = fopen(path, "rb");
  if (!fp)
    return tdmi_error(TDM_ERR_IO, "config file '%s' cannot be opened: %s",
                      path, strerror(errno));
  yaml_parser_t parser;
  yaml_document_t doc;
  tdm_status st;
  if (!yaml_parser_initialize(&parser)) {
    fclose(fp);
    return tdmi_error(TDM_ERR_NO_MEMORY, "cannot create a YAML parser");
  }
  yaml_parser_set_input_file(&parser, fp);
  if (!yaml_parser_load(&parser, &doc)) {
    st = tdmi_error(TDM_ERR_CONFIG, "config file '%s' line %lu: %s", path,
                    (unsigned long)parser.problem_mark.line + 1,
                    parser.problem ? parser.problem : "invalid YAML");
  } else {
    st = apply_document(&doc, path, cfg);
    yaml_document_delete(&doc);
  }
  yaml_parser_delete(&parser);
  fclose(fp);
  return st;
}

static tdm_status apply_env(tdmi_config *cfg) {
  for (size_t i = 0; i < NSETTINGS; i++) {
    const char *text = getenv(settings[i].env);
    if (text && *text)
      TDMI_TRY(set_from_text(&settings[i], text, settings[i].env, cfg));
  }
  return TDM_SUCCESS;
}

/* Validates an API int field against the setting's range. */
static tdm_status api_int(const setting *s, int v, tdmi_config *cfg) {
  int max = s->kind == KIND_ENUM   ? s->names->count - 1
            : s->kind == KIND_BOOL ? 1
                                   : INT_MAX;
  int min = s->kind == KIND_POSITIVE ? 1 : 0;
  if (v < min || v > max || (s->kind == KIND_ENUM && !s->names->names[v]))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "tdm_options.%s = %d is out of range [%d, %d]", s->key,
                      v, min, max);
  *(int *)((char *)cfg + s->config_off) = v;
  note_origin(s, "tdm_options", cfg);
  return TDM_SUCCESS;
}

static tdm_status apply_api(const tdm_options *api, tdmi_config *cfg) {
  for (size_t i = 0; i < NSETTINGS; i++) {
    const setting *s = &settings[i];
    if (s->api_end > api->size) /* caller's struct predates this field */
      continue;
    const void *field = (const char *)api + s->api_off;
    if (s->kind == KIND_STRING) {
      const char *text = *(const char *const *)field;
      if (text)
        TDMI_TRY(set_from_text(s, text, "tdm_options", cfg));
    } else if (*(const int *)field != TDM_UNSET) {
      TDMI_TRY(api_int(s, *(const int *)field, cfg));
    }
  }
  return TDM_SUCCESS;
}

static tdm_status check_api_size(const tdm_options *api) {
  if (api->size < offsetof(tdm_options, config_file) ||
      api->size > sizeof(tdm_options))
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "tdm_options.size = %zu; this library knows sizes up to "
                      "%zu (start from TDM_OPTIONS_INIT)", api->size,
                      sizeof(tdm_options));
  return TDM_SUCCESS;
}

static tdm_status pick_config_file(const tdm_options *api, tdmi_config *cfg) {
  const char *path = getenv("TANDEM_CONFIG"), *from = "TANDEM_CONFIG";
  if (api && api->size >= offsetof(tdm_options, config_file) + sizeof(char *) &&
      api->config_file)
    path = api->config_file, from = "tdm_options";
  if (!path || !*path)
    return TDM_SUCCESS;
  if (cfg->origin) /* the slot after the settings' */
    snprintf(cfg->origin[NSETTINGS], TDMI_ORIGIN_LEN, "%s", from);
  cfg->config_file = strdup(path);
  return cfg->config_file ? TDM_SUCCESS
                          : tdmi_error(TDM_ERR_NO_MEMORY, "out of memory");
}

/* Settings valid alone that do not go together. */
static tdm_status check_combination(const tdmi_config *c) {
  if (c->offload == TDM_OFFLOAD_OPTIMIZER && c->zero_stage < 1)
    return tdmi_error(TDM_ERR_CONFIG,
                      "offload=optimizer needs zero_stage 1, 2 or 3 "
                      "(zero_stage is %d)", c->zero_stage);
  if (c->offload == TDM_OFFLOAD_PARAMS && c->zero_stage != 3)
    return tdmi_error(TDM_ERR_CONFIG,
                      "offload=params needs zero_stage 3 (zero_stage is %d)",
                      c->zero_stage);
  return TDM_SUCCESS;
}

static tdm_status resolve(const tdm_options *api, tdmi_config *out,
                          char (*origin)[TDMI_ORIGIN_LEN]) {
  tdmi_config cfg = {NULL, TDM_LOG_WARN, NULL, 0, TDM_DEVICE_AUTO, TDM_UNSET,
                     25 << 20, 1 << 20, 1, TDM_PROGRESS_AUTO,
                     TDM_PRECISION_NO, TDM_F32, TDM_UNSET, TDM_CPU_ISA_AUTO,
                     0, TDM_OFFLOAD_NONE, 50 << 20, 100000,
                     TDM_GPU_COLLECTIVES_AUTO, 600, TDM_NONFINITE_OFF, 0,
                     NULL, 0, origin};
  tdm_status st = api ? check_api_size(api) : TDM_SUCCESS;
  if (st == TDM_SUCCESS)
    st = pick_config_file(api, &cfg);
  if (st == TDM_SUCCESS && cfg.config_file)
    st = apply_file(cfg.config_file, &cfg);
  if (st == TDM_SUCCESS)
    st = apply_env(&cfg);
  if (st == TDM_SUCCESS && api)
    st = apply_api(api, &cfg);
  if (st == TDM_SUCCESS)
    st = check_combination(&cfg);
  if (st != TDM_SUCCESS) {
    tdmi_config_free(&cfg);
    return st;
  }
  cfg.origin = NULL;
  *out = cfg;
  return TDM_SUCCESS;
}

tdm_status tdmi_config_resolve(const tdm_options *api, tdmi_config *out) {
  return resolve(api, out, NULL);
}

void tdmi_appendf(char *buf, size_t size, size_t *len, const char *format,
                  ...) {
  va_list ap;
  va_start(ap, format);
  int n = vsnprintf(buf && *len < size ? buf + *len : NULL,
                    buf && *len < size ? size - *len : 0, format, ap);
  va_end(ap);
  *len += n > 0 ? (size_t)n : 0;
}

/* The value of setting s in cfg as the config file would spell it. */
static void value_text(const setting *s, const tdmi_config *cfg, char *out,
                       size_t size) {
  const void *field = (const char *)cfg + s->config_off;
  int v = s->kind == KIND_STRING ? 0 : *(const int *)field;
  if (s->kind == KIND_STRING) { /* log_file, metrics_dir */
    const char *text = *(char *const *)field;
    snprintf(out, size, "%s", text ? text
                              : s->config_off == offsetof(tdmi_config, log_file)
                                  ? "stderr" : "none");
  } else if (s->kind == KIND_ENUM) {
    snprintf(out, size, "%s", s->names->names[v]);
  } else if (s->kind == KIND_BOOL) {
    snprintf(out, size, "%s", v ? "true" : "false");
  } else if (v == TDM_UNSET) {
    snprintf(out, size, "auto");
  } else {
    snprintf(out, size, "%d", v);
  }
}

tdm_status tdmi_config_report(const tdm_options *api, char *buf, size_t size,
                              size_t *len, tdmi_config *out) {
  /* one per setting, then the config file's */
  char(*origin)[TDMI_ORIGIN_LEN] = calloc(NSETTINGS + 1, sizeof *origin);
  if (!origin)
    return tdmi_error(TDM_ERR_NO_MEMORY, "out of memory");
  for (size_t i = 0; i < NSETTINGS; i++)
    snprintf(origin[i], TDMI_ORIGIN_LEN, "default");
  snprintf(origin[NSETTINGS], TDMI_ORIGIN_LEN, "none");
  tdmi_config cfg;
  tdm_status st = resolve(api, &cfg, origin);
  if (st == TDM_SUCCESS) {
    tdmi_appendf(buf, size, len, "%-28s = %-12s (%s)\n", "config_file",
                 cfg.config_file ? cfg.config_file : "", origin[NSETTINGS]);
    for (size_t i = 0; i < NSETTINGS; i++) {
      char value[256];
      value_text(&settings[i], &cfg, value, sizeof value);
      tdmi_appendf(buf, size, len, "%-28s = %-12s (%s)\n", settings[i].key,
                   value, origin[i]);
    }
    if (out)
      *out = cfg;
    else
      tdmi_config_free(&cfg);
  }
  free(origin);
  return st;
}

void tdmi_config_free(tdmi_config *config) {
  free(config->config_file);
  free(config->log_file);
  free(config->metrics_dir);
  config->config_file = config->log_file = config->metrics_dir = NULL;
}

tdm_status tdm_options_init(tdm_options *options) {
  TDMI_CHECK_PTR(options, "tdm_options_init");
  tdm_options init = TDM_OPTIONS_INIT;
  *options = init;
  return TDM_SUCCESS;
}
