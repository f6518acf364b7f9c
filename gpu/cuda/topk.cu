// Top-k of logit rows, a block per row.
//
// Each value is ranked by a 64-bit key: an order-preserving image of the
// float in the high word (-0 made +0, so that the two tie as they compare
// equal), the complement of its id in the low word. Keys are unique, larger
// means "comes first", and ties go to the lower id by construction. k = 1 is
// a max-reduction of keys; larger k is a radix select over the keys, eight
// bits a pass from the top, which stops as soon as the chosen bin holds
// exactly the elements still wanted (usually within the float's bits), then
// one pass gathers the k keys and a rank sort of those k orders them.
// NaNs rank by their bits: +NaN above +inf, -NaN below -inf.
#include <cuda_runtime.h>

#include "gpu/cuda/cuda_impl.h"

namespace {

constexpr int TK_THREADS = 256;

__device__ inline unsigned long long rank_key(float v, int64_t id) {
    uint32_t u = __float_as_uint(v);
    if (u == 0x80000000u)
        u = 0;
    const uint32_t key = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return (unsigned long long)key << 32 | (uint32_t) ~(uint32_t)id;
}

__device__ inline int32_t key_id(unsigned long long c) { return (int32_t) ~(uint32_t)c; }

// 0 is below every key: its low word would be ~id for id 2^32 - 1, and ids
// are below 2^31.
__global__ void __launch_bounds__(TK_THREADS)
    argmax_kernel(int64_t m, int64_t n, const float *x, int64_t xs, int32_t *ids, float *vals) {
    __shared__ unsigned long long part[TK_THREADS / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int64_t r = blockIdx.x; r < m; r += gridDim.x) {
        const float *xr = x + r * xs;
        unsigned long long best = 0;
        for (int64_t i = threadIdx.x; i < n; i += TK_THREADS) {
            const unsigned long long c = rank_key(xr[i], i);
            best = c > best ? c : best;
        }
        for (int o = 16; o > 0; o >>= 1) {
            const unsigned long long c = __shfl_xor_sync(0xffffffffu, best, o);
            best = c > best ? c : best;
        }
        if (lane == 0)
            part[warp] = best;
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < TK_THREADS / 32; w++)
                best = part[w] > best ? part[w] : best;
            const int32_t id = key_id(best);
            ids[r] = id;
            if (vals)
                vals[r] = xr[id];
        }
        __syncthreads(); // part is the next row's
    }
}

__global__ void __launch_bounds__(TK_THREADS)
    topk_kernel(int64_t m, int64_t n, const float *x, int64_t xs, int32_t k, int32_t *ids, float *vals) {
    __shared__ unsigned hist[256];
    __shared__ unsigned long long cand[TD_DEV_TOPK_MAX];
    __shared__ unsigned long long s_prefix, s_mask; // the decided top bits of the k-th key, and which they are
    __shared__ unsigned s_want;                     // keys still wanted among those matching the prefix
    __shared__ int s_done, s_cnt;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    for (int64_t r = blockIdx.x; r < m; r += gridDim.x) {
        const float *xr = x + r * xs;
        if (tid == 0) {
            s_prefix = 0;
            s_mask = 0;
            s_want = (unsigned)k;
            s_done = 0;
            s_cnt = 0;
        }
        for (int shift = 56; shift >= 0; shift -= 8) {
            for (int i = tid; i < 256; i += TK_THREADS)
                hist[i] = 0;
            __syncthreads();
            // read before the barrier below, after which warp 0 rewrites them
            const unsigned long long prefix = s_prefix, mask = s_mask;
            const unsigned want = s_want;
            for (int64_t i = tid; i < n; i += TK_THREADS) {
                const unsigned long long c = rank_key(xr[i], i);
                if ((c & mask) == prefix)
                    atomicAdd(&hist[(c >> shift) & 255], 1u);
            }
            __syncthreads();
            if (warp == 0) {
                // lane l holds bins 8l .. 8l + 7; the wanted bin is where the
                // count from the top first reaches s_want
                unsigned c8 = 0;
                for (int b = 0; b < 8; b++)
                    c8 += hist[8 * lane + b];
                unsigned incl = c8; // bins of lanes >= lane
                for (int o = 1; o < 32; o <<= 1) {
                    const unsigned v = __shfl_down_sync(0xffffffffu, incl, o);
                    if (lane + o < 32)
                        incl += v;
                }
                unsigned above = incl - c8;
                if (above < want && want <= incl) {
                    for (int b = 7; b >= 0; b--) {
                        const unsigned h = hist[8 * lane + b];
                        if (above + h >= want) {
                            s_prefix = prefix | (unsigned long long)(8 * lane + b) << shift;
                            s_mask = mask | 255ull << shift;
                            s_want = want - above;
                            s_done = h == want - above;
                            break;
                        }
                        above += h;
                    }
                }
            }
            __syncthreads();
            if (s_done) // keys are unique: at the last pass the bin holds one, so this ends the loop at the latest
                break;
        }

        // exactly k keys are at or above the prefix on the decided bits
        const unsigned long long prefix = s_prefix, mask = s_mask;
        for (int64_t i = tid; i < n; i += TK_THREADS) {
            const unsigned long long c = rank_key(xr[i], i);
            if ((c & mask) >= prefix) {
                const int at = atomicAdd(&s_cnt, 1);
                if (at < k)
                    cand[at] = c;
            }
        }
        __syncthreads();
        if (tid < k) {
            const unsigned long long c = cand[tid];
            int rank = 0;
            for (int j = 0; j < k; j++)
                rank += cand[j] > c;
            const int32_t id = key_id(c);
            ids[r * k + rank] = id;
            if (vals)
                vals[r * k + rank] = xr[id];
        }
        __syncthreads(); // the shared state is the next row's
    }
}

} // namespace

tandem_status tdc_topk(td_device *d, td_stream *s, int64_t m, int64_t n, const float *x, int64_t x_stride, int32_t k,
                       int32_t *ids, float *vals, td_error *err) {
    tandem_status st = tdc_enter_stream(d, s, "topk", err);
    if (st)
        return st;
    if (!x || !ids)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "topk: null x or ids");
    if ((st = td_dev_check_rows("topk", m, n, x_stride, err)))
        return st;
    if (k < 1 || k > TD_DEV_TOPK_MAX || k > n)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "topk: k %d outside [1, min(%d, n %lld)]", k, TD_DEV_TOPK_MAX,
                       (long long)n);
    if (n > INT32_MAX)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "topk: %lld values a row; ids are int32", (long long)n);
    const unsigned blocks = (unsigned)(m < (1 << 20) ? m : (1 << 20));
    if (k == 1)
        argmax_kernel<<<blocks, TK_THREADS, 0, s->s>>>(m, n, x, x_stride, ids, vals);
    else
        topk_kernel<<<blocks, TK_THREADS, 0, s->s>>>(m, n, x, x_stride, k, ids, vals);
    return tdc_launched("topk", err);
}
