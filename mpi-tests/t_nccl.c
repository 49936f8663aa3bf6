/* t_nccl.c - NCCL bootstrapped over MPI (src/comm/nccl.c), against MPI
 * itself:
 *  - the unique id rank 0 makes reaches every rank of the world, of each
 *    half of a split and of the node-local and cross-node communicators,
 *    byte for byte (compared with MPI_Allgather); different communicators
 *    get different ids;
 *  - node-local x cross-node covers the world once: every rank is in
 *    exactly one of each, and local size x cross size = world size on a
 *    homogeneous allocation;
 *  - where a GPU is visible, an NCCL communicator forms over the world on
 *    each rank's local GPU (else that part reports a skip);
 *  - without NCCL the id is TDM_ERR_NOT_SUPPORTED naming NCCL.
 * Links the comm layer directly: these calls are internal. */
#include "config.h"
#include "../src/comm/comm.h"
#include "harness.h"
#ifdef HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#define ID_BYTES 128 /* NCCL_UNIQUE_ID_BYTES */

static int rank, size;

/* Whether every rank of comm holds the same id bytes. */
static int same_everywhere(MPI_Comm comm, const unsigned char *id) {
  int n;
  MPI_Comm_size(comm, &n);
  unsigned char *all = malloc((size_t)n * ID_BYTES);
  MPI_Allgather(id, ID_BYTES, MPI_BYTE, all, ID_BYTES, MPI_BYTE, comm);
  int same = 1;
  for (int r = 1; r < n; r++)
    same &= memcmp(all, all + (size_t)r * ID_BYTES, ID_BYTES) == 0;
  free(all);
  return same;
}

static int nonzero(const unsigned char *id) {
  for (int i = 0; i < ID_BYTES; i++)
    if (id[i])
      return 1;
  return 0;
}

static void ids(void) {
  unsigned char world[ID_BYTES] = {0}, half[ID_BYTES] = {0};
  TH_OK(tdmi_nccl_unique_id(MPI_COMM_WORLD, world));
  TH_CHECK(nonzero(world), "the world's id is all zero bytes");
  TH_CHECK(same_everywhere(MPI_COMM_WORLD, world), "world ids differ");
  MPI_Comm split;
  MPI_Comm_split(MPI_COMM_WORLD, rank % 2, rank, &split);
  TH_OK(tdmi_nccl_unique_id(split, half));
  TH_CHECK(same_everywhere(split, half), "ids differ inside a half");
  TH_CHECK(memcmp(half, world, ID_BYTES) != 0, "a half reused the world id");
  /* Rank 0 and rank 1 lead the two halves: their ids must differ. */
  unsigned char other[ID_BYTES];
  if (size >= 2) {
    if (rank <= 1)
      MPI_Sendrecv(half, ID_BYTES, MPI_BYTE, 1 - rank, 0, other, ID_BYTES,
                   MPI_BYTE, 1 - rank, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    if (rank <= 1)
      TH_CHECK(memcmp(half, other, ID_BYTES) != 0, "both halves got one id");
  }
  MPI_Comm_free(&split);
}

static void node_split(int nccl) {
  MPI_Comm local, cross;
  TH_OK(tdmi_comm_split_node(MPI_COMM_WORLD, &local, &cross));
  int lsize, csize, lrank, crank;
  MPI_Comm_size(local, &lsize);
  MPI_Comm_size(cross, &csize);
  MPI_Comm_rank(local, &lrank);
  MPI_Comm_rank(cross, &crank);
  TH_CHECK(lsize * csize == size, "local %d x cross %d != world %d", lsize,
           csize, size);
  /* (node, local rank) names every rank once. */
  int key = crank * lsize + lrank, *keys = malloc(sizeof *keys * size);
  MPI_Allgather(&key, 1, MPI_INT, keys, 1, MPI_INT, MPI_COMM_WORLD);
  for (int i = 0; i < size; i++)
    for (int j = i + 1; j < size; j++)
      TH_CHECK(keys[i] != keys[j], "ranks %d and %d share a place", i, j);
  free(keys);
  unsigned char id[ID_BYTES];
  if (nccl) {
    TH_OK(tdmi_nccl_unique_id(local, id));
    TH_CHECK(same_everywhere(local, id), "node-local ids differ");
    TH_OK(tdmi_nccl_unique_id(cross, id));
    TH_CHECK(same_everywhere(cross, id), "cross-node ids differ");
  }
  MPI_Comm_free(&local);
  MPI_Comm_free(&cross);
}

static int visible_gpus(void) {
#ifdef HAVE_CUDA
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
#else
  return 0;
#endif
}

/* An NCCL communicator over the world on each rank's local GPU. */
static void communicator(void) {
  int gpus = visible_gpus();
  int any = gpus;
  MPI_Allreduce(&gpus, &any, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (any == 0) {
    if (rank == 0)
      printf("t_nccl: GPU part: skip (no GPU visible on every rank)\n");
    return;
  }
#ifdef HAVE_CUDA
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank,
                      MPI_INFO_NULL, &local);
  int lrank;
  MPI_Comm_rank(local, &lrank);
  MPI_Comm_free(&local);
  TH_CHECK(cudaSetDevice(lrank % gpus) == cudaSuccess, "cudaSetDevice");
  tdmi_nccl *n = NULL;
  TH_OK(tdmi_nccl_create(MPI_COMM_WORLD, 60.0, &n));
  tdmi_nccl_destroy(n);
#endif
}

int main(int argc, char **argv) {
  th_init(&argc, &argv, MPI_THREAD_SINGLE, &rank, &size);
  if (tdmi_nccl_version() == 0) {
    unsigned char id[ID_BYTES];
    TH_FAILS(tdmi_nccl_unique_id(MPI_COMM_WORLD, id), TDM_ERR_NOT_SUPPORTED,
             "without NCCL");
    node_split(0);
    if (rank == 0)
      printf("t_nccl: built without NCCL: only the MPI side checked\n");
  } else {
    ids();
    node_split(1);
    communicator();
  }
  int code = th_finish("t_nccl");
  MPI_Finalize();
  return code;
}
