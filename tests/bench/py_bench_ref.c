/* py_bench_ref.c — the C API's side of tests/bench/py_bench.py: the same
   steps on the same shapes over UCX (two agents in one process), so the
   Python figures have their anchor in the same run. Prints
   "REF <step> <ns per unit>" lines (median of ROUNDS):
     descs       N x 3 u64 rows -> a new nixl_desc_t array (what get_xfer_descs
                 does: a list of its own, allocated and filled)
     prep        nixl_prep_xfer_dlist over N descriptors, local side
     make_post   make over K block ids + post + wait (per block id)
     status      nixl_get_xfer_status on a finished request (per call) */
#define NIXL_IMPLEMENTATION
#include "../../nixl.h"
#include "../../nixl_ucx.h"
#define BENCH_NAME "py_bench_ref"
#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N = 1500000, K = 15000, BLOCK = 64, ROUNDS = 5, CALLS = 200000 };

static double median(uint64_t *v, double per) { return median_of(v, ROUNDS) / per; }

static nixl_agent_t *agent(const char *name) {
    nixl_agent_config_t cfg;
    nixl_agent_t *a;
    nixl_backend_t *be;
    nixl_status_t st;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = name;
    if ((st = nixl_agent_create(&cfg, &a)) != NIXL_SUCCESS) die("agent_create", st);
    if ((st = nixl_create_backend(a, nixl_ucx_backend(), NULL, &be)) != NIXL_SUCCESS) die("create_backend", st);
    return a;
}

static void reg(nixl_agent_t *a, void *p, size_t len) {
    nixl_desc_t d = {(uintptr_t)p, len, 0};
    nixl_dlist_t l = {NIXL_DRAM, &d, 1};
    nixl_status_t st = nixl_register_mem(a, &l, NULL);
    if (st != NIXL_SUCCESS) die("register", st);
}

int main(void) {
    nixl_agent_t *ini = agent("ref-ini"), *tgt = agent("ref-tgt");
    unsigned char *src = (unsigned char *)calloc(N, BLOCK), *dst = (unsigned char *)calloc(N, BLOCK);
    uint64_t *rows = (uint64_t *)malloc((size_t)N * 3 * sizeof *rows), t[3][ROUNDS];
    nixl_desc_t *ld = (nixl_desc_t *)malloc(N * sizeof *ld), *rd = (nixl_desc_t *)malloc(N * sizeof *rd);
    int *idx = (int *)malloc(K * sizeof *idx);
    nixl_dlist_t l = {NIXL_DRAM, ld, N}, r = {NIXL_DRAM, rd, N};
    nixl_dlist_handle_t *lh = NULL, *rh = NULL;
    nixl_xfer_req_t *req = NULL;
    void *blob;
    size_t len, i;
    char name[64];
    nixl_status_t st;
    int k;
    if (!src || !dst || !rows || !ld || !rd || !idx) die("malloc", NIXL_ERR_BACKEND);
    reg(ini, src, (size_t)N * BLOCK);
    reg(tgt, dst, (size_t)N * BLOCK);
    if ((st = nixl_get_local_md(tgt, &blob, &len)) != NIXL_SUCCESS) die("get_local_md", st);
    if ((st = nixl_load_remote_md(ini, blob, len, name, sizeof name)) != NIXL_SUCCESS) die("load_remote_md", st);
    nixl_free_md(tgt, blob);
    for (i = 0; i < N; i++) {
        rows[3 * i] = (uint64_t)(uintptr_t)(src + i * BLOCK);
        rows[3 * i + 1] = BLOCK;
        rows[3 * i + 2] = 0;
        rd[i].addr = (uintptr_t)(dst + i * BLOCK);
        rd[i].len = BLOCK;
        rd[i].dev_id = 0;
    }
    for (k = 0; k < K; k++) idx[k] = (int)((size_t)k * (N / K));
    for (k = 0; k < ROUNDS; k++) {
        uint64_t t0 = now_ns();
        nixl_desc_t *fresh = (nixl_desc_t *)malloc(N * sizeof *fresh);
        if (!fresh) die("malloc", NIXL_ERR_BACKEND);
        for (i = 0; i < N; i++) { /* rows -> descriptors */
            fresh[i].addr = (uintptr_t)rows[3 * i];
            fresh[i].len = (size_t)rows[3 * i + 1];
            fresh[i].dev_id = rows[3 * i + 2];
        }
        t[0][k] = now_ns() - t0;
        memcpy(ld, fresh, N * sizeof *ld);
        free(fresh);
        t0 = now_ns();
        if ((st = nixl_prep_xfer_dlist(ini, NULL, &l, NULL, &lh)) != NIXL_SUCCESS) die("prep", st);
        t[1][k] = now_ns() - t0;
        if (k < ROUNDS - 1) nixl_release_dlist_handle(ini, lh);
    }
    printf("REF descs %.2f\n", median(t[0], N));
    printf("REF prep %.2f\n", median(t[1], N));
    if ((st = nixl_prep_xfer_dlist(ini, "ref-tgt", &r, NULL, &rh)) != NIXL_SUCCESS) die("prep remote", st);
    for (k = 0; k < ROUNDS; k++) {
        uint64_t t0 = now_ns();
        if ((st = nixl_make_xfer_req(ini, NIXL_WRITE, lh, idx, K, rh, idx, K, NULL, &req)) != NIXL_SUCCESS)
            die("make", st);
        st = nixl_post_xfer_req(ini, req, NULL);
        while (st == NIXL_IN_PROG) {
            nixl_progress(tgt);
            st = nixl_get_xfer_status(ini, req);
        }
        if (st != NIXL_SUCCESS) die("transfer", st);
        t[2][k] = now_ns() - t0;
        if (k < ROUNDS - 1) nixl_release_xfer_req(ini, req);
    }
    printf("REF make_post %.2f\n", median(t[2], K));
    for (k = 0; k < ROUNDS; k++) {
        uint64_t t0 = now_ns();
        for (i = 0; i < CALLS; i++) nixl_get_xfer_status(ini, req);
        t[0][k] = now_ns() - t0;
    }
    printf("REF status %.2f\n", median(t[0], CALLS));
    nixl_release_xfer_req(ini, req);
    nixl_agent_destroy(ini);
    nixl_agent_destroy(tgt);
    free(src);
    free(dst);
    free(rows);
    free(ld);
    free(rd);
    free(idx);
    return 0;
}
