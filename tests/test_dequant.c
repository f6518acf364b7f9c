/* Dequantization: every type, every path, against an independent oracle and
 * against each other.
 *
 * - Oracle: the vectors tests/oracle/dequant_vectors.py writes (the CTest
 *   fixture dequant_vectors, after scripts/fetch-model): real blocks from
 *   SmolLM2-135M-Instruct (f32, q4_1, q8_0), real weights re-quantized by the
 *   gguf package (f16, bf16, q4_0, q5_0, q5_1), random blocks of every block
 *   type (the only source for q4_K and q6_K, which the file lacks and the
 *   package cannot quantize), with the package's gguf.quants.dequantize as
 *   the expected values.
 * - Tolerance: none; f32 results must be equal bit for bit (NaN: NaN). numpy
 *   computes in f32 too, with the same operations in the same order, and
 *   order would not even matter: f16 -> f32 is exact and every product of a
 *   scale (11 significant bits), a sub-block scale (<= 7) and a quant (<= 8)
 *   fits the 24-bit f32 significand (dequant.h), so the only rounding is that
 *   of the final d * q + m or (d * sc) * q - dmin * m, on both sides, fused or
 *   not. Any difference is a bug, not rounding. bf16 results must equal
 *   td_f32_to_bf16 of the expected f32 bit for bit.
 * - Scalar vs AVX-512: bit for bit too, NaN payloads included, on random
 *   blocks with any scales (NaN and infinite ones included), odd lengths and
 *   unaligned buffers.
 * - Scale packing: the q4_K and q6_K vectors are checked to set and clear
 *   every scale bit, and hand-packed blocks (packed here from the format
 *   description, independently of the kernels) put every sub-block's scale
 *   where it belongs. */
#include <stdlib.h>
#include <string.h>

#include "base/dtype.h"
#include "engine/dequant.h"
#include "tests/test_util.h"

#ifndef TD_DEQUANT_VECTORS
#error "TD_DEQUANT_VECTORS (the oracle fixture path) is set by tests/CMakeLists.txt"
#endif

static const uint32_t all_types[] = {TD_GGML_F32,  TD_GGML_F16,  TD_GGML_BF16, TD_GGML_Q4_0, TD_GGML_Q4_1,
                                     TD_GGML_Q5_0, TD_GGML_Q5_1, TD_GGML_Q8_0, TD_GGML_Q4_K, TD_GGML_Q6_K};
#define N_ALL (sizeof all_types / sizeof all_types[0])

/* ggml's block sizes (ggml-common.h), written out again here. */
static void ggml_block(uint32_t type, int64_t *elems, size_t *bytes) {
    switch (type) {
    case TD_GGML_F32: *elems = 1, *bytes = 4; break;
    case TD_GGML_F16:
    case TD_GGML_BF16: *elems = 1, *bytes = 2; break;
    case TD_GGML_Q4_0: *elems = 32, *bytes = 18; break;
    case TD_GGML_Q4_1: *elems = 32, *bytes = 20; break;
    case TD_GGML_Q5_0: *elems = 32, *bytes = 22; break;
    case TD_GGML_Q5_1: *elems = 32, *bytes = 24; break;
    case TD_GGML_Q8_0: *elems = 32, *bytes = 34; break;
    case TD_GGML_Q4_K: *elems = 256, *bytes = 144; break;
    case TD_GGML_Q6_K: *elems = 256, *bytes = 210; break;
    default: *elems = 0, *bytes = 0;
    }
}

static int type_index(uint32_t type) {
    for (size_t i = 0; i < N_ALL; i++)
        if (all_types[i] == type)
            return (int)i;
    return -1;
}

/* Equal bits, or both NaN when nan_any. */
static int same_f32(float a, float b, int nan_any) {
    if (nan_any && a != a && b != b)
        return 1;
    return td_f32_bits(a) == td_f32_bits(b);
}
static int same_bf16(uint16_t a, uint16_t b, int nan_any) {
    if (nan_any && (a & 0x7fff) > 0x7f80 && (b & 0x7fff) > 0x7f80)
        return 1;
    return a == b;
}

/* ---- the oracle vectors ------------------------------------------------------ */

enum { SOURCE_FILE = 0, SOURCE_QUANTIZED = 1, SOURCE_RANDOM = 2 };

typedef struct vec_record {
    uint32_t type, source;
    char label[65];
    int64_t n;
    size_t n_bytes;
    const uint8_t *raw;
    float *expected;
} vec_record;

typedef struct vectors {
    uint8_t *file;
    uint32_t n;
    vec_record *recs;
} vectors;

static void vectors_free(vectors *v) {
    for (uint32_t i = 0; v->recs && i < v->n; i++)
        free(v->recs[i].expected);
    free(v->recs);
    free(v->file);
    memset(v, 0, sizeof *v);
}

/* Reads the fixture; on a problem prints it and returns 0. */
static int vectors_load(vectors *v) {
    memset(v, 0, sizeof *v);
    const char *path = TD_DEQUANT_VECTORS;
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr,
                "\n  cannot open %s: run the tests through ctest (fixture dequant_vectors), or "
                "tests/oracle/dequant_vectors.py --model <gguf> --out %s\n",
                path, path);
        return 0;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    v->file = malloc(size > 0 ? (size_t)size : 1);
    size_t got = v->file ? fread(v->file, 1, (size_t)size, f) : 0;
    fclose(f);
    if (size < 12 || got != (size_t)size || memcmp(v->file, "TDDQ", 4)) {
        fprintf(stderr, "\n  %s: not a dequant_vectors file\n", path);
        return 0;
    }
    uint32_t version;
    memcpy(&version, v->file + 4, 4);
    memcpy(&v->n, v->file + 8, 4);
    if (version != 1 || v->n == 0 || v->n > 10000) {
        fprintf(stderr, "\n  %s: version %u, %u records: regenerate it\n", path, version, v->n);
        return 0;
    }
    v->recs = calloc(v->n, sizeof *v->recs);
    size_t pos = 12;
    for (uint32_t i = 0; i < v->n; i++) {
        vec_record *r = &v->recs[i];
        uint64_t n, nb;
        if ((size_t)size - pos < 88)
            goto truncated;
        memcpy(&r->type, v->file + pos, 4);
        memcpy(&r->source, v->file + pos + 4, 4);
        memcpy(r->label, v->file + pos + 8, 64);
        memcpy(&n, v->file + pos + 72, 8);
        memcpy(&nb, v->file + pos + 80, 8);
        pos += 88;
        if (n > (1u << 24) || nb > (size_t)size - pos || 4 * n > (size_t)size - pos - nb)
            goto truncated;
        r->n = (int64_t)n;
        r->n_bytes = (size_t)nb;
        r->raw = v->file + pos;
        r->expected = malloc(4 * n + 4);
        memcpy(r->expected, v->file + pos + nb, 4 * n);
        pos += nb + 4 * n;
    }
    if (pos != (size_t)size)
        goto truncated;
    return 1;
truncated:
    fprintf(stderr, "\n  %s: truncated or inconsistent record: regenerate it\n", path);
    return 0;
}

static const char *source_name(uint32_t s) {
    return s == SOURCE_FILE ? "file" : s == SOURCE_QUANTIZED ? "quantized" : s == SOURCE_RANDOM ? "random" : "?";
}

/* Checks each record with every ISA this CPU has, f32 and bf16 outputs. */
static void test_oracle(void) {
    vectors v;
    if (!vectors_load(&v)) {
        CU_FAIL("the oracle vectors could not be read");
        vectors_free(&v);
        return;
    }
    int64_t blocks_of_type[N_ALL] = {0}, file_blocks = 0;
    td_error err = {0};
    for (uint32_t i = 0; i < v.n; i++) {
        const vec_record *r = &v.recs[i];
        int ti = type_index(r->type);
        CU_ASSERT_FATAL(ti >= 0);
        int64_t be;
        size_t bb;
        ggml_block(r->type, &be, &bb);
        CU_ASSERT_FATAL(r->n % be == 0 && (size_t)(r->n / be) * bb == r->n_bytes);
        blocks_of_type[ti] += r->n / be;
        if (r->source == SOURCE_FILE && be > 1)
            file_blocks += r->n / be;

        float *out = malloc(sizeof(float) * (size_t)r->n);
        uint16_t *out16 = malloc(sizeof(uint16_t) * (size_t)r->n);
        for (int isa = 0; isa < TD_ISA_COUNT; isa++) {
            if (!td_isa_supported((td_isa)isa))
                continue;
            memset(out, 0xa5, sizeof(float) * (size_t)r->n);
            TD_ASSERT_OK(td_dequant_f32(r->type, r->raw, out, r->n, (td_isa)isa, &err), &err);
            TD_ASSERT_OK(td_dequant_bf16(r->type, r->raw, out16, r->n, (td_isa)isa, &err), &err);
            int64_t bad = 0, bad16 = 0, first = -1;
            for (int64_t j = 0; j < r->n; j++) {
                int ok = same_f32(out[j], r->expected[j], 1);
                int ok16 = same_bf16(out16[j], td_f32_to_bf16(r->expected[j]), 1);
                bad += !ok, bad16 += !ok16;
                if ((!ok || !ok16) && first < 0)
                    first = j;
            }
            if (bad || bad16)
                fprintf(stderr,
                        "\n  %s %s (%s), %s: %lld f32 and %lld bf16 mismatches of %lld; first at %lld: got %.9g "
                        "(bf16 %04x), expected %.9g (bf16 %04x)\n",
                        td_ggml_type_name(r->type), r->label, source_name(r->source), td_isa_name((td_isa)isa),
                        (long long)bad, (long long)bad16, (long long)r->n, (long long)first, out[first], out16[first],
                        r->expected[first], td_f32_to_bf16(r->expected[first]));
            CU_ASSERT_EQUAL(bad, 0);
            CU_ASSERT_EQUAL(bad16, 0);
        }
        free(out);
        free(out16);
    }
    /* every type, with a few hundred blocks (element types: thousands of
     * values), and real blocks from the model file */
    for (size_t t = 0; t < N_ALL; t++) {
        int64_t be;
        size_t bb;
        ggml_block(all_types[t], &be, &bb);
        if (blocks_of_type[t] < (be > 1 ? 256 : 4096))
            fprintf(stderr, "\n  only %lld %s blocks in the vectors\n", (long long)blocks_of_type[t],
                    td_ggml_type_name(all_types[t]));
        CU_ASSERT(blocks_of_type[t] >= (be > 1 ? 256 : 4096));
    }
    CU_ASSERT(file_blocks >= 512);
    vectors_free(&v);
}

/* The q4_K and q6_K oracle blocks must exercise the scale packing: every bit
 * of the scale bytes (and of q6_K's high-bit bytes) is 1 in some block and 0
 * in another, scales go negative (q6_K), and d, dmin are nonzero. With that,
 * a misplaced bit changes some expected value and the oracle test fails. */
static void test_oracle_covers_k_scales(void) {
    vectors v;
    if (!vectors_load(&v)) {
        CU_FAIL("the oracle vectors could not be read");
        vectors_free(&v);
        return;
    }
    int64_t k4 = 0, k6 = 0;
    uint8_t k4_or[12] = {0}, k4_and[12], k6_or[80] = {0}, k6_and[80];
    memset(k4_and, 0xff, sizeof k4_and), memset(k6_and, 0xff, sizeof k6_and);
    int k6_negative = 0, k4_nonzero_dmin = 0;
    for (uint32_t i = 0; i < v.n; i++) {
        const vec_record *r = &v.recs[i];
        if (r->type == TD_GGML_Q4_K)
            for (int64_t b = 0; b < r->n / 256; b++, k4++) {
                const uint8_t *blk = r->raw + b * 144;
                for (int j = 0; j < 12; j++)
                    k4_or[j] |= blk[4 + j], k4_and[j] &= blk[4 + j];
                k4_nonzero_dmin += td_f16_to_f32((uint16_t)(blk[2] | blk[3] << 8)) != 0;
            }
        if (r->type == TD_GGML_Q6_K)
            for (int64_t b = 0; b < r->n / 256; b++, k6++) {
                const uint8_t *blk = r->raw + b * 210;
                for (int j = 0; j < 64; j++) /* qh */
                    k6_or[j] |= blk[128 + j], k6_and[j] &= blk[128 + j];
                for (int j = 0; j < 16; j++) { /* scales */
                    k6_or[64 + j] |= blk[192 + j], k6_and[64 + j] &= blk[192 + j];
                    k6_negative += (int8_t)blk[192 + j] < 0;
                }
            }
    }
    CU_ASSERT(k4 >= 256);
    CU_ASSERT(k6 >= 256);
    for (int j = 0; j < 12; j++)
        CU_ASSERT(k4_or[j] == 0xff && k4_and[j] == 0);
    for (int j = 0; j < 80; j++)
        CU_ASSERT(k6_or[j] == 0xff && k6_and[j] == 0);
    CU_ASSERT(k6_negative > 0);
    CU_ASSERT(k4_nonzero_dmin > k4 / 2);
    fprintf(stderr, "[%lld q4_K and %lld q6_K blocks] ", (long long)k4, (long long)k6);
    vectors_free(&v);
}

/* ---- hand-packed K-quant blocks ------------------------------------------------ */

static void put_f16(uint8_t *p, float f) {
    uint16_t h = td_f32_to_f16(f);
    p[0] = (uint8_t)h, p[1] = (uint8_t)(h >> 8);
}

/* Packs eight 6-bit (scale, min) pairs as ggml's q4_K does (make_qkx /
 * quantize_row_q4_K): pairs 0-3 in the low 6 bits of bytes 0-3 (scales) and
 * 4-7 (mins); pairs 4-7 split into a low nibble in bytes 8-11 (scale low,
 * min high) and their top 2 bits in the top 2 bits of bytes 0-3 (scales) and
 * 4-7 (mins). */
static void pack_q4_k_scales(const int sc[8], const int mn[8], uint8_t out[12]) {
    memset(out, 0, 12);
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            out[j] |= (uint8_t)sc[j];
            out[j + 4] |= (uint8_t)mn[j];
        } else {
            out[j + 4] = (uint8_t)((sc[j] & 0xf) | (mn[j] & 0xf) << 4);
            out[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
            out[j] |= (uint8_t)((mn[j] >> 4) << 6);
        }
    }
}

/* d = 1 and dmin = 1/64 make every value exact: x = sc * q - mn / 64, so each
 * of the 256 values identifies its sub-block's scale and min. */
static void test_q4_k_hand_packed(void) {
    td_rng rng = {41};
    td_error err = {0};
    for (int trial = 0; trial < 64; trial++) {
        uint8_t blk[144];
        int sc[8], mn[8], q[256];
        for (int j = 0; j < 8; j++)
            sc[j] = td_rng_int(&rng, 0, 63), mn[j] = td_rng_int(&rng, 0, 63);
        if (trial == 0)
            for (int j = 0; j < 8; j++)
                sc[j] = 63 - j, mn[j] = 32 + j; /* every top bit set */
        put_f16(blk, 1.0f);
        put_f16(blk + 2, 1.0f / 64);
        pack_q4_k_scales(sc, mn, blk + 4);
        /* element 64c + l is the low nibble of byte 32c + l (l < 32), element
         * 64c + 32 + l its high nibble */
        for (int e = 0; e < 256; e++)
            q[e] = td_rng_int(&rng, 0, 15);
        memset(blk + 16, 0, 128);
        for (int e = 0; e < 256; e++) {
            int c = e / 64, l = e % 64;
            blk[16 + 32 * c + l % 32] |= (uint8_t)(q[e] << (l < 32 ? 0 : 4));
        }
        for (int isa = 0; isa < TD_ISA_COUNT; isa++) {
            if (!td_isa_supported((td_isa)isa))
                continue;
            float y[256];
            TD_ASSERT_OK(td_dequant_f32(TD_GGML_Q4_K, blk, y, 256, (td_isa)isa, &err), &err);
            int bad = 0;
            for (int e = 0; e < 256; e++)
                bad += y[e] != (float)(sc[e / 32] * q[e]) - (float)mn[e / 32] / 64.0f;
            CU_ASSERT_EQUAL(bad, 0);
        }
    }
}

/* q6_K: element e = 128h + 32k + l has its low nibble in ql[64h + l + 32 (k
 * & 1)] (high nibble when k >= 2), its top 2 bits at bits 2k of qh[32h + l],
 * and scale e / 16. d = 1: x = scale * (q - 32), exact. */
static void test_q6_k_hand_packed(void) {
    td_rng rng = {43};
    td_error err = {0};
    for (int trial = 0; trial < 64; trial++) {
        uint8_t blk[210] = {0};
        int q[256], sc[16];
        for (int s = 0; s < 16; s++)
            sc[s] = td_rng_int(&rng, -128, 127);
        for (int e = 0; e < 256; e++)
            q[e] = td_rng_int(&rng, 0, 63);
        for (int e = 0; e < 256; e++) {
            int h = e / 128, k = e % 128 / 32, l = e % 32;
            blk[64 * h + l + 32 * (k & 1)] |= (uint8_t)((q[e] & 0xf) << (k >= 2 ? 4 : 0));
            blk[128 + 32 * h + l] |= (uint8_t)((q[e] >> 4) << (2 * k));
        }
        for (int s = 0; s < 16; s++)
            blk[192 + s] = (uint8_t)(int8_t)sc[s];
        put_f16(blk + 208, 1.0f);
        for (int isa = 0; isa < TD_ISA_COUNT; isa++) {
            if (!td_isa_supported((td_isa)isa))
                continue;
            float y[256];
            TD_ASSERT_OK(td_dequant_f32(TD_GGML_Q6_K, blk, y, 256, (td_isa)isa, &err), &err);
            int bad = 0;
            for (int e = 0; e < 256; e++)
                bad += y[e] != (float)(sc[e / 16] * (q[e] - 32));
            CU_ASSERT_EQUAL(bad, 0);
        }
    }
}

/* ---- scalar vs AVX-512 ------------------------------------------------------- */

/* Random bytes; the f16 scale fields get any f16 value a tenth of the time
 * (NaN and infinity included), otherwise a finite one. */
static void random_blocks(td_rng *rng, uint32_t type, uint8_t *p, int64_t n_blocks, size_t bytes) {
    for (size_t i = 0; i < (size_t)n_blocks * bytes; i++)
        p[i] = (uint8_t)td_rng_next(rng);
    int off[2] = {-1, -1};
    switch (type) {
    case TD_GGML_Q4_0:
    case TD_GGML_Q5_0:
    case TD_GGML_Q8_0: off[0] = 0; break;
    case TD_GGML_Q4_1:
    case TD_GGML_Q5_1:
    case TD_GGML_Q4_K: off[0] = 0, off[1] = 2; break;
    case TD_GGML_Q6_K: off[0] = 208; break;
    default: return; /* element types: every bit pattern */
    }
    for (int64_t b = 0; b < n_blocks; b++)
        for (int k = 0; k < 2 && off[k] >= 0; k++)
            if (td_rng_int(rng, 0, 9))
                put_f16(p + b * bytes + off[k],
                        td_rng_uniform(rng, -2, 2) * (float)(1 << td_rng_int(rng, 0, 12)) / 4096.0f);
}

static void test_scalar_vs_avx512(void) {
    if (!td_isa_supported(TD_ISA_AVX512)) {
        CU_PASS("no AVX-512: skipped");
        fprintf(stderr, "[no AVX-512: skipped] ");
        return;
    }
    td_rng rng = {7};
    td_error err = {0};
    for (size_t t = 0; t < N_ALL; t++) {
        const uint32_t type = all_types[t];
        int64_t be;
        size_t bb;
        ggml_block(type, &be, &bb);
        for (int trial = 0; trial < 40; trial++) {
            /* element types: lengths 1..100 (the masked tail), block types
             * 1..40 blocks; buffers misaligned by 0..3 bytes / elements */
            const int64_t n = be == 1 ? td_rng_int(&rng, 1, 100) : be * td_rng_int(&rng, 1, 40);
            const size_t nbytes = (size_t)(n / be) * bb;
            const int so = td_rng_int(&rng, 0, 3), dof = td_rng_int(&rng, 0, 3);
            uint8_t *src = malloc(nbytes + 3);
            float *a = malloc(sizeof(float) * (size_t)(n + 3)), *b = malloc(sizeof(float) * (size_t)(n + 3));
            uint16_t *a16 = malloc(2 * (size_t)(n + 3)), *b16 = malloc(2 * (size_t)(n + 3));
            random_blocks(&rng, type, src + so, n / be, bb);
            memset(b, 0xa5, sizeof(float) * (size_t)(n + 3));
            TD_ASSERT_OK(td_dequant_f32(type, src + so, a + dof, n, TD_ISA_SCALAR, &err), &err);
            TD_ASSERT_OK(td_dequant_f32(type, src + so, b + dof, n, TD_ISA_AVX512, &err), &err);
            TD_ASSERT_OK(td_dequant_bf16(type, src + so, a16 + dof, n, TD_ISA_SCALAR, &err), &err);
            TD_ASSERT_OK(td_dequant_bf16(type, src + so, b16 + dof, n, TD_ISA_AVX512, &err), &err);
            int bad = 0, bad16 = 0;
            for (int64_t j = 0; j < n; j++) {
                /* NaN payloads too, except where a NaN d meets a NaN m (or
                 * min): which of two NaN operands an add returns depends on
                 * the compiler's operand order */
                bad += !same_f32(a[dof + j], b[dof + j],
                                 type == TD_GGML_Q4_1 || type == TD_GGML_Q5_1 || type == TD_GGML_Q4_K);
                bad16 += !same_bf16(a16[dof + j], b16[dof + j],
                                    type == TD_GGML_Q4_1 || type == TD_GGML_Q5_1 || type == TD_GGML_Q4_K);
            }
            if (bad || bad16)
                fprintf(stderr, "\n  %s n = %lld: %d f32, %d bf16 mismatches\n", td_ggml_type_name(type), (long long)n,
                        bad, bad16);
            CU_ASSERT_EQUAL(bad, 0);
            CU_ASSERT_EQUAL(bad16, 0);
            /* nothing written outside [dof, dof + n) */
            for (int64_t j = 0; j < n + 3; j++)
                if (j < dof || j >= dof + n)
                    CU_ASSERT_EQUAL(td_f32_bits(b[j]), 0xa5a5a5a5u);
            free(src), free(a), free(b), free(a16), free(b16);
        }
    }
}

/* ---- sizes and errors ------------------------------------------------------------ */

static void test_type_info(void) {
    td_error err = {0};
    for (size_t t = 0; t < N_ALL; t++) {
        int64_t be, want_be;
        size_t bb, want_bb;
        ggml_block(all_types[t], &want_be, &want_bb);
        TD_ASSERT_OK(td_ggml_type_info(all_types[t], &be, &bb, &err), &err);
        CU_ASSERT_EQUAL(be, want_be);
        CU_ASSERT_EQUAL(bb, want_bb);
        size_t rb = 0;
        TD_ASSERT_OK(td_ggml_row_bytes(all_types[t], 576 * 256, &rb, &err), &err);
        CU_ASSERT_EQUAL(rb, (size_t)(576 * 256 / want_be) * want_bb);
        TD_ASSERT_OK(td_ggml_row_bytes(all_types[t], 0, &rb, &err), &err);
        CU_ASSERT_EQUAL(rb, 0);
    }
    CU_ASSERT_STRING_EQUAL(td_ggml_type_name(TD_GGML_Q4_K), "q4_K");
    CU_ASSERT_STRING_EQUAL(td_ggml_type_name(TD_GGML_BF16), "bf16");
    CU_ASSERT_STRING_EQUAL(td_ggml_type_name(13), "q5_K");
    CU_ASSERT_STRING_EQUAL(td_ggml_type_name(4), "unknown"); /* removed q4_2 */
    CU_ASSERT_STRING_EQUAL(td_ggml_type_name(UINT32_MAX), "unknown");

    /* a ggml type we do not dequantize still has its geometry (ggml-common.h:
     * block_q5_K is d, dmin, 12 scale bytes, 32 high bits, 128 nibble bytes) */
    int64_t be = -1;
    size_t bb = 0;
    TD_ASSERT_OK(td_ggml_type_info(13, &be, &bb, &err), &err);
    CU_ASSERT(be == 256 && bb == 2 + 2 + 12 + 32 + 128);
    TD_ASSERT_OK(td_ggml_type_info(11, &be, &bb, &err), &err); /* q3_K: hmask 32, qs 64, scales 12, d */
    CU_ASSERT(be == 256 && bb == 32 + 64 + 12 + 2);
    /* ids ggml defines without a layout here (removed or too new), and ids it does not define */
    be = -1;
    TD_ASSERT_STATUS(TANDEM_ERR_UNSUPPORTED, td_ggml_type_info(41, &be, &bb, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "q1_0"));
    CU_ASSERT_EQUAL(be, -1);
    const uint32_t unknown[] = {4, 5, 31, 99, UINT32_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, td_ggml_type_info(unknown[i], &be, &bb, &err), &err);
        char id[16];
        snprintf(id, sizeof id, "%u", unknown[i]);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, id));
    }
    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, td_ggml_type_info(99, &be, &bb, NULL), &err); /* err may be NULL */

    /* row sizes: partial blocks, negative counts, overflow */
    size_t rb = 12345;
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_ggml_row_bytes(TD_GGML_Q4_K, 576, &rb, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "q4_K"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "576"));
    CU_ASSERT_EQUAL(rb, 12345);
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_ggml_row_bytes(TD_GGML_F16, -2, &rb, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_ggml_row_bytes(TD_GGML_F32, INT64_MAX, &rb, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "f32"));
    TD_ASSERT_OK(td_ggml_row_bytes(TD_GGML_F16, INT64_MAX, &rb, &err), &err); /* 2^64 - 2 bytes fits */
    CU_ASSERT_EQUAL(rb, (size_t)INT64_MAX * 2);
    TD_ASSERT_OK(td_ggml_row_bytes(10, 256, &rb, &err), &err); /* q2_K: geometry only */
    CU_ASSERT_EQUAL(rb, 84);
}

static void test_errors(void) {
    td_error err = {0};
    uint8_t src[210 * 2] = {0};
    float dst[512];
    uint16_t dst16[512];
    for (int i = 0; i < 512; i++)
        dst[i] = 7.0f, dst16[i] = 7;

    /* n not a multiple of the block: nothing written, the message names the
     * type and n */
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_dequant_f32(TD_GGML_Q4_0, src, dst, 33, TD_ISA_SCALAR, &err),
                     &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "q4_0"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "33"));
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_dequant_bf16(TD_GGML_Q6_K, src, dst16, 257, TD_ISA_SCALAR, &err),
                     &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "q6_K"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "257"));
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_dequant_f32(TD_GGML_Q8_0, src, dst, -32, TD_ISA_SCALAR, &err),
                     &err);
    /* unknown and unsupported types */
    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, td_dequant_f32(99, src, dst, 32, TD_ISA_SCALAR, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "99"));
    TD_ASSERT_STATUS(TANDEM_ERR_UNSUPPORTED, td_dequant_bf16(11, src, dst16, 256, TD_ISA_SCALAR, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "q3_K"));
    /* NULL buffers, an ISA out of range */
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_dequant_f32(TD_GGML_F32, NULL, dst, 4, TD_ISA_SCALAR, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_dequant_bf16(TD_GGML_F32, src, NULL, 4, TD_ISA_SCALAR, &err),
                     &err);
    TD_ASSERT_STATUS(TANDEM_ERR_UNSUPPORTED, td_dequant_f32(TD_GGML_F32, src, dst, 4, TD_ISA_COUNT, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_UNSUPPORTED, td_dequant_f32(TD_GGML_F32, src, dst, 4, (td_isa)-1, &err), &err);
    for (int i = 0; i < 512; i++) {
        CU_ASSERT_EQUAL(dst[i], 7.0f);
        CU_ASSERT_EQUAL(dst16[i], 7);
    }
    /* zero elements: nothing to read or write */
    TD_ASSERT_OK(td_dequant_f32(TD_GGML_Q4_K, NULL, NULL, 0, TD_ISA_SCALAR, &err), &err);
    TD_ASSERT_OK(td_dequant_bf16(TD_GGML_Q4_K, NULL, NULL, 0, td_isa_best(), &err), &err);
}

void td_test_register(void) {
    static const td_test tests[] = {
        {"every type and path vs the gguf package (bit for bit)", test_oracle},
        {"the oracle's q4_K/q6_K blocks exercise every scale bit", test_oracle_covers_k_scales},
        {"q4_K hand-packed scales and mins", test_q4_k_hand_packed},
        {"q6_K hand-packed scales and element order", test_q6_k_hand_packed},
        {"scalar vs AVX-512, random blocks, odd lengths, unaligned", test_scalar_vs_avx512},
        {"type sizes, names, row bytes", test_type_info},
        {"argument errors", test_errors},
        {NULL, NULL},
    };
    td_add_suite("dequant", tests);
}
