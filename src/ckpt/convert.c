/* convert.c - tdm_weights_convert: safetensors weights rewritten as one
 * file or as shards with their index, optionally in another floating
 * dtype (tandem convert).  One tensor is in memory at a time; every file
 * is written under a temporary name and renamed once complete, so a
 * failure never leaves a file that looks whole. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt.h"

typedef struct {
  const char *file;            /* the input file */
  uint64_t data_start;
  const tdmi_st_tensor *t;
  tdm_dtype to;                /* its dtype in the output */
  uint64_t out_bytes;
} source;

typedef struct {
  char **files;
  int nfiles;
  tdmi_st_header *headers;
  source *v;
  int n;
} inputs;

static void inputs_free(inputs *in) {
  for (int f = 0; f < in->nfiles; f++)
    tdmi_st_header_free(&in->headers[f]);
  tdmi_strings_free(in->files, in->nfiles);
  free(in->headers);
  free(in->v);
}

static int is_float(int d) {
  return d == TDM_F32 || d == TDM_F64 || d == TDM_BF16 || d == TDM_F16;
}

/* Every tensor of the input files, in file and data order. */
static tdm_status read_inputs(const char *path, int dtype, inputs *in) {
  memset(in, 0, sizeof *in);
  char *lines = NULL, *save = NULL;
  TDMI_TRY(tdmi_model_files_local(path, &lines));
  for (char *p = lines; *p; p++)
    in->nfiles += *p == '\n';
  in->files = calloc((size_t)in->nfiles + 1, sizeof *in->files);
  in->headers = calloc((size_t)in->nfiles + 1, sizeof *in->headers);
  tdm_status st = in->files && in->headers ? TDM_SUCCESS : tdmi_ckpt_no_memory();
  int f = 0, total = 0;
  for (char *file = strtok_r(lines, "\n", &save); st == TDM_SUCCESS && file;
       file = strtok_r(NULL, "\n", &save), f++) {
    in->files[f] = strdup(file);
    st = in->files[f] ? tdmi_st_load_header(file, &in->headers[f])
                      : tdmi_ckpt_no_memory();
    total += st == TDM_SUCCESS ? in->headers[f].ntensors : 0;
  }
  free(lines);
  in->v = st == TDM_SUCCESS ? calloc((size_t)total + 1, sizeof *in->v) : NULL;
  if (st == TDM_SUCCESS && !in->v)
    st = tdmi_ckpt_no_memory();
  for (f = 0; st == TDM_SUCCESS && f < in->nfiles; f++)
    for (int i = 0; st == TDM_SUCCESS && i < in->headers[f].ntensors; i++) {
      const tdmi_st_tensor *t = &in->headers[f].tensors[i];
      for (int k = 0; k < in->n; k++)
        if (strcmp(in->v[k].t->name, t->name) == 0)
          st = tdmi_error(TDM_ERR_FORMAT, "%s: tensor '%s' is also in %s",
                          in->files[f], t->name, in->v[k].file);
      if (st == TDM_SUCCESS && t->dtype < 0)
        st = tdmi_error(TDM_ERR_NOT_SUPPORTED, "%s: tensor '%s' has dtype "
                        "%s, which tandem cannot hold", in->files[f], t->name,
                        t->dtype_name);
      if (st != TDM_SUCCESS)
        break;
      source *s = &in->v[in->n++];
      s->file = in->files[f];
      s->data_start = in->headers[f].data_start;
      s->t = t;
      s->to = dtype != TDM_UNSET && is_float(t->dtype) ? (tdm_dtype)dtype
                                                       : (tdm_dtype)t->dtype;
      s->out_bytes = t->numel * tdmi_dtype_size(s->to);
    }
  if (st != TDM_SUCCESS)
    inputs_free(in);
  return st;
}

static tdm_status read_at(const char *file, uint64_t off, void *bytes,
                          size_t n) {
  int fd = open(file, O_RDONLY);
  if (fd < 0)
    return tdmi_io_error("cannot open", file);
  size_t got = 0;
  while (got < n) {
    ssize_t r = pread(fd, (char *)bytes + got, n - got, (off_t)(off + got));
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  int saved = errno;
  close(fd);
  errno = saved;
  return got == n ? TDM_SUCCESS
                  : tdmi_error(TDM_ERR_FORMAT, "%s: ends inside the data of "
                               "a tensor", file);
}

/* One tensor: read, converted, appended to fd. */
static tdm_status copy_tensor(const source *s, int fd, const char *path) {
  size_t in_bytes = (size_t)(s->t->end - s->t->begin);
  void *in = malloc(in_bytes ? in_bytes : 1);
  void *out = (int)s->to == s->t->dtype ? in : malloc(s->out_bytes ? s->out_bytes : 1);
  tdm_status st = in && out ? TDM_SUCCESS : tdmi_ckpt_no_memory();
  if (st == TDM_SUCCESS)
    st = read_at(s->file, s->data_start + s->t->begin, in, in_bytes);
  if (st == TDM_SUCCESS && out != in)
    st = tdmi_ckpt_convert((tdm_dtype)s->t->dtype, in, s->to, out,
                           (size_t)s->t->numel);
  if (st == TDM_SUCCESS)
    st = tdmi_write_fd(fd, out, (size_t)s->out_bytes, path);
  if (out != in)
    free(out);
  free(in);
  return st;
}

/* Tensors [first, last) of in as the safetensors file path. */
static tdm_status write_file(const inputs *in, int first, int last,
                             const char *path) {
  tdmi_st_builder *b = NULL;
  TDMI_TRY(tdmi_st_build_start(&b));
  tdm_status st = TDM_SUCCESS;
  for (int i = first; st == TDM_SUCCESS && i < last; i++) {
    uint64_t begin = 0;
    st = tdmi_st_build_add(b, in->v[i].t->name, in->v[i].to,
                           in->v[i].t->ndim, in->v[i].t->shape, &begin);
  }
  static const char *const keys[] = {"format"}, *const values[] = {"pt"};
  uint8_t *head = NULL;
  size_t len = 0;
  if (st == TDM_SUCCESS)
    st = tdmi_st_build_finish(b, keys, values, 1, &head, &len);
  tdmi_st_build_free(b);
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid());
  int fd = st == TDM_SUCCESS ? open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644) : -1;
  if (st == TDM_SUCCESS && fd < 0)
    st = tdmi_io_error("cannot create", tmp);
  if (st == TDM_SUCCESS)
    st = tdmi_write_fd(fd, head, len, tmp);
  for (int i = first; st == TDM_SUCCESS && i < last; i++)
    st = copy_tensor(&in->v[i], fd, tmp);
  if (st == TDM_SUCCESS && fsync(fd) != 0)
    st = tdmi_io_error("fsync failed", tmp);
  if (fd >= 0 && close(fd) != 0 && st == TDM_SUCCESS)
    st = tdmi_io_error("close failed", tmp);
  if (st == TDM_SUCCESS && rename(tmp, path) != 0)
    st = tdmi_io_error("cannot rename to it", path);
  if (st != TDM_SUCCESS && fd >= 0)
    unlink(tmp);
  free(head);
  return st;
}

/* Shards of at most max data bytes (a larger tensor alone); first[k] is
 * shard k's first tensor, first[nshards] == n. */
static int plan(const inputs *in, uint64_t max, int *first) {
  int nshards = 0;
  uint64_t used = 0;
  for (int i = 0; i < in->n; i++) {
    if (i == 0 || used + in->v[i].out_bytes > max) {
      first[nshards++] = i;
      used = 0;
    }
    used += in->v[i].out_bytes;
  }
  first[nshards] = in->n;
  return nshards;
}

static tdm_status write_shards(const inputs *in, uint64_t max,
                               const char *dir) {
  if (mkdir(dir, 0755) != 0 && errno != EEXIST)
    return tdmi_io_error("cannot create the folder", dir);
  int *first = calloc((size_t)in->n + 2, sizeof *first);
  const char **names = calloc((size_t)in->n + 1, sizeof *names);
  const char **files = calloc((size_t)in->n + 1, sizeof *files);
  char(*shard)[64] = calloc((size_t)in->n + 1, sizeof *shard);
  tdm_status st = first && names && files && shard ? TDM_SUCCESS
                                                   : tdmi_ckpt_no_memory();
  int nshards = st == TDM_SUCCESS ? plan(in, max, first) : 0;
  uint64_t total = 0;
  for (int k = 0; st == TDM_SUCCESS && k < nshards; k++) {
    snprintf(shard[k], sizeof shard[k], "model-%05d-of-%05d.safetensors",
             k + 1, nshards);
    char *path = tdmi_path_in(dir, shard[k]);
    st = path ? write_file(in, first[k], first[k + 1], path)
              : tdmi_ckpt_no_memory();
    free(path);
    for (int i = first[k]; i < first[k + 1]; i++) {
      names[i] = in->v[i].t->name;
      files[i] = shard[k];
      total += in->v[i].out_bytes;
    }
  }
  char *json = NULL;
  if (st == TDM_SUCCESS)
    st = tdmi_index_dump(total, names, files, in->n, &json);
  char *index = st == TDM_SUCCESS ? tdmi_path_in(dir, TDMI_CKPT_INDEX) : NULL;
  char tmp[4200];
  if (index)
    snprintf(tmp, sizeof tmp, "%s.tmp-%d", index, (int)getpid());
  if (st == TDM_SUCCESS)
    st = index ? tdmi_write_file(tmp, json, strlen(json))
               : tdmi_ckpt_no_memory();
  if (st == TDM_SUCCESS && rename(tmp, index) != 0)
    st = tdmi_io_error("cannot rename to it", index);
  free(index);
  free(json);
  free(first), free(names), free(files), free(shard);
  return st;
}

tdm_status tdm_weights_convert(const char *in_path, const char *out_path,
                               int dtype, uint64_t max_shard_bytes) {
  const char *fn = "tdm_weights_convert";
  TDMI_CHECK_PTR(in_path, fn);
  TDMI_CHECK_PTR(out_path, fn);
  if (dtype != TDM_UNSET && dtype != TDM_F32 && dtype != TDM_BF16 &&
      dtype != TDM_F16)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: dtype %d is not "
                      "TDM_UNSET, TDM_F32, TDM_BF16 or TDM_F16", fn, dtype);
  inputs in;
  TDMI_TRY(read_inputs(in_path, dtype, &in));
  tdm_status st = in.n == 0 ? tdmi_error(TDM_ERR_FORMAT, "%s: %s holds no "
                                         "tensors", fn, in_path)
                  : max_shard_bytes ? write_shards(&in, max_shard_bytes, out_path)
                                    : write_file(&in, 0, in.n, out_path);
  inputs_free(&in);
  return st;
}
