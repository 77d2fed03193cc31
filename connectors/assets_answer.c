/*
 * assets_answer.c - the asset questions the builtin connector (from the
 * store) and the HTTP asset connectors (http, netbox) both answer:
 * count_assets, list_assets and get_asset. Here are what they share, so that
 * a tool can move between them by changing its `connector:` and nothing
 * else: the filter keys and their checks, and the answers (result shapes
 * and one-line texts). Where the assets come from is the caller's.
 * See connectors_int.h.
 *
 * Threads: no state; safe from any thread.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "connectors/connectors_int.h"

#define ANSWER_LIST_NAMES 10 /* names a list_assets text shows */

/* ---- filters ---------------------------------------------------------------- */

static const char *const string_filters[] = {
    "os",  "environment",   "role", "status", "datacenter", "connection",
    "tag", "name_contains", "ip",   "host",   NULL,
};
static const char *const number_filters[] = {"min_ram_gb", "max_ram_gb", "min_cpu",
                                             "limit",      "offset",     NULL};

static const char *fstr(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

void bt_connectors__shown(const char *s, char *out, size_t outlen)
{
    size_t o = 0;
    for (; *s && o + 1 < outlen && o < 64; s++)
        out[o++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?'; /* printable ASCII only */
    out[o] = '\0';
}

enum bt_err bt_connectors__assets_filter(const json_t *inputs, bool paging, bool limit_positive,
                                         json_t **out, char *err, size_t errlen)
{
    json_t *f = json_object();
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)inputs, key, v)
    {
        if (json_is_null(v))
            continue;
        if (bt_connectors__in_list(string_filters, key)) {
            if (!json_is_string(v) || json_string_length(v) == 0) {
                bt_fmt(err, errlen, "filter '%s' must be a non-empty string", key);
                json_decref(f);
                return BT_EINVAL;
            }
            /* A copy: the caller's inputs are only borrowed. */
            json_object_set_new(f, key, json_stringn(json_string_value(v), json_string_length(v)));
        } else if (bt_connectors__in_list(number_filters, key)) {
            if (!paging && (strcmp(key, "limit") == 0 || strcmp(key, "offset") == 0))
                continue;
            long n = 0;
            if (json_is_integer(v) && json_integer_value(v) >= 0 &&
                json_integer_value(v) <= 1000000000)
                n = (long)json_integer_value(v);
            else if (!json_is_string(v) ||
                     !bt_parse_long(json_string_value(v), 0, 1000000000, &n)) {
                char val[72];
                bt_connectors__shown(json_is_string(v) ? json_string_value(v) : "?", val,
                                     sizeof val);
                bt_fmt(err, errlen, "filter '%s' must be a whole number, found '%s'", key, val);
                json_decref(f);
                return BT_EINVAL;
            }
            if (limit_positive && strcmp(key, "limit") == 0 && n == 0) {
                bt_fmt(err, errlen, "filter 'limit' must be a positive whole number");
                json_decref(f);
                return BT_EINVAL;
            }
            json_object_set_new(f, key, json_integer(n));
        } else {
            bt_fmt(err, errlen,
                   "unknown filter '%s' (known: os, environment, role, status, datacenter, "
                   "connection, tag, name_contains, ip, host, min_ram_gb, max_ram_gb, min_cpu)",
                   key);
            json_decref(f);
            return BT_EINVAL;
        }
    }
    *out = f;
    return BT_OK;
}

/* ---- wording ------------------------------------------------------------------ */

/* "production Windows assets tagged pci in datacenter dc1": the filter in
 * words, around the noun `noun` (which the caller may pluralise). */
static void describe(bt_buf *b, const json_t *f, const char *noun)
{
    const char *status = fstr(f, "status");
    const char *env = fstr(f, "environment");
    const char *os = fstr(f, "os");
    if (status)
        bt_buf_printf(b, "%s ", status);
    if (env)
        bt_buf_printf(b, "%s ", env);
    if (os)
        bt_buf_printf(b, "%s ",
                      strcasecmp(os, "windows") == 0 ? "Windows"
                      : strcasecmp(os, "linux") == 0 ? "Linux"
                                                     : os);
    bt_buf_puts(b, noun);
    const char *s;
    if ((s = fstr(f, "role")))
        bt_buf_printf(b, " with role %s", s);
    if ((s = fstr(f, "tag")))
        bt_buf_printf(b, " tagged %s", s);
    if ((s = fstr(f, "datacenter")))
        bt_buf_printf(b, " in datacenter %s", s);
    if ((s = fstr(f, "connection")))
        bt_buf_printf(b, " reached over %s", s);
    if ((s = fstr(f, "name_contains")))
        bt_buf_printf(b, " whose name contains '%s'", s);
    if ((s = fstr(f, "ip")))
        bt_buf_printf(b, " with IP %s%s", s, s[strlen(s) - 1] == '.' ? "*" : "");
    if ((s = fstr(f, "host")))
        bt_buf_printf(b, " named %s", s);
    json_t *n;
    if ((n = json_object_get(f, "min_ram_gb")))
        bt_buf_printf(b, " with at least %" JSON_INTEGER_FORMAT " GB of RAM",
                      json_integer_value(n));
    if ((n = json_object_get(f, "max_ram_gb")))
        bt_buf_printf(b, " with at most %" JSON_INTEGER_FORMAT " GB of RAM", json_integer_value(n));
    if ((n = json_object_get(f, "min_cpu")))
        bt_buf_printf(b, " with at least %" JSON_INTEGER_FORMAT " CPUs", json_integer_value(n));
}

struct role_words {
    const char *role, *one, *many;
};

static const struct role_words role_table[] = {
    {"workstation", "workstation", "workstations"},
    {"web", "web server", "web servers"},
    {"database", "database server", "database servers"},
    {"api", "API server", "API servers"},
    {"cache", "cache server", "cache servers"},
    {"monitoring", "monitoring server", "monitoring servers"},
    {"ci", "CI server", "CI servers"},
    {"backup", "backup server", "backup servers"},
    {"directory", "directory server", "directory servers"},
    {"loadbalancer", "load balancer", "load balancers"},
    {"baton", "baton host", "baton hosts"},
};

/* "Windows workstations", "Linux web server": os and role for a count. */
static char *kind_label(const char *os, const char *role, long long count)
{
    const char *os_word = strcasecmp(os, "windows") == 0 ? "Windows"
                          : strcasecmp(os, "linux") == 0 ? "Linux"
                                                         : os;
    for (size_t i = 0; i < sizeof role_table / sizeof role_table[0]; i++)
        if (strcasecmp(role_table[i].role, role) == 0)
            return bt_asprintf("%s %s", os_word,
                               count == 1 ? role_table[i].one : role_table[i].many);
    return bt_asprintf("%s %s server%s", os_word, role, count == 1 ? "" : "s");
}

static int by_count_then_label(const void *pa, const void *pb)
{
    json_t *a = *(json_t *const *)pa, *b = *(json_t *const *)pb;
    json_int_t ca = json_integer_value(json_object_get(a, "count"));
    json_int_t cb = json_integer_value(json_object_get(b, "count"));
    if (ca != cb)
        return ca > cb ? -1 : 1;
    return strcasecmp(fstr(a, "label"), fstr(b, "label"));
}

/* Label the per-kind counts and order them, most numerous first. Steals
 * groups; returns a new array. */
static json_t *breakdown(json_t *groups)
{
    size_t n = json_array_size(groups);
    json_t **items = bt_calloc(n ? n : 1, sizeof(json_t *));
    for (size_t k = 0; k < n; k++) {
        json_t *g = json_array_get(groups, k);
        char *label = kind_label(fstr(g, "os"), fstr(g, "role"),
                                 json_integer_value(json_object_get(g, "count")));
        json_object_set_new(g, "label", json_string(label));
        free(label);
        items[k] = json_incref(g);
    }
    qsort(items, n, sizeof(json_t *), by_count_then_label);
    json_t *sorted = json_array();
    for (size_t k = 0; k < n; k++)
        json_array_append_new(sorted, items[k]);
    free(items);
    json_decref(groups);
    return sorted;
}

/* {data, text} with text taken from b (emptied). */
static json_t *answer(json_t *data, bt_buf *b)
{
    char *t = bt_buf_steal(b);
    json_t *res = json_pack("{s:o, s:s}", "data", data, "text", t);
    free(t);
    return res;
}

/* ---- the answers ------------------------------------------------------------- */

json_t *bt_connectors__assets_count_answer(json_t *groups, json_t *filter, const char *incomplete)
{
    long long total = 0;
    for (size_t k = 0; k < json_array_size(groups); k++)
        total += json_integer_value(json_object_get(json_array_get(groups, k), "count"));
    groups = breakdown(groups);

    bt_buf text = BT_BUF_INIT(16384);
    if (total == 0) {
        bt_buf_puts(&text, "You have no ");
        describe(&text, filter, "assets");
    } else {
        bt_buf_printf(&text, "You have %lld ", total);
        describe(&text, filter, total == 1 ? "asset" : "assets");
        for (size_t k = 0; k < json_array_size(groups); k++) {
            json_t *g = json_array_get(groups, k);
            bt_buf_printf(&text, "%s%" JSON_INTEGER_FORMAT " %s", k ? ", " : ": ",
                          json_integer_value(json_object_get(g, "count")), fstr(g, "label"));
        }
    }
    if (incomplete)
        bt_buf_puts(&text, incomplete);
    bt_buf_puts(&text, ".");
    json_t *data = json_pack("{s:I, s:o, s:o}", "total", (json_int_t)total, "breakdown", groups,
                             "filter", filter);
    if (incomplete)
        json_object_set_new(data, "truncated", json_true());
    return answer(data, &text);
}

json_t *bt_connectors__assets_list_answer(json_t *assets, long long total, const json_t *filter,
                                          const char *incomplete)
{
    size_t n = json_array_size(assets);
    bt_buf text = BT_BUF_INIT(16384);
    if (n == 0) {
        bt_buf_puts(&text, "No ");
        describe(&text, filter, "assets");
        bt_buf_puts(&text, " in the inventory");
    } else {
        bt_buf_printf(&text, "%zu ", n);
        describe(&text, filter, n == 1 ? "asset" : "assets");
        if ((long long)n < total)
            bt_buf_printf(&text, " (of %lld)", total);
        for (size_t i = 0; i < n && i < ANSWER_LIST_NAMES; i++)
            bt_buf_printf(&text, "%s%s", i ? ", " : ": ", fstr(json_array_get(assets, i), "name"));
        if (n > ANSWER_LIST_NAMES)
            bt_buf_printf(&text, " and %zu more", n - ANSWER_LIST_NAMES);
    }
    if (incomplete)
        bt_buf_puts(&text, incomplete);
    bt_buf_puts(&text, ".");
    return answer(assets, &text);
}

const char *bt_connectors__asset_wanted(const json_t *inputs, const json_t *target, char *buf,
                                        size_t buflen, char *err, size_t errlen)
{
    const char *host = bt_connectors__input_str(inputs, "host", buf, buflen);
    if (!host)
        host = fstr(target, "name");
    if (!host || !*host) {
        bt_fmt(err, errlen, "which asset? give its name, host name or IP address (input 'host')");
        return NULL;
    }
    return host;
}

enum bt_err bt_connectors__asset_unknown(const char *host, char *err, size_t errlen)
{
    char h[72];
    bt_connectors__shown(host, h, sizeof h);
    bt_fmt(err, errlen, "no asset named '%s' in the inventory", h);
    return BT_EINVAL;
}

json_t *bt_connectors__asset_answer(json_t *a)
{
    bt_buf text = BT_BUF_INIT(8192);
    const char *fields[] = {"name",        "hostname", "ip",   "os",         "os_version",
                            "environment", "status",   "role", "datacenter", "connection"};
    const char *v[sizeof fields / sizeof fields[0]];
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        v[i] = fstr(a, fields[i]);
        v[i] = v[i] ? v[i] : "?";
    }
    /* "Linux Debian 12 web server": the OS word, unless the version already
     * says it ("Windows 11 Pro"), then the version and the kind. */
    char *kind = kind_label(v[3], v[7], 1);
    const char *kind_rest = strchr(kind, ' ');
    size_t os_len = kind_rest ? (size_t)(kind_rest - kind) : strlen(kind);
    bool version_says_os = strncasecmp(v[4], kind, os_len) == 0;
    bt_buf_printf(&text, "%s (%s, %s): %.*s%s%s%s, %s, %s, datacenter %s", v[0], v[1], v[2],
                  version_says_os ? 0 : (int)os_len, kind, version_says_os ? "" : " ", v[4],
                  kind_rest ? kind_rest : "", v[5], v[6], v[8]);
    bt_buf_printf(&text,
                  ", %" JSON_INTEGER_FORMAT " CPUs, %" JSON_INTEGER_FORMAT " GB RAM, connection %s",
                  json_integer_value(json_object_get(a, "cpu")),
                  json_integer_value(json_object_get(a, "ram_gb")), v[9]);
    free(kind);
    json_t *services = json_object_get(a, "services");
    for (size_t i = 0; i < json_array_size(services); i++)
        bt_buf_printf(&text, "%s%s",
                      i ? ", " : "; services: ", json_string_value(json_array_get(services, i)));
    json_t *tags = json_object_get(a, "tags");
    for (size_t i = 0; i < json_array_size(tags); i++)
        bt_buf_printf(&text, "%s%s",
                      i ? ", " : "; tags: ", json_string_value(json_array_get(tags, i)));
    bt_buf_puts(&text, ".");
    return answer(a, &text);
}
