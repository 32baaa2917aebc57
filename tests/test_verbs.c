/* test_verbs.c — the verbs backend on a real kernel RDMA stack (Soft-RoCE).

   Build (host):
     cc -std=c11 -Wall -Wextra -Werror -pedantic -g -I. tests/test_verbs.c \
        -o build/test_verbs -libverbs -lrdmacm -lpthread -ldl
   Run (inside the VM, where rxe0 exists):
     tests/softroce/vm-run build/test_verbs            (all tests)
     tests/softroce/vm-run build/test_verbs test_x     (one test)
   Without an RDMA device every test is skipped (one skip line).

   Every transfer checks the bytes that arrived. Two-process tests fork and
   exchange metadata blobs over a socketpair; one-process tests run two agents
   ("a" initiates, "b" is the target) and drive both with nixl_progress. */
#define NIXL_IMPLEMENTATION
#include "nixl_verbs.h"
#include "nixl_test.h"
#include "xfer_util.h"

#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>

#define MiB (1024u * 1024u)
#define WAIT_US (60u * 1000000u) /* no single wait may exceed a minute */

// >>helpers

static int quiet_log_level = NIXL_LOG_WARN;

static void test_log(void *user, int level, const char *msg) {
    (void)user;
    if (level <= quiet_log_level) fprintf(stderr, "    [log %d] %s\n", level, msg);
}

static nixl_agent_t *mk_agent(const char *name, const char *params, nixl_backend_t **be_out) {
    return xu_agent_log(name, nixl_verbs_backend(), params, test_log, be_out);
}

static void *xalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    memset(p, 0, n);
    return p;
}

static nixl_status_t post_wait(nixl_agent_t *a, nixl_xfer_req_t *r, nixl_agent_t *other, const nixl_opt_args_t *opt) {
    nixl_status_t st = nixl_post_xfer_req(a, r, opt);
    if (st != NIXL_IN_PROG) return st;
    return xu_wait(a, r, other, 0);
}

static nixl_status_t one_xfer(nixl_agent_t *a, nixl_agent_t *b, nixl_xfer_op_t op, void *l, void *r, size_t len,
                              const char *notif, nixl_xfer_req_t **out) {
    nixl_desc_t ld, rd;
    nixl_dlist_t ll, rl;
    nixl_opt_args_t opt;
    ld.addr = (uintptr_t)l;
    ld.len = len;
    ld.dev_id = 0;
    rd.addr = (uintptr_t)r;
    rd.len = len;
    rd.dev_id = 0;
    ll.mem = rl.mem = NIXL_DRAM;
    ll.descs = &ld;
    rl.descs = &rd;
    ll.count = rl.count = 1;
    memset(&opt, 0, sizeof opt);
    if (notif) {
        opt.notif = notif;
        opt.notif_len = strlen(notif);
        opt.has_notif = 1;
    }
    return nixl_create_xfer_req(a, op, &ll, &rl, nixl_agent_name(b), notif ? &opt : NULL, out);
}

// >>tests: params

static void test_bad_params(void) {
    static const char *bad[] = {"qps_per_peer=0", "qps_per_peer=17", "sq_depth=abc", "sq_depth=8", "timeout=40",
                                "slice_size=100", "notif_bufs=1", "notif_buf_size=10", "devices=nosuchdev",
                                "listen_addr=banana", "listen_addr=10.255.255.1", "listen_port=70000", "retry_cnt=8",
                                "bogus=1"};
    size_t i;
    nixl_agent_config_t cfg;
    nixl_agent_t *a = NULL;
    nixl_backend_t *be = NULL;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "params";
    cfg.log_fn = test_log;
    quiet_log_level = NIXL_LOG_ERROR - 1; /* these errors are expected */
    CHECK_ST(nixl_agent_create(&cfg, &a), NIXL_SUCCESS);
    if (!a) return;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        nixl_status_t st = nixl_create_backend(a, nixl_verbs_backend(), bad[i], &be);
        CHECKF(st == NIXL_ERR_INVALID_PARAM, "params '%s' gave %s", bad[i], nixl_status_str(st));
    }
    quiet_log_level = NIXL_LOG_WARN;
    CHECK_ST(nixl_create_backend(a, nixl_verbs_backend(),
                                 "qps_per_peer=4,sq_depth=64,slice_size=65536,timeout=12,notif_bufs=16,"
                                 "notif_buf_size=1024,devices=rxe0,retry_cnt=5", &be),
             NIXL_SUCCESS);
    CHECK(be && strcmp(nixl_backend_name(be), "VERBS") == 0);
    nixl_agent_destroy(a);
}

// >>tests: loopback

static void test_loopback(void) {
    nixl_agent_t *a = mk_agent("loop", "qps_per_peer=2", NULL);
    size_t n = 2 * MiB;
    unsigned char *src = (unsigned char *)xalloc(n), *dst = (unsigned char *)xalloc(n);
    nixl_xfer_req_t *r = NULL;
    xu_notes notes;
    CHECK(a != NULL);
    if (!a) return;
    CHECK_ST(xu_reg(a, src, n), NIXL_SUCCESS);
    CHECK_ST(xu_reg(a, dst, n), NIXL_SUCCESS);
    /* WRITE src -> dst with a notification to ourselves */
    nt_fill(src, n, 11);
    CHECK_ST(one_xfer(a, a, NIXL_WRITE, src, dst, n, "seq 0", &r), NIXL_SUCCESS);
    if (r) {
        CHECK_ST(post_wait(a, r, NULL, NULL), NIXL_SUCCESS);
        CHECK(nt_verify(dst, n, 11));
        nixl_release_xfer_req(a, r);
    }
    xu_notes_init(&notes);
    CHECK(xu_wait_notes(a, &notes, 1, NULL, 0));
    CHECK(notes.in_order && strcmp(notes.sender, "loop") == 0);
    /* READ dst <- src (4 KiB at an offset) */
    nt_fill(src + 4096, 4096, 12);
    r = NULL;
    CHECK_ST(one_xfer(a, a, NIXL_READ, dst + 100, src + 4096, 4096, NULL, &r), NIXL_SUCCESS);
    if (r) {
        CHECK_ST(post_wait(a, r, NULL, NULL), NIXL_SUCCESS);
        CHECK(nt_verify(dst + 100, 4096, 12));
        nixl_release_xfer_req(a, r);
    }
    /* gen_notif to ourselves */
    CHECK_ST(nixl_gen_notif(a, "loop", "seq 1", 5, NULL), NIXL_SUCCESS);
    CHECK(xu_wait_notes(a, &notes, 2, NULL, 0));
    CHECK(notes.in_order);
    nixl_agent_destroy(a);
    free(src);
    free(dst);
}

// >>tests: one process, two agents

typedef struct pair {
    nixl_agent_t *a, *b;
} pair_t;

static int pair_make(pair_t *p, const char *pa, const char *pb) {
    p->a = mk_agent("agent-a", pa, NULL);
    p->b = mk_agent("agent-b", pb, NULL);
    if (!p->a || !p->b) return 0;
    return 1;
}

static void pair_free(pair_t *p) {
    nixl_agent_destroy(p->a);
    nixl_agent_destroy(p->b);
}

/* WRITE a->b and READ b->a of one region size, each checked byte for byte;
   the write's notification must find all the data at b. */
static void xfer_size(pair_t *p, size_t n, unsigned seed) {
    unsigned char *la = (unsigned char *)xalloc(n), *rb = (unsigned char *)xalloc(n);
    nixl_xfer_req_t *r = NULL;
    xu_notes notes;
    CHECK_ST(xu_reg(p->a, la, n), NIXL_SUCCESS);
    CHECK_ST(xu_reg(p->b, rb, n), NIXL_SUCCESS);
    CHECK(xu_share_md(p->b, p->a));
    nt_fill(la, n, seed);
    xu_notes_init(&notes);
    notes.check_buf = rb;
    notes.check_len = n;
    notes.check_seed = seed;
    CHECK_ST(one_xfer(p->a, p->b, NIXL_WRITE, la, rb, n, "seq 0", &r), NIXL_SUCCESS);
    if (r) {
        CHECKF(post_wait(p->a, r, p->b, NULL) == NIXL_SUCCESS, "write of %zu bytes", n);
        nixl_release_xfer_req(p->a, r);
    }
    CHECK(xu_wait_notes(p->b, &notes, 1, p->a, 0));
    CHECKF(notes.check_ok, "write of %zu bytes: data complete when the notification arrived", n);
    CHECK(nt_verify(rb, n, seed));
    /* READ back into a zeroed buffer */
    memset(la, 0, n);
    nt_fill(rb, n, seed + 1);
    r = NULL;
    CHECK_ST(one_xfer(p->a, p->b, NIXL_READ, la, rb, n, NULL, &r), NIXL_SUCCESS);
    if (r) {
        CHECKF(post_wait(p->a, r, p->b, NULL) == NIXL_SUCCESS, "read of %zu bytes", n);
        nixl_release_xfer_req(p->a, r);
    }
    CHECKF(nt_verify(la, n, seed + 1), "read of %zu bytes", n);
    CHECK_ST(xu_dereg(p->a, la, n), NIXL_SUCCESS);
    CHECK_ST(xu_dereg(p->b, rb, n), NIXL_SUCCESS);
    free(la);
    free(rb);
}

static void test_sizes(void) {
    pair_t p;
    CHECK(pair_make(&p, NULL, NULL));
    if (p.a && p.b) {
        /* connection info alone first, and connect ahead of the first transfer */
        CHECK(xu_share_md(p.b, p.a));
        CHECK_ST(nixl_make_connection(p.a, "agent-b", NULL), NIXL_SUCCESS);
        xfer_size(&p, 1, 1);
        xfer_size(&p, 4096, 2);
        xfer_size(&p, 1 * MiB, 3);
        xfer_size(&p, 3 * MiB + 5, 4); /* sliced, uneven */
        xfer_size(&p, 64 * MiB, 5);
    }
    pair_free(&p);
}

/* 10,000 descriptors of 64 bytes in one request (sq_depth 64: most are
   posted from progress as completions free slots) */
static void test_many_descs(void) {
    enum { N = 10000, SZ = 64 };
    pair_t p;
    unsigned char *la = (unsigned char *)xalloc((size_t)N * SZ * 2);
    unsigned char *rb = (unsigned char *)xalloc((size_t)N * SZ * 2);
    nixl_desc_t *ld = (nixl_desc_t *)xalloc(sizeof(nixl_desc_t) * N);
    nixl_desc_t *rd = (nixl_desc_t *)xalloc(sizeof(nixl_desc_t) * N);
    nixl_dlist_t ll, rl;
    nixl_xfer_req_t *r = NULL;
    nixl_opt_args_t opt;
    xu_notes notes;
    int i, ok;
    CHECK(pair_make(&p, "sq_depth=64", NULL));
    if (!p.a || !p.b) goto out;
    CHECK_ST(xu_reg(p.a, la, (size_t)N * SZ * 2), NIXL_SUCCESS);
    CHECK_ST(xu_reg(p.b, rb, (size_t)N * SZ * 2), NIXL_SUCCESS);
    CHECK(xu_share_md(p.b, p.a));
    /* every other 64-byte block, remote in reverse order */
    for (i = 0; i < N; i++) {
        ld[i].addr = (uintptr_t)(la + (size_t)i * 2 * SZ);
        rd[i].addr = (uintptr_t)(rb + (size_t)(N - 1 - i) * 2 * SZ);
        ld[i].len = rd[i].len = SZ;
        ld[i].dev_id = rd[i].dev_id = 0;
        nt_fill((void *)ld[i].addr, SZ, (unsigned)i);
    }
    ll.mem = rl.mem = NIXL_DRAM;
    ll.descs = ld;
    rl.descs = rd;
    ll.count = rl.count = N;
    memset(&opt, 0, sizeof opt);
    opt.notif = "seq 0";
    opt.notif_len = 5;
    opt.has_notif = 1;
    CHECK_ST(nixl_create_xfer_req(p.a, NIXL_WRITE, &ll, &rl, "agent-b", &opt, &r), NIXL_SUCCESS);
    if (r) {
        CHECK_ST(post_wait(p.a, r, p.b, NULL), NIXL_SUCCESS);
        nixl_release_xfer_req(p.a, r);
    }
    xu_notes_init(&notes);
    CHECK(xu_wait_notes(p.b, &notes, 1, p.a, 0));
    for (i = 0, ok = 1; i < N; i++) {
        const unsigned char *gap = (const unsigned char *)rd[i].addr + SZ;
        if (!nt_verify((void *)rd[i].addr, SZ, (unsigned)i)) ok = 0;
        if (i > 0 && gap[0] != 0) ok = 0; /* nothing written between blocks */
    }
    CHECK(ok);
    /* the same 10,000 back with READ */
    memset(la, 0, (size_t)N * SZ * 2);
    r = NULL;
    CHECK_ST(nixl_create_xfer_req(p.a, NIXL_READ, &ll, &rl, "agent-b", NULL, &r), NIXL_SUCCESS);
    if (r) {
        CHECK_ST(post_wait(p.a, r, p.b, NULL), NIXL_SUCCESS);
        nixl_release_xfer_req(p.a, r);
    }
    for (i = 0, ok = 1; i < N; i++)
        if (!nt_verify((void *)ld[i].addr, SZ, (unsigned)i)) ok = 0;
    CHECK(ok);
out:
    pair_free(&p);
    free(la);
    free(rb);
    free(ld);
    free(rd);
}

/* 100,000 descriptors in one request */
static void test_100k_descs(void) {
    enum { N = 100000, SZ = 16 };
    pair_t p;
    unsigned char *la = (unsigned char *)xalloc((size_t)N * SZ), *rb = (unsigned char *)xalloc((size_t)N * SZ);
    nixl_desc_t *ld = (nixl_desc_t *)xalloc(sizeof(nixl_desc_t) * N);
    nixl_desc_t *rd = (nixl_desc_t *)xalloc(sizeof(nixl_desc_t) * N);
    nixl_dlist_t ll, rl;
    nixl_xfer_req_t *r = NULL;
    int i;
    CHECK(pair_make(&p, NULL, NULL));
    if (!p.a || !p.b) goto out;
    CHECK_ST(xu_reg(p.a, la, (size_t)N * SZ), NIXL_SUCCESS);
    CHECK_ST(xu_reg(p.b, rb, (size_t)N * SZ), NIXL_SUCCESS);
    CHECK(xu_share_md(p.b, p.a));
    nt_fill(la, (size_t)N * SZ, 77);
    for (i = 0; i < N; i++) {
        ld[i].addr = (uintptr_t)(la + (size_t)i * SZ);
        rd[i].addr = (uintptr_t)(rb + (size_t)i * SZ);
        ld[i].len = rd[i].len = SZ;
        ld[i].dev_id = rd[i].dev_id = 0;
    }
    ll.mem = rl.mem = NIXL_DRAM;
    ll.descs = ld;
    rl.descs = rd;
    ll.count = rl.count = N;
    CHECK_ST(nixl_create_xfer_req(p.a, NIXL_WRITE, &ll, &rl, "agent-b", NULL, &r), NIXL_SUCCESS);
    if (r) {
        CHECK_ST(post_wait(p.a, r, p.b, NULL), NIXL_SUCCESS);
        nixl_release_xfer_req(p.a, r);
    }
    CHECK(nt_verify(rb, (size_t)N * SZ, 77));
out:
    pair_free(&p);
    free(la);
    free(rb);
    free(ld);
    free(rd);
}

/* vLLM-like: both sides prepared once as 64 blocks of 16 KiB; requests
   pick blocks by id; the same request is then posted 100 times with new
   data each time, the notification telling the target which round landed. */
static void test_prepped_and_repost(void) {
    enum { NB = 64, BS = 16384, ROUNDS = 100 };
    pair_t p;
    unsigned char *la = (unsigned char *)xalloc((size_t)NB * BS), *rb = (unsigned char *)xalloc((size_t)NB * BS);
    nixl_desc_t ld[NB], rd[NB];
    nixl_dlist_t ll, rl;
    nixl_dlist_handle_t *lh = NULL, *rh = NULL;
    nixl_xfer_req_t *r = NULL;
    int lidx[8] = {3, 7, 1, 63, 20, 21, 22, 0}, ridx[8] = {10, 2, 63, 0, 33, 34, 35, 5};
    int i, k, ok;
    xu_notes notes;
    CHECK(pair_make(&p, NULL, NULL));
    if (!p.a || !p.b) goto out;
    CHECK_ST(xu_reg(p.a, la, (size_t)NB * BS), NIXL_SUCCESS);
    CHECK_ST(xu_reg(p.b, rb, (size_t)NB * BS), NIXL_SUCCESS);
    CHECK(xu_share_md(p.b, p.a));
    for (i = 0; i < NB; i++) {
        ld[i].addr = (uintptr_t)(la + (size_t)i * BS);
        rd[i].addr = (uintptr_t)(rb + (size_t)i * BS);
        ld[i].len = rd[i].len = BS;
        ld[i].dev_id = rd[i].dev_id = 0;
    }
    ll.mem = rl.mem = NIXL_DRAM;
    ll.descs = ld;
    rl.descs = rd;
    ll.count = rl.count = NB;
    CHECK_ST(nixl_prep_xfer_dlist(p.a, NULL, &ll, NULL, &lh), NIXL_SUCCESS);
    CHECK_ST(nixl_prep_xfer_dlist(p.a, "agent-b", &rl, NULL, &rh), NIXL_SUCCESS);
    if (!lh || !rh) goto out;
    CHECK_ST(nixl_make_xfer_req(p.a, NIXL_WRITE, lh, lidx, 8, rh, ridx, 8, NULL, &r), NIXL_SUCCESS);
    if (!r) goto out;
    xu_notes_init(&notes);
    for (k = 0, ok = 1; k < ROUNDS; k++) {
        nixl_opt_args_t opt;
        char msg[32];
        for (i = 0; i < 8; i++) nt_fill(la + (size_t)lidx[i] * BS, BS, (unsigned)(k * 8 + i));
        snprintf(msg, sizeof msg, "seq %d", k);
        memset(&opt, 0, sizeof opt);
        opt.notif = msg;
        opt.notif_len = strlen(msg);
        opt.has_notif = 1;
        if (post_wait(p.a, r, p.b, &opt) != NIXL_SUCCESS) ok = 0;
        if (!xu_wait_notes(p.b, &notes, k + 1, p.a, 0)) ok = 0;
        for (i = 0; i < 8; i++)
            if (!nt_verify(rb + (size_t)ridx[i] * BS, BS, (unsigned)(k * 8 + i))) ok = 0;
        if (!ok) break;
    }
    CHECKF(ok, "round %d of %d", k, ROUNDS);
    CHECK(notes.in_order && notes.n == ROUNDS);
    /* blocks not picked stay untouched */
    CHECK(rb[(size_t)1 * BS] == 0 && rb[(size_t)62 * BS + 5] == 0);
    CHECK_ST(nixl_release_xfer_req(p.a, r), NIXL_SUCCESS);
    /* READ by indices */
    r = NULL;
    memset(la, 0, (size_t)NB * BS);
    CHECK_ST(nixl_make_xfer_req(p.a, NIXL_READ, lh, ridx, 8, rh, lidx, 8, NULL, &r), NIXL_SUCCESS);
    if (r) {
        CHECK_ST(post_wait(p.a, r, p.b, NULL), NIXL_SUCCESS);
        for (i = 0, ok = 1; i < 8; i++)
            if (memcmp(la + (size_t)ridx[i] * BS, rb + (size_t)lidx[i] * BS, BS) != 0) ok = 0;
        CHECK(ok);
        nixl_release_xfer_req(p.a, r);
    }
out:
    if (lh) nixl_release_dlist_handle(p.a, lh);
    if (rh) nixl_release_dlist_handle(p.a, rh);
    pair_free(&p);
    free(la);
    free(rb);
}

/* The target checks all the data the moment the notification shows up,
   over 4 QPs with multi-slice descriptors (WRITE: QPs other than the
   notification's must have completed; READ: all). */
static void test_notif_ordering(void) {
    enum { ROUNDS = 10 };
    size_t n = 4 * MiB;
    pair_t p;
    unsigned char *la = (unsigned char *)xalloc(n), *rb = (unsigned char *)xalloc(n);
    nixl_xfer_req_t *w = NULL, *rd = NULL;
    xu_notes notes;
    int k, ok = 1, okr = 1;
    CHECK(pair_make(&p, "qps_per_peer=4,slice_size=65536", NULL));
    if (!p.a || !p.b) goto out;
    CHECK_ST(xu_reg(p.a, la, n), NIXL_SUCCESS);
    CHECK_ST(xu_reg(p.b, rb, n), NIXL_SUCCESS);
    CHECK(xu_share_md(p.b, p.a));
    CHECK_ST(one_xfer(p.a, p.b, NIXL_WRITE, la, rb, n, "x", &w), NIXL_SUCCESS);
    CHECK_ST(one_xfer(p.a, p.b, NIXL_READ, la, rb, n, "x", &rd), NIXL_SUCCESS);
    if (!w || !rd) goto out;
    xu_notes_init(&notes);
    for (k = 0; k < ROUNDS; k++) {
        nixl_opt_args_t opt;
        char msg[32];
        nixl_status_t st;
        uint64_t end = nixl_now_us() + WAIT_US;
        snprintf(msg, sizeof msg, "seq %d", 2 * k);
        memset(&opt, 0, sizeof opt);
        opt.notif = msg;
        opt.notif_len = strlen(msg);
        opt.has_notif = 1;
        nt_fill(la, n, 100u + (unsigned)k);
        notes.check_buf = rb;
        notes.check_len = n;
        notes.check_seed = 100u + (unsigned)k;
        notes.check_ok = 0;
        /* only the target polls for the notification first; the initiator
           is driven just enough to post and complete */
        st = nixl_post_xfer_req(p.a, w, &opt);
        if (st != NIXL_IN_PROG && st != NIXL_SUCCESS) ok = 0;
        while (notes.n < 2 * k + 1 && nixl_now_us() < end) {
            nixl_get_notifs(p.b, xu_on_note, &notes);
            nixl_get_xfer_status(p.a, w);
        }
        if (!notes.check_ok) ok = 0;
        if (xu_wait(p.a, w, p.b, 0) != NIXL_SUCCESS) ok = 0;
        /* READ: a's buffer must hold b's data when b hears of it */
        snprintf(msg, sizeof msg, "seq %d", 2 * k + 1);
        nt_fill(rb, n, 200u + (unsigned)k);
        memset(la, 0, n);
        notes.check_buf = la;
        notes.check_seed = 200u + (unsigned)k;
        notes.check_ok = 0;
        st = nixl_post_xfer_req(p.a, rd, &opt);
        if (st != NIXL_IN_PROG && st != NIXL_SUCCESS) okr = 0;
        while (notes.n < 2 * k + 2 && nixl_now_us() < end) {
            nixl_get_notifs(p.b, xu_on_note, &notes);
            nixl_get_xfer_status(p.a, rd);
        }
        if (!notes.check_ok) okr = 0;
        if (xu_wait(p.a, rd, p.b, 0) != NIXL_SUCCESS) okr = 0;
    }
    CHECKF(ok, "write: data incomplete when the notification arrived");
    CHECKF(okr, "read: data incomplete when the notification arrived");
    CHECK(notes.in_order && notes.n == 2 * ROUNDS);
out:
    if (w) nixl_release_xfer_req(p.a, w);
    if (rd) nixl_release_xfer_req(p.a, rd);
    pair_free(&p);
    free(la);
    free(rb);
}

/* 10,000 gen_notif in a burst: all arrive, in order, with credits flowing
   back (16 receive buffers of 256 bytes: the sender waits for credits). */
static void test_notif_burst(void) {
    enum { N = 10000 };
    pair_t p;
    xu_notes notes;
    char big[300];
    int i, ok = 1;
    CHECK(pair_make(&p, "notif_bufs=16,notif_buf_size=256", "notif_bufs=16,notif_buf_size=256"));
    if (!p.a || !p.b) goto out;
    CHECK(xu_share_md(p.b, p.a));
    for (i = 0; i < N; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "seq %d", i);
        if (nixl_gen_notif(p.a, "agent-b", msg, strlen(msg), NULL) != NIXL_SUCCESS) ok = 0;
    }
    CHECK(ok);
    xu_notes_init(&notes);
    CHECK(xu_wait_notes(p.b, &notes, N, p.a, 0));
    CHECKF(notes.n == N && notes.in_order, "got %ld, in order %d", notes.n, notes.in_order);
    CHECK(strcmp(notes.sender, "agent-a") == 0);
    /* one buffer is the limit: 256 - 8 bytes pass, 249 are refused */
    memset(big, 'z', sizeof big);
    quiet_log_level = NIXL_LOG_ERROR - 1;
    CHECK_ST(nixl_gen_notif(p.a, "agent-b", big, 249, NULL), NIXL_ERR_INVALID_PARAM);
    quiet_log_level = NIXL_LOG_WARN;
    CHECK_ST(nixl_gen_notif(p.a, "agent-b", big, 248, NULL), NIXL_SUCCESS);
    CHECK(xu_wait_notes(p.b, &notes, N + 1, p.a, 0));
    CHECK(notes.last_len == 248 && notes.last[247] == 'z');
out:
    pair_free(&p);
}

/* b sends to a while a sends to b: both directions share credits */
static void test_notif_both_ways(void) {
    enum { N = 2000 };
    pair_t p;
    xu_notes na, nb;
    int i, ok = 1;
    CHECK(pair_make(&p, "notif_bufs=8", "notif_bufs=8"));
    if (!p.a || !p.b) goto out;
    CHECK(xu_share_md(p.b, p.a));
    CHECK(xu_share_md(p.a, p.b));
    for (i = 0; i < N; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "seq %d", i);
        if (nixl_gen_notif(p.a, "agent-b", msg, strlen(msg), NULL) != NIXL_SUCCESS) ok = 0;
        if (nixl_gen_notif(p.b, "agent-a", msg, strlen(msg), NULL) != NIXL_SUCCESS) ok = 0;
    }
    CHECK(ok);
    xu_notes_init(&na);
    xu_notes_init(&nb);
    {
        uint64_t end = nixl_now_us() + WAIT_US;
        while ((na.n < N || nb.n < N) && nixl_now_us() < end) {
            nixl_get_notifs(p.a, xu_on_note, &na);
            nixl_get_notifs(p.b, xu_on_note, &nb);
        }
    }
    CHECKF(na.n == N && na.in_order, "a got %ld", na.n);
    CHECKF(nb.n == N && nb.in_order, "b got %ld", nb.n);
out:
    pair_free(&p);
}

/* Several threads post their own requests at once (the agent lock
   serialises them; the backend must keep each request's state apart). */
typedef struct thr_arg {
    nixl_agent_t *a, *b;
    unsigned char *la, *rb;
    size_t n;
    int idx, fails;
} thr_arg_t;

static void *thr_main(void *v) {
    thr_arg_t *t = (thr_arg_t *)v;
    nixl_xfer_req_t *r = NULL;
    int k;
    if (one_xfer(t->a, t->b, NIXL_WRITE, t->la, t->rb, t->n, NULL, &r) != NIXL_SUCCESS) {
        t->fails++;
        return NULL;
    }
    for (k = 0; k < 30; k++) {
        unsigned seed = (unsigned)(t->idx * 1000 + k);
        nt_fill(t->la, t->n, seed);
        if (post_wait(t->a, r, t->b, NULL) != NIXL_SUCCESS || !nt_verify(t->rb, t->n, seed)) t->fails++;
    }
    nixl_release_xfer_req(t->a, r);
    return NULL;
}

static void test_threads(void) {
    enum { T = 4 };
    size_t n = 256 * 1024;
    pair_t p;
    pthread_t th[T];
    thr_arg_t args[T];
    unsigned char *la = (unsigned char *)xalloc(n * T), *rb = (unsigned char *)xalloc(n * T);
    int i, fails = 0;
    CHECK(pair_make(&p, NULL, NULL));
    if (!p.a || !p.b) goto out;
    CHECK_ST(xu_reg(p.a, la, n * T), NIXL_SUCCESS);
    CHECK_ST(xu_reg(p.b, rb, n * T), NIXL_SUCCESS);
    CHECK(xu_share_md(p.b, p.a));
    for (i = 0; i < T; i++) {
        args[i].a = p.a;
        args[i].b = p.b;
        args[i].la = la + n * (size_t)i;
        args[i].rb = rb + n * (size_t)i;
        args[i].n = n;
        args[i].idx = i;
        args[i].fails = 0;
        CHECK(pthread_create(&th[i], NULL, thr_main, &args[i]) == 0);
    }
    for (i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        fails += args[i].fails;
    }
    CHECKF(fails == 0, "%d failed transfers", fails);
out:
    pair_free(&p);
    free(la);
    free(rb);
}

/* Descriptors outside registered memory never reach the NIC. */
static void test_invalid_descs(void) {
    pair_t p;
    size_t n = 65536;
    unsigned char *la = (unsigned char *)xalloc(2 * n), *rb = (unsigned char *)xalloc(2 * n);
    nixl_xfer_req_t *r = NULL;
    CHECK(pair_make(&p, NULL, NULL));
    if (!p.a || !p.b) goto out;
    CHECK_ST(xu_reg(p.a, la, n), NIXL_SUCCESS);
    CHECK_ST(xu_reg(p.b, rb, n), NIXL_SUCCESS);
    CHECK(xu_share_md(p.b, p.a));
    quiet_log_level = NIXL_LOG_ERROR - 1;
    CHECK_ST(one_xfer(p.a, p.b, NIXL_WRITE, la, rb + 1, n, NULL, &r), NIXL_ERR_NOT_FOUND);      /* past the end */
    CHECK_ST(one_xfer(p.a, p.b, NIXL_WRITE, la, rb + n, 16, NULL, &r), NIXL_ERR_NOT_FOUND);    /* outside */
    CHECK_ST(one_xfer(p.a, p.b, NIXL_READ, la + n, rb, 16, NULL, &r), NIXL_ERR_NOT_FOUND);     /* local unregistered */
    quiet_log_level = NIXL_LOG_WARN;
    CHECK(r == NULL);
    /* and b's memory past the region is untouched */
    CHECK(rb[n] == 0 && rb[2 * n - 1] == 0);
    /* a valid one still works afterwards */
    nt_fill(la, n, 5);
    CHECK_ST(one_xfer(p.a, p.b, NIXL_WRITE, la, rb, n, NULL, &r), NIXL_SUCCESS);
    if (r) {
        CHECK_ST(post_wait(p.a, r, p.b, NULL), NIXL_SUCCESS);
        CHECK(nt_verify(rb, n, 5));
        nixl_release_xfer_req(p.a, r);
    }
out:
    pair_free(&p);
    free(la);
    free(rb);
}

/* b deregisters a region a still holds the rkey of: a's next access fails
   cleanly (a protection error at b's NIC), b's memory is untouched, and
   after reloading metadata the pair works again. */
static void test_dereg_while_held(void) {
    pair_t p;
    size_t n = 65536;
    unsigned char *la = (unsigned char *)xalloc(n), *rb = (unsigned char *)xalloc(n), *rb2 = (unsigned char *)xalloc(n);
    nixl_xfer_req_t *r = NULL;
    nixl_status_t st;
    CHECK(pair_make(&p, NULL, NULL));
    if (!p.a || !p.b) goto out;
    CHECK_ST(xu_reg(p.a, la, n), NIXL_SUCCESS);
    CHECK_ST(xu_reg(p.b, rb, n), NIXL_SUCCESS);
    CHECK_ST(xu_reg(p.b, rb2, n), NIXL_SUCCESS);
    CHECK(xu_share_md(p.b, p.a));
    nt_fill(la, n, 9);
    CHECK_ST(one_xfer(p.a, p.b, NIXL_WRITE, la, rb, n, NULL, &r), NIXL_SUCCESS);
    if (!r) goto out;
    CHECK_ST(post_wait(p.a, r, p.b, NULL), NIXL_SUCCESS); /* connected and working */
    CHECK(nt_verify(rb, n, 9));
    memset(rb, 0x5a, n);
    CHECK_ST(xu_dereg(p.b, rb, n), NIXL_SUCCESS);
    quiet_log_level = NIXL_LOG_ERROR - 1;
    st = post_wait(p.a, r, p.b, NULL);
    CHECKF(st == NIXL_ERR_REMOTE_DISCONNECT || st == NIXL_ERR_BACKEND, "got %s", nixl_status_str(st));
    CHECK(rb[0] == 0x5a && rb[n - 1] == 0x5a);
    nixl_release_xfer_req(p.a, r);
    r = NULL;
    /* the connection failed; let b notice too, then start over */
    {
        uint64_t end = nixl_now_us() + 2000000;
        while (nixl_now_us() < end) {
            nixl_progress(p.a);
            nixl_progress(p.b);
        }
    }
    quiet_log_level = NIXL_LOG_WARN;
    CHECK(xu_share_md(p.b, p.a));
    nt_fill(la, n, 10);
    CHECK_ST(one_xfer(p.a, p.b, NIXL_WRITE, la, rb2, n, NULL, &r), NIXL_SUCCESS);
    if (r) {
        CHECK_ST(post_wait(p.a, r, p.b, NULL), NIXL_SUCCESS);
        CHECK(nt_verify(rb2, n, 10));
        nixl_release_xfer_req(p.a, r);
    }
out:
    pair_free(&p);
    free(la);
    free(rb);
    free(rb2);
}

/* Release of a request in flight aborts it; nothing touches it later. */
static void test_release_in_flight(void) {
    pair_t p;
    size_t n = 8 * MiB;
    unsigned char *la = (unsigned char *)xalloc(n), *rb = (unsigned char *)xalloc(n);
    nixl_xfer_req_t *r = NULL;
    CHECK(pair_make(&p, "sq_depth=16,slice_size=65536", NULL));
    if (!p.a || !p.b) goto out;
    CHECK_ST(xu_reg(p.a, la, n), NIXL_SUCCESS);
    CHECK_ST(xu_reg(p.b, rb, n), NIXL_SUCCESS);
    CHECK(xu_share_md(p.b, p.a));
    CHECK_ST(one_xfer(p.a, p.b, NIXL_WRITE, la, rb, n, "seq 0", &r), NIXL_SUCCESS);
    if (!r) goto out;
    CHECK_ST(post_wait(p.a, r, p.b, NULL), NIXL_SUCCESS);
    CHECK_ST(nixl_post_xfer_req(p.a, r, NULL), NIXL_IN_PROG);
    CHECK_ST(nixl_post_xfer_req(p.a, r, NULL), NIXL_ERR_REPOST_ACTIVE);
    CHECK_ST(nixl_release_xfer_req(p.a, r), NIXL_SUCCESS);
    r = NULL;
    {
        uint64_t end = nixl_now_us() + 1000000;
        while (nixl_now_us() < end) {
            nixl_progress(p.a);
            nixl_progress(p.b);
        }
    }
    /* the connection still works */
    nt_fill(la, 4096, 3);
    CHECK_ST(one_xfer(p.a, p.b, NIXL_WRITE, la, rb, 4096, NULL, &r), NIXL_SUCCESS);
    if (r) {
        CHECK_ST(post_wait(p.a, r, p.b, NULL), NIXL_SUCCESS);
        CHECK(nt_verify(rb, 4096, 3));
        nixl_release_xfer_req(p.a, r);
    }
out:
    pair_free(&p);
    free(la);
    free(rb);
}

// >>tests: two processes

/* Both processes write to each other at the same time (they connect to
   each other at once: the tie-break must leave one connection), each with a
   notification; each checks what it received. */
static void two_proc_side(const char *me, const char *peer, int fd, unsigned my_seed, unsigned peer_seed) {
    size_t n = 4 * MiB;
    unsigned char *src = (unsigned char *)xalloc(n), *dst = (unsigned char *)xalloc(n);
    nixl_agent_t *a = mk_agent(me, NULL, NULL);
    nixl_xfer_req_t *r = NULL;
    xu_notes notes;
    char ack = 0;
    uintptr_t peer_dst = 0;
    CHECK(a != NULL);
    if (!a) return;
    CHECK_ST(xu_reg(a, src, n), NIXL_SUCCESS);
    CHECK_ST(xu_reg(a, dst, n), NIXL_SUCCESS);
    /* metadata both ways, and the peer's dst address */
    peer_dst = xu_swap_md(a, fd, (uintptr_t)dst);
    CHECK(peer_dst != 0);
    nt_fill(src, n, my_seed);
    xu_notes_init(&notes);
    notes.check_buf = dst;
    notes.check_len = n;
    notes.check_seed = peer_seed;
    CHECK_ST(one_xfer(a, a, NIXL_WRITE, src, src, 1, NULL, &r), NIXL_SUCCESS); /* loopback alongside */
    if (r) {
        CHECK_ST(post_wait(a, r, NULL, NULL), NIXL_SUCCESS);
        nixl_release_xfer_req(a, r);
        r = NULL;
    }
    {
        nixl_desc_t ld, rd;
        nixl_dlist_t ll, rl;
        nixl_opt_args_t opt;
        ld.addr = (uintptr_t)src;
        rd.addr = peer_dst;
        ld.len = rd.len = n;
        ld.dev_id = rd.dev_id = 0;
        ll.mem = rl.mem = NIXL_DRAM;
        ll.descs = &ld;
        rl.descs = &rd;
        ll.count = rl.count = 1;
        memset(&opt, 0, sizeof opt);
        opt.notif = "seq 0";
        opt.notif_len = 5;
        opt.has_notif = 1;
        CHECK_ST(nixl_create_xfer_req(a, NIXL_WRITE, &ll, &rl, peer, &opt, &r), NIXL_SUCCESS);
    }
    if (r) {
        CHECK_ST(post_wait(a, r, NULL, NULL), NIXL_SUCCESS);
        nixl_release_xfer_req(a, r);
    }
    CHECK(xu_wait_notes(a, &notes, 1, NULL, 0));
    CHECK(notes.check_ok);
    CHECK(strcmp(notes.sender, peer) == 0);
    CHECK(nt_verify(dst, n, peer_seed));
    /* a gen_notif each way over the same connection */
    CHECK_ST(nixl_gen_notif(a, peer, "seq 1", 5, NULL), NIXL_SUCCESS);
    CHECK(xu_wait_notes(a, &notes, 2, NULL, 0));
    CHECK(notes.in_order);
    /* stay until the peer is done with us */
    CHECK(write(fd, "k", 1) == 1);
    {
        uint64_t end = nixl_now_us() + WAIT_US;
        int fl = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        while (read(fd, &ack, 1) != 1 && nixl_now_us() < end) nixl_progress(a);
        fcntl(fd, F_SETFL, fl);
    }
    CHECK(ack == 'k');
    nixl_agent_destroy(a);
    free(src);
    free(dst);
}

/* Children are fork + exec of this binary ("--child ROLE FD"): a process
   forked after its parent used verbs inherits the parent's device contexts
   (librdmacm caches them process-wide) and the kernel refuses their use
   from another process (rxe: ibv_post_send fails with EACCES). */
static const char *self_exe;

static pid_t spawn_child(const char *role, int fd, int other_fd) {
    pid_t pid;
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid == 0) {
        char fds[16];
        close(other_fd);
        snprintf(fds, sizeof fds, "%d", fd);
        execl(self_exe, self_exe, "--child", role, fds, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static void test_two_processes(void) {
    int sv[2];
    pid_t pid;
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    pid = spawn_child("two-proc-b", sv[1], sv[0]);
    close(sv[1]);
    two_proc_side("proc-a", "proc-b", sv[0], 1, 2);
    close(sv[0]);
    CHECK_CHILD(pid);
}

/* A target killed (SIGKILL) during a stream of transfers: the initiator's
   request ends in NIXL_ERR_REMOTE_DISCONNECT within a bounded time. */
static void test_peer_killed(void) {
    int sv[2];
    pid_t pid;
    size_t n = 16 * MiB;
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    pid = spawn_child("victim", sv[1], sv[0]);
    close(sv[1]);
    {
        unsigned char *src = (unsigned char *)xalloc(n);
        nixl_agent_t *a = mk_agent("killer", "timeout=10", NULL);
        nixl_xfer_req_t *r = NULL;
        uintptr_t peer_dst = 0;
        nixl_status_t st = NIXL_ERR_UNKNOWN;
        uint64_t t0 = 0, dt;
        int posts = 0;
        CHECK(a != NULL);
        if (!a) goto done;
        CHECK_ST(xu_reg(a, src, n), NIXL_SUCCESS);
        peer_dst = xu_swap_md(a, sv[0], (uintptr_t)src); /* metadata and buffers, both ways */
        CHECK(peer_dst != 0);
        nt_fill(src, n, 1);
        {
            nixl_desc_t ld, rd;
            nixl_dlist_t ll, rl;
            ld.addr = (uintptr_t)src;
            rd.addr = peer_dst;
            ld.len = rd.len = n;
            ld.dev_id = rd.dev_id = 0;
            ll.mem = rl.mem = NIXL_DRAM;
            ll.descs = &ld;
            rl.descs = &rd;
            ll.count = rl.count = 1;
            CHECK_ST(nixl_create_xfer_req(a, NIXL_WRITE, &ll, &rl, "victim", NULL, &r), NIXL_SUCCESS);
        }
        if (!r) goto done;
        CHECK_ST(post_wait(a, r, NULL, NULL), NIXL_SUCCESS); /* connected */
        quiet_log_level = NIXL_LOG_ERROR - 1;
        /* post again and kill the target while the data is in flight */
        st = nixl_post_xfer_req(a, r, NULL);
        posts++;
        CHECK_ST(st, NIXL_IN_PROG);
        kill(pid, SIGKILL);
        t0 = nixl_now_us();
        /* keep posting until the failure shows (a post may have completed
           before the kill landed) */
        for (;;) {
            st = xu_wait(a, r, NULL, 0);
            if (st != NIXL_SUCCESS || nixl_now_us() - t0 > 30000000u) break;
            st = nixl_post_xfer_req(a, r, NULL);
            posts++;
            if (st != NIXL_IN_PROG) break;
        }
        dt = nixl_now_us() - t0;
        quiet_log_level = NIXL_LOG_WARN;
        CHECKF(st == NIXL_ERR_REMOTE_DISCONNECT, "got %s after %d posts", nixl_status_str(st), posts);
        CHECKF(dt < 10000000u, "failure took %llu us", (unsigned long long)dt);
        printf("    peer killed: NIXL_ERR_REMOTE_DISCONNECT after %.1f ms\n", (double)dt / 1000.0);
        /* the peer is forgotten: its metadata is gone */
        CHECK_ST(nixl_check_remote_md(a, "victim", NULL), NIXL_ERR_NOT_FOUND);
        nixl_release_xfer_req(a, r);
    done:
        {
            int ws;
            kill(pid, SIGKILL);
            CHECK(waitpid(pid, &ws, 0) == pid && WIFSIGNALED(ws));
        }
        close(sv[0]);
        nixl_agent_destroy(a);
        free(src);
    }
}

static void victim_main(int fd) {
    size_t n = 16 * MiB;
    unsigned char *dst = (unsigned char *)xalloc(n);
    nixl_agent_t *b = mk_agent("victim", NULL, NULL);
    char c;
    if (!b || xu_reg(b, dst, n) != NIXL_SUCCESS || xu_swap_md(b, fd, (uintptr_t)dst) == 0) _exit(3);
    for (;;) { /* serve until killed */
        nixl_progress(b);
        if (recv(fd, &c, 1, MSG_DONTWAIT) == 0) _exit(5);
    }
}

// >>two VMs: the wire is cut (no DREQ, no reply): retry-exceeded

/* Node 1 (tests/softroce/wirecut): the target publishes its metadata and
   buffer address in DIR (the repository is shared by both VMs) and serves
   until DIR/done appears. */
static int file_put(const char *dir, const char *name, const void *p, size_t n) {
    char path[512];
    FILE *f;
    size_t w;
    snprintf(path, sizeof path, "%s/%s.tmp", dir, name);
    f = fopen(path, "wb");
    if (!f) return -1;
    w = fwrite(p, 1, n, f);
    if (fclose(f) || w != n) return -1;
    {
        char fin[512];
        snprintf(fin, sizeof fin, "%s/%s", dir, name);
        return rename(path, fin);
    }
}

static void *file_get(const char *dir, const char *name, size_t *n, double wait_s) {
    char path[512];
    uint64_t end = nixl_now_us() + (uint64_t)(wait_s * 1e6);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    for (;;) {
        FILE *f = fopen(path, "rb");
        if (f) {
            char *p = (char *)xalloc(1 << 20);
            *n = fread(p, 1, 1 << 20, f);
            fclose(f);
            return p;
        }
        if (nixl_now_us() > end) return NULL;
        usleep(100000);
    }
}

static int wirecut_target(const char *dir) {
    size_t n = MiB, len = 0;
    unsigned char *buf = (unsigned char *)xalloc(n);
    nixl_agent_t *b = mk_agent("wire-target", NULL, NULL);
    void *blob = NULL, *done;
    uint64_t addr = (uintptr_t)buf, end = nixl_now_us() + 300000000u;
    nt_current = "wirecut_target";
    CHECK(b != NULL);
    if (!b) return nt_finish();
    CHECK_ST(xu_reg(b, buf, n), NIXL_SUCCESS);
    CHECK_ST(nixl_get_local_md(b, &blob, &len), NIXL_SUCCESS);
    CHECK(file_put(dir, "target.md", blob, len) == 0);
    CHECK(file_put(dir, "target.addr", &addr, sizeof addr) == 0);
    nixl_free_md(b, blob);
    quiet_log_level = NIXL_LOG_ERROR - 1;
    while (nixl_now_us() < end) {
        size_t dn;
        nixl_progress(b);
        if ((done = file_get(dir, "done", &dn, 0)) != NULL) {
            free(done);
            break;
        }
        usleep(1000);
    }
    nixl_agent_destroy(b);
    free(buf);
    return nt_finish();
}

/* Node 2: one good WRITE (checked by reading it back), then the wire is
   cut on our side and the next WRITE must fail with REMOTE_DISCONNECT
   within the QP timeout (default timeout 14: 4.096 us * 2^14 * (retry_cnt
   + 1) ~ 0.47 s with rxe's default of 6). Shorter timeouts (10: ~29 ms)
   trip on the two TCG VMs' emulated wire when the host is busy. */
static int wirecut_init(const char *dir) {
    size_t n = MiB, len = 0, alen = 0;
    unsigned char *src = (unsigned char *)xalloc(n), *back = (unsigned char *)xalloc(n);
    nixl_agent_t *a = mk_agent("wire-init", NULL, NULL); /* default timeout 14 */
    void *blob, *ab;
    char name[256];
    uint64_t raddr = 0, t0, dt;
    nixl_xfer_req_t *w = NULL, *r = NULL;
    nixl_status_t st;
    nt_current = "wirecut_init";
    CHECK(a != NULL);
    if (!a) return nt_finish();
    CHECK_ST(xu_reg(a, src, n), NIXL_SUCCESS);
    CHECK_ST(xu_reg(a, back, n), NIXL_SUCCESS);
    blob = file_get(dir, "target.md", &len, 120);
    ab = file_get(dir, "target.addr", &alen, 120);
    CHECK(blob && ab && alen == sizeof raddr);
    if (!blob || !ab) return nt_finish();
    memcpy(&raddr, ab, sizeof raddr);
    CHECK_ST(nixl_load_remote_md(a, blob, len, name, sizeof name), NIXL_SUCCESS);
    nt_fill(src, n, 42);
    {
        nixl_desc_t ld, rd;
        nixl_dlist_t ll, rl;
        ld.addr = (uintptr_t)src;
        rd.addr = (uintptr_t)raddr;
        ld.len = rd.len = n;
        ld.dev_id = rd.dev_id = 0;
        ll.mem = rl.mem = NIXL_DRAM;
        ll.descs = &ld;
        rl.descs = &rd;
        ll.count = rl.count = 1;
        CHECK_ST(nixl_create_xfer_req(a, NIXL_WRITE, &ll, &rl, "wire-target", NULL, &w), NIXL_SUCCESS);
        ld.addr = (uintptr_t)back;
        CHECK_ST(nixl_create_xfer_req(a, NIXL_READ, &ll, &rl, "wire-target", NULL, &r), NIXL_SUCCESS);
    }
    if (w && r) {
        CHECK_ST(post_wait(a, w, NULL, NULL), NIXL_SUCCESS);
        CHECK_ST(post_wait(a, r, NULL, NULL), NIXL_SUCCESS);
        CHECK(nt_verify(back, n, 42));
        CHECK(system("tc qdisc add dev eth0 root netem loss 100%") == 0);
        t0 = nixl_now_us(); /* the backend's error line (retry exceeded) is printed */
        st = post_wait(a, w, NULL, NULL);
        dt = nixl_now_us() - t0;
        CHECKF(st == NIXL_ERR_REMOTE_DISCONNECT, "got %s", nixl_status_str(st));
        CHECKF(dt < 5000000u, "took %llu us", (unsigned long long)dt);
        printf("    wire cut: %s after %.1f ms\n", nixl_status_str(st), (double)dt / 1000.0);
        CHECK(system("tc qdisc del dev eth0 root") == 0);
    }
    CHECK(file_put(dir, "done", "x", 1) == 0);
    if (w) nixl_release_xfer_req(a, w);
    if (r) nixl_release_xfer_req(a, r);
    nixl_agent_destroy(a);
    free(blob);
    free(ab);
    free(src);
    free(back);
    return nt_finish();
}


// >>tests: an adversarial peer (the NIC checks rkeys)

/* The same attack as tests/test_ucx.c: agent a rewrites b's metadata blob
   to name memory b never registered (or deregistered) and posts ordinary
   READs and WRITEs. The NIC (rxe too) checks the rkey against the MR's
   bounds: the request fails with a remote access error, b's memory outside
   its region is untouched and never returned, and b keeps serving an honest
   agent c. Each refusal kills a's connection (RC QP in error): a reloads b's
   metadata before the next case. */
#define VADV_SZ (64u * 1024u)
#define VADV_HUGE (16u * MiB)

static int vadv_intact(const unsigned char *whole) {
    size_t i;
    for (i = 0; i < 7 * VADV_SZ; i++) {
        if (i >= VADV_SZ && i < 2 * VADV_SZ) continue; /* the honest region */
        if (whole[i] != (unsigned char)(0xA5 ^ (i * 7))) return 0;
    }
    return 1;
}

/* a forgets b (after a failure) and loads blob (and forged, if any) again */
static int vadv_reload(nixl_agent_t *a, nixl_agent_t *b, const void *blob, size_t blen, const void *forged) {
    uint64_t end = nixl_now_us() + 3000000;
    nixl_invalidate_remote_md(a, "agent-b");
    while (nixl_now_us() < end && nixl_check_remote_md(a, "agent-b", NULL) == NIXL_SUCCESS) {
        nixl_progress(a);
        nixl_progress(b);
    }
    return nixl_load_remote_md(a, blob, blen, NULL, 0) == NIXL_SUCCESS &&
           (!forged || nixl_load_remote_md(a, forged, blen, NULL, 0) == NIXL_SUCCESS);
}

/* an honest agent's transfer of VADV_SZ between lb and b's region */
static int vadv_honest(nixl_agent_t *c, nixl_agent_t *b, nixl_xfer_op_t op, unsigned char *lb, unsigned char *region) {
    nixl_xfer_req_t *r = NULL;
    nixl_status_t st = xu_req(c, "agent-b", op, (uintptr_t)lb, (uintptr_t)region, VADV_SZ, NULL, &r);
    if (st == NIXL_SUCCESS) st = post_wait(c, r, b, NULL);
    if (r) nixl_release_xfer_req(c, r);
    CHECK_ST(st, NIXL_SUCCESS);
    return st == NIXL_SUCCESS;
}

static void test_adversarial_peer(void) {
    pair_t p;
    nixl_agent_t *c = NULL;
    unsigned char *whole = (unsigned char *)xalloc(7 * VADV_SZ), *lb = (unsigned char *)xalloc(VADV_HUGE);
    unsigned char *region = whole + VADV_SZ, *dead = whole + 3 * VADV_SZ, *secret = whole + 5 * VADV_SZ;
    void *blob = NULL;
    size_t blen = 0, i;
    nixl_xfer_req_t *r = NULL;
    for (i = 0; i < 7 * VADV_SZ; i++) whole[i] = (unsigned char)(0xA5 ^ (i * 7));
    CHECK(pair_make(&p, NULL, NULL));
    c = mk_agent("agent-c", NULL, NULL);
    if (!p.a || !p.b || !c) goto out;
    CHECK_ST(xu_reg(p.a, lb, VADV_HUGE), NIXL_SUCCESS);
    CHECK_ST(xu_reg(p.b, region, VADV_SZ), NIXL_SUCCESS);
    CHECK_ST(xu_reg(p.b, dead, VADV_SZ), NIXL_SUCCESS);
    CHECK_ST(nixl_get_local_md(p.b, &blob, &blen), NIXL_SUCCESS);
    CHECK_ST(nixl_load_remote_md(p.a, blob, blen, NULL, 0), NIXL_SUCCESS);
    CHECK_ST(xu_dereg(p.b, dead, VADV_SZ), NIXL_SUCCESS); /* a still holds its old rkey */
    quiet_log_level = NIXL_LOG_ERROR - 1;                  /* the refusals log errors on purpose */
    {
        struct { const char *what; uint64_t addr, len; } cases[] = {
            {"the secret (outside every region)", (uintptr_t)secret, VADV_SZ},
            {"straddling the end of the region", (uintptr_t)region + VADV_SZ - 64, 128},
            {"the deregistered region", (uintptr_t)dead, VADV_SZ},
            {"a huge length from the region's start", (uintptr_t)region, VADV_HUGE},
            {"the zero page (address 64)", 64, 4000},
            {"near the top of the address space", UINT64_MAX - 3 * 4096 + 1, 4096},
        };
        for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            int op;
            for (op = 0; op < 2; op++) {
                unsigned char *forged = cases[i].addr == (uintptr_t)dead
                                            ? NULL
                                            : xu_forge_md((const unsigned char *)blob, blen, (uintptr_t)region,
                                                          cases[i].addr, cases[i].len);
                size_t probe = cases[i].len < VADV_SZ ? (size_t)cases[i].len : VADV_SZ;
                nixl_status_t st;
                if (cases[i].addr != (uintptr_t)dead) CHECKF(forged != NULL, "forged a blob naming %s", cases[i].what);
                CHECKF(vadv_reload(p.a, p.b, blob, blen, forged), "a loads b's metadata (forged: %s)", cases[i].what);
                free(forged);
                memset(lb, 0x11, probe);
                r = NULL;
                st = xu_req(p.a, "agent-b", op ? NIXL_WRITE : NIXL_READ, (uintptr_t)lb, (uintptr_t)cases[i].addr,
                            (size_t)cases[i].len, NULL, &r);
                if (st == NIXL_SUCCESS) st = post_wait(p.a, r, p.b, NULL);
                if (r) nixl_release_xfer_req(p.a, r);
                CHECKF(st == NIXL_ERR_REMOTE_DISCONNECT || st == NIXL_ERR_BACKEND,
                       "%s of %s: %s (want a remote access error)", op ? "WRITE" : "READ", cases[i].what,
                       nixl_status_str(st));
                if (!op) CHECKF(lb[0] == 0x11 && lb[probe - 1] == 0x11, "READ of %s returned nothing", cases[i].what);
                CHECKF(vadv_intact(whole), "after %s of %s: b's memory outside its region is untouched",
                       op ? "WRITE" : "READ", cases[i].what);
            }
        }
    }
    quiet_log_level = NIXL_LOG_WARN;
    /* b keeps serving: an honest agent, bytes checked both ways */
    CHECK_ST(xu_reg(c, lb, VADV_SZ), NIXL_SUCCESS);
    CHECK(xu_share_md(p.b, c));
    nt_fill(lb, VADV_SZ, 81);
    CHECKF(vadv_honest(c, p.b, NIXL_WRITE, lb, region) && nt_verify(region, VADV_SZ, 81),
           "b still takes an honest WRITE (bytes checked)");
    memset(lb, 0, VADV_SZ);
    CHECKF(vadv_honest(c, p.b, NIXL_READ, lb, region) && nt_verify(lb, VADV_SZ, 81),
           "b still serves an honest READ (bytes checked)");
    CHECK(vadv_intact(whole));
out:
    if (blob) nixl_free_md(p.b, blob);
    nixl_agent_destroy(c);
    pair_free(&p);
    free(whole);
    free(lb);
}

// >>tests: impersonation

static nixl_agent_t *mk_agent_tok(const char *name, const char *params, const char *token) {
    return xu_agent_tok(name, nixl_verbs_backend(), params, test_log, token, NULL);
}

typedef struct claims {
    int honest, forged;
} claims_t;

static void on_claim(void *user, const char *remote, const void *msg, size_t len) {
    claims_t *c = (claims_t *)user;
    if (!strcmp(remote, "prefill") && len == 4 && !memcmp(msg, "done", 4)) c->honest++;
    else c->forged++;
}

/* An impostor calls itself "prefill", a peer "decode" loaded, and notifies
   decode ("req-17 done"). Without a token it connects from another address
   than the one in prefill's metadata (192.0.2.2 on the VM's interface):
   refused at the connection request. With one, it does not know it: its
   HELLO's MAC fails. Either way decode hears only the real prefill, whose
   transfer lands (bytes checked). */
static void test_impersonation(void) {
    const char *dev = getenv("NIXL_VM_NETDEV");
    int with_token, second_ip = 0;
    if (dev) {
        char cmd[160];
        snprintf(cmd, sizeof cmd, "ip addr replace 192.0.2.2/24 dev %s 2>/dev/null", dev);
        second_ip = system(cmd) == 0;
        usleep(300000); /* rxe adds the address's GID */
    }
    for (with_token = 0; with_token < 2; with_token++) {
        const char *tok = with_token ? "verbs-secret" : NULL;
        nixl_agent_t *t, *p, *m;
        unsigned char *l = (unsigned char *)xalloc(4096), *r = (unsigned char *)xalloc(4096);
        nixl_xfer_req_t *req = NULL;
        claims_t got = {0, 0};
        uint64_t until;
        if (!with_token && !second_ip) {
            SKIP("impersonation from another address: no second address on the VM's interface (not in the VM?)");
            free(l);
            free(r);
            continue;
        }
        t = mk_agent_tok("decode", NULL, tok);
        p = mk_agent_tok("prefill", NULL, tok);
        m = mk_agent_tok("prefill", with_token ? NULL : "listen_addr=192.0.2.2", with_token ? "a-guess" : NULL);
        CHECK(t && p && m);
        if (!t || !p || !m) goto next;
        CHECK_ST(xu_reg(t, r, 4096), NIXL_SUCCESS);
        CHECK_ST(xu_reg(p, l, 4096), NIXL_SUCCESS);
        CHECK(xu_share_md(t, p));
        CHECK(xu_load_md_of(t, m));
        quiet_log_level = NIXL_LOG_ERROR - 1; /* the refusals are expected */
        CHECK_ST(nixl_gen_notif(m, "decode", "req-17 done", 11, NULL), NIXL_SUCCESS);
        until = nixl_now_us() + 1500000u;
        while (nixl_now_us() < until) {
            nixl_get_notifs(t, on_claim, &got);
            nixl_progress(m);
        }
        quiet_log_level = NIXL_LOG_WARN;
        nt_fill(l, 4096, 41);
        CHECK_ST(one_xfer(p, t, NIXL_WRITE, l, r, 4096, "done", &req), NIXL_SUCCESS);
        if (req) {
            CHECK_ST(post_wait(p, req, t, NULL), NIXL_SUCCESS);
            CHECK(nt_verify(r, 4096, 41));
            nixl_release_xfer_req(p, req);
        }
        until = nixl_now_us() + WAIT_US;
        while (got.honest < 1 && nixl_now_us() < until) {
            nixl_get_notifs(t, on_claim, &got);
            nixl_progress(p);
            nixl_progress(m);
        }
        CHECKF(got.honest == 1 && got.forged == 0, "%s token: %d honest, %d forged notifications at decode",
               with_token ? "with a" : "without a", got.honest, got.forged);
    next:
        nixl_agent_destroy(m);
        nixl_agent_destroy(p);
        nixl_agent_destroy(t);
        free(l);
        free(r);
    }
}

/* Connections from peers the target never loaded are capped
   (max_unknown_peers=1 here): the second stranger is refused before it
   costs a QP, and a loaded peer still gets through. */
static void test_unknown_peers_capped(void) {
    nixl_agent_t *t = mk_agent("hub", "max_unknown_peers=1", NULL), *s1 = mk_agent("stranger-1", NULL, NULL);
    nixl_agent_t *s2 = mk_agent("stranger-2", NULL, NULL), *f = mk_agent("friend", NULL, NULL);
    uint64_t until;
    int i;
    xu_notes n;
    CHECK(t && s1 && s2 && f);
    if (!t || !s1 || !s2 || !f) goto out;
    CHECK(xu_load_md_of(t, s1) && xu_load_md_of(t, s2) && xu_share_md(t, f));
    quiet_log_level = NIXL_LOG_ERROR - 1;
    CHECK_ST(nixl_gen_notif(s1, "hub", "x", 1, NULL), NIXL_SUCCESS);
    until = nixl_now_us() + 1000000u;
    while (nixl_now_us() < until) {
        nixl_progress(t);
        nixl_progress(s1);
    }
    CHECK_ST(nixl_gen_notif(s2, "hub", "y", 1, NULL), NIXL_SUCCESS);
    until = nixl_now_us() + 1000000u;
    while (nixl_now_us() < until) {
        nixl_progress(t);
        nixl_progress(s2);
    }
    quiet_log_level = NIXL_LOG_WARN;
    {
        _nixl_verbs_engine_t *e = (_nixl_verbs_engine_t *)s2->be[0]->engine;
        _nixl_verbs_peer_t *hp = _nixl_verbs_peer_find(e, "hub");
        CHECKF(!hp || !hp->conn || hp->conn->state == _NIXL_VERBS_CONN_FAILED || nixl_check_remote_md(s2, "hub", NULL)
               != NIXL_SUCCESS, "the second stranger's connection was refused");
    }
    xu_notes_init(&n);
    for (i = 0; i < 1; i++) CHECK_ST(nixl_gen_notif(f, "hub", "seq 0", 5, NULL), NIXL_SUCCESS);
    CHECK(xu_wait_notes(t, &n, 1, f, 0) && strcmp(n.sender, "friend") == 0);
out:
    nixl_agent_destroy(f);
    nixl_agent_destroy(s2);
    nixl_agent_destroy(s1);
    nixl_agent_destroy(t);
}


// >>tests: flow control

/* A receiver whose queue for one sender is full (notif_queue_peer_bytes 8
   KiB here) and that does not drain it: the sender is slowed (credits stop
   coming back; its request with a notification stays IN_PROG, and
   gen_notif says IN_PROG once 4 MiB wait), nothing is dropped, and once
   the receiver drains, everything arrives in order. */
static void test_notif_backpressure(void) {
    enum { N = 200 };
    nixl_agent_config_t cfg;
    nixl_agent_t *a = mk_agent("sender", "notif_bufs=16", NULL), *b = NULL;
    nixl_backend_t *be = NULL;
    unsigned char *l = (unsigned char *)xalloc(4096), *r = (unsigned char *)xalloc(4096);
    nixl_xfer_req_t *req = NULL;
    char msg[1024];
    xu_notes n;
    uint64_t until;
    int i, extra;
    nixl_status_t st = NIXL_ERR_UNKNOWN;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "receiver";
    cfg.log_fn = test_log;
    cfg.notif_queue_peer_bytes = 8192;
    CHECK_ST(nixl_agent_create(&cfg, &b), NIXL_SUCCESS);
    if (!a || !b) goto out;
    CHECK_ST(nixl_create_backend(b, nixl_verbs_backend(), "notif_bufs=16", &be), NIXL_SUCCESS);
    CHECK_ST(xu_reg(a, l, 4096), NIXL_SUCCESS);
    CHECK_ST(xu_reg(b, r, 4096), NIXL_SUCCESS);
    CHECK(xu_share_md(b, a));
    for (i = 0; i < N; i++) {
        snprintf(msg, sizeof msg, "seq %d", i);
        memset(msg + strlen(msg) + 1, 'x', sizeof msg - strlen(msg) - 1);
        CHECK_ST(nixl_gen_notif(a, "receiver", msg, strlen(msg), NULL), NIXL_SUCCESS);
    }
    /* more, until the sender's backlog for the peer is full: gen_notif then
       says IN_PROG and queues nothing */
    for (extra = 0; extra < 10000; extra++) {
        snprintf(msg, sizeof msg, "extra %d", extra);
        st = nixl_gen_notif(a, "receiver", msg, sizeof msg, NULL);
        if (st != NIXL_SUCCESS) break;
    }
    CHECKF(st == NIXL_IN_PROG && extra > 0, "gen_notif said IN_PROG after %d more (%s)", extra, nixl_status_str(st));
    st = NIXL_ERR_UNKNOWN;
    nt_fill(l, 4096, 51);
    CHECK_ST(one_xfer(a, b, NIXL_WRITE, l, r, 4096, "last", &req), NIXL_SUCCESS);
    if (req) st = nixl_post_xfer_req(a, req, NULL);
    until = nixl_now_us() + 1500000u; /* both progress; nobody drains b */
    while (nixl_now_us() < until) {
        nixl_progress(a);
        nixl_progress(b);
        if (req) st = nixl_get_xfer_status(a, req);
    }
    CHECKF(st == NIXL_IN_PROG, "the sender was slowed: its request waits for credits (%s)", nixl_status_str(st));
    xu_notes_init(&n);
    until = nixl_now_us() + WAIT_US;
    while (n.n < N + extra + 1 && nixl_now_us() < until) {
        nixl_get_notifs(b, xu_on_note, &n);
        nixl_progress(a);
        if (req) st = nixl_get_xfer_status(a, req);
    }
    CHECKF(n.n == N + extra + 1, "%ld of %d notifications arrived: none dropped", n.n, N + extra + 1);
    CHECK(n.last_len == 4 && memcmp(n.last, "last", 4) == 0);
    if (req) {
        if (st == NIXL_IN_PROG) st = xu_wait(a, req, b, 0);
        CHECK_ST(st, NIXL_SUCCESS);
        CHECK(nt_verify(r, 4096, 51));
        nixl_release_xfer_req(a, req);
    }
out:
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
    free(l);
    free(r);
}

int main(int argc, char **argv) {
    self_exe = argv[0];
    if (argc == 3 && strcmp(argv[1], "--wirecut-target") == 0) return wirecut_target(argv[2]);
    if (argc == 3 && strcmp(argv[1], "--wirecut-init") == 0) return wirecut_init(argv[2]);
    if (argc == 4 && strcmp(argv[1], "--child") == 0) {
        int fd = atoi(argv[3]);
        if (strcmp(argv[2], "victim") == 0) victim_main(fd);
        nt_current = argv[2];
        if (strcmp(argv[2], "two-proc-b") == 0) two_proc_side("proc-b", "proc-a", fd, 2, 1);
        nt_child_exit();
    }
    nt_init(argc, argv);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!xu_have_rdma()) {
        SKIP("no RDMA device (run inside tests/softroce/vm-run)");
        return nt_finish();
    }
    NT_RUN(test_bad_params);
    NT_RUN(test_loopback);
    NT_RUN(test_sizes);
    NT_RUN(test_many_descs);
    NT_RUN(test_100k_descs);
    NT_RUN(test_prepped_and_repost);
    NT_RUN(test_notif_ordering);
    NT_RUN(test_notif_burst);
    NT_RUN(test_notif_both_ways);
    NT_RUN(test_threads);
    NT_RUN(test_invalid_descs);
    NT_RUN(test_release_in_flight);
    NT_RUN(test_dereg_while_held);
    NT_RUN(test_adversarial_peer);
    NT_RUN(test_impersonation);
    NT_RUN(test_unknown_peers_capped);
    NT_RUN(test_notif_backpressure);
    NT_RUN(test_two_processes);
    NT_RUN(test_peer_killed);
    return nt_finish();
}
