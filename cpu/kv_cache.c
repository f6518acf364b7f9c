#include "cpu/kv_cache.h"

#include "cpu/hostmem.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* A sequence id is slot | generation << SLOT_BITS: a stale id (freed, then the
 * slot reused) does not match the slot's current generation. */
#define SLOT_BITS 20
#define MAX_SEQS (1 << SLOT_BITS)
#define GEN_MASK 0x7ff /* 11 bits: ids stay non-negative int32 */

typedef struct seq_slot {
    int32_t *blocks; /* table, capacity `cap` */
    int32_t n_blocks, cap;
    int32_t len;
    int32_t gen;
    bool live;
} seq_slot;

struct td_kv_cache {
    td_kv_layout layout;
    uint8_t *pool;
    bool external;     /* pool is the caller's (td_kv_config.pool) */
    size_t pool_bytes; /* n_blocks * block_bytes */
    int32_t n_blocks;
    int32_t *free_blocks; /* stack */
    int32_t n_free;
    seq_slot *slots;
    int32_t *free_slots; /* stack */
    int32_t n_free_slots;
    int32_t max_seqs;
    int32_t max_seq_tokens;
    int32_t max_table; /* blocks one sequence may hold */
};

static tandem_status check_range(td_error *err, const char *field, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "kv config: %s = %lld is out of range [%lld, %lld]", field,
                       (long long)v, (long long)lo, (long long)hi);
    return TANDEM_OK;
}

static tandem_status validate(const td_kv_config *c, int32_t block_tokens, td_error *err) {
    tandem_status st;
    if ((st = check_range(err, "n_layers", c->n_layers, 1, 4096)) ||
        (st = check_range(err, "n_kv_heads", c->n_kv_heads, 1, 1024)) ||
        (st = check_range(err, "head_dim", c->head_dim, 16, TD_KV_MAX_HEAD_DIM)) ||
        (st = check_range(err, "block_tokens", block_tokens, 16, TD_KV_MAX_BLOCK_TOKENS)) ||
        (st = check_range(err, "max_seqs", c->max_seqs, 1, MAX_SEQS)) ||
        (st = check_range(err, "max_seq_tokens", c->max_seq_tokens, 1, INT32_MAX / 2)) ||
        (st = check_range(err, "n_threads", c->n_threads, 0, 4096)))
        return st;
    if (c->head_dim % 16)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "kv config: head_dim = %d is not a multiple of 16",
                       c->head_dim);
    if (block_tokens % 16)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "kv config: block_tokens = %d is not a multiple of 16",
                       block_tokens);
    if (c->dtype == TD_DTYPE_I8)
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "kv config: dtype i8 is reserved and not implemented yet");
    if (c->dtype != TD_DTYPE_BF16 && c->dtype != TD_DTYPE_F16)
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "kv config: dtype %s is not a KV cache type (bf16 or f16)",
                       td_dtype_name(c->dtype));
    return TANDEM_OK;
}

size_t td_kv_config_block_bytes(const td_kv_config *cfg) {
    const size_t block_tokens = cfg->block_tokens ? (size_t)cfg->block_tokens : TD_KV_DEFAULT_BLOCK_TOKENS;
    return (size_t)cfg->n_layers * (size_t)cfg->n_kv_heads * 2 * block_tokens * (size_t)cfg->head_dim *
           td_dtype_size(cfg->dtype);
}

tandem_status td_kv_create(const td_kv_config *cfg, td_kv_cache **out, td_error *err) {
    *out = NULL;
    int32_t block_tokens = cfg->block_tokens ? cfg->block_tokens : TD_KV_DEFAULT_BLOCK_TOKENS;
    tandem_status st = validate(cfg, block_tokens, err);
    if (st)
        return st;

    td_kv_layout l = {
        .n_layers = cfg->n_layers,
        .n_kv_heads = cfg->n_kv_heads,
        .head_dim = cfg->head_dim,
        .block_tokens = block_tokens,
        .dtype = cfg->dtype,
        .tile_bytes = (size_t)block_tokens * (size_t)cfg->head_dim * td_dtype_size(cfg->dtype),
    };
    /* n_layers * n_kv_heads * 2 * tile <= 4096 * 1024 * 2 * 512 KiB = 4 TiB: no overflow in size_t */
    l.block_bytes = td_kv_config_block_bytes(cfg);
    size_t n_blocks = cfg->budget_bytes / l.block_bytes;
    if (n_blocks == 0)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                       "kv config: budget_bytes = %zu is smaller than one block (%zu bytes: %d layers x %d kv heads x "
                       "%d tokens x %d dims x K,V x %s)",
                       cfg->budget_bytes, l.block_bytes, l.n_layers, l.n_kv_heads, l.block_tokens, l.head_dim,
                       td_dtype_name(l.dtype));
    if (n_blocks > INT32_MAX)
        n_blocks = INT32_MAX;

    td_kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "kv: out of memory for the cache descriptor");
    kv->layout = l;
    kv->n_blocks = (int32_t)n_blocks;
    kv->max_seqs = cfg->max_seqs;
    kv->max_seq_tokens = cfg->max_seq_tokens;
    kv->max_table = (int32_t)(((int64_t)cfg->max_seq_tokens + block_tokens - 1) / block_tokens);
    kv->free_blocks = malloc(n_blocks * sizeof *kv->free_blocks);
    kv->slots = calloc((size_t)cfg->max_seqs, sizeof *kv->slots);
    kv->free_slots = malloc((size_t)cfg->max_seqs * sizeof *kv->free_slots);
    if (!kv->free_blocks || !kv->slots || !kv->free_slots) {
        st = td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "kv: out of memory for metadata of %zu blocks and %d sequences",
                     n_blocks, cfg->max_seqs);
        goto fail;
    }
    kv->pool_bytes = n_blocks * l.block_bytes;
    kv->external = cfg->pool != NULL;
    kv->pool = kv->external ? cfg->pool : td_host_map(kv->pool_bytes, cfg->n_threads);
    if (!kv->pool) {
        st = td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "kv: cannot map a pool of %zu bytes (%zu blocks of %zu bytes)",
                     kv->pool_bytes, n_blocks, l.block_bytes);
        goto fail;
    }
    /* Pop order hands out blocks 0, 1, 2, ...: a fresh pool is read in address order. */
    for (int32_t i = 0; i < kv->n_blocks; i++)
        kv->free_blocks[i] = kv->n_blocks - 1 - i;
    kv->n_free = kv->n_blocks;
    for (int32_t i = 0; i < kv->max_seqs; i++)
        kv->free_slots[i] = kv->max_seqs - 1 - i;
    kv->n_free_slots = kv->max_seqs;
    *out = kv;
    return TANDEM_OK;

fail:
    td_kv_destroy(kv);
    return st;
}

void td_kv_destroy(td_kv_cache *kv) {
    if (!kv)
        return;
    if (kv->slots)
        for (int32_t i = 0; i < kv->max_seqs; i++)
            free(kv->slots[i].blocks);
    if (kv->pool && !kv->external)
        td_host_unmap(kv->pool, kv->pool_bytes);
    free(kv->slots);
    free(kv->free_slots);
    free(kv->free_blocks);
    free(kv);
}

const td_kv_layout *td_kv_get_layout(const td_kv_cache *kv) { return &kv->layout; }
const uint8_t *td_kv_pool(const td_kv_cache *kv) { return kv->pool; }
int32_t td_kv_n_blocks(const td_kv_cache *kv) { return kv->n_blocks; }
int32_t td_kv_free_blocks(const td_kv_cache *kv) { return kv->n_free; }
int32_t td_kv_live_seqs(const td_kv_cache *kv) { return kv->max_seqs - kv->n_free_slots; }
size_t td_kv_pool_bytes(const td_kv_cache *kv) {
    return kv->external ? kv->pool_bytes : td_host_map_size(kv->pool_bytes);
}

/* The live slot an id names, or NULL. */
static seq_slot *lookup(const td_kv_cache *kv, int32_t seq) {
    if (seq < 0)
        return NULL;
    int32_t i = seq & (MAX_SEQS - 1);
    if (i >= kv->max_seqs)
        return NULL;
    seq_slot *s = &kv->slots[i];
    return s->live && s->gen == (seq >> SLOT_BITS) ? s : NULL;
}

static tandem_status not_live(td_error *err, int32_t seq) {
    return td_fail(err, TANDEM_ERR_NOT_FOUND, "kv: sequence %d is not live (never created, or already freed)", seq);
}

tandem_status td_kv_seq_new(td_kv_cache *kv, int32_t *seq, td_error *err) {
    if (kv->n_free_slots == 0)
        return td_fail(err, TANDEM_ERR_LIMIT, "kv: all %d sequence slots are live (max_seqs)", kv->max_seqs);
    int32_t i = kv->free_slots[--kv->n_free_slots];
    seq_slot *s = &kv->slots[i];
    s->live = true;
    s->len = 0;
    s->n_blocks = 0;
    *seq = (s->gen << SLOT_BITS) | i;
    return TANDEM_OK;
}

tandem_status td_kv_seq_free(td_kv_cache *kv, int32_t seq, td_error *err) {
    seq_slot *s = lookup(kv, seq);
    if (!s)
        return not_live(err, seq);
    for (int32_t b = s->n_blocks - 1; b >= 0; b--)
        kv->free_blocks[kv->n_free++] = s->blocks[b];
    s->n_blocks = 0;
    s->len = 0;
    s->live = false;
    s->gen = (s->gen + 1) & GEN_MASK;
    kv->free_slots[kv->n_free_slots++] = (int32_t)(s - kv->slots);
    return TANDEM_OK;
}

tandem_status td_kv_seq_grow(td_kv_cache *kv, int32_t seq, int32_t n, td_error *err) {
    seq_slot *s = lookup(kv, seq);
    if (!s)
        return not_live(err, seq);
    if (n < 0)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "kv: cannot grow sequence %d by %d tokens", seq, n);
    int64_t T = kv->layout.block_tokens;
    int64_t new_len = (int64_t)s->len + n;
    int64_t need = (new_len + T - 1) / T;
    if (new_len > kv->max_seq_tokens)
        return td_fail(err, TANDEM_ERR_LIMIT, "kv: sequence %d would hold %lld tokens, more than max_seq_tokens = %d",
                       seq, (long long)new_len, kv->max_seq_tokens);
    int32_t extra = (int32_t)(need - s->n_blocks);
    if (extra > kv->n_free)
        return td_fail(err, TANDEM_ERR_KV_FULL, "kv: sequence %d needs %d more blocks, %d of %d are free", seq, extra,
                       kv->n_free, kv->n_blocks);
    if (need > s->cap) {
        int64_t cap = s->cap ? s->cap : 8;
        while (cap < need)
            cap *= 2;
        if (cap > kv->max_table)
            cap = kv->max_table;
        int32_t *t = realloc(s->blocks, (size_t)cap * sizeof *t);
        if (!t)
            return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "kv: out of memory for sequence %d's table", seq);
        s->blocks = t;
        s->cap = (int32_t)cap;
    }
    for (int32_t i = 0; i < extra; i++)
        s->blocks[s->n_blocks++] = kv->free_blocks[--kv->n_free];
    s->len = (int32_t)new_len;
    return TANDEM_OK;
}

int32_t td_kv_seq_len(const td_kv_cache *kv, int32_t seq) {
    const seq_slot *s = lookup(kv, seq);
    return s ? s->len : -1;
}

const int32_t *td_kv_seq_blocks(const td_kv_cache *kv, int32_t seq) {
    const seq_slot *s = lookup(kv, seq);
    return s ? s->blocks : NULL;
}

static float load_elem(const void *src, td_dtype t, size_t i) {
    switch (t) {
    case TD_DTYPE_F32: return ((const float *)src)[i];
    case TD_DTYPE_BF16: return td_bf16_to_f32(((const uint16_t *)src)[i]);
    default: return td_f16_to_f32(((const uint16_t *)src)[i]);
    }
}

static tandem_status check_rows(const td_kv_cache *kv, int32_t seq, int32_t layer, int32_t pos, int32_t n,
                                td_error *err) {
    const seq_slot *s = lookup(kv, seq);
    if (!s)
        return not_live(err, seq);
    if (layer < 0 || layer >= kv->layout.n_layers)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "kv: layer %d is out of range [0, %d)", layer,
                       kv->layout.n_layers);
    if (pos < 0 || n < 0 || (int64_t)pos + n > s->len)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                       "kv: rows [%d, %lld) are outside sequence %d's %d tokens (grow it first)", pos,
                       (long long)pos + n, seq, s->len);
    return TANDEM_OK;
}

/* Scatters rows into the tiles; arguments already checked. */
static void write_rows(td_kv_cache *kv, const seq_slot *s, int32_t layer, int32_t pos, int32_t n, const void *k,
                       const void *v, td_dtype src) {
    const td_kv_layout *l = &kv->layout;
    const int32_t T = l->block_tokens, H = l->n_kv_heads, D = l->head_dim;
    const bool bf16 = l->dtype == TD_DTYPE_BF16;
    if (bf16 && src == TD_DTYPE_F32) {
        /* the forward's case, once per token and layer: no per-element
         * dispatch, and a K pair (dims 2p, 2p+1 of a token) is one 32-bit
         * store (td_kv_k_index: adjacent) */
        for (int32_t i = 0; i < n; i++) {
            const int32_t tok = pos + i, t = tok % T;
            uint8_t *block = kv->pool + (size_t)s->blocks[tok / T] * l->block_bytes;
            for (int32_t h = 0; h < H; h++) {
                uint16_t *kt = (uint16_t *)(block + td_kv_tile_offset(l, layer, h));
                uint16_t *vt = (uint16_t *)((uint8_t *)kt + l->tile_bytes) + td_kv_v_index(D, t, 0);
                uint32_t *kp = (uint32_t *)kt + t;
                const float *kr = (const float *)k + ((size_t)i * H + h) * D,
                            *vr = (const float *)v + ((size_t)i * H + h) * D;
                for (int32_t d = 0; d < D; d += 2)
                    kp[(size_t)(d >> 1) * T] = td_f32_to_bf16(kr[d]) | (uint32_t)td_f32_to_bf16(kr[d + 1]) << 16;
                for (int32_t d = 0; d < D; d++)
                    vt[(size_t)d * 2] = td_f32_to_bf16(vr[d]);
            }
        }
        return;
    }
    for (int32_t i = 0; i < n; i++) {
        int32_t tok = pos + i, t = tok % T;
        uint8_t *block = kv->pool + (size_t)s->blocks[tok / T] * l->block_bytes;
        for (int32_t h = 0; h < H; h++) {
            uint16_t *kt = (uint16_t *)(block + td_kv_tile_offset(l, layer, h));
            uint16_t *vt = (uint16_t *)((uint8_t *)kt + l->tile_bytes);
            size_t row = ((size_t)i * H + h) * D;
            for (int32_t d = 0; d < D; d++) {
                float kf = load_elem(k, src, row + d), vf = load_elem(v, src, row + d);
                kt[td_kv_k_index(T, t, d)] = bf16 ? td_f32_to_bf16(kf) : td_f32_to_f16(kf);
                vt[td_kv_v_index(D, t, d)] = bf16 ? td_f32_to_bf16(vf) : td_f32_to_f16(vf);
            }
        }
    }
}

static tandem_status check_src(td_dtype src, const void *k, const void *v, int32_t n, td_error *err) {
    if (src != TD_DTYPE_F32 && src != TD_DTYPE_BF16 && src != TD_DTYPE_F16)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "kv: cannot write from dtype %s (f32, bf16 or f16)",
                       td_dtype_name(src));
    if (n > 0 && (!k || !v))
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "kv: k and v must not be NULL");
    return TANDEM_OK;
}

tandem_status td_kv_write(td_kv_cache *kv, int32_t seq, int32_t layer, int32_t pos, int32_t n, const void *k,
                          const void *v, td_dtype src_dtype, td_error *err) {
    tandem_status st = check_rows(kv, seq, layer, pos, n, err);
    if (!st)
        st = check_src(src_dtype, k, v, n, err);
    if (st)
        return st;
    write_rows(kv, lookup(kv, seq), layer, pos, n, k, v, src_dtype);
    return TANDEM_OK;
}

tandem_status td_kv_append(td_kv_cache *kv, int32_t seq, const void *k, const void *v, td_dtype src_dtype,
                           td_error *err) {
    tandem_status st = check_src(src_dtype, k, v, 1, err);
    if (!st)
        st = td_kv_seq_grow(kv, seq, 1, err);
    if (st)
        return st;
    const seq_slot *s = lookup(kv, seq);
    size_t layer_bytes = (size_t)kv->layout.n_kv_heads * kv->layout.head_dim * td_dtype_size(src_dtype);
    for (int32_t layer = 0; layer < kv->layout.n_layers; layer++)
        write_rows(kv, s, layer, s->len - 1, 1, (const uint8_t *)k + layer * layer_bytes,
                   (const uint8_t *)v + layer * layer_bytes, src_dtype);
    return TANDEM_OK;
}

tandem_status td_kv_read(const td_kv_cache *kv, int32_t seq, int32_t layer, int32_t pos, int32_t n, float *k, float *v,
                         td_error *err) {
    tandem_status st = check_rows(kv, seq, layer, pos, n, err);
    if (st)
        return st;
    const seq_slot *s = lookup(kv, seq);
    const td_kv_layout *l = &kv->layout;
    const int32_t T = l->block_tokens, H = l->n_kv_heads, D = l->head_dim;
    for (int32_t i = 0; i < n; i++) {
        int32_t tok = pos + i, t = tok % T;
        const uint8_t *block = kv->pool + (size_t)s->blocks[tok / T] * l->block_bytes;
        for (int32_t h = 0; h < H; h++) {
            const uint16_t *kt = (const uint16_t *)(block + td_kv_tile_offset(l, layer, h));
            const uint16_t *vt = (const uint16_t *)((const uint8_t *)kt + l->tile_bytes);
            size_t row = ((size_t)i * H + h) * D;
            for (int32_t d = 0; d < D; d++) {
                uint16_t kb = kt[td_kv_k_index(T, t, d)], vb = vt[td_kv_v_index(D, t, d)];
                if (k)
                    k[row + d] = l->dtype == TD_DTYPE_BF16 ? td_bf16_to_f32(kb) : td_f16_to_f32(kb);
                if (v)
                    v[row + d] = l->dtype == TD_DTYPE_BF16 ? td_bf16_to_f32(vb) : td_f16_to_f32(vb);
            }
        }
    }
    return TANDEM_OK;
}
