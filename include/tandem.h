/* Tandem: heterogeneous CPU-GPU LLM inference engine. Public C API.
 *
 * An engine holds a model, its tokenizer, a host KV cache and a
 * continuous-batching scheduler. Requests are submitted with their sampling
 * parameters and run by tandem_run (or tandem_step), which calls back per
 * generated token and per finished request:
 *
 *   tandem_config c;  tandem_config_init(&c);  c.model_path = "model.gguf";
 *   tandem_engine *e;
 *   if (tandem_engine_open(&c, &e) != TANDEM_OK) { puts(tandem_engine_errmsg(e)); ... }
 *   tandem_sampling s;  tandem_sampling_init(&s);  s.max_tokens = 64;
 *   tandem_request *r;
 *   tandem_submit_text(e, "Once upon", 9, &s, NULL, &r);
 *   tandem_run(e, NULL);
 *   size_t n;  const char *text = tandem_request_text(r, &n);
 *   tandem_request_free(e, r);
 *   tandem_engine_close(e);
 *
 * Ownership: the engine owns everything it returns. A request belongs to
 * its engine until the caller releases it with tandem_request_free (after it
 * finished, or to drop it unfinished); tandem_engine_close frees those left.
 * Strings passed in are copied.
 *
 * Thread-safety: no global mutable state; engines are independent. Calls on
 * one engine (and its requests) must not overlap: one thread at a time, and
 * callbacks run on the thread inside tandem_run/tandem_step (they may call
 * tandem_cancel, nothing else on the engine). tandem_status_name,
 * tandem_version and the *_init functions may be called from any thread.
 *
 * Errors: every fallible call returns a status; the engine keeps the message
 * of its latest failure (tandem_engine_errmsg). Nothing prints, exits or
 * aborts. Structs passed in carry their size (set by the *_init functions)
 * so that fields can be added without breaking callers.
 *
 * ABI: new fields are only ever appended to a struct. The *_init macros
 * pass the caller's sizeof to the *_init_sized functions, which write at
 * most that many bytes and set struct_size to the smaller of it and the
 * library's own size; the library reads only the fields below a struct's
 * struct_size (those past it take their defaults) and writes only those
 * below it (tandem_stats, tandem_plan_result). So a program built against
 * an older header runs with a newer library; one built against a newer
 * header runs with an older library, which ignores the fields it does not
 * have (the struct_size its *_init_sized sets says which those are). A
 * struct_size below the oldest layout still read is refused with
 * TANDEM_ERR_INVALID_ARGUMENT: tandem_config up to emu_link, tandem_stats
 * up to queued, tandem_plan_query up to host_kv_bytes, tandem_plan_result
 * up to cpu_busy_seconds, tandem_sampling and tandem_tune_config whole.
 */
#ifndef TANDEM_H
#define TANDEM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(TANDEM_BUILD)
#define TANDEM_API __attribute__((visibility("default")))
#else
#define TANDEM_API
#endif

#if defined(__GNUC__) && !defined(TANDEM_BUILD)
#define TANDEM_DEPRECATED(msg) __attribute__((deprecated(msg)))
#else
#define TANDEM_DEPRECATED(msg)
#endif

#define TANDEM_VERSION_MAJOR 0
#define TANDEM_VERSION_MINOR 1
#define TANDEM_VERSION_PATCH 0
#define TANDEM_VERSION_STRING "0.1.0"

/* Status of every fallible call. The numeric values are part of the ABI:
 * new codes are only ever appended. */
typedef enum tandem_status {
    TANDEM_OK = 0,
    TANDEM_ERR_INVALID_ARGUMENT = 1, /* a caller-supplied value is out of range */
    TANDEM_ERR_OUT_OF_MEMORY = 2,    /* an allocation or mapping failed */
    TANDEM_ERR_KV_FULL = 3,          /* no free KV block: queue, preempt or swap, then retry */
    TANDEM_ERR_LIMIT = 4,            /* a fixed capacity is exceeded (e.g. a sequence's table) */
    TANDEM_ERR_NOT_FOUND = 5,        /* an id that is not live (never made, or already freed) */
    TANDEM_ERR_UNSUPPORTED = 6,      /* valid, but not available in this build or on this CPU */
    TANDEM_ERR_IO = 7,               /* reading or writing a file failed */
    TANDEM_ERR_FORMAT = 8,           /* a file's content is malformed */
    TANDEM_ERR_DEVICE = 9,           /* the accelerator or its runtime failed */
    TANDEM_ERR_INTERNAL = 10,        /* a broken invariant inside Tandem: please report it */
} tandem_status;

/* "TANDEM_OK", "TANDEM_ERR_KV_FULL", ...; "TANDEM_ERR_UNKNOWN" for other values. */
TANDEM_API const char *tandem_status_name(tandem_status status);

/* The version of the library actually loaded, e.g. "0.1.0". */
TANDEM_API const char *tandem_version(void);

/* ---- engine ---------------------------------------------------------------- */

typedef struct tandem_engine tandem_engine;
typedef struct tandem_request tandem_request;

typedef enum tandem_weights {
    TANDEM_WEIGHTS_BF16 = 0, /* linear layers in bf16 (oneDNN), fp32 accumulation */
    TANDEM_WEIGHTS_F32 = 1,  /* linear layers in fp32 (OpenBLAS): exact dequantized values */
} tandem_weights;

/* Where the model runs. AUTO takes a CUDA GPU when the CUDA plugin, a
 * driver and a device answer, else the CPU; tandem_engine_device says which
 * and, after a fallback, why. CUDA fails to open without one. EMU is the
 * emulated device: the device code path on host threads (testing, and
 * runs that must match the CPU's tokens). */
typedef enum tandem_device {
    TANDEM_DEVICE_AUTO = 0,
    TANDEM_DEVICE_CPU = 1,
    TANDEM_DEVICE_CUDA = 2,
    TANDEM_DEVICE_EMU = 3,
} tandem_device;

/* Where attention runs: all on the device (DEVICE: weights, activations and
 * the KV cache in device memory), all on the CPU next to a host KV cache
 * while the device runs the linear layers, two sub-batches overlapped
 * (CPU_ATTN), or each sequence where its KV is (HYBRID: a device pool and
 * a host pool; a request goes to the device's when its prompt fits there,
 * else to the host's; when the device's runs out its newest sequences
 * move to the host's, and back when room returns). AUTO: DEVICE when the
 * KV budget fits the device's memory, else HYBRID with the device's pool
 * as large as it fits and the budget on the host. With the CPU alone only
 * AUTO applies. */
typedef enum tandem_mode {
    TANDEM_MODE_AUTO = 0,
    TANDEM_MODE_DEVICE = 1,
    TANDEM_MODE_CPU_ATTN = 2,
    TANDEM_MODE_HYBRID = 3,
} tandem_mode;

typedef struct tandem_config {
    size_t struct_size;     /* set by tandem_config_init */
    const char *model_path; /* GGUF file; NULL: $TANDEM_MODEL, else the default model (scripts/fetch-model) */
    int threads;            /* 0: all the cores OpenMP sees */
    size_t kv_budget_bytes; /* KV pool; 0: a quarter of physical memory, at most 4 GiB, and on a device
                             * at most 90% of the memory its weights and workspace leave */
    int max_batch;          /* requests running at once; 0: 256 */
    int step_tokens;        /* tokens per step (decodes + prompt chunks); 0: 2048 */
    tandem_weights weights;
    tandem_device device;
    tandem_mode mode;
    const char *chat_template; /* NULL: the model's (tokenizer.chat_template); or "chatml", "llama3",
                                * "llama2", "mistral", "mistral-v0.1" */
    const char *trace_path;    /* pipelined modes: a Chrome trace-event JSON of every step (Perfetto) */
    size_t device_kv_bytes;    /* mode hybrid: the device's KV pool (kv_budget_bytes is the host's);
                                * 0: 90% of the device memory the weights and workspace leave */
    /* Device EMU only. emu_gpu: NULL runs every op (compute mode); a GPU
     * preset ("T4", "A10G", "A100-SXM", "H100-PCIe", "H100-SXM") makes the
     * device take that GPU's time per op and compute nothing (timed mode:
     * outputs are meaningless, timings are the point). emu_link: NULL, or
     * "pcie3-x16", "pcie4-x16", "pcie5-x16": copies take that link's time.
     * docs/DEVICE-MODELS.md gives the figures. */
    const char *emu_gpu, *emu_link;
    /* A hardware profile (a file from tandem_tune, or a preset name: "T4",
     * "A10G", "H100-PCIe", "H100-SXM"): the pipelined modes ask its cost
     * model, every step, how to split the batch into sub-batches and
     * which host-pool decodes to run (offload/costmodel.h). NULL: the file
     * $TANDEM_PROFILE names, else none (two sub-batches whenever they can,
     * every host decode). */
    const char *profile;
} tandem_config;

/* Defaults into the first `size` bytes of *c at most (struct_size = the
 * smaller of size and sizeof(tandem_config) of the library). Call it as
 * tandem_config_init(&c): the macro passes sizeof c. */
TANDEM_API void tandem_config_init_sized(tandem_config *c, size_t size);
#define tandem_config_init(c) tandem_config_init_sized((c), sizeof *(c))

/* Opens an engine. On success *out is ready. On failure *out is still a
 * handle (unless memory ran out: NULL) that only says why, through
 * tandem_engine_errmsg, and must be closed. */
TANDEM_API tandem_status tandem_engine_open(const tandem_config *c, tandem_engine **out);
TANDEM_API void tandem_engine_close(tandem_engine *e);

/* The message of the engine's latest failure ("" when none). Valid until the
 * next call on the engine. */
TANDEM_API const char *tandem_engine_errmsg(const tandem_engine *e);

/* Where the engine runs, in one line: "cpu", "cpu (no CUDA device: ...)"
 * after an AUTO fallback, "cuda: NVIDIA H100 PCIe, mode device",
 * "emu: emu compute (2 threads), mode device". */
TANDEM_API const char *tandem_engine_device(const tandem_engine *e);

/* Vocabulary size, BOS and EOS ids (-1 when the vocabulary has none). */
TANDEM_API int32_t tandem_n_vocab(const tandem_engine *e);
TANDEM_API int32_t tandem_token_bos(const tandem_engine *e);
TANDEM_API int32_t tandem_token_eos(const tandem_engine *e);

/* Text to token ids. add_bos: -1 for the model's own rule, 0 or 1 to force.
 * parse_special: recognise control tokens (e.g. "<|im_start|>") in the text.
 * Writes up to cap ids and sets *n_out to the count the whole text needs:
 * TANDEM_ERR_LIMIT when that exceeds cap (call again with a bigger buffer). */
TANDEM_API tandem_status tandem_tokenize(tandem_engine *e, const char *text, size_t len, int add_bos, int parse_special,
                                         int32_t *ids, size_t cap, size_t *n_out);
/* Token ids to UTF-8 text (invalid sequences become U+FFFD; control tokens
 * are not rendered). Same cap / *n_out / TANDEM_ERR_LIMIT contract. */
TANDEM_API tandem_status tandem_detokenize(tandem_engine *e, const int32_t *ids, size_t n, char *out, size_t cap,
                                           size_t *n_out);

/* ---- requests ---------------------------------------------------------------- */

typedef struct tandem_sampling {
    size_t struct_size;       /* set by tandem_sampling_init */
    int32_t max_tokens;       /* tokens to generate at most; default 256 */
    float temperature;        /* 0: greedy; default 1 */
    int32_t top_k;            /* 0: off */
    float top_p;              /* 1: off */
    float min_p;              /* 0: off */
    float repetition_penalty; /* 1: off */
    int32_t penalty_last_n;   /* ids the penalty looks back over; default 64, -1: all */
    uint64_t seed;            /* the request's own random stream */
    const char *const *stop;  /* n_stop strings that end the output (not included in it) */
    int32_t n_stop;
    int ignore_eos; /* 1: do not stop at end-of-generation tokens */
} tandem_sampling;

/* As tandem_config_init_sized; call it as tandem_sampling_init(&s). */
TANDEM_API void tandem_sampling_init_sized(tandem_sampling *s, size_t size);
#define tandem_sampling_init(s) tandem_sampling_init_sized((s), sizeof *(s))

typedef enum tandem_finish {
    TANDEM_FINISH_NONE = 0,   /* still queued or running */
    TANDEM_FINISH_STOP = 1,   /* an end-of-generation token or a stop string */
    TANDEM_FINISH_LENGTH = 2, /* max_tokens, or the model's context */
    TANDEM_FINISH_ERROR = 3,  /* see tandem_request_error */
    TANDEM_FINISH_CANCELLED = 4,
} tandem_finish;

/* "none", "stop", "length", "error", "cancelled". */
TANDEM_API const char *tandem_finish_name(tandem_finish f);

/* Queues a request: the text is tokenized with the model's BOS rule and
 * control tokens recognised (chat-formatted text works as is). user is
 * returned by tandem_request_user. Bad parameters fail here, naming the
 * field; a prompt that cannot run (longer than the context or the KV cache)
 * is accepted and finishes with TANDEM_FINISH_ERROR. */
TANDEM_API tandem_status tandem_submit_text(tandem_engine *e, const char *prompt, size_t len, const tandem_sampling *s,
                                            void *user, tandem_request **out);
TANDEM_API tandem_status tandem_submit_tokens(tandem_engine *e, const int32_t *ids, size_t n, const tandem_sampling *s,
                                              void *user, tandem_request **out);

typedef struct tandem_message {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content; /* content_len bytes of UTF-8 */
    size_t content_len;
} tandem_message;

/* Renders a conversation with the engine's chat template and queues the
 * assistant's reply as a request (as tandem_submit_text; the template's BOS
 * is added by the tokenizer). TANDEM_ERR_UNSUPPORTED when the model has no
 * template Tandem knows (name one in tandem_config.chat_template). */
TANDEM_API tandem_status tandem_submit_chat(tandem_engine *e, const tandem_message *msgs, size_t n,
                                            const tandem_sampling *s, void *user, tandem_request **out);

/* The chat template in use: "chatml", "llama3", ...; "" when none. */
TANDEM_API const char *tandem_chat_template(const tandem_engine *e);

/* Ends a queued or running request with TANDEM_FINISH_CANCELLED (its
 * on_finish comes with the next step). */
TANDEM_API tandem_status tandem_cancel(tandem_engine *e, tandem_request *r);

typedef struct tandem_callbacks {
    /* each generated token and the text it completed (may be empty: a
     * character split across tokens, or text held back by a stop string) */
    void (*on_token)(void *user_data, tandem_request *r, int32_t token, const char *text, size_t len);
    /* each request, once, when it finishes for any reason */
    void (*on_finish)(void *user_data, tandem_request *r);
    void *user_data;
} tandem_callbacks;

/* Runs until no request is queued or running. cb may be NULL. */
TANDEM_API tandem_status tandem_run(tandem_engine *e, const tandem_callbacks *cb);
/* One scheduler step; *busy: whether requests remain. */
TANDEM_API tandem_status tandem_step(tandem_engine *e, const tandem_callbacks *cb, int *busy);

TANDEM_API void *tandem_request_user(const tandem_request *r);
TANDEM_API tandem_finish tandem_request_finish(const tandem_request *r);
/* The completion so far (UTF-8, not NUL-terminated: *len bytes). */
TANDEM_API const char *tandem_request_text(const tandem_request *r, size_t *len);
/* Prompt then generated ids; counts in *n_prompt and *n_generated. */
TANDEM_API const int32_t *tandem_request_tokens(const tandem_request *r, size_t *n_prompt, size_t *n_generated);
/* When finished with TANDEM_FINISH_ERROR: its status and message. */
TANDEM_API tandem_status tandem_request_status(const tandem_request *r);
TANDEM_API const char *tandem_request_error(const tandem_request *r);
/* Releases a request; an unfinished one is cancelled first (no callback). */
TANDEM_API void tandem_request_free(tandem_engine *e, tandem_request *r);

typedef struct tandem_stats {
    size_t struct_size;
    uint64_t requests_finished, requests_failed;
    uint64_t prompt_tokens; /* prefilled, recomputation after preemption included */
    uint64_t generated_tokens;
    uint64_t preemptions, steps;
    double run_seconds, forward_seconds; /* in tandem_run/step; of that, in the model */
    size_t kv_bytes_total, kv_bytes_used, kv_bytes_peak;
    uint32_t running, queued;
    /* Pipelined steps (mode cpu-attn): their wall time and each resource's
     * busy time in them. Overlap efficiency = the largest busy time /
     * pipeline_seconds (1: the busiest resource never waited). */
    uint64_t pipeline_steps;
    double pipeline_seconds, device_busy_seconds, d2h_busy_seconds, h2d_busy_seconds, cpu_busy_seconds;
    /* Mode hybrid: sequences moved from the device's KV pool to the host's
     * (when the device's ran out) and back (when room returned), and the
     * bytes of KV those moves copied. */
    uint64_t kv_moves_to_host, kv_moves_to_device, kv_moved_bytes;
    /* Mode hybrid with a profile: host-pool decodes the cost model held
     * back from a step (they would have slowed it more than they add). */
    uint64_t host_decodes_held;
} tandem_stats;

TANDEM_API tandem_status tandem_engine_stats(tandem_engine *e, tandem_stats *out);

/* ---- hardware profile and placement plans (offload/) -------------------- */

/* tandem_tune: measures this machine (the device, the link, the CPU's
 * attention) with micro-benchmarks and writes a hardware profile, the JSON
 * the cost model reads (offload/profile.h). Seconds, not minutes. */
typedef struct tandem_tune_config {
    size_t struct_size;     /* set by tandem_tune_config_init */
    tandem_device device;   /* AUTO: a CUDA GPU, else the emulated device */
    const char *emu_gpu;    /* device EMU: the GPU preset whose times it takes (timed mode); NULL: "H100-PCIe" */
    const char *emu_link;   /* device EMU: the link preset; NULL: "pcie5-x16" */
    int threads;            /* the CPU attention's most threads; 0: all the cores OpenMP sees */
    const char *model_path; /* its layers' GEMM shapes are measured too; NULL: generic shapes only */
    /* Called as each stage starts and ends (fraction 0..1 of the whole);
     * NULL: silent. */
    void (*progress)(void *user, const char *stage, double fraction);
    void *user;
} tandem_tune_config;

/* As tandem_config_init_sized; call it as tandem_tune_config_init(&c). */
TANDEM_API void tandem_tune_config_init_sized(tandem_tune_config *c, size_t size);
#define tandem_tune_config_init(c) tandem_tune_config_init_sized((c), sizeof *(c))
/* Writes the profile to out_path. On failure err (err_cap bytes, may be
 * NULL) holds the message. */
TANDEM_API tandem_status tandem_tune(const tandem_tune_config *c, const char *out_path, char *err, size_t err_cap);

/* tandem_plan: the cost model's prediction for B sequences of ctx cached
 * tokens decoding on a profile's machine: tokens/s of each mode and the
 * plan it would choose. */
typedef struct tandem_plan_query {
    size_t struct_size;     /* set by tandem_plan_query_init */
    const char *profile;    /* a profile file (tandem_tune), or a preset name ("A10G", "T4", "H100-PCIe", ...) */
    const char *model_path; /* GGUF: only its shapes are read; NULL: the default model */
    int batch;              /* sequences decoding together, >= 1 */
    int ctx;                /* tokens each has cached, >= 1 */
    size_t gpu_mem_bytes;   /* device memory for weights, workspace and KV; 0: the profile's */
    size_t host_kv_bytes;   /* host memory for KV; 0: 90% of the profile's host memory */
    int host_seqs;          /* -1: search; else evaluate this many sequences on the CPU (hybrid) */
} tandem_plan_query;

typedef struct tandem_plan_result {
    size_t struct_size;
    /* device: the batch capped by the device's KV room (device_batch) */
    double device_tok_s;
    int device_batch;
    double cpu_attn_tok_s; /* every sequence's KV on the host (0: they do not fit there) */
    double hybrid_tok_s;   /* the best split (or host_seqs' when asked) */
    int hybrid_host_seqs, hybrid_sub_batches;
    tandem_mode chosen; /* the mode with the most tokens/s */
    double chosen_tok_s;
    /* the chosen plan's predicted step and busy times */
    double step_seconds, device_busy_seconds, link_busy_seconds, cpu_busy_seconds;
    double search_seconds; /* what the search itself took */
} tandem_plan_result;

/* As tandem_config_init_sized; call it as tandem_plan_query_init(&q). */
TANDEM_API void tandem_plan_query_init_sized(tandem_plan_query *q, size_t size);
#define tandem_plan_query_init(q) tandem_plan_query_init_sized((q), sizeof *(q))
TANDEM_API tandem_status tandem_plan(const tandem_plan_query *q, tandem_plan_result *out, char *err, size_t err_cap);

/* ---- deprecated -------------------------------------------------------------- */

/* The 0.1.0 initializers, exported for the programs linked against them:
 * they write the structs of the 0.1.0 header whatever the library's size
 * (tandem_config with fields up to profile, tandem_sampling up to
 * ignore_eos, tandem_tune_config up to user, tandem_plan_query up to
 * host_seqs). The macros above replace calls to them; a caller that calls
 * them as functions, e.g. (tandem_config_init)(&c), is warned. */
TANDEM_API TANDEM_DEPRECATED("use tandem_config_init_sized") void(tandem_config_init)(tandem_config *c);
TANDEM_API TANDEM_DEPRECATED("use tandem_sampling_init_sized") void(tandem_sampling_init)(tandem_sampling *s);
TANDEM_API TANDEM_DEPRECATED("use tandem_tune_config_init_sized") void(tandem_tune_config_init)(tandem_tune_config *c);
TANDEM_API TANDEM_DEPRECATED("use tandem_plan_query_init_sized") void(tandem_plan_query_init)(tandem_plan_query *q);

#ifdef __cplusplus
}
#endif

#endif /* TANDEM_H */
