/* Writes the hardware profile presets (offload/presets/NAME.json), or
 * checks that the committed ones are what it would write.
 *
 *   gen_presets --out DIR      write DIR/NAME.json for every preset
 *   gen_presets --check DIR    exit 1 when a file in DIR differs
 *
 * The device and link figures are DERIVED, not measured: every GEMM point
 * is what gpu/device_model.c's roofline gives for that shape (the time the
 * emulated device takes in timed mode), over tune's default grid, and the
 * attention / row bandwidths are the model's memory bandwidth times its
 * streaming efficiency. The CPU figures come from the published specs of
 * the hosts' CPUs (memory channels x transfer rate x 8 bytes) times two
 * efficiencies: the read bandwidth a socket sustains, and the fraction of
 * it this repository's attention kernel reaches (docs/PERFORMANCE.md).
 * docs/PROFILES.md gives every figure's source. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpu/device_model.h"
#include "offload/profile.h"
#include "offload/tune.h"

#define GIB (1024.0 * 1024 * 1024)

/* Fraction of the theoretical DRAM bandwidth (channels x MT/s x 8 B) that a
 * streaming read sustains on a server socket: STREAM-class results on
 * Cascade Lake, Rome and Sapphire Rapids sit at 0.75-0.85. */
#define SUSTAINED_READ 0.80
/* Fraction of the sustained read bandwidth the CPU attention kernel reads
 * KV at, by context (docs/PERFORMANCE.md and `tandem tune` on the
 * development VM: 0.85-0.87 at 1K-16K tokens with Llama-3-8B's shape,
 * 0.80-0.83 at 256, where each sequence's work is short). */
static double kernel_eff(int64_t ctx) { return ctx <= 256 ? 0.81 : ctx <= 1024 ? 0.85 : 0.86; }

typedef struct host {
    const char *preset, *gpu, *link;
    const char *cpu;
    int cores;         /* the GPU's share of the host: attention threads */
    double mem_gib;    /* its share of host memory */
    double peak_gbps;  /* its share of DRAM bandwidth: channels x MT/s x 8 B */
    double core_gbps;  /* what one core streams */
    double cap_gbps;   /* another cap on the share (0: none), e.g. a CCD's fabric link */
    double call_us;    /* attention call: the team's fork/join */
    double handoff_us; /* device event to waiting host thread, and back */
    const char *host;  /* for the source line */
} host;

static const host hosts[] = {
    {"T4", "T4", "pcie3-x16", "Intel Xeon Platinum 8259CL (AWS g4dn.4xlarge, 8 of 24 cores)", 8, 64,
     6 * 2933e6 * 8 / 1e9, 11, 0, 5, 20, "AWS g4dn.4xlarge"},
    {"A10G", "A10G", "pcie4-x16", "AMD EPYC 7R32 (AWS g5.4xlarge, 8 of 48 cores)", 8, 64, 8 * 3200e6 * 8 / 1e9, 20,
     51.2, 5, 20, "AWS g5.4xlarge"},
    {"A10G-g5.16xlarge", "A10G", "pcie4-x16", "AMD EPYC 7R32 (AWS g5.16xlarge, 32 of 48 cores)", 32, 256,
     8 * 3200e6 * 8 / 1e9, 20, 4 * 51.2, 8, 20, "AWS g5.16xlarge"},
    {"H100-PCIe", "H100-PCIe", "pcie5-x16", "Intel Xeon Platinum 8480+ (one socket of two, 56 cores)", 56, 512,
     8 * 4800e6 * 8 / 1e9, 16, 0, 12, 20, "a two-socket Sapphire Rapids server, the GPU's socket"},
    {"H100-SXM", "H100-SXM", "pcie5-x16", "Intel Xeon Platinum 8480C (NVIDIA DGX H100, 1/8 of the host)", 14, 256,
     2 * 8 * 4800e6 * 8 / 1e9 / 8, 16, 0, 6, 20, "NVIDIA DGX H100, one GPU's eighth of the host"},
};

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

static td_profile *make(const host *h) {
    const td_gpu_model *g = td_gpu_model_find(h->gpu);
    const td_link_model *l = td_link_model_find(h->link);
    if (!g || !l)
        return NULL;
    td_profile *p = calloc(1, sizeof *p);
    int n_ms, n_sh, n_ctx;
    const int64_t *ms = td_tune_default_ms(&n_ms), *ctxs = td_tune_default_ctxs(&n_ctx);
    const td_tune_shape *sh = td_tune_default_shapes(&n_sh);
    /* the shapes in the table's order: by n, then k */
    td_tune_shape *order = malloc(sizeof *order * (size_t)n_sh);
    memcpy(order, sh, sizeof *order * (size_t)n_sh);
    for (int i = 1; i < n_sh; i++)
        for (int j = i;
             j > 0 && (order[j].n < order[j - 1].n || (order[j].n == order[j - 1].n && order[j].k < order[j - 1].k));
             j--) {
            td_tune_shape t = order[j];
            order[j] = order[j - 1], order[j - 1] = t;
        }
    p->gemm = calloc((size_t)(n_ms * n_sh), sizeof *p->gemm);
    for (int s = 0; s < n_sh; s++)
        for (int i = 0; i < n_ms; i++) {
            const double m = (double)ms[i], n = (double)order[s].n, k = (double)order[s].k;
            /* the emulated device's GEMM: bf16 A and B, f32 C (gpu/emu/emu.c) */
            double t = td_gpu_model_seconds(g, 2 * m * n * k, 2 * (m * k + n * k) + 4 * m * n);
            p->gemm[p->n_gemm++] = (td_gemm_point){ms[i], order[s].n, order[s].k, t};
        }
    free(order);
    snprintf(p->source, sizeof p->source,
             "preset %s: device and link derived from gpu/device_model.c (%s, %s), not measured; CPU: %s, from "
             "published specs (docs/PROFILES.md)",
             h->preset, g->name, l->name, h->host);
    snprintf(p->device, sizeof p->device, "%s", g->name);
    p->dev_mem_bytes = (double)g->mem_bytes;
    p->dev_launch_s = g->launch_us / 1e6;
    p->dev_attn_gbps = g->mem_gbps * g->mem_eff;
    p->dev_row_gbps = g->mem_gbps * g->mem_eff;
    snprintf(p->link, sizeof p->link, "%s", l->name);
    p->h2d_gbps = l->h2d_gbps;
    p->d2h_gbps = l->d2h_gbps;
    p->link_latency_s = l->latency_us / 1e6;
    snprintf(p->cpu, sizeof p->cpu, "%s", h->cpu);
    p->cpu_threads = h->cores;
    p->host_mem_bytes = h->mem_gib * GIB;
    int teams = 0;
    for (int t = 1; t <= h->cores; t = t * 2 > h->cores && t < h->cores ? h->cores : t * 2)
        teams++;
    p->cpu_attn = calloc((size_t)(teams * n_ctx), sizeof *p->cpu_attn);
    for (int t = 1; t <= h->cores; t = t * 2 > h->cores && t < h->cores ? h->cores : t * 2) {
        double read = t * h->core_gbps, socket = h->peak_gbps * SUSTAINED_READ;
        if (read > socket)
            read = socket;
        if (h->cap_gbps > 0 && read > h->cap_gbps * SUSTAINED_READ)
            read = h->cap_gbps * SUSTAINED_READ;
        for (int c = 0; c < n_ctx; c++)
            p->cpu_attn[p->n_cpu_attn++] =
                (td_cpu_attn_point){t, ctxs[c], round(read * kernel_eff(ctxs[c]) * 100) / 100};
    }
    p->cpu_attn_call_s = h->call_us / 1e6;
    p->handoff_s = h->handoff_us / 1e6;
    return p;
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    if (b)
        b[n] = '\0';
    fclose(f);
    return b;
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[1], "--out") && strcmp(argv[1], "--check"))) {
        fprintf(stderr, "usage: gen_presets --out DIR | --check DIR\n");
        return 2;
    }
    const int check = !strcmp(argv[1], "--check");
    int bad = 0;
    for (int i = 0; i < COUNT(hosts); i++) {
        td_profile *p = make(&hosts[i]);
        td_error err;
        char path[4096], tmp[] = "/tmp/gen_presets_XXXXXX";
        snprintf(path, sizeof path, "%s/%s.json", argv[2], hosts[i].preset);
        int fd = check ? mkstemp(tmp) : -1;
        if (fd >= 0)
            close(fd);
        if (!p || (check && fd < 0) || td_profile_save(p, check ? tmp : path, &err)) {
            fprintf(stderr, "gen_presets: %s: %s\n", hosts[i].preset, p ? err.msg : "unknown GPU or link model");
            return 2;
        }
        td_profile_free(p);
        if (check) {
            char *a = slurp(path), *b = slurp(tmp);
            if (!a || !b || strcmp(a, b)) {
                fprintf(stderr, "gen_presets: %s is not what gen_presets writes (run: gen_presets --out %s)\n", path,
                        argv[2]);
                bad = 1;
            }
            free(a), free(b);
            remove(tmp);
        } else
            printf("wrote %s\n", path);
    }
    return bad;
}
