/* fuzz_am.c — libFuzzer target for the verbs backend's active-message
   frames: the input is what a peer's SEND put into one receive buffer,
   parsed by the real _nixl_verbs_am_recv (header, length and id checks,
   HELLO/NOTIF/CREDIT/DISCONNECT handlers) on a connection that exists only
   in memory — no RDMA device is needed. Nothing may crash or read outside
   the buffer; credits may never exceed what the peer could grant. */
#define NIXL_IMPLEMENTATION
#include "../../nixl_verbs.h"
#include "fuzz_agent.h"

static void drop(void *u, const char *from, const void *msg, size_t len) {
    (void)u;
    (void)from;
    (void)msg;
    (void)len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static unsigned char buf[4096];
    nixl_backend_t *be; /* stands in as the engine's core handle */
    nixl_agent_t *a = fuzz_agent(NULL, &be);
    _nixl_verbs_engine_t e;
    _nixl_verbs_conn_t c;
    _nixl_verbs_peer_t p;
    if (size > sizeof buf) return 0;
    memset(&e, 0, sizeof e);
    memset(&c, 0, sizeof c);
    memset(&p, 0, sizeof p);
    e.be = be;
    c.eng = &e;
    c.peer = &p;
    c.state = _NIXL_VERBS_CONN_UP;
    c.buf = buf;
    c.buf_size = sizeof buf;
    c.rx_count = c.peer_rx_count = 16;
    p.loaded = 1;
    p.conn = &c;
    /* a connected, named peer (an unnamed one is a passive connection the
       backend frees on failure: not something a stack object can stand in for) */
    p.name = (char *)nixl_backend_alloc(be, 6);
    memcpy(p.name, "peer0", 6);
    p.hash = _nixl_verbs_hash("peer0");
    memcpy(buf, data, size);
    _nixl_verbs_am_recv(&e, &c, 0, (uint32_t)size);
    if (c.tx_credits > c.peer_rx_count) __builtin_trap();
    nixl_backend_free(be, p.name);
    nixl_get_notifs(a, drop, NULL); /* drains what NOTIF queued; handles reported downs */
    return 0;
}
