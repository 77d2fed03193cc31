/*
 * harness.h - run the built `baton` binary from a test: capture its output
 * and exit code with a bounded wait, start it in the background, remove a
 * temporary tree. Shared by the integration tests.
 */
#ifndef BT_TEST_HARNESS_H
#define BT_TEST_HARNESS_H

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bot/util.h"

#define RUN_TIMEOUT_MS 60000

static inline int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

struct out {
    int code;
    char *out;
    char *err;
};

static inline void out_free(struct out *o)
{
    free(o->out);
    free(o->err);
}

/* Run baton with args (NULL-terminated) in cwd (NULL: here) with one extra
 * environment assignment (or NULL); capture both streams; bounded wait. */
static inline struct out run_in(const char *cwd, const char *env_kv, const char *const *args)
{
    struct out o = {.code = -1};
    int po[2], pe[2];
    if (pipe(po) || pipe(pe))
        return o;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close(po[0]);
        close(pe[0]);
        if (cwd && chdir(cwd) != 0)
            _exit(127);
        if (env_kv)
            putenv((char *)env_kv);
        const char *argv[64] = {BATON_BIN};
        size_t n = 1;
        for (; args[n - 1] && n < 63; n++)
            argv[n] = args[n - 1];
        argv[n] = NULL;
        execv(BATON_BIN, (char *const *)argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    bt_buf bo = BT_BUF_INIT(0), be = BT_BUF_INIT(0);
    struct pollfd fds[2] = {{po[0], POLLIN, 0}, {pe[0], POLLIN, 0}};
    int open_fds = 2;
    int64_t deadline = bt_mono_ms() + RUN_TIMEOUT_MS;
    while (open_fds > 0 && bt_mono_ms() < deadline) {
        if (poll(fds, 2, 1000) < 0 && errno != EINTR)
            break;
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP)))
                continue;
            char buf[4096];
            ssize_t k = read(fds[i].fd, buf, sizeof buf);
            if (k <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
            } else {
                bt_buf_append(i ? &be : &bo, buf, (size_t)k);
            }
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0)
            close(fds[i].fd);
    if (open_fds > 0)
        kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    o.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    o.out = bt_buf_steal(&bo);
    o.err = bt_buf_steal(&be);
    return o;
}

/* Start baton with args in the background (output discarded); its pid. */
static inline pid_t spawn_bg(const char *const *args)
{
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        const char *argv[64] = {BATON_BIN};
        size_t n = 1;
        for (; args[n - 1] && n < 63; n++)
            argv[n] = args[n - 1];
        argv[n] = NULL;
        execv(BATON_BIN, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* Remove a directory tree (no shell). */
static inline void rm_tree(const char *dir)
{
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- a test configuration: the shipped one with some tools replaced --- */

static char cfgdir[600];

static inline char *slurp(const char *path)
{
    char *text = NULL;
    char err[BT_ERRLEN];
    return bt_read_file(path, 1 << 22, &text, NULL, err, sizeof err) == BT_OK ? text : NULL;
}

static inline void spit(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* Replace the first occurrence of from by to in a heap string. */
static inline char *replace(char *s, const char *from, const char *to)
{
    char *at = s ? strstr(s, from) : NULL;
    if (!at)
        return s;
    char *out = bt_asprintf("%.*s%s%s", (int)(at - s), s, to, at + strlen(from));
    free(s);
    return out;
}

/* Write the test configuration under base/config (into cfgdir); tool_edits
 * holds pairs of (text in tools.yaml, replacement), NULL-terminated. */
static inline bool make_config_with(const char *base, const char *const *tool_edits)
{
    char p[700], q[700];
    bt_fmt(cfgdir, sizeof cfgdir, "%s/config", base);
    mkdir(cfgdir, 0700);
    bt_fmt(p, sizeof p, "%s/intents", cfgdir);
    mkdir(p, 0700);
    static const char *const intents[] = {"assets",      "automation", "configuration",
                                          "information", "monitoring", "troubleshooting",
                                          "vocabulary",  "words",      NULL};
    for (size_t i = 0; intents[i]; i++) {
        bt_fmt(p, sizeof p, "%s/config/intents/%s.yaml", BT_SOURCE_DIR, intents[i]);
        bt_fmt(q, sizeof q, "%s/intents/%s.yaml", cfgdir, intents[i]);
        char *t = slurp(p);
        if (!t)
            return false;
        spit(q, t);
        free(t);
    }
    bt_fmt(p, sizeof p, "%s/config/inventory.yaml", BT_SOURCE_DIR);
    bt_fmt(q, sizeof q, "%s/inventory.yaml", cfgdir);
    char *t = slurp(p);
    spit(q, t ? t : "");
    free(t);
    bt_fmt(p, sizeof p, "%s/config/tools.yaml", BT_SOURCE_DIR);
    bt_fmt(q, sizeof q, "%s/tools.yaml", cfgdir);
    t = slurp(p);
    bool ok = t != NULL;
    for (size_t i = 0; tool_edits[i] && tool_edits[i + 1]; i += 2) {
        ok = ok && strstr(t, tool_edits[i]) != NULL;
        t = replace(t, tool_edits[i], tool_edits[i + 1]);
    }
    spit(q, t ? t : "");
    free(t);
    bt_fmt(p, sizeof p, "%s/config/baton.yaml", BT_SOURCE_DIR);
    bt_fmt(q, sizeof q, "%s/baton.yaml", cfgdir);
    t = replace(slurp(p), "      systemctl: /usr/bin/systemctl\n",
                "      systemctl: /usr/bin/systemctl\n      sleep: /usr/bin/sleep\n"
                "      true: /usr/bin/true\n");
    spit(q, t ? t : "");
    ok = ok && t && strstr(t, "sleep: /usr/bin/sleep");
    free(t);
    return ok;
}

#endif
