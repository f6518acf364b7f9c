/* The public API (include/tandem.h) over the engine's parts: model,
 * tokenizer, host KV cache, forward pass and scheduler. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu/kv_cache.h"
#include "engine/api_util.h"
#include "engine/chat_template.h"
#include "engine/forward.h"
#include "engine/generate.h"
#include "engine/model.h"
#include "engine/scheduler.h"
#include "engine/tokenizer.h"
#include "gpu/device.h"
#include "offload/profile.h"
#include "tandem.h"

#define DEFAULT_MAX_BATCH 256
#define DEFAULT_STEP_TOKENS 2048
#define DEFAULT_KV_CAP ((size_t)4 << 30)

struct tandem_engine {
    tandem_config cfg;
    td_model *model;
    td_tokenizer *tok;
    td_device *dev; /* NULL: the CPU */
    void *kv_pool;  /* the KV pool in dev's memory */
    td_kv_cache *kv;
    td_kv_cache *hkv;    /* mode hybrid: the host's pool (kv is the device's) */
    td_profile *profile; /* config.profile, which fw plans with */
    td_forward *fw;
    char where[TD_ERROR_MSG_MAX + 64]; /* tandem_engine_device */
    FILE *trace;                       /* config.trace_path, while the engine is open */
    td_sched *sched;
    td_chat_template chat;           /* family TD_CHAT_UNKNOWN when none */
    char chat_why[TD_ERROR_MSG_MAX]; /* why there is none */
    tandem_request *requests;        /* every request not yet freed: tandem_engine_close frees them */
    td_error err;
};

/* A request: its decoding state first, so that the scheduler's td_gen_seq
 * pointer is the request's. */
struct tandem_request {
    td_gen_seq seq;
    void *user;
    char **stop; /* the copied stop strings */
    int32_t n_stop;
    tandem_request *prev, *next; /* the engine's list */
};

static tandem_request *request_of(td_gen_seq *s) { return (tandem_request *)s; }

/* Records a failure on the engine and returns its status. */
static tandem_status fail(tandem_engine *e, tandem_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->err.msg, sizeof e->err.msg, fmt, ap);
    va_end(ap);
    e->err.status = st;
    return st;
}

/* Keeps err's message as the engine's (for internal calls that filled it). */
static tandem_status keep(tandem_engine *e, tandem_status st) {
    if (st != TANDEM_OK)
        e->err.status = st;
    return st;
}

const char *tandem_finish_name(tandem_finish f) { return td_finish_name((td_finish)f); }

/* Physical memory, or 0 when the system does not say. */
static size_t physical_memory(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? (size_t)pages * (size_t)page : 0;
}

static size_t default_kv_budget(void) {
    size_t quarter = physical_memory() ? physical_memory() / 4 : (size_t)1 << 30;
    return quarter < DEFAULT_KV_CAP ? quarter : DEFAULT_KV_CAP;
}

static const char *mode_name(tandem_mode m) {
    return m == TANDEM_MODE_DEVICE     ? "device"
           : m == TANDEM_MODE_CPU_ATTN ? "cpu-attn"
           : m == TANDEM_MODE_HYBRID   ? "hybrid"
                                       : "auto";
}

/* The device the config asks for; on AUTO, a CUDA device or the CPU, and
 * where tandem_engine_device will say why. */
static tandem_status open_device(tandem_engine *e) {
    const tandem_config *c = &e->cfg;
    td_device_config dc;
    td_error de;
    tandem_status st = td_api_device_config(c->device, c->emu_gpu, c->emu_link, c->threads, &dc, &de);
    if (st != TANDEM_OK)
        return fail(e, st, "config: %s", de.msg);
    if (c->device == TANDEM_DEVICE_CPU) {
        snprintf(e->where, sizeof e->where, "cpu");
        return TANDEM_OK;
    }
    st = td_device_open(&dc, &e->dev, &de);
    if (st != TANDEM_OK) {
        if (c->device != TANDEM_DEVICE_AUTO)
            /* the plugin's messages start with "cuda: " */
            return fail(e, st, c->device == TANDEM_DEVICE_EMU ? "device emu: %s" : "device %s", de.msg);
        if (c->mode != TANDEM_MODE_AUTO)
            return fail(e, st, "mode %s: no device (%s)", mode_name(c->mode), de.msg);
        snprintf(e->where, sizeof e->where, "cpu (%s)", de.msg);
        return TANDEM_OK;
    }
    return TANDEM_OK;
}

/* A KV pool in host memory; one larger than memory is refused: the pool is
 * zero-filled at open, so it would not fail, it would swap or be killed. */
static tandem_status open_host_pool(tandem_engine *e, const td_kv_config *kc, td_kv_cache **out) {
    const size_t ram = physical_memory();
    if (ram && kc->budget_bytes > ram / 10 * 9)
        return fail(e, TANDEM_ERR_OUT_OF_MEMORY,
                    "config: a host KV pool of %zu MiB is more than 90%% of the %zu MiB of memory",
                    kc->budget_bytes >> 20, ram >> 20);
    return keep(e, td_kv_create(kc, out, &e->err));
}

static tandem_status open_parts(tandem_engine *e) {
    tandem_config *c = &e->cfg;
    td_error *err = &e->err;
    if (c->struct_size < TD_API_CONFIG_MIN_SIZE)
        return fail(e, TANDEM_ERR_INVALID_ARGUMENT, "config: struct_size %zu (call tandem_config_init first)",
                    c->struct_size);
    if ((unsigned)c->device > TANDEM_DEVICE_EMU)
        return fail(e, TANDEM_ERR_INVALID_ARGUMENT, "config: unknown device %d", (int)c->device);
    if ((unsigned)c->mode > TANDEM_MODE_HYBRID)
        return fail(e, TANDEM_ERR_INVALID_ARGUMENT, "config: unknown mode %d", (int)c->mode);
    if (c->device == TANDEM_DEVICE_CPU && c->mode != TANDEM_MODE_AUTO)
        return fail(e, TANDEM_ERR_UNSUPPORTED, "config: mode %s needs a device; the CPU alone runs mode auto",
                    mode_name(c->mode));
    if (c->weights == TANDEM_WEIGHTS_F32 && (c->device == TANDEM_DEVICE_CUDA || c->device == TANDEM_DEVICE_EMU))
        return fail(e, TANDEM_ERR_UNSUPPORTED, "config: f32 weights run on the CPU only (device cpu)");
    if (c->threads < 0 || c->max_batch < 0 || c->step_tokens < 0)
        return fail(e, TANDEM_ERR_INVALID_ARGUMENT, "config: threads %d, max_batch %d, step_tokens %d must be >= 0",
                    c->threads, c->max_batch, c->step_tokens);
    if (!c->max_batch)
        c->max_batch = DEFAULT_MAX_BATCH;
    if (!c->step_tokens)
        c->step_tokens = DEFAULT_STEP_TOKENS;
    const bool explicit_budget = c->kv_budget_bytes != 0;
    if (!c->kv_budget_bytes)
        c->kv_budget_bytes = default_kv_budget();

    tandem_status st;
    if ((st = open_device(e)))
        return st;
    td_model_options mo;
    td_model_options_default(&mo);
    mo.weights = c->weights == TANDEM_WEIGHTS_F32 ? TD_WEIGHTS_F32 : TD_WEIGHTS_BF16;
    mo.n_threads = c->threads;
    mo.skip_linears = e->dev != NULL; /* they go to the device */
    if ((st = td_model_load(c->model_path, &mo, &e->model, err)) ||
        (st = td_tokenizer_load(e->model->gguf, &e->tok, err)))
        return keep(e, st);
    const td_llama_config *mc = &e->model->cfg;
    td_kv_config kc = {.n_layers = mc->n_layers,
                       .n_kv_heads = mc->n_kv_heads,
                       .head_dim = mc->head_dim,
                       .dtype = TD_DTYPE_BF16,
                       .budget_bytes = c->kv_budget_bytes,
                       /* a preempted request keeps no KV sequence: running ones suffice */
                       .max_seqs = c->max_batch,
                       .max_seq_tokens = mc->n_ctx,
                       .n_threads = c->threads};
    td_sched_config sc = {.max_batch = c->max_batch, .step_tokens = c->step_tokens};
    /* the chat template: named, or the model's; a model without a known one
     * still opens (plain prompts work), and tandem_submit_chat says why */
    if (c->chat_template) {
        if ((st = td_chat_family_parse(c->chat_template, &e->chat.family, err)))
            return keep(e, st);
    } else {
        td_error ce;
        if (td_chat_template_from_gguf(e->model->gguf, &e->chat, &ce) != TANDEM_OK)
            snprintf(e->chat_why, sizeof e->chat_why, "%s", ce.msg);
    }
    const int32_t max_tokens = c->step_tokens > c->max_batch ? c->step_tokens : c->max_batch;
    if (!e->dev) {
        if ((st = td_forward_create(e->model, max_tokens, c->threads, &e->fw, err)))
            return keep(e, st);
    } else {
        /* weights and workspace first: a device KV pool gets what they leave */
        td_attn_place place = c->mode == TANDEM_MODE_CPU_ATTN ? TD_ATTN_ON_CPU
                              : c->mode == TANDEM_MODE_HYBRID ? TD_ATTN_HYBRID
                                                              : TD_ATTN_ON_DEVICE;
        if ((st = td_forward_create_on_device(e->model, e->dev, place, max_tokens, c->threads, &e->fw, err)))
            return keep(e, st);
        const size_t left = e->dev->info.mem_total - td_dev_mem_used(e->dev), room = left / 10 * 9;
        if (c->mode == TANDEM_MODE_AUTO && explicit_budget && kc.budget_bytes > room) {
            /* a cache the device cannot hold: what fits there attends there,
             * the rest on the CPU (and the cost model, given a profile,
             * splits each step) */
            td_forward_destroy(e->fw);
            e->fw = NULL;
            place = TD_ATTN_HYBRID;
            if ((st = td_forward_create_on_device(e->model, e->dev, place, max_tokens, c->threads, &e->fw, err)))
                return keep(e, st);
        }
        /* the profile named, or $TANDEM_PROFILE's (a file from tandem tune) */
        const char *prof = c->profile ? c->profile : getenv("TANDEM_PROFILE");
        if (prof && *prof) {
            if ((st = td_profile_open(prof, &e->profile, err)))
                return keep(e, st);
            td_forward_set_profile(e->fw, e->profile);
            sc.profile = e->profile;
        }
        if (place == TD_ATTN_HYBRID) {
            /* the host's pool is the budget; the device's what is asked or what is left */
            td_kv_config hc = kc;
            kc.budget_bytes = c->device_kv_bytes ? c->device_kv_bytes : room;
            if ((st = open_host_pool(e, &hc, &e->hkv)))
                return st;
            sc.host_kv = e->hkv;
        }
        if (place != TD_ATTN_ON_CPU) {
            if (!explicit_budget && place == TD_ATTN_ON_DEVICE && kc.budget_bytes > room)
                kc.budget_bytes = room;
            if (kc.budget_bytes > left)
                return fail(e, TANDEM_ERR_OUT_OF_MEMORY,
                            "config: a KV pool of %zu MiB does not fit the %zu MiB of %s that weights and workspace "
                            "leave",
                            kc.budget_bytes >> 20, left >> 20, e->dev->info.name);
            if ((st = td_dev_alloc(e->dev, kc.budget_bytes, &e->kv_pool, err)))
                return keep(e, st);
            kc.pool = e->kv_pool;
        }
        if (place != TD_ATTN_ON_DEVICE && c->trace_path) {
            if (!(e->trace = fopen(c->trace_path, "w")))
                return fail(e, TANDEM_ERR_IO, "config: cannot write the trace %s: %s", c->trace_path, strerror(errno));
            td_pipe_trace(td_forward_pipe(e->fw), e->trace);
        }
        snprintf(e->where, sizeof e->where, "%s: %s, mode %s%s%s", e->dev->info.backend, e->dev->info.name,
                 place == TD_ATTN_ON_CPU   ? "cpu-attn"
                 : place == TD_ATTN_HYBRID ? "hybrid"
                                           : "device",
                 place == TD_ATTN_ON_DEVICE ? ""
                 : e->profile               ? ", planned with profile "
                                            : " (no profile: two sub-batches, every host decode; see tandem tune)",
                 place != TD_ATTN_ON_DEVICE && e->profile ? prof : "");
    }
    if (!kc.pool && (st = open_host_pool(e, &kc, &e->kv)))
        return st;
    if ((kc.pool && (st = td_kv_create(&kc, &e->kv, err))) || (st = td_sched_create(e->fw, e->kv, &sc, &e->sched, err)))
        return keep(e, st);
    return TANDEM_OK;
}

tandem_status tandem_engine_open(const tandem_config *c, tandem_engine **out) {
    *out = NULL;
    tandem_engine *e = calloc(1, sizeof *e);
    if (!e)
        return TANDEM_ERR_OUT_OF_MEMORY;
    *out = e;
    tandem_config_init(&e->cfg);
    if (c) { /* an older caller's struct is shorter: the fields past it keep their defaults */
        size_t n = c->struct_size < sizeof e->cfg ? c->struct_size : sizeof e->cfg;
        memcpy(&e->cfg, c, n);
        e->cfg.struct_size = c->struct_size; /* open_parts checks it (n may be 0) */
    }
    e->cfg.model_path = strdup(td_api_model_path(e->cfg.model_path));
    if (!e->cfg.model_path)
        return fail(e, TANDEM_ERR_OUT_OF_MEMORY, "out of memory");
    return open_parts(e);
}

static void request_release(tandem_request *r);

void tandem_engine_close(tandem_engine *e) {
    if (!e)
        return;
    /* the scheduler first: it gives back the KV of the requests it runs */
    td_sched_destroy(e->sched);
    while (e->requests) {
        tandem_request *r = e->requests;
        e->requests = r->next;
        request_release(r);
    }
    td_chat_template_free(&e->chat);
    if (e->trace) {
        td_pipe_trace_end(td_forward_pipe(e->fw));
        fclose(e->trace);
    }
    td_forward_destroy(e->fw);
    td_profile_free(e->profile);
    td_kv_destroy(e->kv);
    td_kv_destroy(e->hkv);
    if (e->dev) {
        td_dev_free(e->dev, e->kv_pool);
        td_device_close(e->dev);
    }
    td_tokenizer_free(e->tok);
    td_model_free(e->model);
    free((char *)e->cfg.model_path);
    free(e);
}

const char *tandem_engine_errmsg(const tandem_engine *e) { return e ? e->err.msg : "out of memory"; }

const char *tandem_engine_device(const tandem_engine *e) { return e ? e->where : ""; }

/* Fails calls on an engine that did not open. */
#define READY(e)                                                                                                       \
    do {                                                                                                               \
        if (!(e) || !(e)->sched)                                                                                       \
            return (e) ? fail((e), TANDEM_ERR_INVALID_ARGUMENT, "the engine did not open: %s", (e)->err.msg)           \
                       : TANDEM_ERR_INVALID_ARGUMENT;                                                                  \
    } while (0)

int32_t tandem_n_vocab(const tandem_engine *e) { return e && e->tok ? td_tokenizer_n_vocab(e->tok) : 0; }
int32_t tandem_token_bos(const tandem_engine *e) { return e && e->tok ? td_tokenizer_bos(e->tok) : -1; }
int32_t tandem_token_eos(const tandem_engine *e) { return e && e->tok ? td_tokenizer_eos(e->tok) : -1; }

tandem_status tandem_tokenize(tandem_engine *e, const char *text, size_t len, int add_bos, int parse_special,
                              int32_t *ids, size_t cap, size_t *n_out) {
    READY(e);
    bool bos = add_bos < 0 ? td_tokenizer_add_bos(e->tok) : add_bos != 0;
    return keep(e, td_tokenize(e->tok, text, len, bos, parse_special != 0, ids, cap, n_out, &e->err));
}

tandem_status tandem_detokenize(tandem_engine *e, const int32_t *ids, size_t n, char *out, size_t cap, size_t *n_out) {
    READY(e);
    return keep(e, td_detokenize(e->tok, ids, n, 0, out, cap, n_out, &e->err));
}

/* ---- requests -------------------------------------------------------------- */

static void request_release(tandem_request *r) {
    td_gen_seq_free(&r->seq);
    for (int32_t i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->stop);
    free(r);
}

static tandem_status submit(tandem_engine *e, const int32_t *ids, size_t n, const tandem_sampling *s, void *user,
                            tandem_request **out) {
    *out = NULL;
    tandem_sampling d;
    tandem_sampling_init(&d);
    if (s) { /* an older caller's struct is shorter: the fields past it keep their defaults */
        if (s->struct_size < TD_API_SAMPLING_MIN_SIZE)
            return fail(e, TANDEM_ERR_INVALID_ARGUMENT, "sampling: struct_size %zu (call tandem_sampling_init first)",
                        s->struct_size);
        memcpy(&d, s, s->struct_size < sizeof d ? s->struct_size : sizeof d);
    }
    s = &d;
    if (n == 0)
        return fail(e, TANDEM_ERR_INVALID_ARGUMENT, "the prompt is empty");
    if (n > INT32_MAX)
        return fail(e, TANDEM_ERR_LIMIT, "the prompt has %zu tokens", n);
    if (s->n_stop < 0 || s->n_stop > TD_STOP_MAX_STRINGS || (s->n_stop && !s->stop))
        return fail(e, TANDEM_ERR_INVALID_ARGUMENT, "sampling: n_stop %d (0..%d, with a stop array)", s->n_stop,
                    TD_STOP_MAX_STRINGS);
    tandem_request *r = calloc(1, sizeof *r);
    if (!r)
        return fail(e, TANDEM_ERR_OUT_OF_MEMORY, "out of memory");
    r->user = user;
    if (s->n_stop) {
        r->stop = calloc((size_t)s->n_stop, sizeof *r->stop);
        for (int32_t i = 0; r->stop && i < s->n_stop; i++, r->n_stop++)
            if (!s->stop[i] || !(r->stop[i] = strdup(s->stop[i])))
                break;
        if (!r->stop || r->n_stop < s->n_stop) {
            int32_t at = r->n_stop;
            bool null = r->stop && !s->stop[at];
            request_release(r);
            return null ? fail(e, TANDEM_ERR_INVALID_ARGUMENT, "sampling: stop[%d] is NULL", at)
                        : fail(e, TANDEM_ERR_OUT_OF_MEMORY, "out of memory");
        }
    }
    td_gen_params p = {.sampling = {.temperature = s->temperature,
                                    .top_k = s->top_k,
                                    .top_p = s->top_p,
                                    .min_p = s->min_p,
                                    .repetition_penalty = s->repetition_penalty,
                                    .penalty_last_n = s->penalty_last_n,
                                    .seed = s->seed},
                       .max_tokens = s->max_tokens,
                       .stop = (const char *const *)r->stop,
                       .n_stop = r->n_stop,
                       .ignore_eos = s->ignore_eos != 0};
    tandem_status st = td_gen_seq_init(&r->seq, e->tok, ids, (int32_t)n, &p, &e->err);
    if (st == TANDEM_OK)
        st = td_sched_submit(e->sched, &r->seq, &e->err);
    if (st != TANDEM_OK) {
        request_release(r);
        return keep(e, st);
    }
    r->next = e->requests;
    if (e->requests)
        e->requests->prev = r;
    e->requests = r;
    *out = r;
    return TANDEM_OK;
}

tandem_status tandem_submit_tokens(tandem_engine *e, const int32_t *ids, size_t n, const tandem_sampling *s, void *user,
                                   tandem_request **out) {
    READY(e);
    return submit(e, ids, n, s, user, out);
}

/* Tokenizes text (control tokens recognised) and queues it. */
static tandem_status submit_string(tandem_engine *e, const char *prompt, size_t len, bool bos, const tandem_sampling *s,
                                   void *user, tandem_request **out) {
    size_t n = 0, cap = len + 2; /* a byte-level vocabulary never needs more than a token per byte (+ BOS) */
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids)
        return fail(e, TANDEM_ERR_OUT_OF_MEMORY, "out of memory for a %zu-byte prompt", len);
    tandem_status st = td_tokenize(e->tok, prompt, len, bos, true, ids, cap, &n, &e->err);
    if (st == TANDEM_ERR_LIMIT) { /* not byte-level after all: the size it asked for */
        int32_t *more = realloc(ids, n * sizeof *ids);
        st = more ? td_tokenize(e->tok, prompt, len, bos, true, (ids = more), n, &n, &e->err)
                  : fail(e, TANDEM_ERR_OUT_OF_MEMORY, "out of memory");
    }
    if (st == TANDEM_OK)
        st = submit(e, ids, n, s, user, out);
    free(ids);
    return keep(e, st);
}

tandem_status tandem_submit_text(tandem_engine *e, const char *prompt, size_t len, const tandem_sampling *s, void *user,
                                 tandem_request **out) {
    *out = NULL;
    READY(e);
    return submit_string(e, prompt, len, td_tokenizer_add_bos(e->tok), s, user, out);
}

tandem_status tandem_submit_chat(tandem_engine *e, const tandem_message *msgs, size_t n, const tandem_sampling *s,
                                 void *user, tandem_request **out) {
    *out = NULL;
    READY(e);
    if (e->chat.family == TD_CHAT_UNKNOWN)
        return fail(e, TANDEM_ERR_UNSUPPORTED, "no chat template: %s (set tandem_config.chat_template)",
                    e->chat_why[0] ? e->chat_why : "the model has none");
    if (!msgs && n)
        return fail(e, TANDEM_ERR_INVALID_ARGUMENT, "no messages given");
    td_chat_msg *m = malloc((n ? n : 1) * sizeof *m);
    if (!m)
        return fail(e, TANDEM_ERR_OUT_OF_MEMORY, "out of memory");
    for (size_t i = 0; i < n; i++)
        m[i] = (td_chat_msg){.role = msgs[i].role, .content = msgs[i].content, .content_len = msgs[i].content_len};
    char *text = NULL;
    size_t len = 0;
    tandem_status st = td_chat_render(&e->chat, m, n, true, &text, &len, &e->err);
    free(m);
    if (st)
        return keep(e, st);
    /* the templates that begin with BOS leave it to the tokenizer */
    bool bos = td_chat_family_bos(e->chat.family) || td_tokenizer_add_bos(e->tok);
    st = submit_string(e, text, len, bos, s, user, out);
    free(text);
    return st;
}

const char *tandem_chat_template(const tandem_engine *e) {
    return e && e->chat.family != TD_CHAT_UNKNOWN ? td_chat_family_name(e->chat.family) : "";
}

tandem_status tandem_cancel(tandem_engine *e, tandem_request *r) {
    READY(e);
    if (!r)
        return fail(e, TANDEM_ERR_INVALID_ARGUMENT, "no request given");
    return keep(e, td_sched_cancel(e->sched, &r->seq, &e->err));
}

/* The scheduler's callbacks, turned into the API's. */
typedef struct bridge {
    const tandem_callbacks *cb;
} bridge;

static void on_token(void *user, td_gen_seq *seq, int32_t token, const char *text, size_t len) {
    const bridge *b = user;
    if (b->cb && b->cb->on_token)
        b->cb->on_token(b->cb->user_data, request_of(seq), token, text, len);
}

static void on_finish(void *user, td_gen_seq *seq) {
    const bridge *b = user;
    if (b->cb && b->cb->on_finish)
        b->cb->on_finish(b->cb->user_data, request_of(seq));
}

tandem_status tandem_step(tandem_engine *e, const tandem_callbacks *cb, int *busy) {
    READY(e);
    bridge b = {cb};
    td_sched_callbacks tc = {.on_token = on_token, .on_finish = on_finish, .user = &b};
    bool more = false;
    tandem_status st = td_sched_step(e->sched, &tc, &more, &e->err);
    if (busy)
        *busy = more;
    return keep(e, st);
}

tandem_status tandem_run(tandem_engine *e, const tandem_callbacks *cb) {
    READY(e);
    int busy = 1;
    tandem_status st = TANDEM_OK;
    while (busy && st == TANDEM_OK)
        st = tandem_step(e, cb, &busy);
    return st;
}

void *tandem_request_user(const tandem_request *r) { return r ? r->user : NULL; }
tandem_finish tandem_request_finish(const tandem_request *r) {
    return r ? (tandem_finish)r->seq.finish : TANDEM_FINISH_NONE;
}

const char *tandem_request_text(const tandem_request *r, size_t *len) {
    if (len)
        *len = r ? r->seq.n_text : 0;
    return r && r->seq.text ? r->seq.text : "";
}

const int32_t *tandem_request_tokens(const tandem_request *r, size_t *n_prompt, size_t *n_generated) {
    if (n_prompt)
        *n_prompt = r ? (size_t)r->seq.n_prompt : 0;
    if (n_generated)
        *n_generated = r ? (size_t)td_gen_seq_n_generated(&r->seq) : 0;
    return r ? r->seq.ids : NULL;
}

tandem_status tandem_request_status(const tandem_request *r) {
    return r && r->seq.finish == TD_FINISH_ERROR ? r->seq.error.status : TANDEM_OK;
}

const char *tandem_request_error(const tandem_request *r) {
    return r && r->seq.finish == TD_FINISH_ERROR ? r->seq.error.msg : "";
}

void tandem_request_free(tandem_engine *e, tandem_request *r) {
    if (!r)
        return;
    /* queued, running, or cancelled with its callback still to come */
    if (e && e->sched && (r->seq.finish == TD_FINISH_NONE || r->seq.finish == TD_FINISH_CANCELLED))
        td_sched_forget(e->sched, &r->seq);
    if (e) {
        if (r->prev)
            r->prev->next = r->next;
        else if (e->requests == r)
            e->requests = r->next;
        if (r->next)
            r->next->prev = r->prev;
    }
    request_release(r);
}

tandem_status tandem_engine_stats(tandem_engine *e, tandem_stats *out) {
    READY(e);
    /* a caller built against an older tandem.h gets the fields it knows */
    if (!out || out->struct_size < offsetof(tandem_stats, pipeline_steps))
        return fail(e, TANDEM_ERR_INVALID_ARGUMENT, "stats: set struct_size = sizeof(tandem_stats)");
    const size_t size = out->struct_size < sizeof(tandem_stats) ? out->struct_size : sizeof(tandem_stats);
    tandem_stats all;
    tandem_stats *o = &all;
    const td_sched_stats *s = td_sched_get_stats(e->sched);
    const size_t block = td_kv_get_layout(e->kv)->block_bytes;
    memset(o, 0, sizeof *o);
    o->struct_size = size;
    o->requests_finished = (uint64_t)s->finished;
    o->requests_failed = (uint64_t)s->failed;
    o->prompt_tokens = (uint64_t)s->prompt_tokens;
    o->generated_tokens = (uint64_t)s->generated_tokens;
    o->preemptions = (uint64_t)s->preemptions;
    o->kv_moves_to_host = (uint64_t)s->moves_to_host;
    o->kv_moves_to_device = (uint64_t)s->moves_to_device;
    o->kv_moved_bytes = (uint64_t)s->moved_bytes;
    o->host_decodes_held = (uint64_t)s->host_waits;
    o->steps = (uint64_t)s->steps;
    o->run_seconds = s->seconds;
    o->forward_seconds = s->forward_seconds;
    /* with two pools (hybrid), both: they share the block layout */
    const int32_t blocks = td_kv_n_blocks(e->kv) + (e->hkv ? td_kv_n_blocks(e->hkv) : 0),
                  free_blocks = td_kv_free_blocks(e->kv) + (e->hkv ? td_kv_free_blocks(e->hkv) : 0);
    o->kv_bytes_total = (size_t)blocks * block;
    o->kv_bytes_used = (size_t)(blocks - free_blocks) * block;
    o->kv_bytes_peak = (size_t)s->peak_kv_blocks * block;
    o->running = (uint32_t)td_sched_running(e->sched);
    o->queued = (uint32_t)td_sched_queued(e->sched);
    const td_pipe *p = td_forward_pipe(e->fw);
    if (p) {
        const td_pipe_stats *ps = td_pipe_get_stats(p);
        o->pipeline_steps = (uint64_t)ps->steps;
        o->pipeline_seconds = ps->step;
        o->device_busy_seconds = ps->device;
        o->d2h_busy_seconds = ps->d2h;
        o->h2d_busy_seconds = ps->h2d;
        o->cpu_busy_seconds = ps->cpu;
    }
    memcpy(out, o, size);
    return TANDEM_OK;
}
