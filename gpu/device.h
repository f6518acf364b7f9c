/* The device interface: one small vtable that every backend fills in.
 *
 * A device owns memory (its own, and pinned host memory for copies), runs
 * work on streams in the order it was enqueued, and orders streams against
 * each other and the host with events. Work is the few things a Llama layer
 * needs on a GPU: GEMMs (bf16 inputs, fp32 accumulation), linear layers
 * over weights the device holds in its preferred layout, and the row
 * kernels: embedding gather, RMSNorm, RoPE, SwiGLU, residual add, KV append
 * into a paged device KV cache, paged decode attention, causal prefill
 * attention, and argmax/top-k of logits.
 *
 * Backends:
 *   cuda  cuBLAS(Lt) GEMMs and CUDA C kernels in libtandem_cuda.so, loaded
 *         with dlopen (gpu/device.c), so the engine runs where CUDA is absent;
 *   emu   the same interface on host memory (gpu/emu/): each stream is a
 *         worker thread; in `compute` mode ops run the cpu/ kernels, in
 *         `timed` mode they take the time a model of a real GPU gives and
 *         compute nothing (gpu/device_model.h).
 *
 * Conventions, for every backend:
 *   - Every call that enqueues work returns at once. Arguments the host can
 *     see (sizes, strides, dtypes, null pointers) are checked at enqueue:
 *     a bad one is TANDEM_ERR_INVALID_ARGUMENT (or UNSUPPORTED) and nothing
 *     is enqueued. A failure while the work runs (TANDEM_ERR_DEVICE, or the
 *     op's own status) is kept by the stream and returned, once, by the
 *     stream's next td_dev_stream_sync. On a GPU a fault that breaks the
 *     context (an illegal address) breaks every stream.
 *   - Device-side values are checked where a kernel reads them: attention
 *     that meets a block id outside the pool, or a sequence beyond max_ctx
 *     / max_q, skips it and fails the stream; kv_append skips a slot
 *     outside the pool. Neither reads or writes out of bounds.
 *   - mem_used counts what alloc and weights_create hand out, against
 *     mem_total; a backend's own workspaces (cuBLAS's, attention scratch)
 *     are outside both.
 *   - Pointers given to kernels are device memory (td_dev_alloc) unless the
 *     description says host. Sizes and strides are in elements unless they
 *     say bytes. Matrices are row-major.
 *   - Integer arrays a kernel reads (token ids, positions, block tables) are
 *     device memory too, so that a step uploads them with one copy and the
 *     host never waits for the device to read them. Counts and maxima that
 *     size a launch (rows, max context) are host values.
 *   - Nothing prints or aborts; errors name the call and the argument.
 *
 * The paged device KV cache has the host cache's layout (cpu/kv_cache.h):
 * blocks of [layer][kv_head]{K tile, V tile}, tiles pair-interleaved. A
 * GPU reads it well too (lanes over tokens read consecutive words of a K
 * row; lanes over dims, consecutive words of a V row), and one layout
 * means a sequence migrates between pools as whole blocks, unconverted. */
#ifndef TD_GPU_DEVICE_H
#define TD_GPU_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/error.h"
#include "cpu/kv_cache.h"
#include "gpu/device_model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever the vtable or a descriptor changes: the CUDA plugin is a
 * separate library and must be built from the same header. */
#define TD_DEVICE_ABI_VERSION 1

typedef struct td_device td_device;
typedef struct td_stream td_stream;
typedef struct td_event td_event;
typedef struct td_dweights td_dweights; /* a linear layer's weights, held by the device */

typedef enum td_copy_dir {
    TD_COPY_H2D = 0,
    TD_COPY_D2H = 1,
    TD_COPY_D2D = 2,
} td_copy_dir;

typedef struct td_device_info {
    char backend[16]; /* "cuda", "emu" */
    char name[128];   /* "NVIDIA H100 PCIe", "emu compute", "emu timed H100-PCIe" */
    size_t mem_total; /* bytes of device memory td_dev_alloc may hand out */
    bool timed;       /* ops take modelled time and compute nothing (emu timed) */
} td_device_info;

/* C[b] (= or +=) A[b] . op(B[b]), for b < batch:
 *   A[b]: [m][k] bf16, at a + b * stride_a, rows lda apart;
 *   B[b]: trans_b ? [n][k] (weights as GGUF stores them: C = A B^T)
 *                 : [k][n] (C = A B), bf16, at b + b * stride_b, rows ldb apart;
 *   C[b]: [m][n] of c_dtype (f32 or bf16), at c + b * stride_c, rows ldc apart.
 * Accumulation is fp32; with accumulate (f32 C only) the product is added
 * to C. batch 1 is the plain GEMM. With batch > 1 a stride of 0 for A or
 * B uses the same matrix for every b (broadcast); C's must not overlap. */
typedef struct td_dgemm {
    int64_t m, n, k;
    int32_t batch;
    bool trans_b, accumulate;
    const void *a;
    int64_t lda, stride_a;
    const void *b;
    int64_t ldb, stride_b;
    void *c;
    int64_t ldc, stride_c;
    td_dtype c_dtype;
} td_dgemm;

/* The paged device KV pool: device memory holding n_blocks blocks of
 * layout (cpu/kv_cache.h's). */
typedef struct td_dkv {
    void *pool;
    int32_t n_blocks;
    td_kv_layout layout;
} td_dkv;

/* Attention of n_seqs sequences for one layer. Sequence i has queries
 * q_first[i] .. q_first[i] + n_q[i] - 1 (rows of q), which sit at positions
 * pos[i] .. pos[i] + n_q[i] - 1: query j attends over cached tokens
 * [0, pos[i] + j] (causal), through block table row i (block ids in token
 * order, table_stride ids per row). The cache must already hold those
 * tokens' K and V (td_dev_kv_append first). out row r is query row r's
 * result, [n_q_heads][head_dim] of out_dtype (f32 or bf16).
 *
 * Decode calls have n_q[i] = 1 for every sequence; prefill calls any n_q.
 * The two compute the same function but may round differently (as their
 * host counterparts in cpu/attention.h do): a caller that must reproduce a
 * token keeps it on the path it took. */
typedef struct td_dattn {
    td_dkv kv;
    int32_t layer, n_q_heads;
    float scale;
    int32_t n_seqs;
    const int32_t *q_first, *n_q, *pos; /* device, [n_seqs] */
    const int32_t *block_table;         /* device, [n_seqs][table_stride] */
    int32_t table_stride;
    int32_t max_ctx; /* host bound: pos[i] + n_q[i] <= max_ctx for all i */
    int32_t max_q;   /* host bound: n_q[i] <= max_q */
    const float *q;  /* [rows][q_stride] f32, heads of a row contiguous */
    int64_t q_stride;
    void *out;
    int64_t out_stride;
    td_dtype out_dtype;
} td_dattn;

typedef struct td_device_ops {
    void (*close)(td_device *d);

    /* memory: device memory is zero-filled on allocation; pinned host
     * memory is what async copies to and from the host should use. 0 bytes
     * is INVALID_ARGUMENT, more than is left OUT_OF_MEMORY; free(NULL) is a
     * no-op. */
    tandem_status (*alloc)(td_device *d, size_t bytes, void **ptr, td_error *err);
    void (*free)(td_device *d, void *ptr);
    tandem_status (*host_alloc)(td_device *d, size_t bytes, void **ptr, td_error *err);
    void (*host_free)(td_device *d, void *ptr);
    size_t (*mem_used)(td_device *d);

    /* streams: in-order queues, concurrent with each other */
    tandem_status (*stream_create)(td_device *d, td_stream **s, td_error *err);
    void (*stream_destroy)(td_device *d, td_stream *s); /* waits for its work */
    tandem_status (*stream_sync)(td_device *d, td_stream *s, td_error *err);

    /* events: record marks a point in a stream; wait makes another stream
     * (never the host) wait for it; query asks whether it passed; sync
     * blocks the host until it passes; elapsed is milliseconds between two
     * recorded, completed events. An event never recorded has passed. */
    tandem_status (*event_create)(td_device *d, td_event **e, td_error *err);
    void (*event_destroy)(td_device *d, td_event *e);
    tandem_status (*event_record)(td_device *d, td_event *e, td_stream *s, td_error *err);
    tandem_status (*stream_wait)(td_device *d, td_stream *s, td_event *e, td_error *err);
    bool (*event_query)(td_device *d, td_event *e);
    tandem_status (*event_sync)(td_device *d, td_event *e, td_error *err);
    tandem_status (*event_elapsed)(td_device *d, td_event *start, td_event *end, float *ms, td_error *err);

    /* copies (dst, src of the direction's kinds) and fills */
    tandem_status (*copy)(td_device *d, td_stream *s, void *dst, const void *src, size_t bytes, td_copy_dir dir,
                          td_error *err);
    tandem_status (*memset)(td_device *d, td_stream *s, void *dst, int value, size_t bytes, td_error *err);

    /* GEMM */
    tandem_status (*gemm)(td_device *d, td_stream *s, const td_dgemm *g, td_error *err);

    /* linear layers: weights w ([n][k] bf16, host memory) go to the device
     * once, in whatever layout its GEMMs run fastest on (synchronous);
     * linear computes y[m][n] (+)= x[m][k] . W^T, x bf16 with rows ldx
     * apart, y f32 with rows ldy apart */
    tandem_status (*weights_create)(td_device *d, int64_t n, int64_t k, const uint16_t *w, td_dweights **out,
                                    td_error *err);
    void (*weights_destroy)(td_device *d, td_dweights *w);
    tandem_status (*linear)(td_device *d, td_stream *s, const td_dweights *w, int64_t m, const void *x, int64_t ldx,
                            float *y, int64_t ldy, bool accumulate, td_error *err);

    /* out[i][:] = table[ids[i]][:] as f32, i < n; table [n_rows][dim] of
     * table_dtype (f32 or bf16). An id outside [0, n_rows) gives a zero row
     * (the engine checks ids before they reach the device). */
    tandem_status (*embed)(td_device *d, td_stream *s, const void *table, td_dtype table_dtype, int64_t n_rows,
                           int64_t dim, const int32_t *ids, int64_t n, float *out, td_error *err);
    /* cpu/ops.h's td_rmsnorm, td_rope, td_swiglu on device rows. rope turns
     * n_heads consecutive heads at the start of each of m rows (row stride
     * x_stride) by the angles of pos[r] * inv_freq[i] (computed in double,
     * as td_rope_angles does); inv_freq: device, [rope_dim / 2] doubles. */
    tandem_status (*rmsnorm)(td_device *d, td_stream *s, int64_t m, int64_t n, const float *x, int64_t x_stride,
                             const float *w, float eps, void *out, int64_t out_stride, td_dtype out_dtype,
                             td_error *err);
    tandem_status (*rope)(td_device *d, td_stream *s, int64_t m, float *x, int64_t x_stride, int32_t n_heads,
                          int32_t head_dim, int32_t rope_dim, const int32_t *pos, const double *inv_freq,
                          td_error *err);
    tandem_status (*swiglu)(td_device *d, td_stream *s, int64_t m, int64_t n, const float *gu, void *out,
                            td_dtype out_dtype, td_error *err);
    /* y[r][:] += x[r][:] for m rows of n, f32 */
    tandem_status (*add)(td_device *d, td_stream *s, int64_t m, int64_t n, float *y, int64_t y_stride, const float *x,
                         int64_t x_stride, td_error *err);

    /* Writes token rows into the cache of one layer: row i's K
     * ([n_kv_heads][head_dim] f32 at k + i * k_stride) and V (at v + i *
     * v_stride) go to slot slots[i] = block * block_tokens + offset,
     * converted to the cache dtype (round to nearest even). */
    tandem_status (*kv_append)(td_device *d, td_stream *s, const td_dkv *kv, int32_t layer, int64_t n, const float *k,
                               int64_t k_stride, const float *v, int64_t v_stride, const int32_t *slots, td_error *err);
    tandem_status (*attn_decode)(td_device *d, td_stream *s, const td_dattn *a, td_error *err);
    tandem_status (*attn_prefill)(td_device *d, td_stream *s, const td_dattn *a, td_error *err);

    /* The k largest logits of each of m rows (row stride x_stride, n
     * values), largest first, ties to the lower id: ids[r][j] and, unless
     * NULL, vals[r][j]; rows of ids and vals are k apart. 1 <= k <=
     * min(n, TD_DEV_TOPK_MAX). k = 1 is argmax. */
    tandem_status (*topk)(td_device *d, td_stream *s, int64_t m, int64_t n, const float *x, int64_t x_stride, int32_t k,
                          int32_t *ids, float *vals, td_error *err);
} td_device_ops;

#define TD_DEV_TOPK_MAX 64

/* What a backend's open fills in. impl is the backend's own state. */
struct td_device {
    const td_device_ops *ops;
    td_device_info info;
    void *impl;
};

/* ---- opening a device ---------------------------------------------------- */

typedef enum td_device_kind {
    TD_DEVICE_KIND_EMU = 0,
    TD_DEVICE_KIND_CUDA = 1,
} td_device_kind;

typedef enum td_emu_mode {
    TD_EMU_COMPUTE = 0, /* every op computes its result (correctness) */
    TD_EMU_TIMED = 1,   /* every op takes the device model's time, computes nothing */
} td_emu_mode;

typedef struct td_device_config {
    td_device_kind kind;
    /* emu */
    td_emu_mode emu_mode;
    int emu_threads;           /* OpenMP team of each compute-mode stream; 0: omp_get_max_threads() */
    size_t emu_mem_bytes;      /* device memory; 0: the device model's, else 4 GiB */
    const td_gpu_model *gpu;   /* timed mode's device model; NULL: td_gpu_model_find("H100-PCIe") */
    const td_link_model *link; /* copies take this link's time; NULL: copies are memcpy */
    /* cuda */
    int cuda_device; /* ordinal */
    const char
        *cuda_plugin; /* path of libtandem_cuda.so; NULL: $TANDEM_CUDA_PLUGIN, next to libtandem, the build tree */
} td_device_config;

void td_device_config_default(td_device_config *c);

/* Opens a device. For cuda, TANDEM_ERR_UNSUPPORTED when the plugin, the
 * driver or a device is missing, with a message that says which. */
tandem_status td_device_open(const td_device_config *c, td_device **out, td_error *err);
void td_device_close(td_device *d);

/* ---- calls, in the order of the vtable ------------------------------------- */

static inline tandem_status td_dev_alloc(td_device *d, size_t bytes, void **p, td_error *err) {
    return d->ops->alloc(d, bytes, p, err);
}
static inline void td_dev_free(td_device *d, void *p) { d->ops->free(d, p); }
static inline tandem_status td_dev_host_alloc(td_device *d, size_t bytes, void **p, td_error *err) {
    return d->ops->host_alloc(d, bytes, p, err);
}
static inline void td_dev_host_free(td_device *d, void *p) { d->ops->host_free(d, p); }
static inline size_t td_dev_mem_used(td_device *d) { return d->ops->mem_used(d); }
static inline tandem_status td_dev_stream_create(td_device *d, td_stream **s, td_error *err) {
    return d->ops->stream_create(d, s, err);
}
static inline void td_dev_stream_destroy(td_device *d, td_stream *s) { d->ops->stream_destroy(d, s); }
static inline tandem_status td_dev_stream_sync(td_device *d, td_stream *s, td_error *err) {
    return d->ops->stream_sync(d, s, err);
}
static inline tandem_status td_dev_event_create(td_device *d, td_event **e, td_error *err) {
    return d->ops->event_create(d, e, err);
}
static inline void td_dev_event_destroy(td_device *d, td_event *e) { d->ops->event_destroy(d, e); }
static inline tandem_status td_dev_event_record(td_device *d, td_event *e, td_stream *s, td_error *err) {
    return d->ops->event_record(d, e, s, err);
}
static inline tandem_status td_dev_stream_wait(td_device *d, td_stream *s, td_event *e, td_error *err) {
    return d->ops->stream_wait(d, s, e, err);
}
static inline bool td_dev_event_query(td_device *d, td_event *e) { return d->ops->event_query(d, e); }
static inline tandem_status td_dev_event_sync(td_device *d, td_event *e, td_error *err) {
    return d->ops->event_sync(d, e, err);
}
static inline tandem_status td_dev_event_elapsed(td_device *d, td_event *a, td_event *b, float *ms, td_error *err) {
    return d->ops->event_elapsed(d, a, b, ms, err);
}
static inline tandem_status td_dev_copy(td_device *d, td_stream *s, void *dst, const void *src, size_t bytes,
                                        td_copy_dir dir, td_error *err) {
    return d->ops->copy(d, s, dst, src, bytes, dir, err);
}
static inline tandem_status td_dev_memset(td_device *d, td_stream *s, void *dst, int value, size_t bytes,
                                          td_error *err) {
    return d->ops->memset(d, s, dst, value, bytes, err);
}
static inline tandem_status td_dev_gemm(td_device *d, td_stream *s, const td_dgemm *g, td_error *err) {
    return d->ops->gemm(d, s, g, err);
}
static inline tandem_status td_dev_weights_create(td_device *d, int64_t n, int64_t k, const uint16_t *w,
                                                  td_dweights **out, td_error *err) {
    return d->ops->weights_create(d, n, k, w, out, err);
}
static inline void td_dev_weights_destroy(td_device *d, td_dweights *w) { d->ops->weights_destroy(d, w); }
static inline tandem_status td_dev_linear(td_device *d, td_stream *s, const td_dweights *w, int64_t m, const void *x,
                                          int64_t ldx, float *y, int64_t ldy, bool accumulate, td_error *err) {
    return d->ops->linear(d, s, w, m, x, ldx, y, ldy, accumulate, err);
}
static inline tandem_status td_dev_embed(td_device *d, td_stream *s, const void *table, td_dtype table_dtype,
                                         int64_t n_rows, int64_t dim, const int32_t *ids, int64_t n, float *out,
                                         td_error *err) {
    return d->ops->embed(d, s, table, table_dtype, n_rows, dim, ids, n, out, err);
}
static inline tandem_status td_dev_rmsnorm(td_device *d, td_stream *s, int64_t m, int64_t n, const float *x,
                                           int64_t x_stride, const float *w, float eps, void *out, int64_t out_stride,
                                           td_dtype out_dtype, td_error *err) {
    return d->ops->rmsnorm(d, s, m, n, x, x_stride, w, eps, out, out_stride, out_dtype, err);
}
static inline tandem_status td_dev_rope(td_device *d, td_stream *s, int64_t m, float *x, int64_t x_stride,
                                        int32_t n_heads, int32_t head_dim, int32_t rope_dim, const int32_t *pos,
                                        const double *inv_freq, td_error *err) {
    return d->ops->rope(d, s, m, x, x_stride, n_heads, head_dim, rope_dim, pos, inv_freq, err);
}
static inline tandem_status td_dev_swiglu(td_device *d, td_stream *s, int64_t m, int64_t n, const float *gu, void *out,
                                          td_dtype out_dtype, td_error *err) {
    return d->ops->swiglu(d, s, m, n, gu, out, out_dtype, err);
}
static inline tandem_status td_dev_add(td_device *d, td_stream *s, int64_t m, int64_t n, float *y, int64_t y_stride,
                                       const float *x, int64_t x_stride, td_error *err) {
    return d->ops->add(d, s, m, n, y, y_stride, x, x_stride, err);
}
static inline tandem_status td_dev_kv_append(td_device *d, td_stream *s, const td_dkv *kv, int32_t layer, int64_t n,
                                             const float *k, int64_t k_stride, const float *v, int64_t v_stride,
                                             const int32_t *slots, td_error *err) {
    return d->ops->kv_append(d, s, kv, layer, n, k, k_stride, v, v_stride, slots, err);
}
static inline tandem_status td_dev_attn_decode(td_device *d, td_stream *s, const td_dattn *a, td_error *err) {
    return d->ops->attn_decode(d, s, a, err);
}
static inline tandem_status td_dev_attn_prefill(td_device *d, td_stream *s, const td_dattn *a, td_error *err) {
    return d->ops->attn_prefill(d, s, a, err);
}
static inline tandem_status td_dev_topk(td_device *d, td_stream *s, int64_t m, int64_t n, const float *x,
                                        int64_t x_stride, int32_t k, int32_t *ids, float *vals, td_error *err) {
    return d->ops->topk(d, s, m, n, x, x_stride, k, ids, vals, err);
}

/* ---- argument checks every backend runs at enqueue -------------------------- */

/* Each returns TANDEM_OK or fills err naming the call and the argument. */
tandem_status td_dev_check_gemm(const td_dgemm *g, td_error *err);
tandem_status td_dev_check_attn(const td_dattn *a, bool decode, td_error *err);
tandem_status td_dev_check_dkv(const td_dkv *kv, int32_t layer, const char *call, td_error *err);
tandem_status td_dev_check_rows(const char *call, int64_t m, int64_t n, int64_t stride, td_error *err);
tandem_status td_dev_check_out_dtype(const char *call, td_dtype t, td_error *err);

/* ---- the CUDA plugin's entry point (dlsym "tandem_cuda_open") -------------- */

typedef tandem_status (*td_cuda_open_fn)(int abi_version, int ordinal, td_device **out, td_error *err);

#ifdef __cplusplus
}
#endif

#endif /* TD_GPU_DEVICE_H */
