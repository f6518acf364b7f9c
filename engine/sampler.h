/* Token sampling: from one row of logits to one token id.
 *
 * The chain, in llama.cpp's default order:
 *
 *   repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw
 *
 * Truncation (top-k, top-p, min-p) is decided on the distribution at
 * temperature 1, and temperature then reshapes the probabilities inside the
 * kept set. So the set of tokens that can appear depends only on the model
 * and the truncation knobs, never on temperature, and a high temperature
 * cannot drag the long tail back in: the reason llama.cpp puts temperature
 * last, and what users of its samplers expect. (vLLM and HF apply
 * temperature before top-p / min-p: with temperature 1, the default, the two
 * orders agree.) Each truncation step sees the survivors of the previous one,
 * renormalized: top-p's mass is measured over the top-k set, as in llama.cpp.
 *
 * Definitions, with p_i = softmax(logits)_i over the tokens still kept:
 *   top-k  keeps the k highest logits (0: off).
 *   top-p  keeps the smallest prefix, by decreasing p, whose mass is >= top_p
 *          (1: off).
 *   min-p  keeps the tokens with p_i >= min_p * max_j p_j (0: off).
 *   temperature 0 is greedy: the argmax of the penalized logits, the lowest
 *          id among equal maxima; truncation cannot change it, so it is
 *          skipped.
 * Ties in the truncation order are broken by the lower id, so the kept set is
 * a function of the logits alone.
 *
 * Repetition penalty (CTRL, as llama.cpp's repeat_penalty): for every
 * distinct token among the last penalty_last_n ids of the history (prompt and
 * generated tokens), a positive logit is divided by the penalty and a
 * non-positive one multiplied by it. Greater than 1 discourages repeats.
 *
 * Logits that are -inf or NaN are never sampled (NaN counts as masked out).
 * Probabilities come from a polynomial exp (relative error < 3e-7) that
 * gives exactly 0 more than ~88 / temperature below the max.
 *
 * Randomness: each sampler owns a xoshiro256** generator seeded from its seed
 * by splitmix64, and a non-greedy draw takes exactly one number from it. The
 * tokens a request gets are a function of (seed, logits, history) only: not
 * of other requests, of the batch, or of the thread that runs it.
 *
 * Cost per call: greedy is one pass over the vocabulary; sampling without
 * top-k / top-p three (max, exp, draw); top-k a max pass and a filtering
 * pass; top-p alone buckets the logits by distance from the max and searches
 * only the bucket where the kept set ends. Nothing sorts the vocabulary (see
 * sampler.c). */
#ifndef TD_ENGINE_SAMPLER_H
#define TD_ENGINE_SAMPLER_H

#include <stdint.h>

#include "base/error.h"

typedef struct td_sampling {
    float temperature;        /* >= 0, finite; 0 = greedy */
    int32_t top_k;            /* >= 0; 0 = off (also off when >= the vocabulary) */
    float top_p;              /* (0, 1]; 1 = off */
    float min_p;              /* [0, 1]; 0 = off */
    float repetition_penalty; /* > 0, finite; 1 = off */
    int32_t penalty_last_n;   /* history ids the penalty looks at; 0 = none, -1 = all */
    uint64_t seed;
} td_sampling;

/* The defaults a vLLM or OpenAI-API user expects: plain sampling from the
 * model's distribution (temperature 1, no truncation, no penalty), seed 0.
 * penalty_last_n is llama.cpp's 64, used once a penalty is set. The seed is
 * taken as given: whoever makes requests gives each its own seed when
 * identical prompts should not give identical outputs. */
void td_sampling_default(td_sampling *s);

/* TANDEM_ERR_INVALID_ARGUMENT naming the field when a value is out of range
 * (NaN included). */
tandem_status td_sampling_check(const td_sampling *s, td_error *err);

typedef struct td_sampler_cand {
    float logit;
    int32_t id;
} td_sampler_cand;

typedef struct td_sampler {
    td_sampling p;
    int32_t n_vocab;
    uint64_t rng[4];       /* xoshiro256** state */
    td_sampler_cand *cand; /* n_vocab entries, when top-k or top-p is on */
    uint32_t *bucket;      /* bucket counts, when top-p is on without top-k */
    double *bucket_mass;   /* and their masses */
    double *block_sum;     /* mass of each block of 64 logits, when sampling without top-k / top-p */
    float *block_max;      /* max of each block of 64 logits, when top-k is on */
    uint64_t *seen;        /* n_vocab bits, when the penalty is on: distinct history ids */
} td_sampler;

/* Checks the parameters and allocates what they need: nothing for greedy,
 * n_vocab / 8 bytes for plain sampling and as much again for the penalty,
 * 8 * n_vocab bytes (+ 12 KiB for top-p alone) for top-k / top-p. */
tandem_status td_sampler_init(td_sampler *s, const td_sampling *p, int32_t n_vocab, td_error *err);

/* Frees what init allocated; safe on a zeroed or already freed sampler. */
void td_sampler_free(td_sampler *s);

/* Samples one token from logits (n_vocab floats, overwritten: on return they
 * hold intermediate values). history holds the request's token ids so far,
 * oldest first (prompt then generated); only its last penalty_last_n entries
 * are read, and ids outside [0, n_vocab) are ignored. It may be NULL when
 * n_history is 0. Returns the token id, or -1 when no logit is finite or
 * +inf (nothing can be sampled). If some logits are +inf, the lowest such id
 * is returned. */
int32_t td_sampler_sample(td_sampler *s, float *logits, const int32_t *history, int32_t n_history);

/* The chain without the draw: the ids of the tokens that could be sampled,
 * in no particular order, into ids (room for n_vocab); returns how many (0
 * when td_sampler_sample would return -1, 1 when greedy). Overwrites logits
 * like td_sampler_sample; takes no random number. For tests, and for
 * reporting what a request's settings keep. */
int32_t td_sampler_kept(td_sampler *s, float *logits, const int32_t *history, int32_t n_history, int32_t *ids);

/* The penalty step alone, in place (what td_sampler_sample does first). */
void td_sampler_apply_penalty(td_sampler *s, float *logits, const int32_t *history, int32_t n_history);

#endif /* TD_ENGINE_SAMPLER_H */
