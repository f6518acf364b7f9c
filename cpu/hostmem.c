#include "cpu/hostmem.h"

#include <omp.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

size_t td_host_map_size(size_t bytes) { return (bytes + TD_HOSTMEM_ALIGN - 1) & ~(TD_HOSTMEM_ALIGN - 1); }

void *td_host_map(size_t bytes, int n_threads) {
    if (bytes == 0 || bytes > SIZE_MAX - 2 * TD_HOSTMEM_ALIGN)
        return NULL;
    bytes = td_host_map_size(bytes);
    /* over-map by one huge page, then trim both ends to an aligned span */
    size_t span = bytes + TD_HOSTMEM_ALIGN;
    uint8_t *raw = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    uint8_t *p = (uint8_t *)(((uintptr_t)raw + TD_HOSTMEM_ALIGN - 1) & ~(uintptr_t)(TD_HOSTMEM_ALIGN - 1));
    if (p > raw)
        munmap(raw, (size_t)(p - raw));
    size_t tail = (size_t)(raw + span - (p + bytes));
    if (tail)
        munmap(p + bytes, tail);
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE); /* advice: refusal is fine */
#endif
    const long n_pages = (long)(bytes / TD_HOSTMEM_ALIGN);
    const int nt = n_threads > 0 ? n_threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
    for (long i = 0; i < n_pages; i++)
        memset(p + (size_t)i * TD_HOSTMEM_ALIGN, 0, TD_HOSTMEM_ALIGN);
    return p;
}

void td_host_unmap(void *p, size_t bytes) {
    if (p)
        munmap(p, td_host_map_size(bytes));
}
