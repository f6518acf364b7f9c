/* Linear layers on the host: y[M][N] (+)= x[M][K] . W[N][K]^T.
 *
 * W is the weight matrix as GGUF stores it (row n = the K input weights of
 * output n). Two paths:
 *
 *   bf16  oneDNN matmul, bf16 inputs, fp32 accumulation and output. The
 *         weights are reordered once, at creation, into the blocked layout
 *         oneDNN's kernels want (on CPUs with AMX or AVX-512 BF16 that layout
 *         feeds the tile/dot-product instructions directly); x is bf16.
 *   f32   OpenBLAS sgemm on the plain fp32 matrix; x is fp32. The fallback
 *         path, and the one the correctness tests use to match an fp32
 *         reference exactly (engine's fp32-weights option).
 *
 * Batch invariance: on the bf16 path a row's result is the same bits
 * whatever the number of rows in the call (oneDNN's kernels sum k in one
 * order for every m; tests/test_linear.c checks it), so a sequence's tokens
 * do not depend on the batch it runs in, sampled ones included. The f32 path
 * does not promise it: OpenBLAS turns m = 1 into a GEMV that sums in another
 * order (last-bit differences).
 *
 * The blocked layout depends on (K, N) only, not on M, so one copy of the
 * weights serves every batch size; a oneDNN primitive is specialised on M,
 * so a td_gemm keeps the primitives it has built (one per (M, K, N,
 * accumulate)), which turns the JIT cost into a one-time cost per batch size.
 *
 * Ownership and threads: a td_linear is immutable after creation and may be
 * used by any number of td_gemm contexts at once. A td_gemm (the primitive
 * cache and oneDNN's engine and stream) belongs to one calling thread at a
 * time; the GEMM itself runs on that thread's OpenMP team
 * (omp_get_max_threads() of the caller) or on OpenBLAS's threads. */
#ifndef TD_CPU_LINEAR_H
#define TD_CPU_LINEAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/error.h"

typedef struct td_gemm td_gemm;
typedef struct td_linear td_linear;

tandem_status td_gemm_create(td_gemm **out, td_error *err);
void td_gemm_destroy(td_gemm *g);
/* Primitives built so far (for tests and stats). */
int td_gemm_cached(const td_gemm *g);

/* Creates the layer from w: [n][k] of wtype (TD_DTYPE_BF16 or TD_DTYPE_F32),
 * read once and not retained. g is used for the one-time reorder. */
tandem_status td_linear_create(td_gemm *g, int64_t n, int64_t k, td_dtype wtype, const void *w, td_linear **out,
                               td_error *err);
void td_linear_destroy(td_linear *l);
int64_t td_linear_n(const td_linear *l);
int64_t td_linear_k(const td_linear *l);
/* The dtype x must have: the weights' dtype (bf16 or f32). */
td_dtype td_linear_dtype(const td_linear *l);
/* Bytes of weights held (the blocked copy). */
size_t td_linear_bytes(const td_linear *l);

/* y[m][n] = x . W^T, or y += x . W^T when accumulate. x: [m][k] of
 * td_linear_dtype(l), rows contiguous; y: [m][n] fp32. m >= 1. */
tandem_status td_linear_forward(td_gemm *g, const td_linear *l, int64_t m, const void *x, float *y, bool accumulate,
                                td_error *err);

/* A general bf16 GEMM on operands in place (no reorder), for products of
 * activations and for devices that keep plain matrices (the emulated
 * device):
 *
 *   C[b] (= or +=) A[b] . op(B[b]),  b < batch
 *
 * A[b] is [m][k] at a + b * stride_a (rows lda apart); B[b] is [n][k] when
 * trans_b (C = A B^T) else [k][n], at b + b * stride_b (rows ldb apart); C[b]
 * is [m][n] of c_dtype (f32 or bf16) at c + b * stride_c (rows ldc apart).
 * A stride of 0 broadcasts that operand over the batch. fp32 accumulation;
 * accumulate needs an f32 C. Strides and leading dimensions in elements.
 * The primitive comes from oneDNN's own primitive cache, so a shape's JIT
 * cost is paid once per process. */
typedef struct td_matmul {
    int64_t batch, m, n, k;
    const uint16_t *a;
    int64_t lda, stride_a;
    const uint16_t *b;
    int64_t ldb, stride_b;
    bool trans_b;
    void *c;
    int64_t ldc, stride_c;
    td_dtype c_dtype;
    bool accumulate;
} td_matmul;

tandem_status td_matmul_bf16(td_gemm *g, const td_matmul *mm, td_error *err);

#endif /* TD_CPU_LINEAR_H */
