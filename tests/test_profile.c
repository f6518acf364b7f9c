/* The hardware profile (offload/profile.h) and `tandem tune`
 * (offload/tune.h, the CLI): JSON round trips, every validation error with
 * its field, presets, interpolation against hand-computed values, and a
 * tune run on the emulated device, whose timed mode takes exactly its GPU
 * and link models' times: the models are the oracle. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/clock.h"
#include "cpu/hostmem.h"
#include "gpu/device.h"
#include "gpu/device_model.h"
#include "offload/hwprobe.h"
#include "offload/profile.h"
#include "offload/tune.h"
#include "tests/test_util.h"

static char tmpdir[64];

static int suite_init(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_profile_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : 1;
}

static int suite_clean(void) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : 1;
}

static const char *tmp_path(const char *name) {
    static char path[4][256];
    static int next;
    char *p = path[next++ % 4];
    snprintf(p, 256, "%s/%s", tmpdir, name);
    return p;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    fclose(f);
}

/* A valid profile: four GEMM points of one shape, two of another; two teams. */
static const char *const base_json =
    "{\n"
    "  \"schema\": 1,\n"
    "  \"source\": \"hand-written\",\n"
    "  \"device\": {\n"
    "    \"name\": \"GPU\",\n"
    "    \"mem_bytes\": 17179869184,\n"
    "    \"launch_us\": 4,\n"
    "    \"attn_gbps\": 240,\n"
    "    \"row_gbps\": 250.5,\n"
    "    \"gemm\": [\n"
    "      [1, 1024, 1024, 1.5e-05],\n"
    "      [2, 1024, 1024, 1.6e-05],\n"
    "      [4, 1024, 1024, 1.7e-05],\n"
    "      [8, 1024, 1024, 2e-05],\n"
    "      [1, 4096, 1024, 3e-05],\n"
    "      [16, 4096, 1024, 4e-05]\n"
    "    ]\n"
    "  },\n"
    "  \"link\": {\"name\": \"pcie3-x16\", \"h2d_gbps\": 12, \"d2h_gbps\": 13, \"latency_us\": 10},\n"
    "  \"cpu\": {\n"
    "    \"name\": \"CPU\",\n"
    "    \"threads\": 4,\n"
    "    \"mem_bytes\": 68719476736,\n"
    "    \"attn\": [[1, 256, 10], [1, 4096, 12.5], [4, 256, 30], [4, 4096, 40]],\n"
    "    \"attn_call_us\": 5,\n"
    "    \"handoff_us\": 20\n"
    "  }\n"
    "}\n";

/* base_json with the first occurrence of `from` replaced by `to`. */
static char *mutate(const char *from, const char *to) {
    const char *at = strstr(base_json, from);
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    size_t n = strlen(base_json) - strlen(from) + strlen(to) + 1;
    char *s = malloc(n);
    size_t pre = (size_t)(at - base_json);
    memcpy(s, base_json, pre);
    snprintf(s + pre, n - pre, "%s%s", to, at + strlen(from));
    return s;
}

static bool profiles_equal(const td_profile *a, const td_profile *b) {
    bool eq = !strcmp(a->source, b->source) && !strcmp(a->device, b->device) && !strcmp(a->link, b->link) &&
              !strcmp(a->cpu, b->cpu) && a->dev_mem_bytes == b->dev_mem_bytes && a->dev_launch_s == b->dev_launch_s &&
              a->dev_attn_gbps == b->dev_attn_gbps && a->dev_row_gbps == b->dev_row_gbps && a->n_gemm == b->n_gemm &&
              a->h2d_gbps == b->h2d_gbps && a->d2h_gbps == b->d2h_gbps && a->link_latency_s == b->link_latency_s &&
              a->cpu_threads == b->cpu_threads && a->host_mem_bytes == b->host_mem_bytes &&
              a->n_cpu_attn == b->n_cpu_attn && a->cpu_attn_call_s == b->cpu_attn_call_s &&
              a->handoff_s == b->handoff_s;
    for (int i = 0; eq && i < a->n_gemm; i++)
        eq = a->gemm[i].m == b->gemm[i].m && a->gemm[i].n == b->gemm[i].n && a->gemm[i].k == b->gemm[i].k &&
             a->gemm[i].seconds == b->gemm[i].seconds;
    for (int i = 0; eq && i < a->n_cpu_attn; i++)
        eq = a->cpu_attn[i].threads == b->cpu_attn[i].threads && a->cpu_attn[i].ctx == b->cpu_attn[i].ctx &&
             a->cpu_attn[i].gbps == b->cpu_attn[i].gbps;
    return eq;
}

/* ---- load and save ---------------------------------------------------------------- */

static void test_load_fields(void) {
    const char *path = tmp_path("base.json");
    write_text(path, base_json);
    td_profile *p = NULL;
    td_error err;
    TD_ASSERT_OK(td_profile_load(path, &p, &err), &err);
    CU_ASSERT_STRING_EQUAL(p->source, "hand-written");
    CU_ASSERT_STRING_EQUAL(p->device, "GPU");
    CU_ASSERT_EQUAL(p->dev_mem_bytes, 17179869184.0);
    CU_ASSERT_EQUAL(p->dev_launch_s, 4e-6); /* 4 / 1e6 is the double nearest 4e-6 */
    CU_ASSERT_EQUAL(p->dev_row_gbps, 250.5);
    CU_ASSERT_EQUAL(p->n_gemm, 6);
    CU_ASSERT_EQUAL(p->gemm[5].m, 16);
    CU_ASSERT_EQUAL(p->gemm[5].n, 4096);
    CU_ASSERT_EQUAL(p->gemm[5].k, 1024);
    CU_ASSERT_EQUAL(p->gemm[5].seconds, 4e-5);
    CU_ASSERT_STRING_EQUAL(p->link, "pcie3-x16");
    CU_ASSERT_EQUAL(p->d2h_gbps, 13.0);
    CU_ASSERT_EQUAL(p->link_latency_s, 1e-5);
    CU_ASSERT_EQUAL(p->cpu_threads, 4);
    CU_ASSERT_EQUAL(p->n_cpu_attn, 4);
    CU_ASSERT_EQUAL(p->cpu_attn[1].ctx, 4096);
    CU_ASSERT_EQUAL(p->cpu_attn[1].gbps, 12.5);
    CU_ASSERT_EQUAL(p->cpu_attn_call_s, 5e-6);
    CU_ASSERT_EQUAL(p->handoff_s, 2e-5);
    td_profile_free(p);
}

/* Unknown keys are ignored (notes in a file, fields a later minor version
 * adds); a misspelt figure is still caught, as the missing one. */
static void test_unknown_keys(void) {
    char *text = mutate("\"launch_us\": 4,", "\"launch_us\": 4, \"note\": \"measured at 1.8 GHz\", \"extra\": [1, 2],");
    const char *path = tmp_path("unknown.json");
    write_text(path, text);
    free(text);
    td_profile *p = NULL;
    td_error err;
    TD_ASSERT_OK(td_profile_load(path, &p, &err), &err);
    td_profile_free(p);
    text = mutate("\"h2d_gbps\"", "\"h2d_gpbs\"");
    write_text(path, text);
    free(text);
    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, td_profile_load(path, &p, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "link.h2d_gbps: is missing"));
}

static void test_round_trip(void) {
    /* awkward values: no short decimal, sub-microsecond times, huge sizes */
    td_profile q = {0};
    snprintf(q.source, sizeof q.source, "round trip \"quoted\" \\ back\tslash\n\x01");
    snprintf(q.device, sizeof q.device, "dev");
    snprintf(q.link, sizeof q.link, "link");
    snprintf(q.cpu, sizeof q.cpu, "cpu \xc2\xb5");
    q.dev_mem_bytes = 85899345920.0;
    q.dev_launch_s = 4.00011420249939 / 1e6;
    q.dev_attn_gbps = 1.0 / 3.0;
    q.dev_row_gbps = 1699.9999168614997;
    td_gemm_point g[3] = {{1, 7, 9, 0.1}, {3, 7, 9, 1e-300}, {1, 8, 1, 5.237234383821488e-06}};
    q.gemm = g, q.n_gemm = 3;
    q.h2d_gbps = 47.999998756946326, q.d2h_gbps = 52;
    q.link_latency_s = 8.000001767821885 / 1e6;
    q.cpu_threads = 3;
    q.host_mem_bytes = 25276502016.0;
    td_cpu_attn_point a[2] = {{1, 256, 11.483539884762822}, {3, 2147483647, 2.5e-9}};
    q.cpu_attn = a, q.n_cpu_attn = 2;
    q.cpu_attn_call_s = 0; /* zero overheads are allowed */
    q.handoff_s = 58.526886206818745 / 1e6;
    const char *p1 = tmp_path("rt1.json"), *p2 = tmp_path("rt2.json");
    td_error err;
    TD_ASSERT_OK(td_profile_save(&q, p1, &err), &err);
    td_profile *r = NULL, *r2 = NULL;
    TD_ASSERT_OK(td_profile_load(p1, &r, &err), &err);
    CU_ASSERT_TRUE(profiles_equal(&q, r));
    TD_ASSERT_OK(td_profile_save(r, p2, &err), &err);
    char *t1 = td_test_read_file(p1, NULL), *t2 = td_test_read_file(p2, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t2);
    CU_ASSERT_STRING_EQUAL(t1, t2);
    /* short decimals stay short */
    CU_ASSERT_PTR_NOT_NULL(strstr(t1, "[1, 7, 9, 0.1]"));
    CU_ASSERT_PTR_NOT_NULL(strstr(t1, "\"d2h_gbps\": 52,"));
    free(t1), free(t2);
    /* a copy is equal and independent */
    td_profile *d = td_profile_dup(r);
    CU_ASSERT_TRUE(profiles_equal(r, d));
    CU_ASSERT_PTR_NOT_EQUAL(d->gemm, r->gemm);
    td_profile_free(d);
    /* the hand-written file: load, save, load gives the same profile */
    write_text(p1, base_json);
    td_profile_free(r);
    TD_ASSERT_OK(td_profile_load(p1, &r, &err), &err);
    TD_ASSERT_OK(td_profile_save(r, p2, &err), &err);
    TD_ASSERT_OK(td_profile_load(p2, &r2, &err), &err);
    CU_ASSERT_TRUE(profiles_equal(r, r2));
    td_profile_free(r);
    td_profile_free(r2);
    /* seconds that are no microsecond count / 1e6 still come back within an ulp */
    q.dev_launch_s = 3.0000000000000004e-6 * (1 + 0x1p-52);
    TD_ASSERT_OK(td_profile_save(&q, p1, &err), &err);
    TD_ASSERT_OK(td_profile_load(p1, &r, &err), &err);
    CU_ASSERT_TRUE(fabs(r->dev_launch_s - q.dev_launch_s) <= 0x1p-52 * q.dev_launch_s);
    td_profile_free(r);
}

typedef struct bad_case {
    const char *from, *to; /* the mutation of base_json */
    const char *message;   /* what the error must say, after "<file>: " */
    tandem_status status;  /* 0: TANDEM_ERR_FORMAT */
} bad_case;

static void test_validation_errors(void) {
    static const bad_case cases[] = {
        {"\"schema\": 1,", "\"schema\": 2,", "schema 2 is newer than this build's 1", TANDEM_ERR_UNSUPPORTED},
        {"\"schema\": 1,", "\"schema\": 0,", "schema: 0 is not a schema version", 0},
        {"\"schema\": 1,", "\"schema\": 1.5,", "schema: must be an integer", 0},
        {"\"schema\": 1,", "", "schema: is missing", 0},
        {"\"source\": \"hand-written\"", "\"source\": 7", "source: must be a string", 0},
        {"\"device\": {", "\"device\": 3, \"x\": {", "device: must be an object", 0},
        {"\"device\": {", "\"devices\": {", "device: is missing", 0},
        {"\"name\": \"GPU\"", "\"name\": 5", "device.name: must be a string", 0},
        {"\"name\": \"GPU\"", "\"name\": \"\"", "device.name: must be a non-empty string", 0},
        {"\"name\": \"GPU\"", "\"name\": \"0123456789012345678901234567890123456789012345678901234567890123\"",
         "device.name: is longer than 63 bytes", 0},
        {"\"name\": \"GPU\",", "", "device.name: is missing", 0},
        {"\"mem_bytes\": 17179869184", "\"mem_bytes\": -1", "device.mem_bytes: must be a positive number", 0},
        {"\"launch_us\": 4", "\"launch_us\": \"4\"", "device.launch_us: must be a number", 0},
        {"\"launch_us\": 4", "\"launch_us\": -0.5", "device.launch_us: must be a non-negative number", 0},
        {"\"launch_us\": 4", "\"launch_us\": 4, \"launch_us\": 5", "device.launch_us: appears twice", 0},
        {"\"attn_gbps\": 240", "\"attn_gbps\": 0", "device.attn_gbps: must be a positive number", 0},
        {"\"row_gbps\": 250.5", "\"row_gbps\": 1e999", "device.row_gbps: must be a positive number", 0},
        {"\"row_gbps\": 250.5,", "", "device.row_gbps: is missing", 0},
        {"\"gemm\": [", "\"gemm\": 1, \"x\": [", "device.gemm: must be an array of rows", 0},
        {"\"gemm\": [\n      [1, 1024, 1024, 1.5e-05],\n      [2, 1024, 1024, 1.6e-05],\n      [4, 1024, 1024, "
         "1.7e-05],\n      [8, 1024, 1024, 2e-05],\n      [1, 4096, 1024, 3e-05],\n      [16, 4096, 1024, 4e-05]\n    "
         "]",
         "\"gemm\": []", "device.gemm: is empty", 0},
        {"[2, 1024, 1024, 1.6e-05]", "[2, 1024, 1.6e-05]", "device.gemm[1]: must be an array of 4 numbers", 0},
        {"[8, 1024, 1024, 2e-05]", "[8, 1024, 1024.5, 2e-05]", "device.gemm[3][2]: must be a positive integer", 0},
        {"[1, 1024, 1024, 1.5e-05]", "[0, 1024, 1024, 1.5e-05]", "device.gemm[0][0]: must be a positive integer", 0},
        {"[1, 4096, 1024, 3e-05]", "[1, 4096, 4294967296, 3e-05]", "device.gemm[4][2]: must be a positive integer", 0},
        {"[4, 1024, 1024, 1.7e-05]", "[4, 1024, 1024, -1.7e-05]",
         "device.gemm[2][3]: must be a positive number of seconds", 0},
        {"[4, 1024, 1024, 1.7e-05]", "[4, 1024, 1024, \"fast\"]",
         "device.gemm[2][3]: must be a positive number of seconds", 0},
        {"[4, 1024, 1024, 1.7e-05]", "[1, 1024, 1024, 1.7e-05]", "device.gemm[2]: [1, 1024, 1024] comes after", 0},
        {"[4, 1024, 1024, 1.7e-05]", "[2, 1024, 1024, 1.7e-05]", "device.gemm[2]: [2, 1024, 1024] repeats", 0},
        {"[1, 4096, 1024, 3e-05]", "[1, 512, 1024, 3e-05]", "device.gemm[4]: [1, 512, 1024] comes after", 0},
        {"\"link\": {", "\"lnk\": {", "link: is missing", 0},
        {"\"name\": \"pcie3-x16\", ", "", "link.name: is missing", 0},
        {"\"h2d_gbps\": 12", "\"h2d_gbps\": 0", "link.h2d_gbps: must be a positive number", 0},
        {"\"d2h_gbps\": 13", "\"d2h_gbps\": null", "link.d2h_gbps: must be a number", 0},
        {"\"latency_us\": 10", "\"latency_us\": -10", "link.latency_us: must be a non-negative number", 0},
        {"\"cpu\": {", "\"cpu\": [], \"x\": {", "cpu: must be an object", 0},
        {"\"name\": \"CPU\"", "\"name\": \"\"", "cpu.name: must be a non-empty string", 0},
        {"\"threads\": 4", "\"threads\": 0", "cpu.threads: must be a positive integer", 0},
        {"\"threads\": 4", "\"threads\": 2.5", "cpu.threads: must be a positive integer", 0},
        {"\"mem_bytes\": 68719476736", "\"mem_bytes\": 0", "cpu.mem_bytes: must be a positive number", 0},
        {"\"attn\": [[", "\"attn\": {}, \"x\": [[", "cpu.attn: must be an array of rows", 0},
        {"[1, 256, 10]", "[1, 256]", "cpu.attn[0]: must be an array of 3 numbers", 0},
        {"[4, 256, 30]", "[8, 256, 30]", "cpu.attn[2][0]: must be a positive integer up to cpu.threads (4)", 0},
        {"[1, 4096, 12.5]", "[1, 0, 12.5]", "cpu.attn[1][1]: must be a positive integer below 2^31", 0},
        {"[4, 4096, 40]", "[4, 4096, -40]", "cpu.attn[3][2]: must be a positive number", 0},
        {"[4, 4096, 40]", "[4, 128, 40]", "cpu.attn[3]: [4, 128] comes after", 0},
        {"[4, 256, 30]", "[1, 4096, 30]", "cpu.attn[2]: [1, 4096] repeats", 0},
        {"\"attn_call_us\": 5", "\"attn_call_us\": -5", "cpu.attn_call_us: must be a non-negative number", 0},
        {"\"attn_call_us\": 5,", "", "cpu.attn_call_us: is missing", 0},
        {"\"handoff_us\": 20", "\"handoff_us\": true", "cpu.handoff_us: must be a number", 0},
        {"{\n  \"schema\"", "[\n  \"schema\"", "not valid JSON", 0},
        {"\"cpu\": {", "\"cpu\" {", "not valid JSON", 0},
    };
    const char *path = tmp_path("bad.json");
    char want[512];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *text = mutate(cases[i].from, cases[i].to);
        write_text(path, text);
        free(text);
        td_profile *p = (td_profile *)1;
        td_error err = {0};
        tandem_status st = td_profile_load(path, &p, &err);
        tandem_status expect = cases[i].status ? cases[i].status : TANDEM_ERR_FORMAT;
        snprintf(want, sizeof want, "%s: %s", path, cases[i].message);
        bool ok = st == expect && p == NULL && strstr(err.msg, want) == err.msg;
        if (!strcmp(cases[i].message, "not valid JSON")) /* "path:line:col: not valid JSON" */
            ok = st == expect && !strncmp(err.msg, path, strlen(path)) && strstr(err.msg, ": not valid JSON");
        if (!ok)
            fprintf(stderr, "\n  case %zu: got %s '%s', want %s '%s'\n", i, tandem_status_name(st), err.msg,
                    tandem_status_name(expect), want);
        CU_ASSERT_TRUE(ok);
    }
    /* the root is an array */
    write_text(path, "[1, 2]");
    td_profile *p = NULL;
    td_error err;
    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, td_profile_load(path, &p, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "must be a JSON object"));
    /* a file that is not there */
    TD_ASSERT_STATUS(TANDEM_ERR_IO, td_profile_load(tmp_path("none.json"), &p, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "none.json: cannot open"));
    /* a bad line and column */
    write_text(path, "{\n  \"schema\": 1,\n  \"device\": x\n}");
    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, td_profile_load(path, &p, &err), &err);
    snprintf(want, sizeof want, "%s:3:13: not valid JSON", path);
    CU_ASSERT_STRING_EQUAL(err.msg, want);
}

static void test_validate_struct(void) {
    td_profile *p = NULL;
    td_error err;
    const char *path = tmp_path("v.json");
    write_text(path, base_json);
    TD_ASSERT_OK(td_profile_load(path, &p, &err), &err);
    TD_ASSERT_OK(td_profile_validate(p, NULL, &err), &err);
    p->dev_launch_s = NAN;
    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, td_profile_validate(p, NULL, &err), &err);
    CU_ASSERT_STRING_EQUAL(err.msg, "device.launch_us: must be a non-negative number");
    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, td_profile_validate(p, "mine", &err), &err);
    CU_ASSERT_STRING_EQUAL(err.msg, "mine: device.launch_us: must be a non-negative number");
    /* an invalid profile is not saved, and nothing is written */
    const char *out = tmp_path("never.json");
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_profile_save(p, out, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "device.launch_us"));
    CU_ASSERT_EQUAL(access(out, F_OK), -1);
    p->dev_launch_s = 0;
    p->n_gemm = 0;
    TD_ASSERT_STATUS(TANDEM_ERR_FORMAT, td_profile_validate(p, NULL, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "device.gemm: must hold at least one"));
    td_profile_free(p);
}

/* ---- presets -------------------------------------------------------------------------- */

static void test_presets(void) {
    const char *const *names = td_profile_presets();
    static const char *const want[] = {"T4", "A10G", "H100-PCIe", "H100-SXM"};
    for (size_t w = 0; w < sizeof want / sizeof *want; w++) {
        bool found = false;
        for (int i = 0; names[i]; i++)
            found |= !strcmp(names[i], want[w]);
        CU_ASSERT_TRUE(found);
    }
    td_error err;
    for (int i = 0; names[i]; i++) {
        td_profile *p = NULL;
        TD_ASSERT_OK(td_profile_preset(names[i], &p, &err), &err);
        TD_ASSERT_OK(td_profile_validate(p, names[i], &err), &err);
        /* the device figures are its GPU model's (gpu/device_model.c):
         * every GEMM point is the roofline's time for its shape */
        const td_gpu_model *g = td_gpu_model_find(p->device);
        CU_ASSERT_PTR_NOT_NULL_FATAL(g);
        for (int j = 0; j < p->n_gemm; j++) {
            const double m = (double)p->gemm[j].m, n = (double)p->gemm[j].n, k = (double)p->gemm[j].k;
            double t = td_gpu_model_seconds(g, 2 * m * n * k, 2 * (m * k + n * k) + 4 * m * n);
            CU_ASSERT_DOUBLE_EQUAL(p->gemm[j].seconds, t, t * 1e-12);
        }
        CU_ASSERT_DOUBLE_EQUAL(p->dev_attn_gbps, g->mem_gbps * g->mem_eff, 1e-9);
        CU_ASSERT_DOUBLE_EQUAL(p->dev_launch_s, g->launch_us * 1e-6, 1e-15);
        CU_ASSERT_EQUAL(p->dev_mem_bytes, (double)g->mem_bytes);
        /* the CPU's: more threads never read slower, and no more than the
         * memory's sustained rate */
        for (int j = 0; j < p->n_cpu_attn; j++)
            for (int e = 0; e < j; e++)
                if (p->cpu_attn[e].ctx == p->cpu_attn[j].ctx)
                    CU_ASSERT_TRUE(p->cpu_attn[j].threads > p->cpu_attn[e].threads &&
                                   p->cpu_attn[j].gbps >= p->cpu_attn[e].gbps);
        td_profile_free(p);
    }
    /* by name, any case; unknown ones list what there is */
    td_profile *p = NULL;
    TD_ASSERT_OK(td_profile_preset("h100-pcie", &p, &err), &err);
    CU_ASSERT_STRING_EQUAL(p->device, "H100-PCIe");
    td_profile_free(p);
    TD_ASSERT_STATUS(TANDEM_ERR_NOT_FOUND, td_profile_preset("V100", &p, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "'V100'"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "T4"));
    CU_ASSERT_PTR_NULL(p);
    /* open: a file when there is one, else a preset */
    TD_ASSERT_OK(td_profile_open("T4", &p, &err), &err);
    CU_ASSERT_STRING_EQUAL(p->device, "T4");
    td_profile_free(p);
    const char *path = tmp_path("T4");
    write_text(path, base_json);
    TD_ASSERT_OK(td_profile_open(path, &p, &err), &err);
    CU_ASSERT_STRING_EQUAL(p->device, "GPU");
    td_profile_free(p);
    TD_ASSERT_STATUS(TANDEM_ERR_NOT_FOUND, td_profile_open("nothing-like-it", &p, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "no such file, and no preset"));
    TD_ASSERT_STATUS(TANDEM_ERR_IO, td_profile_open("/nonexistent/p.json", &p, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "/nonexistent/p.json: cannot open"));
}

/* ---- interpolation, against values computed by hand ------------------------------------ */

static td_profile *tiny_profile(void) {
    /* launch 2 us; shape (100, 10): m 1, 4, 8 -> 10, 16, 32 us; shape (200,
     * 20): m 2, 4 -> 20, 30 us. CPU: team 1 at ctx 256, 4096 -> 10, 20
     * GB/s; team 4 -> 30, 40; 8 threads. */
    static td_gemm_point g[] = {
        {1, 100, 10, 10e-6}, {4, 100, 10, 16e-6}, {8, 100, 10, 32e-6}, {2, 200, 20, 20e-6}, {4, 200, 20, 30e-6}};
    static td_cpu_attn_point a[] = {{1, 256, 10}, {1, 4096, 20}, {4, 256, 30}, {4, 4096, 40}};
    static td_profile p;
    p = (td_profile){.dev_launch_s = 2e-6, .gemm = g, .n_gemm = 5, .cpu_threads = 8, .cpu_attn = a, .n_cpu_attn = 4};
    return &p;
}

#define US(x) ((x)*1e-6)

static void test_gemm_interpolation(void) {
    const td_profile *p = tiny_profile();
    const double eps = 1e-15;
    CU_ASSERT_DOUBLE_EQUAL(td_profile_gemm_seconds(p, 1, 100, 10), US(10), eps);
    CU_ASSERT_DOUBLE_EQUAL(td_profile_gemm_seconds(p, 2, 100, 10), US(12), eps); /* 10 + 6 / 3 */
    CU_ASSERT_DOUBLE_EQUAL(td_profile_gemm_seconds(p, 4, 100, 10), US(16), eps);
    CU_ASSERT_DOUBLE_EQUAL(td_profile_gemm_seconds(p, 6, 100, 10), US(24), eps);  /* 16 + 16 / 2 */
    CU_ASSERT_DOUBLE_EQUAL(td_profile_gemm_seconds(p, 16, 100, 10), US(64), eps); /* 32 + 8 * 4 */
    CU_ASSERT_DOUBLE_EQUAL(td_profile_gemm_seconds(p, 1, 200, 20), US(20), eps);  /* below the smallest M */
    CU_ASSERT_DOUBLE_EQUAL(td_profile_gemm_seconds(p, 3, 200, 20), US(25), eps);
    CU_ASSERT_DOUBLE_EQUAL(td_profile_gemm_seconds(p, 12, 200, 20), US(70), eps); /* 30 + 8 * 5 */
    /* other shapes: the nearest in N * K (by ratio), its work scaled, the launch not */
    CU_ASSERT_DOUBLE_EQUAL(td_profile_gemm_seconds(p, 3, 400, 10), US(25), eps);            /* N K = 4000: (200, 20) */
    CU_ASSERT_DOUBLE_EQUAL(td_profile_gemm_seconds(p, 2, 50, 10), US(2 + 10 * 0.5), eps);   /* 500: (100, 10), x 0.5 */
    CU_ASSERT_DOUBLE_EQUAL(td_profile_gemm_seconds(p, 4, 300, 10), US(2 + 28 * 0.75), eps); /* 3000: (200, 20) */
    CU_ASSERT_EQUAL(td_profile_gemm_seconds(p, 0, 100, 10), 0);
    /* a last pair that does not rise: the work past the launch grows with M */
    td_gemm_point g[] = {{1, 8, 8, 10e-6}, {2, 8, 8, 9e-6}};
    td_profile q = {.dev_launch_s = 2e-6, .gemm = g, .n_gemm = 2};
    CU_ASSERT_DOUBLE_EQUAL(td_profile_gemm_seconds(&q, 4, 8, 8), US(9 + 7 * 1), eps);
}

static void test_cpu_attn_interpolation(void) {
    const td_profile *p = tiny_profile();
    const double eps = 1e-3; /* bytes per second */
    CU_ASSERT_DOUBLE_EQUAL(td_profile_cpu_attn_bps(p, 1, 256), 10e9, eps);
    CU_ASSERT_DOUBLE_EQUAL(td_profile_cpu_attn_bps(p, 1, 1024), 15e9, eps); /* halfway in log(ctx) */
    CU_ASSERT_DOUBLE_EQUAL(td_profile_cpu_attn_bps(p, 1, 100), 10e9, eps);  /* flat outside */
    CU_ASSERT_DOUBLE_EQUAL(td_profile_cpu_attn_bps(p, 1, 65536), 20e9, eps);
    CU_ASSERT_DOUBLE_EQUAL(td_profile_cpu_attn_bps(p, 4, 1024), 35e9, eps);
    CU_ASSERT_DOUBLE_EQUAL(td_profile_cpu_attn_bps(p, 2, 1024), 30e9, eps); /* team 1 x 2, under team 4's 35 */
    CU_ASSERT_DOUBLE_EQUAL(td_profile_cpu_attn_bps(p, 3, 1024), 35e9, eps); /* 45 capped at team 4's */
    CU_ASSERT_DOUBLE_EQUAL(td_profile_cpu_attn_bps(p, 8, 256), 30e9, eps);  /* past the largest team */
    CU_ASSERT_DOUBLE_EQUAL(td_profile_cpu_attn_bps(p, 0, 1024), 15e9, eps); /* at least one thread */
    td_cpu_attn_point a[] = {{2, 1024, 20}};
    td_profile q = {.cpu_threads = 2, .cpu_attn = a, .n_cpu_attn = 1};
    CU_ASSERT_DOUBLE_EQUAL(td_profile_cpu_attn_bps(&q, 1, 1024), 10e9, eps); /* below the smallest team: its share */
}

/* ---- tune on the emulated device ---------------------------------------------------------- */

static void test_tune_emu(void) {
    const td_gpu_model *g = td_gpu_model_find("A10G");
    const td_link_model *l = td_link_model_find("pcie4-x16");
    td_device_config dc;
    td_device_config_default(&dc);
    dc.kind = TD_DEVICE_KIND_EMU;
    dc.emu_mode = TD_EMU_TIMED;
    dc.gpu = g;
    dc.link = l;
    td_device *d = NULL;
    td_error err;
    TD_ASSERT_OK(td_device_open(&dc, &d, &err), &err);
    static const int64_t ms[] = {1, 64, 512};
    static const td_tune_shape shapes[] = {{4096, 2048}, {1024, 1024}};
    static const td_tune_shape model[] = {{1536, 576}, {1024, 1024}}; /* one new, one already there */
    static const int64_t ctxs[] = {2048, 256};
    const size_t cpu_bytes = (size_t)256 << 20;
    td_tune_options o;
    td_tune_options_default(&o);
    o.ms = ms, o.n_ms = 3;
    o.shapes = shapes, o.n_shapes = 2;
    o.model_shapes = model, o.n_model_shapes = 2;
    o.ctxs = ctxs, o.n_ctxs = 2;
    o.cpu_bytes = cpu_bytes;
    o.attn_q_heads = 9, o.attn_kv_heads = 3, o.attn_head_dim = 64; /* SmolLM2's */
    td_profile *p = NULL;
    double t0 = td_seconds();
    TD_ASSERT_OK(td_tune_run(d, &o, &p, &err), &err);
    double took = td_seconds() - t0;
    td_device_close(d);
    printf("\n  tune (small grid) took %.2f s\n", took);
    TD_ASSERT_OK(td_profile_validate(p, "tune", &err), &err);

    /* GEMMs: the emulated device takes exactly the model's time; the
     * events bracket it to within float rounding and a host hiccup */
    CU_ASSERT_EQUAL_FATAL(p->n_gemm, 9);
    double worst = 0;
    for (int i = 0; i < p->n_gemm; i++) {
        const double m = (double)p->gemm[i].m, n = (double)p->gemm[i].n, k = (double)p->gemm[i].k;
        double want = td_gpu_model_seconds(g, 2 * m * n * k, 2 * (m * k + n * k) + 4 * m * n);
        double e = fabs(p->gemm[i].seconds - want) / want;
        worst = e > worst ? e : worst;
        if (e > 0.02)
            fprintf(stderr, "\n  GEMM %g x %g x %g: %.3g s, model %.3g s\n", m, n, k, p->gemm[i].seconds, want);
        CU_ASSERT_TRUE(e <= 0.02);
    }
    printf("  GEMM: worst relative error against the model %.2e (tolerance 0.02)\n", worst);
    CU_ASSERT_EQUAL(p->gemm[0].n, 1024); /* sorted by n, k, m */
    CU_ASSERT_EQUAL(p->gemm[3].n, 1536);
    CU_ASSERT_EQUAL(p->gemm[6].n, 4096);
    CU_ASSERT_EQUAL(p->gemm[6].k, 2048);
    /* attention and row kernels: the memory roofline; launch: the model's */
    const double bw = g->mem_gbps * g->mem_eff;
    CU_ASSERT_DOUBLE_EQUAL(p->dev_attn_gbps, bw, bw * 0.02);
    CU_ASSERT_DOUBLE_EQUAL(p->dev_row_gbps, bw, bw * 0.02);
    CU_ASSERT_DOUBLE_EQUAL(p->dev_launch_s, g->launch_us * 1e-6, g->launch_us * 1e-6 * 0.02);
    CU_ASSERT_EQUAL(p->dev_mem_bytes, (double)g->mem_bytes);
    /* the link model */
    CU_ASSERT_DOUBLE_EQUAL(p->h2d_gbps, l->h2d_gbps, l->h2d_gbps * 0.02);
    CU_ASSERT_DOUBLE_EQUAL(p->d2h_gbps, l->d2h_gbps, l->d2h_gbps * 0.02);
    CU_ASSERT_DOUBLE_EQUAL(p->link_latency_s, l->latency_us * 1e-6, 0.3e-6);
    printf("  device: attn %.1f GB/s, row %.1f GB/s, launch %.3f us (model: %.1f, %.1f); link %.2f / %.2f GB/s, "
           "%.3f us (model %.0f / %.0f, %.0f)\n",
           p->dev_attn_gbps, p->dev_row_gbps, p->dev_launch_s * 1e6, bw, g->launch_us, p->h2d_gbps, p->d2h_gbps,
           p->link_latency_s * 1e6, l->h2d_gbps, l->d2h_gbps, l->latency_us);
    /* hand-off: something, and not absurd */
    CU_ASSERT_TRUE(p->handoff_s >= 0 && p->handoff_s < 20e-3);
    /* the CPU: every team size and context; positive and below what the
     * memory reads at, measured now over as many bytes */
    const int threads = omp_get_max_threads();
    int teams = 0;
    for (int t = 1; t <= threads; t = t * 2 > threads && t < threads ? threads : t * 2)
        teams++;
    CU_ASSERT_EQUAL(p->n_cpu_attn, 2 * teams);
    CU_ASSERT_EQUAL(p->cpu_threads, threads);
    void *buf = td_host_map(cpu_bytes, threads);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    for (int i = 0; i < p->n_cpu_attn; i++) {
        const td_cpu_attn_point *a = &p->cpu_attn[i];
        double read = td_probe_read_gbps(buf, cpu_bytes, a->threads, 5);
        printf("  CPU attention: %d threads, ctx %lld: %.1f GB/s, read bandwidth %.1f GB/s (%.2f)\n", a->threads,
               (long long)a->ctx, a->gbps, read, a->gbps / read);
        CU_ASSERT_TRUE(a->gbps > 0);
        CU_ASSERT_TRUE(a->gbps < read * 1.2);
        CU_ASSERT_EQUAL(a->ctx, i % 2 ? 2048 : 256);
    }
    td_host_unmap(buf, cpu_bytes);
    CU_ASSERT_TRUE(p->cpu_attn_call_s > 0 && p->cpu_attn_call_s < 1);
    CU_ASSERT_TRUE(p->host_mem_bytes > 0);
    printf("  CPU call %.1f us, hand-off %.1f us\n", p->cpu_attn_call_s * 1e6, p->handoff_s * 1e6);
    /* what it measured saves and loads */
    const char *path = tmp_path("tuned.json");
    td_profile *r = NULL;
    TD_ASSERT_OK(td_profile_save(p, path, &err), &err);
    TD_ASSERT_OK(td_profile_load(path, &r, &err), &err);
    CU_ASSERT_TRUE(profiles_equal(p, r));
    td_profile_free(r);
    td_profile_free(p);
}

static void test_tune_bad_options(void) {
    td_device_config dc;
    td_device_config_default(&dc);
    dc.kind = TD_DEVICE_KIND_EMU;
    dc.emu_mode = TD_EMU_TIMED;
    td_device *d = NULL;
    td_error err;
    TD_ASSERT_OK(td_device_open(&dc, &d, &err), &err);
    td_tune_options o;
    td_tune_options_default(&o);
    td_profile *p = NULL;
    o.attn_q_heads = 10, o.attn_kv_heads = 3;
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_tune_run(d, &o, &p, &err), &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "attention shape"));
    td_tune_options_default(&o);
    o.threads = -1;
    TD_ASSERT_STATUS(TANDEM_ERR_INVALID_ARGUMENT, td_tune_run(d, &o, &p, &err), &err);
    CU_ASSERT_PTR_NULL(p);
    td_device_close(d);
}

/* ---- the CLI and the public API ----------------------------------------------------------- */

/* Runs the tandem binary with args; its stdout and stderr into out. */
static int run_cli(const char *args, char *out, size_t cap) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", TD_TANDEM_BIN, args);
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = '\0';
    int st = pclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli(void) {
    static char out[16384];
    char args[512];
    const char *path = tmp_path("cli.json");
    snprintf(args, sizeof args, "tune --device emu --emu-gpu T4 --emu-link pcie3-x16 --threads 1 --out %s", path);
    double t0 = td_seconds();
    int rc = run_cli(args, out, sizeof out);
    printf("\n  tandem tune (full grid, 1 thread) took %.1f s\n", td_seconds() - t0);
    if (rc != 0)
        fprintf(stderr, "\n%s\n", out);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    static const char *const lines[] = {"device emu timed T4", "device GEMM", "device kernels", "link", "hand-off",
                                        "CPU attention",       "CPU call",    "wrote"};
    for (size_t i = 0; i < sizeof lines / sizeof *lines; i++)
        CU_ASSERT_PTR_NOT_NULL(strstr(out, lines[i]));
    td_profile *p = NULL;
    td_error err;
    TD_ASSERT_OK(td_profile_load(path, &p, &err), &err);
    CU_ASSERT_STRING_EQUAL(p->device, "T4 (emulated)");
    CU_ASSERT_STRING_EQUAL(p->link, "pcie3-x16 (emulated)");
    CU_ASSERT_DOUBLE_EQUAL(p->h2d_gbps, 12, 0.25);
    CU_ASSERT_EQUAL(p->cpu_threads, 1);
    int n_ms, n_sh;
    td_tune_default_ms(&n_ms);
    td_tune_default_shapes(&n_sh);
    CU_ASSERT_EQUAL(p->n_gemm, n_ms * n_sh);
    td_profile_free(p);

    static const struct {
        const char *args, *says;
        int rc;
    } bad[] = {
        {"tune --device tpu", "bad value 'tpu' for --device", 1},
        {"tune --threads 0", "bad value '0' for --threads", 1},
        {"tune --emu-gpu T4", "--emu-gpu and --emu-link need --device emu", 1},
        {"tune --device emu --emu-gpu V100", "emu_gpu 'V100' is no GPU preset", 1},
        {"tune --frobnicate", "unknown or incomplete option '--frobnicate'", 1},
        {"tune --out", "unknown or incomplete option '--out'", 1},
        {"tune extra", "unexpected argument 'extra'", 1},
        {"tune --device emu --model /nonexistent.gguf --out /dev/null", "/nonexistent.gguf", 2},
        {"tune --help", "usage: tandem tune", 0},
        {"--help", "tune ", 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        rc = run_cli(bad[i].args, out, sizeof out);
        bool ok = rc == bad[i].rc && strstr(out, bad[i].says);
        if (!ok)
            fprintf(stderr, "\n  tandem %s: exit %d, said: %s\n", bad[i].args, rc, out);
        CU_ASSERT_TRUE(ok);
    }
}

static void test_api_errors(void) {
    char err[256];
    tandem_tune_config c;
    tandem_tune_config_init(&c);
    CU_ASSERT_EQUAL(c.struct_size, sizeof c);
    CU_ASSERT_EQUAL(c.device, TANDEM_DEVICE_AUTO);
    CU_ASSERT_EQUAL(tandem_tune(&c, NULL, err, sizeof err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "no output file"));
    c.device = TANDEM_DEVICE_CPU;
    CU_ASSERT_EQUAL(tandem_tune(&c, "x.json", err, sizeof err), TANDEM_ERR_UNSUPPORTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "device cpu"));
    c.device = TANDEM_DEVICE_AUTO;
    c.emu_link = "pcie4-x16";
    CU_ASSERT_EQUAL(tandem_tune(&c, "x.json", err, sizeof err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "emu only"));
    c.device = TANDEM_DEVICE_EMU;
    c.emu_link = "pcie9";
    CU_ASSERT_EQUAL(tandem_tune(&c, "x.json", err, sizeof err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "'pcie9'"));
    c.struct_size = 8;
    CU_ASSERT_EQUAL(tandem_tune(&c, "x.json", NULL, 0), TANDEM_ERR_INVALID_ARGUMENT); /* no err buffer: fine */
    CU_ASSERT_EQUAL(tandem_tune(NULL, "x.json", err, sizeof err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(access("x.json", F_OK), -1);
}

void td_test_register(void) {
    static const td_test json[] = {
        {"load: every field", test_load_fields},
        {"load: unknown keys ignored, misspelt figures missing", test_unknown_keys},
        {"save and load round trip exactly", test_round_trip},
        {"validation errors name the file and the field", test_validation_errors},
        {"validate a struct", test_validate_struct},
        {"presets: load, validate, agree with the device models", test_presets},
        {NULL, NULL},
    };
    static const td_test interp[] = {
        {"GEMM seconds: hand-computed", test_gemm_interpolation},
        {"CPU attention bytes/s: hand-computed", test_cpu_attn_interpolation},
        {NULL, NULL},
    };
    static const td_test tune[] = {
        {"tune on the emulated device equals its models", test_tune_emu},
        {"tune: bad options", test_tune_bad_options},
        {"tandem_tune: argument errors", test_api_errors},
        {"tandem tune: the CLI", test_cli},
        {NULL, NULL},
    };
    td_add_suite_with("profile JSON", suite_init, suite_clean, json);
    td_add_suite("interpolation", interp);
    td_add_suite_with("tune", suite_init, suite_clean, tune);
}
