/* The CUDA plugin's probe, resolved with dlsym("tandem_cuda_probe"). */
#ifndef TD_GPU_CUDA_PROBE_H
#define TD_GPU_CUDA_PROBE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct td_cuda_probe_info {
    int n_devices;
    char name[256]; /* device 0 */
    int cc_major, cc_minor;
    size_t total_mem;
} td_cuda_probe_info;

/* Number of devices (>= 1) after a test kernel ran correctly on device 0;
 * 0 when the runtime answers but has no device; -1 on any failure (no
 * driver, kernel failed). msg says which, in one line. */
typedef int (*td_cuda_probe_fn)(td_cuda_probe_info *info, char *msg, size_t msg_size);

#ifdef __cplusplus
}
#endif

#endif /* TD_GPU_CUDA_PROBE_H */
