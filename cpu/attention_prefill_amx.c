/* AMX prefill attention: the tile of cpu/attention_prefill_avx512.c (up to
 * 16 consecutive query tokens of one sequence x the query heads of one kv
 * head), with both matrix products on the AMX tile unit.
 *
 * Why: a prompt's attention is a small dense matrix product per tile, and
 * the AVX-512 kernel spends one FMA per 16 multiply-adds on it, plus a
 * broadcast per FMA; one tdpbf16ps does 16 x 16 x 32 of them in ~11 cycles.
 *
 * The cache layout is nearly what the tile unit wants: a K tile holds pairs
 * of dims for 16 tokens ([D/2][T][2]), the B operand of S = Q K^T as it
 * lies; a V tile holds pairs of tokens for every dim ([T/2][D][2]), the B
 * operand of O = P V, 16 tokens per block. Q and P are built here as A
 * operands, and V is staged 32 tokens at a time (two 16-token sub-tiles
 * from two blocks side by side), so that every op has K = 32: an op costs
 * the same with K = 16, measured.
 *
 * Precision: AMX multiplies bf16 only. K and V are bf16 already (this path
 * runs on bf16 caches); Q and the softmax weights P are f32, so each is
 * split into a bf16 head and a bf16 remainder (x = hi + lo to 2^-17) and
 * multiplied twice. The products and sums are f32, so the result matches
 * the f32 kernels to the f32 test tolerance, not the bf16 one.
 *
 * Per tile: rows are (query, head) pairs in the AVX-512 kernel's order,
 * taken 16 at a time (one A tile); keys 64 at a time (four 16-token
 * sub-tiles). For each chunk of keys, V staged once; then per row tile:
 * S = Qhi K^T + Qlo K^T into four C tiles, stored; online softmax on the
 * stored rows with AVX-512 (lazy max, as the decode kernels); O += Phi V +
 * Plo V into the row tile's output tiles, loaded from and stored back to
 * the f32 accumulators. head_dim must be a multiple of 32. */
#include <immintrin.h>

#include "cpu/attention_impl.h"
#include "cpu/simd_avx512.h"

/* Tile registers: 0-3 are C tiles (16 rows x 16 f32: the scores of a
 * 16-token sub-tile, or 16 dims of output). Every operand has one shape,
 * 16 rows x 64 bytes: A holds 16 rows x 32 bf16 (dims of q, or weights of
 * 32 keys), B 16 pair rows x 16 columns (32 dims x 16 tokens of K, or 32
 * tokens x 16 dims of V). The head and the remainder of the A side have a
 * register each, and B alternates between two, so that no load waits for
 * an op still reading its register (tiles are not renamed). The
 * intrinsics paste the register number into the instruction text: plain
 * numbers, passed through one macro level (LOADD, DP) to be expanded. */
#define T_HI 4
#define T_LO 5
#define T_B0 6
#define T_B1 7
#define LOADD(t, p, stride) _tile_loadd(t, p, stride)
#define DP(c, a, b) _tile_dpbf16ps(c, a, b)
#define KEYS 64 /* keys per chunk: one C tile per 16 */

typedef struct tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) tile_config;

/* A constant, not built on the stack: gcc 12's _tile_loadconfig does not
 * tell the compiler that it reads the whole 64 bytes, and the stores of a
 * local configuration were dropped as dead. */
static const tile_config config = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

void td_attn_prefill_amx_begin(void) { _tile_loadconfig(&config); }

void td_attn_prefill_amx_end(void) { _tile_release(); }

/* The tile instructions name their registers in the opcode: one case per
 * C tile, and per B register (odd: T_B1). */
#define DP_INTO(c, a, odd)                                                                                             \
    do {                                                                                                               \
        if (odd)                                                                                                       \
            switch (c) {                                                                                               \
            case 0: DP(0, a, T_B1); break;                                                                             \
            case 1: DP(1, a, T_B1); break;                                                                             \
            case 2: DP(2, a, T_B1); break;                                                                             \
            default: DP(3, a, T_B1); break;                                                                            \
            }                                                                                                          \
        else                                                                                                           \
            switch (c) {                                                                                               \
            case 0: DP(0, a, T_B0); break;                                                                             \
            case 1: DP(1, a, T_B0); break;                                                                             \
            case 2: DP(2, a, T_B0); break;                                                                             \
            default: DP(3, a, T_B0); break;                                                                            \
            }                                                                                                          \
    } while (0)

TD_INLINE void b_load(int odd, const void *p, size_t stride) {
    if (odd)
        LOADD(T_B1, p, stride);
    else
        LOADD(T_B0, p, stride);
}

TD_INLINE void c_zero(int c) {
    switch (c) {
    case 0: _tile_zero(0); break;
    case 1: _tile_zero(1); break;
    case 2: _tile_zero(2); break;
    default: _tile_zero(3); break;
    }
}

TD_INLINE void c_load(int c, const float *p, size_t stride) {
    switch (c) {
    case 0: _tile_loadd(0, p, stride); break;
    case 1: _tile_loadd(1, p, stride); break;
    case 2: _tile_loadd(2, p, stride); break;
    default: _tile_loadd(3, p, stride); break;
    }
}

TD_INLINE void c_store(int c, float *p, size_t stride) {
    switch (c) {
    case 0: _tile_stored(0, p, stride); break;
    case 1: _tile_stored(1, p, stride); break;
    case 2: _tile_stored(2, p, stride); break;
    default: _tile_stored(3, p, stride); break;
    }
}

/* 16 f32 -> bf16 head and remainder (x = hi + lo to 2^-17 relative). */
TD_INLINE void split(__m512 x, __m256bh *hi, __m256bh *lo) {
    *hi = _mm512_cvtneps_pbh(x);
    const __m512 h = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)*hi), 16));
    *lo = _mm512_cvtneps_pbh(_mm512_sub_ps(x, h));
}

/* The workspace, carved from the caller's floats (td_prefill_amx_ws). */
typedef struct ws_view {
    uint16_t *qhi, *qlo; /* [R16][D] bf16 */
    float *acc;          /* [R16][D] */
    float *lv;           /* [R16][16]: partial sums of the weights */
    float *m;            /* [R16]: reference max, log2 units */
    float *s;            /* [16][KEYS] scores of one row tile and chunk */
    uint16_t *phi, *plo; /* [16][KEYS] bf16 weights */
    uint16_t *vs;        /* [KEYS / 2][D][2]: the chunk's V, pair rows of consecutive tokens */
} ws_view;

static ws_view carve(float *ws, int R16, int D) {
    ws_view w;
    char *p = (char *)ws;
    w.qhi = (uint16_t *)p, p += (size_t)R16 * D * 2;
    w.qlo = (uint16_t *)p, p += (size_t)R16 * D * 2;
    w.acc = (float *)p, p += (size_t)R16 * D * 4;
    w.lv = (float *)p, p += (size_t)R16 * 16 * 4;
    w.m = (float *)p, p += ((size_t)R16 * 4 + 63) / 64 * 64;
    w.s = (float *)p, p += 16 * KEYS * 4;
    w.phi = (uint16_t *)p, p += 16 * KEYS * 2;
    w.plo = (uint16_t *)p, p += 16 * KEYS * 2;
    w.vs = (uint16_t *)p;
    return w;
}

size_t td_prefill_amx_ws(int32_t rows, int32_t head_dim) {
    const size_t R16 = ((size_t)rows + 15) / 16 * 16, D = (size_t)head_dim;
    const size_t bytes = R16 * D * 8 + R16 * 64 + (R16 * 4 + 63) / 64 * 64 + 16 * KEYS * 8 + (size_t)KEYS * D * 2;
    return (bytes + 3) / 4;
}

/* S = Q K^T for one row tile (rows r0..r0+15) and nsub sub-tiles. ks[j]:
 * sub-tile j's K tile at its first token, pair rows kstride bytes apart. */
TD_INLINE void scores(const ws_view *w, int r0, int D, const uint16_t *const ks[4], int nsub, size_t kstride) {
    const size_t qs = (size_t)D * 2;
    for (int j = 0; j < nsub; j++)
        c_zero(j);
    /* K loaded once for both halves (issuing every sub-tile's head op
     * before the remainders, to keep more C tiles in flight, costs a second
     * load of K and measured slower) */
    int n = 0;
    for (int d = 0; d < D; d += 32) {
        LOADD(T_HI, w->qhi + (size_t)r0 * D + d, qs);
        LOADD(T_LO, w->qlo + (size_t)r0 * D + d, qs);
        for (int j = 0; j < nsub; j++, n++) {
            b_load(n & 1, ks[j] + (size_t)(d / 2) * (kstride / 2), kstride);
            DP_INTO(j, T_HI, n & 1);
            DP_INTO(j, T_LO, n & 1);
        }
    }
    for (int j = 0; j < nsub; j++)
        c_store(j, w->s + j * 16, KEYS * 4);
}

/* Online softmax over the stored scores of a row tile: row i sees the first
 * lim[i] keys of the chunk (<= 0: none). Writes the weights as bf16 head
 * and remainder; rescales a row's accumulators when its max moves. */
TD_INLINE void softmax(const ws_view *w, int r0, int D, const int32_t lim[16], int nsub) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int i = 0; i < 16; i++) {
        uint16_t *ph = w->phi + i * KEYS, *pl = w->plo + i * KEYS;
        if (nsub % 2) { /* the last 32-key step's missing half */
            _mm256_store_si256((__m256i *)(ph + nsub * 16), _mm256_setzero_si256());
            _mm256_store_si256((__m256i *)(pl + nsub * 16), _mm256_setzero_si256());
        }
        if (lim[i] <= 0) {
            memset(ph, 0, (size_t)nsub * 32);
            memset(pl, 0, (size_t)nsub * 32);
            continue;
        }
        const int r = r0 + i;
        __m512 s[4];
        __mmask16 valid[4];
        __m512 smax = ninf;
        for (int j = 0; j < nsub; j++) {
            valid[j] = td_lanes_avx512(lim[i] - j * 16 > 0 ? lim[i] - j * 16 : 0);
            s[j] = _mm512_mask_mov_ps(ninf, valid[j], _mm512_load_ps(w->s + i * KEYS + j * 16));
            smax = _mm512_max_ps(smax, s[j]);
        }
        float *lv = w->lv + (size_t)r * 16;
        if (_mm512_cmp_ps_mask(smax, _mm512_set1_ps(w->m[r] + TD_ATTN_MAX_SLACK), _CMP_GT_OQ)) {
            const float mx = _mm512_reduce_max_ps(smax);
            if (w->m[r] != -INFINITY) {
                const float a = exp2f(w->m[r] - mx);
                _mm512_store_ps(lv, _mm512_mul_ps(_mm512_load_ps(lv), _mm512_set1_ps(a)));
                td_scale_row_avx512(w->acc + (size_t)r * D, D, a);
            }
            w->m[r] = mx;
        }
        const __m512 vm = _mm512_set1_ps(w->m[r]);
        __m512 sum = _mm512_load_ps(lv);
        for (int j = 0; j < nsub; j++) {
            const __m512 p = _mm512_maskz_mov_ps(valid[j], td_exp2_avx512(_mm512_sub_ps(s[j], vm)));
            __m256bh hi, lo;
            split(p, &hi, &lo);
            _mm256_store_si256((__m256i *)(ph + j * 16), (__m256i)hi);
            _mm256_store_si256((__m256i *)(pl + j * 16), (__m256i)lo);
            sum = _mm512_add_ps(sum, p);
        }
        _mm512_store_ps(lv, sum);
    }
}

/* O += P V for one row tile and nk keys (a multiple of 32, the staged V):
 * its accumulators, 16 dims (one C tile) at a time, up to four C tiles per
 * pass over the weights. */
TD_INLINE void weighted_sum(const ws_view *w, int r0, int D, int nk) {
    const size_t as = (size_t)D * 4, vstride = (size_t)D * 4;
    int n = 0;
    for (int c0 = 0; c0 < D; c0 += 64) {
        const int nc = (D - c0) / 16 < 4 ? (D - c0) / 16 : 4;
        float *acc = w->acc + (size_t)r0 * D + c0;
        for (int c = 0; c < nc; c++)
            c_load(c, acc + c * 16, as);
        for (int k = 0; k < nk; k += 32) {
            LOADD(T_HI, w->phi + k, KEYS * 2);
            LOADD(T_LO, w->plo + k, KEYS * 2);
            for (int c = 0; c < nc; c++, n++) {
                b_load(n & 1, w->vs + (size_t)k * D + (size_t)(c0 + c * 16) * 2, vstride);
                DP_INTO(c, T_HI, n & 1);
                DP_INTO(c, T_LO, n & 1);
            }
        }
        for (int c = 0; c < nc; c++)
            c_store(c, acc + c * 16, as);
    }
}

/* The chunk's V from its nsub sub-tiles (vt[j]: at the sub-tile's first
 * token) into consecutive pair rows, zero past token n (slots past a run's
 * last token may hold anything, NaN included, and a zero weight does not
 * cancel a NaN in the product) and up to the next 32. */
TD_INLINE void stage_v(uint16_t *vs, const uint16_t *const vt[4], int nsub, int32_t n, int D) {
    const size_t sub = (size_t)16 * D; /* elements of a sub-tile: 8 pair rows */
    for (int j = 0; j < nsub; j++)
        memcpy(vs + j * sub, vt[j], sub * 2);
    const int32_t end = (nsub + 1) / 2 * 32;
    if (n >= end)
        return;
    if (n % 2) /* the second token of the last pair */
        for (int d = 0; d < D; d++)
            vs[(size_t)(n / 2) * D * 2 + d * 2 + 1] = 0;
    const int32_t from = (n + 1) / 2; /* first pair row with no token */
    memset(vs + (size_t)from * D * 2, 0, (size_t)(end / 2 - from) * D * 4);
}

void td_attn_prefill_amx(const td_prefill_tile *t, float *ws) {
    const int D = t->head_dim, G = t->group, R = t->n_q * G, R16 = (R + 15) / 16 * 16, T = t->block_tokens;
    const ws_view w = carve(ws, R16, D);
    const __m512 qscale = _mm512_set1_ps(t->q_scale);
    for (int r = 0; r < R16; r++) {
        const float *src =
            r < R ? t->q + (size_t)(r / G) * (size_t)t->q_stride + (size_t)(t->head0 + r % G) * (size_t)D : NULL;
        for (int c = 0; c < D; c += 16) {
            __m256bh hi, lo;
            split(src ? _mm512_mul_ps(_mm512_loadu_ps(src + c), qscale) : _mm512_setzero_ps(), &hi, &lo);
            _mm256_store_si256((__m256i *)(w.qhi + (size_t)r * D + c), (__m256i)hi);
            _mm256_store_si256((__m256i *)(w.qlo + (size_t)r * D + c), (__m256i)lo);
        }
        w.m[r] = -INFINITY;
        _mm512_store_ps(w.lv + (size_t)r * 16, _mm512_setzero_ps());
    }
    memset(w.acc, 0, (size_t)R16 * D * sizeof *w.acc);

    const int32_t n_kv = t->pos0 + t->n_q; /* tokens the last query sees */
    const size_t kstride = (size_t)T * 4;
    for (int32_t c0 = 0; c0 < n_kv; c0 += KEYS) {
        const int nsub = (n_kv - c0 + 15) / 16 < KEYS / 16 ? (n_kv - c0 + 15) / 16 : KEYS / 16;
        const uint16_t *ks[4], *vt[4];
        for (int j = 0; j < nsub; j++) {
            const int32_t t0 = c0 + j * 16, tb = t0 % T;
            const uint8_t *tiles = t->pool + (size_t)t->blocks[t0 / T] * t->block_bytes + t->tile_offset;
            ks[j] = (const uint16_t *)tiles + (size_t)tb * 2;
            vt[j] = (const uint16_t *)(tiles + t->tile_bytes) + (size_t)tb * D;
        }
        stage_v(w.vs, vt, nsub, n_kv - c0, D);
        /* row tiles whose queries all precede the chunk see none of it */
        const int first = (c0 > t->pos0 ? c0 - t->pos0 : 0) * G / 16 * 16;
        for (int r0 = first; r0 < R16; r0 += 16) {
            int32_t lim[16];
            for (int i = 0; i < 16; i++)
                lim[i] = r0 + i < R ? t->pos0 + (r0 + i) / G + 1 - c0 : 0;
            scores(&w, r0, D, ks, nsub, kstride);
            softmax(&w, r0, D, lim, nsub);
            weighted_sum(&w, r0, D, (nsub + 1) / 2 * 32);
        }
    }
    /* row r is query r / G, head head0 + r % G */
    for (int r = 0; r < R; r++) {
        const size_t at = (size_t)(r / G) * (size_t)t->out_stride + (size_t)(t->head0 + r % G) * (size_t)D;
        const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(_mm512_load_ps(w.lv + (size_t)r * 16)));
        for (int c = 0; c < D; c += 16) {
            const __m512 o = _mm512_mul_ps(_mm512_load_ps(w.acc + (size_t)r * D + c), inv);
            if (t->out_dtype == TD_DTYPE_BF16)
                _mm256_storeu_si256((__m256i *)((uint16_t *)t->out + at + c), td_to_bf16_avx512(o));
            else
                _mm512_storeu_ps((float *)t->out + at + c, o);
        }
    }
}
