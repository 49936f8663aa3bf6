/*
 * tandem_cuda.h - the stream an engine on a GPU computes on.
 *
 * Kept apart from tandem.h because cudaStream_t comes from the CUDA
 * toolkit.  An engine on a CUDA device orders all its work after the
 * compute stream: a bucket's reduction starts after what was queued there
 * when its last gradient was marked ready, the optimizer's kernels and
 * the parameter gathers are queued there, and later work there waits for
 * them.  By default that is the legacy default stream (0).  A model whose
 * kernels run on another stream hands it over, or the engine would not
 * wait for them (a stream created with cudaStreamNonBlocking never
 * synchronizes with the default stream).
 */
#ifndef TANDEM_CUDA_H
#define TANDEM_CUDA_H

#include <cuda_runtime_api.h>

#include "tandem.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

/* Makes stream (NULL: the legacy default stream) the engine's compute
 * stream, after the engine's work queued on the old one has finished.
 * Not inside a micro-step.  The caller keeps owning the stream and must
 * not destroy it while the engine may use it. */
tdm_status tdm_set_cuda_stream(tdm_engine *engine, cudaStream_t stream);

/* The engine's compute stream (NULL: the legacy default stream). */
tdm_status tdm_get_cuda_stream(const tdm_engine *engine,
                               cudaStream_t *stream);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif

#endif /* TANDEM_CUDA_H */
