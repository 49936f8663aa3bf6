/* ckpt.h - internal interface of the checkpoint layer: safetensors files
 * read and written in parallel with collective MPI-IO (tensorio.c), the
 * folder's atomic commit, rotation and lookup (commit.c), state.json
 * (state.c); tensors.c, save.c and load.c put them together behind
 * tdm_save_state, tdm_load_state and tdm_load_weights.  Not installed. */
#ifndef TDM_CKPT_H
#define TDM_CKPT_H

#include "../optim/optim.h"
#include "safetensors.h"

/* ---- parallel tensor files (tensorio.c) ---- */

/* One contiguous run of bytes this rank moves between a file and its
 * memory (an engine array itself, or a staging buffer). */
typedef struct {
  uint64_t file_off; /* absolute offset in the file */
  uint64_t bytes;
  MPI_Aint addr;     /* MPI_Get_address of the memory */
} tdmi_piece;

typedef struct {
  tdmi_piece *v;
  size_t n, cap;
  uint64_t total; /* bytes of all pieces */
} tdmi_pieces;

/* Appends a piece: bytes at file_off <-> host memory at mem. */
tdm_status tdmi_pieces_add(tdmi_pieces *p, uint64_t file_off, uint64_t bytes,
                           const void *mem);
void tdmi_pieces_free(tdmi_pieces *p);

/* Collective over comm: writes (or reads) each rank's pieces of file
 * between its memory and the file with MPI_File_write_at_all
 * (read_at_all).
 * Writing creates the file and fsyncs it (MPI_File_sync).  Every rank
 * returns the same status; errors name the file. */
tdm_status tdmi_tensorio_write(MPI_Comm comm, const char *file,
                               const tdmi_pieces *p);
tdm_status tdmi_tensorio_read(MPI_Comm comm, const char *file,
                              const tdmi_pieces *p);

/* Reads file's 8-byte length and JSON header (malloc'd *json, *n bytes,
 * not NUL-terminated) and its size; nothing of the data section. */
tdm_status tdmi_st_read_header(const char *file, char **json, uint64_t *n,
                               uint64_t *size);
/* tdmi_st_read_header, then tdmi_st_parse: file's header, validated. */
tdm_status tdmi_st_load_header(const char *file, tdmi_st_header *h);

/* Which safetensors files hold a model at path: a file, an index
 * (model.safetensors.index.json: the files it names, in its folder) or a
 * folder with either; malloc'd "file\n" lines. */
tdm_status tdmi_model_files_local(const char *path, char **lines);

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
/* Writes all n bytes to fd (path names it in errors), across short
 * writes and EINTR. */
tdm_status tdmi_write_fd(int fd, const void *bytes, size_t n,
                         const char *path);
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

/* ---- the entry points (save.c, load.c) ---- */

/* Positions of the data layer's samplers, which src/checkpoint.c hands
 * over (the ckpt layer is below data): pos[2 i], pos[2 i + 1] are sampler
 * i's epoch and batch.  status: the caller's own checks, agreed first. */
typedef struct {
  int count;
  uint64_t *pos;
  tdm_status status;
} tdmi_ckpt_samplers;

/* tdm_save_state with the samplers' positions (identical on every rank). */
tdm_status tdmi_save_state(tdm_engine *e, tdm_optimizer *opt,
                           const char *root,
                           const tdm_checkpoint_options *options,
                           const tdmi_ckpt_samplers *samplers);
/* tdm_load_state; fills samplers->pos[0 .. 2 count) from the checkpoint,
 * which must hold at least count positions. */
tdm_status tdmi_load_state(tdm_engine *e, tdm_optimizer *opt,
                           const char *path,
                           const tdm_checkpoint_options *options,
                           tdmi_ckpt_samplers *samplers);

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
  int nsamplers;
  uint64_t *sampler_pos;     /* nsamplers * 2: epoch, batch (rank 0's) */
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
 * appearance (malloc'd strings); plain names only (no '/' or newline).  Errors
 * TDM_ERR_FORMAT naming file and field. */
tdm_status tdmi_index_parse(const char *file, const char *json, size_t n,
                            char ***files, int *nfiles);
void tdmi_strings_free(char **v, int n);

/* ---- a checkpoint's tensors and each rank's part of them (tensors.c) ---- */

enum { TDMI_CKPT_VALUES = 0, TDMI_CKPT_STATE0 = 1, TDMI_CKPT_STATE1 = 2 };

/* One tensor of a file: which array of which parameter, in what dtype. */
typedef struct {
  int param;
  int which;       /* TDMI_CKPT_VALUES, _STATE0, _STATE1 */
  tdm_dtype dtype; /* in the file */
  char *name;
} tdmi_ckpt_item;

typedef struct {
  tdm_engine *e;
  tdm_optimizer *opt; /* NULL: values only */
  int loading;        /* file -> engine */
} tdmi_ckpt_ctx;

/* Moves this rank's part of every item between the engine and file;
 * data_start + begins[i] is where item i's tensor starts.  prefix (rank
 * 0, saving) is the header, written at offset 0.  Collective. */
tdm_status tdmi_ckpt_move_file(const tdmi_ckpt_ctx *c, const char *file,
                               const tdmi_ckpt_item *items, int nitems,
                               const uint64_t *begins, uint64_t data_start,
                               const uint8_t *prefix, size_t prefix_len);
/* Every parameter's values in dtype (TDM_UNSET: its own). */
tdm_status tdmi_ckpt_model_items(const tdm_engine *e, int dtype,
                                 tdmi_ckpt_item **out);
/* Every state buffer of every parameter, and the masters where the model
 * file holds another dtype than the parameter's. */
tdm_status tdmi_ckpt_optimizer_items(const tdmi_ckpt_ctx *c, int weights_dtype,
                                     tdmi_ckpt_item **out, int *n);
void tdmi_ckpt_items_free(tdmi_ckpt_item *v, int n);
uint64_t tdmi_ckpt_tensor_bytes(const tdm_engine *e, const tdmi_ckpt_item *it);

/* The caller's options (may be NULL), checked. */
tdm_status tdmi_ckpt_read_options(const tdm_checkpoint_options *in,
                                  tdm_checkpoint_options *out, const char *fn);
/* Between accumulation cycles, optimizer (may be NULL) of engine e. */
tdm_status tdmi_ckpt_check_between_steps(tdm_engine *e, tdm_optimizer *opt,
                                         const char *fn);
void tdmi_ckpt_put_path(const tdm_checkpoint_options *o, const char *dir);

/* dir/name, malloc'd (NULL when out of memory). */
char *tdmi_path_in(const char *dir, const char *name);
/* out[i] = in[i] between any two of f64, f32, bf16 and f16 (through f32
 * between 16-bit types and from f64 to them), or a copy when from == to. */
tdm_status tdmi_ckpt_convert(tdm_dtype from, const void *in, tdm_dtype to,
                             void *out, size_t n);
tdm_status tdmi_ckpt_no_memory(void);
/* Rank 0: a small file of the checkpoint, fsynced. */
tdm_status tdmi_ckpt_write_small(const char *dir, const char *name,
                                 const void *bytes, size_t n);
/* Rank 0's string of cap bytes on every rank. */
tdm_status tdmi_ckpt_share_string(MPI_Comm comm, char *s, size_t cap);

#endif /* TDM_CKPT_H */
