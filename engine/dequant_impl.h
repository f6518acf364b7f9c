/* Between the dequantization driver (dequant.c) and its per-ISA kernels.
 *
 * A kernel converts n_blocks whole blocks of one type. */
#ifndef TD_ENGINE_DEQUANT_IMPL_H
#define TD_ENGINE_DEQUANT_IMPL_H

#include <stdint.h>

typedef void (*td_dequant_f32_fn)(const uint8_t *src, float *dst, int64_t n_blocks);
typedef void (*td_dequant_bf16_fn)(const uint8_t *src, uint16_t *dst, int64_t n_blocks);

typedef struct td_dequant_kernels {
    td_dequant_f32_fn f32;
    td_dequant_bf16_fn bf16;
} td_dequant_kernels;

/* The 6-bit scale and min of sub-block j (0..7) of a q4_K block, from its 12
 * scale bytes s: bytes 0-3 hold scales 0-3 in their low 6 bits, bytes 4-7
 * mins 0-3; byte 8 + i holds the low 4 bits of scale 4 + i (low nibble) and
 * of min 4 + i (high nibble), whose top 2 bits are the top 2 bits of byte i
 * (scale) and of byte 4 + i (min). Shared by every path: the test against
 * the gguf package's dequantizer is what checks it. */
static inline void td_q4_k_scale_min(int j, const uint8_t *s, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xf) | (s[j - 4] >> 6) << 4;
        *m = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
    }
}

#ifdef TD_HAVE_X86_KERNELS
/* The AVX-512 kernels of a supported type (both NULL for another id). */
td_dequant_kernels td_dequant_kernels_avx512(uint32_t type);
#endif

#endif /* TD_ENGINE_DEQUANT_IMPL_H */
