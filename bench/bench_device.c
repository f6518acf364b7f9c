/* Device benchmark: linear-layer GEMM throughput at a model's shapes and
 * copy bandwidth, on the emulated device or a CUDA GPU, against a baseline
 * measured in the same run.
 *
 *   bench_device [--device emu|cuda] [--model FILE | --shapes llama3-8b] [--m LIST]
 *                [--threads N] [--seconds S] [--jsonl FILE]
 *
 * GEMM: for each linear layer of the model (fused QKV, O, fused gate/up,
 * down, LM head) and each batch size M, y[M][N] = x[M][K] . W^T through the
 * device's linear op (bf16 inputs, fp32 accumulation), timed with device
 * events over repetitions of at least --seconds. Baselines: on the emulated
 * device the host's own best square bf16 GEMM (n = 2048, offload/hwprobe.h),
 * which is what the emu runs on; on a GPU the device's best square GEMM
 * (n = 8192) and, when the device's name matches a preset
 * (gpu/device_model.h), the datasheet's dense bf16 peak.
 *
 * Copies: H2D and D2H between pinned host memory and the device, and D2D,
 * at 64 KiB .. 64 MiB. Baseline on the emulated device: the host's read
 * bandwidth (a copy reads and writes, so ~0.5 of it is the memcpy roof). */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/clock.h"
#include "bench/bench_util.h"
#include "cpu/hostmem.h"
#include "engine/gguf.h"
#include "engine/llama_config.h"
#include "gpu/device.h"
#include "offload/hwprobe.h"

#define DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

typedef struct shape {
    const char *name;
    int64_t n, k;
} shape;

typedef struct options {
    const char *model, *shapes, *jsonl;
    td_device_kind kind;
    int ms[16], n_ms, threads;
    double seconds;
} options;

static void usage(FILE *f) {
    fprintf(f, "usage: bench_device [--device emu|cuda] [--model FILE | --shapes llama3-8b] [--m LIST]\n"
               "                    [--threads N] [--seconds S] [--jsonl FILE]\n");
}

static int parse(int argc, char **argv, options *o) {
    *o = (options){.model = DEFAULT_MODEL, .kind = TD_DEVICE_KIND_EMU, .seconds = 0.3};
    td_bench_parse_ints("1,16,64,128,256,512", o->ms, &o->n_ms);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (!v) {
            usage(stderr);
            return -1;
        }
        i++;
        if (!strcmp(a, "--device") && (!strcmp(v, "emu") || !strcmp(v, "cuda")))
            o->kind = strcmp(v, "emu") ? TD_DEVICE_KIND_CUDA : TD_DEVICE_KIND_EMU;
        else if (!strcmp(a, "--model"))
            o->model = v;
        else if (!strcmp(a, "--shapes") && !strcmp(v, "llama3-8b"))
            o->shapes = v;
        else if (!strcmp(a, "--m") && td_bench_parse_ints(v, o->ms, &o->n_ms))
            ;
        else if (!strcmp(a, "--threads") && atoi(v) > 0)
            o->threads = atoi(v);
        else if (!strcmp(a, "--seconds") && atof(v) > 0)
            o->seconds = atof(v);
        else if (!strcmp(a, "--jsonl"))
            o->jsonl = v;
        else {
            fprintf(stderr, "bench_device: bad option %s %s\n", a, v);
            usage(stderr);
            return -1;
        }
    }
    return 0;
}

/* The model's linear layers: from the file's config, or Llama-3-8B's. */
static int shapes_of(const options *o, shape *s, char *label, size_t label_size) {
    td_llama_config c;
    if (o->shapes) {
        c = (td_llama_config){
            .n_embd = 4096, .n_heads = 32, .n_kv_heads = 8, .head_dim = 128, .n_ff = 14336, .n_vocab = 128256};
        snprintf(label, label_size, "llama3-8b");
    } else {
        td_gguf *g = NULL;
        td_error err;
        if (td_gguf_open(o->model, &g, &err) || td_llama_config_read(g, &c, &err)) {
            fprintf(stderr, "bench_device: %s (run scripts/fetch-model, or pass --shapes llama3-8b)\n", err.msg);
            td_gguf_close(g);
            return -1;
        }
        td_gguf_close(g);
        const char *slash = strrchr(o->model, '/');
        snprintf(label, label_size, "%s", slash ? slash + 1 : o->model);
    }
    const int64_t E = c.n_embd, Q = (int64_t)c.n_heads * c.head_dim, KV = (int64_t)c.n_kv_heads * c.head_dim;
    s[0] = (shape){"qkv", Q + 2 * KV, E};
    s[1] = (shape){"o", E, Q};
    s[2] = (shape){"gate_up", 2 * (int64_t)c.n_ff, E};
    s[3] = (shape){"down", E, c.n_ff};
    s[4] = (shape){"head", c.n_vocab, E};
    return 5;
}

_Noreturn static void die(const char *what, const td_error *err) {
    fprintf(stderr, "bench_device: %s: %s\n", what, err->msg);
    exit(2);
}

/* Seconds per call of fn over repetitions lasting at least min_s, timed by
 * device events (one untimed call first). */
typedef tandem_status (*enqueue_fn)(td_device *d, td_stream *s, void *ctx, td_error *err);

static double time_op(td_device *d, td_stream *s, td_event *a, td_event *b, enqueue_fn fn, void *ctx, double min_s) {
    td_error err;
    if (fn(d, s, ctx, &err) || td_dev_stream_sync(d, s, &err))
        die("warm-up", &err);
    for (int reps = 1;; reps *= 2) {
        td_dev_event_record(d, a, s, &err);
        for (int r = 0; r < reps; r++)
            if (fn(d, s, ctx, &err))
                die("enqueue", &err);
        td_dev_event_record(d, b, s, &err);
        if (td_dev_stream_sync(d, s, &err))
            die("run", &err);
        float ms = 0;
        if (td_dev_event_elapsed(d, a, b, &ms, &err))
            die("elapsed", &err);
        if (ms * 1e-3 >= min_s || reps >= (1 << 20))
            return ms * 1e-3 / reps;
    }
}

typedef struct lin_ctx {
    td_dweights *w;
    int64_t m, k, n;
    void *x;
    float *y;
} lin_ctx;

static tandem_status run_linear(td_device *d, td_stream *s, void *ctx, td_error *err) {
    lin_ctx *c = ctx;
    return td_dev_linear(d, s, c->w, c->m, c->x, c->k, c->y, c->n, false, err);
}

typedef struct gemm_ctx {
    td_dgemm g;
} gemm_ctx;

static tandem_status run_gemm(td_device *d, td_stream *s, void *ctx, td_error *err) {
    return td_dev_gemm(d, s, &((gemm_ctx *)ctx)->g, err);
}

typedef struct copy_ctx {
    void *dst;
    const void *src;
    size_t bytes;
    td_copy_dir dir;
} copy_ctx;

static tandem_status run_copy(td_device *d, td_stream *s, void *ctx, td_error *err) {
    copy_ctx *c = ctx;
    return td_dev_copy(d, s, c->dst, c->src, c->bytes, c->dir, err);
}

/* The preset whose name the device's contains, most specific first. */
static const td_gpu_model *preset_for(const char *name) {
    if (strcasestr(name, "H100"))
        return td_gpu_model_find(strcasestr(name, "PCIe") ? "H100-PCIe" : "H100-SXM");
    if (strcasestr(name, "A100"))
        return td_gpu_model_find("A100-SXM");
    if (strcasestr(name, "A10G"))
        return td_gpu_model_find("A10G");
    if (strcasestr(name, "T4"))
        return td_gpu_model_find("T4");
    return NULL;
}

static void fill_bf16(uint16_t *p, size_t n, uint32_t seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = td_f32_to_bf16(((float)(seed >> 8) / 16777216.0f - 0.5f) * 0.1f);
    }
}

int main(int argc, char **argv) {
    options o;
    if (parse(argc, argv, &o))
        return 1;
    if (o.threads)
        omp_set_num_threads(o.threads);
    const int threads = o.threads ? o.threads : omp_get_max_threads();
    shape sh[5];
    char label[256];
    int n_shapes = shapes_of(&o, sh, label, sizeof label);
    if (n_shapes < 0)
        return 2;
    td_device_config dc;
    td_device_config_default(&dc);
    dc.kind = o.kind;
    dc.emu_threads = threads;
    dc.emu_mem_bytes = (size_t)24 << 30; /* mapped lazily: only what is touched costs */
    td_device *d = NULL;
    td_error err;
    if (td_device_open(&dc, &d, &err)) {
        printf("skipped: %s\n", err.msg);
        return o.kind == TD_DEVICE_KIND_CUDA ? 0 : 2;
    }
    FILE *js = o.jsonl ? fopen(o.jsonl, "w") : NULL;
    if (o.jsonl && !js) {
        fprintf(stderr, "bench_device: cannot write %s\n", o.jsonl);
        return 2;
    }
    char cpu[256];
    td_probe_cpu_name(cpu, sizeof cpu);
    td_stream *s = NULL;
    td_event *a = NULL, *b = NULL;
    if (td_dev_stream_create(d, &s, &err) || td_dev_event_create(d, &a, &err) || td_dev_event_create(d, &b, &err))
        die("stream", &err);

    /* baselines, in this run */
    const bool emu = o.kind == TD_DEVICE_KIND_EMU;
    double base_gflops, peak_gflops = 0;
    const char *base_name;
    if (emu) {
        base_gflops = td_probe_gemm_bf16_gflops(2048, threads, 0.5);
        base_name = "host GEMM 2048^3";
    } else {
        const int64_t n = 8192;
        gemm_ctx g = {{.m = n,
                       .n = n,
                       .k = n,
                       .batch = 1,
                       .trans_b = true,
                       .lda = n,
                       .ldb = n,
                       .ldc = n,
                       .c_dtype = TD_DTYPE_F32}};
        void *pa = NULL, *pb = NULL, *pc = NULL;
        if (td_dev_alloc(d, (size_t)(n * n * 2), &pa, &err) || td_dev_alloc(d, (size_t)(n * n * 2), &pb, &err) ||
            td_dev_alloc(d, (size_t)(n * n * 4), &pc, &err))
            die("alloc", &err);
        g.g.a = pa, g.g.b = pb, g.g.c = pc;
        base_gflops = 2.0 * n * n * n / time_op(d, s, a, b, run_gemm, &g, o.seconds) / 1e9;
        base_name = "device GEMM 8192^3";
        td_dev_free(d, pa), td_dev_free(d, pb), td_dev_free(d, pc);
        const td_gpu_model *p = preset_for(d->info.name);
        if (p)
            peak_gflops = p->bf16_tflops * 1e3;
    }
    printf("bench_device: %s (%s), host %s, %d threads\n", d->info.name, d->info.backend, cpu, threads);
    printf("baseline: %s %.0f GFLOP/s", base_name, base_gflops);
    if (peak_gflops > 0)
        printf(", datasheet bf16 peak %.0f GFLOP/s (%.2f of it)", peak_gflops, base_gflops / peak_gflops);
    printf("\nlinear layers of %s: GFLOP/s (ratio to the baseline%s)\n", label, peak_gflops > 0 ? "; to peak" : "");
    printf("%-8s %7s %6s", "layer", "N", "K");
    for (int i = 0; i < o.n_ms; i++)
        printf(" %15s%-4d", "M=", o.ms[i]);
    printf("\n");

    int64_t max_m = 0;
    for (int i = 0; i < o.n_ms; i++)
        if (o.ms[i] > max_m)
            max_m = o.ms[i];
    for (int si = 0; si < n_shapes; si++) {
        const shape *p = &sh[si];
        uint16_t *w = malloc((size_t)(p->n * p->k) * 2);
        uint16_t *xh = malloc((size_t)(max_m * p->k) * 2);
        if (!w || !xh) {
            fprintf(stderr, "bench_device: out of memory\n");
            return 2;
        }
        fill_bf16(w, (size_t)(p->n * p->k), 1);
        fill_bf16(xh, (size_t)(max_m * p->k), 2);
        lin_ctx c = {.k = p->k, .n = p->n};
        if (td_dev_weights_create(d, p->n, p->k, w, &c.w, &err) ||
            td_dev_alloc(d, (size_t)(max_m * p->k) * 2, &c.x, &err) ||
            td_dev_alloc(d, (size_t)(max_m * p->n) * 4, (void **)&c.y, &err) ||
            td_dev_copy(d, s, c.x, xh, (size_t)(max_m * p->k) * 2, TD_COPY_H2D, &err) || td_dev_stream_sync(d, s, &err))
            die(p->name, &err);
        printf("%-8s %7lld %6lld", p->name, (long long)p->n, (long long)p->k);
        for (int i = 0; i < o.n_ms; i++) {
            c.m = o.ms[i];
            double sec = time_op(d, s, a, b, run_linear, &c, o.seconds);
            double gf = 2.0 * (double)(c.m * p->n * p->k) / sec / 1e9;
            if (peak_gflops > 0)
                printf(" %7.0f %4.2f %4.2f", gf, gf / base_gflops, gf / peak_gflops);
            else
                printf(" %9.0f (%5.2f)", gf, gf / base_gflops);
            fflush(stdout);
            if (js)
                fprintf(js,
                        "{\"bench\":\"device_gemm\",\"device\":\"%s\",\"layer\":\"%s\",\"m\":%lld,\"n\":%lld,"
                        "\"k\":%lld,\"gflops\":%.1f,\"x_baseline\":%.4f,\"x_peak\":%.4f}\n",
                        d->info.name, p->name, (long long)c.m, (long long)p->n, (long long)p->k, gf, gf / base_gflops,
                        peak_gflops > 0 ? gf / peak_gflops : 0.0);
        }
        printf("\n");
        td_dev_weights_destroy(d, c.w);
        td_dev_free(d, c.x);
        td_dev_free(d, c.y);
        free(w);
        free(xh);
    }

    /* copies */
    const size_t max_bytes = (size_t)64 << 20;
    double read_gbps = 0;
    if (emu) {
        void *buf = td_host_map((size_t)1 << 30, threads);
        read_gbps = buf ? td_probe_read_gbps(buf, (size_t)1 << 30, threads, 5) : 0;
        td_host_unmap(buf, (size_t)1 << 30);
    }
    void *host = NULL, *dev0 = NULL, *dev1 = NULL;
    if (td_dev_host_alloc(d, max_bytes, &host, &err) || td_dev_alloc(d, max_bytes, &dev0, &err) ||
        td_dev_alloc(d, max_bytes, &dev1, &err))
        die("copy buffers", &err);
    memset(host, 1, max_bytes);
    printf("copies: GB/s%s\n", emu ? " (ratio to the host's read bandwidth)" : "");
    if (emu)
        printf("baseline: host read bandwidth %.1f GB/s\n", read_gbps);
    printf("%-6s", "dir");
    static const size_t sizes[] = {(size_t)64 << 10, (size_t)1 << 20, (size_t)16 << 20, (size_t)64 << 20};
    for (int i = 0; i < 4; i++)
        printf(" %12zu KiB", sizes[i] >> 10);
    printf("\n");
    static const char *const dirs[] = {"H2D", "D2H", "D2D"};
    for (int di = 0; di < 3; di++) {
        printf("%-6s", dirs[di]);
        for (int i = 0; i < 4; i++) {
            copy_ctx c = {.bytes = sizes[i], .dir = (td_copy_dir)di};
            c.dst = di == TD_COPY_D2H ? host : dev0;
            c.src = di == TD_COPY_H2D ? host : di == TD_COPY_D2H ? dev0 : dev1;
            double gbps = (double)sizes[i] / time_op(d, s, a, b, run_copy, &c, o.seconds / 3) / 1e9;
            if (emu)
                printf(" %9.1f (%4.2f)", gbps, gbps / read_gbps);
            else
                printf(" %16.1f", gbps);
            if (js)
                fprintf(js,
                        "{\"bench\":\"device_copy\",\"device\":\"%s\",\"dir\":\"%s\",\"bytes\":%zu,\"gbps\":%.2f}\n",
                        d->info.name, dirs[di], sizes[i], gbps);
        }
        printf("\n");
    }
    td_dev_host_free(d, host);
    td_dev_free(d, dev0);
    td_dev_free(d, dev1);
    td_dev_event_destroy(d, a);
    td_dev_event_destroy(d, b);
    td_dev_stream_destroy(d, s);
    td_device_close(d);
    if (js)
        fclose(js);
    return 0;
}
