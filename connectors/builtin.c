/*
 * builtin.c - the `builtin` asset connector: questions about the inventory
 * (config/inventory.yaml, loaded into the store by the pipeline) answered
 * from the store, and a TCP reachability check from the baton host.
 *
 * Operations (tool `operation:`):
 *   count_assets  inputs: filter keys   data {total, breakdown[{os, role, count, label}]}
 *   list_assets   inputs: filter keys   data [asset, ...]
 *   get_asset     input host            data asset
 *   tcp_check     inputs address, port  data {reachable, address, port, ms, error?}
 * Filter keys are those of bt_store_assets_query; numeric ones (min_ram_gb,
 * max_ram_gb, min_cpu, limit, offset) may arrive as strings of digits.
 *
 * Threads: a bt_store handle serves one thread at a time, so invoke borrows
 * one from a small pool guarded by a mutex (opening one when the pool is
 * empty) and gives it back afterwards. Concurrent calls therefore never share
 * a handle, and a busy connector keeps at most BUILTIN_POOL handles open
 * between calls. The mutex is held only to take or return a handle, never
 * across a query.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bot/store/store.h"
#include "connectors/connectors.h"
#include "connectors/connectors_int.h"

#define BUILTIN_POOL 4
#define BUILTIN_QUERY_MAX 10000
#define BUILTIN_TCP_DEFAULT_S 5
#define BUILTIN_TCP_MAX_S 30
#define BUILTIN_LIST_NAMES 10

struct builtin {
    char *name;
    char *location; /* NULL: no store, every operation but tcp_check fails */
    pthread_mutex_t mu;
    bt_store *idle[BUILTIN_POOL];
    size_t nidle;
};

static const char *const builtin_ops[] = {"count_assets", "list_assets", "get_asset", "tcp_check",
                                          NULL};

static void builtin_free(void *state)
{
    struct builtin *b = state;
    if (!b)
        return;
    for (size_t i = 0; i < b->nidle; i++)
        bt_store_close(b->idle[i]);
    pthread_mutex_destroy(&b->mu);
    free(b->location);
    free(b->name);
    free(b);
}

static void *builtin_new(const struct bt_connectors__where *w, const char *name,
                         const char *store_location, bt_diag *d)
{
    bool ok = true;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)w->conf, key, v)
    {
        if (strcmp(key, "type") != 0) {
            bt_connectors__diag(d, w->doc, w->conf, w->prefix, key,
                                "unknown key (a builtin connector takes only `type:`; its "
                                "assets are in inventory.yaml)");
            ok = false;
        }
    }
    if (!ok)
        return NULL;
    struct builtin *b = bt_calloc(1, sizeof *b);
    b->name = bt_strdup(name);
    b->location = store_location ? bt_strdup(store_location) : NULL;
    pthread_mutex_init(&b->mu, NULL);
    return b;
}

static bool builtin_check_tool(void *state, const bt_yaml_doc *doc, const json_t *tool, bt_diag *d)
{
    struct builtin *b = state;
    const char *op = json_string_value(json_object_get(tool, "operation"));
    for (size_t i = 0; op && builtin_ops[i]; i++)
        if (strcmp(builtin_ops[i], op) == 0)
            return true;
    bt_connectors__tool_diag(d, doc, tool, "operation",
                             "unknown operation '%s' for connector '%s' (type builtin knows: "
                             "count_assets, list_assets, get_asset, tcp_check)",
                             op ? op : "", b->name);
    return false;
}

/* ---- the store pool ------------------------------------------------------- */

static enum bt_err pool_take(struct builtin *b, bt_store **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!b->location) {
        bt_fmt(err, errlen, "connector '%s' has no store to read the inventory from", b->name);
        return BT_EUNAVAIL;
    }
    pthread_mutex_lock(&b->mu);
    if (b->nidle)
        *out = b->idle[--b->nidle];
    pthread_mutex_unlock(&b->mu);
    if (*out)
        return BT_OK;
    char serr[BT_ERRLEN];
    if (bt_store_open(b->location, out, serr, sizeof serr) != BT_OK) {
        bt_fmt(err, errlen, "the inventory store cannot be opened: %s", serr);
        return BT_ECONNECTOR;
    }
    return BT_OK;
}

/* Give a handle back; one that just failed is closed, not reused, in case
 * the failure left it in a bad state. */
static void pool_give(struct builtin *b, bt_store *st, bool healthy)
{
    if (!st)
        return;
    if (healthy) {
        pthread_mutex_lock(&b->mu);
        if (b->nidle < BUILTIN_POOL) {
            b->idle[b->nidle++] = st;
            st = NULL;
        }
        pthread_mutex_unlock(&b->mu);
    }
    if (st)
        bt_store_close(st);
}

/* Store errors stop here: bad filters are the caller's (BT_EINVAL), the
 * rest is this connector failing. */
static enum bt_err store_error(enum bt_err e, const char *serr, char *err, size_t errlen)
{
    if (e == BT_EINVAL) {
        bt_fmt(err, errlen, "%s", serr);
        return BT_EINVAL;
    }
    bt_fmt(err, errlen, "the inventory store failed: %s", serr);
    return BT_ECONNECTOR;
}

/* ---- filters ---------------------------------------------------------------- */

static const char *const string_filters[] = {
    "os",  "environment",   "role", "status", "datacenter", "connection",
    "tag", "name_contains", "ip",   "host",   NULL,
};
static const char *const number_filters[] = {"min_ram_gb", "max_ram_gb", "min_cpu",
                                             "limit",      "offset",     NULL};

static bool in_list(const char *const *list, const char *s)
{
    for (size_t i = 0; list[i]; i++)
        if (strcmp(list[i], s) == 0)
            return true;
    return false;
}

/* Copy a user-supplied value into a message: printable ASCII, at most 64. */
static void shown(const char *s, char *out, size_t outlen)
{
    size_t o = 0;
    for (; *s && o + 1 < outlen && o < 64; s++) {
        char c = '?'; /* printable ASCII only */
        if (*s >= 0x20 && *s < 0x7f)
            c = *s;
        out[o++] = c;
    }
    out[o] = '\0';
}

/* Build a store filter from the step's inputs. Null values are skipped;
 * paging keys are dropped unless paging. *out is new. */
static enum bt_err make_filter(const json_t *inputs, bool paging, json_t **out, char *err,
                               size_t errlen)
{
    json_t *f = json_object();
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)inputs, key, v)
    {
        if (json_is_null(v))
            continue;
        if (in_list(string_filters, key)) {
            if (!json_is_string(v) || json_string_length(v) == 0) {
                bt_fmt(err, errlen, "filter '%s' must be a non-empty string", key);
                json_decref(f);
                return BT_EINVAL;
            }
            /* A copy: the caller's inputs are only borrowed. */
            json_object_set_new(f, key, json_stringn(json_string_value(v), json_string_length(v)));
        } else if (in_list(number_filters, key)) {
            if (!paging && (strcmp(key, "limit") == 0 || strcmp(key, "offset") == 0))
                continue;
            long n = 0;
            if (json_is_integer(v) && json_integer_value(v) >= 0 &&
                json_integer_value(v) <= 1000000000)
                n = (long)json_integer_value(v);
            else if (!json_is_string(v) ||
                     !bt_parse_long(json_string_value(v), 0, 1000000000, &n)) {
                char val[72];
                shown(json_is_string(v) ? json_string_value(v) : "?", val, sizeof val);
                bt_fmt(err, errlen, "filter '%s' must be a whole number, found '%s'", key, val);
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

/* "production Windows assets tagged pci in datacenter dc1": the filter in
 * words, around the noun `noun` (which the caller may pluralise). */
static void describe(bt_buf *b, const json_t *f, const char *noun)
{
    const char *status = json_string_value(json_object_get(f, "status"));
    const char *env = json_string_value(json_object_get(f, "environment"));
    const char *os = json_string_value(json_object_get(f, "os"));
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
    if ((s = json_string_value(json_object_get(f, "role"))))
        bt_buf_printf(b, " with role %s", s);
    if ((s = json_string_value(json_object_get(f, "tag"))))
        bt_buf_printf(b, " tagged %s", s);
    if ((s = json_string_value(json_object_get(f, "datacenter"))))
        bt_buf_printf(b, " in datacenter %s", s);
    if ((s = json_string_value(json_object_get(f, "connection"))))
        bt_buf_printf(b, " reached over %s", s);
    if ((s = json_string_value(json_object_get(f, "name_contains"))))
        bt_buf_printf(b, " whose name contains '%s'", s);
    if ((s = json_string_value(json_object_get(f, "ip"))))
        bt_buf_printf(b, " with IP %s%s", s, s[strlen(s) - 1] == '.' ? "*" : "");
    if ((s = json_string_value(json_object_get(f, "host"))))
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

/* ---- count_assets ------------------------------------------------------------ */

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
    return strcasecmp(json_string_value(json_object_get(a, "label")),
                      json_string_value(json_object_get(b, "label")));
}

/* Label and order the per-kind counts the store computed. Steals groups. */
static json_t *breakdown(json_t *groups)
{
    size_t n = json_array_size(groups);
    json_t **items = bt_calloc(n ? n : 1, sizeof(json_t *));
    for (size_t k = 0; k < n; k++) {
        json_t *g = json_array_get(groups, k);
        char *label = kind_label(json_string_value(json_object_get(g, "os")),
                                 json_string_value(json_object_get(g, "role")),
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

static enum bt_err op_count(bt_store *st, const json_t *inputs, json_t **result, char *err,
                            size_t errlen)
{
    json_t *f = NULL;
    enum bt_err e = make_filter(inputs, false, &f, err, errlen);
    if (e != BT_OK)
        return e;
    /* One grouped query gives both the breakdown and the total. */
    json_t *counts = NULL;
    char serr[BT_ERRLEN];
    if ((e = bt_store_assets_breakdown(st, f, &counts, serr, sizeof serr)) != BT_OK) {
        json_decref(f);
        return store_error(e, serr, err, errlen);
    }
    long long total = 0;
    for (size_t k = 0; k < json_array_size(counts); k++)
        total += json_integer_value(json_object_get(json_array_get(counts, k), "count"));
    json_t *groups = breakdown(counts);

    bt_buf text = BT_BUF_INIT(16384);
    if (total == 0) {
        bt_buf_puts(&text, "You have no ");
        describe(&text, f, "assets");
        bt_buf_puts(&text, ".");
    } else {
        bt_buf_printf(&text, "You have %lld ", total);
        describe(&text, f, total == 1 ? "asset" : "assets");
        for (size_t k = 0; k < json_array_size(groups); k++) {
            json_t *g = json_array_get(groups, k);
            bt_buf_printf(&text, "%s%" JSON_INTEGER_FORMAT " %s", k ? ", " : ": ",
                          json_integer_value(json_object_get(g, "count")),
                          json_string_value(json_object_get(g, "label")));
        }
        bt_buf_puts(&text, ".");
    }
    json_t *data =
        json_pack("{s:I, s:o, s:o}", "total", (json_int_t)total, "breakdown", groups, "filter", f);
    char *t = bt_buf_steal(&text);
    *result = json_pack("{s:o, s:s}", "data", data, "text", t);
    free(t);
    return BT_OK;
}

/* ---- list_assets -------------------------------------------------------------- */

static enum bt_err op_list(bt_store *st, const json_t *inputs, json_t **result, char *err,
                           size_t errlen)
{
    json_t *f = NULL;
    enum bt_err e = make_filter(inputs, true, &f, err, errlen);
    if (e != BT_OK)
        return e;
    json_t *assets = NULL;
    long long total = 0;
    char serr[BT_ERRLEN];
    if ((e = bt_store_assets_query(st, f, &assets, serr, sizeof serr)) != BT_OK ||
        (e = bt_store_assets_count(st, f, &total, serr, sizeof serr)) != BT_OK) {
        json_decref(assets);
        json_decref(f);
        return store_error(e, serr, err, errlen);
    }
    size_t n = json_array_size(assets);
    bt_buf text = BT_BUF_INIT(16384);
    if (n == 0) {
        bt_buf_puts(&text, "No ");
        describe(&text, f, "assets");
        bt_buf_puts(&text, " in the inventory.");
    } else {
        bt_buf_printf(&text, "%zu ", n);
        describe(&text, f, n == 1 ? "asset" : "assets");
        if ((long long)n < total)
            bt_buf_printf(&text, " (of %lld)", total);
        for (size_t i = 0; i < n && i < BUILTIN_LIST_NAMES; i++)
            bt_buf_printf(&text, "%s%s", i ? ", " : ": ",
                          json_string_value(json_object_get(json_array_get(assets, i), "name")));
        if (n > BUILTIN_LIST_NAMES)
            bt_buf_printf(&text, " and %zu more", n - BUILTIN_LIST_NAMES);
        bt_buf_puts(&text, ".");
    }
    json_decref(f);
    char *t = bt_buf_steal(&text);
    *result = json_pack("{s:o, s:s}", "data", assets, "text", t);
    free(t);
    return BT_OK;
}

/* ---- get_asset ---------------------------------------------------------------- */

static enum bt_err op_get(bt_store *st, const json_t *inputs, const json_t *target, json_t **result,
                          char *err, size_t errlen)
{
    char num[32];
    const char *host = bt_connectors__input_str(inputs, "host", num, sizeof num);
    if (!host)
        host = json_string_value(json_object_get(target, "name"));
    if (!host || !*host) {
        bt_fmt(err, errlen, "which asset? give its name, host name or IP address (input 'host')");
        return BT_EINVAL;
    }
    json_t *f = json_pack("{s:s, s:i}", "host", host, "limit", 2);
    json_t *assets = NULL;
    char serr[BT_ERRLEN];
    enum bt_err e = bt_store_assets_query(st, f, &assets, serr, sizeof serr);
    json_decref(f);
    if (e != BT_OK)
        return store_error(e, serr, err, errlen);
    if (json_array_size(assets) == 0) {
        char h[72];
        shown(host, h, sizeof h);
        bt_fmt(err, errlen, "no asset named '%s' in the inventory", h);
        json_decref(assets);
        return BT_EINVAL;
    }
    json_t *a = json_incref(json_array_get(assets, 0));
    json_decref(assets);

    bt_buf text = BT_BUF_INIT(8192);
    const char *fields[] = {"name",        "hostname", "ip",   "os",         "os_version",
                            "environment", "status",   "role", "datacenter", "connection"};
    const char *v[sizeof fields / sizeof fields[0]];
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        v[i] = json_string_value(json_object_get(a, fields[i]));
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
    char *t = bt_buf_steal(&text);
    *result = json_pack("{s:o, s:s}", "data", a, "text", t);
    free(t);
    return BT_OK;
}

/* ---- tcp_check ------------------------------------------------------------------ */

/* One non-blocking connect with a deadline. Never resolves a name: address
 * must be a dotted IPv4 address. Fills *reachable and, when not, why. */
static void tcp_connect(const struct in_addr *addr, int port, int64_t timeout_ms, bool *reachable,
                        char *why, size_t whylen)
{
    *reachable = false;
    why[0] = '\0';
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        char ebuf[128];
        bt_fmt(why, whylen, "cannot create a socket: %s", strerror_r(errno, ebuf, sizeof ebuf));
        return;
    }
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr = *addr;
    int soerr = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        *reachable = true;
    } else if (errno != EINPROGRESS) {
        soerr = errno;
    } else {
        /* The connect goes on in the kernel; wait for it to finish or for the
         * deadline, whichever comes first (poll is restarted after a signal
         * with the time that is left). */
        int64_t deadline = bt_mono_ms() + timeout_ms;
        for (;;) {
            int64_t left = deadline - bt_mono_ms();
            if (left <= 0) {
                soerr = ETIMEDOUT;
                break;
            }
            struct pollfd p = {fd, POLLOUT, 0};
            int r = poll(&p, 1, (int)left);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                soerr = r == 0 ? ETIMEDOUT : errno;
                break;
            }
            socklen_t len = sizeof soerr;
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
                soerr = errno;
            *reachable = soerr == 0;
            break;
        }
    }
    close(fd);
    if (!*reachable) {
        char ebuf[128];
        const char *msg =
            soerr == ETIMEDOUT ? "no answer (timed out)" : strerror_r(soerr, ebuf, sizeof ebuf);
        bt_fmt(why, whylen, "%s", msg);
        if (why[0] >= 'A' && why[0] <= 'Z')
            why[0] = (char)(why[0] - 'A' + 'a');
    }
}

static enum bt_err op_tcp(const json_t *tool, const json_t *inputs, const json_t *target,
                          json_t **result, char *err, size_t errlen)
{
    char num[32], pnum[32];
    const char *address = bt_connectors__input_str(inputs, "address", num, sizeof num);
    if (!address)
        address = json_string_value(json_object_get(target, "ip"));
    const char *port_s = bt_connectors__input_str(inputs, "port", pnum, sizeof pnum);
    struct in_addr addr;
    if (!address || inet_pton(AF_INET, address, &addr) != 1) {
        char a[72];
        shown(address ? address : "", a, sizeof a);
        bt_fmt(err, errlen, "address must be an IPv4 address like 10.0.0.1, found '%s'", a);
        return BT_EINVAL;
    }
    long port = 0;
    if (!port_s || !bt_parse_long(port_s, 1, 65535, &port)) {
        bt_fmt(err, errlen, "port must be a number between 1 and 65535");
        return BT_EINVAL;
    }
    long timeout_s = BUILTIN_TCP_DEFAULT_S;
    json_t *t = json_object_get(tool, "timeout_s");
    if (json_is_integer(t))
        timeout_s = (long)json_integer_value(t);
    if (timeout_s < 1)
        timeout_s = 1;
    if (timeout_s > BUILTIN_TCP_MAX_S)
        timeout_s = BUILTIN_TCP_MAX_S;

    bool reachable = false;
    char why[256];
    int64_t start = bt_mono_ms();
    tcp_connect(&addr, (int)port, timeout_s * 1000, &reachable, why, sizeof why);
    int64_t ms = bt_mono_ms() - start;

    json_t *data = json_pack("{s:b, s:s, s:i, s:I}", "reachable", reachable, "address", address,
                             "port", (int)port, "ms", (json_int_t)ms);
    if (!reachable)
        json_object_set_new(data, "error", json_string(why));
    const char *name = json_string_value(json_object_get(target, "name"));
    char who[128];
    if (name)
        bt_fmt(who, sizeof who, "%s (%s) port %ld", name, address, port);
    else
        bt_fmt(who, sizeof who, "%s port %ld", address, port);
    char *text = reachable ? bt_asprintf("%s is reachable from the baton host (%lld ms).", who,
                                         (long long)ms)
                           : bt_asprintf("%s is not reachable from the baton host: %s.", who, why);
    *result = json_pack("{s:o, s:s}", "data", data, "text", text);
    free(text);
    return BT_OK;
}

/* ---- invoke ----------------------------------------------------------------- */

static enum bt_err builtin_invoke(void *state, const json_t *tool, const json_t *inputs,
                                  const json_t *target, json_t **result, char *err, size_t errlen)
{
    struct builtin *b = state;
    const char *op = json_string_value(json_object_get(tool, "operation"));
    json_t *empty = NULL;
    if (!inputs)
        inputs = empty = json_object();
    enum bt_err e;
    if (op && strcmp(op, "tcp_check") == 0) {
        e = op_tcp(tool, inputs, target, result, err, errlen);
    } else if (op && in_list(builtin_ops, op)) {
        bt_store *st = NULL;
        e = pool_take(b, &st, err, errlen);
        if (e == BT_OK) {
            if (strcmp(op, "count_assets") == 0)
                e = op_count(st, inputs, result, err, errlen);
            else if (strcmp(op, "list_assets") == 0)
                e = op_list(st, inputs, result, err, errlen);
            else
                e = op_get(st, inputs, target, result, err, errlen);
            pool_give(b, st, e == BT_OK || e == BT_EINVAL);
        }
    } else {
        bt_fmt(err, errlen,
               "connector '%s' has no operation '%s' (it knows: count_assets, list_assets, "
               "get_asset, tcp_check)",
               b->name, op ? op : "");
        e = BT_EINVAL;
    }
    json_decref(empty);
    return e;
}

const struct bt_connectors__ops bt_connectors__builtin_ops = {
    "builtin", builtin_new, builtin_check_tool, builtin_invoke, builtin_free,
};
