/* convert.c - tandem convert: merge sharded safetensors weights into one
 * file, split them into shards of a size, or export them (a checkpoint's
 * f32 master weights, say) in bf16 or f16 (tdm_weights_convert). */
#define _GNU_SOURCE /* getopt_long */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* "2GB", "500MB", "4GiB", "1048576": bytes, 0 on error. */
static uint64_t parse_size(const char *text) {
  char *end = NULL;
  double v = strtod(text, &end);
  if (end == text || v <= 0)
    return 0;
  static const struct {
    const char *suffix;
    double scale;
  } units[] = {{"", 1},          {"B", 1},          {"kB", 1e3},
               {"KB", 1e3},      {"MB", 1e6},       {"GB", 1e9},
               {"TB", 1e12},     {"KiB", 1024.0},   {"MiB", 1048576.0},
               {"GiB", 1073741824.0}, {"TiB", 1099511627776.0}};
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
    if (strcmp(end, units[i].suffix) == 0 && v * units[i].scale >= 1 &&
        v * units[i].scale < 1.8e19)
      return (uint64_t)(v * units[i].scale);
  return 0;
}

int cli_convert(int argc, char **argv) {
  const char *cmd = "convert";
  static const struct option opts[] = {
      {"dtype", required_argument, NULL, 'd'},
      {"max-shard-size", required_argument, NULL, 's'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  int dtype = TDM_UNSET;
  uint64_t max_shard = 0;
  optind = 1;
  opterr = 0;
  for (int c; (c = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
    switch (c) {
    case 'd':
      dtype = strcmp(optarg, "f32") == 0    ? TDM_F32
              : strcmp(optarg, "bf16") == 0 ? TDM_BF16
              : strcmp(optarg, "f16") == 0 || strcmp(optarg, "fp16") == 0
                  ? TDM_F16
                  : -2;
      if (dtype == -2)
        return cli_fail(cmd, "--dtype '%s': expected f32, bf16 or f16", optarg);
      break;
    case 's':
      if (!(max_shard = parse_size(optarg)))
        return cli_fail(cmd, "--max-shard-size '%s': expected a size such "
                        "as 5GB, 500MB or 4GiB", optarg);
      break;
    case 'h':
      printf("usage: tandem convert [--dtype f32|bf16|f16] [--max-shard-size SIZE] IN OUT\n\n"
             "IN is a .safetensors file, an index (model.safetensors.index.json)\n"
             "or a folder with either, such as a tandem checkpoint.  Without\n"
             "--max-shard-size, OUT is one .safetensors file (shards merged);\n"
             "with it, OUT is a folder of shards and their index.  --dtype\n"
             "converts every floating tensor (round to nearest even).\n");
      return 0;
    default:
      return cli_bad_option(cmd, argv, opts, "h");
    }
  }
  if (argc - optind != 2)
    return cli_fail(cmd, "expected IN and OUT (tandem convert --help)");
  const char *in = argv[optind], *out = argv[optind + 1];
  if (tdm_weights_convert(in, out, dtype, max_shard) != TDM_SUCCESS)
    return cli_fail(cmd, "%s", tdm_last_error());
  uint64_t numel = 0, bytes = 0;
  int tensors = 0;
  if (tdm_weights_info(out, &numel, &bytes, &tensors) != TDM_SUCCESS)
    return cli_fail(cmd, "%s was written but does not read back: %s", out,
                    tdm_last_error());
  printf("wrote %s: %d tensors, %llu parameters, %llu data bytes\n", out,
         tensors, (unsigned long long)numel, (unsigned long long)bytes);
  return 0;
}
