/* A Llama-family model loaded for the host: its configuration and its
 * weights, dequantized once, at load, into the form the host GEMM runs on.
 *
 *   weights bf16  (default) every linear layer in bf16, reordered for
 *                 oneDNN's kernels (cpu/linear.h): half the bytes of fp32,
 *                 and the input type of the CPU's bf16 dot-product and AMX
 *                 instructions;
 *   weights f32   every linear layer in fp32 through OpenBLAS: the exact
 *                 dequantized values, for matching an fp32 reference.
 *
 * Q, K and V are fused into one [q_dim + 2 kv_dim][n_embd] matrix and the
 * FFN's gate and up into one [2 n_ff][n_embd], so a step runs four GEMMs
 * per layer instead of seven. Norm weights are fp32. The token embedding
 * stays in the file's own encoding (mapped, not copied) and is dequantized
 * row by row when tokens are looked up; with a tied output, the LM head is
 * a bf16 / fp32 copy of the same matrix.
 *
 * A td_model is immutable once loaded: any number of td_forward contexts
 * (engine/forward.h) on any threads may share it. It owns the mapped file. */
#ifndef TD_ENGINE_MODEL_H
#define TD_ENGINE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "cpu/isa.h"
#include "cpu/linear.h"
#include "engine/gguf.h"
#include "engine/llama_config.h"

typedef enum td_weights {
    TD_WEIGHTS_BF16 = 0,
    TD_WEIGHTS_F32 = 1,
} td_weights;

typedef struct td_model_options {
    td_weights weights;
    int n_threads; /* threads that dequantize at load; 0: the OpenMP default */
    td_isa isa;    /* kernels for dequantization and row ops; TD_ISA_COUNT: td_isa_select() */
    /* Load norms, embedding and RoPE only: the linear layers go to a device
     * (td_model_matrix), and the host keeps no copy. */
    bool skip_linears;
} td_model_options;

/* The linear matrices of a layer, in the fused form the model runs. */
typedef enum td_matrix {
    TD_MATRIX_QKV = 0,     /* [q_dim + 2 kv_dim][n_embd] */
    TD_MATRIX_O = 1,       /* [n_embd][q_dim] */
    TD_MATRIX_GATE_UP = 2, /* [2 n_ff][n_embd] */
    TD_MATRIX_DOWN = 3,    /* [n_embd][n_ff] */
    TD_MATRIX_HEAD = 4,    /* [n_vocab][n_embd] (layer ignored) */
} td_matrix;

/* The linear layers are NULL when the model was loaded with skip_linears. */
typedef struct td_layer_weights {
    float *attn_norm, *ffn_norm; /* [n_embd] */
    td_linear *wqkv;             /* [q_dim + 2 kv_dim][n_embd]: Q rows, then K, then V */
    td_linear *wo;               /* [n_embd][q_dim] */
    td_linear *wgu;              /* [2 n_ff][n_embd]: gate rows, then up */
    td_linear *wdown;            /* [n_embd][n_ff] */
} td_layer_weights;

typedef struct td_model {
    td_gguf *gguf;
    td_llama_config cfg;
    td_weights weights;
    td_isa isa;
    const td_gguf_tensor *tok_embd; /* [n_vocab][n_embd], the file's type */
    size_t tok_embd_row_bytes;
    td_layer_weights *layers; /* [n_layers] */
    float *out_norm;          /* [n_embd] */
    td_linear *head;          /* [n_vocab][n_embd] */
    double *inv_freq;         /* [rope_dim / 2]: RoPE frequency of each pair, scaling included */
    size_t weight_bytes;      /* held by the linear layers */
    bool linears_on_host;     /* false: loaded with skip_linears */
    double load_seconds;
} td_model;

void td_model_options_default(td_model_options *o);

/* Opens the GGUF file at path and loads the model. Errors name the file and
 * the tensor or key at fault. */
tandem_status td_model_load(const char *path, const td_model_options *opt, td_model **out, td_error *err);
void td_model_free(td_model *m);

/* Matrix `which` of layer `layer`, dequantized from the file into dst, a
 * plain [n][k] bf16 matrix (td_model_matrix_shape gives n and k): the
 * values the host's bf16 linear layers hold, for a device to upload. */
tandem_status td_model_matrix(const td_model *m, int32_t layer, td_matrix which, uint16_t *dst, td_error *err);
void td_model_matrix_shape(const td_model *m, td_matrix which, int64_t *n, int64_t *k);

/* Dequantizes the embedding rows of n tokens into out[n][n_embd] (fp32).
 * An id outside the vocabulary is TANDEM_ERR_INVALID_ARGUMENT. */
tandem_status td_model_embed(const td_model *m, const int32_t *tokens, int64_t n, float *out, td_error *err);

#endif /* TD_ENGINE_MODEL_H */
