/* two_peers.c — the smallest complete nixl.h program: two processes, one
   buffer each, metadata exchanged over the side channel, a WRITE and a READ
   with notifications, every byte checked.

     ./two_peers [--backend VERBS|UCX] [--bytes N]

   The target serves its metadata on a TCP port (listen_thread); the
   initiator fetches it, writes its buffer into the target's with the
   notification "write-done", then reads the target's second half back with
   "read-done". The target checks the written bytes when "write-done"
   arrives — the notification comes only after all the data landed — then
   fills its second half for the read and waits for "read-done".
   Exit status 0 when every byte matched. */
#define NIXL_IMPLEMENTATION
#include "../nixl_verbs.h"
#include "../nixl_ucx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *backend = "VERBS";
static size_t nbytes = 1 << 20;

static void check(nixl_status_t st, const char *what) {
    if (st != NIXL_SUCCESS) {
        fprintf(stderr, "two_peers: %s: %s\n", what, nixl_status_str(st));
        exit(1);
    }
}

/* byte i of a buffer filled for `who` */
static unsigned char pattern(size_t i, unsigned who) { return (unsigned char)(i * 31u + who * 7u + (i >> 8)); }

static nixl_agent_t *make_agent(const char *name, int listen) {
    nixl_agent_config_t cfg;
    nixl_agent_t *a;
    nixl_backend_t *b;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = name;
    cfg.listen_thread = listen;
    check(nixl_agent_create(&cfg, &a), "agent_create");
    check(nixl_create_backend(a, strcmp(backend, "UCX") ? nixl_verbs_backend() : nixl_ucx_backend(), NULL, &b),
          "create_backend");
    return a;
}

static void register_buffer(nixl_agent_t *a, void *buf, size_t len) {
    nixl_desc_t d = {(uintptr_t)buf, len, 0};
    nixl_dlist_t l = {NIXL_DRAM, &d, 1};
    check(nixl_register_mem(a, &l, NULL), "register_mem");
}

/* waits for one notification and returns it in msg */
typedef struct got { char msg[64]; int n; } got;
static void on_notif(void *user, const char *from, const void *msg, size_t len) {
    got *g = (got *)user;
    (void)from;
    if (len >= sizeof g->msg) len = sizeof g->msg - 1;
    memcpy(g->msg, msg, len);
    g->msg[len] = 0;
    g->n++;
}
static void wait_notif(nixl_agent_t *a, const char *want) {
    got g;
    memset(&g, 0, sizeof g);
    while (g.n == 0) check(nixl_get_notifs(a, on_notif, &g), "get_notifs");
    if (strcmp(g.msg, want) != 0) {
        fprintf(stderr, "two_peers: expected notification '%s', got '%s'\n", want, g.msg);
        exit(1);
    }
}

/* what the target tells the initiator out of band: where to find it */
typedef struct target_info { uint16_t port; uintptr_t buf; } target_info;

static int target(int info_pipe) {
    nixl_agent_t *a = make_agent("target", 1);
    unsigned char *buf = (unsigned char *)calloc(1, 2 * nbytes);
    target_info ti;
    size_t i;
    register_buffer(a, buf, 2 * nbytes);
    ti.port = nixl_agent_listen_port(a);
    ti.buf = (uintptr_t)buf;
    if (write(info_pipe, &ti, sizeof ti) != sizeof ti) return 1;
    wait_notif(a, "write-done");
    for (i = 0; i < nbytes; i++)
        if (buf[i] != pattern(i, 1)) {
            fprintf(stderr, "target: byte %zu of the WRITE is wrong\n", i);
            return 1;
        }
    printf("target: WRITE of %zu bytes arrived intact before its notification\n", nbytes);
    for (i = 0; i < nbytes; i++) buf[nbytes + i] = pattern(i, 2); /* for the READ */
    check(nixl_gen_notif(a, "initiator", "ready", 5, NULL), "gen_notif");
    wait_notif(a, "read-done");
    printf("target: the initiator's READ finished\n");
    nixl_agent_destroy(a);
    free(buf);
    return 0;
}

/* posts a request and drives it to the end */
static void run(nixl_agent_t *a, nixl_xfer_op_t op, nixl_dlist_t *local, nixl_dlist_t *remote, const char *notif) {
    nixl_opt_args_t opt;
    nixl_xfer_req_t *req;
    nixl_status_t st;
    memset(&opt, 0, sizeof opt);
    opt.notif = notif;
    opt.notif_len = strlen(notif);
    opt.has_notif = 1;
    check(nixl_create_xfer_req(a, op, local, remote, "target", &opt, &req), "create_xfer_req");
    st = nixl_post_xfer_req(a, req, NULL);
    while (st == NIXL_IN_PROG) st = nixl_get_xfer_status(a, req);
    check(st, op == NIXL_WRITE ? "WRITE" : "READ");
    check(nixl_release_xfer_req(a, req), "release_xfer_req");
}

static int initiator(const target_info *ti) {
    nixl_agent_t *a = make_agent("initiator", 0);
    unsigned char *buf = (unsigned char *)malloc(2 * nbytes);
    nixl_opt_args_t at;
    nixl_desc_t l, r;
    nixl_dlist_t local = {NIXL_DRAM, &l, 1}, remote = {NIXL_DRAM, &r, 1};
    size_t i;
    for (i = 0; i < nbytes; i++) buf[i] = pattern(i, 1);
    memset(buf + nbytes, 0, nbytes);
    register_buffer(a, buf, 2 * nbytes);

    /* 1. metadata both ways over the side channel: fetch the target's, push ours */
    memset(&at, 0, sizeof at);
    at.ip = "127.0.0.1";
    at.port = ti->port;
    check(nixl_fetch_remote_md(a, "target", &at), "fetch_remote_md");
    while (nixl_check_remote_md(a, "target", NULL) != NIXL_SUCCESS) usleep(1000);
    check(nixl_send_local_md(a, &at), "send_local_md");

    /* 2. WRITE our first half into the target's first half */
    l.addr = (uintptr_t)buf;
    l.len = nbytes;
    l.dev_id = 0;
    r.addr = ti->buf;
    r.len = nbytes;
    r.dev_id = 0;
    run(a, NIXL_WRITE, &local, &remote, "write-done");
    printf("initiator: WRITE of %zu bytes done\n", nbytes);

    /* 3. READ the target's second half into ours, once it says it is ready */
    wait_notif(a, "ready");
    l.addr = (uintptr_t)buf + nbytes;
    r.addr = ti->buf + nbytes;
    run(a, NIXL_READ, &local, &remote, "read-done");
    for (i = 0; i < nbytes; i++)
        if (buf[nbytes + i] != pattern(i, 2)) {
            fprintf(stderr, "initiator: byte %zu of the READ is wrong\n", i);
            return 1;
        }
    printf("initiator: READ of %zu bytes intact\n", nbytes);
    nixl_agent_destroy(a);
    free(buf);
    return 0;
}

int main(int argc, char **argv) {
    int i, fds[2];
    pid_t pid;
    target_info ti;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--backend") && i + 1 < argc) backend = argv[++i];
        else if (!strcmp(argv[i], "--bytes") && i + 1 < argc) nbytes = (size_t)strtoull(argv[++i], NULL, 0);
        else {
            fprintf(stderr, "usage: %s [--backend VERBS|UCX] [--bytes N]\n", argv[0]);
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0); /* both processes' lines, in order, through a pipe too */
    if (pipe(fds) != 0) return 1;
    pid = fork();
    if (pid == 0) {
        close(fds[0]);
        _exit(target(fds[1]));
    }
    close(fds[1]);
    if (read(fds[0], &ti, sizeof ti) != sizeof ti) return 1;
    i = initiator(&ti);
    {
        int ws;
        waitpid(pid, &ws, 0);
        if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) i = 1;
    }
    printf("two_peers: %s\n", i ? "FAILED" : "every byte matched");
    return i;
}
