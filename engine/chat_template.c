/* Chat templates (see chat_template.h).
 *
 * Detection looks for markers that do not depend on the template's
 * formatting (special-token texts, a string literal's exact value), in the
 * order llama.cpp checks them. The default system prompt of a chatml
 * template is the first Jinja string literal, inside {{ }} or {% %}, whose
 * value starts with "<|im_start|>system\n" and goes on to "<|im_end|>".
 * Rendering appends to a growable buffer; an allocation failure is noted and
 * reported once at the end. */
#include "engine/chat_template.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- names ------------------------------------------------------------------- */

static const char *const family_names[TD_CHAT_FAMILY_COUNT] = {
    [TD_CHAT_UNKNOWN] = "unknown", [TD_CHAT_CHATML] = "chatml",   [TD_CHAT_LLAMA3] = "llama3",
    [TD_CHAT_LLAMA2] = "llama2",   [TD_CHAT_MISTRAL] = "mistral", [TD_CHAT_MISTRAL_V01] = "mistral-v0.1",
};

static const struct {
    const char *name;
    td_chat_family f;
} family_aliases[] = {
    {"chatml", TD_CHAT_CHATML},        {"llama3", TD_CHAT_LLAMA3},
    {"llama-3", TD_CHAT_LLAMA3},       {"llama2", TD_CHAT_LLAMA2},
    {"llama-2", TD_CHAT_LLAMA2},       {"mistral", TD_CHAT_MISTRAL},
    {"mistral-v0.2", TD_CHAT_MISTRAL}, {"mistral-v0.1", TD_CHAT_MISTRAL_V01},
};

const char *td_chat_family_name(td_chat_family f) {
    if ((int)f < 0 || f >= TD_CHAT_FAMILY_COUNT)
        return "unknown";
    return family_names[f];
}

bool td_chat_family_bos(td_chat_family f) {
    return f == TD_CHAT_LLAMA3 || f == TD_CHAT_LLAMA2 || f == TD_CHAT_MISTRAL || f == TD_CHAT_MISTRAL_V01;
}

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c; }

/* name[0..len) equals c, ignoring ASCII case. */
static bool eq_nocase(const char *name, size_t len, const char *c) {
    size_t n = strlen(c);
    if (n != len)
        return false;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)name[i]) != c[i])
            return false;
    return true;
}

static td_chat_family family_by_name(const char *name, size_t len) {
    for (size_t i = 0; i < sizeof family_aliases / sizeof family_aliases[0]; i++)
        if (eq_nocase(name, len, family_aliases[i].name))
            return family_aliases[i].f;
    return TD_CHAT_UNKNOWN;
}

tandem_status td_chat_family_parse(const char *name, td_chat_family *out, td_error *err) {
    if (!name || !out)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "chat: no template name given");
    td_chat_family f = family_by_name(name, strlen(name));
    if (f == TD_CHAT_UNKNOWN)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                       "chat: unknown chat template \"%.64s\" (known: chatml, llama3, llama2, mistral, mistral-v0.1)",
                       name);
    *out = f;
    return TANDEM_OK;
}

/* ---- detection --------------------------------------------------------------- */

static const char *find(const char *s, size_t n, const char *needle) {
    size_t m = strlen(needle);
    if (m == 0 || m > n)
        return NULL;
    for (size_t i = 0; i + m <= n; i++)
        if (s[i] == needle[0] && memcmp(s + i, needle, m) == 0)
            return s + i;
    return NULL;
}

static bool has(const char *s, size_t n, const char *needle) { return find(s, n, needle) != NULL; }

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* `eos_token + ' '` (either quote, any spacing around +): Mistral-7B-
 * Instruct-v0.1 writes a space after each answer's EOS. */
static bool has_eos_space(const char *s, size_t n) {
    static const char key[] = "eos_token";
    const size_t k = sizeof key - 1;
    for (size_t i = 0; i + k <= n; i++) {
        if (memcmp(s + i, key, k) != 0)
            continue;
        size_t j = i + k;
        while (j < n && is_ws(s[j]))
            j++;
        if (j >= n || s[j] != '+')
            continue;
        j++;
        while (j < n && is_ws(s[j]))
            j++;
        if (j + 3 <= n && (s[j] == '\'' || s[j] == '"') && s[j + 1] == ' ' && s[j + 2] == s[j])
            return true;
    }
    return false;
}

/* A string literal whose value starts with " [INST]" (Mistral's official v1
 * template: ' [INST] ' + system_message). */
static bool has_quoted_space_inst(const char *s, size_t n) { return has(s, n, "' [INST]") || has(s, n, "\" [INST]"); }

td_chat_family td_chat_detect(const char *tmpl, size_t len) {
    if (!tmpl)
        return TD_CHAT_UNKNOWN;
    td_chat_family named = family_by_name(tmpl, len);
    if (named != TD_CHAT_UNKNOWN)
        return named;
    if (has(tmpl, len, "<|im_start|>")) {
        /* Phi-4 (<|im_sep|>) and SmolVLM (<end_of_utterance>) are not chatml */
        if (has(tmpl, len, "<|im_sep|>") || has(tmpl, len, "<end_of_utterance>"))
            return TD_CHAT_UNKNOWN;
        return TD_CHAT_CHATML;
    }
    if (has(tmpl, len, "[INST]")) {
        /* Mistral v3/v7 and the official v1 template: other layouts */
        if (has(tmpl, len, "[SYSTEM_PROMPT]") || has(tmpl, len, "[AVAILABLE_TOOLS]") ||
            has_quoted_space_inst(tmpl, len))
            return TD_CHAT_UNKNOWN;
        if (has(tmpl, len, "<<SYS>>"))
            return TD_CHAT_LLAMA2;
        return has_eos_space(tmpl, len) ? TD_CHAT_MISTRAL_V01 : TD_CHAT_MISTRAL;
    }
    if (has(tmpl, len, "<|start_header_id|>") && has(tmpl, len, "<|end_header_id|>"))
        return TD_CHAT_LLAMA3;
    return TD_CHAT_UNKNOWN;
}

/* ---- the default system prompt of a chatml template ---------------------------- */

static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static size_t put_utf8(char *d, uint32_t cp) {
    if (cp < 0x80) {
        d[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        d[0] = (char)(0xC0 | (cp >> 6));
        d[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        d[0] = (char)(0xE0 | (cp >> 12));
        d[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        d[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    d[0] = (char)(0xF0 | (cp >> 18));
    d[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    d[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    d[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* The value of the literal s[0..n) (its quotes excluded) with Python's
 * escapes resolved, as Jinja does: \n \t \r \\ \' \" \a \b \f \v \xHH \uHHHH
 * \UHHHHHHHH; any other backslash stays as it is. d has room for n bytes
 * (no escape's value is longer than its spelling). Returns the length. */
static size_t unescape(const char *s, size_t n, char *d) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 >= n) {
            d[o++] = s[i];
            continue;
        }
        char c = s[i + 1];
        const char *simple = "n\nt\tr\r\\\\''\"\"a\ab\bf\fv\v";
        const char *m = NULL;
        for (const char *p = simple; *p; p += 2)
            if (*p == c) {
                m = p;
                break;
            }
        if (m) {
            d[o++] = m[1];
            i++;
            continue;
        }
        size_t digits = c == 'x' ? 2 : c == 'u' ? 4 : c == 'U' ? 8 : 0;
        if (digits && i + 2 + digits <= n) {
            uint32_t cp = 0;
            bool ok = true;
            for (size_t k = 0; k < digits; k++) {
                int h = hexval(s[i + 2 + k]);
                if (h < 0) {
                    ok = false;
                    break;
                }
                cp = cp * 16 + (uint32_t)h;
            }
            if (ok && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF)) {
                o += put_utf8(d + o, cp);
                i += 1 + digits;
                continue;
            }
        }
        d[o++] = s[i];
    }
    return o;
}

static const char chatml_sys_open[] = "<|im_start|>system\n";
static const char chatml_end[] = "<|im_end|>";

/* Looks at one literal value; on a default system prompt sets *out. */
static tandem_status take_default_system(const char *v, size_t n, td_chat_template *t, bool *found, td_error *err) {
    const size_t open = sizeof chatml_sys_open - 1;
    if (n < open || memcmp(v, chatml_sys_open, open) != 0)
        return TANDEM_OK;
    const char *end = find(v + open, n - open, chatml_end);
    if (!end)
        return TANDEM_OK;
    size_t len = (size_t)(end - (v + open));
    t->default_system = malloc(len + 1);
    if (!t->default_system)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "chat: out of memory for the default system prompt");
    memcpy(t->default_system, v + open, len);
    t->default_system[len] = '\0';
    t->default_system_len = len;
    *found = true;
    return TANDEM_OK;
}

static tandem_status find_default_system(const char *s, size_t n, td_chat_template *t, td_error *err) {
    char *val = NULL;
    bool found = false;
    size_t i = 0;
    while (i + 1 < n && !found) {
        if (s[i] == '{' && s[i + 1] == '#') { /* comment */
            const char *e = find(s + i + 2, n - i - 2, "#}");
            i = e ? (size_t)(e - s) + 2 : n;
            continue;
        }
        if (!(s[i] == '{' && (s[i + 1] == '{' || s[i + 1] == '%'))) {
            i++;
            continue;
        }
        char close = s[i + 1] == '{' ? '}' : '%';
        i += 2;
        while (i < n && !found) { /* inside a tag: literals until its close */
            if (s[i] == close && i + 1 < n && s[i + 1] == '}') {
                i += 2;
                break;
            }
            if (s[i] != '\'' && s[i] != '"') {
                i++;
                continue;
            }
            char q = s[i];
            size_t b = ++i;
            while (i < n && s[i] != q)
                i += s[i] == '\\' && i + 1 < n ? 2 : 1;
            size_t e = i < n ? i : n;
            i = e + 1;
            if (!val && !(val = malloc(n + 1)))
                return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "chat: out of memory reading the template");
            size_t vn = unescape(s + b, e - b, val);
            tandem_status st = take_default_system(val, vn, t, &found, err);
            if (st) {
                free(val);
                return st;
            }
        }
    }
    free(val);
    return TANDEM_OK;
}

/* ---- templates ------------------------------------------------------------------ */

void td_chat_template_free(td_chat_template *t) {
    if (!t)
        return;
    free(t->default_system);
    memset(t, 0, sizeof *t);
}

/* The first 40 bytes of s, printable (for messages); cap > 2 * 40. */
static void excerpt(const char *s, size_t n, char *d, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; i < n && i < 40 && o + 3 <= cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n' || c == '"' || c == '\\') {
            d[o++] = '\\';
            d[o++] = c == '\n' ? 'n' : (char)c;
        } else {
            d[o++] = c < 0x20 || c == 0x7F ? '?' : (char)c;
        }
    }
    d[o] = '\0';
}

static tandem_status init_named(const char *tmpl, size_t len, const char *where, td_chat_template *out, td_error *err) {
    memset(out, 0, sizeof *out);
    if (!tmpl && len)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "chat: no template given");
    td_chat_family f = td_chat_detect(tmpl, len);
    if (f == TD_CHAT_UNKNOWN) {
        char ex[96];
        excerpt(tmpl ? tmpl : "", len, ex, sizeof ex);
        return td_fail(err, TANDEM_ERR_UNSUPPORTED,
                       "chat: %s%snot a supported chat template (chatml, llama3, llama2, mistral): \"%s%s\"",
                       where ? where : "", where ? ": " : "", ex, len > 40 ? "..." : "");
    }
    out->family = f;
    if (f == TD_CHAT_CHATML) {
        tandem_status st = find_default_system(tmpl, len, out, err);
        if (st) {
            td_chat_template_free(out);
            return st;
        }
    }
    return TANDEM_OK;
}

tandem_status td_chat_template_init(const char *tmpl, size_t len, td_chat_template *out, td_error *err) {
    if (!out)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "chat: no output template given");
    return init_named(tmpl, len, NULL, out, err);
}

#define TD_CHAT_TEMPLATE_KEY "tokenizer.chat_template"

tandem_status td_chat_template_from_gguf(const td_gguf *g, td_chat_template *out, td_error *err) {
    if (!g || !out)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "chat: no file or output template given");
    memset(out, 0, sizeof *out);
    td_gguf_str s;
    tandem_status st = td_gguf_get_str(g, TD_CHAT_TEMPLATE_KEY, &s, err);
    if (st)
        return st;
    if (s.len > SIZE_MAX - 1)
        return td_fail(err, TANDEM_ERR_FORMAT, "chat: %s: " TD_CHAT_TEMPLATE_KEY " is too long", td_gguf_name(g));
    char where[160];
    const char *name = td_gguf_name(g);
    size_t nl = strlen(name);
    /* the file's base name and the key */
    const char *base = name;
    for (size_t i = 0; i < nl; i++)
        if (name[i] == '/')
            base = name + i + 1;
    snprintf(where, sizeof where, "%.100s: " TD_CHAT_TEMPLATE_KEY, base);
    return init_named(s.ptr, (size_t)s.len, where, out, err);
}

tandem_status td_chat_detect_gguf(const td_gguf *g, td_chat_family *out, td_error *err) {
    if (!out)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "chat: no output family given");
    td_chat_template t;
    tandem_status st = td_chat_template_from_gguf(g, &t, err);
    if (st)
        return st;
    *out = t.family;
    td_chat_template_free(&t);
    return TANDEM_OK;
}

/* ---- Python's str.strip ------------------------------------------------------------ */

/* Length of the whitespace character (Python's str.isspace) at s[0..n), or 0:
 * \t..\r, \x1c..\x1f, space, U+0085, U+00A0, U+1680, U+2000..U+200A,
 * U+2028, U+2029, U+202F, U+205F, U+3000. */
static size_t ws_at(const unsigned char *s, size_t n) {
    if (n == 0)
        return 0;
    unsigned char c = s[0];
    if ((c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20))
        return 1;
    if (n >= 2 && c == 0xC2 && (s[1] == 0x85 || s[1] == 0xA0))
        return 2;
    if (n >= 3) {
        if (c == 0xE1 && s[1] == 0x9A && s[2] == 0x80)
            return 3;
        if (c == 0xE2 && s[1] == 0x80 &&
            ((s[2] >= 0x80 && s[2] <= 0x8A) || s[2] == 0xA8 || s[2] == 0xA9 || s[2] == 0xAF))
            return 3;
        if (c == 0xE2 && s[1] == 0x81 && s[2] == 0x9F)
            return 3;
        if (c == 0xE3 && s[1] == 0x80 && s[2] == 0x80)
            return 3;
    }
    return 0;
}

/* Length of the whitespace character that ends s[0..n), or 0. */
static size_t ws_before(const unsigned char *s, size_t n) {
    for (size_t k = 1; k <= 3 && k <= n; k++)
        if (ws_at(s + n - k, k) == k)
            return k;
    return 0;
}

/* ---- rendering ------------------------------------------------------------------- */

typedef struct buf {
    char *p;
    size_t n, cap;
    bool oom;
} buf;

static void put(buf *b, const char *s, size_t n) {
    if (b->oom || n == 0)
        return;
    if (n > SIZE_MAX - 1 - b->n) {
        b->oom = true;
        return;
    }
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap = cap > SIZE_MAX / 2 ? b->n + n + 1 : cap * 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void puts_(buf *b, const char *s) { put(b, s, strlen(s)); }

/* Python's str.strip on what was appended since from. */
static void strip_from(buf *b, size_t from) {
    if (b->oom)
        return;
    const unsigned char *s = (const unsigned char *)b->p + from;
    size_t n = b->n - from, lo = 0, hi = n, k;
    while (lo < hi && (k = ws_at(s + lo, hi - lo)) != 0)
        lo += k;
    while (hi > lo && (k = ws_before(s + lo, hi - lo)) != 0)
        hi -= k;
    memmove(b->p + from, b->p + from + lo, hi - lo);
    b->n = from + (hi - lo);
}

typedef enum role { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT } role;

static const char *const role_names[] = {"system", "user", "assistant"};

static void put_content(buf *b, const td_chat_msg *m) { put(b, m->content, m->content_len); }

static void render_chatml(buf *b, const td_chat_template *t, const td_chat_msg *msgs, const role *roles, size_t n,
                          bool gen) {
    if (t->default_system && roles[0] != ROLE_SYSTEM) {
        puts_(b, chatml_sys_open);
        put(b, t->default_system, t->default_system_len);
        puts_(b, chatml_end);
        puts_(b, "\n");
    }
    for (size_t i = 0; i < n; i++) {
        puts_(b, "<|im_start|>");
        puts_(b, role_names[roles[i]]);
        puts_(b, "\n");
        put_content(b, &msgs[i]);
        puts_(b, "<|im_end|>\n");
    }
    if (gen)
        puts_(b, "<|im_start|>assistant\n");
}

static void render_llama3(buf *b, const td_chat_msg *msgs, const role *roles, size_t n, bool gen) {
    for (size_t i = 0; i < n; i++) {
        puts_(b, "<|start_header_id|>");
        puts_(b, role_names[roles[i]]);
        puts_(b, "<|end_header_id|>\n\n");
        size_t from = b->n;
        put_content(b, &msgs[i]);
        strip_from(b, from);
        puts_(b, "<|eot_id|>");
    }
    if (gen)
        puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* llama2 and mistral*: after an optional leading system message, user and
 * assistant alternate, starting with a user turn. */
static tandem_status check_alternation(td_chat_family f, const role *roles, size_t n, td_error *err) {
    size_t start = roles[0] == ROLE_SYSTEM ? 1 : 0;
    if (start == n)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                       "chat: %s: the conversation has a system message but no user message", td_chat_family_name(f));
    for (size_t i = start; i < n; i++) {
        if (roles[i] == ROLE_SYSTEM)
            return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                           "chat: %s: message %zu is a system message; only the first message may be one",
                           td_chat_family_name(f), i);
        role want = (i - start) % 2 == 0 ? ROLE_USER : ROLE_ASSISTANT;
        if (roles[i] != want)
            return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                           "chat: %s: message %zu is \"%s\" where \"%s\" was expected (after an optional system "
                           "message, roles must alternate user/assistant/user/...)",
                           td_chat_family_name(f), i, role_names[roles[i]], role_names[want]);
    }
    return TANDEM_OK;
}

static void render_llama2(buf *b, const td_chat_msg *msgs, const role *roles, size_t n) {
    const td_chat_msg *sys = roles[0] == ROLE_SYSTEM ? &msgs[0] : NULL;
    size_t start = sys ? 1 : 0;
    for (size_t i = start; i < n; i++) {
        if (roles[i] == ROLE_USER) {
            if (i != start)
                puts_(b, "<s>"); /* BOS of a later turn; the first is the tokenizer's */
            puts_(b, "[INST] ");
            size_t from = b->n;
            if (sys && i == start) {
                puts_(b, "<<SYS>>\n");
                put_content(b, sys);
                puts_(b, "\n<</SYS>>\n\n");
            }
            put_content(b, &msgs[i]);
            strip_from(b, from);
            puts_(b, " [/INST]");
        } else {
            puts_(b, " ");
            size_t from = b->n;
            put_content(b, &msgs[i]);
            strip_from(b, from);
            puts_(b, " </s>");
        }
    }
}

static void render_mistral(buf *b, td_chat_family f, const td_chat_msg *msgs, const role *roles, size_t n) {
    const td_chat_msg *sys = roles[0] == ROLE_SYSTEM ? &msgs[0] : NULL;
    size_t start = sys ? 1 : 0;
    for (size_t i = start; i < n; i++) {
        if (roles[i] == ROLE_USER) {
            puts_(b, "[INST] ");
            if (sys && i == start) {
                put_content(b, sys);
                puts_(b, "\n");
            }
            put_content(b, &msgs[i]);
            puts_(b, " [/INST]");
        } else {
            put_content(b, &msgs[i]);
            puts_(b, f == TD_CHAT_MISTRAL_V01 ? "</s> " : "</s>");
        }
    }
}

tandem_status td_chat_render(const td_chat_template *t, const td_chat_msg *msgs, size_t n, bool add_generation_prompt,
                             char **out, size_t *out_len, td_error *err) {
    if (out)
        *out = NULL;
    if (out_len)
        *out_len = 0;
    if (!t || !out)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "chat: no template or output given");
    if (t->family <= TD_CHAT_UNKNOWN || t->family >= TD_CHAT_FAMILY_COUNT)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "chat: no chat template family set (%d)", (int)t->family);
    if (n == 0 || !msgs)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "chat: the conversation has no messages");
    role *roles = malloc(n * sizeof *roles);
    if (!roles)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "chat: out of memory for %zu messages", n);
    tandem_status st = TANDEM_OK;
    for (size_t i = 0; i < n && !st; i++) {
        const td_chat_msg *m = &msgs[i];
        if (!m->role) {
            st = td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "chat: message %zu has no role", i);
            break;
        }
        if (!m->content && m->content_len) {
            st = td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "chat: message %zu has no content but a length of %zu", i,
                         m->content_len);
            break;
        }
        size_t r = 0;
        while (r < 3 && strcmp(m->role, role_names[r]) != 0)
            r++;
        if (r == 3)
            st = td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                         "chat: message %zu has role \"%.64s\"; supported roles: system, user, assistant", i, m->role);
        else
            roles[i] = (role)r;
    }
    if (!st && (t->family == TD_CHAT_LLAMA2 || t->family == TD_CHAT_MISTRAL || t->family == TD_CHAT_MISTRAL_V01))
        st = check_alternation(t->family, roles, n, err);
    if (st) {
        free(roles);
        return st;
    }

    buf b = {0};
    switch (t->family) {
    case TD_CHAT_CHATML: render_chatml(&b, t, msgs, roles, n, add_generation_prompt); break;
    case TD_CHAT_LLAMA3: render_llama3(&b, msgs, roles, n, add_generation_prompt); break;
    case TD_CHAT_LLAMA2: render_llama2(&b, msgs, roles, n); break;
    case TD_CHAT_MISTRAL:
    case TD_CHAT_MISTRAL_V01: render_mistral(&b, t->family, msgs, roles, n); break;
    default: break;
    }
    free(roles);
    if (!b.oom && !b.p) { /* nothing written: still a valid empty string */
        b.p = malloc(1);
        b.oom = !b.p;
    }
    if (b.oom) {
        free(b.p);
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "chat: out of memory rendering %zu messages", n);
    }
    b.p[b.n] = '\0';
    *out = b.p;
    if (out_len)
        *out_len = b.n;
    return TANDEM_OK;
}
