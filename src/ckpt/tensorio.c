/* tensorio.c - safetensors files moved in parallel: every rank writes or
 * reads only its own byte ranges, in collective MPI-IO calls, so no rank
 * ever holds a whole model.  The ranges become an hindexed file view and
 * an hindexed memory type of absolute addresses (MPI_BOTTOM), so host
 * arrays move without a copy; a call moves at most ROUND_BYTES per rank,
 * as MPI counts and type sizes are ints. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ckpt.h"

#define ROUND_BYTES ((uint64_t)1 << 30)

tdm_status tdmi_pieces_add(tdmi_pieces *p, uint64_t file_off, uint64_t bytes,
                           const void *mem) {
  if (bytes == 0)
    return TDM_SUCCESS;
  MPI_Aint addr;
  MPI_Get_address(mem, &addr);
  tdmi_piece *last = p->n ? &p->v[p->n - 1] : NULL;
  if (last && last->file_off + last->bytes == file_off &&
      last->addr + (MPI_Aint)last->bytes == addr) { /* one run: merge */
    last->bytes += bytes;
    p->total += bytes;
    return TDM_SUCCESS;
  }
  if (p->n == p->cap) {
    size_t cap = p->cap ? 2 * p->cap : 64;
    tdmi_piece *v = realloc(p->v, cap * sizeof *v);
    if (!v)
      return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory");
    p->v = v;
    p->cap = cap;
  }
  p->v[p->n++] = (tdmi_piece){file_off, bytes, addr};
  p->total += bytes;
  return TDM_SUCCESS;
}

void tdmi_pieces_free(tdmi_pieces *p) {
  free(p->v);
  *p = (tdmi_pieces){0};
}

static int by_file_off(const void *a, const void *b) {
  uint64_t x = ((const tdmi_piece *)a)->file_off;
  uint64_t y = ((const tdmi_piece *)b)->file_off;
  return x < y ? -1 : x > y;
}

/* The pieces in file order, cut so that no round moves more than
 * ROUND_BYTES: rounds[r] is the index of round r's first piece. */
typedef struct {
  tdmi_piece *v;
  size_t n;
  size_t *rounds;
  size_t nrounds;
} plan;

static tdm_status plan_make(const tdmi_pieces *p, plan *out) {
  size_t cap = p->n + (size_t)(p->total / ROUND_BYTES) + 1;
  out->v = malloc(cap * sizeof *out->v);
  out->rounds = malloc((cap + 1) * sizeof *out->rounds);
  out->n = out->nrounds = 0;
  if (!out->v || !out->rounds)
    return tdmi_error(TDM_ERR_NO_MEMORY, "checkpoint: out of memory");
  tdmi_piece *sorted = out->v + (cap - p->n);
  if (p->n)
    memcpy(sorted, p->v, p->n * sizeof *sorted);
  qsort(sorted, p->n, sizeof *sorted, by_file_off);
  uint64_t in_round = ROUND_BYTES;
  for (size_t i = 0; i < p->n; i++) {
    tdmi_piece rest = sorted[i];
    while (rest.bytes > 0) {
      if (in_round == ROUND_BYTES) {
        out->rounds[out->nrounds++] = out->n;
        in_round = 0;
      }
      uint64_t take = rest.bytes < ROUND_BYTES - in_round
                          ? rest.bytes
                          : ROUND_BYTES - in_round;
      out->v[out->n++] = (tdmi_piece){rest.file_off, take, rest.addr};
      rest.file_off += take;
      rest.addr += (MPI_Aint)take;
      rest.bytes -= take;
      in_round += take;
    }
  }
  out->rounds[out->nrounds] = out->n;
  return TDM_SUCCESS;
}

static void plan_free(plan *pl) {
  free(pl->v);
  free(pl->rounds);
}

/* Round r's file view and memory type. */
static int round_types(const plan *pl, size_t r, MPI_Datatype *file_type,
                       MPI_Datatype *mem_type, int *bytes) {
  size_t lo = pl->rounds[r], n = pl->rounds[r + 1] - lo;
  int *len = malloc(n * sizeof *len);
  MPI_Aint *file_disp = malloc(n * sizeof *file_disp);
  MPI_Aint *mem_disp = malloc(n * sizeof *mem_disp);
  int rc = MPI_ERR_NO_MEM;
  *bytes = 0;
  if (len && file_disp && mem_disp) {
    for (size_t i = 0; i < n; i++) {
      len[i] = (int)pl->v[lo + i].bytes;
      file_disp[i] = (MPI_Aint)pl->v[lo + i].file_off;
      mem_disp[i] = pl->v[lo + i].addr;
      *bytes += len[i];
    }
    rc = MPI_Type_create_hindexed((int)n, len, file_disp, MPI_BYTE, file_type);
    if (rc == MPI_SUCCESS)
      rc = MPI_Type_commit(file_type);
    if (rc == MPI_SUCCESS)
      rc = MPI_Type_create_hindexed((int)n, len, mem_disp, MPI_BYTE, mem_type);
    if (rc == MPI_SUCCESS)
      rc = MPI_Type_commit(mem_type);
  }
  free(len);
  free(file_disp);
  free(mem_disp);
  return rc;
}

/* The collective read or write of a round, for tdmi_run_fn. */
typedef struct {
  MPI_File fh;
  int writing, n;
  MPI_Datatype mem_type;
  MPI_Status *status;
} io_call;

static int io_all(void *arg) {
  io_call *c = arg;
  return c->writing ? MPI_File_write_at_all(c->fh, 0, MPI_BOTTOM, c->n,
                                            c->mem_type, c->status)
                    : MPI_File_read_at_all(c->fh, 0, MPI_BOTTOM, c->n,
                                           c->mem_type, c->status);
}

/* One collective call moving round r (nothing when this rank has fewer
 * rounds: it still takes part). */
static tdm_status move_round(MPI_Comm comm, MPI_File fh, const plan *pl,
                             size_t r, int writing, const char *file) {
  MPI_Datatype file_type = MPI_BYTE, mem_type = MPI_BYTE;
  int bytes = 0, rc = MPI_SUCCESS, count = 0;
  if (r < pl->nrounds)
    rc = round_types(pl, r, &file_type, &mem_type, &bytes);
  /* A rank that failed above still joins the collective calls. */
  int ok = rc == MPI_SUCCESS;
  const char *call = "MPI_Type_create_hindexed";
  int rc2 = MPI_File_set_view(fh, 0, MPI_BYTE, ok ? file_type : MPI_BYTE,
                              "native", MPI_INFO_NULL);
  MPI_Status status;
  int n = ok && bytes > 0 ? 1 : 0;
  call = writing ? "MPI_File_write_at_all" : "MPI_File_read_at_all";
  if (rc2 == MPI_SUCCESS) {
    io_call c = {fh, writing, n, mem_type, &status};
    tdm_status st = tdmi_run_fn(comm, call, (size_t)bytes, io_all, &c);
    if (st == TDM_ERR_TIMEOUT)
      return st; /* the worker may still use the types: leave them */
    rc2 = st == TDM_SUCCESS ? MPI_SUCCESS : MPI_ERR_IO;
  }
  if (ok && rc2 != MPI_SUCCESS)
    rc = rc2;
  else
    call = "MPI_Type_create_hindexed";
  if (ok && rc == MPI_SUCCESS && n) {
    MPI_Get_count(&status, MPI_BYTE, &count);
    if (count != bytes) {
      if (file_type != MPI_BYTE)
        MPI_Type_free(&file_type);
      MPI_Type_free(&mem_type);
      return tdmi_error(writing ? TDM_ERR_IO : TDM_ERR_FORMAT,
                        "%s: %s %d of %d bytes (%s)", file,
                        writing ? "wrote" : "read", count, bytes,
                        writing ? "disk full?" : "file truncated");
    }
  }
  if (file_type != MPI_BYTE)
    MPI_Type_free(&file_type);
  if (mem_type != MPI_BYTE)
    MPI_Type_free(&mem_type);
  if (rc != MPI_SUCCESS) {
    tdmi_mpi_error(rc, call);
    return tdmi_error(TDM_ERR_IO, "%s: %s", file, tdm_last_error());
  }
  return TDM_SUCCESS;
}

static tdm_status transfer(MPI_Comm comm, const char *file,
                           const tdmi_pieces *p, int writing) {
  MPI_File fh = MPI_FILE_NULL;
  int amode = writing ? MPI_MODE_CREATE | MPI_MODE_WRONLY : MPI_MODE_RDONLY;
  int rc = MPI_File_open(comm, file, amode, MPI_INFO_NULL, &fh);
  tdm_status st = TDM_SUCCESS;
  if (rc != MPI_SUCCESS) {
    tdmi_mpi_error(rc, "MPI_File_open");
    st = tdmi_error(TDM_ERR_IO, "%s: cannot open for %s: %s", file,
                    writing ? "writing" : "reading", tdm_last_error());
  }
  /* MPI_File_open is collective: it fails on every rank or on none. */
  TDMI_TRY(tdmi_agree(comm, st, "opening a checkpoint file"));
  plan pl = {0};
  st = plan_make(p, &pl);
  unsigned long mine = (unsigned long)pl.nrounds, rounds = 0;
  tdmi_mpi_call max = {TDMI_RUN_ALLREDUCE, &mine, &rounds, 1,
                       MPI_UNSIGNED_LONG, MPI_MAX, 0, comm};
  tdm_status agreed = tdmi_run(&max, "checkpoint I/O rounds", sizeof rounds);
  /* After a timeout no collective call may follow (they would wait for
   * the stalled rank): the file stays open, the job is over. */
  if (agreed != TDM_SUCCESS) {
    plan_free(&pl);
    return agreed;
  }
  for (size_t r = 0; r < rounds; r++) {
    tdm_status s = move_round(comm, fh, &pl, st == TDM_SUCCESS ? r : rounds,
                              writing, file);
    if (s == TDM_ERR_TIMEOUT) {
      plan_free(&pl);
      return s;
    }
    if (st == TDM_SUCCESS)
      st = s;
  }
  plan_free(&pl);
  if (writing) {
    rc = MPI_File_sync(fh);
    if (rc != MPI_SUCCESS && st == TDM_SUCCESS) {
      tdmi_mpi_error(rc, "MPI_File_sync");
      st = tdmi_error(TDM_ERR_IO, "%s: %s", file, tdm_last_error());
    }
  }
  rc = MPI_File_close(&fh);
  if (rc != MPI_SUCCESS && st == TDM_SUCCESS) {
    tdmi_mpi_error(rc, "MPI_File_close");
    st = tdmi_error(TDM_ERR_IO, "%s: %s", file, tdm_last_error());
  }
  return tdmi_agree(comm, st, writing ? "writing a checkpoint file"
                                      : "reading a checkpoint file");
}

tdm_status tdmi_tensorio_write(MPI_Comm comm, const char *file,
                               const tdmi_pieces *p) {
  return transfer(comm, file, p, 1);
}

tdm_status tdmi_tensorio_read(MPI_Comm comm, const char *file,
                              const tdmi_pieces *p) {
  return transfer(comm, file, p, 0);
}

/* ---- the header: rank 0 reads it, every rank parses the same bytes ---- */

tdm_status tdmi_st_read_header(const char *file, char **json, uint64_t *n,
                               uint64_t *size) {
  FILE *fp = fopen(file, "rb");
  if (!fp)
    return tdmi_error(TDM_ERR_IO, "%s: cannot open: %s", file,
                      strerror(errno));
  struct stat sb;
  uint8_t first8[8] = {0};
  tdm_status st = TDM_SUCCESS;
  if (fstat(fileno(fp), &sb) != 0)
    st = tdmi_error(TDM_ERR_IO, "%s: cannot stat: %s", file, strerror(errno));
  *size = st == TDM_SUCCESS ? (uint64_t)sb.st_size : 0;
  size_t got = st == TDM_SUCCESS ? fread(first8, 1, 8, fp) : 0;
  if (st == TDM_SUCCESS)
    st = tdmi_st_header_length(file, first8, got < 8 ? got : *size, n);
  if (st == TDM_SUCCESS && !(*json = malloc(*n + 1)))
    st = tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory for a %llu-byte "
                    "header", file, (unsigned long long)*n);
  if (st == TDM_SUCCESS && fread(*json, 1, *n, fp) != *n)
    st = tdmi_error(TDM_ERR_FORMAT, "%s: header ends early", file);
  fclose(fp);
  return st;
}

tdm_status tdmi_st_load_header(const char *file, tdmi_st_header *h) {
  char *json = NULL;
  uint64_t n = 0, size = 0;
  tdm_status st = tdmi_st_read_header(file, &json, &n, &size);
  if (st == TDM_SUCCESS)
    st = tdmi_st_parse(file, json, n, size, h);
  free(json);
  return st;
}

tdm_status tdmi_tensorio_header(MPI_Comm comm, const char *file,
                                tdmi_st_header *h) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  char *json = NULL;
  uint64_t meta[2] = {0, 0}; /* header bytes, file size */
  tdm_status st = rank == 0 ? tdmi_st_read_header(file, &json, &meta[0], &meta[1])
                            : TDM_SUCCESS;
  TDMI_TRY(tdmi_agree(comm, st, "reading a safetensors header"));
  TDMI_TRY(tdmi_bcast_bytes(comm, meta, sizeof meta, 0));
  if (rank != 0 && !(json = malloc(meta[0] + 1)))
    st = tdmi_error(TDM_ERR_NO_MEMORY, "%s: out of memory", file);
  TDMI_TRY(tdmi_agree(comm, st, "reading a safetensors header"));
  st = tdmi_bcast_bytes(comm, json, meta[0], 0);
  if (st == TDM_SUCCESS)
    st = tdmi_st_parse(file, json, meta[0], meta[1], h);
  free(json);
  return tdmi_agree(comm, st, "reading a safetensors header");
}
