/* tools.c - see tools.h. */
#include "pipeline/tools.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

#include "approvals/policy.h"
#include "bot/util.h"

#define TOOLS_MAX 1000
#define INPUT_VALUE_MAX 1024

struct input_check {
    char *tool;
    char *input;
    pcre2_code *re;
};

struct bt_tools {
    json_t *defs; /* name -> definition with resolved inputs */
    struct input_check *checks;
    size_t nchecks;
    pcre2_match_context *mctx;
};

/* Common keys, then those of particular connector types (local: command,
 * ok_exit, output_*; ansible: module, args, playbook, extra_vars; http
 * automation: remote_tool), which each connector's check_tool validates. */
static const char *const tool_keys[] = {
    "name",        "description", "connector",    "operation",  "command",    "inputs",
    "inputs_from", "risk",        "read_only",    "reversible", "compensate", "target",
    "timeout_s",   "ok_exit",     "output_lines", "output_max", "runs_on",    "retries",
    "estimate_s",  "module",      "args",         "playbook",   "extra_vars", "remote_tool",
    "via",         NULL};

/* What a `via:` entry may set: the connector and its own keys. Everything
 * else (inputs, risk, target, compensate, ...) is the tool's. */
static const char *const via_keys[] = {
    "connector", "operation", "command",  "ok_exit",    "output_lines", "output_max", "timeout_s",
    "module",    "args",      "playbook", "extra_vars", "remote_tool",  "runs_on",    NULL};
static const char *const connections[] = {"local", "ssh", "winrm", NULL};
static const char *const input_keys[] = {"required", "pattern", "default", "description", NULL};

static pcre2_code *compile_pattern(const char *pattern, char *err, size_t errlen)
{
    int code;
    PCRE2_SIZE off;
    /* DOLLAR_ENDONLY: "$" must not match before a trailing newline, or
     * "nginx\n" would pass a pattern meant to allow only a name. */
    pcre2_code *re =
        pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                      PCRE2_UTF | PCRE2_DOLLAR_ENDONLY | PCRE2_ANCHORED, &code, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        bt_fmt(err, errlen, "%s at offset %zu", (const char *)msg, (size_t)off);
    }
    return re;
}

static const struct input_check *find_check(const bt_tools *t, const char *tool, const char *input)
{
    for (size_t i = 0; i < t->nchecks; i++)
        if (strcmp(t->checks[i].tool, tool) == 0 && strcmp(t->checks[i].input, input) == 0)
            return &t->checks[i];
    return NULL;
}

/* Check one tool's input declarations, compile their patterns. */
static void check_inputs(bt_tools *t, const bt_yaml_doc *doc, const char *tool, json_t *inputs,
                         bt_diag *d)
{
    const char *iname;
    json_t *spec;
    json_object_foreach(inputs, iname, spec)
    {
        if (!json_is_object(spec)) {
            bt_diag_at(d, doc, inputs, iname, "input must be a mapping (pattern, required, ...)");
            continue;
        }
        bt_check_keys(d, doc, spec, input_keys);
        const char *pattern = bt_check_string(d, doc, spec, "pattern", true);
        json_t *req = json_object_get(spec, "required");
        if (req && !json_is_boolean(req))
            bt_diag_at(d, doc, spec, "required", "must be true or false");
        json_t *def = json_object_get(spec, "default");
        if (def && !json_is_string(def))
            bt_diag_at(d, doc, spec, "default", "must be a string (quote it)");
        if (!pattern)
            continue;
        char err[BT_ERRLEN];
        pcre2_code *re = compile_pattern(pattern, err, sizeof err);
        if (!re) {
            bt_diag_at(d, doc, spec, "pattern", "input %s of tool %s: cannot compile: %s", iname,
                       tool, err);
            continue;
        }
        t->checks = bt_realloc(t->checks, (t->nchecks + 1) * sizeof *t->checks);
        t->checks[t->nchecks].tool = bt_strdup(tool);
        t->checks[t->nchecks].input = bt_strdup(iname);
        t->checks[t->nchecks].re = re;
        t->nchecks++;
    }
}

/* `via:` maps an asset's connection (local, ssh, winrm) to another
 * connector for the same tool, e.g. systemctl through the local runner on
 * the baton host and an ansible module on ssh hosts. Each entry becomes a
 * full definition (the tool's, with the entry's keys over it), checked by
 * its connector, and kept as "NAME@CONNECTION". */
static void check_via(bt_tools *t, const bt_yaml_doc *doc, const json_t *tool, const json_t *def,
                      const char *name, const bt_connectors *conns, bt_diag *d)
{
    json_t *via = json_object_get(tool, "via");
    if (!via)
        return;
    if (!json_is_object(via)) {
        bt_diag_at(d, doc, tool, "via",
                   "must be a mapping of connection (local, ssh, winrm) to "
                   "a connector and its keys");
        return;
    }
    const char *conn_name;
    json_t *entry;
    json_object_foreach(via, conn_name, entry)
    {
        size_t k = 0;
        while (connections[k] && strcmp(connections[k], conn_name) != 0)
            k++;
        if (!connections[k]) {
            bt_diag_at(d, doc, via, conn_name,
                       "tool %s: via.%s: not a connection (local, ssh or winrm)", name, conn_name);
            continue;
        }
        if (!json_is_object(entry)) {
            bt_diag_at(d, doc, via, conn_name, "tool %s: via.%s must be a mapping", name,
                       conn_name);
            continue;
        }
        bt_check_keys(d, doc, entry, via_keys);
        const char *c = bt_check_string(d, doc, entry, "connector", true);
        if (!c)
            continue;
        if (!bt_connectors_has(conns, c)) {
            bt_diag_at(d, doc, entry, "connector",
                       "tool %s: via.%s names connector '%s', which is not configured in "
                       "baton.yaml",
                       name, conn_name, c);
            continue;
        }
        /* The variant: the tool's definition without the first connector's
         * own keys, then the entry's keys. */
        json_t *var = json_deep_copy(def);
        static const char *const own[] = {"operation",  "command",     "ok_exit", "output_lines",
                                          "output_max", "module",      "args",    "playbook",
                                          "extra_vars", "remote_tool", NULL};
        for (size_t i = 0; own[i]; i++)
            json_object_del(var, own[i]);
        json_object_update(var, entry);
        if (!json_object_get(var, "operation"))
            bt_diag_at(d, doc, entry, NULL, "tool %s: via.%s needs an operation", name, conn_name);
        else
            bt_connectors_check_tool(conns, doc, var, d);
        char key[300];
        bt_fmt(key, sizeof key, "%s@%s", name, conn_name);
        json_object_set_new(t->defs, key, var);
    }
}

static void check_tool(bt_tools *t, const bt_yaml_doc *doc, json_t *root, json_t *tool,
                       const bt_connectors *conns, bt_diag *d)
{
    bt_check_keys(d, doc, tool, tool_keys);
    const char *name = bt_check_string(d, doc, tool, "name", true);
    const char *conn = bt_check_string(d, doc, tool, "connector", true);
    bt_check_string(d, doc, tool, "operation", true);
    const char *risk = bt_check_string(d, doc, tool, "risk", true);
    enum bt_risk r;
    if (risk && !bt_risk_parse(risk, &r))
        bt_diag_at(d, doc, tool, "risk", "must be low, medium, high or critical, found '%s'", risk);
    long long n;
    bt_check_int(d, doc, tool, "timeout_s", false, 1, 3600, &n);
    bt_check_int(d, doc, tool, "output_lines", false, 1, 100000, &n);
    bt_check_int(d, doc, tool, "retries", false, 0, 5, &n);
    bt_check_int(d, doc, tool, "estimate_s", false, 0, 86400, &n);
    static const char *const bools[] = {"read_only", "reversible", NULL};
    for (size_t i = 0; bools[i]; i++) {
        json_t *b = json_object_get(tool, bools[i]);
        if (b && !json_is_boolean(b))
            bt_diag_at(d, doc, tool, bools[i], "must be true or false");
    }
    if (!name)
        return;
    if (json_object_get(t->defs, name)) {
        bt_diag_at(d, doc, tool, "name", "duplicate tool name '%s'", name);
        return;
    }

    /* Resolve inputs: inline ones plus a named set. */
    json_t *inputs = json_object();
    json_t *inl = bt_check_object(d, doc, tool, "inputs", false);
    if (inl)
        json_object_update(inputs, inl);
    const char *from = bt_check_string(d, doc, tool, "inputs_from", false);
    if (from) {
        json_t *set = json_object_get(json_object_get(root, "input_sets"), from);
        if (!json_is_object(set))
            bt_diag_at(d, doc, tool, "inputs_from", "no input set named '%s' under input_sets",
                       from);
        else
            json_object_update_missing(inputs, set);
    }
    check_inputs(t, doc, name, inputs, d);

    const char *target = bt_check_string(d, doc, tool, "target", false);
    if (target && !json_object_get(inputs, target))
        bt_diag_at(d, doc, tool, "target", "names input '%s', which tool %s does not declare",
                   target, name);
    json_t *ok_exit = json_object_get(tool, "ok_exit");
    if (ok_exit) {
        size_t i;
        json_t *v;
        bool good = json_is_array(ok_exit);
        json_array_foreach(ok_exit, i, v) good = good && json_is_integer(v) &&
                                                 json_integer_value(v) >= 0 &&
                                                 json_integer_value(v) <= 255;
        if (!good)
            bt_diag_at(d, doc, tool, "ok_exit", "must be a list of exit codes 0..255");
    }
    if (conn && !bt_connectors_has(conns, conn))
        bt_diag_at(d, doc, tool, "connector",
                   "tool %s names connector '%s', which is not "
                   "configured in baton.yaml",
                   name, conn);
    else if (conn)
        bt_connectors_check_tool(conns, doc, tool, d);

    json_t *def = json_deep_copy(tool);
    json_object_set_new(def, "inputs", inputs);
    json_object_del(def, "inputs_from");
    json_object_del(def, "via");
    check_via(t, doc, tool, def, name, conns, d);
    json_object_set_new(t->defs, name, def);
}

bt_tools *bt_tools_new(const bt_config *cfg, const bt_connectors *conns, bt_diag *d)
{
    const bt_yaml_doc *doc = bt_config_tools(cfg);
    if (!doc)
        return NULL; /* the loader already said why */
    size_t before = bt_diag_count(d);
    bt_tools *t = bt_calloc(1, sizeof *t);
    t->defs = json_object();
    t->mctx = pcre2_match_context_create(NULL);
    pcre2_set_match_limit(t->mctx, 100000);
    pcre2_set_depth_limit(t->mctx, 1000);

    json_t *root = bt_yaml_root(doc);
    static const char *const top_keys[] = {"tools", "input_sets", NULL};
    bt_check_keys(d, doc, root, top_keys);
    json_t *sets = bt_check_object(d, doc, root, "input_sets", false);
    const char *sname;
    json_t *set;
    json_object_foreach(sets, sname, set)
    {
        if (!json_is_object(set))
            bt_diag_at(d, doc, sets, sname, "an input set must be a mapping of inputs");
    }
    json_t *list = bt_check_array(d, doc, root, "tools", true);
    if (json_array_size(list) > TOOLS_MAX)
        bt_diag_at(d, doc, root, "tools", "more than %d tools", TOOLS_MAX);
    size_t i;
    json_t *tool;
    json_array_foreach(list, i, tool)
    {
        if (i >= TOOLS_MAX)
            break;
        if (!json_is_object(tool)) {
            bt_diag_at(d, doc, list, NULL, "tools[%zu]: must be a mapping", i);
            continue;
        }
        check_tool(t, doc, root, tool, conns, d);
    }
    /* Compensating tools must exist; checked once all names are known. */
    json_array_foreach(list, i, tool)
    {
        const char *comp = json_string_value(json_object_get(tool, "compensate"));
        if (comp && !json_object_get(t->defs, comp))
            bt_diag_at(d, doc, tool, "compensate", "names tool '%s', which does not exist", comp);
    }
    if (bt_diag_count(d) > before) {
        bt_tools_free(t);
        return NULL;
    }
    return t;
}

void bt_tools_free(bt_tools *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nchecks; i++) {
        free(t->checks[i].tool);
        free(t->checks[i].input);
        pcre2_code_free(t->checks[i].re);
    }
    free(t->checks);
    pcre2_match_context_free(t->mctx);
    json_decref(t->defs);
    free(t);
}

const json_t *bt_tools_get(const bt_tools *t, const char *name)
{
    return name && !strchr(name, '@') ? json_object_get(t->defs, name) : NULL;
}

const json_t *bt_tools_for(const bt_tools *t, const char *name, const json_t *target)
{
    const json_t *base = bt_tools_get(t, name);
    const char *conn = json_string_value(json_object_get(target, "connection"));
    if (!base || !conn)
        return base;
    char key[300];
    bt_fmt(key, sizeof key, "%s@%s", name, conn);
    const json_t *var = json_object_get(t->defs, key);
    return var ? var : base;
}

static bool value_matches(const bt_tools *t, const struct input_check *c, const char *value)
{
    size_t len = strlen(value);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(c->re, NULL);
    int rc = pcre2_match(c->re, (PCRE2_SPTR)value, len, 0, 0, md, t->mctx);
    bool whole = false;
    if (rc > 0) {
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        whole = ov[0] == 0 && ov[1] == len;
    }
    pcre2_match_data_free(md);
    return whole;
}

json_t *bt_tools_validate(const bt_tools *t, const char *name, const json_t *inputs,
                          json_t **missing, char *err, size_t errlen)
{
    if (missing)
        *missing = NULL;
    const json_t *def = bt_tools_get(t, name);
    if (!def) {
        bt_fmt(err, errlen, "unknown tool '%s'", name ? name : "(none)");
        return NULL;
    }
    json_t *decl = json_object_get(def, "inputs");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)inputs, key, v)
    {
        if (!json_object_get(decl, key)) {
            bt_fmt(err, errlen, "tool %s takes no input named '%s'", name, key);
            return NULL;
        }
        const char *s = json_string_value(v);
        if (!s) {
            bt_fmt(err, errlen, "input %s of tool %s must be a string", key, name);
            return NULL;
        }
        size_t len = strlen(s);
        const struct input_check *c = find_check(t, name, key);
        if (len > INPUT_VALUE_MAX || !bt_utf8_valid(s, len) || !c || !value_matches(t, c, s)) {
            json_t *shown = json_stringn(s, len > 80 ? 80 : len);
            char *quoted = shown ? json_dumps(shown, JSON_ENCODE_ANY) : NULL;
            bt_fmt(err, errlen, "%s is not a valid %s for %s", quoted ? quoted : "the value", key,
                   name);
            free(quoted);
            json_decref(shown);
            return NULL;
        }
    }
    json_t *out = json_deep_copy(inputs);
    json_t *absent = json_array();
    json_t *spec;
    json_object_foreach(decl, key, spec)
    {
        if (json_object_get(out, key))
            continue;
        json_t *def_value = json_object_get(spec, "default");
        if (json_is_string(def_value))
            json_object_set(out, key, def_value);
        else if (json_is_true(json_object_get(spec, "required")))
            json_array_append_new(absent, json_string(key));
    }
    if (json_array_size(absent)) {
        bt_buf b = BT_BUF_INIT(1024);
        size_t i;
        json_t *m;
        json_array_foreach(absent, i, m)
            bt_buf_printf(&b, "%s%s", i ? ", " : "", json_string_value(m));
        bt_fmt(err, errlen, "tool %s needs %s", name, b.data);
        bt_buf_free(&b);
        json_decref(out);
        if (missing)
            *missing = absent;
        else
            json_decref(absent);
        return NULL;
    }
    json_decref(absent);
    return out;
}
