/* t_nonfinite.c - TANDEM_NONFINITE (tdm_options.nonfinite) outside fp16:
 * one element of the second of three parameters' gradient is made NaN
 * (or inf) on the last rank; at ZeRO stages 0 and 3, every rank must
 * name that parameter, and then
 *   error: TDM_ERR_NONFINITE, no step, the weights unchanged;
 *   skip:  no step (stepped 0, one skipped step), the weights unchanged;
 *   warn:  a step (stepped 1) -- SGD then writes NaN into that parameter;
 *   off:   a step, nothing checked.
 * A clean step after error or skip steps as usual. */
#include "harness.h"
#include "tandem_mpi.h"

#define N 100

typedef struct {
  tdm_context *ctx;
  tdm_engine *e;
  tdm_optimizer *opt;
  int param[3];
} setup;

static const char *const names[3] = {"layer.a", "layer.b", "layer.c"};
static int rank, size;

static void open_run(setup *s, int mode, int stage) {
  tdm_options o = TDM_OPTIONS_INIT;
  o.nonfinite = mode;
  o.zero_stage = stage;
  o.device = TDM_DEVICE_CPU;
  TH_OK(tdm_init_comm(MPI_COMM_WORLD, &o, &s->ctx));
  TH_OK(tdm_engine_create(s->ctx, &s->e));
  for (int k = 0; k < 3; k++) {
    int m;
    int64_t shape[1] = {N};
    TH_OK(tdm_add_module(s->e, names[k], &m));
    TH_OK(tdm_add_param(s->e, m, names[k], TDM_F32, 1, shape, NULL, 0,
                        &s->param[k]));
  }
  TH_OK(tdm_prepare(s->e));
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  oo.lr = 0.1;
  TH_OK(tdm_optimizer_create(s->e, &oo, &s->opt));
}

static void close_run(setup *s) {
  TH_OK(tdm_optimizer_destroy(s->opt));
  TH_OK(tdm_engine_destroy(s->e));
  TH_OK(tdm_finalize(s->ctx));
}

/* One micro-step with gradients 1, but bad (NaN, inf or 1) at element 7
 * of parameter 1 on the last rank. */
static void backward(setup *s, float bad) {
  TH_OK(tdm_backward_begin(s->e));
  for (int k = 2; k >= 0; k--) {
    int m = k;
    TH_OK(tdm_fetch_module(s->e, m));
    void *data, *grad;
    TH_OK(tdm_param_buffers(s->e, s->param[k], &data, &grad));
    for (int i = 0; i < N; i++)
      ((float *)grad)[i] = 1.0f;
    if (k == 1 && rank == size - 1)
      ((float *)grad)[7] = bad;
    TH_OK(tdm_grad_ready(s->e, s->param[k]));
    TH_OK(tdm_release_module(s->e, m));
  }
  TH_OK(tdm_backward_end(s->e));
}

static float weight(setup *s, int k, int i) {
  float all[N];
  TH_OK(tdm_gather_param(s->e, s->param[k], all));
  return all[i];
}

static void check_mode(int mode, int stage, float bad) {
  static const char *const mode_names[] = {"off", "warn", "skip", "error"};
  setup s;
  open_run(&s, mode, stage);
  float before = weight(&s, 1, 7), other = weight(&s, 2, 0);
  backward(&s, bad);
  int stepped = -1;
  tdm_status st = tdm_step(s.opt, &stepped);
  tdm_optimizer_info info;
  memset(&info, 0, sizeof info);
  info.size = sizeof info;
  TH_OK(tdm_get_optimizer_info(s.opt, &info));
  float after = weight(&s, 1, 7);
  const char *m = mode_names[mode];
  if (mode == TDM_NONFINITE_ERROR) {
    TH_CHECK(st == TDM_ERR_NONFINITE &&
                 strstr(tdm_last_error(), "'layer.b' (parameter 1)"),
             "%s, stage %d: %s %s", m, stage, tdm_status_string(st),
             tdm_last_error());
  } else {
    TH_CHECK(st == TDM_SUCCESS, "%s, stage %d: %s", m, stage,
             tdm_last_error());
  }
  int steps = mode == TDM_NONFINITE_OFF || mode == TDM_NONFINITE_WARN;
  if (mode != TDM_NONFINITE_ERROR)
    TH_CHECK(stepped == steps, "%s, stage %d: stepped %d", m, stage,
             stepped);
  TH_CHECK(info.steps == steps, "%s, stage %d: %lld steps", m, stage,
           (long long)info.steps);
  TH_CHECK(info.skipped_steps == (mode == TDM_NONFINITE_SKIP),
           "%s, stage %d: %lld skipped", m, stage,
           (long long)info.skipped_steps);
  if (steps)
    TH_CHECK(!isfinite(after), "%s, stage %d: the bad gradient was not "
             "applied (%g)", m, stage, after);
  else
    TH_CHECK(after == before && weight(&s, 2, 0) == other,
             "%s, stage %d: weights changed without a step", m, stage);
  if (!steps) { /* a clean step afterwards is an ordinary one */
    backward(&s, 1.0f);
    TH_OK(tdm_step(s.opt, &stepped));
    TH_CHECK(stepped == 1, "%s, stage %d: the clean step after", m, stage);
    TH_CLOSE(weight(&s, 1, 7), before - 0.1f, 1e-6,
             "SGD after the bad step");
  }
  close_run(&s);
}

int main(int argc, char **argv) {
  th_init(&argc, &argv, MPI_THREAD_MULTIPLE, &rank, &size);
  for (int stage = 0; stage <= 3; stage += 3)
    for (int mode = 0; mode <= 3; mode++)
      check_mode(mode, stage, mode % 2 ? INFINITY : NAN);
  int rc = th_finish("t_nonfinite");
  MPI_Finalize();
  return rc;
}
