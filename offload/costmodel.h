/* The cost model: predicted time of a decode step for a placement of its
 * sequences, from a hardware profile (offload/profile.h) and the model's
 * shapes, through the step simulator (offload/simulator.h); and the search
 * for the placement with the most tokens per second.
 *
 * Each stage's time is the sum of its ops as the engine issues them
 * (engine/forward_device.c): per op a launch, GEMMs from the profile's
 * measured table, row kernels and device attention at the profile's
 * bandwidths, copies at the link's bandwidth plus its latency, CPU
 * attention at the profile's KV read rate for the team and the context,
 * plus a call's fixed cost. A plan is judged by NEO's rules: a sub-batch's
 * CPU attention and copies should hide under the other's device work (the
 * simulator says how far they do), and a pipelined plan is kept only when
 * it beats mode device in tokens per second; within a plan the host
 * sequences are split over the two sub-batches by CPU work (FastDecode's
 * balance, which is what the engine does). */
#ifndef TD_OFFLOAD_COSTMODEL_H
#define TD_OFFLOAD_COSTMODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "offload/profile.h"
#include "offload/simulator.h"

/* What the cost model needs of a Llama-shaped model. */
typedef struct td_cost_shape {
    int32_t n_layers, n_embd, n_heads, n_kv_heads, head_dim, n_ff, n_vocab;
} td_cost_shape;

/* Bytes of KV one token takes in every layer (bf16 K and V). */
double td_cost_kv_bytes_per_token(const td_cost_shape *m);
/* Bytes of device memory the weights and a step's workspace of max_tokens
 * rows take (engine/forward_device.c's buffers, logits for every row). */
double td_cost_device_fixed_bytes(const td_cost_shape *m, int32_t max_tokens);

/* Online calibration: factors the engine learns from its own steps
 * (td_cost_calib_update), each multiplying the predicted stage times of
 * one resource. {1, 1, 1}: the profile as measured. The CPU's is the one
 * that moves: the attention kernel reads slower inside a pipeline, where
 * the device's threads and the hand-offs share the cores, than alone in
 * `tandem tune`. */
typedef struct td_cost_calib {
    double device, link, cpu;
    double handoff; /* the profile's hand-off latency: the one figure no resource's busy time shows */
    int64_t steps;  /* folded in so far */
} td_cost_calib;

#define TD_COST_CALIB_NONE ((td_cost_calib){1, 1, 1, 1, 0})

/* Folds a measured step into c: for each resource busy at least min_s in
 * both the prediction (made without c) and the measurement, the factor
 * moves toward measured / predicted by weight w (the first step sets it).
 * The hand-off factor moves toward what explains the rest of the step:
 * the factor at which the step simulated with the calibrated busy times
 * is as long as the measured one (found by bisection in [0, 16]), when
 * the profile's hand-offs predict at least min_s of the step. */
void td_cost_calib_update(td_cost_calib *c, const td_sim_result *predicted, const td_sim_result *measured, double w,
                          double min_s);

/* A uniform decode batch: B sequences of ctx cached tokens, n_host of
 * them with KV on the host, attending on the CPU with `threads` threads. */
typedef struct td_cost_batch {
    int32_t batch, ctx, n_host;
    int32_t threads;
    /* host sequences in sub-batch 0 (the rest in 1); -1: the engine's
     * balance (half the CPU work each, device sequences all in 0) */
    int32_t host_in_first;
    int32_t n_sub;              /* 1 or 2 when n_host > 0 (0: the engine's choice, 2 when n_host >= 2) */
    const td_cost_calib *calib; /* NULL: none */
} td_cost_batch;

/* The same for a step of b on p, predicting it itself (the engine's
 * online calibration); measured: the pipeline's busy times and step. */
void td_cost_calibrate(td_cost_calib *c, const td_profile *p, const td_cost_shape *m, const td_cost_batch *b,
                       const td_sim_result *measured, double w, double min_s);

/* The simulator's input for one step of b, every op costed. */
void td_cost_step(const td_profile *p, const td_cost_shape *m, const td_cost_batch *b, td_sim_step *out);
/* Predicted step: td_sim_run of td_cost_step. */
td_sim_result td_cost_predict(const td_profile *p, const td_cost_shape *m, const td_cost_batch *b);

/* The best of every mode for B sequences of ctx tokens under the memory
 * limits: device memory for weights, workspace and KV (gpu_mem), host
 * memory for KV (host_kv). */
typedef struct td_cost_plan {
    int32_t device_batch; /* mode device: the sequences the device's KV room holds (<= B) */
    double device_tok_s;
    double cpu_attn_tok_s; /* 0 when B does not fit the host */
    int32_t hybrid_host, hybrid_sub;
    double hybrid_tok_s;
    int chosen; /* 0 device, 1 cpu-attn, 2 hybrid; -1: the weights do not fit the device */
    double chosen_tok_s;
    td_sim_result chosen_sim;
} td_cost_plan;

typedef struct td_cost_limits {
    double gpu_mem, host_kv; /* bytes */
    int32_t threads;
    int32_t host_seqs;          /* -1: search the hybrid split; else evaluate this one */
    const td_cost_calib *calib; /* NULL: none */
} td_cost_limits;

void td_cost_plan_search(const td_profile *p, const td_cost_shape *m, int32_t batch, int32_t ctx,
                         const td_cost_limits *lim, td_cost_plan *out);

#endif /* TD_OFFLOAD_COSTMODEL_H */
