/* Chat templates: a conversation (OpenAI-style messages) rendered into the
 * prompt text a chat model was trained on.
 *
 * A model's GGUF carries its Hugging Face chat template as Jinja source
 * (`tokenizer.chat_template`). There is no Jinja engine here: the template is
 * recognised by markers in its source, as llama.cpp's
 * llama_chat_detect_template does, and rendered by C code that produces,
 * byte for byte, what the template itself renders (Hugging Face
 * apply_chat_template) for these families:
 *
 *   chatml        <|im_start|>ROLE\nCONTENT<|im_end|>\n ... and, as the
 *                 generation prompt, <|im_start|>assistant\n (SmolLM2, Qwen,
 *                 OpenHermes). Content verbatim. Where the template inserts a
 *                 default system prompt when the conversation does not start
 *                 with a system message (SmolLM2: "You are a helpful AI
 *                 assistant named SmolLM, trained by Hugging Face"), that text
 *                 is read from the template's string literals (see
 *                 td_chat_template) and inserted the same way.
 *   llama3        <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>
 *                 ... + <|start_header_id|>assistant<|end_header_id|>\n\n
 *                 (Meta-Llama-3-*-Instruct). Content trimmed (Jinja's trim).
 *                 Llama-3.1+ templates, which also write a "Cutting Knowledge
 *                 Date" system header, are detected as llama3 and rendered
 *                 without it, as llama.cpp does.
 *   llama2        Llama-2-chat: each user turn is <s>[INST] CONTENT [/INST],
 *                 each assistant turn " CONTENT </s>"; a leading system
 *                 message is folded into the first user turn as
 *                 <<SYS>>\nSYSTEM\n<</SYS>>\n\nUSER, and that whole turn is
 *                 then trimmed (Python's str.strip, as the template does).
 *   mistral       Mistral-7B-Instruct-v0.2 / Mixtral-8x7B-Instruct-v0.1:
 *                 <s>[INST] USER [/INST]ASSISTANT</s>[INST] ... Content
 *                 verbatim. These templates refuse a system message; here a
 *                 leading one is folded into the first user turn as
 *                 "SYSTEM\nUSER", as llama.cpp does.
 *   mistral-v0.1  Mistral-7B-Instruct-v0.1: the same with "</s> " (a space
 *                 after each assistant turn's EOS).
 * llama2 and the mistral families ignore add_generation_prompt (their
 * prompts already end in [/INST]); they require, after the optional leading
 * system message, user and assistant turns alternating from a user turn
 * (the templates raise otherwise), and a system message anywhere but first
 * is an error.
 *
 * Where llama.cpp's built-in formatting differs from the template (llama2:
 * llama.cpp drops the spaces around an answer and the <s> of later turns;
 * mistral-v0.1: the space after </s>; llama.cpp's trim knows only ASCII
 * whitespace where Jinja's is Python's str.strip, which also removes U+00A0,
 * U+3000 and the other Unicode spaces), the template wins.
 *
 * BOS rule: the rendered text never starts with BOS. Templates that begin the
 * prompt with bos_token (td_chat_family_bos: llama3, llama2, mistral*) expect
 * the caller to put BOS first through the tokenizer: td_tokenize(...,
 * add_bos = true, parse_special = true, ...); td_tokenizer_add_bos is true
 * for those vocabularies. BOS and EOS inside the conversation (llama2's "<s>"
 * before every later user turn, the "</s>" after each answer) stay in the
 * text as the literal token text, so the text must be tokenized with
 * parse_special. For chatml, SmolLM2's vocabulary says add_bos_token = false
 * and the template writes none.
 *
 * Roles: "system", "user" and "assistant" only (others, "tool" included, are
 * TANDEM_ERR_INVALID_ARGUMENT naming the role); an empty message list is
 * TANDEM_ERR_INVALID_ARGUMENT. Content is any bytes (length given, NUL
 * allowed). Nothing here prints or exits. */
#ifndef TD_ENGINE_CHAT_TEMPLATE_H
#define TD_ENGINE_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

#include "base/error.h"
#include "engine/gguf.h"

typedef enum td_chat_family {
    TD_CHAT_UNKNOWN = 0,
    TD_CHAT_CHATML,
    TD_CHAT_LLAMA3,
    TD_CHAT_LLAMA2,
    TD_CHAT_MISTRAL,
    TD_CHAT_MISTRAL_V01,
    TD_CHAT_FAMILY_COUNT
} td_chat_family;

typedef struct td_chat_msg {
    const char *role;    /* NUL-terminated */
    const char *content; /* content_len bytes; may be NULL when content_len is 0 */
    size_t content_len;
} td_chat_msg;

/* A family plus what the template's source adds to it. A zero-initialised
 * struct with only family set is valid (no default system prompt): that is
 * how an explicit override by name is used. */
typedef struct td_chat_template {
    td_chat_family family;
    /* chatml: the system prompt the template inserts when the first message
     * is not a system message (owned, NUL-terminated); NULL when none. */
    char *default_system;
    size_t default_system_len;
} td_chat_template;

/* The family of a Jinja template, from markers in its source (whitespace and
 * formatting do not matter); a template that is exactly a family name
 * ("chatml", ...) is that family, as in llama.cpp. TD_CHAT_UNKNOWN when no
 * supported family is recognised, including the families llama.cpp knows
 * that are not rendered here (Phi-4 and SmolVLM among the <|im_start|> ones,
 * Mistral's v3/v7 templates with [AVAILABLE_TOOLS] or [SYSTEM_PROMPT],
 * Mistral's official "v1" one with ' [INST] ' + system_message). */
td_chat_family td_chat_detect(const char *tmpl, size_t len);

/* Detects tmpl[0..len) and reads its default system prompt (chatml). An
 * unrecognised template is TANDEM_ERR_UNSUPPORTED naming its first bytes.
 * Free with td_chat_template_free. */
tandem_status td_chat_template_init(const char *tmpl, size_t len, td_chat_template *out, td_error *err);

/* The same from the GGUF key tokenizer.chat_template: TANDEM_ERR_NOT_FOUND
 * when the file has none, TANDEM_ERR_FORMAT when it is not a string,
 * TANDEM_ERR_UNSUPPORTED (naming the file and the template's start) when it
 * is not recognised. */
tandem_status td_chat_template_from_gguf(const td_gguf *g, td_chat_template *out, td_error *err);

/* Only the family of g's template (same errors). */
tandem_status td_chat_detect_gguf(const td_gguf *g, td_chat_family *out, td_error *err);

/* Frees default_system and resets t to zero (t may be NULL). */
void td_chat_template_free(td_chat_template *t);

/* "chatml", "llama3", "llama2", "mistral", "mistral-v0.1" (and "llama-3",
 * "llama-2", "mistral-v0.2" as aliases, any case) -> the family;
 * anything else is TANDEM_ERR_INVALID_ARGUMENT listing the names. */
tandem_status td_chat_family_parse(const char *name, td_chat_family *out, td_error *err);
/* The canonical name; "unknown" for TD_CHAT_UNKNOWN and out-of-range values. */
const char *td_chat_family_name(td_chat_family f);
/* Whether the family's template starts the prompt with BOS (which the
 * rendering leaves to the tokenizer; see the BOS rule above). */
bool td_chat_family_bos(td_chat_family f);

/* Renders msgs[0..n) and, when add_generation_prompt is set and the family
 * has one, the assistant's generation prompt into a malloc'd NUL-terminated
 * string (*out, *out_len bytes without the NUL; the caller frees it). On
 * failure *out is NULL. */
tandem_status td_chat_render(const td_chat_template *t, const td_chat_msg *msgs, size_t n, bool add_generation_prompt,
                             char **out, size_t *out_len, td_error *err);

#endif /* TD_ENGINE_CHAT_TEMPLATE_H */
