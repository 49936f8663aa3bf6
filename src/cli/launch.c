/* launch.c - tandem launch: the mpirun (or, inside a Slurm allocation,
 * srun) line for a training program, its tandem settings passed as
 * TANDEM_* variables; printed with --dry-run, else executed directly (no
 * shell, so arguments reach the program exactly as given). */
#define _GNU_SOURCE /* sched_getaffinity */
#include <getopt.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

#define MAX_ENV 64
#define MAX_EXTRA 64

typedef struct {
  int ranks, per_node, dry_run;
  const char *hosts, *hostfile, *launcher, *config;
  const char *env_name[MAX_ENV];
  char *env_value[MAX_ENV];
  int nenv;
  const char *extra[MAX_EXTRA]; /* --launcher-arg, verbatim */
  int nextra;
  cli_launch_config file; /* the config file's launch section */
} spec;

static void launch_usage(const char *cmd, FILE *out) {
  fprintf(out,
          "usage: tandem %s [OPTIONS]%s\n\n"
          "  -n, --ranks N          ranks to start (default: the config file's,\n"
          "                         Slurm's allocation under srun, else 1)\n"
          "      --hosts H1,H2      hosts to run on (mpirun --host)\n"
          "      --hostfile FILE    an Open MPI hostfile\n"
          "      --per-node K       ranks per node\n"
          "      --config FILE      a tandem config file (TANDEM_CONFIG); its\n"
          "                         launch: section gives ranks, hosts, per_node\n"
          "      --launcher L       mpirun or srun (default: srun inside a Slurm\n"
          "                         allocation, else mpirun; TANDEM_MPIRUN names\n"
          "                         the mpirun binary)\n"
          "      --launcher-arg A   one more argument for the launcher (repeat)\n"
          "      --env NAME=VALUE   one more variable for the ranks (repeat)\n"
          "      --dry-run          print the command instead of running it\n",
          cmd, strcmp(cmd, "launch") == 0 ? " PROGRAM [ARGS...]" : "");
  for (int i = 0; i < cli_nsettings; i++)
    fprintf(out, "      --%s VALUE%*s%s\n", cli_settings[i].flag,
            (int)(17 - strlen(cli_settings[i].flag)) > 0
                ? (int)(17 - strlen(cli_settings[i].flag))
                : 1,
            "", cli_settings[i].env);
}

static int add_env(const char *cmd, spec *s, const char *name,
                   const char *value) {
  for (int i = 0; i < s->nenv; i++)
    if (strcmp(s->env_name[i], name) == 0) { /* the last one wins */
      free(s->env_value[i]);
      s->env_value[i] = strdup(value);
      return 0;
    }
  if (s->nenv == MAX_ENV)
    return cli_fail(cmd, "more than %d variables", MAX_ENV);
  s->env_name[s->nenv] = name;
  s->env_value[s->nenv++] = strdup(value);
  return 0;
}

static void free_spec(spec *s) {
  for (int i = 0; i < s->nenv; i++)
    free(s->env_value[i]);
}

enum { OPT_HOSTS = 256, OPT_HOSTFILE, OPT_PER_NODE, OPT_CONFIG, OPT_LAUNCHER,
       OPT_LAUNCHER_ARG, OPT_ENV, OPT_DRY_RUN, OPT_SETTING };

static int positive_arg(const char *cmd, const char *flag, const char *text,
                        int *out) {
  char *end = NULL;
  long v = strtol(text, &end, 10);
  if (*text == '\0' || *end != '\0' || v < 1 || v > INT_MAX)
    return cli_fail(cmd, "%s '%s': expected a positive integer", flag, text);
  *out = (int)v;
  return 0;
}

static int option(const char *cmd, spec *s, int c, const char *flag,
                  const char *arg) {
  switch (c) {
  case 'n': return positive_arg(cmd, "--ranks", arg, &s->ranks);
  case OPT_PER_NODE: return positive_arg(cmd, "--per-node", arg, &s->per_node);
  case OPT_HOSTS: s->hosts = arg; return 0;
  case OPT_HOSTFILE:
    if (access(arg, R_OK) != 0)
      return cli_fail(cmd, "--hostfile %s: cannot read it", arg);
    s->hostfile = arg;
    return 0;
  case OPT_CONFIG: {
    char path[PATH_MAX];
    if (!realpath(arg, path) || access(path, R_OK) != 0)
      return cli_fail(cmd, "--config %s: cannot read it", arg);
    if (cli_read_launch_config(cmd, path, &s->file) != 0)
      return CLI_USAGE;
    s->config = arg;
    /* the library checks the file now, as every rank would */
    if (add_env(cmd, s, "TANDEM_CONFIG", path) != 0)
      return CLI_USAGE;
    return 0;
  }
  case OPT_LAUNCHER:
    if (strcmp(arg, "mpirun") != 0 && strcmp(arg, "srun") != 0)
      return cli_fail(cmd, "--launcher '%s': expected mpirun or srun", arg);
    s->launcher = arg;
    return 0;
  case OPT_LAUNCHER_ARG:
    if (s->nextra == MAX_EXTRA)
      return cli_fail(cmd, "more than %d --launcher-arg", MAX_EXTRA);
    s->extra[s->nextra++] = arg;
    return 0;
  case OPT_ENV: {
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg)
      return cli_fail(cmd, "--env '%s': expected NAME=VALUE", arg);
    char *name = strndup(arg, (size_t)(eq - arg));
    int rc = name ? add_env(cmd, s, name, eq + 1) : CLI_USAGE;
    /* name stays referenced by s until exit */
    return rc;
  }
  case OPT_DRY_RUN: s->dry_run = 1; return 0;
  case OPT_SETTING: /* checked together once all are known */
    return add_env(cmd, s, cli_setting_of_flag(flag)->env, arg);
  default: return CLI_USAGE;
  }
}

/* Parses launch's flags; *first is the index of the program in argv. */
static int parse(const char *cmd, int argc, char **argv, spec *s,
                 int *first) {
  struct option opts[16 + 16];
  static const struct option fixed[] = {
      {"ranks", required_argument, NULL, 'n'},
      {"hosts", required_argument, NULL, OPT_HOSTS},
      {"hostfile", required_argument, NULL, OPT_HOSTFILE},
      {"per-node", required_argument, NULL, OPT_PER_NODE},
      {"config", required_argument, NULL, OPT_CONFIG},
      {"launcher", required_argument, NULL, OPT_LAUNCHER},
      {"launcher-arg", required_argument, NULL, OPT_LAUNCHER_ARG},
      {"env", required_argument, NULL, OPT_ENV},
      {"dry-run", no_argument, NULL, OPT_DRY_RUN},
      {"help", no_argument, NULL, 'h'},
  };
  int n = (int)(sizeof fixed / sizeof fixed[0]);
  memcpy(opts, fixed, sizeof fixed);
  for (int i = 0; i < cli_nsettings; i++)
    opts[n++] = (struct option){cli_settings[i].flag, required_argument, NULL,
                                OPT_SETTING};
  opts[n] = (struct option){NULL, 0, NULL, 0};
  memset(s, 0, sizeof *s);
  optind = 1;
  opterr = 0;
  for (;;) {
    int index = -1;
    /* "+": stop at the program, whose own flags are its business */
    int c = getopt_long(argc, argv, "+n:h", opts, &index);
    if (c == -1)
      break;
    if (c == 'h') {
      launch_usage(cmd, stdout);
      exit(0);
    }
    if (c == '?' || c == ':')
      return cli_bad_option(cmd, argv, opts, "+n:h");
    if (option(cmd, s, c, index >= 0 ? opts[index].name : "", optarg) != 0)
      return CLI_USAGE;
  }
  if (s->hosts && s->hostfile)
    return cli_fail(cmd, "--hosts and --hostfile exclude each other");
  /* The ranks' settings, checked by the library as each rank will. */
  for (int i = 0; i < s->nenv; i++)
    setenv(s->env_name[i], s->env_value[i], 1);
  if (tdm_options_report(NULL, NULL, 0, NULL) != TDM_SUCCESS)
    return cli_fail(cmd, "%s", tdm_last_error());
  *first = optind;
  return 0;
}

/* The CPUs this process may use. */
static int usable_cpus(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
    return CPU_COUNT(&set);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

/* Whether name is an executable file, searched on PATH without a '/'. */
static int find_program(const char *name, char *path, size_t cap) {
  if (strchr(name, '/'))
    return snprintf(path, cap, "%s", name) < (int)cap &&
           access(path, X_OK) == 0;
  const char *dirs = getenv("PATH");
  for (const char *d = dirs ? dirs : "/usr/bin:/bin"; *d;) {
    size_t len = strcspn(d, ":");
    if (snprintf(path, cap, "%.*s/%s", (int)len, len ? d : ".", name) <
            (int)cap &&
        access(path, X_OK) == 0)
      return 1;
    d += len + (d[len] == ':');
  }
  return 0;
}

static void print_word(const char *w, int first) {
  if (!first)
    putchar(' ');
  if (*w && strspn(w, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                      "0123456789_@%+=:,./-") == strlen(w)) {
    fputs(w, stdout);
    return;
  }
  putchar('\'');
  for (; *w; w++)
    if (*w == '\'')
      fputs("'\\''", stdout);
    else
      putchar(*w);
  putchar('\'');
}

typedef struct {
  const char *v[256 + MAX_ENV * 2 + MAX_EXTRA];
  int n;
  char store[8][1100]; /* numbers and host lists */
  int nstore;
} words;

static const char *keep(words *w, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
static const char *keep(words *w, const char *format, ...) {
  char *slot = w->store[w->nstore++];
  va_list ap;
  va_start(ap, format);
  vsnprintf(slot, sizeof w->store[0], format, ap);
  va_end(ap);
  return slot;
}

static int count_hosts(const char *hosts) {
  int n = 1;
  for (const char *p = hosts; *p; p++)
    n += *p == ',';
  return n;
}

/* mpirun -np N [placement] [-x NAME]... PROGRAM ARGS */
static void mpirun_line(const spec *s, words *w, int ranks) {
  const char *mpirun = getenv("TANDEM_MPIRUN");
  w->v[w->n++] = mpirun && *mpirun ? mpirun : "mpirun";
  w->v[w->n++] = "-np";
  w->v[w->n++] = keep(w, "%d", ranks);
  /* a flag beats the config file's launch: section */
  const char *hosts = s->hosts      ? s->hosts
                      : s->hostfile ? NULL
                      : s->file.hosts[0] ? s->file.hosts
                                         : NULL;
  const char *hostfile = s->hostfile ? s->hostfile
                         : !s->hosts && s->file.hostfile[0] ? s->file.hostfile
                                                            : NULL;
  int per_node = s->per_node ? s->per_node : s->file.per_node;
  if (hosts) { /* host:slots, so that Open MPI may place them all */
    int nh = count_hosts(hosts);
    int slots = per_node ? per_node : (ranks + nh - 1) / nh;
    char list[1024] = "";
    const char *p = hosts;
    while (*p) {
      size_t len = strcspn(p, ",");
      size_t used = strlen(list);
      snprintf(list + used, sizeof list - used, "%s%.*s:%d", used ? "," : "",
               (int)len, p, slots);
      p += len + (p[len] == ',');
    }
    w->v[w->n++] = "--host";
    w->v[w->n++] = keep(w, "%s", list);
  } else if (hostfile) {
    w->v[w->n++] = "--hostfile";
    w->v[w->n++] = hostfile;
  }
  if (per_node) {
    w->v[w->n++] = "--map-by";
    w->v[w->n++] = keep(w, "ppr:%d:node", per_node);
  } else if (!hosts && !hostfile) { /* this machine: its cores shared out */
    int cpus = usable_cpus();
    if (ranks > cpus) {
      w->v[w->n++] = "--oversubscribe";
      w->v[w->n++] = "--bind-to";
      w->v[w->n++] = "none";
    } else {
      w->v[w->n++] = "--map-by";
      w->v[w->n++] = keep(w, "slot:PE=%d", cpus / ranks);
      w->v[w->n++] = "--bind-to";
      w->v[w->n++] = "core";
    }
  }
  for (int i = 0; i < s->nextra; i++)
    w->v[w->n++] = s->extra[i];
  for (int i = 0; i < s->nenv; i++) {
    w->v[w->n++] = "-x";
    w->v[w->n++] = s->env_name[i];
  }
}

/* srun [-n N] [--ntasks-per-node K] [--nodelist H] PROGRAM ARGS; srun
 * passes the whole environment on. */
static void srun_line(const spec *s, words *w, int ranks) {
  w->v[w->n++] = "srun";
  if (ranks > 0) {
    w->v[w->n++] = "-n";
    w->v[w->n++] = keep(w, "%d", ranks);
  }
  int per_node = s->per_node ? s->per_node : s->file.per_node;
  if (per_node)
    w->v[w->n++] = keep(w, "--ntasks-per-node=%d", per_node);
  const char *hosts = s->hosts ? s->hosts : s->file.hosts[0] ? s->file.hosts : NULL;
  if (hosts)
    w->v[w->n++] = keep(w, "--nodelist=%s", hosts);
  for (int i = 0; i < s->nextra; i++)
    w->v[w->n++] = s->extra[i];
}

static int run(const char *cmd, spec *s, char *const *program) {
  if (!program[0])
    return cli_fail(cmd, "no program to launch (tandem %s --help)", cmd);
  char path[PATH_MAX]; /* --dry-run: it may exist on the nodes only */
  if (!s->dry_run && !find_program(program[0], path, sizeof path))
    return cli_fail(cmd, "%s: no such executable%s", program[0],
                    strchr(program[0], '/') ? "" : " on PATH");
  int nargs = 0;
  while (program[nargs])
    nargs++;
  if (nargs > 200)
    return cli_fail(cmd, "more than 200 program arguments");
  const char *launcher = s->launcher;
  int in_slurm = getenv("SLURM_JOB_ID") != NULL;
  if (!launcher)
    launcher = in_slurm && !s->hosts && !s->hostfile ? "srun" : "mpirun";
  int ranks = s->ranks ? s->ranks : s->file.ranks;
  int per_node = s->per_node ? s->per_node : s->file.per_node;
  const char *hosts = s->hosts ? s->hosts : s->file.hosts[0] ? s->file.hosts : NULL;
  if (!ranks && strcmp(launcher, "mpirun") == 0)
    ranks = hosts && per_node ? count_hosts(hosts) * per_node : 1;
  words w;
  w.n = w.nstore = 0;
  if (strcmp(launcher, "srun") == 0)
    srun_line(s, &w, ranks);
  else
    mpirun_line(s, &w, ranks);
  for (int i = 0; i < nargs; i++)
    w.v[w.n++] = program[i];
  w.v[w.n] = NULL;
  if (s->dry_run) {
    for (int i = 0; i < s->nenv; i++) {
      char assign[4096];
      snprintf(assign, sizeof assign, "%s=%s", s->env_name[i],
               s->env_value[i]);
      print_word(assign, i == 0);
    }
    for (int i = 0; i < w.n; i++)
      print_word(w.v[i], i == 0 && s->nenv == 0);
    putchar('\n');
    return 0;
  }
  char exe[PATH_MAX];
  if (!find_program(w.v[0], exe, sizeof exe))
    return cli_fail(cmd, "%s: not found on PATH (is MPI%s installed?)",
                    w.v[0], strcmp(w.v[0], "srun") == 0 ? "/Slurm" : "");
  for (int i = 0; i < s->nenv; i++)
    setenv(s->env_name[i], s->env_value[i], 1);
  fflush(NULL);
  execv(exe, (char *const *)w.v);
  return cli_fail(cmd, "%s: cannot run it", exe) + 125; /* 127, as a shell */
}

int cli_launch_program(const char *cmd, int argc, char **argv,
                       char *const *program) {
  spec s;
  int first = 0;
  int rc = parse(cmd, argc, argv, &s, &first);
  if (rc == 0 && first < argc)
    rc = cli_fail(cmd, "'%s': unexpected argument", argv[first]);
  if (rc == 0)
    rc = run(cmd, &s, program);
  free_spec(&s);
  return rc;
}

int cli_launch(int argc, char **argv) {
  spec s;
  int first = 0;
  int rc = parse("launch", argc, argv, &s, &first);
  if (rc == 0)
    rc = run("launch", &s, argv + first);
  free_spec(&s);
  return rc;
}
