/* The initializers of the structs a caller fills (include/tandem.h).
 *
 * The sized ones write the library's defaults into the caller's first
 * `size` bytes at most, with struct_size = min(size, the library's sizeof):
 * a caller built against an older, smaller header (the header's macros pass
 * sizeof *(c)) is never written past its struct, and the library then reads
 * only the fields that caller has. The unsized ones are the 0.1.0 ABI, kept
 * for binaries linked against it: they write the 0.1.0 structs' sizes,
 * frozen (engine/api_util.h). The header turns calls to them into calls to
 * the sized ones; the names in parentheses below are the functions. */
#include <string.h>

#include "engine/api_util.h"
#include "engine/sampler.h"
#include "tandem.h"

/* The first min(size, n) bytes of the defaults d (of n bytes) into c, with
 * their struct_size. */
static void put(void *c, size_t size, void *d, size_t n) {
    if (!c)
        return;
    const size_t k = size < n ? size : n;
    memcpy(d, &k, sizeof k); /* struct_size comes first in each */
    memcpy(c, d, k);
}

void tandem_config_init_sized(tandem_config *c, size_t size) {
    tandem_config d;
    memset(&d, 0, sizeof d); /* every field's default is 0 / NULL */
    put(c, size, &d, sizeof d);
}

void tandem_sampling_init_sized(tandem_sampling *s, size_t size) {
    td_sampling t;
    td_sampling_default(&t);
    tandem_sampling d;
    memset(&d, 0, sizeof d);
    d.max_tokens = 256;
    d.temperature = t.temperature;
    d.top_k = t.top_k;
    d.top_p = t.top_p;
    d.min_p = t.min_p;
    d.repetition_penalty = t.repetition_penalty;
    d.penalty_last_n = t.penalty_last_n;
    d.seed = t.seed;
    put(s, size, &d, sizeof d);
}

void tandem_tune_config_init_sized(tandem_tune_config *c, size_t size) {
    tandem_tune_config d;
    memset(&d, 0, sizeof d);
    d.device = TANDEM_DEVICE_AUTO;
    put(c, size, &d, sizeof d);
}

void tandem_plan_query_init_sized(tandem_plan_query *q, size_t size) {
    tandem_plan_query d;
    memset(&d, 0, sizeof d);
    d.batch = 64;
    d.ctx = 2048;
    d.host_seqs = -1;
    put(q, size, &d, sizeof d);
}

void(tandem_config_init)(tandem_config *c) { tandem_config_init_sized(c, TD_API_CONFIG_SIZE_0_1); }
void(tandem_sampling_init)(tandem_sampling *s) { tandem_sampling_init_sized(s, TD_API_SAMPLING_SIZE_0_1); }
void(tandem_tune_config_init)(tandem_tune_config *c) { tandem_tune_config_init_sized(c, TD_API_TUNE_SIZE_0_1); }
void(tandem_plan_query_init)(tandem_plan_query *q) { tandem_plan_query_init_sized(q, TD_API_PLAN_QUERY_SIZE_0_1); }
