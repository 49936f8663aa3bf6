/*
 * ckpt.c - checkpoint write and read bandwidth: tdm_save_state and
 * tdm_load_state beside what the same disk gives to plain tools and to raw
 * MPI-IO on the same bytes, in the same run and the same folder.
 *
 *   mpirun -np N ./bench/ckpt [--dir DIR] [--mib M] [--layers L]
 *          [--repeat R] [--stage S] [--optimizer sgd|adamw] [--evict]
 *          [--check]
 *
 * The model is M MiB of f32 parameters in L modules of one [rows, 1024]
 * weight each.  After one training step (so that every buffer, optimizer
 * state included, holds real values) each of R rounds times, in order:
 *   tandem save         tdm_save_state into a fresh root (collective: a
 *                       barrier before, the max over ranks after); bytes:
 *                       the sizes of the files of the folder it wrote;
 *   tandem load         tdm_load_state of that folder into the same engine;
 *   MPI-IO write_at_all every rank writes its contiguous 1/N of the same
 *                       byte count (MPI_File_write_at_all, MPI_File_sync):
 *                       the ceiling of tandem's collective writes;
 *   MPI-IO read_at_all  and reads it back (MPI_File_read_at_all);
 *   dd write (fsync)    rank 0: dd if=/dev/zero of=DIR/dd.bin bs=4M
 *                       count=BYTES iflag=count_bytes conv=fsync;
 *   dd read             dd if=DIR/dd.bin of=/dev/null bs=4M;
 *   cp                  cp DIR/dd.bin DIR/cp.bin && sync.
 * Everything writes fsynced data into the same folder.  Reads come from
 * the page cache (the files were just written) unless --evict drops each
 * file's cached pages first (posix_fadvise POSIX_FADV_DONTNEED, no root
 * needed); the table says which.  The tools are timed with clock_gettime
 * around system(); nothing is parsed from their output.
 *
 * --check: small odd-shaped models at every ZeRO stage (or --stage) with
 * SGD and AdamW (or --optimizer): save, load into a second engine (of the
 * same stage, and of another stage), and compare every parameter from
 * tdm_gather_param bitwise; then one more identical step on both engines
 * of the same stage and compare again (that checks the optimizer state
 * and counters).  Then one small round of the table, whose numbers claim
 * nothing, with the MPI-IO read-back and the tools' file sizes checked.
 * Exit 1 on any mismatch.  See bench/README.md.
 */
#define _GNU_SOURCE /* mkdtemp, posix_fadvise, nftw */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include <mpi.h>

#include "tandem.h"
#include "bench_util.h"
#include "tandem_mpi.h"

#define MAX_REPEAT 1000
#define MAX_LAYERS 4096
#define COLS 1024           /* columns of every weight of the timed model */
#define ROUND_BYTES (1u << 30) /* MPI-IO baseline: bytes per call per rank */
#define SEED 12345u

/* ---- options ------------------------------------------------------------ */

typedef struct {
  const char *dir; /* parent of the work folder */
  int mib, layers, repeat;
  int stage;       /* TDM_UNSET: TANDEM_ZERO_STAGE or the library's */
  int optimizer;   /* TDM_UNSET (--check: both), SGD or ADAMW */
  int evict, check;
} options_t;

static void usage(FILE *out) {
  fprintf(out,
      "usage: mpirun -np N ckpt [options]\n"
      "  --dir DIR          where to write: a fresh subfolder of DIR, removed\n"
      "                     at the end (default $TMPDIR, else /tmp)\n"
      "  --mib M            model size: M MiB of f32 parameters (default 256)\n"
      "  --layers L         modules of one [rows, 1024] weight each "
      "(default 8)\n"
      "  --repeat R         timed rounds; best and median are reported "
      "(default 3)\n"
      "  --stage S          ZeRO stage 0-3 (tdm_options.zero_stage; default\n"
      "                     TANDEM_ZERO_STAGE, else 0)\n"
      "  --optimizer O      sgd (no momentum: no optimizer state, the\n"
      "                     checkpoint is the model) or adamw (3x the bytes);\n"
      "                     default sgd\n"
      "  --evict            drop each file's cached pages before it is read\n"
      "                     (posix_fadvise DONTNEED): reads from the disk\n"
      "                     instead of the page cache\n"
      "  --check            correctness only: save + load at every stage\n"
      "                     (or --stage) with sgd and adamw (or --optimizer),\n"
      "                     bitwise comparison of every parameter; one tiny\n"
      "                     round of the table; exit 1 on a mismatch\n");
}

/* 0: go on; -1: help printed (exit 0); 2: bad usage. */
static int parse_options(int argc, char **argv, options_t *o) {
  const char *bad = NULL;
  memset(o, 0, sizeof *o);
  o->dir = getenv("TMPDIR");
  if (o->dir == NULL || o->dir[0] == '\0') o->dir = "/tmp";
  o->mib = 256;
  o->layers = 8;
  o->repeat = 3;
  o->stage = TDM_UNSET;
  o->optimizer = TDM_UNSET;
  int given_mib = 0, given_layers = 0, given_repeat = 0;
  for (int i = 1; i < argc && bad == NULL; i++) {
    const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    int ok = 1;
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      if (g_rank == 0) usage(stdout);
      return -1;
    }
    if (strcmp(a, "--check") == 0) { o->check = 1; continue; }
    if (strcmp(a, "--evict") == 0) { o->evict = 1; continue; }
    if (val == NULL) ok = 0;
    else if (strcmp(a, "--dir") == 0)
      o->dir = val, ok = val[0] != '\0' && strlen(val) < 2000;
    else if (strcmp(a, "--mib") == 0)
      o->mib = (int)parse_long(val, 1, 1 << 20, &ok), given_mib = 1;
    else if (strcmp(a, "--layers") == 0)
      o->layers = (int)parse_long(val, 1, MAX_LAYERS, &ok), given_layers = 1;
    else if (strcmp(a, "--repeat") == 0)
      o->repeat = (int)parse_long(val, 1, MAX_REPEAT, &ok), given_repeat = 1;
    else if (strcmp(a, "--stage") == 0)
      o->stage = (int)parse_long(val, 0, 3, &ok);
    else if (strcmp(a, "--optimizer") == 0)
      o->optimizer = strcmp(val, "sgd") == 0     ? TDM_OPTIMIZER_SGD
                     : strcmp(val, "adamw") == 0 ? TDM_OPTIMIZER_ADAMW
                                                 : (ok = 0, TDM_UNSET);
    else
      ok = 0;
    if (!ok) bad = a;
    i++;
  }
  if (bad == NULL && o->check) {
    if (!given_mib) o->mib = 1;
    if (!given_layers) o->layers = 3;
    if (!given_repeat) o->repeat = 1;
  }
  if (bad == NULL && (int64_t)o->mib * (1 << 20) / 4 / COLS < o->layers)
    bad = "--layers (more modules than 1024-column rows in --mib)";
  if (bad == NULL) return 0;
  if (g_rank == 0) {
    fprintf(stderr, "ckpt: bad option or value: %s\n", bad);
    usage(stderr);
  }
  return 2;
}

/* ---- small helpers ------------------------------------------------------- */

static void *xmalloc(size_t bytes) {
  void *p = malloc(bytes ? bytes : 1);
  if (p == NULL) die("malloc", "out of memory", __FILE__, __LINE__);
  return p;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Deterministic values: element j of tensor t, round k. */
static float value_of(int t, size_t j, unsigned k) {
  uint32_t h = (uint32_t)j * 2654435761u ^ (uint32_t)(t + 1) * 40503u ^
               (k + SEED) * 2246822519u;
  h ^= h >> 15;
  h *= 2246822519u;
  h ^= h >> 13;
  return (float)(h & 0xffffff) / 16777216.0f - 0.5f;
}

/* Rank 0 runs a shell command; failure is fatal. */
static void shell(const char *cmd) {
  int rc = system(cmd);
  if (rc != 0) {
    char detail[10100];
    snprintf(detail, sizeof detail, "\"%s\" exited with status %d", cmd, rc);
    die("system", detail, __FILE__, __LINE__);
  }
}

/* 'path' for a shell command line (single quotes escaped). */
static void quote(const char *path, char *out, size_t cap) {
  size_t k = 0;
  if (cap < 3) return;
  out[k++] = '\'';
  for (const char *c = path; *c && k + 6 < cap; c++) {
    if (*c == '\'') {
      memcpy(out + k, "'\\''", 4);
      k += 4;
    } else {
      out[k++] = *c;
    }
  }
  out[k++] = '\'';
  out[k] = '\0';
}

static uint64_t file_size(const char *path) {
  struct stat sb;
  if (stat(path, &sb) != 0)
    die("stat", path, __FILE__, __LINE__);
  return (uint64_t)sb.st_size;
}

/* Drops the file's cached pages (they are clean: everything was fsynced). */
static void evict_file(const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) die("open (evict)", path, __FILE__, __LINE__);
  int rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
  if (rc != 0) die("posix_fadvise", strerror(rc), __FILE__, __LINE__);
}

/* The regular files of dir: their total size; with evict, their cached
 * pages dropped; with list (may be NULL), "name size, ..." appended. */
static uint64_t folder_bytes(const char *dir, int evict, char *list,
                             size_t cap) {
  DIR *d = opendir(dir);
  if (d == NULL) die("opendir", dir, __FILE__, __LINE__);
  uint64_t total = 0;
  for (struct dirent *ent; (ent = readdir(d)) != NULL;) {
    char path[4096];
    struct stat sb;
    snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
    total += (uint64_t)sb.st_size;
    if (evict) evict_file(path);
    if (list != NULL) {
      size_t len = strlen(list);
      snprintf(list + len, cap - len, "%s%s %llu", len ? ", " : "",
               ent->d_name, (unsigned long long)sb.st_size);
    }
  }
  closedir(d);
  return total;
}

static int rm_entry(const char *path, const struct stat *sb, int flag,
                    struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(path);
}

static void remove_tree(const char *path) {
  if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT)
    die("remove", path, __FILE__, __LINE__);
}

static const char *fs_name(const char *dir) {
  struct statfs sf;
  if (statfs(dir, &sf) != 0) return "?";
  switch ((unsigned long)sf.f_type) {
    case 0xEF53UL: return "ext2/3/4";
    case 0x58465342UL: return "xfs";
    case 0x9123683EUL: return "btrfs";
    case 0x01021994UL: return "tmpfs (RAM)";
    case 0x794C7630UL: return "overlayfs";
    case 0x6969UL: return "nfs";
    case 0x0BD00BD0UL: return "lustre";
    case 0x47504653UL: return "gpfs";
    case 0x65735546UL: return "fuse";
    case 0x2FC12FC1UL: return "zfs";
    default: return "other";
  }
}

/* ---- the model ----------------------------------------------------------- */

typedef struct {
  int n;        /* tensors = modules */
  int64_t *rows, *cols;
  size_t *numel;
  size_t total; /* elements */
} model_t;

/* Timed: mib MiB in layers [rows, COLS] weights (the first ones one row
 * more when the rows do not split evenly).  Check (mib 0): odd shapes. */
static void model_make(model_t *m, int mib, int layers) {
  m->n = layers;
  m->rows = xmalloc(sizeof *m->rows * (size_t)layers);
  m->cols = xmalloc(sizeof *m->cols * (size_t)layers);
  m->numel = xmalloc(sizeof *m->numel * (size_t)layers);
  m->total = 0;
  int64_t all_rows = (int64_t)mib * (1 << 20) / 4 / COLS;
  for (int l = 0; l < layers; l++) {
    if (mib > 0) {
      m->rows[l] = all_rows / layers + (l < all_rows % layers);
      m->cols[l] = COLS;
    } else { /* primes: no tensor a multiple of any padding unit */
      static const int r[] = {37, 23, 41, 29, 53}, c[] = {31, 19, 43, 17, 7};
      m->rows[l] = r[l % 5];
      m->cols[l] = c[(l + 2) % 5];
    }
    m->numel[l] = (size_t)(m->rows[l] * m->cols[l]);
    m->total += m->numel[l];
  }
}

static void model_free(model_t *m) {
  free(m->rows);
  free(m->cols);
  free(m->numel);
}

typedef struct {
  tdm_engine *e;
  tdm_optimizer *opt;
  int *param, *module;
} run_t;

/* An engine over ctx with m registered; values from round k on rank 0
 * (zeros with fill 0), and its optimizer. */
static void run_open(run_t *r, tdm_context *ctx, const model_t *m, int kind,
                     int fill, unsigned k) {
  r->param = xmalloc(sizeof *r->param * (size_t)m->n);
  r->module = xmalloc(sizeof *r->module * (size_t)m->n);
  TDM_CHECK(tdm_engine_create(ctx, &r->e));
  size_t most = 0;
  for (int l = 0; l < m->n; l++)
    if (m->numel[l] > most) most = m->numel[l];
  float *init = fill && g_rank == 0 ? xmalloc(sizeof *init * most) : NULL;
  for (int l = 0; l < m->n; l++) {
    char name[64];
    int64_t shape[2] = {m->rows[l], m->cols[l]};
    snprintf(name, sizeof name, "layers.%d", l);
    TDM_CHECK(tdm_add_module(r->e, name, &r->module[l]));
    snprintf(name, sizeof name, "layers.%d.weight", l);
    if (init != NULL)
      for (size_t j = 0; j < m->numel[l]; j++) init[j] = value_of(l, j, k);
    TDM_CHECK(tdm_add_param(r->e, r->module[l], name, TDM_F32, 2, shape, init,
                            0, &r->param[l]));
  }
  free(init);
  TDM_CHECK(tdm_prepare(r->e));
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  oo.kind = kind;
  oo.lr = 1e-2;
  oo.weight_decay = kind == TDM_OPTIMIZER_ADAMW ? 0.01 : 0.0;
  TDM_CHECK(tdm_optimizer_create(r->e, &oo, &r->opt));
}

static void run_close(run_t *r) {
  TDM_CHECK(tdm_optimizer_destroy(r->opt));
  TDM_CHECK(tdm_engine_destroy(r->e));
  free(r->param);
  free(r->module);
}

/* One optimizer step with the same gradients on every rank (round k). */
static void train_step(run_t *r, const model_t *m, unsigned k) {
  double scale = 0.0;
  int stepped = 0;
  TDM_CHECK(tdm_backward_begin(r->e));
  TDM_CHECK(tdm_loss_scale(r->e, &scale));
  for (int l = m->n - 1; l >= 0; l--) {
    void *grad = NULL;
    TDM_CHECK(tdm_fetch_module(r->e, r->module[l]));
    TDM_CHECK(tdm_param_buffers(r->e, r->param[l], NULL, &grad));
    float *g = grad;
    for (size_t j = 0; j < m->numel[l]; j++)
      g[j] += (float)scale * value_of(l + 100, j, k);
    TDM_CHECK(tdm_module_grads_ready(r->e, r->module[l]));
    TDM_CHECK(tdm_release_module(r->e, r->module[l]));
  }
  TDM_CHECK(tdm_backward_end(r->e));
  TDM_CHECK(tdm_step(r->opt, &stepped));
  if (!stepped) die("tdm_step", "did not step", __FILE__, __LINE__);
}

/* ---- --check: save, load into other engines, compare --------------------- */

static const char *kind_name(int kind) {
  return kind == TDM_OPTIMIZER_ADAMW ? "adamw" : "sgd";
}

/* Elements of a and b (each engine's gathered parameters) that differ
 * bitwise, on this rank. */
static long compare_runs(run_t *a, run_t *b, const model_t *m) {
  long wrong = 0;
  size_t most = 0;
  for (int l = 0; l < m->n; l++)
    if (m->numel[l] > most) most = m->numel[l];
  float *x = xmalloc(sizeof *x * most), *y = xmalloc(sizeof *y * most);
  for (int l = 0; l < m->n; l++) {
    memset(x, 0xa5, sizeof *x * m->numel[l]);
    memset(y, 0x5a, sizeof *y * m->numel[l]);
    TDM_CHECK(tdm_gather_param(a->e, a->param[l], x));
    TDM_CHECK(tdm_gather_param(b->e, b->param[l], y));
    for (size_t j = 0; j < m->numel[l]; j++)
      wrong += memcmp(&x[j], &y[j], sizeof *x) != 0;
  }
  free(x);
  free(y);
  return wrong;
}

static long sum_over_ranks(long v) {
  long total = 0;
  MPI_CHECK(MPI_Allreduce(&v, &total, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD));
  return total;
}

/* Every stage (or o->stage) x optimizer (or o->optimizer); returns the
 * number of failed comparisons. */
static int check_roundtrips(const options_t *o, const char *work) {
  tdm_context *ctx[4] = {NULL, NULL, NULL, NULL};
  for (int s = 0; s < 4; s++) {
    tdm_options to = TDM_OPTIONS_INIT;
    to.device = TDM_DEVICE_CPU;
    to.zero_stage = s;
    to.zero3_persistence_threshold = 0; /* stage 3 really sharded */
    to.bucket_cap_bytes = 4096;          /* several buckets */
    to.first_bucket_bytes = 2048;
    TDM_CHECK(tdm_init_comm(MPI_COMM_WORLD, &to, &ctx[s]));
    g_ctx = ctx[s];
  }
  model_t m;
  model_make(&m, 0, o->layers < 5 ? 5 : o->layers);
  int failures = 0;
  say("# --check: %d tensors of odd shapes (%zu f32 elements), save, load "
      "into a fresh engine of the same stage and of stage (S + 1) %% 4,\n"
      "#   bitwise comparison of every parameter (tdm_gather_param), then "
      "one more step on both same-stage engines and again\n", m.n, m.total);
  say("#   %-8s %5s %-28s %10s %10s %10s\n", "optim", "stage", "layout",
      "loaded", "x-stage", "stepped");
  for (int ki = 0; ki < 2; ki++) {
    int kind = ki == 0 ? TDM_OPTIMIZER_SGD : TDM_OPTIMIZER_ADAMW;
    if (o->optimizer != TDM_UNSET && o->optimizer != kind) continue;
    for (int s = 0; s < 4; s++) {
      if (o->stage != TDM_UNSET && o->stage != s) continue;
      int other = (s + 1) % 4;
      char root[2300], folder[2400] = "";
      snprintf(root, sizeof root, "%s/check-%s-%d", work, kind_name(kind), s);
      run_t a, b, c;
      run_open(&a, ctx[s], &m, kind, 1, 1);
      train_step(&a, &m, 2);
      train_step(&a, &m, 3);
      tdm_checkpoint_options co = TDM_CHECKPOINT_OPTIONS_INIT;
      co.max_shard_bytes = s % 2 ? 8192 : 0; /* odd stages: sharded files */
      co.path_out = folder;
      co.path_capacity = sizeof folder;
      TDM_CHECK(tdm_save_state(a.e, a.opt, root, &co));
      char files[1024] = "";
      int nfiles = 0;
      if (g_rank == 0) {
        DIR *d = opendir(folder);
        if (d == NULL) die("opendir", folder, __FILE__, __LINE__);
        for (struct dirent *ent; (ent = readdir(d)) != NULL;)
          nfiles += ent->d_name[0] != '.';
        closedir(d);
      }
      snprintf(files, sizeof files, "%d files%s", nfiles,
               co.max_shard_bytes ? " (sharded model)" : "");
      run_open(&b, ctx[s], &m, kind, 0, 0);
      run_open(&c, ctx[other], &m, kind, 0, 0);
      TDM_CHECK(tdm_load_state(b.e, b.opt, folder, NULL));
      TDM_CHECK(tdm_load_state(c.e, c.opt, folder, NULL));
      long loaded = sum_over_ranks(compare_runs(&a, &b, &m));
      long cross = sum_over_ranks(compare_runs(&a, &c, &m));
      train_step(&a, &m, 4);
      train_step(&b, &m, 4);
      long stepped = sum_over_ranks(compare_runs(&a, &b, &m));
      say("    %-8s %5d %-28s %10ld %10ld %10ld  %s\n", kind_name(kind), s,
          files, loaded, cross, stepped,
          loaded || cross || stepped ? "MISMATCH" : "ok");
      failures += (loaded != 0) + (cross != 0) + (stepped != 0);
      run_close(&c);
      run_close(&b);
      run_close(&a);
      MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
      if (g_rank == 0) remove_tree(root);
      MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    }
  }
  say("#   columns: elements that differ, summed over ranks (loaded: same "
      "stage; x-stage: loaded at stage (S + 1) %% 4; stepped: after one "
      "more step)\n");
  model_free(&m);
  for (int s = 3; s >= 0; s--) {
    g_ctx = ctx[s];
    TDM_CHECK(tdm_finalize(ctx[s]));
  }
  g_ctx = NULL;
  return failures;
}

/* ---- the timed rounds ------------------------------------------------------ */

enum {
  T_SAVE, T_LOAD, T_MPI_W, T_MPI_R, T_DD_W, T_DD_R, T_CP, NROWS
};
static const char *const ROW_NAMES[NROWS] = {
    "tandem save", "tandem load", "MPI-IO write_at_all", "MPI-IO read_at_all",
    "dd write (fsync)", "dd read", "cp"};

/* The max over ranks of a time, on every rank. */
static double max_over_ranks(double t) {
  double mx = 0.0;
  MPI_CHECK(MPI_Allreduce(&t, &mx, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
  return mx;
}

/* Every rank writes (reads) its contiguous 1/n of bytes at its offset, in
 * rounds of at most ROUND_BYTES per call, the same number on every rank. */
static void mpiio(const char *file, char *buf, uint64_t bytes, int writing) {
  int rank = g_rank, n = 1;
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &n));
  uint64_t lo = bytes * (uint64_t)rank / (uint64_t)n;
  uint64_t hi = bytes * (uint64_t)(rank + 1) / (uint64_t)n;
  uint64_t most = bytes / (uint64_t)n + 1;
  uint64_t rounds = (most + ROUND_BYTES - 1) / ROUND_BYTES;
  MPI_File fh;
  int amode = writing ? MPI_MODE_CREATE | MPI_MODE_WRONLY : MPI_MODE_RDONLY;
  MPI_CHECK(MPI_File_open(MPI_COMM_WORLD, file, amode, MPI_INFO_NULL, &fh));
  for (uint64_t k = 0; k < rounds; k++) {
    uint64_t from = lo + k * ROUND_BYTES;
    uint64_t len = from < hi ? (hi - from < ROUND_BYTES ? hi - from
                                                        : ROUND_BYTES)
                             : 0;
    MPI_Status status;
    char *at = buf + (from < hi ? from - lo : 0);
    if (writing)
      MPI_CHECK(MPI_File_write_at_all(fh, (MPI_Offset)from, at, (int)len,
                                      MPI_BYTE, &status));
    else
      MPI_CHECK(MPI_File_read_at_all(fh, (MPI_Offset)from, at, (int)len,
                                     MPI_BYTE, &status));
    int count = 0;
    MPI_CHECK(MPI_Get_count(&status, MPI_BYTE, &count));
    if ((uint64_t)count != len)
      die(writing ? "MPI_File_write_at_all" : "MPI_File_read_at_all",
          "short transfer", __FILE__, __LINE__);
  }
  if (writing) MPI_CHECK(MPI_File_sync(fh));
  MPI_CHECK(MPI_File_close(&fh));
}

typedef struct {
  double t[NROWS][MAX_REPEAT];
  uint64_t bytes[NROWS];
  char files[2048]; /* the checkpoint's files and sizes (rank 0) */
  long wrong;       /* MPI-IO read-back and tool-size mismatches */
} timings_t;

static void timed_rounds(const options_t *o, const char *work, run_t *r,
                         timings_t *tm) {
  char mpi_file[2300], dd[2300], cp[2300], qdd[4700], qcp[4700], cmd[10000];
  snprintf(mpi_file, sizeof mpi_file, "%s/mpiio.bin", work);
  snprintf(dd, sizeof dd, "%s/dd.bin", work);
  snprintf(cp, sizeof cp, "%s/cp.bin", work);
  quote(dd, qdd, sizeof qdd);
  quote(cp, qcp, sizeof qcp);
  int n = 1;
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &n));
  char *slice = NULL;
  uint64_t bytes = 0, lo = 0, hi = 0;
  for (int k = 0; k < o->repeat; k++) {
    /* tandem: save into a fresh root, load the folder it wrote. */
    char root[2300], folder[2400] = "";
    snprintf(root, sizeof root, "%s/tandem-%d", work, k);
    tdm_checkpoint_options co = TDM_CHECKPOINT_OPTIONS_INIT;
    co.path_out = folder;
    co.path_capacity = sizeof folder;
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    double t0 = now();
    TDM_CHECK(tdm_save_state(r->e, r->opt, root, &co));
    tm->t[T_SAVE][k] = max_over_ranks(now() - t0);
    if (g_rank == 0) {
      tm->files[0] = '\0';
      bytes = folder_bytes(folder, o->evict, tm->files, sizeof tm->files);
    }
    MPI_CHECK(MPI_Bcast(&bytes, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD));
    if (k > 0 && bytes != tm->bytes[T_SAVE])
      die("tdm_save_state", "checkpoint size changed between rounds",
          __FILE__, __LINE__);
    tm->bytes[T_SAVE] = tm->bytes[T_LOAD] = bytes;
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    t0 = now();
    TDM_CHECK(tdm_load_state(r->e, r->opt, folder, NULL));
    tm->t[T_LOAD][k] = max_over_ranks(now() - t0);
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    if (g_rank == 0) remove_tree(root);

    /* Raw MPI-IO on the same byte count: contiguous 1/n slices. */
    if (slice == NULL) {
      lo = bytes * (uint64_t)g_rank / (uint64_t)n;
      hi = bytes * (uint64_t)(g_rank + 1) / (uint64_t)n;
      slice = xmalloc((size_t)(hi - lo));
    }
    for (uint64_t j = lo; j < hi; j++) slice[j - lo] = (char)(j * 131 + 7);
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    t0 = now();
    mpiio(mpi_file, slice, bytes, 1);
    tm->t[T_MPI_W][k] = max_over_ranks(now() - t0);
    memset(slice, 0, (size_t)(hi - lo));
    if (g_rank == 0 && o->evict) evict_file(mpi_file);
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    t0 = now();
    mpiio(mpi_file, slice, bytes, 0);
    tm->t[T_MPI_R][k] = max_over_ranks(now() - t0);
    long wrong = 0;
    for (uint64_t j = lo; j < hi; j++)
      wrong += slice[j - lo] != (char)(j * 131 + 7);
    tm->wrong += sum_over_ranks(wrong);
    tm->bytes[T_MPI_W] = tm->bytes[T_MPI_R] = bytes;
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    if (g_rank == 0) {
      if (file_size(mpi_file) != bytes) tm->wrong++;
      remove_tree(mpi_file);
    }

    /* The tools, on rank 0, while the other ranks wait. */
    if (g_rank == 0) {
      snprintf(cmd, sizeof cmd, "dd if=/dev/zero of=%s bs=4M count=%llu "
               "iflag=count_bytes conv=fsync status=none", qdd,
               (unsigned long long)bytes);
      t0 = now();
      shell(cmd);
      tm->t[T_DD_W][k] = now() - t0;
      if (file_size(dd) != bytes) tm->wrong++;
      if (o->evict) evict_file(dd);
      snprintf(cmd, sizeof cmd, "dd if=%s of=/dev/null bs=4M status=none",
               qdd);
      t0 = now();
      shell(cmd);
      tm->t[T_DD_R][k] = now() - t0;
      if (o->evict) evict_file(dd);
      snprintf(cmd, sizeof cmd, "cp %s %s && sync", qdd, qcp);
      t0 = now();
      shell(cmd);
      tm->t[T_CP][k] = now() - t0;
      if (file_size(cp) != bytes) tm->wrong++;
      remove_tree(cp);
      remove_tree(dd);
    }
    tm->bytes[T_DD_W] = tm->bytes[T_DD_R] = tm->bytes[T_CP] = bytes;
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
  }
  free(slice);
}

static double best_of(const double *t, int n) {
  double b = t[0];
  for (int i = 1; i < n; i++)
    if (t[i] < b) b = t[i];
  return b;
}

static void print_table(const options_t *o, const timings_t *tm) {
  double gbs_best[NROWS];
  say("#   %-22s %14s %11s %11s %12s\n", "", "bytes", "s (best)",
      "GB/s best", "GB/s median");
  for (int i = 0; i < NROWS; i++) {
    double best = best_of(tm->t[i], o->repeat);
    double med = median(tm->t[i], o->repeat);
    gbs_best[i] = (double)tm->bytes[i] / best / 1e9;
    say("    %-22s %14llu %11.4f %11.3f %12.3f\n", ROW_NAMES[i],
        (unsigned long long)tm->bytes[i], best, gbs_best[i],
        (double)tm->bytes[i] / med / 1e9);
  }
  say("tandem save / dd write = %.0f%%\n",
      100.0 * gbs_best[T_SAVE] / gbs_best[T_DD_W]);
  say("#   tandem save / MPI-IO write_at_all = %.0f%%, tandem load / MPI-IO "
      "read_at_all = %.0f%%, tandem load / dd read = %.0f%% (best GB/s)\n",
      100.0 * gbs_best[T_SAVE] / gbs_best[T_MPI_W],
      100.0 * gbs_best[T_LOAD] / gbs_best[T_MPI_R],
      100.0 * gbs_best[T_LOAD] / gbs_best[T_DD_R]);
}

/* ---- main ------------------------------------------------------------------ */

int main(int argc, char **argv) {
  options_t o;
  int provided = 0, n = 0, rc;
  bench_name = "ckpt";
  (void)parse_bytes; /* bench_util.h's; sizes here are in MiB */
  MPI_CHECK(MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided));
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &g_rank));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &n));
  setvbuf(stdout, NULL, _IOLBF, 0);
  rc = parse_options(argc, argv, &o);
  if (rc != 0) {
    MPI_CHECK(MPI_Finalize());
    return rc < 0 ? 0 : rc;
  }

  /* The work folder: fresh, under --dir, removed at the end. */
  char work[2100] = "";
  if (g_rank == 0) {
    snprintf(work, sizeof work, "%s/tandem-ckpt-bench-XXXXXX", o.dir);
    if (mkdtemp(work) == NULL) die("mkdtemp", work, __FILE__, __LINE__);
  }
  MPI_CHECK(MPI_Bcast(work, sizeof work, MPI_CHAR, 0, MPI_COMM_WORLD));

  char lib[MPI_MAX_LIBRARY_VERSION_STRING] = "";
  int len = 0, major = 0, minor = 0, patch = 0;
  MPI_CHECK(MPI_Get_library_version(lib, &len));
  char *cut = strchr(lib, '\n');
  if (cut) *cut = '\0';
  cut = strchr(lib, ',');
  if (cut) *cut = '\0';
  TDM_CHECK(tdm_get_version(&major, &minor, &patch));
  double ram = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
  say("# tandem %d.%d.%d ckpt benchmark: tdm_save_state / tdm_load_state vs "
      "raw MPI-IO, dd and cp on the same bytes in the same folder%s\n",
      major, minor, patch, o.check ? " (--check)" : "");
  say("# nranks %d  MPI: %s  host: %ld CPUs, %.1f GiB RAM; folder %s (%s)\n",
      n, lib, sysconf(_SC_NPROCESSORS_ONLN), ram / (1 << 30), work,
      fs_name(work));

  int failures = 0;
  if (o.check) failures += check_roundtrips(&o, work);

  /* The timed model. */
  tdm_options to = TDM_OPTIONS_INIT;
  to.device = TDM_DEVICE_CPU;
  to.zero_stage = o.stage;
  to.zero3_persistence_threshold = 0;
  tdm_context *ctx = NULL;
  TDM_CHECK(tdm_init_comm(MPI_COMM_WORLD, &to, &ctx));
  g_ctx = ctx;
  tdm_options res = TDM_OPTIONS_INIT;
  TDM_CHECK(tdm_get_options(ctx, &res));
  int kind = o.optimizer == TDM_UNSET ? TDM_OPTIMIZER_SGD : o.optimizer;
  model_t m;
  model_make(&m, o.mib, o.layers);
  run_t r;
  double t0 = now();
  run_open(&r, ctx, &m, kind, 1, 1);
  train_step(&r, &m, 2);
  double setup = max_over_ranks(now() - t0);
  say("# model: %d modules of one f32 [%lld, %d] weight%s, %zu elements = "
      "%.2f MiB; ZeRO stage %d; %s; one training step first (%.1f s)\n",
      m.n, (long long)m.rows[0], COLS,
      m.rows[m.n - 1] != m.rows[0] ? " (some one row less)" : "", m.total,
      (double)m.total * 4.0 / (1 << 20), res.zero_stage,
      kind == TDM_OPTIMIZER_ADAMW ? "adamw (exp_avg and exp_avg_sq saved: "
                                    "3x the model)"
                                  : "sgd without momentum (no optimizer "
                                    "state: the checkpoint is the model)",
      setup);

  static timings_t tm;
  timed_rounds(&o, work, &r, &tm);
  failures += tm.wrong != 0;
  uint64_t bytes = tm.bytes[T_SAVE];
  say("# checkpoint files: %s\n", tm.files);
  say("# %d round%s, each: tandem save, tandem load, MPI-IO write, MPI-IO "
      "read, dd write, dd read, cp; times are the max over ranks; GB = 1e9 "
      "B\n", o.repeat, o.repeat == 1 ? "" : "s");
  if (o.evict)
    say("# reads: every file's cached pages dropped first (posix_fadvise "
        "DONTNEED): from the disk (or a hypervisor's cache below it)\n");
  else
    say("# reads: from the PAGE CACHE (%.2f GiB just written, %.1f GiB RAM)"
        ", for tandem and the baselines alike: not the disk; --evict reads "
        "the disk\n", (double)bytes / (1 << 30), ram / (1 << 30));
  if (res.zero_stage == 0 && n > 1)
    say("# stage 0: each rank writes and reads an even share of each tensor; "
        "load then allgathers the shares (every rank holds the whole model)"
        "\n");
  if (o.check)
    say("# --check: a tiny round to exercise the code, not a "
        "measurement\n");
  print_table(&o, &tm);
  if (tm.wrong)
    say("# MISMATCH: %ld bytes of the MPI-IO read-back or tool file sizes "
        "wrong\n", tm.wrong);

  run_close(&r);
  model_free(&m);
  TDM_CHECK(tdm_finalize(ctx));
  g_ctx = NULL;
  MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
  if (g_rank == 0) remove_tree(work);
  say("# ckpt: %d mismatch%s: %s\n", failures, failures == 1 ? "" : "es",
      failures ? "FAIL" : "OK");
  MPI_CHECK(MPI_Finalize());
  return failures ? 1 : 0;
}
