/* t_device.c - device choice.  Where a GPU is visible (CUDA build): every
 * rank takes local_rank % device count.  Everywhere: asking for cuda with
 * no GPU (or no CUDA) fails on every rank with a clear status. */
#include "config.h"
#include "harness.h"
#include "tandem_mpi.h"
#include "gpu_util.h"

int main(int argc, char **argv) {
  int provided, rank, local;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_SINGLE, &provided);
  th_start();
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int cuda = 0, gpus = th_visible_gpus();
  TH_OK(tdm_has_feature(TDM_FEATURE_CUDA, &cuda));
  tdm_context *ctx = NULL;
  tdm_device_kind kind;
  int index;
  /* auto in the API: run-tap.sh sets TANDEM_DEVICE=cpu for the rest */
  tdm_options automatic = TDM_OPTIONS_INIT;
  automatic.device = TDM_DEVICE_AUTO;
  TH_OK(tdm_init_comm(MPI_COMM_WORLD, &automatic, &ctx));
  TH_OK(tdm_get_device(ctx, &kind, &index));
  TH_OK(tdm_get_local_rank(ctx, &local));
  if (gpus > 0)
    TH_CHECK(kind == TDM_DEVICE_CUDA && index == local % gpus,
             "device %d index %d, want cuda %d", (int)kind, index,
             local % gpus);
  else
    TH_CHECK(kind == TDM_DEVICE_CPU, "no GPU visible, got device %d", (int)kind);
  TH_OK(tdm_finalize(ctx));

  tdm_options opt = TDM_OPTIONS_INIT;
  opt.device = TDM_DEVICE_CUDA;
  tdm_status st = tdm_init_comm(MPI_COMM_WORLD, &opt, &ctx);
  if (!cuda)
    TH_CHECK(st == TDM_ERR_NOT_SUPPORTED && strstr(tdm_last_error(), "without CUDA"),
             "%s: %s", tdm_status_string(st), tdm_last_error());
  else if (gpus == 0)
    TH_CHECK(st == TDM_ERR_DEVICE && strstr(tdm_last_error(), "no CUDA device"),
             "%s: %s", tdm_status_string(st), tdm_last_error());
  else {
    TH_OK(st);
    TH_OK(tdm_finalize(ctx));
  }
  int code = th_finish("t_device");
  MPI_Finalize();
  if (code == 0 && gpus == 0 && rank == 0)
    printf("GPU variant: skip (no GPU visible%s)\n", cuda ? "" : "; built without CUDA");
  return code;
}
