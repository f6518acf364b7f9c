/* Pipeline benchmark: decode tokens/s and overlap of each mode on the
 * emulated device in timed mode (a real GPU's speed per op, a PCIe link's
 * per copy) with the CPU attention real.
 *
 *   bench_pipeline [--model FILE] [--gpu NAME] [--link NAME] [--gpu-mem SIZE] [--config BxL,...]
 *                  [--steps N] [--threads N] [--profile P] [--trace FILE] [--jsonl FILE]
 *
 * For each config, sequences whose caches hold L tokens decode --steps
 * tokens each, one step at a time, in
 *
 *   device     KV and attention on the device, as many of the B sequences
 *              as the device's memory holds beside the weights (90% of
 *              what they leave, as the engine sizes its pool);
 *   cpu-attn   all B with KV in host memory, attention on the CPU, two
 *              sub-batches overlapped with the device's linear layers and
 *              the copies;
 *   hybrid/1   the device's share as in mode device, the rest of B (half
 *   hybrid/2   of B when all fit) on the CPU: in one sub-batch beside the
 *              device's sequences (CPU attention under the device's own
 *              attention) or in two (under the other sub-batch's work);
 *   planned    with --profile: the hybrid split the cost model picks (how
 *              many on the CPU, one or two sub-batches).
 *
 * The cached K/V are zeros (the cost of attention does not depend on the
 * values) and the device computes nothing (timed mode): this measures
 * time, not tokens. Printed per row: tokens/s, ms per step, each
 * resource's busy share, overlap (busiest / step) and step / busiest (the
 * issue's target <= 1.15); with --profile, the cost model's predicted step
 * (offload/costmodel.h) and its error against the measured one, from the
 * profile as tuned and with the online calibration the forward pass made
 * from the last two of its three untimed steps. A profile
 * measured on this machine by `tandem tune --device emu` with the same
 * --emu-gpu and --emu-link is what the prediction should be checked with. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"
#include "bench/bench_util.h"
#include "offload/hwprobe.h"
#include "cpu/kv_cache.h"
#include "engine/forward.h"
#include "engine/model.h"
#include "gpu/device.h"
#include "offload/costmodel.h"

#define DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"
/* Untimed steps before the timed ones: the first is cold (pages, caches),
 * the others calibrate the cost model online. */
#define WARMUP 3

typedef struct options {
    const char *model, *gpu, *link, *trace, *jsonl, *profile;
    size_t gpu_mem;
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
        else if (!strcmp(a, "--profile"))
            o->profile = v;
        else if (!strcmp(a, "--gpu-mem") && td_bench_parse_size(v, &o->gpu_mem))
            ;
        else {
            fprintf(stderr, "bench_pipeline: bad option %s %s\n", a, v);
            return -1;
        }
    }
    if (argc % 2 == 0) {
        fprintf(stderr, "usage: bench_pipeline [--model FILE] [--gpu NAME] [--link NAME] [--gpu-mem SIZE] "
                        "[--config BxL,...] [--steps N] [--threads N] [--profile P] [--trace FILE] [--jsonl FILE]\n");
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
    td_cost_calib calib; /* the forward's online calibration after the untimed steps */
} result;

/* Bytes of KV a sequence of L + steps tokens takes (whole blocks of 16). */
static size_t seq_kv_bytes(const td_model *m, int tokens) {
    const td_llama_config *c = &m->cfg;
    return ((size_t)(tokens + 15) / 16 + 1) * 16 * (size_t)c->n_layers * c->n_kv_heads * c->head_dim * 2 * 2;
}

/* n_dev sequences with KV on the device and n_host on the host, at L
 * cached tokens, then `steps` decode steps; n_sub forces the pipelined
 * steps' sub-batches (0: the forward's choice). */
static result run_mode(const options *o, const td_model *m, td_device *dev, const td_profile *prof, td_attn_place place,
                       int n_dev, int n_host, int n_sub, int L, FILE *trace) {
    const td_llama_config *c = &m->cfg;
    const int B = n_dev + n_host;
    td_error err;
    td_forward *fw = NULL;
    if (td_forward_create_on_device(m, dev, place, B, o->threads, &fw, &err))
        die("forward", &err);
    td_forward_set_profile(fw, prof); /* for its online calibration; the sub-batches are forced */
    td_forward_set_sub_batches(fw, n_sub);
    td_kv_config kc = {.n_layers = c->n_layers,
                       .n_kv_heads = c->n_kv_heads,
                       .head_dim = c->head_dim,
                       .dtype = TD_DTYPE_BF16,
                       .max_seqs = B,
                       .max_seq_tokens = L + WARMUP + o->steps + 1,
                       .n_threads = o->threads};
    const size_t per_seq = seq_kv_bytes(m, L + WARMUP + o->steps);
    void *pool = NULL;
    td_kv_cache *kv = NULL, *hkv = NULL;
    if (n_host > 0) {
        kc.budget_bytes = per_seq * (size_t)n_host;
        if (td_kv_create(&kc, &hkv, &err))
            die("host KV cache", &err);
    }
    if (n_dev > 0) {
        kc.budget_bytes = per_seq * (size_t)n_dev;
        if (td_dev_alloc(dev, kc.budget_bytes, &pool, &err))
            die("device KV pool", &err);
        kc.pool = pool;
        if (td_kv_create(&kc, &kv, &err))
            die("device KV cache", &err);
    }
    int32_t *tok = calloc((size_t)B, sizeof *tok);
    td_fwd_seq *seqs = calloc((size_t)B, sizeof *seqs);
    for (int i = 0; i < B; i++) {
        const bool host = i >= n_dev;
        td_kv_cache *pool_i = host ? hkv : kv;
        if (td_kv_seq_new(pool_i, &seqs[i].kv_seq, &err) || td_kv_seq_grow(pool_i, seqs[i].kv_seq, L - 1, &err))
            die("sequence", &err);
        tok[i] = 1 + i;
        seqs[i] = (td_fwd_seq){.kv_seq = seqs[i].kv_seq,
                               .pos = L - 1,
                               .n_tokens = 1,
                               .tokens = &tok[i],
                               .logits = TD_LOGITS_LAST,
                               .on_host = host};
    }
    td_pipe *p = td_forward_pipe(fw);
    result r = {0};
    for (int s = -WARMUP; s < o->steps; s++) { /* untimed steps first (all but the first calibrate) */
        if (s == 0) {
            r.calib = *td_forward_calibration(fw);
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
        const tandem_status st = place == TD_ATTN_HYBRID
                                     ? td_forward_step_hybrid(fw, kv, hkv, seqs, B, &logits, &rows, &err)
                                     : td_forward_step(fw, kv ? kv : hkv, seqs, B, &logits, &rows, &err);
        if (st)
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

/* The sequences of L tokens the device's memory holds beside the weights
 * and a B-token workspace: 90% of what they leave, as the engine's pool. */
static int device_room(const options *o, const td_model *m, td_device *dev, int B, int L) {
    td_error err;
    td_forward *fw = NULL;
    if (td_forward_create_on_device(m, dev, TD_ATTN_ON_DEVICE, B, o->threads, &fw, &err))
        die("forward (the weights do not fit the device?)", &err);
    const double left = (double)dev->info.mem_total - (double)td_dev_mem_used(dev);
    td_forward_destroy(fw);
    const double n = floor(0.9 * left / (double)seq_kv_bytes(m, L + WARMUP + o->steps));
    return n < 0 ? 0 : n > B ? B : (int)n;
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
    dc.emu_mem_bytes = o.gpu_mem;
    if (!dc.gpu || !dc.link) {
        fprintf(stderr, "bench_pipeline: unknown --gpu %s or --link %s (docs/DEVICE-MODELS.md)\n", o.gpu, o.link);
        return 1;
    }
    td_profile *prof = NULL;
    if (o.profile && td_profile_open(o.profile, &prof, &err))
        die("profile", &err);
    td_device *dev = NULL;
    if (td_device_open(&dc, &dev, &err))
        die("device", &err);
    td_model_options mo;
    td_model_options_default(&mo);
    mo.skip_linears = true;
    td_model *m = NULL;
    if (td_model_load(o.model, &mo, &m, &err))
        die("model (run scripts/fetch-model)", &err);
    const td_llama_config *c = &m->cfg;
    const td_cost_shape shape = td_cost_shape_of(c);
    FILE *trace = o.trace ? fopen(o.trace, "w") : NULL, *js = o.jsonl ? fopen(o.jsonl, "w") : NULL;
    char cpu[256];
    td_probe_cpu_name(cpu, sizeof cpu);
    printf("bench_pipeline: %s (%.1f GB), %s; CPU attention on %s, %d threads; %d decode steps%s%s\n", dev->info.name,
           dev->info.mem_total / 1e9, o.model, cpu, o.threads, o.steps, prof ? "; profile " : "",
           prof ? o.profile : "");
    printf("%6s %6s  %-9s %5s %5s %9s %9s %7s %6s %6s %6s %8s %10s", "batch", "ctx", "mode", "dev", "host", "tok/s",
           "ms/step", "device", "D2H", "H2D", "CPU", "overlap", "step/busy");
    if (prof)
        printf(" %10s %7s %10s %7s", "predicted", "error", "calibrated", "error");
    printf("\n");
    for (int k = 0; k < o.n_configs; k++) {
        const int B = o.batch[k];
        int L = o.ctx[k];
        if (L + WARMUP + o.steps + 1 > c->n_ctx) { /* the steps must fit the context */
            L = c->n_ctx - WARMUP - o.steps - 1;
            printf("(ctx %d: %d, so that %d steps fit the model's context of %d)\n", o.ctx[k], L, o.steps, c->n_ctx);
        }
        const int room = device_room(&o, m, dev, B, L);
        /* hybrid: the device's share as in mode device, the rest on the
         * host; half each when all fit */
        const int hy_dev = room < B ? room : B / 2;
        /* with a profile, a fifth row: the hybrid split the cost model
         * plans (how many on the CPU, one or two sub-batches) */
        int plan_host = 0, plan_sub = 0;
        if (prof) {
            td_cost_limits lim = {
                .gpu_mem = (double)dev->info.mem_total, .host_kv = 1e15, .threads = o.threads, .host_seqs = -1};
            td_cost_plan plan;
            const double t0 = td_seconds();
            td_cost_plan_search(prof, &shape, B, L + o.steps / 2, &lim, &plan);
            printf("(%d x %d: the plan search took %.3f ms: %s)\n", B, L, (td_seconds() - t0) * 1e3,
                   plan.chosen == 0   ? "device"
                   : plan.chosen == 1 ? "cpu-attn"
                                      : "hybrid");
            if (plan.chosen == 2) /* hybrid; else the planned row is mode device's (or cpu-attn's) */
                plan_host = plan.hybrid_host, plan_sub = plan.hybrid_sub;
        }
        const struct {
            const char *name;
            td_attn_place place;
            int sub, n_dev, n_host;
        } rows[] = {{"device", TD_ATTN_ON_DEVICE, 0, room, 0},
                    {"cpu-attn", TD_ATTN_ON_CPU, 2, 0, B},
                    {"hybrid/1", TD_ATTN_HYBRID, 1, hy_dev, B - hy_dev},
                    {"hybrid/2", TD_ATTN_HYBRID, 2, hy_dev, B - hy_dev},
                    {"planned", TD_ATTN_HYBRID, plan_sub, B - plan_host < room ? B - plan_host : room, plan_host}};
        for (size_t row = 0; row < sizeof rows / sizeof rows[0] - !prof; row++) {
            const int n_dev = rows[row].n_dev, n_host = rows[row].n_host;
            if (n_dev + n_host == 0 || (rows[row].place == TD_ATTN_HYBRID && (n_dev == 0 || n_host == 0))) {
                printf("%6d %6d  %-9s (%s)\n", B, L, rows[row].name,
                       n_dev == 0 ? "no room on the device for a sequence" : "the plan is not hybrid: see above");
                continue;
            }
            const double host_kv = (double)n_host * (double)seq_kv_bytes(m, L + WARMUP + o.steps),
                         avail = (double)sysconf(_SC_AVPHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
            if (host_kv > 0.8 * avail) {
                printf("%6d %6d  %-9s (skipped: %.1f GB of host KV, %.1f GB of memory free)\n", B, L, rows[row].name,
                       host_kv / 1e9, avail / 1e9);
                continue;
            }
            result r = run_mode(&o, m, dev, prof, rows[row].place, n_dev, n_host, rows[row].sub, L,
                                rows[row].place == TD_ATTN_ON_CPU && k == 0 ? trace : NULL);
            const int n = n_dev + n_host;
            printf("%6d %6d  %-9s %5d %5d %9.0f %9.2f", B, L, rows[row].name, n_dev, n_host, n / r.step_s,
                   r.step_s * 1e3);
            double busiest = 0, step = r.ps.step > 0 ? r.ps.step : 1;
            if (r.ps.steps > 0) {
                const double b[4] = {r.ps.device, r.ps.d2h, r.ps.h2d, r.ps.cpu};
                for (int i = 0; i < 4; i++)
                    busiest = b[i] > busiest ? b[i] : busiest;
                printf(" %6.0f%% %5.0f%% %5.0f%% %5.0f%% %8.2f %10.2f", 100 * r.ps.device / step, 100 * r.ps.d2h / step,
                       100 * r.ps.h2d / step, 100 * r.ps.cpu / step, busiest / step, step / busiest);
            } else
                printf(" %7s %6s %6s %6s %8s %10s", "", "", "", "", "", "");
            double pred = 0, cal = 0;
            if (prof) {
                td_cost_batch cb = {.batch = n,
                                    .ctx = L + o.steps / 2,
                                    .n_host = n_host,
                                    .threads = o.threads,
                                    .host_in_first = -1,
                                    .n_sub = rows[row].sub};
                pred = td_cost_predict(prof, &shape, &cb).step;
                cb.calib = &r.calib;
                cal = td_cost_predict(prof, &shape, &cb).step;
                printf(" %10.2f %+6.1f%% %10.2f %+6.1f%%", pred * 1e3, 100 * (pred - r.step_s) / r.step_s, cal * 1e3,
                       100 * (cal - r.step_s) / r.step_s);
            }
            printf("\n");
            fflush(stdout);
            if (js)
                fprintf(js,
                        "{\"bench\":\"pipeline\",\"gpu\":\"%s\",\"link\":\"%s\",\"gpu_mem\":%zu,\"batch\":%d,"
                        "\"ctx\":%d,\"mode\":\"%s\",\"dev\":%d,\"host\":%d,\"tok_s\":%.1f,\"step_ms\":%.3f,"
                        "\"device\":%.4f,\"d2h\":%.4f,\"h2d\":%.4f,\"cpu\":%.4f,\"overlap\":%.4f,"
                        "\"predicted_ms\":%.3f,\"calibrated_ms\":%.3f,\"calib\":[%.3f,%.3f,%.3f,%.3f]}\n",
                        o.gpu, o.link, dev->info.mem_total, B, L, rows[row].name, n_dev, n_host, n / r.step_s,
                        r.step_s * 1e3, r.ps.device / step, r.ps.d2h / step, r.ps.h2d / step, r.ps.cpu / step,
                        r.ps.steps ? busiest / step : 0.0, pred * 1e3, cal * 1e3, r.calib.device, r.calib.link,
                        r.calib.cpu, r.calib.handoff);
        }
    }
    if (trace)
        fclose(trace);
    if (js)
        fclose(js);
    td_profile_free(prof);
    td_model_free(m);
    td_device_close(dev);
    return 0;
}
