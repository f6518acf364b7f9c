/* Shared by the CUnit suites: registration, a seeded RNG, comparisons. */
#ifndef TD_TESTS_TEST_UTIL_H
#define TD_TESTS_TEST_UTIL_H

#include <CUnit/CUnit.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/error.h"

typedef struct td_test {
    const char *name;
    CU_TestFunc fn;
} td_test;

/* Each test program defines this: it adds its suites with td_add_suite. */
void td_test_register(void);

/* Adds a suite of tests (the array ends with {NULL, NULL}). */
void td_add_suite(const char *name, const td_test *tests);
/* The same with CUnit's suite set-up and tear-down (either may be NULL). */
void td_add_suite_with(const char *name, CU_InitializeFunc init, CU_CleanupFunc cleanup, const td_test *tests);

/* Exit code that CTest reads as "skipped" (SKIP_RETURN_CODE). */
#define TD_TEST_SKIP 77

/* xoshiro-style generator; deterministic per seed so failures reproduce. */
typedef struct td_rng {
    uint64_t s;
} td_rng;

static inline uint64_t td_rng_next(td_rng *r) { /* splitmix64 */
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
/* uniform in [lo, hi) */
static inline float td_rng_uniform(td_rng *r, float lo, float hi) {
    return lo + (hi - lo) * (float)((td_rng_next(r) >> 40) * 0x1p-24);
}
/* uniform integer in [lo, hi] */
static inline int32_t td_rng_int(td_rng *r, int32_t lo, int32_t hi) {
    return lo + (int32_t)(td_rng_next(r) % (uint64_t)(hi - lo + 1));
}

/* Asserts a status, printing the error message (errp: a td_error *) when it
 * differs. */
#define TD_ASSERT_STATUS(expected, call, errp)                                                                         \
    do {                                                                                                               \
        tandem_status st_ = (call);                                                                                    \
        if (st_ != (expected))                                                                                         \
            fprintf(stderr, "\n  %s:%d: %s returned %s (%s), expected %s\n", __FILE__, __LINE__, #call,                \
                    tandem_status_name(st_), (errp)->msg, tandem_status_name(expected));                               \
        CU_ASSERT_EQUAL_FATAL(st_, (expected));                                                                        \
    } while (0)

#define TD_ASSERT_OK(call, errp) TD_ASSERT_STATUS(TANDEM_OK, call, errp)

/* The whole file at path, NUL-terminated (malloc'ed; *n, if not NULL, gets
 * its length); NULL when it cannot be read. */
static inline char *td_test_read_file(const char *path, size_t *n) {
    if (n)
        *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *b = NULL;
    long sz = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (sz >= 0 && fseek(f, 0, SEEK_SET) == 0 && (b = malloc((size_t)sz + 1)) &&
        fread(b, 1, (size_t)sz, f) != (size_t)sz) {
        free(b);
        b = NULL;
    }
    if (b) {
        b[sz] = '\0';
        if (n)
            *n = (size_t)sz;
    }
    fclose(f);
    return b;
}

#endif /* TD_TESTS_TEST_UTIL_H */
