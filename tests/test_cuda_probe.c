/* Loads the CUDA plugin the way the engine will (dlopen) and runs its probe.
 * With no device (the build machines) it reports why and counts as skipped. */
#include <dlfcn.h>
#include <stdio.h>

#include "gpu/cuda/probe.h"

int main(void) {
    void *h = dlopen(TD_CUDA_PLUGIN_PATH, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "FAIL: cannot load the CUDA plugin: %s\n", dlerror());
        return 1;
    }
    td_cuda_probe_fn probe = (td_cuda_probe_fn)dlsym(h, "tandem_cuda_probe");
    if (!probe) {
        fprintf(stderr, "FAIL: the plugin has no tandem_cuda_probe: %s\n", dlerror());
        return 1;
    }
    td_cuda_probe_info info = {0};
    char msg[512] = "";
    int n = probe(&info, msg, sizeof msg);
    dlclose(h);
    if (n > 0) {
        printf("PASS: %s\n", msg);
        return 0;
    }
    if (info.n_devices > 0) { /* a device answered, and then failed */
        fprintf(stderr, "FAIL: %s\n", msg);
        return 1;
    }
    printf("SKIPPED: no CUDA device answered (%s)\n", msg);
    return 77;
}
