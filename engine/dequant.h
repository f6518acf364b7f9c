/* Dequantization of GGUF tensor data (ggml block formats) to f32 and bf16.
 *
 * A row of n elements of a block type is n / block_elems blocks laid end to
 * end, each block_bytes long, with the byte layouts of ggml (ggml-common.h):
 *
 *   type   elems bytes  block
 *   f32        1     4  IEEE binary32
 *   f16        1     2  IEEE binary16
 *   bf16       1     2  the high half of a binary32
 *   q4_0      32    18  f16 d; 16 bytes of 4-bit q: x[j] = d * (q - 8)
 *   q4_1      32    20  f16 d, f16 m; 16 bytes of 4-bit q: x = d * q + m
 *   q5_0      32    22  f16 d; u32 qh (bit 4 of each q); 16 bytes of low
 *                       nibbles: x = d * (q - 16)
 *   q5_1      32    24  f16 d, f16 m; u32 qh; 16 bytes: x = d * q + m
 *   q8_0      32    34  f16 d; 32 int8 q: x = d * q
 *   q4_K     256   144  f16 d, f16 dmin; 12 bytes of eight 6-bit (scale,
 *                       min) pairs; 128 bytes of 4-bit q:
 *                       x = (d * scale) * q - (dmin * min) per 32 elements
 *   q6_K     256   210  128 bytes of low nibbles, 64 bytes of high 2-bit
 *                       pairs, sixteen int8 scales, f16 d:
 *                       x = (d * scale) * (q - 32) per 16 elements
 *
 * In the 32-element types, byte j of the nibbles holds element j (low) and
 * element j + 16 (high).
 *
 * Exactness: every product here is exact in f32. An f16 scale has at most 11
 * significant bits; a quant at most 7 (q8_0: |q| <= 127, or 128 = 2^7), 5
 * (q5_*, q6_K) or 4 (q4_*); a sub-block scale at most 7 (q6_K's int8) or 6
 * (q4_K). The widest product, q6_K's d * sc * q, has 11 + 7 + 5 = 23 <= 24
 * bits, and none leaves the f32 normal range. So the only rounding is that
 * of the final sum (x = d * q + m, (d * sc) * q - dmin * m), and the result
 * is the exact value rounded once, whatever the order of the products
 * or whether a compiler fuses them into FMAs. It equals ggml's reference
 * dequantize_row_* and the Python gguf package's f32 results bit for bit
 * (tests/test_dequant.c checks every type against the latter). The bf16
 * output is the f32 result rounded to nearest, ties to even (td_f32_to_bf16).
 *
 * Paths: TD_ISA_SCALAR is the portable reference; TD_ISA_AVX512 and up
 * (AVX512BF16, AMX) run the AVX-512 kernels (engine/dequant_avx512.c, same
 * results bit for bit); TD_ISA_AVX2 runs the scalar code (no AVX2 kernels:
 * dequantization runs once, at load). */
#ifndef TD_ENGINE_DEQUANT_H
#define TD_ENGINE_DEQUANT_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "cpu/isa.h"

/* ggml type ids, as numbered in GGUF tensor infos. Only those Tandem can
 * dequantize are listed; td_ggml_type_name knows the names of the others. */
typedef enum td_ggml_type {
    TD_GGML_F32 = 0,
    TD_GGML_F16 = 1,
    TD_GGML_Q4_0 = 2,
    TD_GGML_Q4_1 = 3,
    TD_GGML_Q5_0 = 6,
    TD_GGML_Q5_1 = 7,
    TD_GGML_Q8_0 = 8,
    TD_GGML_Q4_K = 12,
    TD_GGML_Q6_K = 14,
    TD_GGML_BF16 = 30,
} td_ggml_type;

/* Elements per block of the 32-element types and of the K-quants. */
#define TD_GGML_QK 32
#define TD_GGML_QK_K 256

/* ggml's name of a type id ("q4_K", "bf16", ...), also for types Tandem does
 * not dequantize; "unknown" for ids ggml does not define. */
const char *td_ggml_type_name(uint32_t type);

/* Elements and bytes per block of type: known for every ggml type with a
 * published block layout, including those Tandem does not dequantize (a
 * file holding them still opens). An id ggml does not define is
 * TANDEM_ERR_FORMAT, one whose layout is unknown here TANDEM_ERR_UNSUPPORTED;
 * the message names the type. */
tandem_status td_ggml_type_info(uint32_t type, int64_t *block_elems, size_t *block_bytes, td_error *err);

/* Bytes of n elements of type: n must be >= 0 and a multiple of the block
 * size, and the size must fit in a size_t. */
tandem_status td_ggml_row_bytes(uint32_t type, int64_t n, size_t *out, td_error *err);

/* Dequantizes n elements (td_ggml_row_bytes(type, n) bytes at src, no
 * alignment needed) into dst[0..n). n must be a multiple of the block size.
 * isa must be supported by this CPU (td_isa_supported). */
tandem_status td_dequant_f32(uint32_t type, const void *src, float *dst, int64_t n, td_isa isa, td_error *err);
tandem_status td_dequant_bf16(uint32_t type, const void *src, uint16_t *dst, int64_t n, td_isa isa, td_error *err);

#endif /* TD_ENGINE_DEQUANT_H */
