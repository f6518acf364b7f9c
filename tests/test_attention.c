/* Decode attention: the scalar kernel against a naive two-pass softmax in
 * double precision (written here, independently of the kernels), and every
 * vector path against the scalar kernel, over randomized shapes.
 *
 * Tolerances (relative to max|v| of the head's context, since the output is
 * a convex combination of V rows):
 *
 * - f32 paths (scalar, avx2, avx512, and avx512bf16 on f16 caches) differ from
 *   each other and from the double oracle only in rounding order: a score
 *   sums D <= 128 products (error ~ sqrt(D) eps |s| ~ 1e-6 for the scores
 *   here), an output sums n <= 5000 weighted rows (~ sqrt(n) eps ~ 1e-5),
 *   exp2 is a degree-6 polynomial (2e-7). TOL_F32 = 1e-4 leaves a 10x
 *   margin, and is still smaller than the weight of one token in contexts up
 *   to ~1000, so a dropped or doubled token fails; the needle tests catch a
 *   misplaced token at any length.
 * - avx512bf16 on bf16 caches rounds the scaled query and the softmax weights
 *   to bf16 (unit roundoff u = 2^-9). A score s_t = sum_d q_d k_td then moves
 *   by at most u * S_t, S_t = sum_d |q_d k_td| (log2 units), so each
 *   normalized weight moves by a factor within 2^(+-2 delta), delta = u max_t
 *   S_t: output error <= (2^(2 delta) - 1) max|v|. Rounding the weights and
 *   normalizing by their rounded sum adds <= 2u max|v|. The bound is computed
 *   per head from the data.
 * - bf16 output adds one rounding of the result: 2^-8 |ref| covers the two
 *   outputs rounding to neighbouring bf16 values. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "cpu/attention.h"
#include "cpu/kv_cache.h"
#include "tests/test_util.h"

#define TOL_F32 1e-4
#define LAYER 1 /* attend layer 1 of 2, so the layer offset is exercised */

typedef struct fixture {
    td_kv_cache *kv;
    int n_kv, G, D, n_q;
    td_dtype dt;
    int n_seqs;
    int32_t *ids, *lens;
    float *q;     /* [n_seqs][n_q * D] */
    double *ref;  /* [n_seqs][n_q * D] naive two-pass, double */
    double *maxv; /* [n_seqs][n_q] max |v| over the head's context */
    double *sabs; /* [n_seqs][n_q] max_t sum_d |q_d k_td| * scale * log2(e) */
    float scale;
} fixture;

/* Lengths are grown in random slices, round robin, so block tables of
 * different sequences interleave in the pool. */
static fixture *fixture_make(int n_kv, int G, int D, td_dtype dt, int T, const int32_t *lens, int n_seqs, uint64_t seed,
                             float q_amp) {
    fixture *f = calloc(1, sizeof *f);
    f->n_kv = n_kv, f->G = G, f->D = D, f->n_q = n_kv * G, f->dt = dt, f->n_seqs = n_seqs;
    f->scale = 1.0f / sqrtf((float)D);
    size_t blocks = 2;
    for (int s = 0; s < n_seqs; s++)
        blocks += (size_t)(lens[s] + T - 1) / T;
    td_kv_config c = {
        .n_layers = 2,
        .n_kv_heads = n_kv,
        .head_dim = D,
        .block_tokens = T,
        .dtype = dt,
        .budget_bytes = blocks * 2 * n_kv * 2 * (size_t)T * D * 2,
        .max_seqs = n_seqs,
        .max_seq_tokens = 1 << 20,
        .n_threads = 2,
    };
    td_error err;
    TD_ASSERT_OK(td_kv_create(&c, &f->kv, &err), &err);
    f->ids = malloc(sizeof(int32_t) * n_seqs);
    f->lens = malloc(sizeof(int32_t) * n_seqs);
    memcpy(f->lens, lens, sizeof(int32_t) * n_seqs);
    for (int s = 0; s < n_seqs; s++)
        TD_ASSERT_OK(td_kv_seq_new(f->kv, &f->ids[s], &err), &err);
    td_rng r = {seed};
    for (int done = 0; !done;) {
        done = 1;
        for (int s = 0; s < n_seqs; s++) {
            int32_t have = td_kv_seq_len(f->kv, f->ids[s]);
            if (have < lens[s]) {
                int32_t n = td_rng_int(&r, 1, 3 * T);
                n = n < lens[s] - have ? n : lens[s] - have;
                TD_ASSERT_OK(td_kv_seq_grow(f->kv, f->ids[s], n, &err), &err);
                done = 0;
            }
        }
    }
    int32_t max_len = 0;
    for (int s = 0; s < n_seqs; s++)
        max_len = lens[s] > max_len ? lens[s] : max_len;
    float *k = malloc(sizeof(float) * max_len * n_kv * D), *v = malloc(sizeof(float) * max_len * n_kv * D);
    for (int s = 0; s < n_seqs; s++)
        for (int layer = 0; layer < 2; layer++) {
            for (size_t i = 0; i < (size_t)lens[s] * n_kv * D; i++) {
                k[i] = td_rng_uniform(&r, -1, 1);
                v[i] = td_rng_uniform(&r, -1, 1);
            }
            TD_ASSERT_OK(td_kv_write(f->kv, f->ids[s], layer, 0, lens[s], k, v, TD_DTYPE_F32, &err), &err);
        }
    free(k), free(v);
    f->q = malloc(sizeof(float) * n_seqs * f->n_q * D);
    for (size_t i = 0; i < (size_t)n_seqs * f->n_q * D; i++)
        f->q[i] = td_rng_uniform(&r, -q_amp, q_amp);
    return f;
}

/* The oracle: scores, max, exp, sum, weighted sum, in double, from values
 * read back through td_kv_read (no knowledge of the tile layout). */
static void fixture_reference(fixture *f) {
    const int D = f->D, H = f->n_kv;
    free(f->ref), free(f->maxv), free(f->sabs);
    f->ref = malloc(sizeof(double) * f->n_seqs * f->n_q * D);
    f->maxv = malloc(sizeof(double) * f->n_seqs * f->n_q);
    f->sabs = malloc(sizeof(double) * f->n_seqs * f->n_q);
    for (int s = 0; s < f->n_seqs; s++) {
        const int n = f->lens[s];
        float *k = malloc(sizeof(float) * n * H * D), *v = malloc(sizeof(float) * n * H * D);
        double *w = malloc(sizeof(double) * n);
        td_error err;
        TD_ASSERT_OK(td_kv_read(f->kv, f->ids[s], LAYER, 0, n, k, v, &err), &err);
        for (int h = 0; h < f->n_q; h++) {
            const int kh = h / f->G;
            const float *q = f->q + ((size_t)s * f->n_q + h) * D;
            double mx = -INFINITY, sum = 0, sabs = 0, maxv = 0;
            for (int t = 0; t < n; t++) {
                double dot = 0, a = 0;
                for (int d = 0; d < D; d++) {
                    dot += (double)q[d] * k[((size_t)t * H + kh) * D + d];
                    a += fabs((double)q[d] * k[((size_t)t * H + kh) * D + d]);
                    maxv = fmax(maxv, fabs(v[((size_t)t * H + kh) * D + d]));
                }
                w[t] = dot * f->scale;
                mx = fmax(mx, w[t]);
                sabs = fmax(sabs, a * f->scale * 1.4426950408889634);
            }
            for (int t = 0; t < n; t++)
                sum += (w[t] = exp(w[t] - mx));
            double *o = f->ref + ((size_t)s * f->n_q + h) * D;
            for (int d = 0; d < D; d++) {
                double acc = 0;
                for (int t = 0; t < n; t++)
                    acc += w[t] * v[((size_t)t * H + kh) * D + d];
                o[d] = acc / sum;
            }
            f->maxv[s * f->n_q + h] = maxv;
            f->sabs[s * f->n_q + h] = sabs;
        }
        free(k), free(v), free(w);
    }
}

static void fixture_free(fixture *f) {
    td_kv_destroy(f->kv);
    free(f->ids), free(f->lens), free(f->q), free(f->ref), free(f->maxv), free(f->sabs);
    free(f);
}

/* Runs one path; returns the output as f32 [n_seqs][n_q * D]. */
static float *run(const fixture *f, td_isa isa, int threads, td_dtype out_dt) {
    const size_t row = (size_t)f->n_q * f->D;
    td_attn *a = NULL;
    td_error err;
    TD_ASSERT_OK(td_attn_create(threads, isa, &a, &err), &err);
    td_attn_seq *seqs = malloc(sizeof *seqs * f->n_seqs);
    void *out = malloc(row * f->n_seqs * td_dtype_size(out_dt));
    for (int s = 0; s < f->n_seqs; s++)
        seqs[s] = (td_attn_seq){
            .q = f->q + s * row,
            .blocks = td_kv_seq_blocks(f->kv, f->ids[s]),
            .n_tokens = f->lens[s],
            .out = (uint8_t *)out + s * row * td_dtype_size(out_dt),
        };
    td_attn_batch b = {.kv = f->kv,
                       .layer = LAYER,
                       .n_q_heads = f->n_q,
                       .scale = f->scale,
                       .out_dtype = out_dt,
                       .seqs = seqs,
                       .n_seqs = f->n_seqs};
    TD_ASSERT_OK(td_attn_decode(a, &b, &err), &err);
    /* a second call reuses the workspace and must give the same bits */
    void *again = malloc(row * f->n_seqs * td_dtype_size(out_dt));
    for (int s = 0; s < f->n_seqs; s++)
        seqs[s].out = (uint8_t *)again + s * row * td_dtype_size(out_dt);
    TD_ASSERT_OK(td_attn_decode(a, &b, &err), &err);
    CU_ASSERT_EQUAL(memcmp(out, again, row * f->n_seqs * td_dtype_size(out_dt)), 0);
    float *res = malloc(sizeof(float) * row * f->n_seqs);
    for (size_t i = 0; i < row * f->n_seqs; i++)
        res[i] = out_dt == TD_DTYPE_F32 ? ((float *)out)[i] : td_bf16_to_f32(((uint16_t *)out)[i]);
    free(out), free(again), free(seqs);
    td_attn_destroy(a);
    return res;
}

static double path_tolerance(const fixture *f, td_isa isa, int s, int h) {
    double maxv = f->maxv[s * f->n_q + h];
    if (isa == TD_ISA_AVX512BF16 && f->dt == TD_DTYPE_BF16) {
        double delta = 0x1p-9 * f->sabs[s * f->n_q + h];
        return (exp2(2 * delta) - 1 + 2 * 0x1p-9 + TOL_F32) * maxv;
    }
    return TOL_F32 * maxv;
}

/* Compares got with want (a double or float array) head by head. */
static int compare(const fixture *f, const char *what, const float *got, const double *want_d, const float *want_f,
                   td_isa isa, td_dtype out_dt) {
    const int D = f->D;
    double worst = 0;
    for (int s = 0; s < f->n_seqs; s++)
        for (int h = 0; h < f->n_q; h++) {
            double tol = path_tolerance(f, isa, s, h);
            for (int d = 0; d < D; d++) {
                size_t i = ((size_t)s * f->n_q + h) * D + d;
                double want = want_d ? want_d[i] : want_f[i];
                double t = tol + (out_dt == TD_DTYPE_BF16 ? 0x1p-8 * fabs(want) : 0);
                double e = fabs(got[i] - want);
                if (!(e <= t)) {
                    fprintf(stderr,
                            "\n  %s: isa %s, %s cache, G=%d D=%d: seq %d (len %d) head %d dim %d: got %.7g want "
                            "%.7g (err %.3g > tol %.3g)\n",
                            what, td_isa_name(isa), td_dtype_name(f->dt), f->G, D, s, f->lens[s], h, d, got[i], want, e,
                            t);
                    return 0;
                }
                worst = fmax(worst, e / t);
            }
        }
    return 1;
}

static void test_scalar_vs_oracle(void) {
    const int32_t lens[] = {1, 2, 15, 16, 17, 33, 100, 1000, 3001};
    const int n = sizeof lens / sizeof *lens;
    struct {
        int n_kv, G, D, T;
        td_dtype dt;
        float q_amp;
    } cases[] = {{2, 1, 64, 16, TD_DTYPE_BF16, 1},
                 {1, 3, 80, 32, TD_DTYPE_F16, 4},
                 {2, 4, 96, 16, TD_DTYPE_BF16, 2},
                 {1, 8, 128, 64, TD_DTYPE_F16, 1}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        fixture *f = fixture_make(cases[c].n_kv, cases[c].G, cases[c].D, cases[c].dt, cases[c].T, lens, n, 100 + c,
                                  cases[c].q_amp);
        fixture_reference(f);
        for (int threads = 1; threads <= 2; threads++) {
            float *got = run(f, TD_ISA_SCALAR, threads, TD_DTYPE_F32);
            CU_ASSERT(compare(f, "scalar vs naive", got, f->ref, NULL, TD_ISA_SCALAR, TD_DTYPE_F32));
            free(got);
        }
        fixture_free(f);
    }
}

/* Random batch: one long sequence among short ones, plus lengths at block
 * edges; everything else random. */
static int random_lens(td_rng *r, int32_t *lens) {
    int n = 0;
    lens[n++] = td_rng_int(r, 2000, 5000);
    const int32_t edges[] = {1, 15, 16, 17, 31, 32, 33, 63, 64, 65};
    for (int i = 0; i < 3; i++)
        lens[n++] = edges[td_rng_int(r, 0, 9)];
    int extra = td_rng_int(r, 2, 8);
    for (int i = 0; i < extra; i++)
        lens[n++] = td_rng_int(r, 1, 300);
    return n;
}

static void test_paths_vs_scalar(void) {
    const int groups[] = {1, 3, 4, 8, 6, 16};
    const int dims[] = {64, 80, 96, 128};
    const int Ts[] = {16, 32, 64};
    td_rng r = {2024};
    int n_checked = 0;
    for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++)
        for (size_t di = 0; di < sizeof dims / sizeof *dims; di++)
            for (int dti = 0; dti < 2; dti++) {
                td_dtype dt = dti ? TD_DTYPE_F16 : TD_DTYPE_BF16;
                int32_t lens[16];
                int n = random_lens(&r, lens);
                int n_kv = groups[gi] >= 8 ? 1 : td_rng_int(&r, 1, 3);
                int T = Ts[td_rng_int(&r, 0, 2)];
                fixture *f = fixture_make(n_kv, groups[gi], dims[di], dt, T, lens, n, td_rng_next(&r),
                                          td_rng_uniform(&r, 0.5f, 4.0f));
                fixture_reference(f);
                float *ref = run(f, TD_ISA_SCALAR, 1, TD_DTYPE_F32);
                CU_ASSERT(compare(f, "scalar vs naive", ref, f->ref, NULL, TD_ISA_SCALAR, TD_DTYPE_F32));
                for (int isa = 0; isa < TD_ISA_COUNT; isa++) {
                    if (!td_isa_supported((td_isa)isa))
                        continue;
                    for (int threads = 1; threads <= 2; threads++)
                        for (int o = 0; o < 2; o++) {
                            if (isa == TD_ISA_SCALAR && threads == 1 && o == 0)
                                continue;
                            td_dtype out_dt = o ? TD_DTYPE_BF16 : TD_DTYPE_F32;
                            float *got = run(f, (td_isa)isa, threads, out_dt);
                            CU_ASSERT(compare(f, "path vs scalar", got, NULL, ref, (td_isa)isa, out_dt));
                            n_checked++;
                            free(got);
                        }
                }
                free(ref);
                fixture_free(f);
            }
    CU_ASSERT(n_checked >= 48 * 3);
}

/* One token per sequence holds almost all the weight: the output must be its
 * V row, wherever it sits (block edges, chunk edges, the last token). */
static void test_needles(void) {
    const int n_kv = 2, G = 4, D = 64, n_q = n_kv * G;
    const int32_t len_short = 71, len_long = 4499; /* odd: the last token is alone in its pair */
    int32_t pos[64], lens[64];
    int n = 0;
    for (int p = 0; p < len_short; p += (p < 20 || p > 60) ? 1 : 7) /* every edge position, some middle ones */
        pos[n] = p, lens[n++] = len_short;
    const int32_t far[] = {0, 15, 16, 255, 256, 1000, 2047, 2048, 2249, 2250, 4095, 4096, 4497, 4498};
    for (size_t i = 0; i < sizeof far / sizeof *far; i++)
        pos[n] = far[i], lens[n++] = len_long;
    for (int dti = 0; dti < 2; dti++) {
        td_dtype dt = dti ? TD_DTYPE_F16 : TD_DTYPE_BF16;
        fixture *f = fixture_make(n_kv, G, D, dt, 16, lens, n, 77, 1.0f);
        /* q of every head: the unit vector e_(h % D) scaled; k at the needle:
         * large along those dims, so its score beats every other by ~ 40 */
        float *k = malloc(sizeof(float) * n_kv * D), *v = malloc(sizeof(float) * n_kv * D);
        td_error err;
        for (int s = 0; s < n; s++) {
            for (int h = 0; h < n_q; h++)
                for (int d = 0; d < D; d++)
                    f->q[((size_t)s * n_q + h) * D + d] = d < 8 ? 8.0f : 0.0f;
            for (int kh = 0; kh < n_kv; kh++)
                for (int d = 0; d < D; d++) {
                    k[kh * D + d] = d < 8 ? 8.0f : 0.0f;
                    v[kh * D + d] = (float)(((s * 13 + kh * 5 + d) % 41) - 20) / 4.0f + 7.0f;
                }
            TD_ASSERT_OK(td_kv_write(f->kv, f->ids[s], LAYER, pos[s], 1, k, v, TD_DTYPE_F32, &err), &err);
        }
        for (int isa = 0; isa < TD_ISA_COUNT; isa++) {
            if (!td_isa_supported((td_isa)isa))
                continue;
            for (int threads = 1; threads <= 2; threads++) {
                float *got = run(f, (td_isa)isa, threads, TD_DTYPE_F32);
                for (int s = 0; s < n; s++)
                    for (int h = 0; h < n_q; h++)
                        for (int d = 0; d < D; d++) {
                            float want = (float)((((s * 13 + (h / G) * 5 + d) % 41) - 20) / 4.0f + 7.0f);
                            float g = got[((size_t)s * n_q + h) * D + d];
                            if (fabsf(g - want) > 1e-2f * fabsf(want)) {
                                fprintf(stderr,
                                        "\n  needle at %d of %d, isa %s, %d threads: head %d dim %d: %g != %g\n",
                                        pos[s], lens[s], td_isa_name((td_isa)isa), threads, h, d, g, want);
                                CU_FAIL_FATAL("needle output is not its V row");
                            }
                        }
                free(got);
            }
        }
        free(k), free(v);
        fixture_free(f);
    }
}

/* Slots past a sequence's end may hold anything (a freed block is reused as
 * is): fills them with NaN and infinities, in every layer. */
static void poison_unused_slots(fixture *f) {
    const td_kv_layout *l = td_kv_get_layout(f->kv);
    uint8_t *pool = (uint8_t *)td_kv_pool(f->kv); /* test-only write access */
    const uint16_t nan16 = f->dt == TD_DTYPE_BF16 ? 0x7fc0 : 0x7e00, inf16 = f->dt == TD_DTYPE_BF16 ? 0x7f80 : 0x7c00;
    for (int s = 0; s < f->n_seqs; s++) {
        const int32_t *table = td_kv_seq_blocks(f->kv, f->ids[s]);
        int32_t last = (f->lens[s] - 1) / l->block_tokens;
        for (int t = f->lens[s] % l->block_tokens; t && t < l->block_tokens; t++)
            for (int layer = 0; layer < l->n_layers; layer++)
                for (int kh = 0; kh < l->n_kv_heads; kh++) {
                    uint16_t *kt =
                        (uint16_t *)(pool + (size_t)table[last] * l->block_bytes + td_kv_tile_offset(l, layer, kh));
                    uint16_t *vt = (uint16_t *)((uint8_t *)kt + l->tile_bytes);
                    for (int d = 0; d < l->head_dim; d++) {
                        kt[td_kv_k_index(l->block_tokens, t, d)] = (d & 1) ? inf16 : nan16;
                        vt[td_kv_v_index(l->head_dim, t, d)] = (d & 1) ? nan16 : inf16;
                    }
                }
    }
}

/* The result must not change when the unused slots are poisoned. */
static void test_unused_slots_are_ignored(void) {
    const int32_t lens[] = {1, 7, 16, 17, 45, 301};
    const int n = sizeof lens / sizeof *lens;
    for (int dti = 0; dti < 2; dti++) {
        td_dtype dt = dti ? TD_DTYPE_F16 : TD_DTYPE_BF16;
        fixture *f = fixture_make(1, 4, 64, dt, 32, lens, n, 5, 2.0f);
        float *before[TD_ISA_COUNT] = {0};
        for (int isa = 0; isa < TD_ISA_COUNT; isa++)
            if (td_isa_supported((td_isa)isa))
                before[isa] = run(f, (td_isa)isa, 2, TD_DTYPE_F32);
        poison_unused_slots(f);
        for (int isa = 0; isa < TD_ISA_COUNT; isa++) {
            if (!before[isa])
                continue;
            float *after = run(f, (td_isa)isa, 2, TD_DTYPE_F32);
            size_t count = (size_t)n * 4 * 64;
            if (memcmp(before[isa], after, count * sizeof(float)) != 0) {
                fprintf(stderr, "\n  isa %s, %s cache: output changed after poisoning unused slots\n",
                        td_isa_name((td_isa)isa), td_dtype_name(dt));
                CU_FAIL("unused slots leak into the output");
            }
            free(after);
            free(before[isa]);
        }
        fixture_free(f);
    }
}

static void test_errors(void) {
    const int32_t lens[] = {20};
    fixture *f = fixture_make(2, 2, 64, TD_DTYPE_BF16, 16, lens, 1, 1, 1.0f);
    td_attn *a = NULL;
    td_error err = {0};
    TD_ASSERT_STATUS(TANDEM_ERR_UNSUPPORTED, td_attn_create(1, TD_ISA_COUNT, &a, &err), &err);
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_attn_create(-1, TD_ISA_SCALAR, &a, &err), &err);
    TD_ASSERT_OK(td_attn_create(2, TD_ISA_SCALAR, &a, &err), &err);
    CU_ASSERT_EQUAL(td_attn_threads(a), 2);
    CU_ASSERT_EQUAL(td_attn_isa(a), TD_ISA_SCALAR);
    float out[4 * 64];
    int32_t bad_table[2] = {0, 99999};
    td_attn_seq s = {.q = f->q, .blocks = td_kv_seq_blocks(f->kv, f->ids[0]), .n_tokens = 20, .out = out};
    td_attn_batch ok = {
        .kv = f->kv, .layer = 1, .n_q_heads = 4, .scale = 0.125f, .out_dtype = TD_DTYPE_F32, .seqs = &s, .n_seqs = 1};
    TD_ASSERT_OK(td_attn_decode(a, &ok, &err), &err);
    td_attn_batch b = ok;
    b.n_q_heads = 5;
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_attn_decode(a, &b, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "n_q_heads"));
    b = ok, b.layer = 2;
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_attn_decode(a, &b, &err), &err);
    b = ok, b.out_dtype = TD_DTYPE_F16;
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_attn_decode(a, &b, &err), &err);
    b = ok, b.scale = NAN;
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_attn_decode(a, &b, &err), &err);
    b = ok, b.kv = NULL;
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_attn_decode(a, &b, &err), &err);
    td_attn_seq bs = s;
    b = ok, b.seqs = &bs;
    bs.n_tokens = 0;
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_attn_decode(a, &b, &err), &err);
    bs = s, bs.blocks = bad_table;
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_attn_decode(a, &b, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "99999"));
    bs = s, bs.q = NULL;
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_attn_decode(a, &b, &err), &err);
    b = ok, b.n_seqs = 0;
    TD_ASSERT_OK(td_attn_decode(a, &b, &err), &err);
    td_attn_destroy(a);
    fixture_free(f);
}

static void test_isa_selection(void) {
    td_error err = {0};
    td_isa isa = TD_ISA_COUNT;
    setenv("TANDEM_ISA", "scalar", 1);
    TD_ASSERT_OK(td_isa_select(&isa, &err), &err);
    CU_ASSERT_EQUAL(isa, TD_ISA_SCALAR);
    setenv("TANDEM_ISA", "avx9000", 1);
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_isa_select(&isa, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "avx9000"));
    unsetenv("TANDEM_ISA");
    TD_ASSERT_OK(td_isa_select(&isa, &err), &err);
    CU_ASSERT_EQUAL(isa, td_isa_default());
    CU_ASSERT(td_isa_default() != TD_ISA_AVX512BF16);
    CU_ASSERT(td_isa_default() == td_isa_best() || td_isa_best() == TD_ISA_AVX512BF16);
    for (int i = 0; i < TD_ISA_COUNT; i++) {
        td_isa parsed;
        TD_ASSERT_OK(td_isa_parse(td_isa_name((td_isa)i), &parsed, &err), &err);
        CU_ASSERT_EQUAL(parsed, (td_isa)i);
        if (td_isa_supported((td_isa)i)) {
            setenv("TANDEM_ISA", td_isa_name((td_isa)i), 1);
            TD_ASSERT_OK(td_isa_select(&isa, &err), &err);
            CU_ASSERT_EQUAL(isa, (td_isa)i);
        }
    }
    unsetenv("TANDEM_ISA");
    fprintf(stderr, "[best ISA on this CPU: %s] ", td_isa_name(td_isa_best()));
}

/* ---- prefill -------------------------------------------------------------
 * Runs of consecutive queries with the causal limit, on every path, against
 * the scalar decode kernel given one entry per query (n_tokens = pos + j + 1):
 * the definition td_attn_prefill promises. Runs end at their sequence's end,
 * start anywhere (a chunk of a prompt whose start is cached: pos > 0), and
 * sit in one buffer with row strides wider than a row, as in the forward. */
static void check_prefill(int n_kv, int G, int D, td_dtype dt, int T, uint64_t seed) {
    td_rng r = {seed};
    int32_t lens[6];
    const int n_seqs = 6;
    for (int s = 0; s < n_seqs; s++)
        lens[s] = td_rng_int(&r, 1, s == 0 ? 1 : 150);
    fixture *f = fixture_make(n_kv, G, D, dt, T, lens, n_seqs, seed, 3.0f);
    poison_unused_slots(f); /* no path may read past a run's last token */
    const int nq = n_kv * G;
    const int64_t stride = (int64_t)nq * D + 16; /* rows of a wider matrix */
    td_attn_run runs[6];
    int64_t total = 0;
    for (int s = 0; s < n_seqs; s++) {
        int32_t n = td_rng_int(&r, 1, lens[s] < 70 ? lens[s] : 70);
        runs[s] = (td_attn_run){.pos = lens[s] - n, .n = n, .blocks = td_kv_seq_blocks(f->kv, f->ids[s])};
        total += n;
    }
    float *q = malloc(sizeof(float) * (size_t)(total * stride));
    for (int64_t i = 0; i < total * stride; i++)
        q[i] = td_rng_uniform(&r, -3, 3);
    /* the reference: scalar decode, one entry per query */
    float *want = malloc(sizeof(float) * (size_t)(total * nq * D));
    td_attn_seq *ents = malloc(sizeof *ents * (size_t)total);
    int64_t k = 0;
    for (int s = 0; s < n_seqs; s++)
        for (int32_t j = 0; j < runs[s].n; j++, k++)
            ents[k] = (td_attn_seq){.q = q + k * stride,
                                    .blocks = runs[s].blocks,
                                    .n_tokens = runs[s].pos + j + 1,
                                    .out = want + k * nq * D};
    td_attn *ref = NULL;
    td_error err;
    TD_ASSERT_OK(td_attn_create(1, TD_ISA_SCALAR, &ref, &err), &err);
    td_attn_batch db = {.kv = f->kv,
                        .layer = LAYER,
                        .n_q_heads = nq,
                        .scale = f->scale,
                        .out_dtype = TD_DTYPE_F32,
                        .seqs = ents,
                        .n_seqs = (int32_t)total};
    TD_ASSERT_OK(td_attn_decode(ref, &db, &err), &err);
    td_attn_destroy(ref);

    for (int isa = 0; isa < TD_ISA_COUNT; isa++) {
        if (!td_isa_supported((td_isa)isa))
            continue;
        for (int o = 0; o < 2; o++) {
            td_dtype out_dt = o ? TD_DTYPE_BF16 : TD_DTYPE_F32;
            const size_t esz = td_dtype_size(out_dt);
            uint8_t *out = malloc((size_t)(total * stride) * esz);
            k = 0;
            for (int s = 0; s < n_seqs; s++) {
                runs[s].q = q + k * stride;
                runs[s].q_stride = stride;
                runs[s].out = out + (size_t)(k * stride) * esz;
                runs[s].out_stride = stride;
                k += runs[s].n;
            }
            td_attn *a = NULL;
            TD_ASSERT_OK(td_attn_create(2, (td_isa)isa, &a, &err), &err);
            td_attn_prefill_batch pb = {.kv = f->kv,
                                        .layer = LAYER,
                                        .n_q_heads = nq,
                                        .scale = f->scale,
                                        .out_dtype = out_dt,
                                        .runs = runs,
                                        .n_runs = n_seqs};
            TD_ASSERT_OK(td_attn_prefill(a, &pb, &err), &err);
            td_attn_destroy(a);
            int bad = 0;
            for (int64_t i = 0; i < total && !bad; i++)
                for (int c = 0; c < nq * D; c++) {
                    size_t at = (size_t)(i * stride + c);
                    double got = out_dt == TD_DTYPE_F32 ? ((float *)out)[at] : td_bf16_to_f32(((uint16_t *)out)[at]);
                    double w = want[i * nq * D + c];
                    /* v in [-1, 1]: TOL_F32 of the largest |v|, plus bf16's rounding */
                    double tol = TOL_F32 + (out_dt == TD_DTYPE_BF16 ? 0x1p-8 * fabs(w) : 0);
                    if (!(fabs(got - w) <= tol)) {
                        fprintf(stderr,
                                "\n  prefill %s, %s out, %s cache, G=%d D=%d T=%d: query %lld value %d: got "
                                "%.7g want %.7g\n",
                                td_isa_name((td_isa)isa), td_dtype_name(out_dt), td_dtype_name(dt), G, D, T,
                                (long long)i, c, got, w);
                        bad = 1;
                        break;
                    }
                }
            CU_ASSERT_FALSE(bad);
            free(out);
        }
    }
    free(q), free(want), free(ents);
    fixture_free(f);
}

static void test_prefill_vs_decode(void) {
    check_prefill(3, 3, 64, TD_DTYPE_BF16, 16, 1);  /* SmolLM2 */
    check_prefill(2, 4, 128, TD_DTYPE_BF16, 32, 2); /* Llama-3, 32-token blocks */
    check_prefill(2, 1, 80, TD_DTYPE_F16, 16, 3);   /* MHA, d 80, f16 */
    check_prefill(2, 2, 80, TD_DTYPE_BF16, 16, 6);  /* d 80: amx takes multiples of 32, avx512 this */
    check_prefill(1, 8, 32, TD_DTYPE_BF16, 64, 7);  /* d 32, 64-token blocks: 32-key steps within a block */
    check_prefill(1, 16, 96, TD_DTYPE_BF16, 16, 4); /* a wide group: tiles of 4 queries */
    check_prefill(1, 64, 64, TD_DTYPE_F16, 48, 5);  /* the widest group: tiles of 1 query */
}

static void test_prefill_errors(void) {
    int32_t lens[1] = {20};
    fixture *f = fixture_make(2, 2, 64, TD_DTYPE_BF16, 16, lens, 1, 9, 1.0f);
    td_attn *a = NULL;
    td_error err;
    TD_ASSERT_OK(td_attn_create(1, td_isa_default(), &a, &err), &err);
    float q[2 * 4 * 64], out[2 * 4 * 64];
    int32_t bad_blocks[2] = {0, 1 << 30};
    td_attn_run run = {.q = q,
                       .q_stride = 256,
                       .blocks = td_kv_seq_blocks(f->kv, f->ids[0]),
                       .pos = 18,
                       .n = 2,
                       .out = out,
                       .out_stride = 256};
    td_attn_prefill_batch b = {.kv = f->kv,
                               .layer = LAYER,
                               .n_q_heads = 4,
                               .scale = f->scale,
                               .out_dtype = TD_DTYPE_F32,
                               .runs = &run,
                               .n_runs = 1};
    TD_ASSERT_OK(td_attn_prefill(a, &b, &err), &err);
    run.q_stride = 100;
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_attn_prefill(a, &b, &err), &err);
    CU_ASSERT(strstr(err.msg, "run 0") != NULL);
    run.q_stride = 256;
    run.n = 0;
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_attn_prefill(a, &b, &err), &err);
    run.n = 2;
    run.blocks = bad_blocks;
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_attn_prefill(a, &b, &err), &err);
    CU_ASSERT(strstr(err.msg, "outside the pool") != NULL);
    run.blocks = td_kv_seq_blocks(f->kv, f->ids[0]);
    b.n_q_heads = 3;
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_attn_prefill(a, &b, &err), &err);
    td_attn_destroy(a);
    fixture_free(f);
}

/* A sequence's output does not depend on the batch it is attended in: the
 * whole batch, its halves and each sequence alone give the same bits, on
 * every path and team size (long sequences are cut into chunks whose
 * partial results are merged; the cut must come from the sequence alone).
 * The pipeline's sub-batches and continuous batching rely on it. */
static void test_batch_invariance(void) {
    static const int32_t lens[] = {2000, 700, 33, 5000, 16, 1300, 257};
    enum { N = sizeof lens / sizeof lens[0] };
    fixture *f = fixture_make(2, 4, 64, TD_DTYPE_BF16, 16, lens, N, 77, 1.0f);
    const size_t row = (size_t)f->n_q * f->D;
    for (td_isa isa = TD_ISA_SCALAR; isa < TD_ISA_COUNT; isa++) {
        if (!td_isa_supported(isa))
            continue;
        for (int threads = 1; threads <= 3; threads++) {
            float *all = run(f, isa, threads, TD_DTYPE_F32);
            static const int cuts[][2] = {{0, 3}, {3, N}, {0, 1}, {3, 4}, {6, N}, {1, 6}};
            for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
                fixture sub = *f;
                sub.n_seqs = cuts[c][1] - cuts[c][0];
                sub.ids = f->ids + cuts[c][0];
                sub.lens = f->lens + cuts[c][0];
                sub.q = f->q + (size_t)cuts[c][0] * row;
                float *part = run(&sub, isa, threads, TD_DTYPE_F32);
                if (memcmp(part, all + (size_t)cuts[c][0] * row, (size_t)sub.n_seqs * row * sizeof *part)) {
                    printf("\n    %s, %d threads: sequences [%d, %d) differ alone", td_isa_name(isa), threads,
                           cuts[c][0], cuts[c][1]);
                    CU_FAIL("a sequence's attention depends on its batch");
                }
                free(part);
            }
            free(all);
        }
    }
    fixture_free(f);
}

/* td_attn_time_threads: each thread's share of a call, inside the call. */
static void test_thread_spans(void) {
    static const int32_t lens[] = {3000, 2000, 1000, 700};
    fixture *f = fixture_make(2, 4, 64, TD_DTYPE_BF16, 16, lens, 4, 5, 1.0f);
    const size_t row = (size_t)f->n_q * f->D;
    td_attn *a = NULL;
    td_error err;
    td_isa isa;
    TD_ASSERT_OK(td_isa_select(&isa, &err), &err);
    TD_ASSERT_OK(td_attn_create(2, isa, &a, &err), &err);
    td_attn_seq seqs[4];
    float *out = malloc(row * 4 * sizeof *out);
    for (int s = 0; s < 4; s++)
        seqs[s] = (td_attn_seq){.q = f->q + s * row,
                                .blocks = td_kv_seq_blocks(f->kv, f->ids[s]),
                                .n_tokens = lens[s],
                                .out = out + s * row};
    td_attn_batch b = {.kv = f->kv,
                       .layer = LAYER,
                       .n_q_heads = f->n_q,
                       .scale = f->scale,
                       .out_dtype = TD_DTYPE_F32,
                       .seqs = seqs,
                       .n_seqs = 4};
    /* off: nothing recorded */
    TD_ASSERT_OK(td_attn_decode(a, &b, &err), &err);
    for (int k = 0; k < TD_ATTN_SPAN_KINDS; k++)
        for (int i = 0; i < 2 * td_attn_threads(a); i++)
            CU_ASSERT_EQUAL(td_attn_spans(a, (td_attn_span_kind)k)[i], 0);
    td_attn_time_threads(a, true);
    const double before = td_seconds();
    TD_ASSERT_OK(td_attn_decode(a, &b, &err), &err);
    const double after = td_seconds();
    const double *sp = td_attn_spans(a, TD_ATTN_SPAN_DECODE);
    int busy = 0;
    for (int t = 0; t < td_attn_threads(a); t++) {
        if (sp[2 * t + 1] == 0)
            continue;
        busy++;
        CU_ASSERT(before <= sp[2 * t] && sp[2 * t] <= sp[2 * t + 1] && sp[2 * t + 1] <= after);
    }
    CU_ASSERT(busy >= 1); /* the runtime may give a smaller team, never none */
    CU_ASSERT_EQUAL(td_attn_spans(a, TD_ATTN_SPAN_PREFILL)[1], 0);
    td_attn_clear_spans(a);
    CU_ASSERT_EQUAL(td_attn_spans(a, TD_ATTN_SPAN_DECODE)[1], 0);
    free(out);
    td_attn_destroy(a);
    fixture_free(f);
}

void td_test_register(void) {
    static const td_test tests[] = {
        {"scalar kernel vs naive two-pass softmax", test_scalar_vs_oracle},
        {"every ISA path vs scalar, randomized shapes", test_paths_vs_scalar},
        {"needle tokens anywhere in short and long contexts", test_needles},
        {"unused slots (NaN, inf) do not leak", test_unused_slots_are_ignored},
        {"argument errors", test_errors},
        {"ISA selection and TANDEM_ISA", test_isa_selection},
        {"prefill runs, every ISA, vs scalar decode per query", test_prefill_vs_decode},
        {"prefill argument errors", test_prefill_errors},
        {"a sequence's result does not depend on its batch", test_batch_invariance},
        {"per-thread spans for traces", test_thread_spans},
        {NULL, NULL},
    };
    td_add_suite("attention", tests);
}
