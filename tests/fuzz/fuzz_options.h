/* fuzz_options.h - what fuzz_config.c and fuzz_env.c share: the option
 * resolver itself and the properties every resolved tdmi_config has.
 *
 * options.c is included whole (not linked), so that the checks walk its
 * own static table of settings: a setting added to the table is fuzzed
 * and checked with no change here.  The properties, per setting kind:
 *   - ranges: an enum is the index of a name it accepts, a bool 0 or 1,
 *     an index >= 0 and a positive >= 1 (or, for both, the default, which
 *     may be TDM_UNSET), and the combination rules hold;
 *   - the API agrees: the same values handed over in tdm_options resolve
 *     to the same config (what the text parsers accept, tdm_init's range
 *     checks accept too);
 *   - the canonical text of each value (fuzz_text) parses back to it;
 *   - each text has the meaning fuzz_expected, the harnesses' own reading
 *     of the kinds, gives it. */
#ifndef TDM_FUZZ_OPTIONS_H
#define TDM_FUZZ_OPTIONS_H

#include <ctype.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/options.c"

static tdmi_config fuzz_defaults; /* resolved with no file and no TANDEM_ */

static int *fuzz_int(const tdmi_config *c, const setting *s) {
  return (int *)((char *)c + s->config_off);
}

static char **fuzz_str(const tdmi_config *c, const setting *s) {
  return (char **)((char *)c + s->config_off);
}

/* Clears every variable the resolver reads, then takes the defaults. */
static void fuzz_options_init(void) {
  unsetenv("TANDEM_CONFIG");
  for (size_t i = 0; i < NSETTINGS; i++)
    unsetenv(settings[i].env);
  if (tdmi_config_resolve(NULL, &fuzz_defaults) != TDM_SUCCESS)
    __builtin_trap(); /* the defaults alone must resolve */
}

/* The canonical text of setting s in c into buf; 0 when there is none
 * (an int still TDM_UNSET, a NULL string, a kind this file predates). */
static int fuzz_text(const tdmi_config *c, const setting *s, char *buf,
                     size_t cap, const char **text) {
  int v = s->kind == KIND_STRING ? 0 : *fuzz_int(c, s);
  *text = buf;
  switch (s->kind) {
  case KIND_ENUM:
    *text = s->names->names[v];
    return 1;
  case KIND_BOOL:
    *text = v ? "true" : "false";
    return 1;
  case KIND_INDEX:
  case KIND_POSITIVE:
    if (v == TDM_UNSET)
      return 0;
    snprintf(buf, cap, "%d", v);
    return 1;
  case KIND_STRING:
    *text = *fuzz_str(c, s);
    return *text != NULL;
  }
  return 0;
}

static void fuzz_check_ranges(const tdmi_config *c) {
  for (size_t i = 0; i < NSETTINGS; i++) {
    const setting *s = &settings[i];
    if (s->kind == KIND_STRING)
      continue;
    int v = *fuzz_int(c, s), def = *fuzz_int(&fuzz_defaults, s);
    int ok = 1;
    switch (s->kind) {
    case KIND_ENUM:
      ok = v >= 0 && v < s->names->count && s->names->names[v] != NULL;
      break;
    case KIND_BOOL:
      ok = v == 0 || v == 1;
      break;
    case KIND_INDEX:
      ok = v >= 0 || v == def;
      break;
    case KIND_POSITIVE:
      ok = v >= 1 || v == def;
      break;
    case KIND_STRING:
      break;
    }
    if (!ok)
      __builtin_trap();
  }
  if (check_combination(c) != TDM_SUCCESS)
    __builtin_trap();
}

static int fuzz_same(const tdmi_config *a, const tdmi_config *b) {
  for (size_t i = 0; i < NSETTINGS; i++) {
    const setting *s = &settings[i];
    if (s->kind == KIND_STRING) {
      const char *x = *fuzz_str(a, s), *y = *fuzz_str(b, s);
      if ((x == NULL) != (y == NULL) || (x && strcmp(x, y) != 0))
        return 0;
    } else if (*fuzz_int(a, s) != *fuzz_int(b, s)) {
      return 0;
    }
  }
  return 1;
}

/* c's values through tdm_options, on top of the defaults (no file, no
 * environment): the same config. */
static void fuzz_check_api(const tdmi_config *c) {
  tdm_options o = TDM_OPTIONS_INIT;
  for (size_t i = 0; i < NSETTINGS; i++) {
    const setting *s = &settings[i];
    void *field = (char *)&o + s->api_off;
    if (s->kind == KIND_STRING)
      *(const char **)field = *fuzz_str(c, s);
    else
      *(int *)field = *fuzz_int(c, s); /* TDM_UNSET stays unset */
  }
  tdmi_config back;
  if (tdmi_config_resolve(&o, &back) != TDM_SUCCESS)
    __builtin_trap();
  if (!fuzz_same(c, &back))
    __builtin_trap();
  tdmi_config_free(&back);
}

/* The decimal integer strtol reads from text, as a whole: optional
 * leading white space and sign, then digits only.  -1 when it is not one
 * or is outside [0, INT_MAX]. */
static long long fuzz_decimal(const char *text) {
  const char *p = text;
  while (isspace((unsigned char)*p))
    p++;
  int neg = *p == '-';
  p += *p == '-' || *p == '+';
  if (!isdigit((unsigned char)*p))
    return -1;
  long long v = 0;
  for (; isdigit((unsigned char)*p); p++)
    if ((v = v * 10 + (*p - '0')) > INT_MAX)
      return -1;
  if (*p != '\0')
    return -1;
  return neg ? (v == 0 ? 0 : -1) : v;
}

/* What text means for setting s: 1 and *v when valid, 0 when not. */
static int fuzz_expected(const setting *s, const char *text, int *v) {
  static const char *const yes[] = {"1", "true", "yes", "on"};
  static const char *const no[] = {"0", "false", "no", "off"};
  switch (s->kind) {
  case KIND_ENUM:
    for (int i = 0; i < s->names->count; i++)
      if (s->names->names[i] && strcasecmp(s->names->names[i], text) == 0) {
        *v = i;
        return 1;
      }
    return 0;
  case KIND_BOOL:
    for (int i = 0; i < 4; i++)
      if (strcasecmp(yes[i], text) == 0 || strcasecmp(no[i], text) == 0) {
        *v = strcasecmp(yes[i], text) == 0;
        return 1;
      }
    return 0;
  case KIND_INDEX:
  case KIND_POSITIVE: {
    long long x = fuzz_decimal(text);
    *v = (int)x;
    return x >= (s->kind == KIND_POSITIVE ? 1 : 0);
  }
  case KIND_STRING:
    return 1;
  }
  return -1; /* a kind this harness predates: any outcome */
}

#endif /* TDM_FUZZ_OPTIONS_H */
