/* log_capture.h — a thread-safe nixl logger for tests: every line since the
   last logged() call is kept (oldest dropped when the buffer fills), and
   logged(needle) says whether one of them contained needle, then clears;
   seen(needle) asks the same and keeps them.
   NIXL_TEST_VERBOSE=1 also echoes each line. */
#ifndef NIXL_LOG_CAPTURE_H
#define NIXL_LOG_CAPTURE_H

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char lc_buf[65536];
static pthread_mutex_t lc_mu = PTHREAD_MUTEX_INITIALIZER;

static __attribute__((unused)) void capture_log(void *user, int level, const char *msg) {
    size_t used;
    (void)user;
    (void)level;
    pthread_mutex_lock(&lc_mu);
    used = strlen(lc_buf);
    if (used + strlen(msg) + 2 >= sizeof lc_buf) used = lc_buf[0] = 0;
    snprintf(lc_buf + used, sizeof lc_buf - used, "%s\n", msg);
    pthread_mutex_unlock(&lc_mu);
    if (getenv("NIXL_TEST_VERBOSE")) fprintf(stderr, "log: %s\n", msg);
}

static __attribute__((unused)) int logged(const char *needle) {
    int hit;
    pthread_mutex_lock(&lc_mu);
    hit = strstr(lc_buf, needle) != NULL;
    if (!hit) fprintf(stderr, "logged lines: %s", lc_buf);
    lc_buf[0] = 0;
    pthread_mutex_unlock(&lc_mu);
    return hit;
}

/* whether a line since the last logged() contains needle (nothing cleared) */
static __attribute__((unused)) int seen(const char *needle) {
    int hit;
    pthread_mutex_lock(&lc_mu);
    hit = strstr(lc_buf, needle) != NULL;
    pthread_mutex_unlock(&lc_mu);
    return hit;
}

/* forgets every line kept so far */
static __attribute__((unused)) void lc_reset(void) {
    pthread_mutex_lock(&lc_mu);
    lc_buf[0] = 0;
    pthread_mutex_unlock(&lc_mu);
}

#endif
