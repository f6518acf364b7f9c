/* A discrete-event simulator of one decode step as the engine runs it:
 * the device's compute stream, the two copy streams (D2H, H2D) and the
 * host thread with its CPU attention, each stage starting when its stream
 * is free and what it waits for is done, in the order pipeline/pipeline.c
 * enqueues them:
 *
 *   device : pre(0,0) pre(1,0) | post(0,0) pre(0,1) | post(1,0) pre(1,1) | ...
 *   D2H    :   down(b,l) after pre(b,l) (not after dattn(b,l), which follows pre on the device)
 *   CPU    :   attend(b,l) after down(b,l) (+ a hand-off), in (l, b) order
 *   H2D    :   up(b,l) after attend(b,l)
 *   device :   post(b,l) after up(b,l) (+ a hand-off) and the stream's previous op
 *
 * With no sub-batch (mode device) the layers' ops run back to back on the
 * device stream. Every layer takes the same stage times (a decode step's
 * layers are alike); the step adds `before` (embedding, metadata upload)
 * and `after` (final norm, LM head, logits download) on the device.
 *
 * The cost model (offload/costmodel.h) fills the stage times from a
 * hardware profile; the validation benchmark checks the result against
 * steps measured on the emulated device. */
#ifndef TD_OFFLOAD_SIMULATOR_H
#define TD_OFFLOAD_SIMULATOR_H

#include <stdint.h>

#define TD_SIM_MAX_SUB 2

typedef struct td_sim_step {
    int32_t n_layers;
    int32_t n_sub;    /* 0: mode device (dev_layer only); 1 or 2 pipelined sub-batches */
    double dev_layer; /* n_sub 0: one layer's device time */
    /* per layer and sub-batch, seconds */
    double pre[TD_SIM_MAX_SUB], down[TD_SIM_MAX_SUB], attend[TD_SIM_MAX_SUB], up[TD_SIM_MAX_SUB], post[TD_SIM_MAX_SUB];
    double dattn[TD_SIM_MAX_SUB]; /* device attention after pre, which down does not wait for */
    double before, after;         /* per step, on the device */
    double handoff; /* a device event reaching the waiting host thread, or a host enqueue the idle device */
} td_sim_step;

typedef struct td_sim_result {
    double step;                  /* wall time of the step */
    double device, d2h, h2d, cpu; /* busy time of each resource */
} td_sim_result;

td_sim_result td_sim_run(const td_sim_step *s);

#endif /* TD_OFFLOAD_SIMULATOR_H */
