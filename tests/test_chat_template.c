/* Chat templates against two references:
 *  - the models' own Jinja templates rendered by transformers
 *    (tests/oracle/chat_template_vectors.py, a CTest fixture): SmolLM2's from
 *    its GGUF, Llama-3, Llama-2-chat, Mixtral and Mistral-v0.1 from
 *    tests/data/chat_templates/; every conversation byte for byte, with and
 *    without the generation prompt, errors included;
 *  - cases written out here: detection of each template and of reformatted
 *    variants (whitespace, quotes, escapes), templates that must not be
 *    recognised, the default system prompt, the GGUF entry points, and every
 *    error (unknown role named, empty conversation, ...). */
#include <stdlib.h>
#include <string.h>

#include "engine/chat_template.h"
#include "engine/gguf.h"
#include "tests/gguf_bytes.h"
#include "tests/test_util.h"

#ifndef TD_CHAT_DATA
#error "TD_CHAT_DATA (tests/data/chat_templates) is set by tests/CMakeLists.txt"
#endif
#ifndef TD_CHAT_VECTORS
#error "TD_CHAT_VECTORS (the oracle fixture path) is set by tests/CMakeLists.txt"
#endif
#ifndef TD_TEST_MODEL
#error "TD_TEST_MODEL (models/SmolLM2-135M-Instruct.Q4_1.gguf) is set by tests/CMakeLists.txt"
#endif

static const char smollm_system[] = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/* ---- helpers ------------------------------------------------------------------ */

static char *data_file(const char *name, size_t *n) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", TD_CHAT_DATA, name);
    char *s = td_test_read_file(path, n);
    if (!s)
        fprintf(stderr, "\n  cannot read %s\n", path);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    return s;
}

/* s with every occurrence of from replaced by to (malloc'd). */
static char *replace(const char *s, const char *from, const char *to) {
    size_t nf = strlen(from), nt = strlen(to), n = 0;
    for (const char *p = s; (p = strstr(p, from)); p += nf)
        n++;
    char *o = malloc(strlen(s) + n * (nt > nf ? nt - nf : 0) + 1), *d = o;
    const char *p = s, *q;
    while ((q = strstr(p, from))) {
        memcpy(d, p, (size_t)(q - p));
        d += q - p;
        memcpy(d, to, nt);
        d += nt;
        p = q + nf;
    }
    strcpy(d, p);
    return o;
}

static char *swap_quotes(const char *s) {
    char *o = strdup(s);
    for (char *p = o; *p; p++)
        *p = *p == '\'' ? '"' : *p == '"' ? '\'' : *p;
    return o;
}

static td_chat_family detect(const char *s) { return td_chat_detect(s, strlen(s)); }

/* Renders and returns the text (NULL and *st set on failure). */
static char *render(const td_chat_template *t, const td_chat_msg *m, size_t n, bool gen, tandem_status *st,
                    td_error *err) {
    char *out = (char *)1;
    size_t len = 12345;
    *st = td_chat_render(t, m, n, gen, &out, &len, err);
    if (*st) {
        CU_ASSERT_PTR_NULL(out);
        CU_ASSERT_EQUAL(len, 0);
        return NULL;
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    CU_ASSERT_EQUAL(strlen(out), len); /* NUL-terminated (no NUL in these contents) */
    return out;
}

static void expect_render(const td_chat_template *t, const td_chat_msg *m, size_t n, bool gen, const char *want) {
    td_error err = {0};
    tandem_status st;
    char *got = render(t, m, n, gen, &st, &err);
    if (st)
        fprintf(stderr, "\n  render failed: %s\n", err.msg);
    CU_ASSERT_EQUAL_FATAL(st, TANDEM_OK);
    if (strcmp(got, want) != 0)
        fprintf(stderr, "\n  got  \"%s\"\n  want \"%s\"\n", got, want);
    CU_ASSERT_STRING_EQUAL(got, want);
    free(got);
}

static void expect_render_error(const td_chat_template *t, const td_chat_msg *m, size_t n, const char *in_msg) {
    td_error err = {0};
    tandem_status st;
    char *got = render(t, m, n, true, &st, &err);
    CU_ASSERT_PTR_NULL(got);
    free(got);
    CU_ASSERT_EQUAL(st, TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(err.status, TANDEM_ERR_INVALID_ARGUMENT);
    if (in_msg && !strstr(err.msg, in_msg))
        fprintf(stderr, "\n  message \"%s\" lacks \"%s\"\n", err.msg, in_msg);
    CU_ASSERT(!in_msg || strstr(err.msg, in_msg) != NULL);
}

/* ---- the oracle's vectors ---------------------------------------------------------- */

static size_t unhex(const char *h, char *out) {
    if (strcmp(h, "-") == 0)
        return 0;
    size_t n = strlen(h) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (char)v;
    }
    return n;
}

#define MAX_TEMPLATES 8

static void test_oracle_vectors(void) {
    size_t size;
    char *text = td_test_read_file(TD_CHAT_VECTORS, &size);
    if (!text)
        fprintf(stderr, "\n  cannot read %s (run the chat_template_vectors fixture)\n", TD_CHAT_VECTORS);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);

    struct {
        char name[32];
        td_chat_template t;
    } tm[MAX_TEMPLATES];
    int n_tm = 0;
    int n_cases = 0, n_errors = 0, n_bad = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *tokens[64], *ts = NULL;
        int nt = 0;
        for (char *t = strtok_r(line, " ", &ts); t && nt < 64; t = strtok_r(NULL, " ", &ts))
            tokens[nt++] = t;
        CU_ASSERT_FATAL(nt >= 4);
        td_error err = {0};
        if (tokens[0][0] == 'T') {
            CU_ASSERT_FATAL(n_tm < MAX_TEMPLATES);
            char *src = malloc(strlen(tokens[3]) / 2 + 1);
            size_t len = unhex(tokens[3], src);
            td_chat_family want;
            TD_ASSERT_OK(td_chat_family_parse(tokens[2], &want, &err), &err);
            snprintf(tm[n_tm].name, sizeof tm[n_tm].name, "%s", tokens[1]);
            CU_ASSERT_EQUAL(td_chat_detect(src, len), want);
            TD_ASSERT_OK(td_chat_template_init(src, len, &tm[n_tm].t, &err), &err);
            CU_ASSERT_EQUAL(tm[n_tm].t.family, want);
            if (strcmp(tokens[1], "smollm2") == 0) {
                CU_ASSERT_PTR_NOT_NULL_FATAL(tm[n_tm].t.default_system);
                CU_ASSERT_STRING_EQUAL(tm[n_tm].t.default_system, smollm_system);
                CU_ASSERT_EQUAL(tm[n_tm].t.default_system_len, strlen(smollm_system));
            } else {
                CU_ASSERT_PTR_NULL(tm[n_tm].t.default_system);
            }
            free(src);
            n_tm++;
            continue;
        }
        /* C <name> <case> <gen> <expected> <n> (<role> <hex>)* */
        CU_ASSERT_FATAL(nt >= 6);
        int ti = -1;
        for (int i = 0; i < n_tm; i++)
            if (strcmp(tm[i].name, tokens[1]) == 0)
                ti = i;
        CU_ASSERT_FATAL(ti >= 0);
        size_t n = (size_t)atoi(tokens[5]);
        CU_ASSERT_FATAL(nt == 6 + 2 * (int)n);
        td_chat_msg msgs[16];
        char *contents[16];
        for (size_t i = 0; i < n; i++) {
            contents[i] = malloc(strlen(tokens[7 + 2 * i]) / 2 + 1);
            msgs[i].role = tokens[6 + 2 * i];
            msgs[i].content = contents[i];
            msgs[i].content_len = unhex(tokens[7 + 2 * i], contents[i]);
        }
        bool gen = tokens[3][0] == '1';
        char *got = NULL;
        size_t got_len = 0;
        tandem_status st = td_chat_render(&tm[ti].t, msgs, n, gen, &got, &got_len, &err);
        n_cases++;
        if (strcmp(tokens[4], "!") == 0) {
            n_errors++;
            if (st != TANDEM_ERR_INVALID_ARGUMENT) {
                if (n_bad++ < 10)
                    fprintf(stderr, "\n  %s %s gen=%d: expected an error, got %s \"%s\"", tokens[1], tokens[2], gen,
                            tandem_status_name(st), got ? got : "");
            }
        } else {
            char *want = malloc(strlen(tokens[4]) / 2 + 1);
            size_t want_len = unhex(tokens[4], want);
            bool ok =
                st == TANDEM_OK && got_len == want_len && memcmp(got, want, want_len) == 0 && got[got_len] == '\0';
            if (!ok && n_bad++ < 10)
                fprintf(stderr, "\n  %s %s gen=%d: %s\n    got  \"%.*s\"\n    want \"%.*s\"", tokens[1], tokens[2], gen,
                        st ? err.msg : "mismatch", (int)got_len, got ? got : "", (int)want_len, want);
            free(want);
        }
        free(got);
        for (size_t i = 0; i < n; i++)
            free(contents[i]);
    }
    if (n_bad)
        fprintf(stderr, "\n  %d of %d oracle cases wrong\n", n_bad, n_cases);
    CU_ASSERT_EQUAL(n_bad, 0);
    CU_ASSERT_EQUAL(n_tm, 5);         /* smollm2, llama3, llama2, mixtral, mistral01 */
    CU_ASSERT(n_cases >= 5 * 2 * 20); /* every template, both generation-prompt settings */
    CU_ASSERT(n_errors > 0 && n_errors < n_cases);
    for (int i = 0; i < n_tm; i++)
        td_chat_template_free(&tm[i].t);
    free(text);
}

/* ---- detection -------------------------------------------------------------------- */

static void check_file(const char *file, td_chat_family want) {
    size_t n;
    char *s = data_file(file, &n);
    CU_ASSERT_EQUAL(td_chat_detect(s, n), want);
    /* formatting does not matter: tags on their own lines, {{- -}} trimming,
     * the other quote character, no spaces around +, escaped newlines */
    char *a = replace(s, "}}", "}}\n    ");
    char *b = replace(a, "%}", "%}\n");
    char *c = replace(b, "{{ ", "{{- ");
    char *d = replace(c, " + ", "+");
    char *e = swap_quotes(d);
    char *f = replace(s, "\n", "\\n"); /* newlines as Jinja escapes */
    const char *variants[] = {a, b, c, d, e, f};
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        if (td_chat_detect(variants[i], strlen(variants[i])) != want)
            fprintf(stderr, "\n  %s variant %zu: detected %s\n", file, i,
                    td_chat_family_name(td_chat_detect(variants[i], strlen(variants[i]))));
        CU_ASSERT_EQUAL(td_chat_detect(variants[i], strlen(variants[i])), want);
    }
    free(a);
    free(b);
    free(c);
    free(d);
    free(e);
    free(f);
    free(s);
}

static void test_detect_files(void) {
    check_file("Meta-Llama-3-8B-Instruct.jinja", TD_CHAT_LLAMA3);
    check_file("Llama-2-13b-chat-hf.jinja", TD_CHAT_LLAMA2);
    check_file("Mixtral-8x7B-Instruct-v0.1.jinja", TD_CHAT_MISTRAL);
    check_file("Mistral-7B-Instruct-v0.1.jinja", TD_CHAT_MISTRAL_V01);
}

/* SmolLM2's template as the GGUF has it, and reformatted. */
static const char smollm_tmpl[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
    "'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% "
    "endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if "
    "add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

static void check_default_system(const char *tmpl, const char *want) {
    td_chat_template t;
    td_error err = {0};
    TD_ASSERT_OK(td_chat_template_init(tmpl, strlen(tmpl), &t, &err), &err);
    CU_ASSERT_EQUAL(t.family, TD_CHAT_CHATML);
    if (!want) {
        CU_ASSERT_PTR_NULL(t.default_system);
        CU_ASSERT_EQUAL(t.default_system_len, 0);
    } else {
        CU_ASSERT_PTR_NOT_NULL_FATAL(t.default_system);
        if (strcmp(t.default_system, want) != 0)
            fprintf(stderr, "\n  default system \"%s\", want \"%s\"\n", t.default_system, want);
        CU_ASSERT_STRING_EQUAL(t.default_system, want);
        CU_ASSERT_EQUAL(t.default_system_len, strlen(want));
    }
    td_chat_template_free(&t);
    CU_ASSERT_PTR_NULL(t.default_system);
    CU_ASSERT_EQUAL(t.family, TD_CHAT_UNKNOWN);
}

static void test_default_system(void) {
    check_default_system(smollm_tmpl, smollm_system);
    /* escapes instead of a raw newline (what a tokenizer_config.json holds) */
    char *esc = replace(smollm_tmpl, "\n", "\\n");
    check_default_system(esc, smollm_system);
    char *dq = swap_quotes(esc);
    check_default_system(dq, smollm_system);
    char *sp = replace(smollm_tmpl, "}}", "}}\n  ");
    check_default_system(sp, smollm_system);
    free(esc);
    free(dq);
    free(sp);
    /* Qwen2.5's layout: the default in an {% else %} branch; the literal
     * '<|im_start|>system\n' + ... before it is not one */
    check_default_system("{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
                         "messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are "
                         "Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
                         "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + "
                         "'<|im_end|>' + '\\n' }}{%- endfor %}",
                         "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
    /* escapes inside the default: \t, \', \", \\, \u00e9, \x41 */
    check_default_system("{{ '<|im_start|>system\\nA\\tb \\'q\\' \\\"d\\\" \\\\ \\u00e9\\x41<|im_end|>\\n' }}"
                         "{{ '<|im_start|>' + m + '<|im_end|>' }}",
                         "A\tb 'q' \"d\" \\ \xc3\xa9"
                         "A");
    /* plain chatml (OpenHermes): none; text outside tags and comments are
     * not literals */
    check_default_system("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                         "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
                         "'<|im_start|>assistant\\n' }}{% endif %}",
                         NULL);
    check_default_system("'<|im_start|>system\nraw text<|im_end|>' {# {{ '<|im_start|>system\ncomment<|im_end|>' }} "
                         "#}{{ '<|im_start|>' }}",
                         NULL);
}

static void test_detect_strings(void) {
    /* names, as llama.cpp accepts them in place of a template */
    CU_ASSERT_EQUAL(detect("chatml"), TD_CHAT_CHATML);
    CU_ASSERT_EQUAL(detect("llama3"), TD_CHAT_LLAMA3);
    CU_ASSERT_EQUAL(detect("llama2"), TD_CHAT_LLAMA2);
    CU_ASSERT_EQUAL(detect("mistral"), TD_CHAT_MISTRAL);
    CU_ASSERT_EQUAL(detect("mistral-v0.1"), TD_CHAT_MISTRAL_V01);
    /* Llama-3.1's template (abridged): llama3 */
    CU_ASSERT_EQUAL(detect("{{- bos_token }}\n{%- if custom_tools is defined %}\n{{- \"<|start_header_id|>system"
                           "<|end_header_id|>\\n\\n\" }}\n{{- \"Cutting Knowledge Date: December 2023\\n\" }}"
                           "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ "
                           "message['content'] | trim + '<|eot_id|>' }}"),
                    TD_CHAT_LLAMA3);
    CU_ASSERT_EQUAL(detect("{{ eos_token  +  \" \" }}[INST]"), TD_CHAT_MISTRAL_V01);
    CU_ASSERT_EQUAL(detect("{{ eos_token + '  ' }}[INST]"), TD_CHAT_MISTRAL); /* two spaces: not v0.1's */
    CU_ASSERT_EQUAL(detect("{{ eos_token }}{{ ' ' }}[INST]"), TD_CHAT_MISTRAL);
    /* not supported */
    const char *unknown[] = {
        "",
        "hello",
        "{% for m in messages %}{{ m['content'] }}{% endfor %}",
        /* gemma */
        "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim "
        "+ '<end_of_turn>\\n' }}{% endfor %}",
        /* Phi-4 and SmolVLM use <|im_start|> differently */
        "{% for m in messages %}{{'<|im_start|>' + m['role'] + '<|im_sep|>' + m['content'] + '<|im_end|>'}}{% endfor "
        "%}",
        "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}<end_of_utterance>\n{% "
        "endfor %}",
        /* Mistral v3 / v7 / official v1 */
        "{{- bos_token }}{%- for message in loop_messages %}{{- \"[AVAILABLE_TOOLS] [\" }}{{- \"[INST] \" + "
        "message[\"content\"] + \"[/INST]\" }}{%- endfor %}",
        "{{- bos_token }}{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}{{- '[INST]' + "
        "message['content'] + '[/INST]' }}",
        "{{ bos_token }}{% if loop.first and system_message is defined %}{{ ' [INST] ' + system_message + '\\n\\n' + "
        "message['content'] + ' [/INST]' }}{% endif %}",
        /* only one of Llama-3's two header markers */
        "<|start_header_id|>",
        /* a family name with extra bytes is not a name */
        "chatml ",
    };
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        if (detect(unknown[i]) != TD_CHAT_UNKNOWN)
            fprintf(stderr, "\n  unknown[%zu] detected as %s\n", i, td_chat_family_name(detect(unknown[i])));
        CU_ASSERT_EQUAL(detect(unknown[i]), TD_CHAT_UNKNOWN);
        td_chat_template t = {.family = TD_CHAT_LLAMA3};
        td_error err = {0};
        CU_ASSERT_EQUAL(td_chat_template_init(unknown[i], strlen(unknown[i]), &t, &err), TANDEM_ERR_UNSUPPORTED);
        CU_ASSERT_EQUAL(t.family, TD_CHAT_UNKNOWN);
        CU_ASSERT_PTR_NULL(t.default_system);
        char start[24];
        snprintf(start, sizeof start, "%.20s", unknown[i]);
        if (!strchr(start, '\n') && !strchr(start, '"'))
            CU_ASSERT(strstr(err.msg, start) != NULL); /* names the template's start */
    }
    /* the length is honoured: a marker past len does not count */
    CU_ASSERT_EQUAL(td_chat_detect("xx<|im_start|>", 2), TD_CHAT_UNKNOWN);
    CU_ASSERT_EQUAL(td_chat_detect("chatml!", 6), TD_CHAT_CHATML);
    CU_ASSERT_EQUAL(td_chat_detect(NULL, 0), TD_CHAT_UNKNOWN);
}

/* ---- names -------------------------------------------------------------------------- */

static void test_names(void) {
    td_error err = {0};
    td_chat_family f;
    for (int i = TD_CHAT_CHATML; i < TD_CHAT_FAMILY_COUNT; i++) {
        TD_ASSERT_OK(td_chat_family_parse(td_chat_family_name((td_chat_family)i), &f, &err), &err);
        CU_ASSERT_EQUAL(f, (td_chat_family)i);
    }
    CU_ASSERT_STRING_EQUAL(td_chat_family_name(TD_CHAT_CHATML), "chatml");
    CU_ASSERT_STRING_EQUAL(td_chat_family_name(TD_CHAT_LLAMA3), "llama3");
    CU_ASSERT_STRING_EQUAL(td_chat_family_name(TD_CHAT_LLAMA2), "llama2");
    CU_ASSERT_STRING_EQUAL(td_chat_family_name(TD_CHAT_MISTRAL), "mistral");
    CU_ASSERT_STRING_EQUAL(td_chat_family_name(TD_CHAT_MISTRAL_V01), "mistral-v0.1");
    CU_ASSERT_STRING_EQUAL(td_chat_family_name(TD_CHAT_UNKNOWN), "unknown");
    CU_ASSERT_STRING_EQUAL(td_chat_family_name((td_chat_family)99), "unknown");
    TD_ASSERT_OK(td_chat_family_parse("LLaMA-3", &f, &err), &err);
    CU_ASSERT_EQUAL(f, TD_CHAT_LLAMA3);
    TD_ASSERT_OK(td_chat_family_parse("llama-2", &f, &err), &err);
    CU_ASSERT_EQUAL(f, TD_CHAT_LLAMA2);
    TD_ASSERT_OK(td_chat_family_parse("mistral-v0.2", &f, &err), &err);
    CU_ASSERT_EQUAL(f, TD_CHAT_MISTRAL);
    f = TD_CHAT_CHATML;
    CU_ASSERT_EQUAL(td_chat_family_parse("vicuna", &f, &err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT(strstr(err.msg, "vicuna") != NULL);
    CU_ASSERT(strstr(err.msg, "chatml") != NULL); /* lists the known names */
    CU_ASSERT_EQUAL(f, TD_CHAT_CHATML);
    CU_ASSERT_EQUAL(td_chat_family_parse("unknown", &f, &err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(td_chat_family_parse(NULL, &f, &err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT_FALSE(td_chat_family_bos(TD_CHAT_CHATML));
    CU_ASSERT_TRUE(td_chat_family_bos(TD_CHAT_LLAMA3));
    CU_ASSERT_TRUE(td_chat_family_bos(TD_CHAT_LLAMA2));
    CU_ASSERT_TRUE(td_chat_family_bos(TD_CHAT_MISTRAL));
    CU_ASSERT_TRUE(td_chat_family_bos(TD_CHAT_MISTRAL_V01));
    CU_ASSERT_FALSE(td_chat_family_bos(TD_CHAT_UNKNOWN));
}

/* ---- rendering, written out ----------------------------------------------------------- */

#define MSG(r, c)                                                                                                      \
    { r, c, sizeof(c) - 1 }

static void test_render_by_hand(void) {
    const td_chat_template chatml = {.family = TD_CHAT_CHATML};
    td_chat_template smol = {.family = TD_CHAT_CHATML, .default_system = (char *)"Be nice.", .default_system_len = 8};
    const td_chat_template llama3 = {.family = TD_CHAT_LLAMA3};
    const td_chat_template llama2 = {.family = TD_CHAT_LLAMA2};
    const td_chat_template mistral = {.family = TD_CHAT_MISTRAL};
    const td_chat_template mistral01 = {.family = TD_CHAT_MISTRAL_V01};
    const td_chat_msg su[] = {MSG("system", " S "), MSG("user", " U ")};
    const td_chat_msg u[] = {MSG("user", "hi")};
    const td_chat_msg uau[] = {MSG("user", "a"), MSG("assistant", " b "), MSG("user", "c")};

    expect_render(&chatml, su, 2, true,
                  "<|im_start|>system\n S <|im_end|>\n<|im_start|>user\n U <|im_end|>\n"
                  "<|im_start|>assistant\n");
    expect_render(&chatml, su, 2, false, "<|im_start|>system\n S <|im_end|>\n<|im_start|>user\n U <|im_end|>\n");
    /* the default system prompt only when the first message is not a system one */
    expect_render(&smol, u, 1, false, "<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n");
    expect_render(&smol, su, 2, false, "<|im_start|>system\n S <|im_end|>\n<|im_start|>user\n U <|im_end|>\n");
    /* BOS never written at the start; trimmed content */
    expect_render(&llama3, su, 2, true,
                  "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n");
    expect_render(&llama2, su, 2, true, "[INST] <<SYS>>\n S \n<</SYS>>\n\n U [/INST]");
    expect_render(&llama2, uau, 3, false, "[INST] a [/INST] b </s><s>[INST] c [/INST]");
    expect_render(&mistral, su, 2, true, "[INST]  S \n U  [/INST]");
    expect_render(&mistral, uau, 3, true, "[INST] a [/INST] b </s>[INST] c [/INST]");
    expect_render(&mistral01, uau, 3, true, "[INST] a [/INST] b </s> [INST] c [/INST]");

    /* content is bytes: NUL kept, length honoured, NULL allowed when empty */
    const td_chat_msg nul[] = {{"user", "a\0b", 3}, {"assistant", NULL, 0}};
    td_error err = {0};
    char *out = NULL;
    size_t len = 0;
    TD_ASSERT_OK(td_chat_render(&chatml, nul, 2, false, &out, &len, &err), &err);
    static const char want[] = "<|im_start|>user\na\0b<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n";
    CU_ASSERT_EQUAL(len, sizeof want - 1);
    CU_ASSERT(out && memcmp(out, want, sizeof want) == 0);
    free(out);
    const td_chat_msg cut[] = {{"user", "abcdef", 2}};
    expect_render(&llama3, cut, 1, false, "<|start_header_id|>user<|end_header_id|>\n\nab<|eot_id|>");
    /* Unicode whitespace trimmed as Python's str.strip; U+200B is not whitespace */
    const td_chat_msg uni[] = {MSG("user", "\xe3\x80\x80\xc2\xa0x\xe2\x80\x89\xe2\x80\x8b\xc2\x85")};
    expect_render(&llama3, uni, 1, false,
                  "<|start_header_id|>user<|end_header_id|>\n\nx\xe2\x80\x89\xe2\x80\x8b<|eot_id|>");
}

static void test_render_errors(void) {
    const td_chat_template fams[] = {
        {.family = TD_CHAT_CHATML},  {.family = TD_CHAT_LLAMA3},      {.family = TD_CHAT_LLAMA2},
        {.family = TD_CHAT_MISTRAL}, {.family = TD_CHAT_MISTRAL_V01},
    };
    const td_chat_msg tool[] = {MSG("user", "x"), MSG("tool", "42")};
    const td_chat_msg caps[] = {MSG("User", "x")};
    const td_chat_msg norole[] = {{NULL, "x", 1}};
    const td_chat_msg nocontent[] = {{"user", NULL, 3}};
    const td_chat_msg one[] = {MSG("user", "x")};
    for (size_t i = 0; i < sizeof fams / sizeof fams[0]; i++) {
        expect_render_error(&fams[i], tool, 2, "\"tool\"");
        expect_render_error(&fams[i], caps, 1, "\"User\"");
        expect_render_error(&fams[i], norole, 1, "no role");
        expect_render_error(&fams[i], nocontent, 1, NULL);
        expect_render_error(&fams[i], one, 0, "no messages");
        expect_render_error(&fams[i], NULL, 0, "no messages");
    }
    /* llama2 / mistral: alternation, system placement */
    const td_chat_msg uu[] = {MSG("user", "a"), MSG("user", "b")};
    const td_chat_msg au[] = {MSG("assistant", "a"), MSG("user", "b")};
    const td_chat_msg s[] = {MSG("system", "a")};
    const td_chat_msg us[] = {MSG("user", "a"), MSG("system", "b")};
    for (size_t i = 2; i < sizeof fams / sizeof fams[0]; i++) {
        expect_render_error(&fams[i], uu, 2, "alternate");
        expect_render_error(&fams[i], au, 2, "alternate");
        expect_render_error(&fams[i], s, 1, "no user message");
        expect_render_error(&fams[i], us, 2, "system");
    }
    /* chatml / llama3 render those */
    for (size_t i = 0; i < 2; i++) {
        td_error err = {0};
        tandem_status st;
        free(render(&fams[i], uu, 2, true, &st, &err));
        CU_ASSERT_EQUAL(st, TANDEM_OK);
        free(render(&fams[i], us, 2, true, &st, &err));
        CU_ASSERT_EQUAL(st, TANDEM_OK);
    }
    /* no family */
    const td_chat_template none = {0};
    expect_render_error(&none, one, 1, "family");
    const td_chat_template bad = {.family = (td_chat_family)42};
    expect_render_error(&bad, one, 1, "family");
    td_error err = {0};
    CU_ASSERT_EQUAL(td_chat_render(&fams[0], one, 1, true, NULL, NULL, &err), TANDEM_ERR_INVALID_ARGUMENT);
    td_chat_template_free(NULL);
}

/* ---- GGUF ---------------------------------------------------------------------------- */

static void test_gguf_model(void) {
    td_gguf *g = NULL;
    td_error err = {0};
    TD_ASSERT_OK(td_gguf_open(TD_TEST_MODEL, &g, &err), &err);
    td_chat_template t;
    TD_ASSERT_OK(td_chat_template_from_gguf(g, &t, &err), &err);
    CU_ASSERT_EQUAL(t.family, TD_CHAT_CHATML);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t.default_system);
    CU_ASSERT_STRING_EQUAL(t.default_system, smollm_system);
    td_chat_family f = TD_CHAT_UNKNOWN;
    TD_ASSERT_OK(td_chat_detect_gguf(g, &f, &err), &err);
    CU_ASSERT_EQUAL(f, TD_CHAT_CHATML);
    /* the model's template is the one written out above */
    td_gguf_str s;
    TD_ASSERT_OK(td_gguf_get_str(g, "tokenizer.chat_template", &s, &err), &err);
    CU_ASSERT_EQUAL(s.len, strlen(smollm_tmpl));
    CU_ASSERT(s.len == strlen(smollm_tmpl) && memcmp(s.ptr, smollm_tmpl, s.len) == 0);
    td_gguf_close(g);
    const td_chat_msg u[] = {MSG("user", "Hi")};
    expect_render(&t, u, 1, true,
                  "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                  "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    td_chat_template_free(&t);
}

/* A GGUF in memory with, as its one key, tokenizer.chat_template (a string,
 * or a u32 when tmpl is NULL), or no key at all when key is false. */
static buf gguf_with(bool key, const char *tmpl) {
    buf kv = {0};
    if (key) {
        str(&kv, "tokenizer.chat_template");
        u32(&kv, tmpl ? TD_GGUF_STRING : TD_GGUF_UINT32);
        if (tmpl)
            str(&kv, tmpl);
        else
            u32(&kv, 7);
    }
    buf b = {0};
    u32(&b, 0x46554747u);
    u32(&b, 3);
    u64(&b, 0);
    u64(&b, key ? 1 : 0);
    if (kv.n)
        put(&b, kv.p, kv.n);
    free(kv.p);
    return b;
}

static tandem_status from_mem(const buf *b, td_chat_template *t, td_chat_family *f, td_error *err) {
    td_gguf *g = NULL;
    TD_ASSERT_OK(td_gguf_open_memory(b->p, b->n, "mem.gguf", &g, err), err);
    tandem_status st = td_chat_template_from_gguf(g, t, err);
    td_error err2 = {0};
    CU_ASSERT_EQUAL(td_chat_detect_gguf(g, f, &err2), st);
    td_gguf_close(g);
    return st;
}

static void test_gguf_errors(void) {
    td_error err = {0};
    td_chat_template t;
    td_chat_family f = TD_CHAT_UNKNOWN;

    buf b = gguf_with(false, NULL);
    CU_ASSERT_EQUAL(from_mem(&b, &t, &f, &err), TANDEM_ERR_NOT_FOUND);
    CU_ASSERT(strstr(err.msg, "tokenizer.chat_template") != NULL);
    free(b.p);

    b = gguf_with(true, NULL);
    CU_ASSERT_EQUAL(from_mem(&b, &t, &f, &err), TANDEM_ERR_FORMAT);
    free(b.p);

    b = gguf_with(true, "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['content'] }}{% endfor %}");
    CU_ASSERT_EQUAL(from_mem(&b, &t, &f, &err), TANDEM_ERR_UNSUPPORTED);
    CU_ASSERT(strstr(err.msg, "mem.gguf") != NULL);
    CU_ASSERT(strstr(err.msg, "{{ bos_token }}{% for") != NULL);
    CU_ASSERT_PTR_NULL(t.default_system);
    free(b.p);

    b = gguf_with(true, "{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>' }}"
                        "{% endfor %}");
    TD_ASSERT_OK(from_mem(&b, &t, &f, &err), &err);
    CU_ASSERT_EQUAL(t.family, TD_CHAT_LLAMA3);
    CU_ASSERT_EQUAL(f, TD_CHAT_LLAMA3);
    td_chat_template_free(&t);
    free(b.p);
}

void td_test_register(void) {
    static const td_test oracle[] = {{"oracle_vectors", test_oracle_vectors}, {NULL, NULL}};
    static const td_test detection[] = {
        {"files_and_variants", test_detect_files},
        {"default_system", test_default_system},
        {"strings", test_detect_strings},
        {"names", test_names},
        {NULL, NULL},
    };
    static const td_test render_tests[] = {
        {"by_hand", test_render_by_hand},
        {"errors", test_render_errors},
        {NULL, NULL},
    };
    static const td_test gguf[] = {
        {"model", test_gguf_model},
        {"errors", test_gguf_errors},
        {NULL, NULL},
    };
    td_add_suite("chat_oracle", oracle);
    td_add_suite("chat_detect", detection);
    td_add_suite("chat_render", render_tests);
    td_add_suite("chat_gguf", gguf);
}
