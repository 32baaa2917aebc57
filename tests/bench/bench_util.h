/* bench_util.h — what the C benchmarks (tests/bench) share: a monotonic
   clock in ns, the median of a round's timings, and dying with a status.
   Include after nixl.h, with BENCH_NAME defined (the program's name). */
#ifndef NIXL_BENCH_UTIL_H
#define NIXL_BENCH_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static __attribute__((unused)) uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static __attribute__((unused)) int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* the median of n timings (sorts them) */
static __attribute__((unused)) double median_of(uint64_t *v, size_t n) {
    qsort(v, n, sizeof *v, cmp_u64);
    return (double)v[n / 2];
}

static __attribute__((unused)) void die(const char *what, nixl_status_t st) {
    fprintf(stderr, "%s: %s: %s\n", BENCH_NAME, what, nixl_status_str(st));
    exit(1);
}

#endif
