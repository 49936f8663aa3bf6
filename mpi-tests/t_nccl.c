/* t_nccl.c - NCCL bootstrapped over MPI (src/comm/nccl.c), against MPI
 * itself:
 *  - the unique id rank 0 makes reaches every rank of the world, of each
 *    half of a split and of the node-local and cross-node communicators,
 *    byte for byte (compared with MPI_Allgather); different communicators
 *    get different ids;
 *  - node-local x cross-node covers the world once: every rank is in
 *    exactly one of each, and local size x cross size = world size on a
 *    homogeneous allocation;
 *  - where every rank has a GPU of its own, an NCCL communicator forms
 *    over the world on each rank's local GPU, and its in-place collectives
 *    on device buffers (sum, reduce-scatter, all-gather, broadcast) match
 *    values computed on the host, for every float dtype and odd counts,
 *    alone and queued back to back on one stream (else that part reports
 *    a skip);
 *  - argument errors that need no GPU (a NULL communicator), and without
 *    NCCL every call is TDM_ERR_NOT_SUPPORTED naming NCCL;
 *  - tdmi_mpi_cuda_aware is 0 or 1, and Open MPI's own answer when its
 *    mpi-ext.h says it can tell.
 * Links the comm layer directly: these calls are internal. */
#include "config.h"
#include "../src/comm/comm.h"
#include "harness.h"
#include "gpu_util.h"
#ifdef HAVE_MPI_EXT_H
#include <mpi-ext.h>
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

#ifdef HAVE_CUDA

#define CU(call)                                                        \
  do {                                                                  \
    cudaError_t cu_ = (call);                                           \
    TH_CHECK(cu_ == cudaSuccess, "%s: %s", #call, cudaGetErrorString(cu_)); \
  } while (0)

static int is_half(tdm_dtype dtype) {
  return dtype == TDM_F16 || dtype == TDM_BF16;
}

/* Element i of rank r's contribution.  Small integers keep every partial
 * sum exact in any order, even in bf16 (8 significant bits): (i % 7 + 1)
 * x 10 for 4 ranks is at most 70. */
static double part(int r, size_t i, tdm_dtype dtype) {
  double base = is_half(dtype) ? (double)(i % 7 + 1) : (double)(i + 1);
  return (r + 1) * base;
}

/* The sum over all ranks: base x (1 + ... + size). */
static double total(size_t i, tdm_dtype dtype) {
  return part(0, i, dtype) * size * (size + 1) / 2;
}

static double load(tdm_dtype dtype, const void *buf, size_t i) {
  switch (dtype) {
  case TDM_F32: return ((const float *)buf)[i];
  case TDM_F64: return ((const double *)buf)[i];
  case TDM_F16: return tdmi_f16_to_f32(((const uint16_t *)buf)[i]);
  default: return tdmi_bf16_to_f32(((const uint16_t *)buf)[i]);
  }
}

/* A device copy of host (bytes). */
static void *upload(const void *host, size_t bytes) {
  void *d = NULL;
  CU(cudaMalloc(&d, bytes));
  CU(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice));
  return d;
}

/* Waits for stream (the collectives only queue), then copies d to host
 * and frees it. */
static void download(void *host, void *d, size_t bytes, cudaStream_t s) {
  CU(cudaStreamSynchronize(s));
  CU(cudaMemcpy(host, d, bytes, cudaMemcpyDeviceToHost));
  CU(cudaFree(d));
}

/* Elements [from, from + count) of host against total(); reports the first
 * mismatch only, so that a wrong buffer is one line, not thousands. */
static void expect_totals(const char *what, tdm_dtype dtype, const void *host,
                          size_t from, size_t count) {
  size_t i = from, end = from + count;
  while (i < end && load(dtype, host, i) == total(i, dtype))
    i++;
  TH_CHECK(i == end, "%s %s x %zu: element %zu is %g, want %g", what,
           tdmi_dtype_name(dtype), count, i, load(dtype, host, i),
           total(i, dtype));
}

/* n elements of dtype, element i = part(rank, i). */
static void *contribution(tdm_dtype dtype, size_t n) {
  void *host = malloc(n * tdmi_dtype_size(dtype));
  for (size_t i = 0; i < n; i++)
    tdmi_store(dtype, host, i, part(rank, i, dtype));
  return host;
}

static void device_sum(tdmi_nccl *n, cudaStream_t s, tdm_dtype dtype,
                       size_t count) {
  size_t bytes = count * tdmi_dtype_size(dtype);
  void *host = contribution(dtype, count), *d = upload(host, bytes);
  TH_OK(tdmi_nccl_sum(n, d, count, dtype, s));
  download(host, d, bytes, s);
  expect_totals("sum", dtype, host, 0, count);
  free(host);
}

/* The sum of this rank's chunk lands at buf + rank * chunk (NCCL's
 * in-place rule), not at buf[0, chunk) as on the MPI path. */
static void device_reduce_scatter(tdmi_nccl *n, cudaStream_t s,
                                  tdm_dtype dtype, size_t chunk) {
  size_t all = (size_t)size * chunk, bytes = all * tdmi_dtype_size(dtype);
  void *host = contribution(dtype, all), *d = upload(host, bytes);
  TH_OK(tdmi_nccl_reduce_scatter(n, d, chunk, dtype, s));
  download(host, d, bytes, s);
  expect_totals("reduce-scatter", dtype, host, (size_t)rank * chunk, chunk);
  free(host);
}

/* Reduce-scatter then all-gather of the chunks, queued back to back on
 * one stream with no wait between: a sum, if the stream orders them. */
static void device_chain(tdmi_nccl *n, cudaStream_t s, size_t chunk) {
  size_t all = (size_t)size * chunk, bytes = all * sizeof(float);
  void *host = contribution(TDM_F32, all), *d = upload(host, bytes);
  TH_OK(tdmi_nccl_reduce_scatter(n, d, chunk, TDM_F32, s));
  TH_OK(tdmi_nccl_allgather_bytes(n, d, chunk * sizeof(float), s));
  download(host, d, bytes, s);
  expect_totals("reduce-scatter + all-gather", TDM_F32, host, 0, all);
  free(host);
}

static unsigned char pattern(int r, size_t k) {
  return (unsigned char)(r * 31 + k * 7 + 1);
}

/* Each rank fills only its own part; the others hold junk until gathered. */
static void device_allgather(tdmi_nccl *n, cudaStream_t s, size_t bytes) {
  size_t all = (size_t)size * bytes;
  unsigned char *host = malloc(all);
  memset(host, 0xEE, all);
  for (size_t k = 0; k < bytes; k++)
    host[(size_t)rank * bytes + k] = pattern(rank, k);
  void *d = upload(host, all);
  TH_OK(tdmi_nccl_allgather_bytes(n, d, bytes, s));
  download(host, d, all, s);
  size_t bad = 0;
  for (int r = 0; r < size; r++)
    for (size_t k = 0; k < bytes; k++)
      bad += host[(size_t)r * bytes + k] != pattern(r, k);
  TH_CHECK(bad == 0, "all-gather x %zu bytes: %zu bytes wrong", bytes, bad);
  free(host);
}

static void device_bcast(tdmi_nccl *n, cudaStream_t s, size_t bytes,
                         int root) {
  unsigned char *host = malloc(bytes);
  for (size_t k = 0; k < bytes; k++)
    host[k] = rank == root ? pattern(root, k) : 0;
  void *d = upload(host, bytes);
  TH_OK(tdmi_nccl_bcast_bytes(n, d, bytes, root, s));
  download(host, d, bytes, s);
  size_t bad = 0;
  for (size_t k = 0; k < bytes; k++)
    bad += host[k] != pattern(root, k);
  TH_CHECK(bad == 0, "broadcast of %zu bytes from %d: %zu bytes wrong",
           bytes, root, bad);
  free(host);
}

/* Bad arguments on a live communicator: each fails on every rank alike,
 * before NCCL is called, so no rank is left waiting. */
static void device_bad_arguments(tdmi_nccl *n, cudaStream_t s) {
  TH_CHECK(tdmi_nccl_rank(n) == rank, "nccl rank %d", tdmi_nccl_rank(n));
  TH_CHECK(tdmi_nccl_size(n) == size, "nccl size %d", tdmi_nccl_size(n));
  TH_OK(tdmi_nccl_sum(n, NULL, 0, TDM_F32, s));
  TH_OK(tdmi_nccl_reduce_scatter(n, NULL, 0, TDM_BF16, s));
  TH_OK(tdmi_nccl_allgather_bytes(n, NULL, 0, s));
  TH_OK(tdmi_nccl_bcast_bytes(n, NULL, 0, 0, s));
  TH_FAILS(tdmi_nccl_sum(n, NULL, 3, TDM_F32, s), TDM_ERR_INVALID_ARGUMENT,
           "buf is NULL");
  TH_FAILS(tdmi_nccl_reduce_scatter(n, NULL, 3, TDM_F64, s),
           TDM_ERR_INVALID_ARGUMENT, "buf is NULL");
  TH_FAILS(tdmi_nccl_allgather_bytes(n, NULL, 3, s),
           TDM_ERR_INVALID_ARGUMENT, "recv is NULL");
  TH_FAILS(tdmi_nccl_bcast_bytes(n, NULL, 3, 0, s),
           TDM_ERR_INVALID_ARGUMENT, "buf is NULL");
  int x = 0; /* never touched: the checks fail first */
  TH_FAILS(tdmi_nccl_sum(n, &x, 1, TDM_I32, s), TDM_ERR_INVALID_ARGUMENT,
           "dtype");
  TH_FAILS(tdmi_nccl_sum(n, &x, 1, (tdm_dtype)99, s),
           TDM_ERR_INVALID_ARGUMENT, "dtype");
  TH_FAILS(tdmi_nccl_bcast_bytes(n, &x, 1, size, s),
           TDM_ERR_INVALID_ARGUMENT, "root");
  TH_FAILS(tdmi_nccl_bcast_bytes(n, &x, 1, -1, s),
           TDM_ERR_INVALID_ARGUMENT, "root");
  TH_FAILS(tdmi_nccl_sum(n, &x, (size_t)-1, TDM_F32, s),
           TDM_ERR_INVALID_ARGUMENT, "count");
  if (size > 1)
    TH_FAILS(tdmi_nccl_allgather_bytes(n, &x, (size_t)PTRDIFF_MAX / 2 + 1,
                                       s),
             TDM_ERR_INVALID_ARGUMENT, "overflows");
}

static const tdm_dtype floats[] = {TDM_F32, TDM_F64, TDM_F16, TDM_BF16};

/* Every collective on device buffers against the host's arithmetic. */
static void device_collectives(tdmi_nccl *n) {
  cudaStream_t s;
  CU(cudaStreamCreate(&s));
  device_bad_arguments(n, s);
  for (size_t t = 0; t < sizeof floats / sizeof *floats; t++) {
    device_sum(n, s, floats[t], 1);
    device_sum(n, s, floats[t], 1001);
    device_reduce_scatter(n, s, floats[t], 1);
    device_reduce_scatter(n, s, floats[t], 333);
  }
  device_chain(n, s, 257);
  device_allgather(n, s, 1);
  device_allgather(n, s, 1001);
  device_bcast(n, s, 1001, size - 1);
  device_bcast(n, s, 1, 0);
  CU(cudaStreamDestroy(s));
}

#endif /* HAVE_CUDA */

/* An NCCL communicator over the world on each rank's local GPU, and its
 * collectives. */
static void communicator(void) {
  int lrank;
  if (!th_gpu_per_rank(&lrank)) {
    if (rank == 0)
      printf("t_nccl: GPU part: skip (no GPU of its own on every rank)\n");
    return;
  }
#ifdef HAVE_CUDA
  TH_CHECK(cudaSetDevice(lrank) == cudaSuccess, "cudaSetDevice");
  tdmi_nccl *n = NULL;
  TH_OK(tdmi_nccl_create(MPI_COMM_WORLD, 60.0, &n));
  if (n)
    device_collectives(n);
  tdmi_nccl_destroy(n);
#endif
}

/* Checks that need no GPU: a NULL communicator, or no NCCL at all. */
static void no_communicator(void) {
  int s = 0;
  TH_CHECK(tdmi_nccl_rank(NULL) == -1 && tdmi_nccl_size(NULL) == -1,
           "rank/size of no communicator");
  tdm_status want = tdmi_nccl_version() ? TDM_ERR_INVALID_ARGUMENT
                                        : TDM_ERR_NOT_SUPPORTED;
  const char *text = tdmi_nccl_version() ? "communicator is NULL"
                                         : "without NCCL";
  TH_FAILS(tdmi_nccl_sum(NULL, &s, 1, TDM_F32, NULL), want, text);
  TH_FAILS(tdmi_nccl_sum(NULL, &s, 0, TDM_F32, NULL), want, text);
  TH_FAILS(tdmi_nccl_reduce_scatter(NULL, &s, 1, TDM_F32, NULL), want, text);
  TH_FAILS(tdmi_nccl_allgather_bytes(NULL, &s, 1, NULL), want, text);
  TH_FAILS(tdmi_nccl_bcast_bytes(NULL, &s, 1, 0, NULL), want, text);
}

static void cuda_aware(void) {
  int aware = tdmi_mpi_cuda_aware();
  TH_CHECK(aware == 0 || aware == 1, "tdmi_mpi_cuda_aware() = %d", aware);
#if defined(MPIX_CUDA_AWARE_SUPPORT)
  TH_CHECK(aware == (MPIX_Query_cuda_support() == 1),
           "tdmi_mpi_cuda_aware() = %d, MPIX_Query_cuda_support() = %d",
           aware, MPIX_Query_cuda_support());
#endif
  if (rank == 0)
    printf("t_nccl: CUDA-aware MPI: %s\n", aware ? "yes" : "no");
}

int main(int argc, char **argv) {
  th_init(&argc, &argv, MPI_THREAD_SINGLE, &rank, &size);
  cuda_aware();
  no_communicator();
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
