/* The `tandem` command line. Built only on the public API (include/tandem.h)
 * and the batch file layer (tools/batch_io.h).
 *
 *   tandem generate --input FILE --output FILE [options]   batch inference
 *   tandem --version | --help
 *
 * Exit codes: 0 the job ran to its end (every input record has an output
 * record: a completion or an error); 1 bad usage; 2 the job could not run or
 * stopped (model, input or output failure). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tandem.h"
#include "tools/batch_io.h"
#include "tools/cli.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void usage_generate(FILE *f) {
    fprintf(
        f,
        "usage: tandem generate --input FILE --output FILE [options]\n"
        "\n"
        "Runs every prompt of FILE through the model and writes one JSON line per request as it finishes.\n"
        "\n"
        "  --model PATH         GGUF model (default: $TANDEM_MODEL, else the model scripts/fetch-model gets)\n"
        "  --input FILE         prompts, '-' for stdin: JSONL {\"id\", \"prompt\"}, OpenAI Batch API lines\n"
        "                       ({\"custom_id\", \"body\": {\"messages\": ...}}), or plain text, one prompt per line\n"
        "  --input-format F     auto (default), jsonl, openai, text\n"
        "  --output FILE        results, '-' for stdout; OpenAI Batch output lines when the input was OpenAI\n"
        "  --resume             keep the results already in --output, skip their ids, append the rest\n"
        "  --chat               render jsonl/text prompts as a user message with the model's chat template\n"
        "  --chat-template NAME chatml, llama3, llama2, mistral, mistral-v0.1 (default: the model's)\n"
        "  --max-tokens N       tokens to generate per request (default 256; a record's own value wins)\n"
        "  --temperature T      0 is greedy (default 1)\n"
        "  --top-p P, --top-k K, --min-p P, --repetition-penalty R, --seed S, --stop TEXT (repeatable)\n"
        "  --batch N            requests running at once (default 256)\n"
        "  --step-tokens N      tokens per step, prompt chunks included (default 2048)\n"
        "  --device D           auto (default: a CUDA GPU if one answers, else the CPU), cpu, cuda, emu\n"
        "                       (the emulated device: the device code path on host threads)\n"
        "  --mode M             auto (default: device when the KV budget fits the device, else hybrid),\n"
        "                       device (everything on the device), cpu-attn (attention on the CPU next to a\n"
        "                       host KV cache, overlapped with the device's linear layers), hybrid (a device\n"
        "                       KV pool and a host one: each request attends where its KV is, moving to the\n"
        "                       host's when the device's runs out and back when room returns)\n"
        "  --device-kv SIZE     hybrid: the device's KV pool (--kv-budget is the host's; default: 90%% of\n"
        "                       what the weights leave)\n"
        "  --trace FILE         pipelined modes: a Chrome trace-event JSON of every step (open in Perfetto)\n"
        "  --emu-gpu NAME       with --device emu: take the time of a T4, A10G, A100-SXM, H100-PCIe or\n"
        "                       H100-SXM per op instead of computing (timings only: outputs are meaningless)\n"
        "  --emu-link NAME      with --device emu: copies take the time of pcie3-x16, pcie4-x16 or pcie5-x16\n"
        "  --profile P          a hardware profile (tandem tune) or preset (T4, A10G, H100-PCIe, H100-SXM): the\n"
        "                       cost model splits each pipelined step into sub-batches with it\n"
        "  --threads N          CPU threads (default: all)\n"
        "  --kv-budget SIZE     KV cache, e.g. 4G (default: a quarter of RAM, at most 4G; on a device, at\n"
        "                       most 90%% of the memory the weights leave)\n"
        "  --fsync              fsync the output after every record\n"
        "  --quiet              no progress, only errors and the summary\n"
        "\n"
        "Exit status: 0 done (failed requests have error records), 1 bad usage, 2 the job could not run.\n");
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: tandem <command> [options]\n"
            "\n"
            "commands:\n"
            "  generate   batch inference: prompts in, completions out (tandem generate --help)\n"
            "  plan       the cost model's tokens/s of each mode for a batch, and an SVG chart (tandem plan --help)\n"
            "  tune       measure this machine into a hardware profile (tandem tune --help)\n"
            "\n"
            "  --version  print the version\n");
}

bool tandem_parse_size(const char *s, size_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v <= 0)
        return false;
    double mul = 1;
    switch (*end) {
    case 'k':
    case 'K':
        mul = 1024.0;
        end++;
        break;
    case 'm':
    case 'M':
        mul = 1024.0 * 1024;
        end++;
        break;
    case 'g':
    case 'G':
        mul = 1024.0 * 1024 * 1024;
        end++;
        break;
    case 't':
    case 'T':
        mul = 1024.0 * 1024 * 1024 * 1024;
        end++;
        break;
    default: break;
    }
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end || v * mul > 1e18)
        return false;
    *out = (size_t)(v * mul);
    return true;
}

static bool parse_int(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end)
        return false;
    *out = v;
    return true;
}

/* One request in flight: what its output record needs. */
typedef struct job {
    char *id_json;
    char *model; /* OpenAI body.model, or NULL */
    tandem_request *req;
    struct job *next;                  /* finished, waiting to be written */
    struct job *live_prev, *live_next; /* every job not yet freed */
} job;

typedef struct run {
    tandem_engine *e;
    batch_writer *w;
    job *finished; /* filled by on_finish during a step */
    job *live;
    uint64_t done, failed, skipped, bad, generated;
    bool io_failed;
    batch_error werr;
} run;

static void on_finish(void *user, tandem_request *r) {
    run *R = user;
    job *j = tandem_request_user(r);
    j->next = R->finished;
    R->finished = j;
}

static job *new_job(run *R) {
    job *j = calloc(1, sizeof *j);
    if (j) {
        j->live_next = R->live;
        if (R->live)
            R->live->live_prev = j;
        R->live = j;
    }
    return j;
}

static void free_job(run *R, job *j) {
    if (j->live_prev)
        j->live_prev->live_next = j->live_next;
    else
        R->live = j->live_next;
    if (j->live_next)
        j->live_next->live_prev = j->live_prev;
    free(j->id_json);
    free(j->model);
    free(j);
}

/* Writes the records of the requests that finished in the last step. */
static void write_finished(run *R) {
    while (R->finished) {
        job *j = R->finished;
        R->finished = j->next;
        tandem_request *r = j->req;
        tandem_finish f = tandem_request_finish(r);
        tandem_status st;
        if (f == TANDEM_FINISH_STOP || f == TANDEM_FINISH_LENGTH) {
            size_t len, n_prompt, n_gen;
            const char *text = tandem_request_text(r, &len);
            tandem_request_tokens(r, &n_prompt, &n_gen);
            batch_result res = {.id_json = j->id_json,
                                .completion = text,
                                .completion_len = len,
                                .prompt_tokens = (int32_t)n_prompt,
                                .completion_tokens = (int32_t)n_gen,
                                .finish = f == TANDEM_FINISH_STOP ? BATCH_FINISH_STOP : BATCH_FINISH_LENGTH,
                                .model = j->model};
            st = batch_write_result(R->w, &res, &R->werr);
            R->done++;
            R->generated += n_gen;
        } else {
            const char *msg = f == TANDEM_FINISH_CANCELLED ? "cancelled" : tandem_request_error(r);
            st = batch_write_error(R->w, j->id_json, tandem_status_name(tandem_request_status(r)), msg, &R->werr);
            R->failed++;
        }
        if (st != TANDEM_OK)
            R->io_failed = true;
        tandem_request_free(R->e, r);
        free_job(R, j);
    }
}

static void progress(const run *R, double t0, uint64_t total, bool tty, bool final) {
    double dt = now_s() - t0;
    uint64_t n = R->done + R->failed;
    double tps = dt > 0 ? (double)R->generated / dt : 0;
    if (tty && !final) {
        char bar[31] = {0};
        int fill = total ? (int)(30.0 * (double)n / (double)total) : 0;
        for (int i = 0; i < 30; i++)
            bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
        double eta = total && n ? dt / (double)n * (double)(total - n) : 0;
        fprintf(stderr, "\r[%s] %llu/%llu requests  %.0f tok/s  ETA %.0fs   ", bar, (unsigned long long)n,
                (unsigned long long)total, tps, eta);
    } else if (!final) {
        fprintf(stderr, "tandem: %llu/%llu requests, %llu tokens, %.0f tok/s, %.0fs\n", (unsigned long long)n,
                (unsigned long long)total, (unsigned long long)R->generated, tps, dt);
    }
    fflush(stderr);
}

/* Non-blank lines of a regular file (the progress bar's total); 0 when it
 * cannot be known (a pipe). */
static uint64_t count_lines(const char *path) {
    struct stat sb;
    if (!strcmp(path, "-") || stat(path, &sb) || !S_ISREG(sb.st_mode))
        return 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    uint64_t n = 0;
    int c, blank = 1;
    while ((c = getc(f)) != EOF) {
        if (c == '\n') {
            n += !blank;
            blank = 1;
        } else if (c != ' ' && c != '\r' && c != '\t')
            blank = 0;
    }
    n += !blank;
    fclose(f);
    return n;
}

enum {
    OPT_MODEL = 256,
    OPT_INPUT,
    OPT_INPUT_FORMAT,
    OPT_OUTPUT,
    OPT_RESUME,
    OPT_CHAT,
    OPT_CHAT_TEMPLATE,
    OPT_MAX_TOKENS,
    OPT_TEMPERATURE,
    OPT_TOP_P,
    OPT_TOP_K,
    OPT_MIN_P,
    OPT_REP,
    OPT_SEED,
    OPT_STOP,
    OPT_BATCH,
    OPT_STEP_TOKENS,
    OPT_THREADS,
    OPT_KV,
    OPT_FSYNC,
    OPT_QUIET,
    OPT_HELP,
    OPT_IGNORE_EOS,
    OPT_DEVICE,
    OPT_MODE,
    OPT_TRACE,
    OPT_EMU_GPU,
    OPT_EMU_LINK,
    OPT_PROFILE,
    OPT_DEVICE_KV,
};

/* The index of s in names[n], or -1. */
static int parse_name(const char *s, const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (!strcmp(s, names[i]))
            return i;
    return -1;
}

static bool parse_device(const char *s, tandem_device *out) {
    /* in tandem_device's order */
    static const char *const names[] = {"auto", "cpu", "cuda", "emu"};
    int i = parse_name(s, names, 4);
    if (i >= 0)
        *out = (tandem_device)i;
    return i >= 0;
}

static bool parse_mode(const char *s, tandem_mode *out) {
    /* in tandem_mode's order */
    static const char *const names[] = {"auto", "device", "cpu-attn", "hybrid"};
    int i = parse_name(s, names, 4);
    if (i >= 0)
        *out = (tandem_mode)i;
    return i >= 0;
}

static int cmd_generate(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, OPT_MODEL},
        {"input", required_argument, 0, OPT_INPUT},
        {"input-format", required_argument, 0, OPT_INPUT_FORMAT},
        {"output", required_argument, 0, OPT_OUTPUT},
        {"resume", no_argument, 0, OPT_RESUME},
        {"chat", no_argument, 0, OPT_CHAT},
        {"chat-template", required_argument, 0, OPT_CHAT_TEMPLATE},
        {"max-tokens", required_argument, 0, OPT_MAX_TOKENS},
        {"temperature", required_argument, 0, OPT_TEMPERATURE},
        {"top-p", required_argument, 0, OPT_TOP_P},
        {"top-k", required_argument, 0, OPT_TOP_K},
        {"min-p", required_argument, 0, OPT_MIN_P},
        {"repetition-penalty", required_argument, 0, OPT_REP},
        {"seed", required_argument, 0, OPT_SEED},
        {"stop", required_argument, 0, OPT_STOP},
        {"batch", required_argument, 0, OPT_BATCH},
        {"step-tokens", required_argument, 0, OPT_STEP_TOKENS},
        {"threads", required_argument, 0, OPT_THREADS},
        {"kv-budget", required_argument, 0, OPT_KV},
        {"fsync", no_argument, 0, OPT_FSYNC},
        {"quiet", no_argument, 0, OPT_QUIET},
        {"help", no_argument, 0, OPT_HELP},
        {"ignore-eos", no_argument, 0, OPT_IGNORE_EOS},
        {"device", required_argument, 0, OPT_DEVICE},
        {"mode", required_argument, 0, OPT_MODE},
        {"trace", required_argument, 0, OPT_TRACE},
        {"emu-gpu", required_argument, 0, OPT_EMU_GPU},
        {"emu-link", required_argument, 0, OPT_EMU_LINK},
        {"profile", required_argument, 0, OPT_PROFILE},
        {"device-kv", required_argument, 0, OPT_DEVICE_KV},
        {0, 0, 0, 0},
    };
    tandem_config cfg;
    tandem_config_init(&cfg);
    tandem_sampling samp;
    tandem_sampling_init(&samp);
    const char *input = NULL, *output = NULL, *stops[64];
    int n_stops = 0;
    batch_format format = BATCH_FORMAT_AUTO;
    bool resume = false, chat = false, fsync_each = false, quiet = false;
    batch_error berr = {0};
    long v = 0;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case OPT_MODEL: cfg.model_path = optarg; break;
        case OPT_INPUT: input = optarg; break;
        case OPT_OUTPUT: output = optarg; break;
        case OPT_INPUT_FORMAT: ok = batch_format_parse(optarg, &format, &berr) == TANDEM_OK; break;
        case OPT_RESUME: resume = true; break;
        case OPT_CHAT: chat = true; break;
        case OPT_CHAT_TEMPLATE: cfg.chat_template = optarg; break;
        case OPT_MAX_TOKENS: ok = parse_int(optarg, 1, 1 << 30, &v) && (samp.max_tokens = (int32_t)v); break;
        case OPT_TEMPERATURE: ok = parse_float(optarg, &samp.temperature); break;
        case OPT_TOP_P: ok = parse_float(optarg, &samp.top_p); break;
        case OPT_TOP_K: ok = parse_int(optarg, 0, 1 << 30, &v), samp.top_k = (int32_t)v; break;
        case OPT_MIN_P: ok = parse_float(optarg, &samp.min_p); break;
        case OPT_REP: ok = parse_float(optarg, &samp.repetition_penalty); break;
        case OPT_SEED: ok = parse_int(optarg, 0, LONG_MAX, &v), samp.seed = (uint64_t)v; break;
        case OPT_STOP: ok = n_stops < 64 && *optarg, stops[n_stops < 64 ? n_stops++ : 63] = optarg; break;
        case OPT_BATCH: ok = parse_int(optarg, 1, 1 << 20, &v), cfg.max_batch = (int)v; break;
        case OPT_STEP_TOKENS: ok = parse_int(optarg, 1, 1 << 20, &v), cfg.step_tokens = (int)v; break;
        case OPT_THREADS: ok = parse_int(optarg, 1, 4096, &v), cfg.threads = (int)v; break;
        case OPT_KV: ok = tandem_parse_size(optarg, &cfg.kv_budget_bytes); break;
        case OPT_FSYNC: fsync_each = true; break;
        case OPT_QUIET: quiet = true; break;
        case OPT_IGNORE_EOS: samp.ignore_eos = 1; break;
        case OPT_DEVICE: ok = parse_device(optarg, &cfg.device); break;
        case OPT_MODE: ok = parse_mode(optarg, &cfg.mode); break;
        case OPT_TRACE: cfg.trace_path = optarg; break;
        case OPT_EMU_GPU: cfg.emu_gpu = optarg; break;
        case OPT_EMU_LINK: cfg.emu_link = optarg; break;
        case OPT_PROFILE: cfg.profile = optarg; break;
        case OPT_DEVICE_KV: ok = tandem_parse_size(optarg, &cfg.device_kv_bytes); break;
        case OPT_HELP: usage_generate(stdout); return 0;
        default:
            fprintf(stderr, "tandem generate: unknown or incomplete option '%s' (see tandem generate --help)\n",
                    argv[optind - 1]);
            return EXIT_USAGE;
        }
        if (!ok) {
            fprintf(stderr, "tandem generate: bad value '%s' for --%s%s%s\n", optarg, opts[c - OPT_MODEL].name,
                    berr.msg[0] ? ": " : "", berr.msg);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tandem generate: unexpected argument '%s'\n", argv[optind]);
        return EXIT_USAGE;
    }
    if (!input || !output) {
        fprintf(stderr, "tandem generate: --input and --output are required (see tandem generate --help)\n");
        return EXIT_USAGE;
    }
    samp.stop = stops;
    samp.n_stop = n_stops;

    /* the input first: a missing file is a one-line error, before the model loads */
    FILE *in = strcmp(input, "-") ? fopen(input, "rb") : stdin;
    if (!in) {
        fprintf(stderr, "tandem generate: cannot open input %s: %s\n", input, strerror(errno));
        return EXIT_FAILED;
    }
    int rc = EXIT_FAILED;
    double t0 = now_s(), t_run = 0;
    bool tty = false;
    batch_reader *rd = NULL;
    batch_writer *w = NULL;
    batch_done *done = batch_done_new();
    tandem_engine *e = NULL;
    run R = {0};
    if (batch_reader_open(in, format, &rd, &berr) || batch_reader_detect(rd, &format, &berr)) {
        fprintf(stderr, "tandem generate: %s: %s\n", input, berr.msg);
        goto out;
    }
    if (format == BATCH_FORMAT_AUTO)
        format = BATCH_FORMAT_TEXT; /* empty input: nothing to do, whatever the shape */

    if (!quiet)
        fprintf(stderr, "tandem: loading %s\n", cfg.model_path ? cfg.model_path : "the default model");
    tandem_status st = tandem_engine_open(&cfg, &e);
    if (st != TANDEM_OK) {
        fprintf(stderr, "tandem generate: %s\n", tandem_engine_errmsg(e));
        goto out;
    }
    /* one line on where it runs: after an auto fallback, it says why */
    fprintf(stderr, "tandem: device %s\n", tandem_engine_device(e));
    batch_writer_opts wo = {.shape = batch_shape_for(format), .resume = resume, .fsync = fsync_each};
    batch_resume_report rep = {0};
    if (!done || batch_writer_open(output, &wo, done, &rep, &w, &berr)) {
        fprintf(stderr, "tandem generate: %s: %s\n", output, done ? berr.msg : "out of memory");
        goto out;
    }
    if (resume && !quiet) {
        fprintf(stderr, "tandem: resuming: %llu records already in %s", (unsigned long long)rep.records, output);
        if (rep.truncated)
            fprintf(stderr, "; cut a partial last record (line %llu, %llu bytes)",
                    (unsigned long long)rep.truncated_line, (unsigned long long)rep.truncated_bytes);
        fprintf(stderr, "\n");
    }

    R.e = e;
    R.w = w;
    const uint64_t total = count_lines(input);
    tty = isatty(STDERR_FILENO) && !quiet;
    const int max_inflight = 2 * (cfg.max_batch ? cfg.max_batch : 256);
    tandem_callbacks cb = {.on_finish = on_finish, .user_data = &R};
    int inflight = 0, busy = 1;
    bool eof = false;
    double t_print = now_s();
    t_run = t_print;
    while (!R.io_failed && (!eof || busy)) {
        /* keep the scheduler fed, not the whole file in memory */
        while (!eof && inflight < max_inflight) {
            batch_record rec;
            batch_next nx = batch_reader_next(rd, &rec, &berr);
            if (nx == BATCH_NEXT_END) {
                eof = true;
                break;
            }
            if (nx == BATCH_NEXT_FAIL) {
                fprintf(stderr, "\ntandem generate: %s: %s\n", input, berr.msg);
                goto out;
            }
            if (nx == BATCH_NEXT_BAD_LINE) {
                fprintf(stderr, "%standem: %s:%llu: %s (skipped)\n", tty ? "\n" : "", input,
                        (unsigned long long)berr.line, berr.msg);
                R.bad++;
                if (rec.id_json && !batch_done_contains(done, rec.id_json) &&
                    batch_write_error(w, rec.id_json, "invalid_request", berr.msg, &R.werr))
                    R.io_failed = true;
                batch_record_free(&rec);
                continue;
            }
            if (batch_done_contains(done, rec.id_json)) {
                R.skipped++;
                batch_record_free(&rec);
                continue;
            }
            tandem_sampling s = samp;
            if (rec.has_max_tokens)
                s.max_tokens = rec.max_tokens;
            if (rec.has_temperature)
                s.temperature = rec.temperature;
            if (rec.has_top_p)
                s.top_p = rec.top_p;
            if (rec.has_top_k)
                s.top_k = rec.top_k;
            if (rec.has_seed)
                s.seed = (uint64_t)rec.seed;
            if (rec.stop) {
                s.stop = (const char *const *)rec.stop;
                s.n_stop = rec.n_stop;
            }
            job *j = new_job(&R);
            if (!j) {
                fprintf(stderr, "tandem generate: out of memory\n");
                batch_record_free(&rec);
                goto out;
            }
            j->id_json = rec.id_json;
            j->model = rec.model;
            rec.id_json = rec.model = NULL;
            if (rec.messages) {
                tandem_message m[256];
                int32_t n = rec.n_messages < 256 ? rec.n_messages : 256;
                for (int32_t i = 0; i < n; i++)
                    m[i] = (tandem_message){rec.messages[i].role, rec.messages[i].content,
                                            strlen(rec.messages[i].content)};
                st = tandem_submit_chat(e, m, (size_t)n, &s, j, &j->req);
            } else if (chat) {
                tandem_message m = {"user", rec.prompt, strlen(rec.prompt)};
                st = tandem_submit_chat(e, &m, 1, &s, j, &j->req);
            } else {
                st = tandem_submit_text(e, rec.prompt, strlen(rec.prompt), &s, j, &j->req);
            }
            batch_record_free(&rec);
            if (st != TANDEM_OK) { /* this request only: bad parameters, an unusable prompt */
                if (batch_write_error(w, j->id_json, tandem_status_name(st), tandem_engine_errmsg(e), &R.werr))
                    R.io_failed = true;
                R.failed++;
                free_job(&R, j);
                continue;
            }
            inflight++;
        }
        st = tandem_step(e, &cb, &busy);
        uint64_t before = R.done + R.failed;
        write_finished(&R);
        inflight -= (int)(R.done + R.failed - before);
        if (st != TANDEM_OK) {
            fprintf(stderr, "\ntandem generate: %s\n", tandem_engine_errmsg(e));
            goto out;
        }
        double t = now_s();
        if (!quiet && t - t_print > (tty ? 0.25 : 10.0)) {
            progress(&R, t_run, total ? total - R.skipped - R.bad : 0, tty, false);
            t_print = t;
        }
    }
    if (R.io_failed) {
        fprintf(stderr, "\ntandem generate: writing %s failed: %s\n", output, R.werr.msg);
        goto out;
    }
    rc = 0;

out:
    if (e) {
        tandem_stats stats = {.struct_size = sizeof stats};
        if (R.e && tandem_engine_stats(e, &stats) == TANDEM_OK) {
            double wall = now_s() - t0, ran = t_run > 0 ? now_s() - t_run : 0;
            if (tty)
                fprintf(stderr, "\n");
            fprintf(stderr,
                    "tandem: %llu requests done, %llu failed, %llu skipped (already in output), %llu bad lines; "
                    "%llu prompt + %llu generated tokens in %.1f s (%.0f prompt tok/s, %.0f generated tok/s; "
                    "%.1f s after loading: %.0f generated tok/s); %llu preemptions; peak KV %.1f MiB of %.1f MiB\n",
                    (unsigned long long)R.done, (unsigned long long)R.failed, (unsigned long long)R.skipped,
                    (unsigned long long)R.bad, (unsigned long long)stats.prompt_tokens,
                    (unsigned long long)stats.generated_tokens, wall, stats.prompt_tokens / (wall > 0 ? wall : 1),
                    stats.generated_tokens / (wall > 0 ? wall : 1), ran, stats.generated_tokens / (ran > 0 ? ran : 1),
                    (unsigned long long)stats.preemptions, stats.kv_bytes_peak / 1048576.0,
                    stats.kv_bytes_total / 1048576.0);
            if (stats.host_decodes_held > 0)
                fprintf(stderr, "tandem: the cost model held back %llu host-pool decodes (they would slow the step)\n",
                        (unsigned long long)stats.host_decodes_held);
            if (stats.kv_moves_to_host + stats.kv_moves_to_device > 0)
                fprintf(stderr,
                        "tandem: KV moves: %llu sequences to the host pool, %llu back to the device (%.1f MiB)\n",
                        (unsigned long long)stats.kv_moves_to_host, (unsigned long long)stats.kv_moves_to_device,
                        stats.kv_moved_bytes / 1048576.0);
            if (stats.pipeline_steps > 0) {
                double busiest = stats.device_busy_seconds;
                const double others[] = {stats.d2h_busy_seconds, stats.h2d_busy_seconds, stats.cpu_busy_seconds};
                for (int i = 0; i < 3; i++)
                    busiest = others[i] > busiest ? others[i] : busiest;
                fprintf(stderr,
                        "tandem: pipeline: %llu steps, %.1f ms each; busy: device %.0f%%, D2H %.0f%%, H2D %.0f%%, "
                        "CPU attention %.0f%%; overlap efficiency %.2f\n",
                        (unsigned long long)stats.pipeline_steps,
                        1e3 * stats.pipeline_seconds / (double)stats.pipeline_steps,
                        100 * stats.device_busy_seconds / stats.pipeline_seconds,
                        100 * stats.d2h_busy_seconds / stats.pipeline_seconds,
                        100 * stats.h2d_busy_seconds / stats.pipeline_seconds,
                        100 * stats.cpu_busy_seconds / stats.pipeline_seconds, busiest / stats.pipeline_seconds);
            }
        }
    }
    tandem_engine_close(e); /* frees the requests still in flight */
    while (R.live)
        free_job(&R, R.live);
    if (w && batch_writer_close(w, &berr) && rc == 0) {
        fprintf(stderr, "tandem generate: closing %s: %s\n", output, berr.msg);
        rc = EXIT_FAILED;
    }
    batch_reader_close(rd);
    batch_done_free(done);
    if (in != stdin)
        fclose(in);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("tandem %s\n", tandem_version());
        return 0;
    }
    if (!strcmp(argv[1], "generate"))
        return cmd_generate(argc - 1, argv + 1);
    if (!strcmp(argv[1], "plan"))
        return tandem_cmd_plan(argc - 1, argv + 1);
    if (!strcmp(argv[1], "tune"))
        return tandem_cmd_tune(argc - 1, argv + 1);
    fprintf(stderr, "tandem: unknown command '%s' (see tandem --help)\n", argv[1]);
    return EXIT_USAGE;
}
