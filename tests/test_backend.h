/* test_backend.h — an in-process backend for unit tests of the core.

   This is the one place a stand-in backend is allowed: it moves bytes with
   memcpy between agents of the same process, so the core's bookkeeping
   (registration, metadata, lookup, selection, request lifecycle,
   notifications) can be tested without a network. Real transports are
   tested in test_verbs.c (Soft-RoCE) and test_ucx.c (UCX).

   tb_ops(name) gives a vtable named `name` (so an agent can hold two).
   Params:
     inline=1     post completes inside post_xfer (returns NIXL_SUCCESS)
     nocopy=1     post moves no bytes (for measuring the core's post path)
     abort=0      release_xfer refuses while in flight (NIXL_ERR_REPOST_ACTIVE)
     conn=S       suffix appended to its connection info (to fake a change)
     notif_max=N  largest notification (default 4096)
   A request completes at the initiator's next progress after it was posted;
   its notification then lands in the target's inbox, delivered at the
   target's next progress — after the bytes, as the contract requires.
   An engine that is destroyed (its agent gone) counts as a dead peer.
*/
#ifndef NIXL_TEST_BACKEND_H
#define NIXL_TEST_BACKEND_H

#include "../nixl.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct tb_note {
    struct tb_note *next;
    char sender[256];
    size_t len;
    unsigned char msg[];
} tb_note;

typedef struct tb_engine {
    nixl_backend_t *self;
    const char *opsname;
    char agent[256];
    char conn[300];
    int inline_post, nocopy, abort_ok;
    size_t notif_max;
    unsigned long long next_key;
    struct tb_engine *next; /* registry */
    tb_note *in_head, *in_tail;
    struct tb_req *inflight;
    struct tb_req *all;
    char known[16][256]; /* peers whose conn info was loaded */
    int nknown;
} tb_engine;

typedef struct tb_md {
    uintptr_t addr;
    size_t len;
    unsigned long long key;
    unsigned char pub[8];
    int live;
    struct tb_md *next;
} tb_md;

typedef struct tb_rmd {
    uintptr_t addr;
    size_t len;
    unsigned long long key;
    char remote[256];
} tb_rmd;

typedef struct tb_desc {
    uintptr_t laddr, raddr;
    size_t len;
    const tb_rmd *rmd;
} tb_desc;

typedef struct tb_req {
    tb_engine *e;
    nixl_xfer_op_t op;
    char remote[256];
    size_t n;
    tb_desc *d;
    nixl_status_t status;
    unsigned char notif[4096];
    size_t notif_len;
    int has_notif;
    struct tb_req *next_inflight;
    int queued;
    struct tb_req *all_next; /* every live request of the engine */
} tb_req;

static pthread_mutex_t tb_lock = PTHREAD_MUTEX_INITIALIZER;
static tb_engine *tb_engines;
static tb_md *tb_live_mds; /* every live registration of every engine */

static tb_engine *tb_find_engine(const char *agent, const char *opsname) {
    tb_engine *e;
    for (e = tb_engines; e; e = e->next)
        if (!strcmp(e->agent, agent) && !strcmp(e->opsname, opsname)) return e;
    return NULL;
}

/* a registration with this key is still live (an "rkey check") */
static int tb_key_live(unsigned long long key, uintptr_t addr, size_t len) {
    tb_md *m;
    for (m = tb_live_mds; m; m = m->next)
        if (m->key == key) return m->live && addr >= m->addr && addr + len <= m->addr + m->len;
    return 0;
}

static const char *tb_name_of(const nixl_backend_init_t *init) { return nixl_backend_name(init->self); }

static nixl_status_t tb_create(const nixl_backend_init_t *init, void **engine) {
    tb_engine *e = (tb_engine *)calloc(1, sizeof *e);
    uint64_t v;
    const char *conn;
    if (!e) return NIXL_ERR_BACKEND;
    e->self = init->self;
    e->opsname = tb_name_of(init);
    snprintf(e->agent, sizeof e->agent, "%s", init->agent_name);
    e->abort_ok = 1;
    e->notif_max = 4096;
    if (nixl_param_u64(init, "inline", 0, 0, 1, &v) != NIXL_SUCCESS) goto bad;
    e->inline_post = (int)v;
    if (nixl_param_u64(init, "nocopy", 0, 0, 1, &v) != NIXL_SUCCESS) goto bad;
    e->nocopy = (int)v;
    if (nixl_param_u64(init, "abort", 1, 0, 1, &v) != NIXL_SUCCESS) goto bad;
    e->abort_ok = (int)v;
    if (nixl_param_u64(init, "notif_max", 4096, 0, 4096, &v) != NIXL_SUCCESS) goto bad;
    e->notif_max = (size_t)v;
    conn = nixl_param_get(init, "conn");
    snprintf(e->conn, sizeof e->conn, "%s%s", init->agent_name, conn ? conn : "");
    e->next_key = ((unsigned long long)(uintptr_t)e << 16) ^ 0x5a5aull;
    pthread_mutex_lock(&tb_lock);
    e->next = tb_engines;
    tb_engines = e;
    pthread_mutex_unlock(&tb_lock);
    *engine = e;
    return NIXL_SUCCESS;
bad:
    free(e);
    return NIXL_ERR_INVALID_PARAM;
}

static void tb_destroy(void *engine) {
    tb_engine *e = (tb_engine *)engine, **pp;
    pthread_mutex_lock(&tb_lock);
    for (pp = &tb_engines; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    while (e->in_head) {
        tb_note *n = e->in_head;
        e->in_head = n->next;
        free(n);
    }
    pthread_mutex_unlock(&tb_lock);
    while (e->all) { /* requests whose release was refused */
        tb_req *r = e->all;
        e->all = r->all_next;
        free(r->d);
        free(r);
    }
    free(e);
}

static nixl_status_t tb_register(void *engine, nixl_mem_t mem, const nixl_desc_t *d, void **md) {
    tb_engine *e = (tb_engine *)engine;
    tb_md *m = (tb_md *)calloc(1, sizeof *m);
    (void)mem;
    if (!m) return NIXL_ERR_BACKEND;
    m->addr = d->addr;
    m->len = d->len;
    m->key = e->next_key++;
    memcpy(m->pub, &m->key, 8);
    m->live = 1;
    pthread_mutex_lock(&tb_lock);
    m->next = tb_live_mds;
    tb_live_mds = m;
    pthread_mutex_unlock(&tb_lock);
    *md = m;
    return NIXL_SUCCESS;
}

static void tb_deregister(void *engine, void *md) {
    tb_md **pp;
    (void)engine;
    pthread_mutex_lock(&tb_lock);
    for (pp = &tb_live_mds; *pp; pp = &(*pp)->next)
        if (*pp == md) {
            *pp = ((tb_md *)md)->next;
            break;
        }
    pthread_mutex_unlock(&tb_lock);
    free(md);
}

static nixl_status_t tb_public(void *engine, void *md, const void **data, size_t *len) {
    (void)engine;
    *data = ((tb_md *)md)->pub;
    *len = 8;
    return NIXL_SUCCESS;
}

static nixl_status_t tb_conn_info(void *engine, const void **info, size_t *len) {
    tb_engine *e = (tb_engine *)engine;
    *info = e->conn;
    *len = strlen(e->conn);
    return NIXL_SUCCESS;
}

static nixl_status_t tb_load_conn(void *engine, const char *remote, const void *info, size_t len) {
    tb_engine *e = (tb_engine *)engine;
    (void)info;
    (void)len;
    if (e->nknown == 16) return NIXL_ERR_BACKEND;
    snprintf(e->known[e->nknown++], 256, "%s", remote);
    return NIXL_SUCCESS;
}

static nixl_status_t tb_connect(void *engine, const char *remote) {
    (void)engine;
    (void)remote;
    return NIXL_SUCCESS;
}

static nixl_status_t tb_disconnect(void *engine, const char *remote) {
    tb_engine *e = (tb_engine *)engine;
    int i;
    for (i = 0; i < e->nknown; i++)
        if (!strcmp(e->known[i], remote)) {
            memmove(e->known[i], e->known[i + 1], (size_t)(e->nknown - i - 1) * 256);
            e->nknown--;
            break;
        }
    return NIXL_SUCCESS;
}

static nixl_status_t tb_load_remote(void *engine, const char *remote, nixl_mem_t mem, const nixl_desc_t *d,
                                    const void *pub, size_t len, void **rmd) {
    tb_rmd *r;
    (void)engine;
    (void)mem;
    if (len != 8) return NIXL_ERR_INVALID_PARAM;
    r = (tb_rmd *)calloc(1, sizeof *r);
    if (!r) return NIXL_ERR_BACKEND;
    r->addr = d->addr;
    r->len = d->len;
    memcpy(&r->key, pub, 8);
    snprintf(r->remote, sizeof r->remote, "%s", remote);
    *rmd = r;
    return NIXL_SUCCESS;
}

static nixl_status_t tb_load_local(void *engine, void *md, void **rmd) {
    tb_engine *e = (tb_engine *)engine;
    tb_md *m = (tb_md *)md;
    nixl_desc_t d;
    d.addr = m->addr;
    d.len = m->len;
    d.dev_id = 0;
    return tb_load_remote(engine, e->agent, NIXL_DRAM, &d, m->pub, 8, rmd);
}

static void tb_unload(void *engine, void *rmd) {
    (void)engine;
    free(rmd);
}

static nixl_status_t tb_prep(void *engine, const nixl_xfer_args_t *x, void **handle) {
    tb_req *r = (tb_req *)calloc(1, sizeof *r);
    size_t i;
    if (!r) return NIXL_ERR_BACKEND;
    r->d = (tb_desc *)malloc((x->count ? x->count : 1) * sizeof *r->d); /* every field is set below */
    if (!r->d) {
        free(r);
        return NIXL_ERR_BACKEND;
    }
    for (i = 0; i < x->count; i++) {
        r->d[i].laddr = x->descs[i].laddr;
        r->d[i].raddr = x->descs[i].raddr;
        r->d[i].len = x->descs[i].len;
        r->d[i].rmd = (const tb_rmd *)x->descs[i].rmd;
    }
    r->e = (tb_engine *)engine;
    r->op = x->op;
    r->n = x->count;
    snprintf(r->remote, sizeof r->remote, "%s", x->remote);
    r->status = NIXL_ERR_NOT_POSTED;
    r->all_next = r->e->all;
    r->e->all = r;
    *handle = r;
    return NIXL_SUCCESS;
}

static void tb_deliver(tb_engine *target, const char *sender, const void *msg, size_t len) {
    tb_note *n = (tb_note *)malloc(sizeof *n + len + 1);
    if (!n) return;
    n->next = NULL;
    snprintf(n->sender, sizeof n->sender, "%s", sender);
    n->len = len;
    if (len) memcpy(n->msg, msg, len);
    if (target->in_tail) target->in_tail->next = n;
    else target->in_head = n;
    target->in_tail = n;
}

/* moves the bytes, like the NIC would: every remote access is checked
   against the target's live registrations first */
static void tb_complete(tb_req *r) {
    tb_engine *target;
    size_t i;
    pthread_mutex_lock(&tb_lock);
    target = tb_find_engine(r->remote, r->e->opsname);
    if (!target) {
        r->status = NIXL_ERR_REMOTE_DISCONNECT;
        pthread_mutex_unlock(&tb_lock);
        nixl_backend_peer_down(r->e->self, r->remote);
        return;
    }
    r->status = NIXL_SUCCESS;
    for (i = 0; i < r->n && !r->e->nocopy; i++) {
        tb_desc *d = &r->d[i];
        if (!tb_key_live(d->rmd->key, d->raddr, d->len)) {
            r->status = NIXL_ERR_BACKEND; /* a NIC's remote access error */
            break;
        }
        if (r->op == NIXL_WRITE) memcpy((void *)d->raddr, (const void *)d->laddr, d->len);
        else memcpy((void *)d->laddr, (const void *)d->raddr, d->len);
    }
    if (r->status == NIXL_SUCCESS && r->has_notif) tb_deliver(target, r->e->agent, r->notif, r->notif_len);
    pthread_mutex_unlock(&tb_lock);
    if (r->status != NIXL_SUCCESS)
        nixl_backend_log(r->e->self, NIXL_LOG_ERROR, "transfer to %s failed: remote access error", r->remote);
}

static nixl_status_t tb_post(void *engine, void *handle, const void *notif, size_t len, int has_notif) {
    tb_engine *e = (tb_engine *)engine;
    tb_req *r = (tb_req *)handle;
    if (has_notif && len > e->notif_max) return NIXL_ERR_INVALID_PARAM;
    r->has_notif = has_notif;
    r->notif_len = len;
    if (len) memcpy(r->notif, notif, len);
    if (e->inline_post) {
        tb_complete(r);
        return r->status;
    }
    r->status = NIXL_IN_PROG;
    if (!r->queued) {
        r->next_inflight = e->inflight;
        e->inflight = r;
        r->queued = 1;
    }
    return NIXL_IN_PROG;
}

static nixl_status_t tb_check(void *engine, void *handle) {
    (void)engine;
    return ((tb_req *)handle)->status;
}

static void tb_unqueue(tb_engine *e, tb_req *r) {
    tb_req **pp;
    for (pp = &e->inflight; *pp; pp = &(*pp)->next_inflight)
        if (*pp == r) {
            *pp = r->next_inflight;
            break;
        }
    r->queued = 0;
}

static nixl_status_t tb_release(void *engine, void *handle) {
    tb_engine *e = (tb_engine *)engine;
    tb_req *r = (tb_req *)handle;
    tb_req **pp;
    if (r->status == NIXL_IN_PROG && !e->abort_ok) return NIXL_ERR_REPOST_ACTIVE;
    tb_unqueue(e, r);
    for (pp = &e->all; *pp; pp = &(*pp)->all_next)
        if (*pp == r) {
            *pp = r->all_next;
            break;
        }
    free(r->d);
    free(r);
    return NIXL_SUCCESS;
}

static nixl_status_t tb_estimate(void *engine, void *handle, int64_t *dur, int64_t *margin) {
    tb_req *r = (tb_req *)handle;
    size_t i;
    int64_t bytes = 0;
    (void)engine;
    for (i = 0; i < r->n; i++) bytes += (int64_t)r->d[i].len;
    *dur = bytes / 1000 + 1; /* "1 GB/s" */
    *margin = *dur / 10;
    return NIXL_SUCCESS;
}

static nixl_status_t tb_gen_notif(void *engine, const char *remote, const void *msg, size_t len) {
    tb_engine *e = (tb_engine *)engine, *target;
    if (len > e->notif_max) {
        nixl_backend_log(e->self, NIXL_LOG_ERROR, "gen_notif: %zu bytes > notif_max %zu", len, e->notif_max);
        return NIXL_ERR_INVALID_PARAM;
    }
    pthread_mutex_lock(&tb_lock);
    target = tb_find_engine(remote, e->opsname);
    if (target) tb_deliver(target, e->agent, msg, len);
    pthread_mutex_unlock(&tb_lock);
    return target ? NIXL_SUCCESS : NIXL_ERR_REMOTE_DISCONNECT;
}

static nixl_status_t tb_progress(void *engine) {
    tb_engine *e = (tb_engine *)engine;
    tb_note *notes;
    int did = 0;
    while (e->inflight) {
        tb_req *r = e->inflight;
        tb_unqueue(e, r);
        tb_complete(r);
        did = 1;
    }
    pthread_mutex_lock(&tb_lock);
    notes = e->in_head;
    e->in_head = e->in_tail = NULL;
    pthread_mutex_unlock(&tb_lock);
    while (notes) {
        tb_note *n = notes;
        notes = n->next;
        nixl_backend_notif(e->self, n->sender, n->msg, n->len);
        free(n);
        did = 1;
    }
    return did ? NIXL_IN_PROG : NIXL_SUCCESS;
}

static const char *const tb_keys[] = {"inline", "nocopy", "abort", "conn", "notif_max", NULL};

/* A vtable named `name` that registers the memory types of mem_mask. */
static nixl_backend_ops_t tb_make_ops(const char *name, unsigned mem_mask) {
    nixl_backend_ops_t o;
    memset(&o, 0, sizeof o);
    o.name = name;
    o.abi = NIXL_BACKEND_ABI;
    o.mem_mask = mem_mask;
    o.caps = NIXL_CAP_NOTIF | NIXL_CAP_LOCAL | NIXL_CAP_REMOTE;
    o.param_keys = tb_keys;
    o.create = tb_create;
    o.destroy = tb_destroy;
    o.register_mem = tb_register;
    o.deregister_mem = tb_deregister;
    o.get_public_data = tb_public;
    o.get_conn_info = tb_conn_info;
    o.load_remote_conn_info = tb_load_conn;
    o.connect = tb_connect;
    o.disconnect = tb_disconnect;
    o.load_remote_md = tb_load_remote;
    o.load_local_md = tb_load_local;
    o.unload_md = tb_unload;
    o.prep_xfer = tb_prep;
    o.post_xfer = tb_post;
    o.check_xfer = tb_check;
    o.release_xfer = tb_release;
    o.estimate_cost = tb_estimate;
    o.gen_notif = tb_gen_notif;
    o.progress = tb_progress;
    return o;
}

#endif
