/* AVX2 + FMA + F16C decode attention: the AVX-512 f32 kernel's structure
 * (attention_avx512.c) with 8-lane registers, so a 16-token tile is two
 * registers per head and four heads share each load. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "cpu/attention_impl.h"
#include "cpu/exp2_poly.h"

#define TD_INLINE static inline __attribute__((always_inline))
#define MAX_HEADS 4 /* 8 score registers of the 16 ymm */

/* 2^x: the polynomial of exp2_poly.h on the fraction, the integer part put
 * into the exponent field (x clamped to [-127, 127]; 2^-127 -> 0). */
TD_INLINE __m256 exp2_avx2(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
    __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(x, n);
    __m256 p = _mm256_set1_ps(TD_EXP2_C6);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(TD_EXP2_C5));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(TD_EXP2_C4));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(TD_EXP2_C3));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(TD_EXP2_C2));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(TD_EXP2_C1));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* 16 16-bit values as 8 pairs -> the firsts and the seconds, as f32. */
TD_INLINE void split(__m256i x, const int bf16, __m256 *lo, __m256 *hi) {
    if (bf16) {
        *lo = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
        *hi = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32((int)0xffff0000u)));
    } else {
        /* per 128-bit lane: firsts to the low 8 bytes, seconds to the high 8;
         * then gather the low halves of both lanes, and the high halves */
        const __m256i sel = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12,
                                             13, 2, 3, 6, 7, 10, 11, 14, 15);
        __m256i y = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(x, sel), _MM_SHUFFLE(3, 1, 2, 0));
        *lo = _mm256_cvtph_ps(_mm256_castsi256_si128(y));
        *hi = _mm256_cvtph_ps(_mm256_extracti128_si256(y, 1));
    }
}

TD_INLINE float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

TD_INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One 16-token sub-tile (K rows from K, V pair rows from V, nv valid) for
 * query heads [h0, h0 + HG); pfk, pfv: the next pass's matching sub-tile to
 * prefetch (NULL: none). */
TD_INLINE void tile(const td_attn_chunk *c, const uint16_t *K, const uint16_t *V, int nv, int h0, const int HG,
                    const int bf16, float *pt, const char *pfk, const char *pfv) {
    const int D = c->head_dim, T = c->block_tokens;
    const float *q = c->q + (size_t)h0 * D;

    __m256 s[MAX_HEADS][2];
    for (int h = 0; h < HG; h++)
        s[h][0] = s[h][1] = _mm256_setzero_ps();
    const uint16_t *krow = K;
    for (int p = 0; p < D / 2; p++, krow += (size_t)T * 2) {
        if (pfk)
            TD_ATTN_PREFETCH(pfk + (size_t)p * T * 4);
        __m256 e0, o0, e1, o1;
        split(_mm256_loadu_si256((const __m256i *)krow), bf16, &e0, &o0);
        split(_mm256_loadu_si256((const __m256i *)(krow + 16)), bf16, &e1, &o1);
        for (int h = 0; h < HG; h++) {
            __m256 qe = _mm256_set1_ps(q[h * D + 2 * p]), qo = _mm256_set1_ps(q[h * D + 2 * p + 1]);
            s[h][0] = _mm256_fmadd_ps(qo, o0, _mm256_fmadd_ps(qe, e0, s[h][0]));
            s[h][1] = _mm256_fmadd_ps(qo, o1, _mm256_fmadd_ps(qe, e1, s[h][1]));
        }
    }

    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 valid0 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(nv), lane));
    const __m256 valid1 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(nv - 8), lane));
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    for (int h = 0; h < HG; h++) {
        const int hh = h0 + h;
        __m256 a0 = _mm256_blendv_ps(ninf, s[h][0], valid0), a1 = _mm256_blendv_ps(ninf, s[h][1], valid1);
        float mx = hmax(_mm256_max_ps(a0, a1));
        if (mx > c->m[hh]) {
            if (c->m[hh] != -INFINITY) {
                float r = exp2f(c->m[hh] - mx);
                c->l[hh] *= r;
                float *acc = c->acc + (size_t)hh * D;
                for (int d = 0; d < D; d += 8)
                    _mm256_storeu_ps(acc + d, _mm256_mul_ps(_mm256_loadu_ps(acc + d), _mm256_set1_ps(r)));
            }
            c->m[hh] = mx;
        }
        const __m256 vm = _mm256_set1_ps(c->m[hh]);
        __m256 p0 = _mm256_and_ps(valid0, exp2_avx2(_mm256_sub_ps(a0, vm)));
        __m256 p1 = _mm256_and_ps(valid1, exp2_avx2(_mm256_sub_ps(a1, vm)));
        c->l[hh] += hsum(_mm256_add_ps(p0, p1));
        _mm256_store_ps(pt + h * 16, p0);
        _mm256_store_ps(pt + h * 16 + 8, p1);
    }

    const int pairs = nv / 2;
    for (int j = 0; j < D; j += 8) {
        __m256 a[MAX_HEADS];
        for (int h = 0; h < HG; h++)
            a[h] = _mm256_loadu_ps(c->acc + (size_t)(h0 + h) * D + j);
        const uint16_t *vrow = V + (size_t)j * 2;
        for (int sp = 0; sp < pairs; sp++, vrow += (size_t)D * 2) {
            if (pfv && j + sp < D / 2) /* the D/2 lines of the next V sub-tile */
                TD_ATTN_PREFETCH(pfv + (size_t)(j + sp) * 64);
            __m256 ev, od;
            split(_mm256_loadu_si256((const __m256i *)vrow), bf16, &ev, &od);
            for (int h = 0; h < HG; h++) {
                a[h] = _mm256_fmadd_ps(_mm256_set1_ps(pt[h * 16 + 2 * sp]), ev, a[h]);
                a[h] = _mm256_fmadd_ps(_mm256_set1_ps(pt[h * 16 + 2 * sp + 1]), od, a[h]);
            }
        }
        if (nv & 1) {
            __m256 ev, od;
            split(_mm256_loadu_si256((const __m256i *)vrow), bf16, &ev, &od);
            for (int h = 0; h < HG; h++)
                a[h] = _mm256_fmadd_ps(_mm256_set1_ps(pt[h * 16 + 2 * pairs]), ev, a[h]);
        }
        for (int h = 0; h < HG; h++)
            _mm256_storeu_ps(c->acc + (size_t)(h0 + h) * D + j, a[h]);
    }
}

TD_INLINE void heads(const td_attn_chunk *c, const uint16_t *K, const uint16_t *V, int nv, int h0, int HG,
                     const int bf16, float *pt, const char *pfk, const char *pfv) {
    switch (HG) {
    case 1: tile(c, K, V, nv, h0, 1, bf16, pt, pfk, pfv); break;
    case 2: tile(c, K, V, nv, h0, 2, bf16, pt, pfk, pfv); break;
    case 3: tile(c, K, V, nv, h0, 3, bf16, pt, pfk, pfv); break;
    default: tile(c, K, V, nv, h0, 4, bf16, pt, pfk, pfv); break;
    }
}

TD_INLINE void chunk(const td_attn_chunk *c, const int bf16) {
    const int G = c->group;
    td_attn_chunk_reset(c);
    float *pt = c->scratch;

    for (int pos = 0; pos < c->n_tokens; pos += 32) {
        const td_attn_pos at = td_attn_pos_at(c, pos);
        for (int kh = 0; kh < c->n_kv; kh++) {
            const td_attn_pass ps = td_attn_pass_at(c, &at, kh);
            for (int h0 = kh * G; h0 < (kh + 1) * G; h0 += MAX_HEADS) {
                const int HG = (kh + 1) * G - h0 < MAX_HEADS ? (kh + 1) * G - h0 : MAX_HEADS;
                const int first = h0 == kh * G; /* prefetch once per kv head */
                heads(c, ps.ka, ps.va, ps.na, h0, HG, bf16, pt, first ? ps.pfk[0] : NULL, first ? ps.pfv[0] : NULL);
                if (ps.nb)
                    heads(c, ps.kb, ps.vb, ps.nb, h0, HG, bf16, pt, first ? ps.pfk[1] : NULL, first ? ps.pfv[1] : NULL);
            }
        }
    }
}

void td_attn_kernel_avx2(const td_attn_chunk *c) {
    if (c->dtype == TD_DTYPE_BF16)
        chunk(c, 1);
    else
        chunk(c, 0);
}
