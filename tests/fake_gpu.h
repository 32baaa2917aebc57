/* fake_gpu.h — a stand-in GPU for tests: host memory behind a copy-ops
   table (nixl_copy_ops_t), for the staging paths of the verbs and file
   backends on machines without a GPU. Copies complete asynchronously, a few
   polls after they start (bytes move only then, as a DMA engine's would, so
   a pipeline that reads too early sees stale data), and can fail on
   request. Include after nixl.h; static functions only. */
#ifndef NIXL_TEST_FAKE_GPU_H
#define NIXL_TEST_FAKE_GPU_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

typedef struct fake_ev {
    int pending, polls, to_device, fail;
    void *host;
    uintptr_t dev;
    size_t len;
} fake_ev;

typedef struct fake_gpu {
    unsigned char *mem; /* "device memory" */
    size_t size;
    int ordinal;
    int delay;          /* polls before a copy completes */
    long copies, events;
    long fail_copy_at;  /* copy number that fails to start (0: none) */
    long fail_done_at;  /* copy number whose completion reports failure */
    int pinned;
} fake_gpu;

static int fake_query(void *ctx, uintptr_t addr, size_t len, int *dev, uintptr_t *base, size_t *size) {
    fake_gpu *g = (fake_gpu *)ctx;
    (void)len;
    if (addr < (uintptr_t)g->mem || addr >= (uintptr_t)g->mem + g->size) return -1;
    *dev = g->ordinal;
    *base = (uintptr_t)g->mem;
    *size = g->size;
    return 0;
}

static int fake_pin(void *ctx, int dev, void *host, size_t len) {
    (void)dev, (void)host, (void)len;
    ((fake_gpu *)ctx)->pinned++;
    return 0;
}

static void fake_unpin(void *ctx, int dev, void *host) {
    (void)dev, (void)host;
    ((fake_gpu *)ctx)->pinned--;
}

static int fake_event_create(void *ctx, int dev, void **ev) {
    fake_gpu *g = (fake_gpu *)ctx;
    if (dev != g->ordinal) return -1;
    *ev = calloc(1, sizeof(fake_ev));
    if (*ev) g->events++;
    return *ev ? 0 : -1;
}

static void fake_event_destroy(void *ctx, void *ev) {
    ((fake_gpu *)ctx)->events--;
    free(ev);
}

static int fake_copy(void *ctx, int dev, int to_device, void *host, uintptr_t device, size_t len, void *ev) {
    fake_gpu *g = (fake_gpu *)ctx;
    fake_ev *e = (fake_ev *)ev;
    g->copies++;
    if (g->fail_copy_at && g->copies == g->fail_copy_at) return -1;
    /* the pipeline must stay inside the device allocation and one buffer */
    if (dev != g->ordinal || device < (uintptr_t)g->mem || device + len > (uintptr_t)g->mem + g->size || e->pending)
        return -1;
    e->pending = 1;
    e->polls = 0;
    e->to_device = to_device;
    e->host = host;
    e->dev = device;
    e->len = len;
    e->fail = g->fail_done_at && g->copies == g->fail_done_at;
    return 0;
}

/* the copy happens when it is seen complete: bytes move late, as a DMA
   engine's would, so a pipeline that reads too early sees stale data */
static int fake_event_done(void *ctx, void *ev) {
    fake_gpu *g = (fake_gpu *)ctx;
    fake_ev *e = (fake_ev *)ev;
    if (!e->pending) return 1;
    if (++e->polls < g->delay) return 0;
    e->pending = 0;
    if (e->fail) return -1;
    if (e->to_device) memcpy((void *)e->dev, e->host, e->len);
    else memcpy(e->host, (const void *)e->dev, e->len);
    return 1;
}

static nixl_copy_ops_t fake_ops(fake_gpu *g) {
    nixl_copy_ops_t o;
    o.query = fake_query;
    o.pin = fake_pin;
    o.unpin = fake_unpin;
    o.event_create = fake_event_create;
    o.event_destroy = fake_event_destroy;
    o.copy = fake_copy;
    o.event_done = fake_event_done;
    o.ctx = g;
    return o;
}

static void fake_init(fake_gpu *g, size_t size, int ordinal) {
    memset(g, 0, sizeof *g);
    g->mem = (unsigned char *)mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g->mem == MAP_FAILED) {
        fprintf(stderr, "mmap of %zu bytes failed\n", size);
        exit(2);
    }
    g->size = size;
    g->ordinal = ordinal;
    g->delay = 3;
}

static void fake_free(fake_gpu *g) { munmap(g->mem, g->size); }

#endif /* NIXL_TEST_FAKE_GPU_H */
