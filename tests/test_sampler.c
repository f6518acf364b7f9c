/* Sampler (engine/sampler.h) and stop strings (engine/stop.h).
 *
 * The sampler's distributions are checked against probabilities computed
 * here, in double, straight from the definitions (sort, cut, softmax), with a
 * chi-square bound over many draws; the stop matcher against a naive search
 * of the whole text after every feed. */
#include <stdlib.h>
#include <string.h>

#include "engine/sampler.h"
#include "engine/stop.h"
#include "tests/test_util.h"

/* ---- helpers */

static td_sampling params(float temperature, int32_t top_k, float top_p, float min_p) {
    td_sampling p;
    td_sampling_default(&p);
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    return p;
}

/* the lowest id holding the largest non-NaN value, or -1 */
static int32_t ref_argmax(const float *x, int32_t n) {
    double m = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        if (!isnan(x[i]) && x[i] > m)
            m = x[i];
    if (m == -INFINITY)
        return -1;
    for (int32_t i = 0; i < n; i++)
        if (x[i] == m)
            return i;
    return -1;
}

static const float *g_sort_logits;
static int cmp_desc(const void *a, const void *b) {
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    float x = g_sort_logits[i], y = g_sort_logits[j];
    if (x != y)
        return x > y ? -1 : 1;
    return i < j ? -1 : 1;
}

/* Probabilities from the definitions in sampler.h: sort by (logit desc, id
 * asc); top-k keeps the first k; top-p the shortest prefix whose softmax mass
 * (over what top-k kept) is >= top_p; min-p those with p >= min_p * p_max;
 * then softmax at the temperature over the kept tokens. */
static void ref_probs(const td_sampling *p, const float *logits, int32_t n, double *prob) {
    int32_t *idx = malloc((size_t)n * sizeof *idx);
    int32_t kept = 0;
    for (int32_t i = 0; i < n; i++) {
        prob[i] = 0.0;
        if (isfinite(logits[i]))
            idx[kept++] = i;
    }
    if (kept == 0) {
        free(idx);
        return;
    }
    g_sort_logits = logits;
    qsort(idx, (size_t)kept, sizeof *idx, cmp_desc);
    double m = logits[idx[0]];
    if (p->top_k > 0 && p->top_k < kept)
        kept = p->top_k;
    if (p->top_p < 1.0f) {
        double z = 0.0, cum = 0.0;
        for (int32_t i = 0; i < kept; i++)
            z += exp(logits[idx[i]] - m);
        for (int32_t i = 0; i < kept; i++) {
            cum += exp(logits[idx[i]] - m) / z;
            if (cum >= p->top_p) {
                kept = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0.0f) {
        int32_t j = 0;
        while (j < kept && exp(logits[idx[j]] - m) >= p->min_p) /* p_i / p_max */
            j++;
        kept = j;
    }
    double z = 0.0;
    for (int32_t i = 0; i < kept; i++)
        z += exp((logits[idx[i]] - m) / p->temperature);
    for (int32_t i = 0; i < kept; i++)
        prob[idx[i]] = exp((logits[idx[i]] - m) / p->temperature) / z;
    free(idx);
}

static int32_t sample_copy(td_sampler *s, const float *logits, float *work) {
    memcpy(work, logits, (size_t)s->n_vocab * sizeof *work);
    return td_sampler_sample(s, work, NULL, 0);
}

/* Draws n_draws tokens; fails if a token of probability 0 appears or if the
 * chi-square statistic (cells of expected count < 5 pooled) exceeds a bound
 * that a correct sampler passes with probability ~1 - 1e-7. */
static void check_distribution(const char *what, const td_sampling *p, const float *logits, int32_t n,
                               int32_t n_draws) {
    td_error err;
    td_sampler s;
    TD_ASSERT_OK(td_sampler_init(&s, p, n, &err), &err);
    double *prob = malloc((size_t)n * sizeof *prob);
    int64_t *count = calloc((size_t)n, sizeof *count);
    float *work = malloc((size_t)n * sizeof *work);
    ref_probs(p, logits, n, prob);
    int32_t bad = -1;
    for (int32_t d = 0; d < n_draws; d++) {
        int32_t t = sample_copy(&s, logits, work);
        CU_ASSERT_FATAL(t >= 0 && t < n);
        count[t]++;
        if (prob[t] == 0.0 && bad < 0)
            bad = t;
    }
    if (bad >= 0) {
        fprintf(stderr, "\n  %s: token %d (logit %g) is outside the kept set but was drawn %lld times\n", what, bad,
                (double)logits[bad], (long long)count[bad]);
        CU_FAIL("a token outside the kept set was drawn");
    }
    double chi2 = 0.0, pool_e = 0.0, pool_o = 0.0;
    int cells = 0;
    for (int32_t i = 0; i < n; i++) {
        if (prob[i] == 0.0)
            continue;
        double e = prob[i] * n_draws;
        if (e < 5.0) {
            pool_e += e;
            pool_o += (double)count[i];
            continue;
        }
        chi2 += ((double)count[i] - e) * ((double)count[i] - e) / e;
        cells++;
    }
    if (pool_e > 0.0) {
        chi2 += (pool_o - pool_e) * (pool_o - pool_e) / pool_e;
        cells++;
    }
    int dof = cells > 1 ? cells - 1 : 1;
    double bound = dof + 8.0 * sqrt(2.0 * dof) + 12.0;
    if (!(chi2 <= bound)) {
        fprintf(stderr, "\n  %s: chi2 %.1f > %.1f (%d dof)\n  id   logit   expected  observed\n", what, chi2, bound,
                dof);
        for (int32_t i = 0; i < n && i < 40; i++)
            fprintf(stderr, "  %3d %7.3f %9.5f %9.5f\n", i, (double)logits[i], prob[i], (double)count[i] / n_draws);
        CU_FAIL("sampled frequencies differ from the reference probabilities");
    }
    free(prob);
    free(count);
    free(work);
    td_sampler_free(&s);
}

/* The set of tokens drawn at least once must be exactly the kept set
 * (probability > 0 in the reference). With a huge temperature the kept set
 * is near uniform, so 30 draws per kept token see all of it (a token is
 * missed with probability ~e^-30). */
static void check_kept_set(const char *what, td_sampling p, const float *logits, int32_t n) {
    td_error err;
    td_sampler s;
    double *prob = malloc((size_t)n * sizeof *prob);
    int32_t *count = calloc((size_t)n, sizeof *count);
    float *work = malloc((size_t)n * sizeof *work);
    ref_probs(&p, logits, n, prob);
    int32_t n_kept = 0, wrong = 0;
    for (int32_t i = 0; i < n; i++)
        n_kept += prob[i] > 0.0;
    const int32_t n_draws = 30 * n_kept;
    p.temperature = 1e6f;
    TD_ASSERT_OK(td_sampler_init(&s, &p, n, &err), &err);
    for (int32_t d = 0; d < n_draws; d++) {
        int32_t t = sample_copy(&s, logits, work);
        CU_ASSERT_FATAL(t >= 0 && t < n);
        count[t]++;
    }
    for (int32_t i = 0; i < n; i++) {
        if ((prob[i] > 0.0) != (count[i] > 0)) {
            if (wrong++ < 5)
                fprintf(stderr, "\n  %s: token %d (logit %.6f) %s\n", what, i, (double)logits[i],
                        prob[i] > 0.0 ? "is kept but never drawn" : "is not kept but was drawn");
        }
    }
    CU_ASSERT_EQUAL(wrong, 0);
    free(prob);
    free(count);
    free(work);
    td_sampler_free(&s);
}

/* ---- parameters */

static void expect_bad(td_sampling p, const char *field) {
    td_error err;
    td_error_clear(&err);
    CU_ASSERT_EQUAL(td_sampling_check(&p, &err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(err.status, TANDEM_ERR_INVALID_ARGUMENT);
    if (!strstr(err.msg, field)) {
        fprintf(stderr, "\n  message \"%s\" does not name %s\n", err.msg, field);
        CU_FAIL("error message does not name the field");
    }
    td_sampler s;
    CU_ASSERT_EQUAL(td_sampler_init(&s, &p, 100, &err), TANDEM_ERR_INVALID_ARGUMENT);
    td_sampler_free(&s);
}

static void test_params(void) {
    td_sampling d;
    td_sampling_default(&d);
    CU_ASSERT_EQUAL(d.temperature, 1.0f);
    CU_ASSERT_EQUAL(d.top_k, 0);
    CU_ASSERT_EQUAL(d.top_p, 1.0f);
    CU_ASSERT_EQUAL(d.min_p, 0.0f);
    CU_ASSERT_EQUAL(d.repetition_penalty, 1.0f);
    td_error err;
    TD_ASSERT_OK(td_sampling_check(&d, &err), &err);

    td_sampling p = d;
    p.temperature = -0.1f;
    expect_bad(p, "temperature");
    p.temperature = NAN;
    expect_bad(p, "temperature");
    p.temperature = INFINITY;
    expect_bad(p, "temperature");
    p = d;
    p.top_k = -1;
    expect_bad(p, "top_k");
    p = d;
    p.top_p = 0.0f;
    expect_bad(p, "top_p");
    p.top_p = 1.0001f;
    expect_bad(p, "top_p");
    p.top_p = -0.5f;
    expect_bad(p, "top_p");
    p.top_p = NAN;
    expect_bad(p, "top_p");
    p = d;
    p.min_p = -0.01f;
    expect_bad(p, "min_p");
    p.min_p = 1.01f;
    expect_bad(p, "min_p");
    p.min_p = NAN;
    expect_bad(p, "min_p");
    p = d;
    p.repetition_penalty = 0.0f;
    expect_bad(p, "repetition_penalty");
    p.repetition_penalty = -1.0f;
    expect_bad(p, "repetition_penalty");
    p.repetition_penalty = NAN;
    expect_bad(p, "repetition_penalty");
    p = d;
    p.penalty_last_n = -2;
    expect_bad(p, "penalty_last_n");

    /* the edges of the valid ranges */
    p = d;
    p.temperature = 0.0f;
    p.top_k = 1000000;
    p.top_p = 1e-6f;
    p.min_p = 1.0f;
    p.repetition_penalty = 0.01f;
    p.penalty_last_n = -1;
    TD_ASSERT_OK(td_sampling_check(&p, &err), &err);
    p.min_p = 0.0f;
    TD_ASSERT_OK(td_sampling_check(&p, &err), &err);
    p.top_p = 1.0f;
    TD_ASSERT_OK(td_sampling_check(&p, &err), &err);

    td_sampler s;
    CU_ASSERT_EQUAL(td_sampler_init(&s, &d, 0, &err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "n_vocab"));
    td_sampler_free(&s);
    td_sampler_free(&s); /* twice is fine */
}

/* ---- greedy */

static void test_greedy(void) {
    td_error err;
    td_rng r = {11};
    const int32_t n = 50000;
    float *x = malloc(n * sizeof *x), *w = malloc(n * sizeof *w);
    td_sampling p = params(0.0f, 0, 1.0f, 0.0f);
    td_sampler s;
    TD_ASSERT_OK(td_sampler_init(&s, &p, n, &err), &err);
    for (int trial = 0; trial < 50; trial++) {
        for (int32_t i = 0; i < n; i++)
            x[i] = td_rng_uniform(&r, -20.0f, 20.0f);
        if (trial % 3 == 1) /* masked tokens, NaN, and a tie at the top */
            for (int32_t i = 0; i < n; i += 7)
                x[i] = (i % 2) ? -INFINITY : NAN;
        if (trial % 5 == 2) {
            int32_t a = td_rng_int(&r, 0, n - 1), b = td_rng_int(&r, 0, n - 1);
            x[a] = x[b] = 30.0f;
        }
        int32_t want = ref_argmax(x, n);
        memcpy(w, x, n * sizeof *w);
        CU_ASSERT_EQUAL_FATAL(td_sampler_sample(&s, w, NULL, 0), want);
    }
    td_sampler_free(&s);

    /* the max in every position of a vocabulary of 3 blocks and a partial
     * one, alone and tied with a later copy */
    float v[200], vw[200];
    p = params(0.0f, 0, 1.0f, 0.0f);
    TD_ASSERT_OK(td_sampler_init(&s, &p, 200, &err), &err);
    for (int32_t at = 0; at < 200; at++)
        for (int tie = 0; tie < 2; tie++) {
            for (int32_t i = 0; i < 200; i++)
                v[i] = (float)((i * 37) % 101) * 0.01f;
            v[at] = 5.0f;
            if (tie && at < 199) /* a later copy, maybe in another block */
                v[at + 1 + (at * 7) % (199 - at)] = 5.0f;
            memcpy(vw, v, sizeof vw);
            CU_ASSERT_EQUAL(td_sampler_sample(&s, vw, NULL, 0), ref_argmax(v, 200));
        }
    td_sampler_free(&s);

    /* ties go to the lowest id, whatever else is switched on; so does
     * top_k = 1 at any temperature */
    float t[8] = {1.0f, 3.0f, NAN, 3.0f, -INFINITY, 2.0f, 3.0f, 0.0f};
    const td_sampling modes[] = {params(0.0f, 0, 1.0f, 0.0f), params(0.0f, 3, 0.5f, 0.3f), params(1.0f, 1, 1.0f, 0.0f),
                                 params(5.0f, 1, 0.9f, 0.1f)};
    for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
        TD_ASSERT_OK(td_sampler_init(&s, &modes[m], 8, &err), &err);
        for (int k = 0; k < 20; k++) {
            float tw[8];
            memcpy(tw, t, sizeof tw);
            CU_ASSERT_EQUAL(td_sampler_sample(&s, tw, NULL, 0), 1);
        }
        td_sampler_free(&s);
    }

    /* nothing to sample: -1; +inf: the lowest +inf id */
    p = params(1.0f, 0, 1.0f, 0.0f);
    for (int g = 0; g < 2; g++) {
        p.temperature = g ? 0.0f : 1.0f;
        TD_ASSERT_OK(td_sampler_init(&s, &p, 4, &err), &err);
        float a[4] = {-INFINITY, NAN, -INFINITY, -INFINITY};
        CU_ASSERT_EQUAL(td_sampler_sample(&s, a, NULL, 0), -1);
        float b[4] = {1.0f, INFINITY, 2.0f, INFINITY};
        CU_ASSERT_EQUAL(td_sampler_sample(&s, b, NULL, 0), 1);
        td_sampler_free(&s);
    }
    free(x);
    free(w);
}

/* ---- masked logits */

static void test_masked_never_sampled(void) {
    td_error err;
    td_rng r = {5};
    const int32_t n = 1000;
    float x[1000], w[1000];
    for (int32_t i = 0; i < n; i++) {
        x[i] = td_rng_uniform(&r, -3.0f, 3.0f);
        if (i % 2 == 0)
            x[i] = -INFINITY;
        else if (i % 7 == 0)
            x[i] = NAN;
    }
    x[0] = NAN; /* not the max, not first finite */
    /* top_k 900 is more than there are finite logits */
    const td_sampling modes[] = {params(1.0f, 0, 1.0f, 0.0f),      params(50.0f, 0, 1.0f, 0.0f),
                                 params(50.0f, 900, 1.0f, 0.0f),   params(50.0f, 300, 1.0f, 0.0f),
                                 params(50.0f, 0, 0.999f, 0.0f),   params(50.0f, 0, 1.0f, 1e-4f),
                                 params(50.0f, 900, 0.999f, 1e-4f)};
    for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
        td_sampler s;
        TD_ASSERT_OK(td_sampler_init(&s, &modes[m], n, &err), &err);
        int bad = 0;
        for (int d = 0; d < 20000; d++) {
            int32_t t = sample_copy(&s, x, w);
            bad += t < 0 || t >= n || !isfinite(x[t]);
        }
        CU_ASSERT_EQUAL(bad, 0);
        td_sampler_free(&s);
    }
    /* one finite logit: always it */
    for (int32_t i = 0; i < n; i++)
        x[i] = i == 517 ? -100.0f : -INFINITY;
    td_sampling p = params(1.0f, 0, 1.0f, 0.0f);
    td_sampler s;
    TD_ASSERT_OK(td_sampler_init(&s, &p, n, &err), &err);
    for (int d = 0; d < 100; d++)
        CU_ASSERT_EQUAL(sample_copy(&s, x, w), 517);
    td_sampler_free(&s);
}

/* ---- distributions on a small vocabulary */

static void test_distribution_small(void) {
    /* ten logits with a spread-out, tie-containing distribution */
    const float a[10] = {2.0f, 1.0f, 0.0f, -1.0f, 1.5f, 0.5f, 0.5f, -2.0f, 3.0f, -0.5f};
    const int D = 200000;
    check_distribution("T=1", &(td_sampling){1.0f, 0, 1.0f, 0.0f, 1.0f, 64, 1}, a, 10, D);
    check_distribution("T=0.5", &(td_sampling){0.5f, 0, 1.0f, 0.0f, 1.0f, 64, 2}, a, 10, D);
    check_distribution("T=2.5", &(td_sampling){2.5f, 0, 1.0f, 0.0f, 1.0f, 64, 3}, a, 10, D);
    check_distribution("top_k=3", &(td_sampling){1.0f, 3, 1.0f, 0.0f, 1.0f, 64, 4}, a, 10, D);
    /* 0.5 and 0.5 (ids 5, 6) tie at places 5 and 6: top_k = 5 keeps id 5 */
    check_distribution("top_k=5 (tie at the cut)", &(td_sampling){1.3f, 5, 1.0f, 0.0f, 1.0f, 64, 5}, a, 10, D);
    check_distribution("top_p=0.8", &(td_sampling){1.0f, 0, 0.8f, 0.0f, 1.0f, 64, 6}, a, 10, D);
    check_distribution("min_p=0.1", &(td_sampling){1.0f, 0, 1.0f, 0.1f, 1.0f, 64, 7}, a, 10, D);
    check_distribution("top_k=5 top_p=0.9 min_p=0.05 T=0.8", &(td_sampling){0.8f, 5, 0.9f, 0.05f, 1.0f, 64, 8}, a, 10,
                       D);
    check_distribution("top_k=8 min_p=0.02 T=1.7", &(td_sampling){1.7f, 8, 1.0f, 0.02f, 1.0f, 64, 9}, a, 10, D);

    /* truncation happens at temperature 1, temperature after it: tempered
     * first, top_p = 0.85 would keep three tokens of b and min_p = 0.2 four
     * of c, so token 2 would appear */
    const float b[4] = {2.0f, 1.0f, 0.0f, -1.0f};
    check_distribution("top_p=0.85 before T=3", &(td_sampling){3.0f, 0, 0.85f, 0.0f, 1.0f, 64, 10}, b, 4, D);
    const float c[5] = {3.0f, 2.0f, 1.0f, 0.0f, -2.0f};
    check_distribution("min_p=0.2 before T=2", &(td_sampling){2.0f, 0, 1.0f, 0.2f, 1.0f, 64, 11}, c, 5, D);
    check_distribution("top_k=4 min_p=0.2 before T=2", &(td_sampling){2.0f, 4, 1.0f, 0.2f, 1.0f, 64, 15}, c, 5, D);
    check_distribution("top_p=0.99 min_p=0.2 before T=2", &(td_sampling){2.0f, 0, 0.99f, 0.2f, 1.0f, 64, 16}, c, 5, D);

    /* top-p's mass is measured over the top-k set: over the whole
     * vocabulary, p0 is 0.40 and top_p = 0.7 would keep both tokens; over the
     * top 2, p0 = 0.73 and it keeps only token 0 */
    float e[22];
    e[0] = 2.0f;
    e[1] = 1.0f;
    for (int i = 2; i < 22; i++)
        e[i] = -1.0f;
    check_distribution("top_k=2 then top_p=0.7", &(td_sampling){1.0f, 2, 0.7f, 0.0f, 1.0f, 64, 12}, e, 22, D);
    check_distribution("top_p=0.7 alone", &(td_sampling){1.0f, 0, 0.7f, 0.0f, 1.0f, 64, 13}, e, 22, D);

    /* the random numbers are uniform: equal logits give equal frequencies */
    float u[500];
    for (int i = 0; i < 500; i++)
        u[i] = 0.25f;
    check_distribution("uniform over 500", &(td_sampling){1.0f, 0, 1.0f, 0.0f, 1.0f, 64, 14}, u, 500, D);
}

/* top-p keeps the smallest prefix with mass >= p: the exact boundary */
static void test_top_p_boundary(void) {
    /* four equal logits: masses 0.25 each, exactly; with p = 0.5 the first
     * two reach it exactly, so ids 0 and 1 are kept, half each */
    const float eq[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int D = 100000;
    check_distribution("top_p=0.5 on four equal", &(td_sampling){1.0f, 0, 0.5f, 0.0f, 1.0f, 64, 21}, eq, 4, D);
    check_distribution("top_p=0.75 on four equal", &(td_sampling){1.0f, 0, 0.75f, 0.0f, 1.0f, 64, 22}, eq, 4, D);
    check_distribution("top_p=0.25 on four equal", &(td_sampling){1.0f, 0, 0.25f, 0.0f, 1.0f, 64, 23}, eq, 4, D);
    check_distribution("top_p=0.2500001 on four equal", &(td_sampling){1.0f, 0, 0.2500001f, 0.0f, 1.0f, 64, 24}, eq, 4,
                       D);
    check_distribution("top_p=0.5 on four equal, with top_k=3", &(td_sampling){1.0f, 3, 0.5f, 0.0f, 1.0f, 64, 25}, eq,
                       4, D);
    /* masses 0.644 0.237 0.087 0.032: just below / above a prefix sum */
    const float b[4] = {2.0f, 1.0f, 0.0f, -1.0f};
    double z = exp(2.0) + exp(1.0) + 1.0 + exp(-1.0), p01 = (exp(2.0) + exp(1.0)) / z, p0 = exp(2.0) / z;
    check_distribution("top_p just under p0+p1", &(td_sampling){1.0f, 0, (float)(p01 - 1e-4), 0.0f, 1.0f, 64, 26}, b, 4,
                       D);
    check_distribution("top_p just over p0+p1", &(td_sampling){1.0f, 0, (float)(p01 + 1e-4), 0.0f, 1.0f, 64, 27}, b, 4,
                       D);
    check_distribution("top_p just under p0", &(td_sampling){1.0f, 0, (float)(p0 - 1e-4), 0.0f, 1.0f, 64, 28}, b, 4, D);

    /* and on a large flat vocabulary: 0.25 of 8000 equal logits is ids
     * 0..1999, exactly */
    const int32_t n = 8000;
    float *x = malloc(n * sizeof *x), *w = malloc(n * sizeof *w);
    for (int32_t i = 0; i < n; i++)
        x[i] = 1.0f;
    td_error err;
    td_sampler s;
    td_sampling p = params(1.0f, 0, 0.25f, 0.0f);
    TD_ASSERT_OK(td_sampler_init(&s, &p, n, &err), &err);
    int32_t hi = 0;
    for (int d = 0; d < 2000; d++) {
        int32_t t = sample_copy(&s, x, w);
        CU_ASSERT_FATAL(t >= 0 && t < 2000);
        hi = t > hi ? t : hi;
    }
    CU_ASSERT(hi >= 1950);
    td_sampler_free(&s);
    free(x);
    free(w);
}

/* min-p is relative to the largest probability */
static void test_min_p(void) {
    /* relative probabilities e^(l - 3): 1, 0.368, 0.135, 0.0498, 0.0067 */
    const float c[5] = {3.0f, 2.0f, 1.0f, 0.0f, -2.0f};
    const int D = 100000;
    check_distribution("min_p=0.3", &(td_sampling){1.0f, 0, 1.0f, 0.3f, 1.0f, 64, 31}, c, 5, D);
    check_distribution("min_p=0.04", &(td_sampling){1.0f, 0, 1.0f, 0.04f, 1.0f, 64, 32}, c, 5, D);
    check_distribution("min_p=0.9", &(td_sampling){1.0f, 0, 1.0f, 0.9f, 1.0f, 64, 33}, c, 5, D);
    /* the same shape shifted by a constant: the same kept set */
    const float s[5] = {103.0f, 102.0f, 101.0f, 100.0f, 98.0f};
    check_distribution("min_p=0.04, shifted", &(td_sampling){1.0f, 0, 1.0f, 0.04f, 1.0f, 64, 34}, s, 5, D);
    /* min_p = 1 keeps the tied maxima */
    const float t[5] = {1.0f, 2.0f, 2.0f, 0.0f, 2.0f};
    check_distribution("min_p=1", &(td_sampling){1.0f, 0, 1.0f, 1.0f, 1.0f, 64, 35}, t, 5, D);
    check_distribution("top_k=3 min_p=1", &(td_sampling){1.0f, 3, 1.0f, 1.0f, 1.0f, 64, 36}, t, 5, D);
    check_distribution("top_p=0.9 min_p=1", &(td_sampling){1.0f, 0, 0.9f, 1.0f, 1.0f, 64, 37}, t, 5, D);
}

/* ---- a large vocabulary: the bucketed path */

static float *big_logits(int32_t n, uint64_t seed) {
    /* a long tail in [-10, 0] and 150 tokens in [8, 12], with ties and
     * values on bucket edges (multiples of 1/32 below the max) */
    td_rng r = {seed};
    float *x = malloc((size_t)n * sizeof *x);
    for (int32_t i = 0; i < n; i++)
        x[i] = td_rng_uniform(&r, -10.0f, 0.0f);
    for (int k = 0; k < 150; k++) {
        int32_t i = td_rng_int(&r, 0, n - 1);
        x[i] = k % 3 == 0 ? 12.0f - (float)td_rng_int(&r, 0, 128) / 32.0f : td_rng_uniform(&r, 8.0f, 12.0f);
    }
    x[n - 1] = 12.0f;
    x[td_rng_int(&r, 0, n - 2)] = -INFINITY;
    x[td_rng_int(&r, 0, n - 2)] = NAN;
    return x;
}

static void test_large_vocab(void) {
    const int32_t n = 49157; /* not a multiple of the sampler's blocks of 64 */
    float *x = big_logits(n, 99);
    check_kept_set("top_k=40", params(1.0f, 40, 1.0f, 0.0f), x, n);
    check_kept_set("top_k=100", params(1.0f, 100, 1.0f, 0.0f), x, n);
    check_kept_set("top_p=0.9", params(1.0f, 0, 0.9f, 0.0f), x, n);
    check_kept_set("top_p=0.3", params(1.0f, 0, 0.3f, 0.0f), x, n);
    check_kept_set("top_k=120 top_p=0.95", params(1.0f, 120, 0.95f, 0.0f), x, n);
    check_kept_set("min_p=0.01", params(1.0f, 0, 1.0f, 0.01f), x, n);
    check_kept_set("top_k=100 min_p=0.3", params(1.0f, 100, 1.0f, 0.3f), x, n);
    check_kept_set("top_p=0.99 min_p=0.2", params(1.0f, 0, 0.99f, 0.2f), x, n);
    check_distribution("T=1", &(td_sampling){1.0f, 0, 1.0f, 0.0f, 1.0f, 64, 43}, x, n, 20000);
    check_distribution("min_p=0.002 T=0.7", &(td_sampling){0.7f, 0, 1.0f, 0.002f, 1.0f, 64, 44}, x, n, 20000);
    check_distribution("top_k=50 T=0.9", &(td_sampling){0.9f, 50, 1.0f, 0.0f, 1.0f, 64, 41}, x, n, 20000);
    check_distribution("top_p=0.95 T=1.2", &(td_sampling){1.2f, 0, 0.95f, 0.0f, 1.0f, 64, 42}, x, n, 20000);
    free(x);

    /* a flat vocabulary (all in one bucket): top-k keeps the lowest ids
     * among equal logits */
    const int32_t nf = 4096;
    x = malloc(nf * sizeof *x);
    for (int32_t i = 0; i < nf; i++)
        x[i] = (float)(i % 3); /* 2 at ids 2, 5, 8, ...: 1365 of them */
    check_kept_set("top_k=1000 flat", params(1.0f, 1000, 1.0f, 0.0f), x, nf);
    /* more than there are of the top value: all of them, then 1s by id */
    check_kept_set("top_k=1500 flat", params(1.0f, 1500, 1.0f, 0.0f), x, nf);
    check_kept_set("top_p=0.5 flat", params(1.0f, 0, 0.5f, 0.0f), x, nf);
    /* ascending logits: every token beats the running top-k threshold */
    for (int32_t i = 0; i < nf; i++)
        x[i] = (float)i * 1e-3f;
    check_kept_set("top_k=50 ascending", params(1.0f, 50, 1.0f, 0.0f), x, nf);
    check_kept_set("top_k=300 ascending", params(1.0f, 300, 1.0f, 0.0f), x, nf);
    for (int32_t i = 0; i < nf; i++)
        x[i] = (float)(nf - i) * 1e-3f;
    check_kept_set("top_k=50 descending", params(1.0f, 50, 1.0f, 0.0f), x, nf);
    free(x);
}

/* Random vocabularies and settings: td_sampler_kept against the reference's
 * kept set, exactly. Logits come quantized (ties) or not, with -inf and NaN
 * among them; settings whose kept set changes when top_p or min_p moves by
 * 1e-4 are skipped, since float and double may round them either way. */
static int kept_mask(td_sampling p, float dp, float dmin, const float *x, int32_t n, double *prob, uint8_t *mask) {
    if (p.top_p < 1.0f)
        p.top_p = fminf(1.0f, p.top_p * (1.0f + dp));
    if (p.min_p > 0.0f)
        p.min_p = fminf(1.0f, p.min_p * (1.0f + dmin));
    ref_probs(&p, x, n, prob);
    int32_t c = 0;
    for (int32_t i = 0; i < n; i++)
        c += mask[i] = prob[i] > 0.0;
    return c;
}

static void test_kept_random(void) {
    td_rng r = {77};
    td_error err;
    int compared = 0;
    for (int trial = 0; trial < 4000; trial++) {
        int32_t n = trial % 10 == 0 ? td_rng_int(&r, 500, 5000) : td_rng_int(&r, 1, 300);
        float *x = malloc(n * sizeof *x), *w = malloc(n * sizeof *w);
        double *prob = malloc(n * sizeof *prob);
        uint8_t *m0 = malloc(n), *m1 = malloc(n), *m2 = malloc(n), *got = calloc(n, 1);
        int32_t *ids = malloc(n * sizeof *ids);
        const float ranges[] = {0.01f, 1.0f, 5.0f, 40.0f};
        float range = ranges[td_rng_int(&r, 0, 3)];
        int quant = td_rng_int(&r, 0, 2); /* 0: none, 1: 1/32 steps, 2: 1/2 steps */
        /* sometimes far from 0, where floats are 1/8 to 4 apart */
        const float offsets[] = {0.0f, 0.0f, 0.0f, 1e6f, -3e7f};
        float offset = offsets[td_rng_int(&r, 0, 4)];
        for (int32_t i = 0; i < n; i++) {
            float v = offset + td_rng_uniform(&r, -range, range);
            if (quant)
                v = roundf(v * (quant == 1 ? 32.0f : 2.0f)) / (quant == 1 ? 32.0f : 2.0f);
            int z = td_rng_int(&r, 0, 99);
            x[i] = z < 3 ? -INFINITY : z < 5 ? NAN : v;
        }
        td_sampling p = params(td_rng_uniform(&r, 0.3f, 3.0f), 0, 1.0f, 0.0f);
        if (td_rng_int(&r, 0, 1))
            p.top_k = td_rng_int(&r, 1, n + 3);
        if (td_rng_int(&r, 0, 1))
            p.top_p = td_rng_uniform(&r, 0.01f, 1.0f);
        if (td_rng_int(&r, 0, 2) == 0)
            p.min_p = td_rng_uniform(&r, 0.0f, 1.0f);
        if (td_rng_int(&r, 0, 19) == 0)
            p.temperature = 0.0f;
        td_sampler s;
        TD_ASSERT_OK(td_sampler_init(&s, &p, n, &err), &err);
        memcpy(w, x, n * sizeof *w);
        int32_t k = td_sampler_kept(&s, w, NULL, 0, ids);
        td_sampler_free(&s);
        for (int32_t i = 0; i < k; i++) {
            CU_ASSERT_FATAL(ids[i] >= 0 && ids[i] < n && !got[ids[i]]);
            got[ids[i]] = 1;
        }
        int32_t want;
        if (p.temperature == 0.0f || p.top_k == 1) {
            memset(m0, 0, n);
            int32_t a = ref_argmax(x, n);
            if (a >= 0)
                m0[a] = 1;
            want = a >= 0;
        } else {
            want = kept_mask(p, 0.0f, 0.0f, x, n, prob, m0);
            int32_t lo = kept_mask(p, -1e-4f, -1e-4f, x, n, prob, m1), hi = kept_mask(p, 1e-4f, 1e-4f, x, n, prob, m2);
            if (memcmp(m0, m1, n) || memcmp(m0, m2, n) || lo != want || hi != want)
                goto next; /* on a rounding edge */
        }
        compared++;
        if (k != want || memcmp(got, m0, n) != 0) {
            fprintf(stderr,
                    "\n  trial %d: n %d range %g offset %g quant %d T %g top_k %d top_p %.9g min_p %.9g: kept %d, "
                    "expected %d\n",
                    trial, n, (double)range, (double)offset, quant, (double)p.temperature, p.top_k, (double)p.top_p,
                    (double)p.min_p, k, want);
            CU_FAIL("kept set differs from the reference");
        }
    next:
        free(x);
        free(w);
        free(prob);
        free(m0);
        free(m1);
        free(m2);
        free(got);
        free(ids);
    }
    CU_ASSERT(compared > 3000);
}

/* ---- repetition penalty */

static void test_penalty(void) {
    td_error err;
    td_sampler s;
    const float x[8] = {2.0f, -1.0f, 0.5f, 0.0f, 3.0f, -0.25f, 1.5f, 4.0f};
    const int32_t hist[8] = {6, 7, 0, 1, 1, 3, 99, -5}; /* 99 and -5: out of range, ignored */
    td_sampling p = params(1.0f, 0, 1.0f, 0.0f);
    p.repetition_penalty = 2.0f;
    struct {
        int32_t last_n;
        float penalty;
        float want[8];
    } cases[] = {
        /* the last 4: {1, 3, 99, -5} */
        {4, 2.0f, {2.0f, -2.0f, 0.5f, 0.0f, 3.0f, -0.25f, 1.5f, 4.0f}},
        /* all: distinct {6, 7, 0, 1, 3}; 1 appears twice but is penalized once */
        {-1, 2.0f, {1.0f, -2.0f, 0.5f, 0.0f, 3.0f, -0.25f, 0.75f, 2.0f}},
        {100, 2.0f, {1.0f, -2.0f, 0.5f, 0.0f, 3.0f, -0.25f, 0.75f, 2.0f}},
        {0, 2.0f, {2.0f, -1.0f, 0.5f, 0.0f, 3.0f, -0.25f, 1.5f, 4.0f}},
        /* < 1 encourages repeats */
        {6, 0.5f, {4.0f, -0.5f, 0.5f, 0.0f, 3.0f, -0.25f, 1.5f, 4.0f}},
        {-1, 1.0f, {2.0f, -1.0f, 0.5f, 0.0f, 3.0f, -0.25f, 1.5f, 4.0f}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        p.penalty_last_n = cases[c].last_n;
        p.repetition_penalty = cases[c].penalty;
        TD_ASSERT_OK(td_sampler_init(&s, &p, 8, &err), &err);
        for (int rep = 0; rep < 2; rep++) { /* the second call sees a clean bitmap */
            float y[8];
            memcpy(y, x, sizeof y);
            td_sampler_apply_penalty(&s, y, hist, 8);
            for (int i = 0; i < 8; i++)
                if (y[i] != cases[c].want[i]) {
                    fprintf(stderr, "\n  case %zu: logit %d is %g, expected %g\n", c, i, (double)y[i],
                            (double)cases[c].want[i]);
                    CU_FAIL("penalized logit differs");
                }
        }
        td_sampler_free(&s);
    }

    /* sampling applies it first: greedy picks 1 once 0 is penalized */
    p = params(0.0f, 0, 1.0f, 0.0f);
    p.repetition_penalty = 1.1f;
    TD_ASSERT_OK(td_sampler_init(&s, &p, 3, &err), &err);
    const int32_t h0[1] = {0};
    for (int rep = 0; rep < 2; rep++) {
        float y[3] = {5.0f, 4.9f, -3.0f};
        CU_ASSERT_EQUAL(td_sampler_sample(&s, y, h0, 1), 1);
        float z[3] = {5.0f, 4.9f, -3.0f};
        CU_ASSERT_EQUAL(td_sampler_sample(&s, z, NULL, 0), 0);
    }
    td_sampler_free(&s);

    /* and in a distribution: penalized logits, then the reference */
    const float a[6] = {1.0f, 2.0f, -0.5f, 0.3f, 1.2f, 0.0f};
    const float ap[6] = {1.0f, 2.0f / 1.5f, -0.75f, 0.3f, 1.2f / 1.5f, 0.0f}; /* tokens 1, 2, 4 */
    const int32_t h[5] = {4, 2, 1, 4, 2};
    p = params(1.0f, 0, 1.0f, 0.0f);
    p.repetition_penalty = 1.5f;
    TD_ASSERT_OK(td_sampler_init(&s, &p, 6, &err), &err);
    double prob[6];
    ref_probs(&p, ap, 6, prob);
    int32_t count[6] = {0};
    const int D = 100000;
    for (int d = 0; d < D; d++) {
        float y[6];
        memcpy(y, a, sizeof y);
        count[td_sampler_sample(&s, y, h, 5)]++;
    }
    for (int i = 0; i < 6; i++) { /* within 6 sigma */
        double sd = sqrt(prob[i] * (1 - prob[i]) / D);
        CU_ASSERT(fabs((double)count[i] / D - prob[i]) < 6 * sd + 1e-9);
    }
    td_sampler_free(&s);
}

/* ---- reproducibility */

static void run_seq(td_sampler *s, const float *x, int32_t n, int32_t *out, int len) {
    float *w = malloc((size_t)n * sizeof *w);
    for (int i = 0; i < len; i++)
        out[i] = sample_copy(s, x, w);
    free(w);
}

static void test_reproducible(void) {
    td_error err;
    const int32_t n = 2000;
    const int L = 500;
    float *x = big_logits(n, 7);
    const td_sampling modes[] = {params(1.0f, 0, 1.0f, 0.0f), params(0.8f, 50, 0.95f, 0.0f),
                                 params(1.5f, 0, 0.9f, 0.02f)};
    for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
        td_sampling p = modes[m];
        int32_t a[500], b[500], c[500], ai[500], ci[500];
        td_sampler sa, sb, sc;
        p.seed = 1234;
        TD_ASSERT_OK(td_sampler_init(&sa, &p, n, &err), &err);
        TD_ASSERT_OK(td_sampler_init(&sb, &p, n, &err), &err);
        run_seq(&sa, x, n, a, L);
        run_seq(&sb, x, n, b, L);
        CU_ASSERT_EQUAL(memcmp(a, b, sizeof a), 0);
        td_sampler_free(&sa);
        td_sampler_free(&sb);

        p.seed = 1235;
        TD_ASSERT_OK(td_sampler_init(&sc, &p, n, &err), &err);
        run_seq(&sc, x, n, c, L);
        int differ = 0;
        for (int i = 0; i < L; i++)
            differ += a[i] != c[i];
        CU_ASSERT(differ > L / 10);
        td_sampler_free(&sc);

        /* interleaved, irregularly: each keeps its own sequence */
        p.seed = 1234;
        TD_ASSERT_OK(td_sampler_init(&sa, &p, n, &err), &err);
        p.seed = 1235;
        TD_ASSERT_OK(td_sampler_init(&sc, &p, n, &err), &err);
        float *w = malloc(n * sizeof *w);
        for (int step = 0, ia = 0, ic = 0; ia < L || ic < L; step++) {
            if (ia < L && step % 3 != 2)
                ai[ia++] = sample_copy(&sa, x, w);
            if (ic < L)
                ci[ic++] = sample_copy(&sc, x, w);
        }
        free(w);
        CU_ASSERT_EQUAL(memcmp(a, ai, sizeof a), 0);
        CU_ASSERT_EQUAL(memcmp(c, ci, sizeof c), 0);
        td_sampler_free(&sa);
        td_sampler_free(&sc);
    }
    free(x);
}

/* samplers on different threads give what they give alone */
static void test_threads(void) {
    td_error err;
    enum { NS = 8, LEN = 200 };
    const int32_t n = 4096;
    float *x = big_logits(n, 3);
    static int32_t serial[NS][LEN], parallel[NS][LEN];
    td_sampling p = params(1.0f, 40, 0.95f, 0.0f);
    for (int k = 0; k < NS; k++) {
        td_sampler s;
        p.seed = 100 + (uint64_t)k;
        TD_ASSERT_OK(td_sampler_init(&s, &p, n, &err), &err);
        run_seq(&s, x, n, serial[k], LEN);
        td_sampler_free(&s);
    }
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : failed)
    for (int k = 0; k < NS; k++) {
        td_sampler s;
        td_sampling q = p;
        q.seed = 100 + (uint64_t)k;
        if (td_sampler_init(&s, &q, n, NULL) != TANDEM_OK) {
            failed++;
            continue;
        }
        run_seq(&s, x, n, parallel[k], LEN);
        td_sampler_free(&s);
    }
    CU_ASSERT_EQUAL(failed, 0);
    CU_ASSERT_EQUAL(memcmp(serial, parallel, sizeof serial), 0);
    free(x);
}

/* ---- stop strings */

typedef struct stop_run {
    char text[4096];
    size_t len;
} stop_run;

static tandem_status feed(td_stop *s, stop_run *r, const char *t) {
    const char *out;
    size_t n;
    td_error err;
    tandem_status st = td_stop_feed(s, t, strlen(t), &out, &n, &err);
    CU_ASSERT_FATAL(r->len + n < sizeof r->text);
    memcpy(r->text + r->len, out, n);
    r->len += n;
    r->text[r->len] = '\0';
    return st;
}

static void flush(td_stop *s, stop_run *r) {
    const char *out;
    size_t n;
    td_stop_flush(s, &out, &n);
    memcpy(r->text + r->len, out, n);
    r->len += n;
    r->text[r->len] = '\0';
}

static void stop_init(td_stop *s, const char *const *strs, int32_t n) {
    size_t lens[8];
    td_error err;
    for (int32_t i = 0; i < n; i++)
        lens[i] = strlen(strs[i]);
    TD_ASSERT_OK(td_stop_init(s, strs, lens, n, &err), &err);
}

/* feeds the chunks; checks what is emitted after each and at the end */
static void expect_stream(const char *const *stops, int32_t n_stops, const char *const *chunks,
                          const char *const *emitted, const char *final, int32_t matched) {
    td_stop s;
    stop_run r = {{0}, 0};
    stop_init(&s, stops, n_stops);
    for (int i = 0; chunks[i]; i++) {
        CU_ASSERT_EQUAL(feed(&s, &r, chunks[i]), TANDEM_OK);
        if (strcmp(r.text, emitted[i]) != 0) {
            fprintf(stderr, "\n  after chunk %d \"%s\": emitted \"%s\", expected \"%s\"\n", i, chunks[i], r.text,
                    emitted[i]);
            CU_FAIL("emitted text differs");
        }
    }
    flush(&s, &r);
    if (strcmp(r.text, final) != 0) {
        fprintf(stderr, "\n  after flush: \"%s\", expected \"%s\"\n", r.text, final);
        CU_FAIL("final text differs");
    }
    CU_ASSERT_EQUAL(s.matched, matched);
    CU_ASSERT_EQUAL(td_stop_stopped(&s), matched >= 0);
    td_stop_free(&s);
}

#define STRS(...) ((const char *const[]){__VA_ARGS__})

static void test_stop_cases(void) {
    /* inside one chunk: cut before it, nothing after */
    expect_stream(STRS("STOP"), 1, STRS("hello STOP world", NULL), STRS("hello "), "hello ", 0);
    /* across chunks */
    expect_stream(STRS("STOP"), 1, STRS("hel", "lo ST", "OP more", "ignored", NULL),
                  STRS("hel", "hello ", "hello ", "hello "), "hello ", 0);
    expect_stream(STRS("STOP"), 1, STRS("S", "T", "O", "P", NULL), STRS("", "", "", ""), "", 0);
    /* a prefix that diverges is released */
    expect_stream(STRS("STOP"), 1, STRS("ab ST", "AR", " STO", "O", NULL),
                  STRS("ab ", "ab STAR", "ab STAR ", "ab STAR STOO"), "ab STAR STOO", -1);
    /* the held tail comes out at the flush */
    expect_stream(STRS("STOP"), 1, STRS("abc ST", NULL), STRS("abc "), "abc ST", -1);
    /* self-overlapping: "abab" in "abaabab" */
    expect_stream(STRS("abab"), 1, STRS("a", "b", "a", "a", "b", "a", "b", "x", NULL),
                  STRS("", "", "", "aba", "aba", "aba", "aba", "aba"), "aba", 0);
    expect_stream(STRS("abab"), 1, STRS("ababa", "bab", NULL), STRS("", ""), "", 0);
    expect_stream(STRS("aab"), 1, STRS("aaaa", "aab", NULL), STRS("aa", "aaaa"), "aaaa", 0);
    /* "abab" and "aba": "aba" completes first */
    expect_stream(STRS("abab", "aba"), 2, STRS("xab", "a", "b", NULL), STRS("x", "x", "x"), "x", 1);
    /* both complete in one feed at the same start: the first given wins */
    expect_stream(STRS("abab", "aba"), 2, STRS("xabab", NULL), STRS("x"), "x", 0);
    /* a longer one starting earlier beats a shorter one completing first */
    expect_stream(STRS("bc", "abcd"), 2, STRS("xabcd", NULL), STRS("x"), "x", 1);
    expect_stream(STRS("bc", "abcd"), 2, STRS("xabc", "d", NULL), STRS("xa", "xa"), "xa", 0);
    /* several stop strings, the earliest in the text wins */
    expect_stream(STRS("\n\n", "User:", "###"), 3, STRS("Sure. ", "Us", "ing ###", " then\nUser:", NULL),
                  STRS("Sure. ", "Sure. ", "Sure. Using ", "Sure. Using "), "Sure. Using ", 2);
    expect_stream(STRS("\n\n", "User:", "###"), 3, STRS("a\n", "\nUser: ###", NULL), STRS("a", "a"), "a", 0);
    /* empty feeds, no stop strings */
    expect_stream(STRS("STOP"), 1, STRS("", "ab", "", NULL), STRS("", "ab", "ab"), "ab", -1);
    expect_stream(NULL, 0, STRS("", "any STOP text", NULL), STRS("", "any STOP text"), "any STOP text", -1);
    expect_stream(STRS("STOP"), 1, STRS(NULL), STRS(NULL), "", -1);
    /* the stop string at the very start, and as the whole output */
    expect_stream(STRS("</s>"), 1, STRS("</s>tail", NULL), STRS(""), "", 0);
    /* bytes beyond ASCII, and a stop string split inside a character */
    expect_stream(STRS("\xe2\x80\x94"), 1, STRS("a\xe2", "\x80", "b", "\xe2\x80", "\x94z", NULL),
                  STRS("a", "a",
                       "a\xe2\x80"
                       "b",
                       "a\xe2\x80"
                       "b",
                       "a\xe2\x80"
                       "b"),
                  "a\xe2\x80"
                  "b",
                  0);

    /* after a flush the text starts afresh: no match across it */
    {
        td_stop f;
        stop_run fr = {{0}, 0};
        stop_init(&f, STRS("STOP"), 1);
        feed(&f, &fr, "abc ST");
        flush(&f, &fr);
        CU_ASSERT_STRING_EQUAL(fr.text, "abc ST");
        feed(&f, &fr, "OP");
        CU_ASSERT_STRING_EQUAL(fr.text, "abc STOP");
        CU_ASSERT_FALSE(td_stop_stopped(&f));
        feed(&f, &fr, "xSTOPy");
        CU_ASSERT_STRING_EQUAL(fr.text, "abc STOPx");
        CU_ASSERT(td_stop_stopped(&f));
        td_stop_free(&f);
    }

    /* reset and reuse; a long feed grows the buffer */
    td_stop s;
    stop_run r = {{0}, 0};
    stop_init(&s, STRS("END"), 1);
    feed(&s, &r, "xEN");
    td_stop_reset(&s);
    r.len = 0;
    char big[3001];
    memset(big, 'q', 3000);
    big[3000] = '\0';
    big[1000] = 'E';
    big[1001] = 'N';
    feed(&s, &r, "D"); /* the held "EN" was dropped by the reset */
    CU_ASSERT_FALSE(td_stop_stopped(&s));
    feed(&s, &r, big);
    CU_ASSERT_EQUAL(r.len, 3001);
    feed(&s, &r, "qqEN");
    feed(&s, &r, "D!");
    CU_ASSERT(td_stop_stopped(&s));
    CU_ASSERT_EQUAL(r.len, 3003);
    td_stop_free(&s);
    td_stop_free(&s);
}

static void test_stop_errors(void) {
    td_stop s;
    td_error err;
    const char *strs[2] = {"ok", ""};
    size_t lens[2] = {2, 0};
    CU_ASSERT_EQUAL(td_stop_init(&s, strs, lens, 2, &err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "stop string 1"));
    td_stop_free(&s);
    char *longs = malloc(TD_STOP_MAX_LEN + 1);
    memset(longs, 'x', TD_STOP_MAX_LEN + 1);
    strs[1] = longs;
    lens[1] = TD_STOP_MAX_LEN + 1;
    CU_ASSERT_EQUAL(td_stop_init(&s, strs, lens, 2, &err), TANDEM_ERR_LIMIT);
    td_stop_free(&s);
    lens[1] = TD_STOP_MAX_LEN;
    TD_ASSERT_OK(td_stop_init(&s, strs, lens, 2, &err), &err);
    td_stop_free(&s);
    free(longs);
    const char *many[TD_STOP_MAX_STRINGS + 1];
    size_t many_lens[TD_STOP_MAX_STRINGS + 1];
    for (int i = 0; i <= TD_STOP_MAX_STRINGS; i++)
        many[i] = "x", many_lens[i] = 1;
    CU_ASSERT_EQUAL(td_stop_init(&s, many, many_lens, TD_STOP_MAX_STRINGS + 1, &err), TANDEM_ERR_LIMIT);
    td_stop_free(&s);
    TD_ASSERT_OK(td_stop_init(&s, many, many_lens, TD_STOP_MAX_STRINGS, &err), &err);
    td_stop_free(&s);
}

/* random texts over a small alphabet, random stop strings, random chunks,
 * against a search of the whole text after every chunk */
static void test_stop_random(void) {
    td_rng r = {2024};
    for (int trial = 0; trial < 20000; trial++) {
        char stops[4][10];
        const char *sp[4];
        size_t sl[4];
        /* two letters and strings up to 10 long: self-overlapping stop
         * strings and partial matches that fall back */
        int ns = td_rng_int(&r, 0, 3), alpha = td_rng_int(&r, 0, 3) ? 2 : 3;
        for (int j = 0; j < ns; j++) {
            sl[j] = (size_t)td_rng_int(&r, 1, 10);
            for (size_t i = 0; i < sl[j]; i++)
                stops[j][i] = (char)('a' + td_rng_int(&r, 0, alpha - 1));
            sp[j] = stops[j];
        }
        char text[64];
        int n = td_rng_int(&r, 0, 60);
        for (int i = 0; i < n; i++)
            text[i] = (char)('a' + td_rng_int(&r, 0, alpha - 1));
        td_stop s;
        td_error err;
        TD_ASSERT_OK(td_stop_init(&s, sp, sl, ns, &err), &err);
        char got[64];
        size_t ng = 0;
        int pos = 0, stopped = 0;
        while (pos < n && !stopped) {
            int c = td_rng_int(&r, 0, 6);
            if (pos + c > n)
                c = n - pos;
            const char *out;
            size_t no;
            TD_ASSERT_OK(td_stop_feed(&s, text + pos, (size_t)c, &out, &no, &err), &err);
            memcpy(got + ng, out, no);
            ng += no;
            pos += c;
            /* the oracle: the earliest occurrence of any stop string in
             * text[0, pos), the lowest index at equal starts */
            int cut = -1, which = -1;
            for (int st = 0; st < pos && cut < 0; st++)
                for (int j = 0; j < ns; j++)
                    if (st + (int)sl[j] <= pos && memcmp(text + st, sp[j], sl[j]) == 0) {
                        cut = st;
                        which = j;
                        break;
                    }
            size_t want;
            if (cut >= 0) {
                stopped = 1;
                want = (size_t)cut;
                CU_ASSERT_EQUAL_FATAL(s.matched, which);
            } else {
                /* hold back the longest tail that begins a stop string */
                int hold = 0;
                for (int j = 0; j < ns; j++)
                    for (int h = (int)sl[j] - 1; h > hold; h--)
                        if (h <= pos && memcmp(text + pos - h, sp[j], (size_t)h) == 0) {
                            hold = h;
                            break;
                        }
                want = (size_t)(pos - hold);
                CU_ASSERT_FALSE_FATAL(td_stop_stopped(&s));
            }
            if (ng != want || memcmp(got, text, ng) != 0) {
                fprintf(stderr, "\n  trial %d: text \"%.*s\" after %d bytes: emitted %zu, expected %zu\n", trial, n,
                        text, pos, ng, want);
                CU_FAIL_FATAL("stop matcher differs from the oracle");
            }
        }
        if (!stopped) {
            const char *out;
            size_t no;
            td_stop_flush(&s, &out, &no);
            memcpy(got + ng, out, no);
            ng += no;
            CU_ASSERT_EQUAL_FATAL(ng, (size_t)n);
            CU_ASSERT_FATAL(memcmp(got, text, ng) == 0);
        }
        td_stop_free(&s);
    }
}

void td_test_register(void) {
    static const td_test tests[] = {
        {"parameters: defaults, each bad field named", test_params},
        {"greedy is the argmax; ties, NaN, -inf, +inf", test_greedy},
        {"-inf and NaN logits are never sampled", test_masked_never_sampled},
        {"distributions vs reference (T, top-k, top-p, min-p, order)", test_distribution_small},
        {"top-p: smallest prefix with mass >= p, boundaries", test_top_p_boundary},
        {"min-p relative to the max", test_min_p},
        {"large vocabulary: kept sets and distributions", test_large_vocab},
        {"kept sets of random vocabularies and settings vs reference", test_kept_random},
        {"repetition penalty: exact logits, window, dedup", test_penalty},
        {"seeds: reproducible, distinct, independent", test_reproducible},
        {"threads do not change a sampler's tokens", test_threads},
        {"stop strings: cases", test_stop_cases},
        {"stop strings: errors and limits", test_stop_errors},
        {"stop strings: random texts vs oracle", test_stop_random},
        {NULL, NULL},
    };
    td_add_suite("sampler", tests);
}
