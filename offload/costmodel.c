/* The cost model and the plan search (offload/costmodel.h). */
#include "offload/costmodel.h"

#include <math.h>
#include <string.h>

/* Rows per FFN block, as engine/forward_device.c issues the FFN. */
#define FFN_ROWS 256
/* KV block size the engine allocates in (cpu/kv_cache.h's default). */
#define BLOCK_TOKENS 16

double td_cost_kv_bytes_per_token(const td_cost_shape *m) {
    return 2.0 * m->n_layers * m->n_kv_heads * m->head_dim * 2;
}

static double widest(const td_cost_shape *m) {
    double w = m->n_embd;
    if ((double)m->n_heads * m->head_dim > w)
        w = (double)m->n_heads * m->head_dim;
    return m->n_ff > w ? m->n_ff : w;
}

double td_cost_device_fixed_bytes(const td_cost_shape *m, int32_t max_tokens) {
    const double E = m->n_embd, Q = (double)m->n_heads * m->head_dim, KV = (double)m->n_kv_heads * m->head_dim,
                 W = Q + 2 * KV, F = m->n_ff, V = m->n_vocab, T = max_tokens;
    const double linears = m->n_layers * (E * W + Q * E + E * 2 * F + F * E) * 2 + V * E * 2; /* bf16, head */
    const double rest = V * E * 4 + (2.0 * m->n_layers + 1) * E * 4;                          /* f32 embedding, norms */
    const double ws = T * E * 4 * 2 + T * W * 4 + (T < FFN_ROWS ? T : FFN_ROWS) * 2 * F * 4 + T * widest(m) * 2 +
                      T * V * 4 + T * Q * 2;
    return linears + rest + ws;
}

/* A row kernel moving `bytes` through device memory. */
static double row_op(const td_profile *p, double bytes) { return p->dev_launch_s + bytes / (p->dev_row_gbps * 1e9); }

/* The profile's GEMM times are measured whole: the launch is in them. */
static double gemm(const td_profile *p, double m, double n, double k) {
    return td_profile_gemm_seconds(p, (int64_t)m, (int64_t)n, (int64_t)k);
}

static double copy_s(const td_profile *p, double bytes, bool h2d) {
    if (bytes <= 0)
        return 0;
    return p->link_latency_s + bytes / ((h2d ? p->h2d_gbps : p->d2h_gbps) * 1e9);
}

/* norm, QKV, RoPE of T rows */
static double pre_stage(const td_profile *p, const td_cost_shape *m, double T) {
    const double E = m->n_embd, Q = (double)m->n_heads * m->head_dim, KV = (double)m->n_kv_heads * m->head_dim,
                 W = Q + 2 * KV;
    return row_op(p, T * E * 6) + gemm(p, T, W, E) + row_op(p, T * (Q + KV) * 8);
}

/* KV append and attention of nd device-placed sequences of ctx tokens */
static double dattn_stage(const td_profile *p, const td_cost_shape *m, double nd, double ctx) {
    const double KV = (double)m->n_kv_heads * m->head_dim;
    if (nd <= 0)
        return 0;
    return row_op(p, nd * 2 * KV * 6) + p->dev_launch_s + nd * ctx * 2 * KV * 2 / (p->dev_attn_gbps * 1e9);
}

/* O projection and the FFN in blocks of FFN_ROWS rows */
static double post_stage(const td_profile *p, const td_cost_shape *m, double T) {
    const double E = m->n_embd, Q = (double)m->n_heads * m->head_dim, F = m->n_ff;
    double t = gemm(p, T, E, Q);
    for (double r0 = 0; r0 < T; r0 += FFN_ROWS) {
        const double n = T - r0 < FFN_ROWS ? T - r0 : FFN_ROWS;
        t += row_op(p, n * E * 6) + gemm(p, n, 2 * F, E) + row_op(p, n * (2 * F * 4 + F * 2)) + gemm(p, n, E, F);
    }
    return t;
}

/* CPU attention of nh sequences of ctx tokens, one layer */
static double attend_stage(const td_profile *p, const td_cost_shape *m, double nh, double ctx, int threads) {
    if (nh <= 0)
        return 0;
    const double bytes = nh * ctx * 2.0 * m->n_kv_heads * m->head_dim * 2;
    return p->cpu_attn_call_s + bytes / td_profile_cpu_attn_bps(p, threads, (int64_t)ctx);
}

void td_cost_step(const td_profile *p, const td_cost_shape *m, const td_cost_batch *b, td_sim_step *s) {
    const double E = m->n_embd, Q = (double)m->n_heads * m->head_dim, KV = (double)m->n_kv_heads * m->head_dim,
                 W = Q + 2 * KV, V = m->n_vocab, B = b->batch, ctx = b->ctx;
    memset(s, 0, sizeof *s);
    s->n_layers = m->n_layers;
    s->handoff = p->handoff_s;
    /* step metadata up, embedding; then the logits rows' norm, head, logits down */
    s->before = copy_s(p, B * (4 * 10 + ceil(ctx / BLOCK_TOKENS) * 4), true) + row_op(p, B * E * 4);
    s->after = row_op(p, B * E * 8) + row_op(p, B * E * 6) + gemm(p, B, V, E) + copy_s(p, B * V * 4, false);
    const int32_t nh = b->n_host < 0 ? 0 : b->n_host > b->batch ? b->batch : b->n_host, nd = b->batch - nh;
    const td_cost_calib cal = b->calib ? *b->calib : TD_COST_CALIB_NONE;
    s->handoff *= cal.handoff;
    s->before *= cal.device;
    s->after *= cal.device;
    if (nh == 0) { /* mode device */
        s->n_sub = 0;
        s->dev_layer = (pre_stage(p, m, B) + dattn_stage(p, m, nd, ctx) + post_stage(p, m, B)) * cal.device;
        return;
    }
    /* the engine's split (engine/forward_device.c, order_and_split): device
     * sequences in sub-batch 0, host ones by halves of their CPU work */
    int32_t first = b->host_in_first;
    if (first < 0)
        first = nh < 2 ? nh : (int32_t)ceil((nh - 1) / 2.0);
    if (nd == 0 && first < 1 && nh >= 2)
        first = 1;
    int32_t n_sub = b->n_sub > 0 ? b->n_sub : first < nh ? 2 : 1;
    if (n_sub == 1)
        first = nh;
    s->n_sub = n_sub;
    const double hosts[2] = {first, nh - first}, toks[2] = {nd + first, nh - first};
    for (int32_t k = 0; k < n_sub; k++) {
        s->pre[k] = pre_stage(p, m, toks[k]) * cal.device;
        s->dattn[k] = (k == 0 ? dattn_stage(p, m, nd, ctx) : 0) * cal.device;
        s->down[k] = copy_s(p, hosts[k] * W * 4, false) * cal.link;
        s->attend[k] = attend_stage(p, m, hosts[k], ctx, b->threads) * cal.cpu;
        s->up[k] = copy_s(p, hosts[k] * Q * 2, true) * cal.link;
        s->post[k] = post_stage(p, m, toks[k]) * cal.device;
    }
}

void td_cost_calib_update(td_cost_calib *c, const td_sim_result *predicted, const td_sim_result *measured, double w,
                          double min_s) {
    const double pred[3] = {predicted->device, predicted->d2h + predicted->h2d, predicted->cpu},
                 meas[3] = {measured->device, measured->d2h + measured->h2d, measured->cpu};
    double *f[3] = {&c->device, &c->link, &c->cpu};
    for (int i = 0; i < 3; i++) {
        if (!(pred[i] >= min_s && meas[i] >= min_s))
            continue;
        const double r = meas[i] / pred[i];
        *f[i] = c->steps == 0 ? r : (1 - w) * *f[i] + w * r;
    }
    c->steps++;
}

void td_cost_calibrate(td_cost_calib *c, const td_profile *p, const td_cost_shape *m, const td_cost_batch *b,
                       const td_sim_result *measured, double w, double min_s) {
    td_cost_batch raw = *b;
    raw.calib = NULL;
    td_sim_step s;
    td_cost_step(p, m, &raw, &s);
    td_sim_result predicted = td_sim_run(&s);
    predicted.device -= s.before + s.after; /* the pipeline's busy times cover its layers only */
    td_cost_calib_update(c, &predicted, measured, w, min_s);
    /* the hand-offs: the factor at which the simulated step, with the
     * calibrated busy times, is as long as the measured one (the step
     * grows with it monotonically, and faster than linearly once the
     * hand-offs stop hiding: bisection, not a ratio) */
    td_cost_calib busy = *c;
    busy.handoff = 1;
    raw.calib = &busy;
    td_cost_step(p, m, &raw, &s);
    const double h = s.handoff;
    s.handoff = 0;
    const double without = td_sim_run(&s).step;
    s.handoff = h;
    if (td_sim_run(&s).step - without >= min_s && measured->step > without) {
        double lo = 0, hi = 16;
        for (int i = 0; i < 40; i++) {
            s.handoff = h * (lo + hi) / 2;
            if (td_sim_run(&s).step < measured->step)
                lo = (lo + hi) / 2;
            else
                hi = (lo + hi) / 2;
        }
        const double r = (lo + hi) / 2;
        c->handoff = c->steps <= 1 ? r : (1 - w) * c->handoff + w * r;
    }
}

td_sim_result td_cost_predict(const td_profile *p, const td_cost_shape *m, const td_cost_batch *b) {
    td_sim_step s;
    td_cost_step(p, m, b, &s);
    return td_sim_run(&s);
}

void td_cost_plan_search(const td_profile *p, const td_cost_shape *m, int32_t batch, int32_t ctx,
                         const td_cost_limits *lim, td_cost_plan *out) {
    memset(out, 0, sizeof *out);
    out->chosen = -1;
    if (td_cost_device_fixed_bytes(m, batch) > lim->gpu_mem)
        return; /* the weights and the workspace do not fit: no mode runs */
    /* a sequence's blocks, with room for the token it decodes */
    const double seq_bytes = ceil((ctx + 1.0) / BLOCK_TOKENS) * BLOCK_TOKENS * td_cost_kv_bytes_per_token(m);
    /* the engine's device pool: 90% of what the weights and workspace leave */
    const double room = 0.9 * (lim->gpu_mem - td_cost_device_fixed_bytes(m, batch));
    int32_t dev_max = room > 0 ? (int32_t)floor(room / seq_bytes) : 0;
    int32_t host_max = (int32_t)floor(lim->host_kv / seq_bytes);
    if (dev_max > batch)
        dev_max = batch;
    if (host_max > batch)
        host_max = batch;
    td_sim_result best = {0};
    double best_tok = 0;
    out->device_batch = dev_max;
    if (dev_max > 0) {
        td_cost_batch b = {
            .batch = dev_max, .ctx = ctx, .threads = lim->threads, .host_in_first = -1, .calib = lim->calib};
        td_sim_result r = td_cost_predict(p, m, &b);
        out->device_tok_s = dev_max / r.step;
        best = r, best_tok = out->device_tok_s, out->chosen = 0;
    }
    if (host_max > 0) { /* cpu-attn: every sequence the host holds */
        td_cost_batch b = {.batch = host_max,
                           .ctx = ctx,
                           .n_host = host_max,
                           .threads = lim->threads,
                           .host_in_first = -1,
                           .calib = lim->calib};
        td_sim_result r = td_cost_predict(p, m, &b);
        out->cpu_attn_tok_s = host_max / r.step;
        if (out->cpu_attn_tok_s > best_tok)
            best = r, best_tok = out->cpu_attn_tok_s, out->chosen = 1;
    }
    /* hybrid: n_host sequences on the host, as many of the rest on the
     * device as fit there */
    int32_t lo = 1, hi = host_max;
    if (lim->host_seqs >= 0)
        lo = hi = lim->host_seqs;
    for (int32_t nh = lo; nh <= hi && nh <= batch; nh++) {
        const int32_t nd = batch - nh < dev_max ? batch - nh : dev_max;
        if (nd < 1) /* no device sequence: that is cpu-attn */
            break;
        /* the host sequences in one sub-batch beside the device's, or in
         * two (the engine runs whichever the model predicts faster) */
        for (int32_t sub = 1; sub <= (nh >= 2 ? 2 : 1); sub++) {
            td_cost_batch b = {.batch = nd + nh,
                               .ctx = ctx,
                               .n_host = nh,
                               .threads = lim->threads,
                               .host_in_first = -1,
                               .n_sub = sub,
                               .calib = lim->calib};
            td_sim_result r = td_cost_predict(p, m, &b);
            const double tok = (nd + nh) / r.step;
            if (tok > out->hybrid_tok_s) {
                out->hybrid_tok_s = tok;
                out->hybrid_host = nh;
                out->hybrid_sub = sub;
                if (tok > best_tok)
                    best = r, best_tok = tok, out->chosen = 2;
            }
        }
    }
    out->chosen_tok_s = best_tok;
    out->chosen_sim = best;
}
