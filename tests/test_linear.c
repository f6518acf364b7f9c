/* Host linear layers and row operations against plain double-precision
 * references written from their definitions.
 *
 * GEMM: weights and inputs are bf16 (or f32) values, so every product is
 * exact in f32 and the only error is that of the fp32 sums: at most about
 * k * 2^-24 * sum |x w| for any order of summation (the bound used, with
 * slack 2x). Shapes include ones that are not multiples of oneDNN's blocks
 * (k = 100, n = 70) and every row count from 1 to 9, plus accumulation into
 * y; and the property the engine's batch invariance rests on: a row's
 * result does not depend on how many other rows are in the call. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/dtype.h"
#include "cpu/isa.h"
#include "cpu/linear.h"
#include "cpu/ops.h"
#include "tests/test_util.h"

static void check_gemm(td_dtype wt, int64_t k, int64_t n, uint64_t seed) {
    td_rng r = {seed};
    const size_t es = td_dtype_size(wt);
    void *w = malloc((size_t)n * (size_t)k * es), *x = malloc(9 * (size_t)k * es);
    float *y = malloc(9 * (size_t)n * sizeof *y), *y0 = malloc(9 * (size_t)n * sizeof *y0);
    double *wd = malloc((size_t)n * (size_t)k * sizeof *wd), *xd = malloc(9 * (size_t)k * sizeof *xd);
    for (int64_t i = 0; i < n * k; i++) {
        float v = td_rng_uniform(&r, -1, 1);
        if (wt == TD_DTYPE_BF16) {
            ((uint16_t *)w)[i] = td_f32_to_bf16(v);
            wd[i] = td_bf16_to_f32(((uint16_t *)w)[i]);
        } else {
            ((float *)w)[i] = v;
            wd[i] = v;
        }
    }
    for (int64_t i = 0; i < 9 * k; i++) {
        float v = td_rng_uniform(&r, -2, 2);
        if (wt == TD_DTYPE_BF16) {
            ((uint16_t *)x)[i] = td_f32_to_bf16(v);
            xd[i] = td_bf16_to_f32(((uint16_t *)x)[i]);
        } else {
            ((float *)x)[i] = v;
            xd[i] = v;
        }
    }
    td_gemm *g = NULL;
    td_linear *l = NULL;
    td_error err;
    TD_ASSERT_OK(td_gemm_create(&g, &err), &err);
    TD_ASSERT_OK(td_linear_create(g, n, k, wt, w, &l, &err), &err);
    CU_ASSERT_EQUAL(td_linear_n(l), n);
    CU_ASSERT_EQUAL(td_linear_k(l), k);
    for (int64_t m = 1; m <= 9; m++)
        for (int acc = 0; acc < 2; acc++) {
            for (int64_t i = 0; i < m * n; i++)
                y[i] = y0[i] = td_rng_uniform(&r, -1, 1);
            TD_ASSERT_OK(td_linear_forward(g, l, m, x, y, acc, &err), &err);
            int bad = 0;
            for (int64_t row = 0; row < m && !bad; row++)
                for (int64_t j = 0; j < n; j++) {
                    double s = 0, mag = 0;
                    for (int64_t i = 0; i < k; i++) {
                        s += xd[row * k + i] * wd[j * k + i];
                        mag += fabs(xd[row * k + i] * wd[j * k + i]);
                    }
                    if (acc) {
                        s += y0[row * n + j];
                        mag += fabs(y0[row * n + j]);
                    }
                    double tol = 2.0 * (double)(k + 2) * 0x1p-24 * mag + 1e-30;
                    if (fabs(y[row * n + j] - s) > tol) {
                        fprintf(stderr, "\n  %s k=%lld n=%lld m=%lld acc=%d: y[%lld][%lld] = %.9g, expected %.9g\n",
                                td_dtype_name(wt), (long long)k, (long long)n, (long long)m, acc, (long long)row,
                                (long long)j, y[row * n + j], s);
                        bad = 1;
                        break;
                    }
                }
            CU_ASSERT_FALSE(bad);
        }
    td_linear_destroy(l);
    td_gemm_destroy(g);
    free(w);
    free(x);
    free(y);
    free(y0);
    free(wd);
    free(xd);
}

static void test_gemm_bf16(void) {
    static const int64_t shapes[][2] = {{64, 64}, {100, 70}, {576, 960}, {1536, 576}, {33, 130}, {576, 200}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        check_gemm(TD_DTYPE_BF16, shapes[i][0], shapes[i][1], 100 + i);
}

static void test_gemm_f32(void) {
    static const int64_t shapes[][2] = {{64, 64}, {100, 70}, {576, 192}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        check_gemm(TD_DTYPE_F32, shapes[i][0], shapes[i][1], 200 + i);
}

/* Row r of an m-row call equals the same row computed alone, bit for bit:
 * what makes a sequence's tokens independent of the batch it runs in. True
 * of oneDNN's bf16 kernels (they sum k in the same order for every m); not
 * of OpenBLAS, whose m = 1 path is a GEMV that sums in another order (see
 * cpu/linear.h). */
static void check_invariance(td_dtype wt) {
    const int64_t k = 576, n = 960, m = 37;
    td_rng r = {300 + wt};
    const size_t es = td_dtype_size(wt);
    void *w = malloc((size_t)(n * k) * es), *x = malloc((size_t)(m * k) * es);
    float *all = malloc((size_t)(m * n) * sizeof *all), *one = malloc((size_t)n * sizeof *one);
    for (int64_t i = 0; i < n * k; i++) {
        if (wt == TD_DTYPE_BF16)
            ((uint16_t *)w)[i] = td_f32_to_bf16(td_rng_uniform(&r, -1, 1));
        else
            ((float *)w)[i] = td_rng_uniform(&r, -1, 1);
    }
    for (int64_t i = 0; i < m * k; i++) {
        if (wt == TD_DTYPE_BF16)
            ((uint16_t *)x)[i] = td_f32_to_bf16(td_rng_uniform(&r, -2, 2));
        else
            ((float *)x)[i] = td_rng_uniform(&r, -2, 2);
    }
    td_gemm *g = NULL;
    td_linear *l = NULL;
    td_error err;
    TD_ASSERT_OK(td_gemm_create(&g, &err), &err);
    TD_ASSERT_OK(td_linear_create(g, n, k, wt, w, &l, &err), &err);
    TD_ASSERT_OK(td_linear_forward(g, l, m, x, all, false, &err), &err);
    int differ = 0;
    for (int64_t row = 0; row < m; row++) {
        TD_ASSERT_OK(td_linear_forward(g, l, 1, (char *)x + (size_t)(row * k) * es, one, false, &err), &err);
        differ += memcmp(one, all + row * n, (size_t)n * sizeof *one) != 0;
    }
    CU_ASSERT_EQUAL(differ, 0);
    td_linear_destroy(l);
    td_gemm_destroy(g);
    free(w);
    free(x);
    free(all);
    free(one);
}

static void test_invariance_bf16(void) { check_invariance(TD_DTYPE_BF16); }

static void test_gemm_errors(void) {
    td_gemm *g = NULL;
    td_linear *l = NULL;
    td_error err;
    float w[4] = {0};
    TD_ASSERT_OK(td_gemm_create(&g, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_linear_create(g, 0, 4, TD_DTYPE_F32, w, &l, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_UNSUPPORTED, td_linear_create(g, 2, 2, TD_DTYPE_F16, w, &l, &err), &err);
    CU_ASSERT_PTR_NULL(l);
    TD_ASSERT_OK(td_linear_create(g, 2, 2, TD_DTYPE_F32, w, &l, &err), &err);
    float y[2];
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_linear_forward(g, l, 0, w, y, false, &err), &err);
    td_linear_destroy(l);
    td_gemm_destroy(g);
}

/* ---- row operations: every ISA this CPU has against the definitions ---- */

static double bf16_or_f32(const void *p, int64_t i, td_dtype dt) {
    return dt == TD_DTYPE_BF16 ? td_bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static void test_rmsnorm(void) {
    td_rng r = {7};
    const int64_t m = 11, n = 576 + 5; /* a masked tail on the vector path */
    float *x = malloc((size_t)(m * n) * sizeof *x), *w = malloc((size_t)n * sizeof *w);
    float *out = malloc((size_t)(m * n) * sizeof *out);
    for (int64_t i = 0; i < m * n; i++)
        x[i] = td_rng_uniform(&r, -3, 3) * (float)(1 + i % 7);
    for (int64_t i = 0; i < n; i++)
        w[i] = td_rng_uniform(&r, 0.5f, 1.5f);
    for (int isa = 0; isa < TD_ISA_COUNT; isa++) {
        if (!td_isa_supported((td_isa)isa))
            continue;
        for (int dti = 0; dti < 2; dti++) {
            td_dtype dt = dti ? TD_DTYPE_BF16 : TD_DTYPE_F32;
            td_rmsnorm((td_isa)isa, m, n, x, n, w, 1e-5f, out, n, dt);
            for (int64_t row = 0; row < m; row++) {
                double ss = 0;
                for (int64_t i = 0; i < n; i++)
                    ss += (double)x[row * n + i] * x[row * n + i];
                double rs = 1.0 / sqrt(ss / (double)n + 1e-5);
                for (int64_t i = 0; i < n; i++) {
                    double want = x[row * n + i] * rs * w[i];
                    double tol = (dt == TD_DTYPE_BF16 ? 0x1p-8 : 0x1p-20) * fabs(want) + 1e-30;
                    double got = bf16_or_f32(out, row * n + i, dt);
                    if (fabs(got - want) > tol) {
                        fprintf(stderr, "\n  rmsnorm %s %s [%lld][%lld]: %.9g, expected %.9g\n",
                                td_isa_name((td_isa)isa), td_dtype_name(dt), (long long)row, (long long)i, got, want);
                        CU_FAIL("rmsnorm");
                        row = m;
                        break;
                    }
                }
            }
        }
    }
    free(x);
    free(w);
    free(out);
}

static void test_swiglu(void) {
    td_rng r = {8};
    const int64_t m = 9, n = 1536 + 3;
    float *gu = malloc((size_t)(2 * m * n) * sizeof *gu), *out = malloc((size_t)(m * n) * sizeof *out);
    for (int64_t i = 0; i < 2 * m * n; i++)
        gu[i] = td_rng_uniform(&r, -12, 12);
    gu[0] = -100.0f; /* e^100 is past f32: silu must come out ~0, not NaN */
    gu[1] = 100.0f;
    for (int isa = 0; isa < TD_ISA_COUNT; isa++) {
        if (!td_isa_supported((td_isa)isa))
            continue;
        for (int dti = 0; dti < 2; dti++) {
            td_dtype dt = dti ? TD_DTYPE_BF16 : TD_DTYPE_F32;
            td_swiglu((td_isa)isa, m, n, gu, out, dt);
            int bad = 0;
            for (int64_t row = 0; row < m && !bad; row++)
                for (int64_t j = 0; j < n; j++) {
                    double g = gu[row * 2 * n + j], u = gu[row * 2 * n + n + j];
                    double want = g / (1.0 + exp(-g)) * u;
                    double got = bf16_or_f32(out, row * n + j, dt);
                    double tol = (dt == TD_DTYPE_BF16 ? 0x1p-8 : 0x1p-20) * fabs(want) + 1e-30;
                    if (!(fabs(got - want) <= tol)) {
                        fprintf(stderr, "\n  swiglu %s %s [%lld][%lld]: g %g u %g: %.9g, expected %.9g\n",
                                td_isa_name((td_isa)isa), td_dtype_name(dt), (long long)row, (long long)j, g, u, got,
                                want);
                        bad = 1;
                        break;
                    }
                }
            CU_ASSERT_FALSE(bad);
        }
    }
    free(gu);
    free(out);
}

/* RoPE on every ISA against the rotation written out with double angles,
 * including a rope_dim below head_dim (the last dims pass through) and one
 * that is not a multiple of 16 (a masked tail). */
static void test_rope(void) {
    const int32_t H = 3, D = 64;
    const int32_t rope_dims[2] = {48, 40};
    for (int ri = 0; ri < 2; ri++) {
        const int32_t R = rope_dims[ri];
        double inv[32];
        for (int i = 0; i < R / 2; i++)
            inv[i] = pow(10000.0, -2.0 * i / R);
        for (int isa = 0; isa < TD_ISA_COUNT; isa++) {
            if (!td_isa_supported((td_isa)isa))
                continue;
            td_rng r = {9};
            float x[3 * 64], x0[3 * 64], cs[128];
            for (int i = 0; i < H * D; i++)
                x[i] = x0[i] = td_rng_uniform(&r, -1, 1);
            const double pos = 1234;
            td_rope_angles(pos, inv, R, cs);
            td_rope((td_isa)isa, x, H, D, R, cs);
            int bad = 0;
            for (int h = 0; h < H; h++)
                for (int i = 0; i < D; i += 2) {
                    double a = x0[h * D + i], b = x0[h * D + i + 1], c = 1, s = 0;
                    if (i < R) {
                        c = cos(pos * inv[i / 2]);
                        s = sin(pos * inv[i / 2]);
                    }
                    bad += fabs(x[h * D + i] - (a * c - b * s)) > 1e-6;
                    bad += fabs(x[h * D + i + 1] - (a * s + b * c)) > 1e-6;
                }
            if (bad)
                fprintf(stderr, "\n  rope %s rope_dim %d: %d values off\n", td_isa_name((td_isa)isa), R, bad);
            CU_ASSERT_EQUAL(bad, 0);
        }
    }
}

void td_test_register(void) {
    static const td_test gemm[] = {
        {"bf16 weights (oneDNN) vs double reference", test_gemm_bf16},
        {"f32 weights (OpenBLAS) vs double reference", test_gemm_f32},
        {"bf16: a row's result does not depend on the batch", test_invariance_bf16},
        {"errors", test_gemm_errors},
        {NULL, NULL},
    };
    static const td_test ops[] = {
        {"rmsnorm, every ISA, f32 and bf16 out", test_rmsnorm},
        {"swiglu, every ISA, f32 and bf16 out", test_swiglu},
        {"rope", test_rope},
        {NULL, NULL},
    };
    td_add_suite("linear", gemm);
    td_add_suite("ops", ops);
}
