/* nixl_bench.c — transfer benchmark, in the spirit of NIXL's nixlbench.

   Two processes (fork): a target that registers a buffer and an initiator
   that READs or WRITEs it in requests of `batch` descriptors of `block`
   bytes, keeping `window` requests in flight (as perftest keeps its send
   queue full). For each block size it prints GB/s, descriptors/s and the
   median and p99 of prep (make or create), post and completion times.

     ./nixl_bench [--backend VERBS|UCX] [--params "k=v,..."] [--op READ|WRITE]
                  [--block-min N] [--block-max N] [--batch N] [--window N]
                  [--iters N] [--warmup N] [--oneshot] [--check]
                  [--pingpong] [--notif-pingpong] [--result NAME]

   --oneshot   create (prep + make) a new request for every post instead of
               preparing once and re-posting
   --check     verify the bytes after each block size (the target checks a
               WRITE, the initiator a READ)
   --pingpong  8-byte WRITE + notification there and back; prints half the
               round trip (median and p99)
   --notif-pingpong
               the same with notifications alone (nixl_gen_notif), no data
   --result N  also print "RESULT N <value>": GB/s of the last block size, or
               microseconds of the ping-pong half round trip (median)
   Exit status 0 on success (and, with --check, when every byte matched). */
#define NIXL_IMPLEMENTATION
#include "../nixl_ucx.h"
#include "../nixl_verbs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct bench_opts {
    const char *backend, *params, *result;
    nixl_xfer_op_t op;
    size_t block_min, block_max, batch, window, iters, warmup;
    int oneshot, check, pingpong, notif_pingpong;
} bench_opts;

static bench_opts o = {"VERBS", NULL, NULL, NIXL_WRITE, 65536, 65536, 1, 16, 1000, 100, 0, 0, 0, 0};

static void die(const char *what, nixl_status_t st) {
    fprintf(stderr, "nixl_bench: %s: %s\n", what, nixl_status_str(st));
    exit(1);
}
#define CK(call, what)                          \
    do {                                        \
        nixl_status_t st_ = (call);             \
        if (st_ != NIXL_SUCCESS) die(what, st_); \
    } while (0)

static unsigned char pattern(size_t i) { return (unsigned char)(i * 13u + (i >> 9) * 5u + 1u); }

/* ---- plumbing between the two processes --------------------------------- */

static void send_all(int fd, const void *p, size_t n) {
    const char *c = (const char *)p;
    while (n) {
        ssize_t k = write(fd, c, n);
        if (k <= 0) exit(1);
        c += k;
        n -= (size_t)k;
    }
}
static void recv_all(int fd, void *p, size_t n) {
    char *c = (char *)p;
    while (n) {
        ssize_t k = read(fd, c, n);
        if (k <= 0) exit(1);
        c += k;
        n -= (size_t)k;
    }
}

/* sends our metadata and buffer address; loads the peer's */
static uintptr_t swap_md(nixl_agent_t *a, int fd, uintptr_t mine) {
    void *blob;
    size_t len, plen;
    uintptr_t theirs;
    unsigned char *peer;
    CK(nixl_get_local_md(a, &blob, &len), "get_local_md");
    send_all(fd, &len, sizeof len);
    send_all(fd, blob, len);
    send_all(fd, &mine, sizeof mine);
    nixl_free_md(a, blob);
    recv_all(fd, &plen, sizeof plen);
    peer = (unsigned char *)malloc(plen);
    recv_all(fd, peer, plen);
    recv_all(fd, &theirs, sizeof theirs);
    CK(nixl_load_remote_md(a, peer, plen, NULL, 0), "load_remote_md");
    free(peer);
    return theirs;
}

static nixl_agent_t *make_agent(const char *name, unsigned char *buf, size_t len) {
    nixl_agent_config_t cfg;
    nixl_agent_t *a;
    nixl_backend_t *b;
    nixl_desc_t d = {(uintptr_t)buf, len, 0};
    nixl_dlist_t l = {NIXL_DRAM, &d, 1};
    memset(&cfg, 0, sizeof cfg);
    cfg.name = name;
    CK(nixl_agent_create(&cfg, &a), "agent_create");
    CK(nixl_create_backend(a, strcmp(o.backend, "UCX") ? nixl_verbs_backend() : nixl_ucx_backend(), o.params, &b),
       "create_backend");
    CK(nixl_register_mem(a, &l, NULL), "register_mem");
    return a;
}

/* waits for one notification; returns its text */
typedef struct note { char text[64]; int n; } note;
static void on_note(void *u, const char *from, const void *msg, size_t len) {
    note *nt = (note *)u;
    (void)from;
    if (len >= sizeof nt->text) len = sizeof nt->text - 1;
    memcpy(nt->text, msg, len);
    nt->text[len] = 0;
    nt->n++;
}
static void wait_note(nixl_agent_t *a, note *nt) {
    memset(nt, 0, sizeof *nt);
    while (!nt->n) CK(nixl_get_notifs(a, on_note, nt), "get_notifs");
}

/* The target between runs. Over verbs it polls gently: a target spinning
   on its CPU starves software RDMA (rxe runs in the kernel on the same
   CPUs), and perftest's servers do not spin either. UCX over tcp/shared
   memory emulates RMA with messages the target must progress: it spins. */
static void wait_note_idle(nixl_agent_t *a, note *nt) {
    int spin = !strcmp(o.backend, "UCX");
    memset(nt, 0, sizeof *nt);
    for (;;) {
        CK(nixl_get_notifs(a, on_note, nt), "get_notifs");
        if (nt->n) return;
        if (!spin) usleep(200);
    }
}

/* ---- statistics -------------------------------------------------------- */

static int cmp_d(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}
static double pct(double *v, size_t n, double p) {
    size_t i;
    if (!n) return 0;
    qsort(v, n, sizeof *v, cmp_d);
    i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i];
}
static double now_us(void) { return (double)nixl_now_us(); }

/* ---- target ------------------------------------------------------------ */

static nixl_status_t wait_req(nixl_agent_t *a, nixl_xfer_req_t *r) {
    nixl_status_t st;
    do st = nixl_get_xfer_status(a, r);
    while (st == NIXL_IN_PROG);
    return st;
}


static size_t buffer_bytes(void) { return o.block_max * o.batch * o.window; }

static int target(int fd) {
    size_t len = buffer_bytes(), i;
    unsigned char *buf = (unsigned char *)malloc(len);
    nixl_agent_t *a;
    uintptr_t peer_buf;
    note nt;
    for (i = 0; i < len; i++) buf[i] = o.op == NIXL_READ ? pattern(i) : 0;
    a = make_agent("bench-target", buf, len);
    peer_buf = swap_md(a, fd, (uintptr_t)buf);
    for (;;) {
        wait_note_idle(a, &nt);
        if (!strcmp(nt.text, "quit")) break;
        if (!strncmp(nt.text, "verify ", 7)) { /* a WRITE run ended: check its bytes */
            size_t n = (size_t)strtoull(nt.text + 7, NULL, 10), bad = 0;
            for (i = 0; i < n; i++) bad += buf[i] != pattern(i);
            CK(nixl_gen_notif(a, "bench-init", bad ? "bad" : "ok", bad ? 3 : 2, NULL), "gen_notif");
            memset(buf, 0, len);
        } else if (!strcmp(nt.text, "ping")) { /* ping-pong: answer with our own write */
            nixl_desc_t l = {(uintptr_t)buf, 8, 0}, r = {peer_buf, 8, 0};
            nixl_dlist_t ll = {NIXL_DRAM, &l, 1}, rl = {NIXL_DRAM, &r, 1};
            nixl_opt_args_t opt;
            nixl_xfer_req_t *req;
            size_t k;
            memset(&opt, 0, sizeof opt);
            opt.notif = "pong";
            opt.notif_len = 4;
            opt.has_notif = 1;
            CK(nixl_create_xfer_req(a, NIXL_WRITE, &ll, &rl, "bench-init", &opt, &req), "create_xfer_req");
            for (k = 0; k < o.iters + o.warmup; k++) {
                nixl_status_t st = NIXL_SUCCESS;
                if (k) { /* the first ping was the one above */
                    wait_note(a, &nt);
                    /* the last pong is done by now (its ping came back): a
                       repost must find it so, but the wait is not in the
                       round trip, as with perftest's responder */
                    CK(wait_req(a, req), "pong");
                }
                st = nixl_post_xfer_req(a, req, NULL);
                if (st != NIXL_IN_PROG && st != NIXL_SUCCESS) die("pong", st);
            }
            CK(wait_req(a, req), "pong");
            nixl_release_xfer_req(a, req);
        } else if (!strcmp(nt.text, "gping")) { /* notification ping-pong: answer at once */
            size_t k;
            for (k = 0; k < o.iters + o.warmup; k++) {
                if (k) wait_note(a, &nt);
                CK(nixl_gen_notif(a, "bench-init", "gpong", 5, NULL), "gen_notif(gpong)");
            }
        }
    }
    nixl_agent_destroy(a);
    free(buf);
    return 0;
}

/* ---- initiator --------------------------------------------------------- */

typedef struct run_stats { double gbps, dps, prep50, prep99, post50, post99, done50, done99; } run_stats;

/* one block size: `window` requests, each batch x block, rotated */
static run_stats run_block(nixl_agent_t *a, unsigned char *buf, uintptr_t rbuf, size_t block) {
    size_t per_req = o.batch, total = o.iters + o.warmup, w, i, k, posted = 0, done = 0, nsamp = 0;
    nixl_desc_t *ld = (nixl_desc_t *)malloc(o.window * per_req * sizeof *ld);
    nixl_desc_t *rd = (nixl_desc_t *)malloc(o.window * per_req * sizeof *rd);
    nixl_xfer_req_t **req = (nixl_xfer_req_t **)calloc(o.window, sizeof *req);
    double *t_post = (double *)calloc(total, sizeof(double)), *t_prep = (double *)calloc(total, sizeof(double));
    double *t_done = (double *)calloc(total, sizeof(double)), *posted_at = (double *)calloc(o.window, sizeof(double));
    nixl_dlist_handle_t *lh = NULL, *rh = NULL;
    int *idx = (int *)malloc(per_req * sizeof *idx);
    double t_start = 0, t_end;
    run_stats s;
    memset(&s, 0, sizeof s);
    for (i = 0; i < o.window * per_req; i++) {
        ld[i].addr = (uintptr_t)buf + i * block;
        rd[i].addr = rbuf + i * block;
        ld[i].len = rd[i].len = block;
        ld[i].dev_id = rd[i].dev_id = 0;
    }
    if (!o.oneshot) {
        nixl_dlist_t l = {NIXL_DRAM, ld, o.window * per_req}, r = {NIXL_DRAM, rd, o.window * per_req};
        CK(nixl_prep_xfer_dlist(a, NULL, &l, NULL, &lh), "prep local");
        CK(nixl_prep_xfer_dlist(a, "bench-target", &r, NULL, &rh), "prep remote");
    }
    /* post one request of slot w; timing goes to sample `posted` */
    for (k = 0; done < total; k++) {
        for (w = 0; w < o.window && posted < total; w++) {
            nixl_status_t st;
            double t0, t1, t2;
            if (req[w] && posted_at[w] > 0) continue; /* still in flight */
            if (posted == o.warmup && !t_start) t_start = now_us();
            t0 = now_us();
            if (o.oneshot || !req[w]) {
                if (req[w]) nixl_release_xfer_req(a, req[w]);
                if (o.oneshot) {
                    nixl_dlist_t l = {NIXL_DRAM, ld + w * per_req, per_req}, r = {NIXL_DRAM, rd + w * per_req, per_req};
                    CK(nixl_create_xfer_req(a, o.op, &l, &r, "bench-target", NULL, &req[w]), "create_xfer_req");
                } else {
                    for (i = 0; i < per_req; i++) idx[i] = (int)(w * per_req + i);
                    CK(nixl_make_xfer_req(a, o.op, lh, idx, per_req, rh, idx, per_req, NULL, &req[w]), "make_xfer_req");
                }
            }
            t1 = now_us();
            st = nixl_post_xfer_req(a, req[w], NULL);
            t2 = now_us();
            if (st != NIXL_IN_PROG && st != NIXL_SUCCESS) die("post", st);
            t_prep[posted] = t1 - t0;
            t_post[posted] = t2 - t1;
            posted_at[w] = t1;
            posted++;
        }
        for (w = 0; w < o.window; w++) {
            nixl_status_t st;
            if (!req[w] || posted_at[w] <= 0) continue;
            st = nixl_get_xfer_status(a, req[w]);
            if (st == NIXL_IN_PROG) continue;
            if (st != NIXL_SUCCESS) die("transfer", st);
            if (nsamp < total) t_done[nsamp++] = now_us() - posted_at[w];
            posted_at[w] = 0;
            done++;
        }
    }
    t_end = now_us();
    for (w = 0; w < o.window; w++)
        if (req[w]) {
            wait_req(a, req[w]);
            nixl_release_xfer_req(a, req[w]);
        }
    if (lh) nixl_release_dlist_handle(a, lh);
    if (rh) nixl_release_dlist_handle(a, rh);
    s.gbps = (double)(o.iters * per_req * block) / (t_end - t_start) / 1e3;
    s.dps = (double)(o.iters * per_req) / (t_end - t_start) * 1e6;
    s.prep50 = pct(t_prep + o.warmup, o.iters, 0.5);
    s.prep99 = pct(t_prep + o.warmup, o.iters, 0.99);
    s.post50 = pct(t_post + o.warmup, o.iters, 0.5);
    s.post99 = pct(t_post + o.warmup, o.iters, 0.99);
    s.done50 = pct(t_done, nsamp, 0.5);
    s.done99 = pct(t_done, nsamp, 0.99);
    free(ld);
    free(rd);
    free(req);
    free(t_post);
    free(t_prep);
    free(t_done);
    free(posted_at);
    free(idx);
    return s;
}

static int check_bytes(nixl_agent_t *a, unsigned char *buf, size_t n) {
    size_t i, bad = 0;
    note nt;
    if (o.op == NIXL_READ) {
        for (i = 0; i < n; i++) bad += buf[i] != pattern(i);
        memset(buf, 0, n);
        return bad == 0;
    }
    {
        char msg[48];
        snprintf(msg, sizeof msg, "verify %zu", n);
        CK(nixl_gen_notif(a, "bench-target", msg, strlen(msg), NULL), "gen_notif");
    }
    wait_note(a, &nt);
    return !strcmp(nt.text, "ok");
}

static double pingpong(nixl_agent_t *a, unsigned char *buf, uintptr_t rbuf, double *p99) {
    nixl_desc_t l = {(uintptr_t)buf, 8, 0}, r = {rbuf, 8, 0};
    nixl_dlist_t ll = {NIXL_DRAM, &l, 1}, rl = {NIXL_DRAM, &r, 1};
    nixl_opt_args_t opt;
    nixl_xfer_req_t *req;
    double *half = (double *)calloc(o.iters, sizeof(double)), med;
    size_t k;
    note nt;
    memset(&opt, 0, sizeof opt);
    opt.notif = "ping";
    opt.notif_len = 4;
    opt.has_notif = 1;
    CK(nixl_create_xfer_req(a, NIXL_WRITE, &ll, &rl, "bench-target", &opt, &req), "create_xfer_req");
    for (k = 0; k < o.iters + o.warmup; k++) {
        double t0 = now_us();
        nixl_status_t st = nixl_post_xfer_req(a, req, NULL);
        if (st != NIXL_IN_PROG && st != NIXL_SUCCESS) die("ping", st);
        wait_note(a, &nt); /* the pong arrives after our write completed at the target */
        if (k >= o.warmup) half[k - o.warmup] = (now_us() - t0) / 2;
        CK(wait_req(a, req), "ping");
    }
    nixl_release_xfer_req(a, req);
    med = pct(half, o.iters, 0.5);
    *p99 = pct(half, o.iters, 0.99);
    free(half);
    return med;
}

/* notifications alone: gen_notif there, gen_notif back */
static double notif_pingpong(nixl_agent_t *a, double *p99) {
    double *half = (double *)calloc(o.iters, sizeof(double)), med;
    size_t k;
    note nt;
    for (k = 0; k < o.iters + o.warmup; k++) {
        double t0 = now_us();
        CK(nixl_gen_notif(a, "bench-target", "gping", 5, NULL), "gen_notif(gping)");
        wait_note(a, &nt);
        if (k >= o.warmup) half[k - o.warmup] = (now_us() - t0) / 2;
    }
    med = pct(half, o.iters, 0.5);
    *p99 = pct(half, o.iters, 0.99);
    free(half);
    return med;
}

static int initiator(int fd) {
    size_t len = buffer_bytes(), i, block;
    unsigned char *buf = (unsigned char *)malloc(len);
    nixl_agent_t *a;
    uintptr_t rbuf;
    int ok = 1;
    double last = 0;
    for (i = 0; i < len; i++) buf[i] = o.op == NIXL_WRITE ? pattern(i) : 0;
    a = make_agent("bench-init", buf, len);
    rbuf = swap_md(a, fd, (uintptr_t)buf);
    CK(nixl_make_connection(a, "bench-target", NULL), "make_connection");
    if (o.pingpong) {
        double p99, med = pingpong(a, buf, rbuf, &p99);
        printf("%-8s ping-pong (8-byte WRITE + notification), half round trip: median %.2f us, p99 %.2f us\n",
               o.backend, med, p99);
        last = med;
    } else if (o.notif_pingpong) {
        double p99, med = notif_pingpong(a, &p99);
        printf("%-8s ping-pong (notification alone), half round trip: median %.2f us, p99 %.2f us\n", o.backend,
               med, p99);
        last = med;
    } else {
        printf("%-6s %-5s %10s %6s %6s %9s %12s %17s %17s %17s\n", "backend", "op", "block", "batch", "window",
               "GB/s", "desc/s", "prep us p50/p99", "post us p50/p99", "compl us p50/p99");
        for (block = o.block_min; block <= o.block_max; block *= 2) {
            run_stats s = run_block(a, buf, rbuf, block);
            printf("%-6s %-5s %10zu %6zu %6zu %9.3f %12.0f %8.2f/%-8.2f %8.2f/%-8.2f %8.1f/%-8.1f\n", o.backend,
                   o.op == NIXL_READ ? "READ" : "WRITE", block, o.batch, o.window, s.gbps, s.dps, s.prep50, s.prep99,
                   s.post50, s.post99, s.done50, s.done99);
            last = s.gbps;
            if (o.check && !check_bytes(a, buf, o.window * o.batch * block)) {
                printf("check: block %zu: BYTES MISMATCHED\n", block);
                ok = 0;
            } else if (o.check) {
                printf("check: block %zu: every byte matched\n", block);
            }
            if (block == o.block_max) break;
        }
    }
    if (o.result) printf("RESULT %s %.4f\n", o.result, last);
    if (o.check && ok) printf("nixl_bench: every byte matched\n");
    CK(nixl_gen_notif(a, "bench-target", "quit", 4, NULL), "gen_notif(quit)");
    /* let the quit notification go out before the connection closes */
    for (i = 0; i < 1000; i++) nixl_progress(a);
    nixl_agent_destroy(a);
    free(buf);
    return ok ? 0 : 1;
}

static size_t num(const char *s) { return (size_t)strtoull(s, NULL, 0); }

int main(int argc, char **argv) {
    int i, sv[2], rc, ws;
    pid_t pid;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--oneshot")) o.oneshot = 1;
        else if (!strcmp(a, "--check")) o.check = 1;
        else if (!strcmp(a, "--pingpong")) o.pingpong = 1;
        else if (!strcmp(a, "--notif-pingpong")) o.notif_pingpong = 1;
        else if (!strcmp(a, "--backend") && ++i) o.backend = v;
        else if (!strcmp(a, "--params") && ++i) o.params = v;
        else if (!strcmp(a, "--result") && ++i) o.result = v;
        else if (!strcmp(a, "--op") && ++i) o.op = strcmp(v, "READ") ? NIXL_WRITE : NIXL_READ;
        else if (!strcmp(a, "--block-min") && ++i) o.block_min = num(v);
        else if (!strcmp(a, "--block-max") && ++i) o.block_max = num(v);
        else if (!strcmp(a, "--batch") && ++i) o.batch = num(v);
        else if (!strcmp(a, "--window") && ++i) o.window = num(v);
        else if (!strcmp(a, "--iters") && ++i) o.iters = num(v);
        else if (!strcmp(a, "--warmup") && ++i) o.warmup = num(v);
        else {
            fprintf(stderr, "usage: %s [--backend VERBS|UCX] [--params P] [--op READ|WRITE] [--block-min N]\n"
                            "  [--block-max N] [--batch N] [--window N] [--iters N] [--warmup N] [--oneshot]\n"
                            "  [--check] [--pingpong] [--notif-pingpong] [--result NAME]\n", argv[0]);
            return 2;
        }
    }
    if (o.block_max < o.block_min) o.block_max = o.block_min;
    if (!o.block_min || !o.batch || !o.window || !o.iters) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 1;
    pid = fork();
    if (pid == 0) {
        close(sv[0]);
        _exit(target(sv[1]));
    }
    close(sv[1]);
    rc = initiator(sv[0]);
    waitpid(pid, &ws, 0);
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) rc = 1;
    return rc;
}
