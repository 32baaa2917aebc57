/*
 * Mutation fuzzer for the UCX wire-object checks (_nixl_ucx_addr_check,
 * _nixl_ucx_rkey_check).
 *
 * A helper process creates a real UCP worker (TAG|AM|RMA) and packs its
 * worker address and the rkey of a registered host buffer.  Each fuzz case
 * applies random mutations (seeded, deterministic) to one of them, copies
 * the result to the very end of an mmap'd region followed by a PROT_NONE
 * page (any read past the length faults), and forks a child that runs the
 * validator and, only if it accepts, feeds the bytes to UCX:
 *   address: ucp_ep_create (ERR_MODE_PEER + handler), short progress loop,
 *            ucp_ep_close_nbx(FORCE);
 *   rkey:    ucp_ep_rkey_unpack on a loopback ep to a worker in the child,
 *            ucp_rkey_destroy.
 * The parent counts children that die by a signal (or exit abnormally) and
 * children that hang (killed after 5 s).  Before the random cases, fixed
 * regression cases (mutations that once got through) run on the live seed.
 *
 * Usage: fuzz_ucx_wire [cases] [seed]       (env NIXL_FUZZ_CASES,
 *        NIXL_FUZZ_SEED, NIXL_FUZZ_JOBS, NIXL_FUZZ_NO_CHECK=1 bypasses the
 *        validator, NIXL_FUZZ_VERBOSE=1 keeps UCX stderr)
 *        fuzz_ucx_wire --replay addr|rkey "HEX BYTES"   (one case as a CRASH
 *        line printed it, checked, then handed to UCX with its output kept)
 * Build: gcc -std=c99 -D_GNU_SOURCE -Wall -Wextra -Werror -I. \
 *        [-DNIXL_FUZZ_WIRE_STANDALONE] tests/fuzz_ucx_wire.c -lucp -luct -lucs
 * Prints: FIGURE ucx_wire_fuzz cases=N accepted=A rejected=R aborts=K timeouts=T
 */
#ifdef NIXL_FUZZ_WIRE_STANDALONE
#include "/tmp/ucxcheck/ucx_check.inc"
#else
#define NIXL_IMPLEMENTATION
#include "nixl.h"
#include "nixl_ucx.h"
#endif

#include <ucp/api/ucp.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FZ_MAX_LEN      4096
#define FZ_TIMEOUT_NS   (5ll * 1000000000ll)
#define FZ_MAX_JOBS     16

/* child exit codes */
#define FZ_RC_RAN       0   /* accepted and handed to UCX */
#define FZ_RC_REJECTED  10  /* validator rejected */
#define FZ_RC_SETUP     11  /* could not set up UCX in the child */

typedef struct {
    uint8_t addr[FZ_MAX_LEN];
    size_t  addr_len;
    uint8_t rkey[FZ_MAX_LEN];
    size_t  rkey_len;
} fz_seed_t;

static uint64_t fz_rng_next(uint64_t *s)
{
    /* splitmix64: small, seedable, good enough for mutation choice */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t fz_rand(uint64_t *s, size_t n)
{
    return n ? (size_t)(fz_rng_next(s) % n) : 0;
}

static long long fz_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/* all of len bytes through a pipe, reading or writing; 0 on success */
static int fz_io_full(int fd, void *buf, size_t len, int writing)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = writing ? write(fd, p, len) : read(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void fz_quiet_stderr(void)
{
    const char *v = getenv("NIXL_FUZZ_VERBOSE");
    int fd;
    if (v != NULL && v[0] == '1') return;
    fd = open("/dev/null", O_WRONLY);
    if (fd >= 0) {
        dup2(fd, 1); /* UCX logs go to stdout by default */
        dup2(fd, 2);
        close(fd);
    }
}

static int fz_ucx_init(ucp_context_h *ctx, ucp_worker_h *worker)
{
    ucp_params_t params;
    ucp_worker_params_t wparams;

    memset(&params, 0, sizeof(params));
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features   = UCP_FEATURE_TAG | UCP_FEATURE_AM | UCP_FEATURE_RMA;
    if (ucp_init(&params, NULL, ctx) != UCS_OK) return -1;

    memset(&wparams, 0, sizeof(wparams));
    wparams.field_mask  = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wparams.thread_mode = UCS_THREAD_MODE_SINGLE;
    if (ucp_worker_create(*ctx, &wparams, worker) != UCS_OK) {
        ucp_cleanup(*ctx);
        return -1;
    }
    return 0;
}

/* Peer process: real worker whose address and rkey seed the mutations.
 * Keeps progressing until the parent closes the pipe. */
static pid_t fz_start_peer(fz_seed_t *seed, uint64_t *own_rkey_map)
{
    int to_parent[2], keepalive[2];
    pid_t pid;

    if (pipe(to_parent) || pipe(keepalive)) return -1;
    pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        static uint8_t region[1 << 16];
        ucp_context_h ctx;
        ucp_worker_h worker;
        ucp_address_t *addr;
        ucp_mem_map_params_t mp;
        ucp_mem_h memh;
        void *rkey;
        size_t addr_len, rkey_len;
        uint64_t hdr[2];
        char c;

        close(to_parent[0]);
        close(keepalive[1]);
        fz_quiet_stderr();
        if (fz_ucx_init(&ctx, &worker) ||
            ucp_worker_get_address(worker, &addr, &addr_len) != UCS_OK)
            _exit(1);
        memset(&mp, 0, sizeof(mp));
        mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
                        UCP_MEM_MAP_PARAM_FIELD_LENGTH;
        mp.address    = region;
        mp.length     = sizeof(region);
        if (ucp_mem_map(ctx, &mp, &memh) != UCS_OK ||
            ucp_rkey_pack(ctx, memh, &rkey, &rkey_len) != UCS_OK)
            _exit(1);
        if (addr_len > FZ_MAX_LEN || rkey_len > FZ_MAX_LEN) _exit(1);
        hdr[0] = addr_len;
        hdr[1] = rkey_len;
        if (fz_io_full(to_parent[1], hdr, sizeof(hdr), 1) ||
            fz_io_full(to_parent[1], addr, addr_len, 1) ||
            fz_io_full(to_parent[1], rkey, rkey_len, 1))
            _exit(1);
        close(to_parent[1]);
        fcntl(keepalive[0], F_SETFL, O_NONBLOCK);
        for (;;) {
            ssize_t n;
            ucp_worker_progress(worker);
            n = read(keepalive[0], &c, 1);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) break;
            usleep(200);
        }
        _exit(0);
    }
    {
        uint64_t hdr[2];
        close(to_parent[1]);
        close(keepalive[0]);
        /* keepalive[1] stays open in the parent (and, harmlessly, in the
         * case children) until the parent exits */
        if (fz_io_full(to_parent[0], hdr, sizeof(hdr), 0) || hdr[0] > FZ_MAX_LEN ||
            hdr[1] > FZ_MAX_LEN ||
            fz_io_full(to_parent[0], seed->addr, hdr[0], 0) ||
            fz_io_full(to_parent[0], seed->rkey, hdr[1], 0)) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            return -1;
        }
        close(to_parent[0]);
        seed->addr_len = hdr[0];
        seed->rkey_len = hdr[1];
        /* Same UCX build and configuration in this process: the md indices
         * of the peer's rkey are the ones our own registration would use. */
        *own_rkey_map = _nixl_ucx_rkey_md_map(seed->rkey, seed->rkey_len);
    }
    return pid;
}

/* Apply 1..4 random mutations in place; returns the new length. */
static size_t fz_mutate(uint8_t *buf, size_t len, size_t cap, uint64_t *rng)
{
    static const uint8_t special[] = {0x00, 0xff, 0x7f, 0x80};
    size_t n = 1 + fz_rand(rng, 4), i;

    for (i = 0; i < n; ++i) {
        size_t pos = fz_rand(rng, len ? len : 1);
        switch (fz_rand(rng, 7)) {
        case 0: /* bit flip */
            if (len) buf[pos] ^= (uint8_t)(1u << fz_rand(rng, 8));
            break;
        case 1: /* interesting byte */
            if (len) buf[pos] = special[fz_rand(rng, sizeof(special))];
            break;
        case 2: /* truncation */
            len = fz_rand(rng, len + 1);
            break;
        case 3: { /* extension with random bytes */
            size_t add = 1 + fz_rand(rng, 16), k;
            for (k = 0; k < add && len < cap; ++k)
                buf[len++] = (uint8_t)fz_rng_next(rng);
            break;
        }
        case 4: /* length/flag byte bump: +-1..3, or toggle a high flag bit */
            if (len) {
                int d = 1 + (int)fz_rand(rng, 3);
                if (fz_rand(rng, 3) == 0)
                    buf[pos] ^= (uint8_t)(0x20u << fz_rand(rng, 3));
                else
                    buf[pos] = (uint8_t)(buf[pos] + (fz_rand(rng, 2) ? d : -d));
            }
            break;
        case 5: { /* duplicate a block (insert a copy at another position) */
            size_t blen, src, dst;
            if (!len) break;
            blen = 1 + fz_rand(rng, len < 24 ? len : 24);
            src  = fz_rand(rng, len - blen + 1);
            dst  = fz_rand(rng, len + 1);
            if (len + blen > cap) break;
            {
                uint8_t tmp[24];
                memcpy(tmp, buf + src, blen);
                memmove(buf + dst + blen, buf + dst, len - dst);
                memcpy(buf + dst, tmp, blen);
            }
            len += blen;
            break;
        }
        default: /* random byte */
            if (len) buf[pos] = (uint8_t)fz_rng_next(rng);
            break;
        }
    }
    return len;
}

static void fz_progress_for(ucp_worker_h worker, long long ns)
{
    long long until = fz_now_ns() + ns;
    while (fz_now_ns() < until) {
        if (!ucp_worker_progress(worker)) usleep(100);
    }
}

static void fz_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    (void)arg; (void)ep; (void)status;
}

static void fz_close_ep(ucp_worker_h worker, ucp_ep_h ep)
{
    ucp_request_param_t rp;
    void *req;
    long long until;

    memset(&rp, 0, sizeof(rp));
    rp.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    rp.flags        = UCP_EP_CLOSE_FLAG_FORCE;
    req = ucp_ep_close_nbx(ep, &rp);
    if (UCS_PTR_IS_PTR(req)) {
        until = fz_now_ns() + 1000000000ll;
        while (ucp_request_check_status(req) == UCS_INPROGRESS &&
               fz_now_ns() < until)
            ucp_worker_progress(worker);
        if (ucp_request_check_status(req) != UCS_INPROGRESS)
            ucp_request_free(req);
    }
}

static ucs_status_t fz_ep_create(ucp_worker_h worker, const void *addr,
                                 ucp_ep_h *ep)
{
    ucp_ep_params_t ep_params;
    memset(&ep_params, 0, sizeof(ep_params));
    ep_params.field_mask      = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                                UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                                UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep_params.address         = (const ucp_address_t*)addr;
    ep_params.err_mode        = UCP_ERR_HANDLING_MODE_PEER;
    ep_params.err_handler.cb  = fz_err_cb;
    ep_params.err_handler.arg = NULL;
    return ucp_ep_create(worker, &ep_params, ep);
}

/* Runs in the forked child; never returns. */
static void fz_child(const uint8_t *data, size_t len, int is_rkey,
                     uint64_t rkey_allowed, int no_check)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t span = ((len + (size_t)page - 1) / (size_t)page + 1) * (size_t)page;
    uint8_t *region, *guard, *bytes;
    ucp_context_h ctx;
    ucp_worker_h worker;
    ucp_ep_h ep;
    const char *why;

    fz_quiet_stderr();
    region = mmap(NULL, span + (size_t)page, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) _exit(FZ_RC_SETUP);
    guard = region + span;
    if (mprotect(guard, (size_t)page, PROT_NONE)) _exit(FZ_RC_SETUP);
    bytes = guard - len;          /* last byte sits just below the guard */
    memcpy(bytes, data, len);

    why = is_rkey ? _nixl_ucx_rkey_check(bytes, len, rkey_allowed)
                  : _nixl_ucx_addr_check(bytes, len);
    if (why != NULL && !no_check) _exit(FZ_RC_REJECTED);
    /* UCX cannot even look at an empty buffer: that is not a finding */
    if (len == 0) _exit(FZ_RC_REJECTED);

    if (fz_ucx_init(&ctx, &worker)) _exit(FZ_RC_SETUP);

    if (!is_rkey) {
        if (fz_ep_create(worker, bytes, &ep) == UCS_OK) {
            fz_progress_for(worker, 30000000ll);
            fz_close_ep(worker, ep);
        }
    } else {
        ucp_address_t *self_addr;
        size_t self_len;
        ucp_rkey_h rkey;
        if (ucp_worker_get_address(worker, &self_addr, &self_len) != UCS_OK ||
            fz_ep_create(worker, self_addr, &ep) != UCS_OK)
            _exit(FZ_RC_SETUP);
        fz_progress_for(worker, 5000000ll);
        if (ucp_ep_rkey_unpack(ep, bytes, &rkey) == UCS_OK)
            ucp_rkey_destroy(rkey);
        fz_close_ep(worker, ep);
        ucp_worker_release_address(worker, self_addr);
    }
    ucp_worker_destroy(worker);
    ucp_cleanup(ctx);
    _exit(FZ_RC_RAN);
}

typedef struct {
    pid_t     pid;
    long long start;
    long      index;
    int       is_rkey;
} fz_job_t;

static void fz_dump_case(const char *what, long index, int is_rkey,
                         const uint8_t *b, size_t len)
{
    size_t i;
    printf("  %s case %ld (%s, len %zu):", what, index,
           is_rkey ? "rkey" : "addr", len);
    for (i = 0; i < len && i < 512; ++i) printf(" %02x", b[i]);
    printf("%s\n", len > 512 ? " ..." : "");
}

/* Runs one case in a child, as the main loop does; 1 if the child died. */
static int fz_run_one(const uint8_t *buf, size_t len, int is_rkey, uint64_t rkey_map)
{
    int status;
    pid_t pid;
    fflush(stdout);
    pid = fork();
    if (pid < 0) return 1;
    if (pid == 0) fz_child(buf, len, is_rkey, rkey_map, 0);
    waitpid(pid, &status, 0);
    return WIFSIGNALED(status) ||
           (WIFEXITED(status) && WEXITSTATUS(status) != FZ_RC_RAN &&
            WEXITSTATUS(status) != FZ_RC_REJECTED && WEXITSTATUS(status) != FZ_RC_SETUP);
}

/* Mutations that once got past the checks and aborted UCX, applied to the
 * live seed (so segment ids, ports and pids are real and UCX gets as far as
 * attaching): each must be refused, or at least not kill the process.
 * Returns the number of cases that killed their child. */
static int fz_regressions(const fz_seed_t *seed, uint64_t rkey_map, int *ran_out)
{
    static const uint8_t posix_flags[] = {0x00, 0x20}; /* no procfs, no shm_open */
    static uint8_t buf[FZ_MAX_LEN];
    size_t i, k;
    int bad = 0, ran = 0;

    /* posix iface: tl csum, 16 bytes of v1 attributes, a length byte, then
     * the 8-byte fifo segment id whose top byte holds the mode flags */
    for (i = 0; i + 2 + 16 + 1 + 8 <= seed->addr_len; ++i) {
        if (seed->addr[i] != (_NIXL_UCXA_TL_POSIX & 0xff) ||
            seed->addr[i + 1] != (_NIXL_UCXA_TL_POSIX >> 8) ||
            (seed->addr[i + 2 + 16] & _NIXL_UCXA_IF_LEN_MASK) != 8)
            continue;
        for (k = 0; k < sizeof(posix_flags); ++k) {
            memcpy(buf, seed->addr, seed->addr_len);
            buf[i + 2 + 16 + 1 + 7] = posix_flags[k];
            ++ran;
            if (fz_run_one(buf, seed->addr_len, 0, rkey_map)) {
                ++bad;
                fz_dump_case("CRASH(regression posix flags)", (long)k, 0, buf, seed->addr_len);
            }
        }
    }
    printf("fuzz_ucx_wire: %d regression case(s), %d killed their process\n", ran, bad);
    *ran_out = ran;
    return bad;
}

/* --replay addr|rkey HEX: one case as printed by a CRASH line, in a child,
 * with UCX's own output kept; exits with the child's fate. */
static int fz_replay(const char *kind, const char *hex)
{
    static uint8_t buf[FZ_MAX_LEN];
    static fz_seed_t seed;
    uint64_t own_rkey_map = 0;
    size_t len = 0;
    unsigned v;
    int n, status, is_rkey = strcmp(kind, "rkey") == 0;
    const char *why;
    pid_t peer, pid;

    while (len < FZ_MAX_LEN && sscanf(hex, " %2x%n", &v, &n) == 1) {
        buf[len++] = (uint8_t)v;
        hex += n;
    }
    peer = fz_start_peer(&seed, &own_rkey_map);
    if (peer < 0) return 2;
    setenv("NIXL_FUZZ_VERBOSE", "1", 1);
    why = is_rkey ? _nixl_ucx_rkey_check(buf, len, own_rkey_map)
                  : _nixl_ucx_addr_check(buf, len);
    printf("replay %s, %zu bytes: validator says %s\n", kind, len,
           why != NULL ? why : "accept");
    fflush(stdout);
    pid = fork();
    if (pid == 0) fz_child(buf, len, is_rkey, own_rkey_map, 0);
    waitpid(pid, &status, 0);
    kill(peer, SIGKILL);
    waitpid(peer, NULL, 0);
    if (WIFSIGNALED(status)) {
        printf("replay: child died by signal %d\n", WTERMSIG(status));
        return 1;
    }
    printf("replay: child exit %d\n", WEXITSTATUS(status));
    return 0;
}

int main(int argc, char **argv)
{
    const char *env;
    long cases = 2000, i, done = 0;
    uint64_t seed_val = 1, own_rkey_map = 0;
    long accepted = 0, rejected = 0, aborts = 0, timeouts = 0, setup = 0;
    int no_check = 0, jobs = 2, running = 0, j, shown = 0, regressions = 0;
    fz_job_t slot[FZ_MAX_JOBS];
    static fz_seed_t seed;
    static uint8_t cases_buf[FZ_MAX_JOBS][FZ_MAX_LEN];
    static size_t cases_len[FZ_MAX_JOBS];
    pid_t peer;

    if (argc == 4 && strcmp(argv[1], "--replay") == 0)
        return fz_replay(argv[2], argv[3]);
    if ((env = getenv("NIXL_FUZZ_CASES")) != NULL) cases = atol(env);
    if ((env = getenv("NIXL_FUZZ_SEED")) != NULL) seed_val = strtoull(env, NULL, 0);
    if ((env = getenv("NIXL_FUZZ_JOBS")) != NULL) jobs = atoi(env);
    if ((env = getenv("NIXL_FUZZ_NO_CHECK")) != NULL && env[0] == '1') no_check = 1;
#ifdef NO_CHECK
    no_check = 1;
#endif
    if (argc > 1) cases = atol(argv[1]);
    if (argc > 2) seed_val = strtoull(argv[2], NULL, 0);
    if (cases < 0) cases = 0;
    if (jobs < 1) jobs = 1;
    if (jobs > FZ_MAX_JOBS) jobs = FZ_MAX_JOBS;

    fflush(stdout);
    peer = fz_start_peer(&seed, &own_rkey_map);
    if (peer < 0) {
        fprintf(stderr, "fuzz_ucx_wire: could not create seed worker\n");
        return 2;
    }
    printf("fuzz_ucx_wire: seed=%llu cases=%ld jobs=%d check=%s addr_len=%zu "
           "rkey_len=%zu rkey_md_map=0x%llx\n",
           (unsigned long long)seed_val, cases, jobs, no_check ? "OFF" : "on",
           seed.addr_len, seed.rkey_len, (unsigned long long)own_rkey_map);
    if (_nixl_ucx_addr_check(seed.addr, seed.addr_len) != NULL ||
        _nixl_ucx_rkey_check(seed.rkey, seed.rkey_len, own_rkey_map) != NULL) {
        printf("fuzz_ucx_wire: validator rejects the unmutated seed (%s / %s)\n",
               _nixl_ucx_addr_check(seed.addr, seed.addr_len),
               _nixl_ucx_rkey_check(seed.rkey, seed.rkey_len, own_rkey_map));
        kill(peer, SIGKILL);
        waitpid(peer, NULL, 0);
        return 1;
    }
    aborts = fz_regressions(&seed, own_rkey_map, &regressions);
    fflush(stdout);

    for (j = 0; j < FZ_MAX_JOBS; ++j) slot[j].pid = 0;
    i = 0;
    while (done < cases) {
        /* launch */
        while (running < jobs && i < cases) {
            uint64_t rng = seed_val * 0x100000001b3ull + (uint64_t)i;
            int is_rkey;
            size_t len;
            pid_t pid;

            for (j = 0; j < jobs && slot[j].pid != 0; ++j) {}
            fz_rng_next(&rng);
            is_rkey = (fz_rand(&rng, 4) == 0); /* 1/4 of the cases */
            if (is_rkey) {
                memcpy(cases_buf[j], seed.rkey, seed.rkey_len);
                len = seed.rkey_len;
            } else {
                memcpy(cases_buf[j], seed.addr, seed.addr_len);
                len = seed.addr_len;
            }
            len = fz_mutate(cases_buf[j], len, FZ_MAX_LEN, &rng);
            cases_len[j] = len;
            fflush(stdout);
            pid = fork();
            if (pid < 0) {
                perror("fork");
                return 2;
            }
            if (pid == 0)
                fz_child(cases_buf[j], len, is_rkey, own_rkey_map, no_check);
            slot[j].pid     = pid;
            slot[j].start   = fz_now_ns();
            slot[j].index   = i;
            slot[j].is_rkey = is_rkey;
            ++running;
            ++i;
        }
        /* reap */
        for (j = 0; j < jobs; ++j) {
            int status;
            pid_t r;
            if (slot[j].pid == 0) continue;
            r = waitpid(slot[j].pid, &status, WNOHANG);
            if (r == 0) {
                if (fz_now_ns() - slot[j].start > FZ_TIMEOUT_NS) {
                    kill(slot[j].pid, SIGKILL);
                    waitpid(slot[j].pid, &status, 0);
                    ++timeouts;
                    if (shown++ < 5)
                        fz_dump_case("TIMEOUT", slot[j].index, slot[j].is_rkey,
                                     cases_buf[j], cases_len[j]);
                } else {
                    continue;
                }
            } else if (WIFSIGNALED(status) ||
                       (WIFEXITED(status) && WEXITSTATUS(status) != FZ_RC_RAN &&
                        WEXITSTATUS(status) != FZ_RC_REJECTED &&
                        WEXITSTATUS(status) != FZ_RC_SETUP)) {
                ++aborts;
                if (shown++ < 5) {
                    char what[48];
                    snprintf(what, sizeof(what), "CRASH(%s %d)",
                             WIFSIGNALED(status) ? "sig" : "exit",
                             WIFSIGNALED(status) ? WTERMSIG(status)
                                                 : WEXITSTATUS(status));
                    fz_dump_case(what, slot[j].index, slot[j].is_rkey,
                                 cases_buf[j], cases_len[j]);
                }
            } else if (WEXITSTATUS(status) == FZ_RC_RAN) {
                ++accepted;
            } else if (WEXITSTATUS(status) == FZ_RC_REJECTED) {
                ++rejected;
            } else {
                ++setup;
            }
            slot[j].pid = 0;
            --running;
            ++done;
            if (done % 500 == 0) {
                printf("  ... %ld/%ld\n", done, cases);
                fflush(stdout);
            }
        }
        if (running >= jobs || i >= cases) usleep(1000);
    }

    kill(peer, SIGKILL);
    waitpid(peer, NULL, 0);
    if (setup) printf("fuzz_ucx_wire: %ld cases could not set up UCX\n", setup);
    printf("FIGURE ucx_wire_fuzz cases=%ld accepted=%ld rejected=%ld aborts=%ld "
           "timeouts=%ld\n", cases, accepted, rejected, aborts, timeouts);
    printf("%ld passed, %ld failed\n", cases + regressions - aborts - timeouts, aborts + timeouts);
    return (aborts + timeouts) > 0 ? 1 : 0;
}
