/* Generation: per-request decoding state and a batch run to completion
 * (engine/generate.h). */
#include "engine/generate.h"

#include <stdlib.h>
#include <string.h>

const char *td_finish_name(td_finish f) {
    switch (f) {
    case TD_FINISH_NONE: return "none";
    case TD_FINISH_STOP: return "stop";
    case TD_FINISH_LENGTH: return "length";
    case TD_FINISH_ERROR: return "error";
    }
    return "unknown";
}

tandem_status td_gen_seq_init(td_gen_seq *s, const td_tokenizer *t, const int32_t *prompt, int32_t n_prompt,
                              const td_gen_params *p, td_error *err) {
    memset(s, 0, sizeof *s);
    s->kv_seq = -1;
    if (n_prompt < 1)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "generate: empty prompt");
    if (p->max_tokens < 1)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "generate: max_tokens %d must be >= 1", p->max_tokens);
    if (p->n_stop < 0 || (p->n_stop > 0 && !p->stop))
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "generate: bad stop string list");
    const int32_t n_vocab = td_tokenizer_n_vocab(t);
    for (int32_t i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= n_vocab)
            return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "generate: prompt token %d (id %d) is outside [0, %d)", i,
                           prompt[i], n_vocab);
    s->tok = t;
    s->max_tokens = p->max_tokens;
    s->ignore_eos = p->ignore_eos;
    s->n_prompt = s->n_ids = n_prompt;
    s->cap = n_prompt + (p->max_tokens < 256 ? p->max_tokens : 256);
    s->ids = malloc((size_t)s->cap * sizeof *s->ids);
    s->scratch_cap = td_detok_max_bytes(t);
    s->scratch = malloc(s->scratch_cap);
    if (!s->ids || !s->scratch) {
        td_gen_seq_free(s);
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "generate: out of memory");
    }
    memcpy(s->ids, prompt, (size_t)n_prompt * sizeof *s->ids);

    size_t lens[TD_STOP_MAX_STRINGS];
    for (int32_t i = 0; i < p->n_stop && i < TD_STOP_MAX_STRINGS; i++)
        lens[i] = strlen(p->stop[i]);
    tandem_status st = td_sampler_init(&s->sampler, &p->sampling, n_vocab, err);
    if (st == TANDEM_OK)
        st = td_stop_init(&s->stop, p->stop, lens, p->n_stop, err);
    if (st != TANDEM_OK) {
        td_gen_seq_free(s);
        return st;
    }
    td_detok_init(&s->detok, t, 0);
    return TANDEM_OK;
}

void td_gen_seq_free(td_gen_seq *s) {
    td_sampler_free(&s->sampler);
    td_stop_free(&s->stop);
    free(s->ids);
    free(s->text);
    free(s->scratch);
    s->ids = NULL;
    s->text = s->scratch = NULL;
}

static tandem_status append_text(td_gen_seq *s, const char *p, size_t n, td_error *err) {
    if (s->n_text + n > s->text_cap) {
        size_t cap = s->text_cap ? s->text_cap : 256;
        while (cap < s->n_text + n)
            cap *= 2;
        char *q = realloc(s->text, cap);
        if (!q)
            return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "generate: out of memory for the completion text");
        s->text = q;
        s->text_cap = cap;
    }
    memcpy(s->text + s->n_text, p, n);
    s->n_text += n;
    return TANDEM_OK;
}

/* The end of the text: whatever the detokenizer and the stop matcher still
 * hold back. */
static tandem_status finish(td_gen_seq *s, td_finish why, td_error *err) {
    size_t n = 0;
    const char *out;
    tandem_status st = td_detok_flush(&s->detok, s->scratch, s->scratch_cap, &n, err);
    if (st == TANDEM_OK && !td_stop_stopped(&s->stop))
        st = td_stop_feed(&s->stop, s->scratch, n, &out, &n, err);
    else
        n = 0;
    if (st == TANDEM_OK && n)
        st = append_text(s, out, n, err);
    if (st == TANDEM_OK) {
        td_stop_flush(&s->stop, &out, &n);
        if (n)
            st = append_text(s, out, n, err);
    }
    s->finish = td_stop_stopped(&s->stop) ? TD_FINISH_STOP : why;
    return st;
}

tandem_status td_gen_seq_next(td_gen_seq *s, float *logits, int32_t *token, td_error *err) {
    *token = -1;
    if (s->finish != TD_FINISH_NONE)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "generate: the sequence has already finished");
    int32_t t = td_sampler_sample(&s->sampler, logits, s->ids, s->n_ids);
    if (t < 0)
        return td_fail(err, TANDEM_ERR_INTERNAL, "generate: no finite logit to sample from");
    if (s->n_ids == s->cap) {
        int32_t cap = s->cap * 2;
        int32_t *p = realloc(s->ids, (size_t)cap * sizeof *p);
        if (!p)
            return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "generate: out of memory");
        s->ids = p;
        s->cap = cap;
    }
    s->ids[s->n_ids++] = t;
    *token = t;
    if (!s->ignore_eos && td_tokenizer_is_eog(s->tok, t))
        return finish(s, TD_FINISH_STOP, err);

    size_t n = 0;
    const char *out;
    tandem_status st = td_detok_push(&s->detok, t, s->scratch, s->scratch_cap, &n, err);
    if (st == TANDEM_OK)
        st = td_stop_feed(&s->stop, s->scratch, n, &out, &n, err);
    if (st == TANDEM_OK && n)
        st = append_text(s, out, n, err);
    if (st != TANDEM_OK)
        return st;
    if (td_stop_stopped(&s->stop))
        return finish(s, TD_FINISH_STOP, err);
    if (td_gen_seq_n_generated(s) >= s->max_tokens)
        return finish(s, TD_FINISH_LENGTH, err);
    return TANDEM_OK;
}

/* ---- a batch run to completion ---------------------------------------- */

static void fail_seq(td_kv_cache *kv, td_gen_seq *s, const td_error *e) {
    s->error = *e;
    s->finish = TD_FINISH_ERROR;
    if (s->kv_seq >= 0)
        td_kv_seq_free(kv, s->kv_seq, NULL);
    s->kv_seq = -1;
}

static void retire(td_kv_cache *kv, td_gen_seq *s) {
    if (s->kv_seq >= 0)
        td_kv_seq_free(kv, s->kv_seq, NULL);
    s->kv_seq = -1;
}

tandem_status td_generate(td_forward *fw, td_kv_cache *kv, int32_t n_ctx, td_gen_seq *seqs, int32_t n,
                          int32_t step_tokens, td_error *err) {
    if (step_tokens < 1)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "generate: step_tokens %d must be >= 1", step_tokens);
    td_fwd_seq *batch = malloc((size_t)(n > 0 ? n : 1) * sizeof *batch);
    int32_t *which = malloc((size_t)(n > 0 ? n : 1) * sizeof *which);
    if (!batch || !which) {
        free(batch);
        free(which);
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "generate: out of memory");
    }
    for (int32_t i = 0; i < n; i++)
        if (seqs[i].finish == TD_FINISH_NONE && seqs[i].n_prompt >= n_ctx) {
            td_error e;
            td_fail(&e, TANDEM_ERR_LIMIT, "generate: the prompt has %d tokens, the model's context is %d",
                    seqs[i].n_prompt, n_ctx);
            fail_seq(kv, &seqs[i], &e);
        }

    tandem_status st = TANDEM_OK;
    for (;;) {
        /* One decode token for each sequence past its prompt, then prompt
         * (or recompute) chunks in order, within the token budget. */
        int32_t nb = 0, budget = step_tokens, blocked = -1;
        for (int pass = 0; pass < 2; pass++)
            for (int32_t i = 0; i < n && budget > 0; i++) {
                td_gen_seq *s = &seqs[i];
                int32_t feed = s->n_ids - s->n_cached;
                if (s->finish != TD_FINISH_NONE || feed < 1 || (pass == 0) != (feed == 1))
                    continue;
                td_error e;
                if (s->kv_seq < 0 && td_kv_seq_new(kv, &s->kv_seq, &e) != TANDEM_OK) {
                    s->kv_seq = -1;
                    blocked = i;
                    continue;
                }
                int32_t c = feed < budget ? feed : budget;
                if (td_kv_seq_grow(kv, s->kv_seq, c, &e) != TANDEM_OK) {
                    blocked = i;
                    continue;
                }
                batch[nb] = (td_fwd_seq){.kv_seq = s->kv_seq,
                                         .pos = s->n_cached,
                                         .n_tokens = c,
                                         .tokens = s->ids + s->n_cached,
                                         .logits = c == feed ? TD_LOGITS_LAST : TD_LOGITS_NONE};
                which[nb++] = i;
                budget -= c;
            }
        if (nb == 0) {
            if (blocked < 0)
                break; /* all finished */
            /* Nothing fits the cache: without preemption (the scheduler's
             * job), the sequence that could not start or grow fails. */
            td_error e;
            td_fail(&e, TANDEM_ERR_KV_FULL, "generate: the KV cache cannot hold this sequence (%d tokens)",
                    seqs[blocked].n_ids);
            fail_seq(kv, &seqs[blocked], &e);
            continue;
        }
        float *logits;
        int32_t rows;
        if ((st = td_forward_step(fw, kv, batch, nb, &logits, &rows, err)))
            break;
        const int32_t n_vocab = td_forward_model(fw)->cfg.n_vocab;
        int32_t r = 0;
        for (int32_t k = 0; k < nb; k++) {
            td_gen_seq *s = &seqs[which[k]];
            s->n_cached += batch[k].n_tokens;
            if (batch[k].logits != TD_LOGITS_LAST)
                continue;
            int32_t t;
            td_error e;
            if (td_gen_seq_next(s, logits + (int64_t)r++ * n_vocab, &t, &e) != TANDEM_OK)
                fail_seq(kv, s, &e);
            else if (s->finish == TD_FINISH_NONE && s->n_ids >= n_ctx && finish(s, TD_FINISH_LENGTH, &e) != TANDEM_OK)
                fail_seq(kv, s, &e);
            if (s->finish != TD_FINISH_NONE)
                retire(kv, s);
        }
    }
    free(batch);
    free(which);
    return st;
}
