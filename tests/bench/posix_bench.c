/* posix_bench.c — the file backend against fio: the same file, block size,
   queue depth and direct flag as the fio job tests/bench/compare-posix runs.

     posix_bench --file PATH --size BYTES --bs BYTES --qd N --mode randread|write|read
                 [--direct] [--seconds S] [--engine auto|uring|threads]

   randread: random bs-sized blocks, `qd` requests of one descriptor each
   kept in flight (fio: iodepth=qd), prints IOPS. write/read: sequential bs
   blocks over the whole file, qd in flight, prints GB/s (10^9 bytes).
   Output: "posix_bench <mode> iops=N" or "posix_bench <mode> gbs=X". */
#define NIXL_IMPLEMENTATION
#include "../../nixl_posix.h"
#define BENCH_NAME "posix_bench"
#include "bench_util.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t rnd_state = 88172645463325252ull;
static uint64_t rnd(void) { /* xorshift64: the offsets only need to be spread */
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

int main(int argc, char **argv) {
    const char *file = NULL, *mode = "randread", *engine = "auto";
    size_t size = 256u << 20, bs = 4096, qd = 64, i, blocks, done = 0, issued = 0, outstanding = 0;
    double seconds = 5, t0, el;
    int direct = 0, fd, k, write, randread;
    nixl_agent_config_t cfg;
    nixl_agent_t *a;
    nixl_backend_t *be;
    unsigned char *buf;
    nixl_xfer_req_t **req;
    nixl_desc_t *md, *fdsc;
    char params[64];
    for (k = 1; k < argc; k++) {
        const char *v = k + 1 < argc ? argv[k + 1] : "";
        if (!strcmp(argv[k], "--file") && ++k) file = v;
        else if (!strcmp(argv[k], "--size") && ++k) size = (size_t)strtoull(v, NULL, 0);
        else if (!strcmp(argv[k], "--bs") && ++k) bs = (size_t)strtoull(v, NULL, 0);
        else if (!strcmp(argv[k], "--qd") && ++k) qd = (size_t)strtoull(v, NULL, 0);
        else if (!strcmp(argv[k], "--mode") && ++k) mode = v;
        else if (!strcmp(argv[k], "--seconds") && ++k) seconds = atof(v);
        else if (!strcmp(argv[k], "--engine") && ++k) engine = v;
        else if (!strcmp(argv[k], "--direct")) direct = 1;
        else die("usage: --file PATH --size B --bs B --qd N --mode randread|write|read [--direct] [--seconds S]", NIXL_ERR_INVALID_PARAM);
    }
    if (!file || !bs || !qd || size < bs * qd) die("bad arguments", NIXL_ERR_INVALID_PARAM);
    write = !strcmp(mode, "write");
    randread = !strcmp(mode, "randread");
    fd = open(file, (write ? O_RDWR | O_CREAT : O_RDONLY) | (direct ? O_DIRECT : 0), 0600);
    if (fd < 0) die("cannot open the file", NIXL_ERR_INVALID_PARAM);
    blocks = size / bs;
    if (posix_memalign((void **)&buf, 4096, qd * bs)) die("out of memory", NIXL_ERR_INVALID_PARAM);
    memset(buf, 0x5a, qd * bs);
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "posix-bench";
    if (nixl_agent_create(&cfg, &a) != NIXL_SUCCESS) die("agent", NIXL_ERR_INVALID_PARAM);
    snprintf(params, sizeof params, "engine=%s,queue_depth=%zu", engine, qd);
    if (nixl_create_backend(a, nixl_posix_backend(), params, &be) != NIXL_SUCCESS) die("backend", NIXL_ERR_INVALID_PARAM);
    {
        nixl_desc_t m = {(uintptr_t)buf, qd * bs, 0}, f = {0, size, (uint64_t)fd};
        nixl_dlist_t ml = {NIXL_DRAM, &m, 1}, fl = {NIXL_FILE, &f, 1};
        if (nixl_register_mem(a, &ml, NULL) || nixl_register_mem(a, &fl, NULL)) die("register", NIXL_ERR_INVALID_PARAM);
    }
    req = (nixl_xfer_req_t **)calloc(qd, sizeof *req);
    md = (nixl_desc_t *)calloc(qd, sizeof *md);
    fdsc = (nixl_desc_t *)calloc(qd, sizeof *fdsc);
    t0 = (double)nixl_now_us() / 1e6;
    /* qd requests of one block each; a finished one is made again at the
       next offset (random, or the next block) and posted */
    for (i = 0;; i = (i + 1) % qd) {
        nixl_dlist_t ml = {NIXL_DRAM, &md[i], 1}, fl = {NIXL_FILE, &fdsc[i], 1};
        nixl_status_t st = req[i] ? nixl_get_xfer_status(a, req[i]) : NIXL_SUCCESS;
        int more;
        if (st == NIXL_IN_PROG) continue;
        if (st != NIXL_SUCCESS) die("transfer failed", NIXL_ERR_INVALID_PARAM);
        if (req[i]) {
            nixl_release_xfer_req(a, req[i]);
            req[i] = NULL;
            done++;
            outstanding--;
        }
        el = (double)nixl_now_us() / 1e6 - t0;
        more = randread ? el < seconds : issued < blocks;
        if (!more) {
            if (!outstanding) break;
            continue;
        }
        md[i].addr = (uintptr_t)buf + i * bs;
        md[i].len = fdsc[i].len = bs;
        fdsc[i].addr = (randread ? (size_t)(rnd() % blocks) : issued) * bs;
        fdsc[i].dev_id = (uint64_t)fd;
        issued++;
        if (nixl_create_xfer_req(a, write ? NIXL_WRITE : NIXL_READ, &ml, &fl, "posix-bench", NULL, &req[i]))
            die("create_xfer_req", NIXL_ERR_INVALID_PARAM);
        st = nixl_post_xfer_req(a, req[i], NULL);
        if (st != NIXL_IN_PROG && st != NIXL_SUCCESS) die("post", NIXL_ERR_INVALID_PARAM);
        outstanding++;
    }
    el = (double)nixl_now_us() / 1e6 - t0;
    if (randread) printf("posix_bench %s iops=%.0f\n", mode, (double)done / el);
    else printf("posix_bench %s gbs=%.4f\n", mode, (double)done * (double)bs / el / 1e9);
    nixl_agent_destroy(a);
    close(fd);
    free(buf);
    free(req);
    free(md);
    free(fdsc);
    return 0;
}
