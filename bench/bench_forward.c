/* Forward-pass benchmark: prefill and decode tokens per second of a real
 * model on the host, against the machine's own GEMM rate and read bandwidth
 * measured in the same run.
 *
 *   bench_forward [--model FILE] [--weights bf16|f32] [--batch LIST] [--prompt N] [--gen N]
 *                 [--threads N] [--step-tokens N] [--prefill-reps N] [--jsonl FILE]
 *
 * For each batch size B: B prompts of --prompt random tokens are prefilled
 * (as many whole prompts per step as --step-tokens allows: one GEMM per
 * layer over all their tokens), then B sequences decode --gen tokens, one
 * step of B tokens at a time. Before timing, one step of each shape runs
 * untimed (oneDNN builds a kernel per batch size on first use). The prefill
 * runs --prefill-reps times (default 3) on fresh sequences and the fastest
 * counts: at batch 16 it is one 0.3 s step, which a neighbour on a shared
 * machine can slow by half; the decode that follows is 128 steps.
 *
 * FLOPs count 2 per weight per token (the LM head only for the rows whose
 * logits are computed) plus attention, 4 x heads x head_dim per attended
 * position. Ratios: FLOP rate / the best rate of one large square bf16
 * GEMM (n = 2048) through the same oneDNN path; batch-1 decode also as
 * weight bytes per second / the read bandwidth of all threads; decode also
 * as the time the machine allows / the time taken ("xroof": per step, the
 * longer of the GEMMs at that rate and a read of the weights, plus a read of
 * the KV cache, both at the measured bandwidth). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"
#include "bench/bench_util.h"
#include "cpu/hostmem.h"
#include "cpu/kv_cache.h"
#include "engine/forward.h"
#include "engine/model.h"
#include "offload/hwprobe.h"

#define DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

typedef struct options {
    const char *model, *jsonl;
    td_weights weights;
    int batches[16], n_batches;
    int prompt, gen, threads, step_tokens, prefill_reps;
} options;

typedef struct phase {
    double seconds, flops;
    int64_t tokens;
    td_fwd_stats st;
} phase;

static void usage(FILE *f) {
    fprintf(f, "usage: bench_forward [--model FILE] [--weights bf16|f32] [--batch N,N...] [--prompt N] [--gen N]\n"
               "                     [--threads N] [--step-tokens N] [--prefill-reps N] [--jsonl FILE]\n"
               "  Defaults: --model " DEFAULT_MODEL ", bf16 weights, --batch 1,16,64,256,\n"
               "  --prompt 128, --gen 128, all threads, --step-tokens 2048, --prefill-reps 3, JSON lines to stdout.\n");
}

static void die(const char *what, const td_error *err) {
    fprintf(stderr, "bench_forward: %s: %s\n", what, err->msg);
    exit(1);
}

/* FLOPs of one token through the layers (not the head) attending ctx
 * positions, and of one row of the LM head. */
static double layer_flops(const td_llama_config *c, double ctx) {
    double E = c->n_embd, Q = (double)c->n_heads * c->head_dim, KV = (double)c->n_kv_heads * c->head_dim;
    double per_layer = 2.0 * (E * (Q + 2 * KV) + Q * E + 3.0 * E * c->n_ff) + 4.0 * Q * ctx;
    return per_layer * c->n_layers;
}
static double head_flops(const td_llama_config *c) { return 2.0 * c->n_embd * c->n_vocab; }

static void stats_diff(td_fwd_stats *d, const td_fwd_stats *a, const td_fwd_stats *b) {
    d->linear = b->linear - a->linear;
    d->attention = b->attention - a->attention;
    d->other = b->other - a->other;
    d->steps = b->steps - a->steps;
    d->tokens = b->tokens - a->tokens;
}

static uint32_t rng = 12345;
static int32_t random_token(int32_t n_vocab) {
    rng = rng * 1664525u + 1013904223u;
    return (int32_t)((rng >> 8) % (uint32_t)n_vocab);
}

/* Prefills prompts [first, first + n) of length P in steps of `per_step`
 * prompts, each step's prompts as one batch. */
static void prefill(td_forward *fw, td_kv_cache *kv, const td_model *m, const int32_t *seqs, int n, int P, int per_step,
                    int32_t *toks) {
    td_error err;
    td_fwd_seq s[256];
    for (int i = 0; i < n; i += per_step) {
        int k = n - i < per_step ? n - i : per_step;
        for (int j = 0; j < k; j++) {
            if (td_kv_seq_grow(kv, seqs[i + j], P, &err))
                die("kv grow", &err);
            for (int t = 0; t < P; t++)
                toks[j * P + t] = random_token(m->cfg.n_vocab);
            s[j] = (td_fwd_seq){
                .kv_seq = seqs[i + j], .pos = 0, .n_tokens = P, .tokens = toks + j * P, .logits = TD_LOGITS_LAST};
        }
        float *lg;
        int32_t rows;
        if (td_forward_step(fw, kv, s, k, &lg, &rows, &err))
            die("prefill step", &err);
    }
}

static void decode(td_forward *fw, td_kv_cache *kv, const td_model *m, const int32_t *seqs, int B, int steps,
                   int32_t *toks) {
    td_error err;
    td_fwd_seq s[256];
    for (int step = 0; step < steps; step++) {
        for (int j = 0; j < B; j++) {
            int32_t len = td_kv_seq_len(kv, seqs[j]);
            if (td_kv_seq_grow(kv, seqs[j], 1, &err))
                die("kv grow", &err);
            toks[j] = random_token(m->cfg.n_vocab);
            s[j] = (td_fwd_seq){
                .kv_seq = seqs[j], .pos = len, .n_tokens = 1, .tokens = toks + j, .logits = TD_LOGITS_LAST};
        }
        float *lg;
        int32_t rows;
        if (td_forward_step(fw, kv, s, B, &lg, &rows, &err))
            die("decode step", &err);
    }
}

int main(int argc, char **argv) {
    options o = {.model = DEFAULT_MODEL,
                 .weights = TD_WEIGHTS_BF16,
                 .prompt = 128,
                 .gen = 128,
                 .step_tokens = 2048,
                 .prefill_reps = 3};
    o.threads = omp_get_max_threads();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "--model") && v)
            o.model = v, i++;
        else if (!strcmp(a, "--weights") && v) {
            ok = !strcmp(v, "bf16") || !strcmp(v, "f32");
            o.weights = !strcmp(v, "f32") ? TD_WEIGHTS_F32 : TD_WEIGHTS_BF16;
            i++;
        } else if (!strcmp(a, "--batch") && v)
            ok = td_bench_parse_ints(v, o.batches, &o.n_batches), i++;
        else if (!strcmp(a, "--prompt") && v)
            ok = (o.prompt = atoi(v)) >= 1, i++;
        else if (!strcmp(a, "--gen") && v)
            ok = (o.gen = atoi(v)) >= 1, i++;
        else if (!strcmp(a, "--threads") && v)
            ok = (o.threads = atoi(v)) >= 1, i++;
        else if (!strcmp(a, "--step-tokens") && v)
            ok = (o.step_tokens = atoi(v)) >= 1, i++;
        else if (!strcmp(a, "--prefill-reps") && v)
            ok = (o.prefill_reps = atoi(v)) >= 1, i++;
        else if (!strcmp(a, "--jsonl") && v)
            o.jsonl = v, i++;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else
            ok = 0;
        if (!ok) {
            fprintf(stderr, "bench_forward: bad argument '%s'%s%s\n", a, v ? " " : "", v ? v : "");
            usage(stderr);
            return 2;
        }
    }
    if (!o.n_batches) {
        const int d[4] = {1, 16, 64, 256};
        memcpy(o.batches, d, sizeof d);
        o.n_batches = 4;
    }
    for (int i = 0; i < o.n_batches; i++)
        if (o.batches[i] > 256) {
            fprintf(stderr, "bench_forward: batch %d is above 256\n", o.batches[i]);
            return 2;
        }
    if (o.step_tokens < o.prompt)
        o.step_tokens = o.prompt;
    FILE *json = stdout;
    if (o.jsonl && !(json = fopen(o.jsonl, "w"))) {
        perror(o.jsonl);
        return 1;
    }
    omp_set_num_threads(o.threads);

    char cpu[256];
    td_probe_cpu_name(cpu, sizeof cpu);
    printf("# machine: %s, %d threads\n", cpu, o.threads);
    fflush(stdout);
    size_t probe_bytes = (size_t)1 << 30;
    void *buf = td_host_map(probe_bytes, o.threads);
    if (!buf) {
        fprintf(stderr, "bench_forward: cannot map the bandwidth probe's buffer\n");
        return 1;
    }
    double read_gbps = td_probe_read_gbps(buf, probe_bytes, o.threads, 5);
    td_host_unmap(buf, probe_bytes);
    double gemm_gflops = td_probe_gemm_bf16_gflops(2048, o.threads, 2.0);
    printf("# read bandwidth %.1f GB/s; bf16 GEMM 2048^3 (oneDNN) %.0f GFLOP/s\n", read_gbps, gemm_gflops);

    td_error err;
    td_model_options mo;
    td_model_options_default(&mo);
    mo.weights = o.weights;
    mo.n_threads = o.threads;
    td_model *m = NULL;
    if (td_model_load(o.model, &mo, &m, &err))
        die("load", &err);
    const td_llama_config *c = &m->cfg;
    printf("# model %s: %d layers, embd %d, heads %d/%d, ffn %d, vocab %d; %s weights %.1f MB, loaded in %.2f s\n",
           o.model, c->n_layers, c->n_embd, c->n_heads, c->n_kv_heads, c->n_ff, c->n_vocab,
           o.weights == TD_WEIGHTS_BF16 ? "bf16" : "f32", m->weight_bytes / 1e6, m->load_seconds);
    printf("# prompt %d, gen %d, up to %d tokens per prefill step; breakdown = linear / attention / other %% of step "
           "time\n",
           o.prompt, o.gen, o.step_tokens);
    printf("%6s | %11s %8s %6s %16s | %11s %8s %6s %6s %16s | %8s %6s\n", "batch", "prefill t/s", "GFLOP/s", "xGEMM",
           "breakdown", "decode t/s", "GFLOP/s", "xGEMM", "xroof", "breakdown", "w GB/s", "xread");
    fflush(stdout);

    const int P = o.prompt, G = o.gen;
    int32_t *toks = malloc((size_t)o.step_tokens * sizeof *toks + 256 * sizeof *toks);
    for (int bi = 0; bi < o.n_batches; bi++) {
        const int B = o.batches[bi];
        const int per_step = o.step_tokens / P < 1 ? 1 : o.step_tokens / P;
        const int max_tokens = per_step * P > B ? per_step * P : B;
        /* B sequences of P + G tokens, plus room for the warm-up's */
        td_kv_config kc = {.n_layers = c->n_layers,
                           .n_kv_heads = c->n_kv_heads,
                           .head_dim = c->head_dim,
                           .dtype = TD_DTYPE_BF16,
                           .max_seqs = 2 * B + per_step,
                           .max_seq_tokens = P + G + 16,
                           .n_threads = o.threads};
        td_kv_cache *probe = NULL;
        kc.budget_bytes = (size_t)1 << 20;
        size_t block_bytes = 0;
        if (td_kv_create(&kc, &probe, &err) == TANDEM_OK) {
            block_bytes = td_kv_get_layout(probe)->block_bytes;
            td_kv_destroy(probe);
        }
        size_t blocks_per_seq = (size_t)(P + G + 16 + 15) / 16;
        kc.budget_bytes = block_bytes * blocks_per_seq * (size_t)(B + (per_step > B ? per_step : B) + 1);
        td_kv_cache *kv = NULL;
        td_forward *fw = NULL;
        if (td_kv_create(&kc, &kv, &err))
            die("kv", &err);
        if (td_forward_create(m, max_tokens, o.threads, &fw, &err))
            die("forward", &err);
        int32_t seqs[256], warm[256];
        for (int j = 0; j < B; j++)
            if (td_kv_seq_new(kv, &seqs[j], &err))
                die("kv seq", &err);

        /* warm-up: one prefill step and one decode step of the shapes below */
        int nw = per_step > B ? B : per_step;
        for (int j = 0; j < B; j++)
            if (td_kv_seq_new(kv, &warm[j], &err))
                die("kv seq", &err);
        prefill(fw, kv, m, warm, nw, P, per_step, toks);
        if (B % per_step && B > per_step)
            prefill(fw, kv, m, warm + nw, B % per_step, P, per_step, toks);
        for (int j = nw + (B > per_step ? B % per_step : 0); j < B; j++) {
            if (td_kv_seq_grow(kv, warm[j], P, &err))
                die("kv grow", &err);
        }
        decode(fw, kv, m, warm, B, 1, toks);
        for (int j = 0; j < B; j++)
            td_kv_seq_free(kv, warm[j], &err);

        phase pre = {.seconds = INFINITY}, dec = {0};
        for (int rep = 0; rep < o.prefill_reps; rep++) {
            if (rep > 0) /* fresh sequences; the last ones go on to decode */
                for (int j = 0; j < B; j++)
                    if (td_kv_seq_free(kv, seqs[j], &err) || td_kv_seq_new(kv, &seqs[j], &err))
                        die("kv seq", &err);
            td_fwd_stats s0 = *td_forward_stats(fw), s1;
            double t0 = td_seconds();
            prefill(fw, kv, m, seqs, B, P, per_step, toks);
            double t1 = td_seconds();
            s1 = *td_forward_stats(fw);
            if (t1 - t0 < pre.seconds) {
                pre.seconds = t1 - t0;
                stats_diff(&pre.st, &s0, &s1);
            }
        }
        td_fwd_stats s1 = *td_forward_stats(fw), s2;
        double t1 = td_seconds();
        decode(fw, kv, m, seqs, B, G, toks);
        double t2 = td_seconds();
        s2 = *td_forward_stats(fw);
        stats_diff(&dec.st, &s1, &s2);
        dec.seconds = t2 - t1;
        pre.tokens = (int64_t)B * P;
        dec.tokens = (int64_t)B * G;
        /* prefill: token p attends p + 1 positions; one head row per prompt */
        for (int p = 0; p < P; p++)
            pre.flops += B * layer_flops(c, p + 1);
        pre.flops += B * head_flops(c);
        for (int g = 0; g < G; g++)
            dec.flops += B * (layer_flops(c, P + g + 1) + head_flops(c));

        /* What the machine allows the decode steps at best: each step's
         * linear layers take the longer of their FLOPs at the square GEMM's
         * rate and one read of the weights at full bandwidth, and attention
         * one read of the KV cache at full bandwidth (it is memory-bound). */
        const double step_flops = (double)B * (layer_flops(c, 0) + head_flops(c));
        double lin_s = step_flops / (gemm_gflops * 1e9), w_s = (double)m->weight_bytes / (read_gbps * 1e9);
        double roof = 0;
        for (int g = 0; g < G; g++)
            roof += (lin_s > w_s ? lin_s : w_s) +
                    (double)B * (P + g + 1) * c->n_layers * c->n_kv_heads * c->head_dim * 2 * 2 / (read_gbps * 1e9);
        double dec_roof = roof / dec.seconds;
        double w_gbps = 0, w_ratio = 0;
        if (B == 1) {
            w_gbps = (double)m->weight_bytes * G / dec.seconds / 1e9;
            w_ratio = w_gbps / read_gbps;
        }
        phase *ph[2] = {&pre, &dec};
        double rate[2], gfl[2], fr[2][3];
        for (int k = 0; k < 2; k++) {
            double tot = ph[k]->seconds;
            rate[k] = ph[k]->tokens / tot;
            gfl[k] = ph[k]->flops / tot / 1e9;
            fr[k][0] = 100 * ph[k]->st.linear / tot;
            fr[k][1] = 100 * ph[k]->st.attention / tot;
            fr[k][2] = 100 * ph[k]->st.other / tot;
        }
        char b0[32], b1[32];
        snprintf(b0, sizeof b0, "%.0f/%.0f/%.0f", fr[0][0], fr[0][1], fr[0][2]);
        snprintf(b1, sizeof b1, "%.0f/%.0f/%.0f", fr[1][0], fr[1][1], fr[1][2]);
        printf("%6d | %11.0f %8.0f %6.2f %16s | %11.0f %8.0f %6.2f %6.2f %16s |", B, rate[0], gfl[0],
               gfl[0] / gemm_gflops, b0, rate[1], gfl[1], gfl[1] / gemm_gflops, dec_roof, b1);
        if (B == 1)
            printf(" %8.1f %6.2f\n", w_gbps, w_ratio);
        else
            printf(" %8s %6s\n", "-", "-");
        fflush(stdout);
        fprintf(json,
                "{\"bench\":\"forward\",\"model\":\"%s\",\"weights\":\"%s\",\"threads\":%d,\"batch\":%d,\"prompt\":%d,"
                "\"gen\":%d,\"read_gbps\":%.2f,\"gemm_gflops\":%.1f,"
                "\"prefill_tok_s\":%.1f,\"prefill_gflops\":%.1f,\"prefill_x_gemm\":%.3f,"
                "\"prefill_linear_s\":%.4f,\"prefill_attention_s\":%.4f,\"prefill_other_s\":%.4f,\"prefill_s\":%.4f,"
                "\"decode_tok_s\":%.1f,\"decode_gflops\":%.1f,\"decode_x_gemm\":%.3f,"
                "\"decode_linear_s\":%.4f,\"decode_attention_s\":%.4f,\"decode_other_s\":%.4f,\"decode_s\":%.4f,"
                "\"decode_x_roofline\":%.3f,\"weight_gbps\":%.2f,\"weight_x_read\":%.3f}\n",
                o.model, o.weights == TD_WEIGHTS_BF16 ? "bf16" : "f32", o.threads, B, P, G, read_gbps, gemm_gflops,
                rate[0], gfl[0], gfl[0] / gemm_gflops, pre.st.linear, pre.st.attention, pre.st.other, pre.seconds,
                rate[1], gfl[1], gfl[1] / gemm_gflops, dec.st.linear, dec.st.attention, dec.st.other, dec.seconds,
                dec_roof, w_gbps, w_ratio);
        fflush(json);
        td_forward_destroy(fw);
        td_kv_destroy(kv);
    }
    free(toks);
    td_model_free(m);
    if (json != stdout)
        fclose(json);
    return 0;
}
