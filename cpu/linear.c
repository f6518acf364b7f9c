/* Host linear layers: oneDNN bf16 matmul with weights in oneDNN's blocked
 * layout, or OpenBLAS sgemm on fp32 weights (cpu/linear.h). */
#include "cpu/linear.h"

#include <cblas.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdlib.h>
#include <string.h>

/* Enough for every (shape, batch size) a model's step meets in practice:
 * five weight shapes x a handful of live batch sizes. Beyond it the least
 * recently used primitive is dropped (rebuilding it hits oneDNN's own
 * primitive cache first). */
#define TD_GEMM_CACHE 64

typedef struct td_gemm_entry {
    int64_t m, k, n;
    bool accumulate;
    uint64_t last_use; /* 0: empty */
    dnnl_primitive_t prim;
    dnnl_memory_t src, wei, dst; /* created without buffers; handles set per call */
} td_gemm_entry;

struct td_gemm {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    uint64_t clock;
    td_gemm_entry cache[TD_GEMM_CACHE];
};

struct td_linear {
    int64_t n, k;
    td_dtype dtype;
    void *w; /* bf16: oneDNN's blocked layout (wmd); f32: [n][k] */
    size_t bytes;
    dnnl_memory_desc_t wmd;
};

static tandem_status dnnl_fail(td_error *err, dnnl_status_t s, const char *what) {
    tandem_status st = TANDEM_ERR_INTERNAL;
    if (s == dnnl_out_of_memory)
        st = TANDEM_ERR_OUT_OF_MEMORY;
    else if (s == dnnl_unimplemented) /* no oneDNN kernel for this shape or type on this CPU */
        st = TANDEM_ERR_UNSUPPORTED;
    return td_fail(err, st, "linear: oneDNN %s failed (dnnl status %d)", what, (int)s);
}

tandem_status td_gemm_create(td_gemm **out, td_error *err) {
    *out = NULL;
    td_gemm *g = calloc(1, sizeof *g);
    if (!g)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "linear: out of memory");
    dnnl_status_t s = dnnl_engine_create(&g->engine, dnnl_cpu, 0);
    if (s != dnnl_success) {
        free(g);
        return dnnl_fail(err, s, "engine creation");
    }
    s = dnnl_stream_create(&g->stream, g->engine, dnnl_stream_default_flags);
    if (s != dnnl_success) {
        dnnl_engine_destroy(g->engine);
        free(g);
        return dnnl_fail(err, s, "stream creation");
    }
    *out = g;
    return TANDEM_OK;
}

static void entry_clear(td_gemm_entry *e) {
    if (e->prim)
        dnnl_primitive_destroy(e->prim);
    if (e->src)
        dnnl_memory_destroy(e->src);
    if (e->wei)
        dnnl_memory_destroy(e->wei);
    if (e->dst)
        dnnl_memory_destroy(e->dst);
    memset(e, 0, sizeof *e);
}

void td_gemm_destroy(td_gemm *g) {
    if (!g)
        return;
    for (int i = 0; i < TD_GEMM_CACHE; i++)
        entry_clear(&g->cache[i]);
    dnnl_stream_destroy(g->stream);
    dnnl_engine_destroy(g->engine);
    free(g);
}

int td_gemm_cached(const td_gemm *g) {
    int n = 0;
    for (int i = 0; i < TD_GEMM_CACHE; i++)
        n += g->cache[i].last_use != 0;
    return n;
}

/* The primitive descriptor of matmul md; accumulate adds the product to
 * the destination (a sum post-op). */
static dnnl_status_t pd_create(td_gemm *g, const dnnl_matmul_desc_t *md, bool accumulate, dnnl_primitive_desc_t *pd) {
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_status_t s = dnnl_success;
    if (accumulate) {
        s = dnnl_primitive_attr_create(&attr);
        if (s == dnnl_success)
            s = dnnl_post_ops_create(&po);
        if (s == dnnl_success)
            s = dnnl_post_ops_append_sum(po, 1.0f);
        if (s == dnnl_success)
            s = dnnl_primitive_attr_set_post_ops(attr, po);
    }
    if (s == dnnl_success)
        s = dnnl_primitive_desc_create(pd, md, attr, g->engine, NULL);
    if (po)
        dnnl_post_ops_destroy(po);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    return s;
}

/* The primitive descriptor of x[m][k] bf16 . W (wmd) -> y[m][n] f32. With
 * wmd == NULL the weights' layout is left to oneDNN (format_tag_any). */
static dnnl_status_t matmul_pd(td_gemm *g, int64_t m, int64_t k, int64_t n, const dnnl_memory_desc_t *wmd,
                               bool accumulate, dnnl_primitive_desc_t *pd) {
    dnnl_memory_desc_t smd, wany, dmd;
    dnnl_dims_t sdims = {m, k}, wdims = {k, n}, ddims = {m, n};
    dnnl_status_t s = dnnl_memory_desc_init_by_tag(&smd, 2, sdims, dnnl_bf16, dnnl_ab);
    if (s == dnnl_success && !wmd) {
        s = dnnl_memory_desc_init_by_tag(&wany, 2, wdims, dnnl_bf16, dnnl_format_tag_any);
        wmd = &wany;
    }
    if (s == dnnl_success)
        s = dnnl_memory_desc_init_by_tag(&dmd, 2, ddims, dnnl_f32, dnnl_ab);
    dnnl_matmul_desc_t md;
    if (s == dnnl_success)
        s = dnnl_matmul_desc_init(&md, &smd, wmd, NULL, &dmd);
    if (s != dnnl_success)
        return s;

    return pd_create(g, &md, accumulate, pd);
}

static tandem_status linear_bf16(td_gemm *g, td_linear *l, const uint16_t *w, td_error *err) {
    /* Ask oneDNN which layout its kernel wants (the same for every m: checked
     * on oneDNN 2.6 for every shape of the Llama layers), then reorder the
     * plain [n][k] matrix (format "ba" of the k x n weights) into it. */
    dnnl_primitive_desc_t pd = NULL, rpd = NULL;
    dnnl_primitive_t reorder = NULL;
    dnnl_memory_t msrc = NULL, mdst = NULL;
    dnnl_memory_desc_t plain;
    dnnl_dims_t wdims = {l->k, l->n};
    const char *what = "matmul descriptor";
    dnnl_status_t s = matmul_pd(g, 64, l->k, l->n, NULL, false, &pd);
    if (s == dnnl_success) {
        l->wmd = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        l->bytes = dnnl_memory_desc_get_size(&l->wmd);
        l->w = aligned_alloc(64, (l->bytes + 63) & ~(size_t)63);
        if (!l->w) {
            dnnl_primitive_desc_destroy(pd);
            return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "linear: out of memory for %zu bytes of weights", l->bytes);
        }
        what = "weight reorder";
        s = dnnl_memory_desc_init_by_tag(&plain, 2, wdims, dnnl_bf16, dnnl_ba);
    }
    if (s == dnnl_success)
        s = dnnl_memory_create(&msrc, &plain, g->engine, (void *)w);
    if (s == dnnl_success)
        s = dnnl_memory_create(&mdst, &l->wmd, g->engine, l->w);
    if (s == dnnl_success)
        s = dnnl_reorder_primitive_desc_create(&rpd, &plain, g->engine, &l->wmd, g->engine, NULL);
    if (s == dnnl_success)
        s = dnnl_primitive_create(&reorder, rpd);
    if (s == dnnl_success) {
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, msrc}, {DNNL_ARG_TO, mdst}};
        s = dnnl_primitive_execute(reorder, g->stream, 2, args);
    }
    if (s == dnnl_success)
        s = dnnl_stream_wait(g->stream);

    if (reorder)
        dnnl_primitive_destroy(reorder);
    if (rpd)
        dnnl_primitive_desc_destroy(rpd);
    if (msrc)
        dnnl_memory_destroy(msrc);
    if (mdst)
        dnnl_memory_destroy(mdst);
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    return s == dnnl_success ? TANDEM_OK : dnnl_fail(err, s, what);
}

tandem_status td_linear_create(td_gemm *g, int64_t n, int64_t k, td_dtype wtype, const void *w, td_linear **out,
                               td_error *err) {
    *out = NULL;
    if (n < 1 || k < 1 || n > INT32_MAX || k > INT32_MAX)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "linear: bad shape %lld x %lld", (long long)n, (long long)k);
    if (wtype != TD_DTYPE_BF16 && wtype != TD_DTYPE_F32)
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "linear: weights of dtype %s (bf16 or f32 only)",
                       td_dtype_name(wtype));
    td_linear *l = calloc(1, sizeof *l);
    if (!l)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "linear: out of memory");
    l->n = n;
    l->k = k;
    l->dtype = wtype;
    if (wtype == TD_DTYPE_BF16) {
        tandem_status st = linear_bf16(g, l, w, err);
        if (st != TANDEM_OK) {
            td_linear_destroy(l);
            return st;
        }
    } else {
        l->bytes = (size_t)n * (size_t)k * sizeof(float);
        l->w = aligned_alloc(64, (l->bytes + 63) & ~(size_t)63);
        if (!l->w) {
            size_t bytes = l->bytes;
            td_linear_destroy(l);
            return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "linear: out of memory for %zu bytes of weights", bytes);
        }
        memcpy(l->w, w, l->bytes);
    }
    *out = l;
    return TANDEM_OK;
}

void td_linear_destroy(td_linear *l) {
    if (!l)
        return;
    free(l->w);
    free(l);
}

int64_t td_linear_n(const td_linear *l) { return l->n; }
int64_t td_linear_k(const td_linear *l) { return l->k; }
td_dtype td_linear_dtype(const td_linear *l) { return l->dtype; }
size_t td_linear_bytes(const td_linear *l) { return l->bytes; }

/* The cached primitive for (m, l's shape, accumulate), built on a miss. */
static tandem_status gemm_entry(td_gemm *g, const td_linear *l, int64_t m, bool accumulate, td_gemm_entry **out,
                                td_error *err) {
    td_gemm_entry *victim = &g->cache[0];
    for (int i = 0; i < TD_GEMM_CACHE; i++) {
        td_gemm_entry *e = &g->cache[i];
        if (e->last_use && e->m == m && e->k == l->k && e->n == l->n && e->accumulate == accumulate) {
            e->last_use = ++g->clock;
            *out = e;
            return TANDEM_OK;
        }
        if (e->last_use < victim->last_use)
            victim = e;
    }
    entry_clear(victim);

    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t s = matmul_pd(g, m, l->k, l->n, &l->wmd, accumulate, &pd);
    if (s == dnnl_success)
        s = dnnl_primitive_create(&victim->prim, pd);
    if (s == dnnl_success)
        s = dnnl_memory_create(&victim->src, dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0), g->engine,
                               DNNL_MEMORY_NONE);
    if (s == dnnl_success)
        s = dnnl_memory_create(&victim->wei, &l->wmd, g->engine, DNNL_MEMORY_NONE);
    if (s == dnnl_success)
        s = dnnl_memory_create(&victim->dst, dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0), g->engine,
                               DNNL_MEMORY_NONE);
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (s != dnnl_success) {
        entry_clear(victim);
        return dnnl_fail(err, s, "matmul primitive creation");
    }
    victim->m = m;
    victim->k = l->k;
    victim->n = l->n;
    victim->accumulate = accumulate;
    victim->last_use = ++g->clock;
    *out = victim;
    return TANDEM_OK;
}

tandem_status td_linear_forward(td_gemm *g, const td_linear *l, int64_t m, const void *x, float *y, bool accumulate,
                                td_error *err) {
    if (m < 1 || m > INT32_MAX)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "linear: bad row count %lld", (long long)m);
    if (l->dtype == TD_DTYPE_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)l->n, (int)l->k, 1.0f, x, (int)l->k, l->w,
                    (int)l->k, accumulate ? 1.0f : 0.0f, y, (int)l->n);
        return TANDEM_OK;
    }
    td_gemm_entry *e = NULL;
    tandem_status st = gemm_entry(g, l, m, accumulate, &e, err);
    if (st != TANDEM_OK)
        return st;
    dnnl_status_t s = dnnl_memory_set_data_handle(e->src, (void *)x);
    if (s == dnnl_success)
        s = dnnl_memory_set_data_handle(e->wei, l->w);
    if (s == dnnl_success)
        s = dnnl_memory_set_data_handle(e->dst, y);
    if (s == dnnl_success) {
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, e->src}, {DNNL_ARG_WEIGHTS, e->wei}, {DNNL_ARG_DST, e->dst}};
        s = dnnl_primitive_execute(e->prim, g->stream, 3, args);
    }
    if (s == dnnl_success)
        s = dnnl_stream_wait(g->stream);
    return s == dnnl_success ? TANDEM_OK : dnnl_fail(err, s, "matmul");
}

tandem_status td_matmul_bf16(td_gemm *g, const td_matmul *mm, td_error *err) {
    if (mm->batch < 1 || mm->m < 1 || mm->n < 1 || mm->k < 1)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "matmul: bad shape %lld x %lld x %lld, batch %lld",
                       (long long)mm->m, (long long)mm->n, (long long)mm->k, (long long)mm->batch);
    if ((mm->c_dtype != TD_DTYPE_F32 && mm->c_dtype != TD_DTYPE_BF16) ||
        (mm->accumulate && mm->c_dtype != TD_DTYPE_F32))
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "matmul: C of dtype %s%s", td_dtype_name(mm->c_dtype),
                       mm->accumulate ? " with accumulate" : "");
    /* A stride of 0 is a batch dimension of 1, which oneDNN broadcasts. A
     * dimension of 1 still gets its dense stride: given 0, oneDNN reads the
     * layout as another format and falls back to its reference kernel (a
     * 1024^3 GEMM took 20 s instead of 1 ms). */
    const int64_t B = mm->batch;
    const int64_t sa = mm->stride_a && B > 1 ? mm->stride_a : mm->m * mm->lda;
    const int64_t sb = mm->stride_b && B > 1 ? mm->stride_b : (mm->trans_b ? mm->n : mm->k) * mm->ldb;
    const int64_t sc = B > 1 ? mm->stride_c : mm->m * mm->ldc;
    dnnl_dims_t adims = {mm->stride_a ? B : 1, mm->m, mm->k}, astr = {sa, mm->lda, 1};
    dnnl_dims_t bdims = {mm->stride_b ? B : 1, mm->k, mm->n};
    dnnl_dims_t bstr = {sb, mm->trans_b ? 1 : mm->ldb, mm->trans_b ? mm->ldb : 1};
    dnnl_dims_t cdims = {B, mm->m, mm->n}, cstr = {sc, mm->ldc, 1};
    dnnl_memory_desc_t amd, bmd, cmd;
    dnnl_status_t s = dnnl_memory_desc_init_by_strides(&amd, 3, adims, dnnl_bf16, astr);
    if (s == dnnl_success)
        s = dnnl_memory_desc_init_by_strides(&bmd, 3, bdims, dnnl_bf16, bstr);
    if (s == dnnl_success)
        s = dnnl_memory_desc_init_by_strides(&cmd, 3, cdims, mm->c_dtype == TD_DTYPE_F32 ? dnnl_f32 : dnnl_bf16, cstr);
    dnnl_matmul_desc_t md;
    if (s == dnnl_success)
        s = dnnl_matmul_desc_init(&md, &amd, &bmd, NULL, &cmd);
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_memory_t ma = NULL, mb = NULL, mc = NULL;
    if (s == dnnl_success)
        s = pd_create(g, &md, mm->accumulate, &pd);
    if (s == dnnl_success)
        s = dnnl_primitive_create(&prim, pd);
    if (s == dnnl_success)
        s = dnnl_memory_create(&ma, &amd, g->engine, (void *)mm->a);
    if (s == dnnl_success)
        s = dnnl_memory_create(&mb, &bmd, g->engine, (void *)mm->b);
    if (s == dnnl_success)
        s = dnnl_memory_create(&mc, &cmd, g->engine, mm->c);
    if (s == dnnl_success) {
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
        s = dnnl_primitive_execute(prim, g->stream, 3, args);
    }
    if (s == dnnl_success)
        s = dnnl_stream_wait(g->stream);
    dnnl_memory_destroy(ma);
    dnnl_memory_destroy(mb);
    dnnl_memory_destroy(mc);
    dnnl_primitive_destroy(prim);
    dnnl_primitive_desc_destroy(pd);
    return s == dnnl_success ? TANDEM_OK : dnnl_fail(err, s, "strided matmul");
}
