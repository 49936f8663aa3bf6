/* main.c - examples/gpt: a GPT-2 written in plain C (model.c) trained
 * data-parallel through tandem on bytes of English text:
 *   examples/gpt/text_to_shard train.bin val.bin /usr/share/common-licenses/[A-Z]*
 *   mpirun -np 2 examples/gpt/gpt --train train.bin --val val.bin
 * Every rank reads its rows of each batch from the llm.c token shard
 * (tandem's sampler and prefetching loader), runs forward and backward,
 * and tdm_step averages the gradients over ranks (overlapped with
 * backward), clips and steps AdamW on a cosine schedule.  TANDEM_ZERO_STAGE,
 * TANDEM_MIXED_PRECISION, TANDEM_OFFLOAD and
 * TANDEM_GRADIENT_ACCUMULATION_STEPS change how, not this code.  At the end
 * it prints the loss on the held-out text and a sample of generated text.
 * Flags: --steps N, --batch B (rows per rank) or --global-batch G (split
 * over the ranks), --seq-len, --layers, --heads, --channels, --lr,
 * --save-dir DIR --save-every K, --resume DIR, --sample CHARS.
 * SIGUSR1 or SIGTERM to any rank stops every rank at the same step, after
 * a checkpoint in --save-dir, with exit status TDM_EXIT_REQUEUE (75). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"

static tdm_session tdm = TDM_SESSION_INIT;

/* Errors are collective: every rank reports the same one and exits --
 * except a timeout, after which only tdm_abort ends the stalled ranks. */
#define TRY(call)                                                        \
  do {                                                                   \
    tdm_status st_ = (call);                                             \
    if (st_ != TDM_SUCCESS) {                                            \
      fprintf(stderr, "%s: %s: %s\n", #call, tdm_status_string(st_),     \
              tdm_last_error());                                         \
      if (st_ == TDM_ERR_TIMEOUT)                                        \
        tdm_abort(tdm.ctx, 1);                                           \
      exit(1);                                                           \
    }                                                                    \
  } while (0)

typedef struct {
  const char *train, *val, *save_dir, *resume;
  int steps, batch, global_batch, save_every, sample;
  double lr;
  gpt_config model;
} args;

static int parse(int argc, char **argv, args *a) {
  *a = (args){NULL, NULL, NULL, NULL, 300, 8, 0, 0, 200, 2e-3,
              {256, 64, 4, 4, 128}};
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *k = argv[i], *v = argv[i + 1];
    int n = atoi(v);
    if (!strcmp(k, "--train")) a->train = v;
    else if (!strcmp(k, "--val")) a->val = v;
    else if (!strcmp(k, "--save-dir")) a->save_dir = v;
    else if (!strcmp(k, "--resume")) a->resume = v;
    else if (!strcmp(k, "--steps")) a->steps = n;
    else if (!strcmp(k, "--batch")) a->batch = n;
    else if (!strcmp(k, "--global-batch")) a->global_batch = n;
    else if (!strcmp(k, "--save-every")) a->save_every = n;
    else if (!strcmp(k, "--sample")) a->sample = n;
    else if (!strcmp(k, "--lr")) a->lr = atof(v);
    else if (!strcmp(k, "--seq-len")) a->model.seq_len = n;
    else if (!strcmp(k, "--layers")) a->model.layers = n;
    else if (!strcmp(k, "--heads")) a->model.heads = n;
    else if (!strcmp(k, "--channels")) a->model.channels = n;
    else return 0;
  }
  return argc % 2 == 1 && a->train && a->steps > 0 && a->batch > 0 &&
         (!a->save_dir || a->save_every > 0);
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double in_tandem; /* seconds spent in the loop's tandem calls */

/* A tandem call of the training loop, timed. */
#define TIMED(call)                                                      \
  do {                                                                   \
    double t0_ = now();                                                  \
    TRY(call);                                                           \
    in_tandem += now() - t0_;                                            \
  } while (0)

/* A shard as batches of this rank's rows; shuffled for training. */
static void open_data(const char *path, const args *a, int train,
                      tdm_dataset **ds, tdm_sampler **s, tdm_loader **l) {
  size_t rows;
  TRY(tdm_dataset_open_tokens(&path, 1, (size_t)a->model.seq_len, ds));
  TRY(tdm_dataset_info(*ds, &rows, NULL, NULL));
  tdm_sampler_options so = TDM_SAMPLER_OPTIONS_INIT;
  so.batch_size = (size_t)(a->global_batch ? a->global_batch : a->batch);
  so.split_batches = a->global_batch > 0;
  so.shuffle = train;
  so.seed = 1337;
  TRY(tdm_sampler_create(tdm.ctx, rows, &so, s));
  TRY(tdm_loader_create(*ds, *s, NULL, l));
}

/* Mean loss per row over the whole held-out text: every rank takes the
 * same number of batches (the last padded by wrapping around), and
 * tdm_gather_for_metrics keeps only the real rows, so the figure is the
 * same at any world size. */
static double evaluate(gpt_model *m, tdm_sampler *s, tdm_loader *l,
                       const args *a) {
  int T = a->model.seq_len, world = tdm.world_size;
  size_t batches, rows;
  TRY(tdm_sampler_info(s, &batches, &rows));
  TRY(tdm_sampler_set_epoch(s, 0));
  float *mine = malloc(rows * sizeof *mine);
  float *all = malloc(rows * (size_t)world * sizeof *all);
  double sum = 0;
  size_t n = 0, got;
  for (size_t i = 0; i < batches; i++) {
    tdm_batch b;
    float loss;
    TRY(tdm_loader_next(l, &b));
    const int32_t *tokens = b.data;
    TRY(gpt_forward(m, tokens, T + 1, (int)b.count, T, &loss));
    for (size_t r = 0; r < b.count; r++) {
      double row = 0; /* the row's cross-entropy, from its softmax */
      for (int t = 0; t < T; t++)
        row -= log(gpt_probs(m, (int)r, t)[tokens[r * (T + 1) + t + 1]]);
      mine[r] = (float)(row / T);
    }
    TRY(tdm_gather_for_metrics(tdm.ctx, mine, b.count, b.valid, TDM_F32, all,
                               rows * (size_t)world, &got));
    for (size_t j = 0; j < got; j++)
      sum += all[j];
    n += got;
  }
  free(mine);
  free(all);
  return sum / (double)n;
}

/* Text from the model, the same on every rank (a shared random stream),
 * which all run the forward passes that ZeRO-3 makes collective. */
static void generate(gpt_model *m, const args *a) {
  int T = a->model.seq_len, n = 4 + a->sample;
  int32_t *text = calloc((size_t)n + 1, sizeof *text);
  tdm_rng *rng;
  TRY(tdm_rng_create(tdm.ctx, 42, TDM_RNG_SHARED, &rng));
  memcpy(text, (int32_t[]){'T', 'h', 'e', ' '}, 4 * sizeof *text);
  for (int i = 4; i < n; i++) {
    int start = i > T ? i - T : 0;
    float u;
    TRY(gpt_forward(m, text + start, T + 1, 1, i - start, NULL));
    TRY(tdm_rng_uniform_f32(rng, &u, 1));
    const float *p = gpt_probs(m, 0, i - start - 1);
    int t = 0;
    for (float c = p[0]; c < u && t < a->model.vocab - 1; c += p[++t])
      ;
    text[i] = t;
  }
  if (tdm.rank == 0) {
    printf("gpt: sample: \"");
    for (int i = 0; i < n; i++)
      putchar(text[i] >= 32 && text[i] < 127 ? text[i] : text[i] == '\n' ? '\n' : '?');
    printf("\"\n");
  }
  tdm_rng_destroy(rng);
  free(text);
}

/* AdamW as GPT-2 trains it: no decay on biases and LayerNorms, warmup
 * then cosine to a tenth, gradients clipped at norm 1 in the loop. */
static void make_optimizer(const args *a) {
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  oo.kind = TDM_OPTIMIZER_ADAMW;
  oo.lr = a->lr;
  oo.beta2 = 0.95;
  oo.weight_decay = 0.1;
  TRY(tdm_optimizer_create(tdm.engine, &oo, &tdm.optimizer));
  int group;
  TRY(tdm_optimizer_add_no_decay_group(tdm.optimizer, NULL, &group, NULL));
  tdm_schedule_options so = TDM_SCHEDULE_OPTIONS_INIT;
  so.kind = TDM_SCHEDULE_COSINE;
  so.warmup_steps = a->steps / 10;
  so.training_steps = a->steps;
  so.min_lr = a->lr / 10;
  TRY(tdm_optimizer_set_schedule(tdm.optimizer, &so));
}

int main(int argc, char **argv) {
  TRY(tdm_start(&argc, &argv, &tdm));
  args a;
  if (!parse(argc, argv, &a)) {
    fprintf(stderr, "usage: gpt --train SHARD [--val SHARD] [--steps N] "
            "[--batch B | --global-batch G] [--seq-len T] [--layers L] "
            "[--heads H] [--channels C] [--lr LR] [--save-dir DIR "
            "--save-every K] [--resume DIR] [--sample CHARS]\n");
    return 2;
  }
  int T = a.model.seq_len, accum, step = 0;
  TRY(tdm_get_gradient_accumulation_steps(tdm.engine, &accum));
  tdm_dataset *train, *val = NULL;
  tdm_sampler *train_s, *val_s = NULL;
  tdm_loader *train_l, *val_l = NULL;
  open_data(a.train, &a, 1, &train, &train_s, &train_l);
  if (a.val)
    open_data(a.val, &a, 0, &val, &val_s, &val_l);
  size_t rows;
  TRY(tdm_sampler_info(train_s, NULL, &rows));
  gpt_model *model;
  TRY(gpt_create(tdm.ctx, tdm.engine, &a.model, (int)rows, 1337, &model));
  TRY(tdm_prepare(tdm.engine)); /* every rank now holds rank 0's weights */
  make_optimizer(&a);

  tdm_checkpoint_options ck = TDM_CHECKPOINT_OPTIONS_INIT;
  ck.total_limit = 2;
  ck.samplers = &train_s; /* a resumed run reads the batches it would have */
  ck.sampler_count = 1;
  ck.user_buffer = &step;
  ck.user_capacity = sizeof step;
  if (a.resume)
    TRY(tdm_load_state(tdm.engine, tdm.optimizer, a.resume, &ck));
  long tokens = (long)rows * tdm.world_size * T * accum; /* per step */
  TRY(tdm_print(tdm.ctx, "gpt: %zu parameters, %d ranks x %zu rows x %d "
                "tokens x %d micro-steps, from step %d of %d\n",
                gpt_param_count(&a.model), tdm.world_size, rows, T, accum,
                step, a.steps));

  double t_start = 0, first_loss = 0, mean = 0;
  int timed_from = step + 3, stop = 0; /* warm-up steps are not timed */
  for (; step < a.steps && !stop; step++) {
    if (step == timed_from) {
      t_start = now();
      in_tandem = 0;
    }
    double loss_sum = 0, norm;
    for (int micro = 0; micro < accum; micro++) {
      tdm_batch b;
      double scale;
      float loss;
      TIMED(tdm_loader_next(train_l, &b));
      TRY(tdm_loss_scale(tdm.engine, &scale)); /* fp16: its loss scale; else 1 */
      TRY(gpt_forward(model, b.data, T + 1, (int)b.count, T, &loss));
      TRY(gpt_backward(model, (float)scale));
      loss_sum += loss / accum;
      if (micro == accum - 1) /* ends the cycle: gradients reduced */
        TIMED(tdm_clip_grad_norm(tdm.optimizer, 1.0, &norm));
      TIMED(tdm_step(tdm.optimizer, NULL));
    }
    TRY(tdm_allreduce(tdm.ctx, &loss_sum, &mean, 1, TDM_F64, TDM_MEAN));
    if (step == 0)
      first_loss = mean;
    if (step % 20 == 0 || step == a.steps - 1)
      TRY(tdm_print(tdm.ctx, "step %4d  loss %.4f  grad norm %.3f\n", step,
                    mean, norm));
    TRY(tdm_should_stop(tdm.ctx, &stop)); /* a signal on any rank */
    if (a.save_dir && ((step + 1) % a.save_every == 0 || stop)) {
      int next = step + 1;
      ck.user_data = &next;
      ck.user_bytes = sizeof next;
      TRY(tdm_save_state(tdm.engine, tdm.optimizer, a.save_dir, &ck));
    }
  }
  if (stop) {
    TRY(tdm_print(tdm.ctx, "gpt: stopped by signal at step %d%s\n", step,
                  a.save_dir ? ", checkpoint saved" : ""));
  } else if (step > timed_from) {
    double seconds = now() - t_start, per_step = seconds / (step - timed_from);
    TRY(tdm_print(tdm.ctx, "gpt: %d ranks: %.0f tokens/s, %.1f ms per step, "
                  "%.1f%% of it in tandem's calls (loader, clip, step)\n",
                  tdm.world_size, tokens / per_step, 1e3 * per_step,
                  100 * in_tandem / seconds));
  }
  if (!stop)
    TRY(tdm_print(tdm.ctx, "gpt: train loss %.4f -> %.4f\n", first_loss,
                  mean));
  if (val_l && !stop) {
    size_t val_rows;
    TRY(tdm_dataset_info(val, &val_rows, NULL, NULL));
    double val_loss = evaluate(model, val_s, val_l, &a);
    TRY(tdm_print(tdm.ctx, "gpt: val loss %.4f (%zu held-out rows)\n",
                  val_loss, val_rows));
  }
  if (a.sample > 0 && !stop)
    generate(model, &a);
  tdm_loader_destroy(train_l);
  tdm_sampler_destroy(train_s);
  tdm_dataset_close(train);
  if (val_l) {
    tdm_loader_destroy(val_l);
    tdm_sampler_destroy(val_s);
    tdm_dataset_close(val);
  }
  gpt_destroy(model);
  TRY(tdm_stop(&tdm));
  return stop ? TDM_EXIT_REQUEUE : 0;
}
