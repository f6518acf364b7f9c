/* AVX-512 prefill attention: a tile of consecutive query tokens of one
 * sequence, all query heads of one kv head, over the paged cache with the
 * causal limit of each query (cpu/attention.h, td_attn_prefill).
 *
 * Why not the decode kernel per query: a prompt's queries all read the same
 * K/V, and the decode kernel would stream them once per query from the
 * cache (and pay its work-item setup per query: 2-3 us each, 35-40% of a
 * prefill step). Here a 16-token sub-tile of K and V is widened to f32 once
 * per tile of queries and then used by every (query, head) row of the tile
 * from L1: scores are 16 tokens at a time (one FMA per dim with the query
 * value broadcast), p.V is 16 dims at a time (one FMA per token).
 *
 * Arithmetic as the f32 decode kernels: q pre-scaled by scale * log2(e),
 * exp2 by the polynomial of cpu/exp2_poly.h, online softmax with an exact
 * running max. Built with the AVX-512 flags of cpu/attention_avx512.c. */
#include <immintrin.h>

#include "cpu/attention_impl.h"
#include "cpu/simd_avx512.h"

/* kf[d][16]: dims of 16 tokens from the K tile (pair rows of 16 tokens);
 * vf[t][D]: the V rows of the 16 tokens (pair rows of 16 dims). */
TD_INLINE void widen(const td_prefill_tile *t, const uint16_t *k, const uint16_t *v, float *kf, float *vf) {
    const int D = t->head_dim, T = t->block_tokens, bf16 = t->dtype == TD_DTYPE_BF16;
    __m512 lo, hi;
    for (int p = 0; p < D / 2; p++) {
        __m512i x = _mm512_loadu_si512(k + (size_t)p * T * 2);
        if (bf16)
            td_split_bf16_avx512(x, &lo, &hi);
        else
            td_split_f16_avx512(x, &lo, &hi);
        _mm512_store_ps(kf + (2 * p) * 16, lo);
        _mm512_store_ps(kf + (2 * p + 1) * 16, hi);
    }
    for (int s = 0; s < 8; s++)
        for (int c = 0; c < D; c += 16) {
            __m512i x = _mm512_loadu_si512(v + ((size_t)s * D + c) * 2);
            if (bf16)
                td_split_bf16_avx512(x, &lo, &hi);
            else
                td_split_f16_avx512(x, &lo, &hi);
            _mm512_store_ps(vf + (2 * s) * D + c, lo);
            _mm512_store_ps(vf + (2 * s + 1) * D + c, hi);
        }
}

/* RB (query, head) rows against the widened sub-tile; row i sees the first
 * valid[i] (1..16) tokens of it. The rows are independent, so their
 * dependency chains (D-long FMA chains for the scores and the output, the
 * horizontal max and sum) interleave: one row alone is bound by latency, not
 * by the FMA units. ND = head_dim / 16 and RB are constants per
 * instantiation, so the accumulators live in registers (RB x ND <= 16). */
TD_INLINE void rows_step(const float *q, const float *kf, const float *vf, const int32_t *valid, float *m, float *l,
                         float *acc, const int ND, const int RB) {
    const int D = ND * 16;
    __m512 s0[4], s1[4];
    _Pragma("GCC unroll 16") for (int r = 0; r < RB; r++) s0[r] = s1[r] = _mm512_setzero_ps();
    for (int d = 0; d < D; d += 2) {
        const __m512 k0 = _mm512_load_ps(kf + d * 16), k1 = _mm512_load_ps(kf + (d + 1) * 16);
        _Pragma("GCC unroll 16") for (int r = 0; r < RB; r++) {
            s0[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * D + d]), k0, s0[r]);
            s1[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * D + d + 1]), k1, s1[r]);
        }
    }
    float pw[4][16] __attribute__((aligned(64)));
    float scale[4];
    int32_t most = 0;
    _Pragma("GCC unroll 16") for (int r = 0; r < RB; r++) {
        const __mmask16 vm = td_lanes_avx512(valid[r]);
        const __m512 sc = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), vm, _mm512_add_ps(s0[r], s1[r]));
        const float mx = _mm512_reduce_max_ps(sc);
        scale[r] = 1.0f;
        if (mx > m[r]) {
            scale[r] = exp2f(m[r] - mx); /* 0 when m was -inf */
            l[r] *= scale[r];
            m[r] = mx;
        }
        const __m512 p = _mm512_maskz_mov_ps(vm, td_exp2_avx512(_mm512_sub_ps(sc, _mm512_set1_ps(m[r]))));
        l[r] += _mm512_reduce_add_ps(p);
        _mm512_store_ps(pw[r], p);
        most = valid[r] > most ? valid[r] : most;
    }
    __m512 a[4][16];
    _Pragma("GCC unroll 16") for (int r = 0; r < RB; r++) {
        const __m512 vs = _mm512_set1_ps(scale[r]);
        _Pragma("GCC unroll 16") for (int c = 0; c < ND; c++) a[r][c] =
            _mm512_mul_ps(_mm512_load_ps(acc + r * D + c * 16), vs);
    }
    /* tokens past a row's valid ones have weight 0 in it */
    for (int t = 0; t < most; t++)
        _Pragma("GCC unroll 16") for (int c = 0; c < ND; c++) {
            const __m512 v = _mm512_load_ps(vf + t * D + c * 16);
            _Pragma("GCC unroll 16") for (int r = 0; r < RB; r++) a[r][c] =
                _mm512_fmadd_ps(_mm512_set1_ps(pw[r][t]), v, a[r][c]);
        }
    _Pragma("GCC unroll 16") for (int r = 0; r < RB; r++) _Pragma("GCC unroll 16") for (int c = 0; c < ND; c++)
        _mm512_store_ps(acc + r * D + c * 16, a[r][c]);
}

TD_INLINE void tile(const td_prefill_tile *t, float *ws, const int ND) {
    const int D = ND * 16, G = t->group, R = t->n_q * G;
    float *q = ws, *acc = q + (size_t)R * D, *kf = acc + (size_t)R * D, *vf = kf + (size_t)D * 16,
          *m = vf + (size_t)16 * D, *l = m + R;
    const __m512 qs = _mm512_set1_ps(t->q_scale);
    for (int r = 0; r < R; r++) {
        const float *src = t->q + (size_t)(r / G) * (size_t)t->q_stride + (size_t)(t->head0 + r % G) * (size_t)D;
        for (int c = 0; c < ND; c++)
            _mm512_store_ps(q + (size_t)r * D + c * 16, _mm512_mul_ps(_mm512_loadu_ps(src + c * 16), qs));
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
    memset(acc, 0, (size_t)R * D * sizeof *acc);
    const int32_t n_kv = t->pos0 + t->n_q; /* tokens the last query sees */
    for (int32_t t0 = 0; t0 < n_kv; t0 += 16) {
        const uint8_t *tiles = t->pool + (size_t)t->blocks[t0 / t->block_tokens] * t->block_bytes + t->tile_offset;
        const int32_t tb = t0 % t->block_tokens;
        widen(t, (const uint16_t *)tiles + (size_t)tb * 2, (const uint16_t *)(tiles + t->tile_bytes) + (size_t)tb * D,
              kf, vf);
        /* rows of queries before t0 see none of this sub-tile; the others
         * go RB at a time (RB rows share no state, whatever their query) */
        const int RB = ND <= 4 ? 4 : ND <= 8 ? 2 : 1; /* RB x ND accumulators: <= 16 registers */
        int r = (t0 > t->pos0 ? t0 - t->pos0 : 0) * G;
        int32_t valid[4];
        for (; r < R; r += RB) {
            const int nr = R - r < RB ? R - r : RB;
            for (int i = 0; i < nr; i++) {
                const int32_t v = t->pos0 + (r + i) / G + 1 - t0;
                valid[i] = v < 16 ? v : 16;
            }
            float *qa = q + (size_t)r * D, *aa = acc + (size_t)r * D;
            if (nr == 4)
                rows_step(qa, kf, vf, valid, &m[r], &l[r], aa, ND, 4);
            else if (nr >= 2) {
                rows_step(qa, kf, vf, valid, &m[r], &l[r], aa, ND, 2);
                if (nr == 3)
                    rows_step(qa + 2 * D, kf, vf, valid + 2, &m[r + 2], &l[r + 2], aa + 2 * D, ND, 1);
            } else
                rows_step(qa, kf, vf, valid, &m[r], &l[r], aa, ND, 1);
        }
    }
    /* row r is query r / G, head head0 + r % G */
    for (int r = 0; r < R; r++) {
        const size_t at = (size_t)(r / G) * (size_t)t->out_stride + (size_t)(t->head0 + r % G) * (size_t)D;
        const __m512 inv = _mm512_set1_ps(1.0f / l[r]);
        for (int c = 0; c < ND; c++) {
            const __m512 o = _mm512_mul_ps(_mm512_load_ps(acc + (size_t)r * D + c * 16), inv);
            if (t->out_dtype == TD_DTYPE_BF16)
                _mm256_storeu_si256((__m256i *)((uint16_t *)t->out + at + c * 16), td_to_bf16_avx512(o));
            else
                _mm512_storeu_ps((float *)t->out + at + c * 16, o);
        }
    }
}

void td_attn_prefill_avx512(const td_prefill_tile *t, float *ws) {
    /* head_dim is a multiple of 16 up to 256: one instantiation per width,
     * so that every loop over it unrolls */
    switch (t->head_dim / 16) {
    case 1: tile(t, ws, 1); break;
    case 2: tile(t, ws, 2); break;
    case 3: tile(t, ws, 3); break;
    case 4: tile(t, ws, 4); break;
    case 5: tile(t, ws, 5); break;
    case 6: tile(t, ws, 6); break;
    case 7: tile(t, ws, 7); break;
    case 8: tile(t, ws, 8); break;
    case 9: tile(t, ws, 9); break;
    case 10: tile(t, ws, 10); break;
    case 11: tile(t, ws, 11); break;
    case 12: tile(t, ws, 12); break;
    case 13: tile(t, ws, 13); break;
    case 14: tile(t, ws, 14); break;
    case 15: tile(t, ws, 15); break;
    case 16: tile(t, ws, 16); break;
    }
}
