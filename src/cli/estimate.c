/* estimate.c - tandem estimate-memory: model-state bytes per rank for
 * each dtype, ZeRO stage, offload and world size, from a parameter
 * count, a layer list or safetensors headers.  The bytes are
 * tdm_estimate_model_state's (the library's one formula); offload moves
 * the master weights and optimizer state (and, at stage 3 with params,
 * the parameter shards) to host memory. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define MAX_SIZES 16

static const struct {
  const char *name;
  int states; /* f32 states per parameter */
} optimizers[] = {{"adamw", 2}, {"adam", 2}, {"sgd", 0},
                  {"sgd-momentum", 1}, {"lion", 1}};

static const struct {
  const char *name;
  tdm_precision precision;
  tdm_dtype compute;
} dtypes[] = {{"f32", TDM_PRECISION_NO, TDM_F32},
              {"bf16", TDM_PRECISION_BF16, TDM_BF16},
              {"fp16", TDM_PRECISION_FP16, TDM_F16}};
#define NDTYPES 3

static const char *const offloads[] = {"none", "optimizer", "params"};

static void estimate_usage(FILE *out) {
  fprintf(out,
          "usage: tandem estimate-memory [OPTIONS] (--params N | --layers LIST | PATH)\n\n"
          "  PATH                 a .safetensors file, an index\n"
          "                       (model.safetensors.index.json) or a folder with\n"
          "                       either: only the headers are read\n"
          "      --params N       parameter count: 7.5B, 125M, 1.3e9, ...\n"
          "      --layers LIST    shapes, comma-separated: 768x3072,3072,12*768x768\n"
          "  -n, --ranks LIST     world sizes (default 1,8,64)\n"
          "      --dtype LIST     f32, bf16, fp16 or f16 (default all three)\n"
          "      --optimizer O    adamw, adam, sgd, sgd-momentum or lion (default\n"
          "                       adamw: 2 f32 states per parameter)\n"
          "      --reduce-dtype R compute (default: gradients in the compute dtype,\n"
          "                       as in the ZeRO paper) or f32\n"
          "      --json           one JSON object per line, for scripts\n");
}

/* "768x3072,3072,12*768x768": the sum of the products. */
static uint64_t parse_layers(const char *text) {
  uint64_t total = 0;
  const char *p = text;
  while (*p) {
    char *end = NULL;
    uint64_t repeat = 1, product = 1;
    const char *star = strchr(p, '*'), *comma = strchr(p, ',');
    if (star && (!comma || star < comma)) {
      repeat = strtoull(p, &end, 10);
      if (end != star || repeat == 0)
        return 0;
      p = star + 1;
    }
    for (;;) {
      uint64_t extent = strtoull(p, &end, 10);
      if (end == p || extent == 0 || product > UINT64_MAX / extent)
        return 0;
      product *= extent;
      p = end;
      if (*p != 'x')
        break;
      p++;
    }
    if (*p && *p != ',')
      return 0;
    total += repeat * product;
    p += *p == ',';
  }
  return total;
}

static int parse_sizes(const char *text, int *sizes, int *n) {
  *n = 0;
  for (const char *p = text; *p;) {
    char *end = NULL;
    long v = strtol(p, &end, 10);
    if (end == p || v < 1 || v > 1 << 24 || *n == MAX_SIZES ||
        (*end && *end != ','))
      return 0;
    sizes[(*n)++] = (int)v;
    p = end + (*end == ',');
  }
  return *n > 0;
}

/* Bytes of one configuration on the device and on the host. */
static int place(uint64_t numel, int ranks, int stage, int d, int offload,
                 int states, int reduce_f32, uint64_t *cat, uint64_t *device,
                 uint64_t *host) {
  tdm_dtype reduce = reduce_f32 || dtypes[d].precision == TDM_PRECISION_NO
                         ? TDM_F32
                         : dtypes[d].compute;
  if (tdm_estimate_model_state(numel, ranks, stage, dtypes[d].precision,
                               reduce, states, cat) != TDM_SUCCESS)
    return 0;
  uint64_t total = 0;
  for (int c = 0; c < TDM_MEM_NUM_CATEGORIES; c++)
    total += cat[c];
  *host = 0;
  if (offload >= 1)
    *host += cat[TDM_MEM_OPTIMIZER_STATE] + cat[TDM_MEM_MASTER_WEIGHTS];
  if (offload == 2)
    *host += cat[TDM_MEM_PARAMS];
  *device = total - *host;
  return 1;
}

static int offload_allowed(int offload, int stage) {
  return offload == 0 || (offload == 1 && stage >= 1) ||
         (offload == 2 && stage == 3);
}

static void print_table(uint64_t numel, const int *sizes, int nsizes,
                        const int *want, int states, int reduce_f32) {
  /* the unit of the largest entry (16 bytes per parameter at most) */
  double big = 16.0 * (double)numel, unit = big >= 1e9 ? 1e9 : big >= 1e6 ? 1e6
                                                  : big >= 1e3 ? 1e3 : 1;
  const char *uname = unit == 1e9 ? "GB (10^9 bytes)" : unit == 1e6 ? "MB (10^6 bytes)"
                      : unit == 1e3 ? "kB (10^3 bytes)" : "bytes";
  printf("model states per rank in %s for %llu parameters; "
         "%d f32 optimizer states per parameter; gradients in %s\n"
         "offloaded rows: device + host\n\n",
         uname, (unsigned long long)numel, states,
         reduce_f32 ? "f32" : "the compute dtype");
  printf("%6s  %-5s %-10s %17s %17s %17s %17s\n", "ranks", "dtype",
         "offload", "stage 0", "stage 1", "stage 2", "stage 3");
  for (int i = 0; i < nsizes; i++)
    for (int d = 0; d < NDTYPES; d++) {
      if (!want[d])
        continue;
      for (int o = 0; o < 3; o++) {
        printf("%6d  %-5s %-10s", sizes[i], dtypes[d].name, offloads[o]);
        for (int stage = 0; stage <= 3; stage++) {
          uint64_t cat[TDM_MEM_NUM_CATEGORIES], dev = 0, host = 0;
          char cell[64] = "-";
          if (offload_allowed(o, stage) &&
              place(numel, sizes[i], stage, d, o, states, reduce_f32, cat,
                    &dev, &host))
            snprintf(cell, sizeof cell, o ? "%.2f + %.2f" : "%.2f",
                     (double)dev / unit, (double)host / unit);
          printf(" %17s", cell);
        }
        putchar('\n');
      }
    }
}

static void print_json(uint64_t numel, const int *sizes, int nsizes,
                       const int *want, int states, int reduce_f32) {
  static const char *const names[TDM_MEM_NUM_CATEGORIES] = {
      "params", "grads", "optimizer_state", "master_weights", "comm_buffers"};
  for (int i = 0; i < nsizes; i++)
    for (int d = 0; d < NDTYPES; d++)
      for (int o = 0; want[d] && o < 3; o++)
        for (int stage = 0; stage <= 3; stage++) {
          uint64_t cat[TDM_MEM_NUM_CATEGORIES], dev = 0, host = 0;
          if (!offload_allowed(o, stage) ||
              !place(numel, sizes[i], stage, d, o, states, reduce_f32, cat,
                     &dev, &host))
            continue;
          printf("{\"numel\": %llu, \"ranks\": %d, \"dtype\": \"%s\", "
                 "\"offload\": \"%s\", \"zero_stage\": %d, \"device_bytes\": "
                 "%llu, \"host_bytes\": %llu",
                 (unsigned long long)numel, sizes[i], dtypes[d].name,
                 offloads[o], stage, (unsigned long long)dev,
                 (unsigned long long)host);
          for (int c = 0; c < TDM_MEM_NUM_CATEGORIES; c++)
            printf(", \"%s\": %llu", names[c], (unsigned long long)cat[c]);
          printf("}\n");
        }
}

int cli_estimate_memory(int argc, char **argv) {
  const char *cmd = "estimate-memory";
  static const struct option opts[] = {
      {"params", required_argument, NULL, 'p'},
      {"layers", required_argument, NULL, 'l'},
      {"ranks", required_argument, NULL, 'n'},
      {"dtype", required_argument, NULL, 'd'},
      {"optimizer", required_argument, NULL, 'o'},
      {"reduce-dtype", required_argument, NULL, 'r'},
      {"json", no_argument, NULL, 'j'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  uint64_t numel = 0;
  int sizes[MAX_SIZES] = {1, 8, 64}, nsizes = 3, json = 0, reduce_f32 = 0;
  int states = 2, want[NDTYPES] = {1, 1, 1}, sources = 0;
  optind = 1;
  opterr = 0;
  for (int c; (c = getopt_long(argc, argv, "n:h", opts, NULL)) != -1;) {
    switch (c) {
    case 'p':
      sources++;
      if (!(numel = cli_parse_count(optarg)))
        return cli_fail(cmd, "--params '%s': expected a count such as 7.5B "
                        "or 125M", optarg);
      break;
    case 'l':
      sources++;
      if (!(numel = parse_layers(optarg)))
        return cli_fail(cmd, "--layers '%s': expected shapes such as "
                        "768x3072,3072,12*768x768", optarg);
      break;
    case 'n':
      if (!parse_sizes(optarg, sizes, &nsizes))
        return cli_fail(cmd, "--ranks '%s': expected world sizes such as "
                        "1,8,64", optarg);
      break;
    case 'd': {
      memset(want, 0, sizeof want);
      char *copy = strdup(optarg), *save = NULL;
      int ok = copy != NULL;
      for (char *t = copy ? strtok_r(copy, ",", &save) : NULL; t;
           t = strtok_r(NULL, ",", &save)) {
        int found = 0;
        for (int d = 0; d < NDTYPES; d++)
          if (strcmp(t, dtypes[d].name) == 0 ||
              (d == 2 && strcmp(t, "f16") == 0)) /* as convert spells it */
            want[d] = found = 1;
        ok &= found;
      }
      free(copy);
      if (!ok || !(want[0] | want[1] | want[2]))
        return cli_fail(cmd, "--dtype '%s': expected f32, bf16 and/or fp16 (f16)",
                        optarg);
      break;
    }
    case 'o': {
      int found = -1;
      for (int i = 0; i < 5; i++)
        if (strcmp(optarg, optimizers[i].name) == 0)
          found = i;
      if (found < 0)
        return cli_fail(cmd, "--optimizer '%s': expected adamw, adam, sgd, "
                        "sgd-momentum or lion", optarg);
      states = optimizers[found].states;
      break;
    }
    case 'r':
      if (strcmp(optarg, "f32") != 0 && strcmp(optarg, "compute") != 0)
        return cli_fail(cmd, "--reduce-dtype '%s': expected compute or f32",
                        optarg);
      reduce_f32 = strcmp(optarg, "f32") == 0;
      break;
    case 'j': json = 1; break;
    case 'h': estimate_usage(stdout); return 0;
    default:
      return cli_bad_option(cmd, argv, opts, "n:h");
    }
  }
  if (optind < argc) {
    sources++;
    int tensors = 0;
    if (optind + 1 < argc)
      return cli_fail(cmd, "'%s': one model path only", argv[optind + 1]);
    if (tdm_weights_info(argv[optind], &numel, NULL, &tensors) != TDM_SUCCESS)
      return cli_fail(cmd, "%s", tdm_last_error());
    if (!json)
      printf("%s: %d tensors, %llu parameters (headers only)\n",
             argv[optind], tensors, (unsigned long long)numel);
  }
  if (sources != 1)
    return cli_fail(cmd, "give one of --params, --layers or a model path "
                    "(tandem %s --help)", cmd);
  if (numel == 0)
    return cli_fail(cmd, "the model has no parameters");
  if (json)
    print_json(numel, sizes, nsizes, want, states, reduce_f32);
  else
    print_table(numel, sizes, nsizes, want, states, reduce_f32);
  return 0;
}
