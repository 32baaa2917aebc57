/* test_etcd.c — metadata exchange through a real etcd (Debian's etcd-server,
   started here on loopback ports and stopped after): publish, fetch (read
   and watch), invalidation through a deleted key, namespaces, and two
   processes that find each other through etcd and transfer over UCX with
   the bytes checked. Skips (with the reason) when etcd is not installed. */
#define NIXL_IMPLEMENTATION
#define NIXL_WITH_ETCD
#include "../nixl_ucx.h"
#include "nixl_test.h"
#include "test_backend.h"
#include "log_capture.h"
#include "xfer_util.h"

#include <signal.h>
#include <sys/stat.h>

static nixl_backend_ops_t OPS;
static char endpoint[64];
static pid_t etcd_pid;
static char data_dir[128];

static size_t discard(char *d, size_t s, size_t n, void *u) {
    (void)d;
    (void)u;
    return s * n;
}

static int http_ok(const char *url) {
    CURL *c = curl_easy_init();
    long code = 0;
    CURLcode rc;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 1000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    return rc == CURLE_OK && code == 200;
}

static int start_etcd(void) {
    char client[64], peer[64], health[96], cluster[96];
    int port = 21000 + (int)(getpid() % 20000), i;
    if (access("/usr/bin/etcd", X_OK) != 0) return 0;
    snprintf(data_dir, sizeof data_dir, "/tmp/nixl-etcd-%d", (int)getpid());
    snprintf(client, sizeof client, "http://127.0.0.1:%d", port);
    snprintf(peer, sizeof peer, "http://127.0.0.1:%d", port + 1);
    snprintf(endpoint, sizeof endpoint, "%s", client);
    snprintf(cluster, sizeof cluster, "nixl-test=%s", peer);
    etcd_pid = fork();
    if (etcd_pid == 0) {
        int devnull = open("/dev/null", 1);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execl("/usr/bin/etcd", "etcd", "--name", "nixl-test", "--data-dir", data_dir, "--listen-client-urls", client,
              "--advertise-client-urls", client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
              "--initial-cluster", cluster, (char *)NULL);
        _exit(127);
    }
    snprintf(health, sizeof health, "%s/health", client);
    for (i = 0; i < 100; i++) { /* up to 10 s */
        if (http_ok(health)) return 1;
        usleep(100000);
    }
    return 0;
}

static void stop_etcd(void) {
    char cmd[200];
    if (etcd_pid > 0) {
        kill(etcd_pid, SIGTERM);
        waitpid(etcd_pid, NULL, 0);
    }
    snprintf(cmd, sizeof cmd, "rm -rf %s", data_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", data_dir);
}


static nixl_agent_t *mk(const char *name, const char *ns, int timeout_ms, const nixl_backend_ops_t *ops,
                        const char *params) {
    nixl_agent_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = name;
    cfg.etcd_endpoints = endpoint;
    cfg.etcd_namespace = ns;
    cfg.sc_timeout_ms = timeout_ms;
    cfg.log_item_fn = capture_log_item;
    return xu_agent_cfg(&cfg, ops, params, NULL, NULL);
}

static int reg(nixl_agent_t *a, void *p, size_t n) {
    nixl_desc_t d = {(uintptr_t)p, n, 0};
    nixl_dlist_t l = {NIXL_DRAM, &d, 1};
    return nixl_register_mem(a, &l, NULL) == NIXL_SUCCESS;
}

static int wait_md(nixl_agent_t *a, const char *remote, int loaded, int ms) {
    int i;
    for (i = 0; i < ms / 10; i++) {
        if ((nixl_check_remote_md(a, remote, NULL) == NIXL_SUCCESS) == loaded) return 1;
        usleep(10000);
    }
    return 0;
}

static int write_ok(nixl_agent_t *init, nixl_agent_t *target, const char *tname, unsigned char *src,
                    unsigned char *dst, size_t len) {
    nixl_desc_t ls = {(uintptr_t)src, len, 0}, rd = {(uintptr_t)dst, len, 0};
    nixl_dlist_t l = {NIXL_DRAM, &ls, 1}, r = {NIXL_DRAM, &rd, 1};
    nixl_xfer_req_t *req = NULL;
    nixl_status_t st;
    int i;
    if (nixl_create_xfer_req(init, NIXL_WRITE, &l, &r, tname, NULL, &req) != NIXL_SUCCESS) return 0;
    st = nixl_post_xfer_req(init, req, NULL);
    for (i = 0; i < 1000000 && st == NIXL_IN_PROG; i++) {
        st = nixl_get_xfer_status(init, req);
        if (target) nixl_progress(target);
    }
    nixl_release_xfer_req(init, req);
    return st == NIXL_SUCCESS && memcmp(src, dst, len) == 0;
}

static void test_publish_fetch_invalidate(void) {
    nixl_agent_t *a = mk("etcd-a", NULL, 0, &OPS, NULL), *b = mk("etcd-b", NULL, 0, &OPS, NULL);
    unsigned char src[2048], dst[2048];
    CHECK(a && b);
    CHECK(!strcmp(a->etcd_ns, "/nixl/agents/"));
    nt_fill(src, sizeof src, 4);
    memset(dst, 0, sizeof dst);
    reg(a, dst, sizeof dst);
    reg(b, src, sizeof src);
    CHECK_ST(nixl_send_local_md(a, NULL), NIXL_SUCCESS);
    CHECK_ST(nixl_fetch_remote_md(b, "etcd-a", NULL), NIXL_SUCCESS);
    CHECK(wait_md(b, "etcd-a", 1, 5000));
    CHECK(write_ok(b, a, "etcd-a", src, dst, sizeof src));
    /* a deleted key reaches the peer through its watch */
    CHECK_ST(nixl_invalidate_local_md(a, NULL), NIXL_SUCCESS);
    CHECK(wait_md(b, "etcd-a", 0, 5000));
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
}

typedef struct late { nixl_agent_t *a; } late;
static void *publish_late(void *p) {
    usleep(300000);
    nixl_send_local_md(((late *)p)->a, NULL);
    return NULL;
}

static void test_fetch_waits_and_times_out(void) {
    nixl_agent_t *a = mk("late-a", "/ns-wait", 3000, &OPS, NULL), *b = mk("late-b", "ns-wait/", 3000, &OPS, NULL);
    nixl_agent_t *c = mk("lonely", "ns-wait", 400, &OPS, NULL);
    pthread_t th;
    late l;
    CHECK(a && b && c);
    CHECK(!strcmp(b->etcd_ns, "/ns-wait/") && !strcmp(a->etcd_ns, "/ns-wait/"));
    /* the fetch starts before the key exists: the watch sees it arrive */
    CHECK_ST(nixl_fetch_remote_md(b, "late-a", NULL), NIXL_SUCCESS);
    l.a = a;
    pthread_create(&th, NULL, publish_late, &l);
    CHECK(wait_md(b, "late-a", 1, 5000));
    pthread_join(th, NULL);
    /* nobody publishes: the fetch gives up after its timeout, with a log line */
    CHECK_ST(nixl_fetch_remote_md(c, "nobody", NULL), NIXL_SUCCESS);
    usleep(900000);
    CHECK_ST(nixl_check_remote_md(c, "nobody", NULL), NIXL_ERR_NOT_FOUND);
    CHECK(logged_item(NIXL_LOGITEM_FETCH_FAILED));
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
    nixl_agent_destroy(c);
}

static void test_namespaces_and_labels(void) {
    nixl_agent_t *a = mk("ns-a", "//one//", 500, &OPS, NULL), *b = mk("ns-b", "/two/", 500, &OPS, NULL);
    nixl_agent_t *c = mk("ns-c", "/one", 3000, &OPS, NULL);
    unsigned char buf[64];
    nixl_desc_t d = {(uintptr_t)buf, 64, 0};
    nixl_dlist_t l = {NIXL_DRAM, &d, 1};
    nixl_opt_args_t opt;
    CHECK(!strcmp(a->etcd_ns, "/one/"));
    reg(a, buf, sizeof buf);
    CHECK_ST(nixl_send_local_md(a, NULL), NIXL_SUCCESS);
    /* another namespace does not see it */
    CHECK_ST(nixl_fetch_remote_md(b, "ns-a", NULL), NIXL_SUCCESS);
    usleep(900000);
    CHECK_ST(nixl_check_remote_md(b, "ns-a", NULL), NIXL_ERR_NOT_FOUND);
    /* a labelled partial publication */
    memset(&opt, 0, sizeof opt);
    opt.metadata_label = "kv-layer0";
    opt.include_conn_info = 1;
    CHECK_ST(nixl_send_local_partial_md(a, &l, &opt), NIXL_SUCCESS);
    CHECK_ST(nixl_fetch_remote_md(c, "ns-a", &opt), NIXL_SUCCESS);
    CHECK(wait_md(c, "ns-a", 1, 5000));
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
    nixl_agent_destroy(c);
}

static void test_no_etcd_reachable(void) {
    nixl_agent_config_t cfg;
    nixl_agent_t *a = NULL;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "unreachable";
    cfg.etcd_endpoints = "http://127.0.0.1:1"; /* nothing listens there */
    cfg.sc_timeout_ms = 500;
    cfg.log_item_fn = capture_log_item;
    CHECK_ST(nixl_agent_create(&cfg, &a), NIXL_SUCCESS);
    CHECK_ST(nixl_send_local_md(a, NULL), NIXL_ERR_REMOTE_DISCONNECT);
    CHECK(logged_item(NIXL_LOGITEM_ETCD_FAILED));
    nixl_agent_destroy(a);
}

/* two processes, UCX over tcp: the target publishes through etcd, the
   initiator fetches, writes with a notification, and the target checks the
   bytes when the notification arrives */
static void count_notif(void *user, const char *from, const void *msg, size_t len) {
    (void)from;
    if (len == 7 && !memcmp(msg, "written", 7)) (*(int *)user)++;
}

static void test_two_processes_ucx(void) {
    enum { LEN = 65536 };
    int go[2];
    pid_t pid;
    uintptr_t addr = 0;
    if (pipe(go) != 0) return;
    pid = fork();
    if (pid == 0) {
        nixl_agent_t *t = mk("proc-target", "/procs", 5000, nixl_ucx_backend(), "tls=tcp");
        unsigned char *dst = (unsigned char *)calloc(1, LEN);
        int got = 0, i;
        close(go[0]);
        addr = (uintptr_t)dst;
        CHECK(t && reg(t, dst, LEN));
        CHECK_ST(nixl_send_local_md(t, NULL), NIXL_SUCCESS);
        if (write(go[1], &addr, sizeof addr) != sizeof addr) _exit(1);
        /* without an auth token a receiver verifies a sender through its
           loaded metadata: the target loads the initiator's (the fetch
           waits for its key) */
        CHECK_ST(nixl_fetch_remote_md(t, "proc-init", NULL), NIXL_SUCCESS);
        for (i = 0; i < 2000 && !got; i++) { /* up to ~20 s */
            nixl_get_notifs(t, count_notif, &got);
            if (!got) usleep(10000);
        }
        CHECK(got == 1);
        CHECK(nt_verify(dst, LEN, 9)); /* all there when the notification is */
        nixl_agent_destroy(t);
        free(dst);
        nt_child_exit();
    }
    close(go[1]);
    if (read(go[0], &addr, sizeof addr) == sizeof addr) {
        nixl_agent_t *a = mk("proc-init", "/procs", 5000, nixl_ucx_backend(), "tls=tcp");
        unsigned char *src = (unsigned char *)malloc(LEN);
        nixl_desc_t ls = {(uintptr_t)src, LEN, 0}, rd = {addr, LEN, 0};
        nixl_dlist_t l = {NIXL_DRAM, &ls, 1}, r = {NIXL_DRAM, &rd, 1};
        nixl_opt_args_t opt;
        nixl_xfer_req_t *req = NULL;
        nixl_status_t st = NIXL_ERR_UNKNOWN;
        nt_fill(src, LEN, 9);
        CHECK(a && reg(a, src, LEN));
        CHECK_ST(nixl_send_local_md(a, NULL), NIXL_SUCCESS);
        CHECK_ST(nixl_fetch_remote_md(a, "proc-target", NULL), NIXL_SUCCESS);
        CHECK(wait_md(a, "proc-target", 1, 5000));
        memset(&opt, 0, sizeof opt);
        opt.notif = "written";
        opt.notif_len = 7;
        opt.has_notif = 1;
        CHECK_ST(nixl_create_xfer_req(a, NIXL_WRITE, &l, &r, "proc-target", &opt, &req), NIXL_SUCCESS);
        if (req) {
            int i;
            st = nixl_post_xfer_req(a, req, NULL);
            for (i = 0; i < 10000000 && st == NIXL_IN_PROG; i++) st = nixl_get_xfer_status(a, req);
            nixl_release_xfer_req(a, req);
        }
        CHECK_ST(st, NIXL_SUCCESS);
        CHECK_CHILD(pid); /* the target checked the bytes */
        nixl_agent_destroy(a);
        free(src);
    } else {
        CHECK_CHILD(pid);
    }
    close(go[0]);
}

int main(int argc, char **argv) {
    nt_init(argc, argv);
    OPS = tb_make_ops("LOOP", NIXL_MEM_BIT(NIXL_DRAM));
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (!start_etcd()) {
        SKIP("etcd (Debian package etcd-server) is not installed or did not start");
        stop_etcd();
        return nt_finish();
    }
    NT_RUN(test_publish_fetch_invalidate);
    NT_RUN(test_fetch_waits_and_times_out);
    NT_RUN(test_namespaces_and_labels);
    NT_RUN(test_no_etcd_reachable);
    NT_RUN(test_two_processes_ucx);
    stop_etcd();
    return nt_finish();
}
