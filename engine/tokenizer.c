/* Tokenizer: see tokenizer.h. The algorithms follow llama.cpp's
 * src/llama-vocab.cpp (BPE merge by rank, SentencePiece merge by score,
 * special-token partition, token-to-piece), whose test vectors are Hugging
 * Face's output; regexes run on PCRE2 instead of llama.cpp's hand-written
 * Unicode tables. */
#include "engine/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

enum { KIND_GPT2 = 1, KIND_SPM = 2 };
enum { FLAG_EOG = 1 };
#define MAX_RE 4

/* One merge: the pair (left id, right id) becomes id, at this rank. */
typedef struct pair_slot {
    uint64_t key; /* left << 32 | right; PAIR_EMPTY when free */
    int32_t rank;
    int32_t id;
} pair_slot;
#define PAIR_EMPTY UINT64_MAX

struct td_tokenizer {
    int kind;
    char model[8];
    char *pre;  /* as the file names it ("" when absent) */
    char *file; /* for messages */
    int32_t n_vocab;
    uint8_t *type;  /* td_token_type per token */
    uint8_t *flags; /* FLAG_* per token */
    float *score;   /* llama: merge priority; NULL for gpt2 */
    /* The token's text as in the file, and the bytes it renders to. */
    char *text;
    uint32_t *text_off; /* n_vocab + 1 */
    char *piece;
    uint32_t *piece_off;
    size_t max_piece;
    /* Bytes -> id (the first id on duplicates): keyed on the rendered bytes
     * for gpt2 (what BPE builds), on the text for llama (U+2581 included). */
    int32_t *map;
    uint32_t map_mask;
    int32_t byte_id[256]; /* the token of a lone byte; -1 when none */
    /* gpt2 merges */
    pair_slot *pairs;
    uint64_t pair_mask;
    /* Tokens matched in the text before tokenizing (control, unknown,
     * user-defined), sorted by first byte, then longest first; special_first[c]
     * .. special_first[c + 1] are those starting with byte c. */
    int32_t *special;
    int32_t special_first[257];
    int32_t bos, eos, eot, eom, unk, pad;
    bool add_bos, add_eos, add_space_prefix;
    bool ignore_merges; /* llama3: a piece that is a whole token is not merged */
    pcre2_code *re[MAX_RE];
    int n_re;
};

/* ---- small helpers ---------------------------------------------------------- */

static const char *tok_text(const td_tokenizer *t, int32_t id, size_t *len) {
    *len = t->text_off[id + 1] - t->text_off[id];
    return t->text + t->text_off[id];
}

static const char *tok_piece(const td_tokenizer *t, int32_t id, size_t *len) {
    *len = t->piece_off[id + 1] - t->piece_off[id];
    return t->piece + t->piece_off[id];
}

static uint64_t hash_bytes(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

static uint64_t hash_pair(uint64_t key) {
    key = (key ^ (key >> 33)) * 0xff51afd7ed558ccdull;
    key = (key ^ (key >> 33)) * 0xc4ceb9fe1a85ec53ull;
    return key ^ (key >> 33);
}

/* Keys of the bytes -> id map. */
static const char *map_key(const td_tokenizer *t, int32_t id, size_t *len) {
    return t->kind == KIND_GPT2 ? tok_piece(t, id, len) : tok_text(t, id, len);
}

static int32_t lookup(const td_tokenizer *t, const void *p, size_t n) {
    for (uint32_t i = (uint32_t)hash_bytes(p, n) & t->map_mask;; i = (i + 1) & t->map_mask) {
        int32_t id = t->map[i];
        if (id < 0)
            return -1;
        size_t len;
        const char *k = map_key(t, id, &len);
        if (len == n && memcmp(k, p, n) == 0)
            return id;
    }
}

static const pair_slot *find_pair(const td_tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (uint64_t i = hash_pair(key) & t->pair_mask;; i = (i + 1) & t->pair_mask) {
        if (t->pairs[i].key == key)
            return &t->pairs[i];
        if (t->pairs[i].key == PAIR_EMPTY)
            return NULL;
    }
}

/* Length of the well-formed UTF-8 sequence at s (1..4), 0 when the byte at s
 * does not start one (overlongs, surrogates and > U+10FFFF are ill-formed). */
static size_t utf8_seq(const uint8_t *s, size_t n) {
    uint8_t c = s[0];
    if (c < 0x80)
        return 1;
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c < 0xC2)
        return 0;
    else if (c < 0xE0)
        need = 2;
    else if (c < 0xF0)
        need = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c < 0xF5)
        need = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else
        return 0;
    if (n < need || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < need; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return need;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
 * the other 68 map to U+0100.. in byte order. unicode_byte[cp] inverts it
 * (-1: not in the alphabet); every code point of the alphabet is < 0x144. */
#define BYTE_ALPHABET_END 0x144
static void gpt2_alphabet(int16_t unicode_byte[BYTE_ALPHABET_END]) {
    for (int i = 0; i < BYTE_ALPHABET_END; i++)
        unicode_byte[i] = -1;
    int next = 256;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        unicode_byte[printable ? b : next++] = (int16_t)b;
    }
}

/* ---- load ----------------------------------------------------------------- */

/* Pre-tokenizer regexes. GPT-2's is Hugging Face ByteLevel's, final \s+
 * included (llama.cpp leaves it out and keeps the unmatched stretches, which
 * comes to the same pieces). */
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
/* Llama-3's tokenizer.json regex as it is: PCRE2 has (?i:), which llama.cpp
 * spells out as [sS] etc. for std::regex. */
#define RE_LLAMA3                                                                                                      \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "                                         \
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"                                                                     \
    "\\s+(?!\\S)|\\s+"

typedef struct pre_def {
    const char *names[7];
    const char *re[MAX_RE];
    bool ignore_merges, add_bos;
} pre_def;

static const pre_def PRE_DEFS[] = {
    {{"gpt-2", "phi-2", "mpt", "olmo"}, {RE_GPT2}, false, false},
    /* SmolLM and the StarCoder family: every digit alone, then GPT-2's. */
    {{"smollm", "starcoder", "refact", "codeshell"}, {"\\p{N}", RE_GPT2}, false, false},
    {{"llama3", "llama-v3", "llama-bpe", "falcon3"}, {RE_LLAMA3}, true, true},
    {{"dbrx", "smaug-bpe"}, {RE_LLAMA3}, false, false},
    /* llama.cpp's LLAMA_VOCAB_PRE_TYPE_DEFAULT, also what it uses when the
     * file names no pre-tokenizer. */
    {{"default"}, {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}, false, false},
};
#define PRE_DEFAULT (&PRE_DEFS[sizeof PRE_DEFS / sizeof PRE_DEFS[0] - 1])

/* Texts llama.cpp treats as end of generation whatever the keys say. */
static const char *const EOG_TEXTS[] = {"<|eot_id|>",    "<|im_end|>",      "<|end|>", "<end_of_turn>",
                                        "<|endoftext|>", "<|end_of_text|>", "<EOT>",   "<|eom_id|>"};

static char *dup_str(const char *p, size_t n) {
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

/* An optional token id key: def when absent; out-of-range ids are an error
 * when required_in_range (BOS, EOS: a model cannot run without them right),
 * else treated as absent, as llama.cpp does. */
static tandem_status opt_id(const td_gguf *g, const td_tokenizer *t, const char *key, int32_t def,
                            bool required_in_range, int32_t *out, td_error *err) {
    *out = def >= 0 && def < t->n_vocab ? def : -1;
    if (!td_gguf_find(g, key))
        return TANDEM_OK;
    uint32_t v;
    tandem_status st = td_gguf_get_u32(g, key, &v, err);
    if (st == TANDEM_ERR_FORMAT && !required_in_range)
        return TANDEM_OK; /* negative or absurd: treated as absent */
    if (st)
        return st;
    if (v >= (uint32_t)t->n_vocab) {
        if (required_in_range)
            return td_fail(err, TANDEM_ERR_FORMAT, "%s: '%s' = %u is out of range (vocabulary of %d tokens)", t->file,
                           key, v, t->n_vocab);
        return TANDEM_OK;
    }
    *out = (int32_t)v;
    return TANDEM_OK;
}

static tandem_status opt_bool(const td_gguf *g, const td_tokenizer *t, const char *key, bool *out, td_error *err) {
    const td_gguf_value *v = td_gguf_find(g, key);
    if (!v)
        return TANDEM_OK;
    if (v->type != TD_GGUF_BOOL)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: '%s' is %s, expected bool", t->file, key,
                       td_gguf_type_name(v->type));
    *out = v->u != 0;
    return TANDEM_OK;
}

/* An optional numeric array of n elements; NULL when absent. */
static tandem_status opt_array(const td_gguf *g, const td_tokenizer *t, const char *key, const td_gguf_type *types,
                               int n_types, const td_gguf_value **out, td_error *err) {
    *out = NULL;
    if (!td_gguf_find(g, key))
        return TANDEM_OK;
    const td_gguf_value *a;
    tandem_status st = td_gguf_get_arr(g, key, TD_GGUF_TYPE_COUNT, &a, err);
    if (st)
        return st;
    bool ok = false;
    for (int i = 0; i < n_types; i++)
        ok |= a->arr.type == types[i];
    if (!ok)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: '%s' is an array of %s, expected %s", t->file, key,
                       td_gguf_type_name(a->arr.type), td_gguf_type_name(types[0]));
    if (a->arr.n != (uint64_t)t->n_vocab)
        return td_fail(err, TANDEM_ERR_FORMAT,
                       "%s: '%s' has %llu entries but tokenizer.ggml.tokens has %d: mismatched array lengths", t->file,
                       key, (unsigned long long)a->arr.n, t->n_vocab);
    *out = a;
    return TANDEM_OK;
}

/* Renders gpt2 token text as bytes: alphabet code points to their byte, any
 * other character as its own UTF-8 (as Hugging Face reads such tokens). */
static size_t gpt2_decode(const int16_t *unicode_byte, const char *s, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq((const uint8_t *)s + i, n - i);
        if (k == 0) { /* not UTF-8 at all: keep the byte */
            out[o++] = s[i++];
            continue;
        }
        uint32_t cp = (uint8_t)s[i];
        if (k > 1) {
            cp &= 0x3F >> (k - 1);
            for (size_t j = 1; j < k; j++)
                cp = cp << 6 | ((uint8_t)s[i + j] & 0x3F);
        }
        if (cp < BYTE_ALPHABET_END && unicode_byte[cp] >= 0)
            out[o++] = (char)unicode_byte[cp];
        else
            memcpy(out + o, s + i, k), o += k;
        i += k;
    }
    return o;
}

/* "<0xAB>" -> 0xAB; -1 when s is not that. */
static int parse_byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

static tandem_status build_pieces(td_tokenizer *t, td_error *err) {
    int16_t unicode_byte[BYTE_ALPHABET_END];
    gpt2_alphabet(unicode_byte);
    /* A rendered piece is never longer than the text: alphabet characters
     * shrink to one byte, U+2581 (3 bytes) to a space, <0xXX> to a byte. */
    size_t total = t->text_off[t->n_vocab];
    t->piece = malloc(total ? total : 1);
    t->piece_off = malloc(((size_t)t->n_vocab + 1) * sizeof *t->piece_off);
    if (!t->piece || !t->piece_off)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "%s: no memory for the token pieces", t->file);
    uint32_t o = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t n;
        const char *s = tok_text(t, id, &n);
        char *out = t->piece + o;
        size_t m = n;
        int type = t->type[id];
        bool plain = type == TD_TOKEN_NORMAL || type == TD_TOKEN_UNDEFINED || type == TD_TOKEN_UNUSED;
        if (t->kind == KIND_GPT2 && plain) {
            m = gpt2_decode(unicode_byte, s, n, out);
        } else if (t->kind == KIND_SPM && type == TD_TOKEN_BYTE && parse_byte_token(s, n) >= 0) {
            out[0] = (char)parse_byte_token(s, n);
            m = 1;
        } else if (t->kind == KIND_SPM && plain) {
            m = 0;
            for (size_t i = 0; i < n; i++) {
                if (i + 3 <= n && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
                    out[m++] = ' ';
                    i += 2;
                } else {
                    out[m++] = s[i];
                }
            }
        } else {
            memcpy(out, s, n); /* special tokens render as their text */
        }
        t->piece_off[id] = o;
        o += (uint32_t)m;
        if (m > t->max_piece)
            t->max_piece = m;
    }
    t->piece_off[t->n_vocab] = o;
    return TANDEM_OK;
}

static tandem_status build_map(td_tokenizer *t, td_error *err) {
    uint32_t cap = 1024;
    while (cap < 2u * (uint32_t)t->n_vocab)
        cap *= 2;
    t->map = malloc((size_t)cap * sizeof *t->map);
    if (!t->map)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "%s: no memory for the vocabulary map", t->file);
    memset(t->map, 0xff, (size_t)cap * sizeof *t->map);
    t->map_mask = cap - 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t n;
        const char *k = map_key(t, id, &n);
        if (n == 0 || lookup(t, k, n) >= 0)
            continue; /* empty, or a duplicate: the first id keeps the text */
        uint32_t i = (uint32_t)hash_bytes(k, n) & t->map_mask;
        while (t->map[i] >= 0)
            i = (i + 1) & t->map_mask;
        t->map[i] = id;
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_id[b] = -1;
        if (t->kind == KIND_SPM) {
            char hex[7];
            snprintf(hex, sizeof hex, "<0x%02X>", b);
            t->byte_id[b] = lookup(t, hex, 6);
        }
        if (t->byte_id[b] < 0)
            t->byte_id[b] = lookup(t, &c, 1);
    }
    return TANDEM_OK;
}

/* Ranks from tokenizer.ggml.merges ("left right", both in the byte
 * alphabet). A merge whose parts or result is not a token can never apply
 * to ids and is skipped; a repeated pair keeps its first (best) rank. */
static tandem_status build_merges(td_tokenizer *t, const td_gguf *g, td_error *err) {
    const td_gguf_value *a;
    tandem_status st = td_gguf_get_arr(g, "tokenizer.ggml.merges", TD_GGUF_STRING, &a, err);
    if (st)
        return st;
    if (a->arr.n > INT32_MAX)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: tokenizer.ggml.merges has %llu entries", t->file,
                       (unsigned long long)a->arr.n);
    uint64_t cap = 1024;
    while (cap < 2 * a->arr.n)
        cap *= 2;
    t->pairs = malloc(cap * sizeof *t->pairs);
    char *buf = malloc(t->max_piece * 4 + 64);
    size_t buf_cap = t->max_piece * 4 + 64;
    if (!t->pairs || !buf) {
        free(buf);
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "%s: no memory for %llu merges", t->file,
                       (unsigned long long)a->arr.n);
    }
    for (uint64_t i = 0; i < cap; i++)
        t->pairs[i].key = PAIR_EMPTY;
    t->pair_mask = cap - 1;
    int16_t unicode_byte[BYTE_ALPHABET_END];
    gpt2_alphabet(unicode_byte);
    for (uint64_t r = 0; r < a->arr.n; r++) {
        td_gguf_str m = a->arr.strs[r];
        const char *sp = m.len > 1 ? memchr(m.ptr + 1, ' ', m.len - 1) : NULL;
        if (!sp) {
            free(buf);
            return td_fail(err, TANDEM_ERR_FORMAT, "%s: tokenizer.ggml.merges[%llu] = '%.*s' is not two tokens",
                           t->file, (unsigned long long)r, (int)(m.len > 64 ? 64 : m.len), m.ptr);
        }
        size_t nl = (size_t)(sp - m.ptr), nr = m.len - nl - 1;
        if (nl + nr > buf_cap) /* a merge longer than any token cannot name tokens */
            continue;
        size_t bl = gpt2_decode(unicode_byte, m.ptr, nl, buf);
        size_t br = gpt2_decode(unicode_byte, sp + 1, nr, buf + bl);
        int32_t left = lookup(t, buf, bl), right = lookup(t, buf + bl, br), id = lookup(t, buf, bl + br);
        if (left < 0 || right < 0 || id < 0)
            continue;
        uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
        uint64_t j = hash_pair(key) & t->pair_mask;
        while (t->pairs[j].key != PAIR_EMPTY && t->pairs[j].key != key)
            j = (j + 1) & t->pair_mask;
        if (t->pairs[j].key == key)
            continue;
        t->pairs[j] = (pair_slot){key, (int32_t)r, id};
    }
    free(buf);
    return TANDEM_OK;
}

/* Sort key for the special-token table: first byte, then longer first, then
 * lower id (self-contained, so plain qsort needs no context). */
typedef struct special_key {
    uint8_t first;
    uint32_t len;
    int32_t id;
} special_key;

static int special_cmp(const void *pa, const void *pb) {
    const special_key *a = pa, *b = pb;
    if (a->first != b->first)
        return a->first < b->first ? -1 : 1;
    if (a->len != b->len)
        return a->len > b->len ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

static tandem_status build_specials(td_tokenizer *t, td_error *err) {
    int32_t n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        int ty = t->type[id];
        if ((ty == TD_TOKEN_CONTROL || ty == TD_TOKEN_UNKNOWN || ty == TD_TOKEN_USER_DEFINED) &&
            t->text_off[id + 1] > t->text_off[id])
            n++;
    }
    special_key *keys = malloc((n ? (size_t)n : 1) * sizeof *keys);
    t->special = malloc((n ? (size_t)n : 1) * sizeof *t->special);
    if (!keys || !t->special) {
        free(keys);
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "%s: no memory for %d special tokens", t->file, n);
    }
    int32_t k = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        int ty = t->type[id];
        size_t len;
        const char *s = tok_text(t, id, &len);
        if ((ty == TD_TOKEN_CONTROL || ty == TD_TOKEN_UNKNOWN || ty == TD_TOKEN_USER_DEFINED) && len > 0)
            keys[k++] = (special_key){(uint8_t)s[0], (uint32_t)len, id};
    }
    qsort(keys, (size_t)n, sizeof *keys, special_cmp);
    int32_t j = 0;
    for (int c = 0; c < 256; c++) {
        t->special_first[c] = j;
        while (j < n && keys[j].first == c) {
            t->special[j] = keys[j].id;
            j++;
        }
    }
    t->special_first[256] = n;
    free(keys);
    return TANDEM_OK;
}

static tandem_status compile_res(td_tokenizer *t, const pre_def *pre, td_error *err) {
    for (int i = 0; i < MAX_RE && pre->re[i]; i++) {
        int code;
        PCRE2_SIZE at;
        t->re[i] =
            pcre2_compile((PCRE2_SPTR)pre->re[i], PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &code, &at, NULL);
        if (!t->re[i]) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(code, msg, sizeof msg);
            return td_fail(err, TANDEM_ERR_INTERNAL, "%s: pre-tokenizer regex %d does not compile at %zu: %s", t->file,
                           i, (size_t)at, (const char *)msg);
        }
        /* JIT when this PCRE2 has it; the interpreter gives the same matches. */
        (void)pcre2_jit_compile(t->re[i], PCRE2_JIT_COMPLETE);
        t->n_re = i + 1;
    }
    return TANDEM_OK;
}

tandem_status td_tokenizer_load(const td_gguf *g, td_tokenizer **out, td_error *err) {
    *out = NULL;
    const char *file = td_gguf_name(g);
    td_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "%s: no memory for the tokenizer", file);
    tandem_status st = TANDEM_OK;
    t->file = dup_str(file, strlen(file));
    if (!t->file) {
        st = td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "%s: no memory for the tokenizer", file);
        goto fail;
    }

    td_gguf_str model;
    if ((st = td_gguf_get_str(g, "tokenizer.ggml.model", &model, err)))
        goto fail;
    if (td_gguf_str_eq(model, "gpt2")) {
        t->kind = KIND_GPT2;
    } else if (td_gguf_str_eq(model, "llama")) {
        t->kind = KIND_SPM;
    } else {
        st = td_fail(err, TANDEM_ERR_UNSUPPORTED,
                     "%s: tokenizer.ggml.model '%.*s' is not supported (supported: gpt2, llama)", file,
                     (int)(model.len > 64 ? 64 : model.len), model.ptr);
        goto fail;
    }
    snprintf(t->model, sizeof t->model, "%s", t->kind == KIND_GPT2 ? "gpt2" : "llama");

    td_gguf_str pre = {"", 0};
    if (td_gguf_find(g, "tokenizer.ggml.pre") && (st = td_gguf_get_str(g, "tokenizer.ggml.pre", &pre, err)))
        goto fail;
    if (!(t->pre = dup_str(pre.ptr, pre.len))) {
        st = td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "%s: no memory for the tokenizer", file);
        goto fail;
    }
    const pre_def *pdef = NULL;
    if (t->kind == KIND_GPT2) {
        if (pre.len == 0)
            pdef = PRE_DEFAULT;
        for (size_t i = 0; !pdef && i < sizeof PRE_DEFS / sizeof PRE_DEFS[0]; i++)
            for (int j = 0; j < 7 && PRE_DEFS[i].names[j]; j++)
                if (strcmp(t->pre, PRE_DEFS[i].names[j]) == 0)
                    pdef = &PRE_DEFS[i];
        if (!pdef) {
            st = td_fail(err, TANDEM_ERR_UNSUPPORTED,
                         "%s: tokenizer.ggml.pre '%.*s' is not a supported pre-tokenizer (gpt-2, smollm, llama-bpe, "
                         "llama3, default, ...)",
                         file, (int)(pre.len > 64 ? 64 : pre.len), pre.ptr);
            goto fail;
        }
    }

    const td_gguf_value *toks;
    if ((st = td_gguf_get_arr(g, "tokenizer.ggml.tokens", TD_GGUF_STRING, &toks, err)))
        goto fail;
    if (toks->arr.n == 0 || toks->arr.n > INT32_MAX) {
        st = td_fail(err, TANDEM_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %llu entries", file,
                     (unsigned long long)toks->arr.n);
        goto fail;
    }
    t->n_vocab = (int32_t)toks->arr.n;
    size_t nv = (size_t)t->n_vocab;

    const td_gguf_value *types, *scores;
    static const td_gguf_type type_types[] = {TD_GGUF_INT32, TD_GGUF_UINT32};
    static const td_gguf_type score_types[] = {TD_GGUF_FLOAT32, TD_GGUF_INT32};
    if ((st = opt_array(g, t, "tokenizer.ggml.token_type", type_types, 2, &types, err)) ||
        (st = opt_array(g, t, "tokenizer.ggml.scores", score_types, 2, &scores, err)))
        goto fail;

    t->type = malloc(nv);
    t->flags = calloc(nv, 1);
    t->text_off = malloc((nv + 1) * sizeof *t->text_off);
    if (t->kind == KIND_SPM)
        t->score = calloc(nv, sizeof *t->score);
    uint64_t total = 0;
    for (size_t i = 0; i < nv; i++)
        total += toks->arr.strs[i].len;
    if (total > UINT32_MAX - 1) {
        st = td_fail(err, TANDEM_ERR_FORMAT, "%s: tokenizer.ggml.tokens holds %llu bytes of text", file,
                     (unsigned long long)total);
        goto fail;
    }
    t->text = malloc(total ? (size_t)total : 1);
    if (!t->type || !t->flags || !t->text_off || !t->text || (t->kind == KIND_SPM && !t->score)) {
        st = td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "%s: no memory for %d tokens", file, t->n_vocab);
        goto fail;
    }
    uint32_t o = 0;
    for (size_t i = 0; i < nv; i++) {
        td_gguf_str s = toks->arr.strs[i];
        memcpy(t->text + o, s.ptr, s.len);
        t->text_off[i] = o;
        o += (uint32_t)s.len;
        int32_t ty = TD_TOKEN_NORMAL;
        if (types)
            memcpy(&ty, types->arr.data + 4 * i, 4);
        t->type[i] = ty >= 0 && ty <= TD_TOKEN_BYTE ? (uint8_t)ty : TD_TOKEN_UNDEFINED;
        if (t->score && scores) {
            if (scores->arr.type == TD_GGUF_FLOAT32) {
                memcpy(&t->score[i], scores->arr.data + 4 * i, 4);
            } else {
                int32_t v;
                memcpy(&v, scores->arr.data + 4 * i, 4);
                t->score[i] = (float)v;
            }
        }
    }
    t->text_off[nv] = o;

    if ((st = build_pieces(t, err)) || (st = build_map(t, err)))
        goto fail;
    if (t->kind == KIND_GPT2 && (st = build_merges(t, g, err)))
        goto fail;

    /* Special ids and flags. Defaults as llama.cpp: <s>, </s>, <unk> at 1, 2,
     * 0 for llama vocabularies; add_bos for llama and Llama-3. */
    bool spm = t->kind == KIND_SPM;
    if ((st = opt_id(g, t, "tokenizer.ggml.bos_token_id", spm ? 1 : -1, true, &t->bos, err)) ||
        (st = opt_id(g, t, "tokenizer.ggml.eos_token_id", spm ? 2 : -1, true, &t->eos, err)) ||
        (st = opt_id(g, t, "tokenizer.ggml.unknown_token_id", spm ? 0 : -1, false, &t->unk, err)) ||
        (st = opt_id(g, t, "tokenizer.ggml.padding_token_id", -1, false, &t->pad, err)) ||
        (st = opt_id(g, t, "tokenizer.ggml.eot_token_id", -1, false, &t->eot, err)) ||
        (st = opt_id(g, t, "tokenizer.ggml.eom_token_id", -1, false, &t->eom, err)))
        goto fail;
    /* A default add_bos with no BOS token is dropped; the file asking for it
     * is an error (llama.cpp refuses both). */
    t->add_bos = (spm || (pdef && pdef->add_bos)) && t->bos >= 0;
    t->add_space_prefix = spm;
    t->ignore_merges = pdef && pdef->ignore_merges;
    if ((st = opt_bool(g, t, "tokenizer.ggml.add_bos_token", &t->add_bos, err)) ||
        (st = opt_bool(g, t, "tokenizer.ggml.add_eos_token", &t->add_eos, err)) ||
        (st = opt_bool(g, t, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, err)))
        goto fail;
    if (t->add_bos && t->bos < 0) {
        st = td_fail(err, TANDEM_ERR_FORMAT, "%s: tokenizer.ggml.add_bos_token is true but there is no bos_token_id",
                     file);
        goto fail;
    }
    for (size_t i = 0; i < sizeof EOG_TEXTS / sizeof EOG_TEXTS[0]; i++) {
        /* (gpt2 keys are rendered bytes: special tokens render as their text) */
        int32_t id = lookup(t, EOG_TEXTS[i], strlen(EOG_TEXTS[i]));
        if (id >= 0) {
            t->flags[id] |= FLAG_EOG;
            if (t->eot < 0 && strcmp(EOG_TEXTS[i], "<|eom_id|>") != 0)
                t->eot = id;
            if (t->eom < 0 && strcmp(EOG_TEXTS[i], "<|eom_id|>") == 0)
                t->eom = id;
        }
    }
    int32_t eogs[3] = {t->eos, t->eot, t->eom};
    for (int i = 0; i < 3; i++)
        if (eogs[i] >= 0)
            t->flags[eogs[i]] |= FLAG_EOG;

    if ((st = build_specials(t, err)))
        goto fail;
    if (pdef && (st = compile_res(t, pdef, err)))
        goto fail;
    *out = t;
    return TANDEM_OK;

fail:
    td_tokenizer_free(t);
    return st;
}

void td_tokenizer_free(td_tokenizer *t) {
    if (!t)
        return;
    for (int i = 0; i < t->n_re; i++)
        pcre2_code_free(t->re[i]);
    free(t->special);
    free(t->pairs);
    free(t->map);
    free(t->piece_off);
    free(t->piece);
    free(t->text_off);
    free(t->text);
    free(t->score);
    free(t->flags);
    free(t->type);
    free(t->pre);
    free(t->file);
    free(t);
}

int32_t td_tokenizer_n_vocab(const td_tokenizer *t) { return t->n_vocab; }
int32_t td_tokenizer_bos(const td_tokenizer *t) { return t->bos; }
int32_t td_tokenizer_eos(const td_tokenizer *t) { return t->eos; }
int32_t td_tokenizer_eot(const td_tokenizer *t) { return t->eot; }
int32_t td_tokenizer_pad(const td_tokenizer *t) { return t->pad; }
bool td_tokenizer_add_bos(const td_tokenizer *t) { return t->add_bos; }
bool td_tokenizer_add_eos(const td_tokenizer *t) { return t->add_eos; }
const char *td_tokenizer_model(const td_tokenizer *t) { return t->model; }
const char *td_tokenizer_pre(const td_tokenizer *t) { return t->pre; }

bool td_tokenizer_is_eog(const td_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && (t->flags[id] & FLAG_EOG);
}

td_token_type td_tokenizer_token_type(const td_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab ? (td_token_type)t->type[id] : TD_TOKEN_UNDEFINED;
}

static tandem_status bad_id(const td_tokenizer *t, int32_t id, td_error *err) {
    return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: token id %d is out of range (vocabulary of %d tokens)",
                   t->file, id, t->n_vocab);
}

tandem_status td_token_bytes(const td_tokenizer *t, int32_t id, const char **bytes, size_t *len, td_error *err) {
    if (id < 0 || id >= t->n_vocab)
        return bad_id(t, id, err);
    *bytes = tok_piece(t, id, len);
    return TANDEM_OK;
}

/* ---- tokenize ----------------------------------------------------------------- */

typedef struct sym {
    int32_t id;    /* gpt2: the token; -1 once merged into its left neighbour */
    int32_t start; /* llama: offset in the escaped text */
    int32_t len;   /* llama: bytes; 0 once merged */
    int32_t prev, next;
} sym;

/* A candidate merge of symbols left and right. gpt2: key = rank (lower
 * first); llama: key = score (higher first). Ties: leftmost first. */
typedef struct cand {
    float score;
    int32_t rank;
    int32_t left, right;
    int32_t lid, rid, id; /* gpt2: the ids it was made for, and the result */
    int32_t size;         /* llama: bytes of the merged text */
} cand;

/* Per-call state: what makes td_tokenize safe to call from many threads. */
typedef struct scratch {
    const td_tokenizer *t;
    td_error *err;
    pcre2_match_data *md[MAX_RE];
    int32_t *ids; /* output */
    size_t cap, n;
    size_t *ends; /* split mode: piece ends instead of ids */
    size_t base;  /* offset of the current segment in the caller's text */
    const char *san, *orig;
    size_t *san_map; /* sanitized offset -> original offset; NULL when the segment is valid UTF-8 */
    size_t *map_buf; /* san_map's storage */
    sym *syms;
    size_t syms_cap;
    cand *heap;
    size_t heap_cap, heap_n;
    char *buf; /* llama: escaped text; gpt2: sanitized text */
    size_t buf_cap;
    size_t map_cap;
} scratch;

static tandem_status oom(scratch *sc) {
    return td_fail(sc->err, TANDEM_ERR_OUT_OF_MEMORY, "%s: no memory to tokenize", sc->t->file);
}

/* Grows *p to hold n elements of size sz. */
static bool grow(void **p, size_t *cap, size_t n, size_t sz) {
    if (n <= *cap)
        return true;
    size_t c = *cap ? *cap : 64;
    while (c < n)
        c *= 2;
    void *q = realloc(*p, c * sz);
    if (!q)
        return false;
    *p = q;
    *cap = c;
    return true;
}

static void emit(scratch *sc, int32_t id) {
    if (sc->n < sc->cap)
        sc->ids[sc->n] = id;
    sc->n++;
}

static bool cand_before(const scratch *sc, const cand *a, const cand *b) {
    if (sc->t->kind == KIND_GPT2) {
        if (a->rank != b->rank)
            return a->rank < b->rank;
    } else if (a->score != b->score) {
        return a->score > b->score;
    }
    return a->left < b->left;
}

static bool heap_push(scratch *sc, cand c) {
    if (!grow((void **)&sc->heap, &sc->heap_cap, sc->heap_n + 1, sizeof *sc->heap))
        return false;
    size_t i = sc->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_before(sc, &c, &sc->heap[p]))
            break;
        sc->heap[i] = sc->heap[p];
        i = p;
    }
    sc->heap[i] = c;
    return true;
}

static cand heap_pop(scratch *sc) {
    cand top = sc->heap[0], last = sc->heap[--sc->heap_n];
    size_t i = 0, n = sc->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && cand_before(sc, &sc->heap[c + 1], &sc->heap[c]))
            c++;
        if (!cand_before(sc, &sc->heap[c], &last))
            break;
        sc->heap[i] = sc->heap[c];
        i = c;
    }
    if (n)
        sc->heap[i] = last;
    return top;
}

static bool gpt2_try(scratch *sc, int32_t l, int32_t r) {
    if (l < 0 || r < 0)
        return true;
    const pair_slot *p = find_pair(sc->t, sc->syms[l].id, sc->syms[r].id);
    if (!p)
        return true;
    return heap_push(sc, (cand){0, p->rank, l, r, sc->syms[l].id, sc->syms[r].id, p->id, 0});
}

/* Byte-level BPE of one piece (its raw bytes): start from one token per
 * byte, apply the best-ranked merge among adjacent pairs until none applies.
 * O(n log n) in the piece length, through a heap with lazy invalidation. */
static tandem_status gpt2_piece(scratch *sc, const uint8_t *p, size_t n) {
    const td_tokenizer *t = sc->t;
    if (t->ignore_merges || n == 1) {
        int32_t id = lookup(t, p, n);
        if (id >= 0 || n == 1) {
            if (id >= 0)
                emit(sc, id);
            return TANDEM_OK;
        }
    }
    if (n > INT32_MAX / 4)
        return td_fail(sc->err, TANDEM_ERR_LIMIT, "%s: a pre-tokenizer piece of %zu bytes is too long", t->file, n);
    if (!grow((void **)&sc->syms, &sc->syms_cap, n, sizeof *sc->syms))
        return oom(sc);
    /* A byte whose character is not in the vocabulary (SmolLM2 lacks 0xFF,
     * 0xC0, ...) is dropped and its neighbours may merge, as Hugging Face's
     * BPE without an unknown token does. */
    int32_t ns = 0;
    for (size_t i = 0; i < n; i++)
        if (t->byte_id[p[i]] >= 0)
            sc->syms[ns] = (sym){t->byte_id[p[i]], 0, 1, ns - 1, ns + 1}, ns++;
    if (ns == 0)
        return TANDEM_OK;
    sc->syms[ns - 1].next = -1;
    sc->heap_n = 0;
    for (int32_t i = 0; i + 1 < ns; i++)
        if (!gpt2_try(sc, i, i + 1))
            return oom(sc);
    while (sc->heap_n) {
        cand c = heap_pop(sc);
        sym *l = &sc->syms[c.left], *r = &sc->syms[c.right];
        if (l->id != c.lid || r->id != c.rid || l->next != c.right)
            continue; /* stale: one side has merged since */
        l->id = c.id;
        r->id = -1;
        l->next = r->next;
        if (r->next >= 0)
            sc->syms[r->next].prev = c.left;
        if (!gpt2_try(sc, l->prev, c.left) || !gpt2_try(sc, c.left, l->next))
            return oom(sc);
    }
    for (int32_t i = 0; i >= 0; i = sc->syms[i].next)
        emit(sc, sc->syms[i].id);
    return TANDEM_OK;
}

/* A final piece of the pre-tokenizer, as a pointer into the text the regexes
 * ran on: map it back to the caller's bytes. */
static tandem_status on_piece(scratch *sc, const char *s, size_t n) {
    size_t b = (size_t)(s - sc->san), e = b + n;
    if (sc->san_map)
        b = sc->san_map[b], e = sc->san_map[e];
    if (sc->ends) {
        if (sc->n < sc->cap)
            sc->ends[sc->n] = sc->base + e;
        sc->n++;
        return TANDEM_OK;
    }
    return gpt2_piece(sc, (const uint8_t *)sc->orig + b, e - b);
}

/* Cuts s[0..n) with regex `level`: every match and every stretch between
 * matches is a piece, which the next regex cuts further (Hugging Face's
 * Split "isolated", llama.cpp's unicode_regex_split). */
static tandem_status split_level(scratch *sc, int level, const char *s, size_t n) {
    const td_tokenizer *t = sc->t;
    if (level >= t->n_re || level >= MAX_RE) /* (the second tells the compiler the bound) */
        return on_piece(sc, s, n);
    tandem_status st;
    size_t pos = 0, at = 0;
    while (at < n) {
        /* The subject was validated (or sanitized) once per segment: no
         * per-call UTF check, which would make long texts quadratic. */
        int rc = pcre2_match(t->re[level], (PCRE2_SPTR)s, n, at, PCRE2_NO_UTF_CHECK, sc->md[level], NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* the interpreter keeps its backtracking on the heap */
            rc =
                pcre2_match(t->re[level], (PCRE2_SPTR)s, n, at, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, sc->md[level], NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return td_fail(sc->err, rc == PCRE2_ERROR_NOMEMORY ? TANDEM_ERR_OUT_OF_MEMORY : TANDEM_ERR_INTERNAL,
                           "%s: pre-tokenizer regex %d failed: %s", t->file, level, (const char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(sc->md[level]);
        size_t b = ov[0], e = ov[1];
        if (e == b) { /* an empty match: no piece, look again one character on */
            size_t k = utf8_seq((const uint8_t *)s + b, n - b);
            at = b + (k ? k : 1);
            continue;
        }
        if (b > pos && (st = split_level(sc, level + 1, s + pos, b - pos)))
            return st;
        if ((st = split_level(sc, level + 1, s + b, e - b)))
            return st;
        pos = at = e;
    }
    if (pos < n && (st = split_level(sc, level + 1, s + pos, n - pos)))
        return st;
    return TANDEM_OK;
}

/* Pre-tokenizes and merges one stretch of text without special tokens.
 * Invalid UTF-8: the regexes run on a copy where each ill-formed byte is
 * U+FFFD, and the pieces map back to the original bytes. */
static tandem_status gpt2_segment(scratch *sc, const char *s, size_t n) {
    const uint8_t *u = (const uint8_t *)s;
    size_t valid = 0;
    while (valid < n) {
        size_t k = utf8_seq(u + valid, n - valid);
        if (!k)
            break;
        valid += k;
    }
    sc->orig = s;
    sc->san = s;
    sc->san_map = NULL;
    if (valid < n) {
        if (n > SIZE_MAX / 3 - 1 || !grow((void **)&sc->buf, &sc->buf_cap, 3 * n, 1) ||
            !grow((void **)&sc->map_buf, &sc->map_cap, 3 * n + 1, sizeof *sc->map_buf))
            return oom(sc);
        sc->san_map = sc->map_buf;
        size_t o = 0;
        for (size_t i = 0; i < n;) {
            size_t k = utf8_seq(u + i, n - i);
            sc->san_map[o] = i;
            if (k) {
                for (size_t j = 0; j < k; j++)
                    sc->buf[o + j] = s[i + j];
                o += k, i += k;
            } else {
                memcpy(sc->buf + o, "\xEF\xBF\xBD", 3);
                o += 3, i += 1;
            }
        }
        sc->san_map[o] = n;
        sc->san = sc->buf;
        n = o;
    }
    return split_level(sc, 0, sc->san, n);
}

static bool spm_try(scratch *sc, int32_t l, int32_t r) {
    if (l < 0 || r < 0)
        return true;
    const sym *a = &sc->syms[l], *b = &sc->syms[r];
    int32_t id = lookup(sc->t, sc->buf + a->start, (size_t)a->len + (size_t)b->len);
    if (id < 0)
        return true;
    return heap_push(sc, (cand){sc->t->score[id], 0, l, r, 0, 0, id, a->len + b->len});
}

/* SentencePiece-style BPE of one stretch: spaces to U+2581 (a space first
 * when prefix), one symbol per UTF-8 character (per byte where ill-formed),
 * merge the adjacent pair whose union is the best-scored token until none is
 * a token, then symbols that are not tokens become byte tokens. */
static tandem_status spm_segment(scratch *sc, const char *s, size_t n, bool prefix) {
    const td_tokenizer *t = sc->t;
    if (n > INT32_MAX / 4)
        return td_fail(sc->err, TANDEM_ERR_LIMIT, "%s: a text of %zu bytes is too long", t->file, n);
    if (!grow((void **)&sc->buf, &sc->buf_cap, 3 * n + 3, 1))
        return oom(sc);
    size_t m = 0;
    if (prefix)
        memcpy(sc->buf, "\xE2\x96\x81", 3), m = 3;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ')
            memcpy(sc->buf + m, "\xE2\x96\x81", 3), m += 3;
        else
            sc->buf[m++] = s[i];
    }
    if (!grow((void **)&sc->syms, &sc->syms_cap, m, sizeof *sc->syms))
        return oom(sc);
    int32_t ns = 0;
    for (size_t i = 0; i < m;) {
        size_t k = utf8_seq((const uint8_t *)sc->buf + i, m - i);
        k = k ? k : 1;
        sc->syms[ns] = (sym){0, (int32_t)i, (int32_t)k, ns - 1, i + k < m ? ns + 1 : -1};
        ns++;
        i += k;
    }
    sc->heap_n = 0;
    for (int32_t i = 0; i + 1 < ns; i++)
        if (!spm_try(sc, i, i + 1))
            return oom(sc);
    while (sc->heap_n) {
        cand c = heap_pop(sc);
        sym *l = &sc->syms[c.left], *r = &sc->syms[c.right];
        if (l->len == 0 || r->len == 0 || l->next != c.right || l->len + r->len != c.size)
            continue; /* stale */
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0)
            sc->syms[r->next].prev = c.left;
        if (!spm_try(sc, l->prev, c.left) || !spm_try(sc, c.left, l->next))
            return oom(sc);
    }
    for (int32_t i = 0; i >= 0 && ns > 0; i = sc->syms[i].next) {
        const sym *y = &sc->syms[i];
        int32_t id = lookup(t, sc->buf + y->start, (size_t)y->len);
        if (id >= 0) {
            emit(sc, id);
            continue;
        }
        for (int32_t j = 0; j < y->len; j++) {
            uint8_t b = (uint8_t)sc->buf[y->start + j];
            int32_t bid = t->byte_id[b] >= 0 ? t->byte_id[b] : t->unk;
            if (bid < 0)
                return td_fail(sc->err, TANDEM_ERR_UNSUPPORTED, "%s: byte 0x%02x has no token and there is no <unk>",
                               t->file, b);
            emit(sc, bid);
        }
    }
    return TANDEM_OK;
}

static void scratch_free(scratch *sc) {
    for (int i = 0; i < MAX_RE; i++)
        pcre2_match_data_free(sc->md[i]);
    free(sc->syms);
    free(sc->heap);
    free(sc->buf);
    free(sc->map_buf);
}

static tandem_status scratch_init(scratch *sc, const td_tokenizer *t, td_error *err) {
    memset(sc, 0, sizeof *sc);
    sc->t = t;
    sc->err = err;
    for (int i = 0; i < t->n_re; i++)
        if (!(sc->md[i] = pcre2_match_data_create_from_pattern(t->re[i], NULL)))
            return oom(sc);
    return TANDEM_OK;
}

tandem_status td_tokenize(const td_tokenizer *t, const char *text, size_t len, bool add_bos, bool parse_special,
                          int32_t *ids, size_t cap, size_t *n_out, td_error *err) {
    *n_out = 0;
    if (!text && len)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "td_tokenize: text is NULL");
    if (!ids && cap)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "td_tokenize: ids is NULL with cap %zu", cap);
    if (add_bos && t->bos < 0)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: add_bos asked but the vocabulary has no BOS token",
                       t->file);
    scratch sc;
    tandem_status st = scratch_init(&sc, t, err);
    if (st)
        goto done;
    sc.ids = ids;
    sc.cap = cap;
    if (add_bos)
        emit(&sc, t->bos);
    /* Special tokens split the text; llama vocabularies put the prefix space
     * in front of the first stretch and of every stretch after a special
     * token (llama.cpp's "is_prev_special"). */
    bool after_special = true;
    size_t seg = 0;
    for (size_t i = 0; i <= len; i++) {
        int32_t hit = -1;
        size_t hit_len = 0;
        if (i < len) {
            uint8_t c = (uint8_t)text[i];
            for (int32_t k = t->special_first[c]; k < t->special_first[c + 1]; k++) {
                int32_t id = t->special[k];
                if (!parse_special && t->type[id] != TD_TOKEN_USER_DEFINED)
                    continue;
                size_t tl;
                const char *tt = tok_text(t, id, &tl);
                if (tl <= len - i && memcmp(tt, text + i, tl) == 0) {
                    hit = id, hit_len = tl;
                    break; /* longest first */
                }
            }
            if (hit < 0)
                continue;
        }
        if (i > seg) {
            st = t->kind == KIND_GPT2 ? gpt2_segment(&sc, text + seg, i - seg)
                                      : spm_segment(&sc, text + seg, i - seg, t->add_space_prefix && after_special);
            if (st)
                goto done;
            after_special = false;
        }
        if (hit >= 0) {
            emit(&sc, hit);
            after_special = true;
            i += hit_len - 1;
            seg = i + 1;
        }
    }
    *n_out = sc.n;
    if (sc.n > cap)
        st = td_fail(err, TANDEM_ERR_LIMIT, "td_tokenize: the text needs %zu tokens, room for %zu", sc.n, cap);
done:
    scratch_free(&sc);
    return st;
}

tandem_status td_tokenizer_split(const td_tokenizer *t, const char *text, size_t len, size_t *ends, size_t cap,
                                 size_t *n_out, td_error *err) {
    *n_out = 0;
    if (t->kind != KIND_GPT2)
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "%s: a %s vocabulary has no pre-tokenizer", t->file, t->model);
    if ((!text && len) || (!ends && cap))
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "td_tokenizer_split: NULL buffer");
    scratch sc;
    tandem_status st = scratch_init(&sc, t, err);
    if (!st) {
        sc.ends = ends;
        sc.cap = cap;
        if (len)
            st = gpt2_segment(&sc, text, len);
    }
    if (!st) {
        *n_out = sc.n;
        if (sc.n > cap)
            st = td_fail(err, TANDEM_ERR_LIMIT, "td_tokenizer_split: %zu pieces, room for %zu", sc.n, cap);
    }
    scratch_free(&sc);
    return st;
}

/* ---- detokenize --------------------------------------------------------------- */

size_t td_detok_max_bytes(const td_tokenizer *t) {
    /* every byte in, held back ones included, at worst one U+FFFD (3 bytes) */
    return 3 * (t->max_piece + 3);
}

void td_detok_init(td_detok *d, const td_tokenizer *t, unsigned flags) {
    memset(d, 0, sizeof *d);
    d->t = t;
    d->flags = flags;
}

static size_t put(char *out, size_t o, const void *p, size_t n) {
    if (out)
        memcpy(out + o, p, n);
    return o + n;
}

/* Runs bytes through the UTF-8 decoder of d: complete sequences go out, a
 * valid prefix waits in d->pend, a byte that cannot continue it ends it as
 * one U+FFFD (and is then looked at afresh). out NULL: only counts. */
static size_t feed(td_detok *d, const uint8_t *s, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (d->n_pend) {
            uint8_t lo = 0x80, hi = 0xBF, lead = d->pend[0];
            if (d->n_pend == 1) {
                lo = lead == 0xE0 ? 0xA0 : lead == 0xF0 ? 0x90 : 0x80;
                hi = lead == 0xED ? 0x9F : lead == 0xF4 ? 0x8F : 0xBF;
            }
            if (c >= lo && c <= hi) {
                d->pend[d->n_pend++] = c;
                if (d->n_pend == d->need) {
                    o = put(out, o, d->pend, d->n_pend);
                    d->n_pend = 0;
                }
                continue;
            }
            o = put(out, o, "\xEF\xBF\xBD", 3);
            d->n_pend = 0;
        }
        if (c < 0x80) {
            o = put(out, o, &c, 1);
        } else if (c >= 0xC2 && c <= 0xF4) {
            d->need = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
            d->pend[0] = c;
            d->n_pend = 1;
        } else {
            o = put(out, o, "\xEF\xBF\xBD", 3);
        }
    }
    return o;
}

/* One token through d; out NULL only counts (the state moves either way). */
static tandem_status push(td_detok *d, int32_t id, char *out, size_t *n, td_error *err) {
    const td_tokenizer *t = d->t;
    *n = 0;
    if (id < 0 || id >= t->n_vocab)
        return bad_id(t, id, err);
    int ty = t->type[id];
    bool special = ty == TD_TOKEN_CONTROL || ty == TD_TOKEN_UNKNOWN || ty == TD_TOKEN_UNUSED;
    if (special && !(d->flags & TD_DETOK_SPECIAL))
        return TANDEM_OK;
    size_t len;
    const uint8_t *p = (const uint8_t *)tok_piece(t, id, &len);
    if (len == 0)
        return TANDEM_OK;
    if ((d->flags & TD_DETOK_STRIP_SPACE) && !d->started && p[0] == ' ')
        p++, len--;
    d->started = true;
    *n = feed(d, p, len, out);
    return TANDEM_OK;
}

tandem_status td_detok_push(td_detok *d, int32_t id, char *out, size_t cap, size_t *n, td_error *err) {
    td_detok probe = *d;
    tandem_status st = push(&probe, id, NULL, n, err);
    if (st)
        return st;
    if (*n > cap)
        return td_fail(err, TANDEM_ERR_LIMIT, "td_detok_push: token %d needs %zu bytes, room for %zu", id, *n, cap);
    return push(d, id, out, n, err);
}

tandem_status td_detok_flush(td_detok *d, char *out, size_t cap, size_t *n, td_error *err) {
    *n = d->n_pend ? 3 : 0;
    if (*n > cap)
        return td_fail(err, TANDEM_ERR_LIMIT, "td_detok_flush: needs 3 bytes, room for %zu", cap);
    if (*n)
        memcpy(out, "\xEF\xBF\xBD", 3);
    d->n_pend = 0;
    return TANDEM_OK;
}

tandem_status td_detokenize(const td_tokenizer *t, const int32_t *ids, size_t n_ids, unsigned flags, char *out,
                            size_t cap, size_t *n_out, td_error *err) {
    *n_out = 0;
    if (!out && cap)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "td_detokenize: out is NULL with cap %zu", cap);
    td_detok d;
    td_detok_init(&d, t, flags);
    size_t total = 0, k;
    bool overflow = false; /* from then on only count: out keeps a prefix */
    for (size_t i = 0; i < n_ids; i++) {
        td_detok probe = d;
        tandem_status st = push(&probe, ids[i], NULL, &k, err);
        if (st)
            return st;
        overflow |= total + k > cap;
        push(&d, ids[i], overflow ? NULL : out + total, &k, NULL);
        total += k;
    }
    k = d.n_pend ? 3 : 0;
    overflow |= total + k > cap;
    if (k && !overflow)
        memcpy(out + total, "\xEF\xBF\xBD", 3);
    total += k;
    *n_out = total;
    if (overflow)
        return td_fail(err, TANDEM_ERR_LIMIT, "td_detokenize: the text needs %zu bytes, room for %zu", total, cap);
    return TANDEM_OK;
}
