/* What the public API's files (engine/api*.c) share. */
#ifndef TD_ENGINE_API_UTIL_H
#define TD_ENGINE_API_UTIL_H

/* The model a call opens: the path given, else $TANDEM_MODEL, else the
 * default model (scripts/fetch-model). */
const char *td_api_model_path(const char *given);

#endif /* TD_ENGINE_API_UTIL_H */
