/* Loading a Llama model for the host (engine/model.h). */
#include "engine/model.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "engine/dequant.h"

void td_model_options_default(td_model_options *o) {
    memset(o, 0, sizeof *o);
    o->weights = TD_WEIGHTS_BF16;
    o->isa = TD_ISA_COUNT;
}

/* Dequantizes tensor `name` (k inputs x n outputs, shape checked by
 * td_llama_config_read) into rows [row0, row0 + n) of dst, a plain [.][k]
 * matrix of bf16 or f32. Rows are split across the OpenMP team; the first is
 * done alone so that an unsupported type fails before the team starts. */
static tandem_status dequant_into(const td_model *m, const char *name, int64_t k, int64_t n, bool bf16, void *dst,
                                  int64_t row0, td_error *err) {
    const td_gguf_tensor *t = td_gguf_find_tensor(m->gguf, name);
    if (!t)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: missing tensor '%s'", td_gguf_name(m->gguf), name);
    if (t->ne[0] != k || t->ne[1] != n)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: tensor '%s' is [%lld, %lld], expected [%lld, %lld]",
                       td_gguf_name(m->gguf), name, (long long)t->ne[0], (long long)t->ne[1], (long long)k,
                       (long long)n);
    size_t rb;
    tandem_status st = td_ggml_row_bytes(t->type, k, &rb, err);
    if (st != TANDEM_OK)
        return td_fail(err, st, "%s: tensor '%s': %s", td_gguf_name(m->gguf), name, err ? err->msg : "bad row");
    const size_t esz = bf16 ? sizeof(uint16_t) : sizeof(float);
    char *base = (char *)dst + (size_t)row0 * (size_t)k * esz;
#define ROW(r)                                                                                                         \
    (bf16 ? td_dequant_bf16(t->type, t->data + (size_t)(r)*rb, (uint16_t *)(base + (size_t)(r) * (size_t)k * esz), k,  \
                            m->isa, NULL)                                                                              \
          : td_dequant_f32(t->type, t->data + (size_t)(r)*rb, (float *)(base + (size_t)(r) * (size_t)k * esz), k,      \
                           m->isa, NULL))
    td_error e1;
    st = bf16 ? td_dequant_bf16(t->type, t->data, (uint16_t *)base, k, m->isa, &e1)
              : td_dequant_f32(t->type, t->data, (float *)base, k, m->isa, &e1);
    if (st != TANDEM_OK)
        return td_fail(err, st, "%s: tensor '%s': %s", td_gguf_name(m->gguf), name, e1.msg);
#pragma omp parallel for schedule(static)
    for (int64_t r = 1; r < n; r++)
        (void)ROW(r);
#undef ROW
    return TANDEM_OK;
}

/* An fp32 vector tensor (norm weights, RoPE factors) of n values. */
static tandem_status vector_f32(const td_model *m, const char *name, int64_t n, float **out, td_error *err) {
    const td_gguf_tensor *t = td_gguf_find_tensor(m->gguf, name);
    if (!t)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: missing tensor '%s'", td_gguf_name(m->gguf), name);
    if (t->ne[0] != n || t->ne[1] != 1 || t->ne[2] != 1 || t->ne[3] != 1)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: tensor '%s' has %lld x %lld values, expected %lld",
                       td_gguf_name(m->gguf), name, (long long)t->ne[0], (long long)t->ne[1], (long long)n);
    float *v = malloc((size_t)n * sizeof *v);
    if (!v)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "model: out of memory");
    td_error e1;
    tandem_status st = td_dequant_f32(t->type, t->data, v, n, m->isa, &e1);
    if (st != TANDEM_OK) {
        free(v);
        return td_fail(err, st, "%s: tensor '%s': %s", td_gguf_name(m->gguf), name, e1.msg);
    }
    *out = v;
    return TANDEM_OK;
}

/* The tensors a linear layer stacks by rows (QKV and gate/up are fused),
 * their row counts and the input width k. */
typedef struct matrix_parts {
    int n;
    char names[3][64];
    int64_t rows[3], k;
} matrix_parts;

static void parts_of(const td_model *m, int32_t layer, td_matrix which, matrix_parts *p) {
    const td_llama_config *c = &m->cfg;
    const int64_t E = c->n_embd, Q = (int64_t)c->n_heads * c->head_dim, KV = (int64_t)c->n_kv_heads * c->head_dim,
                  F = c->n_ff;
    static const char *const suffix[][3] = {
        [TD_MATRIX_QKV] = {"attn_q", "attn_k", "attn_v"},
        [TD_MATRIX_O] = {"attn_output"},
        [TD_MATRIX_GATE_UP] = {"ffn_gate", "ffn_up"},
        [TD_MATRIX_DOWN] = {"ffn_down"},
    };
    memset(p, 0, sizeof *p);
    switch (which) {
    case TD_MATRIX_QKV: *p = (matrix_parts){.n = 3, .rows = {Q, KV, KV}, .k = E}; break;
    case TD_MATRIX_O: *p = (matrix_parts){.n = 1, .rows = {E}, .k = Q}; break;
    case TD_MATRIX_GATE_UP: *p = (matrix_parts){.n = 2, .rows = {F, F}, .k = E}; break;
    case TD_MATRIX_DOWN: *p = (matrix_parts){.n = 1, .rows = {E}, .k = F}; break;
    case TD_MATRIX_HEAD:
        *p = (matrix_parts){.n = 1, .rows = {c->n_vocab}, .k = E};
        snprintf(p->names[0], sizeof p->names[0], "%s", c->tied_output ? "token_embd.weight" : "output.weight");
        return;
    }
    for (int i = 0; i < p->n; i++)
        snprintf(p->names[i], sizeof p->names[i], "blk.%d.%s.weight", layer, suffix[which][i]);
}

void td_model_matrix_shape(const td_model *m, td_matrix which, int64_t *n, int64_t *k) {
    matrix_parts p;
    parts_of(m, 0, which, &p);
    *n = p.rows[0] + p.rows[1] + p.rows[2];
    *k = p.k;
}

static tandem_status matrix(const td_model *m, int32_t layer, td_matrix which, bool bf16, void *dst, int64_t *n,
                            int64_t *k, td_error *err) {
    matrix_parts p;
    parts_of(m, layer, which, &p);
    int64_t rows = 0;
    for (int i = 0; i < p.n; i++) {
        tandem_status st = dequant_into(m, p.names[i], p.k, p.rows[i], bf16, dst, rows, err);
        if (st != TANDEM_OK)
            return st;
        rows += p.rows[i];
    }
    *n = rows;
    *k = p.k;
    return TANDEM_OK;
}

tandem_status td_model_matrix(const td_model *m, int32_t layer, td_matrix which, uint16_t *dst, td_error *err) {
    if ((unsigned)which > TD_MATRIX_HEAD || layer < 0 || layer >= m->cfg.n_layers)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "model: no matrix %d of layer %d", (int)which, layer);
    int64_t n, k;
    return matrix(m, layer, which, true, dst, &n, &k, err);
}

/* One of the host's linear layers, dequantized through scratch. */
static tandem_status linear(td_model *m, td_gemm *g, void *scratch, int32_t layer, td_matrix which, td_linear **out,
                            td_error *err) {
    const bool bf16 = m->weights == TD_WEIGHTS_BF16;
    int64_t n, k;
    tandem_status st = matrix(m, layer, which, bf16, scratch, &n, &k, err);
    if (st == TANDEM_OK)
        st = td_linear_create(g, n, k, bf16 ? TD_DTYPE_BF16 : TD_DTYPE_F32, scratch, out, err);
    if (st == TANDEM_OK)
        m->weight_bytes += td_linear_bytes(*out);
    return st;
}

static tandem_status rope_frequencies(td_model *m, td_error *err) {
    const td_llama_config *c = &m->cfg;
    int32_t half = c->rope_dim / 2;
    m->inv_freq = malloc((size_t)half * sizeof *m->inv_freq);
    if (!m->inv_freq)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "model: out of memory");
    float *factors = NULL;
    if (c->rope_scaling == TD_ROPE_SCALING_FREQS) {
        tandem_status st = vector_f32(m, "rope_freqs.weight", half, &factors, err);
        if (st != TANDEM_OK)
            return st;
    }
    for (int32_t i = 0; i < half; i++) {
        double f = pow((double)c->rope_base, -2.0 * i / (double)c->rope_dim);
        if (c->rope_scaling == TD_ROPE_SCALING_LINEAR)
            f /= (double)c->rope_factor;
        else if (factors)
            f /= (double)factors[i];
        m->inv_freq[i] = f;
    }
    free(factors);
    return TANDEM_OK;
}

static tandem_status load_weights(td_model *m, td_error *err) {
    const td_llama_config *c = &m->cfg;
    const int64_t E = c->n_embd, Q = (int64_t)c->n_heads * c->head_dim, KV = (int64_t)c->n_kv_heads * c->head_dim,
                  F = c->n_ff, V = c->n_vocab;
    tandem_status st;

    m->tok_embd = td_gguf_find_tensor(m->gguf, "token_embd.weight");
    if ((st = td_ggml_row_bytes(m->tok_embd->type, E, &m->tok_embd_row_bytes, err)))
        return td_fail(err, st, "%s: tensor 'token_embd.weight': %s", td_gguf_name(m->gguf), err ? err->msg : "");
    {
        /* Lookups dequantize rows later and cannot fail then: try one now. */
        float *row = malloc((size_t)E * sizeof *row);
        td_error e1;
        if (!row)
            return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "model: out of memory");
        st = td_dequant_f32(m->tok_embd->type, m->tok_embd->data, row, E, m->isa, &e1);
        free(row);
        if (st != TANDEM_OK)
            return td_fail(err, st, "%s: tensor 'token_embd.weight': %s", td_gguf_name(m->gguf), e1.msg);
    }

    /* The largest matrix a layer or the head stacks, in the widest dtype. */
    int64_t most = V * E;
    if ((Q + 2 * KV) * E > most)
        most = (Q + 2 * KV) * E;
    if (2 * F * E > most)
        most = 2 * F * E;
    void *scratch = m->linears_on_host ? malloc((size_t)most * sizeof(float)) : NULL;
    td_gemm *g = NULL;
    if (!scratch && m->linears_on_host)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "model: out of memory for a %lld-value load buffer",
                       (long long)most);
    if ((st = td_gemm_create(&g, err)))
        goto done;

    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) {
        st = td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "model: out of memory");
        goto done;
    }
    for (int32_t l = 0; l < c->n_layers; l++) {
        td_layer_weights *L = &m->layers[l];
        char an[64], fn[64];
        snprintf(an, sizeof an, "blk.%d.attn_norm.weight", l);
        snprintf(fn, sizeof fn, "blk.%d.ffn_norm.weight", l);
        if ((st = vector_f32(m, an, E, &L->attn_norm, err)) || (st = vector_f32(m, fn, E, &L->ffn_norm, err)))
            goto done;
        if (m->linears_on_host && ((st = linear(m, g, scratch, l, TD_MATRIX_QKV, &L->wqkv, err)) ||
                                   (st = linear(m, g, scratch, l, TD_MATRIX_O, &L->wo, err)) ||
                                   (st = linear(m, g, scratch, l, TD_MATRIX_GATE_UP, &L->wgu, err)) ||
                                   (st = linear(m, g, scratch, l, TD_MATRIX_DOWN, &L->wdown, err))))
            goto done;
    }
    if ((st = vector_f32(m, "output_norm.weight", E, &m->out_norm, err)) ||
        (m->linears_on_host && (st = linear(m, g, scratch, 0, TD_MATRIX_HEAD, &m->head, err))) ||
        (st = rope_frequencies(m, err)))
        goto done;
done:
    td_gemm_destroy(g);
    free(scratch);
    return st;
}

tandem_status td_model_load(const char *path, const td_model_options *opt, td_model **out, td_error *err) {
    *out = NULL;
    td_model_options defaults;
    if (!opt) {
        td_model_options_default(&defaults);
        opt = &defaults;
    }
    if (opt->weights != TD_WEIGHTS_BF16 && opt->weights != TD_WEIGHTS_F32)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "model: unknown weights type %d", (int)opt->weights);
    double t0 = td_seconds();
    td_model *m = calloc(1, sizeof *m);
    if (!m)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "model: out of memory");
    m->weights = opt->weights;
    m->linears_on_host = !opt->skip_linears;
    tandem_status st = TANDEM_OK;
    if (opt->isa == TD_ISA_COUNT)
        st = td_isa_select(&m->isa, err);
    else if (!td_isa_supported(opt->isa))
        st = td_fail(err, TANDEM_ERR_UNSUPPORTED, "model: this CPU cannot run the %s kernels", td_isa_name(opt->isa));
    else
        m->isa = opt->isa;
    if (st == TANDEM_OK)
        st = td_gguf_open(path, &m->gguf, err);
    if (st == TANDEM_OK)
        st = td_llama_config_read(m->gguf, &m->cfg, err);
    if (st == TANDEM_OK) {
        int saved = omp_get_max_threads();
        if (opt->n_threads > 0)
            omp_set_num_threads(opt->n_threads);
        st = load_weights(m, err);
        omp_set_num_threads(saved);
    }
    if (st != TANDEM_OK) {
        td_model_free(m);
        return st;
    }
    m->load_seconds = td_seconds() - t0;
    *out = m;
    return TANDEM_OK;
}

void td_model_free(td_model *m) {
    if (!m)
        return;
    if (m->layers) {
        for (int32_t l = 0; l < m->cfg.n_layers; l++) {
            td_layer_weights *L = &m->layers[l];
            free(L->attn_norm);
            free(L->ffn_norm);
            td_linear_destroy(L->wqkv);
            td_linear_destroy(L->wo);
            td_linear_destroy(L->wgu);
            td_linear_destroy(L->wdown);
        }
        free(m->layers);
    }
    free(m->out_norm);
    td_linear_destroy(m->head);
    free(m->inv_freq);
    td_gguf_close(m->gguf);
    free(m);
}

tandem_status td_model_embed(const td_model *m, const int32_t *tokens, int64_t n, float *out, td_error *err) {
    const int64_t E = m->cfg.n_embd;
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.n_vocab)
            return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "model: token id %d is outside the vocabulary [0, %d)",
                           tokens[i], m->cfg.n_vocab);
            /* The type was checked at load (load_weights): rows cannot fail. */
#pragma omp parallel for schedule(static) if (n >= 64)
    for (int64_t i = 0; i < n; i++)
        (void)td_dequant_f32(m->tok_embd->type, m->tok_embd->data + (size_t)tokens[i] * m->tok_embd_row_bytes,
                             out + i * E, E, m->isa, NULL);
    return TANDEM_OK;
}
