/* Models of real GPUs and host links: how long an op would take on them.
 *
 * The emulated device's `timed` mode sleeps for these durations instead of
 * computing, so a two-core host can pair its real CPU attention with a
 * device of a real GPU's speed; the cost model (offload/) starts from the
 * same figures. A model is a roofline with a launch cost:
 *
 *   t = launch + max(flops / (peak * gemm_eff), bytes / (bandwidth * mem_eff))
 *
 * and a link is a latency plus bytes over a per-direction bandwidth. The
 * presets' figures and their sources are in docs/DEVICE-MODELS.md; the
 * efficiencies are what well-tuned kernels reach on large operands, not
 * datasheet peaks. */
#ifndef TD_GPU_DEVICE_MODEL_H
#define TD_GPU_DEVICE_MODEL_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct td_gpu_model {
    const char *name;   /* "H100-PCIe" */
    double bf16_tflops; /* dense bf16 (fp16 where the GPU has no bf16) tensor-core peak */
    double mem_gbps;    /* device memory bandwidth, 1e9 B/s */
    double gemm_eff;    /* fraction of the peak a large GEMM reaches */
    double mem_eff;     /* fraction of the bandwidth a streaming kernel reaches */
    double launch_us;   /* per-op overhead: launch plus a small kernel's ramp */
    size_t mem_bytes;   /* device memory */
    const char *source; /* where the figures come from */
} td_gpu_model;

typedef struct td_link_model {
    const char *name;          /* "pcie4-x16" */
    double h2d_gbps, d2h_gbps; /* achieved with pinned memory, 1e9 B/s */
    double latency_us;         /* per copy */
    const char *source;
} td_link_model;

/* Presets, by name (case-insensitive); NULL when unknown. */
const td_gpu_model *td_gpu_model_find(const char *name);
const td_link_model *td_link_model_find(const char *name);
/* All presets: *n of them. */
const td_gpu_model *td_gpu_models(int *n);
const td_link_model *td_link_models(int *n);

/* Seconds an op of flops floating-point operations that moves bytes of
 * device memory takes on g. */
double td_gpu_model_seconds(const td_gpu_model *g, double flops, double bytes);
/* Seconds a copy of bytes takes over l, host to device or back. */
double td_link_model_seconds(const td_link_model *l, bool h2d, size_t bytes);

#ifdef __cplusplus
}
#endif

#endif /* TD_GPU_DEVICE_MODEL_H */
