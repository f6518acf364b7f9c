/* The pipeline coordinator: one step of a model whose linear layers run on
 * a device and whose attention runs on the CPU, as two sub-batches that
 * take turns, so that each sub-batch's CPU attention hides under the other
 * sub-batch's device work (FastDecode's split, NEO's asymmetric pipeline).
 *
 * Per layer l and sub-batch b the caller provides five stages:
 *
 *   pre(b, l)     device stream: the work before attention (norm, QKV, RoPE)
 *   down(b, l)    D2H copy stream: the rows the CPU needs (q, k, v) to host staging
 *   dattn(b, l)   device stream, optional: attention of the device's own sequences,
 *                 overlapping the CPU's attend(b, l)
 *   attend(b, l)  the calling thread (its OpenMP team): KV append + attention
 *   up(b, l)      H2D copy stream: the attention output back to the device
 *   post(b, l)    device stream: the work after attention (O projection, FFN)
 *
 * and td_pipe_run orders them with events so that nothing waits that need
 * not:
 *
 *   device : pre(0,0) pre(1,0) | post(0,0) pre(0,1) | post(1,0) pre(1,1) | post(0,1) ...
 *   D2H    :   down(0,0) down(1,0)         down(0,1)          down(1,1) ...
 *   H2D    :                         up(0,0)            up(1,0)           ...
 *   CPU    :        attend(0,0)  attend(1,0)   attend(0,1)   attend(1,1) ...
 *
 * While the CPU attends sub-batch 0 of layer l, the device runs sub-batch
 * 1's post of layer l-1 and pre of layer l. The CPU blocks only on the
 * event of the rows it needs next; the device stream waits (on the device,
 * not the host) for the output of the attention it consumes. A device
 * stream must not be told to wait for an event not yet recorded (CUDA then
 * does not wait at all), so post(b, l) is enqueued after up(b, l), which is
 * after attend(b, l): the host enqueues device work one sub-batch ahead,
 * which is exactly the work the device needs to stay busy. The two copy
 * directions have a stream each (a GPU has a copy engine each): an upload
 * never queues behind a download that waits for the device.
 *
 * Staging: one host buffer per sub-batch for each direction is enough: the
 * CPU writes sub-batch b's output of layer l+1 only after down(b, l+1),
 * which follows post(b, l), which waited for up(b, l) to finish reading it.
 *
 * The coordinator times every stage (device stages by events, CPU stages
 * by the clock), keeps busy times per resource, and can write a Chrome
 * trace-event file (opens in Perfetto or chrome://tracing): one track for
 * the device stream, each copy stream and the CPU, one slice per stage with
 * its layer and sub-batch, and a track per CPU thread with the slices the
 * attend stage reports (td_pipe_cpu_span).
 *
 * It knows nothing of the model: the stages are callbacks. */
#ifndef TD_PIPELINE_PIPELINE_H
#define TD_PIPELINE_PIPELINE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "base/error.h"
#include "gpu/device.h"

#define TD_PIPE_MAX_SUB 2

typedef struct td_pipe td_pipe;

typedef struct td_pipe_stages {
    tandem_status (*pre)(void *ctx, int32_t b, int32_t layer, td_stream *s, td_error *err);
    tandem_status (*down)(void *ctx, int32_t b, int32_t layer, td_stream *copy, td_error *err);
    tandem_status (*attend)(void *ctx, int32_t b, int32_t layer, td_error *err);
    tandem_status (*up)(void *ctx, int32_t b, int32_t layer, td_stream *copy, td_error *err);
    tandem_status (*post)(void *ctx, int32_t b, int32_t layer, td_stream *s, td_error *err);
    /* Optional (NULL: none): device work of sub-batch b that the CPU's
     * attend need not wait for, enqueued on the device stream right after
     * pre(b, l) and down(b, l) — the attention of sequences whose KV is on
     * the device, which then runs while the CPU attends the others. */
    tandem_status (*dattn)(void *ctx, int32_t b, int32_t layer, td_stream *s, td_error *err);
} td_pipe_stages;

/* Busy time of each resource over the steps run (seconds), and the steps'
 * wall time: overlap efficiency is the busiest resource's time / step. */
typedef struct td_pipe_stats {
    int64_t steps;
    double step, device, d2h, h2d, cpu;
} td_pipe_stats;

/* The pipeline owns a compute stream and two copy streams on d, and
 * events. */
tandem_status td_pipe_create(td_device *d, td_pipe **out, td_error *err);
void td_pipe_destroy(td_pipe *p);
td_stream *td_pipe_stream(td_pipe *p); /* the device's compute stream */
/* The copy streams (one per link direction), for copies outside a step
 * (moving KV between pools): h2d true for the upload stream. */
td_stream *td_pipe_copy_stream(td_pipe *p, bool h2d);

/* Runs n_layers layers of n_sub (1 or 2) sub-batches. Work the caller put
 * on the compute stream before the call (the embedding) comes first; the
 * caller adds what follows (the LM head) on the compute stream after it
 * and synchronizes. On failure the streams are drained before return. */
tandem_status td_pipe_run(td_pipe *p, int32_t n_sub, int32_t n_layers, const td_pipe_stages *st, void *ctx,
                          td_error *err);

/* The step's end: waits for the compute stream, adds the step to the stats
 * and writes its slices to the trace. Call once after each td_pipe_run. */
tandem_status td_pipe_finish(td_pipe *p, td_error *err);

const td_pipe_stats *td_pipe_get_stats(const td_pipe *p);

/* Writes every following step's stages to f (Chrome trace-event JSON; the
 * caller opened f and closes it after td_pipe_trace_end). */
void td_pipe_trace(td_pipe *p, FILE *f);
/* Closes the JSON array; no more slices are written. */
void td_pipe_trace_end(td_pipe *p);
/* Whether a trace is being written: then the attend stage may report what
 * each CPU thread did with td_pipe_cpu_span. */
bool td_pipe_tracing(const td_pipe *p);
/* A slice of CPU thread `thread`'s work inside attend(b, layer), from t0
 * to t1 (td_seconds()): the trace gets a track per CPU thread. name must
 * be a string literal (kept until the step's end). */
void td_pipe_cpu_span(td_pipe *p, int32_t b, int32_t layer, int thread, const char *name, double t0, double t1);

#endif /* TD_PIPELINE_PIPELINE_H */
