#include "base/error.h"

#include <stdarg.h>
#include <stdio.h>

tandem_status td_fail(td_error *err, tandem_status status, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->status = status;
    }
    return status;
}

void td_error_clear(td_error *err) {
    if (err) {
        err->status = TANDEM_OK;
        err->msg[0] = '\0';
    }
}

const char *tandem_status_name(tandem_status status) {
    switch (status) {
    case TANDEM_OK: return "TANDEM_OK";
    case TANDEM_ERR_INVALID_ARGUMENT: return "TANDEM_ERR_INVALID_ARGUMENT";
    case TANDEM_ERR_OUT_OF_MEMORY: return "TANDEM_ERR_OUT_OF_MEMORY";
    case TANDEM_ERR_KV_FULL: return "TANDEM_ERR_KV_FULL";
    case TANDEM_ERR_LIMIT: return "TANDEM_ERR_LIMIT";
    case TANDEM_ERR_NOT_FOUND: return "TANDEM_ERR_NOT_FOUND";
    case TANDEM_ERR_UNSUPPORTED: return "TANDEM_ERR_UNSUPPORTED";
    case TANDEM_ERR_IO: return "TANDEM_ERR_IO";
    case TANDEM_ERR_FORMAT: return "TANDEM_ERR_FORMAT";
    case TANDEM_ERR_DEVICE: return "TANDEM_ERR_DEVICE";
    case TANDEM_ERR_INTERNAL: return "TANDEM_ERR_INTERNAL";
    }
    return "TANDEM_ERR_UNKNOWN";
}

const char *tandem_version(void) { return TANDEM_VERSION_STRING; }
