/* Which vector instruction set the host kernels use.
 *
 * Detected once from CPUID (and XGETBV: the OS must save the wider registers),
 * overridable with the environment variable TANDEM_ISA=scalar|avx2|avx512|
 * avx512bf16|amx so that tests and benchmarks can run every path on one
 * machine. */
#ifndef TD_CPU_ISA_H
#define TD_CPU_ISA_H

#include <stdbool.h>

#include "base/error.h"

typedef enum td_isa {
    TD_ISA_SCALAR = 0,     /* portable C: the reference */
    TD_ISA_AVX2 = 1,       /* AVX2 + FMA + F16C */
    TD_ISA_AVX512 = 2,     /* AVX-512 F, BW, DQ, VL */
    TD_ISA_AVX512BF16 = 3, /* the above plus AVX512_BF16 (vdpbf16ps) */
    /* avx512's kernels, and AMX tiles (AMX-TILE, AMX-BF16, granted by the OS)
     * for prefill attention on bf16 caches: its products are dense. Decode
     * attention stays on the f32 avx512 kernel: one query row per kv head
     * group leaves a 16-row tile nearly empty. */
    TD_ISA_AMX = 4,
    TD_ISA_COUNT
} td_isa;

const char *td_isa_name(td_isa isa);

/* Parses "scalar", "avx2", "avx512", "avx512bf16", "amx". */
tandem_status td_isa_parse(const char *name, td_isa *out, td_error *err);

/* Whether this CPU (and OS) can run isa. */
bool td_isa_supported(td_isa isa);

/* The best ISA this CPU supports. */
td_isa td_isa_best(void);

/* The default ISA for the host kernels: td_isa_best(), except that
 * avx512bf16 is used only when asked for. Its speed depends on the CPU's
 * vdpbf16ps throughput, which is half the f32 FMA rate on Sapphire Rapids
 * (measured by bench/bench_attention: the f32 AVX-512 kernel is faster
 * there, and more accurate since it keeps q and the softmax weights in f32);
 * `tandem tune` picks it where it wins. amx is the default where the CPU
 * has it: it computes what avx512 does (to the f32 tolerance), faster. */
td_isa td_isa_default(void);

/* TANDEM_ISA if set (an unknown or unsupported value is an error), otherwise
 * td_isa_default(). */
tandem_status td_isa_select(td_isa *out, td_error *err);

#endif /* TD_CPU_ISA_H */
