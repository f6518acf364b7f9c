/* Large host buffers placed for the threads that read them.
 *
 * A buffer is mapped aligned to 2 MiB, advised to use transparent huge pages
 * (fewer TLB misses when streaming gigabytes), and zero-filled page by page by
 * an OpenMP team with a static schedule: on a NUMA machine first touch puts
 * each page on the node of the thread that wrote it, so a team that later
 * reads with the same schedule reads local memory, and any team spreads its
 * reads over every node's bandwidth. */
#ifndef TD_CPU_HOSTMEM_H
#define TD_CPU_HOSTMEM_H

#include <stddef.h>

/* Huge page size assumed for alignment. */
#define TD_HOSTMEM_ALIGN ((size_t)2 << 20)

/* bytes rounded up to TD_HOSTMEM_ALIGN: what td_host_map maps for bytes. */
size_t td_host_map_size(size_t bytes);

/* Maps td_host_map_size(bytes) zeroed bytes, first-touched by n_threads
 * threads (0: OpenMP default). NULL when the mapping fails. */
void *td_host_map(size_t bytes, int n_threads);

/* Unmaps a buffer from td_host_map (same bytes); NULL is a no-op. */
void td_host_unmap(void *p, size_t bytes);

#endif /* TD_CPU_HOSTMEM_H */
