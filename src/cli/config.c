/* config.c - tandem config: a wizard (or, with --non-interactive, flags)
 * that writes the YAML config file the library reads (TANDEM_CONFIG,
 * tandem launch --config), with a launch: section for the ranks and
 * hosts.  Each answer is checked by the library's own parser and asked
 * again when invalid; the file is then read back through the library. */
#define _GNU_SOURCE /* getopt_long */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef struct {
  char ranks[32], hosts[1024], per_node[32];
  char value[16][64]; /* per cli_settings entry, "" = not set */
} answers;

/* The settings the wizard asks for, in order (the others are flags). */
static const char *const asked[] = {"zero-stage", "offload", "mixed-precision",
                                    "gradient-accumulation-steps",
                                    "bucket-cap-bytes", "log-level"};

static void config_usage(FILE *out) {
  fprintf(out,
          "usage: tandem config [--file FILE] [--non-interactive [SETTINGS]]\n\n"
          "Asks for the launch and training settings (defaults in brackets;\n"
          "Enter keeps one) and writes them to FILE (default tandem.yaml), for\n"
          "tandem launch --config FILE or TANDEM_CONFIG=FILE.\n\n"
          "  -f, --file FILE        where to write\n"
          "      --non-interactive  ask nothing: write the flags' values\n"
          "  -n, --ranks N          launch: ranks\n"
          "      --hosts H1,H2      launch: hosts\n"
          "      --per-node K       launch: ranks per node\n");
  for (int i = 0; i < cli_nsettings; i++)
    fprintf(out, "      --%s VALUE\n", cli_settings[i].flag);
}

static int index_of(const cli_setting *s) { return (int)(s - cli_settings); }

static int valid_count(const char *text) {
  char *end = NULL;
  long v = strtol(text, &end, 10);
  return *text && *end == '\0' && v >= 1 && v < 1 << 24;
}

static int valid_hosts(const char *text) {
  return strspn(text, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                      "0123456789.-_,") == strlen(text) &&
         text[0] != ',' && !strstr(text, ",,");
}

/* The library's verdict on value, with the stage already chosen in force
 * (offload depends on it). */
static int valid_setting(const cli_setting *s, const char *value,
                         const answers *a, const char **why) {
  const char *stage = a->value[index_of(cli_setting_of_flag("zero-stage"))];
  return cli_setting_valid(s, value, stage[0] ? stage : NULL, why);
}

/* Asks until the answer is valid; "" keeps the default. */
static int ask(const char *question, const char *fallback, char *out,
               size_t cap, int (*check)(const char *, const void *,
                                        const char **),
               const void *arg) {
  char keep[1100]; /* fallback may be out itself (a flag's value) */
  snprintf(keep, sizeof keep, "%s", fallback);
  fallback = keep;
  for (;;) {
    printf("%s [%s]: ", question, fallback);
    fflush(stdout);
    char line[1100];
    if (!fgets(line, sizeof line, stdin)) {
      putchar('\n');
      return cli_fail("config", "the input ended before the last answer");
    }
    line[strcspn(line, "\r\n")] = '\0';
    const char *text = line[0] ? line : fallback;
    const char *why = "too long";
    if (strlen(text) < cap && check(text, arg, &why)) {
      snprintf(out, cap, "%s", text);
      return 0;
    }
    printf("  '%s' is not valid: %s\n", text, why);
  }
}

static int check_count(const char *text, const void *arg, const char **why) {
  (void)arg;
  *why = "expected a positive integer";
  return valid_count(text);
}

static int check_hosts(const char *text, const void *arg, const char **why) {
  (void)arg;
  *why = "expected host names separated by commas";
  return valid_hosts(text);
}

typedef struct {
  const cli_setting *s;
  const answers *a;
} setting_arg;

static int check_setting(const char *text, const void *arg, const char **why) {
  const setting_arg *sa = arg;
  return valid_setting(sa->s, text, sa->a, why);
}

static int wizard(answers *a) {
  printf("tandem config: Enter keeps the value in brackets.\n");
  /* flags given with the wizard are its defaults */
  if (ask("Number of ranks", a->ranks[0] ? a->ranks : "1", a->ranks, sizeof a->ranks, check_count, NULL) ||
      ask("Hosts, comma-separated (none: this machine)",
          a->hosts[0] ? a->hosts : "none", a->hosts,
          sizeof a->hosts, check_hosts, NULL))
    return CLI_USAGE;
  if (strcmp(a->hosts, "none") == 0)
    a->hosts[0] = a->per_node[0] = '\0';
  if (a->hosts[0] &&
      ask("Ranks per node", a->per_node[0] ? a->per_node : "1", a->per_node, sizeof a->per_node, check_count,
          NULL))
    return CLI_USAGE;
  for (size_t q = 0; q < sizeof asked / sizeof asked[0]; q++) {
    const cli_setting *s = cli_setting_of_flag(asked[q]);
    if (strcmp(asked[q], "offload") == 0 &&
        strcmp(a->value[index_of(cli_setting_of_flag("zero-stage"))], "0") == 0)
      continue; /* offload needs ZeRO >= 1 */
    char question[400];
    snprintf(question, sizeof question, "%s%s%s%s", s->question,
             s->choices ? " (" : "", s->choices ? s->choices : "",
             s->choices ? ")" : "");
    setting_arg sa = {s, a};
    const char *now = a->value[index_of(s)];
    if (ask(question, now[0] ? now : s->fallback, a->value[index_of(s)],
            sizeof a->value[0], check_setting, &sa))
      return CLI_USAGE;
  }
  return 0;
}

static int write_file(const char *path, const answers *a) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *fp = fopen(tmp, "w");
  if (!fp)
    return cli_fail("config", "%s: cannot write it", path);
  fprintf(fp, "# tandem config, written by tandem config\n");
  for (int i = 0; i < cli_nsettings; i++)
    if (a->value[i][0])
      fprintf(fp, "%s: %s\n", cli_settings[i].key, a->value[i]);
  if (a->ranks[0] || a->hosts[0] || a->per_node[0]) {
    fprintf(fp, "launch:\n");
    if (a->ranks[0])
      fprintf(fp, "  ranks: %s\n", a->ranks);
    if (a->hosts[0])
      fprintf(fp, "  hosts: %s\n", a->hosts);
    if (a->per_node[0])
      fprintf(fp, "  per_node: %s\n", a->per_node);
  }
  int bad = ferror(fp);
  if (fclose(fp) != 0 || bad || rename(tmp, path) != 0) {
    remove(tmp);
    return cli_fail("config", "%s: cannot write it", path);
  }
  return 0;
}

/* Reads the file back through the library, as tdm_init will. */
static int read_back(const char *path) {
  tdm_options o = TDM_OPTIONS_INIT;
  o.config_file = path;
  char report[16384];
  cli_launch_config launch;
  if (tdm_options_report(&o, report, sizeof report, NULL) != TDM_SUCCESS)
    return cli_fail("config", "%s was written, but: %s", path,
                    tdm_last_error());
  if (cli_read_launch_config("config", path, &launch) != 0)
    return CLI_USAGE;
  printf("wrote %s; tandem reads it as:\n", path);
  for (char *p = report, *end; (end = strchr(p, '\n')); p = end + 1)
    if (strstr(p, "(config file") && strstr(p, "(config file") < end)
      printf("  %.*s\n", (int)(end - p), p);
  if (launch.ranks)
    printf("  launch: %d ranks%s%s\n", launch.ranks,
           launch.hosts[0] ? " on " : "", launch.hosts);
  printf("use it with: tandem launch --config %s PROGRAM\n", path);
  return 0;
}

enum { OPT_NONINTERACTIVE = 300, OPT_HOSTS, OPT_PER_NODE, OPT_SETTING };

int cli_config(int argc, char **argv) {
  const char *cmd = "config", *path = "tandem.yaml";
  struct option opts[32] = {
      {"file", required_argument, NULL, 'f'},
      {"non-interactive", no_argument, NULL, OPT_NONINTERACTIVE},
      {"ranks", required_argument, NULL, 'n'},
      {"hosts", required_argument, NULL, OPT_HOSTS},
      {"per-node", required_argument, NULL, OPT_PER_NODE},
      {"help", no_argument, NULL, 'h'}};
  int n = 6;
  for (int i = 0; i < cli_nsettings; i++)
    opts[n++] = (struct option){cli_settings[i].flag, required_argument, NULL,
                                OPT_SETTING};
  opts[n] = (struct option){NULL, 0, NULL, 0};
  answers a;
  memset(&a, 0, sizeof a);
  int interactive = 1;
  optind = 1;
  opterr = 0;
  for (;;) {
    int index = -1;
    int c = getopt_long(argc, argv, "f:n:h", opts, &index);
    if (c == -1)
      break;
    switch (c) {
    case 'f': path = optarg; break;
    case OPT_NONINTERACTIVE: interactive = 0; break;
    case 'n':
    case OPT_PER_NODE:
      if (!valid_count(optarg))
        return cli_fail(cmd, "%s '%s': expected a positive integer",
                        c == 'n' ? "--ranks" : "--per-node", optarg);
      snprintf(c == 'n' ? a.ranks : a.per_node, sizeof a.ranks, "%s", optarg);
      break;
    case OPT_HOSTS:
      if (!valid_hosts(optarg))
        return cli_fail(cmd, "--hosts '%s': expected host names separated "
                        "by commas", optarg);
      snprintf(a.hosts, sizeof a.hosts, "%s", optarg);
      break;
    case OPT_SETTING: {
      const cli_setting *s = cli_setting_of_flag(opts[index].name);
      snprintf(a.value[index_of(s)], sizeof a.value[0], "%s", optarg);
      break;
    }
    case 'h': config_usage(stdout); return 0;
    default:
      return cli_bad_option(cmd, argv, opts, "f:n:h");
    }
  }
  if (optind < argc)
    return cli_fail(cmd, "'%s': unexpected argument", argv[optind]);
  for (int i = 0; i < cli_nsettings; i++) { /* with the stage given */
    const char *why = "";
    if (a.value[i][0] && !valid_setting(&cli_settings[i], a.value[i], &a, &why))
      return cli_fail(cmd, "--%s %s: %s", cli_settings[i].flag, a.value[i],
                      why);
  }
  if (interactive && wizard(&a) != 0)
    return CLI_USAGE;
  if (write_file(path, &a) != 0)
    return CLI_USAGE;
  return read_back(path);
}
