/* Llama row operations: the scalar reference, the dispatch to the vector
 * paths, and the row split across the OpenMP team (cpu/ops.h). */
#include "cpu/ops.h"

#include <math.h>

#include "cpu/ops_impl.h"

/* Rows per thread below which splitting costs more than it saves (a row is
 * a few hundred to a few thousand values). */
#define TD_OPS_MIN_ROWS 4

static inline void store(void *out, int64_t i, float v, td_dtype dt) {
    if (dt == TD_DTYPE_BF16)
        ((uint16_t *)out)[i] = td_f32_to_bf16(v);
    else
        ((float *)out)[i] = v;
}

static void rmsnorm_row(int64_t n, const float *x, const float *w, float eps, void *out, td_dtype dt) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)x[i] * (double)x[i];
    float r = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++)
        store(out, i, x[i] * r * w[i], dt);
}

static void swiglu_row(int64_t n, const float *gu, void *out, td_dtype dt) {
    for (int64_t j = 0; j < n; j++) {
        float g = gu[j];
        store(out, j, g / (1.0f + expf(-g)) * gu[n + j], dt);
    }
}

#ifdef TD_HAVE_X86_KERNELS
static bool vector_path(td_isa isa) { return isa >= TD_ISA_AVX512; }
#else
static bool vector_path(td_isa isa) {
    (void)isa;
    return false;
}
#define td_rmsnorm_row_avx512(...) ((void)0)
#define td_swiglu_row_avx512(...) ((void)0)
#define td_rope_avx512(...) ((void)0)
#endif

void td_rmsnorm(td_isa isa, int64_t m, int64_t n, const float *x, int64_t x_stride, const float *w, float eps,
                void *out, int64_t out_stride, td_dtype out_dtype) {
    size_t esz = td_dtype_size(out_dtype);
#pragma omp parallel for schedule(static) if (m >= 2 * TD_OPS_MIN_ROWS)
    for (int64_t r = 0; r < m; r++) {
        void *o = (char *)out + (size_t)(r * out_stride) * esz;
        if (vector_path(isa)) {
            td_rmsnorm_row_avx512(n, x + r * x_stride, w, eps, o, out_dtype);
            continue;
        }
        rmsnorm_row(n, x + r * x_stride, w, eps, o, out_dtype);
    }
}

void td_swiglu(td_isa isa, int64_t m, int64_t n, const float *gu, void *out, td_dtype out_dtype) {
    size_t esz = td_dtype_size(out_dtype);
#pragma omp parallel for schedule(static) if (m >= 2 * TD_OPS_MIN_ROWS)
    for (int64_t r = 0; r < m; r++) {
        void *o = (char *)out + (size_t)(r * n) * esz;
        if (vector_path(isa)) {
            td_swiglu_row_avx512(n, gu + r * 2 * n, o, out_dtype);
            continue;
        }
        swiglu_row(n, gu + r * 2 * n, o, out_dtype);
    }
}

void td_rope(td_isa isa, float *x, int32_t n_heads, int32_t head_dim, int32_t rope_dim, const float *cs) {
    if (vector_path(isa)) {
        td_rope_avx512(x, n_heads, head_dim, rope_dim, cs);
        return;
    }
    const float *cc = cs, *ss = cs + rope_dim;
    for (int32_t h = 0; h < n_heads; h++) {
        float *v = x + (int64_t)h * head_dim;
        for (int32_t i = 0; i < rope_dim; i += 2) {
            float a = v[i], b = v[i + 1];
            v[i] = a * cc[i] + b * ss[i];
            v[i + 1] = b * cc[i + 1] + a * ss[i + 1];
        }
    }
}

void td_rope_angles(double pos, const double *inv_freq, int32_t rope_dim, float *cs) {
    for (int32_t i = 0; i < rope_dim / 2; i++) {
        double a = pos * inv_freq[i];
        float c = (float)cos(a), s = (float)sin(a);
        cs[2 * i] = cs[2 * i + 1] = c;
        cs[rope_dim + 2 * i] = -s;
        cs[rope_dim + 2 * i + 1] = s;
    }
}
