/* test_ucx.c — the UCX backend (nixl_ucx.h) over real UCX, natively.

   Build: cc -std=c11 -Wall -Wextra -Werror -pedantic -g -I. tests/test_ucx.c \
             -o build/test_ucx -lucp -lucs -lpthread
   Run:   NIXL_TEST_UCX_TLS=tcp build/test_ucx          (one transport list;
          '+' separates transports: tcp, posix, sysv, cma+posix, ...)
          build/test_ucx test_loopback ...               (chosen tests only)
          tests/ucx-run test                          (every list in turn)
   Env:   NIXL_TEST_UCX_TLS   the tls= param (default "tcp")
          NIXL_TEST_UCX_EXTRA more backend params appended (",ucx.X=Y")
          NIXL_TEST_LOG=1     print the library's log lines
          NIXL_TEST_TIMEOUT_SCALE=N  multiply every time limit (valgrind: 20)

   Every test runs in a forked child with a time limit, so a hang or a crash
   fails that test and the suite goes on; no UCX state is ever created in the
   parent, so forking stays clean. Two-process tests fork one more process
   (the peer); metadata travels over a socketpair. Every transfer checks the
   bytes that arrived. */
#define NIXL_IMPLEMENTATION
#include "nixl_ucx.h"
#include "nixl_test.h"
#include "xfer_util.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>

#define MiB (1024u * 1024u)

static char g_params[1024];
static const char *g_tls;

// >>harness

#define RUN(fn, t) NT_RUN_ISOLATED(fn, t) /* each test in its own process, with a limit */

/* Forks the peer process of a two-process test; fn gets its socket end. */
static pid_t spawn_peer(void (*fn)(int sock), int *sock, unsigned timeout_s) {
    int sv[2];
    pid_t pid;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return -1;
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        close(sv[0]);
        nt_process_start(timeout_s);
        fn(sv[1]);
        nt_process_end();
    }
    close(sv[1]);
    *sock = sv[0];
    return pid;
}

// >>wire (between test processes)

static int write_all(int fd, const void *p, size_t n) {
    const char *c = (const char *)p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, void *p, size_t n) {
    char *c = (char *)p;
    while (n) {
        ssize_t r = read(fd, c, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        c += r;
        n -= (size_t)r;
    }
    return 0;
}

static int send_u32(int fd, uint32_t v) { return write_all(fd, &v, sizeof v); }

static uint32_t recv_u32(int fd) {
    uint32_t v = 0xffffffffu;
    if (read_all(fd, &v, sizeof v) != 0) return 0xffffffffu;
    return v;
}

/* Sends this agent's metadata blob. */
static int send_md(int fd, nixl_agent_t *a) {
    void *blob = NULL;
    size_t len = 0;
    int rc = -1;
    if (nixl_get_local_md(a, &blob, &len) != NIXL_SUCCESS) return -1;
    if (send_u32(fd, (uint32_t)len) == 0 && write_all(fd, blob, len) == 0) rc = 0;
    nixl_free_md(a, blob);
    return rc;
}

/* Receives a metadata blob and loads it. */
static nixl_status_t recv_md(int fd, nixl_agent_t *a, char *name, size_t cap) {
    uint32_t len = recv_u32(fd);
    void *blob;
    nixl_status_t st;
    if (len == 0xffffffffu || len > (64u << 20)) return NIXL_ERR_UNKNOWN;
    blob = malloc(len);
    if (!blob || read_all(fd, blob, len) != 0) {
        free(blob);
        return NIXL_ERR_UNKNOWN;
    }
    st = nixl_load_remote_md(a, blob, len, name, cap);
    free(blob);
    return st;
}

/* Loads `from`'s metadata into `to` (same process). */
static nixl_status_t load_md_of(nixl_agent_t *from, nixl_agent_t *to) {
    void *blob = NULL;
    size_t len = 0;
    char name[256];
    nixl_status_t st = nixl_get_local_md(from, &blob, &len);
    if (st != NIXL_SUCCESS) return st;
    st = nixl_load_remote_md(to, blob, len, name, sizeof name);
    nixl_free_md(from, blob);
    return st;
}

/* `to` loads `from`'s metadata, and `from` loads `to`'s: without an auth
   token a receiver takes notifications only from peers whose metadata it
   loaded (it verifies them through the address in it). */
static nixl_status_t share_md(nixl_agent_t *from, nixl_agent_t *to) {
    nixl_status_t st = load_md_of(from, to);
    return st == NIXL_SUCCESS ? load_md_of(to, from) : st;
}

// >>agents

static const char *g_token; /* the auth token of agents made next (NULL: none) */

static void test_log(void *user, int level, const char *msg) {
    (void)user;
    if (getenv("NIXL_TEST_LOG")) fprintf(stderr, "[%d] %s\n", level, msg);
}

static nixl_agent_t *make_agent_cfg(const char *name, const char *params, int progress_thread,
                                    nixl_status_t *backend_st) {
    nixl_agent_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = name;
    cfg.progress_thread = progress_thread;
    cfg.log_fn = test_log;
    cfg.auth_token = g_token;
    return xu_agent_cfg(&cfg, nixl_ucx_backend(), params, NULL, backend_st);
}

/* An agent with a UCX backend on the transport list under test. */
static nixl_agent_t *make_agent(const char *name) {
    nixl_agent_t *a = make_agent_cfg(name, g_params, 0, NULL);
    CHECKF(a != NULL, "agent %s with UCX params '%s'", name, g_params);
    return a;
}

static nixl_agent_t *make_agent_extra(const char *name, const char *extra, int progress_thread) {
    char p[1200];
    nixl_agent_t *a;
    snprintf(p, sizeof p, "%s,%s", g_params, extra);
    a = make_agent_cfg(name, p, progress_thread, NULL);
    CHECKF(a != NULL, "agent %s with UCX params '%s'", name, p);
    return a;
}

/* A one-descriptor request (optionally with a notification). */
static nixl_status_t make_req1(nixl_agent_t *a, nixl_xfer_op_t op, void *lbuf, uintptr_t raddr, size_t len,
                               const char *remote, const char *notif, nixl_xfer_req_t **r) {
    nixl_desc_t ld, rd;
    nixl_dlist_t ll, rl;
    nixl_opt_args_t opt;
    ld.addr = (uintptr_t)lbuf;
    ld.len = len;
    ld.dev_id = 0;
    rd.addr = raddr;
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
    return nixl_create_xfer_req(a, op, &ll, &rl, remote, &opt, r);
}

/* Waits for a request while also driving `other` (the target in this
   process, if any). Bounded: IN_PROG back means it timed out. */
static nixl_status_t wait_xfer(nixl_agent_t *a, nixl_xfer_req_t *r, nixl_agent_t *other, double timeout_s) {
    uint64_t until = nixl_now_us() + (uint64_t)(timeout_s * nt_scale * 1e6);
    nixl_status_t st;
    do {
        st = nixl_get_xfer_status(a, r);
        if (st != NIXL_IN_PROG) return st;
        if (other) nixl_progress(other);
    } while (nixl_now_us() < until);
    return NIXL_IN_PROG;
}

static nixl_status_t post_wait(nixl_agent_t *a, nixl_xfer_req_t *r, nixl_agent_t *other, double timeout_s) {
    nixl_status_t st = nixl_post_xfer_req(a, r, NULL);
    if (st != NIXL_IN_PROG) return st;
    return wait_xfer(a, r, other, timeout_s);
}

/* Drives two agents of this process for 200 ms. */
static void settle(nixl_agent_t *a, nixl_agent_t *b) {
    uint64_t until = nixl_now_us() + 200000u;
    while (nixl_now_us() < until) {
        nixl_progress(a);
        nixl_progress(b);
    }
}

// >>notifications

typedef struct notes {
    size_t n, cap;
    char **msg;
    size_t *len;
    char **from;
} notes_t;

static void notes_cb(void *user, const char *remote, const void *msg, size_t len) {
    notes_t *q = (notes_t *)user;
    if (q->n == q->cap) {
        size_t cap = q->cap ? 2 * q->cap : 64;
        q->msg = (char **)realloc(q->msg, cap * sizeof *q->msg);
        q->len = (size_t *)realloc(q->len, cap * sizeof *q->len);
        q->from = (char **)realloc(q->from, cap * sizeof *q->from);
        if (!q->msg || !q->len || !q->from) abort();
        q->cap = cap;
    }
    q->msg[q->n] = (char *)malloc(len + 1);
    q->from[q->n] = strdup(remote);
    if (!q->msg[q->n] || !q->from[q->n]) abort();
    memcpy(q->msg[q->n], msg, len);
    q->msg[q->n][len] = '\0';
    q->len[q->n] = len;
    q->n++;
}

static void notes_free(notes_t *q) {
    size_t i;
    for (i = 0; i < q->n; i++) {
        free(q->msg[i]);
        free(q->from[i]);
    }
    free(q->msg);
    free(q->len);
    free(q->from);
    memset(q, 0, sizeof *q);
}

/* Collects notifications on `a` (driving `other` too) until there are n. */
static size_t wait_notes(nixl_agent_t *a, nixl_agent_t *other, notes_t *q, size_t n, double timeout_s) {
    uint64_t until = nixl_now_us() + (uint64_t)(timeout_s * nt_scale * 1e6);
    while (q->n < n && nixl_now_us() < until) {
        nixl_get_notifs(a, notes_cb, q);
        if (other) nixl_progress(other);
    }
    return q->n;
}

/* Drives an agent until a byte arrives on fd (a step of the other process). */
static int progress_until_readable(nixl_agent_t *a, int fd, double timeout_s) {
    uint64_t until = nixl_now_us() + (uint64_t)(timeout_s * nt_scale * 1e6);
    struct pollfd p;
    p.fd = fd;
    p.events = POLLIN;
    while (nixl_now_us() < until) {
        p.revents = 0;
        if (poll(&p, 1, 0) > 0) return 1;
        nixl_progress(a);
    }
    return 0;
}

static unsigned char *xmalloc(size_t n) {
    unsigned char *p = (unsigned char *)calloc(1, n);
    if (!p) abort();
    return p;
}

// >>tests: one process, two agents

static const size_t k_sizes[] = {1, 4096, MiB, 64 * MiB};

static void one_size(nixl_agent_t *a, nixl_agent_t *b, size_t size, unsigned seed) {
    unsigned char *l = xmalloc(size), *r = xmalloc(size);
    nixl_xfer_req_t *req = NULL;
    notes_t q;
    char note[64];
    memset(&q, 0, sizeof q);
    CHECK_ST(xu_reg(a, l, size), NIXL_SUCCESS);
    CHECK_ST(xu_reg(b, r, size), NIXL_SUCCESS);
    CHECK_ST(share_md(b, a), NIXL_SUCCESS);
    /* WRITE a -> b, then the notification */
    nt_fill(l, size, seed);
    snprintf(note, sizeof note, "write-%zu", size);
    CHECK_ST(make_req1(a, NIXL_WRITE, l, (uintptr_t)r, size, "tgt", note, &req), NIXL_SUCCESS);
    if (req) {
        CHECK_ST(post_wait(a, req, b, 60), NIXL_SUCCESS);
        CHECKF(nt_verify(r, size, seed), "WRITE of %zu bytes arrived intact", size);
        CHECK(wait_notes(b, a, &q, 1, 20) == 1);
        CHECKF(q.n == 1 && strcmp(q.msg[0], note) == 0 && strcmp(q.from[0], "ini") == 0,
               "notification '%s' from ini", q.n ? q.msg[0] : "(none)");
        CHECK_ST(nixl_release_xfer_req(a, req), NIXL_SUCCESS);
    }
    notes_free(&q);
    /* READ b -> a */
    nt_fill(r, size, seed + 1);
    memset(l, 0, size);
    snprintf(note, sizeof note, "read-%zu", size);
    req = NULL;
    CHECK_ST(make_req1(a, NIXL_READ, l, (uintptr_t)r, size, "tgt", note, &req), NIXL_SUCCESS);
    if (req) {
        CHECK_ST(post_wait(a, req, b, 60), NIXL_SUCCESS);
        CHECKF(nt_verify(l, size, seed + 1), "READ of %zu bytes arrived intact", size);
        CHECK(wait_notes(b, a, &q, 1, 20) == 1);
        CHECK(q.n == 1 && strcmp(q.msg[0], note) == 0);
        CHECK_ST(nixl_release_xfer_req(a, req), NIXL_SUCCESS);
    }
    notes_free(&q);
    CHECK_ST(xu_dereg(a, l, size), NIXL_SUCCESS);
    CHECK_ST(xu_dereg(b, r, size), NIXL_SUCCESS);
    free(l);
    free(r);
}

static void test_sizes_one_process(void) {
    nixl_agent_t *a = make_agent("ini"), *b = make_agent("tgt");
    size_t i;
    if (a && b)
        for (i = 0; i < sizeof k_sizes / sizeof k_sizes[0]; i++) one_size(a, b, k_sizes[i], 10 + (unsigned)i);
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
}

/* 10,000 small descriptors in one request, scattered on the target. */
static void test_many_descriptors(void) {
    enum { N = 10000, SZ = 64, STRIDE = 128 };
    nixl_agent_t *a = make_agent("ini"), *b = make_agent("tgt");
    unsigned char *l = xmalloc((size_t)N * SZ), *r = xmalloc((size_t)N * STRIDE);
    nixl_desc_t *ld = (nixl_desc_t *)calloc(N, sizeof *ld), *rd = (nixl_desc_t *)calloc(N, sizeof *rd);
    nixl_dlist_t ll, rl;
    nixl_opt_args_t opt;
    nixl_xfer_req_t *req = NULL;
    notes_t q;
    int i, ok = 1, gaps = 1;
    memset(&q, 0, sizeof q);
    if (!a || !b || !ld || !rd) goto out;
    CHECK_ST(xu_reg(a, l, (size_t)N * SZ), NIXL_SUCCESS);
    CHECK_ST(xu_reg(b, r, (size_t)N * STRIDE), NIXL_SUCCESS);
    CHECK_ST(share_md(b, a), NIXL_SUCCESS);
    for (i = 0; i < N; i++) {
        ld[i].addr = (uintptr_t)(l + (size_t)i * SZ);
        ld[i].len = SZ;
        rd[i].addr = (uintptr_t)(r + (size_t)i * STRIDE);
        rd[i].len = SZ;
        nt_fill(l + (size_t)i * SZ, SZ, 1000u + (unsigned)i);
    }
    ll.mem = rl.mem = NIXL_DRAM;
    ll.descs = ld;
    rl.descs = rd;
    ll.count = rl.count = N;
    memset(&opt, 0, sizeof opt);
    opt.notif = "many";
    opt.notif_len = 4;
    opt.has_notif = 1;
    CHECK_ST(nixl_create_xfer_req(a, NIXL_WRITE, &ll, &rl, "tgt", &opt, &req), NIXL_SUCCESS);
    if (!req) goto out;
    CHECK_ST(post_wait(a, req, b, 60), NIXL_SUCCESS);
    for (i = 0; i < N; i++) {
        static const unsigned char zero[STRIDE - SZ];
        if (!nt_verify(r + (size_t)i * STRIDE, SZ, 1000u + (unsigned)i)) ok = 0;
        if (memcmp(r + (size_t)i * STRIDE + SZ, zero, STRIDE - SZ) != 0) gaps = 0;
    }
    CHECKF(ok, "all %d descriptors landed", N);
    CHECKF(gaps, "nothing written between the descriptors");
    CHECK(wait_notes(b, a, &q, 1, 20) == 1 && strcmp(q.msg[0], "many") == 0);
    CHECK_ST(nixl_release_xfer_req(a, req), NIXL_SUCCESS);
    /* and back: READ the 10,000 pieces into a cleared buffer */
    memset(l, 0, (size_t)N * SZ);
    req = NULL;
    CHECK_ST(nixl_create_xfer_req(a, NIXL_READ, &ll, &rl, "tgt", NULL, &req), NIXL_SUCCESS);
    if (req) {
        CHECK_ST(post_wait(a, req, b, 60), NIXL_SUCCESS);
        for (ok = 1, i = 0; i < N; i++)
            if (!nt_verify(l + (size_t)i * SZ, SZ, 1000u + (unsigned)i)) ok = 0;
        CHECKF(ok, "all %d descriptors read back", N);
        CHECK_ST(nixl_release_xfer_req(a, req), NIXL_SUCCESS);
    }
out:
    notes_free(&q);
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
    free(ld);
    free(rd);
    free(l);
    free(r);
}

/* vLLM-like: both sides prepared once, blocks picked by id per request. */
static void test_prepared_indices(void) {
    enum { NB = 64, BS = 16384, PICK = 16 };
    nixl_agent_t *a = make_agent("ini"), *b = make_agent("tgt");
    unsigned char *l = xmalloc((size_t)NB * BS), *r = xmalloc((size_t)NB * BS);
    nixl_desc_t ld[NB], rd[NB];
    nixl_dlist_t ll, rl;
    nixl_dlist_handle_t *lh = NULL, *rh = NULL;
    int lidx[PICK], ridx[PICK], i, round;
    if (!a || !b) goto out;
    CHECK_ST(xu_reg(a, l, (size_t)NB * BS), NIXL_SUCCESS);
    CHECK_ST(xu_reg(b, r, (size_t)NB * BS), NIXL_SUCCESS);
    CHECK_ST(share_md(b, a), NIXL_SUCCESS);
    for (i = 0; i < NB; i++) {
        ld[i].addr = (uintptr_t)(l + (size_t)i * BS);
        rd[i].addr = (uintptr_t)(r + (size_t)i * BS);
        ld[i].len = rd[i].len = BS;
        ld[i].dev_id = rd[i].dev_id = 0;
    }
    ll.mem = rl.mem = NIXL_DRAM;
    ll.descs = ld;
    rl.descs = rd;
    ll.count = rl.count = NB;
    CHECK_ST(nixl_prep_xfer_dlist(a, NULL, &ll, NULL, &lh), NIXL_SUCCESS);
    CHECK_ST(nixl_prep_xfer_dlist(a, "tgt", &rl, NULL, &rh), NIXL_SUCCESS);
    if (!lh || !rh) goto out;
    for (round = 0; round < 4; round++) {
        nixl_xfer_op_t op = (round & 1) ? NIXL_READ : NIXL_WRITE;
        nixl_xfer_req_t *req = NULL;
        int ok = 1, untouched = 1;
        memset(l, 0xee, (size_t)NB * BS);
        memset(r, 0xee, (size_t)NB * BS);
        for (i = 0; i < PICK; i++) {
            lidx[i] = (i * 7 + round) % NB;          /* block ids, not in order */
            ridx[i] = (NB - 1 - i * 3 - round) % NB;
            nt_fill((op == NIXL_WRITE ? l + (size_t)lidx[i] * BS : r + (size_t)ridx[i] * BS), BS,
                    (unsigned)(round * 100 + i));
        }
        CHECK_ST(nixl_make_xfer_req(a, op, lh, lidx, PICK, rh, ridx, PICK, NULL, &req), NIXL_SUCCESS);
        if (!req) continue;
        CHECK_ST(post_wait(a, req, b, 30), NIXL_SUCCESS);
        for (i = 0; i < PICK; i++) {
            unsigned char *dst = op == NIXL_WRITE ? r + (size_t)ridx[i] * BS : l + (size_t)lidx[i] * BS;
            if (!nt_verify(dst, BS, (unsigned)(round * 100 + i))) ok = 0;
        }
        CHECKF(ok, "round %d (%s): every picked block landed at its id", round, op == NIXL_WRITE ? "WRITE" : "READ");
        /* blocks not picked on the destination side stay as they were */
        for (i = 0; i < NB; i++) {
            int j, picked = 0;
            unsigned char *dst = op == NIXL_WRITE ? r + (size_t)i * BS : l + (size_t)i * BS;
            for (j = 0; j < PICK; j++)
                if ((op == NIXL_WRITE ? ridx[j] : lidx[j]) == i) picked = 1;
            if (!picked && (dst[0] != 0xee || dst[BS - 1] != 0xee)) untouched = 0;
        }
        CHECKF(untouched, "round %d: blocks not picked are untouched", round);
        CHECK_ST(nixl_release_xfer_req(a, req), NIXL_SUCCESS);
    }
out:
    if (lh) CHECK_ST(nixl_release_dlist_handle(a, lh), NIXL_SUCCESS);
    if (rh) CHECK_ST(nixl_release_dlist_handle(a, rh), NIXL_SUCCESS);
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
    free(l);
    free(r);
}

/* One prepared request posted 100 times; every post's bytes and notification. */
static void test_repost_100(void) {
    enum { SZ = 65536, N = 100 };
    nixl_agent_t *a = make_agent("ini"), *b = make_agent("tgt");
    unsigned char *l = xmalloc(SZ), *r = xmalloc(SZ);
    nixl_xfer_req_t *req = NULL;
    notes_t q;
    int i, ok = 1, st_ok = 1, refused = 0, reposted = 0;
    size_t j;
    memset(&q, 0, sizeof q);
    if (!a || !b) goto out;
    CHECK_ST(xu_reg(a, l, SZ), NIXL_SUCCESS);
    CHECK_ST(xu_reg(b, r, SZ), NIXL_SUCCESS);
    CHECK_ST(share_md(b, a), NIXL_SUCCESS);
    CHECK_ST(make_req1(a, NIXL_WRITE, l, (uintptr_t)r, SZ, "tgt", "x", &req), NIXL_SUCCESS);
    if (!req) goto out;
    for (i = 0; i < N; i++) {
        char note[32];
        nixl_opt_args_t opt;
        nixl_status_t st;
        nt_fill(l, SZ, 500u + (unsigned)i);
        snprintf(note, sizeof note, "post-%d", i);
        memset(&opt, 0, sizeof opt);
        opt.notif = note;
        opt.notif_len = strlen(note);
        opt.has_notif = 1;
        st = nixl_post_xfer_req(a, req, &opt);
        if (st == NIXL_IN_PROG) {
            /* posting again while in flight is refused (the target has not
               progressed yet, so on tcp and shared memory it is in flight) */
            nixl_status_t again = nixl_post_xfer_req(a, req, NULL);
            if (again == NIXL_ERR_REPOST_ACTIVE) refused++;
            else if (again == NIXL_IN_PROG || again == NIXL_SUCCESS) reposted++; /* it had finished */
            else st_ok = 0;
            st = wait_xfer(a, req, b, 30);
        }
        if (st != NIXL_SUCCESS) st_ok = 0;
        if (!nt_verify(r, SZ, 500u + (unsigned)i)) ok = 0;
    }
    CHECKF(st_ok, "100 posts all ended in SUCCESS");
    CHECKF(ok, "100 posts all delivered their bytes");
    CHECKF(refused > 0, "a post while in flight was refused %d times (re-posted after completion: %d)", refused,
           reposted);
    wait_notes(b, a, &q, (size_t)(N + reposted), 20);
    CHECKF(q.n == (size_t)(N + reposted), "%zu notifications for %d posts", q.n, N + reposted);
    /* in posting order; a re-post repeats the notification it follows */
    for (ok = 1, i = 0, j = 0; i < N && j < q.n; i++) {
        char note[32];
        snprintf(note, sizeof note, "post-%d", i);
        if (strcmp(q.msg[j++], note) != 0) ok = 0;
        while (j < q.n && strcmp(q.msg[j], note) == 0) j++;
    }
    CHECKF(ok && i == N, "notifications in posting order");
    CHECK_ST(nixl_release_xfer_req(a, req), NIXL_SUCCESS);
out:
    notes_free(&q);
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
    free(l);
    free(r);
}

/* The initiator never asks for status: nixl_progress alone completes the
   request and sends its notification. */
static void test_progress_only(void) {
    enum { SZ = 2 * MiB };
    nixl_agent_t *a = make_agent("ini"), *b = make_agent("tgt");
    unsigned char *l = xmalloc(SZ), *r = xmalloc(SZ);
    nixl_xfer_req_t *req = NULL;
    notes_t q;
    uint64_t until;
    nixl_status_t st;
    memset(&q, 0, sizeof q);
    if (!a || !b) goto out;
    CHECK_ST(xu_reg(a, l, SZ), NIXL_SUCCESS);
    CHECK_ST(xu_reg(b, r, SZ), NIXL_SUCCESS);
    CHECK_ST(share_md(b, a), NIXL_SUCCESS);
    nt_fill(l, SZ, 4242);
    CHECK_ST(make_req1(a, NIXL_WRITE, l, (uintptr_t)r, SZ, "tgt", "progress-only", &req), NIXL_SUCCESS);
    if (!req) goto out;
    st = nixl_post_xfer_req(a, req, NULL);
    CHECK(st == NIXL_IN_PROG || st == NIXL_SUCCESS);
    until = nixl_now_us() + (uint64_t)(20e6 * nt_scale);
    while (q.n == 0 && nixl_now_us() < until) {
        nixl_progress(a);
        nixl_get_notifs(b, notes_cb, &q);
    }
    CHECKF(q.n == 1 && strcmp(q.msg[0], "progress-only") == 0, "notification arrived with nixl_progress alone");
    CHECK(nt_verify(r, SZ, 4242));
    CHECK_ST(nixl_get_xfer_status(a, req), NIXL_SUCCESS);
    CHECK_ST(nixl_release_xfer_req(a, req), NIXL_SUCCESS);
out:
    notes_free(&q);
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
    free(l);
    free(r);
}

/* A gen_notif right before invalidating the peer still arrives (the endpoint
   closes once what was sent on it completed); the peer's metadata is gone. */
static void test_invalidate_after_notif(void) {
    nixl_agent_t *a = make_agent("ini"), *b = make_agent("tgt");
    unsigned char *r = xmalloc(4096);
    notes_t q;
    int i;
    memset(&q, 0, sizeof q);
    if (!a || !b) goto out;
    CHECK_ST(xu_reg(b, r, 4096), NIXL_SUCCESS);
    CHECK_ST(share_md(b, a), NIXL_SUCCESS);
    /* a first notification opens the session: what is still waiting for a
       session when the peer is invalidated is dropped (logged) */
    CHECK_ST(nixl_gen_notif(a, "tgt", "open", 4, NULL), NIXL_SUCCESS);
    CHECK(wait_notes(b, a, &q, 1, 20) == 1);
    notes_free(&q);
    memset(&q, 0, sizeof q);
    for (i = 0; i < 100; i++) {
        char m[16];
        snprintf(m, sizeof m, "last-%d", i);
        CHECK_ST(nixl_gen_notif(a, "tgt", m, strlen(m), NULL), NIXL_SUCCESS);
    }
    CHECK_ST(nixl_invalidate_remote_md(a, "tgt"), NIXL_SUCCESS);
    CHECK_ST(nixl_check_remote_md(a, "tgt", NULL), NIXL_ERR_NOT_FOUND);
    CHECK_ST(nixl_gen_notif(a, "tgt", "x", 1, NULL), NIXL_ERR_NOT_FOUND);
    wait_notes(b, a, &q, 100, 20);
    CHECKF(q.n == 100 && strcmp(q.msg[99], "last-99") == 0, "%zu of 100 notifications sent before the invalidation",
           q.n);
    /* and the peer can be loaded again. On tcp the target may see our
       closed endpoints as "ini went down" and drop ini's metadata a moment
       later: let that settle first, or it would undo the reload (and
       without a token the target then cannot verify ini's new session) */
    {
        uint64_t until = nixl_now_us() + (uint64_t)(2e6 * nt_scale);
        while (nixl_now_us() < until && nixl_check_remote_md(b, "ini", NULL) == NIXL_SUCCESS) {
            nixl_progress(a);
            nixl_progress(b);
        }
    }
    CHECK_ST(share_md(b, a), NIXL_SUCCESS);
    CHECK_ST(nixl_gen_notif(a, "tgt", "again", 5, NULL), NIXL_SUCCESS);
    CHECK(wait_notes(b, a, &q, 101, 20) == 101 && strcmp(q.msg[100], "again") == 0);
out:
    notes_free(&q);
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
    free(r);
}

/* Several threads posting on one agent at once; the target has a progress thread. */
enum { TH = 4, TH_ITERS = 50, TH_SZ = 262144 };
typedef struct th_arg {
    nixl_agent_t *a;
    unsigned char *l, *r;
    int id, ok_bytes, ok_status;
} th_arg_t;

static void *poster(void *p) {
    th_arg_t *t = (th_arg_t *)p;
    nixl_xfer_req_t *req = NULL;
    char note[32];
    int i;
    snprintf(note, sizeof note, "thread-%d", t->id);
    t->ok_bytes = t->ok_status = 1;
    if (make_req1(t->a, NIXL_WRITE, t->l, (uintptr_t)t->r, TH_SZ, "tgt", note, &req) != NIXL_SUCCESS) {
        t->ok_status = 0;
        return NULL;
    }
    for (i = 0; i < TH_ITERS; i++) {
        unsigned seed = (unsigned)(t->id * 1000 + i);
        nt_fill(t->l, TH_SZ, seed);
        if (post_wait(t->a, req, NULL, 30) != NIXL_SUCCESS) t->ok_status = 0;
        if (!nt_verify(t->r, TH_SZ, seed)) t->ok_bytes = 0;
    }
    if (nixl_release_xfer_req(t->a, req) != NIXL_SUCCESS) t->ok_status = 0;
    return NULL;
}

static void test_threads(void) {
    nixl_agent_t *a = make_agent("ini"), *b = make_agent_extra("tgt", "num_workers=1", 1);
    unsigned char *l = xmalloc((size_t)TH * TH_SZ), *r = xmalloc((size_t)TH * TH_SZ);
    pthread_t th[TH];
    th_arg_t arg[TH];
    notes_t q;
    int i, per[TH];
    memset(&q, 0, sizeof q);
    if (!a || !b) goto out;
    CHECK_ST(xu_reg(a, l, (size_t)TH * TH_SZ), NIXL_SUCCESS);
    CHECK_ST(xu_reg(b, r, (size_t)TH * TH_SZ), NIXL_SUCCESS);
    CHECK_ST(share_md(b, a), NIXL_SUCCESS);
    for (i = 0; i < TH; i++) {
        arg[i].a = a;
        arg[i].l = l + (size_t)i * TH_SZ;
        arg[i].r = r + (size_t)i * TH_SZ;
        arg[i].id = i;
        CHECK(pthread_create(&th[i], NULL, poster, &arg[i]) == 0);
    }
    for (i = 0; i < TH; i++) {
        pthread_join(th[i], NULL);
        CHECKF(arg[i].ok_status, "thread %d: every post ended in SUCCESS", i);
        CHECKF(arg[i].ok_bytes, "thread %d: every post delivered its bytes", i);
    }
    wait_notes(b, NULL, &q, TH * TH_ITERS, 20);
    CHECKF(q.n == TH * TH_ITERS, "%zu notifications, want %d", q.n, TH * TH_ITERS);
    memset(per, 0, sizeof per);
    for (i = 0; (size_t)i < q.n; i++) {
        int id = -1;
        if (sscanf(q.msg[i], "thread-%d", &id) == 1 && id >= 0 && id < TH) per[id]++;
    }
    for (i = 0; i < TH; i++) CHECKF(per[i] == TH_ITERS, "thread %d: %d notifications", i, per[i]);
out:
    notes_free(&q);
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
    free(l);
    free(r);
}

/* Transfers within one agent (NIXL_CAP_LOCAL). */
static void test_loopback(void) {
    enum { SZ = 3 * MiB + 17 };
    nixl_agent_t *a = make_agent("solo");
    unsigned char *src = xmalloc(SZ), *dst = xmalloc(SZ);
    nixl_xfer_req_t *req = NULL;
    notes_t q;
    memset(&q, 0, sizeof q);
    if (!a) goto out;
    CHECK_ST(xu_reg(a, src, SZ), NIXL_SUCCESS);
    CHECK_ST(xu_reg(a, dst, SZ), NIXL_SUCCESS);
    nt_fill(src, SZ, 77);
    CHECK_ST(make_req1(a, NIXL_WRITE, src, (uintptr_t)dst, SZ, "solo", "self-write", &req), NIXL_SUCCESS);
    if (req) {
        CHECK_ST(post_wait(a, req, NULL, 30), NIXL_SUCCESS);
        CHECK(nt_verify(dst, SZ, 77));
        CHECK_ST(nixl_release_xfer_req(a, req), NIXL_SUCCESS);
    }
    CHECK(wait_notes(a, NULL, &q, 1, 10) == 1 && strcmp(q.msg[0], "self-write") == 0 &&
          strcmp(q.from[0], "solo") == 0);
    nt_fill(dst, SZ, 78);
    memset(src, 0, SZ);
    req = NULL;
    CHECK_ST(make_req1(a, NIXL_READ, src, (uintptr_t)dst, SZ, "solo", NULL, &req), NIXL_SUCCESS);
    if (req) {
        CHECK_ST(post_wait(a, req, NULL, 30), NIXL_SUCCESS);
        CHECK(nt_verify(src, SZ, 78));
        CHECK_ST(nixl_release_xfer_req(a, req), NIXL_SUCCESS);
    }
    CHECK_ST(nixl_gen_notif(a, "solo", "hello me", 8, NULL), NIXL_SUCCESS);
    CHECK(wait_notes(a, NULL, &q, 2, 10) == 2 && strcmp(q.msg[1], "hello me") == 0);
    CHECK_ST(xu_dereg(a, src, SZ), NIXL_SUCCESS);
    CHECK_ST(xu_dereg(a, dst, SZ), NIXL_SUCCESS);
out:
    notes_free(&q);
    nixl_agent_destroy(a);
    free(src);
    free(dst);
}

/* Descriptors outside registered regions never reach UCX. */
static void test_invalid_descriptors(void) {
    enum { SZ = 8192 };
    nixl_agent_t *a = make_agent("ini"), *b = make_agent("tgt");
    unsigned char *l = xmalloc(2 * SZ), *r = xmalloc(2 * SZ);
    nixl_xfer_req_t *req = NULL;
    if (!a || !b) goto out;
    CHECK_ST(xu_reg(a, l, SZ), NIXL_SUCCESS);
    CHECK_ST(xu_reg(b, r, SZ), NIXL_SUCCESS);
    CHECK_ST(share_md(b, a), NIXL_SUCCESS);
    memset(r, 0x5a, 2 * SZ);
    /* remote runs past the region's end */
    CHECK_ST(make_req1(a, NIXL_WRITE, l, (uintptr_t)(r + SZ / 2), SZ, "tgt", NULL, &req), NIXL_ERR_NOT_FOUND);
    CHECK(req == NULL);
    /* remote entirely outside */
    CHECK_ST(make_req1(a, NIXL_WRITE, l, (uintptr_t)(r + SZ), 16, "tgt", NULL, &req), NIXL_ERR_NOT_FOUND);
    /* local outside */
    CHECK_ST(make_req1(a, NIXL_WRITE, l + SZ, (uintptr_t)r, 16, "tgt", NULL, &req), NIXL_ERR_NOT_FOUND);
    /* unknown peer */
    CHECK_ST(make_req1(a, NIXL_WRITE, l, (uintptr_t)r, 16, "nobody", NULL, &req), NIXL_ERR_NOT_FOUND);
    {
        unsigned char expect[2 * SZ];
        memset(expect, 0x5a, sizeof expect);
        nixl_progress(a);
        nixl_progress(b);
        CHECKF(memcmp(r, expect, 2 * SZ) == 0, "nothing was written on the target");
    }
    /* VRAM: Debian's UCX has no CUDA */
    {
        nixl_desc_t d;
        nixl_dlist_t dl;
        d.addr = (uintptr_t)l;
        d.len = 64;
        d.dev_id = 0;
        dl.mem = NIXL_VRAM;
        dl.descs = &d;
        dl.count = 1;
        if (nixl_ucx_backend()->mem_mask & NIXL_MEM_BIT(NIXL_VRAM))
            SKIP("this UCX supports CUDA memory");
        else
            CHECK_ST(nixl_register_mem(a, &dl, NULL), NIXL_ERR_NOT_SUPPORTED);
        /* a UCX that takes CUDA memory still gets no pointer unchecked: the
           backend asks the CUDA driver first (here: absent, so refused) */
        if (dlopen(NIXL_CUDA_LIB, RTLD_NOW | RTLD_LOCAL)) {
            SKIP("a CUDA driver is installed (tests/test_gpu.c covers the check there)");
        } else {
            _nixl_ucx_engine_t *eng = (_nixl_ucx_engine_t *)a->be[0]->engine;
            uint64_t saved = eng->mem_types;
            void *md = NULL;
            eng->mem_types |= 1ull << UCS_MEMORY_TYPE_CUDA;
            CHECK_ST(_nixl_ucx_register_mem(eng, NIXL_VRAM, &d, &md), NIXL_ERR_NOT_SUPPORTED);
            CHECK(md == NULL);
            eng->mem_types = saved;
        }
    }
    /* both agents live in this process: let their endpoints finish wiring
       up (UCX 1.13 asserts when one closes with a wire-up reply queued) */
    settle(a, b);
out:
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
    free(l);
    free(r);
}

/* Params: values validated, UCX variables passed through, several workers. */
static void test_params(void) {
    nixl_status_t st = NIXL_SUCCESS;
    nixl_agent_t *x;
    char p[1200];
    x = make_agent_cfg("p", "num_workers=0", 0, &st);
    CHECK(x == NULL);
    CHECK_ST(st, NIXL_ERR_INVALID_PARAM);
    x = make_agent_cfg("p", "num_workers=many", 0, &st);
    CHECK_ST(st, NIXL_ERR_INVALID_PARAM);
    x = make_agent_cfg("p", "ucx.NO_SUCH_UCX_VARIABLE=1", 0, &st);
    CHECK_ST(st, NIXL_ERR_INVALID_PARAM);
    x = make_agent_cfg("p", "tls=", 0, &st);
    CHECK_ST(st, NIXL_ERR_INVALID_PARAM);
    x = make_agent_cfg("p", "bogus=1", 0, &st);
    CHECK_ST(st, NIXL_ERR_INVALID_PARAM);
    snprintf(p, sizeof p, "%s,ucx.UCX_RNDV_THRESH=16k,ucx.MAX_EAGER_RAILS=1", g_params);
    x = make_agent_cfg("p", p, 0, &st);
    CHECK_ST(st, NIXL_SUCCESS);
    nixl_agent_destroy(x);
    /* 3 workers talking to 2: requests spread over every worker */
    {
        nixl_agent_t *a = make_agent_extra("ini", "num_workers=3", 0);
        nixl_agent_t *b = make_agent_extra("tgt", "num_workers=2", 0);
        enum { SZ = 300000 };
        unsigned char *l = xmalloc(SZ), *r = xmalloc(SZ);
        notes_t q;
        int i;
        memset(&q, 0, sizeof q);
        if (a && b) {
            CHECK_ST(xu_reg(a, l, SZ), NIXL_SUCCESS);
            CHECK_ST(xu_reg(b, r, SZ), NIXL_SUCCESS);
            CHECK_ST(share_md(b, a), NIXL_SUCCESS);
            for (i = 0; i < 6; i++) {
                nixl_xfer_req_t *req = NULL;
                nt_fill(l, SZ, 900u + (unsigned)i);
                CHECK_ST(make_req1(a, i % 2 ? NIXL_READ : NIXL_WRITE, l, (uintptr_t)r, SZ, "tgt", "w", &req),
                         NIXL_SUCCESS);
                if (i % 2) nt_fill(r, SZ, 950u + (unsigned)i);
                if (!req) continue;
                CHECK_ST(post_wait(a, req, b, 30), NIXL_SUCCESS);
                CHECKF(i % 2 ? nt_verify(l, SZ, 950u + (unsigned)i) : nt_verify(r, SZ, 900u + (unsigned)i),
                       "request %d (worker %d) moved its bytes", i, i % 3);
                CHECK_ST(nixl_release_xfer_req(a, req), NIXL_SUCCESS);
            }
            CHECK(wait_notes(b, a, &q, 6, 10) == 6);
        }
        notes_free(&q);
        nixl_agent_destroy(a);
        nixl_agent_destroy(b);
        free(l);
        free(r);
    }
}

// >>tests: two processes

enum { CMD_WRITE = 1, CMD_READ = 2, CMD_BYE = 3 };
#define TGT_REGION (64 * MiB)

static int send_u64(int fd, uint64_t v) { return write_all(fd, &v, sizeof v); }

static uint64_t recv_u64(int fd) {
    uint64_t v = 0;
    if (read_all(fd, &v, sizeof v) != 0) return 0;
    return v;
}

/* Initiator side of a two-process test: agent "ini" with a region of lsize
   bytes; loads the target's metadata and learns its region's address. */
typedef struct side {
    nixl_agent_t *a;
    unsigned char *buf;
    size_t len;
    uintptr_t raddr;
} side_t;

static int ini_open(side_t *x, int s, size_t lsize, const char *extra) {
    char peer[256];
    memset(x, 0, sizeof *x);
    x->a = extra ? make_agent_extra("ini", extra, 0) : make_agent("ini");
    x->buf = xmalloc(lsize);
    x->len = lsize;
    if (!x->a) return -1;
    CHECK_ST(xu_reg(x->a, x->buf, lsize), NIXL_SUCCESS);
    CHECK_ST(recv_md(s, x->a, peer, sizeof peer), NIXL_SUCCESS);
    CHECK(strcmp(peer, "tgt") == 0);
    x->raddr = (uintptr_t)recv_u64(s);
    CHECK(send_md(s, x->a) == 0);
    return x->raddr ? 0 : -1;
}

static int tgt_open(side_t *x, int s, size_t size, const char *extra) {
    char peer[256];
    memset(x, 0, sizeof *x);
    x->a = extra ? make_agent_extra("tgt", extra, 0) : make_agent("tgt");
    x->buf = xmalloc(size);
    x->len = size;
    if (!x->a) return -1;
    CHECK_ST(xu_reg(x->a, x->buf, size), NIXL_SUCCESS);
    CHECK(send_md(s, x->a) == 0);
    CHECK(send_u64(s, (uint64_t)(uintptr_t)x->buf) == 0);
    CHECK_ST(recv_md(s, x->a, peer, sizeof peer), NIXL_SUCCESS);
    return 0;
}

static void side_close(side_t *x) {
    if (x->a) nixl_agent_destroy(x->a);
    free(x->buf);
    memset(x, 0, sizeof *x);
}

/* The target of test_sizes_two_processes: serves rounds the initiator announces. */
static void sizes_target(int s) {
    side_t t;
    if (tgt_open(&t, s, TGT_REGION, NULL) == 0)
        for (;;) {
            uint32_t cmd = recv_u32(s), size, seed;
            notes_t q;
            char want[64];
            if (cmd != CMD_WRITE && cmd != CMD_READ) break;
            size = recv_u32(s);
            seed = recv_u32(s);
            if (cmd == CMD_READ) nt_fill(t.buf, size, seed);
            send_u32(s, 1); /* ready */
            memset(&q, 0, sizeof q);
            snprintf(want, sizeof want, "%s-%u-%u", cmd == CMD_WRITE ? "w" : "r", size, seed);
            CHECKF(wait_notes(t.a, NULL, &q, 1, 60) == 1, "notification %s arrived", want);
            if (q.n)
                CHECKF(strcmp(q.msg[0], want) == 0 && strcmp(q.from[0], "ini") == 0, "got '%s' from %s, want '%s'",
                       q.msg[0], q.from[0], want);
            /* the notification comes after the data: check right away */
            if (cmd == CMD_WRITE)
                CHECKF(nt_verify(t.buf, size, seed), "WRITE of %u bytes landed before its notification", size);
            notes_free(&q);
            send_u32(s, 2); /* checked */
        }
    side_close(&t);
}

/* READ and WRITE of 1 B .. 64 MiB between two processes. */
static void test_sizes_two_processes(void) {
    int s, op;
    size_t i;
    pid_t pid = spawn_peer(sizes_target, &s, 150);
    side_t x;
    if (ini_open(&x, s, TGT_REGION, NULL) == 0)
        for (i = 0; i < sizeof k_sizes / sizeof k_sizes[0]; i++)
            for (op = 0; op < 2; op++) {
                uint32_t size = (uint32_t)k_sizes[i], seed = (uint32_t)(200 + i * 2 + (size_t)op);
                nixl_xfer_op_t xop = op ? NIXL_READ : NIXL_WRITE;
                nixl_xfer_req_t *req = NULL;
                char note[64];
                snprintf(note, sizeof note, "%s-%u-%u", op ? "r" : "w", size, seed);
                memset(x.buf, 0, size);
                if (xop == NIXL_WRITE) nt_fill(x.buf, size, seed);
                send_u32(s, op ? CMD_READ : CMD_WRITE);
                send_u32(s, size);
                send_u32(s, seed);
                CHECK(recv_u32(s) == 1);
                CHECK_ST(make_req1(x.a, xop, x.buf, x.raddr, size, "tgt", note, &req), NIXL_SUCCESS);
                if (req) {
                    CHECK_ST(post_wait(x.a, req, NULL, 60), NIXL_SUCCESS);
                    if (xop == NIXL_READ) CHECKF(nt_verify(x.buf, size, seed), "READ of %u bytes intact", size);
                }
                /* keep progressing: the notification may still be on its way */
                CHECK(progress_until_readable(x.a, s, 60));
                CHECK(recv_u32(s) == 2);
                if (req) CHECK_ST(nixl_release_xfer_req(x.a, req), NIXL_SUCCESS);
            }
    send_u32(s, CMD_BYE);
    side_close(&x);
    CHECK_CHILD(pid);
    close(s);
}

/* The target checks, on each notification, that its slot holds the data. */
enum { ORD_SLOTS = 16, ORD_SZ = MiB };
static void ordering_target(int s) {
    side_t t;
    notes_t q;
    int k, ok = 1;
    memset(&q, 0, sizeof q);
    if (tgt_open(&t, s, (size_t)ORD_SLOTS * ORD_SZ, NULL) != 0) goto out;
    /* READ slots hold data the initiator reads; filled before it starts */
    for (k = 0; k < ORD_SLOTS; k++)
        if (k % 2) nt_fill(t.buf + (size_t)k * ORD_SZ, ORD_SZ, 7000u + (unsigned)k);
    send_u32(s, 1);
    while (q.n < ORD_SLOTS) {
        size_t before = q.n, j;
        if (wait_notes(t.a, NULL, &q, before + 1, 60) == before) break;
        for (j = before; j < q.n; j++) {
            int slot = -1;
            if (sscanf(q.msg[j], "slot-%d", &slot) != 1 || slot < 0 || slot >= ORD_SLOTS) {
                ok = 0;
                continue;
            }
            if (slot % 2 == 0) {
                if (!nt_verify(t.buf + (size_t)slot * ORD_SZ, ORD_SZ, 7000u + (unsigned)slot)) ok = 0;
            } else {
                /* READ done: the source may change now without harm */
                memset(t.buf + (size_t)slot * ORD_SZ, 0, ORD_SZ);
            }
        }
    }
    CHECKF(q.n == ORD_SLOTS, "%zu of %d notifications", q.n, ORD_SLOTS);
    CHECKF(ok, "every WRITE's slot was complete when its notification arrived");
    send_u32(s, 2);
out:
    notes_free(&q);
    side_close(&t);
}

static void test_notification_ordering(void) {
    int s, k;
    pid_t pid = spawn_peer(ordering_target, &s, 100);
    side_t x;
    nixl_xfer_req_t *reqs[ORD_SLOTS];
    int ok = 1;
    memset(reqs, 0, sizeof reqs);
    if (ini_open(&x, s, (size_t)ORD_SLOTS * ORD_SZ, NULL) == 0 && recv_u32(s) == 1) {
        /* all requests in flight at once, each with its notification */
        for (k = 0; k < ORD_SLOTS; k++) {
            char note[32];
            unsigned char *lb = x.buf + (size_t)k * ORD_SZ;
            nixl_status_t st;
            snprintf(note, sizeof note, "slot-%d", k);
            if (k % 2 == 0) nt_fill(lb, ORD_SZ, 7000u + (unsigned)k);
            CHECK_ST(make_req1(x.a, k % 2 ? NIXL_READ : NIXL_WRITE, lb, x.raddr + (size_t)k * ORD_SZ, ORD_SZ, "tgt",
                               note, &reqs[k]),
                     NIXL_SUCCESS);
            if (!reqs[k]) continue;
            st = nixl_post_xfer_req(x.a, reqs[k], NULL);
            CHECKF(st == NIXL_IN_PROG || st == NIXL_SUCCESS, "post %d: %s", k, nixl_status_str(st));
        }
        for (k = 0; k < ORD_SLOTS; k++) {
            if (!reqs[k]) continue;
            CHECK_ST(wait_xfer(x.a, reqs[k], NULL, 60), NIXL_SUCCESS);
            if (k % 2 && !nt_verify(x.buf + (size_t)k * ORD_SZ, ORD_SZ, 7000u + (unsigned)k)) ok = 0;
        }
        CHECKF(ok, "every READ slot arrived intact");
        CHECK(progress_until_readable(x.a, s, 60));
        CHECK(recv_u32(s) == 2);
        for (k = 0; k < ORD_SLOTS; k++)
            if (reqs[k]) CHECK_ST(nixl_release_xfer_req(x.a, reqs[k]), NIXL_SUCCESS);
    }
    side_close(&x);
    CHECK_CHILD(pid);
    close(s);
}

/* 10,000 gen_notif in a burst: complete and in order. */
enum { BURST = 10000 };
static void burst_target(int s) {
    side_t t;
    notes_t q;
    int i, ok = 1;
    memset(&q, 0, sizeof q);
    if (tgt_open(&t, s, 4096, NULL) == 0) {
        send_u32(s, 1);
        wait_notes(t.a, NULL, &q, BURST, 60);
        CHECKF(q.n == BURST, "%zu of %d notifications arrived", q.n, BURST);
        for (i = 0; (size_t)i < q.n; i++) {
            char want[32];
            snprintf(want, sizeof want, "burst-%05d", i);
            if (strcmp(q.msg[i], want) != 0 || q.len[i] != strlen(want) || strcmp(q.from[i], "ini") != 0) {
                if (ok) printf("  first mismatch at %d: '%s' from %s\n", i, q.msg[i], q.from[i]);
                ok = 0;
            }
        }
        CHECKF(ok, "in order, intact, from ini");
        send_u32(s, 2);
    }
    notes_free(&q);
    side_close(&t);
}

static void test_gen_notif_burst(void) {
    int s, i, sent = 0;
    pid_t pid = spawn_peer(burst_target, &s, 100);
    side_t x;
    if (ini_open(&x, s, 4096, NULL) == 0 && recv_u32(s) == 1) {
        for (i = 0; i < BURST; i++) {
            char m[32];
            snprintf(m, sizeof m, "burst-%05d", i);
            if (nixl_gen_notif(x.a, "tgt", m, strlen(m), NULL) == NIXL_SUCCESS) sent++;
        }
        CHECKF(sent == BURST, "%d of %d gen_notif calls succeeded", sent, BURST);
        CHECK(progress_until_readable(x.a, s, 60));
        CHECK(recv_u32(s) == 2);
    }
    side_close(&x);
    CHECK_CHILD(pid);
    close(s);
}

/* The owner deregisters a region the peer holds the rkey of. */
enum { DR_SZ = MiB };
static void dereg_target(int s) {
    side_t t;
    notes_t q;
    unsigned char *r2 = xmalloc(DR_SZ);
    memset(&q, 0, sizeof q);
    if (tgt_open(&t, s, DR_SZ, NULL) != 0) goto out;
    CHECK_ST(xu_reg(t.a, r2, DR_SZ), NIXL_SUCCESS);
    CHECK(send_md(s, t.a) == 0); /* now with the second region */
    CHECK(send_u64(s, (uint64_t)(uintptr_t)r2) == 0);
    /* 1: a first WRITE works */
    CHECK(wait_notes(t.a, NULL, &q, 1, 30) == 1);
    CHECK(nt_verify(t.buf, DR_SZ, 31));
    /* 2: deregister region 1, mark it, tell the initiator */
    CHECK_ST(xu_dereg(t.a, t.buf, DR_SZ), NIXL_SUCCESS);
    memset(t.buf, 0xab, DR_SZ);
    CHECK_ST(nixl_gen_notif(t.a, "ini", "dereg-done", 10, NULL), NIXL_SUCCESS);
    /* 3: the initiator tries; then region 2 must still work */
    CHECK(wait_notes(t.a, NULL, &q, 2, 30) == 2);
    CHECK(q.n == 2 && strcmp(q.msg[1], "region2") == 0);
    CHECK(nt_verify(r2, DR_SZ, 33));
    {
        size_t i;
        int untouched = 1;
        for (i = 0; i < DR_SZ; i++)
            if (t.buf[i] != 0xab) untouched = 0;
        CHECKF(untouched, "the deregistered region was not written");
    }
    CHECK_ST(xu_dereg(t.a, r2, DR_SZ), NIXL_SUCCESS);
    send_u32(s, 2);
out:
    notes_free(&q);
    side_close(&t);
    free(r2);
}

static void test_dereg_while_peer_holds_rkey(void) {
    int s;
    pid_t pid = spawn_peer(dereg_target, &s, 60);
    side_t x;
    notes_t q;
    char peer[256];
    uintptr_t r2;
    nixl_xfer_req_t *req = NULL, *req2 = NULL;
    nixl_status_t st;
    memset(&q, 0, sizeof q);
    if (ini_open(&x, s, DR_SZ, NULL) != 0) goto out;
    CHECK_ST(recv_md(s, x.a, peer, sizeof peer), NIXL_SUCCESS);
    r2 = (uintptr_t)recv_u64(s);
    nt_fill(x.buf, DR_SZ, 31);
    CHECK_ST(make_req1(x.a, NIXL_WRITE, x.buf, x.raddr, DR_SZ, "tgt", "first", &req), NIXL_SUCCESS);
    if (!req) goto out;
    CHECK_ST(post_wait(x.a, req, NULL, 30), NIXL_SUCCESS);
    /* the owner deregistered, then notified: the target refuses from then on */
    CHECK(wait_notes(x.a, NULL, &q, 1, 30) == 1 && strcmp(q.msg[0], "dereg-done") == 0);
    nt_fill(x.buf, DR_SZ, 32);
    st = nixl_post_xfer_req(x.a, req, NULL);
    if (st == NIXL_IN_PROG) st = wait_xfer(x.a, req, NULL, 30);
    CHECKF(st == NIXL_ERR_NOT_ALLOWED, "WRITE to the deregistered region: %s (want refused by the target, NIXL_ERR_NOT_ALLOWED)",
           nixl_status_str(st));
    /* the other region is fine */
    nt_fill(x.buf, DR_SZ, 33);
    CHECK_ST(make_req1(x.a, NIXL_WRITE, x.buf, r2, DR_SZ, "tgt", "region2", &req2), NIXL_SUCCESS);
    if (req2) {
        CHECK_ST(post_wait(x.a, req2, NULL, 30), NIXL_SUCCESS);
        CHECK_ST(nixl_release_xfer_req(x.a, req2), NIXL_SUCCESS);
    }
    CHECK(progress_until_readable(x.a, s, 30));
    CHECK(recv_u32(s) == 2);
    CHECK_ST(nixl_release_xfer_req(x.a, req), NIXL_SUCCESS);
out:
    notes_free(&q);
    side_close(&x);
    CHECK_CHILD(pid);
    close(s);
}

/* SIGKILL the target in the middle of transfers: a bounded REMOTE_DISCONNECT. */
static void kill_target(int s) {
    side_t t;
    if (tgt_open(&t, s, 64 * MiB, "ucx.KEEPALIVE_INTERVAL=500ms") != 0) return;
    send_u32(s, 1);
    for (;;) nixl_progress(t.a); /* serve until killed */
}

static void test_peer_killed(void) {
    int s, posts = 0;
    pid_t pid = spawn_peer(kill_target, &s, 60);
    side_t x;
    nixl_xfer_req_t *req = NULL;
    nixl_status_t st = NIXL_IN_PROG;
    uint64_t t0, until;
    int ws = 0;
    if (ini_open(&x, s, 64 * MiB, "ucx.KEEPALIVE_INTERVAL=500ms") != 0 || recv_u32(s) != 1) goto out;
    nt_fill(x.buf, 64 * MiB, 5);
    CHECK_ST(make_req1(x.a, NIXL_WRITE, x.buf, x.raddr, 64 * MiB, "tgt", "never", &req), NIXL_SUCCESS);
    if (!req) goto out;
    st = nixl_post_xfer_req(x.a, req, NULL);
    posts++;
    CHECKF(st == NIXL_IN_PROG, "64 MiB WRITE in flight when the peer is killed (post: %s)", nixl_status_str(st));
    kill(pid, SIGKILL);
    CHECK(waitpid(pid, &ws, 0) == pid && WIFSIGNALED(ws));
    pid = -1;
    t0 = nixl_now_us();
    until = t0 + (uint64_t)(30e6 * nt_scale);
    /* keep the pipe full: a transfer that finished before the kill is posted again */
    while (nixl_now_us() < until) {
        if (st == NIXL_IN_PROG) st = nixl_get_xfer_status(x.a, req);
        if (st == NIXL_SUCCESS) {
            st = nixl_post_xfer_req(x.a, req, NULL);
            posts++;
        }
        if (st != NIXL_IN_PROG && st != NIXL_SUCCESS) break;
    }
    printf("  peer killed: %s after %.3f s (%d posts)\n", nixl_status_str(st), (double)(nixl_now_us() - t0) / 1e6,
           posts);
    CHECKF(st == NIXL_ERR_REMOTE_DISCONNECT, "in-flight request ended in %s", nixl_status_str(st));
    /* the peer's metadata is gone: no new requests to it */
    CHECK_ST(nixl_check_remote_md(x.a, "tgt", NULL), NIXL_ERR_NOT_FOUND);
    st = nixl_post_xfer_req(x.a, req, NULL);
    CHECKF(st == NIXL_ERR_REMOTE_DISCONNECT || st == NIXL_ERR_NOT_FOUND, "re-post after the peer died: %s",
           nixl_status_str(st));
    CHECK_ST(nixl_release_xfer_req(x.a, req), NIXL_SUCCESS);
out:
    side_close(&x);
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &ws, 0);
    }
    close(s);
}


// >>tests: an adversarial peer (issue: only registered memory is reachable)

/* The target holds a registered region, a second one it deregisters on
   request, and a secret it never registered, each framed by canaries. The
   attacker rewrites the region entry of the target's metadata blob (and the
   CRC) to name other memory, loads it, and posts ordinary READs and WRITEs:
   each must be refused by the TARGET, nothing outside its registrations
   read or written, and an honest peer served afterwards. */
#define ADV_SZ (64u * 1024u)
#define ADV_HUGE (256u * MiB)

enum { ADV_DEREG = 1, ADV_CHECK = 2, ADV_QUIT = 3 };

typedef struct adv_mem {
    unsigned char *whole;             /* [canary | region | canary | dead | canary | secret | canary] */
    unsigned char *region, *dead, *secret;
} adv_mem_t;

static void adv_fill(adv_mem_t *m) {
    size_t i;
    m->whole = xmalloc(7 * ADV_SZ);
    for (i = 0; i < 7 * ADV_SZ; i++) m->whole[i] = (unsigned char)(0xA5 ^ (i * 7));
    m->region = m->whole + ADV_SZ;
    m->dead = m->whole + 3 * ADV_SZ;
    m->secret = m->whole + 5 * ADV_SZ;
}

/* Everything but the honest region still holds the pattern. */
static int adv_intact(const adv_mem_t *m) {
    size_t i;
    for (i = 0; i < 7 * ADV_SZ; i++) {
        if (i >= ADV_SZ && i < 2 * ADV_SZ) continue;
        if (m->whole[i] != (unsigned char)(0xA5 ^ (i * 7))) return 0;
    }
    return 1;
}

static void adv_target(int s) {
    adv_mem_t m;
    nixl_agent_t *a = make_agent("tgt");
    char peer[256];
    adv_fill(&m);
    if (!a) return;
    CHECK_ST(xu_reg(a, m.region, ADV_SZ), NIXL_SUCCESS);
    CHECK_ST(xu_reg(a, m.dead, ADV_SZ), NIXL_SUCCESS);
    CHECK(send_md(s, a) == 0);
    send_u64(s, (uint64_t)(uintptr_t)m.region);
    send_u64(s, (uint64_t)(uintptr_t)m.dead);
    send_u64(s, (uint64_t)(uintptr_t)m.secret);
    CHECK_ST(recv_md(s, a, peer, sizeof peer), NIXL_SUCCESS);
    for (;;) {
        uint32_t cmd;
        if (!progress_until_readable(a, s, 120)) break;
        cmd = recv_u32(s);
        if (cmd == ADV_DEREG) CHECK_ST(xu_dereg(a, m.dead, ADV_SZ), NIXL_SUCCESS);
        else if (cmd == ADV_CHECK) send_u32(s, (uint32_t)adv_intact(&m));
        else break;
        if (cmd == ADV_DEREG) send_u32(s, 1);
    }
    CHECKF(adv_intact(&m), "target: the secret, the deregistered region and every canary are untouched");
    nixl_agent_destroy(a);
    free(m.whole);
}

static int all_bytes(const void *p, int v, size_t n) {
    const unsigned char *q = (const unsigned char *)p;
    size_t i;
    for (i = 0; i < n; i++)
        if (q[i] != (unsigned char)v) return 0;
    return 1;
}

static nixl_status_t adv_try(nixl_agent_t *a, nixl_xfer_op_t op, void *lbuf, uint64_t raddr, size_t len) {
    nixl_xfer_req_t *r = NULL;
    nixl_status_t st = make_req1(a, op, lbuf, (uintptr_t)raddr, len, "tgt", NULL, &r);
    if (st != NIXL_SUCCESS) return st;
    st = post_wait(a, r, NULL, 30);
    CHECK_ST(nixl_release_xfer_req(a, r), NIXL_SUCCESS);
    return st;
}

static void test_adversarial_peer(void) {
    int s;
    pid_t pid = spawn_peer(adv_target, &s, 200);
    nixl_agent_t *a = make_agent("ini"), *honest = make_agent("honest");
    unsigned char *blob = NULL, *big = (unsigned char *)calloc(1, ADV_HUGE), *buf = xmalloc(2 * ADV_SZ);
    uint32_t blen = 0;
    uint64_t region, dead, secret;
    size_t i;
    if (!a || !honest || !big) goto out;
    CHECK_ST(xu_reg(a, buf, 2 * ADV_SZ), NIXL_SUCCESS);
    CHECK_ST(xu_reg(a, big, ADV_HUGE), NIXL_SUCCESS);
    blen = recv_u32(s);
    if (blen == 0xffffffffu || !(blob = (unsigned char *)malloc(blen)) || read_all(s, blob, blen) != 0) goto out;
    region = recv_u64(s);
    dead = recv_u64(s);
    secret = recv_u64(s);
    CHECK(send_md(s, a) == 0);
    CHECK_ST(nixl_load_remote_md(a, blob, blen, NULL, 0), NIXL_SUCCESS);
    {   /* a region at address 0 never even loads (the core refuses NULL) */
        unsigned char *zero = xu_forge_md(blob, blen, region, 0, 4096);
        CHECK(zero != NULL);
        if (zero) CHECK_ST(nixl_load_remote_md(a, zero, blen, NULL, 0), NIXL_ERR_INVALID_PARAM);
        free(zero);
    }
    send_u32(s, ADV_DEREG); /* the target deregisters `dead` after we loaded it */
    CHECK(progress_until_readable(a, s, 30) && recv_u32(s) == 1);
    {
        struct { const char *what; uint64_t addr, len; } cases[] = {
            {"the secret (outside every region)", secret, ADV_SZ},
            {"straddling the end of the region", region + ADV_SZ - 64, 128},
            {"the deregistered region", dead, ADV_SZ},
            {"a huge length from the region's start", region, ADV_HUGE},
            {"the zero page (address 64)", 64, 4000},
            {"near the top of the address space", UINT64_MAX - 3 * 4096 + 1, 4096},
        };
        for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            int op;
            unsigned char *forged = cases[i].addr == dead ? NULL
                                    : xu_forge_md(blob, blen, region, cases[i].addr, cases[i].len);
            void *l = cases[i].len > 2 * ADV_SZ ? (void *)big : (void *)buf;
            if (cases[i].addr != dead) {
                CHECKF(forged != NULL, "forged a blob naming %s", cases[i].what);
                if (!forged) continue;
                CHECK_ST(nixl_load_remote_md(a, forged, blen, NULL, 0), NIXL_SUCCESS);
                free(forged);
            }
            for (op = 0; op < 2; op++) {
                nixl_status_t st;
                memset(l, 0x11, cases[i].len < 2 * ADV_SZ ? cases[i].len : 2 * ADV_SZ);
                st = adv_try(a, op ? NIXL_WRITE : NIXL_READ, l, cases[i].addr, (size_t)cases[i].len);
                CHECKF(st == NIXL_ERR_NOT_ALLOWED, "%s of %s: %s (want refused by the target: NIXL_ERR_NOT_ALLOWED)",
                       op ? "WRITE" : "READ", cases[i].what, nixl_status_str(st));
                if (!op) CHECKF(all_bytes(l, 0x11, cases[i].len < 2 * ADV_SZ ? cases[i].len : 2 * ADV_SZ),
                                "READ of %s returned nothing of the target's memory", cases[i].what);
            }
            send_u32(s, ADV_CHECK);
            CHECKF(progress_until_readable(a, s, 30) && recv_u32(s) == 1,
                   "after the attack on %s: the target's memory outside its region is untouched", cases[i].what);
        }
    }
    /* the attacker's honest request still works, and so does another peer */
    nt_fill(buf, ADV_SZ, 71);
    CHECK_ST(adv_try(a, NIXL_WRITE, buf, region, ADV_SZ), NIXL_SUCCESS);
    memset(buf, 0, ADV_SZ);
    CHECK_ST(adv_try(a, NIXL_READ, buf, region, ADV_SZ), NIXL_SUCCESS);
    CHECKF(nt_verify(buf, ADV_SZ, 71), "the registered region still serves (bytes checked)");
    CHECK_ST(xu_reg(honest, buf + ADV_SZ, ADV_SZ), NIXL_SUCCESS);
    CHECK_ST(nixl_load_remote_md(honest, blob, blen, NULL, 0), NIXL_SUCCESS);
    {
        nixl_xfer_req_t *r = NULL;
        nt_fill(buf + ADV_SZ, ADV_SZ, 72);
        CHECK_ST(make_req1(honest, NIXL_WRITE, buf + ADV_SZ, (uintptr_t)region, ADV_SZ, "tgt", NULL, &r), NIXL_SUCCESS);
        if (r) {
            CHECK_ST(post_wait(honest, r, NULL, 30), NIXL_SUCCESS);
            memset(buf + ADV_SZ, 0, ADV_SZ);
            CHECK_ST(nixl_release_xfer_req(honest, r), NIXL_SUCCESS);
            r = NULL;
        }
        CHECK_ST(make_req1(honest, NIXL_READ, buf + ADV_SZ, (uintptr_t)region, ADV_SZ, "tgt", NULL, &r), NIXL_SUCCESS);
        if (r) {
            CHECK_ST(post_wait(honest, r, NULL, 30), NIXL_SUCCESS);
            CHECKF(nt_verify(buf + ADV_SZ, ADV_SZ, 72), "an honest peer is served after the attacks (bytes checked)");
            CHECK_ST(nixl_release_xfer_req(honest, r), NIXL_SUCCESS);
        }
    }
    send_u32(s, ADV_CHECK);
    CHECK(progress_until_readable(a, s, 30) && recv_u32(s) == 1);
    send_u32(s, ADV_QUIT);
out:
    nixl_agent_destroy(honest);
    nixl_agent_destroy(a);
    free(blob);
    free(big);
    free(buf);
    CHECK_CHILD(pid);
    close(s);
}


// >>tests: peer death, 100 times in a row

/* One survivor agent; each round a fresh peer process that is killed
   (SIGKILL) or destroys its agent while transfers run in both directions.
   The survivor must never abort or hang: every request it posted ends in
   SUCCESS (bytes checked) or NIXL_ERR_REMOTE_DISCONNECT, and it keeps
   serving. Modes: 0 target killed under our WRITE, 1 under our READ, 2 peer
   killed while it WRITEs into us, 3 peer destroys its agent mid-transfer. */
#define DEATH_ROUNDS 100
#define DEATH_SZ (4u * MiB)

static void death_peer(int s) {
    uint32_t mode = recv_u32(s), round = recv_u32(s);
    char name[32], peer[256];
    nixl_agent_t *a;
    unsigned char *buf = xmalloc(DEATH_SZ);
    uintptr_t theirs;
    nixl_xfer_req_t *r = NULL;
    snprintf(name, sizeof name, "peer-%u", (unsigned)round);
    a = make_agent(name);
    if (!a) _exit(3);
    nt_fill(buf, DEATH_SZ, round);
    if (xu_reg(a, buf, DEATH_SZ) != NIXL_SUCCESS || send_md(s, a) != 0 ||
        send_u64(s, (uint64_t)(uintptr_t)buf) != 0 || recv_md(s, a, peer, sizeof peer) != NIXL_SUCCESS)
        _exit(4);
    theirs = (uintptr_t)recv_u64(s);
    if (mode >= 2 && make_req1(a, NIXL_WRITE, buf, theirs, DEATH_SZ, peer, NULL, &r) != NIXL_SUCCESS) _exit(5);
    if (r) nixl_post_xfer_req(a, r, NULL);
    {   /* let it get going: death in the middle of UCX 1.13's wire-up can
           trip an assertion inside UCX (see nixl_ucx.h, LIMITS) */
        uint64_t until = nixl_now_us() + 3000;
        while (nixl_now_us() < until) nixl_progress(a);
    }
    send_u32(s, 1); /* transfers run: kill me (or I destroy myself) */
    if (mode == 3) {
        uint64_t until = nixl_now_us() + 2000;
        while (nixl_now_us() < until) nixl_progress(a);
        nixl_agent_destroy(a); /* with requests in flight both ways */
        _exit(0);
    }
    for (;;) {
        if (r && nixl_get_xfer_status(a, r) != NIXL_IN_PROG) nixl_post_xfer_req(a, r, NULL);
        nixl_progress(a);
    }
}

/* One round; 1 if the survivor came through it as it must. */
static int death_tally[4][2]; /* per mode: requests that ended SUCCESS, REMOTE_DISCONNECT */

static int death_round(nixl_agent_t *surv, unsigned char *buf, uint32_t mode, uint32_t round) {
    int s, ws = 0, ok = 1;
    pid_t pid = spawn_peer(death_peer, &s, 60);
    char peer[256];
    uintptr_t raddr;
    nixl_xfer_req_t *r = NULL;
    nixl_status_t st = NIXL_SUCCESS;
    if (pid < 0) return 0;
    send_u32(s, mode);
    send_u32(s, round);
    if (recv_md(s, surv, peer, sizeof peer) != NIXL_SUCCESS) ok = 0;
    raddr = (uintptr_t)recv_u64(s);
    if (ok && (send_md(s, surv) != 0 || send_u64(s, (uint64_t)(uintptr_t)buf) != 0)) ok = 0;

    if (ok && mode <= 1 && make_req1(surv, mode ? NIXL_READ : NIXL_WRITE, buf, raddr, DEATH_SZ, peer, NULL, &r) != NIXL_SUCCESS) ok = 0;
    if (ok && r) st = nixl_post_xfer_req(surv, r, NULL);
    if (ok && !progress_until_readable(surv, s, 30)) ok = 0;
    if (ok) recv_u32(s);
    if (mode != 3) kill(pid, SIGKILL);
    waitpid(pid, &ws, 0);
    close(s);
    if (r && st == NIXL_IN_PROG) st = wait_xfer(surv, r, NULL, 30);
    if (r) {
        if (st == NIXL_SUCCESS && mode == 1) ok &= nt_verify(buf, DEATH_SZ, round);
        if (st == NIXL_SUCCESS || st == NIXL_ERR_REMOTE_DISCONNECT) death_tally[mode][st != NIXL_SUCCESS]++;
        if (st != NIXL_SUCCESS && st != NIXL_ERR_REMOTE_DISCONNECT) {
            printf("  round %u mode %u: request ended in %s\n", (unsigned)round, (unsigned)mode, nixl_status_str(st));
            ok = 0;
        }
        if (nixl_release_xfer_req(surv, r) != NIXL_SUCCESS) ok = 0;
    }
    return ok;
}

static void test_peer_death_100(void) {
    nixl_agent_t *surv = make_agent("surv");
    unsigned char *buf = xmalloc(DEATH_SZ), *lb = xmalloc(4096);
    uint32_t i;
    int good = 0;
    uint64_t t0 = nixl_now_us();
    nixl_xfer_req_t *r = NULL;
    if (!surv) return;
    CHECK_ST(xu_reg(surv, buf, DEATH_SZ), NIXL_SUCCESS);
    CHECK_ST(xu_reg(surv, lb, 4096), NIXL_SUCCESS);
    uint32_t rounds = (uint32_t)atoi(getenv("NIXL_TEST_DEATH_ROUNDS"));
    for (i = 0; i < rounds; i++) good += death_round(surv, buf, i % 4, i);
    CHECKF(good == (int)rounds, "%d of %u peer deaths survived as they must", good, (unsigned)rounds);
    /* still serving: a loopback transfer, bytes checked */
    nt_fill(buf, 4096, 5);
    CHECK_ST(make_req1(surv, NIXL_READ, lb, (uintptr_t)buf, 4096, "surv", NULL, &r), NIXL_SUCCESS);
    if (r) {
        CHECK_ST(post_wait(surv, r, NULL, 30), NIXL_SUCCESS);
        CHECKF(nt_verify(lb, 4096, 5), "the survivor still moves bytes after %d peer deaths", DEATH_ROUNDS);
        CHECK_ST(nixl_release_xfer_req(surv, r), NIXL_SUCCESS);
    }
    printf("FIGURE ucx_peer_death tls=%s rounds=%d survived=%d seconds=%.1f ours_write=%d/%d ours_read=%d/%d "
           "(success/disconnect)\n", g_tls, (int)rounds, good, (double)(nixl_now_us() - t0) / 1e6,
           death_tally[0][0], death_tally[0][1], death_tally[1][0], death_tally[1][1]);
    nixl_agent_destroy(surv);
    free(buf);
    free(lb);
}


/* Forged notifications: "mallory" calls itself "ini" (a peer the target
   loaded) and "ghost" is a name the target never loaded; both load the
   target's metadata and notify it. Without a token the target welcomes a
   HELLO only through its own endpoint to the address in the claimed name's
   metadata; with one, only a peer that proves the token. Either way only
   the real ini's notifications arrive, and its transfers keep working. */
/* notif_unverified=accept: a sender's session opened on its word is
   verified anew once the receiver loads the sender's metadata (the Python
   drop-in's two_peers order: the initiator's HELLO arrives before its
   metadata does). Notifications sent before, during and after the switch
   all arrive, attributed to the sender; the claimed session itself ends
   within _NIXL_UCX_SUPERSEDED_US (so an impostor that claimed the name
   before the real metadata came stops being heard). */
static void test_claimed_session_verified_on_load(void) {
    nixl_agent_t *tgt = make_agent_extra("tgt", "notif_unverified=accept", 0), *ini = make_agent("ini");
    unsigned char *r = xmalloc(4096);
    notes_t q;
    uint64_t until;
    int i, sent = 0;
    size_t n, k;
    char m[32];
    memset(&q, 0, sizeof q);
    if (!tgt || !ini) goto out;
    CHECK_ST(xu_reg(tgt, r, 4096), NIXL_SUCCESS);
    CHECK_ST(load_md_of(tgt, ini), NIXL_SUCCESS); /* the target does not know the initiator yet */
    for (i = 0; i < 5; i++, sent++) {
        snprintf(m, sizeof m, "before-%d", i);
        CHECK_ST(nixl_gen_notif(ini, "tgt", m, strlen(m), NULL), NIXL_SUCCESS);
    }
    CHECK(wait_notes(tgt, ini, &q, 5, 20) == 5);
    CHECK_ST(load_md_of(ini, tgt), NIXL_SUCCESS); /* now it does: the session is verified anew */
    until = nixl_now_us() + (uint64_t)(7e6 * nt_scale);
    for (i = 0; nixl_now_us() < until; i++) { /* across the switch and past the old session's end */
        snprintf(m, sizeof m, "after-%d", i);
        if (i < 200) {
            CHECK_ST(nixl_gen_notif(ini, "tgt", m, strlen(m), NULL), NIXL_SUCCESS);
            sent++;
        }
        nixl_get_notifs(tgt, notes_cb, &q);
        nixl_progress(ini);
        usleep(1000);
    }
    n = wait_notes(tgt, ini, &q, (size_t)sent, 20);
    CHECKF(n == (size_t)sent, "%zu of %d notifications arrived", n, sent);
    for (k = 0; k < n; k++) CHECKF(strcmp(q.from[k], "ini") == 0, "notification %zu from '%s'", k, q.from[k]);
    CHECK(n > 5 && strcmp(q.msg[5], "after-0") == 0 && strcmp(q.msg[n - 1], "after-199") == 0);
out:
    notes_free(&q);
    nixl_agent_destroy(ini);
    nixl_agent_destroy(tgt);
    free(r);
}

/* The other side of the same mechanism: an impostor that claimed the name
   "ini" (accept mode) before the real ini's metadata came is not heard
   once the claimed session's grace time is over, while the real ini is. */
static void test_claimed_impostor_ends(void) {
    nixl_agent_t *tgt = make_agent_extra("tgt", "notif_unverified=accept", 0), *ini = make_agent("ini");
    nixl_agent_t *mallory = make_agent("ini");
    notes_t q;
    uint64_t until;
    size_t k, from_mallory = 0, honest = 0;
    memset(&q, 0, sizeof q);
    if (!tgt || !ini || !mallory) goto out;
    CHECK_ST(load_md_of(tgt, mallory), NIXL_SUCCESS);
    CHECK_ST(load_md_of(tgt, ini), NIXL_SUCCESS);
    CHECK_ST(nixl_gen_notif(mallory, "tgt", "claimed", 7, NULL), NIXL_SUCCESS);
    CHECK(wait_notes(tgt, mallory, &q, 1, 20) == 1); /* taken on its word: nobody else is "ini" yet */
    CHECK_ST(load_md_of(ini, tgt), NIXL_SUCCESS);     /* the real ini's metadata arrives */
    until = nixl_now_us() + (uint64_t)(6e6 * nt_scale); /* past _NIXL_UCX_SUPERSEDED_US */
    while (nixl_now_us() < until) {
        nixl_get_notifs(tgt, notes_cb, &q);
        nixl_progress(mallory);
        nixl_progress(ini);
        usleep(1000);
    }
    notes_free(&q);
    memset(&q, 0, sizeof q);
    CHECK_ST(nixl_gen_notif(mallory, "tgt", "forged", 6, NULL), NIXL_SUCCESS);
    CHECK_ST(nixl_gen_notif(ini, "tgt", "honest", 6, NULL), NIXL_SUCCESS);
    until = nixl_now_us() + (uint64_t)(3e6 * nt_scale);
    while (nixl_now_us() < until) {
        nixl_get_notifs(tgt, notes_cb, &q);
        nixl_progress(mallory);
        nixl_progress(ini);
    }
    for (k = 0; k < q.n; k++) {
        from_mallory += strcmp(q.msg[k], "forged") == 0;
        honest += strcmp(q.msg[k], "honest") == 0 && strcmp(q.from[k], "ini") == 0;
    }
    CHECKF(from_mallory == 0, "the impostor was heard %zu time(s) after the real metadata came", from_mallory);
    CHECK(honest == 1);
out:
    notes_free(&q);
    nixl_agent_destroy(mallory);
    nixl_agent_destroy(ini);
    nixl_agent_destroy(tgt);
}

static void test_forged_notifications(void) {
    int with_token;
    for (with_token = 0; with_token < 2; with_token++) {
        nixl_agent_t *ini, *tgt, *mallory, *ghost;
        unsigned char *l = xmalloc(4096), *r = xmalloc(4096);
        nixl_xfer_req_t *req = NULL;
        notes_t q;
        uint64_t until;
        size_t i;
        int honest = 0, forged = 0;
        memset(&q, 0, sizeof q);
        g_token = with_token ? "shared-secret" : NULL;
        ini = make_agent("ini");
        tgt = make_agent("tgt");
        g_token = with_token ? "not-the-secret" : NULL;
        mallory = make_agent("ini");
        ghost = make_agent("ghost");
        g_token = NULL;
        if (!ini || !tgt || !mallory || !ghost) goto next;
        CHECK_ST(xu_reg(tgt, r, 4096), NIXL_SUCCESS);
        CHECK_ST(xu_reg(ini, l, 4096), NIXL_SUCCESS);
        CHECK_ST(share_md(tgt, ini), NIXL_SUCCESS);
        CHECK_ST(load_md_of(tgt, mallory), NIXL_SUCCESS);
        CHECK_ST(load_md_of(tgt, ghost), NIXL_SUCCESS);
        CHECK_ST(nixl_gen_notif(mallory, "tgt", "req-17 done", 11, NULL), NIXL_SUCCESS);
        CHECK_ST(nixl_gen_notif(ghost, "tgt", "boo", 3, NULL), NIXL_SUCCESS);
        CHECK_ST(nixl_gen_notif(ini, "tgt", "honest", 6, NULL), NIXL_SUCCESS);
        until = nixl_now_us() + (uint64_t)(2e6 * nt_scale);
        while (nixl_now_us() < until) {
            nixl_get_notifs(tgt, notes_cb, &q);
            nixl_progress(ini);
            nixl_progress(mallory);
            nixl_progress(ghost);
        }
        nt_fill(l, 4096, 31);
        CHECK_ST(make_req1(ini, NIXL_WRITE, l, (uintptr_t)r, 4096, "tgt", "data", &req), NIXL_SUCCESS);
        if (req) {
            CHECK_ST(post_wait(ini, req, tgt, 30), NIXL_SUCCESS);
            CHECK(nt_verify(r, 4096, 31));
            nixl_release_xfer_req(ini, req);
        }
        wait_notes(tgt, ini, &q, 2, 10);
        for (i = 0; i < q.n; i++) {
            if (!strcmp(q.from[i], "ini") && (!strcmp(q.msg[i], "honest") || !strcmp(q.msg[i], "data"))) honest++;
            else forged++;
        }
        CHECKF(honest == 2 && forged == 0, "%s token: %d honest, %d forged notifications arrived",
               with_token ? "with a" : "without a", honest, forged);
    next:
        notes_free(&q);
        nixl_agent_destroy(ghost);
        nixl_agent_destroy(mallory);
        nixl_agent_destroy(tgt);
        nixl_agent_destroy(ini);
        free(l);
        free(r);
    }
}

/* A WELCOME answers one HELLO, from the peer it went to: a third party that
   echoes our nonce (it saw our HELLO to it) is ignored, the peer's own
   answer opens the session. Driven by hand: no progress runs meanwhile. */
static void test_welcome_from_its_peer_only(void) {
    nixl_agent_t *a = make_agent("ini"), *b = make_agent("tgt");
    unsigned char *r = xmalloc(4096), m[4 + _NIXL_UCX_NONCE + 8 + 16];
    _nixl_ucx_engine_t *eng;
    _nixl_ucx_conn_t *c;
    if (!a || !b) goto out;
    CHECK_ST(xu_reg(b, r, 4096), NIXL_SUCCESS);
    CHECK_ST(load_md_of(b, a), NIXL_SUCCESS); /* a connects to b: its HELLO is out */
    eng = (_nixl_ucx_engine_t *)a->be[0]->engine;
    c = eng->conns;
    CHECK(c && c->peer && c->sess_state == _NIXL_UCX_SESS_WAIT);
    if (!c) goto out;
    memset(m, 0, sizeof m);
    m[0] = _NIXL_UCX_WIRE_VERSION;
    m[1] = _NIXL_UCX_AM_WELCOME;
    m[2] = 7;
    memcpy(m + 4, c->nonce, _NIXL_UCX_NONCE);
    _nixl_put64(m + 4 + _NIXL_UCX_NONCE, 0x1234567);
    memcpy(m + 4 + _NIXL_UCX_NONCE + 8, "mallory", 7);
    _nixl_ucx_on_welcome(eng, m, 4 + _NIXL_UCX_NONCE + 8 + 7);
    CHECKF(c->sess_state == _NIXL_UCX_SESS_WAIT, "a WELCOME from 'mallory' for our HELLO to tgt was ignored");
    m[2] = 3;
    memcpy(m + 4 + _NIXL_UCX_NONCE + 8, "tgt", 3);
    _nixl_ucx_on_welcome(eng, m, 4 + _NIXL_UCX_NONCE + 8 + 3);
    CHECKF(c->sess_state == _NIXL_UCX_SESS_OPEN && c->sess == 0x1234567, "tgt's WELCOME opened the session");
    settle(a, b);
out:
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
    free(r);
}

/* Item 4 of the attack list through the backend's real entry point: a
   peer's connection info whose worker address is truncated, or all 0xff,
   is refused before ucp_ep_create sees it (it used to abort or read past
   the bytes); an honest peer then loads and writes, bytes checked. */
static void test_malformed_worker_address(void) {
    nixl_agent_t *a = make_agent("ini"), *b = make_agent("tgt");
    unsigned char *l = xmalloc(4096), *r = xmalloc(4096), *bad = NULL;
    const void *info = NULL;
    size_t len = 0, alen;
    nixl_xfer_req_t *req = NULL;
    _nixl_ucx_engine_t *ea, *eb;
    if (!a || !b) goto out;
    ea = (_nixl_ucx_engine_t *)a->be[0]->engine;
    eb = (_nixl_ucx_engine_t *)b->be[0]->engine;
    CHECK_ST(_nixl_ucx_get_conn_info(eb, &info, &len), NIXL_SUCCESS);
    CHECK(len > _NIXL_UCX_INFO_HDR + 4 && eb->num_workers == 1);
    if (len <= _NIXL_UCX_INFO_HDR + 4 + 16) goto out;
    alen = len - _NIXL_UCX_INFO_HDR - 4;
    bad = xmalloc(len);
    /* truncated by 10 bytes (its length field says so: only the address lies) */
    memcpy(bad, info, len - 10);
    _nixl_put32(bad + _NIXL_UCX_INFO_HDR, (uint32_t)(alen - 10));
    CHECK_ST(_nixl_ucx_load_remote_conn_info(ea, "evil-1", bad, len - 10), NIXL_ERR_INVALID_PARAM);
    /* every address byte 0xff */
    memcpy(bad, info, len);
    memset(bad + _NIXL_UCX_INFO_HDR + 4, 0xff, alen);
    CHECK_ST(_nixl_ucx_load_remote_conn_info(ea, "evil-2", bad, len), NIXL_ERR_INVALID_PARAM);
    /* the honest peer */
    CHECK_ST(xu_reg(a, l, 4096), NIXL_SUCCESS);
    CHECK_ST(xu_reg(b, r, 4096), NIXL_SUCCESS);
    CHECK_ST(share_md(b, a), NIXL_SUCCESS);
    nt_fill(l, 4096, 61);
    CHECK_ST(make_req1(a, NIXL_WRITE, l, (uintptr_t)r, 4096, "tgt", NULL, &req), NIXL_SUCCESS);
    if (req) {
        CHECK_ST(post_wait(a, req, b, 30), NIXL_SUCCESS);
        CHECK(nt_verify(r, 4096, 61));
        nixl_release_xfer_req(a, req);
    }
    settle(a, b);
out:
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
    free(bad);
    free(l);
    free(r);
}

// >>tests: a raw UCX attacker

/* A plain UCX program (no nixl) holding the target's worker address: it
   unpacks a key of its own and calls ucp_put_nbx / ucp_get_nbx on an address
   the target never registered. On the checked path the target's context has
   no UCP_FEATURE_RMA, so UCX's software put/get handlers do not exist there:
   the messages are dropped, the secret is neither read nor written, and the
   attacker's flush never completes. */
static unsigned char raw_secret[4096];

static void raw_victim(int s) {
    nixl_agent_t *a = make_agent("victim");
    unsigned char *region = xmalloc(4096);
    size_t i;
    int intact = 1;
    memset(raw_secret, 0x5e, sizeof raw_secret);
    if (!a) return;
    CHECK_ST(xu_reg(a, region, 4096), NIXL_SUCCESS);
    CHECK(send_md(s, a) == 0);
    send_u64(s, (uint64_t)(uintptr_t)raw_secret);
    {   /* serve until the attacker is done, collecting notifications */
        notes_t q;
        uint64_t until = nixl_now_us() + (uint64_t)(60e6 * nt_scale);
        struct pollfd pf;
        memset(&q, 0, sizeof q);
        pf.fd = s;
        pf.events = POLLIN;
        while (nixl_now_us() < until) {
            pf.revents = 0;
            nixl_get_notifs(a, notes_cb, &q);
            if (poll(&pf, 1, 0) > 0) break;
        }
        nixl_get_notifs(a, notes_cb, &q);
        CHECKF(q.n == 0, "victim: the attacker's notifications (oversized and small) were dropped: it has no "
               "session (%zu arrived)", q.n);
        notes_free(&q);
    }
    for (i = 0; i < sizeof raw_secret; i++) intact &= raw_secret[i] == 0x5e;
    CHECKF(intact, "victim: the unregistered secret is untouched after raw ucp_put_nbx");
    nixl_agent_destroy(a);
    free(region);
}

/* The worker address inside a nixl blob's UCX connection info. */
static const unsigned char *raw_worker_address(const unsigned char *blob, size_t n) {
    size_t i;
    for (i = 0; i + 3 + 4 + _NIXL_UCX_INFO_HDR + 4 < n; i++)
        if (memcmp(blob + i, "UCX", 3) == 0 && blob[i + 7] == _NIXL_UCX_INFO_MAGIC)
            return blob + i + 7 + _NIXL_UCX_INFO_HDR + 4;
    return NULL;
}

static void test_raw_ucx_attacker(void) {
    int s;
    pid_t pid = spawn_peer(raw_victim, &s, 60);
    uint32_t blen = recv_u32(s);
    unsigned char *blob = blen < (1u << 20) ? xmalloc(blen) : NULL, *mine = xmalloc(4096), *got = xmalloc(4096);
    const unsigned char *addr;
    uint64_t secret;
    ucp_config_t *cfg = NULL;
    ucp_params_t prm;
    ucp_worker_params_t wp;
    ucp_ep_params_t ep_p;
    ucp_context_h ctx = NULL;
    ucp_worker_h w = NULL;
    ucp_ep_h ep = NULL;
    ucp_mem_map_params_t mp;
    ucp_mem_h mh = NULL;
    ucp_rkey_h rkey = NULL;
    void *rk = NULL;
    size_t rkl = 0;
    char tls[64];
    if (!blob || read_all(s, blob, blen) != 0) goto out;
    secret = recv_u64(s);
    addr = raw_worker_address(blob, blen);
    CHECK(addr != NULL);
    if (!addr) goto out;
    memset(&prm, 0, sizeof prm);
    memset(&wp, 0, sizeof wp);
    memset(&ep_p, 0, sizeof ep_p);
    memset(&mp, 0, sizeof mp);
    snprintf(tls, sizeof tls, "%s", g_tls);
    for (char *c = tls; *c; c++)
        if (*c == '+') *c = ',';
    if (ucp_config_read(NULL, NULL, &cfg) != UCS_OK || ucp_config_modify(cfg, "TLS", tls) != UCS_OK) goto out;
    prm.field_mask = UCP_PARAM_FIELD_FEATURES;
    prm.features = UCP_FEATURE_RMA | UCP_FEATURE_AM;
    if (!CHECK(ucp_init(&prm, cfg, &ctx) == UCS_OK) || !CHECK(ucp_worker_create(ctx, &wp, &w) == UCS_OK)) goto out;
    ep_p.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS; /* an attacker needs no error handling */
    ep_p.address = (const ucp_address_t *)addr;
    if (!CHECK(ucp_ep_create(w, &ep_p, &ep) == UCS_OK)) goto out;
    memset(mine, 0xee, 4096);
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    mp.address = mine;
    mp.length = 4096;
    if (!CHECK(ucp_mem_map(ctx, &mp, &mh) == UCS_OK) || !CHECK(ucp_rkey_pack(ctx, mh, &rk, &rkl) == UCS_OK) ||
        !CHECK(ucp_ep_rkey_unpack(ep, rk, &rkey) == UCS_OK))
        goto out;
    {
        ucp_request_param_t rp;
        ucs_status_ptr_t put, get, fl;
        uint64_t until = nixl_now_us() + (uint64_t)(2e6 * nt_scale);
        memset(&rp, 0, sizeof rp);
        put = ucp_put_nbx(ep, mine, 64, secret, rkey, &rp);
        get = ucp_get_nbx(ep, got, 64, secret + 1024, rkey, &rp);
        fl = ucp_ep_flush_nbx(ep, &rp);
        while (fl && !UCS_PTR_IS_ERR(fl) && ucp_request_check_status(fl) == UCS_INPROGRESS && nixl_now_us() < until)
            ucp_worker_progress(w);
        CHECKF(all_bytes(got, 0, 4096), "raw ucp_get_nbx of the victim's secret returned nothing");
        CHECKF(fl && !UCS_PTR_IS_ERR(fl) && ucp_request_check_status(fl) == UCS_INPROGRESS,
               "raw put/get were never served (flush still pending after 2 s)");
        (void)put;
        (void)get;
        {   /* a notification over NIXL_UCX_MAX_NOTIF, then a small one: only the small one arrives */
            size_t big = NIXL_UCX_MAX_NOTIF + 4096, i;
            unsigned char *m = xmalloc(big);
            static const char who[] = "mallory";
            ucs_status_ptr_t a1, a2;
            m[0] = (unsigned char)_NIXL_UCX_WIRE_VERSION;
            m[1] = (unsigned char)_NIXL_UCX_AM_NOTIF;
            m[2] = (unsigned char)(sizeof who - 1);
            m[3] = 0;
            memcpy(m + 4, who, sizeof who - 1);
            ucp_request_param_t ep_eager;
            memset(&ep_eager, 0, sizeof ep_eager);
            ep_eager.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
            ep_eager.flags = UCP_AM_SEND_FLAG_EAGER; /* as the backend's own notifications travel */
            a1 = ucp_am_send_nbx(ep, _NIXL_UCX_AM_ID, NULL, 0, m, big, &ep_eager);
            a2 = ucp_am_send_nbx(ep, _NIXL_UCX_AM_ID, NULL, 0, m, 4 + sizeof who - 1 + 5, &rp);
            until = nixl_now_us() + (uint64_t)(2e6 * nt_scale);
            for (i = 0; nixl_now_us() < until; i++) {
                int busy = 0;
                if (a1 && !UCS_PTR_IS_ERR(a1) && ucp_request_check_status(a1) == UCS_INPROGRESS) busy = 1;
                if (a2 && !UCS_PTR_IS_ERR(a2) && ucp_request_check_status(a2) == UCS_INPROGRESS) busy = 1;
                if (!busy) break;
                ucp_worker_progress(w);
            }
            if (a1 && !UCS_PTR_IS_ERR(a1)) ucp_request_free(a1);
            if (a2 && !UCS_PTR_IS_ERR(a2)) ucp_request_free(a2);
            free(m);
        }
        /* the requests stay with UCX; closing the endpoint (FORCE) cancels them */
    }
out:
    send_u32(s, 1); /* the victim checks its secret and ends */
    CHECK_CHILD(pid);
    close(s);
    if (ep) {
        ucp_request_param_t cp;
        ucs_status_ptr_t c;
        memset(&cp, 0, sizeof cp);
        cp.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
        cp.flags = UCP_EP_CLOSE_FLAG_FORCE;
        c = ucp_ep_close_nbx(ep, &cp);
        while (c && !UCS_PTR_IS_ERR(c) && ucp_request_check_status(c) == UCS_INPROGRESS) ucp_worker_progress(w);
        if (c && !UCS_PTR_IS_ERR(c)) ucp_request_free(c);
    }
    if (rkey) ucp_rkey_destroy(rkey);
    if (rk) ucp_rkey_buffer_release(rk);
    if (mh) ucp_mem_unmap(ctx, mh);
    if (w) ucp_worker_destroy(w);
    if (ctx) ucp_cleanup(ctx);
    if (cfg) ucp_config_release(cfg);
    free(blob);
    free(mine);
    free(got);
}


// >>tests: notification floods (flow control, and a peer that ignores it)

/* 1,500 notifications of 1 MiB from a well-behaved sender to a receiver
   whose progress thread keeps taking them in while the application does
   not drain: the sender is slowed (gen_notif says IN_PROG once a window's
   worth waits for the peer), the receiver's queue stays within its limit
   (64 MiB per sender by default) and drops nothing, its resident memory
   stays bounded; after the drain every notification the sender was told
   SUCCESS for arrives, and the window moves again. */
#define FLOOD_N 1500
#define FLOOD_SZ ((size_t)NIXL_UCX_MAX_NOTIF)

static void flood_receiver(int s) {
    nixl_agent_t *a = make_agent_cfg("sink", g_params, 1, NULL);
    notes_t q;
    long before, peak = 0;
    uint32_t sent;
    size_t first;
    char peer[256];
    memset(&q, 0, sizeof q);
    if (!a) return;
    before = nt_rss_kib();
    CHECK(send_md(s, a) == 0);
    CHECK_ST(recv_md(s, a, peer, sizeof peer), NIXL_SUCCESS);
    /* the progress thread takes the flood in; the application drains nothing */
    while (!progress_until_readable(a, s, 0.05)) {
        long r = nt_rss_kib();
        if (r > peak) peak = r;
    }
    sent = recv_u32(s);
    {
        long r = nt_rss_kib();
        if (r > peak) peak = r;
    }
    nixl_get_notifs(a, notes_cb, &q);
    first = q.n;
    /* what the sender still holds comes once the queue has room again */
    wait_notes(a, NULL, &q, sent, 60);
    printf("FIGURE ucx_notif_flood tls=%s offered=%d size=%zu accepted=%u queued_before_drain=%zu "
           "delivered=%zu rss_before_mib=%.1f rss_peak_mib=%.1f\n", g_tls, FLOOD_N, FLOOD_SZ, sent, first, q.n,
           before / 1024.0, peak / 1024.0);
    CHECKF(first >= 1 && first <= 64, "the queue held %zu 1-MiB notifications before the drain (64 MiB per sender)",
           first);
    CHECKF(q.n == sent, "every notification the sender was told SUCCESS for arrived: %zu of %u", q.n, sent);
    CHECKF(peak - before < 400 * 1024, "resident memory grew by %.0f MiB under the flood (bounded)",
           (peak - before) / 1024.0);
    notes_free(&q);
    send_u32(s, 1);
    CHECK(wait_notes(a, NULL, &q, 1, 30) == 1 && strcmp(q.msg[0], "after") == 0);
    notes_free(&q);
    send_u32(s, 2);
    nixl_agent_destroy(a);
}

static void test_notif_flood_bounded(void) {
    int s, i, other = 0;
    uint32_t sent = 0, slowed = 0;
    pid_t pid = spawn_peer(flood_receiver, &s, 200);
    nixl_agent_t *a = make_agent("flooder");
    char peer[256];
    unsigned char *m = xmalloc(FLOOD_SZ);
    if (!a) goto out;
    CHECK_ST(recv_md(s, a, peer, sizeof peer), NIXL_SUCCESS);
    CHECK(send_md(s, a) == 0);
    for (i = 0; i < FLOOD_N; i++) {
        nixl_status_t st = nixl_gen_notif(a, "sink", m, FLOOD_SZ, NULL);
        if (st == NIXL_SUCCESS) sent++;
        else if (st == NIXL_IN_PROG) slowed++;
        else other++;
        if (st == NIXL_IN_PROG) { /* as a sender that retries would: progress a little first */
            uint64_t until = nixl_now_us() + 2000u;
            while (nixl_now_us() < until) nixl_progress(a);
        }
        nixl_progress(a);
    }
    {   /* what the window takes goes out */
        uint64_t until = nixl_now_us() + (uint64_t)(3e6 * nt_scale);
        while (nixl_now_us() < until) nixl_progress(a);
    }
    CHECKF(other == 0, "no gen_notif failed (%d did)", other);
    CHECKF(slowed > 0 && sent < FLOOD_N, "flow control slowed the sender: %u accepted, %u IN_PROG", sent, slowed);
    send_u32(s, sent);
    CHECK(progress_until_readable(a, s, 90) && recv_u32(s) == 1);
    CHECK_ST(nixl_gen_notif(a, "sink", "after", 5, NULL), NIXL_SUCCESS);
    CHECK(progress_until_readable(a, s, 60) && recv_u32(s) == 2);
out:
    nixl_agent_destroy(a);
    free(m);
    CHECK_CHILD(pid);
    close(s);
}

/* A sender that ignores its window (a modified library: the test wipes its
   account of what is unacknowledged before each send) is cut off by the
   receiver with a log line after one window: its later notifications are
   dropped and counted, the receiver's queue and memory stay small, and an
   honest sender in the same process keeps getting through. */
static int g_cut_logs;

static void count_cut_log(void *user, int level, nixl_log_item_t item, const char *msg) {
    (void)user;
    if (item == NIXL_LOGITEM_UCX_FLOOD_CUT_OFF) __atomic_add_fetch(&g_cut_logs, 1, __ATOMIC_RELAXED);
    test_log(NULL, level, msg);
}

static void window_receiver(int s) {
    nixl_agent_config_t cfg;
    nixl_agent_t *a;
    notes_t q;
    size_t i, from_flooder = 0, from_honest = 0;
    long before, after;
    char peer[256];
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "sink";
    cfg.progress_thread = 1;
    cfg.log_item_fn = count_cut_log;
    cfg.auth_token = g_token;
    /* a small queue: the receiver withholds the flooder's window early */
    cfg.notif_queue_peer_bytes = 3 * FLOOD_SZ;
    memset(&q, 0, sizeof q);
    a = xu_agent_cfg(&cfg, nixl_ucx_backend(), g_params, NULL, NULL);
    if (!a) return;
    before = nt_rss_kib();
    CHECK(send_md(s, a) == 0 && send_md(s, a) == 0);
    CHECK_ST(recv_md(s, a, peer, sizeof peer), NIXL_SUCCESS);
    CHECK_ST(recv_md(s, a, peer, sizeof peer), NIXL_SUCCESS);
    CHECK(progress_until_readable(a, s, 90) && recv_u32(s) == 1); /* the flood is over */
    after = nt_rss_kib();
    wait_notes(a, NULL, &q, 1000, 3); /* everything that was taken in */
    for (i = 0; i < q.n; i++) {
        if (!strcmp(q.from[i], "flooder")) from_flooder++;
        if (!strcmp(q.from[i], "honest") && !strcmp(q.msg[i], "still here")) from_honest++;
    }
    printf("FIGURE ucx_window_flood tls=%s token=%s flooder_sent=40x1MiB flooder_delivered=%zu honest_delivered=%zu "
           "rss_growth_mib=%.1f\n", g_tls, g_token ? "yes" : "no", from_flooder, from_honest,
           (after - before) / 1024.0);
    CHECKF(__atomic_load_n(&g_cut_logs, __ATOMIC_RELAXED) == 1, "one log line says the flooder was cut off (%d)",
           g_cut_logs);
    CHECKF(from_flooder >= 1 && from_flooder <= 4, "only a window of the flood arrived (%zu of 40)", from_flooder);
    CHECKF(from_honest == 3, "the honest sender's 3 notifications arrived (%zu)", from_honest);
    CHECKF(after - before < 64 * 1024, "resident memory grew by %.0f MiB (bounded)", (after - before) / 1024.0);
    notes_free(&q);
    send_u32(s, 2);
    nixl_agent_destroy(a);
}

/* The same with a shared secret: proven sessions get the same window. */
static void test_notif_window_flood(void);
static void test_notif_window_flood_token(void) {
    g_token = "shared-secret";
    test_notif_window_flood();
    g_token = NULL;
}

/* Forget what the window owes on every endpoint of the agent's UCX backend. */
static void forget_window(nixl_backend_t *be) {
    _nixl_ucx_conn_t *c;
    for (c = ((_nixl_ucx_engine_t *)be->engine)->conns; c; c = c->next) {
        c->acked_total = c->sent_total;
        c->starved = 0;
    }
}

static void test_notif_window_flood(void) {
    int s, i;
    pid_t pid = spawn_peer(window_receiver, &s, 200);
    nixl_agent_config_t cfg;
    nixl_backend_t *be = NULL;
    nixl_agent_t *a, *h;
    char peer[256];
    unsigned char *m = xmalloc(FLOOD_SZ);
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "flooder";
    cfg.log_fn = test_log;
    cfg.auth_token = g_token;
    a = xu_agent_cfg(&cfg, nixl_ucx_backend(), g_params, &be, NULL);
    h = make_agent("honest");
    if (!a || !h) goto out;
    CHECK_ST(recv_md(s, a, peer, sizeof peer), NIXL_SUCCESS);
    CHECK_ST(recv_md(s, h, peer, sizeof peer), NIXL_SUCCESS);
    CHECK(send_md(s, a) == 0 && send_md(s, h) == 0);
    CHECK_ST(nixl_gen_notif(h, "sink", "still here", 10, NULL), NIXL_SUCCESS);
    for (i = 0; i < 40; i++) {
        uint64_t until = nixl_now_us() + 50000u;
        forget_window(be);
        CHECK_ST(nixl_gen_notif(a, "sink", m, FLOOD_SZ, NULL), NIXL_SUCCESS);
        while (nixl_now_us() < until) {
            forget_window(be);
            nixl_progress(a);
            nixl_progress(h);
        }
        if (i == 20) CHECK_ST(nixl_gen_notif(h, "sink", "still here", 10, NULL), NIXL_SUCCESS);
    }
    CHECK_ST(nixl_gen_notif(h, "sink", "still here", 10, NULL), NIXL_SUCCESS);
    settle(a, h);
    send_u32(s, 1);
    CHECK(progress_until_readable(h, s, 60) && recv_u32(s) == 2);
out:
    if (a) nixl_agent_destroy(a);
    if (h) nixl_agent_destroy(h);
    free(m);
    CHECK_CHILD(pid);
    close(s);
}

/* The backend never changes the environment from create() (other threads
   may be in getenv): the shared-memory error-handling variables it needs
   were set once at program load (or by the user), and creating a backend
   leaves the environment exactly as it was. */
static void test_env_untouched_by_create(void) {
    const char *before = getenv("UCX_POSIX_ERROR_HANDLING"), *sysv = getenv("UCX_SYSV_ERROR_HANDLING");
    nixl_agent_t *a;
    CHECK(before != NULL && sysv != NULL); /* by the constructor, before main */
    CHECK(!(_nixl_ucx_env_set_at_load & 1) || !strcmp(before, "y"));
    a = make_agent("env-check");
    CHECK(a != NULL);
    CHECK(getenv("UCX_POSIX_ERROR_HANDLING") == before); /* same string: no setenv since */
    CHECK(getenv("UCX_SYSV_ERROR_HANDLING") == sysv);
    if (a) nixl_agent_destroy(a);
}

static int run_all(void) {
    RUN(test_env_untouched_by_create, 30);
    RUN(test_params, 60);
    RUN(test_loopback, 60);
    RUN(test_invalid_descriptors, 60);
    RUN(test_sizes_one_process, 120);
    RUN(test_many_descriptors, 60);
    RUN(test_prepared_indices, 60);
    RUN(test_repost_100, 60);
    RUN(test_progress_only, 60);
    RUN(test_invalidate_after_notif, 60);
    RUN(test_threads, 60);
    RUN(test_sizes_two_processes, 150);
    RUN(test_notification_ordering, 100);
    RUN(test_gen_notif_burst, 100);
    RUN(test_dereg_while_peer_holds_rkey, 60);
    RUN(test_peer_killed, 60);
    RUN(test_adversarial_peer, 200);
    RUN(test_raw_ucx_attacker, 60);
    RUN(test_forged_notifications, 60);
    RUN(test_claimed_session_verified_on_load, 60);
    RUN(test_claimed_impostor_ends, 60);
    RUN(test_welcome_from_its_peer_only, 30);
    RUN(test_malformed_worker_address, 30);
    RUN(test_notif_flood_bounded, 200);
    RUN(test_notif_window_flood, 200);
    RUN(test_notif_window_flood_token, 200);
    /* not in `make test`: UCX 1.13 itself fails it now and then (see the
       README's known limits); `make test-ucx-death` runs it */
    if (getenv("NIXL_TEST_DEATH_ROUNDS")) RUN(test_peer_death_100, 400);
    else {
        nt_current = "test_peer_death_100";
        SKIP("100 peer deaths: run them with make test-ucx-death (NIXL_TEST_DEATH_ROUNDS=100)");
    }
    return nt_finish();
}

int main(int argc, char **argv) {
    const char *extra = getenv("NIXL_TEST_UCX_EXTRA");
    nt_init(argc, argv); /* reads NIXL_TEST_TIMEOUT_SCALE too */
    g_tls = getenv("NIXL_TEST_UCX_TLS");
    if (!g_tls || !*g_tls) g_tls = "tcp";
    snprintf(g_params, sizeof g_params, "tls=%s%s%s", g_tls, extra && *extra ? "," : "", extra ? extra : "");
    printf("UCX suite over tls=%s\n", g_tls);
    return run_all();
}
