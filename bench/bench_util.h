/* Small helpers the benchmarks share: argument lists and the CPU's name. */
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

#endif /* TD_BENCH_UTIL_H */
