/* The hardware profile: JSON in and out, validation, presets, and the
 * interpolation the cost model reads it through (offload/profile.h). */
#include "offload/profile.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* Generated from offload/presets/NAME.json by offload/presets.cmake: the
 * names (NULL-terminated) and each file's bytes (NUL-terminated). */
extern const char *const td_profile_preset_names[];
extern const unsigned char *const td_profile_preset_json[];

#define MAX_FILE_BYTES ((size_t)64 << 20)
#define MAX_POINTS (1 << 20)
#define MAX_DIM 2147483647.0 /* m, n, k, ctx: below 2^31 */
#define MAX_THREADS 65536

/* ---- errors -------------------------------------------------------------------- */

/* "where: field: problem", or "field: problem" without a where. */
TD_PRINTF(4, 5)
static tandem_status field_fail(td_error *err, const char *where, const char *field, const char *fmt, ...) {
    char what[TD_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (where && *where)
        return td_fail(err, TANDEM_ERR_FORMAT, "%s: %s: %s", where, field, what);
    return td_fail(err, TANDEM_ERR_FORMAT, "%s: %s", field, what);
}

/* ---- validation of the struct ----------------------------------------------------- */

static bool positive(double x) { return isfinite(x) && x > 0; }
static bool nonnegative(double x) { return isfinite(x) && x >= 0; }

static tandem_status check_name(const char *s, size_t cap, const char *where, const char *field, td_error *err) {
    size_t n = strnlen(s, cap);
    if (n == cap)
        return field_fail(err, where, field, "is not terminated within %zu bytes", cap);
    if (n == 0)
        return field_fail(err, where, field, "must be a non-empty string");
    return TANDEM_OK;
}

tandem_status td_profile_validate(const td_profile *p, const char *where, td_error *err) {
    tandem_status st;
    char f[96];
    if (!p)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "profile: NULL");
    if (strnlen(p->source, sizeof p->source) == sizeof p->source)
        return field_fail(err, where, "source", "is not terminated within %zu bytes", sizeof p->source);
    if ((st = check_name(p->device, sizeof p->device, where, "device.name", err)))
        return st;
    if (!positive(p->dev_mem_bytes))
        return field_fail(err, where, "device.mem_bytes", "must be a positive number");
    if (!nonnegative(p->dev_launch_s))
        return field_fail(err, where, "device.launch_us", "must be a non-negative number");
    if (!positive(p->dev_attn_gbps))
        return field_fail(err, where, "device.attn_gbps", "must be a positive number");
    if (!positive(p->dev_row_gbps))
        return field_fail(err, where, "device.row_gbps", "must be a positive number");
    if (p->n_gemm < 1 || !p->gemm)
        return field_fail(err, where, "device.gemm", "must hold at least one [m, n, k, seconds] point");
    if (p->n_gemm > MAX_POINTS)
        return field_fail(err, where, "device.gemm", "has %d points, more than %d", p->n_gemm, MAX_POINTS);
    for (int32_t i = 0; i < p->n_gemm; i++) {
        const td_gemm_point *g = &p->gemm[i];
        const int64_t v[3] = {g->m, g->n, g->k};
        for (int j = 0; j < 3; j++)
            if (v[j] < 1 || (double)v[j] > MAX_DIM) {
                snprintf(f, sizeof f, "device.gemm[%d][%d]", i, j);
                return field_fail(err, where, f, "must be a positive integer below 2^31");
            }
        if (!positive(g->seconds)) {
            snprintf(f, sizeof f, "device.gemm[%d][3]", i);
            return field_fail(err, where, f, "must be a positive number of seconds");
        }
        if (i > 0) {
            const td_gemm_point *q = &p->gemm[i - 1];
            bool after = g->n != q->n ? g->n > q->n : g->k != q->k ? g->k > q->k : g->m > q->m;
            if (!after) {
                snprintf(f, sizeof f, "device.gemm[%d]", i);
                return field_fail(err, where, f,
                                  "[%lld, %lld, %lld] %s: points are sorted by n, then k, then m, each once",
                                  (long long)g->m, (long long)g->n, (long long)g->k,
                                  g->n == q->n && g->k == q->k && g->m == q->m ? "repeats the point before it"
                                                                               : "comes after a larger one");
            }
        }
    }
    if ((st = check_name(p->link, sizeof p->link, where, "link.name", err)))
        return st;
    if (!positive(p->h2d_gbps))
        return field_fail(err, where, "link.h2d_gbps", "must be a positive number");
    if (!positive(p->d2h_gbps))
        return field_fail(err, where, "link.d2h_gbps", "must be a positive number");
    if (!nonnegative(p->link_latency_s))
        return field_fail(err, where, "link.latency_us", "must be a non-negative number");
    if ((st = check_name(p->cpu, sizeof p->cpu, where, "cpu.name", err)))
        return st;
    if (p->cpu_threads < 1 || p->cpu_threads > MAX_THREADS)
        return field_fail(err, where, "cpu.threads", "must be a positive integer up to %d", MAX_THREADS);
    if (!positive(p->host_mem_bytes))
        return field_fail(err, where, "cpu.mem_bytes", "must be a positive number");
    if (p->n_cpu_attn < 1 || !p->cpu_attn)
        return field_fail(err, where, "cpu.attn", "must hold at least one [threads, ctx, gbps] point");
    if (p->n_cpu_attn > MAX_POINTS)
        return field_fail(err, where, "cpu.attn", "has %d points, more than %d", p->n_cpu_attn, MAX_POINTS);
    for (int32_t i = 0; i < p->n_cpu_attn; i++) {
        const td_cpu_attn_point *a = &p->cpu_attn[i];
        if (a->threads < 1 || a->threads > p->cpu_threads) {
            snprintf(f, sizeof f, "cpu.attn[%d][0]", i);
            return field_fail(err, where, f, "must be a positive integer up to cpu.threads (%d)", p->cpu_threads);
        }
        if (a->ctx < 1 || (double)a->ctx > MAX_DIM) {
            snprintf(f, sizeof f, "cpu.attn[%d][1]", i);
            return field_fail(err, where, f, "must be a positive integer below 2^31");
        }
        if (!positive(a->gbps)) {
            snprintf(f, sizeof f, "cpu.attn[%d][2]", i);
            return field_fail(err, where, f, "must be a positive number");
        }
        if (i > 0) {
            const td_cpu_attn_point *q = &p->cpu_attn[i - 1];
            bool after = a->threads != q->threads ? a->threads > q->threads : a->ctx > q->ctx;
            if (!after) {
                snprintf(f, sizeof f, "cpu.attn[%d]", i);
                return field_fail(err, where, f, "[%d, %lld] %s: points are sorted by threads, then ctx, each once",
                                  a->threads, (long long)a->ctx,
                                  a->threads == q->threads && a->ctx == q->ctx ? "repeats the point before it"
                                                                               : "comes after a larger one");
            }
        }
    }
    if (!nonnegative(p->cpu_attn_call_s))
        return field_fail(err, where, "cpu.attn_call_us", "must be a non-negative number");
    if (!nonnegative(p->handoff_s))
        return field_fail(err, where, "cpu.handoff_us", "must be a non-negative number");
    return TANDEM_OK;
}

/* ---- reading JSON ------------------------------------------------------------------- */

typedef struct reader {
    const char *where;
    td_error *err;
} reader;

/* The member `key` of obj (named path.key in errors); a missing one, a
 * repeated one, or (with type) one of another type is an error. */
static tandem_status member(const reader *r, const cJSON *obj, const char *path, const char *key, const cJSON **out) {
    char f[96];
    snprintf(f, sizeof f, "%s%s%s", path, *path ? "." : "", key);
    *out = NULL;
    for (const cJSON *c = obj->child; c; c = c->next)
        if (c->string && !strcmp(c->string, key)) {
            if (*out)
                return field_fail(r->err, r->where, f, "appears twice");
            *out = c;
        }
    if (!*out)
        return field_fail(r->err, r->where, f, "is missing");
    return TANDEM_OK;
}

static tandem_status get_object(const reader *r, const cJSON *obj, const char *path, const char *key,
                                const cJSON **out) {
    tandem_status st = member(r, obj, path, key, out);
    if (st == TANDEM_OK && !cJSON_IsObject(*out))
        return field_fail(r->err, r->where, key, "must be an object");
    return st;
}

static tandem_status get_number(const reader *r, const cJSON *obj, const char *path, const char *key, double *out) {
    const cJSON *v;
    tandem_status st = member(r, obj, path, key, &v);
    if (st)
        return st;
    if (!cJSON_IsNumber(v)) {
        char f[96];
        snprintf(f, sizeof f, "%s.%s", path, key);
        return field_fail(r->err, r->where, f, "must be a number");
    }
    *out = v->valuedouble;
    return TANDEM_OK;
}

static tandem_status get_string(const reader *r, const cJSON *obj, const char *path, const char *key, char *dst,
                                size_t cap) {
    char f[96];
    snprintf(f, sizeof f, "%s%s%s", path, *path ? "." : "", key);
    const cJSON *v;
    tandem_status st = member(r, obj, path, key, &v);
    if (st)
        return st;
    if (!cJSON_IsString(v))
        return field_fail(r->err, r->where, f, "must be a string");
    if (strlen(v->valuestring) >= cap)
        return field_fail(r->err, r->where, f, "is longer than %zu bytes", cap - 1);
    snprintf(dst, cap, "%s", v->valuestring);
    return TANDEM_OK;
}

/* An integer-valued number in [lo, hi]. */
static bool integral(const cJSON *v, double lo, double hi, double *out) {
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble != floor(v->valuedouble) ||
        v->valuedouble < lo || v->valuedouble > hi)
        return false;
    *out = v->valuedouble;
    return true;
}

/* A table: an array of rows, each an array of `cols` numbers. */
static tandem_status get_table(const reader *r, const cJSON *obj, const char *path, const char *key, int cols,
                               const cJSON **out, int32_t *rows) {
    char f[96];
    snprintf(f, sizeof f, "%s.%s", path, key);
    tandem_status st = member(r, obj, path, key, out);
    if (st)
        return st;
    if (!cJSON_IsArray(*out))
        return field_fail(r->err, r->where, f, "must be an array of rows");
    int n = cJSON_GetArraySize(*out);
    if (n < 1)
        return field_fail(r->err, r->where, f, "is empty");
    if (n > MAX_POINTS)
        return field_fail(r->err, r->where, f, "has %d rows, more than %d", n, MAX_POINTS);
    int i = 0;
    for (const cJSON *row = (*out)->child; row; row = row->next, i++) {
        if (!cJSON_IsArray(row) || cJSON_GetArraySize(row) != cols) {
            snprintf(f, sizeof f, "%s.%s[%d]", path, key, i);
            return field_fail(r->err, r->where, f, "must be an array of %d numbers", cols);
        }
    }
    *rows = n;
    return TANDEM_OK;
}

static tandem_status parse_device(const reader *r, const cJSON *dev, td_profile *p) {
    tandem_status st;
    double us = 0;
    if ((st = get_string(r, dev, "device", "name", p->device, sizeof p->device)) ||
        (st = get_number(r, dev, "device", "mem_bytes", &p->dev_mem_bytes)) ||
        (st = get_number(r, dev, "device", "launch_us", &us)))
        return st;
    p->dev_launch_s = us / 1e6;
    if ((st = get_number(r, dev, "device", "attn_gbps", &p->dev_attn_gbps)) ||
        (st = get_number(r, dev, "device", "row_gbps", &p->dev_row_gbps)))
        return st;
    const cJSON *t;
    int32_t n;
    if ((st = get_table(r, dev, "device", "gemm", 4, &t, &n)))
        return st;
    if (!(p->gemm = calloc((size_t)n, sizeof *p->gemm)))
        return td_fail(r->err, TANDEM_ERR_OUT_OF_MEMORY, "profile: out of memory for %d GEMM points", n);
    p->n_gemm = n;
    int i = 0;
    char f[96];
    for (const cJSON *row = t->child; row; row = row->next, i++) {
        const cJSON *c = row->child;
        double v[3];
        for (int j = 0; j < 3; j++, c = c->next)
            if (!integral(c, 1, MAX_DIM, &v[j])) {
                snprintf(f, sizeof f, "device.gemm[%d][%d]", i, j);
                return field_fail(r->err, r->where, f, "must be a positive integer below 2^31");
            }
        if (!cJSON_IsNumber(c)) {
            snprintf(f, sizeof f, "device.gemm[%d][3]", i);
            return field_fail(r->err, r->where, f, "must be a positive number of seconds");
        }
        p->gemm[i] = (td_gemm_point){(int64_t)v[0], (int64_t)v[1], (int64_t)v[2], c->valuedouble};
    }
    return TANDEM_OK;
}

static tandem_status parse_link(const reader *r, const cJSON *link, td_profile *p) {
    tandem_status st;
    double us = 0;
    if ((st = get_string(r, link, "link", "name", p->link, sizeof p->link)) ||
        (st = get_number(r, link, "link", "h2d_gbps", &p->h2d_gbps)) ||
        (st = get_number(r, link, "link", "d2h_gbps", &p->d2h_gbps)) ||
        (st = get_number(r, link, "link", "latency_us", &us)))
        return st;
    p->link_latency_s = us / 1e6;
    return TANDEM_OK;
}

static tandem_status parse_cpu(const reader *r, const cJSON *cpu, td_profile *p) {
    tandem_status st;
    const cJSON *v;
    double x;
    char f[96];
    if ((st = get_string(r, cpu, "cpu", "name", p->cpu, sizeof p->cpu)) || (st = member(r, cpu, "cpu", "threads", &v)))
        return st;
    if (!integral(v, 1, MAX_THREADS, &x))
        return field_fail(r->err, r->where, "cpu.threads", "must be a positive integer up to %d", MAX_THREADS);
    p->cpu_threads = (int32_t)x;
    if ((st = get_number(r, cpu, "cpu", "mem_bytes", &p->host_mem_bytes)))
        return st;
    const cJSON *t;
    int32_t n;
    if ((st = get_table(r, cpu, "cpu", "attn", 3, &t, &n)))
        return st;
    if (!(p->cpu_attn = calloc((size_t)n, sizeof *p->cpu_attn)))
        return td_fail(r->err, TANDEM_ERR_OUT_OF_MEMORY, "profile: out of memory for %d attention points", n);
    p->n_cpu_attn = n;
    int i = 0;
    for (const cJSON *row = t->child; row; row = row->next, i++) {
        const cJSON *c = row->child;
        double th, ctx;
        if (!integral(c, 1, MAX_THREADS, &th)) {
            snprintf(f, sizeof f, "cpu.attn[%d][0]", i);
            return field_fail(r->err, r->where, f, "must be a positive integer up to cpu.threads (%d)", p->cpu_threads);
        }
        if (!integral(c->next, 1, MAX_DIM, &ctx)) {
            snprintf(f, sizeof f, "cpu.attn[%d][1]", i);
            return field_fail(r->err, r->where, f, "must be a positive integer below 2^31");
        }
        if (!cJSON_IsNumber(c->next->next)) {
            snprintf(f, sizeof f, "cpu.attn[%d][2]", i);
            return field_fail(r->err, r->where, f, "must be a positive number");
        }
        p->cpu_attn[i] = (td_cpu_attn_point){(int32_t)th, (int64_t)ctx, c->next->next->valuedouble};
    }
    if ((st = get_number(r, cpu, "cpu", "attn_call_us", &x)))
        return st;
    p->cpu_attn_call_s = x / 1e6;
    if ((st = get_number(r, cpu, "cpu", "handoff_us", &x)))
        return st;
    p->handoff_s = x / 1e6;
    return TANDEM_OK;
}

/* Line and column (1-based) of offset `at` in text. */
static void line_col(const char *text, size_t at, int *line, int *col) {
    *line = 1, *col = 1;
    for (size_t i = 0; i < at && text[i]; i++) {
        if (text[i] == '\n')
            (*line)++, *col = 1;
        else
            (*col)++;
    }
}

/* Parses and validates JSON text; `where` names it in errors. */
static tandem_status parse_text(const char *text, size_t len, const char *where, td_profile **out, td_error *err) {
    *out = NULL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (!root) {
        int line, col;
        size_t at = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
        line_col(text, at, &line, &col);
        return td_fail(err, TANDEM_ERR_FORMAT, "%s:%d:%d: not valid JSON", where, line, col);
    }
    td_profile *p = calloc(1, sizeof *p);
    if (!p) {
        cJSON_Delete(root);
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "profile: out of memory");
    }
    const reader r = {where, err};
    tandem_status st = TANDEM_OK;
    const cJSON *v, *dev, *link, *cpu;
    double schema;
    if (!cJSON_IsObject(root))
        st = td_fail(err, TANDEM_ERR_FORMAT, "%s: the profile must be a JSON object", where);
    else if (!(st = member(&r, root, "", "schema", &v))) {
        if (!integral(v, -1e9, 1e9, &schema))
            st = field_fail(err, where, "schema", "must be an integer");
        else if (schema > TD_PROFILE_SCHEMA)
            st = td_fail(err, TANDEM_ERR_UNSUPPORTED,
                         "%s: schema %.0f is newer than this build's %d (a newer tandem wrote it: update, or "
                         "run tandem tune again)",
                         where, schema, TD_PROFILE_SCHEMA);
        else if (schema < 1)
            st = field_fail(err, where, "schema", "%.0f is not a schema version (1 is the first)", schema);
    }
    if (!st && cJSON_GetObjectItemCaseSensitive(root, "source"))
        st = get_string(&r, root, "", "source", p->source, sizeof p->source);
    if (!st && !(st = get_object(&r, root, "", "device", &dev)))
        st = parse_device(&r, dev, p);
    if (!st && !(st = get_object(&r, root, "", "link", &link)))
        st = parse_link(&r, link, p);
    if (!st && !(st = get_object(&r, root, "", "cpu", &cpu)))
        st = parse_cpu(&r, cpu, p);
    cJSON_Delete(root);
    if (!st)
        st = td_profile_validate(p, where, err);
    if (st) {
        td_profile_free(p);
        return st;
    }
    *out = p;
    return TANDEM_OK;
}

tandem_status td_profile_load(const char *path, td_profile **out, td_error *err) {
    *out = NULL;
    if (!path || !*path)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "profile: no file named");
    FILE *f = fopen(path, "rb");
    if (!f)
        return td_fail(err, TANDEM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    /* the size, bounded, then the bytes (a pipe or /proc file reads in chunks) */
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    tandem_status st = TANDEM_OK;
    while (buf && !st) {
        n += fread(buf + n, 1, cap - n, f);
        if (ferror(f))
            st = td_fail(err, TANDEM_ERR_IO, "%s: read error", path);
        else if (n < cap)
            break;
        else if (cap >= MAX_FILE_BYTES)
            st = td_fail(err, TANDEM_ERR_FORMAT, "%s: larger than %zu MiB: not a profile", path, MAX_FILE_BYTES >> 20);
        else {
            char *grown = realloc(buf, 2 * cap + 1);
            if (!grown)
                break;
            buf = grown, cap *= 2;
        }
    }
    fclose(f);
    if (!buf || (!st && n == cap))
        st = td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    if (!st) {
        buf[n] = '\0';
        st = parse_text(buf, n, path, out, err);
    }
    free(buf);
    return st;
}

/* ---- presets ------------------------------------------------------------------------- */

const char *const *td_profile_presets(void) { return td_profile_preset_names; }

static void preset_list(char *dst, size_t cap) {
    size_t used = 0;
    dst[0] = '\0';
    for (int i = 0; td_profile_preset_names[i] && used < cap; i++)
        used += (size_t)snprintf(dst + used, cap - used, "%s%s", i ? ", " : "", td_profile_preset_names[i]);
}

tandem_status td_profile_preset(const char *name, td_profile **out, td_error *err) {
    *out = NULL;
    for (int i = 0; name && td_profile_preset_names[i]; i++)
        if (!strcasecmp(name, td_profile_preset_names[i])) {
            const char *text = (const char *)td_profile_preset_json[i];
            char where[96];
            snprintf(where, sizeof where, "preset %s", td_profile_preset_names[i]);
            return parse_text(text, strlen(text), where, out, err);
        }
    char list[160];
    preset_list(list, sizeof list);
    return td_fail(err, TANDEM_ERR_NOT_FOUND, "no profile preset '%s' (presets: %s)", name ? name : "(null)", list);
}

tandem_status td_profile_open(const char *name, td_profile **out, td_error *err) {
    *out = NULL;
    if (!name || !*name)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "profile: no file or preset named");
    struct stat sb;
    if (stat(name, &sb) == 0 && !S_ISDIR(sb.st_mode))
        return td_profile_load(name, out, err);
    for (int i = 0; td_profile_preset_names[i]; i++)
        if (!strcasecmp(name, td_profile_preset_names[i]))
            return td_profile_preset(name, out, err);
    size_t n = strlen(name);
    if (strchr(name, '/') || (n > 5 && !strcasecmp(name + n - 5, ".json")))
        return td_profile_load(name, out, err); /* says what is wrong with the file */
    char list[160];
    preset_list(list, sizeof list);
    return td_fail(err, TANDEM_ERR_NOT_FOUND, "profile '%s': no such file, and no preset of that name (presets: %s)",
                   name, list);
}

/* ---- writing ----------------------------------------------------------------------------- */

/* The shortest of %.15g, %.16g, %.17g that reads back as x. */
static void fmt_double(char *dst, size_t cap, double x) {
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(dst, cap, "%.*g", prec, x);
        if (strtod(dst, NULL) == x)
            return;
    }
}

/* Microseconds for seconds s, chosen so that the loader's us / 1e6 gives
 * s back exactly when some double does (s * 1e6 may be an ulp off). */
static double to_us(double s) {
    double c = s * 1e6;
    if (c / 1e6 == s)
        return c;
    double lo = c, hi = c;
    for (int i = 0; i < 4; i++) {
        lo = nextafter(lo, -INFINITY);
        hi = nextafter(hi, INFINITY);
        if (lo / 1e6 == s)
            return lo;
        if (hi / 1e6 == s)
            return hi;
    }
    return c;
}

static void put_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(f, "\\%c", *c);
        else if (*c == '\n')
            fputs("\\n", f);
        else if (*c == '\t')
            fputs("\\t", f);
        else if (*c < 0x20)
            fprintf(f, "\\u%04x", *c);
        else
            fputc(*c, f);
    }
    fputc('"', f);
}

static void put_number(FILE *f, double x) {
    char b[40];
    fmt_double(b, sizeof b, x);
    fputs(b, f);
}

static void write_json(const td_profile *p, FILE *f) {
    fprintf(f, "{\n  \"schema\": %d,\n  \"source\": ", TD_PROFILE_SCHEMA);
    put_string(f, p->source);
    fputs(",\n  \"device\": {\n    \"name\": ", f);
    put_string(f, p->device);
    fputs(",\n    \"mem_bytes\": ", f);
    put_number(f, p->dev_mem_bytes);
    fputs(",\n    \"launch_us\": ", f);
    put_number(f, to_us(p->dev_launch_s));
    fputs(",\n    \"attn_gbps\": ", f);
    put_number(f, p->dev_attn_gbps);
    fputs(",\n    \"row_gbps\": ", f);
    put_number(f, p->dev_row_gbps);
    fputs(",\n    \"gemm\": [", f);
    for (int32_t i = 0; i < p->n_gemm; i++) {
        const td_gemm_point *g = &p->gemm[i];
        fprintf(f, "%s\n      [%lld, %lld, %lld, ", i ? "," : "", (long long)g->m, (long long)g->n, (long long)g->k);
        put_number(f, g->seconds);
        fputc(']', f);
    }
    fputs("\n    ]\n  },\n  \"link\": {\n    \"name\": ", f);
    put_string(f, p->link);
    fputs(",\n    \"h2d_gbps\": ", f);
    put_number(f, p->h2d_gbps);
    fputs(",\n    \"d2h_gbps\": ", f);
    put_number(f, p->d2h_gbps);
    fputs(",\n    \"latency_us\": ", f);
    put_number(f, to_us(p->link_latency_s));
    fputs("\n  },\n  \"cpu\": {\n    \"name\": ", f);
    put_string(f, p->cpu);
    fprintf(f, ",\n    \"threads\": %d,\n    \"mem_bytes\": ", p->cpu_threads);
    put_number(f, p->host_mem_bytes);
    fputs(",\n    \"attn\": [", f);
    for (int32_t i = 0; i < p->n_cpu_attn; i++) {
        const td_cpu_attn_point *a = &p->cpu_attn[i];
        fprintf(f, "%s\n      [%d, %lld, ", i ? "," : "", a->threads, (long long)a->ctx);
        put_number(f, a->gbps);
        fputc(']', f);
    }
    fputs("\n    ],\n    \"attn_call_us\": ", f);
    put_number(f, to_us(p->cpu_attn_call_s));
    fputs(",\n    \"handoff_us\": ", f);
    put_number(f, to_us(p->handoff_s));
    fputs("\n  }\n}\n", f);
}

tandem_status td_profile_save(const td_profile *p, const char *path, td_error *err) {
    if (!path || !*path)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "profile: no file named to save to");
    td_error verr;
    tandem_status st = td_profile_validate(p, "profile", &verr);
    if (st)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "%s: not saved: %s", path, verr.msg);
    /* written next to the target and renamed over it: a reader never sees half a file */
    size_t n = strlen(path) + 32;
    char *tmp = malloc(n);
    if (!tmp)
        return td_fail(err, TANDEM_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    snprintf(tmp, n, "%s.tmp%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) {
        st = td_fail(err, TANDEM_ERR_IO, "%s: cannot write: %s", tmp, strerror(errno));
        free(tmp);
        return st;
    }
    write_json(p, f);
    bool bad = ferror(f);
    if (fclose(f) != 0)
        bad = true;
    if (bad)
        st = td_fail(err, TANDEM_ERR_IO, "%s: write error: %s", tmp, strerror(errno));
    else if (rename(tmp, path) != 0)
        st = td_fail(err, TANDEM_ERR_IO, "%s: cannot rename into place: %s", path, strerror(errno));
    if (st)
        unlink(tmp);
    free(tmp);
    return st;
}

td_profile *td_profile_dup(const td_profile *p) {
    if (!p)
        return NULL;
    td_profile *q = malloc(sizeof *q);
    if (!q)
        return NULL;
    *q = *p;
    q->gemm = NULL;
    q->cpu_attn = NULL;
    if (p->n_gemm > 0 && !(q->gemm = malloc((size_t)p->n_gemm * sizeof *q->gemm)))
        goto fail;
    if (p->n_cpu_attn > 0 && !(q->cpu_attn = malloc((size_t)p->n_cpu_attn * sizeof *q->cpu_attn)))
        goto fail;
    if (p->n_gemm > 0)
        memcpy(q->gemm, p->gemm, (size_t)p->n_gemm * sizeof *q->gemm);
    if (p->n_cpu_attn > 0)
        memcpy(q->cpu_attn, p->cpu_attn, (size_t)p->n_cpu_attn * sizeof *q->cpu_attn);
    return q;
fail:
    td_profile_free(q);
    return NULL;
}

void td_profile_free(td_profile *p) {
    if (!p)
        return;
    free(p->gemm);
    free(p->cpu_attn);
    free(p);
}

/* ---- interpolation ------------------------------------------------------------------------- */

/* Seconds at m within one shape's points g[0..n) (sorted by m). */
static double shape_seconds(const td_gemm_point *g, int32_t n, int64_t m, double launch) {
    if (m <= g[0].m)
        return g[0].seconds;
    const td_gemm_point *last = &g[n - 1];
    if (m >= last->m) {
        if (n >= 2) {
            const td_gemm_point *prev = &g[n - 2];
            double slope = (last->seconds - prev->seconds) / (double)(last->m - prev->m);
            if (slope > 0)
                return last->seconds + slope * (double)(m - last->m);
        }
        /* one point, or a last pair that does not rise (noise): the work
         * beyond the launch grows with m */
        double work = last->seconds > launch ? last->seconds - launch : last->seconds;
        return last->seconds + work * ((double)m / (double)last->m - 1);
    }
    int32_t lo = 0, hi = n - 1; /* g[lo].m < m <= g[hi].m */
    while (hi - lo > 1) {
        int32_t mid = (lo + hi) / 2;
        if (g[mid].m < m)
            lo = mid;
        else
            hi = mid;
    }
    double w = (double)(m - g[lo].m) / (double)(g[hi].m - g[lo].m);
    return g[lo].seconds + w * (g[hi].seconds - g[lo].seconds);
}

double td_profile_gemm_seconds(const td_profile *p, int64_t m, int64_t n, int64_t k) {
    if (!p || p->n_gemm < 1 || m < 1 || n < 1 || k < 1)
        return 0;
    const double nk = (double)n * (double)k;
    int32_t best = -1, best_n = 0;
    double best_d = INFINITY;
    for (int32_t i = 0; i < p->n_gemm;) {
        int32_t j = i;
        while (j < p->n_gemm && p->gemm[j].n == p->gemm[i].n && p->gemm[j].k == p->gemm[i].k)
            j++;
        if (p->gemm[i].n == n && p->gemm[i].k == k)
            return shape_seconds(p->gemm + i, j - i, m, p->dev_launch_s);
        double d = fabs(log(nk / ((double)p->gemm[i].n * (double)p->gemm[i].k)));
        if (d < best_d)
            best_d = d, best = i, best_n = j - i;
        i = j;
    }
    const td_gemm_point *g = p->gemm + best;
    double t = shape_seconds(g, best_n, m, p->dev_launch_s);
    double ratio = nk / ((double)g->n * (double)g->k), launch = p->dev_launch_s;
    /* the launch does not grow with the shape; the work does */
    return t > launch ? launch + (t - launch) * ratio : t * ratio;
}

/* GB/s of team g[0..n) (one team size, sorted by ctx) at ctx: linear in
 * log(ctx) between measured contexts, flat outside them. */
static double team_gbps(const td_cpu_attn_point *a, int32_t n, int64_t ctx) {
    if (ctx <= a[0].ctx)
        return a[0].gbps;
    if (ctx >= a[n - 1].ctx)
        return a[n - 1].gbps;
    int32_t i = 1;
    while (a[i].ctx < ctx)
        i++;
    double w = (log((double)ctx) - log((double)a[i - 1].ctx)) / (log((double)a[i].ctx) - log((double)a[i - 1].ctx));
    return a[i - 1].gbps + w * (a[i].gbps - a[i - 1].gbps);
}

double td_profile_cpu_attn_bps(const td_profile *p, int threads, int64_t ctx) {
    if (!p || p->n_cpu_attn < 1)
        return 0;
    if (threads < 1)
        threads = 1;
    if (ctx < 1)
        ctx = 1;
    /* teams: runs of one thread count; the floor team (largest <= threads)
     * and the largest team */
    int32_t floor_at = -1, floor_n = 0, last_at = 0, last_n = 0;
    for (int32_t i = 0; i < p->n_cpu_attn;) {
        int32_t j = i;
        while (j < p->n_cpu_attn && p->cpu_attn[j].threads == p->cpu_attn[i].threads)
            j++;
        if (p->cpu_attn[i].threads <= threads)
            floor_at = i, floor_n = j - i;
        last_at = i, last_n = j - i;
        i = j;
    }
    if (floor_at < 0) { /* fewer threads than the smallest team: its share */
        const td_cpu_attn_point *a = p->cpu_attn;
        int32_t n = 0;
        while (n < p->n_cpu_attn && p->cpu_attn[n].threads == a->threads)
            n++;
        return team_gbps(a, n, ctx) * threads / a->threads * 1e9;
    }
    const td_cpu_attn_point *a = p->cpu_attn + floor_at;
    double v = team_gbps(a, floor_n, ctx);
    if (threads > a->threads) {
        double cap = team_gbps(p->cpu_attn + last_at, last_n, ctx);
        double scaled = v * threads / a->threads;
        v = scaled < cap ? scaled : cap > v ? cap : v;
    }
    return v * 1e9;
}
