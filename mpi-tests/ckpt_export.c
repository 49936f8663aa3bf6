/* ckpt_export.c - writes a checkpoint for tests/check_safetensors_interop.py:
 *   mpirun -np 3 ckpt_export DIR [max_shard_bytes]
 * (TANDEM_ZERO_STAGE and the rest from the environment).  Trains
 * examples/mlp as examples/mlp/main.c does, with AdamW so that the
 * optimizer file holds exp_avg and exp_avg_sq, for 10 steps; saves with
 * tdm_save_state into DIR/checkpoint-10 (max_shard_bytes: 0 or absent,
 * one model.safetensors; else shards and their index); then gathers
 * every parameter with tdm_gather_param and rank 0 writes its values as
 * raw little-endian f32 to DIR/gathered/<name>.f32 and the shapes to
 * DIR/gathered/shapes.txt ("name d0 d1 ..." per line).  Exits 0, or 1
 * with the library's message on any failure. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model.h"

#define BATCH_PER_RANK 32
#define DATASET 8192
#define STEPS 10

#define TRY(call)                                                        \
  do {                                                                   \
    tdm_status st_ = (call);                                             \
    if (st_ != TDM_SUCCESS) {                                            \
      fprintf(stderr, "ckpt_export: %s: %s: %s\n", #call,                \
              tdm_status_string(st_), tdm_last_error());                 \
      exit(1);                                                           \
    }                                                                    \
  } while (0)

/* examples/mlp/model.c's parameters, in registration order. */
static const char *const names[MLP_PARAMS] = {"fc1.weight", "fc1.bias",
                                              "fc2.weight", "fc2.bias"};
static const int ndims[MLP_PARAMS] = {2, 1, 2, 1};
static const int64_t shapes[MLP_PARAMS][2] = {
    {MLP_HIDDEN, MLP_IN}, {MLP_HIDDEN, 0}, {1, MLP_HIDDEN}, {1, 0}};

static int little_endian(void) {
  const uint32_t one = 1;
  unsigned char b;
  memcpy(&b, &one, 1);
  return b == 1;
}

/* Rank 0: the gathered values, raw little-endian f32, and shapes.txt. */
static int write_gathered(const char *dir, float *const values[MLP_PARAMS]) {
  char path[4096];
  snprintf(path, sizeof path, "%s/gathered", dir);
  if (mkdir(path, 0755) != 0 && errno != EEXIST) {
    perror(path);
    return 0;
  }
  int le = little_endian();
  snprintf(path, sizeof path, "%s/gathered/shapes.txt", dir);
  FILE *shapes_txt = fopen(path, "w");
  if (!shapes_txt) {
    perror(path);
    return 0;
  }
  int ok = 1;
  for (int p = 0; p < MLP_PARAMS && ok; p++) {
    size_t n = 1;
    fprintf(shapes_txt, "%s", names[p]);
    for (int d = 0; d < ndims[p]; d++) {
      fprintf(shapes_txt, " %lld", (long long)shapes[p][d]);
      n *= (size_t)shapes[p][d];
    }
    fputc('\n', shapes_txt);
    snprintf(path, sizeof path, "%s/gathered/%s.f32", dir, names[p]);
    FILE *f = fopen(path, "wb");
    if (!f) {
      perror(path);
      ok = 0;
      break;
    }
    for (size_t i = 0; i < n && ok; i++) {
      unsigned char b[4];
      memcpy(b, &values[p][i], 4);
      if (!le) {
        unsigned char t = b[0];
        b[0] = b[3], b[3] = t, t = b[1], b[1] = b[2], b[2] = t;
      }
      ok = fwrite(b, 1, 4, f) == 4;
    }
    if (fclose(f) != 0 || !ok) {
      fprintf(stderr, "ckpt_export: cannot write %s\n", path);
      ok = 0;
    }
  }
  if (fclose(shapes_txt) != 0)
    ok = 0;
  return ok;
}

int main(int argc, char **argv) {
  tdm_context *ctx;
  tdm_engine *engine;
  tdm_optimizer *opt;
  mlp_model model;
  tdm_options init = TDM_OPTIONS_INIT;
  init.device = TDM_DEVICE_CPU; /* the model's math is on the host */
  TRY(tdm_init(&argc, &argv, &init, &ctx));
  char *end = NULL;
  long long max_shard = argc > 2 ? strtoll(argv[2], &end, 10) : 0;
  if (argc < 2 || argc > 3 || (argc > 2 && (*end || max_shard < 0))) {
    fprintf(stderr, "usage: ckpt_export DIR [max_shard_bytes]\n");
    tdm_finalize(ctx);
    return 2;
  }
  const char *dir = argv[1];
  int rank, size;
  TRY(tdm_get_rank(ctx, &rank));
  TRY(tdm_get_world_size(ctx, &size));
  tdm_options o = TDM_OPTIONS_INIT;
  TRY(tdm_get_options(ctx, &o));

  TRY(tdm_engine_create(ctx, &engine));
  TRY(mlp_register(ctx, engine, 1234, &model));
  TRY(tdm_prepare(engine)); /* every rank now holds rank 0's weights */
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  oo.kind = TDM_OPTIMIZER_ADAMW;
  oo.lr = 0.01;
  oo.weight_decay = 0.01;
  TRY(tdm_optimizer_create(engine, &oo, &opt));

  float *x = malloc(sizeof *x * DATASET * MLP_IN);
  float *y = malloc(sizeof *y * DATASET);
  if (!x || !y) {
    fprintf(stderr, "ckpt_export: out of memory\n");
    return 1;
  }
  TRY(mlp_make_data(ctx, 42, DATASET, x, y));

  double scale, loss, step_loss = 0, mean_loss = 0;
  long micro = 0;
  int accum = o.gradient_accumulation_steps;
  for (int step = 0; step < STEPS;) {
    long first = (micro++ * size + rank) * BATCH_PER_RANK % DATASET;
    TRY(tdm_loss_scale(engine, &scale));
    TRY(tdm_backward_begin(engine));
    TRY(mlp_forward_backward(engine, &model, &x[first * MLP_IN], &y[first],
                             BATCH_PER_RANK, scale, &loss));
    TRY(tdm_backward_end(engine));
    step_loss += loss / accum;
    int stepped;
    TRY(tdm_step(opt, &stepped));
    if (!stepped)
      continue;
    TRY(tdm_allreduce(ctx, &step_loss, &mean_loss, 1, TDM_F64, TDM_MEAN));
    step_loss = 0;
    step++;
  }
  TRY(tdm_print(ctx, "ckpt_export: %d ranks, ZeRO-%d, %d steps, loss %.6f\n",
                size, o.zero_stage, STEPS, mean_loss));

  tdm_checkpoint_options ck = TDM_CHECKPOINT_OPTIONS_INIT;
  char saved[4096] = "";
  ck.max_shard_bytes = max_shard;
  ck.path_out = saved;
  ck.path_capacity = sizeof saved;
  TRY(tdm_save_state(engine, opt, dir, &ck));
  char want[4096];
  snprintf(want, sizeof want, "%s/checkpoint-%d", dir, STEPS);
  if (strcmp(saved, want) != 0) {
    fprintf(stderr, "ckpt_export: rank %d: path_out is \"%s\", expected "
            "\"%s\"\n", rank, saved, want);
    return 1;
  }
  TRY(tdm_print(ctx, "ckpt_export: saved %s (max_shard_bytes %lld)\n", saved,
                max_shard));

  float *values[MLP_PARAMS];
  for (int p = 0; p < MLP_PARAMS; p++) {
    int found = -1;
    TRY(tdm_find_param(engine, names[p], &found));
    if (found != model.param[p]) {
      fprintf(stderr, "ckpt_export: %s is param %d, registered as %d\n",
              names[p], found, model.param[p]);
      return 1;
    }
    size_t n = (size_t)shapes[p][0] * (ndims[p] > 1 ? (size_t)shapes[p][1] : 1);
    if (!(values[p] = malloc(n * sizeof(float)))) {
      fprintf(stderr, "ckpt_export: out of memory\n");
      return 1;
    }
    TRY(tdm_gather_param(engine, model.param[p], values[p]));
  }
  int ok = rank == 0 ? write_gathered(dir, values) : 1, all = 0;
  TRY(tdm_allreduce(ctx, &ok, &all, 1, TDM_I32, TDM_MIN));
  for (int p = 0; p < MLP_PARAMS; p++)
    free(values[p]);
  free(x);
  free(y);
  TRY(tdm_optimizer_destroy(opt));
  TRY(tdm_engine_destroy(engine));
  TRY(tdm_finalize(ctx));
  return all ? 0 : 1;
}
