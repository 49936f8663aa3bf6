/* registry.c - engine creation, parameter registration, and tdm_prepare:
 * the cross-rank registration check, the flat layout per dtype, the
 * frozen bucket assignment and the broadcast of rank 0's values. */
#include <stdlib.h>
#include <string.h>

#include "engine.h"

tdm_status tdmi_engine_check(const tdm_engine *e, const char *fn) {
  if (e == NULL)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: engine is NULL", fn);
  if (!tdmi_handle_live(e, TDMI_HANDLE_ENGINE))
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "%s: engine %p is not a live engine (destroyed, or "
                      "never returned by tdm_engine_create)", fn,
                      (const void *)e);
  return tdmi_context_check(e->ctx, fn);
}

tdm_status tdmi_engine_check_prepared(const tdm_engine *e, const char *fn) {
  TDMI_TRY(tdmi_engine_check(e, fn));
  if (!e->prepared)
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "%s: the engine is not prepared (call tdm_prepare)", fn);
  return TDM_SUCCESS;
}

static tdm_status check_unprepared(const tdm_engine *e, const char *fn) {
  TDMI_TRY(tdmi_engine_check(e, fn));
  if (e->prepared)
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "%s: the engine is already prepared; register modules "
                      "and parameters before tdm_prepare", fn);
  return TDM_SUCCESS;
}

static tdm_status pick_mode(tdm_engine *e) {
  int multiple = tdmi_thread_multiple();
  tdm_progress_mode want = (tdm_progress_mode)e->ctx->config.progress;
  if (want == TDM_PROGRESS_THREAD && !multiple)
    return tdmi_error(TDM_ERR_NOT_SUPPORTED,
                      "tdm_engine_create: progress=thread needs "
                      "MPI_THREAD_MULTIPLE, which MPI does not provide here "
                      "(use progress=poll or auto)");
  e->mode = want == TDM_PROGRESS_AUTO
                ? (multiple ? TDM_PROGRESS_THREAD : TDM_PROGRESS_POLL)
                : want;
  /* On a GPU the collectives are queued on streams or staged from the
   * calls that launch them; a thread would only add CUDA calls from a
   * second host thread. */
  if (e->ctx->device_kind == TDM_DEVICE_CUDA)
    e->mode = TDM_PROGRESS_POLL;
  return TDM_SUCCESS;
}

/* Mixed precision: compute copies of f32 parameters, gradients of f32
 * parameters in the reduce dtype, and the kernels that step them. */
static tdm_status pick_precision(tdm_engine *e) {
  const tdmi_config *c = &e->ctx->config;
  e->precision = (tdm_precision)c->mixed_precision;
  e->reduce_dtype = (tdm_dtype)c->reduce_dtype;
  /* GradScaler's initial scale until an optimizer sets its own. */
  e->loss_scale = e->precision == TDM_PRECISION_FP16 ? 65536.0 : 1.0;
  tdmi_layout_dtypes(e);
  tdmi_kernels cpu;
  TDMI_TRY(tdmi_kernels_init(&cpu, (tdm_cpu_isa)c->cpu_isa, c->cpu_threads));
  int on_device = e->ctx->device_kind == TDM_DEVICE_CUDA;
  /* on the CPU everything is host memory already */
  e->offloaded = on_device && e->offload != TDM_OFFLOAD_NONE;
  TDMI_TRY(tdmi_ops_init(&e->ops, &cpu, on_device));
  return tdmi_sum_op_create(e->reduce_dtype, &e->reduce_op);
}

static tdm_engine *engine_new(tdm_context *ctx) {
  tdm_engine *e = calloc(1, sizeof *e);
  if (!e)
    return NULL;
  e->ctx = ctx;
  e->comm = MPI_COMM_NULL;
  e->reduce_op = MPI_OP_NULL;
  e->strategy = &tdmi_strategy_ddp;
  const tdmi_config *c = &ctx->config;
  e->bucket_cap = (size_t)c->bucket_cap_bytes;
  e->first_bucket_cap = (size_t)c->first_bucket_bytes;
  e->accumulation_steps = c->gradient_accumulation_steps;
  e->stage = c->zero_stage;
  e->offload = (tdm_offload)c->offload;
  e->prefetch_bytes = (size_t)c->zero3_prefetch_bytes;
  e->persist_numel = (size_t)c->zero3_persistence_threshold;
  e->reduce_ch.comm = e->gather_ch.comm = MPI_COMM_NULL;
  e->last_fetch = -1;
  e->fetch_dir = 1;
  if (e->stage > 0)
    e->strategy = &tdmi_strategy_zero;
  tdmi_mem_init(&e->mem);
  pthread_mutex_init(&e->lock, NULL);
  pthread_cond_init(&e->cond, NULL);
  return e;
}

static void engine_free(tdm_engine *e) {
  tdmi_handle_unregister(e, TDMI_HANDLE_ENGINE);
  tdmi_fetch_free(e);
  tdmi_layout_free(e);
  tdmi_xport_close(e);
  tdmi_ops_destroy(&e->ops);
  tdmi_sum_op_free(&e->reduce_op);
  for (int i = 0; i < e->nparams; i++) {
    free(e->params[i].name);
    free(e->params[i].initial);
  }
  for (int i = 0; i < e->nmodules; i++) {
    free(e->modules[i].name);
    free(e->modules[i].params);
  }
  free(e->params);
  free(e->modules);
  tdmi_mem_destroy(&e->mem);
  pthread_mutex_destroy(&e->lock);
  pthread_cond_destroy(&e->cond);
  free(e);
}

tdm_status tdm_engine_create(tdm_context *ctx, tdm_engine **engine) {
  TDMI_CHECK_CTX(ctx, "tdm_engine_create");
  tdm_status st = tdmi_check_ptr("tdm_engine_create", engine, "engine");
  tdm_engine *e = NULL;
  if (st == TDM_SUCCESS) {
    e = engine_new(ctx);
    st = e ? pick_mode(e)
           : tdmi_error(TDM_ERR_NO_MEMORY, "tdm_engine_create: out of memory");
  }
  if (st == TDM_SUCCESS)
    st = pick_precision(e);
  /* Collective: every rank opens its channels or none does.  On every rank
   * whatever its stage, so ranks that disagree on the stage reach
   * tdm_prepare's check. */
  st = tdmi_agree(ctx->comm, st, "tdm_engine_create");
  if (st == TDM_SUCCESS)
    st = tdmi_xport_open(e);
  if (st == TDM_SUCCESS)
    st = tdmi_handle_register(e, TDMI_HANDLE_ENGINE);
  st = tdmi_agree(ctx->comm, st, "tdm_engine_create");
  if (st != TDM_SUCCESS) {
    if (e)
      engine_free(e);
    return st;
  }
  tdmi_log(ctx, TDM_LOG_INFO,
           "engine: created; zero stage %d, offload %d, progress %s, buckets "
           "%zu B (first %zu B), accumulation %d, precision %s, reduce %s, "
           "kernels %s x %d", e->stage, (int)e->offload, e->mode == TDM_PROGRESS_THREAD ? "thread" : "poll",
           e->bucket_cap, e->first_bucket_cap, e->accumulation_steps,
           e->precision == TDM_PRECISION_BF16   ? "bf16"
           : e->precision == TDM_PRECISION_FP16 ? "fp16"
                                                : "no",
           tdmi_dtype_name(e->reduce_dtype), tdmi_cpu_isa_name(e->ops.cpu.isa),
           e->ops.cpu.threads);
  *engine = e;
  return TDM_SUCCESS;
}

/* The program's bound pointers get their own arrays back, the values
 * holding the trained weights (collective: a gather at ZeRO-3). */
static tdm_status unbind(tdm_engine *e) {
  tdm_status st = TDM_SUCCESS;
  for (int i = 0; e->prepared && i < e->nparams; i++) {
    tdmi_param *p = &e->params[i];
    if (!p->rebound)
      continue;
    if (p->own_data && !e->in_backward) {
      tdm_status one = tdm_gather_param(e, i, p->own_data);
      st = st == TDM_SUCCESS ? one : st;
    }
    *p->bind_data = p->own_data;
    if (p->bind_grad)
      *p->bind_grad = p->own_grad;
  }
  return st;
}

tdm_status tdm_engine_destroy(tdm_engine *engine) {
  TDMI_TRY(tdmi_engine_check(engine, "tdm_engine_destroy"));
  /* A collective that timed out may still own the engine's buffers (the
   * communication thread may sit in it): nothing is freed. */
  TDMI_TRY(tdmi_watch_check(engine->ctx->comm, "tdm_engine_destroy"));
  tdm_status st = unbind(engine);
  tdmi_stream_stop(engine);
  engine_free(engine);
  return st;
}

/* ---- registration ---- */

static tdm_status grow(void **array, int *cap, int n, size_t elem) {
  if (n < *cap)
    return TDM_SUCCESS;
  int bigger = *cap ? 2 * *cap : 16;
  void *p = realloc(*array, elem * (size_t)bigger);
  if (!p)
    return tdmi_error(TDM_ERR_NO_MEMORY, "out of memory registering");
  *array = p;
  *cap = bigger;
  return TDM_SUCCESS;
}

static tdm_status check_name(const char *fn, const char *name) {
  TDMI_TRY(tdmi_check_ptr(fn, name, "name"));
  if (!*name)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: name is empty", fn);
  if (strlen(name) > 200)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: name '%.40s...' is longer than 200 bytes", fn, name);
  return TDM_SUCCESS;
}

tdm_status tdm_add_module(tdm_engine *e, const char *name, int *module) {
  const char *fn = "tdm_add_module";
  TDMI_TRY(check_unprepared(e, fn));
  TDMI_TRY(check_name(fn, name));
  TDMI_TRY(tdmi_check_ptr(fn, module, "module"));
  for (int i = 0; i < e->nmodules; i++)
    if (strcmp(e->modules[i].name, name) == 0)
      return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                        "%s: module '%s' is already registered (module %d)",
                        fn, name, i);
  TDMI_TRY(grow((void **)&e->modules, &e->modules_cap, e->nmodules,
                sizeof *e->modules));
  tdmi_module *m = &e->modules[e->nmodules];
  memset(m, 0, sizeof *m);
  if (!(m->name = strdup(name)))
    return tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", fn);
  *module = e->nmodules++;
  return TDM_SUCCESS;
}

static tdm_status check_shape(const char *fn, const char *name, int ndim,
                              const int64_t *shape, size_t esize,
                              size_t *numel) {
  if (ndim < 0 || ndim > TDMI_MAX_NDIM)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: '%s': ndim %d is outside [0, %d]", fn, name, ndim,
                      TDMI_MAX_NDIM);
  if (ndim > 0)
    TDMI_TRY(tdmi_check_ptr(fn, shape, "shape"));
  size_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] <= 0)
      return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                        "%s: '%s': shape[%d] = %lld must be positive", fn,
                        name, i, (long long)shape[i]);
    if ((uint64_t)shape[i] > (uint64_t)PTRDIFF_MAX / esize / n)
      return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                        "%s: '%s': the shape is too large", fn, name);
    n *= (size_t)shape[i];
  }
  *numel = n;
  return TDM_SUCCESS;
}

static tdm_status check_param_args(tdm_engine *e, int module, const char *name,
                                   tdm_dtype dtype, int flags, int *param) {
  const char *fn = "tdm_add_param";
  TDMI_TRY(check_unprepared(e, fn));
  TDMI_TRY(check_name(fn, name));
  TDMI_TRY(tdmi_check_ptr(fn, param, "param"));
  if (module < 0 || module >= e->nmodules)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: '%s': module %d is not registered (%d modules)", fn,
                      name, module, e->nmodules);
  if ((unsigned)dtype >= TDM_NUM_DTYPES)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: '%s': dtype %d is not a tdm_dtype", fn, name,
                      (int)dtype);
  if (dtype != TDM_F32 && dtype != TDM_F64)
    return tdmi_error(TDM_ERR_NOT_SUPPORTED,
                      "%s: '%s': dtype %s; parameters are f32 or f64 (for "
                      "bf16/f16 compute copies of f32 ones, set "
                      "TANDEM_MIXED_PRECISION)", fn, name,
                      tdmi_dtype_name(dtype));
  if (flags & ~TDM_PARAM_MAYBE_UNUSED)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: '%s': unknown flags 0x%x", fn, name, (unsigned)flags);
  for (int i = 0; i < e->nparams; i++)
    if (strcmp(e->params[i].name, name) == 0)
      return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                        "%s: parameter '%s' is already registered (param %d)",
                        fn, name, i);
  return TDM_SUCCESS;
}

tdm_status tdm_add_param(tdm_engine *e, int module, const char *name,
                         tdm_dtype dtype, int ndim, const int64_t *shape,
                         const void *initial, int flags, int *param) {
  const char *fn = "tdm_add_param";
  TDMI_TRY(check_param_args(e, module, name, dtype, flags, param));
  tdmi_param p = {.module = module, .dtype = dtype, .ndim = ndim,
                  .flags = flags, .bucket = -1};
  size_t esize = tdmi_dtype_size(dtype);
  TDMI_TRY(check_shape(fn, name, ndim, shape, esize, &p.numel));
  if (ndim > 0)
    memcpy(p.shape, shape, sizeof *shape * (size_t)ndim);
  tdmi_module *m = &e->modules[module];
  TDMI_TRY(grow((void **)&e->params, &e->params_cap, e->nparams,
                sizeof *e->params));
  int *list = realloc(m->params, sizeof *list * (size_t)(m->nparams + 1));
  if (list)
    m->params = list;
  p.name = strdup(name);
  if (initial && p.name && list && (p.initial = malloc(p.numel * esize)))
    memcpy(p.initial, initial, p.numel * esize);
  if (!list || !p.name || (initial && !p.initial)) {
    free(p.name);
    return tdmi_error(TDM_ERR_NO_MEMORY, "%s: '%s': out of memory", fn, name);
  }
  m->params[m->nparams++] = e->nparams;
  e->params[e->nparams] = p;
  *param = e->nparams++;
  return TDM_SUCCESS;
}

tdm_status tdm_bind_param(tdm_engine *e, int module, const char *name,
                          tdm_dtype dtype, int64_t count, void *data,
                          void *grad) {
  const char *fn = "tdm_bind_param";
  TDMI_TRY(check_unprepared(e, fn));
  TDMI_TRY(check_name(fn, name));
  TDMI_TRY(tdmi_check_ptr(fn, data, "data"));
  if (module == e->nmodules) {
    char index[16];
    snprintf(index, sizeof index, "%d", module);
    TDMI_TRY(tdm_add_module(e, index, &module));
  } else if (module < 0 || module > e->nmodules) {
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: '%s': module %d is neither registered nor the "
                      "next one (%d modules)", fn, name, module, e->nmodules);
  }
  size_t len = strlen(e->modules[module].name) + strlen(name) + 2;
  char *full = malloc(len);
  if (!full)
    return tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", fn);
  snprintf(full, len, "%s.%s", e->modules[module].name, name);
  int param;
  tdm_status st = tdm_add_param(e, module, full, dtype, 1, &count,
                                *(void **)data, 0, &param);
  free(full);
  TDMI_TRY(st);
  e->params[param].bind_data = data;
  e->params[param].bind_grad = grad;
  return TDM_SUCCESS;
}

/* tdm_prepare's last part: the program's bound pointers, once. */
static tdm_status bind_pointers(tdm_engine *e) {
  const char *fn = "tdm_prepare";
  for (int i = 0; i < e->nparams; i++) {
    tdmi_param *p = &e->params[i];
    if (!p->bind_data)
      continue;
    tdm_dtype computes = tdmi_flat_compute_dtype(&e->flat[p->dtype], p->dtype);
    if (computes != p->dtype)
      return tdmi_error(TDM_ERR_NOT_SUPPORTED,
                        "%s: '%s' was bound as %s, but the model computes "
                        "in %s under mixed precision; bind the %s compute "
                        "copy's pointer (tdm_get_param_dtypes), or leave "
                        "TANDEM_MIXED_PRECISION unset", fn, p->name,
                        tdmi_dtype_name(p->dtype), tdmi_dtype_name(computes),
                        tdmi_dtype_name(computes));
    if (e->stage >= 2 && !tdmi_window_grads(e, p))
      return tdmi_error(TDM_ERR_NOT_SUPPORTED,
                        "%s: '%s': pointers that stay valid at ZeRO-%d need "
                        "reserved address space, which this device does not "
                        "have yet (a GPU); use tdm_param_buffers per "
                        "micro-step, or stage 0-1", fn, p->name, e->stage);
    void *data, *grad = NULL;
    TDMI_TRY(tdmi_param_data(e, i, &data));
    if (p->bind_grad)
      TDMI_TRY(tdmi_param_grad(e, i, &grad));
    p->own_data = *p->bind_data;
    *p->bind_data = data;
    if (p->bind_grad) {
      p->own_grad = *p->bind_grad;
      *p->bind_grad = grad;
    }
    p->rebound = 1;
  }
  return TDM_SUCCESS;
}

/* ---- tdm_prepare ---- */

/* One line per module and parameter: what all ranks must agree on. */
static char *describe_registration(const tdm_engine *e, size_t *len) {
  size_t cap = 256 + (size_t)(e->nmodules + e->nparams) * 512;
  char *text = malloc(cap);
  if (!text)
    return NULL;
  /* Settings that shape the buckets and their collectives come first. */
  size_t n = (size_t)snprintf(
      text, cap, "settings: precision %d, reduce dtype %s, buckets %zu/%zu B, "
      "accumulation %d, zero stage %d, offload %d, prefetch %zu B, "
      "persistence %zu\n", (int)e->precision,
      tdmi_dtype_name(e->reduce_dtype), e->first_bucket_cap, e->bucket_cap,
      e->accumulation_steps, e->stage, (int)e->offload, e->prefetch_bytes,
      e->persist_numel);
  for (int i = 0; i < e->nmodules; i++)
    n += (size_t)snprintf(text + n, cap - n, "module %d '%s'\n", i,
                          e->modules[i].name);
  for (int i = 0; i < e->nparams; i++) {
    const tdmi_param *p = &e->params[i];
    n += (size_t)snprintf(text + n, cap - n, "param %d '%s' of module '%s': %s [",
                          i, p->name, e->modules[p->module].name,
                          tdmi_dtype_name(p->dtype));
    for (int d = 0; d < p->ndim; d++)
      n += (size_t)snprintf(text + n, cap - n, "%s%lld", d ? ", " : "",
                            (long long)p->shape[d]);
    n += (size_t)snprintf(text + n, cap - n, "]%s\n",
                          p->flags & TDM_PARAM_MAYBE_UNUSED ? " maybe-unused"
                                                            : "");
  }
  *len = n + 1; /* with the terminating NUL */
  return text;
}

static size_t line_len(const char *s) {
  const char *nl = strchr(s, '\n');
  return nl ? (size_t)(nl - s) : strlen(s);
}

/* Compares this rank's lines with rank 0's; names the first difference. */
static tdm_status compare_registration(const tdm_engine *e, const char *mine,
                                       const char *root) {
  const char *a = mine, *b = root;
  while (*a || *b) {
    size_t la = line_len(a), lb = line_len(b);
    if (la != lb || memcmp(a, b, la) != 0)
      return tdmi_error(TDM_ERR_MISMATCH,
                        "tdm_prepare: registration differs from rank 0: rank "
                        "%d has %.*s; rank 0 has %.*s", e->ctx->rank,
                        la ? (int)la : 7, la ? a : "nothing",
                        lb ? (int)lb : 7, lb ? b : "nothing");
    a += la + (a[la] == '\n');
    b += lb + (b[lb] == '\n');
  }
  return TDM_SUCCESS;
}

static tdm_status check_registration(tdm_engine *e) {
  size_t len = 0;
  char *mine = describe_registration(e, &len);
  uint64_t root_len = len;
  tdm_status st = tdmi_bcast_bytes(e->comm, &root_len, sizeof root_len, 0);
  char *root = st == TDM_SUCCESS ? malloc(root_len) : NULL;
  if (root && e->ctx->rank == 0 && mine)
    memcpy(root, mine, len);
  /* Every rank joins the broadcast, even one that ran out of memory. */
  char *buf = root ? root : malloc(root_len);
  if (st == TDM_SUCCESS && buf)
    st = tdmi_bcast_bytes(e->comm, buf, root_len, 0);
  if (st == TDM_SUCCESS && (!mine || !root))
    st = tdmi_error(TDM_ERR_NO_MEMORY, "tdm_prepare: out of memory");
  if (st == TDM_SUCCESS)
    st = compare_registration(e, mine, root);
  if (!root)
    free(buf);
  free(root);
  free(mine);
  return st;
}

static void log_layout(const tdm_engine *e) {
  for (int b = 0; b < e->nbuckets; b++)
    tdmi_log(e->ctx, TDM_LOG_DEBUG, "engine: bucket %d: %s, %zu bytes, %d "
             "params", b, tdmi_dtype_name(e->buckets[b].grad_dtype),
             e->buckets[b].bytes, e->buckets[b].nparams);
  tdmi_log(e->ctx, TDM_LOG_INFO, "engine: prepared %d params in %d modules, "
           "%d buckets", e->nparams, e->nmodules, e->nbuckets);
}

tdm_status tdm_prepare(tdm_engine *e) {
  const char *fn = "tdm_prepare";
  TDMI_TRY(check_unprepared(e, fn));
  tdm_status st = check_registration(e);
  if (st == TDM_SUCCESS && e->nparams == 0)
    st = tdmi_error(TDM_ERR_INVALID_USAGE, "%s: no parameters are registered",
                    fn);
  if (st == TDM_SUCCESS)
    st = tdmi_layout_build(e);
  st = tdmi_agree(e->comm, st, fn);
  if (st == TDM_SUCCESS)
    st = tdmi_layout_load_initial(e);
  if (st == TDM_SUCCESS)
    st = tdmi_stream_start(e);
  st = tdmi_agree(e->comm, st, fn);
  if (st != TDM_SUCCESS) {
    tdmi_log(e->ctx, TDM_LOG_WARN, "%s", tdm_last_error());
    return st;
  }
  e->prepared = 1;
  log_layout(e);
  st = tdmi_agree(e->comm, bind_pointers(e), fn);
  if (st != TDM_SUCCESS) /* a program that checks nothing still hears */
    tdmi_log(e->ctx, TDM_LOG_WARN, "%s", tdm_last_error());
  return st;
}

/* ---- lookups ---- */

static tdm_status check_param_index(const tdm_engine *e, const char *fn,
                                    int param) {
  if (param < 0 || param >= e->nparams)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "%s: param %d is not registered (%d params)", fn, param,
                      e->nparams);
  return TDM_SUCCESS;
}

tdm_status tdm_param_buffers(tdm_engine *e, int param, void **data,
                             void **grad) {
  const char *fn = "tdm_param_buffers";
  TDMI_TRY(tdmi_engine_check_prepared(e, fn));
  TDMI_TRY(check_param_index(e, fn, param));
  if (data)
    TDMI_TRY(tdmi_param_data(e, param, data));
  if (grad)
    TDMI_TRY(tdmi_param_grad(e, param, grad));
  return TDM_SUCCESS;
}

tdm_status tdm_get_param_dtypes(const tdm_engine *e, int param,
                                tdm_dtype *data_dtype, tdm_dtype *grad_dtype) {
  const char *fn = "tdm_get_param_dtypes";
  TDMI_TRY(tdmi_engine_check(e, fn));
  TDMI_TRY(check_param_index(e, fn, param));
  tdm_dtype d = e->params[param].dtype;
  if (data_dtype)
    *data_dtype = tdmi_flat_compute_dtype(&e->flat[d], d);
  if (grad_dtype)
    *grad_dtype = e->flat[d].grad_dtype;
  return TDM_SUCCESS;
}

tdm_status tdm_find_param(const tdm_engine *e, const char *name, int *param) {
  const char *fn = "tdm_find_param";
  TDMI_TRY(tdmi_engine_check(e, fn));
  TDMI_TRY(tdmi_check_ptr(fn, name, "name"));
  TDMI_TRY(tdmi_check_ptr(fn, param, "param"));
  for (int i = 0; i < e->nparams; i++)
    if (strcmp(e->params[i].name, name) == 0) {
      *param = i;
      return TDM_SUCCESS;
    }
  return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                    "%s: no parameter is named '%s'", fn, name);
}

tdm_status tdm_get_bucket_count(const tdm_engine *e, int *count) {
  TDMI_TRY(tdmi_engine_check_prepared(e, "tdm_get_bucket_count"));
  TDMI_TRY(tdmi_check_ptr("tdm_get_bucket_count", count, "count"));
  *count = e->nbuckets;
  return TDM_SUCCESS;
}

tdm_status tdm_get_param_bucket(const tdm_engine *e, int param, int *bucket) {
  const char *fn = "tdm_get_param_bucket";
  TDMI_TRY(tdmi_engine_check_prepared(e, fn));
  TDMI_TRY(check_param_index(e, fn, param));
  TDMI_TRY(tdmi_check_ptr(fn, bucket, "bucket"));
  *bucket = e->params[param].bucket;
  return TDM_SUCCESS;
}

tdm_status tdm_get_progress_mode(const tdm_engine *e, tdm_progress_mode *mode) {
  TDMI_TRY(tdmi_engine_check(e, "tdm_get_progress_mode"));
  TDMI_TRY(tdmi_check_ptr("tdm_get_progress_mode", mode, "mode"));
  *mode = e->mode;
  return TDM_SUCCESS;
}

/* ---- the optimizer's view ---- */

/* Stage 0: one span per dtype, the whole flat buffers.  ZeRO: one span
 * per bucket, this rank's chunk. */
int tdmi_engine_span_count(const tdm_engine *e) {
  if (e->stage > 0)
    return e->nbuckets;
  int n = 0;
  for (int d = 0; d < TDM_NUM_DTYPES; d++)
    n += e->flat[d].count > 0;
  return n;
}

static void *at(void *base, size_t i, tdm_dtype dtype) {
  return base ? (char *)base + i * tdmi_dtype_size(dtype) : NULL;
}

static tdmi_span shard_span(const tdm_engine *e, const tdmi_bucket *b) {
  const tdmi_flat *f = &e->flat[b->dtype];
  size_t off = tdmi_own_first(e, b);
  tdm_dtype d = b->dtype, cd = f->copy_dtype, gd = b->grad_dtype;
  tdmi_span s = {d, NULL, NULL, gd, NULL, cd, off, b->chunk, e->offloaded};
  s.data = f->master ? at(f->master, b->shard_first, d) : at(f->data, off, d);
  if (e->offloaded) { /* the host side: the engine moves the rest */
    s.grad = at(f->host_grad, b->shard_first, gd);
    s.copy = at(f->host_copy ? f->host_copy : f->copied ? f->shard_copy : NULL,
                b->shard_first, cd);
    return s;
  }
  s.grad = f->shard_grad ? at(f->shard_grad, b->shard_first, gd)
                         : at(f->grad, off, gd);
  if (f->copied)
    s.copy = f->shard_copy ? at(f->shard_copy, b->shard_first, cd)
                           : at(f->copy, off, cd);
  return s;
}

tdmi_span tdmi_engine_span(const tdm_engine *e, int i) {
  if (e->stage > 0)
    return shard_span(e, &e->buckets[i]);
  for (int d = 0; d < TDM_NUM_DTYPES; d++) {
    const tdmi_flat *f = &e->flat[d];
    if (f->count == 0 || i-- > 0)
      continue;
    return (tdmi_span){d, f->data, f->grad, f->grad_dtype, f->copy,
                       f->copy_dtype, 0, f->count, 0};
  }
  return (tdmi_span){0};
}

void tdmi_engine_param_range(const tdm_engine *e, int i, tdm_dtype *dtype,
                             size_t *first, size_t *count) {
  *dtype = e->params[i].dtype;
  *first = e->params[i].first;
  *count = e->params[i].numel;
}

tdm_status tdmi_engine_sum_partials(tdm_engine *e, double *values, int n) {
  if (e->stage == 0) /* DDP: every rank holds every value */
    return TDM_SUCCESS;
  return tdmi_sum_doubles(e->comm, values, n);
}
