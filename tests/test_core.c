/* test_core.c — unit tests of the core (nixl.h) over the in-process test
   backend (tests/test_backend.h). Every transfer checks the bytes. */
#define NIXL_IMPLEMENTATION
#include "../nixl.h"
#include "log_capture.h"
#include "nixl_test.h"
#include "test_backend.h"

#include <pthread.h>

static nixl_backend_ops_t OPS_A, OPS_B, OPS_V;

/* ---- counting allocator ------------------------------------------------- */
static long n_alloc, n_free;
static long n_try, fail_at; /* fail_at > 0: the fail_at-th attempt from now on returns NULL */
static void *count_alloc(void *u, size_t n) {
    (void)u;
    if (fail_at && __atomic_add_fetch(&n_try, 1, __ATOMIC_RELAXED) == fail_at) return NULL;
    __atomic_add_fetch(&n_alloc, 1, __ATOMIC_RELAXED);
    return malloc(n);
}

/* from now on, the nth allocation fails (0: none) */
static void fail_nth_alloc(long nth) {
    n_try = 0;
    fail_at = nth;
}
static void count_free(void *u, void *p) {
    (void)u;
    __atomic_add_fetch(&n_free, 1, __ATOMIC_RELAXED);
    free(p);
}

static nixl_agent_t *mk_agent(const char *name) {
    nixl_agent_config_t cfg;
    nixl_agent_t *a = NULL;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = name;
    cfg.log_item_fn = capture_log_item;
    cfg.alloc_fn = count_alloc;
    cfg.free_fn = count_free;
    cfg.capture_telemetry = 1;
    if (nixl_agent_create(&cfg, &a) != NIXL_SUCCESS) return NULL;
    return a;
}

static nixl_backend_t *mk_backend(nixl_agent_t *a, const nixl_backend_ops_t *ops, const char *params) {
    nixl_backend_t *b = NULL;
    nixl_create_backend(a, ops, params, &b);
    return b;
}

static nixl_status_t reg(nixl_agent_t *a, void *p, size_t len) {
    nixl_desc_t d = {(uintptr_t)p, len, 0};
    nixl_dlist_t l = {NIXL_DRAM, &d, 1};
    return nixl_register_mem(a, &l, NULL);
}
static nixl_status_t dereg(nixl_agent_t *a, void *p, size_t len) {
    nixl_desc_t d = {(uintptr_t)p, len, 0};
    nixl_dlist_t l = {NIXL_DRAM, &d, 1};
    return nixl_deregister_mem(a, &l, NULL);
}

/* loads `from`'s full metadata into `into` */
static nixl_status_t exchange(nixl_agent_t *from, nixl_agent_t *into) {
    void *blob = NULL;
    size_t len = 0;
    char name[256];
    nixl_status_t st = nixl_get_local_md(from, &blob, &len);
    if (st != NIXL_SUCCESS) return st;
    st = nixl_load_remote_md(into, blob, len, name, sizeof name);
    nixl_free_md(from, blob);
    return st;
}

/* runs both agents' progress until req is final */
static nixl_status_t wait_req(nixl_agent_t *a, nixl_agent_t *peer, nixl_xfer_req_t *r) {
    nixl_status_t st = NIXL_IN_PROG;
    int i;
    for (i = 0; i < 100000 && st == NIXL_IN_PROG; i++) {
        st = nixl_get_xfer_status(a, r);
        if (peer) nixl_progress(peer);
    }
    return st;
}

typedef struct notes {
    int n;
    char sender[64][64];
    char msg[64][128];
    size_t len[64];
} notes;
static void note_cb(void *user, const char *remote, const void *msg, size_t len) {
    notes *ns = (notes *)user;
    if (ns->n < 64) {
        snprintf(ns->sender[ns->n], 64, "%s", remote);
        memcpy(ns->msg[ns->n], msg, len < 127 ? len : 127);
        ns->msg[ns->n][len < 127 ? len : 127] = 0;
        ns->len[ns->n] = len;
    }
    ns->n++;
}

/* a pair of agents "init" and "target", each with backend A, md loaded both ways */
typedef struct pair {
    nixl_agent_t *init, *target;
    nixl_backend_t *bi, *bt;
    unsigned char *src, *dst;
    size_t len;
} pair;

static int pair_up(pair *p, size_t len, const char *params) {
    memset(p, 0, sizeof *p);
    p->init = mk_agent("init");
    p->target = mk_agent("target");
    if (!p->init || !p->target) return 0;
    p->bi = mk_backend(p->init, &OPS_A, params);
    p->bt = mk_backend(p->target, &OPS_A, params);
    p->len = len;
    p->src = (unsigned char *)malloc(len);
    p->dst = (unsigned char *)calloc(1, len);
    if (!p->bi || !p->bt || !p->src || !p->dst) return 0;
    nt_fill(p->src, len, 7);
    if (reg(p->init, p->src, len) || reg(p->target, p->dst, len)) return 0;
    return exchange(p->target, p->init) == NIXL_SUCCESS && exchange(p->init, p->target) == NIXL_SUCCESS;
}

static void pair_down(pair *p) {
    nixl_agent_destroy(p->init);
    nixl_agent_destroy(p->target);
    free(p->src);
    free(p->dst);
}

/* ======================================================================== */

static void test_status_strings(void) {
    CHECK(!strcmp(nixl_status_str(NIXL_SUCCESS), "NIXL_SUCCESS"));
    CHECK(!strcmp(nixl_status_str(NIXL_ERR_NOT_FOUND), "NIXL_ERR_NOT_FOUND"));
    CHECK(!strcmp(nixl_status_str(NIXL_ERR_NO_TELEMETRY), "NIXL_ERR_NO_TELEMETRY"));
    CHECK(!strcmp(nixl_status_str((nixl_status_t)-99), "NIXL_ERR_?"));
    CHECK(NIXL_IN_PROG == 1 && NIXL_ERR_REMOTE_DISCONNECT == -10 && NIXL_ERR_NO_TELEMETRY == -12);
}

/* In a build without etcd, $NIXL_ETCD_ENDPOINTS (meant for deployments)
   is ignored with one warning per process; endpoints the application sets
   itself are refused (NOT_SUPPORTED), saying why. */
static void test_etcd_env_without_etcd(void) {
    nixl_agent_config_t cfg;
    nixl_agent_t *a = NULL, *b = NULL;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "no-etcd";
    cfg.log_item_fn = capture_log_item;
    lc_reset();
    setenv("NIXL_ETCD_ENDPOINTS", "http://127.0.0.1:1", 1);
    CHECK_ST(nixl_agent_create(&cfg, &a), NIXL_SUCCESS);
    CHECK(logged_item(NIXL_LOGITEM_ETCD_NOT_BUILT));
    CHECK_ST(nixl_agent_create(&cfg, &b), NIXL_SUCCESS);
    CHECK(!seen_item(NIXL_LOGITEM_ETCD_NOT_BUILT)); /* once per process */
    unsetenv("NIXL_ETCD_ENDPOINTS");
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
    cfg.etcd_endpoints = "http://127.0.0.1:1";
    a = NULL;
    CHECK_ST(nixl_agent_create(&cfg, &a), NIXL_ERR_NOT_SUPPORTED);
    CHECK(a == NULL);
    CHECK(logged_item(NIXL_LOGITEM_ETCD_NOT_COMPILED));
}

static void test_agent_create(void) {
    nixl_agent_config_t cfg;
    nixl_agent_t *a = NULL;
    char longname[300];
    memset(&cfg, 0, sizeof cfg);
    cfg.log_item_fn = capture_log_item;
    CHECK_ST(nixl_agent_create(NULL, &a), NIXL_ERR_INVALID_PARAM);
    CHECK_ST(nixl_agent_create(&cfg, &a), NIXL_ERR_INVALID_PARAM);
    CHECK(logged_item(NIXL_LOGITEM_AGENT_NAME_REQUIRED));
    cfg.name = "";
    CHECK_ST(nixl_agent_create(&cfg, &a), NIXL_ERR_INVALID_PARAM);
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    cfg.name = longname;
    CHECK_ST(nixl_agent_create(&cfg, &a), NIXL_ERR_INVALID_PARAM);
    cfg.name = "ok";
    cfg.alloc_fn = count_alloc;
    CHECK_ST(nixl_agent_create(&cfg, &a), NIXL_ERR_INVALID_PARAM);
    cfg.alloc_fn = NULL;
    CHECK_ST(nixl_agent_create(&cfg, &a), NIXL_SUCCESS);
    CHECK(a && !strcmp(nixl_agent_name(a), "ok"));
    CHECK(nixl_agent_listen_port(a) == 0);
    nixl_agent_destroy(a);
    nixl_agent_destroy(NULL);
}

static void test_backend_params(void) {
    nixl_agent_t *a = mk_agent("params");
    nixl_backend_t *b = NULL;
    CHECK_ST(nixl_create_backend(a, &OPS_A, "bogus=1", &b), NIXL_ERR_INVALID_PARAM);
    CHECK(logged_item(NIXL_LOGITEM_PARAM_UNKNOWN_KEY));
    CHECK_ST(nixl_create_backend(a, &OPS_A, "inline=7", &b), NIXL_ERR_INVALID_PARAM);
    CHECK(logged_item(NIXL_LOGITEM_PARAM_BAD_VALUE));
    CHECK_ST(nixl_create_backend(a, &OPS_A, "inline=abc", &b), NIXL_ERR_INVALID_PARAM);
    CHECK_ST(nixl_create_backend(a, &OPS_A, "inline", &b), NIXL_ERR_INVALID_PARAM);
    CHECK_ST(nixl_create_backend(a, &OPS_A, "inline=1,inline=0", &b), NIXL_ERR_INVALID_PARAM);
    CHECK_ST(nixl_create_backend(a, &OPS_A, "inline=1,nocopy=0", &b), NIXL_SUCCESS);
    CHECK(b && !strcmp(nixl_backend_name(b), "LOOP_A"));
    CHECK_ST(nixl_create_backend(a, &OPS_A, NULL, &b), NIXL_ERR_INVALID_PARAM); /* twice */
    {
        nixl_backend_ops_t broken = OPS_B;
        broken.abi = 99;
        CHECK_ST(nixl_create_backend(a, &broken, NULL, &b), NIXL_ERR_INVALID_PARAM);
    }
    nixl_agent_destroy(a);
}

static void test_register_rules(void) {
    nixl_agent_t *a = mk_agent("reg");
    unsigned char *buf = (unsigned char *)malloc(8192);
    nixl_desc_t d[3];
    nixl_dlist_t l = {NIXL_DRAM, d, 1};
    mk_backend(a, &OPS_A, NULL);
    d[0].addr = 0;
    d[0].len = 16;
    d[0].dev_id = 0;
    CHECK_ST(nixl_register_mem(a, &l, NULL), NIXL_ERR_INVALID_PARAM); /* NULL */
    d[0].addr = (uintptr_t)buf;
    d[0].len = 0;
    CHECK_ST(nixl_register_mem(a, &l, NULL), NIXL_ERR_INVALID_PARAM); /* zero length */
    d[0].addr = UINTPTR_MAX - 10;
    d[0].len = 100;
    CHECK_ST(nixl_register_mem(a, &l, NULL), NIXL_ERR_INVALID_PARAM); /* wraps */
    CHECK(logged_item(NIXL_LOGITEM_DESC_WRAPS));
    CHECK_ST(reg(a, buf, 4096), NIXL_SUCCESS);
    CHECK_ST(reg(a, buf, 4096), NIXL_ERR_INVALID_PARAM); /* second registration */
    CHECK(logged_item(NIXL_LOGITEM_MEM_REGISTERED_ALREADY));
    CHECK_ST(reg(a, buf + 1024, 4096), NIXL_SUCCESS); /* overlap allowed */
    /* a list with a duplicate inside is refused whole */
    d[0].addr = d[1].addr = (uintptr_t)buf + 6000;
    d[0].len = d[1].len = 100;
    d[0].dev_id = d[1].dev_id = 0;
    l.count = 2;
    CHECK_ST(nixl_register_mem(a, &l, NULL), NIXL_ERR_INVALID_PARAM);
    /* no backend takes VRAM: NOT_SUPPORTED, and nothing of the list stays */
    l.mem = NIXL_VRAM;
    l.count = 1;
    CHECK_ST(nixl_register_mem(a, &l, NULL), NIXL_ERR_NOT_SUPPORTED);
    /* exact-match deregistration */
    CHECK_ST(dereg(a, buf, 4095), NIXL_ERR_NOT_FOUND);
    CHECK_ST(dereg(a, buf, 4096), NIXL_SUCCESS);
    CHECK_ST(dereg(a, buf, 4096), NIXL_ERR_NOT_FOUND);
    CHECK_ST(dereg(a, buf + 1024, 4096), NIXL_SUCCESS);
    nixl_agent_destroy(a);
    free(buf);
}

static void test_register_all_or_nothing(void) {
    nixl_agent_t *a = mk_agent("aon");
    unsigned char buf[256];
    nixl_desc_t d[2] = {{(uintptr_t)buf, 64, 0}, {(uintptr_t)buf + 64, 0, 0}};
    nixl_dlist_t l = {NIXL_DRAM, d, 2};
    mk_backend(a, &OPS_A, NULL);
    CHECK_ST(nixl_register_mem(a, &l, NULL), NIXL_ERR_INVALID_PARAM);
    CHECK_ST(dereg(a, buf, 64), NIXL_ERR_NOT_FOUND); /* the good one did not stay */
    /* a backend without the memory type is skipped; the other takes it */
    {
        nixl_agent_t *b = mk_agent("mixed");
        nixl_desc_t v = {(uintptr_t)buf, 64, 0};
        nixl_dlist_t vl = {NIXL_VRAM, &v, 1};
        mk_backend(b, &OPS_A, NULL);
        mk_backend(b, &OPS_V, NULL);
        CHECK_ST(nixl_register_mem(b, &vl, NULL), NIXL_SUCCESS);
        CHECK_ST(nixl_deregister_mem(b, &vl, NULL), NIXL_SUCCESS);
        nixl_agent_destroy(b);
    }
    nixl_agent_destroy(a);
}

static void test_metadata_roundtrip(void) {
    nixl_agent_t *a = mk_agent("alpha"), *b = mk_agent("beta");
    unsigned char buf[4096];
    void *blob = NULL;
    size_t len = 0;
    char name[64] = "", tiny[3];
    nixl_desc_t in = {(uintptr_t)buf + 100, 200, 0}, out = {(uintptr_t)buf + 4000, 200, 0};
    nixl_dlist_t lin = {NIXL_DRAM, &in, 1}, lout = {NIXL_DRAM, &out, 1};
    mk_backend(a, &OPS_A, NULL);
    mk_backend(b, &OPS_A, NULL);
    reg(a, buf, 1024);
    CHECK_ST(nixl_get_local_md(a, &blob, &len), NIXL_SUCCESS);
    CHECK(len > 16 && !memcmp(blob, "NXMD", 4));
    CHECK_ST(nixl_load_remote_md(b, blob, len, tiny, sizeof tiny), NIXL_ERR_INVALID_PARAM);
    CHECK_ST(nixl_check_remote_md(b, "alpha", NULL), NIXL_ERR_NOT_FOUND);
    CHECK_ST(nixl_load_remote_md(b, blob, len, name, sizeof name), NIXL_SUCCESS);
    CHECK(!strcmp(name, "alpha"));
    CHECK_ST(nixl_load_remote_md(a, blob, len, name, sizeof name), NIXL_ERR_INVALID_PARAM); /* own */
    CHECK_ST(nixl_load_remote_md(b, blob, len, name, sizeof name), NIXL_SUCCESS);           /* same again */
    CHECK_ST(nixl_check_remote_md(b, "alpha", NULL), NIXL_SUCCESS);
    CHECK_ST(nixl_check_remote_md(b, "alpha", &lin), NIXL_SUCCESS);
    CHECK_ST(nixl_check_remote_md(b, "alpha", &lout), NIXL_ERR_NOT_FOUND);
    nixl_free_md(a, blob);
    CHECK_ST(nixl_invalidate_remote_md(b, "alpha"), NIXL_SUCCESS);
    CHECK_ST(nixl_check_remote_md(b, "alpha", NULL), NIXL_ERR_NOT_FOUND);
    CHECK_ST(nixl_invalidate_remote_md(b, "alpha"), NIXL_ERR_NOT_FOUND);
    CHECK_ST(exchange(a, b), NIXL_SUCCESS); /* loads again after invalidation */
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
}

static void test_metadata_incremental_and_conflicts(void) {
    nixl_agent_t *a = mk_agent("alpha"), *b = mk_agent("beta");
    unsigned char buf[8192];
    nixl_desc_t d2 = {(uintptr_t)buf + 4096, 512, 0};
    nixl_dlist_t l2 = {NIXL_DRAM, &d2, 1};
    void *blob = NULL;
    size_t len = 0;
    mk_backend(a, &OPS_A, NULL);
    mk_backend(b, &OPS_A, NULL);
    reg(a, buf, 1024);
    CHECK_ST(exchange(a, b), NIXL_SUCCESS);
    /* a new region arrives with partial metadata and adds up */
    reg(a, buf + 4096, 4096);
    CHECK_ST(nixl_check_remote_md(b, "alpha", &l2), NIXL_ERR_NOT_FOUND);
    CHECK_ST(nixl_get_local_partial_md(a, &l2, NULL, &blob, &len), NIXL_SUCCESS);
    CHECK_ST(nixl_load_remote_md(b, blob, len, NULL, 0), NIXL_SUCCESS);
    nixl_free_md(a, blob);
    CHECK_ST(nixl_check_remote_md(b, "alpha", &l2), NIXL_SUCCESS);
    /* the same region registered anew has a new key: refused */
    dereg(a, buf, 1024);
    reg(a, buf, 1024);
    CHECK_ST(exchange(a, b), NIXL_ERR_NOT_ALLOWED);
    CHECK(logged_item(NIXL_LOGITEM_MD_DIFFERENT_PUBLIC));
    nixl_agent_destroy(a);
    /* an agent of the same name with other connection info: refused */
    a = mk_agent("alpha");
    mk_backend(a, &OPS_A, "conn=-restarted");
    CHECK_ST(exchange(a, b), NIXL_ERR_NOT_ALLOWED);
    CHECK(logged_item(NIXL_LOGITEM_MD_CONN_INFO_CHANGED));
    CHECK_ST(nixl_invalidate_remote_md(b, "alpha"), NIXL_SUCCESS);
    CHECK_ST(exchange(a, b), NIXL_SUCCESS);
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
}

static void test_partial_md(void) {
    nixl_agent_t *a = mk_agent("alpha"), *b = mk_agent("beta");
    unsigned char buf[4096], other[64];
    nixl_desc_t d = {(uintptr_t)buf + 8, 8, 0}, bad = {(uintptr_t)other, 8, 0};
    nixl_dlist_t l = {NIXL_DRAM, &d, 1}, lbad = {NIXL_DRAM, &bad, 1}, none = {NIXL_DRAM, NULL, 0};
    nixl_opt_args_t opt;
    void *blob = NULL;
    size_t len = 0, len_noconn;
    nixl_xfer_req_t *r = NULL;
    mk_backend(a, &OPS_A, NULL);
    mk_backend(b, &OPS_A, NULL);
    reg(a, buf, 4096);
    reg(b, other, 64);
    CHECK_ST(nixl_get_local_partial_md(a, &lbad, NULL, &blob, &len), NIXL_ERR_NOT_FOUND);
    CHECK_ST(nixl_get_local_partial_md(a, &l, NULL, &blob, &len), NIXL_SUCCESS);
    len_noconn = len;
    CHECK_ST(nixl_load_remote_md(b, blob, len, NULL, 0), NIXL_SUCCESS);
    nixl_free_md(a, blob);
    /* regions known, but no connection info yet: not usable */
    CHECK_ST(nixl_check_remote_md(b, "alpha", &l), NIXL_ERR_NOT_FOUND);
    memset(&opt, 0, sizeof opt);
    opt.include_conn_info = 1;
    CHECK_ST(nixl_get_local_partial_md(a, &none, &opt, &blob, &len), NIXL_SUCCESS);
    CHECK(len < len_noconn + 64);
    CHECK_ST(nixl_load_remote_md(b, blob, len, NULL, 0), NIXL_SUCCESS);
    nixl_free_md(a, blob);
    CHECK_ST(nixl_check_remote_md(b, "alpha", &l), NIXL_SUCCESS);
    CHECK_ST(nixl_create_xfer_req(b, NIXL_READ, &lbad, &l, "alpha", NULL, &r), NIXL_SUCCESS);
    nixl_release_xfer_req(b, r);
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
}

static void test_metadata_size(void) {
    nixl_agent_t *a = mk_agent("sizer");
    unsigned char *buf = (unsigned char *)malloc(1 << 20);
    void *b1 = NULL, *b2 = NULL;
    size_t l1 = 0, l2 = 0;
    int i;
    mk_backend(a, &OPS_A, NULL);
    for (i = 0; i < 10; i++) reg(a, buf + i * 4096, 4096);
    nixl_get_local_md(a, &b1, &l1);
    for (i = 10; i < 110; i++) reg(a, buf + i * 4096, 4096);
    nixl_get_local_md(a, &b2, &l2);
    /* 100 more regions, 8 key bytes each: at most 48 + 8 bytes per region */
    CHECKF((l2 - l1) / 100 <= 48 + 8, "%zu bytes per region", (l2 - l1) / 100);
    nixl_free_md(a, b1);
    nixl_free_md(a, b2);
    nixl_agent_destroy(a);
    free(buf);
}

static void put_le32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}
/* recompute the CRC so that a deliberate edit reaches the parser proper */
static void fix_crc(unsigned char *p, size_t len) { put_le32(p + len - 4, _nixl_crc32(p, len - 4)); }

static void test_metadata_corrupt(void) {
    nixl_agent_t *a = mk_agent("alpha"), *b = mk_agent("beta");
    unsigned char buf[4096];
    unsigned char *blob = NULL, *copy;
    size_t len = 0, i;
    int bad_trunc = 0, bad_flip = 0, bad_fixed = 0, crashed_state = 0;
    mk_backend(a, &OPS_A, NULL);
    mk_backend(b, &OPS_A, NULL);
    reg(a, buf, 1024);
    reg(a, buf + 2048, 1024);
    nixl_get_local_md(a, (void **)&blob, &len);
    copy = (unsigned char *)malloc(len + 16);
    /* every truncation is refused */
    for (i = 0; i < len; i++)
        if (nixl_load_remote_md(b, blob, i, NULL, 0) != NIXL_ERR_INVALID_PARAM) bad_trunc++;
    CHECKF(bad_trunc == 0, "%d truncations not refused", bad_trunc);
    /* every single-bit flip is refused (CRC, or version: MISMATCH) */
    for (i = 0; i < len * 8; i++) {
        nixl_status_t st;
        memcpy(copy, blob, len);
        copy[i / 8] ^= (unsigned char)(1u << (i % 8));
        st = nixl_load_remote_md(b, copy, len, NULL, 0);
        if (st != NIXL_ERR_INVALID_PARAM && st != NIXL_ERR_MISMATCH) bad_flip++;
    }
    CHECKF(bad_flip == 0, "%d bit flips not refused", bad_flip);
    /* flips past the CRC check: every byte after the header with a valid CRC.
       Loading may succeed only where the edit still makes a valid blob (for
       example an address byte); it must never crash (ASan watches). */
    for (i = 12; i < len - 4; i++) {
        nixl_status_t st;
        memcpy(copy, blob, len);
        copy[i] ^= 0xff;
        fix_crc(copy, len);
        st = nixl_load_remote_md(b, copy, len, NULL, 0);
        if (st == NIXL_SUCCESS) nixl_invalidate_remote_md(b, "alpha");
        else if (st != NIXL_ERR_INVALID_PARAM && st != NIXL_ERR_NOT_ALLOWED) bad_fixed++;
        if (st == NIXL_SUCCESS && nixl_check_remote_md(b, "alpha", NULL) != NIXL_ERR_NOT_FOUND) crashed_state++;
    }
    CHECKF(bad_fixed == 0, "%d edited blobs gave an unexpected status", bad_fixed);
    CHECK(crashed_state == 0);
    /* a version this library does not speak */
    memcpy(copy, blob, len);
    copy[4] = 9;
    fix_crc(copy, len);
    CHECK_ST(nixl_load_remote_md(b, copy, len, NULL, 0), NIXL_ERR_MISMATCH);
    /* bad magic */
    memcpy(copy, blob, len);
    copy[0] = 'X';
    fix_crc(copy, len);
    CHECK_ST(nixl_load_remote_md(b, copy, len, NULL, 0), NIXL_ERR_INVALID_PARAM);
    /* trailing bytes after a valid body */
    memcpy(copy, blob, len - 4);
    memset(copy + len - 4, 0, 4);
    put_le32(copy + 8, (uint32_t)len + 4);
    fix_crc(copy, len + 4);
    CHECK_ST(nixl_load_remote_md(b, copy, len + 4, NULL, 0), NIXL_ERR_INVALID_PARAM);
    /* length field larger than the blob (oversized claim) */
    memcpy(copy, blob, len);
    put_le32(copy + 8, 0x7fffffff);
    fix_crc(copy, len);
    CHECK_ST(nixl_load_remote_md(b, copy, len, NULL, 0), NIXL_ERR_INVALID_PARAM);
    /* garbage */
    CHECK_ST(nixl_load_remote_md(b, NULL, 100, NULL, 0), NIXL_ERR_INVALID_PARAM);
    nt_fill(copy, len, 99);
    CHECK_ST(nixl_load_remote_md(b, copy, len, NULL, 0), NIXL_ERR_INVALID_PARAM);
    /* the good blob still loads after all that */
    CHECK_ST(nixl_load_remote_md(b, blob, len, NULL, 0), NIXL_SUCCESS);
    free(copy);
    nixl_free_md(a, blob);
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
}

static void test_metadata_region_count_lie(void) {
    /* a region count far larger than the bytes behind it, with a valid CRC */
    nixl_agent_t *a = mk_agent("alpha"), *b = mk_agent("beta");
    unsigned char buf[64];
    unsigned char *blob = NULL;
    size_t len = 0, off;
    mk_backend(a, &OPS_A, NULL);
    mk_backend(b, &OPS_A, NULL);
    reg(a, buf, 64);
    nixl_get_local_md(a, (void **)&blob, &len);
    /* header 12, name 1+5, nbackends 1, backend: 1+6 name + 4 + conn(5) */
    off = 12 + 1 + 5 + 1 + 1 + 6 + 4 + 5;
    CHECK(blob[off] == 1 && blob[off + 1] == 0); /* nregions == 1 where we think it is */
    put_le32(blob + off, 0x10000000u);
    fix_crc(blob, len);
    CHECK_ST(nixl_load_remote_md(b, blob, len, NULL, 0), NIXL_ERR_INVALID_PARAM);
    nixl_free_md(a, blob);
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
}

static void test_write_read_notif(void) {
    pair p;
    nixl_desc_t ls = {0, 0, 0}, rd = {0, 0, 0};
    nixl_dlist_t l = {NIXL_DRAM, &ls, 1}, r = {NIXL_DRAM, &rd, 1};
    nixl_opt_args_t opt;
    nixl_xfer_req_t *req = NULL;
    notes ns;
    CHECK(pair_up(&p, 65536, NULL));
    ls.addr = (uintptr_t)p.src;
    ls.len = p.len;
    rd.addr = (uintptr_t)p.dst;
    rd.len = p.len;
    memset(&opt, 0, sizeof opt);
    opt.notif = "w1";
    opt.notif_len = 2;
    opt.has_notif = 1;
    CHECK_ST(nixl_create_xfer_req(p.init, NIXL_WRITE, &l, &r, "target", &opt, &req), NIXL_SUCCESS);
    CHECK_ST(nixl_get_xfer_status(p.init, req), NIXL_ERR_NOT_POSTED);
    CHECK_ST(nixl_post_xfer_req(p.init, req, NULL), NIXL_IN_PROG);
    CHECK_ST(nixl_post_xfer_req(p.init, req, NULL), NIXL_ERR_REPOST_ACTIVE);
    /* before progress nothing has moved and nothing is notified */
    memset(&ns, 0, sizeof ns);
    nixl_get_notifs(p.target, note_cb, &ns);
    CHECK(ns.n == 0);
    CHECK_ST(wait_req(p.init, p.target, req), NIXL_SUCCESS);
    memset(&ns, 0, sizeof ns);
    nixl_get_notifs(p.target, note_cb, &ns);
    CHECK(ns.n == 1 && !strcmp(ns.sender[0], "init") && !strcmp(ns.msg[0], "w1"));
    CHECK(nt_verify(p.dst, p.len, 7));
    /* repost with a replaced notification */
    memset(p.dst, 0, p.len);
    opt.notif = "w2";
    CHECK_ST(nixl_post_xfer_req(p.init, req, &opt), NIXL_IN_PROG);
    CHECK_ST(wait_req(p.init, p.target, req), NIXL_SUCCESS);
    memset(&ns, 0, sizeof ns);
    nixl_get_notifs(p.target, note_cb, &ns);
    CHECK(ns.n == 1 && !strcmp(ns.msg[0], "w2"));
    CHECK(nt_verify(p.dst, p.len, 7));
    memset(&ns, 0, sizeof ns);
    nixl_get_notifs(p.target, note_cb, &ns); /* drained */
    CHECK(ns.n == 0);
    CHECK_ST(nixl_release_xfer_req(p.init, req), NIXL_SUCCESS);
    /* READ back into a cleared source */
    nt_fill(p.dst, p.len, 11);
    memset(p.src, 0, p.len);
    CHECK_ST(nixl_create_xfer_req(p.init, NIXL_READ, &l, &r, "target", NULL, &req), NIXL_SUCCESS);
    CHECK_ST(nixl_post_xfer_req(p.init, req, NULL), NIXL_IN_PROG);
    CHECK_ST(wait_req(p.init, p.target, req), NIXL_SUCCESS);
    CHECK(nt_verify(p.src, p.len, 11));
    nixl_release_xfer_req(p.init, req);
    pair_down(&p);
}

static void test_request_validation(void) {
    pair p;
    nixl_desc_t ls = {0, 0, 0}, rd = {0, 0, 0}, two[2];
    nixl_dlist_t l = {NIXL_DRAM, &ls, 1}, r = {NIXL_DRAM, &rd, 1}, l2 = {NIXL_DRAM, two, 2};
    nixl_xfer_req_t *req = NULL;
    CHECK(pair_up(&p, 4096, NULL));
    ls.addr = (uintptr_t)p.src;
    ls.len = 4096;
    rd.addr = (uintptr_t)p.dst + 1; /* runs one byte past the remote region */
    rd.len = 4096;
    CHECK_ST(nixl_create_xfer_req(p.init, NIXL_WRITE, &l, &r, "target", NULL, &req), NIXL_ERR_NOT_FOUND);
    CHECK(logged_item(NIXL_LOGITEM_DESC_NOT_IN_REGION));
    rd.addr = (uintptr_t)p.dst;
    ls.addr = (uintptr_t)p.src + 8; /* local past its region */
    CHECK_ST(nixl_create_xfer_req(p.init, NIXL_WRITE, &l, &r, "target", NULL, &req), NIXL_ERR_NOT_FOUND);
    ls.addr = (uintptr_t)p.src;
    ls.len = 100; /* length mismatch */
    CHECK_ST(nixl_create_xfer_req(p.init, NIXL_WRITE, &l, &r, "target", NULL, &req), NIXL_ERR_INVALID_PARAM);
    ls.len = 4096;
    two[0] = ls;
    two[1] = ls;
    CHECK_ST(nixl_create_xfer_req(p.init, NIXL_WRITE, &l2, &r, "target", NULL, &req), NIXL_ERR_INVALID_PARAM);
    CHECK_ST(nixl_create_xfer_req(p.init, NIXL_WRITE, &l, &r, "nobody", NULL, &req), NIXL_ERR_NOT_FOUND);
    CHECK_ST(nixl_create_xfer_req(p.init, (nixl_xfer_op_t)5, &l, &r, "target", NULL, &req), NIXL_ERR_INVALID_PARAM);
    CHECK(req == NULL);
    CHECK(nt_verify(p.dst, 0, 0) && p.dst[0] == 0 && p.dst[4095] == 0); /* nothing was written */
    pair_down(&p);
}

static void test_make_by_indices(void) {
    /* a vLLM-like pattern: 64 blocks of 256 bytes, pick some by id */
    enum { NB = 64, BS = 256 };
    pair p;
    nixl_desc_t ld[NB], rdsc[NB];
    nixl_dlist_t l = {NIXL_DRAM, ld, NB}, r = {NIXL_DRAM, rdsc, NB};
    nixl_dlist_handle_t *lh = NULL, *rh = NULL;
    nixl_xfer_req_t *req = NULL;
    int lidx[5] = {3, 9, 10, 40, 63}, ridx[5] = {0, 1, 2, 50, 7}, bad[1] = {NB};
    int i, ok = 1;
    CHECK(pair_up(&p, NB * BS, NULL));
    for (i = 0; i < NB; i++) {
        ld[i].addr = (uintptr_t)p.src + (size_t)i * BS;
        ld[i].len = BS;
        ld[i].dev_id = 0;
        rdsc[i].addr = (uintptr_t)p.dst + (size_t)i * BS;
        rdsc[i].len = BS;
        rdsc[i].dev_id = 0;
    }
    CHECK_ST(nixl_prep_xfer_dlist(p.init, NULL, &l, NULL, &lh), NIXL_SUCCESS);
    CHECK_ST(nixl_prep_xfer_dlist(p.init, "target", &r, NULL, &rh), NIXL_SUCCESS);
    CHECK_ST(nixl_make_xfer_req(p.init, NIXL_WRITE, lh, bad, 1, rh, ridx, 1, NULL, &req), NIXL_ERR_INVALID_PARAM);
    CHECK_ST(nixl_make_xfer_req(p.init, NIXL_WRITE, rh, lidx, 5, lh, ridx, 5, NULL, &req), NIXL_ERR_INVALID_PARAM);
    CHECK_ST(nixl_make_xfer_req(p.init, NIXL_WRITE, lh, lidx, 5, rh, ridx, 4, NULL, &req), NIXL_ERR_INVALID_PARAM);
    CHECK_ST(nixl_make_xfer_req(p.init, NIXL_WRITE, lh, lidx, 5, rh, ridx, 5, NULL, &req), NIXL_SUCCESS);
    /* the request keeps what it needs after the lists are released */
    CHECK_ST(nixl_release_dlist_handle(p.init, lh), NIXL_SUCCESS);
    CHECK_ST(nixl_release_dlist_handle(p.init, rh), NIXL_SUCCESS);
    CHECK_ST(nixl_post_xfer_req(p.init, req, NULL), NIXL_IN_PROG);
    CHECK_ST(wait_req(p.init, p.target, req), NIXL_SUCCESS);
    for (i = 0; i < 5; i++)
        ok &= !memcmp(p.dst + (size_t)ridx[i] * BS, p.src + (size_t)lidx[i] * BS, BS);
    /* untouched blocks stay zero */
    for (i = 0; i < BS; i++) ok &= p.dst[3 * BS + i] == 0;
    CHECK(ok);
    nixl_release_xfer_req(p.init, req);
    pair_down(&p);
}

static void test_backend_selection(void) {
    nixl_agent_t *a = mk_agent("sel-a"), *b = mk_agent("sel-b");
    nixl_backend_t *aa = mk_backend(a, &OPS_A, NULL), *ab = mk_backend(a, &OPS_B, NULL);
    nixl_backend_t *ba = mk_backend(b, &OPS_A, NULL), *bb = mk_backend(b, &OPS_B, NULL);
    nixl_backend_t *chosen = NULL;
    unsigned char src[512], dst[512], only_b[128], dst_b[128];
    nixl_desc_t ls = {(uintptr_t)src, 512, 0}, rd = {(uintptr_t)dst, 512, 0};
    nixl_desc_t lb = {(uintptr_t)only_b, 128, 0}, rb = {(uintptr_t)dst_b, 128, 0};
    nixl_dlist_t l = {NIXL_DRAM, &ls, 1}, r = {NIXL_DRAM, &rd, 1};
    nixl_dlist_t lbl = {NIXL_DRAM, &lb, 1}, rbl = {NIXL_DRAM, &rb, 1};
    nixl_opt_args_t opt;
    nixl_backend_t *just_b[1], *foreign[1];
    nixl_xfer_req_t *req = NULL;
    (void)ba;
    nt_fill(src, sizeof src, 3);
    nt_fill(only_b, sizeof only_b, 4);
    memset(dst, 0, sizeof dst);
    memset(dst_b, 0, sizeof dst_b);
    reg(a, src, sizeof src);
    reg(b, dst, sizeof dst);
    memset(&opt, 0, sizeof opt);
    just_b[0] = ab;
    opt.backends = just_b;
    opt.num_backends = 1;
    CHECK_ST(nixl_register_mem(a, &lbl, &opt), NIXL_SUCCESS); /* only on LOOP_B */
    just_b[0] = bb;
    CHECK_ST(nixl_register_mem(b, &rbl, &opt), NIXL_SUCCESS);
    CHECK_ST(exchange(b, a), NIXL_SUCCESS);
    /* default order: creation order, LOOP_A first */
    CHECK_ST(nixl_create_xfer_req(a, NIXL_WRITE, &l, &r, "sel-b", NULL, &req), NIXL_SUCCESS);
    CHECK_ST(nixl_query_xfer_backend(a, req, &chosen), NIXL_SUCCESS);
    CHECK(chosen == aa);
    nixl_release_xfer_req(a, req);
    /* the caller's list wins */
    just_b[0] = ab;
    CHECK_ST(nixl_create_xfer_req(a, NIXL_WRITE, &l, &r, "sel-b", &opt, &req), NIXL_SUCCESS);
    nixl_query_xfer_backend(a, req, &chosen);
    CHECK(chosen == ab);
    CHECK_ST(nixl_post_xfer_req(a, req, NULL), NIXL_IN_PROG);
    CHECK_ST(wait_req(a, b, req), NIXL_SUCCESS);
    CHECK(nt_verify(dst, sizeof dst, 3));
    nixl_release_xfer_req(a, req);
    /* regions only LOOP_B holds select LOOP_B by default */
    CHECK_ST(nixl_create_xfer_req(a, NIXL_WRITE, &lbl, &rbl, "sel-b", NULL, &req), NIXL_SUCCESS);
    nixl_query_xfer_backend(a, req, &chosen);
    CHECK(chosen == ab);
    CHECK_ST(nixl_post_xfer_req(a, req, NULL), NIXL_IN_PROG);
    CHECK_ST(wait_req(a, b, req), NIXL_SUCCESS);
    CHECK(nt_verify(dst_b, sizeof dst_b, 4));
    nixl_release_xfer_req(a, req);
    /* restricting to a backend that lacks them: NOT_SUPPORTED */
    just_b[0] = aa;
    CHECK_ST(nixl_create_xfer_req(a, NIXL_WRITE, &lbl, &rbl, "sel-b", &opt, &req), NIXL_ERR_NOT_SUPPORTED);
    /* another agent's backend is refused */
    foreign[0] = bb;
    opt.backends = foreign;
    CHECK_ST(nixl_create_xfer_req(a, NIXL_WRITE, &l, &r, "sel-b", &opt, &req), NIXL_ERR_INVALID_PARAM);
    nixl_agent_destroy(a);
    nixl_agent_destroy(b);
}

static void test_dereg_and_invalidate_block_posts(void) {
    pair p;
    nixl_desc_t ls = {0, 0, 0}, rd = {0, 0, 0};
    nixl_dlist_t l = {NIXL_DRAM, &ls, 1}, r = {NIXL_DRAM, &rd, 1};
    nixl_xfer_req_t *req = NULL, *req2 = NULL;
    CHECK(pair_up(&p, 4096, NULL));
    ls.addr = (uintptr_t)p.src;
    ls.len = 4096;
    rd.addr = (uintptr_t)p.dst;
    rd.len = 4096;
    CHECK_ST(nixl_create_xfer_req(p.init, NIXL_WRITE, &l, &r, "target", NULL, &req), NIXL_SUCCESS);
    CHECK_ST(nixl_create_xfer_req(p.init, NIXL_WRITE, &l, &r, "target", NULL, &req2), NIXL_SUCCESS);
    CHECK_ST(dereg(p.init, p.src, 4096), NIXL_SUCCESS);
    CHECK_ST(nixl_post_xfer_req(p.init, req, NULL), NIXL_ERR_NOT_FOUND);
    CHECK_ST(nixl_release_xfer_req(p.init, req), NIXL_SUCCESS);
    reg(p.init, p.src, 4096);
    nixl_release_xfer_req(p.init, req2);
    CHECK_ST(nixl_create_xfer_req(p.init, NIXL_WRITE, &l, &r, "target", NULL, &req), NIXL_SUCCESS);
    CHECK_ST(nixl_invalidate_remote_md(p.init, "target"), NIXL_SUCCESS);
    CHECK_ST(nixl_post_xfer_req(p.init, req, NULL), NIXL_ERR_NOT_FOUND);
    nixl_release_xfer_req(p.init, req);
    /* the target deregisters while the initiator still holds its key: the
       transfer fails at the "NIC", and no byte lands */
    CHECK_ST(exchange(p.target, p.init), NIXL_SUCCESS);
    CHECK_ST(nixl_create_xfer_req(p.init, NIXL_WRITE, &l, &r, "target", NULL, &req), NIXL_SUCCESS);
    CHECK_ST(dereg(p.target, p.dst, 4096), NIXL_SUCCESS);
    CHECK_ST(nixl_post_xfer_req(p.init, req, NULL), NIXL_IN_PROG);
    CHECK_ST(wait_req(p.init, p.target, req), NIXL_ERR_BACKEND);
    CHECK(p.dst[0] == 0 && p.dst[4095] == 0);
    nixl_release_xfer_req(p.init, req);
    pair_down(&p);
}

static void test_peer_death(void) {
    pair p;
    nixl_desc_t ls = {0, 0, 0}, rd = {0, 0, 0};
    nixl_dlist_t l = {NIXL_DRAM, &ls, 1}, r = {NIXL_DRAM, &rd, 1};
    nixl_xfer_req_t *req = NULL;
    CHECK(pair_up(&p, 4096, NULL));
    ls.addr = (uintptr_t)p.src;
    ls.len = 4096;
    rd.addr = (uintptr_t)p.dst;
    rd.len = 4096;
    CHECK_ST(nixl_create_xfer_req(p.init, NIXL_WRITE, &l, &r, "target", NULL, &req), NIXL_SUCCESS);
    CHECK_ST(nixl_post_xfer_req(p.init, req, NULL), NIXL_IN_PROG);
    nixl_agent_destroy(p.target); /* the peer dies with the request in flight */
    p.target = NULL;
    CHECK_ST(wait_req(p.init, NULL, req), NIXL_ERR_REMOTE_DISCONNECT);
    CHECK_ST(nixl_check_remote_md(p.init, "target", NULL), NIXL_ERR_NOT_FOUND); /* invalidated */
    CHECK_ST(nixl_post_xfer_req(p.init, req, NULL), NIXL_ERR_REMOTE_DISCONNECT);
    nixl_release_xfer_req(p.init, req);
    /* a restarted peer of the same name loads and works again */
    p.target = mk_agent("target");
    mk_backend(p.target, &OPS_A, NULL);
    memset(p.dst, 0, 4096);
    reg(p.target, p.dst, 4096);
    CHECK_ST(exchange(p.target, p.init), NIXL_SUCCESS);
    CHECK_ST(nixl_create_xfer_req(p.init, NIXL_WRITE, &l, &r, "target", NULL, &req), NIXL_SUCCESS);
    CHECK_ST(nixl_post_xfer_req(p.init, req, NULL), NIXL_IN_PROG);
    CHECK_ST(wait_req(p.init, p.target, req), NIXL_SUCCESS);
    CHECK(nt_verify(p.dst, 4096, 7));
    nixl_release_xfer_req(p.init, req);
    pair_down(&p);
}

static void test_release_in_flight(void) {
    pair p;
    nixl_desc_t ls = {0, 0, 0}, rd = {0, 0, 0};
    nixl_dlist_t l = {NIXL_DRAM, &ls, 1}, r = {NIXL_DRAM, &rd, 1};
    nixl_xfer_req_t *req = NULL;
    CHECK(pair_up(&p, 4096, "abort=0"));
    ls.addr = (uintptr_t)p.src;
    ls.len = 4096;
    rd.addr = (uintptr_t)p.dst;
    rd.len = 4096;
    nixl_create_xfer_req(p.init, NIXL_WRITE, &l, &r, "target", NULL, &req);
    CHECK_ST(nixl_post_xfer_req(p.init, req, NULL), NIXL_IN_PROG);
    CHECK_ST(nixl_release_xfer_req(p.init, req), NIXL_ERR_REPOST_ACTIVE);
    CHECK_ST(wait_req(p.init, p.target, req), NIXL_SUCCESS); /* still valid */
    CHECK(nt_verify(p.dst, 4096, 7));
    CHECK_ST(nixl_release_xfer_req(p.init, req), NIXL_SUCCESS);
    /* destroying an agent with a request in flight releases it */
    nixl_create_xfer_req(p.init, NIXL_WRITE, &l, &r, "target", NULL, &req);
    CHECK_ST(nixl_post_xfer_req(p.init, req, NULL), NIXL_IN_PROG);
    pair_down(&p);
}

static void test_inline_telemetry_estimate(void) {
    pair p;
    nixl_desc_t ls = {0, 0, 0}, rd = {0, 0, 0};
    nixl_dlist_t l = {NIXL_DRAM, &ls, 1}, r = {NIXL_DRAM, &rd, 1};
    nixl_xfer_req_t *req = NULL;
    nixl_xfer_telemetry_t t;
    int64_t dur = 0, margin = 0;
    CHECK(pair_up(&p, 100000, "inline=1"));
    ls.addr = (uintptr_t)p.src;
    ls.len = p.len;
    rd.addr = (uintptr_t)p.dst;
    rd.len = p.len;
    nixl_create_xfer_req(p.init, NIXL_WRITE, &l, &r, "target", NULL, &req);
    CHECK_ST(nixl_get_xfer_telemetry(p.init, req, &t), NIXL_ERR_NO_TELEMETRY);
    CHECK_ST(nixl_post_xfer_req(p.init, req, NULL), NIXL_SUCCESS); /* done inline */
    CHECK(nt_verify(p.dst, p.len, 7));
    CHECK_ST(nixl_get_xfer_telemetry(p.init, req, &t), NIXL_SUCCESS);
    CHECK(t.total_bytes == 100000 && t.desc_count == 1 && t.start_us > 0);
    CHECK_ST(nixl_estimate_xfer_cost(p.init, req, &dur, &margin), NIXL_SUCCESS);
    CHECK(dur == 101 && margin == 10);
    nixl_release_xfer_req(p.init, req);
    pair_down(&p);
}

static void test_gen_notif_order(void) {
    nixl_agent_t *t = mk_agent("sink"), *s1 = mk_agent("s1"), *s2 = mk_agent("s2");
    notes ns;
    char msg[32];
    int i, order_ok = 1, c1 = 0, c2 = 0;
    mk_backend(t, &OPS_A, NULL);
    mk_backend(s1, &OPS_A, "notif_max=16");
    mk_backend(s2, &OPS_A, NULL);
    exchange(t, s1);
    exchange(t, s2);
    CHECK_ST(nixl_gen_notif(s1, "nobody", "x", 1, NULL), NIXL_ERR_NOT_FOUND);
    CHECK_ST(nixl_gen_notif(s1, "sink", "0123456789abcdefXYZ", 19, NULL), NIXL_ERR_INVALID_PARAM);
    for (i = 0; i < 20; i++) {
        snprintf(msg, sizeof msg, "%d", i);
        nixl_gen_notif(i % 2 ? s2 : s1, "sink", msg, strlen(msg), NULL);
    }
    memset(&ns, 0, sizeof ns);
    nixl_get_notifs(t, note_cb, &ns);
    CHECK(ns.n == 20);
    for (i = 0; i < ns.n && i < 64; i++) {
        int v = atoi(ns.msg[i]);
        if (!strcmp(ns.sender[i], "s1")) {
            order_ok &= v == 2 * c1;
            c1++;
        } else {
            order_ok &= v == 2 * c2 + 1;
            c2++;
        }
    }
    CHECK(order_ok && c1 == 10 && c2 == 10);
    /* a notification to oneself */
    CHECK_ST(nixl_gen_notif(t, "sink", "me", 2, NULL), NIXL_SUCCESS);
    memset(&ns, 0, sizeof ns);
    nixl_get_notifs(t, note_cb, &ns);
    CHECK(ns.n == 1 && !strcmp(ns.sender[0], "sink") && !strcmp(ns.msg[0], "me"));
    CHECK_ST(nixl_get_notifs(t, NULL, NULL), NIXL_ERR_INVALID_PARAM);
    nixl_agent_destroy(t);
    nixl_agent_destroy(s1);
    nixl_agent_destroy(s2);
}

static void test_loopback(void) {
    nixl_agent_t *a = mk_agent("solo");
    unsigned char *buf = (unsigned char *)malloc(8192);
    nixl_desc_t ls = {(uintptr_t)buf, 4096, 0}, rd = {(uintptr_t)buf + 4096, 4096, 0};
    nixl_dlist_t l = {NIXL_DRAM, &ls, 1}, r = {NIXL_DRAM, &rd, 1};
    nixl_opt_args_t opt;
    nixl_xfer_req_t *req = NULL;
    notes ns;
    mk_backend(a, &OPS_A, NULL);
    nt_fill(buf, 4096, 21);
    memset(buf + 4096, 0, 4096);
    reg(a, buf, 8192);
    memset(&opt, 0, sizeof opt);
    opt.notif = "self";
    opt.notif_len = 4;
    opt.has_notif = 1;
    CHECK_ST(nixl_create_xfer_req(a, NIXL_WRITE, &l, &r, "solo", &opt, &req), NIXL_SUCCESS);
    CHECK_ST(nixl_post_xfer_req(a, req, NULL), NIXL_IN_PROG);
    CHECK_ST(wait_req(a, NULL, req), NIXL_SUCCESS);
    CHECK(nt_verify(buf + 4096, 4096, 21));
    memset(&ns, 0, sizeof ns);
    nixl_get_notifs(a, note_cb, &ns);
    CHECK(ns.n == 1 && !strcmp(ns.sender[0], "solo"));
    nixl_release_xfer_req(a, req);
    nixl_agent_destroy(a);
    free(buf);
}

typedef struct thr_arg {
    nixl_agent_t *a;
    unsigned char *src, *dst;
    size_t len;
    int rounds, failures;
} thr_arg;

static void *poster(void *p) {
    thr_arg *t = (thr_arg *)p;
    nixl_desc_t ls = {(uintptr_t)t->src, t->len, 0}, rd = {(uintptr_t)t->dst, t->len, 0};
    nixl_dlist_t l = {NIXL_DRAM, &ls, 1}, r = {NIXL_DRAM, &rd, 1};
    nixl_xfer_req_t *req = NULL;
    int i;
    if (nixl_create_xfer_req(t->a, NIXL_WRITE, &l, &r, "target", NULL, &req) != NIXL_SUCCESS) {
        t->failures++;
        return NULL;
    }
    for (i = 0; i < t->rounds; i++) {
        nixl_status_t st = nixl_post_xfer_req(t->a, req, NULL);
        while (st == NIXL_IN_PROG) st = nixl_get_xfer_status(t->a, req);
        if (st != NIXL_SUCCESS) t->failures++;
    }
    nixl_release_xfer_req(t->a, req);
    return NULL;
}

static void test_threads_and_progress_thread(void) {
    enum { NT = 4, LEN = 16384 };
    nixl_agent_config_t cfg;
    nixl_agent_t *init = NULL, *target = NULL;
    unsigned char *src = (unsigned char *)malloc(NT * LEN), *dst = (unsigned char *)calloc(NT, LEN);
    pthread_t th[NT];
    thr_arg args[NT];
    int i, fails = 0, ok = 1;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "init";
    cfg.progress_thread = 1;
    nixl_agent_create(&cfg, &init);
    cfg.name = "target";
    nixl_agent_create(&cfg, &target);
    mk_backend(init, &OPS_A, NULL);
    mk_backend(target, &OPS_A, NULL);
    nt_fill(src, NT * LEN, 5);
    reg(init, src, NT * LEN);
    reg(target, dst, NT * LEN);
    CHECK_ST(exchange(target, init), NIXL_SUCCESS);
    for (i = 0; i < NT; i++) {
        args[i].a = init;
        args[i].src = src + i * LEN;
        args[i].dst = dst + i * LEN;
        args[i].len = LEN;
        args[i].rounds = 200;
        args[i].failures = 0;
        pthread_create(&th[i], NULL, poster, &args[i]);
    }
    for (i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        fails += args[i].failures;
    }
    CHECK(fails == 0);
    for (i = 0; i < NT * LEN; i++) ok &= dst[i] == src[i];
    CHECK(ok);
    nixl_agent_destroy(init);
    nixl_agent_destroy(target);
    free(src);
    free(dst);
}

static void test_many_descriptors(void) {
    enum { N = 100000 };
    pair p;
    nixl_desc_t *ld = (nixl_desc_t *)malloc(N * sizeof *ld), *rdsc = (nixl_desc_t *)malloc(N * sizeof *rdsc);
    nixl_dlist_t l = {NIXL_DRAM, ld, N}, r = {NIXL_DRAM, rdsc, N};
    nixl_dlist_handle_t *lh = NULL, *rh = NULL;
    int *idx = (int *)malloc(N * sizeof *idx);
    nixl_xfer_req_t *req = NULL;
    int i;
    CHECK(pair_up(&p, (size_t)N * 8, NULL));
    for (i = 0; i < N; i++) {
        ld[i].addr = (uintptr_t)p.src + (size_t)i * 8;
        ld[i].len = 8;
        ld[i].dev_id = 0;
        rdsc[i].addr = (uintptr_t)p.dst + (size_t)(N - 1 - i) * 8; /* reversed */
        rdsc[i].len = 8;
        rdsc[i].dev_id = 0;
        idx[i] = i;
    }
    CHECK_ST(nixl_prep_xfer_dlist(p.init, NULL, &l, NULL, &lh), NIXL_SUCCESS);
    CHECK_ST(nixl_prep_xfer_dlist(p.init, "target", &r, NULL, &rh), NIXL_SUCCESS);
    CHECK_ST(nixl_make_xfer_req(p.init, NIXL_WRITE, lh, idx, N, rh, idx, N, NULL, &req), NIXL_SUCCESS);
    CHECK_ST(nixl_post_xfer_req(p.init, req, NULL), NIXL_IN_PROG);
    CHECK_ST(wait_req(p.init, p.target, req), NIXL_SUCCESS);
    CHECK(!memcmp(p.dst + (size_t)(N - 1) * 8, p.src, 8) && !memcmp(p.dst, p.src + (size_t)(N - 1) * 8, 8));
    nixl_release_xfer_req(p.init, req);
    nixl_release_dlist_handle(p.init, lh);
    nixl_release_dlist_handle(p.init, rh);
    pair_down(&p);
    free(ld);
    free(rdsc);
    free(idx);
}

static void test_overlapping_lookup(void) {
    /* nested and overlapping regions: a descriptor must lie wholly in one */
    nixl_agent_t *a = mk_agent("ovl");
    unsigned char *buf = (unsigned char *)malloc(10000);
    nixl_desc_t d;
    nixl_dlist_t l = {NIXL_DRAM, &d, 1};
    nixl_dlist_handle_t *h = NULL;
    mk_backend(a, &OPS_A, NULL);
    reg(a, buf, 10000);      /* big */
    reg(a, buf + 100, 50);   /* nested small */
    reg(a, buf + 5000, 100); /* another nested */
    d.addr = (uintptr_t)buf + 5050;
    d.len = 4000; /* beyond the small one, inside the big one */
    d.dev_id = 0;
    CHECK_ST(nixl_prep_xfer_dlist(a, NULL, &l, NULL, &h), NIXL_SUCCESS);
    nixl_release_dlist_handle(a, h);
    CHECK_ST(dereg(a, buf, 10000), NIXL_SUCCESS);
    CHECK_ST(nixl_prep_xfer_dlist(a, NULL, &l, NULL, &h), NIXL_ERR_NOT_FOUND);
    d.len = 10; /* now only in the small nested one */
    CHECK_ST(nixl_prep_xfer_dlist(a, NULL, &l, NULL, &h), NIXL_SUCCESS);
    CHECK_ST(nixl_release_dlist_handle(a, h), NIXL_SUCCESS);
    nixl_agent_destroy(a);
    free(buf);
}

/* The region lookup (a branch-free search over a flat array of starts, and
   the previous descriptor's region as a hint) against brute force: random
   DRAM regions, some nested or overlapping, and runs of descriptors that
   stay in one region, move to a neighbour, or lie in none. Each descriptor
   alone, and every run as one list, is found exactly when some region
   wholly contains it. */
static void test_lookup_against_brute_force(void) {
    enum { NREG = 40, NDESC = 600, SPAN = 1 << 16 };
    nixl_agent_t *a = mk_agent("lookup");
    unsigned char *buf = (unsigned char *)malloc(SPAN);
    uintptr_t ra[NREG];
    size_t rl[NREG], i, k, bad = 0;
    nixl_desc_t *d = (nixl_desc_t *)calloc(NDESC, sizeof *d);
    unsigned seed = 12345;
    int *in = (int *)calloc(NDESC, sizeof *in);
    mk_backend(a, &OPS_A, NULL);
    for (k = 0; k < NREG; k++) {
        seed = seed * 1103515245u + 12345u;
        ra[k] = (uintptr_t)buf + (seed >> 8) % (SPAN - 4096);
        rl[k] = 1 + (seed >> 4) % (k % 7 == 0 ? 4096 : 512);
        CHECK_ST(reg(a, (void *)ra[k], rl[k]), NIXL_SUCCESS);
    }
    for (i = 0; i < NDESC; i++) {
        seed = seed * 1103515245u + 12345u;
        if (i && (seed >> 16) % 3) { /* a neighbour: just after the previous one */
            d[i].addr = d[i - 1].addr + d[i - 1].len;
        } else {
            d[i].addr = (uintptr_t)buf + (seed >> 8) % (SPAN - 64);
        }
        d[i].len = 1 + (seed >> 3) % 64;
        for (k = 0; k < NREG && !in[i]; k++)
            in[i] = ra[k] <= d[i].addr && d[i].addr + d[i].len <= ra[k] + rl[k];
    }
    for (i = 0; i < NDESC; i++) { /* each alone */
        nixl_dlist_t l = {NIXL_DRAM, &d[i], 1};
        nixl_dlist_handle_t *h = NULL;
        nixl_status_t st = nixl_prep_xfer_dlist(a, NULL, &l, NULL, &h);
        if ((st == NIXL_SUCCESS) != in[i]) bad++;
        if (h) nixl_release_dlist_handle(a, h);
    }
    CHECKF(bad == 0, "%zu of %d descriptors looked up wrongly", bad, NDESC);
    for (i = 0; i < NDESC;) { /* runs of found descriptors as one list: the hint at work */
        nixl_dlist_t l;
        nixl_dlist_handle_t *h = NULL;
        size_t j = i;
        while (j < NDESC && in[j]) j++;
        if (j > i) {
            l.mem = NIXL_DRAM;
            l.descs = &d[i];
            l.count = j - i;
            CHECK_ST(nixl_prep_xfer_dlist(a, NULL, &l, NULL, &h), NIXL_SUCCESS);
            if (h) nixl_release_dlist_handle(a, h);
            if (j < NDESC) { /* the run and the next (missing) one: NOT_FOUND */
                l.count = j - i + 1;
                CHECK_ST(nixl_prep_xfer_dlist(a, NULL, &l, NULL, &h), NIXL_ERR_NOT_FOUND);
            }
        }
        i = j + 1;
    }
    nixl_agent_destroy(a);
    free(buf);
    free(d);
    free(in);
}

/* The strided form: 64 blocks of 256 bytes every 512 bytes, prepared as a
   layout on the target's side and as a plain list on ours, paired by
   index both ways round (and strided with strided); bytes checked. Its
   errors, and a deregistered region under a strided list. */
/* The count of descriptors the backend's last prep_xfer was handed. */
static size_t g_prep_count;
static nixl_status_t (*g_inner_prep)(void *, const nixl_xfer_args_t *, void **);
static nixl_status_t counting_prep(void *engine, const nixl_xfer_args_t *x, void **handle) {
    g_prep_count = x->count;
    return g_inner_prep(engine, x, handle);
}

/* make joins consecutive pairs contiguous on both sides within the same
   regions (NIXL's skip_desc_merge=False, the default); skip_desc_merge
   keeps one per pair; regions that merely touch are never joined; the
   bytes land the same either way. */
static void test_desc_merge(void) {
    enum { B = 64, NB = 8 };
    nixl_backend_ops_t ops = tb_make_ops("MERGE", NIXL_MEM_BIT(NIXL_DRAM));
    nixl_agent_t *init = mk_agent("init"), *target = mk_agent("target");
    unsigned char *src = (unsigned char *)malloc(4 * NB * B), *dst = (unsigned char *)calloc(4, NB * B);
    nixl_desc_t ld[NB], rd[NB];
    nixl_dlist_t ll = {NIXL_DRAM, ld, NB}, rl = {NIXL_DRAM, rd, NB};
    nixl_dlist_handle_t *lh = NULL, *rh = NULL;
    nixl_opt_args_t opt;
    int idx[NB], k, pass;
    g_inner_prep = ops.prep_xfer;
    ops.prep_xfer = counting_prep;
    if (!init || !target || !src || !dst || !mk_backend(init, &ops, NULL) || !mk_backend(target, &ops, NULL)) {
        CHECK(0);
        goto out;
    }
    /* ours: two regions that touch at src + 2*NB*B; the target's: one */
    CHECK_ST(reg(init, src, 2 * NB * B), NIXL_SUCCESS);
    CHECK_ST(reg(init, src + 2 * NB * B, 2 * NB * B), NIXL_SUCCESS);
    CHECK_ST(reg(target, dst, 4 * NB * B), NIXL_SUCCESS);
    CHECK_ST(exchange(target, init), NIXL_SUCCESS);
    for (k = 0; k < NB; k++) { /* runs: [0..3] [4] [5] [6..7]: 4 is elsewhere there, 6 starts our 2nd region */
        ld[k].addr = (uintptr_t)src + 2 * NB * B - 6 * B + (size_t)k * B;
        rd[k].addr = (uintptr_t)dst + (k == 4 ? 3 * NB * B : (size_t)k * B);
        ld[k].len = rd[k].len = B;
        ld[k].dev_id = rd[k].dev_id = 0;
        idx[k] = k;
    }
    CHECK_ST(nixl_prep_xfer_dlist(init, NULL, &ll, NULL, &lh), NIXL_SUCCESS);
    CHECK_ST(nixl_prep_xfer_dlist(init, "target", &rl, NULL, &rh), NIXL_SUCCESS);
    for (pass = 0; pass < 2; pass++) {
        nixl_xfer_req_t *r = NULL;
        nt_fill(src, 4 * NB * B, 11 + pass);
        memset(dst, 0, 4 * NB * B);
        memset(&opt, 0, sizeof opt);
        opt.skip_desc_merge = pass;
        g_prep_count = 0;
        CHECK_ST(nixl_make_xfer_req(init, NIXL_WRITE, lh, idx, NB, rh, idx, NB, &opt, &r), NIXL_SUCCESS);
        CHECK(g_prep_count == (pass ? (size_t)NB : 4u));
        if (!r) continue;
        CHECK(nixl_post_xfer_req(init, r, NULL) >= 0);
        CHECK_ST(wait_req(init, target, r), NIXL_SUCCESS);
        for (k = 0; k < NB && !memcmp((unsigned char *)rd[k].addr, (unsigned char *)ld[k].addr, B); k++) {
        }
        CHECK(k == NB);
        CHECK(dst[4 * B] == 0); /* pair 4 went elsewhere: the gap it left is untouched */
        nixl_release_xfer_req(init, r);
    }
    nixl_release_dlist_handle(init, lh);
    nixl_release_dlist_handle(init, rh);
out:
    nixl_agent_destroy(init);
    nixl_agent_destroy(target);
    free(src);
    free(dst);
}

static void test_strided_layout(void) {
    enum { BL = 256, ST = 512, NB = 64 };
    pair p;
    nixl_strided_t rs, ls;
    nixl_desc_t d[NB];
    nixl_dlist_t l = {NIXL_DRAM, d, NB};
    nixl_dlist_handle_t *lh = NULL, *rh = NULL, *lsh = NULL;
    nixl_xfer_req_t *r = NULL;
    int li[NB], ri[NB], k;
    size_t i;
    if (!pair_up(&p, (size_t)NB * ST, NULL)) goto out;
    for (k = 0; k < NB; k++) {
        d[k].addr = (uintptr_t)p.src + (size_t)k * BL; /* our blocks: packed */
        d[k].len = BL;
        d[k].dev_id = 0;
        li[k] = k;
        ri[k] = (k * 37) % NB; /* scattered over the target's blocks */
    }
    memset(&rs, 0, sizeof rs);
    rs.mem = NIXL_DRAM;
    rs.base = (uintptr_t)p.dst;
    rs.len = BL;
    rs.stride = ST;
    rs.count = NB;
    CHECK_ST(nixl_prep_xfer_dlist(p.init, NULL, &l, NULL, &lh), NIXL_SUCCESS);
    CHECK_ST(nixl_prep_xfer_dlist_strided(p.init, "target", &rs, NULL, &rh), NIXL_SUCCESS);
    CHECK_ST(nixl_make_xfer_req(p.init, NIXL_WRITE, lh, li, NB, rh, ri, NB, NULL, &r), NIXL_SUCCESS);
    CHECK(nixl_post_xfer_req(p.init, r, NULL) >= 0);
    CHECK_ST(wait_req(p.init, p.target, r), NIXL_SUCCESS);
    for (k = 0; k < NB && !memcmp(p.dst + (size_t)ri[k] * ST, p.src + (size_t)k * BL, BL); k++) {
    }
    CHECKF(k == NB, "block %d differs", k);
    for (i = 0; i < (size_t)NB * ST; i++) /* the gaps between blocks stay untouched */
        if (i % ST >= BL && p.dst[i]) break;
    CHECK(i == (size_t)NB * ST);
    nixl_release_xfer_req(p.init, r);
    /* strided on both sides: READ the target's blocks back into a strided
       layout of ours, every block shifted by one */
    ls = rs;
    ls.base = (uintptr_t)p.src;
    memset(p.src, 0, (size_t)NB * ST);
    for (k = 0; k < NB; k++) li[k] = (k + 1) % NB;
    CHECK_ST(nixl_prep_xfer_dlist_strided(p.init, NULL, &ls, NULL, &lsh), NIXL_SUCCESS);
    CHECK_ST(nixl_make_xfer_req(p.init, NIXL_READ, lsh, li, NB, rh, ri, NB, NULL, &r), NIXL_SUCCESS);
    CHECK(nixl_post_xfer_req(p.init, r, NULL) >= 0);
    CHECK_ST(wait_req(p.init, p.target, r), NIXL_SUCCESS);
    for (k = 0; k < NB && !memcmp(p.src + (size_t)li[k] * ST, p.dst + (size_t)ri[k] * ST, BL); k++) {
    }
    CHECKF(k == NB, "block %d read back differs", k);
    nixl_release_xfer_req(p.init, r);
    /* index past count */
    li[0] = NB;
    CHECK_ST(nixl_make_xfer_req(p.init, NIXL_READ, lsh, li, NB, rh, ri, NB, NULL, &r), NIXL_ERR_INVALID_PARAM);
    /* errors */
    ls.count = NB + 1; /* the last block past the region */
    CHECK_ST(nixl_prep_xfer_dlist_strided(p.init, NULL, &ls, NULL, &lh), NIXL_ERR_NOT_FOUND);
    CHECK(logged_item(NIXL_LOGITEM_STRIDED_NOT_IN_REGION));
    ls.count = 0;
    CHECK_ST(nixl_prep_xfer_dlist_strided(p.init, NULL, &ls, NULL, &lh), NIXL_ERR_INVALID_PARAM);
    ls.count = SIZE_MAX;
    CHECK_ST(nixl_prep_xfer_dlist_strided(p.init, NULL, &ls, NULL, &lh), NIXL_ERR_INVALID_PARAM);
    CHECK(logged_item(NIXL_LOGITEM_STRIDED_OVERFLOW));
    ls.count = NB;
    CHECK_ST(nixl_prep_xfer_dlist_strided(p.init, NULL, NULL, NULL, &lh), NIXL_ERR_INVALID_PARAM);
    CHECK_ST(nixl_prep_xfer_dlist_strided(p.init, "nobody", &ls, NULL, &lh), NIXL_ERR_NOT_FOUND);
    /* the region under a strided list goes: a request made from it fails */
    for (k = 0; k < NB; k++) li[k] = k;
    CHECK_ST(nixl_make_xfer_req(p.init, NIXL_READ, lsh, li, NB, rh, ri, NB, NULL, &r), NIXL_SUCCESS);
    CHECK_ST(dereg(p.init, p.src, (size_t)NB * ST), NIXL_SUCCESS);
    CHECK_ST(nixl_post_xfer_req(p.init, r, NULL), NIXL_ERR_NOT_FOUND);
    nixl_release_xfer_req(p.init, r);
    CHECK_ST(nixl_release_dlist_handle(p.init, lsh), NIXL_SUCCESS);
    CHECK_ST(nixl_release_dlist_handle(p.init, rh), NIXL_SUCCESS);
out:
    pair_down(&p);
}

/* found by fuzzing the verbs AM frames: a backend reporting an unnamed peer
   down (or a notification without a sender) must not crash the core */
static void test_backend_callbacks_hardened(void) {
    nixl_agent_t *a = mk_agent("hardened");
    nixl_backend_t *b = mk_backend(a, &OPS_A, NULL);
    notes ns;
    nixl_backend_peer_down(b, NULL);
    CHECK(logged_item(NIXL_LOGITEM_PEER_DOWN_UNNAMED));
    nixl_backend_notif(b, NULL, "x", 1);
    CHECK(logged_item(NIXL_LOGITEM_NOTIF_NO_SENDER));
    memset(&ns, 0, sizeof ns);
    CHECK_ST(nixl_get_notifs(a, note_cb, &ns), NIXL_SUCCESS);
    CHECK(ns.n == 0);
    nixl_agent_destroy(a);
}

/* nixl_load_remote_md is all or nothing: fail each allocation of a load in
   turn (a new peer, then more regions of a known one); every failure leaves
   the agent exactly as before, nothing leaks, and the load then succeeds. */
static void test_load_md_all_or_nothing(void) {
    nixl_agent_t *a = mk_agent("alpha"), *b = mk_agent("beta");
    unsigned char buf[16384];
    nixl_desc_t d[3] = {{(uintptr_t)buf, 1024, 0}, {(uintptr_t)buf + 4096, 2048, 0}, {(uintptr_t)buf + 8192, 512, 0}};
    nixl_dlist_t first = {NIXL_DRAM, d, 2}, more = {NIXL_DRAM, d + 2, 1};
    void *blob = NULL, *blob2 = NULL;
    size_t len = 0, len2 = 0;
    long nth, failed = 0, live;
    int stage;
    mk_backend(a, &OPS_A, NULL);
    mk_backend(a, &OPS_B, NULL);
    mk_backend(b, &OPS_A, NULL);
    mk_backend(b, &OPS_B, NULL);
    CHECK_ST(nixl_register_mem(a, &first, NULL), NIXL_SUCCESS);
    CHECK_ST(nixl_get_local_md(a, &blob, &len), NIXL_SUCCESS);
    CHECK_ST(nixl_register_mem(a, &more, NULL), NIXL_SUCCESS);
    CHECK_ST(nixl_get_local_partial_md(a, &more, NULL, &blob2, &len2), NIXL_SUCCESS);
    for (stage = 0; stage < 2; stage++) {
        const void *bl = stage ? blob2 : blob;
        size_t bn = stage ? len2 : len;
        for (nth = 1;; nth++) {
            nixl_status_t st;
            live = n_alloc - n_free;
            fail_nth_alloc(nth);
            st = nixl_load_remote_md(b, bl, bn, NULL, 0);
            fail_nth_alloc(0);
            if (st == NIXL_SUCCESS) break; /* past the last allocation */
            failed++;
            CHECKF(st == NIXL_ERR_BACKEND, "allocation %ld failed: %s", nth, nixl_status_str(st));
            CHECKF(n_alloc - n_free == live, "allocation %ld failed: %ld blocks leaked", nth, n_alloc - n_free - live);
            if (stage == 0)
                CHECKF(nixl_check_remote_md(b, "alpha", NULL) == NIXL_ERR_NOT_FOUND,
                       "allocation %ld failed: the peer is not loaded at all", nth);
            else
                CHECKF(nixl_check_remote_md(b, "alpha", &first) == NIXL_SUCCESS &&
                           nixl_check_remote_md(b, "alpha", &more) == NIXL_ERR_NOT_FOUND,
                       "allocation %ld failed: the earlier regions stay, the new one is not there", nth);
            if (nth > 200) break;
        }
        CHECKF(nth > 1 && nth <= 200, "stage %d: the load needs %ld allocations", stage, nth - 1);
    }
    CHECK(failed > 4);
    CHECK_ST(nixl_check_remote_md(b, "alpha", &first), NIXL_SUCCESS);
    CHECK_ST(nixl_check_remote_md(b, "alpha", &more), NIXL_SUCCESS);
    nixl_free_md(a, blob);
    nixl_free_md(a, blob2);
    nixl_agent_destroy(b);
    nixl_agent_destroy(a);
}

/* The receiver bounds its notification queue per sender and in total: a
   flooding sender's surplus is dropped (logged when it starts, counted at
   the next drain), another sender still gets through, and after the
   application drains the queue the flooder is heard again. */
static void test_notif_queue_bounded(void) {
    nixl_agent_config_t cfg;
    nixl_agent_t *t = NULL, *s1 = mk_agent("flood"), *s2 = mk_agent("calm");
    notes ns;
    char msg[100];
    int i, from_flood = 0, from_calm = 0;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "sink";
    cfg.log_item_fn = capture_log_item;
    cfg.alloc_fn = count_alloc;
    cfg.free_fn = count_free;
    cfg.notif_queue_peer_bytes = 4096;
    cfg.notif_queue_bytes = 6000;
    CHECK_ST(nixl_agent_create(&cfg, &t), NIXL_SUCCESS);
    if (!t || !s1 || !s2) goto out;
    mk_backend(t, &OPS_A, NULL);
    mk_backend(s1, &OPS_A, NULL);
    mk_backend(s2, &OPS_A, NULL);
    exchange(t, s1);
    exchange(t, s2);
    memset(msg, 'f', sizeof msg);
    for (i = 0; i < 100; i++) nixl_gen_notif(s1, "sink", msg, sizeof msg, NULL);
    for (i = 0; i < 5; i++) nixl_gen_notif(s2, "sink", "calm", 4, NULL);
    memset(&ns, 0, sizeof ns);
    nixl_get_notifs(t, note_cb, &ns);
    CHECKF(seen_item(NIXL_LOGITEM_NOTIF_DROPS_BEGIN),
           "the drops were logged when they began");
    CHECK(logged_item(NIXL_LOGITEM_NOTIF_DROPS_COUNTED));
    for (i = 0; i < ns.n && i < 64; i++) {
        from_flood += !strcmp(ns.sender[i], "flood");
        from_calm += !strcmp(ns.sender[i], "calm");
    }
    CHECKF(from_flood > 10 && from_flood * (int)(sizeof msg + 6) <= 4096,
           "the flooder got %d of 100 queued (4096 bytes each sender)", from_flood);
    CHECKF(from_calm == 5, "the other sender's 5 arrived (%d)", from_calm);
    /* drained: heard again */
    CHECK_ST(nixl_gen_notif(s1, "sink", "again", 5, NULL), NIXL_SUCCESS);
    memset(&ns, 0, sizeof ns);
    nixl_get_notifs(t, note_cb, &ns);
    CHECK(ns.n == 1 && !strcmp(ns.msg[0], "again"));
out:
    nixl_agent_destroy(t);
    nixl_agent_destroy(s1);
    nixl_agent_destroy(s2);
}

static void test_allocator_balance(void) {
    /* every test agent used the counting allocator: all freed again (run
       alone, e.g. isolated in a child, it makes and drops an agent first) */
    if (n_alloc == 0) {
        nixl_agent_t *a = mk_agent("balance");
        unsigned char buf[64];
        if (a) mk_backend(a, &OPS_A, NULL);
        if (a) reg(a, buf, sizeof buf);
        nixl_agent_destroy(a);
    }
    CHECKF(n_alloc > 0 && n_alloc == n_free, "alloc %ld free %ld", n_alloc, n_free);
}

int main(int argc, char **argv) {
    nt_init(argc, argv);
    OPS_A = tb_make_ops("LOOP_A", NIXL_MEM_BIT(NIXL_DRAM));
    OPS_B = tb_make_ops("LOOP_B", NIXL_MEM_BIT(NIXL_DRAM));
    OPS_V = tb_make_ops("LOOP_V", NIXL_MEM_BIT(NIXL_VRAM));
    NT_RUN(test_status_strings);
    NT_RUN(test_agent_create);
    NT_RUN(test_backend_params);
    NT_RUN(test_register_rules);
    NT_RUN(test_register_all_or_nothing);
    NT_RUN(test_metadata_roundtrip);
    NT_RUN(test_metadata_incremental_and_conflicts);
    NT_RUN(test_partial_md);
    NT_RUN(test_metadata_size);
    NT_RUN(test_metadata_corrupt);
    NT_RUN(test_metadata_region_count_lie);
    NT_RUN(test_write_read_notif);
    NT_RUN(test_request_validation);
    NT_RUN(test_make_by_indices);
    NT_RUN(test_backend_selection);
    NT_RUN(test_dereg_and_invalidate_block_posts);
    NT_RUN(test_peer_death);
    NT_RUN(test_release_in_flight);
    NT_RUN(test_inline_telemetry_estimate);
    NT_RUN(test_gen_notif_order);
    NT_RUN(test_loopback);
    NT_RUN(test_threads_and_progress_thread);
    NT_RUN(test_many_descriptors);
    NT_RUN(test_overlapping_lookup);
    NT_RUN(test_lookup_against_brute_force);
    NT_RUN(test_strided_layout);
    NT_RUN(test_desc_merge);
    NT_RUN(test_etcd_env_without_etcd);
    NT_RUN(test_backend_callbacks_hardened);
    NT_RUN(test_load_md_all_or_nothing);
    NT_RUN(test_notif_queue_bounded);
    NT_RUN(test_allocator_balance);
    return nt_finish();
}
