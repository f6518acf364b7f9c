/* The element-wise and per-row operations of a Llama layer, on rows of
 * activations in host memory: RMSNorm, RoPE, SwiGLU.
 *
 * Each works on m rows and splits them across the caller's OpenMP team when
 * there are enough of them to pay for it. Outputs are fp32 or bf16 (the
 * input dtype of the next bf16 GEMM, so that no separate conversion pass is
 * needed). isa selects the path: TD_ISA_SCALAR is the reference, the
 * AVX-512 paths run cpu/ops_avx512.c. */
#ifndef TD_CPU_OPS_H
#define TD_CPU_OPS_H

#include <stdint.h>

#include "base/dtype.h"
#include "cpu/isa.h"

/* out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, for m rows of n values
 * (row strides in elements: x_stride, out_stride). out_dtype: f32 or bf16. */
void td_rmsnorm(td_isa isa, int64_t m, int64_t n, const float *x, int64_t x_stride, const float *w, float eps,
                void *out, int64_t out_stride, td_dtype out_dtype);

/* out[r][j] = silu(gu[r][j]) * gu[r][n + j], silu(g) = g / (1 + e^-g): the
 * gate and up projections side by side in one row of 2n values. */
void td_swiglu(td_isa isa, int64_t m, int64_t n, const float *gu, void *out, td_dtype out_dtype);

/* Rotary position embedding as ggml's "normal" mode applies it to Llama
 * GGUF files (whose converter permutes the Q and K rows for it): within
 * each head, the pair (x[2i], x[2i+1]) for 2i < rope_dim turns by angle
 * a_i: (x cos a - y sin a, x sin a + y cos a). x: n_heads x head_dim values
 * of one token. cs: 2 * rope_dim values from td_rope_angles. */
void td_rope(td_isa isa, float *x, int32_t n_heads, int32_t head_dim, int32_t rope_dim, const float *cs);

/* The rotation of position pos for td_rope: angle pos * inv_freq[i] of
 * pair i, computed in double, laid out for 16-lane arithmetic on the
 * interleaved pairs: cs[0, rope_dim) = (cos a_i, cos a_i) for each pair,
 * cs[rope_dim, 2 rope_dim) = (-sin a_i, sin a_i). */
void td_rope_angles(double pos, const double *inv_freq, int32_t rope_dim, float *cs);

#endif /* TD_CPU_OPS_H */
