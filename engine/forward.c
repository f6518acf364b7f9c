/* The batched Llama forward pass on the host (engine/forward.h). */
#include "engine/forward.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "cpu/attention.h"
#include "cpu/ops.h"
#include "engine/forward_device.h"

/* Rows per FFN block (see layer()). */
#define TD_FFN_ROWS 256

struct td_forward {
    const td_model *m;
    int32_t max_tokens;
    int n_threads;
    td_dtype act; /* GEMM input dtype: bf16 or f32, as the weights */
    td_attn *attn;
    td_gemm *gemm;
    /* workspace, [max_tokens] rows each */
    float *x;           /* residual stream [n_embd] */
    void *h;            /* GEMM input [max(n_embd, q_dim, n_ff)] of act */
    float *qkv;         /* [q_dim + 2 kv_dim] */
    float *gu;          /* [min(max_tokens, TD_FFN_ROWS)][2 n_ff] */
    float *cs;          /* RoPE rotation [2 rope_dim] (td_rope_angles) */
    td_attn_seq *ents;  /* attention entries of the decode tokens */
    td_attn_run *runs;  /* and the runs of the prefill chunks */
    int32_t *tokens;    /* the step's tokens, flattened */
    int32_t *seq_first; /* each batch entry's first token */
    int32_t *rows;      /* token index of each logits row */
    float *logits;      /* [logits_cap][n_vocab] */
    int32_t logits_cap;
    td_fwd_stats stats;
    td_fwd_dev *dev; /* mode device: the step runs there (engine/forward_device.h) */
};

size_t td_fwd_h_width(const td_llama_config *c) {
    size_t w = (size_t)c->n_embd, q = (size_t)c->n_heads * (size_t)c->head_dim;
    if (q > w)
        w = q;
    if ((size_t)c->n_ff > w)
        w = (size_t)c->n_ff;
    return w;
}

/* The context and the host arrays both paths plan with. */
static tandem_status create(const td_model *m, int32_t max_tokens, int n_threads, td_forward **out, td_error *err) {
    *out = NULL;
    if (max_tokens < 1)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "forward: max_tokens %d must be >= 1", max_tokens);
    td_forward *f = calloc(1, sizeof *f);
    if (!f)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "forward: out of memory");
    f->m = m;
    f->max_tokens = max_tokens;
    f->n_threads = n_threads > 0 ? n_threads : omp_get_max_threads();
    f->act = m->weights == TD_WEIGHTS_BF16 ? TD_DTYPE_BF16 : TD_DTYPE_F32;
    const size_t T = (size_t)max_tokens;
    f->tokens = malloc(T * sizeof *f->tokens);
    f->seq_first = malloc(T * sizeof *f->seq_first);
    f->rows = malloc(T * sizeof *f->rows);
    if (!f->tokens || !f->seq_first || !f->rows) {
        td_forward_destroy(f);
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "forward: out of memory for a %d-token step", max_tokens);
    }
    *out = f;
    return TANDEM_OK;
}

tandem_status td_forward_create(const td_model *m, int32_t max_tokens, int n_threads, td_forward **out, td_error *err) {
    if (!m->linears_on_host)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                       "forward: the model was loaded without its linear layers (for a device)");
    td_forward *f;
    tandem_status st = create(m, max_tokens, n_threads, &f, err);
    if (st)
        return st;
    const td_llama_config *c = &m->cfg;
    const size_t T = (size_t)max_tokens, Q = (size_t)c->n_heads * (size_t)c->head_dim,
                 KV = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    f->x = malloc(T * (size_t)c->n_embd * sizeof(float));
    f->h = malloc(T * td_fwd_h_width(c) * td_dtype_size(f->act));
    f->qkv = malloc(T * (Q + 2 * KV) * sizeof(float));
    f->gu = malloc((T < TD_FFN_ROWS ? T : TD_FFN_ROWS) * 2 * (size_t)c->n_ff * sizeof(float));
    f->cs = malloc(T * 2 * (size_t)c->rope_dim * sizeof(float));
    f->ents = malloc(T * sizeof *f->ents);
    f->runs = malloc(T * sizeof *f->runs);
    if (!f->x || !f->h || !f->qkv || !f->gu || !f->cs || !f->ents || !f->runs)
        st = td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "forward: out of memory for a %d-token workspace", max_tokens);
    if (st == TANDEM_OK)
        st = td_attn_create(f->n_threads, m->isa, &f->attn, err);
    if (st == TANDEM_OK)
        st = td_gemm_create(&f->gemm, err);
    if (st != TANDEM_OK) {
        td_forward_destroy(f);
        return st;
    }
    *out = f;
    return TANDEM_OK;
}

tandem_status td_forward_create_on_device(const td_model *m, td_device *dev, td_attn_place attn, int32_t max_tokens,
                                          int n_threads, td_forward **out, td_error *err) {
    td_forward *f;
    tandem_status st = create(m, max_tokens, n_threads, &f, err);
    if (st == TANDEM_OK && (st = td_fwd_dev_create(m, dev, attn, max_tokens, f->n_threads, &f->dev, err)))
        td_forward_destroy(f);
    if (st == TANDEM_OK)
        *out = f;
    return st;
}

void td_forward_destroy(td_forward *f) {
    if (!f)
        return;
    td_attn_destroy(f->attn);
    td_gemm_destroy(f->gemm);
    free(f->x);
    free(f->h);
    free(f->qkv);
    free(f->gu);
    free(f->cs);
    free(f->ents);
    free(f->runs);
    free(f->tokens);
    free(f->seq_first);
    free(f->rows);
    if (f->dev)
        td_fwd_dev_host_free(f->dev, f->logits);
    else
        free(f->logits);
    td_fwd_dev_destroy(f->dev);
    free(f);
}

const td_fwd_stats *td_forward_stats(const td_forward *f) { return &f->stats; }
td_pipe *td_forward_pipe(td_forward *f) { return f->dev ? td_fwd_dev_pipe(f->dev) : NULL; }
const td_model *td_forward_model(const td_forward *f) { return f->m; }
int32_t td_forward_max_tokens(const td_forward *f) { return f->max_tokens; }
int td_forward_threads(const td_forward *f) { return f->n_threads; }
void td_forward_reset_stats(td_forward *f) { memset(&f->stats, 0, sizeof f->stats); }

/* Checks the batch against the model, the cache and the workspace; returns
 * the token count and the number of logits rows. */
static tandem_status check_cache(const td_forward *f, const td_kv_cache *kv, td_error *err) {
    const td_llama_config *c = &f->m->cfg;
    const td_kv_layout *l = td_kv_get_layout(kv);
    if (l->n_layers != c->n_layers || l->n_kv_heads != c->n_kv_heads || l->head_dim != c->head_dim)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                       "forward: KV cache shape (%d layers, %d kv heads, head dim %d) does not match the model's "
                       "(%d, %d, %d)",
                       l->n_layers, l->n_kv_heads, l->head_dim, c->n_layers, c->n_kv_heads, c->head_dim);
    return TANDEM_OK;
}

/* The cache a sequence's KV is in: with two, the host's when on_host. */
static const td_kv_cache *cache_of(const td_kv_cache *dkv, const td_kv_cache *hkv, const td_fwd_seq *s) {
    return !dkv || (hkv && s->on_host) ? hkv : dkv;
}

static tandem_status check_batch(const td_forward *f, const td_kv_cache *dkv, const td_kv_cache *hkv,
                                 const td_fwd_seq *seqs, int32_t n_seqs, int32_t *n_tok, int32_t *n_rows,
                                 td_error *err) {
    const td_llama_config *c = &f->m->cfg;
    tandem_status st;
    if ((dkv && (st = check_cache(f, dkv, err))) || (hkv && (st = check_cache(f, hkv, err))))
        return st;
    if (n_seqs < 1)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "forward: empty batch");
    int64_t t = 0, r = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        const td_fwd_seq *s = &seqs[i];
        if (s->n_tokens < 1 || s->pos < 0 || !s->tokens)
            return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "forward: sequence %d of the batch: %d tokens at %d", i,
                           s->n_tokens, s->pos);
        int32_t len = td_kv_seq_len(cache_of(dkv, hkv, s), s->kv_seq);
        if (len < 0)
            return td_fail(err, TANDEM_ERR_NOT_FOUND, "forward: sequence %d of the batch: KV sequence %d is not live",
                           i, s->kv_seq);
        if ((int64_t)s->pos + s->n_tokens != len)
            return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                           "forward: sequence %d of the batch: KV sequence %d holds %d tokens, expected pos %d + %d", i,
                           s->kv_seq, len, s->pos, s->n_tokens);
        if ((int64_t)s->pos + s->n_tokens > c->n_ctx)
            return td_fail(err, TANDEM_ERR_LIMIT, "forward: sequence %d of the batch reaches %lld tokens (context %d)",
                           i, (long long)s->pos + s->n_tokens, c->n_ctx);
        for (int32_t j = 0; j < s->n_tokens; j++)
            if (s->tokens[j] < 0 || s->tokens[j] >= c->n_vocab)
                return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                               "forward: sequence %d of the batch: token %d (id %d) is outside the vocabulary [0, %d)",
                               i, j, s->tokens[j], c->n_vocab);
        t += s->n_tokens;
        r += s->logits == TD_LOGITS_ALL ? s->n_tokens : s->logits == TD_LOGITS_LAST ? 1 : 0;
    }
    if (t > f->max_tokens)
        return td_fail(err, TANDEM_ERR_LIMIT, "forward: %lld tokens in one step (max_tokens %d)", (long long)t,
                       f->max_tokens);
    *n_tok = (int32_t)t;
    *n_rows = (int32_t)r;
    return TANDEM_OK;
}

/* Lays out the step: flat tokens, RoPE angles, attention work (a decode
 * entry for a sequence's single token, a causal run for a prompt chunk),
 * logits rows. Attention writes straight into the O projection's input. */
static void plan(td_forward *f, const td_fwd_seq *seqs, int32_t n_seqs) {
    const td_llama_config *c = &f->m->cfg;
    int32_t t = 0, r = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        const td_fwd_seq *s = &seqs[i];
        f->seq_first[i] = t;
        for (int32_t j = 0; j < s->n_tokens; j++, t++) {
            f->tokens[t] = s->tokens[j];
            td_rope_angles((double)(s->pos + j), f->m->inv_freq, c->rope_dim, f->cs + (int64_t)t * 2 * c->rope_dim);
            if (s->logits == TD_LOGITS_ALL || (s->logits == TD_LOGITS_LAST && j == s->n_tokens - 1))
                f->rows[r++] = t;
        }
    }
}

/* The sequence whose rows hold row t: the last i with first[i] <= t. */
static int32_t seq_of_row(const int32_t *first, int32_t n, int32_t t) {
    int32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo + 1) / 2;
        if (first[mid] <= t)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

void td_fwd_write_host_kv(td_kv_cache *kv, const td_llama_config *c, int32_t layer, const td_fwd_seq *seqs, int32_t n,
                          const int32_t *first, const float *qkv) {
    const int64_t Q = (int64_t)c->n_heads * c->head_dim, KV = (int64_t)c->n_kv_heads * c->head_dim, W = Q + 2 * KV;
    const int32_t t0 = first[0], t1 = first[n - 1] + seqs[n - 1].n_tokens;
    /* a token's K and V rows are adjacent in qkv, one write per token, the
     * tokens split across the team (they write distinct cache elements:
     * cpu/kv_cache.h). The caller checked every row, so the writes succeed. */
#pragma omp parallel for schedule(static) if (t1 - t0 >= 8)
    for (int32_t t = t0; t < t1; t++) {
        const int32_t i = seq_of_row(first, n, t);
        const float *row = qkv + (int64_t)t * W;
        (void)td_kv_write(kv, seqs[i].kv_seq, layer, seqs[i].pos + (t - first[i]), 1, row + Q, row + Q + KV,
                          TD_DTYPE_F32, NULL);
    }
}

tandem_status td_fwd_attend_host(td_attn *a, td_kv_cache *kv, const td_llama_config *c, int32_t layer,
                                 const td_fwd_seq *seqs, int32_t n, const int32_t *first, const float *qkv, void *out,
                                 td_dtype out_dtype, td_attn_seq *ents, td_attn_run *runs, td_error *err) {
    const int64_t Q = (int64_t)c->n_heads * c->head_dim, KV = (int64_t)c->n_kv_heads * c->head_dim, W = Q + 2 * KV;
    const size_t esz = td_dtype_size(out_dtype);
    /* K and V into the cache first */
    td_fwd_write_host_kv(kv, c, layer, seqs, n, first, qkv);
    /* then every token attends over its sequence: single tokens through the
     * decode kernel, prompt chunks through the prefill kernel */
    int32_t n_ents = 0, n_runs = 0;
    for (int32_t i = 0; i < n; i++) {
        const td_fwd_seq *s = &seqs[i];
        const int32_t *blocks = td_kv_seq_blocks(kv, s->kv_seq);
        const float *q = qkv + (int64_t)first[i] * W;
        void *o = (char *)out + (size_t)first[i] * (size_t)Q * esz;
        if (s->n_tokens == 1 && !s->prompt)
            ents[n_ents++] = (td_attn_seq){.q = q, .blocks = blocks, .n_tokens = s->pos + 1, .out = o};
        else
            runs[n_runs++] = (td_attn_run){
                .q = q, .q_stride = W, .blocks = blocks, .pos = s->pos, .n = s->n_tokens, .out = o, .out_stride = Q};
    }
    const float scale = (float)(1.0 / sqrt((double)c->head_dim));
    tandem_status st;
    if (n_ents) {
        td_attn_batch b = {.kv = kv,
                           .layer = layer,
                           .n_q_heads = c->n_heads,
                           .scale = scale,
                           .out_dtype = out_dtype,
                           .seqs = ents,
                           .n_seqs = n_ents};
        if ((st = td_attn_decode(a, &b, err)))
            return st;
    }
    if (n_runs) {
        td_attn_prefill_batch b = {.kv = kv,
                                   .layer = layer,
                                   .n_q_heads = c->n_heads,
                                   .scale = scale,
                                   .out_dtype = out_dtype,
                                   .runs = runs,
                                   .n_runs = n_runs};
        if ((st = td_attn_prefill(a, &b, err)))
            return st;
    }
    return TANDEM_OK;
}

/* Seconds since *t; moves *t to now. */
static inline double lap(double *t) {
    double now = td_seconds(), d = now - *t;
    *t = now;
    return d;
}

static tandem_status layer(td_forward *f, td_kv_cache *kv, int32_t l, const td_fwd_seq *seqs, int32_t n_seqs, int32_t T,
                           td_error *err) {
    const td_model *m = f->m;
    const td_llama_config *c = &m->cfg;
    const td_layer_weights *L = &m->layers[l];
    const int64_t E = c->n_embd, D = c->head_dim, Q = (int64_t)c->n_heads * D, KV = (int64_t)c->n_kv_heads * D;
    const int64_t W = Q + 2 * KV;
    td_fwd_stats *s = &f->stats;
    tandem_status st;
    double t = td_seconds();

    td_rmsnorm(m->isa, T, E, f->x, E, L->attn_norm, c->rms_eps, f->h, E, f->act);
    s->other += lap(&t);
    if ((st = td_linear_forward(f->gemm, L->wqkv, T, f->h, f->qkv, false, err)))
        return st;
    s->linear += lap(&t);
#pragma omp parallel for schedule(static) if (T >= 8)
    for (int32_t i = 0; i < T; i++) {
        float *row = f->qkv + i * W;
        const float *cs = f->cs + (int64_t)i * 2 * c->rope_dim;
        td_rope(m->isa, row, c->n_heads, c->head_dim, c->rope_dim, cs);
        td_rope(m->isa, row + Q, c->n_kv_heads, c->head_dim, c->rope_dim, cs);
    }
    s->other += lap(&t);

    if ((st = td_fwd_attend_host(f->attn, kv, c, l, seqs, n_seqs, f->seq_first, f->qkv, f->h, f->act, f->ents, f->runs,
                                 err)))
        return st;
    s->attention += lap(&t);

    if ((st = td_linear_forward(f->gemm, L->wo, T, f->h, f->x, true, err)))
        return st;
    s->linear += lap(&t);
    /* The FFN in blocks of rows: gate/up of a whole 2048-token step is 25
     * MB of fp32 that would go out to DRAM and back for SwiGLU; a block's
     * stays in cache. Rows are independent (and a GEMM's row does not
     * depend on the rows beside it: cpu/linear.h), so blocking changes no
     * result. */
    for (int32_t r0 = 0; r0 < T; r0 += TD_FFN_ROWS) {
        const int32_t n = T - r0 < TD_FFN_ROWS ? T - r0 : TD_FFN_ROWS;
        float *x = f->x + (int64_t)r0 * E;
        td_rmsnorm(m->isa, n, E, x, E, L->ffn_norm, c->rms_eps, f->h, E, f->act);
        s->other += lap(&t);
        if ((st = td_linear_forward(f->gemm, L->wgu, n, f->h, f->gu, false, err)))
            return st;
        s->linear += lap(&t);
        td_swiglu(m->isa, n, c->n_ff, f->gu, f->h, f->act);
        s->other += lap(&t);
        if ((st = td_linear_forward(f->gemm, L->wdown, n, f->h, x, true, err)))
            return st;
        s->linear += lap(&t);
    }
    return TANDEM_OK;
}

/* One step. The host path and mode device use dkv alone (the host's own
 * cache, or the device's); cpu-attn hkv alone; hybrid both. */
static tandem_status step(td_forward *f, td_kv_cache *dkv, td_kv_cache *hkv, const td_fwd_seq *seqs, int32_t n_seqs,
                          float **logits, int32_t *n_rows, td_error *err) {
    td_kv_cache *kv = dkv ? dkv : hkv;
    const td_model *m = f->m;
    const td_llama_config *c = &m->cfg;
    const int64_t E = c->n_embd;
    int32_t T = 0, R = 0;
    tandem_status st;
    if ((st = check_batch(f, dkv, hkv, seqs, n_seqs, &T, &R, err)))
        return st;
    if (R > f->logits_cap) {
        const size_t bytes = (size_t)R * (size_t)c->n_vocab * sizeof(float);
        float *p = NULL;
        if (f->dev) { /* pinned: the device writes them back */
            td_fwd_dev_host_free(f->dev, f->logits);
            f->logits = NULL;
            f->logits_cap = 0;
            if ((st = td_fwd_dev_host_alloc(f->dev, bytes, (void **)&p, err)))
                return st;
        } else if (!(p = realloc(f->logits, bytes)))
            return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "forward: out of memory for %d rows of logits", R);
        f->logits = p;
        f->logits_cap = R;
    }
    double t = td_seconds();
    if (f->dev) {
        if ((st = td_fwd_dev_step(f->dev, dkv, hkv, seqs, n_seqs, T, R, f->logits, err)))
            return st;
        f->stats.device += td_seconds() - t;
        f->stats.steps++;
        f->stats.tokens += T;
        *logits = f->logits;
        *n_rows = R;
        return TANDEM_OK;
    }
    plan(f, seqs, n_seqs);
    if ((st = td_model_embed(m, f->tokens, T, f->x, err)))
        return st;
    f->stats.other += lap(&t);
    for (int32_t l = 0; l < c->n_layers; l++)
        if ((st = layer(f, kv, l, seqs, n_seqs, T, err)))
            return st;

    t = td_seconds();
    if (R > 0) {
        /* The final norm of the rows asked for only, packed, then the head. */
        const size_t esz = td_dtype_size(f->act);
#pragma omp parallel for schedule(static) if (R >= 8)
        for (int32_t r = 0; r < R; r++)
            td_rmsnorm(m->isa, 1, E, f->x + (int64_t)f->rows[r] * E, E, m->out_norm, c->rms_eps,
                       (char *)f->h + (size_t)r * (size_t)E * esz, E, f->act);
        f->stats.other += lap(&t);
        if ((st = td_linear_forward(f->gemm, m->head, R, f->h, f->logits, false, err)))
            return st;
        f->stats.linear += lap(&t);
    }
    f->stats.steps++;
    f->stats.tokens += T;
    *logits = f->logits;
    *n_rows = R;
    return TANDEM_OK;
}

tandem_status td_forward_step(td_forward *f, td_kv_cache *kv, const td_fwd_seq *seqs, int32_t n_seqs, float **logits,
                              int32_t *rows, td_error *err) {
    *logits = NULL;
    *rows = 0;
    /* The GEMMs and row ops run on the calling thread's OpenMP team: size it
     * for this step, and give the caller its own setting back. */
    int saved = omp_get_max_threads();
    omp_set_num_threads(f->n_threads);
    /* one cache: the device's for mode device (or the host path), the host's for cpu-attn */
    const bool host_kv = f->dev && td_fwd_dev_place(f->dev) == TD_ATTN_ON_CPU;
    tandem_status st = step(f, host_kv ? NULL : kv, host_kv ? kv : NULL, seqs, n_seqs, logits, rows, err);
    omp_set_num_threads(saved);
    return st;
}

tandem_status td_forward_step_hybrid(td_forward *f, td_kv_cache *dkv, td_kv_cache *hkv, const td_fwd_seq *seqs,
                                     int32_t n_seqs, float **logits, int32_t *rows, td_error *err) {
    *logits = NULL;
    *rows = 0;
    if (!f->dev || td_fwd_dev_place(f->dev) != TD_ATTN_HYBRID || !dkv || !hkv)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                       "forward: a hybrid step needs a forward pass created for hybrid and both caches");
    int saved = omp_get_max_threads();
    omp_set_num_threads(f->n_threads);
    tandem_status st = step(f, dkv, hkv, seqs, n_seqs, logits, rows, err);
    omp_set_num_threads(saved);
    return st;
}

tandem_status td_forward_move_kv(td_forward *f, td_kv_cache *dkv, td_kv_cache *hkv, const td_kv_move *moves, int32_t n,
                                 size_t *bytes, td_error *err) {
    if (bytes)
        *bytes = 0;
    if (!f->dev || td_fwd_dev_place(f->dev) != TD_ATTN_HYBRID || !dkv || !hkv)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                       "forward: moving KV needs a forward pass created for hybrid and both caches");
    return td_fwd_dev_move_kv(f->dev, dkv, hkv, moves, n, bytes, err);
}

void td_forward_set_profile(td_forward *f, const td_profile *p) {
    if (f->dev)
        td_fwd_dev_set_profile(f->dev, p);
}

void td_forward_set_sub_batches(td_forward *f, int32_t n) {
    if (f->dev)
        td_fwd_dev_set_sub_batches(f->dev, n);
}

td_cost_shape td_cost_shape_of(const td_llama_config *c) {
    return (td_cost_shape){.n_layers = c->n_layers,
                           .n_embd = c->n_embd,
                           .n_heads = c->n_heads,
                           .n_kv_heads = c->n_kv_heads,
                           .head_dim = c->head_dim,
                           .n_ff = c->n_ff,
                           .n_vocab = c->n_vocab};
}

const td_cost_calib *td_forward_calibration(const td_forward *f) {
    static const td_cost_calib none = TD_COST_CALIB_NONE;
    return f->dev ? td_fwd_dev_calibration(f->dev) : &none;
}
