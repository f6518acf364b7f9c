/* The reference kernel: one token at a time, one head at a time, in plain C.
 * Every vector kernel is tested against this one. */
#include <math.h>
#include <string.h>

#include "cpu/attention_impl.h"
#include "cpu/kv_cache.h"

static float elem(const uint16_t *tile, size_t i, td_dtype dt) {
    return dt == TD_DTYPE_BF16 ? td_bf16_to_f32(tile[i]) : td_f16_to_f32(tile[i]);
}

void td_attn_kernel_scalar(const td_attn_chunk *c) {
    const int32_t G = c->group, D = c->head_dim, T = c->block_tokens, nq = c->n_kv * G;
    td_attn_chunk_reset(c);

    for (int32_t tok = 0; tok < c->n_tokens; tok++) {
        const int32_t t = tok % T;
        const uint8_t *tiles = c->pool + (size_t)c->blocks[tok / T] * c->block_bytes + c->tile_offset;
        for (int32_t h = 0; h < nq; h++) {
            const uint8_t *head = tiles + (size_t)(h / G) * 2 * c->tile_bytes;
            const uint16_t *K = (const uint16_t *)head, *V = (const uint16_t *)(head + c->tile_bytes);
            const float *q = c->q + (size_t)h * D;
            float *acc = c->acc + (size_t)h * D;
            float s = 0.0f;
            for (int32_t d = 0; d < D; d++)
                s += q[d] * elem(K, td_kv_k_index(T, t, d), c->dtype);
            if (s > c->m[h]) { /* new running max: rescale what came before */
                float r = exp2f(c->m[h] - s);
                c->l[h] *= r;
                for (int32_t d = 0; d < D; d++)
                    acc[d] *= r;
                c->m[h] = s;
            }
            float p = exp2f(s - c->m[h]);
            c->l[h] += p;
            for (int32_t d = 0; d < D; d++)
                acc[d] += p * elem(V, td_kv_v_index(D, t, d), c->dtype);
        }
    }
}
