/* half_bits.h - the bit logic of binary16 and bfloat16 <-> binary32,
 * round to nearest even, shared by core/half.c and the CUDA kernels (so
 * CPU and GPU convert alike).  NaN results are the ones PyTorch's
 * vectorized CPU conversion produces: for f16 the x86 F16C rule (sign,
 * quiet bit set, the top 9 payload bits kept), for bf16 0xffff; the
 * hardware's own conversions give other NaNs.  The includer defines
 * TDMI_HALF_FN, the qualifiers of each function. */
#ifndef TDM_HALF_BITS_H
#define TDM_HALF_BITS_H

#include <stdint.h>
#include <string.h>

TDMI_HALF_FN uint32_t tdmi_bits_of_f32(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

TDMI_HALF_FN float tdmi_bits_to_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* m >> shift, rounded to nearest, ties to even (1 <= shift <= 31). */
TDMI_HALF_FN uint32_t tdmi_bits_shift_round_even(uint32_t m, int shift) {
  uint32_t q = m >> shift;
  uint32_t rem = m & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1);
  return q + (rem > half || (rem == half && (q & 1u)));
}

TDMI_HALF_FN uint16_t tdmi_bits_f32_to_f16(float f) {
  uint32_t x = tdmi_bits_of_f32(f);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) /* NaN */
    return sign | 0x7e00u | (uint16_t)((ax & 0x7fffffu) >> 13);
  if (ax >= 0x47800000u)
    return sign | 0x7c00u; /* >= 65536 (and inf): inf */
  int exp = (int)(ax >> 23) - 127;
  if (exp < -25)
    return sign; /* below half the smallest subnormal: zero */
  uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
  if (exp < -14) /* subnormal result, in units of 2^-24 */
    return sign | (uint16_t)tdmi_bits_shift_round_even(mant, -exp - 1);
  /* A carry out of the 11-bit significand bumps the exponent, up to inf. */
  uint32_t sig = tdmi_bits_shift_round_even(mant, 13);
  return sign | (uint16_t)(((uint32_t)(exp + 15) << 10) + sig - 0x400u);
}

TDMI_HALF_FN float tdmi_bits_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) { /* exact: mant < 2^10 */
    float mag = (float)mant * 0x1p-24f;
    return sign ? -mag : mag;
  }
  if (exp == 31) /* inf, or a NaN made quiet (as F16C and PyTorch do) */
    return tdmi_bits_to_f32(sign | 0x7f800000u | (mant << 13) |
                                   (mant ? 0x400000u : 0u));
  return tdmi_bits_to_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

TDMI_HALF_FN uint16_t tdmi_bits_f32_to_bf16(float f) {
  uint32_t x = tdmi_bits_of_f32(f);
  if ((x & 0x7fffffffu) > 0x7f800000u)
    return 0xffffu;
  return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

TDMI_HALF_FN float tdmi_bits_bf16_to_f32(uint16_t h) {
  return tdmi_bits_to_f32((uint32_t)h << 16);
}

#endif /* TDM_HALF_BITS_H */
