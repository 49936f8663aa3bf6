/* commit.c - a checkpoint folder appears whole or not at all.  Files are
 * written under a temporary name, fsynced with their folder, the folder
 * is renamed into place, and only then the done marker is written: a
 * crash at any moment leaves every earlier checkpoint as it was.  The
 * marker lists each file with its size, so a truncated file is noticed
 * before anything is read. */
#define _GNU_SOURCE /* renameat2 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt.h"

#define MAX_MARKER (1u << 20)

static tdm_status fsync_path(const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0)
    return tdmi_io_error("cannot open to fsync", path);
  int rc = fsync(fd);
  close(fd);
  return rc == 0 ? TDM_SUCCESS : tdmi_io_error("fsync failed", path);
}

static char *join(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *s = malloc(n);
  if (s)
    snprintf(s, n, "%s/%s", dir, name);
  return s;
}

tdm_status tdmi_write_fd(int fd, const void *bytes, size_t n,
                         const char *path) {
  for (const char *p = bytes; n > 0;) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return tdmi_io_error("write failed", path);
    p += w;
    n -= (size_t)w;
  }
  return TDM_SUCCESS;
}

tdm_status tdmi_write_file(const char *path, const void *bytes, size_t n) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0)
    return tdmi_io_error("cannot create", path);
  tdm_status st = tdmi_write_fd(fd, bytes, n, path);
  if (st != TDM_SUCCESS) {
    close(fd);
    return st;
  }
  int rc = fsync(fd);
  if (close(fd) != 0 || rc != 0)
    return tdmi_io_error("fsync failed", path);
  return TDM_SUCCESS;
}

tdm_status tdmi_read_file(const char *path, size_t max, char **bytes,
                          size_t *n) {
  FILE *fp = fopen(path, "rb");
  if (!fp)
    return tdmi_io_error("cannot open", path);
  struct stat sb;
  tdm_status st = TDM_SUCCESS;
  if (fstat(fileno(fp), &sb) != 0)
    st = tdmi_io_error("cannot stat", path);
  else if ((uint64_t)sb.st_size > max)
    st = tdmi_error(TDM_ERR_FORMAT, "%s: %lld bytes, more than the %zu a "
                    "file of this kind may have", path,
                    (long long)sb.st_size, max);
  else if (!(*bytes = malloc((size_t)sb.st_size + 1)))
    st = tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", path);
  else if (fread(*bytes, 1, (size_t)sb.st_size, fp) != (size_t)sb.st_size) {
    st = tdmi_io_error("read failed", path);
    free(*bytes);
  }
  fclose(fp);
  if (st == TDM_SUCCESS) {
    (*bytes)[sb.st_size] = '\0';
    *n = (size_t)sb.st_size;
  }
  return st;
}

/* Calls fn(path of entry, its name, arg) for each entry of dir but "."
 * and "..", until one fails. */
typedef tdm_status (*entry_fn)(const char *path, const char *name, void *arg);

static tdm_status each_entry(const char *dir, entry_fn fn, void *arg) {
  DIR *d = opendir(dir);
  if (!d)
    return tdmi_io_error("cannot open folder", dir);
  tdm_status st = TDM_SUCCESS;
  for (struct dirent *ent; st == TDM_SUCCESS && (ent = readdir(d));) {
    if (!strcmp(ent->d_name, ".") || !strcmp(ent->d_name, ".."))
      continue;
    char *path = join(dir, ent->d_name);
    st = path ? fn(path, ent->d_name, arg)
              : tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory");
    free(path);
  }
  closedir(d);
  return st;
}

static tdm_status remove_entry(const char *path, const char *name, void *arg) {
  (void)name;
  (void)arg;
  return tdmi_remove_tree(path);
}

tdm_status tdmi_remove_tree(const char *path) {
  struct stat sb;
  if (lstat(path, &sb) != 0)
    return errno == ENOENT ? TDM_SUCCESS : tdmi_io_error("cannot stat", path);
  if (!S_ISDIR(sb.st_mode))
    return unlink(path) == 0 ? TDM_SUCCESS : tdmi_io_error("cannot remove", path);
  TDMI_TRY(each_entry(path, remove_entry, NULL));
  return rmdir(path) == 0 ? TDM_SUCCESS : tdmi_io_error("cannot remove", path);
}

/* ---- the done marker ---- */

typedef struct {
  char *text;
  size_t len, cap;
} text_buf;

static tdm_status list_entry(const char *path, const char *name, void *arg) {
  text_buf *t = arg;
  struct stat sb;
  if (name[0] == '.' || !strcmp(name, TDMI_CKPT_DONE))
    return TDM_SUCCESS;
  if (stat(path, &sb) != 0)
    return tdmi_io_error("cannot stat", path);
  size_t need = t->len + strlen(name) + 32;
  if (need > t->cap) {
    char *grown = realloc(t->text, 2 * need);
    if (!grown)
      return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory");
    t->text = grown;
    t->cap = 2 * need;
  }
  t->len += (size_t)snprintf(t->text + t->len, t->cap - t->len, "%lld %s\n",
                             (long long)sb.st_size, name);
  return TDM_SUCCESS;
}

/* "tandem-checkpoint 1\n" then "<size> <name>\n" per file. */
static tdm_status write_marker(const char *dir) {
  text_buf t = {malloc(64), 0, 64};
  if (!t.text)
    return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory");
  t.len = (size_t)snprintf(t.text, t.cap, "tandem-checkpoint %d\n",
                           TDMI_CKPT_FORMAT_VERSION);
  tdm_status st = each_entry(dir, list_entry, &t);
  /* Written aside and renamed: a crash mid-write leaves no torn marker. */
  char *part = st == TDM_SUCCESS ? join(dir, "." TDMI_CKPT_DONE ".part") : NULL;
  char *marker = part ? join(dir, TDMI_CKPT_DONE) : NULL;
  if (st == TDM_SUCCESS && !marker)
    st = tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory");
  if (st == TDM_SUCCESS)
    st = tdmi_write_file(part, t.text, t.len);
  if (st == TDM_SUCCESS && rename(part, marker) != 0)
    st = tdmi_io_error("cannot rename the done marker into place", marker);
  free(part);
  free(marker);
  free(t.text);
  return st;
}

static tdm_status check_listed(const char *dir, const char *name,
                               long long size, const char *marker) {
  if (!name[0] || strchr(name, '/') || name[0] == '.')
    return tdmi_error(TDM_ERR_FORMAT, "%s: lists a bad file name \"%s\"",
                      marker, name);
  char *file = join(dir, name);
  if (!file)
    return tdmi_error(TDM_ERR_NO_MEMORY, "out of memory");
  struct stat sb;
  tdm_status st = TDM_SUCCESS;
  if (stat(file, &sb) != 0)
    st = tdmi_error(TDM_ERR_FORMAT, "%s: missing (listed in %s)", file,
                    marker);
  else if ((long long)sb.st_size != size)
    st = tdmi_error(TDM_ERR_FORMAT, "%s: %lld bytes, but %s lists %lld "
                    "(truncated or changed)", file, (long long)sb.st_size,
                    marker, size);
  free(file);
  return st;
}

tdm_status tdmi_commit_verify(const char *dir) {
  char *marker = join(dir, TDMI_CKPT_DONE);
  if (!marker)
    return tdmi_error(TDM_ERR_NO_MEMORY, "out of memory");
  char *text = NULL;
  size_t n = 0;
  struct stat sb;
  tdm_status st = TDM_SUCCESS;
  if (stat(marker, &sb) != 0)
    st = tdmi_error(TDM_ERR_FORMAT, "%s: no done marker %s: the checkpoint "
                    "is incomplete (a save was interrupted)", dir, marker);
  else
    st = tdmi_read_file(marker, MAX_MARKER, &text, &n);
  /* A NUL byte ends the text sscanf and strchr see below, so the lines
   * after it would go unchecked (found by tests/fuzz/fuzz_marker.c). */
  if (st == TDM_SUCCESS && memchr(text, '\0', n))
    st = tdmi_error(TDM_ERR_FORMAT, "%s: holds a NUL byte (corrupt)",
                    marker);
  /* The first line exactly as write_marker writes it: sscanf's %d took
   * "tandem-checkpoint4294967297" for format 1, an int overflow and
   * undefined behaviour (found by tests/fuzz/fuzz_marker.c). */
  char head[32];
  int used = snprintf(head, sizeof head, "tandem-checkpoint %d\n",
                      TDMI_CKPT_FORMAT_VERSION);
  if (st == TDM_SUCCESS && strncmp(text, head, (size_t)used) != 0)
    st = tdmi_error(TDM_ERR_FORMAT, "%s: not a tandem done marker of format "
                    "%d", marker, TDMI_CKPT_FORMAT_VERSION);
  for (char *line = text ? text + used : NULL; st == TDM_SUCCESS && *line;) {
    char *end = strchr(line, '\n');
    long long size = -1;
    char name[256];
    int k = 0;
    if (!end || end - line >= 300 ||
        sscanf(line, "%lld %255[^\n]%n", &size, name, &k) != 2 ||
        line + k != end || size < 0)
      st = tdmi_error(TDM_ERR_FORMAT, "%s: bad line %.40s", marker, line);
    else
      st = check_listed(dir, name, size, marker);
    line = end ? end + 1 : line;
  }
  free(text);
  free(marker);
  return st;
}

/* ---- the folder's life ---- */

/* Step of a name "checkpoint-<digits>" (exactly), else -1. */
static long long step_of(const char *name) {
  size_t np = strlen(TDMI_CKPT_PREFIX);
  if (strncmp(name, TDMI_CKPT_PREFIX, np) != 0 || !name[np])
    return -1;
  long long step = 0;
  for (const char *c = name + np; *c; c++) {
    if (*c < '0' || *c > '9' || step > (1LL << 58))
      return -1;
    step = step * 10 + (*c - '0');
  }
  return step;
}

static int has_marker(const char *dir) {
  char *marker = join(dir, TDMI_CKPT_DONE);
  struct stat sb;
  int yes = marker && stat(marker, &sb) == 0;
  free(marker);
  return yes;
}

/* A leftover of a crashed save: a temporary folder, or a checkpoint
 * folder without its marker (other than the one being saved). */
static tdm_status remove_leftover(const char *path, const char *name,
                                  void *final_name) {
  int tmp = strncmp(name, TDMI_CKPT_PREFIX, strlen(TDMI_CKPT_PREFIX)) == 0 &&
            strstr(name, ".tmp-") != NULL;
  int unmarked = step_of(name) >= 0 && strcmp(name, final_name) != 0 &&
                 !has_marker(path);
  return tmp || unmarked ? tdmi_remove_tree(path) : TDM_SUCCESS;
}

tdm_status tdmi_commit_begin(const char *root, const char *final,
                             const char *tmp) {
  TDMI_TRY(tdmi_make_dirs(root));
  TDMI_TRY(each_entry(root, remove_leftover, (void *)(strrchr(final, '/') + 1)));
  if (mkdir(tmp, 0755) != 0)
    return tdmi_io_error("cannot create folder", tmp);
  return TDM_SUCCESS;
}

static tdm_status fsync_entry(const char *path, const char *name, void *arg) {
  (void)name;
  (void)arg;
  return fsync_path(path);
}

static tdm_status fsync_files(const char *dir) {
  TDMI_TRY(each_entry(dir, fsync_entry, NULL));
  return fsync_path(dir);
}

tdm_status tdmi_commit_finish(const char *root, const char *tmp,
                              const char *final) {
  TDMI_TRY(fsync_files(tmp));
  struct stat sb;
  if (stat(final, &sb) != 0) { /* the usual case: rename, then mark */
    if (rename(tmp, final) != 0)
      return tdmi_io_error("cannot rename the new checkpoint into place", final);
    TDMI_TRY(fsync_path(root));
    TDMI_TRY(write_marker(final));
    return fsync_path(final);
  }
  /* A checkpoint of this step exists (a resumed run saving the same step
   * again): the new one is marked first, then the two swap atomically, so
   * a complete one is in place at every moment. */
  TDMI_TRY(write_marker(tmp));
  TDMI_TRY(fsync_path(tmp));
  if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_EXCHANGE) != 0)
    return tdmi_io_error("cannot exchange the new checkpoint with the old", final);
  TDMI_TRY(fsync_path(root));
  return tdmi_remove_tree(tmp); /* now the old one */
}

static int by_step(const void *a, const void *b) {
  long long x = *(const long long *)a, y = *(const long long *)b;
  return x < y ? -1 : x > y;
}

typedef struct {
  long long *v;
  size_t n, cap;
} step_list;

/* Complete: the done marker is there, whole, and every file it lists has
 * its listed size. */
static int complete(const char *dir) {
  return has_marker(dir) && tdmi_commit_verify(dir) == TDM_SUCCESS;
}

static tdm_status step_entry(const char *path, const char *name, void *arg) {
  step_list *l = arg;
  long long step = step_of(name);
  if (step < 0 || !complete(path))
    return TDM_SUCCESS;
  if (l->n == l->cap) {
    size_t cap = l->cap ? 2 * l->cap : 16;
    long long *v = realloc(l->v, cap * sizeof *v);
    if (!v)
      return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory");
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n++] = step;
  return TDM_SUCCESS;
}

/* The steps of root's complete checkpoints, ascending. */
static tdm_status list_complete(const char *root, long long **steps,
                                size_t *n) {
  step_list l = {NULL, 0, 0};
  tdm_status st = each_entry(root, step_entry, &l);
  if (st == TDM_SUCCESS && l.n)
    qsort(l.v, l.n, sizeof *l.v, by_step);
  *steps = l.v;
  *n = l.n;
  return st;
}

tdm_status tdmi_commit_rotate(const char *root, int keep) {
  long long *steps = NULL;
  size_t n = 0;
  tdm_status st = list_complete(root, &steps, &n);
  for (size_t i = 0; st == TDM_SUCCESS && i + (size_t)keep < n; i++) {
    char name[64];
    snprintf(name, sizeof name, TDMI_CKPT_PREFIX "%lld", steps[i]);
    char *path = join(root, name);
    st = path ? tdmi_remove_tree(path)
              : tdmi_error(TDM_ERR_NO_MEMORY, "out of memory");
    free(path);
  }
  free(steps);
  return st;
}

tdm_status tdm_latest_checkpoint(const char *root, char *path, size_t size) {
  const char *fn = "tdm_latest_checkpoint";
  TDMI_CHECK_PTR(root, fn);
  TDMI_CHECK_PTR(path, fn);
  long long *steps = NULL;
  size_t n = 0;
  TDMI_TRY(list_complete(root, &steps, &n));
  long long newest = n ? steps[n - 1] : -1;
  free(steps);
  if (newest < 0)
    return tdmi_error(TDM_ERR_IO, "%s: %s holds no complete %s<step> folder",
                      fn, root, TDMI_CKPT_PREFIX);
  int len = snprintf(path, size, "%s/" TDMI_CKPT_PREFIX "%lld", root, newest);
  if (len < 0 || (size_t)len >= size)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: path needs %d bytes, "
                      "size is %zu", fn, len + 1, size);
  return TDM_SUCCESS;
}
