/* harness.h - assertions for tests that run on every rank.  A failed check
 * prints "rank R: file:line: message" and is counted; th_finish sums the
 * failures over all ranks, so every rank exits with the same verdict. */
#ifndef TDM_HARNESS_H
#define TDM_HARNESS_H

#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tandem.h"

static int th_failures;
static int th_rank;

#define TH_CHECK(cond, ...)                                            \
  do {                                                                 \
    if (!(cond)) {                                                     \
      th_failures++;                                                   \
      fprintf(stderr, "rank %d: %s:%d: check failed: %s: ", th_rank,   \
              __FILE__, __LINE__, #cond);                              \
      fprintf(stderr, __VA_ARGS__);                                    \
      fputc('\n', stderr);                                             \
    }                                                                  \
  } while (0)

/* A call expected to succeed; on failure the library's sentence is shown. */
#define TH_OK(call)                                                     \
  do {                                                                  \
    tdm_status th_st_ = (call);                                         \
    TH_CHECK(th_st_ == TDM_SUCCESS, "%s -> %s (%s)", #call,             \
             tdm_status_string(th_st_), tdm_last_error());              \
  } while (0)

/* A call expected to fail with status and a message containing text. */
#define TH_FAILS(call, status, text)                                    \
  do {                                                                  \
    tdm_status th_st_ = (call);                                         \
    TH_CHECK(th_st_ == (status) && strstr(tdm_last_error(), (text)),    \
             "%s -> %s \"%s\"; expected %s with \"%s\"", #call,         \
             tdm_status_string(th_st_), tdm_last_error(),               \
             tdm_status_string(status), (text));                       \
  } while (0)

/* |got - want| <= rel * max(1, |want|) */
#define TH_CLOSE(got, want, rel, ...)                                      \
  TH_CHECK(fabs((double)(got) - (double)(want)) <=                         \
               (rel) * fmax(1.0, fabs((double)(want))),                    \
           "got %.9g want %.9g: " __VA_ARGS__, (double)(got), (double)(want))

/* Sums failures over MPI_COMM_WORLD; returns the process exit code. */
static inline int th_finish(const char *name) {
  int total = 0;
  MPI_Allreduce(&th_failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (th_rank == 0)
    printf("%s: %s (%d failed checks)\n", name, total ? "FAIL" : "PASS",
           total);
  return total ? 1 : 0;
}

static inline void th_start(void) {
  MPI_Comm_rank(MPI_COMM_WORLD, &th_rank);
}

/* MPI_Init_thread at level and th_start; returns the level provided. */
static inline int th_init(int *argc, char ***argv, int level, int *rank,
                          int *size) {
  int provided = MPI_THREAD_SINGLE;
  MPI_Init_thread(argc, argv, level, &provided);
  th_start();
  MPI_Comm_rank(MPI_COMM_WORLD, rank);
  MPI_Comm_size(MPI_COMM_WORLD, size);
  return provided;
}

#endif
