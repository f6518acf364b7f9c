// Between the CUDA backend's files: the objects behind the vtable's handles,
// the error helpers every op uses, and the ops each kernel file implements.
// Nothing here is exported from the plugin (it is built with hidden
// visibility; only tandem_cuda_open and tandem_cuda_probe are default).
#ifndef TD_GPU_CUDA_IMPL_H
#define TD_GPU_CUDA_IMPL_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdint.h>

#include "gpu/device.h"

// Streams alive at once per device: each owns one word of the device's
// fault array (below).
#define TDC_MAX_STREAMS 1024

// cuBLAS workspace per stream: NVIDIA's recommendation for Hopper, and more
// than earlier GPUs use. Each stream owns its own, so that GEMMs on
// different streams never share one.
#define TDC_BLAS_WORKSPACE (32u << 20)

// Faults attention finds in data only the device sees (a block id outside
// the pool, a position past the host bounds): the kernel skips the bad
// access and stores (code << 32 | value) into its stream's fault word, which
// lives in mapped pinned host memory, so that the next sync reads it without
// a copy. The stream's sync reports it once and clears it, as the emulated
// device does with its stream errors. (kv_append skips a slot outside the
// pool without a fault, as the emulated device does.)
enum tdc_fault_code {
    TDC_FAULT_NONE = 0,
    TDC_FAULT_BLOCK_ID = 1,   // value: the block id
    TDC_FAULT_ATTN_BOUND = 2, // value: the sequence index
};

struct td_stream {
    cudaStream_t s;
    cublasHandle_t blas;
    void *scratch; // TDC_BLAS_WORKSPACE for cuBLAS, then attn_bytes of attention partials
    size_t attn_bytes;
    int slot;                  // index of the fault word
    unsigned long long *fault; // the fault word, as the device addresses it
};

struct td_event {
    cudaEvent_t e;
    bool recorded;
    int slot; // fault word of the stream it was last recorded on; -1: none
};

struct td_dweights {
    int64_t n, k;
    uint16_t *w; // device, [n][k] bf16
    size_t bytes;
};

typedef struct tdc_device {
    int ordinal;
    int sm_count;
    cudaStream_t priv;               // zero fills and weight uploads, waited on at once
    size_t used;                     // bytes of alloc and weights, updated atomically
    pthread_mutex_t lock;            // slot_used
    unsigned long long *faults_host; // [TDC_MAX_STREAMS], mapped pinned
    unsigned long long *faults_dev;  // the same words, device addresses
    unsigned char slot_used[TDC_MAX_STREAMS];
} tdc_device;

static inline tdc_device *tdc_dev(td_device *d) { return (tdc_device *)d->impl; }

// The failed CUDA call's status: cudaErrorMemoryAllocation is
// TANDEM_ERR_OUT_OF_MEMORY, anything else TANDEM_ERR_DEVICE. It also clears
// the thread's last-error state, so that a later launch check does not
// report this failure again.
tandem_status tdc_fail_cuda(td_error *err, cudaError_t e, const char *call, const char *what);

// Makes the device current on the calling thread (the runtime's current
// device is per thread, and the engine calls from several).
tandem_status tdc_enter(td_device *d, const char *call, td_error *err);

// Device selection plus the checks every enqueue makes on its stream.
tandem_status tdc_enter_stream(td_device *d, td_stream *s, const char *call, td_error *err);

// After a launch: a bad configuration, or an earlier sticky error, fails
// the enqueue.
tandem_status tdc_launched(const char *call, td_error *err);

// Grid sizes: rows over y (the hardware's limit is 65535; kernels stride
// over the rest), columns over x.
static inline unsigned tdc_grid_rows(int64_t m) { return (unsigned)(m < 65535 ? m : 65535); }
static inline unsigned tdc_grid_cols(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 4096 ? b : 4096);
}

#ifdef __CUDACC__
__device__ static inline void tdc_fault(unsigned long long *fault, unsigned code, int32_t value) {
    // A plain 64-bit store: atomics on mapped host memory are not atomic over
    // PCIe, and any one of several faults is a good enough report.
    *(volatile unsigned long long *)fault = ((unsigned long long)code << 32) | (uint32_t)value;
    __threadfence_system();
}
#endif

// ---- ops implemented in kernels.cu, attention.cu, topk.cu ------------------
tandem_status tdc_embed(td_device *d, td_stream *s, const void *table, td_dtype table_dtype, int64_t n_rows,
                        int64_t dim, const int32_t *ids, int64_t n, float *out, td_error *err);
tandem_status tdc_rmsnorm(td_device *d, td_stream *s, int64_t m, int64_t n, const float *x, int64_t x_stride,
                          const float *w, float eps, void *out, int64_t out_stride, td_dtype out_dtype, td_error *err);
tandem_status tdc_rope(td_device *d, td_stream *s, int64_t m, float *x, int64_t x_stride, int32_t n_heads,
                       int32_t head_dim, int32_t rope_dim, const int32_t *pos, const double *inv_freq, td_error *err);
tandem_status tdc_swiglu(td_device *d, td_stream *s, int64_t m, int64_t n, const float *gu, void *out,
                         td_dtype out_dtype, td_error *err);
tandem_status tdc_add(td_device *d, td_stream *s, int64_t m, int64_t n, float *y, int64_t y_stride, const float *x,
                      int64_t x_stride, td_error *err);
tandem_status tdc_kv_append(td_device *d, td_stream *s, const td_dkv *kv, int32_t layer, int64_t n, const float *k,
                            int64_t k_stride, const float *v, int64_t v_stride, const int32_t *slots, td_error *err);
tandem_status tdc_attn_decode(td_device *d, td_stream *s, const td_dattn *a, td_error *err);
tandem_status tdc_attn_prefill(td_device *d, td_stream *s, const td_dattn *a, td_error *err);
tandem_status tdc_topk(td_device *d, td_stream *s, int64_t m, int64_t n, const float *x, int64_t x_stride, int32_t k,
                       int32_t *ids, float *vals, td_error *err);

// Bytes of attention partials a stream holds for split contexts, on a
// device of sm_count multiprocessors (attention.cu sizes its splits to fit).
size_t tdc_attn_scratch_bytes(int sm_count);

#endif // TD_GPU_CUDA_IMPL_H
