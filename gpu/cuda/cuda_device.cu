// The CUDA backend of gpu/device.h: opening the device, memory, streams,
// events, copies, GEMMs and linear weights, and the vtable. The row kernels
// live in kernels.cu, attention in attention.cu, top-k in topk.cu.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/cuda/cuda_impl.h"

// ---- helpers every file uses -------------------------------------------------

tandem_status tdc_fail_cuda(td_error *err, cudaError_t e, const char *call, const char *what) {
    (void)cudaGetLastError();
    tandem_status st = e == cudaErrorMemoryAllocation ? TANDEM_ERR_OUT_OF_MEMORY : TANDEM_ERR_DEVICE;
    return td_fail(err, st, "%s: %s: %s (%s)", call, what, cudaGetErrorString(e), cudaGetErrorName(e));
}

tandem_status tdc_enter(td_device *d, const char *call, td_error *err) {
    cudaError_t e = cudaSetDevice(tdc_dev(d)->ordinal);
    return e == cudaSuccess ? TANDEM_OK : tdc_fail_cuda(err, e, call, "cudaSetDevice");
}

tandem_status tdc_enter_stream(td_device *d, td_stream *s, const char *call, td_error *err) {
    if (!s)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: null stream", call);
    return tdc_enter(d, call, err);
}

tandem_status tdc_launched(const char *call, td_error *err) {
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess)
        return TANDEM_OK;
    return td_fail(err, TANDEM_ERR_DEVICE, "%s: kernel launch: %s (%s)", call, cudaGetErrorString(e),
                   cudaGetErrorName(e));
}

static tandem_status fail_blas(td_error *err, cublasStatus_t bs, const char *call, const char *what) {
    (void)cudaGetLastError(); // cuBLAS may have left a runtime error behind
    tandem_status st = TANDEM_ERR_DEVICE;
    if (bs == CUBLAS_STATUS_ALLOC_FAILED)
        st = TANDEM_ERR_OUT_OF_MEMORY;
    else if (bs == CUBLAS_STATUS_INVALID_VALUE)
        st = TANDEM_ERR_INVALID_ARGUMENT;
    else if (bs == CUBLAS_STATUS_NOT_SUPPORTED || bs == CUBLAS_STATUS_ARCH_MISMATCH)
        st = TANDEM_ERR_UNSUPPORTED;
    return td_fail(err, st, "%s: %s: %s", call, what, cublasGetStatusString(bs));
}

// ---- allocation table ----------------------------------------------------------
// mem_used must drop by an allocation's size at free, and the runtime does
// not tell sizes: an open-addressing table (linear probing, backward-shift
// deletion) maps live pointers to bytes, under the device lock.

typedef struct alloc_entry {
    void *p;
    size_t bytes;
} alloc_entry;

typedef struct alloc_table {
    alloc_entry *e;
    size_t cap, n; // cap: 0 or a power of two
} alloc_table;

static size_t home_of(const void *p, size_t cap) {
    uint64_t h = (uint64_t)(uintptr_t)p;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return (size_t)h & (cap - 1);
}

static void table_insert(alloc_table *t, void *p, size_t bytes) {
    size_t i = home_of(p, t->cap);
    while (t->e[i].p)
        i = (i + 1) & (t->cap - 1);
    t->e[i].p = p;
    t->e[i].bytes = bytes;
    t->n++;
}

static bool table_put(alloc_table *t, void *p, size_t bytes) {
    if (2 * (t->n + 1) > t->cap) { // keep the load at most 1/2
        size_t cap = t->cap ? 2 * t->cap : 64;
        alloc_entry *e = (alloc_entry *)calloc(cap, sizeof *e);
        if (!e)
            return false;
        alloc_table grown = {e, cap, 0};
        for (size_t i = 0; i < t->cap; i++)
            if (t->e[i].p)
                table_insert(&grown, t->e[i].p, t->e[i].bytes);
        free(t->e);
        *t = grown;
    }
    table_insert(t, p, bytes);
    return true;
}

// Removes p; its size, or 0 when p is not in the table.
static size_t table_take(alloc_table *t, const void *p) {
    if (!t->cap)
        return 0;
    const size_t mask = t->cap - 1;
    size_t i = home_of(p, t->cap);
    while (t->e[i].p != p) {
        if (!t->e[i].p)
            return 0;
        i = (i + 1) & mask;
    }
    size_t bytes = t->e[i].bytes;
    t->e[i].p = NULL;
    t->n--;
    // Pull later entries of the probe run back over the hole, unless their
    // home lies cyclically in (hole, j]: there they are still reachable.
    for (size_t j = (i + 1) & mask; t->e[j].p; j = (j + 1) & mask) {
        size_t k = home_of(t->e[j].p, t->cap);
        bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (stays)
            continue;
        t->e[i] = t->e[j];
        t->e[j].p = NULL;
        i = j;
    }
    return bytes;
}

// The device state behind td_device::impl; tdc_device is its first member,
// so that the kernel files see what they need and nothing else.
typedef struct device_state {
    tdc_device pub;
    alloc_table allocs; // under pub.lock
    bool lock_made;
} device_state;

static device_state *state_of(td_device *d) { return (device_state *)d->impl; }

// ---- memory ----------------------------------------------------------------------

static tandem_status cu_alloc(td_device *d, size_t bytes, void **ptr, td_error *err) {
    if (!ptr)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "alloc: null output pointer");
    *ptr = NULL;
    if (bytes == 0)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "alloc: 0 bytes");
    tandem_status st = tdc_enter(d, "alloc", err);
    if (st)
        return st;
    device_state *ds = state_of(d);
    void *p = NULL;
    bool put = false;
    const size_t used = __atomic_load_n(&ds->pub.used, __ATOMIC_RELAXED);
    // the budget mem_total promised, then whatever the GPU has
    cudaError_t e = used > d->info.mem_total || bytes > d->info.mem_total - used ? cudaErrorMemoryAllocation
                                                                                 : cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "alloc: out of device memory: %zu bytes asked, %zu of %zu in use",
                       bytes, used, d->info.mem_total);
    }
    if (e != cudaSuccess)
        return tdc_fail_cuda(err, e, "alloc", "cudaMalloc");
    // zero before any stream can see it: fill on the private stream and wait
    if ((e = cudaMemsetAsync(p, 0, bytes, ds->pub.priv)) != cudaSuccess ||
        (e = cudaStreamSynchronize(ds->pub.priv)) != cudaSuccess) {
        st = tdc_fail_cuda(err, e, "alloc", "zero fill");
        goto fail;
    }
    pthread_mutex_lock(&ds->pub.lock);
    put = table_put(&ds->allocs, p, bytes);
    pthread_mutex_unlock(&ds->pub.lock);
    if (!put) {
        st = td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "alloc: no host memory for the allocation table");
        goto fail;
    }
    __atomic_add_fetch(&ds->pub.used, bytes, __ATOMIC_RELAXED);
    *ptr = p;
    return TANDEM_OK;
fail:
    cudaFree(p);
    (void)cudaGetLastError();
    return st;
}

static void cu_free(td_device *d, void *p) {
    if (!p)
        return;
    device_state *ds = state_of(d);
    pthread_mutex_lock(&ds->pub.lock);
    size_t bytes = table_take(&ds->allocs, p);
    pthread_mutex_unlock(&ds->pub.lock);
    if (!bytes) // not ours (or freed twice): leave it alone
        return;
    __atomic_sub_fetch(&ds->pub.used, bytes, __ATOMIC_RELAXED);
    if (tdc_enter(d, "free", NULL) == TANDEM_OK)
        cudaFree(p); // waits for work in flight that may still use p
    (void)cudaGetLastError();
}

static tandem_status cu_host_alloc(td_device *d, size_t bytes, void **ptr, td_error *err) {
    if (!ptr)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "host_alloc: null output pointer");
    *ptr = NULL;
    if (bytes == 0)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "host_alloc: 0 bytes");
    tandem_status st = tdc_enter(d, "host_alloc", err);
    if (st)
        return st;
    cudaError_t e = cudaHostAlloc(ptr, bytes, cudaHostAllocPortable);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        *ptr = NULL;
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "host_alloc: %zu bytes of pinned memory", bytes);
    }
    if (e != cudaSuccess) {
        *ptr = NULL;
        return tdc_fail_cuda(err, e, "host_alloc", "cudaHostAlloc");
    }
    return TANDEM_OK;
}

static void cu_host_free(td_device *d, void *p) {
    if (!p)
        return;
    if (tdc_enter(d, "host_free", NULL) == TANDEM_OK)
        cudaFreeHost(p);
    (void)cudaGetLastError();
}

static size_t cu_mem_used(td_device *d) { return __atomic_load_n(&state_of(d)->pub.used, __ATOMIC_RELAXED); }

// ---- streams -----------------------------------------------------------------------

static void release_slot(tdc_device *dv, int slot) {
    if (slot < 0)
        return;
    pthread_mutex_lock(&dv->lock);
    dv->slot_used[slot] = 0;
    pthread_mutex_unlock(&dv->lock);
}

static int take_slot(tdc_device *dv) {
    int slot = -1;
    pthread_mutex_lock(&dv->lock);
    for (int i = 0; i < TDC_MAX_STREAMS; i++)
        if (!dv->slot_used[i]) {
            dv->slot_used[i] = 1;
            slot = i;
            break;
        }
    pthread_mutex_unlock(&dv->lock);
    if (slot >= 0)
        dv->faults_host[slot] = 0;
    return slot;
}

// Frees whatever of s exists, after its work: the one unwinding path of
// stream_create and stream_destroy.
static void stream_release(tdc_device *dv, td_stream *s) {
    if (s->s)
        cudaStreamSynchronize(s->s);
    if (s->blas)
        cublasDestroy(s->blas);
    if (s->scratch)
        cudaFree(s->scratch);
    if (s->s)
        cudaStreamDestroy(s->s);
    (void)cudaGetLastError();
    release_slot(dv, s->slot);
    free(s);
}

static tandem_status cu_stream_create(td_device *d, td_stream **out, td_error *err) {
    if (!out)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "stream_create: null output pointer");
    *out = NULL;
    tandem_status st = tdc_enter(d, "stream_create", err);
    if (st)
        return st;
    tdc_device *dv = tdc_dev(d);
    td_stream *s = (td_stream *)calloc(1, sizeof *s);
    if (!s)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "stream_create: no host memory");
    s->slot = -1;
    cudaError_t e;
    cublasStatus_t bs;
    if ((e = cudaStreamCreateWithFlags(&s->s, cudaStreamNonBlocking)) != cudaSuccess) {
        s->s = NULL;
        st = tdc_fail_cuda(err, e, "stream_create", "cudaStreamCreateWithFlags");
        goto fail;
    }
    s->attn_bytes = tdc_attn_scratch_bytes(dv->sm_count);
    if ((e = cudaMalloc(&s->scratch, TDC_BLAS_WORKSPACE + s->attn_bytes)) != cudaSuccess) {
        s->scratch = NULL;
        st = tdc_fail_cuda(err, e, "stream_create", "workspace");
        goto fail;
    }
    if ((bs = cublasCreate(&s->blas)) != CUBLAS_STATUS_SUCCESS) {
        s->blas = NULL;
        st = fail_blas(err, bs, "stream_create", "cublasCreate");
        goto fail;
    }
    if ((bs = cublasSetStream(s->blas, s->s)) != CUBLAS_STATUS_SUCCESS ||
        (bs = cublasSetWorkspace(s->blas, s->scratch, TDC_BLAS_WORKSPACE)) != CUBLAS_STATUS_SUCCESS) {
        st = fail_blas(err, bs, "stream_create", "cuBLAS stream and workspace");
        goto fail;
    }
    if ((s->slot = take_slot(dv)) < 0) {
        st = td_fail(err, TANDEM_ERR_LIMIT, "stream_create: %d streams are alive, the most a device has",
                     TDC_MAX_STREAMS);
        goto fail;
    }
    s->fault = dv->faults_dev + s->slot;
    *out = s;
    return TANDEM_OK;
fail:
    stream_release(dv, s);
    return st;
}

static void cu_stream_destroy(td_device *d, td_stream *s) {
    if (!s)
        return;
    if (tdc_enter(d, "stream_destroy", NULL) != TANDEM_OK)
        (void)cudaGetLastError(); // release what can be released all the same
    stream_release(tdc_dev(d), s);
}

// A fault a kernel stored for the stream that owns slot.
static tandem_status check_fault(tdc_device *dv, int slot, const char *call, td_error *err) {
    if (slot < 0)
        return TANDEM_OK;
    unsigned long long f = *(volatile unsigned long long *)&dv->faults_host[slot];
    if (!f)
        return TANDEM_OK;
    const unsigned code = (unsigned)(f >> 32);
    const int32_t value = (int32_t)(uint32_t)f;
    switch (code) {
    case TDC_FAULT_BLOCK_ID:
        return td_fail(err, TANDEM_ERR_DEVICE, "%s: attention faulted: block id %d is outside the KV pool", call,
                       value);
    case TDC_FAULT_ATTN_BOUND:
        return td_fail(err, TANDEM_ERR_DEVICE,
                       "%s: attention faulted: sequence %d's pos / n_q / q_first break the host bounds", call, value);
    }
    return td_fail(err, TANDEM_ERR_DEVICE, "%s: a kernel faulted (code %u, value %d)", call, code, value);
}

static tandem_status cu_stream_sync(td_device *d, td_stream *s, td_error *err) {
    tandem_status st = tdc_enter_stream(d, s, "stream_sync", err);
    if (st)
        return st;
    cudaError_t e = cudaStreamSynchronize(s->s);
    if (e != cudaSuccess)
        return tdc_fail_cuda(err, e, "stream_sync", "cudaStreamSynchronize");
    tdc_device *dv = tdc_dev(d);
    if ((st = check_fault(dv, s->slot, "stream_sync", err)))
        dv->faults_host[s->slot] = 0; // reported once, as the emulated device's stream errors
    return st;
}

// ---- events ------------------------------------------------------------------------

static tandem_status cu_event_create(td_device *d, td_event **out, td_error *err) {
    if (!out)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "event_create: null output pointer");
    *out = NULL;
    tandem_status st = tdc_enter(d, "event_create", err);
    if (st)
        return st;
    td_event *e = (td_event *)calloc(1, sizeof *e);
    if (!e)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "event_create: no host memory");
    cudaError_t ce = cudaEventCreate(&e->e); // with timing: elapsed needs it
    if (ce != cudaSuccess) {
        free(e);
        return tdc_fail_cuda(err, ce, "event_create", "cudaEventCreate");
    }
    e->slot = -1;
    *out = e;
    return TANDEM_OK;
}

static void cu_event_destroy(td_device *d, td_event *e) {
    if (!e)
        return;
    if (tdc_enter(d, "event_destroy", NULL) == TANDEM_OK)
        cudaEventDestroy(e->e);
    (void)cudaGetLastError();
    free(e);
}

static tandem_status cu_event_record(td_device *d, td_event *e, td_stream *s, td_error *err) {
    if (!e || !s)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "event_record: null event or stream");
    tandem_status st = tdc_enter(d, "event_record", err);
    if (st)
        return st;
    cudaError_t ce = cudaEventRecord(e->e, s->s);
    if (ce != cudaSuccess)
        return tdc_fail_cuda(err, ce, "event_record", "cudaEventRecord");
    e->recorded = true;
    e->slot = s->slot;
    return TANDEM_OK;
}

static tandem_status cu_stream_wait(td_device *d, td_stream *s, td_event *e, td_error *err) {
    if (!e || !s)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "stream_wait: null event or stream");
    tandem_status st = tdc_enter(d, "stream_wait", err);
    if (st)
        return st;
    cudaError_t ce = cudaStreamWaitEvent(s->s, e->e, 0);
    return ce == cudaSuccess ? TANDEM_OK : tdc_fail_cuda(err, ce, "stream_wait", "cudaStreamWaitEvent");
}

static bool cu_event_query(td_device *d, td_event *e) {
    if (!e || tdc_enter(d, "event_query", NULL) != TANDEM_OK) {
        (void)cudaGetLastError();
        return true;
    }
    cudaError_t ce = cudaEventQuery(e->e);
    if (ce == cudaSuccess)
        return true;
    (void)cudaGetLastError();
    // A failure counts as passed, so that a poller goes on to the sync that
    // reports it.
    return ce != cudaErrorNotReady;
}

static tandem_status cu_event_sync(td_device *d, td_event *e, td_error *err) {
    if (!e)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "event_sync: null event");
    tandem_status st = tdc_enter(d, "event_sync", err);
    if (st)
        return st;
    cudaError_t ce = cudaEventSynchronize(e->e);
    if (ce != cudaSuccess)
        return tdc_fail_cuda(err, ce, "event_sync", "cudaEventSynchronize");
    return check_fault(tdc_dev(d), e->slot, "event_sync", err);
}

static tandem_status cu_event_elapsed(td_device *d, td_event *start, td_event *end, float *ms, td_error *err) {
    if (!start || !end || !ms)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "event_elapsed: null argument");
    if (!start->recorded || !end->recorded)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "event_elapsed: an event is not recorded or has not passed");
    tandem_status st = tdc_enter(d, "event_elapsed", err);
    if (st)
        return st;
    cudaError_t ce = cudaEventElapsedTime(ms, start->e, end->e);
    if (ce == cudaErrorNotReady) {
        (void)cudaGetLastError();
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "event_elapsed: an event is not recorded or has not passed");
    }
    return ce == cudaSuccess ? TANDEM_OK : tdc_fail_cuda(err, ce, "event_elapsed", "cudaEventElapsedTime");
}

// ---- copies and fills ----------------------------------------------------------------

static tandem_status cu_copy(td_device *d, td_stream *s, void *dst, const void *src, size_t bytes, td_copy_dir dir,
                             td_error *err) {
    tandem_status st = tdc_enter_stream(d, s, "copy", err);
    if (st)
        return st;
    if (!dst || !src || !bytes)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "copy: null pointer or 0 bytes");
    cudaMemcpyKind kind;
    switch (dir) {
    case TD_COPY_H2D: kind = cudaMemcpyHostToDevice; break;
    case TD_COPY_D2H: kind = cudaMemcpyDeviceToHost; break;
    case TD_COPY_D2D: kind = cudaMemcpyDeviceToDevice; break;
    default: return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "copy: unknown direction");
    }
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, s->s);
    return e == cudaSuccess ? TANDEM_OK : tdc_fail_cuda(err, e, "copy", "cudaMemcpyAsync");
}

static tandem_status cu_memset(td_device *d, td_stream *s, void *dst, int value, size_t bytes, td_error *err) {
    tandem_status st = tdc_enter_stream(d, s, "memset", err);
    if (st)
        return st;
    if (!dst || !bytes)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "memset: null pointer or 0 bytes");
    cudaError_t e = cudaMemsetAsync(dst, value, bytes, s->s);
    return e == cudaSuccess ? TANDEM_OK : tdc_fail_cuda(err, e, "memset", "cudaMemsetAsync");
}

// ---- GEMM ------------------------------------------------------------------------------

// cuBLAS is column-major; our matrices are row-major. A row-major [r][c]
// matrix X with rows ld apart is, read column-major, the c x r matrix X^T
// with leading dimension ld. So instead of C = A op(B) we ask cuBLAS for
// the transpose, C^T = op(B)^T A^T, whose operands it reads in place:
//   - C^T: C's memory as column-major n x m, ldc.               (m' = n, n' = m)
//   - A^T: A's memory as column-major k x m, lda; no transpose.  (B' = A, N)
//   - op(B)^T:
//       trans_b (B is [n][k], C = A B^T): C^T = B A^T. B's memory is the
//         column-major k x n matrix B^T, so cuBLAS transposes it back:
//         A' = B, op T, lda' = ldb (>= k, the stored rows);
//       !trans_b (B is [k][n], C = A B): C^T = B^T A^T. B's memory is the
//         column-major n x k matrix B^T itself: A' = B, op N, lda' = ldb (>= n).
//   k' = k. Batch strides carry over unchanged (they are element offsets).
static tandem_status run_gemm(td_stream *s, const td_dgemm *g, const char *call, td_error *err) {
    const float one = 1.0f, zero = 0.0f;
    const bool batched = g->batch > 1;
    cublasStatus_t bs = cublasGemmStridedBatchedEx_64(
        s->blas, g->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, g->n, g->m, g->k, &one, g->b, CUDA_R_16BF, g->ldb,
        batched ? g->stride_b : 0, g->a, CUDA_R_16BF, g->lda, batched ? g->stride_a : 0, g->accumulate ? &one : &zero,
        g->c, g->c_dtype == TD_DTYPE_F32 ? CUDA_R_32F : CUDA_R_16BF, g->ldc, batched ? g->stride_c : 0, g->batch,
        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return bs == CUBLAS_STATUS_SUCCESS ? TANDEM_OK : fail_blas(err, bs, call, "cublasGemmStridedBatchedEx");
}

static tandem_status cu_gemm(td_device *d, td_stream *s, const td_dgemm *g, td_error *err) {
    if (!g)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "gemm: null descriptor");
    tandem_status st = tdc_enter_stream(d, s, "gemm", err);
    if (st || (st = td_dev_check_gemm(g, err)))
        return st;
    return run_gemm(s, g, "gemm", err);
}

// ---- linear weights ------------------------------------------------------------------

static tandem_status cu_weights_create(td_device *d, int64_t n, int64_t k, const uint16_t *w, td_dweights **out,
                                       td_error *err) {
    if (!out)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "weights_create: null output pointer");
    *out = NULL;
    if (n < 1 || k < 1 || !w)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "weights_create: %lld x %lld, or null weights", (long long)n,
                       (long long)k);
    if ((uint64_t)n > SIZE_MAX / 2 / (uint64_t)k)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "weights_create: %lld x %lld overflows", (long long)n,
                       (long long)k);
    tandem_status st = tdc_enter(d, "weights_create", err);
    if (st)
        return st;
    device_state *ds = state_of(d);
    td_dweights *dw = (td_dweights *)calloc(1, sizeof *dw);
    if (!dw)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "weights_create: no host memory");
    dw->n = n;
    dw->k = k;
    dw->bytes = (size_t)n * (size_t)k * 2;
    const size_t used = __atomic_load_n(&ds->pub.used, __ATOMIC_RELAXED);
    cudaError_t e = used > d->info.mem_total || dw->bytes > d->info.mem_total - used ? cudaErrorMemoryAllocation
                                                                                     : cudaMalloc(&dw->w, dw->bytes);
    if (e != cudaSuccess) {
        dw->w = NULL;
        (void)cudaGetLastError();
        st = e == cudaErrorMemoryAllocation
                 ? td_fail(err, TANDEM_ERR_OUT_OF_MEMORY,
                           "weights_create: out of device memory: %zu bytes asked, %zu of %zu in use", dw->bytes, used,
                           d->info.mem_total)
                 : tdc_fail_cuda(err, e, "weights_create", "cudaMalloc");
        goto fail;
    }
    // [n][k] row-major is already the layout cuBLAS runs fastest on for
    // y = x W^T (its "TN" case): upload as is, and wait.
    if ((e = cudaMemcpyAsync(dw->w, w, dw->bytes, cudaMemcpyHostToDevice, ds->pub.priv)) != cudaSuccess ||
        (e = cudaStreamSynchronize(ds->pub.priv)) != cudaSuccess) {
        st = tdc_fail_cuda(err, e, "weights_create", "upload");
        goto fail;
    }
    __atomic_add_fetch(&ds->pub.used, dw->bytes, __ATOMIC_RELAXED);
    *out = dw;
    return TANDEM_OK;
fail:
    if (dw->w)
        cudaFree(dw->w);
    (void)cudaGetLastError();
    free(dw);
    return st;
}

static void cu_weights_destroy(td_device *d, td_dweights *w) {
    if (!w)
        return;
    __atomic_sub_fetch(&state_of(d)->pub.used, w->bytes, __ATOMIC_RELAXED);
    if (tdc_enter(d, "weights_destroy", NULL) == TANDEM_OK)
        cudaFree(w->w);
    (void)cudaGetLastError();
    free(w);
}

static tandem_status cu_linear(td_device *d, td_stream *s, const td_dweights *w, int64_t m, const void *x, int64_t ldx,
                               float *y, int64_t ldy, bool accumulate, td_error *err) {
    tandem_status st = tdc_enter_stream(d, s, "linear", err);
    if (st)
        return st;
    if (!w || !x || !y)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "linear: null weights, x or y");
    if ((st = td_dev_check_rows("linear (x)", m, w->k, ldx, err)) ||
        (st = td_dev_check_rows("linear (y)", m, w->n, ldy, err)))
        return st;
    td_dgemm g;
    memset(&g, 0, sizeof g);
    g.m = m;
    g.n = w->n;
    g.k = w->k;
    g.batch = 1;
    g.trans_b = true;
    g.accumulate = accumulate;
    g.a = x;
    g.lda = ldx;
    g.b = w->w;
    g.ldb = w->k;
    g.c = y;
    g.ldc = ldy;
    g.c_dtype = TD_DTYPE_F32;
    return run_gemm(s, &g, "linear", err);
}

// ---- the device -------------------------------------------------------------------------

static void device_release(td_device *d) {
    device_state *ds = state_of(d);
    if (ds) {
        if (cudaSetDevice(ds->pub.ordinal) == cudaSuccess) {
            if (ds->pub.priv) {
                cudaStreamSynchronize(ds->pub.priv);
                cudaStreamDestroy(ds->pub.priv);
            }
            if (ds->pub.faults_host)
                cudaFreeHost(ds->pub.faults_host);
        }
        (void)cudaGetLastError();
        if (ds->lock_made)
            pthread_mutex_destroy(&ds->pub.lock);
        free(ds->allocs.e); // allocations still live stay with the CUDA context
        free(ds);
    }
    free(d);
}

static void cu_close(td_device *d) {
    if (d)
        device_release(d);
}

// in td_device_ops order
// clang-format off
static const td_device_ops cuda_ops = {
    cu_close,
    cu_alloc, cu_free, cu_host_alloc, cu_host_free, cu_mem_used,
    cu_stream_create, cu_stream_destroy, cu_stream_sync,
    cu_event_create, cu_event_destroy, cu_event_record, cu_stream_wait, cu_event_query, cu_event_sync,
    cu_event_elapsed,
    cu_copy, cu_memset,
    cu_gemm,
    cu_weights_create, cu_weights_destroy, cu_linear,
    tdc_embed, tdc_rmsnorm, tdc_rope, tdc_swiglu, tdc_add,
    tdc_kv_append, tdc_attn_decode, tdc_attn_prefill,
    tdc_topk,
};
// clang-format on

static const char *no_device_reason(cudaError_t e) {
    switch (e) {
    case cudaErrorNoDevice: return "no CUDA device";
    case cudaErrorInsufficientDriver: return "no usable CUDA driver";
    default: return "CUDA is unavailable";
    }
}

extern "C" __attribute__((visibility("default"))) tandem_status tandem_cuda_open(int abi_version, int ordinal,
                                                                                 td_device **out, td_error *err) {
    if (!out)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "cuda: null output pointer");
    *out = NULL;
    if (abi_version != TD_DEVICE_ABI_VERSION)
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "cuda: the plugin has device ABI %d, the engine %d",
                       TD_DEVICE_ABI_VERSION, abi_version);
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "cuda: %s (cudaGetDeviceCount: %s)", no_device_reason(e),
                       cudaGetErrorString(e));
    }
    if (ordinal < 0 || ordinal >= count)
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "cuda: no CUDA device %d (%d present)", ordinal, count);
    cudaDeviceProp p;
    if ((e = cudaSetDevice(ordinal)) != cudaSuccess || (e = cudaGetDeviceProperties(&p, ordinal)) != cudaSuccess)
        return tdc_fail_cuda(err, e, "cuda", "opening the device");
    // bf16 tensor-core GEMMs and the plugin's SASS start at sm_80
    if (p.major < 8)
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "cuda: %s is sm_%d%d; the plugin needs sm_80 or newer", p.name,
                       p.major, p.minor);
    if (!p.canMapHostMemory)
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "cuda: %s cannot map host memory", p.name);
    size_t mem_free = 0, mem_total = 0;
    if ((e = cudaMemGetInfo(&mem_free, &mem_total)) != cudaSuccess)
        return tdc_fail_cuda(err, e, "cuda", "cudaMemGetInfo");

    tandem_status st = TANDEM_OK;
    td_device *d = (td_device *)calloc(1, sizeof *d);
    device_state *ds = (device_state *)calloc(1, sizeof *ds);
    if (!d || !ds) {
        free(d);
        free(ds);
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "cuda: no host memory");
    }
    d->ops = &cuda_ops;
    d->impl = ds;
    snprintf(d->info.backend, sizeof d->info.backend, "cuda");
    snprintf(d->info.name, sizeof d->info.name, "%.*s", (int)sizeof d->info.name - 1, p.name);
    d->info.mem_total = mem_free;
    d->info.timed = false;
    ds->pub.ordinal = ordinal;
    ds->pub.sm_count = p.multiProcessorCount;
    if (pthread_mutex_init(&ds->pub.lock, NULL) != 0) {
        st = td_fail(err, TANDEM_ERR_INTERNAL, "cuda: pthread_mutex_init failed");
        goto fail;
    }
    ds->lock_made = true;
    if ((e = cudaStreamCreateWithFlags(&ds->pub.priv, cudaStreamNonBlocking)) != cudaSuccess) {
        ds->pub.priv = NULL;
        st = tdc_fail_cuda(err, e, "cuda", "cudaStreamCreateWithFlags");
        goto fail;
    }
    if ((e = cudaHostAlloc(&ds->pub.faults_host, TDC_MAX_STREAMS * sizeof *ds->pub.faults_host,
                           cudaHostAllocMapped | cudaHostAllocPortable)) != cudaSuccess) {
        ds->pub.faults_host = NULL;
        st = tdc_fail_cuda(err, e, "cuda", "fault words");
        goto fail;
    }
    memset(ds->pub.faults_host, 0, TDC_MAX_STREAMS * sizeof *ds->pub.faults_host);
    if ((e = cudaHostGetDevicePointer(&ds->pub.faults_dev, ds->pub.faults_host, 0)) != cudaSuccess) {
        st = tdc_fail_cuda(err, e, "cuda", "cudaHostGetDevicePointer");
        goto fail;
    }
    *out = d;
    return TANDEM_OK;
fail:
    device_release(d);
    return st;
}
