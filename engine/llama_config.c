#include "engine/llama_config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* "<arch>.<name>" */
static const char *akey(const td_llama_config *c, const char *name, char *buf, size_t n) {
    snprintf(buf, n, "%s.%s", c->arch, name);
    return buf;
}

static tandem_status req_i32(const td_gguf *g, const td_llama_config *c, const char *name, int32_t lo, int32_t hi,
                             int32_t *out, td_error *err) {
    char k[96];
    uint32_t v;
    tandem_status st = td_gguf_get_u32(g, akey(c, name, k, sizeof k), &v, err);
    if (st == TANDEM_ERR_NOT_FOUND)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: missing required metadata key '%s'", td_gguf_name(g), k);
    if (st)
        return st;
    if (v < (uint32_t)lo || v > (uint32_t)hi)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: '%s' = %u is out of range [%d, %d]", td_gguf_name(g), k, v, lo, hi);
    *out = (int32_t)v;
    return TANDEM_OK;
}

/* An optional key: def when absent. */
static tandem_status opt_i32(const td_gguf *g, const td_llama_config *c, const char *name, int32_t lo, int32_t hi,
                             int32_t def, int32_t *out, td_error *err) {
    char k[96];
    if (!td_gguf_find(g, akey(c, name, k, sizeof k))) {
        *out = def;
        return TANDEM_OK;
    }
    return req_i32(g, c, name, lo, hi, out, err);
}

static tandem_status opt_f32(const td_gguf *g, const td_llama_config *c, const char *name, float def, float *out,
                             td_error *err) {
    char k[96];
    akey(c, name, k, sizeof k);
    if (!td_gguf_find(g, k)) {
        *out = def;
        return TANDEM_OK;
    }
    tandem_status st = td_gguf_get_f32(g, k, out, err);
    if (!st && !(isfinite(*out) && *out > 0))
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: '%s' = %g must be finite and positive", td_gguf_name(g), k,
                       (double)*out);
    return st;
}

/* A tensor that must exist with exactly these dims (ne order: ne[0] first). */
static tandem_status shape(const td_gguf *g, const char *name, int64_t ne0, int64_t ne1, td_error *err) {
    const td_gguf_tensor *t = td_gguf_find_tensor(g, name);
    if (!t)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: missing tensor '%s'", td_gguf_name(g), name);
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: tensor '%s' is [%lld, %lld, %lld, %lld], expected [%lld, %lld]",
                       td_gguf_name(g), name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                       (long long)t->ne[3], (long long)ne0, (long long)ne1);
    return TANDEM_OK;
}

/* Tensor blk.<layer>.<name> has dims [ne0, ne1]. */
static tandem_status layer_shape(const td_gguf *g, int32_t layer, const char *name, int64_t ne0, int64_t ne1,
                                 td_error *err) {
    char n[96];
    snprintf(n, sizeof n, "blk.%d.%s", layer, name);
    return shape(g, n, ne0, ne1, err);
}

tandem_status td_llama_config_read(const td_gguf *g, td_llama_config *c, td_error *err) {
    memset(c, 0, sizeof *c);
    const char *file = td_gguf_name(g);
    td_gguf_str arch;
    tandem_status st = td_gguf_get_str(g, "general.architecture", &arch, err);
    if (st == TANDEM_ERR_NOT_FOUND)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: missing required metadata key 'general.architecture'", file);
    if (st)
        return st;
    if (!td_gguf_str_eq(arch, "llama"))
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "%s: architecture '%.*s' is not supported (only 'llama')", file,
                       (int)(arch.len > 40 ? 40 : arch.len), arch.ptr);
    snprintf(c->arch, sizeof c->arch, "llama");

    const int32_t BIG = 1 << 30;
    if ((st = req_i32(g, c, "block_count", 1, 4096, &c->n_layers, err)) ||
        (st = req_i32(g, c, "embedding_length", 1, 1 << 20, &c->n_embd, err)) ||
        (st = req_i32(g, c, "feed_forward_length", 1, 1 << 22, &c->n_ff, err)) ||
        (st = req_i32(g, c, "attention.head_count", 1, 4096, &c->n_heads, err)) ||
        (st = opt_i32(g, c, "attention.head_count_kv", 1, 4096, c->n_heads, &c->n_kv_heads, err)) ||
        (st = req_i32(g, c, "context_length", 1, BIG, &c->n_ctx, err)))
        return st;
    if (c->n_heads % c->n_kv_heads)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: %d attention heads are not a multiple of %d kv heads", file,
                       c->n_heads, c->n_kv_heads);
    int32_t dflt_head = c->n_embd % c->n_heads ? 0 : c->n_embd / c->n_heads;
    if ((st = opt_i32(g, c, "attention.key_length", 1, 1 << 16, dflt_head, &c->head_dim, err)))
        return st;
    if (c->head_dim == 0)
        return td_fail(err, TANDEM_ERR_FORMAT,
                       "%s: embedding_length %d is not a multiple of head_count %d and attention.key_length is absent",
                       file, c->n_embd, c->n_heads);
    int32_t vlen;
    if ((st = opt_i32(g, c, "attention.value_length", 1, 1 << 16, c->head_dim, &vlen, err)))
        return st;
    if (vlen != c->head_dim)
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "%s: value_length %d differs from key_length %d", file, vlen,
                       c->head_dim);
    if ((st = opt_i32(g, c, "rope.dimension_count", 2, c->head_dim, c->head_dim, &c->rope_dim, err)) ||
        (st = opt_f32(g, c, "rope.freq_base", 10000.0f, &c->rope_base, err)) ||
        (st = opt_f32(g, c, "attention.layer_norm_rms_epsilon", 1e-5f, &c->rms_eps, err)))
        return st;
    if (c->rope_dim % 2)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: rope.dimension_count %d is odd", file, c->rope_dim);

    /* RoPE scaling: linear (a key), or Llama-3.1-style per-dimension factors
     * (a rope_freqs.weight tensor of rope_dim / 2 floats) */
    c->rope_factor = 1.0f;
    char k[96];
    td_gguf_str type;
    if (td_gguf_find(g, akey(c, "rope.scaling.type", k, sizeof k))) {
        if ((st = td_gguf_get_str(g, k, &type, err)))
            return st;
        if (td_gguf_str_eq(type, "linear")) {
            c->rope_scaling = TD_ROPE_SCALING_LINEAR;
            if ((st = opt_f32(g, c, "rope.scaling.factor", 1.0f, &c->rope_factor, err)))
                return st;
        } else if (!td_gguf_str_eq(type, "none")) {
            return td_fail(err, TANDEM_ERR_UNSUPPORTED, "%s: RoPE scaling '%.*s' is not supported (none, linear)", file,
                           (int)(type.len > 40 ? 40 : type.len), type.ptr);
        }
    }
    if (td_gguf_find_tensor(g, "rope_freqs.weight")) {
        if ((st = shape(g, "rope_freqs.weight", c->rope_dim / 2, 1, err)))
            return st;
        c->rope_scaling = TD_ROPE_SCALING_FREQS;
    }

    /* vocabulary: the token list, else <arch>.vocab_size, else the embedding */
    const td_gguf_value *tokens = td_gguf_find(g, "tokenizer.ggml.tokens");
    const td_gguf_tensor *embd = td_gguf_find_tensor(g, "token_embd.weight");
    if (!embd)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: missing tensor 'token_embd.weight'", file);
    if (tokens && tokens->type == TD_GGUF_ARRAY)
        c->n_vocab = tokens->arr.n > (uint64_t)BIG ? BIG : (int32_t)tokens->arr.n;
    else if ((st = opt_i32(g, c, "vocab_size", 1, BIG, (int32_t)(embd->ne[1] > BIG ? BIG : embd->ne[1]), &c->n_vocab,
                           err)))
        return st;

    /* the tensors the forward pass will use have the shapes the config implies */
    const int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    if ((st = shape(g, "token_embd.weight", c->n_embd, c->n_vocab, err)) ||
        (st = shape(g, "output_norm.weight", c->n_embd, 1, err)))
        return st;
    c->tied_output = td_gguf_find_tensor(g, "output.weight") == NULL;
    if (!c->tied_output && (st = shape(g, "output.weight", c->n_embd, c->n_vocab, err)))
        return st;
    for (int32_t l = 0; l < c->n_layers; l++) {
        if ((st = layer_shape(g, l, "attn_norm.weight", c->n_embd, 1, err)) ||
            (st = layer_shape(g, l, "attn_q.weight", c->n_embd, q, err)) ||
            (st = layer_shape(g, l, "attn_k.weight", c->n_embd, kv, err)) ||
            (st = layer_shape(g, l, "attn_v.weight", c->n_embd, kv, err)) ||
            (st = layer_shape(g, l, "attn_output.weight", q, c->n_embd, err)) ||
            (st = layer_shape(g, l, "ffn_norm.weight", c->n_embd, 1, err)) ||
            (st = layer_shape(g, l, "ffn_gate.weight", c->n_embd, c->n_ff, err)) ||
            (st = layer_shape(g, l, "ffn_up.weight", c->n_embd, c->n_ff, err)) ||
            (st = layer_shape(g, l, "ffn_down.weight", c->n_ff, c->n_embd, err)))
            return st;
    }
    return TANDEM_OK;
}
