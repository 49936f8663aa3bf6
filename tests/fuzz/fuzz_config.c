/* fuzz_config.c - libFuzzer harness of the YAML config file parser
 * (src/core/options.c over libyaml; scripts/fuzz.sh builds and runs it).
 * The input is a whole config file, written to a temporary file that
 * tdm_options.config_file names, as a program's TANDEM_CONFIG would.
 * The properties, besides no crash and no leak, checked against the
 * document as libyaml loads it here and the harness's own reading of
 * each value (fuzz_expected in fuzz_options.h):
 *   - accepted: the document is a mapping (or empty) of scalar keys,
 *     each a setting, to valid scalar values; each setting has the value
 *     of the text of its last pair, the others their defaults; and what
 *     fuzz_options.h checks: ranges, the API agrees, and written back as
 *     canonical YAML (every value double-quoted, escaped) the config
 *     parses to the same config;
 *   - refused: TDM_ERR_CONFIG (the file exists; TDM_ERR_NO_MEMORY
 *     aside), and when every pair is valid, the same values through
 *     tdm_options are refused too (a combination rule). */
#include <unistd.h>
#include <yaml.h>

#include "fuzz_options.h"

static char dir[4096], input[4200], again[4200];

static void cleanup(void) {
  unlink(input);
  unlink(again);
  rmdir(dir);
}

static void write_file(const char *path, const void *data, size_t size) {
  FILE *fp = fopen(path, "wb");
  if (!fp || fwrite(data, 1, size, fp) != size || fclose(fp) != 0)
    abort(); /* the harness's own failure, not a finding */
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  const char *tmp = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/fuzz-config.XXXXXX", tmp && *tmp ? tmp
                                                                   : "/tmp");
  if (!mkdtemp(dir))
    abort();
  snprintf(input, sizeof input, "%s/input.yaml", dir);
  snprintf(again, sizeof again, "%s/again.yaml", dir);
  atexit(cleanup);
  fuzz_options_init();
  return 0;
}

/* The UTF-8 sequence at s (n bytes left): its code point and length, or
 * 0 when it is not well formed. */
static int utf8(const unsigned char *s, size_t n, uint32_t *cp) {
  int len = s[0] < 0x80 ? 1 : (s[0] & 0xe0) == 0xc0 ? 2
          : (s[0] & 0xf0) == 0xe0 ? 3 : (s[0] & 0xf8) == 0xf0 ? 4 : 0;
  if (len == 0 || (size_t)len > n)
    return 0;
  uint32_t v = len == 1 ? s[0] : s[0] & (0x7f >> len);
  for (int i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    v = v << 6 | (s[i] & 0x3f);
  }
  *cp = v;
  return len;
}

/* text as a YAML double-quoted scalar: printable ASCII as is, anything
 * else escaped by code point.  0 when text is not UTF-8 (libyaml hands
 * out UTF-8 only, so that would be a finding of its own). */
static int quote(FILE *fp, const char *text) {
  const unsigned char *s = (const unsigned char *)text;
  size_t n = strlen(text);
  fputc('"', fp);
  while (n > 0) {
    uint32_t cp = 0;
    int len = utf8(s, n, &cp);
    if (len == 0)
      return 0;
    if (cp == '"' || cp == '\\')
      fprintf(fp, "\\%c", (int)cp);
    else if (cp >= 0x20 && cp < 0x7f)
      fputc((int)cp, fp);
    else if (cp < 0x10000)
      fprintf(fp, "\\u%04x", (unsigned)cp);
    else
      fprintf(fp, "\\U%08x", (unsigned)cp);
    s += len;
    n -= (size_t)len;
  }
  fputs("\"\n", fp);
  return 1;
}

/* c as canonical YAML in the file again; 0 when a string is not UTF-8. */
static int write_canonical(const tdmi_config *c) {
  FILE *fp = fopen(again, "wb");
  if (!fp)
    abort();
  int ok = 1;
  fputs("# written back by fuzz_config\n", fp);
  for (size_t i = 0; ok && i < NSETTINGS; i++) {
    char buf[32];
    const char *text;
    if (!fuzz_text(c, &settings[i], buf, sizeof buf, &text))
      continue;
    fprintf(fp, "%s: ", settings[i].key);
    ok = quote(fp, text);
  }
  if (fclose(fp) != 0)
    abort();
  return ok;
}

/* The document as libyaml loads it: for each setting the text of its
 * last pair (NULL: none) into text[]; 1 when the document is a mapping of
 * known scalar keys to scalars (or empty), 0 when not, -1 when libyaml
 * refuses it.  *valid: 1 when fuzz_expected finds every pair's text valid
 * (an earlier pair of a key too: the parser checks each), 0 when one is
 * invalid, -1 when a kind is one this harness predates. */
static int read_document(const uint8_t *data, size_t size, char **text,
                         int *valid) {
  yaml_parser_t parser;
  yaml_document_t doc;
  memset(text, 0, NSETTINGS * sizeof *text);
  *valid = 1;
  if (!yaml_parser_initialize(&parser))
    abort();
  yaml_parser_set_input_string(&parser, data, size);
  if (!yaml_parser_load(&parser, &doc)) {
    yaml_parser_delete(&parser);
    return -1;
  }
  int ok = 1;
  yaml_node_t *root = yaml_document_get_root_node(&doc);
  if (root && root->type != YAML_MAPPING_NODE)
    ok = 0;
  for (yaml_node_pair_t *p = root && ok ? root->data.mapping.pairs.start
                                        : NULL;
       p && p < root->data.mapping.pairs.top; p++) {
    yaml_node_t *k = yaml_document_get_node(&doc, p->key);
    yaml_node_t *v = yaml_document_get_node(&doc, p->value);
    size_t i = 0;
    while (k->type == YAML_SCALAR_NODE && i < NSETTINGS &&
           strcmp(settings[i].key, (const char *)k->data.scalar.value) != 0)
      i++;
    if (k->type != YAML_SCALAR_NODE || i == NSETTINGS ||
        v->type != YAML_SCALAR_NODE) {
      ok = 0;
      break;
    }
    free(text[i]);
    if (!(text[i] = strdup((const char *)v->data.scalar.value)))
      abort();
    int x, e = fuzz_expected(&settings[i], text[i], &x);
    *valid = e < 0 ? -1 : *valid < 0 ? *valid : *valid && e;
  }
  yaml_document_delete(&doc);
  yaml_parser_delete(&parser);
  return ok;
}

static void free_texts(char **text) {
  for (size_t i = 0; i < NSETTINGS; i++)
    free(text[i]);
}

static void check_accepted(const uint8_t *data, size_t size,
                           const tdmi_config *c) {
  char *text[NSETTINGS];
  int valid;
  if (read_document(data, size, text, &valid) != 1 || valid == 0)
    __builtin_trap(); /* accepted what is not a mapping of valid pairs */
  for (size_t i = 0; i < NSETTINGS; i++) {
    const setting *s = &settings[i];
    int v = 0, ok = text[i] ? fuzz_expected(s, text[i], &v) : 1;
    if (ok == 0)
      __builtin_trap(); /* accepted an invalid text */
    if (ok < 0)
      continue;
    if (s->kind == KIND_STRING) {
      const char *want = text[i] ? text[i] : *fuzz_str(&fuzz_defaults, s);
      const char *got = *fuzz_str(c, s);
      if ((want == NULL) != (got == NULL) || (want && strcmp(want, got)))
        __builtin_trap();
    } else if (*fuzz_int(c, s) !=
               (text[i] ? v : *fuzz_int(&fuzz_defaults, s))) {
      __builtin_trap(); /* a value other than the text's (or default) */
    }
  }
  free_texts(text);
}

/* Refused: when every pair is valid, only a combination rule may refuse,
 * and must refuse the same values from tdm_options. */
static void check_refused(const uint8_t *data, size_t size) {
  char *text[NSETTINGS];
  int valid;
  int ok = read_document(data, size, text, &valid) == 1 && valid == 1;
  tdm_options o = TDM_OPTIONS_INIT;
  for (size_t i = 0; ok && i < NSETTINGS; i++) {
    const setting *s = &settings[i];
    int v = 0;
    if (!text[i])
      continue;
    fuzz_expected(s, text[i], &v);
    if (s->kind == KIND_STRING)
      *(const char **)((char *)&o + s->api_off) = text[i];
    else
      *(int *)((char *)&o + s->api_off) = v;
  }
  tdmi_config c;
  if (ok && tdmi_config_resolve(&o, &c) == TDM_SUCCESS)
    __builtin_trap(); /* refused a file of valid pairs alone */
  free_texts(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  write_file(input, data, size);
  tdm_options o = TDM_OPTIONS_INIT;
  o.config_file = input;
  tdmi_config c;
  tdm_status st = tdmi_config_resolve(&o, &c);
  if (st != TDM_SUCCESS) {
    if (st == TDM_ERR_NO_MEMORY)
      return 0;
    if (st != TDM_ERR_CONFIG || tdm_last_error()[0] == '\0')
      __builtin_trap();
    check_refused(data, size);
    return 0;
  }
  if (!c.config_file || strcmp(c.config_file, input) != 0)
    __builtin_trap();
  check_accepted(data, size, &c);
  fuzz_check_ranges(&c);
  fuzz_check_api(&c);
  if (!write_canonical(&c))
    __builtin_trap();
  tdmi_config back;
  o.config_file = again;
  if (tdmi_config_resolve(&o, &back) != TDM_SUCCESS)
    __builtin_trap();
  if (!fuzz_same(&c, &back))
    __builtin_trap();
  tdmi_config_free(&back);
  tdmi_config_free(&c);
  return 0;
}
