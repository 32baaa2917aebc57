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

static void frame(const char *dir, const char *name, unsigned cmd, const char *tok, const void *pay, size_t len) {
    unsigned char *buf = (unsigned char *)malloc(NIXL_SC_HDR + strlen(tok) + len);
    _nixl_sc_put_header(buf, cmd, strlen(tok), len);
    memcpy(buf + NIXL_SC_HDR, tok, strlen(tok));
    if (len) memcpy(buf + NIXL_SC_HDR + strlen(tok), pay, len);
    write_file(dir, name, buf, NIXL_SC_HDR + strlen(tok) + len);
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
    frame(argv[2], "send-md", NIXL_SC_SEND_MD, "tok", blob, len);
    nixl_free_md(a, blob);
    memset(&opt, 0, sizeof opt);
    l.count = 1;
    nixl_get_local_partial_md(a, &l, &opt, &blob, &len);
    write_file(argv[1], "partial", blob, len);
    nixl_free_md(a, blob);
    frame(argv[2], "fetch", NIXL_SC_FETCH_MD, "tok", NULL, 0);
    frame(argv[2], "invalidate", NIXL_SC_INVALIDATE, "tok", "seed-agent", 10);
    frame(argv[2], "wrong-token", NIXL_SC_FETCH_MD, "nope", NULL, 0);
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
