/* The batch CLI's input and output records (see batch_io.h). */
#include "batch_io.h"

#include <cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_EXACT_INT 9007199254740992.0 /* 2^53: integers up to here are exact doubles */

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static tandem_status
fail(batch_error *err, tandem_status status, uint64_t line, const char *fmt, ...) {
    if (err) {
        err->status = status;
        err->line = line;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return status;
}

static void clear_error(batch_error *err) {
    if (err) {
        err->status = TANDEM_OK;
        err->line = 0;
        err->msg[0] = '\0';
    }
}

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* ---- formats */

const char *batch_format_name(batch_format format) {
    switch (format) {
    case BATCH_FORMAT_AUTO: return "auto";
    case BATCH_FORMAT_JSONL: return "jsonl";
    case BATCH_FORMAT_OPENAI: return "openai";
    case BATCH_FORMAT_TEXT: return "text";
    }
    return "unknown";
}

tandem_status batch_format_parse(const char *s, batch_format *format, batch_error *err) {
    clear_error(err);
    static const batch_format all[] = {BATCH_FORMAT_AUTO, BATCH_FORMAT_JSONL, BATCH_FORMAT_OPENAI, BATCH_FORMAT_TEXT};
    for (size_t i = 0; s && i < sizeof all / sizeof all[0]; i++)
        if (strcmp(s, batch_format_name(all[i])) == 0) {
            *format = all[i];
            return TANDEM_OK;
        }
    return fail(err, TANDEM_ERR_INVALID_ARGUMENT, 0, "unknown input format \"%.64s\" (auto, jsonl, openai, text)",
                s ? s : "(null)");
}

batch_shape batch_shape_for(batch_format format) {
    return format == BATCH_FORMAT_OPENAI ? BATCH_SHAPE_OPENAI : BATCH_SHAPE_PLAIN;
}

/* ---- UTF-8 */

/* Length of the well-formed sequence at s[0..n) (Unicode Table 3-7), or, when
 * it is ill-formed, minus the length of its maximal subpart (>= 1). */
static long utf8_seq(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    int need;
    unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */
    if (c >= 0xC2 && c <= 0xDF)
        need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return -1;
    int i = 1;
    while (i < need && (size_t)i < n) {
        unsigned char b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF))
            break;
        i++;
    }
    return i == need ? need : -i;
}

bool batch_utf8_valid(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        long k = utf8_seq(u + i, n - i);
        if (k < 0)
            return false;
        i += (size_t)k;
    }
    return true;
}

char *batch_utf8_sanitize(const char *s, size_t n, size_t *out_len) {
    const unsigned char *u = (const unsigned char *)s;
    /* each input byte becomes at most 3 output bytes (one U+FFFD) */
    if (n > (SIZE_MAX - 1) / 3)
        return NULL;
    char *out = malloc(3 * n + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        long k = utf8_seq(u + i, n - i);
        if (k > 0 && u[i] != 0) {
            memcpy(out + o, s + i, (size_t)k);
            o += (size_t)k;
            i += (size_t)k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += k < 0 ? (size_t)-k : 1;
        }
    }
    out[o] = '\0';
    if (out_len)
        *out_len = o;
    return out;
}

/* ---- a set of id texts, each with a line number */

typedef struct id_map {
    char **keys;
    uint64_t *vals;
    size_t cap; /* power of two, or 0 */
    size_t count;
} id_map;

static uint64_t hash_str(const char *s) { /* FNV-1a, then a final mix */
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}

static bool map_find(const id_map *m, const char *key, uint64_t *val) {
    if (!m->cap)
        return false;
    for (size_t i = hash_str(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (!m->keys[i])
            return false;
        if (strcmp(m->keys[i], key) == 0) {
            if (val)
                *val = m->vals[i];
            return true;
        }
    }
}

static bool map_grow(id_map *m) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    char **keys = calloc(cap, sizeof *keys);
    uint64_t *vals = calloc(cap, sizeof *vals);
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return false;
    }
    for (size_t j = 0; j < m->cap; j++)
        if (m->keys[j]) {
            size_t i = hash_str(m->keys[j]) & (cap - 1);
            while (keys[i])
                i = (i + 1) & (cap - 1);
            keys[i] = m->keys[j];
            vals[i] = m->vals[j];
        }
    free(m->keys);
    free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    return true;
}

/* 1: inserted; 0: already there (val untouched); -1: out of memory */
static int map_put(id_map *m, const char *key, uint64_t val) {
    if (map_find(m, key, NULL))
        return 0;
    if ((m->count + 1) * 4 > m->cap * 3 && !map_grow(m)) /* load <= 3/4 */
        return -1;
    char *k = strdup(key);
    if (!k)
        return -1;
    size_t i = hash_str(key) & (m->cap - 1);
    while (m->keys[i])
        i = (i + 1) & (m->cap - 1);
    m->keys[i] = k;
    m->vals[i] = val;
    m->count++;
    return 1;
}

static void map_free(id_map *m) {
    for (size_t i = 0; i < m->cap; i++)
        free(m->keys[i]);
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

struct batch_done {
    id_map ids;
};

batch_done *batch_done_new(void) { return calloc(1, sizeof(batch_done)); }

void batch_done_free(batch_done *done) {
    if (done) {
        map_free(&done->ids);
        free(done);
    }
}

bool batch_done_add(batch_done *done, const char *id_json) { return map_put(&done->ids, id_json, 0) >= 0; }

bool batch_done_contains(const batch_done *done, const char *id_json) {
    return done && id_json && map_find(&done->ids, id_json, NULL);
}

size_t batch_done_count(const batch_done *done) { return done ? done->ids.count : 0; }

/* ---- JSON helpers */

static const char *json_type_name(const cJSON *j) {
    if (cJSON_IsString(j))
        return "a string";
    if (cJSON_IsNumber(j))
        return "a number";
    if (cJSON_IsArray(j))
        return "an array";
    if (cJSON_IsObject(j))
        return "an object";
    if (cJSON_IsBool(j))
        return "a boolean";
    if (cJSON_IsNull(j))
        return "null";
    return "an unknown value";
}

/* The member key of obj, NULL when absent or null. */
static cJSON *member(const cJSON *obj, const char *key) {
    cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    return j && !cJSON_IsNull(j) ? j : NULL;
}

/* A malloc'ed copy of cJSON's unformatted print of j. */
static char *print_json(const cJSON *j) {
    char *p = cJSON_PrintUnformatted(j);
    if (!p)
        return NULL;
    char *d = strdup(p);
    cJSON_free(p);
    return d;
}

/* The JSON text of an id (a string or a number). Strings as cJSON escapes
 * them; numbers not as cJSON prints them (it accepts a print that reads back
 * within a relative epsilon, which can change a 16-digit id) but as digits
 * for integers and as the shortest of %.15g..%.17g that reads back exactly
 * otherwise. */
static char *id_text(const cJSON *id) {
    if (cJSON_IsString(id))
        return print_json(id);
    double v = id->valuedouble;
    char buf[40];
    if (v == 0)
        snprintf(buf, sizeof buf, "0");
    else if (floor(v) == v && fabs(v) <= MAX_EXACT_INT)
        snprintf(buf, sizeof buf, "%.0f", v);
    else
        for (int p = 15; p <= 17; p++) {
            snprintf(buf, sizeof buf, "%.*g", p, v);
            if (strtod(buf, NULL) == v)
                break;
        }
    return strdup(buf);
}

/* Parses the n bytes at s as one JSON object with nothing but white space
 * after it. NULL with err filled on failure. */
static cJSON *parse_object(const char *s, size_t n, uint64_t line, batch_error *err) {
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(s, n, &end, 0);
    if (!j) {
        size_t col = end && end >= s && end <= s + n ? (size_t)(end - s) + 1 : 1;
        fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": not valid JSON (column %zu)", line, col);
        return NULL;
    }
    while (end < s + n && (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n'))
        end++;
    if (end != s + n) {
        fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": text after the JSON value (column %zu)", line,
             (size_t)(end - s) + 1);
        cJSON_Delete(j);
        return NULL;
    }
    if (!cJSON_IsObject(j)) {
        fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": %s, not a JSON object", line, json_type_name(j));
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

/* The id member key of obj as JSON text (*id_json, malloc'ed). */
static tandem_status get_id(const cJSON *obj, const char *key, uint64_t line, char **id_json, batch_error *err) {
    *id_json = NULL;
    cJSON *id = member(obj, key);
    if (!id)
        return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": missing \"%s\"", line, key);
    if (cJSON_IsString(id)) {
        size_t n = strlen(id->valuestring);
        if (n == 0)
            return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": \"%s\" is an empty string", line, key);
        if (!batch_utf8_valid(id->valuestring, n))
            return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": \"%s\" is not valid UTF-8", line, key);
    } else if (cJSON_IsNumber(id)) {
        double v = id->valuedouble;
        if (!isfinite(v))
            return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": \"%s\" is not a finite number", line, key);
        if (floor(v) == v && fabs(v) > MAX_EXACT_INT)
            return fail(err, TANDEM_ERR_FORMAT, line,
                        "line %" PRIu64 ": \"%s\" is an integer beyond 2^53 that cannot be kept exactly; quote it",
                        line, key);
    } else
        return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": \"%s\" must be a string or a number, not %s", line,
                    key, json_type_name(id));
    *id_json = id_text(id);
    if (!*id_json)
        return fail(err, TANDEM_ERR_OUT_OF_MEMORY, line, "line %" PRIu64 ": out of memory", line);
    return TANDEM_OK;
}

/* A malloc'ed copy of the string j (valid UTF-8), naming field on failure. */
static tandem_status get_string(const cJSON *j, uint64_t line, const char *field, char **out, batch_error *err) {
    *out = NULL;
    if (!cJSON_IsString(j))
        return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": %s must be a string, not %s", line, field,
                    json_type_name(j));
    size_t n = strlen(j->valuestring);
    if (!batch_utf8_valid(j->valuestring, n))
        return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": %s is not valid UTF-8", line, field);
    *out = dup_n(j->valuestring, n);
    if (!*out)
        return fail(err, TANDEM_ERR_OUT_OF_MEMORY, line, "line %" PRIu64 ": out of memory", line);
    return TANDEM_OK;
}

/* An integer member in [lo, hi]; *has stays false when absent. */
static tandem_status get_int(const cJSON *obj, const char *key, const char *prefix, double lo, double hi, uint64_t line,
                             bool *has, double *v, batch_error *err) {
    cJSON *j = member(obj, key);
    if (!j)
        return TANDEM_OK;
    if (!cJSON_IsNumber(j))
        return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": %s%s must be an integer, not %s", line, prefix,
                    key, json_type_name(j));
    double x = j->valuedouble;
    if (!isfinite(x) || floor(x) != x)
        return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": %s%s must be an integer", line, prefix, key);
    if (x < lo || x > hi)
        return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": %s%s = %.17g is out of range [%.17g, %.17g]", line,
                    prefix, key, x, lo, hi);
    *has = true;
    *v = x;
    return TANDEM_OK;
}

/* A number member: >= lo (or > lo when lo_open), <= hi. */
static tandem_status get_num(const cJSON *obj, const char *key, const char *prefix, double lo, bool lo_open, double hi,
                             uint64_t line, bool *has, float *v, batch_error *err) {
    cJSON *j = member(obj, key);
    if (!j)
        return TANDEM_OK;
    if (!cJSON_IsNumber(j))
        return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": %s%s must be a number, not %s", line, prefix, key,
                    json_type_name(j));
    double x = j->valuedouble;
    if (!isfinite(x) || (lo_open ? x <= lo : x < lo) || x > hi)
        return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": %s%s = %g is out of range %c%g, %g]", line, prefix,
                    key, x, lo_open ? '(' : '[', lo, hi);
    *has = true;
    *v = (float)x;
    return TANDEM_OK;
}

/* The sampling overrides of obj (a JSONL record or an OpenAI body). */
static tandem_status get_overrides(const cJSON *obj, const char *prefix, uint64_t line, batch_record *rec, bool openai,
                                   batch_error *err) {
    tandem_status st;
    double v = 0;
    if (openai) {
        bool has_a = false, has_b = false;
        double a = 0, b = 0;
        if ((st = get_int(obj, "max_tokens", prefix, 1, INT32_MAX, line, &has_a, &a, err)) ||
            (st = get_int(obj, "max_completion_tokens", prefix, 1, INT32_MAX, line, &has_b, &b, err)))
            return st;
        if (has_a && has_b && a != b)
            return fail(err, TANDEM_ERR_FORMAT, line,
                        "line %" PRIu64 ": %smax_tokens and %smax_completion_tokens differ", line, prefix, prefix);
        rec->has_max_tokens = has_a || has_b;
        rec->max_tokens = (int32_t)(has_b ? b : a);
        bool has_n = false;
        if ((st = get_int(obj, "n", prefix, 1, 1, line, &has_n, &v, err)))
            return st;
    } else {
        if ((st = get_int(obj, "max_tokens", prefix, 1, INT32_MAX, line, &rec->has_max_tokens, &v, err)))
            return st;
        rec->max_tokens = (int32_t)v;
    }
    if ((st = get_num(obj, "temperature", prefix, 0, false, INFINITY, line, &rec->has_temperature, &rec->temperature,
                      err)) ||
        (st = get_num(obj, "top_p", prefix, 0, true, 1, line, &rec->has_top_p, &rec->top_p, err)))
        return st;
    if ((st = get_int(obj, "top_k", prefix, 0, INT32_MAX, line, &rec->has_top_k, &v, err)))
        return st;
    rec->top_k = (int32_t)v;
    if ((st = get_int(obj, "seed", prefix, -MAX_EXACT_INT, MAX_EXACT_INT, line, &rec->has_seed, &v, err)))
        return st;
    rec->seed = (int64_t)v;

    cJSON *stop = member(obj, "stop");
    if (!stop)
        return TANDEM_OK;
    char field[64];
    if (cJSON_IsString(stop)) {
        rec->stop = calloc(1, sizeof *rec->stop);
        if (!rec->stop)
            return fail(err, TANDEM_ERR_OUT_OF_MEMORY, line, "line %" PRIu64 ": out of memory", line);
        rec->n_stop = 1;
        snprintf(field, sizeof field, "%sstop", prefix);
        return get_string(stop, line, field, &rec->stop[0], err);
    }
    if (!cJSON_IsArray(stop))
        return fail(err, TANDEM_ERR_FORMAT, line,
                    "line %" PRIu64 ": %sstop must be a string or an array of strings, not %s", line, prefix,
                    json_type_name(stop));
    int n = cJSON_GetArraySize(stop);
    if (n == 0)
        return TANDEM_OK;
    rec->stop = calloc((size_t)n, sizeof *rec->stop);
    if (!rec->stop)
        return fail(err, TANDEM_ERR_OUT_OF_MEMORY, line, "line %" PRIu64 ": out of memory", line);
    int i = 0;
    for (cJSON *s = stop->child; s; s = s->next, i++) {
        snprintf(field, sizeof field, "%sstop[%d]", prefix, i);
        rec->n_stop = i + 1;
        if ((st = get_string(s, line, field, &rec->stop[i], err)))
            return st;
    }
    return TANDEM_OK;
}

/* messages[i].content: a string or an array of text parts, concatenated. */
static tandem_status get_content(const cJSON *content, uint64_t line, int mi, char **out, batch_error *err) {
    char field[64];
    snprintf(field, sizeof field, "body.messages[%d].content", mi);
    if (!content)
        return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": missing %s", line, field);
    if (cJSON_IsString(content))
        return get_string(content, line, field, out, err);
    if (!cJSON_IsArray(content))
        return fail(err, TANDEM_ERR_FORMAT, line,
                    "line %" PRIu64 ": %s must be a string or an array of text parts, not %s", line, field,
                    json_type_name(content));
    size_t total = 0;
    int pi = 0;
    for (const cJSON *p = content->child; p; p = p->next, pi++) {
        if (!cJSON_IsObject(p))
            return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": %s[%d] must be an object, not %s", line, field,
                        pi, json_type_name(p));
        const cJSON *type = member(p, "type");
        if (!cJSON_IsString(type))
            return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": %s[%d] has no string \"type\"", line, field,
                        pi);
        if (strcmp(type->valuestring, "text") != 0)
            return fail(err, TANDEM_ERR_FORMAT, line,
                        "line %" PRIu64 ": %s[%d]: part type \"%.40s\" is not supported (only \"text\")", line, field,
                        pi, type->valuestring);
        const cJSON *text = member(p, "text");
        if (!cJSON_IsString(text))
            return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": %s[%d].text must be a string, not %s", line,
                        field, pi, text ? json_type_name(text) : "missing");
        size_t n = strlen(text->valuestring);
        if (!batch_utf8_valid(text->valuestring, n))
            return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": %s[%d].text is not valid UTF-8", line, field,
                        pi);
        total += n;
    }
    char *s = malloc(total + 1);
    if (!s)
        return fail(err, TANDEM_ERR_OUT_OF_MEMORY, line, "line %" PRIu64 ": out of memory", line);
    size_t o = 0;
    for (const cJSON *p = content->child; p; p = p->next) {
        const char *t = member(p, "text")->valuestring;
        size_t n = strlen(t);
        memcpy(s + o, t, n);
        o += n;
    }
    s[o] = '\0';
    *out = s;
    return TANDEM_OK;
}

/* ---- records */

void batch_record_free(batch_record *rec) {
    if (!rec)
        return;
    free(rec->id_json);
    free(rec->prompt);
    for (int32_t i = 0; i < rec->n_messages; i++) {
        free(rec->messages[i].role);
        free(rec->messages[i].content);
    }
    free(rec->messages);
    free(rec->model);
    for (int32_t i = 0; i < rec->n_stop; i++)
        free(rec->stop[i]);
    free(rec->stop);
    memset(rec, 0, sizeof *rec);
}

/* The fields of a JSONL record after its id. */
static tandem_status fill_jsonl(const cJSON *obj, uint64_t line, batch_record *rec, batch_error *err) {
    cJSON *prompt = member(obj, "prompt");
    if (!prompt)
        return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": missing \"prompt\"", line);
    tandem_status st = get_string(prompt, line, "\"prompt\"", &rec->prompt, err);
    return st ? st : get_overrides(obj, "", line, rec, false, err);
}

/* The fields of an OpenAI Batch record after its custom_id. */
static tandem_status fill_openai(const cJSON *obj, uint64_t line, batch_record *rec, batch_error *err) {
    const cJSON *method = member(obj, "method");
    if (method && !(cJSON_IsString(method) && strcmp(method->valuestring, "POST") == 0))
        return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": \"method\" must be \"POST\"", line);
    const cJSON *url = member(obj, "url");
    if (url && !cJSON_IsString(url))
        return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": \"url\" must be a string, not %s", line,
                    json_type_name(url));
    if (url && strcmp(url->valuestring, "/v1/chat/completions") != 0)
        return fail(err, TANDEM_ERR_FORMAT, line,
                    "line %" PRIu64 ": url \"%.60s\" is not supported (only /v1/chat/completions)", line,
                    url->valuestring);
    const cJSON *body = member(obj, "body");
    if (!body)
        return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": missing \"body\"", line);
    if (!cJSON_IsObject(body))
        return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": \"body\" must be an object, not %s", line,
                    json_type_name(body));
    tandem_status st;
    const cJSON *model = member(body, "model");
    if (model && (st = get_string(model, line, "body.model", &rec->model, err)))
        return st;
    const cJSON *msgs = member(body, "messages");
    if (!msgs)
        return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": missing body.messages", line);
    if (!cJSON_IsArray(msgs))
        return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": body.messages must be an array, not %s", line,
                    json_type_name(msgs));
    int n = cJSON_GetArraySize(msgs);
    if (n == 0)
        return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": body.messages is empty", line);
    rec->messages = calloc((size_t)n, sizeof *rec->messages);
    if (!rec->messages)
        return fail(err, TANDEM_ERR_OUT_OF_MEMORY, line, "line %" PRIu64 ": out of memory", line);
    int i = 0;
    for (const cJSON *m = msgs->child; m; m = m->next, i++) {
        rec->n_messages = i + 1;
        if (!cJSON_IsObject(m))
            return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": body.messages[%d] must be an object, not %s",
                        line, i, json_type_name(m));
        char field[64];
        snprintf(field, sizeof field, "body.messages[%d].role", i);
        const cJSON *role = member(m, "role");
        if (!role)
            return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": missing %s", line, field);
        if ((st = get_string(role, line, field, &rec->messages[i].role, err)))
            return st;
        if (!rec->messages[i].role[0])
            return fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": %s is empty", line, field);
        if ((st = get_content(member(m, "content"), line, i, &rec->messages[i].content, err)))
            return st;
    }
    return get_overrides(body, "body.", line, rec, true, err);
}

/* ---- reader */

struct batch_reader {
    FILE *in;
    batch_format format; /* AUTO until detected */
    uint64_t line;       /* lines read so far */
    char *buf;           /* getline's buffer */
    size_t cap;
    bool have_pending; /* a line read ahead by detection, in pending */
    char *pending;
    size_t pending_len;
    uint64_t pending_line;
    bool eof;
    id_map seen; /* ids of earlier lines (JSONL and OpenAI) */
};

tandem_status batch_reader_open(FILE *in, batch_format format, batch_reader **reader, batch_error *err) {
    clear_error(err);
    *reader = NULL;
    if (!in || format < BATCH_FORMAT_AUTO || format > BATCH_FORMAT_TEXT)
        return fail(err, TANDEM_ERR_INVALID_ARGUMENT, 0, "batch reader: no input or bad format %d", (int)format);
    batch_reader *r = calloc(1, sizeof *r);
    if (!r)
        return fail(err, TANDEM_ERR_OUT_OF_MEMORY, 0, "batch reader: out of memory");
    r->in = in;
    r->format = format;
    *reader = r;
    return TANDEM_OK;
}

void batch_reader_close(batch_reader *r) {
    if (!r)
        return;
    free(r->buf);
    free(r->pending);
    map_free(&r->seen);
    free(r);
}

/* Reads one line (terminator, a CR before it and a BOM at the start of the
 * input dropped) into *s, *n. 1: a line; 0: end of input; -1: failure. */
static int read_line(batch_reader *r, char **s, size_t *n, uint64_t *line, batch_error *err) {
    if (r->have_pending) {
        r->have_pending = false;
        free(r->buf);
        r->buf = r->pending;
        r->cap = r->pending_len + 1;
        r->pending = NULL;
        *s = r->buf;
        *n = r->pending_len;
        *line = r->pending_line;
        return 1;
    }
    if (r->eof)
        return 0;
    errno = 0;
    ssize_t got = getline(&r->buf, &r->cap, r->in);
    if (got < 0) {
        if (ferror(r->in)) {
            fail(err, TANDEM_ERR_IO, r->line + 1, "reading input line %" PRIu64 ": %s", r->line + 1,
                 strerror(errno ? errno : EIO));
            return -1;
        }
        if (errno == ENOMEM) {
            fail(err, TANDEM_ERR_OUT_OF_MEMORY, r->line + 1, "reading input line %" PRIu64 ": out of memory",
                 r->line + 1);
            return -1;
        }
        r->eof = true;
        return 0;
    }
    char *b = r->buf;
    size_t len = (size_t)got;
    r->line++;
    if (len && b[len - 1] == '\n')
        len--;
    if (len && b[len - 1] == '\r')
        len--;
    b[len] = '\0';
    if (r->line == 1 && len >= 3 && memcmp(b, "\xEF\xBB\xBF", 3) == 0) {
        memmove(b, b + 3, len - 3 + 1);
        len -= 3;
    }
    *s = b;
    *n = len;
    *line = r->line;
    return 1;
}

static bool blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t')
            return false;
    return true;
}

/* The format of the input, from its first non-blank line. */
static tandem_status detect(const char *s, size_t n, uint64_t line, batch_format *format, batch_error *err) {
    size_t i = 0;
    while (i < n && (s[i] == ' ' || s[i] == '\t'))
        i++;
    if (s[i] == '[')
        return fail(err, TANDEM_ERR_FORMAT, line,
                    "line %" PRIu64 ": the input starts with '[': a JSON array is not JSON Lines (one object per "
                    "line); give the format explicitly to read it as text",
                    line);
    if (s[i] != '{') {
        *format = BATCH_FORMAT_TEXT;
        return TANDEM_OK;
    }
    batch_error e;
    cJSON *j = parse_object(s, n, line, &e);
    if (!j)
        return fail(err, TANDEM_ERR_FORMAT, line,
                    "%s: the first line looks like JSON but does not parse, so the format cannot be told; fix it or "
                    "give the format explicitly",
                    e.msg);
    *format = cJSON_GetObjectItemCaseSensitive(j, "custom_id") ? BATCH_FORMAT_OPENAI : BATCH_FORMAT_JSONL;
    cJSON_Delete(j);
    return TANDEM_OK;
}

tandem_status batch_reader_detect(batch_reader *r, batch_format *format, batch_error *err) {
    clear_error(err);
    while (r->format == BATCH_FORMAT_AUTO) {
        char *s;
        size_t n;
        uint64_t line;
        int got = read_line(r, &s, &n, &line, err);
        if (got < 0)
            return err ? err->status : TANDEM_ERR_IO;
        if (got == 0)
            break;
        if (blank(s, n))
            continue;
        tandem_status st = detect(s, n, line, &r->format, err);
        /* keep the line for batch_reader_next */
        r->pending = r->buf;
        r->pending_len = n;
        r->pending_line = line;
        r->have_pending = true;
        r->buf = NULL;
        r->cap = 0;
        if (st)
            return st;
    }
    *format = r->format;
    return TANDEM_OK;
}

batch_next batch_reader_next(batch_reader *r, batch_record *rec, batch_error *err) {
    clear_error(err);
    memset(rec, 0, sizeof *rec);
    if (r->format == BATCH_FORMAT_AUTO) {
        batch_format f;
        if (batch_reader_detect(r, &f, err))
            return BATCH_NEXT_FAIL;
        if (f == BATCH_FORMAT_AUTO)
            return BATCH_NEXT_END;
    }
    char *s;
    size_t n;
    uint64_t line;
    for (;;) {
        int got = read_line(r, &s, &n, &line, err);
        if (got < 0)
            return BATCH_NEXT_FAIL;
        if (got == 0)
            return BATCH_NEXT_END;
        if (!blank(s, n))
            break;
    }
    rec->line = line;
    if (memchr(s, '\0', n)) {
        fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": holds a NUL byte", line);
        return BATCH_NEXT_BAD_LINE;
    }
    tandem_status st;
    if (r->format == BATCH_FORMAT_TEXT) {
        char id[32];
        snprintf(id, sizeof id, "\"%" PRIu64 "\"", line);
        rec->id_json = strdup(id);
        if (!rec->id_json) {
            fail(err, TANDEM_ERR_OUT_OF_MEMORY, line, "line %" PRIu64 ": out of memory", line);
            memset(rec, 0, sizeof *rec);
            return BATCH_NEXT_FAIL;
        }
        if (!batch_utf8_valid(s, n)) {
            fail(err, TANDEM_ERR_FORMAT, line, "line %" PRIu64 ": not valid UTF-8", line);
            return BATCH_NEXT_BAD_LINE;
        }
        rec->prompt = dup_n(s, n);
        if (!rec->prompt) {
            fail(err, TANDEM_ERR_OUT_OF_MEMORY, line, "line %" PRIu64 ": out of memory", line);
            batch_record_free(rec);
            return BATCH_NEXT_FAIL;
        }
        return BATCH_NEXT_RECORD;
    }

    cJSON *obj = parse_object(s, n, line, err);
    if (!obj)
        return BATCH_NEXT_BAD_LINE;
    bool openai = r->format == BATCH_FORMAT_OPENAI;
    st = get_id(obj, openai ? "custom_id" : "id", line, &rec->id_json, err);
    if (st == TANDEM_OK) {
        uint64_t first = 0;
        int put = map_put(&r->seen, rec->id_json, line);
        if (put < 0)
            st = fail(err, TANDEM_ERR_OUT_OF_MEMORY, line, "line %" PRIu64 ": out of memory", line);
        else if (put == 0) {
            map_find(&r->seen, rec->id_json, &first);
            st = fail(err, TANDEM_ERR_FORMAT, line,
                      "line %" PRIu64 ": duplicate %s %.80s (first on line %" PRIu64 "); skipped", line,
                      openai ? "custom_id" : "id", rec->id_json, first);
            free(rec->id_json); /* the id belongs to the earlier line */
            rec->id_json = NULL;
        } else
            st = openai ? fill_openai(obj, line, rec, err) : fill_jsonl(obj, line, rec, err);
    }
    cJSON_Delete(obj);
    if (st == TANDEM_OK)
        return BATCH_NEXT_RECORD;
    if (st == TANDEM_ERR_OUT_OF_MEMORY) {
        batch_record_free(rec);
        return BATCH_NEXT_FAIL;
    }
    /* keep only line and id for the caller's error record */
    char *id = rec->id_json;
    rec->id_json = NULL;
    batch_record_free(rec);
    rec->line = line;
    rec->id_json = id;
    return BATCH_NEXT_BAD_LINE;
}

/* ---- writer */

struct batch_writer {
    FILE *f;
    bool is_stdout;
    batch_shape shape;
    bool fsync;
    bool failed;
    char *model;
    uint64_t seed;
    uint64_t counter;
};

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Scans an existing output file (open "a+") for resuming. */
static tandem_status resume_scan(FILE *f, const char *path, batch_done *done, batch_resume_report *rep,
                                 batch_error *err) {
    memset(rep, 0, sizeof *rep);
    rewind(f);
    char *buf = NULL;
    size_t cap = 0;
    uint64_t off = 0, good_end = 0, line = 0, last_good_line = 0, lines_after_good = 0, first_after_good = 0;
    tandem_status st = TANDEM_OK;
    ssize_t got;
    errno = 0;
    while ((got = getline(&buf, &cap, f)) >= 0) {
        line++;
        size_t n = (size_t)got;
        off += n;
        bool good = false;
        if (n && buf[n - 1] == '\n') {
            batch_error e;
            cJSON *obj = parse_object(buf, n - 1, line, &e);
            if (obj) {
                char *id = NULL;
                const char *key = cJSON_GetObjectItemCaseSensitive(obj, "custom_id") ? "custom_id" : "id";
                if (get_id(obj, key, line, &id, &e) == TANDEM_OK) {
                    good = true;
                    if (!batch_done_add(done, id))
                        st = fail(err, TANDEM_ERR_OUT_OF_MEMORY, 0, "resuming %s: out of memory", path);
                    if (cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(obj, "error")))
                        rep->error_records++;
                    free(id);
                } else if (e.status == TANDEM_ERR_OUT_OF_MEMORY)
                    st = fail(err, TANDEM_ERR_OUT_OF_MEMORY, 0, "resuming %s: out of memory", path);
                cJSON_Delete(obj);
            }
        }
        if (st)
            break;
        if (good) {
            rep->records++;
            rep->bad_lines += lines_after_good; /* bad lines followed by a good one stay */
            if (lines_after_good && !rep->first_bad_line)
                rep->first_bad_line = first_after_good;
            lines_after_good = 0;
            good_end = off;
            last_good_line = line;
        } else if (lines_after_good++ == 0)
            first_after_good = line;
        errno = 0;
    }
    if (!st && ferror(f))
        st = fail(err, TANDEM_ERR_IO, 0, "resuming %s: reading: %s", path, strerror(errno ? errno : EIO));
    else if (!st && got < 0 && errno == ENOMEM)
        st = fail(err, TANDEM_ERR_OUT_OF_MEMORY, 0, "resuming %s: out of memory", path);
    free(buf);
    if (st)
        return st;
    if (rep->records == 0 && line > 1)
        return fail(err, TANDEM_ERR_FORMAT, 0,
                    "resuming %s: none of its %" PRIu64 " lines is a result record; not an output file? (left as it "
                    "is)",
                    path, line);
    if (lines_after_good) {
        rep->truncated = true;
        rep->truncated_line = last_good_line + 1;
        rep->truncated_lines = lines_after_good;
        rep->truncated_bytes = off - good_end;
        if (fflush(f) != 0 || ftruncate(fileno(f), (off_t)good_end) != 0)
            return fail(err, TANDEM_ERR_IO, 0, "resuming %s: cutting its last line: %s", path, strerror(errno));
    }
    if (fseek(f, 0, SEEK_END) != 0)
        return fail(err, TANDEM_ERR_IO, 0, "resuming %s: %s", path, strerror(errno));
    return TANDEM_OK;
}

tandem_status batch_writer_open(const char *path, const batch_writer_opts *opts, batch_done *done,
                                batch_resume_report *rep, batch_writer **writer, batch_error *err) {
    clear_error(err);
    *writer = NULL;
    batch_resume_report local;
    if (!rep)
        rep = &local;
    memset(rep, 0, sizeof *rep);
    if (!path || !opts)
        return fail(err, TANDEM_ERR_INVALID_ARGUMENT, 0, "batch writer: no path or options");
    if (opts->shape != BATCH_SHAPE_PLAIN && opts->shape != BATCH_SHAPE_OPENAI)
        return fail(err, TANDEM_ERR_INVALID_ARGUMENT, 0, "batch writer: bad shape %d", (int)opts->shape);
    bool is_stdout = strcmp(path, "-") == 0;
    if (opts->resume && is_stdout)
        return fail(err, TANDEM_ERR_INVALID_ARGUMENT, 0, "cannot resume when the output is stdout");
    if (opts->resume && !done)
        return fail(err, TANDEM_ERR_INVALID_ARGUMENT, 0, "batch writer: resuming needs a batch_done set");
    batch_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->model = strdup(opts->model ? opts->model : "tandem"))) {
        free(w);
        return fail(err, TANDEM_ERR_OUT_OF_MEMORY, 0, "batch writer: out of memory");
    }
    w->shape = opts->shape;
    w->fsync = opts->fsync;
    w->is_stdout = is_stdout;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    w->seed = ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 40) ^ (uintptr_t)w;
    if (is_stdout)
        w->f = stdout;
    else {
        w->f = fopen(path, opts->resume ? "a+" : "w");
        if (!w->f) {
            int e = errno;
            free(w->model);
            free(w);
            return fail(err, TANDEM_ERR_IO, 0, "cannot open output %s: %s", path, strerror(e));
        }
        if (opts->resume) {
            tandem_status st = resume_scan(w->f, path, done, rep, err);
            if (st) {
                fclose(w->f);
                free(w->model);
                free(w);
                return st;
            }
        }
    }
    *writer = w;
    return TANDEM_OK;
}

tandem_status batch_writer_close(batch_writer *w, batch_error *err) {
    clear_error(err);
    if (!w)
        return TANDEM_OK;
    tandem_status st = TANDEM_OK;
    if (w->is_stdout) {
        if (fflush(w->f) != 0)
            st = fail(err, TANDEM_ERR_IO, 0, "writing output: %s", strerror(errno));
    } else if (fclose(w->f) != 0)
        st = fail(err, TANDEM_ERR_IO, 0, "closing output: %s", strerror(errno));
    free(w->model);
    free(w);
    return st;
}

/* A cJSON string of the n bytes at s, made valid UTF-8. */
static cJSON *make_string(const char *s, size_t n) {
    char *clean = batch_utf8_sanitize(s ? s : "", s ? n : 0, NULL);
    if (!clean)
        return NULL;
    cJSON *j = cJSON_CreateString(clean);
    free(clean);
    return j;
}

/* Adds the n bytes at s, made valid UTF-8, as obj's member key. */
static bool add_string_n(cJSON *obj, const char *key, const char *s, size_t n) {
    if (!obj)
        return false;
    cJSON *j = make_string(s, n);
    if (j && cJSON_AddItemToObject(obj, key, j))
        return true;
    cJSON_Delete(j);
    return false;
}

static bool add_string(cJSON *obj, const char *key, const char *s) {
    return add_string_n(obj, key, s, s ? strlen(s) : 0);
}

static bool add_number(cJSON *obj, const char *key, double v) {
    return obj && cJSON_AddNumberToObject(obj, key, v) != NULL;
}

/* The id item for id_json; NULL with err filled when it is not a string or number. */
static cJSON *make_id(const char *id_json, batch_error *err) {
    if (!id_json) {
        fail(err, TANDEM_ERR_INVALID_ARGUMENT, 0, "batch writer: no id");
        return NULL;
    }
    cJSON *id = cJSON_Parse(id_json);
    if (!id || !(cJSON_IsString(id) || cJSON_IsNumber(id))) {
        fail(err, TANDEM_ERR_INVALID_ARGUMENT, 0, "batch writer: id %.80s is not a JSON string or number", id_json);
        cJSON_Delete(id);
        return NULL;
    }
    cJSON *item = NULL;
    if (cJSON_IsString(id))
        item = make_string(id->valuestring, strlen(id->valuestring));
    else if (isfinite(id->valuedouble)) { /* written as id_text prints it, not as cJSON would */
        char *text = id_text(id);
        item = text ? cJSON_CreateRaw(text) : NULL;
        free(text);
    } else {
        cJSON_Delete(id);
        fail(err, TANDEM_ERR_INVALID_ARGUMENT, 0, "batch writer: id %.80s is not a finite number", id_json);
        return NULL;
    }
    cJSON_Delete(id);
    if (!item)
        fail(err, TANDEM_ERR_OUT_OF_MEMORY, 0, "batch writer: out of memory");
    return item;
}

/* The generated ids of one OpenAI output line. */
typedef struct openai_ids {
    char batch_req[64]; /* "batch_req_" + 32 hex digits */
    char req[64];       /* "req_" + 32 hex digits */
    char chat[64];      /* "chatcmpl-" + 24 hex digits */
} openai_ids;

static void make_ids(batch_writer *w, openai_ids *ids) {
    uint64_t s = w->seed ^ (w->counter++ * 0xd1b54a32d192ed03ull);
    uint64_t a = splitmix(&s), b = splitmix(&s), c = splitmix(&s), d = splitmix(&s);
    snprintf(ids->batch_req, sizeof ids->batch_req, "batch_req_%016" PRIx64 "%016" PRIx64, a, b);
    snprintf(ids->req, sizeof ids->req, "req_%016" PRIx64 "%016" PRIx64, c, d);
    snprintf(ids->chat, sizeof ids->chat, "chatcmpl-%016" PRIx64 "%08" PRIx64, a ^ d, b >> 32);
}

/* Prints rec and writes it as one line with a single fwrite; takes rec. */
static tandem_status emit(batch_writer *w, cJSON *rec, batch_error *err) {
    char *json = cJSON_PrintUnformatted(rec);
    cJSON_Delete(rec);
    if (!json)
        return fail(err, TANDEM_ERR_OUT_OF_MEMORY, 0, "batch writer: out of memory");
    size_t n = strlen(json);
    char *line = malloc(n + 1);
    if (!line) {
        cJSON_free(json);
        return fail(err, TANDEM_ERR_OUT_OF_MEMORY, 0, "batch writer: out of memory");
    }
    memcpy(line, json, n);
    line[n] = '\n';
    cJSON_free(json);
    errno = 0;
    bool ok = fwrite(line, 1, n + 1, w->f) == n + 1 && fflush(w->f) == 0;
    int e = errno;
    free(line);
    if (ok && w->fsync && fsync(fileno(w->f)) != 0 && errno != EINVAL && errno != EROFS && errno != ENOTSUP) {
        ok = false;
        e = errno;
    }
    if (!ok) {
        w->failed = true;
        return fail(err, TANDEM_ERR_IO, 0, "writing output: %s", strerror(e ? e : EIO));
    }
    return TANDEM_OK;
}

/* A new output object holding the id ("id" in the plain shape; "id" and
 * "custom_id" in the OpenAI shape, whose generated ids go to *ids). */
static tandem_status write_begin(batch_writer *w, const char *id_json, cJSON **rec, openai_ids *ids, batch_error *err) {
    clear_error(err);
    *rec = NULL;
    if (!w)
        return fail(err, TANDEM_ERR_INVALID_ARGUMENT, 0, "batch writer: none");
    if (w->failed)
        return fail(err, TANDEM_ERR_IO, 0, "writing output: an earlier write failed");
    cJSON *id = make_id(id_json, err);
    if (!id)
        return err ? err->status : TANDEM_ERR_INVALID_ARGUMENT;
    cJSON *o = cJSON_CreateObject();
    bool ok = o != NULL;
    if (ok && w->shape == BATCH_SHAPE_OPENAI) {
        make_ids(w, ids);
        ok = add_string(o, "id", ids->batch_req);
    }
    ok = ok && cJSON_AddItemToObject(o, w->shape == BATCH_SHAPE_OPENAI ? "custom_id" : "id", id);
    if (!ok) {
        cJSON_Delete(id);
        cJSON_Delete(o);
        return fail(err, TANDEM_ERR_OUT_OF_MEMORY, 0, "batch writer: out of memory");
    }
    *rec = o;
    return TANDEM_OK;
}

tandem_status batch_write_result(batch_writer *w, const batch_result *r, batch_error *err) {
    clear_error(err);
    if (!r)
        return fail(err, TANDEM_ERR_INVALID_ARGUMENT, 0, "batch writer: no result");
    if (r->prompt_tokens < 0 || r->completion_tokens < 0 ||
        (r->finish != BATCH_FINISH_STOP && r->finish != BATCH_FINISH_LENGTH))
        return fail(err, TANDEM_ERR_INVALID_ARGUMENT, 0, "batch writer: bad token counts or finish reason");
    cJSON *o;
    openai_ids ids;
    tandem_status st = write_begin(w, r->id_json, &o, &ids, err);
    if (st)
        return st;
    const char *finish = r->finish == BATCH_FINISH_LENGTH ? "length" : "stop";
    bool ok;
    if (w->shape == BATCH_SHAPE_PLAIN) {
        ok = add_string_n(o, "completion", r->completion, r->completion_len) &&
             add_number(o, "prompt_tokens", r->prompt_tokens) &&
             add_number(o, "completion_tokens", r->completion_tokens) && add_string(o, "finish_reason", finish);
    } else {
        /* members in the order of OpenAI's own output */
        cJSON *resp = cJSON_AddObjectToObject(o, "response");
        ok = add_number(resp, "status_code", 200) && add_string(resp, "request_id", ids.req);
        cJSON *body = ok ? cJSON_AddObjectToObject(resp, "body") : NULL;
        ok = add_string(body, "id", ids.chat) && add_string(body, "object", "chat.completion") &&
             add_number(body, "created", (double)time(NULL)) &&
             add_string(body, "model", r->model ? r->model : w->model);
        cJSON *choices = ok ? cJSON_AddArrayToObject(body, "choices") : NULL;
        cJSON *choice = choices ? cJSON_CreateObject() : NULL;
        ok = choice && cJSON_AddItemToArray(choices, choice);
        if (!ok)
            cJSON_Delete(choice);
        ok = ok && add_number(choice, "index", 0);
        cJSON *msg = ok ? cJSON_AddObjectToObject(choice, "message") : NULL;
        ok = add_string(msg, "role", "assistant") && add_string_n(msg, "content", r->completion, r->completion_len) &&
             cJSON_AddNullToObject(choice, "logprobs") && add_string(choice, "finish_reason", finish);
        cJSON *usage = ok ? cJSON_AddObjectToObject(body, "usage") : NULL;
        ok = add_number(usage, "prompt_tokens", r->prompt_tokens) &&
             add_number(usage, "completion_tokens", r->completion_tokens) &&
             add_number(usage, "total_tokens", (double)r->prompt_tokens + (double)r->completion_tokens) &&
             cJSON_AddNullToObject(o, "error");
    }
    if (!ok) {
        cJSON_Delete(o);
        return fail(err, TANDEM_ERR_OUT_OF_MEMORY, 0, "batch writer: out of memory");
    }
    return emit(w, o, err);
}

tandem_status batch_write_error(batch_writer *w, const char *id_json, const char *code, const char *message,
                                batch_error *err) {
    cJSON *o;
    openai_ids ids;
    tandem_status st = write_begin(w, id_json, &o, &ids, err);
    if (st)
        return st;
    bool ok;
    if (w->shape == BATCH_SHAPE_PLAIN) {
        cJSON *e = cJSON_AddObjectToObject(o, "error");
        ok = add_string(e, "message", message ? message : "") && (!code || add_string(e, "code", code));
    } else {
        ok = cJSON_AddNullToObject(o, "response") != NULL;
        cJSON *e = ok ? cJSON_AddObjectToObject(o, "error") : NULL;
        ok = add_string(e, "code", code ? code : "error") && add_string(e, "message", message ? message : "");
    }
    if (!ok) {
        cJSON_Delete(o);
        return fail(err, TANDEM_ERR_OUT_OF_MEMORY, 0, "batch writer: out of memory");
    }
    return emit(w, o, err);
}
