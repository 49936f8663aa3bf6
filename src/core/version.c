/* version.c - runtime version and build features. */
#include "config.h"
#include "core.h"

tdm_status tdm_get_version(int *major, int *minor, int *patch) {
  TDMI_CHECK_PTR(major, "tdm_get_version");
  TDMI_CHECK_PTR(minor, "tdm_get_version");
  TDMI_CHECK_PTR(patch, "tdm_get_version");
  *major = TDM_VERSION_MAJOR;
  *minor = TDM_VERSION_MINOR;
  *patch = TDM_VERSION_PATCH;
  return TDM_SUCCESS;
}

tdm_status tdm_has_feature(tdm_feature feature, int *available) {
  TDMI_CHECK_PTR(available, "tdm_has_feature");
  switch (feature) {
  case TDM_FEATURE_CUDA:
#ifdef HAVE_CUDA
    *available = 1;
#else
    *available = 0;
#endif
    return TDM_SUCCESS;
  case TDM_FEATURE_NCCL:
#ifdef HAVE_NCCL
    *available = 1;
#else
    *available = 0;
#endif
    return TDM_SUCCESS;
  default:
    return tdmi_error(TDM_ERR_INVALID_ARGUMENT,
                      "tdm_has_feature: feature %d is not a tdm_feature",
                      (int)feature);
  }
}
