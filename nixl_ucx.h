/* nixl_ucx.h — the UCX backend of nixl.h.
   READ/WRITE and notifications over UCX (UCP): shared memory, TCP, CMA, and
   whatever transports the installed UCX has (verbs...). One-sided put/get
   only where the NIC checks remote keys; elsewhere active messages that the
   target checks against its own registrations (TRUST MODEL below).
   Written against UCX 1.13 (Debian 12); uses nothing newer.

   DO THIS
   -------
   In every file that uses it:
       #include "nixl_ucx.h"        (includes nixl.h)
   In exactly ONE C or C++ file, before the include:
       #define NIXL_IMPLEMENTATION
   That file gets the implementation of nixl.h and of this backend.
   Link: -lucp -lucs -lpthread            (Debian: libucx-dev; tools: ucx-utils)

       nixl_backend_t *be;
       nixl_create_backend(agent, nixl_ucx_backend(), "tls=tcp", &be);

   PARAMS (the params string of nixl_create_backend, "key=value,key=value")
   ------
       num_workers=N      UCP workers (1..64, default 1). Requests are spread
                          round-robin over them at prep time; local worker i
                          talks to the peer's worker i % (its worker count).
       tls=LIST           UCX transport list, i.e. UCX_TLS (default: UCX's own
                          default, "all", or the UCX_TLS environment variable).
                          Separate transports with '+' (a ',' would end the
                          param): "tls=tcp", "tls=posix", "tls=sysv",
                          "tls=cma+posix", "tls=rc_verbs+tcp". Loopback
                          needs no "self" (tcp and shared memory reach the
                          agent's own worker too).
       data_path=auto|rma|am
                          how data moves (default auto). rma: one-sided
                          ucp_put/ucp_get, for transports whose NIC checks
                          remote keys (rc, dc, ud, ib...). am: the checked
                          active-message path. auto: rma only when every
                          transport in tls= (else UCX_TLS) is of that kind,
                          otherwise am (UCX's default "all" includes tcp and
                          shared memory: am). A peer gets one-sided RMA only
                          when both ends chose rma; the log says which path
                          the agent uses. data_path=rma over software
                          transports is logged as the hole it is.
       notif_unverified=accept|drop
                          without an auth token, notifications from a peer
                          whose metadata this agent has not loaded cannot
                          be verified: drop them (default, logged) or
                          accept them on the sender's word (logged once per
                          session).
       rndv_thresh=BYTES  checked path: data up to this size travels eager
                          (copied), larger by rendezvous, received straight
                          into the checked target range (default 8192).
       ucx.KEY=VALUE      any UCX configuration variable, without (or with) its
                          UCX_ prefix: "ucx.KEEPALIVE_INTERVAL=1s",
                          "ucx.UCX_NET_DEVICES=lo". '+' in VALUE becomes ','.
                          An unknown KEY or a bad VALUE: INVALID_PARAM, logged.
   UCX_* environment variables apply as well; params override them.
   UCX_POSIX_ERROR_HANDLING=y and UCX_SYSV_ERROR_HANDLING=y are needed: UCX
   1.13 reads them only from the environment, and without them its shared-
   memory transports refuse the endpoints' peer error handling (no shm at
   all). The implementation sets them, where unset, ONCE, at program load
   (a constructor: before main, so before any thread that could be in
   getenv; for a library opened with dlopen, at dlopen), never from
   create(); create() logs what was found. Define NIXL_UCX_NO_ENV_DEFAULTS
   to leave the environment alone: then set them yourself (create() warns
   when they are missing and shared memory will not carry).

   TRUST MODEL
   -----------
   Only memory the target registered with this backend (and has not
   deregistered) can be reached, and the TARGET enforces it:
   - On tcp, posix, sysv and cma, UCX 1.13 runs ucp_put/ucp_get in software
     ("software emulation" in UCX_PROTO_INFO): the target's UCX copies to
     whatever address the message names, checking no key. So there the
     backend never enables UCP_FEATURE_RMA (UCX then installs no handler for
     emulated put/get: a raw UCX peer's put is dropped), and every WRITE and
     READ is an active message that names a target range; the target's
     handler serves it only if one registered region holds the whole range,
     else refuses it (NIXL_ERR_NOT_ALLOWED at the initiator, a log line on
     both sides). Deregistration takes effect at once: the region leaves the
     target's index before deregister_mem returns; accesses already in
     flight into or out of it are waited for (2 s at most, then logged).
   - On verbs-family transports (data_path=rma) the NIC checks rkeys:
     unmapped memory has no valid key. Caveat: with UCP_FEATURE_RMA on, a
     peer that speaks raw UCX can still force UCX's software emulation over
     an AM lane, which checks nothing; use rma only among trusted peers.
   - The initiator's own check of remote descriptors (nixl.h) gives early,
     clear errors; it is not the protection.
   - Answers (ACK, READ data) carry the request's slot, post generation and
     a random 64-bit token; anything else is ignored.
   - Who sends a notification is known by its SESSION, never by a name in
     the message. A new endpoint's first message is a HELLO (the sender's
     name and a 16-byte nonce); the receiver answers with a WELCOME that
     carries a random 64-bit session id, and every notification carries
     its endpoint's session id. With an auth token the WELCOME goes back on
     UCX's reply endpoint with the receiver's HMAC and the sender answers
     with a PROOF (its HMAC): both ends proved the token, over fresh
     nonces. Without one the receiver sends the WELCOME through its own
     endpoint to the worker address in the claimed name's LOADED metadata,
     so only that process learns the session id (a HELLO waits up to 30 s
     for that metadata to arrive). Notifications wait at the sender (in
     order) until their endpoint's session is open, up to 10 s, then fail
     NOT_ALLOWED (logged). Notifications without an open session are
     dropped at the receiver (logged: the 1st, 2nd, 4th, ...). Sessions are
     bounded (4096; unproven ones make room first).
   - Flow control: a session gives its sender a window of
     NIXL_UCX_NOTIF_WINDOW bytes (4 MiB; a notification costs its bytes,
     the sender's name and 65). The receiver gives window back (a CREDIT
     message to the reply endpoint of the sender's latest notification, or
     in answer to the sender's request for it, sent every 10 ms while it
     waits) only while its queue can take a whole window more from that
     sender (or holds nothing of it). Out of window, a request's
     notification waits and the request stays IN_PROG; gen_notif queues up
     to a window's worth per peer and then returns IN_PROG (nothing
     queued: progress and retry). Nothing is dropped for a sender that
     keeps to its window while the per-sender queue limit is at least the
     window and the total limit covers the senders' windows (defaults: 64
     MiB per sender, 256 MiB in all: 64 senders at once). A sender that
     sends past its window is cut off (logged once): what it sends is
     dropped and counted, and its name opens no session for 10 s.
   - A peer's worker addresses and packed rkeys are checked against UCX
     1.13's layouts before ucp_ep_create / ucp_ep_rkey_unpack see them
     (section "wire checks"; tests/fuzz_ucx_wire.c mutates real ones and
     runs each in a child process: zero aborts).

   THE CHECKED PATH (data_path=am)
   -------------------------------
   WRITE: one AM per descriptor carrying the bytes; eager up to rndv_thresh
   (the target copies them in), rendezvous above (ucp_am_recv_data_nbx
   straight into the checked range: process_vm_readv on cma, zero-copy).
   The target ACKs each descriptor once its bytes are in place. READ: a
   request AM per descriptor; the target answers with the bytes (eager or
   rendezvous by size), received straight into the initiator's buffer. The
   request's notification is sent only after every descriptor was ACKed or
   received. The target must drive progress (nixl_progress, get_notifs, or
   a progress thread) for transfers into or out of it to finish.

   UCX 1.13 AND THESE TRANSPORTS (measured, worth knowing)
   -------------------------------------------------------
   cma (process_vm_writev) is used by UCX 1.13 only for rendezvous, never
   for ucp_put/ucp_get: the checked path's rendezvous uses it.
   UCX 1.13 watches an endpoint (keepalive) only once its wire-up finished;
   a peer that dies before that leaves sends waiting forever on shared
   memory. Connection info therefore carries the process identity (pid,
   start time, pid namespace, boot id): while checked requests wait on a
   peer of the same host, progress reads /proc/PID/stat every 100 ms and
   fails a vanished peer like an endpoint error. A new endpoint sends its
   session HELLO at once, so the wire-up starts while the peer is alive.
   On Soft-RoCE (rdma_rxe in a QEMU VM) UCX 1.13 picks GID index 1 (the
   IPv4-mapped RoCE v2 GID); its UD traffic then never arrives, the UD
   wire-up times out (and trips an assertion inside UCX). With
   UCX_IB_GID_INDEX=0 in the environment (the parameter form
   ucx.IB_GID_INDEX=0 is not applied everywhere in 1.13 and fails)
   "tls=rc_verbs+ud_verbs" works: RMA and AM on rc_verbs, wire-up and
   keepalive on ud_verbs. "tls=rc_verbs+tcp" works without it (tcp wires up).
   UCX 1.13 applies ucx.KEY params to UCP variables (TLS, KEEPALIVE_*,
   RNDV_THRESH...) reliably; memory-domain variables are read from the
   environment only, so set those there.

   WHAT IT DOES
   ------------
   - One UCP context (features AM, plus RMA on the one-sided path) and
     num_workers workers (UCS_THREAD_MODE_SERIALIZED: the agent lock
     serialises every call).
   - Connection info = the workers' addresses. Endpoints are created from
     them (locally, without blocking) when the peer's first region is loaded,
     or on nixl_make_connection / gen_notif, with UCP_ERR_HANDLING_MODE_PEER.
   - Registration: ucp_mem_map; on the one-sided path the public data of a
     region is its packed rkey (ucp_rkey_pack), unpacked per endpoint in
     load_remote_md; on the checked path it has no key (nothing unpacked).
   - One-sided: a request posts ucp_put_nbx (WRITE) or ucp_get_nbx (READ)
     per descriptor, then ucp_ep_flush_nbx; the flush completing means every
     byte landed. Checked: see above. Only then the request's notification
     is sent as an active message (ucp_am_send_nbx, eager), from progress.
   - Notifications carry the sender's agent name (worker addresses name no
     agent). Receiving runs the AM handler inside progress.
   - gen_notif sends on worker 0's endpoint: gen_notif messages to one peer
     arrive in the order they were sent.
   - Loopback (NIXL_CAP_LOCAL): an endpoint to the agent's own workers.
   - Deregistration: the target refuses the region at once (checked path)
     or the NIC does (unmapped: the key is dead); no message to peers.

   VRAM: registered only when UCX reports CUDA memory support
   (ucp_context_query memory_types). Debian's UCX 1.13 has no CUDA: then the
   backend takes DRAM only, and a VRAM region gets NIXL_ERR_NOT_SUPPORTED with
   a log line saying so. Where UCX has CUDA, the CUDA driver (dlopen'ed by
   nixl.h) first confirms each VRAM region is device memory of its dev_id
   inside one allocation (UCX trusts the memory type it is given): a host
   pointer passed as VRAM is INVALID_PARAM, no driver is NOT_SUPPORTED.

   THREADS
   -------
   No threads of its own (UCX may run its async thread). Every entry point is
   a vtable call made with the agent lock held.

   ERRORS
   ------
   UCX failures log the call, its arguments and ucs_status_string(). An
   endpoint error (peer died, connection reset, keepalive timeout) ends the
   peer's requests with NIXL_ERR_REMOTE_DISCONNECT and reports the peer down
   (the core then unloads its regions and disconnects). A peer killed with
   SIGKILL is noticed at the next progress on tcp, posix and sysv (measured:
   under 1 ms); a peer that is alive but stuck is noticed by UCX keepalive
   only where the transport has it (UCX_KEEPALIVE_INTERVAL, default 20 s:
   ucx.KEEPALIVE_INTERVAL=1s lowers it).

   CONFIGURATION MACROS
   --------------------
       NIXL_UCX_MAX_NOTIF   largest notification / gen_notif in bytes
                            (default 1 MiB); larger ones: INVALID_PARAM
       NIXL_UCX_NOTIF_WINDOW  notification bytes a sender may have
                            unacknowledged (default 4 MiB); both ends must
                            agree, and it must hold a largest notification

   LIMITS
   ------
   Notification (and gen_notif) size: NIXL_UCX_MAX_NOTIF.
   A request's notification buffer is allocated at prep (256 bytes, or more
   when prep says it carries one) and grows on a post with a longer
   notification; a post never allocates otherwise.
   A peer's connection info: up to 64 worker addresses.
   UCX 1.13 itself can still abort a process when a peer dies in the middle
   of an endpoint's wire-up (assertion "wireup_ep->pending_count == 0" in
   ucp_worker_discard_uct_ep, seen on tcp about once in 500 deaths timed to
   land in the wire-up); a peer that dies after it is wired up is handled.

   FINDING YOUR WAY
   ----------------
   Sections ("// >>name"), in order. Shared with nixl_verbs.h, same names
   and order: constants, structs, helpers, ... (this backend's own
   machinery) ..., lifecycle (vtable), memory (vtable), peers' memory
   (vtable), connections (vtable), transfers (vtable), notifications
   (vtable), progress, public. Its own machinery: liveness, params, am (the
   notification channel, its identity handshake and its window), wire checks (a peer's
   UCX address and keys, checked before UCX parses them), workers, peers,
   requests, checked (the target-checked data path: its registrations,
   accesses in flight, the initiator's side, requests).

   LICENSE: MIT (see nixl.h).
*/
#ifndef NIXL_UCX_H
#define NIXL_UCX_H

#include "nixl.h"

#ifndef NIXL_UCX_MAX_NOTIF
#define NIXL_UCX_MAX_NOTIF (1u << 20)
#endif
#ifndef NIXL_UCX_NOTIF_WINDOW
#define NIXL_UCX_NOTIF_WINDOW (4u << 20)
#endif
#if NIXL_UCX_NOTIF_WINDOW < NIXL_UCX_MAX_NOTIF + 512
#error "NIXL_UCX_NOTIF_WINDOW must hold a notification of NIXL_UCX_MAX_NOTIF bytes (and its name)"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The UCX backend's vtable, for nixl_create_backend(). Its mem_mask has
   VRAM only when the installed UCX supports CUDA memory (probed once, on
   the first call). Never fails (errors come from nixl_create_backend:
   BACKEND when UCX cannot start, INVALID_PARAM for a bad param). Any
   thread (the probe runs once under pthread_once). */
NIXL_API const nixl_backend_ops_t *nixl_ucx_backend(void);

#ifdef __cplusplus
}
#endif

#endif /* NIXL_UCX_H */

/* ======================================================================== */
/* implementation                                                           */
/* ======================================================================== */
#if defined(NIXL_IMPLEMENTATION) && !defined(NIXL_UCX_IMPLEMENTATION_DONE)
#define NIXL_UCX_IMPLEMENTATION_DONE

#include "nixl.h" /* its implementation too, when the declarations came first */

#include <ucp/api/ucp.h>
#include <ucs/config/parser.h> /* ucs_config_parser_print_all_opts: checks ucx.KEY names */
#include <pthread.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

// >>constants

#define _NIXL_UCX_AM_ID 0x4e58u          /* "NX": notifications */
#define _NIXL_UCX_AM_DATA_ID 0x4e59u     /* "NY": the checked data path */
#define _NIXL_UCX_WIRE_VERSION 4u
/* notification-channel kinds (payload of _NIXL_UCX_AM_ID): u8 version, u8
   kind, u16le name length (HELLO) or 0, then by kind */
#define _NIXL_UCX_AM_NOTIF 1u            /* u64le session, then the notification bytes */
#define _NIXL_UCX_AM_HELLO 2u            /* 16-byte nonce, then the sender's name: opens a session */
#define _NIXL_UCX_AM_WELCOME 3u          /* nonce, u64le session (0 = refused), MAC with a secret, the
                                            receiver's name */
#define _NIXL_UCX_AM_PROOF 4u            /* u64le session, MAC: the sender knows the secret */
#define _NIXL_UCX_AM_CREDIT 5u           /* u16 field = flags, u64le session, u64le bytes: the receiver
                                            gives back window (sent to the sender's reply endpoint) */
#define _NIXL_UCX_AM_CREDIT_ASK 6u       /* u64le session: a sender out of window asks for it back */
#define _NIXL_UCX_CREDIT_NO_SESSION 1u   /* CREDIT flag: the receiver knows no such open session */
#define _NIXL_UCX_CREDIT_MSG 20u
#define _NIXL_UCX_ASK_MSG 12u
#define _NIXL_UCX_NOTIF_COST 64u         /* window bytes a notification costs beyond its own and the name's */
#define _NIXL_UCX_ASK_US 10000u          /* a sender out of window asks again this often */
#define _NIXL_UCX_CUTOFF_US 10000000u    /* a peer that flooded opens no new session for this long */
#define _NIXL_UCX_MAX_CTL_INFLIGHT 4096u /* control messages (HELLO, WELCOME, CREDIT...) not yet sent */
#define _NIXL_UCX_NONCE 16u
#define _NIXL_UCX_MAC 32u
#define _NIXL_UCX_NOTIF_HDR 12u
#define _NIXL_UCX_SESSION_WAIT_US 10000000u /* a sender's notifications wait this long for a session */
#define _NIXL_UCX_HELLO_WAIT_US 30000000u   /* a HELLO waits this long for the sender's metadata */
#define _NIXL_UCX_SUPERSEDED_US 5000000u    /* a claimed session outlives its verified successor's WELCOME */
#define _NIXL_UCX_MAX_SESSIONS 4096u
#define _NIXL_UCX_SESSIONS_PER_NAME 256u
/* data-path message kinds (user header of _NIXL_UCX_AM_DATA_ID) */
#define _NIXL_UCX_DP_WRITE 1u            /* data: bytes for [addr, addr+len) at the target */
#define _NIXL_UCX_DP_READ_REQ 2u         /* no data: send me [addr, addr+len) */
#define _NIXL_UCX_DP_READ_DATA 3u        /* data (or a refusal status): the answer */
#define _NIXL_UCX_DP_ACK 4u              /* no data: a WRITE landed (or was refused) */
#define _NIXL_UCX_DP_HELLO 5u            /* no data: wires a new endpoint up (ignored) */
#define _NIXL_UCX_DP_F_RNDV 1u          /* request flag: answer by rendezvous (GPU memory) */
/* header: u8 version, u8 kind, u16le refusal in answers (a -nixl_status_t,
   0 = fine) or flags in requests,
   u32le descriptor index, u64le slot/generation, u64le token, u64le addr,
   u64le len */
#define _NIXL_UCX_DP_HDR 40u
#define _NIXL_UCX_MAX_WORKERS 64u
#define _NIXL_UCX_NOTIF_PREALLOC 256u
#define _NIXL_UCX_PROGRESS_BUDGET 1024   /* ucp_worker_progress calls per worker per progress() */
#define _NIXL_UCX_DESTROY_WAIT_US 2000000u
#define _NIXL_UCX_DEREG_WAIT_US 2000000u /* deregistration waits this long for accesses in flight */
#define _NIXL_UCX_RNDV_THRESH 8192u      /* default: larger data goes by rendezvous (zero-copy) */
/* conn info: magic 'U', version, worker count, flags, the process identity
   (u32le pid, u64le start time, u64le pid namespace, 36-byte boot id), then
   per worker u32le length + address bytes */
#define _NIXL_UCX_INFO_MAGIC 0x55u
#define _NIXL_UCX_BOOT_ID 36u
#define _NIXL_UCX_IDENT (4u + 8u + 8u + _NIXL_UCX_BOOT_ID)
#define _NIXL_UCX_INFO_HDR (4u + _NIXL_UCX_IDENT)
#define _NIXL_UCX_WATCH_US 100000u       /* a stalled peer on this host is checked this often */
#define _NIXL_UCX_INFO_RMA 1u            /* flags: this agent serves one-sided RMA */
/* public data: magic 'R', version, flags, reserved, then the packed rkey
   (only an agent on the one-sided path packs one) */
#define _NIXL_UCX_PUB_MAGIC 0x52u
#define _NIXL_UCX_PUB_HDR 4u

// >>structs

typedef struct _nixl_ucx_engine _nixl_ucx_engine_t;
typedef struct _nixl_ucx_peer _nixl_ucx_peer_t;

/* One endpoint (peer, local worker). Lives on the engine's list until its
   close completed, so the error handler's arg never dangles. */
typedef struct _nixl_ucx_conn {
    struct _nixl_ucx_conn *next;
    _nixl_ucx_engine_t *eng;
    _nixl_ucx_peer_t *peer; /* NULL once the peer was disconnected */
    ucp_ep_h ep;
    int pending;            /* our in-flight UCX requests on it (flush, AM) */
    int close_wanted;       /* disconnected: close once nothing is pending */
    int closing;            /* ucp_ep_close_nbx was called */
    void *close_req;        /* its request, until complete */
    /* our session at the peer: its notifications carry sess */
    unsigned char nonce[_NIXL_UCX_NONCE];
    uint64_t sess;
    int sess_state;         /* _NIXL_UCX_SESS_* */
    uint64_t hello_at;
    struct _nixl_ucx_held *held, *held_tail; /* gen_notif messages waiting for the session or window */
    size_t held_bytes;
    /* flow control: window bytes sent on the session, and how many of them
       the receiver gave back (both running totals: a grant is idempotent) */
    uint64_t sent_total, acked_total;
    int starved;            /* a notification waits for window: ask for it */
    uint64_t ask_at;
    int rehello;            /* the peer forgot our session: say HELLO again */
    unsigned ready_blocked; /* the send_ready_notifs pass that found it out of window */
} _nixl_ucx_conn_t;

enum { _NIXL_UCX_SESS_WAIT = 0, _NIXL_UCX_SESS_OPEN = 1, _NIXL_UCX_SESS_PROVE = 2, _NIXL_UCX_SESS_REFUSED = -1 };

typedef struct _nixl_ucx_held {
    struct _nixl_ucx_held *next;
    unsigned char *buf;
    size_t len;
} _nixl_ucx_held_t;

/* A peer's session at this agent (the receiver's side): a notification is
   attributed to `name` only through an open session. */
typedef struct _nixl_ucx_sess {
    struct _nixl_ucx_sess *next;
    uint64_t id;
    int state;              /* _NIXL_UCX_RS_* */
    int claimed;            /* open on the peer's word (notif_unverified=accept) */
    int superseded;         /* claimed, then the name's metadata arrived: a verified
                               session replaces it; it lives on briefly (born =
                               then) so notifications already sent on it count */
    uint64_t born;
    unsigned char nonce[_NIXL_UCX_NONCE];
    uint64_t recv_total;    /* window bytes received (running total) */
    uint64_t acked_total;   /* of them, given back to the sender */
    int cut;                /* sent past its window: cut off (born = then) */
    unsigned long cut_drops;
    char name[256];
} _nixl_ucx_sess_t;

/* WAIT_MD: no secret, the sender's metadata not loaded yet; SEND: welcome
   it through our own endpoint to the address in its metadata; PROOF: the
   secret's proof is due */
enum { _NIXL_UCX_RS_WAIT_MD, _NIXL_UCX_RS_SEND, _NIXL_UCX_RS_PROOF, _NIXL_UCX_RS_OPEN };

/* Which process an agent runs in: on the same host (boot id and pid
   namespace equal), whether it is still alive can be read from /proc. */
typedef struct _nixl_ucx_ident {
    uint32_t pid;
    uint64_t start, pidns;
    char boot[_NIXL_UCX_BOOT_ID];
} _nixl_ucx_ident_t;

typedef struct _nixl_ucx_rmd {
    struct _nixl_ucx_rmd *next, *prev; /* the peer's list */
    _nixl_ucx_peer_t *peer;
    uintptr_t addr;
    size_t len;
    ucp_rkey_h *rkeys; /* one per local worker (rkeys belong to an ep); NULL on the checked path */
} _nixl_ucx_rmd_t;

struct _nixl_ucx_peer {
    _nixl_ucx_peer_t *next;
    char *name;
    unsigned char *info; /* copy of the connection info */
    size_t info_len;
    unsigned num_addrs;
    const unsigned char *addrs[_NIXL_UCX_MAX_WORKERS]; /* into info */
    size_t addr_lens[_NIXL_UCX_MAX_WORKERS];
    _nixl_ucx_conn_t **conns; /* per local worker, NULL until connected */
    _nixl_ucx_rmd_t *rmds;
    int rma;            /* one-sided put/get to it (both ends on the RMA path) */
    _nixl_ucx_ident_t ident;
    int same_host;      /* ident names a process on this host: watch it */
    uint64_t watched;   /* the watch pass that last read its /proc entry */
    int failed;         /* an endpoint reported an error */
    int down_reported;  /* nixl_backend_peer_down was called */
    ucs_status_t fail_status;
};

typedef struct _nixl_ucx_md {
    struct _nixl_ucx_md *next, *prev;
    ucp_mem_h memh;
    uintptr_t addr;
    size_t len;
    unsigned char *pub; /* magic header (+ packed rkey on the RMA path) */
    size_t pub_len;
    unsigned busy;      /* checked accesses in flight that read or write it */
    int vram;           /* GPU memory: never a CPU memcpy, rendezvous only */
} _nixl_ucx_md_t;

typedef struct _nixl_ucx_req _nixl_ucx_req_t;

typedef struct _nixl_ucx_op {
    _nixl_ucx_req_t *req;
    void *laddr;
    uint64_t raddr;
    size_t len;
    ucp_rkey_h rkey;
    unsigned char hdr[_NIXL_UCX_DP_HDR]; /* checked path: this descriptor's AM header */
    unsigned char done;                   /* checked path: landed (or refused) in this post */
    unsigned char rndv;                   /* checked path: WRITE by rendezvous */
    unsigned char vram;                   /* the local side is GPU memory: no CPU memcpy into it */
} _nixl_ucx_op_t;

enum {
    _NIXL_UCX_REQ_IDLE = 0,     /* never posted */
    _NIXL_UCX_REQ_FLUSHING,     /* puts/gets posted, flush in flight */
    _NIXL_UCX_REQ_NOTIF_READY,  /* flushed, notification waits for progress */
    _NIXL_UCX_REQ_NOTIF_SENDING,
    _NIXL_UCX_REQ_DONE
};

struct _nixl_ucx_req {
    struct _nixl_ucx_req *next, *prev;   /* the engine's list of requests */
    struct _nixl_ucx_req *ready_next;    /* the engine's NOTIF_READY queue */
    _nixl_ucx_engine_t *eng;
    _nixl_ucx_peer_t *peer;              /* NULL once disconnected */
    _nixl_ucx_conn_t *conn;
    unsigned widx;
    nixl_xfer_op_t op;
    size_t count;
    _nixl_ucx_op_t *ops;
    int state;
    nixl_status_t status;
    void *ucx_req;                       /* in-flight flush or AM send */
    _nixl_ucx_conn_t *io_conn;           /* the conn ucx_req runs on */
    int send_notif;                      /* this post carries a notification */
    /* the checked path (active messages) */
    int am;                              /* this request moves data with checked AMs */
    uint32_t slot, gen;                  /* slot in the engine's table; post generation */
    uint64_t token;                      /* random: an answer must echo it */
    size_t ndone;                        /* descriptors landed (or refused) in this post */
    int io_inflight;                     /* our UCX sends/receives that reference it */
    nixl_status_t am_err;                /* first error of this post */
    unsigned char *notif;                /* AM payload: header + message */
    size_t notif_hdr, notif_len, notif_cap;
};

/* An in-flight gen_notif message (owns its payload). */
typedef struct _nixl_ucx_msg {
    struct _nixl_ucx_msg *next, *prev;
    _nixl_ucx_engine_t *eng;
    _nixl_ucx_conn_t *conn;
    void *ucx_req;
    size_t len;
    unsigned char *buf;
} _nixl_ucx_msg_t;

/* The target's side of a checked access in flight (a READ's answer, a
   WRITE's rendezvous receive, an ACK): owns the header UCX may still read,
   and pins the region against deregistration. */
typedef struct _nixl_ucx_tio {
    struct _nixl_ucx_tio *next, *prev;
    _nixl_ucx_engine_t *eng;
    _nixl_ucx_md_t *md;                   /* NULL: no region (ACK, refusal) or deregistered */
    ucp_ep_h reply_ep;                    /* a WRITE's rendezvous receive: where its ACK goes */
    unsigned char hdr[_NIXL_UCX_DP_HDR];
} _nixl_ucx_tio_t;

typedef struct _nixl_ucx_worker {
    _nixl_ucx_engine_t *eng;              /* the AM handlers' argument */
    ucp_worker_h h;
    ucp_address_t *addr;
    size_t addr_len;
} _nixl_ucx_worker_t;

struct _nixl_ucx_engine {
    nixl_backend_t *be;
    char *name;            /* the agent's name */
    size_t name_len;
    ucp_context_h ctx;
    uint64_t mem_types;    /* ucp_context_query memory_types */
    _nixl_cuda_t cuda;     /* VRAM: checks the pointers UCX is given */
    unsigned num_workers;
    _nixl_ucx_worker_t *workers;
    unsigned char *info;   /* our connection info */
    size_t info_len;
    unsigned next_worker;  /* round-robin for new requests */
    _nixl_ucx_peer_t *peers;
    _nixl_ucx_peer_t *self_peer; /* loopback, created on first load_local_md */
    _nixl_ucx_conn_t *conns;
    _nixl_ucx_md_t *mds;
    _nixl_ucx_md_t **by_addr; /* every md, sorted by address: the target's access check */
    size_t nby_addr, by_addr_cap;
    size_t max_region;     /* the longest region ever registered (bounds the search) */
    int rma;               /* this agent serves one-sided put/get (data_path) */
    size_t rndv_thresh;    /* checked path: eager below, rendezvous from here */
    _nixl_ucx_req_t **slots; /* checked path: answers find their request here */
    uint32_t nslots;       /* slots in use or freed (the table's length) */
    uint32_t *free_slots;  /* freed slot numbers (a stack), nfree of them */
    uint32_t nfree, slots_cap;
    uint64_t rng;          /* only if getrandom fails: a counter mixed into clock tokens */
    _nixl_ucx_tio_t *tios; /* target accesses in flight */
    _nixl_ucx_tio_t *tio_pool; /* finished ones, for reuse (an answer per message: no malloc each) */
    unsigned tio_pooled;
    _nixl_ucx_ident_t ident; /* this process */
    uint64_t next_watch;   /* when stalled same-host peers are checked next */
    _nixl_ucx_req_t *reqs;
    _nixl_ucx_req_t *ready_head, *ready_tail;
    _nixl_ucx_msg_t *msgs;
    int peer_failed;       /* some peer failed and is not reported yet */
    int destroying;
    /* sessions: who sends our notifications */
    _nixl_ucx_sess_t *sessions;
    unsigned nsessions;
    int sess_work;         /* a session or held message needs progress() */
    uint64_t next_sess_check;
    int notif_unverified;  /* accept a session on the peer's word (no secret, metadata not loaded) */
    unsigned long dropped_notifs; /* without an open session */
    unsigned long noisy;   /* warnings peers caused (rate-limited) */
    unsigned ctl_inflight; /* control messages UCX still holds */
    unsigned ready_pass;   /* send_ready_notifs passes (numbers the conns' ready_blocked) */
    uint64_t rkey_md_map;  /* memory domains a peer's packed key may name (ours for host memory) */
};

// >>helpers

static void *_nixl_ucx_alloc(_nixl_ucx_engine_t *eng, size_t size) {
    return nixl_backend_alloc(eng->be, size);
}

static void _nixl_ucx_free(_nixl_ucx_engine_t *eng, void *p) {
    if (p) nixl_backend_free(eng->be, p);
}

static char *_nixl_ucx_strdup(_nixl_ucx_engine_t *eng, const char *s) {
    size_t n = strlen(s);
    char *p = (char *)_nixl_ucx_alloc(eng, n + 1);
    if (p) memcpy(p, s, n + 1);
    return p;
}


/* Errors that mean "the peer is gone" rather than "UCX misbehaved". */
static int _nixl_ucx_is_disconnect(ucs_status_t st) {
    return st == UCS_ERR_CONNECTION_RESET || st == UCS_ERR_ENDPOINT_TIMEOUT ||
           st == UCS_ERR_UNREACHABLE || st == UCS_ERR_CANCELED || st == UCS_ERR_REJECTED ||
           st == UCS_ERR_IO_ERROR || st == UCS_ERR_TIMED_OUT;
}

/* A notification's header: version, kind, 0, u64le session (set at send:
   the session belongs to the endpoint it goes on). No name: the receiver
   knows the sender by its session, never by what a message says. */
static size_t _nixl_ucx_am_hdr_len(const _nixl_ucx_engine_t *eng) {
    (void)eng;
    return _NIXL_UCX_NOTIF_HDR;
}

static void _nixl_ucx_am_hdr_write(const _nixl_ucx_engine_t *eng, unsigned char *p, unsigned kind) {
    (void)eng;
    memset(p, 0, _NIXL_UCX_NOTIF_HDR);
    p[0] = (unsigned char)_NIXL_UCX_WIRE_VERSION;
    p[1] = (unsigned char)kind;
}

// >>liveness

#define _NIXL_UCX_PROC_UNKNOWN UINT64_MAX

/* Start time of a process (field 22 of /proc/PID/stat), 0 if it is gone,
   _NIXL_UCX_PROC_UNKNOWN if this process may not look (hidepid, sandbox). */
static uint64_t _nixl_ucx_proc_start(uint32_t pid) {
    char path[64], buf[1024];
    const char *p;
    FILE *f;
    size_t n;
    int field;
    snprintf(path, sizeof path, "/proc/%u/stat", (unsigned)pid);
    f = fopen(path, "r");
    if (!f) return errno == ENOENT || errno == ESRCH ? 0 : _NIXL_UCX_PROC_UNKNOWN;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (!p) return 0;
    for (field = 2; *p && field < 22; p++)
        if (*p == ' ') field++;
    return field == 22 ? strtoull(p, NULL, 10) : _NIXL_UCX_PROC_UNKNOWN;
}

/* This process's identity (pid 0: unknown, peers then never watch us). */
static void _nixl_ucx_ident_self(_nixl_ucx_ident_t *id) {
    struct stat st;
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    memset(id, 0, sizeof *id);
    if (!f) return;
    if (fread(id->boot, 1, _NIXL_UCX_BOOT_ID, f) == _NIXL_UCX_BOOT_ID && stat("/proc/self/ns/pid", &st) == 0) {
        id->pid = (uint32_t)getpid();
        id->start = _nixl_ucx_proc_start(id->pid);
        id->pidns = (uint64_t)st.st_ino;
        if (id->start == 0 || id->start == _NIXL_UCX_PROC_UNKNOWN) id->pid = 0; /* cannot be watched */
    }
    fclose(f);
}

/* UCX 1.13 does not watch an endpoint that never finished its wire-up (the
   peer died right after we created it): a request waiting on such a peer
   would wait forever on shared memory. So while checked requests wait on a
   peer of this host, progress checks every _NIXL_UCX_WATCH_US that its
   process still lives, and fails the peer like an endpoint error if not. */
static int _nixl_ucx_watch_peers(_nixl_ucx_engine_t *eng) {
    _nixl_ucx_req_t *r;
    uint64_t now;
    int did = 0;
    if (!eng->reqs) return 0;
    now = nixl_now_us();
    if (now < eng->next_watch) return 0;
    eng->next_watch = now + _NIXL_UCX_WATCH_US;
    for (r = eng->reqs; r; r = r->next) {
        _nixl_ucx_peer_t *p = r->peer;
        if (!r->am || r->state != _NIXL_UCX_REQ_FLUSHING || !p || !p->same_host || p->failed) continue;
        if (p->watched == now) continue; /* one read per peer per pass, however many requests wait on it */
        p->watched = now;
        {
            uint64_t start = _nixl_ucx_proc_start(p->ident.pid);
            if (start == p->ident.start || start == _NIXL_UCX_PROC_UNKNOWN) continue;
        }
        nixl_backend_log(eng->be, NIXL_LOG_WARN, "peer %s: its process (pid %u) is gone", p->name,
                         (unsigned)p->ident.pid);
        p->failed = 1;
        p->fail_status = UCS_ERR_CONNECTION_RESET;
        eng->peer_failed = 1;
        did = 1;
    }
    return did;
}

// >>params

/* UCX lists are comma-separated, but ',' separates nixl params: '+' stands in. */
static char *_nixl_ucx_list_value(_nixl_ucx_engine_t *eng, const char *v) {
    char *s = _nixl_ucx_strdup(eng, v);
    char *p;
    if (!s) return NULL;
    for (p = s; *p; p++)
        if (*p == '+') *p = ',';
    return s;
}

static nixl_status_t _nixl_ucx_config_set(_nixl_ucx_engine_t *eng, ucp_config_t *cfg, const char *key,
                                          const char *value) {
    ucs_status_t st;
    char *v = _nixl_ucx_list_value(eng, value);
    if (!v) return NIXL_ERR_BACKEND;
    if (strncmp(key, "UCX_", 4) == 0) key += 4;
    st = ucp_config_modify(cfg, key, v);
    if (st != UCS_OK) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "create: ucp_config_modify(%s=%s) failed: %s", key, v,
                         ucs_status_string(st));
        _nixl_ucx_free(eng, v);
        return NIXL_ERR_INVALID_PARAM;
    }
    nixl_backend_log(eng->be, NIXL_LOG_DEBUG, "create: UCX_%s=%s", key, v);
    _nixl_ucx_free(eng, v);
    return NIXL_SUCCESS;
}

/* Our endpoints use UCP_ERR_HANDLING_MODE_PEER, which UCX 1.13 refuses on
   the posix and sysv transports unless their error handling is switched on
   (UCX_POSIX_ERROR_HANDLING / UCX_SYSV_ERROR_HANDLING default to "n"), so
   shared memory would carry nothing. These are memory-domain variables,
   which UCX 1.13 reads from the environment only (ucp_config_modify keeps
   them but never applies them). A library must not change the environment
   while other threads may read it, so this happens once, at load time,
   before main (see the manual); create() only reports. */
static const char *const _nixl_ucx_env_vars[] = {"UCX_POSIX_ERROR_HANDLING", "UCX_SYSV_ERROR_HANDLING"};
static int _nixl_ucx_env_set_at_load; /* bit i: _nixl_ucx_env_vars[i] was set by us */

#ifndef NIXL_UCX_NO_ENV_DEFAULTS
__attribute__((constructor)) static void _nixl_ucx_env_at_load(void) {
    size_t i;
    for (i = 0; i < sizeof _nixl_ucx_env_vars / sizeof _nixl_ucx_env_vars[0]; i++)
        if (!getenv(_nixl_ucx_env_vars[i]) && setenv(_nixl_ucx_env_vars[i], "y", 0) == 0)
            _nixl_ucx_env_set_at_load |= 1 << i;
}
#endif

static void _nixl_ucx_env_report(_nixl_ucx_engine_t *eng) {
    size_t i;
    for (i = 0; i < sizeof _nixl_ucx_env_vars / sizeof _nixl_ucx_env_vars[0]; i++) {
        const char *v = getenv(_nixl_ucx_env_vars[i]);
        if (_nixl_ucx_env_set_at_load & (1 << i))
            nixl_backend_log(eng->be, NIXL_LOG_DEBUG, "create: %s=y, set at program load (for peer error "
                             "handling over shared memory)", _nixl_ucx_env_vars[i]);
        else if (!v)
            nixl_backend_log(eng->be, NIXL_LOG_WARN, "create: %s is not set (NIXL_UCX_NO_ENV_DEFAULTS): UCX's "
                             "shared-memory transports will refuse our endpoints; set it to y before starting",
                             _nixl_ucx_env_vars[i]);
    }
}

/* Applies tls= and every ucx.KEY=VALUE to the UCX configuration. */
static nixl_status_t _nixl_ucx_apply_params(_nixl_ucx_engine_t *eng, const nixl_backend_init_t *init,
                                            ucp_config_t *cfg) {
    size_t i;
    nixl_status_t st;
    for (i = 0; i < init->num_params; i++) {
        const char *k = init->params[i].key;
        const char *v = init->params[i].value ? init->params[i].value : "";
        if (strcmp(k, "tls") == 0) {
            if (!*v) {
                nixl_backend_log(eng->be, NIXL_LOG_ERROR, "create: tls= needs a transport list, e.g. tls=tcp");
                return NIXL_ERR_INVALID_PARAM;
            }
            st = _nixl_ucx_config_set(eng, cfg, "TLS", v);
        } else if (strncmp(k, "ucx.", 4) == 0) {
            if (!k[4]) {
                nixl_backend_log(eng->be, NIXL_LOG_ERROR, "create: \"ucx.\" needs a UCX variable name");
                return NIXL_ERR_INVALID_PARAM;
            }
            st = _nixl_ucx_config_set(eng, cfg, k + 4, v);
        } else {
            continue;
        }
        if (st != NIXL_SUCCESS) return st;
    }
    return NIXL_SUCCESS;
}

/* ucp_config_modify() accepts any name (transport variables are kept for
   later), so a misspelt ucx.KEY would only be warned about by UCX. With the
   context up (every transport module loaded), the full list of UCX
   variables is known: refuse names that are not on it. */
static nixl_status_t _nixl_ucx_check_keys(_nixl_ucx_engine_t *eng, const nixl_backend_init_t *init) {
    char *all = NULL, want[300];
    size_t all_len = 0, i;
    nixl_status_t st = NIXL_SUCCESS;
    FILE *f = open_memstream(&all, &all_len);
    if (!f) return NIXL_SUCCESS; /* cannot check: UCX will warn itself */
    fputc('\n', f);
    ucs_config_parser_print_all_opts(f, "UCX_", (ucs_config_print_flags_t)(UCS_CONFIG_PRINT_CONFIG |
                                     UCS_CONFIG_PRINT_HIDDEN), &ucs_config_global_list);
    fclose(f);
    for (i = 0; all && i < init->num_params && st == NIXL_SUCCESS; i++) {
        const char *k = init->params[i].key;
        if (strncmp(k, "ucx.", 4) != 0) continue;
        k += 4;
        if (strncmp(k, "UCX_", 4) == 0) k += 4;
        snprintf(want, sizeof want, "\nUCX_%s=", k);
        if (!strstr(all, want)) {
            nixl_backend_log(eng->be, NIXL_LOG_ERROR, "create: ucx.%s: this UCX (%s) has no variable UCX_%s",
                             k, ucp_get_version_string(), k);
            st = NIXL_ERR_INVALID_PARAM;
        }
    }
    free(all);
    return st;
}

/* Transports on which the NIC (or the GPU's IPC mapping) enforces remote
   keys: put/get there cannot reach memory that was not registered. */
static int _nixl_ucx_tl_checks_keys(const char *tl, size_t n) {
    static const char *const hw[] = {"rc", "dc", "ud", "ib", "cuda_ipc", "cuda_copy", "gdr_copy", "rocm", "self"};
    size_t i;
    for (i = 0; i < sizeof hw / sizeof hw[0]; i++) {
        size_t k = strlen(hw[i]);
        if (n >= k && strncmp(tl, hw[i], k) == 0 && (n == k || tl[k] == '_')) return 1;
    }
    return 0;
}

/* data_path=auto: one-sided only when every transport listed (tls= param,
   else UCX_TLS) checks keys in hardware; UCX's default "all" includes tcp
   and shared memory, so it takes the checked path. */
static int _nixl_ucx_auto_rma(const nixl_backend_init_t *init) {
    const char *tls = nixl_param_get(init, "tls");
    const char *p;
    if (!tls) tls = getenv("UCX_TLS");
    if (!tls || !*tls || *tls == '^') return 0;
    for (p = tls; *p;) {
        size_t n = strcspn(p, "+,");
        if (n == 0 || !_nixl_ucx_tl_checks_keys(p, n)) return 0;
        p += n;
        if (*p) p++;
    }
    return 1;
}

/* data_path=auto|rma|am: sets eng->rma, with a log line saying why. */
static nixl_status_t _nixl_ucx_choose_path(_nixl_ucx_engine_t *eng, const nixl_backend_init_t *init) {
    const char *v = nixl_param_get(init, "data_path");
    uint64_t th = _NIXL_UCX_RNDV_THRESH;
    nixl_status_t st = nixl_param_u64(init, "rndv_thresh", _NIXL_UCX_RNDV_THRESH, 0, 1u << 30, &th);
    if (st != NIXL_SUCCESS) return st;
    eng->rndv_thresh = (size_t)th;
    v = nixl_param_get(init, "notif_unverified");
    if (v && strcmp(v, "accept") != 0 && strcmp(v, "drop") != 0) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "create: notif_unverified=%s: want accept or drop", v);
        return NIXL_ERR_INVALID_PARAM;
    }
    eng->notif_unverified = v && strcmp(v, "accept") == 0;
    v = nixl_param_get(init, "data_path");
    if (!v || strcmp(v, "auto") == 0) eng->rma = _nixl_ucx_auto_rma(init);
    else if (strcmp(v, "rma") == 0) eng->rma = 1;
    else if (strcmp(v, "am") == 0) eng->rma = 0;
    else {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "create: data_path=%s: want auto, rma or am", v);
        return NIXL_ERR_INVALID_PARAM;
    }
    if (eng->rma && !_nixl_ucx_auto_rma(init))
        nixl_backend_log(eng->be, NIXL_LOG_WARN, "data_path=rma with transports UCX runs in software (tls=%s): UCX "
                         "copies a peer's put/get at this agent without checking any key, so any peer that reaches "
                         "this worker can read and write all of this process's memory", nixl_param_get(init, "tls")
                         ? nixl_param_get(init, "tls") : (getenv("UCX_TLS") ? getenv("UCX_TLS") : "all"));
    nixl_backend_log(eng->be, NIXL_LOG_INFO, "data path: %s (data_path=%s)",
                     eng->rma ? "one-sided put/get where the peer agrees: the NIC checks remote keys"
                              : "checked active messages: this agent checks every peer access against its "
                                "registrations",
                     v ? v : "auto");
    return NIXL_SUCCESS;
}

// >>am

static void _nixl_ucx_am_param(ucp_request_param_t *prm, ucp_send_nbx_callback_t cb, void *user);
static _nixl_ucx_peer_t *_nixl_ucx_peer_find(_nixl_ucx_engine_t *eng, const char *name);
static void _nixl_ucx_conn_hello(_nixl_ucx_engine_t *eng, _nixl_ucx_conn_t *c);

/* A small control message (HELLO, WELCOME, PROOF) in flight: UCX may send
   it later (an endpoint still wiring up), so it owns a copy. */
typedef struct {
    _nixl_ucx_engine_t *eng;
    unsigned char bytes[4 + _NIXL_UCX_NONCE + 8 + 256 + _NIXL_UCX_MAC + 256];
} _nixl_ucx_ctl_t;

static void _nixl_ucx_ctl_sent_cb(void *request, ucs_status_t status, void *user_data) {
    _nixl_ucx_ctl_t *m = (_nixl_ucx_ctl_t *)user_data;
    (void)status;
    ucp_request_free(request);
    m->eng->ctl_inflight--;
    _nixl_ucx_free(m->eng, m);
}

static int _nixl_ucx_noisy(_nixl_ucx_engine_t *eng);

static ucs_status_t _nixl_ucx_send_ctl(_nixl_ucx_engine_t *eng, ucp_ep_h ep, const unsigned char *msg, size_t len,
                                       int want_reply) {
    ucp_request_param_t prm;
    ucs_status_ptr_t sp;
    _nixl_ucx_ctl_t *m;
    /* a peer that asks and never takes the answers (it does not progress)
       must not make us hold them without end */
    if (eng->ctl_inflight >= _NIXL_UCX_MAX_CTL_INFLIGHT) {
        if (_nixl_ucx_noisy(eng))
            nixl_backend_log(eng->be, NIXL_LOG_WARN, "session: %u control messages not yet taken by their peers: "
                             "this one dropped", (unsigned)eng->ctl_inflight);
        return UCS_ERR_NO_RESOURCE;
    }
    m = (_nixl_ucx_ctl_t *)_nixl_ucx_alloc(eng, sizeof *m);
    if (!m || len > sizeof m->bytes) {
        _nixl_ucx_free(eng, m);
        return UCS_ERR_NO_MEMORY;
    }
    m->eng = eng;
    memcpy(m->bytes, msg, len);
    _nixl_ucx_am_param(&prm, _nixl_ucx_ctl_sent_cb, m);
    if (want_reply) prm.flags |= UCP_AM_SEND_FLAG_REPLY;
    sp = ucp_am_send_nbx(ep, _NIXL_UCX_AM_ID, NULL, 0, m->bytes, len, &prm);
    if (sp == NULL || UCS_PTR_IS_ERR(sp)) _nixl_ucx_free(eng, m);
    else eng->ctl_inflight++;
    return UCS_PTR_IS_ERR(sp) ? UCS_PTR_STATUS(sp) : UCS_OK;
}

/* The MAC of a WELCOME (the receiver proves itself to the sender) or a
   PROOF (the sender proves itself): over the sender's nonce, the session,
   both names, and which of the two it is. */
#define _NIXL_UCX_SESS_MSG (8 + _NIXL_UCX_NONCE + 8 + 2 * 256)

/* What those MACs cover, in m; its length, 0 if a name is too long. */
static size_t _nixl_ucx_sess_msg(unsigned kind, const unsigned char *nonce, uint64_t sess, const char *from,
                                 const char *to, unsigned char m[_NIXL_UCX_SESS_MSG]) {
    size_t fl = strlen(from), tl = strlen(to), len = 0;
    if (fl > 255 || tl > 255) return 0;
    memcpy(m, "NXUCX", 5);
    m[5] = (unsigned char)_NIXL_UCX_WIRE_VERSION;
    m[6] = (unsigned char)kind;
    m[7] = 0;
    len = 8;
    memcpy(m + len, nonce, _NIXL_UCX_NONCE);
    len += _NIXL_UCX_NONCE;
    _nixl_put64(m + len, sess);
    len += 8;
    memcpy(m + len, from, fl + 1);
    len += fl + 1;
    memcpy(m + len, to, tl + 1);
    return len + tl + 1;
}

static int _nixl_ucx_sess_mac(_nixl_ucx_engine_t *eng, unsigned kind, const unsigned char *nonce, uint64_t sess,
                              const char *from, const char *to, unsigned char mac[_NIXL_UCX_MAC]) {
    unsigned char m[_NIXL_UCX_SESS_MSG];
    size_t len = _nixl_ucx_sess_msg(kind, nonce, sess, from, to, m);
    return len && nixl_backend_auth_mac(eng->be, m, len, mac) == NIXL_SUCCESS ? 0 : -1;
}

static int _nixl_ucx_sess_mac_ok(_nixl_ucx_engine_t *eng, unsigned kind, const unsigned char *nonce, uint64_t sess,
                                 const char *from, const char *to, const unsigned char *mac) {
    unsigned char m[_NIXL_UCX_SESS_MSG];
    size_t len = _nixl_ucx_sess_msg(kind, nonce, sess, from, to, m);
    return len && nixl_backend_auth_check(eng->be, m, len, mac);
}

static uint64_t _nixl_ucx_random(_nixl_ucx_engine_t *eng);

/* WELCOME: nonce, session (0: refused), and the MAC with a secret. */
static ucs_status_t _nixl_ucx_send_welcome(_nixl_ucx_engine_t *eng, ucp_ep_h ep, const _nixl_ucx_sess_t *s,
                                           uint64_t id) {
    unsigned char m[4 + _NIXL_UCX_NONCE + 8 + _NIXL_UCX_MAC + 256];
    size_t len = 4 + _NIXL_UCX_NONCE + 8;
    memset(m, 0, sizeof m);
    m[0] = (unsigned char)_NIXL_UCX_WIRE_VERSION;
    m[1] = (unsigned char)_NIXL_UCX_AM_WELCOME;
    _nixl_put16(m + 2, (unsigned)eng->name_len);
    memcpy(m + 4, s->nonce, _NIXL_UCX_NONCE);
    _nixl_put64(m + 4 + _NIXL_UCX_NONCE, id);
    if (nixl_backend_auth_on(eng->be)) {
        if (_nixl_ucx_sess_mac(eng, _NIXL_UCX_AM_WELCOME, s->nonce, id, eng->name, s->name, m + len) != 0)
            return UCS_ERR_NO_MEMORY;
        len += _NIXL_UCX_MAC;
    }
    /* who welcomes: the sender takes it only from the peer it said HELLO to
       (a third party that echoes someone's nonce gets nothing) */
    memcpy(m + len, eng->name, eng->name_len);
    len += eng->name_len;
    return _nixl_ucx_send_ctl(eng, ep, m, len, 0);
}

/* Rate limit for what unauthenticated peers can make us log: the 1st,
   2nd, 4th, 8th... */
static int _nixl_ucx_noisy(_nixl_ucx_engine_t *eng) {
    unsigned long n = ++eng->noisy;
    return (n & (n - 1)) == 0;
}

static void _nixl_ucx_sess_drop(_nixl_ucx_engine_t *eng, _nixl_ucx_sess_t *s) {
    _nixl_ucx_sess_t **pp = &eng->sessions;
    while (*pp && *pp != s) pp = &(*pp)->next;
    if (!*pp) return;
    *pp = s->next;
    eng->nsessions--;
    _nixl_ucx_free(eng, s);
}

/* Room for one more session: past the limit the oldest that is not open
   goes (a flood of HELLOs cannot push out proven peers), else the oldest. */
static int _nixl_ucx_sess_room(_nixl_ucx_engine_t *eng) {
    _nixl_ucx_sess_t *s, *victim = NULL;
    if (eng->nsessions < _NIXL_UCX_MAX_SESSIONS) return 1;
    for (s = eng->sessions; s; s = s->next)
        if (s->state != _NIXL_UCX_RS_OPEN && !s->cut && (!victim || s->born < victim->born)) victim = s;
    if (!victim)
        for (s = eng->sessions; s; s = s->next)
            if (!s->cut && (!victim || s->born < victim->born)) victim = s;
    if (!victim) return 0;
    nixl_backend_log(eng->be, NIXL_LOG_WARN, "session: %u sessions: the oldest (%s, %s) makes room",
                     eng->nsessions, victim->name, victim->state == _NIXL_UCX_RS_OPEN ? "open" : "unproven");
    _nixl_ucx_sess_drop(eng, victim);
    return 1;
}

/* A nonce opens one session only (an echo of someone's nonce gets
   nothing), and one name holds at most _NIXL_UCX_SESSIONS_PER_NAME (its
   oldest goes first): a flood of HELLOs in one name cannot fill the table. */
static int _nixl_ucx_sess_admit(_nixl_ucx_engine_t *eng, const unsigned char *nonce, const char *name, size_t nl) {
    _nixl_ucx_sess_t *s, *oldest = NULL;
    unsigned same = 0;
    for (s = eng->sessions; s; s = s->next) {
        if (!memcmp(s->nonce, nonce, _NIXL_UCX_NONCE)) return -1;
        if (strlen(s->name) != nl || memcmp(s->name, name, nl) != 0) continue;
        if (s->cut) return -1; /* flooded: no new session until the cut-off ends */
        same++;
        if (!oldest || s->born < oldest->born) oldest = s;
    }
    if (same >= _NIXL_UCX_SESSIONS_PER_NAME) _nixl_ucx_sess_drop(eng, oldest);
    return 0;
}

/* A claimed session's name got its metadata: a new session with a fresh
   id goes through verification (its WELCOME travels through our endpoint to
   the loaded address, which an impostor does not hear; the sender takes the
   new id). The claimed one keeps attributing for _NIXL_UCX_SUPERSEDED_US,
   so what the honest sender sent on it meanwhile is not lost. */
/* A new session of `name` (nl bytes) for the HELLO nonce, with a fresh
   id, at the head of the list; NULL when out of memory. */
static _nixl_ucx_sess_t *_nixl_ucx_sess_new(_nixl_ucx_engine_t *eng, const unsigned char *nonce, const char *name,
                                            size_t nl) {
    _nixl_ucx_sess_t *s = (_nixl_ucx_sess_t *)_nixl_ucx_alloc(eng, sizeof *s);
    if (!s) return NULL;
    memcpy(s->nonce, nonce, _NIXL_UCX_NONCE);
    memcpy(s->name, name, nl);
    s->name[nl] = '\0';
    s->born = nixl_now_us();
    s->id = _nixl_ucx_random(eng) | 1u; /* never 0: 0 means refused */
    s->next = eng->sessions;
    eng->sessions = s;
    eng->nsessions++;
    return s;
}

static void _nixl_ucx_sess_reverify(_nixl_ucx_engine_t *eng, _nixl_ucx_sess_t *old) {
    _nixl_ucx_sess_t *s = _nixl_ucx_sess_new(eng, old->nonce, old->name, strlen(old->name));
    if (!s) {
        _nixl_ucx_sess_drop(eng, old);
        return;
    }
    s->state = _NIXL_UCX_RS_WAIT_MD;
    old->superseded = 1;
    old->born = s->born;
    eng->sess_work = 1;
}

/* A peer's metadata arrived or went: sessions opened on its word alone
   (notif_unverified=accept) are verified anew, and when it went, without
   a token, every session of the name ends (they were tied to metadata that
   is gone). */
static void _nixl_ucx_sess_forget(_nixl_ucx_engine_t *eng, const char *name, int unloaded) {
    _nixl_ucx_sess_t *s, *next;
    for (s = eng->sessions; s; s = next) {
        next = s->next;
        if (strcmp(s->name, name) != 0 || s->cut) continue; /* a cut-off runs its course */
        if (unloaded) _nixl_ucx_sess_drop(eng, s);
        else if (s->claimed && !s->superseded) _nixl_ucx_sess_reverify(eng, s);
    }
}

/* A HELLO: someone calling itself `name` opens a session. With a secret we
   welcome it on its reply endpoint and wait for its proof. Without one,
   only the process at the address in name's loaded metadata may hold the
   session: the WELCOME goes there, through our own endpoint (from
   progress()), and an impostor never learns the session id. */
static void _nixl_ucx_on_hello(_nixl_ucx_engine_t *eng, const unsigned char *p, size_t len,
                               const ucp_am_recv_param_t *param) {
    _nixl_ucx_sess_t *s;
    size_t nl = _nixl_get16(p + 2);
    ucp_ep_h reply = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ? param->reply_ep : NULL;
    if (len != 4 + _NIXL_UCX_NONCE + nl || nl == 0 || nl > 255 || memchr(p + 4 + _NIXL_UCX_NONCE, 0, nl)) {
        if (_nixl_ucx_noisy(eng))
            nixl_backend_log(eng->be, NIXL_LOG_WARN, "session: malformed HELLO (%zu bytes), dropped", len);
        return;
    }
    if (_nixl_ucx_sess_admit(eng, p + 4, (const char *)p + 4 + _NIXL_UCX_NONCE, nl) != 0) return;
    if (!_nixl_ucx_sess_room(eng) || !(s = _nixl_ucx_sess_new(eng, p + 4, (const char *)p + 4 + _NIXL_UCX_NONCE, nl)))
        return;
    if (nixl_backend_auth_on(eng->be)) {
        s->state = _NIXL_UCX_RS_PROOF;
        if (!reply || _nixl_ucx_send_welcome(eng, reply, s, s->id) != UCS_OK) _nixl_ucx_sess_drop(eng, s);
        return;
    }
    if (eng->notif_unverified && !_nixl_ucx_peer_find(eng, s->name) && reply &&
        _nixl_ucx_send_welcome(eng, reply, s, s->id) == UCS_OK) {
        s->state = _NIXL_UCX_RS_OPEN;
        s->claimed = 1;
        nixl_backend_log(eng->be, NIXL_LOG_WARN, "session: notifications from a peer calling itself '%s' are "
                         "attributed on its word (notif_unverified=accept, its metadata is not loaded, no auth "
                         "token)", s->name);
        return;
    }
    s->state = _NIXL_UCX_RS_WAIT_MD; /* progress() sends the WELCOME once its metadata is here */
    eng->sess_work = 1;
}

/* The connection a WELCOME answers: one waiting for it, or (without a
   token) an open one the receiver verifies anew (_nixl_ucx_sess_reverify). */
static _nixl_ucx_conn_t *_nixl_ucx_conn_by_nonce(_nixl_ucx_engine_t *eng, const unsigned char *nonce, int auth) {
    _nixl_ucx_conn_t *c;
    for (c = eng->conns; c; c = c->next)
        if (c->peer && (c->sess_state == _NIXL_UCX_SESS_WAIT || (!auth && c->sess_state == _NIXL_UCX_SESS_OPEN)) &&
            !memcmp(c->nonce, nonce, _NIXL_UCX_NONCE))
            return c;
    return NULL;
}

/* A WELCOME for one of our HELLOs (the sender's side). */
static void _nixl_ucx_on_welcome(_nixl_ucx_engine_t *eng, const unsigned char *p, size_t len) {
    int auth = nixl_backend_auth_on(eng->be);
    size_t nl = _nixl_get16(p + 2), fixed = 4 + _NIXL_UCX_NONCE + 8 + (auth ? _NIXL_UCX_MAC : 0);
    _nixl_ucx_conn_t *c;
    uint64_t id;
    if (len != fixed + nl || nl == 0) {
        if (_nixl_ucx_noisy(eng))
            nixl_backend_log(eng->be, NIXL_LOG_WARN, "session: malformed WELCOME (%zu bytes), dropped", len);
        return;
    }
    c = _nixl_ucx_conn_by_nonce(eng, p + 4, auth);
    if (!c) return; /* not ours, or already answered: a replay */
    if (strlen(c->peer->name) != nl || memcmp(c->peer->name, p + fixed, nl) != 0) {
        if (_nixl_ucx_noisy(eng))
            nixl_backend_log(eng->be, NIXL_LOG_WARN, "session: a WELCOME for our HELLO to %s came from a peer calling "
                             "itself '%.*s': ignored", c->peer->name, (int)(nl > 255 ? 255 : nl), p + fixed);
        return;
    }
    id = _nixl_get64(p + 4 + _NIXL_UCX_NONCE);
    if (c->sess_state == _NIXL_UCX_SESS_OPEN && (id == c->sess || id == 0)) return; /* a replay */
    if (auth && !_nixl_ucx_sess_mac_ok(eng, _NIXL_UCX_AM_WELCOME, c->nonce, id, c->peer->name, eng->name,
                                       p + 4 + _NIXL_UCX_NONCE + 8)) {
        nixl_backend_log(eng->be, NIXL_LOG_WARN, "session: a WELCOME in the name of %s does not carry the right "
                         "MAC (an impostor, or a different auth token): ignored", c->peer->name);
        return;
    }
    if (id == 0) {
        c->sess_state = _NIXL_UCX_SESS_REFUSED;
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "session: %s refused our notifications", c->peer->name);
    } else {
        c->sess = id;
        c->sess_state = auth ? _NIXL_UCX_SESS_PROVE : _NIXL_UCX_SESS_OPEN;
        c->sent_total = c->acked_total = 0; /* a new session starts with the whole window */
    }
    eng->sess_work = 1; /* progress() sends the proof and what was held */
}

static _nixl_ucx_sess_t *_nixl_ucx_sess_find(_nixl_ucx_engine_t *eng, uint64_t id) {
    _nixl_ucx_sess_t *s;
    for (s = eng->sessions; s; s = s->next)
        if (s->id == id) return s;
    return NULL;
}

/* A PROOF: the sender of session id knows the secret. */
static void _nixl_ucx_on_proof(_nixl_ucx_engine_t *eng, const unsigned char *p, size_t len) {
    _nixl_ucx_sess_t *s;
    if (len != 4 + 8 + _NIXL_UCX_MAC) {
        if (_nixl_ucx_noisy(eng))
            nixl_backend_log(eng->be, NIXL_LOG_WARN, "session: malformed PROOF (%zu bytes), dropped", len);
        return;
    }
    s = _nixl_ucx_sess_find(eng, _nixl_get64(p + 4));
    if (!s || s->state != _NIXL_UCX_RS_PROOF) return;
    if (!_nixl_ucx_sess_mac_ok(eng, _NIXL_UCX_AM_PROOF, s->nonce, s->id, s->name, eng->name, p + 12)) {
        nixl_backend_log(eng->be, NIXL_LOG_WARN, "session: a peer calling itself '%s' failed to prove it knows the "
                         "auth token: session closed", s->name);
        _nixl_ucx_sess_drop(eng, s);
        return;
    }
    s->state = _NIXL_UCX_RS_OPEN;
}

// >>am: flow control (the notification window)

/* What a notification of len bytes from a sender named with name_len
   bytes costs against its window; both sides compute the same, and it is
   at least what the core's queue charges for it. */
static uint64_t _nixl_ucx_notif_cost(size_t len, size_t name_len) {
    return (uint64_t)len + name_len + 1 + _NIXL_UCX_NOTIF_COST;
}

static ucp_ep_h _nixl_ucx_reply_ep(const ucp_am_recv_param_t *param) {
    return (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ? param->reply_ep : NULL;
}

/* CREDIT: the running total of window bytes given back on session id. */
static ucs_status_t _nixl_ucx_credit_send(_nixl_ucx_engine_t *eng, ucp_ep_h ep, uint64_t id, unsigned flags,
                                          uint64_t bytes) {
    unsigned char m[_NIXL_UCX_CREDIT_MSG];
    m[0] = (unsigned char)_NIXL_UCX_WIRE_VERSION;
    m[1] = (unsigned char)_NIXL_UCX_AM_CREDIT;
    _nixl_put16(m + 2, flags);
    _nixl_put64(m + 4, id);
    _nixl_put64(m + 12, bytes);
    return _nixl_ucx_send_ctl(eng, ep, m, sizeof m, 0);
}

/* Whether the receiver may give s's window back: its queue can take a
   whole window more of the sender's notifications for each session the
   name holds (or holds none of them: a queue limit below the window still
   moves). */
static int _nixl_ucx_credit_due(_nixl_ucx_engine_t *eng, const _nixl_ucx_sess_t *s) {
    const _nixl_ucx_sess_t *o;
    size_t windows = 0; /* a sender holds a session per endpoint (workers): each may fill a window */
    for (o = eng->sessions; o; o = o->next)
        if (o->state == _NIXL_UCX_RS_OPEN && !o->cut && !strcmp(o->name, s->name)) windows++;
    return nixl_backend_notif_room(eng->be, s->name, (windows ? windows : 1) * (size_t)NIXL_UCX_NOTIF_WINDOW) ||
           nixl_backend_notif_queued(eng->be, s->name) == 0;
}

/* After a notification: give the window back through the endpoint it came
   on once a quarter of it is owed and the queue has room; otherwise it is
   withheld and the sender waits (and asks) until the application drains. */
static void _nixl_ucx_credit_return(_nixl_ucx_engine_t *eng, _nixl_ucx_sess_t *s, ucp_ep_h ep) {
    if (!ep || s->recv_total - s->acked_total < NIXL_UCX_NOTIF_WINDOW / 4 || !_nixl_ucx_credit_due(eng, s)) return;
    s->acked_total = s->recv_total;
    _nixl_ucx_credit_send(eng, ep, s->id, 0, s->acked_total);
}

/* A sender that ignored its window: its session stays, marked, so what it
   sends is dropped (and counted), and its name opens no new session for
   _NIXL_UCX_CUTOFF_US. */
static void _nixl_ucx_cut_off(_nixl_ucx_engine_t *eng, _nixl_ucx_sess_t *s, uint64_t cost) {
    s->cut = 1;
    s->born = nixl_now_us();
    nixl_backend_log_item(eng->be, NIXL_LOG_ERROR, NIXL_LOGITEM_UCX_FLOOD_CUT_OFF, "flow control: %s sent a notification of %llu window bytes with %llu "
                     "already unacknowledged (window %u): it floods; cut off, its notifications are dropped and its "
                     "name opens no session for %u s", s->name, (unsigned long long)cost,
                     (unsigned long long)(s->recv_total - s->acked_total), (unsigned)NIXL_UCX_NOTIF_WINDOW,
                     _NIXL_UCX_CUTOFF_US / 1000000u);
}

/* A sender out of window asks; the answer goes to its reply endpoint. */
static void _nixl_ucx_on_credit_ask(_nixl_ucx_engine_t *eng, const unsigned char *p, size_t len,
                                    const ucp_am_recv_param_t *param) {
    ucp_ep_h ep = _nixl_ucx_reply_ep(param);
    _nixl_ucx_sess_t *s;
    if (len != _NIXL_UCX_ASK_MSG || !ep) {
        if (_nixl_ucx_noisy(eng))
            nixl_backend_log(eng->be, NIXL_LOG_WARN, "flow control: malformed window request (%zu bytes), dropped", len);
        return;
    }
    s = _nixl_ucx_sess_find(eng, _nixl_get64(p + 4));
    if (!s || s->state != _NIXL_UCX_RS_OPEN || s->cut) {
        _nixl_ucx_credit_send(eng, ep, _nixl_get64(p + 4), _NIXL_UCX_CREDIT_NO_SESSION, 0);
        return;
    }
    /* always answered with the running total: a grant that went astray
       (or to someone who knew the session id) is made good here */
    if (_nixl_ucx_credit_due(eng, s)) s->acked_total = s->recv_total;
    _nixl_ucx_credit_send(eng, ep, s->id, 0, s->acked_total);
}

/* The sender's side: window given back for the session of one of our
   endpoints, as a running total (stale or repeated grants change nothing;
   a forged one needs the session id and cannot exceed what we sent: the
   receiver still counts). */
static void _nixl_ucx_on_credit(_nixl_ucx_engine_t *eng, const unsigned char *p, size_t len) {
    uint64_t id, bytes;
    _nixl_ucx_conn_t *c;
    if (len != _NIXL_UCX_CREDIT_MSG) {
        if (_nixl_ucx_noisy(eng))
            nixl_backend_log(eng->be, NIXL_LOG_WARN, "flow control: malformed window grant (%zu bytes), dropped", len);
        return;
    }
    id = _nixl_get64(p + 4);
    bytes = _nixl_get64(p + 12);
    for (c = eng->conns; c; c = c->next)
        if (c->peer && c->sess == id && c->sess_state == _NIXL_UCX_SESS_OPEN) break;
    if (!c) return; /* an old session, or not ours */
    if (_nixl_get16(p + 2) & _NIXL_UCX_CREDIT_NO_SESSION) {
        nixl_backend_log(eng->be, NIXL_LOG_WARN, "flow control: %s no longer holds our session: HELLO again",
                         c->peer->name);
        c->sess_state = _NIXL_UCX_SESS_WAIT;
        c->hello_at = nixl_now_us(); /* what waits keeps waiting for the new session */
        c->sent_total = c->acked_total = 0;
        c->rehello = 1; /* one HELLO, from progress() */
    } else {
        if (bytes > c->sent_total) {
            if (_nixl_ucx_noisy(eng))
                nixl_backend_log(eng->be, NIXL_LOG_WARN, "flow control: %s granted back %llu bytes of %llu sent: "
                                 "ignored", c->peer->name, (unsigned long long)bytes,
                                 (unsigned long long)c->sent_total);
            return;
        }
        if (bytes > c->acked_total) c->acked_total = bytes;
    }
    c->starved = 0;
    eng->sess_work = 1;
}

/* A notification: delivered under the name its session proved, within
   the window its sender was given. */
static void _nixl_ucx_on_notif(_nixl_ucx_engine_t *eng, const unsigned char *p, size_t len,
                               const ucp_am_recv_param_t *param) {
    _nixl_ucx_sess_t *s = len >= _NIXL_UCX_NOTIF_HDR ? _nixl_ucx_sess_find(eng, _nixl_get64(p + 4)) : NULL;
    uint64_t cost;
    len -= len >= _NIXL_UCX_NOTIF_HDR ? _NIXL_UCX_NOTIF_HDR : len;
    if (s && s->cut) {
        unsigned long n = ++s->cut_drops;
        if ((n & (n - 1)) == 0)
            nixl_backend_log(eng->be, NIXL_LOG_WARN, "flow control: a notification from %s, cut off for flooding, "
                             "dropped (%lu so far)", s->name, n);
        return;
    }
    if (!s || s->state != _NIXL_UCX_RS_OPEN) {
        unsigned long n = ++eng->dropped_notifs;
        if ((n & (n - 1)) == 0) /* the 1st, 2nd, 4th, ...: a flood does not flood the log */
            nixl_backend_log(eng->be, NIXL_LOG_WARN, "am: a notification of %zu bytes with no open session (forged, "
                             "or from a peer that never proved who it is): dropped (%lu so far)", len, n);
        return;
    }
    cost = _nixl_ucx_notif_cost(len, strlen(s->name));
    if (s->recv_total - s->acked_total + cost > NIXL_UCX_NOTIF_WINDOW) {
        _nixl_ucx_cut_off(eng, s, cost);
        return;
    }
    s->recv_total += cost; /* counted as the sender counted it, even when dropped below */
    if (len > NIXL_UCX_MAX_NOTIF) { /* the receiver enforces the limit, not only senders */
        nixl_backend_log(eng->be, NIXL_LOG_WARN, "am: notification of %zu bytes from %s exceeds NIXL_UCX_MAX_NOTIF "
                         "(%u): dropped", len, s->name, (unsigned)NIXL_UCX_MAX_NOTIF);
        return;
    }
    nixl_backend_notif(eng->be, s->name, p + _NIXL_UCX_NOTIF_HDR, len);
    _nixl_ucx_credit_return(eng, s, _nixl_ucx_reply_ep(param));
}

/* The notification channel's handler: every message checked. */
static ucs_status_t _nixl_ucx_am_cb(void *arg, const void *header, size_t header_length, void *data,
                                    size_t length, const ucp_am_recv_param_t *param) {
    _nixl_ucx_engine_t *eng = (_nixl_ucx_engine_t *)arg;
    const unsigned char *p = (const unsigned char *)data;
    (void)header;
    (void)header_length;
    if (eng->destroying) return UCS_OK;
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
        /* we send eager only; a rendezvous AM is not ours */
        if (_nixl_ucx_noisy(eng))
            nixl_backend_log(eng->be, NIXL_LOG_WARN, "am: rendezvous message of %zu bytes dropped", length);
        return UCS_OK;
    }
    if (length < 4 || p[0] != _NIXL_UCX_WIRE_VERSION) {
        if (_nixl_ucx_noisy(eng))
            nixl_backend_log(eng->be, NIXL_LOG_WARN, "am: malformed message (%zu bytes, version %u) dropped",
                             length, length ? (unsigned)p[0] : 0u);
        return UCS_OK;
    }
    switch (p[1]) {
    case _NIXL_UCX_AM_NOTIF: _nixl_ucx_on_notif(eng, p, length, param); break;
    case _NIXL_UCX_AM_HELLO: _nixl_ucx_on_hello(eng, p, length, param); break;
    case _NIXL_UCX_AM_WELCOME: _nixl_ucx_on_welcome(eng, p, length); break;
    case _NIXL_UCX_AM_PROOF: _nixl_ucx_on_proof(eng, p, length); break;
    case _NIXL_UCX_AM_CREDIT: _nixl_ucx_on_credit(eng, p, length); break;
    case _NIXL_UCX_AM_CREDIT_ASK: _nixl_ucx_on_credit_ask(eng, p, length, param); break;
    default:
        if (_nixl_ucx_noisy(eng)) nixl_backend_log(eng->be, NIXL_LOG_WARN, "am: unknown kind %u, dropped", (unsigned)p[1]);
    }
    return UCS_OK;
}

static void _nixl_ucx_msg_unlink(_nixl_ucx_engine_t *eng, _nixl_ucx_msg_t *m) {
    if (m->prev) m->prev->next = m->next;
    else eng->msgs = m->next;
    if (m->next) m->next->prev = m->prev;
    m->next = m->prev = NULL;
}

static void _nixl_ucx_msg_free(_nixl_ucx_engine_t *eng, _nixl_ucx_msg_t *m) {
    _nixl_ucx_free(eng, m->buf);
    _nixl_ucx_free(eng, m);
}

static void _nixl_ucx_msg_sent_cb(void *request, ucs_status_t status, void *user_data) {
    _nixl_ucx_msg_t *m = (_nixl_ucx_msg_t *)user_data;
    _nixl_ucx_engine_t *eng = m->eng;
    if (status != UCS_OK && !eng->destroying)
        nixl_backend_log(eng->be, NIXL_LOG_WARN, "am: notification of %zu bytes not delivered: %s",
                         m->len, ucs_status_string(status));
    ucp_request_free(request);
    m->conn->pending--;
    _nixl_ucx_msg_unlink(eng, m);
    _nixl_ucx_msg_free(eng, m);
}

/* Request params with a completion callback (the caller fills prm->cb). */
static void _nixl_ucx_cb_param(ucp_request_param_t *prm, void *user) {
    memset(prm, 0, sizeof *prm);
    prm->op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    prm->user_data = user;
}

static void _nixl_ucx_am_param(ucp_request_param_t *prm, ucp_send_nbx_callback_t cb, void *user) {
    _nixl_ucx_cb_param(prm, user);
    prm->op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
    prm->cb.send = cb;
    /* eager only: the receiver gets the data in its handler, in order */
    prm->flags = UCP_AM_SEND_FLAG_EAGER;
}

/* A notification: eager, and with our reply endpoint, which the receiver
   gives the window back through. */
static void _nixl_ucx_notif_param(ucp_request_param_t *prm, ucp_send_nbx_callback_t cb, void *user) {
    _nixl_ucx_am_param(prm, cb, user);
    prm->flags |= UCP_AM_SEND_FLAG_REPLY;
}

/* Sends an engine-owned message (gen_notif) on c. Takes ownership of buf. */
static nixl_status_t _nixl_ucx_send_msg_on(_nixl_ucx_engine_t *eng, _nixl_ucx_conn_t *c, unsigned am_id,
                                           const void *hdr, size_t hdr_len, unsigned char *buf, size_t len,
                                           const char *what) {
    ucp_request_param_t prm;
    ucs_status_ptr_t sp;
    _nixl_ucx_msg_t *m = (_nixl_ucx_msg_t *)_nixl_ucx_alloc(eng, sizeof *m);
    if (!m) {
        _nixl_ucx_free(eng, buf);
        return NIXL_ERR_BACKEND;
    }
    m->eng = eng;
    m->conn = c;
    m->buf = buf;
    m->len = len;
    if (am_id == _NIXL_UCX_AM_ID) _nixl_ucx_notif_param(&prm, _nixl_ucx_msg_sent_cb, m);
    else _nixl_ucx_am_param(&prm, _nixl_ucx_msg_sent_cb, m);
    sp = ucp_am_send_nbx(c->ep, am_id, hdr, hdr_len, buf, len, &prm);
    if (sp == NULL) {
        _nixl_ucx_msg_free(eng, m);
        return NIXL_SUCCESS;
    }
    if (UCS_PTR_IS_ERR(sp)) {
        ucs_status_t st = UCS_PTR_STATUS(sp);
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "%s: ucp_am_send_nbx(%zu bytes) failed: %s", what, len,
                         ucs_status_string(st));
        _nixl_ucx_msg_free(eng, m);
        return _nixl_ucx_is_disconnect(st) ? NIXL_ERR_REMOTE_DISCONNECT : NIXL_ERR_BACKEND;
    }
    m->ucx_req = sp;
    c->pending++;
    m->next = eng->msgs;
    if (eng->msgs) eng->msgs->prev = m;
    eng->msgs = m;
    return NIXL_IN_PROG;
}

static nixl_status_t _nixl_ucx_send_msg(_nixl_ucx_engine_t *eng, _nixl_ucx_conn_t *c, unsigned char *buf,
                                        size_t len, const char *what) {
    return _nixl_ucx_send_msg_on(eng, c, _NIXL_UCX_AM_ID, NULL, 0, buf, len, what);
}

/* Window bytes a notification message (header included) costs us. */
static uint64_t _nixl_ucx_msg_cost(const _nixl_ucx_engine_t *eng, size_t msg_len) {
    return _nixl_ucx_notif_cost(msg_len - _NIXL_UCX_NOTIF_HDR, eng->name_len);
}

/* Whether c's window takes a notification message of msg_len bytes now;
   if not, c asks the receiver for its window back (from progress()). */
static int _nixl_ucx_window_takes(_nixl_ucx_engine_t *eng, _nixl_ucx_conn_t *c, size_t msg_len) {
    if (c->sent_total - c->acked_total + _nixl_ucx_msg_cost(eng, msg_len) <= NIXL_UCX_NOTIF_WINDOW) return 1;
    c->starved = 1;
    eng->sess_work = 1;
    return 0;
}

/* Sends a gen_notif message now that c's session is open and its window
   takes it (takes buf). */
static nixl_status_t _nixl_ucx_send_notif_msg(_nixl_ucx_engine_t *eng, _nixl_ucx_conn_t *c, unsigned char *buf,
                                              size_t len) {
    uint64_t cost = _nixl_ucx_msg_cost(eng, len);
    nixl_status_t st;
    _nixl_put64(buf + 4, c->sess);
    c->sent_total += cost;
    st = _nixl_ucx_send_msg(eng, c, buf, len, "gen_notif");
    if (st < 0) c->sent_total -= cost; /* never reached the receiver: not counted there either */
    return st;
}

static void _nixl_ucx_flush_held(_nixl_ucx_engine_t *eng, _nixl_ucx_conn_t *c) {
    while (c->held && _nixl_ucx_window_takes(eng, c, c->held->len)) {
        _nixl_ucx_held_t *h = c->held;
        c->held = h->next;
        if (!c->held) c->held_tail = NULL;
        c->held_bytes -= h->len;
        _nixl_ucx_send_notif_msg(eng, c, h->buf, h->len);
        _nixl_ucx_free(eng, h);
    }
}

static void _nixl_ucx_drop_held(_nixl_ucx_engine_t *eng, _nixl_ucx_conn_t *c, const char *why) {
    unsigned n = 0;
    while (c->held) {
        _nixl_ucx_held_t *h = c->held;
        c->held = h->next;
        _nixl_ucx_free(eng, h->buf);
        _nixl_ucx_free(eng, h);
        n++;
    }
    c->held_tail = NULL;
    c->held_bytes = 0;
    if (n)
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "gen_notif: %u notification(s) to %s dropped: %s", n,
                         c->peer ? c->peer->name : "?", why);
}

/* Whether c can carry a notification now: 1 open, 0 wait (a new HELLO goes
   out when the last one went unanswered too long), -1 never. */
static int _nixl_ucx_sess_ready(_nixl_ucx_engine_t *eng, _nixl_ucx_conn_t *c, int rehello) {
    if (c->sess_state == _NIXL_UCX_SESS_OPEN) return 1;
    if (c->sess_state == _NIXL_UCX_SESS_REFUSED) return -1;
    if (rehello && c->sess_state == _NIXL_UCX_SESS_WAIT && nixl_now_us() - c->hello_at > _NIXL_UCX_SESSION_WAIT_US)
        _nixl_ucx_conn_hello(eng, c);
    eng->sess_work = 1;
    return 0;
}

/* A first message on a new endpoint: it opens our session at the peer, and
   UCX wires the endpoint up now, while the peer is known alive (UCX 1.13
   watches an endpoint, keepalive, only once it is wired up, and one whose
   first message goes to a dead peer would wait forever on shared memory). */
static void _nixl_ucx_conn_hello(_nixl_ucx_engine_t *eng, _nixl_ucx_conn_t *c) {
    unsigned char m[4 + _NIXL_UCX_NONCE + 256];
    c->hello_at = nixl_now_us();
    if (nixl_random_bytes(c->nonce, sizeof c->nonce) != 0) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "connect: getrandom failed: no session yet (tried again later)");
        return;
    }
    m[0] = (unsigned char)_NIXL_UCX_WIRE_VERSION;
    m[1] = (unsigned char)_NIXL_UCX_AM_HELLO;
    _nixl_put16(m + 2, (unsigned)eng->name_len);
    memcpy(m + 4, c->nonce, _NIXL_UCX_NONCE);
    memcpy(m + 4 + _NIXL_UCX_NONCE, eng->name, eng->name_len);
    if (_nixl_ucx_send_ctl(eng, c->ep, m, 4 + _NIXL_UCX_NONCE + eng->name_len, 1) != UCS_OK)
        nixl_backend_log(eng->be, NIXL_LOG_WARN, "connect: HELLO to %s not sent", c->peer ? c->peer->name : "?");
}

/* What a session needs from progress(), both sides (at most every 100 ms
   unless a handler flagged work). */
static void _nixl_ucx_flush_held(_nixl_ucx_engine_t *eng, _nixl_ucx_conn_t *c);
static void _nixl_ucx_drop_held(_nixl_ucx_engine_t *eng, _nixl_ucx_conn_t *c, const char *why);
static nixl_status_t _nixl_ucx_peer_connect(_nixl_ucx_engine_t *eng, _nixl_ucx_peer_t *peer, const char *what);

static void _nixl_ucx_sessions_receiver(_nixl_ucx_engine_t *eng, uint64_t now) {
    _nixl_ucx_sess_t *s, *next;
    for (s = eng->sessions; s; s = next) {
        _nixl_ucx_peer_t *p;
        next = s->next;
        if (s->cut) {
            if (now - s->born > _NIXL_UCX_CUTOFF_US) _nixl_ucx_sess_drop(eng, s);
            continue;
        }
        if (s->superseded) {
            if (now - s->born > _NIXL_UCX_SUPERSEDED_US) _nixl_ucx_sess_drop(eng, s);
            continue;
        }
        if (s->state == _NIXL_UCX_RS_OPEN) continue;
        if (now - s->born > _NIXL_UCX_HELLO_WAIT_US) {
            nixl_backend_log(eng->be, NIXL_LOG_WARN, "session: a peer calling itself '%s' %s within %u s: dropped",
                             s->name, s->state == _NIXL_UCX_RS_PROOF ? "did not prove it knows the auth token"
                             : "could not be verified (no auth token, and its metadata was not loaded)",
                             _NIXL_UCX_HELLO_WAIT_US / 1000000u);
            _nixl_ucx_sess_drop(eng, s);
            continue;
        }
        if (s->state != _NIXL_UCX_RS_WAIT_MD) continue;
        p = _nixl_ucx_peer_find(eng, s->name);
        if (!p || p->failed) continue;
        /* through our endpoint to its address: only the real one hears it */
        if (_nixl_ucx_peer_connect(eng, p, "session") != NIXL_SUCCESS ||
            _nixl_ucx_send_welcome(eng, p->conns[0]->ep, s, s->id) != UCS_OK) {
            _nixl_ucx_sess_drop(eng, s);
            continue;
        }
        s->state = _NIXL_UCX_RS_OPEN;
    }
}

/* Out of window: ask the receiver for it back every _NIXL_UCX_ASK_US (it
   answers when its queue has room), and come back next pass. */
static void _nixl_ucx_window_ask(_nixl_ucx_engine_t *eng, _nixl_ucx_conn_t *c, uint64_t now) {
    unsigned char m[_NIXL_UCX_ASK_MSG];
    eng->sess_work = 1;
    if (now - c->ask_at < _NIXL_UCX_ASK_US) return;
    c->ask_at = now;
    memset(m, 0, sizeof m);
    m[0] = (unsigned char)_NIXL_UCX_WIRE_VERSION;
    m[1] = (unsigned char)_NIXL_UCX_AM_CREDIT_ASK;
    _nixl_put64(m + 4, c->sess);
    if (_nixl_ucx_send_ctl(eng, c->ep, m, sizeof m, 1) != UCS_OK)
        nixl_backend_log(eng->be, NIXL_LOG_DEBUG, "flow control: window request to %s not sent", c->peer->name);
}

static void _nixl_ucx_sessions_sender(_nixl_ucx_engine_t *eng, uint64_t now) {
    _nixl_ucx_conn_t *c;
    for (c = eng->conns; c; c = c->next) {
        if (!c->peer || c->close_wanted) continue;
        if (c->rehello) {
            c->rehello = 0;
            if (c->sess_state == _NIXL_UCX_SESS_WAIT) _nixl_ucx_conn_hello(eng, c);
        }
        if (c->sess_state == _NIXL_UCX_SESS_OPEN && c->starved) _nixl_ucx_window_ask(eng, c, now);
        if (c->sess_state == _NIXL_UCX_SESS_PROVE) {
            unsigned char m[4 + 8 + _NIXL_UCX_MAC];
            memset(m, 0, sizeof m);
            m[0] = (unsigned char)_NIXL_UCX_WIRE_VERSION;
            m[1] = (unsigned char)_NIXL_UCX_AM_PROOF;
            _nixl_put64(m + 4, c->sess);
            if (_nixl_ucx_sess_mac(eng, _NIXL_UCX_AM_PROOF, c->nonce, c->sess, eng->name, c->peer->name, m + 12) != 0 ||
                _nixl_ucx_send_ctl(eng, c->ep, m, sizeof m, 0) != UCS_OK) {
                c->sess_state = _NIXL_UCX_SESS_WAIT; /* the next notification says HELLO again */
                nixl_backend_log(eng->be, NIXL_LOG_ERROR, "session: PROOF to %s not sent", c->peer->name);
            } else {
                c->sess_state = _NIXL_UCX_SESS_OPEN; /* the proof goes first on this endpoint: UCX keeps order */
            }
        }
        if (c->sess_state == _NIXL_UCX_SESS_WAIT && c->held && now - c->hello_at > _NIXL_UCX_SESSION_WAIT_US) {
            /* what waits fails; the connection stays usable: the next
               notification says HELLO again */
            nixl_backend_log(eng->be, NIXL_LOG_ERROR, "session: %s did not accept us within %u s (without an auth "
                             "token it must have loaded our metadata)", c->peer->name,
                             _NIXL_UCX_SESSION_WAIT_US / 1000000u);
            _nixl_ucx_drop_held(eng, c, "no session at the peer");
        }
        if (c->sess_state == _NIXL_UCX_SESS_OPEN) _nixl_ucx_flush_held(eng, c);
        else if (c->sess_state == _NIXL_UCX_SESS_REFUSED) _nixl_ucx_drop_held(eng, c, "no session at the peer");
    }
}

static int _nixl_ucx_sessions_progress(_nixl_ucx_engine_t *eng) {
    uint64_t now = nixl_now_us();
    if (!eng->sess_work && now < eng->next_sess_check) return 0;
    eng->sess_work = 0;
    eng->next_sess_check = now + _NIXL_UCX_WATCH_US;
    _nixl_ucx_sessions_receiver(eng, now);
    _nixl_ucx_sessions_sender(eng, now);
    return 1;
}

// >>wire checks (a peer's UCX address and packed keys, before UCX sees them)

/* ucp_ep_create and ucp_ep_rkey_unpack take no length: they walk a peer's
   bytes by the lengths and flags stored inside, and some fields are checked
   only by assertions (abort). These checks walk the same layouts (UCX 1.13,
   as its packers write them; verified against 1.13.1) with an explicit end
   and refuse anything that would make UCX read past the received bytes,
   trip an assertion, or take a path its packer never produces.
   tests/fuzz_ucx_wire.c mutates real addresses and keys and runs each case
   in a child process: zero aborts with these checks, about half of the
   cases abort without them. */
/* Helpers may be unused by a given includer; keep -Wunused-function quiet. */
#if defined(__GNUC__)
#define _NIXL_UCX_MAYBE_UNUSED __attribute__((unused))
#else
#define _NIXL_UCX_MAYBE_UNUSED
#endif

/* ---- worker address ---------------------------------------------------- */

/* Low nibble of the first byte.  1.13 writes 0 (default, UCX_ADDRESS_VERSION
 * =v1) or 1 (UCX_ADDRESS_VERSION=v2); it aborts (ucs_assertv_always) on any
 * other value, so anything else must never reach ucp_ep_create. */
#define _NIXL_UCXA_VER_V1            0u
#define _NIXL_UCXA_VER_V2            1u

/* Header flags (v1: high nibble of byte 0, v2: whole byte 1). */
#define _NIXL_UCXA_HDR_DEBUG_INFO    0x01u /* worker name string follows */
#define _NIXL_UCXA_HDR_UUID          0x02u /* 64-bit worker uuid follows */
#define _NIXL_UCXA_HDR_CLIENT_ID     0x04u /* 64-bit client id follows */
#define _NIXL_UCXA_HDR_AM_ONLY       0x08u /* wireup-only, never from get_address */

/* Per-device / per-iface flag bits. */
#define _NIXL_UCXA_LAST              0x80u /* last device / last iface */
#define _NIXL_UCXA_MD_EMPTY_DEV      0x80u /* device with no ifaces */
#define _NIXL_UCXA_DEV_NUM_PATHS     0x40u /* extra byte: number of paths */
#define _NIXL_UCXA_DEV_SYS_DEVICE    0x20u /* extra byte: system device id */
#define _NIXL_UCXA_IF_HAS_EP_ADDR    0x40u /* ep addresses follow iface addr */

#define _NIXL_UCXA_MD_MASK_V1        0x1fu /* 0x40/0x20 are alloc/reg flags */
#define _NIXL_UCXA_MD_MASK_V2        0x7fu /* 0x7f = "real value in next byte" */
#define _NIXL_UCXA_DEV_LEN_MASK      0x1fu
#define _NIXL_UCXA_IF_LEN_MASK       0x3fu

#define _NIXL_UCXA_NULL_RESOURCE     0xffu /* address with no devices at all */

/* UCX keeps 64-bit md maps; an md index >= 64 becomes an out-of-range shift
 * and an out-of-bounds index into per-md tables on the receiving side. */
#define _NIXL_UCXA_MAX_MD            64u
/* UCX 1.13 stops unpacking at UCP_MAX_RESOURCES (128) ifaces; never accept
 * more devices/ifaces than that. */
#define _NIXL_UCXA_MAX_IFACES        128u

/* Size of the packed iface attributes that follow the tl name checksum
 * (non-unified mode, no TL_RSC_IDX byte: that is what ucp_ep_create unpacks
 * with). v1: float overhead, float bandwidth, float lat_ovh, u32 prio|flags.
 * v2: fp8 overhead, fp8 bandwidth, fp8 latency, u8 prio, u16 seg, u16 flags. */
#define _NIXL_UCXA_ATTR_V1_SIZE      16u
#define _NIXL_UCXA_ATTR_V2_SIZE      8u

/* crc16 of the transport names (ucs_crc16_string), as stored in each iface
 * entry.  Used to check that the device/iface address lengths match what
 * the transport's is_reachable/connect code will read: those functions take
 * no length either, so a short final address would be read past its end. */
#define _NIXL_UCXA_TL_SELF           0x7563u
#define _NIXL_UCXA_TL_TCP            0x19cfu
#define _NIXL_UCXA_TL_POSIX          0xd3a7u
#define _NIXL_UCXA_TL_SYSV           0x538du
#define _NIXL_UCXA_TL_CMA            0x8b47u

/* Top byte of a posix fifo segment id: 0x80 = procfs fd, 0x40 = shm_open
 * name.  With neither, the iface address must carry a directory path. */
#define _NIXL_UCXA_POSIX_SEG_NAMED   0xc0u


/* IEEE-754 single: exponent all-ones means inf/NaN.  NaN or inf in the
 * performance attributes poisons UCX's lane scoring, so reject them. */
static int _nixl_ucx_f32_finite(uint32_t bits)
{
    return ((bits >> 23) & 0xffu) != 0xffu;
}

static int _nixl_ucx_f32_negative(uint32_t bits)
{
    return (bits & 0x80000000u) && (bits & 0x7fffffffu);
}

/* UCT "local address with namespace" (shared-memory device addresses and
 * the tcp loopback address): a 64-bit id whose top bit says a 64-bit
 * namespace id follows.  The reachability check reads the extra 8 bytes
 * whenever that bit is set, so the length must agree with the bit. */
static size_t _nixl_ucx_local_addr_len(const uint8_t *id)
{
    return (id[7] & 0x80u) ? 16u : 8u;
}

/* Device/iface address length rules for the transports UCX 1.13 ships in
 * this build.  dev points at dev_len bytes and ifa at if_len bytes (both
 * inside the buffer).  Returns NULL if acceptable.  Transports not listed
 * are only structure-checked (a receiver lacking that transport never
 * passes them to UCT). */
static const char *_nixl_ucx_addr_tl_check(uint16_t csum, const uint8_t *dev,
                                           size_t dev_len, const uint8_t *ifa,
                                           size_t if_len)
{
    switch (csum) {
    case _NIXL_UCXA_TL_SELF:
        /* no device address; iface address is the 64-bit self id */
        if (dev_len != 0 || if_len != 8) return "self: bad address length";
        return NULL;
    case _NIXL_UCXA_TL_POSIX:
    case _NIXL_UCXA_TL_SYSV:
    case _NIXL_UCXA_TL_CMA:
        /* device address: machine id [+ IPC namespace id] */
        if (dev_len < 8 || dev_len != _nixl_ucx_local_addr_len(dev))
            return "shm: bad device address length";
        if (csum == _NIXL_UCXA_TL_CMA) {
            /* 32-bit pid; bit 31 set = 64-bit pid namespace id follows */
            if (if_len < 4 || if_len != ((ifa[3] & 0x80u) ? 12u : 4u))
                return "cma: bad iface address length";
        } else if (if_len != 8) {
            /* 64-bit shared memory fifo segment id */
            return "shm: bad iface address length";
        } else if (csum == _NIXL_UCXA_TL_POSIX &&
                   !(ifa[7] & _NIXL_UCXA_POSIX_SEG_NAMED)) {
            /* a posix segment that is neither a procfs fd nor shm_open'ed
             * is a file under a directory whose name would follow the id;
             * without it UCX asserts while attaching (mm_posix.c: dir) */
            return "posix: segment id names a file without its directory";
        }
        return NULL;
    case _NIXL_UCXA_TL_TCP:
        /* iface address is the 16-bit listening port.  Device address is
         * [flags u8][sa_family u8] then either a local address with
         * namespace (loopback flag 0x01) or the raw in_addr/in6_addr; UCT
         * sizes its read from these bytes, so the length must agree. */
        if (if_len != 2) return "tcp: bad iface address length";
        if (dev_len < 2) return "tcp: device address too short";
        if (dev[0] & ~0x01u) return "tcp: unknown device address flags";
        if (dev[1] != 2 && dev[1] != 10) return "tcp: bad address family";
        if (dev[0] & 0x01u) {
            if (dev_len < 10 || dev_len != 2 + _nixl_ucx_local_addr_len(dev + 2))
                return "tcp: bad loopback device address length";
        } else if (dev_len != (dev[1] == 2 ? 6u : 18u)) {
            return "tcp: device address length does not match family";
        }
        return NULL;
    default:
        return NULL;
    }
}

/* Read a "maybe extended" length/index byte.  v2 stores values that do not
 * fit the masked field as mask-value followed by a full byte. */
static const uint8_t *_nixl_ucx_addr_ext(const uint8_t *p, const uint8_t *end,
                                         unsigned mask, int v2, unsigned *val)
{
    if (p >= end) return NULL;
    *val = *p & mask;
    ++p;
    if (v2 && *val == mask) {
        if (p >= end) return NULL;
        *val = *p++;
    }
    return p;
}

/*
 * Worker address layout (1.13, non-unified mode, as unpacked by
 * ucp_ep_create with the default worker unpack flags):
 *
 *   hdr:   v1: [ver:4 | flags:4]        v2: [ver u8][flags u8]
 *   [uuid u64]      v1: always present (the v1 unpacker reads it whenever
 *                   it asks for the uuid, flag or not); v2: iff flag
 *   [client_id u64] iff CLIENT_ID
 *   [name_len u8][name]  iff DEBUG_INFO
 *   0xff (no devices)  OR  devices until one has LAST in its length byte:
 *     md byte  [EMPTY:1 | (v1: ALLOC:1 REG:1 idx:5) (v2: idx:7)] (+ext v2)
 *     len byte [LAST:1 | NUM_PATHS:1 | SYS_DEV:1 | dev_addr_len:5] (+ext v2)
 *     [num_paths u8] [sys_dev u8] dev_addr[dev_addr_len]
 *     ifaces (none if EMPTY) until one has LAST:
 *       tl_name_csum u16, attrs (16 v1 / 8 v2),
 *       len byte [LAST:1 | HAS_EP:1 | iface_addr_len:6] (+ext v2), iface_addr
 *       (ep addresses if HAS_EP: never written by ucp_worker_get_address)
 */
_NIXL_UCX_MAYBE_UNUSED
static const char *_nixl_ucx_addr_check(const void *addr, size_t len)
{
    const uint8_t *p   = (const uint8_t*)addr;
    const uint8_t *end;
    unsigned ver, flags, md_mask, v2, val;
    unsigned ndev = 0, nif = 0;
    int last_dev;

    if (addr == NULL) return "address is NULL";
    if (len == 0) return "address is empty";
    end = p + len;

    ver = p[0] & 0x0fu;
    if (ver == _NIXL_UCXA_VER_V1) {
        v2      = 0;
        flags   = p[0] >> 4;
        md_mask = _NIXL_UCXA_MD_MASK_V1;
        p      += 1;
    } else if (ver == _NIXL_UCXA_VER_V2) {
        /* v2 keeps the high nibble of the version byte zero */
        if (p[0] & 0xf0u) return "address header reserved bits set";
        if (len < 2) return "address truncated in header";
        v2      = 1;
        flags   = p[1];
        md_mask = _NIXL_UCXA_MD_MASK_V2;
        p      += 2;
    } else {
        /* UCX aborts (assert_always) on any other version */
        return "unknown address version";
    }

    if (flags & ~(unsigned)(_NIXL_UCXA_HDR_DEBUG_INFO | _NIXL_UCXA_HDR_UUID |
                            _NIXL_UCXA_HDR_CLIENT_ID | _NIXL_UCXA_HDR_AM_ONLY))
        return "unknown address header flags";
    /* AM_ONLY addresses are internal wireup messages, not worker addresses */
    if (flags & _NIXL_UCXA_HDR_AM_ONLY) return "am-only address not allowed";
    /* get_address always packs the uuid; in v1 the unpacker reads 8 bytes
     * regardless of the flag, so a v1 address without it is inconsistent */
    if (!(flags & _NIXL_UCXA_HDR_UUID)) return "address without worker uuid";

    if ((size_t)(end - p) < 8) return "address truncated in uuid";
    p += 8;
    if (flags & _NIXL_UCXA_HDR_CLIENT_ID) {
        if ((size_t)(end - p) < 8) return "address truncated in client id";
        p += 8;
    }
    if (flags & _NIXL_UCXA_HDR_DEBUG_INFO) {
        /* length-prefixed string; UCX copies at most 31 chars but skips
         * the full declared length */
        if (p >= end) return "address truncated in worker name";
        val = *p++;
        if ((size_t)(end - p) < val) return "address truncated in worker name";
        p += val;
    }

    if (p >= end) return "address truncated before device list";
    if (*p == _NIXL_UCXA_NULL_RESOURCE) {
        /* valid encoding of "no transports"; ucp_ep_create then fails
         * with an unreachable error */
        ++p;
        return (p == end) ? NULL : "trailing bytes after empty address";
    }

    do {
        unsigned md_index, dev_len, dev_flags, empty;
        const uint8_t *dev;
        int last_if;

        if (++ndev > _NIXL_UCXA_MAX_IFACES) return "too many devices";

        /* md index (+EMPTY flag) */
        if (p >= end) return "address truncated in device md index";
        empty = *p & _NIXL_UCXA_MD_EMPTY_DEV;
        p     = _nixl_ucx_addr_ext(p, end, md_mask, (int)v2, &md_index);
        if (p == NULL) return "address truncated in device md index";
        if (md_index >= _NIXL_UCXA_MAX_MD) return "device md index out of range";

        /* device address length + flags */
        if (p >= end) return "address truncated in device length";
        dev_flags = *p & (unsigned)~_NIXL_UCXA_DEV_LEN_MASK;
        last_dev  = !!(dev_flags & _NIXL_UCXA_LAST);
        p = _nixl_ucx_addr_ext(p, end, _NIXL_UCXA_DEV_LEN_MASK, (int)v2,
                               &dev_len);
        if (p == NULL) return "address truncated in device length";

        if (dev_flags & _NIXL_UCXA_DEV_NUM_PATHS) {
            if (p >= end) return "address truncated in device num_paths";
            /* the packer only writes this byte for 2+ paths; 0 would be a
             * divisor in bandwidth estimates */
            if (*p < 2) return "bad device num_paths";
            ++p;
        }
        if (dev_flags & _NIXL_UCXA_DEV_SYS_DEVICE) {
            if (p >= end) return "address truncated in device sys_dev";
            /* 0xff is "unknown", which the packer expresses by omission */
            if (*p == 0xffu) return "bad device sys_dev";
            ++p;
        }

        if ((size_t)(end - p) < dev_len) return "address truncated in device address";
        dev = p;
        p  += dev_len;

        last_if = !!empty;
        while (!last_if) {
            uint16_t csum;
            unsigned if_len, if_flags;
            const char *why;

            if (++nif > _NIXL_UCXA_MAX_IFACES) return "too many ifaces";

            if ((size_t)(end - p) < 2) return "address truncated in iface tl name";
            csum = (uint16_t)(p[0] | (p[1] << 8));
            p   += 2;

            if (!v2) {
                uint32_t ovh, bw, lat;
                if ((size_t)(end - p) < _NIXL_UCXA_ATTR_V1_SIZE)
                    return "address truncated in iface attributes";
                ovh = _nixl_get32(p);
                bw  = _nixl_get32(p + 4);
                lat = _nixl_get32(p + 8);
                /* UCX divides by bandwidth and sums overheads/latencies when
                 * scoring lanes; keep them finite, bandwidth > 0 (UCX itself
                 * rejects <= 0 only after copying) */
                if (!_nixl_ucx_f32_finite(ovh) || !_nixl_ucx_f32_finite(bw) ||
                    !_nixl_ucx_f32_finite(lat))
                    return "non-finite iface attribute";
                if (_nixl_ucx_f32_negative(ovh) || _nixl_ucx_f32_negative(lat) ||
                    (bw & 0x80000000u) || !(bw & 0x7fffffffu))
                    return "bad iface performance attribute";
                p += _NIXL_UCXA_ATTR_V1_SIZE;
            } else {
                if ((size_t)(end - p) < _NIXL_UCXA_ATTR_V2_SIZE)
                    return "address truncated in iface attributes";
                uint16_t seg = (uint16_t)(p[4] | (p[5] << 8));
                uint16_t ifl = (uint16_t)(p[6] | (p[7] << 8));
                /* fp8 = [mantissa:4 | exponent:4]; exponent 0xf decodes to
                 * NaN/inf, which trips UCX's "score >= 0" lane assertion.
                 * The packer never emits it (values are capped). */
                if ((p[0] & 0x0fu) == 0x0fu || (p[1] & 0x0fu) == 0x0fu ||
                    (p[2] & 0x0fu) == 0x0fu)
                    return "non-finite iface attribute";
                if (p[1] == 0) return "bad iface performance attribute";
                /* address iface flags use bits 0..9 (connect, am sync, cb
                 * async, put, get, tag eager/rndv, event recv, amo32/64) */
                if (ifl & 0xfc00u) return "unknown iface flags";
                /* seg_size (x64 bytes) becomes the AM bcopy limit of the ep;
                 * UCX asserts that a packed rkey fits into it, so an
                 * AM-capable iface needs a real segment size.  Real AM
                 * transports advertise kilobytes; 256 bytes is a floor. */
                if ((ifl & 0x06u) && seg < 4u) return "iface segment size too small";
                p += _NIXL_UCXA_ATTR_V2_SIZE;
            }

            if (p >= end) return "address truncated in iface length";
            if_flags = *p & (unsigned)~_NIXL_UCXA_IF_LEN_MASK;
            last_if  = !!(if_flags & _NIXL_UCXA_LAST);
            p = _nixl_ucx_addr_ext(p, end, _NIXL_UCXA_IF_LEN_MASK, (int)v2,
                                   &if_len);
            if (p == NULL) return "address truncated in iface length";
            /* ep addresses are only exchanged inside UCX's own wireup
             * messages; a worker address never carries them */
            if (if_flags & _NIXL_UCXA_IF_HAS_EP_ADDR)
                return "ep address in worker address";
            if ((size_t)(end - p) < if_len) return "address truncated in iface address";
            why = _nixl_ucx_addr_tl_check(csum, dev, dev_len, p, if_len);
            p  += if_len;
            if (why != NULL) return why;
        }
    } while (!last_dev);

    /* the sender transmits exactly what get_address returned: any slack
     * means the length fields disagree with the transmitted size */
    if (p != end) return "trailing bytes after last device";
    return NULL;
}

/* md indices named by a well-formed worker address (bit i = md index i);
 * 0 if the address does not pass _nixl_ucx_addr_check. */
_NIXL_UCX_MAYBE_UNUSED
static uint64_t _nixl_ucx_addr_md_map(const void *addr, size_t len)
{
    const uint8_t *p, *end;
    unsigned flags, v2, md_mask, val;
    uint64_t map = 0;
    int last_dev;

    if (_nixl_ucx_addr_check(addr, len) != NULL) return 0;
    p   = (const uint8_t*)addr;
    end = p + len;
    v2  = (p[0] & 0x0fu) == _NIXL_UCXA_VER_V2;
    flags   = v2 ? p[1] : (unsigned)(p[0] >> 4);
    md_mask = v2 ? _NIXL_UCXA_MD_MASK_V2 : _NIXL_UCXA_MD_MASK_V1;
    p += v2 ? 2 : 1;
    p += 8;
    if (flags & _NIXL_UCXA_HDR_CLIENT_ID) p += 8;
    if (flags & _NIXL_UCXA_HDR_DEBUG_INFO) p += 1 + *p;
    if (*p == _NIXL_UCXA_NULL_RESOURCE) return 0;
    /* the structure was verified above; re-walk without bound checks
     * beyond what the check already proved */
    do {
        unsigned md_index, dev_len, dev_flags, empty;
        int last_if;
        empty = *p & _NIXL_UCXA_MD_EMPTY_DEV;
        p = _nixl_ucx_addr_ext(p, end, md_mask, (int)v2, &md_index);
        map |= (uint64_t)1 << md_index;
        dev_flags = *p & (unsigned)~_NIXL_UCXA_DEV_LEN_MASK;
        last_dev  = !!(dev_flags & _NIXL_UCXA_LAST);
        p = _nixl_ucx_addr_ext(p, end, _NIXL_UCXA_DEV_LEN_MASK, (int)v2, &dev_len);
        if (dev_flags & _NIXL_UCXA_DEV_NUM_PATHS) ++p;
        if (dev_flags & _NIXL_UCXA_DEV_SYS_DEVICE) ++p;
        p += dev_len;
        last_if = !!empty;
        while (!last_if) {
            unsigned if_len;
            p += 2 + (v2 ? _NIXL_UCXA_ATTR_V2_SIZE : _NIXL_UCXA_ATTR_V1_SIZE);
            last_if = !!(*p & _NIXL_UCXA_LAST);
            p = _nixl_ucx_addr_ext(p, end, _NIXL_UCXA_IF_LEN_MASK, (int)v2, &if_len);
            p += if_len;
        }
    } while (!last_dev);
    (void)val;
    return map;
}

/* ---- packed remote key --------------------------------------------------- */

/*
 * Packed rkey layout (ucp_rkey_pack in 1.13):
 *   md_map   u64 little endian: bit i = remote md index i carries a key
 *   mem_type u8  (ucs_memory_type_t)
 *   for each set bit of md_map, ascending: size u8, then size bytes
 *   (ucp_rkey_pack never appends the optional sys_dev/distance trailer;
 *    with the default UCX_PROTO_ENABLE=n it would be ignored anyway)
 *
 * ucp_ep_rkey_unpack walks one size byte per md_map bit with no end, so an
 * all-ones md_map walks up to 64 * 256 bytes; for every md the local ep can
 * reach it hands the md's bytes to the transport's rkey unpacker, which
 * reads as much as its own key format needs regardless of the size byte.
 * Hence: md_map must be a subset of what the caller expects the peer to send
 * (md_map_allowed, see below), every size byte must fit, the buffer must end
 * exactly after the last key, and mem_type must index UCX's type tables.
 *
 * md_map_allowed: pack an rkey for a host buffer registered with our own
 * context (same UCX build and UCX_TLS/NET_DEVICES config as the peer) and
 * take _nixl_ucx_rkey_md_map() of it; md indices are assigned the same way
 * on both sides for the same config.  The looser heuristic, when configs may
 * differ, is _nixl_ucx_addr_md_map(peer worker address) | own rkey md_map:
 * an md the peer's address does not name is never reachable, so its key
 * bytes are only skipped, never interpreted.
 */
_NIXL_UCX_MAYBE_UNUSED
static const char *_nixl_ucx_rkey_check(const void *rkey, size_t len,
                                        uint64_t md_map_allowed)
{
    const uint8_t *p = (const uint8_t*)rkey;
    const uint8_t *end;
    uint64_t md_map = 0;
    unsigned i, mem_type;

    if (rkey == NULL) return "rkey is NULL";
    if (len < 9) return "rkey truncated in header";
    end = p + len;

    for (i = 0; i < 8; ++i) md_map |= (uint64_t)p[i] << (8 * i);
    p += 8;
    if (md_map & ~md_map_allowed) return "rkey md_map has unexpected memory domains";

    mem_type = *p++;
    /* used as an array index (type names, per-type md maps) by UCX */
    if (mem_type >= (unsigned)UCS_MEMORY_TYPE_LAST) return "rkey memory type invalid";

    for (i = 0; i < 64; ++i) {
        unsigned sz;
        if (!(md_map & ((uint64_t)1 << i))) continue;
        if (p >= end) return "rkey truncated in md key size";
        sz = *p++;
        if ((size_t)(end - p) < sz) return "rkey truncated in md key";
        p += sz;
    }
    if (p != end) return "trailing bytes after rkey";
    return NULL;
}

/* md_map of a packed rkey that is structurally sound (any md allowed);
 * 0 if malformed.  Use on an rkey you packed yourself to derive
 * md_map_allowed. */
_NIXL_UCX_MAYBE_UNUSED
static uint64_t _nixl_ucx_rkey_md_map(const void *rkey, size_t len)
{
    const uint8_t *p = (const uint8_t*)rkey;
    uint64_t md_map = 0;
    unsigned i;

    if (_nixl_ucx_rkey_check(rkey, len, ~(uint64_t)0) != NULL) return 0;
    for (i = 0; i < 8; ++i) md_map |= (uint64_t)p[i] << (8 * i);
    return md_map;
}

// >>workers

static ucs_status_t _nixl_ucx_dp_cb(void *arg, const void *header, size_t header_length, void *data,
                                    size_t length, const ucp_am_recv_param_t *param);

static nixl_status_t _nixl_ucx_set_handler(_nixl_ucx_engine_t *eng, unsigned i, unsigned id,
                                           ucp_am_recv_callback_t cb, void *arg) {
    ucp_am_handler_param_t hp;
    ucs_status_t st;
    memset(&hp, 0, sizeof hp);
    hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                    UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
    hp.id = id;
    hp.flags = UCP_AM_FLAG_WHOLE_MSG;
    hp.cb = cb;
    hp.arg = arg;
    st = ucp_worker_set_am_recv_handler(eng->workers[i].h, &hp);
    if (st != UCS_OK) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "create: ucp_worker_set_am_recv_handler(#%u, id %u) failed: %s", i,
                         id, ucs_status_string(st));
        return NIXL_ERR_BACKEND;
    }
    return NIXL_SUCCESS;
}

static nixl_status_t _nixl_ucx_worker_open(_nixl_ucx_engine_t *eng, unsigned i) {
    ucp_worker_params_t wp;
    ucs_status_t st;
    _nixl_ucx_worker_t *w = &eng->workers[i];
    w->eng = eng;
    memset(&wp, 0, sizeof wp);
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    /* the agent lock serialises every call into the engine */
    wp.thread_mode = UCS_THREAD_MODE_SERIALIZED;
    st = ucp_worker_create(eng->ctx, &wp, &w->h);
    if (st != UCS_OK) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "create: ucp_worker_create(#%u) failed: %s", i,
                         ucs_status_string(st));
        w->h = NULL;
        return NIXL_ERR_BACKEND;
    }
    if (_nixl_ucx_set_handler(eng, i, _NIXL_UCX_AM_ID, _nixl_ucx_am_cb, eng) != NIXL_SUCCESS ||
        _nixl_ucx_set_handler(eng, i, _NIXL_UCX_AM_DATA_ID, _nixl_ucx_dp_cb, w) != NIXL_SUCCESS)
        return NIXL_ERR_BACKEND;
    st = ucp_worker_get_address(w->h, &w->addr, &w->addr_len);
    if (st != UCS_OK) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "create: ucp_worker_get_address(#%u) failed: %s", i,
                         ucs_status_string(st));
        w->addr = NULL;
        return NIXL_ERR_BACKEND;
    }
    return NIXL_SUCCESS;
}

/* conn info = magic, version, count, flags, then u32le length + address per worker */
static nixl_status_t _nixl_ucx_build_info(_nixl_ucx_engine_t *eng) {
    size_t n = _NIXL_UCX_INFO_HDR, i;
    unsigned char *p;
    for (i = 0; i < eng->num_workers; i++) n += 4 + eng->workers[i].addr_len;
    eng->info = (unsigned char *)_nixl_ucx_alloc(eng, n);
    if (!eng->info) return NIXL_ERR_BACKEND;
    eng->info_len = n;
    p = eng->info;
    p[0] = _NIXL_UCX_INFO_MAGIC;
    p[1] = (unsigned char)_NIXL_UCX_WIRE_VERSION;
    p[2] = (unsigned char)eng->num_workers;
    p[3] = (unsigned char)(eng->rma ? _NIXL_UCX_INFO_RMA : 0u);
    _nixl_put32(p + 4, eng->ident.pid);
    _nixl_put64(p + 8, eng->ident.start);
    _nixl_put64(p + 16, eng->ident.pidns);
    memcpy(p + 24, eng->ident.boot, _NIXL_UCX_BOOT_ID);
    p += _NIXL_UCX_INFO_HDR;
    for (i = 0; i < eng->num_workers; i++) {
        _nixl_put32(p, (uint32_t)eng->workers[i].addr_len);
        memcpy(p + 4, eng->workers[i].addr, eng->workers[i].addr_len);
        p += 4 + eng->workers[i].addr_len;
    }
    return NIXL_SUCCESS;
}

/* Splits a peer's conn info into its worker addresses (pointers into info). */
static nixl_status_t _nixl_ucx_parse_info(_nixl_ucx_engine_t *eng, const char *remote, _nixl_ucx_peer_t *peer) {
    const unsigned char *p = peer->info, *end = peer->info + peer->info_len;
    const char *why;
    unsigned i, n;
    if (peer->info_len < _NIXL_UCX_INFO_HDR || p[0] != _NIXL_UCX_INFO_MAGIC) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "load_remote_conn_info(%s): not UCX connection info (%zu bytes)",
                         remote, peer->info_len);
        return NIXL_ERR_INVALID_PARAM;
    }
    if (p[1] != _NIXL_UCX_WIRE_VERSION) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "load_remote_conn_info(%s): version %u, this build speaks %u",
                         remote, (unsigned)p[1], _NIXL_UCX_WIRE_VERSION);
        return NIXL_ERR_MISMATCH;
    }
    n = p[2];
    if (n == 0 || n > _NIXL_UCX_MAX_WORKERS) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "load_remote_conn_info(%s): %u workers (1..%u)", remote, n,
                         _NIXL_UCX_MAX_WORKERS);
        return NIXL_ERR_INVALID_PARAM;
    }
    /* one-sided only when both ends are on the RMA path (NIC-checked keys) */
    peer->rma = eng->rma && (p[3] & _NIXL_UCX_INFO_RMA);
    peer->ident.pid = _nixl_get32(p + 4);
    peer->ident.start = _nixl_get64(p + 8);
    peer->ident.pidns = _nixl_get64(p + 16);
    memcpy(peer->ident.boot, p + 24, _NIXL_UCX_BOOT_ID);
    peer->same_host = peer->ident.pid && eng->ident.pid && peer->ident.pidns == eng->ident.pidns &&
                      memcmp(peer->ident.boot, eng->ident.boot, _NIXL_UCX_BOOT_ID) == 0;
    p += _NIXL_UCX_INFO_HDR;
    for (i = 0; i < n; i++) {
        uint32_t len;
        if ((size_t)(end - p) < 4) break;
        len = _nixl_get32(p);
        p += 4;
        if (len == 0 || (size_t)(end - p) < len) break;
        if ((why = _nixl_ucx_addr_check(p, len)) != NULL) {
            nixl_backend_log(eng->be, NIXL_LOG_ERROR, "load_remote_conn_info(%s): worker address %u refused: %s",
                             remote, i, why);
            return NIXL_ERR_INVALID_PARAM;
        }
        peer->addrs[i] = p;
        peer->addr_lens[i] = len;
        p += len;
    }
    if (i != n || p != end) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "load_remote_conn_info(%s): truncated or oversized (%zu bytes)",
                         remote, peer->info_len);
        return NIXL_ERR_INVALID_PARAM;
    }
    peer->num_addrs = n;
    return NIXL_SUCCESS;
}

// >>peers


static _nixl_ucx_peer_t *_nixl_ucx_peer_new(_nixl_ucx_engine_t *eng, const char *name, const void *info,
                                            size_t len) {
    _nixl_ucx_peer_t *p = (_nixl_ucx_peer_t *)_nixl_ucx_alloc(eng, sizeof *p);
    if (!p) return NULL;
    p->name = _nixl_ucx_strdup(eng, name);
    p->info = (unsigned char *)_nixl_ucx_alloc(eng, len ? len : 1);
    p->conns = (_nixl_ucx_conn_t **)_nixl_ucx_alloc(eng, eng->num_workers * sizeof *p->conns);
    if (!p->name || !p->info || !p->conns) {
        _nixl_ucx_free(eng, p->name);
        _nixl_ucx_free(eng, p->info);
        _nixl_ucx_free(eng, p->conns);
        _nixl_ucx_free(eng, p);
        return NULL;
    }
    memcpy(p->info, info, len);
    p->info_len = len;
    return p;
}

static void _nixl_ucx_free_peer(_nixl_ucx_engine_t *eng, _nixl_ucx_peer_t *p) {
    _nixl_ucx_free(eng, p->conns);
    _nixl_ucx_free(eng, p->info);
    _nixl_ucx_free(eng, p->name);
    _nixl_ucx_free(eng, p);
}

/* The loopback peer: our own workers, reached through our own conn info. */
static _nixl_ucx_peer_t *_nixl_ucx_self_peer(_nixl_ucx_engine_t *eng) {
    _nixl_ucx_peer_t *p;
    if (eng->self_peer) return eng->self_peer;
    p = _nixl_ucx_peer_new(eng, eng->name, eng->info, eng->info_len);
    if (!p) return NULL;
    if (_nixl_ucx_parse_info(eng, eng->name, p) != NIXL_SUCCESS) {
        _nixl_ucx_free_peer(eng, p);
        return NULL;
    }
    eng->self_peer = p;
    return p;
}

/* A peer by name; the agent's own name is the loopback peer. */
static _nixl_ucx_peer_t *_nixl_ucx_peer_find(_nixl_ucx_engine_t *eng, const char *name) {
    _nixl_ucx_peer_t *p;
    if (strcmp(name, eng->name) == 0) return _nixl_ucx_self_peer(eng);
    for (p = eng->peers; p; p = p->next)
        if (strcmp(p->name, name) == 0) return p;
    return NULL;
}

static void _nixl_ucx_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status) {
    _nixl_ucx_conn_t *c = (_nixl_ucx_conn_t *)arg;
    _nixl_ucx_engine_t *eng = c->eng;
    (void)ep;
    if (!c->peer || eng->destroying) return;
    if (!c->peer->failed) {
        nixl_backend_log(eng->be, NIXL_LOG_WARN, "endpoint to %s failed: %s", c->peer->name,
                         ucs_status_string(status));
        c->peer->fail_status = status;
    }
    c->peer->failed = 1;
    /* peer_down is reported from progress(), after UCX returned */
    eng->peer_failed = 1;
}

/* Creates the endpoints to every local worker's counterpart (local, non-blocking). */
static nixl_status_t _nixl_ucx_peer_connect(_nixl_ucx_engine_t *eng, _nixl_ucx_peer_t *peer, const char *what) {
    unsigned i;
    if (peer->failed) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "%s(%s): the peer's endpoint failed earlier: %s", what,
                         peer->name, ucs_status_string(peer->fail_status));
        return NIXL_ERR_REMOTE_DISCONNECT;
    }
    for (i = 0; i < eng->num_workers; i++) {
        ucp_ep_params_t ep;
        ucs_status_t st;
        unsigned a = i % peer->num_addrs;
        _nixl_ucx_conn_t *c;
        if (peer->conns[i]) continue;
        c = (_nixl_ucx_conn_t *)_nixl_ucx_alloc(eng, sizeof *c);
        if (!c) return NIXL_ERR_BACKEND;
        c->eng = eng;
        c->peer = peer;
        memset(&ep, 0, sizeof ep);
        ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER;
        ep.address = (const ucp_address_t *)peer->addrs[a];
        ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
        ep.err_handler.cb = _nixl_ucx_err_cb;
        ep.err_handler.arg = c;
        st = ucp_ep_create(eng->workers[i].h, &ep, &c->ep);
        if (st != UCS_OK) {
            nixl_backend_log(eng->be, NIXL_LOG_ERROR,
                             "%s(%s): ucp_ep_create(worker %u -> remote worker %u) failed: %s "
                             "(no common transport with error handling? check tls=)",
                             what, peer->name, i, a, ucs_status_string(st));
            _nixl_ucx_free(eng, c);
            return st == UCS_ERR_UNREACHABLE ? NIXL_ERR_REMOTE_DISCONNECT : NIXL_ERR_BACKEND;
        }
        c->next = eng->conns;
        eng->conns = c;
        peer->conns[i] = c;
        _nixl_ucx_conn_hello(eng, c);
    }
    return NIXL_SUCCESS;
}

/* Closes an endpoint now. Always FORCE: a graceful close waits for the peer
   to answer, and a peer that does not progress (or is dead but not yet
   detected) would keep us waiting; what had to be delivered was waited for
   already (see _nixl_ucx_conn_release). */
static void _nixl_ucx_conn_close_now(_nixl_ucx_engine_t *eng, _nixl_ucx_conn_t *c) {
    ucp_request_param_t prm;
    ucs_status_ptr_t sp;
    if (c->closing) return;
    c->closing = 1;
    c->peer = NULL;
    memset(&prm, 0, sizeof prm);
    prm.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    prm.flags = UCP_EP_CLOSE_FLAG_FORCE;
    sp = ucp_ep_close_nbx(c->ep, &prm);
    if (UCS_PTR_IS_ERR(sp)) {
        if (!eng->destroying)
            nixl_backend_log(eng->be, NIXL_LOG_DEBUG, "disconnect: ucp_ep_close_nbx: %s",
                             ucs_status_string(UCS_PTR_STATUS(sp)));
        sp = NULL;
    }
    c->close_req = sp;
    c->ep = NULL;
}

/* The peer is forgotten: close the endpoint once what we sent on it
   (notifications, flushes) completed, so a gen_notif right before an
   invalidation still arrives. */
static void _nixl_ucx_conn_release(_nixl_ucx_engine_t *eng, _nixl_ucx_conn_t *c) {
    c->peer = NULL;
    c->close_wanted = 1;
    if (!c->pending) _nixl_ucx_conn_close_now(eng, c);
}

/* Closes released conns that went idle and frees closed ones; 1 if any. */
static int _nixl_ucx_reap_conns(_nixl_ucx_engine_t *eng) {
    _nixl_ucx_conn_t **pp = &eng->conns;
    int did = 0;
    while (*pp) {
        _nixl_ucx_conn_t *c = *pp;
        if (c->close_wanted && !c->closing && !c->pending) {
            _nixl_ucx_conn_close_now(eng, c);
            did = 1;
        }
        if (c->closing && c->close_req && ucp_request_check_status(c->close_req) != UCS_INPROGRESS) {
            ucp_request_free(c->close_req);
            c->close_req = NULL;
        }
        if (c->closing && !c->close_req && !c->pending) {
            *pp = c->next;
            _nixl_ucx_drop_held(eng, c, "the peer was disconnected");
            _nixl_ucx_free(eng, c);
            did = 1;
            continue;
        }
        pp = &c->next;
    }
    return did;
}

// >>requests

static void _nixl_ucx_req_finish(_nixl_ucx_req_t *r, nixl_status_t st) {
    r->state = _NIXL_UCX_REQ_DONE;
    r->status = st;
}

/* Maps a UCX completion error of a request to a nixl status, with a log line. */
static nixl_status_t _nixl_ucx_req_error(_nixl_ucx_req_t *r, const char *what, ucs_status_t st) {
    _nixl_ucx_engine_t *eng = r->eng;
    int gone = !r->peer || r->peer->failed || _nixl_ucx_is_disconnect(st);
    if (!eng->destroying)
        nixl_backend_log(eng->be, gone ? NIXL_LOG_WARN : NIXL_LOG_ERROR, "xfer to %s: %s failed: %s",
                         r->peer ? r->peer->name : "(disconnected peer)", what, ucs_status_string(st));
    return gone ? NIXL_ERR_REMOTE_DISCONNECT : NIXL_ERR_BACKEND;
}

/* The UCX request of r completed: its conn has one op less in flight. */
static void _nixl_ucx_req_io_done(_nixl_ucx_req_t *r, void *request) {
    ucp_request_free(request);
    r->ucx_req = NULL;
    r->io_conn->pending--;
    r->io_conn = NULL;
}

static void _nixl_ucx_req_io_start(_nixl_ucx_req_t *r, void *request) {
    r->ucx_req = request;
    r->io_conn = r->conn;
    r->conn->pending++;
}

static void _nixl_ucx_notif_sent_cb(void *request, ucs_status_t status, void *user_data) {
    _nixl_ucx_req_t *r = (_nixl_ucx_req_t *)user_data;
    _nixl_ucx_req_io_done(r, request);
    _nixl_ucx_req_finish(r, status == UCS_OK ? NIXL_SUCCESS : _nixl_ucx_req_error(r, "notification", status));
}

/* Sends the request's notification; its data has landed (flush completed). */
static nixl_status_t _nixl_ucx_req_send_notif(_nixl_ucx_req_t *r) {
    ucp_request_param_t prm;
    ucs_status_ptr_t sp;
    if (!r->conn || r->conn->close_wanted) {
        _nixl_ucx_req_finish(r, NIXL_ERR_REMOTE_DISCONNECT);
        return r->status;
    }
    _nixl_put64(r->notif + 4, r->conn->sess);
    r->conn->sent_total += _nixl_ucx_msg_cost(r->eng, r->notif_len);
    _nixl_ucx_notif_param(&prm, _nixl_ucx_notif_sent_cb, r);
    sp = ucp_am_send_nbx(r->conn->ep, _NIXL_UCX_AM_ID, NULL, 0, r->notif, r->notif_len, &prm);
    if (sp == NULL) {
        _nixl_ucx_req_finish(r, NIXL_SUCCESS);
    } else if (UCS_PTR_IS_ERR(sp)) {
        r->conn->sent_total -= _nixl_ucx_msg_cost(r->eng, r->notif_len); /* never reached the receiver */
        _nixl_ucx_req_finish(r, _nixl_ucx_req_error(r, "ucp_am_send_nbx(notification)", UCS_PTR_STATUS(sp)));
    } else {
        _nixl_ucx_req_io_start(r, sp);
        r->state = _NIXL_UCX_REQ_NOTIF_SENDING;
        return NIXL_IN_PROG;
    }
    return r->status;
}

/* Every byte of the post landed: done, or its notification goes next. */
static void _nixl_ucx_req_landed(_nixl_ucx_req_t *r) {
    _nixl_ucx_engine_t *eng = r->eng;
    if (!r->send_notif) {
        _nixl_ucx_req_finish(r, NIXL_SUCCESS);
        return;
    }
    /* sent from progress() once UCX returned, never from inside its callback */
    r->state = _NIXL_UCX_REQ_NOTIF_READY;
    r->ready_next = NULL;
    if (eng->ready_tail) eng->ready_tail->ready_next = r;
    else eng->ready_head = r;
    eng->ready_tail = r;
}

static void _nixl_ucx_flush_cb(void *request, ucs_status_t status, void *user_data) {
    _nixl_ucx_req_t *r = (_nixl_ucx_req_t *)user_data;
    _nixl_ucx_req_io_done(r, request);
    if (status != UCS_OK)
        _nixl_ucx_req_finish(r, _nixl_ucx_req_error(r, r->op == NIXL_WRITE ? "put+flush" : "get+flush", status));
    else
        _nixl_ucx_req_landed(r);
}

/* Sends the notifications whose data landed; one whose endpoint has no
   open session at the peer yet waits (in order), up to
   _NIXL_UCX_SESSION_WAIT_US, then fails NOT_ALLOWED; one the session's
   window does not take now waits as long as the receiver withholds it
   (flow control: the request stays IN_PROG). */
static int _nixl_ucx_send_ready_notifs(_nixl_ucx_engine_t *eng) {
    _nixl_ucx_req_t *r = eng->ready_head, *wait_head = NULL, *wait_tail = NULL;
    unsigned pass = ++eng->ready_pass;
    int did = 0;
    if (!pass) pass = ++eng->ready_pass; /* never 0: a conn's initial mark */
    eng->ready_head = eng->ready_tail = NULL;
    while (r) {
        _nixl_ucx_req_t *next = r->ready_next;
        int ready = r->state == _NIXL_UCX_REQ_NOTIF_READY && r->conn ? _nixl_ucx_sess_ready(eng, r->conn, 0) : 1;
        /* one out of window holds back every later one on its endpoint (in order) */
        int windowed = ready == 1 && r->state == _NIXL_UCX_REQ_NOTIF_READY && r->conn &&
                       (r->conn->ready_blocked == pass || !_nixl_ucx_window_takes(eng, r->conn, r->notif_len));
        if (windowed) r->conn->ready_blocked = pass;
        r->ready_next = NULL;
        if (windowed || (ready == 0 && nixl_now_us() - r->conn->hello_at <= _NIXL_UCX_SESSION_WAIT_US)) {
            if (wait_tail) wait_tail->ready_next = r;
            else wait_head = r;
            wait_tail = r;
        } else if (ready != 1) {
            nixl_backend_log(eng->be, NIXL_LOG_ERROR, "notification to %s: the peer did not accept our session (without "
                             "an auth token it must have loaded our metadata)", r->conn->peer ? r->conn->peer->name : "?");
            _nixl_ucx_req_finish(r, NIXL_ERR_NOT_ALLOWED);
            did = 1;
        } else {
            if (r->state == _NIXL_UCX_REQ_NOTIF_READY) _nixl_ucx_req_send_notif(r);
            did = 1;
        }
        r = next;
    }
    if (wait_head) { /* ahead of any that became ready meanwhile */
        wait_tail->ready_next = eng->ready_head;
        if (!eng->ready_head) eng->ready_tail = wait_tail;
        eng->ready_head = wait_head;
    }
    return did;
}

static void _nixl_ucx_ready_remove(_nixl_ucx_engine_t *eng, _nixl_ucx_req_t *r) {
    _nixl_ucx_req_t **pp = &eng->ready_head, *prev = NULL;
    while (*pp && *pp != r) {
        prev = *pp;
        pp = &(*pp)->ready_next;
    }
    if (!*pp) return;
    *pp = r->ready_next;
    if (eng->ready_tail == r) eng->ready_tail = prev;
    r->ready_next = NULL;
}

static void _nixl_ucx_dp_maybe_finish(_nixl_ucx_req_t *r);

/* The peer goes away: requests keep their memory but lose the endpoint. */
static void _nixl_ucx_detach_reqs(_nixl_ucx_engine_t *eng, _nixl_ucx_peer_t *peer) {
    _nixl_ucx_req_t *r;
    for (r = eng->reqs; r; r = r->next) {
        if (r->peer != peer) continue;
        if (r->state == _NIXL_UCX_REQ_NOTIF_READY) {
            _nixl_ucx_ready_remove(eng, r);
            _nixl_ucx_req_finish(r, NIXL_ERR_REMOTE_DISCONNECT);
        }
        /* FLUSHING / NOTIF_SENDING end in their callback (the endpoint
           closes only after that, or is failed and completes them); on the
           checked path the answers that never come end it here */
        if (r->am && r->state == _NIXL_UCX_REQ_FLUSHING) {
            if (r->am_err == NIXL_SUCCESS) r->am_err = NIXL_ERR_REMOTE_DISCONNECT;
            _nixl_ucx_dp_maybe_finish(r);
        }
        r->peer = NULL;
        r->conn = NULL;
    }
}

static void _nixl_ucx_slot_give(_nixl_ucx_engine_t *eng, _nixl_ucx_req_t *r);

static void _nixl_ucx_req_free(_nixl_ucx_engine_t *eng, _nixl_ucx_req_t *r) {
    _nixl_ucx_slot_give(eng, r);
    if (r->prev) r->prev->next = r->next;
    else eng->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
    _nixl_ucx_free(eng, r->ops);
    _nixl_ucx_free(eng, r->notif);
    _nixl_ucx_free(eng, r);
}

/* Makes room for a notification of len bytes after the payload header. */
static nixl_status_t _nixl_ucx_req_notif_reserve(_nixl_ucx_req_t *r, size_t len) {
    _nixl_ucx_engine_t *eng = r->eng;
    unsigned char *n;
    if (r->notif && r->notif_hdr + len <= r->notif_cap) return NIXL_SUCCESS;
    n = (unsigned char *)_nixl_ucx_alloc(eng, r->notif_hdr + len);
    if (!n) return NIXL_ERR_BACKEND;
    _nixl_ucx_am_hdr_write(eng, n, _NIXL_UCX_AM_NOTIF);
    _nixl_ucx_free(eng, r->notif);
    r->notif = n;
    r->notif_cap = r->notif_hdr + len;
    return NIXL_SUCCESS;
}

// >>checked (the target-checked data path: active messages)

/* On the checked path every access names a range of the TARGET's memory, and
   the target serves it only if one region it registered with this backend
   (and has not deregistered) holds the whole range. The initiator's check of
   remote descriptors gives early, clear errors; this one is the protection.

   WRITE  initiator -> target: DP_WRITE carrying the bytes. Up to rndv_thresh
          bytes: eager; the target copies them into the checked range and
          answers DP_ACK. Larger: rendezvous; the target receives straight
          into the checked range (ucp_am_recv_data_nbx: cma on shared memory,
          zero-copy) and answers DP_ACK once the receive completed (a
          rendezvous send may complete at the sender before the receiver has
          every byte, so its completion alone proves nothing); a refusal
          completes the sender's request with _NIXL_UCX_REFUSED.
   READ   initiator -> target: DP_READ_REQ; the target answers DP_READ_DATA
          with the bytes of the checked range (eager or rendezvous by size),
          or with a refusal status and no bytes.
   Answers go back on the reply endpoint, from inside the handler or from
   the completion of the receive that message started (while the endpoint
   is known to be alive: the bytes just came over it). An answer is matched to its
   request by slot, post generation and a random token, so late answers of
   an earlier post, and guesses, are ignored. */

/* Refusal statuses on the wire are -nixl_status_t; the rendezvous WRITE's
   refusal travels as this UCX status. */
#define _NIXL_UCX_REFUSED UCS_ERR_INVALID_ADDR

typedef struct _nixl_ucx_dp {
    unsigned kind, refusal;
    uint32_t idx;
    uint64_t slotgen, token, addr, len;
} _nixl_ucx_dp_t;

static void _nixl_ucx_dp_write_hdr(unsigned char *h, unsigned kind, unsigned refusal, uint32_t idx,
                                   uint64_t slotgen, uint64_t token, uint64_t addr, uint64_t len) {
    h[0] = (unsigned char)_NIXL_UCX_WIRE_VERSION;
    h[1] = (unsigned char)kind;
    _nixl_put16(h + 2, refusal);
    _nixl_put32(h + 4, idx);
    _nixl_put64(h + 8, slotgen);
    _nixl_put64(h + 16, token);
    _nixl_put64(h + 24, addr);
    _nixl_put64(h + 32, len);
}

static int _nixl_ucx_dp_parse(const void *header, size_t n, _nixl_ucx_dp_t *q) {
    const unsigned char *h = (const unsigned char *)header;
    if (n != _NIXL_UCX_DP_HDR || h[0] != _NIXL_UCX_WIRE_VERSION) return 0;
    q->kind = h[1];
    q->refusal = _nixl_get16(h + 2);
    q->idx = _nixl_get32(h + 4);
    q->slotgen = _nixl_get64(h + 8);
    q->token = _nixl_get64(h + 16);
    q->addr = _nixl_get64(h + 24);
    q->len = _nixl_get64(h + 32);
    return 1;
}

static const char *_nixl_ucx_dp_what(unsigned kind) {
    return kind == _NIXL_UCX_DP_WRITE ? "WRITE" : kind == _NIXL_UCX_DP_READ_REQ ? "READ" : "?";
}

/* A refusal status from the wire, as a nixl status (never success). */
static nixl_status_t _nixl_ucx_refusal_status(unsigned refusal) {
    int st = -(int)refusal;
    return st <= NIXL_ERR_NOT_POSTED && st >= NIXL_ERR_NO_TELEMETRY ? (nixl_status_t)st : NIXL_ERR_BACKEND;
}

// >>checked: the target's registrations, by address

/* Adds m to the address index (regions may overlap: kept in start order). */
static nixl_status_t _nixl_ucx_index_add(_nixl_ucx_engine_t *eng, _nixl_ucx_md_t *m) {
    size_t i;
    if (eng->nby_addr == eng->by_addr_cap) {
        size_t cap = eng->by_addr_cap ? 2 * eng->by_addr_cap : 16;
        _nixl_ucx_md_t **n = (_nixl_ucx_md_t **)_nixl_ucx_alloc(eng, cap * sizeof *n);
        if (!n) return NIXL_ERR_BACKEND;
        if (eng->nby_addr) memcpy(n, eng->by_addr, eng->nby_addr * sizeof *n);
        _nixl_ucx_free(eng, eng->by_addr);
        eng->by_addr = n;
        eng->by_addr_cap = cap;
    }
    for (i = eng->nby_addr; i > 0 && eng->by_addr[i - 1]->addr > m->addr; i--) eng->by_addr[i] = eng->by_addr[i - 1];
    eng->by_addr[i] = m;
    eng->nby_addr++;
    if (m->len > eng->max_region) eng->max_region = m->len;
    return NIXL_SUCCESS;
}

static void _nixl_ucx_index_remove(_nixl_ucx_engine_t *eng, const _nixl_ucx_md_t *m) {
    size_t i;
    for (i = 0; i < eng->nby_addr && eng->by_addr[i] != m; i++) {
    }
    if (i == eng->nby_addr) return;
    memmove(eng->by_addr + i, eng->by_addr + i + 1, (eng->nby_addr - i - 1) * sizeof *eng->by_addr);
    eng->nby_addr--;
}

/* The region registered here that holds all of [addr, addr+len), or NULL.
   Binary search for the last region starting at or below addr, then back
   while a region that long could still reach the range's end. */
static _nixl_ucx_md_t *_nixl_ucx_region_of(const _nixl_ucx_engine_t *eng, uint64_t addr, uint64_t len) {
    size_t lo = 0, hi = eng->nby_addr;
    uint64_t end = addr + len;
    if (len == 0 || end < addr) return NULL;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if ((uint64_t)eng->by_addr[mid]->addr <= addr) lo = mid + 1;
        else hi = mid;
    }
    while (lo-- > 0) {
        const _nixl_ucx_md_t *m = eng->by_addr[lo];
        if (end <= (uint64_t)m->addr + m->len) return eng->by_addr[lo];
        if ((uint64_t)m->addr + eng->max_region < end) break; /* nothing earlier reaches that far */
    }
    return NULL;
}

// >>checked: the target's accesses in flight

#define _NIXL_UCX_TIO_POOL 1024u

static _nixl_ucx_tio_t *_nixl_ucx_tio_new(_nixl_ucx_engine_t *eng, _nixl_ucx_md_t *md) {
    _nixl_ucx_tio_t *t = eng->tio_pool;
    if (t) {
        eng->tio_pool = t->next;
        eng->tio_pooled--;
        memset(t, 0, sizeof *t);
    } else {
        t = (_nixl_ucx_tio_t *)_nixl_ucx_alloc(eng, sizeof *t);
    }
    if (!t) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "data path: out of memory for an answer");
        return NULL;
    }
    t->eng = eng;
    t->md = md;
    if (md) md->busy++;
    t->next = eng->tios;
    if (eng->tios) eng->tios->prev = t;
    eng->tios = t;
    return t;
}

static void _nixl_ucx_tio_free(_nixl_ucx_tio_t *t) {
    _nixl_ucx_engine_t *eng = t->eng;
    if (t->md) t->md->busy--;
    if (t->prev) t->prev->next = t->next;
    else eng->tios = t->next;
    if (t->next) t->next->prev = t->prev;
    if (eng->tio_pooled < _NIXL_UCX_TIO_POOL && !eng->destroying) {
        t->next = eng->tio_pool;
        eng->tio_pool = t;
        eng->tio_pooled++;
        return;
    }
    _nixl_ucx_free(eng, t);
}

static void _nixl_ucx_tio_done_cb(void *request, ucs_status_t status, void *user_data) {
    _nixl_ucx_tio_t *t = (_nixl_ucx_tio_t *)user_data;
    if (status != UCS_OK && !t->eng->destroying)
        nixl_backend_log(t->eng->be, NIXL_LOG_DEBUG, "data path: answer not delivered: %s", ucs_status_string(status));
    ucp_request_free(request);
    _nixl_ucx_tio_free(t);
}

static int _nixl_ucx_dp_parse(const void *header, size_t n, _nixl_ucx_dp_t *q);
static void _nixl_ucx_dp_answer(_nixl_ucx_engine_t *eng, ucp_ep_h ep, const _nixl_ucx_dp_t *q, unsigned kind,
                                unsigned refusal, _nixl_ucx_md_t *md);

/* A WRITE's rendezvous receive ended: ACK it once the bytes are in place. */
static void _nixl_ucx_tio_recv_cb(void *request, ucs_status_t status, size_t length, void *user_data) {
    _nixl_ucx_tio_t *t = (_nixl_ucx_tio_t *)user_data;
    _nixl_ucx_dp_t q;
    (void)length;
    ucp_request_free(request);
    if (status != UCS_OK && !t->eng->destroying)
        nixl_backend_log(t->eng->be, NIXL_LOG_WARN, "data path: WRITE of %llu bytes at 0x%llx not received: %s",
                         (unsigned long long)_nixl_get64(t->hdr + 32),
                         (unsigned long long)_nixl_get64(t->hdr + 24), ucs_status_string(status));
    else if (status == UCS_OK && t->reply_ep && !t->eng->destroying && _nixl_ucx_dp_parse(t->hdr, sizeof t->hdr, &q))
        _nixl_ucx_dp_answer(t->eng, t->reply_ep, &q, _NIXL_UCX_DP_ACK, 0, NULL);
    _nixl_ucx_tio_free(t);
}

/* Answers q on the reply endpoint (from inside the handler only): an ACK, or
   READ_DATA with md's bytes at q's range (md NULL: the refusal alone). */
static void _nixl_ucx_dp_answer(_nixl_ucx_engine_t *eng, ucp_ep_h ep, const _nixl_ucx_dp_t *q, unsigned kind,
                                unsigned refusal, _nixl_ucx_md_t *md) {
    ucp_request_param_t prm;
    ucs_status_ptr_t sp;
    _nixl_ucx_tio_t *t = _nixl_ucx_tio_new(eng, md);
    const void *data = md ? (const void *)(uintptr_t)q->addr : NULL;
    size_t len = md ? (size_t)q->len : 0;
    if (!t) return;
    _nixl_ucx_dp_write_hdr(t->hdr, kind, refusal, q->idx, q->slotgen, q->token, q->addr, q->len);
    _nixl_ucx_am_param(&prm, _nixl_ucx_tio_done_cb, t);
    if (md && (len > eng->rndv_thresh || md->vram || (q->refusal & _NIXL_UCX_DP_F_RNDV)))
        prm.flags = UCP_AM_SEND_FLAG_RNDV;
    sp = ucp_am_send_nbx(ep, _NIXL_UCX_AM_DATA_ID, t->hdr, _NIXL_UCX_DP_HDR, data, len, &prm);
    if (UCS_PTR_IS_ERR(sp))
        nixl_backend_log(eng->be, NIXL_LOG_WARN, "data path: answer to a %s of %llu bytes not sent: %s",
                         kind == _NIXL_UCX_DP_ACK ? "WRITE" : "READ", (unsigned long long)q->len,
                         ucs_status_string(UCS_PTR_STATUS(sp)));
    if (sp == NULL || UCS_PTR_IS_ERR(sp)) _nixl_ucx_tio_free(t);
}

/* The target's check: the region, or NULL with a log line saying why. */
static _nixl_ucx_md_t *_nixl_ucx_dp_check(_nixl_ucx_engine_t *eng, const _nixl_ucx_dp_t *q) {
    _nixl_ucx_md_t *m = _nixl_ucx_region_of(eng, q->addr, q->len);
    if (!m)
        nixl_backend_log(eng->be, NIXL_LOG_WARN,
                         "data path: refused a peer's %s of %llu bytes at 0x%llx: no region registered with this "
                         "backend holds it", _nixl_ucx_dp_what(q->kind), (unsigned long long)q->len,
                         (unsigned long long)q->addr);
    return m;
}

static ucs_status_t _nixl_ucx_dp_on_write(_nixl_ucx_worker_t *w, const _nixl_ucx_dp_t *q, void *data,
                                          size_t length, const ucp_am_recv_param_t *param) {
    _nixl_ucx_engine_t *eng = w->eng;
    int rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    int can_reply = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0;
    _nixl_ucx_md_t *m = _nixl_ucx_dp_check(eng, q);
    ucp_request_param_t prm;
    ucs_status_ptr_t sp;
    _nixl_ucx_tio_t *t;
    if (m && length != q->len) {
        nixl_backend_log(eng->be, NIXL_LOG_WARN, "data path: refused a WRITE naming %llu bytes that carries %zu",
                         (unsigned long long)q->len, length);
        m = NULL;
    }
    if (!rndv && m && m->vram) {
        nixl_backend_log(eng->be, NIXL_LOG_WARN, "data path: refused an eager WRITE of %zu bytes into GPU memory "
                         "(a GPU region takes rendezvous only)", length);
        m = NULL;
    }
    if (!rndv) {
        if (m) memcpy((void *)(uintptr_t)q->addr, data, length);
        if (can_reply)
            _nixl_ucx_dp_answer(eng, param->reply_ep, q, _NIXL_UCX_DP_ACK, m ? 0u : (unsigned)-NIXL_ERR_NOT_ALLOWED,
                                NULL);
        return UCS_OK;
    }
    if (!m) return _NIXL_UCX_REFUSED; /* the sender's request completes with it */
    t = _nixl_ucx_tio_new(eng, m);
    if (!t) return UCS_ERR_NO_MEMORY;
    t->reply_ep = can_reply ? param->reply_ep : NULL;
    _nixl_ucx_dp_write_hdr(t->hdr, q->kind, 0, q->idx, q->slotgen, q->token, q->addr, q->len);
    _nixl_ucx_cb_param(&prm, t);
    prm.cb.recv_am = _nixl_ucx_tio_recv_cb;
    sp = ucp_am_recv_data_nbx(w->h, data, (void *)(uintptr_t)q->addr, length, &prm);
    if (sp == NULL) { /* completed inside the call: the bytes are in place */
        if (t->reply_ep) _nixl_ucx_dp_answer(eng, t->reply_ep, q, _NIXL_UCX_DP_ACK, 0, NULL);
        _nixl_ucx_tio_free(t);
    } else if (UCS_PTR_IS_ERR(sp)) {
        nixl_backend_log(eng->be, NIXL_LOG_WARN, "data path: ucp_am_recv_data_nbx(%zu bytes) failed: %s", length,
                         ucs_status_string(UCS_PTR_STATUS(sp)));
        _nixl_ucx_tio_free(t);
        return UCS_PTR_STATUS(sp); /* UCX owns the descriptor; the sender's request fails */
    }
    return UCS_OK;
}

static void _nixl_ucx_dp_on_read_req(_nixl_ucx_worker_t *w, const _nixl_ucx_dp_t *q,
                                     const ucp_am_recv_param_t *param) {
    _nixl_ucx_engine_t *eng = w->eng;
    _nixl_ucx_md_t *m;
    if (!(param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP)) {
        nixl_backend_log(eng->be, NIXL_LOG_WARN, "data path: READ request without a reply endpoint, dropped");
        return;
    }
    m = _nixl_ucx_dp_check(eng, q);
    _nixl_ucx_dp_answer(eng, param->reply_ep, q, _NIXL_UCX_DP_READ_DATA, m ? 0u : (unsigned)-NIXL_ERR_NOT_ALLOWED, m);
}

// >>checked: the initiator's side

static nixl_status_t _nixl_ucx_req_error(_nixl_ucx_req_t *r, const char *what, ucs_status_t st);
static void _nixl_ucx_req_landed(_nixl_ucx_req_t *r);

/* The request an answer belongs to (this post of it), or NULL. */
static _nixl_ucx_req_t *_nixl_ucx_dp_req_of(const _nixl_ucx_engine_t *eng, const _nixl_ucx_dp_t *q,
                                            nixl_xfer_op_t op) {
    uint32_t slot = (uint32_t)(q->slotgen >> 32);
    _nixl_ucx_req_t *r;
    if (slot >= eng->nslots) return NULL;
    r = eng->slots[slot];
    if (!r || r->gen != (uint32_t)q->slotgen || r->token != q->token || r->op != op ||
        r->state != _NIXL_UCX_REQ_FLUSHING || q->idx >= r->count || r->ops[q->idx].done)
        return NULL;
    return r;
}

/* Ends the post once every descriptor is accounted for (or one failed) and
   UCX holds nothing of the request any more. */
static void _nixl_ucx_dp_maybe_finish(_nixl_ucx_req_t *r) {
    if (r->state != _NIXL_UCX_REQ_FLUSHING || r->io_inflight > 0) return;
    if (r->am_err != NIXL_SUCCESS) _nixl_ucx_req_finish(r, r->am_err);
    else if (r->ndone == r->count) _nixl_ucx_req_landed(r);
}

static void _nixl_ucx_dp_op_done(_nixl_ucx_op_t *o, nixl_status_t st) {
    _nixl_ucx_req_t *r = o->req;
    if (!o->done) {
        o->done = 1;
        r->ndone++;
    }
    if (st != NIXL_SUCCESS && r->am_err == NIXL_SUCCESS) r->am_err = st;
    _nixl_ucx_dp_maybe_finish(r);
}

/* A refusal by the target, logged on this side too. */
static void _nixl_ucx_dp_refused(_nixl_ucx_op_t *o, nixl_status_t st) {
    _nixl_ucx_req_t *r = o->req;
    nixl_backend_log(r->eng->be, NIXL_LOG_ERROR, "xfer to %s: the target refused %s of descriptor %zu (%zu bytes at "
                     "0x%llx): %s", r->peer ? r->peer->name : "(disconnected peer)",
                     r->op == NIXL_WRITE ? "the WRITE" : "the READ", (size_t)(o - r->ops), o->len,
                     (unsigned long long)o->raddr, nixl_status_str(st));
    _nixl_ucx_dp_op_done(o, st);
}

static void _nixl_ucx_dp_sent_cb(void *request, ucs_status_t status, void *user_data) {
    _nixl_ucx_op_t *o = (_nixl_ucx_op_t *)user_data;
    _nixl_ucx_req_t *r = o->req;
    ucp_request_free(request);
    r->io_inflight--;
    if (status == _NIXL_UCX_REFUSED) _nixl_ucx_dp_refused(o, NIXL_ERR_NOT_ALLOWED);
    else if (status != UCS_OK) _nixl_ucx_dp_op_done(o, _nixl_ucx_req_error(r, "data path send", status));
    else _nixl_ucx_dp_maybe_finish(r); /* its ACK (or data) says whether it landed */
}

static void _nixl_ucx_dp_recv_cb(void *request, ucs_status_t status, size_t length, void *user_data) {
    _nixl_ucx_op_t *o = (_nixl_ucx_op_t *)user_data;
    _nixl_ucx_req_t *r = o->req;
    (void)length;
    ucp_request_free(request);
    r->io_inflight--;
    _nixl_ucx_dp_op_done(o, status == UCS_OK ? NIXL_SUCCESS : _nixl_ucx_req_error(r, "READ data receive", status));
}

static void _nixl_ucx_dp_on_ack(_nixl_ucx_engine_t *eng, const _nixl_ucx_dp_t *q) {
    _nixl_ucx_req_t *r = _nixl_ucx_dp_req_of(eng, q, NIXL_WRITE);
    if (!r) return; /* an earlier post's, or not ours */
    if (q->refusal) _nixl_ucx_dp_refused(&r->ops[q->idx], _nixl_ucx_refusal_status(q->refusal));
    else _nixl_ucx_dp_op_done(&r->ops[q->idx], NIXL_SUCCESS);
}

static ucs_status_t _nixl_ucx_dp_on_read_data(_nixl_ucx_worker_t *w, const _nixl_ucx_dp_t *q, void *data,
                                              size_t length, const ucp_am_recv_param_t *param) {
    _nixl_ucx_req_t *r = _nixl_ucx_dp_req_of(w->eng, q, NIXL_READ);
    int rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    ucp_request_param_t prm;
    ucs_status_ptr_t sp;
    _nixl_ucx_op_t *o;
    if (!r) return rndv ? UCS_ERR_CANCELED : UCS_OK; /* stale: decline the bytes */
    o = &r->ops[q->idx];
    if (q->refusal) {
        _nixl_ucx_dp_refused(o, _nixl_ucx_refusal_status(q->refusal));
        return rndv ? UCS_ERR_CANCELED : UCS_OK;
    }
    if (length != o->len) {
        nixl_backend_log(w->eng->be, NIXL_LOG_ERROR, "xfer: READ answer of %zu bytes for a %zu-byte descriptor",
                         length, o->len);
        _nixl_ucx_dp_op_done(o, NIXL_ERR_BACKEND);
        return rndv ? UCS_ERR_CANCELED : UCS_OK;
    }
    if (!rndv && o->vram) {
        nixl_backend_log(w->eng->be, NIXL_LOG_ERROR, "xfer: an eager READ answer for GPU memory (asked rendezvous)");
        _nixl_ucx_dp_op_done(o, NIXL_ERR_BACKEND);
        return UCS_OK;
    }
    if (!rndv) {
        memcpy(o->laddr, data, length);
        _nixl_ucx_dp_op_done(o, NIXL_SUCCESS);
        return UCS_OK;
    }
    _nixl_ucx_cb_param(&prm, o);
    prm.cb.recv_am = _nixl_ucx_dp_recv_cb;
    r->io_inflight++; /* before the call: its callback may run inside it */
    sp = ucp_am_recv_data_nbx(w->h, data, o->laddr, length, &prm);
    if (sp == NULL || UCS_PTR_IS_ERR(sp)) r->io_inflight--;
    if (sp == NULL) _nixl_ucx_dp_op_done(o, NIXL_SUCCESS);
    else if (UCS_PTR_IS_ERR(sp)) _nixl_ucx_dp_op_done(o, _nixl_ucx_req_error(r, "ucp_am_recv_data_nbx", UCS_PTR_STATUS(sp)));
    return UCS_OK;
}

/* The data-path handler: both roles, every header checked. */
static ucs_status_t _nixl_ucx_dp_cb(void *arg, const void *header, size_t header_length, void *data, size_t length,
                                    const ucp_am_recv_param_t *param) {
    _nixl_ucx_worker_t *w = (_nixl_ucx_worker_t *)arg;
    int rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    _nixl_ucx_dp_t q;
    if (w->eng->destroying) return rndv ? UCS_ERR_CANCELED : UCS_OK;
    if (!_nixl_ucx_dp_parse(header, header_length, &q)) {
        nixl_backend_log(w->eng->be, NIXL_LOG_WARN, "data path: malformed header (%zu bytes), dropped", header_length);
        return rndv ? UCS_ERR_CANCELED : UCS_OK;
    }
    switch (q.kind) {
    case _NIXL_UCX_DP_WRITE: return _nixl_ucx_dp_on_write(w, &q, data, length, param);
    case _NIXL_UCX_DP_READ_REQ: _nixl_ucx_dp_on_read_req(w, &q, param); break;
    case _NIXL_UCX_DP_READ_DATA: return _nixl_ucx_dp_on_read_data(w, &q, data, length, param);
    case _NIXL_UCX_DP_ACK: _nixl_ucx_dp_on_ack(w->eng, &q); break;
    case _NIXL_UCX_DP_HELLO: break;
    default:
        nixl_backend_log(w->eng->be, NIXL_LOG_WARN, "data path: unknown kind %u, dropped", q.kind);
        return rndv ? UCS_ERR_CANCELED : UCS_OK;
    }
    return rndv ? UCS_ERR_CANCELED : UCS_OK;
}

// >>checked: requests

/* A request's token: from the kernel's CSPRNG (a peer sees the tokens of
   requests to it; a PRNG's output would let it predict those to others). */
static uint64_t _nixl_ucx_random(_nixl_ucx_engine_t *eng) {
    uint64_t x = 0;
    if (nixl_random_bytes(&x, sizeof x) != 0) {
        nixl_backend_log(eng->be, NIXL_LOG_WARN, "prep_xfer: getrandom failed; request token from the clock");
        x = nixl_now_us() * 0x9e3779b97f4a7c15ull ^ eng->rng++;
    }
    return x;
}

/* Gives r a slot in the answer table. */
static nixl_status_t _nixl_ucx_slot_take(_nixl_ucx_engine_t *eng, _nixl_ucx_req_t *r) {
    if (!eng->nfree && eng->nslots == eng->slots_cap) {
        uint32_t cap = eng->slots_cap ? 2 * eng->slots_cap : 64;
        _nixl_ucx_req_t **s = (_nixl_ucx_req_t **)_nixl_ucx_alloc(eng, cap * sizeof *s);
        uint32_t *f = (uint32_t *)_nixl_ucx_alloc(eng, cap * sizeof *f);
        if (!s || !f) {
            _nixl_ucx_free(eng, s);
            _nixl_ucx_free(eng, f);
            return NIXL_ERR_BACKEND;
        }
        if (eng->nslots) memcpy(s, eng->slots, eng->nslots * sizeof *s);
        _nixl_ucx_free(eng, eng->slots);
        _nixl_ucx_free(eng, eng->free_slots);
        eng->slots = s;
        eng->free_slots = f;
        eng->slots_cap = cap;
    }
    r->slot = eng->nfree ? eng->free_slots[--eng->nfree] : eng->nslots++;
    eng->slots[r->slot] = r;
    r->token = _nixl_ucx_random(eng);
    return NIXL_SUCCESS;
}

static void _nixl_ucx_slot_give(_nixl_ucx_engine_t *eng, _nixl_ucx_req_t *r) {
    if (!r->am || r->slot >= eng->nslots || eng->slots[r->slot] != r) return;
    eng->slots[r->slot] = NULL;
    eng->free_slots[eng->nfree++] = r->slot;
}

/* Posts every descriptor as a checked AM; no allocation, no lookup. */
static nixl_status_t _nixl_ucx_dp_post(_nixl_ucx_req_t *r) {
    ucp_ep_h ep = r->conn->ep;
    uint64_t slotgen;
    size_t i;
    r->gen++;
    r->ndone = 0;
    r->am_err = NIXL_SUCCESS;
    slotgen = ((uint64_t)r->slot << 32) | r->gen;
    for (i = 0; i < r->count && r->am_err == NIXL_SUCCESS; i++) {
        _nixl_ucx_op_t *o = &r->ops[i];
        ucp_request_param_t prm;
        ucs_status_ptr_t sp;
        int wr = r->op == NIXL_WRITE;
        o->done = 0;
        _nixl_put64(o->hdr + 8, slotgen);
        _nixl_ucx_am_param(&prm, _nixl_ucx_dp_sent_cb, o);
        prm.flags = (wr && o->rndv ? UCP_AM_SEND_FLAG_RNDV : UCP_AM_SEND_FLAG_EAGER) | UCP_AM_SEND_FLAG_REPLY;
        sp = ucp_am_send_nbx(ep, _NIXL_UCX_AM_DATA_ID, o->hdr, _NIXL_UCX_DP_HDR, wr ? o->laddr : NULL,
                             wr ? o->len : 0, &prm);
        if (UCS_PTR_IS_ERR(sp)) {
            char what[64];
            snprintf(what, sizeof what, "ucp_am_send_nbx(descriptor %zu, %zu bytes)", i, o->len);
            r->am_err = _nixl_ucx_req_error(r, what, UCS_PTR_STATUS(sp));
        } else if (sp) {
            r->io_inflight++;
        }
    }
    _nixl_ucx_dp_maybe_finish(r);
    return r->state == _NIXL_UCX_REQ_FLUSHING ? NIXL_IN_PROG : r->status;
}

/* Fills a descriptor's header at prep (the post adds its generation). */
static void _nixl_ucx_dp_prep_op(_nixl_ucx_engine_t *eng, _nixl_ucx_req_t *r, size_t i, int gpu_remote) {
    _nixl_ucx_op_t *o = &r->ops[i];
    /* GPU memory on either side: rendezvous (UCX moves it), never a CPU memcpy */
    o->rndv = r->op == NIXL_WRITE && (o->len > eng->rndv_thresh || o->vram || gpu_remote);
    _nixl_ucx_dp_write_hdr(o->hdr, r->op == NIXL_WRITE ? _NIXL_UCX_DP_WRITE : _NIXL_UCX_DP_READ_REQ,
                           r->op == NIXL_READ && o->vram ? _NIXL_UCX_DP_F_RNDV : 0u, (uint32_t)i, 0, r->token,
                           o->raddr, o->len);
}

/* A deregistered region: new accesses are refused already (it left the
   index); wait, bounded, for those in flight, then let go of them. */
static void _nixl_ucx_wait_region_idle(_nixl_ucx_engine_t *eng, _nixl_ucx_md_t *m) {
    uint64_t until = nixl_now_us() + _NIXL_UCX_DEREG_WAIT_US;
    _nixl_ucx_tio_t *t;
    unsigned i;
    while (m->busy && nixl_now_us() < until)
        for (i = 0; i < eng->num_workers; i++) ucp_worker_progress(eng->workers[i].h);
    if (!m->busy) return;
    nixl_backend_log(eng->be, NIXL_LOG_ERROR, "deregister_mem: %u peer accesses to %p+%zu still in flight after %u ms "
                     "(a peer that stopped driving progress); keep the memory mapped until they end", m->busy,
                     (void *)m->addr, m->len, _NIXL_UCX_DEREG_WAIT_US / 1000u);
    for (t = eng->tios; t; t = t->next)
        if (t->md == m) t->md = NULL;
    m->busy = 0;
}

// >>lifecycle (vtable)

static nixl_status_t _nixl_ucx_create_context(_nixl_ucx_engine_t *eng, const nixl_backend_init_t *init) {
    ucp_config_t *cfg = NULL;
    ucp_params_t prm;
    ucp_context_attr_t attr;
    ucs_status_t st;
    nixl_status_t ns;
    _nixl_ucx_env_report(eng);
    st = ucp_config_read(NULL, NULL, &cfg);
    if (st != UCS_OK) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "create: ucp_config_read failed: %s", ucs_status_string(st));
        return NIXL_ERR_BACKEND;
    }
    ns = _nixl_ucx_apply_params(eng, init, cfg);
    if (ns != NIXL_SUCCESS) {
        ucp_config_release(cfg);
        return ns;
    }
    memset(&prm, 0, sizeof prm);
    prm.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
    /* Without UCP_FEATURE_RMA, UCX installs no handler for its software RMA
       emulation, so on the checked path no peer can put/get here at all,
       whatever it sends: the only way in is our checked handler. */
    prm.features = eng->rma ? UCP_FEATURE_RMA | UCP_FEATURE_AM : UCP_FEATURE_AM;
    prm.mt_workers_shared = 0;
    st = ucp_init(&prm, cfg, &eng->ctx);
    ucp_config_release(cfg);
    if (st != UCS_OK) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "create: ucp_init(%s) failed: %s (bad tls= list?)",
                         eng->rma ? "RMA|AM" : "AM", ucs_status_string(st));
        eng->ctx = NULL;
        return st == UCS_ERR_NO_DEVICE || st == UCS_ERR_UNSUPPORTED ? NIXL_ERR_NOT_SUPPORTED : NIXL_ERR_BACKEND;
    }
    memset(&attr, 0, sizeof attr);
    attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
    if (ucp_context_query(eng->ctx, &attr) == UCS_OK) eng->mem_types = attr.memory_types;
    return _nixl_ucx_check_keys(eng, init);
}

static void _nixl_ucx_destroy(void *engine);

/* The memory domains our own key for host memory names: a peer's packed
   key may name those (and the domains its worker address names). */
static void _nixl_ucx_probe_rkey_map(_nixl_ucx_engine_t *eng) {
    static unsigned char probe[64];
    ucp_mem_map_params_t mp;
    ucp_mem_h memh;
    void *rkey = NULL;
    size_t len = 0;
    memset(&mp, 0, sizeof mp);
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    mp.address = probe;
    mp.length = sizeof probe;
    if (ucp_mem_map(eng->ctx, &mp, &memh) != UCS_OK) return;
    if (ucp_rkey_pack(eng->ctx, memh, &rkey, &len) == UCS_OK) {
        eng->rkey_md_map = _nixl_ucx_rkey_md_map(rkey, len);
        ucp_rkey_buffer_release(rkey);
    }
    ucp_mem_unmap(eng->ctx, memh);
}

static nixl_status_t _nixl_ucx_create(const nixl_backend_init_t *init, void **engine) {
    _nixl_ucx_engine_t *eng;
    uint64_t nw = 1;
    unsigned i;
    nixl_status_t st;
    eng = (_nixl_ucx_engine_t *)nixl_backend_alloc(init->self, sizeof *eng);
    if (!eng) return NIXL_ERR_BACKEND;
    eng->be = init->self;
    st = nixl_param_u64(init, "num_workers", 1, 1, _NIXL_UCX_MAX_WORKERS, &nw);
    if (st != NIXL_SUCCESS) goto fail;
    eng->num_workers = (unsigned)nw;
    eng->name = _nixl_ucx_strdup(eng, init->agent_name);
    if (!eng->name) { st = NIXL_ERR_BACKEND; goto fail; }
    eng->name_len = strlen(eng->name);
    if (eng->name_len == 0 || eng->name_len > 255) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "create: agent name of %zu bytes (1..255)", eng->name_len);
        st = NIXL_ERR_INVALID_PARAM;
        goto fail;
    }
    _nixl_ucx_ident_self(&eng->ident);
    st = _nixl_ucx_choose_path(eng, init);
    if (st != NIXL_SUCCESS) goto fail;
    st = _nixl_ucx_create_context(eng, init);
    if (st != NIXL_SUCCESS) goto fail;
    if (eng->rma) _nixl_ucx_probe_rkey_map(eng);
    eng->workers = (_nixl_ucx_worker_t *)_nixl_ucx_alloc(eng, eng->num_workers * sizeof *eng->workers);
    if (!eng->workers) { st = NIXL_ERR_BACKEND; goto fail; }
    for (i = 0; i < eng->num_workers; i++) {
        st = _nixl_ucx_worker_open(eng, i);
        if (st != NIXL_SUCCESS) goto fail;
    }
    st = _nixl_ucx_build_info(eng);
    if (st != NIXL_SUCCESS) goto fail;
    nixl_backend_log(eng->be, NIXL_LOG_INFO, "UCX %s: %u worker(s), %zu bytes of connection info",
                     ucp_get_version_string(), eng->num_workers, eng->info_len);
    *engine = eng;
    return NIXL_SUCCESS;
fail:
    _nixl_ucx_destroy(eng);
    return st;
}

/* Waits (bounded) for closing endpoints; the engine is going away. */
static void _nixl_ucx_drain_closes(_nixl_ucx_engine_t *eng) {
    uint64_t until = nixl_now_us() + _NIXL_UCX_DESTROY_WAIT_US;
    unsigned i;
    _nixl_ucx_conn_t *c;
    while (eng->conns) {
        for (i = 0; i < eng->num_workers; i++) ucp_worker_progress(eng->workers[i].h);
        _nixl_ucx_reap_conns(eng);
        if (nixl_now_us() > until) break;
    }
    /* still not done: let UCX release them when it is (ucp_worker_destroy
       insists that no close request is left unreleased) */
    for (c = eng->conns; c; c = c->next)
        if (c->close_req) {
            nixl_backend_log(eng->be, NIXL_LOG_WARN, "destroy: an endpoint did not close within %u ms",
                             _NIXL_UCX_DESTROY_WAIT_US / 1000u);
            ucp_request_free(c->close_req);
            c->close_req = NULL;
        }
}

static void _nixl_ucx_unload_md(void *engine, void *rmd);
static void _nixl_ucx_deregister_mem(void *engine, void *md);

/* UCX 1.13 asserts (aborts) when an endpoint is closed while its wire-up
   reply is still queued. A HELLO still unanswered means wire-up may be in
   flight: give it a moment (bounded) before closing. */
static void _nixl_ucx_settle_wireup(_nixl_ucx_engine_t *eng) {
    uint64_t until = nixl_now_us() + 200000u;
    while (eng->workers && nixl_now_us() < until) {
        _nixl_ucx_conn_t *c;
        unsigned i;
        int waiting = 0;
        for (c = eng->conns; c; c = c->next)
            waiting |= c->peer && !c->peer->failed && !c->closing && c->sess_state == _NIXL_UCX_SESS_WAIT;
        if (!waiting) return;
        for (i = 0; i < eng->num_workers; i++) ucp_worker_progress(eng->workers[i].h);
    }
}

static void _nixl_ucx_destroy(void *engine) {
    _nixl_ucx_engine_t *eng = (_nixl_ucx_engine_t *)engine;
    _nixl_ucx_conn_t *c;
    _nixl_ucx_peer_t *p;
    unsigned i;
    if (!eng) return;
    eng->destroying = 1; /* no callbacks into the core from here on */
    /* reverse order of creation: remote keys, endpoints, registrations, workers, context */
    for (p = eng->peers; p; p = p->next)
        while (p->rmds) _nixl_ucx_unload_md(eng, p->rmds);
    if (eng->self_peer)
        while (eng->self_peer->rmds) _nixl_ucx_unload_md(eng, eng->self_peer->rmds);
    _nixl_ucx_settle_wireup(eng);
    for (c = eng->conns; c; c = c->next)
        if (!c->closing) _nixl_ucx_conn_close_now(eng, c);
    if (eng->workers && eng->conns) _nixl_ucx_drain_closes(eng);
    while (eng->mds) _nixl_ucx_deregister_mem(eng, eng->mds);
    if (eng->workers) {
        for (i = 0; i < eng->num_workers; i++) {
            if (eng->workers[i].addr) ucp_worker_release_address(eng->workers[i].h, eng->workers[i].addr);
            if (eng->workers[i].h) ucp_worker_destroy(eng->workers[i].h);
        }
    }
    /* what UCX never completed (workers are gone, no callback can come) */
    while (eng->conns) {
        c = eng->conns;
        eng->conns = c->next;
        _nixl_ucx_drop_held(eng, c, "the agent is being destroyed");
        _nixl_ucx_free(eng, c);
    }
    while (eng->sessions) _nixl_ucx_sess_drop(eng, eng->sessions);
    while (eng->msgs) {
        _nixl_ucx_msg_t *m = eng->msgs;
        _nixl_ucx_msg_unlink(eng, m);
        _nixl_ucx_msg_free(eng, m);
    }
    while (eng->reqs) _nixl_ucx_req_free(eng, eng->reqs);
    while (eng->tios) _nixl_ucx_tio_free(eng->tios);
    while (eng->tio_pool) {
        _nixl_ucx_tio_t *t = eng->tio_pool;
        eng->tio_pool = t->next;
        _nixl_ucx_free(eng, t);
    }
    _nixl_ucx_free(eng, eng->by_addr);
    _nixl_ucx_free(eng, eng->slots);
    _nixl_ucx_free(eng, eng->free_slots);
    while (eng->peers) {
        p = eng->peers;
        eng->peers = p->next;
        _nixl_ucx_free_peer(eng, p);
    }
    if (eng->self_peer) _nixl_ucx_free_peer(eng, eng->self_peer);
    _nixl_ucx_free(eng, eng->workers);
    if (eng->ctx) ucp_cleanup(eng->ctx);
    _nixl_ucx_free(eng, eng->info);
    _nixl_ucx_free(eng, eng->name);
    _nixl_cuda_close(&eng->cuda);
    nixl_backend_free(eng->be, eng);
}

// >>memory (vtable)

static nixl_status_t _nixl_ucx_register_mem(void *engine, nixl_mem_t mem, const nixl_desc_t *region, void **md) {
    _nixl_ucx_engine_t *eng = (_nixl_ucx_engine_t *)engine;
    ucp_mem_map_params_t mp;
    ucs_status_t st;
    void *rkey = NULL;
    size_t rkey_len = 0;
    _nixl_ucx_md_t *m;
    if (mem == NIXL_VRAM && !(eng->mem_types & (1ull << UCS_MEMORY_TYPE_CUDA))) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR,
                         "register_mem: VRAM region %p+%zu (GPU %llu): this UCX (%s) reports no CUDA memory "
                         "support (built without CUDA, or no CUDA transport in tls=)",
                         (void *)region->addr, region->len, (unsigned long long)region->dev_id,
                         ucp_get_version_string());
        return NIXL_ERR_NOT_SUPPORTED;
    }
    if (mem != NIXL_DRAM && mem != NIXL_VRAM) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "register_mem: memory type %s not supported", nixl_mem_str(mem));
        return NIXL_ERR_NOT_SUPPORTED;
    }
    if (mem == NIXL_VRAM) {
        /* UCX trusts the memory type it is told: check it ourselves */
        int gpu;
        uintptr_t base;
        size_t size;
        nixl_status_t vs;
        if (_nixl_cuda_load(&eng->cuda, eng->be, "ucx") != 0) return NIXL_ERR_NOT_SUPPORTED;
        vs = _nixl_vram_check(eng->be, "ucx", _nixl_cuda_query, &eng->cuda, region, &gpu, &base, &size);
        if (vs != NIXL_SUCCESS) return vs;
    }
    m = (_nixl_ucx_md_t *)_nixl_ucx_alloc(eng, sizeof *m);
    if (!m) return NIXL_ERR_BACKEND;
    memset(&mp, 0, sizeof mp);
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    mp.address = (void *)region->addr;
    mp.length = region->len;
    if (mem == NIXL_VRAM) {
        mp.field_mask |= UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
        mp.memory_type = UCS_MEMORY_TYPE_CUDA;
    }
    st = ucp_mem_map(eng->ctx, &mp, &m->memh);
    if (st != UCS_OK) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "register_mem: ucp_mem_map(%p, %zu) failed: %s",
                         (void *)region->addr, region->len, ucs_status_string(st));
        _nixl_ucx_free(eng, m);
        return NIXL_ERR_BACKEND;
    }
    /* the checked path needs no key: the target checks the address itself */
    st = eng->rma ? ucp_rkey_pack(eng->ctx, m->memh, &rkey, &rkey_len) : UCS_OK;
    if (st != UCS_OK) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "register_mem: ucp_rkey_pack(%p, %zu) failed: %s",
                         (void *)region->addr, region->len, ucs_status_string(st));
        ucp_mem_unmap(eng->ctx, m->memh);
        _nixl_ucx_free(eng, m);
        return NIXL_ERR_BACKEND;
    }
    eng->rkey_md_map |= rkey ? _nixl_ucx_rkey_md_map(rkey, rkey_len) : 0;
    m->pub_len = _NIXL_UCX_PUB_HDR + rkey_len;
    m->pub = (unsigned char *)_nixl_ucx_alloc(eng, m->pub_len);
    m->addr = region->addr;
    m->len = region->len;
    if (!m->pub || _nixl_ucx_index_add(eng, m) != NIXL_SUCCESS) {
        if (rkey) ucp_rkey_buffer_release(rkey);
        _nixl_ucx_free(eng, m->pub);
        ucp_mem_unmap(eng->ctx, m->memh);
        _nixl_ucx_free(eng, m);
        return NIXL_ERR_BACKEND;
    }
    m->pub[0] = _NIXL_UCX_PUB_MAGIC;
    m->pub[1] = (unsigned char)_NIXL_UCX_WIRE_VERSION;
    if (rkey) {
        memcpy(m->pub + _NIXL_UCX_PUB_HDR, rkey, rkey_len);
        ucp_rkey_buffer_release(rkey);
    }
    m->vram = mem == NIXL_VRAM;
    m->next = eng->mds;
    if (eng->mds) eng->mds->prev = m;
    eng->mds = m;
    *md = m;
    return NIXL_SUCCESS;
}

static void _nixl_ucx_deregister_mem(void *engine, void *md) {
    _nixl_ucx_engine_t *eng = (_nixl_ucx_engine_t *)engine;
    _nixl_ucx_md_t *m = (_nixl_ucx_md_t *)md;
    ucs_status_t st;
    /* refused from now on: the checked path finds it no more */
    _nixl_ucx_index_remove(eng, m);
    if (!eng->destroying) _nixl_ucx_wait_region_idle(eng, m);
    else if (m->busy) {
        _nixl_ucx_tio_t *t;
        for (t = eng->tios; t; t = t->next)
            if (t->md == m) t->md = NULL;
    }
    st = ucp_mem_unmap(eng->ctx, m->memh);
    if (st != UCS_OK)
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "deregister_mem: ucp_mem_unmap(%p, %zu) failed: %s",
                         (void *)m->addr, m->len, ucs_status_string(st));
    if (m->prev) m->prev->next = m->next;
    else eng->mds = m->next;
    if (m->next) m->next->prev = m->prev;
    _nixl_ucx_free(eng, m->pub);
    _nixl_ucx_free(eng, m);
}

static nixl_status_t _nixl_ucx_get_public_data(void *engine, void *md, const void **data, size_t *len) {
    _nixl_ucx_md_t *m = (_nixl_ucx_md_t *)md;
    (void)engine;
    *data = m->pub;
    *len = m->pub_len;
    return NIXL_SUCCESS;
}

// >>peers' memory (vtable)

static nixl_status_t _nixl_ucx_make_rmd(_nixl_ucx_engine_t *eng, _nixl_ucx_peer_t *p, const nixl_desc_t *region,
                                        const void *pub, size_t len, void **rmd) {
    const unsigned char *b = (const unsigned char *)pub;
    _nixl_ucx_rmd_t *r;
    const char *why;
    unsigned i;
    nixl_status_t st;
    if (!b || len < _NIXL_UCX_PUB_HDR || b[0] != _NIXL_UCX_PUB_MAGIC || b[1] != _NIXL_UCX_WIRE_VERSION) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "load_remote_md(%s, %p+%zu): %zu bytes of public data are not "
                         "a UCX rkey of version %u", p->name, (void *)region->addr, region->len, len,
                         _NIXL_UCX_WIRE_VERSION);
        return NIXL_ERR_INVALID_PARAM;
    }
    st = _nixl_ucx_peer_connect(eng, p, "load_remote_md");
    if (st != NIXL_SUCCESS) return st;
    r = (_nixl_ucx_rmd_t *)_nixl_ucx_alloc(eng, sizeof *r);
    if (!r) return NIXL_ERR_BACKEND;
    r->peer = p;
    r->addr = region->addr;
    r->len = region->len;
    if (!p->rma) goto link; /* the checked path needs no key: none is unpacked */
    if (len == _NIXL_UCX_PUB_HDR) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "load_remote_md(%s, %p+%zu): the peer serves one-sided RMA but "
                         "sent no remote key", p->name, (void *)region->addr, region->len);
        _nixl_ucx_free(eng, r);
        return NIXL_ERR_INVALID_PARAM;
    }
    r->rkeys = (ucp_rkey_h *)_nixl_ucx_alloc(eng, eng->num_workers * sizeof *r->rkeys);
    if (!r->rkeys) {
        _nixl_ucx_free(eng, r);
        return NIXL_ERR_BACKEND;
    }
    why = _nixl_ucx_rkey_check(b + _NIXL_UCX_PUB_HDR, len - _NIXL_UCX_PUB_HDR,
                               eng->rkey_md_map | _nixl_ucx_addr_md_map(p->addrs[0], p->addr_lens[0]));
    if (why) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "load_remote_md(%s, %p+%zu): remote key refused: %s", p->name,
                         (void *)region->addr, region->len, why);
        _nixl_ucx_free(eng, r->rkeys);
        _nixl_ucx_free(eng, r);
        return NIXL_ERR_INVALID_PARAM;
    }
    for (i = 0; i < eng->num_workers; i++) {
        ucs_status_t us = ucp_ep_rkey_unpack(p->conns[i]->ep, b + _NIXL_UCX_PUB_HDR, &r->rkeys[i]);
        if (us != UCS_OK) {
            nixl_backend_log(eng->be, NIXL_LOG_ERROR, "load_remote_md(%s, %p+%zu): ucp_ep_rkey_unpack failed: %s",
                             p->name, (void *)region->addr, region->len, ucs_status_string(us));
            while (i--) ucp_rkey_destroy(r->rkeys[i]);
            _nixl_ucx_free(eng, r->rkeys);
            _nixl_ucx_free(eng, r);
            return NIXL_ERR_BACKEND;
        }
    }
link:
    r->next = p->rmds;
    if (p->rmds) p->rmds->prev = r;
    p->rmds = r;
    *rmd = r;
    return NIXL_SUCCESS;
}

static nixl_status_t _nixl_ucx_load_remote_md(void *engine, const char *remote, nixl_mem_t mem,
                                              const nixl_desc_t *region, const void *pub, size_t len, void **rmd) {
    _nixl_ucx_engine_t *eng = (_nixl_ucx_engine_t *)engine;
    _nixl_ucx_peer_t *p;
    (void)mem;
    for (p = eng->peers; p; p = p->next)
        if (strcmp(p->name, remote) == 0) break;
    if (!p) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "load_remote_md(%s): no connection info loaded", remote);
        return NIXL_ERR_NOT_FOUND;
    }
    return _nixl_ucx_make_rmd(eng, p, region, pub, len, rmd);
}

static nixl_status_t _nixl_ucx_load_local_md(void *engine, void *md, void **rmd) {
    _nixl_ucx_engine_t *eng = (_nixl_ucx_engine_t *)engine;
    _nixl_ucx_md_t *m = (_nixl_ucx_md_t *)md;
    nixl_desc_t region;
    if (!_nixl_ucx_self_peer(eng)) return NIXL_ERR_BACKEND;
    region.addr = m->addr;
    region.len = m->len;
    region.dev_id = 0;
    return _nixl_ucx_make_rmd(eng, eng->self_peer, &region, m->pub, m->pub_len, rmd);
}

static void _nixl_ucx_unload_md(void *engine, void *rmd) {
    _nixl_ucx_engine_t *eng = (_nixl_ucx_engine_t *)engine;
    _nixl_ucx_rmd_t *r = (_nixl_ucx_rmd_t *)rmd;
    unsigned i;
    for (i = 0; r->rkeys && i < eng->num_workers; i++) ucp_rkey_destroy(r->rkeys[i]);
    if (r->prev) r->prev->next = r->next;
    else r->peer->rmds = r->next;
    if (r->next) r->next->prev = r->prev;
    _nixl_ucx_free(eng, r->rkeys);
    _nixl_ucx_free(eng, r);
}

// >>connections (vtable)

static nixl_status_t _nixl_ucx_get_conn_info(void *engine, const void **info, size_t *len) {
    _nixl_ucx_engine_t *eng = (_nixl_ucx_engine_t *)engine;
    *info = eng->info;
    *len = eng->info_len;
    return NIXL_SUCCESS;
}

static nixl_status_t _nixl_ucx_load_remote_conn_info(void *engine, const char *remote, const void *info,
                                                     size_t len) {
    _nixl_ucx_engine_t *eng = (_nixl_ucx_engine_t *)engine;
    _nixl_ucx_peer_t *p;
    nixl_status_t st;
    for (p = eng->peers; p; p = p->next)
        if (strcmp(p->name, remote) == 0) break;
    if (p) {
        if (p->info_len == len && memcmp(p->info, info, len) == 0) return NIXL_SUCCESS;
        nixl_backend_log(eng->be, NIXL_LOG_ERROR,
                         "load_remote_conn_info(%s): differs from the loaded one (invalidate the peer first)",
                         remote);
        return NIXL_ERR_NOT_ALLOWED;
    }
    p = _nixl_ucx_peer_new(eng, remote, info, len);
    if (!p) return NIXL_ERR_BACKEND;
    st = _nixl_ucx_parse_info(eng, remote, p);
    if (st != NIXL_SUCCESS) {
        _nixl_ucx_free_peer(eng, p);
        return st;
    }
    p->next = eng->peers;
    eng->peers = p;
    _nixl_ucx_sess_forget(eng, remote, 0);
    eng->sess_work = 1; /* a HELLO of this peer may be waiting for its metadata */
    return NIXL_SUCCESS;
}

static nixl_status_t _nixl_ucx_connect(void *engine, const char *remote) {
    _nixl_ucx_engine_t *eng = (_nixl_ucx_engine_t *)engine;
    _nixl_ucx_peer_t *p = _nixl_ucx_peer_find(eng, remote);
    if (!p) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "connect(%s): no connection info loaded", remote);
        return NIXL_ERR_NOT_FOUND;
    }
    return _nixl_ucx_peer_connect(eng, p, "connect");
}

static nixl_status_t _nixl_ucx_disconnect(void *engine, const char *remote) {
    _nixl_ucx_engine_t *eng = (_nixl_ucx_engine_t *)engine;
    _nixl_ucx_peer_t **pp = &eng->peers, *p;
    unsigned i;
    while (*pp && strcmp((*pp)->name, remote) != 0) pp = &(*pp)->next;
    if (!*pp) return NIXL_ERR_NOT_FOUND;
    p = *pp;
    *pp = p->next;
    while (p->rmds) _nixl_ucx_unload_md(eng, p->rmds); /* the core did this already; be safe */
    _nixl_ucx_detach_reqs(eng, p);
    for (i = 0; i < eng->num_workers; i++) {
        if (!p->conns[i]) continue;
        /* a dead peer's endpoint closes now: UCX cancels what it still holds */
        if (p->failed) _nixl_ucx_conn_close_now(eng, p->conns[i]);
        else _nixl_ucx_conn_release(eng, p->conns[i]);
    }
    _nixl_ucx_free_peer(eng, p);
    return NIXL_SUCCESS;
}

// >>transfers (vtable)

static nixl_status_t _nixl_ucx_prep_xfer(void *engine, const nixl_xfer_args_t *args, void **handle) {
    _nixl_ucx_engine_t *eng = (_nixl_ucx_engine_t *)engine;
    _nixl_ucx_peer_t *p = _nixl_ucx_peer_find(eng, args->remote);
    _nixl_ucx_req_t *r;
    size_t i;
    nixl_status_t st;
    if (!p) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "prep_xfer(%s): peer not loaded", args->remote);
        return NIXL_ERR_NOT_FOUND;
    }
    st = _nixl_ucx_peer_connect(eng, p, "prep_xfer");
    if (st != NIXL_SUCCESS) return st;
    r = (_nixl_ucx_req_t *)_nixl_ucx_alloc(eng, sizeof *r);
    if (!r) return NIXL_ERR_BACKEND;
    r->eng = eng;
    r->ops = (_nixl_ucx_op_t *)_nixl_ucx_alloc(eng, (args->count ? args->count : 1) * sizeof *r->ops);
    if (!r->ops) {
        _nixl_ucx_free(eng, r);
        return NIXL_ERR_BACKEND;
    }
    r->peer = p;
    r->widx = eng->next_worker++ % eng->num_workers;
    r->conn = p->conns[r->widx];
    r->op = args->op;
    r->count = args->count;
    r->notif_hdr = _nixl_ucx_am_hdr_len(eng);
    r->am = !p->rma;
    if (r->am && _nixl_ucx_slot_take(eng, r) != NIXL_SUCCESS) {
        _nixl_ucx_free(eng, r->ops);
        _nixl_ucx_free(eng, r);
        return NIXL_ERR_BACKEND;
    }
    for (i = 0; i < args->count; i++) {
        const nixl_xfer_desc_t *d = &args->descs[i];
        const _nixl_ucx_rmd_t *rm = (const _nixl_ucx_rmd_t *)d->rmd;
        if (rm->peer != p) {
            nixl_backend_log(eng->be, NIXL_LOG_ERROR, "prep_xfer(%s): descriptor %zu belongs to peer %s",
                             args->remote, i, rm->peer->name);
            _nixl_ucx_slot_give(eng, r);
            _nixl_ucx_free(eng, r->ops);
            _nixl_ucx_free(eng, r);
            return NIXL_ERR_INVALID_PARAM;
        }
        r->ops[i].laddr = (void *)d->laddr;
        r->ops[i].raddr = (uint64_t)d->raddr;
        r->ops[i].len = d->len;
        r->ops[i].rkey = rm->rkeys ? rm->rkeys[r->widx] : NULL;
        r->ops[i].req = r;
        r->ops[i].vram = args->lmem == NIXL_VRAM;
        if (r->am) _nixl_ucx_dp_prep_op(eng, r, i, args->rmem == NIXL_VRAM);
    }
    if (args->has_notif && _nixl_ucx_req_notif_reserve(r, _NIXL_UCX_NOTIF_PREALLOC) != NIXL_SUCCESS) {
        _nixl_ucx_slot_give(eng, r);
        _nixl_ucx_free(eng, r->ops);
        _nixl_ucx_free(eng, r);
        return NIXL_ERR_BACKEND;
    }
    r->next = eng->reqs;
    if (eng->reqs) eng->reqs->prev = r;
    eng->reqs = r;
    *handle = r;
    return NIXL_SUCCESS;
}

/* Posts every descriptor; no allocation, no lookup (UCX's own request pool aside). */
static nixl_status_t _nixl_ucx_post_ops(_nixl_ucx_req_t *r) {
    ucp_request_param_t prm;
    ucp_ep_h ep = r->conn->ep;
    size_t i;
    memset(&prm, 0, sizeof prm); /* no callback: completion is observed by the flush */
    for (i = 0; i < r->count; i++) {
        const _nixl_ucx_op_t *o = &r->ops[i];
        ucs_status_ptr_t sp = r->op == NIXL_WRITE ? ucp_put_nbx(ep, o->laddr, o->len, o->raddr, o->rkey, &prm)
                                                  : ucp_get_nbx(ep, o->laddr, o->len, o->raddr, o->rkey, &prm);
        if (UCS_PTR_IS_ERR(sp)) {
            char what[64];
            snprintf(what, sizeof what, "%s(descriptor %zu, %zu bytes)", r->op == NIXL_WRITE ? "ucp_put_nbx" :
                     "ucp_get_nbx", i, o->len);
            return _nixl_ucx_req_error(r, what, UCS_PTR_STATUS(sp));
        }
        if (sp) ucp_request_free(sp); /* completes on its own; the flush tells us when */
    }
    return NIXL_SUCCESS;
}

static nixl_status_t _nixl_ucx_post_xfer(void *engine, void *handle, const void *notif, size_t notif_len,
                                         int has_notif) {
    _nixl_ucx_engine_t *eng = (_nixl_ucx_engine_t *)engine;
    _nixl_ucx_req_t *r = (_nixl_ucx_req_t *)handle;
    ucp_request_param_t prm;
    ucs_status_ptr_t sp;
    nixl_status_t st;
    if (r->state != _NIXL_UCX_REQ_IDLE && r->state != _NIXL_UCX_REQ_DONE) return NIXL_ERR_REPOST_ACTIVE;
    if (!r->peer || !r->conn || r->peer->failed) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "post_xfer: the peer %s is disconnected",
                         r->peer ? r->peer->name : "of this request");
        return NIXL_ERR_REMOTE_DISCONNECT;
    }
    r->send_notif = has_notif;
    if (has_notif) {
        if (notif_len > NIXL_UCX_MAX_NOTIF) {
            nixl_backend_log(eng->be, NIXL_LOG_ERROR, "post_xfer: notification of %zu bytes (max %u)", notif_len,
                             (unsigned)NIXL_UCX_MAX_NOTIF);
            return NIXL_ERR_INVALID_PARAM;
        }
        if (_nixl_ucx_req_notif_reserve(r, notif_len) != NIXL_SUCCESS) return NIXL_ERR_BACKEND;
        if (notif_len) memcpy(r->notif + r->notif_hdr, notif, notif_len);
        r->notif_len = r->notif_hdr + notif_len;
        _nixl_ucx_sess_ready(eng, r->conn, 1); /* a new HELLO if the last one went unanswered */
    }
    r->status = NIXL_IN_PROG;
    r->state = _NIXL_UCX_REQ_FLUSHING;
    if (r->am) return _nixl_ucx_dp_post(r);
    st = _nixl_ucx_post_ops(r);
    if (st != NIXL_SUCCESS) {
        /* what was posted still lands; the request ends here with the error */
        _nixl_ucx_req_finish(r, st);
        return st;
    }
    _nixl_ucx_cb_param(&prm, r);
    prm.cb.send = _nixl_ucx_flush_cb;
    sp = ucp_ep_flush_nbx(r->conn->ep, &prm);
    if (UCS_PTR_IS_ERR(sp)) {
        _nixl_ucx_req_finish(r, _nixl_ucx_req_error(r, "ucp_ep_flush_nbx", UCS_PTR_STATUS(sp)));
        return r->status;
    }
    if (sp) {
        _nixl_ucx_req_io_start(r, sp);
        return NIXL_IN_PROG;
    }
    if (!r->send_notif) {
        _nixl_ucx_req_finish(r, NIXL_SUCCESS);
        return NIXL_SUCCESS;
    }
    if (_nixl_ucx_sess_ready(eng, r->conn, 0) != 1 || eng->ready_head ||
        !_nixl_ucx_window_takes(eng, r->conn, r->notif_len)) {
        /* waits for the session, or the window, in progress(): behind those
           already waiting (in order) */
        _nixl_ucx_req_landed(r);
        return NIXL_IN_PROG;
    }
    return _nixl_ucx_req_send_notif(r);
}

static nixl_status_t _nixl_ucx_check_xfer(void *engine, void *handle) {
    _nixl_ucx_req_t *r = (_nixl_ucx_req_t *)handle;
    (void)engine;
    if (r->state == _NIXL_UCX_REQ_IDLE) return NIXL_ERR_NOT_POSTED;
    if (r->state == _NIXL_UCX_REQ_DONE) return r->status;
    return NIXL_IN_PROG;
}

static nixl_status_t _nixl_ucx_release_xfer(void *engine, void *handle) {
    _nixl_ucx_engine_t *eng = (_nixl_ucx_engine_t *)engine;
    _nixl_ucx_req_t *r = (_nixl_ucx_req_t *)handle;
    if (r->ucx_req || r->io_inflight) {
        /* UCX cannot abort sends/puts/gets in flight; the core retries later */
        nixl_backend_log(eng->be, NIXL_LOG_DEBUG, "release_xfer: request still in flight");
        return NIXL_ERR_REPOST_ACTIVE;
    }
    if (r->state == _NIXL_UCX_REQ_NOTIF_READY) _nixl_ucx_ready_remove(eng, r);
    _nixl_ucx_req_free(eng, r);
    return NIXL_SUCCESS;
}

// >>notifications (vtable)

static nixl_status_t _nixl_ucx_gen_notif(void *engine, const char *remote, const void *msg, size_t len) {
    _nixl_ucx_engine_t *eng = (_nixl_ucx_engine_t *)engine;
    _nixl_ucx_peer_t *p = _nixl_ucx_peer_find(eng, remote);
    size_t hl = _nixl_ucx_am_hdr_len(eng);
    unsigned char *buf;
    _nixl_ucx_conn_t *c;
    nixl_status_t st;
    if (!p) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "gen_notif(%s): no connection info loaded", remote);
        return NIXL_ERR_NOT_FOUND;
    }
    if (len > NIXL_UCX_MAX_NOTIF) {
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "gen_notif(%s): %zu bytes (max %u)", remote, len,
                         (unsigned)NIXL_UCX_MAX_NOTIF);
        return NIXL_ERR_INVALID_PARAM;
    }
    st = _nixl_ucx_peer_connect(eng, p, "gen_notif");
    if (st != NIXL_SUCCESS) return st;
    c = p->conns[0];
    if (c->held_bytes + hl + len > NIXL_UCX_NOTIF_WINDOW) {
        /* a window's worth already waits for this peer: the caller retries */
        nixl_backend_log(eng->be, NIXL_LOG_DEBUG, "gen_notif(%s): flow control: %zu bytes wait for the peer's "
                         "window; not queued", remote, c->held_bytes);
        _nixl_ucx_sess_ready(eng, c, 1);
        return NIXL_IN_PROG;
    }
    buf = (unsigned char *)_nixl_ucx_alloc(eng, hl + len);
    if (!buf) return NIXL_ERR_BACKEND;
    _nixl_ucx_am_hdr_write(eng, buf, _NIXL_UCX_AM_NOTIF);
    if (len) memcpy(buf + hl, msg, len);
    switch (c->held ? 0 : _nixl_ucx_sess_ready(eng, c, 1)) {
    case 1:
        if (!_nixl_ucx_window_takes(eng, c, hl + len)) goto hold;
        st = _nixl_ucx_send_notif_msg(eng, c, buf, hl + len);
        return st == NIXL_IN_PROG ? NIXL_SUCCESS : st;
    case 0: hold: { /* held until the peer accepts our session and its window takes it (in order) */
        _nixl_ucx_held_t *h = (_nixl_ucx_held_t *)_nixl_ucx_alloc(eng, sizeof *h);
        if (!h) break;
        h->buf = buf;
        h->len = hl + len;
        if (c->held_tail) c->held_tail->next = h;
        else c->held = h;
        c->held_tail = h;
        c->held_bytes += h->len;
        eng->sess_work = 1;
        return NIXL_SUCCESS;
    }
    default:
        nixl_backend_log(eng->be, NIXL_LOG_ERROR, "gen_notif(%s): the peer has not accepted our session", remote);
        _nixl_ucx_free(eng, buf);
        return NIXL_ERR_NOT_ALLOWED;
    }
    _nixl_ucx_free(eng, buf);
    return NIXL_ERR_BACKEND;
}

// >>progress

/* Reports failed peers to the core (it then unloads and disconnects them). */
static int _nixl_ucx_report_failed(_nixl_ucx_engine_t *eng) {
    _nixl_ucx_peer_t *p;
    int did = 0;
    if (!eng->peer_failed) return 0;
    eng->peer_failed = 0;
    for (p = eng->peers; p; p = p->next)
        if (p->failed && !p->down_reported) {
            p->down_reported = 1;
            nixl_backend_peer_down(eng->be, p->name);
            did = 1;
        }
    return did;
}

static nixl_status_t _nixl_ucx_progress(void *engine) {
    _nixl_ucx_engine_t *eng = (_nixl_ucx_engine_t *)engine;
    unsigned i;
    int did = 0, n;
    for (i = 0; i < eng->num_workers; i++)
        for (n = 0; n < _NIXL_UCX_PROGRESS_BUDGET && ucp_worker_progress(eng->workers[i].h); n++) did = 1;
    did |= _nixl_ucx_send_ready_notifs(eng);
    did |= _nixl_ucx_sessions_progress(eng);
    did |= _nixl_ucx_watch_peers(eng);
    did |= _nixl_ucx_reap_conns(eng);
    did |= _nixl_ucx_report_failed(eng);
    return did ? NIXL_IN_PROG : NIXL_SUCCESS;
}

// >>public

static const char *const _nixl_ucx_param_keys[] = {"num_workers", "tls", "data_path", "rndv_thresh",
                                                     "notif_unverified", "ucx.", NULL};

static nixl_backend_ops_t _nixl_ucx_ops;
static pthread_once_t _nixl_ucx_once = PTHREAD_ONCE_INIT;

/* Does this UCX handle CUDA memory? One throwaway context answers it. */
static int _nixl_ucx_probe_cuda(void) {
    ucp_params_t prm;
    ucp_context_h ctx;
    ucp_context_attr_t attr;
    int cuda = 0;
    memset(&prm, 0, sizeof prm);
    prm.field_mask = UCP_PARAM_FIELD_FEATURES;
    prm.features = UCP_FEATURE_RMA;
    if (ucp_init(&prm, NULL, &ctx) != UCS_OK) return 0;
    memset(&attr, 0, sizeof attr);
    attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
    if (ucp_context_query(ctx, &attr) == UCS_OK)
        cuda = (attr.memory_types & (1ull << UCS_MEMORY_TYPE_CUDA)) != 0;
    ucp_cleanup(ctx);
    return cuda;
}

static void _nixl_ucx_init_ops(void) {
    nixl_backend_ops_t *o = &_nixl_ucx_ops;
    o->name = "UCX";
    o->abi = NIXL_BACKEND_ABI;
    o->mem_mask = NIXL_MEM_BIT(NIXL_DRAM);
    if (_nixl_ucx_probe_cuda()) o->mem_mask |= NIXL_MEM_BIT(NIXL_VRAM);
    o->caps = NIXL_CAP_NOTIF | NIXL_CAP_LOCAL | NIXL_CAP_REMOTE;
    o->param_keys = _nixl_ucx_param_keys;
    o->create = _nixl_ucx_create;
    o->destroy = _nixl_ucx_destroy;
    o->register_mem = _nixl_ucx_register_mem;
    o->deregister_mem = _nixl_ucx_deregister_mem;
    o->get_public_data = _nixl_ucx_get_public_data;
    o->get_conn_info = _nixl_ucx_get_conn_info;
    o->load_remote_conn_info = _nixl_ucx_load_remote_conn_info;
    o->connect = _nixl_ucx_connect;
    o->disconnect = _nixl_ucx_disconnect;
    o->load_remote_md = _nixl_ucx_load_remote_md;
    o->load_local_md = _nixl_ucx_load_local_md;
    o->unload_md = _nixl_ucx_unload_md;
    o->prep_xfer = _nixl_ucx_prep_xfer;
    o->post_xfer = _nixl_ucx_post_xfer;
    o->check_xfer = _nixl_ucx_check_xfer;
    o->release_xfer = _nixl_ucx_release_xfer;
    o->estimate_cost = NULL;
    o->gen_notif = _nixl_ucx_gen_notif;
    o->progress = _nixl_ucx_progress;
}

NIXL_API const nixl_backend_ops_t *nixl_ucx_backend(void) {
    pthread_once(&_nixl_ucx_once, _nixl_ucx_init_ops);
    return &_nixl_ucx_ops;
}

#endif /* NIXL_IMPLEMENTATION && !NIXL_UCX_IMPLEMENTATION_DONE */
