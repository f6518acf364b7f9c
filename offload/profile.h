/* The hardware profile: what the cost model (offload/costmodel.h) knows of
 * a machine. `tandem tune` measures one (offload/tune.h); presets for
 * published hardware live in offload/presets/ with their sources in
 * docs/PROFILES.md. On disk it is JSON with a schema version:
 *
 *   {
 *     "schema": 1,
 *     "source": "tandem tune, 2026-11-25, ...",   free text: where the figures come from
 *     "device": {
 *       "name": "H100-PCIe", "mem_bytes": 85899345920,
 *       "launch_us": 4.0,            per-op overhead (an empty kernel's time; in the GEMM times already)
 *       "attn_gbps": 1500,           paged decode attention: KV bytes read per second (launch apart)
 *       "row_gbps": 1400,            row kernels (norm, RoPE, SwiGLU, add): bytes read + written per
 *                                    second (launch apart)
 *       "gemm": [[m, n, k, seconds], ...]   bf16 GEMM time, measured (see td_profile_gemm_seconds):
 *                                    the op's whole time, its launch included
 *     },
 *     "link": {"name": "pcie5-x16", "h2d_gbps": 50, "d2h_gbps": 50, "latency_us": 5},
 *     "cpu": {
 *       "name": "...", "threads": 2, "mem_bytes": 25769803776,
 *       "attn": [[threads, ctx, gbps], ...]  decode attention over a host KV cache: KV bytes read
 *                                            per second, by team size and context length
 *       "attn_call_us": 20,          fixed cost of one attention call (the team's fork/join)
 *       "handoff_us": 60             a pipeline hand-off: from a device event to the CPU
 *                                    thread waiting on it, and from the CPU back to the device
 *     }
 *   }
 *
 * Every figure is validated on load (present, finite, positive, tables
 * sorted and non-empty) with an error that names the file and the field,
 * e.g. "profile.json: device.gemm[3][2]: must be a positive integer below
 * 2^31". Rates and sizes must be positive; the four overheads (launch_us,
 * latency_us, attn_call_us, handoff_us) may be 0. A schema newer than
 * TD_PROFILE_SCHEMA is TANDEM_ERR_UNSUPPORTED ("schema 2 is newer than
 * this build's 1"). Keys the format does not name are ignored (notes, and
 * fields a later version adds without changing the meaning of these):
 * every figure is required, so a misspelt one is reported as missing.
 *
 * td_profile_save writes every number as the shortest of %.15g..%.17g
 * that reads back exactly: load(save(p)) == p, except that a figure the
 * file holds in microseconds comes back within an ulp when no double
 * count of microseconds divides to it exactly (tune's all do). */
#ifndef TD_OFFLOAD_PROFILE_H
#define TD_OFFLOAD_PROFILE_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

#define TD_PROFILE_SCHEMA 1

typedef struct td_gemm_point {
    int64_t m, n, k;
    double seconds;
} td_gemm_point;

typedef struct td_cpu_attn_point {
    int32_t threads;
    int64_t ctx;
    double gbps; /* 1e9 KV bytes read per second */
} td_cpu_attn_point;

typedef struct td_profile {
    char source[256];
    /* the device */
    char device[64];
    double dev_mem_bytes;
    double dev_launch_s;
    double dev_attn_gbps;
    double dev_row_gbps;
    td_gemm_point *gemm; /* sorted by (n, k, m) */
    int32_t n_gemm;
    /* the link */
    char link[64];
    double h2d_gbps, d2h_gbps, link_latency_s;
    /* the CPU */
    char cpu[128];
    int32_t cpu_threads;
    double host_mem_bytes;
    td_cpu_attn_point *cpu_attn; /* sorted by (threads, ctx) */
    int32_t n_cpu_attn;
    double cpu_attn_call_s;
    double handoff_s;
} td_profile;

/* Reads and validates a profile file. */
tandem_status td_profile_load(const char *path, td_profile **out, td_error *err);
/* A preset by name (offload/presets/NAME.json, compiled in), case-insensitive;
 * TANDEM_ERR_NOT_FOUND lists the names there are. Presets: T4, A10G,
 * A10G-g5.16xlarge, H100-PCIe, H100-SXM (docs/PROFILES.md). */
tandem_status td_profile_preset(const char *name, td_profile **out, td_error *err);
/* A file when `name` is a path to one, else a preset (a name with a '/' or
 * ending in .json that is no file: the file's error). */
tandem_status td_profile_open(const char *name, td_profile **out, td_error *err);
/* Names of the presets, NULL-terminated. */
const char *const *td_profile_presets(void);
/* Writes p as JSON (the format above). */
tandem_status td_profile_save(const td_profile *p, const char *path, td_error *err);
/* Checks every figure; the message names the field (and the file, when
 * `where` is one). */
tandem_status td_profile_validate(const td_profile *p, const char *where, td_error *err);
/* A copy that the caller frees (td_profile_free). */
td_profile *td_profile_dup(const td_profile *p);
void td_profile_free(td_profile *p);

/* Seconds of an M x N x K bf16 GEMM: interpolated in M (piecewise linear)
 * among the table's points of the same (N, K); for an (N, K) not in the
 * table, from the nearest shape in N * K (by ratio: |log(NK / N'K')|, the
 * first in table order on a tie), its time past the launch scaled by the
 * ratio of N * K (launch + (t - launch) * NK / N'K': the launch does not
 * grow with the shape). M past the table's largest extrapolates linearly
 * from its last two points (when they do not rise, from the last point's
 * time past the launch, proportional to M); M below its smallest takes the
 * smallest's time. 0 for M, N or K < 1. */
double td_profile_gemm_seconds(const td_profile *p, int64_t m, int64_t n, int64_t k);
/* KV bytes per second the CPU's decode attention reads with `threads`
 * threads over contexts of `ctx` tokens: interpolated in log(ctx) between
 * the measured contexts of a team size (flat outside them). The team: the
 * largest measured one of at most `threads` threads, its figure scaled by
 * threads / its size when that is more, capped at the largest team's
 * figure (or its own, when higher); with fewer threads than the smallest
 * team, the smallest's figure times threads / its size. threads < 1
 * counts as 1. */
double td_profile_cpu_attn_bps(const td_profile *p, int threads, int64_t ctx);

#endif /* TD_OFFLOAD_PROFILE_H */
