/* settings.c - the library settings the commands take as flags, checked
 * by the library's own parser; the launch section of a config file;
 * counts with suffixes. */
#define _GNU_SOURCE /* getopt_long */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "cli.h"

const cli_setting cli_settings[] = {
    {"zero-stage", "zero_stage", "TANDEM_ZERO_STAGE",
     "ZeRO stage: 0 (data parallel), 1 (optimizer state sharded), 2 (and "
     "gradients), 3 (and parameters)", "0, 1, 2, 3", "0"},
    {"offload", "offload", "TANDEM_OFFLOAD",
     "Offload to host memory: none, optimizer (ZeRO >= 1), params (ZeRO 3)",
     "none, optimizer, params", "none"},
    {"mixed-precision", "mixed_precision", "TANDEM_MIXED_PRECISION",
     "Mixed precision", "no, bf16, fp16", "no"},
    {"gradient-accumulation-steps", "gradient_accumulation_steps",
     "TANDEM_GRADIENT_ACCUMULATION_STEPS", "Gradient accumulation steps",
     NULL, "1"},
    {"bucket-cap-bytes", "bucket_cap_bytes", "TANDEM_BUCKET_CAP_BYTES",
     "Gradient bucket size in bytes", NULL, "26214400"},
    {"log-level", "log_level", "TANDEM_LOG", "Log level",
     "off, warn, info, debug, trace", "warn"},
    {"timeout", "timeout", "TANDEM_TIMEOUT",
     "Collective timeout in seconds (0: none)", NULL, "600"},
    {"device", "device", "TANDEM_DEVICE", "Device", "auto, cpu, cuda",
     "auto"},
};
const int cli_nsettings = (int)(sizeof cli_settings / sizeof cli_settings[0]);

const cli_setting *cli_setting_of_flag(const char *flag) {
  for (int i = 0; i < cli_nsettings; i++)
    if (strcmp(cli_settings[i].flag, flag) == 0)
      return &cli_settings[i];
  return NULL;
}

/* Sets name to value (NULL: unset) and returns what it was (malloc'd). */
static char *swap_env(const char *name, const char *value) {
  const char *old = getenv(name);
  char *saved = old ? strdup(old) : NULL;
  if (value)
    setenv(name, value, 1);
  else
    unsetenv(name);
  return saved;
}

int cli_setting_valid(const cli_setting *s, const char *value,
                      const char *stage, const char **why) {
  static char message[1024];
  const cli_setting *z = cli_setting_of_flag("zero-stage");
  int with_stage = stage && s != z;
  char *saved_stage = with_stage ? swap_env(z->env, stage) : NULL;
  char *saved = swap_env(s->env, value);
  tdm_status st = tdm_options_report(NULL, NULL, 0, NULL);
  snprintf(message, sizeof message, "%s", tdm_last_error());
  free(swap_env(s->env, saved));
  free(saved);
  if (with_stage) {
    free(swap_env(z->env, saved_stage));
    free(saved_stage);
  }
  *why = message;
  return st == TDM_SUCCESS;
}

int cli_bad_option(const char *cmd, char **argv, const struct option *opts,
                   const char *shortopts) {
  const char *bad = argv[optind - 1];
  int missing = 0;
  if (strncmp(bad, "--", 2) == 0) {
    size_t len = strcspn(bad + 2, "=");
    for (const struct option *o = opts; o->name; o++)
      if (strlen(o->name) == len && strncmp(o->name, bad + 2, len) == 0)
        missing = o->has_arg == required_argument;
  } else if (bad[0] == '-' && bad[1]) {
    const char *c = optopt > 0 && optopt < 128 ? strchr(shortopts, optopt) : NULL;
    missing = c && c[1] == ':';
  }
  if (missing)
    return cli_fail(cmd, "%s needs a value (tandem %s --help)", bad, cmd);
  return cli_fail(cmd, "%s: unknown option (tandem %s --help)", bad, cmd);
}

uint64_t cli_parse_count(const char *text) {
  char *end = NULL;
  errno = 0;
  double v = strtod(text, &end);
  if (errno || end == text || v <= 0)
    return 0;
  double scale = 1;
  switch (*end) {
  case 'k': case 'K': scale = 1e3; end++; break;
  case 'm': case 'M': scale = 1e6; end++; break;
  case 'b': case 'B': case 'g': case 'G': scale = 1e9; end++; break;
  case 't': case 'T': scale = 1e12; end++; break;
  default: break;
  }
  if (*end || v * scale >= 1.8e19)
    return 0;
  return (uint64_t)(v * scale + 0.5);
}

/* ---- the launch section ---- */

static const char *scalar(yaml_node_t *n) {
  return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value
                                          : NULL;
}

/* hosts: "a,b" or a sequence [a, b], joined with commas. */
static int read_hosts(yaml_document_t *doc, yaml_node_t *v, char *out,
                      size_t cap) {
  const char *text = scalar(v);
  if (text)
    return snprintf(out, cap, "%s", text) < (int)cap;
  if (!v || v->type != YAML_SEQUENCE_NODE)
    return 0;
  out[0] = '\0';
  for (yaml_node_item_t *i = v->data.sequence.items.start;
       i < v->data.sequence.items.top; i++) {
    const char *h = scalar(yaml_document_get_node(doc, *i));
    size_t len = strlen(out);
    if (!h || snprintf(out + len, cap - len, "%s%s", len ? "," : "", h) >=
                  (int)(cap - len))
      return 0;
  }
  return 1;
}

static int positive(const char *text) {
  char *end = NULL;
  long v = text ? strtol(text, &end, 10) : 0;
  return text && *end == '\0' && v > 0 && v < 1 << 24 ? (int)v : 0;
}

static int read_section(const char *cmd, const char *file,
                        yaml_document_t *doc, yaml_node_t *map,
                        cli_launch_config *out) {
  if (map->type != YAML_MAPPING_NODE)
    return cli_fail(cmd, "%s: 'launch' must be a mapping", file);
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start;
       p < map->data.mapping.pairs.top; p++) {
    const char *key = scalar(yaml_document_get_node(doc, p->key));
    yaml_node_t *v = yaml_document_get_node(doc, p->value);
    unsigned long line = v->start_mark.line + 1;
    int ok = 1;
    if (key && strcmp(key, "ranks") == 0)
      ok = (out->ranks = positive(scalar(v))) > 0;
    else if (key && strcmp(key, "per_node") == 0)
      ok = (out->per_node = positive(scalar(v))) > 0;
    else if (key && strcmp(key, "hosts") == 0)
      ok = read_hosts(doc, v, out->hosts, sizeof out->hosts);
    else if (key && strcmp(key, "hostfile") == 0)
      ok = scalar(v) && snprintf(out->hostfile, sizeof out->hostfile,
                                      "%s", scalar(v)) <
                                 (int)sizeof out->hostfile;
    else
      return cli_fail(cmd, "%s line %lu: unknown launch key '%s' (ranks, "
                      "hosts, hostfile, per_node)", file, line,
                      key ? key : "?");
    if (!ok)
      return cli_fail(cmd, "%s line %lu: launch.%s: invalid value", file,
                      line, key);
  }
  return 0;
}

int cli_read_launch_config(const char *cmd, const char *file,
                           cli_launch_config *out) {
  memset(out, 0, sizeof *out);
  FILE *fp = fopen(file, "rb");
  if (!fp)
    return cli_fail(cmd, "%s: cannot read: %s", file, strerror(errno));
  yaml_parser_t parser;
  yaml_document_t doc;
  int rc = 0;
  yaml_parser_initialize(&parser);
  yaml_parser_set_input_file(&parser, fp);
  if (!yaml_parser_load(&parser, &doc)) {
    rc = cli_fail(cmd, "%s line %lu: %s", file,
                  (unsigned long)parser.problem_mark.line + 1,
                  parser.problem ? parser.problem : "invalid YAML");
  } else {
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root && root->type == YAML_MAPPING_NODE)
      for (yaml_node_pair_t *p = root->data.mapping.pairs.start;
           rc == 0 && p < root->data.mapping.pairs.top; p++) {
        const char *key = scalar(yaml_document_get_node(&doc, p->key));
        if (key && strcmp(key, "launch") == 0)
          rc = read_section(cmd, file, &doc,
                            yaml_document_get_node(&doc, p->value), out);
      }
    yaml_document_delete(&doc);
  }
  yaml_parser_delete(&parser);
  fclose(fp);
  return rc;
}
