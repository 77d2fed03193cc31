/*
 * ansible.c - the `ansible` connector: runs Debian's `ansible` (one module,
 * ad hoc) or `ansible-playbook` against exactly one asset of the inventory,
 * as an argv vector, never through a shell.
 *
 * baton.yaml:
 *   automation:
 *     type: ansible
 *     ansible: /usr/bin/ansible                    # default
 *     playbook_bin: /usr/bin/ansible-playbook      # default
 *     playbooks_dir: /etc/baton/playbooks          # optional
 *     output_max: 65536
 *     forks: 5
 *     ssh_user: baton                              # optional, -u
 *     private_key_env: BATON_ANSIBLE_KEY           # env var holding a key *path*
 *     password_env: BATON_ANSIBLE_PASSWORD         # env var holding a password
 *     extra_env: [ANSIBLE_COLLECTIONS_PATH]        # names passed through
 *     host_key_checking: true                      # default
 *
 * tools.yaml:
 *   operation: module    module: ansible.builtin.service
 *                        args: {name: '{service}', state: restarted}
 *   operation: playbook  playbook: deploy.yml (a file name in playbooks_dir)
 *                        extra_vars: {version: '{version}'}
 *
 * How results are read. ansible-core 2.14 (Debian 12) ships no `json`
 * stdout callback (that one lives in community.general); its callbacks are
 * default, minimal, oneline, junit and tree. `tree` writes each host's
 * result as one JSON document to DIR/HOSTNAME: exactly the module's return
 * value (changed, failed, unreachable, msg, rc, stdout, stderr, ...). For a
 * module we run `ansible -t DIR`; for a playbook we enable the same
 * callback (ANSIBLE_CALLBACKS_ENABLED=ansible.builtin.tree), which leaves
 * the last task's result per host, and take changed / failed / unreachable
 * over the whole play from the PLAY RECAP line of the default output. The human output on stdout is
 * kept as the playbook's `stdout`. Nothing is parsed out of human text for a module.
 *
 * Every call gets a private directory (mode 0700, removed afterwards) that
 * is the child's HOME and working directory and holds ansible's local
 * temp, the tree and, for local targets, the "remote" temp: baton's own
 * home is never written to and parallel calls never share files.
 *
 * ansible runs through proc.c, the runner the local connector uses too
 * (own process group, stdin /dev/null, no inherited descriptors, the same
 * deadlines); this file decides the argv, the environment and what the
 * result says.
 *
 * Threads: the state is read-only after ansible_new; every call has its own
 * directory, argv, environment and run, so several threads may invoke at
 * once. Secrets and extra_env values are read with getenv when a step runs
 * (so they are never copied into the state); baton does not change its
 * environment after start-up, which is what makes that safe.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "connectors/connectors.h"
#include "connectors/connectors_int.h"

#define ANS_OUTPUT_MAX_DEFAULT 65536
#define ANS_OUTPUT_MAX_LIMIT (16L * 1024 * 1024)
#define ANS_FORKS_DEFAULT 5
#define ANS_FORKS_MAX 50
#define ANS_TIMEOUT_DEFAULT_S 30
#define ANS_TIMEOUT_MAX_S 3600
#define ANS_CONNECT_TIMEOUT_MAX_S 10 /* ssh/winrm connect, so "unreachable" beats the deadline */
#define ANS_VALUE_MAX 1024
#define ANS_ARGS_BYTES 65536 /* the rendered -a / -e JSON */
#define ANS_TREE_DEPTH 4     /* nesting of args / extra_vars */
#define ANS_TREE_NODES 256
#define ANS_EXTRA_ENV_MAX 64
#define ANS_ARGV_MAX 40

struct ansible {
    char *name;          /* the connector's name in baton.yaml */
    char *ansible_bin;   /* ad hoc: one module */
    char *playbook_bin;  /* ansible-playbook */
    char *playbooks_dir; /* NULL: no playbook tools */
    size_t output_max;
    int forks;
    char *ssh_user;        /* NULL: ansible's default (the local user name) */
    char *private_key_env; /* NULL or the name of an env var holding a key path */
    char *password_env;    /* NULL or the name of an env var holding a password */
    bool host_key_checking;
    char **extra_env; /* names, NULL-terminated */
};

/* ---- small checks ---------------------------------------------------------- */

static bool is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* An environment variable name: [A-Za-z_][A-Za-z0-9_]*, up to 128. */
static bool env_name_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 128 || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_alnum(s[i]) && s[i] != '_')
            return false;
    return true;
}

/* A module name as ansible spells it: ansible.builtin.ping, service, ... */
static bool module_name_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 128 || !(s[0] >= 'a' && s[0] <= 'z') || s[n - 1] == '.' || strstr(s, ".."))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' ||
              s[i] == '.'))
            return false;
    return true;
}

/* A playbook's file name inside playbooks_dir: no '/', no "..", .yml/.yaml. */
static bool playbook_name_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 5 || n > 128 || !(is_alnum(s[0]) || s[0] == '_') || strstr(s, ".."))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_alnum(s[i]) && !strchr("._-", s[i]))
            return false;
    return (n > 4 && strcmp(s + n - 4, ".yml") == 0) || (n > 5 && strcmp(s + n - 5, ".yaml") == 0);
}

/* A login name for -u: letters, digits, '.', '_', '-', '@'; not an option. */
static bool user_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 64 || !(is_alnum(s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_alnum(s[i]) && !strchr("._-@", s[i]))
            return false;
    return true;
}

/* The inventory's hostname, used as ansible's inventory name: letters,
 * digits, '.', '-', starting with a letter or digit (never an option). */
static bool hostname_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 253 || !is_alnum(s[0]))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_alnum(s[i]) && s[i] != '.' && s[i] != '-')
            return false;
    return true;
}

static bool ipv4_ok(const char *s)
{
    struct in_addr a;
    return s && strlen(s) <= 15 && inet_pton(AF_INET, s, &a) == 1;
}

/* Keys of args / extra_vars: identifiers. */
static bool var_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64 || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_alnum(s[i]) && s[i] != '_')
            return false;
    return true;
}

/* Names the child's environment gets from baton itself: extra_env may not
 * replace them (the sandbox would be undone), nor pass LD_*. */
static bool env_reserved(const char *s)
{
    static const char *const reserved[] = {
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "ANSIBLE_NOCOLOR",
        "ANSIBLE_RETRY_FILES_ENABLED",
        "ANSIBLE_LOCAL_TEMP",
        "ANSIBLE_REMOTE_TEMP",
        "ANSIBLE_CALLBACKS_ENABLED",
        "ANSIBLE_CALLBACK_TREE_DIR",
        "ANSIBLE_STDOUT_CALLBACK",
        "ANSIBLE_LOAD_CALLBACK_PLUGINS",
        "ANSIBLE_SSH_ARGS",
        "ANSIBLE_TIMEOUT",
        "ANSIBLE_HOST_KEY_CHECKING",
        "ANSIBLE_PRIVATE_KEY_FILE",
        "ANSIBLE_PYTHON_INTERPRETER",
        NULL,
    };
    if (strncmp(s, "LD_", 3) == 0)
        return true;
    for (size_t i = 0; reserved[i]; i++)
        if (strcmp(s, reserved[i]) == 0)
            return true;
    return false;
}

/* ---- configuration --------------------------------------------------------- */

static void ansible_free(void *state)
{
    struct ansible *a = state;
    if (!a)
        return;
    free(a->name);
    free(a->ansible_bin);
    free(a->playbook_bin);
    free(a->playbooks_dir);
    free(a->ssh_user);
    free(a->private_key_env);
    free(a->password_env);
    bt_connectors__strv_free(a->extra_env);
    free(a);
}

/* Read an optional absolute path key into *out (default dflt, may be NULL). */
static bool conf_path(const struct bt_connectors__where *w, const char *key, const char *dflt,
                      char **out, bt_diag *d)
{
    json_t *v = json_object_get(w->conf, key);
    if (!v) {
        *out = dflt ? bt_strdup(dflt) : NULL;
        return true;
    }
    if (!json_is_string(v) || !bt_connectors__abs_path_ok(json_string_value(v))) {
        bt_connectors__diag(d, w->doc, w->conf, w->prefix, key,
                            "must be an absolute path like %s (no '.' or '..' parts)",
                            dflt ? dflt : "/etc/baton/playbooks");
        return false;
    }
    *out = bt_strdup(json_string_value(v));
    return true;
}

/* Read an optional environment variable name. */
static bool conf_env_name(const struct bt_connectors__where *w, const char *key, char **out,
                          bt_diag *d)
{
    json_t *v = json_object_get(w->conf, key);
    if (!v)
        return true;
    if (!json_is_string(v) || !env_name_ok(json_string_value(v))) {
        bt_connectors__diag(d, w->doc, w->conf, w->prefix, key,
                            "must be the name of an environment variable (letters, digits, _), "
                            "never the secret itself");
        return false;
    }
    *out = bt_strdup(json_string_value(v));
    return true;
}

static bool conf_int(const struct bt_connectors__where *w, const char *key, long min, long max,
                     long *out, bt_diag *d)
{
    json_t *v = json_object_get(w->conf, key);
    if (!v)
        return true;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        bt_connectors__diag(d, w->doc, w->conf, w->prefix, key,
                            "must be an integer between %ld and %ld", min, max);
        return false;
    }
    *out = (long)json_integer_value(v);
    return true;
}

static void *ansible_new(const struct bt_connectors__where *w, const char *name,
                         const char *store_location, bt_diag *d)
{
    (void)store_location;
    static const char *const known[] = {
        "type",         "ansible",   "playbook_bin",      "playbooks_dir",
        "output_max",   "forks",     "ssh_user",          "private_key_env",
        "password_env", "extra_env", "host_key_checking", NULL,
    };
    bool ok = true;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)w->conf, key, v)
    {
        size_t i = 0;
        while (known[i] && strcmp(known[i], key) != 0)
            i++;
        if (!known[i]) {
            bt_connectors__diag(d, w->doc, w->conf, w->prefix, key,
                                "unknown key (known: type, ansible, playbook_bin, playbooks_dir, "
                                "output_max, forks, ssh_user, private_key_env, password_env, "
                                "extra_env, host_key_checking)");
            ok = false;
        }
    }
    struct ansible *a = bt_calloc(1, sizeof *a);
    a->name = bt_strdup(name);
    a->host_key_checking = true;
    ok &= conf_path(w, "ansible", "/usr/bin/ansible", &a->ansible_bin, d);
    ok &= conf_path(w, "playbook_bin", "/usr/bin/ansible-playbook", &a->playbook_bin, d);
    ok &= conf_path(w, "playbooks_dir", NULL, &a->playbooks_dir, d);
    long n = ANS_OUTPUT_MAX_DEFAULT;
    ok &= conf_int(w, "output_max", 1024, ANS_OUTPUT_MAX_LIMIT, &n, d);
    a->output_max = (size_t)n;
    n = ANS_FORKS_DEFAULT;
    ok &= conf_int(w, "forks", 1, ANS_FORKS_MAX, &n, d);
    a->forks = (int)n;
    v = json_object_get(w->conf, "ssh_user");
    if (v && (!json_is_string(v) || !user_ok(json_string_value(v)))) {
        bt_connectors__diag(d, w->doc, w->conf, w->prefix, "ssh_user",
                            "must be a user name: letters, digits, '.', '_', '-', '@'");
        ok = false;
    } else if (v) {
        a->ssh_user = bt_strdup(json_string_value(v));
    }
    ok &= conf_env_name(w, "private_key_env", &a->private_key_env, d);
    ok &= conf_env_name(w, "password_env", &a->password_env, d);
    v = json_object_get(w->conf, "host_key_checking");
    if (v && !json_is_boolean(v)) {
        bt_connectors__diag(d, w->doc, w->conf, w->prefix, "host_key_checking",
                            "must be true or false");
        ok = false;
    } else if (v) {
        a->host_key_checking = json_is_true(v);
    }
    json_t *env = json_object_get(w->conf, "extra_env");
    size_t nenv = json_is_array(env) ? json_array_size(env) : 0;
    if (env && (!json_is_array(env) || nenv > ANS_EXTRA_ENV_MAX)) {
        bt_connectors__diag(d, w->doc, w->conf, w->prefix, "extra_env",
                            "must be a list of at most %d environment variable names",
                            ANS_EXTRA_ENV_MAX);
        ok = false;
        nenv = 0;
    }
    a->extra_env = bt_calloc(nenv + 1, sizeof(char *));
    for (size_t i = 0, k = 0; i < nenv; i++) {
        const char *s = json_string_value(json_array_get(env, i));
        if (!env_name_ok(s) || env_reserved(s)) {
            bt_connectors__diag(d, w->doc, w->conf, w->prefix, "extra_env",
                                "element %zu must be an environment variable name that baton "
                                "does not set itself (not PATH, HOME, LANG, LC_ALL, LD_*, or "
                                "the ANSIBLE_* variables baton sets)",
                                i);
            ok = false;
            continue;
        }
        a->extra_env[k++] = bt_strdup(s);
    }
    if (!ok) {
        ansible_free(a);
        return NULL;
    }
    return a;
}

/* ---- placeholders in args / extra_vars ------------------------------------- */

/* Find the next "{name}" in s: returns a pointer to its '{' and sets name
 * and len, or NULL. Jinja's own blocks ("{{ ... }}", "{% ... %}",
 * "{# ... #}") are skipped whole: ansible evaluates them, so an input value
 * must never be put inside one. Braces around anything but an identifier
 * are left alone. */
static const char *next_placeholder(const char *s, const char **name, size_t *len)
{
    for (const char *p = strchr(s, '{'); p; p = strchr(p + 1, '{')) {
        if (p[1] == '{' || p[1] == '%' || p[1] == '#') {
            const char *close = p[1] == '{' ? "}}" : p[1] == '%' ? "%}" : "#}";
            const char *end = strstr(p + 2, close);
            if (!end)
                return NULL;
            p = end; /* the next search starts after the block */
            continue;
        }
        const char *q = p + 1;
        if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || *q == '_'))
            continue;
        while (is_alnum(*q) || *q == '_')
            q++;
        if (*q == '}' && q - p - 1 <= 64) {
            *name = p + 1;
            *len = (size_t)(q - p - 1);
            return p;
        }
    }
    return NULL;
}

/* Check one args / extra_vars tree of a tool: keys are identifiers (and,
 * for extra_vars, not ansible_*: how the host is reached comes from the
 * inventory only), values are scalars or lists / mappings of them, every
 * placeholder names a declared input. */
static bool check_tree(const bt_yaml_doc *doc, const json_t *tool, const char *key, const json_t *v,
                       int depth, size_t *nodes, bt_diag *d)
{
    if (++*nodes > ANS_TREE_NODES || depth > ANS_TREE_DEPTH) {
        bt_connectors__tool_diag(d, doc, tool, key, "more than %d values or %d levels",
                                 ANS_TREE_NODES, ANS_TREE_DEPTH);
        return false;
    }
    bool ok = true;
    if (json_is_string(v)) {
        const char *name;
        size_t len;
        const char *s = json_string_value(v);
        for (const char *p = next_placeholder(s, &name, &len); p;
             p = next_placeholder(name + len + 1, &name, &len)) {
            char input[72];
            bt_strlcpy(input, name, len + 1 < sizeof input ? len + 1 : sizeof input);
            if (!bt_connectors__input_declared(doc, tool, input)) {
                bt_connectors__tool_diag(d, doc, tool, key,
                                         "placeholder {%s} names no input of the tool", input);
                ok = false;
            }
        }
        return ok;
    }
    if (json_is_integer(v) || json_is_real(v) || json_is_boolean(v))
        return true;
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            ok &= check_tree(doc, tool, key, json_array_get(v, i), depth + 1, nodes, d);
        return ok;
    }
    if (json_is_object(v)) {
        const char *k;
        json_t *sub;
        json_object_foreach((json_t *)v, k, sub)
        {
            if (!var_name_ok(k)) {
                bt_connectors__tool_diag(d, doc, tool, key,
                                         "'%s' is not a valid name (letters, digits, _)", k);
                ok = false;
            } else if (depth == 0 && strcmp(key, "extra_vars") == 0 &&
                       strncmp(k, "ansible_", 8) == 0) {
                bt_connectors__tool_diag(d, doc, tool, key,
                                         "'%s' is refused: how a host is reached comes from the "
                                         "inventory and the connector, not from a tool",
                                         k);
                ok = false;
            }
            ok &= check_tree(doc, tool, key, sub, depth + 1, nodes, d);
        }
        return ok;
    }
    bt_connectors__tool_diag(d, doc, tool, key,
                             "values must be strings, numbers, true/false, or lists and mappings "
                             "of them");
    return false;
}

static bool ansible_check_tool(void *state, const bt_yaml_doc *doc, const json_t *tool, bt_diag *d)
{
    struct ansible *a = state;
    bool ok = true;
    const char *op = json_string_value(json_object_get(tool, "operation"));
    bool is_module = op && strcmp(op, "module") == 0;
    bool is_playbook = op && strcmp(op, "playbook") == 0;
    if (!is_module && !is_playbook) {
        bt_connectors__tool_diag(d, doc, tool, "operation",
                                 "unknown operation '%s' for connector '%s' (type ansible knows: "
                                 "module, playbook)",
                                 op ? op : "", a->name);
        return false;
    }
    /* Keys of the other operation, or of the local runner, would be ignored
     * silently; say so instead. */
    static const char *const foreign[] = {"command", "ok_exit", "output_lines", "runs_on", NULL};
    for (size_t i = 0; foreign[i]; i++) {
        if (json_object_get(tool, foreign[i])) {
            bt_connectors__tool_diag(d, doc, tool, foreign[i],
                                     "is for connectors of type local; connector '%s' is of type "
                                     "ansible",
                                     a->name);
            ok = false;
        }
    }
    /* module/args belong to operation module, playbook/extra_vars to
     * operation playbook. */
    static const char *const of_module[] = {"module", "args"};
    static const char *const of_playbook[] = {"playbook", "extra_vars"};
    const char *const *mine = is_module ? of_module : of_playbook;
    const char *const *theirs = is_module ? of_playbook : of_module;
    for (size_t i = 0; i < 2; i++) {
        if (json_object_get(tool, theirs[i])) {
            bt_connectors__tool_diag(d, doc, tool, theirs[i], "is only for operation %s",
                                     is_module ? "playbook" : "module");
            ok = false;
        }
    }
    json_t *what = json_object_get(tool, mine[0]);
    if (is_module && (!json_is_string(what) || !module_name_ok(json_string_value(what)))) {
        bt_connectors__tool_diag(d, doc, tool, "module",
                                 what ? "must be a module name of a-z, 0-9, '_' and '.', like "
                                        "ansible.builtin.service"
                                      : "required, missing (a module name like "
                                        "ansible.builtin.ping)");
        ok = false;
    }
    if (is_playbook) {
        if (!json_is_string(what) || !playbook_name_ok(json_string_value(what))) {
            bt_connectors__tool_diag(d, doc, tool, "playbook",
                                     what ? "must be a file name inside playbooks_dir, ending in "
                                            ".yml or .yaml (no '/' or '..')"
                                          : "required, missing (a file name inside "
                                            "playbooks_dir)");
            ok = false;
        }
        if (!a->playbooks_dir) {
            bt_connectors__tool_diag(d, doc, tool, "playbook",
                                     "connector '%s' has no playbooks_dir (baton.yaml "
                                     "connectors.%s.playbooks_dir)",
                                     a->name, a->name);
            ok = false;
        }
    }
    json_t *vars = json_object_get(tool, mine[1]);
    if (vars && !json_is_object(vars)) {
        bt_connectors__tool_diag(d, doc, tool, mine[1], "must be a mapping of name to value");
        ok = false;
    } else if (vars) {
        size_t nodes = 0;
        ok &= check_tree(doc, tool, mine[1], vars, 0, &nodes, d);
    }
    if (!json_is_string(json_object_get(tool, "target"))) {
        bt_connectors__tool_diag(d, doc, tool, "target",
                                 "required for ansible tools (the input that names the asset to "
                                 "run against)");
        ok = false;
    }
    json_t *om = json_object_get(tool, "output_max");
    if (om && (!json_is_integer(om) || json_integer_value(om) < 1 ||
               json_integer_value(om) > ANS_OUTPUT_MAX_LIMIT)) {
        bt_connectors__tool_diag(d, doc, tool, "output_max", "must be an integer between 1 and %ld",
                                 ANS_OUTPUT_MAX_LIMIT);
        ok = false;
    }
    return ok;
}

/* ---- rendering ---------------------------------------------------------------- */

/* The same rule as the local runner's (docs/connectors.md, "Safety rules"):
 * here it also keeps Jinja's '{' and any quoting away from ansible, which
 * templates module arguments and extra vars. BT_EDENIED naming the input and
 * the offending character (never the whole value). */
static enum bt_err check_value(const char *input, const char *v, char *err, size_t errlen)
{
    size_t n = strlen(v);
    if (n == 0) {
        bt_fmt(err, errlen, "input '%s' is empty; refused", input);
        return BT_EDENIED;
    }
    if (n > ANS_VALUE_MAX) {
        bt_fmt(err, errlen, "input '%s' is longer than %d characters; refused", input,
               ANS_VALUE_MAX);
        return BT_EDENIED;
    }
    if (v[0] == '-') {
        bt_fmt(err, errlen, "input '%s' starts with '-' and could be read as an option; refused",
               input);
        return BT_EDENIED;
    }
    char what[32];
    if (bt_connectors__unsafe_char(v, n, what, sizeof what)) {
        bt_fmt(err, errlen,
               "input '%s' contains %s; refused (only letters, digits and @%%+=:,./_- are "
               "allowed in values passed to ansible)",
               input, what);
        return BT_EDENIED;
    }
    return BT_OK;
}

/* Expand the placeholders of one template string into a new JSON string. */
static enum bt_err render_string(const char *tmpl, const json_t *inputs, const char *tool_name,
                                 json_t **out, char *err, size_t errlen)
{
    bt_buf b = BT_BUF_INIT(ANS_ARGS_BYTES);
    const char *rest = tmpl, *name;
    size_t len;
    enum bt_err e = BT_OK;
    for (const char *p = next_placeholder(rest, &name, &len); p;
         p = next_placeholder(rest, &name, &len)) {
        char input[72], num[32];
        bt_strlcpy(input, name, len + 1 < sizeof input ? len + 1 : sizeof input);
        const char *v = bt_connectors__input_str(inputs, input, num, sizeof num);
        if (!v) {
            bt_fmt(err, errlen, "input '%s' is missing (tool %s needs it)", input, tool_name);
            e = BT_EINVAL;
            break;
        }
        if ((e = check_value(input, v, err, errlen)) != BT_OK)
            break;
        if (bt_buf_append(&b, rest, (size_t)(p - rest)) != BT_OK || bt_buf_puts(&b, v) != BT_OK) {
            e = BT_EINVAL;
            bt_fmt(err, errlen, "the arguments of tool %s are longer than %d bytes", tool_name,
                   ANS_ARGS_BYTES);
            break;
        }
        rest = name + len + 1;
    }
    if (e == BT_OK && bt_buf_puts(&b, rest) != BT_OK) {
        e = BT_EINVAL;
        bt_fmt(err, errlen, "the arguments of tool %s are longer than %d bytes", tool_name,
               ANS_ARGS_BYTES);
    }
    if (e != BT_OK) {
        bt_buf_free(&b);
        return e;
    }
    *out = json_stringn(b.data ? b.data : "", b.len);
    bt_buf_free(&b);
    if (!*out) {
        bt_fmt(err, errlen, "tool %s: an argument is not valid UTF-8", tool_name);
        return BT_EINVAL;
    }
    return BT_OK;
}

/* A new copy of tmpl with every string's placeholders expanded. The depth
 * was checked by check_tool; it is bounded here again since invoke may see
 * a tool that was never checked. */
static enum bt_err render_tree(const json_t *tmpl, const json_t *inputs, const char *tool_name,
                               int depth, json_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (depth > ANS_TREE_DEPTH) {
        bt_fmt(err, errlen, "tool %s: arguments nested deeper than %d levels", tool_name,
               ANS_TREE_DEPTH);
        return BT_EINVAL;
    }
    if (json_is_string(tmpl))
        return render_string(json_string_value(tmpl), inputs, tool_name, out, err, errlen);
    if (json_is_array(tmpl) || json_is_object(tmpl)) {
        bool arr = json_is_array(tmpl);
        json_t *copy = arr ? json_array() : json_object();
        size_t i;
        const char *k;
        json_t *v;
        enum bt_err e = BT_OK;
        if (arr) {
            json_array_foreach(tmpl, i, v)
            {
                json_t *sub;
                if ((e = render_tree(v, inputs, tool_name, depth + 1, &sub, err, errlen)) != BT_OK)
                    break;
                json_array_append_new(copy, sub);
            }
        } else {
            json_object_foreach((json_t *)tmpl, k, v)
            {
                json_t *sub;
                if ((e = render_tree(v, inputs, tool_name, depth + 1, &sub, err, errlen)) != BT_OK)
                    break;
                json_object_set_new(copy, k, sub);
            }
        }
        if (e != BT_OK) {
            json_decref(copy);
            return e;
        }
        *out = copy;
        return BT_OK;
    }
    *out = json_deep_copy(tmpl);
    return *out ? BT_OK : BT_EINVAL;
}

/* ---- the private directory -------------------------------------------------- */

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0; /* keep going: remove as much as we can */
}

static void rmtree(const char *dir)
{
    /* FTW_PHYS: a symlink a module left behind is removed, never followed. */
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}

/* Where private directories go: $TMPDIR when it is a sane absolute path,
 * else /tmp. */
static const char *tmp_base(void)
{
    const char *t = getenv("TMPDIR");
    return t && bt_connectors__abs_path_ok(t) && strlen(t) < 256 ? t : "/tmp";
}

/* ---- the result ------------------------------------------------------------- */

/* The first non-blank line of s for a message: at most 200 bytes of
 * printable ASCII ('?' for anything else). */
static void first_line(const char *s, size_t n, char *out, size_t outlen)
{
    size_t o = 0, i = 0;
    while (i < n && (s[i] == '\n' || s[i] == ' ' || s[i] == '\r'))
        i++;
    for (; i < n && s[i] != '\n' && s[i] != '\r' && o + 1 < outlen && o < 200; i++)
        out[o++] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
    if (outlen)
        out[o] = '\0';
}

/* The line of ansible's output that names the problem: the first one
 * starting with "ERROR!" when there is one, else the first line. */
static void error_line(const bt_buf *b, char *out, size_t outlen)
{
    const char *s = b->data ? b->data : "";
    const char *e = b->len ? memmem(s, b->len, "ERROR!", 6) : NULL;
    if (e)
        first_line(e, b->len - (size_t)(e - s), out, outlen);
    else
        first_line(s, b->len, out, outlen);
}

/* From the PLAY RECAP line of `host` ("host : ok=2 changed=1 ..."): the
 * count after "field=", or -1 when the line or the field is not there. */
static long recap_count(const bt_buf *out, const char *host, const char *field)
{
    const char *s = out->data ? out->data : "";
    const char *end = s + out->len;
    size_t hl = strlen(host), fl = strlen(field);
    const char *recap = out->len ? memmem(s, out->len, "PLAY RECAP", 10) : NULL;
    for (const char *line = recap; line && line < end;) {
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        const char *le = nl ? nl : end;
        if ((size_t)(le - line) > hl && strncmp(line, host, hl) == 0 && line[hl] == ' ') {
            const char *p = line + hl;
            while (p < le && *p == ' ')
                p++;
            for (p = p < le && *p == ':' ? p + 1 : le; p + fl + 1 < le; p++) {
                if (p[0] == ' ' && strncmp(p + 1, field, fl) == 0 && p[1 + fl] == '=') {
                    long n = 0;
                    for (const char *q = p + 2 + fl;
                         q < le && *q >= '0' && *q <= '9' && n < 1000000; q++)
                        n = n * 10 + (*q - '0');
                    return n;
                }
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    return -1;
}

/* What to show as a module's stdout: its stdout when it has one (even
 * empty: a command that printed nothing), else its msg, else the whole
 * result minus the noise (ansible_facts, the *_lines copies). */
static json_t *module_text(const json_t *res, size_t max, bool *cut)
{
    const char *s = json_string_value(json_object_get(res, "stdout"));
    if (!s)
        s = json_string_value(json_object_get(res, "msg"));
    if (s)
        return bt_connectors__output_json(s, strlen(s), max, 0, cut);
    json_t *copy = json_deep_copy(res);
    static const char *const noise[] = {
        "ansible_facts", "stdout_lines", "stderr_lines", "invocation", "changed", "failed", NULL};
    for (size_t i = 0; copy && noise[i]; i++)
        json_object_del(copy, noise[i]);
    char *dump = copy ? json_dumps(copy, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(copy);
    json_t *out =
        bt_connectors__output_json(dump ? dump : "", dump ? strlen(dump) : 0, max, 0, cut);
    free(dump);
    return out;
}

/* ---- invoke ------------------------------------------------------------------ */

struct argv_builder {
    char *v[ANS_ARGV_MAX + 1];
    size_t n;
};

static void add_arg(struct argv_builder *b, const char *s)
{
    /* ANS_ARGV_MAX is larger than the most this file ever adds; assert the
     * invariant rather than truncate an argv silently. */
    if (b->n >= ANS_ARGV_MAX)
        abort();
    b->v[b->n++] = bt_strdup(s);
}

static void free_args(struct argv_builder *b)
{
    for (size_t i = 0; i < b->n; i++)
        free(b->v[i]);
    b->n = 0;
}

/* Everything one call prepares before starting the child. */
struct call {
    const struct ansible *a;
    const char *tool_name;
    bool playbook;
    const char *what; /* the module or the playbook file name */
    const char *host; /* ansible's inventory name: the asset's hostname */
    const char *asset;
    const char *conn; /* local, ssh, winrm */
    char *dir;        /* the private directory */
    char *tree;       /* dir/tree */
    struct argv_builder argv;
    char **envp;
};

/* The whole environment the child gets: nothing of baton's own is passed
 * on (it holds tokens and BATON_SECRET) except the extra_env names. The
 * private key's path, for ssh, goes here too and never on argv. */
static enum bt_err child_env(const struct call *c, long connect_timeout_s, char ***envp, char *err,
                             size_t errlen)
{
    const struct ansible *a = c->a;
    const char *key = NULL;
    if (strcmp(c->conn, "ssh") == 0 && a->private_key_env) {
        key = getenv(a->private_key_env);
        if (!key || !bt_connectors__abs_path_ok(key)) {
            bt_fmt(err, errlen,
                   "connector '%s': environment variable %s (private_key_env) must hold the "
                   "absolute path of a key file",
                   a->name, a->private_key_env);
            return BT_ECONNECTOR;
        }
    }
    size_t nextra = 0;
    while (a->extra_env[nextra])
        nextra++;
    char **env = bt_calloc(20 + nextra, sizeof(char *)); /* 15 of ours at most, then NULL */
    size_t n = 0;
    env[n++] = bt_strdup("PATH=/usr/bin:/bin");
    env[n++] = bt_asprintf("HOME=%s", c->dir);
    env[n++] = bt_strdup("LANG=C.UTF-8");
    env[n++] = bt_strdup("LC_ALL=C.UTF-8");
    env[n++] = bt_strdup("ANSIBLE_NOCOLOR=1");
    env[n++] = bt_strdup("ANSIBLE_RETRY_FILES_ENABLED=0");
    env[n++] = bt_asprintf("ANSIBLE_LOCAL_TEMP=%s/tmp", c->dir);
    /* The discovery warning on every first contact is noise in a chat. */
    env[n++] = bt_strdup("ANSIBLE_PYTHON_INTERPRETER=auto_silent");
    env[n++] = bt_asprintf("ANSIBLE_TIMEOUT=%ld", connect_timeout_s);
    /* No ssh ControlPersist master: it would detach from our process group,
     * outlive the call and keep a socket in a directory we remove. */
    env[n++] = bt_strdup("ANSIBLE_SSH_ARGS=-C -o ControlMaster=no -o ControlPersist=no");
    if (strcmp(c->conn, "local") == 0) {
        /* For the local connection ansible's "remote" temp is on this host,
         * by default under the real home of the user (not $HOME). */
        env[n++] = bt_asprintf("ANSIBLE_REMOTE_TEMP=%s/remote", c->dir);
    }
    if (c->playbook) {
        env[n++] = bt_strdup("ANSIBLE_CALLBACKS_ENABLED=ansible.builtin.tree");
        env[n++] = bt_asprintf("ANSIBLE_CALLBACK_TREE_DIR=%s", c->tree);
    }
    if (!a->host_key_checking)
        env[n++] = bt_strdup("ANSIBLE_HOST_KEY_CHECKING=False");
    if (key)
        env[n++] = bt_asprintf("ANSIBLE_PRIVATE_KEY_FILE=%s", key);
    for (size_t i = 0; i < nextra; i++) {
        const char *v = getenv(a->extra_env[i]);
        if (v)
            env[n++] = bt_asprintf("%s=%s", a->extra_env[i], v);
    }
    *envp = env;
    return BT_OK;
}

/* Write the connection password into a 0600 vars file in the private
 * directory, for `-e @FILE`: a password on argv could be read by any user
 * in /proc. */
static enum bt_err write_password_file(const struct call *c, const char *password, char **path,
                                       char *err, size_t errlen)
{
    json_t *vars = json_pack("{s:s}", "ansible_password", password);
    char *text = vars ? json_dumps(vars, JSON_COMPACT) : NULL;
    json_decref(vars);
    *path = bt_asprintf("%s/connection.json", c->dir);
    int fd = text ? open(*path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600) : -1;
    bool ok = fd >= 0 && write(fd, text, strlen(text)) == (ssize_t)strlen(text);
    if (fd >= 0 && close(fd) != 0)
        ok = false;
    free(text);
    if (!ok) {
        bt_fmt(err, errlen,
               "connector '%s': cannot write the connection password file in the private "
               "directory",
               c->a->name);
        free(*path);
        *path = NULL;
        return BT_ECONNECTOR;
    }
    return BT_OK;
}

/* Build argv for one call (and the password file, when there is one). The
 * command recorded in the result is argv itself: nothing secret is ever on
 * it (the key path goes through the environment, the password through a
 * file). */
static enum bt_err build_call(struct call *c, const json_t *tool, const json_t *inputs,
                              const char *ip, char *err, size_t errlen)
{
    const struct ansible *a = c->a;
    struct argv_builder *b = &c->argv;
    char num[32];
    add_arg(b, c->playbook ? a->playbook_bin : a->ansible_bin);
    if (!c->playbook)
        add_arg(b, c->host); /* the host pattern; validated, never starts with '-' */
    char *inv = bt_asprintf("%s,", c->host); /* an inline inventory of exactly this host */
    add_arg(b, "-i");
    add_arg(b, inv);
    free(inv);
    add_arg(b, "-c");
    add_arg(b, c->conn);
    add_arg(b, "--limit");
    add_arg(b, c->host);
    add_arg(b, "-f");
    bt_fmt(num, sizeof num, "%d", a->forks);
    add_arg(b, num);
    if (a->ssh_user && strcmp(c->conn, "local") != 0) {
        add_arg(b, "-u");
        add_arg(b, a->ssh_user);
    }
    const char *vars_key = c->playbook ? "extra_vars" : "args";
    json_t *tmpl = json_object_get(tool, vars_key);
    json_t *vars = NULL;
    if (tmpl) {
        if (!json_is_object(tmpl)) {
            bt_fmt(err, errlen, "tool %s: %s must be a mapping", c->tool_name, vars_key);
            return BT_EINVAL;
        }
        enum bt_err e = render_tree(tmpl, inputs, c->tool_name, 0, &vars, err, errlen);
        if (e != BT_OK)
            return e;
    }
    if (c->playbook && vars) {
        /* Checked here too: a tool that was never checked must not choose
         * how the host is reached. */
        const char *k;
        json_t *v;
        json_object_foreach(vars, k, v)
        {
            if (strncmp(k, "ansible_", 8) == 0) {
                bt_fmt(err, errlen, "tool %s: extra_vars may not set %s; refused", c->tool_name, k);
                json_decref(vars);
                return BT_EDENIED;
            }
        }
    }
    /* Only a non-empty mapping is passed: ansible reads "-a '{}'" as raw
     * parameters and fails with a confusing message. */
    char *json =
        vars && json_object_size(vars) ? json_dumps(vars, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(vars);
    if (json && strlen(json) > ANS_ARGS_BYTES) {
        bt_fmt(err, errlen, "the arguments of tool %s are longer than %d bytes", c->tool_name,
               ANS_ARGS_BYTES);
        free(json);
        return BT_EINVAL;
    }
    if (!c->playbook) {
        add_arg(b, "-m");
        add_arg(b, c->what);
        if (json) {
            add_arg(b, "-a"); /* JSON: ansible 2.14 takes a '{...}' argument as JSON */
            add_arg(b, json);
        }
        add_arg(b, "-t");
        add_arg(b, c->tree);
    } else if (json) {
        add_arg(b, "-e");
        add_arg(b, json);
    }
    free(json);
    if (strcmp(c->conn, "local") != 0) {
        /* After the tool's vars, and extra vars win over everything: the
         * address is the inventory's. */
        char *host_var = bt_asprintf("ansible_host=%s", ip);
        add_arg(b, "-e");
        add_arg(b, host_var);
        free(host_var);
        if (a->password_env) {
            const char *pw = getenv(a->password_env);
            if (!pw || !*pw) {
                bt_fmt(err, errlen,
                       "connector '%s': environment variable %s (password_env) is not set", a->name,
                       a->password_env);
                return BT_ECONNECTOR;
            }
            char *path;
            enum bt_err e = write_password_file(c, pw, &path, err, errlen);
            if (e != BT_OK)
                return e;
            char *at = bt_asprintf("@%s", path);
            add_arg(b, "-e");
            add_arg(b, at);
            free(at);
            free(path);
        }
    }
    if (c->playbook) {
        char *pb = bt_asprintf("%s/%s", a->playbooks_dir, c->what);
        add_arg(b, pb);
        free(pb);
    }
    return BT_OK;
}

static void call_free(struct call *c)
{
    free_args(&c->argv);
    bt_connectors__strv_free(c->envp);
    if (c->dir)
        rmtree(c->dir);
    free(c->dir);
    free(c->tree);
}

/* Read the tree callback's file for the host: the module's (for a playbook,
 * the last task's) result. NULL with *missing when there is none (ansible
 * failed before running anything); NULL with err set when it is too large
 * or not JSON. */
static json_t *read_tree(const struct call *c, size_t limit, bool *missing, char *err,
                         size_t errlen)
{
    *missing = false;
    char *path = bt_asprintf("%s/%s", c->tree, c->host);
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
        free(path);
        *missing = true;
        return NULL;
    }
    char *text = NULL, ebuf[BT_ERRLEN];
    size_t len = 0;
    enum bt_err e = (size_t)st.st_size > limit
                        ? BT_ETOOBIG
                        : bt_read_file(path, limit, &text, &len, ebuf, sizeof ebuf);
    free(path);
    if (e != BT_OK) {
        if (e == BT_ETOOBIG)
            bt_fmt(err, errlen,
                   "the result of %s on %s is larger than %zu bytes and was not read (raise "
                   "output_max of the tool or of connector '%s')",
                   c->what, c->host, limit, c->a->name);
        else
            bt_fmt(err, errlen, "cannot read the result of %s on %s", c->what, c->host);
        return NULL;
    }
    json_error_t jerr;
    json_t *res = json_loadb(text, len, 0, &jerr);
    free(text);
    if (!json_is_object(res)) {
        json_decref(res);
        bt_fmt(err, errlen, "the result of %s on %s is not valid JSON", c->what, c->host);
        return NULL;
    }
    return res;
}

/* Check the tool and the target before anything is created: which host,
 * and how it is reached, come from the inventory only. Fills c. */
static enum bt_err prepare(struct call *c, const json_t *tool, const json_t *target,
                           const char **ip, char *err, size_t errlen)
{
    const struct ansible *a = c->a;
    const char *op = json_string_value(json_object_get(tool, "operation"));
    if (!op || (strcmp(op, "module") != 0 && strcmp(op, "playbook") != 0)) {
        bt_fmt(err, errlen, "connector '%s' has no operation '%s' (it knows: module, playbook)",
               a->name, op ? op : "");
        return BT_EINVAL;
    }
    c->playbook = strcmp(op, "playbook") == 0;
    c->what = json_string_value(json_object_get(tool, c->playbook ? "playbook" : "module"));
    if (c->playbook ? !playbook_name_ok(c->what) || !a->playbooks_dir : !module_name_ok(c->what)) {
        bt_fmt(err, errlen, "tool %s has no valid %s", c->tool_name,
               c->playbook ? "playbook (a file name inside playbooks_dir)" : "module name");
        return c->playbook ? BT_EDENIED : BT_EINVAL;
    }
    if (!target) {
        bt_fmt(err, errlen, "tool %s runs against an asset, but no target asset was given",
               c->tool_name);
        return BT_EINVAL;
    }
    c->asset = json_string_value(json_object_get(target, "name"));
    if (!c->asset)
        c->asset = "the target";
    c->conn = json_string_value(json_object_get(target, "connection"));
    if (!c->conn || (strcmp(c->conn, "local") != 0 && strcmp(c->conn, "ssh") != 0 &&
                     strcmp(c->conn, "winrm") != 0)) {
        bt_fmt(err, errlen,
               "%s cannot be reached by ansible (connection: %s); only assets with connection "
               "local, ssh or winrm",
               c->asset, c->conn ? c->conn : "unknown");
        return BT_EDENIED;
    }
    c->host = json_string_value(json_object_get(target, "hostname"));
    *ip = json_string_value(json_object_get(target, "ip"));
    if (!hostname_ok(c->host)) {
        bt_fmt(err, errlen, "%s has no valid hostname in the inventory; refused", c->asset);
        return BT_EDENIED;
    }
    if (strcmp(c->conn, "local") != 0 && !ipv4_ok(*ip)) {
        bt_fmt(err, errlen, "%s has no valid IPv4 address in the inventory; refused", c->asset);
        return BT_EDENIED;
    }
    /* Checked when a step runs rather than at load, so a host without
     * ansible still loads its configuration. */
    const char *bin = c->playbook ? a->playbook_bin : a->ansible_bin;
    struct stat st;
    if (stat(bin, &st) != 0 || !S_ISREG(st.st_mode) || access(bin, X_OK) != 0) {
        bt_fmt(err, errlen, "%s is not installed at %s (apt-get install ansible-core)",
               c->playbook ? "ansible-playbook" : "ansible", bin);
        return BT_ECONNECTOR;
    }
    if (c->playbook) {
        char *pb = bt_asprintf("%s/%s", a->playbooks_dir, c->what);
        bool there = stat(pb, &st) == 0 && S_ISREG(st.st_mode);
        free(pb);
        if (!there) {
            bt_fmt(err, errlen, "playbook %s is not in %s (connector '%s')", c->what,
                   a->playbooks_dir, a->name);
            return BT_ECONNECTOR;
        }
    }
    return BT_OK;
}

/* What became of a run: from the tree file, the exit status and, for a
 * playbook, the recap. */
struct outcome {
    int code, sig;
    bool changed, failed, unreachable, cut;
    bool missing;  /* no tree file: nothing ran on the host */
    json_int_t rc; /* the module's rc, when has_rc */
    bool has_rc;
    const char *msg;          /* the module's msg (borrowed from the tree result) */
    const char *mod_err;      /* the module's stderr (borrowed) */
    char read_err[BT_ERRLEN]; /* the tree file was there but could not be used */
};

/* The step's result object (shaped like the local runner's, plus changed,
 * failed, unreachable, module or playbook, host, rc). Fills o. */
static json_t *build_result(const struct call *c, const struct bt_connectors__run *r,
                            const json_t *mod, size_t max, struct outcome *o)
{
    json_t *res = json_object();
    json_t *argv_json = json_array();
    for (size_t i = 0; i < c->argv.n; i++)
        json_array_append_new(argv_json, json_string(c->argv.v[i]));
    json_object_set_new(res, "command", argv_json);
    json_object_set_new(res, c->playbook ? "playbook" : "module", json_string(c->what));
    json_object_set_new(res, "host", json_string(c->asset));
    json_object_set_new(res, "exit_code", json_integer(o->code));
    if (o->sig)
        json_object_set_new(res, "signal", json_integer(o->sig));
    if (mod) {
        o->changed = json_is_true(json_object_get(mod, "changed"));
        o->unreachable = json_is_true(json_object_get(mod, "unreachable"));
        /* An ad hoc tree file has no "failed" key (ansible's exit code
         * carries it): a non-zero exit with a result is a failure unless
         * the host was unreachable. */
        o->failed = json_is_true(json_object_get(mod, "failed")) ||
                    (!o->unreachable && o->code != 0 && !r->timed_out);
        o->msg = json_string_value(json_object_get(mod, "msg"));
        o->mod_err = json_string_value(json_object_get(mod, "stderr"));
        json_t *rc = json_object_get(mod, "rc");
        if (json_is_integer(rc)) {
            o->has_rc = true;
            o->rc = json_integer_value(rc);
            json_object_set_new(res, "rc", json_integer(o->rc));
        }
    }
    const bt_buf *out = &r->out.buf, *err = &r->err.buf;
    if (c->playbook) {
        /* Over the whole play, not only the last task the tree kept. */
        long n = recap_count(out, c->host, "changed");
        if (n >= 0)
            o->changed = n > 0;
        if (recap_count(out, c->host, "failed") > 0)
            o->failed = true;
        if (recap_count(out, c->host, "unreachable") > 0)
            o->unreachable = true;
    }
    /* A playbook's stdout is what an operator sees running it by hand; a
     * module's is the module's own output. */
    if (c->playbook || !mod) {
        o->cut |= r->out.truncated;
        json_object_set_new(
            res, "stdout",
            bt_connectors__output_json(out->data ? out->data : "", out->len, max, 0, &o->cut));
    } else {
        json_object_set_new(res, "stdout", module_text(mod, max, &o->cut));
    }
    if (mod && !c->playbook) {
        const char *s = o->mod_err ? o->mod_err : "";
        json_object_set_new(res, "stderr",
                            bt_connectors__output_json(s, strlen(s), max, 0, &o->cut));
    } else {
        o->cut |= r->err.truncated;
        json_object_set_new(
            res, "stderr",
            bt_connectors__output_json(err->data ? err->data : "", err->len, max, 0, &o->cut));
    }
    json_object_set_new(res, "changed", json_boolean(o->changed));
    json_object_set_new(res, "failed", json_boolean(o->failed));
    json_object_set_new(res, "unreachable", json_boolean(o->unreachable));
    json_object_set_new(res, "truncated", json_boolean(o->cut));
    json_object_set_new(res, "timed_out", json_boolean(r->timed_out));
    json_object_set_new(res, "duration_ms", json_integer(r->elapsed_ms));
    return res;
}

/* The step's error code and message. Messages name the module or playbook
 * and the host, and quote ansible's words (msg, the first line of stderr). */
static enum bt_err explain(const struct call *c, const struct bt_connectors__run *r,
                           const struct outcome *o, long timeout_s, char *err, size_t errlen)
{
    char line[256], mline[256];
    first_line(o->msg ? o->msg : "", o->msg ? strlen(o->msg) : 0, mline, sizeof mline);
    const char *prog = c->playbook ? "ansible-playbook" : "ansible";
    if (r->exec_errno) {
        char ebuf[128];
        bt_fmt(err, errlen, "could not run %s (%s): %s", prog, c->argv.v[0],
               strerror_r(r->exec_errno, ebuf, sizeof ebuf));
        return BT_ECONNECTOR;
    }
    if (r->status_lost) {
        bt_fmt(err, errlen, "%s ended but its exit status was lost", prog);
        return BT_ECONNECTOR;
    }
    if (r->timed_out) {
        const bt_buf *b = r->out.buf.len ? &r->out.buf : &r->err.buf;
        first_line(b->data ? b->data : "", b->len, line, sizeof line);
        bt_fmt(err, errlen, "%s on %s did not finish within %ld s and was stopped%s%s", c->what,
               c->host, timeout_s, line[0] ? "; output so far: " : "", line);
        return BT_ETIMEOUT;
    }
    if (o->sig) {
        const char *abbrev = sigabbrev_np(o->sig); /* thread-safe, unlike strsignal */
        bt_fmt(err, errlen, "%s was killed by signal %d (SIG%s)", prog, o->sig,
               abbrev ? abbrev : "?");
        return BT_ECONNECTOR;
    }
    if (o->unreachable) {
        /* Transient as far as baton can tell: the breaker counts it. */
        bt_fmt(err, errlen, "%s (%s) is unreachable%s%s", c->host, c->conn, mline[0] ? ": " : "",
               mline);
        return BT_EUNAVAIL;
    }
    if (o->read_err[0]) {
        bt_fmt(err, errlen, "%s", o->read_err);
        return BT_ECONNECTOR;
    }
    if (o->failed || o->code != 0) {
        if (!o->missing) {
            const char *s = o->mod_err ? o->mod_err : "";
            first_line(s, strlen(s), line, sizeof line);
            char rcs[40] = "";
            if (o->has_rc)
                bt_fmt(rcs, sizeof rcs, " (rc %" JSON_INTEGER_FORMAT ")", o->rc);
            bt_fmt(err, errlen, "%s failed on %s: %s%s%s%s", c->what, c->host,
                   mline[0] ? mline : "no message", rcs, line[0] ? ": " : "", line);
        } else {
            error_line(r->err.buf.len ? &r->err.buf : &r->out.buf, line, sizeof line);
            bt_fmt(err, errlen, "%s exited with code %d%s%s", prog, o->code, line[0] ? ": " : "",
                   line);
        }
        return BT_ECONNECTOR;
    }
    if (o->missing) {
        /* Exit 0 and no result: nothing ran on the host, most often because
         * the playbook's hosts: does not match it. */
        bt_fmt(err, errlen,
               "%s ran nothing on %s (for a playbook: does its hosts: match all, or the host?)",
               c->what, c->host);
        return BT_ECONNECTOR;
    }
    return BT_OK;
}

static enum bt_err ansible_invoke(void *state, const json_t *tool, const json_t *inputs,
                                  const json_t *target, json_t **result, char *err, size_t errlen)
{
    struct call c;
    memset(&c, 0, sizeof c);
    c.a = state;
    c.tool_name = bt_connectors__tool_name(tool);
    const char *ip = NULL;
    enum bt_err e = prepare(&c, tool, target, &ip, err, errlen);
    if (e != BT_OK)
        return e;

    char tmpl[300];
    bt_fmt(tmpl, sizeof tmpl, "%s/baton-ansible-XXXXXX", tmp_base());
    if (!mkdtemp(tmpl)) {
        char ebuf[128];
        bt_fmt(err, errlen, "cannot create a private directory for ansible in %s: %s", tmp_base(),
               strerror_r(errno, ebuf, sizeof ebuf));
        return BT_ECONNECTOR;
    }
    c.dir = bt_strdup(tmpl);
    c.tree = bt_asprintf("%s/tree", c.dir);
    if ((e = build_call(&c, tool, inputs, ip, err, errlen)) != BT_OK) {
        call_free(&c);
        return e;
    }
    long timeout_s =
        bt_connectors__tool_long(tool, "timeout_s", ANS_TIMEOUT_DEFAULT_S, 1, ANS_TIMEOUT_MAX_S);
    size_t max = (size_t)bt_connectors__tool_long(tool, "output_max", (long)c.a->output_max, 1,
                                                  ANS_OUTPUT_MAX_LIMIT);
    /* ssh/winrm connect within half the step's time (at most 10 s), so an
     * unreachable host is reported as such rather than as a timeout. */
    long connect_s = timeout_s / 2 < 1                           ? 1
                     : timeout_s / 2 > ANS_CONNECT_TIMEOUT_MAX_S ? ANS_CONNECT_TIMEOUT_MAX_S
                                                                 : timeout_s / 2;
    if ((e = child_env(&c, connect_s, &c.envp, err, errlen)) != BT_OK) {
        call_free(&c);
        return e;
    }

    c.argv.v[c.argv.n] = NULL;
    /* The private directory is the working directory: ansible reads
     * ./ansible.cfg, and this one is empty and ours (0700), so no stray
     * config is picked up. */
    struct bt_connectors__proc p = {c.argv.v[0], c.argv.v, c.envp, c.dir, (int64_t)timeout_s * 1000,
                                    max,         "ansible"};
    struct bt_connectors__run r;
    e = bt_connectors__proc_run(&p, &r, err, errlen);
    if (e != BT_OK) {
        bt_connectors__run_free(&r);
        call_free(&c);
        return e;
    }
    struct outcome o;
    memset(&o, 0, sizeof o);
    o.code = r.exit_code;
    o.sig = r.signal;
    /* The result file holds stdout twice (stdout and stdout_lines) plus JSON
     * escaping: allow for that, and fail cleanly beyond it. */
    size_t limit = max * 4 + 65536;
    o.missing = true;
    json_t *mod = NULL;
    if (!r.timed_out && !r.exec_errno)
        mod = read_tree(&c, limit, &o.missing, o.read_err, sizeof o.read_err);
    json_t *res = build_result(&c, &r, mod, max, &o);
    e = explain(&c, &r, &o, timeout_s, err, errlen);
    json_decref(mod); /* o's borrowed strings die here */
    bt_connectors__run_free(&r);
    call_free(&c);
    *result = res;
    return e;
}

const struct bt_connectors__ops bt_connectors__ansible_ops = {
    "ansible", ansible_new, ansible_check_tool, ansible_invoke, ansible_free,
};
