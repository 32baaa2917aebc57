/* test_posix.c — the file backend (nixl_posix.h) against real files, with
   both engines (io_uring and the pread/pwrite thread pool): every transfer
   checks the bytes in the file or in memory, every error is performed and
   must fail with a clear status and log line while the next request works.

     build/test_posix [test_name ...]
   ENOSPC runs on a size-limited tmpfs it mounts (root only; skipped
   otherwise, with the reason). */
#define NIXL_IMPLEMENTATION
#include "../nixl_posix.h"
#include "log_capture.h"
#include "nixl_test.h"
#include "test_backend.h"
#include "fake_gpu.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *g_engine = "uring"; /* each test runs once per engine */
static char g_dir[256];

typedef struct posix_env {
    nixl_agent_t *a;
    nixl_backend_t *be;
} posix_env;

static int env_up(posix_env *v, const char *extra) {
    nixl_agent_config_t cfg;
    char params[256];
    memset(v, 0, sizeof *v);
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "offload";
    cfg.log_item_fn = capture_log_item;
    if (nixl_agent_create(&cfg, &v->a) != NIXL_SUCCESS) return 0;
    snprintf(params, sizeof params, "engine=%s%s%s", g_engine, extra ? "," : "", extra ? extra : "");
    return nixl_create_backend(v->a, nixl_posix_backend(), params, &v->be) == NIXL_SUCCESS;
}

static void env_down(posix_env *v) { nixl_agent_destroy(v->a); }

static int tmp_file(const char *name, int flags, char *path, size_t cap) {
    snprintf(path, cap, "%s/%s", g_dir, name);
    return open(path, flags | O_CREAT | O_TRUNC, 0600);
}

static nixl_status_t reg1(nixl_agent_t *a, nixl_mem_t mem, uintptr_t addr, size_t len, uint64_t dev) {
    nixl_desc_t d = {addr, len, dev};
    nixl_dlist_t l = {mem, &d, 1};
    return nixl_register_mem(a, &l, NULL);
}

/* src and dst (bytes each) as host memory, and [0, bytes) of fd as a file */
static void reg_src_dst_file(posix_env *v, unsigned char *src, unsigned char *dst, size_t bytes, int fd) {
    CHECK_ST(reg1(v->a, NIXL_DRAM, (uintptr_t)src, bytes, 0), NIXL_SUCCESS);
    CHECK_ST(reg1(v->a, NIXL_DRAM, (uintptr_t)dst, bytes, 0), NIXL_SUCCESS);
    CHECK_ST(reg1(v->a, NIXL_FILE, 0, bytes, (uint64_t)fd), NIXL_SUCCESS); /* offset 0: a valid start */
}

static nixl_status_t wait_done(nixl_agent_t *a, nixl_xfer_req_t *r) {
    nixl_status_t st;
    uint64_t end = nixl_now_us() + 60000000u;
    while ((st = nixl_get_xfer_status(a, r)) == NIXL_IN_PROG && nixl_now_us() < end) {
    }
    return st;
}

/* n blocks of bs bytes: memory (of type mt) block i <-> file block
   fidx[i], one request */
static nixl_status_t move_blocks_mem(posix_env *v, nixl_xfer_op_t op, nixl_mem_t mt, unsigned char *mem, int fd,
                                     size_t bs, size_t n, const size_t *fidx) {
    nixl_desc_t *md = (nixl_desc_t *)malloc(n * sizeof *md), *fdsc = (nixl_desc_t *)malloc(n * sizeof *fdsc);
    nixl_dlist_t ml = {mt, md, n}, fl = {NIXL_FILE, fdsc, n};
    nixl_xfer_req_t *r = NULL;
    nixl_status_t st;
    size_t i;
    for (i = 0; i < n; i++) {
        md[i].addr = (uintptr_t)mem + i * bs;
        md[i].len = bs;
        md[i].dev_id = 0;
        fdsc[i].addr = (uintptr_t)(fidx ? fidx[i] : i) * bs;
        fdsc[i].len = bs;
        fdsc[i].dev_id = (uint64_t)fd;
    }
    st = nixl_create_xfer_req(v->a, op, &ml, &fl, "offload", NULL, &r);
    if (st == NIXL_SUCCESS) {
        st = nixl_post_xfer_req(v->a, r, NULL);
        if (st == NIXL_IN_PROG) st = wait_done(v->a, r);
        nixl_release_xfer_req(v->a, r);
    }
    free(md);
    free(fdsc);
    return st;
}

static nixl_status_t move_blocks(posix_env *v, nixl_xfer_op_t op, unsigned char *mem, int fd, size_t bs, size_t n,
                                 const size_t *fidx) {
    return move_blocks_mem(v, op, NIXL_DRAM, mem, fd, bs, n, fidx);
}

/* WRITE blocks to a file, READ them back in another order into other
   memory: every byte where it belongs, in the file and in memory */
static void test_write_read_back(void) {
    enum { BS = 4096, N = 256 };
    posix_env v;
    char path[300];
    unsigned char *src = (unsigned char *)malloc(N * BS), *dst = (unsigned char *)calloc(N, BS), *file = NULL;
    size_t order[N], i;
    int fd = tmp_file("wr.bin", O_RDWR, path, sizeof path), ok = 1;
    if (!CHECK(env_up(&v, NULL)) || !CHECK(fd >= 0)) goto out;
    nt_fill(src, N * BS, 3);
    reg_src_dst_file(&v, src, dst, N * BS, fd);
    {   /* io_uring names the file by its registered slot where the kernel has them */
        const _nixl_posix_engine_t *e = (const _nixl_posix_engine_t *)v.be->engine;
        if (e->kind == NIXL_POSIX_ENGINE_URING && e->slot_used)
            CHECKF(e->nfiles == 1 && e->files[0].slot >= 0 && e->files[0].iofd != fd,
                   "the file has a slot (%d) and our own descriptor", e->nfiles ? e->files[0].slot : -2);
    }
    CHECK_ST(move_blocks(&v, NIXL_WRITE, src, fd, BS, N, NULL), NIXL_SUCCESS);
    file = (unsigned char *)malloc(N * BS);
    CHECK(pread(fd, file, N * BS, 0) == (ssize_t)(N * BS) && memcmp(file, src, N * BS) == 0);
    for (i = 0; i < N; i++) order[i] = (i * 97) % N; /* memory block i <- file block order[i] */
    CHECK_ST(move_blocks(&v, NIXL_READ, dst, fd, BS, N, order), NIXL_SUCCESS);
    for (i = 0; i < N && ok; i++) ok = !memcmp(dst + i * BS, src + order[i] * BS, BS);
    CHECKF(ok, "block %zu differs", i - 1);
    env_down(&v);
out:
    if (fd >= 0) close(fd);
    unlink(path);
    free(src);
    free(dst);
    free(file);
}

/* 100,000 descriptors of 512 bytes in one request: far more than the queue
   depth (64), every byte checked */
static void test_100k_descriptors(void) {
    enum { BS = 512, N = 100000 };
    posix_env v;
    char path[300];
    unsigned char *src = (unsigned char *)malloc((size_t)N * BS), *dst = (unsigned char *)calloc(N, BS);
    int fd = tmp_file("many.bin", O_RDWR, path, sizeof path);
    uint64_t t0;
    if (!CHECK(env_up(&v, NULL)) || !CHECK(fd >= 0)) goto out;
    nt_fill(src, (size_t)N * BS, 9);
    reg_src_dst_file(&v, src, dst, (size_t)N * BS, fd);
    t0 = nixl_now_us();
    CHECK_ST(move_blocks(&v, NIXL_WRITE, src, fd, BS, N, NULL), NIXL_SUCCESS);
    CHECK_ST(move_blocks(&v, NIXL_READ, dst, fd, BS, N, NULL), NIXL_SUCCESS);
    printf("FIGURE posix_100k engine=%s descs=%d bytes=%d write_read_ms=%.1f\n", g_engine, N, BS,
           (double)(nixl_now_us() - t0) / 1000.0);
    CHECK(memcmp(src, dst, (size_t)N * BS) == 0);
    env_down(&v);
out:
    if (fd >= 0) close(fd);
    unlink(path);
    free(src);
    free(dst);
}

/* bad registrations: not a descriptor, a closed one, a directory as FILE,
   a regular file as BLK; each refused and logged */
static void test_bad_registrations(void) {
    posix_env v;
    char path[300];
    int fd = tmp_file("reg.bin", O_RDWR, path, sizeof path), dfd = open(g_dir, O_RDONLY), cfd;
    if (!CHECK(env_up(&v, NULL)) || !CHECK(fd >= 0 && dfd >= 0)) goto out;
    CHECK_ST(reg1(v.a, NIXL_FILE, 0, 4096, 1u << 20), NIXL_ERR_INVALID_PARAM);
    CHECK(logged_item(NIXL_LOGITEM_POSIX_NOT_FD));
    cfd = dup(fd);
    close(cfd);
    CHECK_ST(reg1(v.a, NIXL_FILE, 0, 4096, (uint64_t)cfd), NIXL_ERR_INVALID_PARAM);
    CHECK_ST(reg1(v.a, NIXL_FILE, 0, 4096, (uint64_t)dfd), NIXL_ERR_INVALID_PARAM);
    CHECK(logged_item(NIXL_LOGITEM_POSIX_WRONG_KIND));
    CHECK_ST(reg1(v.a, NIXL_BLK, 0, 4096, (uint64_t)fd), NIXL_ERR_INVALID_PARAM);
    CHECK(logged_item(NIXL_LOGITEM_POSIX_WRONG_KIND));
    CHECK_ST(reg1(v.a, NIXL_FILE, 0, 4096, (uint64_t)fd), NIXL_SUCCESS); /* and a good one still works */
    env_down(&v);
out:
    if (fd >= 0) close(fd);
    if (dfd >= 0) close(dfd);
    unlink(path);
}

/* READ past the end of a file, a READ from a write-only descriptor, a
   WRITE to a read-only one: refused at prep with the reason; the same agent
   then moves bytes fine */
static void test_mode_and_eof(void) {
    enum { BS = 4096 };
    posix_env v;
    char path[300];
    unsigned char *buf = (unsigned char *)malloc(4 * BS), *back = (unsigned char *)calloc(4, BS);
    int rw = tmp_file("mode.bin", O_RDWR, path, sizeof path), ro = -1, wo = -1;
    if (!CHECK(env_up(&v, NULL)) || !CHECK(rw >= 0)) goto out;
    nt_fill(buf, 4 * BS, 5);
    CHECK(pwrite(rw, buf, 2 * BS, 0) == 2 * BS); /* the file holds 2 blocks */
    ro = open(path, O_RDONLY);
    wo = open(path, O_WRONLY);
    CHECK_ST(reg1(v.a, NIXL_DRAM, (uintptr_t)buf, 4 * BS, 0), NIXL_SUCCESS);
    CHECK_ST(reg1(v.a, NIXL_DRAM, (uintptr_t)back, 4 * BS, 0), NIXL_SUCCESS);
    CHECK_ST(reg1(v.a, NIXL_FILE, 0, 8 * BS, (uint64_t)rw), NIXL_SUCCESS);
    CHECK_ST(reg1(v.a, NIXL_FILE, 0, 8 * BS, (uint64_t)ro), NIXL_SUCCESS);
    CHECK_ST(reg1(v.a, NIXL_FILE, 0, 8 * BS, (uint64_t)wo), NIXL_SUCCESS);
    CHECK_ST(move_blocks(&v, NIXL_READ, back, rw, BS, 3, NULL), NIXL_ERR_INVALID_PARAM);
    CHECK(logged_item(NIXL_LOGITEM_POSIX_READ_PAST_EOF));
    CHECK_ST(move_blocks(&v, NIXL_READ, back, wo, BS, 1, NULL), NIXL_ERR_NOT_ALLOWED);
    CHECK(logged_item(NIXL_LOGITEM_POSIX_MODE));
    CHECK_ST(move_blocks(&v, NIXL_WRITE, buf, ro, BS, 1, NULL), NIXL_ERR_NOT_ALLOWED);
    CHECK(logged_item(NIXL_LOGITEM_POSIX_MODE));
    CHECK_ST(move_blocks(&v, NIXL_READ, back, ro, BS, 2, NULL), NIXL_SUCCESS);
    CHECK(memcmp(back, buf, 2 * BS) == 0);
    env_down(&v);
out:
    if (rw >= 0) close(rw);
    if (ro >= 0) close(ro);
    if (wo >= 0) close(wo);
    unlink(path);
    free(buf);
    free(back);
}

/* a file that shrinks after prep: the READ fails at run time (end of
   file) with a log line; once grown back the request works; and when the
   application closes the descriptor and the number goes to another file,
   the I/O still reaches the registered file (the backend's duplicate) */
static void test_runtime_errors(void) {
    enum { BS = 4096 };
    posix_env v;
    char path[300];
    unsigned char *buf = (unsigned char *)malloc(4 * BS);
    nixl_desc_t md = {0, 4 * BS, 0}, fdsc = {0, 4 * BS, 0};
    nixl_dlist_t ml = {NIXL_DRAM, &md, 1}, fl = {NIXL_FILE, &fdsc, 1};
    nixl_xfer_req_t *r = NULL;
    int fd = tmp_file("shrink.bin", O_RDWR, path, sizeof path), other = -1;
    char path2[300] = "";
    struct stat sb;
    if (!CHECK(env_up(&v, NULL)) || !CHECK(fd >= 0)) goto out;
    nt_fill(buf, 4 * BS, 1);
    CHECK(pwrite(fd, buf, 4 * BS, 0) == 4 * BS);
    md.addr = (uintptr_t)buf;
    fdsc.dev_id = (uint64_t)fd;
    CHECK_ST(reg1(v.a, NIXL_DRAM, (uintptr_t)buf, 4 * BS, 0), NIXL_SUCCESS);
    CHECK_ST(reg1(v.a, NIXL_FILE, 0, 4 * BS, (uint64_t)fd), NIXL_SUCCESS);
    CHECK_ST(nixl_create_xfer_req(v.a, NIXL_READ, &ml, &fl, "offload", NULL, &r), NIXL_SUCCESS);
    CHECK(ftruncate(fd, BS) == 0);
    if (r) {
        nixl_status_t st = nixl_post_xfer_req(v.a, r, NULL);
        if (st == NIXL_IN_PROG) st = wait_done(v.a, r);
        CHECK_ST(st, NIXL_ERR_BACKEND);
        CHECK(logged_item(NIXL_LOGITEM_POSIX_EOF));
        CHECK(pwrite(fd, buf, 4 * BS, 0) == 4 * BS); /* grown back: the same request works again */
        st = nixl_post_xfer_req(v.a, r, NULL);
        if (st == NIXL_IN_PROG) st = wait_done(v.a, r);
        CHECK_ST(st, NIXL_SUCCESS);
        close(fd); /* the application closed it under us, and the number goes to another file */
        other = tmp_file("other.bin", O_RDWR, path2, sizeof path2);
        CHECK(other >= 0 && pwrite(other, buf + BS, BS, 0) == BS);
        memset(buf, 0, 4 * BS);
        fd = -1;
        st = nixl_post_xfer_req(v.a, r, NULL);
        if (st == NIXL_IN_PROG) st = wait_done(v.a, r);
        CHECK_ST(st, NIXL_SUCCESS); /* the backend's own duplicate still reaches the registered file */
        CHECK(nt_verify(buf, 4 * BS, 1));
        CHECK(other < 0 || (fstat(other, &sb) == 0 && sb.st_size == BS)); /* the other file untouched */
        nixl_release_xfer_req(v.a, r);
    }
    env_down(&v);
out:
    if (fd >= 0) close(fd);
    if (other >= 0) close(other);
    unlink(path);
    if (path2[0]) unlink(path2);
    free(buf);
}

/* O_DIRECT: misaligned address, offset or length refused at prep, saying
   what must be aligned; aligned blocks move (where the filesystem takes
   O_DIRECT at all: tmpfs does not, then this is skipped) */
static void test_o_direct(void) {
    enum { BS = 4096, N = 16 };
    posix_env v;
    char path[300];
    unsigned char *buf = NULL, *back = NULL;
    int fd = tmp_file("direct.bin", O_RDWR | O_DIRECT, path, sizeof path);
    nixl_desc_t md = {0, BS, 0}, fdsc = {0, BS, 0};
    nixl_dlist_t ml = {NIXL_DRAM, &md, 1}, fl = {NIXL_FILE, &fdsc, 1};
    nixl_xfer_req_t *r = NULL;
    if (fd < 0) {
        SKIP("this filesystem refuses O_DIRECT");
        return;
    }
    if (!CHECK(env_up(&v, NULL)) || posix_memalign((void **)&buf, BS, (N + 1) * BS) ||
        posix_memalign((void **)&back, BS, N * BS))
        goto out;
    nt_fill(buf, (N + 1) * BS, 7);
    CHECK_ST(reg1(v.a, NIXL_DRAM, (uintptr_t)buf, (N + 1) * BS, 0), NIXL_SUCCESS);
    CHECK_ST(reg1(v.a, NIXL_DRAM, (uintptr_t)back, N * BS, 0), NIXL_SUCCESS);
    CHECK_ST(reg1(v.a, NIXL_FILE, 0, (N + 1) * BS, (uint64_t)fd), NIXL_SUCCESS);
    fdsc.dev_id = (uint64_t)fd;
    md.addr = (uintptr_t)buf + 512; /* misaligned memory */
    CHECK_ST(nixl_create_xfer_req(v.a, NIXL_WRITE, &ml, &fl, "offload", NULL, &r), NIXL_ERR_INVALID_PARAM);
    CHECK(logged_item(NIXL_LOGITEM_POSIX_DIRECT_ALIGN));
    md.addr = (uintptr_t)buf;
    fdsc.addr = 100; /* misaligned offset */
    CHECK_ST(nixl_create_xfer_req(v.a, NIXL_WRITE, &ml, &fl, "offload", NULL, &r), NIXL_ERR_INVALID_PARAM);
    fdsc.addr = 0;
    md.len = fdsc.len = BS - 1; /* misaligned length */
    CHECK_ST(nixl_create_xfer_req(v.a, NIXL_WRITE, &ml, &fl, "offload", NULL, &r), NIXL_ERR_INVALID_PARAM);
    CHECK_ST(move_blocks(&v, NIXL_WRITE, buf, fd, BS, N, NULL), NIXL_SUCCESS);
    CHECK_ST(move_blocks(&v, NIXL_READ, back, fd, BS, N, NULL), NIXL_SUCCESS);
    CHECK(memcmp(back, buf, N * BS) == 0);
    env_down(&v);
out:
    close(fd);
    unlink(path);
    free(buf);
    free(back);
}

/* release while I/Os are in flight: it waits for them; afterwards the
   memory can go and the agent goes on */
static void test_release_in_flight(void) {
    enum { BS = 1 << 20, N = 64 };
    posix_env v;
    char path[300];
    unsigned char *buf = (unsigned char *)malloc((size_t)N * BS);
    int fd = tmp_file("inflight.bin", O_RDWR, path, sizeof path), k;
    if (!CHECK(env_up(&v, "queue_depth=8")) || !CHECK(fd >= 0)) goto out;
    nt_fill(buf, (size_t)N * BS, 2);
    CHECK_ST(reg1(v.a, NIXL_DRAM, (uintptr_t)buf, (size_t)N * BS, 0), NIXL_SUCCESS);
    CHECK_ST(reg1(v.a, NIXL_FILE, 0, (size_t)N * BS, (uint64_t)fd), NIXL_SUCCESS);
    for (k = 0; k < 5; k++) {
        nixl_desc_t md = {(uintptr_t)buf, (size_t)N * BS, 0}, fdsc = {0, (size_t)N * BS, (uint64_t)fd};
        nixl_dlist_t ml = {NIXL_DRAM, &md, 1}, fl = {NIXL_FILE, &fdsc, 1};
        nixl_xfer_req_t *r = NULL;
        CHECK_ST(nixl_create_xfer_req(v.a, NIXL_WRITE, &ml, &fl, "offload", NULL, &r),
                 NIXL_SUCCESS);
        if (!r) break;
        CHECK(nixl_post_xfer_req(v.a, r, NULL) >= 0);
        CHECK_ST(nixl_release_xfer_req(v.a, r), NIXL_SUCCESS); /* 64 MiB mostly still to go */
    }
    CHECK_ST(move_blocks(&v, NIXL_WRITE, buf, fd, 4096, 16, NULL), NIXL_SUCCESS);
    env_down(&v);
out:
    if (fd >= 0) close(fd);
    unlink(path);
    free(buf);
}

/* ENOSPC: a WRITE larger than a 1 MiB tmpfs fails with "No space left on
   device"; the agent goes on */
static void test_enospc(void) {
    enum { BS = 64 << 10, N = 32 };
    char mnt[300], path[400];
    posix_env v;
    unsigned char *buf = (unsigned char *)malloc((size_t)N * BS);
    int fd = -1;
    snprintf(mnt, sizeof mnt, "%s/small", g_dir);
    mkdir(mnt, 0700);
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=1m") != 0) {
        char why[200];
        snprintf(why, sizeof why, "cannot mount a 1 MiB tmpfs (%s): ENOSPC untested here", strerror(errno));
        SKIP(why);
        rmdir(mnt);
        free(buf);
        return;
    }
    snprintf(path, sizeof path, "%s/full.bin", mnt);
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (!CHECK(env_up(&v, NULL)) || !CHECK(fd >= 0)) goto out;
    nt_fill(buf, (size_t)N * BS, 4);
    CHECK_ST(reg1(v.a, NIXL_DRAM, (uintptr_t)buf, (size_t)N * BS, 0), NIXL_SUCCESS);
    CHECK_ST(reg1(v.a, NIXL_FILE, 0, (size_t)N * BS, (uint64_t)fd), NIXL_SUCCESS);
    CHECK_ST(move_blocks(&v, NIXL_WRITE, buf, fd, BS, N, NULL), NIXL_ERR_BACKEND);
    CHECK(seen("No space left on device")); /* the errno, as the OS words it */
    CHECK(logged_item(NIXL_LOGITEM_POSIX_IO_FAILED));
    CHECK_ST(move_blocks(&v, NIXL_WRITE, buf, fd, BS, 4, NULL), NIXL_SUCCESS); /* 256 KiB still fits */
    env_down(&v);
out:
    if (fd >= 0) close(fd);
    unlink(path);
    umount(mnt);
    rmdir(mnt);
    free(buf);
}

/* engine selection: the one asked for runs, auto picks io_uring where it
   works and says so; a bad engine name is refused */
static void test_engine_choice(void) {
    nixl_agent_config_t cfg;
    nixl_agent_t *a = NULL;
    nixl_backend_t *be = NULL;
    nixl_posix_file_info_t info;
    char path[300];
    int fd = tmp_file("q.bin", O_RDWR, path, sizeof path);
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "engines";
    cfg.log_item_fn = capture_log_item;
    if (!CHECK(nixl_agent_create(&cfg, &a) == NIXL_SUCCESS)) return;
    CHECK_ST(nixl_create_backend(a, nixl_posix_backend(), "engine=fast", &be), NIXL_ERR_INVALID_PARAM);
    CHECK(logged_item(NIXL_LOGITEM_POSIX_BAD_ENGINE));
    CHECK_ST(nixl_create_backend(a, nixl_posix_backend(), "engine=threads,threads=2", &be), NIXL_SUCCESS);
    CHECK(nixl_posix_engine(be) == NIXL_POSIX_ENGINE_THREADS);
    CHECK(nixl_posix_engine(NULL) == 0);
    CHECK(pwrite(fd, "hello", 5, 0) == 5);
    CHECK_ST(reg1(a, NIXL_FILE, 0, 5, (uint64_t)fd), NIXL_SUCCESS);
    CHECK_ST(nixl_posix_query(be, fd, &info), NIXL_SUCCESS);
    CHECK(info.size == 5 && info.readable && info.writable && !info.direct && S_ISREG(info.mode) && info.mtime_s > 0);
    CHECK_ST(nixl_posix_query(be, fd + 100, &info), NIXL_ERR_NOT_FOUND);
    nixl_agent_destroy(a);
    CHECK(nixl_agent_create(&cfg, &a) == NIXL_SUCCESS);
    CHECK_ST(nixl_create_backend(a, nixl_posix_backend(), NULL, &be), NIXL_SUCCESS);
    CHECK(nixl_posix_engine(be) == NIXL_POSIX_ENGINE_URING || logged_item(NIXL_LOGITEM_POSIX_URING_UNAVAILABLE));
    nixl_agent_destroy(a);
    close(fd);
    unlink(path);
}

/* A peer whose metadata claims a "POSIX" section with FILE regions (its
   own backend of that name, or a forgery) reaches nothing here: a region at
   offset 0 makes the whole blob refused (the metadata decoder stays strict:
   no remote backend serves files); at another offset our file backend
   refuses its connection info (logged), so its regions never reach it, a
   request toward its "files" finds no backend, and our own offload still
   works. */
static void test_peer_claiming_posix_files(void) {
    enum { BS = 4096 };
    nixl_backend_ops_t fake = tb_make_ops("POSIX", NIXL_MEM_BIT(NIXL_DRAM) | NIXL_MEM_BIT(NIXL_FILE));
    nixl_agent_config_t cfg;
    nixl_agent_t *evil = NULL;
    nixl_backend_t *eb = NULL;
    posix_env v;
    char path[300];
    unsigned char *src = (unsigned char *)malloc(2 * BS), *dst = (unsigned char *)calloc(2, BS);
    int fd = tmp_file("victim.bin", O_RDWR, path, sizeof path);
    void *blob = NULL;
    size_t len = 0;
    nixl_desc_t ld = {0, BS, 0}, rd = {BS, BS, 0};
    nixl_dlist_t ll = {NIXL_DRAM, &ld, 1}, rl = {NIXL_FILE, &rd, 1};
    nixl_xfer_req_t *r = NULL;
    if (!CHECK(env_up(&v, NULL)) || !CHECK(fd >= 0)) goto out;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "evil";
    cfg.log_item_fn = capture_log_item;
    if (!CHECK(nixl_agent_create(&cfg, &evil) == NIXL_SUCCESS)) goto out;
    CHECK_ST(nixl_create_backend(evil, &fake, NULL, &eb), NIXL_SUCCESS);
    CHECK_ST(reg1(evil, NIXL_FILE, 0, BS, (uint64_t)fd), NIXL_SUCCESS); /* "its" file: our fd number */
    CHECK_ST(nixl_get_local_md(evil, &blob, &len), NIXL_SUCCESS);
    CHECK_ST(nixl_load_remote_md(v.a, blob, len, NULL, 0), NIXL_ERR_INVALID_PARAM);
    CHECK(logged_item(NIXL_LOGITEM_MD_BAD_REGION));
    nixl_free_md(evil, blob);
    blob = NULL;
    {
        nixl_desc_t d0 = {0, BS, (uint64_t)fd};
        nixl_dlist_t l0 = {NIXL_FILE, &d0, 1};
        CHECK_ST(nixl_deregister_mem(evil, &l0, NULL), NIXL_SUCCESS);
    }
    CHECK_ST(reg1(evil, NIXL_FILE, BS, BS, (uint64_t)fd), NIXL_SUCCESS);
    CHECK_ST(nixl_get_local_md(evil, &blob, &len), NIXL_SUCCESS);
    lc_reset();
    CHECK_ST(nixl_load_remote_md(v.a, blob, len, NULL, 0), NIXL_SUCCESS);
    CHECK(seen_item(NIXL_LOGITEM_MD_CONN_INFO_REFUSED)); /* so none of its regions reach our file backend */
    lc_reset();
    ld.addr = (uintptr_t)src;
    rd.dev_id = (uint64_t)fd;
    nt_fill(src, 2 * BS, 8);
    reg_src_dst_file(&v, src, dst, 2 * BS, fd);
    CHECK_ST(nixl_create_xfer_req(v.a, NIXL_WRITE, &ll, &rl, "evil", NULL, &r), NIXL_ERR_NOT_SUPPORTED);
    CHECK(r == NULL && logged_item(NIXL_LOGITEM_XFER_NO_BACKEND));
    CHECK_ST(move_blocks(&v, NIXL_WRITE, src, fd, BS, 2, NULL), NIXL_SUCCESS); /* ours still moves */
    CHECK_ST(move_blocks(&v, NIXL_READ, dst, fd, BS, 2, NULL), NIXL_SUCCESS);
    CHECK(memcmp(src, dst, 2 * BS) == 0);
    env_down(&v);
out:
    if (blob) nixl_free_md(evil, blob);
    nixl_agent_destroy(evil);
    if (fd >= 0) close(fd);
    unlink(path);
    free(src);
    free(dst);
}

/* VRAM with the default copy engine and no CUDA driver: registering it
   says VRAM needs the driver; DRAM still registers */
static void test_vram_without_driver(void) {
    posix_env v;
    unsigned char host[4096];
    nixl_status_t st;
    if (!CHECK(env_up(&v, NULL))) return;
    st = reg1(v.a, NIXL_VRAM, (uintptr_t)host, sizeof host, 0);
    CHECKF(st == NIXL_ERR_NOT_SUPPORTED || st == NIXL_ERR_INVALID_PARAM, "%s", nixl_status_str(st));
    CHECK(seen_item(NIXL_LOGITEM_CUDA_NO_DRIVER) || seen_item(NIXL_LOGITEM_VRAM_NOT_DEVICE));
    lc_reset();
    CHECK_ST(reg1(v.a, NIXL_DRAM, (uintptr_t)host, sizeof host, 0), NIXL_SUCCESS);
    env_down(&v);
}

// >>tests: VRAM staged through bounce buffers (a stand-in GPU)

/* an env whose backend stages VRAM with the stand-in GPU's copy engine */
static int env_gpu(posix_env *v, const char *extra, fake_gpu *g, size_t gpu_bytes) {
    nixl_copy_ops_t ops;
    fake_init(g, gpu_bytes, 0);
    if (!env_up(v, extra)) return 0;
    ops = fake_ops(g);
    return nixl_posix_set_copy_ops(v->be, &ops) == NIXL_SUCCESS;
}

/* every bounce buffer is back (nothing staged in flight): the copy engine
   can be swapped once the VRAM is deregistered */
static int staging_idle(posix_env *v, fake_gpu *g) {
    nixl_desc_t d = {(uintptr_t)g->mem, g->size, 0};
    nixl_dlist_t l = {NIXL_VRAM, &d, 1};
    return nixl_deregister_mem(v->a, &l, NULL) == NIXL_SUCCESS && nixl_posix_set_copy_ops(v->be, NULL) == NIXL_SUCCESS;
}

/* GPU -> file in blocks larger than a bounce buffer (cut into pieces, more
   pieces than buffers), then file -> GPU in another order: every byte where
   it belongs, in the file and in "device memory" */
static void test_vram_write_read_back(void) {
    enum { BS = 192 << 10, N = 16 };
    posix_env v;
    fake_gpu g;
    char path[300];
    unsigned char *file = (unsigned char *)malloc((size_t)N * BS), *src, *dst;
    size_t order[N], i;
    int fd = tmp_file("vram.bin", O_RDWR, path, sizeof path), ok = 1;
    if (!CHECK(env_gpu(&v, "stage_bufs=4,stage_size=65536", &g, 2 * (size_t)N * BS)) || !CHECK(fd >= 0)) goto out;
    src = g.mem;
    dst = g.mem + (size_t)N * BS;
    nt_fill(src, (size_t)N * BS, 11);
    CHECK_ST(reg1(v.a, NIXL_VRAM, (uintptr_t)g.mem, g.size, 0), NIXL_SUCCESS);
    CHECK_ST(reg1(v.a, NIXL_FILE, 0, (size_t)N * BS, (uint64_t)fd), NIXL_SUCCESS);
    CHECKF(g.pinned == 4, "4 bounce buffers pinned (%d)", g.pinned);
    CHECK_ST(move_blocks_mem(&v, NIXL_WRITE, NIXL_VRAM, src, fd, BS, N, NULL), NIXL_SUCCESS);
    CHECK(pread(fd, file, (size_t)N * BS, 0) == (ssize_t)((size_t)N * BS) && memcmp(file, src, (size_t)N * BS) == 0);
    CHECKF(g.copies == N * (BS / 65536), "one copy per 64 KiB piece (%ld)", g.copies);
    for (i = 0; i < N; i++) order[i] = (i * 7) % N;
    CHECK_ST(move_blocks_mem(&v, NIXL_READ, NIXL_VRAM, dst, fd, BS, N, order), NIXL_SUCCESS);
    for (i = 0; i < N && ok; i++) ok = !memcmp(dst + i * BS, src + order[i] * BS, BS);
    CHECKF(ok, "GPU block %zu differs", i - 1);
    CHECKF(g.events <= 4, "a completion marker per bounce buffer at most (%ld)", g.events);
    CHECK(staging_idle(&v, &g));
    env_down(&v);
    CHECKF(g.pinned == 0 && g.events == 0, "bounce buffers unpinned (%d) and markers gone (%ld)", g.pinned, g.events);
out:
    if (fd >= 0) close(fd);
    unlink(path);
    fake_free(&g);
    free(file);
}

/* a copy that fails to finish, and one that fails to start: the request
   fails with a log line, nothing else is affected, the next one moves */
static void test_vram_copy_failure(void) {
    enum { BS = 64 << 10, N = 8 };
    posix_env v;
    fake_gpu g;
    char path[300];
    int fd = tmp_file("vramfail.bin", O_RDWR, path, sizeof path);
    if (!CHECK(env_gpu(&v, "stage_bufs=2,stage_size=65536", &g, (size_t)N * BS)) || !CHECK(fd >= 0)) goto out;
    nt_fill(g.mem, g.size, 5);
    CHECK_ST(reg1(v.a, NIXL_VRAM, (uintptr_t)g.mem, g.size, 0), NIXL_SUCCESS);
    CHECK_ST(reg1(v.a, NIXL_FILE, 0, (size_t)N * BS, (uint64_t)fd), NIXL_SUCCESS);
    g.fail_done_at = 3;
    CHECK_ST(move_blocks_mem(&v, NIXL_WRITE, NIXL_VRAM, g.mem, fd, BS, N, NULL), NIXL_ERR_BACKEND);
    CHECK(logged_item(NIXL_LOGITEM_POSIX_COPY_FAILED));
    g.fail_done_at = 0;
    CHECK_ST(move_blocks_mem(&v, NIXL_WRITE, NIXL_VRAM, g.mem, fd, BS, N, NULL), NIXL_SUCCESS);
    g.fail_copy_at = g.copies + 2;
    CHECK_ST(move_blocks_mem(&v, NIXL_READ, NIXL_VRAM, g.mem, fd, BS, N, NULL), NIXL_ERR_BACKEND);
    CHECK(logged_item(NIXL_LOGITEM_POSIX_COPY_IN_NOT_STARTED));
    g.fail_copy_at = 0;
    memset(g.mem, 0, g.size);
    CHECK_ST(move_blocks_mem(&v, NIXL_READ, NIXL_VRAM, g.mem, fd, BS, N, NULL), NIXL_SUCCESS);
    CHECK(nt_verify(g.mem, g.size, 5));
    CHECK(staging_idle(&v, &g));
    env_down(&v);
out:
    if (fd >= 0) close(fd);
    unlink(path);
    fake_free(&g);
}

/* what VRAM registration and the copy-engine setter refuse, and why */
static void test_vram_rules(void) {
    posix_env v;
    fake_gpu g;
    unsigned char host[4096];
    nixl_copy_ops_t ops;
    if (!CHECK(env_gpu(&v, NULL, &g, 1 << 20))) goto out;
    CHECK_ST(reg1(v.a, NIXL_VRAM, (uintptr_t)host, sizeof host, 0), NIXL_ERR_INVALID_PARAM);
    CHECK(logged_item(NIXL_LOGITEM_VRAM_NOT_DEVICE));
    CHECK_ST(reg1(v.a, NIXL_VRAM, (uintptr_t)g.mem, g.size, 1), NIXL_ERR_INVALID_PARAM);
    CHECK(logged_item(NIXL_LOGITEM_VRAM_WRONG_GPU));
    CHECK_ST(reg1(v.a, NIXL_VRAM, (uintptr_t)g.mem, g.size, 0), NIXL_SUCCESS);
    ops = fake_ops(&g);
    CHECK_ST(nixl_posix_set_copy_ops(v.be, &ops), NIXL_ERR_NOT_ALLOWED);
    CHECK(logged_item(NIXL_LOGITEM_COPY_ENGINE_BUSY));
    ops.copy = NULL;
    CHECK_ST(nixl_posix_set_copy_ops(v.be, &ops), NIXL_ERR_INVALID_PARAM);
    CHECK_ST(nixl_posix_set_copy_ops(NULL, &ops), NIXL_ERR_INVALID_PARAM);
    CHECK(staging_idle(&v, &g));
    env_down(&v);
    CHECK(!env_up(&v, "stage_size=6000")); /* not a multiple of direct_align */
    CHECK(logged_item(NIXL_LOGITEM_POSIX_STAGE_SIZE));
    env_down(&v);
out:
    fake_free(&g);
}

/* O_DIRECT with VRAM: the GPU address need not be aligned (the bounce
   buffers are); offsets and lengths must be */
static void test_vram_o_direct(void) {
    enum { BS = 4096, N = 8 };
    posix_env v;
    fake_gpu g;
    char path[300];
    int fd = tmp_file("vramdirect.bin", O_RDWR | O_DIRECT, path, sizeof path);
    nixl_desc_t md = {0, BS, 0}, fdsc = {100, BS, 0};
    nixl_dlist_t ml = {NIXL_VRAM, &md, 1}, fl = {NIXL_FILE, &fdsc, 1};
    nixl_xfer_req_t *r = NULL;
    if (fd < 0) {
        SKIP("this filesystem refuses O_DIRECT");
        return;
    }
    if (!CHECK(env_gpu(&v, "stage_size=8192", &g, 2 * (size_t)N * BS + 4096))) goto out;
    nt_fill(g.mem, g.size, 9);
    CHECK_ST(reg1(v.a, NIXL_VRAM, (uintptr_t)g.mem, g.size, 0), NIXL_SUCCESS);
    CHECK_ST(reg1(v.a, NIXL_FILE, 0, (size_t)N * BS + 4096, (uint64_t)fd), NIXL_SUCCESS);
    md.addr = (uintptr_t)g.mem + 512;
    fdsc.dev_id = (uint64_t)fd;
    CHECK_ST(nixl_create_xfer_req(v.a, NIXL_WRITE, &ml, &fl, "offload", NULL, &r), NIXL_ERR_INVALID_PARAM);
    CHECK(logged_item(NIXL_LOGITEM_POSIX_DIRECT_ALIGN));
    CHECK_ST(move_blocks_mem(&v, NIXL_WRITE, NIXL_VRAM, g.mem + 512, fd, BS, N, NULL), NIXL_SUCCESS);
    CHECK_ST(move_blocks_mem(&v, NIXL_READ, NIXL_VRAM, g.mem + (size_t)N * BS + 1000, fd, BS, N, NULL),
             NIXL_SUCCESS);
    CHECK(memcmp(g.mem + (size_t)N * BS + 1000, g.mem + 512, (size_t)N * BS) == 0);
    CHECK(staging_idle(&v, &g));
    env_down(&v);
out:
    close(fd);
    unlink(path);
    fake_free(&g);
}

/* release while staged I/Os (copies and file I/Os) are in flight: it
   waits for them, every bounce buffer comes back, the agent goes on */
static void test_vram_release_in_flight(void) {
    enum { BS = 1 << 20, N = 16 };
    posix_env v;
    fake_gpu g;
    char path[300];
    int fd = tmp_file("vraminflight.bin", O_RDWR, path, sizeof path), k;
    if (!CHECK(env_gpu(&v, "stage_bufs=4,stage_size=262144", &g, (size_t)N * BS)) || !CHECK(fd >= 0)) goto out;
    nt_fill(g.mem, g.size, 4);
    CHECK_ST(reg1(v.a, NIXL_VRAM, (uintptr_t)g.mem, g.size, 0), NIXL_SUCCESS);
    CHECK_ST(reg1(v.a, NIXL_FILE, 0, (size_t)N * BS, (uint64_t)fd), NIXL_SUCCESS);
    CHECK(ftruncate(fd, (off_t)N * BS) == 0); /* the READs find bytes to read */
    for (k = 0; k < 4; k++) {
        nixl_desc_t md = {(uintptr_t)g.mem, (size_t)N * BS, 0}, fdsc = {0, (size_t)N * BS, (uint64_t)fd};
        nixl_dlist_t ml = {NIXL_VRAM, &md, 1}, fl = {NIXL_FILE, &fdsc, 1};
        nixl_xfer_req_t *r = NULL;
        CHECK_ST(nixl_create_xfer_req(v.a, k & 1 ? NIXL_READ : NIXL_WRITE, &ml, &fl, "offload", NULL, &r),
                 NIXL_SUCCESS);
        if (!r) break;
        CHECK(nixl_post_xfer_req(v.a, r, NULL) >= 0);
        CHECK_ST(nixl_release_xfer_req(v.a, r), NIXL_SUCCESS);
    }
    CHECK_ST(move_blocks_mem(&v, NIXL_WRITE, NIXL_VRAM, g.mem, fd, BS, N, NULL), NIXL_SUCCESS);
    CHECK(staging_idle(&v, &g));
    env_down(&v);
out:
    if (fd >= 0) close(fd);
    unlink(path);
    fake_free(&g);
}

/* the core never shows a local-only backend's files to peers */
static void test_files_not_in_metadata(void) {
    posix_env v;
    char path[300];
    int fd = tmp_file("md.bin", O_RDWR, path, sizeof path);
    void *blob = NULL;
    size_t len = 0;
    nixl_agent_config_t cfg;
    nixl_agent_t *peer = NULL;
    nixl_desc_t d = {0, 4096, 0};
    nixl_dlist_t l = {NIXL_FILE, &d, 1};
    if (!CHECK(env_up(&v, NULL)) || !CHECK(fd >= 0)) goto out;
    d.dev_id = (uint64_t)fd;
    CHECK_ST(reg1(v.a, NIXL_FILE, 0, 4096, (uint64_t)fd), NIXL_SUCCESS);
    CHECK_ST(nixl_get_local_md(v.a, &blob, &len), NIXL_SUCCESS);
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "peer";
    cfg.log_item_fn = capture_log_item;
    CHECK(nixl_agent_create(&cfg, &peer) == NIXL_SUCCESS);
    if (peer && blob) {
        CHECK_ST(nixl_load_remote_md(peer, blob, len, NULL, 0), NIXL_SUCCESS);
        CHECK_ST(nixl_check_remote_md(peer, "offload", &l), NIXL_ERR_NOT_FOUND); /* no file region there */
    }
    nixl_free_md(v.a, blob);
    nixl_agent_destroy(peer);
    env_down(&v);
out:
    if (fd >= 0) close(fd);
    unlink(path);
}

int main(int argc, char **argv) {
    static const char *engines[] = {"uring", "threads"};
    size_t e;
    const char *base = getenv("NIXL_TEST_DIR");
    nt_init(argc, argv);
    snprintf(g_dir, sizeof g_dir, "%s/nixl-posix-XXXXXX", base && *base ? base : "/var/tmp");
    if (!mkdtemp(g_dir)) {
        fprintf(stderr, "test_posix: mkdtemp(%s): %s\n", g_dir, strerror(errno));
        return 1;
    }
    for (e = 0; e < sizeof engines / sizeof engines[0]; e++) {
        g_engine = engines[e];
        printf("engine=%s\n", g_engine);
        if (!strcmp(g_engine, "uring")) {
            posix_env v;
            if (!env_up(&v, NULL)) {
                env_down(&v);
                nt_current = "engine uring";
                SKIP("io_uring cannot run here: the thread engine is tested alone");
                continue;
            }
            env_down(&v);
        }
        NT_RUN(test_write_read_back);
        NT_RUN(test_100k_descriptors);
        NT_RUN(test_bad_registrations);
        NT_RUN(test_mode_and_eof);
        NT_RUN(test_runtime_errors);
        NT_RUN(test_o_direct);
        NT_RUN(test_release_in_flight);
        NT_RUN(test_enospc);
        NT_RUN(test_vram_write_read_back);
        NT_RUN(test_vram_copy_failure);
        NT_RUN(test_vram_o_direct);
        NT_RUN(test_vram_release_in_flight);
    }
    NT_RUN(test_engine_choice);
    NT_RUN(test_files_not_in_metadata);
    NT_RUN(test_vram_without_driver);
    NT_RUN(test_vram_rules);
    NT_RUN(test_peer_claiming_posix_files);
    rmdir(g_dir);
    return nt_finish();
}
