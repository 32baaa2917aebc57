/* core_bench.c — what the core costs per descriptor: prepare 100,000
   descriptors on each side, make a request over all of them by indices, and
   post it (the in-process test backend with nocopy=1,inline=1, so the
   figure is the core's post path plus a backend that does nothing).
   Prints ns/descriptor for each step (median of several rounds), and
   prep+make: the cost of one descriptor prepared (one side) plus one pair
   made into a request, the figure the 50 ns goal is about.
   The allocator keeps what the rounds free (mallopt: no trimming, no mmap
   per large block) so every round measures the library, not the kernel
   zeroing fresh pages for 3 MB arrays; the first round pays those.

     core_bench                   the test backend (RESULT core_*)
     core_bench --backend VERBS   prep and make over the verbs backend, both
                                  agents in this process (RESULT verbs_*;
                                  needs an RDMA device: the VM); not posted */
#define NIXL_IMPLEMENTATION
#include "../../nixl.h"
#include "../../nixl_verbs.h"
#include "../test_backend.h"
#define BENCH_NAME "core_bench"
#include "bench_util.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N = 100000, ROUNDS = 7, BLOCK = 64 };

/* the median of ROUNDS timings (sorts them) */
static double median(uint64_t *v) { return median_of(v, ROUNDS); }

/* The strided form against the materialised list: the target's N blocks in
   one region, prepared as N descriptors and as one layout; prep time, the
   handle's memory, and make over N ids with each as the remote side. */
static void strided_figures(nixl_agent_t *init, nixl_agent_t *target, nixl_desc_t *ld, int *idx, const char *tag) {
    unsigned char *kv = (unsigned char *)calloc(N, BLOCK);
    nixl_desc_t *rd = (nixl_desc_t *)malloc(N * sizeof *rd), whole = {(uintptr_t)kv, (size_t)N * BLOCK, 0};
    nixl_dlist_t wl = {NIXL_DRAM, &whole, 1}, l = {NIXL_DRAM, ld, N}, r = {NIXL_DRAM, rd, N};
    nixl_strided_t s = {NIXL_DRAM, (uintptr_t)kv, BLOCK, BLOCK, N, 0};
    uint64_t t_list[ROUNDS], t_str[ROUNDS], m_list[ROUNDS], m_str[ROUNDS];
    nixl_dlist_handle_t *lh, *rh;
    nixl_xfer_req_t *req;
    nixl_status_t st;
    void *blob;
    size_t len;
    int i, k;
    if (!kv || !rd) die("malloc", NIXL_ERR_BACKEND);
    if ((st = nixl_register_mem(target, &wl, NULL))) die("register", st);
    if ((st = nixl_get_local_md(target, &blob, &len))) die("md", st);
    if ((st = nixl_load_remote_md(init, blob, len, NULL, 0))) die("load", st);
    nixl_free_md(target, blob);
    for (i = 0; i < N; i++) {
        rd[i].addr = (uintptr_t)kv + (size_t)i * BLOCK;
        rd[i].len = BLOCK;
        rd[i].dev_id = 0;
    }
    if ((st = nixl_prep_xfer_dlist(init, NULL, &l, NULL, &lh))) die("prep", st);
    for (k = 0; k < ROUNDS; k++) {
        uint64_t t0 = now_ns();
        if ((st = nixl_prep_xfer_dlist(init, "bench-target", &r, NULL, &rh))) die("prep", st);
        t_list[k] = now_ns() - t0;
        t0 = now_ns();
        if ((st = nixl_make_xfer_req(init, NIXL_WRITE, lh, idx, N, rh, idx, N, NULL, &req))) die("make", st);
        m_list[k] = now_ns() - t0;
        nixl_release_xfer_req(init, req);
        nixl_release_dlist_handle(init, rh);
        t0 = now_ns();
        if ((st = nixl_prep_xfer_dlist_strided(init, "bench-target", &s, NULL, &rh))) die("prep strided", st);
        t_str[k] = now_ns() - t0;
        t0 = now_ns();
        if ((st = nixl_make_xfer_req(init, NIXL_WRITE, lh, idx, N, rh, idx, N, NULL, &req))) die("make", st);
        m_str[k] = now_ns() - t0;
        nixl_release_xfer_req(init, req);
        nixl_release_dlist_handle(init, rh);
    }
    nixl_release_dlist_handle(init, lh);
    printf("FIGURE %s_strided blocks=%d prep_list_us=%.1f prep_strided_us=%.2f handle_bytes_list=%zu "
           "handle_bytes_strided=%zu make_ns_per_desc_list=%.1f make_ns_per_desc_strided=%.1f\n",
           tag, N, median(t_list) / 1e3, median(t_str) / 1e3, (size_t)N * sizeof(_nixl_hent) +
           sizeof(nixl_dlist_handle_t), sizeof(_nixl_hent) + sizeof(nixl_dlist_handle_t),
           median(m_list) / N, median(m_str) / N);
    nixl_deregister_mem(target, &wl, NULL);
    free(kv);
    free(rd);
}

int main(int argc, char **argv) {
    int verbs = argc > 2 && !strcmp(argv[1], "--backend") && !strcmp(argv[2], "VERBS");
    const char *tag = verbs ? "verbs" : "core";
    nixl_backend_ops_t ops = tb_make_ops("LOOP", NIXL_MEM_BIT(NIXL_DRAM));
    nixl_agent_config_t cfg;
    nixl_agent_t *init, *target;
    nixl_backend_t *b;
    unsigned char *src = (unsigned char *)malloc((size_t)N * BLOCK), *dst = (unsigned char *)malloc((size_t)N * BLOCK);
    nixl_desc_t *ld = (nixl_desc_t *)malloc(N * sizeof *ld), *rd = (nixl_desc_t *)malloc(N * sizeof *rd);
    int *idx;
    uint64_t t_prep[ROUNDS], t_make[ROUNDS], t_post[ROUNDS];
    nixl_desc_t whole;
    nixl_dlist_t l, r, wl;
    void *blob;
    size_t len;
    nixl_status_t st;
    int i, k;
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    idx = (int *)malloc(N * sizeof *idx);
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "bench-init";
    if ((st = nixl_agent_create(&cfg, &init))) die("agent", st);
    cfg.name = "bench-target";
    if ((st = nixl_agent_create(&cfg, &target))) die("agent", st);
    if ((st = nixl_create_backend(init, verbs ? nixl_verbs_backend() : &ops, verbs ? NULL : "nocopy=1,inline=1",
                                  &b)))
        die("backend", st);
    if ((st = nixl_create_backend(target, verbs ? nixl_verbs_backend() : &ops, NULL, &b))) die("backend", st);
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
        if (!verbs && (st = nixl_post_xfer_req(init, req, NULL)) != NIXL_SUCCESS) die("post", st);
        t_post[k] = now_ns() - t0;
        nixl_release_xfer_req(init, req);
        nixl_release_dlist_handle(init, lh);
        nixl_release_dlist_handle(init, rh);
    }
    /* prep covers both sides: per descriptor of one side it is half */
    printf("RESULT %s_prep_ns_per_desc %.1f\n", tag, median(t_prep) / (2.0 * N));
    printf("RESULT %s_make_ns_per_desc %.1f\n", tag, median(t_make) / N);
    printf("RESULT %s_prep_make_ns_per_desc %.1f\n", tag, median(t_prep) / (2.0 * N) + median(t_make) / N);
    if (!verbs) printf("RESULT core_post_ns_per_desc %.2f\n", median(t_post) / N);
    strided_figures(init, target, ld, idx, tag);
    nixl_agent_destroy(init);
    nixl_agent_destroy(target);
    free(src);
    free(dst);
    free(ld);
    free(rd);
    free(idx);
    return 0;
}
