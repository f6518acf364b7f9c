/* Scalar f16 / bf16 conversions (base/dtype.h) against the CPU's own
 * conversion instructions, an independent oracle: F16C (vcvtph2ps /
 * vcvtps2ph, round to nearest even) and AVX512_BF16 (vcvtneps2bf16). */
#include <immintrin.h>
#include <string.h>

#include "base/dtype.h"
#include "cpu/isa.h"
#include "tests/test_util.h"

__attribute__((target("f16c"))) static float hw_f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f) {
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}
__attribute__((target("avx512f,avx512vl,avx512bf16"))) static uint16_t hw_f32_to_bf16(float f) {
    __m128bh r = _mm_cvtneps_pbh(_mm_set1_ps(f));
    uint16_t out[8];
    memcpy(out, &r, sizeof out);
    return out[0];
}

static int is_nan16(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff); }

static void test_f16_to_f32_all(void) {
    if (!td_isa_supported(TD_ISA_AVX2)) {
        CU_PASS("no F16C: skipped");
        return;
    }
    for (uint32_t h = 0; h < 65536; h++) {
        float a = td_f16_to_f32((uint16_t)h), b = hw_f16_to_f32((uint16_t)h);
        if (is_nan16((uint16_t)h)) {
            CU_ASSERT(isnan(a));
        } else if (td_f32_bits(a) != td_f32_bits(b)) {
            fprintf(stderr, "\n  f16 0x%04x: got %a, hardware %a\n", h, a, b);
            CU_FAIL_FATAL("f16 -> f32 differs from F16C");
        }
    }
}

static void check_f32_to_f16(float f) {
    uint16_t a = td_f32_to_f16(f), b = hw_f32_to_f16(f);
    if (isnan(f)) {
        CU_ASSERT(is_nan16(a));
    } else if (a != b) {
        fprintf(stderr, "\n  f32 %a (0x%08x): got 0x%04x, hardware 0x%04x\n", f, td_f32_bits(f), a, b);
        CU_FAIL_FATAL("f32 -> f16 differs from F16C");
    }
}

static void test_f32_to_f16(void) {
    if (!td_isa_supported(TD_ISA_AVX2)) {
        CU_PASS("no F16C: skipped");
        return;
    }
    /* every f16 value, and the midpoints and near-midpoints between
     * neighbours: the rounding cases */
    for (uint32_t h = 0; h < 0x7c00; h++) {
        float x = td_f16_to_f32((uint16_t)h), y = td_f16_to_f32((uint16_t)(h + 1));
        float mid = x + (y - x) / 2;
        const float cases[] = {x, mid, nextafterf(mid, 0), nextafterf(mid, INFINITY)};
        for (int i = 0; i < 4; i++) {
            check_f32_to_f16(cases[i]);
            check_f32_to_f16(-cases[i]);
        }
    }
    const float special[] = {INFINITY, -INFINITY,       NAN,      65504.0f,   65519.99f, 65520.0f,    1e10f, 1e-10f,
                             0x1p-25f, 0x1.000002p-25f, 0x1p-24f, 0x1.8p-24f, 0x1p-14f,  0x1.ffcp-15f};
    for (size_t i = 0; i < sizeof special / sizeof *special; i++)
        check_f32_to_f16(special[i]);
    td_rng r = {42};
    for (int i = 0; i < 2000000; i++)
        check_f32_to_f16(td_f32_from_bits((uint32_t)td_rng_next(&r)));
}

static void test_bf16(void) {
    /* every bf16 value survives the round trip */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = td_bf16_to_f32((uint16_t)h);
        if (isnan(f)) {
            CU_ASSERT(isnan(td_bf16_to_f32(td_f32_to_bf16(f))));
        } else {
            CU_ASSERT_EQUAL_FATAL(td_f32_to_bf16(f), h);
        }
    }
    /* ties go to even */
    CU_ASSERT_EQUAL(td_f32_to_bf16(td_f32_from_bits(0x3f808000u)), 0x3f80);
    CU_ASSERT_EQUAL(td_f32_to_bf16(td_f32_from_bits(0x3f818000u)), 0x3f82);
    CU_ASSERT_EQUAL(td_f32_to_bf16(td_f32_from_bits(0x3f808001u)), 0x3f81);
    CU_ASSERT_EQUAL(td_f32_to_bf16(td_f32_from_bits(0x7f7fffffu)), 0x7f80); /* FLT_MAX rounds to inf */
    if (!td_isa_supported(TD_ISA_AVX512BF16))
        return;
    td_rng r = {7};
    for (int i = 0; i < 2000000; i++) {
        float f = td_f32_from_bits((uint32_t)td_rng_next(&r));
        /* the instruction flushes subnormal inputs to zero; the reference keeps them */
        if (isnan(f) || (fpclassify(f) == FP_SUBNORMAL))
            continue;
        uint16_t a = td_f32_to_bf16(f), b = hw_f32_to_bf16(f);
        if (a != b) {
            fprintf(stderr, "\n  f32 %a: got 0x%04x, hardware 0x%04x\n", f, a, b);
            CU_FAIL_FATAL("f32 -> bf16 differs from vcvtneps2bf16");
        }
    }
}

static void test_names(void) {
    CU_ASSERT_STRING_EQUAL(td_dtype_name(TD_DTYPE_BF16), "bf16");
    CU_ASSERT_EQUAL(td_dtype_size(TD_DTYPE_F16), 2);
    CU_ASSERT_EQUAL(td_dtype_size(TD_DTYPE_F32), 4);
    CU_ASSERT_STRING_EQUAL(tandem_status_name(TANDEM_ERR_KV_FULL), "TANDEM_ERR_KV_FULL");
    CU_ASSERT_STRING_EQUAL(tandem_status_name((tandem_status)999), "TANDEM_ERR_UNKNOWN");
    CU_ASSERT_STRING_EQUAL(tandem_version(), TANDEM_VERSION_STRING);
}

void td_test_register(void) {
    static const td_test tests[] = {
        {"f16 to f32, all values, vs F16C", test_f16_to_f32_all},
        {"f32 to f16, rounding cases and random, vs F16C", test_f32_to_f16},
        {"bf16 round trip, ties, vs vcvtneps2bf16", test_bf16},
        {"names and sizes", test_names},
        {NULL, NULL},
    };
    td_add_suite("dtype", tests);
}
