/* The micro-benchmarks of `tandem tune` (offload/tune.h). */
#include "offload/tune.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/dtype.h"
#include "cpu/attention.h"
#include "cpu/hostmem.h"
#include "cpu/isa.h"
#include "cpu/kv_cache.h"
#include "offload/hwprobe.h"

#define MIB ((size_t)1 << 20)
#define GIB ((size_t)1 << 30)

/* powers of two and the midpoints 3 * 2^i: GEMM time is linear between
 * them except where tiles fill up */
static const int64_t default_ms[] = {1,  2,   3,   4,   6,   8,   12,  16,   24,   32,   48,   64,
                                     96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096};
/* square GEMMs and the layers of two common 7-8B models (their O
 * projection is the 4096 square) */
static const td_tune_shape default_shapes[] = {
    {1024, 1024},  {2048, 2048},  {4096, 4096},  {8192, 8192},
    {6144, 4096},  {28672, 4096}, {4096, 14336}, {128256, 4096}, /* Llama-3-8B: QKV, gate+up, down, head */
    {12288, 4096}, {22016, 4096}, {4096, 11008}, {32000, 4096},  /* Llama-2-7B: QKV, gate+up, down, head */
};
static const int64_t default_ctxs[] = {256, 1024, 4096, 16384};

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

const int64_t *td_tune_default_ms(int *n) {
    *n = COUNT(default_ms);
    return default_ms;
}
const td_tune_shape *td_tune_default_shapes(int *n) {
    *n = COUNT(default_shapes);
    return default_shapes;
}
const int64_t *td_tune_default_ctxs(int *n) {
    *n = COUNT(default_ctxs);
    return default_ctxs;
}

void td_tune_options_default(td_tune_options *o) { memset(o, 0, sizeof *o); }

/* ---- timing on the device ----------------------------------------------------- */

/* Ops on a device stream timed by events. Before each sample a few GEMMs
 * (the prefix) put the device ahead of the host, so the ops after the
 * first event queue up behind them and the events bracket the ops' device
 * time, not the host's enqueueing; the prefix lasts longer than enqueueing
 * the sample's ops takes. */
typedef struct bench {
    td_device *d;
    td_stream *s;
    td_event *a, *b, *x;
    td_dgemm prefix;
    double prefix_s; /* one prefix GEMM's time; 0: no prefix */
    void *pa, *pb, *pc;
    td_error *err;
} bench;

typedef tandem_status (*op_fn)(bench *b, void *ctx);

#define TARGET_SAMPLE_S 100e-6 /* ops per sample: enough for this much device time */
#define MAX_OPS 32             /* ... but no more than this many */
#define ENQUEUE_S 15e-6        /* what enqueueing an op may take the host (a loaded 2-core VM) */
#define LONG_OP_S 2e-3         /* an op this long: two samples of one are enough */
#define SLOW_OP_S 0.25         /* a GEMM this slow ends its shape's M sweep (the table extrapolates) */

static tandem_status sample(bench *b, op_fn fn, void *ctx, int reps, double *seconds) {
    tandem_status st;
    td_error *err = b->err;
    int n_prefix = b->prefix_s > 0 ? (int)ceil((100e-6 + reps * ENQUEUE_S) / b->prefix_s) : 0;
    for (int i = 0; i < (n_prefix > 64 ? 64 : n_prefix); i++)
        if ((st = td_dev_gemm(b->d, b->s, &b->prefix, err)))
            return st;
    if ((st = td_dev_event_record(b->d, b->a, b->s, err)))
        return st;
    for (int i = 0; i < reps; i++)
        if ((st = fn(b, ctx)))
            return st;
    float ms = 0;
    if ((st = td_dev_event_record(b->d, b->b, b->s, err)) || (st = td_dev_stream_sync(b->d, b->s, err)) ||
        (st = td_dev_event_elapsed(b->d, b->a, b->b, &ms, err)))
        return st;
    *seconds = (double)ms * 1e-3 / reps;
    return TANDEM_OK;
}

/* Seconds of one op: the best of three samples after a warm-up (of one
 * more, for a long op). */
static tandem_status measure(bench *b, op_fn fn, void *ctx, double *seconds) {
    double t1;
    tandem_status st = sample(b, fn, ctx, 1, &t1);
    if (st)
        return st;
    int reps = t1 > 0 ? (int)ceil(TARGET_SAMPLE_S / t1) : MAX_OPS;
    reps = reps < 1 ? 1 : reps > MAX_OPS ? MAX_OPS : reps;
    double best = t1 > LONG_OP_S ? t1 : INFINITY;
    for (int i = 0; i < (t1 > LONG_OP_S ? 1 : 3); i++) {
        double t;
        if ((st = sample(b, fn, ctx, reps, &t)))
            return st;
        best = t < best ? t : best;
    }
    *seconds = best;
    return TANDEM_OK;
}

static tandem_status gemm_op(bench *b, void *ctx) { return td_dev_gemm(b->d, b->s, (const td_dgemm *)ctx, b->err); }

static tandem_status bench_open(bench *b, td_device *d, td_error *err) {
    memset(b, 0, sizeof *b);
    b->d = d;
    b->err = err;
    tandem_status st;
    if ((st = td_dev_stream_create(d, &b->s, err)) || (st = td_dev_event_create(d, &b->a, err)) ||
        (st = td_dev_event_create(d, &b->b, err)) || (st = td_dev_event_create(d, &b->x, err)))
        return st;
    const int64_t m = 256, n = 4096, k = 4096;
    if ((st = td_dev_alloc(d, (size_t)(m * k * 2), &b->pa, err)) ||
        (st = td_dev_alloc(d, (size_t)(n * k * 2), &b->pb, err)) ||
        (st = td_dev_alloc(d, (size_t)(m * n * 4), &b->pc, err)))
        return st;
    b->prefix = (td_dgemm){.m = m,
                           .n = n,
                           .k = k,
                           .batch = 1,
                           .trans_b = true,
                           .a = b->pa,
                           .lda = k,
                           .b = b->pb,
                           .ldb = k,
                           .c = b->pc,
                           .ldc = n,
                           .c_dtype = TD_DTYPE_F32};
    double t;
    if ((st = sample(b, gemm_op, &b->prefix, 1, &t)) || (st = sample(b, gemm_op, &b->prefix, 1, &t)))
        return st;
    /* none where it is slow (the emulated device computing on the host:
     * there the host is the device, and nothing runs ahead) */
    b->prefix_s = t > 5e-3 ? 0 : t > 1e-6 ? t : 1e-6;
    return TANDEM_OK;
}

static void bench_close(bench *b) {
    if (!b->d)
        return;
    if (b->s)
        td_dev_stream_sync(b->d, b->s, NULL);
    td_dev_free(b->d, b->pa);
    td_dev_free(b->d, b->pb);
    td_dev_free(b->d, b->pc);
    if (b->a)
        td_dev_event_destroy(b->d, b->a);
    if (b->b)
        td_dev_event_destroy(b->d, b->b);
    if (b->x)
        td_dev_event_destroy(b->d, b->x);
    if (b->s)
        td_dev_stream_destroy(b->d, b->s);
}

/* Random bf16 values into device memory (a GPU's speed depends a little
 * on the bits it multiplies: zeros draw less power). The emulated device
 * does not care. */
static tandem_status fill_device(bench *b, void *dst, size_t bytes) {
    if (strcmp(b->d->info.backend, "cuda") != 0)
        return TANDEM_OK;
    const size_t chunk = 16 * MIB;
    uint16_t *h = NULL;
    tandem_status st = td_dev_host_alloc(b->d, chunk, (void **)&h, b->err);
    if (st)
        return st;
    uint32_t x = 12345;
    for (size_t i = 0; i < chunk / 2; i++) {
        x = x * 1664525u + 1013904223u;
        h[i] = td_f32_to_bf16(((float)(x >> 8) / 16777216.0f - 0.5f) * 0.25f);
    }
    for (size_t at = 0; at < bytes && !st; at += chunk)
        st = td_dev_copy(b->d, b->s, (char *)dst + at, h, bytes - at < chunk ? bytes - at : chunk, TD_COPY_H2D, b->err);
    if (!st)
        st = td_dev_stream_sync(b->d, b->s, b->err);
    td_dev_host_free(b->d, h);
    return st;
}

/* ---- progress ------------------------------------------------------------------- */

typedef struct run {
    const td_tune_options *o;
    td_profile *p;
    int32_t cap_gemm, cap_attn;
} run;

static void progress(const run *r, const char *stage, double fraction) {
    if (r->o->progress)
        r->o->progress(r->o->user, stage, fraction);
}

/* ---- device GEMM ------------------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int cmp_shape(const void *a, const void *b) {
    const td_tune_shape *x = a, *y = b;
    if (x->n != y->n)
        return (x->n > y->n) - (x->n < y->n);
    return (x->k > y->k) - (x->k < y->k);
}

static tandem_status add_gemm(run *r, int64_t m, int64_t n, int64_t k, double s, td_error *err) {
    td_profile *p = r->p;
    if (p->n_gemm == r->cap_gemm) {
        int32_t cap = r->cap_gemm ? 2 * r->cap_gemm : 256;
        td_gemm_point *g = realloc(p->gemm, (size_t)cap * sizeof *g);
        if (!g)
            return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "tune: out of memory");
        p->gemm = g;
        r->cap_gemm = cap;
    }
    p->gemm[p->n_gemm++] = (td_gemm_point){m, n, k, s};
    return TANDEM_OK;
}

static tandem_status device_gemm(run *r, bench *b, td_error *err) {
    const td_tune_options *o = r->o;
    int n_ms, n_sh;
    const int64_t *ms0 = o->ms && o->n_ms > 0 ? (n_ms = o->n_ms, o->ms) : td_tune_default_ms(&n_ms);
    const td_tune_shape *sh0 =
        o->shapes && o->n_shapes > 0 ? (n_sh = o->n_shapes, o->shapes) : td_tune_default_shapes(&n_sh);
    int64_t *ms = malloc(sizeof *ms * (size_t)n_ms);
    td_tune_shape *sh = malloc(sizeof *sh * (size_t)(n_sh + o->n_model_shapes));
    if (!ms || !sh) {
        free(ms), free(sh);
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "tune: out of memory");
    }
    memcpy(ms, ms0, sizeof *ms * (size_t)n_ms);
    memcpy(sh, sh0, sizeof *sh * (size_t)n_sh);
    for (int i = 0; i < o->n_model_shapes; i++)
        sh[n_sh++] = o->model_shapes[i];
    qsort(ms, (size_t)n_ms, sizeof *ms, cmp_i64);
    qsort(sh, (size_t)n_sh, sizeof *sh, cmp_shape);
    tandem_status st = TANDEM_OK;
    for (int i = 0; i < n_ms && !st; i++)
        if (ms[i] < 1 || ms[i] > 1 << 20)
            st = td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "tune: M %lld is out of range [1, 2^20]", (long long)ms[i]);
    for (int i = 0; i < n_sh && !st; i++)
        if (sh[i].n < 1 || sh[i].k < 1 || sh[i].n > 1 << 24 || sh[i].k > 1 << 24)
            st = td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "tune: shape %lld x %lld is out of range [1, 2^24]",
                         (long long)sh[i].n, (long long)sh[i].k);
    const int64_t max_m = n_ms ? ms[n_ms - 1] : 1;
    for (int si = 0; si < n_sh && !st; si++) {
        if (si > 0 && !cmp_shape(&sh[si], &sh[si - 1]))
            continue;
        const int64_t n = sh[si].n, k = sh[si].k;
        void *pa = NULL, *pb = NULL, *pc = NULL;
        /* the largest M whose operands fit */
        int64_t mm = max_m;
        td_error ae;
        if ((st = td_dev_alloc(b->d, (size_t)(n * k * 2), &pb, err)))
            break;
        while (mm >= 1 && (td_dev_alloc(b->d, (size_t)(mm * k * 2), &pa, &ae) ||
                           td_dev_alloc(b->d, (size_t)(mm * n * 4), &pc, &ae))) {
            td_dev_free(b->d, pa), td_dev_free(b->d, pc);
            pa = pc = NULL;
            mm /= 2;
        }
        if (mm < 1)
            st = td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "tune: no room on the device for a %lld x %lld GEMM: %s",
                         (long long)n, (long long)k, ae.msg);
        if (!st && !(st = fill_device(b, pb, (size_t)(n * k * 2))))
            st = fill_device(b, pa, (size_t)(mm * k * 2));
        for (int mi = 0; mi < n_ms && !st && ms[mi] <= mm; mi++) {
            if (mi > 0 && ms[mi] == ms[mi - 1])
                continue;
            td_dgemm g = {.m = ms[mi],
                          .n = n,
                          .k = k,
                          .batch = 1,
                          .trans_b = true,
                          .a = pa,
                          .lda = k,
                          .b = pb,
                          .ldb = k,
                          .c = pc,
                          .ldc = n,
                          .c_dtype = TD_DTYPE_F32};
            double t = 0;
            if (!(st = measure(b, gemm_op, &g, &t)))
                st = add_gemm(r, g.m, n, k, t, err);
            if (t > SLOW_OP_S)
                break;
        }
        td_dev_free(b->d, pa);
        td_dev_free(b->d, pb);
        td_dev_free(b->d, pc);
    }
    free(ms);
    free(sh);
    return st;
}

/* ---- device attention, row kernels, launch --------------------------------------------- */

typedef struct attn_ctx {
    td_dattn a;
} attn_ctx;

static tandem_status attn_op(bench *b, void *ctx) {
    return td_dev_attn_decode(b->d, b->s, &((attn_ctx *)ctx)->a, b->err);
}

typedef struct add_ctx {
    int64_t m, n;
    float *y;
    const float *x;
} add_ctx;

static tandem_status add_op(bench *b, void *ctx) {
    const add_ctx *c = ctx;
    return td_dev_add(b->d, b->s, c->m, c->n, c->y, c->n, c->x, c->n, b->err);
}

/* bytes / second from two sizes: the slope, which leaves out the launch */
static double slope_rate(double bytes1, double t1, double bytes2, double t2) {
    if (t2 > t1 && bytes2 > bytes1)
        return (bytes2 - bytes1) / (t2 - t1);
    return bytes2 / t2;
}

static tandem_status upload(bench *b, void *dst, const void *src, size_t bytes) {
    void *h = NULL;
    tandem_status st = td_dev_host_alloc(b->d, bytes, &h, b->err);
    if (st)
        return st;
    memcpy(h, src, bytes);
    if (!(st = td_dev_copy(b->d, b->s, dst, h, bytes, TD_COPY_H2D, b->err)))
        st = td_dev_stream_sync(b->d, b->s, b->err);
    td_dev_host_free(b->d, h);
    return st;
}

static tandem_status device_kernels(run *r, bench *b, int qh, int kvh, int hd, td_error *err) {
    td_profile *p = r->p;
    td_device *d = b->d;
    enum { S = 32 }; /* sequences */
    const int32_t T = 16, c1 = 1024, c2 = 4096, nb = c2 / T;
    td_kv_layout l = {.n_layers = 1, .n_kv_heads = kvh, .head_dim = hd, .block_tokens = T, .dtype = TD_DTYPE_BF16};
    l.tile_bytes = (size_t)T * (size_t)hd * 2;
    l.block_bytes = (size_t)kvh * 2 * l.tile_bytes;
    const size_t qn = (size_t)S * (size_t)qh * (size_t)hd;
    int32_t *table = malloc(sizeof *table * (size_t)(S * nb)), meta[3][S];
    void *pool = NULL, *dtable = NULL, *dmeta = NULL, *q = NULL, *out = NULL;
    float *y = NULL, *x = NULL;
    tandem_status st = TANDEM_OK;
    if (!table)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "tune: out of memory");
    for (int32_t i = 0; i < S * nb; i++) /* sequence s's block j: s + j * S, as sequences that grew together */
        table[i] = i / nb + i % nb * S;
    for (int32_t s = 0; s < S; s++) {
        meta[0][s] = s; /* q_first */
        meta[1][s] = 1; /* n_q */
        meta[2][s] = c2 - 1;
    }
    if ((st = td_dev_alloc(d, l.block_bytes * (size_t)(S * nb), &pool, err)) ||
        (st = td_dev_alloc(d, sizeof *table * (size_t)(S * nb), &dtable, err)) ||
        (st = td_dev_alloc(d, sizeof meta * 2, &dmeta, err)) || (st = td_dev_alloc(d, qn * 4, &q, err)) ||
        (st = td_dev_alloc(d, qn * 4, &out, err)) || (st = upload(b, dtable, table, sizeof *table * (size_t)(S * nb))))
        goto done;
    /* meta for ctx c2, then the same with positions for c1 */
    if ((st = upload(b, dmeta, meta, sizeof meta)))
        goto done;
    for (int32_t s = 0; s < S; s++)
        meta[2][s] = c1 - 1;
    if ((st = upload(b, (char *)dmeta + sizeof meta, meta, sizeof meta)))
        goto done;
    double t[2];
    for (int i = 0; i < 2 && !st; i++) {
        const int32_t *m = (const int32_t *)((char *)dmeta + (i ? 0 : sizeof meta));
        attn_ctx a = {{.kv = {.pool = pool, .n_blocks = S * nb, .layout = l},
                       .layer = 0,
                       .n_q_heads = qh,
                       .scale = 1.0f / sqrtf((float)hd),
                       .n_seqs = S,
                       .q_first = m,
                       .n_q = m + S,
                       .pos = m + 2 * S,
                       .block_table = dtable,
                       .table_stride = nb,
                       .max_ctx = i ? c2 : c1,
                       .max_q = 1,
                       .q = q,
                       .q_stride = (int64_t)qh * hd,
                       .out = out,
                       .out_stride = (int64_t)qh * hd,
                       .out_dtype = TD_DTYPE_F32}};
        st = measure(b, attn_op, &a, &t[i]);
    }
    if (st)
        goto done;
    const double per_token = 2.0 * kvh * hd * 2;
    p->dev_attn_gbps = slope_rate(S * per_token * c1, t[0], S * per_token * c2, t[1]) / 1e9;

    /* a row kernel: y += x, 12 bytes per element */
    const int64_t rn = 4096, m1 = 256, m2 = 2048;
    if ((st = td_dev_alloc(d, (size_t)(m2 * rn * 4), (void **)&y, err)) ||
        (st = td_dev_alloc(d, (size_t)(m2 * rn * 4), (void **)&x, err)))
        goto done;
    add_ctx a1 = {m1, rn, y, x}, a2 = {m2, rn, y, x}, tiny = {1, 16, y, x};
    double r1, r2, tl;
    if ((st = measure(b, add_op, &a1, &r1)) || (st = measure(b, add_op, &a2, &r2)) ||
        (st = measure(b, add_op, &tiny, &tl)))
        goto done;
    p->dev_row_gbps = slope_rate(12.0 * m1 * rn, r1, 12.0 * m2 * rn, r2) / 1e9;
    p->dev_launch_s = tl;
done:
    free(table);
    td_dev_free(d, pool), td_dev_free(d, dtable), td_dev_free(d, dmeta), td_dev_free(d, q), td_dev_free(d, out);
    td_dev_free(d, y), td_dev_free(d, x);
    return st;
}

/* ---- the link ------------------------------------------------------------------------- */

typedef struct copy_ctx {
    void *dst;
    const void *src;
    size_t bytes;
    td_copy_dir dir;
} copy_ctx;

static tandem_status copy_op(bench *b, void *ctx) {
    const copy_ctx *c = ctx;
    return td_dev_copy(b->d, b->s, c->dst, c->src, c->bytes, c->dir, b->err);
}

static tandem_status link_stage(run *r, bench *b, td_error *err) {
    static const size_t sizes[] = {4096, 64 << 10, 1 << 20, 16 << 20, 64 << 20};
    const int n = COUNT(sizes);
    void *h = NULL, *dv = NULL;
    tandem_status st;
    if ((st = td_dev_host_alloc(b->d, sizes[n - 1], &h, err)) || (st = td_dev_alloc(b->d, sizes[n - 1], &dv, err)))
        goto done;
    memset(h, 0x5a, sizes[n - 1]);
    for (int dir = 0; dir < 2 && !st; dir++) {
        double t[COUNT(sizes)];
        for (int i = 0; i < n && !st; i++) {
            copy_ctx c = {dir ? h : dv, dir ? dv : h, sizes[i], dir ? TD_COPY_D2H : TD_COPY_H2D};
            st = measure(b, copy_op, &c, &t[i]);
        }
        if (st)
            break;
        double bw = slope_rate((double)sizes[n - 2], t[n - 2], (double)sizes[n - 1], t[n - 1]);
        double lat = t[0] - (double)sizes[0] / bw;
        if (dir)
            r->p->d2h_gbps = bw / 1e9;
        else
            r->p->h2d_gbps = bw / 1e9;
        /* one latency for both directions: the larger */
        if (lat > r->p->link_latency_s)
            r->p->link_latency_s = lat;
    }
done:
    td_dev_host_free(b->d, h);
    td_dev_free(b->d, dv);
    return st;
}

/* ---- hand-off -------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The host clock around: enqueue a tiny op, record an event, wait for it
 * in td_dev_event_sync. Less the op's own device time, what is left is the
 * hand-off both ways: the host's work reaching the device, and the
 * device's completion reaching a waiting host thread. */
static tandem_status handoff(run *r, bench *b, td_error *err) {
    float *y = NULL, *x = NULL;
    tandem_status st;
    enum { N = 41, WARM = 5 };
    double t[N];
    if ((st = td_dev_alloc(b->d, 64, (void **)&y, err)) || (st = td_dev_alloc(b->d, 64, (void **)&x, err)))
        goto done;
    add_ctx tiny = {1, 16, y, x};
    for (int i = 0; i < N + WARM && !st; i++) {
        double t0 = td_seconds();
        if (!(st = add_op(b, &tiny)) && !(st = td_dev_event_record(b->d, b->x, b->s, err)))
            st = td_dev_event_sync(b->d, b->x, err);
        if (i >= WARM)
            t[i - WARM] = td_seconds() - t0;
    }
    if (!st) {
        qsort(t, N, sizeof *t, cmp_double);
        double h = t[N / 2] - r->p->dev_launch_s;
        r->p->handoff_s = h > 0 ? h : 0;
    }
done:
    td_dev_free(b->d, y);
    td_dev_free(b->d, x);
    return st;
}

/* ---- CPU attention ------------------------------------------------------------------------ */

static size_t default_cpu_bytes(void) {
    long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
    size_t b = llc > 0 ? 2 * (size_t)llc : 0;
    return b > GIB ? b : GIB;
}

static tandem_status add_attn(run *r, int32_t threads, int64_t ctx, double gbps, td_error *err) {
    td_profile *p = r->p;
    if (p->n_cpu_attn == r->cap_attn) {
        int32_t cap = r->cap_attn ? 2 * r->cap_attn : 64;
        td_cpu_attn_point *a = realloc(p->cpu_attn, (size_t)cap * sizeof *a);
        if (!a)
            return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "tune: out of memory");
        p->cpu_attn = a;
        r->cap_attn = cap;
    }
    p->cpu_attn[p->n_cpu_attn++] = (td_cpu_attn_point){threads, ctx, gbps};
    return TANDEM_OK;
}

/* KV of `layers` layers in one pool of blocks that pseudo-sequences of any
 * context take turns over: each pass reads the whole pool once (every
 * layer of every block), so every context streams the same bytes from
 * DRAM; sequence s's block j is s + j * S, as blocks of sequences that
 * grew together interleave. */
typedef struct cpu_kv {
    td_kv_cache *kv;
    void *buf;
    size_t bytes;
    int32_t layers, n_blocks, qh, hd;
    float *q, *out;
    int32_t *table;
    td_attn_seq *seqs;
} cpu_kv;

static void cpu_kv_free(cpu_kv *c) {
    td_kv_destroy(c->kv);
    td_host_unmap(c->buf, c->bytes);
    free(c->q), free(c->out), free(c->table), free(c->seqs);
}

static tandem_status cpu_kv_make(cpu_kv *c, size_t bytes, int64_t max_ctx, int threads, int qh, int kvh, int hd,
                                 td_error *err) {
    memset(c, 0, sizeof *c);
    const int32_t T = TD_KV_DEFAULT_BLOCK_TOKENS;
    const size_t per_block_layer = (size_t)kvh * 2 * (size_t)T * (size_t)hd * 2;
    const int64_t blocks_max = (max_ctx + T - 1) / T;
    /* at least two sequences of the longest context per layer */
    size_t layers = bytes / (per_block_layer * (size_t)blocks_max * 2);
    layers = layers < 1 ? 1 : layers > 4096 ? 4096 : layers;
    size_t n_blocks = bytes / (per_block_layer * layers);
    if (n_blocks < (size_t)blocks_max * 2)
        n_blocks = (size_t)blocks_max * 2;
    if (n_blocks > (size_t)1 << 30)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "tune: a CPU attention pool of %zu blocks is too large",
                       n_blocks);
    c->layers = (int32_t)layers;
    c->n_blocks = (int32_t)n_blocks;
    c->qh = qh, c->hd = hd;
    c->bytes = n_blocks * per_block_layer * layers;
    if (!(c->buf = td_host_map(c->bytes, threads)))
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "tune: cannot map %zu MiB for the CPU attention's KV",
                       c->bytes >> 20);
    /* values: 1 MiB of random bf16 in [-2, 2), repeated */
    const size_t seed_bytes = MIB < c->bytes ? MIB : c->bytes;
    uint16_t *v = c->buf;
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < seed_bytes / 2; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        v[i] = td_f32_to_bf16((float)((double)(x >> 11) * 0x1p-53 * 4 - 2));
    }
    const long chunks = (long)(c->bytes / seed_bytes);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long i = 1; i < chunks; i++)
        memcpy((char *)c->buf + (size_t)i * seed_bytes, c->buf, seed_bytes);
    td_kv_config kc = {.n_layers = c->layers,
                       .n_kv_heads = kvh,
                       .head_dim = hd,
                       .block_tokens = T,
                       .dtype = TD_DTYPE_BF16,
                       .budget_bytes = c->bytes,
                       .max_seqs = 1,
                       .max_seq_tokens = T,
                       .n_threads = threads,
                       .pool = c->buf};
    tandem_status st = td_kv_create(&kc, &c->kv, err);
    if (st)
        return st;
    /* the most sequences: the shortest context's */
    const size_t max_seqs = n_blocks, qn = max_seqs * (size_t)qh * (size_t)hd;
    c->q = malloc(qn * sizeof *c->q);
    c->out = malloc(qn * sizeof *c->out);
    c->table = malloc(n_blocks * sizeof *c->table);
    c->seqs = malloc(max_seqs * sizeof *c->seqs);
    if (!c->q || !c->out || !c->table || !c->seqs)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "tune: out of memory for %zu sequences", max_seqs);
    for (size_t i = 0; i < qn; i++)
        c->q[i] = (float)sin((double)i * 0.7);
    return TANDEM_OK;
}

/* Sets up the pseudo-sequences of ctx tokens; returns how many. */
static int32_t cpu_kv_seqs(cpu_kv *c, int64_t ctx) {
    const int32_t T = TD_KV_DEFAULT_BLOCK_TOKENS, nb = (int32_t)((ctx + T - 1) / T), S = c->n_blocks / nb;
    const size_t stride = (size_t)c->qh * (size_t)c->hd;
    for (int32_t s = 0; s < S; s++) {
        for (int32_t j = 0; j < nb; j++)
            c->table[(size_t)s * nb + j] = s + j * S;
        c->seqs[s] = (td_attn_seq){.q = c->q + (size_t)s * stride,
                                   .blocks = c->table + (size_t)s * nb,
                                   .n_tokens = (int32_t)ctx,
                                   .out = c->out + (size_t)s * stride};
    }
    return S;
}

static tandem_status cpu_pass(td_attn *a, const cpu_kv *c, int32_t n_seqs, td_error *err) {
    for (int32_t l = 0; l < c->layers; l++) {
        td_attn_batch bt = {.kv = c->kv,
                            .layer = l,
                            .n_q_heads = c->qh,
                            .scale = 1.0f / sqrtf((float)c->hd),
                            .out_dtype = TD_DTYPE_F32,
                            .seqs = c->seqs,
                            .n_seqs = n_seqs};
        tandem_status st = td_attn_decode(a, &bt, err);
        if (st)
            return st;
    }
    return TANDEM_OK;
}

static tandem_status cpu_attention(run *r, int threads, int qh, int kvh, int hd, td_error *err) {
    const td_tune_options *o = r->o;
    int n_ctx;
    const int64_t *ctx0 = o->ctxs && o->n_ctxs > 0 ? (n_ctx = o->n_ctxs, o->ctxs) : td_tune_default_ctxs(&n_ctx);
    int64_t ctxs[64];
    if (n_ctx > 64)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "tune: more than 64 contexts");
    memcpy(ctxs, ctx0, sizeof *ctxs * (size_t)n_ctx);
    qsort(ctxs, (size_t)n_ctx, sizeof *ctxs, cmp_i64);
    int n_unique = 0;
    for (int i = 0; i < n_ctx; i++)
        if (!n_unique || ctxs[i] != ctxs[n_unique - 1])
            ctxs[n_unique++] = ctxs[i];
    n_ctx = n_unique;
    for (int i = 0; i < n_ctx; i++)
        if (ctxs[i] < 1 || ctxs[i] > 1 << 24)
            return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "tune: context %lld is out of range [1, 2^24]",
                           (long long)ctxs[i]);
    td_isa isa;
    tandem_status st = td_isa_select(&isa, err);
    if (st)
        return st;
    cpu_kv c;
    if ((st = cpu_kv_make(&c, o->cpu_bytes ? o->cpu_bytes : default_cpu_bytes(), ctxs[n_ctx - 1], threads, qh, kvh, hd,
                          err))) {
        cpu_kv_free(&c);
        return st;
    }
    const double per_token_layer = 2.0 * kvh * hd * 2;
    /* team sizes 1, 2, 4, ... and threads */
    for (int team = 1; team <= threads && !st; team = team * 2 > threads && team < threads ? threads : team * 2) {
        td_attn *a = NULL;
        if ((st = td_attn_create(team, isa, &a, err)))
            break;
        for (int ci = 0; ci < n_ctx && !st; ci++) {
            const int32_t S = cpu_kv_seqs(&c, ctxs[ci]);
            const double bytes = per_token_layer * (double)ctxs[ci] * S * c.layers;
            /* the smaller team's figure at this context: a larger team that
             * reads slower met another process on its cores (an OpenMP team
             * with a thread descheduled waits for it at every barrier), so
             * it tries again, twice at most */
            const double before = r->p->n_cpu_attn > n_ctx ? r->p->cpu_attn[r->p->n_cpu_attn - n_ctx].gbps : 0;
            double best = INFINITY;
            for (int attempt = 0; attempt < 3 && !st && !(attempt > 0 && bytes / best / 1e9 >= 0.9 * before);
                 attempt++) {
                double start = td_seconds();
                if ((st = cpu_pass(a, &c, S, err))) /* warm-up */
                    break;
                for (int pass = 0; pass < 10; pass++) {
                    double t0 = td_seconds();
                    if ((st = cpu_pass(a, &c, S, err)))
                        break;
                    double dt = td_seconds() - t0;
                    best = dt < best ? dt : best;
                    if (pass >= 2 && td_seconds() - start > 0.1)
                        break;
                }
            }
            if (!st)
                st = add_attn(r, team, ctxs[ci], bytes / best / 1e9, err);
        }
        td_attn_destroy(a);
    }
    if (st) {
        cpu_kv_free(&c);
        return st;
    }

    /* the fixed cost of a call: one block of one sequence on the whole team */
    progress(r, "CPU attention", 0.97);
    progress(r, "CPU call", 0.97);
    td_attn *a = NULL;
    enum { N = 101, WARM = 10 };
    double t[N];
    if (!(st = td_attn_create(threads, isa, &a, err))) {
        const int32_t one = 0;
        td_attn_seq s1 = {.q = c.q, .blocks = &one, .n_tokens = TD_KV_DEFAULT_BLOCK_TOKENS, .out = c.out};
        td_attn_batch bt = {.kv = c.kv,
                            .layer = 0,
                            .n_q_heads = qh,
                            .scale = 1.0f / sqrtf((float)hd),
                            .out_dtype = TD_DTYPE_F32,
                            .seqs = &s1,
                            .n_seqs = 1};
        for (int i = 0; i < N + WARM && !st; i++) {
            double t0 = td_seconds();
            st = td_attn_decode(a, &bt, err);
            if (i >= WARM)
                t[i - WARM] = td_seconds() - t0;
        }
        if (!st) {
            qsort(t, N, sizeof *t, cmp_double);
            r->p->cpu_attn_call_s = t[N / 2];
        }
    }
    td_attn_destroy(a);
    cpu_kv_free(&c);
    return st;
}

/* src into dst[cap], cut short when longer */
static void copy_str(char *dst, size_t cap, const char *src) {
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* ---- the whole run ---------------------------------------------------------------------------- */

tandem_status td_tune_run(td_device *d, const td_tune_options *o, td_profile **out, td_error *err) {
    *out = NULL;
    td_tune_options defaults;
    if (!o) {
        td_tune_options_default(&defaults);
        o = &defaults;
    }
    if (!d)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "tune: no device");
    if (o->threads < 0 || o->threads > 65536)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "tune: threads %d is out of range [0, 65536]", o->threads);
    if (o->n_model_shapes < 0 || (o->n_model_shapes > 0 && !o->model_shapes))
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "tune: bad model shapes");
    const int threads = o->threads ? o->threads : omp_get_max_threads();
    const int qh = o->attn_q_heads ? o->attn_q_heads : 32, kvh = o->attn_kv_heads ? o->attn_kv_heads : 8,
              hd = o->attn_head_dim ? o->attn_head_dim : 128;
    if (qh < 1 || kvh < 1 || qh % kvh || qh / kvh > TD_ATTN_MAX_GROUP || hd < 16 || hd % 16 || hd > TD_KV_MAX_HEAD_DIM)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                       "tune: attention shape %d query heads, %d kv heads, head dim %d is not one the kernels run", qh,
                       kvh, hd);
    run r = {.o = o};
    if (!(r.p = calloc(1, sizeof *r.p)))
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "tune: out of memory");
    td_profile *p = r.p;
    const double t0 = td_seconds();
    bench b;
    progress(&r, "device GEMM", 0.0);
    tandem_status st = bench_open(&b, d, err);
    if (!st)
        st = device_gemm(&r, &b, err);
    if (!st) {
        progress(&r, "device GEMM", 0.30);
        progress(&r, "device kernels", 0.30);
        st = device_kernels(&r, &b, qh, kvh, hd, err);
    }
    if (!st) {
        progress(&r, "device kernels", 0.32);
        progress(&r, "link", 0.32);
        st = link_stage(&r, &b, err);
    }
    if (!st) {
        progress(&r, "link", 0.35);
        progress(&r, "hand-off", 0.35);
        st = handoff(&r, &b, err);
    }
    bench_close(&b);
    if (!st) {
        progress(&r, "hand-off", 0.36);
        progress(&r, "CPU attention", 0.36);
        st = cpu_attention(&r, threads, qh, kvh, hd, err);
    }
    if (st) {
        td_profile_free(p);
        return st;
    }
    progress(&r, "CPU call", 1.0);

    copy_str(p->device, sizeof p->device, o->device_name ? o->device_name : d->info.name);
    p->dev_mem_bytes = (double)d->info.mem_total;
    copy_str(p->link, sizeof p->link, o->link_name ? o->link_name : "host link");
    td_probe_cpu_name(p->cpu, sizeof p->cpu);
    p->cpu_threads = threads;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    p->host_mem_bytes = pages > 0 && page > 0 ? (double)pages * (double)page : 0;
    if (o->source)
        copy_str(p->source, sizeof p->source, o->source);
    else {
        char day[32] = "";
        time_t now = time(NULL);
        struct tm tm;
        if (gmtime_r(&now, &tm))
            strftime(day, sizeof day, "%Y-%m-%d", &tm);
        snprintf(p->source, sizeof p->source,
                 "tandem tune %s, %s, %.1f s; CPU attention: %d/%d/%d heads/kv heads/dim, bf16 KV, %s",
                 tandem_version(), day, td_seconds() - t0, qh, kvh, hd, td_isa_name(td_isa_default()));
    }
    /* the figures the file holds in microseconds, to the picosecond: a
     * whole number of picoseconds / 1e6 reads back as the same double */
    double *us[] = {&p->dev_launch_s, &p->link_latency_s, &p->cpu_attn_call_s, &p->handoff_s};
    for (int i = 0; i < 4; i++)
        *us[i] = round(*us[i] * 1e12) / 1e6 / 1e6;
    td_error verr;
    if ((st = td_profile_validate(p, "tune", &verr))) {
        td_profile_free(p);
        return td_fail(err, TANDEM_ERR_INTERNAL, "tune measured an invalid profile: %s", verr.msg);
    }
    *out = p;
    return TANDEM_OK;
}
