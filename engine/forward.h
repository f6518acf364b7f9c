/* The batched forward pass of a Llama model on the host.
 *
 * One call runs one step for a batch of sequences, each contributing a run
 * of consecutive tokens: a prompt (or a chunk of one) to prefill, or the one
 * token of a decode. All the batch's tokens go through each linear layer as
 * one GEMM ([tokens] x [weights]), so a step of 64 decodes or of 16 prompts
 * reads every weight once. Attention is per sequence, over the paged host
 * KV cache: each token's K and V are written to the cache first, then every
 * token attends over its sequence's cache up to and including itself (the
 * causal mask of a prefill is that length), with the decode kernel of
 * cpu/attention.h, so prefill and decode see the same cached K/V values.
 *
 *   x = embed(tokens)
 *   per layer:  h = rmsnorm(x);  q, k, v = h Wqkv;  rope(q, k);  cache k, v
 *               x += attention(q, cache) Wo
 *               h = rmsnorm(x);  x += (silu(h Wg) * (h Wu)) Wdown
 *   logits = rmsnorm(x) Whead   (only for the rows asked for)
 *
 * With bf16 weights the GEMM inputs (normed activations, attention output,
 * SwiGLU output) are rounded to bf16; the residual stream, the GEMM
 * outputs and all accumulation stay fp32. With fp32 weights nothing is
 * rounded but the KV cache entries (the cache's dtype).
 *
 * A td_forward holds the step's workspace (sized for max_tokens tokens), an
 * attention context and a GEMM context: one per thread that runs steps. */
#ifndef TD_ENGINE_FORWARD_H
#define TD_ENGINE_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "cpu/kv_cache.h"
#include "engine/model.h"
#include "gpu/device.h"
#include "offload/costmodel.h"
#include "offload/profile.h"
#include "pipeline/pipeline.h"

typedef enum td_logits_mode {
    TD_LOGITS_NONE = 0, /* a prefill chunk that is not the prompt's last */
    TD_LOGITS_LAST = 1, /* the next-token distribution after the last token */
    TD_LOGITS_ALL = 2,  /* one row per token (scoring, tests) */
} td_logits_mode;

typedef struct td_fwd_seq {
    int32_t kv_seq;        /* the sequence's id in the KV cache */
    int32_t pos;           /* position of tokens[0]: the tokens already cached */
    int32_t n_tokens;      /* >= 1; the cache must already hold pos + n_tokens (td_kv_seq_grow) */
    const int32_t *tokens; /* [n_tokens] */
    td_logits_mode logits;
    /* Attention kernel: a single token goes through the decode kernel unless
     * it is part of a prompt (prompt set), whose tokens always take the
     * prefill kernel. The two agree to rounding, not bit for bit: a caller
     * that recomputes a sequence (preemption) must send each token down the
     * path it took the first time to get the same results. */
    bool prompt;
    /* With attention placed TD_ATTN_HYBRID: the sequence's KV is in the host
     * cache and it attends on the CPU (else in the device cache, on the
     * device). Ignored by the other placements. */
    bool on_host;
} td_fwd_seq;

/* Seconds spent in each part of the steps run so far. */
typedef struct td_fwd_stats {
    double linear;    /* GEMMs, LM head included */
    double attention; /* KV writes and attention */
    double other;     /* embedding, norms, RoPE, SwiGLU */
    double device;    /* steps on a device, whole (its ops are asynchronous) */
    int64_t steps, tokens;
} td_fwd_stats;

typedef struct td_forward td_forward;

/* max_tokens: the most tokens one step may carry (sum of n_tokens).
 * n_threads: the OpenMP team of each step (0: omp_get_max_threads()). */
tandem_status td_forward_create(const td_model *m, int32_t max_tokens, int n_threads, td_forward **out, td_error *err);
void td_forward_destroy(td_forward *f);

/* Where attention runs when the linear layers are on a device. */
typedef enum td_attn_place {
    TD_ATTN_ON_DEVICE = 0, /* mode device: the KV cache in device memory */
    TD_ATTN_ON_CPU = 1,    /* mode cpu-attn: the KV cache in host memory, attention on the CPU */
    TD_ATTN_HYBRID = 2,    /* mode hybrid: each sequence where its KV is (td_fwd_seq.on_host) */
} td_attn_place;

/* The same steps with the linear layers on a device
 * (engine/forward_device.h): the model's linear layers, norms and
 * embedding are uploaded to dev (the host model may have been loaded with
 * skip_linears). td_forward_step's kv must be a cache whose pool is dev's
 * memory (td_kv_config.pool) for TD_ATTN_ON_DEVICE, a host cache for
 * TD_ATTN_ON_CPU. dev must outlive f. n_threads: the CPU attention's team. */
tandem_status td_forward_create_on_device(const td_model *m, td_device *dev, td_attn_place attn, int32_t max_tokens,
                                          int n_threads, td_forward **out, td_error *err);

/* A step of a TD_ATTN_HYBRID forward pass: sequences with on_host set
 * have their KV in hkv (host memory), the others in dkv (device memory).
 * The same result as td_forward_step for every sequence. */
tandem_status td_forward_step_hybrid(td_forward *f, td_kv_cache *dkv, td_kv_cache *hkv, const td_fwd_seq *seqs,
                                     int32_t n_seqs, float **logits, int32_t *rows, td_error *err);

/* A sequence moving between the two pools of mode hybrid: its KV goes from
 * src_seq of the source pool (the device's dkv, or the host's hkv when
 * to_device) to dst_seq of the other, which the caller made as long. */
typedef struct td_kv_move {
    int32_t src_seq, dst_seq;
    bool to_device;
} td_kv_move;

/* Copies the KV of n sequences between the pools of a TD_ATTN_HYBRID
 * forward pass, between steps: whole blocks (every layer of a block is
 * contiguous, cpu/kv_cache.h), runs of consecutive block ids on both sides
 * coalesced into one copy, downloads and uploads on the link's two copy
 * streams at once. Returns when the copies are done; the caller then
 * frees the source sequences. *bytes (may be NULL): bytes copied. A copy
 * changes no value, so a moved sequence goes on with the same tokens. */
tandem_status td_forward_move_kv(td_forward *f, td_kv_cache *dkv, td_kv_cache *hkv, const td_kv_move *moves, int32_t n,
                                 size_t *bytes, td_error *err);

/* The model's shapes as the cost model (offload/costmodel.h) takes them. */
td_cost_shape td_cost_shape_of(const td_llama_config *c);

/* The cost model's corrections learned from this forward pass's pipelined
 * steps (online calibration, with a profile; TD_COST_CALIB_NONE before). */
const td_cost_calib *td_forward_calibration(const td_forward *f);

/* The hardware profile (offload/profile.h; borrowed, NULL for none) the
 * pipelined placements plan each step's sub-batches with: the cost model
 * (offload/costmodel.h) predicts the step with the host sequences split in
 * two sub-batches (each one's CPU attention under the other's device work,
 * at the price of a second pass over the weights) and with one (the CPU
 * attention under the device's own attention only), and the faster is
 * run. With no profile, two whenever there are two host sequences. */
void td_forward_set_profile(td_forward *f, const td_profile *p);
/* Forces the pipelined steps' sub-batch count: 1 or 2; 0 lets the plan
 * choose (benchmarks compare the two). */
void td_forward_set_sub_batches(td_forward *f, int32_t n);

/* The pipeline of a TD_ATTN_ON_CPU or TD_ATTN_HYBRID forward pass (its
 * stats, its trace); NULL for the others. */
td_pipe *td_forward_pipe(td_forward *f);

/* Runs one step. kv must have the model's layer count, kv heads and head
 * dim. On success *logits points at rows x n_vocab fp32 values (owned by f,
 * valid until the next step; the caller may overwrite them, as samplers do): the rows asked for, in the order of seqs.
 * Errors (a bad token id, a cache that does not hold the tokens) leave the
 * cache rows of this step partly written but change no sequence length. */
tandem_status td_forward_step(td_forward *f, td_kv_cache *kv, const td_fwd_seq *seqs, int32_t n_seqs, float **logits,
                              int32_t *rows, td_error *err);

const td_fwd_stats *td_forward_stats(const td_forward *f);
const td_model *td_forward_model(const td_forward *f);
int32_t td_forward_max_tokens(const td_forward *f);
int td_forward_threads(const td_forward *f); /* the OpenMP team of its steps (and its CPU attention) */
void td_forward_reset_stats(td_forward *f);

#endif /* TD_ENGINE_FORWARD_H */
