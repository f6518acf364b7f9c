/* The forward pass on a device (mode `device`): weights, activations and the
 * KV cache in device memory, every op on one device stream, the host only
 * uploading a step's ids and tables and reading back its logits.
 *
 * The same layer as engine/forward.c, op for op, with the device's
 * versions of the host kernels (gpu/device.h):
 *
 *   x = embed(ids)
 *   per layer:  h = rmsnorm(x);  qkv = h Wqkv;  rope(q, k);  kv_append(k, v)
 *               h = attention(q, cache);  x += h Wo
 *               per 256 rows: h = rmsnorm(x);  gu = h Wgu;  h = swiglu(gu);  x += h Wdown
 *   logits = rmsnorm(x[rows]) Whead
 *
 * so on the emulated device (which runs the host kernels on weights in the
 * host's layout) it gives the host path's bits, and on a GPU its own
 * rounding of the same function. The rows asked for are gathered with the
 * embedding kernel (a row gather over x). The token embedding goes to the
 * device dequantized to fp32: the values the host looks up.
 *
 * With attention on the CPU (mode cpu-attn) the layer is cut around
 * attention: the device runs norm, QKV and RoPE ("pre"), the rows go down
 * to the host, the CPU appends K and V to the host cache and attends with
 * the host's kernels ("attend"), the output goes up and the device runs
 * the O projection and the FFN ("post"), for two sub-batches in turn
 * (pipeline/pipeline.h). Every op is the host path's, so on the emulated
 * device the tokens are the CPU-only path's.
 *
 * Prompts whose KV goes to the host attend on the device all the same
 * when their chunk starts at position 0 (the whole prompt, or its first
 * chunk): their K and V go to a scratch device cache for the step's causal
 * attention and down with the rest of their rows, and the CPU only writes
 * them into the host cache; later chunks, whose earlier K/V are on the
 * host, attend on the CPU. Prefill is the step where the CPU's attention
 * would cost most (quadratic in the chunk) and the device's least.
 *
 * Hybrid placement: each sequence attends where its KV lives. The step
 * orders its sequences device-placed first; those all go to sub-batch 0,
 * whose pre stage also appends their K/V to the device cache and runs
 * their attention on the device, straight into the attention output; the
 * host-placed ones are split over both sub-batches by CPU work, and only
 * their rows cross the link. Logits rows come back in the caller's order.
 *
 * Internal to engine/forward.c, which owns the batch checks and the API. */
#ifndef TD_ENGINE_FORWARD_DEVICE_H
#define TD_ENGINE_FORWARD_DEVICE_H

#include "cpu/attention.h"
#include "engine/forward.h"
#include "gpu/device.h"
#include "offload/profile.h"
#include "pipeline/pipeline.h"

typedef struct td_fwd_dev td_fwd_dev;

/* attn TD_ATTN_ON_CPU: the KV cache is the host's and attention runs on
 * the CPU (n_threads), the batch split in two sub-batches that the
 * pipeline (pipeline/pipeline.h) overlaps with the device's work. */
tandem_status td_fwd_dev_create(const td_model *m, td_device *dev, td_attn_place attn, int32_t max_tokens,
                                int n_threads, td_fwd_dev **out, td_error *err);
void td_fwd_dev_destroy(td_fwd_dev *f);

/* One step over a batch forward.c has checked: T tokens, R logits rows,
 * written to logits (host, [R][n_vocab]). dkv: the cache in device memory
 * (mode device, hybrid), hkv: the host's (cpu-attn, hybrid); a hybrid step
 * with one of them puts every sequence there. */
tandem_status td_fwd_dev_step(td_fwd_dev *f, const td_kv_cache *dkv, td_kv_cache *hkv, const td_fwd_seq *seqs,
                              int32_t n_seqs, int32_t T, int32_t R, float *logits, td_error *err);

/* Elements of a GEMM-input row: the widest of n_embd, q_dim and n_ff
 * (engine/forward.c's; both paths size their workspace with it). */
size_t td_fwd_h_width(const td_llama_config *c);

/* The CPU half of a layer's attention over n sequences whose rows sit in
 * qkv (rows q_dim + 2 kv_dim apart; sequence i's first token at row
 * first[i], increasing): K and V into kv, then the decode kernel for
 * single tokens and the prefill kernel for prompt chunks, outputs at the
 * same rows of out (q_dim apart, out_dtype). The host path runs it for
 * the whole batch and the pipeline's attend stage for a sub-batch's
 * host-placed sequences: one function, the same bits. ents and runs:
 * scratch of n entries each. */
tandem_status td_fwd_attend_host(td_attn *a, td_kv_cache *kv, const td_llama_config *c, int32_t layer,
                                 const td_fwd_seq *seqs, int32_t n, const int32_t *first, const float *qkv, void *out,
                                 td_dtype out_dtype, td_attn_seq *ents, td_attn_run *runs, td_error *err);

/* The first half of td_fwd_attend_host alone: K and V of n sequences'
 * rows into kv (for prompts whose attention ran on the device). */
void td_fwd_write_host_kv(td_kv_cache *kv, const td_llama_config *c, int32_t layer, const td_fwd_seq *seqs, int32_t n,
                          const int32_t *first, const float *qkv);
/* Host memory for the logits the device writes back (pinned), and its release. */
tandem_status td_fwd_dev_host_alloc(td_fwd_dev *f, size_t bytes, void **p, td_error *err);
void td_fwd_dev_host_free(td_fwd_dev *f, void *p);

/* The pipeline of TD_ATTN_ON_CPU and TD_ATTN_HYBRID (NULL otherwise). */
td_pipe *td_fwd_dev_pipe(td_fwd_dev *f);
td_attn_place td_fwd_dev_place(const td_fwd_dev *f);

/* The profile the pipelined steps plan with (engine/forward.h,
 * td_forward_set_profile), and their forced sub-batch count (0: planned). */
void td_fwd_dev_set_profile(td_fwd_dev *f, const td_profile *p);
void td_fwd_dev_set_sub_batches(td_fwd_dev *f, int32_t n);

/* What the pipelined steps have calibrated (engine/forward.h). */
const td_cost_calib *td_fwd_dev_calibration(const td_fwd_dev *f);

/* Copies the blocks of moves (engine/forward.h, td_forward_move_kv) over
 * the pipeline's copy streams and waits for them. */
tandem_status td_fwd_dev_move_kv(td_fwd_dev *f, td_kv_cache *dkv, td_kv_cache *hkv, const td_kv_move *moves, int32_t n,
                                 size_t *bytes, td_error *err);

#endif /* TD_ENGINE_FORWARD_DEVICE_H */
