/* Little-endian byte buffers for the tests that build GGUF files in memory
 * (test_gguf, test_tokenizer): each test states exactly the bytes it feeds. */
#ifndef TD_TESTS_GGUF_BYTES_H
#define TD_TESTS_GGUF_BYTES_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static inline void put(buf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static inline void u32(buf *b, uint32_t v) { put(b, &v, 4); }
static inline void u64(buf *b, uint64_t v) { put(b, &v, 8); }
/* A GGUF string: u64 length, then the bytes. */
static inline void str(buf *b, const char *s) {
    u64(b, strlen(s));
    put(b, s, strlen(s));
}

#endif /* TD_TESTS_GGUF_BYTES_H */
