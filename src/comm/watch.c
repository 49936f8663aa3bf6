/* watch.c - the collective watchdog and the flight recorder.
 *
 * Every wait on one of tandem's communicators polls its request against a
 * deadline (TANDEM_TIMEOUT) instead of blocking in MPI, which has no
 * timeout.  When the deadline passes, the rank asks every other rank, on
 * a side communicator, what it is waiting for.  Ranks answer from inside
 * their own waits, so one that does not answer within ANSWER_S is
 * stopped, dead or busy outside tandem: the stalled rank.  One that
 * answers with another collective shows a mismatch.  The diagnosis and
 * the rank's last FLIGHT_LEN collectives (the flight recorder) go to its
 * log, and the call returns TDM_ERR_TIMEOUT; from then on the context is
 * broken and only tdm_abort is useful.
 *
 * A watch is found from any of tandem's communicators through an MPI
 * attribute that MPI_Comm_dup copies, so the engine's channels inherit
 * the context's. */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm.h"

#define FLIGHT_LEN 64   /* collectives kept per rank                      */
#define FLIGHT_SHOWN 8  /* of them dumped to stderr (a log file gets all) */
#define ANSWER_S 3.0    /* how long a timed-out rank waits for answers
                           (at most the timeout itself)                   */
#define SETTLE_S 5.0    /* how long tdm_abort waits for the others' own
                           diagnoses before it brings the job down        */
#define TAG_QUERY 1
#define TAG_ANSWER 2    /* + the round, so late answers match nothing     */

enum { ENTRY_RUNNING, ENTRY_DONE, ENTRY_FAILED, ENTRY_TIMED_OUT };
static const char *const entry_names[] = {"running", "done", "failed",
                                          "TIMED OUT"};

typedef struct {
  uint64_t seq;      /* this rank's count of collectives; 0: empty     */
  uint64_t comm_seq; /* the count on its communicator: the same on
                        every rank for the same call, whatever threads
                        interleave                                      */
  char what[80];
  char comm[32];     /* the communicator's MPI name                    */
  size_t bytes;
  double start, end, wait_start;
  int state;
  int waiters;       /* threads blocked on it                          */
} flight_entry;

/* What a rank is doing, as it answers a query. */
/* DIAGNOSING until its diagnosis is logged: tdm_abort on another rank
 * waits for TIMED_OUT, since the abort resumes stopped ranks (Open MPI
 * sends SIGCONT before SIGTERM), whose late answers would mislead. */
enum { RANK_BUSY, RANK_WAITING, RANK_DIAGNOSING, RANK_TIMED_OUT };

typedef struct {
  int32_t state;
  int32_t pad;
  uint64_t seq;    /* the collective it waits in, on its communicator    */
  uint64_t done;   /* collectives finished so far                       */
  double waited;   /* seconds in that wait                              */
  char what[80];
  char comm[32];
} answer;

struct tdmi_watch {
  MPI_Comm comm;  /* side communicator: queries and answers only       */
  int rank, size;
  double timeout_s;
  const tdm_context *ctx;
  pthread_mutex_t lock; /* the recorder and the state below             */
  pthread_mutex_t poll; /* one thread answers queries at a time         */
  flight_entry ring[FLIGHT_LEN];
  uint64_t next_seq, finished;
  int state;            /* RANK_*                                       */
  int round;            /* of this rank's queries                       */
  int asking;           /* their payload: the tag to answer with        */
  int query;            /* received: the tag to answer with             */
  MPI_Request query_req;
  answer *out;          /* one answer in flight per rank                */
  MPI_Request *out_req;
  int *responsive;      /* ranks that answered this rank's diagnosis    */
  char diagnosis[1800]; /* of the timeout, for every later call         */
  int *pid;             /* of each rank on this host, else 0            */
  /* The worker that runs large blocking collectives (MPI's fastest) while
   * the calling thread waits with the deadline: MPI_THREAD_MULTIPLE. */
  pthread_t worker;
  int worker_running, worker_quit;
  pthread_mutex_t job_lock;
  pthread_cond_t job_cond;
  tdmi_blocking_fn job;  /* pending or running, NULL: none            */
  void *job_arg;
  int job_rc, job_done;
};

typedef struct { /* what each rank tells the others at creation */
  int32_t pid;
  char host[64];
} identity;

static double answer_s(const tdmi_watch *w) {
  return w->timeout_s < ANSWER_S ? w->timeout_s : ANSWER_S;
}

static size_t nranks(const tdmi_watch *w) {
  return w->size > 0 ? (size_t)w->size : 1;
}

static int keyval = MPI_KEYVAL_INVALID;
static int count_keyval = MPI_KEYVAL_INVALID; /* per communicator, not copied */
static pthread_mutex_t keyval_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile sig_atomic_t dump_requested;

double tdmi_seconds_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Between polls of a request: spin briefly, then yield, then nap -- so
 * that oversubscribed ranks leave the cores to the ones doing work. */
static void pause_poll(long spins) {
  if (spins < 100)
    return;
  if (spins < 20000) {
    sched_yield();
    return;
  }
  struct timespec t = {0, 50000};
  nanosleep(&t, NULL);
}

tdmi_watch *tdmi_watch_of(MPI_Comm comm) {
  if (keyval == MPI_KEYVAL_INVALID || comm == MPI_COMM_NULL)
    return NULL;
  void *value = NULL;
  int found = 0;
  if (MPI_Comm_get_attr(comm, keyval, &value, &found) != MPI_SUCCESS || !found)
    return NULL;
  return value;
}

static void on_sigusr2(int sig) {
  (void)sig;
  dump_requested = 1;
}

static tdm_status attach(MPI_Comm comm, tdmi_watch *w) {
  int rc = MPI_Comm_set_attr(comm, keyval, w);
  return rc == MPI_SUCCESS ? TDM_SUCCESS
                           : tdmi_mpi_error(rc, "MPI_Comm_set_attr (watch)");
}

static tdm_status post_query(tdmi_watch *w) {
  int rc = MPI_Irecv(&w->query, 1, MPI_INT, MPI_ANY_SOURCE, TAG_QUERY, w->comm,
                     &w->query_req);
  return rc == MPI_SUCCESS ? TDM_SUCCESS
                           : tdmi_mpi_error(rc, "MPI_Irecv (watch query)");
}

/* The process ids of the ranks on this host: a silent rank's state can
 * be read from /proc. */
static tdm_status learn_pids(tdmi_watch *w, const tdm_context *ctx) {
  identity mine = {(int32_t)getpid(), ""};
  snprintf(mine.host, sizeof mine.host, "%s", ctx->host);
  identity *all = malloc(nranks(w) * sizeof *all);
  if (!all)
    return tdmi_error(TDM_ERR_NO_MEMORY, "out of memory for the watchdog");
  int rc = MPI_Allgather(&mine, (int)sizeof mine, MPI_BYTE, all,
                         (int)sizeof mine, MPI_BYTE, w->comm);
  for (int r = 0; rc == MPI_SUCCESS && r < w->size; r++)
    w->pid[r] = strcmp(all[r].host, mine.host) == 0 ? all[r].pid : 0;
  free(all);
  return rc == MPI_SUCCESS ? TDM_SUCCESS
                           : tdmi_mpi_error(rc, "MPI_Allgather (watchdog)");
}

/* Why a rank may be silent: what /proc says of its process when it runs
 * on this host. */
static const char *process_state(const tdmi_watch *w, int r) {
  static const char unknown[] = "stopped, dead or busy outside tandem";
  if (w->pid[r] <= 0)
    return unknown;
  char path[64], line[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)w->pid[r]);
  FILE *fp = fopen(path, "r");
  if (!fp)
    return "its process on this host is gone: dead";
  const char *what = unknown;
  if (fgets(line, sizeof line, fp)) {
    const char *paren = strrchr(line, ')'); /* the name may hold spaces */
    char s = paren && paren[1] == ' ' ? paren[2] : '?';
    what = s == 'T' || s == 't'   ? "its process on this host is stopped"
           : s == 'Z' || s == 'X' ? "its process on this host is gone: dead"
                                  : "its process on this host runs, outside "
                                    "tandem";
  }
  fclose(fp);
  return what;
}

static int free_count(MPI_Comm comm, int key, void *value, void *extra) {
  (void)comm, (void)key, (void)extra;
  free(value);
  return MPI_SUCCESS;
}

/* What the recorder keeps per communicator: its count of collectives and
 * its name, read once (MPI_Comm_get_name needs MPI_MAX_OBJECT_NAME). */
typedef struct {
  uint64_t count;
  char name[MPI_MAX_OBJECT_NAME];
} comm_record;

/* Comm's record, made on its first collective; the caller holds w->lock.
 * NULL when out of memory. */
static comm_record *record_of(MPI_Comm comm) {
  comm_record *r = NULL;
  int found = 0;
  MPI_Comm_get_attr(comm, count_keyval, &r, &found);
  if (found)
    return r;
  r = calloc(1, sizeof *r);
  if (!r || MPI_Comm_set_attr(comm, count_keyval, r) != MPI_SUCCESS) {
    free(r);
    return NULL;
  }
  int len = 0;
  MPI_Comm_get_name(comm, r->name, &len); /* set by tdmi_comm_dup */
  if (!len)
    snprintf(r->name, sizeof r->name, "?");
  return r;
}

static tdm_status make_keyval(void) {
  int rc = MPI_SUCCESS;
  pthread_mutex_lock(&keyval_lock);
  if (keyval == MPI_KEYVAL_INVALID)
    rc = MPI_Comm_create_keyval(MPI_COMM_DUP_FN, MPI_COMM_NULL_DELETE_FN,
                                &keyval, NULL);
  if (rc == MPI_SUCCESS && count_keyval == MPI_KEYVAL_INVALID)
    rc = MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, free_count,
                                &count_keyval, NULL);
  pthread_mutex_unlock(&keyval_lock);
  return rc == MPI_SUCCESS ? TDM_SUCCESS
                           : tdmi_mpi_error(rc, "MPI_Comm_create_keyval");
}

tdm_status tdmi_watch_create(tdm_context *ctx) {
  ctx->watch = NULL;
  TDMI_TRY(make_keyval());
  tdmi_watch *w = calloc(1, sizeof *w);
  if (w) {
    w->out = calloc((size_t)ctx->size, sizeof *w->out);
    w->out_req = malloc((size_t)ctx->size * sizeof *w->out_req);
    w->responsive = calloc((size_t)ctx->size, sizeof *w->responsive);
    w->pid = calloc((size_t)ctx->size, sizeof *w->pid);
  }
  MPI_Comm side = MPI_COMM_NULL;
  tdm_status st = tdmi_comm_dup(ctx->comm, &side, "tandem watchdog");
  if (st == TDM_SUCCESS &&
      (!w || !w->out || !w->out_req || !w->responsive || !w->pid))
    st = tdmi_error(TDM_ERR_NO_MEMORY, "rank %d: out of memory for the "
                    "watchdog", ctx->rank);
  if (st != TDM_SUCCESS) {
    if (w) {
      free(w->out), free(w->out_req), free(w->responsive), free(w->pid);
    }
    free(w);
    tdmi_comm_free(&side);
    return st;
  }
  w->comm = side;
  w->rank = ctx->rank;
  w->size = ctx->size;
  w->timeout_s = ctx->config.timeout;
  w->ctx = ctx;
  pthread_mutex_init(&w->lock, NULL);
  pthread_mutex_init(&w->poll, NULL);
  pthread_mutex_init(&w->job_lock, NULL);
  pthread_cond_init(&w->job_cond, NULL);
  for (int r = 0; r < w->size; r++)
    w->out_req[r] = MPI_REQUEST_NULL;
  ctx->watch = w;
  TDMI_TRY(learn_pids(w, ctx));
  TDMI_TRY(post_query(w));
  TDMI_TRY(attach(ctx->comm, w));
  TDMI_TRY(attach(ctx->local_comm, w));
  if (ctx->config.dump_on_signal) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigusr2;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR2, &sa, NULL);
  }
  return TDM_SUCCESS;
}

static void stop_worker(tdmi_watch *w);

void tdmi_watch_destroy(tdm_context *ctx) {
  tdmi_watch *w = ctx->watch;
  if (!w)
    return;
  stop_worker(w);
  if (keyval != MPI_KEYVAL_INVALID) {
    MPI_Comm_delete_attr(ctx->comm, keyval);
    MPI_Comm_delete_attr(ctx->local_comm, keyval);
  }
  if (w->query_req != MPI_REQUEST_NULL) {
    MPI_Cancel(&w->query_req);
    MPI_Wait(&w->query_req, MPI_STATUS_IGNORE);
  }
  for (int r = 0; r < w->size; r++)
    if (w->out_req[r] != MPI_REQUEST_NULL)
      MPI_Wait(&w->out_req[r], MPI_STATUS_IGNORE);
  tdmi_comm_free(&w->comm);
  pthread_mutex_destroy(&w->lock);
  pthread_mutex_destroy(&w->poll);
  if (!w->worker_running) { /* else it may still sit in a collective */
    pthread_mutex_destroy(&w->job_lock);
    pthread_cond_destroy(&w->job_cond);
  }
  free(w->out);
  free(w->out_req);
  free(w->responsive);
  free(w->pid);
  free(w);
  ctx->watch = NULL;
}

int tdmi_watch_broken(const tdm_context *ctx) {
  const tdmi_watch *w = ctx->watch;
  return w && w->state >= RANK_DIAGNOSING;
}

/* ---- the flight recorder ---- */

static flight_entry *entry_of(tdmi_watch *w, uint64_t seq) {
  flight_entry *e = &w->ring[seq % FLIGHT_LEN];
  return e->seq == seq ? e : NULL;
}

static void dump(tdmi_watch *w, const char *why) {
  double t = tdmi_seconds_now();
  uint64_t shown = w->ctx->log_fp == stderr ? FLIGHT_SHOWN : FLIGHT_LEN;
  tdmi_log(w->ctx, TDM_LOG_WARN, "flight recorder (%s): the last %d "
           "collectives of rank %d, oldest first; %llu finished%s", why,
           (int)shown, w->rank, (unsigned long long)w->finished,
           shown < FLIGHT_LEN ? " (TANDEM_LOG_FILE keeps 64)" : "");
  pthread_mutex_lock(&w->lock);
  for (uint64_t i = FLIGHT_LEN - shown; i < FLIGHT_LEN; i++) {
    uint64_t seq = w->next_seq + 1 + i; /* the oldest slot first */
    const flight_entry *e = &w->ring[seq % FLIGHT_LEN];
    if (!e->seq)
      continue;
    double took = (e->state == ENTRY_RUNNING ? t : e->end) - e->start;
    tdmi_log(w->ctx, TDM_LOG_WARN, "  %s #%llu on %s, %zu bytes, started "
             "%.3f s ago, %s after %.3f ms", e->what,
             (unsigned long long)e->comm_seq, e->comm, e->bytes,
             t - e->start, entry_names[e->state], 1e3 * took);
  }
  pthread_mutex_unlock(&w->lock);
}

static void dump_if_asked(tdmi_watch *w) {
  if (dump_requested) {
    dump_requested = 0;
    dump(w, "SIGUSR2");
  }
}

uint64_t tdmi_flight_begin(MPI_Comm comm, const char *what, size_t bytes) {
  tdmi_watch *w = tdmi_watch_of(comm);
  if (!w)
    return 0;
  dump_if_asked(w);
  pthread_mutex_lock(&w->lock);
  uint64_t seq = ++w->next_seq;
  flight_entry *e = &w->ring[seq % FLIGHT_LEN];
  e->seq = seq;
  comm_record *r = record_of(comm);
  e->comm_seq = r ? ++r->count : 0;
  snprintf(e->comm, sizeof e->comm, "%.*s", (int)sizeof e->comm - 1,
           r ? r->name : "?"); /* tandem's names are short */
  e->waiters = 0;
  snprintf(e->what, sizeof e->what, "%s", what);
  e->bytes = bytes;
  e->start = tdmi_seconds_now();
  e->end = 0;
  e->state = ENTRY_RUNNING;
  pthread_mutex_unlock(&w->lock);
  return seq;
}

static void flight_end(tdmi_watch *w, uint64_t seq, int state);

uint64_t tdmi_flight_blocked(MPI_Comm comm, const char *what, size_t bytes) {
  uint64_t seq = tdmi_flight_begin(comm, what, bytes);
  tdmi_watch *w = tdmi_watch_of(comm);
  if (!w)
    return seq;
  pthread_mutex_lock(&w->lock);
  flight_entry *e = entry_of(w, seq);
  if (e) {
    e->waiters++;
    e->wait_start = e->start;
  }
  pthread_mutex_unlock(&w->lock);
  return seq;
}

void tdmi_flight_end(MPI_Comm comm, uint64_t seq, int ok) {
  tdmi_watch *w = tdmi_watch_of(comm);
  if (w && seq)
    flight_end(w, seq, ok ? ENTRY_DONE : ENTRY_FAILED);
}

static void flight_end(tdmi_watch *w, uint64_t seq, int state) {
  pthread_mutex_lock(&w->lock);
  flight_entry *e = entry_of(w, seq);
  if (e) {
    e->state = state;
    e->end = tdmi_seconds_now();
    e->waiters = 0;
  }
  if (state == ENTRY_DONE)
    w->finished++;
  pthread_mutex_unlock(&w->lock);
}

/* ---- answering the others ---- */

static void fill_answer(tdmi_watch *w, answer *a) {
  pthread_mutex_lock(&w->lock);
  memset(a, 0, sizeof *a);
  a->done = w->finished;
  /* The oldest collective a thread waits for, or times out in. */
  const flight_entry *e = NULL;
  for (int i = 0; i < FLIGHT_LEN; i++) {
    const flight_entry *c = &w->ring[i];
    if (c->seq && (c->waiters > 0 || c->state == ENTRY_TIMED_OUT) &&
        (!e || c->seq < e->seq))
      e = c;
  }
  a->state = w->state >= RANK_DIAGNOSING ? w->state
             : e                         ? RANK_WAITING
                                         : RANK_BUSY;
  if (e) {
    a->seq = e->comm_seq;
    a->waited = (e->state == ENTRY_TIMED_OUT ? e->end : tdmi_seconds_now()) -
                e->wait_start;
    snprintf(a->what, sizeof a->what, "%s", e->what);
    snprintf(a->comm, sizeof a->comm, "%s", e->comm);
  }
  pthread_mutex_unlock(&w->lock);
}

static void send_answer(tdmi_watch *w, int to, int tag) {
  int done = 1;
  if (w->out_req[to] != MPI_REQUEST_NULL)
    MPI_Test(&w->out_req[to], &done, MPI_STATUS_IGNORE);
  if (!done) /* the last answer to that rank is still on its way */
    return;
  fill_answer(w, &w->out[to]);
  MPI_Isend(&w->out[to], (int)sizeof(answer), MPI_BYTE, to, tag, w->comm,
            &w->out_req[to]);
}

/* Answers the queries that arrived; the caller holds w->poll. */
static void serve_locked(tdmi_watch *w) {
  for (;;) {
    int got = 0;
    MPI_Status status;
    if (w->query_req == MPI_REQUEST_NULL ||
        MPI_Test(&w->query_req, &got, &status) != MPI_SUCCESS || !got)
      return;
    send_answer(w, status.MPI_SOURCE, w->query);
    if (post_query(w) != TDM_SUCCESS)
      w->query_req = MPI_REQUEST_NULL;
  }
}

static void serve(tdmi_watch *w) {
  dump_if_asked(w);
  if (pthread_mutex_trylock(&w->poll) != 0)
    return; /* another thread is answering */
  serve_locked(w);
  pthread_mutex_unlock(&w->poll);
}

/* ---- asking the others ---- */

/* Asks every rank with ask[r] what it is doing, for at most window_s,
 * answering queries meanwhile; got[r] says who answered.  The caller
 * holds w->poll. */
static void ask(tdmi_watch *w, const int *ask_rank, answer *in, int *got,
                double window_s) {
  int tag = TAG_ANSWER + ++w->round;
  w->asking = tag; /* a send buffer that outlives this call */
  MPI_Request *req = malloc(2 * nranks(w) * sizeof *req);
  if (!req)
    return;
  MPI_Request *sends = req + w->size;
  for (int r = 0; r < w->size; r++) {
    req[r] = sends[r] = MPI_REQUEST_NULL;
    got[r] = 0;
    if (!ask_rank[r] || r == w->rank)
      continue;
    if (MPI_Irecv(&in[r], (int)sizeof(answer), MPI_BYTE, r, tag, w->comm,
                  &req[r]) != MPI_SUCCESS ||
        MPI_Isend(&w->asking, 1, MPI_INT, r, TAG_QUERY, w->comm, &sends[r]) !=
            MPI_SUCCESS)
      continue; /* unreachable: it stays unanswered */
  }
  double deadline = tdmi_seconds_now() + window_s;
  for (long spins = 0;; spins++) {
    int missing = 0;
    for (int r = 0; r < w->size; r++) {
      int done = 0;
      if (req[r] != MPI_REQUEST_NULL &&
          MPI_Test(&req[r], &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && done)
        got[r] = 1;
      missing += req[r] != MPI_REQUEST_NULL;
    }
    serve_locked(w);
    if (!missing || tdmi_seconds_now() > deadline)
      break;
    pause_poll(spins);
  }
  for (int r = 0; r < w->size; r++) {
    if (req[r] != MPI_REQUEST_NULL) { /* no answer: stop listening */
      MPI_Cancel(&req[r]);
      MPI_Wait(&req[r], MPI_STATUS_IGNORE);
    }
    if (sends[r] != MPI_REQUEST_NULL) /* to a stopped rank: let it go */
      MPI_Request_free(&sends[r]);
  }
  free(req);
}

static int appendf(char *buf, size_t cap, int n, const char *format, ...)
    __attribute__((format(printf, 4, 5)));
static int appendf(char *buf, size_t cap, int n, const char *format, ...) {
  if (n < 0 || (size_t)n >= cap)
    return n;
  va_list ap;
  va_start(ap, format);
  int k = vsnprintf(buf + n, cap - (size_t)n, format, ap);
  va_end(ap);
  return k < 0 ? n : n + k;
}

/* The ranks of a kind, as "rank 1" or "ranks 1, 3". */
static int list_ranks(char *buf, size_t cap, int n, const int *mark,
                      int size) {
  int count = 0;
  for (int r = 0; r < size; r++)
    count += mark[r];
  n = appendf(buf, cap, n, "%s", count > 1 ? "ranks " : "rank ");
  for (int r = 0, k = 0; r < size; r++)
    if (mark[r])
      n = appendf(buf, cap, n, "%s%d", k++ ? ", " : "", r);
  return n;
}

/* What the answers say, after "this rank waits in X": who did not
 * answer (the stalled), who waits with it, who waits in something else. */
static int describe(tdmi_watch *w, const answer *in, const int *got,
                    const flight_entry *mine, char *buf, size_t cap, int n) {
  int *silent = calloc(nranks(w), sizeof *silent);
  int *same = calloc(nranks(w), sizeof *same);
  if (!silent || !same) {
    free(silent), free(same);
    return n;
  }
  int nsame = 0;
  for (int r = 0; r < w->size; r++) {
    if (r == w->rank)
      continue;
    silent[r] = !got[r];
    same[r] = got[r] && in[r].state != RANK_BUSY &&
              in[r].seq == mine->comm_seq && !strcmp(in[r].comm, mine->comm) &&
              !strcmp(in[r].what, mine->what);
    nsame += same[r];
  }
  for (int r = 0; r < w->size; r++)
    if (silent[r])
      n = appendf(buf, cap, n, "; stalled: rank %d did not answer within "
                  "%.0f s (%s)", r, answer_s(w), process_state(w, r));
  if (nsame) {
    n = appendf(buf, cap, n, "; ");
    n = list_ranks(buf, cap, n, same, w->size);
    n = appendf(buf, cap, n, " wait%s in the same collective",
                nsame > 1 ? "" : "s");
  }
  /* A communicator's collectives are numbered alike on every rank: the
   * same number with another call is a mismatch. */
  for (int r = 0; r < w->size; r++) {
    if (r == w->rank || !got[r] || same[r])
      continue;
    int same_comm = !strcmp(in[r].comm, mine->comm);
    long long ahead = (long long)in[r].seq - (long long)mine->comm_seq;
    if (in[r].state == RANK_BUSY)
      n = appendf(buf, cap, n, "; rank %d is not waiting (%llu collectives "
                  "finished, this rank %llu)", r,
                  (unsigned long long)in[r].done,
                  (unsigned long long)w->finished);
    else if (same_comm && ahead == 0)
      n = appendf(buf, cap, n, "; rank %d waits in %s (#%llu on %s) instead: "
                  "the ranks called different collectives", r, in[r].what,
                  (unsigned long long)in[r].seq, in[r].comm);
    else if (same_comm)
      n = appendf(buf, cap, n, "; rank %d waits in %s (#%llu on %s, %lld "
                  "%s) for %.1f s", r, in[r].what,
                  (unsigned long long)in[r].seq, in[r].comm,
                  ahead > 0 ? ahead : -ahead, ahead > 0 ? "ahead" : "behind",
                  in[r].waited);
    else
      n = appendf(buf, cap, n, "; rank %d waits in %s (#%llu on %s, not "
                  "this rank's communicator) for %.1f s", r, in[r].what,
                  (unsigned long long)in[r].seq, in[r].comm, in[r].waited);
  }
  free(silent);
  free(same);
  return n;
}

/* The deadline of collective seq passed: diagnose, log, break. */
static tdm_status timed_out(tdmi_watch *w, uint64_t seq, double waited) {
  pthread_mutex_lock(&w->poll);
  pthread_mutex_lock(&w->lock);
  w->state = RANK_DIAGNOSING;
  flight_entry mine = {0};
  flight_entry *e = entry_of(w, seq);
  if (e) {
    e->state = ENTRY_TIMED_OUT;
    e->end = tdmi_seconds_now();
    mine = *e;
  }
  pthread_mutex_unlock(&w->lock);
  answer *in = calloc(nranks(w), sizeof *in);
  int *got = calloc(nranks(w), sizeof *got);
  int *everyone = malloc(nranks(w) * sizeof *everyone);
  char msg[1800];
  int n = snprintf(msg, sizeof msg, "rank %d: %s (#%llu on %s) timed out "
                   "after %.1f s (TANDEM_TIMEOUT=%.0f)", w->rank, mine.what,
                   (unsigned long long)mine.comm_seq, mine.comm, waited,
                   w->timeout_s);
  if (in && got && everyone) {
    for (int r = 0; r < w->size; r++)
      everyone[r] = 1;
    ask(w, everyone, in, got, answer_s(w));
    for (int r = 0; r < w->size; r++)
      w->responsive[r] = got[r];
    n = describe(w, in, got, &mine, msg, sizeof msg, n);
  }
  appendf(msg, sizeof msg, n, "; call tdm_abort to end the job");
  free(in), free(got), free(everyone);
  snprintf(w->diagnosis, sizeof w->diagnosis, "%s", msg);
  pthread_mutex_unlock(&w->poll);
  tdmi_log(w->ctx, TDM_LOG_WARN, "%s", msg);
  dump(w, "timeout");
  w->state = RANK_TIMED_OUT;
  return tdmi_error(TDM_ERR_TIMEOUT, "%s", msg);
}

/* ---- waiting ---- */

/* Every call after a timeout fails with its diagnosis (the one that
 * timed out may have been another thread's). */
static tdm_status broken_error(tdmi_watch *w, const char *what) {
  pthread_mutex_lock(&w->poll);
  tdm_status st = tdmi_error(TDM_ERR_TIMEOUT, "%s: cannot run after a "
                             "timeout: %s", what, w->diagnosis);
  pthread_mutex_unlock(&w->poll);
  return st;
}

tdm_status tdmi_watch_test(MPI_Comm comm, MPI_Request *req, uint64_t seq,
                           int *done, const char *what) {
  tdmi_watch *w = tdmi_watch_of(comm);
  int rc = MPI_Test(req, done, MPI_STATUS_IGNORE);
  if (w) {
    if (rc != MPI_SUCCESS || *done)
      flight_end(w, seq, rc == MPI_SUCCESS ? ENTRY_DONE : ENTRY_FAILED);
    else
      serve(w);
  }
  return rc == MPI_SUCCESS ? TDM_SUCCESS : tdmi_mpi_error(rc, what);
}

tdm_status tdmi_watch_wait(MPI_Comm comm, MPI_Request *req, uint64_t seq,
                           const char *what) {
  tdmi_watch *w = tdmi_watch_of(comm);
  if (!w) {
    int rc = MPI_Wait(req, MPI_STATUS_IGNORE);
    return rc == MPI_SUCCESS ? TDM_SUCCESS : tdmi_mpi_error(rc, what);
  }
  if (w->state >= RANK_DIAGNOSING)
    return broken_error(w, what);
  double start = tdmi_seconds_now();
  pthread_mutex_lock(&w->lock);
  flight_entry *e = entry_of(w, seq);
  if (e) {
    e->waiters++;
    e->wait_start = start;
  }
  pthread_mutex_unlock(&w->lock);
  for (long spins = 0;; spins++) {
    int done = 0;
    int rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS || done) {
      flight_end(w, seq, rc == MPI_SUCCESS ? ENTRY_DONE : ENTRY_FAILED);
      return rc == MPI_SUCCESS ? TDM_SUCCESS : tdmi_mpi_error(rc, what);
    }
    serve(w);
    double waited = tdmi_seconds_now() - start;
    if (w->timeout_s > 0 && waited > w->timeout_s)
      return timed_out(w, seq, waited);
    pause_poll(spins);
  }
}

tdm_status tdmi_watched(MPI_Comm comm, int rc, MPI_Request *req,
                        const char *what, size_t bytes) {
  if (rc != MPI_SUCCESS)
    return tdmi_mpi_error(rc, what);
  return tdmi_watch_wait(comm, req, tdmi_flight_begin(comm, what, bytes),
                         what);
}

tdm_status tdmi_watch_idle(MPI_Comm comm, double *since, const char *what) {
  tdmi_watch *w = tdmi_watch_of(comm);
  if (!w)
    return TDM_SUCCESS;
  if (w->state >= RANK_DIAGNOSING)
    return broken_error(w, what);
  double t = tdmi_seconds_now();
  if (*since == 0)
    *since = t;
  serve(w);
  if (w->timeout_s <= 0 || t - *since <= w->timeout_s)
    return TDM_SUCCESS;
  uint64_t seq = 0; /* the oldest collective a thread is blocked in */
  double started = *since;
  pthread_mutex_lock(&w->lock);
  for (int i = 0; i < FLIGHT_LEN; i++) {
    const flight_entry *e = &w->ring[i];
    if (e->seq && e->waiters > 0 && e->state == ENTRY_RUNNING &&
        (!seq || e->seq < seq)) {
      seq = e->seq;
      started = e->wait_start < started ? e->wait_start : started;
    }
  }
  pthread_mutex_unlock(&w->lock);
  if (seq)
    return timed_out(w, seq, t - started);
  pthread_mutex_lock(&w->poll);
  w->state = RANK_TIMED_OUT;
  snprintf(w->diagnosis, sizeof w->diagnosis, "rank %d: %s timed out after "
           "%.1f s (TANDEM_TIMEOUT=%.0f) with no collective in flight",
           w->rank, what, t - *since, w->timeout_s);
  pthread_mutex_unlock(&w->poll);
  return tdmi_error(TDM_ERR_TIMEOUT, "%s", w->diagnosis);
}

tdm_status tdmi_watch_check(MPI_Comm comm, const char *what) {
  tdmi_watch *w = tdmi_watch_of(comm);
  return w && w->state >= RANK_DIAGNOSING ? broken_error(w, what)
                                         : TDM_SUCCESS;
}

/* tdm_abort after a timeout: the ranks that answered the diagnosis are
 * still running theirs; wait (bounded) until each has timed out too, so
 * that every survivor logs its diagnosis before the job goes down. */
void tdmi_watch_settle(tdm_context *ctx) {
  tdmi_watch *w = ctx->watch;
  if (!w || w->state < RANK_DIAGNOSING)
    return;
  answer *in = calloc(nranks(w), sizeof *in);
  int *got = calloc(nranks(w), sizeof *got);
  int *pending = malloc(nranks(w) * sizeof *pending);
  if (in && got && pending) {
    memcpy(pending, w->responsive, nranks(w) * sizeof *pending);
    pthread_mutex_lock(&w->poll);
    double deadline = tdmi_seconds_now() + SETTLE_S;
    for (;;) {
      int left = 0;
      for (int r = 0; r < w->size; r++)
        left += pending[r] && r != w->rank;
      if (!left || tdmi_seconds_now() > deadline)
        break;
      ask(w, pending, in, got, 0.5);
      for (int r = 0; r < w->size; r++)
        if (got[r] && in[r].state == RANK_TIMED_OUT)
          pending[r] = 0;
    }
    pthread_mutex_unlock(&w->poll);
  }
  free(in), free(got), free(pending);
}

/* ---- large collectives: blocking, on the worker ---- */

static void *worker_main(void *arg) {
  tdmi_watch *w = arg;
  pthread_mutex_lock(&w->job_lock);
  for (;;) {
    while (!w->worker_quit && (!w->job || w->job_done))
      pthread_cond_wait(&w->job_cond, &w->job_lock);
    if (w->worker_quit)
      break;
    tdmi_blocking_fn fn = w->job;
    void *fn_arg = w->job_arg;
    pthread_mutex_unlock(&w->job_lock);
    int rc = fn(fn_arg);
    pthread_mutex_lock(&w->job_lock);
    w->job_rc = rc;
    w->job_done = 1;
    pthread_cond_broadcast(&w->job_cond);
  }
  pthread_mutex_unlock(&w->job_lock);
  return NULL;
}

/* After a timeout the worker may never come back: it is left alone. */
static void stop_worker(tdmi_watch *w) {
  if (!w->worker_running || w->state >= RANK_DIAGNOSING)
    return;
  pthread_mutex_lock(&w->job_lock);
  w->worker_quit = 1;
  pthread_cond_broadcast(&w->job_cond);
  pthread_mutex_unlock(&w->job_lock);
  pthread_join(w->worker, NULL);
  w->worker_running = 0;
}

int tdmi_watch_offload(MPI_Comm comm, size_t bytes) {
  tdmi_watch *w = tdmi_watch_of(comm);
  return w && w->timeout_s > 0 && bytes >= TDMI_BLOCKING_MIN_BYTES &&
         tdmi_thread_multiple();
}

void tdmi_realtime_in(struct timespec *t, long ns) {
  clock_gettime(CLOCK_REALTIME, t);
  t->tv_nsec += ns;
  if (t->tv_nsec >= 1000000000L) {
    t->tv_sec++;
    t->tv_nsec -= 1000000000L;
  }
}

tdm_status tdmi_watched_blocking(MPI_Comm comm, const char *what,
                                 size_t bytes, tdmi_blocking_fn fn,
                                 void *arg) {
  tdmi_watch *w = tdmi_watch_of(comm);
  if (!w) {
    int rc = fn(arg);
    return rc == MPI_SUCCESS ? TDM_SUCCESS : tdmi_mpi_error(rc, what);
  }
  if (w->state >= RANK_DIAGNOSING)
    return broken_error(w, what);
  pthread_mutex_lock(&w->job_lock);
  if (!w->worker_running) {
    if (pthread_create(&w->worker, NULL, worker_main, w) != 0) {
      pthread_mutex_unlock(&w->job_lock);
      return tdmi_error(TDM_ERR_INTERNAL, "%s: cannot start the watchdog's "
                        "worker thread", what);
    }
    w->worker_running = 1;
  }
  uint64_t seq = tdmi_flight_blocked(comm, what, bytes);
  w->job = fn;
  w->job_arg = arg;
  w->job_done = 0;
  pthread_cond_broadcast(&w->job_cond);
  double since = 0;
  tdm_status st = TDM_SUCCESS;
  while (!w->job_done) {
    struct timespec until;
    tdmi_realtime_in(&until, 1000000L); /* 1 ms: between answers */
    pthread_cond_timedwait(&w->job_cond, &w->job_lock, &until);
    if (w->job_done)
      break;
    pthread_mutex_unlock(&w->job_lock);
    st = tdmi_watch_idle(comm, &since, what);
    pthread_mutex_lock(&w->job_lock);
    if (st != TDM_SUCCESS)
      break; /* the worker stays in the collective: the job is over */
  }
  int rc = w->job_rc;
  int done = w->job_done;
  if (done)
    w->job = NULL;
  pthread_mutex_unlock(&w->job_lock);
  if (!done)
    return st;
  tdmi_flight_end(comm, seq, rc == MPI_SUCCESS);
  return rc == MPI_SUCCESS ? TDM_SUCCESS : tdmi_mpi_error(rc, what);
}
