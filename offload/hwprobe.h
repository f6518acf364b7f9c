/* Hardware probes: micro-benchmarks of the host that the benchmarks report
 * ratios against and that the cost model's profile is built from.
 *
 * Each returns the best of several repetitions (the machine is shared and
 * noisy: the best run is the least disturbed one), with all work on the given
 * number of OpenMP threads. */
#ifndef TD_OFFLOAD_HWPROBE_H
#define TD_OFFLOAD_HWPROBE_H

#include <stddef.h>

#include "cpu/isa.h"

/* Streaming read bandwidth over buf (split into one contiguous slice per
 * thread), in GB/s (1e9 bytes). Make buf much larger than the last-level
 * cache, and first-touched (cpu/hostmem.h), to measure memory. */
double td_probe_read_gbps(const void *buf, size_t bytes, int n_threads, int reps);

/* Peak f32 FMA rate in GFLOP/s (an FMA counts 2) with the widest FMA that isa
 * has (zmm for avx512*, ymm for avx2, scalar C for scalar). */
double td_probe_fma_gflops(td_isa isa, int n_threads);

/* Peak vdpbf16ps rate in GFLOP/s (32 multiply-adds, 64 flops, per
 * instruction); 0 when the CPU lacks AVX512_BF16. */
double td_probe_bf16dot_gflops(int n_threads);

/* The best rate of an n x n x n bf16 GEMM (fp32 accumulation) through the
 * engine's host GEMM (oneDNN), in GFLOP/s, over min_seconds of repetitions;
 * 0 if it cannot run. */
double td_probe_gemm_bf16_gflops(int n, int n_threads, double min_seconds);

/* The CPU's name ("model name" of /proc/cpuinfo), or "unknown CPU". */
void td_probe_cpu_name(char *out, size_t n);

#endif /* TD_OFFLOAD_HWPROBE_H */
