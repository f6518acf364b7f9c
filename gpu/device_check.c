/* Enqueue-time argument checks shared by every backend (gpu/device.h).
 * Compiled into libtandem and into the CUDA plugin, so both answer a bad
 * argument with the same message. */
#include "gpu/device.h"

tandem_status td_dev_check_rows(const char *call, int64_t m, int64_t n, int64_t stride, td_error *err) {
    if (m < 1 || n < 1)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: %lld x %lld is empty", call, (long long)m, (long long)n);
    if (stride < n)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: row stride %lld is less than the row length %lld", call,
                       (long long)stride, (long long)n);
    return TANDEM_OK;
}

tandem_status td_dev_check_out_dtype(const char *call, td_dtype t, td_error *err) {
    if (t != TD_DTYPE_F32 && t != TD_DTYPE_BF16)
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "%s: output dtype %s (f32 or bf16)", call, td_dtype_name(t));
    return TANDEM_OK;
}

tandem_status td_dev_check_gemm(const td_dgemm *g, td_error *err) {
    if (g->m < 1 || g->n < 1 || g->k < 1 || g->batch < 1)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "gemm: m %lld, n %lld, k %lld, batch %d must be >= 1",
                       (long long)g->m, (long long)g->n, (long long)g->k, g->batch);
    if (!g->a || !g->b || !g->c)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "gemm: a null operand (a %p, b %p, c %p)", g->a, g->b, g->c);
    if (g->lda < g->k)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "gemm: lda %lld < k %lld", (long long)g->lda, (long long)g->k);
    if (g->ldb < (g->trans_b ? g->k : g->n))
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "gemm: ldb %lld < %s %lld", (long long)g->ldb,
                       g->trans_b ? "k" : "n", (long long)(g->trans_b ? g->k : g->n));
    if (g->ldc < g->n)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "gemm: ldc %lld < n %lld", (long long)g->ldc, (long long)g->n);
    if (g->batch > 1 && (g->stride_a < 0 || g->stride_b < 0 || g->stride_c < g->m * g->ldc - (g->ldc - g->n)))
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                       "gemm: batch strides a %lld, b %lld, c %lld (C's must not overlap: >= %lld)",
                       (long long)g->stride_a, (long long)g->stride_b, (long long)g->stride_c,
                       (long long)(g->m * g->ldc - (g->ldc - g->n)));
    tandem_status st = td_dev_check_out_dtype("gemm", g->c_dtype, err);
    if (st)
        return st;
    if (g->accumulate && g->c_dtype != TD_DTYPE_F32)
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "gemm: accumulate needs an f32 C, not %s",
                       td_dtype_name(g->c_dtype));
    return TANDEM_OK;
}

tandem_status td_dev_check_dkv(const td_dkv *kv, int32_t layer, const char *call, td_error *err) {
    const td_kv_layout *l = &kv->layout;
    if (!kv->pool || kv->n_blocks < 1)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: KV pool %p of %d blocks", call, kv->pool, kv->n_blocks);
    if (l->dtype != TD_DTYPE_BF16 && l->dtype != TD_DTYPE_F16)
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "%s: KV dtype %s (bf16 or f16)", call, td_dtype_name(l->dtype));
    if (l->head_dim < 16 || l->head_dim % 16 || l->head_dim > TD_KV_MAX_HEAD_DIM || l->block_tokens < 16 ||
        l->block_tokens % 16 || l->block_tokens > TD_KV_MAX_BLOCK_TOKENS || l->n_kv_heads < 1)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: KV layout head_dim %d, block_tokens %d, kv heads %d",
                       call, l->head_dim, l->block_tokens, l->n_kv_heads);
    if (layer < 0 || layer >= l->n_layers)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: layer %d outside [0, %d)", call, layer, l->n_layers);
    return TANDEM_OK;
}

tandem_status td_dev_check_attn(const td_dattn *a, bool decode, td_error *err) {
    const char *call = decode ? "attn_decode" : "attn_prefill";
    tandem_status st = td_dev_check_dkv(&a->kv, a->layer, call, err);
    if (st)
        return st;
    const int32_t H = a->kv.layout.n_kv_heads;
    if (a->n_q_heads < H || a->n_q_heads % H)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: %d query heads is not a multiple of %d kv heads", call,
                       a->n_q_heads, H);
    if (a->n_seqs < 1 || !a->q_first || !a->n_q || !a->pos || !a->block_table || !a->q || !a->out)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: %d sequences, or a null array", call, a->n_seqs);
    if (a->max_ctx < 1 || a->max_q < 1 || (decode && a->max_q != 1))
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: max_ctx %d, max_q %d", call, a->max_ctx, a->max_q);
    if (!(a->scale > 0) || a->scale > 1e30f)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: scale %g", call, (double)a->scale);
    const int64_t row = (int64_t)a->n_q_heads * a->kv.layout.head_dim;
    const int32_t bt = a->kv.layout.block_tokens;
    if (a->table_stride < (a->max_ctx + bt - 1) / bt)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: table_stride %d cannot hold %d tokens", call,
                       a->table_stride, a->max_ctx);
    if (a->q_stride < row || a->out_stride < row)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: q stride %lld / out stride %lld < %lld", call,
                       (long long)a->q_stride, (long long)a->out_stride, (long long)row);
    return td_dev_check_out_dtype(call, a->out_dtype, err);
}
