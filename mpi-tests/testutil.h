/* testutil.h - element access for tests, written independently of the
 * library's own conversions: f16/bf16 values here are small integers and
 * halves, encoded exactly (no rounding involved). */
#ifndef TDM_TESTUTIL_H
#define TDM_TESTUTIL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "tandem.h"

static const tdm_dtype all_dtypes[] = {TDM_F32, TDM_F64, TDM_F16, TDM_BF16,
                                       TDM_I32, TDM_I64, TDM_U8};
#define NDTYPES (sizeof all_dtypes / sizeof all_dtypes[0])

static inline size_t tu_size(tdm_dtype t) {
  size_t s = 0;
  tdm_dtype_size(t, &s);
  return s;
}

/* Exact f16 encoding of v, which must be representable (normal range). */
static inline uint16_t tu_f16(double v) {
  if (v == 0)
    return 0;
  uint16_t sign = v < 0 ? 0x8000 : 0;
  int e;
  double m = frexp(fabs(v), &e); /* v = m 2^e, m in [0.5, 1) */
  uint16_t frac = (uint16_t)((m * 2 - 1) * 1024);
  return sign | (uint16_t)((e - 1 + 15) << 10) | frac;
}

static inline double tu_from_f16(uint16_t h) {
  int e = (h >> 10) & 31, f = h & 1023;
  double v = e == 0 ? ldexp(f, -24) : ldexp(1 + f / 1024.0, e - 15);
  return (h & 0x8000) ? -v : v;
}

static inline uint16_t tu_bf16(double v) {
  float f = (float)v; /* exact for the values tests use */
  uint32_t u;
  memcpy(&u, &f, 4);
  return (uint16_t)(u >> 16);
}

static inline double tu_from_bf16(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline void tu_set(tdm_dtype t, void *buf, size_t i, double v) {
  switch (t) {
  case TDM_F32: ((float *)buf)[i] = (float)v; break;
  case TDM_F64: ((double *)buf)[i] = v; break;
  case TDM_F16: ((uint16_t *)buf)[i] = tu_f16(v); break;
  case TDM_BF16: ((uint16_t *)buf)[i] = tu_bf16(v); break;
  case TDM_I32: ((int32_t *)buf)[i] = (int32_t)v; break;
  case TDM_I64: ((int64_t *)buf)[i] = (int64_t)v; break;
  case TDM_U8: ((uint8_t *)buf)[i] = (uint8_t)v; break;
  default: break;
  }
}

static inline double tu_get(tdm_dtype t, const void *buf, size_t i) {
  switch (t) {
  case TDM_F32: return ((const float *)buf)[i];
  case TDM_F64: return ((const double *)buf)[i];
  case TDM_F16: return tu_from_f16(((const uint16_t *)buf)[i]);
  case TDM_BF16: return tu_from_bf16(((const uint16_t *)buf)[i]);
  case TDM_I32: return ((const int32_t *)buf)[i];
  case TDM_I64: return (double)((const int64_t *)buf)[i];
  case TDM_U8: return ((const uint8_t *)buf)[i];
  default: return NAN;
  }
}

static inline const char *tu_name(tdm_dtype t) {
  static const char *const names[] = {"f32", "f64", "f16", "bf16",
                                      "i32", "i64", "u8"};
  return (unsigned)t < 7 ? names[t] : "?";
}

#endif
