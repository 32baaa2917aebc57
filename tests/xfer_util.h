/* xfer_util.h — helpers shared by the transfer tests (any backend): agents,
   registration, metadata exchange in one process or over a socket between
   processes, waiting for requests and notifications with a deadline.
   Include after nixl.h (with its implementation) and nixl_test.h.
   One convention for every helper of the tests: a helper that wraps a nixl
   call returns its nixl_status_t (NIXL_SUCCESS = 0 is success); a helper
   that answers a question (did it work, did it arrive) returns int, 1 for
   yes; a helper that finds something returns it, 0/NULL for none. */
#ifndef NIXL_XFER_UTIL_H
#define NIXL_XFER_UTIL_H

#include <pthread.h>
#include <sys/socket.h>

#define XU_FN static __attribute__((unused))

/* no wait in a test may exceed this (µs) */
#ifndef XU_WAIT_US
#define XU_WAIT_US (60u * 1000000u)
#endif

static int xu_log_level = NIXL_LOG_WARN;
XU_FN void xu_log(void *user, int level, const char *msg) {
    (void)user;
    if (level <= xu_log_level) fprintf(stderr, "    [log %d] %s\n", level, msg);
}

/* The one agent maker of the tests: an agent from cfg (name, logger,
   token, threads, limits...) with one backend of `ops` and `params`.
   *be_out (may be NULL) gets the backend, *st_out (may be NULL) the status
   of nixl_create_backend; NULL when either step failed. */
XU_FN nixl_agent_t *xu_agent_cfg(const nixl_agent_config_t *cfg, const nixl_backend_ops_t *ops, const char *params,
                                 nixl_backend_t **be_out, nixl_status_t *st_out) {
    nixl_agent_t *a = NULL;
    nixl_backend_t *be = NULL;
    nixl_status_t st;
    if (nixl_agent_create(cfg, &a) != NIXL_SUCCESS) return NULL;
    st = nixl_create_backend(a, ops, params, &be);
    if (st_out) *st_out = st;
    if (st != NIXL_SUCCESS) {
        nixl_agent_destroy(a);
        return NULL;
    }
    if (be_out) *be_out = be;
    return a;
}

/* An agent logging to log_fn with one backend; token: its auth_token (NULL: none). */
XU_FN nixl_agent_t *xu_agent_tok(const char *name, const nixl_backend_ops_t *ops, const char *params,
                                 void (*log_fn)(void *, int, const char *), const char *token,
                                 nixl_backend_t **be_out) {
    nixl_agent_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = name;
    cfg.log_fn = log_fn;
    cfg.auth_token = token;
    return xu_agent_cfg(&cfg, ops, params, be_out, NULL);
}

XU_FN nixl_agent_t *xu_agent_log(const char *name, const nixl_backend_ops_t *ops, const char *params,
                                 void (*log_fn)(void *, int, const char *), nixl_backend_t **be_out) {
    return xu_agent_tok(name, ops, params, log_fn, NULL, be_out);
}

/* An agent whose log lines come with their ids (log_item_fn), one backend. */
XU_FN nixl_agent_t *xu_agent_item(const char *name, const nixl_backend_ops_t *ops, const char *params,
                                  void (*item_fn)(void *, int, nixl_log_item_t, const char *),
                                  nixl_backend_t **be_out) {
    nixl_agent_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = name;
    cfg.log_item_fn = item_fn;
    return xu_agent_cfg(&cfg, ops, params, be_out, NULL);
}

XU_FN nixl_agent_t *xu_agent(const char *name, const nixl_backend_ops_t *ops, const char *params) {
    return xu_agent_log(name, ops, params, xu_log, NULL);
}

#ifdef NIXL_VERBS_H
/* an RDMA device is present (else verbs tests skip) */
XU_FN int xu_have_rdma(void) {
    struct ibv_device **l;
    int n = 0;
    l = ibv_get_device_list(&n);
    if (l) ibv_free_device_list(l);
    return n > 0;
}
#endif

/* registers (or with dereg, deregisters) one region of `mem` on GPU `dev` */
XU_FN nixl_status_t xu_reg_mem(nixl_agent_t *a, nixl_mem_t mem, uintptr_t p, size_t n, uint64_t dev, int dereg) {
    nixl_desc_t d = {p, n, dev};
    nixl_dlist_t l = {mem, &d, 1};
    return dereg ? nixl_deregister_mem(a, &l, NULL) : nixl_register_mem(a, &l, NULL);
}

XU_FN nixl_status_t xu_reg(nixl_agent_t *a, void *p, size_t n) { return xu_reg_mem(a, NIXL_DRAM, (uintptr_t)p, n, 0, 0); }

XU_FN nixl_status_t xu_dereg(nixl_agent_t *a, void *p, size_t n) {
    return xu_reg_mem(a, NIXL_DRAM, (uintptr_t)p, n, 0, 1);
}

/* `to` loads `from`'s metadata (same process); the loaded name must be from's */
XU_FN int xu_load_md_of(nixl_agent_t *from, nixl_agent_t *to) {
    void *blob = NULL;
    size_t len = 0;
    char name[256];
    int ok = nixl_get_local_md(from, &blob, &len) == NIXL_SUCCESS &&
             nixl_load_remote_md(to, blob, len, name, sizeof name) == NIXL_SUCCESS &&
             strcmp(name, nixl_agent_name(from)) == 0;
    nixl_free_md(from, blob);
    return ok;
}

/* Both load each other's metadata: without an auth token a receiver takes
   notifications only from peers it can tie to their loaded metadata. */
XU_FN int xu_share_md(nixl_agent_t *from, nixl_agent_t *to) { return xu_load_md_of(from, to) && xu_load_md_of(to, from); }

XU_FN int xu_send_all(int fd, const void *p, size_t n) {
    const char *c = (const char *)p;
    while (n) {
        ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
        if (k <= 0) return 0;
        c += k;
        n -= (size_t)k;
    }
    return 1;
}

XU_FN int xu_recv_all(int fd, void *p, size_t n) {
    char *c = (char *)p;
    while (n) {
        ssize_t k = recv(fd, c, n, 0);
        if (k <= 0) return 0;
        c += k;
        n -= (size_t)k;
    }
    return 1;
}

/* between processes: send our metadata and a buffer address, load the
   peer's; returns the peer's address (0 on failure) */
XU_FN uintptr_t xu_swap_md(nixl_agent_t *a, int fd, uintptr_t mine) {
    void *blob = NULL;
    size_t len = 0, plen = 0;
    uintptr_t theirs = 0;
    unsigned char *peer;
    int ok;
    if (nixl_get_local_md(a, &blob, &len) != NIXL_SUCCESS) return 0;
    ok = xu_send_all(fd, &len, sizeof len) && xu_send_all(fd, blob, len) && xu_send_all(fd, &mine, sizeof mine);
    nixl_free_md(a, blob);
    if (!ok || !xu_recv_all(fd, &plen, sizeof plen) || plen > (64u << 20)) return 0;
    peer = (unsigned char *)malloc(plen);
    ok = peer && xu_recv_all(fd, peer, plen) && xu_recv_all(fd, &theirs, sizeof theirs) &&
         nixl_load_remote_md(a, peer, plen, NULL, 0) == NIXL_SUCCESS;
    free(peer);
    return ok ? theirs : 0;
}

/* An attacker's edit of a metadata blob: the entry of the region at `from`
   now names [addr, addr+len), any later copy of the address (a backend key
   that carries the region's base, as verbs' does) names addr too, and the
   CRC is recomputed so the parser takes it. Returns a malloc'ed copy, or
   NULL if no region entry matched. */
XU_FN unsigned char *xu_forge_md(const unsigned char *blob, size_t n, uint64_t from, uint64_t addr, uint64_t len) {
    unsigned char *f = (unsigned char *)malloc(n), key[8];
    size_t i;
    int k, entries = 0;
    uint32_t crc;
    if (!f || n < 24) {
        free(f);
        return NULL;
    }
    memcpy(f, blob, n);
    for (k = 0; k < 8; k++) key[k] = (unsigned char)(from >> (8 * k));
    for (i = 1; i + 16 <= n - 4; i++) {
        int entry;
        if (memcmp(f + i, key, 8) != 0) continue;
        entry = !entries && f[i - 1] == NIXL_DRAM; /* u8 mem, u64le addr, u64le len, ... */
        for (k = 0; k < 8; k++) {
            f[i + k] = (unsigned char)(addr >> (8 * k));
            if (entry) f[i + 8 + k] = (unsigned char)(len >> (8 * k));
        }
        entries += entry;
        i += 7;
    }
    crc = _nixl_crc32(f, n - 4);
    for (k = 0; k < 4; k++) f[n - 4 + k] = (unsigned char)(crc >> (8 * k));
    if (!entries) {
        free(f);
        return NULL;
    }
    return f;
}

/* a one-descriptor request between l (local) and r (at `remote`) */
XU_FN nixl_status_t xu_req(nixl_agent_t *a, const char *remote, nixl_xfer_op_t op, uintptr_t l, uintptr_t r,
                           size_t len, const char *notif, nixl_xfer_req_t **out) {
    nixl_desc_t ld = {l, len, 0}, rd = {r, len, 0};
    nixl_dlist_t ll = {NIXL_DRAM, &ld, 1}, rl = {NIXL_DRAM, &rd, 1};
    nixl_opt_args_t opt;
    memset(&opt, 0, sizeof opt);
    if (notif) {
        opt.notif = notif;
        opt.notif_len = strlen(notif);
        opt.has_notif = 1;
    }
    return nixl_create_xfer_req(a, op, &ll, &rl, remote, &opt, out);
}

/* status until final or the deadline, driving `other` (same process) too */
XU_FN nixl_status_t xu_wait(nixl_agent_t *a, nixl_xfer_req_t *r, nixl_agent_t *other, uint64_t limit_us) {
    uint64_t end = nixl_now_us() + (limit_us ? limit_us : XU_WAIT_US);
    nixl_status_t st;
    while ((st = nixl_get_xfer_status(a, r)) == NIXL_IN_PROG && nixl_now_us() < end)
        if (other) nixl_progress(other);
    return st;
}

/* notifications: counts them, checks "seq N" messages arrive in order, and
   (check_buf set) whether nt_fill(check_seed) data was all in place when
   each arrived */
typedef struct xu_notes {
    long n;
    int in_order;
    char last[4096]; /* the last one's bytes (NUL-terminated when shorter) */
    size_t last_len;
    char sender[256];
    const void *check_buf;
    size_t check_len;
    unsigned check_seed;
    int check_ok;
} xu_notes;

XU_FN void xu_on_note(void *user, const char *remote, const void *msg, size_t len) {
    xu_notes *n = (xu_notes *)user;
    char want[32];
    snprintf(want, sizeof want, "seq %ld", n->n);
    if (len != strlen(want) || memcmp(msg, want, len) != 0) n->in_order = 0;
    n->last_len = len < sizeof n->last ? len : sizeof n->last;
    memcpy(n->last, msg, n->last_len);
    if (n->last_len < sizeof n->last) n->last[n->last_len] = 0;
    snprintf(n->sender, sizeof n->sender, "%s", remote);
    n->n++;
    if (n->check_buf) n->check_ok = nt_verify(n->check_buf, n->check_len, n->check_seed);
}

XU_FN void xu_notes_init(xu_notes *n) {
    memset(n, 0, sizeof *n);
    n->in_order = 1;
}

XU_FN int xu_wait_notes(nixl_agent_t *a, xu_notes *n, long want, nixl_agent_t *other, uint64_t limit_us) {
    uint64_t end = nixl_now_us() + (limit_us ? limit_us : XU_WAIT_US);
    while (n->n < want && nixl_now_us() < end) {
        nixl_get_notifs(a, xu_on_note, n);
        if (other) nixl_progress(other);
    }
    return n->n >= want;
}

#endif
