/* Stop strings on streamed text (see stop.h).
 *
 * Per stop string, a KMP automaton whose state is the length of the longest
 * tail of the text so far that is a prefix of the string. The state survives
 * across feeds, so each byte is looked at once per string, and the tail to
 * hold back is exactly the largest state: every byte before it can no longer
 * start a match. Since a match's first byte is always within the held tail or
 * the new text, both sit together in buf and the cut is an index into it. */
#include "engine/stop.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

tandem_status td_stop_init(td_stop *s, const char *const *strs, const size_t *lens, int32_t n, td_error *err) {
    memset(s, 0, sizeof *s);
    s->matched = -1;
    if (n < 0)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "stop: negative number of stop strings (%d)", (int)n);
    if (n > TD_STOP_MAX_STRINGS)
        return td_fail(err, TANDEM_ERR_LIMIT, "stop: %d stop strings, at most %d are supported", (int)n,
                       TD_STOP_MAX_STRINGS);
    size_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        if (lens[i] == 0 || !strs[i])
            return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "stop: stop string %d is empty", (int)i);
        if (lens[i] > TD_STOP_MAX_LEN)
            return td_fail(err, TANDEM_ERR_LIMIT, "stop: stop string %d is %zu bytes long, at most %d are supported",
                           (int)i, lens[i], TD_STOP_MAX_LEN);
        total += lens[i];
    }
    /* one block: pointer arrays first (aligned), then int32 arrays, then the
     * bytes; sizes are bounded by the limits above, so nothing overflows */
    size_t size =
        (size_t)n * (sizeof(char *) + sizeof(int32_t *) + 2 * sizeof(int32_t)) + total * sizeof(int32_t) + total;
    char *block = malloc(size ? size : 1);
    s->cap = 256;
    s->buf = malloc(s->cap);
    if (!block || !s->buf) {
        free(block);
        free(s->buf);
        s->buf = NULL;
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "stop: cannot allocate %zu bytes", size + 256);
    }
    const char **str = (const char **)(void *)block;
    int32_t **fail = (int32_t **)(void *)(str + n);
    int32_t *len = (int32_t *)(void *)(fail + n);
    int32_t *state = len + n;
    int32_t *fails = state + n;
    char *bytes = (char *)(fails + total);
    for (int32_t i = 0; i < n; i++) {
        int32_t l = (int32_t)lens[i];
        memcpy(bytes, strs[i], (size_t)l);
        str[i] = bytes;
        len[i] = l;
        fail[i] = fails;
        state[i] = 0;
        /* fail[q] = length of the longest proper prefix of str[0..q] that is
         * also a suffix of it: where to fall back after a mismatch */
        fails[0] = 0;
        for (int32_t q = 1, k = 0; q < l; q++) {
            while (k > 0 && bytes[q] != bytes[k])
                k = fails[k - 1];
            if (bytes[q] == bytes[k])
                k++;
            fails[q] = k;
        }
        bytes += l;
        fails += l;
    }
    s->n = n;
    s->str = str;
    s->len = len;
    s->fail = (const int32_t *const *)fail;
    s->state = state;
    return TANDEM_OK;
}

void td_stop_free(td_stop *s) {
    free((void *)s->str); /* the block */
    free(s->buf);
    memset(s, 0, sizeof *s);
    s->matched = -1;
}

void td_stop_reset(td_stop *s) {
    for (int32_t i = 0; i < s->n; i++)
        s->state[i] = 0;
    s->n_out = s->n_held = 0;
    s->matched = -1;
}

/* Forgets the bytes the previous call returned: the held tail moves to the
 * front of buf. */
static void drop_returned(td_stop *s) {
    if (s->n_out) {
        memmove(s->buf, s->buf + s->n_out, s->n_held);
        s->n_out = 0;
    }
}

tandem_status td_stop_feed(td_stop *s, const char *text, size_t len, const char **out, size_t *n_out, td_error *err) {
    drop_returned(s);
    *out = s->buf;
    *n_out = 0;
    if (s->matched >= 0)
        return TANDEM_OK;
    if (len > s->cap - s->n_held) {
        if (len > SIZE_MAX / 2 - s->n_held)
            return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "stop: %zu bytes of text is too much", len);
        size_t cap = s->cap * 2 > s->n_held + len ? s->cap * 2 : s->n_held + len;
        char *b = realloc(s->buf, cap);
        if (!b)
            return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "stop: cannot grow the text buffer to %zu bytes", cap);
        s->buf = b;
        s->cap = cap;
        *out = b;
    }
    char *buf = s->buf;
    const size_t base = s->n_held;
    if (len)
        memcpy(buf + base, text, len);

    size_t cut = SIZE_MAX;
    int32_t which = -1, hold = 0;
    for (int32_t j = 0; j < s->n; j++) {
        const char *str = s->str[j];
        const int32_t *fail = s->fail[j], l = s->len[j];
        int32_t q = s->state[j];
        for (size_t i = 0; i < len; i++) {
            char c = buf[base + i];
            while (q > 0 && str[q] != c)
                q = fail[q - 1];
            if (str[q] == c)
                q++;
            if (q == l) {
                /* the match ends at byte base + i; a later one of this string
                 * would start later, so this string is done */
                size_t start = base + i + 1 - (size_t)l;
                if (start < cut) {
                    cut = start;
                    which = j;
                }
                break;
            }
        }
        s->state[j] = q;
        if (q > hold)
            hold = q;
    }

    if (which >= 0) {
        s->matched = which;
        s->n_out = cut;
        s->n_held = 0;
    } else {
        s->n_out = base + len - (size_t)hold;
        s->n_held = (size_t)hold;
    }
    *n_out = s->n_out;
    return TANDEM_OK;
}

void td_stop_flush(td_stop *s, const char **out, size_t *n_out) {
    drop_returned(s);
    *out = s->buf;
    *n_out = 0;
    if (s->matched >= 0)
        return;
    s->n_out = s->n_held;
    s->n_held = 0;
    for (int32_t i = 0; i < s->n; i++)
        s->state[i] = 0;
    *n_out = s->n_out;
}
