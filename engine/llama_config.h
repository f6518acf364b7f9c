/* The shape of a Llama-family model, read from GGUF metadata.
 *
 * Covers the `llama` architecture as llama.cpp writes it, which is also what
 * SmolLM2, Llama 2/3/3.x and Mistral 7B GGUF files use. Keys are
 * `<arch>.<name>`; optional ones get llama.cpp's defaults. */
#ifndef TD_ENGINE_LLAMA_CONFIG_H
#define TD_ENGINE_LLAMA_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "engine/gguf.h"

typedef enum td_rope_scaling {
    TD_ROPE_SCALING_NONE = 0,
    TD_ROPE_SCALING_LINEAR, /* positions divided by factor */
    TD_ROPE_SCALING_FREQS,  /* per-dimension frequency factors (Llama 3.1+: the rope_freqs.weight tensor) */
} td_rope_scaling;

typedef struct td_llama_config {
    char arch[32];
    int32_t n_layers;
    int32_t n_embd;
    int32_t n_heads, n_kv_heads, head_dim;
    int32_t n_ff;
    int32_t n_vocab;
    int32_t n_ctx; /* training context length */
    float rope_base;
    int32_t rope_dim; /* dims rotated per head (<= head_dim) */
    td_rope_scaling rope_scaling;
    float rope_factor; /* linear scaling factor; 1 otherwise */
    float rms_eps;
    bool tied_output; /* no output.weight: the LM head is token_embd.weight */
} td_llama_config;

/* Reads and checks the configuration. A missing required key is
 * TANDEM_ERR_FORMAT naming the file and the key; inconsistent values (heads
 * that do not divide the embedding, a kv head count that does not divide
 * the heads, tensors of the wrong shape) name the value. */
tandem_status td_llama_config_read(const td_gguf *g, td_llama_config *c, td_error *err);

#endif /* TD_ENGINE_LLAMA_CONFIG_H */
