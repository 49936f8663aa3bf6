/* memory.c - memory accounting: every buffer of the engine and its
 * optimizer is allocated here and counted by category, now and at peak,
 * so the report shows what each ZeRO stage really holds; the traffic of
 * the engine's collectives; and the ZeRO paper's formulas. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

/* Engine buffers live where the model computes, but offload puts the
 * optimizer state in pinned host memory (layout.c places the others). */
tdmi_mem_kind tdmi_engine_kind(const tdm_engine *e, tdm_memory_category c) {
  if (e->offloaded && c == TDM_MEM_OPTIMIZER_STATE)
    return TDMI_MEM_PINNED;
  return tdmi_ops_compute_mem(&e->ops);
}

static tdm_memory_location location_of(tdmi_mem_kind kind) {
  return kind == TDMI_MEM_DEVICE ? TDM_MEM_DEVICE : TDM_MEM_HOST;
}

void tdmi_mem_init(tdmi_memory *m) {
  memset(m, 0, sizeof *m);
  pthread_mutex_init(&m->lock, NULL);
}

void tdmi_mem_destroy(tdmi_memory *m) { pthread_mutex_destroy(&m->lock); }

static uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }

static void count(tdmi_memory *m, tdm_memory_category c,
                  tdm_memory_location l, int64_t delta) {
  pthread_mutex_lock(&m->lock);
  m->current[c][l] += (uint64_t)delta; /* wraps back for negative deltas */
  m->total += (uint64_t)delta;
  m->peak[c][l] = max_u64(m->peak[c][l], m->current[c][l]);
  m->peak_total = max_u64(m->peak_total, m->total);
  pthread_mutex_unlock(&m->lock);
}

static size_t padded_bytes(size_t count, tdm_dtype dtype) {
  size_t bytes = count * tdmi_dtype_size(dtype);
  return (bytes + TDMI_ALIGN - 1) / TDMI_ALIGN * TDMI_ALIGN;
}

void *tdmi_engine_alloc_in(tdm_engine *e, tdmi_mem_kind kind,
                           tdm_memory_category category, size_t n,
                           tdm_dtype dtype) {
  size_t bytes = padded_bytes(n, dtype);
  void *p = NULL;
  if (tdmi_ops_alloc(&e->ops, kind, bytes ? bytes : TDMI_ALIGN, &p) !=
      TDM_SUCCESS)
    return NULL;
  count(&e->mem, category, location_of(kind), (int64_t)bytes);
  return p;
}

void tdmi_engine_free_in(tdm_engine *e, tdmi_mem_kind kind,
                         tdm_memory_category category, void *p, size_t n,
                         tdm_dtype dtype) {
  if (!p)
    return;
  tdmi_ops_free(&e->ops, kind, p);
  count(&e->mem, category, location_of(kind),
        -(int64_t)padded_bytes(n, dtype));
}

void tdmi_engine_count(tdm_engine *e, tdm_memory_category category,
                       size_t n, tdm_dtype dtype, int sign) {
  tdmi_mem_kind kind = tdmi_engine_kind(e, category);
  count(&e->mem, category, location_of(kind),
        sign * (int64_t)padded_bytes(n, dtype));
}

void *tdmi_engine_alloc(tdm_engine *e, tdm_memory_category category,
                        size_t n, tdm_dtype dtype) {
  return tdmi_engine_alloc_in(e, tdmi_engine_kind(e, category), category, n, dtype);
}

void tdmi_engine_free(tdm_engine *e, tdm_memory_category category, void *p,
                      size_t n, tdm_dtype dtype) {
  tdmi_engine_free_in(e, tdmi_engine_kind(e, category), category, p, n, dtype);
}

void tdmi_mem_gathered(tdm_engine *e, int64_t delta) {
  tdmi_memory *m = &e->mem;
  pthread_mutex_lock(&m->lock);
  m->gathered += (uint64_t)delta;
  m->peak_gathered = max_u64(m->peak_gathered, m->gathered);
  pthread_mutex_unlock(&m->lock);
}

void tdmi_mem_traffic(tdm_engine *e, uint64_t bytes) {
  pthread_mutex_lock(&e->mem.lock);
  e->mem.comm_bytes += bytes;
  pthread_mutex_unlock(&e->mem.lock);
}

tdm_status tdm_get_memory_info(const tdm_engine *e, tdm_memory_info *info) {
  const char *fn = "tdm_get_memory_info";
  TDMI_TRY(tdmi_engine_check_prepared(e, fn));
  TDMI_CHECK_PTR(info, fn);
  if (info->size < offsetof(tdm_memory_info, peak) || info->size > sizeof *info)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: info->size = %zu is not a tdm_memory_info size "
                      "(set it to sizeof(tdm_memory_info))", fn, info->size);
  tdm_memory_info full;
  memset(&full, 0, sizeof full);
  full.size = sizeof full;
  tdmi_memory *m = (tdmi_memory *)&e->mem; /* the lock only */
  pthread_mutex_lock(&m->lock);
  memcpy(full.current, m->current, sizeof full.current);
  memcpy(full.peak, m->peak, sizeof full.peak);
  full.peak_total = m->peak_total;
  full.gathered_params = m->gathered;
  full.peak_gathered_params = m->peak_gathered;
  pthread_mutex_unlock(&m->lock);
  memcpy(info, &full, info->size);
  return TDM_SUCCESS;
}

tdm_status tdm_reset_peak_memory(tdm_engine *e) {
  TDMI_TRY(tdmi_engine_check_prepared(e, "tdm_reset_peak_memory"));
  tdmi_memory *m = &e->mem;
  pthread_mutex_lock(&m->lock);
  memcpy(m->peak, m->current, sizeof m->peak);
  m->peak_total = m->total;
  m->peak_gathered = m->gathered;
  pthread_mutex_unlock(&m->lock);
  return TDM_SUCCESS;
}

tdm_status tdm_get_comm_volume(const tdm_engine *e, uint64_t *bytes) {
  TDMI_TRY(tdmi_engine_check_prepared(e, "tdm_get_comm_volume"));
  TDMI_CHECK_PTR(bytes, "tdm_get_comm_volume");
  tdmi_memory *m = (tdmi_memory *)&e->mem;
  pthread_mutex_lock(&m->lock);
  *bytes = m->comm_bytes;
  pthread_mutex_unlock(&m->lock);
  return TDM_SUCCESS;
}

static const char *const category_names[TDM_MEM_NUM_CATEGORIES] = {
    "parameters", "gradients", "optimizer state", "master weights",
    "comm buffers"};

/* Appends to buf like snprintf, tracking the length it would need. */
/* The largest unit (KiB, MiB, GiB) in which the peak is at least 1. */
static int unit_shift(uint64_t peak) {
  int shift = 0;
  while (shift < 30 && peak >> (shift + 10) >= 1)
    shift += 10;
  return shift;
}

tdm_status tdm_memory_report(const tdm_engine *e, char *buf, size_t size,
                             size_t *needed) {
  const char *fn = "tdm_memory_report";
  tdm_memory_info m;
  memset(&m, 0, sizeof m);
  m.size = sizeof m;
  TDMI_TRY(tdm_get_memory_info(e, &m));
  if (!buf && size)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: buf is NULL", fn);
  static const char *const units[] = {"B", "KiB", "MiB", "GiB"};
  int shift = unit_shift(m.peak_total);
  double unit = (double)(1ull << shift);
  size_t len = 0;
  uint64_t now = 0;
  tdmi_appendf(buf, size, &len, "rank %d memory (%s), zero stage %d:\n"
      "  %-16s %12s %12s %12s %12s\n", e->ctx->rank, units[shift / 10],
      e->stage, "category", "host", "host peak", "device", "device peak");
  for (int c = 0; c < TDM_MEM_NUM_CATEGORIES; c++) {
    tdmi_appendf(buf, size, &len, "  %-16s %12.3f %12.3f %12.3f %12.3f\n",
        category_names[c], m.current[c][TDM_MEM_HOST] / unit,
        m.peak[c][TDM_MEM_HOST] / unit, m.current[c][TDM_MEM_DEVICE] / unit,
        m.peak[c][TDM_MEM_DEVICE] / unit);
    now += m.current[c][TDM_MEM_HOST] + m.current[c][TDM_MEM_DEVICE];
  }
  tdmi_appendf(buf, size, &len, "  %-16s %12.3f (peak %.3f)\n", "total",
      now / unit, m.peak_total / unit);
  if (e->stage == 3)
    tdmi_appendf(buf, size, &len, "  %-16s %12.3f (peak %.3f)\n",
        "gathered now", m.gathered_params / unit, m.peak_gathered_params / unit);
  if (size && len >= size)
    buf[size - 1] = '\0';
  if (needed)
    *needed = len;
  return TDM_SUCCESS;
}

/* ---- the ZeRO paper's formulas ---- */

static tdm_status check_estimate(int world_size, int zero_stage,
                                 tdm_precision precision,
                                 tdm_dtype reduce_dtype, int states,
                                 const uint64_t *bytes) {
  const char *fn = "tdm_estimate_model_state";
  TDMI_CHECK_PTR(bytes, fn);
  if (world_size < 1 || zero_stage < 0 || zero_stage > 3 || states < 0)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: world_size %d (>= 1), zero_stage %d (0..3) or "
                      "states_per_param %d (>= 0) is out of range", fn,
                      world_size, zero_stage, states);
  if ((unsigned)precision > TDM_PRECISION_FP16)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: precision %d is not a tdm_precision", fn,
                      (int)precision);
  if (reduce_dtype != TDM_F32 && reduce_dtype != TDM_BF16 &&
      reduce_dtype != TDM_F16)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: reduce_dtype %d is not TDM_F32, TDM_BF16 or "
                      "TDM_F16", fn, (int)reduce_dtype);
  return TDM_SUCCESS;
}

tdm_status tdm_estimate_model_state(uint64_t numel, int world_size,
                                    int zero_stage, tdm_precision precision,
                                    tdm_dtype reduce_dtype,
                                    int states_per_param,
                                    uint64_t bytes[TDM_MEM_NUM_CATEGORIES]) {
  TDMI_TRY(check_estimate(world_size, zero_stage, precision, reduce_dtype,
                          states_per_param, bytes));
  int mixed = precision != TDM_PRECISION_NO;
  uint64_t n = (uint64_t)world_size;
  /* Each category whole, then divided by N from the stage that shards
   * it: 1 optimizer state and masters, 2 gradients, 3 parameters. */
  uint64_t whole[TDM_MEM_NUM_CATEGORIES] = {
      /* f32 math keeps f32 gradients; the reduce dtype is the wire's */
      numel * (mixed ? 2 : 4), numel * (mixed ? tdmi_dtype_size(reduce_dtype) : 4),
      numel * 4 * (uint64_t)states_per_param, mixed ? numel * 4 : 0, 0};
  static const int sharded_from[TDM_MEM_NUM_CATEGORIES] = {3, 2, 1, 1, 4};
  for (int c = 0; c < TDM_MEM_NUM_CATEGORIES; c++)
    bytes[c] = zero_stage >= sharded_from[c] ? whole[c] / n : whole[c];
  return TDM_SUCCESS;
}
