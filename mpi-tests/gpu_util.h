/* gpu_util.h - what the GPU tests share: how many GPUs this process sees
 * and whether every rank has one of its own.  Include after config.h and
 * mpi.h. */
#ifndef TDM_GPU_UTIL_H
#define TDM_GPU_UTIL_H

#ifdef HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

/* Visible CUDA devices; 0 without CUDA, a driver or a GPU. */
static inline int th_visible_gpus(void) {
#ifdef HAVE_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

/* Whether every rank of the world has a GPU of its own (NCCL refuses two
 * ranks on one GPU), the same answer on every rank; *local_rank (may be
 * NULL) is the rank on its node.  Collective. */
static inline int th_gpu_per_rank(int *local_rank) {
  MPI_Comm node;
  int rank, lrank, lsize;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank,
                      MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &lrank);
  MPI_Comm_size(node, &lsize);
  MPI_Comm_free(&node);
  if (local_rank)
    *local_rank = lrank;
  int enough = th_visible_gpus() >= lsize, all = 0;
  MPI_Allreduce(&enough, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all;
}

#endif /* TDM_GPU_UTIL_H */
