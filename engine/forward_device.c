/* The forward pass on a device (engine/forward_device.h). */
#include "engine/forward_device.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/attention.h"
#include "offload/costmodel.h"

/* Rows per FFN block: the host path's (engine/forward.c), so that a GEMM
 * sees the same row counts on both. */
#define TD_FFN_ROWS 256
/* Embedding rows uploaded per copy at load. */
#define EMBED_CHUNK 4096

typedef struct dev_layer {
    float *attn_norm, *ffn_norm; /* device, [n_embd] */
    td_dweights *wqkv, *wo, *wgu, *wdown;
} dev_layer;

/* A sub-batch of a pipelined step, in the step's order (sequences whose KV
 * is on the device first, then host prompts the device attends, then those
 * the CPU attends): its tokens [t0, t1) and sequences [s0, s1), of which
 * the CPU attends from token h0, sequence hs0; rows from d0 go down (the
 * host prompts' K and V too). */
typedef struct sub_batch {
    int32_t t0, t1, h0, d0, s0, s1, hs0;
} sub_batch;

/* Scratch room for the prompts whose KV goes to the host but whose first
 * chunk attends on the device: sequences at once. */
#define SCRATCH_SEQS 64

struct td_fwd_dev {
    const td_model *m;
    td_device *dev;
    td_attn_place attn;
    td_stream *s; /* the compute stream (the pipeline's, with attention on the CPU) */
    int32_t max_tokens;
    /* weights */
    dev_layer *layers;
    float *out_norm, *tok_embd; /* tok_embd: [n_vocab][n_embd] f32 */
    double *inv_freq;
    td_dweights *head;
    /* workspace, [max_tokens] rows each */
    float *x, *xr, *qkv, *gu; /* xr: the rows logits are asked for */
    uint16_t *h;              /* bf16 GEMM inputs */
    float *logits;            /* [logits_cap][n_vocab] */
    int32_t logits_cap;
    /* a step's integer arrays: one upload from meta_host to meta */
    int32_t *meta, *meta_host;
    size_t meta_cap; /* ints */
    /* attention on the CPU */
    td_pipe *pipe;
    td_attn *cpu_attn;
    uint16_t *ao;       /* device: attention output, [max_tokens][q_dim] bf16 */
    float *qkv_host;    /* pinned staging, [max_tokens][q_dim + 2 kv_dim] */
    uint16_t *ao_host;  /* pinned staging, [max_tokens][q_dim] bf16 */
    td_attn_seq *ents;  /* [max_tokens] */
    td_attn_run *runs;  /* [max_tokens] */
    int32_t *seq_first; /* [max_tokens]: each sequence's first token */
    int n_threads;
    td_fwd_seq *order; /* [max_tokens]: the step's sequences, device-placed first */
    int32_t *inv;      /* [max_tokens]: each caller's sequence's place in order */
    int8_t *cls;       /* [max_tokens]: each caller's sequence's class (order_and_split) */
    /* the step in flight */
    td_kv_cache *hkv;
    const td_fwd_seq *seqs; /* = order */
    int32_t n_dev, t_dev;   /* sequences and tokens whose KV is on the device */
    td_dkv dkv;
    /* Host-placed prompts at position 0 attend on the device (the issue's
     * "prefill runs on the device"): their K/V go to a scratch device cache
     * for the step's attention and down to the host cache, which the CPU
     * writes; the CPU attends nothing for them. */
    td_kv_cache *skv;
    void *skv_pool;
    td_dkv sdkv;
    int32_t n_dp, t_dp;           /* this step's: sequences and tokens */
    int32_t dp_seq[SCRATCH_SEQS]; /* their scratch sequences */
    const struct step_meta *sm;
    int32_t pos_off; /* meta offset of the positions */
    sub_batch sb[TD_PIPE_MAX_SUB];
    /* planning the sub-batches (td_fwd_dev_set_profile, td_fwd_dev_set_sub_batches), and calibrating the
     * cost model with each pipelined step's busy times */
    const td_profile *profile;
    int32_t force_sub;
    td_cost_batch planned; /* the step in flight, as the cost model sees it */
    td_cost_calib calib;
    td_pipe_stats seen; /* the pipeline's stats after the last step */
};

static void free_weights(td_fwd_dev *f) {
    td_device *d = f->dev;
    if (f->layers)
        for (int32_t l = 0; l < f->m->cfg.n_layers; l++) {
            dev_layer *L = &f->layers[l];
            td_dev_free(d, L->attn_norm);
            td_dev_free(d, L->ffn_norm);
            td_dev_weights_destroy(d, L->wqkv);
            td_dev_weights_destroy(d, L->wo);
            td_dev_weights_destroy(d, L->wgu);
            td_dev_weights_destroy(d, L->wdown);
        }
    free(f->layers);
    td_dev_weights_destroy(d, f->head);
    td_dev_free(d, f->out_norm);
    td_dev_free(d, f->tok_embd);
    td_dev_free(d, f->inv_freq);
}

void td_fwd_dev_destroy(td_fwd_dev *f) {
    if (!f)
        return;
    td_device *d = f->dev;
    if (f->pipe)
        td_pipe_destroy(f->pipe); /* its streams wait for their work */
    else if (f->s)
        td_dev_stream_destroy(d, f->s);
    free_weights(f);
    td_attn_destroy(f->cpu_attn);
    td_kv_destroy(f->skv);
    td_dev_free(d, f->skv_pool);
    td_dev_free(d, f->ao);
    td_dev_host_free(d, f->qkv_host);
    td_dev_host_free(d, f->ao_host);
    free(f->ents);
    free(f->runs);
    free(f->seq_first);
    free(f->order);
    free(f->inv);
    free(f->cls);
    td_dev_free(d, f->x);
    td_dev_free(d, f->xr);
    td_dev_free(d, f->qkv);
    td_dev_free(d, f->gu);
    td_dev_free(d, f->h);
    td_dev_free(d, f->logits);
    td_dev_free(d, f->meta);
    td_dev_host_free(d, f->meta_host);
    free(f);
}

/* A device copy of host values, synchronous (load time). */
static tandem_status upload(td_fwd_dev *f, const void *src, size_t bytes, void **out, td_error *err) {
    tandem_status st = td_dev_alloc(f->dev, bytes, out, err);
    if (st == TANDEM_OK)
        st = td_dev_copy(f->dev, f->s, *out, src, bytes, TD_COPY_H2D, err);
    if (st == TANDEM_OK)
        st = td_dev_stream_sync(f->dev, f->s, err);
    return st;
}

static tandem_status upload_weights(td_fwd_dev *f, td_error *err) {
    const td_model *m = f->m;
    const td_llama_config *c = &m->cfg;
    const int64_t E = c->n_embd, V = c->n_vocab;
    int64_t most = 0;
    for (int w = TD_MATRIX_QKV; w <= TD_MATRIX_HEAD; w++) {
        int64_t n, k;
        td_model_matrix_shape(m, (td_matrix)w, &n, &k);
        if (n * k > most)
            most = n * k;
    }
    if (most < EMBED_CHUNK * E * 2) /* the buffer also stages embedding rows (f32) */
        most = EMBED_CHUNK * E * 2;
    /* A timed device computes nothing: its weights and embedding need no
     * values, and dequantizing an 8B model's would take most of a
     * benchmark's time. */
    const bool timed = f->dev->info.timed;
    uint16_t *buf = calloc((size_t)most, sizeof *buf);
    int32_t *ids = malloc(EMBED_CHUNK * sizeof *ids);
    f->layers = calloc((size_t)c->n_layers, sizeof *f->layers);
    tandem_status st = TANDEM_OK;
    if (!buf || !ids || !f->layers) {
        st = td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "forward: out of host memory to stage the weights");
        goto done;
    }
#define MATRIX(layer, which, out)                                                                                      \
    do {                                                                                                               \
        int64_t n_, k_;                                                                                                \
        td_model_matrix_shape(m, which, &n_, &k_);                                                                     \
        if ((!timed && (st = td_model_matrix(m, layer, which, buf, err))) ||                                           \
            (st = td_dev_weights_create(f->dev, n_, k_, buf, out, err)))                                               \
            goto done;                                                                                                 \
    } while (0)
    for (int32_t l = 0; l < c->n_layers; l++) {
        dev_layer *L = &f->layers[l];
        if ((st = upload(f, m->layers[l].attn_norm, (size_t)E * 4, (void **)&L->attn_norm, err)) ||
            (st = upload(f, m->layers[l].ffn_norm, (size_t)E * 4, (void **)&L->ffn_norm, err)))
            goto done;
        MATRIX(l, TD_MATRIX_QKV, &L->wqkv);
        MATRIX(l, TD_MATRIX_O, &L->wo);
        MATRIX(l, TD_MATRIX_GATE_UP, &L->wgu);
        MATRIX(l, TD_MATRIX_DOWN, &L->wdown);
    }
    MATRIX(0, TD_MATRIX_HEAD, &f->head);
#undef MATRIX
    if ((st = upload(f, m->out_norm, (size_t)E * 4, (void **)&f->out_norm, err)) ||
        (st = upload(f, m->inv_freq, (size_t)(c->rope_dim / 2) * sizeof(double), (void **)&f->inv_freq, err)) ||
        (st = td_dev_alloc(f->dev, (size_t)V * (size_t)E * 4, (void **)&f->tok_embd, err)))
        goto done;
    for (int64_t r0 = 0; r0 < V && !timed; r0 += EMBED_CHUNK) {
        const int64_t n = V - r0 < EMBED_CHUNK ? V - r0 : EMBED_CHUNK;
        for (int64_t i = 0; i < n; i++)
            ids[i] = (int32_t)(r0 + i);
        if ((st = td_model_embed(m, ids, n, (float *)buf, err)) ||
            (st = td_dev_copy(f->dev, f->s, f->tok_embd + r0 * E, buf, (size_t)(n * E) * 4, TD_COPY_H2D, err)) ||
            (st = td_dev_stream_sync(f->dev, f->s, err)))
            goto done;
    }
done:
    free(buf);
    free(ids);
    return st;
}

tandem_status td_fwd_dev_create(const td_model *m, td_device *dev, td_attn_place attn, int32_t max_tokens,
                                int n_threads, td_fwd_dev **out, td_error *err) {
    *out = NULL;
    if (m->weights != TD_WEIGHTS_BF16)
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "forward: a device runs bf16 weights, not f32");
    const td_llama_config *c = &m->cfg;
    td_fwd_dev *f = calloc(1, sizeof *f);
    if (!f)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "forward: out of memory");
    f->m = m;
    f->dev = dev;
    f->attn = attn;
    f->n_threads = n_threads;
    f->max_tokens = max_tokens;
    f->calib = TD_COST_CALIB_NONE;
    const size_t T = (size_t)max_tokens, E = (size_t)c->n_embd,
                 W = (size_t)(c->n_heads + 2 * c->n_kv_heads) * (size_t)c->head_dim, F = (size_t)c->n_ff;
    const size_t max_table = ((size_t)c->n_ctx + 15) / 16; /* blocks of at least 16 tokens */
    /* the step's metadata: 10 arrays of a token each, block tables of the
     * device's sequences, and of the scratch prompts (3 arrays, tables) */
    f->meta_cap = 10 * T + T * max_table + 3 * SCRATCH_SEQS + SCRATCH_SEQS * (T / 16 + 2);
    const size_t Q = (size_t)c->n_heads * (size_t)c->head_dim;
    td_error e;
    tandem_status st = TANDEM_OK;
    if (attn != TD_ATTN_ON_DEVICE) {
        f->ents = malloc(T * sizeof *f->ents);
        f->runs = malloc(T * sizeof *f->runs);
        f->seq_first = malloc(T * sizeof *f->seq_first);
        f->order = malloc(T * sizeof *f->order);
        f->inv = malloc(T * sizeof *f->inv);
        f->cls = malloc(T * sizeof *f->cls);
        if (!f->ents || !f->runs || !f->seq_first || !f->order || !f->inv || !f->cls)
            st = td_fail(&e, TANDEM_ERR_OUT_OF_MEMORY, "out of host memory");
        if (st || (st = td_pipe_create(dev, &f->pipe, &e)) ||
            (st = td_attn_create(n_threads, m->isa, &f->cpu_attn, &e)) ||
            (st = td_dev_alloc(dev, T * Q * 2, (void **)&f->ao, &e)) ||
            (st = td_dev_host_alloc(dev, T * W * 4, (void **)&f->qkv_host, &e)) ||
            (st = td_dev_host_alloc(dev, T * Q * 2, (void **)&f->ao_host, &e))) {
            td_fwd_dev_destroy(f);
            return td_fail(err, st, "forward on %s: %s", dev->info.name, e.msg);
        }
        f->s = td_pipe_stream(f->pipe);
        /* the scratch cache for host prompts attended on the device: a
         * step's tokens in whole blocks; without the room the CPU attends
         * them (the same values either way) */
        td_kv_config sc = {.n_layers = c->n_layers,
                           .n_kv_heads = c->n_kv_heads,
                           .head_dim = c->head_dim,
                           .dtype = TD_DTYPE_BF16,
                           .max_seqs = SCRATCH_SEQS,
                           .max_seq_tokens = (int32_t)T};
        sc.budget_bytes = (T / 16 + SCRATCH_SEQS) * td_kv_config_block_bytes(&sc);
        if (td_dev_alloc(dev, sc.budget_bytes, &f->skv_pool, &e) == TANDEM_OK) {
            sc.pool = f->skv_pool;
            if (td_kv_create(&sc, &f->skv, &e) == TANDEM_OK)
                f->sdkv = (td_dkv){
                    .pool = f->skv_pool, .n_blocks = td_kv_n_blocks(f->skv), .layout = *td_kv_get_layout(f->skv)};
        }
    } else if ((st = td_dev_stream_create(dev, &f->s, &e))) {
        td_fwd_dev_destroy(f);
        return td_fail(err, st, "forward on %s: %s", dev->info.name, e.msg);
    }
    if ((st = upload_weights(f, &e)) || (st = td_dev_alloc(dev, T * E * 4, (void **)&f->x, &e)) ||
        (st = td_dev_alloc(dev, T * E * 4, (void **)&f->xr, &e)) ||
        (st = td_dev_alloc(dev, T * W * 4, (void **)&f->qkv, &e)) ||
        (st = td_dev_alloc(dev, (T < TD_FFN_ROWS ? T : TD_FFN_ROWS) * 2 * F * 4, (void **)&f->gu, &e)) ||
        (st = td_dev_alloc(dev, T * td_fwd_h_width(c) * 2, (void **)&f->h, &e)) ||
        (st = td_dev_alloc(dev, f->meta_cap * 4, (void **)&f->meta, &e)) ||
        (st = td_dev_host_alloc(dev, f->meta_cap * 4, (void **)&f->meta_host, &e))) {
        td_fwd_dev_destroy(f);
        return td_fail(err, st, "forward on %s: %s", dev->info.name, e.msg);
    }
    *out = f;
    return TANDEM_OK;
}

tandem_status td_fwd_dev_host_alloc(td_fwd_dev *f, size_t bytes, void **p, td_error *err) {
    return td_dev_host_alloc(f->dev, bytes, p, err);
}

void td_fwd_dev_host_free(td_fwd_dev *f, void *p) { td_dev_host_free(f->dev, p); }

td_pipe *td_fwd_dev_pipe(td_fwd_dev *f) { return f->pipe; }
td_attn_place td_fwd_dev_place(const td_fwd_dev *f) { return f->attn; }

/* The step's integer arrays, laid out in meta (offsets in ints). */
typedef struct step_meta {
    int32_t ids, pos, slots, rows;
    int32_t dec_first, dec_n, dec_pos, dec_table, n_dec; /* decode tokens */
    int32_t pre_first, pre_n, pre_pos, pre_table, n_pre; /* prompt chunks */
    int32_t stride, max_ctx, max_q;
    /* host prompts attended on the device, in the scratch cache */
    int32_t sp_first, sp_n, sp_pos, sp_table, n_sp, sp_stride, sp_max_ctx;
    size_t used;
} step_meta;

/* Fills meta_host for the step: token ids and positions, the cache slots
 * of the first n_dev sequences (whose KV is on the device: dkv) and their
 * attention calls' sequences and block tables, and the logits rows in the
 * caller's order (inv[i]: where the caller's sequence i is in seqs; NULL:
 * the same order). */
static void lay_out(td_fwd_dev *f, const td_kv_cache *dkv, const td_fwd_seq *seqs, int32_t n_seqs, int32_t n_dev,
                    const int32_t *inv, int32_t T, step_meta *sm) {
    const int32_t bt = dkv ? td_kv_get_layout(dkv)->block_tokens : 16;
    int32_t *h = f->meta_host;
    memset(sm, 0, sizeof *sm);
    for (int32_t i = 0; i < n_dev; i++) {
        const int32_t blocks = (seqs[i].pos + seqs[i].n_tokens + bt - 1) / bt;
        if (blocks > sm->stride)
            sm->stride = blocks;
        if (seqs[i].pos + seqs[i].n_tokens > sm->max_ctx)
            sm->max_ctx = seqs[i].pos + seqs[i].n_tokens;
        if (seqs[i].n_tokens > sm->max_q)
            sm->max_q = seqs[i].n_tokens;
        if (seqs[i].n_tokens == 1 && !seqs[i].prompt)
            sm->n_dec++;
        else
            sm->n_pre++;
    }
    sm->pos = T;
    sm->slots = 2 * T;
    sm->rows = 3 * T;
    sm->dec_first = 4 * T, sm->dec_n = 5 * T, sm->dec_pos = 6 * T;
    sm->pre_first = 7 * T, sm->pre_n = 8 * T, sm->pre_pos = 9 * T;
    sm->dec_table = 10 * T;
    sm->pre_table = sm->dec_table + sm->n_dec * sm->stride;
    /* the scratch prompts: whole chunks from position 0 */
    sm->n_sp = f->n_dp;
    for (int32_t i = n_dev; i < n_dev + f->n_dp; i++) {
        const int32_t blocks = (seqs[i].n_tokens + 15) / 16;
        if (blocks > sm->sp_stride)
            sm->sp_stride = blocks;
        if (seqs[i].n_tokens > sm->sp_max_ctx)
            sm->sp_max_ctx = seqs[i].n_tokens;
    }
    sm->sp_first = sm->pre_table + sm->n_pre * sm->stride;
    sm->sp_n = sm->sp_first + sm->n_sp, sm->sp_pos = sm->sp_n + sm->n_sp;
    sm->sp_table = sm->sp_pos + sm->n_sp;
    sm->used = (size_t)sm->sp_table + (size_t)sm->n_sp * (size_t)sm->sp_stride;

    int32_t t = 0, nd = 0, np = 0;
    int32_t *first = f->seq_first ? f->seq_first : NULL;
    for (int32_t i = 0; i < n_seqs; i++) {
        const td_fwd_seq *s = &seqs[i];
        const bool on_dev = i < n_dev, scratch = !on_dev && i < n_dev + f->n_dp;
        const int32_t *blocks = on_dev    ? td_kv_seq_blocks(dkv, s->kv_seq)
                                : scratch ? td_kv_seq_blocks(f->skv, f->dp_seq[i - n_dev])
                                          : NULL;
        if (first)
            first[i] = t;
        if (scratch) {
            const int32_t j = i - n_dev, nb = (s->n_tokens + 15) / 16;
            int32_t *table = h + sm->sp_table + (size_t)j * sm->sp_stride;
            memcpy(table, blocks, (size_t)nb * sizeof *table);
            memset(table + nb, 0, (size_t)(sm->sp_stride - nb) * sizeof *table);
            h[sm->sp_first + j] = t;
            h[sm->sp_n + j] = s->n_tokens;
            h[sm->sp_pos + j] = 0;
        }
        if (on_dev) {
            const int32_t nb = (s->pos + s->n_tokens + bt - 1) / bt;
            const bool dec = s->n_tokens == 1 && !s->prompt;
            const int32_t j = dec ? nd++ : np++;
            int32_t *table = h + (dec ? sm->dec_table : sm->pre_table) + (size_t)j * sm->stride;
            memcpy(table, blocks, (size_t)nb * sizeof *table);
            memset(table + nb, 0, (size_t)(sm->stride - nb) * sizeof *table);
            h[(dec ? sm->dec_first : sm->pre_first) + j] = t;
            h[(dec ? sm->dec_n : sm->pre_n) + j] = s->n_tokens;
            h[(dec ? sm->dec_pos : sm->pre_pos) + j] = s->pos;
        }
        for (int32_t k = 0; k < s->n_tokens; k++, t++) {
            const int32_t p = s->pos + k;
            h[sm->ids + t] = s->tokens[k];
            h[sm->pos + t] = p;
            h[sm->slots + t] = on_dev ? blocks[p / bt] * bt + p % bt : scratch ? blocks[p / 16] * 16 + p % 16 : 0;
        }
    }
    /* logits rows, in the caller's order of sequences */
    int32_t r = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        const int32_t k = inv ? inv[i] : i;
        const td_fwd_seq *s = &seqs[k];
        int32_t t0 = 0;
        if (first)
            t0 = first[k];
        else
            for (int32_t j = 0; j < k; j++)
                t0 += seqs[j].n_tokens;
        for (int32_t j = 0; j < s->n_tokens; j++)
            if (s->logits == TD_LOGITS_ALL || (s->logits == TD_LOGITS_LAST && j == s->n_tokens - 1))
                h[sm->rows + r++] = t0 + j;
    }
}

/* The attention calls of the device-placed sequences of a step (decode
 * entries, then prompt chunks) for layer l, out: [rows][q_dim] bf16. */
static tandem_status device_attention(td_fwd_dev *f, td_stream *s, const td_dkv *kv, int32_t l, const step_meta *sm,
                                      uint16_t *out, td_error *err) {
    const td_llama_config *c = &f->m->cfg;
    const int64_t D = c->head_dim, Q = (int64_t)c->n_heads * D, W = Q + 2 * (int64_t)c->n_kv_heads * D;
    tandem_status st;
    td_dattn a = {.kv = *kv,
                  .layer = l,
                  .n_q_heads = c->n_heads,
                  .scale = (float)(1.0 / sqrt((double)D)),
                  .table_stride = sm->stride,
                  .max_ctx = sm->max_ctx,
                  .q = f->qkv,
                  .q_stride = W,
                  .out = out,
                  .out_stride = Q,
                  .out_dtype = TD_DTYPE_BF16};
    if (sm->n_dec) {
        a.n_seqs = sm->n_dec;
        a.q_first = f->meta + sm->dec_first, a.n_q = f->meta + sm->dec_n, a.pos = f->meta + sm->dec_pos;
        a.block_table = f->meta + sm->dec_table;
        a.max_q = 1;
        if ((st = td_dev_attn_decode(f->dev, s, &a, err)))
            return st;
    }
    if (sm->n_pre) {
        a.n_seqs = sm->n_pre;
        a.q_first = f->meta + sm->pre_first, a.n_q = f->meta + sm->pre_n, a.pos = f->meta + sm->pre_pos;
        a.block_table = f->meta + sm->pre_table;
        a.max_q = sm->max_q;
        if ((st = td_dev_attn_prefill(f->dev, s, &a, err)))
            return st;
    }
    return TANDEM_OK;
}

static tandem_status layer(td_fwd_dev *f, const td_dkv *kv, int32_t l, int32_t T, const step_meta *sm, td_error *err) {
    const td_model *m = f->m;
    const td_llama_config *c = &m->cfg;
    const dev_layer *L = &f->layers[l];
    td_device *d = f->dev;
    td_stream *s = f->s;
    const int64_t E = c->n_embd, D = c->head_dim, Q = (int64_t)c->n_heads * D, KV = (int64_t)c->n_kv_heads * D,
                  W = Q + 2 * KV;
    tandem_status st;
    if ((st = td_dev_rmsnorm(d, s, T, E, f->x, E, L->attn_norm, c->rms_eps, f->h, E, TD_DTYPE_BF16, err)) ||
        (st = td_dev_linear(d, s, L->wqkv, T, f->h, E, f->qkv, W, false, err)) ||
        /* K's heads follow Q's in a row: one call turns both */
        (st = td_dev_rope(d, s, T, f->qkv, W, c->n_heads + c->n_kv_heads, c->head_dim, c->rope_dim, f->meta + sm->pos,
                          f->inv_freq, err)) ||
        (st = td_dev_kv_append(d, s, kv, l, T, f->qkv + Q, W, f->qkv + Q + KV, W, f->meta + sm->slots, err)))
        return st;
    if ((st = device_attention(f, s, kv, l, sm, f->h, err)))
        return st;
    if ((st = td_dev_linear(d, s, L->wo, T, f->h, Q, f->x, E, true, err)))
        return st;
    for (int32_t r0 = 0; r0 < T; r0 += TD_FFN_ROWS) {
        const int32_t n = T - r0 < TD_FFN_ROWS ? T - r0 : TD_FFN_ROWS;
        float *x = f->x + (int64_t)r0 * E;
        if ((st = td_dev_rmsnorm(d, s, n, E, x, E, L->ffn_norm, c->rms_eps, f->h, E, TD_DTYPE_BF16, err)) ||
            (st = td_dev_linear(d, s, L->wgu, n, f->h, E, f->gu, 2 * c->n_ff, false, err)) ||
            (st = td_dev_swiglu(d, s, n, c->n_ff, f->gu, f->h, TD_DTYPE_BF16, err)) ||
            (st = td_dev_linear(d, s, L->wdown, n, f->h, c->n_ff, x, E, true, err)))
            return st;
    }
    return TANDEM_OK;
}

/* ---- attention on the CPU: the pipeline's stages ---------------------------- */

static tandem_status stage_pre(void *ctx, int32_t b, int32_t l, td_stream *s, td_error *err) {
    td_fwd_dev *f = ctx;
    const td_llama_config *c = &f->m->cfg;
    const dev_layer *L = &f->layers[l];
    const int64_t E = c->n_embd, W = (int64_t)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim;
    const int32_t t0 = f->sb[b].t0, n = f->sb[b].t1 - t0;
    tandem_status st;
    if ((st = td_dev_rmsnorm(f->dev, s, n, E, f->x + t0 * E, E, L->attn_norm, c->rms_eps, f->h, E, TD_DTYPE_BF16,
                             err)) ||
        (st = td_dev_linear(f->dev, s, L->wqkv, n, f->h, E, f->qkv + t0 * W, W, false, err)))
        return st;
    return td_dev_rope(f->dev, s, n, f->qkv + t0 * W, W, c->n_heads + c->n_kv_heads, c->head_dim, c->rope_dim,
                       f->meta + f->pos_off + t0, f->inv_freq, err);
}

/* The sequences whose KV is on the device (all in sub-batch 0) attend
 * there, straight into the attention output, while the CPU attends the
 * sub-batch's host rows. */
static tandem_status stage_dattn(void *ctx, int32_t b, int32_t l, td_stream *s, td_error *err) {
    td_fwd_dev *f = ctx;
    if (b > 0)
        return TANDEM_OK;
    const td_llama_config *c = &f->m->cfg;
    const int64_t D = c->head_dim, Q = (int64_t)c->n_heads * D, KV = (int64_t)c->n_kv_heads * D, W = Q + 2 * KV;
    const struct step_meta *sm = f->sm;
    tandem_status st;
    if (f->n_dev > 0 && ((st = td_dev_kv_append(f->dev, s, &f->dkv, l, f->t_dev, f->qkv + Q, W, f->qkv + Q + KV, W,
                                                f->meta + sm->slots, err)) ||
                         (st = device_attention(f, s, &f->dkv, l, sm, f->ao, err))))
        return st;
    if (f->n_dp == 0)
        return TANDEM_OK;
    /* the host prompts: K and V into the scratch cache (the CPU writes the
     * host cache's from the same rows), causal attention over them */
    const float *rows = f->qkv + (int64_t)f->t_dev * W;
    if ((st = td_dev_kv_append(f->dev, s, &f->sdkv, l, f->t_dp, rows + Q, W, rows + Q + KV, W,
                               f->meta + sm->slots + f->t_dev, err)))
        return st;
    td_dattn a = {.kv = f->sdkv,
                  .layer = l,
                  .n_q_heads = c->n_heads,
                  .scale = (float)(1.0 / sqrt((double)D)),
                  .n_seqs = sm->n_sp,
                  .q_first = f->meta + sm->sp_first,
                  .n_q = f->meta + sm->sp_n,
                  .pos = f->meta + sm->sp_pos,
                  .block_table = f->meta + sm->sp_table,
                  .table_stride = sm->sp_stride,
                  .max_ctx = sm->sp_max_ctx,
                  .max_q = sm->sp_max_ctx,
                  .q = f->qkv,
                  .q_stride = W,
                  .out = f->ao,
                  .out_stride = Q,
                  .out_dtype = TD_DTYPE_BF16};
    return td_dev_attn_prefill(f->dev, s, &a, err);
}

static tandem_status stage_down(void *ctx, int32_t b, int32_t l, td_stream *s, td_error *err) {
    td_fwd_dev *f = ctx;
    (void)l;
    const td_llama_config *c = &f->m->cfg;
    const int64_t W = (int64_t)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim;
    const int32_t t0 = f->sb[b].d0, n = f->sb[b].t1 - t0; /* the host-placed rows */
    if (n == 0)
        return TANDEM_OK;
    return td_dev_copy(f->dev, s, f->qkv_host + t0 * W, f->qkv + t0 * W, (size_t)(n * W) * 4, TD_COPY_D2H, err);
}

/* The host path's attention (engine/forward.c) over the sub-batch's
 * host-placed sequences, on the rows that came down. */
static tandem_status stage_attend(void *ctx, int32_t b, int32_t l, td_error *err) {
    td_fwd_dev *f = ctx;
    const sub_batch *sb = &f->sb[b];
    if (b == 0 && f->n_dp > 0) /* the host prompts the device attended: their K and V only */
        td_fwd_write_host_kv(f->hkv, &f->m->cfg, l, f->seqs + f->n_dev, f->n_dp, f->seq_first + f->n_dev, f->qkv_host);
    if (sb->s1 == sb->hs0)
        return TANDEM_OK;
    /* with a trace, each thread's share of the kernels gets a slice */
    const bool traced = td_pipe_tracing(f->pipe);
    td_attn_time_threads(f->cpu_attn, traced);
    if (traced)
        td_attn_clear_spans(f->cpu_attn);
    tandem_status st =
        td_fwd_attend_host(f->cpu_attn, f->hkv, &f->m->cfg, l, f->seqs + sb->hs0, sb->s1 - sb->hs0,
                           f->seq_first + sb->hs0, f->qkv_host, f->ao_host, TD_DTYPE_BF16, f->ents, f->runs, err);
    static const char *const kind_name[TD_ATTN_SPAN_KINDS] = {"decode", "prefill"};
    for (int k = 0; traced && k < TD_ATTN_SPAN_KINDS; k++) {
        const double *sp = td_attn_spans(f->cpu_attn, (td_attn_span_kind)k);
        for (int t = 0; t < td_attn_threads(f->cpu_attn); t++)
            if (sp[2 * t + 1] > 0)
                td_pipe_cpu_span(f->pipe, b, l, t, kind_name[k], sp[2 * t], sp[2 * t + 1]);
    }
    return st;
}

static tandem_status stage_up(void *ctx, int32_t b, int32_t l, td_stream *s, td_error *err) {
    td_fwd_dev *f = ctx;
    (void)l;
    const int64_t Q = (int64_t)f->m->cfg.n_heads * f->m->cfg.head_dim;
    const int32_t t0 = f->sb[b].h0, n = f->sb[b].t1 - t0;
    if (n == 0)
        return TANDEM_OK;
    return td_dev_copy(f->dev, s, f->ao + t0 * Q, f->ao_host + t0 * Q, (size_t)(n * Q) * 2, TD_COPY_H2D, err);
}

static tandem_status stage_post(void *ctx, int32_t b, int32_t l, td_stream *s, td_error *err) {
    td_fwd_dev *f = ctx;
    const td_llama_config *c = &f->m->cfg;
    const dev_layer *L = &f->layers[l];
    const int64_t E = c->n_embd, Q = (int64_t)c->n_heads * c->head_dim;
    const int32_t t0 = f->sb[b].t0, t1 = f->sb[b].t1;
    tandem_status st = td_dev_linear(f->dev, s, L->wo, t1 - t0, f->ao + t0 * Q, Q, f->x + t0 * E, E, true, err);
    /* the FFN in the host path's blocks of rows (rows are independent) */
    for (int32_t r0 = t0; st == TANDEM_OK && r0 < t1; r0 += TD_FFN_ROWS) {
        const int32_t n = t1 - r0 < TD_FFN_ROWS ? t1 - r0 : TD_FFN_ROWS;
        float *x = f->x + (int64_t)r0 * E;
        if ((st = td_dev_rmsnorm(f->dev, s, n, E, x, E, L->ffn_norm, c->rms_eps, f->h, E, TD_DTYPE_BF16, err)) ||
            (st = td_dev_linear(f->dev, s, L->wgu, n, f->h, E, f->gu, 2 * c->n_ff, false, err)) ||
            (st = td_dev_swiglu(f->dev, s, n, c->n_ff, f->gu, f->h, TD_DTYPE_BF16, err)))
            break;
        st = td_dev_linear(f->dev, s, L->wdown, n, f->h, c->n_ff, x, E, true, err);
    }
    return st;
}

static const td_pipe_stages cpu_attn_stages = {stage_pre, stage_down, stage_attend, stage_up, stage_post, NULL};
static const td_pipe_stages hybrid_stages = {stage_pre, stage_down, stage_attend, stage_up, stage_post, stage_dattn};

void td_fwd_dev_set_profile(td_fwd_dev *f, const td_profile *p) { f->profile = p; }
void td_fwd_dev_set_sub_batches(td_fwd_dev *f, int32_t n) { f->force_sub = n; }

/* The step (f->order, its n_host host sequences last, cut of them in
 * sub-batch 0) as the cost model sees it: a uniform decode batch of its
 * mean context. */
static td_cost_batch cost_batch(const td_fwd_dev *f, int32_t n_seqs, int32_t n_host, int32_t cut) {
    double ctx = 0;
    for (int32_t i = 0; i < n_seqs; i++)
        ctx += f->order[i].pos + f->order[i].n_tokens;
    return (td_cost_batch){.batch = n_seqs,
                           .ctx = (int32_t)(ctx / n_seqs + 0.5),
                           .n_host = n_host,
                           .threads = td_attn_threads(f->cpu_attn),
                           .host_in_first = cut,
                           .n_sub = cut < n_host ? 2 : 1,
                           .calib = &f->calib};
}

/* Whether the cost model predicts step b (two sub-batches) faster with
 * every host sequence in one sub-batch beside the device's (CPU attention
 * then hides only under the device's attention, but the device passes
 * over the weights once instead of twice). */
static bool one_sub_batch_is_faster(const td_fwd_dev *f, td_cost_batch b) {
    if (!f->profile || b.n_sub != 2)
        return false;
    const td_cost_shape shape = td_cost_shape_of(&f->m->cfg);
    const double two = td_cost_predict(f->profile, &shape, &b).step;
    b.n_sub = 1;
    b.host_in_first = b.n_host;
    return td_cost_predict(f->profile, &shape, &b).step < two;
}

/* After a pipelined step: its measured busy times against the model's
 * prediction (uncalibrated) move the calibration (online). */
static void calibrate(td_fwd_dev *f) {
    const td_pipe_stats *now = td_pipe_get_stats(f->pipe);
    const td_sim_result measured = {.step = now->step - f->seen.step,
                                    .device = now->device - f->seen.device,
                                    .d2h = now->d2h - f->seen.d2h,
                                    .h2d = now->h2d - f->seen.h2d,
                                    .cpu = now->cpu - f->seen.cpu};
    const bool first = f->seen.steps == 0; /* cold: pages, caches, thread wake-ups */
    f->seen = *now;
    if (!f->profile || f->planned.batch == 0 || first)
        return;
    const td_cost_shape shape = td_cost_shape_of(&f->m->cfg);
    /* 200 µs: below, a step's busy time is mostly timer noise */
    td_cost_calibrate(&f->calib, f->profile, &shape, &f->planned, &measured, 0.2, 200e-6);
}

const td_cost_calib *td_fwd_dev_calibration(const td_fwd_dev *f) { return &f->calib; }

/* Orders the step's sequences, those whose KV is on the device first
 * (all on the host without dkv, all on the device without hkv), and splits
 * them in two sub-batches: the device-placed ones and about half of the
 * host's CPU attention work (cached tokens read, and a fixed cost per
 * token) in sub-batch 0, the rest in sub-batch 1, at a sequence boundary;
 * one sub-batch when there is one host sequence or none. Returns the
 * number of sub-batches. */
static int32_t order_and_split(td_fwd_dev *f, const td_kv_cache *dkv, const td_kv_cache *hkv, const td_fwd_seq *seqs,
                               int32_t n_seqs) {
    /* host prompts at position 0 attend on the device when the scratch
     * cache takes them (and holds the host cache's dtype: the same values) */
    const bool scratch_ok = f->skv && hkv && td_kv_get_layout(hkv)->dtype == td_kv_get_layout(f->skv)->dtype;
    int32_t n_dp = 0, t_dp = 0;
    for (int32_t i = 0; i < n_seqs; i++) { /* 0: device-placed, 1: a host prompt the device attends, 2: the CPU's */
        const td_fwd_seq *q = &seqs[i];
        f->cls[i] = !dkv || (hkv && q->on_host) ? 2 : 0;
        int32_t id;
        if (f->cls[i] == 2 && scratch_ok && q->prompt && q->pos == 0 && n_dp < SCRATCH_SEQS &&
            td_kv_seq_new(f->skv, &id, NULL) == TANDEM_OK) {
            if (td_kv_seq_grow(f->skv, id, q->n_tokens, NULL) != TANDEM_OK) {
                td_kv_seq_free(f->skv, id, NULL);
                continue;
            }
            f->dp_seq[n_dp++] = id;
            t_dp += q->n_tokens;
            f->cls[i] = 1;
        }
    }
    int32_t k = 0;
    for (int8_t pass = 0; pass < 3; pass++) /* each class in the caller's order */
        for (int32_t i = 0; i < n_seqs; i++)
            if (f->cls[i] == pass) {
                f->inv[i] = k;
                f->order[k++] = seqs[i];
            }
    int32_t n_dev = 0, t = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        const bool host = !dkv || (hkv && f->order[i].on_host);
        n_dev += !host;
        if (!host)
            t += f->order[i].n_tokens;
    }
    f->n_dev = n_dev;
    f->t_dev = t;
    f->n_dp = n_dp;
    f->t_dp = t_dp;
    const int32_t n_front = n_dev + n_dp, t_front = t + t_dp; /* the device attends these */
    const td_fwd_seq *h = f->order + n_front;
    const int32_t n_host = n_seqs - n_front;
    double total = 0, part = 0;
    for (int32_t i = 0; i < n_host; i++)
        total += (double)h[i].n_tokens * (h[i].pos + h[i].n_tokens + 64.0);
    int32_t cut = n_host; /* host sequences [0, cut) go to sub-batch 0 */
    if (n_host >= 2) {
        /* with device work, sub-batch 0 may hold no host sequence */
        cut = n_front > 0 ? 0 : 1;
        if (cut)
            part = (double)h[0].n_tokens * (h[0].pos + h[0].n_tokens + 64.0);
        for (; cut < n_host - 1; cut++) {
            const double c = (double)h[cut].n_tokens * (h[cut].pos + h[cut].n_tokens + 64.0);
            if (part + c / 2 >= total / 2)
                break;
            part += c;
        }
    }
    f->planned = cost_batch(f, n_seqs, n_host, cut);
    if (n_host >= 1 && f->force_sub != 2 && (f->force_sub == 1 || one_sub_batch_is_faster(f, f->planned))) {
        cut = n_host;
        f->planned.host_in_first = cut;
        f->planned.n_sub = 1;
    }
    int32_t tokens = t_front, t_cut = t_front;
    for (int32_t i = 0; i < n_host; i++) {
        tokens += h[i].n_tokens;
        if (i < cut)
            t_cut += h[i].n_tokens;
    }
    f->sb[0] = (sub_batch){.t0 = 0, .t1 = t_cut, .h0 = t_front, .d0 = t, .s0 = 0, .s1 = n_front + cut, .hs0 = n_front};
    f->sb[1] = (sub_batch){
        .t0 = t_cut, .t1 = tokens, .h0 = t_cut, .d0 = t_cut, .s0 = n_front + cut, .s1 = n_seqs, .hs0 = n_front + cut};
    /* a step whose host sequences all attend on the device is still one sub-batch */
    return cut < n_host ? 2 : 1;
}

tandem_status td_fwd_dev_step(td_fwd_dev *f, const td_kv_cache *dkv, td_kv_cache *hkv, const td_fwd_seq *seqs,
                              int32_t n_seqs, int32_t T, int32_t R, float *logits, td_error *err) {
    const td_llama_config *c = &f->m->cfg;
    td_device *d = f->dev;
    td_stream *s = f->s;
    const int64_t E = c->n_embd, V = c->n_vocab;
    tandem_status st;
    if (R > f->logits_cap) {
        td_dev_free(d, f->logits);
        f->logits = NULL;
        f->logits_cap = 0;
        if ((st = td_dev_alloc(d, (size_t)R * (size_t)V * 4, (void **)&f->logits, err)))
            return st;
        f->logits_cap = R;
    }
    step_meta sm;
    int32_t n_sub = 0;
    if (f->attn == TD_ATTN_ON_DEVICE) {
        lay_out(f, dkv, seqs, n_seqs, n_seqs, NULL, T, &sm);
    } else {
        n_sub = order_and_split(f, dkv, hkv, seqs, n_seqs);
        lay_out(f, dkv, f->order, n_seqs, f->n_dev, f->inv, T, &sm);
    }
    if (sm.used > f->meta_cap) {
        st = td_fail(err, TANDEM_ERR_INTERNAL, "forward: %zu ints of step metadata (room for %zu)", sm.used,
                     f->meta_cap);
        goto sync;
    }
    if (dkv)
        f->dkv = (td_dkv){
            .pool = (void *)td_kv_pool(dkv), .n_blocks = td_kv_n_blocks(dkv), .layout = *td_kv_get_layout(dkv)};
    if ((st = td_dev_copy(d, s, f->meta, f->meta_host, sm.used * 4, TD_COPY_H2D, err)) ||
        (st = td_dev_embed(d, s, f->tok_embd, TD_DTYPE_F32, V, E, f->meta + sm.ids, T, f->x, err)))
        goto sync;
    if (f->attn != TD_ATTN_ON_DEVICE) {
        f->hkv = hkv; /* its rows are written by stage_attend only */
        f->seqs = f->order;
        f->pos_off = sm.pos;
        f->sm = &sm;
        /* the device attends in both modes when a host prompt takes the scratch cache */
        if ((st = td_pipe_run(f->pipe, n_sub, c->n_layers,
                              f->attn == TD_ATTN_HYBRID || f->n_dp > 0 ? &hybrid_stages : &cpu_attn_stages, f, err)))
            goto sync;
    } else {
        for (int32_t l = 0; l < c->n_layers; l++)
            if ((st = layer(f, &f->dkv, l, T, &sm, err)))
                goto sync;
    }
    if (R > 0 && ((st = td_dev_embed(d, s, f->x, TD_DTYPE_F32, T, E, f->meta + sm.rows, R, f->xr, err)) ||
                  (st = td_dev_rmsnorm(d, s, R, E, f->xr, E, f->out_norm, c->rms_eps, f->h, E, TD_DTYPE_BF16, err)) ||
                  (st = td_dev_linear(d, s, f->head, R, f->h, E, f->logits, V, false, err)) ||
                  (st = td_dev_copy(d, s, logits, f->logits, (size_t)R * (size_t)V * 4, TD_COPY_D2H, err))))
        goto sync;
sync:;
    /* Wait for the step even when enqueueing failed part-way: meta_host
     * and the workspace must be idle before the next step reuses them. */
    td_error e2;
    tandem_status st2 = f->pipe ? td_pipe_finish(f->pipe, &e2) : td_dev_stream_sync(d, s, &e2);
    if (st == TANDEM_OK && st2 != TANDEM_OK)
        st = td_fail(err, st2, "forward on %s: %s", d->info.name, e2.msg);
    if (st == TANDEM_OK && f->pipe)
        calibrate(f);
    for (int32_t i = 0; i < f->n_dp; i++) /* the scratch prompts' K/V are in the host cache now */
        td_kv_seq_free(f->skv, f->dp_seq[i], NULL);
    f->n_dp = f->t_dp = 0;
    return st;
}

/* Enqueues the copies of one move: runs of blocks consecutive in both
 * pools become one copy each. */
static tandem_status move_one(td_fwd_dev *f, td_kv_cache *dkv, td_kv_cache *hkv, const td_kv_move *mv, size_t *bytes,
                              td_error *err) {
    td_kv_cache *src = mv->to_device ? hkv : dkv, *dst = mv->to_device ? dkv : hkv;
    const int32_t len = td_kv_seq_len(src, mv->src_seq);
    if (len < 0 || td_kv_seq_len(dst, mv->dst_seq) != len)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                       "forward: moving KV from sequence %d (%d tokens) to sequence %d (%d tokens)", mv->src_seq, len,
                       mv->dst_seq, td_kv_seq_len(dst, mv->dst_seq));
    const td_kv_layout *l = td_kv_get_layout(dkv);
    const int32_t n = (len + l->block_tokens - 1) / l->block_tokens;
    const int32_t *sb = td_kv_seq_blocks(src, mv->src_seq), *db = td_kv_seq_blocks(dst, mv->dst_seq);
    /* the pools are the caches' own memory (the device's for dkv); a move
     * writes blocks the destination sequence holds and nothing reads yet */
    const uint8_t *sp = td_kv_pool(src);
    uint8_t *dp = (uint8_t *)td_kv_pool(dst);
    td_stream *s = td_pipe_copy_stream(f->pipe, mv->to_device);
    for (int32_t i = 0; i < n;) {
        int32_t k = 1;
        while (i + k < n && sb[i + k] == sb[i] + k && db[i + k] == db[i] + k)
            k++;
        const size_t sz = (size_t)k * l->block_bytes;
        tandem_status st =
            td_dev_copy(f->dev, s, dp + (size_t)db[i] * l->block_bytes, sp + (size_t)sb[i] * l->block_bytes, sz,
                        mv->to_device ? TD_COPY_H2D : TD_COPY_D2H, err);
        if (st)
            return st;
        *bytes += sz;
        i += k;
    }
    return TANDEM_OK;
}

tandem_status td_fwd_dev_move_kv(td_fwd_dev *f, td_kv_cache *dkv, td_kv_cache *hkv, const td_kv_move *moves, int32_t n,
                                 size_t *bytes, td_error *err) {
    size_t done = 0;
    tandem_status st = TANDEM_OK;
    if (f->attn != TD_ATTN_HYBRID)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "forward: KV moves between pools need mode hybrid");
    for (int32_t i = 0; i < n && st == TANDEM_OK; i++)
        st = move_one(f, dkv, hkv, &moves[i], &done, err);
    /* both directions drain even when one failed: nothing may still be
     * copying into blocks the caller frees or reuses */
    td_error e2;
    for (int h2d = 0; h2d < 2; h2d++) {
        tandem_status s2 = td_dev_stream_sync(f->dev, td_pipe_copy_stream(f->pipe, h2d), &e2);
        if (s2 && st == TANDEM_OK)
            st = td_fail(err, s2, "forward on %s: moving KV: %s", f->dev->info.name, e2.msg);
    }
    if (bytes)
        *bytes = st == TANDEM_OK ? done : 0;
    return st;
}
