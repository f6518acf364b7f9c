/* Generation: the finishing rules on logits that force each token (EOS,
 * stop strings across tokens, max_tokens), then whole requests on
 * SmolLM2-135M: greedy equals the numpy oracle's tokens up to its first
 * end-of-generation token, chunked prefill and batching change nothing,
 * seeded sampling is reproducible and independent of the batch, and a
 * request that cannot fit the KV cache fails alone. */
#include <stdlib.h>
#include <string.h>

#include "cpu/kv_cache.h"
#include "engine/forward.h"
#include "engine/generate.h"
#include "engine/model.h"
#include "engine/scheduler.h"
#include "engine/tokenizer.h"
#include "tests/test_util.h"

static td_model *M;
static td_tokenizer *T;

static void release(void) {
    td_tokenizer_free(T);
    td_model_free(M);
}

static void setup(void) {
    if (M)
        return;
    td_error err;
    TD_ASSERT_OK(td_model_load(TD_TEST_MODEL, NULL, &M, &err), &err);
    TD_ASSERT_OK(td_tokenizer_load(M->gguf, &T, &err), &err);
}

static void params(td_gen_params *p, int32_t max_tokens) {
    memset(p, 0, sizeof *p);
    td_sampling_default(&p->sampling);
    p->sampling.temperature = 0;
    p->max_tokens = max_tokens;
}

/* Tokenizes text (no BOS, specials parsed). */
static int32_t tokenize(const char *text, int32_t *ids, int32_t cap) {
    size_t n = 0;
    td_error err;
    TD_ASSERT_OK(td_tokenize(T, text, strlen(text), false, true, ids, (size_t)cap, &n, &err), &err);
    return (int32_t)n;
}

/* Feeds forced tokens through td_gen_seq_next: logits with a single +10 at
 * the wanted id. Returns how many were consumed before it finished. */
static int32_t force(td_gen_seq *s, const int32_t *ids, int32_t n) {
    int32_t V = td_tokenizer_n_vocab(T);
    float *lg = malloc((size_t)V * sizeof *lg);
    int32_t i = 0;
    td_error err;
    for (; i < n && s->finish == TD_FINISH_NONE; i++) {
        for (int32_t v = 0; v < V; v++)
            lg[v] = 0;
        lg[ids[i]] = 10;
        int32_t t;
        TD_ASSERT_OK(td_gen_seq_next(s, lg, &t, &err), &err);
        CU_ASSERT_EQUAL(t, ids[i]);
    }
    free(lg);
    return i;
}

static void test_finishing_rules(void) {
    setup();
    td_error err;
    int32_t prompt[1] = {1}, ids[64];
    int32_t n = tokenize("Hello world, the answer is 42.", ids, 64);
    CU_ASSERT_FATAL(n > 4);

    /* max_tokens */
    td_gen_params p;
    params(&p, 3);
    td_gen_seq s;
    TD_ASSERT_OK(td_gen_seq_init(&s, T, prompt, 1, &p, &err), &err);
    CU_ASSERT_EQUAL(force(&s, ids, n), 3);
    CU_ASSERT_EQUAL(s.finish, TD_FINISH_LENGTH);
    char want[256];
    size_t wn = 0;
    TD_ASSERT_OK(td_detokenize(T, ids, 3, 0, want, sizeof want, &wn, &err), &err);
    CU_ASSERT_EQUAL(s.n_text, wn);
    CU_ASSERT(memcmp(s.text, want, wn) == 0);
    td_gen_seq_free(&s);

    /* a stop string spanning tokens: the text ends just before it */
    const char *stops[2] = {"zzz", "d, the ans"};
    params(&p, 50);
    p.stop = stops;
    p.n_stop = 2;
    TD_ASSERT_OK(td_gen_seq_init(&s, T, prompt, 1, &p, &err), &err);
    int32_t used = force(&s, ids, n);
    CU_ASSERT(used < n);
    CU_ASSERT_EQUAL(s.finish, TD_FINISH_STOP);
    CU_ASSERT_EQUAL(s.n_text, strlen("Hello worl"));
    CU_ASSERT(s.n_text == strlen("Hello worl") && memcmp(s.text, "Hello worl", s.n_text) == 0);
    td_gen_seq_free(&s);

    /* EOS (<|im_end|> for SmolLM2): finishes, its text is not emitted;
     * with ignore_eos it is just a token */
    int32_t eos_seq[3] = {ids[0], td_tokenizer_eos(T), ids[1]};
    CU_ASSERT_FATAL(td_tokenizer_is_eog(T, eos_seq[1]));
    params(&p, 50);
    TD_ASSERT_OK(td_gen_seq_init(&s, T, prompt, 1, &p, &err), &err);
    CU_ASSERT_EQUAL(force(&s, eos_seq, 3), 2);
    CU_ASSERT_EQUAL(s.finish, TD_FINISH_STOP);
    TD_ASSERT_OK(td_detokenize(T, ids, 1, 0, want, sizeof want, &wn, &err), &err);
    CU_ASSERT(s.n_text == wn && memcmp(s.text, want, wn) == 0);
    td_gen_seq_free(&s);
    p.ignore_eos = true;
    p.max_tokens = 3;
    TD_ASSERT_OK(td_gen_seq_init(&s, T, prompt, 1, &p, &err), &err);
    CU_ASSERT_EQUAL(force(&s, eos_seq, 3), 3);
    CU_ASSERT_EQUAL(s.finish, TD_FINISH_LENGTH);
    td_gen_seq_free(&s);

    /* bad parameters */
    params(&p, 0);
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_gen_seq_init(&s, T, prompt, 1, &p, &err), &err);
    params(&p, 4);
    p.sampling.top_p = 2;
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_gen_seq_init(&s, T, prompt, 1, &p, &err), &err);
    CU_ASSERT(strstr(err.msg, "top_p") != NULL);
    params(&p, 4);
    int32_t bad = td_tokenizer_n_vocab(T);
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_gen_seq_init(&s, T, &bad, 1, &p, &err), &err);
}

/* ---- whole requests on the model --------------------------------------- */

static const char *const PROMPTS[] = {
    ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
     "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"),
    "<|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):",
    "Once upon",
    "The three laws of thermodynamics are",
};
#define N_PROMPTS (int32_t)(sizeof PROMPTS / sizeof *PROMPTS)

/* A KV cache, a forward context and (when max_batch > 0) a scheduler over
 * them, for the model under test. */
typedef struct rig {
    td_kv_cache *kv;
    td_forward *fw;
    td_sched *sched;
} rig;

static rig rig_open(size_t kv_budget, int32_t max_seqs, int32_t step_tokens, int32_t max_batch) {
    td_kv_config kc = {.n_layers = M->cfg.n_layers,
                       .n_kv_heads = M->cfg.n_kv_heads,
                       .head_dim = M->cfg.head_dim,
                       .dtype = TD_DTYPE_BF16,
                       .budget_bytes = kv_budget,
                       .max_seqs = max_seqs,
                       .max_seq_tokens = 1024};
    rig r = {0};
    td_error err;
    TD_ASSERT_OK(td_kv_create(&kc, &r.kv, &err), &err);
    TD_ASSERT_OK(td_forward_create(M, step_tokens, 0, &r.fw, &err), &err);
    if (max_batch > 0) {
        td_sched_config sc = {.max_batch = max_batch, .step_tokens = step_tokens};
        TD_ASSERT_OK(td_sched_create(r.fw, r.kv, &sc, &r.sched, &err), &err);
    }
    return r;
}

static void rig_close(rig *r) {
    CU_ASSERT_EQUAL(td_kv_live_seqs(r->kv), 0); /* every finished sequence freed its blocks */
    td_sched_destroy(r->sched);
    td_forward_destroy(r->fw);
    td_kv_destroy(r->kv);
}

/* Bytes of one KV block of the model (16 tokens). */
static size_t block_bytes(void) {
    rig r = rig_open(1 << 20, 1, 16, 0);
    size_t b = td_kv_get_layout(r.kv)->block_bytes;
    rig_close(&r);
    return b;
}

/* Runs the prompts with params p (seed + i for prompt i) through
 * td_generate; fills seqs (caller frees). */
static void run(const td_gen_params *p, int32_t step_tokens, size_t kv_budget, int32_t n, td_gen_seq *seqs) {
    td_error err;
    rig r = rig_open(kv_budget, n, step_tokens, 0);
    for (int32_t i = 0; i < n; i++) {
        int32_t ids[256];
        int32_t k = tokenize(PROMPTS[i % N_PROMPTS], ids, 256);
        td_gen_params q = *p;
        q.sampling.seed = p->sampling.seed + (uint64_t)(i % N_PROMPTS);
        TD_ASSERT_OK(td_gen_seq_init(&seqs[i], T, ids, k, &q, &err), &err);
    }
    TD_ASSERT_OK(td_generate(r.fw, r.kv, seqs, n, step_tokens, &err), &err);
    rig_close(&r);
}

static void free_all(td_gen_seq *s, int32_t n) {
    for (int32_t i = 0; i < n; i++)
        td_gen_seq_free(&s[i]);
}

static bool same_tokens(const td_gen_seq *a, const td_gen_seq *b) {
    return a->n_ids == b->n_ids && memcmp(a->ids, b->ids, (size_t)a->n_ids * sizeof *a->ids) == 0 &&
           a->finish == b->finish && a->n_text == b->n_text && memcmp(a->text, b->text, a->n_text) == 0;
}

static void test_greedy_answer(void) {
    setup();
    td_gen_params p;
    params(&p, 48);
    td_gen_seq s[1];
    run(&p, 512, (size_t)64 << 20, 1, s);
    printf("\n    completion (%s, %d tokens): \"%.*s\" ", td_finish_name(s[0].finish), td_gen_seq_n_generated(&s[0]),
           (int)s[0].n_text, s[0].text);
    /* the oracle (tests/oracle, numpy) answers "The capital of France is
     * Paris." then <|im_end|> */
    CU_ASSERT_EQUAL(s[0].finish, TD_FINISH_STOP);
    CU_ASSERT(s[0].n_text == strlen("The capital of France is Paris.") &&
              memcmp(s[0].text, "The capital of France is Paris.", s[0].n_text) == 0);
    free_all(s, 1);
}

static void test_chunked_and_batched(void) {
    setup();
    td_gen_params p;
    params(&p, 24);
    td_gen_seq whole[N_PROMPTS], chunked[N_PROMPTS], one[1];
    run(&p, 512, (size_t)64 << 20, N_PROMPTS, whole);
    run(&p, 7, (size_t)64 << 20, N_PROMPTS, chunked); /* prompts prefilled 7 tokens at a time */
    for (int32_t i = 0; i < N_PROMPTS; i++)
        CU_ASSERT(same_tokens(&whole[i], &chunked[i]));
    /* the first prompt alone equals it within the batch */
    run(&p, 512, (size_t)64 << 20, 1, one);
    CU_ASSERT(same_tokens(&whole[0], &one[0]));
    free_all(whole, N_PROMPTS);
    free_all(chunked, N_PROMPTS);
    free_all(one, 1);
}

static void test_seeded_sampling(void) {
    setup();
    td_gen_params p;
    params(&p, 24);
    p.sampling.temperature = 0.9f;
    p.sampling.top_p = 0.95f;
    p.sampling.top_k = 50;
    p.sampling.seed = 1234;
    td_gen_seq a[N_PROMPTS], b[N_PROMPTS], c[1], d[N_PROMPTS];
    run(&p, 512, (size_t)64 << 20, N_PROMPTS, a);
    run(&p, 64, (size_t)64 << 20, N_PROMPTS, b); /* other step shapes, same seeds */
    run(&p, 512, (size_t)64 << 20, 1, c);        /* prompt 0 alone */
    p.sampling.seed = 99;
    run(&p, 512, (size_t)64 << 20, N_PROMPTS, d);
    int differ = 0;
    for (int32_t i = 0; i < N_PROMPTS; i++) {
        CU_ASSERT(same_tokens(&a[i], &b[i]));
        differ += !same_tokens(&a[i], &d[i]);
    }
    CU_ASSERT(same_tokens(&a[0], &c[0]));

    CU_ASSERT(differ >= N_PROMPTS - 1); /* other seeds, other samples */
    free_all(a, N_PROMPTS);
    free_all(b, N_PROMPTS);
    free_all(c, 1);
    free_all(d, N_PROMPTS);
}

static void test_kv_full_fails_alone(void) {
    setup();
    td_gen_params p;
    params(&p, 8);
    /* room for 2 blocks of 16 tokens: the short prompts fit (one or two at
     * a time), the chat prompt (37 tokens) never does */
    td_gen_seq s[N_PROMPTS];
    run(&p, 512, 2 * block_bytes(), N_PROMPTS, s);
    CU_ASSERT_EQUAL(s[0].finish, TD_FINISH_ERROR);
    CU_ASSERT_EQUAL(s[0].error.status, TANDEM_ERR_KV_FULL);
    CU_ASSERT_EQUAL(s[3].finish, TD_FINISH_LENGTH); /* "Once upon" fits */
    free_all(s, N_PROMPTS);
}

/* ---- the scheduler ------------------------------------------------------ */

typedef struct counts {
    int32_t tokens[8], finished[8];
    td_gen_seq *base;
} counts;

static void on_token(void *user, td_gen_seq *seq, int32_t token, const char *text, size_t len) {
    counts *c = user;
    (void)token, (void)text, (void)len;
    c->tokens[seq - c->base]++;
}
static void on_finish(void *user, td_gen_seq *seq) {
    counts *c = user;
    c->finished[seq - c->base]++;
}

/* Runs the prompts through a scheduler of the given limits; returns its
 * stats. */
static td_sched_stats sched_run(const td_gen_params *p, int32_t max_batch, int32_t step_tokens, size_t kv_budget,
                                int32_t n, td_gen_seq *seqs, counts *cn) {
    td_error err;
    rig r = rig_open(kv_budget, n, step_tokens, max_batch);
    td_sched *s = r.sched;
    memset(cn, 0, sizeof *cn);
    cn->base = seqs;
    for (int32_t i = 0; i < n; i++) {
        int32_t ids[256];
        int32_t k = tokenize(PROMPTS[i % N_PROMPTS], ids, 256);
        TD_ASSERT_OK(td_gen_seq_init(&seqs[i], T, ids, k, p, &err), &err);
        TD_ASSERT_OK(td_sched_submit(s, &seqs[i], &err), &err);
    }
    td_sched_callbacks cb = {.on_token = on_token, .on_finish = on_finish, .user = cn};
    TD_ASSERT_OK(td_sched_run(s, &cb, &err), &err);
    td_sched_stats st = *td_sched_get_stats(s);
    rig_close(&r);
    return st;
}

/* A pool too small for all the prompts at once: requests wait, and the ones
 * that grow past it are preempted and recomputed, with the same greedy
 * tokens as with room to spare; every request is reported once. */
static void test_preemption_same_tokens(void) {
    setup();
    td_gen_params p;
    params(&p, 40);
    p.ignore_eos = true; /* every request grows to the end */
    td_gen_seq big[N_PROMPTS], tight[N_PROMPTS];
    counts cb, ct;
    td_sched_stats sb = sched_run(&p, N_PROMPTS, 64, (size_t)64 << 20, N_PROMPTS, big, &cb);
    /* 6 blocks of 16 tokens: the chat prompt plus 40 tokens needs 5 */
    td_sched_stats stt = sched_run(&p, N_PROMPTS, 64, 6 * block_bytes(), N_PROMPTS, tight, &ct);
    printf("\n    ample pool: %lld steps, no preemption; 6 blocks: %lld steps, %lld preemptions, peak %d blocks ",
           (long long)sb.steps, (long long)stt.steps, (long long)stt.preemptions, stt.peak_kv_blocks);
    CU_ASSERT_EQUAL(sb.preemptions, 0);
    CU_ASSERT(stt.preemptions > 0);
    CU_ASSERT(stt.peak_kv_blocks <= 6);
    for (int32_t i = 0; i < N_PROMPTS; i++) {
        CU_ASSERT_EQUAL(tight[i].finish, TD_FINISH_LENGTH);
        CU_ASSERT(same_tokens(&big[i], &tight[i]));
        CU_ASSERT_EQUAL(cb.finished[i], 1);
        CU_ASSERT_EQUAL(ct.finished[i], 1);
        CU_ASSERT_EQUAL(ct.tokens[i], 40);
    }
    CU_ASSERT_EQUAL(stt.generated_tokens, 40 * N_PROMPTS);
    CU_ASSERT(stt.prompt_tokens > sb.prompt_tokens); /* recomputation */
    free_all(big, N_PROMPTS);
    free_all(tight, N_PROMPTS);
}

static void test_batch_limit(void) {
    setup();
    td_gen_params p;
    params(&p, 8);
    td_gen_seq s[N_PROMPTS];
    counts c;
    td_sched_stats st = sched_run(&p, 2, 512, (size_t)64 << 20, N_PROMPTS, s, &c);
    CU_ASSERT_EQUAL(st.max_running, 2);
    CU_ASSERT_EQUAL(st.finished, N_PROMPTS);
    free_all(s, N_PROMPTS);
}

/* A prompt at the model's context fails alone, before touching the model. */
static void test_overlong_prompt(void) {
    setup();
    td_error err;
    rig r = rig_open((size_t)64 << 20, 2, 64, 2);
    td_sched *s = r.sched;
    int32_t *ids = malloc((size_t)M->cfg.n_ctx * sizeof *ids), n_ok;
    for (int32_t i = 0; i < M->cfg.n_ctx; i++)
        ids[i] = 28;
    int32_t ok_ids[64];
    n_ok = tokenize(PROMPTS[3], ok_ids, 64);
    td_gen_params p;
    params(&p, 4);
    td_gen_seq q[2];
    TD_ASSERT_OK(td_gen_seq_init(&q[0], T, ids, M->cfg.n_ctx, &p, &err), &err);
    TD_ASSERT_OK(td_gen_seq_init(&q[1], T, ok_ids, n_ok, &p, &err), &err);
    TD_ASSERT_OK(td_sched_submit(s, &q[0], &err), &err);
    TD_ASSERT_OK(td_sched_submit(s, &q[1], &err), &err);
    TD_ASSERT_OK(td_sched_run(s, NULL, &err), &err);
    CU_ASSERT_EQUAL(q[0].finish, TD_FINISH_ERROR);
    CU_ASSERT_EQUAL(q[0].error.status, TANDEM_ERR_LIMIT);
    CU_ASSERT(strstr(q[0].error.msg, "context") != NULL);
    CU_ASSERT_EQUAL(q[1].finish, TD_FINISH_LENGTH);
    CU_ASSERT_EQUAL(td_sched_get_stats(s)->failed, 1);
    free(ids);
    free_all(q, 2);
    rig_close(&r);
}

/* Cancelling a running and a queued request: each finishes once, as
 * cancelled, and frees its blocks; the others run to the end. */
static void test_cancel(void) {
    setup();
    td_error err;
    rig r = rig_open((size_t)64 << 20, 4, 256, 2);
    td_sched *s = r.sched;
    td_gen_params p;
    params(&p, 16);
    p.ignore_eos = true;
    td_gen_seq q[4];
    counts c;
    memset(&c, 0, sizeof c);
    c.base = q;
    for (int i = 0; i < 4; i++) {
        int32_t ids[256];
        int32_t k = tokenize(PROMPTS[i], ids, 256);
        TD_ASSERT_OK(td_gen_seq_init(&q[i], T, ids, k, &p, &err), &err);
        TD_ASSERT_OK(td_sched_submit(s, &q[i], &err), &err);
    }
    td_sched_callbacks cb = {.on_token = on_token, .on_finish = on_finish, .user = &c};
    bool busy;
    for (int i = 0; i < 3; i++)
        TD_ASSERT_OK(td_sched_step(s, &cb, &busy, &err), &err);
    CU_ASSERT_EQUAL(td_sched_running(s), 2);
    TD_ASSERT_OK(td_sched_cancel(s, &q[0], &err), &err); /* running */
    TD_ASSERT_OK(td_sched_cancel(s, &q[3], &err), &err); /* queued */
    TD_ASSERT_STATUS(TANDEM_ERR_NOT_FOUND, td_sched_cancel(s, &q[3], &err), &err);
    TD_ASSERT_OK(td_sched_run(s, &cb, &err), &err);
    CU_ASSERT_EQUAL(q[0].finish, TD_FINISH_CANCELLED);
    CU_ASSERT_EQUAL(q[3].finish, TD_FINISH_CANCELLED);
    CU_ASSERT_EQUAL(c.tokens[3], 0);
    for (int i = 1; i < 3; i++) {
        CU_ASSERT_EQUAL(q[i].finish, TD_FINISH_LENGTH);
        CU_ASSERT_EQUAL(c.tokens[i], 16);
    }
    for (int i = 0; i < 4; i++)
        CU_ASSERT_EQUAL(c.finished[i], 1);
    free_all(q, 4);
    rig_close(&r);
}

void td_test_register(void) {
    atexit(release);
    static const td_test tests[] = {
        {"finishing: max_tokens, stop strings, EOS, bad parameters", test_finishing_rules},
        {"greedy chat answer equals the oracle's", test_greedy_answer},
        {"chunked prefill and batching change no token", test_chunked_and_batched},
        {"seeded sampling: reproducible, independent of the batch", test_seeded_sampling},
        {"a request the KV cache cannot hold fails alone", test_kv_full_fails_alone},
        {"scheduler: preemption under a tight pool keeps the greedy tokens", test_preemption_same_tokens},
        {"scheduler: max_batch is respected", test_batch_limit},
        {"scheduler: a prompt at the context length fails alone", test_overlong_prompt},
        {"scheduler: cancel a running and a queued request", test_cancel},
        {NULL, NULL},
    };
    td_add_suite("generate", tests);
}
