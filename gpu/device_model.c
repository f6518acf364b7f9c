/* GPU and link presets (gpu/device_model.h); sources in docs/DEVICE-MODELS.md. */
#include "gpu/device_model.h"

#include <strings.h>

#define GIB ((size_t)1 << 30)

static const td_gpu_model gpus[] = {
    /* Turing has no bf16: its fp16 tensor rate stands in (same bytes, same role). */
    {"T4", 65.0, 320.0, 0.60, 0.75, 6.0, 16 * GIB, "NVIDIA T4 datasheet: 65 TFLOPS fp16 tensor, 320 GB/s GDDR6"},
    {"A10G", 70.0, 600.0, 0.70, 0.80, 5.0, 24 * GIB,
     "AWS EC2 G5 (A10G): 70 TFLOPS bf16 dense tensor (AWS), 600 GB/s GDDR6 (NVIDIA A10 datasheet)"},
    {"A100-SXM", 312.0, 2039.0, 0.75, 0.85, 4.0, 80 * GIB,
     "NVIDIA A100 datasheet: 312 TFLOPS bf16 dense, 2039 GB/s HBM2e (80 GB SXM)"},
    {"H100-PCIe", 756.0, 2000.0, 0.70, 0.85, 4.0, 80 * GIB,
     "NVIDIA H100 datasheet: 756 TFLOPS bf16 dense (PCIe), 2.0 TB/s HBM2e"},
    {"H100-SXM", 989.0, 3350.0, 0.70, 0.85, 4.0, 80 * GIB,
     "NVIDIA H100 datasheet: 989 TFLOPS bf16 dense (SXM5), 3.35 TB/s HBM3"},
};

static const td_link_model links[] = {
    {"pcie3-x16", 12.0, 13.0, 10.0, "PCIe 3.0 x16: 15.75 GB/s per direction raw; ~12-13 GB/s pinned cudaMemcpy"},
    {"pcie4-x16", 24.0, 26.0, 8.0, "PCIe 4.0 x16: 31.5 GB/s raw; ~24-26 GB/s pinned cudaMemcpy"},
    {"pcie5-x16", 48.0, 52.0, 8.0, "PCIe 5.0 x16: 63 GB/s raw; ~48-55 GB/s pinned cudaMemcpy (H100 PCIe hosts)"},
};

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

const td_gpu_model *td_gpu_model_find(const char *name) {
    for (int i = 0; name && i < COUNT(gpus); i++)
        if (!strcasecmp(gpus[i].name, name))
            return &gpus[i];
    return NULL;
}

const td_link_model *td_link_model_find(const char *name) {
    for (int i = 0; name && i < COUNT(links); i++)
        if (!strcasecmp(links[i].name, name))
            return &links[i];
    return NULL;
}

const td_gpu_model *td_gpu_models(int *n) {
    *n = COUNT(gpus);
    return gpus;
}

const td_link_model *td_link_models(int *n) {
    *n = COUNT(links);
    return links;
}

double td_gpu_model_seconds(const td_gpu_model *g, double flops, double bytes) {
    double tc = flops / (g->bf16_tflops * 1e12 * g->gemm_eff);
    double tm = bytes / (g->mem_gbps * 1e9 * g->mem_eff);
    return g->launch_us * 1e-6 + (tc > tm ? tc : tm);
}

double td_link_model_seconds(const td_link_model *l, bool h2d, size_t bytes) {
    return l->latency_us * 1e-6 + (double)bytes / ((h2d ? l->h2d_gbps : l->d2h_gbps) * 1e9);
}
