/* Between the attention driver (attention.c) and its per-ISA kernels.
 *
 * A kernel attends one work item: the query heads of a range of kv heads over
 * one chunk of a sequence's blocks, and leaves the unnormalized online-softmax
 * state; the driver normalizes it or merges chunks with log-sum-exp. Scores
 * are in log2 units: q arrives multiplied by scale * log2(e), so the kernels
 * use exp2.
 *
 * The tiles of consecutive kv heads of one layer are adjacent in a block, so
 * an item reads n_kv * 2 * tile_bytes contiguous bytes per block: one long
 * stream that the prefetchers (and the kernel's own prefetch of the next
 * block) can keep ahead of the arithmetic. */
#ifndef TD_CPU_ATTENTION_IMPL_H
#define TD_CPU_ATTENTION_IMPL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/dtype.h"

typedef struct td_attn_chunk {
    const float *q;       /* [n_kv][group][head_dim], scaled by scale * log2(e) */
    int32_t n_kv;         /* kv heads of the item */
    int32_t group;        /* query heads per kv head, <= TD_ATTN_MAX_GROUP */
    int32_t head_dim;     /* a multiple of 16 */
    int32_t block_tokens; /* a multiple of 16 */
    td_dtype dtype;       /* of the cache: bf16 or f16 */
    const uint8_t *pool;
    size_t block_bytes;
    size_t tile_offset;    /* of the K tile of (layer, first kv head) in a block */
    size_t tile_bytes;     /* the V tile follows the K tile; the next head's K follows */
    const int32_t *blocks; /* the chunk's blocks, in token order */
    int32_t n_tokens;      /* >= 1; every block is full but the last */
    /* out, per query head (n_kv * group of them): running max (log2 units),
     * sum of weights, unnormalized output */
    float *m;      /* [n_kv * group] */
    float *l;      /* [n_kv * group] */
    float *acc;    /* [n_kv * group][head_dim] */
    void *scratch; /* TD_ATTN_KERNEL_SCRATCH(n_kv * group, head_dim) bytes, 64-byte aligned */
} td_attn_chunk;

/* Per-thread scratch a kernel may use: f32 weights of a pass for up to 8
 * heads, then per head 64 bytes (a vector of partial sums) and the query in
 * bf16 pairs. */
#define TD_ATTN_KERNEL_SCRATCH(n_heads, head_dim) (8 * 32 * 4 + (size_t)(n_heads) * (64 + (size_t)(head_dim)*2))

/* Scores (log2 units) may exceed the running reference max by this much
 * before the reference moves: weights stay <= 2^8, far from f32 overflow, and
 * most passes skip the horizontal max and the rescale of the accumulators
 * (the "lazy rescaling" of FlashAttention-3). */
#define TD_ATTN_MAX_SLACK 8.0f

/* Where the 16-token sub-tile starting at token pos (a multiple of 16) of
 * the chunk lies: its block's tiles of the item's first kv head, and its
 * first token in the block. Kv head kh's tiles are kh * 2 * tile_bytes on. */
typedef struct td_attn_at {
    const uint8_t *tiles;
    int32_t t0;
} td_attn_at;

static inline td_attn_at td_attn_locate(const td_attn_chunk *c, int32_t pos) {
    const int32_t T = c->block_tokens;
    return (td_attn_at){c->pool + (size_t)c->blocks[pos / T] * c->block_bytes + c->tile_offset, pos % T};
}

/* K rows of a sub-tile are block_tokens * 2 elements apart; its V pair rows
 * are contiguous (16 * head_dim elements). */
static inline const uint16_t *td_attn_k(const td_attn_chunk *c, td_attn_at a, int32_t kh) {
    return (const uint16_t *)(a.tiles + (size_t)kh * 2 * c->tile_bytes) + (size_t)a.t0 * 2;
}
static inline const uint16_t *td_attn_v(const td_attn_chunk *c, td_attn_at a, int32_t kh) {
    return (const uint16_t *)(a.tiles + (size_t)kh * 2 * c->tile_bytes + c->tile_bytes) + (size_t)a.t0 * c->head_dim;
}

/* The unit of work of the vector kernels: 32 tokens of one kv head, as two
 * 16-token sub-tiles a and b (b may be empty), taken in the order
 * (pos = 0, 32, ...) x (kv head 0 .. n_kv - 1), which walks the contiguous
 * tiles of consecutive heads block by block.
 *
 * While a pass computes it prefetches the next pass's rows: K rows during
 * q.K, V rows during p.V, a few lines per loop iteration. Spreading them
 * matters: the same prefetches issued in one burst overflow the core's
 * miss queues and are lost (measured: 0.65 -> 0.83 of the read bandwidth on
 * the SmolLM2 shape). The next block is anywhere in the pool, so the hardware
 * prefetcher cannot guess it. */
typedef struct td_attn_pass {
    const uint16_t *ka, *va, *kb, *vb;
    int32_t na, nb;              /* valid tokens in a (>= 1) and b (>= 0) */
    const char *pfk[2], *pfv[2]; /* the next pass's sub-tiles (K rows, V rows) */
} td_attn_pass;

/* The block lookups of one position, done once for all its kv heads: this
 * pass's sub-tiles and the next position's (for the last head's prefetch). */
typedef struct td_attn_pos {
    td_attn_at a, b, next_a, next_b;
    int32_t na, nb;
} td_attn_pos;

static inline td_attn_pos td_attn_pos_at(const td_attn_chunk *c, int32_t pos) {
    const int32_t n = c->n_tokens, last = (n - 1) / 16 * 16; /* start of the last sub-tile */
    const int32_t npos = pos + 32 <= last ? pos + 32 : last;
    td_attn_pos p;
    p.na = n - pos < 16 ? n - pos : 16;
    p.nb = pos + 16 <= last ? (n - pos - 16 < 16 ? n - pos - 16 : 16) : 0;
    p.a = td_attn_locate(c, pos);
    p.b = p.nb ? td_attn_locate(c, pos + 16) : p.a;
    p.next_a = td_attn_locate(c, npos);
    p.next_b = td_attn_locate(c, npos + 16 <= last ? npos + 16 : npos);
    return p;
}

static inline td_attn_pass td_attn_pass_at(const td_attn_chunk *c, const td_attn_pos *p, int32_t kh) {
    td_attn_pass ps = {.ka = td_attn_k(c, p->a, kh),
                       .va = td_attn_v(c, p->a, kh),
                       .kb = td_attn_k(c, p->b, kh),
                       .vb = td_attn_v(c, p->b, kh),
                       .na = p->na,
                       .nb = p->nb};
    /* next in order: the next kv head here, or the first of the next position */
    const int32_t nkh = kh + 1 < c->n_kv ? kh + 1 : 0;
    const td_attn_at na = nkh ? p->a : p->next_a, nb = nkh ? p->b : p->next_b;
    ps.pfk[0] = (const char *)td_attn_k(c, na, nkh), ps.pfv[0] = (const char *)td_attn_v(c, na, nkh);
    ps.pfk[1] = (const char *)td_attn_k(c, nb, nkh), ps.pfv[1] = (const char *)td_attn_v(c, nb, nkh);
    return ps;
}

/* Prefetch for the next pass: into L2 (prefetcht1). Into L1 (t0) ties up
 * the core's few L1 miss buffers for the whole DRAM latency (measured 2-4%
 * slower). */
#define TD_ATTN_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 2)

/* Every kernel starts a chunk from the empty state. */
static inline void td_attn_chunk_reset(const td_attn_chunk *c) {
    const int32_t nq = c->n_kv * c->group;
    for (int32_t h = 0; h < nq; h++) {
        c->m[h] = -INFINITY;
        c->l[h] = 0.0f;
    }
    memset(c->acc, 0, (size_t)nq * c->head_dim * sizeof *c->acc);
}

typedef void (*td_attn_kernel)(const td_attn_chunk *c);

void td_attn_kernel_scalar(const td_attn_chunk *c);
void td_attn_kernel_avx2(const td_attn_chunk *c);
void td_attn_kernel_avx512(const td_attn_chunk *c);
void td_attn_kernel_avx512bf16(const td_attn_chunk *c);

/* ---- prefill (td_attn_prefill) ------------------------------------------ */

/* A tile of n_q consecutive query tokens of one sequence (query j at
 * position pos0 + j sees cached tokens [0, pos0 + j]) and the `group` query
 * heads of one kv head, those from head0 on. */
typedef struct td_prefill_tile {
    const float *q;   /* query j, head h at q + j * q_stride + (head0 + h) * head_dim */
    int64_t q_stride; /* floats */
    float q_scale;    /* scale * log2(e) */
    int32_t n_q, group, head_dim, block_tokens, pos0, head0;
    td_dtype dtype; /* of the cache */
    const uint8_t *pool;
    size_t block_bytes, tile_offset, tile_bytes; /* tile_offset: the kv head's K tile in a block */
    const int32_t *blocks;
    void *out; /* query j, head h at out + j * out_stride + (head0 + h) * head_dim elements */
    int64_t out_stride;
    td_dtype out_dtype;
} td_prefill_tile;

/* A tile's workspace in floats: its scaled queries and accumulators (rows
 * x head_dim each), one widened K and V sub-tile, the rows' max and sum. */
#define TD_PREFILL_WS(rows, head_dim)                                                                                  \
    (2 * (size_t)(rows) * (size_t)(head_dim) + 32 * (size_t)(head_dim) + 2 * (size_t)(rows))

/* ws: TD_PREFILL_WS(n_q * group, head_dim) floats, 64-byte aligned. */
void td_attn_prefill_avx512(const td_prefill_tile *t, float *ws);

/* The same tile on the AMX tile unit (bf16 caches, head_dim a multiple of
 * 32; cpu/attention_prefill_amx.c). A thread calls _begin before its tiles (it
 * loads the tile configuration) and _end after them (it hands the tile
 * state back), with no other AMX user in between: oneDNN loads its own. ws:
 * td_prefill_amx_ws(n_q * group, head_dim) floats, 64-byte aligned. */
void td_attn_prefill_amx_begin(void);
void td_attn_prefill_amx(const td_prefill_tile *t, float *ws);
void td_attn_prefill_amx_end(void);
size_t td_prefill_amx_ws(int32_t rows, int32_t head_dim);

#endif /* TD_CPU_ATTENTION_IMPL_H */
