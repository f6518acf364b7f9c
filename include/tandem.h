/* Tandem: heterogeneous CPU-GPU LLM inference engine. Public C API.
 *
 * This header grows with the engine (see docs/ and the issues). What is here
 * now is the part every layer shares: the version and the status codes that
 * every fallible function returns.
 *
 * Thread-safety: the functions declared here are pure and may be called from
 * any thread.
 */
#ifndef TANDEM_H
#define TANDEM_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(TANDEM_BUILD)
#define TANDEM_API __attribute__((visibility("default")))
#else
#define TANDEM_API
#endif

#define TANDEM_VERSION_MAJOR 0
#define TANDEM_VERSION_MINOR 1
#define TANDEM_VERSION_PATCH 0
#define TANDEM_VERSION_STRING "0.1.0"

/* Status of every fallible call. The numeric values are part of the ABI:
 * new codes are only ever appended. */
typedef enum tandem_status {
    TANDEM_OK = 0,
    TANDEM_ERR_INVALID_ARGUMENT = 1, /* a caller-supplied value is out of range */
    TANDEM_ERR_OUT_OF_MEMORY = 2,    /* an allocation or mapping failed */
    TANDEM_ERR_KV_FULL = 3,          /* no free KV block: queue, preempt or swap, then retry */
    TANDEM_ERR_LIMIT = 4,            /* a fixed capacity is exceeded (e.g. a sequence's table) */
    TANDEM_ERR_NOT_FOUND = 5,        /* an id that is not live (never made, or already freed) */
    TANDEM_ERR_UNSUPPORTED = 6,      /* valid, but not available in this build or on this CPU */
    TANDEM_ERR_IO = 7,               /* reading or writing a file failed */
    TANDEM_ERR_FORMAT = 8,           /* a file's content is malformed */
    TANDEM_ERR_DEVICE = 9,           /* the accelerator or its runtime failed */
    TANDEM_ERR_INTERNAL = 10,        /* a broken invariant inside Tandem: please report it */
} tandem_status;

/* "TANDEM_OK", "TANDEM_ERR_KV_FULL", ...; "TANDEM_ERR_UNKNOWN" for other values. */
TANDEM_API const char *tandem_status_name(tandem_status status);

/* The version of the library actually loaded, e.g. "0.1.0". */
TANDEM_API const char *tandem_version(void);

#ifdef __cplusplus
}
#endif

#endif /* TANDEM_H */
