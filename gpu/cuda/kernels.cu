// The row kernels of the CUDA backend: embedding gather, RMSNorm, RoPE,
// SwiGLU, residual add and KV append. Each computes what its host
// counterpart in cpu/ops.h (cpu/kv_cache.h for the append) computes, in the
// same precision and order where that decides the rounding.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "gpu/cuda/cuda_impl.h"

namespace {

__device__ inline void store_out(void *out, int64_t i, float v, bool bf16) {
    if (bf16)
        ((__nv_bfloat16 *)out)[i] = __float2bfloat16_rn(v);
    else
        ((float *)out)[i] = v;
}

// ---- embed ------------------------------------------------------------------------

__global__ void embed_kernel(const void *table, bool bf16, int64_t n_rows, int64_t dim, const int32_t *ids, int64_t n,
                             float *out) {
    for (int64_t r = blockIdx.y; r < n; r += gridDim.y) {
        const int64_t id = ids[r];
        const bool in = id >= 0 && id < n_rows;
        float *o = out + r * dim;
        for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < dim;
             j += (int64_t)gridDim.x * blockDim.x) {
            float v = 0.0f;
            if (in)
                v = bf16 ? __bfloat162float(((const __nv_bfloat16 *)table)[id * dim + j])
                         : ((const float *)table)[id * dim + j];
            o[j] = v;
        }
    }
}

// ---- rmsnorm ------------------------------------------------------------------------

constexpr int NORM_THREADS = 256;

// One block per row. The sum of squares is in double, as the host's is:
// a float's square is exact in double, so only the summation order differs,
// and the scale 1 / sqrt(mean + eps) rounds to the same float.
__global__ void __launch_bounds__(NORM_THREADS)
    rmsnorm_kernel(int64_t m, int64_t n, const float *x, int64_t xs, const float *w, float eps, void *out, int64_t os,
                   bool bf16) {
    __shared__ double part[NORM_THREADS / 32];
    __shared__ float scale;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int64_t r = blockIdx.x; r < m; r += gridDim.x) {
        const float *xr = x + r * xs;
        double ss = 0.0;
        for (int64_t i = threadIdx.x; i < n; i += NORM_THREADS) {
            const double v = xr[i];
            ss += v * v;
        }
        for (int o = 16; o > 0; o >>= 1)
            ss += __shfl_xor_sync(0xffffffffu, ss, o);
        if (lane == 0)
            part[warp] = ss;
        __syncthreads();
        if (threadIdx.x == 0) {
            double t = 0.0;
            for (int i = 0; i < NORM_THREADS / 32; i++)
                t += part[i];
            scale = (float)(1.0 / sqrt(t / (double)n + (double)eps));
        }
        __syncthreads();
        const float sc = scale;
        for (int64_t i = threadIdx.x; i < n; i += NORM_THREADS)
            store_out(out, r * os + i, xr[i] * sc * w[i], bf16);
        __syncthreads(); // part and scale are the next row's
    }
}

// ---- rope ----------------------------------------------------------------------------

// Thread per (row, pair): the angle and its cos / sin in double, as
// td_rope_angles computes them, once for all heads. The rotation uses
// explicit roundings so that the compiler's FMA contraction does not make
// it differ from the host's separate multiply and add.
__global__ void rope_kernel(int64_t m, float *x, int64_t xs, int32_t n_heads, int32_t head_dim, int32_t half,
                            const int32_t *pos, const double *inv_freq) {
    for (int64_t r = blockIdx.y; r < m; r += gridDim.y) {
        const double p = (double)pos[r];
        float *xr = x + r * xs;
        for (int32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < half; i += gridDim.x * blockDim.x) {
            double sn, cs;
            sincos(p * inv_freq[i], &sn, &cs);
            const float c = (float)cs, s = (float)sn;
            for (int32_t h = 0; h < n_heads; h++) {
                float *v = xr + (int64_t)h * head_dim + 2 * i;
                const float a = v[0], b = v[1];
                v[0] = __fadd_rn(__fmul_rn(a, c), __fmul_rn(b, -s));
                v[1] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
            }
        }
    }
}

// ---- swiglu, add ------------------------------------------------------------------------

__global__ void swiglu_kernel(int64_t m, int64_t n, const float *gu, void *out, bool bf16) {
    for (int64_t r = blockIdx.y; r < m; r += gridDim.y) {
        const float *g = gu + r * 2 * n, *u = g + n;
        for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (int64_t)gridDim.x * blockDim.x) {
            const float gj = g[j];
            store_out(out, r * n + j, gj / (1.0f + expf(-gj)) * u[j], bf16);
        }
    }
}

__global__ void add_kernel(int64_t m, int64_t n, float *y, int64_t ys, const float *x, int64_t xs) {
    for (int64_t r = blockIdx.y; r < m; r += gridDim.y)
        for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (int64_t)gridDim.x * blockDim.x)
            y[r * ys + j] += x[r * xs + j];
}

// ---- kv_append ----------------------------------------------------------------------------

template <bool BF16> __device__ inline uint16_t to_cache(float f) {
    if (BF16)
        return __bfloat16_as_ushort(__float2bfloat16_rn(f));
    return __half_as_ushort(__float2half_rn(f));
}

// Thread per (row, kv head, dim pair); a slot outside the pool is skipped.
// A K pair (t, 2p), (t, 2p + 1) is one
// 32-bit word of the K tile; the V elements of a pair belong to two 32-bit
// words each shared with the neighbouring token, which another row may be
// writing at the same time, so V is stored 16 bits at a time.
template <bool BF16>
__global__ void kv_append_kernel(uint8_t *pool, int64_t pool_tokens, size_t block_bytes, size_t tile_bytes,
                                 size_t layer_offset, int32_t n_kv, int32_t head_dim, int32_t block_tokens, int64_t n,
                                 const float *k, int64_t ks, const float *v, int64_t vs, const int32_t *slots) {
    const int32_t half = head_dim / 2, items = n_kv * half;
    for (int64_t r = blockIdx.y; r < n; r += gridDim.y) {
        const int32_t slot = slots[r];
        if (slot < 0 || slot >= pool_tokens)
            continue;
        const int32_t t = slot % block_tokens;
        uint8_t *blk = pool + (size_t)(slot / block_tokens) * block_bytes + layer_offset;
        for (int32_t it = blockIdx.x * blockDim.x + threadIdx.x; it < items; it += gridDim.x * blockDim.x) {
            const int32_t h = it / half, p = it % half, d = 2 * p;
            uint8_t *tile = blk + (size_t)h * 2 * tile_bytes;
            const float *kr = k + r * ks + (int64_t)h * head_dim + d;
            const float *vr = v + r * vs + (int64_t)h * head_dim + d;
            ((uint32_t *)tile)[(size_t)p * block_tokens + t] =
                (uint32_t)to_cache<BF16>(kr[0]) | (uint32_t)to_cache<BF16>(kr[1]) << 16;
            // td_kv_v_index(head_dim, t, d) and (.., d + 1): the host helper is not device code
            uint16_t *V = (uint16_t *)(tile + tile_bytes) + ((size_t)(t >> 1) * head_dim + d) * 2 + (t & 1);
            V[0] = to_cache<BF16>(vr[0]);
            V[2] = to_cache<BF16>(vr[1]);
        }
    }
}

// The emulated device's checks and messages (gpu/emu/emu.c), so that both
// backends answer a bad argument alike.
tandem_status need(bool ok, const char *call, const char *what, td_error *err) {
    return ok ? TANDEM_OK : td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: %s", call, what);
}

} // namespace

tandem_status tdc_embed(td_device *d, td_stream *s, const void *table, td_dtype table_dtype, int64_t n_rows,
                        int64_t dim, const int32_t *ids, int64_t n, float *out, td_error *err) {
    tandem_status st = tdc_enter_stream(d, s, "embed", err);
    if (st || (st = need(table && ids && out, "embed", "null table, ids or out", err)) ||
        (st = td_dev_check_rows("embed", n, dim, dim, err)) || (st = need(n_rows >= 1, "embed", "empty table", err)))
        return st;
    if (table_dtype != TD_DTYPE_F32 && table_dtype != TD_DTYPE_BF16)
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "embed: table dtype %s (f32 or bf16)", td_dtype_name(table_dtype));
    const dim3 grid(tdc_grid_cols(dim, 256), tdc_grid_rows(n));
    embed_kernel<<<grid, 256, 0, s->s>>>(table, table_dtype == TD_DTYPE_BF16, n_rows, dim, ids, n, out);
    return tdc_launched("embed", err);
}

tandem_status tdc_rmsnorm(td_device *d, td_stream *s, int64_t m, int64_t n, const float *x, int64_t x_stride,
                          const float *w, float eps, void *out, int64_t out_stride, td_dtype out_dtype, td_error *err) {
    tandem_status st = tdc_enter_stream(d, s, "rmsnorm", err);
    if (st || (st = need(x && w && out, "rmsnorm", "null x, w or out", err)) ||
        (st = td_dev_check_rows("rmsnorm (x)", m, n, x_stride, err)) ||
        (st = td_dev_check_rows("rmsnorm (out)", m, n, out_stride, err)) ||
        (st = td_dev_check_out_dtype("rmsnorm", out_dtype, err)))
        return st;
    const unsigned blocks = (unsigned)(m < (1 << 20) ? m : (1 << 20));
    rmsnorm_kernel<<<blocks, NORM_THREADS, 0, s->s>>>(m, n, x, x_stride, w, eps, out, out_stride,
                                                      out_dtype == TD_DTYPE_BF16);
    return tdc_launched("rmsnorm", err);
}

tandem_status tdc_rope(td_device *d, td_stream *s, int64_t m, float *x, int64_t x_stride, int32_t n_heads,
                       int32_t head_dim, int32_t rope_dim, const int32_t *pos, const double *inv_freq, td_error *err) {
    tandem_status st = tdc_enter_stream(d, s, "rope", err);
    if (st || (st = need(x && pos && inv_freq, "rope", "null x, pos or inv_freq", err)) ||
        (st = td_dev_check_rows("rope", m, (int64_t)n_heads * head_dim, x_stride, err)) ||
        (st = need(n_heads >= 1 && head_dim >= 2 && head_dim <= TD_KV_MAX_HEAD_DIM && rope_dim >= 2 &&
                       rope_dim % 2 == 0 && rope_dim <= head_dim,
                   "rope", "needs heads >= 1, an even rope_dim <= head_dim <= 256", err)))
        return st;
    const int32_t half = rope_dim / 2;
    const dim3 grid(tdc_grid_cols(half, 64), tdc_grid_rows(m));
    rope_kernel<<<grid, 64, 0, s->s>>>(m, x, x_stride, n_heads, head_dim, half, pos, inv_freq);
    return tdc_launched("rope", err);
}

tandem_status tdc_swiglu(td_device *d, td_stream *s, int64_t m, int64_t n, const float *gu, void *out,
                         td_dtype out_dtype, td_error *err) {
    tandem_status st = tdc_enter_stream(d, s, "swiglu", err);
    if (st || (st = need(gu && out, "swiglu", "null gu or out", err)) ||
        (st = td_dev_check_rows("swiglu", m, n, n, err)) || (st = td_dev_check_out_dtype("swiglu", out_dtype, err)))
        return st;
    const dim3 grid(tdc_grid_cols(n, 256), tdc_grid_rows(m));
    swiglu_kernel<<<grid, 256, 0, s->s>>>(m, n, gu, out, out_dtype == TD_DTYPE_BF16);
    return tdc_launched("swiglu", err);
}

tandem_status tdc_add(td_device *d, td_stream *s, int64_t m, int64_t n, float *y, int64_t y_stride, const float *x,
                      int64_t x_stride, td_error *err) {
    tandem_status st = tdc_enter_stream(d, s, "add", err);
    if (st || (st = need(y && x, "add", "null x or y", err)) ||
        (st = td_dev_check_rows("add (y)", m, n, y_stride, err)) ||
        (st = td_dev_check_rows("add (x)", m, n, x_stride, err)))
        return st;
    const dim3 grid(tdc_grid_cols(n, 256), tdc_grid_rows(m));
    add_kernel<<<grid, 256, 0, s->s>>>(m, n, y, y_stride, x, x_stride);
    return tdc_launched("add", err);
}

tandem_status tdc_kv_append(td_device *d, td_stream *s, const td_dkv *kv, int32_t layer, int64_t n, const float *k,
                            int64_t k_stride, const float *v, int64_t v_stride, const int32_t *slots, td_error *err) {
    tandem_status st = tdc_enter_stream(d, s, "kv_append", err);
    if (st)
        return st;
    if (!kv)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "kv_append: null KV pool");
    if ((st = td_dev_check_dkv(kv, layer, "kv_append", err)) ||
        (st = need(k && v && slots, "kv_append", "null k, v or slots", err)))
        return st;
    const td_kv_layout *l = &kv->layout;
    const int64_t row = (int64_t)l->n_kv_heads * l->head_dim;
    if ((st = td_dev_check_rows("kv_append (k)", n, row, k_stride, err)) ||
        (st = td_dev_check_rows("kv_append (v)", n, row, v_stride, err)))
        return st;
    if ((uintptr_t)kv->pool % 4)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "kv_append: KV pool %p is not 4-byte aligned", kv->pool);
    const int32_t items = l->n_kv_heads * (l->head_dim / 2);
    const dim3 grid(tdc_grid_cols(items, 128), tdc_grid_rows(n));
    const int64_t pool_tokens = (int64_t)kv->n_blocks * l->block_tokens;
    const size_t layer_offset = td_kv_tile_offset(l, layer, 0);
    if (l->dtype == TD_DTYPE_BF16)
        kv_append_kernel<true><<<grid, 128, 0, s->s>>>((uint8_t *)kv->pool, pool_tokens, l->block_bytes, l->tile_bytes,
                                                       layer_offset, l->n_kv_heads, l->head_dim, l->block_tokens, n, k,
                                                       k_stride, v, v_stride, slots);
    else
        kv_append_kernel<false><<<grid, 128, 0, s->s>>>((uint8_t *)kv->pool, pool_tokens, l->block_bytes, l->tile_bytes,
                                                        layer_offset, l->n_kv_heads, l->head_dim, l->block_tokens, n, k,
                                                        k_stride, v, v_stride, slots);
    return tdc_launched("kv_append", err);
}
