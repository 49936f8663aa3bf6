/* unit_check.h - the one assertion of the single-process unit tests
 * (u_*.c): a failed check is counted and printed with its place, and the
 * test goes on, so one run shows every failure. */
#ifndef TDM_UNIT_CHECK_H
#define TDM_UNIT_CHECK_H

#include <stdio.h>

static int failures;
#define CHECK(cond, ...)                                                  \
  do {                                                                    \
    if (!(cond)) {                                                        \
      failures++;                                                         \
      fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__,    \
              #cond);                                                     \
      fprintf(stderr, __VA_ARGS__);                                       \
      fputc('\n', stderr);                                                \
    }                                                                     \
  } while (0)

#endif
