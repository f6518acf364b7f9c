/* Private to cpu/ops*.c: the vector paths' row functions. */
#ifndef TD_CPU_OPS_IMPL_H
#define TD_CPU_OPS_IMPL_H

#include <stdint.h>

#include "base/dtype.h"

void td_rmsnorm_row_avx512(int64_t n, const float *x, const float *w, float eps, void *out, td_dtype out_dtype);
void td_swiglu_row_avx512(int64_t n, const float *gu, void *out, td_dtype out_dtype);
void td_rope_avx512(float *x, int32_t n_heads, int32_t head_dim, int32_t rope_dim, const float *cs);

#endif /* TD_CPU_OPS_IMPL_H */
