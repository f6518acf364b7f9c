/* The batch CLI's input and output records (tools/batch_io.h).
 *
 * Inputs are written to temporary files (mkstemp) and read back record by
 * record; outputs are parsed back with cJSON and compared field by field;
 * resuming is checked on files cut the way a kill cuts them. */
#include <cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/test_util.h"
#include "tools/batch_io.h"

/* ---- helpers */

#define ASSERT_BATCH_OK(call, errp)                                                                                    \
    do {                                                                                                               \
        tandem_status st_ = (call);                                                                                    \
        if (st_ != TANDEM_OK)                                                                                          \
            fprintf(stderr, "\n  %s:%d: %s returned %s (%s)\n", __FILE__, __LINE__, #call, tandem_status_name(st_),    \
                    (errp)->msg);                                                                                      \
        CU_ASSERT_EQUAL_FATAL(st_, TANDEM_OK);                                                                         \
    } while (0)

/* A temporary file's path (removed by rm_temp). */
static void make_temp(char *path, size_t size, const char *data, size_t n) {
    snprintf(path, size, "%s/tandem_batch_io_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(write(fd, data, n) == (ssize_t)n);
    close(fd);
}

/* A FILE over the n bytes at data, in a temporary file already unlinked. */
static FILE *input_n(const char *data, size_t n) {
    char path[256];
    make_temp(path, sizeof path, data, n);
    FILE *f = fopen(path, "r");
    unlink(path);
    CU_ASSERT_FATAL(f != NULL);
    return f;
}

static FILE *input(const char *data) { return input_n(data, strlen(data)); }

static char *read_file(const char *path, size_t *n) {
    char *s = td_test_read_file(path, n);
    CU_ASSERT_FATAL(s != NULL);
    return s;
}

static void append_file(const char *path, const char *data) {
    FILE *f = fopen(path, "ab");
    CU_ASSERT_FATAL(f != NULL);
    fwrite(data, 1, strlen(data), f);
    fclose(f);
}

/* Everything a reader returns, in order. */
enum { MAX_ITEMS = 64 };
typedef struct items {
    int n;
    batch_next kind[MAX_ITEMS];
    batch_record rec[MAX_ITEMS];
    batch_error err[MAX_ITEMS];
    int n_records, n_bad;
    batch_format format; /* detected */
} items;

static void read_all(FILE *f, batch_format format, items *it) {
    memset(it, 0, sizeof *it);
    batch_reader *r;
    batch_error err;
    ASSERT_BATCH_OK(batch_reader_open(f, format, &r, &err), &err);
    for (;;) {
        CU_ASSERT_FATAL(it->n < MAX_ITEMS);
        batch_next k = batch_reader_next(r, &it->rec[it->n], &it->err[it->n]);
        it->kind[it->n] = k;
        if (k == BATCH_NEXT_END || k == BATCH_NEXT_FAIL) {
            it->n++;
            break;
        }
        if (k == BATCH_NEXT_RECORD)
            it->n_records++;
        else
            it->n_bad++;
        it->n++;
    }
    if (it->kind[it->n - 1] == BATCH_NEXT_END)
        ASSERT_BATCH_OK(batch_reader_detect(r, &it->format, &err), &err);
    else /* a failure to tell the format stays */
        CU_ASSERT_EQUAL(batch_reader_detect(r, &it->format, &err), it->err[it->n - 1].status);
    batch_reader_close(r);
    fclose(f);
}

static void free_items(items *it) {
    for (int i = 0; i < it->n; i++)
        batch_record_free(&it->rec[i]);
}

/* The i-th record (skipping bad lines). */
static const batch_record *record(const items *it, int i) {
    for (int j = 0; j < it->n; j++)
        if (it->kind[j] == BATCH_NEXT_RECORD && i-- == 0)
            return &it->rec[j];
    CU_FAIL_FATAL("no such record");
    return NULL;
}

/* The i-th bad line's item index. */
static int bad(const items *it, int i) {
    for (int j = 0; j < it->n; j++)
        if (it->kind[j] == BATCH_NEXT_BAD_LINE && i-- == 0)
            return j;
    CU_FAIL_FATAL("no such bad line");
    return -1;
}

static bool contains(const char *hay, const char *needle) { return hay && strstr(hay, needle) != NULL; }

/* ---- formats */

static void test_format_names(void) {
    batch_error err;
    batch_format f;
    const char *names[] = {"auto", "jsonl", "openai", "text"};
    for (int i = 0; i < 4; i++) {
        ASSERT_BATCH_OK(batch_format_parse(names[i], &f, &err), &err);
        CU_ASSERT_EQUAL(f, (batch_format)i);
        CU_ASSERT_STRING_EQUAL(batch_format_name(f), names[i]);
    }
    CU_ASSERT_EQUAL(batch_format_parse("csv", &f, &err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT(contains(err.msg, "csv"));
    CU_ASSERT_EQUAL(batch_format_parse(NULL, &f, &err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(batch_shape_for(BATCH_FORMAT_OPENAI), BATCH_SHAPE_OPENAI);
    CU_ASSERT_EQUAL(batch_shape_for(BATCH_FORMAT_JSONL), BATCH_SHAPE_PLAIN);
    CU_ASSERT_EQUAL(batch_shape_for(BATCH_FORMAT_TEXT), BATCH_SHAPE_PLAIN);
}

/* ---- JSONL input */

static void test_jsonl_records(void) {
    const char *data = "\xEF\xBB\xBF{\"id\": \"a\", \"prompt\": \"Hello\"}\r\n"
                       "\r\n"
                       "   \t \n"
                       "{\"id\": 7, \"prompt\": \"caf\\u00e9 \xE2\x82\xAC \xF0\x9F\x98\x80\", \"max_tokens\": 16, "
                       "\"temperature\": 0.5, \"top_p\": 0.9, \"top_k\": 40, \"seed\": -3, \"stop\": \"\\n\\n\"}\n"
                       "{\"id\": 2.5, \"prompt\": \"\", \"stop\": [\"a\", \"b\\\"c\"], \"extra\": {\"x\": 1},"
                       " \"temperature\": null}\n"
                       "  {\"prompt\": \"p\\ttab\", \"id\": \"\xC3\xA9t\xC3\xA9\"}  \n"
                       "{\"id\": 9007199254740992, \"prompt\": \"big\", \"stop\": []}"; /* no final newline */
    items it;
    read_all(input(data), BATCH_FORMAT_AUTO, &it);
    CU_ASSERT_EQUAL(it.format, BATCH_FORMAT_JSONL);
    CU_ASSERT_EQUAL_FATAL(it.n_records, 5);
    CU_ASSERT_EQUAL(it.n_bad, 0);
    CU_ASSERT_EQUAL(it.kind[it.n - 1], BATCH_NEXT_END);

    const batch_record *r = record(&it, 0);
    CU_ASSERT_EQUAL(r->line, 1);
    CU_ASSERT_STRING_EQUAL(r->id_json, "\"a\"");
    CU_ASSERT_STRING_EQUAL(r->prompt, "Hello"); /* BOM and CR gone */
    CU_ASSERT(!r->has_max_tokens && !r->has_temperature && !r->has_top_p && !r->has_top_k && !r->has_seed);
    CU_ASSERT_PTR_NULL(r->stop);
    CU_ASSERT_EQUAL(r->n_stop, 0);
    CU_ASSERT_PTR_NULL(r->messages);
    CU_ASSERT_PTR_NULL(r->model);

    r = record(&it, 1);
    CU_ASSERT_EQUAL(r->line, 4);
    CU_ASSERT_STRING_EQUAL(r->id_json, "7");
    CU_ASSERT_STRING_EQUAL(r->prompt, "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
    CU_ASSERT(r->has_max_tokens && r->max_tokens == 16);
    CU_ASSERT(r->has_temperature && r->temperature == 0.5f);
    CU_ASSERT(r->has_top_p && r->top_p == 0.9f);
    CU_ASSERT(r->has_top_k && r->top_k == 40);
    CU_ASSERT(r->has_seed && r->seed == -3);
    CU_ASSERT_EQUAL_FATAL(r->n_stop, 1);
    CU_ASSERT_STRING_EQUAL(r->stop[0], "\n\n");

    r = record(&it, 2);
    CU_ASSERT_EQUAL(r->line, 5);
    CU_ASSERT_STRING_EQUAL(r->id_json, "2.5");
    CU_ASSERT_STRING_EQUAL(r->prompt, "");
    CU_ASSERT(!r->has_temperature); /* null is absent */
    CU_ASSERT_EQUAL_FATAL(r->n_stop, 2);
    CU_ASSERT_STRING_EQUAL(r->stop[0], "a");
    CU_ASSERT_STRING_EQUAL(r->stop[1], "b\"c");

    r = record(&it, 3);
    CU_ASSERT_EQUAL(r->line, 6);
    CU_ASSERT_STRING_EQUAL(r->id_json, "\"\xC3\xA9t\xC3\xA9\"");
    CU_ASSERT_STRING_EQUAL(r->prompt, "p\ttab");

    r = record(&it, 4);
    CU_ASSERT_EQUAL(r->line, 7);
    CU_ASSERT_STRING_EQUAL(r->id_json, "9007199254740992"); /* 2^53 is exact */
    CU_ASSERT_EQUAL(r->n_stop, 0);
    free_items(&it);
}

/* One bad line: its status, line number and a word of its message; and the
 * next good line is still read. */
static void check_bad_jsonl(const char *bad_line, const char *word, const char *id_json) {
    char data[1024];
    snprintf(data, sizeof data, "{\"id\": \"first\", \"prompt\": \"x\"}\n%s\n{\"id\": \"next\", \"prompt\": \"y\"}\n",
             bad_line);
    items it;
    read_all(input(data), BATCH_FORMAT_AUTO, &it);
    if (it.n_bad != 1 || it.n_records != 2)
        fprintf(stderr, "\n  line %s: %d bad, %d records\n", bad_line, it.n_bad, it.n_records);
    CU_ASSERT_EQUAL_FATAL(it.n_bad, 1);
    CU_ASSERT_EQUAL_FATAL(it.n_records, 2);
    int b = bad(&it, 0);
    CU_ASSERT_EQUAL(b, 1);
    CU_ASSERT_EQUAL(it.err[b].status, TANDEM_ERR_FORMAT);
    CU_ASSERT_EQUAL(it.err[b].line, 2);
    CU_ASSERT_EQUAL(it.rec[b].line, 2);
    CU_ASSERT(contains(it.err[b].msg, "line 2"));
    if (!contains(it.err[b].msg, word))
        fprintf(stderr, "\n  line %s: message \"%s\" lacks \"%s\"\n", bad_line, it.err[b].msg, word);
    CU_ASSERT(contains(it.err[b].msg, word));
    if (id_json) {
        CU_ASSERT_PTR_NOT_NULL_FATAL(it.rec[b].id_json);
        CU_ASSERT_STRING_EQUAL(it.rec[b].id_json, id_json);
    } else
        CU_ASSERT_PTR_NULL(it.rec[b].id_json);
    CU_ASSERT_PTR_NULL(it.rec[b].prompt);
    CU_ASSERT_STRING_EQUAL(record(&it, 0)->id_json, "\"first\"");
    CU_ASSERT_STRING_EQUAL(record(&it, 1)->id_json, "\"next\"");
    CU_ASSERT_EQUAL(record(&it, 1)->line, 3);
    free_items(&it);
}

static void test_jsonl_bad_lines(void) {
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": \"unterminated}", "not valid JSON", NULL);
    check_bad_jsonl("{\"id\": \"b\" \"prompt\": \"x\"}", "column", NULL);
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": \"x\"} {\"id\": 3}", "text after", NULL);
    check_bad_jsonl("[1, 2]", "not a JSON object", NULL);
    check_bad_jsonl("\"just a string\"", "not a JSON object", NULL);
    check_bad_jsonl("{\"id\": \"b\"}", "missing \"prompt\"", "\"b\"");
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": null}", "missing \"prompt\"", "\"b\"");
    check_bad_jsonl("{\"prompt\": \"x\"}", "missing \"id\"", NULL);
    check_bad_jsonl("{\"id\": true, \"prompt\": \"x\"}", "string or a number", NULL);
    check_bad_jsonl("{\"id\": [1], \"prompt\": \"x\"}", "string or a number", NULL);
    check_bad_jsonl("{\"id\": \"\", \"prompt\": \"x\"}", "empty", NULL);
    check_bad_jsonl("{\"id\": 9007199254740994, \"prompt\": \"x\"}", "2^53", NULL);
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": 5}", "must be a string", "\"b\"");
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": [\"x\"]}", "must be a string", "\"b\"");
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": \"x\", \"max_tokens\": 1.5}", "max_tokens", "\"b\"");
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": \"x\", \"max_tokens\": 0}", "max_tokens", "\"b\"");
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": \"x\", \"max_tokens\": \"8\"}", "max_tokens", "\"b\"");
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": \"x\", \"max_tokens\": 3000000000}", "max_tokens", "\"b\"");
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": \"x\", \"temperature\": \"hot\"}", "temperature", "\"b\"");
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": \"x\", \"temperature\": -0.1}", "temperature", "\"b\"");
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": \"x\", \"top_p\": 0}", "top_p", "\"b\"");
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": \"x\", \"top_p\": 1.01}", "top_p", "\"b\"");
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": \"x\", \"top_k\": -1}", "top_k", "\"b\"");
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": \"x\", \"seed\": 0.5}", "seed", "\"b\"");
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": \"x\", \"stop\": 3}", "stop", "\"b\"");
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": \"x\", \"stop\": [\"a\", 1]}", "stop[1]", "\"b\"");
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": \"\xC3\x28\"}", "UTF-8", "\"b\"");
    check_bad_jsonl("{\"id\": \"first\", \"prompt\": \"again\"}", "duplicate", NULL);
    check_bad_jsonl("{\"id\": \"b\", \"prompt\": \"x\", \"stop\": [\"a\", 1]}", "stop", "\"b\"");

    /* a NUL byte inside a line */
    const char nul[] =
        "{\"id\": 1, \"prompt\": \"a\"}\n{\"id\": 2, \"prompt\": \"b\0c\"}\n{\"id\": 3, \"prompt\": \"d\"}\n";
    items it;
    read_all(input_n(nul, sizeof nul - 1), BATCH_FORMAT_AUTO, &it);
    CU_ASSERT_EQUAL(it.n_records, 2);
    CU_ASSERT_EQUAL_FATAL(it.n_bad, 1);
    CU_ASSERT_EQUAL(it.err[bad(&it, 0)].line, 2);
    CU_ASSERT(contains(it.err[bad(&it, 0)].msg, "NUL"));
    free_items(&it);
}

static void test_jsonl_duplicates(void) {
    const char *data = "{\"id\": \"a\", \"prompt\": \"1\"}\n"
                       "{\"id\": 1, \"prompt\": \"2\"}\n"
                       "{\"id\": \"1\", \"prompt\": \"3\"}\n" /* string "1" is not number 1 */
                       "{\"id\": \"a\", \"prompt\": \"4\"}\n"
                       "{\"id\": 1.0, \"prompt\": \"5\"}\n" /* 1.0 is 1 */
                       "{\"id\": \"b\", \"prompt\": 6}\n"   /* bad, but its id is taken */
                       "{\"id\": \"b\", \"prompt\": \"7\"}\n";
    items it;
    read_all(input(data), BATCH_FORMAT_JSONL, &it);
    CU_ASSERT_EQUAL_FATAL(it.n_records, 3);
    CU_ASSERT_EQUAL_FATAL(it.n_bad, 4);
    CU_ASSERT_STRING_EQUAL(record(&it, 0)->prompt, "1");
    CU_ASSERT_STRING_EQUAL(record(&it, 1)->prompt, "2");
    CU_ASSERT_STRING_EQUAL(record(&it, 2)->prompt, "3");
    CU_ASSERT_STRING_EQUAL(record(&it, 2)->id_json, "\"1\"");
    int b = bad(&it, 0);
    CU_ASSERT_EQUAL(it.err[b].line, 4);
    CU_ASSERT(contains(it.err[b].msg, "duplicate") && contains(it.err[b].msg, "first on line 1"));
    CU_ASSERT_PTR_NULL(it.rec[b].id_json);
    b = bad(&it, 1);
    CU_ASSERT_EQUAL(it.err[b].line, 5);
    CU_ASSERT(contains(it.err[b].msg, "first on line 2"));
    b = bad(&it, 2);
    CU_ASSERT_EQUAL(it.err[b].line, 6);
    CU_ASSERT_STRING_EQUAL(it.rec[b].id_json, "\"b\"");
    b = bad(&it, 3);
    CU_ASSERT_EQUAL(it.err[b].line, 7);
    CU_ASSERT(contains(it.err[b].msg, "first on line 6"));
    free_items(&it);
}

/* ---- OpenAI Batch input */

static void test_openai_records(void) {
    const char *data =
        "{\"custom_id\": \"request-1\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\", \"body\": "
        "{\"model\": \"gpt-4o-mini\", \"messages\": [{\"role\": \"system\", \"content\": \"You are helpful.\"}, "
        "{\"role\": \"user\", \"content\": \"What is 2+2?\"}], \"max_tokens\": 50}}\n"
        "\n"
        "{\"custom_id\": \"request-2\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\", \"body\": "
        "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"Hello, \"}, "
        "{\"type\": \"text\", \"text\": \"w\\u00f6rld\"}]}], \"max_completion_tokens\": 7, \"temperature\": 0, "
        "\"top_p\": 1, \"seed\": 42, \"stop\": [\"END\"], \"top_k\": 5, \"n\": 1, \"stream\": false}}\r\n"
        "{\"custom_id\": 17, \"body\": {\"messages\": [{\"role\": \"user\", \"content\": []}], \"max_tokens\": 3, "
        "\"max_completion_tokens\": 3, \"stop\": \"x\"}}\n";
    items it;
    read_all(input(data), BATCH_FORMAT_AUTO, &it);
    CU_ASSERT_EQUAL(it.format, BATCH_FORMAT_OPENAI);
    CU_ASSERT_EQUAL_FATAL(it.n_records, 3);
    CU_ASSERT_EQUAL(it.n_bad, 0);

    const batch_record *r = record(&it, 0);
    CU_ASSERT_EQUAL(r->line, 1);
    CU_ASSERT_STRING_EQUAL(r->id_json, "\"request-1\"");
    CU_ASSERT_PTR_NULL(r->prompt);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r->model);
    CU_ASSERT_STRING_EQUAL(r->model, "gpt-4o-mini");
    CU_ASSERT_EQUAL_FATAL(r->n_messages, 2);
    CU_ASSERT_STRING_EQUAL(r->messages[0].role, "system");
    CU_ASSERT_STRING_EQUAL(r->messages[0].content, "You are helpful.");
    CU_ASSERT_STRING_EQUAL(r->messages[1].role, "user");
    CU_ASSERT_STRING_EQUAL(r->messages[1].content, "What is 2+2?");
    CU_ASSERT(r->has_max_tokens && r->max_tokens == 50);
    CU_ASSERT(!r->has_temperature && !r->has_seed && r->n_stop == 0);

    r = record(&it, 1);
    CU_ASSERT_EQUAL(r->line, 3);
    CU_ASSERT_STRING_EQUAL(r->id_json, "\"request-2\"");
    CU_ASSERT_PTR_NULL(r->model);
    CU_ASSERT_EQUAL_FATAL(r->n_messages, 1);
    CU_ASSERT_STRING_EQUAL(r->messages[0].content, "Hello, w\xC3\xB6rld");
    CU_ASSERT(r->has_max_tokens && r->max_tokens == 7);
    CU_ASSERT(r->has_temperature && r->temperature == 0.0f);
    CU_ASSERT(r->has_top_p && r->top_p == 1.0f);
    CU_ASSERT(r->has_seed && r->seed == 42);
    CU_ASSERT(r->has_top_k && r->top_k == 5);
    CU_ASSERT_EQUAL_FATAL(r->n_stop, 1);
    CU_ASSERT_STRING_EQUAL(r->stop[0], "END");

    r = record(&it, 2);
    CU_ASSERT_STRING_EQUAL(r->id_json, "17");
    CU_ASSERT_EQUAL_FATAL(r->n_messages, 1);
    CU_ASSERT_STRING_EQUAL(r->messages[0].content, "");
    CU_ASSERT(r->has_max_tokens && r->max_tokens == 3);
    CU_ASSERT_EQUAL_FATAL(r->n_stop, 1);
    CU_ASSERT_STRING_EQUAL(r->stop[0], "x");
    free_items(&it);
}

static void check_bad_openai(const char *body_or_line, bool whole_line, const char *word) {
    char line[1024], data[2048];
    if (whole_line)
        snprintf(line, sizeof line, "%s", body_or_line);
    else
        snprintf(line, sizeof line,
                 "{\"custom_id\": \"b\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\", \"body\": %s}",
                 body_or_line);
    snprintf(data, sizeof data,
             "{\"custom_id\": \"a\", \"body\": {\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}}\n%s\n"
             "{\"custom_id\": \"c\", \"body\": {\"messages\": [{\"role\": \"user\", \"content\": \"yo\"}]}}\n",
             line);
    items it;
    read_all(input(data), BATCH_FORMAT_AUTO, &it);
    CU_ASSERT_EQUAL(it.format, BATCH_FORMAT_OPENAI);
    CU_ASSERT_EQUAL_FATAL(it.n_bad, 1);
    CU_ASSERT_EQUAL_FATAL(it.n_records, 2);
    int b = bad(&it, 0);
    CU_ASSERT_EQUAL(it.err[b].line, 2);
    if (!contains(it.err[b].msg, word))
        fprintf(stderr, "\n  line %s: message \"%s\" lacks \"%s\"\n", line, it.err[b].msg, word);
    CU_ASSERT(contains(it.err[b].msg, word));
    CU_ASSERT_PTR_NULL(it.rec[b].messages);
    CU_ASSERT_STRING_EQUAL(record(&it, 1)->messages[0].content, "yo");
    free_items(&it);
}

static void test_openai_bad_lines(void) {
    check_bad_openai("{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", \"image_url\": "
                     "{\"url\": \"http://x/y.png\"}}]}]}",
                     false, "image_url");
    check_bad_openai("{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": 3}]}]}", false,
                     "content[0].text");
    check_bad_openai("{\"messages\": [{\"role\": \"user\", \"content\": [\"plain\"]}]}", false, "content[0]");
    check_bad_openai("{\"messages\": [{\"role\": \"user\", \"content\": null}]}", false, "content");
    check_bad_openai("{\"messages\": [{\"role\": \"user\", \"content\": 12}]}", false, "messages[0].content");
    check_bad_openai("{\"messages\": [{\"content\": \"x\"}]}", false, "role");
    check_bad_openai("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, 5]}", false, "messages[1]");
    check_bad_openai("{\"messages\": []}", false, "empty");
    check_bad_openai("{\"messages\": \"hi\"}", false, "messages must be an array");
    check_bad_openai("{\"model\": \"m\"}", false, "missing body.messages");
    check_bad_openai("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"n\": 2}", false, "n");
    check_bad_openai("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 5, "
                     "\"max_completion_tokens\": 6}",
                     false, "differ");
    check_bad_openai("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"temperature\": \"1\"}", false,
                     "body.temperature");
    check_bad_openai("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"model\": 4}", false, "body.model");
    check_bad_openai("\"body\"", false, "\"body\" must be an object");
    check_bad_openai("{\"custom_id\": \"b\", \"url\": \"/v1/embeddings\", \"body\": {\"input\": \"x\"}}", true,
                     "/v1/embeddings");
    check_bad_openai("{\"custom_id\": \"b\", \"method\": \"GET\", \"url\": \"/v1/chat/completions\", \"body\": {}}",
                     true, "POST");
    check_bad_openai("{\"custom_id\": \"b\"}", true, "missing \"body\"");
    check_bad_openai("{\"id\": \"b\", \"prompt\": \"x\"}", true, "missing \"custom_id\"");
}

/* ---- plain text input */

static void test_text_records(void) {
    const char *data = "\xEF\xBB\xBFWrite a haiku about \"rain\".\r\n"
                       "\n"
                       "  indented {json-ish} \\n stays as is  \n"
                       " \t\r\n"
                       "bad \xFF byte\n"
                       "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E\n"
                       "last line without newline";
    items it;
    read_all(input(data), BATCH_FORMAT_AUTO, &it);
    CU_ASSERT_EQUAL(it.format, BATCH_FORMAT_TEXT);
    CU_ASSERT_EQUAL_FATAL(it.n_records, 4);
    CU_ASSERT_EQUAL_FATAL(it.n_bad, 1);
    CU_ASSERT_STRING_EQUAL(record(&it, 0)->id_json, "\"1\"");
    CU_ASSERT_STRING_EQUAL(record(&it, 0)->prompt, "Write a haiku about \"rain\".");
    CU_ASSERT_STRING_EQUAL(record(&it, 1)->id_json, "\"3\"");
    CU_ASSERT_STRING_EQUAL(record(&it, 1)->prompt, "  indented {json-ish} \\n stays as is  ");
    CU_ASSERT_STRING_EQUAL(record(&it, 2)->id_json, "\"6\"");
    CU_ASSERT_STRING_EQUAL(record(&it, 2)->prompt, "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E");
    CU_ASSERT_STRING_EQUAL(record(&it, 3)->id_json, "\"7\"");
    CU_ASSERT_EQUAL(record(&it, 3)->line, 7);
    CU_ASSERT_STRING_EQUAL(record(&it, 3)->prompt, "last line without newline");
    CU_ASSERT_PTR_NULL(record(&it, 0)->messages);
    int b = bad(&it, 0);
    CU_ASSERT_EQUAL(it.err[b].line, 5);
    CU_ASSERT(contains(it.err[b].msg, "line 5") && contains(it.err[b].msg, "UTF-8"));
    CU_ASSERT_STRING_EQUAL(it.rec[b].id_json, "\"5\"");
    free_items(&it);

    /* the format given explicitly: JSON lines read as text */
    read_all(input("{\"id\": 1, \"prompt\": \"x\"}\n{broken\n"), BATCH_FORMAT_TEXT, &it);
    CU_ASSERT_EQUAL(it.format, BATCH_FORMAT_TEXT);
    CU_ASSERT_EQUAL_FATAL(it.n_records, 2);
    CU_ASSERT_STRING_EQUAL(record(&it, 0)->prompt, "{\"id\": 1, \"prompt\": \"x\"}");
    CU_ASSERT_STRING_EQUAL(record(&it, 1)->prompt, "{broken");
    free_items(&it);

    /* a long line (streamed through getline, not a fixed buffer) */
    size_t n = 300000;
    char *big = malloc(n + 2);
    for (size_t i = 0; i < n; i++)
        big[i] = (char)('a' + i % 26);
    big[n] = '\n';
    big[n + 1] = '\0';
    read_all(input(big), BATCH_FORMAT_AUTO, &it);
    CU_ASSERT_EQUAL_FATAL(it.n_records, 1);
    CU_ASSERT_EQUAL(strlen(record(&it, 0)->prompt), n);
    CU_ASSERT_EQUAL(memcmp(record(&it, 0)->prompt, big, n), 0);
    free_items(&it);
    free(big);
}

/* ---- detection */

static void test_detection(void) {
    items it;
    /* empty and blank inputs: no records, format unknown */
    read_all(input(""), BATCH_FORMAT_AUTO, &it);
    CU_ASSERT_EQUAL(it.n, 1);
    CU_ASSERT_EQUAL(it.kind[0], BATCH_NEXT_END);
    CU_ASSERT_EQUAL(it.format, BATCH_FORMAT_AUTO);
    read_all(input("\n  \r\n\t\n"), BATCH_FORMAT_AUTO, &it);
    CU_ASSERT_EQUAL(it.n, 1);
    CU_ASSERT_EQUAL(it.kind[0], BATCH_NEXT_END);

    /* a broken first JSON line: the format cannot be told */
    read_all(input("\n{\"id\": 1, \"prompt\": \n{\"id\": 2, \"prompt\": \"x\"}\n"), BATCH_FORMAT_AUTO, &it);
    CU_ASSERT_EQUAL_FATAL(it.n, 1);
    CU_ASSERT_EQUAL(it.kind[0], BATCH_NEXT_FAIL);
    CU_ASSERT_EQUAL(it.err[0].status, TANDEM_ERR_FORMAT);
    CU_ASSERT_EQUAL(it.err[0].line, 2);
    CU_ASSERT(contains(it.err[0].msg, "line 2") && contains(it.err[0].msg, "format"));

    /* a JSON array */
    read_all(input("[{\"id\": 1, \"prompt\": \"x\"}]\n"), BATCH_FORMAT_AUTO, &it);
    CU_ASSERT_EQUAL(it.kind[0], BATCH_NEXT_FAIL);
    CU_ASSERT(contains(it.err[0].msg, "array"));

    /* the given format wins over the first line; mismatching lines are bad */
    read_all(input("{\"custom_id\": \"a\", \"prompt\": \"x\"}\n{\"id\": \"b\", \"prompt\": \"y\"}\nplain\n"),
             BATCH_FORMAT_JSONL, &it);
    CU_ASSERT_EQUAL(it.format, BATCH_FORMAT_JSONL);
    CU_ASSERT_EQUAL(it.n_records, 1);
    CU_ASSERT_EQUAL_FATAL(it.n_bad, 2);
    CU_ASSERT(contains(it.err[bad(&it, 0)].msg, "missing \"id\""));
    CU_ASSERT_EQUAL(it.err[bad(&it, 1)].line, 3);
    CU_ASSERT(contains(it.err[bad(&it, 1)].msg, "not valid JSON"));
    free_items(&it);

    /* a text line in an auto-detected JSONL file is a bad line */
    read_all(input("{\"id\": \"a\", \"prompt\": \"x\"}\nhello\n{\"id\": \"c\", \"prompt\": \"z\"}\n"),
             BATCH_FORMAT_AUTO, &it);
    CU_ASSERT_EQUAL(it.n_records, 2);
    CU_ASSERT_EQUAL_FATAL(it.n_bad, 1);
    CU_ASSERT_EQUAL(it.err[bad(&it, 0)].line, 2);
    free_items(&it);

    /* detect before reading: the first line is still returned */
    FILE *f =
        input("\n\n{\"custom_id\": \"q\", \"body\": {\"messages\": [{\"role\": \"user\", \"content\": \"c\"}]}}\n");
    batch_reader *r;
    batch_error err;
    batch_format fmt;
    ASSERT_BATCH_OK(batch_reader_open(f, BATCH_FORMAT_AUTO, &r, &err), &err);
    ASSERT_BATCH_OK(batch_reader_detect(r, &fmt, &err), &err);
    CU_ASSERT_EQUAL(fmt, BATCH_FORMAT_OPENAI);
    ASSERT_BATCH_OK(batch_reader_detect(r, &fmt, &err), &err); /* idempotent */
    CU_ASSERT_EQUAL(fmt, BATCH_FORMAT_OPENAI);
    batch_record rec;
    CU_ASSERT_EQUAL_FATAL(batch_reader_next(r, &rec, &err), BATCH_NEXT_RECORD);
    CU_ASSERT_EQUAL(rec.line, 3);
    CU_ASSERT_STRING_EQUAL(rec.id_json, "\"q\"");
    CU_ASSERT_STRING_EQUAL(rec.messages[0].content, "c");
    batch_record_free(&rec);
    CU_ASSERT_EQUAL(batch_reader_next(r, &rec, &err), BATCH_NEXT_END);
    CU_ASSERT_EQUAL(batch_reader_next(r, &rec, &err), BATCH_NEXT_END);
    batch_reader_close(r);
    fclose(f);

    CU_ASSERT_EQUAL(batch_reader_open(NULL, BATCH_FORMAT_AUTO, &r, &err), TANDEM_ERR_INVALID_ARGUMENT);

    /* a pipe (what "-" gives): nothing seeks */
    f = popen("printf '\\n{\"id\": 1, \"prompt\": \"p\"}\\n{\"id\": 2, \"prompt\": \"q\"}\\n'", "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    ASSERT_BATCH_OK(batch_reader_open(f, BATCH_FORMAT_AUTO, &r, &err), &err);
    ASSERT_BATCH_OK(batch_reader_detect(r, &fmt, &err), &err);
    CU_ASSERT_EQUAL(fmt, BATCH_FORMAT_JSONL);
    for (int i = 0; i < 2; i++) {
        CU_ASSERT_EQUAL_FATAL(batch_reader_next(r, &rec, &err), BATCH_NEXT_RECORD);
        CU_ASSERT_EQUAL(rec.line, (uint64_t)i + 2);
        CU_ASSERT_STRING_EQUAL(rec.prompt, i ? "q" : "p");
        batch_record_free(&rec);
    }
    CU_ASSERT_EQUAL(batch_reader_next(r, &rec, &err), BATCH_NEXT_END);
    batch_reader_close(r);
    pclose(f);
}

/* ---- UTF-8 */

static void check_sanitize(const char *in, size_t n, const char *want) {
    size_t len = 0;
    char *out = batch_utf8_sanitize(in, n, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    if (strcmp(out, want) != 0 || len != strlen(want)) {
        fprintf(stderr, "\n  sanitize:");
        for (size_t i = 0; i < len; i++)
            fprintf(stderr, " %02x", (unsigned char)out[i]);
        fprintf(stderr, "\n");
    }
    CU_ASSERT_STRING_EQUAL(out, want);
    CU_ASSERT_EQUAL(len, strlen(want));
    CU_ASSERT(batch_utf8_valid(out, len));
    free(out);
}

#define FFFD "\xEF\xBF\xBD"

static void test_utf8(void) {
    check_sanitize("plain ascii", 11, "plain ascii");
    check_sanitize("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xF4\x8F\xBF\xBF", 19,
                   "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xF4\x8F\xBF\xBF");
    check_sanitize("a\xC3(", 3, "a" FFFD "(");                  /* truncated 2-byte */
    check_sanitize("\xE2\x82", 2, FFFD);                        /* truncated at the end: one */
    check_sanitize("\xE2\x82x", 3, FFFD "x");                   /* maximal subpart */
    check_sanitize("\xF0\x9F\x98x", 4, FFFD "x");               /* maximal subpart of 4 */
    check_sanitize("\xC0\x80", 2, FFFD FFFD);                   /* overlong */
    check_sanitize("\xE0\x80\x80", 3, FFFD FFFD FFFD);          /* overlong 3-byte */
    check_sanitize("\xED\xA0\x80", 3, FFFD FFFD FFFD);          /* a surrogate */
    check_sanitize("\xF4\x90\x80\x80", 4, FFFD FFFD FFFD FFFD); /* > U+10FFFF */
    check_sanitize("\xF5\xFF\xFE", 3, FFFD FFFD FFFD);          /* never-valid bytes */
    check_sanitize("\x80\xBF", 2, FFFD FFFD);                   /* lone continuations */
    check_sanitize("a\0b", 3, "a" FFFD "b");                    /* NUL */
    check_sanitize("", 0, "");
    CU_ASSERT(batch_utf8_valid("", 0));
    CU_ASSERT(batch_utf8_valid("\xEF\xBF\xBD", 3));
    CU_ASSERT(!batch_utf8_valid("\xEF\xBF", 2));
    CU_ASSERT(!batch_utf8_valid("\xED\xBF\xBF", 3));
    CU_ASSERT(batch_utf8_valid("\xEE\x80\x80", 3));
}

/* ---- output */

/* The lines of a file, each parsed. */
typedef struct lines {
    int n;
    cJSON *j[MAX_ITEMS];
    char *raw[MAX_ITEMS];
} lines;

static void parse_lines(const char *path, lines *ls) {
    memset(ls, 0, sizeof *ls);
    size_t n;
    char *s = read_file(path, &n);
    CU_ASSERT_FATAL(n == 0 || s[n - 1] == '\n');
    for (char *p = s; *p;) {
        char *nl = strchr(p, '\n');
        CU_ASSERT_FATAL(nl != NULL && ls->n < MAX_ITEMS);
        ls->raw[ls->n] = strndup(p, (size_t)(nl - p));
        ls->j[ls->n] = cJSON_Parse(ls->raw[ls->n]);
        CU_ASSERT_PTR_NOT_NULL_FATAL(ls->j[ls->n]);
        ls->n++;
        p = nl + 1;
    }
    free(s);
}

static void free_lines(lines *ls) {
    for (int i = 0; i < ls->n; i++) {
        cJSON_Delete(ls->j[i]);
        free(ls->raw[i]);
    }
}

static const cJSON *get(const cJSON *o, const char *key) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j)
        fprintf(stderr, "\n  missing member \"%s\"\n", key);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    return j;
}

static void check_str(const cJSON *o, const char *key, const char *want) {
    const cJSON *j = get(o, key);
    CU_ASSERT_FATAL(cJSON_IsString(j));
    if (strcmp(j->valuestring, want) != 0)
        fprintf(stderr, "\n  %s: \"%s\", expected \"%s\"\n", key, j->valuestring, want);
    CU_ASSERT_STRING_EQUAL(j->valuestring, want);
}

static void check_num(const cJSON *o, const char *key, double want) {
    const cJSON *j = get(o, key);
    CU_ASSERT_FATAL(cJSON_IsNumber(j));
    CU_ASSERT_EQUAL(j->valuedouble, want);
}

static int n_members(const cJSON *o) { return cJSON_GetArraySize(o); }

static bool starts_with(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

static void open_writer(const char *path, batch_shape shape, bool resume, batch_done *done, batch_resume_report *rep,
                        batch_writer **w) {
    batch_error err;
    batch_writer_opts o = {.shape = shape, .resume = resume, .fsync = true, .model = "smol"};
    ASSERT_BATCH_OK(batch_writer_open(path, &o, done, rep, w, &err), &err);
}

static void write_result(batch_writer *w, const char *id_json, const char *text, size_t n, int32_t pt, int32_t ct,
                         batch_finish finish) {
    batch_error err;
    batch_result r = {.id_json = id_json,
                      .completion = text,
                      .completion_len = n,
                      .prompt_tokens = pt,
                      .completion_tokens = ct,
                      .finish = finish};
    ASSERT_BATCH_OK(batch_write_result(w, &r, &err), &err);
}

static void close_writer(batch_writer *w) {
    batch_error err;
    ASSERT_BATCH_OK(batch_writer_close(w, &err), &err);
}

static const char tricky[] = "say \"hi\" \\ back\\slash\n\ttab \x01\x1f\x7f caf\xC3\xA9 \xF0\x9F\x98\x80 bad\xFF\xC3("
                             "\xE2\x82 nul\0end \xE2\x80\xA8";
static const char tricky_clean[] = "say \"hi\" \\ back\\slash\n\ttab \x01\x1f\x7f caf\xC3\xA9 \xF0\x9F\x98\x80 "
                                   "bad" FFFD FFFD "(" FFFD " nul" FFFD "end \xE2\x80\xA8";

static void test_write_plain(void) {
    char path[256];
    make_temp(path, sizeof path, "old content\n", 12); /* not resuming: replaced */
    batch_writer *w;
    open_writer(path, BATCH_SHAPE_PLAIN, false, NULL, NULL, &w);
    write_result(w, "\"a\"", "Hello", 5, 3, 1, BATCH_FINISH_STOP);
    write_result(w, "42", tricky, sizeof tricky - 1, 10, 20, BATCH_FINISH_LENGTH);
    write_result(w, "\"q\\\"uote\\n\"", "", 0, 0, 0, BATCH_FINISH_STOP);
    write_result(w, "-1.5", NULL, 0, 1, 0, BATCH_FINISH_STOP);
    batch_error err;
    ASSERT_BATCH_OK(batch_write_error(w, "\"e\"", NULL, "prompt too long: 9000 > 8192 \"tokens\"", &err), &err);
    ASSERT_BATCH_OK(batch_write_error(w, "7", "context_length_exceeded", "bad \xFF", &err), &err);
    /* ids that are not a JSON string or number */
    batch_result r = {.id_json = "{\"x\": 1}", .completion = "x", .completion_len = 1};
    CU_ASSERT_EQUAL(batch_write_result(w, &r, &err), TANDEM_ERR_INVALID_ARGUMENT);
    r.id_json = "not json";
    CU_ASSERT_EQUAL(batch_write_result(w, &r, &err), TANDEM_ERR_INVALID_ARGUMENT);
    r.id_json = NULL;
    CU_ASSERT_EQUAL(batch_write_result(w, &r, &err), TANDEM_ERR_INVALID_ARGUMENT);
    r.id_json = "1";
    r.completion_tokens = -1;
    CU_ASSERT_EQUAL(batch_write_result(w, &r, &err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(batch_write_error(w, "true", NULL, "m", &err), TANDEM_ERR_INVALID_ARGUMENT);
    close_writer(w);

    lines ls;
    parse_lines(path, &ls);
    CU_ASSERT_EQUAL_FATAL(ls.n, 6);
    const cJSON *o = ls.j[0];
    CU_ASSERT_EQUAL(n_members(o), 5);
    check_str(o, "id", "a");
    check_str(o, "completion", "Hello");
    check_num(o, "prompt_tokens", 3);
    check_num(o, "completion_tokens", 1);
    check_str(o, "finish_reason", "stop");
    CU_ASSERT_PTR_NULL(cJSON_GetObjectItemCaseSensitive(o, "error"));
    CU_ASSERT(starts_with(ls.raw[0], "{\"id\":\"a\",\"completion\":"));

    o = ls.j[1];
    CU_ASSERT(cJSON_IsNumber(get(o, "id"))); /* a number stays a number */
    check_num(o, "id", 42);
    CU_ASSERT(starts_with(ls.raw[1], "{\"id\":42,"));
    check_str(o, "completion", tricky_clean);
    check_num(o, "prompt_tokens", 10);
    check_num(o, "completion_tokens", 20);
    check_str(o, "finish_reason", "length");
    /* control characters escaped, nothing raw below 0x20 in the line */
    CU_ASSERT(contains(ls.raw[1], "\\\"hi\\\" \\\\ back\\\\slash\\n\\ttab \\u0001\\u001f"));
    for (const char *p = ls.raw[1]; *p; p++)
        CU_ASSERT((unsigned char)*p >= 0x20);
    CU_ASSERT(batch_utf8_valid(ls.raw[1], strlen(ls.raw[1])));

    o = ls.j[2];
    check_str(o, "id", "q\"uote\n");
    check_str(o, "completion", "");
    o = ls.j[3];
    check_num(o, "id", -1.5);
    check_str(o, "completion", "");

    o = ls.j[4];
    CU_ASSERT_EQUAL(n_members(o), 2);
    check_str(o, "id", "e");
    const cJSON *e = get(o, "error");
    CU_ASSERT_EQUAL(n_members(e), 1);
    check_str(e, "message", "prompt too long: 9000 > 8192 \"tokens\"");
    CU_ASSERT_PTR_NULL(cJSON_GetObjectItemCaseSensitive(o, "completion"));
    o = ls.j[5];
    check_num(o, "id", 7);
    e = get(o, "error");
    check_str(e, "message", "bad " FFFD);
    check_str(e, "code", "context_length_exceeded");
    free_lines(&ls);
    unlink(path);
}

static void test_write_openai(void) {
    char path[256];
    make_temp(path, sizeof path, "", 0);
    batch_writer *w;
    open_writer(path, BATCH_SHAPE_OPENAI, false, NULL, NULL, &w);
    write_result(w, "\"request-1\"", "2 + 2 equals 4.", 15, 24, 8, BATCH_FINISH_STOP);
    batch_error err;
    batch_result r = {.id_json = "5",
                      .completion = tricky,
                      .completion_len = sizeof tricky - 1,
                      .prompt_tokens = 7,
                      .completion_tokens = 100,
                      .finish = BATCH_FINISH_LENGTH,
                      .model = "gpt-4o-mini"};
    ASSERT_BATCH_OK(batch_write_result(w, &r, &err), &err);
    ASSERT_BATCH_OK(batch_write_error(w, "\"request-3\"", "invalid_request", "messages[0]: image parts", &err), &err);
    ASSERT_BATCH_OK(batch_write_error(w, "\"request-4\"", NULL, "x", &err), &err);
    close_writer(w);

    lines ls;
    parse_lines(path, &ls);
    CU_ASSERT_EQUAL_FATAL(ls.n, 4);
    for (int i = 0; i < 2; i++) {
        const cJSON *o = ls.j[i];
        CU_ASSERT_EQUAL(n_members(o), 4);
        CU_ASSERT(starts_with(get(o, "id")->valuestring, "batch_req_"));
        CU_ASSERT(strlen(get(o, "id")->valuestring) > strlen("batch_req_") + 8);
        CU_ASSERT(cJSON_IsNull(get(o, "error")));
        const cJSON *resp = get(o, "response");
        CU_ASSERT_FATAL(cJSON_IsObject(resp));
        CU_ASSERT_EQUAL(n_members(resp), 3);
        check_num(resp, "status_code", 200);
        CU_ASSERT(starts_with(get(resp, "request_id")->valuestring, "req_"));
        const cJSON *body = get(resp, "body");
        check_str(body, "object", "chat.completion");
        CU_ASSERT(starts_with(get(body, "id")->valuestring, "chatcmpl-"));
        CU_ASSERT(cJSON_IsNumber(get(body, "created")) && get(body, "created")->valuedouble > 1.7e9);
        check_str(body, "model", i == 0 ? "smol" : "gpt-4o-mini");
        const cJSON *choices = get(body, "choices");
        CU_ASSERT_FATAL(cJSON_IsArray(choices) && cJSON_GetArraySize(choices) == 1);
        const cJSON *c = cJSON_GetArrayItem(choices, 0);
        check_num(c, "index", 0);
        CU_ASSERT(cJSON_IsNull(get(c, "logprobs")));
        check_str(c, "finish_reason", i == 0 ? "stop" : "length");
        const cJSON *msg = get(c, "message");
        check_str(msg, "role", "assistant");
        check_str(msg, "content", i == 0 ? "2 + 2 equals 4." : tricky_clean);
        const cJSON *usage = get(body, "usage");
        check_num(usage, "prompt_tokens", i == 0 ? 24 : 7);
        check_num(usage, "completion_tokens", i == 0 ? 8 : 100);
        check_num(usage, "total_tokens", i == 0 ? 32 : 107);
    }
    check_str(ls.j[0], "custom_id", "request-1");
    CU_ASSERT(cJSON_IsNumber(get(ls.j[1], "custom_id")) && get(ls.j[1], "custom_id")->valuedouble == 5);
    CU_ASSERT(starts_with(ls.raw[0], "{\"id\":\"batch_req_"));
    CU_ASSERT(contains(ls.raw[0], ",\"custom_id\":\"request-1\",\"response\":{\"status_code\":200,\"request_id\":"));
    for (int i = 2; i < 4; i++) {
        const cJSON *o = ls.j[i];
        CU_ASSERT_EQUAL(n_members(o), 4);
        CU_ASSERT(starts_with(get(o, "id")->valuestring, "batch_req_"));
        CU_ASSERT(cJSON_IsNull(get(o, "response")));
        const cJSON *e = get(o, "error");
        CU_ASSERT_EQUAL(n_members(e), 2);
        check_str(e, "code", i == 2 ? "invalid_request" : "error");
        check_str(e, "message", i == 2 ? "messages[0]: image parts" : "x");
    }
    check_str(ls.j[2], "custom_id", "request-3");
    /* generated ids are unique */
    for (int i = 0; i < 4; i++)
        for (int j = i + 1; j < 4; j++)
            CU_ASSERT(strcmp(get(ls.j[i], "id")->valuestring, get(ls.j[j], "id")->valuestring) != 0);
    CU_ASSERT(strcmp(get(get(ls.j[0], "response"), "request_id")->valuestring,
                     get(get(ls.j[1], "response"), "request_id")->valuestring) != 0);
    free_lines(&ls);
    unlink(path);
}

static void test_write_failures(void) {
    batch_writer *w;
    batch_error err;
    batch_writer_opts o = {.shape = BATCH_SHAPE_PLAIN};
    CU_ASSERT_EQUAL(batch_writer_open("/nonexistent-dir/out.jsonl", &o, NULL, NULL, &w, &err), TANDEM_ERR_IO);
    CU_ASSERT(contains(err.msg, "/nonexistent-dir/out.jsonl"));
    CU_ASSERT_PTR_NULL(w);
    o.resume = true;
    CU_ASSERT_EQUAL(batch_writer_open("-", &o, NULL, NULL, &w, &err), TANDEM_ERR_INVALID_ARGUMENT);
    batch_done *done = batch_done_new();
    CU_ASSERT_EQUAL(batch_writer_open("-", &o, done, NULL, &w, &err), TANDEM_ERR_INVALID_ARGUMENT);
    CU_ASSERT(contains(err.msg, "stdout"));
    batch_done_free(done);

    /* a full disk: the write fails, and every later one too */
    if (access("/dev/full", W_OK) == 0) {
        o.resume = false;
        ASSERT_BATCH_OK(batch_writer_open("/dev/full", &o, NULL, NULL, &w, &err), &err);
        batch_result r = {.id_json = "1", .completion = "x", .completion_len = 1};
        CU_ASSERT_EQUAL(batch_write_result(w, &r, &err), TANDEM_ERR_IO);
        CU_ASSERT_EQUAL(batch_write_error(w, "2", NULL, "m", &err), TANDEM_ERR_IO);
        CU_ASSERT(contains(err.msg, "earlier"));
        batch_writer_close(w, &err);
    }
}

/* ---- the done set */

static void test_done_set(void) {
    batch_done *d = batch_done_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    CU_ASSERT_EQUAL(batch_done_count(d), 0);
    CU_ASSERT(!batch_done_contains(d, "1"));
    char id[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof id, i % 2 ? "%d" : "\"%d\"", i);
        CU_ASSERT_FATAL(batch_done_add(d, id));
    }
    CU_ASSERT(batch_done_add(d, "\"0\"")); /* again: no second copy */
    CU_ASSERT_EQUAL(batch_done_count(d), 5000);
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof id, i % 2 ? "%d" : "\"%d\"", i);
        CU_ASSERT(batch_done_contains(d, id));
        snprintf(id, sizeof id, i % 2 ? "\"%d\"" : "%d", i); /* the other type */
        CU_ASSERT(!batch_done_contains(d, id));
    }
    CU_ASSERT(!batch_done_contains(d, "5001"));
    CU_ASSERT(!batch_done_contains(d, NULL));
    batch_done_free(d);
}

/* ---- resume */

static void write_three(const char *path, batch_shape shape) {
    batch_writer *w;
    open_writer(path, shape, false, NULL, NULL, &w);
    write_result(w, "\"a\"", "one", 3, 1, 1, BATCH_FINISH_STOP);
    write_result(w, "2", "two", 3, 1, 1, BATCH_FINISH_STOP);
    batch_error err;
    ASSERT_BATCH_OK(batch_write_error(w, "\"c\"", NULL, "failed", &err), &err);
    close_writer(w);
}

static void test_resume_truncated(void) {
    char path[256];
    make_temp(path, sizeof path, "", 0);
    write_three(path, BATCH_SHAPE_PLAIN);
    size_t clean_n;
    char *clean = read_file(path, &clean_n);
    const char *half = "{\"id\":\"d\",\"completion\":\"half a li";
    append_file(path, half);

    batch_done *done = batch_done_new();
    batch_resume_report rep;
    batch_writer *w;
    open_writer(path, BATCH_SHAPE_PLAIN, true, done, &rep, &w);
    CU_ASSERT_EQUAL(rep.records, 3);
    CU_ASSERT_EQUAL(rep.error_records, 1);
    CU_ASSERT(rep.truncated);
    CU_ASSERT_EQUAL(rep.truncated_line, 4);
    CU_ASSERT_EQUAL(rep.truncated_lines, 1);
    CU_ASSERT_EQUAL(rep.truncated_bytes, strlen(half));
    CU_ASSERT_EQUAL(rep.bad_lines, 0);
    CU_ASSERT_EQUAL(batch_done_count(done), 3);
    CU_ASSERT(batch_done_contains(done, "\"a\""));
    CU_ASSERT(batch_done_contains(done, "2"));
    CU_ASSERT(!batch_done_contains(done, "\"2\""));
    CU_ASSERT(batch_done_contains(done, "\"c\""));
    CU_ASSERT(!batch_done_contains(done, "\"d\""));
    /* the half line is gone before anything is appended */
    size_t n;
    char *now = read_file(path, &n);
    CU_ASSERT_EQUAL(n, clean_n);
    CU_ASSERT_STRING_EQUAL(now, clean);
    free(now);
    write_result(w, "\"d\"", "four", 4, 2, 2, BATCH_FINISH_LENGTH);
    close_writer(w);

    lines ls;
    parse_lines(path, &ls);
    CU_ASSERT_EQUAL_FATAL(ls.n, 4);
    check_str(ls.j[0], "id", "a");
    check_num(ls.j[1], "id", 2);
    check_str(ls.j[2], "id", "c");
    check_str(ls.j[3], "id", "d");
    check_str(ls.j[3], "completion", "four");
    free_lines(&ls);
    batch_done_free(done);

    /* a complete last line with a newline but no valid JSON, then two bad tails */
    const char *tails[] = {"{\"id\":\"d\",\"comp\n", "{\"id\":\"d\"}", "garbage\n{\"id\":\"e\"", "{\"no_id\":1}\n"};
    for (int t = 0; t < 4; t++) {
        FILE *f = fopen(path, "wb");
        fwrite(clean, 1, clean_n, f);
        fclose(f);
        append_file(path, tails[t]);
        done = batch_done_new();
        open_writer(path, BATCH_SHAPE_PLAIN, true, done, &rep, &w);
        close_writer(w);
        CU_ASSERT_EQUAL(rep.records, 3);
        CU_ASSERT(rep.truncated);
        CU_ASSERT_EQUAL(rep.truncated_line, 4);
        CU_ASSERT_EQUAL(rep.truncated_lines, t == 2 ? 2 : 1);
        CU_ASSERT_EQUAL(rep.truncated_bytes, strlen(tails[t]));
        CU_ASSERT_EQUAL(batch_done_count(done), 3);
        CU_ASSERT(!batch_done_contains(done, "\"d\""));
        now = read_file(path, &n);
        CU_ASSERT_STRING_EQUAL(now, clean);
        free(now);
        batch_done_free(done);
    }
    free(clean);
    unlink(path);
}

static void test_resume_clean(void) {
    char path[256];
    make_temp(path, sizeof path, "", 0);
    write_three(path, BATCH_SHAPE_PLAIN);
    size_t clean_n;
    char *clean = read_file(path, &clean_n);

    batch_done *done = batch_done_new();
    batch_resume_report rep;
    batch_writer *w;
    open_writer(path, BATCH_SHAPE_PLAIN, true, done, &rep, &w);
    CU_ASSERT_EQUAL(rep.records, 3);
    CU_ASSERT(!rep.truncated);
    CU_ASSERT_EQUAL(rep.truncated_bytes, 0);
    CU_ASSERT_EQUAL(rep.bad_lines, 0);
    CU_ASSERT_EQUAL(batch_done_count(done), 3);
    write_result(w, "\"z\"", "new", 3, 1, 1, BATCH_FINISH_STOP);
    close_writer(w);
    size_t n;
    char *now = read_file(path, &n);
    CU_ASSERT_FATAL(n > clean_n);
    CU_ASSERT_EQUAL(memcmp(now, clean, clean_n), 0); /* kept, then appended */
    CU_ASSERT(starts_with(now + clean_n, "{\"id\":\"z\""));
    free(now);
    batch_done_free(done);

    /* a bad line in the middle is left in place and counted */
    FILE *f = fopen(path, "wb");
    fputs("{\"id\":1,\"completion\":\"x\"}\nnot json\n{\"id\":2,\"completion\":\"y\"}\n", f);
    fclose(f);
    done = batch_done_new();
    open_writer(path, BATCH_SHAPE_PLAIN, true, done, &rep, &w);
    close_writer(w);
    CU_ASSERT_EQUAL(rep.records, 2);
    CU_ASSERT_EQUAL(rep.bad_lines, 1);
    CU_ASSERT_EQUAL(rep.first_bad_line, 2);
    CU_ASSERT(!rep.truncated);
    CU_ASSERT(batch_done_contains(done, "1") && batch_done_contains(done, "2"));
    now = read_file(path, &n);
    CU_ASSERT_STRING_EQUAL(now, "{\"id\":1,\"completion\":\"x\"}\nnot json\n{\"id\":2,\"completion\":\"y\"}\n");
    free(now);
    batch_done_free(done);

    /* not an output file: refused, left as it is */
    f = fopen(path, "wb");
    fputs("my notes\nabout things\n", f);
    fclose(f);
    done = batch_done_new();
    batch_error err;
    batch_writer_opts o = {.shape = BATCH_SHAPE_PLAIN, .resume = true};
    CU_ASSERT_EQUAL(batch_writer_open(path, &o, done, &rep, &w, &err), TANDEM_ERR_FORMAT);
    CU_ASSERT(contains(err.msg, path));
    now = read_file(path, &n);
    CU_ASSERT_STRING_EQUAL(now, "my notes\nabout things\n");
    free(now);
    batch_done_free(done);

    /* a missing file is created */
    unlink(path);
    done = batch_done_new();
    open_writer(path, BATCH_SHAPE_PLAIN, true, done, &rep, &w);
    CU_ASSERT_EQUAL(rep.records, 0);
    CU_ASSERT(!rep.truncated);
    write_result(w, "\"first\"", "x", 1, 1, 1, BATCH_FINISH_STOP);
    close_writer(w);
    lines ls;
    parse_lines(path, &ls);
    CU_ASSERT_EQUAL(ls.n, 1);
    free_lines(&ls);
    batch_done_free(done);

    /* a single half line (killed during the first write) is cut to nothing */
    f = fopen(path, "wb");
    fputs("{\"id\":\"a\",\"compl", f);
    fclose(f);
    done = batch_done_new();
    open_writer(path, BATCH_SHAPE_PLAIN, true, done, &rep, &w);
    close_writer(w);
    CU_ASSERT(rep.truncated);
    CU_ASSERT_EQUAL(rep.records, 0);
    now = read_file(path, &n);
    CU_ASSERT_EQUAL(n, 0);
    free(now);
    batch_done_free(done);
    free(clean);
    unlink(path);
}

static void test_resume_openai(void) {
    char path[256];
    make_temp(path, sizeof path, "", 0);
    write_three(path, BATCH_SHAPE_OPENAI);
    append_file(path, "{\"id\":\"batch_req_x\",\"custom_id\":\"d\",\"resp");
    batch_done *done = batch_done_new();
    batch_resume_report rep;
    batch_writer *w;
    open_writer(path, BATCH_SHAPE_OPENAI, true, done, &rep, &w);
    CU_ASSERT_EQUAL(rep.records, 3);
    CU_ASSERT_EQUAL(rep.error_records, 1);
    CU_ASSERT(rep.truncated);
    /* custom_id, not the generated id */
    CU_ASSERT(batch_done_contains(done, "\"a\""));
    CU_ASSERT(batch_done_contains(done, "2"));
    CU_ASSERT(batch_done_contains(done, "\"c\""));
    CU_ASSERT_EQUAL(batch_done_count(done), 3);
    write_result(w, "\"d\"", "dd", 2, 1, 1, BATCH_FINISH_STOP);
    close_writer(w);
    lines ls;
    parse_lines(path, &ls);
    CU_ASSERT_EQUAL_FATAL(ls.n, 4);
    check_str(ls.j[3], "custom_id", "d");
    free_lines(&ls);
    batch_done_free(done);
    unlink(path);
}

/* Number ids keep their exact value through reading, writing and resuming
 * (cJSON alone prints 2^53 - 1 as 9.00719925474099e+15). */
static void test_number_ids(void) {
    const char *in = "{\"id\": 9007199254740991, \"prompt\": \"a\"}\n"
                     "{\"id\": 0.30000000000000004, \"prompt\": \"b\"}\n"
                     "{\"id\": 1.0, \"prompt\": \"c\"}\n"
                     "{\"id\": -0, \"prompt\": \"d\"}\n"
                     "{\"id\": 1e-7, \"prompt\": \"e\"}\n"
                     "{\"id\": -4503599627370497, \"prompt\": \"f\"}\n"
                     "{\"id\": 1.5e300, \"prompt\": \"g\"}\n"; /* an integer beyond 2^53: bad */
    const char *want[] = {"9007199254740991", "0.30000000000000004", "1", "0", "1e-07", "-4503599627370497"};
    items it;
    read_all(input(in), BATCH_FORMAT_AUTO, &it);
    CU_ASSERT_EQUAL_FATAL(it.n_records, 6);
    CU_ASSERT_EQUAL(it.n_bad, 1);
    char path[256];
    make_temp(path, sizeof path, "", 0);
    batch_writer *w;
    open_writer(path, BATCH_SHAPE_PLAIN, false, NULL, NULL, &w);
    for (int i = 0; i < 6; i++) {
        const batch_record *r = record(&it, i);
        double v = strtod(want[i], NULL);
        CU_ASSERT_EQUAL(strtod(r->id_json, NULL), v); /* the same value */
        CU_ASSERT_STRING_EQUAL(r->id_json, want[i]);
        write_result(w, r->id_json, "x", 1, 1, 1, BATCH_FINISH_STOP);
    }
    close_writer(w);
    lines ls;
    parse_lines(path, &ls);
    CU_ASSERT_EQUAL_FATAL(ls.n, 6);
    for (int i = 0; i < 6; i++) {
        char prefix[64];
        snprintf(prefix, sizeof prefix, "{\"id\":%s,", record(&it, i)->id_json);
        if (!starts_with(ls.raw[i], prefix))
            fprintf(stderr, "\n  %s does not start with %s\n", ls.raw[i], prefix);
        CU_ASSERT(starts_with(ls.raw[i], prefix));
        CU_ASSERT_EQUAL(get(ls.j[i], "id")->valuedouble, strtod(want[i], NULL));
    }
    free_lines(&ls);
    batch_done *done = batch_done_new();
    batch_resume_report rep;
    open_writer(path, BATCH_SHAPE_PLAIN, true, done, &rep, &w);
    close_writer(w);
    CU_ASSERT_EQUAL(rep.records, 6);
    for (int i = 0; i < 6; i++)
        CU_ASSERT(batch_done_contains(done, record(&it, i)->id_json));
    CU_ASSERT(!batch_done_contains(done, "9007199254740990"));
    CU_ASSERT(!batch_done_contains(done, "0.3"));
    batch_done_free(done);
    free_items(&it);
    unlink(path);
}

/* The whole round trip: records read, some done already, results written and
 * read back by a resume. */
static void test_round_trip(void) {
    char path[256];
    make_temp(path, sizeof path, "", 0);
    const char *in = "{\"id\": 1, \"prompt\": \"a\"}\n{\"id\": \"two\", \"prompt\": \"b\"}\n{\"id\": 3.25, \"prompt\": "
                     "\"c\"}\n";
    for (int pass = 0; pass < 2; pass++) {
        batch_done *done = batch_done_new();
        batch_resume_report rep;
        batch_writer *w;
        open_writer(path, BATCH_SHAPE_PLAIN, true, done, &rep, &w);
        CU_ASSERT_EQUAL(rep.records, pass == 0 ? 0 : 2);
        items it;
        read_all(input(in), BATCH_FORMAT_AUTO, &it);
        int written = 0;
        for (int i = 0; i < it.n_records; i++) {
            const batch_record *r = record(&it, i);
            if (batch_done_contains(done, r->id_json))
                continue;
            if (pass == 0 && i == 1)
                continue; /* "killed" before this one finished */
            write_result(w, r->id_json, r->prompt, strlen(r->prompt), 1, 1, BATCH_FINISH_STOP);
            written++;
        }
        CU_ASSERT_EQUAL(written, pass == 0 ? 2 : 1);
        free_items(&it);
        close_writer(w);
        batch_done_free(done);
    }
    lines ls;
    parse_lines(path, &ls);
    CU_ASSERT_EQUAL_FATAL(ls.n, 3);
    check_num(ls.j[0], "id", 1);
    check_num(ls.j[1], "id", 3.25);
    check_str(ls.j[2], "id", "two");
    check_str(ls.j[2], "completion", "b");
    free_lines(&ls);
    unlink(path);
}

void td_test_register(void) {
    static const td_test tests[] = {
        {"format names", test_format_names},
        {"JSONL: records, BOM, CRLF, blank lines, unicode, number ids, overrides", test_jsonl_records},
        {"JSONL: each bad line reported with its number, the next still read", test_jsonl_bad_lines},
        {"JSONL: duplicate ids skipped, ids compared as JSON text", test_jsonl_duplicates},
        {"OpenAI: messages, content parts, body overrides", test_openai_records},
        {"OpenAI: bad lines (content types, url, method, n, ...)", test_openai_bad_lines},
        {"text: one prompt per line, line-number ids, long lines", test_text_records},
        {"detection: empty, broken first line, arrays, given format, read-ahead", test_detection},
        {"UTF-8: validation and U+FFFD replacement of maximal subparts", test_utf8},
        {"output, plain shape: fields, escaping, invalid bytes, errors", test_write_plain},
        {"output, OpenAI Batch shape", test_write_openai},
        {"output: open and write failures", test_write_failures},
        {"done set: ids as JSON text, growth", test_done_set},
        {"resume: a cut last line is removed, its ids known", test_resume_truncated},
        {"resume: clean file, bad middle line, wrong file, missing file", test_resume_clean},
        {"resume: OpenAI shape keys on custom_id", test_resume_openai},
        {"number ids keep their exact value", test_number_ids},
        {"round trip: read, skip done, write, resume", test_round_trip},
        {NULL, NULL},
    };
    td_add_suite("batch_io", tests);
}
