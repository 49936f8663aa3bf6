/* main.c - data-parallel training of a small regression MLP, the README's
 * main job:
 *   mpirun -np 4 ./examples/mlp/mlp [--steps N] [--save-dir DIR
 *       --save-every K] [--resume DIR]
 * --save-dir writes DIR/checkpoint-<step> every K steps (the newest 3
 * kept); --resume continues from the newest complete checkpoint in DIR,
 * on the same trajectory as a run that was never stopped.
 * Every rank takes its slice of each global batch; tandem averages the
 * gradients across ranks (and across TANDEM_GRADIENT_ACCUMULATION_STEPS
 * micro-steps) while backward goes on.  The main rank prints the loss.
 * TANDEM_MIXED_PRECISION=bf16 or fp16 runs the same binary on 16-bit
 * compute copies with f32 master weights; TANDEM_ZERO_STAGE=1, 2 or 3
 * shards optimizer state, gradients and parameters (the model fetches
 * each layer before use, so every stage runs it unchanged).
 * SIGUSR1 or SIGTERM to any rank (Slurm's warning before preemption)
 * stops every rank at the same step: with --save-dir it saves a
 * checkpoint there first, and exits with TDM_EXIT_REQUEUE (75), so that
 * examples/slurm/train.sbatch requeues the job to resume from it.
 * TANDEM_METRICS_DIR=DIR writes the loss and the engine's own metrics to
 * DIR/metrics.jsonl and a TensorBoard event file there. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

#define BATCH_PER_RANK 32
#define DATASET 8192

static tdm_context *ctx;

/* Errors are collective: every rank reports the same one and exits --
 * except a timeout, after which only tdm_abort ends the stalled ranks. */
#define TRY(call)                                                        \
  do {                                                                   \
    tdm_status st_ = (call);                                             \
    if (st_ != TDM_SUCCESS) {                                            \
      fprintf(stderr, "%s: %s: %s\n", #call, tdm_status_string(st_),     \
              tdm_last_error());                                         \
      if (st_ == TDM_ERR_TIMEOUT)                                        \
        tdm_abort(ctx, 1);                                               \
      exit(1);                                                           \
    }                                                                    \
  } while (0)

/* What the loop needs to continue after a resume, saved as user data. */
typedef struct {
  long micro, skipped;
  int step;
  double first_loss;
} progress;

typedef struct {
  int steps, save_every;
  const char *save_dir, *resume;
} args;

static int parse(int argc, char **argv, args *a) {
  *a = (args){300, 0, NULL, NULL};
  for (int i = 1; i < argc; i++) {
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(argv[i], "--steps") && v)
      a->steps = atoi(v);
    else if (!strcmp(argv[i], "--save-dir") && v)
      a->save_dir = v;
    else if (!strcmp(argv[i], "--save-every") && v)
      a->save_every = atoi(v);
    else if (!strcmp(argv[i], "--resume") && v)
      a->resume = v;
    else
      return 0;
    i++;
  }
  return a->steps > 0 && (!a->save_dir || a->save_every > 0);
}

int main(int argc, char **argv) {
  tdm_engine *engine;
  tdm_optimizer *opt;
  mlp_model model;
  /* This model's math is plain C on the host: its buffers stay there even
   * where a GPU is visible (a CUDA model would leave device unset). */
  tdm_options init = TDM_OPTIONS_INIT;
  init.device = TDM_DEVICE_CPU;
  TRY(tdm_init(&argc, &argv, &init, &ctx));
  args a;
  if (!parse(argc, argv, &a)) {
    fprintf(stderr, "usage: mlp [--steps N] [--save-dir DIR --save-every K] "
            "[--resume DIR]\n");
    return 2;
  }
  int steps = a.steps, rank, size, accum;
  TRY(tdm_get_rank(ctx, &rank));
  TRY(tdm_get_world_size(ctx, &size));

  TRY(tdm_engine_create(ctx, &engine));
  TRY(tdm_get_gradient_accumulation_steps(engine, &accum));
  TRY(mlp_register(ctx, engine, 1234, &model));
  TRY(tdm_prepare(engine)); /* every rank now holds rank 0's weights */
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  oo.lr = 0.05;
  oo.momentum = 0.9;
  TRY(tdm_optimizer_create(engine, &oo, &opt));

  float *x = malloc(sizeof *x * DATASET * MLP_IN), *y = malloc(sizeof *y * DATASET);
  TRY(mlp_make_data(ctx, 42, DATASET, x, y));
  TRY(tdm_print(ctx, "mlp: %d ranks x batch %d x %d micro-steps, %d steps\n",
                size, BATCH_PER_RANK, accum, steps));

  progress at = {0, 0, 0, 0.0};
  tdm_checkpoint_options ck = TDM_CHECKPOINT_OPTIONS_INIT;
  ck.total_limit = 3;
  ck.user_buffer = &at;
  ck.user_capacity = sizeof at;
  char from[4096];
  if (a.resume) {
    ck.path_out = from;
    ck.path_capacity = sizeof from;
    TRY(tdm_load_state(engine, opt, a.resume, &ck));
    TRY(tdm_print(ctx, "mlp: resumed from %s at step %d\n", from, at.step));
  }
  double scale, loss, step_loss = 0, mean_loss = 0, first_loss = at.first_loss;
  long micro = at.micro, skipped = at.skipped;
  int stop = 0, step;
  for (step = at.step; step < steps && !stop;) {
    /* This rank's slice of the next global micro-batch. */
    long first = (micro++ * size + rank) * BATCH_PER_RANK % DATASET;
    int boundary;
    TRY(tdm_is_sync_step(engine, &boundary));
    TRY(tdm_loss_scale(engine, &scale)); /* fp16's loss scale; else 1 */
    TRY(mlp_forward_backward(engine, &model, &x[first * MLP_IN], &y[first],
                             BATCH_PER_RANK, scale, &loss));
    step_loss += loss / accum;
    int stepped; /* ends the micro-step: syncs, averages, steps at the end */
    TRY(tdm_step(opt, &stepped));
    if (boundary && !stepped) { /* fp16: inf/nan gradients, scale lowered */
      skipped++;
      step_loss = 0;
    }
    if (!stepped)
      continue;
    TRY(tdm_allreduce(ctx, &step_loss, &mean_loss, 1, TDM_F64, TDM_MEAN));
    if (step == 0)
      first_loss = mean_loss;
    /* to TANDEM_METRICS_DIR (JSONL, TensorBoard) where it is set */
    TRY(tdm_log_scalar(ctx, "loss", step, mean_loss));
    if (step % 50 == 0 || step == steps - 1)
      TRY(tdm_print(ctx, "step %4d  loss %.6f\n", step, mean_loss));
    step_loss = 0;
    step++;
    TRY(tdm_should_stop(ctx, &stop)); /* a signal on any rank */
    if (a.save_dir && (step % a.save_every == 0 || stop)) {
      at = (progress){micro, skipped, step, first_loss};
      ck.user_data = &at;
      ck.user_bytes = sizeof at;
      TRY(tdm_save_state(engine, opt, a.save_dir, &ck));
    }
  }
  if (stop) {
    TRY(tdm_print(ctx, "mlp: stopped by signal at step %d%s\n", step,
                  a.save_dir ? ", checkpoint saved" : ""));
    TRY(tdm_optimizer_destroy(opt));
    TRY(tdm_engine_destroy(engine));
    TRY(tdm_finalize(ctx));
    free(x);
    free(y);
    return TDM_EXIT_REQUEUE;
  }
  /* The main job doubles as a check: training must have worked. */
  int learned = mean_loss < 0.25 * first_loss;
  TRY(tdm_print(ctx, "mlp: loss %.4f -> %.4f: %s (%ld skipped steps)\n",
                first_loss, mean_loss, learned ? "learned" : "DID NOT LEARN",
                skipped));
  /* What this rank holds: TANDEM_ZERO_STAGE shrinks it. */
  char report[1024];
  TRY(tdm_memory_report(engine, report, sizeof report, NULL));
  TRY(tdm_print(ctx, "%s", report));
  free(x);
  free(y);
  TRY(tdm_optimizer_destroy(opt));
  TRY(tdm_engine_destroy(engine));
  TRY(tdm_finalize(ctx));
  return learned ? 0 : 1;
}
