/* t_ckpt.c - checkpoints (tdm_save_state, tdm_load_state,
 * tdm_load_weights, tdm_latest_checkpoint), against runs that were never
 * interrupted:
 *  (a) resume: a 4-layer chain of odd widths (deep_model.c) trained 40
 *      steps straight, and 20 steps, saved, the engine destroyed, a fresh
 *      one (other initial values) loaded and trained 20 more: the
 *      weights, the optimizer counters and the loss scale are bitwise
 *      those of the straight run, at stages 0-3 (stage 3 with every
 *      module sharded), in f32 and bf16 (AdamW), fp16 with f16 gradients
 *      and a loss scale of 2^24 that has backed off by the save (the
 *      scaler's growth tracker is mid-way), SGD with Nesterov momentum,
 *      two accumulation micro-steps, stage 2 with the optimizer
 *      offloaded, and sharded weight files; the data comes from a
 *      per-rank RNG stream restored from the checkpoint, and the step
 *      from the user data;
 *  (b) re-sharding: saved by min(2, N) ranks at stage 0, loaded by
 *      min(3, N) ranks at stage 3 and by N ranks at stage 1 with the
 *      optimizer offloaded and at stage 2 in bf16: the values read back
 *      with tdm_gather_param are the saved ones bit for bit; training
 *      then continues as a stage-0 engine of the same ranks loaded from
 *      the same checkpoint does (1e-6 relative);
 *  (c) the folder: total_limit keeps the newest checkpoints only, the
 *      latest lookup names the newest, weights exported as bf16 still
 *      resume exactly (the masters go to optimizer.safetensors) while
 *      tdm_load_weights of them asks for TDM_WEIGHTS_CONVERT and with it
 *      gives the bf16-rounded values;
 *  (d) errors: a save mid-cycle, NULL arguments, a missing done marker
 *      (and a root without any complete checkpoint), a truncated weight
 *      file, a corrupt state.json, a header length past the end of the
 *      file, weights of another shape, a missing tensor, the state of
 *      another optimizer kind.
 * With TANDEM_TEST_FAKE_GPU=1 every engine runs on the fake GPU. */
#include <math.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "deep_model.h"
#include "harness.h"
#include "tandem_mpi.h"

#define B 4
#define NL 4
#define SAVE_AT 20
#define TOTAL 40

static const int width[NL + 1] = {7, 13, 5, 11, 3};
static int rank, size;
static char root[512];
/* TANDEM_TEST_FAKE_GPU=1: every engine on the fake GPU (the device path:
 * staging copies from device buffers, offload to host memory). */
static int fake_gpu;

typedef struct {
  const char *name;
  int stage, offload, precision, kind, accum;
  int64_t shard_bytes; /* max_shard_bytes of the save */
} cfg;

typedef struct {
  tdm_context *ctx;
  tdm_engine *e;
  tdm_optimizer *opt;
  deep_model m;
  tdm_rng *rng;
  int nl;
  const int *width;
} run;

static size_t numel_of(const run *r, int p) {
  int l = p / 2;
  return (size_t)r->width[l + 1] * (p % 2 ? 1 : (size_t)r->width[l]);
}

static int param_of(const run *r, int p) {
  return p % 2 ? r->m.bias[p / 2] : r->m.weight[p / 2];
}

/* Context, engine, model, optimizer and a per-rank data stream on comm;
 * 0 after a failed check. */
static int open_with(run *r, MPI_Comm comm, const cfg *c, uint64_t seed,
                     int nl, const int *w) {
  memset(r, 0, sizeof *r);
  r->nl = nl;
  r->width = w;
  tdm_options o = TDM_OPTIONS_INIT;
  o.device = fake_gpu ? TDM_DEVICE_CUDA : TDM_DEVICE_CPU;
  o.first_bucket_bytes = 256;
  o.bucket_cap_bytes = 512;
  o.zero_stage = c->stage;
  o.offload = c->offload;
  o.mixed_precision = c->precision;
  o.gradient_accumulation_steps = c->accum;
  o.zero3_persistence_threshold = 0;
  o.progress = TDM_PROGRESS_POLL;
  if (c->precision == TDM_PRECISION_FP16)
    o.reduce_dtype = TDM_F16; /* gradients that overflow at a big scale */
  tdm_status st = tdm_init_comm(comm, &o, &r->ctx);
  TH_CHECK(st == TDM_SUCCESS, "%s: tdm_init_comm: %s", c->name,
           tdm_last_error());
  if (st != TDM_SUCCESS)
    return 0;
  TH_OK(st = tdm_engine_create(r->ctx, &r->e));
  if (st == TDM_SUCCESS)
    TH_OK(st = deep_register(r->ctx, r->e, nl, w, seed, &r->m));
  if (st == TDM_SUCCESS)
    TH_OK(st = tdm_prepare(r->e));
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  oo.kind = c->kind;
  oo.lr = c->kind == TDM_OPTIMIZER_SGD ? 0.05 : 1e-2;
  oo.weight_decay = 0.01;
  oo.momentum = c->kind == TDM_OPTIMIZER_SGD ? 0.9 : 0.0;
  oo.nesterov = c->kind == TDM_OPTIMIZER_SGD;
  oo.init_scale = 16777216.0; /* 2^24: f16 gradients overflow at first */
  oo.growth_interval = 5;
  if (st == TDM_SUCCESS)
    TH_OK(st = tdm_optimizer_create(r->e, &oo, &r->opt));
  if (st == TDM_SUCCESS)
    TH_OK(st = tdm_rng_create(r->ctx, 9, TDM_RNG_PER_RANK, &r->rng));
  return st == TDM_SUCCESS;
}

static int open_run(run *r, MPI_Comm comm, const cfg *c, uint64_t seed) {
  return open_with(r, comm, c, seed, NL, width);
}

static void close_run(run *r) {
  if (r->rng)
    TH_OK(tdm_rng_destroy(r->rng));
  if (r->opt)
    TH_OK(tdm_optimizer_destroy(r->opt));
  if (r->e)
    TH_OK(tdm_engine_destroy(r->e));
  deep_free(&r->m);
  if (r->ctx)
    TH_OK(tdm_finalize(r->ctx));
}

/* steps optimizer steps; each micro-step draws its batch from the rank's
 * stream.  Returns the last micro-step's loss. */
static double train(run *r, int steps, int accum) {
  float x[B * 16], y[B * 16];
  double scale, loss = 0;
  int in = r->width[0], out = r->width[r->nl];
  for (int s = 0; s < steps; s++)
    for (int m = 0; m < accum; m++) {
      TH_OK(tdm_rng_normal_f32(r->rng, x, (size_t)B * in, 0.0f, 1.0f));
      TH_OK(tdm_rng_uniform_f32(r->rng, y, (size_t)B * out));
      TH_OK(tdm_loss_scale(r->e, &scale));
      TH_OK(tdm_backward_begin(r->e));
      TH_OK(deep_forward_backward(r->e, &r->m, x, y, B, scale, &loss));
      TH_OK(tdm_backward_end(r->e));
      TH_OK(tdm_step(r->opt, NULL));
    }
  return loss;
}

/* Every parameter's master values, end to end. */
static float *gather_all(run *r, size_t *n) {
  size_t total = 0;
  for (int p = 0; p < 2 * r->nl; p++)
    total += numel_of(r, p);
  float *v = calloc(total, sizeof *v);
  size_t at = 0;
  for (int p = 0; p < 2 * r->nl; p++) {
    TH_OK(tdm_gather_param(r->e, param_of(r, p), v + at));
    at += numel_of(r, p);
  }
  *n = total;
  return v;
}

static tdm_optimizer_info info_of(const run *r) {
  tdm_optimizer_info i = {sizeof i, 0, 0, 0, 0, 0};
  TH_OK(tdm_get_optimizer_info(r->opt, &i));
  return i;
}

static void path_of(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s", root, name);
}

/* ---- (a) resume ---------------------------------------------------------- */

static void save(run *r, const char *dir, int step, int64_t shard_bytes) {
  tdm_checkpoint_options co = TDM_CHECKPOINT_OPTIONS_INIT;
  co.max_shard_bytes = shard_bytes;
  co.rngs = &r->rng;
  co.rng_count = 1;
  co.user_data = &step;
  co.user_bytes = sizeof step;
  TH_OK(tdm_save_state(r->e, r->opt, dir, &co));
}

static int load(run *r, const char *dir) {
  int step = -1;
  size_t got = 0;
  tdm_checkpoint_options co = TDM_CHECKPOINT_OPTIONS_INIT;
  co.rngs = &r->rng;
  co.rng_count = 1;
  co.user_buffer = &step;
  co.user_capacity = sizeof step;
  co.user_out = &got;
  TH_OK(tdm_load_state(r->e, r->opt, dir, &co));
  TH_CHECK(got == sizeof step, "user data of %zu bytes", got);
  return step;
}

static void resume(const cfg *c) {
  char dir[600];
  path_of(dir, sizeof dir, c->name);
  run a, b, d;
  size_t n = 0, n2 = 0;
  if (!open_run(&a, MPI_COMM_WORLD, c, 77))
    return;
  train(&a, TOTAL, c->accum);
  float *straight = gather_all(&a, &n);
  tdm_optimizer_info want = info_of(&a);
  close_run(&a);

  if (!open_run(&b, MPI_COMM_WORLD, c, 77))
    return;
  train(&b, SAVE_AT, c->accum);
  save(&b, dir, SAVE_AT, c->shard_bytes);
  float *saved = gather_all(&b, &n2);
  tdm_optimizer_info at_save = info_of(&b);
  close_run(&b);
  if (c->precision == TDM_PRECISION_FP16)
    TH_CHECK(at_save.skipped_steps > 0 && at_save.loss_scale < 16777216.0,
             "%s: the scale has not backed off (%lld skipped, scale %g)",
             c->name, (long long)at_save.skipped_steps, at_save.loss_scale);

  if (!open_run(&d, MPI_COMM_WORLD, c, 99)) /* other initial values */
    return;
  int step = load(&d, dir);
  TH_CHECK(step == SAVE_AT, "%s: user data %d", c->name, step);
  float *loaded = gather_all(&d, &n2);
  TH_CHECK(!memcmp(loaded, saved, n * sizeof *saved),
           "%s: loaded values differ from the saved ones", c->name);
  tdm_optimizer_info back = info_of(&d);
  TH_CHECK(back.steps == at_save.steps &&
               back.skipped_steps == at_save.skipped_steps &&
               back.loss_scale == at_save.loss_scale,
           "%s: counters after load %lld/%lld/%g, saved %lld/%lld/%g",
           c->name, (long long)back.steps, (long long)back.skipped_steps,
           back.loss_scale, (long long)at_save.steps,
           (long long)at_save.skipped_steps, at_save.loss_scale);
  train(&d, TOTAL - SAVE_AT, c->accum);
  float *resumed = gather_all(&d, &n2);
  size_t diff = 0;
  for (size_t i = 0; i < n; i++)
    diff += memcmp(&resumed[i], &straight[i], sizeof(float)) != 0;
  TH_CHECK(diff == 0, "%s: %zu of %zu values differ from the straight run "
           "after resuming", c->name, diff, n);
  tdm_optimizer_info got = info_of(&d);
  TH_CHECK(got.steps == want.steps && got.skipped_steps == want.skipped_steps
               && got.loss_scale == want.loss_scale && got.lr == want.lr,
           "%s: steps %lld skipped %lld scale %g lr %g, straight %lld %lld "
           "%g %g", c->name, (long long)got.steps,
           (long long)got.skipped_steps, got.loss_scale, got.lr,
           (long long)want.steps, (long long)want.skipped_steps,
           want.loss_scale, want.lr);
  close_run(&d);
  free(straight);
  free(saved);
  free(loaded);
  free(resumed);
}

static const cfg resume_cfgs[] = {
    {"f32-stage0", 0, TDM_OFFLOAD_NONE, TDM_PRECISION_NO, TDM_OPTIMIZER_ADAMW, 1, 0},
    {"f32-stage1", 1, TDM_OFFLOAD_NONE, TDM_PRECISION_NO, TDM_OPTIMIZER_ADAMW, 1, 0},
    {"f32-stage2", 2, TDM_OFFLOAD_NONE, TDM_PRECISION_NO, TDM_OPTIMIZER_ADAMW, 1, 0},
    {"f32-stage3", 3, TDM_OFFLOAD_NONE, TDM_PRECISION_NO, TDM_OPTIMIZER_ADAMW, 1, 0},
    {"bf16-stage0", 0, TDM_OFFLOAD_NONE, TDM_PRECISION_BF16, TDM_OPTIMIZER_ADAMW, 1, 0},
    {"bf16-stage1", 1, TDM_OFFLOAD_NONE, TDM_PRECISION_BF16, TDM_OPTIMIZER_ADAMW, 1, 0},
    {"bf16-stage2", 2, TDM_OFFLOAD_NONE, TDM_PRECISION_BF16, TDM_OPTIMIZER_ADAMW, 1, 0},
    {"bf16-stage3", 3, TDM_OFFLOAD_NONE, TDM_PRECISION_BF16, TDM_OPTIMIZER_ADAMW, 1, 0},
    {"fp16-stage0", 0, TDM_OFFLOAD_NONE, TDM_PRECISION_FP16, TDM_OPTIMIZER_ADAMW, 1, 0},
    {"fp16-stage1", 1, TDM_OFFLOAD_NONE, TDM_PRECISION_FP16, TDM_OPTIMIZER_ADAMW, 1, 0},
    {"fp16-stage2", 2, TDM_OFFLOAD_NONE, TDM_PRECISION_FP16, TDM_OPTIMIZER_ADAMW, 1, 0},
    {"fp16-stage3", 3, TDM_OFFLOAD_NONE, TDM_PRECISION_FP16, TDM_OPTIMIZER_ADAMW, 1, 0},
    {"sgd-nesterov-stage3", 3, TDM_OFFLOAD_NONE, TDM_PRECISION_NO, TDM_OPTIMIZER_SGD, 1, 0},
    {"accum2-stage1", 1, TDM_OFFLOAD_NONE, TDM_PRECISION_BF16, TDM_OPTIMIZER_ADAMW, 2, 0},
    {"offload-stage2", 2, TDM_OFFLOAD_OPTIMIZER, TDM_PRECISION_NO, TDM_OPTIMIZER_ADAMW, 1, 0},
    {"sharded-stage3", 3, TDM_OFFLOAD_NONE, TDM_PRECISION_NO, TDM_OPTIMIZER_ADAMW, 1, 300},
};

/* ---- (b) re-sharding ----------------------------------------------------- */

/* The first n ranks of the world, or MPI_COMM_NULL on the others. */
static MPI_Comm first_ranks(int n) {
  MPI_Comm c;
  MPI_Comm_split(MPI_COMM_WORLD, rank < n ? 0 : MPI_UNDEFINED, rank, &c);
  return c;
}

/* Loads dir into a cfg engine on comm; its values must be saved, and 10
 * more steps must match a stage-0 engine loaded from the same dir. */
static void load_resharded(MPI_Comm comm, const cfg *c, const char *dir,
                           const float *saved, size_t n) {
  static const cfg ddp = {"stage 0 reference", 0, TDM_OFFLOAD_NONE,
                          TDM_PRECISION_NO, TDM_OPTIMIZER_ADAMW, 1, 0};
  run r, ref;
  size_t m = 0;
  if (!open_run(&r, comm, c, 5) || !open_run(&ref, comm, &ddp, 6))
    return;
  load(&r, dir);
  load(&ref, dir);
  float *got = gather_all(&r, &m);
  TH_CHECK(m == n && !memcmp(got, saved, n * sizeof *got),
           "%s: the loaded values are not the saved ones", c->name);
  train(&r, 10, 1);
  train(&ref, 10, 1);
  float *v = gather_all(&r, &m), *w = gather_all(&ref, &m);
  double num = 0, den = 0, moved = 0;
  for (size_t i = 0; i < n; i++) {
    num += ((double)v[i] - w[i]) * ((double)v[i] - w[i]);
    den += (double)w[i] * w[i];
    moved += fabs((double)v[i] - saved[i]);
  }
  double tol = c->precision == TDM_PRECISION_NO ? 1e-6 : 2e-2;
  TH_CHECK(sqrt(num / den) <= tol && moved > 0,
           "%s: after 10 more steps ||v - ref|| / ||ref|| = %g (moved %g)",
           c->name, sqrt(num / den), moved);
  TH_CHECK(info_of(&r).steps == SAVE_AT + 10, "%s: %lld steps", c->name,
           (long long)info_of(&r).steps);
  free(got);
  free(v);
  free(w);
  close_run(&r);
  close_run(&ref);
}

static void reshard(void) {
  static const cfg saver = {"saved at stage 0", 0, TDM_OFFLOAD_NONE,
                            TDM_PRECISION_NO, TDM_OPTIMIZER_ADAMW, 1, 0};
  static const cfg loaders[] = {
      {"loaded at stage 3", 3, TDM_OFFLOAD_NONE, TDM_PRECISION_NO,
       TDM_OPTIMIZER_ADAMW, 1, 0},
      {"loaded at stage 1 + offload", 1, TDM_OFFLOAD_OPTIMIZER,
       TDM_PRECISION_NO, TDM_OPTIMIZER_ADAMW, 1, 0},
      {"loaded at stage 2 in bf16", 2, TDM_OFFLOAD_NONE, TDM_PRECISION_BF16,
       TDM_OPTIMIZER_ADAMW, 1, 0}};
  char dir[600];
  path_of(dir, sizeof dir, "reshard");
  int n2 = size < 2 ? size : 2, n3 = size < 3 ? size : 3;
  size_t n = 0;
  for (int p = 0; p < 2 * NL; p++)
    n += (size_t)width[p / 2 + 1] * (p % 2 ? 1 : (size_t)width[p / 2]);
  float *saved = calloc(n, sizeof *saved);
  MPI_Comm c2 = first_ranks(n2);
  if (c2 != MPI_COMM_NULL) {
    run r;
    if (open_run(&r, c2, &saver, 77)) {
      train(&r, SAVE_AT, 1);
      save(&r, dir, SAVE_AT, 0);
      size_t m = 0;
      float *v = gather_all(&r, &m);
      memcpy(saved, v, n * sizeof *v);
      free(v);
      close_run(&r);
    }
    MPI_Comm_free(&c2);
  }
  MPI_Bcast(saved, (int)n, MPI_FLOAT, 0, MPI_COMM_WORLD);
  MPI_Comm c3 = first_ranks(n3);
  if (c3 != MPI_COMM_NULL) {
    load_resharded(c3, &loaders[0], dir, saved, n);
    MPI_Comm_free(&c3);
  }
  load_resharded(MPI_COMM_WORLD, &loaders[1], dir, saved, n);
  load_resharded(MPI_COMM_WORLD, &loaders[2], dir, saved, n);
  free(saved);
}

/* ---- (c) the folder -------------------------------------------------------- */

static int exists(const char *dir, const char *name) {
  char p[1200];
  struct stat sb;
  snprintf(p, sizeof p, "%s/%s", dir, name);
  return stat(p, &sb) == 0;
}

static void rotation(void) {
  static const cfg c = {"rotation", 1, TDM_OFFLOAD_NONE, TDM_PRECISION_NO,
                        TDM_OPTIMIZER_ADAMW, 1, 0};
  char dir[600], latest[1200];
  path_of(dir, sizeof dir, "rotation");
  run r;
  if (!open_run(&r, MPI_COMM_WORLD, &c, 1))
    return;
  tdm_checkpoint_options co = TDM_CHECKPOINT_OPTIONS_INIT;
  co.total_limit = 2;
  for (int k = 0; k < 4; k++) {
    train(&r, 1, 1);
    TH_OK(tdm_save_state(r.e, r.opt, dir, &co));
  }
  TH_CHECK(!exists(dir, "checkpoint-1") && !exists(dir, "checkpoint-2") &&
               exists(dir, "checkpoint-3") && exists(dir, "checkpoint-4"),
           "total_limit 2 did not keep exactly checkpoint-3 and -4");
  TH_OK(tdm_latest_checkpoint(dir, latest, sizeof latest));
  char want[1200];
  snprintf(want, sizeof want, "%s/checkpoint-4", dir);
  TH_CHECK(!strcmp(latest, want), "latest %s, want %s", latest, want);
  TH_FAILS(tdm_latest_checkpoint(dir, latest, 8), TDM_ERR_INVALID_ARGUMENT,
           "needs");
  close_run(&r);
}

/* Weights exported as bf16: the resume stays exact; loading the file as
 * weights needs TDM_WEIGHTS_CONVERT and gives the rounded values. */
static void bf16_export(void) {
  static const cfg c = {"bf16 export", 2, TDM_OFFLOAD_NONE, TDM_PRECISION_NO,
                        TDM_OPTIMIZER_ADAMW, 1, 0};
  char dir[600], ck[1200];
  path_of(dir, sizeof dir, "bf16-export");
  run r, d;
  size_t n = 0;
  if (!open_run(&r, MPI_COMM_WORLD, &c, 3))
    return;
  train(&r, 5, 1);
  tdm_checkpoint_options co = TDM_CHECKPOINT_OPTIONS_INIT;
  co.weights_dtype = TDM_BF16;
  co.path_out = ck;
  co.path_capacity = sizeof ck;
  TH_OK(tdm_save_state(r.e, r.opt, dir, &co));
  float *saved = gather_all(&r, &n);
  close_run(&r);
  if (!open_run(&d, MPI_COMM_WORLD, &c, 4))
    return;
  TH_OK(tdm_load_state(d.e, d.opt, dir, NULL));
  float *got = gather_all(&d, &n);
  TH_CHECK(!memcmp(got, saved, n * sizeof *got), "bf16 export: the masters "
           "did not come back exactly");
  TH_FAILS(tdm_load_weights(d.e, ck, 0), TDM_ERR_INVALID_ARGUMENT,
           "TDM_WEIGHTS_CONVERT");
  TH_OK(tdm_load_weights(d.e, ck, TDM_WEIGHTS_CONVERT));
  free(got);
  got = gather_all(&d, &n);
  uint16_t *h = calloc(n, sizeof *h);
  float *rounded = calloc(n, sizeof *rounded);
  TH_OK(tdm_convert(TDM_F32, saved, TDM_BF16, h, n));
  TH_OK(tdm_convert(TDM_BF16, h, TDM_F32, rounded, n));
  TH_CHECK(!memcmp(got, rounded, n * sizeof *got), "bf16 export: "
           "tdm_load_weights did not give the bf16-rounded values");
  free(h);
  free(rounded);
  free(got);
  free(saved);
  close_run(&d);
}

/* ---- (d) errors -------------------------------------------------------------- */

/* Rank 0 changes a file of a checkpoint; every rank waits for it. */
static void corrupt(const char *dir, const char *name, long at,
                    const void *bytes, size_t n, long truncate_to) {
  if (rank == 0) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    if (truncate_to >= 0)
      TH_CHECK(truncate(p, truncate_to) == 0, "truncate %s", p);
    FILE *f = n ? fopen(p, "r+b") : NULL;
    if (f) {
      fseek(f, at, SEEK_SET);
      fwrite(bytes, 1, n, f);
      fclose(f);
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

static void fresh_checkpoint(run *r, const char *name, char *ck, size_t cap) {
  char dir[600];
  path_of(dir, sizeof dir, name);
  tdm_checkpoint_options co = TDM_CHECKPOINT_OPTIONS_INIT;
  co.path_out = ck;
  co.path_capacity = cap;
  TH_OK(tdm_save_state(r->e, r->opt, dir, &co));
}

static void bad_files(run *r) {
  char ck[1200], dir[600];
  fresh_checkpoint(r, "no-marker", ck, sizeof ck);
  if (rank == 0)
    TH_CHECK(unlink(strcat(strcpy(dir, ck), "/done")) == 0, "unlink done");
  MPI_Barrier(MPI_COMM_WORLD);
  TH_FAILS(tdm_load_state(r->e, r->opt, ck, NULL), TDM_ERR_FORMAT,
           "no done marker");
  path_of(dir, sizeof dir, "no-marker");
  TH_FAILS(tdm_load_state(r->e, r->opt, dir, NULL), TDM_ERR_IO,
           "no complete");

  fresh_checkpoint(r, "truncated", ck, sizeof ck);
  corrupt(ck, "model.safetensors", 0, NULL, 0, 100);
  TH_FAILS(tdm_load_state(r->e, r->opt, ck, NULL), TDM_ERR_FORMAT,
           "model.safetensors");

  fresh_checkpoint(r, "bad-json", ck, sizeof ck);
  corrupt(ck, "state.json", 0, "x", 1, -1);
  TH_FAILS(tdm_load_state(r->e, r->opt, ck, NULL), TDM_ERR_FORMAT,
           "state.json");

  fresh_checkpoint(r, "bad-header", ck, sizeof ck);
  const uint8_t huge[8] = {0, 0, 0, 0, 1, 0, 0, 0}; /* 2^32 bytes */
  corrupt(ck, "model.safetensors", 0, huge, 8, -1);
  TH_FAILS(tdm_load_state(r->e, r->opt, ck, NULL), TDM_ERR_FORMAT,
           "model.safetensors");
  TH_FAILS(tdm_load_weights(r->e, ck, 0), TDM_ERR_FORMAT, "header");
}

static void mismatches(const cfg *c, const char *ck) {
  static const int other_width[NL + 1] = {7, 13, 6, 11, 3};
  static const int deeper[NL + 2] = {7, 13, 5, 11, 3, 2};
  run r;
  if (open_with(&r, MPI_COMM_WORLD, c, 1, NL, other_width)) {
    TH_FAILS(tdm_load_weights(r.e, ck, 0), TDM_ERR_INVALID_ARGUMENT,
             "shape [5, 13]");
    TH_FAILS(tdm_load_state(r.e, r.opt, ck, NULL), TDM_ERR_INVALID_ARGUMENT,
             "shape");
  }
  close_run(&r);
  if (open_with(&r, MPI_COMM_WORLD, c, 1, NL + 1, deeper))
    TH_FAILS(tdm_load_weights(r.e, ck, 0), TDM_ERR_INVALID_ARGUMENT,
             "no tensor \"layer4.weight\"");
  close_run(&r);
  cfg sgd = *c;
  sgd.kind = TDM_OPTIMIZER_SGD;
  if (open_run(&r, MPI_COMM_WORLD, &sgd, 1))
    TH_FAILS(tdm_load_state(r.e, r.opt, ck, NULL), TDM_ERR_INVALID_ARGUMENT,
             "adamw optimizer");
  close_run(&r);
}

static void errors(void) {
  static const cfg c = {"errors", 1, TDM_OFFLOAD_NONE, TDM_PRECISION_NO,
                        TDM_OPTIMIZER_ADAMW, 2, 0};
  run r;
  char ck[1200];
  if (!open_run(&r, MPI_COMM_WORLD, &c, 1))
    return;
  train(&r, 1, 2);
  fresh_checkpoint(&r, "good", ck, sizeof ck);
  TH_FAILS(tdm_save_state(r.e, r.opt, NULL, NULL), TDM_ERR_INVALID_ARGUMENT,
           "root is NULL");
  TH_FAILS(tdm_load_state(r.e, r.opt, NULL, NULL), TDM_ERR_INVALID_ARGUMENT,
           "path is NULL");
  TH_FAILS(tdm_load_weights(r.e, ck, 7), TDM_ERR_INVALID_ARGUMENT, "flags");
  TH_FAILS(tdm_save_state(NULL, NULL, root, NULL), TDM_ERR_INVALID_ARGUMENT,
           "NULL");
  /* mid-cycle: one of two micro-steps done */
  double scale, loss;
  float x[B * 7] = {0}, y[B * 3] = {0};
  TH_OK(tdm_loss_scale(r.e, &scale));
  TH_OK(tdm_backward_begin(r.e));
  TH_OK(deep_forward_backward(r.e, &r.m, x, y, B, scale, &loss));
  TH_OK(tdm_backward_end(r.e));
  TH_OK(tdm_step(r.opt, NULL));
  TH_FAILS(tdm_save_state(r.e, r.opt, root, NULL), TDM_ERR_INVALID_USAGE,
           "between accumulation cycles");
  TH_OK(tdm_loss_scale(r.e, &scale));
  TH_OK(tdm_backward_begin(r.e));
  TH_OK(deep_forward_backward(r.e, &r.m, x, y, B, scale, &loss));
  TH_OK(tdm_backward_end(r.e));
  TH_OK(tdm_step(r.opt, NULL));
  bad_files(&r);
  close_run(&r);
  mismatches(&c, ck);
}

/* ---- main ---------------------------------------------------------------- */

static void make_root(void) {
  if (rank == 0) {
    const char *tmp = getenv("TMPDIR");
    snprintf(root, sizeof root, "%s/t_ckpt.XXXXXX", tmp ? tmp : "/tmp");
    if (!mkdtemp(root))
      root[0] = '\0';
  }
  MPI_Bcast(root, sizeof root, MPI_CHAR, 0, MPI_COMM_WORLD);
}

static void remove_root(void) {
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0 && root[0] && !getenv("TDM_TEST_KEEP")) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    TH_CHECK(system(cmd) == 0, "%s", cmd);
  }
}

int main(int argc, char **argv) {
  th_init(&argc, &argv, MPI_THREAD_FUNNELED, &rank, &size);
  const char *fake = getenv("TANDEM_TEST_FAKE_GPU");
  fake_gpu = fake && !strcmp(fake, "1");
  make_root();
  TH_CHECK(root[0], "no temporary folder");
  for (size_t i = 0; root[0] && i < sizeof resume_cfgs / sizeof *resume_cfgs;
       i++)
    resume(&resume_cfgs[i]);
  if (root[0]) {
    reshard();
    rotation();
    bf16_export();
    errors();
  }
  remove_root();
  int rc = th_finish("t_ckpt");
  MPI_Finalize();
  return rc;
}
