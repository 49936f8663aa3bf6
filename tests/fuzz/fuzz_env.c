/* fuzz_env.c - libFuzzer harness of the TANDEM_* environment parser
 * (src/core/options.c; scripts/fuzz.sh builds and runs it).  The input
 * is lines "NAME=VALUE"; each line whose NAME starts with TANDEM_ is put
 * into the environment for one tdmi_config_resolve and taken out after
 * (TANDEM_CONFIG excepted: it would name a fuzzed file).  A value ends at
 * the line's end or at a NUL byte.
 *
 * The variables go in with putenv and out with unsetenv, the strings
 * owned here: glibc's setenv keeps a copy of every distinct value for
 * the life of the process (95 MB per million values), gigabytes over a
 * long run.  getenv, all the resolver calls, sees no difference.
 *
 * The properties, besides no crash and no leak, checked against the
 * harness's own reading of each value (fuzz_expected), for every setting
 * of the resolver's table:
 *   - accepted: each variable that is set (the last line of a name wins,
 *     an empty value counts as unset) has the value of its text;
 *   - refused: TDM_ERR_CONFIG, and the message starts with the name of a
 *     variable whose text is invalid, or no text is invalid and a
 *     combination rule (check_combination) refused;
 *   - and what fuzz_options.h checks: ranges, the API agrees, and the
 *     canonical text of every value, put back in the environment, gives
 *     the same config. */
#define _XOPEN_SOURCE 700 /* putenv */
#include "fuzz_options.h"

#define MAX_VARS 64

static char *vars[MAX_VARS]; /* "NAME=VALUE", owned until unset */
static int nvars;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  fuzz_options_init();
  return 0;
}

static void put(const char *name, size_t name_len, const char *value,
                size_t value_len) {
  if (nvars == MAX_VARS || name_len > 200)
    return;
  char *s = malloc(name_len + value_len + 2);
  if (!s)
    abort();
  memcpy(s, name, name_len);
  s[name_len] = '=';
  memcpy(s + name_len + 1, value, value_len);
  s[name_len + 1 + value_len] = '\0';
  if (putenv(s) != 0)
    abort();
  vars[nvars++] = s;
}

/* Each name out of the environment, then its string freed (in that
 * order: the environment points into the string until unsetenv). */
static void unset_all(void) {
  for (int i = 0; i < nvars; i++) {
    char name[256];
    size_t n = (size_t)(strchr(vars[i], '=') - vars[i]);
    if (n >= sizeof name)
      abort();
    memcpy(name, vars[i], n);
    name[n] = '\0';
    unsetenv(name);
  }
  for (int i = 0; i < nvars; i++)
    free(vars[i]);
  nvars = 0;
}

/* The input's lines as variables. */
static void put_input(const uint8_t *data, size_t size) {
  const char *p = (const char *)data, *end = p + size;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *line_end = nl ? nl : end;
    const char *nul = memchr(p, '\0', (size_t)(line_end - p));
    const char *text_end = nul ? nul : line_end;
    const char *eq = memchr(p, '=', (size_t)(text_end - p));
    if (eq && eq - p > 7 && memcmp(p, "TANDEM_", 7) == 0 &&
        !(eq - p == 13 && memcmp(p, "TANDEM_CONFIG", 13) == 0))
      put(p, (size_t)(eq - p), eq + 1, (size_t)(text_end - eq - 1));
    p = line_end + (nl != NULL);
  }
}

static void check_accepted(const tdmi_config *c) {
  for (size_t i = 0; i < NSETTINGS; i++) {
    const setting *s = &settings[i];
    const char *text = getenv(s->env);
    if (!text || !*text)
      continue;
    int v = 0;
    int ok = fuzz_expected(s, text, &v);
    if (ok == 0)
      __builtin_trap(); /* accepted an invalid text */
    if (ok < 0)
      continue;
    if (s->kind == KIND_STRING ? strcmp(*fuzz_str(c, s), text) != 0
                               : *fuzz_int(c, s) != v)
      __builtin_trap(); /* a value other than the text's */
  }
}

static void check_refused(tdm_status st) {
  const char *msg = tdm_last_error();
  if (st != TDM_ERR_CONFIG)
    __builtin_trap();
  int any_invalid = 0;
  for (size_t i = 0; i < NSETTINGS; i++) {
    const setting *s = &settings[i];
    const char *text = getenv(s->env);
    int v;
    if (!text || !*text || fuzz_expected(s, text, &v) != 0)
      continue;
    any_invalid = 1;
    size_t n = strlen(s->env);
    if (strncmp(msg, s->env, n) == 0 && msg[n] == ':')
      return; /* names an invalid variable */
  }
  if (any_invalid)
    __builtin_trap(); /* refused, but named no invalid variable */
  /* Every text valid: only a combination rule may refuse; resolving the
   * same values from tdm_options must be refused too. */
  tdm_options o = TDM_OPTIONS_INIT;
  for (size_t i = 0; i < NSETTINGS; i++) {
    const setting *s = &settings[i];
    const char *text = getenv(s->env);
    int v = 0;
    if (text && *text && s->kind != KIND_STRING &&
        fuzz_expected(s, text, &v) > 0)
      *(int *)((char *)&o + s->api_off) = v;
  }
  unset_all();
  tdmi_config c;
  if (tdmi_config_resolve(&o, &c) == TDM_SUCCESS)
    __builtin_trap();
}

/* c's canonical texts in the environment: the same config. */
static void check_canonical(const tdmi_config *c) {
  for (size_t i = 0; i < NSETTINGS; i++) {
    char buf[32];
    const char *text;
    if (fuzz_text(c, &settings[i], buf, sizeof buf, &text) && *text) {
      size_t n = strlen(settings[i].env);
      put(settings[i].env, n, text, strlen(text));
    }
  }
  tdmi_config back;
  if (tdmi_config_resolve(NULL, &back) != TDM_SUCCESS)
    __builtin_trap();
  unset_all();
  if (!fuzz_same(c, &back))
    __builtin_trap();
  tdmi_config_free(&back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  put_input(data, size);
  tdmi_config c;
  tdm_status st = tdmi_config_resolve(NULL, &c);
  if (st != TDM_SUCCESS) {
    check_refused(st);
    unset_all();
    return 0;
  }
  check_accepted(&c);
  unset_all();
  fuzz_check_ranges(&c);
  fuzz_check_api(&c);
  check_canonical(&c);
  tdmi_config_free(&c);
  return 0;
}
