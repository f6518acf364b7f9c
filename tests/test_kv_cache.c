/* The paged host KV cache: configuration checks, the documented tile layout,
 * block accounting, and every error a caller can hit. */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/hostmem.h"
#include "cpu/kv_cache.h"
#include "tests/test_util.h"

static td_kv_config small_config(void) {
    return (td_kv_config){
        .n_layers = 2,
        .n_kv_heads = 3,
        .head_dim = 32,
        .block_tokens = 16,
        .dtype = TD_DTYPE_BF16,
        .budget_bytes = 0,
        .max_seqs = 4,
        .max_seq_tokens = 1000,
        .n_threads = 2,
    };
}

static size_t block_bytes_of(const td_kv_config *c) {
    int32_t T = c->block_tokens ? c->block_tokens : TD_KV_DEFAULT_BLOCK_TOKENS;
    return (size_t)c->n_layers * c->n_kv_heads * 2 * T * c->head_dim * 2;
}

static td_kv_cache *make(td_kv_config c, int n_blocks) {
    c.budget_bytes = block_bytes_of(&c) * (size_t)n_blocks + block_bytes_of(&c) / 2; /* a partial block is unused */
    td_kv_cache *kv = NULL;
    td_error err;
    TD_ASSERT_OK(td_kv_create(&c, &kv, &err), &err);
    return kv;
}

static void expect_config_error(td_kv_config c, tandem_status want, const char *field) {
    td_kv_cache *kv = NULL;
    td_error err = {0};
    CU_ASSERT_EQUAL(td_kv_create(&c, &kv, &err), want);
    CU_ASSERT_PTR_NULL(kv);
    if (!strstr(err.msg, field)) {
        fprintf(stderr, "\n  message '%s' does not name '%s'\n", err.msg, field);
        CU_FAIL("error message does not name the field");
    }
}

static void test_config_errors(void) {
    td_kv_config c = small_config();
    c.budget_bytes = 1 << 20;
    td_kv_config b = c;
    b.head_dim = 40;
    expect_config_error(b, TANDEM_ERR_INVALID_ARGUMENT, "head_dim");
    b = c, b.head_dim = 512;
    expect_config_error(b, TANDEM_ERR_INVALID_ARGUMENT, "head_dim");
    b = c, b.block_tokens = 8;
    expect_config_error(b, TANDEM_ERR_INVALID_ARGUMENT, "block_tokens");
    b = c, b.block_tokens = 24;
    expect_config_error(b, TANDEM_ERR_INVALID_ARGUMENT, "block_tokens");
    b = c, b.n_layers = 0;
    expect_config_error(b, TANDEM_ERR_INVALID_ARGUMENT, "n_layers");
    b = c, b.n_kv_heads = -1;
    expect_config_error(b, TANDEM_ERR_INVALID_ARGUMENT, "n_kv_heads");
    b = c, b.max_seqs = 0;
    expect_config_error(b, TANDEM_ERR_INVALID_ARGUMENT, "max_seqs");
    b = c, b.dtype = TD_DTYPE_I8;
    expect_config_error(b, TANDEM_ERR_UNSUPPORTED, "i8");
    b = c, b.dtype = TD_DTYPE_F32;
    expect_config_error(b, TANDEM_ERR_UNSUPPORTED, "f32");
    b = c, b.budget_bytes = block_bytes_of(&c) - 1;
    expect_config_error(b, TANDEM_ERR_INVALID_ARGUMENT, "budget_bytes");
}

static void test_geometry(void) {
    td_kv_config c = small_config();
    c.block_tokens = 0; /* default */
    td_kv_cache *kv = make(c, 5);
    const td_kv_layout *l = td_kv_get_layout(kv);
    CU_ASSERT_EQUAL(l->block_tokens, TD_KV_DEFAULT_BLOCK_TOKENS);
    CU_ASSERT_EQUAL(l->tile_bytes, 16 * 32 * 2);
    CU_ASSERT_EQUAL(l->block_bytes, 2 * 3 * 2 * 16 * 32 * 2);
    CU_ASSERT_EQUAL(td_kv_n_blocks(kv), 5);
    CU_ASSERT_EQUAL(td_kv_free_blocks(kv), 5);
    CU_ASSERT_EQUAL((uintptr_t)td_kv_pool(kv) % TD_HOSTMEM_ALIGN, 0);
    CU_ASSERT(td_kv_pool_bytes(kv) >= 5 * l->block_bytes);
    /* tiles of (layer, head) are laid out layer-major, K then V */
    CU_ASSERT_EQUAL(td_kv_tile_offset(l, 0, 0), 0);
    CU_ASSERT_EQUAL(td_kv_tile_offset(l, 0, 1), 2 * l->tile_bytes);
    CU_ASSERT_EQUAL(td_kv_tile_offset(l, 1, 0), 3 * 2 * l->tile_bytes);
    td_kv_destroy(kv);
}

/* Values exactly representable in bf16 and f16: the round trip is exact. */
static float exact_value(int tok, int layer, int head, int d, int which) {
    return (float)(((tok * 7 + layer * 131 + head * 17 + d * 3 + which * 1000) % 509) - 254) / 64.0f;
}

static void fill_row(float *k, float *v, int n_kv, int D, int tok, int layer) {
    for (int h = 0; h < n_kv; h++)
        for (int d = 0; d < D; d++) {
            k[h * D + d] = exact_value(tok, layer, h, d, 0);
            v[h * D + d] = exact_value(tok, layer, h, d, 1);
        }
}

/* Writes through the API, then checks the raw pool against the documented
 * layout formulas (the contract the kernels rely on) and td_kv_read. */
static void check_layout(td_dtype dt) {
    td_kv_config c = small_config();
    c.dtype = dt;
    c.block_tokens = 32;
    td_kv_cache *kv = make(c, 8);
    const td_kv_layout *l = td_kv_get_layout(kv);
    td_error err;
    int32_t s0, s1;
    TD_ASSERT_OK(td_kv_seq_new(kv, &s0, &err), &err);
    TD_ASSERT_OK(td_kv_seq_new(kv, &s1, &err), &err);
    const int n = 45, H = c.n_kv_heads, D = c.head_dim;
    float *k = malloc(sizeof(float) * H * D), *v = malloc(sizeof(float) * H * D);
    float *k2 = malloc(sizeof(float) * H * D), *v2 = malloc(sizeof(float) * H * D);
    /* interleave the two sequences so their blocks interleave in the pool */
    for (int tok = 0; tok < n; tok++) {
        TD_ASSERT_OK(td_kv_seq_grow(kv, s1, 1, &err), &err);
        TD_ASSERT_OK(td_kv_seq_grow(kv, s0, 1, &err), &err);
        for (int layer = 0; layer < c.n_layers; layer++) {
            fill_row(k, v, H, D, tok, layer);
            TD_ASSERT_OK(td_kv_write(kv, s0, layer, tok, 1, k, v, TD_DTYPE_F32, &err), &err);
        }
    }
    CU_ASSERT_EQUAL(td_kv_seq_len(kv, s0), n);
    const int32_t *table = td_kv_seq_blocks(kv, s0);
    CU_ASSERT_NOT_EQUAL(table[0], table[1] - 1); /* not contiguous: s1 took blocks in between */
    for (int tok = 0; tok < n; tok++)
        for (int layer = 0; layer < c.n_layers; layer++) {
            const uint8_t *blk = td_kv_pool(kv) + (size_t)table[tok / l->block_tokens] * l->block_bytes;
            fill_row(k, v, H, D, tok, layer);
            for (int h = 0; h < H; h++) {
                const uint16_t *kt = (const uint16_t *)(blk + td_kv_tile_offset(l, layer, h));
                const uint16_t *vt = (const uint16_t *)((const uint8_t *)kt + l->tile_bytes);
                for (int d = 0; d < D; d++) {
                    int t = tok % l->block_tokens;
                    uint16_t kb = kt[((d / 2) * l->block_tokens + t) * 2 + d % 2];
                    uint16_t vb = vt[((t / 2) * D + d) * 2 + t % 2];
                    float kf = dt == TD_DTYPE_BF16 ? td_bf16_to_f32(kb) : td_f16_to_f32(kb);
                    float vf = dt == TD_DTYPE_BF16 ? td_bf16_to_f32(vb) : td_f16_to_f32(vb);
                    CU_ASSERT_EQUAL_FATAL(kf, k[h * D + d]);
                    CU_ASSERT_EQUAL_FATAL(vf, v[h * D + d]);
                }
            }
            TD_ASSERT_OK(td_kv_read(kv, s0, layer, tok, 1, k2, v2, &err), &err);
            CU_ASSERT_EQUAL_FATAL(memcmp(k, k2, sizeof(float) * H * D), 0);
            CU_ASSERT_EQUAL_FATAL(memcmp(v, v2, sizeof(float) * H * D), 0);
        }
    free(k), free(v), free(k2), free(v2);
    td_kv_destroy(kv);
}

static void test_layout_bf16(void) { check_layout(TD_DTYPE_BF16); }
static void test_layout_f16(void) { check_layout(TD_DTYPE_F16); }

/* Writes in bulk, from each source dtype, with conversion by round to
 * nearest even; append writes every layer of one token. */
static void test_write_sources_and_append(void) {
    td_kv_config c = small_config();
    td_kv_cache *kv = make(c, 8);
    td_error err;
    int32_t s;
    TD_ASSERT_OK(td_kv_seq_new(kv, &s, &err), &err);
    const int H = c.n_kv_heads, D = c.head_dim, n = 20;
    float *kf = malloc(sizeof(float) * n * H * D), *vf = malloc(sizeof(float) * n * H * D);
    uint16_t *kb = malloc(2 * n * H * D), *vb = malloc(2 * n * H * D);
    float *back = malloc(sizeof(float) * n * H * D);
    td_rng r = {3};
    for (int i = 0; i < n * H * D; i++) {
        kf[i] = td_rng_uniform(&r, -4, 4);
        vf[i] = td_rng_uniform(&r, -4, 4);
    }
    TD_ASSERT_OK(td_kv_seq_grow(kv, s, n, &err), &err);
    /* f32 source: stored value is the RNE bf16 of the input */
    TD_ASSERT_OK(td_kv_write(kv, s, 1, 0, n, kf, vf, TD_DTYPE_F32, &err), &err);
    TD_ASSERT_OK(td_kv_read(kv, s, 1, 0, n, back, NULL, &err), &err);
    for (int i = 0; i < n * H * D; i++)
        CU_ASSERT_EQUAL_FATAL(back[i], td_bf16_to_f32(td_f32_to_bf16(kf[i])));
    TD_ASSERT_OK(td_kv_read(kv, s, 1, 0, n, NULL, back, &err), &err);
    for (int i = 0; i < n * H * D; i++)
        CU_ASSERT_EQUAL_FATAL(back[i], td_bf16_to_f32(td_f32_to_bf16(vf[i])));
    /* bf16 source: stored verbatim */
    for (int i = 0; i < n * H * D; i++) {
        kb[i] = td_f32_to_bf16(kf[i] * 0.5f);
        vb[i] = td_f32_to_bf16(vf[i]);
    }
    TD_ASSERT_OK(td_kv_write(kv, s, 0, 0, n, kb, vb, TD_DTYPE_BF16, &err), &err);
    TD_ASSERT_OK(td_kv_read(kv, s, 0, 0, n, NULL, back, &err), &err);
    for (int i = 0; i < n * H * D; i++)
        CU_ASSERT_EQUAL_FATAL(back[i], td_bf16_to_f32(vb[i]));
    /* f16 source into a bf16 cache: through f32 */
    for (int i = 0; i < n * H * D; i++)
        kb[i] = td_f32_to_f16(kf[i]);
    TD_ASSERT_OK(td_kv_write(kv, s, 0, 0, n, kb, kb, TD_DTYPE_F16, &err), &err);
    TD_ASSERT_OK(td_kv_read(kv, s, 0, 0, n, back, NULL, &err), &err);
    for (int i = 0; i < n * H * D; i++)
        CU_ASSERT_EQUAL_FATAL(back[i], td_bf16_to_f32(td_f32_to_bf16(td_f16_to_f32(kb[i]))));
    /* append: one token, all layers ([layer][head][dim]) */
    float *ka = malloc(sizeof(float) * c.n_layers * H * D), *va = malloc(sizeof(float) * c.n_layers * H * D);
    for (int layer = 0; layer < c.n_layers; layer++)
        fill_row(ka + layer * H * D, va + layer * H * D, H, D, 99, layer);
    TD_ASSERT_OK(td_kv_append(kv, s, ka, va, TD_DTYPE_F32, &err), &err);
    CU_ASSERT_EQUAL(td_kv_seq_len(kv, s), n + 1);
    for (int layer = 0; layer < c.n_layers; layer++) {
        TD_ASSERT_OK(td_kv_read(kv, s, layer, n, 1, back, back + H * D, &err), &err);
        CU_ASSERT_EQUAL(memcmp(back, ka + layer * H * D, sizeof(float) * H * D), 0);
        CU_ASSERT_EQUAL(memcmp(back + H * D, va + layer * H * D, sizeof(float) * H * D), 0);
    }
    free(kf), free(vf), free(kb), free(vb), free(back), free(ka), free(va);
    td_kv_destroy(kv);
}

static void test_block_accounting(void) {
    td_kv_config c = small_config();
    td_kv_cache *kv = make(c, 6);
    td_error err;
    int32_t a, b;
    TD_ASSERT_OK(td_kv_seq_new(kv, &a, &err), &err);
    CU_ASSERT_EQUAL(td_kv_seq_len(kv, a), 0);
    TD_ASSERT_OK(td_kv_seq_grow(kv, a, 16, &err), &err); /* exactly one block */
    CU_ASSERT_EQUAL(td_kv_free_blocks(kv), 5);
    TD_ASSERT_OK(td_kv_seq_grow(kv, a, 1, &err), &err); /* 17th token: second block */
    CU_ASSERT_EQUAL(td_kv_free_blocks(kv), 4);
    TD_ASSERT_OK(td_kv_seq_grow(kv, a, 15, &err), &err); /* 32: still two */
    CU_ASSERT_EQUAL(td_kv_free_blocks(kv), 4);
    TD_ASSERT_OK(td_kv_seq_grow(kv, a, 0, &err), &err);
    CU_ASSERT_EQUAL(td_kv_seq_len(kv, a), 32);
    TD_ASSERT_OK(td_kv_seq_new(kv, &b, &err), &err);
    TD_ASSERT_OK(td_kv_seq_grow(kv, b, 40, &err), &err);
    CU_ASSERT_EQUAL(td_kv_free_blocks(kv), 1);
    CU_ASSERT_EQUAL(td_kv_live_seqs(kv), 2);
    /* every block handed out is distinct */
    const int32_t *ta = td_kv_seq_blocks(kv, a), *tb = td_kv_seq_blocks(kv, b);
    int32_t all[5] = {ta[0], ta[1], tb[0], tb[1], tb[2]};
    for (int i = 0; i < 5; i++)
        for (int j = i + 1; j < 5; j++)
            CU_ASSERT_NOT_EQUAL(all[i], all[j]);
    TD_ASSERT_OK(td_kv_seq_free(kv, a, &err), &err);
    CU_ASSERT_EQUAL(td_kv_free_blocks(kv), 3);
    CU_ASSERT_EQUAL(td_kv_live_seqs(kv), 1);
    td_kv_destroy(kv);
}

static void test_out_of_blocks(void) {
    td_kv_config c = small_config();
    td_kv_cache *kv = make(c, 4);
    td_error err = {0};
    int32_t a, b;
    TD_ASSERT_OK(td_kv_seq_new(kv, &a, &err), &err);
    TD_ASSERT_OK(td_kv_seq_new(kv, &b, &err), &err);
    TD_ASSERT_OK(td_kv_seq_grow(kv, a, 40, &err), &err); /* 3 blocks */
    TD_ASSERT_OK(td_kv_seq_grow(kv, b, 10, &err), &err); /* the last one */
    /* more than fits: refused as a whole, nothing changes */
    TD_ASSERT_STATUS(TANDEM_ERR_KV_FULL, td_kv_seq_grow(kv, b, 30, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "free"));
    CU_ASSERT_EQUAL(td_kv_seq_len(kv, b), 10);
    CU_ASSERT_EQUAL(td_kv_free_blocks(kv), 0);
    /* growing inside the last block still works */
    TD_ASSERT_OK(td_kv_seq_grow(kv, b, 6, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_KV_FULL, td_kv_seq_grow(kv, b, 1, &err), &err);
    /* append is all or nothing too */
    float *z = calloc((size_t)c.n_layers * c.n_kv_heads * c.head_dim, sizeof(float));
    TD_ASSERT_STATUS(TANDEM_ERR_KV_FULL, td_kv_append(kv, b, z, z, TD_DTYPE_F32, &err), &err);
    CU_ASSERT_EQUAL(td_kv_seq_len(kv, b), 16);
    /* the caller preempts a: b can go on */
    TD_ASSERT_OK(td_kv_seq_free(kv, a, &err), &err);
    TD_ASSERT_OK(td_kv_append(kv, b, z, z, TD_DTYPE_F32, &err), &err);
    CU_ASSERT_EQUAL(td_kv_seq_len(kv, b), 17);
    free(z);
    td_kv_destroy(kv);
}

static void test_invalid_ids(void) {
    td_kv_config c = small_config();
    td_kv_cache *kv = make(c, 4);
    td_error err = {0};
    int32_t a, b;
    TD_ASSERT_STATUS(TANDEM_ERR_NOT_FOUND, td_kv_seq_free(kv, -1, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_NOT_FOUND, td_kv_seq_free(kv, 3, &err), &err); /* slot never used */
    TD_ASSERT_STATUS(TANDEM_ERR_NOT_FOUND, td_kv_seq_grow(kv, 123456, 1, &err), &err);
    CU_ASSERT_EQUAL(td_kv_seq_len(kv, 2), -1);
    CU_ASSERT_PTR_NULL(td_kv_seq_blocks(kv, 2));
    TD_ASSERT_OK(td_kv_seq_new(kv, &a, &err), &err);
    TD_ASSERT_OK(td_kv_seq_grow(kv, a, 20, &err), &err);
    TD_ASSERT_OK(td_kv_seq_free(kv, a, &err), &err);
    /* double free */
    TD_ASSERT_STATUS(TANDEM_ERR_NOT_FOUND, td_kv_seq_free(kv, a, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "not live"));
    CU_ASSERT_EQUAL(td_kv_free_blocks(kv), 4); /* the second free returned nothing twice */
    /* the slot is reused by a new sequence: the old id stays dead */
    TD_ASSERT_OK(td_kv_seq_new(kv, &b, &err), &err);
    CU_ASSERT_NOT_EQUAL(a, b);
    TD_ASSERT_OK(td_kv_seq_grow(kv, b, 5, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_NOT_FOUND, td_kv_seq_free(kv, a, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_NOT_FOUND, td_kv_seq_grow(kv, a, 1, &err), &err);
    CU_ASSERT_EQUAL(td_kv_seq_len(kv, b), 5);
    float row[3 * 32] = {0};
    TD_ASSERT_STATUS(TANDEM_ERR_NOT_FOUND, td_kv_write(kv, a, 0, 0, 1, row, row, TD_DTYPE_F32, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_NOT_FOUND, td_kv_read(kv, a, 0, 0, 1, row, row, &err), &err);
    td_kv_destroy(kv);
}

static void test_limits_and_bad_rows(void) {
    td_kv_config c = small_config();
    c.max_seq_tokens = 40;
    c.max_seqs = 2;
    td_kv_cache *kv = make(c, 10);
    td_error err = {0};
    int32_t a, b, x;
    TD_ASSERT_OK(td_kv_seq_new(kv, &a, &err), &err);
    TD_ASSERT_OK(td_kv_seq_new(kv, &b, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_LIMIT, td_kv_seq_new(kv, &x, &err), &err); /* max_seqs */
    TD_ASSERT_OK(td_kv_seq_grow(kv, a, 40, &err), &err);
    /* table overflow: refused although blocks are free */
    TD_ASSERT_STATUS(TANDEM_ERR_LIMIT, td_kv_seq_grow(kv, a, 1, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "max_seq_tokens"));
    CU_ASSERT_EQUAL(td_kv_seq_len(kv, a), 40);
    TD_ASSERT_STATUS(TANDEM_ERR_LIMIT, td_kv_seq_grow(kv, b, INT32_MAX, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_kv_seq_grow(kv, b, -1, &err), &err);
    float row[2 * 3 * 32] = {0};
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_kv_write(kv, a, 2, 0, 1, row, row, TD_DTYPE_F32, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_kv_write(kv, a, -1, 0, 1, row, row, TD_DTYPE_F32, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_kv_write(kv, a, 0, 39, 2, row, row, TD_DTYPE_F32, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_kv_write(kv, a, 0, -1, 1, row, row, TD_DTYPE_F32, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_kv_write(kv, b, 0, 0, 1, row, row, TD_DTYPE_F32, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_kv_write(kv, a, 0, 0, 1, row, row, TD_DTYPE_I8, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_kv_write(kv, a, 0, 0, 1, NULL, row, TD_DTYPE_F32, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_kv_read(kv, a, 0, 30, 11, row, row, &err), &err);
    TD_ASSERT_OK(td_kv_write(kv, a, 1, 39, 1, row, row, TD_DTYPE_F32, &err), &err);
    td_kv_destroy(kv);
}

/* Freed blocks go back to the pool and are handed out again. */
static void test_reuse_many(void) {
    td_kv_config c = small_config();
    c.max_seqs = 64;
    td_kv_cache *kv = make(c, 50);
    td_error err = {0};
    td_rng r = {11};
    int32_t live[64];
    int n_live = 0;
    for (int step = 0; step < 5000; step++) {
        int op = td_rng_int(&r, 0, 2);
        if (op == 0 && n_live < 64) {
            TD_ASSERT_OK(td_kv_seq_new(kv, &live[n_live], &err), &err);
            n_live++;
        } else if (op == 1 && n_live > 0) {
            int i = td_rng_int(&r, 0, n_live - 1);
            tandem_status st = td_kv_seq_grow(kv, live[i], td_rng_int(&r, 1, 40), &err);
            CU_ASSERT(st == TANDEM_OK || st == TANDEM_ERR_KV_FULL || st == TANDEM_ERR_LIMIT);
        } else if (n_live > 0) {
            int i = td_rng_int(&r, 0, n_live - 1);
            TD_ASSERT_OK(td_kv_seq_free(kv, live[i], &err), &err);
            live[i] = live[--n_live];
        }
        /* invariant: free + used == total, no block used twice */
        int used = 0;
        char seen[50] = {0};
        for (int i = 0; i < n_live; i++) {
            int32_t len = td_kv_seq_len(kv, live[i]);
            const int32_t *t = td_kv_seq_blocks(kv, live[i]);
            for (int b = 0; b < (len + 15) / 16; b++) {
                CU_ASSERT_FATAL(t[b] >= 0 && t[b] < 50 && !seen[t[b]]);
                seen[t[b]] = 1;
                used++;
            }
        }
        CU_ASSERT_EQUAL_FATAL(used + td_kv_free_blocks(kv), 50);
    }
    td_kv_destroy(kv);
}

/* Executables link jemalloc as the process allocator, so the cache's small
 * metadata (tables, free lists) comes from it. */
static void test_metadata_allocator(void) {
#ifdef TANDEM_WITH_JEMALLOC
    void *je = dlopen("libjemalloc.so.2", RTLD_NOW | RTLD_NOLOAD);
    CU_ASSERT_PTR_NOT_NULL_FATAL(je);
    CU_ASSERT_PTR_EQUAL(dlsym(RTLD_DEFAULT, "malloc"), dlsym(je, "malloc"));
    dlclose(je);
#else
    CU_PASS("built without jemalloc (sanitizer build)");
#endif
}

void td_test_register(void) {
    static const td_test tests[] = {
        {"configuration errors name the field", test_config_errors},
        {"geometry and alignment", test_geometry},
        {"bf16 tile layout matches the documented formulas", test_layout_bf16},
        {"f16 tile layout matches the documented formulas", test_layout_f16},
        {"writes from f32/bf16/f16 and append", test_write_sources_and_append},
        {"block accounting across block boundaries", test_block_accounting},
        {"out of blocks is reported and changes nothing", test_out_of_blocks},
        {"invalid, freed and stale ids", test_invalid_ids},
        {"sequence limits and rows out of range", test_limits_and_bad_rows},
        {"random new/grow/free keeps the pool consistent", test_reuse_many},
        {"metadata allocator is jemalloc", test_metadata_allocator},
        {NULL, NULL},
    };
    td_add_suite("kv_cache", tests);
}
