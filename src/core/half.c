/* half.c - IEEE binary16 and bfloat16 <-> binary32, round to nearest even.
 * NaN results are the ones PyTorch's vectorized CPU conversion produces,
 * so converted tensors compare bit for bit: for f16 the x86 F16C rule
 * (sign, quiet bit set, the top 9 payload bits kept), for bf16 0xffff. */
#include <math.h>
#include <string.h>

#include "core.h"

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static float f32_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* m >> shift, rounded to nearest, ties to even (1 <= shift <= 31). */
static uint32_t shift_round_even(uint32_t m, int shift) {
  uint32_t q = m >> shift;
  uint32_t rem = m & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u)))
    q++;
  return q;
}

uint16_t tdmi_f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
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
    return sign | (uint16_t)shift_round_even(mant, -exp - 1);
  /* A carry out of the 11-bit significand bumps the exponent, up to inf. */
  uint32_t sig = shift_round_even(mant, 13);
  return sign | (uint16_t)(((uint32_t)(exp + 15) << 10) + sig - 0x400u);
}

float tdmi_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    float mag = ldexpf((float)mant, -24);
    return sign ? -mag : mag;
  }
  if (exp == 31) /* inf, or a NaN made quiet (as F16C and PyTorch do) */
    return f32_from_bits(sign | 0x7f800000u | (mant << 13) |
                         (mant ? 0x400000u : 0u));
  return f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t tdmi_f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u)
    return 0xffffu;
  uint32_t bias = 0x7fffu + ((x >> 16) & 1u);
  return (uint16_t)((x + bias) >> 16);
}

float tdmi_bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

void tdmi_half_to_f32(tdm_dtype dtype, const uint16_t *in, float *out,
                      size_t n) {
  if (dtype == TDM_F16)
    for (size_t i = 0; i < n; i++)
      out[i] = tdmi_f16_to_f32(in[i]);
  else
    for (size_t i = 0; i < n; i++)
      out[i] = tdmi_bf16_to_f32(in[i]);
}

void tdmi_f32_to_half(tdm_dtype dtype, const float *in, uint16_t *out,
                      size_t n) {
  if (dtype == TDM_F16)
    for (size_t i = 0; i < n; i++)
      out[i] = tdmi_f32_to_f16(in[i]);
  else
    for (size_t i = 0; i < n; i++)
      out[i] = tdmi_f32_to_bf16(in[i]);
}
