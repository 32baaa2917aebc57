/* core_bench.c — what the core costs per descriptor: prepare 100,000
   descriptors on each side, make a request over all of them by indices, and
   post it (the in-process test backend with nocopy=1,inline=1, so the
   figure is the core's post path plus a backend that does nothing).
   Prints ns/descriptor for each step (median of several rounds). */
#define NIXL_IMPLEMENTATION
#include "../../nixl.h"
#include "../test_backend.h"

#include <stdio.h>
#include <stdlib.h>

enum { N = 100000, ROUNDS = 7, BLOCK = 64 };

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what, nixl_status_t st) {
    fprintf(stderr, "core_bench: %s: %s\n", what, nixl_status_str(st));
    exit(1);
}

int main(void) {
    nixl_backend_ops_t ops = tb_make_ops("LOOP", NIXL_MEM_BIT(NIXL_DRAM));
    nixl_agent_config_t cfg;
    nixl_agent_t *init, *target;
    nixl_backend_t *b;
    unsigned char *src = (unsigned char *)malloc((size_t)N * BLOCK), *dst = (unsigned char *)malloc((size_t)N * BLOCK);
    nixl_desc_t *ld = (nixl_desc_t *)malloc(N * sizeof *ld), *rd = (nixl_desc_t *)malloc(N * sizeof *rd);
    int *idx = (int *)malloc(N * sizeof *idx);
    uint64_t t_prep[ROUNDS], t_make[ROUNDS], t_post[ROUNDS];
    nixl_desc_t whole;
    nixl_dlist_t l, r, wl;
    void *blob;
    size_t len;
    nixl_status_t st;
    int i, k;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "bench-init";
    if ((st = nixl_agent_create(&cfg, &init))) die("agent", st);
    cfg.name = "bench-target";
    if ((st = nixl_agent_create(&cfg, &target))) die("agent", st);
    if ((st = nixl_create_backend(init, &ops, "nocopy=1,inline=1", &b))) die("backend", st);
    if ((st = nixl_create_backend(target, &ops, NULL, &b))) die("backend", st);
    /* 1,000 registered regions so lookups are binary searches, not trivia */
    for (k = 0; k < 1000; k++) {
        whole.addr = (uintptr_t)src + (size_t)k * (N / 1000) * BLOCK;
        whole.len = (size_t)(N / 1000) * BLOCK;
        whole.dev_id = 0;
        wl.mem = NIXL_DRAM;
        wl.descs = &whole;
        wl.count = 1;
        if ((st = nixl_register_mem(init, &wl, NULL))) die("register", st);
        whole.addr = (uintptr_t)dst + (size_t)k * (N / 1000) * BLOCK;
        if ((st = nixl_register_mem(target, &wl, NULL))) die("register", st);
    }
    if ((st = nixl_get_local_md(target, &blob, &len))) die("md", st);
    if ((st = nixl_load_remote_md(init, blob, len, NULL, 0))) die("load", st);
    nixl_free_md(target, blob);
    for (i = 0; i < N; i++) {
        int j = (int)(((unsigned)i * 7919u) % N); /* scattered blocks, like KV pages */
        ld[i].addr = (uintptr_t)src + (size_t)j * BLOCK;
        ld[i].len = BLOCK;
        ld[i].dev_id = 0;
        rd[i].addr = (uintptr_t)dst + (size_t)i * BLOCK;
        rd[i].len = BLOCK;
        rd[i].dev_id = 0;
        idx[i] = i;
    }
    l.mem = r.mem = NIXL_DRAM;
    l.descs = ld;
    r.descs = rd;
    l.count = r.count = N;
    for (k = 0; k < ROUNDS; k++) {
        nixl_dlist_handle_t *lh, *rh;
        nixl_xfer_req_t *req;
        uint64_t t0 = now_ns();
        if ((st = nixl_prep_xfer_dlist(init, NULL, &l, NULL, &lh))) die("prep", st);
        if ((st = nixl_prep_xfer_dlist(init, "bench-target", &r, NULL, &rh))) die("prep", st);
        t_prep[k] = now_ns() - t0;
        t0 = now_ns();
        if ((st = nixl_make_xfer_req(init, NIXL_WRITE, lh, idx, N, rh, idx, N, NULL, &req))) die("make", st);
        t_make[k] = now_ns() - t0;
        t0 = now_ns();
        if ((st = nixl_post_xfer_req(init, req, NULL)) != NIXL_SUCCESS) die("post", st);
        t_post[k] = now_ns() - t0;
        nixl_release_xfer_req(init, req);
        nixl_release_dlist_handle(init, lh);
        nixl_release_dlist_handle(init, rh);
    }
    qsort(t_prep, ROUNDS, sizeof t_prep[0], cmp_u64);
    qsort(t_make, ROUNDS, sizeof t_make[0], cmp_u64);
    qsort(t_post, ROUNDS, sizeof t_post[0], cmp_u64);
    /* prep covers both sides: per descriptor of one side it is half */
    printf("RESULT core_prep_ns_per_desc %.1f\n", (double)t_prep[ROUNDS / 2] / (2.0 * N));
    printf("RESULT core_make_ns_per_desc %.1f\n", (double)t_make[ROUNDS / 2] / N);
    printf("RESULT core_post_ns_per_desc %.2f\n", (double)t_post[ROUNDS / 2] / N);
    nixl_agent_destroy(init);
    nixl_agent_destroy(target);
    free(src);
    free(dst);
    free(ld);
    free(rd);
    free(idx);
    return 0;
}
