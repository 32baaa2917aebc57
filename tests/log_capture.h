/* log_capture.h — a thread-safe nixl logger for tests: every line since the
   last logged() call is kept (oldest dropped when the buffer fills), as
   "[ITEM] message" when it comes through capture_log_item (config field
   log_item_fn). Tests ask by stable id: logged_item(NIXL_LOGITEM_X) says
   whether a line carried that id, then clears; seen_item asks the same and
   keeps them. logged(needle)/seen(needle) match text (for values inside a
   message). NIXL_TEST_VERBOSE=1 also echoes each line. */
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

/* the logger with ids: set cfg.log_item_fn = capture_log_item */
static __attribute__((unused)) void capture_log_item(void *user, int level, nixl_log_item_t item, const char *msg) {
    char line[1024];
    snprintf(line, sizeof line, "[%s] %s", nixl_log_item_str(item), msg);
    capture_log(user, level, line);
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

static __attribute__((unused)) const char *lc_item_tag(nixl_log_item_t item, char *buf, size_t cap) {
    snprintf(buf, cap, "[%s]", nixl_log_item_str(item));
    return buf;
}

/* whether a line since the last logged() carried item; then clears */
static __attribute__((unused)) int logged_item(nixl_log_item_t item) {
    char tag[96];
    return logged(lc_item_tag(item, tag, sizeof tag));
}

/* the same, nothing cleared */
static __attribute__((unused)) int seen_item(nixl_log_item_t item) {
    char tag[96];
    return seen(lc_item_tag(item, tag, sizeof tag));
}

/* forgets every line kept so far */
static __attribute__((unused)) void lc_reset(void) {
    pthread_mutex_lock(&lc_mu);
    lc_buf[0] = 0;
    pthread_mutex_unlock(&lc_mu);
}

#endif
