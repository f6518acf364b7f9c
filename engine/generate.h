/* Generation: from prompts to completions on the host forward pass.
 *
 * Two layers:
 *
 *   td_gen_seq  one request's decoding state: its token history, sampler,
 *               streaming detokenizer and stop-string matcher, the text
 *               produced so far, and why it finished. td_gen_seq_next turns
 *               one row of logits into the next token and the text it adds.
 *               The scheduler (issue 4) drives requests through this.
 *
 *   td_generate a batch of requests run to completion: every step carries
 *               one decode token per running sequence plus prompt chunks up
 *               to the forward context's token budget (so prompts longer
 *               than the budget are prefilled in pieces, and decodes never
 *               wait for a whole prefill); a sequence that finishes frees
 *               its KV blocks at once.
 *
 * Finishing: EOS (any end-of-generation token of the vocabulary, unless
 * ignore_eos), a stop string (the text ends just before it), or max_tokens
 * generated tokens. The EOS token's text is not part of the completion. */
#ifndef TD_ENGINE_GENERATE_H
#define TD_ENGINE_GENERATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "cpu/kv_cache.h"
#include "engine/forward.h"
#include "engine/sampler.h"
#include "engine/stop.h"
#include "engine/tokenizer.h"

typedef struct td_gen_params {
    td_sampling sampling;
    int32_t max_tokens;      /* >= 1 */
    const char *const *stop; /* n_stop NUL-terminated strings, copied */
    int32_t n_stop;
    bool ignore_eos;
} td_gen_params;

typedef enum td_finish {
    TD_FINISH_NONE = 0, /* still running */
    TD_FINISH_STOP,     /* EOS or a stop string */
    TD_FINISH_LENGTH,   /* max_tokens reached */
    TD_FINISH_ERROR,    /* see the sequence's error */
    TD_FINISH_CANCELLED,
} td_finish;

const char *td_finish_name(td_finish f);

typedef struct td_gen_seq {
    const td_tokenizer *tok;
    int32_t max_tokens;
    bool ignore_eos;
    int32_t *ids; /* prompt, then generated */
    int32_t n_prompt, n_ids, cap;
    td_sampler sampler;
    td_detok detok;
    td_stop stop;
    char *text; /* the completion so far (not NUL-terminated; n_text bytes) */
    size_t n_text, text_cap;
    char *scratch; /* one token's detokenized bytes */
    size_t scratch_cap;
    td_finish finish;
    td_error error; /* when finish == TD_FINISH_ERROR */
    /* the scheduler's bookkeeping (engine/scheduler.h) */
    int32_t kv_seq;   /* -1 when none */
    bool kv_on_host;  /* with two pools (mode hybrid): kv_seq is in the host's */
    int32_t n_cached; /* tokens of ids in the KV cache */
} td_gen_seq;

/* Copies the prompt and the parameters; errors name the bad parameter. */
tandem_status td_gen_seq_init(td_gen_seq *s, const td_tokenizer *t, const int32_t *prompt, int32_t n_prompt,
                              const td_gen_params *p, td_error *err);
void td_gen_seq_free(td_gen_seq *s);

/* Samples the next token from logits (n_vocab values, overwritten), appends
 * it and its text. *token gets the id. Sets s->finish when this token ends
 * the request. Must not be called once finished. */
tandem_status td_gen_seq_next(td_gen_seq *s, float *logits, int32_t *token, td_error *err);

/* Ends the request now for the reason given (not TD_FINISH_NONE): the text
 * the detokenizer and the stop matcher still hold back is appended (a stop
 * string that completes in it makes the reason TD_FINISH_STOP). */
tandem_status td_gen_seq_finish(td_gen_seq *s, td_finish why, td_error *err);

/* Ends the request with an error (the text so far is kept). */
void td_gen_seq_fail(td_gen_seq *s, const td_error *e);

/* Generated tokens so far. */
static inline int32_t td_gen_seq_n_generated(const td_gen_seq *s) { return s->n_ids - s->n_prompt; }

/* Runs every unfinished sequence of seqs[0..n) to completion with fw over
 * kv: a continuous-batching scheduler (engine/scheduler.h) with max_batch n
 * and step_tokens tokens per step. A sequence that cannot run (context,
 * cache) finishes with TD_FINISH_ERROR and the rest go on; the call fails
 * only on errors that stop every sequence. */
tandem_status td_generate(td_forward *fw, td_kv_cache *kv, td_gen_seq *seqs, int32_t n, int32_t step_tokens,
                          td_error *err);

#endif /* TD_ENGINE_GENERATE_H */
