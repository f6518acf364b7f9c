/* The batch CLI's file layer: input records in, result records out.
 *
 * `tandem generate --input FILE --output FILE [--resume]` reads prompts with a
 * batch_reader, runs them, and writes one JSON line per finished request with
 * a batch_writer. Built only on include/tandem.h (tools/ knows no internals);
 * JSON is parsed and printed by cJSON. Nothing here prints: every failure comes
 * back as a tandem_status and a batch_error.
 *
 * ## Input formats
 *
 * The format is detected from the first non-blank line (a UTF-8 byte order
 * mark at the start of the input and a CR before each LF are dropped):
 *   - it starts with '{' and parses as a JSON object holding "custom_id":
 *     BATCH_FORMAT_OPENAI, the OpenAI Batch API's input lines
 *       {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
 *        "body": {"model": "...", "messages": [{"role": "user", "content": "..."}],
 *                 "max_tokens" | "max_completion_tokens": N, "temperature": T,
 *                 "top_p": P, "top_k": K, "seed": S, "stop": "..." | ["...", ...]}}
 *     ("content" may also be an array of {"type": "text", "text": "..."} parts,
 *     which are concatenated; "method", when present, must be "POST"; "url",
 *     when present, "/v1/chat/completions"; "n", when present, 1);
 *   - it starts with '{' and parses as another JSON object: BATCH_FORMAT_JSONL,
 *       {"id": "a" | 7, "prompt": "...", "max_tokens": N, "temperature": T,
 *        "top_p": P, "top_k": K, "seed": S, "stop": "..." | ["...", ...]}
 *   - it starts with '{' but does not parse: the reader fails (a JSON file with
 *     a broken first line is not silently taken for text); it starts with '[':
 *     the reader fails too (a JSON array is not JSONL);
 *   - anything else: BATCH_FORMAT_TEXT, one prompt per line, taken verbatim
 *     (only the line terminator is dropped); the id of a prompt is its 1-based
 *     line number as a JSON string ("7").
 * Every later line must match the detected (or given) format. Blank lines
 * (only spaces and tabs) are skipped in every format; line numbers count them.
 * A null value means the field is absent; unknown fields are ignored. Ranges
 * are the sampler's: max_tokens >= 1, temperature >= 0, top_p in (0, 1],
 * top_k >= 0, integers where integers are meant, seed an integer within
 * +-2^53. Every string must be valid UTF-8.
 *
 * A line that does not match (bad JSON, a missing or mistyped field, an id
 * seen on an earlier line) is reported by batch_reader_next with its line
 * number and skipped; reading goes on with the next line.
 *
 * ## Ids
 *
 * An id is a JSON string or number and keeps its type: it travels as its JSON
 * text (id_json: "\"a\"", "7") as cJSON prints it, and ids are compared as that
 * text ("7" and 7 are two ids; 7 and 7.0 are one). Numbers must be finite and,
 * when integers, within +-2^53 so that they round-trip exactly.
 *
 * ## Output
 *
 * One JSON object per line, written with a single fwrite of the whole line and
 * a fflush (and an fsync when asked), so a kill at any moment leaves at most
 * one partial last line, which resuming removes. Strings are made valid UTF-8
 * first (each maximal ill-formed subsequence, and each NUL byte, becomes
 * U+FFFD) and then escaped by cJSON. Shapes:
 *   BATCH_SHAPE_PLAIN:
 *     {"id": ..., "completion": "...", "prompt_tokens": N,
 *      "completion_tokens": N, "finish_reason": "stop" | "length"}
 *     {"id": ..., "error": {"message": "...", "code": "..."}}  (code when given)
 *   BATCH_SHAPE_OPENAI (the OpenAI Batch API's output file):
 *     {"id": "batch_req_...", "custom_id": ..., "response": {"status_code": 200,
 *      "request_id": "req_...", "body": {"id": "chatcmpl-...",
 *      "object": "chat.completion", "created": <unix time>, "model": "...",
 *      "choices": [{"index": 0, "message": {"role": "assistant", "content": "..."},
 *                   "logprobs": null, "finish_reason": "stop" | "length"}],
 *      "usage": {"prompt_tokens": N, "completion_tokens": N, "total_tokens": N}}},
 *      "error": null}
 *     {"id": "batch_req_...", "custom_id": ..., "response": null,
 *      "error": {"code": "...", "message": "..."}}
 *
 * ## Resume
 *
 * batch_writer_open with resume set reads the existing output file first and
 * adds the id of every good line to a batch_done set ("custom_id" for lines
 * holding one, else "id"); the caller skips input records whose id it
 * contains. A good line is a newline-terminated JSON object with a string or
 * number id. Lines after the last good line (a last line cut short by a
 * kill, or unparsable) are cut off: the file is truncated back to the end of
 * the last good line, and the report says so. Bad lines before the last good
 * line are left where they are and counted. A file with no good line and more
 * than one line is refused (TANDEM_ERR_FORMAT): it is probably not an output
 * file, and nothing of it is cut.
 *
 * Thread-safety: none; one reader or writer per thread. */
#ifndef TD_TOOLS_BATCH_IO_H
#define TD_TOOLS_BATCH_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "tandem.h"

#define BATCH_MSG_MAX 256

/* Status plus a message, like the engine's td_error, plus the input line the
 * message is about. */
typedef struct batch_error {
    tandem_status status;
    uint64_t line; /* 1-based input line; 0 when the message is not about one */
    char msg[BATCH_MSG_MAX];
} batch_error;

typedef enum batch_format {
    BATCH_FORMAT_AUTO = 0, /* detect from the first non-blank line */
    BATCH_FORMAT_JSONL,    /* {"id": ..., "prompt": ...} */
    BATCH_FORMAT_OPENAI,   /* OpenAI Batch API input */
    BATCH_FORMAT_TEXT,     /* one prompt per line */
} batch_format;

/* "auto", "jsonl", "openai", "text". */
const char *batch_format_name(batch_format format);

/* The inverse of batch_format_name (for --input-format);
 * TANDEM_ERR_INVALID_ARGUMENT listing the names when s is none of them. */
tandem_status batch_format_parse(const char *s, batch_format *format, batch_error *err);

/* One chat message of an OpenAI record, for the caller's chat template. */
typedef struct batch_message {
    char *role;
    char *content; /* text parts concatenated */
} batch_message;

/* One input record. Every pointer is owned by the record (batch_record_free). */
typedef struct batch_record {
    uint64_t line;           /* 1-based line number in the input */
    char *id_json;           /* the id as JSON text: "\"r1\"", "7" */
    char *prompt;            /* JSONL and text; NULL for OpenAI records */
    batch_message *messages; /* OpenAI records; NULL otherwise */
    int32_t n_messages;
    char *model; /* OpenAI body.model when given, else NULL */

    /* per-record overrides: each value is meaningful only when its has_ flag is set */
    bool has_max_tokens, has_temperature, has_top_p, has_top_k, has_seed;
    int32_t max_tokens;
    float temperature;
    float top_p;
    int32_t top_k;
    int64_t seed;
    char **stop; /* n_stop strings, or NULL when "stop" was absent */
    int32_t n_stop;
} batch_record;

void batch_record_free(batch_record *rec);

typedef struct batch_reader batch_reader;

/* A reader over in (not closed by the reader; stdin for "-" is the caller's
 * business). format BATCH_FORMAT_AUTO detects it. Records are read one line at
 * a time; the input is never held whole. */
tandem_status batch_reader_open(FILE *in, batch_format format, batch_reader **reader, batch_error *err);

void batch_reader_close(batch_reader *reader);

/* The format of the input: the one given to batch_reader_open, or, for AUTO,
 * the one detected from the first non-blank line (read ahead, and still
 * returned by the next batch_reader_next). BATCH_FORMAT_AUTO when the input
 * holds no non-blank line. Fails (TANDEM_ERR_FORMAT, TANDEM_ERR_IO) as
 * batch_reader_next does. */
tandem_status batch_reader_detect(batch_reader *reader, batch_format *format, batch_error *err);

typedef enum batch_next {
    BATCH_NEXT_RECORD,   /* *rec holds the next record */
    BATCH_NEXT_BAD_LINE, /* a line was skipped: err says which (err->line) and why;
                          * *rec holds its line and, when the line had a usable id
                          * not seen before, id_json (for an error record); call again */
    BATCH_NEXT_END,      /* no more input */
    BATCH_NEXT_FAIL,     /* reading failed or the format cannot be told: err says; stop */
} batch_next;

/* Reads the next record into *rec (overwritten, not freed: after
 * BATCH_NEXT_RECORD and BATCH_NEXT_BAD_LINE the caller owns it and frees it
 * with batch_record_free; after END and FAIL it is zeroed). */
batch_next batch_reader_next(batch_reader *reader, batch_record *rec, batch_error *err);

/* ---- the set of ids already written */

typedef struct batch_done batch_done;

batch_done *batch_done_new(void); /* NULL when out of memory */
void batch_done_free(batch_done *done);
/* Adds an id (JSON text); false when out of memory. */
bool batch_done_add(batch_done *done, const char *id_json);
bool batch_done_contains(const batch_done *done, const char *id_json);
size_t batch_done_count(const batch_done *done);

/* ---- output */

typedef enum batch_shape {
    BATCH_SHAPE_PLAIN,  /* {"id", "completion", ...} */
    BATCH_SHAPE_OPENAI, /* the OpenAI Batch API's output lines */
} batch_shape;

/* The shape that answers an input format: OPENAI for OPENAI, else PLAIN. */
batch_shape batch_shape_for(batch_format format);

typedef struct batch_writer_opts {
    batch_shape shape;
    bool resume;       /* keep what the file holds (see Resume above); else truncate it */
    bool fsync;        /* fsync after every record (ignored where the output cannot sync) */
    const char *model; /* body.model in OpenAI records when a result gives none;
                        * NULL: "tandem" */
} batch_writer_opts;

/* What resuming found in an existing output file. */
typedef struct batch_resume_report {
    uint64_t records;        /* good lines (their ids are in done) */
    uint64_t error_records;  /* good lines that hold an error (counted in records too) */
    uint64_t bad_lines;      /* bad lines left in place before the last */
    uint64_t first_bad_line; /* 1-based line of the first of those; 0 when none */
    bool truncated;          /* lines after the last good one were cut off */
    uint64_t truncated_line; /* 1-based line number of the first line cut */
    uint64_t truncated_lines;
    uint64_t truncated_bytes;
} batch_resume_report;

typedef struct batch_writer batch_writer;

/* Opens path for writing ("-": stdout, which cannot be resumed and is not
 * closed). With opts->resume, done (required) receives the ids found and rep
 * (may be NULL) what was found; a missing file is created. */
tandem_status batch_writer_open(const char *path, const batch_writer_opts *opts, batch_done *done,
                                batch_resume_report *rep, batch_writer **writer, batch_error *err);

/* Closes the file (not stdout); TANDEM_ERR_IO when closing fails. NULL is a no-op. */
tandem_status batch_writer_close(batch_writer *writer, batch_error *err);

typedef enum batch_finish {
    BATCH_FINISH_STOP,   /* end of sequence or a stop string */
    BATCH_FINISH_LENGTH, /* max_tokens reached */
} batch_finish;

typedef struct batch_result {
    const char *id_json;    /* the record's id_json */
    const char *completion; /* completion_len bytes (made valid UTF-8 when written) */
    size_t completion_len;
    int32_t prompt_tokens;
    int32_t completion_tokens;
    batch_finish finish;
    const char *model; /* OpenAI shape: body.model; NULL: the writer's */
} batch_result;

/* Writes one result line. TANDEM_ERR_INVALID_ARGUMENT when id_json is not a
 * JSON string or number; TANDEM_ERR_IO when writing fails, after which every
 * later write fails too (the file may end in a partial line: resume cuts it). */
tandem_status batch_write_result(batch_writer *writer, const batch_result *result, batch_error *err);

/* Writes one error line for id_json. code may be NULL (plain shape: no "code";
 * OpenAI shape: "error"). */
tandem_status batch_write_error(batch_writer *writer, const char *id_json, const char *code, const char *message,
                                batch_error *err);

/* ---- helpers, exposed for tests and for the CLI's own messages */

/* A malloc'ed, NUL-terminated copy of the n bytes at s with each maximal
 * ill-formed UTF-8 subsequence (Unicode 15, section 3.9) and each NUL byte
 * replaced by U+FFFD; *out_len (may be NULL) gets its length. NULL when out of
 * memory. */
char *batch_utf8_sanitize(const char *s, size_t n, size_t *out_len);

/* Whether the n bytes at s are well-formed UTF-8. */
bool batch_utf8_valid(const char *s, size_t n);

#endif /* TD_TOOLS_BATCH_IO_H */
