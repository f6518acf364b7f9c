/* The emulated device (gpu/emu/emu.h). */
#include "gpu/emu/emu.h"

#include <errno.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "cpu/attention.h"
#include "cpu/isa.h"
#include "cpu/linear.h"
#include "cpu/ops.h"

#define GIB ((size_t)1 << 30)

typedef struct emu_mapping {
    void *p;
    size_t bytes; /* mapped */
} emu_mapping;

typedef struct emu {
    td_device pub;
    td_emu_mode mode;
    int threads;
    td_isa isa;
    const td_gpu_model *gpu;   /* timed mode's costs */
    const td_link_model *link; /* NULL: copies are plain memcpy */
    pthread_mutex_t lock;      /* allocations, events, timelines */
    pthread_cond_t progress;   /* some event passed */
    emu_mapping *allocs;
    int n_allocs, cap_allocs;
    size_t used;
    /* When each resource is next free (td_seconds): the device's compute,
     * and the link in each direction (h2d, d2h). */
    double compute_free, link_free[2];
    pthread_mutex_t wlock; /* wgemm: weights are reordered on the caller's thread */
    td_gemm *wgemm;
} emu;

struct td_event {
    uint64_t issued; /* records enqueued */
    uint64_t passed; /* the newest record that ran */
    double when;     /* td_seconds() of that record */
};

struct td_dweights {
    int64_t n, k;
    td_linear *lin; /* oneDNN's blocked layout; NULL in timed mode */
};

typedef enum op_kind {
    OP_COPY,
    OP_MEMSET,
    OP_GEMM,
    OP_LINEAR,
    OP_EMBED,
    OP_RMSNORM,
    OP_ROPE,
    OP_SWIGLU,
    OP_ADD,
    OP_KV_APPEND,
    OP_ATTN_DECODE,
    OP_ATTN_PREFILL,
    OP_TOPK,
    OP_RECORD,
    OP_WAIT,
} op_kind;

/* An enqueued op: its arguments, copied at enqueue. */
typedef struct op {
    op_kind kind;
    double t_enq; /* td_seconds() at enqueue: when a GPU would have had it */
    union {
        struct {
            void *dst;
            const void *src;
            size_t bytes;
            td_copy_dir dir;
            int value;
        } copy; /* OP_COPY, OP_MEMSET */
        td_dgemm gemm;
        struct {
            const td_dweights *w;
            int64_t m, ldx, ldy;
            const void *x;
            float *y;
            bool accumulate;
        } linear;
        struct {
            const void *table;
            td_dtype dtype;
            int64_t n_rows, dim, n;
            const int32_t *ids;
            float *out;
        } embed;
        struct {
            int64_t m, n, x_stride, out_stride;
            const float *x, *w;
            float eps;
            void *out;
            td_dtype out_dtype;
        } norm; /* OP_RMSNORM, OP_SWIGLU (x = gu), OP_ADD (out = y) */
        struct {
            int64_t m, x_stride;
            float *x;
            int32_t n_heads, head_dim, rope_dim;
            const int32_t *pos;
            const double *inv_freq;
        } rope;
        struct {
            td_dkv kv;
            int32_t layer;
            int64_t n, k_stride, v_stride;
            const float *k, *v;
            const int32_t *slots;
        } kv;
        td_dattn attn;
        struct {
            int64_t m, n, x_stride;
            const float *x;
            int32_t k;
            int32_t *ids;
            float *vals;
        } topk;
        struct {
            td_event *e;
            uint64_t ticket;
        } ev;
    } u;
} op;

struct td_stream {
    emu *d;
    pthread_t thread;
    pthread_mutex_t mu; /* the queue */
    pthread_cond_t cv;  /* work arrived, or work completed */
    op *q;
    size_t head, len, cap;
    uint64_t enqueued, completed;
    bool stop;
    td_error err;  /* the first failure since the last sync */
    double cursor; /* td_seconds() when the last booked op ends (under the device's lock) */
    /* the worker's own */
    td_gemm *gemm;
    td_attn *attn;
    td_kv_cache *view; /* a cache over a device pool, for cpu/attention.h */
    td_dkv view_of;
    void *scratch;
    size_t scratch_bytes;
    void *work; /* attention entries */
    size_t work_bytes;
};

static inline emu *E(td_device *d) { return (emu *)d->impl; }

/* ---- time -------------------------------------------------------------------- */

static void sleep_until(double t) {
    double now = td_seconds();
    if (t <= now)
        return;
    /* wake when asked, not up to 50 us later (the default timer slack):
     * timed ops are microseconds long, and in timed mode the host's own
     * threads sleep here (event and stream syncs) */
    static _Thread_local bool slack_set;
    if (!slack_set) {
        prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
        slack_set = true;
    }
    /* td_seconds is CLOCK_MONOTONIC: sleep against the same clock */
    struct timespec ts;
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/* Books seconds on a resource (the device's compute, a link direction):
 * after the work already booked on it, after the stream's previous op, and
 * not before the op was enqueued. Returns the slot's end, which becomes the
 * stream's cursor: in timed mode a stream runs ahead of the clock, booking,
 * and only syncs sleep until the cursor, as the host sees a GPU's work only
 * through events. Sleeping per op instead would cost a timer wake-up (tens
 * of microseconds) per op, more than a GPU's launch. */
static double book(td_stream *s, double *free_at, double seconds, double t_enq) {
    emu *d = s->d;
    pthread_mutex_lock(&d->lock);
    double start = t_enq;
    if (*free_at > start)
        start = *free_at;
    if (s->cursor > start)
        start = s->cursor;
    *free_at = s->cursor = start + seconds;
    pthread_mutex_unlock(&d->lock);
    return start + seconds;
}

/* ---- memory ----------------------------------------------------------------- */

static tandem_status emu_alloc(td_device *dev, size_t bytes, void **ptr, td_error *err) {
    emu *d = E(dev);
    *ptr = NULL;
    if (bytes == 0)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "alloc: 0 bytes");
    if (bytes > d->pub.info.mem_total) /* also keeps the rounding below from wrapping */
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "alloc: %zu bytes is more than the device's %zu", bytes,
                       d->pub.info.mem_total);
    size_t page = (size_t)sysconf(_SC_PAGESIZE), mapped = (bytes + page - 1) / page * page;
    tandem_status st = TANDEM_OK;
    pthread_mutex_lock(&d->lock);
    if (mapped > d->pub.info.mem_total - d->used)
        st = td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "alloc: out of device memory: %zu bytes asked, %zu of %zu in use",
                     bytes, d->used, d->pub.info.mem_total);
    else if (d->n_allocs == d->cap_allocs) {
        int cap = d->cap_allocs ? 2 * d->cap_allocs : 64;
        emu_mapping *a = realloc(d->allocs, (size_t)cap * sizeof *a);
        if (!a)
            st = td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "alloc: out of host memory for the allocation table");
        else {
            d->allocs = a;
            d->cap_allocs = cap;
        }
    }
    if (st == TANDEM_OK) {
        /* Zero-filled, committed page by page as touched: a timed device of
         * 80 GB costs the host only what is written. */
        void *p = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED)
            st = td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "alloc: cannot map %zu bytes", bytes);
        else {
            d->allocs[d->n_allocs++] = (emu_mapping){p, mapped};
            d->used += mapped;
            *ptr = p;
        }
    }
    pthread_mutex_unlock(&d->lock);
    return st;
}

static void emu_free(td_device *dev, void *p) {
    emu *d = E(dev);
    if (!p)
        return;
    pthread_mutex_lock(&d->lock);
    for (int i = 0; i < d->n_allocs; i++)
        if (d->allocs[i].p == p) {
            munmap(p, d->allocs[i].bytes);
            d->used -= d->allocs[i].bytes;
            d->allocs[i] = d->allocs[--d->n_allocs];
            break;
        }
    pthread_mutex_unlock(&d->lock);
}

static size_t emu_mem_used(td_device *dev) {
    emu *d = E(dev);
    pthread_mutex_lock(&d->lock);
    size_t u = d->used;
    pthread_mutex_unlock(&d->lock);
    return u;
}

static tandem_status emu_host_alloc(td_device *dev, size_t bytes, void **ptr, td_error *err) {
    *ptr = NULL;
    if (bytes == 0)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "host_alloc: 0 bytes");
    if (bytes > SIZE_MAX - 63 || !(*ptr = aligned_alloc(64, (bytes + 63) & ~(size_t)63)))
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "host_alloc: cannot allocate %zu bytes", bytes);
    /* timed copies move nothing: what the host reads from such a buffer
     * stays zeros (fixed values, no denormals to slow a kernel) */
    if (E(dev)->mode == TD_EMU_TIMED)
        memset(*ptr, 0, bytes);
    return TANDEM_OK;
}

static void emu_host_free(td_device *dev, void *p) {
    (void)dev;
    free(p);
}

/* ---- op execution (on the stream's worker) ------------------------------------ */

static void *scratch(td_stream *s, size_t bytes) {
    if (bytes > s->scratch_bytes) {
        free(s->scratch);
        s->scratch = malloc(bytes);
        s->scratch_bytes = s->scratch ? bytes : 0;
    }
    return s->scratch;
}

static void *work(td_stream *s, size_t bytes) {
    if (bytes > s->work_bytes) {
        free(s->work);
        s->work = malloc(bytes);
        s->work_bytes = s->work ? bytes : 0;
    }
    return s->work;
}

static tandem_status run_linear(td_stream *s, const op *o, td_error *err) {
    const td_dweights *w = o->u.linear.w;
    const int64_t m = o->u.linear.m, n = w->n, k = w->k, ldx = o->u.linear.ldx, ldy = o->u.linear.ldy;
    const void *x = o->u.linear.x;
    float *y = o->u.linear.y;
    if (ldx == k && ldy == n)
        return td_linear_forward(s->gemm, w->lin, m, x, y, o->u.linear.accumulate, err);
    /* Strided rows: gather into contiguous ones and scatter back. */
    uint16_t *xs = scratch(s, (size_t)m * (size_t)(k * 2 + n * 4));
    if (!xs)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "linear: out of memory for %lld strided rows", (long long)m);
    float *ys = (float *)(xs + m * k);
    for (int64_t r = 0; r < m; r++) {
        memcpy(xs + r * k, (const uint16_t *)x + r * ldx, (size_t)k * 2);
        if (o->u.linear.accumulate)
            memcpy(ys + r * n, y + r * ldy, (size_t)n * 4);
    }
    tandem_status st = td_linear_forward(s->gemm, w->lin, m, xs, ys, o->u.linear.accumulate, err);
    for (int64_t r = 0; st == TANDEM_OK && r < m; r++)
        memcpy(y + r * ldy, ys + r * n, (size_t)n * 4);
    return st;
}

static void run_embed(const op *o) {
    const int64_t D = o->u.embed.dim;
    for (int64_t i = 0; i < o->u.embed.n; i++) {
        float *out = o->u.embed.out + i * D;
        int32_t id = o->u.embed.ids[i];
        if (id < 0 || id >= o->u.embed.n_rows) {
            memset(out, 0, (size_t)D * sizeof *out);
        } else if (o->u.embed.dtype == TD_DTYPE_F32) {
            memcpy(out, (const float *)o->u.embed.table + (int64_t)id * D, (size_t)D * sizeof *out);
        } else {
            const uint16_t *row = (const uint16_t *)o->u.embed.table + (int64_t)id * D;
            for (int64_t j = 0; j < D; j++)
                out[j] = td_bf16_to_f32(row[j]);
        }
    }
}

static void run_rope(const emu *d, const op *o) {
    float cs[2 * TD_KV_MAX_HEAD_DIM];
    for (int64_t r = 0; r < o->u.rope.m; r++) {
        td_rope_angles((double)o->u.rope.pos[r], o->u.rope.inv_freq, o->u.rope.rope_dim, cs);
        td_rope(d->isa, o->u.rope.x + r * o->u.rope.x_stride, o->u.rope.n_heads, o->u.rope.head_dim, o->u.rope.rope_dim,
                cs);
    }
}

static void run_kv_append(const op *o) {
    const td_kv_layout *l = &o->u.kv.kv.layout;
    const int32_t T = l->block_tokens, H = l->n_kv_heads, D = l->head_dim;
    const bool bf16 = l->dtype == TD_DTYPE_BF16;
    uint8_t *pool = o->u.kv.kv.pool;
    for (int64_t i = 0; i < o->u.kv.n; i++) {
        const int32_t slot = o->u.kv.slots[i], t = slot % T;
        if (slot < 0 || slot / T >= o->u.kv.kv.n_blocks)
            continue; /* as a GPU would, skip what lies outside the pool */
        uint8_t *block = pool + (size_t)(slot / T) * l->block_bytes;
        const float *k = o->u.kv.k + i * o->u.kv.k_stride, *v = o->u.kv.v + i * o->u.kv.v_stride;
        for (int32_t h = 0; h < H; h++) {
            uint16_t *kt = (uint16_t *)(block + td_kv_tile_offset(l, o->u.kv.layer, h));
            uint16_t *vt = (uint16_t *)((uint8_t *)kt + l->tile_bytes);
            for (int32_t j = 0; j < D; j++) {
                float kf = k[h * D + j], vf = v[h * D + j];
                kt[td_kv_k_index(T, t, j)] = bf16 ? td_f32_to_bf16(kf) : td_f32_to_f16(kf);
                vt[td_kv_v_index(D, t, j)] = bf16 ? td_f32_to_bf16(vf) : td_f32_to_f16(vf);
            }
        }
    }
}

/* A cache over the device pool that cpu/attention.h can read: its
 * bookkeeping is never used, only its layout and pool. */
static tandem_status pool_view(td_stream *s, const td_dkv *kv, td_error *err) {
    if (s->view && s->view_of.pool == kv->pool && s->view_of.n_blocks == kv->n_blocks &&
        !memcmp(&s->view_of.layout, &kv->layout, sizeof kv->layout))
        return TANDEM_OK;
    td_kv_destroy(s->view);
    s->view = NULL;
    const td_kv_layout *l = &kv->layout;
    td_kv_config c = {.n_layers = l->n_layers,
                      .n_kv_heads = l->n_kv_heads,
                      .head_dim = l->head_dim,
                      .block_tokens = l->block_tokens,
                      .dtype = l->dtype,
                      .budget_bytes = (size_t)kv->n_blocks * l->block_bytes,
                      .max_seqs = 1,
                      .max_seq_tokens = l->block_tokens,
                      .pool = kv->pool};
    tandem_status st = td_kv_create(&c, &s->view, err);
    if (st == TANDEM_OK)
        s->view_of = *kv;
    return st;
}

/* The device-side values a kernel would check as it reads them: each
 * sequence within the host bounds, each block id within the pool. */
static tandem_status check_seqs(const td_dattn *a, bool decode, td_error *err) {
    const int32_t bt = a->kv.layout.block_tokens;
    for (int32_t i = 0; i < a->n_seqs; i++) {
        const int32_t n = decode ? 1 : a->n_q[i], end = a->pos[i] + n;
        if (n < 1 || n > a->max_q || a->pos[i] < 0 || end > a->max_ctx || a->q_first[i] < 0)
            return td_fail(err, TANDEM_ERR_DEVICE, "%s: sequence %d (%d queries at %d) outside max_q %d, max_ctx %d",
                           decode ? "attn_decode" : "attn_prefill", i, n, a->pos[i], a->max_q, a->max_ctx);
        const int32_t *t = a->block_table + (int64_t)i * a->table_stride;
        for (int32_t b = 0; b < (end + bt - 1) / bt; b++)
            if (t[b] < 0 || t[b] >= a->kv.n_blocks)
                return td_fail(err, TANDEM_ERR_DEVICE, "%s: sequence %d: block id %d outside the pool of %d",
                               decode ? "attn_decode" : "attn_prefill", i, t[b], a->kv.n_blocks);
    }
    return TANDEM_OK;
}

static tandem_status run_attn(td_stream *s, const td_dattn *a, bool decode, td_error *err) {
    tandem_status st = pool_view(s, &a->kv, err);
    if (st == TANDEM_OK)
        st = check_seqs(a, decode, err);
    if (st)
        return st;
    const size_t esz = td_dtype_size(a->out_dtype);
    const int32_t n = a->n_seqs;
    if (decode) {
        td_attn_seq *e = work(s, (size_t)n * sizeof *e);
        if (!e)
            return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "attn_decode: out of memory for %d sequences", n);
        for (int32_t i = 0; i < n; i++)
            e[i] = (td_attn_seq){.q = a->q + (int64_t)a->q_first[i] * a->q_stride,
                                 .blocks = a->block_table + (int64_t)i * a->table_stride,
                                 .n_tokens = a->pos[i] + 1,
                                 .out = (char *)a->out + (size_t)a->q_first[i] * (size_t)a->out_stride * esz};
        td_attn_batch b = {.kv = s->view,
                           .layer = a->layer,
                           .n_q_heads = a->n_q_heads,
                           .scale = a->scale,
                           .out_dtype = a->out_dtype,
                           .seqs = e,
                           .n_seqs = n};
        return td_attn_decode(s->attn, &b, err);
    }
    td_attn_run *r = work(s, (size_t)n * sizeof *r);
    if (!r)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "attn_prefill: out of memory for %d sequences", n);
    for (int32_t i = 0; i < n; i++)
        r[i] = (td_attn_run){.q = a->q + (int64_t)a->q_first[i] * a->q_stride,
                             .q_stride = a->q_stride,
                             .blocks = a->block_table + (int64_t)i * a->table_stride,
                             .pos = a->pos[i],
                             .n = a->n_q[i],
                             .out = (char *)a->out + (size_t)a->q_first[i] * (size_t)a->out_stride * esz,
                             .out_stride = a->out_stride};
    td_attn_prefill_batch b = {.kv = s->view,
                               .layer = a->layer,
                               .n_q_heads = a->n_q_heads,
                               .scale = a->scale,
                               .out_dtype = a->out_dtype,
                               .runs = r,
                               .n_runs = n};
    return td_attn_prefill(s->attn, &b, err);
}

static void run_topk(const op *o) {
    const int32_t k = o->u.topk.k;
    for (int64_t r = 0; r < o->u.topk.m; r++) {
        const float *x = o->u.topk.x + r * o->u.topk.x_stride;
        int32_t ids[TD_DEV_TOPK_MAX];
        float vals[TD_DEV_TOPK_MAX];
        int32_t have = 0;
        /* Ascending ids, and a newcomer displaces only a strictly smaller
         * value: ties go to the lower id. NaN never enters. */
        for (int64_t j = 0; j < o->u.topk.n; j++) {
            float v = x[j];
            if (v != v || (have == k && !(v > vals[k - 1])))
                continue;
            int32_t at = have < k ? have++ : k - 1;
            while (at > 0 && vals[at - 1] < v) {
                vals[at] = vals[at - 1];
                ids[at] = ids[at - 1];
                at--;
            }
            vals[at] = v;
            ids[at] = (int32_t)j;
        }
        for (int32_t j = 0; j < k; j++) {
            o->u.topk.ids[r * k + j] = j < have ? ids[j] : -1;
            if (o->u.topk.vals)
                o->u.topk.vals[r * k + j] = j < have ? vals[j] : -__builtin_inff();
        }
    }
}

static tandem_status compute(td_stream *s, const op *o, td_error *err) {
    emu *d = s->d;
    switch (o->kind) {
    case OP_GEMM: {
        const td_dgemm *g = &o->u.gemm;
        td_matmul mm = {.batch = g->batch,
                        .m = g->m,
                        .n = g->n,
                        .k = g->k,
                        .a = g->a,
                        .lda = g->lda,
                        .stride_a = g->stride_a,
                        .b = g->b,
                        .ldb = g->ldb,
                        .stride_b = g->stride_b,
                        .trans_b = g->trans_b,
                        .c = g->c,
                        .ldc = g->ldc,
                        .stride_c = g->stride_c,
                        .c_dtype = g->c_dtype,
                        .accumulate = g->accumulate};
        return td_matmul_bf16(s->gemm, &mm, err);
    }
    case OP_LINEAR: return run_linear(s, o, err);
    case OP_EMBED: run_embed(o); return TANDEM_OK;
    case OP_RMSNORM:
        td_rmsnorm(d->isa, o->u.norm.m, o->u.norm.n, o->u.norm.x, o->u.norm.x_stride, o->u.norm.w, o->u.norm.eps,
                   o->u.norm.out, o->u.norm.out_stride, o->u.norm.out_dtype);
        return TANDEM_OK;
    case OP_ROPE: run_rope(d, o); return TANDEM_OK;
    case OP_SWIGLU:
        td_swiglu(d->isa, o->u.norm.m, o->u.norm.n, o->u.norm.x, o->u.norm.out, o->u.norm.out_dtype);
        return TANDEM_OK;
    case OP_ADD:
        for (int64_t r = 0; r < o->u.norm.m; r++) {
            float *y = (float *)o->u.norm.out + r * o->u.norm.out_stride;
            const float *x = o->u.norm.x + r * o->u.norm.x_stride;
            for (int64_t j = 0; j < o->u.norm.n; j++)
                y[j] += x[j];
        }
        return TANDEM_OK;
    case OP_KV_APPEND: run_kv_append(o); return TANDEM_OK;
    case OP_ATTN_DECODE: return run_attn(s, &o->u.attn, true, err);
    case OP_ATTN_PREFILL: return run_attn(s, &o->u.attn, false, err);
    case OP_TOPK: run_topk(o); return TANDEM_OK;
    default: return td_fail(err, TANDEM_ERR_INTERNAL, "emu: op %d is not a kernel", (int)o->kind);
    }
}

/* Attention's KV bytes, read from the arrays the op will use: the emu's
 * device memory is host memory. */
static double attn_kv_bytes(const td_dattn *a) {
    const td_kv_layout *l = &a->kv.layout;
    double per_token = 2.0 * l->n_kv_heads * l->head_dim * (double)td_dtype_size(l->dtype), tokens = 0;
    for (int32_t i = 0; i < a->n_seqs; i++)
        tokens += a->pos[i] + a->n_q[i];
    return tokens * per_token;
}

/* The device model's time for a kernel: flops and bytes of device memory. */
static double model_seconds(const emu *d, const op *o) {
    double f = 0, b = 0;
    switch (o->kind) {
    case OP_GEMM: {
        const td_dgemm *g = &o->u.gemm;
        f = 2.0 * g->m * g->n * g->k * g->batch;
        b = g->batch * (2.0 * (g->m * g->k + g->n * g->k) +
                        (double)g->m * g->n * td_dtype_size(g->c_dtype) * (g->accumulate ? 2 : 1));
        break;
    }
    case OP_LINEAR: {
        double m = (double)o->u.linear.m, n = (double)o->u.linear.w->n, k = (double)o->u.linear.w->k;
        f = 2 * m * n * k;
        b = 2 * (m * k + n * k) + 4 * m * n * (o->u.linear.accumulate ? 2 : 1);
        break;
    }
    case OP_EMBED: b = (double)o->u.embed.n * o->u.embed.dim * (4.0 + td_dtype_size(o->u.embed.dtype)); break;
    case OP_RMSNORM:
    case OP_SWIGLU:
    case OP_ADD: b = (double)o->u.norm.m * o->u.norm.n * 12; break;
    case OP_ROPE: b = (double)o->u.rope.m * o->u.rope.n_heads * o->u.rope.head_dim * 8; break;
    case OP_KV_APPEND: b = (double)o->u.kv.n * o->u.kv.kv.layout.n_kv_heads * o->u.kv.kv.layout.head_dim * 12; break;
    case OP_ATTN_DECODE:
    case OP_ATTN_PREFILL: {
        const td_dattn *a = &o->u.attn;
        b = attn_kv_bytes(a);
        /* q.k and p.v: 4 flops per cached token, head dim and query head */
        double pairs = 0;
        for (int32_t i = 0; i < a->n_seqs; i++)
            pairs += (double)a->n_q[i] * (a->pos[i] + (a->n_q[i] + 1) / 2.0);
        f = 4.0 * pairs * a->n_q_heads * a->kv.layout.head_dim;
        break;
    }
    case OP_TOPK: b = (double)o->u.topk.m * o->u.topk.n * 4; break;
    case OP_MEMSET: b = (double)o->u.copy.bytes; break;
    case OP_COPY: b = 2.0 * (double)o->u.copy.bytes; break; /* D2D: read and write */
    default: break;
    }
    return td_gpu_model_seconds(d->gpu, f, b);
}

/* Timed mode: uploads up to this size move their bytes (see run_copy). */
#define TIMED_MOVED_BYTES ((size_t)4 << 20)

static tandem_status run_copy(td_stream *s, const op *o) {
    emu *d = s->d;
    const td_copy_dir dir = o->u.copy.dir;
    double end = 0;
    if (dir != TD_COPY_D2D && d->link)
        end = book(s, &d->link_free[dir == TD_COPY_H2D ? 0 : 1],
                   td_link_model_seconds(d->link, dir == TD_COPY_H2D, o->u.copy.bytes), o->t_enq);
    else if (d->mode == TD_EMU_TIMED)
        end = book(s, &d->compute_free, model_seconds(d, o), o->t_enq);
    /* Timed: the device computes nothing, so its data need not move, and
     * moving it on the enqueuing thread would take the host the time a
     * GPU's copy engine takes. But a timed op's cost may depend on the
     * step's metadata it reads (attention's positions and lengths), which
     * comes up in small copies: those move. */
    if (d->mode == TD_EMU_COMPUTE || (dir == TD_COPY_H2D && o->u.copy.bytes <= TIMED_MOVED_BYTES))
        memmove(o->u.copy.dst, o->u.copy.src, o->u.copy.bytes);
    if (d->mode == TD_EMU_COMPUTE) /* the stream's next op computes for real: after the copy's time */
        sleep_until(end);
    return TANDEM_OK;
}

static void run_op(td_stream *s, const op *o) {
    emu *d = s->d;
    td_error e = {0};
    tandem_status st = TANDEM_OK;
    switch (o->kind) {
    case OP_RECORD: {
        /* (compute mode: timed ops never reach a worker, see run_timed) the
         * work before it ran for real, so the event passes now, or when a
         * copy's link time ends */
        const double after = td_seconds();
        pthread_mutex_lock(&d->lock);
        double when = s->cursor > after ? s->cursor : after;
        pthread_mutex_unlock(&d->lock);
        sleep_until(when);
        pthread_mutex_lock(&d->lock);
        if (o->u.ev.ticket > o->u.ev.e->passed) {
            o->u.ev.e->passed = o->u.ev.ticket;
            o->u.ev.e->when = when;
        }
        pthread_cond_broadcast(&d->progress);
        pthread_mutex_unlock(&d->lock);
        return;
    }
    case OP_WAIT:
        pthread_mutex_lock(&d->lock);
        while (o->u.ev.e->passed < o->u.ev.ticket)
            pthread_cond_wait(&d->progress, &d->lock);
        if (o->u.ev.e->when > s->cursor) /* what follows starts after what it waited for */
            s->cursor = o->u.ev.e->when;
        pthread_mutex_unlock(&d->lock);
        return;
    case OP_COPY: st = run_copy(s, o); break;
    case OP_MEMSET:
        if (d->mode == TD_EMU_TIMED)
            book(s, &d->compute_free, model_seconds(d, o), o->t_enq);
        else
            memset(o->u.copy.dst, o->u.copy.value, o->u.copy.bytes);
        break;
    default:
        if (d->mode == TD_EMU_TIMED) {
            book(s, &d->compute_free, model_seconds(d, o), o->t_enq);
            break;
        }
        if (!s->gemm && (st = td_gemm_create(&s->gemm, &e)))
            break;
        if (!s->attn && (st = td_attn_create(d->threads, d->isa, &s->attn, &e)))
            break;
        st = compute(s, o, &e);
        break;
    }
    if (st != TANDEM_OK) {
        pthread_mutex_lock(&s->mu);
        if (s->err.status == TANDEM_OK)
            s->err = e;
        pthread_mutex_unlock(&s->mu);
    }
}

static void *worker(void *arg) {
    td_stream *s = arg;
    /* this thread's OpenMP team: the kernels' parallel regions */
    omp_set_num_threads(s->d->threads);
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (s->head == s->len && !s->stop)
            pthread_cond_wait(&s->cv, &s->mu);
        if (s->head == s->len)
            break;
        op o = s->q[s->head++];
        pthread_mutex_unlock(&s->mu);
        run_op(s, &o);
        pthread_mutex_lock(&s->mu);
        s->completed++;
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    td_gemm_destroy(s->gemm);
    td_attn_destroy(s->attn);
    td_kv_destroy(s->view);
    free(s->scratch);
    free(s->work);
    return NULL;
}

/* Timed mode books each op as it is enqueued, on the caller's thread: a
 * timed op computes nothing, so nothing needs the stream's worker, and the
 * host sees the device only through events and syncs, which sleep until
 * the booked time. Handing timed ops to a worker cost a thread wake-up per
 * event on the host's cores (50-200 µs on a loaded two-core machine, where
 * the workers compete with the CPU attention team), a cost a GPU does not
 * put on its host. Events pass at their booked time (emu_event_query,
 * emu_event_sync); a wait on an event takes its booked time, which is
 * known once the record is enqueued (as CUDA, a wait on an event not yet
 * recorded waits for nothing). */
static void run_timed(td_stream *s, const op *o0) {
    emu *d = s->d;
    op o = *o0;
    o.t_enq = td_seconds();
    switch (o.kind) {
    case OP_RECORD:
        pthread_mutex_lock(&d->lock);
        if (o.u.ev.ticket > o.u.ev.e->passed) {
            o.u.ev.e->passed = o.u.ev.ticket;
            o.u.ev.e->when = s->cursor > o.t_enq ? s->cursor : o.t_enq;
        }
        pthread_cond_broadcast(&d->progress);
        pthread_mutex_unlock(&d->lock);
        break;
    case OP_WAIT:
        pthread_mutex_lock(&d->lock);
        if (o.u.ev.e->passed >= o.u.ev.ticket && o.u.ev.e->when > s->cursor)
            s->cursor = o.u.ev.e->when;
        pthread_mutex_unlock(&d->lock);
        break;
    default: run_op(s, &o); break; /* books, and moves the bytes of a copy or memset */
    }
    pthread_mutex_lock(&s->mu);
    s->enqueued++;
    s->completed++;
    pthread_mutex_unlock(&s->mu);
}

static tandem_status enqueue(td_stream *s, const op *o, td_error *err) {
    if (s->d->mode == TD_EMU_TIMED) {
        run_timed(s, o);
        return TANDEM_OK;
    }
    pthread_mutex_lock(&s->mu);
    if (s->head == s->len)
        s->head = s->len = 0;
    if (s->len == s->cap) {
        if (s->head > 0) {
            memmove(s->q, s->q + s->head, (s->len - s->head) * sizeof *s->q);
            s->len -= s->head;
            s->head = 0;
        } else {
            size_t cap = s->cap ? 2 * s->cap : 256;
            op *q = realloc(s->q, cap * sizeof *q);
            if (!q) {
                pthread_mutex_unlock(&s->mu);
                return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "emu: out of memory for a stream queue of %zu ops", cap);
            }
            s->q = q;
            s->cap = cap;
        }
    }
    s->q[s->len] = *o;
    s->q[s->len++].t_enq = td_seconds();
    s->enqueued++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return TANDEM_OK;
}

/* ---- streams and events ------------------------------------------------------- */

static tandem_status emu_stream_create(td_device *dev, td_stream **out, td_error *err) {
    *out = NULL;
    td_stream *s = calloc(1, sizeof *s);
    if (!s)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "stream_create: out of memory");
    s->d = E(dev);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    int rc = pthread_create(&s->thread, NULL, worker, s);
    if (rc) {
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
        free(s);
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "stream_create: cannot start a worker thread (%s)", strerror(rc));
    }
    *out = s;
    return TANDEM_OK;
}

static void emu_stream_destroy(td_device *dev, td_stream *s) {
    (void)dev;
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stop = true; /* the worker drains the queue first */
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->q);
    free(s);
}

static tandem_status emu_stream_sync(td_device *dev, td_stream *s, td_error *err) {
    (void)dev;
    pthread_mutex_lock(&s->mu);
    while (s->completed < s->enqueued)
        pthread_cond_wait(&s->cv, &s->mu);
    td_error e = s->err;
    td_error_clear(&s->err);
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&s->d->lock);
    double end = s->cursor; /* the booked work's end: the stream is done then */
    pthread_mutex_unlock(&s->d->lock);
    sleep_until(end);
    if (e.status == TANDEM_OK)
        return TANDEM_OK;
    return td_fail(err, e.status, "%s", e.msg);
}

static tandem_status emu_event_create(td_device *dev, td_event **out, td_error *err) {
    (void)dev;
    if (!(*out = calloc(1, sizeof **out)))
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "event_create: out of memory");
    return TANDEM_OK;
}

static void emu_event_destroy(td_device *dev, td_event *e) {
    (void)dev;
    free(e);
}

static tandem_status emu_event_record(td_device *dev, td_event *e, td_stream *s, td_error *err) {
    emu *d = E(dev);
    if (!e || !s)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "event_record: null event or stream");
    op o = {.kind = OP_RECORD};
    pthread_mutex_lock(&d->lock);
    o.u.ev.e = e;
    o.u.ev.ticket = ++e->issued;
    pthread_mutex_unlock(&d->lock);
    return enqueue(s, &o, err);
}

static tandem_status emu_stream_wait(td_device *dev, td_stream *s, td_event *e, td_error *err) {
    emu *d = E(dev);
    if (!e || !s)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "stream_wait: null event or stream");
    op o = {.kind = OP_WAIT};
    pthread_mutex_lock(&d->lock);
    o.u.ev.e = e;
    o.u.ev.ticket = e->issued; /* the newest record so far, as CUDA's wait means */
    pthread_mutex_unlock(&d->lock);
    return enqueue(s, &o, err);
}

static bool emu_event_query(td_device *dev, td_event *e) {
    emu *d = E(dev);
    pthread_mutex_lock(&d->lock);
    bool passed = e->passed >= e->issued && (d->mode != TD_EMU_TIMED || td_seconds() >= e->when);
    pthread_mutex_unlock(&d->lock);
    return passed;
}

static tandem_status emu_event_sync(td_device *dev, td_event *e, td_error *err) {
    emu *d = E(dev);
    if (!e)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "event_sync: null event");
    pthread_mutex_lock(&d->lock);
    uint64_t t = e->issued;
    while (e->passed < t)
        pthread_cond_wait(&d->progress, &d->lock);
    const double when = e->when;
    pthread_mutex_unlock(&d->lock);
    if (d->mode == TD_EMU_TIMED) /* booked, not yet reached */
        sleep_until(when);
    return TANDEM_OK;
}

static tandem_status emu_event_elapsed(td_device *dev, td_event *a, td_event *b, float *ms, td_error *err) {
    emu *d = E(dev);
    pthread_mutex_lock(&d->lock);
    bool ok = a->issued && b->issued && a->passed == a->issued && b->passed == b->issued;
    double dt = b->when - a->when;
    pthread_mutex_unlock(&d->lock);
    if (!ok)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "event_elapsed: an event is not recorded or has not passed");
    *ms = (float)(dt * 1e3);
    return TANDEM_OK;
}

/* ---- enqueueing ops ------------------------------------------------------------- */

static tandem_status need(bool ok, const char *call, const char *what, td_error *err) {
    return ok ? TANDEM_OK : td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: %s", call, what);
}

static tandem_status emu_copy(td_device *dev, td_stream *s, void *dst, const void *src, size_t bytes, td_copy_dir dir,
                              td_error *err) {
    (void)dev;
    tandem_status st = need(dst && src && bytes, "copy", "null pointer or 0 bytes", err);
    if (st == TANDEM_OK)
        st = need((unsigned)dir <= TD_COPY_D2D, "copy", "unknown direction", err);
    if (st)
        return st;
    op o = {.kind = OP_COPY, .u.copy = {.dst = dst, .src = src, .bytes = bytes, .dir = dir}};
    return enqueue(s, &o, err);
}

static tandem_status emu_memset(td_device *dev, td_stream *s, void *dst, int value, size_t bytes, td_error *err) {
    (void)dev;
    tandem_status st = need(dst && bytes, "memset", "null pointer or 0 bytes", err);
    if (st)
        return st;
    op o = {.kind = OP_MEMSET, .u.copy = {.dst = dst, .bytes = bytes, .value = value}};
    return enqueue(s, &o, err);
}

static tandem_status emu_gemm(td_device *dev, td_stream *s, const td_dgemm *g, td_error *err) {
    (void)dev;
    tandem_status st = td_dev_check_gemm(g, err);
    if (st)
        return st;
    op o = {.kind = OP_GEMM, .u.gemm = *g};
    return enqueue(s, &o, err);
}

static tandem_status emu_weights_create(td_device *dev, int64_t n, int64_t k, const uint16_t *w, td_dweights **out,
                                        td_error *err) {
    emu *d = E(dev);
    *out = NULL;
    if (n < 1 || k < 1 || !w)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "weights_create: %lld x %lld, or null weights", (long long)n,
                       (long long)k);
    td_dweights *dw = calloc(1, sizeof *dw);
    if (!dw)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "weights_create: out of memory");
    dw->n = n;
    dw->k = k;
    /* Device memory is counted as the plain bf16 matrix a GPU would hold. */
    const size_t bytes = (size_t)n * (size_t)k * 2;
    tandem_status st = TANDEM_OK;
    pthread_mutex_lock(&d->lock);
    if (bytes > d->pub.info.mem_total - d->used)
        st = td_fail(err, TANDEM_ERR_OUT_OF_MEMORY,
                     "weights_create: out of device memory: %zu bytes asked, %zu of %zu in use", bytes, d->used,
                     d->pub.info.mem_total);
    else
        d->used += bytes;
    pthread_mutex_unlock(&d->lock);
    if (st == TANDEM_OK && d->mode == TD_EMU_COMPUTE) {
        pthread_mutex_lock(&d->wlock);
        st = td_linear_create(d->wgemm, n, k, TD_DTYPE_BF16, w, &dw->lin, err);
        pthread_mutex_unlock(&d->wlock);
        if (st) {
            pthread_mutex_lock(&d->lock);
            d->used -= bytes;
            pthread_mutex_unlock(&d->lock);
        }
    }
    if (st) {
        free(dw);
        return st;
    }
    *out = dw;
    return TANDEM_OK;
}

static void emu_weights_destroy(td_device *dev, td_dweights *w) {
    emu *d = E(dev);
    if (!w)
        return;
    pthread_mutex_lock(&d->lock);
    d->used -= (size_t)w->n * (size_t)w->k * 2;
    pthread_mutex_unlock(&d->lock);
    td_linear_destroy(w->lin);
    free(w);
}

static tandem_status emu_linear(td_device *dev, td_stream *s, const td_dweights *w, int64_t m, const void *x,
                                int64_t ldx, float *y, int64_t ldy, bool accumulate, td_error *err) {
    (void)dev;
    tandem_status st = need(w && x && y, "linear", "null weights, x or y", err);
    if (st == TANDEM_OK)
        st = td_dev_check_rows("linear (x)", m, w->k, ldx, err);
    if (st == TANDEM_OK)
        st = td_dev_check_rows("linear (y)", m, w->n, ldy, err);
    if (st)
        return st;
    op o = {.kind = OP_LINEAR,
            .u.linear = {.w = w, .m = m, .x = x, .ldx = ldx, .y = y, .ldy = ldy, .accumulate = accumulate}};
    return enqueue(s, &o, err);
}

static tandem_status emu_embed(td_device *dev, td_stream *s, const void *table, td_dtype dtype, int64_t n_rows,
                               int64_t dim, const int32_t *ids, int64_t n, float *out, td_error *err) {
    (void)dev;
    tandem_status st = need(table && ids && out, "embed", "null table, ids or out", err);
    if (st == TANDEM_OK)
        st = td_dev_check_rows("embed", n, dim, dim, err);
    if (st == TANDEM_OK)
        st = need(n_rows >= 1, "embed", "empty table", err);
    if (st == TANDEM_OK && dtype != TD_DTYPE_F32 && dtype != TD_DTYPE_BF16)
        st = td_fail(err, TANDEM_ERR_UNSUPPORTED, "embed: table dtype %s (f32 or bf16)", td_dtype_name(dtype));
    if (st)
        return st;
    op o = {.kind = OP_EMBED,
            .u.embed = {.table = table, .dtype = dtype, .n_rows = n_rows, .dim = dim, .ids = ids, .n = n, .out = out}};
    return enqueue(s, &o, err);
}

static tandem_status emu_rmsnorm(td_device *dev, td_stream *s, int64_t m, int64_t n, const float *x, int64_t x_stride,
                                 const float *w, float eps, void *out, int64_t out_stride, td_dtype out_dtype,
                                 td_error *err) {
    (void)dev;
    tandem_status st = need(x && w && out, "rmsnorm", "null x, w or out", err);
    if (st == TANDEM_OK)
        st = td_dev_check_rows("rmsnorm (x)", m, n, x_stride, err);
    if (st == TANDEM_OK)
        st = td_dev_check_rows("rmsnorm (out)", m, n, out_stride, err);
    if (st == TANDEM_OK)
        st = td_dev_check_out_dtype("rmsnorm", out_dtype, err);
    if (st)
        return st;
    op o = {.kind = OP_RMSNORM,
            .u.norm = {.m = m,
                       .n = n,
                       .x = x,
                       .x_stride = x_stride,
                       .w = w,
                       .eps = eps,
                       .out = out,
                       .out_stride = out_stride,
                       .out_dtype = out_dtype}};
    return enqueue(s, &o, err);
}

static tandem_status emu_rope(td_device *dev, td_stream *s, int64_t m, float *x, int64_t x_stride, int32_t n_heads,
                              int32_t head_dim, int32_t rope_dim, const int32_t *pos, const double *inv_freq,
                              td_error *err) {
    (void)dev;
    tandem_status st = need(x && pos && inv_freq, "rope", "null x, pos or inv_freq", err);
    if (st == TANDEM_OK)
        st = td_dev_check_rows("rope", m, (int64_t)n_heads * head_dim, x_stride, err);
    if (st == TANDEM_OK)
        st = need(n_heads >= 1 && head_dim >= 2 && head_dim <= TD_KV_MAX_HEAD_DIM && rope_dim >= 2 &&
                      rope_dim % 2 == 0 && rope_dim <= head_dim,
                  "rope", "needs heads >= 1, an even rope_dim <= head_dim <= 256", err);
    if (st)
        return st;
    op o = {.kind = OP_ROPE,
            .u.rope = {.m = m,
                       .x = x,
                       .x_stride = x_stride,
                       .n_heads = n_heads,
                       .head_dim = head_dim,
                       .rope_dim = rope_dim,
                       .pos = pos,
                       .inv_freq = inv_freq}};
    return enqueue(s, &o, err);
}

static tandem_status emu_swiglu(td_device *dev, td_stream *s, int64_t m, int64_t n, const float *gu, void *out,
                                td_dtype out_dtype, td_error *err) {
    (void)dev;
    tandem_status st = need(gu && out, "swiglu", "null gu or out", err);
    if (st == TANDEM_OK)
        st = td_dev_check_rows("swiglu", m, n, n, err);
    if (st == TANDEM_OK)
        st = td_dev_check_out_dtype("swiglu", out_dtype, err);
    if (st)
        return st;
    op o = {.kind = OP_SWIGLU, .u.norm = {.m = m, .n = n, .x = gu, .out = out, .out_dtype = out_dtype}};
    return enqueue(s, &o, err);
}

static tandem_status emu_add(td_device *dev, td_stream *s, int64_t m, int64_t n, float *y, int64_t y_stride,
                             const float *x, int64_t x_stride, td_error *err) {
    (void)dev;
    tandem_status st = need(y && x, "add", "null x or y", err);
    if (st == TANDEM_OK)
        st = td_dev_check_rows("add (y)", m, n, y_stride, err);
    if (st == TANDEM_OK)
        st = td_dev_check_rows("add (x)", m, n, x_stride, err);
    if (st)
        return st;
    op o = {.kind = OP_ADD, .u.norm = {.m = m, .n = n, .out = y, .out_stride = y_stride, .x = x, .x_stride = x_stride}};
    return enqueue(s, &o, err);
}

static tandem_status emu_kv_append(td_device *dev, td_stream *s, const td_dkv *kv, int32_t layer, int64_t n,
                                   const float *k, int64_t k_stride, const float *v, int64_t v_stride,
                                   const int32_t *slots, td_error *err) {
    (void)dev;
    tandem_status st = td_dev_check_dkv(kv, layer, "kv_append", err);
    const int64_t row = st ? 0 : (int64_t)kv->layout.n_kv_heads * kv->layout.head_dim;
    if (st == TANDEM_OK)
        st = need(k && v && slots, "kv_append", "null k, v or slots", err);
    if (st == TANDEM_OK)
        st = td_dev_check_rows("kv_append (k)", n, row, k_stride, err);
    if (st == TANDEM_OK)
        st = td_dev_check_rows("kv_append (v)", n, row, v_stride, err);
    if (st)
        return st;
    op o = {.kind = OP_KV_APPEND,
            .u.kv = {.kv = *kv,
                     .layer = layer,
                     .n = n,
                     .k = k,
                     .k_stride = k_stride,
                     .v = v,
                     .v_stride = v_stride,
                     .slots = slots}};
    return enqueue(s, &o, err);
}

static tandem_status emu_attn(td_device *dev, td_stream *s, const td_dattn *a, bool decode, td_error *err) {
    (void)dev;
    tandem_status st = td_dev_check_attn(a, decode, err);
    if (st == TANDEM_OK && a->n_q_heads / a->kv.layout.n_kv_heads > TD_ATTN_MAX_GROUP)
        st =
            td_fail(err, TANDEM_ERR_UNSUPPORTED, "%s: %d query heads per kv head (at most %d)",
                    decode ? "attn_decode" : "attn_prefill", a->n_q_heads / a->kv.layout.n_kv_heads, TD_ATTN_MAX_GROUP);
    if (st)
        return st;
    op o = {.kind = decode ? OP_ATTN_DECODE : OP_ATTN_PREFILL, .u.attn = *a};
    return enqueue(s, &o, err);
}

static tandem_status emu_attn_decode(td_device *dev, td_stream *s, const td_dattn *a, td_error *err) {
    return emu_attn(dev, s, a, true, err);
}

static tandem_status emu_attn_prefill(td_device *dev, td_stream *s, const td_dattn *a, td_error *err) {
    return emu_attn(dev, s, a, false, err);
}

static tandem_status emu_topk(td_device *dev, td_stream *s, int64_t m, int64_t n, const float *x, int64_t x_stride,
                              int32_t k, int32_t *ids, float *vals, td_error *err) {
    (void)dev;
    tandem_status st = need(x && ids, "topk", "null x or ids", err);
    if (st == TANDEM_OK)
        st = td_dev_check_rows("topk", m, n, x_stride, err);
    if (st == TANDEM_OK && (k < 1 || k > TD_DEV_TOPK_MAX || k > n))
        st = td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "topk: k %d outside [1, min(%d, n %lld)]", k, TD_DEV_TOPK_MAX,
                     (long long)n);
    if (st)
        return st;
    op o = {.kind = OP_TOPK,
            .u.topk = {.m = m, .n = n, .x = x, .x_stride = x_stride, .k = k, .ids = ids, .vals = vals}};
    return enqueue(s, &o, err);
}

/* ---- the device --------------------------------------------------------------------- */

static void emu_close(td_device *dev) {
    emu *d = E(dev);
    for (int i = 0; i < d->n_allocs; i++) /* what the caller forgot */
        munmap(d->allocs[i].p, d->allocs[i].bytes);
    free(d->allocs);
    td_gemm_destroy(d->wgemm);
    pthread_mutex_destroy(&d->lock);
    pthread_mutex_destroy(&d->wlock);
    pthread_cond_destroy(&d->progress);
    free(d);
}

static const td_device_ops emu_ops = {
    .close = emu_close,
    .alloc = emu_alloc,
    .free = emu_free,
    .host_alloc = emu_host_alloc,
    .host_free = emu_host_free,
    .mem_used = emu_mem_used,
    .stream_create = emu_stream_create,
    .stream_destroy = emu_stream_destroy,
    .stream_sync = emu_stream_sync,
    .event_create = emu_event_create,
    .event_destroy = emu_event_destroy,
    .event_record = emu_event_record,
    .stream_wait = emu_stream_wait,
    .event_query = emu_event_query,
    .event_sync = emu_event_sync,
    .event_elapsed = emu_event_elapsed,
    .copy = emu_copy,
    .memset = emu_memset,
    .gemm = emu_gemm,
    .weights_create = emu_weights_create,
    .weights_destroy = emu_weights_destroy,
    .linear = emu_linear,
    .embed = emu_embed,
    .rmsnorm = emu_rmsnorm,
    .rope = emu_rope,
    .swiglu = emu_swiglu,
    .add = emu_add,
    .kv_append = emu_kv_append,
    .attn_decode = emu_attn_decode,
    .attn_prefill = emu_attn_prefill,
    .topk = emu_topk,
};

tandem_status td_emu_open(const td_device_config *c, td_device **out, td_error *err) {
    *out = NULL;
    if (c->emu_mode != TD_EMU_COMPUTE && c->emu_mode != TD_EMU_TIMED)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "emu: unknown mode %d", (int)c->emu_mode);
    const td_gpu_model *gpu = c->gpu ? c->gpu : td_gpu_model_find("H100-PCIe");
    td_isa isa;
    tandem_status st = td_isa_select(&isa, err);
    if (st)
        return st;
    emu *d = calloc(1, sizeof *d);
    if (!d)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "emu: out of memory");
    d->mode = c->emu_mode;
    d->threads = c->emu_threads > 0 ? c->emu_threads : omp_get_max_threads();
    d->isa = isa;
    d->gpu = gpu;
    d->link = c->link;
    pthread_mutex_init(&d->lock, NULL);
    pthread_mutex_init(&d->wlock, NULL);
    pthread_cond_init(&d->progress, NULL);
    d->pub.ops = &emu_ops;
    d->pub.impl = d;
    td_device_info *info = &d->pub.info;
    snprintf(info->backend, sizeof info->backend, "emu");
    if (d->mode == TD_EMU_TIMED)
        snprintf(info->name, sizeof info->name, "emu timed %s%s%s", gpu->name, d->link ? " + " : "",
                 d->link ? d->link->name : "");
    else
        snprintf(info->name, sizeof info->name, "emu compute (%d threads)%s%s", d->threads, d->link ? " + " : "",
                 d->link ? d->link->name : "");
    info->mem_total = c->emu_mem_bytes ? c->emu_mem_bytes : d->mode == TD_EMU_TIMED ? gpu->mem_bytes : 4 * GIB;
    info->timed = d->mode == TD_EMU_TIMED;
    if ((st = td_gemm_create(&d->wgemm, err))) {
        emu_close(&d->pub);
        return st;
    }
    *out = &d->pub;
    return TANDEM_OK;
}
