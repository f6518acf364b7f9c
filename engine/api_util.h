/* What the public API's files (engine/api*.c) share. */
#ifndef TD_ENGINE_API_UTIL_H
#define TD_ENGINE_API_UTIL_H

#include <stddef.h>

#include "base/error.h"
#include "gpu/device.h"
#include "tandem.h"

/* Formats a failure into a caller's buffer (buf may be NULL, cap 0) and
 * returns st: the calls with no engine to hold a message (tandem_tune,
 * tandem_plan). */
tandem_status td_api_fail(char *buf, size_t cap, tandem_status st, const char *fmt, ...) TD_PRINTF(4, 5);

/* The model a call opens: the path given, else $TANDEM_MODEL, else the
 * default model (scripts/fetch-model). */
const char *td_api_model_path(const char *given);

/* The smallest struct_size each public struct a caller fills is accepted
 * with: its layout in the oldest header whose field order is still today's
 * (a caller built against an older header passes a prefix of today's
 * struct; the fields past its struct_size take their defaults). */
#define TD_API_CONFIG_MIN_SIZE offsetof(tandem_config, profile)
#define TD_API_SAMPLING_MIN_SIZE (offsetof(tandem_sampling, ignore_eos) + sizeof(int))
#define TD_API_TUNE_MIN_SIZE (offsetof(tandem_tune_config, user) + sizeof(void *))

/* The sizes the deprecated unsized initializers (tandem_config_init, ...
 * as functions) write: the structs of the last header that called them,
 * 0.1.0's. Frozen: fields added later are never written by them. */
#define TD_API_CONFIG_SIZE_0_1 (offsetof(tandem_config, profile) + sizeof(const char *))
#define TD_API_SAMPLING_SIZE_0_1 TD_API_SAMPLING_MIN_SIZE
#define TD_API_TUNE_SIZE_0_1 TD_API_TUNE_MIN_SIZE
#define TD_API_PLAN_QUERY_SIZE_0_1 (offsetof(tandem_plan_query, host_seqs) + sizeof(int))

/* The device config a public struct's device, emu_gpu and emu_link name:
 * AUTO and CUDA: a CUDA device; EMU: the emulated device with emu_threads
 * per stream, taking emu_gpu's time per op when one is named (timed mode,
 * else compute mode) and emu_link's per copy when one is. CPU: *dc is
 * unused (there is no device to open). Fails with INVALID_ARGUMENT, the
 * message naming the field ("emu_gpu 'X' is no GPU preset (...)"), for
 * emu_gpu or emu_link with a device other than EMU or an unknown preset. */
tandem_status td_api_device_config(tandem_device device, const char *emu_gpu, const char *emu_link, int emu_threads,
                                   td_device_config *dc, td_error *err);

#endif /* TD_ENGINE_API_UTIL_H */
