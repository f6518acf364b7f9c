// Paged attention over the device KV cache (cpu/kv_cache.h's layout), for
// decode and prefill alike.
//
// A block of the kernel owns R "rows": (query, head) pairs of one sequence
// that share a kv head, numbered query-major (row = j * group + g), so a
// decode block holds the group's heads of the one query and a prefill block
// a few consecutive queries with all their heads. Every row has its own
// causal limit (pos + j + 1 tokens). The block walks the context in tiles
// of 128 tokens and reads each K and V word of a tile once for all its rows:
//   1. scores: a thread per token; the token's K pair words (32 bits: dims
//      2p, 2p + 1 of one token; consecutive tokens are consecutive words)
//      dot the R queries, which sit in shared memory pre-scaled by
//      scale * log2(e);
//   2. online softmax: a warp per row updates the row's running max and sum
//      and turns its scores into weights (exp2);
//   3. weights . V: a thread per dim; the V pair words (tokens 2s, 2s + 1 of
//      one dim; consecutive dims are consecutive words) accumulate into the
//      R rows' registers, rescaled once per tile.
// When (sequences x kv heads x row chunks) is too few blocks to fill the
// GPU, the context is also cut into splits that run as separate blocks and
// leave unnormalized partials (max, sum, accumulator) in the stream's
// scratch; a second kernel merges them with log-sum-exp.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "gpu/cuda/cuda_impl.h"

namespace {

constexpr int NT = 128;                   // threads per block
constexpr int TILE = 128;                 // tokens per tile: one per thread in the score pass
constexpr int MAX_D = TD_KV_MAX_HEAD_DIM; // 256
constexpr int DPT = MAX_D / NT;           // dims per thread in the V pass
constexpr int MAX_R = 16;                 // rows per block, at most
constexpr int MIN_SPLIT = 2 * TILE;       // tokens a split gets, at least
constexpr float LOG2E = 1.4426950408889634f;

static_assert(TILE == NT, "the score pass gives each thread one token");
static_assert(TILE % 16 == 0, "a 16-token run of a tile lies in one KV block");

struct attn_args {
    // the pool plus the layer's tile offset: kv head h's K tile of block b
    // is at pool + b * block_bytes + h * 2 * tile_bytes, its V tile after it
    const uint8_t *pool;
    size_t block_bytes, tile_bytes;
    int32_t n_blocks, block_tokens, head_dim, group, n_kv, n_q_heads;
    float qscale; // scale * log2(e)
    const int32_t *q_first, *n_q, *pos, *table;
    int32_t table_stride, max_ctx, max_q, n_chunks;
    const float *q;
    int64_t q_stride;
    void *out;
    int64_t out_stride;
    bool out_bf16;
    int32_t n_splits, split_len;
    float *part_ml;  // [n_seqs][max_q][n_q_heads][n_splits] of {max, sum}
    float *part_acc; // [n_seqs][max_q][n_q_heads][n_splits][head_dim]
    unsigned long long *fault;
};

template <bool BF16> __device__ inline float2 unpack(uint32_t w) {
    if (BF16)
        return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
    return make_float2(__half2float(__ushort_as_half((unsigned short)(w & 0xffffu))),
                       __half2float(__ushort_as_half((unsigned short)(w >> 16))));
}

__device__ inline void store_out(const attn_args &a, int64_t i, float v) {
    if (a.out_bf16)
        ((__nv_bfloat16 *)a.out)[i] = __float2bfloat16_rn(v);
    else
        ((float *)a.out)[i] = v;
}

// The bounds the host promised for sequence seq (td_dattn's max_ctx, max_q);
// a sequence that breaks them is skipped and faults the stream.
__device__ inline bool seq_ok(const attn_args &a, int32_t nq, int32_t p0, int32_t qf) {
    return nq >= 0 && nq <= a.max_q && p0 >= 0 && p0 <= a.max_ctx - nq && qf >= 0;
}

template <int R, bool BF16> __global__ void __launch_bounds__(NT) attn_kernel(attn_args a) {
    __shared__ __align__(16) float s_q[R][MAX_D];
    __shared__ float s_p[R][TILE]; // scores, then weights
    __shared__ float s_m[R], s_l[R], s_alpha[R];
    __shared__ const uint8_t *s_tiles[TILE / 16]; // K tile of each 16-token run; null: bad block id

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int32_t seq = blockIdx.x / a.n_kv, kvh = blockIdx.x % a.n_kv, split = blockIdx.z;
    const int32_t G = a.group, D = a.head_dim, T = a.block_tokens;
    const int32_t nq = a.n_q[seq], p0 = a.pos[seq], qf = a.q_first[seq];
    if (!seq_ok(a, nq, p0, qf)) {
        if (tid == 0 && kvh == 0 && blockIdx.y == 0 && split == 0)
            tdc_fault(a.fault, TDC_FAULT_ATTN_BOUND, seq);
        return;
    }
    const int32_t rows = nq * G;
    const int32_t *table = a.table + (int64_t)seq * a.table_stride;
    const uint8_t *head_base = a.pool + (size_t)kvh * 2 * a.tile_bytes;

    for (int32_t chunk = blockIdx.y; chunk < a.n_chunks; chunk += gridDim.y) {
        const int32_t r0 = chunk * R;
        if (r0 >= rows)
            break;
        const int32_t nr = min(R, rows - r0);
        const int64_t lmax = (int64_t)p0 + (r0 + nr - 1) / G + 1; // tokens the block's last row sees
        const int64_t tb = (int64_t)split * a.split_len;
        const int64_t te = min(tb + a.split_len, lmax);

        __syncthreads(); // the previous chunk is done with shared memory
        for (int i = tid; i < R * D; i += NT) {
            const int rr = i / D, d = i % D;
            float v = 0.0f;
            if (rr < nr) {
                const int32_t rg = r0 + rr, h = kvh * G + rg % G;
                v = a.q[(int64_t)(qf + rg / G) * a.q_stride + (int64_t)h * D + d] * a.qscale;
            }
            s_q[rr][d] = v;
        }
        if (tid < R) {
            s_m[tid] = -INFINITY;
            s_l[tid] = 0.0f;
        }
        __syncthreads();

        float acc[R][DPT];
#pragma unroll
        for (int rr = 0; rr < R; rr++)
#pragma unroll
            for (int e = 0; e < DPT; e++)
                acc[rr][e] = 0.0f;

        for (int64_t t0 = tb; t0 < te; t0 += TILE) {
            const int32_t tn = (int32_t)min((int64_t)TILE, te - t0);
            if (tid < TILE / 16 && tid * 16 < tn) {
                const int32_t b = table[(t0 + tid * 16) / T];
                const uint8_t *base = nullptr;
                if (b >= 0 && b < a.n_blocks)
                    base = head_base + (size_t)b * a.block_bytes;
                else
                    tdc_fault(a.fault, TDC_FAULT_BLOCK_ID, b);
                s_tiles[tid] = base;
            }
            __syncthreads();

            // 1. scores of this thread's token against the R rows
            {
                float sc[R];
#pragma unroll
                for (int rr = 0; rr < R; rr++)
                    sc[rr] = 0.0f;
                const int64_t tok = t0 + tid;
                const uint8_t *base = tid < tn ? s_tiles[tid >> 4] : nullptr;
                if (base) {
                    const uint32_t *K = (const uint32_t *)base + tok % T;
                    for (int32_t p = 0; p < D / 2; p++) {
                        const float2 k = unpack<BF16>(K[(size_t)p * T]);
#pragma unroll
                        for (int rr = 0; rr < R; rr++) {
                            const float2 q = *(const float2 *)&s_q[rr][2 * p];
                            sc[rr] += q.x * k.x + q.y * k.y;
                        }
                    }
                }
#pragma unroll
                for (int rr = 0; rr < R; rr++) {
                    const int64_t lim = rr < nr ? (int64_t)p0 + (r0 + rr) / G + 1 : 0;
                    s_p[rr][tid] = tid < tn && tok < lim ? sc[rr] : -INFINITY;
                }
            }
            __syncthreads();

            // 2. online softmax, a warp per row
            for (int rr = warp; rr < R; rr += NT / 32) {
                float v[TILE / 32];
                float mt = -INFINITY;
#pragma unroll
                for (int c = 0; c < TILE / 32; c++) {
                    v[c] = s_p[rr][lane + 32 * c];
                    mt = fmaxf(mt, v[c]);
                }
                for (int o = 16; o > 0; o >>= 1)
                    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, o));
                const float m_old = s_m[rr], m_new = fmaxf(m_old, mt);
                float alpha = 1.0f, sum = 0.0f;
#pragma unroll
                for (int c = 0; c < TILE / 32; c++) {
                    // no token of the row yet: keep weights 0 (exp2(-inf - -inf) is NaN)
                    v[c] = m_new == -INFINITY ? 0.0f : exp2f(v[c] - m_new);
                    sum += v[c];
                    s_p[rr][lane + 32 * c] = v[c];
                }
                if (m_new != -INFINITY)
                    alpha = exp2f(m_old - m_new);
                for (int o = 16; o > 0; o >>= 1)
                    sum += __shfl_xor_sync(0xffffffffu, sum, o);
                if (lane == 0) {
                    s_l[rr] = s_l[rr] * alpha + sum;
                    s_m[rr] = m_new;
                    s_alpha[rr] = alpha;
                }
            }
            __syncthreads();

            // 3. weights . V, a thread per dim
#pragma unroll
            for (int rr = 0; rr < R; rr++) {
                const float al = s_alpha[rr];
#pragma unroll
                for (int e = 0; e < DPT; e++)
                    acc[rr][e] *= al;
            }
            for (int32_t i0 = 0; i0 < tn; i0 += 2) {
                const uint8_t *base = s_tiles[i0 >> 4];
                if (!base)
                    continue;
                const int32_t t = (int32_t)((t0 + i0) % T);
                const uint32_t *V = (const uint32_t *)(base + a.tile_bytes) + (size_t)(t >> 1) * D;
                const bool second = i0 + 1 < tn; // past the tile's last token the word's half is not ours
#pragma unroll
                for (int e = 0; e < DPT; e++) {
                    const int32_t d = tid + e * NT;
                    if (d < D) {
                        float2 v = unpack<BF16>(V[d]);
                        if (!second)
                            v.y = 0.0f;
#pragma unroll
                        for (int rr = 0; rr < R; rr++)
                            acc[rr][e] += s_p[rr][i0] * v.x + s_p[rr][i0 + 1] * v.y;
                    }
                }
            }
            __syncthreads(); // s_tiles and s_p are the next tile's
        }

        // rows out: normalized, or a split's partial state
#pragma unroll
        for (int rr = 0; rr < R; rr++) {
            if (rr >= nr)
                break;
            const int32_t rg = r0 + rr, j = rg / G, h = kvh * G + rg % G;
            if (a.n_splits == 1) {
                const float l = s_l[rr];
                const int64_t o = (int64_t)(qf + j) * a.out_stride + (int64_t)h * D;
#pragma unroll
                for (int e = 0; e < DPT; e++) {
                    const int32_t d = tid + e * NT;
                    if (d < D)
                        store_out(a, o + d, acc[rr][e] / l);
                }
            } else {
                const int64_t pi = (((int64_t)seq * a.max_q + j) * a.n_q_heads + h) * a.n_splits + split;
                if (tid == 0) {
                    a.part_ml[2 * pi] = s_m[rr];
                    a.part_ml[2 * pi + 1] = s_l[rr];
                }
#pragma unroll
                for (int e = 0; e < DPT; e++) {
                    const int32_t d = tid + e * NT;
                    if (d < D)
                        a.part_acc[pi * D + d] = acc[rr][e];
                }
            }
        }
    }
}

// A block per (sequence, query, head): the splits' partials merged with
// log-sum-exp. Partials of splits the row has no token in have sum 0.
__global__ void __launch_bounds__(NT) attn_merge_kernel(attn_args a, int64_t n_entries) {
    const int32_t D = a.head_dim, S = a.n_splits;
    for (int64_t idx = blockIdx.x; idx < n_entries; idx += gridDim.x) {
        const int64_t sj = idx / a.n_q_heads;
        const int32_t h = (int32_t)(idx % a.n_q_heads), j = (int32_t)(sj % a.max_q), seq = (int32_t)(sj / a.max_q);
        const int32_t nq = a.n_q[seq], p0 = a.pos[seq], qf = a.q_first[seq];
        if (!seq_ok(a, nq, p0, qf) || j >= nq)
            continue;
        const float *ml = a.part_ml + 2 * idx * S;
        float mx = -INFINITY;
        for (int32_t k = 0; k < S; k++)
            if (ml[2 * k + 1] > 0.0f)
                mx = fmaxf(mx, ml[2 * k]);
        float l = 0.0f;
        for (int32_t k = 0; k < S; k++)
            if (ml[2 * k + 1] > 0.0f)
                l += ml[2 * k + 1] * exp2f(ml[2 * k] - mx);
        const int64_t o = (int64_t)(qf + j) * a.out_stride + (int64_t)h * D;
        for (int32_t d = threadIdx.x; d < D; d += NT) {
            float acc = 0.0f;
            for (int32_t k = 0; k < S; k++)
                if (ml[2 * k + 1] > 0.0f)
                    acc += a.part_acc[(idx * S + k) * D + d] * exp2f(ml[2 * k] - mx);
            store_out(a, o + d, acc / l);
        }
    }
}

template <int R> void launch(const attn_args &a, dim3 grid, bool bf16, cudaStream_t s) {
    if (bf16)
        attn_kernel<R, true><<<grid, NT, 0, s>>>(a);
    else
        attn_kernel<R, false><<<grid, NT, 0, s>>>(a);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

tandem_status attn(td_device *d, td_stream *s, const td_dattn *x, bool decode, td_error *err) {
    const char *call = decode ? "attn_decode" : "attn_prefill";
    tandem_status st = tdc_enter_stream(d, s, call, err);
    if (st)
        return st;
    if (!x)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: null descriptor", call);
    if ((st = td_dev_check_attn(x, decode, err)))
        return st;
    if (!isfinite(x->scale))
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: scale is not finite", call);
    if ((uintptr_t)x->kv.pool % 4)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: KV pool %p is not 4-byte aligned", call, x->kv.pool);
    const td_kv_layout *l = &x->kv.layout;
    const int32_t G = x->n_q_heads / l->n_kv_heads, D = l->head_dim;

    // rows per block: the fewest of 4, 8, 16 that hold a sequence's rows
    const int64_t seq_rows = (int64_t)x->max_q * G;
    const int R = seq_rows <= 4 ? 4 : seq_rows <= 8 ? 8 : MAX_R;
    const int64_t n_chunks = ceil_div(seq_rows, R);
    const int64_t n_heads_seqs = (int64_t)x->n_seqs * l->n_kv_heads;
    if (n_heads_seqs > INT32_MAX || seq_rows > INT32_MAX)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: %d sequences x %d queries is too many", call, x->n_seqs,
                       x->max_q);

    // Split the context when the blocks would not fill the GPU: about two
    // blocks per multiprocessor, each split at least MIN_SPLIT tokens, and
    // the partials within the stream's scratch.
    tdc_device *dv = tdc_dev(d);
    const int64_t n_work = n_heads_seqs * n_chunks;
    int64_t n_splits = 1, split_len = x->max_ctx;
    if (n_work < dv->sm_count) {
        n_splits = ceil_div(2 * (int64_t)dv->sm_count, n_work);
        const int64_t by_len = ceil_div(x->max_ctx, MIN_SPLIT);
        if (n_splits > by_len)
            n_splits = by_len;
    }
    const int64_t n_entries = (int64_t)x->n_seqs * x->max_q * x->n_q_heads;
    while (n_splits > 1) {
        split_len = ceil_div(ceil_div(x->max_ctx, n_splits), TILE) * TILE;
        n_splits = ceil_div(x->max_ctx, split_len);
        if ((size_t)(n_entries * n_splits * (D + 2)) * sizeof(float) <= s->attn_bytes)
            break;
        n_splits--;
    }
    if (n_splits <= 1) {
        n_splits = 1;
        split_len = x->max_ctx;
    }

    attn_args a;
    a.pool = (const uint8_t *)x->kv.pool + td_kv_tile_offset(l, x->layer, 0);
    a.block_bytes = l->block_bytes;
    a.tile_bytes = l->tile_bytes;
    a.n_blocks = x->kv.n_blocks;
    a.block_tokens = l->block_tokens;
    a.head_dim = D;
    a.group = G;
    a.n_kv = l->n_kv_heads;
    a.n_q_heads = x->n_q_heads;
    a.qscale = x->scale * LOG2E;
    a.q_first = x->q_first;
    a.n_q = x->n_q;
    a.pos = x->pos;
    a.table = x->block_table;
    a.table_stride = x->table_stride;
    a.max_ctx = x->max_ctx;
    a.max_q = x->max_q;
    a.n_chunks = (int32_t)n_chunks;
    a.q = x->q;
    a.q_stride = x->q_stride;
    a.out = x->out;
    a.out_stride = x->out_stride;
    a.out_bf16 = x->out_dtype == TD_DTYPE_BF16;
    a.n_splits = (int32_t)n_splits;
    a.split_len = (int32_t)split_len;
    a.part_ml = (float *)((char *)s->scratch + TDC_BLAS_WORKSPACE);
    a.part_acc = a.part_ml + 2 * n_entries * n_splits;
    a.fault = s->fault;

    const dim3 grid((unsigned)n_heads_seqs, (unsigned)(n_chunks < 65535 ? n_chunks : 65535), (unsigned)n_splits);
    const bool bf16 = l->dtype == TD_DTYPE_BF16;
    if (R == 4)
        launch<4>(a, grid, bf16, s->s);
    else if (R == 8)
        launch<8>(a, grid, bf16, s->s);
    else
        launch<MAX_R>(a, grid, bf16, s->s);
    if ((st = tdc_launched(call, err)) || n_splits == 1)
        return st;
    attn_merge_kernel<<<(unsigned)(n_entries < (1 << 20) ? n_entries : (1 << 20)), NT, 0, s->s>>>(a, n_entries);
    return tdc_launched(call, err);
}

} // namespace

size_t tdc_attn_scratch_bytes(int sm_count) {
    // The split plan keeps n_entries * n_splits under MAX_R rows per block
    // times fewer than three blocks per multiprocessor (see attn).
    return (size_t)MAX_R * 3 * (size_t)(sm_count > 0 ? sm_count : 1) * (MAX_D + 2) * sizeof(float);
}

tandem_status tdc_attn_decode(td_device *d, td_stream *s, const td_dattn *a, td_error *err) {
    return attn(d, s, a, true, err);
}

tandem_status tdc_attn_prefill(td_device *d, td_stream *s, const td_dattn *a, td_error *err) {
    return attn(d, s, a, false, err);
}
