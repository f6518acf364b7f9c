/* AVX-512 helpers shared by the kernels compiled for AVX-512. Include only
 * from files built with -mavx512f -mavx512bw -mavx512dq -mavx512vl. */
#ifndef TD_CPU_SIMD_AVX512_H
#define TD_CPU_SIMD_AVX512_H

#include <immintrin.h>
#include <stdint.h>

#define TD_INLINE static inline __attribute__((always_inline))

/* 2^x for each lane. Taylor polynomial of degree 6 for 2^f on |f| <= 1/2
 * (relative error < 2e-7), scaled by 2^round(x) with vscalefps, which also
 * gives 0 for very negative x (clamped first so that -inf is not NaN). */
TD_INLINE __m512 td_exp2_avx512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-150.0f));
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.5403530393381606e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
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

#endif /* TD_CPU_SIMD_AVX512_H */
