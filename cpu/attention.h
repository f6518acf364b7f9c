/* Decode attention on the CPU over the paged host KV cache.
 *
 * One call attends a batch of sequences, one query token each, for one layer:
 *
 *   out[h] = softmax(scale * q[h] . K[g(h)]^T) V[g(h)],  g(h) = h / (n_q_heads / n_kv_heads)
 *
 * over the sequence's first n_tokens cached tokens. The kernel is built to run
 * at the speed of memory: each KV block is read once for all query heads of
 * its group, softmax is online (no buffer that grows with the context), and
 * long sequences are cut into chunks that run on different threads and are
 * merged with log-sum-exp. Work items (sequence x kv head x chunk) are sized
 * and split across the OpenMP team by their cost, so one long sequence among
 * short ones does not leave threads idle.
 *
 * Paths: scalar (the reference), AVX2+F16C, AVX-512, AVX-512 with vdpbf16ps
 * (bf16 caches; the query and the softmax weights are rounded to bf16 for the
 * dot products, as GPU flash-attention kernels do). Chosen once per td_attn
 * from CPUID or TANDEM_ISA (cpu/isa.h).
 *
 * A td_attn owns its workspace: reuse one per thread that issues calls; a
 * single td_attn must not be used from two threads at once. */
#ifndef TD_CPU_ATTENTION_H
#define TD_CPU_ATTENTION_H

#include <stdbool.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/error.h"
#include "cpu/isa.h"
#include "cpu/kv_cache.h"

/* Query heads per kv head that one call supports. */
#define TD_ATTN_MAX_GROUP 64

typedef struct td_attn td_attn;

typedef struct td_attn_seq {
    const float *q;        /* [n_q_heads][head_dim] */
    const int32_t *blocks; /* block table: ceil(n_tokens / block_tokens) ids */
    int32_t n_tokens;      /* attend over tokens [0, n_tokens); >= 1 */
    void *out;             /* [n_q_heads][head_dim] of the batch's out_dtype */
} td_attn_seq;

typedef struct td_attn_batch {
    const td_kv_cache *kv;
    int32_t layer;
    int32_t n_q_heads;  /* a multiple of the cache's n_kv_heads */
    float scale;        /* usually 1 / sqrt(head_dim) */
    td_dtype out_dtype; /* TD_DTYPE_F32 or TD_DTYPE_BF16 */
    const td_attn_seq *seqs;
    int32_t n_seqs;
} td_attn_batch;

/* n_threads: the OpenMP team size for each call (0: omp_get_max_threads()).
 * isa: the path to use; pass td_isa_select()'s answer for the default.
 * TANDEM_ERR_UNSUPPORTED if this CPU cannot run isa. */
tandem_status td_attn_create(int n_threads, td_isa isa, td_attn **out, td_error *err);
void td_attn_destroy(td_attn *a);
td_isa td_attn_isa(const td_attn *a);
int td_attn_threads(const td_attn *a);

tandem_status td_attn_decode(td_attn *a, const td_attn_batch *b, td_error *err);

/* Per-thread timing, for traces. With it on, a call records when each
 * thread of its team started and ended its share (td_seconds()). Off by
 * default: it costs two clock reads per thread and call. */
typedef enum td_attn_span_kind { TD_ATTN_SPAN_DECODE, TD_ATTN_SPAN_PREFILL, TD_ATTN_SPAN_KINDS } td_attn_span_kind;
void td_attn_time_threads(td_attn *a, bool on);
/* Forgets the spans recorded so far. */
void td_attn_clear_spans(td_attn *a);
/* The spans of the last call of a kind since td_attn_clear_spans:
 * [td_attn_threads()][2] (start, end) seconds, both 0 for a thread that
 * had no share or when no such call ran. */
const double *td_attn_spans(const td_attn *a, td_attn_span_kind kind);

/* Prefill: runs of consecutive query tokens of one sequence each (a prompt,
 * or a chunk of one whose earlier tokens are already cached). Query j of a
 * run sits at position pos + j and attends over the cached tokens
 * [0, pos + j]: the causal mask. The cache must hold the run's K and V
 * already (written before the call, as for decode). Same result as a decode
 * call with one entry of n_tokens = pos + j + 1 per query; on the AVX-512
 * paths a dedicated kernel reads each K/V sub-tile once per tile of up to 16
 * queries instead of once per query (cpu/attention_prefill_avx512.c), the
 * other paths make those decode calls. */
typedef struct td_attn_run {
    const float *q;        /* query j's heads, [n_q_heads][head_dim], at q + j * q_stride */
    int64_t q_stride;      /* floats from one query to the next */
    const int32_t *blocks; /* block table covering pos + n tokens */
    int32_t pos;           /* >= 0 */
    int32_t n;             /* queries, >= 1 */
    void *out;             /* query j's output, [n_q_heads][head_dim], at out + j * out_stride elements */
    int64_t out_stride;
} td_attn_run;

typedef struct td_attn_prefill_batch {
    const td_kv_cache *kv;
    int32_t layer;
    int32_t n_q_heads;
    float scale;
    td_dtype out_dtype;
    const td_attn_run *runs;
    int32_t n_runs;
} td_attn_prefill_batch;

tandem_status td_attn_prefill(td_attn *a, const td_attn_prefill_batch *b, td_error *err);

#endif /* TD_CPU_ATTENTION_H */
