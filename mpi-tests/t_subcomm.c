/* t_subcomm.c - tdm_init_comm borrows the host's communicators: the world
 * is split in two halves that run independent contexts at the same time,
 * and MPI is left for the host to finalize. */
#include "harness.h"
#include "tandem_mpi.h"

int main(int argc, char **argv) {
  int provided, wrank, wsize;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  th_start();
  MPI_Comm_rank(MPI_COMM_WORLD, &wrank);
  MPI_Comm_size(MPI_COMM_WORLD, &wsize);
  int half = wsize / 2, color = wrank < half ? 0 : 1;
  MPI_Comm sub;
  MPI_Comm_split(MPI_COMM_WORLD, color, wrank, &sub);

  tdm_context *hctx = NULL, *wctx = NULL;
  TH_OK(tdm_init_comm(sub, NULL, &hctx));
  TH_OK(tdm_init_comm_f(MPI_Comm_c2f(MPI_COMM_WORLD), NULL, &wctx));
  int r = -1, n = -1;
  TH_OK(tdm_get_rank(hctx, &r));
  TH_OK(tdm_get_world_size(hctx, &n));
  int first = color ? half : 0, members = color ? wsize - half : half;
  TH_CHECK(r == wrank - first && n == members, "half %d: rank %d of %d", color,
           r, n);

  /* Interleave collectives on the two contexts: each sees only its ranks. */
  for (int round = 0; round < 3; round++) {
    double x = wrank + 1 + round, hsum = 0, wsum = 0;
    TH_OK(tdm_allreduce(hctx, &x, &hsum, 1, TDM_F64, TDM_SUM));
    TH_OK(tdm_allreduce(wctx, &x, &wsum, 1, TDM_F64, TDM_SUM));
    double want_h = 0;
    for (int q = first; q < first + members; q++)
      want_h += q + 1 + round;
    double want_w = wsize * (wsize + 1) / 2.0 + wsize * round;
    TH_CHECK(hsum == want_h, "half %d round %d: %g want %g", color, round, hsum,
             want_h);
    TH_CHECK(wsum == want_w, "world round %d: %g want %g", round, wsum, want_w);
  }
  int main_rank = -1;
  TH_OK(tdm_is_main(hctx, &main_rank));
  TH_CHECK(main_rank == (wrank == first), "is_main in half %d", color);

  TH_OK(tdm_finalize(hctx));
  TH_OK(tdm_finalize(wctx));
  int finalized = 1;
  MPI_Finalized(&finalized);
  TH_CHECK(!finalized, "tdm_finalize finalized the host's MPI");
  MPI_Comm_free(&sub);
  int code = th_finish("t_subcomm");
  MPI_Finalize();
  return code;
}
