/* fuzz_agent.h — the one agent a fuzz target feeds its inputs to: created
   on first use, silent (NIXL_LOG_LEVEL=none), with the in-process test
   backend. `token` becomes its auth_token (NULL: none). */
#ifndef NIXL_FUZZ_AGENT_H
#define NIXL_FUZZ_AGENT_H

#include "../test_backend.h"

static nixl_agent_t *fuzz_agent(const char *token, nixl_backend_t **backend) {
    static nixl_agent_t *a;
    static nixl_backend_t *b;
    static nixl_backend_ops_t ops;
    if (!a) {
        nixl_agent_config_t cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.name = "fuzz";
        cfg.auth_token = token;
        setenv("NIXL_LOG_LEVEL", "none", 1);
        ops = tb_make_ops("LOOP", NIXL_MEM_BIT(NIXL_DRAM));
        nixl_agent_create(&cfg, &a);
        nixl_create_backend(a, &ops, NULL, &b);
    }
    if (backend) *backend = b;
    return a;
}

#endif
