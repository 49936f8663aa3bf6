/* half.c - IEEE binary16 and bfloat16 <-> binary32, round to nearest even,
 * with PyTorch's NaN results (the bit logic is in half_bits.h, which the
 * CUDA kernels share). */
#include "core.h"

#define TDMI_HALF_FN static inline
#include "half_bits.h"

uint16_t tdmi_f32_to_f16(float f) { return tdmi_bits_f32_to_f16(f); }

float tdmi_f16_to_f32(uint16_t h) { return tdmi_bits_f16_to_f32(h); }

uint16_t tdmi_f32_to_bf16(float f) { return tdmi_bits_f32_to_bf16(f); }

float tdmi_bf16_to_f32(uint16_t h) { return tdmi_bits_bf16_to_f32(h); }

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
