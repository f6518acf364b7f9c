#include "cpu/isa.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define TD_X86 1
#endif
#if defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

static const char *const isa_names[TD_ISA_COUNT] = {"scalar", "avx2", "avx512", "avx512bf16", "amx"};

const char *td_isa_name(td_isa isa) { return (unsigned)isa < TD_ISA_COUNT ? isa_names[isa] : "?"; }

tandem_status td_isa_parse(const char *name, td_isa *out, td_error *err) {
    for (int i = 0; i < TD_ISA_COUNT; i++) {
        if (strcmp(name, isa_names[i]) == 0) {
            *out = (td_isa)i;
            return TANDEM_OK;
        }
    }
    return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                   "unknown ISA '%s' (expected scalar, avx2, avx512, avx512bf16 or amx)", name);
}

#ifdef TD_X86
static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

/* What the CPU and the OS support, by CPUID and XGETBV. */
static bool probe(td_isa isa) {
    if (isa == TD_ISA_SCALAR)
        return true;
#ifdef TD_X86
    unsigned a, b, c, d;
    if (!__get_cpuid_count(1, 0, &a, &b, &c, &d))
        return false;
    bool osxsave = c & bit_OSXSAVE, fma = c & bit_FMA, f16c = c & bit_F16C, avx = c & bit_AVX;
    if (!(osxsave && avx && fma && f16c))
        return false;
    uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) /* XMM and YMM state */
        return false;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return false;
    bool avx2 = b & bit_AVX2;
    if (isa == TD_ISA_AVX2)
        return avx2;
    bool zmm_os = (xcr0 & 0xe6) == 0xe6; /* opmask, ZMM_Hi256, Hi16_ZMM */
    bool avx512 = avx2 && zmm_os && (b & bit_AVX512F) && (b & bit_AVX512BW) && (b & bit_AVX512DQ) && (b & bit_AVX512VL);
    if (isa == TD_ISA_AVX512)
        return avx512;
    unsigned a1, b1, c1, d1;
    if (!__get_cpuid_count(7, 1, &a1, &b1, &c1, &d1))
        return false;
    bool avx512bf16 = avx512 && (a1 & (1u << 5)); /* CPUID.(7,1):EAX[5] = AVX512_BF16 */
    if (isa == TD_ISA_AVX512BF16)
        return avx512bf16;
    if (isa == TD_ISA_AMX) {
        /* CPUID.(7,0):EDX[24] AMX-TILE, EDX[22] AMX-BF16; XCR0[17,18] the
         * tile state; and Linux lends the 8 KB of tile data per thread only
         * to a process that asks (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA =
         * 18; asking twice is harmless, oneDNN asks too) */
        bool amx = avx512bf16 && (d & (1u << 24)) && (d & (1u << 22)) && (xcr0 & 0x60000) == 0x60000;
#if defined(__x86_64__) && defined(__linux__)
        return amx && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
        return false;
#endif
    }
#endif
    return false;
}

/* Probed once per process: in a virtual machine CPUID traps to the
 * hypervisor (microseconds each; once per dequantized row it was 40% of a
 * forward step), and the answer cannot change while the process runs. Set
 * once under pthread_once, read-only after: no mutable global state. */
static bool has[TD_ISA_COUNT];
static pthread_once_t has_once = PTHREAD_ONCE_INIT;

static void probe_all(void) {
    for (int i = 0; i < TD_ISA_COUNT; i++)
        has[i] = probe((td_isa)i);
}

static bool cpu_has(td_isa isa) {
    pthread_once(&has_once, probe_all);
    return has[isa];
}

bool td_isa_supported(td_isa isa) { return (unsigned)isa < TD_ISA_COUNT && cpu_has(isa); }

td_isa td_isa_best(void) {
    for (int i = TD_ISA_COUNT - 1; i > 0; i--)
        if (cpu_has((td_isa)i))
            return (td_isa)i;
    return TD_ISA_SCALAR;
}

td_isa td_isa_default(void) {
    td_isa best = td_isa_best();
    return best == TD_ISA_AVX512BF16 ? TD_ISA_AVX512 : best;
}

tandem_status td_isa_select(td_isa *out, td_error *err) {
    const char *env = getenv("TANDEM_ISA");
    if (!env || !*env) {
        *out = td_isa_default();
        return TANDEM_OK;
    }
    td_isa isa = TD_ISA_SCALAR;
    tandem_status st = td_isa_parse(env, &isa, err);
    if (st != TANDEM_OK)
        return td_fail(err, st, "TANDEM_ISA: unknown ISA '%s' (expected scalar, avx2, avx512, avx512bf16 or amx)", env);
    if (!td_isa_supported(isa))
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "TANDEM_ISA=%s: this CPU does not support it (best: %s)", env,
                       td_isa_name(td_isa_best()));
    *out = isa;
    return TANDEM_OK;
}
