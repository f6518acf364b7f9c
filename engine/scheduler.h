/* Continuous batching over the host forward pass.
 *
 * Requests (td_gen_seq, engine/generate.h) wait in a FIFO queue. Each step:
 *
 *   1. admits queued requests, oldest first, while fewer than max_batch run
 *      and the KV pool has free blocks for the whole of the newcomer's
 *      prompt (so that an admitted prompt is not preempted at once);
 *   2. builds one batch: a decode token for every running sequence past its
 *      prompt, then prompt chunks (oldest first) up to step_tokens tokens,
 *      so a long prompt is prefilled over several steps while the decodes
 *      go on;
 *   3. grows each scheduled sequence's KV; when the pool is full, the newest
 *      running sequence is preempted: its blocks are freed and it goes back
 *      to the front of the queue, to be recomputed when room returns, as
 *      vLLM does: its prompt prefilled again, then the tokens it had
 *      generated (which it keeps) replayed one per step through the decode
 *      path, so that the recomputed cache is the same bits as the lost one;
 *   4. runs the forward step, samples, and retires finished sequences at
 *      once (their blocks freed before the next step).
 *
 * A request that can never run (a prompt at or past the model's context, or
 * needing more blocks than the whole pool) finishes with TD_FINISH_ERROR and
 * the others go on. Outputs do not depend on admission, chunking or
 * preemption: the GEMMs are batch-invariant (cpu/linear.h), prefill
 * attention of a query does not depend on its chunk, decode attention of a
 * sequence does not depend on its batch (cpu/attention.c cuts a long
 * sequence by its own length), and recomputation replays each token's
 * path.
 *
 * The scheduler holds pointers to the caller's td_gen_seq: they must stay
 * valid until finished. One thread drives a scheduler. */
#ifndef TD_ENGINE_SCHEDULER_H
#define TD_ENGINE_SCHEDULER_H

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "cpu/kv_cache.h"
#include "engine/forward.h"
#include "engine/generate.h"

typedef struct td_sched_config {
    int32_t max_batch;   /* running sequences at most; >= 1 */
    int32_t step_tokens; /* tokens per step (decodes + prompt chunks); 1..the forward's max_tokens */
    /* Mode hybrid: a second pool, in host memory (the first is the
     * device's). A request is admitted to the first pool when its prompt
     * fits there, else to this one. When the device pool runs out, its
     * newest sequence moves to the host pool (its blocks copied, nothing
     * recomputed) if that has room, and is preempted if not; when room
     * returns on the device, host-pool sequences move back, oldest first.
     * The host pool running out preempts its own newest sequence. The
     * forward pass must be TD_ATTN_HYBRID. NULL: one pool. */
    td_kv_cache *host_kv;
    /* Mode hybrid with a hardware profile (offload/profile.h; borrowed):
     * each step, host-pool decodes run only as many as the cost model
     * predicts add tokens per second (NEO's rule, per step: a sequence on a
     * weak CPU can slow the whole batch more than its token is worth); the
     * others, newest first, sit the step out and move to the device when
     * room returns there. NULL: every host-pool decode runs. */
    const td_profile *profile;
} td_sched_config;

/* Called for each sampled token (text: the bytes it added to seq->text, maybe
 * none) and once per finished request (any reason, errors included). */
typedef struct td_sched_callbacks {
    void (*on_token)(void *user, td_gen_seq *seq, int32_t token, const char *text, size_t len);
    void (*on_finish)(void *user, td_gen_seq *seq);
    void *user;
} td_sched_callbacks;

typedef struct td_sched_stats {
    int64_t steps;
    int64_t prompt_tokens;    /* prefilled, recomputation included */
    int64_t generated_tokens; /* sampled */
    int64_t preemptions;
    int64_t moves_to_host, moves_to_device; /* mode hybrid: sequences moved between pools */
    int64_t moved_bytes;
    int64_t host_waits; /* host-pool decodes the cost model held back, summed over steps */
    int64_t finished, failed;
    int32_t max_running;    /* most sequences in one step */
    int32_t peak_kv_blocks; /* most blocks in use after a step's growth */
    double forward_seconds; /* in td_forward_step */
    double seconds;         /* in td_sched_step */
} td_sched_stats;

typedef struct td_sched td_sched;

tandem_status td_sched_create(td_forward *fw, td_kv_cache *kv, const td_sched_config *c, td_sched **out, td_error *err);
/* Frees the scheduler; sequences still queued or running are left as they
 * are (their KV sequences freed). */
void td_sched_destroy(td_sched *s);

/* Queues a request (not finished, no KV sequence yet). */
tandem_status td_sched_submit(td_sched *s, td_gen_seq *seq, td_error *err);

/* Cancels a queued or running request: it finishes now with
 * TD_FINISH_CANCELLED (on_finish is called by the next step). */
tandem_status td_sched_cancel(td_sched *s, td_gen_seq *seq, td_error *err);

/* Drops a request from the scheduler wherever it is (queued, running, or
 * cancelled and not yet reported), with no callback: before its owner
 * frees it. */
void td_sched_forget(td_sched *s, td_gen_seq *seq);

/* One step. *busy is false when nothing is queued or running. An error of
 * the step itself (the forward failing) is returned; per-request errors
 * finish those requests. */
tandem_status td_sched_step(td_sched *s, const td_sched_callbacks *cb, bool *busy, td_error *err);

/* Steps until nothing is queued or running. */
tandem_status td_sched_run(td_sched *s, const td_sched_callbacks *cb, td_error *err);

int32_t td_sched_queued(const td_sched *s);
int32_t td_sched_running(const td_sched *s);
const td_sched_stats *td_sched_get_stats(const td_sched *s);

#endif /* TD_ENGINE_SCHEDULER_H */
