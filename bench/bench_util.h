/* Small helpers the benchmarks share: argument lists and sizes. */
#ifndef TD_BENCH_UTIL_H
#define TD_BENCH_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "1,16,64" -> out[] (at most 16 values in [1, 2^24]); 0 on a bad list. */
static inline int td_bench_parse_ints(const char *s, int *out, int *n) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    *n = 0;
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        char *end;
        long v = strtol(tok, &end, 10);
        if (*end || v < 1 || v > (1 << 24) || *n == 16)
            return 0;
        out[(*n)++] = (int)v;
    }
    return *n > 0;
}

/* "4G", "512M", "1048576" -> bytes (K, M, G: powers of 1024); 0 on a bad size. */
static inline int td_bench_parse_size(const char *s, size_t *out) {
    char *end;
    double v = strtod(s, &end);
    double mul = 1;
    if (*end == 'K' || *end == 'k')
        mul = 1024.0, end++;
    else if (*end == 'M' || *end == 'm')
        mul = 1024.0 * 1024, end++;
    else if (*end == 'G' || *end == 'g')
        mul = 1024.0 * 1024 * 1024, end++;
    if (*end || !(v > 0))
        return 0;
    *out = (size_t)(v * mul);
    return 1;
}

#endif /* TD_BENCH_UTIL_H */
