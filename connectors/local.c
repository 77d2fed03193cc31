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
 * The command runs through proc.c (own process group, stdin /dev/null, no
 * inherited descriptors, a deadline that stops the whole group); this file
 * decides what may run, with which arguments and environment, and what the
 * result says.
 *
 * Threads: the state is read-only after local_new, and every call keeps its
 * own argv, environment and run, so several threads may invoke at once.
 */
#include <pwd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "connectors/connectors.h"
#include "connectors/connectors_int.h"

#define LOCAL_OUTPUT_MAX_DEFAULT 65536
#define LOCAL_OUTPUT_MAX_LIMIT (16L * 1024 * 1024)
#define LOCAL_TIMEOUT_DEFAULT_S 30
#define LOCAL_TIMEOUT_MAX_S 3600
#define LOCAL_VALUE_MAX 1024
#define LOCAL_ARGS_MAX 256
#define LOCAL_ARG_BYTES 8192
#define LOCAL_ALLOW_MAX 1024

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
        if (!bt_connectors__abs_path_ok(path)) {
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
    char what[32];
    if (bt_connectors__unsafe_char(v, n, what, sizeof what)) {
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

/* ---- the result ---------------------------------------------------------- */

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
            bt_connectors__strv_free(argv);
            return e;
        }
    }

    /* Checked here rather than at configuration time so a host without an
     * optional tool still loads; the user gets a message they can act on. */
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
        bt_fmt(err, errlen, "%s is not installed on the baton host (%s)", cmd_name, path);
        bt_connectors__strv_free(argv);
        return BT_ECONNECTOR;
    }
    if (access(path, X_OK) != 0) {
        bt_fmt(err, errlen, "%s is not executable by baton (%s)", cmd_name, path);
        bt_connectors__strv_free(argv);
        return BT_ECONNECTOR;
    }

    long timeout_s = bt_connectors__tool_long(tool, "timeout_s", LOCAL_TIMEOUT_DEFAULT_S, 1,
                                              LOCAL_TIMEOUT_MAX_S);
    size_t max = (size_t)bt_connectors__tool_long(tool, "output_max", (long)l->output_max, 1,
                                                  LOCAL_OUTPUT_MAX_LIMIT);
    long max_lines = bt_connectors__tool_long(tool, "output_lines", 0, 0, 100000);

    char **envp = child_env();
    struct bt_connectors__proc p = {path, argv,         envp, "/", (int64_t)timeout_s * 1000,
                                    max,  "the command"};
    struct bt_connectors__run r;
    enum bt_err e = bt_connectors__proc_run(&p, &r, err, errlen);
    bt_connectors__strv_free(envp);
    if (e != BT_OK) {
        bt_connectors__strv_free(argv);
        bt_connectors__run_free(&r);
        return e;
    }

    int code = r.exit_code, sig = r.signal;
    bool cut = false;
    json_t *res = json_object();
    json_t *argv_json = json_array();
    for (size_t i = 0; i < argc; i++)
        json_array_append_new(argv_json, json_string(argv[i]));
    json_object_set_new(res, "command", argv_json);
    json_object_set_new(res, "exit_code", json_integer(code));
    if (sig)
        json_object_set_new(res, "signal", json_integer(sig));
    json_object_set_new(res, "stdout",
                        bt_connectors__output_json(r.out.buf.data ? r.out.buf.data : "",
                                                   r.out.buf.len, SIZE_MAX, max_lines, &cut));
    json_object_set_new(res, "stderr",
                        bt_connectors__output_json(r.err.buf.data ? r.err.buf.data : "",
                                                   r.err.buf.len, SIZE_MAX, 0, &cut));
    json_object_set_new(res, "truncated", json_boolean(r.out.truncated || r.err.truncated || cut));
    json_object_set_new(res, "timed_out", json_boolean(r.timed_out));
    json_object_set_new(res, "duration_ms", json_integer(r.elapsed_ms));

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
    bt_connectors__strv_free(argv);
    bt_connectors__run_free(&r);
    *result = res;
    return e;
}

const struct bt_connectors__ops bt_connectors__local_ops = {
    "local", local_new, local_check_tool, local_invoke, local_free,
};
