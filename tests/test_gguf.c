/* The GGUF reader: a valid file read back value by value, then every kind of
 * malformed file (each truncation point, bad header, absurd counts, bad
 * tensors) refused with a message naming the file and the problem. Files are
 * built in memory by the small writer below, so each test states exactly
 * which bytes it feeds. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/dequant.h"
#include "engine/gguf.h"
#include "engine/llama_config.h"
#include "tests/gguf_bytes.h"
#include "tests/test_util.h"

/* ---- a GGUF writer ------------------------------------------------------ */

static void key(buf *b, const char *k, td_gguf_type t) {
    str(b, k);
    u32(b, t);
}
static void pad(buf *b, size_t align) {
    while (b->n % align)
        put(b, "", 1);
}
static void tensor_info(buf *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off) {
    str(b, name);
    u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++)
        u64(b, ne[d]);
    u32(b, type);
    u64(b, off);
}

#define N_KV 12
/* A valid file: every value type, an array of strings, an array of arrays,
 * alignment 64, two tensors (f32 [3, 2] and f16 [64]). */
static buf valid_file(uint32_t version) {
    buf b = {0};
    u32(&b, 0x46554747u);
    u32(&b, version);
    u64(&b, 2);    /* tensors */
    u64(&b, N_KV); /* metadata pairs */
    key(&b, "general.architecture", TD_GGUF_STRING), str(&b, "llama");
    key(&b, "general.alignment", TD_GGUF_UINT32), u32(&b, 64);
    key(&b, "t.u8", TD_GGUF_UINT8), put(&b, "\xfe", 1);
    key(&b, "t.i8", TD_GGUF_INT8), put(&b, "\xfe", 1);
    key(&b, "t.u16", TD_GGUF_UINT16), put(&b, "\x34\x12", 2);
    key(&b, "t.i32", TD_GGUF_INT32), u32(&b, (uint32_t)-7);
    float f = 0.25f;
    key(&b, "t.f32", TD_GGUF_FLOAT32), put(&b, &f, 4);
    key(&b, "t.bool", TD_GGUF_BOOL), put(&b, "\x01", 1);
    key(&b, "t.u64", TD_GGUF_UINT64), u64(&b, 1ull << 40);
    double d = -1.5;
    key(&b, "t.f64", TD_GGUF_FLOAT64), put(&b, &d, 8);
    key(&b, "t.strs", TD_GGUF_ARRAY), u32(&b, TD_GGUF_STRING), u64(&b, 3), str(&b, "a"), str(&b, ""), str(&b, "ccc");
    /* [[1, 2], [3]] as arrays of i32 */
    key(&b, "t.nested", TD_GGUF_ARRAY), u32(&b, TD_GGUF_ARRAY), u64(&b, 2);
    u32(&b, TD_GGUF_INT32), u64(&b, 2), u32(&b, 1), u32(&b, 2);
    u32(&b, TD_GGUF_INT32), u64(&b, 1), u32(&b, 3);
    const uint64_t ne0[2] = {3, 2}, ne1[1] = {64};
    tensor_info(&b, "a.weight", 2, ne0, 0 /* f32 */, 0);
    tensor_info(&b, "b.weight", 1, ne1, 1 /* f16 */, 64); /* 24 bytes of a, padded to 64 */
    pad(&b, 64);
    for (int i = 0; i < 6; i++) {
        float v = (float)i;
        put(&b, &v, 4);
    }
    pad(&b, 64);
    for (int i = 0; i < 64; i++)
        put(&b, "\x00\x3c", 2); /* f16 1.0 */
    return b;
}

static td_gguf *open_ok(const buf *b) {
    td_gguf *g = NULL;
    td_error err;
    TD_ASSERT_OK(td_gguf_open_memory(b->p, b->n, "valid.gguf", &g, &err), &err);
    return g;
}

/* Opens b and expects a format error whose message contains want. */
static void expect_bad(const buf *b, const char *want) {
    td_gguf *g = NULL;
    td_error err = {0};
    tandem_status st = td_gguf_open_memory(b->p, b->n, "bad.gguf", &g, &err);
    CU_ASSERT_EQUAL(st, TANDEM_ERR_FORMAT);
    CU_ASSERT_PTR_NULL(g);
    if (!strstr(err.msg, want) || !strstr(err.msg, "bad.gguf")) {
        fprintf(stderr, "\n  message '%s' lacks '%s' or the file name\n", err.msg, want);
        CU_FAIL("error message does not say what is wrong");
    }
    td_gguf_close(g);
}

/* ---- tests ---------------------------------------------------------------- */

static void test_valid_file(void) {
    for (uint32_t version = 2; version <= 3; version++) {
        buf b = valid_file(version);
        td_gguf *g = open_ok(&b);
        CU_ASSERT_EQUAL(td_gguf_version(g), version);
        CU_ASSERT_EQUAL(td_gguf_alignment(g), 64);
        CU_ASSERT_EQUAL(td_gguf_n_kv(g), N_KV);
        td_error err;
        td_gguf_str s;
        TD_ASSERT_OK(td_gguf_get_str(g, "general.architecture", &s, &err), &err);
        CU_ASSERT(td_gguf_str_eq(s, "llama"));
        CU_ASSERT_EQUAL(td_gguf_find(g, "t.u8")->u, 254);
        CU_ASSERT_EQUAL(td_gguf_find(g, "t.i8")->i, -2);
        CU_ASSERT_EQUAL(td_gguf_find(g, "t.u16")->u, 0x1234);
        CU_ASSERT_EQUAL(td_gguf_find(g, "t.i32")->i, -7);
        CU_ASSERT_EQUAL(td_gguf_find(g, "t.f32")->f, 0.25);
        CU_ASSERT_EQUAL(td_gguf_find(g, "t.bool")->u, 1);
        CU_ASSERT_EQUAL(td_gguf_find(g, "t.u64")->u, 1ull << 40);
        CU_ASSERT_EQUAL(td_gguf_find(g, "t.f64")->f, -1.5);
        const td_gguf_value *a;
        TD_ASSERT_OK(td_gguf_get_arr(g, "t.strs", TD_GGUF_STRING, &a, &err), &err);
        CU_ASSERT_EQUAL(a->arr.n, 3);
        CU_ASSERT(td_gguf_str_eq(a->arr.strs[0], "a") && td_gguf_str_eq(a->arr.strs[1], "") &&
                  td_gguf_str_eq(a->arr.strs[2], "ccc"));
        TD_ASSERT_OK(td_gguf_get_arr(g, "t.nested", TD_GGUF_ARRAY, &a, &err), &err);
        CU_ASSERT_EQUAL(a->arr.n, 2);
        CU_ASSERT_EQUAL(a->arr.elems[0].arr.n, 2);
        CU_ASSERT_EQUAL(a->arr.elems[1].arr.n, 1);
        int32_t x;
        memcpy(&x, a->arr.elems[0].arr.data + 4, 4);
        CU_ASSERT_EQUAL(x, 2);
        memcpy(&x, a->arr.elems[1].arr.data, 4);
        CU_ASSERT_EQUAL(x, 3);

        CU_ASSERT_EQUAL(td_gguf_n_tensors(g), 2);
        const td_gguf_tensor *t = td_gguf_find_tensor(g, "a.weight");
        CU_ASSERT_PTR_NOT_NULL_FATAL(t);
        CU_ASSERT_EQUAL(t->n_dims, 2);
        CU_ASSERT(t->ne[0] == 3 && t->ne[1] == 2 && t->ne[2] == 1 && t->ne[3] == 1);
        CU_ASSERT_EQUAL(t->n_bytes, 24);
        CU_ASSERT_EQUAL((size_t)(t->data - b.p) % 64, 0);
        float v;
        memcpy(&v, t->data + 5 * 4, 4);
        CU_ASSERT_EQUAL(v, 5.0f);
        t = td_gguf_find_tensor(g, "b.weight");
        CU_ASSERT_PTR_NOT_NULL_FATAL(t);
        CU_ASSERT_EQUAL(t->n_bytes, 128);
        CU_ASSERT_EQUAL(t->data[1], 0x3c);
        CU_ASSERT_PTR_NULL(td_gguf_find_tensor(g, "c.weight"));
        CU_ASSERT_PTR_NULL(td_gguf_find(g, "t.none"));
        td_gguf_close(g);
        free(b.p);
    }
}

/* Every strict prefix of a valid file is refused cleanly (ASan checks that
 * nothing past the prefix is read). */
static void test_every_truncation(void) {
    buf b = valid_file(3);
    for (size_t n = 0; n < b.n; n++) {
        uint8_t *copy = malloc(n ? n : 1); /* exactly n bytes: any overread is caught */
        memcpy(copy, b.p, n);
        td_gguf *g = NULL;
        td_error err = {0};
        tandem_status st = td_gguf_open_memory(copy, n, "cut.gguf", &g, &err);
        if (st != TANDEM_ERR_FORMAT || g) {
            fprintf(stderr, "\n  prefix of %zu bytes: %s\n", n, tandem_status_name(st));
            CU_FAIL_FATAL("truncated file accepted");
        }
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "cut.gguf"));
        free(copy);
    }
    free(b.p);
}

/* Patches len bytes at off in a copy of the valid file and expects an error
 * mentioning want. */
static void patched(size_t off, const void *bytes, size_t len, const char *want) {
    buf b = valid_file(3);
    memcpy(b.p + off, bytes, len);
    expect_bad(&b, want);
    free(b.p);
}

static void test_bad_header(void) {
    patched(0, "GGUX", 4, "bad magic");
    uint32_t v = 1;
    patched(4, &v, 4, "version 1");
    v = 4;
    patched(4, &v, 4, "unknown GGUF version 4");
    v = 0x03000000u;
    patched(4, &v, 4, "big-endian");
    uint64_t n = 1ull << 60;
    patched(8, &n, 8, "more than its");  /* tensor count */
    patched(16, &n, 8, "more than its"); /* metadata count */
}

static void test_bad_metadata(void) {
    buf b = {0};
    /* a header followed by one pair built by each case */
#define START(nkv)                                                                                                     \
    b.n = 0;                                                                                                           \
    u32(&b, 0x46554747u), u32(&b, 3), u64(&b, 0), u64(&b, nkv)
    START(1);
    key(&b, "x", TD_GGUF_TYPE_COUNT), u32(&b, 0);
    expect_bad(&b, "unknown value type");
    START(1);
    u64(&b, 1ull << 40); /* key length */
    put(&b, "0123456789abcdef", 16);
    expect_bad(&b, "over the limit");
    START(1);
    key(&b, "x", TD_GGUF_STRING), u64(&b, 1ull << 40);
    expect_bad(&b, "over the limit");
    START(1);
    key(&b, "x", TD_GGUF_STRING), u64(&b, 1000), put(&b, "abc", 3);
    expect_bad(&b, "truncated");
    START(1);
    key(&b, "x", TD_GGUF_ARRAY), u32(&b, TD_GGUF_UINT64), u64(&b, 1ull << 61);
    expect_bad(&b, "needs more bytes");
    START(1);
    key(&b, "x", TD_GGUF_ARRAY), u32(&b, TD_GGUF_STRING), u64(&b, 1ull << 50);
    expect_bad(&b, "needs more bytes");
    START(1);
    key(&b, "x", TD_GGUF_ARRAY), u32(&b, 77), u64(&b, 0);
    expect_bad(&b, "unknown array element type");
    START(1);
    key(&b, "x", TD_GGUF_ARRAY);
    for (int i = 0; i < TD_GGUF_MAX_DEPTH + 1; i++)
        u32(&b, TD_GGUF_ARRAY), u64(&b, 1);
    u32(&b, TD_GGUF_UINT8), u64(&b, 0);
    expect_bad(&b, "nested too deep");
    START(2);
    key(&b, "x", TD_GGUF_UINT8), put(&b, "\x01", 1);
    key(&b, "x", TD_GGUF_UINT8), put(&b, "\x01", 1);
    expect_bad(&b, "duplicate key");
    START(1);
    u64(&b, 3), put(&b, "a\0b", 3), u32(&b, TD_GGUF_UINT8), put(&b, "\x01", 1);
    expect_bad(&b, "NUL");
    START(1);
    key(&b, "general.alignment", TD_GGUF_UINT32), u32(&b, 48);
    expect_bad(&b, "power of two");
    START(1);
    key(&b, "general.alignment", TD_GGUF_UINT64), u64(&b, 32);
    expect_bad(&b, "general.alignment");
#undef START
    free(b.p);
}

/* One tensor info built by each case, then enough data bytes. */
static void bad_tensor(uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off, size_t data,
                       const char *want) {
    buf b = {0};
    u32(&b, 0x46554747u), u32(&b, 3), u64(&b, 1), u64(&b, 0);
    tensor_info(&b, "w", n_dims, ne, type, off);
    pad(&b, 32);
    for (size_t i = 0; i < data; i++)
        put(&b, "\x00", 1);
    expect_bad(&b, want);
    free(b.p);
}

static void test_bad_tensors(void) {
    const uint64_t ne[5] = {32, 2, 1, 1, 1};
    bad_tensor(0, ne, 0, 0, 256, "dimensions");
    bad_tensor(5, ne, 0, 0, 256, "dimensions");
    const uint64_t zero[1] = {0};
    bad_tensor(1, zero, 0, 0, 256, "dimension is 0");
    const uint64_t huge[2] = {1ull << 40, 1ull << 40};
    bad_tensor(2, huge, 0, 0, 256, "overflows");
    bad_tensor(2, ne, 999, 0, 256, "type 999");

    /* a type Tandem does not dequantize (q5_K: blocks of 256 in 176 bytes)
     * still opens: its size is known */
    buf k = {0};
    const uint64_t ne_k[2] = {256, 2};
    u32(&k, 0x46554747u), u32(&k, 3), u64(&k, 1), u64(&k, 0);
    tensor_info(&k, "w", 2, ne_k, 13, 0);
    pad(&k, 32);
    for (int i = 0; i < 2 * 176; i++)
        put(&k, "\x01", 1);
    td_gguf *g = open_ok(&k);
    CU_ASSERT_EQUAL(td_gguf_tensor_at(g, 0)->n_bytes, 2 * 176);
    td_gguf_close(g);
    k.n -= 1; /* one byte short */
    expect_bad(&k, "past the end");
    free(k.p);
    const uint64_t odd[1] = {33};
    bad_tensor(1, odd, 8 /* q8_0: blocks of 32 */, 0, 256, "whole number");
    bad_tensor(2, ne, 0, 8, 512, "alignment");
    bad_tensor(2, ne, 0, 0, 255, "past the end"); /* 256 bytes needed */
    bad_tensor(2, ne, 0, 1ull << 62, 256, "past the end");

    /* two tensors sharing bytes; two with one name */
    buf b = {0};
    u32(&b, 0x46554747u), u32(&b, 3), u64(&b, 2), u64(&b, 0);
    tensor_info(&b, "w1", 2, ne, 0, 0);
    tensor_info(&b, "w2", 2, ne, 0, 224);
    pad(&b, 32);
    for (int i = 0; i < 1024; i++)
        put(&b, "\x00", 1);
    expect_bad(&b, "overlap");
    b.n = 0;
    u32(&b, 0x46554747u), u32(&b, 3), u64(&b, 2), u64(&b, 0);
    tensor_info(&b, "w", 2, ne, 0, 0);
    tensor_info(&b, "w", 2, ne, 0, 256);
    pad(&b, 32);
    for (int i = 0; i < 1024; i++)
        put(&b, "\x00", 1);
    expect_bad(&b, "duplicate tensor name");
    free(b.p);
}

static void test_getters(void) {
    buf b = valid_file(3);
    td_gguf *g = open_ok(&b);
    td_error err = {0};
    uint32_t u;
    float f;
    td_gguf_str s;
    const td_gguf_value *a;
    TD_ASSERT_OK(td_gguf_get_u32(g, "t.u16", &u, &err), &err);
    CU_ASSERT_EQUAL(u, 0x1234);
    TD_ASSERT_STATUS(TANDEM_ERR_NOT_FOUND, td_gguf_get_u32(g, "llama.block_count", &u, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "llama.block_count"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "valid.gguf"));
    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, td_gguf_get_u32(g, "t.i32", &u, &err), &err); /* -7 */
    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, td_gguf_get_u32(g, "t.u64", &u, &err), &err); /* 2^40 */
    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, td_gguf_get_u32(g, "t.f32", &u, &err), &err);
    TD_ASSERT_OK(td_gguf_get_f32(g, "t.f64", &f, &err), &err);
    CU_ASSERT_EQUAL(f, -1.5f);
    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, td_gguf_get_f32(g, "t.u8", &f, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, td_gguf_get_str(g, "t.u8", &s, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, td_gguf_get_arr(g, "t.strs", TD_GGUF_UINT32, &a, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "array of string"));
    TD_ASSERT_OK(td_gguf_get_arr(g, "t.strs", TD_GGUF_TYPE_COUNT, &a, &err), &err);
    td_gguf_close(g);
    free(b.p);
}

static void test_files(void) {
    td_gguf *g = NULL;
    td_error err = {0};
    TD_ASSERT_STATUS(TANDEM_ERR_IO, td_gguf_open("/nonexistent/model.gguf", &g, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "/nonexistent/model.gguf"));
    TD_ASSERT_STATUS(TANDEM_ERR_IO, td_gguf_open("/tmp", &g, &err), &err);
    char path[] = "/tmp/tandem-test-XXXXXX";
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, td_gguf_open(path, &g, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "empty"));
    buf b = valid_file(3);
    CU_ASSERT_EQUAL_FATAL(write(fd, b.p, b.n), (ssize_t)b.n);
    close(fd);
    TD_ASSERT_OK(td_gguf_open(path, &g, &err), &err);
    CU_ASSERT_EQUAL(td_gguf_n_tensors(g), 2);
    CU_ASSERT_STRING_EQUAL(td_gguf_name(g), path);
    td_gguf_close(g);
    unlink(path);
    free(b.p);
}

/* ---- Llama configuration ---------------------------------------------------- */

/* A tiny Llama-shaped file: 2 layers, embd 32, 4 heads / 2 kv heads, ffn 64,
 * vocab 50, every tensor f32 and zero. skip_key leaves one metadata key out;
 * kv_heads and bad_tensor perturb it. */
typedef struct llama_opts {
    const char *arch, *skip_key, *bad_tensor;
    uint32_t kv_heads;
    int untied;
} llama_opts;

typedef struct tensor_def {
    char name[64];
    uint64_t ne0, ne1;
} tensor_def;

static void def(tensor_def *t, int *n, const char *name, uint64_t ne0, uint64_t ne1) {
    snprintf(t[*n].name, sizeof t[*n].name, "%s", name);
    t[*n].ne0 = ne0, t[*n].ne1 = ne1;
    (*n)++;
}

static buf llama_file(llama_opts o) {
    struct {
        const char *k;
        uint32_t v;
    } ints[] = {{"llama.block_count", 2},
                {"llama.embedding_length", 32},
                {"llama.feed_forward_length", 64},
                {"llama.attention.head_count", 4},
                {"llama.attention.head_count_kv", o.kv_heads ? o.kv_heads : 2},
                {"llama.context_length", 128}};
    const int n_ints = 6;
    buf meta = {0};
    uint64_t n_kv = 0;
    key(&meta, "general.architecture", TD_GGUF_STRING), str(&meta, o.arch ? o.arch : "llama"), n_kv++;
    for (int i = 0; i < n_ints; i++)
        if (!o.skip_key || strcmp(o.skip_key, ints[i].k)) {
            key(&meta, ints[i].k, TD_GGUF_UINT32), u32(&meta, ints[i].v);
            n_kv++;
        }
    float base = 100000.0f, eps = 1e-5f;
    key(&meta, "llama.rope.freq_base", TD_GGUF_FLOAT32), put(&meta, &base, 4), n_kv++;
    key(&meta, "llama.attention.layer_norm_rms_epsilon", TD_GGUF_FLOAT32), put(&meta, &eps, 4), n_kv++;

    tensor_def t[32];
    int nt = 0;
    def(t, &nt, "token_embd.weight", 32, 50);
    def(t, &nt, "output_norm.weight", 32, 1);
    if (o.untied)
        def(t, &nt, "output.weight", 32, 50);
    const char *names[9] = {"attn_norm", "attn_q",   "attn_k", "attn_v",  "attn_output",
                            "ffn_norm",  "ffn_gate", "ffn_up", "ffn_down"};
    const uint64_t dims[9][2] = {{32, 1}, {32, 32}, {32, 16}, {32, 16}, {32, 32},
                                 {32, 1}, {32, 64}, {32, 64}, {64, 32}};
    for (int l = 0; l < 2; l++)
        for (int i = 0; i < 9; i++) {
            char n[64];
            snprintf(n, sizeof n, "blk.%d.%s.weight", l, names[i]);
            def(t, &nt, n, dims[i][0], dims[i][1]);
        }
    buf b = {0};
    u32(&b, 0x46554747u), u32(&b, 3), u64(&b, (uint64_t)nt), u64(&b, n_kv);
    put(&b, meta.p, meta.n);
    uint64_t off = 0;
    for (int i = 0; i < nt; i++) {
        uint64_t ne[2] = {t[i].ne0, t[i].ne1};
        if (o.bad_tensor && !strcmp(o.bad_tensor, t[i].name))
            ne[1] += 1;
        tensor_info(&b, t[i].name, ne[1] == 1 ? 1 : 2, ne, 0, off);
        off += (ne[0] * ne[1] * 4 + 31) / 32 * 32;
    }
    pad(&b, 32);
    for (uint64_t i = 0; i < off; i++)
        put(&b, "\0", 1);
    free(meta.p);
    return b;
}

static tandem_status llama_config_of(llama_opts o, td_llama_config *c, td_error *err) {
    buf b = llama_file(o);
    td_gguf *g = NULL;
    tandem_status st = td_gguf_open_memory(b.p, b.n, "tiny-llama.gguf", &g, err);
    if (!st)
        st = td_llama_config_read(g, c, err);
    td_gguf_close(g);
    free(b.p);
    return st;
}

static void test_llama_config(void) {
    td_llama_config c;
    td_error err = {0};
    TD_ASSERT_OK(llama_config_of((llama_opts){0}, &c, &err), &err);
    CU_ASSERT_STRING_EQUAL(c.arch, "llama");
    CU_ASSERT(c.n_layers == 2 && c.n_embd == 32 && c.n_ff == 64 && c.n_heads == 4 && c.n_kv_heads == 2);
    CU_ASSERT(c.head_dim == 8 && c.rope_dim == 8 && c.n_vocab == 50 && c.n_ctx == 128);
    CU_ASSERT_EQUAL(c.rope_base, 100000.0f);
    CU_ASSERT_EQUAL(c.rms_eps, 1e-5f);
    CU_ASSERT_EQUAL(c.rope_scaling, TD_ROPE_SCALING_NONE);
    CU_ASSERT(c.tied_output);
    TD_ASSERT_OK(llama_config_of((llama_opts){.untied = 1}, &c, &err), &err);
    CU_ASSERT(!c.tied_output);

    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, llama_config_of((llama_opts){.skip_key = "llama.block_count"}, &c, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "llama.block_count"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "tiny-llama.gguf"));
    /* head_count_kv is optional: it defaults to head_count */
    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT,
                     llama_config_of((llama_opts){.skip_key = "llama.attention.head_count_kv"}, &c, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "attn_k.weight")); /* then K has the wrong shape */
    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, llama_config_of((llama_opts){.kv_heads = 3}, &c, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "kv heads"));
    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, llama_config_of((llama_opts){.bad_tensor = "blk.1.ffn_down.weight"}, &c, &err),
                     &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "blk.1.ffn_down.weight"));
    TD_ASSERT_STATUS(TANDEM_ERR_UNSUPPORTED, llama_config_of((llama_opts){.arch = "gpt2"}, &c, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "gpt2"));
}

/* The default model, fetched by scripts/fetch-model (a CTest fixture).
 * Expected values: SmolLM2-135M's published config (hidden 576, 30 layers,
 * 9 heads / 3 kv heads, FFN 1536, vocab 49152, context 8192, rope theta
 * 100000, rms eps 1e-5, tied embeddings), and 2 + 30 x 9 tensors. */
static void test_smollm2(void) {
    td_gguf *g = NULL;
    td_error err = {0};
    TD_ASSERT_OK(td_gguf_open(TD_TEST_MODEL, &g, &err), &err);
    CU_ASSERT_EQUAL(td_gguf_version(g), 3);
    CU_ASSERT_EQUAL(td_gguf_n_tensors(g), 2 + 30 * 9);
    td_llama_config c;
    TD_ASSERT_OK(td_llama_config_read(g, &c, &err), &err);
    CU_ASSERT(c.n_layers == 30 && c.n_embd == 576 && c.n_heads == 9 && c.n_kv_heads == 3 && c.head_dim == 64);
    CU_ASSERT(c.n_ff == 1536 && c.n_vocab == 49152 && c.n_ctx == 8192 && c.rope_dim == 64);
    CU_ASSERT_EQUAL(c.rope_base, 100000.0f);
    CU_ASSERT_EQUAL(c.rms_eps, 1e-5f);
    CU_ASSERT(c.tied_output);
    CU_ASSERT_EQUAL(c.rope_scaling, TD_ROPE_SCALING_NONE);
    const td_gguf_value *tok;
    TD_ASSERT_OK(td_gguf_get_arr(g, "tokenizer.ggml.tokens", TD_GGUF_STRING, &tok, &err), &err);
    CU_ASSERT_EQUAL(tok->arr.n, 49152);
    /* every tensor lies inside the file, after the header */
    for (int64_t i = 0; i < td_gguf_n_tensors(g); i++) {
        const td_gguf_tensor *t = td_gguf_tensor_at(g, i);
        CU_ASSERT_FATAL(t->n_bytes > 0);
    }
    td_gguf_close(g);
}

void td_test_register(void) {
    static const td_test tests[] = {
        {"a valid v2 and v3 file, every value type", test_valid_file},
        {"every truncation point is refused", test_every_truncation},
        {"bad magic, version, endianness, counts", test_bad_header},
        {"bad metadata values", test_bad_metadata},
        {"bad tensor infos: dims, type, offsets, overlap, names", test_bad_tensors},
        {"typed getters: missing, wrong type, out of range", test_getters},
        {"files: missing, directory, empty, real", test_files},
        {"SmolLM2-135M: header, tensors, config", test_smollm2},
        {NULL, NULL},
    };
    td_add_suite("gguf", tests);
    static const td_test config_tests[] = {
        {"llama config: values, defaults, missing keys, bad shapes", test_llama_config},
        {NULL, NULL},
    };
    td_add_suite("llama_config", config_tests);
}
