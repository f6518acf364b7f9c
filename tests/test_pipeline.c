/* The pipeline coordinator (pipeline/pipeline.h) on the emulated device:
 * the order it promises, the overlap it exists for, its stats and trace.
 *
 * Ordering: stages that each transform per-sub-batch state on the device
 * and the host, so that any stage running before what it depends on (a
 * pre before the previous layer's post, a download before its pre, a post
 * before its upload) gives a wrong value. Copies go through a link model,
 * so they take long enough for a missing wait to show.
 *
 * Overlap: in timed mode, device stages of a known modelled length and a
 * CPU stage of a known length: the step must take about the busiest
 * resource's time, not the sum.
 *
 * Also built with ThreadSanitizer (make test: build-tsan), with one OpenMP
 * thread, as libgomp is not instrumented. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gpu/device.h"
#include "pipeline/pipeline.h"
#include "tests/test_util.h"

#define N 4096 /* floats per sub-batch */

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TD_SLOW_SANITIZER 1
#endif
#endif
#ifndef TD_SLOW_SANITIZER
#define TD_SLOW_SANITIZER 0
#endif

typedef struct order_ctx {
    td_device *d;
    float *x[TD_PIPE_MAX_SUB], *y[TD_PIPE_MAX_SUB], *ones; /* device */
    float *down[TD_PIPE_MAX_SUB], *up[TD_PIPE_MAX_SUB];    /* pinned host */
    double model[TD_PIPE_MAX_SUB];                         /* what x holds, by the host's reckoning */
    int bad, attends;
} order_ctx;

static tandem_status o_pre(void *c, int32_t b, int32_t l, td_stream *s, td_error *err) {
    order_ctx *o = c;
    (void)l;
    o->model[b] += 1;
    return td_dev_add(o->d, s, 1, N, o->x[b], N, o->ones, N, err);
}

static tandem_status o_down(void *c, int32_t b, int32_t l, td_stream *s, td_error *err) {
    order_ctx *o = c;
    (void)l;
    return td_dev_copy(o->d, s, o->down[b], o->x[b], N * sizeof(float), TD_COPY_D2H, err);
}

static tandem_status o_attend(void *c, int32_t b, int32_t l, td_error *err) {
    order_ctx *o = c;
    (void)err;
    for (int i = 0; i < N; i++)
        if (o->down[b][i] != (float)o->model[b]) {
            o->bad++;
            break;
        }
    for (int i = 0; i < N; i++)
        o->up[b][i] = 2 * o->down[b][i] + (float)l;
    o->model[b] += 2 * o->model[b] + l;
    o->attends++;
    return TANDEM_OK;
}

static tandem_status o_up(void *c, int32_t b, int32_t l, td_stream *s, td_error *err) {
    order_ctx *o = c;
    (void)l;
    return td_dev_copy(o->d, s, o->y[b], o->up[b], N * sizeof(float), TD_COPY_H2D, err);
}

static tandem_status o_post(void *c, int32_t b, int32_t l, td_stream *s, td_error *err) {
    order_ctx *o = c;
    (void)l;
    return td_dev_add(o->d, s, 1, N, o->x[b], N, o->y[b], N, err);
}

static const td_pipe_stages order_stages = {o_pre, o_down, o_attend, o_up, o_post, NULL};

static td_device *open_emu(td_emu_mode mode, const char *gpu, const char *link) {
    td_device_config c;
    td_device_config_default(&c);
    c.emu_mode = mode;
    c.gpu = gpu ? td_gpu_model_find(gpu) : NULL;
    c.link = link ? td_link_model_find(link) : NULL;
    td_device *d = NULL;
    td_error err;
    TD_ASSERT_OK(td_device_open(&c, &d, &err), &err);
    return d;
}

static void test_order(void) {
    td_device *d = open_emu(TD_EMU_COMPUTE, NULL, "pcie3-x16");
    td_pipe *p = NULL;
    td_error err;
    TD_ASSERT_OK(td_pipe_create(d, &p, &err), &err);
    order_ctx o = {.d = d};
    float *host = malloc(N * sizeof *host);
    CU_ASSERT_PTR_NOT_NULL_FATAL(host);
    for (int i = 0; i < N; i++)
        host[i] = 1.0f;
    TD_ASSERT_OK(td_dev_alloc(d, N * sizeof(float), (void **)&o.ones, &err), &err);
    TD_ASSERT_OK(td_dev_copy(d, td_pipe_stream(p), o.ones, host, N * sizeof(float), TD_COPY_H2D, &err), &err);
    for (int b = 0; b < TD_PIPE_MAX_SUB; b++) {
        TD_ASSERT_OK(td_dev_alloc(d, N * sizeof(float), (void **)&o.x[b], &err), &err);
        TD_ASSERT_OK(td_dev_alloc(d, N * sizeof(float), (void **)&o.y[b], &err), &err);
        TD_ASSERT_OK(td_dev_host_alloc(d, N * sizeof(float), (void **)&o.down[b], &err), &err);
        TD_ASSERT_OK(td_dev_host_alloc(d, N * sizeof(float), (void **)&o.up[b], &err), &err);
    }
    TD_ASSERT_OK(td_dev_stream_sync(d, td_pipe_stream(p), &err), &err);
    const int32_t layers = 7;
    for (int32_t n_sub = 1; n_sub <= 2; n_sub++)
        for (int step = 0; step < 3; step++) { /* later steps reuse the events */
            o.attends = 0;
            TD_ASSERT_OK(td_pipe_run(p, n_sub, layers, &order_stages, &o, &err), &err);
            TD_ASSERT_OK(td_pipe_finish(p, &err), &err);
            CU_ASSERT_EQUAL(o.attends, n_sub * layers);
            /* the device's x after the last post equals the host's reckoning */
            for (int b = 0; b < n_sub; b++) {
                TD_ASSERT_OK(td_dev_copy(d, td_pipe_stream(p), host, o.x[b], N * sizeof(float), TD_COPY_D2H, &err),
                             &err);
                TD_ASSERT_OK(td_dev_stream_sync(d, td_pipe_stream(p), &err), &err);
                CU_ASSERT_EQUAL(host[0], (float)o.model[b]);
                CU_ASSERT_EQUAL(host[N - 1], (float)o.model[b]);
                /* keep the values small and exact: start the next step from 0 */
                TD_ASSERT_OK(td_dev_memset(d, td_pipe_stream(p), o.x[b], 0, N * sizeof(float), &err), &err);
                o.model[b] = 0;
            }
            TD_ASSERT_OK(td_dev_stream_sync(d, td_pipe_stream(p), &err), &err);
        }
    CU_ASSERT_EQUAL(o.bad, 0);
    const td_pipe_stats *st = td_pipe_get_stats(p);
    CU_ASSERT_EQUAL(st->steps, 6);
    CU_ASSERT(st->d2h > 0 && st->h2d > 0 && st->device > 0 && st->cpu > 0);
    /* bad arguments are refused before anything is enqueued */
    CU_ASSERT_EQUAL(td_pipe_run(p, 3, layers, &order_stages, &o, &err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(td_pipe_run(p, 1, 0, &order_stages, &o, &err), TANDEM_ERR_INVALID_ARGUMENT);
    for (int b = 0; b < TD_PIPE_MAX_SUB; b++) {
        td_dev_free(d, o.x[b]);
        td_dev_free(d, o.y[b]);
        td_dev_host_free(d, o.down[b]);
        td_dev_host_free(d, o.up[b]);
    }
    td_dev_free(d, o.ones);
    free(host);
    td_pipe_destroy(p);
    td_device_close(d);
}

/* ---- overlap in timed mode ---------------------------------------------- */

#define GEMM_N 2048

typedef struct timed_ctx {
    td_device *d;
    td_dgemm g;
    double attend_s;
    float *dev_buf[TD_PIPE_MAX_SUB], *host_buf[TD_PIPE_MAX_SUB];
} timed_ctx;

static tandem_status t_gemm(void *c, int32_t b, int32_t l, td_stream *s, td_error *err) {
    timed_ctx *t = c;
    (void)b, (void)l;
    return td_dev_gemm(t->d, s, &t->g, err);
}

static tandem_status t_down(void *c, int32_t b, int32_t l, td_stream *s, td_error *err) {
    timed_ctx *t = c;
    (void)l;
    return td_dev_copy(t->d, s, t->host_buf[b], t->dev_buf[b], 4096, TD_COPY_D2H, err);
}

static tandem_status t_up(void *c, int32_t b, int32_t l, td_stream *s, td_error *err) {
    timed_ctx *t = c;
    (void)l;
    return td_dev_copy(t->d, s, t->dev_buf[b], t->host_buf[b], 4096, TD_COPY_H2D, err);
}

static tandem_status t_attend(void *c, int32_t b, int32_t l, td_error *err) {
    timed_ctx *t = c;
    (void)b, (void)l, (void)err;
    struct timespec ts = {0, (long)(t->attend_s * 1e9)};
    nanosleep(&ts, NULL);
    return TANDEM_OK;
}

static const td_pipe_stages timed_stages = {t_gemm, t_down, t_attend, t_up, t_gemm, NULL};

static void test_overlap_and_trace(void) {
    td_device *d = open_emu(TD_EMU_TIMED, "T4", "pcie3-x16");
    td_pipe *p = NULL;
    td_error err;
    TD_ASSERT_OK(td_pipe_create(d, &p, &err), &err);
    timed_ctx t = {.d = d};
    void *a, *bm, *c;
    TD_ASSERT_OK(td_dev_alloc(d, (size_t)GEMM_N * GEMM_N * 2, &a, &err), &err);
    TD_ASSERT_OK(td_dev_alloc(d, (size_t)GEMM_N * GEMM_N * 2, &bm, &err), &err);
    TD_ASSERT_OK(td_dev_alloc(d, (size_t)GEMM_N * GEMM_N * 4, &c, &err), &err);
    for (int b = 0; b < TD_PIPE_MAX_SUB; b++) {
        TD_ASSERT_OK(td_dev_alloc(d, 4096, (void **)&t.dev_buf[b], &err), &err);
        TD_ASSERT_OK(td_dev_host_alloc(d, 4096, (void **)&t.host_buf[b], &err), &err);
    }
    t.g = (td_dgemm){.m = GEMM_N,
                     .n = GEMM_N,
                     .k = GEMM_N,
                     .batch = 1,
                     .trans_b = true,
                     .a = a,
                     .lda = GEMM_N,
                     .b = bm,
                     .ldb = GEMM_N,
                     .c = c,
                     .ldc = GEMM_N,
                     .c_dtype = TD_DTYPE_F32};
    const td_gpu_model *g = td_gpu_model_find("T4");
    const double gemm_s = td_gpu_model_seconds(g, 2.0 * GEMM_N * GEMM_N * GEMM_N, 16.0 * GEMM_N * GEMM_N);
    /* balanced: per layer and sub-batch the device runs two GEMMs (post of
     * the other, pre of this), the CPU one attend of the same length */
    t.attend_s = 2 * gemm_s;
    const int32_t layers = 6;
    char path[] = "/tmp/tandem_trace_XXXXXX";
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    FILE *f = fdopen(fd, "w");
    td_pipe_trace(p, f);
    TD_ASSERT_OK(td_pipe_run(p, 2, layers, &timed_stages, &t, &err), &err);
    TD_ASSERT_OK(td_pipe_finish(p, &err), &err);
    td_pipe_trace_end(p);
    fclose(f);
    const td_pipe_stats *st = td_pipe_get_stats(p);
    const double device = 2 * 2 * layers * gemm_s, cpu = 2 * layers * t.attend_s;
    printf("\n    step %.1f ms: device %.1f ms (model %.1f), CPU %.1f ms (asked %.1f), D2H %.2f ms, H2D %.2f ms",
           st->step * 1e3, st->device * 1e3, device * 1e3, st->cpu * 1e3, cpu * 1e3, st->d2h * 1e3, st->h2d * 1e3);
#if !TD_SLOW_SANITIZER /* ThreadSanitizer slows the host side past the modelled times */
    CU_ASSERT(st->device >= 0.95 * device && st->device <= 1.5 * device);
    CU_ASSERT(st->cpu >= 0.95 * cpu);
    /* overlapped: about the busiest resource, far below the sum (plus the
     * first pre and the last post, which nothing can hide: 2 GEMMs) */
    const double busiest = st->device > st->cpu ? st->device : st->cpu;
    CU_ASSERT(st->step >= busiest * 0.99);
    CU_ASSERT(st->step <= 1.4 * (busiest + 2 * gemm_s));
    CU_ASSERT(st->step < 0.8 * (st->device + st->cpu));
#endif

    size_t n = 0;
    char *json = td_test_read_file(path, &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(json);
    int slices = 0;
    for (const char *s = json; (s = strstr(s, "\"ph\":\"X\"")); s++)
        slices++;
    CU_ASSERT_EQUAL(slices, 5 * 2 * layers); /* every stage of every layer and sub-batch */
    CU_ASSERT(strncmp(json, "{\"displayTimeUnit\"", 18) == 0);
    CU_ASSERT(n > 4 && strcmp(json + n - 3, "]}\n") == 0);
    CU_ASSERT(strstr(json, "\"name\":\"attend\"") && strstr(json, "\"sub_batch\":1") && strstr(json, "CPU attention"));
    free(json);
    remove(path);
    td_dev_free(d, a);
    td_dev_free(d, bm);
    td_dev_free(d, c);
    for (int b = 0; b < TD_PIPE_MAX_SUB; b++) {
        td_dev_free(d, t.dev_buf[b]);
        td_dev_host_free(d, t.host_buf[b]);
    }
    td_pipe_destroy(p);
    td_device_close(d);
}

void td_test_register(void) {
    static const td_test tests[] = {
        {"stages run in dependency order (emu compute, PCIe 3 link)", test_order},
        {"timed: the step takes the busiest resource's time; trace", test_overlap_and_trace},
        {NULL, NULL},
    };
    td_add_suite("pipeline", tests);
}
