/* t_data.c - the distributed sampler and the prefetching loader.
 *  1. Every rank's batches, at this world size, against the independent
 *     Python model of the rules (tests/gen_sampler_ref.py, committed in
 *     tests/data/sampler_ref.txt): two epochs, and skip_first_batches.
 *  2. Properties checked across ranks: without drop_last every row is
 *     real exactly once per epoch, the padding is what wraps around.
 *  3. The loader hands out what tdm_sampler_next + tdm_dataset_read give,
 *     with and without its thread, across epochs and after moving the
 *     sampler; a read error stops it with the error; destroy never hangs.
 *  4. tdm_save_state / tdm_load_state carry the sampler's position.
 *  5. Bad input. */
#include <fcntl.h>
#include <unistd.h>

#include "harness.h"
#include "tandem_mpi.h"

static int rank, size;
static tdm_context *ctx;

typedef struct {
  size_t rows, batch;
  int shuffle;
  uint64_t seed;
  int drop_last, even, split;
} cfg;

static tdm_sampler *make(const cfg *c) {
  tdm_sampler_options o = TDM_SAMPLER_OPTIONS_INIT;
  o.batch_size = c->batch;
  o.shuffle = c->shuffle;
  o.seed = c->seed;
  o.drop_last = c->drop_last;
  o.even_batches = c->even;
  o.split_batches = c->split;
  tdm_sampler *s = NULL;
  TH_OK(tdm_sampler_create(ctx, c->rows, &o, &s));
  return s;
}

/* One "B" line of the reference for this world size and rank. */
static void check_line(tdm_sampler *s, char *line, int id) {
  int lid, world, r;
  unsigned long long epoch, batch;
  size_t valid, want[64], n = 0;
  char *p = line + 2;
  int used;
  if (sscanf(p, "%d %d %llu %llu %d %zu%n", &lid, &world, &epoch, &batch, &r,
             &valid, &used) != 6 || lid != id || world != size || r != rank)
    return;
  p += used;
  while (n < 64 && sscanf(p, " %zu%n", &want[n], &used) == 1)
    n++, p += used;
  size_t rows[64], count = 99, got_valid = 99;
  uint64_t e, b;
  TH_OK(tdm_sampler_set_epoch(s, epoch));
  TH_OK(tdm_sampler_skip_first_batches(s, batch));
  TH_OK(tdm_sampler_next(s, rows, &count, &got_valid, &e, &b));
  TH_CHECK(e == epoch && b == batch, "position %llu/%llu", (unsigned long long)e,
           (unsigned long long)b);
  TH_CHECK(count == n && got_valid == valid, "config %d epoch %llu batch %llu:"
           " count %zu valid %zu, want %zu %zu", id, epoch, batch, count,
           got_valid, n, valid);
  for (size_t i = 0; i < n && i < count; i++)
    TH_CHECK(rows[i] == want[i], "config %d epoch %llu batch %llu row %zu: "
             "%zu, want %zu", id, epoch, batch, i, rows[i], want[i]);
}

/* Walking the epochs with next alone gives the same as seeking each. */
static void check_walk(const cfg *c, size_t batches) {
  tdm_sampler *a = make(c), *b = make(c);
  size_t ra[64], rb[64], ca, cb, va, vb;
  uint64_t e, k;
  for (size_t i = 0; a && b && i < 2 * batches; i++) {
    TH_OK(tdm_sampler_next(a, ra, &ca, &va, &e, &k));
    TH_CHECK(e == i / batches && k == i % batches, "walk position");
    TH_OK(tdm_sampler_set_epoch(b, i / batches));
    TH_OK(tdm_sampler_skip_first_batches(b, i % batches));
    TH_OK(tdm_sampler_next(b, rb, &cb, &vb, NULL, NULL));
    TH_CHECK(ca == cb && va == vb && !memcmp(ra, rb, ca * sizeof *ra),
             "walk batch %zu", i);
  }
  tdm_sampler_destroy(a);
  tdm_sampler_destroy(b);
}

static void reference(void) {
  char path[4096], line[4096];
  snprintf(path, sizeof path, "%s/tests/data/sampler_ref.txt",
           getenv("TDM_SRCDIR") ? getenv("TDM_SRCDIR") : ".");
  FILE *f = fopen(path, "r");
  TH_CHECK(f != NULL, "cannot open %s", path);
  if (!f)
    return;
  tdm_sampler *s = NULL;
  cfg c = {0};
  int id = -1, lines = 0;
  while (fgets(line, sizeof line, f)) {
    if (line[0] == 'C') {
      if (s)
        tdm_sampler_destroy(s);
      unsigned long long seed;
      sscanf(line + 2, "%d %zu %zu %d %llu %d %d %d", &id, &c.rows, &c.batch,
             &c.shuffle, &seed, &c.drop_last, &c.even, &c.split);
      c.seed = seed;
      s = c.split && c.batch % (size_t)size ? NULL : make(&c);
    } else if (line[0] == 'N' && s) {
      int lid, world;
      size_t nb, got = 0;
      sscanf(line + 2, "%d %d %zu", &lid, &world, &nb);
      if (world != size)
        continue;
      TH_OK(tdm_sampler_info(s, &got, NULL));
      TH_CHECK(got == nb, "config %d: %zu batches, want %zu", id, got, nb);
      check_walk(&c, nb);
    } else if (line[0] == 'B' && s) {
      check_line(s, line, id);
      lines++;
    }
  }
  if (s)
    tdm_sampler_destroy(s);
  fclose(f);
  TH_CHECK(lines > 0, "no reference lines in %s", path);
}

/* Every row real exactly once per epoch; padding rows are extra. */
static void coverage(size_t rows, size_t batch, int drop_last, int even) {
  cfg c = {rows, batch, 1, 99, drop_last, even, 0};
  tdm_sampler *s = make(&c);
  size_t batches = 0, per = 0;
  TH_OK(tdm_sampler_info(s, &batches, &per));
  int *seen = calloc(rows, sizeof *seen), *all = calloc(rows, sizeof *all);
  size_t *r = malloc(per * sizeof *r), count, valid, total = 0, want;
  for (size_t b = 0; b < batches; b++) {
    TH_OK(tdm_sampler_next(s, r, &count, &valid, NULL, NULL));
    TH_CHECK(count == (even ? per : valid), "count %zu valid %zu", count, valid);
    for (size_t i = 0; i < valid; i++)
      seen[r[i]]++;
    total += count;
  }
  MPI_Allreduce(seen, all, (int)rows, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  size_t real = drop_last ? rows / (batch * size) * batch * size : rows;
  size_t ones = 0;
  for (size_t i = 0; i < rows; i++)
    ones += all[i] == 1;
  TH_CHECK(ones == real, "%zu rows seen once, want %zu", ones, real);
  want = even || drop_last ? batches * per : 0;
  if (want)
    TH_CHECK(total == want, "rank %d took %zu rows, want %zu", rank, total, want);
  free(seen);
  free(all);
  free(r);
  tdm_sampler_destroy(s);
}

/* An llm.c shard of n uint16 tokens, token i = i % 50000 (rank 0 writes). */
static void write_shard(const char *path, size_t n) {
  if (rank == 0) {
    FILE *f = fopen(path, "wb");
    int32_t header[256] = {20240520, 1, (int32_t)n};
    fwrite(header, sizeof header, 1, f);
    for (size_t i = 0; i < n; i++) {
      uint16_t t = (uint16_t)(i % 50000);
      fwrite(&t, 2, 1, f);
    }
    fclose(f);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

/* The loader's batches equal the sampler's rows read one by one. */
static void loader_matches(tdm_dataset *ds, const cfg *c, int prefetch) {
  tdm_sampler *ls = make(c), *ref = make(c);
  tdm_loader_options lo = TDM_LOADER_OPTIONS_INIT;
  lo.prefetch = prefetch;
  tdm_loader *l = NULL;
  TH_OK(tdm_loader_create(ds, ls, &lo, &l));
  size_t rb = 0, per = 0, batches = 0;
  TH_OK(tdm_dataset_info(ds, NULL, &rb, NULL));
  TH_OK(tdm_sampler_info(ref, &batches, &per));
  size_t *rows = malloc(per * sizeof *rows), count, valid;
  unsigned char *want = malloc(rb + 1);
  for (size_t i = 0; l && i < 5 * batches / 2 + 3; i++) {
    if (i == batches + 1) { /* move both: the loader restarts there */
      TH_OK(tdm_sampler_set_epoch(ls, 7));
      TH_OK(tdm_sampler_skip_first_batches(ls, 1));
      TH_OK(tdm_sampler_set_epoch(ref, 7));
      TH_OK(tdm_sampler_skip_first_batches(ref, 1));
    }
    tdm_batch b;
    uint64_t e, k;
    TH_OK(tdm_loader_next(l, &b));
    TH_OK(tdm_sampler_next(ref, rows, &count, &valid, &e, &k));
    TH_CHECK(b.count == count && b.valid == valid && b.epoch == e &&
                 b.index == k && b.row_bytes == rb,
             "prefetch %d batch %zu: %zu/%zu rows at %llu/%llu, want %zu/%zu "
             "at %llu/%llu", prefetch, i, b.count, b.valid,
             (unsigned long long)b.epoch, (unsigned long long)b.index, count,
             valid, (unsigned long long)e, (unsigned long long)k);
    for (size_t j = 0; j < count && j < b.count; j++) {
      TH_OK(tdm_dataset_read(ds, rows[j], want));
      TH_CHECK(!memcmp((unsigned char *)b.data + j * rb, want, rb),
               "prefetch %d batch %zu row %zu differs", prefetch, i, j);
    }
    uint64_t pe, pb;
    TH_OK(tdm_sampler_get_position(ls, &pe, &pb));
    TH_CHECK(pe == (k + 1 < batches ? e : e + 1) &&
                 pb == (k + 1 < batches ? k + 1 : 0),
             "the loader's sampler is at the consumed position");
  }
  free(rows);
  free(want);
  TH_OK(tdm_loader_destroy(l));
  tdm_sampler_destroy(ls);
  tdm_sampler_destroy(ref);
}

static void loader_errors(const char *dir) {
  char path[4200];
  snprintf(path, sizeof path, "%s/cut.bin", dir);
  write_shard(path, 4000);
  const char *files[1] = {path};
  tdm_dataset *ds = NULL;
  TH_OK(tdm_dataset_open_tokens(files, 1, 16, &ds));
  cfg c = {200, 4, 1, 1, 0, 1, 0};
  tdm_sampler *s = make(&c);
  tdm_loader *l = NULL;
  TH_OK(tdm_loader_create(ds, s, NULL, &l));
  TH_OK(tdm_loader_destroy(l)); /* at once, the thread mid-read: no hang */
  TH_OK(tdm_loader_create(ds, s, NULL, &l));
  tdm_batch b;
  TH_OK(tdm_loader_next(l, &b));
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) /* the file shrinks under the open dataset */
    TH_CHECK(truncate(path, 1024 + 2 * 100) == 0, "truncate");
  MPI_Barrier(MPI_COMM_WORLD);
  TH_OK(tdm_sampler_set_epoch(s, 3)); /* drops what was read ahead */
  tdm_status st = TDM_SUCCESS;
  for (int i = 0; i < 60 && st == TDM_SUCCESS; i++)
    st = tdm_loader_next(l, &b);
  TH_CHECK(st != TDM_SUCCESS && strstr(tdm_last_error(), "cut.bin"),
           "a truncated shard: %s \"%s\"", tdm_status_string(st),
           tdm_last_error());
  TH_CHECK(tdm_loader_next(l, &b) == st, "the error stays");
  TH_OK(tdm_loader_destroy(l));
  tdm_sampler_destroy(s);
  TH_OK(tdm_dataset_close(ds));
}

static void loader(const char *dir) {
  char path[4200];
  snprintf(path, sizeof path, "%s/tokens.bin", dir);
  write_shard(path, 3001);
  const char *files[1] = {path};
  tdm_dataset *ds = NULL;
  TH_OK(tdm_dataset_open_tokens(files, 1, 20, &ds));
  size_t rows = 0;
  TH_OK(tdm_dataset_info(ds, &rows, NULL, NULL));
  TH_CHECK(rows == 150, "rows %zu", rows);
  cfg even = {rows, 7, 1, 5, 0, 1, 0}, ragged = {rows, 9, 1, 5, 0, 0, 0};
  for (int prefetch = 0; prefetch <= 3; prefetch++)
    loader_matches(ds, prefetch % 2 ? &ragged : &even, prefetch);
  cfg more = {rows + 1, 7, 1, 5, 0, 1, 0};
  tdm_sampler *s = make(&more);
  tdm_loader *l = NULL;
  TH_FAILS(tdm_loader_create(ds, s, NULL, &l), TDM_ERR_INVALID_ARGUMENT,
           "151 rows");
  tdm_sampler_destroy(s);
  TH_OK(tdm_dataset_close(ds));
  loader_errors(dir);
}

/* The position goes into the checkpoint and comes back. */
static void checkpoint(const char *dir) {
  tdm_engine *e;
  tdm_optimizer *opt;
  TH_OK(tdm_engine_create(ctx, &e));
  int m, p;
  int64_t shape[1] = {5};
  float init[5] = {1, 2, 3, 4, 5};
  TH_OK(tdm_add_module(e, "m", &m));
  TH_OK(tdm_add_param(e, m, "w", TDM_F32, 1, shape, init, 0, &p));
  TH_OK(tdm_prepare(e));
  tdm_optimizer_options oo = TDM_OPTIMIZER_OPTIONS_INIT;
  TH_OK(tdm_optimizer_create(e, &oo, &opt));
  cfg c = {100, 3, 1, 8, 0, 1, 0};
  tdm_sampler *a = make(&c), *b = make(&c);
  TH_OK(tdm_sampler_set_epoch(a, 4));
  TH_OK(tdm_sampler_skip_first_batches(a, 2));
  tdm_checkpoint_options ck = TDM_CHECKPOINT_OPTIONS_INIT;
  ck.samplers = &a;
  ck.sampler_count = 1;
  char root[4200];
  snprintf(root, sizeof root, "%s/ckpt", dir);
  TH_OK(tdm_save_state(e, opt, root, &ck));
  ck.samplers = &b;
  TH_OK(tdm_load_state(e, opt, root, &ck));
  uint64_t ep = 0, bt = 0;
  TH_OK(tdm_sampler_get_position(b, &ep, &bt));
  TH_CHECK(ep == 4 && bt == 2, "restored position %llu/%llu",
           (unsigned long long)ep, (unsigned long long)bt);
  ck.sampler_count = 2;
  tdm_sampler *two[2] = {a, b};
  ck.samplers = two;
  TH_FAILS(tdm_load_state(e, opt, root, &ck), TDM_ERR_INVALID_ARGUMENT,
           "holds 1 sampler");
  /* A caller compiled before the samplers existed: no positions. */
  tdm_checkpoint_options old = TDM_CHECKPOINT_OPTIONS_INIT;
  old.size = offsetof(tdm_checkpoint_options, samplers);
  TH_OK(tdm_load_state(e, opt, root, &old));
  ck.samplers = NULL;
  ck.sampler_count = 1;
  TH_FAILS(tdm_save_state(e, opt, root, &ck), TDM_ERR_INVALID_ARGUMENT,
           "sampler_count");
  tdm_sampler_destroy(a);
  tdm_sampler_destroy(b);
  TH_OK(tdm_optimizer_destroy(opt));
  TH_OK(tdm_engine_destroy(e));
}

static void bad_input(void) {
  tdm_sampler_options o = TDM_SAMPLER_OPTIONS_INIT;
  tdm_sampler *s = NULL;
  TH_FAILS(tdm_sampler_create(ctx, 10, &o, &s), TDM_ERR_INVALID_ARGUMENT,
           "batch_size is 0");
  o.batch_size = 2;
  o.shuffle = 2;
  TH_FAILS(tdm_sampler_create(ctx, 10, &o, &s), TDM_ERR_INVALID_ARGUMENT,
           "shuffle = 2");
  o.shuffle = 1;
  TH_FAILS(tdm_sampler_create(ctx, 10, NULL, &s), TDM_ERR_INVALID_ARGUMENT,
           "NULL");
  if (size > 1) {
    o.split_batches = 1;
    o.batch_size = (size_t)size + 1;
    TH_FAILS(tdm_sampler_create(ctx, 10, &o, &s), TDM_ERR_INVALID_ARGUMENT,
             "does not divide");
    o.split_batches = 0;
  }
  o.batch_size = 2;
  o.drop_last = 1;
  TH_OK(tdm_sampler_create(ctx, 1, &o, &s));
  size_t r[2], n, v;
  TH_FAILS(tdm_sampler_next(s, r, &n, &v, NULL, NULL), TDM_ERR_INVALID_USAGE,
           "no batch");
  TH_FAILS(tdm_sampler_skip_first_batches(s, 1), TDM_ERR_INVALID_ARGUMENT,
           "past the epoch");
  TH_OK(tdm_sampler_destroy(s));
  TH_FAILS(tdm_sampler_set_epoch(s, 1), TDM_ERR_INVALID_USAGE, "not live");
  TH_FAILS(tdm_loader_next(NULL, NULL), TDM_ERR_INVALID_ARGUMENT, "NULL");
}

int main(int argc, char **argv) {
  th_init(&argc, &argv, MPI_THREAD_MULTIPLE, &rank, &size);
  TH_OK(tdm_init_comm(MPI_COMM_WORLD, NULL, &ctx));
  char dir[4096] = "";
  if (rank == 0) {
    snprintf(dir, sizeof dir, "%s/t_data.XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    TH_CHECK(mkdtemp(dir) != NULL, "mkdtemp");
  }
  MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
  reference();
  coverage(23, 2, 0, 1);
  coverage(23, 2, 0, 0);
  coverage(23, 2, 1, 1);
  coverage(3, 2, 0, 1);
  loader(dir);
  checkpoint(dir);
  bad_input();
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    TH_CHECK(system(cmd) == 0, "rm");
  }
  TH_OK(tdm_finalize(ctx));
  int rc = th_finish("t_data");
  MPI_Finalize();
  return rc;
}
