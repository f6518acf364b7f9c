/* tandem tune: measures this machine and writes a hardware profile (the
 * JSON the cost model and `tandem plan` read). Built on the public API. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tandem.h"
#include "tools/cli.h"

static void usage_tune(FILE *f) {
    fprintf(f, "usage: tandem tune [options]\n"
               "\n"
               "Measures the device (GEMM times by shape, attention and row-kernel bandwidth, launch\n"
               "overhead), the host link (H2D/D2H bandwidth and latency), the hand-off between device\n"
               "and CPU, and the CPU's decode attention (KV bytes/s by thread count and context), and\n"
               "writes them as a hardware profile (docs/PROFILES.md). Takes seconds; a line per stage\n"
               "on stderr.\n"
               "\n"
               "options:\n"
               "  --device auto|cuda|emu   what to measure (default auto: a CUDA GPU, else the emulated\n"
               "                           device); emu takes a GPU preset's and a link preset's times\n"
               "  --emu-gpu NAME           with --device emu: T4, A10G, A100-SXM, H100-PCIe (default), H100-SXM\n"
               "  --emu-link NAME          with --device emu: pcie3-x16, pcie4-x16, pcie5-x16 (default)\n"
               "  --threads N              the CPU attention's most threads (default: all cores)\n"
               "  --model FILE             also measure this GGUF model's layer shapes and attention shape\n"
               "  --out FILE               the profile to write (default profile.json)\n"
               "  --help                   this text\n"
               "\n"
               "Exit status: 0 written, 1 bad usage, 2 the measurement or the write failed.\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct progress_state {
    char last[256];
    double t0;
} progress_state;

/* One line per stage: the callback hears each stage's start and end. */
static void on_progress(void *user, const char *stage, double fraction) {
    progress_state *p = user;
    if (!strcmp(stage, p->last))
        return;
    snprintf(p->last, sizeof p->last, "%s", stage);
    fprintf(stderr, "tandem tune: [%3.0f%%, %5.1f s] %s\n", fraction * 100, now_s() - p->t0, stage);
}

enum { OPT_DEVICE = 256, OPT_EMU_GPU, OPT_EMU_LINK, OPT_THREADS, OPT_MODEL, OPT_OUT, OPT_HELP };

int tandem_cmd_tune(int argc, char **argv) {
    static const struct option opts[] = {
        {"device", required_argument, 0, OPT_DEVICE},
        {"emu-gpu", required_argument, 0, OPT_EMU_GPU},
        {"emu-link", required_argument, 0, OPT_EMU_LINK},
        {"threads", required_argument, 0, OPT_THREADS},
        {"model", required_argument, 0, OPT_MODEL},
        {"out", required_argument, 0, OPT_OUT},
        {"help", no_argument, 0, OPT_HELP},
        {0, 0, 0, 0},
    };
    tandem_tune_config cfg;
    tandem_tune_config_init(&cfg);
    const char *out = "profile.json";
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case OPT_DEVICE:
            if (!strcmp(optarg, "auto"))
                cfg.device = TANDEM_DEVICE_AUTO;
            else if (!strcmp(optarg, "cuda"))
                cfg.device = TANDEM_DEVICE_CUDA;
            else if (!strcmp(optarg, "emu"))
                cfg.device = TANDEM_DEVICE_EMU;
            else
                ok = false;
            break;
        case OPT_EMU_GPU: cfg.emu_gpu = optarg; break;
        case OPT_EMU_LINK: cfg.emu_link = optarg; break;
        case OPT_THREADS: {
            char *end;
            errno = 0;
            long v = strtol(optarg, &end, 10);
            ok = !errno && end != optarg && !*end && v >= 1 && v <= 4096;
            cfg.threads = ok ? (int)v : 0;
            break;
        }
        case OPT_MODEL: cfg.model_path = optarg; break;
        case OPT_OUT: out = optarg; break;
        case OPT_HELP: usage_tune(stdout); return 0;
        default:
            fprintf(stderr, "tandem tune: unknown or incomplete option '%s' (see tandem tune --help)\n",
                    argv[optind - 1]);
            return EXIT_USAGE;
        }
        if (!ok) {
            fprintf(stderr, "tandem tune: bad value '%s' for --%s%s\n", optarg, opts[c - OPT_DEVICE].name,
                    c == OPT_DEVICE    ? " (auto, cuda or emu)"
                    : c == OPT_THREADS ? " (1 to 4096)"
                                       : "");
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tandem tune: unexpected argument '%s'\n", argv[optind]);
        return EXIT_USAGE;
    }
    if (!*out) {
        fprintf(stderr, "tandem tune: bad value '' for --out\n");
        return EXIT_USAGE;
    }
    if ((cfg.emu_gpu || cfg.emu_link) && cfg.device != TANDEM_DEVICE_EMU) {
        fprintf(stderr, "tandem tune: --emu-gpu and --emu-link need --device emu\n");
        return EXIT_USAGE;
    }
    progress_state ps = {.t0 = now_s()};
    cfg.progress = on_progress;
    cfg.user = &ps;
    char err[512];
    tandem_status st = tandem_tune(&cfg, out, err, sizeof err);
    if (st != TANDEM_OK) {
        fprintf(stderr, "tandem tune: %s\n", err);
        return st == TANDEM_ERR_INVALID_ARGUMENT ? EXIT_USAGE : EXIT_FAILED;
    }
    fprintf(stderr, "tandem tune: wrote %s in %.1f s\n", out, now_s() - ps.t0);
    return 0;
}
