/* nixl_posix.h — the file backend of nixl.h: KV-cache blocks between memory
   and local storage (files, block devices), with NIXL's POSIX semantics,
   on Linux io_uring (liburing) or, where io_uring is unavailable, a small
   pool of threads doing pread/pwrite.

   DO THIS
   -------
   In every file that uses it:
       #include "nixl_posix.h"          (includes nixl.h)
   In exactly ONE C or C++ file, before the include:
       #define NIXL_IMPLEMENTATION
   Link: -luring -lpthread   (Debian: liburing-dev)

       nixl_backend_t *be;
       nixl_create_backend(agent, nixl_posix_backend(), "queue_depth=64", &be);

   MODEL (NIXL's convention for files)
   -----
   A FILE (or BLK: a block device) descriptor is {addr = offset in the file,
   len = bytes, dev_id = the file descriptor}. Register the files (and the
   host memory that moves to and from them) with this backend; transfers
   are local: prepare the memory as the local list and the file ranges as
   the "remote" list of the agent itself (its own name), then
       WRITE: memory -> file (pwrite)      READ: file -> memory (pread).
   Every descriptor of a request runs concurrently, up to queue_depth I/Os
   in flight; larger descriptors are cut at max_io. The request completes
   when every byte moved; it fails (status and a log line naming the file
   descriptor, offset and errno) on the first I/O error, after what was in
   flight finished. There are no notifications (a local backend), and its
   regions are never in the metadata peers see.

   PARAMS ("key=value,key=value"; every key optional)
       engine=auto|uring|threads  auto (default): io_uring when the kernel
                          allows it (io_uring_queue_init succeeds), else the
                          thread pool, logged; uring or threads forces one
                          (uring where it cannot run: NOT_SUPPORTED).
       queue_depth=N      I/Os in flight, 1..4096 (default 64): the io_uring
                          size, or the pool's queue.
       threads=N          the pool's threads, 1..64 (default 4).
       max_io=N           bytes; a larger descriptor is cut into I/Os of at
                          most this, 4096..1 GiB (default 8 MiB).
       direct_align=N     O_DIRECT files: address, length and offset of every
                          descriptor must be multiples of this, 512..65536
                          (default 4096, what every Linux filesystem takes);
                          checked at prep with a clear error.
       stage_bufs=N       VRAM: bounce buffers, 1..1024 (default 16).
       stage_size=N       VRAM: bytes per bounce buffer (and per staged
                          I/O), a multiple of direct_align, 4096..1 GiB
                          (default 2 MiB).

   REGISTRATION
   ------------
   NIXL_DRAM: any host memory (recorded; nothing pinned). NIXL_VRAM: see
   VRAM below. NIXL_FILE: dev_id
   must be an open descriptor of a regular file; NIXL_BLK: of a block device
   (the range must lie within it). The open mode is recorded: a WRITE needs
   the file open for writing, a READ for reading (NOT_ALLOWED otherwise, at
   prep). A READ past the end of a file is INVALID_PARAM at prep; a file that
   shrinks later fails the request (end of file) when it is reached.
   The backend keeps its own duplicate of each registered descriptor (one
   per descriptor, shared by its regions) until the last region goes: I/O
   reaches the file that was registered even if the application closes the
   number or reuses it for another file.
   nixl_posix_query tells a registered file's size, mode and mtime (NIXL's
   query_memory).

   RELEASE
   -------
   Releasing a request stops its unsubmitted I/Os and waits for those in
   flight (at most queue_depth, each bounded by the device): nothing of it
   touches memory afterwards.

   THREADING
   ---------
   The core calls the backend under the agent's lock. The thread engine
   runs `threads` workers of its own that only take I/Os from a queue and
   put results back (their own lock); completions are handled in progress.

   VRAM
   ----
   GPU memory registered with this backend (NIXL_VRAM, dev_id = the GPU)
   moves to and from files through pinned host bounce buffers (stage_bufs
   of stage_size bytes, made on the first VRAM registration): a WRITE
   copies a piece from the GPU into a buffer with the copy engine, then
   writes it to the file; a READ reads into a buffer, then copies it to the
   GPU. Pieces are cut at stage_size and run concurrently, one per buffer.
   The copy engine is the CUDA driver's (opened with dlopen: without it,
   VRAM registration is NOT_SUPPORTED with the reason), or one installed
   with nixl_posix_set_copy_ops (nixl_copy_ops_t, shared with the verbs
   backend). A failed copy fails the request like a failed I/O. O_DIRECT
   files: offsets and lengths must be aligned; the GPU address need not be
   (the bounce buffers are).

   LIMITS
   ------
   GPUDirect Storage (cuFile) is not used: VRAM is always staged.
   io_uring registers each file (a slot per descriptor, 1024 slots, Linux
   5.19+) and the bounce buffers (where RLIMIT_MEMLOCK allows), logged when
   it cannot; host memory is not registered with io_uring (its regions are
   the application's, of any size: pinning them all would take the
   locked-memory limit).

   LICENSE: MIT (see nixl.h).
*/
#ifndef NIXL_POSIX_H
#define NIXL_POSIX_H

#include "nixl.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The file backend's vtable, for nixl_create_backend. Name "POSIX", memory
   DRAM, VRAM (staged, see VRAM), FILE and BLK, caps LOCAL. Never fails (errors come from
   nixl_create_backend: INVALID_PARAM for a bad param, NOT_SUPPORTED for
   engine=uring where io_uring cannot run). Any thread. */
NIXL_API const nixl_backend_ops_t *nixl_posix_backend(void);

/* Which engine a POSIX backend runs (0: be is not a POSIX backend). Any thread. */
enum { NIXL_POSIX_ENGINE_URING = 1, NIXL_POSIX_ENGINE_THREADS = 2 };
NIXL_API int nixl_posix_engine(nixl_backend_t *be);

/* A registered file's state now (fstat of its descriptor), like NIXL's
   query_memory. */
typedef struct nixl_posix_file_info {
    uint64_t size;      /* bytes (a block device: its size) */
    uint32_t mode;      /* st_mode */
    int64_t mtime_s;    /* last modification, seconds since the epoch */
    int readable, writable, direct; /* how the descriptor was opened */
} nixl_posix_file_info_t;

/* Fills *info for file descriptor fd, which must be registered with be.
   Errors: INVALID_PARAM (be not POSIX, NULL info), NOT_FOUND (fd not
   registered), BACKEND (fstat failed: the descriptor was closed; logged).
   Any thread. */
NIXL_API nixl_status_t nixl_posix_query(nixl_backend_t *be, int fd, nixl_posix_file_info_t *info);

/* Installs the copy engine VRAM is staged with (nixl_copy_ops_t, copied;
   ops->ctx must outlive the backend); NULL restores the CUDA driver's.
   Errors: INVALID_PARAM (be not POSIX, a required function missing),
   NOT_ALLOWED while VRAM is registered with be or staged I/O is in flight.
   Any thread (under the agent's lock). */
NIXL_API nixl_status_t nixl_posix_set_copy_ops(nixl_backend_t *be, const nixl_copy_ops_t *ops);

#ifdef __cplusplus
}
#endif

#endif /* NIXL_POSIX_H */

/* ======================================================================== */
/* implementation                                                           */
/* ======================================================================== */
#if defined(NIXL_IMPLEMENTATION) && !defined(NIXL_POSIX_IMPLEMENTATION_DONE)
#define NIXL_POSIX_IMPLEMENTATION_DONE

#include "nixl.h" /* its implementation too, when the declarations came first */

#include <liburing.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

/* O_DIRECT is glibc's only under _GNU_SOURCE, which nixl.h's implementation
   sets unless the declarations were included (locking the feature macros)
   before NIXL_IMPLEMENTATION was defined: take the value from its other name */
#if !defined(O_DIRECT) && defined(__O_DIRECT)
#define O_DIRECT __O_DIRECT
#endif

// >>constants

#define _NIXL_POSIX_WAIT_NS 10000000 /* release/destroy: one wait for completions, 10 ms */
#define _NIXL_POSIX_FIXED_FILES 1024u /* io_uring: registered file slots */

// >>structs

/* a registered region: host memory, or a range of a file */
typedef struct _nixl_posix_md {
    struct _nixl_posix_md *prev, *next;
    nixl_mem_t mem;
    int fd;
    uint64_t addr, len;
    int acc;    /* O_RDONLY, O_WRONLY or O_RDWR */
    int direct; /* opened with O_DIRECT */
    int gpu;    /* VRAM: the GPU's ordinal */
    int file;   /* FILE/BLK: its entry in the engine's file table */
} _nixl_posix_md_t;

/* A registered descriptor: our own duplicate of it (I/O reaches the file
   that was registered even if the application closes or reuses the
   number) and its io_uring slot, shared by the regions naming fd. */
typedef struct _nixl_posix_file {
    int fd, iofd, slot; /* slot: io_uring's registered file, or -1 */
    uint32_t refs;      /* regions; 0: a free entry */
} _nixl_posix_file_t;

struct _nixl_posix_req;

/* one I/O: up to max_io bytes between buf and (fd, off). A staged one
   (VRAM) moves between the file and a bounce buffer (buf, while it holds
   one), and between that and the GPU with the copy engine: a WRITE copies
   first, a READ after. */
typedef struct _nixl_posix_io {
    struct _nixl_posix_req *req;
    int fd, slot;       /* fd: our duplicate; slot: io_uring's registered file, or -1 */
    int user_fd;        /* the application's number, for log lines */
    uint64_t off;
    unsigned char *buf;
    uint32_t len, done; /* done: bytes moved so far (io_uring may move fewer) */
    int64_t res;        /* thread engine: bytes moved, or -errno */
    int gpu;            /* staged: the GPU; -1: host memory */
    uintptr_t dptr;     /* staged: the device address */
    int stage;          /* staged: its bounce buffer while it holds one, else -1 */
    struct _nixl_posix_io *copy_next; /* the engine's copies in flight */
} _nixl_posix_io_t;

/* a pinned host buffer VRAM I/Os are staged through */
typedef struct _nixl_posix_bounce {
    unsigned char *host;
    void *ev;   /* the copy engine's completion marker, made on first use */
    int ev_gpu; /* the GPU it was made for */
    int pinned;
} _nixl_posix_bounce_t;

typedef struct _nixl_posix_req {
    struct _nixl_posix_req *prev, *next;         /* engine's requests */
    struct _nixl_posix_req *pend_prev, *pend_next; /* with I/Os still to submit */
    int pending;
    int write; /* WRITE: memory -> file */
    _nixl_posix_io_t *io;
    size_t nio, cursor, inflight, ndone; /* cursor: the next I/O to submit */
    int active, failed;
    nixl_status_t status, fail_status;
} _nixl_posix_req_t;

typedef struct _nixl_posix_engine {
    nixl_backend_t *be;
    int kind; /* NIXL_POSIX_ENGINE_* */
    uint32_t qd, nthreads, max_io, align;
    uint32_t inflight; /* I/Os handed to the kernel or the pool, or copying */
    /* VRAM: the copy engine (the CUDA driver's unless set), its bounce
       buffers (made on the first VRAM registration) and copies in flight */
    _nixl_cuda_t cuda;
    nixl_copy_ops_t copy;
    int copy_custom;
    uint32_t stage_bufs, stage_size, nvram;
    _nixl_posix_bounce_t *bounce;
    uint32_t *bounce_free, nbounce_free;
    _nixl_posix_io_t *copy_head;
    _nixl_posix_md_t *mds;
    _nixl_posix_req_t *reqs;
    _nixl_posix_req_t *pend_head, *pend_tail;
    /* io_uring */
    struct io_uring ring;
    int ring_ok;
    /* registered descriptors; io_uring's file slots (where the kernel has
       them: slots_ok) and registered bounce buffers (bufs_ok) */
    _nixl_posix_file_t *files;
    uint32_t nfiles, files_cap;
    unsigned char *slot_used;
    int bufs_ok;
    uint32_t unsubmitted; /* SQEs filled since the last io_uring_submit */
    /* thread pool: work queue and done queue (qd slots each), own lock */
    pthread_t *thr;
    uint32_t nthr_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int mu_ok, stop;
    _nixl_posix_io_t **work, **done;
    size_t work_head, work_n, done_n;
} _nixl_posix_engine_t;

// >>helpers

static const char *_nixl_posix_mode_str(int acc) {
    return acc == O_RDONLY ? "read-only" : acc == O_WRONLY ? "write-only" : "read-write";
}

/* the status an I/O error gives its request */
static nixl_status_t _nixl_posix_errno_status(int err) {
    return err == EBADF || err == EINVAL ? NIXL_ERR_INVALID_PARAM : NIXL_ERR_BACKEND;
}

// >>pending (requests with I/Os to submit, in posting order)

static void _nixl_posix_pend_add(_nixl_posix_engine_t *e, _nixl_posix_req_t *r) {
    if (r->pending) return;
    r->pending = 1;
    r->pend_next = NULL;
    r->pend_prev = e->pend_tail;
    if (e->pend_tail) e->pend_tail->pend_next = r;
    else e->pend_head = r;
    e->pend_tail = r;
}

static void _nixl_posix_pend_remove(_nixl_posix_engine_t *e, _nixl_posix_req_t *r) {
    if (!r->pending) return;
    if (r->pend_prev) r->pend_prev->pend_next = r->pend_next;
    else e->pend_head = r->pend_next;
    if (r->pend_next) r->pend_next->pend_prev = r->pend_prev;
    else e->pend_tail = r->pend_prev;
    r->pending = 0;
}

// >>requests state

/* A request whose I/Os all came back is final: SUCCESS, or the first error. */
static void _nixl_posix_req_settle(_nixl_posix_engine_t *e, _nixl_posix_req_t *r) {
    if (!r->active || r->inflight) return;
    if (r->failed) {
        _nixl_posix_pend_remove(e, r);
        r->status = r->fail_status;
        r->active = 0;
    } else if (r->ndone == r->nio) {
        r->status = NIXL_SUCCESS;
        r->active = 0;
    }
}

static void _nixl_posix_req_fail(_nixl_posix_engine_t *e, _nixl_posix_req_t *r, const _nixl_posix_io_t *io,
                                 int err, const char *what) {
    nixl_log_item_t item = nixl_backend_why_item(what); /* what: an item's text, or NULL for errno */
    if (!r->failed)
        nixl_backend_log_item(e->be, NIXL_LOG_ERROR, item ? item : NIXL_LOGITEM_POSIX_IO_FAILED,
                              "posix: %s of %u bytes at offset %llu of fd %d failed: %s", r->write ? "WRITE" : "READ",
                              (unsigned)io->len, (unsigned long long)io->off, io->user_fd, what ? what : strerror(err));
    if (!r->failed) r->fail_status = what ? NIXL_ERR_BACKEND : _nixl_posix_errno_status(err);
    r->failed = 1;
    _nixl_posix_pend_remove(e, r);
}

static void _nixl_posix_submit_one(_nixl_posix_engine_t *e, _nixl_posix_io_t *io);
static void _nixl_posix_copy_start(_nixl_posix_engine_t *e, _nixl_posix_io_t *io);

/* A staged I/O takes a free bounce buffer (0: none free, it waits). */
static int _nixl_posix_bounce_get(_nixl_posix_engine_t *e, _nixl_posix_io_t *io) {
    if (!e->nbounce_free) return 0;
    io->stage = (int)e->bounce_free[--e->nbounce_free];
    io->buf = e->bounce[io->stage].host;
    return 1;
}

static void _nixl_posix_bounce_put(_nixl_posix_engine_t *e, _nixl_posix_io_t *io) {
    e->bounce_free[e->nbounce_free++] = (uint32_t)io->stage;
    io->stage = -1;
    io->buf = NULL;
}

/* The I/O is over (every byte moved, or it failed): its bounce buffer goes
   back and its request may be final. */
static void _nixl_posix_io_end(_nixl_posix_engine_t *e, _nixl_posix_io_t *io, int moved) {
    _nixl_posix_req_t *r = io->req;
    if (io->stage >= 0) _nixl_posix_bounce_put(e, io);
    e->inflight--;
    r->inflight--;
    if (moved) r->ndone++;
    _nixl_posix_req_settle(e, r);
}

/* A file I/O came back having moved res more bytes (or -errno). A short
   transfer goes out again for the rest; a READ that finds the end of the
   file fails its request; a staged READ goes on to the GPU. */
static void _nixl_posix_io_done(_nixl_posix_engine_t *e, _nixl_posix_io_t *io, int64_t res) {
    _nixl_posix_req_t *r = io->req;
    if (res < 0 || (res == 0 && io->done < io->len)) {
        _nixl_posix_req_fail(e, r, io, res < 0 ? (int)-res : 0,
                             res < 0                    ? NULL
                             : r->write ? nixl_backend_why(NIXL_LOGITEM_POSIX_DEVICE_FULL)
                                        : nixl_backend_why(NIXL_LOGITEM_POSIX_EOF));
        _nixl_posix_io_end(e, io, 0);
        return;
    }
    io->done += (uint32_t)res;
    if (io->done < io->len && !r->failed) { /* short: the rest goes out again */
        _nixl_posix_submit_one(e, io);
        return;
    }
    if (io->stage >= 0 && !r->write && !r->failed) {
        _nixl_posix_copy_start(e, io);
        return;
    }
    _nixl_posix_io_end(e, io, 1);
}

// >>staging (VRAM through bounce buffers, with the copy engine)

/* The bounce buffer's completion marker, for this I/O's GPU. */
static int _nixl_posix_bounce_event(_nixl_posix_engine_t *e, _nixl_posix_bounce_t *b, int gpu) {
    if (b->ev && b->ev_gpu == gpu) return 0;
    if (b->ev) e->copy.event_destroy(e->copy.ctx, b->ev);
    b->ev = NULL;
    if (e->copy.event_create(e->copy.ctx, gpu, &b->ev) != 0) return -1;
    b->ev_gpu = gpu;
    return 0;
}

/* Starts the GPU side of a staged I/O: device -> bounce before a WRITE's
   file I/O, bounce -> device after a READ's. Ends in _nixl_posix_copies_poll. */
static void _nixl_posix_copy_start(_nixl_posix_engine_t *e, _nixl_posix_io_t *io) {
    _nixl_posix_req_t *r = io->req;
    _nixl_posix_bounce_t *b = &e->bounce[io->stage];
    if (_nixl_posix_bounce_event(e, b, io->gpu) != 0 ||
        e->copy.copy(e->copy.ctx, io->gpu, !r->write, b->host, io->dptr, io->len, b->ev) != 0) {
        _nixl_posix_req_fail(e, r, io, 0,
                             nixl_backend_why(r->write ? NIXL_LOGITEM_POSIX_COPY_OUT_NOT_STARTED
                                                       : NIXL_LOGITEM_POSIX_COPY_IN_NOT_STARTED));
        _nixl_posix_io_end(e, io, 0);
        return;
    }
    io->copy_next = e->copy_head;
    e->copy_head = io;
}

/* Copies that finished: a WRITE's bytes go to the file, a READ is done.
   Returns how many finished. */
static int _nixl_posix_copies_poll(_nixl_posix_engine_t *e) {
    _nixl_posix_io_t **pp = &e->copy_head;
    int n = 0;
    while (*pp) {
        _nixl_posix_io_t *io = *pp;
        _nixl_posix_req_t *r = io->req;
        int rc = e->copy.event_done(e->copy.ctx, e->bounce[io->stage].ev);
        if (rc == 0) {
            pp = &io->copy_next;
            continue;
        }
        *pp = io->copy_next;
        n++;
        if (rc < 0) {
            _nixl_posix_req_fail(e, r, io, 0, nixl_backend_why(NIXL_LOGITEM_POSIX_COPY_FAILED));
            _nixl_posix_io_end(e, io, 0);
        } else if (r->write && !r->failed) {
            io->done = 0;
            _nixl_posix_submit_one(e, io);
        } else {
            _nixl_posix_io_end(e, io, !r->write); /* a WRITE of a failed request stops here */
        }
    }
    return n;
}

// >>io_uring engine

static void _nixl_posix_uring_prep(_nixl_posix_engine_t *e, _nixl_posix_io_t *io) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&e->ring);
    int fixed;
    if (!sqe) { /* cannot happen (in flight <= queue depth): make room all the same */
        io_uring_submit(&e->ring);
        e->unsubmitted = 0;
        sqe = io_uring_get_sqe(&e->ring);
        if (!sqe) {
            _nixl_posix_req_fail(e, io->req, io, EAGAIN, "io_uring has no free submission entry");
            _nixl_posix_io_end(e, io, 0);
            return;
        }
    }
    fixed = io->slot >= 0;
    if (io->stage >= 0 && e->bufs_ok) {
        if (io->req->write)
            io_uring_prep_write_fixed(sqe, fixed ? io->slot : io->fd, io->buf + io->done, io->len - io->done,
                                      io->off + io->done, io->stage);
        else
            io_uring_prep_read_fixed(sqe, fixed ? io->slot : io->fd, io->buf + io->done, io->len - io->done,
                                     io->off + io->done, io->stage);
    } else if (io->req->write) {
        io_uring_prep_write(sqe, fixed ? io->slot : io->fd, io->buf + io->done, io->len - io->done, io->off + io->done);
    } else {
        io_uring_prep_read(sqe, fixed ? io->slot : io->fd, io->buf + io->done, io->len - io->done, io->off + io->done);
    }
    if (fixed) sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data(sqe, io);
    e->unsubmitted++;
}

static void _nixl_posix_uring_flush(_nixl_posix_engine_t *e) {
    int rc;
    if (!e->unsubmitted) return;
    rc = io_uring_submit(&e->ring);
    if (rc < 0)
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "posix: io_uring_submit failed: %s (retried from progress)",
                         strerror(-rc));
    else
        e->unsubmitted -= (uint32_t)rc < e->unsubmitted ? (uint32_t)rc : e->unsubmitted;
}

/* Reaps what completed; returns how many. */
static int _nixl_posix_uring_reap(_nixl_posix_engine_t *e) {
    struct io_uring_cqe *cqe;
    int n = 0;
    while (io_uring_peek_cqe(&e->ring, &cqe) == 0) {
        _nixl_posix_io_t *io = (_nixl_posix_io_t *)io_uring_cqe_get_data(cqe);
        int64_t res = cqe->res;
        io_uring_cqe_seen(&e->ring, cqe);
        _nixl_posix_io_done(e, io, res);
        n++;
    }
    _nixl_posix_uring_flush(e); /* short I/Os sent out again */
    return n;
}

/* An io_uring slot holding fd; -1 where the kernel has none to give (the
   I/Os then name the descriptor). */
static int _nixl_posix_slot_get(_nixl_posix_engine_t *e, int fd) {
    uint32_t i;
    if (!e->slot_used) return -1;
    for (i = 0; i < _NIXL_POSIX_FIXED_FILES && e->slot_used[i]; i++) {
    }
    if (i == _NIXL_POSIX_FIXED_FILES || io_uring_register_files_update(&e->ring, i, &fd, 1) != 1) return -1;
    e->slot_used[i] = 1;
    return (int)i;
}

static void _nixl_posix_slot_put(_nixl_posix_engine_t *e, int slot) {
    int none = -1;
    if (slot < 0) return;
    /* I/Os in flight hold the file themselves */
    io_uring_register_files_update(&e->ring, (unsigned)slot, &none, 1);
    e->slot_used[slot] = 0;
}

/* The file table, where the kernel allows it (5.19+: sparse). */
static void _nixl_posix_files_setup(_nixl_posix_engine_t *e) {
    int rc = io_uring_register_files_sparse(&e->ring, _NIXL_POSIX_FIXED_FILES);
    if (rc == 0) e->slot_used = (unsigned char *)nixl_backend_alloc(e->be, _NIXL_POSIX_FIXED_FILES);
    if (rc != 0 || !e->slot_used)
        nixl_backend_log(e->be, NIXL_LOG_INFO, "posix: io_uring registered files unavailable (%s): I/Os name "
                         "descriptors", rc ? strerror(-rc) : "out of memory");
}

// >>thread engine

/* one whole I/O with pread/pwrite: bytes moved (may stop short at the end
   of a file), or -errno */
static int64_t _nixl_posix_sync_io(const _nixl_posix_io_t *io, int write) {
    uint32_t done = io->done;
    while (done < io->len) {
        ssize_t k = write ? pwrite(io->fd, io->buf + done, io->len - done, (off_t)(io->off + done))
                          : pread(io->fd, io->buf + done, io->len - done, (off_t)(io->off + done));
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return -(int64_t)errno;
        if (k == 0) break;
        done += (uint32_t)k;
    }
    return (int64_t)(done - io->done);
}

static void *_nixl_posix_worker(void *arg) {
    _nixl_posix_engine_t *e = (_nixl_posix_engine_t *)arg;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        _nixl_posix_io_t *io;
        while (!e->work_n && !e->stop) pthread_cond_wait(&e->cv, &e->mu);
        if (e->stop && !e->work_n) break;
        io = e->work[e->work_head];
        e->work_head = (e->work_head + 1) % e->qd;
        e->work_n--;
        pthread_mutex_unlock(&e->mu);
        io->res = _nixl_posix_sync_io(io, io->req->write);
        pthread_mutex_lock(&e->mu);
        e->done[e->done_n++] = io;
        pthread_cond_broadcast(&e->cv); /* a release may be waiting for it */
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/* Hands finished I/Os back; wait: block until at least one (or 10 ms). */
static int _nixl_posix_pool_reap(_nixl_posix_engine_t *e, int wait) {
    _nixl_posix_io_t *got[4096];
    size_t n, i;
    pthread_mutex_lock(&e->mu);
    if (wait && !e->done_n) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += _NIXL_POSIX_WAIT_NS;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&e->cv, &e->mu, &ts);
    }
    n = e->done_n < sizeof got / sizeof got[0] ? e->done_n : sizeof got / sizeof got[0];
    memcpy(got, e->done + (e->done_n - n), n * sizeof *got);
    e->done_n -= n;
    pthread_mutex_unlock(&e->mu);
    for (i = 0; i < n; i++) _nixl_posix_io_done(e, got[i], got[i]->res); /* res: bytes beyond io->done */
    return (int)n;
}

// >>submission

static void _nixl_posix_submit_one(_nixl_posix_engine_t *e, _nixl_posix_io_t *io) {
    if (e->kind == NIXL_POSIX_ENGINE_URING) {
        _nixl_posix_uring_prep(e, io);
        return;
    }
    pthread_mutex_lock(&e->mu);
    e->work[(e->work_head + e->work_n) % e->qd] = io;
    e->work_n++;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

/* Starts the next I/O of r; 0 when it must wait for a bounce buffer. */
static int _nixl_posix_start_io(_nixl_posix_engine_t *e, _nixl_posix_req_t *r) {
    _nixl_posix_io_t *io = &r->io[r->cursor];
    if (io->gpu >= 0 && !_nixl_posix_bounce_get(e, io)) return 0;
    r->cursor++;
    io->done = 0;
    e->inflight++;
    r->inflight++;
    if (io->gpu >= 0 && r->write) _nixl_posix_copy_start(e, io);
    else _nixl_posix_submit_one(e, io);
    return 1;
}

/* Starts I/Os of pending requests, in posting order, while the queue (and,
   for VRAM, the bounce buffers) have room. */
static void _nixl_posix_pump(_nixl_posix_engine_t *e) {
    while (e->pend_head && e->inflight < e->qd) {
        _nixl_posix_req_t *r = e->pend_head;
        while (r->cursor < r->nio && e->inflight < e->qd)
            if (!_nixl_posix_start_io(e, r)) goto out;
        if (r->cursor == r->nio) _nixl_posix_pend_remove(e, r);
    }
out:
    if (e->kind == NIXL_POSIX_ENGINE_URING) _nixl_posix_uring_flush(e);
}

/* Completions of copies and file I/Os; wait: block for file I/O (10 ms at
   most) when no copy is in flight. Returns how many. */
static int _nixl_posix_reap(_nixl_posix_engine_t *e, int wait) {
    int n = e->copy_head ? _nixl_posix_copies_poll(e) : 0;
    if (e->copy_head || n) wait = 0;
    if (e->kind == NIXL_POSIX_ENGINE_THREADS) return n + _nixl_posix_pool_reap(e, wait);
    if (wait && e->inflight) {
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts;
        ts.tv_sec = 0;
        ts.tv_nsec = _NIXL_POSIX_WAIT_NS;
        io_uring_wait_cqe_timeout(&e->ring, &cqe, &ts);
    }
    return n + _nixl_posix_uring_reap(e);
}

/* Blocks until none of r's I/Os is in flight (its unsubmitted ones were
   dropped): afterwards nothing of it touches memory. */
static void _nixl_posix_drain(_nixl_posix_engine_t *e, _nixl_posix_req_t *r) {
    _nixl_posix_pend_remove(e, r);
    while (r->inflight) _nixl_posix_reap(e, 1);
}

// >>lifecycle (vtable)

static const char *const _nixl_posix_param_keys[] = {"engine",       "queue_depth", "threads",    "max_io",
                                                     "direct_align", "stage_bufs",  "stage_size", NULL};

static void _nixl_posix_destroy(void *engine);
static void _nixl_posix_stage_destroy(_nixl_posix_engine_t *e);

static nixl_status_t _nixl_posix_params(_nixl_posix_engine_t *e, const nixl_backend_init_t *init, int *want) {
    const char *eng = nixl_param_get(init, "engine");
    uint64_t v;
    nixl_status_t st;
    if ((st = nixl_param_u64(init, "queue_depth", 64, 1, 4096, &v)) != NIXL_SUCCESS) return st;
    e->qd = (uint32_t)v;
    if ((st = nixl_param_u64(init, "threads", 4, 1, 64, &v)) != NIXL_SUCCESS) return st;
    e->nthreads = (uint32_t)v;
    if ((st = nixl_param_u64(init, "max_io", 8u << 20, 4096, 1u << 30, &v)) != NIXL_SUCCESS) return st;
    e->max_io = (uint32_t)v;
    if ((st = nixl_param_u64(init, "direct_align", 4096, 512, 65536, &v)) != NIXL_SUCCESS) return st;
    if (v & (v - 1)) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "posix: direct_align=%llu: want a power of two",
                         (unsigned long long)v);
        return NIXL_ERR_INVALID_PARAM;
    }
    e->align = (uint32_t)v;
    if ((st = nixl_param_u64(init, "stage_bufs", 16, 1, 1024, &v)) != NIXL_SUCCESS) return st;
    e->stage_bufs = (uint32_t)v;
    if ((st = nixl_param_u64(init, "stage_size", 2u << 20, 4096, 1u << 30, &v)) != NIXL_SUCCESS) return st;
    if (v % e->align) {
        nixl_backend_log_item(e->be, NIXL_LOG_ERROR, NIXL_LOGITEM_POSIX_STAGE_SIZE, "posix: stage_size=%llu: want a multiple of direct_align (%u)",
                         (unsigned long long)v, (unsigned)e->align);
        return NIXL_ERR_INVALID_PARAM;
    }
    e->stage_size = (uint32_t)v;
    *want = 0;
    if (!eng || !strcmp(eng, "auto")) return NIXL_SUCCESS;
    if (!strcmp(eng, "uring")) *want = NIXL_POSIX_ENGINE_URING;
    else if (!strcmp(eng, "threads")) *want = NIXL_POSIX_ENGINE_THREADS;
    else {
        nixl_backend_log_item(e->be, NIXL_LOG_ERROR, NIXL_LOGITEM_POSIX_BAD_ENGINE, "posix: engine=%s: want auto, uring or threads", eng);
        return NIXL_ERR_INVALID_PARAM;
    }
    return NIXL_SUCCESS;
}

static nixl_status_t _nixl_posix_start_pool(_nixl_posix_engine_t *e) {
    uint32_t i;
    e->work = (_nixl_posix_io_t **)nixl_backend_alloc(e->be, e->qd * sizeof *e->work);
    e->done = (_nixl_posix_io_t **)nixl_backend_alloc(e->be, e->qd * sizeof *e->done);
    e->thr = (pthread_t *)nixl_backend_alloc(e->be, e->nthreads * sizeof *e->thr);
    if (!e->work || !e->done || !e->thr) return NIXL_ERR_BACKEND;
    for (i = 0; i < e->nthreads; i++) {
        int rc = pthread_create(&e->thr[i], NULL, _nixl_posix_worker, e);
        if (rc) {
            nixl_backend_log(e->be, NIXL_LOG_ERROR, "posix: cannot start I/O thread %u: %s", (unsigned)i,
                             strerror(rc));
            return NIXL_ERR_BACKEND;
        }
        e->nthr_started++;
    }
    return NIXL_SUCCESS;
}

/* io_uring if wanted (or auto and the kernel allows it), else the pool */
static nixl_status_t _nixl_posix_start_engine(_nixl_posix_engine_t *e, int want) {
    if (want != NIXL_POSIX_ENGINE_THREADS) {
        int rc = io_uring_queue_init(e->qd, &e->ring, 0);
        if (rc == 0) {
            e->ring_ok = 1;
            e->kind = NIXL_POSIX_ENGINE_URING;
            _nixl_posix_files_setup(e);
            nixl_backend_log(e->be, NIXL_LOG_INFO, "posix: io_uring, queue depth %u", (unsigned)e->qd);
            return NIXL_SUCCESS;
        }
        if (want == NIXL_POSIX_ENGINE_URING) {
            nixl_backend_log(e->be, NIXL_LOG_ERROR, "posix: engine=uring: io_uring_queue_init failed: %s",
                             strerror(-rc));
            return NIXL_ERR_NOT_SUPPORTED;
        }
        nixl_backend_log_item(e->be, NIXL_LOG_INFO, NIXL_LOGITEM_POSIX_URING_UNAVAILABLE, "posix: io_uring unavailable (%s): %u threads doing pread/pwrite",
                         strerror(-rc), (unsigned)e->nthreads);
    }
    e->kind = NIXL_POSIX_ENGINE_THREADS;
    return _nixl_posix_start_pool(e);
}

static nixl_status_t _nixl_posix_create(const nixl_backend_init_t *init, void **engine) {
    _nixl_posix_engine_t *e = (_nixl_posix_engine_t *)nixl_backend_alloc(init->self, sizeof *e);
    nixl_status_t st;
    int want;
    if (!e) return NIXL_ERR_BACKEND;
    e->be = init->self;
    if (pthread_mutex_init(&e->mu, NULL) != 0 || pthread_cond_init(&e->cv, NULL) != 0) {
        nixl_backend_free(init->self, e);
        return NIXL_ERR_BACKEND;
    }
    e->mu_ok = 1;
    if ((st = _nixl_posix_params(e, init, &want)) != NIXL_SUCCESS ||
        (st = _nixl_posix_start_engine(e, want)) != NIXL_SUCCESS) {
        _nixl_posix_destroy(e);
        return st;
    }
    *engine = e;
    return NIXL_SUCCESS;
}

static void _nixl_posix_req_free(_nixl_posix_engine_t *e, _nixl_posix_req_t *r) {
    if (r->prev) r->prev->next = r->next;
    else e->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
    nixl_backend_free(e->be, r->io);
    nixl_backend_free(e->be, r);
}

static void _nixl_posix_destroy(void *engine) {
    _nixl_posix_engine_t *e = (_nixl_posix_engine_t *)engine;
    uint32_t i;
    while (e->reqs) {
        _nixl_posix_drain(e, e->reqs);
        _nixl_posix_req_free(e, e->reqs);
    }
    if (e->nthr_started) {
        pthread_mutex_lock(&e->mu);
        e->stop = 1;
        pthread_cond_broadcast(&e->cv);
        pthread_mutex_unlock(&e->mu);
        for (i = 0; i < e->nthr_started; i++) pthread_join(e->thr[i], NULL);
    }
    _nixl_posix_stage_destroy(e);
    if (e->ring_ok) io_uring_queue_exit(&e->ring); /* drops registered files and buffers too */
    _nixl_cuda_close(&e->cuda);
    while (e->mds) {
        _nixl_posix_md_t *m = e->mds;
        e->mds = m->next;
        nixl_backend_free(e->be, m);
    }
    for (i = 0; i < e->nfiles; i++)
        if (e->files[i].refs) close(e->files[i].iofd);
    if (e->mu_ok) {
        pthread_mutex_destroy(&e->mu);
        pthread_cond_destroy(&e->cv);
    }
    nixl_backend_free(e->be, e->files);
    nixl_backend_free(e->be, e->slot_used);
    nixl_backend_free(e->be, e->work);
    nixl_backend_free(e->be, e->done);
    nixl_backend_free(e->be, e->thr);
    nixl_backend_free(e->be, e);
}

// >>memory (vtable)

/* The file table entry of fd, made on its first region: our duplicate and
   its io_uring slot. -1 with a log line when the duplicate cannot be had. */
static int _nixl_posix_file_get(_nixl_posix_engine_t *e, int fd) {
    uint32_t i, free_i = e->nfiles;
    _nixl_posix_file_t *f;
    for (i = 0; i < e->nfiles; i++) {
        if (e->files[i].refs && e->files[i].fd == fd) {
            e->files[i].refs++;
            return (int)i;
        }
        if (!e->files[i].refs && free_i == e->nfiles) free_i = i;
    }
    if (free_i == e->nfiles && e->nfiles == e->files_cap) {
        uint32_t cap = e->files_cap ? 2 * e->files_cap : 16;
        _nixl_posix_file_t *n = (_nixl_posix_file_t *)nixl_backend_alloc(e->be, cap * sizeof *n);
        if (!n) return -1;
        if (e->nfiles) memcpy(n, e->files, e->nfiles * sizeof *n);
        nixl_backend_free(e->be, e->files);
        e->files = n;
        e->files_cap = cap;
    }
    f = &e->files[free_i];
    f->iofd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (f->iofd < 0) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "posix: register_mem: cannot duplicate fd %d: %s", fd, strerror(errno));
        return -1;
    }
    f->fd = fd;
    f->refs = 1;
    f->slot = _nixl_posix_slot_get(e, f->iofd);
    if (free_i == e->nfiles) e->nfiles++;
    return (int)free_i;
}

static void _nixl_posix_file_put(_nixl_posix_engine_t *e, int i) {
    _nixl_posix_file_t *f = &e->files[i];
    if (--f->refs) return;
    _nixl_posix_slot_put(e, f->slot);
    close(f->iofd);
}

/* a FILE/BLK region: an open descriptor of the right kind, range inside a device */
static nixl_status_t _nixl_posix_check_fd(_nixl_posix_engine_t *e, nixl_mem_t mem, const nixl_desc_t *r,
                                          _nixl_posix_md_t *m) {
    struct stat sb;
    int fd = (int)r->dev_id, fl;
    if (r->dev_id > 0x7fffffff || (fl = fcntl(fd, F_GETFL)) < 0 || fstat(fd, &sb) != 0) {
        nixl_backend_log_item(e->be, NIXL_LOG_ERROR, NIXL_LOGITEM_POSIX_NOT_FD, "posix: register_mem: dev_id %llu is not an open file descriptor",
                         (unsigned long long)r->dev_id);
        return NIXL_ERR_INVALID_PARAM;
    }
    if (mem == NIXL_FILE ? !S_ISREG(sb.st_mode) : !S_ISBLK(sb.st_mode)) {
        nixl_backend_log_item(e->be, NIXL_LOG_ERROR, NIXL_LOGITEM_POSIX_WRONG_KIND, "posix: register_mem: fd %d is not a %s", fd,
                         mem == NIXL_FILE ? "regular file (NIXL_FILE)" : "block device (NIXL_BLK)");
        return NIXL_ERR_INVALID_PARAM;
    }
    if (mem == NIXL_BLK) {
        uint64_t size = 0;
        if (ioctl(fd, BLKGETSIZE64, &size) != 0 || r->addr + r->len > size) {
            nixl_backend_log(e->be, NIXL_LOG_ERROR, "posix: register_mem: [%llu, +%zu) of block device fd %d lies "
                             "past its end (%llu bytes)", (unsigned long long)r->addr, r->len, fd,
                             (unsigned long long)size);
            return NIXL_ERR_INVALID_PARAM;
        }
    }
    m->fd = fd;
    m->acc = fl & O_ACCMODE;
    m->direct = (fl & O_DIRECT) != 0;
    m->file = _nixl_posix_file_get(e, fd);
    return m->file < 0 ? NIXL_ERR_BACKEND : NIXL_SUCCESS;
}

/* io_uring: the bounce buffers as registered buffers (no page pinning per
   I/O), where RLIMIT_MEMLOCK allows; else plain reads and writes. */
static void _nixl_posix_stage_register(_nixl_posix_engine_t *e) {
    struct iovec *iov;
    uint32_t i;
    int rc;
    if (e->kind != NIXL_POSIX_ENGINE_URING) return;
    iov = (struct iovec *)nixl_backend_alloc(e->be, e->stage_bufs * sizeof *iov);
    if (!iov) return;
    for (i = 0; i < e->stage_bufs; i++) {
        iov[i].iov_base = e->bounce[i].host;
        iov[i].iov_len = e->stage_size;
    }
    rc = io_uring_register_buffers(&e->ring, iov, e->stage_bufs);
    nixl_backend_free(e->be, iov);
    e->bufs_ok = rc == 0;
    if (rc != 0)
        nixl_backend_log(e->be, NIXL_LOG_INFO, "posix: bounce buffers not registered with io_uring (%s): plain "
                         "reads and writes", strerror(-rc));
}

/* The bounce buffers VRAM I/Os are staged through: stage_bufs of
   stage_size bytes, aligned for O_DIRECT, pinned by the copy engine (for
   gpu, portably) where it can. */
static nixl_status_t _nixl_posix_stage_setup(_nixl_posix_engine_t *e, int gpu) {
    uint32_t i, unpinned = 0;
    e->bounce = (_nixl_posix_bounce_t *)nixl_backend_alloc(e->be, e->stage_bufs * sizeof *e->bounce);
    e->bounce_free = (uint32_t *)nixl_backend_alloc(e->be, e->stage_bufs * sizeof *e->bounce_free);
    if (!e->bounce || !e->bounce_free) {
        _nixl_posix_stage_destroy(e);
        return NIXL_ERR_BACKEND;
    }
    for (i = 0; i < e->stage_bufs; i++) {
        _nixl_posix_bounce_t *b = &e->bounce[i];
        void *host = NULL;
        if (posix_memalign(&host, e->align, e->stage_size) != 0) {
            nixl_backend_log(e->be, NIXL_LOG_ERROR, "posix: %u bounce buffers of %u bytes: out of memory",
                             (unsigned)e->stage_bufs, (unsigned)e->stage_size);
            _nixl_posix_stage_destroy(e);
            return NIXL_ERR_BACKEND;
        }
        b->host = (unsigned char *)host;
        b->ev_gpu = -1;
        b->pinned = e->copy.pin && e->copy.pin(e->copy.ctx, gpu, host, e->stage_size) == 0;
        unpinned += !b->pinned;
        e->bounce_free[e->nbounce_free++] = e->stage_bufs - 1 - i;
    }
    if (unpinned)
        nixl_backend_log(e->be, NIXL_LOG_WARN, "posix: %u of %u bounce buffers could not be pinned: their copies "
                         "are slower", (unsigned)unpinned, (unsigned)e->stage_bufs);
    _nixl_posix_stage_register(e);
    return NIXL_SUCCESS;
}

static void _nixl_posix_stage_destroy(_nixl_posix_engine_t *e) {
    uint32_t i;
    if (e->bufs_ok) io_uring_unregister_buffers(&e->ring);
    e->bufs_ok = 0;
    for (i = 0; e->bounce && i < e->stage_bufs; i++) {
        _nixl_posix_bounce_t *b = &e->bounce[i];
        if (!b->host) continue;
        if (b->ev) e->copy.event_destroy(e->copy.ctx, b->ev);
        if (b->pinned && e->copy.unpin) e->copy.unpin(e->copy.ctx, b->ev_gpu >= 0 ? b->ev_gpu : 0, b->host);
        free(b->host);
    }
    nixl_backend_free(e->be, e->bounce);
    nixl_backend_free(e->be, e->bounce_free);
    e->bounce = NULL;
    e->bounce_free = NULL;
    e->nbounce_free = 0;
}

/* VRAM: device memory of the GPU dev_id names (the copy engine says so),
   moved to and from files through the bounce buffers. */
static nixl_status_t _nixl_posix_vram_register(_nixl_posix_engine_t *e, const nixl_desc_t *r, _nixl_posix_md_t *m) {
    uintptr_t base;
    size_t size;
    nixl_status_t st;
    if (!e->copy_custom) {
        if (_nixl_cuda_load(&e->cuda, e->be, "posix") != 0) return NIXL_ERR_NOT_SUPPORTED;
        if (!e->copy.query) e->copy = _nixl_cuda_copy_ops(&e->cuda);
    }
    st = _nixl_vram_check(e->be, "posix", e->copy.query, e->copy.ctx, r, &m->gpu, &base, &size);
    if (st == NIXL_SUCCESS && !e->bounce) st = _nixl_posix_stage_setup(e, m->gpu);
    if (st == NIXL_SUCCESS) e->nvram++;
    return st;
}

static nixl_status_t _nixl_posix_register_mem(void *engine, nixl_mem_t mem, const nixl_desc_t *region, void **md) {
    _nixl_posix_engine_t *e = (_nixl_posix_engine_t *)engine;
    _nixl_posix_md_t *m;
    nixl_status_t st;
    m = (_nixl_posix_md_t *)nixl_backend_alloc(e->be, sizeof *m);
    if (!m) return NIXL_ERR_BACKEND;
    m->mem = mem;
    m->addr = region->addr;
    m->len = region->len;
    m->fd = -1;
    m->gpu = -1;
    m->file = -1;
    st = mem == NIXL_VRAM ? _nixl_posix_vram_register(e, region, m)
         : mem != NIXL_DRAM ? _nixl_posix_check_fd(e, mem, region, m) : NIXL_SUCCESS;
    if (st != NIXL_SUCCESS) {
        nixl_backend_free(e->be, m);
        return st;
    }
    m->next = e->mds;
    if (e->mds) e->mds->prev = m;
    e->mds = m;
    *md = m;
    return NIXL_SUCCESS;
}

static void _nixl_posix_deregister_mem(void *engine, void *md) {
    _nixl_posix_engine_t *e = (_nixl_posix_engine_t *)engine;
    _nixl_posix_md_t *m = (_nixl_posix_md_t *)md;
    if (m->mem == NIXL_VRAM) e->nvram--;
    if (m->file >= 0) _nixl_posix_file_put(e, m->file);
    if (m->prev) m->prev->next = m->next;
    else e->mds = m->next;
    if (m->next) m->next->prev = m->prev;
    nixl_backend_free(e->be, m);
}

// >>peers' memory (vtable)

/* transfers are local: the "remote" side of a request is our own region */
static nixl_status_t _nixl_posix_load_local_md(void *engine, void *md, void **rmd) {
    (void)engine;
    *rmd = md;
    return NIXL_SUCCESS;
}

static nixl_status_t _nixl_posix_load_remote_md(void *engine, const char *remote, nixl_mem_t mem,
                                                const nixl_desc_t *region, const void *pub, size_t len, void **rmd) {
    (void)engine; (void)remote; (void)mem; (void)region; (void)pub; (void)len; (void)rmd;
    return NIXL_ERR_NOT_SUPPORTED; /* never exported: no peer names this backend */
}

static void _nixl_posix_unload_md(void *engine, void *rmd) {
    (void)engine; (void)rmd; /* the md itself: deregister_mem frees it */
}

// >>connections (vtable)

static nixl_status_t _nixl_posix_load_remote_conn_info(void *engine, const char *remote, const void *info,
                                                       size_t len) {
    (void)engine; (void)remote; (void)info; (void)len;
    return NIXL_ERR_NOT_SUPPORTED;
}

static nixl_status_t _nixl_posix_connect(void *engine, const char *remote) {
    (void)engine; (void)remote;
    return NIXL_ERR_NOT_SUPPORTED;
}

static nixl_status_t _nixl_posix_disconnect(void *engine, const char *remote) {
    (void)engine; (void)remote;
    return NIXL_SUCCESS;
}

// >>transfers (vtable)

/* the size of the file behind f, asked of the kernel once per file of a
   request (its descriptors mostly share one): *last remembers the answer */
typedef struct _nixl_posix_size_memo {
    const _nixl_posix_md_t *f;
    int64_t size; /* -1: fstat failed (the I/O will say why) */
} _nixl_posix_size_memo;

static int64_t _nixl_posix_file_size(const _nixl_posix_engine_t *e, const _nixl_posix_md_t *f,
                                      _nixl_posix_size_memo *last) {
    struct stat sb;
    if (last->f != f) {
        last->f = f;
        last->size = fstat(e->files[f->file].iofd, &sb) == 0 ? (int64_t)sb.st_size : -1;
    }
    return last->size;
}

/* One descriptor pair checked before anything moves: which side is the
   file, its mode, O_DIRECT alignment, a READ past the end. */
static nixl_status_t _nixl_posix_check_pair(_nixl_posix_engine_t *e, const nixl_xfer_args_t *a, size_t i,
                                            _nixl_posix_size_memo *size) {
    const nixl_xfer_desc_t *d = &a->descs[i];
    const _nixl_posix_md_t *f = (const _nixl_posix_md_t *)d->rmd;
    int write = a->op == NIXL_WRITE;
    int64_t fsize;
    if (write ? f->acc == O_RDONLY : f->acc == O_WRONLY) {
        nixl_backend_log_item(e->be, NIXL_LOG_ERROR, NIXL_LOGITEM_POSIX_MODE, "posix: prep_xfer: descriptor %zu: a %s needs fd %d open for %s, it "
                         "is %s", i, write ? "WRITE" : "READ", f->fd, write ? "writing" : "reading",
                         _nixl_posix_mode_str(f->acc));
        return NIXL_ERR_NOT_ALLOWED;
    }
    /* (a VRAM side moves through an aligned bounce buffer: its address is free) */
    if (f->direct && (((a->lmem == NIXL_VRAM ? 0 : d->laddr) | d->raddr | d->len) & (e->align - 1))) {
        nixl_backend_log_item(e->be, NIXL_LOG_ERROR, NIXL_LOGITEM_POSIX_DIRECT_ALIGN, "posix: prep_xfer: descriptor %zu: fd %d is O_DIRECT: memory address "
                         "%p, offset %llu and length %zu must be multiples of %u (direct_align)", i, f->fd,
                         (void *)d->laddr, (unsigned long long)d->raddr, d->len, (unsigned)e->align);
        return NIXL_ERR_INVALID_PARAM;
    }
    if (!write && f->mem == NIXL_FILE && (fsize = _nixl_posix_file_size(e, f, size)) >= 0 &&
        d->raddr + d->len > (uint64_t)fsize) {
        nixl_backend_log_item(e->be, NIXL_LOG_ERROR, NIXL_LOGITEM_POSIX_READ_PAST_EOF, "posix: prep_xfer: descriptor %zu: READ of [%llu, +%zu) past the end "
                         "of fd %d (%lld bytes)", i, (unsigned long long)d->raddr, d->len, f->fd, (long long)fsize);
        return NIXL_ERR_INVALID_PARAM;
    }
    return NIXL_SUCCESS;
}

static nixl_status_t _nixl_posix_prep_xfer(void *engine, const nixl_xfer_args_t *a, void **handle) {
    _nixl_posix_engine_t *e = (_nixl_posix_engine_t *)engine;
    _nixl_posix_req_t *r;
    _nixl_posix_size_memo size = {NULL, -1};
    size_t i, nio = 0, k = 0;
    /* a staged I/O fits one bounce buffer */
    size_t cut = a->lmem == NIXL_VRAM && e->stage_size < e->max_io ? e->stage_size : e->max_io;
    nixl_status_t st;
    if ((a->lmem != NIXL_DRAM && a->lmem != NIXL_VRAM) || (a->rmem != NIXL_FILE && a->rmem != NIXL_BLK)) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "posix: prep_xfer: want memory (DRAM or VRAM) as the local list and "
                         "FILE or BLK as the other, got %s and %s", nixl_mem_str(a->lmem), nixl_mem_str(a->rmem));
        return NIXL_ERR_NOT_SUPPORTED;
    }
    for (i = 0; i < a->count; i++) {
        if ((st = _nixl_posix_check_pair(e, a, i, &size)) != NIXL_SUCCESS) return st;
        nio += (a->descs[i].len + cut - 1) / cut;
    }
    r = (_nixl_posix_req_t *)nixl_backend_alloc(e->be, sizeof *r);
    if (r) r->io = (_nixl_posix_io_t *)nixl_backend_alloc(e->be, (nio ? nio : 1) * sizeof *r->io);
    if (!r || !r->io) {
        nixl_backend_free(e->be, r);
        return NIXL_ERR_BACKEND;
    }
    r->write = a->op == NIXL_WRITE;
    r->nio = nio;
    r->status = NIXL_ERR_NOT_POSTED;
    for (i = 0; i < a->count; i++) {
        const nixl_xfer_desc_t *d = &a->descs[i];
        size_t off;
        int gpu = ((const _nixl_posix_md_t *)d->lmd)->gpu;
        const _nixl_posix_md_t *f = (const _nixl_posix_md_t *)d->rmd;
        for (off = 0; off < d->len; off += cut, k++) {
            _nixl_posix_io_t *io = &r->io[k];
            io->req = r;
            io->fd = e->files[f->file].iofd;
            io->user_fd = f->fd;
            io->slot = e->files[f->file].slot;
            io->off = d->raddr + off;
            io->len = (uint32_t)(d->len - off < cut ? d->len - off : cut);
            io->gpu = gpu;
            io->stage = -1;
            if (gpu >= 0) io->dptr = d->laddr + off; /* buf: a bounce buffer, from start to end */
            else io->buf = (unsigned char *)(d->laddr + off);
        }
    }
    r->next = e->reqs;
    if (e->reqs) e->reqs->prev = r;
    e->reqs = r;
    *handle = r;
    return NIXL_SUCCESS;
}

static nixl_status_t _nixl_posix_post_xfer(void *engine, void *handle, const void *notif, size_t notif_len,
                                           int has_notif) {
    _nixl_posix_engine_t *e = (_nixl_posix_engine_t *)engine;
    _nixl_posix_req_t *r = (_nixl_posix_req_t *)handle;
    (void)notif; (void)notif_len; (void)has_notif; /* no NIXL_CAP_NOTIF: the core never asks */
    if (r->active) return NIXL_ERR_REPOST_ACTIVE;
    r->cursor = r->ndone = 0;
    r->failed = 0;
    r->active = 1;
    r->status = NIXL_IN_PROG;
    if (!r->nio) {
        r->active = 0;
        return r->status = NIXL_SUCCESS;
    }
    _nixl_posix_pend_add(e, r);
    _nixl_posix_pump(e);
    return r->status;
}

static nixl_status_t _nixl_posix_check_xfer(void *engine, void *handle) {
    (void)engine;
    return ((_nixl_posix_req_t *)handle)->status;
}

static nixl_status_t _nixl_posix_release_xfer(void *engine, void *handle) {
    _nixl_posix_engine_t *e = (_nixl_posix_engine_t *)engine;
    _nixl_posix_req_t *r = (_nixl_posix_req_t *)handle;
    _nixl_posix_drain(e, r);
    _nixl_posix_req_free(e, r);
    return NIXL_SUCCESS;
}

// >>progress

static nixl_status_t _nixl_posix_progress(void *engine) {
    _nixl_posix_engine_t *e = (_nixl_posix_engine_t *)engine;
    int did = e->inflight ? _nixl_posix_reap(e, 0) > 0 : 0;
    _nixl_posix_pump(e);
    return did || e->inflight || e->pend_head ? NIXL_IN_PROG : NIXL_SUCCESS;
}

// >>public

static nixl_backend_ops_t _nixl_posix_ops;
static pthread_once_t _nixl_posix_once = PTHREAD_ONCE_INIT;

/* the vtable, field by field (as every backend fills its own) */
static void _nixl_posix_init_ops(void) {
    nixl_backend_ops_t *o = &_nixl_posix_ops;
    o->name = "POSIX";
    o->abi = NIXL_BACKEND_ABI;
    o->mem_mask = NIXL_MEM_BIT(NIXL_DRAM) | NIXL_MEM_BIT(NIXL_VRAM) | NIXL_MEM_BIT(NIXL_FILE) | NIXL_MEM_BIT(NIXL_BLK);
    o->caps = NIXL_CAP_LOCAL;
    o->param_keys = _nixl_posix_param_keys;
    o->create = _nixl_posix_create;
    o->destroy = _nixl_posix_destroy;
    o->register_mem = _nixl_posix_register_mem;
    o->deregister_mem = _nixl_posix_deregister_mem;
    o->get_public_data = NULL; /* nothing for peers */
    o->get_conn_info = NULL;
    o->load_remote_conn_info = _nixl_posix_load_remote_conn_info;
    o->connect = _nixl_posix_connect;
    o->disconnect = _nixl_posix_disconnect;
    o->load_remote_md = _nixl_posix_load_remote_md;
    o->load_local_md = _nixl_posix_load_local_md;
    o->unload_md = _nixl_posix_unload_md;
    o->prep_xfer = _nixl_posix_prep_xfer;
    o->post_xfer = _nixl_posix_post_xfer;
    o->check_xfer = _nixl_posix_check_xfer;
    o->release_xfer = _nixl_posix_release_xfer;
    o->estimate_cost = NULL;
    o->gen_notif = NULL; /* no NIXL_CAP_NOTIF */
    o->progress = _nixl_posix_progress;
}

NIXL_API const nixl_backend_ops_t *nixl_posix_backend(void) {
    pthread_once(&_nixl_posix_once, _nixl_posix_init_ops);
    return &_nixl_posix_ops;
}

/* the engine of a POSIX backend, with its agent locked; NULL otherwise */
static _nixl_posix_engine_t *_nixl_posix_lock_engine(nixl_backend_t *be) {
    if (!be || be->ops != nixl_posix_backend()) return NULL;
    _nixl_lock(be->agent);
    return (_nixl_posix_engine_t *)be->engine;
}

NIXL_API int nixl_posix_engine(nixl_backend_t *be) {
    _nixl_posix_engine_t *e = _nixl_posix_lock_engine(be);
    int kind;
    if (!e) return 0;
    kind = e->kind;
    _nixl_unlock(be->agent);
    return kind;
}

NIXL_API nixl_status_t nixl_posix_query(nixl_backend_t *be, int fd, nixl_posix_file_info_t *info) {
    _nixl_posix_engine_t *e;
    const _nixl_posix_md_t *m;
    struct stat sb;
    nixl_status_t st = NIXL_ERR_NOT_FOUND;
    if (!info || !(e = _nixl_posix_lock_engine(be))) return NIXL_ERR_INVALID_PARAM;
    for (m = e->mds; m && !((m->mem == NIXL_FILE || m->mem == NIXL_BLK) && m->fd == fd); m = m->next) {
    }
    /* the registered file, through our duplicate (the application's number
       may be closed or reused by now) */
    if (m && fstat(e->files[m->file].iofd, &sb) != 0) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "posix: query: fstat(fd %d): %s", fd, strerror(errno));
        st = NIXL_ERR_BACKEND;
    } else if (m) {
        uint64_t size = (uint64_t)sb.st_size;
        if (m->mem == NIXL_BLK && ioctl(e->files[m->file].iofd, BLKGETSIZE64, &size) != 0) size = 0;
        memset(info, 0, sizeof *info);
        info->size = size;
        info->mode = (uint32_t)sb.st_mode;
        info->mtime_s = (int64_t)sb.st_mtime;
        info->readable = m->acc != O_WRONLY;
        info->writable = m->acc != O_RDONLY;
        info->direct = m->direct;
        st = NIXL_SUCCESS;
    }
    _nixl_unlock(be->agent);
    return st;
}

NIXL_API nixl_status_t nixl_posix_set_copy_ops(nixl_backend_t *be, const nixl_copy_ops_t *ops) {
    _nixl_posix_engine_t *e;
    nixl_status_t st = NIXL_SUCCESS;
    if (!(e = _nixl_posix_lock_engine(be))) return NIXL_ERR_INVALID_PARAM;
    if (!_nixl_copy_ops_complete(be, "nixl_posix_set_copy_ops", ops)) {
        st = NIXL_ERR_INVALID_PARAM;
    } else if (e->nvram || (e->bounce && e->nbounce_free != e->stage_bufs)) {
        nixl_backend_log_item(be, NIXL_LOG_ERROR, NIXL_LOGITEM_COPY_ENGINE_BUSY, "nixl_posix_set_copy_ops: the current copy engine is in use (%u VRAM "
                         "regions, or staged I/O in flight): deregister them first", (unsigned)e->nvram);
        st = NIXL_ERR_NOT_ALLOWED;
    } else {
        _nixl_posix_stage_destroy(e); /* pinned and marked by the old engine */
        _nixl_copy_ops_install(&e->copy, &e->copy_custom, ops, &e->cuda);
    }
    _nixl_unlock(be->agent);
    return st;
}

#endif /* NIXL_IMPLEMENTATION && !NIXL_POSIX_IMPLEMENTATION_DONE */
