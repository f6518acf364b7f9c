#include "base/dtype.h"

size_t td_dtype_size(td_dtype t) {
    switch (t) {
    case TD_DTYPE_F32: return 4;
    case TD_DTYPE_F16: return 2;
    case TD_DTYPE_BF16: return 2;
    case TD_DTYPE_I8: return 1;
    }
    return 0;
}

const char *td_dtype_name(td_dtype t) {
    switch (t) {
    case TD_DTYPE_F32: return "f32";
    case TD_DTYPE_F16: return "f16";
    case TD_DTYPE_BF16: return "bf16";
    case TD_DTYPE_I8: return "i8";
    }
    return "?";
}

uint16_t td_f32_to_f16(float f) {
    uint32_t u = td_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) /* NaN */
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) /* rounds to >= 65520: infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) {   /* below the smallest normal f16 (2^-14) */
        if (a < 0x33000000u) /* below half the smallest subnormal: zero */
            return sign;
        /* subnormal: shift the mantissa (with its implicit bit) into place,
         * rounding to nearest even on the bits shifted out */
        uint32_t e = a >> 23;
        uint32_t m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e; /* 14..24 */
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u)))
            r++;
        return (uint16_t)(sign | r);
    }
    /* normal: rebias exponent, round mantissa to 10 bits (a carry into the
     * exponent is the correct result) */
    a += 0xfffu + ((a >> 13) & 1u);
    return (uint16_t)(sign | ((a - 0x38000000u) >> 13));
}
