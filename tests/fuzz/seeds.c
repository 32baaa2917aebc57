/* seeds.c — writes seed corpora for the fuzz targets: real metadata blobs
   (full, partial, several regions) and real side-channel frames. */
#define NIXL_IMPLEMENTATION
#include "../../nixl.h"
#include "../test_backend.h"

#include <stdio.h>

static void write_file(const char *dir, const char *name, const void *p, size_t n) {
    char path[512];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) {
        perror(path);
        exit(1);
    }
    fclose(f);
}

/* what a client sends on one connection: HELLO (its nonce), then the
   request; mac: 0 (no token) or 32 (two MACs of junk: the listener must
   refuse them) */
static void frame(const char *dir, const char *name, unsigned cmd, size_t mac, const void *pay, size_t len) {
    size_t n = 2 * NIXL_SC_HDR + NIXL_SC_NONCE + 2 * mac + len;
    unsigned char *buf = (unsigned char *)calloc(1, n), *p = buf;
    _nixl_sc_put_header(p, NIXL_SC_HELLO, 0, NIXL_SC_NONCE);
    memset(p + NIXL_SC_HDR, 0x4e, NIXL_SC_NONCE);
    p += NIXL_SC_HDR + NIXL_SC_NONCE;
    _nixl_sc_put_header(p, cmd, mac, len);
    memset(p + NIXL_SC_HDR, 0xa5, mac);
    if (len) memcpy(p + NIXL_SC_HDR + mac, pay, len);
    memset(p + NIXL_SC_HDR + mac + len, 0x5a, mac);
    write_file(dir, name, buf, n);
    free(buf);
}

int main(int argc, char **argv) {
    static unsigned char mem[65536];
    nixl_backend_ops_t ops = tb_make_ops("LOOP", NIXL_MEM_BIT(NIXL_DRAM));
    nixl_agent_config_t cfg;
    nixl_agent_t *a;
    nixl_backend_t *b;
    nixl_desc_t d[4];
    nixl_dlist_t l = {NIXL_DRAM, d, 4};
    nixl_opt_args_t opt;
    void *blob;
    size_t len;
    int i;
    if (argc != 4) {
        fprintf(stderr, "usage: seeds MD_DIR FRAME_DIR AM_DIR\n");
        return 2;
    }
    memset(&cfg, 0, sizeof cfg);
    cfg.name = "seed-agent";
    nixl_agent_create(&cfg, &a);
    nixl_create_backend(a, &ops, NULL, &b);
    for (i = 0; i < 4; i++) {
        d[i].addr = (uintptr_t)mem + (size_t)i * 16384;
        d[i].len = 16384;
        d[i].dev_id = 0;
    }
    nixl_get_local_md(a, &blob, &len);
    write_file(argv[1], "empty", blob, len);
    nixl_free_md(a, blob);
    nixl_register_mem(a, &l, NULL);
    nixl_get_local_md(a, &blob, &len);
    write_file(argv[1], "four-regions", blob, len);
    frame(argv[2], "send-md", NIXL_SC_SEND_MD, 0, blob, len);
    nixl_free_md(a, blob);
    memset(&opt, 0, sizeof opt);
    l.count = 1;
    nixl_get_local_partial_md(a, &l, &opt, &blob, &len);
    write_file(argv[1], "partial", blob, len);
    nixl_free_md(a, blob);
    frame(argv[2], "fetch", NIXL_SC_FETCH_MD, 0, NULL, 0);
    frame(argv[2], "invalidate", NIXL_SC_INVALIDATE, 0, "seed-agent", 10);
    frame(argv[2], "with-macs", NIXL_SC_FETCH_MD, NIXL_MAC_LEN, NULL, 0);
    {
        /* verbs AM frames: {id, flags, credits u16, len u32} + payload */
        static const unsigned char hello[] = {1, 0, 2, 0, 5, 0, 0, 0, 'p', 'e', 'e', 'r', '0'};
        static const unsigned char notif[] = {2, 0, 0, 0, 4, 0, 0, 0, 'd', 'o', 'n', 'e'};
        static const unsigned char credit[] = {3, 0, 8, 0, 0, 0, 0, 0};
        static const unsigned char bye[] = {4, 0, 0, 0, 0, 0, 0, 0};
        write_file(argv[3], "hello", hello, sizeof hello);
        write_file(argv[3], "notif", notif, sizeof notif);
        write_file(argv[3], "credit", credit, sizeof credit);
        write_file(argv[3], "disconnect", bye, sizeof bye);
    }
    nixl_agent_destroy(a);
    return 0;
}
