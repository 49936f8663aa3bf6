/* files.c - what several layers do with paths: the I/O error that names
 * the file, and mkdir -p. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core.h"

tdm_status tdmi_io_error(const char *what, const char *path) {
  return tdmi_error(TDM_ERR_IO, "%s: %s: %s", path, what, strerror(errno));
}

tdm_status tdmi_make_dirs(const char *path) {
  char *p = strdup(path);
  if (!p)
    return tdmi_error(TDM_ERR_NO_MEMORY, "out of memory");
  tdm_status st = TDM_SUCCESS;
  for (char *c = p + 1; st == TDM_SUCCESS; c++) {
    int last = *c == '\0';
    if (*c != '/' && !last)
      continue;
    *c = '\0';
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
      st = tdmi_io_error("cannot create folder", p);
    if (last)
      break;
    *c = '/';
  }
  free(p);
  return st;
}
