/* Paged KV cache in host memory.
 *
 * Memory: one pool of fixed-size blocks, mapped once (huge pages where the OS
 * gives them) and first-touched in parallel by the OpenMP team that will read
 * it. A block holds `block_tokens` consecutive tokens of one sequence, for
 * every layer and kv head:
 *
 *   block = [layer][kv_head] { K tile, V tile }
 *
 * Each tile is block_tokens x head_dim elements of the cache dtype (bf16 or
 * f16), stored pair-interleaved so that AVX-512 reads whole cache lines and
 * vdpbf16ps needs no horizontal sums (docs/KV_CACHE.md draws it):
 *
 *   K tile: element (t, d) at ((d/2) * block_tokens + t) * 2 + d%2
 *           -> one 64-byte row holds dims (2p, 2p+1) of 16 consecutive tokens,
 *              so q.k for 16 tokens accumulates in the 16 lanes of a register;
 *   V tile: element (t, d) at ((t/2) * head_dim + d) * 2 + t%2
 *           -> one 64-byte row holds tokens (2s, 2s+1) of 16 consecutive dims,
 *              so p.V for 16 dims accumulates in the 16 lanes of a register.
 *
 * K and V of one (layer, kv_head) are adjacent, so attention streams
 * 2 * block_tokens * head_dim * 2 bytes contiguously per block.
 *
 * Sequences: each live sequence has a block table (block ids in token order)
 * and a length. Growing a sequence allocates blocks; running out returns
 * TANDEM_ERR_KV_FULL and changes nothing, so the caller can queue or preempt.
 *
 * Thread-safety: creating, growing and freeing sequences must be serialized by
 * the caller. td_kv_write / td_kv_read of distinct rows (other sequences,
 * layers or tokens: each element is stored on its own, so two tokens that
 * share a pair-interleaved V row touch distinct memory locations) may run
 * concurrently with each other and with attention over other rows. */
#ifndef TD_CPU_KV_CACHE_H
#define TD_CPU_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TD_KV_DEFAULT_BLOCK_TOKENS 16
#define TD_KV_MAX_BLOCK_TOKENS 1024
#define TD_KV_MAX_HEAD_DIM 256

typedef struct td_kv_cache td_kv_cache;

typedef struct td_kv_config {
    int32_t n_layers;
    int32_t n_kv_heads;
    int32_t head_dim;       /* a multiple of 16, <= TD_KV_MAX_HEAD_DIM */
    int32_t block_tokens;   /* a multiple of 16, <= TD_KV_MAX_BLOCK_TOKENS; 0: 16 */
    td_dtype dtype;         /* TD_DTYPE_BF16 or TD_DTYPE_F16 */
    size_t budget_bytes;    /* the pool holds floor(budget / block_bytes) blocks */
    int32_t max_seqs;       /* live sequences at once */
    int32_t max_seq_tokens; /* tokens one sequence may hold (its table's capacity) */
    int32_t n_threads;      /* threads that first-touch the pool; 0: OpenMP default */
    /* Caller-owned memory of budget_bytes to hold the blocks instead of a
     * mapping of the cache's own: a device's memory (the cache then keeps
     * only the bookkeeping, sequences and block tables, and td_kv_write /
     * td_kv_read / td_kv_append must not be called unless it is host
     * memory), or a view over blocks someone else fills. NULL: map. */
    void *pool;
} td_kv_config;

/* What a kernel needs to find a tile: shape, dtype and strides. */
typedef struct td_kv_layout {
    int32_t n_layers, n_kv_heads, head_dim, block_tokens;
    td_dtype dtype;
    size_t tile_bytes;  /* one K (or V) tile: block_tokens * head_dim * elem */
    size_t block_bytes; /* n_layers * n_kv_heads * 2 * tile_bytes */
} td_kv_layout;

/* Byte offset of the K tile of (layer, kv_head) inside a block; its V tile
 * follows at + tile_bytes. */
static inline size_t td_kv_tile_offset(const td_kv_layout *l, int32_t layer, int32_t kv_head) {
    return ((size_t)layer * (size_t)l->n_kv_heads + (size_t)kv_head) * 2 * l->tile_bytes;
}

/* Element index of (token t, dim d) inside a K tile and inside a V tile. */
static inline size_t td_kv_k_index(int32_t block_tokens, int32_t t, int32_t d) {
    return ((size_t)(d >> 1) * (size_t)block_tokens + (size_t)t) * 2 + (size_t)(d & 1);
}
static inline size_t td_kv_v_index(int32_t head_dim, int32_t t, int32_t d) {
    return ((size_t)(t >> 1) * (size_t)head_dim + (size_t)d) * 2 + (size_t)(t & 1);
}

tandem_status td_kv_create(const td_kv_config *cfg, td_kv_cache **out, td_error *err);
/* Bytes of one block a cache of cfg would have (its layout's block_bytes):
 * to size a pool before making the cache. cfg must be valid. */
size_t td_kv_config_block_bytes(const td_kv_config *cfg);
void td_kv_destroy(td_kv_cache *kv);

const td_kv_layout *td_kv_get_layout(const td_kv_cache *kv);
/* The pool: block b starts at td_kv_pool(kv) + b * block_bytes. */
const uint8_t *td_kv_pool(const td_kv_cache *kv);
int32_t td_kv_n_blocks(const td_kv_cache *kv);
int32_t td_kv_free_blocks(const td_kv_cache *kv);
int32_t td_kv_live_seqs(const td_kv_cache *kv);
/* Bytes actually mapped for the pool (block_bytes * n_blocks, rounded up;
 * block_bytes * n_blocks for a caller's pool). */
size_t td_kv_pool_bytes(const td_kv_cache *kv);

/* A new empty sequence. TANDEM_ERR_LIMIT when max_seqs are live. */
tandem_status td_kv_seq_new(td_kv_cache *kv, int32_t *seq, td_error *err);
/* Frees the sequence and its blocks. TANDEM_ERR_NOT_FOUND if seq is not live
 * (including a second free of the same id). */
tandem_status td_kv_seq_free(td_kv_cache *kv, int32_t seq, td_error *err);
/* Extends the sequence by n tokens, allocating blocks as needed. All or
 * nothing: TANDEM_ERR_KV_FULL (pool exhausted) or TANDEM_ERR_LIMIT
 * (max_seq_tokens) leave the sequence as it was. The new rows are unwritten
 * until td_kv_write fills them. */
tandem_status td_kv_seq_grow(td_kv_cache *kv, int32_t seq, int32_t n, td_error *err);
/* Length in tokens, or -1 if seq is not live. */
int32_t td_kv_seq_len(const td_kv_cache *kv, int32_t seq);
/* The block table (length ceil(len / block_tokens)); NULL if not live. Valid
 * until the sequence next grows or is freed. */
const int32_t *td_kv_seq_blocks(const td_kv_cache *kv, int32_t seq);

/* Writes tokens [pos, pos + n) of one layer. k and v are [n][n_kv_heads]
 * [head_dim] of src_dtype (f32, bf16 or f16), converted (round to nearest
 * even) to the cache dtype. The rows must lie within the sequence's length. */
tandem_status td_kv_write(td_kv_cache *kv, int32_t seq, int32_t layer, int32_t pos, int32_t n, const void *k,
                          const void *v, td_dtype src_dtype, td_error *err);

/* Grows the sequence by one token and writes its k, v for every layer: k and
 * v are [n_layers][n_kv_heads][head_dim] of src_dtype. All or nothing. */
tandem_status td_kv_append(td_kv_cache *kv, int32_t seq, const void *k, const void *v, td_dtype src_dtype,
                           td_error *err);

/* Reads tokens [pos, pos + n) of one layer back as f32, [n][n_kv_heads]
 * [head_dim]; either output may be NULL. */
tandem_status td_kv_read(const td_kv_cache *kv, int32_t seq, int32_t layer, int32_t pos, int32_t n, float *k, float *v,
                         td_error *err);

#ifdef __cplusplus
}
#endif

#endif /* TD_CPU_KV_CACHE_H */
