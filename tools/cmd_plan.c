/* tandem plan: the cost model's prediction of each mode's tokens/s for a
 * decode batch on a profiled machine, and an SVG chart of throughput
 * against the CPU's share of the sequences and against the batch size. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tandem.h"
#include "tools/cli.h"

static void usage(FILE *f) {
    fprintf(f, "usage: tandem plan --profile P --batch B --ctx L [options]\n"
               "\n"
               "Predicts decode tokens/s of modes device, cpu-attn and hybrid for B sequences of L cached tokens\n"
               "on the machine a profile describes, and the plan the cost model picks.\n"
               "\n"
               "  --profile P      a profile from `tandem tune`, or a preset: T4, A10G, H100-PCIe, H100-SXM\n"
               "  --model PATH     GGUF whose shapes to use (default: $TANDEM_MODEL, else the default model)\n"
               "  --batch B        sequences decoding together (default 64)\n"
               "  --ctx L          tokens each has cached (default 2048)\n"
               "  --gpu-mem SIZE   device memory for weights, workspace and KV (default: the profile's)\n"
               "  --host-kv SIZE   host memory for KV (default: 90%% of the profile's host memory)\n"
               "  --host-seqs N    evaluate hybrid with N sequences on the CPU instead of searching\n"
               "  --svg FILE       write the chart there (default plan.svg; '-' for none)\n"
               "  --json           print the result as one JSON line on stdout instead of a table\n");
}

/* ---- the chart ------------------------------------------------------------ */

typedef struct series {
    const char *name, *color;
    const double *x, *y;
    int n;
} series;

enum { PANEL_W = 560, PANEL_H = 360, MARGIN_L = 70, MARGIN_B = 50, MARGIN_T = 40 };

/* A "nice" tick step for a range. */
static double tick_step(double range) {
    double raw = range / 5, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

/* One line chart at (ox, oy), x linear or log2; a marker at (mx, my) when mx >= 0. */
static void panel(FILE *f, int ox, int oy, const char *title, const char *xlabel, bool xlog, const series *s, int ns,
                  double mx, double my) {
    double x0 = INFINITY, x1 = -INFINITY, y1 = 0;
    for (int i = 0; i < ns; i++)
        for (int j = 0; j < s[i].n; j++) {
            double x = xlog ? log2(s[i].x[j]) : s[i].x[j];
            x0 = fmin(x0, x), x1 = fmax(x1, x), y1 = fmax(y1, s[i].y[j]);
        }
    if (!(x1 > x0))
        x1 = x0 + 1;
    if (!(y1 > 0))
        y1 = 1;
    const double ys = tick_step(y1);
    y1 = ceil(y1 / ys) * ys;
    const int w = PANEL_W - MARGIN_L - 20, h = PANEL_H - MARGIN_B - MARGIN_T;
#define PX(x) (ox + MARGIN_L + ((xlog ? log2(x) : (x)) - x0) / (x1 - x0) * w)
#define PY(y) (oy + MARGIN_T + h - (y) / y1 * h)
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"15\" font-weight=\"bold\">%s</text>\n", ox + MARGIN_L, oy + 24,
            title);
    for (double y = 0; y <= y1 + ys / 2; y += ys)
        fprintf(f,
                "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                "<text x=\"%d\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\">%g</text>\n",
                ox + MARGIN_L, ox + MARGIN_L + w, PY(y), PY(y), ox + MARGIN_L - 6, PY(y) + 4, y);
    if (xlog)
        for (double e = ceil(x0); e <= x1 + 1e-9; e++)
            fprintf(f, "<text x=\"%.1f\" y=\"%d\" font-size=\"11\" text-anchor=\"middle\">%g</text>\n", PX(pow(2, e)),
                    oy + MARGIN_T + h + 16, pow(2, e));
    else
        for (double x = x0; x <= x1 + 1e-9; x += tick_step(x1 - x0))
            fprintf(f, "<text x=\"%.1f\" y=\"%d\" font-size=\"11\" text-anchor=\"middle\">%g</text>\n", PX(x),
                    oy + MARGIN_T + h + 16, x);
    fprintf(f,
            "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#444\"/>\n"
            "<text x=\"%d\" y=\"%d\" font-size=\"12\" text-anchor=\"middle\">%s</text>\n"
            "<text transform=\"translate(%d,%d) rotate(-90)\" font-size=\"12\" text-anchor=\"middle\">"
            "predicted decode tokens/s</text>\n",
            ox + MARGIN_L, oy + MARGIN_T, w, h, ox + MARGIN_L + w / 2, oy + MARGIN_T + h + 36, xlabel, ox + 16,
            oy + MARGIN_T + h / 2);
    for (int i = 0; i < ns; i++) {
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", s[i].color);
        for (int j = 0; j < s[i].n; j++)
            fprintf(f, "%.1f,%.1f ", PX(s[i].x[j]), PY(s[i].y[j]));
        fprintf(f, "\"/>\n<text x=\"%d\" y=\"%d\" font-size=\"12\" fill=\"%s\">%s</text>\n", ox + MARGIN_L + w - 110,
                oy + MARGIN_T + 16 + 16 * i, s[i].color, s[i].name);
    }
    if (mx >= 0)
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"none\" stroke=\"#000\" stroke-width=\"2\"/>\n",
                PX(mx), PY(my));
#undef PX
#undef PY
}

/* ---- the command ------------------------------------------------------------ */

static tandem_status plan_at(tandem_plan_query q, int batch, int host_seqs, tandem_plan_result *r, char *err,
                             size_t cap) {
    q.batch = batch;
    q.host_seqs = host_seqs;
    *r = (tandem_plan_result){.struct_size = sizeof *r};
    return tandem_plan(&q, r, err, cap);
}

static const char *mode_name(tandem_mode m) {
    return m == TANDEM_MODE_DEVICE ? "device" : m == TANDEM_MODE_CPU_ATTN ? "cpu-attn" : "hybrid";
}

/* Throughput against the CPU's share of the batch (0: mode device, 1:
 * cpu-attn) and against the batch size, one point per plan. */
static int write_svg(const char *path, const tandem_plan_query *q, const tandem_plan_result *best) {
    enum { MAX_PTS = 65 };
    double sx[MAX_PTS], sy[MAX_PTS], bx[MAX_PTS], by[3][MAX_PTS];
    char err[512];
    int ns = 0, nb = 0;
    tandem_plan_result r;
    const int step = q->batch / 64 > 1 ? q->batch / 64 : 1;
    for (int h = 0; h <= q->batch && ns<MAX_PTS; h = h + step> q->batch && h < q->batch ? q->batch : h + step) {
        if (plan_at(*q, q->batch, h < q->batch ? h : -1, &r, err, sizeof err))
            break;
        double tok = h == 0 ? r.device_tok_s : h == q->batch ? r.cpu_attn_tok_s : r.hybrid_tok_s;
        sx[ns] = (double)h / q->batch;
        sy[ns++] = tok;
    }
    for (int b = 1; b <= 4 * q->batch && nb < MAX_PTS; b *= 2) {
        if (plan_at(*q, b, -1, &r, err, sizeof err))
            break;
        bx[nb] = b;
        by[0][nb] = r.device_tok_s, by[1][nb] = r.cpu_attn_tok_s, by[2][nb] = r.hybrid_tok_s;
        nb++;
    }
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        return EXIT_FAILED;
    }
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n",
            2 * PANEL_W, PANEL_H + 30);
    fprintf(
        f,
        "<text x=\"16\" y=\"20\" font-size=\"13\">tandem plan: %s, batch %d, ctx %d; chosen: %s, %.0f tok/s</text>\n",
        q->profile, q->batch, q->ctx, mode_name(best->chosen), best->chosen_tok_s);
    series share = {"hybrid (0: device, 1: cpu-attn)", "#1f77b4", sx, sy, ns};
    double mx = best->chosen == TANDEM_MODE_HYBRID   ? (double)best->hybrid_host_seqs / q->batch
                : best->chosen == TANDEM_MODE_DEVICE ? 0
                                                     : 1;
    panel(f, 0, 30, "throughput vs the CPU's share of sequences", "sequences attending on the CPU / batch", false,
          &share, 1, mx, best->chosen_tok_s);
    series sizes[3] = {{"device", "#2ca02c", bx, by[0], nb},
                       {"cpu-attn", "#d62728", bx, by[1], nb},
                       {"hybrid (best split)", "#1f77b4", bx, by[2], nb}};
    panel(f, PANEL_W, 30, "throughput vs batch size", "batch (sequences)", true, sizes, 3, -1, 0);
    fprintf(f, "</svg>\n");
    if (fclose(f)) {
        perror(path);
        return EXIT_FAILED;
    }
    return 0;
}

int tandem_cmd_plan(int argc, char **argv) {
    enum {
        OPT_PROFILE = 256,
        OPT_MODEL,
        OPT_BATCH,
        OPT_CTX,
        OPT_GPU_MEM,
        OPT_HOST_KV,
        OPT_HOST_SEQS,
        OPT_SVG,
        OPT_JSON
    };
    static const struct option opts[] = {{"profile", required_argument, 0, OPT_PROFILE},
                                         {"model", required_argument, 0, OPT_MODEL},
                                         {"batch", required_argument, 0, OPT_BATCH},
                                         {"ctx", required_argument, 0, OPT_CTX},
                                         {"gpu-mem", required_argument, 0, OPT_GPU_MEM},
                                         {"host-kv", required_argument, 0, OPT_HOST_KV},
                                         {"host-seqs", required_argument, 0, OPT_HOST_SEQS},
                                         {"svg", required_argument, 0, OPT_SVG},
                                         {"json", no_argument, 0, OPT_JSON},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    tandem_plan_query q;
    tandem_plan_query_init(&q);
    const char *svg = "plan.svg";
    bool json = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        char *end = NULL;
        bool ok = true;
        switch (c) {
        case OPT_PROFILE: q.profile = optarg; break;
        case OPT_MODEL: q.model_path = optarg; break;
        case OPT_BATCH: q.batch = (int)strtol(optarg, &end, 10), ok = *end == 0 && q.batch >= 1; break;
        case OPT_CTX: q.ctx = (int)strtol(optarg, &end, 10), ok = *end == 0 && q.ctx >= 1; break;
        case OPT_GPU_MEM: ok = tandem_parse_size(optarg, &q.gpu_mem_bytes); break;
        case OPT_HOST_KV: ok = tandem_parse_size(optarg, &q.host_kv_bytes); break;
        case OPT_HOST_SEQS: q.host_seqs = (int)strtol(optarg, &end, 10), ok = *end == 0 && q.host_seqs >= 0; break;
        case OPT_SVG: svg = optarg; break;
        case OPT_JSON: json = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return EXIT_USAGE;
        }
        if (!ok) {
            fprintf(stderr, "tandem plan: bad value '%s' for --%s\n", optarg, opts[c - OPT_PROFILE].name);
            return EXIT_USAGE;
        }
    }
    if (optind < argc || !q.profile) {
        fprintf(stderr, "tandem plan: %s\n", optind < argc ? "unexpected argument" : "--profile is required");
        usage(stderr);
        return EXIT_USAGE;
    }
    tandem_plan_result r = {.struct_size = sizeof r};
    char err[512];
    if (tandem_plan(&q, &r, err, sizeof err)) {
        fprintf(stderr, "tandem %s\n", err);
        return EXIT_FAILED;
    }
    if (json)
        printf("{\"profile\":\"%s\",\"batch\":%d,\"ctx\":%d,\"device_tok_s\":%.1f,\"device_batch\":%d,"
               "\"cpu_attn_tok_s\":%.1f,\"hybrid_tok_s\":%.1f,\"hybrid_host_seqs\":%d,\"hybrid_sub_batches\":%d,"
               "\"chosen\":\"%s\",\"chosen_tok_s\":%.1f,\"step_ms\":%.3f,\"device_busy_ms\":%.3f,"
               "\"link_busy_ms\":%.3f,\"cpu_busy_ms\":%.3f,\"search_ms\":%.3f}\n",
               q.profile, q.batch, q.ctx, r.device_tok_s, r.device_batch, r.cpu_attn_tok_s, r.hybrid_tok_s,
               r.hybrid_host_seqs, r.hybrid_sub_batches, mode_name(r.chosen), r.chosen_tok_s, 1e3 * r.step_seconds,
               1e3 * r.device_busy_seconds, 1e3 * r.link_busy_seconds, 1e3 * r.cpu_busy_seconds,
               1e3 * r.search_seconds);
    else {
        printf("profile %s, batch %d x ctx %d\n", q.profile, q.batch, q.ctx);
        printf("  %-9s %10.0f tok/s  (batch capped at %d by the device's KV room)\n", "device", r.device_tok_s,
               r.device_batch);
        printf("  %-9s %10.0f tok/s\n", "cpu-attn", r.cpu_attn_tok_s);
        printf("  %-9s %10.0f tok/s  (%d sequences on the CPU, %d sub-batches)\n", "hybrid", r.hybrid_tok_s,
               r.hybrid_host_seqs, r.hybrid_sub_batches);
        printf("chosen: %s, %.0f tok/s; step %.2f ms, busy: device %.2f, link %.2f, CPU %.2f ms; search %.2f ms\n",
               mode_name(r.chosen), r.chosen_tok_s, 1e3 * r.step_seconds, 1e3 * r.device_busy_seconds,
               1e3 * r.link_busy_seconds, 1e3 * r.cpu_busy_seconds, 1e3 * r.search_seconds);
    }
    if (strcmp(svg, "-")) {
        int rc = write_svg(svg, &q, &r);
        if (rc)
            return rc;
        if (!json)
            printf("chart: %s\n", svg);
    }
    return 0;
}
