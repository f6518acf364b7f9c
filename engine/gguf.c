#include "engine/gguf.h"

#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/dequant.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" read as a little-endian u32 */
/* Sanity limits far above any real file; they bound what a corrupt count can
 * make us allocate before the bytes behind it are checked. */
#define MAX_KEY_LEN 65535
#define MAX_NAME_LEN 1024

struct td_gguf {
    char *name;
    const uint8_t *base;
    size_t size;
    bool mapped; /* base is our mmap */
    uint32_t version, alignment;
    int64_t n_kv, n_tensors;
    td_gguf_kv *kv;
    td_gguf_tensor *tensors;
    void **allocs; /* arrays' element tables */
    size_t n_allocs, allocs_cap;
};

/* ---- a bounds-checked cursor ------------------------------------------- */

typedef struct reader {
    td_gguf *g;
    const uint8_t *p, *end;
    td_error *err;
} reader;

static size_t at(const reader *r) { return (size_t)(r->p - r->g->base); }

static tandem_status bad(reader *r, const char *what, const char *problem) {
    return td_fail(r->err, TANDEM_ERR_FORMAT, "%s: %s at byte %zu (%s)", r->g->name, problem, at(r), what);
}

static tandem_status need(reader *r, uint64_t n, const char *what) {
    if ((uint64_t)(r->end - r->p) < n)
        return td_fail(r->err, TANDEM_ERR_FORMAT, "%s: truncated at byte %zu: %s needs %llu bytes, %zu are left",
                       r->g->name, at(r), what, (unsigned long long)n, (size_t)(r->end - r->p));
    return TANDEM_OK;
}

static tandem_status rd_u32(reader *r, uint32_t *v, const char *what) {
    tandem_status st = need(r, 4, what);
    if (!st) {
        memcpy(v, r->p, 4); /* x86 and arm64 are little-endian, as the file is */
        r->p += 4;
    }
    return st;
}

static tandem_status rd_u64(reader *r, uint64_t *v, const char *what) {
    tandem_status st = need(r, 8, what);
    if (!st) {
        memcpy(v, r->p, 8);
        r->p += 8;
    }
    return st;
}

static tandem_status rd_str(reader *r, td_gguf_str *s, uint64_t max_len, const char *what) {
    uint64_t len;
    tandem_status st = rd_u64(r, &len, what);
    if (st)
        return st;
    if (len > max_len) {
        r->p -= 8;
        return bad(r, what, "string length over the limit");
    }
    if ((st = need(r, len, what)))
        return st;
    s->ptr = (const char *)r->p;
    s->len = len;
    r->p += len;
    return TANDEM_OK;
}

static void *track(td_gguf *g, void *p) {
    if (!p)
        return NULL;
    if (g->n_allocs == g->allocs_cap) {
        size_t cap = g->allocs_cap ? 2 * g->allocs_cap : 16;
        void **a = realloc(g->allocs, cap * sizeof *a);
        if (!a) {
            free(p);
            return NULL;
        }
        g->allocs = a, g->allocs_cap = cap;
    }
    return g->allocs[g->n_allocs++] = p;
}

static size_t scalar_size(td_gguf_type t) {
    switch (t) {
    case TD_GGUF_UINT8:
    case TD_GGUF_INT8:
    case TD_GGUF_BOOL: return 1;
    case TD_GGUF_UINT16:
    case TD_GGUF_INT16: return 2;
    case TD_GGUF_UINT32:
    case TD_GGUF_INT32:
    case TD_GGUF_FLOAT32: return 4;
    case TD_GGUF_UINT64:
    case TD_GGUF_INT64:
    case TD_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

static void decode_scalar(td_gguf_type t, const uint8_t *p, td_gguf_value *v) {
    v->type = t;
    switch (t) {
    case TD_GGUF_UINT8: v->u = p[0]; break;
    case TD_GGUF_BOOL: v->u = p[0] != 0; break;
    case TD_GGUF_INT8: v->i = (int8_t)p[0]; break;
    case TD_GGUF_UINT16: {
        uint16_t x;
        memcpy(&x, p, 2);
        v->u = x;
    } break;
    case TD_GGUF_INT16: {
        int16_t x;
        memcpy(&x, p, 2);
        v->i = x;
    } break;
    case TD_GGUF_UINT32: {
        uint32_t x;
        memcpy(&x, p, 4);
        v->u = x;
    } break;
    case TD_GGUF_INT32: {
        int32_t x;
        memcpy(&x, p, 4);
        v->i = x;
    } break;
    case TD_GGUF_FLOAT32: {
        float x;
        memcpy(&x, p, 4);
        v->f = x;
    } break;
    case TD_GGUF_UINT64: memcpy(&v->u, p, 8); break;
    case TD_GGUF_INT64: memcpy(&v->i, p, 8); break;
    case TD_GGUF_FLOAT64: memcpy(&v->f, p, 8); break;
    default: break;
    }
}

static tandem_status rd_value(reader *r, td_gguf_type t, td_gguf_value *v, int depth, const char *what);

static tandem_status rd_array(reader *r, td_gguf_value *v, int depth, const char *what) {
    uint32_t et;
    uint64_t n;
    tandem_status st;
    if ((st = rd_u32(r, &et, what)))
        return st;
    if (et >= TD_GGUF_TYPE_COUNT) {
        r->p -= 4;
        return bad(r, what, "unknown array element type");
    }
    if (et == TD_GGUF_ARRAY && depth + 1 >= TD_GGUF_MAX_DEPTH)
        return bad(r, what, "arrays nested too deep");
    if ((st = rd_u64(r, &n, what)))
        return st;
    v->type = TD_GGUF_ARRAY;
    v->arr.type = (td_gguf_type)et;
    v->arr.n = n;
    v->arr.data = r->p;
    v->arr.strs = NULL;
    v->arr.elems = NULL;
    /* every element takes at least this many bytes: a count the file cannot
     * hold is refused before anything is allocated for it */
    size_t min = et == TD_GGUF_STRING ? 8 : et == TD_GGUF_ARRAY ? 12 : scalar_size((td_gguf_type)et);
    if (n > (uint64_t)(r->end - r->p) / min)
        return td_fail(r->err, TANDEM_ERR_FORMAT,
                       "%s: array of %llu %s at byte %zu (%s) needs more bytes than the %zu left", r->g->name,
                       (unsigned long long)n, td_gguf_type_name((td_gguf_type)et), at(r), what,
                       (size_t)(r->end - r->p));
    if (et == TD_GGUF_STRING) {
        td_gguf_str *s = track(r->g, malloc((n ? n : 1) * sizeof *s));
        if (!s)
            return td_fail(r->err, TANDEM_ERR_OUT_OF_MEMORY, "%s: out of memory for %llu strings (%s)", r->g->name,
                           (unsigned long long)n, what);
        for (uint64_t i = 0; i < n; i++)
            if ((st = rd_str(r, &s[i], UINT32_MAX, what)))
                return st;
        v->arr.strs = s;
    } else if (et == TD_GGUF_ARRAY) {
        td_gguf_value *e = track(r->g, calloc(n ? n : 1, sizeof *e));
        if (!e)
            return td_fail(r->err, TANDEM_ERR_OUT_OF_MEMORY, "%s: out of memory for %llu arrays (%s)", r->g->name,
                           (unsigned long long)n, what);
        for (uint64_t i = 0; i < n; i++)
            if ((st = rd_value(r, TD_GGUF_ARRAY, &e[i], depth + 1, what)))
                return st;
        v->arr.elems = e;
    } else {
        r->p += n * min;
    }
    return TANDEM_OK;
}

static tandem_status rd_value(reader *r, td_gguf_type t, td_gguf_value *v, int depth, const char *what) {
    if (t == TD_GGUF_STRING) {
        v->type = t;
        return rd_str(r, &v->s, UINT32_MAX, what);
    }
    if (t == TD_GGUF_ARRAY)
        return rd_array(r, v, depth, what);
    size_t n = scalar_size(t);
    tandem_status st = need(r, n, what);
    if (!st) {
        decode_scalar(t, r->p, v);
        r->p += n;
    }
    return st;
}

/* ---- header, metadata, tensor infos --------------------------------------- */

static bool str_has_nul(td_gguf_str s) { return memchr(s.ptr, 0, s.len) != NULL; }

static int cmp_offset(const void *a, const void *b) {
    const td_gguf_tensor *x = *(const td_gguf_tensor *const *)a, *y = *(const td_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static tandem_status parse(td_gguf *g, td_error *err) {
    reader r = {.g = g, .p = g->base, .end = g->base + g->size, .err = err};
    uint32_t magic, version;
    uint64_t n_tensors, n_kv;
    tandem_status st;
    if ((st = rd_u32(&r, &magic, "magic")))
        return st;
    if (magic != GGUF_MAGIC)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: not a GGUF file (bad magic %02x %02x %02x %02x)", g->name,
                       g->base[0], g->base[1], g->base[2], g->base[3]);
    if ((st = rd_u32(&r, &version, "version")))
        return st;
    if (version == 0x02000000u || version == 0x03000000u)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: big-endian GGUF files are not supported", g->name);
    if (version == 1)
        return td_fail(err, TANDEM_ERR_FORMAT,
                       "%s: GGUF version 1 is not supported (re-convert it with a current llama.cpp)", g->name);
    if (version != 2 && version != 3)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: unknown GGUF version %u (2 and 3 are supported)", g->name, version);
    g->version = version;
    if ((st = rd_u64(&r, &n_tensors, "tensor count")) || (st = rd_u64(&r, &n_kv, "metadata count")))
        return st;
    /* a key-value pair takes >= 13 bytes, a tensor info >= 24 */
    size_t left = (size_t)(r.end - r.p);
    if (n_kv > left / 13 || n_tensors > left / 24)
        return td_fail(err, TANDEM_ERR_FORMAT,
                       "%s: header claims %llu metadata pairs and %llu tensors: more than its %zu bytes can hold",
                       g->name, (unsigned long long)n_kv, (unsigned long long)n_tensors, g->size);
    g->kv = calloc(n_kv ? n_kv : 1, sizeof *g->kv);
    g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "%s: out of memory for %llu tensors", g->name,
                       (unsigned long long)n_tensors);

    g->alignment = TD_GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < n_kv; i++) {
        td_gguf_kv *kv = &g->kv[i];
        char what[96];
        snprintf(what, sizeof what, "metadata pair %llu", (unsigned long long)i);
        if ((st = rd_str(&r, &kv->key, MAX_KEY_LEN, what)))
            return st;
        if (kv->key.len == 0 || str_has_nul(kv->key))
            return bad(&r, what, "empty key or key with a NUL byte");
        snprintf(what, sizeof what, "value of '%.*s'", (int)(kv->key.len > 60 ? 60 : kv->key.len), kv->key.ptr);
        for (uint64_t j = 0; j < i; j++)
            if (g->kv[j].key.len == kv->key.len && !memcmp(g->kv[j].key.ptr, kv->key.ptr, kv->key.len))
                return bad(&r, what, "duplicate key");
        uint32_t t;
        if ((st = rd_u32(&r, &t, what)))
            return st;
        if (t >= TD_GGUF_TYPE_COUNT) {
            r.p -= 4;
            return bad(&r, what, "unknown value type");
        }
        if ((st = rd_value(&r, (td_gguf_type)t, &kv->value, 0, what)))
            return st;
        g->n_kv = (int64_t)i + 1;
        if (td_gguf_str_eq(kv->key, "general.alignment")) {
            if (kv->value.type != TD_GGUF_UINT32 || kv->value.u == 0 || (kv->value.u & (kv->value.u - 1)))
                return td_fail(err, TANDEM_ERR_FORMAT, "%s: general.alignment must be a u32 power of two (got a %s)",
                               g->name, td_gguf_type_name(kv->value.type));
            g->alignment = (uint32_t)kv->value.u;
        }
    }

    for (uint64_t i = 0; i < n_tensors; i++) {
        td_gguf_tensor *t = &g->tensors[i];
        char what[128];
        snprintf(what, sizeof what, "tensor info %llu", (unsigned long long)i);
        if ((st = rd_str(&r, &t->name, MAX_NAME_LEN, what)))
            return st;
        if (t->name.len == 0 || str_has_nul(t->name))
            return bad(&r, what, "empty tensor name or name with a NUL byte");
        snprintf(what, sizeof what, "tensor '%.*s'", (int)(t->name.len > 80 ? 80 : t->name.len), t->name.ptr);
        if ((st = rd_u32(&r, &t->n_dims, what)))
            return st;
        if (t->n_dims == 0 || t->n_dims > TD_GGUF_MAX_DIMS) {
            r.p -= 4;
            return bad(&r, what, "number of dimensions not in 1..4");
        }
        for (int d = 0; d < TD_GGUF_MAX_DIMS; d++)
            t->ne[d] = 1;
        uint64_t elems = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            uint64_t ne;
            if ((st = rd_u64(&r, &ne, what)))
                return st;
            if (ne == 0 || ne > (uint64_t)INT64_MAX || elems > (uint64_t)INT64_MAX / ne) {
                r.p -= 8;
                return bad(&r, what, "dimension is 0 or the element count overflows");
            }
            t->ne[d] = (int64_t)ne;
            elems *= ne;
        }
        if ((st = rd_u32(&r, &t->type, what)) || (st = rd_u64(&r, &t->offset, what)))
            return st;
        int64_t block_elems;
        size_t block_bytes;
        td_error terr;
        if ((st = td_ggml_type_info(t->type, &block_elems, &block_bytes, &terr)))
            return td_fail(err, st, "%s: %s has type %u: %s", g->name, what, t->type, terr.msg);
        if (t->ne[0] % block_elems)
            return td_fail(err, TANDEM_ERR_FORMAT,
                           "%s: %s: row of %lld elements is not a whole number of %lld-element blocks", g->name, what,
                           (long long)t->ne[0], (long long)block_elems);
        uint64_t blocks = elems / (uint64_t)block_elems;
        if (blocks > UINT64_MAX / block_bytes)
            return bad(&r, what, "byte size overflows");
        t->n_bytes = blocks * block_bytes;
        if (t->offset % g->alignment)
            return td_fail(err, TANDEM_ERR_FORMAT, "%s: %s: data offset %llu is not a multiple of the alignment %u",
                           g->name, what, (unsigned long long)t->offset, g->alignment);
        for (uint64_t j = 0; j < i; j++)
            if (g->tensors[j].name.len == t->name.len && !memcmp(g->tensors[j].name.ptr, t->name.ptr, t->name.len))
                return bad(&r, what, "duplicate tensor name");
        g->n_tensors = (int64_t)i + 1;
    }

    /* the data section starts at the next multiple of the alignment */
    size_t pos = at(&r);
    uint64_t data = ((uint64_t)pos + g->alignment - 1) / g->alignment * g->alignment;
    if (n_tensors && data > g->size)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: truncated: the data section would start at byte %llu of %zu",
                       g->name, (unsigned long long)data, g->size);
    for (uint64_t i = 0; i < n_tensors; i++) {
        td_gguf_tensor *t = &g->tensors[i];
        uint64_t avail = g->size - data;
        if (t->offset > avail || t->n_bytes > avail - t->offset)
            return td_fail(err, TANDEM_ERR_FORMAT,
                           "%s: tensor '%.*s' ([%llu, %llu) of the data section) runs past the end of the file (%llu "
                           "data bytes)",
                           g->name, (int)(t->name.len > 80 ? 80 : t->name.len), t->name.ptr,
                           (unsigned long long)t->offset, (unsigned long long)(t->offset + t->n_bytes),
                           (unsigned long long)avail);
        t->data = g->base + data + t->offset;
    }
    /* no two tensors share bytes */
    if (n_tensors > 1) {
        const td_gguf_tensor **by = malloc(n_tensors * sizeof *by);
        if (!by)
            return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "%s: out of memory", g->name);
        for (uint64_t i = 0; i < n_tensors; i++)
            by[i] = &g->tensors[i];
        qsort(by, n_tensors, sizeof *by, cmp_offset);
        for (uint64_t i = 1; i < n_tensors; i++)
            if (by[i - 1]->offset + by[i - 1]->n_bytes > by[i]->offset) {
                st = td_fail(err, TANDEM_ERR_FORMAT, "%s: tensors '%.*s' and '%.*s' overlap in the data section",
                             g->name, (int)(by[i - 1]->name.len > 80 ? 80 : by[i - 1]->name.len), by[i - 1]->name.ptr,
                             (int)(by[i]->name.len > 80 ? 80 : by[i]->name.len), by[i]->name.ptr);
                break;
            }
        free(by);
    }
    return st;
}

static tandem_status finish_open(td_gguf *g, td_gguf **out, td_error *err) {
    tandem_status st =
        g->name ? parse(g, err) : td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "gguf: out of memory for the file name");
    if (st) {
        td_gguf_close(g);
        return st;
    }
    *out = g;
    return TANDEM_OK;
}

tandem_status td_gguf_open_memory(const void *data, size_t size, const char *name, td_gguf **out, td_error *err) {
    *out = NULL;
    td_gguf *g = calloc(1, sizeof *g);
    if (!g)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "gguf: out of memory");
    g->name = strdup(name ? name : "<memory>");
    g->base = data;
    g->size = size;
    return finish_open(g, out, err);
}

tandem_status td_gguf_open(const char *path, td_gguf **out, td_error *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return td_fail(err, TANDEM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        int e = errno;
        close(fd);
        return td_fail(err, TANDEM_ERR_IO, "%s: not a regular file%s%s", path, e ? ": " : "", e ? strerror(e) : "");
    }
    if (sb.st_size == 0) {
        close(fd);
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: empty file", path);
    }
    void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file */
    if (p == MAP_FAILED)
        return td_fail(err, TANDEM_ERR_IO, "%s: cannot map %lld bytes: %s", path, (long long)sb.st_size, strerror(e));
    td_gguf *g = calloc(1, sizeof *g);
    if (!g) {
        munmap(p, (size_t)sb.st_size);
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "gguf: out of memory");
    }
    g->name = strdup(path);
    g->base = p;
    g->size = (size_t)sb.st_size;
    g->mapped = true;
    return finish_open(g, out, err);
}

void td_gguf_close(td_gguf *g) {
    if (!g)
        return;
    for (size_t i = 0; i < g->n_allocs; i++)
        free(g->allocs[i]);
    free(g->allocs);
    free(g->kv);
    free(g->tensors);
    if (g->mapped)
        munmap((void *)g->base, g->size);
    free(g->name);
    free(g);
}

/* ---- queries ------------------------------------------------------------------ */

const char *td_gguf_name(const td_gguf *g) { return g->name; }
uint32_t td_gguf_version(const td_gguf *g) { return g->version; }
uint32_t td_gguf_alignment(const td_gguf *g) { return g->alignment; }
int64_t td_gguf_n_kv(const td_gguf *g) { return g->n_kv; }
const td_gguf_kv *td_gguf_kv_at(const td_gguf *g, int64_t i) { return i >= 0 && i < g->n_kv ? &g->kv[i] : NULL; }
int64_t td_gguf_n_tensors(const td_gguf *g) { return g->n_tensors; }
const td_gguf_tensor *td_gguf_tensor_at(const td_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

bool td_gguf_str_eq(td_gguf_str s, const char *c) {
    size_t n = strlen(c);
    return s.len == n && memcmp(s.ptr, c, n) == 0;
}

const td_gguf_value *td_gguf_find(const td_gguf *g, const char *key) {
    for (int64_t i = 0; i < g->n_kv; i++)
        if (td_gguf_str_eq(g->kv[i].key, key))
            return &g->kv[i].value;
    return NULL;
}

const td_gguf_tensor *td_gguf_find_tensor(const td_gguf *g, const char *name) {
    for (int64_t i = 0; i < g->n_tensors; i++)
        if (td_gguf_str_eq(g->tensors[i].name, name))
            return &g->tensors[i];
    return NULL;
}

const char *td_gguf_type_name(td_gguf_type t) {
    static const char *const names[TD_GGUF_TYPE_COUNT] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                                          "bool", "string", "array", "u64", "i64", "f64"};
    return (unsigned)t < TD_GGUF_TYPE_COUNT ? names[t] : "unknown type";
}

static tandem_status lookup(const td_gguf *g, const char *key, const td_gguf_value **v, td_error *err) {
    *v = td_gguf_find(g, key);
    if (!*v)
        return td_fail(err, TANDEM_ERR_NOT_FOUND, "%s: missing metadata key '%s'", g->name, key);
    return TANDEM_OK;
}

static tandem_status wrong(const td_gguf *g, const char *key, const td_gguf_value *v, const char *want, td_error *err) {
    return td_fail(err, TANDEM_ERR_FORMAT, "%s: metadata '%s' is a %s, expected %s", g->name, key,
                   td_gguf_type_name(v->type), want);
}

tandem_status td_gguf_get_u32(const td_gguf *g, const char *key, uint32_t *out, td_error *err) {
    const td_gguf_value *v;
    tandem_status st = lookup(g, key, &v, err);
    if (st)
        return st;
    switch (v->type) {
    case TD_GGUF_UINT8:
    case TD_GGUF_UINT16:
    case TD_GGUF_UINT32:
    case TD_GGUF_UINT64:
        if (v->u > UINT32_MAX)
            break;
        *out = (uint32_t)v->u;
        return TANDEM_OK;
    case TD_GGUF_INT8:
    case TD_GGUF_INT16:
    case TD_GGUF_INT32:
    case TD_GGUF_INT64:
        if (v->i < 0 || v->i > (int64_t)UINT32_MAX)
            break;
        *out = (uint32_t)v->i;
        return TANDEM_OK;
    default: return wrong(g, key, v, "an unsigned integer", err);
    }
    return td_fail(err, TANDEM_ERR_FORMAT, "%s: metadata '%s' is out of range for a u32", g->name, key);
}

tandem_status td_gguf_get_f32(const td_gguf *g, const char *key, float *out, td_error *err) {
    const td_gguf_value *v;
    tandem_status st = lookup(g, key, &v, err);
    if (st)
        return st;
    if (v->type != TD_GGUF_FLOAT32 && v->type != TD_GGUF_FLOAT64)
        return wrong(g, key, v, "a float", err);
    *out = (float)v->f;
    return TANDEM_OK;
}

tandem_status td_gguf_get_str(const td_gguf *g, const char *key, td_gguf_str *out, td_error *err) {
    const td_gguf_value *v;
    tandem_status st = lookup(g, key, &v, err);
    if (st)
        return st;
    if (v->type != TD_GGUF_STRING)
        return wrong(g, key, v, "a string", err);
    *out = v->s;
    return TANDEM_OK;
}

tandem_status td_gguf_get_arr(const td_gguf *g, const char *key, td_gguf_type elem_type, const td_gguf_value **out,
                              td_error *err) {
    const td_gguf_value *v;
    tandem_status st = lookup(g, key, &v, err);
    if (st)
        return st;
    if (v->type != TD_GGUF_ARRAY)
        return wrong(g, key, v, "an array", err);
    if (elem_type != TD_GGUF_TYPE_COUNT && v->arr.type != elem_type)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: metadata '%s' is an array of %s, expected an array of %s", g->name,
                       key, td_gguf_type_name(v->arr.type), td_gguf_type_name(elem_type));
    *out = v;
    return TANDEM_OK;
}
