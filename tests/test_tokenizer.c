/* The tokenizer against three references:
 *  - llama.cpp's test vectors (tests/data/tokenizer/: GPT-2's byte-level BPE
 *    and Llama-2's SentencePiece vocabulary, ids from Hugging Face);
 *  - Hugging Face tokenizers built from SmolLM2's GGUF
 *    (tests/oracle/tokenizer_vectors.py, a CTest fixture): ids with and
 *    without special-token parsing, decodes, pre-tokenizer splits for four
 *    pre-tokenizers, over a corpus with invalid UTF-8;
 *  - small vocabularies built in memory here, each stating exactly what a
 *    right implementation must do (merge order, pre-tokenizer choice, special
 *    tokens, the streaming UTF-8 decoder) and every load error. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "tests/gguf_bytes.h"
#include "tests/test_util.h"

#ifndef TD_TOKENIZER_DATA
#error "TD_TOKENIZER_DATA (tests/data/tokenizer) is set by tests/CMakeLists.txt"
#endif
#ifndef TD_TOKENIZER_VECTORS
#error "TD_TOKENIZER_VECTORS (the oracle fixture path) is set by tests/CMakeLists.txt"
#endif
#ifndef TD_TEST_MODEL
#error "TD_TEST_MODEL (models/SmolLM2-135M-Instruct.Q4_1.gguf) is set by tests/CMakeLists.txt"
#endif

/* ---- helpers ---------------------------------------------------------------- */

static td_tokenizer *load_file(const char *path) {
    td_gguf *g = NULL;
    td_tokenizer *t = NULL;
    td_error err = {0};
    TD_ASSERT_OK(td_gguf_open(path, &g, &err), &err);
    tandem_status st = td_tokenizer_load(g, &t, &err);
    td_gguf_close(g); /* the tokenizer keeps its own copies */
    if (st)
        fprintf(stderr, "\n  %s: %s\n", path, err.msg);
    CU_ASSERT_EQUAL_FATAL(st, TANDEM_OK);
    return t;
}

/* Tokenizes into a fresh array (*n ids), checking the cap/retry contract. */
static int32_t *tokenize(const td_tokenizer *t, const void *text, size_t len, bool bos, bool special, size_t *n) {
    td_error err = {0};
    size_t need;
    tandem_status st = td_tokenize(t, text, len, bos, special, NULL, 0, &need, &err);
    CU_ASSERT(st == (need ? TANDEM_ERR_LIMIT : TANDEM_OK));
    int32_t *ids = malloc((need ? need : 1) * sizeof *ids);
    TD_ASSERT_OK(td_tokenize(t, text, len, bos, special, ids, need, n, &err), &err);
    CU_ASSERT_EQUAL(*n, need);
    return ids;
}

static bool ids_eq(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

static void print_ids(const char *what, const int32_t *ids, size_t n) {
    fprintf(stderr, "  %s:", what);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "\n");
}

/* Concatenated td_token_bytes of ids (control tokens included). */
static char *token_bytes(const td_tokenizer *t, const int32_t *ids, size_t n, size_t *len) {
    size_t cap = 64, o = 0;
    char *s = malloc(cap);
    for (size_t i = 0; i < n; i++) {
        const char *p;
        size_t k;
        td_error err;
        TD_ASSERT_OK(td_token_bytes(t, ids[i], &p, &k, &err), &err);
        while (o + k > cap)
            s = realloc(s, cap *= 2);
        memcpy(s + o, p, k);
        o += k;
    }
    *len = o;
    return s;
}

/* Streams ids one at a time through a td_detok (flags), checking that every
 * push gives complete UTF-8; *held counts pushes that held bytes back. */
static char *stream_decode(const td_tokenizer *t, const int32_t *ids, size_t n, unsigned flags, size_t *len,
                           int *held) {
    size_t room = td_detok_max_bytes(t);
    char *s = malloc(room * (n + 1) + 1);
    size_t o = 0, k;
    td_detok d;
    td_error err;
    td_detok_init(&d, t, flags);
    for (size_t i = 0; i < n; i++) {
        TD_ASSERT_OK(td_detok_push(&d, ids[i], s + o, room, &k, &err), &err);
        o += k;
        if (d.n_pend && held)
            (*held)++;
    }
    TD_ASSERT_OK(td_detok_flush(&d, s + o, room, &k, &err), &err);
    o += k;
    *len = o;
    return s;
}

/* Strict UTF-8 check (what the decoder promises to emit). */
static bool valid_utf8(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t k = c < 0x80 ? 1 : c < 0xC2 ? 0 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF5 ? 4 : 0;
        if (!k || i + k > n)
            return false;
        uint8_t lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80, hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
        if (k > 1 && (s[i + 1] < lo || s[i + 1] > hi))
            return false;
        for (size_t j = 2; j < k; j++)
            if ((s[i + j] & 0xC0) != 0x80)
                return false;
        i += k;
    }
    return true;
}

/* ---- an in-memory GGUF with tokenizer metadata ---------------------------------- */

typedef struct gguf_b {
    buf kv;
    uint64_t n_kv;
} gguf_b;

static void key(gguf_b *g, const char *k, td_gguf_type t) {
    str(&g->kv, k);
    u32(&g->kv, t);
    g->n_kv++;
}
static void kv_str(gguf_b *g, const char *k, const char *v) {
    key(g, k, TD_GGUF_STRING);
    str(&g->kv, v);
}
static void kv_u32(gguf_b *g, const char *k, uint32_t v) {
    key(g, k, TD_GGUF_UINT32);
    u32(&g->kv, v);
}
static void kv_bool(gguf_b *g, const char *k, bool v) {
    key(g, k, TD_GGUF_BOOL);
    put(&g->kv, v ? "\1" : "\0", 1);
}
static void kv_strs(gguf_b *g, const char *k, const char *const *v, size_t n) {
    key(g, k, TD_GGUF_ARRAY);
    u32(&g->kv, TD_GGUF_STRING);
    u64(&g->kv, n);
    for (size_t i = 0; i < n; i++)
        str(&g->kv, v[i]);
}
static void kv_i32s(gguf_b *g, const char *k, const int32_t *v, size_t n) {
    key(g, k, TD_GGUF_ARRAY);
    u32(&g->kv, TD_GGUF_INT32);
    u64(&g->kv, n);
    put(&g->kv, v, 4 * n);
}
static void kv_f32s(gguf_b *g, const char *k, const float *v, size_t n) {
    key(g, k, TD_GGUF_ARRAY);
    u32(&g->kv, TD_GGUF_FLOAT32);
    u64(&g->kv, n);
    put(&g->kv, v, 4 * n);
}

/* The file: header, the metadata, no tensors. */
static buf gguf_finish(gguf_b *g) {
    buf b = {0};
    u32(&b, 0x46554747u);
    u32(&b, 3);
    u64(&b, 0);
    u64(&b, g->n_kv);
    put(&b, g->kv.p, g->kv.n);
    free(g->kv.p);
    return b;
}

/* Loads b (named name); returns the status, *t on success, err filled. */
static tandem_status load_buf(const buf *b, const char *name, td_tokenizer **t, td_error *err) {
    td_gguf *g = NULL;
    *t = NULL;
    TD_ASSERT_OK(td_gguf_open_memory(b->p, b->n, name, &g, err), err);
    tandem_status st = td_tokenizer_load(g, t, err);
    td_gguf_close(g);
    return st;
}

/* GPT-2's byte alphabet, written out independently of the library. */
static void byte_char(int b, char out[3]) {
    int cp = b, next = 256;
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    if (!printable) {
        for (int c = 0; c < b; c++)
            if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF)))
                next++;
        cp = next;
    }
    if (cp < 0x80) {
        out[0] = (char)cp, out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3F)), out[2] = 0;
    }
}

/* A byte-level vocabulary: ids 0..255 are the bytes, then extra tokens (in
 * byte-alphabet spelling), the merges in rank order, then specials (text,
 * type). */
typedef struct spec {
    const char *text;
    int32_t type;
} spec;

static buf gpt2_vocab(const char *pre, const char *const *extra, size_t n_extra, const char *const *merges,
                      size_t n_merges, const spec *specials, size_t n_specials, gguf_b *more) {
    size_t n = 256 + n_extra + n_specials;
    char **toks = malloc(n * sizeof *toks);
    int32_t *types = malloc(n * sizeof *types);
    for (int b = 0; b < 256; b++) {
        toks[b] = malloc(3);
        byte_char(b, toks[b]);
        types[b] = TD_TOKEN_NORMAL;
    }
    for (size_t i = 0; i < n_extra; i++)
        toks[256 + i] = strdup(extra[i]), types[256 + i] = TD_TOKEN_NORMAL;
    for (size_t i = 0; i < n_specials; i++)
        toks[256 + n_extra + i] = strdup(specials[i].text), types[256 + n_extra + i] = specials[i].type;
    gguf_b g = more ? *more : (gguf_b){0};
    kv_str(&g, "tokenizer.ggml.model", "gpt2");
    if (pre)
        kv_str(&g, "tokenizer.ggml.pre", pre);
    kv_strs(&g, "tokenizer.ggml.tokens", (const char *const *)toks, n);
    kv_i32s(&g, "tokenizer.ggml.token_type", types, n);
    kv_strs(&g, "tokenizer.ggml.merges", merges, n_merges);
    for (size_t i = 0; i < n; i++)
        free(toks[i]);
    free(toks);
    free(types);
    return gguf_finish(&g);
}

static td_tokenizer *gpt2_tok(const char *pre, const char *const *extra, size_t n_extra, const char *const *merges,
                              size_t n_merges, const spec *specials, size_t n_specials) {
    buf b = gpt2_vocab(pre, extra, n_extra, merges, n_merges, specials, n_specials, NULL);
    td_tokenizer *t;
    td_error err = {0};
    TD_ASSERT_OK(load_buf(&b, "synthetic.gguf", &t, &err), &err);
    free(b.p);
    return t;
}

/* Tokenizes a C string with t and compares with want (n ids). */
static void expect_ids(const td_tokenizer *t, const char *text, bool special, const int32_t *want, size_t n_want) {
    size_t n;
    int32_t *ids = tokenize(t, text, strlen(text), false, special, &n);
    if (!ids_eq(ids, n, want, n_want)) {
        fprintf(stderr, "\n  '%s' (parse_special %d):\n", text, special);
        print_ids("got     ", ids, n);
        print_ids("expected", want, n_want);
        CU_FAIL("wrong tokens");
    }
    free(ids);
}
#define EXPECT_IDS(t, text, special, ...)                                                                              \
    do {                                                                                                               \
        const int32_t want_[] = {__VA_ARGS__};                                                                         \
        expect_ids(t, text, special, want_, sizeof want_ / sizeof want_[0]);                                           \
    } while (0)

/* ---- llama.cpp's vectors ------------------------------------------------------------ */

/* Runs NAME.inp against NAME.out; round-trips each input through the token
 * bytes and the streaming decoder (flags). Returns the number checked. */
static int run_llama_cpp_vectors(const char *name, unsigned detok_flags) {
    char path[512], ip[520], op[520];
    snprintf(path, sizeof path, "%s/%s", TD_TOKENIZER_DATA, name);
    snprintf(ip, sizeof ip, "%s.inp", path);
    snprintf(op, sizeof op, "%s.out", path);
    size_t ni, no;
    char *in = td_test_read_file(ip, &ni), *out = td_test_read_file(op, &no);
    CU_ASSERT_PTR_NOT_NULL_FATAL(in);
    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    td_tokenizer *t = load_file(path);
    const char *sep = "\n__ggml_vocab_test__\n";
    char *p = in, *q = out;
    int checked = 0;
    for (char *e; (e = strstr(p, sep)); p = e + strlen(sep)) {
        char *nl = strchr(q, '\n');
        CU_ASSERT_PTR_NOT_NULL_FATAL(nl);
        *nl = '\0';
        int32_t want[1024];
        size_t n_want = 0;
        for (char *s = q, *end; n_want < 1024; s = end) {
            long v = strtol(s, &end, 10);
            if (end == s)
                break;
            want[n_want++] = (int32_t)v;
        }
        q = nl + 1;
        size_t len = (size_t)(e - p), n;
        int32_t *ids = tokenize(t, p, len, false, false, &n);
        if (!ids_eq(ids, n, want, n_want)) {
            fprintf(stderr, "\n  %s: input '%.*s'\n", name, (int)len, p);
            print_ids("got     ", ids, n);
            print_ids("expected", want, n_want);
            CU_FAIL("tokens differ from llama.cpp's vector");
        }
        size_t dl;
        char *dec = stream_decode(t, ids, n, detok_flags, &dl, NULL);
        if (dl != len || memcmp(dec, p, len) != 0) {
            fprintf(stderr, "\n  %s: '%.*s' decodes to '%.*s'\n", name, (int)len, p, (int)dl, dec);
            CU_FAIL("no round trip");
        }
        free(dec);
        free(ids);
        checked++;
    }
    free(in);
    free(out);
    td_tokenizer_free(t);
    return checked;
}

static void test_llama_cpp_gpt2(void) { CU_ASSERT_EQUAL(run_llama_cpp_vectors("ggml-vocab-gpt-2.gguf", 0), 46); }

static void test_llama_cpp_spm(void) {
    /* SentencePiece puts a space in front: the decoder strips it again. */
    CU_ASSERT_EQUAL(run_llama_cpp_vectors("ggml-vocab-llama-spm.gguf", TD_DETOK_STRIP_SPACE), 46);
}

/* The Llama-2 vocabulary's own behaviour around special tokens, BOS, byte
 * fallback, and the prefix space. */
static void test_spm_details(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/ggml-vocab-llama-spm.gguf", TD_TOKENIZER_DATA);
    td_tokenizer *t = load_file(path);
    CU_ASSERT_EQUAL(td_tokenizer_n_vocab(t), 32000);
    CU_ASSERT_EQUAL(td_tokenizer_bos(t), 1);
    CU_ASSERT_EQUAL(td_tokenizer_eos(t), 2);
    CU_ASSERT(td_tokenizer_add_bos(t));
    CU_ASSERT(!td_tokenizer_add_eos(t));
    CU_ASSERT(td_tokenizer_is_eog(t, 2));
    CU_ASSERT(!td_tokenizer_is_eog(t, 1));
    CU_ASSERT_STRING_EQUAL(td_tokenizer_model(t), "llama");
    size_t n;
    int32_t *ids = tokenize(t, "Hello", 5, true, false, &n);
    CU_ASSERT(n == 2 && ids[0] == 1 && ids[1] == 15043); /* <s> ▁Hello */
    free(ids);
    /* "</s>" is text unless parse_special; after a matched special token the
     * next stretch gets its own prefix space (llama.cpp). */
    ids = tokenize(t, "a</s>b", 6, false, true, &n);
    CU_ASSERT(n == 3 && ids[0] == 263 && ids[1] == 2 && ids[2] == 289); /* ▁a </s> ▁b */
    free(ids);
    ids = tokenize(t, "a</s>b", 6, false, false, &n);
    CU_ASSERT(n > 3);
    for (size_t i = 0; i < n; i++)
        CU_ASSERT(ids[i] != 2);
    free(ids);
    /* Byte fallback: U+10FFFD has no token, so its four bytes come as <0xXX>
     * (id = byte + 3), and decode back. */
    ids = tokenize(t, "\xf4\x8f\xbf\xbd", 4, false, false, &n);
    CU_ASSERT(n == 5 && ids[0] == 29871 && ids[1] == 0xF4 + 3 && ids[4] == 0xBD + 3);
    size_t dl;
    char *dec = stream_decode(t, ids, n, TD_DETOK_STRIP_SPACE, &dl, NULL);
    CU_ASSERT(dl == 4 && memcmp(dec, "\xf4\x8f\xbf\xbd", 4) == 0);
    free(dec);
    free(ids);
    /* Invalid bytes are kept as byte tokens (exact round trip). */
    ids = tokenize(t, "a\xff\xe4z", 4, false, false, &n);
    dec = stream_decode(t, ids, n, TD_DETOK_STRIP_SPACE, &dl, NULL);
    CU_ASSERT(dl == 8 && memcmp(dec, "a\xEF\xBF\xBD\xEF\xBF\xBDz", 8) == 0);
    size_t bl;
    char *raw = token_bytes(t, ids, n, &bl);
    CU_ASSERT(bl == 5 && memcmp(raw, " a\xff\xe4z", 5) == 0);
    free(raw);
    free(dec);
    free(ids);
    /* Control tokens render only when asked. */
    int32_t seq[] = {1, 15043, 2};
    dec = stream_decode(t, seq, 3, TD_DETOK_STRIP_SPACE, &dl, NULL);
    CU_ASSERT(dl == 5 && memcmp(dec, "Hello", 5) == 0);
    free(dec);
    dec = stream_decode(t, seq, 3, TD_DETOK_SPECIAL, &dl, NULL);
    CU_ASSERT(dl == 13 && memcmp(dec, "<s> Hello</s>", 13) == 0);
    free(dec);
    td_tokenizer_free(t);
}

/* ---- SmolLM2 against Hugging Face ---------------------------------------------------- */

typedef struct vcase {
    uint8_t *text;
    size_t len;
    int32_t *ids[2]; /* by parse_special */
    size_t n_ids[2];
    uint8_t *dec[2][2]; /* [parse_special][special] */
    size_t n_dec[2][2];
} vcase;

typedef struct vsplit {
    char pre[16];
    int c;
    size_t *ends;
    size_t n;
} vsplit;

static vcase *g_cases;
static int g_n_cases;
static vsplit *g_splits;
static int g_n_splits;

static uint8_t *unhex(const char *h, size_t *n) {
    if (strcmp(h, "-") == 0) {
        *n = 0;
        return malloc(1);
    }
    size_t l = strlen(h) / 2;
    uint8_t *b = malloc(l + 1);
    for (size_t i = 0; i < l; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        b[i] = (uint8_t)v;
    }
    *n = l;
    return b;
}

/* Reads n numbers after *s. */
static void *read_nums(char **s, size_t n, bool sz) {
    void *a = malloc((n ? n : 1) * (sz ? sizeof(size_t) : sizeof(int32_t)));
    for (size_t i = 0; i < n; i++) {
        char *end;
        long long v = strtoll(*s, &end, 10);
        if (sz)
            ((size_t *)a)[i] = (size_t)v;
        else
            ((int32_t *)a)[i] = (int32_t)v;
        *s = end;
    }
    return a;
}

static int load_vectors(void) {
    FILE *f = fopen(TD_TOKENIZER_VECTORS, "r");
    if (!f) {
        fprintf(stderr,
                "cannot open %s: run it through ctest (fixture tokenizer_vectors), or "
                "tests/oracle/tokenizer_vectors.py\n",
                TD_TOKENIZER_VECTORS);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    while ((got = getline(&line, &cap, f)) > 0) {
        if (line[got - 1] == '\n')
            line[--got] = '\0';
        char *s = line + 2;
        if (line[0] == 'C') {
            int c = (int)strtol(s, &s, 10);
            g_cases = realloc(g_cases, (size_t)(c + 1) * sizeof *g_cases);
            memset(&g_cases[c], 0, sizeof g_cases[c]);
            g_cases[c].text = unhex(s + 1, &g_cases[c].len);
            g_n_cases = c + 1;
        } else if (line[0] == 'T') {
            int c = (int)strtol(s, &s, 10), ps = (int)strtol(s, &s, 10);
            size_t n = (size_t)strtoull(s, &s, 10);
            g_cases[c].ids[ps] = read_nums(&s, n, false);
            g_cases[c].n_ids[ps] = n;
        } else if (line[0] == 'D') {
            int c = (int)strtol(s, &s, 10), ps = (int)strtol(s, &s, 10), sp = (int)strtol(s, &s, 10);
            g_cases[c].dec[ps][sp] = unhex(s + 1, &g_cases[c].n_dec[ps][sp]);
        } else if (line[0] == 'S') {
            vsplit v = {0};
            char *sp = strchr(s, ' ');
            snprintf(v.pre, sizeof v.pre, "%.*s", (int)(sp - s), s);
            s = sp;
            v.c = (int)strtol(s, &s, 10);
            v.n = (size_t)strtoull(s, &s, 10);
            v.ends = read_nums(&s, v.n, true);
            g_splits = realloc(g_splits, (size_t)(g_n_splits + 1) * sizeof *g_splits);
            g_splits[g_n_splits++] = v;
        }
    }
    free(line);
    fclose(f);
    return g_n_cases > 0 ? 0 : 1;
}

static void free_vectors(void) {
    for (int c = 0; c < g_n_cases; c++) {
        free(g_cases[c].text);
        for (int i = 0; i < 2; i++) {
            free(g_cases[c].ids[i]);
            free(g_cases[c].dec[i][0]);
            free(g_cases[c].dec[i][1]);
        }
    }
    for (int i = 0; i < g_n_splits; i++)
        free(g_splits[i].ends);
    free(g_cases);
    free(g_splits);
}

static td_tokenizer *g_smol;

static void smol_cleanup(void) {
    td_tokenizer_free(g_smol);
    free_vectors();
}

/* The SmolLM2 suite's fixture, loaded by its first test (CUnit suites here
 * have no init hook): the model's tokenizer and the oracle's vectors. */
static void smol_ready(void) {
    static int state; /* 0 not tried, 1 ready, 2 failed */
    if (!state) {
        state = 2;
        atexit(smol_cleanup);
        if (load_vectors() == 0) {
            g_smol = load_file(TD_TEST_MODEL);
            state = 1;
        }
    }
    CU_ASSERT_EQUAL_FATAL(state, 1);
}

static void test_smollm_ids(void) {
    smol_ready();
    int compared = 0, failed = 0;
    for (int c = 0; c < g_n_cases; c++)
        for (int ps = 0; ps < 2; ps++) {
            vcase *v = &g_cases[c];
            size_t n;
            int32_t *ids = tokenize(g_smol, v->text, v->len, false, ps, &n);
            if (!ids_eq(ids, n, v->ids[ps], v->n_ids[ps]) && failed++ < 5) {
                fprintf(stderr, "\n  case %d (parse_special %d): '%.*s'\n", c, ps, (int)v->len, (const char *)v->text);
                print_ids("got         ", ids, n);
                print_ids("Hugging Face", v->ids[ps], v->n_ids[ps]);
            }
            free(ids);
            compared++;
        }
    CU_ASSERT_EQUAL(failed, 0);
    CU_ASSERT(compared > 1000);
    printf("(%d tokenizations, %d differ) ", compared, failed);
}

/* Bytes SmolLM2's vocabulary has no token for: Hugging Face drops them. */
static bool smol_dropped(uint8_t b) {
    static const uint8_t none[] = {0x04, 0x06, 0x13, 0x14, 0x16, 0x1d, 0xc0, 0xc1, 0xf1, 0xf2, 0xf5,
                                   0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff};
    return memchr(none, b, sizeof none) != NULL;
}

static void test_smollm_decode(void) {
    smol_ready();
    int failed = 0, held = 0;
    for (int c = 0; c < g_n_cases; c++)
        for (int ps = 0; ps < 2; ps++) {
            vcase *v = &g_cases[c];
            /* The token bytes are the input, byte for byte, invalid UTF-8
             * included. */
            size_t bl, kl = 0;
            char *raw = token_bytes(g_smol, v->ids[ps], v->n_ids[ps], &bl);
            char *kept = malloc(v->len + 1);
            for (size_t i = 0; i < v->len; i++)
                if (!smol_dropped(v->text[i]))
                    kept[kl++] = (char)v->text[i];
            CU_ASSERT(bl == kl && memcmp(raw, kept, bl) == 0);
            free(kept);
            free(raw);
            for (int sp = 0; sp < 2; sp++) {
                unsigned flags = sp ? TD_DETOK_SPECIAL : 0;
                size_t dl;
                char *dec = stream_decode(g_smol, v->ids[ps], v->n_ids[ps], flags, &dl, &held);
                bool ok = dl == v->n_dec[ps][sp] && memcmp(dec, v->dec[ps][sp], dl) == 0;
                ok = ok && valid_utf8((const uint8_t *)dec, dl);
                /* the one-shot form agrees */
                char *whole = malloc(dl + 1);
                size_t wl;
                td_error err;
                TD_ASSERT_OK(td_detokenize(g_smol, v->ids[ps], v->n_ids[ps], flags, whole, dl + 1, &wl, &err), &err);
                ok = ok && wl == dl && memcmp(whole, dec, dl) == 0;
                if (!ok && failed++ < 5)
                    fprintf(stderr, "\n  case %d ps %d special %d: decoded '%.*s', expected '%.*s'\n", c, ps, sp,
                            (int)dl, dec, (int)v->n_dec[ps][sp], (const char *)v->dec[ps][sp]);
                free(whole);
                free(dec);
            }
        }
    CU_ASSERT_EQUAL(failed, 0);
    CU_ASSERT(held > 50); /* multi-byte characters really were split across tokens */
}

/* The regex pre-tokenizers, on a byte vocabulary that names each. */
static void test_pre_tokenizer_splits(void) {
    smol_ready();
    const char *pres[] = {"gpt-2", "smollm", "llama-bpe", "default"};
    int checked = 0, failed = 0;
    for (int p = 0; p < 4; p++) {
        td_tokenizer *t = gpt2_tok(pres[p], NULL, 0, NULL, 0, NULL, 0);
        for (int i = 0; i < g_n_splits; i++) {
            vsplit *v = &g_splits[i];
            if (strcmp(v->pre, pres[p]) != 0)
                continue;
            vcase *c = &g_cases[v->c];
            size_t n, *ends = malloc((v->n + 1) * sizeof *ends);
            td_error err;
            TD_ASSERT_OK(td_tokenizer_split(t, (const char *)c->text, c->len, ends, v->n + 1, &n, &err), &err);
            if ((n != v->n || memcmp(ends, v->ends, n * sizeof *ends) != 0) && failed++ < 5) {
                fprintf(stderr, "\n  %s case %d '%.*s': pieces end at", pres[p], v->c, (int)c->len,
                        (const char *)c->text);
                for (size_t k = 0; k < n; k++)
                    fprintf(stderr, " %zu", ends[k]);
                fprintf(stderr, "; expected");
                for (size_t k = 0; k < v->n; k++)
                    fprintf(stderr, " %zu", v->ends[k]);
                fprintf(stderr, "\n");
            }
            free(ends);
            checked++;
        }
        td_tokenizer_free(t);
    }
    CU_ASSERT_EQUAL(failed, 0);
    CU_ASSERT(checked == 4 * g_n_cases);
}

static void test_smollm_specials(void) {
    smol_ready();
    td_tokenizer *t = g_smol;
    CU_ASSERT_EQUAL(td_tokenizer_n_vocab(t), 49152);
    CU_ASSERT_STRING_EQUAL(td_tokenizer_model(t), "gpt2");
    CU_ASSERT_STRING_EQUAL(td_tokenizer_pre(t), "smollm");
    CU_ASSERT_EQUAL(td_tokenizer_bos(t), 1);
    CU_ASSERT_EQUAL(td_tokenizer_eos(t), 2);
    CU_ASSERT_EQUAL(td_tokenizer_pad(t), 2);
    CU_ASSERT(!td_tokenizer_add_bos(t));  /* the file says so */
    CU_ASSERT(td_tokenizer_is_eog(t, 2)); /* <|im_end|>: EOS */
    CU_ASSERT(td_tokenizer_is_eog(t, 0)); /* <|endoftext|> */
    CU_ASSERT(!td_tokenizer_is_eog(t, 1));
    CU_ASSERT(!td_tokenizer_is_eog(t, 19556));
    CU_ASSERT(!td_tokenizer_is_eog(t, -1) && !td_tokenizer_is_eog(t, 49152));
    CU_ASSERT_EQUAL(td_tokenizer_token_type(t, 1), TD_TOKEN_CONTROL);
    CU_ASSERT_EQUAL(td_tokenizer_token_type(t, 19556), TD_TOKEN_NORMAL);
    /* explicit BOS override */
    size_t n;
    int32_t *ids = tokenize(t, "Hello", 5, true, false, &n);
    CU_ASSERT(n == 2 && ids[0] == 1 && ids[1] == 19556);
    free(ids);
    ids = tokenize(t, "", 0, true, false, &n);
    CU_ASSERT(n == 1 && ids[0] == 1);
    free(ids);
    EXPECT_IDS(t, "<|im_start|>user", true, 1, 4093);
    const char *p;
    size_t len;
    td_error err;
    TD_ASSERT_OK(td_token_bytes(t, 1, &p, &len, &err), &err);
    CU_ASSERT(len == 12 && memcmp(p, "<|im_start|>", 12) == 0);
    TD_ASSERT_OK(td_token_bytes(t, 216, &p, &len, &err), &err); /* "Ġ" */
    CU_ASSERT(len == 1 && p[0] == ' ');
}

/* Same results from many threads on one tokenizer at once. */
typedef struct worker {
    int first, step, bad;
} worker;

static void *work(void *arg) {
    worker *w = arg;
    for (int rep = 0; rep < 3; rep++)
        for (int c = w->first; c < g_n_cases; c += w->step) {
            vcase *v = &g_cases[c];
            int32_t ids[4096];
            size_t n;
            td_error err;
            if (td_tokenize(g_smol, (const char *)v->text, v->len, false, true, ids, 4096, &n, &err) ||
                !ids_eq(ids, n, v->ids[1], v->n_ids[1]))
                w->bad++;
        }
    return NULL;
}

static void test_threads(void) {
    smol_ready();
    enum { N = 4 };
    pthread_t th[N];
    worker w[N];
    for (int i = 0; i < N; i++) {
        w[i] = (worker){i % 2, 1 + i % 2, 0}; /* overlapping case sets */
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        CU_ASSERT_EQUAL(w[i].bad, 0);
    }
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Long runs (one huge piece for the regex and for BPE) take time linear in
 * their length, up to a log: 8x the text may not cost 32x (quadratic would
 * be 64x). Each size is timed as the best of five, and 50 ms of slack are
 * allowed, so that a loaded machine (parallel CTest on two cores) does not
 * fail it; a quadratic tokenizer takes seconds at the larger size. */
static void test_long_runs_not_quadratic(void) {
    smol_ready();
    const char *fill[] = {" ", "a", "7", "\n", "\xe4\xb8\xad", "\xff"};
    for (int f = 0; f < 6; f++) {
        double t_size[2];
        for (int s = 0; s < 2; s++) {
            size_t reps = (s ? 8 : 1) * 16384, fl = strlen(fill[f]), len = reps * fl;
            char *text = malloc(len + 1);
            for (size_t i = 0; i < reps; i++)
                memcpy(text + i * fl, fill[f], fl);
            text[len] = 'x';
            double best = 1e9;
            for (int r = 0; r < 5; r++) {
                double t0 = now_s();
                size_t n;
                td_error err;
                tandem_status st = td_tokenize(g_smol, text, len + 1, false, false, NULL, 0, &n, &err);
                CU_ASSERT(st == TANDEM_ERR_LIMIT && n > 0);
                double dt = now_s() - t0;
                best = dt < best ? dt : best;
            }
            t_size[s] = best;
            free(text);
        }
        if (t_size[1] > 32 * t_size[0] + 0.05) {
            fprintf(stderr, "\n  fill %d: %.4f s for 16K, %.4f s for 128K\n", f, t_size[0], t_size[1]);
            CU_FAIL("tokenizing a long run is superlinear");
        }
    }
}

/* ---- small vocabularies: what each rule must do ------------------------------------- */

/* Merges apply by rank, not by position or length: with "b c" ranked
 * before "a b", "abc" is a + bc; swapped, it is ab + c. */
static void test_merge_rank_order(void) {
    const char *extra[] = {"ab", "bc", "abc", "abcd", "cd"};
    const char *m1[] = {"b c", "a b", "a bc", "ab c", "c d", "abc d"};
    td_tokenizer *t = gpt2_tok("gpt-2", extra, 5, m1, 6, NULL, 0);
    EXPECT_IDS(t, "abc", false, 256 + 2); /* a+bc -> "a bc" -> abc */
    EXPECT_IDS(t, "abx", false, 256 + 0, 'x');
    EXPECT_IDS(t, "abcd", false, 256 + 3); /* b c, a bc, then abc d (c d ranks after b c) */
    EXPECT_IDS(t, "xbcd", false, 'x', 256 + 1, 'd');
    td_tokenizer_free(t);
    const char *m2[] = {"c d", "a b", "ab c", "b c", "abc d"};
    t = gpt2_tok("gpt-2", extra, 5, m2, 5, NULL, 0);
    EXPECT_IDS(t, "abc", false, 256 + 2);           /* a b, then ab c */
    EXPECT_IDS(t, "abcd", false, 256 + 0, 256 + 4); /* c d (rank 0) before a b: ab + cd, no "ab cd" merge */
    EXPECT_IDS(t, "bcd", false, 'b', 256 + 4);
    td_tokenizer_free(t);
    /* equal pairs: leftmost first ("aaa" -> aa a) */
    const char *extra3[] = {"aa"};
    const char *m3[] = {"a a"};
    t = gpt2_tok("gpt-2", extra3, 1, m3, 1, NULL, 0);
    EXPECT_IDS(t, "aaa", false, 256, 'a');
    EXPECT_IDS(t, "aaaa", false, 256, 256);
    td_tokenizer_free(t);
}

/* The pre-tokenizer the file names decides the pieces merges stay within. */
static void test_pre_tokenizer_choice(void) {
    const char *extra[] = {"12", "123", "1234", "\xc4\xa0\x31"}; /* "Ġ1" */
    const char *merges[] = {"1 2", "12 3", "123 4", "\xc4\xa0 1"};
    td_tokenizer *t = gpt2_tok("gpt-2", extra, 4, merges, 4, NULL, 0);
    EXPECT_IDS(t, "1234", false, 256 + 2);     /* one piece: \p{N}+ */
    EXPECT_IDS(t, " 12", false, ' ', 256 + 0); /* one piece; "1 2" ranks before "Ġ 1" */
    EXPECT_IDS(t, " 1", false, 256 + 3);
    td_tokenizer_free(t);
    t = gpt2_tok("smollm", extra, 4, merges, 4, NULL, 0);
    EXPECT_IDS(t, "1234", false, '1', '2', '3', '4'); /* every digit alone */
    EXPECT_IDS(t, " 12", false, ' ', '1', '2');
    EXPECT_IDS(t, " 1", false, ' ', '1');
    td_tokenizer_free(t);
    t = gpt2_tok("llama-bpe", extra, 4, merges, 4, NULL, 0);
    EXPECT_IDS(t, "1234", false, 256 + 1, '4'); /* \p{N}{1,3} */
    EXPECT_IDS(t, "1234567", false, 256 + 1, '4', '5', '6', '7');
    td_tokenizer_free(t);
    t = gpt2_tok(NULL, extra, 4, merges, 4, NULL, 0); /* no key: llama.cpp's default chain */
    CU_ASSERT_STRING_EQUAL(td_tokenizer_pre(t), "");
    EXPECT_IDS(t, "1234", false, 256 + 1, '4'); /* [0-9]{3} groups last */
    td_tokenizer_free(t);
}

/* Llama-3 emits a piece that is a whole token as is, merges or not. */
static void test_ignore_merges(void) {
    const char *extra[] = {"xyz"};
    td_tokenizer *t = gpt2_tok("llama3", extra, 1, NULL, 0, NULL, 0);
    EXPECT_IDS(t, "xyz", false, 256);
    EXPECT_IDS(t, "xyzw", false, 'x', 'y', 'z', 'w');
    CU_ASSERT(!td_tokenizer_add_bos(t)); /* Llama-3 wants BOS, but this vocabulary has none */
    td_tokenizer_free(t);
    /* add_bos: default true for Llama-3's pre-tokenizer, false for GPT-2's,
     * the file's key over either */
    const char *pres[] = {"llama-bpe", "gpt-2", "llama-bpe", "gpt-2"};
    for (int i = 0; i < 4; i++) {
        gguf_b g = {0};
        kv_u32(&g, "tokenizer.ggml.bos_token_id", 'B');
        if (i >= 2)
            kv_bool(&g, "tokenizer.ggml.add_bos_token", i == 3);
        buf b = gpt2_vocab(pres[i], NULL, 0, NULL, 0, NULL, 0, &g);
        td_error err = {0};
        TD_ASSERT_OK(load_buf(&b, "bos.gguf", &t, &err), &err);
        CU_ASSERT_EQUAL(td_tokenizer_add_bos(t), i == 0 || i == 3);
        CU_ASSERT_EQUAL(td_tokenizer_bos(t), 'B');
        td_tokenizer_free(t);
        free(b.p);
    }
    t = gpt2_tok("gpt-2", extra, 1, NULL, 0, NULL, 0);
    EXPECT_IDS(t, "xyz", false, 'x', 'y', 'z');
    td_tokenizer_free(t);
}

static void test_special_matching(void) {
    const spec sp[] = {{"<a>", TD_TOKEN_CONTROL},
                       {"<a>b", TD_TOKEN_CONTROL},
                       {"<u>", TD_TOKEN_USER_DEFINED},
                       {"<|end|>", TD_TOKEN_CONTROL},
                       {"<unk>", TD_TOKEN_UNKNOWN}};
    td_tokenizer *t = gpt2_tok("gpt-2", NULL, 0, NULL, 0, sp, 5);
    const int32_t A = 256, AB = 257, U = 258, END = 259, UNK = 260;
    EXPECT_IDS(t, "x<a>y", true, 'x', A, 'y');
    EXPECT_IDS(t, "x<a>y", false, 'x', '<', 'a', '>', 'y');
    EXPECT_IDS(t, "<a>b", true, AB); /* longest first */
    EXPECT_IDS(t, "<a><a>", true, A, A);
    EXPECT_IDS(t, "<a", true, '<', 'a');
    EXPECT_IDS(t, "<<a>>", true, '<', A, '>');
    EXPECT_IDS(t, "<u>", false, U); /* user-defined: always */
    EXPECT_IDS(t, "<unk>", true, UNK);
    EXPECT_IDS(t, "<unk>", false, '<', 'u', 'n', 'k', '>');
    EXPECT_IDS(t, "q<|end|>", true, 'q', END);
    CU_ASSERT(td_tokenizer_is_eog(t, END)); /* by its text, as llama.cpp */
    CU_ASSERT(!td_tokenizer_is_eog(t, A));
    CU_ASSERT_EQUAL(td_tokenizer_eot(t), END);
    /* decode: control and unknown only with TD_DETOK_SPECIAL, user-defined always */
    int32_t seq[] = {'x', A, U, UNK, 'y'};
    size_t dl;
    char *dec = stream_decode(t, seq, 5, 0, &dl, NULL);
    CU_ASSERT(dl == 5 && memcmp(dec, "x<u>y", 5) == 0);
    free(dec);
    dec = stream_decode(t, seq, 5, TD_DETOK_SPECIAL, &dl, NULL);
    CU_ASSERT(dl == 13 && memcmp(dec, "x<a><u><unk>y", 13) == 0);
    free(dec);
    td_tokenizer_free(t);
}

/* The streaming decoder on byte tokens (ids 0..255 are the bytes). */
static void expect_stream(const td_tokenizer *t, const char *bytes, size_t n, const char *const *want_each,
                          const char *want_flush) {
    td_detok d;
    td_detok_init(&d, t, 0);
    td_error err;
    for (size_t i = 0; i <= n; i++) {
        char out[64];
        size_t k;
        if (i < n)
            TD_ASSERT_OK(td_detok_push(&d, (uint8_t)bytes[i], out, sizeof out, &k, &err), &err);
        else
            TD_ASSERT_OK(td_detok_flush(&d, out, sizeof out, &k, &err), &err);
        const char *want = i < n ? want_each[i] : want_flush;
        if (k != strlen(want) || memcmp(out, want, k) != 0) {
            fprintf(stderr, "\n  step %zu: got %zu bytes, expected %zu\n", i, k, strlen(want));
            CU_FAIL("streaming decoder output");
        }
    }
}

#define FFFD "\xEF\xBF\xBD"
static void test_stream_decoder(void) {
    td_tokenizer *t = gpt2_tok("gpt-2", NULL, 0, NULL, 0, NULL, 0);
    /* 中 and 😀 one byte at a time: nothing until complete */
    expect_stream(t, "\xe4\xb8\xad", 3, (const char *const[]){"", "", "\xe4\xb8\xad"}, "");
    expect_stream(t, "a\xf0\x9f\x98\x80z", 6, (const char *const[]){"a", "", "", "", "\xf0\x9f\x98\x80", "z"}, "");
    /* a sequence cut short: U+FFFD once it cannot complete, then the byte */
    expect_stream(t,
                  "\xf0\x9f\x98"
                  "A",
                  4, (const char *const[]){"", "", "", FFFD "A"}, "");
    expect_stream(t, "\xe4\xb8\xe4\xb8\xad", 5, (const char *const[]){"", "", FFFD, "", "\xe4\xb8\xad"}, "");
    /* bytes that can never start or continue a sequence */
    expect_stream(t, "\xff\x80\xc0\xc1\xf5", 5, (const char *const[]){FFFD, FFFD, FFFD, FFFD, FFFD}, "");
    /* overlong, surrogate, above U+10FFFF: rejected at the second byte */
    expect_stream(t, "\xe0\x80", 2, (const char *const[]){"", FFFD FFFD}, "");
    expect_stream(t, "\xed\xa0", 2, (const char *const[]){"", FFFD FFFD}, "");
    expect_stream(t, "\xf4\x90", 2, (const char *const[]){"", FFFD FFFD}, "");
    expect_stream(t, "\xed\x9f\xbf", 3, (const char *const[]){"", "", "\xed\x9f\xbf"}, "");
    /* held back at the end: the flush gives U+FFFD */
    expect_stream(t, "x\xe4\xb8", 3, (const char *const[]){"x", "", ""}, FFFD);

    /* Too small a buffer: TANDEM_ERR_LIMIT with the size, state unchanged. */
    const char *extra[] = {"\xc3\x83\xc2\xa9"}; /* é (C3 A9) as one byte-level token, id 256 */
    td_tokenizer *t2 = gpt2_tok("gpt-2", extra, 1, NULL, 0, NULL, 0);
    td_detok d;
    td_detok_init(&d, t2, 0);
    char out[8];
    size_t k;
    td_error err = {0};
    CU_ASSERT_EQUAL(td_detok_push(&d, 'a', out, 1, &k, &err), TANDEM_OK);
    CU_ASSERT_EQUAL(td_detok_push(&d, 256, out, 1, &k, &err), TANDEM_ERR_LIMIT);
    CU_ASSERT_EQUAL(k, 2);
    TD_ASSERT_OK(td_detok_push(&d, 256, out, 2, &k, &err), &err);
    CU_ASSERT(k == 2 && memcmp(out, "\xc3\xa9", 2) == 0);
    CU_ASSERT(td_detok_max_bytes(t2) >= 3 * 2);
    /* td_detokenize: the cap contract */
    int32_t seq[] = {'a', 256, 0xe4};
    size_t need;
    CU_ASSERT_EQUAL(td_detokenize(t2, seq, 3, 0, out, 2, &need, &err), TANDEM_ERR_LIMIT);
    CU_ASSERT_EQUAL(need, 6); /* a é U+FFFD */
    TD_ASSERT_OK(td_detokenize(t2, seq, 3, 0, out, 6, &need, &err), &err);
    CU_ASSERT(need == 6 && memcmp(out, "a\xc3\xa9" FFFD, 6) == 0);
    td_tokenizer_free(t2);

    /* TD_DETOK_STRIP_SPACE drops one leading space, once */
    td_detok_init(&d, t, TD_DETOK_STRIP_SPACE);
    TD_ASSERT_OK(td_detok_push(&d, ' ', out, sizeof out, &k, &err), &err);
    CU_ASSERT_EQUAL(k, 0);
    TD_ASSERT_OK(td_detok_push(&d, ' ', out, sizeof out, &k, &err), &err);
    CU_ASSERT(k == 1 && out[0] == ' ');
    td_tokenizer_free(t);
}

static void test_bad_ids_and_caps(void) {
    td_tokenizer *t = gpt2_tok("gpt-2", NULL, 0, NULL, 0, NULL, 0);
    td_error err = {0};
    const char *p;
    size_t len;
    CU_ASSERT_EQUAL(td_token_bytes(t, 256, &p, &len, &err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "token id 256"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "synthetic.gguf"));
    CU_ASSERT_EQUAL(td_token_bytes(t, -5, &p, &len, &err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "token id -5"));
    td_detok d;
    td_detok_init(&d, t, 0);
    char out[16];
    size_t k;
    TD_ASSERT_OK(td_detok_push(&d, 0xe4, out, sizeof out, &k, &err), &err);
    CU_ASSERT_EQUAL(td_detok_push(&d, 1000, out, sizeof out, &k, &err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "token id 1000"));
    CU_ASSERT_EQUAL(d.n_pend, 1); /* unchanged */
    /* cap too small: the first cap ids, the full count, TANDEM_ERR_LIMIT */
    int32_t ids[3];
    size_t n;
    CU_ASSERT_EQUAL(td_tokenize(t, "hello", 5, false, false, ids, 3, &n, &err), TANDEM_ERR_LIMIT);
    CU_ASSERT(n == 5 && ids[0] == 'h' && ids[2] == 'l');
    TD_ASSERT_OK(td_tokenize(t, "", 0, false, false, NULL, 0, &n, &err), &err);
    CU_ASSERT_EQUAL(n, 0);
    /* no BOS in this vocabulary */
    CU_ASSERT_EQUAL(td_tokenizer_bos(t), -1);
    CU_ASSERT_EQUAL(td_tokenize(t, "x", 1, true, false, ids, 3, &n, &err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "BOS"));
    td_tokenizer_free(t);
}

/* ---- load errors -------------------------------------------------------------------- */

static void expect_load_error(buf b, tandem_status want, const char *want1, const char *want2) {
    td_tokenizer *t = NULL;
    td_error err = {0};
    tandem_status st = load_buf(&b, "broken.gguf", &t, &err);
    if (st != want || t || !strstr(err.msg, "broken.gguf") || !strstr(err.msg, want1) ||
        (want2 && !strstr(err.msg, want2))) {
        fprintf(stderr, "\n  got %s '%s', expected %s mentioning '%s'%s%s\n", tandem_status_name(st), err.msg,
                tandem_status_name(want), want1, want2 ? " and " : "", want2 ? want2 : "");
        CU_FAIL("load error");
    }
    td_tokenizer_free(t);
    free(b.p);
}

static void test_load_errors(void) {
    const char *toks[] = {"a", "b", "ab"};
    const char *merges[] = {"a b"};
    const int32_t types[] = {1, 1, 1};
    const float scores[4] = {0, 0, 0, 0}; /* 4: one too many, for the length check */
    gguf_b g;

    g = (gguf_b){0};
    kv_strs(&g, "tokenizer.ggml.tokens", toks, 3);
    expect_load_error(gguf_finish(&g), TANDEM_ERR_NOT_FOUND, "tokenizer.ggml.model", NULL);

    g = (gguf_b){0};
    kv_str(&g, "tokenizer.ggml.model", "bert");
    kv_strs(&g, "tokenizer.ggml.tokens", toks, 3);
    expect_load_error(gguf_finish(&g), TANDEM_ERR_UNSUPPORTED, "tokenizer.ggml.model", "'bert'");

    g = (gguf_b){0};
    kv_str(&g, "tokenizer.ggml.model", "gpt2");
    kv_str(&g, "tokenizer.ggml.pre", "klingon");
    kv_strs(&g, "tokenizer.ggml.tokens", toks, 3);
    kv_strs(&g, "tokenizer.ggml.merges", merges, 1);
    expect_load_error(gguf_finish(&g), TANDEM_ERR_UNSUPPORTED, "tokenizer.ggml.pre", "'klingon'");

    g = (gguf_b){0};
    kv_str(&g, "tokenizer.ggml.model", "gpt2");
    kv_str(&g, "tokenizer.ggml.pre", "gpt-2");
    expect_load_error(gguf_finish(&g), TANDEM_ERR_NOT_FOUND, "tokenizer.ggml.tokens", NULL);

    g = (gguf_b){0};
    kv_str(&g, "tokenizer.ggml.model", "gpt2");
    kv_str(&g, "tokenizer.ggml.pre", "gpt-2");
    kv_str(&g, "tokenizer.ggml.tokens", "abc");
    expect_load_error(gguf_finish(&g), TANDEM_ERR_FORMAT, "tokenizer.ggml.tokens", NULL);

    g = (gguf_b){0};
    kv_str(&g, "tokenizer.ggml.model", "gpt2");
    kv_str(&g, "tokenizer.ggml.pre", "gpt-2");
    kv_strs(&g, "tokenizer.ggml.tokens", toks, 3);
    expect_load_error(gguf_finish(&g), TANDEM_ERR_NOT_FOUND, "tokenizer.ggml.merges", NULL);

    g = (gguf_b){0};
    kv_str(&g, "tokenizer.ggml.model", "gpt2");
    kv_str(&g, "tokenizer.ggml.pre", "gpt-2");
    kv_strs(&g, "tokenizer.ggml.tokens", toks, 3);
    kv_i32s(&g, "tokenizer.ggml.token_type", types, 2);
    kv_strs(&g, "tokenizer.ggml.merges", merges, 1);
    expect_load_error(gguf_finish(&g), TANDEM_ERR_FORMAT, "tokenizer.ggml.token_type", "mismatched");

    g = (gguf_b){0};
    kv_str(&g, "tokenizer.ggml.model", "llama");
    kv_strs(&g, "tokenizer.ggml.tokens", toks, 3);
    kv_f32s(&g, "tokenizer.ggml.scores", scores, 4);
    expect_load_error(gguf_finish(&g), TANDEM_ERR_FORMAT, "tokenizer.ggml.scores", "mismatched");

    g = (gguf_b){0};
    kv_str(&g, "tokenizer.ggml.model", "llama");
    kv_strs(&g, "tokenizer.ggml.tokens", toks, 3);
    kv_strs(&g, "tokenizer.ggml.scores", toks, 3);
    expect_load_error(gguf_finish(&g), TANDEM_ERR_FORMAT, "tokenizer.ggml.scores", "string");

    g = (gguf_b){0};
    kv_str(&g, "tokenizer.ggml.model", "gpt2");
    kv_str(&g, "tokenizer.ggml.pre", "gpt-2");
    kv_strs(&g, "tokenizer.ggml.tokens", toks, 3);
    kv_strs(&g, "tokenizer.ggml.merges", (const char *[]){"ab"}, 1);
    expect_load_error(gguf_finish(&g), TANDEM_ERR_FORMAT, "tokenizer.ggml.merges[0]", "'ab'");

    g = (gguf_b){0};
    kv_str(&g, "tokenizer.ggml.model", "gpt2");
    kv_str(&g, "tokenizer.ggml.pre", "gpt-2");
    kv_strs(&g, "tokenizer.ggml.tokens", toks, 3);
    kv_strs(&g, "tokenizer.ggml.merges", merges, 1);
    kv_u32(&g, "tokenizer.ggml.bos_token_id", 3);
    expect_load_error(gguf_finish(&g), TANDEM_ERR_FORMAT, "tokenizer.ggml.bos_token_id", "= 3 is out of range");

    g = (gguf_b){0};
    kv_str(&g, "tokenizer.ggml.model", "gpt2");
    kv_str(&g, "tokenizer.ggml.pre", "gpt-2");
    kv_strs(&g, "tokenizer.ggml.tokens", toks, 3);
    kv_strs(&g, "tokenizer.ggml.merges", merges, 1);
    kv_bool(&g, "tokenizer.ggml.add_bos_token", true);
    expect_load_error(gguf_finish(&g), TANDEM_ERR_FORMAT, "add_bos_token", "bos_token_id");

    g = (gguf_b){0};
    kv_str(&g, "tokenizer.ggml.model", "gpt2");
    kv_str(&g, "tokenizer.ggml.pre", "gpt-2");
    kv_strs(&g, "tokenizer.ggml.tokens", toks, 3);
    kv_strs(&g, "tokenizer.ggml.merges", merges, 1);
    kv_u32(&g, "tokenizer.ggml.add_bos_token", 1);
    expect_load_error(gguf_finish(&g), TANDEM_ERR_FORMAT, "add_bos_token", "expected bool");

    g = (gguf_b){0};
    kv_str(&g, "tokenizer.ggml.model", "gpt2");
    kv_str(&g, "tokenizer.ggml.pre", "gpt-2");
    kv_strs(&g, "tokenizer.ggml.tokens", (const char *[]){0}, 0);
    kv_strs(&g, "tokenizer.ggml.merges", merges, 0);
    expect_load_error(gguf_finish(&g), TANDEM_ERR_FORMAT, "tokenizer.ggml.tokens", "0 entries");

    /* A valid small file loads, and a pad id out of range is only ignored. */
    g = (gguf_b){0};
    kv_u32(&g, "tokenizer.ggml.padding_token_id", 999);
    kv_u32(&g, "tokenizer.ggml.eos_token_id", 2);
    buf b = gpt2_vocab("gpt-2", NULL, 0, NULL, 0, NULL, 0, &g);
    td_tokenizer *t;
    td_error err = {0};
    TD_ASSERT_OK(load_buf(&b, "ok.gguf", &t, &err), &err);
    CU_ASSERT_EQUAL(td_tokenizer_pad(t), -1);
    CU_ASSERT_EQUAL(td_tokenizer_eos(t), 2);
    CU_ASSERT(td_tokenizer_is_eog(t, 2));
    free(b.p);
    td_tokenizer_free(t);
}

/* SentencePiece on a tiny vocabulary: merge by score (not by order), byte
 * fallback, add_space_prefix = false. */
static void test_spm_synthetic(void) {
    /* ids: 0 <unk>, 1 <s>, 2 </s>, 3..258 <0x00>..<0xFF>, then pieces */
    const char *pieces[] = {"\xe2\x96\x81", "a", "b", "c", "ab", "bc", "\xe2\x96\x81\x61"}; /* the last: ▁a */
    const float piece_scores[] = {-1, -1, -1, -1, -5, -2, -3};
    enum { NP = 7, N = 3 + 256 + NP };
    const char *toks[N];
    char hex[256][7];
    int32_t types[N];
    float scores[N] = {0};
    toks[0] = "<unk>", toks[1] = "<s>", toks[2] = "</s>";
    types[0] = TD_TOKEN_UNKNOWN, types[1] = types[2] = TD_TOKEN_CONTROL;
    for (int b = 0; b < 256; b++) {
        snprintf(hex[b], sizeof hex[b], "<0x%02X>", b);
        toks[3 + b] = hex[b];
        types[3 + b] = TD_TOKEN_BYTE;
    }
    for (int i = 0; i < NP; i++) {
        toks[259 + i] = pieces[i];
        types[259 + i] = TD_TOKEN_NORMAL;
        scores[259 + i] = piece_scores[i];
    }
    const int32_t SP = 259, A = 260, B = 261, C = 262, AB = 263, BC = 264, SPA = 265;
    for (int prefix = 0; prefix < 2; prefix++) {
        gguf_b g = {0};
        kv_str(&g, "tokenizer.ggml.model", "llama");
        kv_strs(&g, "tokenizer.ggml.tokens", toks, N);
        kv_f32s(&g, "tokenizer.ggml.scores", scores, N);
        kv_i32s(&g, "tokenizer.ggml.token_type", types, N);
        if (!prefix)
            kv_bool(&g, "tokenizer.ggml.add_space_prefix", false);
        buf b = gguf_finish(&g);
        td_tokenizer *t;
        td_error err = {0};
        TD_ASSERT_OK(load_buf(&b, "spm.gguf", &t, &err), &err);
        free(b.p);
        if (prefix) {
            EXPECT_IDS(t, "abc", false, SPA, BC); /* ▁a (-3) beats ab (-5); bc (-2) first anyway */
            EXPECT_IDS(t, "bc a", false, SP, BC, SPA);
        } else {
            EXPECT_IDS(t, "abc", false, A, BC); /* bc (-2) before ab (-5) */
            EXPECT_IDS(t, "ab", false, AB);
            EXPECT_IDS(t, "cz", false, C, 3 + 'z'); /* z: byte fallback */
            EXPECT_IDS(t, "b</s>c", true, B, 2, C);
        }
        td_tokenizer_free(t);
    }
}

void td_test_register(void) {
    static const td_test llama_cpp[] = {
        {"gpt2_vectors", test_llama_cpp_gpt2},
        {"spm_vectors", test_llama_cpp_spm},
        {"spm_details", test_spm_details},
        {NULL, NULL},
    };
    static const td_test rules[] = {
        {"merge_rank_order", test_merge_rank_order},
        {"pre_tokenizer_choice", test_pre_tokenizer_choice},
        {"ignore_merges", test_ignore_merges},
        {"special_matching", test_special_matching},
        {"stream_decoder", test_stream_decoder},
        {"bad_ids_and_caps", test_bad_ids_and_caps},
        {"load_errors", test_load_errors},
        {"spm_synthetic", test_spm_synthetic},
        {NULL, NULL},
    };
    static const td_test smollm[] = {
        {"ids_vs_hugging_face", test_smollm_ids},
        {"decode_vs_hugging_face", test_smollm_decode},
        {"pre_tokenizer_splits", test_pre_tokenizer_splits},
        {"specials_bos_eog", test_smollm_specials},
        {"threads", test_threads},
        {"long_runs_not_quadratic", test_long_runs_not_quadratic},
        {NULL, NULL},
    };
    td_add_suite("tokenizer_llama_cpp_vectors", llama_cpp);
    td_add_suite("tokenizer_rules", rules);
    td_add_suite("tokenizer_smollm2", smollm);
}
