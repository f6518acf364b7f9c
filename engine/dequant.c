/* The dequantization driver and the scalar reference kernels: one block at a
 * time, written from ggml's block layouts (see dequant.h), each value
 * computed with the same operations in the same order as ggml's
 * dequantize_row_* (which would not matter: the products are exact, see
 * dequant.h). */
#include "engine/dequant.h"

#include <stdbool.h>

#include <string.h>

#include "base/dtype.h"
#include "engine/dequant_impl.h"

/* ---- little-endian fields (blocks carry no alignment) --------------------- */

static inline uint16_t u16_at(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t u32_at(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline float f16_at(const uint8_t *p) { return td_f16_to_f32(u16_at(p)); }

/* ---- one block to f32 ------------------------------------------------------ */

static inline void f32_block(const uint8_t *b, float *y) { *y = td_f32_from_bits(u32_at(b)); }
static inline void f16_block(const uint8_t *b, float *y) { *y = f16_at(b); }
static inline void bf16_block(const uint8_t *b, float *y) { *y = td_bf16_to_f32(u16_at(b)); }

/* Byte j of the 16 nibble bytes holds element j (low) and j + 16 (high). */
static inline void q4_0_block(const uint8_t *b, float *y) {
    const float d = f16_at(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        y[j] = (float)((qs[j] & 0xf) - 8) * d;
        y[j + 16] = (float)((qs[j] >> 4) - 8) * d;
    }
}

static inline void q4_1_block(const uint8_t *b, float *y) {
    const float d = f16_at(b), m = f16_at(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < 16; j++) {
        y[j] = (float)(qs[j] & 0xf) * d + m;
        y[j + 16] = (float)(qs[j] >> 4) * d + m;
    }
}

/* Bit j of qh is bit 4 of element j. */
static inline void q5_0_block(const uint8_t *b, float *y) {
    const float d = f16_at(b);
    const uint32_t qh = u32_at(b + 2);
    const uint8_t *qs = b + 6;
    for (int j = 0; j < 16; j++) {
        const int lo = (qs[j] & 0xf) | (int)((qh >> j) & 1) << 4;
        const int hi = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
        y[j] = (float)(lo - 16) * d;
        y[j + 16] = (float)(hi - 16) * d;
    }
}

static inline void q5_1_block(const uint8_t *b, float *y) {
    const float d = f16_at(b), m = f16_at(b + 2);
    const uint32_t qh = u32_at(b + 4);
    const uint8_t *qs = b + 8;
    for (int j = 0; j < 16; j++) {
        const int lo = (qs[j] & 0xf) | (int)((qh >> j) & 1) << 4;
        const int hi = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
        y[j] = (float)lo * d + m;
        y[j + 16] = (float)hi * d + m;
    }
}

static inline void q8_0_block(const uint8_t *b, float *y) {
    const float d = f16_at(b);
    for (int j = 0; j < 32; j++)
        y[j] = (float)(int8_t)b[2 + j] * d;
}

/* 4 chunks of 64 elements; chunk c reads 32 bytes: low nibbles are elements
 * 64c + l (sub-block 2c), high nibbles 64c + 32 + l (sub-block 2c + 1). */
static inline void q4_k_block(const uint8_t *b, float *y) {
    const float d = f16_at(b), dmin = f16_at(b + 2);
    const uint8_t *scales = b + 4, *qs = b + 16;
    for (int c = 0; c < 4; c++) {
        int sc0, m0, sc1, m1;
        td_q4_k_scale_min(2 * c, scales, &sc0, &m0);
        td_q4_k_scale_min(2 * c + 1, scales, &sc1, &m1);
        const float d0 = d * (float)sc0, min0 = dmin * (float)m0;
        const float d1 = d * (float)sc1, min1 = dmin * (float)m1;
        const uint8_t *q = qs + 32 * c;
        float *o = y + 64 * c;
        for (int l = 0; l < 32; l++) {
            o[l] = d0 * (float)(q[l] & 0xf) - min0;
            o[l + 32] = d1 * (float)(q[l] >> 4) - min1;
        }
    }
}

/* Two halves of 128 elements; half h reads 64 low-nibble bytes, 32 bytes of
 * 2-bit high parts and 8 scales. Element 128h + 32k + l (k = 0..3, l =
 * 0..31) is nibble (k & 1 ? ql[l + 32] : ql[l]) >> (k & 2 ? 4 : 0), high
 * bits (qh[l] >> 2k) & 3, scale 2k + l / 16. */
static inline void q6_k_block(const uint8_t *b, float *y) {
    const float d = f16_at(b + 208);
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
        const int8_t *sc = (const int8_t *)(b + 192 + 8 * h);
        float *o = y + 128 * h;
        for (int l = 0; l < 32; l++) {
            const int is = l / 16;
            const int q1 = ((ql[l] & 0xf) | (qh[l] & 3) << 4) - 32;
            const int q2 = ((ql[l + 32] & 0xf) | (qh[l] >> 2 & 3) << 4) - 32;
            const int q3 = ((ql[l] >> 4) | (qh[l] >> 4 & 3) << 4) - 32;
            const int q4 = ((ql[l + 32] >> 4) | (qh[l] >> 6 & 3) << 4) - 32;
            o[l] = d * (float)sc[is] * (float)q1;
            o[l + 32] = d * (float)sc[is + 2] * (float)q2;
            o[l + 64] = d * (float)sc[is + 4] * (float)q3;
            o[l + 96] = d * (float)sc[is + 6] * (float)q4;
        }
    }
}

/* ---- rows of blocks --------------------------------------------------------- */

#define SCALAR_KERNELS(name, ELEMS, BYTES)                                                                             \
    static void name##_f32(const uint8_t *src, float *dst, int64_t n_blocks) {                                         \
        for (int64_t i = 0; i < n_blocks; i++)                                                                         \
            name##_block(src + i * (BYTES), dst + i * (ELEMS));                                                        \
    }                                                                                                                  \
    static void name##_bf16(const uint8_t *src, uint16_t *dst, int64_t n_blocks) {                                     \
        float tmp[ELEMS];                                                                                              \
        for (int64_t i = 0; i < n_blocks; i++) {                                                                       \
            name##_block(src + i * (BYTES), tmp);                                                                      \
            for (int j = 0; j < (ELEMS); j++)                                                                          \
                dst[i * (ELEMS) + j] = td_f32_to_bf16(tmp[j]);                                                         \
        }                                                                                                              \
    }

SCALAR_KERNELS(f32, 1, 4)
SCALAR_KERNELS(f16, 1, 2)
SCALAR_KERNELS(bf16, 1, 2)
SCALAR_KERNELS(q4_0, 32, 18)
SCALAR_KERNELS(q4_1, 32, 20)
SCALAR_KERNELS(q5_0, 32, 22)
SCALAR_KERNELS(q5_1, 32, 24)
SCALAR_KERNELS(q8_0, 32, 34)
SCALAR_KERNELS(q4_k, 256, 144)
SCALAR_KERNELS(q6_k, 256, 210)

/* ---- types ------------------------------------------------------------------ */

typedef struct type_desc {
    int32_t elems, bytes;      /* block geometry; 0 elems: not a type we know the layout of */
    td_dequant_kernels scalar; /* NULL: a type Tandem does not dequantize */
} type_desc;

/* Geometry of every ggml type whose block layout is known (ggml-common.h),
 * so that a file holding, say, q5_K tensors still opens and its sizes are
 * checked; dequantizing one is TANDEM_ERR_UNSUPPORTED. */
#define TYPE(id, name, ELEMS, BYTES) [id] = {ELEMS, BYTES, {name##_f32, name##_bf16}}
#define GEOMETRY(id, ELEMS, BYTES) [id] = {ELEMS, BYTES, {NULL, NULL}}
static const type_desc types[] = {
    TYPE(TD_GGML_F32, f32, 1, 4),
    TYPE(TD_GGML_F16, f16, 1, 2),
    TYPE(TD_GGML_Q4_0, q4_0, 32, 18),
    TYPE(TD_GGML_Q4_1, q4_1, 32, 20),
    TYPE(TD_GGML_Q5_0, q5_0, 32, 22),
    TYPE(TD_GGML_Q5_1, q5_1, 32, 24),
    TYPE(TD_GGML_Q8_0, q8_0, 32, 34),
    TYPE(TD_GGML_Q4_K, q4_k, 256, 144),
    TYPE(TD_GGML_Q6_K, q6_k, 256, 210),
    TYPE(TD_GGML_BF16, bf16, 1, 2),
    GEOMETRY(9, 32, 36),    /* q8_1 */
    GEOMETRY(10, 256, 84),  /* q2_K */
    GEOMETRY(11, 256, 110), /* q3_K */
    GEOMETRY(13, 256, 176), /* q5_K */
    GEOMETRY(15, 256, 292), /* q8_K */
    GEOMETRY(16, 256, 66),  /* iq2_xxs */
    GEOMETRY(17, 256, 74),  /* iq2_xs */
    GEOMETRY(18, 256, 98),  /* iq3_xxs */
    GEOMETRY(19, 256, 50),  /* iq1_s */
    GEOMETRY(20, 32, 18),   /* iq4_nl */
    GEOMETRY(21, 256, 110), /* iq3_s */
    GEOMETRY(22, 256, 82),  /* iq2_s */
    GEOMETRY(23, 256, 136), /* iq4_xs */
    GEOMETRY(24, 1, 1),     /* i8 */
    GEOMETRY(25, 1, 2),     /* i16 */
    GEOMETRY(26, 1, 4),     /* i32 */
    GEOMETRY(27, 1, 8),     /* i64 */
    GEOMETRY(28, 1, 8),     /* f64 */
    GEOMETRY(29, 256, 56),  /* iq1_m */
    GEOMETRY(34, 256, 54),  /* tq1_0 */
    GEOMETRY(35, 256, 66),  /* tq2_0 */
    GEOMETRY(39, 32, 17),   /* mxfp4 */
};
#define N_TYPES (sizeof types / sizeof types[0])

/* Every id ggml defines (ggml.h, enum ggml_type), for messages. */
static const char *const names[] = {
    [0] = "f32",     [1] = "f16",    [2] = "q4_0",     [3] = "q4_1",    [6] = "q5_0",     [7] = "q5_1",
    [8] = "q8_0",    [9] = "q8_1",   [10] = "q2_K",    [11] = "q3_K",   [12] = "q4_K",    [13] = "q5_K",
    [14] = "q6_K",   [15] = "q8_K",  [16] = "iq2_xxs", [17] = "iq2_xs", [18] = "iq3_xxs", [19] = "iq1_s",
    [20] = "iq4_nl", [21] = "iq3_s", [22] = "iq2_s",   [23] = "iq4_xs", [24] = "i8",      [25] = "i16",
    [26] = "i32",    [27] = "i64",   [28] = "f64",     [29] = "iq1_m",  [30] = "bf16",    [34] = "tq1_0",
    [35] = "tq2_0",  [39] = "mxfp4", [40] = "nvfp4",   [41] = "q1_0",
};

const char *td_ggml_type_name(uint32_t type) {
    return type < sizeof names / sizeof names[0] && names[type] ? names[type] : "unknown";
}

/* The geometry of a type: TANDEM_ERR_FORMAT for an id ggml does not define,
 * TANDEM_ERR_UNSUPPORTED for one whose layout we do not know. */
static tandem_status find_type(uint32_t type, const type_desc **out, td_error *err) {
    if (type < N_TYPES && types[type].elems) {
        *out = &types[type];
        return TANDEM_OK;
    }
    if (type < sizeof names / sizeof names[0] && names[type])
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "ggml type %u (%s) has a block layout Tandem does not know", type,
                       names[type]);
    return td_fail(err, TANDEM_ERR_FORMAT, "%u is not a ggml type id", type);
}

tandem_status td_ggml_type_info(uint32_t type, int64_t *block_elems, size_t *block_bytes, td_error *err) {
    const type_desc *t = NULL;
    tandem_status st = find_type(type, &t, err);
    if (st)
        return st;
    *block_elems = t->elems;
    *block_bytes = (size_t)t->bytes;
    return TANDEM_OK;
}

static tandem_status blocks_of(uint32_t type, int64_t n, const type_desc **out, int64_t *n_blocks, td_error *err) {
    const type_desc *t = NULL;
    tandem_status st = find_type(type, &t, err);
    if (st)
        return st;
    const int64_t elems = t->elems;
    if (n < 0)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "dequant: n = %lld elements of %s is negative", (long long)n,
                       td_ggml_type_name(type));
    if (n % elems)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                       "dequant: n = %lld is not a multiple of the %s block (%lld elements)", (long long)n,
                       td_ggml_type_name(type), (long long)elems);
    *out = t;
    *n_blocks = n / elems;
    return TANDEM_OK;
}

tandem_status td_ggml_row_bytes(uint32_t type, int64_t n, size_t *out, td_error *err) {
    const type_desc *t = NULL;
    int64_t n_blocks = 0;
    tandem_status st = blocks_of(type, n, &t, &n_blocks, err);
    if (st)
        return st;
    if ((uint64_t)n_blocks > SIZE_MAX / (size_t)t->bytes)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "dequant: %lld elements of %s do not fit in memory",
                       (long long)n, td_ggml_type_name(type));
    *out = (size_t)n_blocks * (size_t)t->bytes;
    return TANDEM_OK;
}

/* The kernels for (type, isa), after checking the arguments. */
static tandem_status prepare(uint32_t type, const void *src, const void *dst, int64_t n, td_isa isa,
                             td_dequant_kernels *k, int64_t *n_blocks, td_error *err) {
    const type_desc *t = NULL;
    tandem_status st = blocks_of(type, n, &t, n_blocks, err);
    if (st)
        return st;
    if (n && (!src || !dst))
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "dequant: %s of %lld elements with a NULL %s",
                       td_ggml_type_name(type), (long long)n, src ? "destination" : "source");
    if (!t->scalar.f32)
        return td_fail(err, TANDEM_ERR_UNSUPPORTED,
                       "ggml type %u (%s) cannot be dequantized yet (supported: f32, f16, bf16, q8_0, q4_0, q4_1, "
                       "q5_0, q5_1, q4_K, q6_K)",
                       type, td_ggml_type_name(type));
    if ((unsigned)isa >= TD_ISA_COUNT || !td_isa_supported(isa))
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "dequant: ISA %s is not available on this CPU", td_isa_name(isa));
    *k = t->scalar;
    if (isa >= TD_ISA_AVX512) {
#ifdef TD_HAVE_X86_KERNELS
        *k = td_dequant_kernels_avx512(type);
        if (!k->f32 || !k->bf16)
            return td_fail(err, TANDEM_ERR_INTERNAL, "dequant: no AVX-512 kernel for %s", td_ggml_type_name(type));
#else
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "dequant: ISA %s is not available in this build", td_isa_name(isa));
#endif
    }
    return TANDEM_OK;
}

/* Both entry points: checks, picks the kernel, runs it. */
static tandem_status dequant(uint32_t type, const void *src, void *dst, bool bf16, int64_t n, td_isa isa,
                             td_error *err) {
    td_dequant_kernels k = {NULL, NULL};
    int64_t n_blocks = 0;
    tandem_status st = prepare(type, src, dst, n, isa, &k, &n_blocks, err);
    if (st || !n_blocks)
        return st;
    if (bf16)
        k.bf16(src, dst, n_blocks);
    else
        k.f32(src, dst, n_blocks);
    return TANDEM_OK;
}

tandem_status td_dequant_f32(uint32_t type, const void *src, float *dst, int64_t n, td_isa isa, td_error *err) {
    return dequant(type, src, dst, false, n, isa, err);
}

tandem_status td_dequant_bf16(uint32_t type, const void *src, uint16_t *dst, int64_t n, td_isa isa, td_error *err) {
    return dequant(type, src, dst, true, n, isa, err);
}
