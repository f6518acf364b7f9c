/* Element types and their scalar conversions.
 *
 * The scalar conversions here are the reference that every vectorized
 * conversion (cpu/, gpu/) is tested against: round-to-nearest-even, NaN kept
 * NaN (quiet), infinities and subnormals exact. */
#ifndef TD_BASE_DTYPE_H
#define TD_BASE_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum td_dtype {
    TD_DTYPE_F32 = 0,
    TD_DTYPE_F16 = 1,
    TD_DTYPE_BF16 = 2,
    /* int8 with a per-token scale, for the KV cache. Reserved: no code path
     * accepts it yet; create functions answer TANDEM_ERR_UNSUPPORTED. */
    TD_DTYPE_I8 = 3,
} td_dtype;

/* Bytes per element (1 for TD_DTYPE_I8, scales not counted); 0 if unknown. */
size_t td_dtype_size(td_dtype t);
/* "f32", "f16", "bf16", "i8"; "?" if unknown. */
const char *td_dtype_name(td_dtype t);

static inline uint32_t td_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float td_f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float td_bf16_to_f32(uint16_t h) { return td_f32_from_bits((uint32_t)h << 16); }

static inline uint16_t td_f32_to_bf16(float f) {
    uint32_t u = td_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep sign, force quiet */
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest, ties to even */
    return (uint16_t)(u >> 16);
}

/* Exact: the f16 exponent and mantissa shifted into f32 position and
 * multiplied by 2^112 rebias the exponent, and give subnormals their exact
 * value; infinities and NaNs get the f32 maximum exponent. */
static inline float td_f16_to_f32(uint16_t h) {
    uint32_t em = (uint32_t)(h & 0x7fffu) << 13;
    float f = td_f32_from_bits(em) * 0x1p112f;
    uint32_t u = td_f32_bits(f);
    if ((h & 0x7c00u) == 0x7c00u)
        u = em | 0x7f800000u;
    return td_f32_from_bits(u | (uint32_t)(h & 0x8000u) << 16);
}

uint16_t td_f32_to_f16(float f);

#ifdef __cplusplus
}
#endif

#endif /* TD_BASE_DTYPE_H */
