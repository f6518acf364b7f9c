/* Token sampling (see sampler.h for the chain and its definitions).
 *
 * Paths, by what the parameters switch on:
 *
 *   greedy (temperature 0, or top_k 1): one argmax pass.
 *
 *   no top-k / top-p: the kept set is min-p's threshold on the logits
 *   (p_i >= min_p * p_max  <=>  l_i - l_max >= log(min_p)), which needs no
 *   order. Passes: max; exp in place (the caller lets us overwrite the
 *   logits) with a sum per block of 64; the draw walks the block sums, then
 *   the one block the drawn mass falls in.
 *
 *   top-k: one pass keeps every token above a running threshold (the k-th
 *   best seen so far) in a buffer, which quickselect cuts back to k whenever
 *   it fills: about n compares and k ln(n/k) insertions. Top-p after it
 *   works on those k.
 *
 *   top-p alone: it needs the total mass, so exp over everything; the same
 *   pass histograms the tokens by distance below the max into BUCKETS
 *   buckets, each 1/32 of a logit wide (the last takes everything further
 *   down). Walking the buckets from the top finds the one where the mass
 *   reaches top_p; the buckets above it are kept whole, and only the cut
 *   bucket is searched, by a quickselect that steers by mass (select_mass).
 *   Flat logits (everything in one bucket) make that the whole vocabulary:
 *   still expected O(n), with a larger constant.
 *
 * Nothing sorts more than runs of 16. All orderings use (logit descending,
 * id ascending), a total order, so the kept set, and the token a given
 * random number maps to, do not depend on how a selection happened to run.
 *
 * The hot loops run over fixed blocks of 64 floats, which the compiler
 * vectorizes at -O2, with exp_neg instead of libm's expf (that does not
 * vectorize without -ffast-math). */
#include "engine/sampler.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/exp2_poly.h"

#define BUCKETS 1024
#define BUCKETS_PER_LOGIT 32.0f

void td_sampling_default(td_sampling *s) {
    s->temperature = 1.0f;
    s->top_k = 0;
    s->top_p = 1.0f;
    s->min_p = 0.0f;
    s->repetition_penalty = 1.0f;
    s->penalty_last_n = 64;
    s->seed = 0;
}

tandem_status td_sampling_check(const td_sampling *s, td_error *err) {
    /* written so that NaN fails every test */
    if (!(s->temperature >= 0.0f && isfinite(s->temperature)))
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                       "sampling: temperature must be finite and >= 0 (0 = greedy), got %g", (double)s->temperature);
    if (s->top_k < 0)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "sampling: top_k must be >= 0 (0 = off), got %d",
                       (int)s->top_k);
    if (!(s->top_p > 0.0f && s->top_p <= 1.0f))
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "sampling: top_p must be in (0, 1] (1 = off), got %g",
                       (double)s->top_p);
    if (!(s->min_p >= 0.0f && s->min_p <= 1.0f))
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "sampling: min_p must be in [0, 1] (0 = off), got %g",
                       (double)s->min_p);
    if (!(s->repetition_penalty > 0.0f && isfinite(s->repetition_penalty)))
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                       "sampling: repetition_penalty must be finite and > 0 (1 = off), got %g",
                       (double)s->repetition_penalty);
    if (s->penalty_last_n < -1)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                       "sampling: penalty_last_n must be >= -1 (-1 = whole history, 0 = none), got %d",
                       (int)s->penalty_last_n);
    return TANDEM_OK;
}

/* ---- random numbers: xoshiro256** (Blackman & Vigna), seeded by splitmix64 */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t *s) {
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* uniform in [0, 1), 53 random bits */
static double rng_uniform(uint64_t *s) { return (double)(rng_next(s) >> 11) * 0x1p-53; }

/* ---- exp */

#define BLOCK 64

#define LOG2E 1.44269504088896341f

/* 2^t for t in [-127, 0], relative error < 3e-7: 2^i * 2^f with |f| <= 1/2,
 * the polynomial of cpu/exp2_poly.h for 2^f and i put into the exponent
 * bits. Exactly 1 at 0 (the max token); exactly 0 for t < -126.5 (i = -127
 * makes the bits 0), where expf would give less than 2^-126: no sum could
 * notice such a token. */
static inline float exp2_clamped(float t) {
    float fi = (t + 12582912.0f) - 12582912.0f; /* rounded to an integer: 1.5 * 2^23 */
    float f = t - fi;
    float p = 1.0f + f * (TD_EXP2_C1 +
                          f * (TD_EXP2_C2 + f * (TD_EXP2_C3 + f * (TD_EXP2_C4 + f * (TD_EXP2_C5 + f * TD_EXP2_C6)))));
    uint32_t bits = (uint32_t)((int32_t)fi + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* x log2(e), raised to -127 if below (-inf too): exp2_clamped's argument */
static inline float exp_arg(float x) {
    float t = x * LOG2E;
    return t > -127.0f ? t : -127.0f;
}

/* e^x for x <= 0 or -inf (not NaN) */
static inline float exp_neg(float x) { return exp2_clamped(exp_arg(x)); }

/* The loops over BLOCK floats below are split where a select (?:) is
 * followed by arithmetic: GCC (-ftrapping-math, the default) will not
 * if-convert that, and so would not vectorize the loop; a select whose
 * result goes straight to memory it does. */

/* ---- setup */

static int32_t effective_top_k(const td_sampling *p, int32_t n_vocab) {
    return (p->top_k > 0 && p->top_k < n_vocab) ? p->top_k : 0;
}

static bool is_greedy(const td_sampling *p) { return p->temperature == 0.0f || p->top_k == 1; }

static bool wants_penalty(const td_sampling *p) { return p->repetition_penalty != 1.0f && p->penalty_last_n != 0; }

tandem_status td_sampler_init(td_sampler *s, const td_sampling *p, int32_t n_vocab, td_error *err) {
    memset(s, 0, sizeof *s);
    tandem_status st = td_sampling_check(p, err);
    if (st != TANDEM_OK)
        return st;
    if (n_vocab <= 0)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "sampler: n_vocab must be > 0, got %d", (int)n_vocab);
    s->p = *p;
    s->n_vocab = n_vocab;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
    const int32_t k = effective_top_k(p, n_vocab);
    if (is_greedy(p)) {
        /* nothing: the argmax needs no scratch */
    } else if (k > 0 || p->top_p < 1.0f) {
        s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
        if (!s->cand)
            goto oom;
        if (k > 0) {
            s->block_max = malloc(((size_t)n_vocab / BLOCK + 1) * sizeof *s->block_max);
            if (!s->block_max)
                goto oom;
        } else {
            s->bucket = malloc(BUCKETS * sizeof *s->bucket);
            s->bucket_mass = malloc(BUCKETS * sizeof *s->bucket_mass);
            if (!s->bucket || !s->bucket_mass)
                goto oom;
        }
    } else {
        s->block_sum = malloc(((size_t)n_vocab + BLOCK - 1) / BLOCK * sizeof *s->block_sum);
        if (!s->block_sum)
            goto oom;
    }
    if (wants_penalty(p)) {
        s->seen = calloc(((size_t)n_vocab + 63) / 64, sizeof *s->seen);
        if (!s->seen)
            goto oom;
    }
    return TANDEM_OK;
oom:
    td_sampler_free(s);
    return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "sampler: cannot allocate scratch for a vocabulary of %d",
                   (int)n_vocab);
}

void td_sampler_free(td_sampler *s) {
    free(s->cand);
    free(s->bucket);
    free(s->bucket_mass);
    free(s->block_sum);
    free(s->block_max);
    free(s->seen);
    s->cand = NULL;
    s->bucket = NULL;
    s->bucket_mass = NULL;
    s->block_sum = NULL;
    s->block_max = NULL;
    s->seen = NULL;
}

/* ---- repetition penalty */

void td_sampler_apply_penalty(td_sampler *s, float *logits, const int32_t *history, int32_t n_history) {
    const float pen = s->p.repetition_penalty;
    if (!wants_penalty(&s->p) || !s->seen || !history || n_history <= 0)
        return;
    int32_t n = s->p.penalty_last_n;
    int32_t start = (n < 0 || n >= n_history) ? 0 : n_history - n;
    /* each distinct id once: mark in the bitmap, then unmark the same ids,
     * so the cost is that of the window, not of the vocabulary */
    for (int32_t i = start; i < n_history; i++) {
        int32_t t = history[i];
        if (t < 0 || t >= s->n_vocab)
            continue;
        uint64_t bit = 1ull << (t & 63);
        if (s->seen[t >> 6] & bit)
            continue;
        s->seen[t >> 6] |= bit;
        float l = logits[t];
        logits[t] = l > 0.0f ? l / pen : l * pen;
    }
    for (int32_t i = start; i < n_history; i++) {
        int32_t t = history[i];
        if (t >= 0 && t < s->n_vocab)
            s->seen[t >> 6] &= ~(1ull << (t & 63));
    }
}

/* ---- candidate ordering: logit descending, then id ascending */

static inline bool better(td_sampler_cand a, td_sampler_cand b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

static inline void swap_cand(td_sampler_cand *c, int32_t i, int32_t j) {
    td_sampler_cand t = c[i];
    c[i] = c[j];
    c[j] = t;
}

static void insertion_sort(td_sampler_cand *c, int32_t n) {
    for (int32_t i = 1; i < n; i++) {
        td_sampler_cand x = c[i];
        int32_t j = i;
        for (; j > 0 && better(x, c[j - 1]); j--)
            c[j] = c[j - 1];
        c[j] = x;
    }
}

static void sift_down(td_sampler_cand *c, int32_t i, int32_t n) {
    /* a heap whose root is the worst, so that popping it to the end leaves
     * the array sorted best first */
    for (;;) {
        int32_t w = i, l = 2 * i + 1, r = l + 1;
        if (l < n && better(c[w], c[l]))
            w = l;
        if (r < n && better(c[w], c[r]))
            w = r;
        if (w == i)
            return;
        swap_cand(c, i, w);
        i = w;
    }
}

static void heap_sort(td_sampler_cand *c, int32_t n) {
    for (int32_t i = n / 2 - 1; i >= 0; i--)
        sift_down(c, i, n);
    for (int32_t i = n - 1; i > 0; i--) {
        swap_cand(c, 0, i);
        sift_down(c, 0, i);
    }
}

/* Lomuto partition of c[lo..hi] around the median of three, which it puts at
 * the returned index: c[lo..p) are better, c(p..hi] worse. The keys are all
 * distinct (ids are), so there is no run of equal keys to degrade on. */
static int32_t partition(td_sampler_cand *c, int32_t lo, int32_t hi) {
    int32_t mid = lo + (hi - lo) / 2;
    if (better(c[mid], c[lo]))
        swap_cand(c, lo, mid);
    if (better(c[hi], c[lo]))
        swap_cand(c, lo, hi);
    if (better(c[mid], c[hi]))
        swap_cand(c, mid, hi);
    td_sampler_cand piv = c[hi];
    int32_t p = lo;
    for (int32_t j = lo; j < hi; j++)
        if (better(c[j], piv))
            swap_cand(c, p++, j);
    swap_cand(c, p, hi);
    return p;
}

static int depth_limit(int32_t n) {
    int d = 0;
    for (; n > 1; n >>= 1)
        d += 2;
    return d;
}

/* introsort: quicksort, insertion sort for short ranges, heap sort when the
 * recursion gets too deep (a bad run of pivots) */
static void sort_range(td_sampler_cand *c, int32_t n, int depth) {
    while (n > 16) {
        if (depth-- == 0) {
            heap_sort(c, n);
            return;
        }
        int32_t p = partition(c, 0, n - 1);
        /* recurse on the smaller side, loop on the larger */
        if (p < n - 1 - p) {
            sort_range(c, p, depth);
            c += p + 1;
            n -= p + 1;
        } else {
            sort_range(c + p + 1, n - 1 - p, depth);
            n = p;
        }
    }
    insertion_sort(c, n);
}

static void sort_cands(td_sampler_cand *c, int32_t n) { sort_range(c, n, depth_limit(n)); }

/* Reorders c so that c[0..k) are the k best (in no particular order). */
static void select_cands(td_sampler_cand *c, int32_t n, int32_t k) {
    int32_t lo = 0, hi = n - 1;
    int depth = depth_limit(n);
    while (hi - lo > 16) {
        if (depth-- == 0)
            break;
        int32_t p = partition(c, lo, hi);
        if (p == k || p + 1 == k)
            return;
        if (p > k)
            hi = p - 1;
        else
            lo = p + 1;
    }
    sort_cands(c + lo, hi - lo + 1);
}

/* ---- the max */

/* The lowest id of the largest logit (NaN never compares greater), -1 if
 * none is above -inf. Block maxima first, vectorized; then the first block
 * that reached the max is searched for its first occurrence. The maxima of
 * the whole blocks go to block_max unless it is NULL. */
static int32_t argmax(const float *x, int32_t n, float *max, float *block_max) {
    float m = -INFINITY;
    int32_t blk = -1, i = 0;
    for (; i + BLOCK <= n; i += BLOCK) {
        float acc[16];
        for (int j = 0; j < 16; j++)
            acc[j] = -INFINITY;
        for (int k = 0; k < BLOCK; k += 16)
            for (int j = 0; j < 16; j++)
                acc[j] = x[i + k + j] > acc[j] ? x[i + k + j] : acc[j];
        float bm = -INFINITY;
        for (int j = 0; j < 16; j++)
            bm = acc[j] > bm ? acc[j] : bm;
        if (block_max)
            block_max[i / BLOCK] = bm;
        if (bm > m) {
            m = bm;
            blk = i;
        }
    }
    int32_t arg = -1;
    if (blk >= 0)
        for (arg = blk; x[arg] != m; arg++)
            ;
    for (; i < n; i++)
        if (x[i] > m) {
            m = x[i];
            arg = i;
        }
    *max = m;
    return arg;
}

/* ---- the draw */

static int by_id(const void *a, const void *b) {
    int32_t x = ((const td_sampler_cand *)a)->id, y = ((const td_sampler_cand *)b)->id;
    return (x > y) - (x < y);
}

/* Samples from c[0..n) (n >= 1, finite logits, max m) at the temperature.
 * The draw walks the candidates in id order, as draw_all walks the whole
 * vocabulary: the token a given random number picks must change only when
 * the probabilities move past it. In the order the selection left them, a
 * rounding-level change in one logit (another batch size, another GEMM
 * kernel) could reshuffle the candidates and turn the same draw into an
 * unrelated token. */
static int32_t draw_cands(td_sampler *s, td_sampler_cand *c, int32_t n, float m) {
    const float t = s->p.temperature;
    qsort(c, (size_t)n, sizeof *c, by_id);
    double z = 0.0;
    for (int32_t i = 0; i < n; i++) {
        float e = exp_neg((c[i].logit - m) / t); /* see exp_block on / t */
        c[i].logit = e;
        z += e;
    }
    double r = rng_uniform(s->rng) * z, cum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        cum += c[i].logit;
        if (cum > r)
            return c[i].id;
    }
    /* r rounded up to z: the last token with any mass */
    for (int32_t i = n - 1; i > 0; i--)
        if (c[i].logit > 0.0f)
            return c[i].id;
    return c[0].id;
}

/* exp((l - m) / t) in place for l - m >= lmp (0 for the others, NaN
 * included); returns the sum. */
static double exp_block(float *x, int32_t len, float m, float t, float lmp) {
    if (len == BLOCK) {
        float a[BLOCK], acc[8] = {0};
        for (int j = 0; j < BLOCK; j++) {
            float d = x[j] - m;
            a[j] = d >= lmp ? d : -INFINITY;
        }
        for (int j = 0; j < BLOCK; j++)
            a[j] = exp_arg(a[j] / t);
        for (int k = 0; k < BLOCK; k += 8)
            for (int j = 0; j < 8; j++) {
                float e = exp2_clamped(a[k + j]);
                x[k + j] = e;
                acc[j] += e;
            }
        return ((double)acc[0] + acc[1] + acc[2] + acc[3]) + ((double)acc[4] + acc[5] + acc[6] + acc[7]);
    }
    double sum = 0.0;
    for (int32_t j = 0; j < len; j++) {
        /* divide rather than multiply by 1/t: a tiny t would make 1/t inf
         * and 0 * inf NaN for the max */
        float d = x[j] - m;
        x[j] = exp_neg((d >= lmp ? d : -INFINITY) / t);
        sum += x[j];
    }
    return sum;
}

/* Samples over the whole vocabulary, keeping l - m >= lmp (-inf: all). */
static int32_t draw_all(td_sampler *s, float *logits, float m, float lmp) {
    const float t = s->p.temperature;
    const int32_t n = s->n_vocab, nb = (n + BLOCK - 1) / BLOCK;
    double *bs = s->block_sum, z = 0.0;
    for (int32_t b = 0; b < nb; b++) {
        int32_t len = n - b * BLOCK < BLOCK ? n - b * BLOCK : BLOCK;
        bs[b] = exp_block(logits + (size_t)b * BLOCK, len, m, t, lmp);
        z += bs[b];
    }
    double r = rng_uniform(s->rng) * z, cum = 0.0;
    /* the block whose partial sum first exceeds r: it has mass. cum repeats
     * z's additions, so only r rounded up to z can run off the end */
    int32_t b = 0;
    while (b < nb && cum + bs[b] <= r)
        cum += bs[b++];
    if (b == nb) {
        for (b = nb - 1; !(bs[b] > 0.0); b--)
            ;
        r = INFINITY; /* its last token with mass */
    }
    /* within the block, the first token whose running sum exceeds r; if
     * rounding leaves the sequential sum short of the block sum, the last
     * token with mass */
    const float *x = logits + (size_t)b * BLOCK;
    int32_t len = n - b * BLOCK < BLOCK ? n - b * BLOCK : BLOCK, last = 0;
    for (int32_t j = 0; j < len; j++) {
        if (x[j] > 0.0f)
            last = j;
        cum += x[j];
        if (cum > r)
            return b * BLOCK + j;
    }
    return b * BLOCK + last;
}

/* ---- truncation */

/* Reorders c[0..n) and returns the smallest j such that the j best (by the
 * total order) have mass sum exp(l - m) >= target, or n if rounding leaves
 * the total a hair short: a quickselect that steers by mass instead of by
 * rank (expected O(n) exps). c[0..j) is the kept set, in no particular
 * order. */
static int32_t select_mass(td_sampler_cand *c, int32_t n, float m, double target) {
    int32_t lo = 0, hi = n - 1;
    double acc = 0.0; /* mass of c[0..lo), always < target */
    int depth = depth_limit(n);
    while (hi - lo > 16 && depth-- > 0) {
        int32_t p = partition(c, lo, hi);
        double s = 0.0;
        for (int32_t i = lo; i < p; i++)
            s += exp_neg(c[i].logit - m);
        if (acc + s >= target) { /* ends before the pivot (s > 0, so p > lo) */
            hi = p - 1;
            continue;
        }
        acc += s + exp_neg(c[p].logit - m);
        if (acc >= target)
            return p + 1;
        lo = p + 1;
    }
    sort_cands(c + lo, hi - lo + 1);
    for (int32_t i = lo; i <= hi; i++)
        if ((acc += exp_neg(c[i].logit - m)) >= target)
            return i + 1;
    return n;
}

/* The k best tokens into cand[0..k) (all finite ones if fewer), in no
 * particular order. A token enters the buffer only if it beats the running
 * threshold, the worst of the k best so far; equal logits later in the scan
 * have higher ids, so they lose to it and are rightly skipped. Once the
 * threshold has risen, most blocks of 64 are skipped on their max (from the
 * argmax pass) alone. */
static int32_t top_k_filter(td_sampler *s, const float *logits, int32_t k) {
    td_sampler_cand *c = s->cand;
    const int32_t n_vocab = s->n_vocab, nb = n_vocab / BLOCK;
    /* buffer size: room for k more between cuts (cap > k since k < n_vocab) */
    int64_t want = 2 * (int64_t)k < 256 ? 256 : 2 * (int64_t)k;
    const int32_t cap = want < n_vocab ? (int32_t)want : n_vocab;
    float th = -INFINITY; /* also keeps out -inf and NaN */
    int32_t n = 0;
    for (int32_t b = 0; b <= nb; b++) {
        if (b < nb && !(s->block_max[b] > th))
            continue;
        const int32_t end = b < nb ? (b + 1) * BLOCK : n_vocab;
        for (int32_t i = b * BLOCK; i < end; i++) {
            float l = logits[i];
            if (l > th) {
                c[n++] = (td_sampler_cand){l, i};
                if (n == cap) {
                    select_cands(c, n, k);
                    n = k;
                    th = c[0].logit;
                    for (int32_t j = 1; j < k; j++)
                        th = c[j].logit < th ? c[j].logit : th;
                }
            }
        }
    }
    if (n > k) {
        select_cands(c, n, k);
        n = k;
    }
    return n;
}

/* (m - l) * BUCKETS_PER_LOGIT clamped to the last bucket (+inf too), still
 * a float */
static inline float bucket_arg(float l, float m) {
    float d = (m - l) * BUCKETS_PER_LOGIT;
    return d < (float)(BUCKETS - 1) ? d : (float)(BUCKETS - 1);
}

/* l <= m, l > -inf */
static inline int32_t bucket_of(float l, float m) { return (int32_t)bucket_arg(l, m); }

/* Top-p without top-k (see the top of the file): the kept set into
 * cand[0..returned). */
static int32_t top_p_buckets(td_sampler *s, const float *logits, float m) {
    const int32_t n_vocab = s->n_vocab;
    td_sampler_cand *cand = s->cand;
    uint32_t *cnt = s->bucket;
    double *bm = s->bucket_mass;
    /* pass 1, vectorized: mass and bucket of each token, parked in cand
     * (the gather below rebuilds cand from the logits). -inf and NaN get
     * mass 0 in the last bucket; they are not gathered. */
    int32_t i = 0;
    for (; i + BLOCK <= n_vocab; i += BLOCK) {
        float l[BLOCK], a[BLOCK], d[BLOCK];
        for (int j = 0; j < BLOCK; j++)
            l[j] = logits[i + j] > -INFINITY ? logits[i + j] : -INFINITY;
        for (int j = 0; j < BLOCK; j++) {
            a[j] = exp_arg(l[j] - m);
            d[j] = bucket_arg(l[j], m);
        }
        for (int j = 0; j < BLOCK; j++) {
            cand[i + j].logit = exp2_clamped(a[j]);
            cand[i + j].id = (int32_t)d[j];
        }
    }
    for (; i < n_vocab; i++) {
        float l = logits[i] > -INFINITY ? logits[i] : -INFINITY;
        cand[i].logit = exp_neg(l - m);
        cand[i].id = (int32_t)bucket_arg(l, m);
    }
    memset(cnt, 0, BUCKETS * sizeof *cnt);
    memset(bm, 0, BUCKETS * sizeof *bm);
    for (i = 0; i < n_vocab; i++) {
        cnt[cand[i].id]++;
        bm[cand[i].id] += cand[i].logit;
    }
    double z = 0.0;
    for (int32_t b = 0; b < BUCKETS; b++)
        z += bm[b];
    /* the bucket where the mass reaches the target */
    const double target = (double)s->p.top_p * z;
    int32_t cut = BUCKETS - 1, n_above = 0;
    double mass_above = 0.0;
    for (int32_t b = 0; b < BUCKETS - 1; b++) {
        if (mass_above + bm[b] >= target) {
            cut = b;
            break;
        }
        n_above += (int32_t)cnt[b];
        mass_above += bm[b];
    }
    /* gather the buckets above the cut to cand[0..n_above), the cut bucket
     * after them (this overwrites pass 1's values, which are done with).
     * thr is a bucket below the cut's lower edge (and, for logits so large
     * that a float cannot resolve 1/32, a little more): a cheap,
     * well-predicted test that skips the bulk; bucket_of decides for what
     * passes it. */
    const float thr = cut == BUCKETS - 1 ? -INFINITY : m - (float)(cut + 2) / BUCKETS_PER_LOGIT - fabsf(m) * 0x1p-20f;
    int32_t ia = 0, ic = n_above;
    for (i = 0; i < n_vocab; i++) {
        float l = logits[i];
        if (!(l >= thr && l > -INFINITY))
            continue;
        int32_t b = bucket_of(l, m);
        if (b < cut)
            cand[ia++] = (td_sampler_cand){l, i};
        else if (b == cut)
            cand[ic++] = (td_sampler_cand){l, i};
    }
    return n_above + select_mass(cand + n_above, ic - n_above, m, target - mass_above);
}

/* top-k and/or top-p, then min-p: the kept set into cand[0..returned) */
static int32_t truncate_cands(td_sampler *s, const float *logits, float m) {
    const int32_t k = effective_top_k(&s->p, s->n_vocab);
    td_sampler_cand *cand = s->cand;
    int32_t n;
    if (k > 0) {
        n = top_k_filter(s, logits, k);
        if (s->p.top_p < 1.0f) { /* renormalized over the top-k set */
            double zk = 0.0;
            for (int32_t i = 0; i < n; i++)
                zk += exp_neg(cand[i].logit - m);
            n = select_mass(cand, n, m, (double)s->p.top_p * zk);
        }
    } else {
        n = top_p_buckets(s, logits, m);
    }
    if (s->p.min_p > 0.0f) {
        const float lmp = logf(s->p.min_p);
        int32_t j = 0;
        for (int32_t i = 0; i < n; i++)
            if (cand[i].logit - m >= lmp)
                cand[j++] = cand[i];
        n = j; /* >= 1: the max is always kept */
    }
    return n;
}

/* min-p keeps l - m >= log(min_p). Not l >= m + log(min_p): far from 0,
 * where floats are coarse, m + log(min_p) rounds by up to half their
 * spacing, while l - m of two close logits is exact. */
static float log_min_p(const td_sampler *s) { return s->p.min_p > 0.0f ? logf(s->p.min_p) : -INFINITY; }

int32_t td_sampler_sample(td_sampler *s, float *logits, const int32_t *history, int32_t n_history) {
    td_sampler_apply_penalty(s, logits, history, n_history);
    float m;
    int32_t arg = argmax(logits, s->n_vocab, &m, s->block_max);
    /* nothing finite, or +inf: nothing to draw between */
    if (arg < 0 || m == INFINITY || is_greedy(&s->p))
        return arg;
    if (s->cand)
        return draw_cands(s, s->cand, truncate_cands(s, logits, m), m);
    return draw_all(s, logits, m, log_min_p(s));
}

int32_t td_sampler_kept(td_sampler *s, float *logits, const int32_t *history, int32_t n_history, int32_t *ids) {
    td_sampler_apply_penalty(s, logits, history, n_history);
    float m;
    int32_t arg = argmax(logits, s->n_vocab, &m, s->block_max);
    if (arg < 0)
        return 0;
    if (m == INFINITY || is_greedy(&s->p)) {
        ids[0] = arg;
        return 1;
    }
    int32_t n = 0;
    if (s->cand) {
        n = truncate_cands(s, logits, m);
        for (int32_t i = 0; i < n; i++)
            ids[i] = s->cand[i].id;
    } else {
        const float lmp = log_min_p(s);
        for (int32_t i = 0; i < s->n_vocab; i++)
            if (logits[i] - m >= lmp && logits[i] > -INFINITY)
                ids[n++] = i;
    }
    return n;
}
