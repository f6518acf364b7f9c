/* Stop strings on streamed output text.
 *
 * The detokenized text of each new token is fed in as it comes. The matcher
 * passes on at once every byte that can no longer be part of a stop string
 * and holds back only the longest tail that is still the beginning of one
 * (at most the longest stop string's length - 1 bytes), like the streaming
 * servers of vLLM and llama.cpp. A stop string may span any number of feeds.
 * When one completes, the output ends just before it: the stop string and
 * everything after it are dropped, and the matcher stays stopped.
 *
 * A stop string matches as soon as its last byte arrives, since generation
 * ends there. When several complete within the same feed, the one that
 * starts first wins (the output is cut earliest), and at equal starts the
 * one given first. So with stops "bc" and "abcd", "xabcd" in one feed gives
 * "x", while "xabc" then "d" gives "xa": generation stopped at "bc".
 *
 * Matching is on bytes (UTF-8 needs no special case: a complete stop string
 * only matches complete characters). Each feed costs O(bytes fed x number of
 * stop strings), with one KMP automaton per stop string. */
#ifndef TD_ENGINE_STOP_H
#define TD_ENGINE_STOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

#define TD_STOP_MAX_STRINGS 64
#define TD_STOP_MAX_LEN 1024 /* bytes per stop string */

typedef struct td_stop {
    int32_t n;        /* stop strings */
    const char **str; /* n strings (copies, in one allocation with len, fail and state) */
    const int32_t *len;
    const int32_t *const *fail; /* KMP failure function of each string */
    int32_t *state;             /* per string: bytes of it matched by the text's tail */
    char *buf;                  /* [text returned by the last call | held-back tail] */
    size_t cap, n_out, n_held;
    int32_t matched; /* index of the stop string that ended the output, or -1 */
} td_stop;

/* Copies the n stop strings (strs[i] is lens[i] bytes, not necessarily NUL-
 * terminated). n may be 0: then everything passes through. An empty string
 * is TANDEM_ERR_INVALID_ARGUMENT, more than TD_STOP_MAX_STRINGS strings or
 * one longer than TD_STOP_MAX_LEN TANDEM_ERR_LIMIT, naming the index. */
tandem_status td_stop_init(td_stop *s, const char *const *strs, const size_t *lens, int32_t n, td_error *err);

void td_stop_free(td_stop *s);

/* Back to the start of a new output, with the same stop strings. */
void td_stop_reset(td_stop *s);

/* Feeds len bytes of text. *out / *n_out receive the bytes to emit now
 * (held-back bytes of earlier feeds first); they stay valid until the next
 * call on s. Returns TANDEM_OK, or TANDEM_ERR_OUT_OF_MEMORY when the buffer
 * cannot grow (nothing is consumed then). Once stopped, a feed emits nothing. */
tandem_status td_stop_feed(td_stop *s, const char *text, size_t len, const char **out, size_t *n_out, td_error *err);

/* True once a stop string has matched; s->matched says which. */
static inline bool td_stop_stopped(const td_stop *s) { return s->matched >= 0; }

/* End of output: emits the held-back tail (nothing if stopped) and clears
 * it; td_stop_stopped and s->matched are kept. */
void td_stop_flush(td_stop *s, const char **out, size_t *n_out);

#endif /* TD_ENGINE_STOP_H */
