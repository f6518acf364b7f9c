/* Pipeline benchmark: decode tokens/s and overlap of each mode on the
 * emulated device in timed mode (a real GPU's speed per op, a PCIe link's
 * per copy) with the CPU attention real.
 *
 *   bench_pipeline [--model FILE] [--gpu NAME] [--link NAME] [--config BxL,...] [--steps N]
 *                  [--threads N] [--trace FILE] [--jsonl FILE]
 *
 * For each config, B sequences whose caches hold L tokens decode --steps
 * tokens each, one step of B tokens at a time, in mode device (KV and
 * attention on the device), mode cpu-attn (KV in host memory, attention
 * on the CPU, two sub-batches overlapped with the device's linear layers
 * and the copies) and mode hybrid with half the sequences in each pool
 * (the device-placed ones attend in sub-batch 0's device work). The cached K/V are zeros (the cost of attention does
 * not depend on the values) and the device computes nothing (timed mode):
 * this measures time, not tokens.
 *
 * Printed per mode: tokens/s and ms per step; for cpu-attn the busy time
 * of the device, each copy direction and the CPU as a share of the step,
 * the overlap efficiency (busiest / step: 1 when the busiest resource never
 * waits) and step / busiest, the target being <= 1.15. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "bench/bench_util.h"
#include "cpu/kv_cache.h"
#include "engine/forward.h"
#include "engine/model.h"
#include "gpu/device.h"

#define DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

typedef struct options {
    const char *model, *gpu, *link, *trace, *jsonl;
    int batch[16], ctx[16], n_configs, steps, threads;
} options;

static int parse_configs(const char *s, options *o) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    o->n_configs = 0;
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        int b, l;
        if (sscanf(tok, "%dx%d", &b, &l) != 2 || b < 1 || l < 1 || o->n_configs == 16)
            return 0;
        o->batch[o->n_configs] = b;
        o->ctx[o->n_configs++] = l;
    }
    return o->n_configs > 0;
}

static int parse(int argc, char **argv, options *o) {
    *o = (options){.model = DEFAULT_MODEL, .gpu = "H100-PCIe", .link = "pcie5-x16", .steps = 16};
    parse_configs("32x1024,64x2048", o);
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--model"))
            o->model = v;
        else if (!strcmp(a, "--gpu"))
            o->gpu = v;
        else if (!strcmp(a, "--link"))
            o->link = v;
        else if (!strcmp(a, "--config") && parse_configs(v, o))
            ;
        else if (!strcmp(a, "--steps") && atoi(v) > 0)
            o->steps = atoi(v);
        else if (!strcmp(a, "--threads") && atoi(v) > 0)
            o->threads = atoi(v);
        else if (!strcmp(a, "--trace"))
            o->trace = v;
        else if (!strcmp(a, "--jsonl"))
            o->jsonl = v;
        else {
            fprintf(stderr, "bench_pipeline: bad option %s %s\n", a, v);
            return -1;
        }
    }
    if (argc % 2 == 0) {
        fprintf(stderr, "usage: bench_pipeline [--model FILE] [--gpu NAME] [--link NAME] [--config BxL,...] "
                        "[--steps N] [--threads N] [--trace FILE] [--jsonl FILE]\n");
        return -1;
    }
    return 0;
}

_Noreturn static void die(const char *what, const td_error *err) {
    fprintf(stderr, "bench_pipeline: %s: %s\n", what, err->msg);
    exit(2);
}

typedef struct result {
    double step_s;
    td_pipe_stats ps;
} result;

/* B sequences at L cached tokens, then `steps` decode steps. */
static result run_mode(const options *o, const td_model *m, td_device *dev, td_attn_place place, int B, int L,
                       FILE *trace) {
    const td_llama_config *c = &m->cfg;
    td_error err;
    td_forward *fw = NULL;
    if (td_forward_create_on_device(m, dev, place, B, o->threads, &fw, &err))
        die("forward", &err);
    td_kv_config kc = {.n_layers = c->n_layers,
                       .n_kv_heads = c->n_kv_heads,
                       .head_dim = c->head_dim,
                       .dtype = TD_DTYPE_BF16,
                       .max_seqs = B,
                       .max_seq_tokens = L + o->steps + 1,
                       .n_threads = o->threads};
    const size_t per_seq =
        ((size_t)(L + o->steps + 16) / 16 + 1) * 16 * (size_t)c->n_layers * c->n_kv_heads * c->head_dim * 2 * 2;
    kc.budget_bytes = per_seq * (size_t)B;
    void *pool = NULL;
    td_kv_cache *hkv = NULL; /* hybrid: the odd sequences' pool */
    if (place == TD_ATTN_HYBRID && td_kv_create(&kc, &hkv, &err))
        die("host KV cache", &err);
    if (place != TD_ATTN_ON_CPU) {
        if (td_dev_alloc(dev, kc.budget_bytes, &pool, &err))
            die("device KV pool", &err);
        kc.pool = pool;
    }
    td_kv_cache *kv = NULL;
    if (td_kv_create(&kc, &kv, &err))
        die("KV cache", &err);
    int32_t *tok = calloc((size_t)B, sizeof *tok);
    td_fwd_seq *seqs = calloc((size_t)B, sizeof *seqs);
    for (int i = 0; i < B; i++) {
        td_kv_cache *pool_i = hkv && i % 2 ? hkv : kv;
        if (td_kv_seq_new(pool_i, &seqs[i].kv_seq, &err) || td_kv_seq_grow(pool_i, seqs[i].kv_seq, L - 1, &err))
            die("sequence", &err);
        tok[i] = 1 + i;
        seqs[i] = (td_fwd_seq){.kv_seq = seqs[i].kv_seq,
                               .pos = L - 1,
                               .n_tokens = 1,
                               .tokens = &tok[i],
                               .logits = TD_LOGITS_LAST,
                               .on_host = hkv && i % 2};
    }
    td_pipe *p = td_forward_pipe(fw);
    result r = {0};
    for (int s = -1; s < o->steps; s++) { /* one untimed step first */
        if (s == 0) {
            r.step_s = td_seconds();
            if (p) {
                r.ps = *td_pipe_get_stats(p);
                if (trace)
                    td_pipe_trace(p, trace);
            }
        }
        for (int i = 0; i < B; i++)
            if (td_kv_seq_grow(seqs[i].on_host ? hkv : kv, seqs[i].kv_seq, 1, &err))
                die("grow", &err);
        float *logits;
        int32_t rows;
        if (hkv ? td_forward_step_hybrid(fw, kv, hkv, seqs, B, &logits, &rows, &err)
                : td_forward_step(fw, kv, seqs, B, &logits, &rows, &err))
            die("step", &err);
        for (int i = 0; i < B; i++)
            seqs[i].pos++;
    }
    r.step_s = (td_seconds() - r.step_s) / o->steps;
    if (p) {
        const td_pipe_stats *e = td_pipe_get_stats(p);
        r.ps = (td_pipe_stats){.steps = e->steps - r.ps.steps,
                               .step = e->step - r.ps.step,
                               .device = e->device - r.ps.device,
                               .d2h = e->d2h - r.ps.d2h,
                               .h2d = e->h2d - r.ps.h2d,
                               .cpu = e->cpu - r.ps.cpu};
        if (trace)
            td_pipe_trace_end(p);
    }
    free(tok);
    free(seqs);
    td_kv_destroy(kv);
    td_kv_destroy(hkv);
    td_dev_free(dev, pool);
    td_forward_destroy(fw);
    return r;
}

int main(int argc, char **argv) {
    options o;
    if (parse(argc, argv, &o))
        return 1;
    if (o.threads)
        omp_set_num_threads(o.threads);
    else
        o.threads = omp_get_max_threads();
    td_error err;
    td_device_config dc;
    td_device_config_default(&dc);
    dc.emu_mode = TD_EMU_TIMED;
    dc.gpu = td_gpu_model_find(o.gpu);
    dc.link = td_link_model_find(o.link);
    if (!dc.gpu || !dc.link) {
        fprintf(stderr, "bench_pipeline: unknown --gpu %s or --link %s (docs/DEVICE-MODELS.md)\n", o.gpu, o.link);
        return 1;
    }
    td_device *dev = NULL;
    if (td_device_open(&dc, &dev, &err))
        die("device", &err);
    td_model_options mo;
    td_model_options_default(&mo);
    mo.skip_linears = true;
    td_model *m = NULL;
    if (td_model_load(o.model, &mo, &m, &err))
        die("model (run scripts/fetch-model)", &err);
    FILE *trace = o.trace ? fopen(o.trace, "w") : NULL, *js = o.jsonl ? fopen(o.jsonl, "w") : NULL;
    char cpu[256];
    td_bench_cpu_model(cpu, sizeof cpu);
    printf("bench_pipeline: %s, %s; CPU attention on %s, %d threads; %d decode steps\n", dev->info.name, o.model, cpu,
           o.threads, o.steps);
    printf("%6s %6s  %-8s %9s %9s %7s %6s %6s %6s %8s %10s\n", "batch", "ctx", "mode", "tok/s", "ms/step", "device",
           "D2H", "H2D", "CPU", "overlap", "step/busy");
    for (int k = 0; k < o.n_configs; k++) {
        const int B = o.batch[k];
        int L = o.ctx[k];
        if (L + o.steps + 1 > m->cfg.n_ctx) { /* the steps must fit the context */
            L = m->cfg.n_ctx - o.steps - 1;
            printf("(ctx %d: %d, so that %d steps fit the model's context of %d)\n", o.ctx[k], L, o.steps,
                   m->cfg.n_ctx);
        }
        for (int place = TD_ATTN_ON_DEVICE; place <= TD_ATTN_HYBRID; place++) {
            result r =
                run_mode(&o, m, dev, (td_attn_place)place, B, L, place == TD_ATTN_ON_CPU && k == 0 ? trace : NULL);
            const char *name = place == TD_ATTN_ON_CPU ? "cpu-attn" : place == TD_ATTN_HYBRID ? "hybrid" : "device";
            printf("%6d %6d  %-8s %9.0f %9.2f", B, L, name, B / r.step_s, r.step_s * 1e3);
            double busiest = 0, step = r.ps.step > 0 ? r.ps.step : 1;
            if (r.ps.steps > 0) {
                const double b[4] = {r.ps.device, r.ps.d2h, r.ps.h2d, r.ps.cpu};
                for (int i = 0; i < 4; i++)
                    busiest = b[i] > busiest ? b[i] : busiest;
                printf(" %6.0f%% %5.0f%% %5.0f%% %5.0f%% %8.2f %10.2f", 100 * r.ps.device / step, 100 * r.ps.d2h / step,
                       100 * r.ps.h2d / step, 100 * r.ps.cpu / step, busiest / step, step / busiest);
            }
            printf("\n");
            fflush(stdout);
            if (js)
                fprintf(
                    js,
                    "{\"bench\":\"pipeline\",\"gpu\":\"%s\",\"link\":\"%s\",\"batch\":%d,\"ctx\":%d,\"mode\":\"%s\","
                    "\"tok_s\":%.1f,\"step_ms\":%.3f,\"device\":%.4f,\"d2h\":%.4f,\"h2d\":%.4f,\"cpu\":%.4f,"
                    "\"overlap\":%.4f}\n",
                    o.gpu, o.link, B, L, name, B / r.step_s, r.step_s * 1e3, r.ps.device / step, r.ps.d2h / step,
                    r.ps.h2d / step, r.ps.cpu / step, r.ps.steps ? busiest / step : 0.0);
        }
    }
    if (trace)
        fclose(trace);
    if (js)
        fclose(js);
    td_model_free(m);
    td_device_close(dev);
    return 0;
}
