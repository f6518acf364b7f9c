/* Continuous batching over the host forward pass (engine/scheduler.h). */
#include "engine/scheduler.h"

#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "offload/costmodel.h"

struct td_sched {
    td_forward *fw;
    td_kv_cache *kv;  /* the pool (with two, the device's) */
    td_kv_cache *hkv; /* mode hybrid: the host's pool; NULL with one */
    td_sched_config c;
    int32_t n_ctx, block_tokens;
    /* waiting requests: a ring, oldest at head; preempted ones go back in
     * front of it */
    td_gen_seq **queue;
    int32_t q_head, q_len, q_cap;
    /* running requests, in admission order (the newest last: the one to
     * preempt) */
    td_gen_seq **run;
    int32_t n_run;
    /* finished outside a step (cancelled while queued): reported by the next */
    td_gen_seq **done;
    int32_t n_done, done_cap;
    /* one step's batch */
    td_fwd_seq *batch;
    int32_t *chunk;           /* tokens of each running sequence in this step (0: none) */
    td_gen_seq **batch_moves; /* the requests one step moves back to the device */
    td_sched_stats stats;
};

tandem_status td_sched_create(td_forward *fw, td_kv_cache *kv, const td_sched_config *c, td_sched **out,
                              td_error *err) {
    *out = NULL;
    if (c->max_batch < 1 || c->step_tokens < 1 || c->step_tokens > td_forward_max_tokens(fw))
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                       "scheduler: max_batch %d must be >= 1 and step_tokens %d within [1, %d] (the forward's "
                       "max_tokens)",
                       c->max_batch, c->step_tokens, td_forward_max_tokens(fw));
    td_sched *s = calloc(1, sizeof *s);
    if (!s)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "scheduler: out of memory");
    s->fw = fw;
    s->kv = kv;
    s->hkv = c->host_kv;
    s->c = *c;
    s->n_ctx = td_forward_model(fw)->cfg.n_ctx;
    s->block_tokens = td_kv_get_layout(kv)->block_tokens;
    if (s->hkv && td_kv_get_layout(s->hkv)->block_tokens != s->block_tokens) {
        td_sched_destroy(s);
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "scheduler: the two pools have different block sizes");
    }
    s->run = malloc((size_t)c->max_batch * sizeof *s->run);
    s->batch = malloc((size_t)c->max_batch * sizeof *s->batch);
    s->chunk = malloc((size_t)c->max_batch * sizeof *s->chunk);
    s->batch_moves = malloc((size_t)c->max_batch * sizeof *s->batch_moves);
    if (!s->run || !s->batch || !s->chunk || !s->batch_moves) {
        td_sched_destroy(s);
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "scheduler: out of memory");
    }
    *out = s;
    return TANDEM_OK;
}

/* The pool a request's KV is in. */
static td_kv_cache *pool_of(const td_sched *s, const td_gen_seq *q) { return q->kv_on_host ? s->hkv : s->kv; }

static void release_kv(td_sched *s, td_gen_seq *q) {
    if (q->kv_seq >= 0)
        td_kv_seq_free(pool_of(s, q), q->kv_seq, NULL);
    q->kv_seq = -1;
    q->kv_on_host = false;
    q->n_cached = 0;
}

void td_sched_destroy(td_sched *s) {
    if (!s)
        return;
    for (int32_t i = 0; i < s->n_run; i++)
        release_kv(s, s->run[i]);
    free(s->queue);
    free(s->run);
    free(s->done);
    free(s->batch);
    free(s->chunk);
    free(s->batch_moves);
    free(s);
}

int32_t td_sched_queued(const td_sched *s) { return s->q_len; }
int32_t td_sched_running(const td_sched *s) { return s->n_run; }
const td_sched_stats *td_sched_get_stats(const td_sched *s) { return &s->stats; }

/* ---- the queue ---------------------------------------------------------- */

static bool queue_reserve(td_sched *s) {
    if (s->q_len < s->q_cap)
        return true;
    int32_t cap = s->q_cap ? 2 * s->q_cap : 64;
    td_gen_seq **q = malloc((size_t)cap * sizeof *q);
    if (!q)
        return false;
    for (int32_t i = 0; i < s->q_len; i++)
        q[i] = s->queue[(s->q_head + i) % s->q_cap];
    free(s->queue);
    s->queue = q;
    s->q_head = 0;
    s->q_cap = cap;
    return true;
}

static td_gen_seq *queue_at(const td_sched *s, int32_t i) { return s->queue[(s->q_head + i) % s->q_cap]; }

static td_gen_seq *queue_pop(td_sched *s) {
    td_gen_seq *q = s->queue[s->q_head];
    s->q_head = (s->q_head + 1) % s->q_cap;
    s->q_len--;
    return q;
}

tandem_status td_sched_submit(td_sched *s, td_gen_seq *seq, td_error *err) {
    if (seq->finish != TD_FINISH_NONE || seq->kv_seq >= 0)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "scheduler: the request is finished or already scheduled");
    if (!queue_reserve(s))
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "scheduler: out of memory for the queue");
    s->queue[(s->q_head + s->q_len) % s->q_cap] = seq;
    s->q_len++;
    return TANDEM_OK;
}

/* A preempted request waits in front of every other. */
static bool queue_push_front(td_sched *s, td_gen_seq *seq) {
    if (!queue_reserve(s))
        return false;
    s->q_head = (s->q_head + s->q_cap - 1) % s->q_cap;
    s->queue[s->q_head] = seq;
    s->q_len++;
    return true;
}

static void run_remove(td_sched *s, int32_t i) {
    memmove(&s->run[i], &s->run[i + 1], (size_t)(s->n_run - i - 1) * sizeof *s->run);
    s->n_run--;
}

static tandem_status done_push(td_sched *s, td_gen_seq *seq, td_error *err) {
    if (s->n_done == s->done_cap) {
        int32_t cap = s->done_cap ? 2 * s->done_cap : 16;
        td_gen_seq **d = realloc(s->done, (size_t)cap * sizeof *d);
        if (!d)
            return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "scheduler: out of memory");
        s->done = d;
        s->done_cap = cap;
    }
    s->done[s->n_done++] = seq;
    return TANDEM_OK;
}

tandem_status td_sched_cancel(td_sched *s, td_gen_seq *seq, td_error *err) {
    for (int32_t i = 0; i < s->n_run; i++)
        if (s->run[i] == seq) {
            tandem_status st = done_push(s, seq, err);
            if (st)
                return st;
            release_kv(s, seq);
            run_remove(s, i);
            return td_gen_seq_finish(seq, TD_FINISH_CANCELLED, err);
        }
    for (int32_t i = 0; i < s->q_len; i++)
        if (queue_at(s, i) == seq) {
            tandem_status st = done_push(s, seq, err);
            if (st)
                return st;
            for (int32_t j = i; j + 1 < s->q_len; j++)
                s->queue[(s->q_head + j) % s->q_cap] = s->queue[(s->q_head + j + 1) % s->q_cap];
            s->q_len--;
            return td_gen_seq_finish(seq, TD_FINISH_CANCELLED, err);
        }
    return td_fail(err, TANDEM_ERR_NOT_FOUND, "scheduler: the request is not queued or running");
}

void td_sched_forget(td_sched *s, td_gen_seq *seq) {
    for (int32_t i = 0; i < s->n_run; i++)
        if (s->run[i] == seq) {
            release_kv(s, seq);
            run_remove(s, i);
            return;
        }
    for (int32_t i = 0; i < s->q_len; i++)
        if (queue_at(s, i) == seq) {
            for (int32_t j = i; j + 1 < s->q_len; j++)
                s->queue[(s->q_head + j) % s->q_cap] = s->queue[(s->q_head + j + 1) % s->q_cap];
            s->q_len--;
            return;
        }
    for (int32_t i = 0; i < s->n_done; i++)
        if (s->done[i] == seq) {
            memmove(&s->done[i], &s->done[i + 1], (size_t)(s->n_done - i - 1) * sizeof *s->done);
            s->n_done--;
            return;
        }
}

/* ---- one step ------------------------------------------------------------ */

static int32_t blocks_for(const td_sched *s, int64_t tokens) {
    return (int32_t)((tokens + s->block_tokens - 1) / s->block_tokens);
}

/* Blocks a sequence of `len` cached tokens needs to take `more`. */
static int32_t extra_blocks(const td_sched *s, int32_t len, int32_t more) {
    return blocks_for(s, (int64_t)len + more) - blocks_for(s, len);
}

static void finish_cb(td_sched *s, td_gen_seq *q, const td_sched_callbacks *cb) {
    if (q->finish == TD_FINISH_ERROR)
        s->stats.failed++;
    else
        s->stats.finished++;
    if (cb && cb->on_finish)
        cb->on_finish(cb->user, q);
}

/* Blocks the running requests will still take to finish their prompts (and
 * hold their first generated token): promised at admission. */
static int32_t committed(const td_sched *s, bool host) {
    int32_t c = 0;
    for (int32_t i = 0; i < s->n_run; i++) {
        const td_gen_seq *q = s->run[i];
        if (q->kv_on_host != host)
            continue;
        int32_t more = blocks_for(s, (int64_t)q->n_ids + 1) - blocks_for(s, q->n_cached);
        c += more > 0 ? more : 0;
    }
    return c;
}

/* Admits queued requests, oldest first, while the batch has room and the
 * pool has free blocks, beyond those promised to the running ones, for the
 * whole of the newcomer's tokens. A request that can never run fails here. */
static void admit(td_sched *s, const td_sched_callbacks *cb) {
    int32_t pool = td_kv_n_blocks(s->kv);
    if (s->hkv && td_kv_n_blocks(s->hkv) > pool)
        pool = td_kv_n_blocks(s->hkv);
    while (s->q_len > 0 && s->n_run < s->c.max_batch) {
        td_gen_seq *q = queue_at(s, 0);
        td_error e;
        if (q->n_ids >= s->n_ctx) {
            queue_pop(s);
            td_fail(&e, TANDEM_ERR_LIMIT, "the prompt has %d tokens; the model's context is %d", q->n_ids, s->n_ctx);
            td_gen_seq_fail(q, &e);
            finish_cb(s, q, cb);
            continue;
        }
        int32_t need = blocks_for(s, (int64_t)q->n_ids + 1);
        if (need > pool) {
            queue_pop(s);
            td_fail(&e, TANDEM_ERR_KV_FULL, "the prompt has %d tokens; the KV cache holds %d", q->n_ids,
                    pool * s->block_tokens);
            td_gen_seq_fail(q, &e);
            finish_cb(s, q, cb);
            continue;
        }
        /* the first pool when the prompt fits there, else the host's */
        q->kv_on_host = false;
        if (need > td_kv_free_blocks(s->kv) - committed(s, false) && s->hkv &&
            need <= td_kv_free_blocks(s->hkv) - committed(s, true))
            q->kv_on_host = true;
        if (need > td_kv_free_blocks(pool_of(s, q)) - committed(s, q->kv_on_host) ||
            td_kv_seq_new(pool_of(s, q), &q->kv_seq, &e) != TANDEM_OK) {
            q->kv_seq = -1;
            q->kv_on_host = false;
            if (s->n_run > 0)
                break; /* wait for room, in order */
            /* nothing runs and it still does not start: it never will */
            queue_pop(s);
            td_fail(&e, TANDEM_ERR_KV_FULL, "the request cannot get KV space (%d tokens, %d of %d blocks free)",
                    q->n_ids, td_kv_free_blocks(s->kv) + (s->hkv ? td_kv_free_blocks(s->hkv) : 0), pool);
            td_gen_seq_fail(q, &e);
            finish_cb(s, q, cb);
            continue;
        }
        queue_pop(s);
        q->n_cached = 0;
        s->run[s->n_run++] = q;
    }
}

/* Frees running request i's blocks and puts it back in front of the
 * queue, to be recomputed. */
static bool preempt(td_sched *s, int32_t i) {
    td_gen_seq *q = s->run[i];
    if (!queue_push_front(s, q))
        return false;
    release_kv(s, q);
    run_remove(s, i);
    s->stats.preemptions++;
    return true;
}

static bool preempt_newest(td_sched *s) { return preempt(s, s->n_run - 1); }

/* ---- mode hybrid: moving sequences between the pools ---------------------- */

/* Blocks running request q holds and will take to finish its prompt and
 * hold the token after it: what a pool must have to take it. */
static int32_t footprint(const td_sched *s, const td_gen_seq *q) { return blocks_for(s, (int64_t)q->n_ids + 1); }

/* Moves the n running requests qs to the other pool (each to_device or
 * not), in one batch of copies: sequences in the destination pool are made
 * as long as the sources, the blocks copied (td_forward_move_kv), then the
 * sources freed. The caller checked the room. */
static tandem_status move(td_sched *s, td_gen_seq **qs, int32_t n, bool to_device, td_error *err) {
    td_kv_move *mv =
        calloc((size_t)(n > 0 ? n : 1), sizeof *mv); /* zeroed: -O3 cannot see that every read entry was set */
    if (!mv)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "scheduler: out of memory");
    td_kv_cache *dst = to_device ? s->kv : s->hkv;
    tandem_status st = TANDEM_OK;
    int32_t made = 0;
    for (; made < n; made++) {
        mv[made] = (td_kv_move){.src_seq = qs[made]->kv_seq, .to_device = to_device};
        if ((st = td_kv_seq_new(dst, &mv[made].dst_seq, err)))
            break;
        if (qs[made]->n_cached > 0 && (st = td_kv_seq_grow(dst, mv[made].dst_seq, qs[made]->n_cached, err))) {
            td_kv_seq_free(dst, mv[made].dst_seq, NULL);
            break;
        }
    }
    size_t bytes = 0;
    if (st == TANDEM_OK)
        st = td_forward_move_kv(s->fw, s->kv, s->hkv, mv, n, &bytes, err);
    for (int32_t i = 0; i < made; i++) {
        td_gen_seq *q = qs[i];
        if (st != TANDEM_OK) { /* as it was */
            td_kv_seq_free(dst, mv[i].dst_seq, NULL);
            continue;
        }
        td_kv_seq_free(pool_of(s, q), q->kv_seq, NULL);
        q->kv_seq = mv[i].dst_seq;
        q->kv_on_host = !to_device;
    }
    if (st == TANDEM_OK) {
        if (to_device)
            s->stats.moves_to_device += n;
        else
            s->stats.moves_to_host += n;
        s->stats.moved_bytes += (int64_t)bytes;
    }
    free(mv);
    return st;
}

/* Room back on the device: sequences in the host pool move back, oldest
 * first, while the device pool keeps what its own sequences were promised
 * and a block each for their next tokens (so that the next step does not
 * send one straight back). */
static tandem_status move_back(td_sched *s, td_error *err) {
    if (!s->hkv)
        return TANDEM_OK;
    int32_t room = td_kv_free_blocks(s->kv) - committed(s, false) - 1, n = 0;
    for (int32_t i = 0; i < s->n_run; i++)
        room -= !s->run[i]->kv_on_host;
    td_gen_seq **pick = s->batch_moves;
    for (int32_t i = 0; i < s->n_run && room > 0; i++) {
        td_gen_seq *q = s->run[i];
        if (!q->kv_on_host || footprint(s, q) > room)
            continue;
        room -= footprint(s, q) + 1;
        pick[n++] = q;
    }
    return n ? move(s, pick, n, true, err) : TANDEM_OK;
}

/* The most tokens/s the cost model predicts for a decode step of nd
 * device-pool sequences and k of the nh host-pool ones, over k (and one or
 * two sub-batches): the k that reaches it. */
static int32_t best_host_count(const td_sched *s, int32_t nd, int32_t nh, double ctx) {
    const td_cost_shape shape = td_cost_shape_of(&td_forward_model(s->fw)->cfg);
    int32_t best = nh;
    double best_rate = 0;
    /* at most ~64 candidates: the rate is smooth in k */
    const int32_t stride = nh > 64 ? (nh + 63) / 64 : 1;
    for (int32_t k = nh; k >= 0; k = k > stride || k == 0 ? k - stride : 0) {
        if (nd + k == 0)
            break;
        for (int32_t sub = 1; sub <= (k >= 2 ? 2 : 1); sub++) {
            td_cost_batch b = {.batch = nd + k,
                               .ctx = (int32_t)(ctx + 0.5),
                               .n_host = k,
                               .threads = td_forward_threads(s->fw),
                               .host_in_first = -1,
                               .n_sub = sub,
                               .calib = td_forward_calibration(s->fw)};
            const double rate = (nd + k) / td_cost_predict(s->c.profile, &shape, &b).step;
            if (rate > best_rate * (1 + 1e-9)) /* ties go to more sequences: k runs down */
                best_rate = rate, best = k;
        }
    }
    return best;
}

/* Mode hybrid with a profile: holds back the host-pool decodes, newest
 * first, that the cost model says would slow the step more than they add
 * (td_sched_config.profile). Returns how many. */
static int32_t hold_host_decodes(td_sched *s) {
    if (!s->hkv || !s->c.profile)
        return 0;
    int32_t nd = 0, nh = 0;
    double ctx = 0;
    for (int32_t i = 0; i < s->n_run; i++) {
        if (!s->chunk[i])
            continue;
        nh += s->run[i]->kv_on_host;
        nd += !s->run[i]->kv_on_host;
        ctx += s->run[i]->n_cached + 1;
    }
    if (nh == 0)
        return 0;
    int32_t keep = best_host_count(s, nd, nh, ctx / (nd + nh)), held = 0;
    for (int32_t i = s->n_run - 1; i >= 0 && nh > keep; i--)
        if (s->chunk[i] && s->run[i]->kv_on_host) {
            s->chunk[i] = 0;
            nh--;
            held++;
        }
    s->stats.host_waits += held;
    return held;
}

/* Decides each running sequence's tokens this step (s->chunk): one token
 * for each sequence past its prompt, then prompt chunks in admission order,
 * within step_tokens and the free blocks. Single tokens that do not fit
 * preempt the newest sequences; prompt chunks shrink or wait instead.
 *
 * A recomputed (preempted) sequence prefills its prompt again, then replays
 * its generated tokens one per step: each token goes down the path it took
 * the first time (prompt tokens the prefill kernel, generated ones the
 * decode kernel), so the cache and the logits come out bit for bit as
 * before and so do the tokens that follow. */
static tandem_status plan(td_sched *s, const td_sched_callbacks *cb, td_error *err) {
    for (;;) {
        int32_t budget = s->c.step_tokens, need[2] = {0, 0}; /* [pool]: 0 the first, 1 the host's */
        for (int32_t i = 0; i < s->n_run; i++) {
            td_gen_seq *q = s->run[i];
            s->chunk[i] = 0;
            if (q->n_cached >= q->n_prompt && q->n_cached < q->n_ids && budget > 0) {
                s->chunk[i] = 1;
                budget--;
            }
        }
        budget += hold_host_decodes(s);
        for (int32_t i = 0; i < s->n_run; i++)
            if (s->chunk[i])
                need[s->run[i]->kv_on_host] += extra_blocks(s, s->run[i]->n_cached, 1);
        int32_t free_blocks[2] = {td_kv_free_blocks(s->kv), s->hkv ? td_kv_free_blocks(s->hkv) : 0};
        const int short_pool = need[0] > free_blocks[0] ? 0 : need[1] > free_blocks[1] ? 1 : -1;
        if (short_pool >= 0) {
            /* the newest sequence of the pool that ran out makes room */
            int32_t victim = s->n_run - 1;
            while (victim > 0 && s->run[victim]->kv_on_host != (short_pool == 1))
                victim--;
            /* in the device pool of two, by moving to the host's when that
             * has room for it (its blocks there, its next token, and what
             * the host's own sequences were promised) */
            td_gen_seq *v = s->run[victim];
            if (short_pool == 0 && s->hkv && !v->kv_on_host &&
                footprint(s, v) <= free_blocks[1] - need[1] - committed(s, true)) {
                tandem_status st = move(s, &v, 1, false, err);
                if (st)
                    return st;
                continue;
            }
            if (s->n_run == 1 && !(s->hkv && !s->run[0]->kv_on_host)) {
                /* alone and still too long for the whole pool (a sequence
                 * of the first of two pools is preempted instead: it comes
                 * back in the host's) */
                td_gen_seq *q = s->run[0];
                td_error e;
                td_fail(&e, TANDEM_ERR_KV_FULL, "the sequence reached %d tokens; the KV cache holds no more",
                        q->n_cached);
                release_kv(s, q);
                s->n_run = 0;
                td_gen_seq_fail(q, &e);
                finish_cb(s, q, cb);
                return TANDEM_OK;
            }
            if (!preempt(s, victim))
                return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "scheduler: out of memory for the queue");
            continue;
        }
        int32_t avail[2] = {free_blocks[0] - need[0], free_blocks[1] - need[1]};
        for (int32_t i = 0; i < s->n_run && budget > 0; i++) {
            td_gen_seq *q = s->run[i];
            int32_t feed = q->n_prompt - q->n_cached;
            if (feed < 1)
                continue;
            int32_t c = feed < budget ? feed : budget;
            /* as many tokens as the blocks it holds plus those still free take */
            int32_t room = (blocks_for(s, q->n_cached) + avail[q->kv_on_host]) * s->block_tokens - q->n_cached;
            if (c > room)
                c = room;
            if (c < 1)
                continue;
            s->chunk[i] = c;
            budget -= c;
            avail[q->kv_on_host] -= extra_blocks(s, q->n_cached, c);
        }
        return TANDEM_OK;
    }
}

static void retire(td_sched *s, int32_t i, const td_sched_callbacks *cb) {
    td_gen_seq *q = s->run[i];
    release_kv(s, q);
    run_remove(s, i);
    finish_cb(s, q, cb);
}

tandem_status td_sched_step(td_sched *s, const td_sched_callbacks *cb, bool *busy, td_error *err) {
    double t0 = td_seconds();
    for (int32_t i = 0; i < s->n_done; i++)
        finish_cb(s, s->done[i], cb);
    s->n_done = 0;

    admit(s, cb);
    tandem_status st = move_back(s, err);
    if (st == TANDEM_OK)
        st = plan(s, cb, err);
    if (st)
        return st;
    int32_t nb = 0;
    for (int32_t i = 0; i < s->n_run; i++) {
        td_gen_seq *q = s->run[i];
        if (!s->chunk[i])
            continue;
        /* plan counted the blocks: this growth cannot fail */
        if ((st = td_kv_seq_grow(pool_of(s, q), q->kv_seq, s->chunk[i], err)))
            return st;
        s->batch[nb++] = (td_fwd_seq){.kv_seq = q->kv_seq,
                                      .on_host = q->kv_on_host,
                                      .pos = q->n_cached,
                                      .n_tokens = s->chunk[i],
                                      .tokens = q->ids + q->n_cached,
                                      .logits = q->n_cached + s->chunk[i] == q->n_ids ? TD_LOGITS_LAST : TD_LOGITS_NONE,
                                      .prompt = q->n_cached < q->n_prompt};
    }
    if (nb == 0 && s->n_run > 0) {
        /* Every running request is mid-prompt with no block left to grow
         * into: the newest gives its blocks back so the others can move. */
        if (!preempt_newest(s))
            return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "scheduler: out of memory for the queue");
    }
    if (nb == 0) {
        *busy = s->n_run > 0 || s->q_len > 0 || s->n_done > 0;
        s->stats.seconds += td_seconds() - t0;
        return TANDEM_OK;
    }
    int32_t used = td_kv_n_blocks(s->kv) - td_kv_free_blocks(s->kv) +
                   (s->hkv ? td_kv_n_blocks(s->hkv) - td_kv_free_blocks(s->hkv) : 0);
    if (used > s->stats.peak_kv_blocks)
        s->stats.peak_kv_blocks = used;
    if (nb > s->stats.max_running)
        s->stats.max_running = nb;

    float *logits;
    int32_t rows;
    double tf = td_seconds();
    st = s->hkv ? td_forward_step_hybrid(s->fw, s->kv, s->hkv, s->batch, nb, &logits, &rows, err)
                : td_forward_step(s->fw, s->kv, s->batch, nb, &logits, &rows, err);
    s->stats.forward_seconds += td_seconds() - tf;
    if (st)
        return st;
    s->stats.steps++;

    const int32_t n_vocab = td_forward_model(s->fw)->cfg.n_vocab;
    int32_t r = 0;
    for (int32_t i = 0; i < s->n_run;) {
        td_gen_seq *q = s->run[i];
        int32_t c = s->chunk[i];
        if (!c) {
            i++;
            continue;
        }
        /* a decode feeds the token sampled last; everything else is prompt
         * or the replay of a preempted request's tokens */
        bool decode = c == 1 && q->n_cached == q->n_ids - 1 && q->n_cached >= q->n_prompt;
        s->stats.prompt_tokens += decode ? 0 : c;
        q->n_cached += c;
        if (q->n_cached < q->n_ids) { /* a prompt chunk that is not the last */
            i++;
            continue;
        }
        size_t before = q->n_text;
        int32_t t;
        td_error e;
        if (td_gen_seq_next(q, logits + (int64_t)r++ * n_vocab, &t, &e) != TANDEM_OK)
            td_gen_seq_fail(q, &e);
        else {
            s->stats.generated_tokens++;
            if (q->finish == TD_FINISH_NONE && q->n_ids >= s->n_ctx &&
                td_gen_seq_finish(q, TD_FINISH_LENGTH, &e) != TANDEM_OK)
                td_gen_seq_fail(q, &e);
            if (cb && cb->on_token) /* no text yet (a token that prints nothing) is "" */
                cb->on_token(cb->user, q, t, q->text ? q->text + before : "", q->n_text - before);
        }
        if (q->finish != TD_FINISH_NONE) {
            memmove(&s->chunk[i], &s->chunk[i + 1], (size_t)(s->n_run - i - 1) * sizeof *s->chunk);
            retire(s, i, cb);
        } else
            i++;
    }
    *busy = s->n_run > 0 || s->q_len > 0 || s->n_done > 0;
    s->stats.seconds += td_seconds() - t0;
    return TANDEM_OK;
}

tandem_status td_sched_run(td_sched *s, const td_sched_callbacks *cb, td_error *err) {
    bool busy = true;
    while (busy) {
        tandem_status st = td_sched_step(s, cb, &busy, err);
        if (st)
            return st;
    }
    return TANDEM_OK;
}
