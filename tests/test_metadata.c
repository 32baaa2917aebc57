/* test_metadata.c — the metadata side channel: listener thread,
   send/fetch/invalidate, hostile frames, auth token, many peers at once.
   Agents use the in-process test backend; transfers after the exchange
   check the bytes. */
#define NIXL_IMPLEMENTATION
#include "../nixl.h"
#include "nixl_test.h"
#include "test_backend.h"
#include "log_capture.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

static nixl_backend_ops_t OPS;


static nixl_agent_t *mk(const char *name, int listen, const char *token, int timeout_ms) {
    nixl_agent_config_t cfg;
    nixl_agent_t *a = NULL;
    nixl_backend_t *b;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = name;
    cfg.listen_thread = listen;
    cfg.listen_addr = listen ? "127.0.0.1" : NULL;
    cfg.auth_token = token;
    cfg.sc_timeout_ms = timeout_ms;
    cfg.log_fn = capture_log;
    if (nixl_agent_create(&cfg, &a) != NIXL_SUCCESS) return NULL;
    if (nixl_create_backend(a, &OPS, NULL, &b) != NIXL_SUCCESS) return NULL;
    return a;
}

static nixl_opt_args_t peer_of(nixl_agent_t *listener) {
    nixl_opt_args_t o;
    memset(&o, 0, sizeof o);
    o.ip = "127.0.0.1";
    o.port = nixl_agent_listen_port(listener);
    return o;
}

static int wait_loaded(nixl_agent_t *a, const char *remote, int want_loaded) {
    int i;
    for (i = 0; i < 500; i++) {
        nixl_status_t st = nixl_check_remote_md(a, remote, NULL);
        if ((st == NIXL_SUCCESS) == want_loaded) return 1;
        usleep(10000);
    }
    return 0;
}

static int transfer_ok(nixl_agent_t *init, nixl_agent_t *target, const char *tname, unsigned char *src,
                       unsigned char *dst, size_t len) {
    nixl_desc_t ls = {(uintptr_t)src, len, 0}, rd = {(uintptr_t)dst, len, 0};
    nixl_dlist_t l = {NIXL_DRAM, &ls, 1}, r = {NIXL_DRAM, &rd, 1};
    nixl_xfer_req_t *req = NULL;
    nixl_status_t st;
    int i;
    memset(dst, 0, len);
    if (nixl_create_xfer_req(init, NIXL_WRITE, &l, &r, tname, NULL, &req) != NIXL_SUCCESS) return 0;
    st = nixl_post_xfer_req(init, req, NULL);
    for (i = 0; i < 100000 && st == NIXL_IN_PROG; i++) {
        st = nixl_get_xfer_status(init, req);
        nixl_progress(target);
    }
    nixl_release_xfer_req(init, req);
    return st == NIXL_SUCCESS && memcmp(src, dst, len) == 0;
}

static int reg(nixl_agent_t *a, void *p, size_t n) {
    nixl_desc_t d = {(uintptr_t)p, n, 0};
    nixl_dlist_t l = {NIXL_DRAM, &d, 1};
    return nixl_register_mem(a, &l, NULL) == NIXL_SUCCESS;
}

/* raw TCP client for hostile frames */
static int raw_connect(uint16_t port) {
    struct sockaddr_in sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void test_send_fetch_invalidate(void) {
    nixl_agent_t *tgt = mk("target", 1, NULL, 0), *ini = mk("initiator", 1, NULL, 0);
    unsigned char src[4096], dst[4096];
    nixl_opt_args_t to_tgt, to_ini, none;
    CHECK(tgt && ini);
    CHECK(nixl_agent_listen_port(tgt) != 0);
    nt_fill(src, sizeof src, 1);
    CHECK(reg(ini, src, sizeof src) && reg(tgt, dst, sizeof dst));
    to_tgt = peer_of(tgt);
    to_ini = peer_of(ini);
    memset(&none, 0, sizeof none);
    CHECK_ST(nixl_send_local_md(ini, &none), NIXL_ERR_INVALID_PARAM);
    /* fetch: asynchronous, then the transfer works */
    CHECK_ST(nixl_fetch_remote_md(ini, "target", &to_tgt), NIXL_SUCCESS);
    CHECK(wait_loaded(ini, "target", 1));
    CHECK(transfer_ok(ini, tgt, "target", src, dst, sizeof src));
    /* send: the peer loads ours and tells us it did */
    CHECK_ST(nixl_send_local_md(tgt, &to_ini), NIXL_SUCCESS);
    CHECK_ST(nixl_check_remote_md(ini, "target", NULL), NIXL_SUCCESS);
    CHECK_ST(nixl_send_local_md(ini, &to_tgt), NIXL_SUCCESS);
    CHECK_ST(nixl_check_remote_md(tgt, "initiator", NULL), NIXL_SUCCESS);
    /* invalidation reaches the peer */
    CHECK_ST(nixl_invalidate_local_md(ini, &to_tgt), NIXL_SUCCESS);
    CHECK_ST(nixl_check_remote_md(tgt, "initiator", NULL), NIXL_ERR_NOT_FOUND);
    CHECK_ST(nixl_invalidate_local_md(tgt, &to_ini), NIXL_SUCCESS);
    CHECK_ST(nixl_check_remote_md(ini, "target", NULL), NIXL_ERR_NOT_FOUND);
    /* fetching under the wrong name is refused */
    CHECK_ST(nixl_fetch_remote_md(ini, "someone-else", &to_tgt), NIXL_SUCCESS);
    usleep(300000);
    CHECK_ST(nixl_check_remote_md(ini, "someone-else", NULL), NIXL_ERR_NOT_FOUND);
    CHECK_ST(nixl_check_remote_md(ini, "target", NULL), NIXL_ERR_NOT_FOUND);
    CHECK(logged("answered as 'target'"));
    /* partial metadata over the side channel */
    {
        nixl_desc_t d = {(uintptr_t)src, 16, 0};
        nixl_dlist_t l = {NIXL_DRAM, &d, 1};
        nixl_opt_args_t o = to_tgt;
        o.include_conn_info = 1;
        CHECK_ST(nixl_send_local_partial_md(ini, &l, &o), NIXL_SUCCESS);
        CHECK_ST(nixl_check_remote_md(tgt, "initiator", &l), NIXL_SUCCESS);
    }
    /* nobody listening there */
    {
        nixl_opt_args_t dead = to_tgt;
        nixl_agent_destroy(tgt);
        CHECK_ST(nixl_send_local_md(ini, &dead), NIXL_ERR_REMOTE_DISCONNECT);
    }
    nixl_agent_destroy(ini);
}

static void send_raw(int fd, const void *p, size_t n) {
    if (n && send(fd, p, n, MSG_NOSIGNAL) < 0) perror("send");
}

static void test_hostile_frames(void) {
    nixl_agent_t *tgt = mk("target", 1, NULL, 300), *ini = mk("initiator", 0, NULL, 0);
    nixl_opt_args_t to_tgt;
    unsigned char hdr[16];
    int fd, i;
    CHECK(tgt && ini);
    to_tgt = peer_of(tgt);
    /* garbage */
    fd = raw_connect(to_tgt.port);
    send_raw(fd, "GET / HTTP/1.0\r\n\r\n", 18);
    usleep(100000);
    close(fd);
    /* truncated: a valid header announcing 1000 bytes, then close */
    _nixl_sc_put_header(hdr, NIXL_SC_SEND_MD, 0, 1000);
    fd = raw_connect(to_tgt.port);
    send_raw(fd, hdr, sizeof hdr);
    send_raw(fd, "abc", 3);
    close(fd);
    /* oversized */
    _nixl_sc_put_header(hdr, NIXL_SC_SEND_MD, 0, 0);
    hdr[12] = hdr[13] = hdr[14] = hdr[15] = 0xff;
    fd = raw_connect(to_tgt.port);
    send_raw(fd, hdr, sizeof hdr);
    usleep(100000);
    close(fd);
    /* slow: half a header, then silence past the timeout */
    fd = raw_connect(to_tgt.port);
    send_raw(fd, hdr, 5);
    usleep(600000);
    close(fd);
    /* a valid frame whose metadata blob is garbage: refused by the decoder */
    {
        unsigned char junk[64];
        nt_fill(junk, sizeof junk, 3);
        _nixl_sc_put_header(hdr, NIXL_SC_SEND_MD, 0, sizeof junk);
        fd = raw_connect(to_tgt.port);
        send_raw(fd, hdr, sizeof hdr);
        send_raw(fd, junk, sizeof junk);
        usleep(100000);
        close(fd);
    }
    CHECK(logged("bad magic"));
    /* through all of that the listener kept serving */
    for (i = 0; i < 3; i++) CHECK_ST(nixl_send_local_md(ini, &to_tgt), NIXL_SUCCESS);
    CHECK_ST(nixl_check_remote_md(tgt, "initiator", NULL), NIXL_SUCCESS);
    nixl_agent_destroy(tgt);
    nixl_agent_destroy(ini);
}

static void test_hostile_frames_logged(void) {
    /* each kind of bad frame leaves its own log line */
    nixl_agent_t *tgt = mk("target", 1, NULL, 300);
    uint16_t port = nixl_agent_listen_port(tgt);
    unsigned char hdr[16];
    int fd;
    _nixl_sc_put_header(hdr, NIXL_SC_SEND_MD, 0, 1000);
    fd = raw_connect(port);
    send_raw(fd, hdr, sizeof hdr);
    close(fd);
    usleep(150000);
    CHECK(logged("closed mid-frame"));
    _nixl_sc_put_header(hdr, NIXL_SC_SEND_MD, 0, 0);
    hdr[12] = hdr[13] = hdr[14] = hdr[15] = 0xff;
    fd = raw_connect(port);
    send_raw(fd, hdr, sizeof hdr);
    usleep(150000);
    close(fd);
    CHECK(logged("64 MiB limit"));
    fd = raw_connect(port);
    send_raw(fd, hdr, 5);
    usleep(600000);
    close(fd);
    CHECK(logged("too slow"));
    nixl_agent_destroy(tgt);
}

static void test_auth_token(void) {
    nixl_agent_t *tgt = mk("target", 1, "s3cret", 0);
    nixl_agent_t *good = mk("friend", 0, "s3cret", 0), *bad = mk("stranger", 0, "guess", 0);
    nixl_agent_t *none = mk("anonymous", 0, NULL, 0);
    nixl_opt_args_t to_tgt = peer_of(tgt);
    CHECK_ST(nixl_send_local_md(bad, &to_tgt), NIXL_ERR_REMOTE_DISCONNECT);
    CHECK(logged("wrong auth token"));
    CHECK_ST(nixl_send_local_md(none, &to_tgt), NIXL_ERR_REMOTE_DISCONNECT);
    CHECK_ST(nixl_check_remote_md(tgt, "stranger", NULL), NIXL_ERR_NOT_FOUND);
    CHECK_ST(nixl_check_remote_md(tgt, "anonymous", NULL), NIXL_ERR_NOT_FOUND);
    /* a stranger cannot fetch our metadata (our rkeys) either */
    CHECK_ST(nixl_fetch_remote_md(bad, "target", &to_tgt), NIXL_SUCCESS);
    usleep(300000);
    CHECK_ST(nixl_check_remote_md(bad, "target", NULL), NIXL_ERR_NOT_FOUND);
    CHECK_ST(nixl_send_local_md(good, &to_tgt), NIXL_SUCCESS);
    CHECK_ST(nixl_check_remote_md(tgt, "friend", NULL), NIXL_SUCCESS);
    nixl_agent_destroy(tgt);
    nixl_agent_destroy(good);
    nixl_agent_destroy(bad);
    nixl_agent_destroy(none);
}

typedef struct fetcher {
    nixl_agent_t *a;
    nixl_opt_args_t to;
    int ok;
} fetcher;

static void *fetch_thread(void *p) {
    fetcher *f = (fetcher *)p;
    f->ok = nixl_fetch_remote_md(f->a, "hub", &f->to) == NIXL_SUCCESS && wait_loaded(f->a, "hub", 1);
    return NULL;
}

static void test_fifty_fetchers(void) {
    enum { N = 50 };
    nixl_agent_t *hub = mk("hub", 1, NULL, 0);
    unsigned char *mem = (unsigned char *)malloc(N * 256);
    fetcher f[N];
    pthread_t th[N];
    int i, ok = 0, bytes_ok = 0;
    char name[32];
    CHECK(hub && reg(hub, mem, N * 256));
    for (i = 0; i < N; i++) {
        snprintf(name, sizeof name, "peer-%d", i);
        f[i].a = mk(name, 0, NULL, 0);
        f[i].to = peer_of(hub);
        f[i].ok = 0;
    }
    for (i = 0; i < N; i++) pthread_create(&th[i], NULL, fetch_thread, &f[i]);
    for (i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ok += f[i].ok;
    }
    CHECKF(ok == N, "%d of %d fetched", ok, N);
    /* each peer then writes its own slice of the hub's memory */
    for (i = 0; i < N; i++) {
        unsigned char src[256];
        nt_fill(src, sizeof src, (unsigned)i);
        reg(f[i].a, src, sizeof src);
        bytes_ok += transfer_ok(f[i].a, hub, "hub", src, mem + i * 256, 256);
    }
    CHECKF(bytes_ok == N, "%d of %d transfers verified", bytes_ok, N);
    for (i = 0; i < N; i++) nixl_agent_destroy(f[i].a);
    nixl_agent_destroy(hub);
    free(mem);
}

static void test_listener_config(void) {
    nixl_agent_config_t cfg;
    nixl_agent_t *a = NULL, *b = NULL;
    char tok[300];
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "cfg";
    cfg.log_fn = capture_log;
    cfg.listen_thread = 1;
    cfg.listen_addr = "not-an-ip";
    CHECK_ST(nixl_agent_create(&cfg, &a), NIXL_ERR_INVALID_PARAM);
    cfg.listen_addr = "127.0.0.1";
    memset(tok, 'x', sizeof tok - 1);
    tok[sizeof tok - 1] = 0;
    cfg.auth_token = tok;
    CHECK_ST(nixl_agent_create(&cfg, &a), NIXL_ERR_INVALID_PARAM);
    cfg.auth_token = NULL;
    CHECK_ST(nixl_agent_create(&cfg, &a), NIXL_SUCCESS);
    /* the same fixed port twice: the second cannot bind, and says why */
    cfg.listen_port = nixl_agent_listen_port(a);
    cfg.name = "cfg2";
    CHECK_ST(nixl_agent_create(&cfg, &b), NIXL_ERR_BACKEND);
    CHECK(logged("cannot listen"));
    nixl_agent_destroy(a);
}


/* 40 connections whose 16-byte headers declare the largest payload and
   then send nothing: the listener must not allocate (or zero) what was
   only announced; a real fetch still works meanwhile. */
static void test_declared_payload_not_allocated(void) {
    enum { N = 40 };
    nixl_agent_t *tgt = mk("target", 1, NULL, 3000), *ini = mk("initiator", 0, NULL, 0);
    nixl_opt_args_t to_tgt;
    unsigned char hdr[16];
    int fds[N], i;
    long before, after;
    CHECK(tgt && ini);
    if (!tgt || !ini) goto out;
    to_tgt = peer_of(tgt);
    before = nt_rss_kib();
    _nixl_sc_put_header(hdr, NIXL_SC_SEND_MD, 0, NIXL_SC_MAX_PAYLOAD);
    for (i = 0; i < N; i++) {
        fds[i] = raw_connect(to_tgt.port);
        if (fds[i] >= 0) send_raw(fds[i], hdr, sizeof hdr);
    }
    usleep(300000);
    after = nt_rss_kib();
    printf("FIGURE listener_declared_payload connections=%d declared_mib=%d rss_growth_mib=%.1f\n", N,
           (int)(NIXL_SC_MAX_PAYLOAD >> 20), (after - before) / 1024.0);
    CHECKF(after - before < 64 * 1024, "40 headers declaring %d MiB each grew memory by %.1f MiB",
           (int)(NIXL_SC_MAX_PAYLOAD >> 20), (after - before) / 1024.0);
    CHECK_ST(nixl_fetch_remote_md(ini, "target", &to_tgt), NIXL_SUCCESS);
    CHECK(wait_loaded(ini, "target", 1));
    for (i = 0; i < N; i++)
        if (fds[i] >= 0) close(fds[i]);
out:
    nixl_agent_destroy(tgt);
    nixl_agent_destroy(ini);
}

/* 300 idle connections (more than the listener's slots) that never send a
   byte: the oldest unproven ones make room, so a legitimate fetch gets
   through at once instead of waiting for sc_timeout_ms. */
static void test_idle_connections_evicted(void) {
    enum { N = 300 };
    nixl_agent_t *tgt = mk("target", 1, NULL, 20000), *ini = mk("initiator", 0, NULL, 20000);
    nixl_opt_args_t to_tgt;
    int fds[N], i, opened = 0;
    uint64_t t0, took;
    CHECK(tgt && ini);
    if (!tgt || !ini) goto out;
    to_tgt = peer_of(tgt);
    logged(""); /* start from an empty log */
    for (i = 0; i < N; i++) {
        fds[i] = raw_connect(to_tgt.port);
        opened += fds[i] >= 0;
    }
    /* past its slots the listener closes the oldest idle ones, and any idle
       one after 1 s (not sc_timeout_ms): the fetch does not wait 20 s */
    usleep(100000);
    t0 = nixl_now_us();
    CHECK_ST(nixl_fetch_remote_md(ini, "target", &to_tgt), NIXL_SUCCESS);
    CHECK(wait_loaded(ini, "target", 1));
    took = nixl_now_us() - t0;
    printf("FIGURE listener_fetch_with_idle idle_connections=%d fetch_ms=%.1f evicted_logged=%d (sc_timeout_ms=20000)\n",
           opened, took / 1000.0, seen("makes room"));
    for (i = 0; i < N; i++)
        if (fds[i] >= 0) close(fds[i]);
out:
    nixl_agent_destroy(tgt);
    nixl_agent_destroy(ini);
}

int main(int argc, char **argv) {
    nt_init(argc, argv);
    OPS = tb_make_ops("LOOP", NIXL_MEM_BIT(NIXL_DRAM));
    NT_RUN(test_send_fetch_invalidate);
    NT_RUN(test_hostile_frames);
    NT_RUN(test_hostile_frames_logged);
    NT_RUN(test_auth_token);
    NT_RUN(test_fifty_fetchers);
    NT_RUN(test_listener_config);
    NT_RUN(test_declared_payload_not_allocated);
    NT_RUN(test_idle_connections_evicted);
    return nt_finish();
}
