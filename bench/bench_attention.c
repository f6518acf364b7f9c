/* Decode attention benchmark: bytes of KV read per second, against the
 * machine's own read bandwidth measured in the same run.
 *
 *   bench_attention [--full] [--prefill] [--threads N] [--mem-cap SIZE] [--working-set SIZE]
 *                   [--isa LIST] [--shape LIST] [--batch LIST] [--ctx LIST] [--block-tokens N]
 *                   [--min-time S] [--jsonl FILE]
 *
 * --prefill times the prefill kernels instead (td_attn_prefill: --batch
 * prompts of --ctx tokens, each one causal run from position 0, one layer,
 * the KV just written as in a forward step): FLOP/s of the causal products
 * against the f32 FMA peak and against the avx512 kernel in the same run.
 *
 * For each configuration (shape, cache dtype, batch, context) the KV cache is
 * replicated over enough layers that one pass touches at least the working
 * set (default: 4x the last-level cache, >= 1 GiB), so it streams from DRAM
 * like a real forward pass does; a pass attends every layer once. Each path
 * is first checked against the scalar kernel on the last layer, then timed
 * (best pass of those run in --min-time). Prints a table, then one JSON object
 * per line (or into --jsonl FILE). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"
#include "bench/bench_util.h"
#include "cpu/attention.h"
#include "cpu/hostmem.h"
#include "cpu/kv_cache.h"
#include "offload/hwprobe.h"

typedef struct shape {
    const char *name;
    int n_q, n_kv, D;
} shape;

static const shape shapes[] = {
    {"smollm2-135m", 9, 3, 64},
    {"llama3-8b", 32, 8, 128},
    {"mha-32", 32, 32, 128},
};
#define N_SHAPES (int)(sizeof shapes / sizeof *shapes)

typedef struct options {
    int full, prefill, threads;
    size_t mem_cap, working_set;
    double min_time;
    unsigned isa_mask, shape_mask;
    const char *jsonl;
    int batches[16], n_batches, ctxs[16], n_ctxs; /* from --batch / --ctx; 0: the default sets */
    int block_tokens;
} options;

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench_attention [--full] [--prefill] [--threads N] [--mem-cap SIZE] [--working-set SIZE]\n"
            "                       [--isa scalar,avx2,avx512,avx512bf16,amx] [--shape smollm2-135m,llama3-8b,mha-32]\n"
            "                       [--batch N,N...] [--ctx N,N...] [--block-tokens N] [--min-time SECONDS]\n"
            "                       [--jsonl FILE]\n"
            "  SIZE takes K, M, G suffixes (powers of 1024). Defaults: all threads, --mem-cap 4G,\n"
            "  --working-set max(1G, 4x last-level cache), --min-time 0.4, JSON lines to stdout.\n"
            "  --prefill: defaults --batch 1,16 --ctx 128,512,2048 --isa avx512,amx, bf16 cache.\n");
}

static int parse_list(const char *s, const char *(*name)(int), int n, unsigned *mask) {
    *mask = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        int found = 0;
        for (int i = 0; i < n; i++)
            if (strcmp(tok, name(i)) == 0)
                *mask |= 1u << i, found = 1;
        if (!found) {
            fprintf(stderr, "bench_attention: unknown name '%s'\n", tok);
            return 0;
        }
    }
    return 1;
}

static const char *isa_name_i(int i) { return td_isa_name((td_isa)i); }
static const char *shape_name_i(int i) { return shapes[i].name; }

/* A KV cache of `layers` layers holding `batch` sequences of `ctx` tokens of
 * random values (written in parallel: distinct sequences). */
static td_kv_cache *build_cache(const shape *sh, td_dtype dt, int batch, int ctx, int layers, int T, int threads,
                                int32_t *ids) {
    size_t block = (size_t)layers * sh->n_kv * 2 * T * sh->D * 2;
    size_t blocks = (size_t)batch * ((ctx + T - 1) / T);
    td_kv_config c = {.n_layers = layers,
                      .n_kv_heads = sh->n_kv,
                      .head_dim = sh->D,
                      .block_tokens = T,
                      .dtype = dt,
                      .budget_bytes = block * blocks,
                      .max_seqs = batch,
                      .max_seq_tokens = ctx,
                      .n_threads = threads};
    td_kv_cache *kv = NULL;
    td_error err;
    if (td_kv_create(&c, &kv, &err)) {
        fprintf(stderr, "bench_attention: %s\n", err.msg);
        return NULL;
    }
    /* sequences grow one block at a time, round robin, as in a decode batch:
     * their blocks interleave in the pool */
    for (int s = 0; s < batch; s++)
        td_kv_seq_new(kv, &ids[s], NULL);
    for (int t = 0; t < ctx; t += T)
        for (int s = 0; s < batch; s++)
            td_kv_seq_grow(kv, ids[s], ctx - t < T ? ctx - t : T, NULL);
    const size_t row = (size_t)sh->n_kv * sh->D, n_rand = 1 << 20;
    float *rnd = malloc(sizeof(float) * (n_rand + row * 64));
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < n_rand + row * 64; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        rnd[i] = (float)((double)(x >> 11) * 0x1p-53 * 2 - 1);
    }
    int ok = 1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) reduction(& : ok)
    for (int s = 0; s < batch; s++)
        for (int layer = 0; layer < layers; layer++)
            for (int t = 0; t < ctx; t += 64) {
                int n = ctx - t < 64 ? ctx - t : 64;
                size_t off = ((size_t)(s * 7919 + layer * 104729 + t * 13) * row) % n_rand;
                ok &= td_kv_write(kv, ids[s], layer, t, n, rnd + off, rnd + (off + 4099) % n_rand, TD_DTYPE_F32,
                                  NULL) == TANDEM_OK;
            }
    free(rnd);
    if (!ok) {
        fprintf(stderr, "bench_attention: filling the cache failed\n");
        td_kv_destroy(kv);
        return NULL;
    }
    return kv;
}

typedef struct run_ctx {
    const shape *sh;
    td_kv_cache *kv;
    int batch, layers;
    td_attn_seq *seqs;
    float *q, *out;
} run_ctx;

static int attend_layer(td_attn *a, const run_ctx *r, int layer) {
    td_attn_batch b = {.kv = r->kv,
                       .layer = layer,
                       .n_q_heads = r->sh->n_q,
                       .scale = 1.0f / sqrtf((float)r->sh->D),
                       .out_dtype = TD_DTYPE_F32,
                       .seqs = r->seqs,
                       .n_seqs = r->batch};
    td_error err;
    if (td_attn_decode(a, &b, &err)) {
        fprintf(stderr, "bench_attention: %s\n", err.msg);
        return 0;
    }
    return 1;
}

/* Best seconds per pass over all layers. */
static double time_passes(td_attn *a, const run_ctx *r, double min_time) {
    double best = INFINITY, start = td_seconds();
    int passes = 0;
    do {
        double t0 = td_seconds();
        for (int layer = 0; layer < r->layers; layer++)
            if (!attend_layer(a, r, layer))
                return NAN;
        double dt = td_seconds() - t0;
        best = dt < best ? dt : best;
        passes++;
    } while (td_seconds() - start < min_time || passes < 2);
    return best;
}

/* Keeps a JSON line for the end of the run (printed after the table). */
static void keep_line(char ***lines, size_t *n_lines, const char *line) {
    *lines = realloc(*lines, sizeof **lines * (*n_lines + 1));
    (*lines)[(*n_lines)++] = strdup(line);
}

/* ---- prefill ------------------------------------------------------------ */

static int prefill_call(td_attn *a, const shape *sh, td_kv_cache *kv, const td_attn_run *runs, int n) {
    td_attn_prefill_batch b = {.kv = kv,
                               .layer = 0,
                               .n_q_heads = sh->n_q,
                               .scale = 1.0f / sqrtf((float)sh->D),
                               .out_dtype = TD_DTYPE_F32,
                               .runs = runs,
                               .n_runs = n};
    td_error err;
    if (td_attn_prefill(a, &b, &err)) {
        fprintf(stderr, "bench_attention: %s\n", err.msg);
        return 0;
    }
    return 1;
}

/* One configuration on every chosen path: checked against the scalar path
 * on the first prompt's first 256 queries, then timed (best call of those
 * run in min_time). Appends JSON lines. */
static int prefill_config(const options *o, const shape *sh, int batch, int ctx, const int *thread_counts, int n_tc,
                          const double *fma, char ***lines, size_t *n_lines) {
    int32_t *ids = malloc(sizeof(int32_t) * batch);
    td_kv_cache *kv = build_cache(sh, TD_DTYPE_BF16, batch, ctx, 1, o->block_tokens, o->threads, ids);
    if (!kv)
        return 0;
    const int64_t row = (int64_t)sh->n_q * sh->D;
    const size_t qn = (size_t)batch * ctx * row;
    float *q = malloc(sizeof(float) * qn), *out = malloc(sizeof(float) * qn);
    const int nv = ctx < 256 ? ctx : 256;
    float *ref = malloc(sizeof(float) * (size_t)nv * row);
    for (size_t i = 0; i < qn; i++)
        q[i] = (float)sin((double)i * 0.7) * 2.0f;
    td_attn_run *runs = malloc(sizeof *runs * batch);
    for (int s = 0; s < batch; s++)
        runs[s] = (td_attn_run){.q = q + (size_t)s * ctx * row,
                                .q_stride = row,
                                .blocks = td_kv_seq_blocks(kv, ids[s]),
                                .pos = 0,
                                .n = ctx,
                                .out = out + (size_t)s * ctx * row,
                                .out_stride = row};
    td_attn_run check = runs[0];
    check.n = nv;
    check.out = ref;
    td_attn *scalar = NULL;
    int ok = !td_attn_create(o->threads, TD_ISA_SCALAR, &scalar, NULL) && prefill_call(scalar, sh, kv, &check, 1);
    td_attn_destroy(scalar);
    const double flops = 4.0 * sh->n_q * sh->D * batch * ((double)ctx * (ctx + 1) / 2);
    double base[2] = {0, 0}; /* avx512's GFLOP/s per thread count */
    for (int isa = 0; ok && isa < TD_ISA_COUNT; isa++) {
        if (!(o->isa_mask >> isa & 1) || !td_isa_supported((td_isa)isa))
            continue;
        for (int ti = 0; ok && ti < n_tc; ti++) {
            td_attn *a = NULL;
            if (td_attn_create(thread_counts[ti], (td_isa)isa, &a, NULL)) {
                ok = 0;
                break;
            }
            check.out = out;
            ok = prefill_call(a, sh, kv, &check, 1);
            double max_err = 0;
            for (size_t i = 0; i < (size_t)nv * row; i++)
                max_err = fmax(max_err, fabs((double)out[i] - ref[i]));
            double best = INFINITY, start = td_seconds();
            int calls = 0;
            do {
                double t0 = td_seconds();
                ok = ok && prefill_call(a, sh, kv, runs, batch);
                double dt = td_seconds() - t0;
                best = dt < best ? dt : best;
                calls++;
            } while (ok && (td_seconds() - start < o->min_time || calls < 2));
            td_attn_destroy(a);
            const double gflops = flops / best * 1e-9;
            if (isa == TD_ISA_AVX512)
                base[ti] = gflops;
            char vs[16] = "-";
            if (base[ti] > 0)
                snprintf(vs, sizeof vs, "%.2f", gflops / base[ti]);
            printf("%-13s %-10s %3d %5d %5d %9.3f %8.1f %6.1f%% %7s %9.2e\n", sh->name, td_isa_name((td_isa)isa),
                   thread_counts[ti], batch, ctx, best * 1e3, gflops, 100 * gflops / fma[ti], vs, max_err);
            fflush(stdout);
            char line[1024];
            snprintf(line, sizeof line,
                     "{\"bench\":\"attention_prefill\",\"shape\":\"%s\",\"n_q_heads\":%d,\"n_kv_heads\":%d,"
                     "\"head_dim\":%d,\"kv_dtype\":\"bf16\",\"isa\":\"%s\",\"threads\":%d,\"batch\":%d,"
                     "\"ctx\":%d,\"seconds\":%.6f,\"gflops\":%.2f,\"fma_gflops\":%.1f,\"x_avx512\":%.4f,"
                     "\"max_abs_err\":%.3e}",
                     sh->name, sh->n_q, sh->n_kv, sh->D, td_isa_name((td_isa)isa), thread_counts[ti], batch, ctx, best,
                     gflops, fma[ti], base[ti] > 0 ? gflops / base[ti] : 0, max_err);
            keep_line(lines, n_lines, line);
        }
    }
    free(q), free(out), free(ref), free(runs), free(ids);
    td_kv_destroy(kv);
    return ok;
}

int main(int argc, char **argv) {
    options o = {.block_tokens = TD_KV_DEFAULT_BLOCK_TOKENS,
                 .threads = omp_get_max_threads(),
                 .mem_cap = (size_t)4 << 30,
                 .min_time = 0.4,
                 .isa_mask = ~0u,
                 .shape_mask = ~0u};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "--full"))
            o.full = 1;
        else if (!strcmp(a, "--prefill"))
            o.prefill = 1;
        else if (!strcmp(a, "--threads") && v)
            ok = (o.threads = atoi(v)) > 0, i++;
        else if (!strcmp(a, "--mem-cap") && v)
            ok = td_bench_parse_size(v, &o.mem_cap), i++;
        else if (!strcmp(a, "--working-set") && v)
            ok = td_bench_parse_size(v, &o.working_set), i++;
        else if (!strcmp(a, "--min-time") && v)
            ok = (o.min_time = atof(v)) >= 0, i++;
        else if (!strcmp(a, "--isa") && v)
            ok = parse_list(v, isa_name_i, TD_ISA_COUNT, &o.isa_mask), i++;
        else if (!strcmp(a, "--shape") && v)
            ok = parse_list(v, shape_name_i, N_SHAPES, &o.shape_mask), i++;
        else if (!strcmp(a, "--batch") && v)
            ok = td_bench_parse_ints(v, o.batches, &o.n_batches), i++;
        else if (!strcmp(a, "--ctx") && v)
            ok = td_bench_parse_ints(v, o.ctxs, &o.n_ctxs), i++;
        else if (!strcmp(a, "--block-tokens") && v)
            ok = (o.block_tokens = atoi(v)) >= 16 && o.block_tokens % 16 == 0, i++;
        else if (!strcmp(a, "--jsonl") && v)
            o.jsonl = v, i++;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else
            ok = 0;
        if (!ok) {
            fprintf(stderr, "bench_attention: bad argument '%s'%s%s\n", a, v ? " " : "", v ? v : "");
            usage(stderr);
            return 2;
        }
    }
    if (!o.working_set) {
        long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
        o.working_set = llc > 0 ? 4 * (size_t)llc : 0;
        if (o.working_set < ((size_t)1 << 30))
            o.working_set = (size_t)1 << 30;
    }
    if (o.working_set > o.mem_cap)
        o.working_set = o.mem_cap;

    FILE *json = stdout;
    if (o.jsonl && !(json = fopen(o.jsonl, "w"))) {
        perror(o.jsonl);
        return 1;
    }
    char cpu[256];
    td_probe_cpu_name(cpu, sizeof cpu);
    const int thread_counts[2] = {1, o.threads};
    const int n_tc = o.threads > 1 ? 2 : 1;

    /* the machine, measured now */
    printf("# machine: %s, %d threads, best ISA %s (kernels' default: %s)\n", cpu, o.threads,
           td_isa_name(td_isa_best()), td_isa_name(td_isa_default()));
    printf("# measuring read bandwidth over %.2f GiB and arithmetic peaks ...\n", o.working_set / 1073741824.0);
    fflush(stdout);
    double stream[2], fma[2], dot[2];
    void *buf = td_host_map(o.working_set, o.threads);
    if (!buf) {
        fprintf(stderr, "bench_attention: cannot map %zu bytes for the bandwidth probe\n", o.working_set);
        return 1;
    }
    for (int i = 0; i < n_tc; i++) {
        stream[i] = td_probe_read_gbps(buf, o.working_set, thread_counts[i], 5);
        fma[i] = td_probe_fma_gflops(td_isa_best(), thread_counts[i]);
        dot[i] = td_probe_bf16dot_gflops(thread_counts[i]);
        printf("# %d thread(s): read %.1f GB/s, f32 FMA peak %.0f GFLOP/s, bf16 dot peak %.0f GFLOP/s\n",
               thread_counts[i], stream[i], fma[i], dot[i]);
    }
    td_host_unmap(buf, o.working_set);
    char machine_json[1024];
    snprintf(machine_json, sizeof machine_json,
             "{\"bench\":\"machine\",\"cpu\":\"%s\",\"threads\":%d,\"best_isa\":\"%s\",\"stream_gbps_1t\":%.2f,"
             "\"stream_gbps\":%.2f,\"fma_gflops_1t\":%.1f,\"fma_gflops\":%.1f,\"bf16dot_gflops_1t\":%.1f,"
             "\"bf16dot_gflops\":%.1f,\"working_set_bytes\":%zu}",
             cpu, o.threads, td_isa_name(td_isa_best()), stream[0], stream[n_tc - 1], fma[0], fma[n_tc - 1], dot[0],
             dot[n_tc - 1], o.working_set);

    char **lines = NULL;
    size_t n_lines = 0;
    double t_start = td_seconds();
    if (o.prefill) {
        const int batches_p[] = {1, 16}, ctxs_p[] = {128, 512, 2048};
        const int *batches = o.n_batches ? o.batches : batches_p, *ctxs = o.n_ctxs ? o.ctxs : ctxs_p;
        const int n_b = o.n_batches ? o.n_batches : 2, n_c = o.n_ctxs ? o.n_ctxs : 3;
        if (o.isa_mask == ~0u)
            o.isa_mask = 1u << TD_ISA_AVX512 | 1u << TD_ISA_AMX;
        printf("\n%-13s %-10s %3s %5s %5s %9s %8s %7s %7s %9s\n", "shape", "isa", "thr", "batch", "ctx", "ms/call",
               "GFLOP/s", "%fma", "xavx512", "max_err");
        for (int si = 0; si < N_SHAPES; si++)
            for (int bi = 0; (o.shape_mask >> si & 1) && bi < n_b; bi++)
                for (int ci = 0; ci < n_c; ci++)
                    if (!prefill_config(&o, &shapes[si], batches[bi], ctxs[ci], thread_counts, n_tc, fma, &lines,
                                        &n_lines))
                        return 1;
    }
    const int batches_default[] = {16}, ctxs_default[] = {2048, 8192};
    const int batches_full[] = {1, 16, 64, 256}, ctxs_full[] = {512, 2048, 8192};
    const int *batches = o.n_batches ? o.batches : o.full ? batches_full : batches_default;
    const int *ctxs = o.n_ctxs ? o.ctxs : o.full ? ctxs_full : ctxs_default;
    const int n_b = o.n_batches ? o.n_batches : o.full ? 4 : 1, n_c = o.n_ctxs ? o.n_ctxs : o.full ? 3 : 2;
    const td_dtype dtypes[2] = {TD_DTYPE_BF16, TD_DTYPE_F16};

    if (!o.prefill)
        printf("\n%-13s %-4s %-10s %3s %5s %5s %6s %8s %9s %8s %8s %6s %8s %6s %9s\n", "shape", "kv", "isa", "thr",
               "batch", "ctx", "layers", "MiB/lyr", "ms/pass", "KV GB/s", "rd GB/s", "ratio", "GFLOP/s", "flop%",
               "max_err");
    fflush(stdout);
    for (int si = 0; si < N_SHAPES && !o.prefill; si++) {
        if (!(o.shape_mask >> si & 1))
            continue;
        const shape *sh = &shapes[si];
        for (int di = 0; di < 2; di++)
            for (int bi = 0; bi < n_b; bi++)
                for (int ci = 0; ci < n_c; ci++) {
                    const int batch = batches[bi], ctx = ctxs[ci];
                    const size_t layer_bytes = (size_t)batch * ctx * sh->n_kv * sh->D * 2 * 2;
                    if (layer_bytes > o.mem_cap) {
                        printf("skip: %s %s batch %d ctx %d: KV of one layer is %.1f GiB, over the cap of %.1f GiB "
                               "(--mem-cap)\n",
                               sh->name, td_dtype_name(dtypes[di]), batch, ctx, layer_bytes / 1073741824.0,
                               o.mem_cap / 1073741824.0);
                        continue;
                    }
                    size_t layers = (o.working_set + layer_bytes - 1) / layer_bytes;
                    if (layers * layer_bytes > o.mem_cap)
                        layers = o.mem_cap / layer_bytes;
                    if (layers > 4096)
                        layers = 4096;
                    int32_t *ids = malloc(sizeof(int32_t) * batch);
                    td_kv_cache *kv =
                        build_cache(sh, dtypes[di], batch, ctx, (int)layers, o.block_tokens, o.threads, ids);
                    if (!kv)
                        return 1;
                    run_ctx r = {.sh = sh, .kv = kv, .batch = batch, .layers = (int)layers};
                    const size_t qn = (size_t)batch * sh->n_q * sh->D;
                    r.q = malloc(sizeof(float) * qn);
                    r.out = malloc(sizeof(float) * qn);
                    float *ref = malloc(sizeof(float) * qn);
                    for (size_t i = 0; i < qn; i++)
                        r.q[i] = (float)sin((double)i * 0.7) * 2.0f;
                    r.seqs = malloc(sizeof *r.seqs * batch);
                    for (int s = 0; s < batch; s++)
                        r.seqs[s] = (td_attn_seq){.q = r.q + (size_t)s * sh->n_q * sh->D,
                                                  .blocks = td_kv_seq_blocks(kv, ids[s]),
                                                  .n_tokens = ctx,
                                                  .out = ref + (size_t)s * sh->n_q * sh->D};
                    td_attn *scalar = NULL;
                    td_attn_create(o.threads, TD_ISA_SCALAR, &scalar, NULL);
                    attend_layer(scalar, &r, (int)layers - 1);
                    td_attn_destroy(scalar);
                    for (int s = 0; s < batch; s++)
                        r.seqs[s].out = r.out + (size_t)s * sh->n_q * sh->D;

                    for (int isa = 0; isa < TD_ISA_COUNT; isa++) {
                        if (!(o.isa_mask >> isa & 1) || !td_isa_supported((td_isa)isa))
                            continue;
                        for (int ti = 0; ti < n_tc; ti++) {
                            td_attn *a = NULL;
                            td_error err;
                            if (td_attn_create(thread_counts[ti], (td_isa)isa, &a, &err)) {
                                fprintf(stderr, "bench_attention: %s\n", err.msg);
                                return 1;
                            }
                            attend_layer(a, &r, (int)layers - 1);
                            double max_err = 0;
                            for (size_t i = 0; i < qn; i++)
                                max_err = fmax(max_err, fabs((double)r.out[i] - ref[i]));
                            double sec = time_passes(a, &r, isa == TD_ISA_SCALAR ? 0 : o.min_time);
                            td_attn_destroy(a);
                            double bytes = (double)layer_bytes * (double)layers;
                            double kv_gbps = bytes / sec * 1e-9;
                            double flops = 4.0 * batch * sh->n_q * (double)ctx * sh->D * (double)layers;
                            double gflops = flops / sec * 1e-9;
                            double peak = (isa == TD_ISA_AVX512BF16 && dtypes[di] == TD_DTYPE_BF16) ? dot[ti] : fma[ti];
                            if (isa == TD_ISA_AVX2)
                                peak = td_probe_fma_gflops(TD_ISA_AVX2, thread_counts[ti]);
                            double ratio = kv_gbps / stream[ti];
                            printf("%-13s %-4s %-10s %3d %5d %5d %6zu %8.1f %9.2f %8.1f %8.1f %6.2f %8.1f %5.1f%% "
                                   "%9.2e\n",
                                   sh->name, td_dtype_name(dtypes[di]), td_isa_name((td_isa)isa), thread_counts[ti],
                                   batch, ctx, layers, layer_bytes / 1048576.0, sec * 1e3, kv_gbps, stream[ti], ratio,
                                   gflops, 100 * gflops / peak, max_err);
                            fflush(stdout);
                            char line[1024];
                            snprintf(line, sizeof line,
                                     "{\"bench\":\"attention\",\"shape\":\"%s\",\"n_q_heads\":%d,\"n_kv_heads\":%d,"
                                     "\"head_dim\":%d,\"kv_dtype\":\"%s\",\"isa\":\"%s\",\"threads\":%d,\"batch\":%d,"
                                     "\"ctx\":%d,\"layers\":%zu,\"bytes_per_pass\":%.0f,\"seconds\":%.6f,"
                                     "\"kv_gbps\":%.3f,\"stream_gbps\":%.3f,\"ratio\":%.4f,\"gflops\":%.2f,"
                                     "\"peak_gflops\":%.1f,\"flop_ratio\":%.4f,\"max_abs_err\":%.3e}",
                                     sh->name, sh->n_q, sh->n_kv, sh->D, td_dtype_name(dtypes[di]),
                                     td_isa_name((td_isa)isa), thread_counts[ti], batch, ctx, layers, bytes, sec,
                                     kv_gbps, stream[ti], ratio, gflops, peak, gflops / peak, max_err);
                            keep_line(&lines, &n_lines, line);
                        }
                    }
                    free(r.q), free(r.out), free(ref), free(r.seqs), free(ids);
                    td_kv_destroy(kv);
                }
    }
    printf("# %.1f s\n", td_seconds() - t_start);
    if (json == stdout)
        printf("\n");
    fprintf(json, "%s\n", machine_json);
    for (size_t i = 0; i < n_lines; i++) {
        fprintf(json, "%s\n", lines[i]);
        free(lines[i]);
    }
    free(lines);
    if (json != stdout)
        fclose(json);
    return 0;
}
