/* loader.c - reads the sampler's batches ahead on a thread.
 *
 * A ring of prefetch + 1 slots: the caller holds the slot at head between
 * two tdm_loader_next calls, the thread fills the slots after it.  The
 * queue is a stream from one position on; when the caller moves the
 * sampler (set_epoch, skip, a checkpoint's restore), tdm_loader_next sees
 * that the sampler's position is not the queue's, and restarts the stream
 * there (a generation number makes the thread drop what it was reading). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"

typedef struct {
  unsigned char *data;
  size_t *rows;
  size_t count, valid;
  tdmi_position pos;
  tdm_status status;
  char message[512];
} slot;

struct tdm_loader {
  tdm_dataset *ds;
  tdm_sampler *s;
  size_t row_bytes, batch_rows;
  int nslots, threaded;
  slot *slots;
  /* guarded by lock */
  pthread_mutex_t lock;
  pthread_cond_t changed;
  int head, filled, held, stop;
  uint64_t generation;
  tdmi_position queue_pos; /* of the slot at head (once filled) */
  tdmi_position fill_pos;  /* the thread's next batch */
  tdm_status failed;       /* sticky: the first read error handed out */
  char failed_message[512];
  pthread_t thread;
  tdmi_order order; /* the thread's (or next's, without a thread) */
};

#define CHECK_LOADER(l, fn) \
  TDMI_TRY(tdmi_data_check((l), TDMI_HANDLE_LOADER, (fn), "loader"))

/* Reads the batch at pos into sl (no lock held: only the reader touches
 * sl until it is published). */
static void read_batch(tdm_loader *l, slot *sl, tdmi_position pos) {
  sl->pos = pos;
  sl->status = tdmi_sampler_rows(l->s, &l->order, pos, sl->rows, &sl->count,
                                 &sl->valid);
  for (size_t i = 0; sl->status == TDM_SUCCESS && i < sl->count; i++)
    sl->status = tdm_dataset_read(l->ds, sl->rows[i],
                                  sl->data + i * l->row_bytes);
  if (sl->status != TDM_SUCCESS)
    snprintf(sl->message, sizeof sl->message, "%s", tdm_last_error());
}

static void *prefetch_main(void *arg) {
  tdm_loader *l = arg;
  pthread_mutex_lock(&l->lock);
  for (;;) {
    while (!l->stop && l->filled == l->nslots)
      pthread_cond_wait(&l->changed, &l->lock);
    if (l->stop)
      break;
    uint64_t generation = l->generation;
    slot *sl = &l->slots[(l->head + l->filled) % l->nslots];
    tdmi_position pos = l->fill_pos;
    l->fill_pos = tdmi_sampler_after(l->s, pos);
    pthread_mutex_unlock(&l->lock);
    read_batch(l, sl, pos);
    pthread_mutex_lock(&l->lock);
    if (generation != l->generation)
      continue; /* restarted meanwhile: fill_pos is already the new one */
    l->filled++;
    pthread_cond_broadcast(&l->changed);
    /* No reads after an error, unless a restart dropped it unread. */
    while (sl->status != TDM_SUCCESS && !l->stop &&
           generation == l->generation)
      pthread_cond_wait(&l->changed, &l->lock);
  }
  pthread_mutex_unlock(&l->lock);
  return NULL;
}

static tdm_status allocate(tdm_loader *l) {
  l->slots = calloc((size_t)l->nslots, sizeof *l->slots);
  if (!l->slots)
    return TDM_ERR_NO_MEMORY;
  for (int i = 0; i < l->nslots; i++) {
    slot *sl = &l->slots[i];
    sl->data = malloc(l->batch_rows * l->row_bytes + 1);
    sl->rows = malloc((l->batch_rows + 1) * sizeof *sl->rows);
    if (!sl->data || !sl->rows)
      return TDM_ERR_NO_MEMORY;
  }
  return TDM_SUCCESS;
}

static tdm_status read_options(const tdm_loader_options *in, int *prefetch,
                               const char *fn) {
  tdm_loader_options o = TDM_LOADER_OPTIONS_INIT;
  if (in) {
    if (in->size < sizeof(size_t) || in->size > sizeof o)
      return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: options->size = %zu "
                        "is not a tdm_loader_options size (start from "
                        "TDM_LOADER_OPTIONS_INIT)", fn, in->size);
    memcpy(&o, in, in->size);
  }
  if (o.prefetch < 0 || o.prefetch > 1024)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: options->prefetch = %d; "
                      "expected 0 to 1024", fn, o.prefetch);
  *prefetch = o.prefetch;
  return TDM_SUCCESS;
}

static tdm_status start(tdm_loader *l, int prefetch, const char *fn) {
  l->threaded = prefetch > 0;
  l->nslots = prefetch + 1;
  if (allocate(l) != TDM_SUCCESS)
    return tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory for %d batches "
                      "of %zu rows of %zu bytes", fn, l->nslots, l->batch_rows,
                      l->row_bytes);
  l->queue_pos = l->fill_pos = tdmi_sampler_position(l->s);
  if (l->threaded && pthread_create(&l->thread, NULL, prefetch_main, l) != 0) {
    l->threaded = 0;
    return tdmi_error(TDM_ERR_INTERNAL, "%s: cannot start the prefetch "
                      "thread", fn);
  }
  return TDM_SUCCESS;
}

/* Stops the thread (it finishes the read in progress) and frees. */
static void free_loader(tdm_loader *l) {
  if (l->threaded) {
    pthread_mutex_lock(&l->lock);
    l->stop = 1;
    pthread_cond_broadcast(&l->changed);
    pthread_mutex_unlock(&l->lock);
    pthread_join(l->thread, NULL);
  }
  for (int i = 0; l->slots && i < l->nslots; i++) {
    free(l->slots[i].data);
    free(l->slots[i].rows);
  }
  free(l->slots);
  tdmi_order_free(&l->order);
  pthread_cond_destroy(&l->changed);
  pthread_mutex_destroy(&l->lock);
  free(l);
}

tdm_status tdm_loader_create(tdm_dataset *dataset, tdm_sampler *sampler,
                             const tdm_loader_options *options,
                             tdm_loader **loader) {
  const char *fn = "tdm_loader_create";
  TDMI_CHECK_PTR(loader, fn);
  *loader = NULL;
  size_t rows = 0, batches = 0;
  int prefetch = 0;
  TDMI_TRY(read_options(options, &prefetch, fn));
  TDMI_TRY(tdm_sampler_info(sampler, &batches, NULL));
  tdm_loader *l = calloc(1, sizeof *l);
  if (!l)
    return tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", fn);
  l->ds = dataset;
  l->s = sampler;
  pthread_mutex_init(&l->lock, NULL);
  pthread_cond_init(&l->changed, NULL);
  tdm_status st = tdm_dataset_info(dataset, &rows, &l->row_bytes, NULL);
  if (st == TDM_SUCCESS)
    st = tdm_sampler_info(sampler, NULL, &l->batch_rows);
  if (st == TDM_SUCCESS && batches == 0)
    st = tdmi_error(TDM_ERR_INVALID_USAGE, "%s: the sampler's epoch has no "
                    "batch", fn);
  if (st == TDM_SUCCESS && tdmi_sampler_total(sampler) > rows)
    st = tdmi_error(TDM_ERR_INVALID_ARGUMENT, "%s: the sampler draws from "
                    "%zu rows, the dataset has %zu", fn,
                    tdmi_sampler_total(sampler), rows);
  if (st == TDM_SUCCESS)
    st = start(l, prefetch, fn);
  if (st == TDM_SUCCESS)
    st = tdmi_handle_register(l, TDMI_HANDLE_LOADER);
  if (st != TDM_SUCCESS) {
    free_loader(l); /* the message stays */
    return st;
  }
  *loader = l;
  return TDM_SUCCESS;
}

/* With the lock held: the caller's slot goes back to the thread, and the
 * queue restarts when the sampler was moved. */
static void recycle(tdm_loader *l) {
  if (l->held) {
    l->head = (l->head + 1) % l->nslots;
    l->filled--;
    l->held = 0;
  }
  tdmi_position want = tdmi_sampler_position(l->s);
  if (want.epoch != l->queue_pos.epoch || want.batch != l->queue_pos.batch) {
    l->generation++;
    l->filled = 0;
    l->queue_pos = l->fill_pos = want;
  }
  pthread_cond_broadcast(&l->changed);
}

static tdm_status hand_out(tdm_loader *l, slot *sl, tdm_batch *b) {
  if (sl->status != TDM_SUCCESS) {
    l->failed = sl->status;
    snprintf(l->failed_message, sizeof l->failed_message, "%s", sl->message);
    return tdmi_error(l->failed, "tdm_loader_next: %s", sl->message);
  }
  *b = (tdm_batch){sl->data, sl->count, sl->valid, l->row_bytes,
                   sl->pos.epoch, sl->pos.batch};
  l->queue_pos = tdmi_sampler_after(l->s, sl->pos);
  return tdmi_sampler_seek(l->s, l->queue_pos, "tdm_loader_next");
}

tdm_status tdm_loader_next(tdm_loader *l, tdm_batch *batch) {
  const char *fn = "tdm_loader_next";
  CHECK_LOADER(l, fn);
  TDMI_CHECK_PTR(batch, fn);
  if (l->failed != TDM_SUCCESS)
    return tdmi_error(l->failed, "%s: the loader stopped at an earlier "
                      "error: %s", fn, l->failed_message);
  if (!l->threaded) {
    l->queue_pos = tdmi_sampler_position(l->s);
    read_batch(l, &l->slots[0], l->queue_pos);
    return hand_out(l, &l->slots[0], batch);
  }
  pthread_mutex_lock(&l->lock);
  recycle(l);
  while (l->filled == 0)
    pthread_cond_wait(&l->changed, &l->lock);
  l->held = 1;
  tdm_status st = hand_out(l, &l->slots[l->head], batch);
  pthread_mutex_unlock(&l->lock);
  return st;
}

tdm_status tdm_loader_destroy(tdm_loader *l) {
  CHECK_LOADER(l, "tdm_loader_destroy");
  tdmi_handle_unregister(l, TDMI_HANDLE_LOADER);
  free_loader(l);
  return TDM_SUCCESS;
}
