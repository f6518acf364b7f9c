/* The device conformance suite: every call of gpu/device.h against a plain
 * reference written here, on every backend that is present.
 *
 *   emu compute  always (ops, memory with a 64 MiB device);
 *   cuda         when td_device_open finds a device; otherwise one line says
 *                why and its cases count as skipped, not passed;
 *   emu timed    (and a link model): op and copy durations, overlap of a copy
 *                with compute, serialization of compute across streams.
 *
 * The references are loops in double over the same bf16-rounded inputs the
 * device sees, written here and not taken from cpu/: the emulated device runs
 * the cpu/ kernels, so comparing with them would test nothing. Shapes include
 * odd sizes and strides larger than a row; padding is filled with NaN (inputs)
 * or a sentinel (outputs), so a kernel that reads or writes past a row fails.
 * Tolerances are derived next to each test. RNG seeds are fixed. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/dtype.h"
#include "gpu/device.h"
#include "gpu/device_model.h"
#include "tests/test_util.h"

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TD_SLOW_SANITIZER 1
#endif
#endif
#ifndef TD_SLOW_SANITIZER
#define TD_SLOW_SANITIZER 0
#endif

#define BF16_NAN 0x7fc0u
#define PAD_F32 777.0f /* sentinel in output padding: must survive every op */

/* The device and two streams of the running suite: CUnit tests take no
 * arguments, so each suite's init opens them here and its cleanup closes. */
static td_device *dev;
static td_stream *s0, *s1;
static const char *want_backend; /* info.backend the running suite expects */
static bool want_timed;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- helpers: memory and transfers (each asserts success) ------------------- */

static void *d_alloc(size_t bytes) {
    void *p = NULL;
    td_error err = {0};
    TD_ASSERT_OK(td_dev_alloc(dev, bytes, &p, &err), &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    return p;
}

static void *h_alloc(size_t bytes) {
    void *p = NULL;
    td_error err = {0};
    TD_ASSERT_OK(td_dev_host_alloc(dev, bytes, &p, &err), &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    return p;
}

static void sync_stream(td_stream *s) {
    td_error err = {0};
    TD_ASSERT_OK(td_dev_stream_sync(dev, s, &err), &err);
}

/* Copies through pinned memory, as the interface asks of async copies. */
static void upload(void *d, const void *src, size_t bytes) {
    td_error err = {0};
    void *h = h_alloc(bytes);
    memcpy(h, src, bytes);
    TD_ASSERT_OK(td_dev_copy(dev, s0, d, h, bytes, TD_COPY_H2D, &err), &err);
    sync_stream(s0);
    td_dev_host_free(dev, h);
}

static void *d_from(const void *src, size_t bytes) {
    void *d = d_alloc(bytes);
    upload(d, src, bytes);
    return d;
}

static void download(void *dst, const void *d, size_t bytes) {
    td_error err = {0};
    void *h = h_alloc(bytes);
    TD_ASSERT_OK(td_dev_copy(dev, s0, h, d, bytes, TD_COPY_D2H, &err), &err);
    sync_stream(s0);
    memcpy(dst, h, bytes);
    td_dev_host_free(dev, h);
}

static float bf16r(float x) { return td_bf16_to_f32(td_f32_to_bf16(x)); }

static float out_value(const void *p, size_t i, td_dtype t) {
    return t == TD_DTYPE_F32 ? ((const float *)p)[i] : td_bf16_to_f32(((const uint16_t *)p)[i]);
}

static void out_store(void *p, size_t i, float v, td_dtype t) {
    if (t == TD_DTYPE_F32)
        ((float *)p)[i] = v;
    else
        ((uint16_t *)p)[i] = td_f32_to_bf16(v);
}

static void shuffle(int32_t *a, int32_t n, td_rng *r) {
    for (int32_t i = n - 1; i > 0; i--) {
        int32_t j = td_rng_int(r, 0, i), t = a[i];
        a[i] = a[j], a[j] = t;
    }
}

/* One element's check; prints the first failure of a case and returns 0. */
static int close_enough(const char *what, size_t idx, double got, double want, double tol) {
    if (fabs(got - want) <= tol) /* false for NaN */
        return 1;
    fprintf(stderr, "\n  %s: element %zu: got %.9g want %.9g (err %.3g > tol %.3g)\n", what, idx, got, want,
            fabs(got - want), tol);
    return 0;
}

/* ---- suites: open and close the device ------------------------------------------ */

static int open_suite(const td_device_config *c, const char *backend, bool timed) {
    td_error err = {0};
    dev = NULL, s0 = s1 = NULL;
    want_backend = backend, want_timed = timed;
    if (td_device_open(c, &dev, &err) != TANDEM_OK) {
        fprintf(stderr, "cannot open the %s device: %s\n", backend, err.msg);
        dev = NULL;
        return 1;
    }
    if (td_dev_stream_create(dev, &s0, &err) != TANDEM_OK || td_dev_stream_create(dev, &s1, &err) != TANDEM_OK) {
        fprintf(stderr, "cannot create a stream on %s: %s\n", backend, err.msg);
        return 1;
    }
    return 0;
}

static int close_suite(void) {
    if (dev) {
        if (s0)
            td_dev_stream_destroy(dev, s0);
        if (s1)
            td_dev_stream_destroy(dev, s1);
        td_device_close(dev);
    }
    dev = NULL, s0 = s1 = NULL;
    return 0;
}

static td_device_config emu_config(td_emu_mode mode) {
    td_device_config c;
    td_device_config_default(&c);
    c.kind = TD_DEVICE_KIND_EMU;
    c.emu_mode = mode;
    return c;
}

static td_device_config cuda_config(void) {
    td_device_config c;
    td_device_config_default(&c);
    c.kind = TD_DEVICE_KIND_CUDA;
    return c;
}

#define EMU_SMALL_MEM ((size_t)64 << 20)

static int init_emu_mem(void) {
    td_device_config c = emu_config(TD_EMU_COMPUTE);
    c.emu_mem_bytes = EMU_SMALL_MEM; /* small enough to run out of */
    return open_suite(&c, "emu", false);
}
static int init_emu_ops(void) {
    td_device_config c = emu_config(TD_EMU_COMPUTE);
    return open_suite(&c, "emu", false);
}
static int init_emu_timed(void) {
    td_device_config c = emu_config(TD_EMU_TIMED);
    c.gpu = td_gpu_model_find("T4");
    c.link = td_link_model_find("pcie3-x16");
    return open_suite(&c, "emu", true);
}
static int init_cuda(void) {
    td_device_config c = cuda_config();
    return open_suite(&c, "cuda", false);
}

/* ---- info ------------------------------------------------------------------------ */

static void test_info(void) {
    CU_ASSERT_PTR_NOT_NULL_FATAL(dev->ops);
    CU_ASSERT_STRING_EQUAL(dev->info.backend, want_backend);
    CU_ASSERT(dev->info.name[0] != '\0');
    CU_ASSERT(dev->info.mem_total > 0);
    CU_ASSERT_EQUAL(dev->info.timed, want_timed);
}

/* ---- memory ---------------------------------------------------------------------- */

static int all_bytes(const uint8_t *p, size_t n, uint8_t v) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != v)
            return 0;
    return 1;
}

static void expect_oom(size_t bytes, const char *what) {
    void *p = NULL;
    td_error err = {0};
    tandem_status st = td_dev_alloc(dev, bytes, &p, &err);
    if (st != TANDEM_ERR_OUT_OF_MEMORY || !err.msg[0]) {
        fprintf(stderr, "\n  alloc %s (%zu bytes): %s '%s', expected TANDEM_ERR_OUT_OF_MEMORY with a message\n", what,
                bytes, tandem_status_name(st), err.msg);
        CU_FAIL("alloc beyond the device's memory");
    }
    if (st == TANDEM_OK)
        td_dev_free(dev, p);
}

static void test_memory(void) {
    td_error err = {0};
    td_rng r = {1};
    const size_t N = ((size_t)1 << 20) + 3; /* odd: no copy may assume whole words */
    const size_t used0 = td_dev_mem_used(dev);
    uint8_t *d1 = d_alloc(N), *d2 = d_alloc(N), *d3 = d_alloc(N);
    const size_t used1 = td_dev_mem_used(dev);
    CU_ASSERT(used1 >= used0 + 3 * N);
    uint8_t *h = h_alloc(N), *h1 = h_alloc(N);

    /* fresh device memory reads as zeros */
    memset(h, 0xee, N);
    TD_ASSERT_OK(td_dev_copy(dev, s0, h, d1, N, TD_COPY_D2H, &err), &err);
    sync_stream(s0);
    CU_ASSERT(all_bytes(h, N, 0));

    /* H2D, D2D, D2H round trip, queued back to back on one stream */
    for (size_t i = 0; i < N; i++)
        h1[i] = (uint8_t)td_rng_next(&r);
    memset(h, 0xee, N);
    TD_ASSERT_OK(td_dev_copy(dev, s0, d1, h1, N, TD_COPY_H2D, &err), &err);
    TD_ASSERT_OK(td_dev_copy(dev, s0, d2, d1, N, TD_COPY_D2D, &err), &err);
    TD_ASSERT_OK(td_dev_copy(dev, s0, h, d2, N, TD_COPY_D2H, &err), &err);
    sync_stream(s0);
    CU_ASSERT(memcmp(h, h1, N) == 0);

    /* unaligned sub-range D2D: only the range moves */
    TD_ASSERT_OK(td_dev_copy(dev, s0, d3 + 3, d1 + 7, 1000, TD_COPY_D2D, &err), &err);
    TD_ASSERT_OK(td_dev_copy(dev, s0, h, d3, N, TD_COPY_D2H, &err), &err);
    sync_stream(s0);
    CU_ASSERT(all_bytes(h, 3, 0));
    CU_ASSERT(memcmp(h + 3, h1 + 7, 1000) == 0);
    CU_ASSERT(all_bytes(h + 1003, N - 1003, 0));

    /* memset of an unaligned range */
    TD_ASSERT_OK(td_dev_memset(dev, s0, d2 + 5, 0x5a, 1001, &err), &err);
    TD_ASSERT_OK(td_dev_copy(dev, s0, h, d2, N, TD_COPY_D2H, &err), &err);
    sync_stream(s0);
    CU_ASSERT(memcmp(h, h1, 5) == 0);
    CU_ASSERT(all_bytes(h + 5, 1001, 0x5a));
    CU_ASSERT(memcmp(h + 1006, h1 + 1006, N - 1006) == 0);

    td_dev_free(dev, d1), td_dev_free(dev, d2), td_dev_free(dev, d3);
    CU_ASSERT(td_dev_mem_used(dev) + 3 * N <= used1);

    /* memory freed dirty comes back zero-filled */
    const size_t M = (size_t)4 << 20;
    uint8_t *hm = h_alloc(M);
    for (int round = 0; round < 2; round++) {
        uint8_t *d = d_alloc(M);
        memset(hm, 0xee, M);
        TD_ASSERT_OK(td_dev_copy(dev, s0, hm, d, M, TD_COPY_D2H, &err), &err);
        sync_stream(s0);
        CU_ASSERT(all_bytes(hm, M, 0));
        TD_ASSERT_OK(td_dev_memset(dev, s0, d, 0xab, M, &err), &err);
        sync_stream(s0);
        td_dev_free(dev, d);
    }
    td_dev_host_free(dev, hm);

    /* out of memory is a status, never a crash; a size near SIZE_MAX must
     * not wrap around in the accounting */
    const size_t total = dev->info.mem_total;
    expect_oom(total + 1, "mem_total + 1");
    expect_oom(SIZE_MAX, "SIZE_MAX");
    expect_oom(SIZE_MAX - 4095, "SIZE_MAX - 4095");
    if (!strcmp(dev->info.backend, "emu"))
        CU_ASSERT_EQUAL(total, EMU_SMALL_MEM);
    if (total <= ((size_t)256 << 20)) {
        /* the limit counts what is live: a second 5/8 fails until the first is freed */
        void *a = d_alloc(total / 8 * 5);
        expect_oom(total / 8 * 5, "5/8 of mem_total with 5/8 live");
        td_dev_free(dev, a);
        a = d_alloc(total / 8 * 5);
        td_dev_free(dev, a);
    }
    CU_ASSERT_EQUAL(td_dev_mem_used(dev), used0);

    td_dev_free(dev, NULL); /* no-op */
    td_dev_host_free(dev, h), td_dev_host_free(dev, h1);
}

/* ---- GEMM ------------------------------------------------------------------------- */

typedef struct gemm_case {
    int64_t m, n, k;
    int32_t batch;
    bool trans_b, acc;
    td_dtype c_dt;
    int64_t pad; /* lda, ldb, ldc exceed the row by this much */
} gemm_case;

/* Tolerance: C is a sum of k products of bf16 values (exact in f32) added in
 * f32 in any order, so |err| <= k u sum|a_i b_i| with u = 2^-24; k <= 300
 * here gives 1.8e-5 sum|a b|. 1e-4 leaves a margin and still fails a dropped
 * or doubled term (each is ~sum|a b| / k >= 3e-3 of it). A bf16 C adds one
 * rounding: 2^-8 |c| covers landing on either neighbour. */
static int run_gemm_case(const gemm_case *gc, td_rng *r) {
    const int64_t m = gc->m, n = gc->n, k = gc->k, pad = gc->pad;
    const int32_t nb = gc->batch;
    const int64_t rows_b = gc->trans_b ? n : k, cols_b = gc->trans_b ? k : n;
    const int64_t lda = k + pad, ldb = cols_b + pad, ldc = n + pad;
    /* batch strides leave gaps between matrices too; batch 1 ignores them */
    const int64_t sa = nb > 1 ? m * lda + 3 * pad + 1 : 0, sb = nb > 1 ? rows_b * ldb + pad + 2 : 0,
                  sc = nb > 1 ? m * ldc + 2 * pad + 1 : 0;
    const size_t na = (size_t)((nb - 1) * sa + m * lda), nbe = (size_t)((nb - 1) * sb + rows_b * ldb),
                 nc = (size_t)((nb - 1) * sc + m * ldc);
    const size_t csz = td_dtype_size(gc->c_dt);
    uint16_t *a = malloc(na * 2), *b = malloc(nbe * 2);
    uint8_t *c0 = malloc(nc * csz), *c = malloc(nc * csz);
    bool *logical = calloc(nc, 1);
    for (size_t i = 0; i < na; i++)
        a[i] = BF16_NAN;
    for (size_t i = 0; i < nbe; i++)
        b[i] = BF16_NAN;
    for (int32_t bi = 0; bi < nb; bi++) {
        for (int64_t i = 0; i < m; i++)
            for (int64_t l = 0; l < k; l++)
                a[bi * sa + i * lda + l] = td_f32_to_bf16(td_rng_uniform(r, -1, 1));
        for (int64_t i = 0; i < rows_b; i++)
            for (int64_t l = 0; l < cols_b; l++)
                b[bi * sb + i * ldb + l] = td_f32_to_bf16(td_rng_uniform(r, -1, 1));
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++)
                logical[bi * sc + i * ldc + j] = true;
    }
    /* C: padding holds a sentinel; without accumulate the old values are
     * NaN, which a kernel computing beta * C with beta = 0 would keep */
    for (size_t i = 0; i < nc; i++)
        out_store(c0, i, logical[i] ? (gc->acc ? td_rng_uniform(r, -2, 2) : NAN) : PAD_F32, gc->c_dt);
    void *da = d_from(a, na * 2), *db = d_from(b, nbe * 2), *dc = d_from(c0, nc * csz);
    td_dgemm g = {.m = m,
                  .n = n,
                  .k = k,
                  .batch = nb,
                  .trans_b = gc->trans_b,
                  .accumulate = gc->acc,
                  .a = da,
                  .lda = lda,
                  .stride_a = sa,
                  .b = db,
                  .ldb = ldb,
                  .stride_b = sb,
                  .c = dc,
                  .ldc = ldc,
                  .stride_c = sc,
                  .c_dtype = gc->c_dt};
    td_error err = {0};
    TD_ASSERT_OK(td_dev_gemm(dev, s0, &g, &err), &err);
    download(c, dc, nc * csz);
    char what[160];
    snprintf(what, sizeof what, "gemm m %lld n %lld k %lld batch %d trans_b %d acc %d c %s pad %lld", (long long)m,
             (long long)n, (long long)k, nb, gc->trans_b, gc->acc, td_dtype_name(gc->c_dt), (long long)pad);
    int ok = 1;
    for (int32_t bi = 0; bi < nb && ok; bi++)
        for (int64_t i = 0; i < m && ok; i++)
            for (int64_t j = 0; j < n && ok; j++) {
                const size_t ci = (size_t)(bi * sc + i * ldc + j);
                double want = gc->acc ? out_value(c0, ci, gc->c_dt) : 0, sabs = fabs(want);
                for (int64_t l = 0; l < k; l++) {
                    double av = td_bf16_to_f32(a[bi * sa + i * lda + l]);
                    double bv = td_bf16_to_f32(gc->trans_b ? b[bi * sb + j * ldb + l] : b[bi * sb + l * ldb + j]);
                    want += av * bv, sabs += fabs(av * bv);
                }
                double tol = 1e-4 * sabs + 1e-6 + (gc->c_dt == TD_DTYPE_BF16 ? 0x1p-8 * fabs(want) : 0);
                ok = close_enough(what, ci, out_value(c, ci, gc->c_dt), want, tol);
            }
    for (size_t i = 0; i < nc && ok; i++)
        if (!logical[i] && memcmp(c + i * csz, c0 + i * csz, csz)) {
            fprintf(stderr, "\n  %s: padding element %zu of C was written\n", what, i);
            ok = 0;
        }
    td_dev_free(dev, da), td_dev_free(dev, db), td_dev_free(dev, dc);
    free(a), free(b), free(c0), free(c), free(logical);
    return ok;
}

static void test_gemm(void) {
    const td_dtype F = TD_DTYPE_F32, B = TD_DTYPE_BF16;
    const gemm_case fixed[] = {
        {1, 1, 1, 1, true, false, F, 0},    {1, 37, 19, 1, true, false, F, 3},     {3, 5, 100, 1, false, false, F, 1},
        {17, 33, 7, 3, true, true, F, 5},   {17, 130, 257, 3, false, false, B, 2}, {64, 77, 129, 1, true, false, B, 0},
        {64, 64, 64, 3, false, true, F, 9}, {3, 200, 31, 3, true, false, B, 4},    {64, 1, 300, 1, false, true, F, 1},
        {1, 300, 64, 3, false, true, F, 0}, {17, 16, 48, 1, true, true, F, 16},
    };
    td_rng r = {2};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        CU_ASSERT(run_gemm_case(&fixed[i], &r));
    static const int64_t ms[] = {1, 3, 17, 64};
    for (int i = 0; i < 16; i++) {
        gemm_case gc = {.m = ms[td_rng_int(&r, 0, 3)],
                        .n = td_rng_int(&r, 1, 200),
                        .k = td_rng_int(&r, 1, 300),
                        .batch = td_rng_int(&r, 0, 1) ? 3 : 1,
                        .trans_b = td_rng_int(&r, 0, 1),
                        .c_dt = td_rng_int(&r, 0, 1) ? F : B,
                        .pad = td_rng_int(&r, 0, 9)};
        gc.acc = gc.c_dt == F && td_rng_int(&r, 0, 1);
        CU_ASSERT(run_gemm_case(&gc, &r));
    }
}

/* ---- linear --------------------------------------------------------------------------- */

/* Same tolerance as the GEMM: linear is y (+)= x W^T with fp32 accumulation. */
static void test_linear(void) {
    static const struct { int64_t n, k; } shapes[] = {{1, 1}, {37, 19}, {64, 128}, {130, 257}, {300, 64}};
    static const int64_t ms[] = {1, 3, 17, 64};
    td_rng r = {3};
    td_error err = {0};
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        const int64_t n = shapes[si].n, k = shapes[si].k;
        uint16_t *w = malloc(sizeof(uint16_t) * n * k); /* host memory, as weights_create takes it */
        for (int64_t i = 0; i < n * k; i++)
            w[i] = td_f32_to_bf16(td_rng_uniform(&r, -1, 1));
        td_dweights *dw = NULL;
        TD_ASSERT_OK(td_dev_weights_create(dev, n, k, w, &dw, &err), &err);
        CU_ASSERT_PTR_NOT_NULL_FATAL(dw);
        for (int mi = 0; mi < 4; mi++) {
            const int64_t m = ms[mi], ldx = k + mi * 3, ldy = n + (3 - mi) * 2;
            const bool acc = mi & 1;
            uint16_t *x = malloc(sizeof(uint16_t) * m * ldx);
            float *y0 = malloc(sizeof(float) * m * ldy), *y = malloc(sizeof(float) * m * ldy);
            for (int64_t i = 0; i < m; i++)
                for (int64_t l = 0; l < ldx; l++)
                    x[i * ldx + l] = l < k ? td_f32_to_bf16(td_rng_uniform(&r, -1, 1)) : BF16_NAN;
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < ldy; j++)
                    y0[i * ldy + j] = j < n ? (acc ? td_rng_uniform(&r, -2, 2) : NAN) : PAD_F32;
            void *dx = d_from(x, sizeof(uint16_t) * m * ldx);
            float *dy = d_from(y0, sizeof(float) * m * ldy);
            TD_ASSERT_OK(td_dev_linear(dev, s0, dw, m, dx, ldx, dy, ldy, acc, &err), &err);
            download(y, dy, sizeof(float) * m * ldy);
            char what[128];
            snprintf(what, sizeof what, "linear n %lld k %lld m %lld acc %d", (long long)n, (long long)k, (long long)m,
                     acc);
            int ok = 1;
            for (int64_t i = 0; i < m && ok; i++)
                for (int64_t j = 0; j < ldy && ok; j++) {
                    const size_t yi = (size_t)(i * ldy + j);
                    if (j >= n) {
                        ok = close_enough(what, yi, y[yi], PAD_F32, 0);
                        continue;
                    }
                    double want = acc ? y0[yi] : 0, sabs = fabs(want);
                    for (int64_t l = 0; l < k; l++) {
                        double p = (double)td_bf16_to_f32(x[i * ldx + l]) * td_bf16_to_f32(w[j * k + l]);
                        want += p, sabs += fabs(p);
                    }
                    ok = close_enough(what, yi, y[yi], want, 1e-4 * sabs + 1e-6);
                }
            CU_ASSERT(ok);
            td_dev_free(dev, dx), td_dev_free(dev, dy);
            free(x), free(y0), free(y);
        }
        td_dev_weights_destroy(dev, dw);
        free(w);
    }
}

/* ---- embed ---------------------------------------------------------------------------- */

/* A gather and a widening: exact. */
static void test_embed(void) {
    td_rng r = {4};
    td_error err = {0};
    static const int64_t dims[] = {1, 37, 64};
    const int64_t n_rows = 50;
    const int32_t ids[] = {0, 49, -1, 50, 5, 5, INT32_MAX, INT32_MIN, 3, 17, 48};
    const int64_t n = sizeof ids / sizeof *ids;
    int32_t *did = d_from(ids, sizeof ids);
    for (int ti = 0; ti < 2; ti++) {
        const td_dtype tdt = ti ? TD_DTYPE_BF16 : TD_DTYPE_F32;
        for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
            const int64_t dim = dims[di];
            void *table = malloc((size_t)(n_rows * dim) * td_dtype_size(tdt));
            for (int64_t i = 0; i < n_rows * dim; i++)
                out_store(table, (size_t)i, td_rng_uniform(&r, -3, 3), tdt);
            void *dt = d_from(table, (size_t)(n_rows * dim) * td_dtype_size(tdt));
            float *out = malloc(sizeof(float) * n * dim);
            float *dout = d_alloc(sizeof(float) * n * dim);
            /* NaN: the zero rows of out-of-range ids must be written too */
            TD_ASSERT_OK(td_dev_memset(dev, s0, dout, 0xff, sizeof(float) * n * dim, &err), &err);
            TD_ASSERT_OK(td_dev_embed(dev, s0, dt, tdt, n_rows, dim, did, n, dout, &err), &err);
            download(out, dout, sizeof(float) * n * dim);
            int ok = 1;
            for (int64_t i = 0; i < n && ok; i++)
                for (int64_t d = 0; d < dim && ok; d++) {
                    float want = ids[i] >= 0 && ids[i] < n_rows ? out_value(table, (size_t)(ids[i] * dim + d), tdt) : 0;
                    char what[96];
                    snprintf(what, sizeof what, "embed %s dim %lld id %d", td_dtype_name(tdt), (long long)dim, ids[i]);
                    ok = close_enough(what, (size_t)(i * dim + d), out[i * dim + d], want, 0);
                }
            CU_ASSERT(ok);
            td_dev_free(dev, dt), td_dev_free(dev, dout);
            free(table), free(out);
        }
    }
    td_dev_free(dev, did);
}

/* ---- row ops: rmsnorm, rope, swiglu, add ------------------------------------------------ */

/* Checks a strided output: values in [0, n) of each row against want (a
 * double [m][n]) within tol(want), and the padding untouched. */
typedef double (*tol_fn)(double want, double aux);

static int check_rows(const char *what, const void *got, const void *init, td_dtype dt, int64_t m, int64_t n,
                      int64_t stride, const double *want, const double *aux, tol_fn tol) {
    const size_t esz = td_dtype_size(dt);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < stride; j++) {
            const size_t e = (size_t)(i * stride + j);
            if (j >= n) {
                if (memcmp((const uint8_t *)got + e * esz, (const uint8_t *)init + e * esz, esz)) {
                    fprintf(stderr, "\n  %s: padding element %zu was written\n", what, e);
                    return 0;
                }
                continue;
            }
            double w = want[i * n + j], t = tol(w, aux ? aux[i * n + j] : 0);
            if (dt == TD_DTYPE_BF16)
                t += 0x1p-8 * fabs(w); /* one rounding of the result */
            if (!close_enough(what, e, out_value(got, e, dt), w, t))
                return 0;
        }
    return 1;
}

/* RMSNorm: the sum of n squares in f32 in any order is within (n - 1) u
 * (relative, all terms positive); the inverse square root halves that and
 * adds a few u; the two products add 2u. aux carries n. */
static double rmsnorm_tol(double want, double n) { return ((0.5 * n + 8) * 0x1p-24) * fabs(want) + 1e-30; }

static void test_rmsnorm(void) {
    static const struct {
        int64_t m, n, xpad, opad;
        td_dtype dt;
        float eps;
    } cases[] = {
        {1, 1, 0, 0, TD_DTYPE_F32, 1e-5f},     {3, 7, 2, 1, TD_DTYPE_BF16, 1e-5f},
        {17, 64, 0, 5, TD_DTYPE_F32, 1e-6f},   {64, 333, 7, 0, TD_DTYPE_BF16, 1e-5f},
        {3, 1024, 16, 3, TD_DTYPE_F32, 1e-5f}, {17, 576, 1, 1, TD_DTYPE_F32, 1e-5f},
    };
    td_rng r = {5};
    td_error err = {0};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const int64_t m = cases[ci].m, n = cases[ci].n, xs = n + cases[ci].xpad, os = n + cases[ci].opad;
        const td_dtype dt = cases[ci].dt;
        const size_t esz = td_dtype_size(dt);
        float *x = malloc(sizeof(float) * m * xs), *w = malloc(sizeof(float) * n);
        void *o0 = malloc((size_t)(m * os) * esz), *o = malloc((size_t)(m * os) * esz);
        double *want = malloc(sizeof(double) * m * n), *aux = malloc(sizeof(double) * m * n);
        for (int64_t j = 0; j < n; j++)
            w[j] = td_rng_uniform(&r, -1.5f, 1.5f);
        for (int64_t i = 0; i < m; i++) {
            /* row 0 is tiny, so that eps dominates its mean square and a
             * misplaced eps fails */
            const float amp = i == 0 ? 1e-3f : (float)(1 + i % 4);
            double ss = 0;
            for (int64_t j = 0; j < xs; j++) {
                x[i * xs + j] = j < n ? td_rng_uniform(&r, -amp, amp) : NAN;
                if (j < n)
                    ss += (double)x[i * xs + j] * x[i * xs + j];
            }
            const double inv = 1 / sqrt(ss / (double)n + (double)cases[ci].eps);
            for (int64_t j = 0; j < n; j++)
                want[i * n + j] = x[i * xs + j] * inv * w[j], aux[i * n + j] = (double)n;
        }
        for (int64_t e = 0; e < m * os; e++)
            out_store(o0, (size_t)e, PAD_F32, dt);
        float *dx = d_from(x, sizeof(float) * m * xs), *dw = d_from(w, sizeof(float) * n);
        void *dout = d_from(o0, (size_t)(m * os) * esz);
        TD_ASSERT_OK(td_dev_rmsnorm(dev, s0, m, n, dx, xs, dw, cases[ci].eps, dout, os, dt, &err), &err);
        download(o, dout, (size_t)(m * os) * esz);
        char what[96];
        snprintf(what, sizeof what, "rmsnorm m %lld n %lld %s", (long long)m, (long long)n, td_dtype_name(dt));
        CU_ASSERT(check_rows(what, o, o0, dt, m, n, os, want, aux, rmsnorm_tol));
        td_dev_free(dev, dx), td_dev_free(dev, dw), td_dev_free(dev, dout);
        free(x), free(w), free(o0), free(o), free(want), free(aux);
    }
}

/* RoPE: the device rounds cos and sin of the double angle to f32 (u each)
 * and forms a c - b s in f32 (2u): within 3u (|a| + |b|); 4e-7 (|a| + |b|)
 * covers it. An angle formed in f32 instead is off by ~pos * 2^-24 radians,
 * 2e-3 at position 30000, and fails. aux carries |a| + |b|. */
static double rope_tol(double want, double ab) {
    (void)want;
    return 4e-7 * ab + 1e-30;
}

static void test_rope(void) {
    static const struct {
        int64_t m;
        int32_t n_heads, head_dim, rope_dim;
        int64_t pad;
    } cases[] = {{1, 1, 64, 64, 0}, {3, 4, 64, 32, 5}, {17, 3, 128, 128, 2}, {64, 2, 48, 24, 1}, {17, 5, 64, 2, 3}};
    td_rng r = {6};
    td_error err = {0};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const int64_t m = cases[ci].m;
        const int32_t H = cases[ci].n_heads, D = cases[ci].head_dim, R = cases[ci].rope_dim;
        const int64_t row = (int64_t)H * D, xs = row + cases[ci].pad;
        float *x = malloc(sizeof(float) * m * xs), *x0 = malloc(sizeof(float) * m * xs);
        double *want = malloc(sizeof(double) * m * row), *aux = malloc(sizeof(double) * m * row);
        int32_t *pos = malloc(sizeof(int32_t) * m);
        double *inv_freq = malloc(sizeof(double) * (R / 2));
        for (int32_t i = 0; i < R / 2; i++)
            inv_freq[i] = pow(10000.0, -2.0 * i / R);
        for (int64_t i = 0; i < m; i++) {
            pos[i] = i == 0 ? 0 : i == 1 ? 30000 : i == 2 ? 1 : td_rng_int(&r, 0, 40000);
            for (int64_t j = 0; j < xs; j++)
                x0[i * xs + j] = j < row ? td_rng_uniform(&r, -2, 2) : NAN;
            for (int32_t h = 0; h < H; h++)
                for (int32_t d = 0; d < D; d += 2) {
                    const int64_t e = i * xs + (int64_t)h * D + d, we = i * row + (int64_t)h * D + d;
                    const double a = x0[e], b = x0[e + 1];
                    if (d >= R) { /* past rope_dim: untouched */
                        want[we] = a, want[we + 1] = b, aux[we] = aux[we + 1] = 0;
                        continue;
                    }
                    const double ang = (double)pos[i] * inv_freq[d / 2], c = cos(ang), s = sin(ang);
                    want[we] = a * c - b * s, want[we + 1] = b * c + a * s;
                    aux[we] = aux[we + 1] = fabs(a) + fabs(b);
                }
        }
        float *dx = d_from(x0, sizeof(float) * m * xs);
        int32_t *dpos = d_from(pos, sizeof(int32_t) * m);
        double *dinv = d_from(inv_freq, sizeof(double) * (R / 2));
        TD_ASSERT_OK(td_dev_rope(dev, s0, m, dx, xs, H, D, R, dpos, dinv, &err), &err);
        download(x, dx, sizeof(float) * m * xs);
        char what[96];
        snprintf(what, sizeof what, "rope m %lld heads %d head_dim %d rope_dim %d", (long long)m, H, D, R);
        CU_ASSERT(check_rows(what, x, x0, TD_DTYPE_F32, m, row, xs, want, aux, rope_tol));
        td_dev_free(dev, dx), td_dev_free(dev, dpos), td_dev_free(dev, dinv);
        free(x), free(x0), free(want), free(aux), free(pos), free(inv_freq);
    }
}

/* SwiGLU: silu(g) u with e^-g from a polynomial (~2e-7 relative) and a
 * reciprocal (~2^-23): 1e-5 relative is a wide margin. For g below about
 * -87 the true value is far below f32's normal range; any result of that
 * size (or 0) passes the 1e-30 floor. */
static double swiglu_tol(double want, double aux) {
    (void)aux;
    return 1e-5 * fabs(want) + 1e-30;
}

static void test_swiglu(void) {
    static const struct {
        int64_t m, n;
        td_dtype dt;
    } cases[] = {{1, 1, TD_DTYPE_F32},
                 {3, 37, TD_DTYPE_BF16},
                 {17, 64, TD_DTYPE_F32},
                 {64, 333, TD_DTYPE_BF16},
                 {3, 1000, TD_DTYPE_F32}};
    static const float extremes[] = {-100, -87.5f, -20, 0, 20, 88.7f, 100, -1e-3f};
    td_rng r = {7};
    td_error err = {0};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const int64_t m = cases[ci].m, n = cases[ci].n;
        const td_dtype dt = cases[ci].dt;
        const size_t esz = td_dtype_size(dt);
        float *gu = malloc(sizeof(float) * m * 2 * n);
        void *o0 = malloc((size_t)(m * n) * esz), *o = malloc((size_t)(m * n) * esz);
        double *want = malloc(sizeof(double) * m * n);
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                float g = td_rng_uniform(&r, -10, 10), u = td_rng_uniform(&r, -3, 3);
                if (i == 0 && j < (int64_t)(sizeof extremes / sizeof *extremes))
                    g = extremes[j];
                gu[i * 2 * n + j] = g, gu[i * 2 * n + n + j] = u;
                want[i * n + j] = (double)g / (1 + exp(-(double)g)) * u;
            }
        memset(o0, 0xff, (size_t)(m * n) * esz); /* NaN: every element must be written */
        float *dgu = d_from(gu, sizeof(float) * m * 2 * n);
        void *dout = d_from(o0, (size_t)(m * n) * esz);
        TD_ASSERT_OK(td_dev_swiglu(dev, s0, m, n, dgu, dout, dt, &err), &err);
        download(o, dout, (size_t)(m * n) * esz);
        char what[96];
        snprintf(what, sizeof what, "swiglu m %lld n %lld %s", (long long)m, (long long)n, td_dtype_name(dt));
        CU_ASSERT(check_rows(what, o, o0, dt, m, n, n, want, NULL, swiglu_tol));
        td_dev_free(dev, dgu), td_dev_free(dev, dout);
        free(gu), free(o0), free(o), free(want);
    }
}

static double exact_tol(double want, double aux) {
    (void)want, (void)aux;
    return 0;
}

/* y += x in f32: exact, the same rounding as the host's. */
static void test_add(void) {
    static const struct {
        int64_t m, n, ypad, xpad;
    } cases[] = {{1, 1, 0, 0}, {3, 37, 3, 0}, {17, 64, 0, 7}, {64, 333, 1, 2}};
    td_rng r = {8};
    td_error err = {0};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const int64_t m = cases[ci].m, n = cases[ci].n, ys = n + cases[ci].ypad, xs = n + cases[ci].xpad;
        float *y0 = malloc(sizeof(float) * m * ys), *y = malloc(sizeof(float) * m * ys);
        float *x = malloc(sizeof(float) * m * xs);
        double *want = malloc(sizeof(double) * m * n);
        for (int64_t i = 0; i < m * ys; i++)
            y0[i] = (i % ys) < n ? td_rng_uniform(&r, -5, 5) : PAD_F32;
        for (int64_t i = 0; i < m * xs; i++)
            x[i] = (i % xs) < n ? td_rng_uniform(&r, -5, 5) : NAN;
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++)
                want[i * n + j] = (double)(y0[i * ys + j] + x[i * xs + j]);
        float *dy = d_from(y0, sizeof(float) * m * ys), *dx = d_from(x, sizeof(float) * m * xs);
        TD_ASSERT_OK(td_dev_add(dev, s0, m, n, dy, ys, dx, xs, &err), &err);
        download(y, dy, sizeof(float) * m * ys);
        char what[64];
        snprintf(what, sizeof what, "add m %lld n %lld", (long long)m, (long long)n);
        CU_ASSERT(check_rows(what, y, y0, TD_DTYPE_F32, m, n, ys, want, NULL, exact_tol));
        td_dev_free(dev, dy), td_dev_free(dev, dx);
        free(y0), free(y), free(x), free(want);
    }
}

/* ---- KV append: the documented layout, bit for bit ---------------------------------------- */

static td_kv_layout make_layout(int32_t n_layers, int32_t H, int32_t D, int32_t T, td_dtype dt) {
    td_kv_layout l = {.n_layers = n_layers, .n_kv_heads = H, .head_dim = D, .block_tokens = T, .dtype = dt};
    l.tile_bytes = (size_t)T * D * 2;
    l.block_bytes = (size_t)n_layers * H * 2 * l.tile_bytes;
    return l;
}

static uint16_t cache_bits(td_dtype dt, float x) { return dt == TD_DTYPE_BF16 ? td_f32_to_bf16(x) : td_f32_to_f16(x); }
static float cache_round(td_dtype dt, float x) {
    return dt == TD_DTYPE_BF16 ? bf16r(x) : td_f16_to_f32(td_f32_to_f16(x));
}

/* Appends rows to slots, in three calls: layer 1 at even-or-odd slots of
 * distinct pairs, layer 1 at their neighbours (pair-interleaved V tiles put
 * the two in one 32-bit word: the second write must not clobber the first),
 * layer 2 at the first slots. The pool must then equal, byte for byte, a
 * host-built pool that holds those values at td_kv_k_index / td_kv_v_index
 * and zeros everywhere else (layer 0, other slots). */
static void kv_layout_case(td_dtype dt, int32_t H, int32_t D, int32_t T, td_rng *r) {
    const td_kv_layout L = make_layout(3, H, D, T, dt);
    const int32_t n_blocks = 4, n_pairs = n_blocks * T / 2, n = 24;
    const int64_t row = (int64_t)H * D, ks = row + 1, vs = row + 3;
    td_dkv kv = {.pool = d_alloc(L.block_bytes * n_blocks), .n_blocks = n_blocks, .layout = L};
    uint8_t *want = calloc(L.block_bytes * n_blocks, 1), *got = malloc(L.block_bytes * n_blocks);
    int32_t *pairs = malloc(sizeof(int32_t) * n_pairs), slots[3][24];
    for (int32_t i = 0; i < n_pairs; i++)
        pairs[i] = i;
    shuffle(pairs, n_pairs, r);
    for (int32_t i = 0; i < n; i++) {
        slots[0][i] = 2 * pairs[i] + td_rng_int(r, 0, 1);
        slots[1][i] = slots[0][i] ^ 1;
        slots[2][i] = slots[0][i];
    }
    static const int32_t layers[3] = {1, 1, 2};
    float *k = malloc(sizeof(float) * n * ks), *v = malloc(sizeof(float) * n * vs);
    td_error err = {0};
    for (int call = 0; call < 3; call++) {
        for (int64_t i = 0; i < n * ks; i++)
            k[i] = (i % ks) < row ? td_rng_uniform(r, -4, 4) : NAN;
        for (int64_t i = 0; i < n * vs; i++)
            v[i] = (i % vs) < row ? td_rng_uniform(r, -4, 4) : NAN;
        /* round-to-nearest-even ties, in both dtypes */
        k[0] = td_f32_from_bits(0x3f808000u), k[1] = td_f32_from_bits(0x3f818000u);
        k[2] = 1.0f + 0x1p-11f, k[3] = -(1.0f + 3 * 0x1p-11f);
        for (int32_t i = 0; i < n; i++)
            for (int32_t h = 0; h < H; h++)
                for (int32_t d = 0; d < D; d++) {
                    const int32_t blk = slots[call][i] / T, t = slots[call][i] % T;
                    const size_t base = (size_t)blk * L.block_bytes + td_kv_tile_offset(&L, layers[call], h);
                    const uint16_t kb = cache_bits(dt, k[i * ks + h * D + d]),
                                   vb = cache_bits(dt, v[i * vs + h * D + d]);
                    memcpy(want + base + td_kv_k_index(T, t, d) * 2, &kb, 2);
                    memcpy(want + base + L.tile_bytes + td_kv_v_index(D, t, d) * 2, &vb, 2);
                }
        float *dk = d_from(k, sizeof(float) * n * ks), *dv = d_from(v, sizeof(float) * n * vs);
        int32_t *ds = d_from(slots[call], sizeof(int32_t) * n);
        TD_ASSERT_OK(td_dev_kv_append(dev, s0, &kv, layers[call], n, dk, ks, dv, vs, ds, &err), &err);
        sync_stream(s0);
        td_dev_free(dev, dk), td_dev_free(dev, dv), td_dev_free(dev, ds);
    }
    download(got, kv.pool, L.block_bytes * n_blocks);
    size_t bad = 0;
    while (bad < L.block_bytes * n_blocks && got[bad] == want[bad])
        bad++;
    if (bad < L.block_bytes * n_blocks) {
        const size_t b = bad / L.block_bytes, off = bad % L.block_bytes;
        fprintf(stderr,
                "\n  kv_append %s H %d D %d T %d: pool byte %zu (block %zu, layer %zu, %s tile) is 0x%02x, "
                "want 0x%02x\n",
                td_dtype_name(dt), H, D, T, bad, b, off / (L.block_bytes / L.n_layers),
                (off / L.tile_bytes) % 2 ? "V" : "K", got[bad], want[bad]);
        CU_FAIL("kv_append layout");
    }
    td_dev_free(dev, kv.pool);
    free(want), free(got), free(pairs), free(k), free(v);
}

static void test_kv_append(void) {
    td_rng r = {9};
    kv_layout_case(TD_DTYPE_BF16, 2, 64, 16, &r);
    kv_layout_case(TD_DTYPE_F16, 3, 32, 32, &r);
    kv_layout_case(TD_DTYPE_BF16, 1, 128, 16, &r);
}

/* ---- attention ------------------------------------------------------------------------ */

#define ATTN_LAYER 1 /* of 2: the layer offset is exercised */
#define MAX_SEQS 8

/* A paged device KV pool holding n_seqs sequences through shuffled block
 * tables, and the same K and V (rounded to the cache dtype) unpaged here. */
typedef struct afix {
    int32_t H, G, D, T, NQ;
    td_dtype dt;
    int32_t n_seqs, lens[MAX_SEQS], off[MAX_SEQS + 1], needle[MAX_SEQS];
    bool needles;
    int32_t table_stride;
    int32_t *table;     /* host [n_seqs][table_stride], -1 past each sequence's blocks */
    float *kref, *vref; /* [rows][H][D], layer ATTN_LAYER */
    td_dkv kv;
    int32_t *d_table;
} afix;

/* Not the usual 1 / sqrt(D): a backend that ignored the argument fails. */
static float attn_scale(int32_t D) { return 1.25f / sqrtf((float)D); }

/* The needle direction: every query head of a needle test is this +-1
 * vector, and the needle token's key a multiple of it. */
static float needle_dir(int32_t d) { return (d * 7 + 3) % 5 < 2 ? -1.0f : 1.0f; }

/* needle: NULL for random K and V; else per sequence the position of the
 * one token whose key scores 30 (nats) against the needle queries, every
 * other key 0, so the output is that token's V wherever it is visible and
 * the mean of the visible V where it is not. */
static afix *afix_make(int32_t H, int32_t G, int32_t D, int32_t T, td_dtype dt, const int32_t *lens, int32_t n_seqs,
                       const int32_t *needle, td_rng *r) {
    afix *f = calloc(1, sizeof *f);
    f->H = H, f->G = G, f->D = D, f->T = T, f->NQ = H * G, f->dt = dt, f->n_seqs = n_seqs, f->needles = needle != NULL;
    int32_t n_used = 0, max_blocks = 0;
    for (int32_t s = 0; s < n_seqs; s++) {
        f->lens[s] = lens[s], f->needle[s] = needle ? needle[s] : -1;
        f->off[s + 1] = f->off[s] + lens[s];
        const int32_t nb = (lens[s] + T - 1) / T;
        n_used += nb, max_blocks = nb > max_blocks ? nb : max_blocks;
    }
    const int32_t rows = f->off[n_seqs], n_blocks = n_used + 3; /* spare blocks stay unused */
    f->table_stride = max_blocks + 2;
    int32_t *perm = malloc(sizeof(int32_t) * n_blocks);
    for (int32_t i = 0; i < n_blocks; i++)
        perm[i] = i;
    shuffle(perm, n_blocks, r);
    f->table = malloc(sizeof(int32_t) * n_seqs * f->table_stride);
    for (int32_t i = 0; i < n_seqs * f->table_stride; i++)
        f->table[i] = -1;
    for (int32_t s = 0, next = 0; s < n_seqs; s++)
        for (int32_t b = 0; b < (lens[s] + T - 1) / T; b++)
            f->table[s * f->table_stride + b] = perm[next++];
    f->kv.layout = make_layout(2, H, D, T, dt);
    f->kv.n_blocks = n_blocks;
    f->kv.pool = d_alloc(f->kv.layout.block_bytes * n_blocks);

    const int64_t row = (int64_t)H * D, ks = row + 3, vs = row + 5;
    const float c = 30.0f / (attn_scale(D) * (float)D); /* the needle's score: scale * c * D = 30 */
    f->kref = malloc(sizeof(float) * rows * row);
    f->vref = malloc(sizeof(float) * rows * row);
    float *k = malloc(sizeof(float) * rows * ks), *v = malloc(sizeof(float) * rows * vs);
    int32_t *slots = malloc(sizeof(int32_t) * rows), *rowperm = malloc(sizeof(int32_t) * rows);
    for (int32_t i = 0; i < rows; i++)
        rowperm[i] = i;
    td_error err = {0};
    /* layer 0 gets other random values: reading the wrong layer fails */
    for (int32_t layer = 0; layer < 2; layer++) {
        shuffle(rowperm, rows, r); /* rows reach the device in no particular order */
        for (int32_t i = 0; i < rows * ks; i++)
            k[i] = NAN;
        for (int32_t i = 0; i < rows * vs; i++)
            v[i] = NAN;
        for (int32_t s = 0; s < n_seqs; s++)
            for (int32_t t = 0; t < lens[s]; t++) {
                const int32_t i = f->off[s] + t, p = rowperm[i];
                slots[p] = f->table[s * f->table_stride + t / T] * T + t % T;
                for (int32_t h = 0; h < H; h++)
                    for (int32_t d = 0; d < D; d++) {
                        float kv_k = td_rng_uniform(r, -1, 1), kv_v = td_rng_uniform(r, -1, 1);
                        if (needle && layer == ATTN_LAYER) {
                            kv_k = t == needle[s] ? c * needle_dir(d) : 0;
                            if (t == needle[s])
                                kv_v = 4 + (float)(d % 8) * 0.125f + (float)h * 0.5f;
                        }
                        k[p * ks + h * D + d] = kv_k, v[p * vs + h * D + d] = kv_v;
                        if (layer == ATTN_LAYER) {
                            f->kref[i * row + h * D + d] = cache_round(dt, kv_k);
                            f->vref[i * row + h * D + d] = cache_round(dt, kv_v);
                        }
                    }
            }
        float *dk = d_from(k, sizeof(float) * rows * ks), *dv = d_from(v, sizeof(float) * rows * vs);
        int32_t *ds = d_from(slots, sizeof(int32_t) * rows);
        TD_ASSERT_OK(td_dev_kv_append(dev, s0, &f->kv, layer, rows, dk, ks, dv, vs, ds, &err), &err);
        sync_stream(s0);
        td_dev_free(dev, dk), td_dev_free(dev, dv), td_dev_free(dev, ds);
    }
    f->d_table = d_from(f->table, sizeof(int32_t) * n_seqs * f->table_stride);
    free(perm), free(k), free(v), free(slots), free(rowperm);
    return f;
}

static void afix_free(afix *f) {
    td_dev_free(dev, f->kv.pool), td_dev_free(dev, f->d_table);
    free(f->table), free(f->kref), free(f->vref), free(f);
}

/* The reference: softmax(scale q.K^T) V over tokens [0, ctx) of sequence s,
 * two passes in double. maxv: max |v| over the head's context; sabs: max over
 * tokens of scale log2(e) sum_d |q_d k_td| (the tolerance needs both). */
static void attn_ref(const afix *f, int32_t s, int32_t ctx, const float *q, double scale, double *out, double *maxv,
                     double *sabs) {
    const int32_t D = f->D, H = f->H;
    double *w = malloc(sizeof(double) * ctx);
    for (int32_t h = 0; h < f->NQ; h++) {
        const int32_t kh = h / f->G;
        double mx = -INFINITY, sum = 0, mv = 0, sa = 0;
        for (int32_t t = 0; t < ctx; t++) {
            const float *kr = f->kref + ((size_t)(f->off[s] + t) * H + kh) * D;
            const float *vr = f->vref + ((size_t)(f->off[s] + t) * H + kh) * D;
            double dot = 0, a = 0;
            for (int32_t d = 0; d < D; d++) {
                dot += (double)q[h * D + d] * kr[d];
                a += fabs((double)q[h * D + d] * kr[d]);
                mv = fmax(mv, fabs(vr[d]));
            }
            w[t] = dot * scale;
            mx = fmax(mx, w[t]);
            sa = fmax(sa, a * scale * 1.4426950408889634);
        }
        for (int32_t t = 0; t < ctx; t++)
            sum += (w[t] = exp(w[t] - mx));
        for (int32_t d = 0; d < D; d++) {
            double acc = 0;
            for (int32_t t = 0; t < ctx; t++)
                acc += w[t] * f->vref[((size_t)(f->off[s] + t) * H + kh) * D + d];
            out[h * D + d] = acc / sum;
        }
        maxv[h] = mv, sabs[h] = sa;
    }
    free(w);
}

/* Tolerance, per head, relative to max|v| over its context (the output is a
 * convex combination of V rows):
 * - f32 arithmetic alone (order of sums, a polynomial exp): 1e-4, with a wide
 *   margin (tests/test_attention.c derives it for the host kernels).
 * - A backend may round the scaled query and the softmax weights to the
 *   cache's 16-bit type for its dot products (the emu's AVX-512 bf16 path and
 *   GPU flash-attention kernels do), unit roundoff u = 2^-9 (bf16) or 2^-11
 *   (f16). Score t then moves by at most u S_t (S_t = sabs, log2 units), so
 *   each normalized weight moves by a factor within 2^(+-2 delta), delta =
 *   u max_t S_t: error <= (2^(2 delta) - 1) max|v|; rounding the weights and
 *   normalizing by their rounded sum adds 2u max|v|. With |q| <= 2 and
 *   D = 128 that is ~1e-2 for bf16: the data, not a constant, sets it.
 * - Needle tests are sharp whatever the rounding: every score is exactly 0
 *   but the needle's (30 nats), so the weights are 1 (exact in any type) or
 *   below 1e-13; 1e-3 max|v| is far above the rounding and far below the
 *   error of a misplaced needle (~4).
 * - A bf16 output adds one rounding: 2^-8 |ref|. */
static double attn_tol(const afix *f, double maxv, double sabs, double want, td_dtype out_dt) {
    const double u = f->dt == TD_DTYPE_BF16 ? 0x1p-9 : 0x1p-11;
    double t = f->needles ? 1e-3 * maxv : (exp2(2 * u * sabs) - 1 + 2 * u + 1e-4) * maxv;
    return t + (out_dt == TD_DTYPE_BF16 ? 0x1p-8 * fabs(want) : 0);
}

/* Runs one decode or prefill call: sequence i's queries at positions
 * pos[i] .. pos[i] + nq[i] - 1, their q rows placed in reverse sequence order
 * (q_first is honoured, not assumed), and checks every output row and that
 * the padding of out is untouched. */
static int attn_run(const afix *f, bool decode, const int32_t *pos, const int32_t *nq, td_dtype out_dt, float q_amp,
                    td_rng *r) {
    const int32_t D = f->D, NQ = f->NQ, n_seqs = f->n_seqs;
    const int64_t row = (int64_t)NQ * D, qs = row + 3, os = row + 2;
    const size_t osz = td_dtype_size(out_dt);
    int32_t qf[MAX_SEQS], rows = 0, max_ctx = 0, max_q = 0;
    for (int32_t i = n_seqs - 1; i >= 0; i--) {
        qf[i] = rows, rows += nq[i];
        max_ctx = pos[i] + nq[i] > max_ctx ? pos[i] + nq[i] : max_ctx;
        max_q = nq[i] > max_q ? nq[i] : max_q;
    }
    float *q = malloc(sizeof(float) * rows * qs);
    uint8_t *out = malloc((size_t)(rows * os) * osz);
    for (int64_t i = 0; i < rows * qs; i++)
        q[i] = (i % qs) >= row ? NAN
               : f->needles    ? needle_dir((int32_t)(i % qs % D))
                               : td_rng_uniform(r, -q_amp, q_amp);
    memset(out, 0xff, (size_t)(rows * os) * osz); /* NaN in both dtypes */
    float *dq = d_from(q, sizeof(float) * rows * qs);
    void *dout = d_from(out, (size_t)(rows * os) * osz);
    int32_t *dqf = d_from(qf, sizeof(int32_t) * n_seqs), *dnq = d_from(nq, sizeof(int32_t) * n_seqs),
            *dpos = d_from(pos, sizeof(int32_t) * n_seqs);
    const float scale = attn_scale(D);
    td_dattn a = {.kv = f->kv,
                  .layer = ATTN_LAYER,
                  .n_q_heads = NQ,
                  .scale = scale,
                  .n_seqs = n_seqs,
                  .q_first = dqf,
                  .n_q = dnq,
                  .pos = dpos,
                  .block_table = f->d_table,
                  .table_stride = f->table_stride,
                  .max_ctx = max_ctx,
                  .max_q = max_q,
                  .q = dq,
                  .q_stride = qs,
                  .out = dout,
                  .out_stride = os,
                  .out_dtype = out_dt};
    td_error err = {0};
    TD_ASSERT_OK(decode ? td_dev_attn_decode(dev, s0, &a, &err) : td_dev_attn_prefill(dev, s0, &a, &err), &err);
    download(out, dout, (size_t)(rows * os) * osz);
    double *want = malloc(sizeof(double) * row), maxv[64], sabs[64];
    int ok = 1;
    for (int32_t s = 0; s < n_seqs && ok; s++)
        for (int32_t j = 0; j < nq[s] && ok; j++) {
            const int64_t qr = qf[s] + j;
            attn_ref(f, s, pos[s] + j + 1, q + qr * qs, scale, want, maxv, sabs);
            for (int32_t h = 0; h < NQ && ok; h++)
                for (int32_t d = 0; d < D && ok; d++) {
                    const double w = want[h * D + d], got = out_value(out, (size_t)(qr * os + h * D + d), out_dt);
                    const double tol = attn_tol(f, maxv[h], sabs[h], w, out_dt);
                    if (!(fabs(got - w) <= tol)) {
                        fprintf(stderr,
                                "\n  %s %s cache H %d G %d D %d T %d out %s: seq %d (len %d, needle %d) query at "
                                "pos %d head %d dim %d: got %.7g want %.7g (err %.3g > tol %.3g)\n",
                                decode ? "attn_decode" : "attn_prefill", td_dtype_name(f->dt), f->H, f->G, D, f->T,
                                td_dtype_name(out_dt), s, f->lens[s], f->needle[s], pos[s] + j, h, d, got, w,
                                fabs(got - w), tol);
                        ok = 0;
                    }
                }
            if (ok && !all_bytes(out + (size_t)(qr * os + row) * osz, (size_t)(os - row) * osz, 0xff)) {
                fprintf(stderr, "\n  attention: padding of out row %lld was written\n", (long long)qr);
                ok = 0;
            }
        }
    td_dev_free(dev, dq), td_dev_free(dev, dout), td_dev_free(dev, dqf), td_dev_free(dev, dnq);
    td_dev_free(dev, dpos);
    free(q), free(out), free(want);
    return ok;
}

static void test_attention(void) {
    static const struct {
        int32_t H, G, D, T;
        td_dtype dt;
        float q_amp;
    } cases[] = {
        {2, 1, 64, 16, TD_DTYPE_BF16, 2},
        {1, 3, 128, 16, TD_DTYPE_BF16, 1},
        {2, 4, 128, 32, TD_DTYPE_BF16, 2},
        {2, 3, 64, 16, TD_DTYPE_F16, 2},
    };
    const int32_t lens[] = {1, 15, 16, 17, 300};
    const int32_t n = 5;
    /* decode: one query at each sequence's last position; prefill: chunks
     * after cached tokens (pos > 0), a whole prompt, and one (200, 40) that
     * stops 60 tokens short of what the cache holds: those must be masked */
    const int32_t dec_pos[] = {0, 14, 15, 16, 299}, dec_n[] = {1, 1, 1, 1, 1};
    const int32_t pre_pos[] = {0, 0, 5, 1, 200}, pre_n[] = {1, 15, 11, 16, 40};
    td_rng r = {10};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        afix *f = afix_make(cases[ci].H, cases[ci].G, cases[ci].D, cases[ci].T, cases[ci].dt, lens, n, NULL, &r);
        for (int o = 0; o < 2; o++) {
            const td_dtype odt = o ? TD_DTYPE_BF16 : TD_DTYPE_F32;
            CU_ASSERT(attn_run(f, true, dec_pos, dec_n, odt, cases[ci].q_amp, &r));
            CU_ASSERT(attn_run(f, false, pre_pos, pre_n, odt, cases[ci].q_amp, &r));
        }
        afix_free(f);
    }
}

/* A needle per sequence, at block edges: the output is the needle's V where
 * the causal mask shows it and the mean of V where it does not, so a wrong
 * block, token, layer or mask boundary is an error of ~4, far above any
 * rounding. */
static void test_attention_needle(void) {
    static const struct {
        int32_t H, G, D, T;
        td_dtype dt;
    } cases[] = {{2, 4, 128, 16, TD_DTYPE_BF16}, {1, 3, 64, 32, TD_DTYPE_F16}};
    const int32_t lens[] = {1, 17, 33, 64, 100, 300}, needle[] = {0, 16, 15, 63, 50, 299};
    const int32_t n = 6;
    const int32_t last[] = {0, 16, 32, 63, 99, 299}, ones[] = {1, 1, 1, 1, 1, 1};
    const int32_t early[] = {0, 15, 32, 62, 99, 298}; /* seqs 1, 3, 5: the needle is just past the query */
    const int32_t pre_pos[] = {0, 0, 10, 60, 40, 280}, pre_n[] = {1, 17, 23, 4, 20, 20};
    td_rng r = {11};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        afix *f = afix_make(cases[ci].H, cases[ci].G, cases[ci].D, cases[ci].T, cases[ci].dt, lens, n, needle, &r);
        CU_ASSERT(attn_run(f, true, last, ones, TD_DTYPE_F32, 1, &r));
        CU_ASSERT(attn_run(f, true, early, ones, TD_DTYPE_BF16, 1, &r));
        CU_ASSERT(attn_run(f, false, pre_pos, pre_n, TD_DTYPE_F32, 1, &r));
        CU_ASSERT(attn_run(f, false, pre_pos, pre_n, TD_DTYPE_BF16, 1, &r));
        afix_free(f);
    }
}

/* ---- top-k -------------------------------------------------------------------------- */

typedef struct vi {
    float v;
    int32_t i;
} vi;

static int vi_cmp(const void *pa, const void *pb) {
    const vi *a = pa, *b = pb;
    if (a->v != b->v)
        return a->v > b->v ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

/* Exact: ids and values are selected, not computed. */
static void test_topk(void) {
    static const struct {
        int64_t m, n;
        int32_t k;
        bool vals;
    } cases[] = {{1, 1, 1, true},    {3, 7, 5, true},   {17, 101, 40, true}, {3, 32003, 40, false}, {2, 1001, 64, true},
                 {5, 257, 1, false}, {17, 33, 5, true}, {64, 999, 1, true},  {3, 32003, 1, true}};
    td_rng r = {12};
    td_error err = {0};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const int64_t m = cases[ci].m, n = cases[ci].n, xs = n + 3;
        const int32_t k = cases[ci].k;
        float *x = malloc(sizeof(float) * m * xs);
        int32_t *ids = malloc(sizeof(int32_t) * m * k);
        float *vals = malloc(sizeof(float) * m * k);
        vi *ref = malloc(sizeof(vi) * n);
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < xs; j++) {
                float v;
                switch (i % 3) {
                case 0: v = td_rng_uniform(&r, -10, 10); break;
                case 1: /* few distinct values: ties everywhere, some masked */
                    v = td_rng_int(&r, 0, 7) == 0 ? -INFINITY : (float)td_rng_int(&r, 0, 4);
                    break;
                default: v = 1.5f; break; /* all tied: ids 0 .. k-1 */
                }
                x[i * xs + j] = j < n ? v : 1e30f; /* padding would win if read */
            }
        float *dx = d_from(x, sizeof(float) * m * xs);
        int32_t *dids = d_alloc(sizeof(int32_t) * m * k);
        float *dvals = cases[ci].vals ? d_alloc(sizeof(float) * m * k) : NULL;
        TD_ASSERT_OK(td_dev_topk(dev, s0, m, n, dx, xs, k, dids, dvals, &err), &err);
        download(ids, dids, sizeof(int32_t) * m * k);
        if (dvals)
            download(vals, dvals, sizeof(float) * m * k);
        int ok = 1;
        for (int64_t i = 0; i < m && ok; i++) {
            for (int64_t j = 0; j < n; j++)
                ref[j] = (vi){x[i * xs + j], (int32_t)j};
            qsort(ref, (size_t)n, sizeof *ref, vi_cmp);
            for (int32_t j = 0; j < k && ok; j++)
                if (ids[i * k + j] != ref[j].i || (dvals && vals[i * k + j] != ref[j].v)) {
                    fprintf(stderr, "\n  topk m %lld n %lld k %d: row %lld rank %d: got id %d (%g) want id %d (%g)\n",
                            (long long)m, (long long)n, k, (long long)i, j, ids[i * k + j],
                            dvals ? vals[i * k + j] : NAN, ref[j].i, ref[j].v);
                    ok = 0;
                }
        }
        CU_ASSERT(ok);
        td_dev_free(dev, dx), td_dev_free(dev, dids), td_dev_free(dev, dvals);
        free(x), free(ids), free(vals), free(ref);
    }
}

/* ---- streams and events ---------------------------------------------------------------- */

/* One stream runs its work in order: a chain where each op reads the last
 * one's result, queued with no synchronization in between. */
static void test_stream_order(void) {
    const int64_t m = 10, n = 100, N = m * n;
    td_error err = {0};
    float *x = malloc(sizeof(float) * N), *garbage = malloc(sizeof(float) * N);
    for (int64_t i = 0; i < N; i++)
        x[i] = (float)(i % 13 - 6), garbage[i] = 1e6f;
    float *dx = d_from(x, sizeof(float) * N), *dy = d_from(garbage, sizeof(float) * N);
    float *dz = d_alloc(sizeof(float) * N), *h = h_alloc(sizeof(float) * N);
    TD_ASSERT_OK(td_dev_memset(dev, s0, dy, 0, sizeof(float) * N, &err), &err);
    for (int i = 0; i < 10; i++)
        TD_ASSERT_OK(td_dev_add(dev, s0, m, n, dy, n, dx, n, &err), &err);
    TD_ASSERT_OK(td_dev_copy(dev, s0, dz, dy, sizeof(float) * N, TD_COPY_D2D, &err), &err);
    TD_ASSERT_OK(td_dev_add(dev, s0, m, n, dz, n, dy, n, &err), &err);
    TD_ASSERT_OK(td_dev_copy(dev, s0, h, dz, sizeof(float) * N, TD_COPY_D2H, &err), &err);
    sync_stream(s0);
    int ok = 1;
    for (int64_t i = 0; i < N && ok; i++)
        ok = close_enough("in-order chain", (size_t)i, h[i], 20.0 * x[i], 0);
    CU_ASSERT(ok);
    td_dev_free(dev, dx), td_dev_free(dev, dy), td_dev_free(dev, dz);
    td_dev_host_free(dev, h);
    free(x), free(garbage);
}

/* A GEMM whose result is known in closed form (integer products, exact in
 * f32): C[i][j] = M (i % 7 + 1)(j % 5 + 1). Long enough on the emu (tens of
 * ms) that a reader not ordered after it sees zeros or a partial C. */
#define BIG 1024

static void big_gemm_inputs(void **da, void **db) {
    uint16_t *a = malloc(sizeof(uint16_t) * BIG * BIG), *b = malloc(sizeof(uint16_t) * BIG * BIG);
    for (int i = 0; i < BIG; i++)
        for (int j = 0; j < BIG; j++) {
            a[i * BIG + j] = td_f32_to_bf16((float)(i % 7 + 1));
            b[i * BIG + j] = td_f32_to_bf16((float)(j % 5 + 1));
        }
    *da = d_from(a, sizeof(uint16_t) * BIG * BIG);
    *db = d_from(b, sizeof(uint16_t) * BIG * BIG);
    free(a), free(b);
}

static td_dgemm big_gemm(const void *da, const void *db, float *dc) {
    return (td_dgemm){.m = BIG,
                      .n = BIG,
                      .k = BIG,
                      .batch = 1,
                      .a = da,
                      .lda = BIG,
                      .b = db,
                      .ldb = BIG,
                      .c = dc,
                      .ldc = BIG,
                      .c_dtype = TD_DTYPE_F32};
}

static int big_gemm_ok(const char *what, const float *c) {
    for (int i = 0; i < BIG; i++)
        for (int j = 0; j < BIG; j++)
            if (!close_enough(what, (size_t)i * BIG + j, c[i * BIG + j], (double)BIG * (i % 7 + 1) * (j % 5 + 1), 0))
                return 0;
    return 1;
}

/* Stream B waits for an event stream A records after a long GEMM, then reads
 * A's result; the host syncs only B. Then stream_destroy must wait for its
 * queued work before it returns. */
static void test_cross_stream(void) {
    td_error err = {0};
    void *da, *db;
    big_gemm_inputs(&da, &db);
    const size_t cb = sizeof(float) * BIG * BIG;
    float *dc = d_alloc(cb), *dc2 = d_alloc(cb), *h = h_alloc(cb);
    td_event *ev = NULL;
    TD_ASSERT_OK(td_dev_event_create(dev, &ev, &err), &err);
    td_dgemm g = big_gemm(da, db, dc);
    TD_ASSERT_OK(td_dev_gemm(dev, s0, &g, &err), &err);
    TD_ASSERT_OK(td_dev_event_record(dev, ev, s0, &err), &err);
    TD_ASSERT_OK(td_dev_stream_wait(dev, s1, ev, &err), &err);
    TD_ASSERT_OK(td_dev_copy(dev, s1, dc2, dc, cb, TD_COPY_D2D, &err), &err);
    TD_ASSERT_OK(td_dev_copy(dev, s1, h, dc2, cb, TD_COPY_D2H, &err), &err);
    sync_stream(s1);
    CU_ASSERT(big_gemm_ok("read on stream B after waiting on A", h));
    sync_stream(s0);
    CU_ASSERT(td_dev_event_query(dev, ev));

    td_stream *s2 = NULL;
    TD_ASSERT_OK(td_dev_stream_create(dev, &s2, &err), &err);
    float *dc3 = d_alloc(cb);
    memset(h, 0, cb);
    g.c = dc3;
    TD_ASSERT_OK(td_dev_gemm(dev, s2, &g, &err), &err);
    TD_ASSERT_OK(td_dev_copy(dev, s2, h, dc3, cb, TD_COPY_D2H, &err), &err);
    td_dev_stream_destroy(dev, s2);
    CU_ASSERT(big_gemm_ok("after stream_destroy", h));

    td_dev_event_destroy(dev, ev);
    td_dev_free(dev, da), td_dev_free(dev, db), td_dev_free(dev, dc), td_dev_free(dev, dc2), td_dev_free(dev, dc3);
    td_dev_host_free(dev, h);
}

static void test_events(void) {
    td_error err = {0};
    td_event *e0 = NULL, *e1 = NULL, *never = NULL;
    TD_ASSERT_OK(td_dev_event_create(dev, &e0, &err), &err);
    TD_ASSERT_OK(td_dev_event_create(dev, &e1, &err), &err);
    TD_ASSERT_OK(td_dev_event_create(dev, &never, &err), &err);

    /* an event never recorded has passed: query, sync and a stream's wait */
    CU_ASSERT(td_dev_event_query(dev, never));
    TD_ASSERT_OK(td_dev_event_sync(dev, never, &err), &err);
    float *d = d_alloc(64);
    TD_ASSERT_OK(td_dev_stream_wait(dev, s1, never, &err), &err);
    TD_ASSERT_OK(td_dev_memset(dev, s1, d, 1, 64, &err), &err);
    sync_stream(s1);

    void *da, *db;
    big_gemm_inputs(&da, &db);
    float *dc = d_alloc(sizeof(float) * BIG * BIG);
    td_dgemm g = big_gemm(da, db, dc);
    TD_ASSERT_OK(td_dev_event_record(dev, e0, s0, &err), &err);
    TD_ASSERT_OK(td_dev_gemm(dev, s0, &g, &err), &err);
    TD_ASSERT_OK(td_dev_event_record(dev, e1, s0, &err), &err);
    TD_ASSERT_OK(td_dev_event_sync(dev, e1, &err), &err);
    CU_ASSERT(td_dev_event_query(dev, e1));
    CU_ASSERT(td_dev_event_query(dev, e0));
    float ms = -1;
    TD_ASSERT_OK(td_dev_event_elapsed(dev, e0, e1, &ms, &err), &err);
    CU_ASSERT(ms >= 0 && isfinite(ms));

    /* an event recorded again marks the new point */
    TD_ASSERT_OK(td_dev_gemm(dev, s0, &g, &err), &err);
    TD_ASSERT_OK(td_dev_event_record(dev, e1, s0, &err), &err);
    TD_ASSERT_OK(td_dev_event_sync(dev, e1, &err), &err);
    CU_ASSERT(td_dev_event_query(dev, e1));
    TD_ASSERT_OK(td_dev_event_elapsed(dev, e0, e1, &ms, &err), &err);
    CU_ASSERT(ms >= 0 && isfinite(ms));
    sync_stream(s0);

    td_dev_event_destroy(dev, e0), td_dev_event_destroy(dev, e1), td_dev_event_destroy(dev, never);
    td_dev_free(dev, d), td_dev_free(dev, da), td_dev_free(dev, db), td_dev_free(dev, dc);
}

/* ---- argument errors -------------------------------------------------------------------- */

/* A bad argument is TANDEM_ERR_INVALID_ARGUMENT (or UNSUPPORTED for a valid
 * but unsupported dtype) with a message that names the call. */
static int expect_bad(tandem_status st, td_error *err, const char *call, const char *text) {
    int ok =
        (st == TANDEM_ERR_INVALID_ARGUMENT || st == TANDEM_ERR_UNSUPPORTED) && err->msg[0] && strstr(err->msg, call);
    if (!ok)
        fprintf(stderr, "\n  %s: %s '%s', expected an argument error naming '%s'\n", text, tandem_status_name(st),
                err->msg, call);
    memset(err, 0, sizeof *err);
    return ok;
}

#define BAD(call_name, expr) CU_ASSERT(expect_bad((expr), &err, call_name, #expr))
/* One field of a valid descriptor (g0, kv0, a0) changed at a time. */
#define GEMM_BAD(mod)                                                                                                  \
    do {                                                                                                               \
        g = g0;                                                                                                        \
        mod;                                                                                                           \
        CU_ASSERT(expect_bad(td_dev_gemm(dev, s0, &g, &err), &err, "gemm", "gemm with " #mod));                        \
    } while (0)
#define KV_BAD(mod)                                                                                                    \
    do {                                                                                                               \
        kv = kv0;                                                                                                      \
        mod;                                                                                                           \
        CU_ASSERT(expect_bad(td_dev_kv_append(dev, s0, &kv, 0, 1, fb, 128, fb, 128, ib, &err), &err, "kv",             \
                             "kv_append with " #mod));                                                                 \
    } while (0)
#define ATTN_BAD(which, mod)                                                                                           \
    do {                                                                                                               \
        a = a0;                                                                                                        \
        mod;                                                                                                           \
        CU_ASSERT(expect_bad(td_dev_attn_##which(dev, s0, &a, &err), &err, "attn", "attn_" #which " with " #mod));     \
    } while (0)

static void test_errors(void) {
    td_error err = {0};
    const int64_t N = 4096;
    void *buf = d_alloc(sizeof(float) * N); /* zeroed: a valid operand for every call */
    float *fb = d_alloc(sizeof(float) * N);
    int32_t *ib = d_alloc(sizeof(int32_t) * N);

    const td_dgemm g0 = {.m = 4,
                         .n = 4,
                         .k = 4,
                         .batch = 1,
                         .trans_b = true,
                         .a = buf,
                         .lda = 4,
                         .b = buf,
                         .ldb = 4,
                         .c = fb,
                         .ldc = 4,
                         .c_dtype = TD_DTYPE_F32};
    td_dgemm g = g0;
    TD_ASSERT_OK(td_dev_gemm(dev, s0, &g, &err), &err); /* the baseline is valid */
    GEMM_BAD(g.m = 0);
    GEMM_BAD(g.n = -1);
    GEMM_BAD(g.batch = 0);
    GEMM_BAD(g.a = NULL);
    GEMM_BAD(g.c = NULL);
    GEMM_BAD(g.lda = 3);
    GEMM_BAD(g.ldb = 3);
    GEMM_BAD(g.trans_b = false; g.n = 5; g.ldc = 5);
    GEMM_BAD(g.ldc = 3);
    GEMM_BAD(g.c_dtype = TD_DTYPE_F16);
    GEMM_BAD(g.c_dtype = TD_DTYPE_BF16; g.accumulate = true);
    GEMM_BAD(g.batch = 2; g.stride_a = 16; g.stride_b = 16; g.stride_c = 4);

    td_dweights *w = NULL;
    const uint16_t wh[16] = {0};
    BAD("weights", td_dev_weights_create(dev, 0, 4, wh, &w, &err));
    BAD("weights", td_dev_weights_create(dev, 4, -1, wh, &w, &err));
    BAD("weights", td_dev_weights_create(dev, 4, 4, NULL, &w, &err));
    CU_ASSERT_PTR_NULL(w);
    TD_ASSERT_OK(td_dev_weights_create(dev, 4, 4, wh, &w, &err), &err);
    BAD("linear", td_dev_linear(dev, s0, w, 0, buf, 4, fb, 4, false, &err));
    BAD("linear", td_dev_linear(dev, s0, NULL, 1, buf, 4, fb, 4, false, &err));
    BAD("linear", td_dev_linear(dev, s0, w, 1, NULL, 4, fb, 4, false, &err));
    BAD("linear", td_dev_linear(dev, s0, w, 1, buf, 3, fb, 4, false, &err));
    BAD("linear", td_dev_linear(dev, s0, w, 1, buf, 4, NULL, 4, false, &err));
    BAD("linear", td_dev_linear(dev, s0, w, 2, buf, 4, fb, 3, false, &err));

    BAD("embed", td_dev_embed(dev, s0, NULL, TD_DTYPE_F32, 4, 4, ib, 2, fb, &err));
    BAD("embed", td_dev_embed(dev, s0, buf, TD_DTYPE_F16, 4, 4, ib, 2, fb, &err));
    BAD("embed", td_dev_embed(dev, s0, buf, TD_DTYPE_F32, 4, 0, ib, 2, fb, &err));
    BAD("embed", td_dev_embed(dev, s0, buf, TD_DTYPE_F32, 4, 4, ib, 0, fb, &err));
    BAD("embed", td_dev_embed(dev, s0, buf, TD_DTYPE_F32, 4, 4, NULL, 2, fb, &err));
    BAD("embed", td_dev_embed(dev, s0, buf, TD_DTYPE_F32, 4, 4, ib, 2, NULL, &err));

    BAD("rmsnorm", td_dev_rmsnorm(dev, s0, 0, 4, fb, 4, fb, 1e-5f, fb, 4, TD_DTYPE_F32, &err));
    BAD("rmsnorm", td_dev_rmsnorm(dev, s0, 2, 4, fb, 3, fb, 1e-5f, fb, 4, TD_DTYPE_F32, &err));
    BAD("rmsnorm", td_dev_rmsnorm(dev, s0, 2, 4, fb, 4, fb, 1e-5f, fb, 3, TD_DTYPE_F32, &err));
    BAD("rmsnorm", td_dev_rmsnorm(dev, s0, 2, 4, fb, 4, fb, 1e-5f, fb, 4, TD_DTYPE_F16, &err));
    BAD("rmsnorm", td_dev_rmsnorm(dev, s0, 2, 4, NULL, 4, fb, 1e-5f, fb, 4, TD_DTYPE_F32, &err));
    BAD("rmsnorm", td_dev_rmsnorm(dev, s0, 2, 4, fb, 4, NULL, 1e-5f, fb, 4, TD_DTYPE_F32, &err));
    BAD("rmsnorm", td_dev_rmsnorm(dev, s0, 2, 4, fb, 4, fb, 1e-5f, NULL, 4, TD_DTYPE_F32, &err));

    const double *dinv = (const double *)buf;
    BAD("rope", td_dev_rope(dev, s0, 0, fb, 128, 2, 64, 64, ib, dinv, &err));
    BAD("rope", td_dev_rope(dev, s0, 1, fb, 128, 0, 64, 64, ib, dinv, &err));
    BAD("rope", td_dev_rope(dev, s0, 1, fb, 128, 2, 64, 66, ib, dinv, &err));
    BAD("rope", td_dev_rope(dev, s0, 1, fb, 128, 2, 64, 31, ib, dinv, &err));
    BAD("rope", td_dev_rope(dev, s0, 2, fb, 127, 2, 64, 64, ib, dinv, &err));
    BAD("rope", td_dev_rope(dev, s0, 1, NULL, 128, 2, 64, 64, ib, dinv, &err));
    BAD("rope", td_dev_rope(dev, s0, 1, fb, 128, 2, 64, 64, NULL, dinv, &err));
    BAD("rope", td_dev_rope(dev, s0, 1, fb, 128, 2, 64, 64, ib, NULL, &err));

    BAD("swiglu", td_dev_swiglu(dev, s0, 0, 4, fb, fb + 64, TD_DTYPE_F32, &err));
    BAD("swiglu", td_dev_swiglu(dev, s0, 1, 0, fb, fb + 64, TD_DTYPE_F32, &err));
    BAD("swiglu", td_dev_swiglu(dev, s0, 1, 4, fb, fb + 64, TD_DTYPE_F16, &err));
    BAD("swiglu", td_dev_swiglu(dev, s0, 1, 4, NULL, fb + 64, TD_DTYPE_F32, &err));
    BAD("swiglu", td_dev_swiglu(dev, s0, 1, 4, fb, NULL, TD_DTYPE_F32, &err));

    BAD("add", td_dev_add(dev, s0, 0, 4, fb, 4, fb + 64, 4, &err));
    BAD("add", td_dev_add(dev, s0, 2, 4, fb, 4, NULL, 4, &err));
    BAD("add", td_dev_add(dev, s0, 2, 4, NULL, 4, fb + 64, 4, &err));
    BAD("add", td_dev_add(dev, s0, 2, 4, fb, 4, fb + 64, 3, &err));
    BAD("add", td_dev_add(dev, s0, 2, 4, fb, 3, fb + 64, 4, &err));

    BAD("topk", td_dev_topk(dev, s0, 1, 100, fb, 100, TD_DEV_TOPK_MAX + 1, ib, fb + 200, &err));
    BAD("topk", td_dev_topk(dev, s0, 1, 100, fb, 100, 0, ib, fb + 200, &err));
    BAD("topk", td_dev_topk(dev, s0, 0, 100, fb, 100, 5, ib, fb + 200, &err));
    BAD("topk", td_dev_topk(dev, s0, 2, 100, fb, 99, 5, ib, fb + 200, &err));
    BAD("topk", td_dev_topk(dev, s0, 1, 100, NULL, 100, 5, ib, fb + 200, &err));
    BAD("topk", td_dev_topk(dev, s0, 1, 100, fb, 100, 5, NULL, fb + 200, &err));

    BAD("copy", td_dev_copy(dev, s0, NULL, fb, 16, TD_COPY_D2D, &err));
    BAD("copy", td_dev_copy(dev, s0, fb, NULL, 16, TD_COPY_D2D, &err));
    BAD("memset", td_dev_memset(dev, s0, NULL, 0, 16, &err));

    /* KV: a valid pool of 2 layers, 2 kv heads of 64, 4 blocks of 16 */
    const td_kv_layout L = make_layout(2, 2, 64, 16, TD_DTYPE_BF16);
    void *pool = d_alloc(L.block_bytes * 4);
    const td_dkv kv0 = {.pool = pool, .n_blocks = 4, .layout = L};
    td_dkv kv = kv0;
    BAD("kv", td_dev_kv_append(dev, s0, &kv, 2, 1, fb, 128, fb, 128, ib, &err));
    BAD("kv", td_dev_kv_append(dev, s0, &kv, -1, 1, fb, 128, fb, 128, ib, &err));
    BAD("kv", td_dev_kv_append(dev, s0, &kv, 0, 0, fb, 128, fb, 128, ib, &err));
    BAD("kv", td_dev_kv_append(dev, s0, &kv, 0, 2, fb, 127, fb, 128, ib, &err));
    BAD("kv", td_dev_kv_append(dev, s0, &kv, 0, 2, fb, 128, fb, 127, ib, &err));
    BAD("kv", td_dev_kv_append(dev, s0, &kv, 0, 1, NULL, 128, fb, 128, ib, &err));
    BAD("kv", td_dev_kv_append(dev, s0, &kv, 0, 1, fb, 128, fb, 128, NULL, &err));
    KV_BAD(kv.pool = NULL);
    KV_BAD(kv.layout.dtype = TD_DTYPE_F32);
    KV_BAD(kv.layout.head_dim = 40);

    const td_dattn a0 = {.kv = kv0,
                         .layer = 1,
                         .n_q_heads = 4,
                         .scale = 0.125f,
                         .n_seqs = 1,
                         .q_first = ib,
                         .n_q = ib,
                         .pos = ib,
                         .block_table = ib,
                         .table_stride = 4,
                         .max_ctx = 64,
                         .max_q = 1,
                         .q = fb,
                         .q_stride = 256,
                         .out = fb + 256,
                         .out_stride = 256,
                         .out_dtype = TD_DTYPE_F32};
    td_dattn a = a0;
    ATTN_BAD(decode, a.n_q_heads = 3);
    ATTN_BAD(decode, a.n_q_heads = 1);
    ATTN_BAD(decode, a.layer = 2);
    ATTN_BAD(decode, a.max_q = 2);
    ATTN_BAD(decode, a.out_dtype = TD_DTYPE_F16);
    ATTN_BAD(decode, a.table_stride = 3);
    ATTN_BAD(decode, a.q = NULL);
    ATTN_BAD(decode, a.block_table = NULL);
    ATTN_BAD(decode, a.n_seqs = 0);
    ATTN_BAD(decode, a.q_stride = 255);
    ATTN_BAD(decode, a.max_ctx = 0);
    ATTN_BAD(prefill, a.n_q_heads = 7; a.max_q = 8);
    ATTN_BAD(prefill, a.layer = -1; a.max_q = 8);
    ATTN_BAD(prefill, a.max_q = 0);
    ATTN_BAD(prefill, a.max_q = 8; a.out_stride = 8);

    /* nothing was enqueued by the failures, the stream carries no error, and
     * it still computes: y = 0 + 2 * x over rows the bad calls named */
    sync_stream(s0);
    float x[8] = {1, 2, 3, 4, -1, -2, -3, -4}, y[8];
    float *dx = d_from(x, sizeof x), *dy = d_alloc(sizeof y);
    BAD("add", td_dev_add(dev, s0, 2, 4, dy, 3, dx, 4, &err)); /* would have written dy */
    TD_ASSERT_OK(td_dev_add(dev, s0, 2, 4, dy, 4, dx, 4, &err), &err);
    TD_ASSERT_OK(td_dev_add(dev, s0, 2, 4, dy, 4, dx, 4, &err), &err);
    download(y, dy, sizeof y);
    for (int i = 0; i < 8; i++)
        CU_ASSERT_EQUAL(y[i], 2 * x[i]);

    td_dev_weights_destroy(dev, w);
    td_dev_free(dev, buf), td_dev_free(dev, fb), td_dev_free(dev, ib), td_dev_free(dev, pool);
    td_dev_free(dev, dx), td_dev_free(dev, dy);
}

/* ---- emu timed mode and the link model ---------------------------------------------------- */

#define TIMED_S 0.050 /* target modelled duration of the big ops */

/* A square-ish GEMM the T4 model runs in TIMED_S: compute-bound (the model's
 * memory time is ~2.5 ms), so its time is flops / effective peak whatever
 * bytes the emu counts. Timed mode computes nothing: the ~0.6 GB of operands
 * are never touched. */
typedef struct timed_gemm {
    td_dgemm g;
    double model_s;
} timed_gemm;

static timed_gemm timed_gemm_make(void *a, void *b, void *c) {
    const td_gpu_model *gm = td_gpu_model_find("T4");
    const double eff = gm->bf16_tflops * 1e12 * gm->gemm_eff;
    const int64_t m = 9920, n = 9920;
    const int64_t k = (int64_t)((TIMED_S - gm->launch_us * 1e-6) * eff / (2.0 * m * n));
    timed_gemm t = {.g = {.m = m,
                          .n = n,
                          .k = k,
                          .batch = 1,
                          .trans_b = true,
                          .a = a,
                          .lda = k,
                          .b = b,
                          .ldb = k,
                          .c = c,
                          .ldc = n,
                          .c_dtype = TD_DTYPE_BF16}};
    t.model_s = td_gpu_model_seconds(gm, 2.0 * m * n * k, 2.0 * (m * k + n * k + m * n));
    return t;
}

static size_t timed_gemm_bytes(char which) {
    const timed_gemm t = timed_gemm_make(NULL, NULL, NULL);
    return (size_t)(which == 'a' ? t.g.m * t.g.k : which == 'b' ? t.g.n * t.g.k : t.g.m * t.g.n) * 2;
}

/* (a) an op takes its modelled time (never less), and enqueueing returns at once */
static void test_timed_gemm(void) {
    td_error err = {0};
    void *a = d_alloc(timed_gemm_bytes('a')), *b = d_alloc(timed_gemm_bytes('b')), *c = d_alloc(timed_gemm_bytes('c'));
    timed_gemm t = timed_gemm_make(a, b, c);
    CU_ASSERT(fabs(t.model_s - TIMED_S) < 0.1 * TIMED_S);
    td_event *e0 = NULL, *e1 = NULL;
    TD_ASSERT_OK(td_dev_event_create(dev, &e0, &err), &err);
    TD_ASSERT_OK(td_dev_event_create(dev, &e1, &err), &err);
    const double t0 = now_s();
    TD_ASSERT_OK(td_dev_event_record(dev, e0, s0, &err), &err);
    TD_ASSERT_OK(td_dev_gemm(dev, s0, &t.g, &err), &err);
    TD_ASSERT_OK(td_dev_event_record(dev, e1, s0, &err), &err);
    const double enq = now_s() - t0;
    sync_stream(s0);
    const double wall = now_s() - t0;
    float ms = -1;
    TD_ASSERT_OK(td_dev_event_elapsed(dev, e0, e1, &ms, &err), &err);
    if (!(wall >= 0.95 * t.model_s && enq < 0.5 * t.model_s && ms >= 0.95e3 * t.model_s && ms <= 1e3 * wall + 1))
        fprintf(stderr, "\n  timed gemm: model %.1f ms, wall %.1f ms, enqueue %.1f ms, events %.1f ms\n",
                1e3 * t.model_s, 1e3 * wall, 1e3 * enq, ms);
    CU_ASSERT(wall >= 0.95 * t.model_s);
    CU_ASSERT(enq < 0.5 * t.model_s);
    CU_ASSERT(ms >= 0.95e3 * t.model_s);
    CU_ASSERT(ms <= 1e3 * wall + 1);
    td_dev_event_destroy(dev, e0), td_dev_event_destroy(dev, e1);
    td_dev_free(dev, a), td_dev_free(dev, b), td_dev_free(dev, c);
}

/* A slow link of the test's own. This machine's memcpy runs at about PCIe
 * 3's speed, and the emu's copies move their bytes in every mode, so with a
 * real preset a copy's wall time is the memcpy's as much as the model's: a
 * 50 ms PCIe 3 copy is 600 MB, whose memcpy alone takes ~55 ms here (~80
 * under ASan). At 1 GB/s a copy's memcpy is a few percent of its time. */
static const td_link_model slow_link = {"test-1GBps", 1.0, 1.0, 100.0, "tests/test_device.c"};

/* Opens a second device for one test, in place of the suite's; pop_device
 * puts the suite's back. */
static td_device *saved_dev;
static td_stream *saved_s0, *saved_s1;

static void push_device(const td_device_config *c) {
    td_error err = {0};
    td_device *nd = NULL;
    TD_ASSERT_OK(td_device_open(c, &nd, &err), &err);
    saved_dev = dev, saved_s0 = s0, saved_s1 = s1;
    dev = nd;
    TD_ASSERT_OK(td_dev_stream_create(dev, &s0, &err), &err);
    TD_ASSERT_OK(td_dev_stream_create(dev, &s1, &err), &err);
}

static void pop_device(void) {
    td_dev_stream_destroy(dev, s0), td_dev_stream_destroy(dev, s1);
    td_device_close(dev);
    dev = saved_dev, s0 = saved_s0, s1 = saved_s1;
}

/* (b) a copy over the link overlaps compute on another stream. The upper
 * bound is generous (1.6x; serial would be 2x), because this machine is
 * shared and noisy. */
static void test_timed_overlap(void) {
    td_device_config cfg = emu_config(TD_EMU_TIMED);
    cfg.gpu = td_gpu_model_find("T4");
    cfg.link = &slow_link;
    push_device(&cfg);
    td_error err = {0};
    void *a = d_alloc(timed_gemm_bytes('a')), *b = d_alloc(timed_gemm_bytes('b')), *c = d_alloc(timed_gemm_bytes('c'));
    timed_gemm t = timed_gemm_make(a, b, c);
    const size_t cbytes = (size_t)((TIMED_S - slow_link.latency_us * 1e-6) * slow_link.h2d_gbps * 1e9);
    const double copy_s = td_link_model_seconds(&slow_link, true, cbytes);
    void *h = h_alloc(cbytes), *d = d_alloc(cbytes);
    memset(h, 1, cbytes);
    /* once untimed: the first touch of the device pages is not what is measured */
    TD_ASSERT_OK(td_dev_copy(dev, s1, d, h, cbytes, TD_COPY_H2D, &err), &err);
    sync_stream(s1);

    const double single = fmax(t.model_s, copy_s);
    const double t0 = now_s();
    TD_ASSERT_OK(td_dev_gemm(dev, s0, &t.g, &err), &err);
    TD_ASSERT_OK(td_dev_copy(dev, s1, d, h, cbytes, TD_COPY_H2D, &err), &err);
    sync_stream(s0);
    sync_stream(s1);
    const double overlap = now_s() - t0;
    if (!(overlap < 1.6 * single && overlap >= 0.95 * single))
        fprintf(stderr, "\n  timed: gemm %.1f ms and copy %.1f ms (modelled) on two streams took %.1f ms\n",
                1e3 * t.model_s, 1e3 * copy_s, 1e3 * overlap);
    if (!TD_SLOW_SANITIZER) /* ThreadSanitizer slows the copy's memmove past its modelled time */
        CU_ASSERT(overlap < 1.6 * single);
    CU_ASSERT(overlap >= 0.95 * single);
    td_dev_host_free(dev, h);
    td_dev_free(dev, d), td_dev_free(dev, a), td_dev_free(dev, b), td_dev_free(dev, c);
    pop_device();
}

/* (c) compute on two streams serializes: the device is one resource. */
static void test_timed_serial(void) {
    td_error err = {0};
    void *a = d_alloc(timed_gemm_bytes('a')), *b = d_alloc(timed_gemm_bytes('b'));
    void *c = d_alloc(timed_gemm_bytes('c')), *c2 = d_alloc(timed_gemm_bytes('c'));
    timed_gemm t = timed_gemm_make(a, b, c), t2 = timed_gemm_make(a, b, c2);
    const double t0 = now_s();
    TD_ASSERT_OK(td_dev_gemm(dev, s0, &t.g, &err), &err);
    TD_ASSERT_OK(td_dev_gemm(dev, s1, &t2.g, &err), &err);
    sync_stream(s0);
    sync_stream(s1);
    const double serial = now_s() - t0;
    if (!(serial >= 1.9 * t.model_s * 0.95))
        fprintf(stderr, "\n  timed: two %.1f ms gemms on two streams took %.1f ms (they must serialize)\n",
                1e3 * t.model_s, 1e3 * serial);
    CU_ASSERT(serial >= 1.9 * t.model_s * 0.95);
    td_dev_free(dev, a), td_dev_free(dev, b), td_dev_free(dev, c), td_dev_free(dev, c2);
}

/* (d) compute mode with a link model: host copies take at least the link's
 * time (2% for timer granularity) and still deliver their bytes. */
static void test_link_compute(void) {
    td_device_config cfg = emu_config(TD_EMU_COMPUTE);
    cfg.link = &slow_link;
    push_device(&cfg);
    td_error err = {0};
    CU_ASSERT(!dev->info.timed);
    const size_t N = (size_t)8 << 20; /* 8.5 ms at 1 GB/s */
    uint8_t *h = h_alloc(N), *h2 = h_alloc(N), *d = d_alloc(N);
    memset(h, 0x3c, N), memset(h2, 0, N);
    for (size_t i = 0; i < N; i += 4096)
        h[i] = (uint8_t)(i >> 12);
    for (int dir = 0; dir < 2; dir++) {
        const bool h2d = dir == 0;
        const double model = td_link_model_seconds(&slow_link, h2d, N);
        const double t0 = now_s();
        TD_ASSERT_OK(h2d ? td_dev_copy(dev, s0, d, h, N, TD_COPY_H2D, &err)
                         : td_dev_copy(dev, s0, h2, d, N, TD_COPY_D2H, &err),
                     &err);
        sync_stream(s0);
        const double wall = now_s() - t0;
        if (!(wall >= 0.98 * model))
            fprintf(stderr, "\n  link copy %s of %zu bytes: %.2f ms, model %.2f ms\n", h2d ? "H2D" : "D2H", N,
                    1e3 * wall, 1e3 * model);
        CU_ASSERT(wall >= 0.98 * model);
    }
    CU_ASSERT(memcmp(h, h2, N) == 0);
    td_dev_host_free(dev, h), td_dev_host_free(dev, h2);
    td_dev_free(dev, d);
    pop_device();
}

/* ---- registration ------------------------------------------------------------------------ */

static const td_test mem_tests[] = {
    {"info", test_info},
    {"memory", test_memory},
    {NULL, NULL},
};

static const td_test op_tests[] = {
    {"info", test_info},
    {"gemm", test_gemm},
    {"linear", test_linear},
    {"embed", test_embed},
    {"rmsnorm", test_rmsnorm},
    {"rope", test_rope},
    {"swiglu", test_swiglu},
    {"add", test_add},
    {"kv_append layout", test_kv_append},
    {"attention (random)", test_attention},
    {"attention (needles)", test_attention_needle},
    {"topk", test_topk},
    {"stream order", test_stream_order},
    {"cross-stream event", test_cross_stream},
    {"events", test_events},
    {"argument errors", test_errors},
    {NULL, NULL},
};

static const td_test timed_tests[] = {
    {"info", test_info},
    {"gemm takes its modelled time", test_timed_gemm},
    {"copy overlaps compute", test_timed_overlap},
    {"compute serializes across streams", test_timed_serial},
    {"compute mode: copies take the link's time", test_link_compute},
    {NULL, NULL},
};

static int n_skipped;

static void print_skipped(void) { printf("%d cases skipped\n", n_skipped); }

static int count(const td_test *t) {
    int n = 0;
    while (t[n].name)
        n++;
    return n;
}

void td_test_register(void) {
    td_add_suite_with("emu compute: memory", init_emu_mem, close_suite, mem_tests);
    td_add_suite_with("emu compute: ops", init_emu_ops, close_suite, op_tests);
    td_add_suite_with("emu timed and link", init_emu_timed, close_suite, timed_tests);

    /* CUDA only where a device opens; the probe's device is closed and each
     * suite opens its own, as the emu's do */
    td_device_config c = cuda_config();
    td_device *probe = NULL;
    td_error err = {0};
    if (td_device_open(&c, &probe, &err) != TANDEM_OK) {
        printf("skipped: no CUDA device (%s)\n", err.msg);
        n_skipped = count(mem_tests) + count(op_tests);
        atexit(print_skipped);
        return;
    }
    td_device_close(probe);
    td_add_suite_with("cuda: memory", init_cuda, close_suite, mem_tests);
    td_add_suite_with("cuda: ops", init_cuda, close_suite, op_tests);
}
