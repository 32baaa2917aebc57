/* test_gpu.c — GPU memory in the verbs backend (and the file backend's
   staging on a real GPU): the CUDA driver loader, the staging pipeline, and
   (where there is a GPU) real device memory.

   Three groups, each skipping with a printed reason where its machine part
   is missing, so the program never fails for lack of a GPU or an RDMA NIC:
     driver   anywhere: the dlopen path with no driver present (a library
              name that does not exist; the real one too when absent).
     staging  needs an RDMA device (Soft-RoCE in tests/softroce/vm-run): the
              real staging pipeline of nixl_verbs.h, with host memory
              standing in for a GPU through a copy-ops table whose copies
              complete asynchronously, a few polls after they start, or fail
              on request.
     gpu      needs the CUDA driver and a GPU: cuMemAlloc'ed memory is
              detected (ordinal, base range), a host pointer refused, a
              dma-buf fd exported; the CUDA copy engine moves bytes both ways
              (FIGURE lines: GB/s); with an RDMA device too, the staging
              pipeline runs on real device memory.

   Build: see the Makefile (build/test_gpu). Run: build/test_gpu [test...]. */
#define NIXL_IMPLEMENTATION
#include "nixl_verbs.h"
#include "nixl_posix.h"
#include "nixl_test.h"
#include "xfer_util.h"
#include "log_capture.h"
#include "fake_gpu.h"

#include <sys/mman.h>

#define KiB 1024u
#define MiB (1024u * 1024u)

/* an agent logging into log_capture.h, with one VERBS backend */
static nixl_agent_t *mk_agent(const char *name, const char *params, nixl_backend_t **be) {
    return xu_agent_item(name, nixl_verbs_backend(), params, capture_log_item, be);
}

// >>a stand-in GPU: tests/fake_gpu.h

/* one agent with a stand-in GPU installed */
typedef struct gpu_agent {
    nixl_agent_t *a;
    nixl_backend_t *be;
    fake_gpu gpu;
} gpu_agent;

static int gpu_agent_make(gpu_agent *ga, const char *name, const char *params, size_t gpu_bytes, int ordinal) {
    nixl_copy_ops_t ops;
    fake_init(&ga->gpu, gpu_bytes, ordinal);
    ga->a = mk_agent(name, params, &ga->be);
    ops = fake_ops(&ga->gpu);
    return ga->a && nixl_verbs_set_copy_ops(ga->be, &ops) == NIXL_SUCCESS;
}

static void gpu_agent_free(gpu_agent *ga) {
    nixl_agent_destroy(ga->a);
    CHECKF(ga->gpu.events == 0 && ga->gpu.pinned == 0, "%s: every event destroyed (%ld left), buffers unpinned",
           nt_current, ga->gpu.events);
    fake_free(&ga->gpu);
}

/* a request of `n` descriptors (lmem/laddr[i] -> raddr[i], len[i]) */
static nixl_status_t mk_req(nixl_agent_t *a, const char *remote, nixl_xfer_op_t op, nixl_mem_t lmem,
                            const uintptr_t *l, const uintptr_t *r, const size_t *len, size_t n, uint64_t ldev,
                            const char *notif, nixl_xfer_req_t **out) {
    nixl_desc_t *ld = (nixl_desc_t *)calloc(n, sizeof *ld), *rd = (nixl_desc_t *)calloc(n, sizeof *rd);
    nixl_dlist_t ll = {lmem, ld, n}, rl = {NIXL_DRAM, rd, n};
    nixl_opt_args_t opt;
    nixl_status_t st;
    size_t i;
    for (i = 0; i < n; i++) {
        ld[i].addr = l[i];
        ld[i].len = len[i];
        ld[i].dev_id = ldev;
        rd[i].addr = r[i];
        rd[i].len = len[i];
    }
    memset(&opt, 0, sizeof opt);
    if (notif) {
        opt.notif = notif;
        opt.notif_len = strlen(notif);
        opt.has_notif = 1;
    }
    st = nixl_create_xfer_req(a, op, &ll, &rl, remote, &opt, out);
    free(ld);
    free(rd);
    return st;
}

static nixl_status_t run_req(nixl_agent_t *a, nixl_xfer_req_t *r, nixl_agent_t *other) {
    nixl_status_t st = nixl_post_xfer_req(a, r, NULL);
    if (st != NIXL_IN_PROG) return st;
    return xu_wait(a, r, other, 0);
}

// >>tests: the CUDA driver, anywhere

static void test_driver_absent(void) {
    _nixl_cuda_t cu;
    char why[256] = "";
    CHECK(_nixl_cuda_open(&cu, "libnixl-no-such-cuda.so.1", why, sizeof why) == -1);
    CHECKF(strstr(why, "dlopen(libnixl-no-such-cuda.so.1)") != NULL, "reason: %s", why);
    CHECK(cu.lib == NULL && cu.cuInit == NULL);
    _nixl_cuda_close(&cu); /* closing what never opened is harmless */
}

static _nixl_cuda_t g_cu;
static int g_have_gpu;
static char g_no_gpu_why[300];

static void test_driver_real(void) {
    char why[256] = "";
    int n = 0;
    if (_nixl_cuda_open(&g_cu, NIXL_CUDA_LIB, why, sizeof why) != 0) {
        snprintf(g_no_gpu_why, sizeof g_no_gpu_why, "no CUDA driver here: %s", why);
        CHECKF(why[0] != 0, "a reason is given");
        return;
    }
    {
        _nixl_CUresult (*count)(int *);
        void *sym = dlsym(g_cu.lib, "cuDeviceGetCount");
        memcpy(&count, &sym, sizeof sym);
        if (!count || count(&n) != 0 || n < 1) {
            snprintf(g_no_gpu_why, sizeof g_no_gpu_why, "the CUDA driver sees no GPU");
            return;
        }
    }
    g_have_gpu = 1;
    printf("CUDA driver loaded, %d GPU(s)\n", n);
}

// >>tests: staging with host memory standing in for a GPU (RDMA device)

static void test_vram_without_driver(void) {
    nixl_backend_t *be = NULL;
    nixl_agent_t *a;
    unsigned char *p;
    if (g_have_gpu) {
        SKIP("the CUDA driver is present");
        return;
    }
    a = mk_agent("nodrv", NULL, &be);
    p = (unsigned char *)malloc(64 * KiB);
    CHECK(a != NULL);
    if (a) {
        lc_reset(); /* clear */
        CHECK_ST(xu_reg_mem(a, NIXL_VRAM, (uintptr_t)p, 64 * KiB, 0, 0), NIXL_ERR_NOT_SUPPORTED);
        CHECK(logged_item(NIXL_LOGITEM_CUDA_NO_DRIVER));
        CHECK_ST(xu_reg_mem(a, NIXL_VRAM, (uintptr_t)p, 4 * KiB, 0, 0), NIXL_ERR_NOT_SUPPORTED);
        CHECK(logged_item(NIXL_LOGITEM_CUDA_NO_DRIVER)); /* every refusal says why, not just the first */
        /* DRAM still works */
        CHECK_ST(xu_reg(a, p, 64 * KiB), NIXL_SUCCESS);
        CHECK(nixl_verbs_mem_path(be, p + 100) == NIXL_VERBS_PATH_HOST);
        CHECK_ST(xu_dereg(a, p, 64 * KiB), NIXL_SUCCESS);
        nixl_agent_destroy(a);
    }
    free(p);
}

static void test_stage_register(void) {
    gpu_agent ga;
    unsigned char *host = (unsigned char *)malloc(64 * KiB);
    nixl_copy_ops_t ops;
    nixl_agent_t *forced;
    nixl_backend_t *fbe = NULL;
    CHECK(gpu_agent_make(&ga, "reg", NULL, 1 * MiB, 1));
    if (!ga.a) return;
    lc_reset();
    /* device memory of GPU 1, registered as such: staged, and said so */
    CHECK_ST(xu_reg_mem(ga.a, NIXL_VRAM, (uintptr_t)ga.gpu.mem + 4096, 256 * KiB, 1, 0), NIXL_SUCCESS);
    CHECK(logged_item(NIXL_LOGITEM_VERBS_STAGED));
    CHECK(nixl_verbs_mem_path(ga.be, ga.gpu.mem + 4096) == NIXL_VERBS_PATH_STAGING);
    CHECK(strcmp(nixl_verbs_mem_path_str(nixl_verbs_mem_path(ga.be, ga.gpu.mem + 8192)), "staging") == 0);
    CHECK(nixl_verbs_mem_path(ga.be, ga.gpu.mem) == NIXL_VERBS_PATH_NONE);
    /* a host pointer passed as VRAM, a dev_id that is not its GPU, a region
       past its allocation: errors that say so */
    CHECK_ST(xu_reg_mem(ga.a, NIXL_VRAM, (uintptr_t)host, 64 * KiB, 1, 0), NIXL_ERR_INVALID_PARAM);
    CHECK(logged_item(NIXL_LOGITEM_VRAM_NOT_DEVICE));
    CHECK_ST(xu_reg_mem(ga.a, NIXL_VRAM, (uintptr_t)ga.gpu.mem + 512 * KiB, 64 * KiB, 0, 0), NIXL_ERR_INVALID_PARAM);
    CHECK(logged_item(NIXL_LOGITEM_VRAM_WRONG_GPU));
    CHECK_ST(xu_reg_mem(ga.a, NIXL_VRAM, (uintptr_t)ga.gpu.mem + 1 * MiB - 4096, 8192, 1, 0), NIXL_ERR_INVALID_PARAM);
    CHECK(logged_item(NIXL_LOGITEM_VRAM_PAST_ALLOCATION));
    /* the copy engine cannot change under staged regions */
    ops = fake_ops(&ga.gpu);
    CHECK_ST(nixl_verbs_set_copy_ops(ga.be, &ops), NIXL_ERR_NOT_ALLOWED);
    ops.copy = NULL;
    CHECK_ST(nixl_verbs_set_copy_ops(ga.be, &ops), NIXL_ERR_INVALID_PARAM);
    CHECK(logged_item(NIXL_LOGITEM_COPY_OPS_INCOMPLETE));
    CHECK_ST(xu_reg_mem(ga.a, NIXL_VRAM, (uintptr_t)ga.gpu.mem + 4096, 256 * KiB, 1, 1), NIXL_SUCCESS);
    ops = fake_ops(&ga.gpu);
    CHECK_ST(nixl_verbs_set_copy_ops(ga.be, &ops), NIXL_SUCCESS);
    CHECK_ST(nixl_verbs_set_copy_ops(NULL, &ops), NIXL_ERR_INVALID_PARAM);
    gpu_agent_free(&ga);
    /* a forced GPUDirect path that is not there: NOT_SUPPORTED, not staging */
    forced = mk_agent("forced", "vram_path=dmabuf", &fbe);
    CHECK(forced != NULL);
    if (forced) {
        fake_gpu g;
        fake_init(&g, 256 * KiB, 0);
        ops = fake_ops(&g);
        CHECK_ST(nixl_verbs_set_copy_ops(fbe, &ops), NIXL_SUCCESS);
        lc_reset();
        CHECK_ST(xu_reg_mem(forced, NIXL_VRAM, (uintptr_t)g.mem, 64 * KiB, 0, 0), NIXL_ERR_NOT_SUPPORTED);
        CHECK(logged_item(NIXL_LOGITEM_VERBS_VRAM_PATH_UNAVAILABLE));
        nixl_agent_destroy(forced);
        fake_free(&g);
    }
    CHECK(mk_agent("badpath", "vram_path=fast", &fbe) == NULL);
    CHECK(logged_item(NIXL_LOGITEM_VERBS_BAD_VRAM_PATH));
    free(host);
}

typedef struct pair {
    gpu_agent g;      /* initiator, with the stand-in GPU */
    nixl_agent_t *b;  /* target, host memory */
    unsigned char *hb;
    size_t hb_len;
} pair;

static int pair_make(pair *p, const char *params, size_t gpu_bytes, size_t host_bytes) {
    memset(p, 0, sizeof *p);
    if (!gpu_agent_make(&p->g, "gpu-a", params, gpu_bytes, 0)) return 0;
    p->b = mk_agent("host-b", NULL, NULL);
    p->hb = (unsigned char *)calloc(1, host_bytes);
    p->hb_len = host_bytes;
    return p->b && p->hb && xu_reg_mem(p->g.a, NIXL_VRAM, (uintptr_t)p->g.gpu.mem, gpu_bytes, 0, 0) == NIXL_SUCCESS &&
           xu_reg(p->b, p->hb, host_bytes) == NIXL_SUCCESS && xu_share_md(p->b, p->g.a);
}

static void pair_free(pair *p) {
    if (p->b) nixl_agent_destroy(p->b);
    gpu_agent_free(&p->g);
    free(p->hb);
}

/* the initiator's bounce buffers for the target (engine internals) */
static _nixl_verbs_stage_t *peer_stage(pair *p) {
    _nixl_verbs_peer_t *peer = _nixl_verbs_peer_find((_nixl_verbs_engine_t *)p->g.be->engine, "host-b");
    return peer ? peer->stage : NULL;
}

/* one descriptor both ways through the bounce buffers; the notification
   finds the data complete at the target (WRITE) */
static void stage_one(pair *p, size_t off, size_t len, unsigned seed) {
    uintptr_t l = (uintptr_t)p->g.gpu.mem + off, r = (uintptr_t)p->hb + off;
    nixl_xfer_req_t *req = NULL;
    xu_notes s;
    nt_fill((void *)l, len, seed);
    memset(p->hb + off, 0, len);
    memset(&s, 0, sizeof s);
    s.check_buf = p->hb + off;
    s.check_len = len;
    s.check_seed = seed;
    CHECK_ST(mk_req(p->g.a, "host-b", NIXL_WRITE, NIXL_VRAM, &l, &r, &len, 1, 0, "w", &req), NIXL_SUCCESS);
    if (req) {
        CHECKF(run_req(p->g.a, req, p->b) == NIXL_SUCCESS, "staged WRITE of %zu bytes at %zu", len, off);
        nixl_release_xfer_req(p->g.a, req);
    }
    CHECK(xu_wait_notes(p->b, &s, 1, p->g.a, 0));
    CHECKF(s.check_ok, "WRITE of %zu bytes: all of it at the target when the notification came", len);
    CHECKF(nt_verify(p->hb + off, len, seed), "WRITE of %zu bytes at %zu", len, off);
    /* READ it back into zeroed "device" memory */
    memset((void *)l, 0, len);
    nt_fill(p->hb + off, len, seed + 1);
    req = NULL;
    CHECK_ST(mk_req(p->g.a, "host-b", NIXL_READ, NIXL_VRAM, &l, &r, &len, 1, 0, NULL, &req), NIXL_SUCCESS);
    if (req) {
        CHECKF(run_req(p->g.a, req, p->b) == NIXL_SUCCESS, "staged READ of %zu bytes at %zu", len, off);
        nixl_release_xfer_req(p->g.a, req);
    }
    CHECKF(nt_verify((void *)l, len, seed + 1), "READ of %zu bytes at %zu: in device memory", len, off);
}

static void test_stage_sizes(void) {
    static const size_t sizes[] = {1, 4095, 4096, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1, 1 * MiB + 3, 4 * MiB};
    pair p;
    size_t i;
    CHECK(pair_make(&p, "stage_bufs=4,stage_size=65536", 8 * MiB, 8 * MiB));
    for (i = 0; i < sizeof sizes / sizeof sizes[0] && p.b; i++) stage_one(&p, i % 2 ? 77 : 0, sizes[i], 300 + (unsigned)i);
    /* 4 MiB in 64 KiB slices through 4 buffers: copies overlapped RDMA */
    if (p.b) {
        _nixl_verbs_stage_t *st = peer_stage(&p);
        CHECK(st != NULL);
        if (st) {
            CHECKF(st->overlapped > 0, "copies started while RDMA was in flight: %llu of %llu",
                   (unsigned long long)st->overlapped, (unsigned long long)st->copies);
            printf("FIGURE staging_overlap copies=%llu overlapped=%llu\n", (unsigned long long)st->copies,
                   (unsigned long long)st->overlapped);
        }
        CHECK(p.g.gpu.pinned == 1);
    }
    pair_free(&p);
}

/* one request mixing staged VRAM and host descriptors, reposted */
static void test_stage_mixed(void) {
    enum { N = 300 };
    pair p;
    uintptr_t l[N], r[N];
    size_t len[N], i, off = 0;
    unsigned char *host = (unsigned char *)calloc(1, 4 * MiB);
    int round;
    CHECK(pair_make(&p, "stage_bufs=2,stage_size=16384", 4 * MiB, 4 * MiB));
    if (!p.b || !host) {
        pair_free(&p);
        free(host);
        return;
    }
    CHECK_ST(xu_reg(p.g.a, host, 4 * MiB), NIXL_SUCCESS);
    /* 300 descriptors of 1..12000 bytes at odd offsets through 2 buffers of
       16 KiB: slices end mid-descriptor, buffers are reused many times */
    for (i = 0; i < N; i++) {
        len[i] = 1 + (i * 7919) % 12000;
        l[i] = (uintptr_t)p.g.gpu.mem + off;
        r[i] = (uintptr_t)p.hb + off;
        off += len[i] + (i % 3) * 13;
    }
    for (round = 0; round < 3; round++) {
        nixl_xfer_req_t *w = NULL, *rd = NULL;
        for (i = 0; i < N; i++) nt_fill((void *)l[i], len[i], 1000u * (unsigned)round + (unsigned)i);
        memset(p.hb, 0, 4 * MiB);
        CHECK_ST(mk_req(p.g.a, "host-b", NIXL_WRITE, NIXL_VRAM, l, r, len, N, 0, NULL, &w), NIXL_SUCCESS);
        if (!w) break;
        CHECK_ST(run_req(p.g.a, w, p.b), NIXL_SUCCESS);
        for (i = 0; i < N; i++)
            if (!nt_verify((void *)r[i], len[i], 1000u * (unsigned)round + (unsigned)i)) break;
        CHECKF(i == N, "round %d: descriptor %zu of %d arrived intact", round, i, N);
        /* and back, the prepared READ posted twice */
        memset(p.g.gpu.mem, 0, 4 * MiB);
        CHECK_ST(mk_req(p.g.a, "host-b", NIXL_READ, NIXL_VRAM, l, r, len, N, 0, NULL, &rd), NIXL_SUCCESS);
        if (rd) {
            CHECK_ST(run_req(p.g.a, rd, p.b), NIXL_SUCCESS);
            memset(p.g.gpu.mem, 0, 4 * MiB);
            CHECK_ST(run_req(p.g.a, rd, p.b), NIXL_SUCCESS);
            for (i = 0; i < N; i++)
                if (!nt_verify((void *)l[i], len[i], 1000u * (unsigned)round + (unsigned)i)) break;
            CHECKF(i == N, "round %d: READ descriptor %zu of %d intact in device memory", round, i, N);
            nixl_release_xfer_req(p.g.a, rd);
        }
        nixl_release_xfer_req(p.g.a, w);
    }
    /* a host-memory request next to a staged one, same peer, both in flight */
    {
        nixl_xfer_req_t *w = NULL, *h = NULL;
        uintptr_t hl = (uintptr_t)host, hr = (uintptr_t)p.hb + 3 * MiB;
        size_t hlen = 1 * MiB;
        nt_fill(host, hlen, 77);
        for (i = 0; i < N; i++) nt_fill((void *)l[i], len[i], 5000u + (unsigned)i);
        CHECK_ST(mk_req(p.g.a, "host-b", NIXL_WRITE, NIXL_VRAM, l, r, len, N, 0, NULL, &w), NIXL_SUCCESS);
        CHECK_ST(mk_req(p.g.a, "host-b", NIXL_WRITE, NIXL_DRAM, &hl, &hr, &hlen, 1, 0, NULL, &h), NIXL_SUCCESS);
        if (w && h) {
            nixl_status_t s1 = nixl_post_xfer_req(p.g.a, w, NULL), s2 = nixl_post_xfer_req(p.g.a, h, NULL);
            CHECK(s1 == NIXL_IN_PROG || s1 == NIXL_SUCCESS);
            CHECK(s2 == NIXL_IN_PROG || s2 == NIXL_SUCCESS);
            CHECK_ST(xu_wait(p.g.a, w, p.b, 0), NIXL_SUCCESS);
            CHECK_ST(xu_wait(p.g.a, h, p.b, 0), NIXL_SUCCESS);
            CHECK(nt_verify(p.hb + 3 * MiB, hlen, 77));
            for (i = 0; i < N; i++)
                if (!nt_verify((void *)r[i], len[i], 5000u + (unsigned)i)) break;
            CHECK(i == N);
        }
        if (w) nixl_release_xfer_req(p.g.a, w);
        if (h) nixl_release_xfer_req(p.g.a, h);
    }
    CHECK_ST(xu_dereg(p.g.a, host, 4 * MiB), NIXL_SUCCESS);
    pair_free(&p);
    free(host);
}

/* a peer's staged VRAM cannot be the remote side: refused at prep */
static void test_stage_remote_refused(void) {
    gpu_agent t;
    nixl_agent_t *a = mk_agent("init", NULL, NULL);
    unsigned char *buf = (unsigned char *)calloc(1, 64 * KiB);
    CHECK(gpu_agent_make(&t, "gpu-target", NULL, 1 * MiB, 0));
    CHECK(a != NULL);
    if (a && t.a) {
        nixl_desc_t ld = {(uintptr_t)buf, 4096, 0}, rd = {(uintptr_t)t.gpu.mem, 4096, 0};
        nixl_dlist_t ll = {NIXL_DRAM, &ld, 1}, rl = {NIXL_VRAM, &rd, 1};
        nixl_xfer_req_t *req = NULL;
        CHECK_ST(xu_reg_mem(t.a, NIXL_VRAM, (uintptr_t)t.gpu.mem, 1 * MiB, 0, 0), NIXL_SUCCESS);
        CHECK_ST(xu_reg(a, buf, 64 * KiB), NIXL_SUCCESS);
        CHECK(xu_share_md(t.a, a));
        lc_reset();
        CHECK_ST(nixl_create_xfer_req(a, NIXL_WRITE, &ll, &rl, "gpu-target", NULL, &req), NIXL_ERR_NOT_SUPPORTED);
        CHECK(logged_item(NIXL_LOGITEM_VERBS_REMOTE_STAGED));
        CHECK(req == NULL);
        /* its own staged VRAM as the remote of a loopback transfer: the same */
        {
            nixl_desc_t d2 = {(uintptr_t)t.gpu.mem + 8192, 4096, 0};
            nixl_dlist_t l2 = {NIXL_VRAM, &d2, 1};
            CHECK_ST(nixl_create_xfer_req(t.a, NIXL_WRITE, &l2, &rl, "gpu-target", NULL, &req),
                     NIXL_ERR_NOT_SUPPORTED);
        }
    }
    if (a) nixl_agent_destroy(a);
    gpu_agent_free(&t);
    free(buf);
}

/* loopback: from staged VRAM into our own host memory and back */
static void test_stage_loopback(void) {
    gpu_agent g;
    unsigned char *host = (unsigned char *)calloc(1, 2 * MiB);
    CHECK(gpu_agent_make(&g, "self", "stage_size=32768,stage_bufs=3", 2 * MiB, 0));
    if (g.a) {
        uintptr_t l = (uintptr_t)g.gpu.mem, r = (uintptr_t)host;
        size_t len = 2 * MiB - 5;
        nixl_xfer_req_t *req = NULL;
        CHECK_ST(xu_reg_mem(g.a, NIXL_VRAM, l, 2 * MiB, 0, 0), NIXL_SUCCESS);
        CHECK_ST(xu_reg(g.a, host, 2 * MiB), NIXL_SUCCESS);
        nt_fill(g.gpu.mem, len, 41);
        CHECK_ST(mk_req(g.a, "self", NIXL_WRITE, NIXL_VRAM, &l, &r, &len, 1, 0, NULL, &req), NIXL_SUCCESS);
        if (req) {
            CHECK_ST(run_req(g.a, req, NULL), NIXL_SUCCESS);
            CHECK(nt_verify(host, len, 41));
            nixl_release_xfer_req(g.a, req);
        }
        nt_fill(host, len, 42);
        req = NULL;
        CHECK_ST(mk_req(g.a, "self", NIXL_READ, NIXL_VRAM, &l, &r, &len, 1, 0, NULL, &req), NIXL_SUCCESS);
        if (req) {
            CHECK_ST(run_req(g.a, req, NULL), NIXL_SUCCESS);
            CHECK(nt_verify(g.gpu.mem, len, 42));
            nixl_release_xfer_req(g.a, req);
        }
    }
    gpu_agent_free(&g);
    free(host);
}

/* A copy that fails to start, or fails when done, fails its request with a
   log line; the bounce buffers come back and the next request works. */
static void test_stage_copy_failures(void) {
    pair p;
    int op;
    CHECK(pair_make(&p, "stage_bufs=2,stage_size=16384", 1 * MiB, 1 * MiB));
    for (op = 0; op < 4 && p.b; op++) {
        uintptr_t l = (uintptr_t)p.g.gpu.mem, r = (uintptr_t)p.hb;
        size_t len = 256 * KiB;
        nixl_xfer_op_t xop = op % 2 ? NIXL_READ : NIXL_WRITE;
        nixl_xfer_req_t *req = NULL;
        p.g.gpu.copies = 0;
        p.g.gpu.fail_copy_at = op < 2 ? 5 : 0;
        p.g.gpu.fail_done_at = op < 2 ? 0 : 3;
        lc_reset();
        CHECK_ST(mk_req(p.g.a, "host-b", xop, NIXL_VRAM, &l, &r, &len, 1, 0, "never", &req), NIXL_SUCCESS);
        if (!req) continue;
        CHECKF(run_req(p.g.a, req, p.b) == NIXL_ERR_BACKEND, "case %d fails", op);
        CHECKF(logged(op < 2 ? "failed: cannot start a" : "a copy between GPU and bounce buffer failed"),
               "case %d: the log says why", op);
        nixl_release_xfer_req(p.g.a, req);
        /* drain what was in flight, then the same transfer works */
        p.g.gpu.fail_copy_at = p.g.gpu.fail_done_at = 0;
        stage_one(&p, 0, len, 90 + (unsigned)op);
    }
    pair_free(&p);
}

/* Released while its copies and WRs are in flight: nothing of it is touched
   afterwards, the buffers come back; destroying the agent with copies in
   flight neither hangs nor leaks. */
static void test_stage_release_in_flight(void) {
    pair p;
    int i;
    CHECK(pair_make(&p, "stage_bufs=4,stage_size=16384", 2 * MiB, 2 * MiB));
    if (p.b) stage_one(&p, 0, 64 * KiB, 3); /* connected: what follows is really in flight */
    for (i = 0; i < 6 && p.b; i++) {
        uintptr_t l = (uintptr_t)p.g.gpu.mem, r = (uintptr_t)p.hb;
        size_t len = 2 * MiB;
        nixl_xfer_req_t *req = NULL;
        nixl_status_t st;
        p.g.gpu.delay = 40;
        CHECK_ST(mk_req(p.g.a, "host-b", i % 2 ? NIXL_READ : NIXL_WRITE, NIXL_VRAM, &l, &r, &len, 1, 0, NULL, &req),
                 NIXL_SUCCESS);
        if (!req) continue;
        st = nixl_post_xfer_req(p.g.a, req, NULL);
        CHECK(st == NIXL_IN_PROG);
        nixl_progress(p.g.a);
        nixl_progress(p.b);
        {
            _nixl_verbs_stage_t *st0 = peer_stage(&p);
            CHECKF(st0 && st0->nfree < st0->count, "round %d: bounce buffers in use at the release", i);
        }
        CHECK_ST(nixl_release_xfer_req(p.g.a, req), NIXL_SUCCESS);
    }
    if (p.b) {
        /* the copy engine cannot change while released requests' copies run */
        nixl_copy_ops_t ops = fake_ops(&p.g.gpu);
        uint64_t end = nixl_now_us() + XU_WAIT_US;
        _nixl_verbs_stage_t *st = peer_stage(&p);
        CHECK_ST(xu_reg_mem(p.g.a, NIXL_VRAM, (uintptr_t)p.g.gpu.mem, p.g.gpu.size, 0, 1), NIXL_SUCCESS);
        CHECK(st->nfree < st->count);
        CHECK_ST(nixl_verbs_set_copy_ops(p.g.be, &ops), NIXL_ERR_NOT_ALLOWED);
        CHECK(logged_item(NIXL_LOGITEM_COPY_ENGINE_BUSY));
        while (st->nfree < st->count && nixl_now_us() < end) {
            nixl_progress(p.g.a);
            nixl_progress(p.b);
        }
        CHECKF(st->nfree == st->count, "every bounce buffer came back (%u of %u)", (unsigned)st->nfree,
               (unsigned)st->count);
        CHECK_ST(nixl_verbs_set_copy_ops(p.g.be, &ops), NIXL_SUCCESS);
        CHECK_ST(xu_reg_mem(p.g.a, NIXL_VRAM, (uintptr_t)p.g.gpu.mem, p.g.gpu.size, 0, 0), NIXL_SUCCESS);
        p.g.gpu.delay = 2;
        stage_one(&p, 4096, 512 * KiB, 7);
        {   /* leave copies running at destroy */
            uintptr_t l = (uintptr_t)p.g.gpu.mem, r = (uintptr_t)p.hb;
            size_t len = 1 * MiB;
            nixl_xfer_req_t *req = NULL;
            p.g.gpu.delay = 50;
            CHECK_ST(mk_req(p.g.a, "host-b", NIXL_WRITE, NIXL_VRAM, &l, &r, &len, 1, 0, NULL, &req), NIXL_SUCCESS);
            if (req) CHECK(nixl_post_xfer_req(p.g.a, req, NULL) == NIXL_IN_PROG);
        }
    }
    pair_free(&p);
}

/* The target goes away while a staged WRITE and a staged READ are in
   flight: both end in REMOTE_DISCONNECT (no hang), the bounce buffers come
   back, and the initiator then works with a new target. */
static void test_stage_peer_gone(void) {
    pair p;
    nixl_xfer_req_t *w = NULL, *r = NULL;
    CHECK(pair_make(&p, "stage_bufs=4,stage_size=16384", 4 * MiB, 4 * MiB));
    if (p.b) stage_one(&p, 0, 64 * KiB, 5); /* connected: the requests below are on the wire */
    if (p.b) {
        uintptr_t l = (uintptr_t)p.g.gpu.mem, rr = (uintptr_t)p.hb, l2 = l + 2 * MiB, r2 = rr + 2 * MiB;
        size_t len = 2 * MiB;
        p.g.gpu.delay = 20;
        CHECK_ST(mk_req(p.g.a, "host-b", NIXL_WRITE, NIXL_VRAM, &l, &rr, &len, 1, 0, NULL, &w), NIXL_SUCCESS);
        CHECK_ST(mk_req(p.g.a, "host-b", NIXL_READ, NIXL_VRAM, &l2, &r2, &len, 1, 0, NULL, &r), NIXL_SUCCESS);
        if (w && r) {
            CHECK(nixl_post_xfer_req(p.g.a, w, NULL) == NIXL_IN_PROG);
            CHECK(nixl_post_xfer_req(p.g.a, r, NULL) == NIXL_IN_PROG);
            nixl_progress(p.g.a);
            nixl_progress(p.b);
            CHECK(peer_stage(&p) && peer_stage(&p)->nfree < peer_stage(&p)->count);
            nixl_agent_destroy(p.b);
            p.b = NULL;
            CHECK_ST(xu_wait(p.g.a, w, NULL, 0), NIXL_ERR_REMOTE_DISCONNECT);
            CHECK_ST(xu_wait(p.g.a, r, NULL, 0), NIXL_ERR_REMOTE_DISCONNECT);
        }
        if (w) nixl_release_xfer_req(p.g.a, w);
        if (r) nixl_release_xfer_req(p.g.a, r);
        /* a new target, the same staged memory */
        p.g.gpu.delay = 3;
        p.b = mk_agent("host-b2", NULL, NULL);
        CHECK(p.b && xu_reg(p.b, p.hb, p.hb_len) == NIXL_SUCCESS && xu_share_md(p.b, p.g.a));
        if (p.b) {
            nixl_xfer_req_t *req = NULL;
            nt_fill(p.g.gpu.mem, len, 66);
            memset(p.hb, 0, len);
            CHECK_ST(mk_req(p.g.a, "host-b2", NIXL_WRITE, NIXL_VRAM, &l, &rr, &len, 1, 0, NULL, &req), NIXL_SUCCESS);
            if (req) {
                CHECK_ST(run_req(p.g.a, req, p.b), NIXL_SUCCESS);
                CHECK(nt_verify(p.hb, len, 66));
                nixl_release_xfer_req(p.g.a, req);
            }
        }
    }
    pair_free(&p);
}

/* Figures, not assertions: staged WRITE throughput next to a host-memory
   WRITE of the same size on the same connection (the stand-in GPU copies
   with memcpy, so this measures the pipeline's own cost). */
static void test_stage_throughput(void) {
    const size_t n = 16 * MiB;
    pair p;
    unsigned char *host = (unsigned char *)malloc(n);
    CHECK(pair_make(&p, NULL, n, n));
    if (p.b && host && xu_reg(p.g.a, host, n) == NIXL_SUCCESS) {
        uintptr_t l[2] = {(uintptr_t)p.g.gpu.mem, (uintptr_t)host}, r = (uintptr_t)p.hb;
        double gbs[2];
        int k;
        p.g.gpu.delay = 1;
        for (k = 0; k < 2; k++) {
            nixl_xfer_req_t *req = NULL;
            size_t len = n;
            uint64_t t0;
            nt_fill((void *)l[k], n, 20u + (unsigned)k);
            CHECK_ST(mk_req(p.g.a, "host-b", NIXL_WRITE, k ? NIXL_DRAM : NIXL_VRAM, &l[k], &r, &len, 1, 0, NULL, &req),
                     NIXL_SUCCESS);
            if (!req) break;
            CHECK_ST(run_req(p.g.a, req, p.b), NIXL_SUCCESS); /* warm: connection, bounce buffers */
            t0 = nixl_now_us();
            CHECK_ST(run_req(p.g.a, req, p.b), NIXL_SUCCESS);
            gbs[k] = (double)n / 1e3 / (double)(nixl_now_us() - t0 + 1);
            CHECK(nt_verify(p.hb, n, 20u + (unsigned)k));
            nixl_release_xfer_req(p.g.a, req);
        }
        if (k == 2)
            printf("FIGURE staged_write_16MiB GB/s=%.3f host_write_16MiB GB/s=%.3f ratio=%.2f\n", gbs[0], gbs[1],
                   gbs[0] / gbs[1]);
        CHECK_ST(xu_dereg(p.g.a, host, n), NIXL_SUCCESS);
    }
    pair_free(&p);
    free(host);
}

// >>tests: a real GPU

typedef _nixl_CUresult (*cu_alloc_t)(_nixl_CUdeviceptr *, size_t);
typedef _nixl_CUresult (*cu_free_t)(_nixl_CUdeviceptr);
typedef _nixl_CUresult (*cu_sync_t)(void);
static cu_alloc_t cu_alloc;
static cu_free_t cu_free;

static int gpu_ready(void) {
    void *sym;
    if (!g_have_gpu) {
        SKIP(g_no_gpu_why[0] ? g_no_gpu_why : "no GPU");
        return 0;
    }
    sym = dlsym(g_cu.lib, "cuMemAlloc_v2");
    memcpy(&cu_alloc, &sym, sizeof sym);
    sym = dlsym(g_cu.lib, "cuMemFree_v2");
    memcpy(&cu_free, &sym, sizeof sym);
    if (!cu_alloc || !cu_free || _nixl_cuda_enter(&g_cu, 0) != 0) { /* stays current for cuMemAlloc */
        SKIP("cannot make GPU 0's context current");
        return 0;
    }
    return 1;
}

static void test_gpu_detect(void) {
    _nixl_CUdeviceptr d = 0;
    int dev = -1, fd = -1;
    uintptr_t base = 0;
    size_t size = 0;
    char *host = (char *)malloc(4096);
    if (!gpu_ready()) {
        free(host);
        return;
    }
    CHECK(cu_alloc(&d, 8 * MiB) == 0);
    CHECK(_nixl_cuda_query(&g_cu, (uintptr_t)d + 4096, 4096, &dev, &base, &size) == 0);
    CHECKF(dev == 0 && base == (uintptr_t)d && size >= 8 * MiB, "ordinal %d base %p size %zu", dev, (void *)base,
           size);
    CHECK(_nixl_cuda_query(&g_cu, (uintptr_t)host, 4096, &dev, &base, &size) == -1);
    if (g_cu.cuMemGetHandleForAddressRange) {
        _nixl_CUresult rc = g_cu.cuMemGetHandleForAddressRange(&fd, d, 8 * MiB,
                                                               _NIXL_CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0);
        if (rc == 0) {
            CHECK(fd >= 0);
            printf("dma-buf fd exported for 8 MiB of GPU memory\n");
            close(fd);
        } else {
            printf("skip dma-buf export: cuMemGetHandleForAddressRange -> %d (driver or kernel without dma-buf)\n",
                   (int)rc);
            nt_skipped++;
        }
    } else {
        SKIP("this CUDA driver has no cuMemGetHandleForAddressRange");
    }
    cu_free(d);
    free(host);
}

/* the CUDA copy engine as staging uses it: pinned bounce buffers, one event
   each, pipelined copies; bytes checked, GB/s printed */
static void test_gpu_copy_engine(void) {
    enum { NB = 8 };
    const size_t slice = 1 * MiB, total = 256 * MiB;
    nixl_copy_ops_t o = _nixl_cuda_copy_ops(&g_cu);
    _nixl_CUdeviceptr d = 0;
    unsigned char *bounce, *src;
    void *ev[NB];
    int dir, i;
    if (!gpu_ready()) return;
    bounce = (unsigned char *)malloc(NB * slice);
    src = (unsigned char *)malloc(total);
    CHECK(bounce && src && cu_alloc(&d, total) == 0);
    CHECK(o.pin(o.ctx, 0, bounce, NB * slice) == 0);
    for (i = 0; i < NB; i++) CHECK(o.event_create(o.ctx, 0, &ev[i]) == 0);
    nt_fill(src, total, 5);
    for (dir = 1; dir >= 0; dir--) { /* host -> device, then back */
        uint64_t t0 = nixl_now_us();
        size_t off;
        for (off = 0; off < total; off += slice) {
            int k = (int)((off / slice) % NB);
            while (off >= NB * slice && o.event_done(o.ctx, ev[k]) == 0) {
            }
            if (dir) memcpy(bounce + (size_t)k * slice, src + off, slice);
            CHECK(o.copy(o.ctx, 0, dir, bounce + (size_t)k * slice, (uintptr_t)d + off, slice, ev[k]) == 0);
        }
        for (i = 0; i < NB; i++)
            while (o.event_done(o.ctx, ev[i]) == 0) {
            }
        printf("FIGURE gpu_staging_copy_%s GB/s=%.2f\n", dir ? "h2d" : "d2h",
               (double)total / 1e3 / (double)(nixl_now_us() - t0 + 1));
    }
    /* bytes: device -> host of a few slices, checked against the source */
    for (i = 0; i < 4; i++) {
        size_t off = (size_t)i * 61 * slice;
        memset(bounce, 0, slice);
        CHECK(o.copy(o.ctx, 0, 0, bounce, (uintptr_t)d + off, slice, ev[0]) == 0);
        while (o.event_done(o.ctx, ev[0]) == 0) {
        }
        CHECKF(memcmp(bounce, src + off, slice) == 0, "slice at %zu MiB came back intact", off / MiB);
    }
    for (i = 0; i < NB; i++) o.event_destroy(o.ctx, ev[i]);
    o.unpin(o.ctx, 0, bounce);
    cu_free(d);
    free(bounce);
    free(src);
}

/* GPU memory to a file and back through the file backend's staging with
   the CUDA copy engine (its default): bytes checked, GB/s printed */
static void test_gpu_posix_file(void) {
    const size_t n = 64 * MiB;
    nixl_copy_ops_t o;
    nixl_agent_t *a = NULL;
    nixl_backend_t *be = NULL;
    _nixl_CUdeviceptr d = 0;
    unsigned char *host = NULL, *file = NULL;
    void *ev = NULL;
    char path[] = "/var/tmp/nixl-gpu-posix-XXXXXX";
    int fd = -1, dir;
    if (!gpu_ready()) return;
    o = _nixl_cuda_copy_ops(&g_cu);
    host = (unsigned char *)malloc(n);
    file = (unsigned char *)malloc(n);
    fd = mkstemp(path);
    a = xu_agent_item("gpu-file", nixl_posix_backend(), "stage_bufs=16,stage_size=2097152", capture_log_item, &be);
    if (!CHECK(host && file && fd >= 0 && a && cu_alloc(&d, n) == 0 && o.event_create(o.ctx, 0, &ev) == 0)) goto out;
    unlink(path);
    nt_fill(host, n, 21); /* the device gets the pattern through the copy engine itself */
    CHECK(o.copy(o.ctx, 0, 1, host, (uintptr_t)d, n, ev) == 0);
    while (o.event_done(o.ctx, ev) == 0) {
    }
    CHECK_ST(xu_reg_mem(a, NIXL_VRAM, (uintptr_t)d, n, 0, 0), NIXL_SUCCESS);
    {
        nixl_desc_t fdsc = {0, n, (uint64_t)fd};
        nixl_dlist_t fl = {NIXL_FILE, &fdsc, 1};
        CHECK_ST(nixl_register_mem(a, &fl, NULL), NIXL_SUCCESS);
    }
    for (dir = 0; dir < 2; dir++) { /* WRITE device -> file, then READ it back into the zeroed device */
        nixl_desc_t md = {(uintptr_t)d, n, 0}, fdsc = {0, n, (uint64_t)fd};
        nixl_dlist_t ml = {NIXL_VRAM, &md, 1}, fl = {NIXL_FILE, &fdsc, 1};
        nixl_xfer_req_t *r = NULL;
        uint64_t t0 = nixl_now_us();
        CHECK_ST(nixl_create_xfer_req(a, dir ? NIXL_READ : NIXL_WRITE, &ml, &fl, "gpu-file", NULL, &r), NIXL_SUCCESS);
        if (!r) break;
        CHECK_ST(run_req(a, r, NULL), NIXL_SUCCESS);
        printf("FIGURE gpu_posix_%s GB/s=%.2f\n", dir ? "read" : "write",
               (double)n / 1e3 / (double)(nixl_now_us() - t0 + 1));
        nixl_release_xfer_req(a, r);
        if (!dir) {
            CHECK(pread(fd, file, n, 0) == (ssize_t)n && memcmp(file, host, n) == 0);
            memset(file, 0, n);
            CHECK(o.copy(o.ctx, 0, 1, file, (uintptr_t)d, n, ev) == 0); /* zero the device */
            while (o.event_done(o.ctx, ev) == 0) {
            }
        }
    }
    CHECK(o.copy(o.ctx, 0, 0, file, (uintptr_t)d, n, ev) == 0);
    while (o.event_done(o.ctx, ev) == 0) {
    }
    CHECKF(memcmp(file, host, n) == 0, "64 MiB came back from the file into GPU memory intact");
out:
    if (a) nixl_agent_destroy(a);
    if (ev) o.event_destroy(o.ctx, ev);
    if (d) cu_free(d);
    if (fd >= 0) close(fd);
    free(host);
    free(file);
}

/* the whole staging pipeline on real device memory (GPU + RDMA device) */
static void test_gpu_staging_rdma(void) {
    nixl_backend_t *be = NULL;
    nixl_agent_t *a;
    _nixl_CUdeviceptr d = 0;
    unsigned char *host, *check;
    const size_t n = 64 * MiB;
    nixl_copy_ops_t o;
    void *ev = NULL;
    if (!gpu_ready()) return;
    if (!xu_have_rdma()) {
        SKIP("no RDMA device next to the GPU");
        return;
    }
    a = mk_agent("gpu-self", "vram_path=staging", &be);
    host = (unsigned char *)malloc(n);
    check = (unsigned char *)malloc(n);
    o = _nixl_cuda_copy_ops(&g_cu);
    CHECK(a && host && check && cu_alloc(&d, n) == 0 && o.event_create(o.ctx, 0, &ev) == 0);
    if (a && d) {
        uintptr_t l = (uintptr_t)d, r = (uintptr_t)host;
        size_t len = n;
        nixl_xfer_req_t *req = NULL;
        uint64_t t0;
        CHECK_ST(xu_reg_mem(a, NIXL_VRAM, l, n, 0, 0), NIXL_SUCCESS);
        CHECK(nixl_verbs_mem_path(be, (void *)l) == NIXL_VERBS_PATH_STAGING);
        CHECK_ST(xu_reg(a, host, n), NIXL_SUCCESS);
        nt_fill(host, n, 9);
        CHECK_ST(mk_req(a, "gpu-self", NIXL_READ, NIXL_VRAM, &l, &r, &len, 1, 0, NULL, &req), NIXL_SUCCESS);
        if (req) { /* host -> GPU by READ, then GPU -> host by WRITE into a zeroed buffer */
            t0 = nixl_now_us();
            CHECK_ST(run_req(a, req, NULL), NIXL_SUCCESS);
            printf("FIGURE gpu_staged_read GB/s=%.2f\n", (double)n / 1e3 / (double)(nixl_now_us() - t0 + 1));
            nixl_release_xfer_req(a, req);
            memset(host, 0, n);
            req = NULL;
            CHECK_ST(mk_req(a, "gpu-self", NIXL_WRITE, NIXL_VRAM, &l, &r, &len, 1, 0, NULL, &req), NIXL_SUCCESS);
            t0 = nixl_now_us();
            CHECK_ST(run_req(a, req, NULL), NIXL_SUCCESS);
            printf("FIGURE gpu_staged_write GB/s=%.2f\n", (double)n / 1e3 / (double)(nixl_now_us() - t0 + 1));
            nixl_release_xfer_req(a, req);
            CHECK(nt_verify(host, n, 9));
        }
        CHECK_ST(xu_reg_mem(a, NIXL_VRAM, l, n, 0, 1), NIXL_SUCCESS);
    }
    if (ev) o.event_destroy(o.ctx, ev);
    if (a) nixl_agent_destroy(a);
    if (d) cu_free(d);
    free(host);
    free(check);
}

int main(int argc, char **argv) {
    nt_init(argc, argv);
    setvbuf(stdout, NULL, _IOLBF, 0);
    NT_RUN(test_driver_absent);
    nt_current = "test_driver_real";
    test_driver_real(); /* always: the groups below depend on it */
    if (!xu_have_rdma()) {
        nt_current = "staging";
        SKIP("no RDMA device (the staging tests run inside tests/softroce/vm-run)");
    } else {
        NT_RUN(test_vram_without_driver);
        NT_RUN(test_stage_register);
        NT_RUN(test_stage_sizes);
        NT_RUN(test_stage_mixed);
        NT_RUN(test_stage_remote_refused);
        NT_RUN(test_stage_loopback);
        NT_RUN(test_stage_copy_failures);
        NT_RUN(test_stage_release_in_flight);
        NT_RUN(test_stage_peer_gone);
        NT_RUN(test_stage_throughput);
    }
    NT_RUN(test_gpu_detect);
    NT_RUN(test_gpu_copy_engine);
    NT_RUN(test_gpu_staging_rdma);
    NT_RUN(test_gpu_posix_file);
    if (g_have_gpu) _nixl_cuda_close(&g_cu);
    return nt_finish();
}
