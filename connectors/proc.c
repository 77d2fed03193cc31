/*
 * proc.c - the subprocess runner the local and ansible connectors share:
 * one program started as an argv vector (never through a shell), in its own
 * process group, stdin from /dev/null, every other descriptor closed, the
 * environment the caller built and nothing else; stdout and stderr captured
 * up to a cap; a deadline that stops the whole group. What may run, with
 * which arguments and environment, and what the result says is the
 * caller's business; this file only runs it. See connectors_int.h.
 *
 * Threads: every call keeps its own pipes, buffers and child, so several
 * threads may run children at once. All descriptors are created
 * close-on-exec so a child started by another thread at the same moment
 * cannot inherit them.
 *
 * Children: each call waits only for its own pid. A process that sets
 * SIGCHLD to SIG_IGN, or reaps with waitpid(-1), would take the exit status
 * away; baton does neither.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "connectors/connectors_int.h"

#define PROC_TERM_GRACE_MS 2000 /* SIGTERM to SIGKILL */
#define PROC_REAP_MAX_MS 5000   /* after SIGKILL, how long we wait to reap */
#define PROC_LINGER_MS 1000     /* after exit, how long we read pipes a grandchild holds */
#define PROC_CHUNK 65536

/* One of our read ends and where what comes out of it goes. */
struct stream {
    int fd;
    struct bt_connectors__capture *cap;
};

void bt_connectors__strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* Descriptors the child dup2()s onto 0, 1 and 2 must not themselves be 0-2,
 * or one dup2 could overwrite another before it is used (possible when baton
 * runs with a standard stream closed). Moves fd to 3 or above. */
static int above_stdio(int fd)
{
    if (fd < 0 || fd > 2)
        return fd;
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    close(fd);
    return moved;
}

/*
 * In the child between fork and execve. Another thread of baton may have held
 * a lock (malloc's, stdio's) at the moment of fork, so only async-signal-safe
 * calls are made here: everything (argv, envp, paths, the fd bound) was
 * prepared by the parent. Never returns.
 */
static void child_exec(int devnull, int outw, int errw, int exw, int fd_bound,
                       const struct bt_connectors__proc *p)
{
    /* Own process group, so a timeout can signal the command and anything it
     * started (ansible's forks and module processes too) in one kill(-pgid). */
    setpgid(0, 0);
    /* Signal state survives execve: a worker thread's blocked mask, or
     * SIGPIPE ignored by the daemon, would change how the command behaves
     * and could make it deaf to our SIGTERM. Start from the defaults. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; s++)
        sigaction(s, &dfl, NULL); /* fails harmlessly for KILL, STOP, internal ones */
    if (dup2(devnull, 0) < 0 || dup2(outw, 1) < 0 || dup2(errw, 2) < 0)
        _exit(127);
    /* Keep the exec-error pipe as fd 3 (close-on-exec, so a successful exec
     * closes it and the parent reads EOF), close everything else: no socket,
     * store file or pipe of another step leaks into the command. */
    if (exw != 3 && dup3(exw, 3, O_CLOEXEC) < 0)
        _exit(127);
    if (close_range(4, ~0U, 0) != 0)
        for (int fd = 4; fd < fd_bound; fd++)
            close(fd);
    if (chdir(p->cwd) != 0)
        _exit(127);
    execve(p->path, p->argv, p->envp);
    int e = errno;
    ssize_t wr = write(3, &e, sizeof e);
    (void)wr;
    _exit(127);
}

/* Read what is available on s; keep up to max bytes, discard the rest (the
 * child must never block on a full pipe because we stopped reading). */
static void drain(struct stream *s, size_t max, char *chunk)
{
    ssize_t n = read(s->fd, chunk, PROC_CHUNK);
    if (n > 0) {
        bt_buf *buf = &s->cap->buf;
        size_t room = max > buf->len ? max - buf->len : 0;
        size_t keep = (size_t)n < room ? (size_t)n : room;
        if (keep)
            bt_buf_append(buf, chunk, keep);
        if (keep < (size_t)n)
            s->cap->truncated = true;
    } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        close_fd(&s->fd);
    }
}

/* Signal the command's process group; if the group is not there (the
 * child has not reached setpgid, which the parent's own setpgid makes
 * unlikely), the child itself. */
static void signal_group(pid_t pid, int sig)
{
    if (kill(-pid, sig) != 0)
        kill(pid, sig);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/*
 * The loop ends when both pipes are closed and the child is reaped. Each
 * turn of the loop reads, or waits in poll() for at most 100 ms, and checks
 * the clock, so it is bounded by the deadline plus the grace periods:
 *   deadline       SIGTERM to the process group
 *   + 2 s          SIGKILL to the process group
 *   + 5 s          give up waiting (reported; never seen outside a hung kernel)
 * Once the child has exited, pipes still held open by something it started
 * are read for PROC_LINGER_MS more and then abandoned.
 */
enum bt_err bt_connectors__proc_run(const struct bt_connectors__proc *p,
                                    struct bt_connectors__run *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    r->exit_code = -1;
    r->out.buf = (bt_buf)BT_BUF_INIT(p->output_max + 1);
    r->err.buf = (bt_buf)BT_BUF_INIT(p->output_max + 1);
    int outp[2] = {-1, -1}, errp[2] = {-1, -1}, exe[2] = {-1, -1};
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    /* pipe2(O_CLOEXEC): created close-on-exec atomically, so a fork+exec in
     * another thread between pipe() and fcntl() cannot inherit them. */
    if (devnull < 0 || pipe2(outp, O_CLOEXEC) != 0 || pipe2(errp, O_CLOEXEC) != 0 ||
        pipe2(exe, O_CLOEXEC) != 0) {
        char ebuf[128];
        bt_fmt(err, errlen, "cannot create pipes for %s: %s", p->what,
               strerror_r(errno, ebuf, sizeof ebuf));
        close_fd(&devnull);
        for (int i = 0; i < 2; i++) {
            close_fd(&outp[i]);
            close_fd(&errp[i]);
            close_fd(&exe[i]);
        }
        return BT_ECONNECTOR;
    }
    devnull = above_stdio(devnull);
    outp[1] = above_stdio(outp[1]);
    errp[1] = above_stdio(errp[1]);
    exe[1] = above_stdio(exe[1]);
    /* Our read ends are non-blocking so a spurious wake-up never stalls the
     * loop; the child's ends stay blocking (a full pipe makes it wait). */
    fcntl(outp[0], F_SETFL, O_NONBLOCK);
    fcntl(errp[0], F_SETFL, O_NONBLOCK);
    struct rlimit rl;
    int fd_bound = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (rlim_t)fd_bound)
        fd_bound = (int)rl.rlim_cur;

    int64_t start = bt_mono_ms();
    pid_t pid = devnull >= 0 && outp[1] >= 0 && errp[1] >= 0 && exe[1] >= 0 ? fork() : -1;
    if (pid == 0)
        child_exec(devnull, outp[1], errp[1], exe[1], fd_bound, p);
    int fork_errno = errno;
    /* Also set the group from the parent: whichever of the two runs first,
     * the group exists before we might signal it. (Fails harmlessly once
     * the child has exec'd.) */
    if (pid > 0)
        setpgid(pid, pid);
    close_fd(&devnull);
    close_fd(&outp[1]);
    close_fd(&errp[1]);
    close_fd(&exe[1]);
    if (pid < 0) {
        char ebuf[128];
        bt_fmt(err, errlen, "cannot start %s: %s", p->path,
               strerror_r(fork_errno, ebuf, sizeof ebuf));
        close_fd(&outp[0]);
        close_fd(&errp[0]);
        close_fd(&exe[0]);
        return BT_ECONNECTOR;
    }
    struct stream out = {outp[0], &r->out}, errs = {errp[0], &r->err};
    int exfd = exe[0];

    char *chunk = bt_malloc(PROC_CHUNK);
    int status = 0; /* from waitpid, valid when reaped */
    bool reaped = false;
    int64_t deadline = start + p->timeout_ms;
    int64_t kill_at = 0, give_up_at = 0, linger_until = 0;
    bool term_sent = false, kill_sent = false;
    int idle_ms = 1;
    for (;;) {
        int64_t now = bt_mono_ms();
        if (!reaped) {
            pid_t w = waitpid(pid, &status, WNOHANG);
            if (w == pid || (w < 0 && errno == ECHILD)) {
                /* ECHILD: something else in the process reaped our child;
                 * the command ended but its status is unknown. */
                r->status_lost = w < 0;
                reaped = true;
                linger_until = now + PROC_LINGER_MS;
            }
        }
        bool pipes_open = out.fd >= 0 || errs.fd >= 0 || exfd >= 0;
        if (reaped && (!pipes_open || now >= linger_until))
            break;
        int64_t next = linger_until;
        if (!reaped) {
            if (!term_sent && now >= deadline) {
                r->timed_out = term_sent = true;
                signal_group(pid, SIGTERM);
                kill_at = now + PROC_TERM_GRACE_MS;
            } else if (term_sent && !kill_sent && now >= kill_at) {
                kill_sent = true;
                signal_group(pid, SIGKILL);
                give_up_at = now + PROC_REAP_MAX_MS;
            } else if (kill_sent && now >= give_up_at) {
                break;
            }
            next = !term_sent ? deadline : !kill_sent ? kill_at : give_up_at;
        }
        int64_t wait = next - now;
        if (wait > 100)
            wait = 100;
        if (wait < 0)
            wait = 0;
        if (!pipes_open) {
            /* The command closed its output but has not exited: check on it
             * at growing intervals (1, 2, 4 ... 64 ms). */
            sleep_ms(idle_ms < wait ? idle_ms : (int)wait);
            if (idle_ms < 64)
                idle_ms *= 2;
            continue;
        }
        struct pollfd pfd[3];
        struct stream *which[3];
        nfds_t n = 0;
        if (out.fd >= 0) {
            pfd[n] = (struct pollfd){out.fd, POLLIN, 0};
            which[n++] = &out;
        }
        if (errs.fd >= 0) {
            pfd[n] = (struct pollfd){errs.fd, POLLIN, 0};
            which[n++] = &errs;
        }
        if (exfd >= 0) {
            pfd[n] = (struct pollfd){exfd, POLLIN, 0};
            which[n++] = NULL;
        }
        int pr = poll(pfd, n, (int)wait);
        if (pr <= 0)
            continue; /* timeout or EINTR: the clock is checked above */
        for (nfds_t i = 0; i < n; i++) {
            if (!(pfd[i].revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL)))
                continue;
            if (which[i]) {
                drain(which[i], p->output_max, chunk);
                continue;
            }
            int e = 0;
            ssize_t got = read(exfd, &e, sizeof e);
            if (got == (ssize_t)sizeof e)
                r->exec_errno = e;
            if (got >= 0 || errno != EINTR)
                close_fd(&exfd);
        }
    }
    free(chunk);
    /* Something the command started may still hold the pipes; we stop
     * reading and leave it be. It is not signalled again: once the child is
     * reaped its pid, and so the group id, could in principle belong to an
     * unrelated process. */
    close_fd(&out.fd);
    close_fd(&errs.fd);
    close_fd(&exfd);
    r->elapsed_ms = bt_mono_ms() - start;
    if (!reaped) {
        bt_fmt(err, errlen, "%s did not exit even after SIGKILL (pid %ld)", p->path, (long)pid);
        return BT_ECONNECTOR;
    }
    if (WIFEXITED(status)) {
        r->exit_code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
        r->signal = WTERMSIG(status);
        r->exit_code = 128 + r->signal; /* the shell's convention, so logs read familiar */
    }
    return BT_OK;
}

void bt_connectors__run_free(struct bt_connectors__run *r)
{
    bt_buf_free(&r->out.buf);
    bt_buf_free(&r->err.buf);
}

json_t *bt_connectors__output_json(const char *s, size_t n, size_t max, long max_lines, bool *cut)
{
    char *copy = bt_malloc(n + 1);
    size_t o = 0;
    long lines = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80                   ? 1
                     : (c >= 0xC2 && c <= 0xDF) ? 2
                     : (c >= 0xE0 && c <= 0xEF) ? 3
                     : (c >= 0xF0 && c <= 0xF4) ? 4
                                                : 0;
        bool bad = len == 0 || i + len > n || !bt_utf8_valid(s + i, len) || c == 0;
        size_t w = bad ? 1 : len;
        if (o + w > max) {
            *cut = true;
            break;
        }
        if (bad)
            copy[o] = '?';
        else
            memcpy(copy + o, s + i, len);
        o += w;
        i += w;
        if (c == '\n' && max_lines > 0 && ++lines == max_lines) {
            if (i < n)
                *cut = true;
            break;
        }
    }
    json_t *str = json_stringn(copy, o);
    free(copy);
    return str ? str : json_string("");
}
