/* GGUF reader (versions 2 and 3, little-endian): the model files llama.cpp
 * publishes.
 *
 * The file is mapped read-only; metadata and tensor infos are parsed once,
 * with every count, length, offset and dimension checked against the bytes
 * that are actually there (overflow-safe) before it is used. A malformed file
 * gives TANDEM_ERR_FORMAT (TANDEM_ERR_IO when it cannot be read) with a
 * message that names the file, the byte offset and what was being read;
 * nothing is read out of bounds. Strings are views into the mapping (not
 * NUL-terminated) and live as long as the td_gguf.
 *
 * Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md */
#ifndef TD_ENGINE_GGUF_H
#define TD_ENGINE_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

typedef enum td_gguf_type {
    TD_GGUF_UINT8 = 0,
    TD_GGUF_INT8 = 1,
    TD_GGUF_UINT16 = 2,
    TD_GGUF_INT16 = 3,
    TD_GGUF_UINT32 = 4,
    TD_GGUF_INT32 = 5,
    TD_GGUF_FLOAT32 = 6,
    TD_GGUF_BOOL = 7,
    TD_GGUF_STRING = 8,
    TD_GGUF_ARRAY = 9,
    TD_GGUF_UINT64 = 10,
    TD_GGUF_INT64 = 11,
    TD_GGUF_FLOAT64 = 12,
    TD_GGUF_TYPE_COUNT
} td_gguf_type;

#define TD_GGUF_MAX_DIMS 4
#define TD_GGUF_DEFAULT_ALIGNMENT 32
/* Arrays of arrays deeper than this are refused (no real file comes close). */
#define TD_GGUF_MAX_DEPTH 8

typedef struct td_gguf td_gguf;

typedef struct td_gguf_str {
    const char *ptr;
    uint64_t len;
} td_gguf_str;

typedef struct td_gguf_value td_gguf_value;
struct td_gguf_value {
    td_gguf_type type;
    union {
        uint64_t u;    /* UINT8..UINT64, BOOL (0 or 1) */
        int64_t i;     /* INT8..INT64 */
        double f;      /* FLOAT32, FLOAT64 */
        td_gguf_str s; /* STRING */
        struct {
            td_gguf_type type; /* of the elements */
            uint64_t n;
            const uint8_t *data;        /* numeric elements: n little-endian values */
            const td_gguf_str *strs;    /* STRING elements */
            const td_gguf_value *elems; /* ARRAY elements */
        } arr;
    };
};

typedef struct td_gguf_kv {
    td_gguf_str key;
    td_gguf_value value;
} td_gguf_kv;

typedef struct td_gguf_tensor {
    td_gguf_str name;
    uint32_t n_dims;
    int64_t ne[TD_GGUF_MAX_DIMS]; /* ggml order: ne[0] is contiguous; unused dims are 1 */
    uint32_t type;                /* ggml type id (engine/dequant.h) */
    uint64_t offset;              /* from the start of the data section */
    uint64_t n_bytes;
    const uint8_t *data;
} td_gguf_tensor;

/* Maps and parses the file at path. */
tandem_status td_gguf_open(const char *path, td_gguf **out, td_error *err);
/* Parses a GGUF image already in memory (borrowed: it must outlive the
 * td_gguf). name is used in messages. */
tandem_status td_gguf_open_memory(const void *data, size_t size, const char *name, td_gguf **out, td_error *err);
void td_gguf_close(td_gguf *g);

const char *td_gguf_name(const td_gguf *g);
uint32_t td_gguf_version(const td_gguf *g);
uint32_t td_gguf_alignment(const td_gguf *g);

int64_t td_gguf_n_kv(const td_gguf *g);
const td_gguf_kv *td_gguf_kv_at(const td_gguf *g, int64_t i);
/* The value of key, or NULL when absent. */
const td_gguf_value *td_gguf_find(const td_gguf *g, const char *key);

int64_t td_gguf_n_tensors(const td_gguf *g);
const td_gguf_tensor *td_gguf_tensor_at(const td_gguf *g, int64_t i);
/* The tensor named name, or NULL when absent. */
const td_gguf_tensor *td_gguf_find_tensor(const td_gguf *g, const char *name);

/* Typed getters. A missing key is TANDEM_ERR_NOT_FOUND, a value of another
 * type or out of the target's range TANDEM_ERR_FORMAT; the message names the
 * file and the key. Integers of any width and sign convert when in range. */
tandem_status td_gguf_get_u32(const td_gguf *g, const char *key, uint32_t *out, td_error *err);
tandem_status td_gguf_get_f32(const td_gguf *g, const char *key, float *out, td_error *err);
tandem_status td_gguf_get_str(const td_gguf *g, const char *key, td_gguf_str *out, td_error *err);
/* An array (of elem_type, unless elem_type is TD_GGUF_TYPE_COUNT: any). */
tandem_status td_gguf_get_arr(const td_gguf *g, const char *key, td_gguf_type elem_type, const td_gguf_value **out,
                              td_error *err);

/* Whether s equals the NUL-terminated c. */
bool td_gguf_str_eq(td_gguf_str s, const char *c);
const char *td_gguf_type_name(td_gguf_type t);

#endif /* TD_ENGINE_GGUF_H */
