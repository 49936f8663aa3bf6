/* error.c - status names and the thread-local last-error sentence. */
#include <stdio.h>

#include "core.h"

static _Thread_local char last_error[2048]; /* room for a diagnosis */

static const char *const status_names[TDM_NUM_STATUSES] = {
    [TDM_SUCCESS] = "TDM_SUCCESS: no error",
    [TDM_ERR_INVALID_ARGUMENT] = "TDM_ERR_INVALID_ARGUMENT: invalid argument",
    [TDM_ERR_INVALID_USAGE] = "TDM_ERR_INVALID_USAGE: call out of order or on "
                              "a finalized handle",
    [TDM_ERR_MISMATCH] = "TDM_ERR_MISMATCH: ranks disagree",
    [TDM_ERR_CONFIG] = "TDM_ERR_CONFIG: bad option, environment or config file",
    [TDM_ERR_MPI] = "TDM_ERR_MPI: an MPI call failed",
    [TDM_ERR_DEVICE] = "TDM_ERR_DEVICE: device failure",
    [TDM_ERR_NO_MEMORY] = "TDM_ERR_NO_MEMORY: out of memory",
    [TDM_ERR_IO] = "TDM_ERR_IO: file could not be read or written",
    [TDM_ERR_NOT_SUPPORTED] = "TDM_ERR_NOT_SUPPORTED: not built in",
    [TDM_ERR_REMOTE] = "TDM_ERR_REMOTE: another rank failed",
    [TDM_ERR_INTERNAL] = "TDM_ERR_INTERNAL: internal error",
    [TDM_ERR_NCCL] = "TDM_ERR_NCCL: an NCCL call failed or timed out",
    [TDM_ERR_FORMAT] = "TDM_ERR_FORMAT: corrupt, truncated or inconsistent "
                       "file",
    [TDM_ERR_TIMEOUT] = "TDM_ERR_TIMEOUT: a collective timed out (a rank "
                        "stalled, died or called another collective)",
    [TDM_ERR_NONFINITE] = "TDM_ERR_NONFINITE: a gradient is inf or NaN",
};

const char *tdm_status_string(tdm_status status) {
  if ((unsigned)status >= TDM_NUM_STATUSES)
    return "unknown tdm_status";
  return status_names[status];
}

const char *tdm_last_error(void) { return last_error; }

tdm_status tdmi_error(tdm_status status, const char *format, ...) {
  va_list ap;
  va_start(ap, format);
  vsnprintf(last_error, sizeof last_error, format, ap);
  va_end(ap);
  return status;
}

tdm_status tdmi_mpi_error(int mpi_code, const char *call) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(mpi_code, text, &len) != MPI_SUCCESS)
    snprintf(text, sizeof text, "MPI error code %d", mpi_code);
  return tdmi_error(TDM_ERR_MPI, "%s failed: %s", call, text);
}
