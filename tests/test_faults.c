/* test_faults.c — what happens to a survivor when things go wrong, on a real
   backend:
       build/test_faults VERBS     (inside the Soft-RoCE VM: tests/softroce/vm-run)
       build/test_faults UCX       (natively, UCX over tcp)
   - a peer process killed (SIGKILL) before, during and after transfers, as
     target and as initiator, with READs and WRITEs in flight: the survivor's
     requests end in NIXL_ERR_REMOTE_DISCONNECT within a bound the backend's
     timeout params decide, its metadata of the dead peer is invalidated,
     another peer keeps working, and a restarted peer (same name, new
     metadata) is loaded and used again — bytes checked every time;
   - a notification flood (100,000 messages) to a slow receiver: all arrive,
     in order;
   - the locked-memory limit lowered: registration fails with a clear error;
   - release and destroy with requests in flight, and deregistration of
     memory a request uses: no crash, the documented result.
   Each fault prints a FIGURE line: what was injected, requests in flight,
   time to the error, bytes verified afterwards. */
#define NIXL_IMPLEMENTATION
#include "../nixl_ucx.h"
#include "../nixl_verbs.h"
#include "nixl_test.h"
#include "xfer_util.h"

#include <linux/capability.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#define BUF (8u << 20)       /* each side's buffer */
#define SLICE (1u << 20)     /* one request moves this much */
#define WINDOW 4             /* requests the survivor keeps in flight */
#define ERROR_BOUND_US (30u * 1000000u)

static const nixl_backend_ops_t *OPS;
static const char *BACKEND = "VERBS";
static const char *PARAMS; /* short timeouts so a dead peer shows quickly */

/* ---- the peer process --------------------------------------------------- */

enum { ROLE_TARGET = 0, ROLE_INITIATOR = 1 };

/* Runs in the child: registers a buffer, swaps metadata, then serves (and,
   as initiator, writes into the survivor) until it is killed or told to
   stop by the parent closing the socket. Never returns. */
static void peer_main(int fd, int role, unsigned seed) {
    unsigned char *buf = (unsigned char *)malloc(BUF);
    nixl_agent_t *a = xu_agent("peer", OPS, PARAMS);
    uintptr_t theirs;
    char ready = 'r';
    nixl_xfer_req_t *req = NULL;
    if (!a || !buf) _exit(3);
    nt_fill(buf, BUF, seed);
    if (xu_reg(a, buf, BUF) != NIXL_SUCCESS) _exit(4);
    theirs = xu_swap_md(a, fd, (uintptr_t)buf);
    if (!theirs) _exit(5);
    if (role == ROLE_INITIATOR &&
        xu_req(a, "survivor", NIXL_WRITE, (uintptr_t)buf, theirs + BUF - SLICE, SLICE, NULL, &req) != NIXL_SUCCESS)
        _exit(6);
    if (!xu_send_all(fd, &ready, 1)) _exit(7);
    for (;;) {
        char c;
        if (req) {
            nixl_status_t st = nixl_get_xfer_status(a, req);
            if (st != NIXL_IN_PROG) nixl_post_xfer_req(a, req, NULL);
        }
        nixl_progress(a);
        if (recv(fd, &c, 1, MSG_DONTWAIT) == 0) break; /* parent closed: clean exit */
    }
    if (req) {
        xu_wait(a, req, NULL, 5000000);
        nixl_release_xfer_req(a, req);
    }
    nixl_agent_destroy(a);
    _exit(0);
}

typedef struct peer { pid_t pid; int fd; uintptr_t buf; } peer;

/* The peer is this program again (fork + exec): a child of a process that
   already used verbs or UCX inherits their process-wide state (rxe refuses
   the child's doorbell writes, UCX's async context is the parent's), so
   peers start from a clean exec with "--peer FD ROLE SEED". */
static int peer_start(peer *p, nixl_agent_t *survivor, uintptr_t mine, int role, unsigned seed) {
    int sv[2];
    char ready;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 0;
    p->pid = fork();
    if (p->pid == 0) {
        char fd[16], r[16], sd[16];
        close(sv[0]);
        snprintf(fd, sizeof fd, "%d", sv[1]);
        snprintf(r, sizeof r, "%d", role);
        snprintf(sd, sizeof sd, "%u", seed);
        execl("/proc/self/exe", "test_faults", BACKEND, "--peer", fd, r, sd, (char *)NULL);
        _exit(127);
    }
    close(sv[1]);
    p->fd = sv[0];
    p->buf = xu_swap_md(survivor, p->fd, mine);
    return p->buf && xu_recv_all(p->fd, &ready, 1);
}

static void peer_kill(peer *p) {
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
    close(p->fd);
}

static int peer_stop(peer *p) {
    int ws = 0;
    close(p->fd); /* tells it to finish */
    waitpid(p->pid, &ws, 0);
    return WIFEXITED(ws) && WEXITSTATUS(ws) == 0;
}

/* ---- the survivor's side ------------------------------------------------- */

typedef struct world {
    nixl_agent_t *surv, *bystander;
    unsigned char *buf, *bbuf;
} world;

static int world_up(world *w) {
    memset(w, 0, sizeof *w);
    w->surv = xu_agent("survivor", OPS, PARAMS);
    w->bystander = xu_agent("bystander", OPS, PARAMS);
    w->buf = (unsigned char *)calloc(1, BUF);
    w->bbuf = (unsigned char *)calloc(1, BUF);
    return w->surv && w->bystander && w->buf && w->bbuf && xu_reg(w->surv, w->buf, BUF) == NIXL_SUCCESS &&
           xu_reg(w->bystander, w->bbuf, BUF) == NIXL_SUCCESS && xu_load_md_of(w->bystander, w->surv);
}

static void world_down(world *w) {
    nixl_agent_destroy(w->surv);
    nixl_agent_destroy(w->bystander);
    free(w->buf);
    free(w->bbuf);
}

/* a WRITE to the bystander, bytes checked: "its other peers keep working" */
static size_t bystander_ok(world *w) {
    nixl_xfer_req_t *r = NULL;
    nixl_status_t st;
    nt_fill(w->buf, SLICE, 77);
    memset(w->bbuf, 0, SLICE);
    if (xu_req(w->surv, "bystander", NIXL_WRITE, (uintptr_t)w->buf, (uintptr_t)w->bbuf, SLICE, NULL, &r))
        return 0;
    st = nixl_post_xfer_req(w->surv, r, NULL);
    if (st == NIXL_IN_PROG) st = xu_wait(w->surv, r, w->bystander, 0);
    nixl_release_xfer_req(w->surv, r);
    return st == NIXL_SUCCESS && nt_verify(w->bbuf, SLICE, 77) ? SLICE : 0;
}

/* one READ or WRITE of SLICE with peer p, bytes checked */
static size_t transfer_ok(world *w, peer *p, nixl_xfer_op_t op, unsigned seed) {
    nixl_xfer_req_t *r = NULL;
    nixl_status_t st;
    memset(w->buf, 0, SLICE);
    if (op == NIXL_WRITE) nt_fill(w->buf, SLICE, seed);
    if (xu_req(w->surv, "peer", op, (uintptr_t)w->buf, p->buf, SLICE, "checked", &r)) return 0;
    st = nixl_post_xfer_req(w->surv, r, NULL);
    if (st == NIXL_IN_PROG) st = xu_wait(w->surv, r, NULL, 0);
    nixl_release_xfer_req(w->surv, r);
    if (st != NIXL_SUCCESS) {
        printf("transfer_ok: %s of %u bytes: %s\n", op == NIXL_READ ? "READ" : "WRITE", SLICE, nixl_status_str(st));
        return 0;
    }
    /* a READ brings the peer's pattern; a WRITE is read back to check it */
    if (op == NIXL_WRITE) {
        memset(w->buf, 0, SLICE);
        if (xu_req(w->surv, "peer", NIXL_READ, (uintptr_t)w->buf, p->buf, SLICE, NULL, &r)) return 0;
        st = nixl_post_xfer_req(w->surv, r, NULL);
        if (st == NIXL_IN_PROG) st = xu_wait(w->surv, r, NULL, 0);
        nixl_release_xfer_req(w->surv, r);
    }
    return st == NIXL_SUCCESS && nt_verify(w->buf, SLICE, seed) ? SLICE : 0;
}

enum { KILL_BEFORE, KILL_DURING, KILL_AFTER };
static const char *const when_name[] = {"before", "during", "after"};

/* The scenario: start a peer, maybe move data, kill it at `when` with the
   survivor's requests of `op` in flight, time the error, check the damage
   stays local, restart the peer under the same name and use it again. */
static void kill_scenario(int when, int victim_role, nixl_xfer_op_t op) {
    world w;
    peer p;
    nixl_xfer_req_t *req[WINDOW];
    nixl_status_t fin[WINDOW];
    uint64_t t_kill, t_err = 0;
    int i, inflight = 0, disconnects = 0, others_ok = 1;
    size_t verified = 0;
    unsigned seed = 1000u + (unsigned)when * 10u + (unsigned)victim_role;
    if (!CHECK(world_up(&w))) return;
    if (!CHECK(peer_start(&p, w.surv, (uintptr_t)w.buf, victim_role, seed))) return;
    if (when != KILL_BEFORE) CHECK(transfer_ok(&w, &p, NIXL_READ, seed) == SLICE);
    if (when == KILL_AFTER) {
        peer_kill(&p);
        usleep(200000);
    }
    for (i = 0; i < WINDOW; i++) {
        uintptr_t l = (uintptr_t)w.buf + (size_t)i * SLICE, r = p.buf + (size_t)i * SLICE;
        req[i] = NULL;
        fin[i] = xu_req(w.surv, "peer", op, l, r, SLICE, "n", &req[i]);
        if (fin[i] == NIXL_SUCCESS) fin[i] = nixl_post_xfer_req(w.surv, req[i], NULL);
        if (fin[i] == NIXL_IN_PROG) inflight++;
    }
    t_kill = nixl_now_us();
    if (when != KILL_AFTER) peer_kill(&p);
    /* every request ends; those caught by the fault end in REMOTE_DISCONNECT */
    for (i = 0; i < WINDOW; i++) {
        if (fin[i] == NIXL_IN_PROG) fin[i] = xu_wait(w.surv, req[i], NULL, ERROR_BOUND_US);
        if (fin[i] == NIXL_ERR_REMOTE_DISCONNECT) {
            disconnects++;
            t_err = nixl_now_us();
        }
        others_ok &= fin[i] == NIXL_SUCCESS || fin[i] == NIXL_ERR_REMOTE_DISCONNECT ||
                     fin[i] == NIXL_ERR_NOT_FOUND; /* created after the invalidation */
        if (req[i]) CHECK_ST(nixl_release_xfer_req(w.surv, req[i]), NIXL_SUCCESS);
    }
    CHECKF(others_ok, "a request ended in something other than SUCCESS / REMOTE_DISCONNECT");
    if (when == KILL_BEFORE || when == KILL_AFTER)
        CHECKF(disconnects + (inflight == 0) > 0, "kill %s: no request saw the disconnect", when_name[when]);
    CHECKF(!t_err || t_err - t_kill < ERROR_BOUND_US, "error after %llu us",
           (unsigned long long)(t_err - t_kill));
    /* the dead peer's metadata is gone once the backend noticed */
    for (i = 0; i < 500 && nixl_check_remote_md(w.surv, "peer", NULL) == NIXL_SUCCESS; i++) {
        nixl_progress(w.surv);
        usleep(10000);
    }
    CHECK_ST(nixl_check_remote_md(w.surv, "peer", NULL), NIXL_ERR_NOT_FOUND);
    /* others keep working; a restarted peer is loaded and used again */
    verified += bystander_ok(&w);
    CHECK(verified == SLICE);
    if (CHECK(peer_start(&p, w.surv, (uintptr_t)w.buf, ROLE_TARGET, seed + 1))) {
        size_t a = transfer_ok(&w, &p, NIXL_READ, seed + 1), b = transfer_ok(&w, &p, NIXL_WRITE, seed + 2);
        CHECK(a == SLICE && b == SLICE);
        verified += a + b;
        CHECK(peer_stop(&p));
    }
    printf("FIGURE backend=%s fault=kill-%s-%s op=%s inflight=%d disconnected=%d time_to_error_ms=%.1f "
           "bytes_verified_after=%zu\n",
           BACKEND, victim_role == ROLE_TARGET ? "target" : "initiator", when_name[when],
           op == NIXL_READ ? "READ" : "WRITE", inflight, disconnects, t_err ? (double)(t_err - t_kill) / 1000.0 : 0.0,
           verified);
    world_down(&w);
}

static void test_kill_target_before(void) { kill_scenario(KILL_BEFORE, ROLE_TARGET, NIXL_WRITE); }
static void test_kill_target_during_write(void) { kill_scenario(KILL_DURING, ROLE_TARGET, NIXL_WRITE); }
static void test_kill_target_during_read(void) { kill_scenario(KILL_DURING, ROLE_TARGET, NIXL_READ); }
static void test_kill_target_after(void) { kill_scenario(KILL_AFTER, ROLE_TARGET, NIXL_READ); }
/* A peer that writes into the survivor dies mid-WRITE. (UCX: the checked
   data path; UCX 1.13's software RMA used to abort the survivor here.) */
static void test_kill_initiator_during(void) { kill_scenario(KILL_DURING, ROLE_INITIATOR, NIXL_WRITE); }
static void test_kill_initiator_after(void) { kill_scenario(KILL_AFTER, ROLE_INITIATOR, NIXL_READ); }

enum { FLOOD = 100000 };

/* the slow receiver (its own exec): drains in bursts with pauses */
static void sink_main(int fd) {
    nixl_agent_t *a = xu_agent("sink", OPS, PARAMS);
    unsigned char buf[64];
    xu_notes n;
    memset(&n, 0, sizeof n);
    n.in_order = 1;
    CHECK(a && xu_reg(a, buf, sizeof buf) == NIXL_SUCCESS && xu_swap_md(a, fd, (uintptr_t)buf));
    while (n.n < FLOOD) { /* slow: one drain every 2 ms, whatever is queued */
        long before = n.n;
        xu_wait_notes(a, &n, n.n + 1, NULL, 30000000);
        if (n.n == before) break; /* 30 s without progress */
        usleep(2000);
    }
    CHECKF(n.n == FLOOD && n.in_order, "received %ld, in order %d", n.n, n.in_order);
    xu_send_all(fd, &n.n, sizeof n.n);
    nixl_agent_destroy(a);
    nt_child_exit();
}

/* 100,000 notifications to a receiver that drains slowly: flow control
   holds, nothing is lost, order is kept */
static void test_notif_flood(void) {
    enum { N = FLOOD };
    int sv[2];
    pid_t pid;
    uint64_t t0;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return;
    pid = fork();
    if (pid == 0) {
        char fd[16];
        close(sv[0]);
        snprintf(fd, sizeof fd, "%d", sv[1]);
        execl("/proc/self/exe", "test_faults", BACKEND, "--sink", fd, (char *)NULL);
        _exit(127);
    }
    close(sv[1]);
    {
        nixl_agent_t *a = xu_agent("flooder", OPS, PARAMS);
        unsigned char buf[64];
        long i, got = 0, refused = 0, slowed = 0;
        char msg[32];
        CHECK(a && xu_reg(a, buf, sizeof buf) == NIXL_SUCCESS && xu_swap_md(a, sv[0], (uintptr_t)buf));
        t0 = nixl_now_us();
        for (i = 0; i < N; i++) {
            nixl_status_t st;
            snprintf(msg, sizeof msg, "seq %ld", i);
            /* IN_PROG: flow control (the sink drains slowly): progress, retry */
            while ((st = nixl_gen_notif(a, "sink", msg, strlen(msg), NULL)) == NIXL_IN_PROG) {
                nixl_progress(a);
                slowed++;
            }
            if (st != NIXL_SUCCESS) refused++;
            if (i % 64 == 0) nixl_progress(a);
        }
        /* keep driving until the receiver has them all */
        while (!got) {
            nixl_progress(a);
            if (recv(sv[0], &got, sizeof got, MSG_DONTWAIT) <= 0) got = 0;
            if (nixl_now_us() - t0 > 120000000u) break;
        }
        CHECK(refused == 0);
        CHECK(got == N);
        printf("FIGURE backend=%s fault=notif-flood messages=%d delivered=%ld seconds=%.2f gen_notif_in_prog=%ld\n",
               BACKEND, N, got, (double)(nixl_now_us() - t0) / 1e6, slowed);
        CHECK_CHILD(pid);
        nixl_agent_destroy(a);
    }
    close(sv[0]);
}

/* locked-memory limit: registration fails, and the log says why */
static char last_err[2048]; /* every registration error line, in order */
static void keep_log(void *u, int level, const char *msg) {
    size_t used = strlen(last_err);
    (void)u;
    if (level <= NIXL_LOG_ERROR && strstr(msg, "register"))
        snprintf(last_err + used, sizeof last_err - used, "%s%s", used ? " | " : "", msg);
}
static void test_memlock_limit(void) {
    pid_t pid;
    if (strcmp(BACKEND, "VERBS") != 0) {
        SKIP("UCX over tcp/shared memory pins nothing: no locked-memory limit to hit");
        return;
    }
    pid = fork();
    if (pid == 0) {
        execl("/proc/self/exe", "test_faults", BACKEND, "--memlock", (char *)NULL);
        _exit(127);
    }
    CHECK_CHILD(pid);
}

/* Root (as in the VM) pins past RLIMIT_MEMLOCK through CAP_IPC_LOCK: drop
   that capability so the limit binds, as it does for an ordinary user. */
static void drop_ipc_lock(void) {
    struct __user_cap_header_struct h;
    struct __user_cap_data_struct d[2];
    memset(&h, 0, sizeof h);
    h.version = _LINUX_CAPABILITY_VERSION_3;
    if (syscall(SYS_capget, &h, d) != 0) return;
    d[0].effective &= ~(1u << CAP_IPC_LOCK);
    d[0].permitted &= ~(1u << CAP_IPC_LOCK);
    d[0].inheritable &= ~(1u << CAP_IPC_LOCK);
    if (syscall(SYS_capset, &h, d) != 0) perror("capset");
}

/* (its own exec) */
static void memlock_main(void) {
    {
        struct rlimit rl = {64 * 1024, 64 * 1024};
        drop_ipc_lock();
        nixl_agent_config_t cfg;
        nixl_agent_t *a = NULL;
        nixl_backend_t *b;
        unsigned char *big = (unsigned char *)malloc(64u << 20);
        CHECK(setrlimit(RLIMIT_MEMLOCK, &rl) == 0);
        memset(&cfg, 0, sizeof cfg);
        cfg.name = "pinned";
        cfg.log_fn = keep_log;
        CHECK_ST(nixl_agent_create(&cfg, &a), NIXL_SUCCESS);
        CHECK_ST(nixl_create_backend(a, OPS, PARAMS, &b), NIXL_SUCCESS);
        CHECK(xu_reg(a, big, 64u << 20) != NIXL_SUCCESS);
        CHECKF(strstr(last_err, "locked-memory") || strstr(last_err, "memlock") || strstr(last_err, "ulimit -l"),
               "log: %s", last_err);
        printf("FIGURE backend=%s fault=memlock-64KiB register=64MiB log=\"%s\"\n", BACKEND, last_err);
        nixl_agent_destroy(a);
        nt_child_exit();
    }
}

/* release / destroy with requests in flight, deregistration in use */
static void test_teardown_in_flight(void) {
    world w;
    peer p;
    nixl_xfer_req_t *r = NULL;
    nixl_status_t st;
    int i;
    if (!CHECK(world_up(&w))) return;
    if (!CHECK(peer_start(&p, w.surv, (uintptr_t)w.buf, ROLE_TARGET, 5))) return;
    /* release while in flight: aborted, or REPOST_ACTIVE until it ends */
    CHECK_ST(xu_req(w.surv, "peer", NIXL_WRITE, (uintptr_t)w.buf, p.buf, BUF, NULL, &r), NIXL_SUCCESS);
    st = nixl_post_xfer_req(w.surv, r, NULL);
    CHECK(st == NIXL_IN_PROG || st == NIXL_SUCCESS);
    st = nixl_release_xfer_req(w.surv, r);
    if (st == NIXL_ERR_REPOST_ACTIVE) {
        CHECK_ST(xu_wait(w.surv, r, NULL, 0), NIXL_SUCCESS);
        CHECK_ST(nixl_release_xfer_req(w.surv, r), NIXL_SUCCESS);
    } else {
        CHECK_ST(st, NIXL_SUCCESS);
    }
    /* deregistration of memory a prepared request uses: later posts refused */
    CHECK_ST(xu_req(w.surv, "peer", NIXL_READ, (uintptr_t)w.buf, p.buf, SLICE, NULL, &r), NIXL_SUCCESS);
    CHECK_ST(xu_dereg(w.surv, w.buf, BUF), NIXL_SUCCESS);
    CHECK_ST(nixl_post_xfer_req(w.surv, r, NULL), NIXL_ERR_NOT_FOUND);
    CHECK_ST(nixl_release_xfer_req(w.surv, r), NIXL_SUCCESS);
    CHECK_ST(xu_reg(w.surv, w.buf, BUF), NIXL_SUCCESS);
    CHECK(transfer_ok(&w, &p, NIXL_WRITE, 6) == SLICE); /* (the WRITE above replaced the peer's pattern) */
    /* destroy with requests in flight: the peer must survive it */
    for (i = 0; i < 3; i++) {
        CHECK_ST(xu_req(w.surv, "peer", NIXL_WRITE, (uintptr_t)w.buf, p.buf, BUF, NULL, &r), NIXL_SUCCESS);
        nixl_post_xfer_req(w.surv, r, NULL);
    }
    nixl_agent_destroy(w.surv); /* must not crash or leak (ASan/valgrind runs) */
    w.surv = NULL;
    CHECK(peer_stop(&p));
    world_down(&w);
}

int main(int argc, char **argv) {
    int i;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "VERBS") || !strcmp(argv[i], "UCX")) {
            BACKEND = argv[i];
            memmove(argv + i, argv + i + 1, (size_t)(argc - i) * sizeof *argv);
            argc--;
            break;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(BACKEND, "UCX")) {
        OPS = nixl_ucx_backend();
        PARAMS = getenv("NIXL_FAULT_PARAMS") ? getenv("NIXL_FAULT_PARAMS") : "tls=tcp";
    } else {
        struct ibv_device **l;
        int n = 0;
        OPS = nixl_verbs_backend();
        /* ACK timeout 4.096 us * 2^12 = 17 ms, 7 retries: a dead peer within ~0.2 s */
        PARAMS = getenv("NIXL_FAULT_PARAMS") ? getenv("NIXL_FAULT_PARAMS") : "timeout=12";
        l = ibv_get_device_list(&n);
        if (l) ibv_free_device_list(l);
        if (n == 0) {
            SKIP("no RDMA device: run inside tests/softroce/vm-run");
            return nt_finish();
        }
    }
    xu_log_level = getenv("NIXL_TEST_LOG") ? NIXL_LOG_DEBUG : NIXL_LOG_ERROR - 1; /* the faults make errors on purpose */
    if (argc == 5 && !strcmp(argv[1], "--peer")) peer_main(atoi(argv[2]), atoi(argv[3]), (unsigned)atoi(argv[4]));
    if (argc == 3 && !strcmp(argv[1], "--sink")) sink_main(atoi(argv[2]));
    if (argc == 2 && !strcmp(argv[1], "--memlock")) memlock_main();
    nt_init(argc, argv);
    NT_RUN(test_kill_target_before);
    NT_RUN(test_kill_target_during_write);
    NT_RUN(test_kill_target_during_read);
    NT_RUN(test_kill_target_after);
    NT_RUN(test_kill_initiator_during);
    NT_RUN(test_kill_initiator_after);
    NT_RUN(test_notif_flood);
    NT_RUN(test_memlock_limit);
    NT_RUN(test_teardown_in_flight);
    return nt_finish();
}
