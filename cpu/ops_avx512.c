/* AVX-512 paths of the Llama row operations (cpu/ops.h). bf16 outputs are
 * rounded exactly as td_f32_to_bf16 rounds. Built with the AVX-512 flags of
 * cpu/attention_avx512.c. */
#include <immintrin.h>

#include "cpu/ops_impl.h"
#include "cpu/simd_avx512.h"

TD_INLINE void store16(void *out, int64_t i, __mmask16 m, __m512 v, td_dtype dt) {
    if (dt == TD_DTYPE_BF16)
        _mm256_mask_storeu_epi16((uint16_t *)out + i, m, td_to_bf16_avx512(v));
    else
        _mm512_mask_storeu_ps((float *)out + i, m, v);
}

void td_rmsnorm_row_avx512(int64_t n, const float *x, const float *w, float eps, void *out, td_dtype out_dtype) {
    /* Two accumulators of 16 partial sums: the sum of squares of a row of a
     * few thousand activations loses nothing that matters in f32. */
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        s0 = _mm512_fmadd_ps(a, a, s0);
        s1 = _mm512_fmadd_ps(b, b, s1);
    }
    for (; i < n; i += 16) {
        __m512 a = _mm512_maskz_loadu_ps(td_lanes_avx512((int)(n - i)), x + i);
        s0 = _mm512_fmadd_ps(a, a, s0);
    }
    float ss = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    const __m512 r = _mm512_set1_ps(1.0f / sqrtf(ss / (float)n + eps));
    for (i = 0; i < n; i += 16) {
        __mmask16 m = td_lanes_avx512((int)(n - i));
        __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), r), _mm512_maskz_loadu_ps(m, w + i));
        store16(out, i, m, v, out_dtype);
    }
}

void td_swiglu_row_avx512(int64_t n, const float *gu, void *out, td_dtype out_dtype) {
    const __m512 nlog2e = _mm512_set1_ps(-1.4426950408889634f), one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = td_lanes_avx512((int)(n - i));
        __m512 g = _mm512_maskz_loadu_ps(m, gu + i), u = _mm512_maskz_loadu_ps(m, gu + n + i);
        /* e^-g, capped at 2^126 (g below about -87) so that 1 + e stays
         * finite and its reciprocal normal: silu(g) is then below 1e-36,
         * and the limit, -0, is within rounding of that. */
        __m512 e = td_exp2_avx512(_mm512_min_ps(_mm512_mul_ps(g, nlog2e), _mm512_set1_ps(126.0f)));
        /* g / (1 + e) as g * (1 / (1 + e)): vdivps is several times slower
         * than a 14-bit reciprocal plus one Newton step (~2^-23 relative,
         * as good as the division). */
        __m512 d = _mm512_add_ps(one, e), r = _mm512_rcp14_ps(d);
        r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
        __m512 s = _mm512_mul_ps(g, r);
        store16(out, i, m, _mm512_mul_ps(s, u), out_dtype);
    }
}

void td_rope_avx512(float *x, int32_t n_heads, int32_t head_dim, int32_t rope_dim, const float *cs) {
    /* (a, b) -> (a c - b s, b c + a s): x * (c, c) + swap(x) * (-s, s) */
    for (int32_t h = 0; h < n_heads; h++) {
        float *v = x + (int64_t)h * head_dim;
        for (int32_t i = 0; i < rope_dim; i += 16) {
            const __mmask16 m = td_lanes_avx512(rope_dim - i);
            const __m512 a = _mm512_maskz_loadu_ps(m, v + i);
            const __m512 sw = _mm512_permute_ps(a, 0xb1); /* swap within each pair */
            const __m512 r = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m, cs + i),
                                             _mm512_mul_ps(sw, _mm512_maskz_loadu_ps(m, cs + rope_dim + i)));
            _mm512_mask_storeu_ps(v + i, m, r);
        }
    }
}
