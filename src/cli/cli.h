/* cli.h - the tandem command: one file per subcommand, sharing these
 * helpers.  It uses libtandem's public API only (the cli layer sits on
 * top of every other).  Errors are one line on stderr, "tandem CMD:
 * what", and exit status 2 (1: a check that ran and failed). */
#ifndef TDM_CLI_H
#define TDM_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "tandem.h"

#define CLI_USAGE 2 /* bad arguments, unreadable files */

/* Prints "tandem <cmd>: <message>" to stderr; returns CLI_USAGE. */
int cli_fail(const char *cmd, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/* The library settings the commands take as flags and the wizard asks
 * for: --flag, its YAML key, its environment variable. */
typedef struct {
  const char *flag, *key, *env;
  const char *question, *choices; /* the wizard's; choices NULL: a number */
  const char *fallback;           /* tandem's default                      */
} cli_setting;
extern const cli_setting cli_settings[];
extern const int cli_nsettings;
const cli_setting *cli_setting_of_flag(const char *flag);
/* Whether value is valid for s, checked by the library itself (as
 * tdm_init would parse it), with the ZeRO stage stage in force when not
 * NULL (offload depends on it); else *why (static) says why. */
int cli_setting_valid(const cli_setting *s, const char *value,
                      const char *stage, const char **why);

/* The launch section of a config file (the library skips it). */
typedef struct {
  int ranks;       /* 0: unset */
  int per_node;    /* 0: unset */
  char hosts[1024];
  char hostfile[1024];
} cli_launch_config;
/* Reads file's "launch:" mapping; a missing section leaves *out zero. */
int cli_read_launch_config(const char *cmd, const char *file,
                           cli_launch_config *out);

/* The error for getopt_long's '?': a missing value or an unknown option
 * (argv[optind - 1]); returns CLI_USAGE. */
struct option;
int cli_bad_option(const char *cmd, char **argv, const struct option *opts,
                   const char *shortopts);

/* Parses a positive count with an optional K, M, B or T suffix (10^3..)
 * or a power of ten ("7.5B", "1.3e9"); 0 on error. */
uint64_t cli_parse_count(const char *text);

int cli_config(int argc, char **argv);
int cli_launch(int argc, char **argv);
int cli_env(int argc, char **argv);
int cli_estimate_memory(int argc, char **argv);
int cli_test(int argc, char **argv);
int cli_convert(int argc, char **argv);

/* The launch line for program (argv, NULL-terminated) from launch's own
 * flags in argv: used by tandem test to start its workers.  Runs or
 * prints it; returns the exit status. */
int cli_launch_program(const char *cmd, int argc, char **argv,
                       char *const *program);

#endif /* TDM_CLI_H */
