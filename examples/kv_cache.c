/* kv_cache.c — the job nixl.h exists for: moving KV-cache blocks from a
   prefill process to a decode process, shaped like vLLM's NIXL connector.

   The prefill process owns a KV cache laid out as
       layers x {K, V} x blocks x block_bytes
   registers it once and serves its metadata on a TCP port. A decode process
   fetches that metadata, prepares one descriptor per (layer, K/V, block) on
   both sides with nixl_prep_xfer_dlist, and then, for a stream of requests,
   READs the blocks of each request with nixl_make_xfer_req by indices,
   attaching a notification that names the request (the prefill side can
   free those blocks when it arrives). Only full blocks move: a prompt
   shorter than one block moves nothing and posts nothing. Every byte that
   arrives is checked against the pattern the prefill side wrote.

   --hetero-tp: decode tensor parallelism is twice prefill's. Two decode
   ranks each read their half of the KV heads out of every block (the block
   is laid out heads-major, so a rank's half is one contiguous half-block).

     ./kv_cache [--backend VERBS|UCX] [--layers N] [--blocks N]
                [--block-bytes N] [--tokens-per-block N] [--requests N]
                [--max-prompt TOKENS] [--hetero-tp] [--seed N]
     ./kv_cache --role prefill --listen-addr A.B.C.D [--port P] ...   (two machines:)
     ./kv_cache --role decode --ip A.B.C.D --port P ...
   Without an auth token (NIXL_AUTH_TOKEN) the metadata listener binds
   127.0.0.1 unless --listen-addr names the address peers reach.

   Exit status 0 when every request finished and every byte matched. */
#define NIXL_IMPLEMENTATION
#include "../nixl_ucx.h"
#include "../nixl_verbs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct opts {
    const char *backend, *role, *ip, *listen_addr;
    unsigned port;
    size_t layers, blocks, block_bytes, tokens_per_block, requests, max_prompt;
    int ranks; /* decode ranks: 2 with --hetero-tp */
    unsigned seed;
} opts;

static opts o = {"VERBS", "both", "127.0.0.1", NULL, 0, 4, 256, 16384, 16, 64, 1024, 1, 1};

static void check(nixl_status_t st, const char *what) {
    if (st != NIXL_SUCCESS) {
        fprintf(stderr, "kv_cache: %s: %s\n", what, nixl_status_str(st));
        exit(1);
    }
}

/* the byte at offset `off` of block `block` of (layer, kv) */
static unsigned char kv_byte(size_t layer, size_t kv, size_t block, size_t off) {
    return (unsigned char)(layer * 131u + kv * 71u + block * 29u + off * 7u + (off >> 8) * 3u);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static nixl_agent_t *make_agent(const char *name, int listen, unsigned port) {
    nixl_agent_config_t cfg;
    nixl_agent_t *a;
    nixl_backend_t *b;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = name;
    cfg.listen_thread = listen;
    cfg.listen_port = (uint16_t)port;
    cfg.listen_addr = o.listen_addr; /* NULL: loopback without an auth token (NIXL_AUTH_TOKEN) */
    check(nixl_agent_create(&cfg, &a), "agent_create");
    check(nixl_create_backend(a, strcmp(o.backend, "UCX") ? nixl_verbs_backend() : nixl_ucx_backend(), NULL, &b),
          "create_backend");
    return a;
}

static void register_region(nixl_agent_t *a, void *p, size_t len) {
    nixl_desc_t d = {(uintptr_t)p, len, 0};
    nixl_dlist_t l = {NIXL_DRAM, &d, 1};
    check(nixl_register_mem(a, &l, NULL), "register_mem");
}

/* ---- prefill ------------------------------------------------------------ */

typedef struct prefill_state {
    nixl_agent_t *a;
    uintptr_t cache;
    int done_ranks;
    size_t req_notifs, posted_total;
} prefill_state;

static void prefill_on_notif(void *user, const char *from, const void *msg, size_t len) {
    prefill_state *p = (prefill_state *)user;
    char text[128];
    if (len >= sizeof text) len = sizeof text - 1;
    memcpy(text, msg, len);
    text[len] = 0;
    if (!strcmp(text, "hello")) {
        /* a decode rank asks where the cache is and how it is laid out */
        char layout[128];
        snprintf(layout, sizeof layout, "layout %llx %zu %zu %zu", (unsigned long long)p->cache, o.layers, o.blocks,
                 o.block_bytes);
        check(nixl_gen_notif(p->a, from, layout, strlen(layout), NULL), "gen_notif(layout)");
    } else if (!strncmp(text, "req-", 4)) {
        p->req_notifs++; /* here vLLM would free the request's blocks */
    } else if (!strncmp(text, "done ", 5)) {
        p->posted_total += (size_t)strtoull(text + 5, NULL, 10);
        p->done_ranks++;
    }
}

static int prefill(int port_pipe) {
    size_t cache_bytes = o.layers * 2 * o.blocks * o.block_bytes, l, kv, b, off;
    unsigned char *cache = (unsigned char *)malloc(cache_bytes);
    prefill_state p;
    uint16_t port;
    memset(&p, 0, sizeof p);
    if (!cache) return 1;
    for (l = 0; l < o.layers; l++)
        for (kv = 0; kv < 2; kv++)
            for (b = 0; b < o.blocks; b++) {
                unsigned char *blk = cache + ((l * 2 + kv) * o.blocks + b) * o.block_bytes;
                for (off = 0; off < o.block_bytes; off++) blk[off] = kv_byte(l, kv, b, off);
            }
    p.a = make_agent("prefill-0", 1, o.port);
    p.cache = (uintptr_t)cache;
    register_region(p.a, cache, cache_bytes); /* once, the whole cache */
    port = nixl_agent_listen_port(p.a);
    if (port_pipe >= 0) {
        int r;
        for (r = 0; r < o.ranks; r++) /* one copy for each decode rank */
            if (write(port_pipe, &port, sizeof port) != sizeof port) return 1;
        close(port_pipe);
    } else {
        printf("prefill: serving metadata on port %u\n", (unsigned)port);
    }
    while (p.done_ranks < o.ranks) check(nixl_get_notifs(p.a, prefill_on_notif, &p), "get_notifs");
    /* the request notifications travel in order behind their data, before "done" */
    if (p.req_notifs != p.posted_total) {
        fprintf(stderr, "prefill: %zu request notifications, decode posted %zu\n", p.req_notifs, p.posted_total);
        return 1;
    }
    printf("prefill: %zu request notifications received from %d decode rank(s)\n", p.req_notifs, o.ranks);
    nixl_agent_destroy(p.a);
    free(cache);
    return 0;
}

/* ---- decode ------------------------------------------------------------- */

typedef struct layout_msg { int have; uintptr_t base; size_t layers, blocks, block_bytes; } layout_msg;

static void decode_on_notif(void *user, const char *from, const void *msg, size_t len) {
    layout_msg *lm = (layout_msg *)user;
    char text[128];
    unsigned long long base;
    (void)from;
    if (len >= sizeof text) len = sizeof text - 1;
    memcpy(text, msg, len);
    text[len] = 0;
    if (sscanf(text, "layout %llx %zu %zu %zu", &base, &lm->layers, &lm->blocks, &lm->block_bytes) == 4) {
        lm->base = (uintptr_t)base;
        lm->have = 1;
    }
}

/* Fills descs with one entry per (layer, kv, block): block j of (l, kv) at
   base + ((l*2+kv)*nblocks + j)*stride + skew, part bytes long. */
static nixl_desc_t *block_descs(uintptr_t base, size_t nblocks, size_t stride, size_t skew, size_t part) {
    nixl_desc_t *d = (nixl_desc_t *)malloc(o.layers * 2 * nblocks * sizeof *d);
    size_t i;
    for (i = 0; d && i < o.layers * 2 * nblocks; i++) {
        d[i].addr = base + i * stride + skew;
        d[i].len = part;
        d[i].dev_id = 0;
    }
    return d;
}

/* A decode rank's state: its agent, its cache (room for the largest
   request, its share of each block), both sides prepared once. */
typedef struct decoder {
    int rank;
    nixl_agent_t *a;
    nixl_opt_args_t at; /* prefill's listener */
    layout_msg lm;
    size_t part, max_blocks, local_bytes;
    unsigned char *local;
    nixl_desc_t *ld, *rd;
    nixl_dlist_handle_t *lh, *rh;
    int *lidx, *ridx;
    size_t *chosen;
    unsigned seed;
    size_t posted, skipped, bytes, bad;
    double t_xfer;
} decoder;

/* Prefill's metadata: a fetch runs in the background and fails (logged) if
   nobody listens yet, so ask again every second, for a minute. */
static int decode_fetch(decoder *d) {
    int tries;
    for (tries = 0; tries < 60; tries++) {
        int ms;
        check(nixl_fetch_remote_md(d->a, "prefill-0", &d->at), "fetch_remote_md");
        for (ms = 0; ms < 1000; ms += 10) {
            if (nixl_check_remote_md(d->a, "prefill-0", NULL) == NIXL_SUCCESS) return 0;
            usleep(10000);
        }
    }
    fprintf(stderr, "decode-%d: no metadata from prefill-0 at %s:%u within 60 s\n", d->rank, o.ip, d->at.port);
    return 1;
}

/* Step 1: metadata. Fetch prefill's, push ours, and learn its layout
   (prefill answers our hello with it). 0 on success. */
static int decode_connect(decoder *d, unsigned port) {
    char name[32];
    snprintf(name, sizeof name, "decode-%d", d->rank);
    d->a = make_agent(name, 0, 0);
    memset(&d->at, 0, sizeof d->at);
    d->at.ip = o.ip;
    d->at.port = (uint16_t)port;
    if (decode_fetch(d) != 0) return 1;
    check(nixl_send_local_md(d->a, &d->at), "send_local_md");
    memset(&d->lm, 0, sizeof d->lm);
    check(nixl_gen_notif(d->a, "prefill-0", "hello", 5, NULL), "gen_notif(hello)");
    while (!d->lm.have) check(nixl_get_notifs(d->a, decode_on_notif, &d->lm), "get_notifs");
    if (d->lm.layers != o.layers || d->lm.blocks != o.blocks || d->lm.block_bytes != o.block_bytes) {
        fprintf(stderr, "decode-%d: prefill's layout differs from ours\n", d->rank);
        return 1;
    }
    return 0;
}

/* Step 2: register our cache and prepare every (layer, kv, block) on both
   sides, once. */
static void decode_prepare(decoder *d) {
    nixl_dlist_t ll, rl;
    d->part = o.block_bytes / (size_t)o.ranks;
    d->max_blocks = o.max_prompt / o.tokens_per_block;
    if (d->max_blocks == 0) d->max_blocks = 1;
    d->local_bytes = o.layers * 2 * d->max_blocks * d->part;
    d->local = (unsigned char *)calloc(1, d->local_bytes);
    register_region(d->a, d->local, d->local_bytes);
    d->ld = block_descs((uintptr_t)d->local, d->max_blocks, d->part, 0, d->part);
    d->rd = block_descs(d->lm.base, o.blocks, o.block_bytes, (size_t)d->rank * d->part, d->part);
    ll.mem = rl.mem = NIXL_DRAM;
    ll.descs = d->ld;
    ll.count = o.layers * 2 * d->max_blocks;
    rl.descs = d->rd;
    rl.count = o.layers * 2 * o.blocks;
    /* prefill answers our hello only once its cache is registered; metadata
       fetched before that (its listener starts with the agent) lacks the
       cache: fetch again until it holds every block we will read */
    while (nixl_check_remote_md(d->a, "prefill-0", &rl) != NIXL_SUCCESS) {
        check(nixl_fetch_remote_md(d->a, "prefill-0", &d->at), "fetch_remote_md");
        usleep(20000);
    }
    check(nixl_prep_xfer_dlist(d->a, NULL, &ll, NULL, &d->lh), "prep_xfer_dlist(local)");
    check(nixl_prep_xfer_dlist(d->a, "prefill-0", &rl, NULL, &d->rh), "prep_xfer_dlist(remote)");
    d->lidx = (int *)malloc(o.layers * 2 * d->max_blocks * sizeof *d->lidx);
    d->ridx = (int *)malloc(o.layers * 2 * d->max_blocks * sizeof *d->ridx);
    d->chosen = (size_t *)malloc(d->max_blocks * sizeof *d->chosen);
}

/* The nb distinct prefill blocks holding a request, in any order, and the
   index pairs that move them (every layer, K and V); returns the count. */
static size_t decode_pick_blocks(decoder *d, size_t nb) {
    size_t j, l, kv, n = 0;
    for (j = 0; j < nb; j++) {
        size_t k, pick;
        do {
            pick = (size_t)rand_r(&d->seed) % o.blocks;
            for (k = 0; k < j && d->chosen[k] != pick; k++) {
            }
        } while (k < j);
        d->chosen[j] = pick;
    }
    for (l = 0; l < o.layers; l++)
        for (kv = 0; kv < 2; kv++)
            for (j = 0; j < nb; j++, n++) {
                d->lidx[n] = (int)((l * 2 + kv) * d->max_blocks + j);
                d->ridx[n] = (int)((l * 2 + kv) * o.blocks + d->chosen[j]);
            }
    return n;
}

/* Step 3: one request: READ its n pairs by index with a notification that
   names it, wait, release. */
static void decode_read(decoder *d, size_t i, size_t n) {
    char notif[32];
    nixl_opt_args_t opt;
    nixl_xfer_req_t *req;
    nixl_status_t st;
    double t = now_s();
    snprintf(notif, sizeof notif, "req-%zu", i);
    memset(&opt, 0, sizeof opt);
    opt.notif = notif;
    opt.notif_len = strlen(notif);
    opt.has_notif = 1;
    check(nixl_make_xfer_req(d->a, NIXL_READ, d->lh, d->lidx, n, d->rh, d->ridx, n, &opt, &req), "make_xfer_req");
    st = nixl_post_xfer_req(d->a, req, NULL);
    while (st == NIXL_IN_PROG) st = nixl_get_xfer_status(d->a, req);
    check(st, "READ");
    check(nixl_release_xfer_req(d->a, req), "release_xfer_req");
    d->t_xfer += now_s() - t;
    d->posted++;
    d->bytes += n * d->part;
}

/* Step 4: every byte of every block of the request that arrived. */
static void decode_verify(decoder *d, size_t nb) {
    size_t l, kv, j, off;
    for (l = 0; l < o.layers; l++)
        for (kv = 0; kv < 2; kv++)
            for (j = 0; j < nb; j++) {
                const unsigned char *blk = d->local + ((l * 2 + kv) * d->max_blocks + j) * d->part;
                for (off = 0; off < d->part; off++)
                    d->bad += blk[off] != kv_byte(l, kv, d->chosen[j], (size_t)d->rank * d->part + off);
            }
}

static void decode_free(decoder *d) {
    nixl_release_dlist_handle(d->a, d->lh);
    nixl_release_dlist_handle(d->a, d->rh);
    nixl_agent_destroy(d->a);
    free(d->local);
    free(d->ld);
    free(d->rd);
    free(d->lidx);
    free(d->ridx);
    free(d->chosen);
}

/* A decode rank: connect, prepare, then the stream of requests (a prompt
   shorter than one block moves nothing and posts nothing), then tell
   prefill we are done. */
static int decode(int rank, unsigned port) {
    decoder d;
    size_t i;
    double t0, elapsed;
    char done[32];
    memset(&d, 0, sizeof d);
    d.rank = rank;
    d.seed = o.seed * 977u + (unsigned)rank;
    if (decode_connect(&d, port) != 0) return 1;
    decode_prepare(&d);
    t0 = now_s();
    for (i = 0; i < o.requests; i++) {
        size_t tokens = (size_t)rand_r(&d.seed) % o.max_prompt + 1, nb = tokens / o.tokens_per_block;
        if (nb == 0) {
            d.skipped++;
            continue;
        }
        decode_read(&d, i, decode_pick_blocks(&d, nb));
        decode_verify(&d, nb);
    }
    elapsed = now_s() - t0;
    snprintf(done, sizeof done, "done %zu", d.posted);
    check(nixl_gen_notif(d.a, "prefill-0", done, strlen(done), NULL), "gen_notif(done)");
    printf("decode-%d: %zu requests (%zu moved nothing: prompt shorter than a block), %.1f MB read in %.2f s; "
           "transfers alone: %.0f requests/s, %.3f GB/s; %s\n",
           rank, o.requests, d.skipped, (double)d.bytes / 1e6, elapsed, (double)d.posted / d.t_xfer,
           (double)d.bytes / d.t_xfer / 1e9, d.bad ? "BYTES MISMATCHED" : "every byte matched");
    if (d.bad) fprintf(stderr, "decode-%d: %zu bytes differ\n", rank, d.bad);
    decode_free(&d);
    return d.bad ? 1 : 0;
}

static size_t num(const char *s) { return (size_t)strtoull(s, NULL, 0); }

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [--backend VERBS|UCX] [--layers N] [--blocks N] [--block-bytes N]\n"
            "          [--tokens-per-block N] [--requests N] [--max-prompt TOKENS] [--hetero-tp] [--seed N]\n"
            "          [--role both|prefill|decode] [--ip A.B.C.D] [--port P] [--listen-addr A.B.C.D]\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv) {
    int i, fds[2], rc = 0;
    pid_t kids[2];
    uint16_t port = 0;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--hetero-tp")) { o.ranks = 2; continue; }
        if (!v) usage(argv[0]);
        i++;
        if (!strcmp(a, "--backend")) o.backend = v;
        else if (!strcmp(a, "--role")) o.role = v;
        else if (!strcmp(a, "--ip")) o.ip = v;
        else if (!strcmp(a, "--listen-addr")) o.listen_addr = v;
        else if (!strcmp(a, "--port")) o.port = (unsigned)num(v);
        else if (!strcmp(a, "--layers")) o.layers = num(v);
        else if (!strcmp(a, "--blocks")) o.blocks = num(v);
        else if (!strcmp(a, "--block-bytes")) o.block_bytes = num(v);
        else if (!strcmp(a, "--tokens-per-block")) o.tokens_per_block = num(v);
        else if (!strcmp(a, "--requests")) o.requests = num(v);
        else if (!strcmp(a, "--max-prompt")) o.max_prompt = num(v);
        else if (!strcmp(a, "--seed")) o.seed = (unsigned)num(v);
        else usage(argv[0]);
    }
    if (!o.layers || !o.blocks || !o.tokens_per_block || !o.max_prompt || o.block_bytes < 2 ||
        o.block_bytes % (size_t)o.ranks || o.max_prompt / o.tokens_per_block > o.blocks)
        usage(argv[0]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(o.role, "prefill")) return prefill(-1);
    if (!strcmp(o.role, "decode")) {
        for (i = 0; i < o.ranks; i++) rc |= decode(i, o.port); /* one rank per process in real use */
        return rc;
    }
    /* both: prefill here, decode rank(s) in child processes */
    if (pipe(fds) != 0) return 1;
    for (i = 0; i < o.ranks; i++) {
        kids[i] = fork();
        if (kids[i] == 0) {
            close(fds[1]);
            if (read(fds[0], &port, sizeof port) != sizeof port) _exit(1);
            _exit(decode(i, port));
        }
    }
    close(fds[0]);
    rc = prefill(fds[1]);
    for (i = 0; i < o.ranks; i++) {
        int ws;
        waitpid(kids[i], &ws, 0);
        if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) rc = 1;
    }
    printf("kv_cache: %s\n", rc ? "FAILED" : "every request moved, every byte matched");
    return rc;
}
