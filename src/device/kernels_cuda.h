/* kernels_cuda.h - the CUDA kernels of the device layer: GPU launchers of
 * the CPU kernels of kernels.h, doing the same IEEE operations in the same
 * order (kernels_rules.h, no FMA contraction, IEEE division and square
 * root, no flush to zero), so that their results are the CPU's bit for
 * bit, NaN payloads aside (mpi-tests/u_cuda_kernels checks it, within
 * 1e-6).  Built only with HAVE_CUDA; not installed.
 *
 * Includes no MPI or CUDA header: every pointer is device memory (or
 * memory the device can address, such as mapped pinned host memory), and
 * stream is a cudaStream_t passed as void * (NULL: the default stream).
 * The launchers are asynchronous on stream and return TDM_SUCCESS once
 * queued.  On failure they return a status (TDM_ERR_INVALID_ARGUMENT,
 * TDM_ERR_NOT_SUPPORTED for a dtype they lack, TDM_ERR_DEVICE when CUDA
 * refused) and leave a sentence in tdmi_cuda_last_error(); the C caller
 * passes it on with tdmi_error(status, "%s", tdmi_cuda_last_error()).
 * An error of an earlier asynchronous kernel may surface at any later
 * call, as CUDA reports it. */
#ifndef TDM_KERNELS_CUDA_H
#define TDM_KERNELS_CUDA_H

#include "kernels_update.h" /* tdmi_update, tdmi_update_arrays */

#ifdef __cplusplus
extern "C" {
#endif

/* The fused update of a->n elements: param and state f32 with gradients
 * f32, bf16 or f16 and an optional bf16 / f16 copy; or param, state and
 * gradients f64 with no copy. */
tdm_status tdmi_cuda_update(const tdmi_update *u, const tdmi_update_arrays *a,
                            void *stream);

/* Doubles of device workspace tdmi_cuda_sumsq needs. */
#define TDMI_CUDA_SUMSQ_WORK 1024

/* Sum of squares (in double) of clamp(g * pre, lo, hi) over n gradients
 * of dtype (f32, f64, bf16, f16), as tdmi_kernel_sumsq; inf or nan when
 * any gradient is.  Stores it in *out (add 0) or adds it to *out (add 1:
 * many arrays summed on one stream, in the order of the calls).  work
 * holds TDMI_CUDA_SUMSQ_WORK doubles and must not overlap out.  The order
 * of the additions depends on n only, so the result does not change
 * between runs or GPUs; it may differ from the CPU's in the last bits. */
tdm_status tdmi_cuda_sumsq(const void *grad, tdm_dtype dtype, size_t n,
                           double pre, double lo, double hi, double *work,
                           double *out, int add, void *stream);

/* out[i] = in[i] converted, round to nearest even, NaNs as the CPU
 * converter (PyTorch's); from/to are TDM_F32, TDM_BF16 or TDM_F16 and one
 * of them is TDM_F32. */
tdm_status tdmi_cuda_convert(tdm_dtype from, const void *in, tdm_dtype to,
                             void *out, size_t n, void *stream);

/* dst[i] += src[i] over n elements of dtype (f32, f64, bf16, f16); 16-bit
 * pairs are added in f32 and rounded back, as tdmi_kernel_accumulate. */
tdm_status tdmi_cuda_accumulate(tdm_dtype dtype, const void *src, void *dst,
                                size_t n, void *stream);

/* Sets *flag to 1 when any of the n values of dtype (f32, f64, bf16, f16)
 * is inf or nan, and leaves it unchanged otherwise, so one flag zeroed
 * once gathers many arrays. */
tdm_status tdmi_cuda_nonfinite(const void *x, tdm_dtype dtype, size_t n,
                               int *flag, void *stream);

/* x[i] *= s over n elements of dtype (f32, f64, bf16, f16); s is rounded
 * to float once for all but f64, and 16-bit values multiply in f32. */
tdm_status tdmi_cuda_scale(void *x, tdm_dtype dtype, size_t n, double s,
                           void *stream);

/* The sentence of the calling thread's last failed launcher ("" if
 * none). */
const char *tdmi_cuda_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* TDM_KERNELS_CUDA_H */
