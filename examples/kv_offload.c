/* kv_offload.c — KV-cache blocks offloaded to local storage and read back,
   the disk tier of a serving engine, with the file backend (nixl_posix.h).

   A KV cache in host memory, layers x {K, V} x blocks x block_bytes, is
   written to one file (prepared once: one descriptor per block on each
   side), then a set of blocks is read back by block ids, in another order,
   into a second cache, as a request that needs them would. Every byte read
   is checked against the pattern written. One progress line per phase.

     ./kv_offload [--layers N] [--blocks N] [--block-bytes N] [--engine auto|uring|threads]
                  [--dir PATH] [--direct]

   --direct opens the file with O_DIRECT (block_bytes a multiple of 4096;
   the cache is page-aligned). Exit status 0 when every byte matched. */
#define NIXL_IMPLEMENTATION
#include "../nixl_posix.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct opts {
    size_t layers, blocks, block_bytes;
    const char *engine, *dir;
    int direct;
} opts;

static opts o = {8, 256, 16384, "auto", "/var/tmp", 0};

static void check(nixl_status_t st, const char *what) {
    if (st != NIXL_SUCCESS) {
        fprintf(stderr, "kv_offload: %s: %s\n", what, nixl_status_str(st));
        exit(1);
    }
}

static unsigned char kv_byte(size_t layer, size_t kv, size_t block, size_t off) {
    return (unsigned char)(layer * 31 + kv * 7 + block * 13 + off * 3 + 1);
}

static double now_s(void) { return (double)nixl_now_us() / 1e6; }

static size_t nblk(void) { return o.layers * 2 * o.blocks; } /* (layer, kv, block) entries */

/* one descriptor per (layer, kv, block): memory at base + i * block_bytes,
   or the file at offset i * block_bytes of fd */
static nixl_desc_t *kv_descs(uintptr_t base, int fd) {
    nixl_desc_t *d = (nixl_desc_t *)malloc(nblk() * sizeof *d);
    size_t i;
    for (i = 0; d && i < nblk(); i++) {
        d[i].addr = base + i * o.block_bytes;
        d[i].len = o.block_bytes;
        d[i].dev_id = fd < 0 ? 0 : (uint64_t)fd;
    }
    return d;
}

static void reg(nixl_agent_t *a, nixl_mem_t mem, uintptr_t addr, size_t len, int fd) {
    nixl_desc_t d = {addr, len, fd < 0 ? 0 : (uint64_t)fd};
    nixl_dlist_t l = {mem, &d, 1};
    check(nixl_register_mem(a, &l, NULL), "register_mem");
}

/* prepared once: every block of a cache in memory (the local side) */
static nixl_dlist_handle_t *prep_memory(nixl_agent_t *a, unsigned char *cache) {
    nixl_desc_t *md = kv_descs((uintptr_t)cache, -1);
    nixl_dlist_t ml = {NIXL_DRAM, md, nblk()};
    nixl_dlist_handle_t *h;
    check(nixl_prep_xfer_dlist(a, NULL, &ml, NULL, &h), "prep_xfer_dlist(memory)");
    free(md);
    return h;
}

/* prepared once: every block of the file (the other side: the agent itself) */
static nixl_dlist_handle_t *prep_file(nixl_agent_t *a, int fd) {
    nixl_desc_t *fdsc = kv_descs(0, fd);
    nixl_dlist_t fl = {NIXL_FILE, fdsc, nblk()};
    nixl_dlist_handle_t *h;
    check(nixl_prep_xfer_dlist(a, nixl_agent_name(a), &fl, NULL, &h), "prep_xfer_dlist(file)");
    free(fdsc);
    return h;
}

/* n pairs by index, one request, to the end */
static void move(nixl_agent_t *a, nixl_xfer_op_t op, nixl_dlist_handle_t *mh, const int *mi, nixl_dlist_handle_t *fh,
                 const int *fi, size_t n) {
    nixl_xfer_req_t *r;
    nixl_status_t st;
    check(nixl_make_xfer_req(a, op, mh, mi, n, fh, fi, n, NULL, &r), "make_xfer_req");
    st = nixl_post_xfer_req(a, r, NULL);
    while (st == NIXL_IN_PROG) st = nixl_get_xfer_status(a, r);
    check(st, op == NIXL_WRITE ? "WRITE to the file" : "READ from the file");
    check(nixl_release_xfer_req(a, r), "release_xfer_req");
}

static size_t num(const char *s) { return (size_t)strtoull(s, NULL, 0); }

int main(int argc, char **argv) {
    nixl_agent_config_t cfg;
    nixl_agent_t *a;
    nixl_backend_t *be;
    nixl_dlist_handle_t *ch, *bh, *fh;
    unsigned char *cache, *back;
    char path[512], params[64];
    size_t bytes, i, off, want, bad = 0;
    int *all, *mi, *fi, fd, k;
    double t;
    for (k = 1; k < argc; k++) {
        const char *v = k + 1 < argc ? argv[k + 1] : "";
        if (!strcmp(argv[k], "--layers") && ++k) o.layers = num(v);
        else if (!strcmp(argv[k], "--blocks") && ++k) o.blocks = num(v);
        else if (!strcmp(argv[k], "--block-bytes") && ++k) o.block_bytes = num(v);
        else if (!strcmp(argv[k], "--engine") && ++k) o.engine = v;
        else if (!strcmp(argv[k], "--dir") && ++k) o.dir = v;
        else if (!strcmp(argv[k], "--direct")) o.direct = 1;
        else {
            fprintf(stderr, "usage: %s [--layers N] [--blocks N] [--block-bytes N] [--engine auto|uring|threads]\n"
                            "  [--dir PATH] [--direct]\n", argv[0]);
            return 2;
        }
    }
    if (!o.layers || !o.blocks || !o.block_bytes) return 2;
    bytes = nblk() * o.block_bytes;
    if (posix_memalign((void **)&cache, 4096, bytes) || posix_memalign((void **)&back, 4096, bytes)) return 1;
    for (i = 0; i < nblk(); i++)
        for (off = 0; off < o.block_bytes; off++)
            cache[i * o.block_bytes + off] = kv_byte(i / (2 * o.blocks), i / o.blocks % 2, i % o.blocks, off);
    memset(back, 0, bytes);

    /* the agent, the backend, the cache and its file */
    snprintf(path, sizeof path, "%s/kv_offload.%d.bin", o.dir, (int)getpid());
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC | (o.direct ? O_DIRECT : 0), 0600);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "kv-offload";
    check(nixl_agent_create(&cfg, &a), "agent_create");
    snprintf(params, sizeof params, "engine=%s", o.engine);
    check(nixl_create_backend(a, nixl_posix_backend(), params, &be), "create_backend(POSIX)");
    reg(a, NIXL_DRAM, (uintptr_t)cache, bytes, -1);
    reg(a, NIXL_DRAM, (uintptr_t)back, bytes, -1);
    reg(a, NIXL_FILE, 0, bytes, fd);
    ch = prep_memory(a, cache);
    bh = prep_memory(a, back);
    fh = prep_file(a, fd);
    printf("kv_offload: %zu layers x K/V x %zu blocks of %zu bytes (%.1f MB), %s engine, file %s%s\n", o.layers,
           o.blocks, o.block_bytes, (double)bytes / 1e6,
           nixl_posix_engine(be) == NIXL_POSIX_ENGINE_URING ? "io_uring" : "thread", path, o.direct ? " (O_DIRECT)" : "");

    /* phase 1: offload every block */
    all = (int *)malloc(nblk() * sizeof *all);
    for (i = 0; i < nblk(); i++) all[i] = (int)i;
    t = now_s();
    move(a, NIXL_WRITE, ch, all, fh, all, nblk());
    t = now_s() - t;
    printf("offload: %zu blocks written in %.3f s (%.2f GB/s)\n", nblk(), t, (double)bytes / t / 1e9);

    /* phase 2: a request needs half the blocks, in its own order: read them
       back by block id into the second cache, packed */
    want = nblk() / 2;
    mi = (int *)malloc(want * sizeof *mi);
    fi = (int *)malloc(want * sizeof *fi);
    for (i = 0; i < want; i++) {
        mi[i] = (int)i;
        fi[i] = (int)((i * 7919u + 13) % nblk()); /* distinct while nblk() is no multiple of the prime 7919 */
    }
    t = now_s();
    move(a, NIXL_READ, bh, mi, fh, fi, want);
    t = now_s() - t;
    printf("reload: %zu blocks read back by id in %.3f s (%.2f GB/s)\n", want, t,
           (double)want * o.block_bytes / t / 1e9);

    /* phase 3: every byte */
    for (i = 0; i < want; i++) {
        size_t b = (size_t)fi[i];
        for (off = 0; off < o.block_bytes; off++)
            bad += back[i * o.block_bytes + off] != kv_byte(b / (2 * o.blocks), b / o.blocks % 2, b % o.blocks, off);
    }
    printf("check: %s\n", bad ? "BYTES MISMATCHED" : "every byte matched");
    nixl_release_dlist_handle(a, ch);
    nixl_release_dlist_handle(a, bh);
    nixl_release_dlist_handle(a, fh);
    nixl_agent_destroy(a);
    close(fd);
    unlink(path);
    free(cache);
    free(back);
    free(all);
    free(mi);
    free(fi);
    return bad ? 1 : 0;
}
