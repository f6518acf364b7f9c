/* The public API, used as a caller would: only include/tandem.h, linked
 * against the shared libtandem (so the exported symbols are what is
 * tested). The model is SmolLM2-135M-Instruct. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "tandem.h"
#include "tests/test_util.h"

static const char *const CHAT =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
/* what the numpy oracle (tests/oracle/llama_oracle.py) answers, greedily */
static const char *const ANSWER = "The capital of France is Paris.";

static tandem_engine *open_default(void) {
    tandem_config c;
    tandem_config_init(&c);
    c.model_path = TD_TEST_MODEL;
    c.kv_budget_bytes = (size_t)128 << 20;
    c.max_batch = 16;
    c.step_tokens = 256;
    tandem_engine *e = NULL;
    tandem_status st = tandem_engine_open(&c, &e);
    if (st != TANDEM_OK)
        fprintf(stderr, "\n  open: %s: %s\n", tandem_status_name(st), tandem_engine_errmsg(e));
    CU_ASSERT_EQUAL_FATAL(st, TANDEM_OK);
    return e;
}

static void greedy(tandem_sampling *s, int32_t max_tokens) {
    tandem_sampling_init(s);
    s->temperature = 0;
    s->max_tokens = max_tokens;
}

static void test_open_errors(void) {
    tandem_config c;
    tandem_config_init(&c);
    c.model_path = "/nonexistent/dir/model.gguf";
    tandem_engine *e = NULL;
    CU_ASSERT_EQUAL(tandem_engine_open(&c, &e), TANDEM_ERR_IO);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT(strstr(tandem_engine_errmsg(e), "/nonexistent/dir/model.gguf") != NULL);
    /* a handle that did not open refuses work, and says why */
    tandem_request *r = NULL;
    CU_ASSERT_EQUAL(tandem_submit_text(e, "x", 1, NULL, NULL, &r), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT(strstr(tandem_engine_errmsg(e), "did not open") != NULL);
    tandem_engine_close(e);

    tandem_config_init(&c);
    c.model_path = TD_TEST_MODEL;
    c.kv_budget_bytes = (size_t)32 << 20;
    c.device = TANDEM_DEVICE_CUDA;
    tandem_status st = tandem_engine_open(&c, &e);
    if (st != TANDEM_OK) { /* no GPU (the build machines): a clear refusal */
        CU_ASSERT_EQUAL(st, TANDEM_ERR_UNSUPPORTED);
        CU_ASSERT(strstr(tandem_engine_errmsg(e), "cuda") != NULL);
    }
    tandem_engine_close(e);

    tandem_config_init(&c);
    c.model_path = TD_TEST_MODEL;
    c.device = TANDEM_DEVICE_CPU;
    c.mode = TANDEM_MODE_DEVICE;
    CU_ASSERT_EQUAL(tandem_engine_open(&c, &e), TANDEM_ERR_UNSUPPORTED);
    CU_ASSERT(strstr(tandem_engine_errmsg(e), "needs a device") != NULL);
    tandem_engine_close(e);

    tandem_config_init(&c);
    c.model_path = TD_TEST_MODEL;
    c.device = TANDEM_DEVICE_EMU;
    c.mode = TANDEM_MODE_DEVICE;
    c.kv_budget_bytes = (size_t)64 << 30; /* more than the emulated device's memory */
    CU_ASSERT_EQUAL(tandem_engine_open(&c, &e), TANDEM_ERR_OUT_OF_MEMORY);
    CU_ASSERT(strstr(tandem_engine_errmsg(e), "does not fit") != NULL);
    tandem_engine_close(e);
    c.mode = TANDEM_MODE_AUTO; /* auto keeps such a cache on the host: where it must fit memory */
    c.kv_budget_bytes = (size_t)1 << 50;
    CU_ASSERT_EQUAL(tandem_engine_open(&c, &e), TANDEM_ERR_OUT_OF_MEMORY);
    CU_ASSERT(strstr(tandem_engine_errmsg(e), "host KV pool") != NULL);
    tandem_engine_close(e);

    tandem_config_init(&c);
    c.model_path = TD_TEST_MODEL;
    c.mode = TANDEM_MODE_HYBRID; /* device auto: with no GPU, no device for it */
    c.kv_budget_bytes = (size_t)32 << 20;
    st = tandem_engine_open(&c, &e);
    if (st != TANDEM_OK) {
        CU_ASSERT_EQUAL(st, TANDEM_ERR_UNSUPPORTED);
        CU_ASSERT(strstr(tandem_engine_errmsg(e), "mode hybrid: no device") != NULL);
    }
    tandem_engine_close(e);

    memset(&c, 0, sizeof c); /* no tandem_config_init */
    CU_ASSERT_EQUAL(tandem_engine_open(&c, &e), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT(strstr(tandem_engine_errmsg(e), "struct_size") != NULL);
    tandem_engine_close(e);
    tandem_engine_close(NULL);
}

/* No path and no TANDEM_MODEL: the default model (the one scripts/fetch-model
 * puts in models/, which is the test model). */
static void test_default_model(void) {
    unsetenv("TANDEM_MODEL");
    tandem_config c;
    tandem_config_init(&c);
    c.kv_budget_bytes = (size_t)32 << 20;
    tandem_engine *e = NULL;
    tandem_status st = tandem_engine_open(&c, &e);
    if (st)
        fprintf(stderr, "\n  %s\n", tandem_engine_errmsg(e));
    CU_ASSERT_EQUAL(st, TANDEM_OK);
    CU_ASSERT_EQUAL(tandem_n_vocab(e), 49152);
    tandem_engine_close(e);
}

static void test_tokenize(void) {
    tandem_engine *e = open_default();
    const char *text = "Hello, world! \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80";
    int32_t ids[64];
    size_t n = 0, m = 0;
    CU_ASSERT_EQUAL(tandem_tokenize(e, text, strlen(text), 0, 1, ids, 64, &n), TANDEM_OK);
    CU_ASSERT(n > 3);
    char out[128];
    CU_ASSERT_EQUAL(tandem_detokenize(e, ids, n, out, sizeof out, &m), TANDEM_OK);
    CU_ASSERT(m == strlen(text) && memcmp(out, text, m) == 0);
    /* too small a buffer: LIMIT and the size needed */
    size_t need = 0;
    CU_ASSERT_EQUAL(tandem_tokenize(e, text, strlen(text), 0, 1, ids, 1, &need), TANDEM_ERR_LIMIT);
    CU_ASSERT_EQUAL(need, n);
    /* special tokens only when asked */
    CU_ASSERT_EQUAL(tandem_tokenize(e, "<|im_end|>", 10, 0, 1, ids, 64, &n), TANDEM_OK);
    CU_ASSERT(n == 1 && ids[0] == tandem_token_eos(e));
    CU_ASSERT_EQUAL(tandem_tokenize(e, "<|im_end|>", 10, 0, 0, ids, 64, &n), TANDEM_OK);
    CU_ASSERT(n > 1);
    int32_t bad = 1 << 30;
    CU_ASSERT_EQUAL(tandem_detokenize(e, &bad, 1, out, sizeof out, &m), TANDEM_ERR_INVALID_ARGUMENT);
    tandem_engine_close(e);
}

typedef struct seen {
    int tokens, finishes;
    char text[1024];
    size_t n;
    tandem_request *last;
} seen;

static void on_token(void *u, tandem_request *r, int32_t token, const char *text, size_t len) {
    seen *s = u;
    (void)r, (void)token;
    s->tokens++;
    if (s->n + len < sizeof s->text) {
        memcpy(s->text + s->n, text, len);
        s->n += len;
    }
}

static void on_finish(void *u, tandem_request *r) {
    seen *s = u;
    s->finishes++;
    s->last = r;
}

static void test_generate_chat(void) {
    tandem_engine *e = open_default();
    tandem_sampling s;
    greedy(&s, 48);
    tandem_request *r = NULL;
    int tag = 7;
    CU_ASSERT_EQUAL_FATAL(tandem_submit_text(e, CHAT, strlen(CHAT), &s, &tag, &r), TANDEM_OK);
    CU_ASSERT_EQUAL(tandem_request_finish(r), TANDEM_FINISH_NONE);
    seen sn = {0};
    tandem_callbacks cb = {.on_token = on_token, .on_finish = on_finish, .user_data = &sn};
    CU_ASSERT_EQUAL(tandem_run(e, &cb), TANDEM_OK);
    size_t len = 0, n_prompt = 0, n_gen = 0;
    const char *text = tandem_request_text(r, &len);
    const int32_t *ids = tandem_request_tokens(r, &n_prompt, &n_gen);
    printf("\n    \"%.*s\" (%s) ", (int)len, text, tandem_finish_name(tandem_request_finish(r)));
    CU_ASSERT(len == strlen(ANSWER) && memcmp(text, ANSWER, len) == 0);
    CU_ASSERT_EQUAL(tandem_request_finish(r), TANDEM_FINISH_STOP);
    CU_ASSERT_PTR_EQUAL(tandem_request_user(r), &tag);
    CU_ASSERT_EQUAL(ids[0], 1); /* <|im_start|>: specials parsed in submitted text */
    /* the callbacks saw every token once and the same text */
    CU_ASSERT_EQUAL((size_t)sn.tokens, n_gen);
    CU_ASSERT(sn.n == len && memcmp(sn.text, text, len) == 0);
    CU_ASSERT_EQUAL(sn.finishes, 1);
    CU_ASSERT_PTR_EQUAL(sn.last, r);
    CU_ASSERT_EQUAL(ids[n_prompt + n_gen - 1], tandem_token_eos(e)); /* ended on <|im_end|> */

    tandem_stats st = {.struct_size = sizeof st};
    CU_ASSERT_EQUAL(tandem_engine_stats(e, &st), TANDEM_OK);
    CU_ASSERT_EQUAL(st.generated_tokens, n_gen);
    CU_ASSERT_EQUAL(st.prompt_tokens, n_prompt);
    CU_ASSERT_EQUAL(st.requests_finished, 1);
    CU_ASSERT(st.kv_bytes_peak > 0 && st.kv_bytes_used == 0 && st.running == 0 && st.queued == 0);
    tandem_request_free(e, r);

    /* a stop string spanning tokens ends the text before it */
    const char *stops[1] = {"France is"};
    s.stop = stops;
    s.n_stop = 1;
    CU_ASSERT_EQUAL_FATAL(tandem_submit_text(e, CHAT, strlen(CHAT), &s, NULL, &r), TANDEM_OK);
    CU_ASSERT_EQUAL(tandem_run(e, NULL), TANDEM_OK);
    text = tandem_request_text(r, &len);
    CU_ASSERT(len == strlen("The capital of ") && memcmp(text, "The capital of ", len) == 0);
    CU_ASSERT_EQUAL(tandem_request_finish(r), TANDEM_FINISH_STOP);
    tandem_request_free(e, r);
    tandem_engine_close(e);
}

/* The same conversation as CHAT, as messages through the model's template. */
static void test_chat(void) {
    tandem_engine *e = open_default();
    CU_ASSERT_STRING_EQUAL(tandem_chat_template(e), "chatml");
    const char *sys = "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
               *user = "What is the capital of France?";
    tandem_message m[2] = {{"system", sys, strlen(sys)}, {"user", user, strlen(user)}};
    tandem_sampling s;
    greedy(&s, 48);
    tandem_request *r = NULL, *t = NULL;
    CU_ASSERT_EQUAL_FATAL(tandem_submit_chat(e, m, 2, &s, NULL, &r), TANDEM_OK);
    CU_ASSERT_EQUAL_FATAL(tandem_submit_text(e, CHAT, strlen(CHAT), &s, NULL, &t), TANDEM_OK);
    CU_ASSERT_EQUAL(tandem_run(e, NULL), TANDEM_OK);
    size_t n1, n2, p1, p2;
    const char *a = tandem_request_text(r, &n1), *b = tandem_request_text(t, &n2);
    const int32_t *ia = tandem_request_tokens(r, &p1, NULL), *ib = tandem_request_tokens(t, &p2, NULL);
    CU_ASSERT(p1 == p2 && memcmp(ia, ib, p1 * sizeof *ia) == 0); /* the template renders exactly CHAT */
    CU_ASSERT(n1 == strlen(ANSWER) && memcmp(a, ANSWER, n1) == 0);
    CU_ASSERT(n1 == n2 && memcmp(a, b, n1) == 0);
    tandem_message bad = {"tool", "x", 1};
    CU_ASSERT_EQUAL(tandem_submit_chat(e, &bad, 1, &s, NULL, &r), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT(strstr(tandem_engine_errmsg(e), "tool") != NULL);
    tandem_engine_close(e);
}

/* Requests run together give what each gives alone, sampled ones included. */
static void test_batch_matches_alone(void) {
    static const char *const prompts[] = {"Once upon", "def fibonacci(n):", "The three laws of thermodynamics are",
                                          "List of fruits:\n1.", "Paris is"};
    enum { N = 5 };
    tandem_engine *e = open_default();
    tandem_sampling s;
    tandem_sampling_init(&s);
    s.max_tokens = 20;
    s.temperature = 0.8f;
    s.top_p = 0.9f;
    tandem_request *all[N], *one;
    for (int i = 0; i < N; i++) {
        s.seed = 100 + (uint64_t)i;
        CU_ASSERT_EQUAL_FATAL(tandem_submit_text(e, prompts[i], strlen(prompts[i]), &s, NULL, &all[i]), TANDEM_OK);
    }
    CU_ASSERT_EQUAL(tandem_run(e, NULL), TANDEM_OK);
    for (int i = 0; i < N; i++) {
        s.seed = 100 + (uint64_t)i;
        CU_ASSERT_EQUAL_FATAL(tandem_submit_text(e, prompts[i], strlen(prompts[i]), &s, NULL, &one), TANDEM_OK);
        CU_ASSERT_EQUAL(tandem_run(e, NULL), TANDEM_OK);
        size_t a, b, pa, pb, ga, gb;
        const char *ta = tandem_request_text(all[i], &a), *tb = tandem_request_text(one, &b);
        const int32_t *ia = tandem_request_tokens(all[i], &pa, &ga), *ib = tandem_request_tokens(one, &pb, &gb);
        CU_ASSERT(a == b && memcmp(ta, tb, a) == 0);
        CU_ASSERT(ga == gb && pa == pb && memcmp(ia, ib, (pa + ga) * sizeof *ia) == 0);
        tandem_request_free(e, one);
        tandem_request_free(e, all[i]);
    }
    tandem_engine_close(e);
}

/* Where an engine runs: device auto names its choice (and why it fell back
 * to the CPU); device emu runs mode device and gives the CPU's tokens. */
static void test_devices(void) {
    tandem_engine *cpu = open_default();
    const char *where = tandem_engine_device(cpu);
    CU_ASSERT(!strncmp(where, "cpu (", 5) || !strncmp(where, "cuda: ", 6));
    tandem_config c;
    tandem_config_init(&c);
    c.model_path = TD_TEST_MODEL;
    c.kv_budget_bytes = (size_t)64 << 20;
    c.device = TANDEM_DEVICE_EMU;
    c.mode = TANDEM_MODE_DEVICE;
    tandem_engine *emu = NULL;
    tandem_status st = tandem_engine_open(&c, &emu);
    if (st)
        fprintf(stderr, "\n  %s\n", tandem_engine_errmsg(emu));
    CU_ASSERT_EQUAL_FATAL(st, TANDEM_OK);
    CU_ASSERT(strstr(tandem_engine_device(emu), "emu") != NULL);
    tandem_stats stats;
    stats.struct_size = sizeof stats;
    CU_ASSERT_EQUAL(tandem_engine_stats(emu, &stats), TANDEM_OK);
    CU_ASSERT_EQUAL(stats.kv_bytes_total >> 20, 63); /* whole blocks of the 64 MiB asked for */
    tandem_sampling s;
    greedy(&s, 16);
    tandem_request *a = NULL, *b = NULL;
    CU_ASSERT_EQUAL_FATAL(tandem_submit_text(cpu, CHAT, strlen(CHAT), &s, NULL, &a), TANDEM_OK);
    CU_ASSERT_EQUAL_FATAL(tandem_submit_text(emu, CHAT, strlen(CHAT), &s, NULL, &b), TANDEM_OK);
    CU_ASSERT_EQUAL(tandem_run(cpu, NULL), TANDEM_OK);
    CU_ASSERT_EQUAL(tandem_run(emu, NULL), TANDEM_OK);
    size_t na, nb;
    const char *ta = tandem_request_text(a, &na), *tb = tandem_request_text(b, &nb);
    CU_ASSERT(na == nb && !memcmp(ta, tb, na));
    CU_ASSERT(nb >= strlen(ANSWER) && !memcmp(tb, ANSWER, strlen(ANSWER)));
    tandem_engine_close(emu);

    /* cpu-attn: attention on the CPU, pipelined; the same text, and stats */
    c.mode = TANDEM_MODE_CPU_ATTN;
    st = tandem_engine_open(&c, &emu);
    if (st)
        fprintf(stderr, "\n  %s\n", tandem_engine_errmsg(emu));
    CU_ASSERT_EQUAL_FATAL(st, TANDEM_OK);
    CU_ASSERT(strstr(tandem_engine_device(emu), "mode cpu-attn") != NULL);
    CU_ASSERT_EQUAL_FATAL(tandem_submit_text(emu, CHAT, strlen(CHAT), &s, NULL, &b), TANDEM_OK);
    CU_ASSERT_EQUAL(tandem_run(emu, NULL), TANDEM_OK);
    tb = tandem_request_text(b, &nb);
    CU_ASSERT(na == nb && !memcmp(ta, tb, na));
    stats = (tandem_stats){.struct_size = sizeof stats};
    CU_ASSERT_EQUAL(tandem_engine_stats(emu, &stats), TANDEM_OK);
    CU_ASSERT(stats.pipeline_steps == stats.steps && stats.steps > 0);
    CU_ASSERT(stats.device_busy_seconds > 0 && stats.cpu_busy_seconds > 0 && stats.d2h_busy_seconds > 0 &&
              stats.h2d_busy_seconds > 0);
    CU_ASSERT(stats.cpu_busy_seconds <= stats.pipeline_seconds && stats.pipeline_seconds <= stats.forward_seconds);
    /* a caller built against the older, shorter tandem_stats gets its fields only */
    unsigned char old[sizeof(tandem_stats) + 8];
    memset(old, 0xab, sizeof old);
    tandem_stats *o = (tandem_stats *)(void *)old;
    o->struct_size = offsetof(tandem_stats, pipeline_steps);
    CU_ASSERT_EQUAL(tandem_engine_stats(emu, o), TANDEM_OK);
    CU_ASSERT_EQUAL(o->steps, stats.steps);
    CU_ASSERT_EQUAL(old[offsetof(tandem_stats, pipeline_steps)], 0xab);
    tandem_engine_close(emu);
    tandem_engine_close(cpu);
}

static void test_request_errors_and_cancel(void) {
    tandem_engine *e = open_default();
    tandem_sampling s;
    greedy(&s, 8);
    tandem_request *r = NULL;
    s.top_p = 2.0f;
    CU_ASSERT_EQUAL(tandem_submit_text(e, "x", 1, &s, NULL, &r), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT(strstr(tandem_engine_errmsg(e), "top_p") != NULL);
    CU_ASSERT_PTR_NULL(r);
    greedy(&s, 0);
    CU_ASSERT_EQUAL(tandem_submit_text(e, "x", 1, &s, NULL, &r), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT(strstr(tandem_engine_errmsg(e), "max_tokens") != NULL);
    greedy(&s, 8);
    const char *stops[2] = {"a", NULL};
    s.stop = stops;
    s.n_stop = 2;
    CU_ASSERT_EQUAL(tandem_submit_text(e, "x", 1, &s, NULL, &r), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT(strstr(tandem_engine_errmsg(e), "stop[1]") != NULL);
    greedy(&s, 8);
    CU_ASSERT_EQUAL(tandem_submit_text(e, "", 0, &s, NULL, &r), TANDEM_ERR_INVALID_ARGUMENT);
    tandem_sampling old = s;
    old.struct_size = 8;
    CU_ASSERT_EQUAL(tandem_submit_text(e, "x", 1, &old, NULL, &r), TANDEM_ERR_INVALID_ARGUMENT);

    /* cancel one running request and free a queued one unfinished */
    tandem_request *a, *b, *c;
    greedy(&s, 30);
    s.ignore_eos = 1;
    CU_ASSERT_EQUAL_FATAL(tandem_submit_text(e, "Once upon", 9, &s, NULL, &a), TANDEM_OK);
    CU_ASSERT_EQUAL_FATAL(tandem_submit_text(e, "Paris is", 8, &s, NULL, &b), TANDEM_OK);
    CU_ASSERT_EQUAL_FATAL(tandem_submit_text(e, "Rome is", 7, &s, NULL, &c), TANDEM_OK);
    seen sn = {0};
    tandem_callbacks cb = {.on_token = on_token, .on_finish = on_finish, .user_data = &sn};
    int busy = 0;
    CU_ASSERT_EQUAL(tandem_step(e, &cb, &busy), TANDEM_OK);
    CU_ASSERT(busy);
    CU_ASSERT_EQUAL(tandem_cancel(e, a), TANDEM_OK);
    tandem_request_free(e, c); /* running, unfinished: dropped without a callback */
    CU_ASSERT_EQUAL(tandem_run(e, &cb), TANDEM_OK);
    CU_ASSERT_EQUAL(tandem_request_finish(a), TANDEM_FINISH_CANCELLED);
    CU_ASSERT_EQUAL(tandem_request_finish(b), TANDEM_FINISH_LENGTH);
    CU_ASSERT_EQUAL(sn.finishes, 2);
    size_t n_gen;
    tandem_request_tokens(b, NULL, &n_gen);
    CU_ASSERT_EQUAL(n_gen, 30);
    tandem_stats st = {.struct_size = sizeof st};
    CU_ASSERT_EQUAL(tandem_engine_stats(e, &st), TANDEM_OK);
    CU_ASSERT(st.kv_bytes_used == 0 && st.running == 0 && st.queued == 0);
    tandem_request_free(e, a);
    tandem_request_free(e, b);
    tandem_engine_close(e);
}

/* Requests left at close are freed by it (the sanitizer build checks). */
static void test_close_with_requests(void) {
    for (int i = 0; i < 3; i++) {
        tandem_engine *e = open_default();
        tandem_sampling s;
        greedy(&s, 4);
        tandem_request *r;
        CU_ASSERT_EQUAL(tandem_submit_text(e, "Hello", 5, &s, NULL, &r), TANDEM_OK);
        CU_ASSERT_EQUAL(tandem_submit_text(e, "World", 5, &s, NULL, &r), TANDEM_OK);
        int busy;
        CU_ASSERT_EQUAL(tandem_step(e, NULL, &busy), TANDEM_OK);
        tandem_engine_close(e);
    }
}

/* ---- struct sizes: callers built against older (smaller) or newer headers -- */

enum { GUARD = 64, CANARY = 0xab };

/* n bytes for a struct, followed by GUARD canary bytes (the struct's bytes
 * are canary too, until written). */
static unsigned char *guarded(size_t n) {
    unsigned char *b = malloc(n + GUARD);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    memset(b, CANARY, n + GUARD);
    return b;
}

static int canary_intact(const unsigned char *b, size_t n) {
    for (size_t i = n; i < n + GUARD; i++)
        if (b[i] != CANARY)
            return 0;
    return 1;
}

/* init_sized with `small` bytes writes those only, struct_size = small, and
 * the defaults a whole struct gets; with more than the library's size (a
 * newer caller's struct) it writes the library's size and says so. */
#define CHECK_SIZED_INIT(T, init_sized, small)                                                                         \
    do {                                                                                                               \
        T full_;                                                                                                       \
        memset(&full_, 0, sizeof full_);                                                                               \
        init_sized(&full_, sizeof full_);                                                                              \
        CU_ASSERT_EQUAL(full_.struct_size, sizeof full_);                                                              \
        const size_t n_ = (small);                                                                                     \
        unsigned char *b_ = guarded(n_);                                                                               \
        init_sized((T *)(void *)b_, n_);                                                                               \
        CU_ASSERT(canary_intact(b_, n_));                                                                              \
        CU_ASSERT_EQUAL(((T *)(void *)b_)->struct_size, n_);                                                           \
        CU_ASSERT(!memcmp(b_ + sizeof(size_t), (unsigned char *)&full_ + sizeof(size_t), n_ - sizeof(size_t)));        \
        free(b_);                                                                                                      \
        b_ = guarded(sizeof(T) + 16);                                                                                  \
        init_sized((T *)(void *)b_, sizeof(T) + 16);                                                                   \
        CU_ASSERT_EQUAL(((T *)(void *)b_)->struct_size, sizeof(T));                                                    \
        CU_ASSERT(canary_intact(b_, sizeof(T)));                                                                       \
        free(b_);                                                                                                      \
    } while (0)

/* What a program built against the 0.1.0 header calls: the unsized
 * functions (deprecated now; the macros replace calls to them). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static void init_0_1(int which, void *p) {
    switch (which) {
    case 0: (tandem_config_init)(p); break;
    case 1: (tandem_sampling_init)(p); break;
    case 2: (tandem_tune_config_init)(p); break;
    default: (tandem_plan_query_init)(p); break;
    }
}
#pragma GCC diagnostic pop

/* They write the 0.1.0 structs' sizes. */
#define CHECK_UNSIZED_INIT(T, which, size_0_1)                                                                         \
    do {                                                                                                               \
        const size_t n_ = (size_0_1);                                                                                  \
        unsigned char *b_ = guarded(n_);                                                                               \
        init_0_1(which, b_);                                                                                           \
        CU_ASSERT(canary_intact(b_, n_));                                                                              \
        CU_ASSERT_EQUAL(((T *)(void *)b_)->struct_size, n_);                                                           \
        free(b_);                                                                                                      \
    } while (0)

static void test_struct_init_sizes(void) {
    CHECK_SIZED_INIT(tandem_config, tandem_config_init_sized, offsetof(tandem_config, profile));
    CHECK_SIZED_INIT(tandem_config, tandem_config_init_sized, offsetof(tandem_config, device));
    CHECK_SIZED_INIT(tandem_sampling, tandem_sampling_init_sized, offsetof(tandem_sampling, n_stop));
    CHECK_SIZED_INIT(tandem_tune_config, tandem_tune_config_init_sized, offsetof(tandem_tune_config, progress));
    CHECK_SIZED_INIT(tandem_plan_query, tandem_plan_query_init_sized, offsetof(tandem_plan_query, host_seqs));
    CHECK_UNSIZED_INIT(tandem_config, 0, offsetof(tandem_config, profile) + sizeof(char *));
    CHECK_UNSIZED_INIT(tandem_sampling, 1, offsetof(tandem_sampling, ignore_eos) + sizeof(int));
    CHECK_UNSIZED_INIT(tandem_tune_config, 2, offsetof(tandem_tune_config, user) + sizeof(void *));
    CHECK_UNSIZED_INIT(tandem_plan_query, 3, offsetof(tandem_plan_query, host_seqs) + sizeof(int));
    /* the macros pass the caller's sizeof */
    tandem_config c;
    tandem_config_init(&c);
    CU_ASSERT_EQUAL(c.struct_size, sizeof c);
    tandem_sampling s;
    tandem_sampling_init(&s);
    CU_ASSERT(s.struct_size == sizeof s && s.max_tokens == 256 && s.top_p == 1.0f && s.penalty_last_n == 64);
    tandem_plan_query q;
    tandem_plan_query_init(&q);
    CU_ASSERT(q.struct_size == sizeof q && q.batch == 64 && q.ctx == 2048 && q.host_seqs == -1);
    tandem_tune_config t;
    tandem_tune_config_init(&t);
    CU_ASSERT(t.struct_size == sizeof t && t.device == TANDEM_DEVICE_AUTO);
}

/* An engine opened with a config of an older header (no profile field: the
 * canary bytes where it would be are no pointer), and run with a sampling
 * struct of a newer header (more bytes than the library knows). */
static void test_struct_sizes_open_and_submit(void) {
    const size_t n = offsetof(tandem_config, profile);
    unsigned char *b = guarded(n);
    tandem_config *c = (tandem_config *)(void *)b;
    tandem_config_init_sized(c, n);
    c->model_path = TD_TEST_MODEL;
    c->kv_budget_bytes = (size_t)32 << 20;
    c->max_batch = 4;
    c->device = TANDEM_DEVICE_CPU;
    tandem_engine *e = NULL;
    tandem_status st = tandem_engine_open(c, &e);
    if (st)
        fprintf(stderr, "\n  %s\n", tandem_engine_errmsg(e));
    CU_ASSERT_EQUAL_FATAL(st, TANDEM_OK);
    CU_ASSERT(canary_intact(b, n));
    CU_ASSERT_STRING_EQUAL(tandem_engine_device(e), "cpu");

    unsigned char *sb = guarded(sizeof(tandem_sampling) + 16);
    tandem_sampling *s = (tandem_sampling *)(void *)sb;
    tandem_sampling_init_sized(s, sizeof(tandem_sampling) + 16);
    s->struct_size = sizeof(tandem_sampling) + 16; /* what a newer header's init sets */
    s->temperature = 0;
    s->max_tokens = 3;
    s->ignore_eos = 1;
    tandem_request *r = NULL;
    CU_ASSERT_EQUAL_FATAL(tandem_submit_text(e, "Once upon", 9, s, NULL, &r), TANDEM_OK);
    CU_ASSERT_EQUAL(tandem_run(e, NULL), TANDEM_OK);
    CU_ASSERT_EQUAL(tandem_request_finish(r), TANDEM_FINISH_LENGTH);
    /* older than any layout the library reads: refused, naming struct_size */
    s->struct_size = offsetof(tandem_sampling, ignore_eos);
    CU_ASSERT_EQUAL(tandem_submit_text(e, "x", 1, s, NULL, &r), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT(strstr(tandem_engine_errmsg(e), "struct_size") != NULL);
    tandem_engine_close(e);
    free(sb);

    c->struct_size = offsetof(tandem_config, device_kv_bytes);
    CU_ASSERT_EQUAL(tandem_engine_open(c, &e), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT(strstr(tandem_engine_errmsg(e), "struct_size") != NULL);
    tandem_engine_close(e);
    free(b);
}

/* tandem_plan with a query and a result of fewer fields than the library's. */
static void test_struct_sizes_plan(void) {
    tandem_plan_query q;
    tandem_plan_query_init(&q);
    q.profile = "T4";
    q.model_path = TD_TEST_MODEL;
    tandem_plan_result full = {.struct_size = sizeof full};
    char err[256];
    CU_ASSERT_EQUAL_FATAL(tandem_plan(&q, &full, err, sizeof err), TANDEM_OK);
    CU_ASSERT(full.chosen_tok_s > 0);

    const size_t nq = offsetof(tandem_plan_query, host_seqs), nr = offsetof(tandem_plan_result, search_seconds);
    unsigned char *qb = guarded(nq), *rb = guarded(nr);
    tandem_plan_query *oq = (tandem_plan_query *)(void *)qb;
    tandem_plan_result *orr = (tandem_plan_result *)(void *)rb;
    tandem_plan_query_init_sized(oq, nq);
    oq->profile = "T4";
    oq->model_path = TD_TEST_MODEL;
    orr->struct_size = nr;
    CU_ASSERT_EQUAL_FATAL(tandem_plan(oq, orr, err, sizeof err), TANDEM_OK); /* host_seqs: -1, the default */
    CU_ASSERT(canary_intact(qb, nq) && canary_intact(rb, nr));
    CU_ASSERT_EQUAL(orr->struct_size, nr);
    CU_ASSERT_EQUAL(orr->chosen, full.chosen);
    CU_ASSERT_EQUAL(orr->hybrid_host_seqs, full.hybrid_host_seqs);
    CU_ASSERT_DOUBLE_EQUAL(orr->chosen_tok_s, full.chosen_tok_s, 1e-9 * full.chosen_tok_s);
    free(qb);
    free(rb);
}

void td_test_register(void) {
    static const td_test tests[] = {
        {"open: errors name the problem", test_open_errors},
        {"open: the default model", test_default_model},
        {"tokenize / detokenize", test_tokenize},
        {"greedy chat answer, callbacks, stats, stop string", test_generate_chat},
        {"chat messages through the model's template", test_chat},
        {"a batch gives what each request gives alone", test_batch_matches_alone},
        {"devices: auto names its choice, emu equals the cpu", test_devices},
        {"request errors, cancel, free unfinished", test_request_errors_and_cancel},
        {"close with requests left", test_close_with_requests},
        {"struct sizes: the initializers write at most the size given", test_struct_init_sizes},
        {"struct sizes: an older config opens, a newer sampling submits", test_struct_sizes_open_and_submit},
        {"struct sizes: plan with an older query and result", test_struct_sizes_plan},
        {NULL, NULL},
    };
    td_add_suite("api", tests);
}
