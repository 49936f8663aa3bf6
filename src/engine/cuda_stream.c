/* cuda_stream.c - tandem_cuda.h: the compute stream of an engine on a
 * GPU, which every engine call orders its device work after (ops.h). */
#include "config.h"

#ifdef HAVE_CUDA
#include "tandem_cuda.h"
#else
/* tandem_cuda.h needs the CUDA toolkit.  The same declarations, with
 * CUDA's own type, so that every build exports the same symbols. */
#include "tandem.h"
typedef struct CUstream_st *cudaStream_t;
#pragma GCC visibility push(default)
tdm_status tdm_set_cuda_stream(tdm_engine *engine, cudaStream_t stream);
tdm_status tdm_get_cuda_stream(const tdm_engine *engine,
                               cudaStream_t *stream);
#pragma GCC visibility pop
#endif

#include <stdio.h>

#include "engine.h"

static tdm_status check_on_device(const tdm_engine *e, const char *fn) {
  TDMI_TRY(tdmi_engine_check(e, fn));
  if (!e->ops.on_device)
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "%s: the engine is on the CPU (device cpu); a CUDA "
                      "stream needs an engine on a GPU (device cuda)", fn);
  return TDM_SUCCESS;
}

tdm_status tdm_set_cuda_stream(tdm_engine *engine, cudaStream_t stream) {
  const char *fn = "tdm_set_cuda_stream";
  TDMI_TRY(check_on_device(engine, fn));
  if (engine->in_backward)
    return tdmi_error(TDM_ERR_INVALID_USAGE,
                      "%s: a micro-step is in progress; change the stream "
                      "between tdm_backward_end and the next "
                      "tdm_backward_begin", fn);
  tdm_status st = tdmi_ops_set_stream(&engine->ops, (void *)stream);
  if (st == TDM_SUCCESS)
    return st;
  char why[512]; /* the message is rewritten from itself */
  snprintf(why, sizeof why, "%s", tdm_last_error());
  return tdmi_error(st, "%s: %s", fn, why);
}

tdm_status tdm_get_cuda_stream(const tdm_engine *engine,
                               cudaStream_t *stream) {
  const char *fn = "tdm_get_cuda_stream";
  TDMI_TRY(check_on_device(engine, fn));
  TDMI_TRY(tdmi_check_ptr(fn, stream, "stream"));
  *stream = (cudaStream_t)tdmi_stream_handle(engine->ops.stream);
  return TDM_SUCCESS;
}
