/* test_metadata.c — the metadata side channel: listener thread,
   send/fetch/invalidate, hostile frames, auth token, many peers at once.
   Agents use the in-process test backend; transfers after the exchange
   check the bytes. */
#define NIXL_IMPLEMENTATION
#include "../nixl.h"
#include "nixl_test.h"
#include "test_backend.h"
#include "log_capture.h"
#include "xfer_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

static nixl_backend_ops_t OPS;


/* The tests' agent config (a test may change a field before mk_from). */
static nixl_agent_config_t mk_cfg(const char *name, int listen, const char *token, int timeout_ms) {
    nixl_agent_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = name;
    cfg.listen_thread = listen;
    cfg.listen_addr = listen ? "127.0.0.1" : NULL;
    cfg.auth_token = token;
    cfg.sc_timeout_ms = timeout_ms;
    cfg.log_item_fn = capture_log_item;
    return cfg;
}

/* An agent with the in-process test backend. */
static nixl_agent_t *mk_from(const nixl_agent_config_t *cfg) { return xu_agent_cfg(cfg, &OPS, NULL, NULL, NULL); }

static nixl_agent_t *mk(const char *name, int listen, const char *token, int timeout_ms) {
    nixl_agent_config_t cfg = mk_cfg(name, listen, token, timeout_ms);
    return mk_from(&cfg);
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

static void send_raw(int fd, const void *p, size_t n) {
    if (n && send(fd, p, n, MSG_NOSIGNAL) < 0) perror("send");
}

/* raw TCP client for hostile frames, from source address src (any
   127.x.y.z reaches the loopback listener; NULL = the kernel's choice) */
static int raw_connect_from(const char *src, uint16_t port) {
    struct sockaddr_in sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (src) {
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        inet_pton(AF_INET, src, &sa.sin_addr);
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
            close(fd);
            return -1;
        }
    }
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

static int raw_connect(uint16_t port) { return raw_connect_from(NULL, port); }

static int recv_all(int fd, void *p, size_t n) {
    unsigned char *b = (unsigned char *)p;
    while (n) {
        ssize_t k = recv(fd, b, n, 0);
        if (k <= 0) return -1;
        b += k;
        n -= (size_t)k;
    }
    return 0;
}

/* A raw client's HELLO and the listener's CHALLENGE (not verified: an
   attacker does not care): n gets both nonces. The fd, or -1. */
static int raw_session(const char *src, uint16_t port, _nixl_sc_nonces *n) {
    unsigned char h[NIXL_SC_HDR], buf[NIXL_SC_NONCE + 2 * NIXL_MAC_LEN];
    unsigned cmd = 0;
    size_t mac = 0, len = 0;
    int fd = raw_connect_from(src, port);
    if (fd < 0) return -1;
    memset(n, 0, sizeof *n);
    nt_fill(n->c, sizeof n->c, (unsigned)port);
    _nixl_sc_put_header(h, NIXL_SC_HELLO, 0, NIXL_SC_NONCE);
    send_raw(fd, h, sizeof h);
    send_raw(fd, n->c, sizeof n->c);
    if (recv_all(fd, h, sizeof h) != 0 || _nixl_sc_parse_header(h, &cmd, &mac, &len) || cmd != NIXL_SC_CHALLENGE ||
        len != NIXL_SC_NONCE || recv_all(fd, buf, 2 * mac + len) != 0) {
        close(fd);
        return -1;
    }
    memcpy(n->s, buf + mac, NIXL_SC_NONCE);
    return fd;
}

/* Sends one request framed as agent `as` would (its token, if any, keys the
   MACs) and reads the reply: its status, or REMOTE_DISCONNECT when the
   listener dropped the connection. */
static nixl_status_t raw_request(nixl_agent_t *as, int fd, _nixl_sc_nonces *n, unsigned cmd, const void *p,
                                 size_t len) {
    unsigned char *rep = NULL;
    nixl_status_t st = NIXL_ERR_REMOTE_DISCONNECT;
    size_t rlen = 0;
    if (_nixl_sc_send_frame(as, fd, n, cmd, p, len, nixl_now_us() + 20000000u) == NIXL_SUCCESS &&
        !_nixl_sc_recv_frame(as, fd, n, NIXL_SC_REPLY, &rep, &rlen, nixl_now_us() + 20000000u) && rlen >= 4)
        st = (nixl_status_t)(int32_t)((uint32_t)rep[0] | (uint32_t)rep[1] << 8 | (uint32_t)rep[2] << 16 |
                                      (uint32_t)rep[3] << 24);
    free(rep);
    close(fd);
    return st;
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
    CHECK(logged_item(NIXL_LOGITEM_FETCH_WRONG_NAME));
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
    CHECK(logged_item(NIXL_LOGITEM_SC_BAD_MAGIC));
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
    _nixl_sc_nonces n;
    int fd;
    _nixl_sc_put_header(hdr, NIXL_SC_SEND_MD, 0, 1000);
    fd = raw_connect(port);
    send_raw(fd, hdr, sizeof hdr);
    usleep(150000);
    close(fd);
    CHECK(logged_item(NIXL_LOGITEM_SC_NO_HELLO));
    fd = raw_session(NULL, port, &n);
    CHECK(fd >= 0);
    send_raw(fd, hdr, sizeof hdr);
    close(fd);
    usleep(150000);
    CHECK(logged_item(NIXL_LOGITEM_SC_CLOSED_MID_FRAME));
    _nixl_sc_put_header(hdr, NIXL_SC_SEND_MD, 0, 0);
    hdr[12] = hdr[13] = hdr[14] = hdr[15] = 0xff;
    fd = raw_connect(port);
    send_raw(fd, hdr, sizeof hdr);
    usleep(150000);
    close(fd);
    CHECK(logged_item(NIXL_LOGITEM_SC_PAYLOAD_LIMIT));
    fd = raw_connect(port);
    send_raw(fd, hdr, 5);
    usleep(600000);
    close(fd);
    CHECK(logged_item(NIXL_LOGITEM_SC_TOO_SLOW));
    nixl_agent_destroy(tgt);
}

static void test_auth_token(void) {
    nixl_agent_t *tgt = mk("target", 1, "s3cret", 0);
    nixl_agent_t *good = mk("friend", 0, "s3cret", 0), *bad = mk("stranger", 0, "guess", 0);
    nixl_agent_t *none = mk("anonymous", 0, NULL, 0);
    nixl_opt_args_t to_tgt = peer_of(tgt);
    CHECK_ST(nixl_send_local_md(bad, &to_tgt), NIXL_ERR_REMOTE_DISCONNECT);
    CHECK(logged_item(NIXL_LOGITEM_SC_PEER_OTHER_TOKEN));
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
    cfg.log_item_fn = capture_log_item;
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
    CHECK(logged_item(NIXL_LOGITEM_SC_CANNOT_LISTEN));
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
        _nixl_sc_nonces n;
        fds[i] = raw_session(NULL, to_tgt.port, &n);
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
    lc_reset(); /* start from an empty log */
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
           opened, took / 1000.0, seen_item(NIXL_LOGITEM_SC_MAKES_ROOM));
    for (i = 0; i < N; i++)
        if (fds[i] >= 0) close(fds[i]);
out:
    nixl_agent_destroy(tgt);
    nixl_agent_destroy(ini);
}

/* The token never crosses the wire, and a request recorded on one
   connection is refused on the next (the listener's nonce differs). */
static void test_token_not_sent_and_no_replay(void) {
    static const char tok[] = "s3cret-never-on-the-wire";
    nixl_agent_t *tgt = mk("target", 1, tok, 2000), *good = mk("friend", 0, tok, 0);
    void *blob = NULL;
    size_t len = 0, flen = 0;
    unsigned char *frame = NULL;
    _nixl_sc_nonces n1, n2;
    int fd;
    CHECK(tgt && good);
    if (!tgt || !good) goto out;
    CHECK_ST(nixl_get_local_md(good, &blob, &len), NIXL_SUCCESS);
    fd = raw_session(NULL, nixl_agent_listen_port(tgt), &n1);
    CHECK(fd >= 0);
    frame = _nixl_sc_frame(good, _NIXL_SC_C2S, &n1, NIXL_SC_SEND_MD, blob, len, &flen);
    CHECK(frame && !memmem(frame, flen, tok, strlen(tok)));
    CHECK(!memmem(n1.c, sizeof n1.c, tok, strlen(tok)));
    send_raw(fd, frame, flen); /* the genuine request, once: accepted */
    {
        unsigned char h[NIXL_SC_HDR];
        CHECK(recv_all(fd, h, sizeof h) == 0 && h[6] == NIXL_SC_REPLY);
    }
    close(fd);
    CHECK(wait_loaded(tgt, "friend", 1));
    CHECK_ST(nixl_invalidate_remote_md(tgt, "friend"), NIXL_SUCCESS);
    lc_reset();
    /* the same bytes on a new connection: refused before the payload */
    fd = raw_session(NULL, nixl_agent_listen_port(tgt), &n2);
    CHECK(fd >= 0 && memcmp(n1.s, n2.s, sizeof n1.s) != 0);
    send_raw(fd, frame, flen);
    usleep(200000);
    close(fd);
    CHECK(logged_item(NIXL_LOGITEM_SC_WRONG_TOKEN));
    CHECK_ST(nixl_check_remote_md(tgt, "friend", NULL), NIXL_ERR_NOT_FOUND);
    /* the honest peer still gets through */
    {
        nixl_opt_args_t to = peer_of(tgt);
        CHECK_ST(nixl_send_local_md(good, &to), NIXL_SUCCESS);
        CHECK_ST(nixl_check_remote_md(tgt, "friend", NULL), NIXL_SUCCESS);
    }
out:
    free(frame);
    if (good) nixl_free_md(good, blob);
    nixl_agent_destroy(tgt);
    nixl_agent_destroy(good);
}

/* The attack: another agent of the same name pushes its metadata and
   invalidates the real one's. */
static void hijack_attempt(nixl_agent_t *tgt, nixl_agent_t *impostor, const char *src) {
    void *blob = NULL;
    size_t len = 0;
    _nixl_sc_nonces n;
    uint16_t port = nixl_agent_listen_port(tgt);
    int fd;
    CHECK_ST(nixl_get_local_md(impostor, &blob, &len), NIXL_SUCCESS);
    fd = raw_session(src, port, &n);
    CHECK(fd >= 0);
    CHECKF(raw_request(impostor, fd, &n, NIXL_SC_SEND_MD, blob, len) != NIXL_SUCCESS, "push from %s accepted", src);
    fd = raw_session(src, port, &n);
    CHECK(fd >= 0);
    CHECKF(raw_request(impostor, fd, &n, NIXL_SC_INVALIDATE, "prefill-0", 9) != NIXL_SUCCESS,
           "invalidation from %s accepted", src);
    nixl_free_md(impostor, blob);
}

/* Name hijack over the side channel, without and with a secret: the
   impostor's push and invalidation fail, the real prefill-0 keeps working
   (bytes checked) and can invalidate itself. */
static void test_name_hijack(void) {
    int with_token;
    for (with_token = 0; with_token < 2; with_token++) {
        const char *tok = with_token ? "k3y" : NULL;
        nixl_agent_t *tgt = mk("decode", 1, tok, 2000), *real = mk("prefill-0", 0, tok, 0);
        nixl_agent_t *fake = mk("prefill-0", 0, NULL, 0), *wrong = mk("prefill-0", 0, "guess", 0);
        unsigned char src[512], dst[512], other[64];
        nixl_opt_args_t to;
        CHECK(tgt && real && fake && wrong);
        if (!tgt || !real || !fake || !wrong) break;
        to = peer_of(tgt);
        nt_fill(src, sizeof src, 7);
        CHECK(reg(tgt, src, sizeof src) && reg(real, dst, sizeof dst) && reg(fake, other, sizeof other) &&
              reg(wrong, other, sizeof other));
        if (with_token) { /* without the secret, not even first */
            hijack_attempt(tgt, fake, "127.0.0.3");
            hijack_attempt(tgt, wrong, "127.0.0.3");
            CHECK(logged_item(NIXL_LOGITEM_SC_WRONG_TOKEN) || seen_item(NIXL_LOGITEM_SC_PEER_NEEDS_TOKEN) || seen_item(NIXL_LOGITEM_SC_NO_AUTH));
            CHECK_ST(nixl_check_remote_md(tgt, "prefill-0", NULL), NIXL_ERR_NOT_FOUND);
        }
        CHECK_ST(nixl_send_local_md(real, &to), NIXL_SUCCESS);
        hijack_attempt(tgt, fake, "127.0.0.3");
        if (!with_token) CHECK(logged_item(NIXL_LOGITEM_MD_NAME_OWNED));
        CHECK(transfer_ok(tgt, real, "prefill-0", src, dst, sizeof src));
        CHECK_ST(nixl_invalidate_local_md(real, &to), NIXL_SUCCESS);
        CHECK_ST(nixl_check_remote_md(tgt, "prefill-0", NULL), NIXL_ERR_NOT_FOUND);
        nixl_agent_destroy(tgt);
        nixl_agent_destroy(real);
        nixl_agent_destroy(fake);
        nixl_agent_destroy(wrong);
    }
}

/* Without a secret the listener binds loopback unless told otherwise; with
   one, every interface. */
static void test_default_bind(void) {
    int with_token;
    for (with_token = 0; with_token < 2; with_token++) {
        nixl_agent_config_t cfg;
        nixl_agent_t *a = NULL;
        struct sockaddr_in sa;
        socklen_t sl = sizeof sa;
        memset(&cfg, 0, sizeof cfg);
        cfg.name = "binder";
        cfg.listen_thread = 1;
        cfg.auth_token = with_token ? "t" : NULL;
        cfg.log_item_fn = capture_log_item;
        CHECK_ST(nixl_agent_create(&cfg, &a), NIXL_SUCCESS);
        if (!a) continue;
        CHECK(getsockname(a->sc_listen_fd, (struct sockaddr *)&sa, &sl) == 0);
        CHECKF(ntohl(sa.sin_addr.s_addr) == (with_token ? INADDR_ANY : INADDR_LOOPBACK), "bound 0x%x with%s token",
               ntohl(sa.sin_addr.s_addr), with_token ? "" : "out");
        nixl_agent_destroy(a);
    }
}

/* Idle connections from one address take at most listen_conns_per_addr
   slots: the oldest unproven of that address make room, and a peer from
   another address is never locked out. */
static void test_per_address_limit(void) {
    enum { N = 12 };
    nixl_agent_config_t cfg = mk_cfg("target", 1, NULL, 20000);
    nixl_agent_t *tgt, *ini = mk("initiator", 0, NULL, 0);
    nixl_opt_args_t to;
    int fds[N], i;
    cfg.listen_conns_per_addr = 4;
    tgt = mk_from(&cfg);
    CHECK(tgt && ini);
    if (!tgt || !ini) goto out;
    lc_reset();
    for (i = 0; i < N; i++) fds[i] = raw_connect_from("127.0.0.4", nixl_agent_listen_port(tgt));
    usleep(200000);
    CHECK(seen_item(NIXL_LOGITEM_SC_ADDR_LIMIT));
    to = peer_of(tgt);
    CHECK_ST(nixl_fetch_remote_md(ini, "target", &to), NIXL_SUCCESS);
    CHECK(wait_loaded(ini, "target", 1));
    for (i = 0; i < N; i++)
        if (fds[i] >= 0) close(fds[i]);
out:
    nixl_agent_destroy(tgt);
    nixl_agent_destroy(ini);
}

/* A blob naming nreg 4 KiB regions of agent `name` (one LOOP key each, no
   public data), as a hostile peer would craft it. malloc'ed. */
static unsigned char *hostile_blob(const char *name, size_t nreg, size_t *len) {
    size_t nl = strlen(name), total = 4 + 2 + 2 + 4 + 1 + nl + 1 + (1 + 4 + 4) + 4 + nreg * 29 + 4, k;
    unsigned char *b = (unsigned char *)malloc(total);
    _nixl_wr w;
    if (!b) return NULL;
    w.p = b;
    w.pos = 0;
    _nixl_wle(&w, NIXL_MD_MAGIC, 4);
    _nixl_wle(&w, NIXL_MD_VERSION, 2);
    _nixl_wle(&w, 0, 2);
    _nixl_wle(&w, total, 4);
    _nixl_w8(&w, nl);
    _nixl_wbytes(&w, name, nl);
    _nixl_w8(&w, 1);
    _nixl_w8(&w, 4);
    _nixl_wbytes(&w, "LOOP", 4);
    _nixl_wle(&w, 0, 4);
    _nixl_wle(&w, nreg, 4);
    for (k = 0; k < nreg; k++) {
        _nixl_w8(&w, NIXL_DRAM);
        _nixl_wle(&w, 0x100000u + (uint64_t)k * 4096u, 8);
        _nixl_wle(&w, 4096, 8);
        _nixl_wle(&w, 0, 8);
        _nixl_w8(&w, 1);
        _nixl_w8(&w, 0);
        _nixl_wle(&w, 0, 2);
    }
    _nixl_wle(&w, _nixl_crc32(b, total - 4), 4);
    *len = total;
    return b;
}

typedef struct prog_probe {
    nixl_agent_t *a;
    int stop;
    uint64_t longest_us;
} prog_probe;

static void *progress_probe(void *p) {
    prog_probe *pp = (prog_probe *)p;
    while (!__atomic_load_n(&pp->stop, __ATOMIC_ACQUIRE)) {
        uint64_t t0 = nixl_now_us(), d;
        nixl_progress(pp->a);
        d = nixl_now_us() - t0;
        if (d > pp->longest_us) pp->longest_us = d;
        usleep(100);
    }
    return NULL;
}

/* One 64 MiB SEND_MD naming 2.4 M regions: refused by remote_regions_max
   before anything is allocated for them, decoded outside the agent lock
   (progress keeps running), and fresh names stop at remote_md_bytes. */
static void test_hostile_md_push(void) {
    nixl_agent_config_t cfg = mk_cfg("target", 1, NULL, 20000);
    nixl_agent_t *tgt = NULL, *att = mk("attacker", 0, NULL, 0);
    prog_probe pp;
    pthread_t th;
    size_t len = 0, i;
    unsigned char *blob = hostile_blob("mallory", (NIXL_SC_MAX_PAYLOAD - 4096) / 29, &len);
    _nixl_sc_nonces n;
    long before, after;
    int fd, loaded = 0;
    cfg.remote_md_bytes = 16u << 20;
    tgt = mk_from(&cfg);
    CHECK(tgt != NULL);
    if (!tgt || !att || !blob) goto out;
    memset(&pp, 0, sizeof pp);
    pp.a = tgt;
    pthread_create(&th, NULL, progress_probe, &pp);
    before = nt_rss_kib();
    fd = raw_session(NULL, nixl_agent_listen_port(tgt), &n);
    CHECK(fd >= 0);
    CHECK_ST(raw_request(att, fd, &n, NIXL_SC_SEND_MD, blob, len), NIXL_ERR_NOT_ALLOWED);
    after = nt_rss_kib();
    __atomic_store_n(&pp.stop, 1, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    printf("FIGURE hostile_md_push blob_mib=%.1f regions=%zu rss_after_mib=%.1f rss_growth_mib=%.1f "
           "longest_progress_ms=%.2f\n", len / 1048576.0, (len - 4096) / 29, after / 1024.0, (after - before) / 1024.0,
           pp.longest_us / 1000.0);
    CHECK(logged_item(NIXL_LOGITEM_MD_REGIONS_LIMIT));
    CHECK_ST(nixl_check_remote_md(tgt, "mallory", NULL), NIXL_ERR_NOT_FOUND);
#if defined(__SANITIZE_ADDRESS__)
    (void)before; /* ASan's quarantine keeps what was freed: resident memory says nothing here */
#else
    CHECKF(after - before < 200 * 1024, "memory grew %.1f MiB", (after - before) / 1024.0);
#endif
    /* fresh names: 20k regions each, until remote_md_bytes (16 MiB here) */
    for (i = 0; i < 8; i++) {
        char name[32];
        unsigned char *bl;
        size_t bl_len = 0;
        snprintf(name, sizeof name, "fresh-%zu", i);
        bl = hostile_blob(name, 20000, &bl_len);
        if (bl && nixl_load_remote_md(tgt, bl, bl_len, NULL, 0) == NIXL_SUCCESS) loaded++;
        free(bl);
    }
    CHECKF(loaded >= 1 && loaded < 8, "%d of 8 fresh names loaded under remote_md_bytes", loaded);
    CHECK(logged_item(NIXL_LOGITEM_MD_BYTES_LIMIT));
    {   /* an honest peer still loads once a name goes */
        unsigned char mem[256];
        nixl_opt_args_t to = peer_of(tgt);
        CHECK_ST(nixl_invalidate_remote_md(tgt, "fresh-0"), NIXL_SUCCESS);
        CHECK(reg(att, mem, sizeof mem));
        CHECK_ST(nixl_send_local_md(att, &to), NIXL_SUCCESS);
        CHECK_ST(nixl_check_remote_md(tgt, "attacker", NULL), NIXL_SUCCESS);
    }
out:
    free(blob);
    nixl_agent_destroy(tgt);
    nixl_agent_destroy(att);
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
    NT_RUN(test_token_not_sent_and_no_replay);
    NT_RUN(test_name_hijack);
    NT_RUN(test_default_bind);
    NT_RUN(test_per_address_limit);
    NT_RUN(test_hostile_md_push);
    return nt_finish();
}
