/* nixl_verbs.h — the raw-verbs backend of nixl.h: libibverbs + librdmacm,
   RC queue pairs, one-sided RDMA READ/WRITE, an active-message notification
   channel over SEND/RECV.

   DO THIS
   -------
   In every file that uses it:
       #include "nixl_verbs.h"          (includes nixl.h)
   In exactly ONE C or C++ file, before the include:
       #define NIXL_IMPLEMENTATION
   That file gets the implementation of nixl.h and of this backend.
   Link: -libverbs -lrdmacm -lpthread -ldl
   (Debian: libibverbs-dev librdmacm-dev; at run time a provider such as
   ibverbs-providers, and rdma_cm kernel support.)

       nixl_backend_t *be;
       nixl_create_backend(agent, nixl_verbs_backend(), "qps_per_peer=4", &be);

   PARAMS ("key=value,key=value"; every key optional)
       devices=NAME[,NAME]  RDMA devices to use (e.g. "mlx5_0"); default: every
                            device with an active port. The first one (or the
                            one owning listen_addr) is the PRIMARY device.
       listen_addr=A.B.C.D  IPv4 address of the rdma_cm listener (default: the
                            IPv4 address of the primary device's netdev, taken
                            from its GID table).
       listen_port=N        port of the listener (default 0: kernel's choice).
       qps_per_peer=N       RC QPs per peer, 1..16 (default 2). Descriptors of
                            a request are striped round-robin over them.
       sq_depth=N           send-queue depth per QP, 16..32768 (default 256;
                            capped at the device's max_qp_wr).
       slice_size=N         bytes; larger descriptors are split into WRs of at
                            most this size, 4096..1 GiB (default 1 MiB).
       timeout=N            QP ACK timeout exponent, 4.096 us * 2^N, 1..31
                            (default 14, ~67 ms; a silent peer is detected
                            within ~(retry_cnt + 1) * 4.096 us * 2^N).
       notif_bufs=N         pre-posted receive buffers per connection for the
                            notification channel, 4..4096 (default 64).
       notif_buf_size=N     size of each, 64..1 MiB (default 4096). A
                            notification carries at most notif_buf_size - 8
                            bytes (of the smaller of the two peers' sizes).
       retry_cnt=N          transport retries before a silent peer fails the
                            connection, 0..7 (default 7; on Soft-RoCE (rxe),
                            which treats 7 as "retry forever", default 6).
       vram_path=P          how VRAM reaches the NIC: auto (default: dma-buf,
                            else peermem, else staging), or one of dmabuf,
                            peermem, staging to force it (a forced GPUDirect
                            path that is not there is NOT_SUPPORTED).
       stage_bufs=N         staging: bounce buffers per peer, 2..1024
                            (default 8), made on the first staged request.
       stage_size=N         staging: bytes per bounce buffer, 4096..256 MiB
                            (default 1 MiB); staged requests slice at it.
       max_unknown_peers=N  passive connections from peers whose metadata is
                            not loaded, 0..65536 (default 64; each costs QPs
                            and registered buffers); more are refused.
       notif_unverified=accept|drop
                            without an auth token, notifications over a
                            connection not tied to loaded metadata: drop
                            (default, logged) or accept on the peer's word.
   FLOW CONTROL: a notification is sent only with a credit (a receive
   buffer the peer posted). While the core's queue has no room for a
   sender's notifications (notif_queue_peer_bytes, notif_queue_bytes), the
   receiver keeps them in their buffers, in order, and returns no credit:
   the sender runs out and waits (requests with notifications stay
   IN_PROG) until the application drains with nixl_get_notifs. Nothing is
   dropped. gen_notif queues up to 4 MiB per peer waiting for credit, then
   returns IN_PROG (nothing queued: progress and retry).
   Fixed: rnr_retry 7 (never needed: credits), max_rd_atomic and
   max_dest_rd_atomic at the device maximum, a signaled WR every sq_depth/4
   WRs per QP (and the last of every request on each QP), ibv_poll_cq in
   batches of 32, inline SENDs up to 64 bytes where the device allows.

   REQUESTS
   --------
   prep resolves keys and addresses, slices, and lays the WRs out lane by
   lane (lane q of a request = QP q) in 32 bytes each; post turns them
   into ibv_send_wr chains in one small array of the engine (no lookup, no
   allocation) and posts them, as chains bounded by free send-queue slots;
   the rest goes out from progress as completions free slots (a request of
   100,000 descriptors is fine). Posts before the connection exists are
   queued. Releasing a request in flight aborts it (returns SUCCESS): its
   WRs already on the wire complete into records that no longer name it.

   CONNECTIONS
   -----------
   Connection info (in metadata) is the listener address as text,
   "A.B.C.D:PORT". Loading it does not connect; nixl_make_connection or the
   first transfer / notification to the peer does, asynchronously: the
   rdma_cm event channel is non-blocking and driven from progress, and posts
   made meanwhile are queued. The connecting side sends its agent name (a
   hash of it in the CM private data, the full name in the first message).
   IDENTITY: a connection speaks for that name only once PROVEN. Each side
   puts a fresh 16-byte nonce in its CM private data; with an auth token
   the acceptor's REP carries its HMAC over both nonces and both agents
   (checked by the connector before it sends anything) and the connector's
   first message carries its own (checked by the acceptor). Without a
   token, a connection claiming an agent whose metadata is loaded must come
   from the address in that metadata (refused at the connection request
   otherwise); one from an agent not loaded yet is proven when its metadata
   arrives and the address matches, and failed when it does not. Until
   proven, the accepting side sends nothing over it (posts and
   notifications to that peer wait) and drops its notifications;
   when two agents connect to each other at the same time, the connection
   started by the agent with the smaller name (strcmp) wins and the other
   side waits for it. An agent can transfer to itself (loopback): it
   connects to its own listener.

   MEMORY
   ------
   NIXL_DRAM: ibv_reg_mr (LOCAL_WRITE | REMOTE_READ | REMOTE_WRITE |
   RELAXED_ORDERING where supported) on every device used.
   NIXL_VRAM: the CUDA driver (libcuda.so.1, dlopen'ed; no build dependency;
   NIXL_CUDA_HEADERS checks our declarations against <cuda.h>) confirms the
   pointer is device memory of the descriptor's dev_id (cuPointerGetAttribute:
   a host pointer, another GPU, or a range past the allocation is
   INVALID_PARAM), sets CU_POINTER_ATTRIBUTE_SYNC_MEMOPS, and registers it by
   the first path that works:
     1. dma-buf: cuMemGetHandleForAddressRange over the allocation's
        page-aligned range -> ibv_reg_dmabuf_mr (support probed once per
        device);
     2. peermem: ibv_reg_mr on the device pointer when nvidia-peermem is
        loaded;
     3. staging: no MR on the GPU memory. Transfers whose LOCAL side is
        staged go through a peer's pinned bounce buffers (stage_bufs x
        stage_size, registered once): a WRITE copies device -> bounce on a
        stream of ours and posts the RDMA WRITE of slice i while slice i+1
        is copied; a READ lands in bounce buffers and each is copied to the
        device while the next READs run. The request completes (and a READ's
        notification goes) only after the last copy into the GPU; a WRITE's
        notification follows its last WRITE on QP 0. A peer's STAGED region
        cannot be the remote side (no rkey; its public data says so): prep
        refuses with NOT_SUPPORTED, and the transfer must start at that peer.
   Without a driver, VRAM registration is NOT_SUPPORTED with a log line;
   DRAM is unaffected. The path is logged at registration and returned by
   nixl_verbs_mem_path(). Copies go through nixl_verbs_copy_ops_t (the CUDA
   driver's by default; nixl_verbs_set_copy_ops installs another engine).
   Public data of a region: rkey + base address per device (little-endian).

   NOTIFICATIONS
   -------------
   Active messages {am_id u8, flags u8, credits u16, len u32} + payload over
   SEND/RECV on each connection's first QP, with credit-based flow control
   (a SEND never meets an empty receive queue: no RNR). A request's
   notification is sent only after all its data landed at the target:
   WRITEs on the first QP are ordered before the SEND by RC; completions of
   the other QPs (and of every READ) are awaited first. Messages larger than
   one buffer are REFUSED with NIXL_ERR_INVALID_PARAM (no fragmentation).
   A WRITE's notification whose request runs on QP 0 alone (small
   requests; a larger one once its other QPs completed) is linked into the
   same ibv_post_send chain as the request's last WRITEs, and its SEND's
   completion retires them: one doorbell (a system call on Soft-RoCE) and
   one completion per request instead of two. nixl_gen_notif is one SEND.
   The rdma_cm event channel (a system call to read even when empty) is
   read every 256th progress pass while idle, every pass while its events
   keep coming (connections being set up).

   THREADING
   ---------
   The backend runs no threads of its own; the core calls it under the
   agent's lock.

   ERRORS
   ------
   A failed work completion fails its request with the verbs status in the
   log (NIXL_ERR_REMOTE_DISCONNECT for retry-exceeded and remote errors,
   NIXL_ERR_BACKEND otherwise), fails the connection and reports the peer
   down (the core then invalidates its metadata). A peer that disconnects
   (rdma_cm DISCONNECTED, or its DISCONNECT message on a graceful close)
   turns its requests into NIXL_ERR_REMOTE_DISCONNECT.

   LIMITS
   ------
   NIXL_VERBS_MAX_DEVICES (default 8) devices. IPv4 only. Connections and
   transfers use the primary device; regions are registered on every device
   used and their public data lists each device, but striping one peer's
   traffic over several devices (multi-rail) is not implemented yet.
   A request holds at most 2^32-1 WRs after slicing.
   fork: a child must not use this backend if its parent used verbs before
   forking (librdmacm keeps the parent's device contexts; the kernel refuses
   their use from the child: EACCES). Fork before first use, or exec.
   The AM channel runs on QP 0 of each connection; a connection's CQ is its
   own (a peer's teardown never leaves stale completions in a shared CQ).
   VRAM: the dma-buf/peermem paths and the CUDA copy engine have not run on
   a real GPU yet (tests/test_gpu.c has the tests; they skip without one);
   the staging pipeline is tested on Soft-RoCE with host memory standing in
   for the GPU. Staged requests use one QP and one signaled WR per slice.

   FINDING YOUR WAY
   ----------------
   Sections ("// >>name"), in order. Shared with nixl_ucx.h, same names and
   order: constants, structs, helpers, ... (this backend's own machinery)
   ..., lifecycle (vtable), memory (vtable), peers' memory (vtable),
   connections (vtable), transfers (vtable), notifications (vtable),
   progress, public. Its own machinery: lists, requests state, connection
   teardown, active messages (the notification channel), posting, staging
   (VRAM through bounce buffers), completions, connection setup (rdma_cm,
   identity), devices, cuda (the staging copy engine).

   LICENSE: MIT (see nixl.h).
*/
#ifndef NIXL_VERBS_H
#define NIXL_VERBS_H

#include "nixl.h"

#ifndef NIXL_VERBS_MAX_DEVICES
#define NIXL_VERBS_MAX_DEVICES 8
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The verbs backend's vtable, for nixl_create_backend. Name "VERBS",
   memory DRAM and VRAM, caps NOTIF | LOCAL | REMOTE. Never fails (a
   static table; errors come from nixl_create_backend: NOT_SUPPORTED
   without an RDMA device, INVALID_PARAM for a bad param). Any thread. */
NIXL_API const nixl_backend_ops_t *nixl_verbs_backend(void);

/* How a VRAM region reaches the NIC (see MEMORY in the manual). */
typedef enum nixl_verbs_mem_path {
    NIXL_VERBS_PATH_NONE = 0,  /* the backend holds no region there */
    NIXL_VERBS_PATH_HOST,      /* DRAM: ibv_reg_mr */
    NIXL_VERBS_PATH_DMABUF,    /* VRAM: dma-buf, ibv_reg_dmabuf_mr */
    NIXL_VERBS_PATH_PEERMEM,   /* VRAM: ibv_reg_mr with nvidia-peermem */
    NIXL_VERBS_PATH_STAGING    /* VRAM: copied through pinned host buffers */
} nixl_verbs_mem_path_t;

/* The path of the region registered with `be` that holds addr;
   NIXL_VERBS_PATH_NONE when none does, or when be is NULL or not a VERBS
   backend (no error status: the answer is the path). Any thread. */
NIXL_API nixl_verbs_mem_path_t nixl_verbs_mem_path(nixl_backend_t *be, const void *addr);
/* "host", "dma-buf", "peermem", "staging"; "none" for NONE or an unknown
   value (never NULL). Pure: any thread. */
NIXL_API const char *nixl_verbs_mem_path_str(nixl_verbs_mem_path_t path);

/* The copy engine of the staging path (nixl_copy_ops_t in nixl.h, shared
   with the file backend). The default is the CUDA driver's (a stream per
   GPU, an event per bounce buffer). An inference runtime with its own copy
   engine, or a test with host memory standing in for a GPU, installs
   another with nixl_verbs_set_copy_ops before registering VRAM. */
typedef nixl_copy_ops_t nixl_verbs_copy_ops_t;

/* Installs `ops` (copied; ops->ctx must outlive the backend) for regions
   registered from now on. NULL restores the CUDA driver's. INVALID_PARAM if
   be is not a VERBS backend; NOT_ALLOWED while staged regions exist. Any
   thread (under the agent's lock). */
NIXL_API nixl_status_t nixl_verbs_set_copy_ops(nixl_backend_t *be, const nixl_verbs_copy_ops_t *ops);

#ifdef __cplusplus
}
#endif

#endif /* NIXL_VERBS_H */

/* ======================================================================== */
/* implementation                                                           */
/* ======================================================================== */
#if defined(NIXL_IMPLEMENTATION) && !defined(NIXL_VERBS_IMPLEMENTATION_DONE)
#define NIXL_VERBS_IMPLEMENTATION_DONE

#include "nixl.h" /* its implementation too, when the declarations came first */

#include <infiniband/verbs.h>
#include <pthread.h>
#include <rdma/rdma_cma.h>
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

// >>constants

#define _NIXL_VERBS_MAX_QPS 16
#define _NIXL_VERBS_POLL_BATCH 32
#define _NIXL_VERBS_CM_EVERY 256 /* progress passes between reads of an idle CM channel */
#define _NIXL_VERBS_INFO_MAX 64
#define _NIXL_VERBS_AM_HDR 8
#define _NIXL_VERBS_AM_BACKLOG (4u << 20) /* gen_notif bytes waiting for one peer's credit, at most */
#define _NIXL_VERBS_PDATA_LEN 40      /* a REQ's (56 at most through rdma_cm) */
#define _NIXL_VERBS_PDATA_ACC_LEN 72  /* a REP's: plus the acceptor's MAC */
#define _NIXL_VERBS_PDATA_MAGIC 0x4e56u /* "NV" */
#define _NIXL_VERBS_PDATA_VERSION 2
#define _NIXL_VERBS_NONCE 16
#define _NIXL_VERBS_MAC 32
#define _NIXL_VERBS_MAX_UNKNOWN 64    /* default: passive connections from peers not (yet) loaded */
#define _NIXL_VERBS_PROVE_US 5000000u /* with a token: a connector's HELLO proof arrives within this */
#define _NIXL_VERBS_REJ_TIEBREAK 1 /* reject reason: "I connect to you" */
#define _NIXL_VERBS_REJ_REFUSED 2  /* reject reason: refused */
#define _NIXL_VERBS_PUB_VERSION 1
#define _NIXL_VERBS_PUB_STAGED 2 /* {2, 0}: staged VRAM, no rkey */
#define _NIXL_VERBS_RESOLVE_MS 2000
#define _NIXL_VERBS_WAIT_PASSIVE_US 5000000u /* retry if the winner never connects */
#define _NIXL_VERBS_CLOSE_WAIT_US 100000u    /* graceful close: wait for DISCONNECT's completion */

/* wr_id encoding: the CQ belongs to one connection, so an index is enough */
#define _NIXL_VERBS_WRID_SEND 0u
#define _NIXL_VERBS_WRID_RECV 1u

/* active-message ids (the handler table is indexed by them) */
enum {
    _NIXL_VERBS_AM_HELLO = 1,     /* payload: the sender's agent name */
    _NIXL_VERBS_AM_NOTIF = 2,     /* payload: a notification */
    _NIXL_VERBS_AM_CREDIT = 3,    /* no payload: returns credits in the header */
    _NIXL_VERBS_AM_DISCONNECT = 4, /* graceful close */
    _NIXL_VERBS_AM_COUNT = 5
};

enum { _NIXL_VERBS_CONN_CONNECTING = 0, _NIXL_VERBS_CONN_UP = 1, _NIXL_VERBS_CONN_FAILED = 2 };
enum { _NIXL_VERBS_NOTIF_NONE = 0, _NIXL_VERBS_NOTIF_WAITING, _NIXL_VERBS_NOTIF_QUEUED,
       _NIXL_VERBS_NOTIF_POSTED, _NIXL_VERBS_NOTIF_DONE };

// >>structs

struct _nixl_verbs_engine;
struct _nixl_verbs_peer;
struct _nixl_verbs_conn;
struct _nixl_verbs_req;

typedef struct _nixl_verbs_dev {
    struct ibv_context *ctx; /* owned by librdmacm (rdma_get_devices) */
    struct ibv_pd *pd;
    struct ibv_device_attr attr;
    uint8_t port;
    uint32_t max_msg_sz;
    char name[64];
    struct sockaddr_in addr; /* IPv4 of its netdev */
    int has_addr;
    int dmabuf_probed, dmabuf_ok;
} _nixl_verbs_dev_t;

typedef struct _nixl_verbs_md {
    struct _nixl_verbs_md *prev, *next;
    nixl_mem_t mem;
    uintptr_t addr;
    size_t len;
    struct ibv_mr *mr[NIXL_VERBS_MAX_DEVICES]; /* none when staged */
    int path;  /* nixl_verbs_mem_path_t */
    int gpu;   /* VRAM: device ordinal */
    unsigned char pub[2 + 12 * NIXL_VERBS_MAX_DEVICES];
    size_t pub_len;
} _nixl_verbs_md_t;

typedef struct _nixl_verbs_rmd {
    struct _nixl_verbs_rmd *prev, *next;
    uintptr_t addr; /* region start as the peer sees it */
    size_t len;
    uint64_t base;  /* address to use in WRs for `addr` (primary device) */
    uint32_t rkey;
    int staged;     /* the peer's NIC cannot reach it (staged VRAM): no rkey */
} _nixl_verbs_rmd_t;

/* one outstanding signaled send WR: what its completion retires */
typedef struct _nixl_verbs_rec {
    struct _nixl_verbs_req *req; /* NULL: none, or its request was released */
    uint32_t nwr;                /* WRs retired (unsignaled ones before it + itself) */
    int32_t slot;                /* AM send buffer to free, -1 for data */
    int32_t stage;               /* staging: bounce buffer of the WR, -1 none */
    uint8_t last;                /* last data WR of req's lane `lane` */
    uint8_t lane;                /* the request's lane (QP index within the request) */
    uint8_t notif;               /* req's notification SEND */
} _nixl_verbs_rec_t;

typedef struct _nixl_verbs_qp {
    struct _nixl_verbs_conn *conn;
    int index;
    struct rdma_cm_id *id;
    struct ibv_qp *qp;
    int established;
    uint32_t sq_free; /* free send-queue slots */
    uint32_t unsig;   /* unsignaled WRs posted since the last signaled one */
    _nixl_verbs_rec_t *ring; /* FIFO of signaled WRs, capacity sq_depth */
    uint32_t head, count;
} _nixl_verbs_qp_t;

typedef struct _nixl_verbs_am {
    struct _nixl_verbs_am *next;
    const unsigned char *data;
    uint32_t len;
    uint8_t id;
    struct _nixl_verbs_req *req; /* a request's notification (embedded node) */
} _nixl_verbs_am_t;

typedef struct _nixl_verbs_conn {
    struct _nixl_verbs_engine *eng;
    struct _nixl_verbs_peer *peer;
    struct _nixl_verbs_conn *reap_next;
    int doomed;
    int passive;
    int state;
    uint32_t nonce;
    /* who is at the other end: nonces of the connector (a) and acceptor (p);
       proven once the peer showed it is who it claims (the token's MAC, or
       without a token: its source address is the one in its metadata) */
    unsigned char nonce_a[_NIXL_VERBS_NONCE], nonce_p[_NIXL_VERBS_NONCE];
    int proven;
    uint64_t up_at;
    /* flow control: received frames held (not re-posted, their credit not
       returned) while the core's queue has no room for the sender's
       notifications; in arrival order */
    uint32_t *held;        /* rx_count slots, a ring: slot << 0, byte_len in held_len */
    uint32_t *held_len;
    uint32_t held_head, held_n;
    struct in_addr from; /* passive: the connector's source address */
    int nqp, nqp_est;
    _nixl_verbs_qp_t qps[_NIXL_VERBS_MAX_QPS];
    _nixl_verbs_dev_t *dev;
    struct ibv_cq *cq;
    /* notification channel */
    unsigned char *buf; /* rx_count receive buffers, then tx_count send buffers */
    struct ibv_mr *buf_mr;
    uint32_t rx_count, tx_count, buf_size;
    uint32_t *tx_free; /* stack of free send-buffer slots */
    uint32_t tx_free_n;
    uint32_t peer_rx_count, peer_buf_size;
    uint32_t tx_credits, rx_pending;
    uint32_t max_inline;
    uint8_t resp_res, init_depth; /* RDMA read resources */
} _nixl_verbs_conn_t;

typedef struct _nixl_verbs_peer {
    struct _nixl_verbs_peer *prev, *next;
    char *name; /* NULL until known (a passive connection before HELLO) */
    uint64_t hash;
    int loaded;       /* the core gave us its conn info (it will call disconnect) */
    int is_self;      /* loopback: our own listener */
    int self_passive; /* the accepting half of a loopback connection */
    struct sockaddr_in addr;
    int has_addr;
    _nixl_verbs_conn_t *conn;
    int want_connect;
    int wait_passive; /* lost the tie-break: the peer connects to us */
    uint64_t wait_since;
    struct _nixl_verbs_req *bl_head, *bl_tail; /* posted, not fully on the wire */
    _nixl_verbs_am_t *am_head, *am_tail;       /* messages waiting to be sent */
    size_t am_bytes;                           /* their bytes (gen_notif stops at _NIXL_VERBS_AM_BACKLOG) */
    struct _nixl_verbs_stage *stage;           /* bounce buffers, made on first staged request */
} _nixl_verbs_peer_t;

typedef struct _nixl_verbs_req {
    struct _nixl_verbs_req *prev, *next; /* engine list */
    struct _nixl_verbs_req *bl_prev, *bl_next;
    int in_backlog;
    _nixl_verbs_peer_t *peer; /* NULL once the peer was disconnected */
    nixl_xfer_op_t op;
    struct _nixl_verbs_cwr *cw; /* nwr WRs, lane by lane */
    uint32_t nwr;
    int host_src; /* a WRITE from host memory: small WRs may go inline (never from GPU memory) */
    int nqp; /* lanes: lane q runs on the connection's QP q % its QP count */
    uint32_t qstart[_NIXL_VERBS_MAX_QPS], qcount[_NIXL_VERBS_MAX_QPS], qposted[_NIXL_VERBS_MAX_QPS];
    uint32_t qdone;   /* bit q: the last data WR of lane q completed */
    uint32_t qmask;   /* bits of the lanes the request uses */
    int active;
    nixl_status_t status;
    unsigned char *notif;
    uint32_t notif_cap;
    int notif_state;
    _nixl_verbs_am_t am;
    /* staging (a local descriptor in staged VRAM): every WR goes on lane 0,
       one at a time, through a bounce buffer when swr[k].dptr is set */
    struct _nixl_verbs_swr *swr;
    uint32_t snext; /* next WR to start */
    uint32_t sdone; /* WRs finished (data placed, copies included) */
} _nixl_verbs_req_t;

/* One RDMA WR of a request as prep resolved it (32 bytes, against 144 for
   an ibv_send_wr and its SGE): post builds the ibv_send_wr chain from these
   in the engine's small WR array, which stays in cache, instead of walking
   (and prep writing) megabytes of WRs for a large request. */
typedef struct _nixl_verbs_cwr {
    uint64_t laddr, raddr; /* local address, remote address as the peer's NIC sees it */
    uint32_t len, lkey, rkey, pad;
} _nixl_verbs_cwr_t;

/* a staged request's WR: where its bytes live on the GPU */
typedef struct _nixl_verbs_swr {
    uintptr_t dptr; /* 0: host memory, no bounce buffer */
    int gpu;
} _nixl_verbs_swr_t;

enum { _NIXL_VERBS_SLOT_FREE = 0,
       _NIXL_VERBS_SLOT_COPY_IN,  /* WRITE: device -> bounce copy running */
       _NIXL_VERBS_SLOT_READY,    /* WRITE: copied, waits for a send-queue slot */
       _NIXL_VERBS_SLOT_WIRE,     /* RDMA WR from/into the bounce buffer posted */
       _NIXL_VERBS_SLOT_COPY_OUT  /* READ: bounce -> device copy running */ };

typedef struct _nixl_verbs_slot {
    int state;
    _nixl_verbs_req_t *req; /* NULL: orphaned (request failed or released) */
    uint32_t wr;            /* index of the WR in req */
    void *ev;
    int ev_gpu;             /* device the event was made for, -1 none */
} _nixl_verbs_slot_t;

/* A peer's bounce buffers: count x size bytes, registered on the primary
   device and pinned for the copy engine. */
typedef struct _nixl_verbs_stage {
    unsigned char *buf;
    struct ibv_mr *mr;
    int pinned, gpu; /* pinned for copies with GPU gpu */
    uint32_t count, size, nfree;
    uint32_t *free_stack;
    _nixl_verbs_slot_t *slots;
    uint64_t copies, overlapped; /* copies started; of them, with RDMA in flight */
} _nixl_verbs_stage_t;


typedef struct _nixl_verbs_engine {
    nixl_backend_t *be;
    uint32_t cm_wait; /* progress calls before the CM channel is read again */
    char *name;
    uint64_t hash;
    /* params */
    uint32_t nqp, sq_depth, slice, timeout, notif_bufs, notif_buf_size, sig_every, retry_cnt;
    uint16_t listen_port;
    /* devices */
    struct ibv_context **ctx_list;
    int ndev;
    _nixl_verbs_dev_t devs[NIXL_VERBS_MAX_DEVICES];
    struct rdma_event_channel *ch;
    struct rdma_cm_id *listen_id;
    struct sockaddr_in listen_addr;
    char info[_NIXL_VERBS_INFO_MAX];
    size_t info_len;
    /* objects */
    _nixl_verbs_peer_t *peers;
    _nixl_verbs_peer_t *self;
    _nixl_verbs_req_t *reqs;
    _nixl_verbs_md_t *mds;
    _nixl_verbs_rmd_t *rmds;
    _nixl_verbs_conn_t *reap;
    uint32_t nonce_ctr;
    /* the chain being posted (at most sq_depth WRs): built from a request's
       compact WRs right before ibv_post_send, which copies it */
    struct ibv_send_wr *wrs;
    struct ibv_sge *sges;
    /* VRAM: the CUDA driver (loaded on first VRAM registration), the copy
       engine of the staging path (the driver's unless replaced) */
    int vram_path; /* nixl_verbs_mem_path_t to force, NONE: the best one */
    uint32_t stage_bufs, stage_size;
    _nixl_cuda_t cuda;
    nixl_verbs_copy_ops_t copy;
    int copy_custom; /* copy ops installed by the user */
    uint32_t nstaged; /* staged regions registered now */
    /* identity */
    uint32_t max_unknown;  /* passive connections from peers whose metadata is not loaded */
    int notif_unverified;  /* deliver notifications of unproven connections (no token) */
    unsigned long dropped_notifs;
} _nixl_verbs_engine_t;

// >>helpers


/* FNV-1a: identifies an agent in the 56-byte CM private data */
static uint64_t _nixl_verbs_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    while (*s) {
        h ^= (unsigned char)*s++;
        h *= 1099511628211ull;
    }
    return h;
}

static char *_nixl_verbs_strdup(_nixl_verbs_engine_t *e, const char *s, size_t n) {
    char *p = (char *)nixl_backend_alloc(e->be, n + 1);
    if (p) memcpy(p, s, n); /* zeroed: terminated */
    return p;
}

static const char *_nixl_verbs_errno_hint(int err) {
    if (err == ENOMEM) return " (locked-memory limit? see ulimit -l)";
    if (err == EFAULT) return " (address not mapped?)";
    if (err == EACCES || err == EPERM) return " (permission: memory not writable, or no access to the device)";
    return "";
}

static const char *_nixl_verbs_ip(const struct sockaddr_in *a, char *buf, size_t cap) {
    if (!inet_ntop(AF_INET, &a->sin_addr, buf, (socklen_t)cap)) snprintf(buf, cap, "?");
    return buf;
}

/* "A.B.C.D:PORT" -> sockaddr; bounds-checked: it comes from a peer */
static int _nixl_verbs_parse_addr(const void *info, size_t len, struct sockaddr_in *out) {
    char buf[_NIXL_VERBS_INFO_MAX];
    char *colon, *end;
    unsigned long port;
    if (len == 0 || len >= sizeof buf) return -1;
    memcpy(buf, info, len);
    buf[len] = 0;
    if (strlen(buf) != len) return -1;
    colon = strrchr(buf, ':');
    if (!colon || colon[1] == 0) return -1;
    *colon = 0;
    errno = 0;
    port = strtoul(colon + 1, &end, 10);
    if (errno || *end || port == 0 || port > 65535) return -1;
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, buf, &out->sin_addr) != 1) return -1;
    return 0;
}

/* Deregisters every MR of a region (last device first) and forgets them. */
static void _nixl_verbs_md_drop_mrs(_nixl_verbs_engine_t *e, _nixl_verbs_md_t *m) {
    int d;
    for (d = NIXL_VERBS_MAX_DEVICES - 1; d >= 0; d--) {
        if (m->mr[d] && ibv_dereg_mr(m->mr[d]))
            nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: ibv_dereg_mr(%p) failed: %s", (void *)m->addr,
                             strerror(errno));
        m->mr[d] = NULL;
    }
}

// >>lists

static void _nixl_verbs_bl_add(_nixl_verbs_peer_t *p, _nixl_verbs_req_t *r) {
    if (r->in_backlog) return;
    r->in_backlog = 1;
    r->bl_next = NULL;
    r->bl_prev = p->bl_tail;
    if (p->bl_tail) p->bl_tail->bl_next = r; else p->bl_head = r;
    p->bl_tail = r;
}

static void _nixl_verbs_bl_remove(_nixl_verbs_peer_t *p, _nixl_verbs_req_t *r) {
    if (!r->in_backlog) return;
    if (r->bl_prev) r->bl_prev->bl_next = r->bl_next; else p->bl_head = r->bl_next;
    if (r->bl_next) r->bl_next->bl_prev = r->bl_prev; else p->bl_tail = r->bl_prev;
    r->bl_prev = r->bl_next = NULL;
    r->in_backlog = 0;
}

static void _nixl_verbs_am_push(_nixl_verbs_peer_t *p, _nixl_verbs_am_t *m) {
    m->next = NULL;
    if (p->am_tail) p->am_tail->next = m; else p->am_head = m;
    p->am_tail = m;
    p->am_bytes += m->len;
}

static _nixl_verbs_am_t *_nixl_verbs_am_pop(_nixl_verbs_peer_t *p) {
    _nixl_verbs_am_t *m = p->am_head;
    if (!m) return NULL;
    p->am_head = m->next;
    if (!p->am_head) p->am_tail = NULL;
    m->next = NULL;
    p->am_bytes -= m->len;
    return m;
}

static void _nixl_verbs_am_unlink(_nixl_verbs_peer_t *p, _nixl_verbs_am_t *m) {
    _nixl_verbs_am_t *prev = NULL, *cur = p->am_head;
    while (cur && cur != m) {
        prev = cur;
        cur = cur->next;
    }
    if (!cur) return;
    if (prev) prev->next = m->next; else p->am_head = m->next;
    if (p->am_tail == m) p->am_tail = prev;
    m->next = NULL;
    p->am_bytes -= m->len;
}

/* Frees a queued message (gen_notif copies) or detaches a request's own. */
static void _nixl_verbs_am_discard(_nixl_verbs_engine_t *e, _nixl_verbs_am_t *m) {
    if (!m->req) nixl_backend_free(e->be, m);
}

// >>requests state

static void _nixl_verbs_stage_orphan(_nixl_verbs_peer_t *p, _nixl_verbs_req_t *r);
static void _nixl_verbs_stage_reset(_nixl_verbs_peer_t *p);
static void _nixl_verbs_stage_destroy(_nixl_verbs_engine_t *e, struct _nixl_verbs_stage *st);
static void _nixl_verbs_req_free(_nixl_verbs_engine_t *e, _nixl_verbs_req_t *r);

static void _nixl_verbs_req_finish(_nixl_verbs_req_t *r, nixl_status_t st) {
    if (!r->active) return;
    r->status = st;
    r->active = 0;
    if (r->peer) _nixl_verbs_bl_remove(r->peer, r);
    if (r->peer && r->swr) _nixl_verbs_stage_orphan(r->peer, r);
}

static void _nixl_verbs_flush_am(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c);

static int _nixl_verbs_req_all_posted(const _nixl_verbs_req_t *r) {
    int q;
    for (q = 0; q < r->nqp; q++)
        if (r->qposted[q] < r->qcount[q]) return 0;
    return 1;
}

/* Moves a request forward after posts or completions: queues its
   notification once the data is known to land first, completes it when
   everything is done. */
static void _nixl_verbs_req_advance(_nixl_verbs_engine_t *e, _nixl_verbs_req_t *r) {
    if (!r->active || r->status != NIXL_IN_PROG || !r->peer) return;
    if (r->notif_state == _NIXL_VERBS_NOTIF_WAITING && _nixl_verbs_req_all_posted(r)) {
        /* WRITEs on QP 0 are placed before a later SEND on QP 0 (RC order);
           other QPs, and READs anywhere, must have completed. */
        uint32_t need = r->qmask;
        if (r->op == NIXL_WRITE) need &= ~1u;
        if ((r->qdone & need) == need) {
            r->notif_state = _NIXL_VERBS_NOTIF_QUEUED;
            _nixl_verbs_am_push(r->peer, &r->am);
            if (r->peer->conn && r->peer->conn->state == _NIXL_VERBS_CONN_UP)
                _nixl_verbs_flush_am(e, r->peer->conn);
            if (!r->active) return;
        }
    }
    if ((r->qdone & r->qmask) == r->qmask &&
        (r->notif_state == _NIXL_VERBS_NOTIF_NONE || r->notif_state == _NIXL_VERBS_NOTIF_DONE))
        _nixl_verbs_req_finish(r, NIXL_SUCCESS);
}

// >>connection teardown

static void _nixl_verbs_peer_fail_reqs(_nixl_verbs_engine_t *e, _nixl_verbs_peer_t *p, nixl_status_t st) {
    _nixl_verbs_req_t *r;
    _nixl_verbs_am_t *m;
    for (r = e->reqs; r; r = r->next)
        if (r->peer == p && r->active) {
            if (r->notif_state == _NIXL_VERBS_NOTIF_QUEUED) _nixl_verbs_am_unlink(p, &r->am);
            _nixl_verbs_req_finish(r, st);
        }
    while ((m = _nixl_verbs_am_pop(p)) != NULL) _nixl_verbs_am_discard(e, m);
    _nixl_verbs_stage_reset(p); /* the connection's WRs will not complete */
}

/* Releases every OS resource of a connection, in reverse order of creation.
   Never called while its CQ or one of its CM events is being handled. */
static void _nixl_verbs_conn_destroy(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c) {
    int q;
    for (q = c->nqp - 1; q >= 0; q--) {
        _nixl_verbs_qp_t *qp = &c->qps[q];
        if (qp->id) {
            if (qp->established) rdma_disconnect(qp->id);
            if (qp->id->qp) rdma_destroy_qp(qp->id);
            rdma_destroy_id(qp->id);
        }
        if (qp->ring) nixl_backend_free(e->be, qp->ring);
    }
    if (c->cq) ibv_destroy_cq(c->cq);
    if (c->buf_mr) ibv_dereg_mr(c->buf_mr);
    if (c->buf) nixl_backend_free(e->be, c->buf);
    nixl_backend_free(e->be, c->held);
    if (c->tx_free) nixl_backend_free(e->be, c->tx_free);
    nixl_backend_free(e->be, c);
}

static void _nixl_verbs_peer_unlink(_nixl_verbs_engine_t *e, _nixl_verbs_peer_t *p) {
    if (p->prev) p->prev->next = p->next; else e->peers = p->next;
    if (p->next) p->next->prev = p->prev;
    p->prev = p->next = NULL;
}

static void _nixl_verbs_peer_free(_nixl_verbs_engine_t *e, _nixl_verbs_peer_t *p) {
    _nixl_verbs_req_t *r;
    _nixl_verbs_peer_fail_reqs(e, p, NIXL_ERR_REMOTE_DISCONNECT);
    for (r = e->reqs; r; r = r->next)
        if (r->peer == p) r->peer = NULL;
    _nixl_verbs_peer_unlink(e, p);
    _nixl_verbs_stage_destroy(e, p->stage);
    if (p->name) nixl_backend_free(e->be, p->name);
    nixl_backend_free(e->be, p);
}

/* Schedules a connection for destruction at a safe point (end of progress,
   or the next disconnect/destroy): never while its CQ or CM events are being
   handled. The peer keeps its queues and forgets the connection. */
static void _nixl_verbs_conn_doom(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c) {
    if (c->doomed) return;
    c->doomed = 1;
    c->state = _NIXL_VERBS_CONN_FAILED;
    c->reap_next = e->reap;
    e->reap = c;
    if (c->peer && c->peer->conn == c) c->peer->conn = NULL;
}

static void _nixl_verbs_reap(_nixl_verbs_engine_t *e) {
    while (e->reap) {
        _nixl_verbs_conn_t *c = e->reap;
        e->reap = c->reap_next;
        _nixl_verbs_conn_destroy(e, c);
    }
}

/* A connection broke: its requests fail with `st`, and the peer is reported
   down (the core then invalidates it and calls disconnect). Peers the core
   does not know (a passive, unloaded one; the accepting half of loopback)
   are forgotten right away; the loopback peer reconnects on its next use. */
static void _nixl_verbs_conn_fail_at(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, nixl_status_t st,
                                     const char *why, int level) {
    _nixl_verbs_peer_t *p = c->peer;
    if (c->state == _NIXL_VERBS_CONN_FAILED) return;
    c->state = _NIXL_VERBS_CONN_FAILED;
    if (p) {
        nixl_backend_log(e->be, p->self_passive || !p->loaded ? NIXL_LOG_INFO : level,
                         "verbs: connection to %s failed: %s", p->name ? p->name : "(unnamed peer)", why);
        _nixl_verbs_peer_fail_reqs(e, p, st);
    }
    if (!p || p->is_self) {
        _nixl_verbs_conn_doom(e, c);
        if (p) p->want_connect = 0;
    } else if (p->self_passive || !p->loaded) {
        _nixl_verbs_conn_doom(e, c);
        _nixl_verbs_peer_free(e, p);
    } else {
        nixl_backend_peer_down(e->be, p->name);
    }
}

static void _nixl_verbs_conn_fail(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, nixl_status_t st,
                                  const char *why) {
    _nixl_verbs_conn_fail_at(e, c, st, why, NIXL_LOG_ERROR);
}

// >>active messages

/* The completion record of a signaled WR about to be posted on qp: it
   retires the unsignaled WRs before it too. */
static _nixl_verbs_rec_t *_nixl_verbs_rec_push(_nixl_verbs_engine_t *e, _nixl_verbs_qp_t *qp, _nixl_verbs_req_t *r) {
    _nixl_verbs_rec_t *rec = &qp->ring[(qp->head + qp->count) % e->sq_depth];
    qp->count++;
    rec->req = r;
    rec->nwr = qp->unsig + 1;
    rec->slot = -1;
    rec->stage = -1;
    rec->last = 0;
    rec->lane = 0;
    rec->notif = 0;
    qp->unsig = 0;
    return rec;
}


/* Whether a message can go out on QP 0 now, with `wrs` send-queue slots
   free for it and the WRs posted with it. CREDIT may use the last credit;
   everything else leaves one so that credits can always be returned (no
   deadlock when both sides are full). */
static int _nixl_verbs_am_can_send(const _nixl_verbs_conn_t *c, uint8_t id, uint32_t wrs) {
    uint32_t need = id == _NIXL_VERBS_AM_CREDIT ? 1u : 2u;
    return c->state == _NIXL_VERBS_CONN_UP && c->tx_credits >= need && c->tx_free_n > 0 &&
           c->qps[0].sq_free >= wrs;
}

/* Writes a message into a free send buffer and fills the SEND WR for it
   (signaled; inline when small). Returns the buffer's slot; nothing is
   counted as sent until _nixl_verbs_am_sent. */
static uint32_t _nixl_verbs_am_frame(_nixl_verbs_conn_t *c, uint8_t id, const unsigned char *data, uint32_t len,
                                     struct ibv_send_wr *wr, struct ibv_sge *sge) {
    uint32_t slot = c->tx_free[--c->tx_free_n];
    unsigned char *p = c->buf + ((size_t)c->rx_count + slot) * c->buf_size;
    uint32_t credits = c->rx_pending > 0xffffu ? 0xffffu : c->rx_pending;
    p[0] = id;
    p[1] = 0;
    _nixl_put16(p + 2, (uint16_t)credits);
    _nixl_put32(p + 4, len);
    if (len) memcpy(p + _NIXL_VERBS_AM_HDR, data, len);
    memset(sge, 0, sizeof *sge);
    sge->addr = (uintptr_t)p;
    sge->length = _NIXL_VERBS_AM_HDR + len;
    sge->lkey = c->buf_mr->lkey;
    memset(wr, 0, sizeof *wr);
    wr->wr_id = (0u << 2) | _NIXL_VERBS_WRID_SEND;
    wr->sg_list = sge;
    wr->num_sge = 1;
    wr->opcode = IBV_WR_SEND;
    wr->send_flags = IBV_SEND_SIGNALED;
    if (sge->length <= c->max_inline) wr->send_flags |= IBV_SEND_INLINE;
    return slot;
}

/* The frame in `slot` was posted: the credits it carried are returned and
   its completion record (which frees the buffer) is queued. */
static _nixl_verbs_rec_t *_nixl_verbs_am_sent(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, uint32_t slot,
                                              _nixl_verbs_req_t *req) {
    const unsigned char *p = c->buf + ((size_t)c->rx_count + slot) * c->buf_size;
    _nixl_verbs_rec_t *rec;
    c->rx_pending -= _nixl_get16(p + 2);
    c->tx_credits--;
    c->qps[0].sq_free--;
    rec = _nixl_verbs_rec_push(e, &c->qps[0], req);
    rec->slot = (int32_t)slot;
    rec->notif = req ? 1 : 0;
    return rec;
}

/* Sends one message on QP 0 if a credit, a send buffer and a send slot are
   free. Returns 1 sent, 0 not now, -1 connection failed. */
static int _nixl_verbs_am_send(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, uint8_t id,
                               const unsigned char *data, uint32_t len, _nixl_verbs_req_t *req) {
    struct ibv_send_wr wr, *bad = NULL;
    struct ibv_sge sge;
    uint32_t slot;
    int rc;
    if (!_nixl_verbs_am_can_send(c, id, 1)) return 0;
    slot = _nixl_verbs_am_frame(c, id, data, len, &wr, &sge);
    rc = ibv_post_send(c->qps[0].qp, &wr, &bad);
    if (rc) {
        c->tx_free[c->tx_free_n++] = slot;
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: ibv_post_send(SEND, %u bytes) failed: %s",
                         (unsigned)sge.length, strerror(rc));
        _nixl_verbs_conn_fail(e, c, NIXL_ERR_BACKEND, "cannot post a SEND");
        return -1;
    }
    _nixl_verbs_am_sent(e, c, slot, req);
    return 1;
}

/* Completion records of r's WRs forget it (it was released, or failed
   while some of its WRs are still on the wire). */
static void _nixl_verbs_recs_forget(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, _nixl_verbs_req_t *r) {
    int q;
    uint32_t k;
    if (!c || !c->cq) return;
    for (q = 0; q < c->nqp; q++)
        for (k = 0; k < c->qps[q].count; k++) {
            _nixl_verbs_rec_t *rec = &c->qps[q].ring[(c->qps[q].head + k) % e->sq_depth];
            if (rec->req == r) rec->req = NULL;
        }
}

/* Sends queued messages in order while resources allow, then returns
   credits explicitly if none of those carried them. */
static void _nixl_verbs_flush_am(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c) {
    _nixl_verbs_peer_t *p = c->peer;
    while (p && p->am_head && c->state == _NIXL_VERBS_CONN_UP) {
        _nixl_verbs_am_t *m = p->am_head;
        int rc;
        if (_NIXL_VERBS_AM_HDR + m->len > c->peer_buf_size) {
            nixl_backend_log(e->be, NIXL_LOG_ERROR,
                             "verbs: notification of %u bytes to %s dropped: larger than the peer's "
                             "buffers (notif_buf_size %u)", (unsigned)m->len, p->name ? p->name : "?",
                             (unsigned)c->peer_buf_size);
            _nixl_verbs_am_pop(p);
            if (m->req) {
                _nixl_verbs_recs_forget(e, c, m->req); /* a repost must not count these WRs */
                _nixl_verbs_req_finish(m->req, NIXL_ERR_INVALID_PARAM);
            }
            _nixl_verbs_am_discard(e, m);
            continue;
        }
        rc = _nixl_verbs_am_send(e, c, m->id, m->data, m->len, m->req);
        if (rc < 0) return;
        if (rc == 0) break; /* blocked: still return credits below, or both sides may wait forever */
        _nixl_verbs_am_pop(p);
        if (m->req) m->req->notif_state = _NIXL_VERBS_NOTIF_POSTED;
        _nixl_verbs_am_discard(e, m);
    }
    if (c->state == _NIXL_VERBS_CONN_UP && c->rx_pending >= c->rx_count / 2)
        _nixl_verbs_am_send(e, c, _NIXL_VERBS_AM_CREDIT, NULL, 0, NULL);
}

static int _nixl_verbs_post_recv(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, uint32_t slot) {
    struct ibv_recv_wr wr, *bad = NULL;
    struct ibv_sge sge;
    int rc;
    memset(&sge, 0, sizeof sge);
    sge.addr = (uintptr_t)(c->buf + (size_t)slot * c->buf_size);
    sge.length = c->buf_size;
    sge.lkey = c->buf_mr->lkey;
    memset(&wr, 0, sizeof wr);
    wr.wr_id = ((uint64_t)slot << 2) | _NIXL_VERBS_WRID_RECV;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    rc = ibv_post_recv(c->qps[0].qp, &wr, &bad);
    if (rc)
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: ibv_post_recv failed: %s", strerror(rc));
    return rc;
}

typedef void (*_nixl_verbs_am_handler_t)(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c,
                                         const unsigned char *data, uint32_t len);

/* The acceptor's MAC (in its REP) or the connector's (in its HELLO): over
   both nonces, who speaks, and the two agents. -1 without a token. */
#define _NIXL_VERBS_MAC_MSG (8 + 2 * _NIXL_VERBS_NONCE + 8 + 256)

/* What those MACs cover, in m; its length, 0 if the name is too long. */
static size_t _nixl_verbs_mac_msg(const _nixl_verbs_conn_t *c, int acceptor, const char *name, uint64_t other_hash,
                                  unsigned char m[_NIXL_VERBS_MAC_MSG]) {
    size_t nl = strlen(name), len = 0;
    if (nl > 255) return 0;
    memcpy(m, "NXVERBS", 7);
    m[7] = (unsigned char)(acceptor ? 'P' : 'A');
    len = 8;
    memcpy(m + len, c->nonce_a, _NIXL_VERBS_NONCE);
    memcpy(m + len + _NIXL_VERBS_NONCE, c->nonce_p, _NIXL_VERBS_NONCE);
    len += 2 * _NIXL_VERBS_NONCE;
    _nixl_put64(m + len, other_hash);
    len += 8;
    memcpy(m + len, name, nl);
    return len + nl;
}

static int _nixl_verbs_mac(_nixl_verbs_engine_t *e, const _nixl_verbs_conn_t *c, int acceptor, const char *name,
                           uint64_t other_hash, unsigned char mac[_NIXL_VERBS_MAC]) {
    unsigned char m[_NIXL_VERBS_MAC_MSG];
    size_t len = _nixl_verbs_mac_msg(c, acceptor, name, other_hash, m);
    return len && nixl_backend_auth_mac(e->be, m, len, mac) == NIXL_SUCCESS ? 0 : -1;
}

static int _nixl_verbs_mac_ok(_nixl_verbs_engine_t *e, const _nixl_verbs_conn_t *c, int acceptor, const char *name,
                              uint64_t other_hash, const unsigned char *mac) {
    unsigned char m[_NIXL_VERBS_MAC_MSG];
    size_t len = _nixl_verbs_mac_msg(c, acceptor, name, other_hash, m);
    return len && nixl_backend_auth_check(e->be, m, len, mac);
}

static void _nixl_verbs_pump_backlog(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c);
static void _nixl_verbs_flush_am(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c);

/* An accepted connection turned out not to be who it claimed: it goes, and
   the peer it claimed stays as it was (its metadata is not invalidated; its
   queued work waits for a connection of its own). */
static void _nixl_verbs_drop_impostor(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, const char *why) {
    _nixl_verbs_peer_t *p = c->peer;
    nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: connection claiming to be %s dropped: %s",
                     p->name ? p->name : "(unnamed peer)", why);
    c->state = _NIXL_VERBS_CONN_FAILED;
    if (p->conn == c) p->conn = NULL;
    _nixl_verbs_conn_doom(e, c);
    if (!p->loaded) _nixl_verbs_peer_free(e, p);
}

/* Without a token, a passive connection is proven when its peer is loaded
   and the connection comes from the address in that peer's metadata. */
static int _nixl_verbs_from_its_address(const _nixl_verbs_conn_t *c) {
    const _nixl_verbs_peer_t *p = c->peer;
    if (p->self_passive) /* loopback: from our own address */
        return c->eng->listen_addr.sin_addr.s_addr == c->from.s_addr ||
               c->eng->listen_addr.sin_addr.s_addr == htonl(INADDR_ANY);
    return p->loaded && p->has_addr && p->addr.sin_addr.s_addr == c->from.s_addr;
}

/* The connector's HELLO: its name (after its MAC, with a token). The
   connection speaks for that agent only once proven. */
static void _nixl_verbs_am_on_hello(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, const unsigned char *data,
                                    uint32_t len) {
    _nixl_verbs_peer_t *p = c->peer;
    int auth = nixl_backend_auth_on(e->be);
    const unsigned char *mac = auth ? data : NULL;
    if (auth && len > _NIXL_VERBS_MAC) {
        data += _NIXL_VERBS_MAC;
        len -= _NIXL_VERBS_MAC;
    } else if (auth) {
        len = 0;
    }
    if (!c->passive || len == 0 || len > 255 || memchr(data, 0, len)) {
        nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: malformed HELLO (%u bytes) ignored", (unsigned)len);
        return;
    }
    if (p->name) {
        if (strlen(p->name) != len || memcmp(p->name, data, len) != 0) {
            _nixl_verbs_conn_fail(e, c, NIXL_ERR_BACKEND, "HELLO names another agent than expected");
            return;
        }
    } else {
        p->name = _nixl_verbs_strdup(e, (const char *)data, len);
        if (!p->name) {
            _nixl_verbs_conn_fail(e, c, NIXL_ERR_BACKEND, "out of memory");
            return;
        }
        if (_nixl_verbs_hash(p->name) != p->hash) {
            _nixl_verbs_conn_fail(e, c, NIXL_ERR_BACKEND, "HELLO name does not match the connection's hash");
            return;
        }
    }
    if (auth && !_nixl_verbs_mac_ok(e, c, 0, p->name, e->hash, mac)) {
        _nixl_verbs_drop_impostor(e, c, "it did not prove it knows the auth token");
        return;
    }
    c->proven = auth || _nixl_verbs_from_its_address(c);
    if (!c->proven) return; /* proven later, if its metadata is loaded and matches */
    _nixl_verbs_pump_backlog(e, c);
    if (c->state == _NIXL_VERBS_CONN_UP) _nixl_verbs_flush_am(e, c);
}

static void _nixl_verbs_am_on_notif(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, const unsigned char *data,
                                    uint32_t len) {
    if (!c->peer->name) {
        nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: notification before HELLO dropped");
        return;
    }
    if (!c->proven && !e->notif_unverified) {
        unsigned long n = ++e->dropped_notifs;
        if ((n & (n - 1)) == 0) /* the 1st, 2nd, 4th, ...: a flood does not flood the log */
            nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: a notification from a connection calling itself %s that "
                             "never proved it (no auth token, and its metadata is not loaded): dropped (%lu so far)",
                             c->peer->name, n);
        return;
    }
    nixl_backend_notif(e->be, c->peer->name, data, len);
}

static void _nixl_verbs_am_on_credit(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, const unsigned char *data,
                                     uint32_t len) {
    (void)e; (void)c; (void)data; (void)len; /* the header carried them */
}

static void _nixl_verbs_am_on_disconnect(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c,
                                         const unsigned char *data, uint32_t len) {
    (void)data; (void)len;
    _nixl_verbs_conn_fail_at(e, c, NIXL_ERR_REMOTE_DISCONNECT, "peer closed the connection", NIXL_LOG_INFO);
}

static const _nixl_verbs_am_handler_t _nixl_verbs_am_table[_NIXL_VERBS_AM_COUNT] = {
    NULL, _nixl_verbs_am_on_hello, _nixl_verbs_am_on_notif, _nixl_verbs_am_on_credit,
    _nixl_verbs_am_on_disconnect};

/* Parses one received frame. Everything is checked: the peer may send
   garbage; a bad frame is dropped with a warning, never trusted. */
static void _nixl_verbs_am_recv(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, uint32_t slot,
                                uint32_t byte_len) {
    const unsigned char *p = c->buf + (size_t)slot * c->buf_size;
    uint32_t len, credits;
    uint8_t id;
    if (byte_len < _NIXL_VERBS_AM_HDR || byte_len > c->buf_size) {
        nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: runt frame of %u bytes dropped", (unsigned)byte_len);
        return;
    }
    id = p[0];
    credits = _nixl_get16(p + 2);
    len = _nixl_get32(p + 4);
    c->tx_credits += credits;
    if (c->tx_credits > c->peer_rx_count) c->tx_credits = c->peer_rx_count; /* never trust more */
    if (len > byte_len - _NIXL_VERBS_AM_HDR) {
        nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: frame claims %u bytes, carries %u: dropped",
                         (unsigned)len, (unsigned)(byte_len - _NIXL_VERBS_AM_HDR));
        return;
    }
    if (id >= _NIXL_VERBS_AM_COUNT || !_nixl_verbs_am_table[id]) {
        nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: unknown message id %u dropped", (unsigned)id);
        return;
    }
    _nixl_verbs_am_table[id](e, c, p + _NIXL_VERBS_AM_HDR, len);
}

// >>posting

static int _nixl_verbs_stage_pump(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, _nixl_verbs_req_t *r);

/* Can r's notification ride in the chain that posts the last n WRs of
   lane 0? Only a WRITE's (RC places WRITEs on QP 0 before a later SEND on
   QP 0), only when every other lane already completed, no other message is
   queued before it (notifications keep their order), and QP 0 has room for
   the n WRs and the SEND. Saves a doorbell (a system call on Soft-RoCE) and
   a completion on the latency path. */
static int _nixl_verbs_notif_rides(const _nixl_verbs_conn_t *c, const _nixl_verbs_req_t *r, uint32_t n) {
    uint32_t others = r->qmask & ~1u;
    int q;
    if (r->notif_state != _NIXL_VERBS_NOTIF_WAITING || r->op != NIXL_WRITE || c->peer->am_head ||
        (r->qdone & others) != others || _NIXL_VERBS_AM_HDR + r->am.len > c->peer_buf_size ||
        !_nixl_verbs_am_can_send(c, _NIXL_VERBS_AM_NOTIF, n + 1))
        return 0;
    for (q = 1; q < r->nqp; q++)
        if (r->qposted[q] < r->qcount[q]) return 0;
    return 1;
}

/* An ibv_send_wr (and its SGE) for r's compact WR c; next, wr_id and
   send_flags are the caller's. */
static void _nixl_verbs_wr_fill(struct ibv_send_wr *w, struct ibv_sge *sge, const _nixl_verbs_req_t *r,
                                const _nixl_verbs_cwr_t *c) {
    sge->addr = c->laddr;
    sge->length = c->len;
    sge->lkey = c->lkey;
    w->sg_list = sge;
    w->num_sge = 1;
    w->opcode = r->op == NIXL_WRITE ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ;
    w->imm_data = 0;
    w->wr.rdma.remote_addr = c->raddr;
    w->wr.rdma.rkey = c->rkey;
}

/* Links WRs [first, first+n) of lane q for posting on qp: which are
   signaled (every sig_every-th, and the lane's last unless `then` follows
   it and carries that), completion records, wr_ids. WRITEs small enough
   go inline (the NIC takes the bytes from the WR: no DMA read first). */
static void _nixl_verbs_link_chain(_nixl_verbs_engine_t *e, _nixl_verbs_qp_t *qp, _nixl_verbs_req_t *r, int q,
                                   uint32_t first, uint32_t n, struct ibv_send_wr *then) {
    uint32_t i, max_inline = r->host_src ? qp->conn->max_inline : 0;
    for (i = 0; i < n; i++) {
        struct ibv_send_wr *w = &e->wrs[i];
        int last = r->qposted[q] + i + 1 == r->qcount[q] && !then;
        _nixl_verbs_wr_fill(w, &e->sges[i], r, &r->cw[first + i]);
        w->next = i + 1 < n ? w + 1 : then;
        w->wr_id = ((uint64_t)qp->index << 2) | _NIXL_VERBS_WRID_SEND;
        if (last || qp->unsig + 1 >= e->sig_every) {
            _nixl_verbs_rec_t *rec = _nixl_verbs_rec_push(e, qp, r);
            rec->last = (uint8_t)last;
            rec->lane = (uint8_t)q;
            w->send_flags = IBV_SEND_SIGNALED;
        } else {
            qp->unsig++;
            w->send_flags = 0;
        }
        if (e->sges[i].length <= max_inline) w->send_flags |= IBV_SEND_INLINE;
    }
}

/* Posts as many of the request's WRs as the send queues take now, as one
   linked chain per QP (lane 0's last chain carries the notification SEND
   when it can). The WR arrays were built by prep; only `next`,
   `send_flags` and the completion records change here. */
static int _nixl_verbs_req_pump(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, _nixl_verbs_req_t *r) {
    int q;
    if (r->swr) return _nixl_verbs_stage_pump(e, c, r);
    for (q = 0; q < r->nqp; q++) {
        _nixl_verbs_qp_t *qp = &c->qps[q % c->nqp]; /* a passive connection may have fewer QPs */
        while (r->qposted[q] < r->qcount[q] && qp->sq_free > 0) {
            uint32_t left = r->qcount[q] - r->qposted[q];
            uint32_t n = left < qp->sq_free ? left : qp->sq_free;
            uint32_t first = r->qstart[q] + r->qposted[q], slot = 0;
            struct ibv_send_wr *bad = NULL, nwr;
            struct ibv_sge nsge;
            int rc, ride = q == 0 && n == left && _nixl_verbs_notif_rides(c, r, n);
            if (ride) slot = _nixl_verbs_am_frame(c, _NIXL_VERBS_AM_NOTIF, r->am.data, r->am.len, &nwr, &nsge);
            _nixl_verbs_link_chain(e, qp, r, q, first, n, ride ? &nwr : NULL);
            rc = ibv_post_send(qp->qp, e->wrs, &bad);
            if (rc) {
                if (ride) c->tx_free[c->tx_free_n++] = slot;
                nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: ibv_post_send(%u WRs on QP %d) failed: %s",
                                 (unsigned)n, q, strerror(rc));
                _nixl_verbs_conn_fail(e, c, NIXL_ERR_BACKEND, "cannot post RDMA WRs");
                return -1;
            }
            qp->sq_free -= n;
            r->qposted[q] += n;
            if (ride) {
                _nixl_verbs_rec_t *rec = _nixl_verbs_am_sent(e, c, slot, r);
                rec->last = 1; /* the SEND's completion retires lane 0's last WRITE too */
                rec->lane = 0;
                r->notif_state = _NIXL_VERBS_NOTIF_POSTED;
            }
        }
    }
    if (_nixl_verbs_req_all_posted(r)) _nixl_verbs_bl_remove(c->peer, r);
    return 0;
}

/* Posts from the peer's backlog (requests in posting order). */
static void _nixl_verbs_pump_backlog(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c) {
    _nixl_verbs_req_t *r = c->peer ? c->peer->bl_head : NULL;
    while (r && c->state == _NIXL_VERBS_CONN_UP) {
        _nixl_verbs_req_t *next = r->bl_next;
        if (_nixl_verbs_req_pump(e, c, r) < 0) return;
        _nixl_verbs_req_advance(e, r);
        r = next;
    }
}

// >>staging

/* VRAM the NIC cannot reach moves through a peer's bounce buffers. A WRITE
   copies device -> bounce (the copy engine's stream) and posts the RDMA
   WRITE of that buffer when the copy is done, while the next slices are
   copied; a READ posts RDMA READs into bounce buffers and copies each to the
   device when its completion arrives, while the next READs run. All of a
   staged request runs on QP 0, one signaled WR per slice; its notification
   follows the last WRITE on QP 0 (RC order), or the last copy of a READ. */

static void _nixl_verbs_slot_set(_nixl_verbs_stage_t *st, uint32_t i, int state) {
    _nixl_verbs_slot_t *s = &st->slots[i];
    s->state = state;
    if (state == _NIXL_VERBS_SLOT_FREE) {
        s->req = NULL;
        st->free_stack[st->nfree++] = i;
    }
}

static int _nixl_verbs_slot_copying(const _nixl_verbs_slot_t *s) {
    return s->state == _NIXL_VERBS_SLOT_COPY_IN || s->state == _NIXL_VERBS_SLOT_COPY_OUT;
}

static unsigned char *_nixl_verbs_slot_buf(const _nixl_verbs_stage_t *st, uint32_t i) {
    return st->buf + (size_t)i * st->size;
}

/* Waits (bounded) for copies still writing into the bounce buffers, then
   frees them; a copy that never ends leaks the buffers rather than free
   memory a DMA engine may still write. */
static void _nixl_verbs_stage_destroy(_nixl_verbs_engine_t *e, _nixl_verbs_stage_t *st) {
    uint64_t deadline = nixl_now_us() + 5000000u;
    uint32_t i;
    int busy = 1;
    if (!st) return;
    if (!st->slots) st->count = 0; /* made only partly */
    while (busy && nixl_now_us() < deadline) {
        busy = 0;
        for (i = 0; i < st->count; i++)
            if (_nixl_verbs_slot_copying(&st->slots[i]) && e->copy.event_done(e->copy.ctx, st->slots[i].ev) == 0)
                busy = 1;
    }
    for (i = 0; i < st->count; i++)
        if (st->slots[i].ev) e->copy.event_destroy(e->copy.ctx, st->slots[i].ev);
    if (busy) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: staging copies did not finish in 5 s: leaking %u bounce "
                         "buffers of %u bytes", (unsigned)st->count, (unsigned)st->size);
    } else {
        if (st->mr) ibv_dereg_mr(st->mr);
        if (st->pinned && e->copy.unpin) e->copy.unpin(e->copy.ctx, st->gpu, st->buf);
        if (st->buf) munmap(st->buf, (size_t)st->count * st->size);
    }
    if (st->slots) nixl_backend_free(e->be, st->slots);
    if (st->free_stack) nixl_backend_free(e->be, st->free_stack);
    nixl_backend_free(e->be, st);
}

/* The peer's bounce buffers, made on its first staged request. */
static nixl_status_t _nixl_verbs_stage_make(_nixl_verbs_engine_t *e, _nixl_verbs_peer_t *p, int gpu) {
    _nixl_verbs_stage_t *st;
    size_t total = (size_t)e->stage_bufs * e->stage_size;
    uint32_t i;
    if (p->stage) return NIXL_SUCCESS;
    st = (_nixl_verbs_stage_t *)nixl_backend_alloc(e->be, sizeof *st);
    if (!st) return NIXL_ERR_BACKEND;
    st->count = e->stage_bufs;
    st->size = e->stage_size;
    st->slots = (_nixl_verbs_slot_t *)nixl_backend_alloc(e->be, st->count * sizeof *st->slots);
    st->free_stack = (uint32_t *)nixl_backend_alloc(e->be, st->count * sizeof *st->free_stack);
    st->buf = (unsigned char *)mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (st->buf == MAP_FAILED) st->buf = NULL;
    if (st->buf) st->mr = ibv_reg_mr(e->devs[0].pd, st->buf, total, IBV_ACCESS_LOCAL_WRITE);
    if (!st->slots || !st->free_stack || !st->mr) {
        int err = errno;
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: cannot make %u staging buffers of %u bytes for %s: %s%s",
                         (unsigned)st->count, (unsigned)st->size, p->name ? p->name : "a peer", strerror(err),
                         _nixl_verbs_errno_hint(err));
        if (!st->mr && st->buf) {
            munmap(st->buf, total);
            st->buf = NULL;
        }
        _nixl_verbs_stage_destroy(e, st);
        return NIXL_ERR_BACKEND;
    }
    if (e->copy.pin) {
        st->gpu = gpu;
        st->pinned = e->copy.pin(e->copy.ctx, gpu, st->buf, total) == 0;
        if (!st->pinned)
            nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: could not pin the staging buffers for GPU copies: "
                             "copies will be slower");
    }
    for (i = st->count; i-- > 0;) {
        st->slots[i].ev_gpu = -1;
        _nixl_verbs_slot_set(st, i, _NIXL_VERBS_SLOT_FREE);
    }
    p->stage = st;
    return NIXL_SUCCESS;
}

/* r failed or was released: its buffers in use finish what they do and
   return to the pool without touching it. */
static void _nixl_verbs_stage_orphan(_nixl_verbs_peer_t *p, _nixl_verbs_req_t *r) {
    _nixl_verbs_stage_t *st = p->stage;
    uint32_t i;
    for (i = 0; st && i < st->count; i++)
        if (st->slots[i].req == r) {
            st->slots[i].req = NULL;
            if (st->slots[i].state == _NIXL_VERBS_SLOT_READY) _nixl_verbs_slot_set(st, i, _NIXL_VERBS_SLOT_FREE);
        }
}

/* The connection is gone: its WRs never complete, so their buffers are
   free; running copies end as orphans. */
static void _nixl_verbs_stage_reset(_nixl_verbs_peer_t *p) {
    _nixl_verbs_stage_t *st = p->stage;
    uint32_t i;
    for (i = 0; st && i < st->count; i++) {
        _nixl_verbs_slot_t *s = &st->slots[i];
        if (s->state == _NIXL_VERBS_SLOT_WIRE || s->state == _NIXL_VERBS_SLOT_READY)
            _nixl_verbs_slot_set(st, i, _NIXL_VERBS_SLOT_FREE);
        else
            s->req = NULL;
    }
}

static void _nixl_verbs_stage_fail(_nixl_verbs_engine_t *e, _nixl_verbs_req_t *r, const char *what) {
    nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: staged %s to %s failed: %s",
                     r->op == NIXL_WRITE ? "WRITE" : "READ", r->peer && r->peer->name ? r->peer->name : "?", what);
    if (r->peer) {
        if (r->notif_state == _NIXL_VERBS_NOTIF_QUEUED) _nixl_verbs_am_unlink(r->peer, &r->am);
        _nixl_verbs_recs_forget(e, r->peer->conn, r);
    }
    _nixl_verbs_req_finish(r, NIXL_ERR_BACKEND);
}

/* One more WR of a staged request is done (data placed, copy included). */
static void _nixl_verbs_stage_wr_done(_nixl_verbs_engine_t *e, _nixl_verbs_req_t *r) {
    if (++r->sdone == r->nwr) r->qdone |= 1u;
    _nixl_verbs_req_advance(e, r);
}

/* Starts copy `to_device` of WR k through buffer i. */
static int _nixl_verbs_stage_copy(_nixl_verbs_engine_t *e, _nixl_verbs_stage_t *st, uint32_t i, int to_device) {
    _nixl_verbs_slot_t *s = &st->slots[i];
    const _nixl_verbs_swr_t *w = &s->req->swr[s->wr];
    uint32_t len = s->req->cw[s->wr].len, k;
    if (s->ev_gpu != w->gpu) {
        if (s->ev) e->copy.event_destroy(e->copy.ctx, s->ev);
        s->ev = NULL;
        s->ev_gpu = -1;
        if (e->copy.event_create(e->copy.ctx, w->gpu, &s->ev) != 0) return -1;
        s->ev_gpu = w->gpu;
    }
    for (k = 0; k < st->count; k++)
        if (st->slots[k].state == _NIXL_VERBS_SLOT_WIRE) {
            st->overlapped++; /* the pipeline at work: RDMA runs during this copy */
            break;
        }
    st->copies++;
    if (e->copy.copy(e->copy.ctx, w->gpu, to_device, _nixl_verbs_slot_buf(st, i), w->dptr, len, s->ev) != 0)
        return -1;
    s->state = to_device ? _NIXL_VERBS_SLOT_COPY_OUT : _NIXL_VERBS_SLOT_COPY_IN;
    return 0;
}

/* Posts WR k of r, signaled, from/into bounce buffer `slot` (or its own
   memory with _NIXL_VERBS_STAGE_DIRECT). */
#define _NIXL_VERBS_STAGE_DIRECT (-2)
static int _nixl_verbs_stage_post(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, _nixl_verbs_req_t *r, uint32_t k,
                                  int32_t slot) {
    _nixl_verbs_qp_t *qp = &c->qps[0];
    struct ibv_send_wr *w = &e->wrs[0], *bad = NULL;
    _nixl_verbs_stage_t *st = r->peer->stage;
    int rc;
    _nixl_verbs_wr_fill(w, &e->sges[0], r, &r->cw[k]);
    if (slot >= 0) {
        e->sges[0].addr = (uint64_t)(uintptr_t)_nixl_verbs_slot_buf(st, (uint32_t)slot);
        e->sges[0].lkey = st->mr->lkey;
    }
    w->next = NULL;
    w->wr_id = ((uint64_t)qp->index << 2) | _NIXL_VERBS_WRID_SEND;
    w->send_flags = IBV_SEND_SIGNALED;
    rc = ibv_post_send(qp->qp, w, &bad);
    if (rc) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: ibv_post_send(staged WR) failed: %s", strerror(rc));
        _nixl_verbs_conn_fail(e, c, NIXL_ERR_BACKEND, "cannot post RDMA WRs");
        return -1;
    }
    _nixl_verbs_rec_push(e, qp, r)->stage = slot;
    qp->sq_free--;
    r->qposted[0]++;
    if (slot >= 0) st->slots[slot].state = _NIXL_VERBS_SLOT_WIRE;
    return 0;
}

/* Moves a staged request on: posts the slices whose copies are done, then
   starts new slices while bounce buffers and send-queue slots last. */
static int _nixl_verbs_stage_pump(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, _nixl_verbs_req_t *r) {
    _nixl_verbs_stage_t *st = r->peer->stage;
    _nixl_verbs_qp_t *qp = &c->qps[0];
    uint32_t i;
    for (i = 0; i < st->count && qp->sq_free > 0; i++)
        if (st->slots[i].req == r && st->slots[i].state == _NIXL_VERBS_SLOT_READY &&
            _nixl_verbs_stage_post(e, c, r, st->slots[i].wr, (int32_t)i) < 0)
            return -1;
    while (r->active && r->snext < r->nwr && qp->sq_free > 0) {
        uint32_t k = r->snext;
        if (!r->swr[k].dptr) {
            if (_nixl_verbs_stage_post(e, c, r, k, _NIXL_VERBS_STAGE_DIRECT) < 0) return -1;
        } else {
            if (!st->nfree) break;
            i = st->free_stack[--st->nfree];
            st->slots[i].req = r;
            st->slots[i].wr = k;
            if (r->op == NIXL_WRITE) {
                if (_nixl_verbs_stage_copy(e, st, i, 0) != 0) {
                    _nixl_verbs_slot_set(st, i, _NIXL_VERBS_SLOT_FREE);
                    _nixl_verbs_stage_fail(e, r, "cannot start a device-to-host copy");
                    return 0;
                }
            } else {
                st->slots[i].state = _NIXL_VERBS_SLOT_WIRE; /* a failed post frees it with the connection */
                if (_nixl_verbs_stage_post(e, c, r, k, (int32_t)i) < 0) return -1;
            }
        }
        r->snext++;
    }
    if (r->qposted[0] == r->nwr) _nixl_verbs_bl_remove(c->peer, r);
    return 0;
}

/* A staged request's signaled WR completed. */
static void _nixl_verbs_stage_on_wc(_nixl_verbs_engine_t *e, _nixl_verbs_peer_t *p, _nixl_verbs_req_t *r,
                                    int32_t slot) {
    _nixl_verbs_stage_t *st = p ? p->stage : NULL;
    if (slot >= 0 && st && (uint32_t)slot < st->count) {
        _nixl_verbs_slot_t *s = &st->slots[slot];
        if (!r || s->req != r) { /* orphaned: r was released or failed (and may be posted again) */
            _nixl_verbs_slot_set(st, (uint32_t)slot, _NIXL_VERBS_SLOT_FREE);
            return;
        }
        if (r->op == NIXL_WRITE) {
            _nixl_verbs_slot_set(st, (uint32_t)slot, _NIXL_VERBS_SLOT_FREE);
        } else if (_nixl_verbs_stage_copy(e, st, (uint32_t)slot, 1) != 0) {
            _nixl_verbs_req_t *failed = s->req;
            _nixl_verbs_slot_set(st, (uint32_t)slot, _NIXL_VERBS_SLOT_FREE);
            _nixl_verbs_stage_fail(e, failed, "cannot start a host-to-device copy");
            return;
        } else {
            return; /* done when the copy is */
        }
    }
    if (r && r->active) _nixl_verbs_stage_wr_done(e, r);
}

/* Polls the running copies of the peer's bounce buffers. */
static int _nixl_verbs_stage_poll(_nixl_verbs_engine_t *e, _nixl_verbs_peer_t *p) {
    _nixl_verbs_stage_t *st = p->stage;
    uint32_t i;
    int did = 0;
    for (i = 0; st && i < st->count; i++) {
        _nixl_verbs_slot_t *s = &st->slots[i];
        _nixl_verbs_req_t *r = s->req;
        int done;
        if (!_nixl_verbs_slot_copying(s)) continue;
        done = e->copy.event_done(e->copy.ctx, s->ev);
        did = 1; /* running or done: either way the pipeline is busy */
        if (done == 0) continue;
        if (done < 0 || !r || s->state == _NIXL_VERBS_SLOT_COPY_OUT)
            _nixl_verbs_slot_set(st, i, _NIXL_VERBS_SLOT_FREE);
        else
            s->state = _NIXL_VERBS_SLOT_READY; /* posted by the next pump */
        if (r && done < 0)
            _nixl_verbs_stage_fail(e, r, "a copy between GPU and bounce buffer failed");
        else if (r && s->state == _NIXL_VERBS_SLOT_FREE)
            _nixl_verbs_stage_wr_done(e, r);
    }
    return did;
}

// >>completions

static nixl_status_t _nixl_verbs_wc_status(enum ibv_wc_status s) {
    switch (s) {
    case IBV_WC_RETRY_EXC_ERR:
    case IBV_WC_RNR_RETRY_EXC_ERR:
    case IBV_WC_REM_ACCESS_ERR:
    case IBV_WC_REM_INV_REQ_ERR:
    case IBV_WC_REM_OP_ERR:
    case IBV_WC_REM_ABORT_ERR:
    case IBV_WC_REM_INV_RD_REQ_ERR:
    case IBV_WC_WR_FLUSH_ERR:
        return NIXL_ERR_REMOTE_DISCONNECT;
    default:
        return NIXL_ERR_BACKEND;
    }
}

static void _nixl_verbs_on_send_wc(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, _nixl_verbs_qp_t *qp) {
    _nixl_verbs_rec_t rec;
    if (qp->count == 0) return; /* cannot happen: every signaled WR has a record */
    rec = qp->ring[qp->head];
    qp->head = (qp->head + 1) % e->sq_depth;
    qp->count--;
    qp->sq_free += rec.nwr;
    if (rec.slot >= 0) c->tx_free[c->tx_free_n++] = (uint32_t)rec.slot;
    if (rec.stage != -1) {
        _nixl_verbs_stage_on_wc(e, c->peer, rec.req, rec.stage);
        return;
    }
    if (!rec.req) return;
    if (rec.last) rec.req->qdone |= 1u << rec.lane;
    if (rec.notif) rec.req->notif_state = _NIXL_VERBS_NOTIF_DONE;
    _nixl_verbs_req_advance(e, rec.req);
}

/* Flow control. A notification the core has no room for stays in its
   receive buffer: the buffer is not re-posted and its credit not returned,
   so the sender runs out of credits and waits (its requests stay
   NIXL_IN_PROG, its notifications queue) instead of being dropped. What
   arrives behind a held frame is held too (order). The frame's own credits
   for us are taken at once (holding them could stall both sides). */
static int _nixl_verbs_hold(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, uint32_t slot, uint32_t byte_len) {
    unsigned char *p = c->buf + (size_t)slot * c->buf_size;
    uint32_t len;
    if (byte_len < _NIXL_VERBS_AM_HDR || byte_len > c->buf_size) return 0;
    len = _nixl_get32(p + 4);
    if (!c->held_n && (p[0] != _NIXL_VERBS_AM_NOTIF || !c->peer || !c->peer->name || !c->proven ||
                       len > byte_len - _NIXL_VERBS_AM_HDR || nixl_backend_notif_room(e->be, c->peer->name, len)))
        return 0;
    if (!c->held) {
        c->held = (uint32_t *)nixl_backend_alloc(e->be, 2 * c->rx_count * sizeof *c->held);
        if (!c->held) return 0; /* no memory to hold: the core drops it, as without flow control */
        c->held_len = c->held + c->rx_count;
    }
    c->tx_credits += _nixl_get16(p + 2);
    if (c->tx_credits > c->peer_rx_count) c->tx_credits = c->peer_rx_count;
    p[2] = p[3] = 0;
    c->held[(c->held_head + c->held_n) % c->rx_count] = slot;
    c->held_len[(c->held_head + c->held_n) % c->rx_count] = byte_len;
    c->held_n++;
    return 1;
}

/* Delivers held frames, in order, while the core has room. */
static int _nixl_verbs_release_held(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c) {
    int did = 0;
    while (c->held_n && c->state == _NIXL_VERBS_CONN_UP) {
        uint32_t slot = c->held[c->held_head], byte_len = c->held_len[c->held_head];
        const unsigned char *p = c->buf + (size_t)slot * c->buf_size;
        if (p[0] == _NIXL_VERBS_AM_NOTIF &&
            !nixl_backend_notif_room(e->be, c->peer->name, _nixl_get32(p + 4)))
            break;
        c->held_head = (c->held_head + 1) % c->rx_count;
        c->held_n--;
        _nixl_verbs_am_recv(e, c, slot, byte_len);
        if (c->state != _NIXL_VERBS_CONN_UP) break;
        if (_nixl_verbs_post_recv(e, c, slot)) {
            _nixl_verbs_conn_fail(e, c, NIXL_ERR_BACKEND, "cannot re-post a receive buffer");
            break;
        }
        c->rx_pending++;
        did = 1;
    }
    return did;
}

/* One batch of completions; returns how many, or -1 when the connection failed. */
static int _nixl_verbs_poll_conn(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c) {
    struct ibv_wc wc[_NIXL_VERBS_POLL_BATCH];
    int n, i;
    n = ibv_poll_cq(c->cq, _NIXL_VERBS_POLL_BATCH, wc);
    if (n < 0) {
        _nixl_verbs_conn_fail(e, c, NIXL_ERR_BACKEND, "ibv_poll_cq failed");
        return -1;
    }
    for (i = 0; i < n; i++) {
        uint64_t id = wc[i].wr_id;
        uint32_t idx = (uint32_t)(id >> 2);
        if (wc[i].status != IBV_WC_SUCCESS) {
            char why[160];
            snprintf(why, sizeof why, "%s completion failed: %s (vendor error 0x%x)",
                     (id & 3u) == _NIXL_VERBS_WRID_RECV ? "receive" : "send",
                     ibv_wc_status_str(wc[i].status), (unsigned)wc[i].vendor_err);
            /* a flush follows a QP error or a disconnect, which said why already */
            _nixl_verbs_conn_fail_at(e, c, _nixl_verbs_wc_status(wc[i].status), why,
                                     wc[i].status == IBV_WC_WR_FLUSH_ERR ? NIXL_LOG_WARN : NIXL_LOG_ERROR);
            return -1;
        }
        if ((id & 3u) == _NIXL_VERBS_WRID_RECV) {
            if (idx >= c->rx_count) continue;
            if (_nixl_verbs_hold(e, c, idx, wc[i].byte_len)) continue; /* flow control */
            _nixl_verbs_am_recv(e, c, idx, wc[i].byte_len);
            if (c->state == _NIXL_VERBS_CONN_FAILED) return -1;
            if (_nixl_verbs_post_recv(e, c, idx)) {
                _nixl_verbs_conn_fail(e, c, NIXL_ERR_BACKEND, "cannot re-post a receive buffer");
                return -1;
            }
            c->rx_pending++;
        } else if (idx < (uint32_t)c->nqp) {
            _nixl_verbs_on_send_wc(e, c, &c->qps[idx]);
            if (c->state == _NIXL_VERBS_CONN_FAILED) return -1;
        }
    }
    return n;
}

// >>connection setup

static _nixl_verbs_conn_t *_nixl_verbs_conn_new(_nixl_verbs_engine_t *e, _nixl_verbs_peer_t *p, int passive,
                                                int nqp, uint32_t nonce) {
    _nixl_verbs_conn_t *c = (_nixl_verbs_conn_t *)nixl_backend_alloc(e->be, sizeof *c);
    int q;
    if (!c) return NULL;
    c->eng = e;
    c->peer = p;
    c->passive = passive;
    c->nqp = nqp;
    c->nonce = nonce;
    c->state = _NIXL_VERBS_CONN_CONNECTING;
    for (q = 0; q < nqp; q++) {
        c->qps[q].conn = c;
        c->qps[q].index = q;
    }
    return c;
}

/* CQ, notification buffers and their MR, on the device the route chose. */
static int _nixl_verbs_conn_setup(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, struct ibv_context *ctx) {
    int q, cqe;
    size_t bytes;
    uint32_t i;
    if (c->cq) return c->dev->ctx == ctx ? 0 : -1;
    if (ctx != e->devs[0].ctx) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR,
                         "verbs: connection routed over a device other than the primary %s (multi-rail is "
                         "not supported)", e->devs[0].name);
        return -1;
    }
    c->dev = &e->devs[0];
    c->rx_count = e->notif_bufs;
    c->tx_count = e->notif_bufs;
    c->buf_size = e->notif_buf_size;
    cqe = (int)(c->nqp * (e->sq_depth + 1) + c->rx_count + 16);
    if (cqe > c->dev->attr.max_cqe) cqe = c->dev->attr.max_cqe;
    c->cq = ibv_create_cq(ctx, cqe, NULL, NULL, 0);
    if (!c->cq) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: ibv_create_cq(%d) failed: %s", cqe, strerror(errno));
        return -1;
    }
    bytes = ((size_t)c->rx_count + c->tx_count) * c->buf_size;
    c->buf = (unsigned char *)nixl_backend_alloc(e->be, bytes);
    c->tx_free = (uint32_t *)nixl_backend_alloc(e->be, c->tx_count * sizeof(uint32_t));
    if (!c->buf || !c->tx_free) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: out of memory for notification buffers");
        return -1;
    }
    c->buf_mr = ibv_reg_mr(c->dev->pd, c->buf, bytes, IBV_ACCESS_LOCAL_WRITE);
    if (!c->buf_mr) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: ibv_reg_mr(notification buffers, %zu) failed: %s%s",
                         bytes, strerror(errno), _nixl_verbs_errno_hint(errno));
        return -1;
    }
    for (i = 0; i < c->tx_count; i++) c->tx_free[i] = c->tx_count - 1 - i;
    c->tx_free_n = c->tx_count;
    for (q = 0; q < c->nqp; q++) {
        c->qps[q].ring = (_nixl_verbs_rec_t *)nixl_backend_alloc(e->be, e->sq_depth * sizeof(_nixl_verbs_rec_t));
        if (!c->qps[q].ring) return -1;
        c->qps[q].sq_free = e->sq_depth;
    }
    return 0;
}

/* QP on the CM id (the CM moves it through its states); QP 0 gets the
   receive ring before the connection exists, so no SEND can outrun it. */
static int _nixl_verbs_qp_create(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, _nixl_verbs_qp_t *qp) {
    struct ibv_qp_init_attr a;
    uint32_t i;
    uint8_t tmo = (uint8_t)e->timeout;
    if (_nixl_verbs_conn_setup(e, c, qp->id->verbs)) return -1;
    memset(&a, 0, sizeof a);
    a.send_cq = c->cq;
    a.recv_cq = c->cq;
    a.qp_type = IBV_QPT_RC;
    a.cap.max_send_wr = e->sq_depth;
    a.cap.max_recv_wr = qp->index == 0 ? c->rx_count : 1;
    a.cap.max_send_sge = 1;
    a.cap.max_recv_sge = 1;
    a.cap.max_inline_data = 64;
    if (rdma_create_qp(qp->id, c->dev->pd, &a)) {
        a.cap.max_inline_data = 0; /* some devices have no inline support */
        if (rdma_create_qp(qp->id, c->dev->pd, &a)) {
            nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: rdma_create_qp(sq %u) failed: %s",
                             (unsigned)e->sq_depth, strerror(errno));
            return -1;
        }
    }
    qp->qp = qp->id->qp;
    if (qp->index == 0) c->max_inline = a.cap.max_inline_data;
    if (rdma_set_option(qp->id, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &tmo, sizeof tmo))
        nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: cannot set the ACK timeout: %s", strerror(errno));
    if (qp->index == 0)
        for (i = 0; i < c->rx_count; i++)
            if (_nixl_verbs_post_recv(e, c, i)) return -1;
    return 0;
}

/* CM private data, little-endian: magic u16, version u8, qp index u8, nqp
   u8, pad u8, rx_count u16, buf_size u32, nonce u32, name hash u64, then
   the sender's 16-byte nonce (40 bytes of the 56 a REQ carries); a REP adds
   the acceptor's MAC (32 bytes; zero without a token). */
static void _nixl_verbs_pdata_build(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, int qidx, unsigned char *pd) {
    memset(pd, 0, _NIXL_VERBS_PDATA_ACC_LEN);
    _nixl_put16(pd, _NIXL_VERBS_PDATA_MAGIC);
    pd[2] = _NIXL_VERBS_PDATA_VERSION;
    pd[3] = (unsigned char)qidx;
    pd[4] = (unsigned char)c->nqp;
    _nixl_put16(pd + 6, (uint16_t)c->rx_count);
    _nixl_put32(pd + 8, c->buf_size);
    _nixl_put32(pd + 12, c->nonce);
    _nixl_put64(pd + 16, e->hash);
    memcpy(pd + 24, c->passive ? c->nonce_p : c->nonce_a, _NIXL_VERBS_NONCE);
    if (c->passive && nixl_backend_auth_on(e->be)) _nixl_verbs_mac(e, c, 1, e->name, c->peer->hash, pd + 40);
}

typedef struct _nixl_verbs_pdata {
    int qidx, nqp;
    uint32_t rx_count, buf_size, nonce;
    uint64_t hash;
    const unsigned char *nonce16, *mac; /* mac: NULL in a REQ */
} _nixl_verbs_pdata_t;

static int _nixl_verbs_pdata_parse(const unsigned char *pd, size_t len, _nixl_verbs_pdata_t *o) {
    if (len < _NIXL_VERBS_PDATA_LEN || _nixl_get16(pd) != _NIXL_VERBS_PDATA_MAGIC ||
        pd[2] != _NIXL_VERBS_PDATA_VERSION)
        return -1;
    o->qidx = pd[3];
    o->nqp = pd[4];
    o->rx_count = _nixl_get16(pd + 6);
    o->buf_size = _nixl_get32(pd + 8);
    o->nonce = _nixl_get32(pd + 12);
    o->hash = _nixl_get64(pd + 16);
    o->nonce16 = pd + 24;
    o->mac = len >= _NIXL_VERBS_PDATA_ACC_LEN ? pd + 40 : NULL;
    if (o->nqp < 1 || o->nqp > _NIXL_VERBS_MAX_QPS || o->qidx >= o->nqp || o->rx_count < 2 ||
        o->buf_size < 64)
        return -1;
    return 0;
}

static void _nixl_verbs_conn_param(_nixl_verbs_conn_t *c, const unsigned char *pd, struct rdma_conn_param *cp) {
    memset(cp, 0, sizeof *cp);
    cp->retry_count = (uint8_t)c->eng->retry_cnt;
    cp->private_data = pd;
    cp->private_data_len = c->passive ? _NIXL_VERBS_PDATA_ACC_LEN : _NIXL_VERBS_PDATA_LEN;
    cp->responder_resources = c->resp_res;
    cp->initiator_depth = c->init_depth;
    cp->rnr_retry_count = 7;
}

static uint8_t _nixl_verbs_u8cap(int v) { return (uint8_t)(v > 255 ? 255 : v < 0 ? 0 : v); }

/* Starts an active connection: one CM id per QP, address resolution first. */
static int _nixl_verbs_conn_start(_nixl_verbs_engine_t *e, _nixl_verbs_peer_t *p) {
    _nixl_verbs_conn_t *c;
    struct sockaddr_in src;
    char ip[INET_ADDRSTRLEN];
    int q;
    p->want_connect = 0;
    if (!p->has_addr) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: no connection info for %s", p->name ? p->name : "?");
        return -1;
    }
    /* the nonce groups the CM ids (one per QP) of one attempt at the peer */
    c = _nixl_verbs_conn_new(e, p, 0, (int)e->nqp,
                             ((e->nonce_ctr++ ^ (uint32_t)nixl_now_us()) * 2654435761u) ^ (uint32_t)getpid());
    if (!c) return -1;
    if (nixl_random_bytes(c->nonce_a, sizeof c->nonce_a) != 0) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: getrandom failed: no nonce, no connection");
        _nixl_verbs_conn_doom(e, c);
        return -1;
    }
    c->resp_res = _nixl_verbs_u8cap(e->devs[0].attr.max_qp_rd_atom);
    c->init_depth = _nixl_verbs_u8cap(e->devs[0].attr.max_qp_init_rd_atom);
    p->conn = c;
    src = e->listen_addr;
    src.sin_port = 0;
    for (q = 0; q < c->nqp; q++) {
        _nixl_verbs_qp_t *qp = &c->qps[q];
        if (rdma_create_id(e->ch, &qp->id, qp, RDMA_PS_TCP)) {
            qp->id = NULL;
            nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: rdma_create_id failed: %s", strerror(errno));
            break;
        }
        if (rdma_resolve_addr(qp->id, (struct sockaddr *)&src, (struct sockaddr *)&p->addr,
                              _NIXL_VERBS_RESOLVE_MS)) {
            nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: rdma_resolve_addr(%s:%u) failed: %s",
                             _nixl_verbs_ip(&p->addr, ip, sizeof ip), (unsigned)ntohs(p->addr.sin_port),
                             strerror(errno));
            break;
        }
    }
    if (q < c->nqp) {
        _nixl_verbs_conn_fail(e, c, NIXL_ERR_REMOTE_DISCONNECT, "cannot start connecting");
        _nixl_verbs_conn_doom(e, c);
        return -1;
    }
    return 0;
}

static _nixl_verbs_peer_t *_nixl_verbs_peer_new(_nixl_verbs_engine_t *e, const char *name, uint64_t hash) {
    _nixl_verbs_peer_t *p = (_nixl_verbs_peer_t *)nixl_backend_alloc(e->be, sizeof *p);
    if (!p) return NULL;
    if (name) {
        p->name = _nixl_verbs_strdup(e, name, strlen(name));
        if (!p->name) {
            nixl_backend_free(e->be, p);
            return NULL;
        }
    }
    p->hash = hash;
    p->next = e->peers;
    if (e->peers) e->peers->prev = p;
    e->peers = p;
    return p;
}

/* Lookup by name for the core's calls: the loopback peer for our own name,
   never the accepting half of loopback. */
static _nixl_verbs_peer_t *_nixl_verbs_peer_find(_nixl_verbs_engine_t *e, const char *name) {
    _nixl_verbs_peer_t *p;
    if (strcmp(name, e->name) == 0) return e->self;
    for (p = e->peers; p; p = p->next)
        if (!p->self_passive && !p->is_self && p->name && strcmp(p->name, name) == 0) return p;
    return NULL;
}

static void _nixl_verbs_reject(_nixl_verbs_engine_t *e, struct rdma_cm_id *id, uint8_t reason) {
    unsigned char pd[4];
    _nixl_put16(pd, _NIXL_VERBS_PDATA_MAGIC);
    pd[2] = reason;
    pd[3] = 0;
    if (rdma_reject(id, pd, sizeof pd)) /* e.g. the peer gave up its attempt already (simultaneous connect) */
        nixl_backend_log(e->be, NIXL_LOG_INFO, "verbs: rdma_reject failed: %s", strerror(errno));
    rdma_destroy_id(id);
}

/* Who may connect (before a QP is spent on it). A connector claims an
   agent by its name hash. A claim of an agent whose metadata we loaded
   must come from the address in that metadata (an impostor elsewhere is
   refused here; a connector binds its listen address, which is what its
   metadata says); with a token the claim is also proven by MACs after the
   accept. Connections from peers we have not loaded are
   capped (max_unknown_peers): each costs a QP and its buffers. */
static int _nixl_verbs_check_claim(_nixl_verbs_engine_t *e, struct rdma_cm_id *id, const _nixl_verbs_pdata_t *in) {
    const struct sockaddr_in *from = (const struct sockaddr_in *)rdma_get_peer_addr(id);
    _nixl_verbs_peer_t *p;
    uint32_t unknown = 0;
    char ip[INET_ADDRSTRLEN], want[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &from->sin_addr, ip, sizeof ip);
    for (p = e->peers; p; p = p->next) {
        if (p->self_passive || p->is_self) continue;
        if (!p->loaded && p->conn) unknown++;
        if (p->hash != in->hash || !p->loaded || !p->has_addr) continue;
        if (p->addr.sin_addr.s_addr == from->sin_addr.s_addr) return 0;
        inet_ntop(AF_INET, &p->addr.sin_addr, want, sizeof want);
        nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: a connection from %s claims to be %s, whose metadata says %s: "
                         "refused", ip, p->name ? p->name : "a loaded peer", want);
        return -1;
    }
    if (in->hash == e->hash) { /* loopback: from our own address only */
        if (e->listen_addr.sin_addr.s_addr == htonl(INADDR_ANY) ||
            e->listen_addr.sin_addr.s_addr == from->sin_addr.s_addr)
            return 0;
        nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: a connection from %s claims to be this agent: refused", ip);
        return -1;
    }
    for (p = e->peers; p; p = p->next)
        if (p->hash == in->hash && !p->self_passive && !p->is_self) return 0; /* known: its own rules apply */
    if (unknown >= e->max_unknown) {
        nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: a connection from %s refused: %u connections from peers whose "
                         "metadata is not loaded (max_unknown_peers)", ip, unknown);
        return -1;
    }
    return 0;
}

/* A peer connects to us (passive side): find or make its peer and
   connection, settle a simultaneous connect by name, create the QP, accept. */
static void _nixl_verbs_on_connect_request(_nixl_verbs_engine_t *e, struct rdma_cm_id *id, const unsigned char *pdb,
                                           size_t pdlen, uint8_t their_init, uint8_t their_resp) {
    _nixl_verbs_pdata_t in;
    _nixl_verbs_peer_t *p = NULL;
    _nixl_verbs_conn_t *c;
    _nixl_verbs_qp_t *qp;
    struct rdma_conn_param cp;
    unsigned char pd[_NIXL_VERBS_PDATA_ACC_LEN];
    if (_nixl_verbs_pdata_parse(pdb, pdlen, &in)) {
        nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: connection request with bad private data refused");
        _nixl_verbs_reject(e, id, _NIXL_VERBS_REJ_REFUSED);
        return;
    }
    if (_nixl_verbs_check_claim(e, id, &in) != 0) {
        _nixl_verbs_reject(e, id, _NIXL_VERBS_REJ_REFUSED);
        return;
    }
    if (in.hash == e->hash) { /* loopback: the accepting half, one per connection attempt */
        for (p = e->peers; p; p = p->next)
            if (p->self_passive && p->conn && p->conn->nonce == in.nonce) break;
        if (!p) {
            p = _nixl_verbs_peer_new(e, NULL, in.hash);
            if (!p) goto refuse;
            p->self_passive = 1;
        }
    } else {
        for (p = e->peers; p; p = p->next)
            if (!p->self_passive && !p->is_self && p->hash == in.hash) break;
        if (!p) {
            p = _nixl_verbs_peer_new(e, NULL, in.hash);
            if (!p) goto refuse;
        }
    }
    c = p->conn;
    if (c && c->passive && c->nonce == in.nonce &&
        (memcmp(c->nonce_a, in.nonce16, _NIXL_VERBS_NONCE) != 0 ||
         c->from.s_addr != ((struct sockaddr_in *)rdma_get_peer_addr(id))->sin_addr.s_addr)) {
        /* a later QP of an attempt must carry its nonce, from its address */
        nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: a QP joining a connection from %s with another nonce or "
                         "address: refused", p->name ? p->name : "(unnamed peer)");
        _nixl_verbs_reject(e, id, _NIXL_VERBS_REJ_REFUSED);
        return;
    }
    if (c && !(c->passive && c->nonce == in.nonce)) {
        if (c->state == _NIXL_VERBS_CONN_CONNECTING && !c->passive && p->name &&
            strcmp(e->name, p->name) > 0) {
            /* both connect at once and theirs wins: drop ours, keep its queue */
            _nixl_verbs_conn_doom(e, c);
            c = NULL;
        } else {
            uint8_t why = c->state == _NIXL_VERBS_CONN_CONNECTING && !c->passive ? _NIXL_VERBS_REJ_TIEBREAK
                                                                                  : _NIXL_VERBS_REJ_REFUSED;
            if (why == _NIXL_VERBS_REJ_REFUSED)
                nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: second connection from %s refused",
                                 p->name ? p->name : "(unnamed peer)");
            _nixl_verbs_reject(e, id, why);
            return;
        }
    }
    if (!c) {
        c = _nixl_verbs_conn_new(e, p, 1, in.nqp, in.nonce);
        if (!c) goto refuse;
        c->peer_rx_count = in.rx_count;
        c->peer_buf_size = in.buf_size;
        c->tx_credits = in.rx_count;
        c->resp_res = _nixl_verbs_u8cap(e->devs[0].attr.max_qp_rd_atom);
        if (c->resp_res > their_init) c->resp_res = their_init;
        c->init_depth = _nixl_verbs_u8cap(e->devs[0].attr.max_qp_init_rd_atom);
        if (c->init_depth > their_resp) c->init_depth = their_resp;
        p->conn = c;
        p->wait_passive = 0;
        memcpy(c->nonce_a, in.nonce16, _NIXL_VERBS_NONCE);
        c->from = ((struct sockaddr_in *)rdma_get_peer_addr(id))->sin_addr;
        if (nixl_random_bytes(c->nonce_p, sizeof c->nonce_p) != 0) goto fail_conn;
    }
    qp = &c->qps[in.qidx];
    if (qp->id || in.nqp != c->nqp) {
        _nixl_verbs_reject(e, id, _NIXL_VERBS_REJ_REFUSED);
        return;
    }
    qp->id = id;
    id->context = qp;
    if (_nixl_verbs_qp_create(e, c, qp)) goto fail_conn;
    _nixl_verbs_pdata_build(e, c, in.qidx, pd);
    _nixl_verbs_conn_param(c, pd, &cp);
    if (rdma_accept(id, &cp)) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: rdma_accept failed: %s", strerror(errno));
        goto fail_conn;
    }
    return;
fail_conn:
    _nixl_verbs_conn_fail(e, c, NIXL_ERR_BACKEND, "cannot accept");
    _nixl_verbs_conn_doom(e, c);
    return;
refuse:
    nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: out of memory accepting a connection");
    _nixl_verbs_reject(e, id, _NIXL_VERBS_REJ_REFUSED);
}

static void _nixl_verbs_on_route_resolved(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, _nixl_verbs_qp_t *qp) {
    struct rdma_conn_param cp;
    unsigned char pd[_NIXL_VERBS_PDATA_ACC_LEN];
    if (_nixl_verbs_qp_create(e, c, qp)) {
        _nixl_verbs_conn_fail(e, c, NIXL_ERR_BACKEND, "cannot create a QP");
        return;
    }
    _nixl_verbs_pdata_build(e, c, qp->index, pd);
    _nixl_verbs_conn_param(c, pd, &cp);
    if (rdma_connect(qp->id, &cp)) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: rdma_connect failed: %s", strerror(errno));
        _nixl_verbs_conn_fail(e, c, NIXL_ERR_REMOTE_DISCONNECT, "cannot connect");
    }
}

static void _nixl_verbs_on_established(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, _nixl_verbs_qp_t *qp,
                                       const unsigned char *pdb, size_t pdlen) {
    if (qp->established) return;
    if (!c->passive && qp->index == 0) { /* the accept's private data: their ring */
        _nixl_verbs_pdata_t in;
        if (_nixl_verbs_pdata_parse(pdb, pdlen, &in)) {
            _nixl_verbs_conn_fail(e, c, NIXL_ERR_BACKEND, "bad private data in the accept");
            return;
        }
        c->peer_rx_count = in.rx_count;
        c->peer_buf_size = in.buf_size;
        c->tx_credits = in.rx_count;
        memcpy(c->nonce_p, in.nonce16, _NIXL_VERBS_NONCE);
        if (nixl_backend_auth_on(e->be) &&
            (!in.mac || !c->peer->name || !_nixl_verbs_mac_ok(e, c, 1, c->peer->name, e->hash, in.mac))) {
            _nixl_verbs_conn_fail(e, c, NIXL_ERR_NOT_ALLOWED, "the peer did not prove it knows the auth token");
            return;
        }
        c->proven = 1; /* we dialed the address in its metadata (and it proved the token) */
    }
    qp->established = 1;
    if (++c->nqp_est < c->nqp) return;
    c->state = _NIXL_VERBS_CONN_UP;
    c->up_at = nixl_now_us();
    if (!c->passive) { /* HELLO goes first: the passive side learns our name (and our proof) */
        unsigned char hello[_NIXL_VERBS_MAC + 256];
        size_t nl = strlen(e->name), off = 0;
        if (nixl_backend_auth_on(e->be)) {
            _nixl_verbs_mac(e, c, 0, e->name, c->peer->hash, hello);
            off = _NIXL_VERBS_MAC;
        }
        memcpy(hello + off, e->name, nl);
        if (_nixl_verbs_am_send(e, c, _NIXL_VERBS_AM_HELLO, hello, (uint32_t)(off + nl), NULL) != 1) {
            _nixl_verbs_conn_fail(e, c, NIXL_ERR_BACKEND, "cannot send HELLO");
            return;
        }
    }
    if (!c->proven) return; /* the passive side waits for the connector's HELLO */
    _nixl_verbs_pump_backlog(e, c);
    if (c->state == _NIXL_VERBS_CONN_UP) _nixl_verbs_flush_am(e, c);
}

static void _nixl_verbs_on_rejected(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c, const unsigned char *pdb,
                                    size_t pdlen) {
    _nixl_verbs_peer_t *p = c->peer;
    if (pdlen >= 3 && _nixl_get16(pdb) == _NIXL_VERBS_PDATA_MAGIC && pdb[2] == _NIXL_VERBS_REJ_TIEBREAK) {
        /* the peer's own connection to us wins; keep our queue for it */
        _nixl_verbs_conn_doom(e, c);
        if (p) {
            p->wait_passive = 1;
            p->wait_since = nixl_now_us();
        }
        return;
    }
    _nixl_verbs_conn_fail(e, c, NIXL_ERR_REMOTE_DISCONNECT, "connection rejected by the peer");
}

static int _nixl_verbs_cm_progress(_nixl_verbs_engine_t *e) {
    int n = 0;
    struct rdma_cm_event *ev;
    while (n < 64 && rdma_get_cm_event(e->ch, &ev) == 0) {
        /* copy what we need, ack at once (rdma_destroy_id waits for acks) */
        enum rdma_cm_event_type type = ev->event;
        struct rdma_cm_id *id = ev->id;
        int status = ev->status;
        unsigned char pd[_NIXL_VERBS_PDATA_ACC_LEN];
        size_t pdlen = 0;
        uint8_t init = ev->param.conn.initiator_depth, resp = ev->param.conn.responder_resources;
        _nixl_verbs_qp_t *qp;
        _nixl_verbs_conn_t *c;
        if (ev->param.conn.private_data && ev->param.conn.private_data_len) {
            pdlen = ev->param.conn.private_data_len < sizeof pd ? ev->param.conn.private_data_len : sizeof pd;
            memcpy(pd, ev->param.conn.private_data, pdlen);
        }
        rdma_ack_cm_event(ev);
        n++;
        if (type == RDMA_CM_EVENT_CONNECT_REQUEST) {
            _nixl_verbs_on_connect_request(e, id, pd, pdlen, init, resp);
            continue;
        }
        qp = (_nixl_verbs_qp_t *)id->context;
        if (!qp) continue; /* the listener */
        c = qp->conn;
        if (c->doomed || c->state == _NIXL_VERBS_CONN_FAILED) continue;
        switch (type) {
        case RDMA_CM_EVENT_ADDR_RESOLVED:
            if (rdma_resolve_route(id, _NIXL_VERBS_RESOLVE_MS)) {
                nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: rdma_resolve_route failed: %s", strerror(errno));
                _nixl_verbs_conn_fail(e, c, NIXL_ERR_REMOTE_DISCONNECT, "route resolution failed");
            }
            break;
        case RDMA_CM_EVENT_ROUTE_RESOLVED: _nixl_verbs_on_route_resolved(e, c, qp); break;
        case RDMA_CM_EVENT_ESTABLISHED: _nixl_verbs_on_established(e, c, qp, pd, pdlen); break;
        case RDMA_CM_EVENT_REJECTED: _nixl_verbs_on_rejected(e, c, pd, pdlen); break;
        case RDMA_CM_EVENT_DISCONNECTED: {
            /* what arrived before the goodbye (notifications, its DISCONNECT
               message) is delivered first: the CM event can overtake the CQ */
            int k;
            for (k = 0; k < 1024 && c->cq && c->state != _NIXL_VERBS_CONN_FAILED; k++)
                if (_nixl_verbs_poll_conn(e, c) < _NIXL_VERBS_POLL_BATCH) break;
            _nixl_verbs_conn_fail_at(e, c, NIXL_ERR_REMOTE_DISCONNECT, "peer disconnected", NIXL_LOG_WARN);
        } break;
        case RDMA_CM_EVENT_TIMEWAIT_EXIT: break;
        default: {
            char why[96];
            snprintf(why, sizeof why, "rdma_cm event %s (status %d)", rdma_event_str(type), status);
            _nixl_verbs_conn_fail(e, c, NIXL_ERR_REMOTE_DISCONNECT, why);
        } break;
        }
    }
    return n;
}

// >>devices

/* The IPv4 address of a port's netdev, from an IPv4-mapped GID. */
static int _nixl_verbs_dev_ipv4(_nixl_verbs_dev_t *d, struct ibv_port_attr *pa) {
    int i;
    for (i = 0; i < pa->gid_tbl_len && i < 256; i++) {
        union ibv_gid g;
        static const unsigned char v4pre[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (ibv_query_gid(d->ctx, d->port, i, &g)) break;
        if (memcmp(g.raw, v4pre, 12) == 0) {
            memset(&d->addr, 0, sizeof d->addr);
            d->addr.sin_family = AF_INET;
            memcpy(&d->addr.sin_addr, g.raw + 12, 4);
            d->has_addr = 1;
            return 0;
        }
    }
    return -1;
}

static int _nixl_verbs_name_in_list(const char *list, const char *name) {
    size_t n = strlen(name);
    const char *p = list;
    while (p && *p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0) return 1;
        p = end ? end + 1 : NULL;
    }
    return 0;
}

static nixl_status_t _nixl_verbs_open_devices(_nixl_verbs_engine_t *e, const char *want) {
    int n = 0, i;
    e->ctx_list = rdma_get_devices(&n);
    if (!e->ctx_list || n == 0) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: no RDMA device found (rdma_get_devices: %s)",
                         n == 0 ? "none" : strerror(errno));
        return NIXL_ERR_NOT_SUPPORTED;
    }
    for (i = 0; i < n && e->ndev < NIXL_VERBS_MAX_DEVICES; i++) {
        _nixl_verbs_dev_t *d = &e->devs[e->ndev];
        const char *name = ibv_get_device_name(e->ctx_list[i]->device);
        struct ibv_port_attr pa;
        uint8_t port;
        if (want && !_nixl_verbs_name_in_list(want, name)) continue;
        memset(d, 0, sizeof *d);
        d->ctx = e->ctx_list[i];
        snprintf(d->name, sizeof d->name, "%s", name);
        if (ibv_query_device(d->ctx, &d->attr)) {
            nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: ibv_query_device(%s) failed: %s", name, strerror(errno));
            continue;
        }
        for (port = 1; port <= d->attr.phys_port_cnt; port++)
            if (ibv_query_port(d->ctx, port, &pa) == 0 && pa.state == IBV_PORT_ACTIVE) break;
        if (port > d->attr.phys_port_cnt) {
            nixl_backend_log(e->be, want ? NIXL_LOG_ERROR : NIXL_LOG_INFO, "verbs: %s has no active port", name);
            if (want) return NIXL_ERR_INVALID_PARAM;
            continue;
        }
        d->port = port;
        d->max_msg_sz = pa.max_msg_sz;
        _nixl_verbs_dev_ipv4(d, &pa);
        d->pd = ibv_alloc_pd(d->ctx);
        if (!d->pd) {
            nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: ibv_alloc_pd(%s) failed: %s", name, strerror(errno));
            return NIXL_ERR_BACKEND;
        }
        e->ndev++;
    }
    if (want) { /* every named device must exist */
        const char *p = want;
        while (*p) {
            const char *end = strchr(p, ',');
            size_t len = end ? (size_t)(end - p) : strlen(p);
            int found = 0;
            for (i = 0; i < e->ndev; i++)
                if (strlen(e->devs[i].name) == len && strncmp(e->devs[i].name, p, len) == 0) found = 1;
            if (!found) {
                nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: devices: '%.*s' is not an RDMA device with an "
                                 "active port", (int)len, p);
                return NIXL_ERR_INVALID_PARAM;
            }
            if (!end) break;
            p = end + 1;
        }
    }
    if (e->ndev == 0) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: no RDMA device with an active port");
        return NIXL_ERR_NOT_SUPPORTED;
    }
    return NIXL_SUCCESS;
}

/* The rdma_cm listener on the primary device; its address is our
   connection info. With listen_addr the device owning it becomes primary. */
static nixl_status_t _nixl_verbs_listen(_nixl_verbs_engine_t *e, const char *addr) {
    struct sockaddr_in a;
    char ip[INET_ADDRSTRLEN];
    int i, d = -1, flags;
    e->ch = rdma_create_event_channel();
    if (!e->ch) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: rdma_create_event_channel failed: %s (is rdma_ucm loaded?)",
                         strerror(errno));
        return NIXL_ERR_BACKEND;
    }
    flags = fcntl(e->ch->fd, F_GETFL);
    if (flags < 0 || fcntl(e->ch->fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: cannot make the rdma_cm channel non-blocking: %s",
                         strerror(errno));
        return NIXL_ERR_BACKEND;
    }
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    if (addr) {
        if (inet_pton(AF_INET, addr, &a.sin_addr) != 1) {
            nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: listen_addr '%s' is not an IPv4 address", addr);
            return NIXL_ERR_INVALID_PARAM;
        }
    } else {
        for (i = 0; i < e->ndev && d < 0; i++)
            if (e->devs[i].has_addr) d = i;
        if (d < 0) {
            nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: no RDMA device has an IPv4 address (set listen_addr)");
            return NIXL_ERR_NOT_SUPPORTED;
        }
        a.sin_addr = e->devs[d].addr.sin_addr;
    }
    a.sin_port = htons(e->listen_port);
    if (rdma_create_id(e->ch, &e->listen_id, NULL, RDMA_PS_TCP)) {
        e->listen_id = NULL;
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: rdma_create_id failed: %s", strerror(errno));
        return NIXL_ERR_BACKEND;
    }
    if (rdma_bind_addr(e->listen_id, (struct sockaddr *)&a)) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: rdma_bind_addr(%s:%u) failed: %s",
                         _nixl_verbs_ip(&a, ip, sizeof ip), (unsigned)e->listen_port, strerror(errno));
        return addr ? NIXL_ERR_INVALID_PARAM : NIXL_ERR_BACKEND;
    }
    for (i = 0, d = -1; i < e->ndev; i++)
        if (e->devs[i].ctx == e->listen_id->verbs) d = i;
    if (d < 0) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: %s belongs to no RDMA device in use",
                         _nixl_verbs_ip(&a, ip, sizeof ip));
        return NIXL_ERR_INVALID_PARAM;
    }
    if (d != 0) { /* the listener's device is the primary: index 0 */
        _nixl_verbs_dev_t t = e->devs[0];
        e->devs[0] = e->devs[d];
        e->devs[d] = t;
    }
    if (rdma_listen(e->listen_id, 64)) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: rdma_listen failed: %s", strerror(errno));
        return NIXL_ERR_BACKEND;
    }
    e->listen_addr = a;
    e->listen_addr.sin_port = rdma_get_src_port(e->listen_id);
    snprintf(e->info, sizeof e->info, "%s:%u", _nixl_verbs_ip(&a, ip, sizeof ip),
             (unsigned)ntohs(e->listen_addr.sin_port));
    e->info_len = strlen(e->info);
    return NIXL_SUCCESS;
}

// >>cuda

/* The driver for this engine, opened once; absent is not an error until
   VRAM is registered. */
static int _nixl_verbs_cuda_load(_nixl_verbs_engine_t *e) {
    if (_nixl_cuda_load(&e->cuda, e->be, "verbs") != 0) return -1;
    if (!e->copy.query) e->copy = _nixl_cuda_copy_ops(&e->cuda);
    return 0;
}

// >>lifecycle (vtable)

/* The numeric params: key, default, lowest, highest, engine field (a
   uint32_t). The key list and the parser come from this one table; the
   manual's PARAMS lists the same keys (tests/check-headers checks that). */
#define _NIXL_VERBS_UPARAMS(X)                                                    \
    X("qps_per_peer", 2, 1, _NIXL_VERBS_MAX_QPS, nqp)                             \
    X("sq_depth", 256, 16, 32768, sq_depth)                                       \
    X("slice_size", 1u << 20, 4096, 1u << 30, slice)                              \
    X("timeout", 14, 1, 31, timeout)                                              \
    X("notif_bufs", 64, 4, 4096, notif_bufs)                                      \
    X("notif_buf_size", 4096, 64, 1u << 20, notif_buf_size)                       \
    X("retry_cnt", 7, 0, 7, retry_cnt)                                            \
    X("stage_bufs", 8, 2, 1024, stage_bufs)                                       \
    X("stage_size", 1u << 20, 4096, 1u << 28, stage_size)                         \
    X("max_unknown_peers", _NIXL_VERBS_MAX_UNKNOWN, 0, 65536, max_unknown)

typedef struct _nixl_verbs_uparam {
    const char *key;
    uint64_t def, lo, hi;
    size_t off; /* of a uint32_t in _nixl_verbs_engine_t */
} _nixl_verbs_uparam;

/* every field of the table is a uint32_t (the parser stores 4 bytes) */
#define _NIXL_VERBS_UPARAM_U32(key, def, lo, hi, field) \
    typedef char _nixl_verbs_u32_##field[sizeof(((_nixl_verbs_engine_t *)0)->field) == 4 ? 1 : -1];
_NIXL_VERBS_UPARAMS(_NIXL_VERBS_UPARAM_U32)
#undef _NIXL_VERBS_UPARAM_U32

#define _NIXL_VERBS_UPARAM_ROW(key, def, lo, hi, field) {key, def, lo, hi, offsetof(_nixl_verbs_engine_t, field)},
static const _nixl_verbs_uparam _nixl_verbs_uparams[] = {_NIXL_VERBS_UPARAMS(_NIXL_VERBS_UPARAM_ROW)};
#undef _NIXL_VERBS_UPARAM_ROW

#define _NIXL_VERBS_UPARAM_KEY(key, def, lo, hi, field) key,
static const char *const _nixl_verbs_param_keys[] = {
    _NIXL_VERBS_UPARAMS(_NIXL_VERBS_UPARAM_KEY) "devices", "listen_addr", "listen_port", "vram_path",
    "notif_unverified", NULL};
#undef _NIXL_VERBS_UPARAM_KEY

static nixl_status_t _nixl_verbs_param_vram_path(_nixl_verbs_engine_t *e, const char *v) {
    static const struct { const char *name; int path; } paths[] = {
        {"auto", NIXL_VERBS_PATH_NONE}, {"dmabuf", NIXL_VERBS_PATH_DMABUF},
        {"peermem", NIXL_VERBS_PATH_PEERMEM}, {"staging", NIXL_VERBS_PATH_STAGING}};
    size_t i;
    for (i = 0; i < sizeof paths / sizeof paths[0]; i++)
        if (!v || strcmp(v, paths[i].name) == 0) {
            e->vram_path = v ? paths[i].path : NIXL_VERBS_PATH_NONE;
            return NIXL_SUCCESS;
        }
    nixl_backend_log_item(e->be, NIXL_LOG_ERROR, NIXL_LOGITEM_VERBS_BAD_VRAM_PATH, "verbs: vram_path=%s: expected auto, dmabuf, peermem or staging", v);
    return NIXL_ERR_INVALID_PARAM;
}

static nixl_status_t _nixl_verbs_params(_nixl_verbs_engine_t *e, const nixl_backend_init_t *init) {
    const char *nu = nixl_param_get(init, "notif_unverified");
    uint64_t v;
    nixl_status_t st;
    size_t i;
    for (i = 0; i < sizeof _nixl_verbs_uparams / sizeof _nixl_verbs_uparams[0]; i++) {
        const _nixl_verbs_uparam *u = &_nixl_verbs_uparams[i];
        uint32_t field;
        if ((st = nixl_param_u64(init, u->key, u->def, u->lo, u->hi, &v)) != NIXL_SUCCESS) return st;
        field = (uint32_t)v;
        memcpy((char *)e + u->off, &field, sizeof field);
    }
    if ((st = nixl_param_u64(init, "listen_port", 0, 0, 65535, &v)) != NIXL_SUCCESS) return st;
    e->listen_port = (uint16_t)v;
    if (nu && strcmp(nu, "accept") != 0 && strcmp(nu, "drop") != 0) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: notif_unverified=%s: want accept or drop", nu);
        return NIXL_ERR_INVALID_PARAM;
    }
    e->notif_unverified = nu && strcmp(nu, "accept") == 0;
    return _nixl_verbs_param_vram_path(e, nixl_param_get(init, "vram_path"));
}

static void _nixl_verbs_destroy(void *engine);

/* Soft-RoCE: vendor id 0xffffff, or named so by rdma link add */
static int _nixl_verbs_is_rxe(const _nixl_verbs_dev_t *d) {
    return (d->attr.vendor_id == 0xffffffu && d->attr.vendor_part_id == 0) || strncmp(d->name, "rxe", 3) == 0;
}

static nixl_status_t _nixl_verbs_create(const nixl_backend_init_t *init, void **engine) {
    _nixl_verbs_engine_t *e = (_nixl_verbs_engine_t *)nixl_backend_alloc(init->self, sizeof *e);
    nixl_status_t st;
    if (!e) return NIXL_ERR_BACKEND;
    e->be = init->self;
    e->name = _nixl_verbs_strdup(e, init->agent_name, strlen(init->agent_name));
    if (!e->name) {
        nixl_backend_free(e->be, e);
        return NIXL_ERR_BACKEND;
    }
    e->hash = _nixl_verbs_hash(e->name);
    if ((st = _nixl_verbs_params(e, init)) != NIXL_SUCCESS) goto fail;
    if ((st = _nixl_verbs_open_devices(e, nixl_param_get(init, "devices"))) != NIXL_SUCCESS) goto fail;
    if ((st = _nixl_verbs_listen(e, nixl_param_get(init, "listen_addr"))) != NIXL_SUCCESS) goto fail;
    if (e->sq_depth > (uint32_t)e->devs[0].attr.max_qp_wr) e->sq_depth = (uint32_t)e->devs[0].attr.max_qp_wr;
    if (e->devs[0].max_msg_sz && e->slice > e->devs[0].max_msg_sz) e->slice = e->devs[0].max_msg_sz;
    e->sig_every = e->sq_depth / 4 ? e->sq_depth / 4 : 1;
    e->wrs = (struct ibv_send_wr *)nixl_backend_alloc(e->be, e->sq_depth * sizeof *e->wrs);
    e->sges = (struct ibv_sge *)nixl_backend_alloc(e->be, e->sq_depth * sizeof *e->sges);
    if (!e->wrs || !e->sges) {
        st = NIXL_ERR_BACKEND;
        goto fail;
    }
    if (!nixl_param_get(init, "retry_cnt") && e->retry_cnt == 7 && _nixl_verbs_is_rxe(&e->devs[0])) {
        /* rxe never counts down a retry_cnt of 7: a dead peer would hang */
        e->retry_cnt = 6;
        nixl_backend_log(e->be, NIXL_LOG_INFO, "verbs: %s is Soft-RoCE, which retries forever with retry_cnt 7: "
                         "using 6", e->devs[0].name);
    }
    e->self = _nixl_verbs_peer_new(e, e->name, e->hash);
    if (!e->self) {
        st = NIXL_ERR_BACKEND;
        goto fail;
    }
    _nixl_verbs_peer_unlink(e, e->self); /* the loopback peer lives outside the list */
    e->self->is_self = 1;
    e->self->loaded = 1;
    e->self->addr = e->listen_addr;
    e->self->has_addr = 1;
    nixl_backend_log(e->be, NIXL_LOG_INFO, "verbs: %d device(s), primary %s port %u, listening on %s, "
                     "qps_per_peer %u sq_depth %u slice %u timeout %u retry_cnt %u", e->ndev, e->devs[0].name,
                     (unsigned)e->devs[0].port, e->info, (unsigned)e->nqp, (unsigned)e->sq_depth,
                     (unsigned)e->slice, (unsigned)e->timeout, (unsigned)e->retry_cnt);
    *engine = e;
    return NIXL_SUCCESS;
fail:
    _nixl_verbs_destroy(e);
    return st;
}

/* Graceful close: tell the peer (DISCONNECT, waiting briefly for the send
   to complete), then tear down. */
static void _nixl_verbs_conn_close(_nixl_verbs_engine_t *e, _nixl_verbs_conn_t *c) {
    if (c->state == _NIXL_VERBS_CONN_UP && c->tx_credits >= 1) {
        uint64_t deadline = nixl_now_us() + _NIXL_VERBS_CLOSE_WAIT_US;
        c->tx_credits++; /* DISCONNECT may use the reserved credit: nothing follows it */
        if (_nixl_verbs_am_send(e, c, _NIXL_VERBS_AM_DISCONNECT, NULL, 0, NULL) == 1) {
            while (c->qps[0].count > 0 && nixl_now_us() < deadline) {
                struct ibv_wc wc;
                int n = ibv_poll_cq(c->cq, 1, &wc);
                if (n < 0) break;
                if (n == 1 && (wc.wr_id & 3u) == _NIXL_VERBS_WRID_SEND && wc.status == IBV_WC_SUCCESS &&
                    (wc.wr_id >> 2) < (uint64_t)c->nqp) {
                    _nixl_verbs_qp_t *qp = &c->qps[wc.wr_id >> 2];
                    if (qp->count) {
                        qp->head = (qp->head + 1) % e->sq_depth;
                        qp->count--;
                    }
                } else if (n == 1 && wc.status != IBV_WC_SUCCESS) {
                    break;
                }
            }
        }
    }
    c->state = _NIXL_VERBS_CONN_FAILED;
    if (c->peer && c->peer->conn == c) c->peer->conn = NULL;
    _nixl_verbs_conn_destroy(e, c);
}

static void _nixl_verbs_destroy(void *engine) {
    _nixl_verbs_engine_t *e = (_nixl_verbs_engine_t *)engine;
    int i;
    if (!e) return;
    _nixl_verbs_reap(e);
    while (e->peers) { /* close everything, the accepting halves of loopback last */
        _nixl_verbs_peer_t *p = e->peers;
        while (p->next && p->self_passive) p = p->next;
        if (p->conn) _nixl_verbs_conn_close(e, p->conn);
        _nixl_verbs_peer_free(e, p);
    }
    if (e->self) {
        if (e->self->conn) _nixl_verbs_conn_close(e, e->self->conn);
        _nixl_verbs_peer_fail_reqs(e, e->self, NIXL_ERR_REMOTE_DISCONNECT);
        _nixl_verbs_stage_destroy(e, e->self->stage);
        if (e->self->name) nixl_backend_free(e->be, e->self->name);
        nixl_backend_free(e->be, e->self);
    }
    _nixl_verbs_reap(e);
    while (e->reqs) _nixl_verbs_req_free(e, e->reqs);
    while (e->rmds) {
        _nixl_verbs_rmd_t *r = e->rmds;
        e->rmds = r->next;
        nixl_backend_free(e->be, r);
    }
    while (e->mds) {
        _nixl_verbs_md_t *m = e->mds;
        e->mds = m->next;
        _nixl_verbs_md_drop_mrs(e, m);
        nixl_backend_free(e->be, m);
    }
    if (e->listen_id) rdma_destroy_id(e->listen_id);
    if (e->ch) rdma_destroy_event_channel(e->ch);
    for (i = e->ndev - 1; i >= 0; i--)
        if (e->devs[i].pd) ibv_dealloc_pd(e->devs[i].pd);
    if (e->ctx_list) rdma_free_devices(e->ctx_list);
    _nixl_cuda_close(&e->cuda);
    if (e->name) nixl_backend_free(e->be, e->name);
    nixl_backend_free(e->be, e->wrs);
    nixl_backend_free(e->be, e->sges);
    nixl_backend_free(e->be, e);
}

// >>memory (vtable)

static int _nixl_verbs_access(void) {
    return IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE |
           IBV_ACCESS_RELAXED_ORDERING;
}

static int _nixl_verbs_dmabuf_supported(_nixl_verbs_engine_t *e, _nixl_verbs_dev_t *d) {
    if (!d->dmabuf_probed) {
        struct ibv_mr *mr;
        d->dmabuf_probed = 1;
        errno = 0;
        mr = ibv_reg_dmabuf_mr(d->pd, 0, 4096, 0, -1, 0); /* EBADF: the call exists */
        if (mr) ibv_dereg_mr(mr);
        d->dmabuf_ok = !mr && errno == EBADF;
        nixl_backend_log(e->be, NIXL_LOG_INFO, "verbs: %s dma-buf registration %s", d->name,
                         d->dmabuf_ok ? "supported" : "not supported");
    }
    return d->dmabuf_ok;
}

static int _nixl_verbs_peermem_loaded(void) {
    return access("/sys/kernel/mm/memory_peers/nv_mem/version", F_OK) == 0 ||
           access("/sys/module/nvidia_peermem", F_OK) == 0;
}

/* dma-buf of the allocation's page-aligned range, registered at the
   region's offset in it. */
static struct ibv_mr *_nixl_verbs_reg_dmabuf(_nixl_verbs_engine_t *e, _nixl_verbs_dev_t *d, const nixl_desc_t *r,
                                             uintptr_t base, size_t size) {
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t start, end;
    struct ibv_mr *mr;
    int fd = -1;
    if (pg <= 0) pg = 4096;
    start = base & ~((uintptr_t)pg - 1);
    end = (base + size + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1);
    if (e->cuda.cuMemGetHandleForAddressRange(&fd, (_nixl_CUdeviceptr)start, end - start,
                                              _NIXL_CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0) != 0 || fd < 0) {
        nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: cuMemGetHandleForAddressRange(%p, %zu) gave no dma-buf fd",
                         (void *)start, (size_t)(end - start));
        return NULL;
    }
    mr = ibv_reg_dmabuf_mr(d->pd, r->addr - start, r->len, r->addr, fd, _nixl_verbs_access());
    if (!mr)
        nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: ibv_reg_dmabuf_mr(%p, %zu) on %s failed: %s",
                         (void *)r->addr, r->len, d->name, strerror(errno));
    close(fd); /* the MR holds its own reference */
    return mr;
}

/* GPUDirect on every device: dma-buf, else peermem. 0, or -1 with nothing
   registered (and *why saying what is missing). */
static int _nixl_verbs_reg_direct(_nixl_verbs_engine_t *e, _nixl_verbs_md_t *m, const nixl_desc_t *r,
                                  uintptr_t base, size_t size, int want, const char **why) {
    int d;
    int dmabuf = (want == NIXL_VERBS_PATH_NONE || want == NIXL_VERBS_PATH_DMABUF) && !e->copy_custom &&
                 e->cuda.cuMemGetHandleForAddressRange;
    int peermem = (want == NIXL_VERBS_PATH_NONE || want == NIXL_VERBS_PATH_PEERMEM) && _nixl_verbs_peermem_loaded();
    for (d = 0; d < e->ndev; d++)
        if (!_nixl_verbs_dmabuf_supported(e, &e->devs[d])) dmabuf = 0;
    m->path = NIXL_VERBS_PATH_NONE;
    for (d = 0; d < e->ndev && dmabuf; d++)
        if ((m->mr[d] = _nixl_verbs_reg_dmabuf(e, &e->devs[d], r, base, size)) == NULL) dmabuf = 0;
    if (dmabuf) {
        m->path = NIXL_VERBS_PATH_DMABUF;
        return 0;
    }
    _nixl_verbs_md_drop_mrs(e, m);
    for (d = 0; d < e->ndev && peermem; d++)
        if ((m->mr[d] = ibv_reg_mr(e->devs[d].pd, (void *)r->addr, r->len, _nixl_verbs_access())) == NULL) {
            nixl_backend_log(e->be, NIXL_LOG_WARN, "verbs: ibv_reg_mr(GPU %p, %zu) with nvidia-peermem on %s "
                             "failed: %s", (void *)r->addr, r->len, e->devs[d].name, strerror(errno));
            peermem = 0;
        }
    if (peermem) {
        m->path = NIXL_VERBS_PATH_PEERMEM;
        return 0;
    }
    _nixl_verbs_md_drop_mrs(e, m);
    *why = e->copy_custom ? "copy ops installed (no CUDA dma-buf)"
           : !e->cuda.cuMemGetHandleForAddressRange ? "no dma-buf in this CUDA driver (needs >= 11.7)"
           : !_nixl_verbs_peermem_loaded() ? "no dma-buf on the NIC/kernel, and nvidia-peermem is not loaded"
                                           : "dma-buf and peermem registration failed";
    return -1;
}

/* VRAM: confirm device memory of the descriptor's GPU, then the best path
   the machine allows (or the one vram_path= forces). */
static nixl_status_t _nixl_verbs_reg_vram(_nixl_verbs_engine_t *e, _nixl_verbs_md_t *m, const nixl_desc_t *r) {
    int gpu = -1;
    uintptr_t base = 0;
    size_t size = 0;
    const char *why = "";
    nixl_status_t st;
    if (!e->copy_custom && _nixl_verbs_cuda_load(e) != 0) return NIXL_ERR_NOT_SUPPORTED;
    st = _nixl_vram_check(e->be, "verbs", e->copy.query, e->copy.ctx, r, &gpu, &base, &size);
    if (st != NIXL_SUCCESS) return st;
    m->gpu = gpu;
    if (e->vram_path != NIXL_VERBS_PATH_STAGING && _nixl_verbs_reg_direct(e, m, r, base, size, e->vram_path, &why) == 0)
        return NIXL_SUCCESS;
    if (e->vram_path != NIXL_VERBS_PATH_NONE && e->vram_path != NIXL_VERBS_PATH_STAGING) {
        nixl_backend_log_item(e->be, NIXL_LOG_ERROR, NIXL_LOGITEM_VERBS_VRAM_PATH_UNAVAILABLE, "verbs: register_mem: vram_path=%s is not available for %p: %s",
                         nixl_verbs_mem_path_str((nixl_verbs_mem_path_t)e->vram_path), (void *)r->addr, why);
        return NIXL_ERR_NOT_SUPPORTED;
    }
    if (e->vram_path == NIXL_VERBS_PATH_NONE)
        nixl_backend_log_item(e->be, NIXL_LOG_WARN, NIXL_LOGITEM_VERBS_STAGED, "verbs: GPU %d memory %p+%zu is staged through host buffers (%s): "
                         "slower than GPUDirect RDMA", gpu, (void *)r->addr, r->len, why);
    m->path = NIXL_VERBS_PATH_STAGING;
    e->nstaged++;
    return NIXL_SUCCESS;
}

static nixl_status_t _nixl_verbs_register_mem(void *engine, nixl_mem_t mem, const nixl_desc_t *region, void **md_out) {
    _nixl_verbs_engine_t *e = (_nixl_verbs_engine_t *)engine;
    _nixl_verbs_md_t *m;
    nixl_status_t st = NIXL_SUCCESS;
    int d;
    if (mem != NIXL_DRAM && mem != NIXL_VRAM) return NIXL_ERR_NOT_SUPPORTED;
    m = (_nixl_verbs_md_t *)nixl_backend_alloc(e->be, sizeof *m);
    if (!m) return NIXL_ERR_BACKEND;
    m->mem = mem;
    m->addr = region->addr;
    m->len = region->len;
    m->path = NIXL_VERBS_PATH_HOST;
    if (mem == NIXL_VRAM) st = _nixl_verbs_reg_vram(e, m, region);
    for (d = 0; d < e->ndev && st == NIXL_SUCCESS && mem == NIXL_DRAM; d++) {
        m->mr[d] = ibv_reg_mr(e->devs[d].pd, (void *)region->addr, region->len, _nixl_verbs_access());
        if (!m->mr[d]) {
            int err = errno;
            nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: register_mem: ibv_reg_mr(%p, %zu) on %s failed: %s%s",
                             (void *)region->addr, region->len, e->devs[d].name, strerror(err),
                             _nixl_verbs_errno_hint(err));
            st = NIXL_ERR_BACKEND;
        }
    }
    if (st != NIXL_SUCCESS) {
        _nixl_verbs_md_drop_mrs(e, m);
        nixl_backend_free(e->be, m);
        return st;
    }
    if (m->path != NIXL_VERBS_PATH_HOST)
        nixl_backend_log(e->be, NIXL_LOG_INFO, "verbs: GPU %d memory %p+%zu registered via %s", m->gpu,
                         (void *)region->addr, region->len, nixl_verbs_mem_path_str((nixl_verbs_mem_path_t)m->path));
    if (m->path == NIXL_VERBS_PATH_STAGING) {
        /* peers cannot reach it: they learn so and refuse transfers to it */
        m->pub[0] = _NIXL_VERBS_PUB_STAGED;
        m->pub[1] = 0;
        m->pub_len = 2;
    } else {
        m->pub[0] = _NIXL_VERBS_PUB_VERSION;
        m->pub[1] = (unsigned char)e->ndev;
        for (d = 0; d < e->ndev; d++) {
            _nixl_put32(m->pub + 2 + 12 * d, m->mr[d]->rkey);
            _nixl_put64(m->pub + 2 + 12 * d + 4, (uint64_t)region->addr);
        }
        m->pub_len = 2 + 12 * (size_t)e->ndev;
    }
    m->next = e->mds;
    if (e->mds) e->mds->prev = m;
    e->mds = m;
    *md_out = m;
    return NIXL_SUCCESS;
}

static void _nixl_verbs_deregister_mem(void *engine, void *md) {
    _nixl_verbs_engine_t *e = (_nixl_verbs_engine_t *)engine;
    _nixl_verbs_md_t *m = (_nixl_verbs_md_t *)md;
    if (!m) return;
    _nixl_verbs_md_drop_mrs(e, m);
    if (m->path == NIXL_VERBS_PATH_STAGING) e->nstaged--;
    if (m->prev) m->prev->next = m->next; else e->mds = m->next;
    if (m->next) m->next->prev = m->prev;
    nixl_backend_free(e->be, m);
}

static nixl_status_t _nixl_verbs_get_public_data(void *engine, void *md, const void **data, size_t *len) {
    _nixl_verbs_md_t *m = (_nixl_verbs_md_t *)md;
    (void)engine;
    *data = m->pub;
    *len = m->pub_len;
    return NIXL_SUCCESS;
}

// >>peers' memory (vtable)

static _nixl_verbs_rmd_t *_nixl_verbs_rmd_new(_nixl_verbs_engine_t *e, uintptr_t addr, size_t len, uint32_t rkey,
                                              uint64_t base) {
    _nixl_verbs_rmd_t *r = (_nixl_verbs_rmd_t *)nixl_backend_alloc(e->be, sizeof *r);
    if (!r) return NULL;
    r->addr = addr;
    r->len = len;
    r->rkey = rkey;
    r->base = base;
    r->next = e->rmds;
    if (e->rmds) e->rmds->prev = r;
    e->rmds = r;
    return r;
}

static nixl_status_t _nixl_verbs_load_remote_md(void *engine, const char *remote, nixl_mem_t mem,
                                                const nixl_desc_t *region, const void *pub, size_t len, void **rmd) {
    _nixl_verbs_engine_t *e = (_nixl_verbs_engine_t *)engine;
    const unsigned char *p = (const unsigned char *)pub;
    _nixl_verbs_rmd_t *r;
    (void)mem;
    if (p && len == 2 && p[0] == _NIXL_VERBS_PUB_STAGED && p[1] == 0) {
        r = _nixl_verbs_rmd_new(e, region->addr, region->len, 0, 0);
        if (!r) return NIXL_ERR_BACKEND;
        r->staged = 1;
        *rmd = r;
        return NIXL_SUCCESS;
    }
    /* version, device count, then per device rkey u32 + base u64; the
       peer's primary device comes first and is the one we talk to */
    if (!p || len < 2 + 12 || p[0] != _NIXL_VERBS_PUB_VERSION || p[1] == 0 || len != 2 + 12 * (size_t)p[1]) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: malformed public data (%zu bytes) for a region of %s", len,
                         remote);
        return NIXL_ERR_INVALID_PARAM;
    }
    r = _nixl_verbs_rmd_new(e, region->addr, region->len, _nixl_get32(p + 2), _nixl_get64(p + 6));
    if (!r) return NIXL_ERR_BACKEND;
    *rmd = r;
    return NIXL_SUCCESS;
}

static nixl_status_t _nixl_verbs_load_local_md(void *engine, void *md, void **rmd) {
    _nixl_verbs_engine_t *e = (_nixl_verbs_engine_t *)engine;
    _nixl_verbs_md_t *m = (_nixl_verbs_md_t *)md;
    int staged = m->path == NIXL_VERBS_PATH_STAGING;
    _nixl_verbs_rmd_t *r = _nixl_verbs_rmd_new(e, m->addr, m->len, staged ? 0 : m->mr[0]->rkey, (uint64_t)m->addr);
    if (!r) return NIXL_ERR_BACKEND;
    r->staged = staged;
    *rmd = r;
    return NIXL_SUCCESS;
}

static void _nixl_verbs_unload_md(void *engine, void *rmd) {
    _nixl_verbs_engine_t *e = (_nixl_verbs_engine_t *)engine;
    _nixl_verbs_rmd_t *r = (_nixl_verbs_rmd_t *)rmd;
    if (!r) return;
    if (r->prev) r->prev->next = r->next; else e->rmds = r->next;
    if (r->next) r->next->prev = r->prev;
    nixl_backend_free(e->be, r);
}

// >>connections (vtable)

static nixl_status_t _nixl_verbs_get_conn_info(void *engine, const void **info, size_t *len) {
    _nixl_verbs_engine_t *e = (_nixl_verbs_engine_t *)engine;
    *info = e->info;
    *len = e->info_len;
    return NIXL_SUCCESS;
}

static nixl_status_t _nixl_verbs_load_remote_conn_info(void *engine, const char *remote, const void *info,
                                                       size_t len) {
    _nixl_verbs_engine_t *e = (_nixl_verbs_engine_t *)engine;
    _nixl_verbs_peer_t *p;
    struct sockaddr_in a;
    uint64_t h = _nixl_verbs_hash(remote);
    if (_nixl_verbs_parse_addr(info, len, &a)) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: connection info of %s is not 'A.B.C.D:PORT'", remote);
        return NIXL_ERR_INVALID_PARAM;
    }
    p = _nixl_verbs_peer_find(e, remote);
    if (!p) /* it may have connected to us already, not yet named */
        for (p = e->peers; p; p = p->next)
            if (!p->self_passive && !p->name && p->hash == h) break;
    if (p && !p->name) {
        p->name = _nixl_verbs_strdup(e, remote, strlen(remote));
        if (!p->name) return NIXL_ERR_BACKEND;
    }
    if (!p) p = _nixl_verbs_peer_new(e, remote, h);
    if (!p) return NIXL_ERR_BACKEND;
    if (p->is_self) return NIXL_SUCCESS;
    p->addr = a;
    p->has_addr = 1;
    p->loaded = 1;
    if (p->conn && p->conn->passive && !p->conn->proven && !nixl_backend_auth_on(e->be) &&
        p->conn->state == _NIXL_VERBS_CONN_UP) {
        /* it connected before we knew it: now its address can be checked */
        if (_nixl_verbs_from_its_address(p->conn)) p->conn->proven = 1;
        else _nixl_verbs_drop_impostor(e, p->conn, "it does not come from the address in its metadata");
    }
    return NIXL_SUCCESS;
}

static int _nixl_verbs_peer_ready(const _nixl_verbs_peer_t *p) {
    return p->conn && p->conn->state == _NIXL_VERBS_CONN_UP && p->conn->proven;
}

static nixl_status_t _nixl_verbs_connect(void *engine, const char *remote) {
    _nixl_verbs_engine_t *e = (_nixl_verbs_engine_t *)engine;
    _nixl_verbs_peer_t *p = _nixl_verbs_peer_find(e, remote);
    if (!p) return NIXL_ERR_NOT_FOUND;
    if (_nixl_verbs_peer_ready(p)) return NIXL_SUCCESS;
    if (p->conn && p->conn->state == _NIXL_VERBS_CONN_FAILED) return NIXL_ERR_REMOTE_DISCONNECT;
    if (!p->conn && !p->wait_passive && _nixl_verbs_conn_start(e, p)) return NIXL_ERR_REMOTE_DISCONNECT;
    return NIXL_IN_PROG;
}

static nixl_status_t _nixl_verbs_disconnect(void *engine, const char *remote) {
    _nixl_verbs_engine_t *e = (_nixl_verbs_engine_t *)engine;
    _nixl_verbs_peer_t *p = _nixl_verbs_peer_find(e, remote);
    if (!p) return NIXL_ERR_NOT_FOUND;
    _nixl_verbs_reap(e);
    _nixl_verbs_peer_fail_reqs(e, p, NIXL_ERR_REMOTE_DISCONNECT);
    if (p->conn) _nixl_verbs_conn_close(e, p->conn);
    if (!p->is_self) _nixl_verbs_peer_free(e, p);
    return NIXL_SUCCESS;
}

// >>transfers (vtable)

static void _nixl_verbs_req_free(_nixl_verbs_engine_t *e, _nixl_verbs_req_t *r) {
    if (r->prev) r->prev->next = r->next; else e->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
    if (r->cw) nixl_backend_free(e->be, r->cw);
    if (r->notif) nixl_backend_free(e->be, r->notif);
    if (r->swr) nixl_backend_free(e->be, r->swr);
    nixl_backend_free(e->be, r);
}

/* WRs of a descriptor of len bytes cut in slices (no division for the
   common case: a descriptor smaller than a slice) */
static uint64_t _nixl_verbs_slices(size_t len, uint32_t slice) {
    return len <= slice ? 1 : (len + slice - 1) / slice;
}

/* One pass over the descriptors: which need the bounce buffers (-1:
   refused, a peer's staged VRAM; 0 none; else the GPU of the first staged
   one + 1), and how many WRs they make with and without staging's slice. */
static int _nixl_verbs_prep_scan(_nixl_verbs_engine_t *e, const nixl_xfer_args_t *a, uint64_t *wrs,
                                 uint64_t *staged_wrs) {
    uint32_t sslice = e->slice < e->stage_size ? e->slice : e->stage_size;
    size_t i;
    int gpu = 0;
    *wrs = *staged_wrs = 0;
    for (i = 0; i < a->count; i++) {
        const _nixl_verbs_md_t *lm = (const _nixl_verbs_md_t *)a->descs[i].lmd;
        const _nixl_verbs_rmd_t *rm = (const _nixl_verbs_rmd_t *)a->descs[i].rmd;
        if (rm->staged) {
            nixl_backend_log_item(e->be, NIXL_LOG_ERROR, NIXL_LOGITEM_VERBS_REMOTE_STAGED, "verbs: prep_xfer: descriptor %zu: %s's memory at %p is GPU "
                             "memory its NIC cannot reach (staged there, no GPUDirect RDMA): transfers must start "
                             "at %s", i, a->remote, (void *)a->descs[i].raddr, a->remote);
            return -1;
        }
        if (lm->path == NIXL_VERBS_PATH_STAGING && !gpu) gpu = lm->gpu + 1;
        *wrs += _nixl_verbs_slices(a->descs[i].len, e->slice);
        *staged_wrs += _nixl_verbs_slices(a->descs[i].len, sslice);
    }
    return gpu;
}

/* Resolves keys and addresses once, slices large descriptors and lays the
   WRs out per QP (round-robin striping) so post only links and posts. */
static nixl_status_t _nixl_verbs_prep_xfer(void *engine, const nixl_xfer_args_t *a, void **handle) {
    _nixl_verbs_engine_t *e = (_nixl_verbs_engine_t *)engine;
    _nixl_verbs_peer_t *p = _nixl_verbs_peer_find(e, a->remote);
    _nixl_verbs_req_t *r;
    uint64_t total = 0, staged_total = 0;
    uint32_t cursor[_NIXL_VERBS_MAX_QPS];
    uint32_t lane = 0, slice = e->slice;
    size_t i;
    int q, staged;
    if (!p) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: prep_xfer: no connection info for %s", a->remote);
        return NIXL_ERR_NOT_FOUND;
    }
    if ((a->lmem != NIXL_DRAM && a->lmem != NIXL_VRAM) || (a->rmem != NIXL_DRAM && a->rmem != NIXL_VRAM))
        return NIXL_ERR_NOT_SUPPORTED;
    if ((staged = _nixl_verbs_prep_scan(e, a, &total, &staged_total)) < 0) return NIXL_ERR_NOT_SUPPORTED;
    if (staged && _nixl_verbs_stage_make(e, p, staged - 1) != NIXL_SUCCESS) return NIXL_ERR_BACKEND;
    if (staged && slice > e->stage_size) slice = e->stage_size; /* a slice fills one bounce buffer */
    if (staged) total = staged_total;
    if (total > 0xffffffffu) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: prep_xfer: %llu WRs after slicing: too many",
                         (unsigned long long)total);
        return NIXL_ERR_INVALID_PARAM;
    }
    r = (_nixl_verbs_req_t *)nixl_backend_alloc(e->be, sizeof *r);
    if (!r) return NIXL_ERR_BACKEND;
    r->peer = p;
    r->op = a->op;
    r->host_src = a->op == NIXL_WRITE && a->lmem == NIXL_DRAM;
    r->nwr = (uint32_t)total;
    r->nqp = staged ? 1 : r->nwr < e->nqp ? (int)(r->nwr ? r->nwr : 1) : (int)e->nqp;
    r->qmask = r->nwr ? (r->nqp >= 32 ? 0xffffffffu : (1u << r->nqp) - 1) : 0;
    r->status = NIXL_ERR_NOT_POSTED;
    r->am.id = _NIXL_VERBS_AM_NOTIF;
    r->am.req = r;
    /* always: a later post may add a notification, and post cannot allocate */
    r->notif_cap = e->notif_buf_size - _NIXL_VERBS_AM_HDR;
    r->notif = (unsigned char *)nixl_backend_alloc(e->be, r->notif_cap);
    r->am.data = r->notif;
    if (r->nwr) {
        r->cw = (_nixl_verbs_cwr_t *)nixl_backend_alloc(e->be, (size_t)r->nwr * sizeof *r->cw);
        if (staged) r->swr = (_nixl_verbs_swr_t *)nixl_backend_alloc(e->be, (size_t)r->nwr * sizeof *r->swr);
    }
    if ((r->nwr && (!r->cw || (staged && !r->swr))) || !r->notif) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: prep_xfer: out of memory for %u WRs", (unsigned)r->nwr);
        _nixl_verbs_req_free(e, r);
        return NIXL_ERR_BACKEND;
    }
    /* slice s goes to QP s % nqp; each QP's WRs are contiguous */
    for (q = 0; q < r->nqp; q++) r->qcount[q] = r->nwr / (uint32_t)r->nqp + ((uint32_t)q < r->nwr % (uint32_t)r->nqp);
    for (q = 0; q < r->nqp; q++) {
        r->qstart[q] = q ? r->qstart[q - 1] + r->qcount[q - 1] : 0;
        cursor[q] = r->qstart[q];
    }
    for (i = 0; i < a->count; i++) {
        const nixl_xfer_desc_t *d = &a->descs[i];
        const _nixl_verbs_md_t *lm = (const _nixl_verbs_md_t *)d->lmd;
        const _nixl_verbs_rmd_t *rm = (const _nixl_verbs_rmd_t *)d->rmd;
        size_t off;
        for (off = 0; off < d->len; off += slice) {
            uint32_t k = cursor[lane]++;
            size_t n = d->len - off < slice ? d->len - off : slice;
            _nixl_verbs_cwr_t *w = &r->cw[k];
            w->laddr = (uint64_t)(d->laddr + off);
            w->len = (uint32_t)n;
            if (lm->path == NIXL_VERBS_PATH_STAGING) { /* the bounce buffer is chosen at post */
                r->swr[k].dptr = d->laddr + off;
                r->swr[k].gpu = lm->gpu;
                w->lkey = 0;
            } else {
                w->lkey = lm->mr[0]->lkey;
            }
            w->raddr = rm->base + (uint64_t)(d->raddr - rm->addr) + off;
            w->rkey = rm->rkey;
            if (++lane == (uint32_t)r->nqp) lane = 0; /* slices go round-robin over the lanes */
        }
    }
    r->next = e->reqs;
    if (e->reqs) e->reqs->prev = r;
    e->reqs = r;
    *handle = r;
    return NIXL_SUCCESS;
}

/* No allocation, no lookup: reset counters, link and post what fits, queue
   the rest (and everything while the connection is being made). */
static nixl_status_t _nixl_verbs_post_xfer(void *engine, void *handle, const void *notif, size_t notif_len,
                                           int has_notif) {
    _nixl_verbs_engine_t *e = (_nixl_verbs_engine_t *)engine;
    _nixl_verbs_req_t *r = (_nixl_verbs_req_t *)handle;
    _nixl_verbs_peer_t *p = r->peer;
    int q;
    if (!p) return NIXL_ERR_REMOTE_DISCONNECT;
    if (r->active) return NIXL_ERR_REPOST_ACTIVE;
    if (p->conn && p->conn->state == _NIXL_VERBS_CONN_FAILED) return NIXL_ERR_REMOTE_DISCONNECT;
    if (has_notif) {
        if (notif_len > r->notif_cap) {
            nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: notification of %zu bytes refused: the limit is %u "
                             "(notif_buf_size - 8)", notif_len, (unsigned)r->notif_cap);
            return NIXL_ERR_INVALID_PARAM;
        }
        if (notif_len) memcpy(r->notif, notif, notif_len);
        r->am.len = (uint32_t)notif_len;
    }
    for (q = 0; q < r->nqp; q++) r->qposted[q] = 0;
    r->qdone = 0;
    r->snext = r->sdone = 0;
    r->notif_state = has_notif ? _NIXL_VERBS_NOTIF_WAITING : _NIXL_VERBS_NOTIF_NONE;
    r->status = NIXL_IN_PROG;
    r->active = 1;
    if (r->nwr == 0 && !has_notif) {
        _nixl_verbs_req_finish(r, NIXL_SUCCESS);
        return NIXL_SUCCESS;
    }
    _nixl_verbs_bl_add(p, r);
    if (_nixl_verbs_peer_ready(p)) _nixl_verbs_pump_backlog(e, p->conn);
    else if (!p->conn) p->want_connect = 1; /* progress connects (allocation happens there) */
    return r->status;
}

static nixl_status_t _nixl_verbs_check_xfer(void *engine, void *handle) {
    (void)engine;
    return ((_nixl_verbs_req_t *)handle)->status;
}

/* Aborts a request in flight: what is on the wire completes into records
   that no longer name it; nothing of it is touched afterwards. */
static nixl_status_t _nixl_verbs_release_xfer(void *engine, void *handle) {
    _nixl_verbs_engine_t *e = (_nixl_verbs_engine_t *)engine;
    _nixl_verbs_req_t *r = (_nixl_verbs_req_t *)handle;
    _nixl_verbs_peer_t *p = r->peer;
    if (p) {
        _nixl_verbs_conn_t *c = p->conn;
        _nixl_verbs_bl_remove(p, r);
        if (r->notif_state == _NIXL_VERBS_NOTIF_QUEUED) _nixl_verbs_am_unlink(p, &r->am);
        _nixl_verbs_recs_forget(e, c, r);
        if (r->swr) _nixl_verbs_stage_orphan(p, r);
    }
    _nixl_verbs_req_free(e, r);
    return NIXL_SUCCESS;
}

// >>notifications (vtable)

static nixl_status_t _nixl_verbs_gen_notif(void *engine, const char *remote, const void *msg, size_t len) {
    _nixl_verbs_engine_t *e = (_nixl_verbs_engine_t *)engine;
    _nixl_verbs_peer_t *p = _nixl_verbs_peer_find(e, remote);
    _nixl_verbs_am_t *m;
    if (!p) return NIXL_ERR_NOT_FOUND;
    if (len + _NIXL_VERBS_AM_HDR > e->notif_buf_size ||
        (p->conn && p->conn->peer_buf_size && len + _NIXL_VERBS_AM_HDR > p->conn->peer_buf_size)) {
        nixl_backend_log(e->be, NIXL_LOG_ERROR, "verbs: gen_notif of %zu bytes refused: larger than one buffer "
                         "(notif_buf_size %u, 8 bytes of header)", len, (unsigned)e->notif_buf_size);
        return NIXL_ERR_INVALID_PARAM;
    }
    if (p->conn && p->conn->state == _NIXL_VERBS_CONN_FAILED) return NIXL_ERR_REMOTE_DISCONNECT;
    if (p->am_bytes + len > _NIXL_VERBS_AM_BACKLOG) {
        /* the peer returns no credit (it does not drain): the caller retries */
        nixl_backend_log(e->be, NIXL_LOG_DEBUG, "verbs: gen_notif to %s: flow control: %zu bytes wait for the "
                         "peer's credit; not queued", remote, p->am_bytes);
        return NIXL_IN_PROG;
    }
    m = (_nixl_verbs_am_t *)nixl_backend_alloc(e->be, sizeof *m + len);
    if (!m) return NIXL_ERR_BACKEND;
    m->id = _NIXL_VERBS_AM_NOTIF;
    m->len = (uint32_t)len;
    m->data = (const unsigned char *)(m + 1);
    if (len) memcpy(m + 1, msg, len);
    _nixl_verbs_am_push(p, m);
    if (_nixl_verbs_peer_ready(p)) _nixl_verbs_flush_am(e, p->conn);
    else if (!p->conn) p->want_connect = 1;
    return NIXL_SUCCESS;
}

// >>progress

static int _nixl_verbs_peer_progress(_nixl_verbs_engine_t *e, _nixl_verbs_peer_t *p) {
    int did = 0, batches;
    if (p->conn && p->conn->passive && !p->conn->proven && p->conn->state == _NIXL_VERBS_CONN_UP &&
        nixl_backend_auth_on(e->be) && nixl_now_us() - p->conn->up_at > _NIXL_VERBS_PROVE_US) {
        /* with a token a connector proves itself in its first message */
        _nixl_verbs_drop_impostor(e, p->conn, "no proof of the auth token within 5 s");
        return 1;
    }
    if (!p->conn && p->wait_passive && nixl_now_us() - p->wait_since > _NIXL_VERBS_WAIT_PASSIVE_US) {
        p->wait_passive = 0; /* the winner never came: try ourselves */
        p->want_connect = 1;
    }
    if (!p->conn && !p->wait_passive && (p->want_connect || p->bl_head || p->am_head)) {
        _nixl_verbs_conn_start(e, p);
        return 1;
    }
    if (!p->conn || !p->conn->cq || p->conn->state == _NIXL_VERBS_CONN_FAILED) return did;
    for (batches = 0; batches < 64; batches++) {
        _nixl_verbs_conn_t *c = p->conn;
        int n;
        if (!c || c->state == _NIXL_VERBS_CONN_FAILED) return 1;
        n = _nixl_verbs_poll_conn(e, c);
        if (n < 0) return 1;
        if (n > 0) did = 1;
        if (n < _NIXL_VERBS_POLL_BATCH) break;
    }
    if (p->stage) did |= _nixl_verbs_stage_poll(e, p);
    if (p->conn && p->conn->held_n) did |= _nixl_verbs_release_held(e, p->conn);
    if (p->conn && p->conn->state == _NIXL_VERBS_CONN_UP) {
        _nixl_verbs_pump_backlog(e, p->conn);
        if (p->conn && p->conn->state == _NIXL_VERBS_CONN_UP) _nixl_verbs_flush_am(e, p->conn);
    }
    return did;
}

static nixl_status_t _nixl_verbs_progress(void *engine) {
    _nixl_verbs_engine_t *e = (_nixl_verbs_engine_t *)engine;
    _nixl_verbs_peer_t *p, *next;
    /* Reading the CM channel costs a system call even when it is empty; its
       events (connects, disconnects) are not latency-critical, completions
       are: read it every _NIXL_VERBS_CM_EVERY passes, and on the next pass
       again while events keep coming (a connection being set up). */
    int did = 0;
    if (e->cm_wait-- == 0) {
        did = _nixl_verbs_cm_progress(e) > 0;
        e->cm_wait = did ? 0 : _NIXL_VERBS_CM_EVERY - 1;
    }
    did |= _nixl_verbs_peer_progress(e, e->self);
    for (p = e->peers; p; p = next) {
        next = p->next; /* p may be freed (unknown peers are forgotten on failure) */
        did |= _nixl_verbs_peer_progress(e, p);
    }
    _nixl_verbs_reap(e);
    return did ? NIXL_IN_PROG : NIXL_SUCCESS;
}

// >>public

static nixl_backend_ops_t _nixl_verbs_ops;
static pthread_once_t _nixl_verbs_once = PTHREAD_ONCE_INIT;

/* the vtable, field by field (as every backend fills its own) */
static void _nixl_verbs_init_ops(void) {
    nixl_backend_ops_t *o = &_nixl_verbs_ops;
    o->name = "VERBS";
    o->abi = NIXL_BACKEND_ABI;
    o->mem_mask = NIXL_MEM_BIT(NIXL_DRAM) | NIXL_MEM_BIT(NIXL_VRAM);
    o->caps = NIXL_CAP_NOTIF | NIXL_CAP_LOCAL | NIXL_CAP_REMOTE;
    o->param_keys = _nixl_verbs_param_keys;
    o->create = _nixl_verbs_create;
    o->destroy = _nixl_verbs_destroy;
    o->register_mem = _nixl_verbs_register_mem;
    o->deregister_mem = _nixl_verbs_deregister_mem;
    o->get_public_data = _nixl_verbs_get_public_data;
    o->get_conn_info = _nixl_verbs_get_conn_info;
    o->load_remote_conn_info = _nixl_verbs_load_remote_conn_info;
    o->connect = _nixl_verbs_connect;
    o->disconnect = _nixl_verbs_disconnect;
    o->load_remote_md = _nixl_verbs_load_remote_md;
    o->load_local_md = _nixl_verbs_load_local_md;
    o->unload_md = _nixl_verbs_unload_md;
    o->prep_xfer = _nixl_verbs_prep_xfer;
    o->post_xfer = _nixl_verbs_post_xfer;
    o->check_xfer = _nixl_verbs_check_xfer;
    o->release_xfer = _nixl_verbs_release_xfer;
    o->estimate_cost = NULL; /* no cost model yet */
    o->gen_notif = _nixl_verbs_gen_notif;
    o->progress = _nixl_verbs_progress;
}

NIXL_API const nixl_backend_ops_t *nixl_verbs_backend(void) {
    pthread_once(&_nixl_verbs_once, _nixl_verbs_init_ops);
    return &_nixl_verbs_ops;
}

NIXL_API const char *nixl_verbs_mem_path_str(nixl_verbs_mem_path_t path) {
    switch (path) {
    case NIXL_VERBS_PATH_HOST: return "host";
    case NIXL_VERBS_PATH_DMABUF: return "dma-buf";
    case NIXL_VERBS_PATH_PEERMEM: return "peermem";
    case NIXL_VERBS_PATH_STAGING: return "staging";
    default: return "none";
    }
}

/* the engine of a VERBS backend, with its agent locked; NULL otherwise */
static _nixl_verbs_engine_t *_nixl_verbs_lock_engine(nixl_backend_t *be, const char *fn) {
    if (!be || be->ops != &_nixl_verbs_ops) {
        if (be) nixl_backend_log(be, NIXL_LOG_ERROR, "%s: backend %s is not VERBS", fn, be->ops->name);
        return NULL;
    }
    _nixl_lock(be->agent);
    return (_nixl_verbs_engine_t *)be->engine;
}

NIXL_API nixl_verbs_mem_path_t nixl_verbs_mem_path(nixl_backend_t *be, const void *addr) {
    _nixl_verbs_engine_t *e = _nixl_verbs_lock_engine(be, "nixl_verbs_mem_path");
    const _nixl_verbs_md_t *m;
    nixl_verbs_mem_path_t path = NIXL_VERBS_PATH_NONE;
    if (!e) return path;
    for (m = e->mds; m; m = m->next)
        if ((uintptr_t)addr >= m->addr && (uintptr_t)addr - m->addr < m->len) {
            path = (nixl_verbs_mem_path_t)m->path;
            break;
        }
    _nixl_unlock(be->agent);
    return path;
}

/* staged requests exist, or a peer's bounce buffers are still in use */
static int _nixl_verbs_staging_busy(const _nixl_verbs_engine_t *e) {
    const _nixl_verbs_req_t *r;
    const _nixl_verbs_peer_t *p;
    for (r = e->reqs; r; r = r->next)
        if (r->swr) return 1;
    for (p = e->peers; p; p = p->next)
        if (p->stage && p->stage->nfree != p->stage->count) return 1;
    return e->self->stage && e->self->stage->nfree != e->self->stage->count;
}

NIXL_API nixl_status_t nixl_verbs_set_copy_ops(nixl_backend_t *be, const nixl_verbs_copy_ops_t *ops) {
    _nixl_verbs_engine_t *e = _nixl_verbs_lock_engine(be, "nixl_verbs_set_copy_ops");
    _nixl_verbs_peer_t *p;
    nixl_status_t st = NIXL_SUCCESS;
    if (!e) return NIXL_ERR_INVALID_PARAM;
    if (!_nixl_copy_ops_complete(be, "nixl_verbs_set_copy_ops", ops)) {
        st = NIXL_ERR_INVALID_PARAM;
    } else if (e->nstaged || _nixl_verbs_staging_busy(e)) {
        nixl_backend_log_item(be, NIXL_LOG_ERROR, NIXL_LOGITEM_COPY_ENGINE_BUSY, "nixl_verbs_set_copy_ops: the current copy engine is in use (%u staged "
                         "regions, or staged requests and copies): release and deregister them first",
                         (unsigned)e->nstaged);
        st = NIXL_ERR_NOT_ALLOWED;
    } else {
        /* bounce buffers were pinned and their events made by the old engine */
        for (p = e->peers; p; p = p->next) {
            _nixl_verbs_stage_destroy(e, p->stage);
            p->stage = NULL;
        }
        _nixl_verbs_stage_destroy(e, e->self->stage);
        e->self->stage = NULL;
        _nixl_copy_ops_install(&e->copy, &e->copy_custom, ops, &e->cuda);
    }
    _nixl_unlock(be->agent);
    return st;
}

#endif /* NIXL_IMPLEMENTATION && !NIXL_VERBS_IMPLEMENTATION_DONE */
