/* AVX-512 decode attention, f32 arithmetic: bf16 and f16 caches are widened
 * to f32 in registers and multiplied with FMAs.
 *
 * Scores of 16 tokens live in the 16 lanes of a register (the K tile is
 * stored dim pairs x tokens, see cpu/kv_cache.h), so softmax needs no
 * transposes, and the weighted sum of V accumulates 16 dims per register.
 *
 * The work is bound by the load ports as much as by the FMA pipes: every FMA
 * takes one broadcast scalar (a q element, or a softmax weight). So a pass
 * covers 32 tokens (two 16-token sub-tiles), and each q broadcast feeds two
 * FMAs; P.V runs two 16-dim column blocks at once, and each weight broadcast
 * feeds two FMAs. Up to MAX_HEADS query heads of a group share every K and V
 * load; each head keeps four independent FMA chains. While a pass computes,
 * it prefetches the rows of the next pass (the next block is anywhere in the
 * pool, so the hardware prefetcher cannot guess it). */
#include <math.h>
#include <string.h>

#include "cpu/attention_impl.h"
#include "cpu/simd_avx512.h"

#define MAX_HEADS 4 /* 16 accumulators: 4 chains x 4 heads */

TD_INLINE void split(__m512i x, const int bf16, __m512 *lo, __m512 *hi) {
    if (bf16)
        td_split_bf16_avx512(x, lo, hi);
    else
        td_split_f16_avx512(x, lo, hi);
}

/* acc[j..j+16*JB) += p . V over the valid pairs of one sub-tile. */
TD_INLINE void pv(const td_attn_chunk *c, const uint16_t *V, int n, const float *p, int h0, const int HG, int j,
                  const int JB, const int bf16, __m512 (*ae)[2], __m512 (*ao)[2], const char *pfv) {
    const int D = c->head_dim, pairs = n / 2;
    (void)h0;
    const uint16_t *vrow = V + (size_t)j * 2;
    for (int sp = 0; sp < pairs; sp++, vrow += (size_t)D * 2) {
        if (pfv && (j / 32 * 8 + sp) * 2 < D / 2) { /* 2 of the D/2 lines of the next V sub-tile */
            TD_ATTN_PREFETCH(pfv + (size_t)(j / 32 * 8 + sp) * 128);
            TD_ATTN_PREFETCH(pfv + (size_t)(j / 32 * 8 + sp) * 128 + 64);
        }
        __m512 ev[2], od[2];
        for (int u = 0; u < JB; u++)
            split(_mm512_loadu_si512(vrow + u * 32), bf16, &ev[u], &od[u]);
        for (int h = 0; h < HG; h++) {
            const __m512 pe = _mm512_set1_ps(p[h * 32 + 2 * sp]), po = _mm512_set1_ps(p[h * 32 + 2 * sp + 1]);
            for (int u = 0; u < JB; u++) {
                ae[h][u] = _mm512_fmadd_ps(pe, ev[u], ae[h][u]);
                ao[h][u] = _mm512_fmadd_ps(po, od[u], ao[h][u]);
            }
        }
    }
    if (n & 1) { /* a lone last token: only the first half of its pair row is part of the sequence */
        for (int u = 0; u < JB; u++) {
            __m512 ev, od;
            split(_mm512_loadu_si512(vrow + u * 32), bf16, &ev, &od);
            for (int h = 0; h < HG; h++)
                ae[h][u] = _mm512_fmadd_ps(_mm512_set1_ps(p[h * 32 + 2 * pairs]), ev, ae[h][u]);
        }
    }
}

TD_INLINE void pv_block(const td_attn_chunk *c, const td_attn_pass *ps, const float *p, int h0, const int HG, int j,
                        const int JB, const int bf16) {
    const int D = c->head_dim;
    __m512 ae[MAX_HEADS][2], ao[MAX_HEADS][2];
    for (int h = 0; h < HG; h++)
        for (int u = 0; u < JB; u++) {
            ae[h][u] = _mm512_loadu_ps(c->acc + (size_t)(h0 + h) * D + j + u * 16);
            ao[h][u] = _mm512_setzero_ps();
        }
    pv(c, ps->va, ps->na, p, h0, HG, j, JB, bf16, ae, ao, ps->pfk[0] ? ps->pfv[0] : NULL);
    if (ps->nb)
        pv(c, ps->vb, ps->nb, p + 16, h0, HG, j, JB, bf16, ae, ao, ps->pfk[0] ? ps->pfv[1] : NULL);
    for (int h = 0; h < HG; h++)
        for (int u = 0; u < JB; u++)
            _mm512_storeu_ps(c->acc + (size_t)(h0 + h) * D + j + u * 16, _mm512_add_ps(ae[h][u], ao[h][u]));
}

TD_INLINE void run_pass(const td_attn_chunk *c, const td_attn_pass *ps, int h0, const int HG, const int bf16, float *pt,
                        float *lv) {
    const int D = c->head_dim, T = c->block_tokens;
    const float *q = c->q + (size_t)h0 * D;

    /* scores: sub-tile a and b, even and odd dims: four chains per head */
    __m512 sae[MAX_HEADS], sao[MAX_HEADS], sbe[MAX_HEADS], sbo[MAX_HEADS];
    for (int h = 0; h < HG; h++)
        sae[h] = sao[h] = sbe[h] = sbo[h] = _mm512_setzero_ps();
    const uint16_t *ka = ps->ka, *kb = ps->kb;
    for (int r = 0; r < D / 2; r++, ka += (size_t)T * 2, kb += (size_t)T * 2) {
        if (ps->pfk[0]) { /* row r of both next K sub-tiles */
            TD_ATTN_PREFETCH(ps->pfk[0] + (size_t)r * T * 4);
            TD_ATTN_PREFETCH(ps->pfk[1] + (size_t)r * T * 4);
        }
        __m512 ea, oa, eb, ob;
        split(_mm512_loadu_si512(ka), bf16, &ea, &oa);
        split(_mm512_loadu_si512(kb), bf16, &eb, &ob);
        for (int h = 0; h < HG; h++) {
            const __m512 qe = _mm512_set1_ps(q[(size_t)h * D + 2 * r]),
                         qo = _mm512_set1_ps(q[(size_t)h * D + 2 * r + 1]);
            sae[h] = _mm512_fmadd_ps(qe, ea, sae[h]);
            sao[h] = _mm512_fmadd_ps(qo, oa, sao[h]);
            sbe[h] = _mm512_fmadd_ps(qe, eb, sbe[h]);
            sbo[h] = _mm512_fmadd_ps(qo, ob, sbo[h]);
        }
    }

    /* online softmax over the 32 tokens; the row sum stays a vector (lv)
     * until the chunk ends */
    const __mmask16 va = td_lanes_avx512(ps->na), vb = td_lanes_avx512(ps->nb);
    for (int h = 0; h < HG; h++) {
        const int hh = h0 + h;
        __m512 pa, pb;
        td_softmax_step_avx512(_mm512_add_ps(sae[h], sao[h]), _mm512_add_ps(sbe[h], sbo[h]), va, vb, TD_ATTN_MAX_SLACK,
                               &c->m[hh], lv + hh * 16, c->acc + (size_t)hh * D, D, &pa, &pb);
        _mm512_store_ps(lv + hh * 16, _mm512_add_ps(_mm512_load_ps(lv + hh * 16), _mm512_add_ps(pa, pb)));
        _mm512_store_ps(pt + h * 32, pa);
        _mm512_store_ps(pt + h * 32 + 16, pb);
    }

    /* acc += p . V, two 16-dim column blocks at a time */
    int j = 0;
    for (; j + 32 <= D; j += 32)
        pv_block(c, ps, pt, h0, HG, j, 2, bf16);
    if (j < D)
        pv_block(c, ps, pt, h0, HG, j, 1, bf16);
}

TD_INLINE void chunk(const td_attn_chunk *c, const int bf16) {
    const int G = c->group, nq = c->n_kv * G;
    td_attn_chunk_reset(c);
    float *pt = c->scratch;  /* [MAX_HEADS][32] weights of a pass */
    float *lv = pt + 8 * 32; /* [nq][16] partial row sums */
    memset(lv, 0, (size_t)nq * 16 * sizeof *lv);

    for (int pos = 0; pos < c->n_tokens; pos += 32) {
        const td_attn_pos at = td_attn_pos_at(c, pos);
        for (int kh = 0; kh < c->n_kv; kh++) {
            td_attn_pass ps = td_attn_pass_at(c, &at, kh);
            for (int h0 = kh * G; h0 < (kh + 1) * G; h0 += MAX_HEADS, ps.pfk[0] = NULL) {
                switch ((kh + 1) * G - h0 < MAX_HEADS ? (kh + 1) * G - h0 : MAX_HEADS) {
                case 1: run_pass(c, &ps, h0, 1, bf16, pt, lv); break;
                case 2: run_pass(c, &ps, h0, 2, bf16, pt, lv); break;
                case 3: run_pass(c, &ps, h0, 3, bf16, pt, lv); break;
                default: run_pass(c, &ps, h0, 4, bf16, pt, lv); break;
                }
            }
        }
    }
    for (int h = 0; h < nq; h++)
        c->l[h] = _mm512_reduce_add_ps(_mm512_load_ps(lv + h * 16));
}

void td_attn_kernel_avx512(const td_attn_chunk *c) {
    if (c->dtype == TD_DTYPE_BF16)
        chunk(c, 1);
    else
        chunk(c, 0);
}
