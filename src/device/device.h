/* device.h - internal interface of the device layer.  Knows nothing of
 * ranks: the caller decides which device a rank takes. */
#ifndef TDM_DEVICE_H
#define TDM_DEVICE_H

#include "../core/core.h"

/* Number of visible CUDA devices; 0 in a build without CUDA or when no
 * driver or GPU is present. */
int tdmi_device_count(void);

/* Makes device index current for the calling thread. */
tdm_status tdmi_device_activate(tdm_device_kind kind, int index);

#endif /* TDM_DEVICE_H */
