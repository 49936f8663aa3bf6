/* load.c - tdm_load_state and tdm_load_weights: the files rank 0 finds
 * and checks, the parts each rank owns now read from them, counters and
 * RNG offsets restored, then the engine's copies refreshed. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt.h"

#define MAX_STATE_JSON (16u << 20)
#define MAX_INDEX_JSON (64u << 20)


/* Rank 0 reads a small file (n <= max), every rank gets its bytes. */
static tdm_status read_shared(MPI_Comm comm, const char *path, size_t max,
                              char **text, size_t *n) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  unsigned long long len = 0;
  *text = NULL;
  tdm_status st = rank == 0 ? tdmi_read_file(path, max, text, n)
                            : TDM_SUCCESS;
  if (st == TDM_SUCCESS && rank == 0)
    len = *n;
  TDMI_TRY(tdmi_agree(comm, st, path));
  TDMI_TRY(tdmi_bcast_bytes(comm, &len, sizeof len, 0));
  if (rank != 0 && !(*text = malloc(len + 1)))
    st = tdmi_ckpt_no_memory();
  st = tdmi_agree(comm, st, path);
  if (st == TDM_SUCCESS)
    st = tdmi_bcast_bytes(comm, *text, len, 0);
  if (st == TDM_SUCCESS) {
    (*text)[len] = '\0';
    *n = len;
  } else {
    free(*text);
    *text = NULL;
  }
  return st;
}

static int is_dir(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static int exists(const char *dir, const char *name) {
  char *p = tdmi_path_in(dir, name);
  struct stat sb;
  int yes = p && stat(p, &sb) == 0;
  free(p);
  return yes;
}

/* Rank 0: the checkpoint folder path names (itself, or the newest
 * complete one under it), verified against its done marker. */
static tdm_status resolve_checkpoint(const char *path, char *dir, size_t cap) {
  if (!is_dir(path))
    return tdmi_error(TDM_ERR_IO, "tdm_load_state: %s is not a folder", path);
  if (exists(path, TDMI_CKPT_STATE) || exists(path, TDMI_CKPT_DONE))
    snprintf(dir, cap, "%s", path);
  else
    TDMI_TRY(tdm_latest_checkpoint(path, dir, cap));
  return tdmi_commit_verify(dir);
}

/* Which safetensors files hold the model at path (a file, an
 * index, or a folder with either), as "file\n" lines; base is the folder
 * the index names files in. */
tdm_status tdmi_model_files_local(const char *path, char **lines) {
  char *index = NULL, *text = NULL;
  const char *base = path;
  size_t n = 0;
  char *dir = NULL;
  *lines = NULL;
  if (is_dir(path)) {
    if (exists(path, TDMI_CKPT_INDEX))
      index = tdmi_path_in(path, TDMI_CKPT_INDEX);
    else if (exists(path, TDMI_CKPT_MODEL))
      *lines = tdmi_path_in(path, TDMI_CKPT_MODEL);
    else
      return tdmi_error(TDM_ERR_IO, "%s: holds neither %s nor %s", path,
                        TDMI_CKPT_MODEL, TDMI_CKPT_INDEX);
  } else {
    size_t len = strlen(path);
    if (len < 5 || strcmp(path + len - 5, ".json") != 0)
      *lines = strdup(path);
    else if ((index = strdup(path)) && (dir = strdup(path))) {
      char *slash = strrchr(dir, '/');
      if (slash)
        *slash = '\0';
      base = slash ? dir : ".";
    }
  }
  tdm_status st = TDM_SUCCESS;
  if (index) {
    char **files = NULL;
    int nfiles = 0;
    st = tdmi_read_file(index, MAX_INDEX_JSON, &text, &n);
    if (st == TDM_SUCCESS)
      st = tdmi_index_parse(index, text, n, &files, &nfiles);
    size_t cap = 1;
    for (int i = 0; st == TDM_SUCCESS && i < nfiles; i++)
      cap += strlen(base) + strlen(files[i]) + 2;
    if (st == TDM_SUCCESS && (*lines = calloc(cap, 1)))
      for (int i = 0; i < nfiles; i++)
        snprintf(*lines + strlen(*lines), cap - strlen(*lines), "%s/%s\n",
                 base, files[i]);
    tdmi_strings_free(files, nfiles);
  } else if (*lines) {
    size_t len = strlen(*lines);
    char *grown = realloc(*lines, len + 2);
    if (grown)
      memcpy(grown + len, "\n", 2);
    *lines = grown;
  }
  if (st == TDM_SUCCESS && !*lines)
    st = tdmi_ckpt_no_memory();
  free(index);
  free(dir);
  free(text);
  return st;
}

/* The same on every rank. */
static tdm_status model_files(MPI_Comm comm, const char *path, char **lines) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  unsigned long long len = 0;
  tdm_status st = rank == 0 ? tdmi_model_files_local(path, lines) : TDM_SUCCESS;
  if (rank == 0 && st == TDM_SUCCESS)
    len = strlen(*lines);
  TDMI_TRY(tdmi_agree(comm, st, path));
  TDMI_TRY(tdmi_bcast_bytes(comm, &len, sizeof len, 0));
  if (rank != 0 && !(*lines = calloc(len + 1, 1)))
    st = tdmi_ckpt_no_memory();
  st = tdmi_agree(comm, st, path);
  if (st == TDM_SUCCESS)
    st = tdmi_bcast_bytes(comm, *lines, len, 0);
  return st;
}

/* Checks tensor t of file against parameter p; *dtype is the dtype to
 * read it in. */
static tdm_status match(const char *file, const tdmi_st_tensor *t,
                        const tdmi_param *p, int convert_ok) {
  int same = t->ndim == p->ndim;
  for (int d = 0; same && d < p->ndim; d++)
    same = t->shape[d] == p->shape[d];
  if (!same) {
    char want[128] = "", got[128] = "";
    for (int d = 0; d < p->ndim; d++)
      snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld",
               d ? ", " : "", (long long)p->shape[d]);
    for (int d = 0; d < t->ndim; d++)
      snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld",
               d ? ", " : "", (long long)t->shape[d]);
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: tensor \"%s\" has "
                      "shape [%s], the parameter \"%s\" has [%s]", file,
                      t->name, got, p->name, want);
  }
  int floating = t->dtype == TDM_F32 || t->dtype == TDM_F64 ||
                 t->dtype == TDM_BF16 || t->dtype == TDM_F16;
  if (t->dtype == (int)p->dtype || (convert_ok && floating))
    return TDM_SUCCESS;
  return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: tensor \"%s\" is %s, the "
                    "parameter \"%s\" is %s%s", file, t->name, t->dtype_name,
                    p->name, tdmi_st_dtype_name(p->dtype),
                    convert_ok || !floating ? ""
                                            : " (TDM_WEIGHTS_CONVERT converts)");
}

/* A tensor to load: wanted[i] names it, found[i] says it was. */
typedef struct {
  tdmi_ckpt_item *v;
  int n;
  int *found;
} wanted;

/* Loads from file every wanted tdmi_ckpt_item it holds and has not been found. */
static tdm_status load_file(const tdmi_ckpt_ctx *c, const char *file, wanted *w,
                            int convert_ok) {
  tdmi_st_header h = {0};
  TDMI_TRY(tdmi_tensorio_header(c->e->comm, file, &h));
  tdmi_ckpt_item *items = calloc((size_t)w->n + 1, sizeof *items);
  uint64_t *begins = calloc((size_t)w->n + 1, sizeof *begins);
  int n = 0;
  tdm_status st = items && begins ? TDM_SUCCESS : tdmi_ckpt_no_memory();
  for (int i = 0; st == TDM_SUCCESS && i < w->n; i++) {
    const tdmi_st_tensor *t = w->found[i] ? NULL
                                          : tdmi_st_find(&h, w->v[i].name);
    if (!t)
      continue;
    st = match(file, t, &c->e->params[w->v[i].param], convert_ok);
    items[n] = w->v[i];
    items[n].dtype = (tdm_dtype)t->dtype;
    begins[n++] = t->begin;
    w->found[i] = 1;
  }
  /* Every rank parsed the same header: the same verdict everywhere. */
  if (st == TDM_SUCCESS)
    st = tdmi_ckpt_move_file(c, file, items, n, begins, h.data_start, NULL, 0);
  free(items);
  free(begins);
  tdmi_st_header_free(&h);
  return st;
}

static tdm_status check_found(const wanted *w, const char *where) {
  for (int i = 0; i < w->n; i++)
    if (!w->found[i])
      return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: no tensor \"%s\"",
                        where, w->v[i].name);
  return TDM_SUCCESS;
}

/* Loads the wanted items from each file of lines ("file\n" each). */
static tdm_status load_files(const tdmi_ckpt_ctx *c, char *lines, wanted *w,
                             int convert_ok, const char *where) {
  tdm_status st = TDM_SUCCESS;
  for (char *f = lines, *end; st == TDM_SUCCESS && (end = strchr(f, '\n'));
       f = end + 1) {
    *end = '\0';
    st = load_file(c, f, w, convert_ok);
  }
  return st == TDM_SUCCESS ? check_found(w, where) : st;
}

static tdm_status wanted_make(tdmi_ckpt_item *v, int n, wanted *w) {
  w->v = v;
  w->n = n;
  w->found = calloc((size_t)n + 1, sizeof *w->found);
  return w->found ? TDM_SUCCESS : tdmi_ckpt_no_memory();
}

/* The model's values from the model files at path. */
static tdm_status load_values(const tdmi_ckpt_ctx *c, const char *path,
                              int weights_dtype, int convert_ok,
                              const char *where) {
  tdmi_ckpt_item *items = NULL;
  TDMI_TRY(tdmi_ckpt_model_items(c->e, TDM_UNSET, &items));
  int n = 0; /* the parameters the model file holds in their own dtype */
  for (int i = 0; i < c->e->nparams; i++)
    if (weights_dtype == TDM_UNSET || weights_dtype == (int)items[i].dtype)
      items[n++] = items[i];
    else
      free(items[i].name);
  wanted w;
  char *lines = NULL;
  tdm_status st = wanted_make(items, n, &w);
  if (st == TDM_SUCCESS && n > 0)
    st = model_files(c->e->comm, path, &lines);
  if (st == TDM_SUCCESS && n > 0)
    st = load_files(c, lines, &w, convert_ok, where);
  free(lines);
  free(w.found);
  tdmi_ckpt_items_free(items, n);
  return st;
}

/* optimizer.safetensors: the state buffers, and the masters the model
 * file holds in another dtype. */
static tdm_status load_optimizer(const tdmi_ckpt_ctx *c, const char *dir,
                                 int weights_dtype) {
  tdmi_ckpt_item *items = NULL;
  int n = 0;
  TDMI_TRY(tdmi_ckpt_optimizer_items(c, weights_dtype, &items, &n));
  wanted w;
  char *path = tdmi_path_in(dir, TDMI_CKPT_OPTIMIZER);
  size_t len = path ? strlen(path) : 0;
  char *lines = path ? realloc(path, len + 2) : NULL;
  if (lines)
    memcpy(lines + len, "\n", 2);
  else
    free(path);
  tdm_status st = lines ? wanted_make(items, n, &w) : tdmi_ckpt_no_memory();
  if (st == TDM_SUCCESS && n > 0)
    st = load_files(c, lines, &w, 0, dir);
  if (lines)
    free(w.found);
  free(lines);
  tdmi_ckpt_items_free(items, n);
  return st;
}

static tdm_status restore_counters(const tdmi_ckpt_ctx *c, const tdmi_ckpt_state *s) {
  tdm_optimizer *opt = c->opt;
  if (!opt)
    return TDM_SUCCESS;
  opt->steps = s->opt_steps;
  opt->skipped = s->opt_skipped;
  opt->last_skipped = s->last_skipped;
  if (opt->scaling && s->scaling) {
    opt->scale = s->loss_scale;
    opt->growth_tracker = s->growth_tracker;
    tdmi_engine_set_loss_scale(c->e, opt->scale);
  }
  return TDM_SUCCESS;
}

static tdm_status restore_rngs(const tdmi_ckpt_ctx *c, const tdmi_ckpt_state *s,
                               const tdm_checkpoint_options *o) {
  if (o->rng_count > s->nrngs)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "tdm_load_state: "
                      "options->rng_count = %d, but the checkpoint holds %d "
                      "RNG streams", o->rng_count, s->nrngs);
  /* A rank beyond the saved world size continues rank 0's position. */
  int r = c->e->ctx->rank < s->world_size ? c->e->ctx->rank : 0;
  for (int i = 0; i < o->rng_count; i++)
    TDMI_TRY(tdm_rng_set_offset(o->rngs[i],
                                s->rng_offsets[(size_t)i * s->world_size + r]));
  return TDM_SUCCESS;
}

static tdm_status restore_user(const tdmi_ckpt_ctx *c, const char *dir,
                               const tdmi_ckpt_state *s,
                               const tdm_checkpoint_options *o) {
  if (o->user_out)
    *o->user_out = (size_t)s->user_bytes;
  if (!o->user_buffer || s->user_bytes == 0)
    return TDM_SUCCESS;
  tdm_status st = TDM_SUCCESS;
  if (o->user_capacity < s->user_bytes)
    st = tdmi_error(TDM_ERR_INVALID_ARGUMENT, "tdm_load_state: "
                    "options->user_capacity = %zu, the saved user data has "
                    "%llu bytes", o->user_capacity,
                    (unsigned long long)s->user_bytes);
  TDMI_TRY(tdmi_agree(c->e->comm, st, "tdm_load_state (user data)"));
  char *path = tdmi_path_in(dir, TDMI_CKPT_USER), *bytes = NULL;
  size_t n = 0;
  st = path ? read_shared(c->e->comm, path, (size_t)s->user_bytes, &bytes, &n)
            : tdmi_ckpt_no_memory();
  if (st == TDM_SUCCESS && n != s->user_bytes)
    st = tdmi_error(TDM_ERR_FORMAT, "%s: %zu bytes, state.json says %llu",
                    path, n, (unsigned long long)s->user_bytes);
  if (st == TDM_SUCCESS)
    memcpy(o->user_buffer, bytes, n);
  free(bytes);
  free(path);
  return st;
}

static tdm_status check_compatible(const tdmi_ckpt_ctx *c, const char *dir,
                                   const tdmi_ckpt_state *s) {
  static const char *const kinds[] = {"sgd", "adam", "adamw", "lion",
                                      "custom"};
  if (!c->opt)
    return TDM_SUCCESS;
  if (!s->has_optimizer)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "tdm_load_state: %s was "
                      "saved without an optimizer; pass NULL, or "
                      "tdm_load_weights for the values only", dir);
  if (s->optimizer_kind != (int)c->opt->o.kind)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "tdm_load_state: %s holds "
                      "the state of a %s optimizer, this one is %s", dir,
                      kinds[s->optimizer_kind], kinds[c->opt->o.kind]);
  return TDM_SUCCESS;
}

/* Every rank parsed the same state.json: the same verdict, no agreement
 * needed. */
static tdm_status restore_samplers(const tdmi_ckpt_state *s,
                                   tdmi_ckpt_samplers *samplers) {
  if (samplers->count > s->nsamplers)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "tdm_load_state: "
                      "options->sampler_count = %d, but the checkpoint holds "
                      "%d sampler positions", samplers->count, s->nsamplers);
  if (samplers->count > 0)
    memcpy(samplers->pos, s->sampler_pos,
           2 * (size_t)samplers->count * sizeof *samplers->pos);
  return TDM_SUCCESS;
}

static tdm_status load_body(const tdmi_ckpt_ctx *c, const char *dir,
                            const tdm_checkpoint_options *o,
                            tdmi_ckpt_samplers *samplers) {
  char *json = NULL, *path = tdmi_path_in(dir, TDMI_CKPT_STATE);
  size_t n = 0;
  tdmi_ckpt_state s = {0};
  tdm_status st = path ? read_shared(c->e->comm, path, MAX_STATE_JSON, &json,
                                     &n)
                       : tdmi_ckpt_no_memory();
  if (st == TDM_SUCCESS) /* the same text everywhere: the same verdict */
    st = tdmi_state_parse(path, json, n, &s);
  if (st == TDM_SUCCESS)
    st = check_compatible(c, dir, &s);
  if (st == TDM_SUCCESS)
    st = restore_samplers(&s, samplers);
  if (st == TDM_SUCCESS)
    st = load_values(c, dir, s.weights_dtype, 0, dir);
  if (st == TDM_SUCCESS && (c->opt || s.weights_dtype != TDM_UNSET))
    st = load_optimizer(c, dir, s.weights_dtype);
  if (st == TDM_SUCCESS)
    st = tdmi_agree(c->e->comm, restore_rngs(c, &s, o), "tdm_load_state");
  if (st == TDM_SUCCESS)
    st = restore_user(c, dir, &s, o);
  if (st == TDM_SUCCESS)
    st = restore_counters(c, &s);
  if (st == TDM_SUCCESS)
    st = tdmi_engine_values_loaded(c->e);
  tdmi_state_free(&s);
  free(json);
  free(path);
  return st;
}

tdm_status tdmi_load_state(tdm_engine *e, tdm_optimizer *opt, const char *path,
                           const tdm_checkpoint_options *options,
                           tdmi_ckpt_samplers *samplers) {
  const char *fn = "tdm_load_state";
  tdm_checkpoint_options o;
  tdm_status st = tdmi_ckpt_check_between_steps(e, opt, fn);
  if (st == TDM_SUCCESS)
    st = samplers->status;
  if (st == TDM_SUCCESS)
    st = tdmi_check_ptr(fn, path, "path");
  if (st == TDM_SUCCESS)
    st = tdmi_ckpt_read_options(options, &o, fn);
  if (tdmi_engine_check(e, fn) != TDM_SUCCESS)
    return st;
  TDMI_TRY(tdmi_agree(e->comm, st, fn));
  char dir[4096] = "";
  st = e->ctx->rank == 0 ? resolve_checkpoint(path, dir, sizeof dir)
                         : TDM_SUCCESS;
  TDMI_TRY(tdmi_agree(e->comm, st, fn));
  TDMI_TRY(tdmi_ckpt_share_string(e->comm, dir, sizeof dir));
  const tdmi_ckpt_ctx c = {e, opt, 1};
  TDMI_TRY(load_body(&c, dir, &o, samplers));
  tdmi_ckpt_put_path(&o, dir);
  return TDM_SUCCESS;
}

tdm_status tdm_load_weights(tdm_engine *e, const char *path, int flags) {
  const char *fn = "tdm_load_weights";
  tdm_status st = tdmi_ckpt_check_between_steps(e, NULL, fn);
  if (st == TDM_SUCCESS)
    st = tdmi_check_ptr(fn, path, "path");
  if (st == TDM_SUCCESS && (flags & ~TDM_WEIGHTS_CONVERT))
    st = tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: flags = %d; expected 0 "
                    "or TDM_WEIGHTS_CONVERT", fn, flags);
  if (tdmi_engine_check(e, fn) != TDM_SUCCESS)
    return st;
  TDMI_TRY(tdmi_agree(e->comm, st, fn));
  const tdmi_ckpt_ctx c = {e, NULL, 1};
  TDMI_TRY(load_values(&c, path, TDM_UNSET, flags & TDM_WEIGHTS_CONVERT,
                       path));
  return tdmi_engine_values_loaded(e);
}

