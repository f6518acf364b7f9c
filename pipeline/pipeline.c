/* The pipeline coordinator (pipeline/pipeline.h). */
#include "pipeline/pipeline.h"

#include <stdlib.h>
#include <string.h>

#include "base/clock.h"

/* The stages with a device side, and the events that time them. */
enum { PRE, DOWN, UP, POST, DATTN, N_DEV_STAGES };
static const char *const stage_name[] = {"pre", "down", "up", "post", "attn-dev", "attend"};

/* One stage instance: its events (start, end) or, for attend, its clock. */
typedef struct slot {
    td_event *ev[2];
    double t[2]; /* attend: td_seconds() at start and end */
} slot;

/* A CPU thread's slice inside an attend stage (td_pipe_cpu_span). */
typedef struct cpu_span {
    int32_t b, l;
    int thread;
    const char *name;
    double t0, t1;
} cpu_span;

/* Trace tracks: 1 device, 2 D2H, 3 H2D, 4 CPU (the attend stages), then
 * one per CPU thread. */
#define TRACK_THREAD0 10

struct td_pipe {
    td_device *d;
    td_stream *compute, *d2h, *h2d;
    td_event *base;
    double base_host; /* td_seconds() when base passed */
    /* [layer][sub][stage]: N_DEV_STAGES device stages + attend */
    slot *slots;
    int32_t cap_layers;
    int32_t n_sub, n_layers; /* of the step in flight */
    bool dattn;              /* whether it has device attention stages */
    td_pipe_stats stats;
    double step_start;
    FILE *trace;
    double trace_origin;
    bool trace_first;
    cpu_span *spans; /* the step's, while tracing */
    size_t n_spans, spans_cap;
    int threads_named; /* CPU thread tracks named in the trace so far */
};

static slot *at(td_pipe *p, int32_t l, int32_t b, int stage) {
    return &p->slots[((size_t)l * TD_PIPE_MAX_SUB + (size_t)b) * (N_DEV_STAGES + 1) + (size_t)stage];
}

static void free_slots(td_pipe *p) {
    for (int32_t l = 0; l < p->cap_layers; l++)
        for (int32_t b = 0; b < TD_PIPE_MAX_SUB; b++)
            for (int k = 0; k < N_DEV_STAGES; k++)
                for (int e = 0; e < 2; e++)
                    td_dev_event_destroy(p->d, at(p, l, b, k)->ev[e]);
    free(p->slots);
    p->slots = NULL;
    p->cap_layers = 0;
}

void td_pipe_destroy(td_pipe *p) {
    if (!p)
        return;
    if (p->compute)
        td_dev_stream_destroy(p->d, p->compute);
    if (p->d2h)
        td_dev_stream_destroy(p->d, p->d2h);
    if (p->h2d)
        td_dev_stream_destroy(p->d, p->h2d);
    free_slots(p);
    td_dev_event_destroy(p->d, p->base);
    free(p->spans);
    free(p);
}

tandem_status td_pipe_create(td_device *d, td_pipe **out, td_error *err) {
    *out = NULL;
    td_pipe *p = calloc(1, sizeof *p);
    if (!p)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "pipeline: out of memory");
    p->d = d;
    tandem_status st;
    if ((st = td_dev_stream_create(d, &p->compute, err)) || (st = td_dev_stream_create(d, &p->d2h, err)) ||
        (st = td_dev_stream_create(d, &p->h2d, err)) || (st = td_dev_event_create(d, &p->base, err))) {
        td_pipe_destroy(p);
        return st;
    }
    *out = p;
    return TANDEM_OK;
}

td_stream *td_pipe_stream(td_pipe *p) { return p->compute; }
td_stream *td_pipe_copy_stream(td_pipe *p, bool h2d) { return h2d ? p->h2d : p->d2h; }
const td_pipe_stats *td_pipe_get_stats(const td_pipe *p) { return &p->stats; }

/* Events for n_layers layers, made once and reused by every step. */
static tandem_status reserve(td_pipe *p, int32_t n_layers, td_error *err) {
    if (n_layers <= p->cap_layers)
        return TANDEM_OK;
    free_slots(p);
    p->slots = calloc((size_t)n_layers * TD_PIPE_MAX_SUB * (N_DEV_STAGES + 1), sizeof *p->slots);
    if (!p->slots)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "pipeline: out of memory for %d layers of events", n_layers);
    p->cap_layers = n_layers;
    for (int32_t l = 0; l < n_layers; l++)
        for (int32_t b = 0; b < TD_PIPE_MAX_SUB; b++)
            for (int k = 0; k < N_DEV_STAGES; k++)
                for (int e = 0; e < 2; e++) {
                    tandem_status st = td_dev_event_create(p->d, &at(p, l, b, k)->ev[e], err);
                    if (st)
                        return st;
                }
    return TANDEM_OK;
}

typedef tandem_status (*dev_stage)(void *ctx, int32_t b, int32_t layer, td_stream *s, td_error *err);

/* Enqueues one device stage on s between its two events. */
static tandem_status enqueue(td_pipe *p, td_stream *s, dev_stage fn, void *ctx, int32_t b, int32_t l, int stage,
                             td_error *err) {
    slot *x = at(p, l, b, stage);
    tandem_status st = td_dev_event_record(p->d, x->ev[0], s, err);
    if (st == TANDEM_OK)
        st = fn(ctx, b, l, s, err);
    if (st == TANDEM_OK)
        st = td_dev_event_record(p->d, x->ev[1], s, err);
    return st;
}

/* pre(b, l) on the device, then down(b, l) on the D2H stream once it ends. */
static tandem_status start_layer(td_pipe *p, const td_pipe_stages *st, void *ctx, int32_t b, int32_t l, td_error *err) {
    tandem_status s = enqueue(p, p->compute, st->pre, ctx, b, l, PRE, err);
    if (s == TANDEM_OK)
        s = td_dev_stream_wait(p->d, p->d2h, at(p, l, b, PRE)->ev[1], err);
    if (s == TANDEM_OK)
        s = enqueue(p, p->d2h, st->down, ctx, b, l, DOWN, err);
    /* the device's own attention follows pre on the compute stream, while
     * the rows that went down are attended on the CPU */
    if (s == TANDEM_OK && st->dattn)
        s = enqueue(p, p->compute, st->dattn, ctx, b, l, DATTN, err);
    return s;
}

static void drain(td_pipe *p) {
    td_dev_stream_sync(p->d, p->compute, NULL);
    td_dev_stream_sync(p->d, p->d2h, NULL);
    td_dev_stream_sync(p->d, p->h2d, NULL);
}

tandem_status td_pipe_run(td_pipe *p, int32_t n_sub, int32_t n_layers, const td_pipe_stages *st, void *ctx,
                          td_error *err) {
    if (n_sub < 1 || n_sub > TD_PIPE_MAX_SUB || n_layers < 1)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "pipeline: %d sub-batches, %d layers", n_sub, n_layers);
    tandem_status s = reserve(p, n_layers, err);
    if (s)
        return s;
    p->n_sub = n_sub;
    p->n_layers = n_layers;
    p->n_spans = 0;
    p->dattn = st->dattn != NULL;
    p->step_start = td_seconds();
    /* The time origin of the step's device events. Waiting for it costs
     * nothing: the device has only the caller's first ops to run, and the
     * CPU has nothing to do before the first rows come down anyway. */
    if ((s = td_dev_event_record(p->d, p->base, p->compute, err)) || (s = td_dev_event_sync(p->d, p->base, err)))
        goto fail;
    p->base_host = td_seconds();
    for (int32_t b = 0; b < n_sub; b++)
        if ((s = start_layer(p, st, ctx, b, 0, err)))
            goto fail;
    for (int32_t l = 0; l < n_layers; l++)
        for (int32_t b = 0; b < n_sub; b++) {
            slot *a = at(p, l, b, N_DEV_STAGES);
            /* the host waits here, and only here: for the rows it attends next */
            if ((s = td_dev_event_sync(p->d, at(p, l, b, DOWN)->ev[1], err)))
                goto fail;
            a->t[0] = td_seconds();
            s = st->attend(ctx, b, l, err);
            a->t[1] = td_seconds();
            if (s || (s = enqueue(p, p->h2d, st->up, ctx, b, l, UP, err)) ||
                (s = td_dev_stream_wait(p->d, p->compute, at(p, l, b, UP)->ev[1], err)) ||
                (s = enqueue(p, p->compute, st->post, ctx, b, l, POST, err)))
                goto fail;
            if (l + 1 < n_layers && (s = start_layer(p, st, ctx, b, l + 1, err)))
                goto fail;
        }
    return TANDEM_OK;
fail:
    drain(p);
    p->n_layers = 0;
    return s;
}

/* Seconds from the step's base to event e. */
static double since_base(td_pipe *p, td_event *e) {
    float ms = 0;
    if (td_dev_event_elapsed(p->d, p->base, e, &ms, NULL))
        return 0;
    return ms * 1e-3;
}

static void trace_slice(td_pipe *p, int tid, const char *name, int32_t l, int32_t b, double t0, double t1) {
    fprintf(p->trace,
            "%s\n{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":1,\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f,"
            "\"args\":{\"layer\":%d,\"sub_batch\":%d,\"step\":%lld}}",
            p->trace_first ? "" : ",", name, tid >= 4 ? "cpu" : "device", tid, (t0 - p->trace_origin) * 1e6,
            (t1 - t0) * 1e6, l, b, (long long)p->stats.steps);
    p->trace_first = false;
}

static void trace_track(td_pipe *p, int tid, const char *name) {
    fprintf(p->trace, "%s\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":%d,\"args\":{\"name\":\"%s\"}}",
            p->trace_first ? "" : ",", tid, name);
    p->trace_first = false;
}

bool td_pipe_tracing(const td_pipe *p) { return p->trace != NULL; }

void td_pipe_cpu_span(td_pipe *p, int32_t b, int32_t layer, int thread, const char *name, double t0, double t1) {
    if (!p->trace || thread < 0)
        return;
    if (p->n_spans == p->spans_cap) {
        size_t cap = p->spans_cap ? 2 * p->spans_cap : 256;
        cpu_span *s = realloc(p->spans, cap * sizeof *s);
        if (!s)
            return; /* the trace loses a slice, the step goes on */
        p->spans = s;
        p->spans_cap = cap;
    }
    p->spans[p->n_spans++] = (cpu_span){.b = b, .l = layer, .thread = thread, .name = name, .t0 = t0, .t1 = t1};
}

tandem_status td_pipe_finish(td_pipe *p, td_error *err) {
    tandem_status s = td_dev_stream_sync(p->d, p->compute, err);
    td_error e2;
    if (td_dev_stream_sync(p->d, p->d2h, &e2) && s == TANDEM_OK)
        s = td_fail(err, e2.status, "%s", e2.msg);
    if (td_dev_stream_sync(p->d, p->h2d, &e2) && s == TANDEM_OK)
        s = td_fail(err, e2.status, "%s", e2.msg);
    if (s != TANDEM_OK || p->n_layers == 0)
        return s;
    double busy[N_DEV_STAGES + 1] = {0};
    for (int32_t l = 0; l < p->n_layers; l++)
        for (int32_t b = 0; b < p->n_sub; b++)
            for (int k = 0; k <= N_DEV_STAGES; k++) {
                if (k == DATTN && !p->dattn)
                    continue;
                slot *x = at(p, l, b, k);
                double t0, t1;
                if (k == N_DEV_STAGES) {
                    t0 = x->t[0], t1 = x->t[1];
                } else {
                    t0 = p->base_host + since_base(p, x->ev[0]);
                    t1 = p->base_host + since_base(p, x->ev[1]);
                }
                busy[k] += t1 - t0;
                if (p->trace)
                    trace_slice(p,
                                k == PRE || k == POST || k == DATTN ? 1
                                : k == DOWN                         ? 2
                                : k == UP                           ? 3
                                                                    : 4,
                                stage_name[k], l, b, t0, t1);
            }
    for (size_t i = 0; p->trace && i < p->n_spans; i++) {
        const cpu_span *c = &p->spans[i];
        for (; p->threads_named <= c->thread; p->threads_named++) {
            char name[32];
            snprintf(name, sizeof name, "CPU thread %d", p->threads_named);
            trace_track(p, TRACK_THREAD0 + p->threads_named, name);
        }
        trace_slice(p, TRACK_THREAD0 + c->thread, c->name, c->l, c->b, c->t0, c->t1);
    }

    p->stats.steps++;
    p->stats.step += td_seconds() - p->step_start;
    p->stats.device += busy[PRE] + busy[DATTN] + busy[POST];
    p->stats.d2h += busy[DOWN];
    p->stats.h2d += busy[UP];
    p->stats.cpu += busy[N_DEV_STAGES];
    p->n_layers = 0;
    return TANDEM_OK;
}

void td_pipe_trace(td_pipe *p, FILE *f) {
    p->trace = f;
    p->trace_origin = td_seconds();
    p->trace_first = true;
    if (!f)
        return;
    fprintf(f, "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[");
    static const char *const tracks[] = {"device stream", "copy D2H", "copy H2D", "CPU attention"};
    for (int t = 0; t < 4; t++)
        trace_track(p, t + 1, tracks[t]);
    p->threads_named = 0;
}

void td_pipe_trace_end(td_pipe *p) {
    if (p->trace)
        fprintf(p->trace, "\n]}\n");
    p->trace = NULL;
}
