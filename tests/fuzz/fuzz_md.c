/* fuzz_md.c — libFuzzer target for the metadata decoder.
   Each input is tried twice: as it is (the CRC check refuses almost all
   mutations) and with its CRC recomputed, so mutations reach the parser
   proper and the loading rules behind it. Nothing may crash, leak or read
   out of bounds; a blob that loads must be invalidated cleanly. */
#define NIXL_IMPLEMENTATION
#include "../../nixl.h"
#include "fuzz_agent.h"

static void try_load(nixl_agent_t *a, const uint8_t *data, size_t size) {
    char name[256];
    if (nixl_load_remote_md(a, data, size, name, sizeof name) == NIXL_SUCCESS) {
        if (nixl_invalidate_remote_md(a, name) != NIXL_SUCCESS) __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    nixl_agent_t *a = fuzz_agent(NULL, NULL);
    uint8_t *copy;
    try_load(a, data, size);
    if (size < 16 || size > (1u << 20)) return 0;
    copy = (uint8_t *)malloc(size);
    memcpy(copy, data, size);
    /* make the length field and CRC agree with the input */
    copy[8] = (uint8_t)size;
    copy[9] = (uint8_t)(size >> 8);
    copy[10] = (uint8_t)(size >> 16);
    copy[11] = (uint8_t)(size >> 24);
    {
        uint32_t c = _nixl_crc32(copy, size - 4);
        copy[size - 4] = (uint8_t)c;
        copy[size - 3] = (uint8_t)(c >> 8);
        copy[size - 2] = (uint8_t)(c >> 16);
        copy[size - 1] = (uint8_t)(c >> 24);
    }
    try_load(a, copy, size);
    free(copy);
    return 0;
}
