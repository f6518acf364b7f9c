/* Tokenizer: text <-> token ids, from the `tokenizer.ggml.*` metadata of a
 * GGUF file, with the behaviour of llama.cpp (whose test vectors come from
 * Hugging Face tokenizers).
 *
 * Two vocabulary types:
 *   gpt2   byte-level BPE: the text is cut into pieces by the pre-tokenizer
 *          regexes that `tokenizer.ggml.pre` names (PCRE2, Unicode
 *          properties), each piece is merged by rank from its bytes.
 *          Pre-tokenizers: "gpt-2" (and its aliases), "smollm" (digits
 *          one by one, then GPT-2's), "llama-bpe"/"llama3"/"llama-v3"
 *          (Llama-3's), "default" or no key (llama.cpp's default chain).
 *   llama  SentencePiece-style BPE: spaces become U+2581, a space is put in
 *          front of the text (and after every special token matched in it)
 *          unless `tokenizer.ggml.add_space_prefix` is false, pieces merge by
 *          score, and bytes no token covers become <0xXX> byte tokens.
 *
 * Special tokens: control (token type 3) and unknown (2) tokens are matched
 * in the text only when parse_special is set; user-defined tokens (4) are
 * always matched, as llama.cpp and Hugging Face do. Leftmost match first, the
 * longest one where several start at the same byte; the text between matches
 * is tokenized normally.
 *
 * Invalid UTF-8 in the input is kept byte for byte (gpt2: the bytes' own
 * tokens; llama: byte tokens): for the pre-tokenizer's regexes each byte that
 * is not part of a well-formed sequence counts as one U+FFFD (a symbol), so
 * td_token_bytes of the result concatenate back to the input exactly.
 * (llama.cpp substitutes the U+FFFD bytes themselves, which loses the input.)
 * One exception, as Hugging Face does it: a byte that a gpt2 vocabulary has
 * no token for at all is dropped (SmolLM2 lacks 0x04, 0x06, 0x13, 0x14,
 * 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2, 0xF5..0xFF). llama.cpp drops it too.
 *
 * A td_tokenizer owns copies of everything it uses: the td_gguf may be
 * closed right after td_tokenizer_load. It is immutable after load, so any
 * number of threads may call td_tokenize and the rest on the same one at
 * once (each call has its own scratch memory and PCRE2 match data).
 *
 * Detokenizing: td_token_bytes gives a token's raw bytes, which may be a
 * partial UTF-8 sequence; td_detok turns a stream of ids into valid UTF-8,
 * holding an incomplete sequence back until the next token completes it and
 * replacing bytes that can no longer become valid with U+FFFD (one per
 * maximal ill-formed subsequence, as Python's and Rust's lossy decoders do).
 * No clean-up of spaces is done (llama.cpp's "clean_spaces" is lossy). */
#ifndef TD_ENGINE_TOKENIZER_H
#define TD_ENGINE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "engine/gguf.h"

typedef struct td_tokenizer td_tokenizer;

/* Token types, as stored in tokenizer.ggml.token_type (llama.cpp's values). */
typedef enum td_token_type {
    TD_TOKEN_UNDEFINED = 0,
    TD_TOKEN_NORMAL = 1,
    TD_TOKEN_UNKNOWN = 2,
    TD_TOKEN_CONTROL = 3,
    TD_TOKEN_USER_DEFINED = 4,
    TD_TOKEN_UNUSED = 5,
    TD_TOKEN_BYTE = 6,
} td_token_type;

/* Reads the tokenizer of g. Missing required keys (tokenizer.ggml.model,
 * .tokens, .merges for gpt2) are TANDEM_ERR_NOT_FOUND, malformed values and
 * mismatched array lengths TANDEM_ERR_FORMAT, an unknown model or
 * pre-tokenizer TANDEM_ERR_UNSUPPORTED; every message names the file and the
 * key. */
tandem_status td_tokenizer_load(const td_gguf *g, td_tokenizer **out, td_error *err);
void td_tokenizer_free(td_tokenizer *t);

int32_t td_tokenizer_n_vocab(const td_tokenizer *t);
/* Special ids; -1 when the file has none. */
int32_t td_tokenizer_bos(const td_tokenizer *t);
int32_t td_tokenizer_eos(const td_tokenizer *t);
int32_t td_tokenizer_eot(const td_tokenizer *t);
int32_t td_tokenizer_pad(const td_tokenizer *t);
/* Whether the model expects BOS in front of a prompt (tokenizer.ggml.
 * add_bos_token, else true for llama vocabularies and Llama-3's
 * pre-tokenizer, false for other gpt2 ones): what to pass as add_bos unless
 * the caller knows better. Likewise EOS after it (add_eos_token, default
 * false); td_tokenize never appends EOS itself. */
bool td_tokenizer_add_bos(const td_tokenizer *t);
bool td_tokenizer_add_eos(const td_tokenizer *t);
/* End of generation: EOS, EOT, EOM and the end-of-turn tokens llama.cpp
 * recognises by their text (<|im_end|>, <|eot_id|>, <|endoftext|>, ...).
 * False for ids out of range. */
bool td_tokenizer_is_eog(const td_tokenizer *t, int32_t id);
/* TD_TOKEN_*; TD_TOKEN_UNDEFINED for ids out of range. */
td_token_type td_tokenizer_token_type(const td_tokenizer *t, int32_t id);
/* "gpt2" or "llama", and the pre-tokenizer name as the file gives it. */
const char *td_tokenizer_model(const td_tokenizer *t);
const char *td_tokenizer_pre(const td_tokenizer *t);

/* Tokenizes text[0..len) (any bytes; NUL is a character like any other).
 * Writes up to cap ids and sets *n_out to the number the whole text needs;
 * when that exceeds cap it returns TANDEM_ERR_LIMIT (the first cap ids are
 * written), so a caller can retry with a buffer of *n_out. ids may be NULL
 * when cap is 0. add_bos: put BOS first (TANDEM_ERR_INVALID_ARGUMENT when the
 * vocabulary has none). */
tandem_status td_tokenize(const td_tokenizer *t, const char *text, size_t len, bool add_bos, bool parse_special,
                          int32_t *ids, size_t cap, size_t *n_out, td_error *err);

/* The bytes token id stands for: byte-level tokens decoded, U+2581 as a
 * space, <0xXX> as the byte, special tokens as their text. Valid for the
 * tokenizer's life. An id out of range is TANDEM_ERR_INVALID_ARGUMENT. */
tandem_status td_token_bytes(const td_tokenizer *t, int32_t id, const char **bytes, size_t *len, td_error *err);

/* The pre-tokenizer alone (gpt2 vocabularies; for tests and tools): the
 * pieces text[0..len) is cut into, as end offsets: piece i is
 * [ends[i-1], ends[i]). Same cap / *n_out / TANDEM_ERR_LIMIT contract as
 * td_tokenize. Special tokens are not looked for. */
tandem_status td_tokenizer_split(const td_tokenizer *t, const char *text, size_t len, size_t *ends, size_t cap,
                                 size_t *n_out, td_error *err);

/* ---- detokenizing --------------------------------------------------------- */

enum {
    TD_DETOK_SPECIAL = 1u,     /* render control/unknown/unused tokens as their text (else nothing) */
    TD_DETOK_STRIP_SPACE = 2u, /* drop one space at the start of the text (the llama prefix space) */
};

/* At most this many bytes come out of one td_detok_push or flush: a buffer
 * this big never gets TANDEM_ERR_LIMIT. */
size_t td_detok_max_bytes(const td_tokenizer *t);

/* Streaming decoder state: plain value, no resources; one per stream. */
typedef struct td_detok {
    const td_tokenizer *t;
    unsigned flags;
    uint8_t pend[4]; /* a valid but incomplete UTF-8 sequence, held back */
    uint8_t n_pend;  /* bytes in pend */
    uint8_t need;    /* total length of the sequence pend starts */
    bool started;    /* some text has come out (for TD_DETOK_STRIP_SPACE) */
} td_detok;

void td_detok_init(td_detok *d, const td_tokenizer *t, unsigned flags);
/* Feeds one id; writes the complete valid UTF-8 it yields to out[0..*n).
 * When that needs more than cap bytes: TANDEM_ERR_LIMIT, *n = bytes needed,
 * and the state is unchanged (retry with a bigger buffer). An invalid id:
 * TANDEM_ERR_INVALID_ARGUMENT, state unchanged. out is not NUL-terminated. */
tandem_status td_detok_push(td_detok *d, int32_t id, char *out, size_t cap, size_t *n, td_error *err);
/* End of stream: a held-back incomplete sequence becomes U+FFFD. */
tandem_status td_detok_flush(td_detok *d, char *out, size_t cap, size_t *n, td_error *err);

/* Whole sequence at once: a td_detok over ids[0..n_ids) and its flush. Same
 * cap / *n_out / TANDEM_ERR_LIMIT contract as td_tokenize. */
tandem_status td_detokenize(const td_tokenizer *t, const int32_t *ids, size_t n_ids, unsigned flags, char *out,
                            size_t cap, size_t *n_out, td_error *err);

#endif /* TD_ENGINE_TOKENIZER_H */
