/* `tandem tune`: micro-benchmarks that measure a hardware profile
 * (offload/profile.h) on a device (gpu/device.h: a CUDA GPU, or the
 * emulated device, whose timed mode gives its GPU model's times) and the
 * host CPU. docs/PROFILES.md says how each figure is measured.
 *
 * Stages, in order (the progress callback hears each start and end):
 *   device GEMM        bf16 GEMM (C f32, B transposed, as the linear layers
 *                      run) over a grid of M x (N, K), timed by device
 *                      events, best of three samples of back-to-back ops;
 *   device kernels     paged decode attention (KV bytes / s) and a row
 *                      kernel (td_dev_add, bytes / s), each the slope
 *                      between two sizes; launch: a tiny op's time;
 *   link               H2D and D2H copies from pinned memory at 4 KiB to
 *                      64 MiB: bandwidth from the two largest, latency the
 *                      smallest's time less its bytes at that bandwidth;
 *   hand-off           host clock around a tiny op, an event record and
 *                      td_dev_event_sync (median), less the op's own time;
 *   CPU attention      td_attn_decode over a bf16 host KV cache larger
 *                      than the last-level cache, by team size (1, 2, 4,
 *                      ..., threads) and context, KV bytes read / s;
 *   CPU call           a one-block attention call (median): the team's
 *                      fork and join.
 *
 * Every timed sample on the device is preceded by a few large GEMMs, so
 * the device runs ahead of the host and the events bracket device time
 * only (on the emulated device: exactly the model's time). */
#ifndef TD_OFFLOAD_TUNE_H
#define TD_OFFLOAD_TUNE_H

#include <stdint.h>

#include "base/error.h"
#include "gpu/device.h"
#include "offload/profile.h"

/* An (N, K) shape of a linear layer: y[M][N] = x[M][K] . W[N][K]^T. */
typedef struct td_tune_shape {
    int64_t n, k;
} td_tune_shape;

typedef struct td_tune_options {
    int threads; /* the CPU attention's largest team; 0: omp_get_max_threads() */
    /* A model's linear layers (engine/ reads them: offload/ knows no
     * models), measured besides the generic shapes; and the attention's
     * shape (query heads, kv heads, head dim; 0: Llama-3-8B's, 32 / 8 / 128). */
    const td_tune_shape *model_shapes;
    int n_model_shapes;
    int attn_q_heads, attn_kv_heads, attn_head_dim;
    const char *device_name, *link_name; /* profile labels; NULL: the device's name, "host link" */
    const char *source;                  /* the profile's source text; NULL: "tandem tune" and the date */
    /* The grid; NULL / 0: the defaults (docs/PROFILES.md). Tests shrink it. */
    const int64_t *ms;
    int n_ms;
    const td_tune_shape *shapes; /* replace the generic shapes (the model's are added) */
    int n_shapes;
    const int64_t *ctxs; /* CPU attention contexts */
    int n_ctxs;
    size_t cpu_bytes; /* KV bytes one CPU attention pass reads; 0: max(1 GiB, 2 x the LLC) */
    void (*progress)(void *user, const char *stage, double fraction);
    void *user;
} td_tune_options;

void td_tune_options_default(td_tune_options *o);

/* The default grid: *n values each. */
const int64_t *td_tune_default_ms(int *n);
const td_tune_shape *td_tune_default_shapes(int *n);
const int64_t *td_tune_default_ctxs(int *n);

/* Measures d and this host; *out is a validated profile the caller frees
 * (td_profile_free). */
tandem_status td_tune_run(td_device *d, const td_tune_options *o, td_profile **out, td_error *err);

#endif /* TD_OFFLOAD_TUNE_H */
