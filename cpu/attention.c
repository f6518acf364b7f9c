#include "cpu/attention.h"

#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "cpu/attention_impl.h"

#define LOG2E 1.4426950408889634f

/* A sequence is cut into chunks of at least this many blocks: below it, the
 * log-sum-exp merge and the lost stream costs more than the imbalance. */
#define MIN_CHUNK_BLOCKS 16
/* Work is cut so that each thread gets about this many items: the largest
 * item then bounds the imbalance to 1/ITEMS_PER_THREAD of a thread's share. */
#define ITEMS_PER_THREAD 8
/* KV bytes per chunk of a long sequence: measured on the 2-core dev VM
 * (bench_attention, batch 1 and 16, ctx 2048 and 8192), ~4 MB streams at
 * full speed for both a 3-head x 64 and an 8-head x 128 model; smaller
 * chunks lose the prefetchers' run, larger ones leave a lone sequence on
 * one thread. */
#define CHUNK_BYTES ((size_t)4 << 20)

/* A sequence's kv heads [kv0, kv0 + n_kv) over blocks [block0, block0 +
 * n_blocks). Items cover as many kv heads as the balance allows, because the
 * tiles of consecutive heads are contiguous in a block. */
typedef struct work_item {
    int32_t seq, kv0, n_kv;
    int32_t block0, n_blocks, n_tokens;
    int64_t partial; /* float offset in a->partials, or -1 when the item covers the whole sequence */
} work_item;

/* The chunks of one (sequence, kv head range), merged after the barrier:
 * n_chunks consecutive items, their partials consecutive from partial0. */
typedef struct merge_group {
    int32_t seq, kv0, n_kv, n_chunks;
    int64_t partial0;
} merge_group;

struct td_attn {
    int n_threads;
    td_isa isa;
    td_attn_kernel kernel;
    /* workspace, grown on demand and kept between calls */
    work_item *items;
    size_t items_cap;
    merge_group *groups;
    size_t groups_cap;
    int32_t *thread_first; /* [n_threads + 1]: item ranges */
    float *partials;       /* per partial slot: m[G], l[G], acc[G][D] */
    size_t partials_cap;   /* floats */
    uint8_t *scratch;      /* per thread */
    size_t scratch_stride, scratch_cap;
    /* prefill */
    td_prefill_tile *tiles;
    size_t tiles_cap;
    td_attn_seq *ents; /* the decode entries of the fallback path */
    size_t ents_cap;
    /* td_attn_time_threads: [kind][thread][start, end] */
    bool timing;
    double *spans;
};

static double span_begin(const td_attn *a) { return a->timing ? td_seconds() : 0; }

static void span_end(td_attn *a, td_attn_span_kind kind, int thread, double t0) {
    if (!a->timing)
        return;
    double *s = a->spans + ((size_t)kind * (size_t)a->n_threads + (size_t)thread) * 2;
    s[0] = t0;
    s[1] = td_seconds();
}

void td_attn_time_threads(td_attn *a, bool on) { a->timing = on; }

void td_attn_clear_spans(td_attn *a) {
    memset(a->spans, 0, (size_t)TD_ATTN_SPAN_KINDS * (size_t)a->n_threads * 2 * sizeof *a->spans);
}

const double *td_attn_spans(const td_attn *a, td_attn_span_kind kind) {
    return a->spans + (size_t)kind * (size_t)a->n_threads * 2;
}

static const td_attn_kernel kernels[TD_ISA_COUNT] = {
    [TD_ISA_SCALAR] = td_attn_kernel_scalar,
#ifdef TD_HAVE_X86_KERNELS
    [TD_ISA_AVX2] = td_attn_kernel_avx2,
    [TD_ISA_AVX512] = td_attn_kernel_avx512,
    [TD_ISA_AVX512BF16] = td_attn_kernel_avx512bf16,
    [TD_ISA_AMX] = td_attn_kernel_avx512,
#endif
};

tandem_status td_attn_create(int n_threads, td_isa isa, td_attn **out, td_error *err) {
    *out = NULL;
    if (n_threads < 0 || n_threads > 4096)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "attention: n_threads = %d is out of range [0, 4096]",
                       n_threads);
    if ((unsigned)isa >= TD_ISA_COUNT || !kernels[isa] || !td_isa_supported(isa))
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "attention: ISA %s is not available on this CPU or build",
                       td_isa_name(isa));
    td_attn *a = calloc(1, sizeof *a);
    if (!a)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "attention: out of memory");
    a->n_threads = n_threads ? n_threads : omp_get_max_threads();
    a->isa = isa;
    a->kernel = kernels[isa];
    a->thread_first = calloc((size_t)a->n_threads + 1, sizeof *a->thread_first);
    a->spans = calloc((size_t)TD_ATTN_SPAN_KINDS * (size_t)a->n_threads * 2, sizeof *a->spans);
    if (!a->thread_first || !a->spans) {
        free(a->thread_first);
        free(a->spans);
        free(a);
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "attention: out of memory");
    }
    *out = a;
    return TANDEM_OK;
}

void td_attn_destroy(td_attn *a) {
    if (!a)
        return;
    free(a->items);
    free(a->groups);
    free(a->thread_first);
    free(a->spans);
    free(a->partials);
    free(a->scratch);
    free(a->tiles);
    free(a->ents);
    free(a);
}

td_isa td_attn_isa(const td_attn *a) { return a->isa; }
int td_attn_threads(const td_attn *a) { return a->n_threads; }

/* Grows *buf to hold n elements of `size` bytes (aligned when align > 0). */
static bool reserve(void **buf, size_t *cap, size_t n, size_t size, size_t align) {
    if (n <= *cap)
        return true;
    size_t want = n > 2 * *cap ? n : 2 * *cap;
    void *p = NULL;
    if (align) {
        size_t bytes = (want * size + align - 1) / align * align;
        p = aligned_alloc(align, bytes);
    } else {
        p = malloc(want * size);
    }
    if (!p)
        return false;
    free(*buf); /* contents are rebuilt on every call: nothing to copy */
    *buf = p;
    *cap = want;
    return true;
}

/* The fields decode and prefill batches share. */
static tandem_status validate_common(const td_kv_cache *kv, int32_t layer, int32_t n_q_heads, td_dtype out_dtype,
                                     float scale, td_error *err) {
    if (!kv)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "attention: no KV cache given");
    const td_kv_layout *l = td_kv_get_layout(kv);
    if (layer < 0 || layer >= l->n_layers)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "attention: layer %d is out of range [0, %d)", layer,
                       l->n_layers);
    if (n_q_heads < l->n_kv_heads || n_q_heads % l->n_kv_heads || n_q_heads / l->n_kv_heads > TD_ATTN_MAX_GROUP)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                       "attention: n_q_heads = %d must be a multiple of n_kv_heads = %d, at most %d times it",
                       n_q_heads, l->n_kv_heads, TD_ATTN_MAX_GROUP);
    if (out_dtype != TD_DTYPE_F32 && out_dtype != TD_DTYPE_BF16)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "attention: output dtype %s is not f32 or bf16",
                       td_dtype_name(out_dtype));
    if (!isfinite(scale))
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "attention: scale is not finite");
    return TANDEM_OK;
}

/* A block table covering n_tokens tokens, every id inside the pool. */
static tandem_status validate_table(const td_kv_cache *kv, const int32_t *blocks, int64_t n_tokens, const char *what,
                                    int32_t i, td_error *err) {
    const td_kv_layout *l = td_kv_get_layout(kv);
    const int32_t n_blocks = td_kv_n_blocks(kv);
    int64_t nb = (n_tokens + l->block_tokens - 1) / l->block_tokens;
    for (int64_t k = 0; k < nb; k++)
        if (blocks[k] < 0 || blocks[k] >= n_blocks)
            return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                           "attention: %s %d: block %lld of its table is %d, outside the pool's [0, %d)", what, i,
                           (long long)k, blocks[k], n_blocks);
    return TANDEM_OK;
}

static tandem_status validate(const td_attn_batch *b, td_error *err) {
    tandem_status st = validate_common(b->kv, b->layer, b->n_q_heads, b->out_dtype, b->scale, err);
    if (st)
        return st;
    if (b->n_seqs < 0 || (b->n_seqs > 0 && !b->seqs))
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "attention: bad sequence list (%d sequences)", b->n_seqs);
    for (int32_t s = 0; s < b->n_seqs; s++) {
        const td_attn_seq *q = &b->seqs[s];
        if (!q->q || !q->out || !q->blocks)
            return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "attention: sequence %d has a NULL q, out or table", s);
        if (q->n_tokens < 1)
            return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "attention: sequence %d has %d tokens (need >= 1)", s,
                           q->n_tokens);
        if ((st = validate_table(b->kv, q->blocks, q->n_tokens, "sequence", s, err)))
            return st;
    }
    return TANDEM_OK;
}

/* How to cut a sequence of nb blocks and H kv heads into work items.
 *
 * Chunks along the sequence change its rounding (their partial softmax
 * sums are merged), so their number depends on the sequence and the team
 * alone: one per CHUNK_BYTES of its KV (a layer's K and V of every kv head,
 * bytes_per_block each block), at least MIN_CHUNK_BLOCKS blocks each, at
 * most max_chunks. A sequence
 * then gets the same bits whatever batch it is in, which the pipeline's
 * sub-batches and the scheduler's batching rely on. Ranges of kv heads
 * change no result, so they follow the batch: a sequence whose chunks are
 * still larger than the target item is also cut into head ranges. */
static void cut(int32_t nb, int32_t H, size_t block_bytes, int64_t target, int32_t max_chunks, int32_t *chunks,
                int32_t *ranges) {
    int64_t by_length = (int64_t)(((size_t)nb * block_bytes + CHUNK_BYTES - 1) / CHUNK_BYTES);
    const int64_t by_blocks = ((int64_t)nb + MIN_CHUNK_BLOCKS - 1) / MIN_CHUNK_BLOCKS;
    by_length = by_length < by_blocks ? by_length : by_blocks;
    *chunks = (int32_t)(by_length < max_chunks ? by_length : max_chunks);
    const int64_t cost = (int64_t)nb * H, pieces = cost / target + (cost % target != 0);
    const int64_t r = (pieces + *chunks - 1) / *chunks;
    *ranges = (int32_t)(r < 1 ? 1 : r < H ? r : H);
}

/* Cuts the batch into work items of about equal cost (block x kv head) and
 * assigns contiguous ranges of them to threads by cost. Returns the number of
 * items, or -1 when out of memory. */
static int64_t plan(td_attn *a, const td_attn_batch *b, int32_t G, int32_t *n_groups, int64_t *partial_floats) {
    const td_kv_layout *l = td_kv_get_layout(b->kv);
    const int32_t T = l->block_tokens, H = l->n_kv_heads, D = l->head_dim;
    int64_t total = 0;
    for (int32_t s = 0; s < b->n_seqs; s++)
        total += (int64_t)((b->seqs[s].n_tokens + T - 1) / T) * H;
    /* target cost of an item; one thread needs no cutting at all */
    int64_t target = INT64_MAX;
    if (a->n_threads > 1) {
        int64_t parts = (int64_t)a->n_threads * ITEMS_PER_THREAD;
        target = (total + parts - 1) / parts;
        if (target < MIN_CHUNK_BLOCKS)
            target = MIN_CHUNK_BLOCKS;
    }

    /* up to four chunks per thread: a long sequence alone spreads over the team */
    const int32_t max_chunks = 4 * a->n_threads;
    const size_t block_bytes = 2 * (size_t)H * l->tile_bytes; /* one layer's K and V of every kv head */
    int64_t n_items = 0, n_merge = 0;
    for (int32_t s = 0; s < b->n_seqs; s++) {
        int32_t nb = (b->seqs[s].n_tokens + T - 1) / T;
        int32_t chunks, ranges;
        cut(nb, H, block_bytes, target, max_chunks, &chunks, &ranges);
        n_items += (int64_t)chunks * ranges;
        n_merge += chunks > 1 ? ranges : 0;
    }
    if (!reserve((void **)&a->items, &a->items_cap, (size_t)n_items, sizeof *a->items, 0) ||
        !reserve((void **)&a->groups, &a->groups_cap, (size_t)n_merge + 1, sizeof *a->groups, 0))
        return -1;

    int64_t it = 0, partial = 0;
    int32_t g = 0;
    for (int32_t s = 0; s < b->n_seqs; s++) {
        const int32_t n_tok = b->seqs[s].n_tokens, nb = (n_tok + T - 1) / T;
        int32_t chunks, ranges;
        cut(nb, H, block_bytes, target, max_chunks, &chunks, &ranges);
        const int32_t per_chunk = (nb + chunks - 1) / chunks, per_range = (H + ranges - 1) / ranges;
        for (int32_t kv0 = 0; kv0 < H; kv0 += per_range) {
            const int32_t n_kv = H - kv0 < per_range ? H - kv0 : per_range;
            if (chunks > 1)
                a->groups[g++] = (merge_group){.seq = s, .kv0 = kv0, .n_kv = n_kv, .n_chunks = 0, .partial0 = partial};
            for (int32_t b0 = 0; b0 < nb; b0 += per_chunk) {
                const int32_t n = nb - b0 < per_chunk ? nb - b0 : per_chunk;
                const int32_t end_tok = (b0 + n) * T < n_tok ? (b0 + n) * T : n_tok;
                a->items[it++] = (work_item){.seq = s,
                                             .kv0 = kv0,
                                             .n_kv = n_kv,
                                             .block0 = b0,
                                             .n_blocks = n,
                                             .n_tokens = end_tok - b0 * T,
                                             .partial = chunks > 1 ? partial : -1};
                if (chunks > 1) {
                    partial += (int64_t)n_kv * G * (D + 2);
                    a->groups[g - 1].n_chunks++;
                }
            }
        }
    }

    /* contiguous ranges of about equal cost; an item costs its blocks times
     * its heads, plus a fixed overhead (loading q, writing out) */
    int64_t cost = 0;
    for (int64_t i = 0; i < it; i++)
        cost += (int64_t)a->items[i].n_blocks * a->items[i].n_kv + 1;
    int32_t t = 0;
    int64_t acc = 0;
    a->thread_first[0] = 0;
    for (int64_t i = 0; i < it && t < a->n_threads - 1; i++) {
        acc += (int64_t)a->items[i].n_blocks * a->items[i].n_kv + 1;
        while (t < a->n_threads - 1 && acc * a->n_threads >= cost * (t + 1))
            a->thread_first[++t] = i + 1;
    }
    while (t < a->n_threads)
        a->thread_first[++t] = it;
    *n_groups = g;
    *partial_floats = partial;
    return it;
}

static void store_row(void *out, td_dtype dt, size_t at, const float *acc, float inv, int32_t n) {
    if (dt == TD_DTYPE_F32) {
        float *o = (float *)out + at;
        for (int32_t i = 0; i < n; i++)
            o[i] = acc[i] * inv;
    } else {
        uint16_t *o = (uint16_t *)out + at;
        for (int32_t i = 0; i < n; i++)
            o[i] = td_f32_to_bf16(acc[i] * inv);
    }
}

typedef struct call_ctx {
    td_attn *a;
    const td_attn_batch *b;
    const td_kv_layout *l;
    int32_t G;
    size_t kernel_scratch; /* offset of the kernel's scratch in a thread's scratch */
} call_ctx;

static void run_item(const call_ctx *x, const work_item *w, uint8_t *scratch) {
    const td_kv_layout *l = x->l;
    const int32_t G = x->G, D = l->head_dim, nq = w->n_kv * G;
    const td_attn_seq *s = &x->b->seqs[w->seq];
    /* thread scratch: scaled q [nq][D] | m, l, acc of an uncut item | kernel scratch */
    float *q = (float *)scratch;
    float *m = w->partial >= 0 ? x->a->partials + w->partial : q + (size_t)nq * D;
    float *lsum = m + nq, *acc = lsum + nq;

    const float qs = x->b->scale * LOG2E;
    const float *qsrc = s->q + (size_t)w->kv0 * G * D;
    for (size_t i = 0; i < (size_t)nq * D; i++)
        q[i] = qsrc[i] * qs;

    td_attn_chunk c = {
        .q = q,
        .n_kv = w->n_kv,
        .group = G,
        .head_dim = D,
        .block_tokens = l->block_tokens,
        .dtype = l->dtype,
        .pool = td_kv_pool(x->b->kv),
        .block_bytes = l->block_bytes,
        .tile_offset = td_kv_tile_offset(l, x->b->layer, w->kv0),
        .tile_bytes = l->tile_bytes,
        .blocks = s->blocks + w->block0,
        .n_tokens = w->n_tokens,
        .m = m,
        .l = lsum,
        .acc = acc,
        .scratch = scratch + x->kernel_scratch,
    };
    x->a->kernel(&c);

    if (w->partial < 0)
        for (int32_t h = 0; h < nq; h++)
            store_row(s->out, x->b->out_dtype, ((size_t)w->kv0 * G + h) * D, acc + (size_t)h * D, 1.0f / lsum[h], D);
}

/* out = sum_c acc_c 2^(m_c - M) / sum_c l_c 2^(m_c - M), M = max_c m_c */
static void merge(const call_ctx *x, const merge_group *g, float *tmp) {
    const int32_t D = x->l->head_dim, nq = g->n_kv * x->G;
    const size_t stride = (size_t)nq * (D + 2); /* floats per chunk's partial */
    const td_attn_seq *s = &x->b->seqs[g->seq];
    const float *base = x->a->partials + g->partial0;
    for (int32_t h = 0; h < nq; h++) {
        float M = -INFINITY;
        for (int32_t c = 0; c < g->n_chunks; c++)
            M = fmaxf(M, base[c * stride + h]);
        float L = 0;
        memset(tmp, 0, (size_t)D * sizeof *tmp);
        for (int32_t c = 0; c < g->n_chunks; c++) {
            const float *p = base + c * stride;
            float w = exp2f(p[h] - M);
            L += p[nq + h] * w;
            const float *acc = p + 2 * nq + (size_t)h * D;
            for (int32_t d = 0; d < D; d++)
                tmp[d] += acc[d] * w;
        }
        store_row(s->out, x->b->out_dtype, ((size_t)g->kv0 * x->G + h) * D, tmp, 1.0f / L, D);
    }
}

static tandem_status decode(td_attn *a, const td_attn_batch *b, td_attn_span_kind kind, td_error *err) {
    tandem_status st = validate(b, err);
    if (st || b->n_seqs == 0)
        return st;
    const td_kv_layout *l = td_kv_get_layout(b->kv);
    call_ctx x = {.a = a, .b = b, .l = l, .G = b->n_q_heads / l->n_kv_heads};

    int32_t n_groups = 0;
    int64_t partial_floats = 0;
    int64_t n_items = plan(a, b, x.G, &n_groups, &partial_floats);
    /* a thread's scratch, sized for an item of every kv head */
    const size_t nq = (size_t)b->n_q_heads, D = (size_t)l->head_dim;
    x.kernel_scratch = (nq * (2 * D + 2) * sizeof(float) + 63) / 64 * 64;
    size_t stride = (x.kernel_scratch + TD_ATTN_KERNEL_SCRATCH(nq, D) + 63) / 64 * 64;
    if (n_items < 0 ||
        !reserve((void **)&a->partials, &a->partials_cap, (size_t)partial_floats + 1, sizeof(float), 64) ||
        !reserve((void **)&a->scratch, &a->scratch_cap, stride * (size_t)a->n_threads, 1, 64))
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "attention: out of memory for the workspace of %d sequences",
                       b->n_seqs);
    a->scratch_stride = stride;
    if (a->n_threads == 1) {
        const double t0 = span_begin(a);
        for (int64_t i = 0; i < n_items; i++)
            run_item(&x, &a->items[i], a->scratch);
        for (int32_t g = 0; g < n_groups; g++)
            merge(&x, &a->groups[g], (float *)a->scratch);
        span_end(a, kind, 0, t0);
        return TANDEM_OK;
    }

#pragma omp parallel num_threads(a->n_threads)
    {
        /* the runtime may give fewer threads than asked (nesting, limits):
         * then each thread takes several of the planned ranges */
        const int me = omp_get_thread_num(), team = omp_get_num_threads();
        const double t0 = span_begin(a);
        uint8_t *scratch = a->scratch + (size_t)me * stride;
        for (int r = me; r < a->n_threads; r += team)
            for (int32_t i = a->thread_first[r]; i < a->thread_first[r + 1]; i++)
                run_item(&x, &a->items[i], scratch);
#pragma omp barrier
#pragma omp for schedule(dynamic, 1) nowait
        for (int32_t g = 0; g < n_groups; g++)
            merge(&x, &a->groups[g], (float *)scratch);
        span_end(a, kind, me, t0);
    }
    return TANDEM_OK;
}

tandem_status td_attn_decode(td_attn *a, const td_attn_batch *b, td_error *err) {
    return decode(a, b, TD_ATTN_SPAN_DECODE, err);
}

/* ---- prefill ---------------------------------------------------------- */

static tandem_status validate_prefill(const td_attn_prefill_batch *b, td_error *err) {
    tandem_status st = validate_common(b->kv, b->layer, b->n_q_heads, b->out_dtype, b->scale, err);
    if (st)
        return st;
    if (b->n_runs < 0 || (b->n_runs > 0 && !b->runs))
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "attention: bad run list (%d runs)", b->n_runs);
    const td_kv_layout *l = td_kv_get_layout(b->kv);
    for (int32_t i = 0; i < b->n_runs; i++) {
        const td_attn_run *r = &b->runs[i];
        if (!r->q || !r->out || !r->blocks)
            return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "attention: run %d has a NULL q, out or table", i);
        if (r->n < 1 || r->pos < 0 || (int64_t)r->pos + r->n > INT32_MAX)
            return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "attention: run %d has %d queries at position %d", i, r->n,
                           r->pos);
        const int64_t row = (int64_t)b->n_q_heads * l->head_dim;
        if (r->n > 1 && (r->q_stride < row || r->out_stride < row))
            return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                           "attention: run %d: strides %lld / %lld overlap its %lld-value query rows", i,
                           (long long)r->q_stride, (long long)r->out_stride, (long long)row);
        if ((st = validate_table(b->kv, r->blocks, (int64_t)r->pos + r->n, "run", i, err)))
            return st;
    }
    return TANDEM_OK;
}

/* The reference path: one decode entry per query. */
static tandem_status prefill_by_decode(td_attn *a, const td_attn_prefill_batch *b, td_error *err) {
    int64_t n = 0;
    for (int32_t i = 0; i < b->n_runs; i++)
        n += b->runs[i].n;
    if (n > INT32_MAX || !reserve((void **)&a->ents, &a->ents_cap, (size_t)n, sizeof *a->ents, 0))
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "attention: out of memory for %lld queries", (long long)n);
    const size_t esz = td_dtype_size(b->out_dtype);
    int64_t k = 0;
    for (int32_t i = 0; i < b->n_runs; i++) {
        const td_attn_run *r = &b->runs[i];
        for (int32_t j = 0; j < r->n; j++)
            a->ents[k++] = (td_attn_seq){.q = r->q + (size_t)j * (size_t)r->q_stride,
                                         .blocks = r->blocks,
                                         .n_tokens = r->pos + j + 1,
                                         .out = (char *)r->out + (size_t)j * (size_t)r->out_stride * esz};
    }
    td_attn_batch d = {.kv = b->kv,
                       .layer = b->layer,
                       .n_q_heads = b->n_q_heads,
                       .scale = b->scale,
                       .out_dtype = b->out_dtype,
                       .seqs = a->ents,
                       .n_seqs = (int32_t)n};
    return decode(a, &d, TD_ATTN_SPAN_PREFILL, err);
}

/* Query tokens per tile: up to 16, and at most 64 rows (queries x heads of
 * the group) so that a tile's accumulators stay within L1/L2. */
static int32_t prefill_tile_queries(int32_t G) { return G >= 64 ? 1 : (64 / G < 16 ? 64 / G : 16); }

#ifdef TD_HAVE_X86_KERNELS
static tandem_status prefill_tiles(td_attn *a, const td_attn_prefill_batch *b, td_error *err) {
    const td_kv_layout *l = td_kv_get_layout(b->kv);
    const int32_t H = l->n_kv_heads, D = l->head_dim, G = b->n_q_heads / H, QT = prefill_tile_queries(G);
    int64_t n_tiles = 0;
    for (int32_t i = 0; i < b->n_runs; i++)
        n_tiles += (int64_t)H * ((b->runs[i].n + QT - 1) / QT);
    const bool amx = a->isa == TD_ISA_AMX && l->dtype == TD_DTYPE_BF16 && D % 32 == 0;
    const size_t ws_floats = amx ? td_prefill_amx_ws(QT * G, D) : TD_PREFILL_WS((size_t)QT * (size_t)G, D);
    const size_t stride = (ws_floats * sizeof(float) + 63) / 64 * 64;
    if (n_tiles > INT32_MAX || !reserve((void **)&a->tiles, &a->tiles_cap, (size_t)n_tiles, sizeof *a->tiles, 0) ||
        !reserve((void **)&a->scratch, &a->scratch_cap, stride * (size_t)a->n_threads, 1, 64))
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "attention: out of memory for %lld prefill tiles",
                       (long long)n_tiles);
    /* Tiles in decreasing cost (later queries see more tokens), so that the
     * dynamic schedule ends with small ones and the threads finish together. */
    const size_t esz = td_dtype_size(b->out_dtype);
    int64_t k = 0;
    for (int32_t i = 0; i < b->n_runs; i++) {
        const td_attn_run *r = &b->runs[i];
        for (int32_t j0 = (r->n - 1) / QT * QT; j0 >= 0; j0 -= QT)
            for (int32_t g = 0; g < H; g++)
                a->tiles[k++] = (td_prefill_tile){
                    .q = r->q + (size_t)j0 * (size_t)r->q_stride,
                    .q_stride = r->q_stride,
                    .q_scale = b->scale * LOG2E,
                    .n_q = r->n - j0 < QT ? r->n - j0 : QT,
                    .group = G,
                    .head_dim = D,
                    .block_tokens = l->block_tokens,
                    .pos0 = r->pos + j0,
                    .dtype = l->dtype,
                    .pool = td_kv_pool(b->kv),
                    .block_bytes = l->block_bytes,
                    .tile_offset = td_kv_tile_offset(l, b->layer, g),
                    .tile_bytes = l->tile_bytes,
                    .blocks = r->blocks,
                    .head0 = g * G,
                    .out = (char *)r->out + (size_t)j0 * (size_t)r->out_stride * esz,
                    .out_stride = r->out_stride,
                    .out_dtype = b->out_dtype,
                };
    }
#pragma omp parallel num_threads(a->n_threads)
    {
        const int me = omp_get_thread_num();
        const double t0 = span_begin(a);
        float *ws = (float *)(a->scratch + (size_t)me * stride);
        void (*kernel)(const td_prefill_tile *, float *) = amx ? td_attn_prefill_amx : td_attn_prefill_avx512;
        if (amx)
            td_attn_prefill_amx_begin();
#pragma omp for schedule(dynamic, 1) nowait
        for (int64_t i = 0; i < n_tiles; i++)
            kernel(&a->tiles[i], ws);
        if (amx)
            td_attn_prefill_amx_end();
        span_end(a, TD_ATTN_SPAN_PREFILL, me, t0);
    }
    return TANDEM_OK;
}
#endif

tandem_status td_attn_prefill(td_attn *a, const td_attn_prefill_batch *b, td_error *err) {
    tandem_status st = validate_prefill(b, err);
    if (st || b->n_runs == 0)
        return st;
#ifdef TD_HAVE_X86_KERNELS
    if (a->isa >= TD_ISA_AVX512)
        return prefill_tiles(a, b, err);
#endif
    return prefill_by_decode(a, b, err);
}
