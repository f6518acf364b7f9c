/* AVX-512 dequantization kernels: a block decoded into 16-lane f32 vectors,
 * each value computed with the scalar path's operations (integer unpacking,
 * one conversion, then the same multiplies and adds), so the results are the
 * scalar path's bit for bit; bf16 rounding is done on the integer bits
 * exactly as td_f32_to_bf16 does (vcvtneps2bf16 would flush subnormals).
 * Built with the AVX-512 flags of cpu/attention_avx512.c. */
#include <immintrin.h>
#include <string.h>

#include "base/dtype.h"
#include "cpu/simd_avx512.h"
#include "engine/dequant.h"
#include "engine/dequant_impl.h"

/* Scales are converted by the scalar code (once per block), so a NaN scale
 * keeps the payload the scalar path gives it. */
TD_INLINE float f16_at(const uint8_t *p) { return td_f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

TD_INLINE __m512i load_u8x16(const uint8_t *p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)); }

TD_INLINE __m512 q_times(__m512i q, __m512 d) { return _mm512_mul_ps(_mm512_cvtepi32_ps(q), d); }

/* ---- element types: 16 at a time, a masked tail (src has no alignment) --- */

/* 16 f16 to f32. vcvtph2ps quiets a signalling NaN; td_f16_to_f32 keeps it,
 * so NaN lanes are rebuilt the way it does (sign, all-ones exponent, payload
 * shifted up). */
TD_INLINE __m512 f16x16(__m256i h) {
    __m512 f = _mm512_cvtph_ps(h);
    const __mmask16 nan =
        _mm256_cmpgt_epu16_mask(_mm256_and_si256(h, _mm256_set1_epi16(0x7fff)), _mm256_set1_epi16(0x7c00));
    if (nan) {
        const __m512i e = _mm512_cvtepu16_epi32(h);
        const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(e, _mm512_set1_epi32(0x8000)), 16);
        const __m512i pay = _mm512_slli_epi32(_mm512_and_si512(e, _mm512_set1_epi32(0x3ff)), 13);
        const __m512i bits = _mm512_or_si512(_mm512_or_si512(sign, pay), _mm512_set1_epi32(0x7f800000));
        f = _mm512_mask_mov_ps(f, nan, _mm512_castsi512_ps(bits));
    }
    return f;
}

TD_INLINE __m512 bf16x16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }

static void f32_f32(const uint8_t *src, float *dst, int64_t n) { memcpy(dst, src, (size_t)n * sizeof(float)); }

static void f32_bf16(const uint8_t *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), td_to_bf16_avx512(_mm512_loadu_ps(src + 4 * i)));
    if (i < n) {
        const __mmask16 m = td_lanes_avx512((int)(n - i));
        _mm256_mask_storeu_epi16(dst + i, m, td_to_bf16_avx512(_mm512_maskz_loadu_ps(m, src + 4 * i)));
    }
}

#define HALF_KERNELS(name, CONVERT)                                                                                    \
    static void name##_f32(const uint8_t *src, float *dst, int64_t n) {                                                \
        int64_t i = 0;                                                                                                 \
        for (; i + 16 <= n; i += 16)                                                                                   \
            _mm512_storeu_ps(dst + i, CONVERT(_mm256_loadu_si256((const __m256i *)(src + 2 * i))));                    \
        if (i < n) {                                                                                                   \
            const __mmask16 m = td_lanes_avx512((int)(n - i));                                                         \
            _mm512_mask_storeu_ps(dst + i, m, CONVERT(_mm256_maskz_loadu_epi16(m, src + 2 * i)));                      \
        }                                                                                                              \
    }                                                                                                                  \
    static void name##_bf16(const uint8_t *src, uint16_t *dst, int64_t n) {                                            \
        int64_t i = 0;                                                                                                 \
        for (; i + 16 <= n; i += 16)                                                                                   \
            _mm256_storeu_si256((__m256i *)(dst + i),                                                                  \
                                td_to_bf16_avx512(CONVERT(_mm256_loadu_si256((const __m256i *)(src + 2 * i)))));       \
        if (i < n) {                                                                                                   \
            const __mmask16 m = td_lanes_avx512((int)(n - i));                                                         \
            _mm256_mask_storeu_epi16(dst + i, m,                                                                       \
                                     td_to_bf16_avx512(CONVERT(_mm256_maskz_loadu_epi16(m, src + 2 * i))));            \
        }                                                                                                              \
    }

HALF_KERNELS(f16, f16x16)
HALF_KERNELS(bf16, bf16x16)

/* ---- block types: a block into v[0..NV), v[k] = elements 16k..16k+15 ------ */

TD_INLINE void q4_0_dec(const uint8_t *b, __m512 v[2]) {
    const __m512 d = _mm512_set1_ps(f16_at(b));
    const __m512i q = load_u8x16(b + 2), k8 = _mm512_set1_epi32(8);
    v[0] = q_times(_mm512_sub_epi32(_mm512_and_si512(q, _mm512_set1_epi32(0xf)), k8), d);
    v[1] = q_times(_mm512_sub_epi32(_mm512_srli_epi32(q, 4), k8), d);
}

TD_INLINE void q4_1_dec(const uint8_t *b, __m512 v[2]) {
    const __m512 d = _mm512_set1_ps(f16_at(b)), m = _mm512_set1_ps(f16_at(b + 2));
    const __m512i q = load_u8x16(b + 4);
    v[0] = _mm512_add_ps(q_times(_mm512_and_si512(q, _mm512_set1_epi32(0xf)), d), m);
    v[1] = _mm512_add_ps(q_times(_mm512_srli_epi32(q, 4), d), m);
}

/* The low nibbles with bit 4 of element j taken from bit j of qh. */
TD_INLINE void q5_unpack(const uint8_t *qh_p, const uint8_t *qs, __m512i *lo, __m512i *hi) {
    uint32_t qh;
    memcpy(&qh, qh_p, 4); /* little-endian host (x86) */
    const __m512i q = load_u8x16(qs), b4 = _mm512_set1_epi32(16);
    const __m512i l = _mm512_and_si512(q, _mm512_set1_epi32(0xf)), h = _mm512_srli_epi32(q, 4);
    *lo = _mm512_mask_or_epi32(l, (__mmask16)(qh & 0xffff), l, b4);
    *hi = _mm512_mask_or_epi32(h, (__mmask16)(qh >> 16), h, b4);
}

TD_INLINE void q5_0_dec(const uint8_t *b, __m512 v[2]) {
    const __m512 d = _mm512_set1_ps(f16_at(b));
    __m512i lo, hi;
    q5_unpack(b + 2, b + 6, &lo, &hi);
    const __m512i k16 = _mm512_set1_epi32(16);
    v[0] = q_times(_mm512_sub_epi32(lo, k16), d);
    v[1] = q_times(_mm512_sub_epi32(hi, k16), d);
}

TD_INLINE void q5_1_dec(const uint8_t *b, __m512 v[2]) {
    const __m512 d = _mm512_set1_ps(f16_at(b)), m = _mm512_set1_ps(f16_at(b + 2));
    __m512i lo, hi;
    q5_unpack(b + 4, b + 8, &lo, &hi);
    v[0] = _mm512_add_ps(q_times(lo, d), m);
    v[1] = _mm512_add_ps(q_times(hi, d), m);
}

TD_INLINE void q8_0_dec(const uint8_t *b, __m512 v[2]) {
    const __m512 d = _mm512_set1_ps(f16_at(b));
    v[0] = q_times(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 2))), d);
    v[1] = q_times(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 18))), d);
}

/* Chunk c (64 elements) reads 32 bytes: the low nibbles are v[4c], v[4c + 1]
 * (sub-block 2c), the high nibbles v[4c + 2], v[4c + 3] (sub-block 2c + 1). */
TD_INLINE void q4_k_dec(const uint8_t *b, __m512 v[16]) {
    const float d = f16_at(b), dmin = f16_at(b + 2);
    const uint8_t *scales = b + 4, *qs = b + 16;
    const __m512i m4 = _mm512_set1_epi32(0xf);
    for (int c = 0; c < 4; c++) {
        int sc0, mn0, sc1, mn1;
        td_q4_k_scale_min(2 * c, scales, &sc0, &mn0);
        td_q4_k_scale_min(2 * c + 1, scales, &sc1, &mn1);
        const __m512 d0 = _mm512_set1_ps(d * (float)sc0), min0 = _mm512_set1_ps(dmin * (float)mn0);
        const __m512 d1 = _mm512_set1_ps(d * (float)sc1), min1 = _mm512_set1_ps(dmin * (float)mn1);
        for (int half = 0; half < 2; half++) {
            const __m512i q = load_u8x16(qs + 32 * c + 16 * half);
            v[4 * c + half] = _mm512_sub_ps(q_times(_mm512_and_si512(q, m4), d0), min0);
            v[4 * c + 2 + half] = _mm512_sub_ps(q_times(_mm512_srli_epi32(q, 4), d1), min1);
        }
    }
}

/* Half h, bytes l0..l0+15 (l0 = 0, 16): element 128h + 32k + l0 + i is
 * v[8h + 2k + l0 / 16], with scale 2k + l0 / 16 of the half. The 6-bit values
 * are assembled in bytes (16-bit shifts, then per-byte masks), made signed by
 * subtracting 32, then widened. */
TD_INLINE void q6_k_dec(const uint8_t *b, __m512 v[16]) {
    const float d = f16_at(b + 208);
    const __m128i m4 = _mm_set1_epi8(0xf), m2 = _mm_set1_epi8(3), k32 = _mm_set1_epi8(32);
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
        const int8_t *sc = (const int8_t *)(b + 192 + 8 * h);
        for (int s = 0; s < 2; s++) {
            const __m128i a = _mm_loadu_si128((const __m128i *)(ql + 16 * s));
            const __m128i c = _mm_loadu_si128((const __m128i *)(ql + 32 + 16 * s));
            const __m128i hb = _mm_loadu_si128((const __m128i *)(qh + 16 * s));
            __m128i q[4];
            q[0] = _mm_or_si128(_mm_and_si128(a, m4), _mm_slli_epi16(_mm_and_si128(hb, m2), 4));
            q[1] = _mm_or_si128(_mm_and_si128(c, m4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(hb, 2), m2), 4));
            q[2] = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(a, 4), m4),
                                _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(hb, 4), m2), 4));
            q[3] = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(c, 4), m4),
                                _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(hb, 6), m2), 4));
            for (int k = 0; k < 4; k++) {
                const __m512 ds = _mm512_set1_ps(d * (float)sc[2 * k + s]);
                v[8 * h + 2 * k + s] = q_times(_mm512_cvtepi8_epi32(_mm_sub_epi8(q[k], k32)), ds);
            }
        }
    }
}

#define BLOCK_KERNELS(name, NV, BYTES)                                                                                 \
    static void name##_f32(const uint8_t *src, float *dst, int64_t n_blocks) {                                         \
        for (int64_t i = 0; i < n_blocks; i++) {                                                                       \
            __m512 v[NV];                                                                                              \
            name##_dec(src + i * (BYTES), v);                                                                          \
            for (int k = 0; k < (NV); k++)                                                                             \
                _mm512_storeu_ps(dst + (i * (NV) + k) * 16, v[k]);                                                     \
        }                                                                                                              \
    }                                                                                                                  \
    static void name##_bf16(const uint8_t *src, uint16_t *dst, int64_t n_blocks) {                                     \
        for (int64_t i = 0; i < n_blocks; i++) {                                                                       \
            __m512 v[NV];                                                                                              \
            name##_dec(src + i * (BYTES), v);                                                                          \
            for (int k = 0; k < (NV); k++)                                                                             \
                _mm256_storeu_si256((__m256i *)(dst + (i * (NV) + k) * 16), td_to_bf16_avx512(v[k]));                  \
        }                                                                                                              \
    }

BLOCK_KERNELS(q4_0, 2, 18)
BLOCK_KERNELS(q4_1, 2, 20)
BLOCK_KERNELS(q5_0, 2, 22)
BLOCK_KERNELS(q5_1, 2, 24)
BLOCK_KERNELS(q8_0, 2, 34)
BLOCK_KERNELS(q4_k, 16, 144)
BLOCK_KERNELS(q6_k, 16, 210)

td_dequant_kernels td_dequant_kernels_avx512(uint32_t type) {
    switch (type) {
    case TD_GGML_F32: return (td_dequant_kernels){f32_f32, f32_bf16};
    case TD_GGML_F16: return (td_dequant_kernels){f16_f32, f16_bf16};
    case TD_GGML_BF16: return (td_dequant_kernels){bf16_f32, bf16_bf16};
    case TD_GGML_Q4_0: return (td_dequant_kernels){q4_0_f32, q4_0_bf16};
    case TD_GGML_Q4_1: return (td_dequant_kernels){q4_1_f32, q4_1_bf16};
    case TD_GGML_Q5_0: return (td_dequant_kernels){q5_0_f32, q5_0_bf16};
    case TD_GGML_Q5_1: return (td_dequant_kernels){q5_1_f32, q5_1_bf16};
    case TD_GGML_Q8_0: return (td_dequant_kernels){q8_0_f32, q8_0_bf16};
    case TD_GGML_Q4_K: return (td_dequant_kernels){q4_k_f32, q4_k_bf16};
    case TD_GGML_Q6_K: return (td_dequant_kernels){q6_k_f32, q6_k_bf16};
    default: return (td_dequant_kernels){NULL, NULL};
    }
}
