/*
 * optim.c - tandem's fused AdamW step against a STREAM-triad roofline
 * measured in the same process, and against torch.optim.AdamW.
 *
 *   ./bench/optim [--n N] [--iters N] [--warmup N] [--threads T]
 *                 [--isa auto|generic|avx2|avx512|all] [--triad-n N]
 *                 [--torch-script PATH] [--python CMD] [--no-torch]
 *                 [--check]
 *
 * One engine per variant (instruction set x thread count) holds one f32
 * parameter of N elements (default 16M) and a TDM_OPTIMIZER_ADAMW
 * optimizer.  Each timed iteration refills the gradient (tdm_step zeroes
 * it), evicts the caches, and times tdm_step alone.  The roofline is a
 * triad a[i] = b[i] + s * c[i] over three arrays of doubles, timed in the
 * same rounds with 1 and with T OpenMP threads.  torch.optim.AdamW
 * (foreach=True, and fused=True for information) runs in a child python3
 * (bench/optim_torch.py --serve) on the same N at the same thread counts,
 * one timed step per round, so that torch too runs in the same rounds.
 * Prints a table and the verdicts of two targets: >= 80% of the roofline
 * single-threaded, and >= 2x torch's foreach AdamW.  --check verifies the
 * step against a scalar AdamW (double precision) at every instruction set
 * the CPU has, 1 and T threads, and fails on a mismatch.
 * See bench/README.md.
 */
#define _POSIX_C_SOURCE 200809L

#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <mpi.h>

#include "tandem.h"
#include "bench_util.h"
#include "tandem_mpi.h"

#define MAX_REPS 1000
#define MAX_VARIANTS 8
#define BYTES_TANDEM 32.0 /* read p, g, m, v; write p, m, v, g (zeroed)  */
#define BYTES_TORCH 28.0  /* read p, g, m, v; write p, m, v              */
#define BYTES_TRIAD 24.0  /* STREAM: read b, c; write a (no allocate)    */
#define BYTES_TRIAD_REAL 32.0 /* with a's write-allocate read            */
#define TARGET_ROOF 80.0  /* % of the 1-thread triad, 1 thread           */
#define TARGET_TORCH 2.0  /* torch foreach time / tandem time            */
#define CHECK_N 100003    /* --check: odd, so every tail path runs       */
#define CHECK_STEPS 3
#define CHECK_TOL 1e-6
#define LR 1e-3
#define WD 1e-2
#define CHECK_LR 1e-2     /* updates as large as the parameters          */

/* ---- options ----------------------------------------------------------- */

typedef struct {
  size_t n, triad_n;
  int iters, warmup, threads;
  int isa[4], nisa, isa_all;
  const char *torch_script, *python;
  int no_torch, check, threads_given;
} options_t;

static void usage(FILE *out) {
  fprintf(out,
      "usage: optim [options]   (one rank: run it alone or mpirun -np 1)\n"
      "  --n N              parameter elements; K, M, G suffixes (binary)\n"
      "                     (default 16M = 16777216)\n"
      "  --iters N          timed steps per variant; medians are reported\n"
      "                     (default 21)\n"
      "  --warmup N         untimed rounds first (default 2)\n"
      "  --threads T        the all-cores thread count (default: the CPUs\n"
      "                     this process may use)\n"
      "  --isa LIST         auto,generic,avx2,avx512 or all: tdm_options.\n"
      "                     cpu_isa of the tandem rows (default auto)\n"
      "  --triad-n N        elements of each triad array, doubles (default\n"
      "                     max(N, 16M): 3 x 128 MiB or more)\n"
      "  --torch-script P   bench/optim_torch.py (default: $TDM_SRCDIR/bench,\n"
      "                     the source directory, or next to the binary)\n"
      "  --python CMD       interpreter for it (default $PYTHON or python3)\n"
      "  --no-torch         skip the torch rows\n"
      "  --check            correctness only: N = 100003, every ISA the CPU\n"
      "                     has, 1 and 3 (or T) threads; exit 1 on a\n"
      "                     mismatch\n");
}

static int parse_isa(const char *s, options_t *o) {
  char buf[128];
  snprintf(buf, sizeof buf, "%s", s);
  o->nisa = 0;
  o->isa_all = 0;
  for (char *tok = strtok(buf, ","); tok != NULL; tok = strtok(NULL, ",")) {
    int v;
    if (strcmp(tok, "all") == 0) {
      o->isa_all = 1;
      continue;
    }
    if (strcmp(tok, "auto") == 0) v = TDM_CPU_ISA_AUTO;
    else if (strcmp(tok, "generic") == 0) v = TDM_CPU_ISA_GENERIC;
    else if (strcmp(tok, "avx2") == 0) v = TDM_CPU_ISA_AVX2;
    else if (strcmp(tok, "avx512") == 0) v = TDM_CPU_ISA_AVX512;
    else return 0;
    if (o->nisa < 4) o->isa[o->nisa++] = v;
  }
  if (o->isa_all) {
    o->nisa = 0;
    o->isa[o->nisa++] = TDM_CPU_ISA_AUTO;
    o->isa[o->nisa++] = TDM_CPU_ISA_GENERIC;
    o->isa[o->nisa++] = TDM_CPU_ISA_AVX2;
    o->isa[o->nisa++] = TDM_CPU_ISA_AVX512;
  }
  return o->nisa > 0;
}

static int default_threads(void) {
#ifdef _OPENMP
  int n = omp_get_num_procs();
#else
  long n = sysconf(_SC_NPROCESSORS_ONLN);
#endif
  return n > 0 ? (int)n : 1;
}

/* 0: go on; -1: help printed; 2: bad usage. */
static int parse_options(int argc, char **argv, options_t *o) {
  int given_n = 0, given_triad = 0;
  memset(o, 0, sizeof *o);
  o->n = 16777216;
  o->iters = 21;
  o->warmup = 2;
  o->threads = default_threads();
  o->nisa = 1;
  o->isa[0] = TDM_CPU_ISA_AUTO;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    int ok = 1;
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return -1;
    } else if (strcmp(a, "--check") == 0) {
      o->check = 1;
      continue;
    } else if (strcmp(a, "--no-torch") == 0) {
      o->no_torch = 1;
      continue;
    }
    if (val == NULL) ok = 0;
    else if (strcmp(a, "--n") == 0)
      ok = (o->n = parse_bytes(val)) > 0, given_n = 1;
    else if (strcmp(a, "--triad-n") == 0)
      ok = (o->triad_n = parse_bytes(val)) > 0, given_triad = 1;
    else if (strcmp(a, "--iters") == 0)
      o->iters = (int)parse_long(val, 1, MAX_REPS, &ok);
    else if (strcmp(a, "--warmup") == 0)
      o->warmup = (int)parse_long(val, 0, MAX_REPS, &ok);
    else if (strcmp(a, "--threads") == 0)
      o->threads = (int)parse_long(val, 1, 4096, &ok), o->threads_given = 1;
    else if (strcmp(a, "--isa") == 0)
      ok = parse_isa(val, o);
    else if (strcmp(a, "--torch-script") == 0)
      o->torch_script = val;
    else if (strcmp(a, "--python") == 0)
      o->python = val;
    else
      ok = 0;
    if (!ok) {
      fprintf(stderr, "optim: bad option or value: %s%s%s\n", a,
              val ? " " : "", val ? val : "");
      usage(stderr);
      return 2;
    }
    i++;
  }
  if (o->check && !given_n) o->n = CHECK_N;
  if (!given_triad) o->triad_n = o->n > (16u << 20) ? o->n : 16u << 20;
  return 0;
}

/* ---- helpers ----------------------------------------------------------- */

static void *xmalloc(size_t bytes) {
  void *p = NULL;
  if (posix_memalign(&p, 64, bytes ? bytes : 1) != 0)
    die("posix_memalign", "out of memory", __FILE__, __LINE__);
  return p;
}


static double minimum(const double *v, int n) {
  double m = v[0];
  for (int i = 1; i < n; i++) m = v[i] < m ? v[i] : m;
  return m;
}

static const char *isa_name(int isa) {
  switch (isa) {
    case TDM_CPU_ISA_GENERIC: return "generic";
    case TDM_CPU_ISA_AVX2: return "avx2";
    case TDM_CPU_ISA_AVX512: return "avx512";
    default: return "auto";
  }
}

/* The widest instruction set of this CPU, as tandem's auto would pick. */
static const char *cpu_best_isa(void) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
      && __builtin_cpu_supports("avx512vl"))
    return "avx512";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c"))
    return "avx2";
#endif
  return "generic";
}

/* The L3 size from sysfs ("32768K"); 0 when unknown.  (sysconf's
 * _SC_LEVEL3_CACHE_SIZE can be wrong in VMs: 320 MiB for 32 here.) */
static long llc_bytes(void) {
  FILE *f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
  long v = 0;
  char unit = '\0';
  if (f == NULL) return 0;
  if (fscanf(f, "%ld%c", &v, &unit) < 1) v = 0;
  fclose(f);
  if (unit == 'K') v <<= 10;
  else if (unit == 'M') v <<= 20;
  return v;
}

/* Gradient i of step `seed`: in [-1, 1), cheap and vectorizable. */
static inline float grad_value(size_t i, unsigned seed) {
  uint32_t h = (uint32_t)i * 2654435761u + seed * 0x9e3779b9u;
  h ^= h >> 15;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  return (float)(int32_t)(h & 0xffffffu) * (1.0f / 8388608.0f) - 1.0f;
}

static void fill_grads(float *g, size_t n, unsigned seed, int threads) {
  (void)threads;
#ifdef _OPENMP
#pragma omp parallel for simd num_threads(threads) schedule(static)
#endif
  for (size_t i = 0; i < n; i++) g[i] = grad_value(i, seed);
}

/* Reads a clean buffer much larger than the last-level cache, so that the
 * next timed pass starts cold and no dirty line of earlier writes is left
 * to be written back inside it. */
static volatile double g_sink;

static void flush_caches(const double *buf, size_t n, int threads) {
  double s = 0.0;
  (void)threads;
#ifdef _OPENMP
#pragma omp parallel for simd num_threads(threads) schedule(static) \
    reduction(+ : s)
#endif
  for (size_t i = 0; i < n; i++) s += buf[i];
  g_sink = s;
}

/* ---- STREAM triad ------------------------------------------------------ */

typedef struct {
  double *a, *b, *c;
  size_t n;
} triad_t;

static void triad_init(triad_t *t, size_t n, int threads) {
  t->n = n;
  t->a = xmalloc(n * sizeof(double));
  t->b = xmalloc(n * sizeof(double));
  t->c = xmalloc(n * sizeof(double));
  (void)threads;
  /* First touch by the threads that will use the pages. */
#ifdef _OPENMP
#pragma omp parallel for simd num_threads(threads) schedule(static)
#endif
  for (size_t i = 0; i < n; i++) {
    t->a[i] = 0.0;
    t->b[i] = 1.0;
    t->c[i] = 2.0;
  }
}

/* Seconds for one a = b + s * c with `threads` threads.  The loops here
 * say `simd`: automake puts the user's CFLAGS (-g -O2 by default) after
 * this program's -O3, and GCC's -O2 cost model leaves loops that need a
 * scalar epilogue unvectorized. */
static double triad_run(triad_t *t, int threads) {
  double *restrict a = t->a;
  const double *restrict b = t->b, *restrict c = t->c;
  const double s = 3.0;
  size_t n = t->n;
  (void)threads;
  double t0 = MPI_Wtime();
#ifdef _OPENMP
#pragma omp parallel for simd num_threads(threads) schedule(static)
#endif
  for (size_t i = 0; i < n; i++) a[i] = b[i] + s * c[i];
  return MPI_Wtime() - t0;
}

/* ---- tandem AdamW variants --------------------------------------------- */

typedef struct {
  int isa, threads;
  tdm_context *ctx;
  tdm_engine *engine;
  tdm_optimizer *opt;
  int module, param;
  float *p, *g;
  size_t n;
  unsigned seed;
  double t[MAX_REPS];
  int nt;
} variant_t;

/* A context and engine with one f32 parameter of n elements (values:
 * initial, or 0.05 * grad_value when NULL) and an AdamW optimizer.
 * Returns the status of tdm_init_comm (TDM_ERR_NOT_SUPPORTED for an
 * instruction set the CPU lacks); dies on any other failure. */
static tdm_status variant_create(variant_t *v, int isa, int threads,
                                 size_t n, const float *initial, double lr) {
  tdm_options o = TDM_OPTIONS_INIT;
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  int64_t shape[1] = {(int64_t)n};
  memset(v, 0, sizeof *v);
  v->isa = isa;
  v->threads = threads;
  v->n = n;
  o.cpu_threads = threads;
  o.cpu_isa = isa;
  o.device = TDM_DEVICE_CPU;
  o.progress = TDM_PROGRESS_POLL; /* no communication thread */
  o.gradient_accumulation_steps = 1;
  o.mixed_precision = TDM_PRECISION_NO;
  o.reduce_dtype = TDM_F32;
  tdm_status st = tdm_init_comm(MPI_COMM_WORLD, &o, &v->ctx);
  if (st != TDM_SUCCESS) return st;
  /* The ISA is checked against the CPU when the engine sets up its
   * kernels. */
  st = tdm_engine_create(v->ctx, &v->engine);
  if (st == TDM_ERR_NOT_SUPPORTED) {
    tdm_finalize(v->ctx);
    return st;
  }
  TDM_CHECK(st);
  if (g_ctx == NULL) g_ctx = v->ctx;
  TDM_CHECK(tdm_add_module(v->engine, "layer", &v->module));
  TDM_CHECK(tdm_add_param(v->engine, v->module, "layer.weight", TDM_F32, 1,
                          shape, initial, 0, &v->param));
  TDM_CHECK(tdm_prepare(v->engine));
  TDM_CHECK(tdm_param_buffers(v->engine, v->param, (void **)&v->p,
                              (void **)&v->g));
  if (initial == NULL)
    for (size_t i = 0; i < n; i++) v->p[i] = 0.05f * grad_value(i, 7u);
  oo.kind = TDM_OPTIMIZER_ADAMW;
  oo.lr = lr;
  oo.weight_decay = WD;
  TDM_CHECK(tdm_optimizer_create(v->engine, &oo, &v->opt));
  return TDM_SUCCESS;
}

static void variant_destroy(variant_t *v) {
  if (v->ctx == NULL) return;
  TDM_CHECK(tdm_optimizer_destroy(v->opt));
  TDM_CHECK(tdm_engine_destroy(v->engine));
  if (g_ctx == v->ctx) g_ctx = NULL;
  TDM_CHECK(tdm_finalize(v->ctx));
  v->ctx = NULL;
}

/* One micro-step: gradients refilled with this step's values, then marked
 * ready; the backward is over when this returns. */
static void variant_backward(variant_t *v, int fill_threads) {
  TDM_CHECK(tdm_backward_begin(v->engine));
  fill_grads(v->g, v->n, ++v->seed, fill_threads);
  TDM_CHECK(tdm_grad_ready(v->engine, v->param));
  TDM_CHECK(tdm_backward_end(v->engine));
}

/* Seconds of tdm_step alone. */
static double variant_step(variant_t *v) {
  int stepped = 0;
  double t0 = MPI_Wtime();
  TDM_CHECK(tdm_step(v->opt, &stepped));
  double t = MPI_Wtime() - t0;
  if (!stepped) die("tdm_step", "did not step", __FILE__, __LINE__);
  return t;
}

/* ---- --check ----------------------------------------------------------- */

/* torch.optim.AdamW, in double, over n elements; t counts from 1. */
static void ref_adamw(double *p, double *m, double *v, const float *g,
                      size_t n, int t, double lr) {
  const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
  double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
  double step_size = lr / bc1, bc2_sqrt = sqrt(bc2);
  for (size_t i = 0; i < n; i++) {
    double gi = g[i];
    p[i] *= 1.0 - lr * WD;
    m[i] = b1 * m[i] + (1.0 - b1) * gi;
    v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
    p[i] -= step_size * m[i] / (sqrt(v[i]) / bc2_sqrt + eps);
  }
}

/* 0 when every step of every variant matched the reference. */
static int run_check(const options_t *o) {
  size_t n = o->n;
  float *p0 = xmalloc(n * sizeof *p0), *gstep = xmalloc(n * sizeof *gstep);
  double *rp = xmalloc(n * sizeof *rp), *rm = xmalloc(n * sizeof *rm),
         *rv = xmalloc(n * sizeof *rv);
  const int isas[] = {TDM_CPU_ISA_AUTO, TDM_CPU_ISA_GENERIC, TDM_CPU_ISA_AVX2,
                      TDM_CPU_ISA_AVX512};
  /* 3 threads unless --threads says otherwise: the library gives at most
   * n / 32768 threads a range, and the three uneven ranges of 100003
   * elements test the split wherever the process may run. */
  int threads[2] = {1, o->threads_given ? o->threads : 3};
  int nthreads = threads[1] > 1 ? 2 : 1;
  int failures = 0, runs = 0;
  for (size_t i = 0; i < n; i++) p0[i] = 0.01f * grad_value(i, 99u);
  printf("# optim --check: AdamW (lr %g, weight_decay %g, betas 0.9/0.999, "
         "eps 1e-8), %zu f32 elements, %d steps, against a double-precision "
         "scalar AdamW; |p - ref| <= %g * max(|ref|, lr)\n",
         CHECK_LR, WD, n, CHECK_STEPS, CHECK_TOL);
  for (size_t k = 0; k < sizeof isas / sizeof *isas; k++) {
    for (int ti = 0; ti < nthreads; ti++) {
      variant_t v;
      tdm_status st =
          variant_create(&v, isas[k], threads[ti], n, p0, CHECK_LR);
      if (st == TDM_ERR_NOT_SUPPORTED && isas[k] != TDM_CPU_ISA_AUTO) {
        printf("  %-8s %2d thread(s): skipped (not supported on this CPU)\n",
               isa_name(isas[k]), threads[ti]);
        continue;
      }
      if (st != TDM_SUCCESS) die_tdm("tdm_init_comm", st, __FILE__, __LINE__);
      for (size_t i = 0; i < n; i++) {
        rp[i] = p0[i];
        rm[i] = rv[i] = 0.0;
      }
      double worst = 0.0;
      size_t bad = 0, nonzero_grads = 0, first_bad = 0;
      for (int s = 1; s <= CHECK_STEPS; s++) {
        variant_backward(&v, threads[ti]);
        memcpy(gstep, v.g, n * sizeof *gstep);
        variant_step(&v);
        ref_adamw(rp, rm, rv, gstep, n, s, CHECK_LR);
        for (size_t i = 0; i < n; i++) {
          double ref = rp[i], scale = fabs(ref) > CHECK_LR ? fabs(ref)
                                                           : CHECK_LR;
          double err = fabs((double)v.p[i] - ref) / scale;
          if (!(err <= CHECK_TOL)) {
            if (bad++ == 0) first_bad = i;
          }
          if (err > worst || err != err) worst = err;
          if (v.g[i] != 0.0f) nonzero_grads++;
        }
        if (bad > 0 && s == CHECK_STEPS)
          printf("    first mismatch: element %zu: %.9g, reference %.9g\n",
                 first_bad, (double)v.p[first_bad], rp[first_bad]);
      }
      int ok = bad == 0 && nonzero_grads == 0;
      printf("  %-8s %2d thread(s): max rel error %.3g, %zu mismatches, "
             "%zu gradients not zeroed: %s\n",
             isa_name(isas[k]), threads[ti], worst, bad, nonzero_grads,
             ok ? "ok" : "MISMATCH");
      failures += !ok;
      runs++;
      variant_destroy(&v);
    }
  }
  printf("# optim --check: %d of %d runs wrong: %s\n", failures, runs,
         failures ? "FAILED" : "OK");
  free(p0); free(gstep); free(rp); free(rm); free(rv);
  return failures ? 1 : 0;
}

/* ---- torch ------------------------------------------------------------- */

enum { IMPL_FOREACH = 0, IMPL_FUSED = 1, NIMPL = 2 };
static const char *const impl_name[NIMPL] = {"foreach", "fused"};

/* The child python3 running optim_torch.py --serve: one timed step per
 * request, so that torch runs in the same rounds as tandem and the triad. */
typedef struct {
  pid_t pid;
  FILE *to, *from;
  int alive;
  int ok[NIMPL];                 /* 0 once the impl answered an error */
  double t[NIMPL][2][MAX_REPS];  /* seconds of each timed step */
  int nt[NIMPL][2];
  char note[256], version[64];
} torch_t;

static int readable(const char *path) { return access(path, R_OK) == 0; }

/* dir of path (without the slash) into out; "." when it has none. */
static void dir_of(const char *path, char *out, size_t cap) {
  const char *slash = strrchr(path, '/');
  if (slash == NULL) snprintf(out, cap, ".");
  else snprintf(out, cap, "%.*s", (int)(slash - path), path);
}

/* out = a + b + c, when it fits in cap; then 1 if the file is readable. */
static int try_path(char *out, size_t cap, const char *a, const char *b,
                    const char *c) {
  size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
  if (la + lb + lc + 1 > cap) return 0;
  memcpy(out, a, la);
  memcpy(out + la, b, lb);
  memcpy(out + la + lb, c, lc + 1);
  return readable(out);
}

static int find_script(const char *given, const char *argv0, char *out,
                       size_t cap) {
  char dir[PATH_MAX], exe[PATH_MAX];
  const char *src = getenv("TDM_SRCDIR");
  if (given != NULL) return try_path(out, cap, given, "", "");
  if (src != NULL && *src) {
    if (try_path(out, cap, src, "/bench", "/optim_torch.py")) return 1;
  }
  /* Compiled out of tree, __FILE__ is this source's path. */
  dir_of(__FILE__, dir, sizeof dir);
  if (try_path(out, cap, dir, "", "/optim_torch.py")) return 1;
  const char *bases[2] = {argv0, NULL};
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len > 0) {
    exe[len] = '\0';
    bases[1] = exe;
  }
  for (int b = 0; b < 2; b++) {
    static const char *rel[] = {"", "/..", "/../../bench", "/../bench",
                                "/../../../bench"};
    if (bases[b] == NULL) continue;
    dir_of(bases[b], dir, sizeof dir);
    for (size_t r = 0; r < sizeof rel / sizeof *rel; r++) {
      if (try_path(out, cap, dir, rel[r], "/optim_torch.py")) return 1;
    }
  }
  return 0;
}

/* Starts the child; on any failure t->alive stays 0 and t->note says
 * why the torch rows are missing. */
static void torch_start(const options_t *o, const char *argv0, torch_t *t) {
  char script[PATH_MAX], cmd[2 * PATH_MAX + 64], line[512];
  const char *py = o->python ? o->python : getenv("PYTHON");
  int to_child[2], from_child[2];
  t->ok[IMPL_FOREACH] = t->ok[IMPL_FUSED] = 1;
  if (py == NULL || *py == '\0') py = "python3";
  if (!find_script(o->torch_script, argv0, script, sizeof script)) {
    snprintf(t->note, sizeof t->note,
             "torch: optim_torch.py not found (skipped; --torch-script or "
             "TDM_SRCDIR)");
    return;
  }
  if (strchr(script, '\'') || strchr(py, '\'')) {
    snprintf(t->note, sizeof t->note, "torch: quote in a path (skipped)");
    return;
  }
  snprintf(cmd, sizeof cmd, "exec '%s' '%s' --serve --n %zu", py, script,
           o->n);
  signal(SIGPIPE, SIG_IGN); /* a dead child must not kill the benchmark */
  fflush(stdout);
  if (pipe(to_child) != 0 || pipe(from_child) != 0) {
    snprintf(t->note, sizeof t->note, "torch: pipe failed (skipped)");
    return;
  }
  t->pid = fork();
  if (t->pid == 0) {
    dup2(to_child[0], 0);
    dup2(from_child[1], 1);
    close(to_child[0]); close(to_child[1]);
    close(from_child[0]); close(from_child[1]);
    execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    _exit(127);
  }
  close(to_child[0]);
  close(from_child[1]);
  if (t->pid < 0) {
    close(to_child[1]);
    close(from_child[0]);
    snprintf(t->note, sizeof t->note, "torch: fork failed (skipped)");
    return;
  }
  t->to = fdopen(to_child[1], "w");
  t->from = fdopen(from_child[0], "r");
  if (t->to == NULL || t->from == NULL)
    die("fdopen", "out of memory", __FILE__, __LINE__);
  while (fgets(line, sizeof line, t->from) != NULL) {
    if (strncmp(line, "torch_adamw missing", 19) == 0) {
      snprintf(t->note, sizeof t->note, "torch: not installed (skipped)");
      return;
    }
    if (sscanf(line, "torch_adamw version=%63s", t->version) == 1) {
      t->alive = 1;
      return;
    }
  }
  snprintf(t->note, sizeof t->note,
           "torch: %.60s %.150s failed to start (skipped)", py, script);
}

/* One step of impl at threads; its time goes to slot ti when timed. */
static void torch_step(torch_t *t, int impl, int ti, int threads,
                       int timed) {
  char line[256], err[64];
  double ms = 0.0;
  if (!t->alive || !t->ok[impl]) return;
  fprintf(t->to, "step %s %d\n", impl_name[impl], threads);
  fflush(t->to);
  if (fgets(line, sizeof line, t->from) == NULL) {
    t->alive = 0;
    snprintf(t->note, sizeof t->note, "torch: the python3 child died");
  } else if (sscanf(line, "ms %lf", &ms) == 1) {
    if (timed && t->nt[impl][ti] < MAX_REPS)
      t->t[impl][ti][t->nt[impl][ti]++] = ms * 1e-3;
  } else {
    t->ok[impl] = 0;
    if (sscanf(line, "error %63s", err) != 1) snprintf(err, sizeof err, "?");
    printf("# torch AdamW %s: %s (row skipped)\n", impl_name[impl], err);
  }
}

static void torch_stop(torch_t *t) {
  if (t->to == NULL) {
    if (t->pid > 0) waitpid(t->pid, NULL, 0);
    return;
  }
  fprintf(t->to, "quit\n");
  fclose(t->to);
  fclose(t->from);
  waitpid(t->pid, NULL, 0);
  t->to = t->from = NULL;
}

/* Whether impl has a full row at slot ti. */
static int torch_has(const torch_t *t, int impl, int ti, int iters) {
  return t->ok[impl] && t->nt[impl][ti] == iters;
}

/* ---- the benchmark ----------------------------------------------------- */

static void print_row(const char *name, int threads, const char *isa,
                      double med_s, double min_s, double n, double bytes,
                      double roof_gbs, double torch_ms) {
  char mps[32] = "-", pct[32] = "-", xt[32] = "-";
  double gbs = n * bytes / med_s / 1e9;
  if (bytes != BYTES_TRIAD) snprintf(mps, sizeof mps, "%.1f", n / med_s / 1e6);
  if (roof_gbs > 0.0) snprintf(pct, sizeof pct, "%.1f", 100.0 * gbs / roof_gbs);
  if (torch_ms > 0.0) snprintf(xt, sizeof xt, "%.2f", torch_ms / (med_s * 1e3));
  printf("  %-27s %7d  %-8s %9.3f %9.3f %10s %8.2f %7s %8s\n", name, threads,
         isa, med_s * 1e3, min_s * 1e3, mps, gbs, pct, xt);
}

/* The auto variant at this thread count, else the first one; -1: none. */
static int pick_variant(const variant_t *v, int nv, int threads) {
  int first = -1;
  for (int k = 0; k < nv; k++) {
    if (v[k].threads != threads) continue;
    if (v[k].isa == TDM_CPU_ISA_AUTO) return k;
    if (first < 0) first = k;
  }
  return first;
}

static double med_ms(const double *t, int n) { return median(t, n) * 1e3; }

static int run_bench(const options_t *o, const char *argv0) {
  variant_t *v = calloc(MAX_VARIANTS, sizeof *v);
  torch_t *torch = calloc(1, sizeof *torch);
  int nv = 0, tcount[2] = {1, o->threads}, ntc = o->threads > 1 ? 2 : 1;
  double *triad_s[2];
  triad_t tr;
  if (v == NULL || torch == NULL)
    die("calloc", "out of memory", __FILE__, __LINE__);
  for (int k = 0; k < o->nisa; k++) {
    for (int ti = 0; ti < ntc; ti++) {
      tdm_status st = variant_create(&v[nv], o->isa[k], tcount[ti], o->n,
                                     NULL, LR);
      if (st == TDM_ERR_NOT_SUPPORTED && o->isa[k] != TDM_CPU_ISA_AUTO) {
        printf("# isa %s: not supported on this CPU (skipped)\n",
               isa_name(o->isa[k]));
        break;
      }
      if (st != TDM_SUCCESS) die_tdm("tdm_init_comm", st, __FILE__, __LINE__);
      nv++;
    }
  }
  triad_init(&tr, o->triad_n, o->threads);
  for (int ti = 0; ti < ntc; ti++)
    if ((triad_s[ti] = calloc(MAX_REPS, sizeof(double))) == NULL)
      die("calloc", "out of memory", __FILE__, __LINE__);

  printf("# optim: AdamW (lr %g, weight_decay %g, betas 0.9/0.999, eps 1e-8) "
         "on one f32 parameter of %zu elements (%.1f MiB per array); "
         "1 rank\n", LR, WD, o->n, (double)o->n * 4 / (1 << 20));
  printf("#   cpu: %d CPUs usable, widest ISA %s (auto picks it); all-cores "
         "rows use %d threads\n", default_threads(), cpu_best_isa(),
         o->threads);
  long llc = llc_bytes();
  if (llc > 0 && (double)o->n * 16.0 < 4.0 * (double)llc)
    printf("#   warning: AdamW's %.0f MiB working set is under 4x the %ld "
           "MiB L3 cache: the rows measure caches, not DRAM\n",
           (double)o->n * 16 / (1 << 20), llc >> 20);
  if (o->threads == 1)
    printf("#   only 1 thread: under mpirun, add --bind-to none (Open MPI "
           "binds a rank to one core), or run without mpirun\n");
  printf("#   bytes: tandem's fused step reads p, g, m, v and writes p, m, v "
         "and g (zeroed): %.0f B/param; torch counted at the %.0f B/param "
         "it must move at least (it does not zero g); triad %.0f B/elem "
         "(STREAM: no write-allocate counted)\n",
         BYTES_TANDEM, BYTES_TORCH, BYTES_TRIAD);
  printf("#   roofline: triad a = b + 3c over 3 x %zu doubles (%.0f MiB); "
         "timed: tdm_step alone, after the gradient refill and a %.0f MiB "
         "read that evicts the caches (the triad and torch's steps too); "
         "medians of %d rounds after %d warmup rounds, each round running "
         "triad, tandem and torch in turn at each thread count\n",
         o->triad_n, 3.0 * (double)o->triad_n * 8 / (1 << 20),
         (double)o->triad_n * 8 / (1 << 20), o->iters, o->warmup);

  if (o->no_torch)
    snprintf(torch->note, sizeof torch->note, "torch: --no-torch (skipped)");
  else
    torch_start(o, argv0, torch);

  /* Rounds: at each thread count the triad, tandem's variants and torch's
   * steps in turn, so that the machine's drift hits all alike. */
  for (int r = 0; r < o->warmup + o->iters; r++) {
    int timed = r >= o->warmup;
    for (int ti = 0; ti < ntc; ti++) {
      flush_caches(tr.c, tr.n, tcount[ti]);
      double t = triad_run(&tr, tcount[ti]);
      if (timed) triad_s[ti][r - o->warmup] = t;
      for (int k = 0; k < nv; k++) {
        if (v[k].threads != tcount[ti]) continue;
        variant_backward(&v[k], tcount[ti]);
        flush_caches(tr.c, tr.n, tcount[ti]);
        t = variant_step(&v[k]);
        if (timed) v[k].t[v[k].nt++] = t;
      }
      for (int impl = 0; impl < NIMPL; impl++)
        torch_step(torch, impl, ti, tcount[ti], timed);
    }
  }
  torch_stop(torch);
  for (int k = 0; k < nv; k++) variant_destroy(&v[k]);

  double roof[2] = {0.0, 0.0}, n = (double)o->n, torch_ms[2] = {0.0, 0.0};
  for (int ti = 0; ti < ntc; ti++) {
    roof[ti] = (double)tr.n * BYTES_TRIAD / median(triad_s[ti], o->iters)
               / 1e9;
    if (torch_has(torch, IMPL_FOREACH, ti, o->iters))
      torch_ms[ti] = med_ms(torch->t[IMPL_FOREACH][ti], o->iters);
  }
  printf("\n  %-27s %7s  %-8s %9s %9s %10s %8s %7s %8s\n", "variant",
         "threads", "isa", "ms/step", "min ms", "Mparam/s", "GB/s",
         "%triad", "x torch");
  for (int k = 0; k < nv; k++) {
    int ti = v[k].threads == 1 ? 0 : 1;
    print_row("tandem AdamW", v[k].threads, isa_name(v[k].isa),
              median(v[k].t, v[k].nt), minimum(v[k].t, v[k].nt), n,
              BYTES_TANDEM, roof[ti], torch_ms[ti]);
  }
  for (int ti = 0; ti < ntc; ti++)
    print_row("STREAM triad", tcount[ti], "-", median(triad_s[ti], o->iters),
              minimum(triad_s[ti], o->iters), (double)tr.n, BYTES_TRIAD,
              roof[ti], 0.0);
  for (int impl = 0; impl < NIMPL; impl++)
    for (int ti = 0; ti < ntc; ti++)
      if (torch_has(torch, impl, ti, o->iters))
        print_row(impl == IMPL_FOREACH ? "torch AdamW foreach"
                                       : "torch AdamW fused (info)",
                  tcount[ti], "-", median(torch->t[impl][ti], o->iters),
                  minimum(torch->t[impl][ti], o->iters), n, BYTES_TORCH,
                  roof[ti], 0.0);
  if (torch->note[0])
    printf("# %s\n", torch->note);
  else
    printf("# torch %s, in a child python3 (bench/optim_torch.py --serve); "
           "x torch = torch foreach ms / tandem ms at the same threads\n",
           torch->version);

  /* Verdicts on the auto variants (else the first ones). */
  int v1 = pick_variant(v, nv, 1), va = pick_variant(v, nv, o->threads);
  printf("\n");
  if (v1 >= 0) {
    double gbs = n * BYTES_TANDEM / median(v[v1].t, v[v1].nt) / 1e9;
    double pct = 100.0 * gbs / roof[0];
    double best = 100.0 * (n * BYTES_TANDEM / minimum(v[v1].t, v[v1].nt)) /
                  ((double)tr.n * BYTES_TRIAD / minimum(triad_s[0], o->iters));
    printf("# target: tandem AdamW (%s), 1 thread, >= %.0f%% of the 1-thread "
           "triad roofline: %s (%.1f%%: %.2f of %.2f GB/s, medians; best "
           "step vs best triad %.1f%%)\n",
           isa_name(v[v1].isa), TARGET_ROOF,
           pct >= TARGET_ROOF ? "MET" : "NOT MET", pct, gbs, roof[0], best);
    printf("#   (a triad element really moves %.0f B: a is read for "
           "ownership before it is written; against that real traffic, "
           "%.1f%%. AdamW writes only lines it has read: no such extra)\n",
           BYTES_TRIAD_REAL, pct * BYTES_TRIAD / BYTES_TRIAD_REAL);
  }
  if (torch_ms[0] <= 0.0 && torch_ms[ntc - 1] <= 0.0) {
    printf("# target: tandem AdamW >= %.0fx torch.optim.AdamW(foreach=True): "
           "n/a (%s)\n", TARGET_TORCH,
           torch->note[0] ? torch->note : "no torch foreach rows");
  } else {
    char detail[256] = "";
    int met = 1, idx[2] = {v1, va};
    size_t len = 0;
    for (int ti = 0; ti < ntc; ti++) {
      if (idx[ti] < 0 || torch_ms[ti] <= 0.0) continue;
      double ms = med_ms(v[idx[ti]].t, v[idx[ti]].nt), x = torch_ms[ti] / ms;
      met = met && x >= TARGET_TORCH;
      len += (size_t)snprintf(detail + len, sizeof detail - len,
                              "%s%d thread%s %.2fx (%.2f vs %.2f ms)",
                              len ? ", " : "", tcount[ti],
                              tcount[ti] == 1 ? "" : "s", x, ms,
                              torch_ms[ti]);
    }
    printf("# target: tandem AdamW >= %.0fx torch.optim.AdamW(foreach=True): "
           "%s (%s)\n", TARGET_TORCH, met ? "MET" : "NOT MET", detail);
  }
  for (int ti = 0; ti < ntc; ti++) free(triad_s[ti]);
  free(tr.a); free(tr.b); free(tr.c);
  free(torch);
  free(v);
  return 0;
}

int main(int argc, char **argv) {
  options_t o;
  int provided = 0, size = 0, rc;
  bench_name = "optim";
  rc = parse_options(argc, argv, &o);
  if (rc != 0) return rc < 0 ? 0 : rc;
  MPI_CHECK(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &g_rank));
  if (size != 1) {
    if (g_rank == 0)
      fprintf(stderr, "optim: run it on one rank (mpirun -np 1), not %d\n",
              size);
    MPI_Finalize();
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  rc = o.check ? run_check(&o) : run_bench(&o, argv[0]);
  MPI_CHECK(MPI_Finalize());
  return rc;
}
