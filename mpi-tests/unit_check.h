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

/* A tandem call expected to fail with status and a message containing
 * text (needs tandem.h and string.h). */
#define FAILS(call, status, text)                                      \
  do {                                                                 \
    tdm_status st_ = (call);                                           \
    CHECK(st_ == (status) && strstr(tdm_last_error(), (text)),         \
          "-> %s \"%s\"; expected %s with \"%s\"",                     \
          tdm_status_string(st_), tdm_last_error(),                    \
          tdm_status_string(status), (text));                          \
  } while (0)

/* A tandem call expected to succeed; else the library's sentence. */
#define OK(call)                                                       \
  do {                                                                 \
    tdm_status st_ = (call);                                           \
    CHECK(st_ == TDM_SUCCESS, "-> %s (%s)", tdm_status_string(st_),    \
          tdm_last_error());                                           \
  } while (0)

#endif
