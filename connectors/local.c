/*
 * local.c - the `local` connector: allow-listed commands run on the baton
 * host as an argv vector, never through a shell.
 *
 * baton.yaml:
 *   local:
 *     type: local
 *     output_max: 65536          # bytes kept per stream (stdout, stderr)
 *     allow: {df: /usr/bin/df}   # command name -> absolute path
 *
 * A tool's `command:` is an argv template. command[0] names an allow-listed
 * command (argv[0] becomes its absolute path); every "{name}" in the other
 * elements is replaced by the input of that name. Input values that reach
 * the command are refused unless they are 1-1024 characters of
 * [A-Za-z0-9@%+=:,./_-] and do not start with '-': no shell is involved, so
 * this is not about quoting; it keeps values from being read as options and
 * keeps odd bytes away from programs that may interpret them.
 *
 * Threads: the state is read-only after local_new, and every call keeps its
 * own pipes, buffers and child, so several threads may invoke at once. All
 * descriptors are created close-on-exec so a child started by another
 * thread at the same moment cannot inherit them.
 *
 * Children: each call waits only for its own pid. A process that sets
 * SIGCHLD to SIG_IGN, or reaps with waitpid(-1), would take the exit status
 * away; baton does neither.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "connectors/connectors.h"
#include "connectors/connectors_int.h"

#define LOCAL_OUTPUT_MAX_DEFAULT 65536
#define LOCAL_OUTPUT_MAX_LIMIT (16L * 1024 * 1024)
#define LOCAL_TIMEOUT_DEFAULT_S 30
#define LOCAL_TIMEOUT_MAX_S 3600
#define LOCAL_TERM_GRACE_MS 2000 /* SIGTERM to SIGKILL */
#define LOCAL_REAP_MAX_MS 5000   /* after SIGKILL, how long we wait to reap */
#define LOCAL_LINGER_MS 1000     /* after exit, how long we read pipes a grandchild holds */
#define LOCAL_VALUE_MAX 1024
#define LOCAL_ARGS_MAX 256
#define LOCAL_ARG_BYTES 8192
#define LOCAL_ALLOW_MAX 1024
#define LOCAL_CHUNK 65536

struct local_cmd {
    char *name;
    char *path;
};

struct local {
    char *name; /* the connector's name in baton.yaml */
    struct local_cmd *allow;
    size_t nallow;
    size_t output_max;
};

/* ---- configuration ------------------------------------------------------ */

static bool cmd_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || !strchr("._+-", c)))
            return false;
    }
    return true;
}

/* Absolute, without "." or ".." components or empty ones, no control bytes. */
static bool abs_path_ok(const char *p)
{
    if (p[0] != '/' || strlen(p) > 4096)
        return false;
    for (const char *s = p; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    const char *seg = p + 1;
    for (;;) {
        const char *end = strchr(seg, '/');
        size_t len = end ? (size_t)(end - seg) : strlen(seg);
        if (len == 0 || (len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.'))
            return false;
        if (!end)
            return true;
        seg = end + 1;
    }
}

static void local_free(void *state)
{
    struct local *l = state;
    if (!l)
        return;
    for (size_t i = 0; i < l->nallow; i++) {
        free(l->allow[i].name);
        free(l->allow[i].path);
    }
    free(l->allow);
    free(l->name);
    free(l);
}

static void *local_new(const struct bt_connectors__where *w, const char *name,
                       const char *store_location, bt_diag *d)
{
    (void)store_location;
    bool ok = true;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)w->conf, key, v)
    {
        if (strcmp(key, "type") != 0 && strcmp(key, "allow") != 0 &&
            strcmp(key, "output_max") != 0) {
            bt_connectors__diag(d, w->doc, w->conf, w->prefix, key,
                                "unknown key (known: type, allow, output_max)");
            ok = false;
        }
    }
    struct local *l = bt_calloc(1, sizeof *l);
    l->name = bt_strdup(name);
    l->output_max = LOCAL_OUTPUT_MAX_DEFAULT;
    json_t *om = json_object_get(w->conf, "output_max");
    if (om) {
        if (!json_is_integer(om) || json_integer_value(om) < 1024 ||
            json_integer_value(om) > LOCAL_OUTPUT_MAX_LIMIT) {
            bt_connectors__diag(d, w->doc, w->conf, w->prefix, "output_max",
                                "must be an integer between 1024 and %ld", LOCAL_OUTPUT_MAX_LIMIT);
            ok = false;
        } else {
            l->output_max = (size_t)json_integer_value(om);
        }
    }
    json_t *allow = json_object_get(w->conf, "allow");
    if (!json_is_object(allow)) {
        bt_connectors__diag(d, w->doc, w->conf, w->prefix, "allow",
                            allow ? "must be a mapping of command name to absolute path"
                                  : "required, missing (a mapping of command name to absolute "
                                    "path; {} allows nothing)");
        local_free(l);
        return NULL;
    }
    char prefix[160];
    bt_fmt(prefix, sizeof prefix, "%s.allow", w->prefix);
    l->allow = bt_calloc(json_object_size(allow), sizeof(struct local_cmd));
    json_object_foreach(allow, key, v)
    {
        if (l->nallow == LOCAL_ALLOW_MAX) {
            bt_connectors__diag(d, w->doc, allow, prefix, key, "more than %d commands",
                                LOCAL_ALLOW_MAX);
            ok = false;
            break;
        }
        if (!cmd_name_ok(key)) {
            bt_connectors__diag(d, w->doc, allow, prefix, key,
                                "command names are 1-64 letters, digits, '.', '_', '+' or '-'");
            ok = false;
            continue;
        }
        const char *path = json_string_value(v);
        if (!path || !abs_path_ok(path)) {
            /* Existence is checked when the command runs: the configuration
             * stays valid on a host where an optional tool is not installed. */
            bt_connectors__diag(d, w->doc, allow, prefix, key,
                                "must be an absolute path like /usr/bin/%s (no '.' or '..' parts)",
                                key);
            ok = false;
            continue;
        }
        l->allow[l->nallow].name = bt_strdup(key);
        l->allow[l->nallow].path = bt_strdup(path);
        l->nallow++;
    }
    if (!ok) {
        local_free(l);
        return NULL;
    }
    return l;
}

static const char *allowed_path(const struct local *l, const char *name)
{
    for (size_t i = 0; name && i < l->nallow; i++)
        if (strcmp(l->allow[i].name, name) == 0)
            return l->allow[i].path;
    return NULL;
}

/* Find the next "{name}" in s: returns a pointer to its '{' and sets
 * name and len, or NULL. Braces around anything other than an identifier
 * (a regex's "{1,3}") are left as they are. */
static const char *next_placeholder(const char *s, const char **name, size_t *len)
{
    for (const char *p = strchr(s, '{'); p; p = strchr(p + 1, '{')) {
        const char *q = p + 1;
        if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || *q == '_'))
            continue;
        while ((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') ||
               *q == '_')
            q++;
        if (*q == '}' && q - p - 1 <= 64) {
            *name = p + 1;
            *len = (size_t)(q - p - 1);
            return p;
        }
    }
    return NULL;
}

static bool local_check_tool(void *state, const bt_yaml_doc *doc, const json_t *tool, bt_diag *d)
{
    struct local *l = state;
    bool ok = true;
    const char *op = json_string_value(json_object_get(tool, "operation"));
    if (!op || strcmp(op, "command") != 0) {
        bt_connectors__tool_diag(d, doc, tool, "operation",
                                 "unknown operation '%s' for connector '%s' (type local knows: "
                                 "command)",
                                 op ? op : "", l->name);
        ok = false;
    }
    json_t *cmd = json_object_get(tool, "command");
    if (!json_is_array(cmd) || json_array_size(cmd) == 0 || json_array_size(cmd) > LOCAL_ARGS_MAX) {
        bt_connectors__tool_diag(d, doc, tool, "command",
                                 cmd ? "must be a list of 1-%d strings: [name, arg, ...]"
                                     : "required, missing (a list of 1-%d strings: [name, arg, "
                                       "...])",
                                 LOCAL_ARGS_MAX);
        return false;
    }
    for (size_t i = 0; i < json_array_size(cmd); i++) {
        json_t *a = json_array_get(cmd, i);
        if (!json_is_string(a) || (i == 0 && json_string_length(a) == 0)) {
            bt_connectors__tool_diag(d, doc, tool, "command",
                                     "element %zu must be a string (quote numbers: '3')", i);
            ok = false;
            continue;
        }
        const char *s = json_string_value(a);
        if (i == 0) {
            if (!allowed_path(l, s)) {
                bt_connectors__tool_diag(d, doc, tool, "command",
                                         "'%s' is not in the allow-list of connector '%s' "
                                         "(baton.yaml connectors.%s.allow)",
                                         s, l->name, l->name);
                ok = false;
            }
            continue;
        }
        const char *name;
        size_t len;
        for (const char *p = next_placeholder(s, &name, &len); p;
             p = next_placeholder(name + len + 1, &name, &len)) {
            char input[72];
            bt_strlcpy(input, name, len + 1 < sizeof input ? len + 1 : sizeof input);
            if (!bt_connectors__input_declared(doc, tool, input)) {
                bt_connectors__tool_diag(d, doc, tool, "command",
                                         "placeholder {%s} names no input of the tool", input);
                ok = false;
            }
        }
    }
    json_t *ok_exit = json_object_get(tool, "ok_exit");
    if (ok_exit) {
        bool good = json_is_array(ok_exit) && json_array_size(ok_exit) > 0 &&
                    json_array_size(ok_exit) <= 256;
        for (size_t i = 0; good && i < json_array_size(ok_exit); i++) {
            json_t *e = json_array_get(ok_exit, i);
            good = json_is_integer(e) && json_integer_value(e) >= 0 && json_integer_value(e) <= 255;
        }
        if (!good) {
            bt_connectors__tool_diag(d, doc, tool, "ok_exit",
                                     "must be a list of exit codes 0-255, like [0, 3]");
            ok = false;
        }
    }
    json_t *lines = json_object_get(tool, "output_lines");
    if (lines && (!json_is_integer(lines) || json_integer_value(lines) < 1 ||
                  json_integer_value(lines) > 100000)) {
        bt_connectors__tool_diag(d, doc, tool, "output_lines",
                                 "must be an integer between 1 and 100000");
        ok = false;
    }
    json_t *om = json_object_get(tool, "output_max");
    if (om && (!json_is_integer(om) || json_integer_value(om) < 1 ||
               json_integer_value(om) > LOCAL_OUTPUT_MAX_LIMIT)) {
        bt_connectors__tool_diag(d, doc, tool, "output_max", "must be an integer between 1 and %ld",
                                 LOCAL_OUTPUT_MAX_LIMIT);
        ok = false;
    }
    json_t *runs_on = json_object_get(tool, "runs_on");
    if (runs_on &&
        (!json_is_string(runs_on) || (strcmp(json_string_value(runs_on), "baton") != 0 &&
                                      strcmp(json_string_value(runs_on), "target") != 0))) {
        bt_connectors__tool_diag(d, doc, tool, "runs_on",
                                 "must be 'baton' (the command runs on the baton host against a "
                                 "remote address) or 'target'");
        ok = false;
    }
    return ok;
}

/* ---- building argv ------------------------------------------------------- */

static bool safe_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("@%+=:,./_-", c) != NULL);
}

/* Check one input value bound for argv; BT_EDENIED with a message that names
 * the input and the offending character (never the whole value: it may hold
 * control bytes). */
static enum bt_err check_value(const char *input, const char *v, char *err, size_t errlen)
{
    size_t n = strlen(v);
    if (n == 0) {
        bt_fmt(err, errlen, "input '%s' is empty; refused", input);
        return BT_EDENIED;
    }
    if (n > LOCAL_VALUE_MAX) {
        bt_fmt(err, errlen, "input '%s' is longer than %d characters; refused", input,
               LOCAL_VALUE_MAX);
        return BT_EDENIED;
    }
    if (v[0] == '-') {
        bt_fmt(err, errlen,
               "input '%s' starts with '-' and would be read as an option by the command; refused",
               input);
        return BT_EDENIED;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (safe_char((char)c))
            continue;
        char what[32];
        if (c == ' ')
            bt_fmt(what, sizeof what, "a space");
        else if (c < 0x20 || c >= 0x7f)
            bt_fmt(what, sizeof what, "the byte 0x%02x", c);
        else
            bt_fmt(what, sizeof what, "'%c'", c);
        bt_fmt(err, errlen,
               "input '%s' contains %s; refused (only letters, digits and @%%+=:,./_- are "
               "allowed in values passed to a command)",
               input, what);
        return BT_EDENIED;
    }
    return BT_OK;
}

/* Expand one template element into a new string. */
static enum bt_err expand_arg(const char *tmpl, const json_t *inputs, const char *tool_name,
                              char **out, char *err, size_t errlen)
{
    bt_buf b = BT_BUF_INIT(LOCAL_ARG_BYTES);
    const char *rest = tmpl, *name;
    size_t len;
    enum bt_err e = BT_OK;
    for (const char *p = next_placeholder(rest, &name, &len); p && e == BT_OK;
         p = next_placeholder(rest, &name, &len)) {
        char input[72], num[32];
        bt_strlcpy(input, name, len + 1 < sizeof input ? len + 1 : sizeof input);
        const char *v = bt_connectors__input_str(inputs, input, num, sizeof num);
        if (!v) {
            bt_fmt(err, errlen, "input '%s' is missing (tool %s needs it for its command)", input,
                   tool_name);
            e = BT_EINVAL;
            break;
        }
        if ((e = check_value(input, v, err, errlen)) != BT_OK)
            break;
        if (bt_buf_append(&b, rest, (size_t)(p - rest)) != BT_OK || bt_buf_puts(&b, v) != BT_OK) {
            bt_fmt(err, errlen, "an argument of tool %s is longer than %d bytes", tool_name,
                   LOCAL_ARG_BYTES);
            e = BT_EINVAL;
        }
        rest = name + len + 1;
    }
    if (e == BT_OK && bt_buf_puts(&b, rest) != BT_OK) {
        bt_fmt(err, errlen, "an argument of tool %s is longer than %d bytes", tool_name,
               LOCAL_ARG_BYTES);
        e = BT_EINVAL;
    }
    if (e != BT_OK) {
        bt_buf_free(&b);
        return e;
    }
    *out = bt_buf_steal(&b);
    return BT_OK;
}

static void free_strv(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

/* The whole environment a child gets: nothing of baton's own (which may hold
 * tokens and passwords) is passed on. */
static char **child_env(void)
{
    char **env = bt_calloc(5, sizeof(char *));
    env[0] = bt_strdup("PATH=/usr/sbin:/usr/bin:/sbin:/bin");
    env[1] = bt_strdup("LANG=C.UTF-8");
    env[2] = bt_strdup("LC_ALL=C.UTF-8");
    struct passwd pw, *found = NULL;
    char buf[4096];
    const char *home = "/";
    if (getpwuid_r(getuid(), &pw, buf, sizeof buf, &found) == 0 && found && pw.pw_dir &&
        pw.pw_dir[0] == '/')
        home = pw.pw_dir;
    env[3] = bt_asprintf("HOME=%s", home);
    return env;
}

/* ---- running a child ------------------------------------------------------ */

struct stream {
    int fd;
    bt_buf buf;
    bool truncated;
};

struct run {
    struct stream out, err;
    int status;       /* from waitpid, valid when reaped */
    bool reaped;      /* the child is gone */
    bool status_lost; /* ... but another waiter took its status */
    bool timed_out;   /* the deadline passed and the group was signalled */
    int exec_errno;   /* execve failed in the child with this errno */
    int64_t elapsed;  /* ms */
};

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
static void child_exec(int devnull, int outw, int errw, int exw, int fd_bound, const char *path,
                       char *const argv[], char *const envp[])
{
    /* Own process group, so a timeout can signal the command and anything it
     * started in one kill(-pgid). */
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
    if (chdir("/") != 0)
        _exit(127);
    execve(path, argv, envp);
    int e = errno;
    ssize_t wr = write(3, &e, sizeof e);
    (void)wr;
    _exit(127);
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* Read what is available on s; keep up to max bytes, discard the rest (the
 * child must never block on a full pipe because we stopped reading). */
static void drain(struct stream *s, size_t max, char *chunk)
{
    ssize_t n = read(s->fd, chunk, LOCAL_CHUNK);
    if (n > 0) {
        size_t room = max > s->buf.len ? max - s->buf.len : 0;
        size_t keep = (size_t)n < room ? (size_t)n : room;
        if (keep)
            bt_buf_append(&s->buf, chunk, keep);
        if (keep < (size_t)n)
            s->truncated = true;
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
 * Run path with argv/envp, stdin from /dev/null, stdout and stderr captured
 * (each capped at max bytes), at most timeout_ms. Fills r. Returns BT_OK
 * when the child was started (whatever became of it), else an error.
 *
 * The loop ends when both pipes are closed and the child is reaped. Each
 * turn of the loop reads, or waits in poll() for at most 100 ms, and checks
 * the clock, so it is bounded by the deadline plus the grace periods:
 *   deadline       SIGTERM to the process group
 *   + 2 s          SIGKILL to the process group
 *   + 5 s          give up waiting (reported; never seen outside a hung kernel)
 * Once the child has exited, pipes still held open by something it started
 * are read for LOCAL_LINGER_MS more and then abandoned.
 */
static enum bt_err run_child(const char *path, char *const argv[], char *const envp[],
                             int64_t timeout_ms, size_t max, struct run *r, char *err,
                             size_t errlen)
{
    memset(r, 0, sizeof *r);
    r->out.fd = r->err.fd = -1;
    r->out.buf = (bt_buf)BT_BUF_INIT(max + 1);
    r->err.buf = (bt_buf)BT_BUF_INIT(max + 1);
    int outp[2] = {-1, -1}, errp[2] = {-1, -1}, exe[2] = {-1, -1};
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    /* pipe2(O_CLOEXEC): created close-on-exec atomically, so a fork+exec in
     * another thread between pipe() and fcntl() cannot inherit them. */
    if (devnull < 0 || pipe2(outp, O_CLOEXEC) != 0 || pipe2(errp, O_CLOEXEC) != 0 ||
        pipe2(exe, O_CLOEXEC) != 0) {
        char ebuf[128];
        bt_fmt(err, errlen, "cannot create pipes for the command: %s",
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
        child_exec(devnull, outp[1], errp[1], exe[1], fd_bound, path, argv, envp);
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
        bt_fmt(err, errlen, "cannot start %s: %s", path, strerror_r(fork_errno, ebuf, sizeof ebuf));
        close_fd(&outp[0]);
        close_fd(&errp[0]);
        close_fd(&exe[0]);
        return BT_ECONNECTOR;
    }
    r->out.fd = outp[0];
    r->err.fd = errp[0];
    int exfd = exe[0];

    char *chunk = bt_malloc(LOCAL_CHUNK);
    int64_t deadline = start + timeout_ms;
    int64_t kill_at = 0, give_up_at = 0, linger_until = 0;
    bool term_sent = false, kill_sent = false;
    int idle_ms = 1;
    for (;;) {
        int64_t now = bt_mono_ms();
        if (!r->reaped) {
            pid_t w = waitpid(pid, &r->status, WNOHANG);
            if (w == pid || (w < 0 && errno == ECHILD)) {
                /* ECHILD: something else in the process reaped our child;
                 * the command ended but its status is unknown. */
                r->status_lost = w < 0;
                r->reaped = true;
                linger_until = now + LOCAL_LINGER_MS;
            }
        }
        bool pipes_open = r->out.fd >= 0 || r->err.fd >= 0 || exfd >= 0;
        if (r->reaped && (!pipes_open || now >= linger_until))
            break;
        int64_t next = linger_until;
        if (!r->reaped) {
            if (!term_sent && now >= deadline) {
                r->timed_out = term_sent = true;
                signal_group(pid, SIGTERM);
                kill_at = now + LOCAL_TERM_GRACE_MS;
            } else if (term_sent && !kill_sent && now >= kill_at) {
                kill_sent = true;
                signal_group(pid, SIGKILL);
                give_up_at = now + LOCAL_REAP_MAX_MS;
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
        if (r->out.fd >= 0) {
            pfd[n] = (struct pollfd){r->out.fd, POLLIN, 0};
            which[n++] = &r->out;
        }
        if (r->err.fd >= 0) {
            pfd[n] = (struct pollfd){r->err.fd, POLLIN, 0};
            which[n++] = &r->err;
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
                drain(which[i], max, chunk);
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
    close_fd(&r->out.fd);
    close_fd(&r->err.fd);
    close_fd(&exfd);
    r->elapsed = bt_mono_ms() - start;
    if (!r->reaped) {
        bt_fmt(err, errlen, "%s did not exit even after SIGKILL (pid %ld)", path, (long)pid);
        return BT_ECONNECTOR;
    }
    return BT_OK;
}

/* ---- the result ---------------------------------------------------------- */

/* Output as a JSON string: bytes that are not valid UTF-8, and NULs, become
 * '?', so any program output can be shown and stored. Keeps only the first
 * max_lines lines when max_lines > 0 (sets *cut when some were dropped). */
static json_t *output_string(const char *s, size_t n, long max_lines, bool *cut)
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
        if (len == 0 || i + len > n || !bt_utf8_valid(s + i, len) || c == 0) {
            copy[o++] = '?';
            i++;
            continue;
        }
        memcpy(copy + o, s + i, len);
        o += len;
        i += len;
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

/* The first line of a stream for an error message, at most 200 bytes,
 * printable ASCII only. */
static void first_line(const bt_buf *b, char *out, size_t outlen)
{
    size_t o = 0;
    const char *s = b->data ? b->data : "";
    size_t i = 0;
    while (i < b->len && (s[i] == '\n' || s[i] == ' '))
        i++;
    for (; i < b->len && s[i] != '\n' && o + 1 < outlen && o < 200; i++) {
        char c = '?'; /* printable ASCII only */
        if (s[i] >= 0x20 && s[i] < 0x7f)
            c = s[i];
        out[o++] = c;
    }
    out[o] = '\0';
}

static bool exit_ok(const json_t *tool, int code)
{
    json_t *ok = json_object_get(tool, "ok_exit");
    if (!json_is_array(ok))
        return code == 0;
    for (size_t i = 0; i < json_array_size(ok); i++)
        if (json_integer_value(json_array_get(ok, i)) == code)
            return true;
    return false;
}

static long tool_long(const json_t *tool, const char *key, long dflt, long min, long max)
{
    json_t *v = json_object_get(tool, key);
    long n = dflt;
    if (json_is_integer(v))
        n = (long)json_integer_value(v);
    else if (json_is_string(v) && !bt_parse_long(json_string_value(v), min, max, &n))
        n = dflt;
    return n < min ? min : n > max ? max : n;
}

/* ---- invoke --------------------------------------------------------------- */

static enum bt_err local_invoke(void *state, const json_t *tool, const json_t *inputs,
                                const json_t *target, json_t **result, char *err, size_t errlen)
{
    struct local *l = state;
    const char *tool_name = bt_connectors__tool_name(tool);
    const char *op = json_string_value(json_object_get(tool, "operation"));
    if (!op || strcmp(op, "command") != 0) {
        bt_fmt(err, errlen, "connector '%s' has no operation '%s' (it knows: command)", l->name,
               op ? op : "");
        return BT_EINVAL;
    }
    json_t *cmd = json_object_get(tool, "command");
    size_t argc = json_array_size(cmd);
    if (!json_is_array(cmd) || argc == 0 || argc > LOCAL_ARGS_MAX) {
        bt_fmt(err, errlen, "tool %s has no valid command list", tool_name);
        return BT_EINVAL;
    }
    const char *cmd_name = json_string_value(json_array_get(cmd, 0));
    const char *path = allowed_path(l, cmd_name);
    if (!path) {
        bt_fmt(err, errlen, "command '%s' is not in the allow-list of connector '%s'; refused",
               cmd_name ? cmd_name : "", l->name);
        return BT_EDENIED;
    }

    /* The local runner reaches exactly one machine, the baton host: only an
     * asset that is that host may be acted on, unless the tool runs on the
     * baton host by design and only talks to the target (ping). */
    const char *runs_on = json_string_value(json_object_get(tool, "runs_on"));
    bool on_baton = runs_on && strcmp(runs_on, "baton") == 0;
    if (target && !on_baton) {
        const char *conn = json_string_value(json_object_get(target, "connection"));
        const char *tname = json_string_value(json_object_get(target, "name"));
        if (!conn || strcmp(conn, "local") != 0) {
            bt_fmt(err, errlen,
                   "%s is not reachable by the local runner (connection: %s); only assets with "
                   "connection: local",
                   tname ? tname : "the target", conn ? conn : "unknown");
            return BT_EDENIED;
        }
    } else if (!target && !on_baton && json_object_get(tool, "target")) {
        bt_fmt(err, errlen, "tool %s acts on an asset, but no target asset was given", tool_name);
        return BT_EINVAL;
    }

    char **argv = bt_calloc(argc + 1, sizeof(char *));
    argv[0] = bt_strdup(path);
    for (size_t i = 1; i < argc; i++) {
        const char *tmpl = json_string_value(json_array_get(cmd, i));
        enum bt_err e =
            tmpl ? expand_arg(tmpl, inputs, tool_name, &argv[i], err, errlen) : BT_EINVAL;
        if (e != BT_OK) {
            if (!tmpl)
                bt_fmt(err, errlen, "tool %s: command element %zu is not a string", tool_name, i);
            free_strv(argv);
            return e;
        }
    }

    /* Checked here rather than at configuration time so a host without an
     * optional tool still loads; the user gets a message they can act on. */
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
        bt_fmt(err, errlen, "%s is not installed on the baton host (%s)", cmd_name, path);
        free_strv(argv);
        return BT_ECONNECTOR;
    }
    if (access(path, X_OK) != 0) {
        bt_fmt(err, errlen, "%s is not executable by baton (%s)", cmd_name, path);
        free_strv(argv);
        return BT_ECONNECTOR;
    }

    long timeout_s = tool_long(tool, "timeout_s", LOCAL_TIMEOUT_DEFAULT_S, 1, LOCAL_TIMEOUT_MAX_S);
    size_t max =
        (size_t)tool_long(tool, "output_max", (long)l->output_max, 1, LOCAL_OUTPUT_MAX_LIMIT);
    long max_lines = tool_long(tool, "output_lines", 0, 0, 100000);

    char **envp = child_env();
    struct run r;
    enum bt_err e = run_child(path, argv, envp, (int64_t)timeout_s * 1000, max, &r, err, errlen);
    free_strv(envp);
    if (e != BT_OK) {
        free_strv(argv);
        bt_buf_free(&r.out.buf);
        bt_buf_free(&r.err.buf);
        return e;
    }

    int code = -1, sig = 0;
    if (WIFEXITED(r.status))
        code = WEXITSTATUS(r.status);
    else if (WIFSIGNALED(r.status)) {
        sig = WTERMSIG(r.status);
        code = 128 + sig; /* the shell's convention, so logs read familiar */
    }
    bool cut = false;
    json_t *res = json_object();
    json_t *argv_json = json_array();
    for (size_t i = 0; i < argc; i++)
        json_array_append_new(argv_json, json_string(argv[i]));
    json_object_set_new(res, "command", argv_json);
    json_object_set_new(res, "exit_code", json_integer(code));
    if (sig)
        json_object_set_new(res, "signal", json_integer(sig));
    json_object_set_new(
        res, "stdout",
        output_string(r.out.buf.data ? r.out.buf.data : "", r.out.buf.len, max_lines, &cut));
    json_object_set_new(
        res, "stderr", output_string(r.err.buf.data ? r.err.buf.data : "", r.err.buf.len, 0, &cut));
    json_object_set_new(res, "truncated", json_boolean(r.out.truncated || r.err.truncated || cut));
    json_object_set_new(res, "timed_out", json_boolean(r.timed_out));
    json_object_set_new(res, "duration_ms", json_integer(r.elapsed));

    char line[256];
    if (r.exec_errno) {
        char ebuf[128];
        bt_fmt(err, errlen, "could not run %s (%s): %s", cmd_name, path,
               strerror_r(r.exec_errno, ebuf, sizeof ebuf));
        e = BT_ECONNECTOR;
    } else if (r.status_lost) {
        bt_fmt(err, errlen, "%s ended but its exit status was lost", cmd_name);
        e = BT_ECONNECTOR;
    } else if (r.timed_out) {
        first_line(r.out.buf.len ? &r.out.buf : &r.err.buf, line, sizeof line);
        bt_fmt(err, errlen, "%s did not finish within %ld s and was stopped%s%s", cmd_name,
               timeout_s, line[0] ? "; output so far: " : "", line);
        e = BT_ETIMEOUT;
    } else if (sig) {
        const char *abbrev = sigabbrev_np(sig); /* thread-safe, unlike strsignal */
        bt_fmt(err, errlen, "%s was killed by signal %d (SIG%s)", cmd_name, sig,
               abbrev ? abbrev : "?");
        e = BT_ECONNECTOR;
    } else if (!exit_ok(tool, code)) {
        first_line(r.err.buf.len ? &r.err.buf : &r.out.buf, line, sizeof line);
        bt_fmt(err, errlen, "%s exited with code %d%s%s", cmd_name, code, line[0] ? ": " : "",
               line);
        e = BT_ECONNECTOR;
    }
    free_strv(argv);
    bt_buf_free(&r.out.buf);
    bt_buf_free(&r.err.buf);
    *result = res;
    return e;
}

const struct bt_connectors__ops bt_connectors__local_ops = {
    "local", local_new, local_check_tool, local_invoke, local_free,
};
