#include "offload/hwprobe.h"

#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/dtype.h"
#include "cpu/linear.h"

#if defined(TD_HAVE_X86_KERNELS)
#include <immintrin.h>
#define TARGET(s) __attribute__((target(s)))
#endif

static uint64_t read_scalar(const uint64_t *p, size_t n) {
    uint64_t a = 0, b = 0, c = 0, d = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a ^= p[i];
        b ^= p[i + 1];
        c ^= p[i + 2];
        d ^= p[i + 3];
    }
    for (; i < n; i++)
        a ^= p[i];
    return a ^ b ^ c ^ d;
}

#if defined(TD_HAVE_X86_KERNELS)
TARGET("avx512f") static uint64_t read_avx512(const uint64_t *p, size_t n) {
    __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) { /* 256 bytes: four cache lines per iteration */
        a = _mm512_xor_si512(a, _mm512_loadu_si512(p + i));
        b = _mm512_xor_si512(b, _mm512_loadu_si512(p + i + 8));
        c = _mm512_xor_si512(c, _mm512_loadu_si512(p + i + 16));
        d = _mm512_xor_si512(d, _mm512_loadu_si512(p + i + 24));
    }
    a = _mm512_xor_si512(_mm512_xor_si512(a, b), _mm512_xor_si512(c, d));
    return (uint64_t)_mm512_reduce_or_epi64(a) ^ read_scalar(p + i, n - i);
}
#endif

double td_probe_read_gbps(const void *buf, size_t bytes, int n_threads, int reps) {
    const uint64_t *p = buf;
    const size_t n = bytes / 8;
    const int nt = n_threads > 0 ? n_threads : omp_get_max_threads();
    int wide = 0;
#if defined(TD_HAVE_X86_KERNELS)
    wide = td_isa_supported(TD_ISA_AVX512);
#endif
    double best = 0;
    volatile uint64_t sink = 0;
    for (int r = 0; r < (reps < 1 ? 1 : reps); r++) {
        uint64_t x = 0;
        double t0 = td_seconds();
#pragma omp parallel num_threads(nt) reduction(^ : x)
        {
            const int me = omp_get_thread_num(), team = omp_get_num_threads();
            const size_t lo = n * (size_t)me / (size_t)team, hi = n * (size_t)(me + 1) / (size_t)team;
#if defined(TD_HAVE_X86_KERNELS)
            x ^= wide ? read_avx512(p + lo, hi - lo) : read_scalar(p + lo, hi - lo);
#else
            x ^= read_scalar(p + lo, hi - lo);
#endif
        }
        double dt = td_seconds() - t0;
        sink ^= x;
        double gbps = (double)(n * 8) / dt * 1e-9;
        if (gbps > best)
            best = gbps;
    }
    (void)sink;
    return best;
}

/* Each loop keeps 12 independent accumulators: enough to cover the latency
 * (4-6 cycles) of two FMA pipes. The values stay bounded: a -> a * x + y with
 * x slightly below 1. */
#define ITERS 2000000L

static double fma_scalar(long iters) {
    float a[12];
    for (int k = 0; k < 12; k++)
        a[k] = (float)k;
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < 12; k++)
            a[k] = a[k] * 0.9999999f + 1e-7f;
    float s = 0;
    for (int k = 0; k < 12; k++)
        s += a[k];
    return s;
}

#if defined(TD_HAVE_X86_KERNELS)
#define FMA_BODY(VEC, SET1, FMADD, ADD, width)                                                                         \
    VEC a[12];                                                                                                         \
    for (int k = 0; k < 12; k++)                                                                                       \
        a[k] = SET1((float)k);                                                                                         \
    const VEC x = SET1(0.9999999f), y = SET1(1e-7f);                                                                   \
    for (long i = 0; i < iters; i++)                                                                                   \
        for (int k = 0; k < 12; k++)                                                                                   \
            a[k] = FMADD(a[k], x, y);                                                                                  \
    for (int k = 1; k < 12; k++)                                                                                       \
        a[0] = ADD(a[0], a[k]);                                                                                        \
    float out[width];                                                                                                  \
    memcpy(out, &a[0], sizeof out);                                                                                    \
    return out[0];

TARGET("avx2,fma")
static double fma_avx2(long iters){FMA_BODY(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps,
                                            8)} TARGET("avx512f") static double fma_avx512(long iters){
    FMA_BODY(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, 16)}

TARGET("avx512f,avx512bf16") static double dot_bf16(long iters) {
    __m512 a[12];
    for (int k = 0; k < 12; k++)
        a[k] = _mm512_set1_ps((float)k);
    const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80), y = (__m512bh)_mm512_set1_epi32(0x33d633d6);
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < 12; k++)
            a[k] = _mm512_dpbf16_ps(a[k], x, y);
    for (int k = 1; k < 12; k++)
        a[0] = _mm512_add_ps(a[0], a[k]);
    return _mm512_reduce_add_ps(a[0]);
}
#endif

typedef double (*loop_fn)(long iters);

static double run_peak(loop_fn f, double flops_per_iter, int n_threads) {
    const int nt = n_threads > 0 ? n_threads : omp_get_max_threads();
    double best = 0;
    volatile double sink = 0;
    for (int r = 0; r < 3; r++) {
        double s = 0, t0 = td_seconds();
#pragma omp parallel num_threads(nt) reduction(+ : s)
        s += f(ITERS);
        double dt = td_seconds() - t0;
        sink += s;
        double g = flops_per_iter * (double)ITERS * nt / dt * 1e-9;
        if (g > best)
            best = g;
    }
    (void)sink;
    return best;
}

double td_probe_fma_gflops(td_isa isa, int n_threads) {
#if defined(TD_HAVE_X86_KERNELS)
    if (isa >= TD_ISA_AVX512 && td_isa_supported(TD_ISA_AVX512))
        return run_peak(fma_avx512, 12.0 * 16 * 2, n_threads);
    if (isa >= TD_ISA_AVX2 && td_isa_supported(TD_ISA_AVX2))
        return run_peak(fma_avx2, 12.0 * 8 * 2, n_threads);
#endif
    (void)isa;
    return run_peak(fma_scalar, 12.0 * 2, n_threads);
}

double td_probe_bf16dot_gflops(int n_threads) {
#if defined(TD_HAVE_X86_KERNELS)
    if (td_isa_supported(TD_ISA_AVX512BF16))
        return run_peak(dot_bf16, 12.0 * 32 * 2, n_threads);
#endif
    (void)n_threads;
    return 0;
}

double td_probe_gemm_bf16_gflops(int n, int n_threads, double min_seconds) {
    /* Square n x n x n through the engine's own host GEMM (cpu/linear.h): the
     * rate the linear layers could reach if their shapes were this kind. */
    double best = 0;
    size_t nn = (size_t)n * (size_t)n;
    uint16_t *w = malloc(nn * sizeof *w), *x = malloc(nn * sizeof *x);
    float *y = malloc(nn * sizeof *y);
    td_gemm *g = NULL;
    td_linear *l = NULL;
    int saved = omp_get_max_threads();
    omp_set_num_threads(n_threads);
    if (w && x && y && td_gemm_create(&g, NULL) == TANDEM_OK) {
        /* small values of both signs, so that nothing overflows or flushes */
        for (size_t i = 0; i < nn; i++) {
            w[i] = td_f32_to_bf16((float)((int)(i * 2654435761u % 17) - 8) * 0.0625f);
            x[i] = td_f32_to_bf16((float)((int)(i * 40503u % 13) - 6) * 0.125f);
        }
        if (td_linear_create(g, n, n, TD_DTYPE_BF16, w, &l, NULL) == TANDEM_OK &&
            td_linear_forward(g, l, n, x, y, false, NULL) == TANDEM_OK) { /* warm-up: JIT, page faults */
            double t_end = td_seconds() + min_seconds;
            do {
                double t0 = td_seconds();
                if (td_linear_forward(g, l, n, x, y, false, NULL) != TANDEM_OK)
                    break;
                double gf = 2.0 * (double)nn * n / (td_seconds() - t0) * 1e-9;
                if (gf > best)
                    best = gf;
            } while (td_seconds() < t_end);
        }
    }
    omp_set_num_threads(saved);
    td_linear_destroy(l);
    td_gemm_destroy(g);
    free(w);
    free(x);
    free(y);
    return best;
}

void td_probe_cpu_name(char *out, size_t n) {
    snprintf(out, n, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0) {
            char *p = strchr(line, ':');
            if (p) {
                p += 1 + (p[1] == ' ');
                p[strcspn(p, "\n")] = 0;
                snprintf(out, n, "%s", p);
            }
            break;
        }
    fclose(f);
}
