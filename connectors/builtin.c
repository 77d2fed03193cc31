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
#include <sys/socket.h>
#include <unistd.h>

#include "bot/store/store.h"
#include "connectors/connectors.h"
#include "connectors/connectors_int.h"

#define BUILTIN_POOL 4
#define BUILTIN_QUERY_MAX 10000
#define BUILTIN_TCP_DEFAULT_S 5
#define BUILTIN_TCP_MAX_S 30

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

/* ---- the asset questions -------------------------------------------------------
 * The filters and the answers are assets_answer.c's; here, the store. */

static enum bt_err op_count(bt_store *st, const json_t *inputs, json_t **result, char *err,
                            size_t errlen)
{
    json_t *f = NULL;
    enum bt_err e = bt_connectors__assets_filter(inputs, false, false, &f, err, errlen);
    if (e != BT_OK)
        return e;
    /* One grouped query gives both the breakdown and the total. */
    json_t *counts = NULL;
    char serr[BT_ERRLEN];
    if ((e = bt_store_assets_breakdown(st, f, &counts, serr, sizeof serr)) != BT_OK) {
        json_decref(f);
        return store_error(e, serr, err, errlen);
    }
    *result = bt_connectors__assets_count_answer(counts, f, NULL);
    return BT_OK;
}

static enum bt_err op_list(bt_store *st, const json_t *inputs, json_t **result, char *err,
                           size_t errlen)
{
    json_t *f = NULL;
    enum bt_err e = bt_connectors__assets_filter(inputs, true, false, &f, err, errlen);
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
    *result = bt_connectors__assets_list_answer(assets, total, f, NULL);
    json_decref(f);
    return BT_OK;
}

static enum bt_err op_get(bt_store *st, const json_t *inputs, const json_t *target, json_t **result,
                          char *err, size_t errlen)
{
    char num[32];
    const char *host = bt_connectors__asset_wanted(inputs, target, num, sizeof num, err, errlen);
    if (!host)
        return BT_EINVAL;
    json_t *f = json_pack("{s:s, s:i}", "host", host, "limit", 2);
    json_t *assets = NULL;
    char serr[BT_ERRLEN];
    enum bt_err e = bt_store_assets_query(st, f, &assets, serr, sizeof serr);
    json_decref(f);
    if (e != BT_OK)
        return store_error(e, serr, err, errlen);
    if (json_array_size(assets) == 0) {
        json_decref(assets);
        return bt_connectors__asset_unknown(host, err, errlen);
    }
    json_t *a = json_incref(json_array_get(assets, 0));
    json_decref(assets);
    *result = bt_connectors__asset_answer(a);
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
        bt_connectors__shown(address ? address : "", a, sizeof a);
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
    } else if (op && bt_connectors__in_list(builtin_ops, op)) {
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
