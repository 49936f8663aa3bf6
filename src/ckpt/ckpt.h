/* ckpt.h - internal interface of the checkpoint layer: safetensors files
 * read and written in parallel with collective MPI-IO (tensorio.c), the
 * folder's atomic commit, rotation and lookup (commit.c), state.json
 * (state.c); checkpoint.c puts them together behind tdm_save_state,
 * tdm_load_state and tdm_load_weights.  Not installed. */
#ifndef TDM_CKPT_H
#define TDM_CKPT_H

#include "../optim/optim.h"
#include "safetensors.h"

/* ---- parallel tensor files (tensorio.c) ---- */

/* One contiguous run of bytes this rank moves between a file and its
 * staging buffer. */
typedef struct {
  uint64_t file_off; /* absolute offset in the file */
  uint64_t bytes;
  size_t buf_off;    /* where in the rank's staging buffer */
} tdmi_piece;

typedef struct {
  tdmi_piece *v;
  size_t n, cap;
  size_t total; /* bytes of all pieces: the staging buffer's size */
} tdmi_pieces;

/* Appends a piece and returns its buf_off (pieces fill the buffer in the
 * order they are added). */
tdm_status tdmi_pieces_add(tdmi_pieces *p, uint64_t file_off, uint64_t bytes,
                           size_t *buf_off);
void tdmi_pieces_free(tdmi_pieces *p);

/* Collective over comm: writes (or reads) each rank's pieces of file
 * between buf and the file with MPI_File_write_at_all (read_at_all).
 * Writing creates the file and fsyncs it (MPI_File_sync).  Every rank
 * returns the same status; errors name the file. */
tdm_status tdmi_tensorio_write(MPI_Comm comm, const char *file,
                               tdmi_pieces *p, const void *buf);
tdm_status tdmi_tensorio_read(MPI_Comm comm, const char *file,
                              tdmi_pieces *p, void *buf);

/* Collective: rank 0 reads and validates the safetensors header of file,
 * every rank gets the parsed header (or the same error). */
tdm_status tdmi_tensorio_header(MPI_Comm comm, const char *file,
                                tdmi_st_header *h);

/* ---- the folder (commit.c); rank 0's file system work ---- */

#define TDMI_CKPT_PREFIX "checkpoint-"
#define TDMI_CKPT_DONE "done"
#define TDMI_CKPT_STATE "state.json"
#define TDMI_CKPT_OPTIMIZER "optimizer.safetensors"
#define TDMI_CKPT_MODEL "model.safetensors"
#define TDMI_CKPT_INDEX "model.safetensors.index.json"
#define TDMI_CKPT_USER "user_data.bin"

/* Creates root (and parents) if missing, removes leftovers of crashed
 * saves (checkpoint-*.tmp-* and checkpoint folders without their done
 * marker other than final) and makes the empty folder tmp. */
tdm_status tdmi_commit_begin(const char *root, const char *final,
                             const char *tmp);
/* Writes bytes to path and fsyncs it. */
tdm_status tdmi_write_file(const char *path, const void *bytes, size_t n);
/* Reads the whole (small) file into malloc'd *bytes (NUL-terminated);
 * TDM_ERR_FORMAT when it exceeds max bytes. */
tdm_status tdmi_read_file(const char *path, size_t max, char **bytes,
                          size_t *n);
/* fsyncs tmp and its files, moves it to final (replacing an older final
 * atomically), writes the done marker (listing every file and its size)
 * and fsyncs the folders. */
tdm_status tdmi_commit_finish(const char *root, const char *tmp,
                              const char *final);
/* Removes the oldest complete checkpoints beyond keep (keep > 0). */
tdm_status tdmi_commit_rotate(const char *root, int keep);
/* Whether dir is a complete checkpoint: its done marker is there and
 * every file it lists has the size it lists.  TDM_ERR_FORMAT naming the
 * file otherwise. */
tdm_status tdmi_commit_verify(const char *dir);
/* Removes path and everything under it. */
tdm_status tdmi_remove_tree(const char *path);

/* ---- state.json (state.c) ---- */

#define TDMI_CKPT_FORMAT_VERSION 1

/* Everything of a checkpoint that is not a tensor. */
typedef struct {
  int64_t step;              /* optimizer boundaries so far */
  int world_size, zero_stage, offload, precision, reduce_dtype;
  int accumulation_steps, accumulation_position;
  int weights_dtype;         /* TDM_UNSET: the parameters' own */
  int nmodel_files;
  int has_optimizer;
  int optimizer_kind;
  int64_t opt_steps, opt_skipped;
  int last_skipped;
  double schedule_factor;
  int scaling;
  double loss_scale;
  int growth_tracker;
  int nrngs;
  uint64_t *rng_offsets;     /* nrngs * world_size, rank-major per rng */
  uint64_t user_bytes;
} tdmi_ckpt_state;

/* JSON text of s (malloc'd, NUL-terminated). */
tdm_status tdmi_state_dump(const tdmi_ckpt_state *s, char **json);
/* Parses state.json text; errors TDM_ERR_FORMAT naming file and field. */
tdm_status tdmi_state_parse(const char *file, const char *json, size_t n,
                            tdmi_ckpt_state *s);
void tdmi_state_free(tdmi_ckpt_state *s);

/* model.safetensors.index.json (Hugging Face's layout):
 * {"metadata": {"total_size": total}, "weight_map": {tensor: file}}. */
tdm_status tdmi_index_dump(uint64_t total, const char *const *tensors,
                           const char *const *files, int n, char **json);
/* The distinct files of an index's weight_map, in order of first
 * appearance (malloc'd strings); plain names only (no '/').  Errors
 * TDM_ERR_FORMAT naming file and field. */
tdm_status tdmi_index_parse(const char *file, const char *json, size_t n,
                            char ***files, int *nfiles);
void tdmi_strings_free(char **v, int n);

#endif /* TDM_CKPT_H */
