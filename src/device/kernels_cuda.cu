/* kernels_cuda.cu - the CUDA kernels of the device layer (kernels_cuda.h).
 * The optimizer arithmetic is kernels_rules.h itself, the file the CPU
 * kernels compile, so both do the same operations in the same order;
 * built with -fmad=false (as the CPU's -ffp-contract=off) and nvcc's
 * defaults of IEEE division and square root without flush to zero, each
 * operation rounds as on the CPU.  Kernels are grid-stride loops over
 * blocks of 256 threads; the grid depends on n only, so that the sum of
 * squares adds in an order fixed by n. */
#include <cuda_runtime.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kernels_cuda.h"

/* ---- the CPU's update rules, compiled for the device ------------------ */

#define restrict __restrict__
#define K static __device__ __forceinline__
/* The rules carry "#pragma omp simd" for the CPU; nothing to do here. */
#pragma nv_diag_suppress unrecognized_pragma
#define REAL float
#define SQRT sqrtf
#define RULE(name) name##_f32
#include "kernels_rules.h"
#undef REAL
#undef SQRT
#undef RULE
#define REAL double
#define SQRT sqrt
#define RULE(name) name##_f64
#include "kernels_rules.h"
#undef REAL
#undef SQRT
#undef RULE
#pragma nv_diag_default unrecognized_pragma
#undef K
#undef restrict

/* The rules by value type, g transformed in place. */
static __device__ __forceinline__ void transform(const tdmi_update *u,
                                                 float *g, size_t n) {
  transform_f32(u, g, g, n);
}
static __device__ __forceinline__ void transform(const tdmi_update *u,
                                                 double *g, size_t n) {
  transform_f64(u, g, g, n);
}
static __device__ __forceinline__ void apply(const tdmi_update *u, float *p,
                                             const float *g, float *s0,
                                             float *s1, size_t n) {
  apply_f32(u, p, g, s0, s1, n);
}
static __device__ __forceinline__ void apply(const tdmi_update *u, double *p,
                                             const double *g, double *s0,
                                             double *s1, size_t n) {
  apply_f64(u, p, g, s0, s1, n);
}

/* ---- bf16 and f16 <-> f32: core's bit logic, on host and device ------ */

#define TDMI_HALF_FN static __host__ __device__ __forceinline__
#include "../core/half_bits.h"
#define HD TDMI_HALF_FN

HD uint32_t f32_bits(float f) { return tdmi_bits_of_f32(f); }
HD uint16_t f32_to_f16(float f) { return tdmi_bits_f32_to_f16(f); }
HD float f16_to_f32(uint16_t h) { return tdmi_bits_f16_to_f32(h); }
HD uint16_t f32_to_bf16(float f) { return tdmi_bits_f32_to_bf16(f); }
HD float bf16_to_f32(uint16_t h) { return tdmi_bits_bf16_to_f32(h); }

/* ---- element access by dtype ------------------------------------------ */

/* Storage and arithmetic types of a dtype: 16-bit values compute in f32. */
template <int D> struct dt;
template <> struct dt<TDM_F32> { typedef float mem; typedef float real; };
template <> struct dt<TDM_F64> { typedef double mem; typedef double real; };
template <> struct dt<TDM_BF16> { typedef uint16_t mem; typedef float real; };
template <> struct dt<TDM_F16> { typedef uint16_t mem; typedef float real; };

template <int D>
static __device__ __forceinline__ typename dt<D>::real load(const void *p,
                                                            size_t i) {
  typename dt<D>::mem x = static_cast<const typename dt<D>::mem *>(p)[i];
  if constexpr (D == TDM_BF16)
    return bf16_to_f32(x);
  else if constexpr (D == TDM_F16)
    return f16_to_f32(x);
  else
    return x;
}

template <int D>
static __device__ __forceinline__ void store(void *p, size_t i,
                                             typename dt<D>::real x) {
  typename dt<D>::mem *q = static_cast<typename dt<D>::mem *>(p);
  if constexpr (D == TDM_BF16)
    q[i] = f32_to_bf16(x);
  else if constexpr (D == TDM_F16)
    q[i] = f32_to_f16(x);
  else
    q[i] = x;
}

/* ---- launch geometry and errors ---------------------------------------- */

constexpr int THREADS = 256;  /* per block: the CPU kernels' block too */
constexpr int VEC = 4;        /* update: elements per thread per tile */
constexpr size_t TILE = (size_t)THREADS * VEC;
constexpr unsigned MAX_BLOCKS = 16384; /* then the grid strides */
constexpr int NO_COPY = -1;   /* update template argument: no copy */

/* Blocks for n elements at per_block each, capped at most. */
static unsigned blocks_for(size_t n, size_t per_block, unsigned most) {
  size_t b = (n + per_block - 1) / per_block;
  return b < most ? (unsigned)b : most;
}

static thread_local char last_error[256];

extern "C" const char *tdmi_cuda_last_error(void) { return last_error; }

static tdm_status fail(tdm_status st, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
static tdm_status fail(tdm_status st, const char *format, ...) {
  va_list ap;
  va_start(ap, format);
  vsnprintf(last_error, sizeof last_error, format, ap);
  va_end(ap);
  return st;
}

/* The status of the launch just made by fn. */
static tdm_status launched(const char *fn) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    return fail(TDM_ERR_DEVICE, "%s: kernel launch failed: %s", fn,
                cudaGetErrorString(e));
  return TDM_SUCCESS;
}

static const char *dtype_name(tdm_dtype d) {
  return d == TDM_F32    ? "f32"
         : d == TDM_F64  ? "f64"
         : d == TDM_BF16 ? "bf16"
         : d == TDM_F16  ? "f16"
                         : "a dtype other than f32, f64, bf16, f16";
}

static cudaStream_t as_stream(void *stream) {
  return static_cast<cudaStream_t>(stream);
}

/* ---- the update ---------------------------------------------------------- */

/* Each thread takes VEC elements THREADS apart (coalesced), in registers:
 * the rules run on them as on a CPU block.  Elements past n compute on
 * zeros and are not stored. */
template <int PD, int GD, int CD>
__global__ void __launch_bounds__(THREADS)
    update_kernel(const tdmi_update u, const tdmi_update_arrays a) {
  typedef typename dt<PD>::real R;
  R *p = static_cast<R *>(a.param), *s0 = static_cast<R *>(a.state0);
  R *s1 = static_cast<R *>(a.state1);
  const size_t stride = (size_t)gridDim.x * TILE;
  for (size_t at = (size_t)blockIdx.x * TILE + threadIdx.x; at < a.n;
       at += stride) {
    R pv[VEC], gv[VEC], m[VEC], v[VEC];
#pragma unroll
    for (int j = 0; j < VEC; j++) {
      size_t i = at + (size_t)j * THREADS;
      bool in = i < a.n;
      gv[j] = in ? load<GD>(a.grad, i) : R(0);
      pv[j] = in ? p[i] : R(0);
      m[j] = in && s0 ? s0[i] : R(0);
      v[j] = in && s1 ? s1[i] : R(0);
    }
    transform(&u, gv, VEC);
    if (s0) /* s1 goes unused by SGD and Lion */
      apply(&u, pv, gv, m, v, VEC);
    else    /* SGD without momentum (the launcher checked) */
      apply(&u, pv, gv, nullptr, nullptr, VEC);
#pragma unroll
    for (int j = 0; j < VEC; j++) {
      size_t i = at + (size_t)j * THREADS;
      if (i >= a.n)
        break;
      if (a.zero_grad)
        store<GD>(a.grad, i, 0);
      p[i] = pv[j];
      if (s0)
        s0[i] = m[j];
      if (s1)
        s1[i] = v[j];
      if constexpr (CD != NO_COPY)
        store<CD>(a.copy, i, (float)pv[j]);
    }
  }
}

typedef void (*update_fn)(const tdmi_update, const tdmi_update_arrays);

template <int GD> static update_fn update_f32_for(const tdmi_update_arrays *a) {
  if (!a->copy)
    return update_kernel<TDM_F32, GD, NO_COPY>;
  if (a->copy_dtype == TDM_BF16)
    return update_kernel<TDM_F32, GD, TDM_BF16>;
  if (a->copy_dtype == TDM_F16)
    return update_kernel<TDM_F32, GD, TDM_F16>;
  return nullptr;
}

/* The kernel for the arrays' dtypes; NULL when unsupported. */
static update_fn update_for(const tdmi_update_arrays *a) {
  if (a->dtype == TDM_F64)
    return a->grad_dtype == TDM_F64 && !a->copy
               ? update_kernel<TDM_F64, TDM_F64, NO_COPY>
               : nullptr;
  if (a->dtype != TDM_F32)
    return nullptr;
  switch (a->grad_dtype) {
  case TDM_F32: return update_f32_for<TDM_F32>(a);
  case TDM_BF16: return update_f32_for<TDM_BF16>(a);
  case TDM_F16: return update_f32_for<TDM_F16>(a);
  default: return nullptr;
  }
}

/* The state arrays the kind needs are there. */
static int states_ok(const tdmi_update *u, const tdmi_update_arrays *a) {
  switch (u->kind) {
  case TDM_OPTIMIZER_SGD: return !a->state1 || a->state0;
  case TDM_OPTIMIZER_ADAM:
  case TDM_OPTIMIZER_ADAMW: return a->state0 && a->state1;
  case TDM_OPTIMIZER_LION: return a->state0 != nullptr;
  default: return 0;
  }
}

extern "C" tdm_status tdmi_cuda_update(const tdmi_update *u,
                                       const tdmi_update_arrays *a,
                                       void *stream) {
  const char *fn = "tdmi_cuda_update";
  if (!u || !a)
    return fail(TDM_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                u ? "arrays" : "update");
  update_fn kernel = update_for(a);
  if (!kernel)
    return fail(TDM_ERR_NOT_SUPPORTED, "%s: param %s, grad %s, copy %s",
                fn, dtype_name(a->dtype), dtype_name(a->grad_dtype),
                a->copy ? dtype_name(a->copy_dtype) : "none");
  if (a->n == 0)
    return TDM_SUCCESS;
  if (!a->param || !a->grad || !states_ok(u, a))
    return fail(TDM_ERR_INVALID_ARGUMENT,
                "%s: param, grad or a state array the optimizer kind %d "
                "needs is NULL", fn, u->kind);
  kernel<<<blocks_for(a->n, TILE, MAX_BLOCKS), THREADS, 0, as_stream(stream)>>>(
      *u, *a);
  return launched(fn);
}

/* ---- sum of squares ------------------------------------------------------- */

/* Sum over the block's threads in a fixed tree; all threads get it. */
static __device__ __forceinline__ double block_sum(double x) {
  __shared__ double s[THREADS];
  s[threadIdx.x] = x;
  __syncthreads();
  for (int h = THREADS / 2; h > 0; h >>= 1) {
    if ((int)threadIdx.x < h)
      s[threadIdx.x] += s[threadIdx.x + h];
    __syncthreads();
  }
  return s[0];
}

/* One partial sum per block. */
template <int D>
__global__ void __launch_bounds__(THREADS)
    sumsq_kernel(const void *grad, size_t n, const tdmi_update u,
                 double *partial) {
  typedef typename dt<D>::real R;
  double acc = 0.0;
  for (size_t i = (size_t)blockIdx.x * THREADS + threadIdx.x; i < n;
       i += (size_t)gridDim.x * THREADS) {
    R g = load<D>(grad, i);
    transform(&u, &g, 1);
    acc += (double)g * (double)g;
  }
  double sum = block_sum(acc);
  if (threadIdx.x == 0)
    partial[blockIdx.x] = sum;
}

/* One block: the partial sums, in order of thread then stride. */
static __global__ void __launch_bounds__(THREADS)
    sumsq_final(const double *partial, unsigned nparts, double *out,
                int add) {
  double acc = 0.0;
  for (unsigned i = threadIdx.x; i < nparts; i += THREADS)
    acc += partial[i];
  double sum = block_sum(acc);
  if (threadIdx.x == 0)
    *out = add ? *out + sum : sum;
}

typedef void (*sumsq_fn)(const void *, size_t, const tdmi_update, double *);

static sumsq_fn sumsq_for(tdm_dtype d) {
  switch (d) {
  case TDM_F32: return sumsq_kernel<TDM_F32>;
  case TDM_F64: return sumsq_kernel<TDM_F64>;
  case TDM_BF16: return sumsq_kernel<TDM_BF16>;
  case TDM_F16: return sumsq_kernel<TDM_F16>;
  default: return nullptr;
  }
}

extern "C" tdm_status tdmi_cuda_sumsq(const void *grad, tdm_dtype dtype,
                                      size_t n, double pre, double lo,
                                      double hi, double *work, double *out,
                                      int add, void *stream) {
  const char *fn = "tdmi_cuda_sumsq";
  sumsq_fn kernel = sumsq_for(dtype);
  if (!kernel)
    return fail(TDM_ERR_NOT_SUPPORTED, "%s: gradients of %s", fn,
                dtype_name(dtype));
  if (!work || !out || (n && !grad))
    return fail(TDM_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                !work ? "work" : !out ? "out" : "grad");
  tdmi_update u = {};
  u.pre = pre;
  u.lo = lo;
  u.hi = hi;
  u.post = 1.0;
  /* 4 elements per thread at least: the grid and the order depend on n. */
  unsigned parts = blocks_for(n, TILE, TDMI_CUDA_SUMSQ_WORK);
  if (parts)
    kernel<<<parts, THREADS, 0, as_stream(stream)>>>(grad, n, u, work);
  sumsq_final<<<1, THREADS, 0, as_stream(stream)>>>(work, parts, out, add);
  return launched(fn);
}

/* ---- conversion, accumulation, checks, scaling --------------------------- */

#define FOR_EACH(i, n)                                                  \
  for (size_t i = (size_t)blockIdx.x * THREADS + threadIdx.x; i < (n); \
       i += (size_t)gridDim.x * THREADS)

template <int FROM, int TO>
__global__ void __launch_bounds__(THREADS)
    convert_kernel(const void *in, void *out, size_t n) {
  FOR_EACH(i, n) store<TO>(out, i, load<FROM>(in, i));
}

/* 16-bit pairs add in f32, as the CPU's bucket sums. */
template <int D>
__global__ void __launch_bounds__(THREADS)
    accumulate_kernel(const void *src, void *dst, size_t n) {
  FOR_EACH(i, n) store<D>(dst, i, load<D>(dst, i) + load<D>(src, i));
}

template <int D>
__global__ void __launch_bounds__(THREADS)
    scale_kernel(void *x, size_t n, double s) {
  typedef typename dt<D>::real R;
  const R f = (R)s;
  FOR_EACH(i, n) store<D>(x, i, load<D>(x, i) * f);
}

/* Inf or NaN: all exponent bits set, tested on the stored bits. */
template <int D>
static __device__ __forceinline__ bool nonfinite_at(const void *x, size_t i) {
  if constexpr (D == TDM_F64)
    return !isfinite(static_cast<const double *>(x)[i]);
  else if constexpr (D == TDM_F32)
    return (f32_bits(static_cast<const float *>(x)[i]) & 0x7fffffffu) >=
           0x7f800000u;
  else
    return (static_cast<const uint16_t *>(x)[i] & 0x7fffu) >=
           (D == TDM_F16 ? 0x7c00u : 0x7f80u);
}

template <int D>
__global__ void __launch_bounds__(THREADS)
    nonfinite_kernel(const void *x, size_t n, int *flag) {
  bool bad = false;
  FOR_EACH(i, n) bad |= nonfinite_at<D>(x, i);
  if (bad)
    atomicExch(flag, 1);
}

/* Grid for the one-element-per-thread kernels. */
static unsigned grid(size_t n) {
  return blocks_for(n, THREADS * (size_t)VEC, MAX_BLOCKS);
}

extern "C" tdm_status tdmi_cuda_convert(tdm_dtype from, const void *in,
                                        tdm_dtype to, void *out, size_t n,
                                        void *stream) {
  const char *fn = "tdmi_cuda_convert";
  void (*kernel)(const void *, void *, size_t) = nullptr;
  if (from == TDM_F32 && to == TDM_BF16)
    kernel = convert_kernel<TDM_F32, TDM_BF16>;
  else if (from == TDM_F32 && to == TDM_F16)
    kernel = convert_kernel<TDM_F32, TDM_F16>;
  else if (from == TDM_BF16 && to == TDM_F32)
    kernel = convert_kernel<TDM_BF16, TDM_F32>;
  else if (from == TDM_F16 && to == TDM_F32)
    kernel = convert_kernel<TDM_F16, TDM_F32>;
  if (!kernel)
    return fail(TDM_ERR_NOT_SUPPORTED, "%s: %s to %s; conversions are "
                "between f32 and bf16 or f16", fn, dtype_name(from),
                dtype_name(to));
  if (n == 0)
    return TDM_SUCCESS;
  if (!in || !out)
    return fail(TDM_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                in ? "out" : "in");
  kernel<<<grid(n), THREADS, 0, as_stream(stream)>>>(in, out, n);
  return launched(fn);
}

extern "C" tdm_status tdmi_cuda_accumulate(tdm_dtype dtype, const void *src,
                                           void *dst, size_t n,
                                           void *stream) {
  const char *fn = "tdmi_cuda_accumulate";
  void (*kernel)(const void *, void *, size_t) =
      dtype == TDM_F32    ? accumulate_kernel<TDM_F32>
      : dtype == TDM_F64  ? accumulate_kernel<TDM_F64>
      : dtype == TDM_BF16 ? accumulate_kernel<TDM_BF16>
      : dtype == TDM_F16  ? accumulate_kernel<TDM_F16>
                          : nullptr;
  if (!kernel)
    return fail(TDM_ERR_NOT_SUPPORTED, "%s: %s", fn, dtype_name(dtype));
  if (n == 0)
    return TDM_SUCCESS;
  if (!src || !dst)
    return fail(TDM_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                src ? "dst" : "src");
  kernel<<<grid(n), THREADS, 0, as_stream(stream)>>>(src, dst, n);
  return launched(fn);
}

extern "C" tdm_status tdmi_cuda_nonfinite(const void *x, tdm_dtype dtype,
                                          size_t n, int *flag, void *stream) {
  const char *fn = "tdmi_cuda_nonfinite";
  void (*kernel)(const void *, size_t, int *) =
      dtype == TDM_F32    ? nonfinite_kernel<TDM_F32>
      : dtype == TDM_F64  ? nonfinite_kernel<TDM_F64>
      : dtype == TDM_BF16 ? nonfinite_kernel<TDM_BF16>
      : dtype == TDM_F16  ? nonfinite_kernel<TDM_F16>
                          : nullptr;
  if (!kernel)
    return fail(TDM_ERR_NOT_SUPPORTED, "%s: %s", fn, dtype_name(dtype));
  if (n == 0)
    return TDM_SUCCESS;
  if (!x || !flag)
    return fail(TDM_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                x ? "flag" : "x");
  kernel<<<grid(n), THREADS, 0, as_stream(stream)>>>(x, n, flag);
  return launched(fn);
}

extern "C" tdm_status tdmi_cuda_scale(void *x, tdm_dtype dtype, size_t n,
                                      double s, void *stream) {
  const char *fn = "tdmi_cuda_scale";
  void (*kernel)(void *, size_t, double) =
      dtype == TDM_F32    ? scale_kernel<TDM_F32>
      : dtype == TDM_F64  ? scale_kernel<TDM_F64>
      : dtype == TDM_BF16 ? scale_kernel<TDM_BF16>
      : dtype == TDM_F16  ? scale_kernel<TDM_F16>
                          : nullptr;
  if (!kernel)
    return fail(TDM_ERR_NOT_SUPPORTED, "%s: %s", fn, dtype_name(dtype));
  if (n == 0)
    return TDM_SUCCESS;
  if (!x)
    return fail(TDM_ERR_INVALID_ARGUMENT, "%s: x is NULL", fn);
  kernel<<<grid(n), THREADS, 0, as_stream(stream)>>>(x, n, s);
  return launched(fn);
}
