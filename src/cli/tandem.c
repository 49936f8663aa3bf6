/* tandem.c - the tandem command: dispatch to the subcommands. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const struct {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *summary;
} commands[] = {
    {"config", cli_config, "write a config file (a wizard, or flags)"},
    {"launch", cli_launch, "start a training program on N ranks (mpirun or srun)"},
    {"env", cli_env, "versions, devices and the settings in force, for bug reports"},
    {"estimate-memory", cli_estimate_memory,
     "model-state bytes per rank by dtype, ZeRO stage, offload, ranks"},
    {"test", cli_test, "a distributed self-test of this installation"},
    {"convert", cli_convert,
     "merge or split safetensors weights, or export them in bf16/f16"},
};
#define NCOMMANDS (int)(sizeof commands / sizeof commands[0])

int cli_fail(const char *cmd, const char *format, ...) {
  va_list ap;
  va_start(ap, format);
  fprintf(stderr, "tandem %s: ", cmd);
  vfprintf(stderr, format, ap);
  fputc('\n', stderr);
  va_end(ap);
  return CLI_USAGE;
}

static void usage(FILE *out) {
  fprintf(out, "usage: tandem COMMAND [ARGS...]\n\ncommands:\n");
  for (int i = 0; i < NCOMMANDS; i++)
    fprintf(out, "  %-16s %s\n", commands[i].name, commands[i].summary);
  fprintf(out, "\n'tandem COMMAND --help' for each; man tandem for all.\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return CLI_USAGE;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(stdout);
    return 0;
  }
  if (strcmp(argv[1], "--version") == 0) {
    int major = 0, minor = 0, patch = 0;
    tdm_get_version(&major, &minor, &patch);
    printf("tandem %d.%d.%d\n", major, minor, patch);
    return 0;
  }
  for (int i = 0; i < NCOMMANDS; i++)
    if (strcmp(argv[1], commands[i].name) == 0)
      return commands[i].run(argc - 1, argv + 1);
  fprintf(stderr, "tandem: '%s' is not a command (tandem --help)\n", argv[1]);
  return CLI_USAGE;
}
