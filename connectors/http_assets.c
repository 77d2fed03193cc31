/*
 * http_assets.c - asset connectors over HTTP services:
 *
 *   type: http, api: assets   an OpsConductor-style asset service:
 *                             GET {base}/?search=&os_type=&service_type=
 *                             &is_active=&skip=&limit= answers {success,
 *                             data: {assets, total, skip, limit}};
 *                             GET {base}/{id} answers one asset
 *   type: netbox              NetBox's REST API: /api/dcim/devices/ and
 *                             /api/virtualization/virtual-machines/, paged
 *                             by `next` links, Authorization: Token
 *
 * (`type: http, api: automation` lives in http_automation.c; the `http`
 * ops table below hands such connectors to it.)
 *
 * The operations are the builtin connector's: count_assets, list_assets and
 * get_asset, with the same filter keys, the same result shapes and the same
 * one-line texts (assets_answer.c checks the filters and builds the answers
 * for both), so a tool can move from the builtin inventory to a service by
 * changing its `connector:` and nothing else. Each service's records are
 * mapped onto baton's asset fields (docs/connectors.md has the tables).
 *
 * Filters: what the service can apply is sent with the request, to keep
 * pages few; every filter is then applied again here, to the mapped assets,
 * so an answer never depends on how a service reads its query parameters.
 * At most ASSETS_READ_MAX records are read per question; past that the
 * answer says it is incomplete.
 *
 * Threads: the state is read-only after creation; the HTTP client locks
 * what it shares.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "connectors/connectors.h"
#include "connectors/connectors_int.h"

#define ASSETS_READ_MAX 10000 /* records read from a service per question */
#define ASSETS_PAGE 100       /* asked per page; a service may send fewer */
#define ASSETS_LIST_DEFAULT 1000
#define ASSETS_LIST_MAX 10000
#define ASSETS_TIMEOUT_MAX_S 3600

enum asset_api { API_OPSCONDUCTOR, API_NETBOX };

struct assets {
    enum asset_api api;
    char *name;
    struct bt_connectors__http *http;
};

static const char *const asset_ops[] = {"count_assets", "list_assets", "get_asset", NULL};

/* ---- filters (the builtin connector's keys and meaning) ---------------------- */

static const char *fstr(const json_t *f, const char *key)
{
    return json_string_value(json_object_get(f, key));
}

static bool eq_field(const json_t *a, const char *field, const char *want)
{
    const char *v = fstr(a, field);
    return v && strcasecmp(v, want) == 0;
}

/* Case-insensitive substring (ASCII), like the store's instr(lower()). */
static bool contains_ci(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; hay && *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0)
            return true;
    return n == 0;
}

/* The store's filter semantics (bot/store/store.h), on one mapped asset. */
static bool matches(const json_t *a, const json_t *f)
{
    static const char *const exact[] = {"os",     "environment", "role",
                                        "status", "datacenter",  "connection"};
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++) {
        const char *want = fstr(f, exact[i]);
        if (want && !eq_field(a, exact[i], want))
            return false;
    }
    const char *s;
    if ((s = fstr(f, "tag"))) {
        bool found = false;
        json_t *tags = json_object_get(a, "tags");
        for (size_t i = 0; !found && i < json_array_size(tags); i++) {
            const char *t = json_string_value(json_array_get(tags, i));
            found = t && strcasecmp(t, s) == 0;
        }
        if (!found)
            return false;
    }
    if ((s = fstr(f, "name_contains")) && !contains_ci(fstr(a, "name"), s) &&
        !contains_ci(fstr(a, "hostname"), s))
        return false;
    if ((s = fstr(f, "ip"))) {
        const char *ip = fstr(a, "ip");
        size_t n = strlen(s);
        bool ok = ip && (s[n - 1] == '.' ? strncasecmp(ip, s, n) == 0 : strcasecmp(ip, s) == 0);
        if (!ok)
            return false;
    }
    if ((s = fstr(f, "host")) && !eq_field(a, "name", s) && !eq_field(a, "hostname", s) &&
        !eq_field(a, "ip", s))
        return false;
    json_int_t ram = json_integer_value(json_object_get(a, "ram_gb"));
    json_int_t cpu = json_integer_value(json_object_get(a, "cpu"));
    json_t *n;
    if ((n = json_object_get(f, "min_ram_gb")) && ram < json_integer_value(n))
        return false;
    if ((n = json_object_get(f, "max_ram_gb")) && ram > json_integer_value(n))
        return false;
    if ((n = json_object_get(f, "min_cpu")) && cpu < json_integer_value(n))
        return false;
    return true;
}

static int by_name(const void *pa, const void *pb)
{
    json_t *a = *(json_t *const *)pa, *b = *(json_t *const *)pb;
    return strcasecmp(fstr(a, "name"), fstr(b, "name"));
}

/* Sort an array of objects in place (qsort on a copy of the pointers). */
static void sort_array(json_t *arr, int (*cmp)(const void *, const void *))
{
    size_t n = json_array_size(arr);
    if (n < 2)
        return;
    json_t **items = bt_calloc(n, sizeof(json_t *));
    for (size_t i = 0; i < n; i++)
        items[i] = json_incref(json_array_get(arr, i));
    qsort(items, n, sizeof(json_t *), cmp);
    json_array_clear(arr);
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, items[i]);
    free(items);
}

static const char *const truncated_note =
    " (only the first 10000 records the service holds were read; there are more)";

/* ---- mapping records onto baton's assets --------------------------------------- */

static const char *str_or(const json_t *v, const char *dflt)
{
    const char *s = json_string_value(v);
    return s && *s ? s : dflt;
}

/* A lowercase copy as a new JSON string. */
static json_t *lower_str(const char *s)
{
    char *l = bt_lower(s);
    json_t *j = json_string(l);
    free(l);
    return j ? j : json_string("?");
}

/* A whole number from a JSON integer, real, or decimal string ("4.00", as
 * NetBox sends vcpus); dflt for anything else or out of range. */
static json_int_t num_or(const json_t *v, json_int_t dflt)
{
    double x;
    if (json_is_integer(v))
        return json_integer_value(v);
    if (json_is_real(v)) {
        x = json_real_value(v);
    } else if (json_is_string(v) && json_string_length(v) > 0 && json_string_length(v) < 32) {
        char *end = NULL;
        x = strtod(json_string_value(v), &end);
        if (!end || *end)
            return dflt;
    } else {
        return dflt;
    }
    if (!(x >= 0 && x <= 1e9)) /* also NaN */
        return dflt;
    return (json_int_t)(x + 0.5);
}

/* A list of strings (non-strings skipped), or a comma-separated string. */
static json_t *str_list(const json_t *v, const char *field)
{
    json_t *out = json_array();
    for (size_t i = 0; json_is_array(v) && i < json_array_size(v); i++) {
        json_t *e = json_array_get(v, i);
        const char *s = field && json_is_object(e) ? json_string_value(json_object_get(e, field))
                                                   : json_string_value(e);
        if (s && *s)
            json_array_append_new(out, json_string(s));
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        while (*s) {
            size_t n = strcspn(s, ",");
            size_t a = 0, b = n;
            while (a < b && s[a] == ' ')
                a++;
            while (b > a && s[b - 1] == ' ')
                b--;
            if (b > a)
                json_array_append_new(out, json_stringn(s + a, b - a));
            s += n + (s[n] == ',');
        }
    }
    return out;
}

static void set_optional(json_t *a, const char *key, const json_t *v)
{
    const char *s = json_string_value(v);
    if (s && *s)
        json_object_set_new(a, key, json_string(s));
}

/* An OpsConductor asset record as a baton asset; NULL when it has no name. */
static json_t *map_opsconductor(const json_t *r)
{
    const char *name = json_string_value(json_object_get(r, "name"));
    if (!name || !*name)
        return NULL;
    json_t *a = json_object();
    json_object_set_new(a, "name", json_string(name));
    json_object_set_new(a, "hostname", json_string(str_or(json_object_get(r, "hostname"), name)));
    json_object_set_new(a, "ip", json_string(str_or(json_object_get(r, "ip_address"), "")));
    json_object_set_new(a, "os", lower_str(str_or(json_object_get(r, "os_type"), "unknown")));
    json_object_set_new(a, "os_version", json_string(str_or(json_object_get(r, "os_version"), "")));
    json_object_set_new(a, "role", lower_str(str_or(json_object_get(r, "device_type"), "unknown")));
    json_object_set_new(a, "environment",
                        lower_str(str_or(json_object_get(r, "environment"), "unknown")));
    json_t *active = json_object_get(r, "is_active");
    bool is_active = json_is_boolean(active)
                         ? json_is_true(active)
                         : strcasecmp(str_or(json_object_get(r, "status"), ""), "active") == 0;
    json_object_set_new(a, "status", json_string(is_active ? "active" : "inactive"));
    json_object_set_new(a, "datacenter",
                        json_string(str_or(json_object_get(r, "data_center"), "")));
    json_object_set_new(a, "tags", str_list(json_object_get(r, "tags"), NULL));
    json_object_set_new(a, "cpu", json_integer(num_or(json_object_get(r, "cpu"), 0)));
    json_object_set_new(a, "ram_gb", json_integer(num_or(json_object_get(r, "ram_gb"), 0)));
    /* How baton would reach it follows the asset's primary service; never
     * "local", which only the baton host itself may claim. */
    const char *svc = str_or(json_object_get(r, "service_type"), "");
    const char *conn = strcasecmp(svc, "ssh") == 0         ? "ssh"
                       : strncasecmp(svc, "winrm", 5) == 0 ? "winrm"
                                                           : "none";
    json_object_set_new(a, "connection", json_string(conn));
    json_object_set_new(a, "services", str_list(json_object_get(r, "services"), NULL));
    set_optional(a, "description", json_object_get(r, "description"));
    set_optional(a, "owner", json_object_get(r, "owner"));
    return a;
}

/* "10.20.3.11/24" -> "10.20.3.11" (IPv4 only; "" otherwise). */
static json_t *netbox_ip(const json_t *r)
{
    static const char *const keys[] = {"primary_ip4", "primary_ip", NULL};
    for (size_t i = 0; keys[i]; i++) {
        const char *addr =
            json_string_value(json_object_get(json_object_get(r, keys[i]), "address"));
        if (addr && !strchr(addr, ':')) {
            size_t n = strcspn(addr, "/");
            return json_stringn(addr, n);
        }
    }
    return json_string("");
}

static bool has_word(const char *s, const char *const *words)
{
    for (size_t i = 0; s && words[i]; i++)
        if (contains_ci(s, words[i]))
            return true;
    return false;
}

/* A NetBox device or virtual machine as a baton asset. */
static json_t *map_netbox(const json_t *r, bool vm)
{
    const json_t *cf = json_object_get(r, "custom_fields");
    const char *name = json_string_value(json_object_get(r, "name"));
    if (!name || !*name)
        name = json_string_value(json_object_get(r, "display"));
    if (!name || !*name)
        return NULL;
    json_t *a = json_object();
    json_object_set_new(a, "name", json_string(name));
    json_object_set_new(a, "hostname", json_string(str_or(json_object_get(cf, "hostname"), name)));
    json_object_set_new(a, "ip", netbox_ip(r));

    const json_t *platform = json_object_get(r, "platform");
    const char *pslug = json_string_value(json_object_get(platform, "slug"));
    const char *pname = json_string_value(json_object_get(platform, "name"));
    static const char *const linuxes[] = {"linux", "debian", "ubuntu", "rhel",    "centos", "rocky",
                                          "alma",  "suse",   "fedora", "red hat", NULL};
    static const char *const windows[] = {"windows", NULL};
    const char *os = str_or(json_object_get(cf, "os"), NULL);
    if (!os)
        os = has_word(pslug, windows) || has_word(pname, windows) ? "windows"
             : has_word(pslug, linuxes) || has_word(pname, linuxes)
                 ? "linux"
                 : str_or(json_object_get(platform, "slug"), "unknown");
    json_object_set_new(a, "os", lower_str(os));
    json_object_set_new(a, "os_version",
                        json_string(str_or(json_object_get(cf, "os_version"), pname ? pname : "")));
    const json_t *role = json_object_get(r, "role");
    if (!json_is_object(role))
        role = json_object_get(r, "device_role"); /* NetBox before 3.6 */
    json_object_set_new(a, "role", lower_str(str_or(json_object_get(role, "slug"), "unknown")));
    json_object_set_new(a, "environment",
                        lower_str(str_or(json_object_get(cf, "environment"), "unknown")));
    const json_t *status = json_object_get(r, "status");
    const char *sv = json_is_object(status) ? json_string_value(json_object_get(status, "value"))
                                            : json_string_value(status);
    json_object_set_new(a, "status",
                        json_string(sv && strcasecmp(sv, "active") == 0 ? "active" : "inactive"));
    json_object_set_new(
        a, "datacenter",
        json_string(str_or(json_object_get(json_object_get(r, "site"), "slug"), "")));
    json_object_set_new(a, "tags", str_list(json_object_get(r, "tags"), "slug"));
    json_int_t cpu = vm ? num_or(json_object_get(r, "vcpus"), 0) : 0;
    json_int_t ram = vm ? (num_or(json_object_get(r, "memory"), 0) + 512) / 1024 : 0; /* MB */
    json_object_set_new(a, "cpu", json_integer(num_or(json_object_get(cf, "cpu"), cpu)));
    json_object_set_new(a, "ram_gb", json_integer(num_or(json_object_get(cf, "ram_gb"), ram)));
    const char *conn = str_or(json_object_get(cf, "connection"), "none");
    if (strcasecmp(conn, "ssh") != 0 && strcasecmp(conn, "winrm") != 0)
        conn = "none"; /* never "local": only the baton host may claim that */
    json_object_set_new(a, "connection", lower_str(conn));
    json_object_set_new(a, "services", str_list(json_object_get(cf, "services"), NULL));
    set_optional(a, "description", json_object_get(r, "description"));
    set_optional(a, "owner", json_object_get(json_object_get(r, "tenant"), "name"));
    return a;
}

/* ---- reading a service ---------------------------------------------------------- */

struct fetch {
    json_t *matched; /* mapped assets that match the filter */
    long long read;  /* records read */
    bool truncated;  /* more records than ASSETS_READ_MAX */
    bool keep_id;    /* OpsConductor: keep each record's id as "_id" */
    int64_t deadline;
};

static void add_param(bt_buf *q, const char *key, const char *value)
{
    if (!value)
        return;
    bt_buf_puts(q, q->len ? "&" : "?");
    bt_buf_puts(q, key);
    bt_buf_puts(q, "=");
    bt_connectors__http_query_escape(q, value);
}

/* Take in one page's records. False when the cap is reached. */
static bool take_records(struct fetch *fe, const json_t *records, const json_t *f, bool netbox,
                         bool vm)
{
    for (size_t i = 0; i < json_array_size(records); i++) {
        if (fe->read >= ASSETS_READ_MAX) {
            fe->truncated = true;
            return false;
        }
        fe->read++;
        json_t *rec = json_array_get(records, i);
        json_t *a = netbox ? map_netbox(rec, vm) : map_opsconductor(rec);
        if (a && matches(a, f)) {
            if (fe->keep_id && json_is_integer(json_object_get(rec, "id")))
                json_object_set(a, "_id", json_object_get(rec, "id"));
            json_array_append(fe->matched, a);
        }
        json_decref(a);
    }
    return true;
}

static enum bt_err bad_shape(const struct assets *s, const char *what, char *err, size_t errlen)
{
    bt_fmt(err, errlen, "%s answered in an unexpected shape: %s",
           bt_connectors__http_label(s->http), what);
    return BT_ECONNECTOR;
}

/* Every asset of an OpsConductor-style service that matches f, paging by
 * skip and limit until total is reached or a page comes back empty. */
static enum bt_err fetch_opsconductor(struct assets *s, const json_t *f, struct fetch *fe,
                                      char *err, size_t errlen)
{
    bt_buf base = BT_BUF_INIT(4096);
    const char *search = fstr(f, "host") ? fstr(f, "host") : fstr(f, "name_contains");
    add_param(&base, "search", search);
    add_param(&base, "os_type", fstr(f, "os"));
    const char *status = fstr(f, "status");
    if (status && (strcasecmp(status, "active") == 0 || strcasecmp(status, "inactive") == 0))
        add_param(&base, "is_active", strcasecmp(status, "active") == 0 ? "true" : "false");
    const char *conn = fstr(f, "connection");
    if (conn && strcasecmp(conn, "ssh") == 0)
        add_param(&base, "service_type", "ssh");
    enum bt_err e = BT_OK;
    long long skip = 0;
    /* Each page holds at least one record, so ASSETS_READ_MAX + 1 pages
     * bound the loop even if a service misreports its total. */
    for (int page = 0; page <= ASSETS_READ_MAX; page++) {
        char *target = bt_asprintf("/%s%sskip=%lld&limit=%d", base.len ? base.data : "",
                                   base.len ? "&" : "?", skip, ASSETS_PAGE);
        struct bt_connectors__http_call call = {"GET", target, NULL, true, 0, fe->deadline};
        struct bt_connectors__http_reply r;
        e = bt_connectors__http_request(s->http, &call, &r, err, errlen);
        free(target);
        if (e == BT_ENOENT)
            e = BT_ECONNECTOR; /* the list itself is missing: base_url is wrong */
        if (e != BT_OK) {
            bt_connectors__http_reply_free(&r);
            break;
        }
        json_t *success = json_object_get(r.body, "success");
        json_t *data = json_object_get(r.body, "data");
        json_t *list = json_object_get(data, "assets");
        if (json_is_false(success)) {
            char detail[200];
            const char *m = str_or(json_object_get(r.body, "message"),
                                   str_or(json_object_get(r.body, "error"), "no reason given"));
            bt_connectors__shown(m, detail, sizeof detail);
            bt_fmt(err, errlen, "%s reported a failure: %s", bt_connectors__http_label(s->http),
                   detail);
            e = BT_ECONNECTOR;
        } else if (!json_is_array(list)) {
            e = bad_shape(s, "no data.assets list", err, errlen);
        }
        if (e != BT_OK) {
            bt_connectors__http_reply_free(&r);
            break;
        }
        size_t n = json_array_size(list);
        json_int_t total = num_or(json_object_get(data, "total"), -1);
        bool more = take_records(fe, list, f, false, false);
        bt_connectors__http_reply_free(&r);
        skip += (long long)n;
        if (!more || n == 0 || (total >= 0 && skip >= total))
            break;
    }
    bt_buf_free(&base);
    return e;
}

/* NetBox refuses a filter value it does not know (an unknown role or tag
 * slug) with 400 and the parameter's name as a key: that means "no such
 * assets", not a failure. */
static bool netbox_refused_filter(const struct bt_connectors__http_reply *r, const char *params)
{
    if (r->status != 400 || !json_is_object(r->body))
        return false;
    const char *key;
    json_t *v;
    json_object_foreach(r->body, key, v)
    {
        char probe[80];
        bt_fmt(probe, sizeof probe, "%s=", key);
        const char *at = strstr(params, probe);
        if (!at || (at != params && at[-1] != '?' && at[-1] != '&'))
            return false;
    }
    return json_object_size(r->body) > 0;
}

static enum bt_err fetch_netbox_list(struct assets *s, const char *path, const char *params,
                                     bool vm, const json_t *f, struct fetch *fe, char *err,
                                     size_t errlen)
{
    char *target = bt_asprintf("%s%s%slimit=%d", path, params[0] ? params : "?",
                               params[0] ? "&" : "", ASSETS_PAGE);
    enum bt_err e = BT_OK;
    for (int page = 0; page <= ASSETS_READ_MAX && target; page++) {
        struct bt_connectors__http_call call = {"GET", target, NULL, true, 0, fe->deadline};
        struct bt_connectors__http_reply r;
        e = bt_connectors__http_request(s->http, &call, &r, err, errlen);
        if (e != BT_OK) {
            if (page == 0 && netbox_refused_filter(&r, params)) {
                e = BT_OK;
                err[0] = '\0';
            } else if (e == BT_ENOENT) {
                e = BT_ECONNECTOR; /* no such endpoint: base_url is wrong */
            }
            bt_connectors__http_reply_free(&r);
            break;
        }
        json_t *results = json_object_get(r.body, "results");
        if (!json_is_array(results)) {
            bt_connectors__http_reply_free(&r);
            e = bad_shape(s, "no results list", err, errlen);
            break;
        }
        bool more = take_records(fe, results, f, true, vm);
        const char *next = json_string_value(json_object_get(r.body, "next"));
        free(target);
        target = NULL;
        if (more && next && *next) {
            /* A `next` link elsewhere would carry the token there. */
            if (!bt_connectors__http_same_origin(s->http, next)) {
                bt_fmt(err, errlen,
                       "%s sent a `next` link to another address (check base_url and NetBox's "
                       "BASE_PATH / proxy settings); it was not followed",
                       bt_connectors__http_label(s->http));
                e = BT_ECONNECTOR;
            } else {
                target = bt_strdup(next);
            }
        }
        bt_connectors__http_reply_free(&r);
    }
    free(target);
    return e;
}

static enum bt_err fetch_netbox(struct assets *s, const json_t *f, bool use_q, struct fetch *fe,
                                char *err, size_t errlen)
{
    bt_buf q = BT_BUF_INIT(4096);
    /* q searches names (and more), not the hostname custom field: it
     * narrows a host lookup (fetch_all falls back to reading everything
     * when it finds nothing) but would lose hostname matches of
     * name_contains, which is therefore applied here only. */
    if (use_q)
        add_param(&q, "q", fstr(f, "host"));
    if (fstr(f, "role")) {
        char *role = bt_lower(fstr(f, "role"));
        add_param(&q, "role", role);
        free(role);
    }
    const char *status = fstr(f, "status");
    if (status && strcasecmp(status, "active") == 0)
        add_param(&q, "status", "active");
    if (fstr(f, "tag")) {
        char *tag = bt_lower(fstr(f, "tag"));
        add_param(&q, "tag", tag);
        free(tag);
    }
    if (fstr(f, "datacenter")) {
        char *site = bt_lower(fstr(f, "datacenter"));
        add_param(&q, "site", site);
        free(site);
    }
    const char *params = q.len ? q.data : "";
    enum bt_err e = fetch_netbox_list(s, "/api/dcim/devices/", params, false, f, fe, err, errlen);
    if (e == BT_OK && !fe->truncated)
        e = fetch_netbox_list(s, "/api/virtualization/virtual-machines/", params, true, f, fe, err,
                              errlen);
    bt_buf_free(&q);
    return e;
}

/* Every asset matching f, sorted by name, into fe->matched (new array). */
static enum bt_err fetch_all(struct assets *s, const json_t *tool, const json_t *f, bool keep_id,
                             struct fetch *fe, char *err, size_t errlen)
{
    memset(fe, 0, sizeof *fe);
    fe->keep_id = keep_id;
    fe->matched = json_array();
    /* The tool's timeout_s bounds the whole question, pages and retries
     * included; each request is bounded by the connector's timeout_ms. */
    json_t *t = json_object_get(tool, "timeout_s");
    if (json_is_integer(t) && json_integer_value(t) > 0)
        fe->deadline = bt_mono_ms() + 1000 * (json_integer_value(t) > ASSETS_TIMEOUT_MAX_S
                                                  ? ASSETS_TIMEOUT_MAX_S
                                                  : json_integer_value(t));
    enum bt_err e = s->api == API_NETBOX ? fetch_netbox(s, f, true, fe, err, errlen)
                                         : fetch_opsconductor(s, f, fe, err, errlen);
    /* NetBox's q looks at names, and at addresses only in some versions:
     * a host it did not find by q is looked for among all records. */
    if (e == BT_OK && s->api == API_NETBOX && fstr(f, "host") &&
        json_array_size(fe->matched) == 0) {
        fe->read = 0;
        fe->truncated = false;
        e = fetch_netbox(s, f, false, fe, err, errlen);
    }
    if (e != BT_OK) {
        json_decref(fe->matched);
        fe->matched = NULL;
        return e;
    }
    sort_array(fe->matched, by_name);
    return BT_OK;
}

/* ---- the operations ---------------------------------------------------------------- */

/* The step's filter (new, into *f; paging: limit and offset kept) and
 * every asset that matches it (fe). On failure neither is left to free. */
static enum bt_err filter_and_fetch(struct assets *s, const json_t *tool, const json_t *inputs,
                                    bool paging, json_t **f, struct fetch *fe, char *err,
                                    size_t errlen)
{
    enum bt_err e = bt_connectors__assets_filter(inputs, paging, true, f, err, errlen);
    if (e != BT_OK)
        return e;
    if ((e = fetch_all(s, tool, *f, false, fe, err, errlen)) != BT_OK) {
        json_decref(*f);
        *f = NULL;
    }
    return e;
}

static enum bt_err op_count(struct assets *s, const json_t *tool, const json_t *inputs,
                            json_t **result, char *err, size_t errlen)
{
    json_t *f = NULL;
    struct fetch fe;
    enum bt_err e = filter_and_fetch(s, tool, inputs, false, &f, &fe, err, errlen);
    if (e != BT_OK)
        return e;
    /* Group by (os, role), ignoring case as the store does. */
    json_t *groups = json_array();
    for (size_t i = 0; i < json_array_size(fe.matched); i++) {
        json_t *a = json_array_get(fe.matched, i);
        const char *os = fstr(a, "os"), *role = fstr(a, "role");
        json_t *g = NULL;
        for (size_t k = 0; !g && k < json_array_size(groups); k++) {
            json_t *c = json_array_get(groups, k);
            if (eq_field(c, "os", os) && eq_field(c, "role", role))
                g = c;
        }
        if (g)
            json_object_set_new(g, "count",
                                json_integer(json_integer_value(json_object_get(g, "count")) + 1));
        else
            json_array_append_new(groups,
                                  json_pack("{s:s, s:s, s:i}", "os", os, "role", role, "count", 1));
    }
    json_decref(fe.matched);
    *result = bt_connectors__assets_count_answer(groups, f, fe.truncated ? truncated_note : NULL);
    return BT_OK;
}

static enum bt_err op_list(struct assets *s, const json_t *tool, const json_t *inputs,
                           json_t **result, char *err, size_t errlen)
{
    json_t *f = NULL;
    struct fetch fe;
    enum bt_err e = filter_and_fetch(s, tool, inputs, true, &f, &fe, err, errlen);
    if (e != BT_OK)
        return e;
    json_int_t limit = ASSETS_LIST_DEFAULT, offset = 0;
    if (json_object_get(f, "limit"))
        limit = json_integer_value(json_object_get(f, "limit"));
    if (limit > ASSETS_LIST_MAX)
        limit = ASSETS_LIST_MAX;
    if (json_object_get(f, "offset"))
        offset = json_integer_value(json_object_get(f, "offset"));
    size_t total = json_array_size(fe.matched);
    json_t *assets = json_array();
    for (size_t i = (size_t)offset; i < total && (json_int_t)json_array_size(assets) < limit; i++)
        json_array_append(assets, json_array_get(fe.matched, i));
    json_decref(fe.matched);
    *result = bt_connectors__assets_list_answer(assets, (long long)total, f,
                                                fe.truncated ? truncated_note : NULL);
    json_decref(f);
    return BT_OK;
}

/* The full record of an OpsConductor asset by its id (GET {base}/{id}), in
 * place of the list's. Steals a; returns a new reference, or NULL with *e
 * and err set. */
static json_t *opsconductor_detail(struct assets *s, const json_t *id, json_t *a, int64_t deadline,
                                   char *err, size_t errlen, enum bt_err *e)
{
    char target[48];
    bt_fmt(target, sizeof target, "/%" JSON_INTEGER_FORMAT, json_integer_value(id));
    struct bt_connectors__http_call call = {"GET", target, NULL, true, 0, deadline};
    struct bt_connectors__http_reply r;
    *e = bt_connectors__http_request(s->http, &call, &r, err, errlen);
    if (*e == BT_OK) {
        json_t *data = json_object_get(r.body, "data");
        json_t *detail = map_opsconductor(json_is_object(data) ? data : r.body);
        if (detail) {
            json_decref(a);
            a = detail;
        }
    }
    bt_connectors__http_reply_free(&r);
    if (*e != BT_OK) {
        json_decref(a);
        return NULL;
    }
    return a;
}

static enum bt_err op_get(struct assets *s, const json_t *tool, const json_t *inputs,
                          const json_t *target, json_t **result, char *err, size_t errlen)
{
    char num[32];
    const char *host = bt_connectors__asset_wanted(inputs, target, num, sizeof num, err, errlen);
    if (!host)
        return BT_EINVAL;
    json_t *f = json_pack("{s:s}", "host", host);
    struct fetch fe;
    enum bt_err e = fetch_all(s, tool, f, s->api == API_OPSCONDUCTOR, &fe, err, errlen);
    json_decref(f);
    if (e != BT_OK)
        return e;
    if (json_array_size(fe.matched) == 0) {
        json_decref(fe.matched);
        return bt_connectors__asset_unknown(host, err, errlen);
    }
    json_t *a = json_incref(json_array_get(fe.matched, 0));
    json_decref(fe.matched);
    json_t *id = json_incref(json_object_get(a, "_id"));
    json_object_del(a, "_id");
    if (id) {
        /* The list may hold a summary; the record by id is the whole. */
        a = opsconductor_detail(s, id, a, fe.deadline, err, errlen, &e);
        json_decref(id);
        if (e == BT_ENOENT) /* deleted since the search */
            return bt_connectors__asset_unknown(host, err, errlen);
        if (e != BT_OK)
            return e;
    }

    *result = bt_connectors__asset_answer(a);
    return BT_OK;
}

/* ---- the ops tables ------------------------------------------------------------------ */

static void assets_free(void *state)
{
    struct assets *s = state;
    if (!s)
        return;
    bt_connectors__http_free(s->http);
    free(s->name);
    free(s);
}

static struct assets *assets_new(const struct bt_connectors__where *w, const char *name,
                                 enum asset_api api, bt_diag *d)
{
    static const char *const http_extra[] = {"api", NULL};
    struct bt_connectors__http *h =
        api == API_NETBOX
            ? bt_connectors__http_new(w, name, "NetBox", BT_CONNECTORS__HTTP_TOKEN, true, NULL, d)
            : bt_connectors__http_new(w, name, "asset service", BT_CONNECTORS__HTTP_BEARER, false,
                                      http_extra, d);
    if (!h)
        return NULL;
    struct assets *s = bt_calloc(1, sizeof *s);
    s->api = api;
    s->name = bt_strdup(name);
    s->http = h;
    return s;
}

static bool assets_check_tool(void *state, const bt_yaml_doc *doc, const json_t *tool, bt_diag *d)
{
    struct assets *s = state;
    const char *op = json_string_value(json_object_get(tool, "operation"));
    if (op && bt_connectors__in_list(asset_ops, op))
        return true;
    bt_connectors__tool_diag(d, doc, tool, "operation",
                             "unknown operation '%s' for connector '%s' (type %s knows: "
                             "count_assets, list_assets, get_asset)",
                             op ? op : "", s->name, s->api == API_NETBOX ? "netbox" : "http");
    return false;
}

static enum bt_err assets_invoke(void *state, const json_t *tool, const json_t *inputs,
                                 const json_t *target, json_t **result, char *err, size_t errlen)
{
    struct assets *s = state;
    const char *op = json_string_value(json_object_get(tool, "operation"));
    json_t *empty = NULL;
    if (!inputs)
        inputs = empty = json_object();
    enum bt_err e;
    if (op && strcmp(op, "count_assets") == 0)
        e = op_count(s, tool, inputs, result, err, errlen);
    else if (op && strcmp(op, "list_assets") == 0)
        e = op_list(s, tool, inputs, result, err, errlen);
    else if (op && strcmp(op, "get_asset") == 0)
        e = op_get(s, tool, inputs, target, result, err, errlen);
    else {
        bt_fmt(err, errlen,
               "connector '%s' has no operation '%s' (it knows: count_assets, list_assets, "
               "get_asset)",
               s->name, op ? op : "");
        e = BT_EINVAL;
    }
    json_decref(empty);
    return e;
}

/* type: netbox */
static void *netbox_new(const struct bt_connectors__where *w, const char *name,
                        const char *store_location, bt_diag *d)
{
    (void)store_location;
    return assets_new(w, name, API_NETBOX, d);
}

const struct bt_connectors__ops bt_connectors__netbox_ops = {
    "netbox", netbox_new, assets_check_tool, assets_invoke, assets_free,
};

/* type: http: `api:` says which service it is; the state remembers which
 * table serves it. */
struct http_any {
    const struct bt_connectors__ops *ops;
    void *state;
};

static const struct bt_connectors__ops http_assets_ops = {
    "http", NULL, assets_check_tool, assets_invoke, assets_free,
};

static void *http_new(const struct bt_connectors__where *w, const char *name,
                      const char *store_location, bt_diag *d)
{
    json_t *api = json_object_get(w->conf, "api");
    const char *which = json_string_value(api);
    void *state = NULL;
    const struct bt_connectors__ops *ops = NULL;
    if (which && strcmp(which, "assets") == 0) {
        ops = &http_assets_ops;
        state = assets_new(w, name, API_OPSCONDUCTOR, d);
    } else if (which && strcmp(which, "automation") == 0) {
        ops = &bt_connectors__http_automation_ops;
        state = ops->new (w, name, store_location, d);
    } else {
        bt_connectors__diag(d, w->doc, w->conf, w->prefix, "api",
                            api ? "must be assets or automation"
                                : "required, missing (assets: an asset service; automation: an "
                                  "automation service)");
        return NULL;
    }
    if (!state)
        return NULL;
    struct http_any *any = bt_calloc(1, sizeof *any);
    any->ops = ops;
    any->state = state;
    return any;
}

static bool http_check_tool(void *state, const bt_yaml_doc *doc, const json_t *tool, bt_diag *d)
{
    struct http_any *any = state;
    return any->ops->check_tool(any->state, doc, tool, d);
}

static enum bt_err http_invoke(void *state, const json_t *tool, const json_t *inputs,
                               const json_t *target, json_t **result, char *err, size_t errlen)
{
    struct http_any *any = state;
    return any->ops->invoke(any->state, tool, inputs, target, result, err, errlen);
}

static void http_free(void *state)
{
    struct http_any *any = state;
    if (!any)
        return;
    any->ops->free(any->state);
    free(any);
}

const struct bt_connectors__ops bt_connectors__http_ops = {
    "http", http_new, http_check_tool, http_invoke, http_free,
};
