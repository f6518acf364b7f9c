// Probe of the CUDA runtime and device, exported with C linkage for dlopen.
#include <cuda_runtime.h>
#include <stdio.h>

#include "gpu/cuda/probe.h"

namespace {

__global__ void saxpy(int n, float a, const float *x, float *y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] = a * x[i] + y[i];
}

int fail(char *msg, size_t n, const char *what, cudaError_t e) {
    snprintf(msg, n, "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
    return -1;
}

} // namespace

extern "C" __attribute__((visibility("default"))) int tandem_cuda_probe(td_cuda_probe_info *info, char *msg,
                                                                        size_t msg_size) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess)
        return fail(msg, msg_size, "cudaGetDeviceCount", e);
    info->n_devices = count;
    if (count == 0) {
        snprintf(msg, msg_size, "no CUDA device");
        return 0;
    }
    cudaDeviceProp p;
    if ((e = cudaGetDeviceProperties(&p, 0)) != cudaSuccess)
        return fail(msg, msg_size, "cudaGetDeviceProperties", e);
    snprintf(info->name, sizeof info->name, "%s", p.name);
    info->cc_major = p.major;
    info->cc_minor = p.minor;
    info->total_mem = p.totalGlobalMem;

    // run a kernel and check its result: the toolchain's code runs here
    const int n = 1 << 20;
    float *x = nullptr, *y = nullptr, *h = nullptr;
    int rc = -1;
    cudaStream_t s = nullptr;
    if ((e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaMalloc(&x, n * sizeof(float))) != cudaSuccess ||
        (e = cudaMalloc(&y, n * sizeof(float))) != cudaSuccess ||
        (e = cudaMallocHost(&h, n * sizeof(float))) != cudaSuccess) {
        fail(msg, msg_size, "allocation", e);
        goto out;
    }
    for (int i = 0; i < n; i++)
        h[i] = (float)(i % 1000);
    cudaMemcpyAsync(x, h, n * sizeof(float), cudaMemcpyHostToDevice, s);
    cudaMemcpyAsync(y, h, n * sizeof(float), cudaMemcpyHostToDevice, s);
    saxpy<<<(n + 255) / 256, 256, 0, s>>>(n, 2.0f, x, y);
    cudaMemcpyAsync(h, y, n * sizeof(float), cudaMemcpyDeviceToHost, s);
    if ((e = cudaStreamSynchronize(s)) != cudaSuccess) {
        fail(msg, msg_size, "saxpy", e);
        goto out;
    }
    for (int i = 0; i < n; i++)
        if (h[i] != 3.0f * (float)(i % 1000)) {
            snprintf(msg, msg_size, "saxpy: element %d is %g, expected %g", i, h[i], 3.0 * (i % 1000));
            goto out;
        }
    snprintf(msg, msg_size, "%d device(s); device 0: %s, sm_%d%d, %.1f GiB", count, p.name, p.major, p.minor,
             (double)p.totalGlobalMem / (1 << 30));
    rc = count;
out:
    cudaFree(x);
    cudaFree(y);
    cudaFreeHost(h);
    if (s)
        cudaStreamDestroy(s);
    return rc;
}
