/* track.h - the track layer: metrics files (metrics.c, tfevents.c).
 * It sits just above core, so that every layer above may report into
 * it; it never calls MPI. */
#ifndef TDM_TRACK_H
#define TDM_TRACK_H

#include <stdio.h>

#include "../core/core.h"

/* Opens ctx->config.metrics_dir's files on the ranks that write them
 * (the main rank, or every rank with metrics_all_ranks); sets
 * ctx->metrics, or leaves it NULL where this rank writes none.  Not
 * collective: tdm_init agrees on the outcome. */
tdm_status tdmi_metrics_open(tdm_context *ctx);
/* Flushes and closes them; safe with none open. */
void tdmi_metrics_close(tdm_context *ctx);
/* Writes one record of count scalars at step; a no-op where this rank
 * writes none.  names were checked by the caller. */
tdm_status tdmi_metrics_write(tdm_context *ctx, int64_t step, int count,
                              const char *const *names, const double *values);

/* ---- TensorBoard event files (tfevents.c) ---- */

/* Appends one record framed as TFRecord: the length, its masked CRC32C,
 * the bytes, their masked CRC32C.  Returns 0 or -1 (errno set). */
int tdmi_tfevents_record(FILE *fp, const unsigned char *data, size_t len);
/* The first record of an event file: the file_version event. */
int tdmi_tfevents_header(FILE *fp, double wall_time);
/* An Event at step holding count scalar summaries (simple_value). */
int tdmi_tfevents_scalars(FILE *fp, double wall_time, int64_t step,
                          int count, const char *const *names,
                          const double *values);

#endif
