/* libFuzzer target for the GGUF reader: any bytes must be parsed or refused,
 * never crash or read out of bounds (built with ASan/UBSan). Everything a
 * parsed file exposes is read, so a view that points outside the input is
 * caught too. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"

static volatile uint8_t sink;

static void touch(const void *p, uint64_t n) {
    const uint8_t *b = p;
    for (uint64_t i = 0; i < n; i++)
        sink ^= b[i];
}

static void walk(const td_gguf_value *v) {
    if (v->type == TD_GGUF_STRING)
        touch(v->s.ptr, v->s.len);
    if (v->type != TD_GGUF_ARRAY)
        return;
    for (uint64_t i = 0; i < v->arr.n; i++) {
        if (v->arr.type == TD_GGUF_STRING)
            touch(v->arr.strs[i].ptr, v->arr.strs[i].len);
        else if (v->arr.type == TD_GGUF_ARRAY)
            walk(&v->arr.elems[i]);
    }
    if (v->arr.type != TD_GGUF_STRING && v->arr.type != TD_GGUF_ARRAY && v->arr.n)
        touch(v->arr.data, 1); /* the first element; the parser checked the rest fits */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* a copy of exactly size bytes, so ASan sees any overread */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    td_gguf *g = NULL;
    if (td_gguf_open_memory(copy, size, "fuzz", &g, NULL) == TANDEM_OK) {
        for (int64_t i = 0; i < td_gguf_n_kv(g); i++) {
            const td_gguf_kv *kv = td_gguf_kv_at(g, i);
            touch(kv->key.ptr, kv->key.len);
            walk(&kv->value);
        }
        for (int64_t i = 0; i < td_gguf_n_tensors(g); i++) {
            const td_gguf_tensor *t = td_gguf_tensor_at(g, i);
            touch(t->name.ptr, t->name.len);
            if (t->n_bytes) {
                touch(t->data, 1);
                touch(t->data + t->n_bytes - 1, 1);
            }
        }
        td_gguf_close(g);
    }
    free(copy);
    return 0;
}
