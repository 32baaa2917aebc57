/* nixl_test.h — the project's test runner: one header, no dependency.

   Each CHECK counts as one check. A failing check prints one line
   "FAIL file:line: expression — detail"; passing checks print nothing
   (NIXL_TEST_VERBOSE=1 prints them too). nt_finish() prints the closing line
   "N passed, M failed" (", K skipped" when something skipped) and returns the
   process exit status: non-zero on any failure.

   Usage:
       #include "nixl_test.h"
       static void test_x(void) { CHECK(1 + 1 == 2); CHECK_ST(f(), NIXL_SUCCESS); }
       int main(int argc, char **argv) { NT_RUN(test_x); return nt_finish(); }
   Running one test: ./t test_x (names given on the command line filter NT_RUN;
   call nt_init(argc, argv) first).

   Forked children: run checks in the child, then nt_child_exit(): the
   child's failures come back as its exit status, which the parent checks
   with CHECK_CHILD(pid).

   Isolation: NT_RUN_ISOLATED(fn, seconds) runs a test in a child process
   of its own with a time limit (a hang ends as one failure, a crash does
   not take the suite down), its checks counted in the parent's totals.
   NIXL_TEST_ISOLATE=1 makes every NT_RUN do that (NIXL_TEST_TIMEOUT
   seconds, default 300); NIXL_TEST_TIMEOUT_SCALE stretches every limit
   (valgrind). nt_process_start/nt_process_end give other children (a test's
   peer process) the same counting and limit.
*/
#ifndef NIXL_TEST_H
#define NIXL_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <signal.h>
#include <errno.h>
#include <unistd.h>
#include <time.h>

#define NT_FN static __attribute__((unused))

static int nt_passed, nt_failed, nt_skipped;
static int nt_argc;
static char **nt_argv;
static const char *nt_current = "";
static int nt_count_fd = -1;  /* where a test's child process reports its check counts */
static double nt_scale = 1;   /* NIXL_TEST_TIMEOUT_SCALE: longer limits (valgrind) */

NT_FN void nt_init(int argc, char **argv) {
    const char *scale = getenv("NIXL_TEST_TIMEOUT_SCALE");
    nt_argc = argc;
    nt_argv = argv;
    if (scale && atof(scale) >= 1) nt_scale = atof(scale);
}

NT_FN int nt_selected(const char *name) {
    int i;
    if (nt_argc <= 1) return 1;
    for (i = 1; i < nt_argc; i++)
        if (strcmp(nt_argv[i], name) == 0) return 1;
    return 0;
}

static int nt_check(int ok, const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
NT_FN int nt_check(int ok, const char *file, int line, const char *expr, const char *fmt, ...) {
    if (ok) {
        nt_passed++;
        if (getenv("NIXL_TEST_VERBOSE")) printf("ok   %s: %s\n", nt_current, expr);
        return 1;
    }
    nt_failed++;
    printf("FAIL %s:%d [%s]: %s", file, line, nt_current, expr);
    if (fmt && *fmt) {
        va_list ap;
        printf(" — ");
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
    }
    printf("\n");
    fflush(stdout);
    return 0;
}

#define CHECK(cond) nt_check(!!(cond), __FILE__, __LINE__, #cond, "%s", "")
#define CHECKF(cond, ...) nt_check(!!(cond), __FILE__, __LINE__, #cond, __VA_ARGS__)
/* status check that prints both names on failure */
#define CHECK_ST(expr, want)                                                              \
    do {                                                                                  \
        nixl_status_t nt_s_ = (expr);                                                     \
        nt_check(nt_s_ == (want), __FILE__, __LINE__, #expr " == " #want, "got %s (%d)", \
                 nixl_status_str(nt_s_), (int)nt_s_);                                     \
    } while (0)
#define SKIP(why)                                                    \
    do {                                                             \
        nt_skipped++;                                                \
        printf("skip %s: %s\n", nt_current, why);                    \
    } while (0)

static void nt_run_isolated(void (*fn)(void), const char *name, unsigned timeout_s);

#define NT_RUN(fn)                                                            \
    do {                                                                      \
        if (getenv("NIXL_TEST_ISOLATE") && atoi(getenv("NIXL_TEST_ISOLATE"))) \
            nt_run_isolated(fn, #fn, nt_default_timeout());                   \
        else if (nt_selected(#fn)) {                                          \
            nt_current = #fn;                                                 \
            if (getenv("NIXL_TEST_VERBOSE"))                                  \
                printf("== %s\n", #fn);                                       \
            fflush(stdout);                                                   \
            fn();                                                             \
        }                                                                     \
    } while (0)
#define NT_RUN_ISOLATED(fn, timeout_s) nt_run_isolated(fn, #fn, timeout_s)

NT_FN unsigned nt_default_timeout(void) {
    const char *t = getenv("NIXL_TEST_TIMEOUT");
    return t && atoi(t) > 0 ? (unsigned)atoi(t) : 300u;
}

/* In a forked child: exit with the number of failures (capped). */
/* this process's resident memory in KiB (VmRSS), -1 if unknown */
NT_FN long nt_rss_kib(void) {
    char line[256];
    long v = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) v = atol(line + 6);
    fclose(f);
    return v;
}

NT_FN void nt_child_exit(void) {
    fflush(stdout);
    _exit(nt_failed > 100 ? 100 : nt_failed);
}

/* Waits for a child; a clean exit 0 is one passed check. */
#define CHECK_CHILD(pid)                                                                         \
    do {                                                                                         \
        int nt_ws_ = 0;                                                                          \
        pid_t nt_r_ = waitpid((pid), &nt_ws_, 0);                                                \
        nt_check(nt_r_ == (pid) && WIFEXITED(nt_ws_) && WEXITSTATUS(nt_ws_) == 0, __FILE__,      \
                 __LINE__, "child ok", "wait=%d exited=%d status=%d signal=%d", (int)nt_r_,     \
                 WIFEXITED(nt_ws_), WIFEXITED(nt_ws_) ? WEXITSTATUS(nt_ws_) : -1,                \
                 WIFSIGNALED(nt_ws_) ? WTERMSIG(nt_ws_) : 0);                                    \
    } while (0)

/* a test's child sends its counts to the parent (nt_count_fd) */
NT_FN void nt_report_counts(void) {
    int v[2];
    v[0] = nt_passed;
    v[1] = nt_failed;
    if (nt_count_fd >= 0 && write(nt_count_fd, v, sizeof v) != (ssize_t)sizeof v) _exit(101);
}

static void nt_on_alarm(int sig) {
    static const char msg[] = "FAIL timeout: the test process hung and was stopped\n";
    (void)sig;
    if (write(1, msg, sizeof msg - 1) < 0) _exit(99);
    nt_failed++;
    nt_report_counts();
    _exit(99);
}

/* In a fresh child: counts start at zero, a hang ends in a failure. */
NT_FN void nt_process_start(unsigned timeout_s) {
    nt_passed = nt_failed = 0;
    signal(SIGALRM, nt_on_alarm);
    alarm((unsigned)(timeout_s * nt_scale));
}

NT_FN void nt_process_end(void) {
    nt_report_counts();
    nt_child_exit();
}

/* Runs fn in a child; adds the child's (and its peers') checks to ours. */
static void nt_run_isolated(void (*fn)(void), const char *name, unsigned timeout_s) {
    int fds[2], v[2];
    pid_t pid;
    if (!nt_selected(name)) return;
    nt_current = name;
    if (getenv("NIXL_TEST_VERBOSE")) printf("== %s\n", name);
    fflush(stdout);
    if (pipe(fds) != 0) {
        CHECKF(0, "pipe: %s", strerror(errno));
        return;
    }
    pid = fork();
    if (pid == 0) {
        close(fds[0]);
        nt_count_fd = fds[1];
        nt_process_start(timeout_s);
        fn();
        nt_process_end();
    }
    close(fds[1]);
    while (read(fds[0], v, sizeof v) == (ssize_t)sizeof v) {
        nt_passed += v[0];
        nt_failed += v[1];
    }
    close(fds[0]);
    CHECK_CHILD(pid);
}

NT_FN int nt_finish(void) {
    if (nt_skipped)
        printf("%d passed, %d failed, %d skipped\n", nt_passed, nt_failed, nt_skipped);
    else
        printf("%d passed, %d failed\n", nt_passed, nt_failed);
    fflush(stdout);
    return nt_failed ? 1 : 0;
}

/* Deterministic byte pattern for buffers: seed picks the sequence. */
NT_FN void nt_fill(void *buf, size_t len, unsigned seed) {
    unsigned char *p = (unsigned char *)buf;
    size_t i;
    unsigned x = seed * 2654435761u + 12345u;
    for (i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        p[i] = (unsigned char)(x >> 16);
    }
}

/* 1 when buf holds nt_fill(seed) */
NT_FN int nt_verify(const void *buf, size_t len, unsigned seed) {
    const unsigned char *p = (const unsigned char *)buf;
    size_t i;
    unsigned x = seed * 2654435761u + 12345u;
    for (i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        if (p[i] != (unsigned char)(x >> 16)) return 0;
    }
    return 1;
}

#endif
