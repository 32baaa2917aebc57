/* fuzz_frame.c — libFuzzer target for side-channel frames: the header
   parser, and whole frames fed through a real listener over a socketpair
   is too slow for fuzzing, so the listener's per-connection state machine
   is driven directly with the input as the bytes a peer sent. */
#define NIXL_IMPLEMENTATION
#include "../../nixl.h"
#include "fuzz_agent.h"

#include <sys/socket.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    nixl_agent_t *a = fuzz_agent(NULL, NULL); /* no token: the fuzzer reaches the payload */
    _nixl_sc_conn c;
    unsigned cmd;
    size_t mac, pay;
    int sv[2];
    if (size >= NIXL_SC_HDR) (void)_nixl_sc_parse_header(data, &cmd, &mac, &pay);
    if (size > 65536 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) != 0) return 0;
    if (size && send(sv[1], data, size, MSG_NOSIGNAL) != (ssize_t)size) {
        close(sv[0]);
        close(sv[1]);
        return 0;
    }
    shutdown(sv[1], SHUT_WR); /* the peer sent this and closed */
    memset(&c, 0, sizeof c);
    c.fd = sv[0];
    snprintf(c.peer, sizeof c.peer, "fuzz");
    while (c.fd >= 0) {
        int before = c.phase * 4 + c.part;
        size_t got = c.got, off = c.out_off;
        _nixl_sc_conn_step(a, &c);
        if (c.fd >= 0 && c.phase * 4 + c.part == before && c.got == got && c.out_off == off) break; /* waiting */
    }
    if (c.fd >= 0) _nixl_sc_conn_close(a, &c);
    {
        char buf[4096];
        while (recv(sv[1], buf, sizeof buf, MSG_DONTWAIT) > 0) {
        }
    }
    close(sv[1]);
    return 0;
}
