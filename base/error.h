/* Status plus a message: how every internal fallible function reports failure.
 *
 * A function that can fail returns a tandem_status and takes a td_error *err
 * (which may be NULL when the caller only wants the status). On failure it
 * fills err with the status and a one-line message that names what was wrong,
 * e.g. "kv: sequence 12 is not live (freed twice?)". Nothing here prints or
 * exits: the caller decides what reaches the user. */
#ifndef TD_BASE_ERROR_H
#define TD_BASE_ERROR_H

#include "tandem.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TD_ERROR_MSG_MAX 256

typedef struct td_error {
    tandem_status status;
    char msg[TD_ERROR_MSG_MAX];
} td_error;

#if defined(__GNUC__)
#define TD_PRINTF(fmt_idx, arg_idx) __attribute__((format(printf, fmt_idx, arg_idx)))
#else
#define TD_PRINTF(fmt_idx, arg_idx)
#endif

/* Records status and message in err (if not NULL) and returns status, so that
 * an error path reads `return td_fail(err, TANDEM_ERR_..., "...", ...);`. */
tandem_status td_fail(td_error *err, tandem_status status, const char *fmt, ...) TD_PRINTF(3, 4);

/* Resets err to TANDEM_OK with an empty message. */
void td_error_clear(td_error *err);

#ifdef __cplusplus
}
#endif

#endif /* TD_BASE_ERROR_H */
