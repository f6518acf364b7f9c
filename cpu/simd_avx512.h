/* AVX-512 helpers shared by the kernels compiled for AVX-512. Include only
 * from files built with -mavx512f -mavx512bw -mavx512dq -mavx512vl. */
#ifndef TD_CPU_SIMD_AVX512_H
#define TD_CPU_SIMD_AVX512_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "cpu/exp2_poly.h"

#define TD_INLINE static inline __attribute__((always_inline))

/* 2^x for each lane: the polynomial of exp2_poly.h on the fraction, scaled
 * by 2^round(x) with vscalefps, which also gives 0 for very negative x
 * (clamped first so that -inf is not NaN). */
TD_INLINE __m512 td_exp2_avx512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-150.0f));
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(TD_EXP2_C6);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(TD_EXP2_C5));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(TD_EXP2_C4));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(TD_EXP2_C3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(TD_EXP2_C2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(TD_EXP2_C1));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* td_f32_to_bf16 on 16 lanes: round to nearest even on the bits; NaN keeps
 * its sign and top payload, made quiet. */
TD_INLINE __m256i td_to_bf16_avx512(__m512 x) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(r);
}

/* 32 16-bit values as 16 pairs -> the 16 first and the 16 second of each
 * pair, as f32. For a K row these are dims 2p and 2p+1 of 16 tokens; for a V
 * row, tokens 2s and 2s+1 of 16 dims. */
TD_INLINE void td_split_bf16_avx512(__m512i x, __m512 *lo, __m512 *hi) {
    *lo = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
    *hi = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32((int)0xffff0000u)));
}

TD_INLINE void td_split_f16_avx512(__m512i x, __m512 *lo, __m512 *hi) {
    *lo = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(x));
    *hi = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(x, 16)));
}

TD_INLINE __mmask16 td_lanes_avx512(int n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u); }

TD_INLINE void td_scale_row_avx512(float *row, int n, float r) {
    const __m512 vr = _mm512_set1_ps(r);
    for (int i = 0; i < n; i += 16)
        _mm512_storeu_ps(row + i, _mm512_mul_ps(_mm512_loadu_ps(row + i), vr));
}

/* One online-softmax step of one query head over a pass of two 16-token
 * sub-tiles with scores sa, sb (log2 units; lanes outside va, vb are not
 * tokens). The head's reference max *m moves only when a score exceeds it by
 * more than `slack` (then its 16 partial row sums lv and its output row acc,
 * D floats, are rescaled). Returns the weights in *pa, *pb (0 outside the
 * valid lanes); the caller adds them (or their rounded values) to lv. */
TD_INLINE void td_softmax_step_avx512(__m512 sa, __m512 sb, __mmask16 va, __mmask16 vb, float slack, float *m,
                                      float *lv, float *acc, int D, __m512 *pa, __m512 *pb) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    sa = _mm512_mask_mov_ps(ninf, va, sa);
    sb = _mm512_mask_mov_ps(ninf, vb, sb);
    __m512 smax = _mm512_max_ps(sa, sb);
    if (_mm512_cmp_ps_mask(smax, _mm512_set1_ps(*m + slack), _CMP_GT_OQ)) {
        float mx = _mm512_reduce_max_ps(smax);
        if (*m != -INFINITY) {
            float r = exp2f(*m - mx);
            _mm512_store_ps(lv, _mm512_mul_ps(_mm512_load_ps(lv), _mm512_set1_ps(r)));
            td_scale_row_avx512(acc, D, r);
        }
        *m = mx;
    }
    const __m512 vm = _mm512_set1_ps(*m);
    *pa = _mm512_maskz_mov_ps(va, td_exp2_avx512(_mm512_sub_ps(sa, vm)));
    *pb = _mm512_maskz_mov_ps(vb, td_exp2_avx512(_mm512_sub_ps(sb, vm)));
}

#endif /* TD_CPU_SIMD_AVX512_H */
