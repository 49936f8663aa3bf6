/* dtype.c - element types: sizes, names, scalar load/store. */
#include <string.h>

#include "core.h"

static const size_t dtype_sizes[TDM_NUM_DTYPES] = {
    [TDM_F32] = 4, [TDM_F64] = 8, [TDM_F16] = 2, [TDM_BF16] = 2,
    [TDM_I32] = 4, [TDM_I64] = 8, [TDM_U8] = 1};

static const char *const dtype_names[TDM_NUM_DTYPES] = {
    [TDM_F32] = "f32", [TDM_F64] = "f64", [TDM_F16] = "f16",
    [TDM_BF16] = "bf16", [TDM_I32] = "i32", [TDM_I64] = "i64",
    [TDM_U8] = "u8"};

static const char *const op_names[TDM_NUM_OPS] = {
    [TDM_SUM] = "sum", [TDM_MEAN] = "mean", [TDM_MAX] = "max",
    [TDM_MIN] = "min"};

size_t tdmi_dtype_size(tdm_dtype dtype) {
  return (unsigned)dtype < TDM_NUM_DTYPES ? dtype_sizes[dtype] : 0;
}

const char *tdmi_dtype_name(tdm_dtype dtype) {
  return (unsigned)dtype < TDM_NUM_DTYPES ? dtype_names[dtype] : "?";
}

const char *tdmi_op_name(tdm_op op) {
  return (unsigned)op < TDM_NUM_OPS ? op_names[op] : "?";
}

int tdmi_dtype_is_float(tdm_dtype dtype) {
  return dtype == TDM_F32 || dtype == TDM_F64 || dtype == TDM_F16 ||
         dtype == TDM_BF16;
}

tdm_status tdm_dtype_size(tdm_dtype dtype, size_t *bytes) {
  TDMI_CHECK_PTR(bytes, "tdm_dtype_size");
  *bytes = tdmi_dtype_size(dtype);
  if (*bytes == 0)
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "tdm_dtype_size: dtype %d is not a tdm_dtype",
                      (int)dtype);
  return TDM_SUCCESS;
}

void tdmi_store(tdm_dtype dtype, void *buf, size_t i, double value) {
  switch (dtype) {
  case TDM_F32: ((float *)buf)[i] = (float)value; break;
  case TDM_F64: ((double *)buf)[i] = value; break;
  case TDM_F16: ((uint16_t *)buf)[i] = tdmi_f32_to_f16((float)value); break;
  case TDM_BF16: ((uint16_t *)buf)[i] = tdmi_f32_to_bf16((float)value); break;
  case TDM_I32: ((int32_t *)buf)[i] = (int32_t)value; break;
  case TDM_I64: ((int64_t *)buf)[i] = (int64_t)value; break;
  case TDM_U8: ((uint8_t *)buf)[i] = (uint8_t)value; break;
  default: break;
  }
}
