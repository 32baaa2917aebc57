/* nixl.h — move memory between processes and machines for AI inference.
   Header-only C library (C99 / C++). Agents, descriptor lists, memory
   registration, metadata exchange, prepared one-sided READ/WRITE transfers and
   notifications, over pluggable backends (nixl_verbs.h: raw verbs + rdma_cm;
   nixl_ucx.h: UCX).

   DO THIS
   -------
   In every file that uses the library:
       #include "nixl.h"            (and "nixl_verbs.h" / "nixl_ucx.h" for backends)
   In exactly ONE C or C++ file, before those includes:
       #define NIXL_IMPLEMENTATION
   That file gets the implementation of every nixl header it includes.
   Link: -lpthread (and -ldl before glibc 2.34), plus -libverbs -lrdmacm for
   verbs, -lucp -lucs for UCX.

   CONFIGURATION MACROS (define before including, in the implementation file)
       NIXL_STATIC          all functions get static linkage (vendor it privately)
       NIXL_MAX_BACKENDS    backends per agent (default 8)
       NIXL_ASSERT(x)       internal assertion (default assert())
       NIXL_CUDA_LIB        the CUDA driver to dlopen for VRAM (default
                            "libcuda.so.1"); nothing of CUDA is needed to build
       NIXL_CUDA_HEADERS    take CUDA's types from <cuda.h> and check our
                            declarations of the driver API against it
       NIXL_CUDA_MAX_GPUS   GPU ordinals served (default 64)

   MODEL
   -----
   An agent (nixl_agent_create) is one process role, e.g. "prefill-0". It owns
   backends (nixl_create_backend), registered memory (nixl_register_mem),
   the metadata it loaded from peers (nixl_load_remote_md), prepared descriptor
   lists, transfer requests and a notification queue.

     1. Register memory: each region goes to every backend that supports its
        memory type; success when at least one took it.
     2. Export metadata (nixl_get_local_md) and ship the blob to the peer,
        which loads it (nixl_load_remote_md). The blob carries the agent name,
        each backend's connection info and each region's public data (rkeys).
     3. Build a request: nixl_create_xfer_req (one shot) or prepare both sides
        once with nixl_prep_xfer_dlist and pick descriptors by index with
        nixl_make_xfer_req (the KV-cache pattern: blocks picked by id).
     4. nixl_post_xfer_req, then nixl_get_xfer_status until it is not
        NIXL_IN_PROG. A request may be posted again once it is done.
     5. The target learns of completion through the notification attached to
        the request: nixl_get_notifs. It is delivered only after every byte of
        the request has landed in the target's memory.

   Every remote descriptor is checked against the loaded metadata before
   anything is posted: a descriptor outside the peer's registered regions is
   NIXL_ERR_NOT_FOUND at once. That check only gives early, clear errors.

   TRUST MODEL
   -----------
   Memory:
   - The TARGET decides what a peer can touch: on RDMA the NIC checks rkeys
     and MR bounds (verbs, UCX data_path=rma); on UCX's software transports
     the target's own handler checks every access against its registrations
     (see nixl_ucx.h). Metadata a peer sends, however forged, reaches only
     what the target registered.
   Identity (who a message is from) is bound to the channel it came over,
   never read from the message:
   - With a shared secret (auth_token, or NIXL_AUTH_TOKEN in the
     environment) every channel authenticates both ways by challenge-
     response over fresh nonces, HMAC-SHA256 keyed by the secret: the
     metadata side channel (every exchange), UCX endpoints (a session per
     endpoint: HELLO, WELCOME with the receiver's MAC, PROOF with the
     sender's) and verbs connections (nonces in the CM private data, the
     acceptor's MAC in its REP, the connector's in its first message). The
     secret never crosses the wire; a replayed exchange fails (new nonces).
     HMAC and SHA-256 come from OpenSSL's libcrypto, opened with dlopen
     (NIXL_CRYPTO_LIB, default "libcrypto.so.3"): nothing to link for an
     application without a secret; with a secret and no libcrypto,
     nixl_agent_create fails (NOT_SUPPORTED) and says why. A shared secret
     makes every holder equally trusted: any of them may speak under any
     name.
   - Without a secret, a receiver takes notifications from agent X only
     over a channel it can tie to X's LOADED metadata: UCX welcomes X's
     session through its own endpoint to the worker address in X's
     metadata (an impostor never learns the session); verbs accepts a
     connection claiming X only from the address in X's metadata. So a
     receiver must load its senders' metadata (or share a secret);
     otherwise their notifications are dropped with a log line (the
     backends' notif_unverified=accept takes them on the sender's word).
   - The metadata listener: with a secret, only authenticated exchanges;
     without one it binds 127.0.0.1 unless listen_addr says otherwise (an
     unauthenticated listener reachable from other hosts is logged as a
     warning at start), and a name loaded over it belongs to the address it
     came from: another address may neither add to it nor invalidate it.
     Without a secret, whoever pushes a name first owns it: set a secret
     wherever other hosts can reach the listener.
   - UCX worker addresses and packed keys from peers are checked against
     UCX 1.13's layouts before ucp_ep_create / ucp_ep_rkey_unpack see them.
   Bounded (each limit a config field; the defaults are far above what a
   KV-cache deployment uses):
   - remote metadata: regions per peer (remote_regions_max, 262144), peers
     (remotes_max, 4096), bytes of all of it (remote_md_bytes, 1 GiB); a
     blob is decoded outside the agent lock and applied all or nothing.
   - received notifications: per sender and in total (notif_queue_peer_
     bytes 64 MiB, notif_queue_bytes 256 MiB); the surplus is dropped and
     logged, never silently. Receivers enforce the size limits themselves.
   - the listener: 256 connections, listen_conns_per_addr (64) from one
     address; a payload is read as it arrives (never allocated on a
     header's word); a connection has 1 s to prove itself (HELLO and a
     request header with the right MAC) and, under pressure, the oldest
     unproven connections (of the same address first) make room.
   - verbs: passive connections from peers not loaded (max_unknown_peers).
   - flow control: a receiver whose queue has no room for a sender's
     notifications returns no credit for them (verbs: it keeps them in its
     receive buffers; UCX: it withholds the window, see nixl_ucx.h), so the
     sender slows down instead of being dropped: its requests stay IN_PROG,
     and nixl_gen_notif returns IN_PROG (nothing queued: progress and call
     again) once the backend holds a window's worth for that peer. A peer
     that sends past its window anyway is cut off with a log line
     (backends: nixl_backend_notif_room, nixl_backend_notif_queued).
   Not built yet: per-agent keys (a shared secret is one trust domain).

   Loopback: a request whose remote agent is the agent's own name transfers
   within the agent (no metadata to load), on backends that support it.

   BACKEND SELECTION
   -----------------
   A request runs on the first backend, in order, that holds every local
   descriptor (a registration with that backend) and every remote descriptor
   (public data for that backend in the peer's metadata, plus the peer's
   connection info for it). The order is opt->backends when given, else the
   order in which the backends were created. nixl_query_xfer_backend says which
   one was chosen.

   THREADS
   -------
   Every public function may be called from any thread; an agent serialises
   calls with one internal mutex. Progress (completions, deferred posts,
   notification delivery, connection events) happens inside nixl_progress(),
   inside nixl_get_xfer_status()/nixl_get_notifs(), or on a background thread
   when nixl_agent_config_t.progress_thread is set. The logger runs on the
   thread that logs (under the agent lock: it must not call back into nixl);
   the notification callback of nixl_get_notifs runs on the caller's thread
   with no lock held.

   ERRORS
   ------
   Fallible calls return nixl_status_t (NIXL's codes and values). The code
   says what class of failure; the log line says what and why. Default
   logger: stderr, warnings and errors only (NIXL_LOG_LEVEL=debug|info|warn|
   error|none in the environment changes the level). Messages a program may
   want to recognise carry a stable id (NIXL_LOG_ITEMS, nixl_log_item_str):
   set log_item_fn in the config to receive it with each line; the wording
   may change between versions, the ids do not. The tests match ids.

   WRITING A BACKEND
   -----------------
   See "backend plugin contract" below: fill a nixl_backend_ops_t and pass it
   to nixl_create_backend. The core does the bookkeeping (metadata, lookup,
   validation, selection); a backend only moves bytes.

   FINDING YOUR WAY
   ----------------
   The implementation is cut into sections marked "// >>name" (grep for
   them), in this order: structs, util (allocation, logging, clock), auth
   (HMAC through libcrypto), cuda (the driver API, dlopen'ed), table (region
   lookup), agent, backend (the plugin side), registration, metadata-format,
   metadata-local, metadata-remote, side-channel (its frame format),
   side-channel-io (the client), listener (the server), etcd, dlist
   (prepared lists), request (make, post, status, release), notifications.

   LICENSE: MIT, at the end of this file.
*/
#ifndef NIXL_H
#define NIXL_H

#if defined(NIXL_IMPLEMENTATION) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* clock_gettime, pthread, strnlen in strict C99 builds */
#endif

#include <stddef.h>
#include <stdint.h>

#ifdef NIXL_STATIC
#if defined(__GNUC__) || defined(__clang__)
#define NIXL_API static __attribute__((unused))
#else
#define NIXL_API static
#endif
#else
#define NIXL_API extern
#endif

#ifndef NIXL_MAX_BACKENDS
#define NIXL_MAX_BACKENDS 8
#endif

#if defined(__GNUC__) || defined(__clang__)
#define NIXL_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define NIXL_PRINTF(f, a)
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ======================================================================== */
/* basic types                                                              */
/* ======================================================================== */

/* Status codes; values are NIXL's, so code ports one to one. */
typedef enum nixl_status {
    NIXL_IN_PROG = 1,
    NIXL_SUCCESS = 0,
    NIXL_ERR_NOT_POSTED = -1,
    NIXL_ERR_INVALID_PARAM = -2,
    NIXL_ERR_BACKEND = -3,
    NIXL_ERR_NOT_FOUND = -4,
    NIXL_ERR_MISMATCH = -5,
    NIXL_ERR_NOT_ALLOWED = -6,
    NIXL_ERR_REPOST_ACTIVE = -7,
    NIXL_ERR_UNKNOWN = -8,
    NIXL_ERR_NOT_SUPPORTED = -9,
    NIXL_ERR_REMOTE_DISCONNECT = -10,
    NIXL_ERR_CANCELED = -11,
    NIXL_ERR_NO_TELEMETRY = -12
} nixl_status_t;

/* "NIXL_ERR_NOT_FOUND" etc.; never NULL (unknown values give "NIXL_ERR_?"). */
NIXL_API const char *nixl_status_str(nixl_status_t s);

/* Memory types. A descriptor's dev_id is the GPU ordinal for VRAM, 0 for DRAM. */
typedef enum nixl_mem { NIXL_DRAM = 0, NIXL_VRAM, NIXL_BLK, NIXL_OBJ, NIXL_FILE } nixl_mem_t;
#define NIXL_MEM_COUNT 5
#define NIXL_MEM_BIT(m) (1u << (unsigned)(m))

NIXL_API const char *nixl_mem_str(nixl_mem_t m); /* "DRAM", "VRAM", ... */

typedef enum nixl_xfer_op { NIXL_READ = 0, NIXL_WRITE = 1 } nixl_xfer_op_t;

typedef struct nixl_desc { uintptr_t addr; size_t len; uint64_t dev_id; } nixl_desc_t;
typedef struct nixl_dlist { nixl_mem_t mem; const nixl_desc_t *descs; size_t count; } nixl_dlist_t;

typedef struct nixl_agent nixl_agent_t;               /* opaque */
typedef struct nixl_backend nixl_backend_t;           /* opaque, owned by its agent */
typedef struct nixl_dlist_handle nixl_dlist_handle_t; /* prepared descriptor list */
typedef struct nixl_xfer_req nixl_xfer_req_t;         /* transfer request */
typedef struct nixl_backend_ops nixl_backend_ops_t;   /* backend vtable (plugin contract) */

/* Log levels for nixl_agent_config_t.log_fn. */
enum { NIXL_LOG_ERROR = 0, NIXL_LOG_WARN = 1, NIXL_LOG_INFO = 2, NIXL_LOG_DEBUG = 3 };

/* Log items: a stable id for each message a program (or a test) may want to
   recognise. The text of a message may change between versions; its id
   does not. Messages without one carry NIXL_LOGITEM_NONE. Receive them with
   nixl_agent_config_t.log_item_fn. X(NAME, text): for a reason that ends a
   message ("...: <reason>") the text is that reason, else what it means. */
#define NIXL_LOG_ITEMS(X)                                                                                          \
    X(NONE, "a message without an id")                                                                            \
    /* agent and backends */                                                                                      \
    X(AGENT_NAME_REQUIRED, "agent_create: the config has no name")                                                \
    X(ETCD_NOT_BUILT, "NIXL_ETCD_ENDPOINTS is set in a build without etcd: ignored")                              \
    X(ETCD_NOT_COMPILED, "etcd was asked for (etcd_endpoints) in a build without NIXL_WITH_ETCD")                 \
    X(PARAM_UNKNOWN_KEY, "create_backend: a param key the backend does not take")                                 \
    X(PARAM_BAD_VALUE, "create_backend: a param value out of range or of the wrong form")                         \
    X(PEER_DOWN_UNNAMED, "a backend reported an unnamed peer down: ignored")                                      \
    /* descriptors and registration */                                                                            \
    X(DESC_WRAPS, "a descriptor wraps the address space")                                                         \
    X(MEM_REGISTERED_ALREADY, "register_mem: the region is registered already")                                   \
    /* requests */                                                                                                \
    X(XFER_ARGS_MISSING, "create_xfer_req: a list or the remote agent is missing")                                \
    X(DESC_NOT_IN_REGION, "prep: a descriptor lies in no region registered here (or loaded from that peer)")    \
    X(XFER_NO_BACKEND, "make_xfer_req: no backend holds both sides")                                              \
    X(STRIDED_NOT_IN_REGION, "a strided layout's span lies in no one region")                                     \
    X(STRIDED_OVERFLOW, "the span overflows the address space")                                                   \
    /* notifications */                                                                                           \
    X(NOTIF_NO_SENDER, "a backend delivered a notification without sender or data: dropped")                      \
    X(NOTIF_DROPS_BEGIN, "a sender's notifications are dropped from now on: its queue is full")                   \
    X(NOTIF_DROPS_COUNTED, "how many notifications were dropped while the queue was full")                        \
    /* peers' metadata */                                                                                         \
    X(MD_BAD_MAGIC, "bad magic (not nixl.h metadata)")                                                            \
    X(MD_BAD_REGION, "bad region")                                                                                \
    X(MD_MALFORMED, "load_remote_md: the blob is refused (the reason follows)")                                   \
    X(MD_DIFFERENT_PUBLIC, "load_remote_md: a known region came back with different public data")               \
    X(MD_CONN_INFO_REFUSED, "load_remote_md: a backend refused the peer's connection info")                       \
    X(MD_CONN_INFO_CHANGED, "load_remote_md: a known peer came back with other connection info")                  \
    X(MD_REGIONS_LIMIT, "more regions than remote_regions_max allows")                                            \
    X(MD_BYTES_LIMIT, "load_remote_md: over remote_md_bytes")                                                     \
    X(MD_NAME_OWNED, "a name belongs to the address that brought it (without a token)")                          \
    X(FETCH_WRONG_NAME, "fetch_remote_md: the peer answered under another name")                                  \
    X(FETCH_FAILED, "fetch_remote_md: a fetch (side channel or etcd) failed")                                     \
    X(ETCD_FAILED, "etcd: a request failed (the URL and reason follow)")                                          \
    /* the side channel (listener and client) */                                                                  \
    X(SC_CANNOT_LISTEN, "listener: cannot listen on the address")                                                 \
    X(SC_UNAUTHENTICATED, "listener: started without an auth token (its address follows)")                       \
    X(SC_CONN_DROPPED, "listener: a connection was dropped (the reason follows)")                                 \
    X(SC_EXCHANGE_FAILED, "side channel: an exchange with a listener failed (the reason follows)")                \
    X(SC_MAKES_ROOM, "every slot is taken: the oldest connection that has not proven itself makes room")          \
    X(SC_ADDR_LIMIT, "its address has listen_conns_per_addr connections open: the oldest that has not proven "    \
                     "itself makes room")                                                                         \
    X(SC_BAD_MAGIC, "bad magic (not a nixl.h side-channel frame)")                                                \
    X(SC_PAYLOAD_LIMIT, "payload over the 64 MiB limit")                                                          \
    X(SC_CLOSED_MID_FRAME, "closed mid-frame")                                                                    \
    X(SC_TOO_SLOW, "too slow (timeout)")                                                                          \
    X(SC_NO_HELLO, "no HELLO first")                                                                              \
    X(SC_NO_AUTH, "no authentication, and this listener requires an auth token")                                 \
    X(SC_WRONG_TOKEN, "wrong auth token (the request's header MAC does not verify)")                              \
    X(SC_PEER_NEEDS_TOKEN, "the listener requires an auth token (auth_token / NIXL_AUTH_TOKEN)")                  \
    X(SC_PEER_OTHER_TOKEN, "wrong MAC: the listener does not know our auth token")                                \
    /* GPU memory (the CUDA driver and copy engines) */                                                           \
    X(CUDA_NO_DRIVER, "VRAM needs the CUDA driver (the reason follows)")                                          \
    X(VRAM_NOT_DEVICE, "register_mem: a VRAM region is not device memory")                                        \
    X(VRAM_WRONG_GPU, "register_mem: a VRAM region is on another GPU than its dev_id")                            \
    X(VRAM_PAST_ALLOCATION, "register_mem: a VRAM region runs past its allocation")                               \
    X(COPY_OPS_INCOMPLETE, "set_copy_ops: a required function is missing")                                        \
    X(COPY_ENGINE_BUSY, "set_copy_ops: the current copy engine is in use")                                        \
    /* verbs */                                                                                                   \
    X(VERBS_BAD_VRAM_PATH, "verbs: vram_path is not auto, dmabuf, peermem or staging")                            \
    X(VERBS_VRAM_PATH_UNAVAILABLE, "verbs: the vram_path asked for is not available for this memory")             \
    X(VERBS_STAGED, "verbs: GPU memory is staged through host buffers (no GPUDirect RDMA)")                       \
    X(VERBS_REMOTE_STAGED, "verbs: the peer's memory is staged there: start the transfer at that peer")           \
    /* UCX */                                                                                                     \
    X(UCX_FLOOD_CUT_OFF, "ucx: a sender past its notification window is cut off")                                 \
    /* posix (files) */                                                                                           \
    X(POSIX_BAD_ENGINE, "posix: engine is not auto, uring or threads")                                            \
    X(POSIX_URING_UNAVAILABLE, "posix: io_uring is unavailable: the thread pool runs")                            \
    X(POSIX_NOT_FD, "posix: register_mem: dev_id is not an open file descriptor")                                 \
    X(POSIX_WRONG_KIND, "posix: register_mem: the descriptor is not a regular file (FILE) or block device (BLK)") \
    X(POSIX_MODE, "posix: prep_xfer: the file is not open for what the request does")                             \
    X(POSIX_DIRECT_ALIGN, "posix: prep_xfer: an O_DIRECT descriptor is not aligned to direct_align")              \
    X(POSIX_READ_PAST_EOF, "posix: prep_xfer: a READ past the end of the file")                                   \
    X(POSIX_STAGE_SIZE, "posix: stage_size is not a multiple of direct_align")                                    \
    X(POSIX_IO_FAILED, "posix: an I/O failed (fd, offset and errno follow)")                                      \
    X(POSIX_EOF, "end of file")                                                                                   \
    X(POSIX_DEVICE_FULL, "the device took no bytes")                                                              \
    X(POSIX_COPY_FAILED, "the copy between GPU and host memory failed")                                           \
    X(POSIX_COPY_OUT_NOT_STARTED, "the copy out of GPU memory did not start")                                     \
    X(POSIX_COPY_IN_NOT_STARTED, "the copy into GPU memory did not start")

#define _NIXL_LOG_ITEM_ENUM(name, text) NIXL_LOGITEM_##name,
typedef enum nixl_log_item { NIXL_LOG_ITEMS(_NIXL_LOG_ITEM_ENUM) NIXL_LOGITEM_COUNT } nixl_log_item_t;
#undef _NIXL_LOG_ITEM_ENUM

/* "DESC_WRAPS" for NIXL_LOGITEM_DESC_WRAPS; "?" for an unknown value (never
   NULL). Pure: any thread. */
NIXL_API const char *nixl_log_item_str(nixl_log_item_t item);

/* ======================================================================== */
/* agent                                                                    */
/* ======================================================================== */

/* Zero means default in every field. */
typedef struct nixl_agent_config {
    const char *name;     /* required, unique among peers, 1..255 bytes, copied */
    int progress_thread;  /* 0 (default): the caller drives nixl_progress() */
    int listen_thread;    /* 1: serve metadata on listen_port (0 = any free port) */
    uint16_t listen_port;
    int capture_telemetry; /* 1: requests record nixl_xfer_telemetry_t */
    /* logger: NULL = stderr at warn and above (NIXL_LOG_LEVEL overrides) */
    void (*log_fn)(void *user, int level, const char *msg);
    void *log_user;
    /* logger with the message's id (nixl_log_item_t): when set, called
       instead of log_fn (same user, same levels) */
    void (*log_item_fn)(void *user, int level, nixl_log_item_t item, const char *msg);
    /* allocator: NULL = malloc/free; used for every allocation of nixl.h and its
       backends (thread-safe: the progress, listener and etcd threads call it).
       Not for the libraries underneath (libcurl, libibverbs, UCX, libcrypto),
       which allocate with their own. */
    void *(*alloc_fn)(void *user, size_t size);
    void (*free_fn)(void *user, void *ptr);
    void *alloc_user;
    /* metadata side channel */
    const char *listen_addr;  /* IPv4 address the listener binds (NULL = all interfaces
                                 with a secret, 127.0.0.1 without one) */
    const char *auth_token;   /* shared secret (NULL = $NIXL_AUTH_TOKEN, unset = none):
                                 every side-channel exchange and backend connection
                                 proves it with HMAC-SHA256; it never crosses the wire */
    size_t listen_conns_per_addr; /* listener connections open from one address (0 = 64) */
    int sc_timeout_ms;        /* connect/read/write timeout of the side channel and etcd, and
                                 how long an etcd fetch waits for the key (0 = 5000) */
    /* etcd (needs NIXL_WITH_ETCD): "http://host:port" (NULL = $NIXL_ETCD_ENDPOINTS, unset = no etcd) */
    const char *etcd_endpoints;
    const char *etcd_namespace; /* key prefix (NULL = $NIXL_ETCD_NAMESPACE or "/nixl/agents/") */
    /* received notifications waiting for nixl_get_notifs, in bytes (message +
       sender name + bookkeeping): what one sender may have queued (0 = 64 MiB)
       and all senders together (0 = 256 MiB). Beyond either, further
       notifications are dropped, with a log line when it starts and a count
       of what was dropped at the next nixl_get_notifs. */
    size_t notif_queue_peer_bytes;
    size_t notif_queue_bytes;
    /* remote metadata held (beyond either, load_remote_md is NOT_ALLOWED and
       logs which limit): regions of one peer (0 = 262144), peers (0 = 4096),
       bytes of all peers' metadata, as accounted (0 = 1 GiB) */
    size_t remote_regions_max;
    size_t remotes_max;
    size_t remote_md_bytes;
} nixl_agent_config_t;

/* Creates an agent. Errors: INVALID_PARAM (no/empty/too long name, only one
   of alloc_fn/free_fn, bad listen_addr, an auth token empty or over 255
   bytes), NOT_SUPPORTED (an auth token, and libcrypto cannot be opened),
   BACKEND (thread creation failed, listener could not bind: the log says
   why). Thread safety: any thread. */
NIXL_API nixl_status_t nixl_agent_create(const nixl_agent_config_t *cfg, nixl_agent_t **agent);

/* Releases everything the agent owns, in reverse order: progress thread,
   requests (in-flight ones are aborted), prepared lists, remote metadata,
   registrations, backends. No other thread may use the agent during or after
   this call. NULL is a no-op. */
NIXL_API void nixl_agent_destroy(nixl_agent_t *agent);

NIXL_API const char *nixl_agent_name(const nixl_agent_t *agent);
/* The bound metadata listener port, 0 without a listener. */
NIXL_API uint16_t nixl_agent_listen_port(const nixl_agent_t *agent);

/* Drives every backend once: completions, deferred posts, notification
   delivery, connection events. Returns NIXL_IN_PROG when something happened,
   NIXL_SUCCESS when idle. Any thread. */
NIXL_API nixl_status_t nixl_progress(nixl_agent_t *agent);

/* ======================================================================== */
/* backends                                                                 */
/* ======================================================================== */

/* Creates a backend from its vtable. params: "key=value,key=value" or NULL.
   Errors: INVALID_PARAM (unknown key, bad value: the log names it; a second
   backend with the same name; too many backends), BACKEND/NOT_SUPPORTED from
   the backend's own setup. Any thread. */
NIXL_API nixl_status_t nixl_create_backend(nixl_agent_t *agent, const nixl_backend_ops_t *ops,
                                           const char *params, nixl_backend_t **backend);
NIXL_API const char *nixl_backend_name(const nixl_backend_t *backend); /* "VERBS", "UCX" */

/* Optional arguments. NULL or zero-filled means defaults. */
typedef struct nixl_opt_args {
    nixl_backend_t *const *backends; size_t num_backends; /* restrict / order backends */
    const void *notif; size_t notif_len; int has_notif;   /* notification for a request */
    const char *ip; uint16_t port;                        /* side-channel peer */
    int include_conn_info;                                /* partial metadata */
    const char *metadata_label;  /* etcd key label (NULL = "metadata"; partial sends: "partial") */
    int skip_desc_merge; /* make: 1 hands the backend one descriptor per pair; 0 (default, as
                            NIXL's skip_desc_merge=False) joins consecutive pairs that are
                            contiguous on both sides within the same regions into one */
} nixl_opt_args_t;

/* ======================================================================== */
/* memory                                                                   */
/* ======================================================================== */

/* Registers each region with every backend (of opt->backends, or all) that
   supports descs->mem. Best effort per region: succeeds when every region was
   taken by at least one backend. Errors: INVALID_PARAM (NULL/zero-length/
   wrapping descriptor, a region registered already, duplicates in the list),
   NOT_SUPPORTED (no backend takes this memory type), or the backends' error
   when none took a region. On error nothing of this call stays registered.
   Overlapping (but not identical) regions are allowed. Any thread. */
NIXL_API nixl_status_t nixl_register_mem(nixl_agent_t *agent, const nixl_dlist_t *descs,
                                         const nixl_opt_args_t *opt);

/* Deregisters exactly the registered regions named (same addr, len, dev_id,
   mem). Errors: NOT_FOUND (one is not registered; then nothing changes).
   Prepared lists and requests that use a deregistered region stay valid to
   release, but posting them returns NOT_FOUND; a request in flight over it
   completes or fails as the backend reports (verbs: a protection error).
   Remote peers lose access at once. Any thread. */
NIXL_API nixl_status_t nixl_deregister_mem(nixl_agent_t *agent, const nixl_dlist_t *descs,
                                           const nixl_opt_args_t *opt);

/* ======================================================================== */
/* metadata                                                                 */
/* ======================================================================== */

/* Serialises the agent's name, every backend's connection info and every
   registered region's public data into a new blob (free with nixl_free_md).
   Format: magic "NXMD", version, length, little-endian fields, CRC-32. */
NIXL_API nixl_status_t nixl_get_local_md(nixl_agent_t *agent, void **blob, size_t *len);

/* Like nixl_get_local_md, for chosen regions only: every descriptor must lie
   inside a registered region, which is then included (opt->backends limits
   the backends). Connection info only with opt->include_conn_info. An empty
   list with include_conn_info gives connection info alone. Errors:
   NOT_FOUND (descriptor not registered), INVALID_PARAM. */
NIXL_API nixl_status_t nixl_get_local_partial_md(nixl_agent_t *agent, const nixl_dlist_t *descs,
                                                 const nixl_opt_args_t *opt, void **blob, size_t *len);
NIXL_API void nixl_free_md(nixl_agent_t *agent, void *blob);

/* Loads a peer's metadata blob and writes its name into remote_name. For a
   known agent the regions add up; a region coming back with different public
   data, or connection info that differs from what was loaded, is refused
   with NOT_ALLOWED and nothing changes. Errors: INVALID_PARAM (truncated,
   corrupted, oversized blob; remote_name_cap too small; own name), MISMATCH
   (a format version this library does not speak), NOT_ALLOWED. Sections for
   backends this agent lacks are skipped. Any thread. */
NIXL_API nixl_status_t nixl_load_remote_md(nixl_agent_t *agent, const void *blob, size_t len,
                                           char *remote_name, size_t remote_name_cap);

/* Forgets a peer: its regions are unloaded from the backends and its
   connections closed. Requests and lists made for it can only be released.
   Errors: NOT_FOUND. */
NIXL_API nixl_status_t nixl_invalidate_remote_md(nixl_agent_t *agent, const char *remote);

/* SUCCESS when metadata of `remote` is loaded and, if descs is given, every
   descriptor lies inside one of its loaded regions of that memory type;
   NOT_FOUND otherwise. */
NIXL_API nixl_status_t nixl_check_remote_md(nixl_agent_t *agent, const char *remote,
                                            const nixl_dlist_t *descs);

/* Connects now (instead of at the first transfer) on every backend that has
   the peer's connection info (or those of opt->backends). Errors: NOT_FOUND. */
NIXL_API nixl_status_t nixl_make_connection(nixl_agent_t *agent, const char *remote,
                                            const nixl_opt_args_t *opt);

/* Side channel: opt->ip / opt->port name the peer's listener (an agent
   created with listen_thread). Without opt->ip, and with etcd configured
   (etcd_endpoints; compiled with NIXL_WITH_ETCD), the same calls go through
   etcd: send puts "<namespace><name>/<label>", fetch reads that key of the
   peer or watches for it up to sc_timeout_ms, invalidate deletes this
   agent's keys; a deleted key of a peer invalidates its loaded metadata. Frames: magic "NXSC", version, command,
   token and payload lengths, then the token (the agent's auth_token) and
   the payload; a listener drops garbage, oversized (> 256 MiB), slow
   (sc_timeout_ms) or unauthenticated frames with a log line and keeps
   serving others.
   nixl_send_local_md pushes this agent's metadata and returns the peer's
   load status (blocking, at most sc_timeout_ms per step). Errors:
   INVALID_PARAM (no ip/port), REMOTE_DISCONNECT (cannot reach the peer, or
   it dropped us: wrong token), and the peer's load error. */
NIXL_API nixl_status_t nixl_send_local_md(nixl_agent_t *agent, const nixl_opt_args_t *opt);
/* Like nixl_send_local_md with chosen regions (see nixl_get_local_partial_md). */
NIXL_API nixl_status_t nixl_send_local_partial_md(nixl_agent_t *agent, const nixl_dlist_t *descs,
                                                  const nixl_opt_args_t *opt);
/* Asks the peer's listener for its metadata, asynchronously: returns at
   once; nixl_check_remote_md(agent, remote, NULL) says SUCCESS once it is
   loaded. The fetched metadata must carry the name `remote`. Failures are
   logged. */
NIXL_API nixl_status_t nixl_fetch_remote_md(nixl_agent_t *agent, const char *remote,
                                            const nixl_opt_args_t *opt);
/* Tells the peer's listener to drop this agent's metadata (blocking, like
   send). */
NIXL_API nixl_status_t nixl_invalidate_local_md(nixl_agent_t *agent, const nixl_opt_args_t *opt);

/* ======================================================================== */
/* transfers                                                                */
/* ======================================================================== */

/* Prepares a descriptor list once for many requests. agent_name NULL or ""
   prepares the local side (descriptors inside local registrations); a remote
   name prepares that peer's side (inside its loaded regions); the agent's own
   name prepares a loopback target side. Errors: NOT_FOUND (a descriptor lies
   in no registered/loaded region, unknown peer), INVALID_PARAM. */
NIXL_API nixl_status_t nixl_prep_xfer_dlist(nixl_agent_t *agent, const char *agent_name,
                                            const nixl_dlist_t *descs, const nixl_opt_args_t *opt,
                                            nixl_dlist_handle_t **handle);

/* A regular layout without one descriptor per block: block i is len bytes
   at base + i * stride on dev_id, i in 0..count-1 (a KV cache's pages of
   one layer). */
typedef struct nixl_strided {
    nixl_mem_t mem;
    uintptr_t base;
    size_t len, stride, count;
    uint64_t dev_id;
} nixl_strided_t;

/* Prepares a strided layout like nixl_prep_xfer_dlist prepares a list
   (same agent_name rules; nixl_make_xfer_req picks blocks by index, and
   can pair it with either kind of list), holding O(1) memory instead of
   one entry per block. The whole span, base to the end of the last block,
   must lie in one region. Errors: INVALID_PARAM (no layout, zero len or
   count, NULL base, a span past the address space), NOT_FOUND (no one
   region holds the span, unknown peer). Thread safety: any thread. */
NIXL_API nixl_status_t nixl_prep_xfer_dlist_strided(nixl_agent_t *agent, const char *agent_name,
                                                    const nixl_strided_t *layout, const nixl_opt_args_t *opt,
                                                    nixl_dlist_handle_t **handle);

/* Makes a request from prepared lists by indices: pair i moves
   local[local_idx[i]] <-> remote[remote_idx[i]]; the lengths of a pair must
   be equal. local_n must equal remote_n. Consecutive pairs that continue
   each other on both sides (within the same two regions) reach the backend
   as one descriptor unless opt->skip_desc_merge (NIXL's default: merged;
   fewer work requests, same bytes). Cost: one pass over the pairs, no
   search, no allocation per pair. Errors: INVALID_PARAM (index out of
   range, length mismatch, a remote handle that is local), NOT_FOUND (remote
   invalidated), NOT_SUPPORTED (no backend holds both sides, or a notification
   on a backend without notifications). Thread safety: any thread. */
NIXL_API nixl_status_t nixl_make_xfer_req(nixl_agent_t *agent, nixl_xfer_op_t op,
                                          nixl_dlist_handle_t *local, const int *local_idx, size_t local_n,
                                          nixl_dlist_handle_t *remote, const int *remote_idx, size_t remote_n,
                                          const nixl_opt_args_t *opt, nixl_xfer_req_t **req);

/* One-shot request: prepares both lists and pairs them in order. */
NIXL_API nixl_status_t nixl_create_xfer_req(nixl_agent_t *agent, nixl_xfer_op_t op,
                                            const nixl_dlist_t *local, const nixl_dlist_t *remote,
                                            const char *remote_agent, const nixl_opt_args_t *opt,
                                            nixl_xfer_req_t **req);

/* Posts a request. opt->has_notif replaces the request's notification for
   this post and later ones. Returns IN_PROG, or SUCCESS when it finished
   inline. Errors: REPOST_ACTIVE (still in flight), NOT_FOUND (a region or the
   peer's metadata went away since it was made), REMOTE_DISCONNECT, BACKEND. */
NIXL_API nixl_status_t nixl_post_xfer_req(nixl_agent_t *agent, nixl_xfer_req_t *req,
                                          const nixl_opt_args_t *opt);

/* IN_PROG, SUCCESS, or the error that ended the request; NOT_POSTED before
   the first post. Drives progress. */
NIXL_API nixl_status_t nixl_get_xfer_status(nixl_agent_t *agent, nixl_xfer_req_t *req);

/* Releases a request. Never blocks: a request in flight is aborted where the
   backend can; where it cannot, returns NIXL_ERR_REPOST_ACTIVE, the request
   stays valid and status keeps reporting until it ends (release it then). */
NIXL_API nixl_status_t nixl_release_xfer_req(nixl_agent_t *agent, nixl_xfer_req_t *req);

/* Releases a prepared list. Requests made from it keep what they need. */
NIXL_API nixl_status_t nixl_release_dlist_handle(nixl_agent_t *agent, nixl_dlist_handle_t *handle);

NIXL_API nixl_status_t nixl_query_xfer_backend(nixl_agent_t *agent, const nixl_xfer_req_t *req,
                                               nixl_backend_t **backend);
/* The backend's estimate; NOT_SUPPORTED where it has none. */
NIXL_API nixl_status_t nixl_estimate_xfer_cost(nixl_agent_t *agent, const nixl_xfer_req_t *req,
                                               int64_t *duration_us, int64_t *err_margin_us);

/* Telemetry of the last completed post (capture_telemetry must be set, else
   NO_TELEMETRY): start_us = when it was posted (CLOCK_MONOTONIC, µs),
   post_us = time spent in the post call, xfer_us = post to observed
   completion, total_bytes and desc_count of the request. */
typedef struct nixl_xfer_telemetry {
    uint64_t start_us, post_us, xfer_us, total_bytes, desc_count;
} nixl_xfer_telemetry_t;
NIXL_API nixl_status_t nixl_get_xfer_telemetry(nixl_agent_t *agent, const nixl_xfer_req_t *req,
                                               nixl_xfer_telemetry_t *out);

/* ======================================================================== */
/* notifications                                                            */
/* ======================================================================== */

/* Sends a notification bound to no transfer, on the first backend (in order)
   that has the peer's connection info and supports notifications. SUCCESS:
   sent or queued to go. IN_PROG: flow control, nothing was queued: the
   peer has not drained what it already holds and the backend holds a
   window's worth for it; call nixl_progress and try again. Errors:
   NOT_FOUND (unknown peer), NOT_SUPPORTED, INVALID_PARAM (too large for the
   backend: see its manual). */
NIXL_API nixl_status_t nixl_gen_notif(nixl_agent_t *agent, const char *remote, const void *msg,
                                      size_t len, const nixl_opt_args_t *opt);

/* Drives progress once, then hands every queued notification to fn (sender
   name, message), in arrival order per sender, and drains the queue. fn runs
   on the caller's thread with no lock held; it may call nixl functions. */
typedef void (*nixl_notif_fn)(void *user, const char *remote_agent, const void *msg, size_t len);
NIXL_API nixl_status_t nixl_get_notifs(nixl_agent_t *agent, nixl_notif_fn fn, void *user);

/* ======================================================================== */
/* copy engines (device memory staged through host buffers)                 */
/* ======================================================================== */

/* How device memory is recognised and copied to and from host bounce
   buffers, for backends that stage VRAM (verbs without GPUDirect, the file
   backend). Each such backend uses the CUDA driver's by default and takes
   another through its own setter (nixl_verbs_set_copy_ops,
   nixl_posix_set_copy_ops): an inference runtime with its own copy engine,
   or a test with host memory standing in for a GPU. Every function returns
   0 on success, -1 on failure, unless said. */
typedef struct nixl_copy_ops {
    /* Is [addr, addr+len) device memory? If so: its device ordinal and the
       allocation holding it. -1: not device memory (a host pointer). */
    int (*query)(void *ctx, uintptr_t addr, size_t len, int *dev, uintptr_t *base, size_t *size);
    /* Pins a host bounce buffer for fast copies on device dev (may be NULL). */
    int (*pin)(void *ctx, int dev, void *host, size_t len);
    void (*unpin)(void *ctx, int dev, void *host);
    /* A completion marker for copies on device dev. */
    int (*event_create)(void *ctx, int dev, void **ev);
    void (*event_destroy)(void *ctx, void *ev);
    /* Starts a copy (to_device: host -> device, else device -> host) and
       arms ev to complete when it has. Copies of one device may run in order. */
    int (*copy)(void *ctx, int dev, int to_device, void *host, uintptr_t device, size_t len, void *ev);
    /* 1: done, 0: not yet, -1: the copy failed. */
    int (*event_done)(void *ctx, void *ev);
    void *ctx;
} nixl_copy_ops_t;

/* ======================================================================== */
/* backend plugin contract                                                  */
/* ======================================================================== */
/* A backend is a vtable plus an engine (its private state). The core:
   - calls every vtable function with the agent lock held, so an engine needs
     no locking of its own unless it runs threads;
   - keeps all bookkeeping: which regions exist, which peer owns what, and
     checks every descriptor before prep_xfer sees it;
   - hands the engine opaque handles it created (md, rmd, request handles)
     and never looks inside them.
   Lifetimes: a local md lives from register_mem to deregister_mem; a remote
   md (rmd) from load_remote_md/load_local_md to unload_md. The core never
   posts a request after one of its md/rmd was released, and calls
   release_xfer on such requests before (or without) reusing them; release_xfer
   must not dereference md/rmd handles.
   Callbacks into the core (nixl_backend_notif, nixl_backend_peer_down,
   nixl_backend_log, ...) may only be made from inside a vtable call.        */

#define NIXL_BACKEND_ABI 1

/* capability bits for nixl_backend_ops_t.caps */
enum {
    NIXL_CAP_NOTIF = 1,  /* notifications (with requests and gen_notif) */
    NIXL_CAP_LOCAL = 2,  /* loopback: transfers within one agent (load_local_md) */
    NIXL_CAP_REMOTE = 4  /* transfers to other agents */
};

typedef struct nixl_param { const char *key; const char *value; } nixl_param_t;

/* What create() receives. Pointers stay valid only during create(). */
typedef struct nixl_backend_init {
    nixl_backend_t *self;         /* pass to nixl_backend_* helpers; lives as long as the engine */
    const char *agent_name;       /* the owning agent's name */
    const nixl_param_t *params;   /* parsed key=value pairs, keys already checked */
    size_t num_params;
} nixl_backend_init_t;

/* One resolved descriptor pair of a request. */
typedef struct nixl_xfer_desc {
    uintptr_t laddr, raddr;
    size_t len;
    uint64_t ldev, rdev;
    void *lmd;  /* the engine's md of the local region holding [laddr, laddr+len) */
    void *rmd;  /* the engine's rmd of the remote region holding [raddr, raddr+len) */
} nixl_xfer_desc_t;

typedef struct nixl_xfer_args {
    nixl_xfer_op_t op;
    const char *remote;           /* peer name (own name for loopback) */
    nixl_mem_t lmem, rmem;
    const nixl_xfer_desc_t *descs; /* valid only during prep_xfer: copy what you need */
    size_t count;
    uint64_t total_bytes;
    int has_notif;                /* the request may carry a notification */
} nixl_xfer_args_t;

struct nixl_backend_ops {
    const char *name;      /* "VERBS"; matches sections of peers' metadata */
    unsigned abi;          /* NIXL_BACKEND_ABI */
    unsigned mem_mask;     /* NIXL_MEM_BIT() of the memory types it registers */
    unsigned caps;         /* NIXL_CAP_* */
    /* accepted param keys, NULL-terminated; a key ending in '.' accepts any
       key with that prefix ("ucx." takes "ucx.TLS"). NULL: no params. */
    const char *const *param_keys;

    /* lifecycle: create validates params (bad value: log it, INVALID_PARAM) */
    nixl_status_t (*create)(const nixl_backend_init_t *init, void **engine);
    /* may find requests in flight, and requests whose release_xfer it
       refused: it frees them (the core has forgotten them) */
    void (*destroy)(void *engine);

    /* local memory: md is the engine's handle of one region */
    nixl_status_t (*register_mem)(void *engine, nixl_mem_t mem, const nixl_desc_t *region, void **md);
    void (*deregister_mem)(void *engine, void *md);
    /* bytes peers need to reach the region (rkey...); engine-owned buffer,
       valid while registered. May be NULL: no public data. */
    nixl_status_t (*get_public_data)(void *engine, void *md, const void **data, size_t *len);

    /* connections: conn info is engine-owned and valid until destroy */
    nixl_status_t (*get_conn_info)(void *engine, const void **info, size_t *len);
    /* remember how to reach `remote`; must not connect yet */
    nixl_status_t (*load_remote_conn_info)(void *engine, const char *remote, const void *info, size_t len);
    nixl_status_t (*connect)(void *engine, const char *remote);      /* may return IN_PROG */
    nixl_status_t (*disconnect)(void *engine, const char *remote);   /* forget everything of it */

    /* remote memory: rmd is the engine's handle of one peer region */
    nixl_status_t (*load_remote_md)(void *engine, const char *remote, nixl_mem_t mem,
                                    const nixl_desc_t *region, const void *pub, size_t len, void **rmd);
    nixl_status_t (*load_local_md)(void *engine, void *md, void **rmd); /* loopback; NULL without NIXL_CAP_LOCAL */
    void (*unload_md)(void *engine, void *rmd);

    /* requests: prep once, post many times */
    nixl_status_t (*prep_xfer)(void *engine, const nixl_xfer_args_t *args, void **handle);
    /* no allocation or lookup here; returns IN_PROG or SUCCESS (done inline) */
    nixl_status_t (*post_xfer)(void *engine, void *handle, const void *notif, size_t notif_len, int has_notif);
    nixl_status_t (*check_xfer)(void *engine, void *handle); /* IN_PROG, SUCCESS or the error */
    /* SUCCESS: freed (aborting what was in flight, late completions must not
       touch freed memory); any other value: not freed, the core retries later */
    nixl_status_t (*release_xfer)(void *engine, void *handle);
    nixl_status_t (*estimate_cost)(void *engine, void *handle, int64_t *duration_us, int64_t *err_margin_us); /* may be NULL */

    /* notifications: gen_notif sends one (IN_PROG: flow control, nothing
       queued, the caller retries); received ones go to the core with
       nixl_backend_notif() (the "get" half), from inside progress */
    nixl_status_t (*gen_notif)(void *engine, const char *remote, const void *msg, size_t len);

    /* completions, deferred posts, connection events; IN_PROG if it did
       anything, SUCCESS when idle */
    nixl_status_t (*progress)(void *engine);
};

/* Helpers for backends (call only from inside a vtable call). */
NIXL_API void nixl_backend_log(nixl_backend_t *be, int level, const char *fmt, ...) NIXL_PRINTF(3, 4);
/* The same with the message's stable id (NIXL_LOG_ITEMS). */
NIXL_API void nixl_backend_log_item(nixl_backend_t *be, int level, nixl_log_item_t item, const char *fmt, ...)
    NIXL_PRINTF(4, 5);
/* A reason that is a log item's text (the text itself, so a backend's
   functions can return it as their explanation), and back: the id of such
   a reason (NONE for any other string). */
NIXL_API const char *nixl_backend_why(nixl_log_item_t item);
NIXL_API nixl_log_item_t nixl_backend_why_item(const char *why);
/* Queue a received notification from `remote` (copied). */
NIXL_API void nixl_backend_notif(nixl_backend_t *be, const char *remote, const void *msg, size_t len);
/* Whether a notification of len bytes from `remote` fits the receive queue
   now (notif_queue_peer_bytes, notif_queue_bytes). A backend with flow
   control of its own holds the message, and the sender's credit for it,
   while it does not: the sender slows down instead of being dropped. */
NIXL_API int nixl_backend_notif_room(nixl_backend_t *be, const char *remote, size_t len);
/* Bytes of `remote`'s notifications in the receive queue now (as the
   limits count them): 0 once the application drained them. */
NIXL_API size_t nixl_backend_notif_queued(nixl_backend_t *be, const char *remote);
/* Report that `remote` died or disconnected: after the current vtable call
   returns, the core invalidates its metadata (unload_md, disconnect) with
   NIXL_ERR_REMOTE_DISCONNECT as the reason. */
NIXL_API void nixl_backend_peer_down(nixl_backend_t *be, const char *remote);
/* The agent's allocator (zeroed memory). */
NIXL_API void *nixl_backend_alloc(nixl_backend_t *be, size_t size);
NIXL_API void nixl_backend_free(nixl_backend_t *be, void *ptr);
/* Param lookup during create(): value or NULL. */
NIXL_API const char *nixl_param_get(const nixl_backend_init_t *init, const char *key);
/* Unsigned param with default and range; a bad value is logged with its key
   and gives INVALID_PARAM. */
NIXL_API nixl_status_t nixl_param_u64(const nixl_backend_init_t *init, const char *key, uint64_t def,
                                      uint64_t min, uint64_t max, uint64_t *out);
/* Monotonic clock in microseconds. */
NIXL_API uint64_t nixl_now_us(void);
/* Authentication for a backend's own handshakes; the agent's secret never
   leaves the core. auth_on: 1 when the agent has a secret (auth_token or
   NIXL_AUTH_TOKEN). auth_mac: mac = HMAC-SHA256(secret, msg), NOT_SUPPORTED
   without one. auth_check: 1 when mac is HMAC-SHA256(secret, msg), compared
   in equal time. random_bytes: fresh nonces from getrandom, 0 on success. */
NIXL_API int nixl_backend_auth_on(const nixl_backend_t *be);
NIXL_API nixl_status_t nixl_backend_auth_mac(nixl_backend_t *be, const void *msg, size_t len, unsigned char mac[32]);
NIXL_API int nixl_backend_auth_check(nixl_backend_t *be, const void *msg, size_t len, const unsigned char mac[32]);
NIXL_API int nixl_random_bytes(void *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* NIXL_H */

/* ======================================================================== */
/* implementation                                                           */
/* ======================================================================== */
#ifdef NIXL_IMPLEMENTATION
#ifndef NIXL_IMPLEMENTATION_DONE
#define NIXL_IMPLEMENTATION_DONE

#ifdef NIXL_WITH_ETCD
#include <curl/curl.h>
#endif
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#if !defined(CLOCK_MONOTONIC)
#error "nixl.h: the implementation needs POSIX declarations: include nixl.h with NIXL_IMPLEMENTATION before any system header, or compile with -D_GNU_SOURCE (or -std=gnu11)"
#endif

#ifndef NIXL_ASSERT
#include <assert.h>
#define NIXL_ASSERT(x) assert(x)
#endif

#define NIXL_MD_MAGIC 0x444d584eu /* "NXMD" little-endian */
#define NIXL_MD_VERSION 1
#define NIXL_MD_MAX_NAME 255
#define NIXL_MD_MAX_BLOB_BYTES (1u << 30)
#define NIXL_MD_MAX_KEY_BYTES 65535
#define NIXL_MD_MAX_CONN_BYTES 65536
#define NIXL_MD_MAX_BACKENDS 64
/* mem(1) addr(8) len(8) dev(8) nkeys(1) */
#define NIXL_MD_REGION_FIXED 26
/* be_idx(1) key_len(2) */
#define NIXL_MD_KEY_FIXED 3
#define NIXL_SC_MAX_TOKEN 255

/* flags shared between threads (gcc/clang builtins: C99 and C++ alike) */
#define _NIXL_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define _NIXL_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

// >>structs

/* The part every registration record shares: what memory it covers. */
typedef struct _nixl_span {
    nixl_mem_t mem;
    uintptr_t addr;
    size_t len;
    uint64_t dev_id;
} _nixl_span;

/* A registered region: local (md = engine md) or a peer's (md = engine rmd).
   Refcounted: the table holds one reference, every prepared list entry one;
   a deregistered/invalidated region stays allocated, dead, until the last
   list that points at it is released. */
typedef struct _nixl_region {
    _nixl_span s;
    long refs;
    int dead;
    unsigned mask;                   /* backends holding md[i] */
    void *md[NIXL_MAX_BACKENDS];
    unsigned lmask;                  /* local only: loopback rmd loaded */
    void *lmd[NIXL_MAX_BACKENDS];
    unsigned key_mask;               /* remote only: public data known */
    unsigned char *key[NIXL_MAX_BACKENDS];
    size_t key_len[NIXL_MAX_BACKENDS];
} _nixl_region;

/* Regions sorted by (mem, addr, len, dev_id); maxend[i] is the largest end
   address of v[0..i] within v[i]'s memory type, which bounds the backward
   scan when regions overlap. start[i] is v[i]'s address and v[lo[m]..hi[m])
   the regions of memory type m: a lookup searches a flat array of
   addresses (cache lines of 8 starts), not the region structs. */
typedef struct _nixl_table {
    _nixl_region **v;
    uintptr_t *maxend;
    uintptr_t *start;
    size_t n, cap;
    size_t lo[NIXL_MEM_COUNT], hi[NIXL_MEM_COUNT];
} _nixl_table;

typedef struct _nixl_remote {
    char *name;
    long refs;                        /* agent list + prepared lists */
    int dead;
    nixl_status_t dead_why;           /* NOT_FOUND (invalidated) or REMOTE_DISCONNECT */
    unsigned conn_mask;               /* connection info known */
    unsigned char *conn[NIXL_MAX_BACKENDS];
    size_t conn_len[NIXL_MAX_BACKENDS];
    unsigned loaded_mask;             /* load_remote_conn_info done */
    _nixl_table regions;
    size_t bytes;                     /* what its metadata costs us, as accounted */
    char origin[16];                  /* IPv4 it came from over the side channel;
                                         "" when the application loaded it */
    struct _nixl_remote *next;
} _nixl_remote;

struct nixl_backend {
    nixl_agent_t *agent;
    const nixl_backend_ops_t *ops;
    void *engine;
    int idx;
    char *params_buf;                 /* storage behind init.params during create */
};

/* One entry of a prepared list: a descriptor and the region holding it. */
typedef struct _nixl_hent {
    uintptr_t addr;
    size_t len;
    uint64_t dev_id;
    _nixl_region *region;
} _nixl_hent;

struct nixl_dlist_handle {
    nixl_agent_t *agent;
    long refs;                        /* user + requests */
    int user_released;
    int loopback;                     /* remote side is the agent itself */
    _nixl_remote *remote;             /* NULL for local and loopback lists */
    nixl_mem_t mem;
    size_t count;
    _nixl_hent *e;                    /* count entries; a strided list keeps only e[0] */
    int strided;                      /* entry i = e[0] moved by i * stride bytes */
    size_t stride;
    struct nixl_dlist_handle *prev, *next;
};

struct nixl_xfer_req {
    nixl_agent_t *agent;
    nixl_backend_t *be;
    void *bh;                         /* the engine's handle */
    nixl_xfer_op_t op;
    nixl_dlist_handle_t *lh, *rh;
    int *lidx, *ridx;
    size_t n;
    uint64_t total_bytes;
    nixl_status_t status;
    uint64_t epoch;                   /* agent epoch when last validated */
    unsigned char *notif;
    size_t notif_len;
    int has_notif;
    uint64_t t_post, t_post_dur, t_done;
    int have_telemetry;
    struct nixl_xfer_req *prev, *next;
};

typedef struct _nixl_notif {
    struct _nixl_notif *next;
    char *sender;
    unsigned char *msg;
    size_t len;
} _nixl_notif;

typedef struct _nixl_down {
    struct _nixl_down *next;
    char *name;
} _nixl_down;

/* Queued notification bytes of one sender, while it has any (or drops). */
typedef struct _nixl_nq_acct {
    struct _nixl_nq_acct *next;
    size_t bytes;
    unsigned long dropped;
    char name[1]; /* allocated to fit */
} _nixl_nq_acct;

struct nixl_agent {
    char *name;
    nixl_agent_config_t cfg;
    int log_level;
    pthread_mutex_t lock;
    nixl_backend_t *be[NIXL_MAX_BACKENDS];
    int nbe;
    _nixl_table local;
    _nixl_remote *remotes;
    nixl_dlist_handle_t *handles;
    nixl_xfer_req_t *reqs;
    uint64_t epoch;                   /* bumped when regions or peers go away */
    _nixl_notif *nq_head, *nq_tail;
    size_t nq_bytes;                  /* all queued notifications, as accounted */
    _nixl_nq_acct *nq_accts;          /* per sender; cleared when the queue is drained */
    unsigned long nq_dropped_other;   /* dropped with no account (the total limit hit) */
    _nixl_down *downs;
    int in_downs;
    pthread_t thread;
    int thread_started;
    int stop;                         /* atomic: tells the progress thread to end */
    /* side channel */
    char *token;
    uint16_t sc_port;
    int sc_listen_fd, sc_wake[2];
    pthread_t sc_thread;
    int sc_thread_started;
    pthread_mutex_t sc_lock;          /* guards sc_fetches */
    struct _nixl_fetch *sc_fetches;   /* fetch threads to join */
    /* etcd */
    int etcd_on;
    char etcd_endpoint[256];
    char etcd_ns[256];
    pthread_t etcd_thread;
    int etcd_started;
    /* the descriptor array handed to a backend's prep_xfer, kept between
       requests (it is only read during the call): a make over 100 k ids
       pays no fresh 5.6 MB of page faults */
    nixl_xfer_desc_t *scratch;
    size_t scratch_cap;
};

// >>util

NIXL_API const char *nixl_status_str(nixl_status_t s) {
    switch (s) {
    case NIXL_IN_PROG: return "NIXL_IN_PROG";
    case NIXL_SUCCESS: return "NIXL_SUCCESS";
    case NIXL_ERR_NOT_POSTED: return "NIXL_ERR_NOT_POSTED";
    case NIXL_ERR_INVALID_PARAM: return "NIXL_ERR_INVALID_PARAM";
    case NIXL_ERR_BACKEND: return "NIXL_ERR_BACKEND";
    case NIXL_ERR_NOT_FOUND: return "NIXL_ERR_NOT_FOUND";
    case NIXL_ERR_MISMATCH: return "NIXL_ERR_MISMATCH";
    case NIXL_ERR_NOT_ALLOWED: return "NIXL_ERR_NOT_ALLOWED";
    case NIXL_ERR_REPOST_ACTIVE: return "NIXL_ERR_REPOST_ACTIVE";
    case NIXL_ERR_UNKNOWN: return "NIXL_ERR_UNKNOWN";
    case NIXL_ERR_NOT_SUPPORTED: return "NIXL_ERR_NOT_SUPPORTED";
    case NIXL_ERR_REMOTE_DISCONNECT: return "NIXL_ERR_REMOTE_DISCONNECT";
    case NIXL_ERR_CANCELED: return "NIXL_ERR_CANCELED";
    case NIXL_ERR_NO_TELEMETRY: return "NIXL_ERR_NO_TELEMETRY";
    }
    return "NIXL_ERR_?";
}

NIXL_API const char *nixl_mem_str(nixl_mem_t m) {
    static const char *const names[NIXL_MEM_COUNT] = {"DRAM", "VRAM", "BLK", "OBJ", "FILE"};
    return ((unsigned)m < NIXL_MEM_COUNT) ? names[m] : "MEM?";
}

NIXL_API uint64_t nixl_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* not zeroed: for arrays the caller fills whole (the entries of a
   100 k-descriptor list would otherwise be written twice) */
static void *_nixl_alloc_raw(nixl_agent_t *a, size_t size) {
    return a->cfg.alloc_fn ? a->cfg.alloc_fn(a->cfg.alloc_user, size ? size : 1) : malloc(size ? size : 1);
}

static void *_nixl_alloc(nixl_agent_t *a, size_t size) {
    void *p = _nixl_alloc_raw(a, size);
    if (p) memset(p, 0, size);
    return p;
}

static void _nixl_free(nixl_agent_t *a, void *p) {
    if (!p) return;
    if (a->cfg.free_fn) a->cfg.free_fn(a->cfg.alloc_user, p);
    else free(p);
}

/* n elements of size sz, or NULL when n * sz overflows */
static void *_nixl_alloc_array(nixl_agent_t *a, size_t n, size_t sz) {
    if (sz && n > (size_t)-1 / sz) return NULL;
    return _nixl_alloc(a, n * sz);
}

static void *_nixl_alloc_array_raw(nixl_agent_t *a, size_t n, size_t sz) {
    if (sz && n > (size_t)-1 / sz) return NULL;
    return _nixl_alloc_raw(a, n * sz);
}

static char *_nixl_strdup(nixl_agent_t *a, const char *s) {
    size_t n = strlen(s);
    char *d = (char *)_nixl_alloc(a, n + 1);
    if (d) memcpy(d, s, n + 1);
    return d;
}

static void *_nixl_memdup(nixl_agent_t *a, const void *p, size_t len) {
    void *d = _nixl_alloc(a, len);
    if (d && len) memcpy(d, p, len);
    return d;
}

// >>log

#define _NIXL_LOG_ITEM_NAME(name, text) #name,
#define _NIXL_LOG_ITEM_TEXT(name, text) text,
static const char *const _nixl_log_item_names[] = {NIXL_LOG_ITEMS(_NIXL_LOG_ITEM_NAME)};
static const char *const _nixl_log_item_texts[] = {NIXL_LOG_ITEMS(_NIXL_LOG_ITEM_TEXT)};
#undef _NIXL_LOG_ITEM_NAME
#undef _NIXL_LOG_ITEM_TEXT

NIXL_API const char *nixl_log_item_str(nixl_log_item_t item) {
    return (unsigned)item < NIXL_LOGITEM_COUNT ? _nixl_log_item_names[item] : "?";
}

/* A reason string that is a log item's text: functions that explain a
   refusal return _NIXL_WHY(NAME), and whoever logs the reason finds its id
   with _nixl_why_item (by address: the same text, the same pointer). */
#define _NIXL_WHY(name) (_nixl_log_item_texts[NIXL_LOGITEM_##name])
static nixl_log_item_t _nixl_why_item(const char *why, nixl_log_item_t otherwise) {
    unsigned i;
    for (i = 1; why && i < NIXL_LOGITEM_COUNT; i++)
        if (why == _nixl_log_item_texts[i]) return (nixl_log_item_t)i;
    return otherwise;
}

static void _nixl_vlog_item(nixl_agent_t *a, int level, nixl_log_item_t item, const char *fmt, va_list ap) {
    char msg[768];
    static const char *const lv[] = {"ERROR", "WARN", "INFO", "DEBUG"};
    if (level > a->log_level) return;
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (a->cfg.log_item_fn) a->cfg.log_item_fn(a->cfg.log_user, level, item, msg);
    else if (a->cfg.log_fn) a->cfg.log_fn(a->cfg.log_user, level, msg);
    else fprintf(stderr, "nixl[%s] %s: %s\n", a->name ? a->name : "?", lv[level < 0 ? 0 : level > 3 ? 3 : level], msg);
}

/* A message with an id (_nixl_logi) or without (_nixl_log). */
static void _nixl_logi(nixl_agent_t *a, int level, nixl_log_item_t item, const char *fmt, ...) NIXL_PRINTF(4, 5);
static void _nixl_logi(nixl_agent_t *a, int level, nixl_log_item_t item, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    _nixl_vlog_item(a, level, item, fmt, ap);
    va_end(ap);
}

static void _nixl_log(nixl_agent_t *a, int level, const char *fmt, ...) NIXL_PRINTF(3, 4);
static void _nixl_log(nixl_agent_t *a, int level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    _nixl_vlog_item(a, level, NIXL_LOGITEM_NONE, fmt, ap);
    va_end(ap);
}

static int _nixl_level_from_env(void) {
    const char *e = getenv("NIXL_LOG_LEVEL");
    if (!e) return NIXL_LOG_WARN;
    if (!strcmp(e, "debug")) return NIXL_LOG_DEBUG;
    if (!strcmp(e, "info")) return NIXL_LOG_INFO;
    if (!strcmp(e, "error")) return NIXL_LOG_ERROR;
    if (!strcmp(e, "none")) return -1;
    return NIXL_LOG_WARN;
}

static size_t _nixl_max_peer_regions(const nixl_agent_t *a) {
    return a->cfg.remote_regions_max ? a->cfg.remote_regions_max : (size_t)262144;
}
static size_t _nixl_max_remotes(const nixl_agent_t *a) { return a->cfg.remotes_max ? a->cfg.remotes_max : 4096; }
static size_t _nixl_max_md_bytes(const nixl_agent_t *a) {
    return a->cfg.remote_md_bytes ? a->cfg.remote_md_bytes : (size_t)1 << 30;
}

/* valid: non-empty, addr + len does not wrap; addresses of DRAM and VRAM
   are never 0 (for FILE, BLK and OBJ addr is an offset: 0 is the first byte) */
static nixl_status_t _nixl_check_desc(nixl_agent_t *a, const char *what, nixl_mem_t mem, const nixl_desc_t *d,
                                      size_t i) {
    if (d->len == 0) {
        _nixl_log(a, NIXL_LOG_ERROR, "%s: descriptor %zu has zero length", what, i);
        return NIXL_ERR_INVALID_PARAM;
    }
    if (d->addr == 0 && (mem == NIXL_DRAM || mem == NIXL_VRAM)) {
        _nixl_log(a, NIXL_LOG_ERROR, "%s: descriptor %zu has a NULL address", what, i);
        return NIXL_ERR_INVALID_PARAM;
    }
    if (d->addr + d->len < d->addr) {
        _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_DESC_WRAPS, "%s: descriptor %zu wraps the address space (0x%llx + %zu)", what, i,
                  (unsigned long long)d->addr, d->len);
        return NIXL_ERR_INVALID_PARAM;
    }
    return NIXL_SUCCESS;
}

static nixl_status_t _nixl_check_dlist(nixl_agent_t *a, const char *what, const nixl_dlist_t *l) {
    if (!l || (l->count && !l->descs)) {
        _nixl_log(a, NIXL_LOG_ERROR, "%s: NULL descriptor list", what);
        return NIXL_ERR_INVALID_PARAM;
    }
    if ((unsigned)l->mem >= NIXL_MEM_COUNT) {
        _nixl_log(a, NIXL_LOG_ERROR, "%s: unknown memory type %d", what, (int)l->mem);
        return NIXL_ERR_INVALID_PARAM;
    }
    return NIXL_SUCCESS;
}

static void _nixl_lock(nixl_agent_t *a) { pthread_mutex_lock(&a->lock); }
static void _nixl_process_downs(nixl_agent_t *a);
/* Every public call leaves through here: peers that backends reported dead
   during the call are invalidated now, outside any vtable call. */
static void _nixl_unlock(nixl_agent_t *a) {
    if (a->downs && !a->in_downs) _nixl_process_downs(a);
    pthread_mutex_unlock(&a->lock);
}

// >>auth

/* HMAC-SHA256 and SHA-256 come from OpenSSL's libcrypto, opened with dlopen
   the first time an agent has a secret. Why dlopen and not -lcrypto: an
   application that never sets a secret needs neither OpenSSL's headers nor
   its library (the reason the CUDA driver is opened, not linked), and one
   that sets a secret where libcrypto is missing gets a clear error from
   nixl_agent_create instead of a failed link. Only two one-shot functions
   are used, HMAC() and SHA256(), whose ABI is the same in OpenSSL 1.1 and 3. */
#ifndef NIXL_CRYPTO_LIB
#define NIXL_CRYPTO_LIB "libcrypto.so.3"
#endif
#define NIXL_MAC_LEN 32

typedef struct {
    const void *(*evp_sha256)(void);
    unsigned char *(*hmac)(const void *md, const void *key, int key_len, const unsigned char *d, size_t n,
                           unsigned char *out, unsigned *out_len);
    unsigned char *(*sha256)(const unsigned char *d, size_t n, unsigned char *out);
    int ok;
    char why[256];
} _nixl_crypto_t;

static _nixl_crypto_t _nixl_crypto;
static pthread_once_t _nixl_crypto_once = PTHREAD_ONCE_INIT;

static void _nixl_crypto_load(void) {
    const char *env = getenv("NIXL_CRYPTO_LIB");
    const char *name = env && *env ? env : NIXL_CRYPTO_LIB;
    void *lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (!lib && !(env && *env)) lib = dlopen("libcrypto.so", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(_nixl_crypto.why, sizeof _nixl_crypto.why, "dlopen(%s): %s", name, dlerror());
        return;
    }
    *(void **)&_nixl_crypto.evp_sha256 = dlsym(lib, "EVP_sha256");
    *(void **)&_nixl_crypto.hmac = dlsym(lib, "HMAC");
    *(void **)&_nixl_crypto.sha256 = dlsym(lib, "SHA256");
    if (!_nixl_crypto.evp_sha256 || !_nixl_crypto.hmac || !_nixl_crypto.sha256) {
        snprintf(_nixl_crypto.why, sizeof _nixl_crypto.why, "%s lacks EVP_sha256, HMAC or SHA256", name);
        return; /* the library stays open: harmless, and dlclose races other threads */
    }
    _nixl_crypto.ok = 1;
}

/* NULL when libcrypto is usable, else why not */
static const char *_nixl_crypto_ready(void) {
    pthread_once(&_nixl_crypto_once, _nixl_crypto_load);
    return _nixl_crypto.ok ? NULL : _nixl_crypto.why;
}

/* out = HMAC-SHA256(the agent's secret, msg); -1 without a secret */
static int _nixl_auth_mac(const nixl_agent_t *a, const void *msg, size_t len, unsigned char out[NIXL_MAC_LEN]) {
    unsigned n = 0;
    if (!a->token || _nixl_crypto_ready()) return -1;
    return _nixl_crypto.hmac(_nixl_crypto.evp_sha256(), a->token, (int)strlen(a->token), (const unsigned char *)msg,
                             len, out, &n) && n == NIXL_MAC_LEN ? 0 : -1;
}

/* equal time: how many bytes match does not show in how long it takes */
static int _nixl_bytes_same(const unsigned char *x, const unsigned char *y, size_t n) {
    unsigned diff = 0;
    size_t i;
    for (i = 0; i < n; i++) diff |= (unsigned)(x[i] ^ y[i]);
    return diff == 0;
}

static int _nixl_auth_check(const nixl_agent_t *a, const void *msg, size_t len, const unsigned char mac[NIXL_MAC_LEN]) {
    unsigned char want[NIXL_MAC_LEN];
    return _nixl_auth_mac(a, msg, len, want) == 0 && _nixl_bytes_same(want, mac, NIXL_MAC_LEN);
}

static void _nixl_sha256(const void *p, size_t len, unsigned char out[32]) {
    _nixl_crypto.sha256((const unsigned char *)(p ? p : ""), len, out);
}

/* Fresh nonces: getrandom, never the clock. 0 on success. */
static int _nixl_random(void *p, size_t n) {
    unsigned char *b = (unsigned char *)p;
    while (n) {
        ssize_t k = getrandom(b, n, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        b += k;
        n -= (size_t)k;
    }
    return 0;
}

NIXL_API int nixl_backend_auth_on(const nixl_backend_t *be) { return be->agent->token != NULL; }

NIXL_API nixl_status_t nixl_backend_auth_mac(nixl_backend_t *be, const void *msg, size_t len,
                                             unsigned char mac[NIXL_MAC_LEN]) {
    return _nixl_auth_mac(be->agent, msg, len, mac) == 0 ? NIXL_SUCCESS : NIXL_ERR_NOT_SUPPORTED;
}

NIXL_API int nixl_backend_auth_check(nixl_backend_t *be, const void *msg, size_t len,
                                     const unsigned char mac[NIXL_MAC_LEN]) {
    return _nixl_auth_check(be->agent, msg, len, mac);
}

NIXL_API int nixl_random_bytes(void *buf, size_t len) { return _nixl_random(buf, len); }

// >>cuda

/* The CUDA driver, for backends that take VRAM: opened with dlopen (no
   build dependency); our own declarations of the few functions used. A
   build without such a backend uses none of it. */
#if defined(__GNUC__) || defined(__clang__)
#define _NIXL_MAYBE_UNUSED __attribute__((unused)) /* used by some backends only */
#else
#define _NIXL_MAYBE_UNUSED
#endif
#define _NIXL_CUDA_UNUSED _NIXL_MAYBE_UNUSED

#ifndef NIXL_CUDA_LIB
#define NIXL_CUDA_LIB "libcuda.so.1"
#endif

/* The CUDA driver API, as far as it is used: our own declarations, so no
   CUDA headers are needed to build. With NIXL_CUDA_HEADERS defined, <cuda.h>
   supplies the types and every pointer below is checked against the real
   declaration (tests/check-headers does that when CUDA is installed). The
   symbol names are the ones <cuda.h> maps the API names to (the _v2 ABI). */
#ifdef NIXL_CUDA_HEADERS
#include <cuda.h>
typedef CUresult _nixl_CUresult;
typedef CUdeviceptr _nixl_CUdeviceptr;
typedef CUdevice _nixl_CUdevice;
typedef CUcontext _nixl_CUcontext;
typedef CUstream _nixl_CUstream;
typedef CUevent _nixl_CUevent;
typedef CUpointer_attribute _nixl_CUpointer_attribute;
typedef CUmemRangeHandleType _nixl_CUmemRangeHandleType;
#else
typedef int _nixl_CUresult;
typedef unsigned long long _nixl_CUdeviceptr;
typedef int _nixl_CUdevice;
typedef struct CUctx_st *_nixl_CUcontext;
typedef struct CUstream_st *_nixl_CUstream;
typedef struct CUevent_st *_nixl_CUevent;
typedef int _nixl_CUpointer_attribute;     /* enums: int-sized in the C ABI */
typedef int _nixl_CUmemRangeHandleType;
#endif

/* X(field, symbol, return, parameters) */
#define _NIXL_CUDA_FUNCS(X)                                                                                 \
    X(cuInit, "cuInit", _nixl_CUresult, (unsigned int))                                                   \
    X(cuDeviceGet, "cuDeviceGet", _nixl_CUresult, (_nixl_CUdevice *, int))                                 \
    X(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", _nixl_CUresult,                                \
      (_nixl_CUcontext *, _nixl_CUdevice))                                                                  \
    X(cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2", _nixl_CUresult, (_nixl_CUdevice))         \
    X(cuCtxPushCurrent, "cuCtxPushCurrent_v2", _nixl_CUresult, (_nixl_CUcontext))                         \
    X(cuCtxPopCurrent, "cuCtxPopCurrent_v2", _nixl_CUresult, (_nixl_CUcontext *))                          \
    X(cuPointerGetAttribute, "cuPointerGetAttribute", _nixl_CUresult, (void *, _nixl_CUpointer_attribute, _nixl_CUdeviceptr))\
    X(cuPointerSetAttribute, "cuPointerSetAttribute", _nixl_CUresult,                                      \
      (const void *, _nixl_CUpointer_attribute, _nixl_CUdeviceptr))                                                               \
    X(cuMemGetAddressRange, "cuMemGetAddressRange_v2", _nixl_CUresult,                                     \
      (_nixl_CUdeviceptr *, size_t *, _nixl_CUdeviceptr))                                                   \
    X(cuMemGetHandleForAddressRange, "cuMemGetHandleForAddressRange", _nixl_CUresult,                      \
      (void *, _nixl_CUdeviceptr, size_t, _nixl_CUmemRangeHandleType, unsigned long long))                                         \
    X(cuMemHostRegister, "cuMemHostRegister_v2", _nixl_CUresult, (void *, size_t, unsigned int))           \
    X(cuMemHostUnregister, "cuMemHostUnregister", _nixl_CUresult, (void *))                                \
    X(cuStreamCreate, "cuStreamCreate", _nixl_CUresult, (_nixl_CUstream *, unsigned int))                  \
    X(cuStreamDestroy, "cuStreamDestroy_v2", _nixl_CUresult, (_nixl_CUstream))                             \
    X(cuStreamSynchronize, "cuStreamSynchronize", _nixl_CUresult, (_nixl_CUstream))                        \
    X(cuEventCreate, "cuEventCreate", _nixl_CUresult, (_nixl_CUevent *, unsigned int))                     \
    X(cuEventDestroy, "cuEventDestroy_v2", _nixl_CUresult, (_nixl_CUevent))                                \
    X(cuEventRecord, "cuEventRecord", _nixl_CUresult, (_nixl_CUevent, _nixl_CUstream))                     \
    X(cuEventQuery, "cuEventQuery", _nixl_CUresult, (_nixl_CUevent))                                       \
    X(cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2", _nixl_CUresult,                                           \
      (void *, _nixl_CUdeviceptr, size_t, _nixl_CUstream))                                                  \
    X(cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2", _nixl_CUresult,                                           \
      (_nixl_CUdeviceptr, const void *, size_t, _nixl_CUstream))

#define _NIXL_CUDA_TYPEDEF(f, sym, ret, args) typedef ret(*_nixl_##f##_t) args;
_NIXL_CUDA_FUNCS(_NIXL_CUDA_TYPEDEF)
#undef _NIXL_CUDA_TYPEDEF

/* values from the CUDA driver API */
#define _NIXL_CUDA_SUCCESS 0
#define _NIXL_CUDA_ERROR_NOT_READY 600
#define _NIXL_CU_POINTER_ATTRIBUTE_MEMORY_TYPE ((_nixl_CUpointer_attribute)2)
#define _NIXL_CU_POINTER_ATTRIBUTE_SYNC_MEMOPS ((_nixl_CUpointer_attribute)6)
#define _NIXL_CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL ((_nixl_CUpointer_attribute)9)
#define _NIXL_CU_MEMORYTYPE_DEVICE 2
#define _NIXL_CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD ((_nixl_CUmemRangeHandleType)1)
#define _NIXL_CU_MEMHOSTREGISTER_PORTABLE 1
#define _NIXL_CU_STREAM_NON_BLOCKING 1
#define _NIXL_CU_EVENT_DISABLE_TIMING 2

#ifdef NIXL_CUDA_HEADERS
/* Our declarations against <cuda.h>: a value that differs fails to compile
   (negative array size); so does a function whose type differs (an
   initialiser of the wrong pointer type is an error under -Werror and in
   C++). */
#define _NIXL_CUDA_SAME(name, a, b) typedef char _nixl_cuda_check_##name[(a) == (b) ? 1 : -1];
_NIXL_CUDA_SAME(success, _NIXL_CUDA_SUCCESS, CUDA_SUCCESS)
_NIXL_CUDA_SAME(not_ready, _NIXL_CUDA_ERROR_NOT_READY, CUDA_ERROR_NOT_READY)
_NIXL_CUDA_SAME(memory_type, _NIXL_CU_POINTER_ATTRIBUTE_MEMORY_TYPE, CU_POINTER_ATTRIBUTE_MEMORY_TYPE)
_NIXL_CUDA_SAME(sync_memops, _NIXL_CU_POINTER_ATTRIBUTE_SYNC_MEMOPS, CU_POINTER_ATTRIBUTE_SYNC_MEMOPS)
_NIXL_CUDA_SAME(ordinal, _NIXL_CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL)
_NIXL_CUDA_SAME(device, _NIXL_CU_MEMORYTYPE_DEVICE, CU_MEMORYTYPE_DEVICE)
_NIXL_CUDA_SAME(dma_buf, _NIXL_CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD)
_NIXL_CUDA_SAME(portable, _NIXL_CU_MEMHOSTREGISTER_PORTABLE, CU_MEMHOSTREGISTER_PORTABLE)
_NIXL_CUDA_SAME(non_blocking, _NIXL_CU_STREAM_NON_BLOCKING, CU_STREAM_NON_BLOCKING)
_NIXL_CUDA_SAME(no_timing, _NIXL_CU_EVENT_DISABLE_TIMING, CU_EVENT_DISABLE_TIMING)
#undef _NIXL_CUDA_SAME
/* (inside sizeof: nothing is referenced, nothing needs libcuda to link) */
#define _NIXL_CUDA_CHECK_FN(f, sym, ret, args) typedef char _nixl_cuda_check_##f[sizeof((_nixl_##f##_t)0 == f)];
_NIXL_CUDA_FUNCS(_NIXL_CUDA_CHECK_FN)
#undef _NIXL_CUDA_CHECK_FN
/* The symbol each API name is #defined to in <cuda.h> (cuMemcpyDtoHAsync ->
   cuMemcpyDtoHAsync_v2) must be the one we dlsym: 0 if all agree, else the
   number that differ (run by tests/check-headers). */
#define _NIXL_CUDA_STR2(x) #x
#define _NIXL_CUDA_STR(x) _NIXL_CUDA_STR2(x)
static int _nixl_cuda_check_symbols(void) _NIXL_CUDA_UNUSED;
static int _nixl_cuda_check_symbols(void) {
    int bad = 0;
#define _NIXL_CUDA_CHECK_SYM(f, sym, ret, args)                                                   \
    if (strcmp(sym, _NIXL_CUDA_STR(f)) != 0) {                                                   \
        fprintf(stderr, "CUDA symbol of %s: we use %s, <cuda.h> %s\n", #f, sym, _NIXL_CUDA_STR(f)); \
        bad++;                                                                                    \
    }
    _NIXL_CUDA_FUNCS(_NIXL_CUDA_CHECK_SYM)
#undef _NIXL_CUDA_CHECK_SYM
    return bad;
}
#endif

#ifndef NIXL_CUDA_MAX_GPUS
#define NIXL_CUDA_MAX_GPUS 64
#endif

/* The driver, opened on first use; per GPU its primary context and a
   non-blocking stream of ours for the staging copies. */
typedef struct _nixl_cuda {
    void *lib;
#define _NIXL_CUDA_FIELD(f, sym, ret, args) _nixl_##f##_t f;
    _NIXL_CUDA_FUNCS(_NIXL_CUDA_FIELD)
#undef _NIXL_CUDA_FIELD
    _nixl_CUcontext ctx[NIXL_CUDA_MAX_GPUS];
    _nixl_CUstream stream[NIXL_CUDA_MAX_GPUS];
    int tried, ok;  /* _nixl_cuda_load: opened once, the answer kept */
    char why[200];  /* why not */
} _nixl_cuda_t;

/* Every driver function: its symbol and where its pointer goes. */
typedef struct _nixl_cuda_sym {
    const char *name;
    size_t off; /* in _nixl_cuda_t */
} _nixl_cuda_sym;
#define _NIXL_CUDA_SYM_ENTRY(f, name, ret, args) {name, offsetof(_nixl_cuda_t, f)},
static const _nixl_cuda_sym _nixl_cuda_syms[] = {_NIXL_CUDA_FUNCS(_NIXL_CUDA_SYM_ENTRY)};
#undef _NIXL_CUDA_SYM_ENTRY

/* dma-buf export is newer than the rest (CUDA 11.7+ drivers): optional */
static _NIXL_CUDA_UNUSED int _nixl_cuda_sym_optional(const char *name) {
    return strcmp(name, "cuMemGetHandleForAddressRange") == 0;
}

/* Resolves every driver function into cu; 0, or -1 with *why filled. */
static _NIXL_CUDA_UNUSED int _nixl_cuda_resolve(_nixl_cuda_t *cu, const char *lib, char *why, size_t cap) {
    size_t i;
    for (i = 0; i < sizeof _nixl_cuda_syms / sizeof _nixl_cuda_syms[0]; i++) {
        void *sym = dlsym(cu->lib, _nixl_cuda_syms[i].name);
        /* dlsym returns void*: copied into the pointer (ISO C has no cast) */
        memcpy((char *)cu + _nixl_cuda_syms[i].off, &sym, sizeof sym);
        if (!sym && !_nixl_cuda_sym_optional(_nixl_cuda_syms[i].name)) {
            snprintf(why, cap, "%s: no %s (a CUDA driver older than 11.7?)", lib, _nixl_cuda_syms[i].name);
            return -1;
        }
    }
    return 0;
}

/* Opens the driver and resolves every function; 0, or -1 with *why filled. */
static _NIXL_CUDA_UNUSED int _nixl_cuda_open(_nixl_cuda_t *cu, const char *lib, char *why, size_t cap) {
    memset(cu, 0, sizeof *cu);
    cu->lib = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!cu->lib) {
        snprintf(why, cap, "dlopen(%s): %s", lib, dlerror());
        return -1;
    }
    if (_nixl_cuda_resolve(cu, lib, why, cap) != 0) {
        dlclose(cu->lib);
        memset(cu, 0, sizeof *cu);
        return -1;
    }
    if (cu->cuInit(0) != _NIXL_CUDA_SUCCESS) {
        snprintf(why, cap, "cuInit failed (no GPU, or the driver is not loaded)");
        dlclose(cu->lib);
        memset(cu, 0, sizeof *cu);
        return -1;
    }
    return 0;
}

/* Makes GPU g's primary context current on this thread for one operation:
   pushed on entry, popped on leave, so the caller's own current context
   (an application's cudaSetDevice, its own cuCtxCreate) is left as it was.
   Our stream of the GPU is made on first use. */
static _NIXL_CUDA_UNUSED int _nixl_cuda_enter(_nixl_cuda_t *cu, int g) {
    if (g < 0 || g >= NIXL_CUDA_MAX_GPUS) return -1;
    if (!cu->ctx[g]) {
        _nixl_CUdevice dev;
        if (cu->cuDeviceGet(&dev, g) != _NIXL_CUDA_SUCCESS || cu->cuDevicePrimaryCtxRetain(&cu->ctx[g], dev) != 0) {
            cu->ctx[g] = NULL;
            return -1;
        }
    }
    if (cu->cuCtxPushCurrent(cu->ctx[g]) != _NIXL_CUDA_SUCCESS) return -1;
    if (!cu->stream[g] && cu->cuStreamCreate(&cu->stream[g], _NIXL_CU_STREAM_NON_BLOCKING) != _NIXL_CUDA_SUCCESS) {
        _nixl_CUcontext popped;
        cu->stream[g] = NULL;
        cu->cuCtxPopCurrent(&popped);
        return -1;
    }
    return 0;
}

/* returns rc, for `return _nixl_cuda_leave(cu, rc);` */
static _NIXL_CUDA_UNUSED int _nixl_cuda_leave(_nixl_cuda_t *cu, int rc) {
    _nixl_CUcontext popped;
    cu->cuCtxPopCurrent(&popped);
    return rc;
}

static _NIXL_CUDA_UNUSED void _nixl_cuda_close(_nixl_cuda_t *cu) {
    int g;
    if (!cu->lib) return;
    for (g = 0; g < NIXL_CUDA_MAX_GPUS; g++) {
        if (cu->stream[g] && cu->cuCtxPushCurrent(cu->ctx[g]) == _NIXL_CUDA_SUCCESS) {
            cu->cuStreamDestroy(cu->stream[g]);
            _nixl_cuda_leave(cu, 0);
        }
        if (cu->ctx[g]) cu->cuDevicePrimaryCtxRelease((_nixl_CUdevice)g);
    }
    dlclose(cu->lib);
    memset(cu, 0, sizeof *cu);
}

/* Is [addr, addr+len) device memory? Its ordinal and allocation; 0, or -1
   (a host pointer, or unknown to CUDA). Sets SYNC_MEMOPS on it. ctx is a
   _nixl_cuda_t (the signature of nixl_verbs_copy_ops_t's query). */
static _NIXL_CUDA_UNUSED int _nixl_cuda_query(void *ctx, uintptr_t addr, size_t len, int *dev, uintptr_t *base, size_t *size) {
    _nixl_cuda_t *cu = (_nixl_cuda_t *)ctx;
    unsigned int memtype = 0, one = 1;
    int ordinal = -1, rc;
    _nixl_CUdeviceptr b = 0;
    (void)len;
    if (cu->cuPointerGetAttribute(&memtype, _NIXL_CU_POINTER_ATTRIBUTE_MEMORY_TYPE, (_nixl_CUdeviceptr)addr) != 0 ||
        memtype != _NIXL_CU_MEMORYTYPE_DEVICE ||
        cu->cuPointerGetAttribute(&ordinal, _NIXL_CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, (_nixl_CUdeviceptr)addr) != 0 ||
        _nixl_cuda_enter(cu, ordinal) != 0)
        return -1;
    rc = cu->cuMemGetAddressRange(&b, size, (_nixl_CUdeviceptr)addr) == _NIXL_CUDA_SUCCESS ? 0 : -1;
    /* RDMA may touch it behind CUDA's back: synchronous memops keep cuMemcpy
       from overtaking (or being overtaken by) the NIC */
    if (rc == 0) cu->cuPointerSetAttribute(&one, _NIXL_CU_POINTER_ATTRIBUTE_SYNC_MEMOPS, b);
    *dev = ordinal;
    *base = (uintptr_t)b;
    return _nixl_cuda_leave(cu, rc);
}

/* Opens cu on first use (a backend's first VRAM registration); later calls
   answer from memory. 0, or -1 with a log line, every time: each refused
   registration says why. */
static _NIXL_CUDA_UNUSED int _nixl_cuda_load(_nixl_cuda_t *cu, nixl_backend_t *be, const char *who) {
    if (!cu->tried) {
        char why[sizeof cu->why];
        int ok = _nixl_cuda_open(cu, NIXL_CUDA_LIB, why, sizeof why) == 0;
        cu->tried = 1;
        cu->ok = ok;
        memcpy(cu->why, why, sizeof why);
    }
    if (!cu->ok) nixl_backend_log_item(be, NIXL_LOG_ERROR, NIXL_LOGITEM_CUDA_NO_DRIVER, "%s: VRAM needs the CUDA driver: %s", who, cu->why);
    return cu->ok ? 0 : -1;
}

/* The CUDA driver as a copy engine (nixl_copy_ops_t): what the verbs and
   file backends stage VRAM with unless the application installs another. */

static _NIXL_CUDA_UNUSED int _nixl_cuda_pin(void *ctx, int dev, void *host, size_t len) {
    _nixl_cuda_t *cu = (_nixl_cuda_t *)ctx;
    if (_nixl_cuda_enter(cu, dev) != 0) return -1;
    return _nixl_cuda_leave(
        cu, cu->cuMemHostRegister(host, len, _NIXL_CU_MEMHOSTREGISTER_PORTABLE) == _NIXL_CUDA_SUCCESS ? 0 : -1);
}

static _NIXL_CUDA_UNUSED void _nixl_cuda_unpin(void *ctx, int dev, void *host) {
    _nixl_cuda_t *cu = (_nixl_cuda_t *)ctx;
    if (_nixl_cuda_enter(cu, dev) != 0) return;
    cu->cuMemHostUnregister(host);
    _nixl_cuda_leave(cu, 0);
}

static _NIXL_CUDA_UNUSED int _nixl_cuda_event_create(void *ctx, int dev, void **ev) {
    _nixl_cuda_t *cu = (_nixl_cuda_t *)ctx;
    _nixl_CUevent e = NULL;
    if (_nixl_cuda_enter(cu, dev) != 0) return -1;
    if (cu->cuEventCreate(&e, _NIXL_CU_EVENT_DISABLE_TIMING) != _NIXL_CUDA_SUCCESS) return _nixl_cuda_leave(cu, -1);
    *ev = (void *)e;
    return _nixl_cuda_leave(cu, 0);
}

static _NIXL_CUDA_UNUSED void _nixl_cuda_event_destroy(void *ctx, void *ev) {
    ((_nixl_cuda_t *)ctx)->cuEventDestroy((_nixl_CUevent)ev);
}

static _NIXL_CUDA_UNUSED int _nixl_cuda_copy(void *ctx, int dev, int to_device, void *host, uintptr_t device, size_t len,
                                 void *ev) {
    _nixl_cuda_t *cu = (_nixl_cuda_t *)ctx;
    _nixl_CUresult rc;
    if (_nixl_cuda_enter(cu, dev) != 0) return -1;
    rc = to_device ? cu->cuMemcpyHtoDAsync((_nixl_CUdeviceptr)device, host, len, cu->stream[dev])
                   : cu->cuMemcpyDtoHAsync(host, (_nixl_CUdeviceptr)device, len, cu->stream[dev]);
    if (rc != _NIXL_CUDA_SUCCESS) return _nixl_cuda_leave(cu, -1);
    if (cu->cuEventRecord((_nixl_CUevent)ev, cu->stream[dev]) != _NIXL_CUDA_SUCCESS) {
        /* the copy is queued but nothing would tell its end: wait for it
           here, so the caller may reuse the buffer when we fail */
        cu->cuStreamSynchronize(cu->stream[dev]);
        return _nixl_cuda_leave(cu, -1);
    }
    return _nixl_cuda_leave(cu, 0);
}

static _NIXL_CUDA_UNUSED int _nixl_cuda_event_done(void *ctx, void *ev) {
    _nixl_CUresult rc = ((_nixl_cuda_t *)ctx)->cuEventQuery((_nixl_CUevent)ev);
    if (rc == _NIXL_CUDA_SUCCESS) return 1;
    return rc == _NIXL_CUDA_ERROR_NOT_READY ? 0 : -1;
}

static _NIXL_CUDA_UNUSED nixl_copy_ops_t _nixl_cuda_copy_ops(_nixl_cuda_t *cu) {
    nixl_copy_ops_t o;
    o.query = _nixl_cuda_query;
    o.pin = _nixl_cuda_pin;
    o.unpin = _nixl_cuda_unpin;
    o.event_create = _nixl_cuda_event_create;
    o.event_destroy = _nixl_cuda_event_destroy;
    o.copy = _nixl_cuda_copy;
    o.event_done = _nixl_cuda_event_done;
    o.ctx = cu;
    return o;
}

/* A backend's copy-engine setter: ops must have every function it calls
   (0 with a log line otherwise). */
static _NIXL_CUDA_UNUSED int _nixl_copy_ops_complete(nixl_backend_t *be, const char *who, const nixl_copy_ops_t *ops) {
    if (!ops || (ops->query && ops->event_create && ops->event_destroy && ops->copy && ops->event_done)) return 1;
    nixl_backend_log_item(be, NIXL_LOG_ERROR, NIXL_LOGITEM_COPY_OPS_INCOMPLETE,
                          "%s: query, event_create, event_destroy, copy and event_done are required", who);
    return 0;
}

/* Installs ops in *dst (NULL: the CUDA driver's if it is loaded, else none)
   and says in *custom whether the application chose it. */
static _NIXL_CUDA_UNUSED void _nixl_copy_ops_install(nixl_copy_ops_t *dst, int *custom, const nixl_copy_ops_t *ops,
                                                     _nixl_cuda_t *cu) {
    *custom = ops != NULL;
    if (ops) *dst = *ops;
    else if (cu->ok) *dst = _nixl_cuda_copy_ops(cu);
    else memset(dst, 0, sizeof *dst);
}

typedef int (*_nixl_cuda_query_fn)(void *ctx, uintptr_t addr, size_t len, int *dev, uintptr_t *base, size_t *size);

/* A VRAM descriptor must be device memory (never a host pointer taken for
   one), of the GPU its dev_id names, inside one allocation. SUCCESS with the
   GPU and the allocation, or INVALID_PARAM with a log line. */
static _NIXL_CUDA_UNUSED nixl_status_t _nixl_vram_check(nixl_backend_t *be, const char *who, _nixl_cuda_query_fn query,
                                                        void *ctx, const nixl_desc_t *r, int *gpu, uintptr_t *base,
                                                        size_t *size) {
    if (query(ctx, r->addr, r->len, gpu, base, size) != 0) {
        nixl_backend_log_item(be, NIXL_LOG_ERROR, NIXL_LOGITEM_VRAM_NOT_DEVICE, "%s: register_mem: VRAM region %p+%zu is not device memory (a host "
                         "pointer passed as VRAM?)", who, (void *)r->addr, r->len);
        return NIXL_ERR_INVALID_PARAM;
    }
    if ((uint64_t)*gpu != r->dev_id) {
        nixl_backend_log_item(be, NIXL_LOG_ERROR, NIXL_LOGITEM_VRAM_WRONG_GPU, "%s: register_mem: VRAM region %p+%zu is on GPU %d, not on dev_id %llu",
                         who, (void *)r->addr, r->len, *gpu, (unsigned long long)r->dev_id);
        return NIXL_ERR_INVALID_PARAM;
    }
    if (r->addr < *base || r->addr + r->len > *base + *size) {
        nixl_backend_log_item(be, NIXL_LOG_ERROR, NIXL_LOGITEM_VRAM_PAST_ALLOCATION, "%s: register_mem: VRAM region %p+%zu runs past its allocation %p+%zu",
                         who, (void *)r->addr, r->len, (void *)*base, *size);
        return NIXL_ERR_INVALID_PARAM;
    }
    return NIXL_SUCCESS;
}

// >>table

static int _nixl_span_cmp(const _nixl_span *x, const _nixl_span *y) {
    if (x->mem != y->mem) return x->mem < y->mem ? -1 : 1;
    if (x->addr != y->addr) return x->addr < y->addr ? -1 : 1;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    if (x->dev_id != y->dev_id) return x->dev_id < y->dev_id ? -1 : 1;
    return 0;
}

static int _nixl_region_qcmp(const void *x, const void *y) {
    return _nixl_span_cmp(&(*(_nixl_region *const *)x)->s, &(*(_nixl_region *const *)y)->s);
}

/* after any change of v: maxend, start and the memory-type ranges */
static void _nixl_table_rebuild_index(_nixl_table *t) {
    size_t i;
    int m;
    for (m = 0; m < NIXL_MEM_COUNT; m++) t->lo[m] = t->hi[m] = 0;
    for (i = 0; i < t->n; i++) {
        const _nixl_span *s = &t->v[i]->s;
        uintptr_t end = s->addr + s->len;
        int first = i == 0 || t->v[i - 1]->s.mem != s->mem;
        if (!first && t->maxend[i - 1] > end) end = t->maxend[i - 1];
        t->maxend[i] = end;
        t->start[i] = s->addr;
        if ((unsigned)s->mem >= NIXL_MEM_COUNT) continue;
        if (first) t->lo[s->mem] = i;
        t->hi[s->mem] = i + 1;
    }
}

static int _nixl_table_reserve(nixl_agent_t *a, _nixl_table *t, size_t extra) {
    size_t cap = t->cap ? t->cap : 16;
    _nixl_region **v;
    uintptr_t *m, *st;
    if (t->n + extra <= t->cap) return 1;
    while (cap < t->n + extra) cap *= 2;
    v = (_nixl_region **)_nixl_alloc_array(a, cap, sizeof *v);
    m = (uintptr_t *)_nixl_alloc_array(a, cap, sizeof *m);
    st = (uintptr_t *)_nixl_alloc_array(a, cap, sizeof *st);
    if (!v || !m || !st) {
        _nixl_free(a, v);
        _nixl_free(a, m);
        _nixl_free(a, st);
        return 0;
    }
    if (t->n) {
        memcpy(v, t->v, t->n * sizeof *v);
        memcpy(m, t->maxend, t->n * sizeof *m);
        memcpy(st, t->start, t->n * sizeof *st);
    }
    _nixl_free(a, t->v);
    _nixl_free(a, t->maxend);
    _nixl_free(a, t->start);
    t->v = v;
    t->maxend = m;
    t->start = st;
    t->cap = cap;
    return 1;
}

/* after appending unsorted entries */
static void _nixl_table_sort(_nixl_table *t) {
    if (t->n > 1) qsort(t->v, t->n, sizeof *t->v, _nixl_region_qcmp);
    _nixl_table_rebuild_index(t);
}

/* index of the last entry of memory type mem whose address <= addr;
   t->lo[mem] - 1 if none. A branch-free binary search over t->start (the
   halving compiles to a conditional move: no mispredicted branch per step,
   which is what a search over scattered KV blocks otherwise pays). */
static long _nixl_table_upper(const _nixl_table *t, nixl_mem_t mem, uintptr_t addr) {
    const uintptr_t *base = t->start + t->lo[mem];
    size_t n = t->hi[mem] - t->lo[mem];
    if (n == 0) return (long)t->lo[mem] - 1;
    while (n > 1) { /* the answer stays within [base, base + n) */
        size_t half = n / 2;
        base = base[half] <= addr ? base + half : base;
        n -= half;
    }
    return base[0] <= addr ? (long)(base - t->start) : (long)t->lo[mem] - 1;
}

/* the region that wholly contains [addr, addr+len) on dev_id, or NULL.
   *hint (may be NULL) is the index the previous lookup found: a
   descriptor in the same region as its neighbour (a KV cache's blocks of
   one layer) skips the search when the answer is provably the same. */
static _nixl_region *_nixl_table_find_containing_from(const _nixl_table *t, nixl_mem_t mem, uintptr_t addr,
                                                      size_t len, uint64_t dev_id, long *hint) {
    long i, floor;
    uintptr_t end = addr + len;
    if ((unsigned)mem >= NIXL_MEM_COUNT) return NULL;
    floor = (long)t->lo[mem];
    i = -1;
    if (hint && *hint >= floor && (size_t)*hint < t->hi[mem] && t->start[*hint] <= addr &&
        ((size_t)*hint + 1 == t->hi[mem] || t->start[*hint + 1] > addr))
        i = *hint; /* exactly where the search would land */
    else
        i = _nixl_table_upper(t, mem, addr);
    for (; i >= floor; i--) {
        const _nixl_region *r = t->v[i];
        if (t->maxend[i] < end) break;
        if (r->s.addr <= addr && r->s.addr + r->s.len >= end && r->s.dev_id == dev_id) {
            if (hint) *hint = i;
            return t->v[i];
        }
    }
    return NULL;
}

static _nixl_region *_nixl_table_find_containing(const _nixl_table *t, nixl_mem_t mem, uintptr_t addr,
                                                 size_t len, uint64_t dev_id) {
    return _nixl_table_find_containing_from(t, mem, addr, len, dev_id, NULL);
}

static long _nixl_table_find_exact(const _nixl_table *t, const _nixl_span *s) {
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = _nixl_span_cmp(&t->v[mid]->s, s);
        if (c == 0) return (long)mid;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

static void _nixl_table_remove_at(_nixl_table *t, size_t i) {
    memmove(t->v + i, t->v + i + 1, (t->n - i - 1) * sizeof *t->v);
    t->n--;
    _nixl_table_rebuild_index(t);
}

static void _nixl_region_unref(nixl_agent_t *a, _nixl_region *r) {
    int i;
    if (--r->refs > 0) return;
    for (i = 0; i < NIXL_MAX_BACKENDS; i++) _nixl_free(a, r->key[i]);
    _nixl_free(a, r);
}

static void _nixl_table_free(nixl_agent_t *a, _nixl_table *t) {
    _nixl_free(a, t->v);
    _nixl_free(a, t->maxend);
    _nixl_free(a, t->start);
    memset(t, 0, sizeof *t);
}

static void _nixl_nq_drained(nixl_agent_t *a);

// >>agent

/* before an agent exists: the config's logger, or stderr */
static void _nixl_cfg_log(const nixl_agent_config_t *cfg, nixl_log_item_t item, const char *fmt, ...)
    NIXL_PRINTF(3, 4);
static void _nixl_cfg_log(const nixl_agent_config_t *cfg, nixl_log_item_t item, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (cfg && cfg->log_item_fn) cfg->log_item_fn(cfg->log_user, NIXL_LOG_ERROR, item, msg);
    else if (cfg && cfg->log_fn) cfg->log_fn(cfg->log_user, NIXL_LOG_ERROR, msg);
    else if (_nixl_level_from_env() >= NIXL_LOG_ERROR) fprintf(stderr, "nixl: %s\n", msg);
}

static void *_nixl_progress_thread_main(void *arg);
static nixl_status_t _nixl_progress_locked(nixl_agent_t *a);
static nixl_status_t _nixl_listener_start(nixl_agent_t *a, const char *addr);
static nixl_status_t _nixl_etcd_start(nixl_agent_t *a, const char *endpoints, const char *ns);
/* etcd (its own section, after the side channel's; stubs without NIXL_WITH_ETCD) */
static void _nixl_etcd_key(const nixl_agent_t *a, const char *agent, const char *label, char *out, size_t cap);
static nixl_status_t _nixl_etcd_put(nixl_agent_t *a, const char *label, const void *blob, size_t len);
static nixl_status_t _nixl_etcd_delete_agent(nixl_agent_t *a);
static nixl_status_t _nixl_etcd_get_or_wait(nixl_agent_t *a, const char *key, unsigned char **blob, size_t *len);

/* The etcd endpoints to use: the config's, else $NIXL_ETCD_ENDPOINTS. The
   variable is for deployments; in a build without etcd it is ignored with
   one warning per process (it must not break the default build), whereas
   endpoints the application set itself are refused there (NOT_SUPPORTED). */
static const char *_nixl_etcd_endpoints(nixl_agent_t *a, const nixl_agent_config_t *cfg) {
    static int warned;
    const char *env;
    if (cfg->etcd_endpoints) return cfg->etcd_endpoints;
    env = getenv("NIXL_ETCD_ENDPOINTS");
    if (!env || !*env) return NULL;
#ifndef NIXL_WITH_ETCD
    if (!__atomic_exchange_n(&warned, 1, __ATOMIC_RELAXED))
        _nixl_logi(a, NIXL_LOG_WARN, NIXL_LOGITEM_ETCD_NOT_BUILT, "NIXL_ETCD_ENDPOINTS is set but this build has no etcd support "
                  "(NIXL_WITH_ETCD): ignored, metadata goes over the side channel only");
    return NULL;
#else
    (void)a;
    (void)warned;
    return env;
#endif
}
static void _nixl_side_channel_stop(nixl_agent_t *a);

NIXL_API nixl_status_t nixl_agent_create(const nixl_agent_config_t *cfg, nixl_agent_t **agent) {
    nixl_agent_t *a;
    const char *token, *why, *endpoints;
    size_t nlen;
    if (!agent) return NIXL_ERR_INVALID_PARAM;
    *agent = NULL;
    if (!cfg || !cfg->name) {
        _nixl_cfg_log(cfg, NIXL_LOGITEM_AGENT_NAME_REQUIRED, "agent_create: a name is required");
        return NIXL_ERR_INVALID_PARAM;
    }
    nlen = strlen(cfg->name);
    if (nlen == 0 || nlen > NIXL_MD_MAX_NAME) {
        _nixl_cfg_log(cfg, NIXL_LOGITEM_NONE, "agent_create: name must be 1..%d bytes (got %zu)", NIXL_MD_MAX_NAME, nlen);
        return NIXL_ERR_INVALID_PARAM;
    }
    if (!cfg->alloc_fn != !cfg->free_fn) {
        _nixl_cfg_log(cfg, NIXL_LOGITEM_NONE, "agent_create: alloc_fn and free_fn go together");
        return NIXL_ERR_INVALID_PARAM;
    }
    token = cfg->auth_token ? cfg->auth_token : getenv("NIXL_AUTH_TOKEN");
    if (token && !cfg->auth_token && !*token) token = NULL; /* NIXL_AUTH_TOKEN= means none */
    if (token && (!*token || strlen(token) > NIXL_SC_MAX_TOKEN)) {
        _nixl_cfg_log(cfg, NIXL_LOGITEM_NONE, "agent_create(%s): the auth token must be 1..%d bytes", cfg->name, NIXL_SC_MAX_TOKEN);
        return NIXL_ERR_INVALID_PARAM;
    }
    if (token && (why = _nixl_crypto_ready()) != NULL) {
        _nixl_cfg_log(cfg, NIXL_LOGITEM_NONE, "agent_create(%s): an auth token needs OpenSSL's libcrypto for HMAC-SHA256: %s", cfg->name,
                      why);
        return NIXL_ERR_NOT_SUPPORTED;
    }
    a = (nixl_agent_t *)(cfg->alloc_fn ? cfg->alloc_fn(cfg->alloc_user, sizeof *a) : malloc(sizeof *a));
    if (!a) return NIXL_ERR_BACKEND;
    memset(a, 0, sizeof *a);
    a->cfg = *cfg;
    a->log_level = _nixl_level_from_env();
    a->name = _nixl_strdup(a, cfg->name);
    a->cfg.name = a->name;
    a->sc_listen_fd = a->sc_wake[0] = a->sc_wake[1] = -1;
    if (!a->name || pthread_mutex_init(&a->lock, NULL) != 0 || pthread_mutex_init(&a->sc_lock, NULL) != 0) {
        _nixl_free(a, a->name);
        _nixl_free(a, a);
        return NIXL_ERR_BACKEND;
    }
    if (token && !(a->token = _nixl_strdup(a, token))) {
        nixl_agent_destroy(a);
        return NIXL_ERR_BACKEND;
    }
    a->cfg.auth_token = a->token;
    a->cfg.listen_addr = NULL; /* not kept: used only here */
    a->cfg.etcd_endpoints = a->cfg.etcd_namespace = NULL; /* not kept: copied below */
    if ((endpoints = _nixl_etcd_endpoints(a, cfg)) != NULL) {
        const char *ns = cfg->etcd_namespace ? cfg->etcd_namespace : getenv("NIXL_ETCD_NAMESPACE");
        nixl_status_t st = _nixl_etcd_start(a, endpoints, ns);
        if (st != NIXL_SUCCESS) {
            nixl_agent_destroy(a);
            return st;
        }
        a->etcd_on = 1;
    }
    if (cfg->listen_thread) {
        nixl_status_t st = _nixl_listener_start(a, cfg->listen_addr);
        if (st != NIXL_SUCCESS) {
            nixl_agent_destroy(a);
            return st;
        }
    }
    if (cfg->progress_thread) {
        int rc = pthread_create(&a->thread, NULL, _nixl_progress_thread_main, a);
        if (rc != 0) {
            _nixl_log(a, NIXL_LOG_ERROR, "agent_create: progress thread: %s", strerror(rc));
            nixl_agent_destroy(a);
            return NIXL_ERR_BACKEND;
        }
        a->thread_started = 1;
    }
    *agent = a;
    return NIXL_SUCCESS;
}

NIXL_API const char *nixl_agent_name(const nixl_agent_t *agent) { return agent ? agent->name : NULL; }
NIXL_API uint16_t nixl_agent_listen_port(const nixl_agent_t *agent) { return agent ? agent->sc_port : 0; }

/* Spins briefly (low latency for a busy peer), then backs off to short
   sleeps so an idle agent does not burn a core. */
static void *_nixl_progress_thread_main(void *arg) {
    nixl_agent_t *a = (nixl_agent_t *)arg;
    unsigned idle = 0;
    while (!_NIXL_LOAD(&a->stop)) {
        nixl_status_t st;
        _nixl_lock(a);
        st = _nixl_progress_locked(a);
        _nixl_unlock(a);
        if (st == NIXL_IN_PROG) {
            idle = 0;
            continue;
        }
        if (++idle < 64) {
            sched_yield();
        } else {
            struct timespec ts;
            ts.tv_sec = 0;
            ts.tv_nsec = idle < 1024 ? 20000 : 200000;
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

static void _nixl_req_free(nixl_agent_t *a, nixl_xfer_req_t *r);
static void _nixl_handle_unref(nixl_agent_t *a, nixl_dlist_handle_t *h);
static void _nixl_remote_invalidate(nixl_agent_t *a, _nixl_remote *rm, nixl_status_t why);
static void _nixl_region_deregister(nixl_agent_t *a, _nixl_region *r);

NIXL_API void nixl_agent_destroy(nixl_agent_t *a) {
    int i;
    if (!a) return;
    if (a->thread_started) {
        _NIXL_STORE(&a->stop, 1);
        pthread_join(a->thread, NULL);
    }
    _nixl_side_channel_stop(a); /* its threads call the public API: stop them first */
    _nixl_lock(a);
    while (a->reqs) {
        nixl_xfer_req_t *r = a->reqs;
        if (r->bh && r->be->ops->release_xfer(r->be->engine, r->bh) != NIXL_SUCCESS)
            _nixl_log(a, NIXL_LOG_WARN, "agent_destroy: backend %s could not abort a request; its engine is destroyed next",
                      r->be->ops->name);
        r->bh = NULL;
        _nixl_req_free(a, r);
    }
    while (a->handles) {
        nixl_dlist_handle_t *h = a->handles;
        h->user_released = 1;
        _nixl_handle_unref(a, h);
    }
    a->in_downs = 1; /* no deferred work while tearing down */
    while (a->remotes) _nixl_remote_invalidate(a, a->remotes, NIXL_ERR_NOT_FOUND);
    while (a->local.n) {
        _nixl_region *r = a->local.v[a->local.n - 1];
        _nixl_region_deregister(a, r);
        a->local.n--;
        _nixl_region_unref(a, r);
    }
    _nixl_table_free(a, &a->local);
    _nixl_free(a, a->scratch);
    for (i = a->nbe - 1; i >= 0; i--) {
        a->be[i]->ops->destroy(a->be[i]->engine);
        _nixl_free(a, a->be[i]);
    }
    while (a->nq_head) {
        _nixl_notif *n = a->nq_head;
        a->nq_head = n->next;
        _nixl_free(a, n);
    }
    _nixl_nq_drained(a);
    while (a->downs) {
        _nixl_down *d = a->downs;
        a->downs = d->next;
        _nixl_free(a, d);
    }
    pthread_mutex_unlock(&a->lock);
    pthread_mutex_destroy(&a->lock);
    pthread_mutex_destroy(&a->sc_lock);
    _nixl_free(a, a->token);
    _nixl_free(a, a->name);
    _nixl_free(a, a);
}

static nixl_status_t _nixl_progress_locked(nixl_agent_t *a) {
    nixl_status_t any = NIXL_SUCCESS;
    int i;
    for (i = 0; i < a->nbe; i++) {
        nixl_backend_t *b = a->be[i];
        if (b->ops->progress && b->ops->progress(b->engine) == NIXL_IN_PROG) any = NIXL_IN_PROG;
    }
    return any;
}

NIXL_API nixl_status_t nixl_progress(nixl_agent_t *agent) {
    nixl_status_t st;
    if (!agent) return NIXL_ERR_INVALID_PARAM;
    _nixl_lock(agent);
    st = _nixl_progress_locked(agent);
    _nixl_unlock(agent);
    return st;
}

// >>backend

NIXL_API const char *nixl_backend_name(const nixl_backend_t *backend) {
    return backend ? backend->ops->name : NULL;
}

static int _nixl_param_key_allowed(const nixl_backend_ops_t *ops, const char *key) {
    const char *const *k;
    if (!ops->param_keys) return 0;
    for (k = ops->param_keys; *k; k++) {
        size_t n = strlen(*k);
        if (n && (*k)[n - 1] == '.' ? strncmp(key, *k, n) == 0 && key[n] : strcmp(key, *k) == 0) return 1;
    }
    return 0;
}

/* Splits "k=v,k=v" in place into pairs and checks every key. */
static nixl_status_t _nixl_parse_params(nixl_agent_t *a, const nixl_backend_ops_t *ops, char *buf,
                                        nixl_param_t *out, size_t cap, size_t *n) {
    char *p = buf;
    *n = 0;
    while (p && *p) {
        char *comma = strchr(p, ',');
        char *eq;
        size_t i;
        if (comma) *comma = '\0';
        eq = strchr(p, '=');
        if (!eq || eq == p) {
            _nixl_log(a, NIXL_LOG_ERROR, "create_backend(%s): param '%s' is not key=value", ops->name, p);
            return NIXL_ERR_INVALID_PARAM;
        }
        *eq = '\0';
        if (!_nixl_param_key_allowed(ops, p)) {
            _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_PARAM_UNKNOWN_KEY, "create_backend(%s): unknown param key '%s'", ops->name, p);
            return NIXL_ERR_INVALID_PARAM;
        }
        for (i = 0; i < *n; i++)
            if (!strcmp(out[i].key, p)) {
                _nixl_log(a, NIXL_LOG_ERROR, "create_backend(%s): param '%s' given twice", ops->name, p);
                return NIXL_ERR_INVALID_PARAM;
            }
        if (*n == cap) {
            _nixl_log(a, NIXL_LOG_ERROR, "create_backend(%s): more than %zu params", ops->name, cap);
            return NIXL_ERR_INVALID_PARAM;
        }
        out[*n].key = p;
        out[*n].value = eq + 1;
        (*n)++;
        p = comma ? comma + 1 : NULL;
    }
    return NIXL_SUCCESS;
}

NIXL_API nixl_status_t nixl_create_backend(nixl_agent_t *a, const nixl_backend_ops_t *ops, const char *params,
                                           nixl_backend_t **backend) {
    nixl_param_t pv[64];
    nixl_backend_init_t init;
    nixl_backend_t *b;
    nixl_status_t st;
    size_t np = 0;
    int i;
    if (!a || !ops || !backend) return NIXL_ERR_INVALID_PARAM;
    *backend = NULL;
    if (ops->abi != NIXL_BACKEND_ABI || !ops->name || !ops->create || !ops->destroy || !ops->register_mem ||
        !ops->deregister_mem || !ops->prep_xfer || !ops->post_xfer || !ops->check_xfer || !ops->release_xfer) {
        _nixl_log(a, NIXL_LOG_ERROR, "create_backend: vtable %s is incomplete or of ABI %u (want %d)",
                  ops->name ? ops->name : "(unnamed)", ops->abi, NIXL_BACKEND_ABI);
        return NIXL_ERR_INVALID_PARAM;
    }
    _nixl_lock(a);
    for (i = 0; i < a->nbe; i++)
        if (!strcmp(a->be[i]->ops->name, ops->name)) {
            _nixl_log(a, NIXL_LOG_ERROR, "create_backend: a %s backend exists already", ops->name);
            _nixl_unlock(a);
            return NIXL_ERR_INVALID_PARAM;
        }
    if (a->nbe == NIXL_MAX_BACKENDS) {
        _nixl_log(a, NIXL_LOG_ERROR, "create_backend: at most %d backends per agent", NIXL_MAX_BACKENDS);
        _nixl_unlock(a);
        return NIXL_ERR_INVALID_PARAM;
    }
    b = (nixl_backend_t *)_nixl_alloc(a, sizeof *b);
    if (!b) {
        _nixl_unlock(a);
        return NIXL_ERR_BACKEND;
    }
    b->agent = a;
    b->ops = ops;
    b->idx = a->nbe;
    if (params) {
        b->params_buf = _nixl_strdup(a, params);
        st = b->params_buf ? _nixl_parse_params(a, ops, b->params_buf, pv, sizeof pv / sizeof pv[0], &np)
                           : NIXL_ERR_BACKEND;
        if (st != NIXL_SUCCESS) goto fail;
    }
    memset(&init, 0, sizeof init);
    init.self = b;
    init.agent_name = a->name;
    init.params = pv;
    init.num_params = np;
    st = ops->create(&init, &b->engine);
    if (st != NIXL_SUCCESS) {
        _nixl_log(a, NIXL_LOG_ERROR, "create_backend(%s): %s", ops->name, nixl_status_str(st));
        goto fail;
    }
    _nixl_free(a, b->params_buf);
    b->params_buf = NULL;
    a->be[a->nbe++] = b;
    *backend = b;
    _nixl_unlock(a);
    return NIXL_SUCCESS;
fail:
    _nixl_free(a, b->params_buf);
    _nixl_free(a, b);
    _nixl_unlock(a);
    return st;
}

static void _nixl_backend_vlog(nixl_backend_t *be, int level, nixl_log_item_t item, const char *fmt, va_list ap) {
    char full[640];
    vsnprintf(full, sizeof full, fmt, ap);
    _nixl_logi(be->agent, level, item, "%s: %s", be->ops->name, full);
}

NIXL_API void nixl_backend_log(nixl_backend_t *be, int level, const char *fmt, ...) {
    va_list ap;
    if (!be || level > be->agent->log_level) return;
    va_start(ap, fmt);
    _nixl_backend_vlog(be, level, NIXL_LOGITEM_NONE, fmt, ap);
    va_end(ap);
}

NIXL_API void nixl_backend_log_item(nixl_backend_t *be, int level, nixl_log_item_t item, const char *fmt, ...) {
    va_list ap;
    if (!be || level > be->agent->log_level) return;
    va_start(ap, fmt);
    _nixl_backend_vlog(be, level, item, fmt, ap);
    va_end(ap);
}

NIXL_API nixl_log_item_t nixl_backend_why_item(const char *why) { return _nixl_why_item(why, NIXL_LOGITEM_NONE); }

NIXL_API const char *nixl_backend_why(nixl_log_item_t item) {
    return (unsigned)item < NIXL_LOGITEM_COUNT ? _nixl_log_item_texts[item] : "?";
}

NIXL_API void *nixl_backend_alloc(nixl_backend_t *be, size_t size) { return _nixl_alloc(be->agent, size); }
NIXL_API void nixl_backend_free(nixl_backend_t *be, void *ptr) { _nixl_free(be->agent, ptr); }

/* The sender's account (NULL if it has none yet). */
static _nixl_nq_acct *_nixl_nq_account(nixl_agent_t *a, const char *sender) {
    _nixl_nq_acct *c;
    for (c = a->nq_accts; c; c = c->next)
        if (!strcmp(c->name, sender)) return c;
    return NULL;
}

/* Whether a notification of `cost` bytes from `sender` fits the queue's
   limits; if so it is accounted. A refusal is counted (and logged when a
   sender's drops begin); nothing is dropped silently. */
static size_t _nixl_nq_total(const nixl_agent_t *a) {
    return a->cfg.notif_queue_bytes ? a->cfg.notif_queue_bytes : (size_t)256 << 20;
}
static size_t _nixl_nq_per(const nixl_agent_t *a) {
    return a->cfg.notif_queue_peer_bytes ? a->cfg.notif_queue_peer_bytes : (size_t)64 << 20;
}
static int _nixl_nq_fits(const nixl_agent_t *a, const _nixl_nq_acct *c, size_t cost) {
    return a->nq_bytes + cost <= _nixl_nq_total(a) && (c ? c->bytes : 0) + cost <= _nixl_nq_per(a);
}
static size_t _nixl_nq_cost(const char *sender, size_t len) { return sizeof(_nixl_notif) + strlen(sender) + 1 + len; }

static int _nixl_nq_admit(nixl_agent_t *a, const nixl_backend_t *be, const char *sender, size_t cost) {
    size_t total = _nixl_nq_total(a), per = _nixl_nq_per(a);
    _nixl_nq_acct *c = _nixl_nq_account(a, sender);
    int fits = _nixl_nq_fits(a, c, cost);
    if (!c && fits) {
        size_t n = strlen(sender);
        c = (_nixl_nq_acct *)_nixl_alloc(a, sizeof *c + n);
        if (c) {
            memcpy(c->name, sender, n + 1);
            c->next = a->nq_accts;
            a->nq_accts = c;
        }
        fits = c != NULL;
    }
    if (fits) {
        c->bytes += cost;
        a->nq_bytes += cost;
        return 1;
    }
    if (c && !c->dropped++)
        _nixl_logi(a, NIXL_LOG_WARN, NIXL_LOGITEM_NOTIF_DROPS_BEGIN, "%s: notifications from %s dropped from now on: %zu bytes of theirs queued "
                  "(limit %zu), %zu in all (limit %zu); call nixl_get_notifs", be->ops->name, sender, c->bytes, per,
                  a->nq_bytes, total);
    if (!c && !a->nq_dropped_other++)
        _nixl_logi(a, NIXL_LOG_WARN, NIXL_LOGITEM_NOTIF_DROPS_BEGIN, "%s: notifications dropped from now on: %zu bytes queued in all (limit %zu); "
                  "call nixl_get_notifs", be->ops->name, a->nq_bytes, total);
    return 0;
}

/* The queue was handed to the application: accounts restart, drops reported. */
static void _nixl_nq_drained(nixl_agent_t *a) {
    while (a->nq_accts) {
        _nixl_nq_acct *c = a->nq_accts;
        a->nq_accts = c->next;
        if (c->dropped)
            _nixl_logi(a, NIXL_LOG_WARN, NIXL_LOGITEM_NOTIF_DROPS_COUNTED, "notifications: %lu from %s were dropped while the queue was full",
                      c->dropped, c->name);
        _nixl_free(a, c);
    }
    if (a->nq_dropped_other)
        _nixl_logi(a, NIXL_LOG_WARN, NIXL_LOGITEM_NOTIF_DROPS_COUNTED, "notifications: %lu from other senders were dropped while the queue was full",
                  a->nq_dropped_other);
    a->nq_dropped_other = 0;
    a->nq_bytes = 0;
}

NIXL_API void nixl_backend_notif(nixl_backend_t *be, const char *remote, const void *msg, size_t len) {
    nixl_agent_t *a = be->agent;
    size_t nlen = remote ? strlen(remote) : 0;
    if (!remote || (len && !msg)) {
        _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_NOTIF_NO_SENDER, "%s delivered a notification without sender or data: dropped", be->ops->name);
        return;
    }
    /* one block: entry, sender name, message */
    size_t cost = _nixl_nq_cost(remote, len);
    _nixl_notif *n;
    if (!_nixl_nq_admit(a, be, remote, cost)) return;
    n = (_nixl_notif *)_nixl_alloc(a, cost);
    if (!n) {
        _nixl_log(a, NIXL_LOG_ERROR, "notification from %s (%zu bytes) dropped: out of memory", remote, len);
        _nixl_nq_account(a, remote)->bytes -= cost;
        a->nq_bytes -= cost;
        return;
    }
    n->sender = (char *)(n + 1);
    memcpy(n->sender, remote, nlen + 1);
    n->msg = (unsigned char *)n->sender + nlen + 1;
    if (len) memcpy(n->msg, msg, len);
    n->len = len;
    if (a->nq_tail) a->nq_tail->next = n;
    else a->nq_head = n;
    a->nq_tail = n;
}

NIXL_API int nixl_backend_notif_room(nixl_backend_t *be, const char *remote, size_t len) {
    nixl_agent_t *a = be->agent;
    return remote && _nixl_nq_fits(a, _nixl_nq_account(a, remote), _nixl_nq_cost(remote, len));
}

NIXL_API size_t nixl_backend_notif_queued(nixl_backend_t *be, const char *remote) {
    const _nixl_nq_acct *c = remote ? _nixl_nq_account(be->agent, remote) : NULL;
    return c ? c->bytes : 0;
}

NIXL_API void nixl_backend_peer_down(nixl_backend_t *be, const char *remote) {
    nixl_agent_t *a = be->agent;
    _nixl_down *d;
    if (!remote) { /* a backend bug, but never a crash of the core */
        _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_PEER_DOWN_UNNAMED, "%s reported an unnamed peer down: ignored", be->ops->name);
        return;
    }
    for (d = a->downs; d; d = d->next)
        if (!strcmp(d->name, remote)) return;
    d = (_nixl_down *)_nixl_alloc(a, sizeof *d + strlen(remote) + 1);
    if (!d) return;
    d->name = (char *)(d + 1);
    memcpy(d->name, remote, strlen(remote) + 1);
    d->next = a->downs;
    a->downs = d;
    _nixl_log(a, NIXL_LOG_WARN, "%s reports peer %s down", be->ops->name, remote);
}

NIXL_API const char *nixl_param_get(const nixl_backend_init_t *init, const char *key) {
    size_t i;
    for (i = 0; i < init->num_params; i++)
        if (!strcmp(init->params[i].key, key)) return init->params[i].value;
    return NULL;
}

NIXL_API nixl_status_t nixl_param_u64(const nixl_backend_init_t *init, const char *key, uint64_t def, uint64_t min,
                                      uint64_t max, uint64_t *out) {
    const char *v = nixl_param_get(init, key);
    char *end = NULL;
    unsigned long long x;
    if (!v) {
        *out = def;
        return NIXL_SUCCESS;
    }
    errno = 0;
    x = strtoull(v, &end, 0);
    if (!*v || *v == '-' || errno || !end || *end) {
        nixl_backend_log_item(init->self, NIXL_LOG_ERROR, NIXL_LOGITEM_PARAM_BAD_VALUE,
                              "param %s='%s' is not an unsigned number", key, v);
        return NIXL_ERR_INVALID_PARAM;
    }
    if (x < min || x > max) {
        nixl_backend_log_item(init->self, NIXL_LOG_ERROR, NIXL_LOGITEM_PARAM_BAD_VALUE,
                              "param %s=%llu out of range [%llu, %llu]", key, x, (unsigned long long)min,
                              (unsigned long long)max);
        return NIXL_ERR_INVALID_PARAM;
    }
    *out = x;
    return NIXL_SUCCESS;
}

/* the backends an opt names, in its order, or all in creation order */
static nixl_status_t _nixl_backend_order(nixl_agent_t *a, const char *what, const nixl_opt_args_t *opt,
                                         nixl_backend_t **out, int *n) {
    size_t i;
    int j;
    *n = 0;
    if (!opt || !opt->backends || !opt->num_backends) {
        for (j = 0; j < a->nbe; j++) out[(*n)++] = a->be[j];
        return NIXL_SUCCESS;
    }
    if (opt->num_backends > (size_t)a->nbe) {
        _nixl_log(a, NIXL_LOG_ERROR, "%s: %zu backends named, the agent has %d", what, opt->num_backends, a->nbe);
        return NIXL_ERR_INVALID_PARAM;
    }
    for (i = 0; i < opt->num_backends; i++) {
        nixl_backend_t *b = opt->backends[i];
        if (!b || b->agent != a) {
            _nixl_log(a, NIXL_LOG_ERROR, "%s: backend %zu of opt->backends is not one of this agent's", what, i);
            return NIXL_ERR_INVALID_PARAM;
        }
        out[(*n)++] = b;
    }
    return NIXL_SUCCESS;
}

static unsigned _nixl_order_mask(nixl_backend_t *const *order, int n) {
    unsigned m = 0;
    int i;
    for (i = 0; i < n; i++) m |= 1u << order[i]->idx;
    return m;
}

// >>registration

static void _nixl_region_deregister(nixl_agent_t *a, _nixl_region *r) {
    int i;
    for (i = 0; i < a->nbe; i++) {
        if (r->lmask & (1u << i)) a->be[i]->ops->unload_md(a->be[i]->engine, r->lmd[i]);
        if (r->mask & (1u << i)) a->be[i]->ops->deregister_mem(a->be[i]->engine, r->md[i]);
    }
    r->lmask = r->mask = 0;
    r->dead = 1;
}

/* registers one region with every eligible backend; SUCCESS if one took it */
static nixl_status_t _nixl_region_register(nixl_agent_t *a, _nixl_region *r, nixl_backend_t *const *order, int n) {
    nixl_status_t first_err = NIXL_ERR_NOT_SUPPORTED;
    nixl_desc_t d;
    int i;
    d.addr = r->s.addr;
    d.len = r->s.len;
    d.dev_id = r->s.dev_id;
    for (i = 0; i < n; i++) {
        nixl_backend_t *b = order[i];
        nixl_status_t st;
        if (!(b->ops->mem_mask & NIXL_MEM_BIT(r->s.mem))) continue;
        st = b->ops->register_mem(b->engine, r->s.mem, &d, &r->md[b->idx]);
        if (st == NIXL_SUCCESS) {
            r->mask |= 1u << b->idx;
        } else {
            _nixl_log(a, NIXL_LOG_WARN, "register_mem: %s did not take %s 0x%llx+%zu (dev %llu): %s", b->ops->name,
                      nixl_mem_str(r->s.mem), (unsigned long long)r->s.addr, r->s.len,
                      (unsigned long long)r->s.dev_id, nixl_status_str(st));
            if (first_err == NIXL_ERR_NOT_SUPPORTED) first_err = st;
        }
    }
    if (r->mask) return NIXL_SUCCESS;
    _nixl_log(a, NIXL_LOG_ERROR, "register_mem: no backend took %s 0x%llx+%zu: %s", nixl_mem_str(r->s.mem),
              (unsigned long long)r->s.addr, r->s.len, nixl_status_str(first_err));
    return first_err;
}

static int _nixl_desc_list_has_dup(const nixl_dlist_t *l, size_t i) {
    size_t j;
    for (j = 0; j < i; j++)
        if (l->descs[j].addr == l->descs[i].addr && l->descs[j].len == l->descs[i].len &&
            l->descs[j].dev_id == l->descs[i].dev_id)
            return 1;
    return 0;
}

static void _nixl_span_from(_nixl_span *s, nixl_mem_t mem, const nixl_desc_t *d) {
    s->mem = mem;
    s->addr = d->addr;
    s->len = d->len;
    s->dev_id = d->dev_id;
}

static nixl_status_t _nixl_register_locked(nixl_agent_t *a, const nixl_dlist_t *l, const nixl_opt_args_t *opt) {
    nixl_backend_t *order[NIXL_MAX_BACKENDS];
    _nixl_region **made;
    nixl_status_t st;
    int n;
    size_t i, k, done = 0;
    if ((st = _nixl_check_dlist(a, "register_mem", l)) != NIXL_SUCCESS) return st;
    if ((st = _nixl_backend_order(a, "register_mem", opt, order, &n)) != NIXL_SUCCESS) return st;
    if (n == 0) {
        _nixl_log(a, NIXL_LOG_ERROR, "register_mem: the agent has no backend");
        return NIXL_ERR_NOT_SUPPORTED;
    }
    for (i = 0; i < l->count; i++) {
        _nixl_span s;
        if ((st = _nixl_check_desc(a, "register_mem", l->mem, &l->descs[i], i)) != NIXL_SUCCESS) return st;
        _nixl_span_from(&s, l->mem, &l->descs[i]);
        if (_nixl_table_find_exact(&a->local, &s) >= 0 || _nixl_desc_list_has_dup(l, i)) {
            _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_MEM_REGISTERED_ALREADY, "register_mem: %s 0x%llx+%zu (dev %llu) is registered already",
                      nixl_mem_str(l->mem), (unsigned long long)s.addr, s.len, (unsigned long long)s.dev_id);
            return NIXL_ERR_INVALID_PARAM;
        }
    }
    if (!l->count) return NIXL_SUCCESS;
    made = (_nixl_region **)_nixl_alloc_array(a, l->count, sizeof *made);
    if (!made || !_nixl_table_reserve(a, &a->local, l->count)) {
        _nixl_free(a, made);
        return NIXL_ERR_BACKEND;
    }
    st = NIXL_SUCCESS;
    for (i = 0; i < l->count; i++) {
        made[i] = (_nixl_region *)_nixl_alloc(a, sizeof(_nixl_region));
        if (!made[i]) {
            st = NIXL_ERR_BACKEND;
            break;
        }
        done = i + 1;
        _nixl_span_from(&made[i]->s, l->mem, &l->descs[i]);
        made[i]->refs = 1;
        st = _nixl_region_register(a, made[i], order, n);
        if (st != NIXL_SUCCESS) break;
    }
    if (st != NIXL_SUCCESS) { /* all or nothing: undo this call's regions */
        for (k = 0; k < done; k++) {
            _nixl_region_deregister(a, made[k]);
            _nixl_region_unref(a, made[k]);
        }
        _nixl_free(a, made);
        return st;
    }
    for (i = 0; i < l->count; i++) a->local.v[a->local.n++] = made[i];
    _nixl_table_sort(&a->local);
    _nixl_free(a, made);
    return NIXL_SUCCESS;
}

NIXL_API nixl_status_t nixl_register_mem(nixl_agent_t *agent, const nixl_dlist_t *descs, const nixl_opt_args_t *opt) {
    nixl_status_t st;
    if (!agent) return NIXL_ERR_INVALID_PARAM;
    _nixl_lock(agent);
    st = _nixl_register_locked(agent, descs, opt);
    _nixl_unlock(agent);
    return st;
}

static nixl_status_t _nixl_deregister_locked(nixl_agent_t *a, const nixl_dlist_t *l) {
    nixl_status_t st;
    size_t i;
    if ((st = _nixl_check_dlist(a, "deregister_mem", l)) != NIXL_SUCCESS) return st;
    for (i = 0; i < l->count; i++) {
        _nixl_span s;
        _nixl_span_from(&s, l->mem, &l->descs[i]);
        if (_nixl_table_find_exact(&a->local, &s) < 0) {
            _nixl_log(a, NIXL_LOG_ERROR, "deregister_mem: %s 0x%llx+%zu (dev %llu) is not a registered region",
                      nixl_mem_str(l->mem), (unsigned long long)s.addr, s.len, (unsigned long long)s.dev_id);
            return NIXL_ERR_NOT_FOUND;
        }
    }
    for (i = 0; i < l->count; i++) {
        _nixl_span s;
        long at;
        _nixl_region *r;
        _nixl_span_from(&s, l->mem, &l->descs[i]);
        at = _nixl_table_find_exact(&a->local, &s);
        if (at < 0) continue; /* listed twice */
        r = a->local.v[at];
        _nixl_region_deregister(a, r);
        _nixl_table_remove_at(&a->local, (size_t)at);
        _nixl_region_unref(a, r);
    }
    a->epoch++;
    return NIXL_SUCCESS;
}

NIXL_API nixl_status_t nixl_deregister_mem(nixl_agent_t *agent, const nixl_dlist_t *descs, const nixl_opt_args_t *opt) {
    nixl_status_t st;
    (void)opt;
    if (!agent) return NIXL_ERR_INVALID_PARAM;
    _nixl_lock(agent);
    st = _nixl_deregister_locked(agent, descs);
    _nixl_unlock(agent);
    return st;
}

// >>metadata-format
/* Blob layout, all integers little-endian:
     u32 magic "NXMD"  u16 version  u16 flags  u32 total length (incl. CRC)
     u8 name_len, name
     u8 nbackends, then per backend: u8 name_len, name, u32 conn_len, conn
     u32 nregions, then per region:
         u8 mem, u64 addr, u64 len, u64 dev_id, u8 nkeys,
         per key: u8 backend index (into the list above), u16 len, bytes
     u32 CRC-32 (IEEE) of everything before it
   Per region: 26 bytes + 3 per backend + the backend's key bytes. */

enum { NIXL_MD_FLAG_PARTIAL = 1 };

static uint32_t _nixl_crc32(const unsigned char *p, size_t n) {
    uint32_t table[256], crc = 0xffffffffu;
    uint32_t i, k;
    for (i = 0; i < 256; i++) {
        uint32_t c = i;
        for (k = 0; k < 8; k++) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    while (n--) crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc ^ 0xffffffffu;
}

/* The one little-endian byte codec of the library (core and backends):
   fixed-position puts and gets for headers of known size, and on top of
   them a counting writer and a bounds-checked reader for variable data. */
static _NIXL_MAYBE_UNUSED void _nixl_put_le(unsigned char *p, uint64_t v, int bytes) {
    int i;
    for (i = 0; i < bytes; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static _NIXL_MAYBE_UNUSED uint64_t _nixl_get_le(const unsigned char *p, int bytes) {
    uint64_t v = 0;
    int i;
    for (i = bytes - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static _NIXL_MAYBE_UNUSED void _nixl_put16(unsigned char *p, uint64_t v) { _nixl_put_le(p, v, 2); }
static _NIXL_MAYBE_UNUSED void _nixl_put32(unsigned char *p, uint64_t v) { _nixl_put_le(p, v, 4); }
static _NIXL_MAYBE_UNUSED void _nixl_put64(unsigned char *p, uint64_t v) { _nixl_put_le(p, v, 8); }
static _NIXL_MAYBE_UNUSED uint16_t _nixl_get16(const unsigned char *p) { return (uint16_t)_nixl_get_le(p, 2); }
static _NIXL_MAYBE_UNUSED uint32_t _nixl_get32(const unsigned char *p) { return (uint32_t)_nixl_get_le(p, 4); }
static _NIXL_MAYBE_UNUSED uint64_t _nixl_get64(const unsigned char *p) { return _nixl_get_le(p, 8); }

/* Writer: with p == NULL it only counts, so encoding is two passes of the
   same code (size, then bytes) and can never overflow its buffer. */
typedef struct _nixl_wr { unsigned char *p; size_t pos; } _nixl_wr;
static void _nixl_wle(_nixl_wr *w, uint64_t v, int bytes) {
    if (w->p) _nixl_put_le(w->p + w->pos, v, bytes);
    w->pos += (size_t)bytes;
}
static void _nixl_w8(_nixl_wr *w, uint64_t v) { _nixl_wle(w, v, 1); }
static void _nixl_wbytes(_nixl_wr *w, const void *b, size_t n) {
    if (w->p && n) memcpy(w->p + w->pos, b, n);
    w->pos += n;
}

/* Reader: any read past the end clears ok and returns zeros. */
typedef struct _nixl_rd { const unsigned char *p; size_t len, pos; int ok; } _nixl_rd;
static uint64_t _nixl_rle(_nixl_rd *r, int bytes) {
    uint64_t v;
    if (!r->ok || r->len - r->pos < (size_t)bytes) {
        r->ok = 0;
        return 0;
    }
    v = _nixl_get_le(r->p + r->pos, bytes);
    r->pos += (size_t)bytes;
    return v;
}
static const unsigned char *_nixl_rbytes(_nixl_rd *r, size_t n) {
    const unsigned char *b;
    if (!r->ok || r->len - r->pos < n) {
        r->ok = 0;
        return NULL;
    }
    b = r->p + r->pos;
    r->pos += n;
    return b;
}

typedef struct _nixl_md_key { unsigned be; const unsigned char *p; size_t len; } _nixl_md_key;
typedef struct _nixl_md_reg { _nixl_span s; size_t first_key, nkeys; } _nixl_md_reg;
typedef struct _nixl_md_be {
    const unsigned char *name; size_t name_len;
    const unsigned char *conn; size_t conn_len;
} _nixl_md_be;
typedef struct _nixl_md {
    char name[NIXL_MD_MAX_NAME + 1];
    unsigned flags;
    size_t nbe;
    _nixl_md_be be[NIXL_MD_MAX_BACKENDS];
    size_t nreg, nkeys;
    _nixl_md_reg *reg;   /* filled in the second pass */
    _nixl_md_key *keys;
} _nixl_md;

static int _nixl_name_ok(const unsigned char *p, size_t n) {
    return n > 0 && n <= NIXL_MD_MAX_NAME && memchr(p, 0, n) == NULL;
}

/* Parses a blob. Pass 1 (md->reg == NULL) validates and counts; pass 2
   fills md->reg/md->keys. Returns SUCCESS, INVALID_PARAM or MISMATCH. */
static nixl_status_t _nixl_md_parse(const unsigned char *p, size_t len, _nixl_md *md, const char **why) {
    _nixl_rd r;
    size_t i, j, nlen, body_end, nreg;
    const unsigned char *nm;
    r.p = p;
    r.len = len;
    r.pos = 0;
    r.ok = 1;
    *why = NULL;
    if (!p || len < 16) return (*why = "shorter than a header"), NIXL_ERR_INVALID_PARAM;
    if (_nixl_rle(&r, 4) != NIXL_MD_MAGIC) return (*why = _NIXL_WHY(MD_BAD_MAGIC)), NIXL_ERR_INVALID_PARAM;
    if (_nixl_rle(&r, 2) != NIXL_MD_VERSION) return (*why = "unsupported format version"), NIXL_ERR_MISMATCH;
    md->flags = (unsigned)_nixl_rle(&r, 2);
    if (_nixl_rle(&r, 4) != len || len > NIXL_MD_MAX_BLOB_BYTES)
        return (*why = "length field disagrees with the blob size"), NIXL_ERR_INVALID_PARAM;
    body_end = len - 4;
    {
        _nixl_rd c = r;
        c.pos = body_end;
        if ((uint32_t)_nixl_rle(&c, 4) != _nixl_crc32(p, body_end))
            return (*why = "CRC mismatch (corrupted)"), NIXL_ERR_INVALID_PARAM;
    }
    r.len = body_end; /* nothing below may read the CRC */
    nlen = (size_t)_nixl_rle(&r, 1);
    nm = _nixl_rbytes(&r, nlen);
    if (!r.ok || !_nixl_name_ok(nm, nlen)) return (*why = "bad agent name"), NIXL_ERR_INVALID_PARAM;
    memcpy(md->name, nm, nlen);
    md->name[nlen] = '\0';
    md->nbe = (size_t)_nixl_rle(&r, 1);
    if (md->nbe > NIXL_MD_MAX_BACKENDS) return (*why = "too many backends"), NIXL_ERR_INVALID_PARAM;
    for (i = 0; i < md->nbe && r.ok; i++) {
        _nixl_md_be *b = &md->be[i];
        b->name_len = (size_t)_nixl_rle(&r, 1);
        b->name = _nixl_rbytes(&r, b->name_len);
        b->conn_len = (size_t)_nixl_rle(&r, 4);
        if (!r.ok || !_nixl_name_ok(b->name, b->name_len) || b->conn_len > NIXL_MD_MAX_CONN_BYTES)
            return (*why = "bad backend section"), NIXL_ERR_INVALID_PARAM;
        b->conn = _nixl_rbytes(&r, b->conn_len);
        for (j = 0; j < i; j++)
            if (md->be[j].name_len == b->name_len && !memcmp(md->be[j].name, b->name, b->name_len))
                return (*why = "backend listed twice"), NIXL_ERR_INVALID_PARAM;
    }
    nreg = (size_t)_nixl_rle(&r, 4);
    if (!r.ok || nreg > (r.len - r.pos) / NIXL_MD_REGION_FIXED)
        return (*why = "region count larger than the blob"), NIXL_ERR_INVALID_PARAM;
    if (md->reg && nreg != md->nreg) return (*why = "changed between passes"), NIXL_ERR_INVALID_PARAM;
    md->nreg = nreg;
    md->nkeys = 0;
    for (i = 0; i < nreg && r.ok; i++) {
        _nixl_md_reg g;
        unsigned seen[(NIXL_MD_MAX_BACKENDS + 31) / 32] = {0};
        unsigned mem = (unsigned)_nixl_rle(&r, 1);
        g.s.mem = (nixl_mem_t)(mem < NIXL_MEM_COUNT ? mem : 0);
        g.s.addr = (uintptr_t)_nixl_rle(&r, 8);
        g.s.len = (size_t)_nixl_rle(&r, 8);
        g.s.dev_id = _nixl_rle(&r, 8);
        g.nkeys = (size_t)_nixl_rle(&r, 1);
        g.first_key = md->nkeys;
        if (!r.ok || mem >= NIXL_MEM_COUNT || g.s.len == 0 || g.s.addr == 0 || g.s.addr + g.s.len < g.s.addr ||
            g.nkeys > md->nbe)
            return (*why = _NIXL_WHY(MD_BAD_REGION)), NIXL_ERR_INVALID_PARAM;
        for (j = 0; j < g.nkeys && r.ok; j++) {
            _nixl_md_key k;
            k.be = (unsigned)_nixl_rle(&r, 1);
            k.len = (size_t)_nixl_rle(&r, 2);
            k.p = _nixl_rbytes(&r, k.len);
            if (!r.ok || k.be >= md->nbe || (seen[k.be / 32] & (1u << (k.be % 32))))
                return (*why = "bad region key"), NIXL_ERR_INVALID_PARAM;
            seen[k.be / 32] |= 1u << (k.be % 32);
            if (md->keys) md->keys[md->nkeys] = k;
            md->nkeys++;
        }
        if (md->reg) md->reg[i] = g;
    }
    if (!r.ok) return (*why = "truncated"), NIXL_ERR_INVALID_PARAM;
    if (r.pos != body_end) return (*why = "trailing bytes"), NIXL_ERR_INVALID_PARAM;
    return NIXL_SUCCESS;
}

static void _nixl_md_release(nixl_agent_t *a, _nixl_md *md) {
    if (!md) return;
    _nixl_free(a, md->reg);
    _nixl_free(a, md->keys);
    _nixl_free(a, md);
}

/* Both passes of the parser; *out owns arrays pointing into blob. */
/* Runs without the agent lock (it touches only the agent's allocator and
   its immutable config), so a large hostile blob does not stall the agent.
   On failure *why says why (the caller logs it under the lock). */
static nixl_status_t _nixl_md_decode(nixl_agent_t *a, const void *blob, size_t len, _nixl_md **out,
                                     const char **why) {
    _nixl_md *md = (_nixl_md *)_nixl_alloc(a, sizeof *md);
    nixl_status_t st;
    *out = NULL;
    *why = NULL;
    if (!md) return NIXL_ERR_BACKEND;
    st = _nixl_md_parse((const unsigned char *)blob, len, md, why);
    if (st == NIXL_SUCCESS && md->nreg > _nixl_max_peer_regions(a)) {
        *why = _NIXL_WHY(MD_REGIONS_LIMIT);
        st = NIXL_ERR_NOT_ALLOWED;
    }
    if (st == NIXL_SUCCESS) {
        md->reg = (_nixl_md_reg *)_nixl_alloc_array(a, md->nreg ? md->nreg : 1, sizeof *md->reg);
        md->keys = (_nixl_md_key *)_nixl_alloc_array(a, md->nkeys ? md->nkeys : 1, sizeof *md->keys);
        if (!md->reg || !md->keys) st = NIXL_ERR_BACKEND;
        else st = _nixl_md_parse((const unsigned char *)blob, len, md, why);
    }
    if (st != NIXL_SUCCESS) {
        if (!*why) *why = "out of memory";
        _nixl_md_release(a, md);
        return st;
    }
    *out = md;
    return NIXL_SUCCESS;
}

// >>metadata-local

static void _nixl_md_write(nixl_agent_t *a, _nixl_wr *w, _nixl_region *const *regs, size_t nreg, unsigned bemask,
                           int with_conn, unsigned flags) {
    int mdidx[NIXL_MAX_BACKENDS];
    int i, nb = 0;
    size_t k, nexp;
    size_t nl = strlen(a->name);
    _nixl_wle(w, NIXL_MD_MAGIC, 4);
    _nixl_wle(w, NIXL_MD_VERSION, 2);
    _nixl_wle(w, flags, 2);
    _nixl_wle(w, 0, 4); /* total length, patched by the caller */
    _nixl_w8(w, nl);
    _nixl_wbytes(w, a->name, nl);
    for (i = 0; i < a->nbe; i++) /* a backend for this agent only (files: POSIX) tells peers nothing */
        if (!(a->be[i]->ops->caps & NIXL_CAP_REMOTE)) bemask &= ~(1u << i);
    for (i = 0; i < a->nbe; i++) mdidx[i] = (bemask & (1u << i)) ? nb++ : -1;
    _nixl_w8(w, (uint64_t)nb);
    for (i = 0; i < a->nbe; i++) {
        const nixl_backend_t *b = a->be[i];
        const void *info = NULL;
        size_t ilen = 0;
        if (mdidx[i] < 0) continue;
        if (with_conn && b->ops->get_conn_info && b->ops->get_conn_info(b->engine, &info, &ilen) != NIXL_SUCCESS)
            ilen = 0;
        if (ilen > NIXL_MD_MAX_CONN_BYTES) ilen = 0;
        _nixl_w8(w, strlen(b->ops->name));
        _nixl_wbytes(w, b->ops->name, strlen(b->ops->name));
        _nixl_wle(w, ilen, 4);
        _nixl_wbytes(w, info, ilen);
    }
    for (k = 0, nexp = 0; k < nreg; k++) nexp += (regs[k]->mask & bemask) != 0;
    _nixl_wle(w, nexp, 4);
    for (k = 0; k < nreg; k++) {
        const _nixl_region *r = regs[k];
        unsigned m = r->mask & bemask;
        int nkeys = 0;
        if (!m) continue; /* held by no backend a peer can use */
        _nixl_w8(w, (uint64_t)r->s.mem);
        _nixl_wle(w, r->s.addr, 8);
        _nixl_wle(w, r->s.len, 8);
        _nixl_wle(w, r->s.dev_id, 8);
        for (i = 0; i < a->nbe; i++) nkeys += (m >> i) & 1;
        _nixl_w8(w, (uint64_t)nkeys);
        for (i = 0; i < a->nbe; i++) {
            const nixl_backend_t *b = a->be[i];
            const void *pub = NULL;
            size_t plen = 0;
            if (!(m & (1u << i))) continue;
            if (b->ops->get_public_data && b->ops->get_public_data(b->engine, r->md[i], &pub, &plen) != NIXL_SUCCESS)
                plen = 0;
            if (plen > NIXL_MD_MAX_KEY_BYTES) plen = 0;
            _nixl_w8(w, (uint64_t)mdidx[i]);
            _nixl_wle(w, plen, 2);
            _nixl_wbytes(w, pub, plen);
        }
    }
}

static nixl_status_t _nixl_md_encode(nixl_agent_t *a, _nixl_region *const *regs, size_t nreg, unsigned bemask,
                                     int with_conn, unsigned flags, void **blob, size_t *len) {
    _nixl_wr w;
    size_t total;
    unsigned char *buf;
    w.p = NULL;
    w.pos = 0;
    _nixl_md_write(a, &w, regs, nreg, bemask, with_conn, flags);
    total = w.pos + 4;
    if (total > NIXL_MD_MAX_BLOB_BYTES) {
        _nixl_log(a, NIXL_LOG_ERROR, "get_local_md: %zu bytes of metadata exceed the %u-byte limit", total,
                  NIXL_MD_MAX_BLOB_BYTES);
        return NIXL_ERR_NOT_SUPPORTED;
    }
    buf = (unsigned char *)_nixl_alloc(a, total);
    if (!buf) return NIXL_ERR_BACKEND;
    w.p = buf;
    w.pos = 0;
    _nixl_md_write(a, &w, regs, nreg, bemask, with_conn, flags);
    w.pos = 8;
    _nixl_wle(&w, total, 4);
    w.pos = total - 4;
    _nixl_wle(&w, _nixl_crc32(buf, total - 4), 4);
    *blob = buf;
    *len = total;
    return NIXL_SUCCESS;
}

NIXL_API nixl_status_t nixl_get_local_md(nixl_agent_t *agent, void **blob, size_t *len) {
    nixl_status_t st;
    if (!agent || !blob || !len) return NIXL_ERR_INVALID_PARAM;
    _nixl_lock(agent);
    st = _nixl_md_encode(agent, agent->local.v, agent->local.n, (1u << agent->nbe) - 1, 1, 0, blob, len);
    _nixl_unlock(agent);
    return st;
}

static int _nixl_ptr_qcmp(const void *x, const void *y) {
    uintptr_t a = (uintptr_t) * (void *const *)x, b = (uintptr_t) * (void *const *)y;
    return a < b ? -1 : a > b;
}

static nixl_status_t _nixl_partial_md_locked(nixl_agent_t *a, const nixl_dlist_t *l, const nixl_opt_args_t *opt,
                                             void **blob, size_t *len) {
    nixl_backend_t *order[NIXL_MAX_BACKENDS];
    _nixl_region **regs;
    size_t i, n = 0;
    int nb;
    nixl_status_t st;
    if ((st = _nixl_check_dlist(a, "get_local_partial_md", l)) != NIXL_SUCCESS) return st;
    if ((st = _nixl_backend_order(a, "get_local_partial_md", opt, order, &nb)) != NIXL_SUCCESS) return st;
    regs = (_nixl_region **)_nixl_alloc_array(a, l->count ? l->count : 1, sizeof *regs);
    if (!regs) return NIXL_ERR_BACKEND;
    for (i = 0; i < l->count; i++) {
        const nixl_desc_t *d = &l->descs[i];
        _nixl_region *r;
        if ((st = _nixl_check_desc(a, "get_local_partial_md", l->mem, d, i)) != NIXL_SUCCESS) goto out;
        r = _nixl_table_find_containing(&a->local, l->mem, d->addr, d->len, d->dev_id);
        if (!r) {
            _nixl_log(a, NIXL_LOG_ERROR, "get_local_partial_md: descriptor %zu (0x%llx+%zu) is not registered", i,
                      (unsigned long long)d->addr, d->len);
            st = NIXL_ERR_NOT_FOUND;
            goto out;
        }
        regs[n++] = r;
    }
    if (n > 1) qsort(regs, n, sizeof *regs, _nixl_ptr_qcmp);
    {
        size_t u = 0;
        for (i = 0; i < n; i++)
            if (u == 0 || regs[u - 1] != regs[i]) regs[u++] = regs[i];
        n = u;
    }
    st = _nixl_md_encode(a, regs, n, _nixl_order_mask(order, nb), opt && opt->include_conn_info,
                         NIXL_MD_FLAG_PARTIAL, blob, len);
out:
    _nixl_free(a, regs);
    return st;
}

NIXL_API nixl_status_t nixl_get_local_partial_md(nixl_agent_t *agent, const nixl_dlist_t *descs,
                                                 const nixl_opt_args_t *opt, void **blob, size_t *len) {
    nixl_status_t st;
    if (!agent || !blob || !len) return NIXL_ERR_INVALID_PARAM;
    _nixl_lock(agent);
    st = _nixl_partial_md_locked(agent, descs, opt, blob, len);
    _nixl_unlock(agent);
    return st;
}

NIXL_API void nixl_free_md(nixl_agent_t *agent, void *blob) {
    if (agent) _nixl_free(agent, blob);
}

// >>metadata-remote

static _nixl_remote *_nixl_remote_find(nixl_agent_t *a, const char *name) {
    _nixl_remote *rm;
    for (rm = a->remotes; rm; rm = rm->next)
        if (!strcmp(rm->name, name)) return rm;
    return NULL;
}

static void _nixl_remote_unref(nixl_agent_t *a, _nixl_remote *rm) {
    if (--rm->refs > 0) return;
    _nixl_free(a, rm->name);
    _nixl_free(a, rm);
}

static void _nixl_remote_invalidate(nixl_agent_t *a, _nixl_remote *rm, nixl_status_t why) {
    _nixl_remote **pp;
    size_t k;
    int i;
    for (k = 0; k < rm->regions.n; k++) {
        _nixl_region *r = rm->regions.v[k];
        for (i = 0; i < a->nbe; i++)
            if (r->mask & (1u << i)) a->be[i]->ops->unload_md(a->be[i]->engine, r->md[i]);
        r->mask = 0;
        r->dead = 1;
        _nixl_region_unref(a, r);
    }
    _nixl_table_free(a, &rm->regions);
    for (i = 0; i < a->nbe; i++) {
        if ((rm->loaded_mask & (1u << i)) && a->be[i]->ops->disconnect)
            a->be[i]->ops->disconnect(a->be[i]->engine, rm->name);
        _nixl_free(a, rm->conn[i]);
        rm->conn[i] = NULL;
    }
    rm->conn_mask = rm->loaded_mask = 0;
    rm->dead = 1;
    rm->dead_why = why;
    for (pp = &a->remotes; *pp; pp = &(*pp)->next)
        if (*pp == rm) {
            *pp = rm->next;
            break;
        }
    a->epoch++;
    _nixl_log(a, why == NIXL_ERR_REMOTE_DISCONNECT ? NIXL_LOG_WARN : NIXL_LOG_INFO,
              "metadata of %s invalidated (%s)", rm->name, why == NIXL_ERR_REMOTE_DISCONNECT ? "peer down" : "by request");
    _nixl_remote_unref(a, rm);
}

static void _nixl_process_downs(nixl_agent_t *a) {
    a->in_downs = 1;
    while (a->downs) {
        _nixl_down *d = a->downs;
        _nixl_remote *rm;
        a->downs = d->next;
        rm = _nixl_remote_find(a, d->name);
        if (rm) _nixl_remote_invalidate(a, rm, NIXL_ERR_REMOTE_DISCONNECT);
        _nixl_free(a, d);
    }
    a->in_downs = 0;
}

/* local backend index for each metadata backend section, -1 if absent */
static void _nixl_md_map_backends(nixl_agent_t *a, const _nixl_md *md, int *map) {
    size_t j;
    int i;
    for (j = 0; j < md->nbe; j++) {
        map[j] = -1;
        for (i = 0; i < a->nbe; i++)
            if (strlen(a->be[i]->ops->name) == md->be[j].name_len &&
                !memcmp(a->be[i]->ops->name, md->be[j].name, md->be[j].name_len))
                map[j] = i;
    }
}

static int _nixl_bytes_eq(const void *x, size_t xl, const void *y, size_t yl) {
    return xl == yl && (xl == 0 || !memcmp(x, y, xl));
}

/* NIXL's rules for a known agent: nothing that was loaded may change. */
static nixl_status_t _nixl_md_check_conflicts(nixl_agent_t *a, const _nixl_remote *rm, const _nixl_md *md,
                                              const int *map) {
    size_t j, k;
    for (j = 0; j < md->nbe; j++) {
        int i = map[j];
        if (i < 0 || md->be[j].conn_len == 0 || !(rm->conn_mask & (1u << i))) continue;
        if (!_nixl_bytes_eq(rm->conn[i], rm->conn_len[i], md->be[j].conn, md->be[j].conn_len)) {
            _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_MD_CONN_INFO_CHANGED,
                       "load_remote_md: %s: connection info for %s changed; invalidate it first",
                      md->name, a->be[i]->ops->name);
            return NIXL_ERR_NOT_ALLOWED;
        }
    }
    for (k = 0; k < md->nreg; k++) {
        const _nixl_md_reg *g = &md->reg[k];
        long at = _nixl_table_find_exact(&rm->regions, &g->s);
        const _nixl_region *r;
        if (at < 0) continue;
        r = rm->regions.v[at];
        for (j = 0; j < g->nkeys; j++) {
            const _nixl_md_key *key = &md->keys[g->first_key + j];
            int i = map[key->be];
            if (i < 0 || !(r->key_mask & (1u << i))) continue;
            if (!_nixl_bytes_eq(r->key[i], r->key_len[i], key->p, key->len)) {
                _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_MD_DIFFERENT_PUBLIC, "load_remote_md: %s: region 0x%llx+%zu came back with different %s public data",
                          md->name, (unsigned long long)g->s.addr, g->s.len, a->be[i]->ops->name);
                return NIXL_ERR_NOT_ALLOWED;
            }
        }
    }
    return NIXL_SUCCESS;
}

static int _nixl_md_reg_qcmp(const void *x, const void *y) {
    return _nixl_span_cmp(&(*(const _nixl_md_reg *const *)x)->s, &(*(const _nixl_md_reg *const *)y)->s);
}

static nixl_status_t _nixl_md_check_duplicates(nixl_agent_t *a, const _nixl_md *md) {
    const _nixl_md_reg **v;
    size_t k;
    nixl_status_t st = NIXL_SUCCESS;
    if (md->nreg < 2) return NIXL_SUCCESS;
    v = (const _nixl_md_reg **)_nixl_alloc_array(a, md->nreg, sizeof *v);
    if (!v) return NIXL_ERR_BACKEND;
    for (k = 0; k < md->nreg; k++) v[k] = &md->reg[k];
    qsort(v, md->nreg, sizeof *v, _nixl_md_reg_qcmp);
    for (k = 1; k < md->nreg && st == NIXL_SUCCESS; k++)
        if (_nixl_span_cmp(&v[k - 1]->s, &v[k]->s) == 0) {
            _nixl_log(a, NIXL_LOG_ERROR, "load_remote_md: %s lists region 0x%llx+%zu twice", md->name,
                      (unsigned long long)v[k]->s.addr, v[k]->s.len);
            st = NIXL_ERR_INVALID_PARAM;
        }
    _nixl_free(a, v);
    return st;
}

/* Loads connection info and region keys into the backends wherever both
   are known and not loaded yet. Failures are logged; the region then simply
   is not reachable through that backend. */
static void _nixl_remote_sync_backends(nixl_agent_t *a, _nixl_remote *rm) {
    size_t k;
    int i;
    for (i = 0; i < a->nbe; i++) {
        nixl_backend_t *b = a->be[i];
        nixl_status_t st;
        if (!(rm->conn_mask & (1u << i)) || (rm->loaded_mask & (1u << i))) continue;
        st = b->ops->load_remote_conn_info ? b->ops->load_remote_conn_info(b->engine, rm->name, rm->conn[i],
                                                                          rm->conn_len[i])
                                           : NIXL_SUCCESS;
        if (st == NIXL_SUCCESS) rm->loaded_mask |= 1u << i;
        else _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_MD_CONN_INFO_REFUSED, "load_remote_md: %s refused %s's connection info: %s", b->ops->name,
                       rm->name, nixl_status_str(st));
    }
    for (k = 0; k < rm->regions.n; k++) {
        _nixl_region *r = rm->regions.v[k];
        unsigned todo = r->key_mask & rm->loaded_mask & ~r->mask;
        for (i = 0; todo && i < a->nbe; i++) {
            nixl_backend_t *b = a->be[i];
            nixl_desc_t d;
            nixl_status_t st;
            if (!(todo & (1u << i))) continue;
            d.addr = r->s.addr;
            d.len = r->s.len;
            d.dev_id = r->s.dev_id;
            st = b->ops->load_remote_md(b->engine, rm->name, r->s.mem, &d, r->key[i], r->key_len[i], &r->md[i]);
            if (st == NIXL_SUCCESS) r->mask |= 1u << i;
            else _nixl_log(a, NIXL_LOG_ERROR, "load_remote_md: %s could not load %s region 0x%llx+%zu: %s",
                           b->ops->name, rm->name, (unsigned long long)r->s.addr, r->s.len, nixl_status_str(st));
        }
    }
}

/* What applying a blob needs allocated, gathered before anything changes:
   copies of new connection info, new region records, copies of new keys
   (indexed like md->keys). */
typedef struct _nixl_md_stage {
    unsigned char *conn[NIXL_MAX_BACKENDS];
    _nixl_region **reg; /* per md region: a new record, or NULL (known region) */
    unsigned char **key; /* per md key: a copy to install, or NULL */
} _nixl_md_stage;

static void _nixl_md_stage_free(nixl_agent_t *a, _nixl_md_stage *st, const _nixl_md *md) {
    size_t k;
    int i;
    for (i = 0; i < NIXL_MAX_BACKENDS; i++) _nixl_free(a, st->conn[i]);
    for (k = 0; st->reg && k < md->nreg; k++) _nixl_free(a, st->reg[k]);
    for (k = 0; st->key && k < md->nkeys; k++) _nixl_free(a, st->key[k]);
    _nixl_free(a, st->reg);
    _nixl_free(a, st->key);
}

/* The region of rm a blob region names: known, or staged (new). */
static _nixl_region *_nixl_md_stage_region(const _nixl_remote *rm, const _nixl_md_stage *st, size_t k,
                                           const _nixl_md_reg *g) {
    long at = _nixl_table_find_exact(&rm->regions, &g->s);
    return at >= 0 ? rm->regions.v[at] : st->reg[k];
}

/* Allocates everything the blob adds; nothing of rm changes. */
static nixl_status_t _nixl_md_stage_make(nixl_agent_t *a, const _nixl_remote *rm, const _nixl_md *md,
                                         const int *map, _nixl_md_stage *st) {
    size_t j, k;
    memset(st, 0, sizeof *st);
    st->reg = (_nixl_region **)_nixl_alloc(a, (md->nreg ? md->nreg : 1) * sizeof *st->reg);
    st->key = (unsigned char **)_nixl_alloc(a, (md->nkeys ? md->nkeys : 1) * sizeof *st->key);
    if (!st->reg || !st->key) return NIXL_ERR_BACKEND;
    for (j = 0; j < md->nbe; j++) {
        int i = map[j];
        if (i < 0 || md->be[j].conn_len == 0 || (rm->conn_mask & (1u << i)) || st->conn[i]) continue;
        if (!(st->conn[i] = (unsigned char *)_nixl_memdup(a, md->be[j].conn, md->be[j].conn_len)))
            return NIXL_ERR_BACKEND;
    }
    for (k = 0; k < md->nreg; k++) {
        const _nixl_md_reg *g = &md->reg[k];
        const _nixl_region *r;
        unsigned staged = 0;
        if (_nixl_table_find_exact(&rm->regions, &g->s) < 0) {
            if (!(st->reg[k] = (_nixl_region *)_nixl_alloc(a, sizeof *st->reg[k]))) return NIXL_ERR_BACKEND;
            st->reg[k]->s = g->s;
            st->reg[k]->refs = 1;
        }
        r = _nixl_md_stage_region(rm, st, k, g);
        for (j = 0; j < g->nkeys; j++) {
            const _nixl_md_key *key = &md->keys[g->first_key + j];
            int i = map[key->be];
            if (i < 0 || (r->key_mask & (1u << i)) || (staged & (1u << i))) continue;
            if (!(st->key[g->first_key + j] = (unsigned char *)_nixl_memdup(a, key->p, key->len)))
                return NIXL_ERR_BACKEND;
            staged |= 1u << i;
        }
    }
    return NIXL_SUCCESS;
}

/* Installs what was staged: no allocation, cannot fail. */
static void _nixl_md_stage_commit(const _nixl_md *md, const int *map, _nixl_md_stage *st, _nixl_remote *rm) {
    size_t j, k, added = 0;
    int i;
    for (i = 0; i < NIXL_MAX_BACKENDS; i++) {
        if (!st->conn[i]) continue;
        for (j = 0; j < md->nbe; j++)
            if (map[j] == i) rm->conn_len[i] = md->be[j].conn_len;
        rm->conn[i] = st->conn[i];
        rm->conn_mask |= 1u << i;
        st->conn[i] = NULL;
    }
    for (k = 0; k < md->nreg; k++) {
        const _nixl_md_reg *g = &md->reg[k];
        _nixl_region *r = _nixl_md_stage_region(rm, st, k, g);
        if (st->reg[k]) {
            rm->regions.v[rm->regions.n + added++] = st->reg[k];
            st->reg[k] = NULL;
        }
        for (j = 0; j < g->nkeys; j++) {
            const _nixl_md_key *key = &md->keys[g->first_key + j];
            unsigned char **copy = &st->key[g->first_key + j];
            if (!*copy) continue;
            i = map[key->be];
            r->key[i] = *copy;
            r->key_len[i] = key->len;
            r->key_mask |= 1u << i;
            *copy = NULL;
        }
    }
    rm->regions.n += added;
}

/* All or nothing: every allocation happens before rm changes; on failure
   rm is as it was. Backends then load what they can (their refusals are
   logged; the region is then not reachable through that backend). */
static nixl_status_t _nixl_md_apply(nixl_agent_t *a, _nixl_remote *rm, const _nixl_md *md, const int *map) {
    _nixl_md_stage st;
    nixl_status_t s;
    if (!_nixl_table_reserve(a, &rm->regions, md->nreg)) return NIXL_ERR_BACKEND;
    s = _nixl_md_stage_make(a, rm, md, map, &st);
    if (s != NIXL_SUCCESS) {
        _nixl_log(a, NIXL_LOG_ERROR, "load_remote_md(%s): out of memory; nothing of the blob was loaded", md->name);
        _nixl_md_stage_free(a, &st, md);
        return s;
    }
    _nixl_md_stage_commit(md, map, &st, rm);
    _nixl_md_stage_free(a, &st, md);
    _nixl_table_sort(&rm->regions);
    _nixl_remote_sync_backends(a, rm);
    return NIXL_SUCCESS;
}

/* Regions of md that rm (NULL: a new peer) does not hold yet. */
static size_t _nixl_md_new_regions(const _nixl_remote *rm, const _nixl_md *md) {
    size_t k, n = 0;
    if (!rm) return md->nreg;
    for (k = 0; k < md->nreg; k++) n += _nixl_table_find_exact(&rm->regions, &md->reg[k].s) < 0;
    return n;
}

/* What loading md into rm costs, against the limits (remote_regions_max
   per peer, remotes_max peers, remote_md_bytes in all): the regions it
   adds, and the blob once for a new peer (a re-send of what is loaded
   costs nothing). */
static size_t _nixl_md_cost(const _nixl_remote *rm, const _nixl_md *md, size_t blob_len) {
    return (rm ? 0 : blob_len) + _nixl_md_new_regions(rm, md) * (sizeof(_nixl_region) + 2 * sizeof(void *) + 64);
}

static nixl_status_t _nixl_md_check_limits(nixl_agent_t *a, const _nixl_remote *rm, const _nixl_md *md,
                                           size_t cost) {
    const _nixl_remote *r;
    size_t peers = 0, bytes = 0;
    for (r = a->remotes; r; r = r->next) {
        peers++;
        bytes += r->bytes;
    }
    if (rm && rm->regions.n + _nixl_md_new_regions(rm, md) > _nixl_max_peer_regions(a)) {
        _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_MD_REGIONS_LIMIT, "load_remote_md(%s): %zu regions loaded + %zu new would pass remote_regions_max "
                  "(%zu)", md->name, rm->regions.n, _nixl_md_new_regions(rm, md), _nixl_max_peer_regions(a));
        return NIXL_ERR_NOT_ALLOWED;
    }
    if (!rm && peers >= _nixl_max_remotes(a)) {
        _nixl_log(a, NIXL_LOG_ERROR, "load_remote_md(%s): %zu peers loaded, remotes_max is %zu", md->name, peers,
                  _nixl_max_remotes(a));
        return NIXL_ERR_NOT_ALLOWED;
    }
    if (bytes + cost > _nixl_max_md_bytes(a)) {
        _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_MD_BYTES_LIMIT, "load_remote_md(%s): %zu bytes of remote metadata held + %zu would pass "
                  "remote_md_bytes (%zu)", md->name, bytes, cost, _nixl_max_md_bytes(a));
        return NIXL_ERR_NOT_ALLOWED;
    }
    return NIXL_SUCCESS;
}

/* Without a secret, a peer loaded over the side channel belongs to the
   address it came from: another address may not add to it. */
static nixl_status_t _nixl_md_check_origin(nixl_agent_t *a, const _nixl_remote *rm, const char *origin) {
    if (a->token || !origin || !strcmp(rm->origin, origin)) return NIXL_SUCCESS;
    _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_MD_NAME_OWNED, "load_remote_md: %s pushed metadata of %s, which %s: refused (without an auth "
              "token a name belongs to whoever brought it)", origin, rm->name,
              rm->origin[0] ? "came from another address" : "the application loaded");
    return NIXL_ERR_NOT_ALLOWED;
}

/* The locked half of a load: md was decoded outside the lock. origin: the
   peer's address for side-channel loads, NULL for the application's. */
static nixl_status_t _nixl_load_md_apply(nixl_agent_t *a, const _nixl_md *md, size_t blob_len, const char *origin,
                                         char *out_name, size_t cap) {
    _nixl_remote *rm;
    int map[NIXL_MD_MAX_BACKENDS], created = 0;
    size_t cost;
    nixl_status_t st;
    if (!strcmp(md->name, a->name)) {
        _nixl_log(a, NIXL_LOG_ERROR, "load_remote_md: the blob is this agent's own (%s); loopback needs no metadata",
                  md->name);
        return NIXL_ERR_INVALID_PARAM;
    }
    if (out_name && cap <= strlen(md->name)) {
        _nixl_log(a, NIXL_LOG_ERROR, "load_remote_md: remote_name_cap %zu cannot hold '%s'", cap, md->name);
        return NIXL_ERR_INVALID_PARAM;
    }
    _nixl_md_map_backends(a, md, map);
    if ((st = _nixl_md_check_duplicates(a, md)) != NIXL_SUCCESS) return st;
    rm = _nixl_remote_find(a, md->name);
    cost = _nixl_md_cost(rm, md, blob_len);
    if (rm && (st = _nixl_md_check_origin(a, rm, origin)) != NIXL_SUCCESS) return st;
    if (rm && (st = _nixl_md_check_conflicts(a, rm, md, map)) != NIXL_SUCCESS) return st;
    if ((st = _nixl_md_check_limits(a, rm, md, cost)) != NIXL_SUCCESS) return st;
    if (!rm) {
        rm = (_nixl_remote *)_nixl_alloc(a, sizeof *rm);
        if (!rm || !(rm->name = _nixl_strdup(a, md->name))) {
            _nixl_free(a, rm);
            return NIXL_ERR_BACKEND;
        }
        rm->refs = 1;
        if (origin) snprintf(rm->origin, sizeof rm->origin, "%s", origin);
        created = 1;
    }
    st = _nixl_md_apply(a, rm, md, map);
    if (st == NIXL_SUCCESS) rm->bytes += cost;
    if (created && st == NIXL_SUCCESS) {
        rm->next = a->remotes;
        a->remotes = rm;
    } else if (created) { /* a new peer that failed to load is not loaded at all */
        _nixl_table_free(a, &rm->regions);
        _nixl_remote_unref(a, rm);
    }
    if (st == NIXL_SUCCESS && out_name) memcpy(out_name, md->name, strlen(md->name) + 1);
    return st;
}

/* Decodes outside the agent lock, applies under it. want_name: refuse
   metadata of any other agent (a fetch asked for that one). */
static nixl_status_t _nixl_load_md(nixl_agent_t *a, const void *blob, size_t len, const char *origin,
                                   const char *want_name, char *out_name, size_t cap) {
    _nixl_md *md = NULL;
    const char *why = NULL;
    nixl_status_t st = _nixl_md_decode(a, blob, len, &md, &why);
    _nixl_lock(a);
    if (st != NIXL_SUCCESS) {
        _nixl_logi(a, NIXL_LOG_ERROR, _nixl_why_item(why, NIXL_LOGITEM_MD_MALFORMED),
                   "load_remote_md: refusing a %zu-byte blob%s%s: %s", len, origin ? " from " : "",
                  origin ? origin : "", why);
    } else if (want_name && strcmp(md->name, want_name) != 0) {
        _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_FETCH_WRONG_NAME, "fetch_remote_md: %s answered as '%s', not '%s'", origin ? origin : "etcd",
                  md->name, want_name);
        st = NIXL_ERR_MISMATCH;
    } else {
        st = _nixl_load_md_apply(a, md, len, origin, out_name, cap);
    }
    _nixl_unlock(a);
    _nixl_md_release(a, md);
    return st;
}

NIXL_API nixl_status_t nixl_load_remote_md(nixl_agent_t *agent, const void *blob, size_t len, char *remote_name,
                                           size_t remote_name_cap) {
    if (!agent) return NIXL_ERR_INVALID_PARAM;
    return _nixl_load_md(agent, blob, len, NULL, NULL, remote_name, remote_name_cap);
}

static nixl_status_t _nixl_load_md_from(nixl_agent_t *a, const void *blob, size_t len, const char *origin) {
    return _nixl_load_md(a, blob, len, origin, NULL, NULL, 0);
}

/* An INVALIDATE over the side channel. Without a secret only the address
   the metadata came from may invalidate it; metadata the application loaded
   is the application's to invalidate. */
static nixl_status_t _nixl_invalidate_from(nixl_agent_t *a, const char *name, const char *origin) {
    _nixl_remote *rm;
    nixl_status_t st = NIXL_SUCCESS;
    _nixl_lock(a);
    rm = _nixl_remote_find(a, name);
    if (!rm) {
        _nixl_log(a, NIXL_LOG_ERROR, "listener: %s invalidates %s, which is not loaded", origin, name);
        st = NIXL_ERR_NOT_FOUND;
    } else if (!a->token && strcmp(rm->origin, origin) != 0) {
        _nixl_log(a, NIXL_LOG_ERROR, "listener: %s may not invalidate %s: %s (set an auth token to let any "
                  "authenticated peer do it)", origin, name, rm->origin[0] ? "it came from another address"
                  : "the application loaded it");
        st = NIXL_ERR_NOT_ALLOWED;
    } else {
        _nixl_remote_invalidate(a, rm, NIXL_ERR_NOT_FOUND);
    }
    _nixl_unlock(a);
    return st;
}

NIXL_API nixl_status_t nixl_invalidate_remote_md(nixl_agent_t *agent, const char *remote) {
    _nixl_remote *rm;
    if (!agent || !remote) return NIXL_ERR_INVALID_PARAM;
    _nixl_lock(agent);
    rm = _nixl_remote_find(agent, remote);
    if (rm) _nixl_remote_invalidate(agent, rm, NIXL_ERR_NOT_FOUND);
    else _nixl_log(agent, NIXL_LOG_ERROR, "invalidate_remote_md: no metadata of %s is loaded", remote);
    _nixl_unlock(agent);
    return rm ? NIXL_SUCCESS : NIXL_ERR_NOT_FOUND;
}

NIXL_API nixl_status_t nixl_check_remote_md(nixl_agent_t *agent, const char *remote, const nixl_dlist_t *descs) {
    _nixl_remote *rm;
    nixl_status_t st = NIXL_SUCCESS;
    size_t i;
    if (!agent || !remote) return NIXL_ERR_INVALID_PARAM;
    _nixl_lock(agent);
    rm = _nixl_remote_find(agent, remote);
    if (!rm) st = NIXL_ERR_NOT_FOUND;
    else if (descs && (st = _nixl_check_dlist(agent, "check_remote_md", descs)) == NIXL_SUCCESS) {
        for (i = 0; i < descs->count && st == NIXL_SUCCESS; i++) {
            const nixl_desc_t *d = &descs->descs[i];
            const _nixl_region *r;
            if (d->len == 0 || d->addr + d->len < d->addr) {
                st = NIXL_ERR_NOT_FOUND;
                break;
            }
            r = _nixl_table_find_containing(&rm->regions, descs->mem, d->addr, d->len, d->dev_id);
            if (!r || !r->mask) st = NIXL_ERR_NOT_FOUND;
        }
    }
    _nixl_unlock(agent);
    return st;
}

NIXL_API nixl_status_t nixl_make_connection(nixl_agent_t *agent, const char *remote, const nixl_opt_args_t *opt) {
    nixl_backend_t *order[NIXL_MAX_BACKENDS];
    nixl_status_t st, result = NIXL_ERR_NOT_FOUND;
    _nixl_remote *rm;
    int i, n;
    if (!agent || !remote) return NIXL_ERR_INVALID_PARAM;
    _nixl_lock(agent);
    st = _nixl_backend_order(agent, "make_connection", opt, order, &n);
    rm = _nixl_remote_find(agent, remote);
    if (st != NIXL_SUCCESS) result = st;
    else if (!rm) _nixl_log(agent, NIXL_LOG_ERROR, "make_connection: no metadata of %s is loaded", remote);
    for (i = 0; rm && st == NIXL_SUCCESS && i < n; i++) {
        nixl_backend_t *b = order[i];
        nixl_status_t cs;
        if (!(rm->loaded_mask & (1u << b->idx)) || !b->ops->connect) continue;
        cs = b->ops->connect(b->engine, remote);
        if (cs == NIXL_SUCCESS || cs == NIXL_IN_PROG) result = NIXL_SUCCESS;
        else if (result != NIXL_SUCCESS) result = cs;
    }
    _nixl_unlock(agent);
    return result;
}

// >>side-channel
/* Frame: u32 magic "NXSC", u16 version, u8 command, u8 reserved, u32 MAC
   length (0, or 32 with a secret), u32 payload length (little-endian); then
   the header's MAC, the payload, and the MAC of header and payload digest.

   A connection carries HELLO (the client's nonce), CHALLENGE (the
   listener's nonce), one request, one REPLY (i32 status, then data). With a
   secret, every frame after HELLO carries both MACs: HMAC-SHA256 keyed by
   the secret over both nonces, the direction, the header (and the payload's
   SHA-256). So the secret never crosses the wire, each side proves it knows
   it, a frame replayed on another connection fails (fresh nonces), a frame
   cannot be reflected back (direction), and the listener knows a header is
   genuine before it takes in the payload. */
#define NIXL_SC_MAGIC 0x4353584eu
#define NIXL_SC_VERSION 2
#define NIXL_SC_HDR 16
#define NIXL_SC_NONCE 32
#define NIXL_SC_MAX_PAYLOAD (64u << 20)
#define NIXL_SC_MAX_CONNS 256
enum {
    NIXL_SC_SEND_MD = 1,
    NIXL_SC_FETCH_MD = 2,
    NIXL_SC_INVALIDATE = 3,
    NIXL_SC_REPLY = 4,
    NIXL_SC_HELLO = 5,
    NIXL_SC_CHALLENGE = 6
};
enum { _NIXL_SC_C2S = 1, _NIXL_SC_S2C = 2 }; /* direction, inside every MAC */

typedef struct {
    unsigned char c[NIXL_SC_NONCE], s[NIXL_SC_NONCE]; /* client's, listener's */
} _nixl_sc_nonces;

static int _nixl_sc_timeout_ms(const nixl_agent_t *a) {
    return a->cfg.sc_timeout_ms > 0 ? a->cfg.sc_timeout_ms : 5000;
}

// >>side-channel-io

static void _nixl_sc_put_header(unsigned char *h, unsigned cmd, size_t mac, size_t pay) {
    _nixl_wr w;
    w.p = h;
    w.pos = 0;
    _nixl_wle(&w, NIXL_SC_MAGIC, 4);
    _nixl_wle(&w, NIXL_SC_VERSION, 2);
    _nixl_w8(&w, cmd);
    _nixl_w8(&w, 0);
    _nixl_wle(&w, mac, 4);
    _nixl_wle(&w, pay, 4);
}

/* Validates a frame header. NULL on success, else why it is refused. */
static const char *_nixl_sc_parse_header(const unsigned char *h, unsigned *cmd, size_t *mac, size_t *pay) {
    _nixl_rd r;
    r.p = h;
    r.len = NIXL_SC_HDR;
    r.pos = 0;
    r.ok = 1;
    if (_nixl_rle(&r, 4) != NIXL_SC_MAGIC) return _NIXL_WHY(SC_BAD_MAGIC);
    if (_nixl_rle(&r, 2) != NIXL_SC_VERSION) return "unsupported version";
    *cmd = (unsigned)_nixl_rle(&r, 1);
    if (_nixl_rle(&r, 1) != 0) return "reserved byte set";
    *mac = (size_t)_nixl_rle(&r, 4);
    *pay = (size_t)_nixl_rle(&r, 4);
    if (*cmd < NIXL_SC_SEND_MD || *cmd > NIXL_SC_CHALLENGE) return "unknown command";
    if (*mac != 0 && *mac != NIXL_MAC_LEN) return "bad MAC length";
    if (*pay > NIXL_SC_MAX_PAYLOAD) return _NIXL_WHY(SC_PAYLOAD_LIMIT);
    return NULL;
}

#define _NIXL_SC_MAC_MSG (8 + 2 * NIXL_SC_NONCE + NIXL_SC_HDR + 32)

/* What the MAC of a header (digest NULL), or of a header and its payload's
   SHA-256, covers: in m, its length returned. */
static size_t _nixl_sc_mac_msg(int dir, const _nixl_sc_nonces *n, const unsigned char *hdr,
                               const unsigned char *digest, unsigned char m[_NIXL_SC_MAC_MSG]) {
    size_t len = 8;
    memcpy(m, "NXSC", 4);
    m[4] = (unsigned char)NIXL_SC_VERSION;
    m[5] = (unsigned char)dir;
    m[6] = digest ? 2 : 1;
    m[7] = 0;
    memcpy(m + len, n->c, NIXL_SC_NONCE);
    memcpy(m + len + NIXL_SC_NONCE, n->s, NIXL_SC_NONCE);
    len += 2 * NIXL_SC_NONCE;
    memcpy(m + len, hdr, NIXL_SC_HDR);
    len += NIXL_SC_HDR;
    if (digest) {
        memcpy(m + len, digest, 32);
        len += 32;
    }
    return len;
}

/* -1 without a secret */
static int _nixl_sc_mac(const nixl_agent_t *a, int dir, const _nixl_sc_nonces *n, const unsigned char *hdr,
                        const unsigned char *digest, unsigned char out[NIXL_MAC_LEN]) {
    unsigned char m[_NIXL_SC_MAC_MSG];
    return _nixl_auth_mac(a, m, _nixl_sc_mac_msg(dir, n, hdr, digest, m), out);
}

static int _nixl_sc_mac_ok(const nixl_agent_t *a, int dir, const _nixl_sc_nonces *n, const unsigned char *hdr,
                           const unsigned char *digest, const unsigned char *mac) {
    unsigned char m[_NIXL_SC_MAC_MSG];
    return _nixl_auth_check(a, m, _nixl_sc_mac_msg(dir, n, hdr, digest, m), mac);
}

/* the MAC over the header and the digest of its payload */
static int _nixl_sc_body_mac_ok(const nixl_agent_t *a, int dir, const _nixl_sc_nonces *n, const unsigned char *hdr,
                                const void *pay, size_t len, const unsigned char *mac) {
    unsigned char d[32];
    _nixl_sha256(pay, len, d);
    return _nixl_sc_mac_ok(a, dir, n, hdr, d, mac);
}

/* A whole frame in one buffer (agent allocator): header, MACs when the
   agent has a secret (never on HELLO: there is nothing to prove yet). */
static unsigned char *_nixl_sc_frame(nixl_agent_t *a, int dir, const _nixl_sc_nonces *n, unsigned cmd,
                                     const void *pay, size_t len, size_t *out_len) {
    size_t mac = a->token && cmd != NIXL_SC_HELLO ? NIXL_MAC_LEN : 0;
    unsigned char *f = (unsigned char *)_nixl_alloc(a, NIXL_SC_HDR + 2 * mac + len), d[32];
    if (!f) return NULL;
    _nixl_sc_put_header(f, cmd, mac, len);
    if (len) memcpy(f + NIXL_SC_HDR + mac, pay, len);
    if (mac) {
        _nixl_sha256(pay, len, d);
        if (_nixl_sc_mac(a, dir, n, f, NULL, f + NIXL_SC_HDR) != 0 ||
            _nixl_sc_mac(a, dir, n, f, d, f + NIXL_SC_HDR + mac + len) != 0) {
            _nixl_free(a, f);
            return NULL;
        }
    }
    *out_len = NIXL_SC_HDR + 2 * mac + len;
    return f;
}

static int _nixl_sc_wait(int fd, short ev, uint64_t deadline_us) {
    struct pollfd p;
    uint64_t now = nixl_now_us();
    int ms;
    if (now >= deadline_us) return 0;
    ms = (int)((deadline_us - now + 999) / 1000);
    p.fd = fd;
    p.events = ev;
    p.revents = 0;
    return poll(&p, 1, ms) > 0;
}

/* blocking-with-deadline I/O on a non-blocking socket; 0 on success */
static int _nixl_sc_io(int fd, void *buf, size_t n, int writing, uint64_t deadline_us) {
    unsigned char *p = (unsigned char *)buf;
    while (n) {
        ssize_t k = writing ? send(fd, p, n, MSG_NOSIGNAL) : recv(fd, p, n, 0);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
            continue;
        }
        if (k == 0) return -1; /* peer closed */
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
        if (!_nixl_sc_wait(fd, writing ? POLLOUT : POLLIN, deadline_us)) return -1;
    }
    return 0;
}

static int _nixl_sc_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL, 0);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static int _nixl_sc_connect(nixl_agent_t *a, const char *ip, uint16_t port, uint64_t deadline_us) {
    struct sockaddr_in sa;
    int fd, err = 0;
    socklen_t el = sizeof err;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1) {
        _nixl_log(a, NIXL_LOG_ERROR, "side channel: '%s' is not an IPv4 address", ip);
        return -1;
    }
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || _nixl_sc_nonblock(fd) != 0) {
        _nixl_log(a, NIXL_LOG_ERROR, "side channel: socket: %s", strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 &&
        (errno != EINPROGRESS || !_nixl_sc_wait(fd, POLLOUT, deadline_us) ||
         getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0)) {
        _nixl_log(a, NIXL_LOG_ERROR, "side channel: connect to %s:%u failed: %s", ip, (unsigned)port,
                  strerror(err ? err : errno ? errno : ETIMEDOUT));
        close(fd);
        return -1;
    }
    return fd;
}

/* Streams a request frame from the caller's buffer, no copy: the header and
   its MAC go first (that is what the listener takes as proof, within its
   1 s), then the payload, then the MAC over header and payload digest,
   which may take a while to compute for a large payload. */
static nixl_status_t _nixl_sc_send_frame(nixl_agent_t *a, int fd, const _nixl_sc_nonces *n, unsigned cmd,
                                         const void *pay, size_t len, uint64_t deadline) {
    size_t mac = a->token && cmd != NIXL_SC_HELLO ? NIXL_MAC_LEN : 0;
    unsigned char head[NIXL_SC_HDR + NIXL_MAC_LEN], tail[NIXL_MAC_LEN], d[32];
    _nixl_sc_put_header(head, cmd, mac, len);
    if (mac && _nixl_sc_mac(a, _NIXL_SC_C2S, n, head, NULL, head + NIXL_SC_HDR) != 0) return NIXL_ERR_BACKEND;
    if (_nixl_sc_io(fd, head, NIXL_SC_HDR + mac, 1, deadline) || (len && _nixl_sc_io(fd, (void *)(uintptr_t)pay, len, 1, deadline)))
        return NIXL_ERR_REMOTE_DISCONNECT;
    if (!mac) return NIXL_SUCCESS;
    _nixl_sha256(pay, len, d);
    if (_nixl_sc_mac(a, _NIXL_SC_C2S, n, head, d, tail) != 0) return NIXL_ERR_BACKEND;
    return _nixl_sc_io(fd, tail, mac, 1, deadline) ? NIXL_ERR_REMOTE_DISCONNECT : NIXL_SUCCESS;
}

/* Reads the listener's frame of command `want` and checks its MACs (a
   CHALLENGE brings the listener's nonce into n first). NULL, or why not. */
static const char *_nixl_sc_recv_frame(nixl_agent_t *a, int fd, _nixl_sc_nonces *n, unsigned want,
                                       unsigned char **pay, size_t *len, uint64_t deadline) {
    unsigned char h[NIXL_SC_HDR], mac1[NIXL_MAC_LEN], mac2[NIXL_MAC_LEN];
    size_t mac = 0;
    unsigned cmd = 0;
    const char *why;
    *pay = NULL;
    *len = 0;
    if (_nixl_sc_io(fd, h, sizeof h, 0, deadline)) return "closed or timed out (a listener that does not know our "
                                                          "auth token closes the connection)";
    if ((why = _nixl_sc_parse_header(h, &cmd, &mac, len)) != NULL) return why;
    if (cmd != want) return want == NIXL_SC_CHALLENGE ? "no challenge: not a listener of this version" : "not a reply";
    if (a->token && !mac) return "the listener has no auth token: refusing to trust it";
    if (!a->token && mac) return _NIXL_WHY(SC_PEER_NEEDS_TOKEN);
    if (want == NIXL_SC_CHALLENGE && *len != NIXL_SC_NONCE) return "malformed challenge";
    *pay = (unsigned char *)_nixl_alloc(a, *len);
    if (!*pay || _nixl_sc_io(fd, mac1, mac, 0, deadline) || _nixl_sc_io(fd, *pay, *len, 0, deadline) ||
        _nixl_sc_io(fd, mac2, mac, 0, deadline))
        return *pay ? "truncated" : "out of memory";
    if (want == NIXL_SC_CHALLENGE) memcpy(n->s, *pay, NIXL_SC_NONCE);
    if (mac && (!_nixl_sc_mac_ok(a, _NIXL_SC_S2C, n, h, NULL, mac1) ||
                !_nixl_sc_body_mac_ok(a, _NIXL_SC_S2C, n, h, *pay, *len, mac2)))
        return _NIXL_WHY(SC_PEER_OTHER_TOKEN);
    return NULL;
}

/* One exchange with a peer's listener: HELLO, CHALLENGE, the request, the
   REPLY. *reply (agent allocator) holds the data after the status, if any. */
static nixl_status_t _nixl_sc_request(nixl_agent_t *a, const char *ip, uint16_t port, unsigned cmd,
                                      const void *payload, size_t len, unsigned char **reply, size_t *reply_len) {
    uint64_t deadline = nixl_now_us() + (uint64_t)_nixl_sc_timeout_ms(a) * 1000u;
    _nixl_sc_nonces n;
    unsigned char *chal = NULL, *rep = NULL;
    size_t chal_len = 0, rep_len = 0;
    const char *why = NULL;
    nixl_status_t st;
    int fd;
    if (reply) *reply = NULL;
    if (reply_len) *reply_len = 0;
    memset(&n, 0, sizeof n);
    if (_nixl_random(n.c, sizeof n.c) != 0) {
        _nixl_log(a, NIXL_LOG_ERROR, "side channel: getrandom failed: no nonce, no exchange");
        return NIXL_ERR_BACKEND;
    }
    fd = _nixl_sc_connect(a, ip, port, deadline);
    if (fd < 0) return NIXL_ERR_REMOTE_DISCONNECT;
    st = _nixl_sc_send_frame(a, fd, &n, NIXL_SC_HELLO, n.c, sizeof n.c, deadline);
    if (st == NIXL_SUCCESS && !(why = _nixl_sc_recv_frame(a, fd, &n, NIXL_SC_CHALLENGE, &chal, &chal_len, deadline)))
        st = _nixl_sc_send_frame(a, fd, &n, cmd, payload, len, deadline);
    if (st == NIXL_SUCCESS && !why) why = _nixl_sc_recv_frame(a, fd, &n, NIXL_SC_REPLY, &rep, &rep_len, deadline);
    if (st == NIXL_SUCCESS && !why && rep_len < 4) why = "reply without a status";
    close(fd);
    _nixl_free(a, chal);
    if (st != NIXL_SUCCESS || why) {
        _nixl_logi(a, NIXL_LOG_ERROR, _nixl_why_item(why, NIXL_LOGITEM_SC_EXCHANGE_FAILED),
                   "side channel: exchange with %s:%u failed: %s", ip, (unsigned)port,
                  why ? why : st == NIXL_ERR_BACKEND ? "out of memory" : "closed or timed out");
        _nixl_free(a, rep);
        return st == NIXL_SUCCESS ? NIXL_ERR_REMOTE_DISCONNECT : st;
    }
    st = (nixl_status_t)(int32_t)((uint32_t)rep[0] | (uint32_t)rep[1] << 8 | (uint32_t)rep[2] << 16 |
                                  (uint32_t)rep[3] << 24);
    if (rep_len > 4 && reply) {
        *reply = (unsigned char *)_nixl_memdup(a, rep + 4, rep_len - 4);
        if (!*reply) st = NIXL_ERR_BACKEND;
        else *reply_len = rep_len - 4;
    }
    _nixl_free(a, rep);
    return st;
}

/* SUCCESS: use the peer's listener (opt->ip/port); IN_PROG: use etcd */
static nixl_status_t _nixl_sc_route(nixl_agent_t *a, const char *what, const nixl_opt_args_t *opt) {
    struct in_addr probe;
    if (!a) return NIXL_ERR_INVALID_PARAM;
    if (opt && opt->ip && *opt->ip) {
        if (inet_pton(AF_INET, opt->ip, &probe) != 1) {
            _nixl_lock(a);
            _nixl_log(a, NIXL_LOG_ERROR, "%s: '%s' is not an IPv4 address", what, opt->ip);
            _nixl_unlock(a);
            return NIXL_ERR_INVALID_PARAM;
        }
        if (opt->port) return NIXL_SUCCESS;
    } else if (a->etcd_on) {
        return NIXL_IN_PROG;
    }
    _nixl_lock(a);
    _nixl_log(a, NIXL_LOG_ERROR, "%s: opt->ip and opt->port must name the peer's listener (or configure etcd)", what);
    _nixl_unlock(a);
    return NIXL_ERR_INVALID_PARAM;
}

/* sends (listener) or puts (etcd) a metadata blob, and frees it */
static nixl_status_t _nixl_sc_publish(nixl_agent_t *a, const nixl_opt_args_t *opt, nixl_status_t route,
                                      const char *label, void *blob, size_t len) {
    nixl_status_t st = route == NIXL_IN_PROG
                           ? _nixl_etcd_put(a, opt && opt->metadata_label ? opt->metadata_label : label, blob, len)
                           : _nixl_sc_request(a, opt->ip, opt->port, NIXL_SC_SEND_MD, blob, len, NULL, NULL);
    nixl_free_md(a, blob);
    return st;
}

NIXL_API nixl_status_t nixl_send_local_md(nixl_agent_t *agent, const nixl_opt_args_t *opt) {
    void *blob = NULL;
    size_t len = 0;
    nixl_status_t route = _nixl_sc_route(agent, "send_local_md", opt), st = route;
    if (route >= 0) st = nixl_get_local_md(agent, &blob, &len);
    return st == NIXL_SUCCESS ? _nixl_sc_publish(agent, opt, route, "metadata", blob, len) : st;
}

NIXL_API nixl_status_t nixl_send_local_partial_md(nixl_agent_t *agent, const nixl_dlist_t *descs,
                                                  const nixl_opt_args_t *opt) {
    void *blob = NULL;
    size_t len = 0;
    nixl_status_t route = _nixl_sc_route(agent, "send_local_partial_md", opt), st = route;
    if (route >= 0) st = nixl_get_local_partial_md(agent, descs, opt, &blob, &len);
    return st == NIXL_SUCCESS ? _nixl_sc_publish(agent, opt, route, "partial", blob, len) : st;
}

NIXL_API nixl_status_t nixl_invalidate_local_md(nixl_agent_t *agent, const nixl_opt_args_t *opt) {
    nixl_status_t route = _nixl_sc_route(agent, "invalidate_local_md", opt);
    if (route == NIXL_IN_PROG) return _nixl_etcd_delete_agent(agent);
    if (route != NIXL_SUCCESS) return route;
    return _nixl_sc_request(agent, opt->ip, opt->port, NIXL_SC_INVALIDATE, agent->name, strlen(agent->name), NULL,
                            NULL);
}

typedef struct _nixl_fetch {
    struct _nixl_fetch *next;
    nixl_agent_t *a;
    pthread_t th;
    int done;                         /* atomic */
    uint16_t port;
    char ip[64];                      /* empty: through etcd */
    char remote[NIXL_MD_MAX_NAME + 1];
    char label[64];
} _nixl_fetch;

static void *_nixl_fetch_main(void *arg) {
    _nixl_fetch *f = (_nixl_fetch *)arg;
    nixl_agent_t *a = f->a;
    unsigned char *blob = NULL;
    size_t len = 0;
    char name[NIXL_MD_MAX_NAME + 1];
    nixl_status_t st;
    if (f->ip[0]) {
        st = _nixl_sc_request(a, f->ip, f->port, NIXL_SC_FETCH_MD, NULL, 0, &blob, &len);
    } else {
        char key[600];
        unsigned char *raw = NULL;
        _nixl_etcd_key(a, f->remote, f->label, key, sizeof key);
        st = _nixl_etcd_get_or_wait(a, key, &raw, &len);
        blob = raw;
    }
    /* only metadata of the agent we asked for; it belongs to the address we
       fetched it from (etcd: to the application) */
    if (st == NIXL_SUCCESS) st = _nixl_load_md(a, blob, len, f->ip[0] ? f->ip : NULL, f->remote, name, sizeof name);
    if (st != NIXL_SUCCESS) {
        _nixl_lock(a);
        _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_FETCH_FAILED, "fetch_remote_md(%s) from %s:%u failed: %s", f->remote,
                  f->ip[0] ? f->ip : "etcd", (unsigned)f->port, nixl_status_str(st));
        _nixl_unlock(a);
    }
    _nixl_free(a, blob);
    _NIXL_STORE(&f->done, 1);
    return NULL;
}

/* joins fetch threads that finished (all of them when `all`) */
static void _nixl_fetch_reap(nixl_agent_t *a, int all) {
    _nixl_fetch **pp, *f;
    pthread_mutex_lock(&a->sc_lock);
    pp = &a->sc_fetches;
    while ((f = *pp) != NULL) {
        if (all || _NIXL_LOAD(&f->done)) {
            *pp = f->next;
            pthread_join(f->th, NULL);
            _nixl_free(a, f);
        } else {
            pp = &f->next;
        }
    }
    pthread_mutex_unlock(&a->sc_lock);
}

NIXL_API nixl_status_t nixl_fetch_remote_md(nixl_agent_t *agent, const char *remote, const nixl_opt_args_t *opt) {
    _nixl_fetch *f;
    const char *label = opt && opt->metadata_label ? opt->metadata_label : "metadata";
    nixl_status_t route = _nixl_sc_route(agent, "fetch_remote_md", opt);
    if (route < 0) return route;
    if (!remote || !*remote || strlen(remote) > NIXL_MD_MAX_NAME || strlen(label) >= sizeof f->label ||
        (route == NIXL_SUCCESS && strlen(opt->ip) >= sizeof f->ip))
        return NIXL_ERR_INVALID_PARAM;
    _nixl_fetch_reap(agent, 0);
    f = (_nixl_fetch *)_nixl_alloc(agent, sizeof *f);
    if (!f) return NIXL_ERR_BACKEND;
    f->a = agent;
    if (route == NIXL_SUCCESS) {
        f->port = opt->port;
        memcpy(f->ip, opt->ip, strlen(opt->ip) + 1);
    }
    memcpy(f->remote, remote, strlen(remote) + 1);
    memcpy(f->label, label, strlen(label) + 1);
    pthread_mutex_lock(&agent->sc_lock);
    if (pthread_create(&f->th, NULL, _nixl_fetch_main, f) != 0) {
        pthread_mutex_unlock(&agent->sc_lock);
        _nixl_free(agent, f);
        return NIXL_ERR_BACKEND;
    }
    f->next = agent->sc_fetches;
    agent->sc_fetches = f;
    pthread_mutex_unlock(&agent->sc_lock);
    return NIXL_SUCCESS;
}

// >>listener

/* a listener connection: what it waits for */
typedef enum _nixl_sc_phase {
    _NIXL_SC_AWAIT_HELLO = 0, /* the client's HELLO (its nonce) */
    _NIXL_SC_AWAIT_REQUEST,   /* our challenge went: the request */
    _NIXL_SC_WRITING          /* a frame of ours is going out */
} _nixl_sc_phase;

/* the part of a frame being read */
typedef enum _nixl_sc_part {
    _NIXL_SC_HEADER = 0,
    _NIXL_SC_HEADER_MAC,
    _NIXL_SC_PAYLOAD,
    _NIXL_SC_PAYLOAD_MAC
} _nixl_sc_part;

typedef struct _nixl_sc_conn {
    int fd;
    uint64_t deadline;
    uint64_t opened;     /* when accepted: the oldest unproven ones go first under pressure */
    char peer[48];       /* ip:port, for log lines */
    char ip[INET_ADDRSTRLEN];
    char lim[INET_ADDRSTRLEN]; /* the address its limits count under */
    int phase;           /* _nixl_sc_phase */
    int part;            /* _nixl_sc_part: of the frame being read */
    int proven;          /* the request header is genuine (its MAC, or no secret is set) */
    _nixl_sc_nonces n;
    unsigned char hdr[NIXL_SC_HDR];
    unsigned char mac1[NIXL_MAC_LEN], mac2[NIXL_MAC_LEN];
    size_t got;          /* bytes of the current part read so far */
    unsigned cmd;
    size_t mac_len, pay_len;
    unsigned char *pay;
    size_t pay_cap;      /* bytes allocated: grows as the payload arrives */
    unsigned char *out;
    size_t out_len, out_off;
} _nixl_sc_conn;

static void _nixl_sc_conn_close(nixl_agent_t *a, _nixl_sc_conn *c) {
    if (c->fd >= 0) close(c->fd);
    _nixl_free(a, c->pay);
    _nixl_free(a, c->out);
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

static void _nixl_sc_drop(nixl_agent_t *a, _nixl_sc_conn *c, const char *why) {
    _nixl_lock(a);
    _nixl_logi(a, NIXL_LOG_WARN, _nixl_why_item(why, NIXL_LOGITEM_SC_CONN_DROPPED), "listener: dropping %s: %s",
               c->peer, why);
    _nixl_unlock(a);
    _nixl_sc_conn_close(a, c);
}

/* queues a frame for writing */
static int _nixl_sc_queue(nixl_agent_t *a, _nixl_sc_conn *c, unsigned cmd, const void *pay, size_t len) {
    c->out = _nixl_sc_frame(a, _NIXL_SC_S2C, &c->n, cmd, pay, len, &c->out_len);
    if (!c->out) return -1;
    c->out_off = 0;
    c->phase = _NIXL_SC_WRITING;
    return 0;
}

static int _nixl_sc_reply(nixl_agent_t *a, _nixl_sc_conn *c, nixl_status_t st, const void *data, size_t len) {
    uint32_t v = (uint32_t)(int32_t)st;
    unsigned char *p = (unsigned char *)_nixl_alloc(a, 4 + len);
    int rc;
    if (!p) return -1;
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
    if (len) memcpy(p + 4, data, len);
    rc = _nixl_sc_queue(a, c, NIXL_SC_REPLY, p, 4 + len);
    _nixl_free(a, p);
    return rc;
}

static nixl_status_t _nixl_load_md_from(nixl_agent_t *a, const void *blob, size_t len, const char *origin);
static nixl_status_t _nixl_invalidate_from(nixl_agent_t *a, const char *name, const char *origin);

/* a whole request arrived: act on it (no agent lock held here) */
static int _nixl_sc_dispatch(nixl_agent_t *a, _nixl_sc_conn *c) {
    char name[NIXL_MD_MAX_NAME + 1];
    void *blob = NULL;
    size_t len = 0;
    nixl_status_t st;
    int rc;
    switch (c->cmd) {
    case NIXL_SC_SEND_MD:
        st = _nixl_load_md_from(a, c->pay, c->pay_len, c->ip);
        return _nixl_sc_reply(a, c, st, NULL, 0);
    case NIXL_SC_FETCH_MD:
        st = nixl_get_local_md(a, &blob, &len);
        rc = _nixl_sc_reply(a, c, st, blob, st == NIXL_SUCCESS ? len : 0);
        nixl_free_md(a, blob);
        return rc;
    case NIXL_SC_INVALIDATE:
        if (!_nixl_name_ok(c->pay, c->pay_len)) return -1;
        memcpy(name, c->pay, c->pay_len);
        name[c->pay_len] = '\0';
        st = _nixl_invalidate_from(a, name, c->ip);
        return _nixl_sc_reply(a, c, st, NULL, 0);
    default:
        return -1;
    }
}

#define _NIXL_SC_PAYLOAD_CHUNK ((size_t)64 << 10)

/* Room for the next part of the payload: 64 KiB first, then doubling, never
   beyond what the header declared. */
static int _nixl_sc_grow_payload(nixl_agent_t *a, _nixl_sc_conn *c) {
    size_t cap = c->pay_cap ? 2 * c->pay_cap : _NIXL_SC_PAYLOAD_CHUNK;
    unsigned char *n;
    if (cap > c->pay_len) cap = c->pay_len;
    n = (unsigned char *)_nixl_alloc(a, cap ? cap : 1);
    if (!n) return -1;
    if (c->got) memcpy(n, c->pay, c->got);
    _nixl_free(a, c->pay);
    c->pay = n;
    c->pay_cap = cap;
    return 0;
}

/* the header of a frame arrived: NULL if it is the one this phase expects */
static const char *_nixl_sc_check_header(nixl_agent_t *a, _nixl_sc_conn *c) {
    const char *why = _nixl_sc_parse_header(c->hdr, &c->cmd, &c->mac_len, &c->pay_len);
    if (why) return why;
    if (c->phase == _NIXL_SC_AWAIT_HELLO)
        return c->cmd != NIXL_SC_HELLO || c->mac_len || c->pay_len != NIXL_SC_NONCE ? _NIXL_WHY(SC_NO_HELLO) : NULL;
    if (c->cmd < NIXL_SC_SEND_MD || c->cmd > NIXL_SC_INVALIDATE) return "not a request";
    if (a->token && !c->mac_len) return _NIXL_WHY(SC_NO_AUTH);
    if (!a->token && c->mac_len) return "authenticated with a token, and this listener has none";
    return NULL;
}

static void _nixl_sc_proven(nixl_agent_t *a, _nixl_sc_conn *c) {
    c->proven = 1;
    c->deadline = nixl_now_us() + (uint64_t)_nixl_sc_timeout_ms(a) * 1000u; /* the full timeout */
}

/* The whole frame arrived and its MACs (if any) are still to check:
   answer a HELLO with our nonce, act on a request. */
static const char *_nixl_sc_frame_done(nixl_agent_t *a, _nixl_sc_conn *c) {
    if (c->mac_len && !_nixl_sc_body_mac_ok(a, _NIXL_SC_C2S, &c->n, c->hdr, c->pay, c->pay_len, c->mac2))
        return "the payload's MAC does not verify (altered in transit?)";
    if (c->phase == _NIXL_SC_AWAIT_HELLO) { /* HELLO: answer with our nonce */
        memcpy(c->n.c, c->pay, NIXL_SC_NONCE);
        if (_nixl_random(c->n.s, sizeof c->n.s) != 0) return "getrandom failed";
        if (_nixl_sc_queue(a, c, NIXL_SC_CHALLENGE, c->n.s, sizeof c->n.s) != 0) return "out of memory";
    } else if (_nixl_sc_dispatch(a, c) != 0) {
        return "malformed request";
    }
    _nixl_free(a, c->pay);
    c->pay = NULL;
    c->pay_cap = 0;
    c->part = _NIXL_SC_HEADER;
    return NULL;
}

/* A part of a frame is complete: NULL to go on, or why the connection goes. */
static const char *_nixl_sc_part_done(nixl_agent_t *a, _nixl_sc_conn *c) {
    const char *why;
    switch (c->part) {
    case _NIXL_SC_HEADER:
        if ((why = _nixl_sc_check_header(a, c)) != NULL) return why;
        if (c->phase == _NIXL_SC_AWAIT_REQUEST && !c->mac_len) _nixl_sc_proven(a, c);
        c->part = c->mac_len ? _NIXL_SC_HEADER_MAC : _NIXL_SC_PAYLOAD;
        break;
    case _NIXL_SC_HEADER_MAC:
        if (!_nixl_sc_mac_ok(a, _NIXL_SC_C2S, &c->n, c->hdr, NULL, c->mac1))
            return _NIXL_WHY(SC_WRONG_TOKEN);
        _nixl_sc_proven(a, c);
        c->part = _NIXL_SC_PAYLOAD;
        break;
    case _NIXL_SC_PAYLOAD:
        c->part = _NIXL_SC_PAYLOAD_MAC;
        if (c->mac_len) break;
        return _nixl_sc_frame_done(a, c); /* no MAC to read */
    default:
        return _nixl_sc_frame_done(a, c);
    }
    /* the payload buffer grows as bytes arrive: a header that declares
       64 MiB costs nothing until 64 MiB came */
    if (c->part == _NIXL_SC_PAYLOAD && c->pay_len && _nixl_sc_grow_payload(a, c) != 0) return "out of memory";
    return NULL;
}

/* writes what is queued; returns 1 while the connection lives on */
static int _nixl_sc_conn_write(nixl_agent_t *a, _nixl_sc_conn *c) {
    for (;;) {
        ssize_t k = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (k > 0 && (c->out_off += (size_t)k) == c->out_len) {
            _nixl_free(a, c->out);
            c->out = NULL;
            if (c->cmd != NIXL_SC_HELLO) {
                _nixl_sc_conn_close(a, c); /* the reply went: one request per connection */
                return 0;
            }
            c->phase = _NIXL_SC_AWAIT_REQUEST; /* the challenge went: the request comes next */
            return 1;
        }
        if (k > 0) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 1;
        _nixl_sc_drop(a, c, "closed before reading our answer");
        return 0;
    }
}

/* where the part being read goes, and how many bytes it has (*want) */
static unsigned char *_nixl_sc_part_buf(_nixl_sc_conn *c, size_t *want) {
    switch (c->part) {
    case _NIXL_SC_HEADER:
        *want = NIXL_SC_HDR;
        return c->hdr;
    case _NIXL_SC_HEADER_MAC:
        *want = c->mac_len;
        return c->mac1;
    case _NIXL_SC_PAYLOAD:
        *want = c->pay_len;
        return c->pay;
    default:
        *want = c->mac_len;
        return c->mac2;
    }
}

/* advances one connection as far as its socket allows */
static void _nixl_sc_conn_step(nixl_agent_t *a, _nixl_sc_conn *c) {
    for (;;) {
        unsigned char *dst;
        size_t want;
        const char *why;
        ssize_t k;
        if (c->phase == _NIXL_SC_WRITING) {
            if (!_nixl_sc_conn_write(a, c) || c->phase == _NIXL_SC_WRITING) return;
            continue;
        }
        if (c->part == _NIXL_SC_PAYLOAD && c->got == c->pay_cap && c->got < c->pay_len &&
            _nixl_sc_grow_payload(a, c) != 0) {
            _nixl_sc_drop(a, c, "out of memory");
            return;
        }
        dst = _nixl_sc_part_buf(c, &want);
        if (c->got < want) {
            size_t room = c->part == _NIXL_SC_PAYLOAD ? c->pay_cap - c->got : want - c->got;
            k = recv(c->fd, dst + c->got, room, 0);
            if (k == 0) {
                _nixl_sc_drop(a, c, c->phase == _NIXL_SC_AWAIT_HELLO && c->got == 0 ? "closed without a request"
                                                                                   : _NIXL_WHY(SC_CLOSED_MID_FRAME));
                return;
            }
            if (k < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
                _nixl_sc_drop(a, c, strerror(errno));
                return;
            }
            c->got += (size_t)k;
            if (c->got < want) continue;
        }
        c->got = 0;
        if ((why = _nixl_sc_part_done(a, c)) != NULL) {
            _nixl_sc_drop(a, c, why);
            return;
        }
    }
}

/* A connection must prove itself (HELLO, then a request header with the
   right MAC) within this (the shorter of sc_timeout_ms and 1 s): idle
   connections cannot hold slots for long. */
static uint64_t _nixl_sc_unproven_us(nixl_agent_t *a) {
    uint64_t t = (uint64_t)_nixl_sc_timeout_ms(a) * 1000u;
    return t < 1000000u ? t : 1000000u;
}

/* Closes the oldest unproven connection (of address ip, or of any when ip
   is NULL) and returns its slot; NIXL_SC_MAX_CONNS when there is none. */
static int _nixl_sc_evict_unproven(nixl_agent_t *a, _nixl_sc_conn *conns, const char *ip, const char *why) {
    int i, oldest = NIXL_SC_MAX_CONNS;
    for (i = 0; i < NIXL_SC_MAX_CONNS; i++)
        if (conns[i].fd >= 0 && !conns[i].proven && (!ip || !strcmp(conns[i].lim, ip)) &&
            (oldest == NIXL_SC_MAX_CONNS || conns[i].opened < conns[oldest].opened))
            oldest = i;
    if (oldest < NIXL_SC_MAX_CONNS) _nixl_sc_drop(a, &conns[oldest], why);
    return oldest;
}

static size_t _nixl_sc_per_addr(const nixl_agent_t *a) {
    size_t n = a->cfg.listen_conns_per_addr ? a->cfg.listen_conns_per_addr : 64;
    return n < NIXL_SC_MAX_CONNS ? n : NIXL_SC_MAX_CONNS;
}

/* A free slot for a connection from ip: at most listen_conns_per_addr per
   address and NIXL_SC_MAX_CONNS in all; beyond either, the oldest unproven
   connection (of that address first) makes room. */
static int _nixl_sc_slot_for(nixl_agent_t *a, _nixl_sc_conn *conns, const char *ip) {
    size_t same = 0;
    int i, free_slot = NIXL_SC_MAX_CONNS;
    for (i = 0; i < NIXL_SC_MAX_CONNS; i++) {
        if (conns[i].fd < 0) {
            if (free_slot == NIXL_SC_MAX_CONNS) free_slot = i;
        } else if (!strcmp(conns[i].lim, ip)) {
            same++;
        }
    }
    if (same >= _nixl_sc_per_addr(a))
        return _nixl_sc_evict_unproven(a, conns, ip, _NIXL_WHY(SC_ADDR_LIMIT));
    if (free_slot < NIXL_SC_MAX_CONNS) return free_slot;
    return _nixl_sc_evict_unproven(a, conns, NULL, _NIXL_WHY(SC_MAKES_ROOM));
}

static void _nixl_sc_accept(nixl_agent_t *a, _nixl_sc_conn *conns) {
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    char ip[INET_ADDRSTRLEN], lim[INET_ADDRSTRLEN];
    int i, fd = accept(a->sc_listen_fd, (struct sockaddr *)&sa, &sl);
    if (fd < 0) return;
    inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
    /* any 127.x.y.z is this host: one address for the limits */
    snprintf(lim, sizeof lim, "%s", (ntohl(sa.sin_addr.s_addr) >> 24) == 127 ? "127.0.0.1" : ip);
    i = _nixl_sc_slot_for(a, conns, lim);
    if (i == NIXL_SC_MAX_CONNS || _nixl_sc_nonblock(fd) != 0) {
        close(fd);
        _nixl_lock(a);
        _nixl_log(a, NIXL_LOG_WARN, "listener: refusing a connection from %s: its address has %zu or all %d slots "
                  "are taken by connections that proved themselves", ip, _nixl_sc_per_addr(a), NIXL_SC_MAX_CONNS);
        _nixl_unlock(a);
        return;
    }
    memset(&conns[i], 0, sizeof conns[i]);
    conns[i].fd = fd;
    conns[i].opened = nixl_now_us();
    conns[i].deadline = conns[i].opened + _nixl_sc_unproven_us(a);
    memcpy(conns[i].ip, ip, sizeof ip);
    memcpy(conns[i].lim, lim, sizeof lim);
    snprintf(conns[i].peer, sizeof conns[i].peer, "%s:%u", ip, (unsigned)ntohs(sa.sin_port));
}

static void *_nixl_listener_main(void *arg) {
    nixl_agent_t *a = (nixl_agent_t *)arg;
    _nixl_sc_conn *conns = (_nixl_sc_conn *)_nixl_alloc_array(a, NIXL_SC_MAX_CONNS, sizeof *conns);
    struct pollfd *pf = (struct pollfd *)_nixl_alloc_array(a, NIXL_SC_MAX_CONNS + 2, sizeof *pf);
    int map[NIXL_SC_MAX_CONNS];
    int i;
    if (!conns || !pf) {
        _nixl_free(a, conns);
        _nixl_free(a, pf);
        return NULL;
    }
    for (i = 0; i < NIXL_SC_MAX_CONNS; i++) conns[i].fd = -1;
    for (;;) {
        int n = 2, j;
        uint64_t now;
        pf[0].fd = a->sc_wake[0];
        pf[0].events = POLLIN;
        pf[1].fd = a->sc_listen_fd;
        pf[1].events = POLLIN;
        for (i = 0; i < NIXL_SC_MAX_CONNS; i++) {
            if (conns[i].fd < 0) continue;
            pf[n].fd = conns[i].fd;
            pf[n].events = conns[i].phase == _NIXL_SC_WRITING ? POLLOUT : POLLIN;
            map[n - 2] = i;
            n++;
        }
        for (j = 0; j < n; j++) pf[j].revents = 0;
        if (poll(pf, (nfds_t)n, 100) < 0 && errno != EINTR) break;
        if (pf[0].revents || _NIXL_LOAD(&a->stop)) break; /* destroy wants us gone */
        for (j = 2; j < n; j++)
            if (pf[j].revents) _nixl_sc_conn_step(a, &conns[map[j - 2]]);
        if (pf[1].revents & POLLIN) _nixl_sc_accept(a, conns);
        now = nixl_now_us();
        for (i = 0; i < NIXL_SC_MAX_CONNS; i++)
            if (conns[i].fd >= 0 && now > conns[i].deadline) _nixl_sc_drop(a, &conns[i], _NIXL_WHY(SC_TOO_SLOW));
    }
    for (i = 0; i < NIXL_SC_MAX_CONNS; i++)
        if (conns[i].fd >= 0) _nixl_sc_conn_close(a, &conns[i]);
    _nixl_free(a, conns);
    _nixl_free(a, pf);
    return NULL;
}

/* Says once where the listener is and whether it authenticates: an
   unauthenticated one reachable from other hosts is a warning. */
static void _nixl_listener_announce(nixl_agent_t *a, const struct sockaddr_in *sa) {
    char ip[INET_ADDRSTRLEN];
    int local = (ntohl(sa->sin_addr.s_addr) >> 24) == 127;
    inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof ip);
    if (a->token)
        _nixl_log(a, NIXL_LOG_INFO, "listener: on %s:%u, authenticated (HMAC-SHA256 challenge-response)", ip,
                  (unsigned)a->sc_port);
    else
        _nixl_logi(a, local ? NIXL_LOG_INFO : NIXL_LOG_WARN, NIXL_LOGITEM_SC_UNAUTHENTICATED,
                  "listener: on %s:%u, UNAUTHENTICATED: whoever reaches it can push metadata under a name not yet "
                  "loaded (set auth_token or NIXL_AUTH_TOKEN)", ip, (unsigned)a->sc_port);
}

static nixl_status_t _nixl_listener_start(nixl_agent_t *a, const char *addr) {
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    int one = 1;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(a->cfg.listen_port);
    /* without a secret anyone who reaches the port can push metadata under
       any name: by default only this host can */
    sa.sin_addr.s_addr = htonl(a->token ? INADDR_ANY : INADDR_LOOPBACK);
    if (addr && inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
        _nixl_log(a, NIXL_LOG_ERROR, "listener: listen_addr '%s' is not an IPv4 address", addr);
        return NIXL_ERR_INVALID_PARAM;
    }
    a->sc_listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (a->sc_listen_fd < 0 || setsockopt(a->sc_listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(a->sc_listen_fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(a->sc_listen_fd, 128) != 0 ||
        _nixl_sc_nonblock(a->sc_listen_fd) != 0 ||
        getsockname(a->sc_listen_fd, (struct sockaddr *)&sa, &sl) != 0) {
        _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_SC_CANNOT_LISTEN, "listener: cannot listen on %s:%u: %s",
                  addr ? addr : a->token ? "0.0.0.0" : "127.0.0.1", (unsigned)a->cfg.listen_port, strerror(errno));
        return NIXL_ERR_BACKEND;
    }
    a->sc_port = ntohs(sa.sin_port);
    _nixl_listener_announce(a, &sa);
    if (pipe(a->sc_wake) != 0) {
        a->sc_wake[0] = a->sc_wake[1] = -1;
        _nixl_log(a, NIXL_LOG_ERROR, "listener: pipe: %s", strerror(errno));
        return NIXL_ERR_BACKEND;
    }
    if (pthread_create(&a->sc_thread, NULL, _nixl_listener_main, a) != 0) {
        _nixl_log(a, NIXL_LOG_ERROR, "listener: cannot start its thread");
        return NIXL_ERR_BACKEND;
    }
    a->sc_thread_started = 1;
    return NIXL_SUCCESS;
}

static void _nixl_side_channel_stop(nixl_agent_t *a) {
    int i;
    if (a->sc_thread_started) {
        char x = 1;
        _NIXL_STORE(&a->stop, 1); /* the listener also polls this flag */
        if (write(a->sc_wake[1], &x, 1) != 1)
            _nixl_log(a, NIXL_LOG_ERROR, "listener: cannot wake its thread: %s", strerror(errno));
        pthread_join(a->sc_thread, NULL);
        a->sc_thread_started = 0;
    }
    _nixl_fetch_reap(a, 1);
#ifdef NIXL_WITH_ETCD
    if (a->etcd_started) {
        _NIXL_STORE(&a->stop, 1); /* the watch ends within a second (curl's progress callback) */
        pthread_join(a->etcd_thread, NULL);
        a->etcd_started = 0;
    }
#endif
    if (a->sc_listen_fd >= 0) close(a->sc_listen_fd);
    for (i = 0; i < 2; i++)
        if (a->sc_wake[i] >= 0) close(a->sc_wake[i]);
    a->sc_listen_fd = a->sc_wake[0] = a->sc_wake[1] = -1;
}


// >>etcd
/* Metadata through etcd's v3 JSON gateway (libcurl): one key per agent and
   label, "<namespace><agent>/<label>", value = the metadata blob. Compiled
   only with NIXL_WITH_ETCD (link -lcurl). */
#ifdef NIXL_WITH_ETCD

static const char _nixl_b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* base64 of p[0..n) into a new NUL-terminated string (the agent's allocator) */
static char *_nixl_b64_encode(nixl_agent_t *a, const void *p, size_t n) {
    const unsigned char *s = (const unsigned char *)p;
    char *out = (char *)_nixl_alloc_raw(a, 4 * ((n + 2) / 3) + 1), *o = out;
    size_t i;
    if (!out) return NULL;
    for (i = 0; i + 2 < n; i += 3) {
        *o++ = _nixl_b64[s[i] >> 2];
        *o++ = _nixl_b64[((s[i] & 3) << 4) | (s[i + 1] >> 4)];
        *o++ = _nixl_b64[((s[i + 1] & 15) << 2) | (s[i + 2] >> 6)];
        *o++ = _nixl_b64[s[i + 2] & 63];
    }
    if (i < n) {
        *o++ = _nixl_b64[s[i] >> 2];
        *o++ = _nixl_b64[((s[i] & 3) << 4) | (i + 1 < n ? s[i + 1] >> 4 : 0)];
        *o++ = i + 1 < n ? _nixl_b64[(s[i + 1] & 15) << 2] : '=';
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

static int _nixl_b64_val(char c) {
    const char *p = c ? strchr(_nixl_b64, c) : NULL;
    return p ? (int)(p - _nixl_b64) : -1;
}

/* decodes n base64 characters; NULL on malformed input */
static unsigned char *_nixl_b64_decode(nixl_agent_t *a, const char *s, size_t n, size_t *out_len) {
    unsigned char *out;
    size_t i, o = 0;
    if (n % 4) return NULL;
    out = (unsigned char *)_nixl_alloc_raw(a, n / 4 * 3 + 1);
    if (!out) return NULL;
    for (i = 0; i < n; i += 4) {
        int v[4], k;
        for (k = 0; k < 4; k++) v[k] = s[i + k] == '=' && i + 4 == n && k >= 2 ? 0 : _nixl_b64_val(s[i + k]);
        if (v[0] < 0 || v[1] < 0 || v[2] < 0 || v[3] < 0) {
            _nixl_free(a, out);
            return NULL;
        }
        out[o++] = (unsigned char)(v[0] << 2 | v[1] >> 4);
        if (s[i + 2] != '=') out[o++] = (unsigned char)(v[1] << 4 | v[2] >> 2);
        if (s[i + 3] != '=') out[o++] = (unsigned char)(v[2] << 6 | v[3]);
    }
    *out_len = o;
    return out;
}

/* the string value of "field" in a JSON text (no escapes: base64 and
   numbers only), searching from `from`; NULL if absent */
static const char *_nixl_json_str(const char *from, const char *end, const char *field, size_t *len) {
    char pat[48];
    const char *p, *q;
    size_t pl = (size_t)snprintf(pat, sizeof pat, "\"%s\":\"", field);
    for (p = from; p + pl <= end; p++) {
        if (memcmp(p, pat, pl) != 0) continue;
        p += pl;
        for (q = p; q < end && *q != '"'; q++) {
        }
        if (q == end) return NULL;
        *len = (size_t)(q - p);
        return p;
    }
    return NULL;
}

typedef struct _nixl_etcd_io {
    nixl_agent_t *a;
    char *buf;                        /* response so far (the agent's allocator) */
    size_t len, cap;
    /* streaming: called with each complete line; non-zero ends the request */
    int (*on_line)(struct _nixl_etcd_io *io, const char *line, size_t len);
    void *user;
    int done;                         /* on_line asked to stop */
} _nixl_etcd_io;

static size_t _nixl_etcd_write(char *data, size_t sz, size_t nm, void *user) {
    _nixl_etcd_io *io = (_nixl_etcd_io *)user;
    size_t n = sz * nm;
    if (io->len + n + 1 > io->cap) {
        size_t cap = io->cap ? io->cap : 4096;
        char *b;
        while (cap < io->len + n + 1) cap *= 2;
        if (cap > (size_t)NIXL_SC_MAX_PAYLOAD * 2) return 0;
        b = (char *)_nixl_alloc_raw(io->a, cap);
        if (!b) return 0;
        if (io->len) memcpy(b, io->buf, io->len);
        _nixl_free(io->a, io->buf);
        io->buf = b;
        io->cap = cap;
    }
    memcpy(io->buf + io->len, data, n);
    io->len += n;
    io->buf[io->len] = '\0';
    if (io->on_line) {
        char *nl;
        while ((nl = (char *)memchr(io->buf, '\n', io->len)) != NULL) {
            size_t ll = (size_t)(nl - io->buf) + 1;
            if (io->on_line(io, io->buf, ll)) {
                io->done = 1;
                return 0; /* ends the transfer: curl reports a write error we expect */
            }
            memmove(io->buf, io->buf + ll, io->len - ll);
            io->len -= ll;
            io->buf[io->len] = '\0';
        }
    }
    return n;
}

/* lets a destroy end a long watch */
static int _nixl_etcd_progress_cb(void *user, curl_off_t a1, curl_off_t a2, curl_off_t a3, curl_off_t a4) {
    nixl_agent_t *a = (nixl_agent_t *)user;
    (void)a1;
    (void)a2;
    (void)a3;
    (void)a4;
    return _NIXL_LOAD(&a->stop) ? 1 : 0;
}

/* POST body to endpoint+path. SUCCESS with the response in io->buf, or the
   stream ended by on_line; REMOTE_DISCONNECT when etcd cannot be reached. */
static nixl_status_t _nixl_etcd_post(nixl_agent_t *a, const char *path, const char *body, long timeout_ms,
                                     _nixl_etcd_io *io) {
    char url[512];
    CURL *c = curl_easy_init();
    struct curl_slist *hdr = NULL;
    CURLcode rc;
    long code = 0;
    if (!c) return NIXL_ERR_BACKEND;
    snprintf(url, sizeof url, "%s%s", a->etcd_endpoint, path);
    hdr = curl_slist_append(hdr, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, _nixl_etcd_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, io);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)_nixl_sc_timeout_ms(a));
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, _nixl_etcd_progress_cb);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, a);
    rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(c);
    if (io->done) return NIXL_SUCCESS;
    if (rc != CURLE_OK) {
        if (rc != CURLE_OPERATION_TIMEDOUT && rc != CURLE_ABORTED_BY_CALLBACK) {
            _nixl_lock(a);
            _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_ETCD_FAILED, "etcd: %s: %s", url, curl_easy_strerror(rc));
            _nixl_unlock(a);
        }
        return rc == CURLE_OPERATION_TIMEDOUT ? NIXL_ERR_NOT_FOUND : NIXL_ERR_REMOTE_DISCONNECT;
    }
    if (code != 200) {
        _nixl_lock(a);
        _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_ETCD_FAILED, "etcd: %s answered HTTP %ld: %.200s", url, code, io->buf ? io->buf : "");
        _nixl_unlock(a);
        return NIXL_ERR_BACKEND;
    }
    return NIXL_SUCCESS;
}

/* "<namespace><agent>/<label>" */
static void _nixl_etcd_key(const nixl_agent_t *a, const char *agent, const char *label, char *out, size_t cap) {
    snprintf(out, cap, "%s%s/%s", a->etcd_ns, agent, label ? label : "metadata");
}

/* the end of the range of keys starting with prefix: its last byte + 1 */
static char *_nixl_etcd_range_end_b64(nixl_agent_t *a, const char *prefix) {
    size_t n = strlen(prefix);
    char tmp[512];
    if (n == 0 || n >= sizeof tmp) return NULL;
    memcpy(tmp, prefix, n);
    tmp[n - 1]++;
    return _nixl_b64_encode(a, tmp, n);
}

static nixl_status_t _nixl_etcd_put(nixl_agent_t *a, const char *label, const void *blob, size_t len) {
    char key[512], *k64, *v64, *body;
    _nixl_etcd_io io;
    nixl_status_t st = NIXL_ERR_BACKEND;
    _nixl_etcd_key(a, a->name, label, key, sizeof key);
    k64 = _nixl_b64_encode(a, key, strlen(key));
    v64 = _nixl_b64_encode(a, blob, len);
    body = (char *)_nixl_alloc_raw(a, (k64 ? strlen(k64) : 0) + (v64 ? strlen(v64) : 0) + 64);
    memset(&io, 0, sizeof io);
    io.a = a;
    if (k64 && v64 && body) {
        sprintf(body, "{\"key\":\"%s\",\"value\":\"%s\"}", k64, v64);
        st = _nixl_etcd_post(a, "/v3/kv/put", body, _nixl_sc_timeout_ms(a), &io);
    }
    _nixl_free(a, k64);
    _nixl_free(a, v64);
    _nixl_free(a, body);
    _nixl_free(a, io.buf);
    return st;
}

static nixl_status_t _nixl_etcd_delete_agent(nixl_agent_t *a) {
    char prefix[512], body[1200], *k64, *e64;
    _nixl_etcd_io io;
    nixl_status_t st = NIXL_ERR_BACKEND;
    snprintf(prefix, sizeof prefix, "%s%s/", a->etcd_ns, a->name);
    k64 = _nixl_b64_encode(a, prefix, strlen(prefix));
    e64 = _nixl_etcd_range_end_b64(a, prefix);
    memset(&io, 0, sizeof io);
    io.a = a;
    if (k64 && e64) {
        snprintf(body, sizeof body, "{\"key\":\"%s\",\"range_end\":\"%s\"}", k64, e64);
        st = _nixl_etcd_post(a, "/v3/kv/deleterange", body, _nixl_sc_timeout_ms(a), &io);
    }
    _nixl_free(a, k64);
    _nixl_free(a, e64);
    _nixl_free(a, io.buf);
    return st;
}

typedef struct _nixl_etcd_value { unsigned char *blob; size_t len; } _nixl_etcd_value;

/* watch stream: the first event carrying a value is the metadata */
static int _nixl_etcd_on_put(_nixl_etcd_io *io, const char *line, size_t len) {
    _nixl_etcd_value *v = (_nixl_etcd_value *)io->user;
    size_t vl = 0;
    const char *p = _nixl_json_str(line, line + len, "value", &vl);
    if (!p) return 0;
    v->blob = _nixl_b64_decode(io->a, p, vl, &v->len);
    return 1;
}

/* the value under `key`: read it, or watch for it up to the timeout */
static nixl_status_t _nixl_etcd_get_or_wait(nixl_agent_t *a, const char *key, unsigned char **blob, size_t *len) {
    char *k64 = _nixl_b64_encode(a, key, strlen(key)), body[1200];
    const char *p, *rev;
    size_t vl = 0, rl = 0;
    _nixl_etcd_io io;
    _nixl_etcd_value v;
    nixl_status_t st;
    unsigned long long next_rev = 0;
    *blob = NULL;
    memset(&io, 0, sizeof io);
    memset(&v, 0, sizeof v);
    io.a = a;
    if (!k64) return NIXL_ERR_BACKEND;
    snprintf(body, sizeof body, "{\"key\":\"%s\"}", k64);
    st = _nixl_etcd_post(a, "/v3/kv/range", body, _nixl_sc_timeout_ms(a), &io);
    if (st == NIXL_SUCCESS && io.buf) {
        p = _nixl_json_str(io.buf, io.buf + io.len, "value", &vl);
        if (p) *blob = _nixl_b64_decode(a, p, vl, len);
        rev = _nixl_json_str(io.buf, io.buf + io.len, "revision", &rl);
        if (rev) next_rev = strtoull(rev, NULL, 10) + 1; /* watch from right after this read */
    }
    _nixl_free(a, io.buf);
    if (st != NIXL_SUCCESS || *blob) {
        _nixl_free(a, k64);
        return st == NIXL_SUCCESS ? NIXL_SUCCESS : st;
    }
    memset(&io, 0, sizeof io);
    io.a = a;
    io.on_line = _nixl_etcd_on_put;
    io.user = &v;
    snprintf(body, sizeof body, "{\"create_request\":{\"key\":\"%s\",\"start_revision\":\"%llu\"}}", k64, next_rev);
    st = _nixl_etcd_post(a, "/v3/watch", body, _nixl_sc_timeout_ms(a), &io);
    _nixl_free(a, io.buf);
    _nixl_free(a, k64);
    if (v.blob) {
        *blob = v.blob;
        *len = v.len;
        return NIXL_SUCCESS;
    }
    return st == NIXL_SUCCESS ? NIXL_ERR_NOT_FOUND : st;
}

/* watch thread: a deleted key of another agent invalidates its metadata */
static int _nixl_etcd_on_delete(_nixl_etcd_io *io, const char *line, size_t len) {
    nixl_agent_t *a = io->a;
    const char *p = line, *end = line + len;
    size_t nsl = strlen(a->etcd_ns);
    while ((p = strstr(p, "\"type\":\"DELETE\"")) != NULL && p < end) {
        size_t kl = 0, dl = 0;
        const char *k = _nixl_json_str(p, end, "key", &kl);
        unsigned char *key = k ? _nixl_b64_decode(a, k, kl, &dl) : NULL;
        if (key && dl > nsl && !memcmp(key, a->etcd_ns, nsl)) {
            char name[NIXL_MD_MAX_NAME + 1];
            size_t n = 0;
            while (nsl + n < dl && key[nsl + n] != '/' && n < NIXL_MD_MAX_NAME) {
                name[n] = (char)key[nsl + n];
                n++;
            }
            name[n] = '\0';
            if (n && strcmp(name, a->name) != 0 && nixl_check_remote_md(a, name, NULL) == NIXL_SUCCESS) {
                nixl_invalidate_remote_md(a, name);
                _nixl_lock(a);
                _nixl_log(a, NIXL_LOG_INFO, "etcd: %s deleted its metadata: invalidated", name);
                _nixl_unlock(a);
            }
        }
        _nixl_free(a, key);
        p += 15;
    }
    return 0;
}

static void *_nixl_etcd_watch_main(void *arg) {
    nixl_agent_t *a = (nixl_agent_t *)arg;
    char *k64 = _nixl_b64_encode(a, a->etcd_ns, strlen(a->etcd_ns)), *e64 = _nixl_etcd_range_end_b64(a, a->etcd_ns);
    char body[1200];
    snprintf(body, sizeof body,
             "{\"create_request\":{\"key\":\"%s\",\"range_end\":\"%s\",\"filters\":[\"NOPUT\"]}}", k64 ? k64 : "",
             e64 ? e64 : "");
    while (k64 && e64 && !_NIXL_LOAD(&a->stop)) {
        _nixl_etcd_io io;
        int i;
        memset(&io, 0, sizeof io);
        io.a = a;
        io.on_line = _nixl_etcd_on_delete;
        _nixl_etcd_post(a, "/v3/watch", body, 3600L * 1000L, &io);
        _nixl_free(a, io.buf);
        for (i = 0; i < 10 && !_NIXL_LOAD(&a->stop); i++) usleep(50000); /* etcd away: retry soon */
    }
    _nixl_free(a, k64);
    _nixl_free(a, e64);
    return NULL;
}

static pthread_once_t _nixl_curl_once = PTHREAD_ONCE_INIT;
static void _nixl_curl_init(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

/* normalises the namespace to exactly one leading and trailing slash */
static nixl_status_t _nixl_etcd_start(nixl_agent_t *a, const char *endpoints, const char *ns) {
    const char *comma = strchr(endpoints, ',');
    size_t n = comma ? (size_t)(comma - endpoints) : strlen(endpoints), o = 0;
    const char *s;
    if (n == 0 || n >= sizeof a->etcd_endpoint) return NIXL_ERR_INVALID_PARAM;
    memcpy(a->etcd_endpoint, endpoints, n); /* the first endpoint; the others are for later failover */
    a->etcd_endpoint[n] = '\0';
    while (n && a->etcd_endpoint[n - 1] == '/') a->etcd_endpoint[--n] = '\0';
    if (!ns || !*ns) ns = "/nixl/agents/";
    a->etcd_ns[o++] = '/';
    for (s = ns; *s && o + 2 < sizeof a->etcd_ns; s++)
        if (*s != '/' || a->etcd_ns[o - 1] != '/') a->etcd_ns[o++] = *s;
    if (a->etcd_ns[o - 1] != '/') a->etcd_ns[o++] = '/';
    a->etcd_ns[o] = '\0';
    pthread_once(&_nixl_curl_once, _nixl_curl_init);
    if (pthread_create(&a->etcd_thread, NULL, _nixl_etcd_watch_main, a) != 0) return NIXL_ERR_BACKEND;
    a->etcd_started = 1;
    return NIXL_SUCCESS;
}

#else /* !NIXL_WITH_ETCD */

static nixl_status_t _nixl_etcd_missing(nixl_agent_t *a) {
    _nixl_lock(a);
    _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_ETCD_NOT_COMPILED,
               "etcd: not compiled in (define NIXL_WITH_ETCD and link -lcurl)");
    _nixl_unlock(a);
    return NIXL_ERR_NOT_SUPPORTED;
}
static nixl_status_t _nixl_etcd_put(nixl_agent_t *a, const char *label, const void *blob, size_t len) {
    (void)label;
    (void)blob;
    (void)len;
    return _nixl_etcd_missing(a);
}
static nixl_status_t _nixl_etcd_delete_agent(nixl_agent_t *a) { return _nixl_etcd_missing(a); }
static nixl_status_t _nixl_etcd_get_or_wait(nixl_agent_t *a, const char *key, unsigned char **blob, size_t *len) {
    (void)key;
    *blob = NULL;
    *len = 0;
    return _nixl_etcd_missing(a);
}
static void _nixl_etcd_key(const nixl_agent_t *a, const char *agent, const char *label, char *out, size_t cap) {
    snprintf(out, cap, "%s%s/%s", a->etcd_ns, agent, label ? label : "metadata");
}
static nixl_status_t _nixl_etcd_start(nixl_agent_t *a, const char *endpoints, const char *ns) {
    (void)endpoints;
    (void)ns;
    return _nixl_etcd_missing(a);
}

#endif /* NIXL_WITH_ETCD */

// >>dlist

/* entry i of a prepared list; a strided list computes it into *tmp */
static const _nixl_hent *_nixl_hent_at(const nixl_dlist_handle_t *h, size_t i, _nixl_hent *tmp) {
    if (!h->strided) return &h->e[i];
    *tmp = h->e[0];
    tmp->addr += (uintptr_t)(i * h->stride);
    return tmp;
}

static _nixl_region *_nixl_hent_region(const nixl_dlist_handle_t *h, size_t i) {
    return h->e[h->strided ? 0 : i].region;
}

static void _nixl_handle_unref(nixl_agent_t *a, nixl_dlist_handle_t *h) {
    size_t i;
    if (--h->refs > 0) return;
    for (i = 0; i < (h->strided ? 1 : h->count); i++) _nixl_region_unref(a, h->e[i].region);
    if (h->remote) _nixl_remote_unref(a, h->remote);
    if (h->prev) h->prev->next = h->next;
    else a->handles = h->next;
    if (h->next) h->next->prev = h->prev;
    _nixl_free(a, h->e);
    _nixl_free(a, h);
}

/* Whose regions a list prepared for agent_name lies in: ours (NULL, "" or
   our own name: loopback) or a loaded peer's (*rm). */
static nixl_status_t _nixl_prep_table(nixl_agent_t *a, const char *what, const char *agent_name,
                                      const _nixl_table **t, _nixl_remote **rm, int *loopback) {
    *t = &a->local;
    *rm = NULL;
    *loopback = agent_name && *agent_name && !strcmp(agent_name, a->name);
    if (!agent_name || !*agent_name || *loopback) return NIXL_SUCCESS;
    *rm = _nixl_remote_find(a, agent_name);
    if (!*rm) {
        _nixl_log(a, NIXL_LOG_ERROR, "%s: no metadata of %s is loaded", what, agent_name);
        return NIXL_ERR_NOT_FOUND;
    }
    *t = &(*rm)->regions;
    return NIXL_SUCCESS;
}

/* a new handle joins the agent's list (one user reference) */
static void _nixl_handle_link(nixl_agent_t *a, nixl_dlist_handle_t *h, nixl_mem_t mem, int loopback,
                              _nixl_remote *rm) {
    h->agent = a;
    h->refs = 1;
    h->mem = mem;
    h->loopback = loopback;
    h->remote = rm;
    if (rm) rm->refs++;
    h->next = a->handles;
    if (a->handles) a->handles->prev = h;
    a->handles = h;
}

static nixl_status_t _nixl_prep_locked(nixl_agent_t *a, const char *agent_name, const nixl_dlist_t *l,
                                       nixl_dlist_handle_t **out) {
    const _nixl_table *t;
    _nixl_remote *rm;
    nixl_dlist_handle_t *h;
    nixl_status_t st;
    size_t i;
    int loopback;
    long hint = -1; /* the region index of the previous descriptor */
    if ((st = _nixl_check_dlist(a, "prep_xfer_dlist", l)) != NIXL_SUCCESS) return st;
    if ((st = _nixl_prep_table(a, "prep_xfer_dlist", agent_name, &t, &rm, &loopback)) != NIXL_SUCCESS) return st;
    h = (nixl_dlist_handle_t *)_nixl_alloc(a, sizeof *h);
    if (!h) return NIXL_ERR_BACKEND;
    /* entries 0..count-1 are all written below (count shrinks on failure) */
    h->e = (_nixl_hent *)_nixl_alloc_array_raw(a, l->count ? l->count : 1, sizeof *h->e);
    if (!h->e) {
        _nixl_free(a, h);
        return NIXL_ERR_BACKEND;
    }
    for (i = 0; i < l->count; i++) {
        const nixl_desc_t *d = &l->descs[i];
        _nixl_region *r;
        if ((st = _nixl_check_desc(a, "prep_xfer_dlist", l->mem, d, i)) != NIXL_SUCCESS) break;
        r = _nixl_table_find_containing_from(t, l->mem, d->addr, d->len, d->dev_id, &hint);
        if (!r) {
            _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_DESC_NOT_IN_REGION, "prep_xfer_dlist: descriptor %zu (%s 0x%llx+%zu dev %llu) lies in no region %s %s", i,
                      nixl_mem_str(l->mem), (unsigned long long)d->addr, d->len, (unsigned long long)d->dev_id,
                      rm ? "loaded from" : "registered by", rm ? rm->name : "this agent");
            st = NIXL_ERR_NOT_FOUND;
            break;
        }
        h->e[i].addr = d->addr;
        h->e[i].len = d->len;
        h->e[i].dev_id = d->dev_id;
        h->e[i].region = r;
        r->refs++;
    }
    h->count = i; /* on failure: exactly the entries holding a reference */
    _nixl_handle_link(a, h, l->mem, loopback, rm);
    if (st != NIXL_SUCCESS) {
        h->user_released = 1;
        _nixl_handle_unref(a, h);
        return st;
    }
    *out = h;
    return NIXL_SUCCESS;
}

NIXL_API nixl_status_t nixl_prep_xfer_dlist(nixl_agent_t *agent, const char *agent_name, const nixl_dlist_t *descs,
                                            const nixl_opt_args_t *opt, nixl_dlist_handle_t **handle) {
    nixl_status_t st;
    (void)opt;
    if (!agent || !handle) return NIXL_ERR_INVALID_PARAM;
    *handle = NULL;
    _nixl_lock(agent);
    st = _nixl_prep_locked(agent, agent_name, descs, handle);
    _nixl_unlock(agent);
    return st;
}

static nixl_status_t _nixl_check_strided(nixl_agent_t *a, const nixl_strided_t *s) {
    const char *why = NULL;
    if (!s) why = "no layout";
    else if ((unsigned)s->mem >= NIXL_MEM_COUNT) why = "unknown memory type";
    else if (!s->len || !s->count) why = "zero len or count";
    else if (!s->base) why = "NULL base";
    else if (s->count - 1 > (SIZE_MAX - s->len) / (s->stride ? s->stride : 1) ||
             (uintptr_t)((s->count - 1) * s->stride + s->len) > UINTPTR_MAX - s->base)
        why = _NIXL_WHY(STRIDED_OVERFLOW);
    if (!why) return NIXL_SUCCESS;
    _nixl_logi(a, NIXL_LOG_ERROR, _nixl_why_item(why, NIXL_LOGITEM_NONE), "prep_xfer_dlist_strided: %s", why);
    return NIXL_ERR_INVALID_PARAM;
}

static nixl_status_t _nixl_prep_strided_locked(nixl_agent_t *a, const char *agent_name, const nixl_strided_t *s,
                                               nixl_dlist_handle_t **out) {
    const _nixl_table *t;
    _nixl_remote *rm;
    _nixl_region *r;
    nixl_dlist_handle_t *h;
    nixl_status_t st;
    size_t span;
    int loopback;
    if ((st = _nixl_check_strided(a, s)) != NIXL_SUCCESS) return st;
    if ((st = _nixl_prep_table(a, "prep_xfer_dlist_strided", agent_name, &t, &rm, &loopback)) != NIXL_SUCCESS)
        return st;
    span = (s->count - 1) * s->stride + s->len;
    r = _nixl_table_find_containing(t, s->mem, s->base, span, s->dev_id);
    if (!r) {
        _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_STRIDED_NOT_IN_REGION, "prep_xfer_dlist_strided: %zu blocks of %zu every %zu bytes from %s 0x%llx dev "
                  "%llu (%zu bytes) lie in no one region %s %s", s->count, s->len, s->stride, nixl_mem_str(s->mem),
                  (unsigned long long)s->base, (unsigned long long)s->dev_id, span,
                  rm ? "loaded from" : "registered by", rm ? rm->name : "this agent");
        return NIXL_ERR_NOT_FOUND;
    }
    h = (nixl_dlist_handle_t *)_nixl_alloc(a, sizeof *h);
    if (h) h->e = (_nixl_hent *)_nixl_alloc(a, sizeof *h->e);
    if (!h || !h->e) {
        _nixl_free(a, h);
        return NIXL_ERR_BACKEND;
    }
    h->e[0].addr = s->base;
    h->e[0].len = s->len;
    h->e[0].dev_id = s->dev_id;
    h->e[0].region = r;
    r->refs++;
    h->strided = 1;
    h->stride = s->stride;
    h->count = s->count;
    _nixl_handle_link(a, h, s->mem, loopback, rm);
    *out = h;
    return NIXL_SUCCESS;
}

NIXL_API nixl_status_t nixl_prep_xfer_dlist_strided(nixl_agent_t *agent, const char *agent_name,
                                                    const nixl_strided_t *layout, const nixl_opt_args_t *opt,
                                                    nixl_dlist_handle_t **handle) {
    nixl_status_t st;
    (void)opt;
    if (!agent || !handle) return NIXL_ERR_INVALID_PARAM;
    *handle = NULL;
    _nixl_lock(agent);
    st = _nixl_prep_strided_locked(agent, agent_name, layout, handle);
    _nixl_unlock(agent);
    return st;
}

NIXL_API nixl_status_t nixl_release_dlist_handle(nixl_agent_t *agent, nixl_dlist_handle_t *handle) {
    if (!agent || !handle || handle->agent != agent) return NIXL_ERR_INVALID_PARAM;
    _nixl_lock(agent);
    if (handle->user_released) {
        _nixl_unlock(agent);
        return NIXL_ERR_INVALID_PARAM;
    }
    handle->user_released = 1;
    _nixl_handle_unref(agent, handle);
    _nixl_unlock(agent);
    return NIXL_SUCCESS;
}

// >>request

static void _nixl_req_free(nixl_agent_t *a, nixl_xfer_req_t *r) {
    if (r->prev) r->prev->next = r->next;
    else if (a->reqs == r) a->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
    if (r->lh) _nixl_handle_unref(a, r->lh);
    if (r->rh) _nixl_handle_unref(a, r->rh);
    _nixl_free(a, r->lidx);
    _nixl_free(a, r->ridx);
    _nixl_free(a, r->notif);
    _nixl_free(a, r);
}

static int _nixl_idx_ok(const int *idx, size_t i, size_t count) {
    return idx[i] >= 0 && (size_t)idx[i] < count;
}


/* loopback: the remote side's rmd handles come from load_local_md */
static nixl_status_t _nixl_load_loopback(nixl_agent_t *a, nixl_backend_t *b, nixl_xfer_req_t *r) {
    size_t i;
    for (i = 0; i < r->n; i++) {
        _nixl_region *rr = _nixl_hent_region(r->rh, (size_t)r->ridx[i]);
        nixl_status_t st;
        if (rr->lmask & (1u << b->idx)) continue;
        st = b->ops->load_local_md(b->engine, rr->md[b->idx], &rr->lmd[b->idx]);
        if (st != NIXL_SUCCESS) {
            _nixl_log(a, NIXL_LOG_ERROR, "make_xfer_req: %s load_local_md failed: %s", b->ops->name,
                      nixl_status_str(st));
            return st;
        }
        rr->lmask |= 1u << b->idx;
    }
    return NIXL_SUCCESS;
}

/* The first backend of order[0..n) in mask that can carry r (local or
   remote, with a notification or not); NULL if none. */
static nixl_backend_t *_nixl_pick_backend(const nixl_xfer_req_t *r, nixl_backend_t *const *order, int n,
                                          unsigned mask) {
    int i;
    for (i = 0; i < n; i++) {
        nixl_backend_t *b = order[i];
        if (!(mask & (1u << b->idx))) continue;
        if (r->rh->loopback && (!(b->ops->caps & NIXL_CAP_LOCAL) || !b->ops->load_local_md)) continue;
        if (!r->rh->loopback && !(b->ops->caps & NIXL_CAP_REMOTE)) continue;
        if (r->has_notif && !(b->ops->caps & NIXL_CAP_NOTIF)) continue;
        return b;
    }
    return NULL;
}

static nixl_status_t _nixl_set_notif(nixl_agent_t *a, nixl_xfer_req_t *r, const nixl_opt_args_t *opt) {
    unsigned char *copy = NULL;
    if (!opt || !opt->has_notif) return NIXL_SUCCESS;
    if (opt->notif_len && !opt->notif) {
        _nixl_log(a, NIXL_LOG_ERROR, "notification of %zu bytes with a NULL pointer", opt->notif_len);
        return NIXL_ERR_INVALID_PARAM;
    }
    if (opt->notif_len && !(copy = (unsigned char *)_nixl_memdup(a, opt->notif, opt->notif_len)))
        return NIXL_ERR_BACKEND;
    _nixl_free(a, r->notif);
    r->notif = copy;
    r->notif_len = opt->notif_len;
    r->has_notif = 1;
    return NIXL_SUCCESS;
}

/* n descriptors of scratch for a backend's prep_xfer (under the lock) */
static nixl_xfer_desc_t *_nixl_scratch(nixl_agent_t *a, size_t n) {
    if (n > a->scratch_cap) {
        nixl_xfer_desc_t *d = (nixl_xfer_desc_t *)_nixl_alloc_array(a, n, sizeof *d);
        if (!d) return NULL;
        _nixl_free(a, a->scratch);
        a->scratch = d;
        a->scratch_cap = n;
    }
    return a->scratch;
}

/* Appends the pair (le, re) to the backend's descriptors d[0..*k), or
   extends the last one when the pair continues it on both sides within
   the same regions (merge). */
static void _nixl_desc_put(nixl_xfer_desc_t *d, size_t *k, const _nixl_hent *le, const _nixl_hent *re, void *lmd,
                           void *rmd, int merge) {
    nixl_xfer_desc_t *p = *k ? &d[*k - 1] : NULL;
    if (merge && p && p->lmd == lmd && p->rmd == rmd && p->laddr + p->len == le->addr &&
        p->raddr + p->len == re->addr && p->ldev == le->dev_id && p->rdev == re->dev_id) {
        p->len += le->len;
        return;
    }
    p = &d[(*k)++];
    p->laddr = le->addr;
    p->raddr = re->addr;
    p->len = le->len;
    p->ldev = le->dev_id;
    p->rdev = re->dev_id;
    p->lmd = lmd;
    p->rmd = rmd;
}

/* Lays out every pair for backend b into the scratch (*k descriptors):
   b's md of each side's region (of the remote side, for loopback, the md
   load_local_md gave). */
static void _nixl_descs_fill(nixl_agent_t *a, const nixl_xfer_req_t *r, const nixl_backend_t *b, int merge,
                             size_t *k) {
    size_t i;
    *k = 0;
    for (i = 0; i < r->n; i++) {
        _nixl_hent lt, rt;
        const _nixl_hent *le = _nixl_hent_at(r->lh, (size_t)r->lidx[i], &lt);
        const _nixl_hent *re = _nixl_hent_at(r->rh, (size_t)r->ridx[i], &rt);
        void *rmd = r->rh->loopback ? re->region->lmd[b->idx] : re->region->md[b->idx];
        _nixl_desc_put(a->scratch, k, le, re, le->region->md[b->idx], rmd, merge);
    }
}

/* hands the k laid-out descriptors to the chosen backend */
static nixl_status_t _nixl_backend_prep(nixl_agent_t *a, nixl_xfer_req_t *r, size_t k) {
    nixl_xfer_args_t x;
    nixl_backend_t *b = r->be;
    nixl_status_t st;
    memset(&x, 0, sizeof x);
    x.op = r->op;
    x.remote = r->rh->loopback ? a->name : r->rh->remote->name;
    x.lmem = r->lh->mem;
    x.rmem = r->rh->mem;
    x.descs = a->scratch;
    x.count = k;
    x.total_bytes = r->total_bytes;
    x.has_notif = r->has_notif;
    st = b->ops->prep_xfer(b->engine, &x, &r->bh);
    if (st != NIXL_SUCCESS)
        _nixl_log(a, NIXL_LOG_ERROR, "make_xfer_req: %s prep_xfer failed: %s", b->ops->name, nixl_status_str(st));
    return st;
}

static nixl_status_t _nixl_pair_bad(nixl_agent_t *a, const nixl_xfer_req_t *r, size_t i, size_t ll, size_t rl) {
    if (!_nixl_idx_ok(r->lidx, i, r->lh->count) || !_nixl_idx_ok(r->ridx, i, r->rh->count)) {
        _nixl_log(a, NIXL_LOG_ERROR, "make_xfer_req: pair %zu: index %d/%d out of range (%zu/%zu entries)", i,
                  r->lidx[i], r->ridx[i], r->lh->count, r->rh->count);
        return NIXL_ERR_INVALID_PARAM;
    }
    if (ll != rl) {
        _nixl_log(a, NIXL_LOG_ERROR, "make_xfer_req: pair %zu: local length %zu != remote length %zu", i, ll, rl);
        return NIXL_ERR_INVALID_PARAM;
    }
    _nixl_log(a, NIXL_LOG_ERROR, "make_xfer_req: pair %zu uses a region that was deregistered/invalidated", i);
    return NIXL_ERR_NOT_FOUND;
}

/* One pass over the pairs: checks each (indices, lengths, live regions),
   sums the bytes, finds the backends holding both sides of all of them
   (*common) and lays the descriptors out for `guess` (the backend the
   first pair points to, NULL: none; *k descriptors) so that a request
   whose pairs all share it needs no second pass. */
static nixl_status_t _nixl_pairs_scan(nixl_agent_t *a, nixl_xfer_req_t *r, const nixl_backend_t *guess, int merge,
                                      unsigned *common, size_t *k) {
    unsigned m = ~0u;
    size_t i;
    *k = 0;
    for (i = 0; i < r->n; i++) {
        _nixl_hent lt, rt;
        const _nixl_hent *le, *re;
        const _nixl_region *lr, *rr;
        if (!_nixl_idx_ok(r->lidx, i, r->lh->count) || !_nixl_idx_ok(r->ridx, i, r->rh->count))
            return _nixl_pair_bad(a, r, i, 0, 0);
        le = _nixl_hent_at(r->lh, (size_t)r->lidx[i], &lt);
        re = _nixl_hent_at(r->rh, (size_t)r->ridx[i], &rt);
        lr = le->region;
        rr = re->region;
        if (le->len != re->len || lr->dead || rr->dead) return _nixl_pair_bad(a, r, i, le->len, re->len);
        m &= lr->mask & rr->mask; /* loopback: rr is a local region, mask = its registrations */
        r->total_bytes += le->len;
        if (guess) _nixl_desc_put(a->scratch, k, le, re, lr->md[guess->idx], rr->md[guess->idx], merge);
    }
    *common = m;
    return NIXL_SUCCESS;
}

/* checks the pairs, chooses the backend and hands it the descriptors */
static nixl_status_t _nixl_make_resolve(nixl_agent_t *a, nixl_xfer_req_t *r, const nixl_opt_args_t *opt) {
    nixl_backend_t *order[NIXL_MAX_BACKENDS], *guess = NULL;
    int n, merge = !opt || !opt->skip_desc_merge;
    unsigned common = 0;
    size_t k = 0;
    nixl_status_t st;
    if ((st = _nixl_backend_order(a, "make_xfer_req", opt, order, &n)) != NIXL_SUCCESS) return st;
    if (!_nixl_scratch(a, r->n)) return NIXL_ERR_BACKEND;
    if (!r->rh->loopback && _nixl_idx_ok(r->lidx, 0, r->lh->count) && _nixl_idx_ok(r->ridx, 0, r->rh->count))
        guess = _nixl_pick_backend(r, order, n, _nixl_hent_region(r->lh, (size_t)r->lidx[0])->mask &
                                                    _nixl_hent_region(r->rh, (size_t)r->ridx[0])->mask);
    if ((st = _nixl_pairs_scan(a, r, guess, merge, &common, &k)) != NIXL_SUCCESS) return st;
    if (!(r->be = _nixl_pick_backend(r, order, n, common))) {
        _nixl_logi(a, NIXL_LOG_ERROR, NIXL_LOGITEM_XFER_NO_BACKEND, "make_xfer_req: no backend holds both sides of this request (to %s)",
                  r->rh->loopback ? a->name : r->rh->remote->name);
        return NIXL_ERR_NOT_SUPPORTED;
    }
    if (r->rh->loopback && (st = _nixl_load_loopback(a, r->be, r)) != NIXL_SUCCESS) return st;
    if (r->be != guess) _nixl_descs_fill(a, r, r->be, merge, &k);
    return _nixl_backend_prep(a, r, k);
}

static nixl_status_t _nixl_make_locked(nixl_agent_t *a, nixl_xfer_op_t op, nixl_dlist_handle_t *lh,
                                       const int *lidx, size_t ln, nixl_dlist_handle_t *rh, const int *ridx,
                                       size_t rn, const nixl_opt_args_t *opt, nixl_xfer_req_t **out) {
    nixl_xfer_req_t *r;
    nixl_status_t st;
    if (op != NIXL_READ && op != NIXL_WRITE) {
        _nixl_log(a, NIXL_LOG_ERROR, "make_xfer_req: unknown operation %d", (int)op);
        return NIXL_ERR_INVALID_PARAM;
    }
    if (!lh || !rh || lh->agent != a || rh->agent != a || lh->user_released || rh->user_released) {
        _nixl_log(a, NIXL_LOG_ERROR, "make_xfer_req: a descriptor list handle is missing or released");
        return NIXL_ERR_INVALID_PARAM;
    }
    if (lh->remote || lh->loopback || (!rh->remote && !rh->loopback)) {
        _nixl_log(a, NIXL_LOG_ERROR, "make_xfer_req: want a local list first and a remote (or own-name) list second");
        return NIXL_ERR_INVALID_PARAM;
    }
    if (ln != rn || ln == 0 || !lidx || !ridx) {
        _nixl_log(a, NIXL_LOG_ERROR, "make_xfer_req: %zu local and %zu remote indices (want equal and non-zero)", ln,
                  rn);
        return NIXL_ERR_INVALID_PARAM;
    }
    if (rh->remote && rh->remote->dead) {
        _nixl_log(a, NIXL_LOG_ERROR, "make_xfer_req: metadata of %s was invalidated", rh->remote->name);
        return rh->remote->dead_why;
    }
    r = (nixl_xfer_req_t *)_nixl_alloc(a, sizeof *r);
    if (!r) return NIXL_ERR_BACKEND;
    r->agent = a;
    r->op = op;
    r->n = ln;
    r->status = NIXL_ERR_NOT_POSTED;
    r->epoch = a->epoch;
    r->lh = lh;
    r->rh = rh;
    lh->refs++;
    rh->refs++;
    r->next = a->reqs;
    if (a->reqs) a->reqs->prev = r;
    a->reqs = r;
    r->lidx = (int *)_nixl_memdup(a, lidx, ln * sizeof *lidx);
    r->ridx = (int *)_nixl_memdup(a, ridx, rn * sizeof *ridx);
    if (!r->lidx || !r->ridx) st = NIXL_ERR_BACKEND;
    else if ((st = _nixl_set_notif(a, r, opt)) != NIXL_SUCCESS) (void)0;
    else st = _nixl_make_resolve(a, r, opt);
    if (st != NIXL_SUCCESS) {
        _nixl_req_free(a, r);
        return st;
    }
    *out = r;
    return NIXL_SUCCESS;
}

NIXL_API nixl_status_t nixl_make_xfer_req(nixl_agent_t *agent, nixl_xfer_op_t op, nixl_dlist_handle_t *local,
                                          const int *local_idx, size_t local_n, nixl_dlist_handle_t *remote,
                                          const int *remote_idx, size_t remote_n, const nixl_opt_args_t *opt,
                                          nixl_xfer_req_t **req) {
    nixl_status_t st;
    if (!agent || !req) return NIXL_ERR_INVALID_PARAM;
    *req = NULL;
    _nixl_lock(agent);
    st = _nixl_make_locked(agent, op, local, local_idx, local_n, remote, remote_idx, remote_n, opt, req);
    _nixl_unlock(agent);
    return st;
}

NIXL_API nixl_status_t nixl_create_xfer_req(nixl_agent_t *agent, nixl_xfer_op_t op, const nixl_dlist_t *local,
                                            const nixl_dlist_t *remote, const char *remote_agent,
                                            const nixl_opt_args_t *opt, nixl_xfer_req_t **req) {
    nixl_dlist_handle_t *lh = NULL, *rh = NULL;
    int *idx = NULL;
    nixl_status_t st;
    size_t i;
    if (!agent || !req) return NIXL_ERR_INVALID_PARAM;
    *req = NULL;
    _nixl_lock(agent);
    if (!local || !remote || !remote_agent || !*remote_agent) {
        _nixl_logi(agent, NIXL_LOG_ERROR, NIXL_LOGITEM_XFER_ARGS_MISSING, "create_xfer_req: local list, remote list and remote agent are required");
        st = NIXL_ERR_INVALID_PARAM;
    } else if (local->count != remote->count) {
        _nixl_log(agent, NIXL_LOG_ERROR, "create_xfer_req: %zu local and %zu remote descriptors", local->count,
                  remote->count);
        st = NIXL_ERR_INVALID_PARAM;
    } else if ((st = _nixl_prep_locked(agent, NULL, local, &lh)) == NIXL_SUCCESS &&
               (st = _nixl_prep_locked(agent, remote_agent, remote, &rh)) == NIXL_SUCCESS) {
        idx = (int *)_nixl_alloc_array(agent, local->count ? local->count : 1, sizeof *idx);
        if (!idx || local->count > (size_t)2147483647) st = NIXL_ERR_BACKEND;
        for (i = 0; idx && i < local->count; i++) idx[i] = (int)i;
        if (st == NIXL_SUCCESS)
            st = _nixl_make_locked(agent, op, lh, idx, local->count, rh, idx, remote->count, opt, req);
    }
    /* the request holds its own references to both lists */
    if (lh) {
        lh->user_released = 1;
        _nixl_handle_unref(agent, lh);
    }
    if (rh) {
        rh->user_released = 1;
        _nixl_handle_unref(agent, rh);
    }
    _nixl_free(agent, idx);
    _nixl_unlock(agent);
    return st;
}

/* Slow path of post, only after some region or peer went away. */
static nixl_status_t _nixl_revalidate(nixl_agent_t *a, nixl_xfer_req_t *r) {
    size_t i;
    if (r->rh->remote && r->rh->remote->dead) {
        _nixl_log(a, NIXL_LOG_ERROR, "post_xfer_req: metadata of %s was invalidated (%s)", r->rh->remote->name,
                  nixl_status_str(r->rh->remote->dead_why));
        return r->rh->remote->dead_why;
    }
    for (i = 0; i < r->n; i++)
        if (_nixl_hent_region(r->lh, (size_t)r->lidx[i])->dead || _nixl_hent_region(r->rh, (size_t)r->ridx[i])->dead) {
            _nixl_log(a, NIXL_LOG_ERROR, "post_xfer_req: pair %zu uses a region that was deregistered", i);
            return NIXL_ERR_NOT_FOUND;
        }
    r->epoch = a->epoch;
    return NIXL_SUCCESS;
}

static nixl_status_t _nixl_post_locked(nixl_agent_t *a, nixl_xfer_req_t *r, const nixl_opt_args_t *opt) {
    nixl_status_t st;
    uint64_t t0 = 0;
    if (r->status == NIXL_IN_PROG) {
        /* it may have finished since the caller last looked */
        r->status = r->be->ops->check_xfer(r->be->engine, r->bh);
        if (r->status == NIXL_IN_PROG) return NIXL_ERR_REPOST_ACTIVE;
    }
    if (r->epoch != a->epoch && (st = _nixl_revalidate(a, r)) != NIXL_SUCCESS) return st;
    if ((st = _nixl_set_notif(a, r, opt)) != NIXL_SUCCESS) return st;
    if (r->has_notif && !(r->be->ops->caps & NIXL_CAP_NOTIF)) {
        _nixl_log(a, NIXL_LOG_ERROR, "post_xfer_req: backend %s has no notifications", r->be->ops->name);
        return NIXL_ERR_NOT_SUPPORTED;
    }
    if (a->cfg.capture_telemetry) t0 = nixl_now_us();
    st = r->be->ops->post_xfer(r->be->engine, r->bh, r->notif, r->notif_len, r->has_notif);
    r->status = st;
    if (a->cfg.capture_telemetry) {
        r->t_post = t0;
        r->t_post_dur = nixl_now_us() - t0;
        r->t_done = st == NIXL_IN_PROG ? 0 : t0 + r->t_post_dur;
        r->have_telemetry = st != NIXL_IN_PROG;
    }
    if (st < 0)
        _nixl_log(a, NIXL_LOG_ERROR, "post_xfer_req: %s: %s", r->be->ops->name, nixl_status_str(st));
    return st;
}

NIXL_API nixl_status_t nixl_post_xfer_req(nixl_agent_t *agent, nixl_xfer_req_t *req, const nixl_opt_args_t *opt) {
    nixl_status_t st;
    if (!agent || !req || req->agent != agent) return NIXL_ERR_INVALID_PARAM;
    _nixl_lock(agent);
    st = _nixl_post_locked(agent, req, opt);
    _nixl_unlock(agent);
    return st;
}

NIXL_API nixl_status_t nixl_get_xfer_status(nixl_agent_t *agent, nixl_xfer_req_t *req) {
    nixl_status_t st;
    if (!agent || !req || req->agent != agent) return NIXL_ERR_INVALID_PARAM;
    _nixl_lock(agent);
    if (req->status == NIXL_IN_PROG) {
        if (req->be->ops->progress) req->be->ops->progress(req->be->engine);
        req->status = req->be->ops->check_xfer(req->be->engine, req->bh);
        if (req->status != NIXL_IN_PROG && agent->cfg.capture_telemetry) {
            req->t_done = nixl_now_us();
            req->have_telemetry = 1;
        }
    }
    st = req->status;
    _nixl_unlock(agent);
    return st;
}

NIXL_API nixl_status_t nixl_release_xfer_req(nixl_agent_t *agent, nixl_xfer_req_t *req) {
    nixl_status_t st;
    if (!agent || !req || req->agent != agent) return NIXL_ERR_INVALID_PARAM;
    _nixl_lock(agent);
    st = req->be->ops->release_xfer(req->be->engine, req->bh);
    if (st == NIXL_SUCCESS) {
        _nixl_req_free(agent, req);
    } else {
        _nixl_log(agent, NIXL_LOG_WARN, "release_xfer_req: %s cannot abort the request in flight (%s); release it "
                  "again once its status is final", req->be->ops->name, nixl_status_str(st));
        st = NIXL_ERR_REPOST_ACTIVE;
    }
    _nixl_unlock(agent);
    return st;
}

NIXL_API nixl_status_t nixl_query_xfer_backend(nixl_agent_t *agent, const nixl_xfer_req_t *req,
                                               nixl_backend_t **backend) {
    if (!agent || !req || !backend || req->agent != agent) return NIXL_ERR_INVALID_PARAM;
    *backend = req->be;
    return NIXL_SUCCESS;
}

NIXL_API nixl_status_t nixl_estimate_xfer_cost(nixl_agent_t *agent, const nixl_xfer_req_t *req, int64_t *duration_us,
                                               int64_t *err_margin_us) {
    nixl_status_t st;
    if (!agent || !req || !duration_us || !err_margin_us || req->agent != agent) return NIXL_ERR_INVALID_PARAM;
    _nixl_lock(agent);
    st = req->be->ops->estimate_cost
             ? req->be->ops->estimate_cost(req->be->engine, req->bh, duration_us, err_margin_us)
             : NIXL_ERR_NOT_SUPPORTED;
    _nixl_unlock(agent);
    return st;
}

NIXL_API nixl_status_t nixl_get_xfer_telemetry(nixl_agent_t *agent, const nixl_xfer_req_t *req,
                                               nixl_xfer_telemetry_t *out) {
    nixl_status_t st = NIXL_SUCCESS;
    if (!agent || !req || !out || req->agent != agent) return NIXL_ERR_INVALID_PARAM;
    _nixl_lock(agent);
    if (!agent->cfg.capture_telemetry || !req->have_telemetry) {
        st = NIXL_ERR_NO_TELEMETRY;
    } else {
        out->start_us = req->t_post;
        out->post_us = req->t_post_dur;
        out->xfer_us = req->t_done - req->t_post;
        out->total_bytes = req->total_bytes;
        out->desc_count = req->n;
    }
    _nixl_unlock(agent);
    return st;
}

// >>notifications

NIXL_API nixl_status_t nixl_gen_notif(nixl_agent_t *agent, const char *remote, const void *msg, size_t len,
                                      const nixl_opt_args_t *opt) {
    nixl_backend_t *order[NIXL_MAX_BACKENDS];
    nixl_status_t st;
    _nixl_remote *rm = NULL;
    int i, n, loopback;
    if (!agent || !remote || (len && !msg)) return NIXL_ERR_INVALID_PARAM;
    _nixl_lock(agent);
    loopback = !strcmp(remote, agent->name);
    st = _nixl_backend_order(agent, "gen_notif", opt, order, &n);
    if (st == NIXL_SUCCESS && !loopback && !(rm = _nixl_remote_find(agent, remote))) {
        _nixl_log(agent, NIXL_LOG_ERROR, "gen_notif: no metadata of %s is loaded", remote);
        st = NIXL_ERR_NOT_FOUND;
    }
    for (i = 0; st == NIXL_SUCCESS && i < n; i++) {
        nixl_backend_t *b = order[i];
        if (!(b->ops->caps & NIXL_CAP_NOTIF) || !b->ops->gen_notif) continue;
        if (loopback ? !(b->ops->caps & NIXL_CAP_LOCAL) : !(rm->loaded_mask & (1u << b->idx))) continue;
        st = b->ops->gen_notif(b->engine, remote, msg, len);
        if (st < 0) _nixl_log(agent, NIXL_LOG_ERROR, "gen_notif to %s: %s: %s", remote, b->ops->name,
                              nixl_status_str(st));
        _nixl_unlock(agent);
        return st < 0 || st == NIXL_IN_PROG ? st : NIXL_SUCCESS;
    }
    if (st == NIXL_SUCCESS) {
        _nixl_log(agent, NIXL_LOG_ERROR, "gen_notif: no backend with notifications reaches %s", remote);
        st = NIXL_ERR_NOT_SUPPORTED;
    }
    _nixl_unlock(agent);
    return st;
}

NIXL_API nixl_status_t nixl_get_notifs(nixl_agent_t *agent, nixl_notif_fn fn, void *user) {
    _nixl_notif *q;
    if (!agent || !fn) return NIXL_ERR_INVALID_PARAM;
    _nixl_lock(agent);
    _nixl_progress_locked(agent);
    q = agent->nq_head;
    agent->nq_head = agent->nq_tail = NULL;
    _nixl_nq_drained(agent);
    _nixl_unlock(agent);
    while (q) {
        _nixl_notif *next = q->next;
        fn(user, q->sender, q->msg, q->len);
        _nixl_free(agent, q);
        q = next;
    }
    return NIXL_SUCCESS;
}

/* NIXL_CORE_READY */
#endif /* NIXL_IMPLEMENTATION_DONE */
#endif /* NIXL_IMPLEMENTATION */

/*
MIT License

Copyright (c) 2026 the nixl.h authors

Permission is hereby granted, free of charge, to any person obtaining a copy of
this software and associated documentation files (the "Software"), to deal in
the Software without restriction, including without limitation the rights to
use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of
the Software, and to permit persons to whom the Software is furnished to do so,
subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS
FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER
IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
*/
