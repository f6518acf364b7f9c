/* Generation: per-request decoding state and a batch run to completion
 * (engine/generate.h). */
#include "engine/generate.h"

#include <stdlib.h>
#include <string.h>

#include "engine/scheduler.h"

const char *td_finish_name(td_finish f) {
    switch (f) {
    case TD_FINISH_NONE: return "none";
    case TD_FINISH_STOP: return "stop";
    case TD_FINISH_LENGTH: return "length";
    case TD_FINISH_ERROR: return "error";
    case TD_FINISH_CANCELLED: return "cancelled";
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
    if (n == 0) /* a token that prints nothing (yet): text may still be NULL */
        return TANDEM_OK;
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

tandem_status td_gen_seq_finish(td_gen_seq *s, td_finish why, td_error *err) {
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
        return td_gen_seq_finish(s, TD_FINISH_STOP, err);

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
        return td_gen_seq_finish(s, TD_FINISH_STOP, err);
    if (td_gen_seq_n_generated(s) >= s->max_tokens)
        return td_gen_seq_finish(s, TD_FINISH_LENGTH, err);
    return TANDEM_OK;
}

void td_gen_seq_fail(td_gen_seq *s, const td_error *e) {
    s->error = *e;
    s->finish = TD_FINISH_ERROR;
}

/* ---- a batch run to completion ---------------------------------------- */

tandem_status td_generate(td_forward *fw, td_kv_cache *kv, td_gen_seq *seqs, int32_t n, int32_t step_tokens,
                          td_error *err) {
    td_sched_config c = {.max_batch = n > 0 ? n : 1, .step_tokens = step_tokens};
    td_sched *s = NULL;
    tandem_status st = td_sched_create(fw, kv, &c, &s, err);
    for (int32_t i = 0; st == TANDEM_OK && i < n; i++)
        if (seqs[i].finish == TD_FINISH_NONE)
            st = td_sched_submit(s, &seqs[i], err);
    if (st == TANDEM_OK)
        st = td_sched_run(s, NULL, err);
    td_sched_destroy(s);
    return st;
}
