/* inventory.c - reading and checking inventory.yaml, the built-in asset
 * inventory (see bt_connectors_inventory in connectors.h). Every problem is
 * reported, not just the first, as "file:line: assets[i].key: message". */
#include "connectors/connectors.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define INV_MAX_ASSETS 100000
#define INV_MAX_LIST 256

struct inv_ctx {
    const bt_yaml_doc *doc;
    bt_diag *d;
    bool ok;
};

static void inv_diag(struct inv_ctx *x, const json_t *asset, size_t i, const char *key,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void inv_diag(struct inv_ctx *x, const json_t *asset, size_t i, const char *key,
                     const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char name[128];
    if (key)
        bt_fmt(name, sizeof name, "assets[%zu].%s", i, key);
    else
        bt_fmt(name, sizeof name, "assets[%zu]", i);
    bt_diag_add(x->d, bt_yaml_name(x->doc), bt_yaml_key_line(x->doc, asset, key), name, "%s", msg);
    x->ok = false;
}

/* Characters allowed in a field: a small class language, enough for names. */
static bool chars_ok(const char *s, const char *extra)
{
    for (; *s; s++) {
        char c = *s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
            continue;
        if (!strchr(extra, c))
            return false;
    }
    return true;
}

static bool is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* Dotted IPv4, four decimal octets 0-255 without leading zeros. */
static bool ipv4_ok(const char *s)
{
    for (int part = 0; part < 4; part++) {
        if (part && *s++ != '.')
            return false;
        int v = 0, digits = 0;
        const char *start = s;
        while (*s >= '0' && *s <= '9' && digits < 4) {
            v = v * 10 + (*s - '0');
            digits++;
            s++;
        }
        if (digits == 0 || digits > 3 || v > 255 || (digits > 1 && *start == '0'))
            return false;
    }
    return *s == '\0';
}

/* A required string field; NULL (after reporting) when missing or wrong. */
static const char *req_string(struct inv_ctx *x, const json_t *a, size_t i, const char *key)
{
    json_t *v = json_object_get(a, key);
    if (!v || json_is_null(v)) {
        inv_diag(x, a, i, key, "required, missing");
        return NULL;
    }
    if (!json_is_string(v)) {
        inv_diag(x, a, i, key, "must be a string (quote it), found %s", bt_conf_type_name(v));
        return NULL;
    }
    if (json_string_length(v) == 0) {
        inv_diag(x, a, i, key, "must not be empty");
        return NULL;
    }
    return json_string_value(v);
}

static void req_enum(struct inv_ctx *x, const json_t *a, size_t i, const char *key,
                     const char *const *allowed, const char *allowed_text)
{
    const char *s = req_string(x, a, i, key);
    if (!s)
        return;
    for (size_t k = 0; allowed[k]; k++)
        if (strcmp(allowed[k], s) == 0)
            return;
    inv_diag(x, a, i, key, "must be one of %s, found '%s'", allowed_text, s);
}

static void req_pattern(struct inv_ctx *x, const json_t *a, size_t i, const char *key,
                        size_t maxlen, const char *extra, const char *describe)
{
    const char *s = req_string(x, a, i, key);
    if (s && (strlen(s) > maxlen || !is_alnum(s[0]) || !chars_ok(s, extra)))
        inv_diag(x, a, i, key, "must be %s, found '%s'", describe, s);
}

static void req_int(struct inv_ctx *x, const json_t *a, size_t i, const char *key, long long min,
                    long long max)
{
    json_t *v = json_object_get(a, key);
    if (!v || json_is_null(v)) {
        inv_diag(x, a, i, key, "required, missing");
        return;
    }
    if (!json_is_integer(v)) {
        inv_diag(x, a, i, key, "must be an integer, found %s", bt_conf_type_name(v));
        return;
    }
    long long n = json_integer_value(v);
    if (n < min || n > max)
        inv_diag(x, a, i, key, "must be between %lld and %lld, found %lld", min, max, n);
}

/* A list of short words (tags, services). */
static void string_list(struct inv_ctx *x, const json_t *a, size_t i, const char *key,
                        bool required, const char *extra, const char *describe)
{
    json_t *v = json_object_get(a, key);
    if (!v || json_is_null(v)) {
        if (required)
            inv_diag(x, a, i, key, "required, missing (use [] for none)");
        return;
    }
    if (!json_is_array(v)) {
        inv_diag(x, a, i, key, "must be a list, found %s", bt_conf_type_name(v));
        return;
    }
    if (json_array_size(v) > INV_MAX_LIST) {
        inv_diag(x, a, i, key, "more than %d entries", INV_MAX_LIST);
        return;
    }
    for (size_t k = 0; k < json_array_size(v); k++) {
        json_t *e = json_array_get(v, k);
        const char *s = json_string_value(e);
        char sub[64];
        bt_fmt(sub, sizeof sub, "%s[%zu]", key, k);
        if (!s) {
            inv_diag(x, a, i, key, "%s must be a string, found %s", sub, bt_conf_type_name(e));
            continue;
        }
        if (!*s || strlen(s) > 64 || !is_alnum(s[0]) || !chars_ok(s, extra))
            inv_diag(x, a, i, key, "%s must be %s, found '%s'", sub, describe, s);
        for (size_t m = 0; m < k; m++)
            if (json_equal(json_array_get(v, m), e)) {
                inv_diag(x, a, i, key, "'%s' is listed twice", s);
                break;
            }
    }
}

static const char *const asset_keys[] = {
    "name",        "hostname", "ip",          "os",    "os_version", "role",
    "environment", "status",   "datacenter",  "tags",  "cpu",        "ram_gb",
    "connection",  "services", "description", "owner", NULL,
};

static void check_asset(struct inv_ctx *x, const json_t *a, size_t i)
{
    static const char *const oses[] = {"windows", "linux", NULL};
    static const char *const envs[] = {"production", "staging", "dev", NULL};
    static const char *const statuses[] = {"active", "inactive", NULL};
    static const char *const conns[] = {"local", "ssh", "winrm", "none", NULL};

    const char *key;
    json_t *v;
    json_object_foreach((json_t *)a, key, v)
    {
        bool known = false;
        for (size_t k = 0; asset_keys[k]; k++)
            if (strcmp(asset_keys[k], key) == 0)
                known = true;
        if (!known)
            inv_diag(x, a, i, key,
                     "unknown key (known: name, hostname, ip, os, os_version, role, "
                     "environment, status, datacenter, tags, cpu, ram_gb, "
                     "connection, services, description, owner)");
    }
    req_pattern(x, a, i, "name", 63, "._-",
                "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit");
    req_pattern(x, a, i, "hostname", 253, ".-", "a host name (letters, digits, '.' and '-')");
    const char *ip = req_string(x, a, i, "ip");
    if (ip && !ipv4_ok(ip))
        inv_diag(x, a, i, "ip", "must be a dotted IPv4 address like 10.0.0.1, found '%s'", ip);
    req_enum(x, a, i, "os", oses, "windows, linux");
    req_string(x, a, i, "os_version");
    const char *role = req_string(x, a, i, "role");
    if (role && (strlen(role) > 32 || !(role[0] >= 'a' && role[0] <= 'z') ||
                 !chars_ok(role, "_-") || strpbrk(role, "ABCDEFGHIJKLMNOPQRSTUVWXYZ")))
        inv_diag(x, a, i, "role", "must be 1-32 of a-z, 0-9, '_' or '-', found '%s'", role);
    req_enum(x, a, i, "environment", envs, "production, staging, dev");
    req_enum(x, a, i, "status", statuses, "active, inactive");
    req_pattern(x, a, i, "datacenter", 32, "_-", "1-32 letters, digits, '_' or '-'");
    string_list(x, a, i, "tags", true, "_.:-", "1-64 letters, digits, '_', '.', ':' or '-'");
    req_int(x, a, i, "cpu", 1, 4096);
    req_int(x, a, i, "ram_gb", 1, 1048576);
    req_enum(x, a, i, "connection", conns, "local, ssh, winrm, none");
    string_list(x, a, i, "services", false, "@._-",
                "a service name (letters, digits, '@', '.', '_' or '-')");
    json_t *desc = json_object_get(a, "description");
    if (desc && !json_is_string(desc))
        inv_diag(x, a, i, "description", "must be a string, found %s", bt_conf_type_name(desc));
    json_t *owner = json_object_get(a, "owner");
    if (owner && !json_is_string(owner))
        inv_diag(x, a, i, "owner", "must be a string, found %s", bt_conf_type_name(owner));
}

/* Report a value of `key` that an earlier asset already has. Case is
 * ignored, as the store's lookups ignore it. */
static void check_unique(struct inv_ctx *x, const json_t *assets, size_t i, const char *key)
{
    const json_t *a = json_array_get(assets, i);
    const char *s = json_string_value(json_object_get(a, key));
    if (!s)
        return;
    for (size_t k = 0; k < i; k++) {
        const json_t *b = json_array_get(assets, k);
        const char *t = json_string_value(json_object_get(b, key));
        if (t && strcasecmp(s, t) == 0) {
            inv_diag(x, a, i, key, "duplicate %s '%s' (also assets[%zu], line %d)", key, s, k,
                     bt_yaml_key_line(x->doc, b, key));
            return;
        }
    }
}

json_t *bt_connectors_inventory(const bt_config *cfg, bt_diag *d)
{
    const bt_yaml_doc *doc = bt_config_inventory(cfg);
    if (!doc) {
        bt_diag_add(d, bt_config_dir(cfg), 0, "inventory.yaml",
                    "no inventory could be read (file missing or not valid YAML)");
        return NULL;
    }
    struct inv_ctx x = {doc, d, true};
    json_t *root = bt_yaml_root(doc);
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "assets") != 0) {
            bt_diag_at(d, doc, root, key, "unknown key (the inventory has only `assets:`)");
            x.ok = false;
        }
    }
    json_t *assets = bt_check_array(d, doc, root, "assets", true);
    if (!assets)
        return NULL;
    if (json_array_size(assets) > INV_MAX_ASSETS) {
        bt_diag_at(d, doc, root, "assets", "more than %d assets", INV_MAX_ASSETS);
        return NULL;
    }
    for (size_t i = 0; i < json_array_size(assets); i++) {
        json_t *a = json_array_get(assets, i);
        if (!json_is_object(a)) {
            char name[64];
            bt_fmt(name, sizeof name, "assets[%zu]", i);
            bt_diag_add(d, bt_yaml_name(doc), bt_yaml_line(doc, a), name,
                        "must be a mapping, found %s", bt_conf_type_name(a));
            x.ok = false;
            continue;
        }
        check_asset(&x, a, i);
        check_unique(&x, assets, i, "name");
        check_unique(&x, assets, i, "hostname");
        check_unique(&x, assets, i, "ip");
    }
    if (!x.ok)
        return NULL;
    /* The caller owns a copy that does not depend on cfg; services is always
     * present (possibly empty) so readers need not test for it. */
    json_t *out = json_deep_copy(assets);
    for (size_t i = 0; i < json_array_size(out); i++) {
        json_t *a = json_array_get(out, i);
        if (!json_is_array(json_object_get(a, "services")))
            json_object_set_new(a, "services", json_array());
    }
    return out;
}
