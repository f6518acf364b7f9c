/* Monotonic wall clock. */
#ifndef TD_BASE_CLOCK_H
#define TD_BASE_CLOCK_H

#include <time.h>

static inline double td_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif /* TD_BASE_CLOCK_H */
