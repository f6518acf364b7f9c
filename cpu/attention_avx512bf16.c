/* AVX-512 decode attention with vdpbf16ps for bf16 caches: each instruction
 * multiplies 32 bf16 pairs and accumulates 16 f32 sums, without widening.
 * The pair-interleaved tiles (cpu/kv_cache.h) are exactly the operand layout
 * it wants: a K row pairs dims (2p, 2p+1) per token, a V row pairs tokens
 * (2s, 2s+1) per dim, so neither product needs a horizontal sum.
 *
 * The other operand must be bf16 too: the scaled query and the softmax
 * weights are rounded to bf16 (as GPU flash-attention kernels do); the row
 * sum adds the rounded weights, so the output stays a convex combination of
 * V rows. f16 caches take the f32 path of attention_avx512.c.
 *
 * Same passes as attention_avx512.c: 32 tokens of one kv head, each q pair
 * broadcast feeding two instructions, P.V over two 16-dim column blocks, the
 * next pass prefetched row by row. Whether it beats the f32 path depends on
 * the CPU's vdpbf16ps throughput: bench/bench_attention measures both. */
#include <math.h>
#include <string.h>

#include "cpu/attention_impl.h"
#include "cpu/simd_avx512.h"

#define MAX_HEADS 4

TD_INLINE __m512bh as_bh(__m512i x) { return (__m512bh)x; }
TD_INLINE __m512i bcast(uint32_t pair) { return _mm512_set1_epi32((int)pair); }

/* acc[j..j+16*JB) += p . V over the valid pairs of one sub-tile; pb: the
 * sub-tile's weights as bf16 pairs, [h][8]. */
TD_INLINE void pv(const td_attn_chunk *c, const uint16_t *V, int n, const uint32_t *pb, const int HG, int j,
                  const int JB, __m512 (*a0)[2], __m512 (*a1)[2], const char *pfv) {
    const int D = c->head_dim, pairs = n / 2;
    const uint16_t *vrow = V + (size_t)j * 2;
    int sp = 0;
    for (; sp < pairs; sp++, vrow += (size_t)D * 2) {
        if (pfv && (j / 32 * 8 + sp) * 2 < D / 2) {
            TD_ATTN_PREFETCH(pfv + (size_t)(j / 32 * 8 + sp) * 128);
            TD_ATTN_PREFETCH(pfv + (size_t)(j / 32 * 8 + sp) * 128 + 64);
        }
        __m512i x[2];
        for (int u = 0; u < JB; u++)
            x[u] = _mm512_loadu_si512(vrow + u * 32);
        for (int h = 0; h < HG; h++) {
            const __m512i w = bcast(pb[h * 16 + sp]);
            for (int u = 0; u < JB; u++) { /* even and odd pairs in separate chains */
                if (sp & 1)
                    a1[h][u] = _mm512_dpbf16_ps(a1[h][u], as_bh(x[u]), as_bh(w));
                else
                    a0[h][u] = _mm512_dpbf16_ps(a0[h][u], as_bh(x[u]), as_bh(w));
            }
        }
    }
    if (n & 1) { /* a lone last token: zero the second half of its pair row, whatever the memory holds */
        for (int u = 0; u < JB; u++) {
            __m512i x = _mm512_maskz_mov_epi16(0x55555555u, _mm512_loadu_si512(vrow + u * 32));
            for (int h = 0; h < HG; h++)
                a1[h][u] = _mm512_dpbf16_ps(a1[h][u], as_bh(x), as_bh(bcast(pb[h * 16 + pairs])));
        }
    }
}

TD_INLINE void pv_block(const td_attn_chunk *c, const td_attn_pass *ps, const uint32_t *pb, int h0, const int HG, int j,
                        const int JB) {
    const int D = c->head_dim;
    __m512 a0[MAX_HEADS][2], a1[MAX_HEADS][2];
    for (int h = 0; h < HG; h++)
        for (int u = 0; u < JB; u++) {
            a0[h][u] = _mm512_loadu_ps(c->acc + (size_t)(h0 + h) * D + j + u * 16);
            a1[h][u] = _mm512_setzero_ps();
        }
    pv(c, ps->va, ps->na, pb, HG, j, JB, a0, a1, ps->pfk[0] ? ps->pfv[0] : NULL);
    if (ps->nb)
        pv(c, ps->vb, ps->nb, pb + 8, HG, j, JB, a0, a1, ps->pfk[0] ? ps->pfv[1] : NULL);
    for (int h = 0; h < HG; h++)
        for (int u = 0; u < JB; u++)
            _mm512_storeu_ps(c->acc + (size_t)(h0 + h) * D + j + u * 16, _mm512_add_ps(a0[h][u], a1[h][u]));
}

/* pb: [MAX_HEADS][16] weight pairs of the pass; lv: [nq][16] partial sums. */
TD_INLINE void run_pass(const td_attn_chunk *c, const td_attn_pass *ps, int h0, const int HG, const uint32_t *qb,
                        uint32_t *pb, float *lv) {
    const int D = c->head_dim, T = c->block_tokens, P = D / 2;

    /* scores: sub-tiles a and b, alternate rows in separate chains */
    __m512 sa0[MAX_HEADS], sa1[MAX_HEADS], sb0[MAX_HEADS], sb1[MAX_HEADS];
    for (int h = 0; h < HG; h++)
        sa0[h] = sa1[h] = sb0[h] = sb1[h] = _mm512_setzero_ps();
    const uint16_t *ka = ps->ka, *kb = ps->kb;
    for (int r = 0; r < P; r += 2, ka += (size_t)T * 4, kb += (size_t)T * 4) {
        if (ps->pfk[0]) {
            for (int i = 0; i < 2; i++) {
                TD_ATTN_PREFETCH(ps->pfk[0] + (size_t)(r + i) * T * 4);
                TD_ATTN_PREFETCH(ps->pfk[1] + (size_t)(r + i) * T * 4);
            }
        }
        const __m512i xa0 = _mm512_loadu_si512(ka), xb0 = _mm512_loadu_si512(kb);
        const __m512i xa1 = _mm512_loadu_si512(ka + (size_t)T * 2), xb1 = _mm512_loadu_si512(kb + (size_t)T * 2);
        for (int h = 0; h < HG; h++) {
            const __m512i q0 = bcast(qb[(size_t)(h0 + h) * P + r]), q1 = bcast(qb[(size_t)(h0 + h) * P + r + 1]);
            sa0[h] = _mm512_dpbf16_ps(sa0[h], as_bh(xa0), as_bh(q0));
            sb0[h] = _mm512_dpbf16_ps(sb0[h], as_bh(xb0), as_bh(q0));
            sa1[h] = _mm512_dpbf16_ps(sa1[h], as_bh(xa1), as_bh(q1));
            sb1[h] = _mm512_dpbf16_ps(sb1[h], as_bh(xb1), as_bh(q1));
        }
    }

    /* online softmax (lazy max, see TD_ATTN_MAX_SLACK); the weights are
     * rounded to bf16 and the row sum adds the rounded values */
    const __mmask16 va = td_lanes_avx512(ps->na), vb = td_lanes_avx512(ps->nb);
    for (int h = 0; h < HG; h++) {
        const int hh = h0 + h;
        __m512 wa, wb;
        td_softmax_step_avx512(_mm512_add_ps(sa0[h], sa1[h]), _mm512_add_ps(sb0[h], sb1[h]), va, vb, TD_ATTN_MAX_SLACK,
                               &c->m[hh], lv + hh * 16, c->acc + (size_t)hh * D, D, &wa, &wb);
        __m256i pa = (__m256i)_mm512_cvtneps_pbh(wa), pbv = (__m256i)_mm512_cvtneps_pbh(wb);
        __m512 ra = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(pa), 16));
        __m512 rb = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(pbv), 16));
        _mm512_store_ps(lv + hh * 16, _mm512_add_ps(_mm512_load_ps(lv + hh * 16), _mm512_add_ps(ra, rb)));
        _mm256_store_si256((__m256i *)(pb + h * 16), pa);
        _mm256_store_si256((__m256i *)(pb + h * 16 + 8), pbv);
    }

    int j = 0;
    for (; j + 32 <= D; j += 32)
        pv_block(c, ps, pb, h0, HG, j, 2);
    if (j < D)
        pv_block(c, ps, pb, h0, HG, j, 1);
}

void td_attn_kernel_avx512bf16(const td_attn_chunk *c) {
    if (c->dtype != TD_DTYPE_BF16) {
        td_attn_kernel_avx512(c);
        return;
    }
    const int G = c->group, D = c->head_dim, P = D / 2, nq = c->n_kv * G;
    td_attn_chunk_reset(c);
    /* scratch: weight pairs [8][16] | row sums [nq][16] | q as bf16 pairs [nq][P] */
    uint32_t *pb = c->scratch;
    float *lv = (float *)(pb + 8 * 32);
    uint32_t *qb = (uint32_t *)(lv + (size_t)nq * 16);
    memset(lv, 0, (size_t)nq * 16 * sizeof *lv);
    for (int i = 0; i < nq * P; i++)
        qb[i] = (uint32_t)td_f32_to_bf16(c->q[2 * i]) | (uint32_t)td_f32_to_bf16(c->q[2 * i + 1]) << 16;

    for (int pos = 0; pos < c->n_tokens; pos += 32) {
        const td_attn_pos at = td_attn_pos_at(c, pos);
        for (int kh = 0; kh < c->n_kv; kh++) {
            td_attn_pass ps = td_attn_pass_at(c, &at, kh);
            for (int h0 = kh * G; h0 < (kh + 1) * G; h0 += MAX_HEADS, ps.pfk[0] = NULL) {
                switch ((kh + 1) * G - h0 < MAX_HEADS ? (kh + 1) * G - h0 : MAX_HEADS) {
                case 1: run_pass(c, &ps, h0, 1, qb, pb, lv); break;
                case 2: run_pass(c, &ps, h0, 2, qb, pb, lv); break;
                case 3: run_pass(c, &ps, h0, 3, qb, pb, lv); break;
                default: run_pass(c, &ps, h0, 4, qb, pb, lv); break;
                }
            }
        }
    }
    for (int h = 0; h < nq; h++)
        c->l[h] = _mm512_reduce_add_ps(_mm512_load_ps(lv + h * 16));
}
