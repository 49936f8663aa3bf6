/* sampler.c - the distributed sampler: which rows each rank takes in each
 * batch (the rules are in tandem.h).  Every rank computes the same epoch
 * order from the seed alone, so no rank ever asks another. */
#include <stdlib.h>
#include <string.h>

#include "data.h"

struct tdm_sampler {
  size_t rows;
  size_t global; /* G: rows of a global batch */
  size_t per_rank; /* B */
  size_t batches;  /* per epoch */
  int rank;
  tdm_sampler_options o;
  tdmi_position pos;
  tdmi_order order; /* of tdm_sampler_next */
};

tdm_status tdmi_data_check(const void *h, tdmi_handle_kind kind,
                           const char *fn, const char *what) {
  if (!h)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, what);
  if (!tdmi_handle_live(h, kind))
    return tdmi_error(TDM_ERR_INVALID_USAGE, "%s: %s %p is not live "
                      "(destroyed, or never created)", fn, what, h);
  return TDM_SUCCESS;
}

#define CHECK_SAMPLER(s, fn) \
  TDMI_TRY(tdmi_data_check((s), TDMI_HANDLE_SAMPLER, (fn), "sampler"))

tdm_status tdm_sampler_options_init(tdm_sampler_options *options) {
  TDMI_CHECK_PTR(options, "tdm_sampler_options_init");
  *options = (tdm_sampler_options)TDM_SAMPLER_OPTIONS_INIT;
  return TDM_SUCCESS;
}

static tdm_status read_options(const tdm_sampler_options *in,
                               tdm_sampler_options *o, const char *fn) {
  TDMI_CHECK_PTR(in, fn);
  *o = (tdm_sampler_options)TDM_SAMPLER_OPTIONS_INIT;
  if (in->size < offsetof(tdm_sampler_options, shuffle) || in->size > sizeof *o)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: options->size = %zu is "
                      "not a tdm_sampler_options size (start from "
                      "TDM_SAMPLER_OPTIONS_INIT)", fn, in->size);
  memcpy(o, in, in->size);
  o->size = sizeof *o;
  if (o->batch_size == 0)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: options->batch_size is "
                      "0", fn);
  const int flags[4] = {o->shuffle, o->drop_last, o->even_batches,
                        o->split_batches};
  static const char *const names[4] = {"shuffle", "drop_last",
                                       "even_batches", "split_batches"};
  for (int i = 0; i < 4; i++)
    if (flags[i] != 0 && flags[i] != 1)
      return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: options->%s = %d; "
                        "expected 0 or 1", fn, names[i], flags[i]);
  return TDM_SUCCESS;
}

tdm_status tdm_sampler_create(const tdm_context *ctx, size_t rows,
                              const tdm_sampler_options *options,
                              tdm_sampler **sampler) {
  const char *fn = "tdm_sampler_create";
  TDMI_CHECK_CTX(ctx, fn);
  TDMI_CHECK_PTR(sampler, fn);
  *sampler = NULL;
  tdm_sampler_options o;
  TDMI_TRY(read_options(options, &o, fn));
  size_t world = (size_t)ctx->size, global = o.batch_size;
  if (o.split_batches && o.batch_size % world != 0)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: split_batches: "
                      "batch_size %zu does not divide by the world size %zu",
                      fn, o.batch_size, world);
  if (!o.split_batches && o.batch_size > SIZE_MAX / world)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: batch_size %zu times "
                      "the world size overflows", fn, o.batch_size);
  if (!o.split_batches)
    global = o.batch_size * world;
  tdm_sampler *s = calloc(1, sizeof *s);
  if (!s)
    return tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", fn);
  s->rows = rows;
  s->global = global;
  s->per_rank = global / world;
  s->batches = rows / global + (!o.drop_last && rows % global != 0);
  s->rank = ctx->rank;
  s->o = o;
  tdm_status st = tdmi_handle_register(s, TDMI_HANDLE_SAMPLER);
  if (st != TDM_SUCCESS) {
    free(s);
    return st;
  }
  *sampler = s;
  return TDM_SUCCESS;
}

void tdmi_order_free(tdmi_order *order) {
  free(order->perm);
  *order = (tdmi_order){0};
}

tdm_status tdm_sampler_destroy(tdm_sampler *s) {
  CHECK_SAMPLER(s, "tdm_sampler_destroy");
  tdmi_handle_unregister(s, TDMI_HANDLE_SAMPLER);
  tdmi_order_free(&s->order);
  free(s);
  return TDM_SUCCESS;
}

tdm_status tdm_sampler_info(const tdm_sampler *s, size_t *batches,
                            size_t *batch_rows) {
  CHECK_SAMPLER(s, "tdm_sampler_info");
  if (batches)
    *batches = s->batches;
  if (batch_rows)
    *batch_rows = s->per_rank;
  return TDM_SUCCESS;
}

/* Fisher-Yates over the shared Philox stream of seed + epoch: word w is
 * word w % 4 of the block under counter (w / 4, 0, 0, 0), as tdm_rng's
 * shared stream draws them; a draw takes two words, low first. */
static tdm_status shuffle(const tdm_sampler *s, uint64_t epoch, size_t *perm) {
  uint64_t seed = s->o.seed + epoch;
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  uint32_t words[4];
  uint64_t block = 0;
  for (size_t i = 0; i < s->rows; i++)
    perm[i] = i;
  for (size_t i = s->rows; i > 1; i--) {
    size_t draw = s->rows - i; /* 0, 1, ...: two per block */
    if (draw % 2 == 0) {
      const uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), 0, 0};
      tdmi_philox4x32_10(ctr, key, words);
      block++;
    }
    const uint32_t *w = &words[2 * (draw % 2)];
    uint64_t u = (uint64_t)w[0] | (uint64_t)w[1] << 32;
    size_t j = (size_t)(u % i), t = perm[i - 1];
    perm[i - 1] = perm[j];
    perm[j] = t;
  }
  return TDM_SUCCESS;
}

static tdm_status order_of(const tdm_sampler *s, tdmi_order *order,
                           uint64_t epoch) {
  if (!s->o.shuffle || (order->valid && order->epoch == epoch))
    return TDM_SUCCESS;
  if (!order->perm && !(order->perm = malloc((s->rows + 1) * sizeof(size_t))))
    return tdmi_error(TDM_ERR_NO_MEMORY, "tdm_sampler: out of memory for "
                      "the order of %zu rows", s->rows);
  order->valid = 0;
  TDMI_TRY(shuffle(s, epoch, order->perm));
  order->epoch = epoch;
  order->valid = 1;
  return TDM_SUCCESS;
}

tdm_status tdmi_sampler_rows(const tdm_sampler *s, tdmi_order *order,
                             tdmi_position pos, size_t *rows, size_t *count,
                             size_t *valid) {
  TDMI_TRY(order_of(s, order, pos.epoch));
  size_t start = (size_t)pos.batch * s->global; /* the global batch's */
  size_t offset = (size_t)s->rank * s->per_rank, left = s->rows - start;
  size_t real = left > offset ? left - offset : 0;
  if (real > s->per_rank)
    real = s->per_rank;
  *valid = real;
  *count = s->o.even_batches ? s->per_rank : real; /* full batches: equal */
  for (size_t i = 0; i < *count; i++) {
    size_t at = (start + offset + i) % s->rows; /* wraps only to pad */
    rows[i] = s->o.shuffle ? order->perm[at] : at;
  }
  return TDM_SUCCESS;
}

tdmi_position tdmi_sampler_after(const tdm_sampler *s, tdmi_position pos) {
  if (pos.batch + 1 < s->batches)
    return (tdmi_position){pos.epoch, pos.batch + 1};
  return (tdmi_position){pos.epoch + 1, 0};
}

tdmi_position tdmi_sampler_position(const tdm_sampler *s) { return s->pos; }

size_t tdmi_sampler_total(const tdm_sampler *s) { return s->rows; }

tdm_status tdmi_sampler_seek(tdm_sampler *s, tdmi_position pos,
                             const char *fn) {
  if (pos.batch > 0 && pos.batch >= s->batches)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: batch %llu is past the "
                      "epoch's %zu batches", fn,
                      (unsigned long long)pos.batch, s->batches);
  s->pos = pos;
  return TDM_SUCCESS;
}

tdm_status tdm_sampler_next(tdm_sampler *s, size_t *rows, size_t *count,
                            size_t *valid, uint64_t *epoch, uint64_t *batch) {
  const char *fn = "tdm_sampler_next";
  CHECK_SAMPLER(s, fn);
  TDMI_CHECK_PTR(rows, fn);
  TDMI_CHECK_PTR(count, fn);
  TDMI_CHECK_PTR(valid, fn);
  if (s->batches == 0)
    return tdmi_error(TDM_ERR_INVALID_USAGE, "%s: an epoch has no batch "
                      "(%zu rows, global batch %zu%s)", fn, s->rows,
                      s->global, s->o.drop_last ? ", drop_last" : "");
  TDMI_TRY(tdmi_sampler_rows(s, &s->order, s->pos, rows, count, valid));
  if (epoch)
    *epoch = s->pos.epoch;
  if (batch)
    *batch = s->pos.batch;
  s->pos = tdmi_sampler_after(s, s->pos);
  return TDM_SUCCESS;
}

tdm_status tdm_sampler_set_epoch(tdm_sampler *s, uint64_t epoch) {
  CHECK_SAMPLER(s, "tdm_sampler_set_epoch");
  s->pos = (tdmi_position){epoch, 0};
  return TDM_SUCCESS;
}

tdm_status tdm_sampler_skip_first_batches(tdm_sampler *s, uint64_t batches) {
  const char *fn = "tdm_sampler_skip_first_batches";
  CHECK_SAMPLER(s, fn);
  return tdmi_sampler_seek(s, (tdmi_position){s->pos.epoch, batches}, fn);
}

tdm_status tdm_sampler_get_position(const tdm_sampler *s, uint64_t *epoch,
                                    uint64_t *batch) {
  CHECK_SAMPLER(s, "tdm_sampler_get_position");
  if (epoch)
    *epoch = s->pos.epoch;
  if (batch)
    *batch = s->pos.batch;
  return TDM_SUCCESS;
}
