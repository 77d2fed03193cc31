/* connectors.c - the registry: builds the named connectors of baton.yaml
 * through each type's ops table and routes checks and calls to them. See
 * connectors.h and connectors_int.h. */
#include "connectors/connectors.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "connectors/connectors_int.h"

#define CONN_MAX 64

static const struct bt_connectors__ops *const conn_types[] = {
    &bt_connectors__builtin_ops, &bt_connectors__local_ops,  &bt_connectors__ansible_ops,
    &bt_connectors__http_ops,    &bt_connectors__netbox_ops,
};
#define CONN_NTYPES (sizeof conn_types / sizeof conn_types[0])

struct connector {
    char *name;
    const struct bt_connectors__ops *ops;
    void *state;
    /* Shared by every thread that invokes this connector; locks itself. */
    struct bt_connectors__breaker *breaker;
};

struct bt_connectors {
    struct connector *items;
    size_t count;
};

/* ---- helpers shared by the types ------------------------------------------ */

void bt_connectors__diag(bt_diag *d, const bt_yaml_doc *doc, const json_t *obj, const char *prefix,
                         const char *key, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char name[256];
    if (key)
        bt_fmt(name, sizeof name, "%s.%s", prefix, key);
    else
        bt_strlcpy(name, prefix, sizeof name);
    bt_diag_add(d, bt_yaml_name(doc), bt_yaml_key_line(doc, obj, key), name, "%s", msg);
}

const char *bt_connectors__tool_name(const json_t *tool)
{
    const char *n = json_string_value(json_object_get(tool, "name"));
    return n ? n : "(unnamed)";
}

void bt_connectors__tool_diag(bt_diag *d, const bt_yaml_doc *doc, const json_t *tool,
                              const char *key, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Name the tool by its place in the list, as other checks do. */
    json_t *tools = json_object_get(bt_yaml_root(doc), "tools");
    size_t index = 0;
    bool found = false;
    for (size_t i = 0; json_is_array(tools) && i < json_array_size(tools); i++) {
        if (json_array_get(tools, i) == tool) {
            index = i;
            found = true;
            break;
        }
    }
    char name[256];
    if (found)
        bt_fmt(name, sizeof name, "tools[%zu].%s", index, key);
    else
        bt_fmt(name, sizeof name, "tool %s: %s", bt_connectors__tool_name(tool), key);
    bt_diag_add(d, bt_yaml_name(doc), bt_yaml_key_line(doc, tool, key), name, "%s (tool %s)", msg,
                bt_connectors__tool_name(tool));
}

static bool set_has(const json_t *set, const char *name)
{
    return json_is_object(set) && json_object_get(set, name) != NULL;
}

bool bt_connectors__input_declared(const bt_yaml_doc *doc, const json_t *tool, const char *name)
{
    if (set_has(json_object_get(tool, "inputs"), name))
        return true;
    json_t *sets = json_object_get(bt_yaml_root(doc), "input_sets");
    json_t *from = json_object_get(tool, "inputs_from");
    if (json_is_string(from))
        return set_has(json_object_get(sets, json_string_value(from)), name);
    for (size_t i = 0; json_is_array(from) && i < json_array_size(from); i++) {
        const char *set = json_string_value(json_array_get(from, i));
        if (set && set_has(json_object_get(sets, set), name))
            return true;
    }
    return false;
}

const char *bt_connectors__input_str(const json_t *inputs, const char *name, char *buf,
                                     size_t buflen)
{
    json_t *v = json_is_object(inputs) ? json_object_get(inputs, name) : NULL;
    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_integer(v)) {
        bt_fmt(buf, buflen, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf;
    }
    return NULL;
}

bool bt_connectors__in_list(const char *const *list, const char *s)
{
    for (size_t i = 0; list[i]; i++)
        if (strcmp(list[i], s) == 0)
            return true;
    return false;
}

bool bt_connectors__abs_path_ok(const char *p)
{
    if (!p || p[0] != '/' || strlen(p) > 4096)
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

long bt_connectors__tool_long(const json_t *tool, const char *key, long dflt, long min, long max)
{
    json_t *v = json_object_get(tool, key);
    long n = dflt;
    if (json_is_integer(v))
        n = (long)json_integer_value(v);
    else if (json_is_string(v) && !bt_parse_long(json_string_value(v), min, max, &n))
        n = dflt;
    return n < min ? min : n > max ? max : n;
}

/* ---- the registry ------------------------------------------------------------ */

static const struct bt_connectors__ops *find_type(const char *type)
{
    for (size_t i = 0; i < CONN_NTYPES; i++)
        if (strcmp(conn_types[i]->type, type) == 0)
            return conn_types[i];
    return NULL;
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 32 || !(s[0] >= 'a' && s[0] <= 'z'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static struct connector *find(const bt_connectors *c, const char *name)
{
    for (size_t i = 0; c && name && i < c->count; i++)
        if (strcmp(c->items[i].name, name) == 0)
            return &c->items[i];
    return NULL;
}

bt_connectors *bt_connectors_new(const bt_config *cfg, const char *store_location, bt_diag *d)
{
    bt_connectors *c = bt_calloc(1, sizeof *c);
    const bt_yaml_doc *doc = bt_config_main(cfg);
    json_t *section = bt_config_get(cfg, "connectors");
    /* No section means no connectors: every tool that names one is then
     * reported by bt_connectors_check_tool, which says what is missing. */
    if (!section || json_is_null(section))
        return c;
    if (!json_is_object(section)) {
        bt_diag_at(d, doc, bt_yaml_root(doc), "connectors",
                   "must be a mapping of named connectors");
        bt_connectors_free(c);
        return NULL;
    }
    bool ok = true;
    c->items = bt_calloc(json_object_size(section), sizeof(struct connector));
    const char *name;
    json_t *conf;
    json_object_foreach(section, name, conf)
    {
        char prefix[128];
        bt_fmt(prefix, sizeof prefix, "connectors.%s", name);
        if (c->count == CONN_MAX) {
            bt_connectors__diag(d, doc, section, "connectors", name, "more than %d connectors",
                                CONN_MAX);
            ok = false;
            break;
        }
        if (!valid_name(name)) {
            bt_connectors__diag(d, doc, section, "connectors", name,
                                "connector names are 1-32 of a-z, 0-9, _ and -, starting with a "
                                "letter");
            ok = false;
            continue;
        }
        if (!json_is_object(conf)) {
            bt_connectors__diag(d, doc, section, "connectors", name,
                                "must be a mapping with at least `type:`");
            ok = false;
            continue;
        }
        json_t *type = json_object_get(conf, "type");
        if (!json_is_string(type)) {
            bt_connectors__diag(d, doc, conf, prefix, "type",
                                type ? "must be a string" : "required, missing");
            ok = false;
            continue;
        }
        const struct bt_connectors__ops *ops = find_type(json_string_value(type));
        if (!ops) {
            bt_connectors__diag(d, doc, conf, prefix, "type",
                                "unknown connector type '%s' (known: builtin, local, ansible, "
                                "http, netbox)",
                                json_string_value(type));
            ok = false;
            continue;
        }
        struct bt_connectors__where w = {doc, conf, prefix};
        void *state = ops->new (&w, name, store_location, d);
        if (!state) {
            ok = false;
            continue;
        }
        c->items[c->count].name = bt_strdup(name);
        c->items[c->count].ops = ops;
        c->items[c->count].state = state;
        c->items[c->count].breaker = bt_connectors__breaker_new(name, 0, 0, NULL, NULL);
        c->count++;
    }
    if (!ok) {
        bt_connectors_free(c);
        return NULL;
    }
    return c;
}

void bt_connectors_free(bt_connectors *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->count; i++) {
        c->items[i].ops->free(c->items[i].state);
        bt_connectors__breaker_free(c->items[i].breaker);
        free(c->items[i].name);
    }
    free(c->items);
    free(c);
}

bool bt_connectors_has(const bt_connectors *c, const char *name)
{
    return find(c, name) != NULL;
}

const char *bt_connectors_type(const bt_connectors *c, const char *name)
{
    struct connector *k = find(c, name);
    return k ? k->ops->type : NULL;
}

bool bt_connectors_check_tool(const bt_connectors *c, const bt_yaml_doc *doc, const json_t *tool,
                              bt_diag *d)
{
    if (!json_is_object(tool))
        return false;
    json_t *name = json_object_get(tool, "connector");
    if (!json_is_string(name)) {
        bt_connectors__tool_diag(d, doc, tool, "connector",
                                 name ? "must be a string" : "required, missing");
        return false;
    }
    struct connector *k = find(c, json_string_value(name));
    if (!k) {
        bt_buf known = BT_BUF_INIT(4096);
        for (size_t i = 0; c && i < c->count; i++)
            bt_buf_printf(&known, "%s%s", i ? ", " : "", c->items[i].name);
        bt_connectors__tool_diag(d, doc, tool, "connector",
                                 "no connector named '%s' in baton.yaml (configured: %s)",
                                 json_string_value(name), known.len ? known.data : "none");
        bt_buf_free(&known);
        return false;
    }
    if (!json_is_string(json_object_get(tool, "operation"))) {
        bt_connectors__tool_diag(d, doc, tool, "operation",
                                 json_object_get(tool, "operation") ? "must be a string"
                                                                    : "required, missing");
        return false;
    }
    return k->ops->check_tool(k->state, doc, tool, d);
}

enum bt_err bt_connectors_invoke(bt_connectors *c, const json_t *tool, const json_t *inputs,
                                 const json_t *target, json_t **result, char *err, size_t errlen)
{
    *result = NULL;
    if (errlen)
        err[0] = '\0';
    const char *name = json_string_value(json_object_get(tool, "connector"));
    struct connector *k = find(c, name);
    if (!k) {
        bt_fmt(err, errlen, "no connector named '%s' is configured", name ? name : "(none)");
        return BT_EUNAVAIL;
    }
    if (inputs && !json_is_object(inputs)) {
        bt_fmt(err, errlen, "inputs must be an object");
        return BT_EINVAL;
    }
    /* The breaker sits between every caller and the connector: while it is
     * open nothing reaches the service, and every outcome is counted. */
    struct bt_connectors__ticket ticket;
    enum bt_err e = bt_connectors__breaker_enter(k->breaker, &ticket, err, errlen);
    if (e != BT_OK)
        return e;
    e = k->ops->invoke(k->state, tool, inputs, target, result, err, errlen);
    bt_connectors__breaker_leave(k->breaker, &ticket, e);
    if (e != BT_OK && errlen && !err[0])
        bt_fmt(err, errlen, "%s", bt_strerror(e));
    return e;
}

void bt_connectors_set_breaker(bt_connectors *c, int failures, int cooldown_s)
{
    for (size_t i = 0; c && i < c->count; i++)
        bt_connectors__breaker_configure(c->items[i].breaker, failures,
                                         cooldown_s > 0 ? (int64_t)cooldown_s * 1000 : 0);
}

json_t *bt_connectors_breakers(bt_connectors *c)
{
    json_t *out = json_array();
    for (size_t i = 0; c && i < c->count; i++) {
        struct bt_connectors__breaker_info info;
        bt_connectors__breaker_info(c->items[i].breaker, &info);
        json_array_append_new(out, json_pack("{s:s, s:s, s:i, s:i, s:I, s:I}", "connector",
                                             c->items[i].name, "state",
                                             bt_connectors__breaker_state_name(info.state),
                                             "failures", info.failures, "threshold", info.threshold,
                                             "times_opened", (json_int_t)info.times_opened,
                                             "retry_in_ms", (json_int_t)info.retry_in_ms));
    }
    return out;
}

bool bt_connectors__unsafe_char(const char *v, size_t n, char *what, size_t whatlen)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            (c != '\0' && strchr("@%+=:,./_-", c) != NULL))
            continue;
        if (c == ' ')
            bt_fmt(what, whatlen, "a space");
        else if (c < 0x20 || c >= 0x7f)
            bt_fmt(what, whatlen, "the byte 0x%02x", c);
        else
            bt_fmt(what, whatlen, "'%c'", c);
        return true;
    }
    return false;
}
