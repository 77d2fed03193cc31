/*
 * store.c - the store facade: picks a backend from the location string,
 * checks every argument once, and dispatches to the backend's function table
 * (store_int.h). Checks live here rather than in each backend so that the
 * SQLite and the future PostgreSQL backends accept and refuse exactly the
 * same input.
 */
#include <stdlib.h>
#include <string.h>

#include "bot/store/store.h"
#include "bot/store/store_int.h"

struct bt_store {
    const struct bt_store__ops *ops;
    void *be;
};

/* Longest id (request, plan, execution, approval, setting key) accepted. */
#define ID_MAX 255

static const char *const execution_states[] = {
    "pending_approval", "approved",  "queued",    "running",     "completed",
    "failed",           "cancelled", "timed_out", "interrupted", NULL,
};

static const char *const step_states[] = {
    "pending",   "running",   "completed",   "failed",      "skipped",
    "cancelled", "timed_out", "interrupted", "compensated", NULL,
};

const char *const bt_store__asset_text_fields[BT_STORE__ASSET_TEXT_FIELDS] = {
    "hostname",    "ip",     "os",         "os_version", "role",
    "environment", "status", "datacenter", "connection",
};

/* Filter keys as the caller spells them, indexed by enum bt_store__af. The
 * ip key maps to AF_IP or AF_IP_PREFIX depending on its value, so
 * AF_IP_PREFIX has no key of its own. */
static const char *const filter_keys[BT_STORE__AF_COUNT] = {
    [BT_STORE__AF_OS] = "os",
    [BT_STORE__AF_ENVIRONMENT] = "environment",
    [BT_STORE__AF_ROLE] = "role",
    [BT_STORE__AF_STATUS] = "status",
    [BT_STORE__AF_DATACENTER] = "datacenter",
    [BT_STORE__AF_CONNECTION] = "connection",
    [BT_STORE__AF_TAG] = "tag",
    [BT_STORE__AF_NAME_CONTAINS] = "name_contains",
    [BT_STORE__AF_IP] = "ip",
    [BT_STORE__AF_IP_PREFIX] = NULL,
    [BT_STORE__AF_HOST] = "host",
    [BT_STORE__AF_MIN_RAM_GB] = "min_ram_gb",
    [BT_STORE__AF_MAX_RAM_GB] = "max_ram_gb",
    [BT_STORE__AF_MIN_CPU] = "min_cpu",
};

static void err_clear(char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
}

static enum bt_err no_store(char *err, size_t errlen)
{
    bt_fmt(err, errlen, "store: no store handle");
    return BT_EINVAL;
}

static enum bt_err bad_args(const char *fn, char *err, size_t errlen)
{
    bt_fmt(err, errlen, "store: %s: a required argument is NULL", fn);
    return BT_EINVAL;
}

static bool in_list(const char *s, const char *const *list)
{
    for (size_t i = 0; list[i]; i++)
        if (strcmp(s, list[i]) == 0)
            return true;
    return false;
}

/* A required id-like string: non-empty, at most ID_MAX bytes, UTF-8. */
static enum bt_err check_id(const char *s, const char *what, char *err, size_t errlen)
{
    if (!s || !*s) {
        bt_fmt(err, errlen, "store: %s is missing", what);
        return BT_EINVAL;
    }
    size_t n = strnlen(s, ID_MAX + 1);
    if (n > ID_MAX) {
        bt_fmt(err, errlen, "store: %s is longer than %d bytes", what, ID_MAX);
        return BT_EINVAL;
    }
    if (!bt_utf8_valid(s, n)) {
        bt_fmt(err, errlen, "store: %s is not valid UTF-8", what);
        return BT_EINVAL;
    }
    return BT_OK;
}

/* Free text that may be NULL (when optional) but must be UTF-8. */
static enum bt_err check_text(const char *s, bool required, const char *what, char *err,
                              size_t errlen)
{
    if (!s) {
        if (!required)
            return BT_OK;
        bt_fmt(err, errlen, "store: %s is missing", what);
        return BT_EINVAL;
    }
    if (!bt_utf8_valid(s, strlen(s))) {
        bt_fmt(err, errlen, "store: %s is not valid UTF-8", what);
        return BT_EINVAL;
    }
    return BT_OK;
}

static enum bt_err check_state(const char *state, const char *const *list, const char *what,
                               char *err, size_t errlen)
{
    if (!state || !in_list(state, list)) {
        bt_fmt(err, errlen, "store: unknown %s state '%.64s'", what, state ? state : "(null)");
        return BT_EINVAL;
    }
    return BT_OK;
}

/* JSON (borrowed, may be NULL) as compact text in *out (new heap string,
 * NULL when value is NULL). Not canonical: nothing hashes these texts, and
 * sorting every object's keys cost more than the SQL around it. */
static enum bt_err to_json_text(const json_t *value, bool need_object, const char *what, char **out,
                                char *err, size_t errlen)
{
    *out = NULL;
    if (!value)
        return BT_OK;
    if (need_object && !json_is_object(value)) {
        bt_fmt(err, errlen, "store: %s must be a JSON object", what);
        return BT_EINVAL;
    }
    *out = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!*out) {
        bt_fmt(err, errlen, "store: %s cannot be encoded as JSON", what);
        return BT_EINVAL;
    }
    return BT_OK;
}

/* bt_store_open: see store.h. Picks the backend by scheme. A PostgreSQL
 * location that carries a password is refused by the backend before
 * anything could echo it into err. */
enum bt_err bt_store_open(const char *location, bt_store **out, char *err, size_t errlen)
{
    err_clear(err, errlen);
    if (!out) {
        bt_fmt(err, errlen, "store: no place for the handle");
        return BT_EINVAL;
    }
    *out = NULL;
    if (!location || !*location) {
        bt_fmt(err, errlen, "store: location is empty");
        return BT_EINVAL;
    }
    const struct bt_store__ops *ops = &bt_store__sqlite_ops;
    const char *target = location;
    if (strncmp(location, "postgres://", 11) == 0 || strncmp(location, "postgresql://", 13) == 0)
        ops = &bt_store__pg_ops; /* the whole URL is the target */
    else if (strncmp(location, "sqlite:", 7) == 0)
        target = location + 7;
    if (!*target) {
        bt_fmt(err, errlen, "store: %s: no file name", location);
        return BT_EINVAL;
    }
    void *be = NULL;
    enum bt_err e = ops->open(target, &be, err, errlen);
    if (e != BT_OK)
        return e;
    bt_store *st = bt_malloc(sizeof *st);
    st->ops = ops;
    st->be = be;
    *out = st;
    return BT_OK;
}

/* bt_store_close: finalises the backend and frees st; NULL is a no-op. */
void bt_store_close(bt_store *st)
{
    if (!st)
        return;
    st->ops->close(st->be);
    free(st);
}

/* bt_store_schema_version: the version the open store is at (after
 * migrations this is BT_STORE_SCHEMA_VERSION). */
int bt_store_schema_version(bt_store *st)
{
    return st ? st->ops->schema_version(st->be) : 0;
}

/* ---- assets ------------------------------------------------------------ */

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The shape every backend relies on: an array of objects, each with a
 * non-empty string name (unique, ignoring ASCII case), the indexed fields
 * strings or absent/null, cpu and ram_gb integers or absent/null, tags an
 * array of strings or absent/null. */
static enum bt_err assets_check(const json_t *assets, char *err, size_t errlen)
{
    if (!json_is_array(assets)) {
        bt_fmt(err, errlen, "store: assets must be a JSON array");
        return BT_EINVAL;
    }
    size_t n = json_array_size(assets);
    char **names = bt_calloc(n ? n : 1, sizeof *names);
    enum bt_err e = BT_OK;
    size_t i;
    for (i = 0; i < n && e == BT_OK; i++) {
        const json_t *a = json_array_get(assets, i);
        if (!json_is_object(a)) {
            bt_fmt(err, errlen, "store: asset %zu is not an object", i);
            e = BT_EINVAL;
            break;
        }
        const json_t *name = json_object_get(a, "name");
        if (!json_is_string(name) || json_string_length(name) == 0) {
            bt_fmt(err, errlen, "store: asset %zu has no name", i);
            e = BT_EINVAL;
            break;
        }
        const char *nm = json_string_value(name);
        for (size_t f = 0; f < BT_STORE__ASSET_TEXT_FIELDS; f++) {
            const json_t *v = json_object_get(a, bt_store__asset_text_fields[f]);
            if (v && !json_is_null(v) && !json_is_string(v)) {
                bt_fmt(err, errlen, "store: asset '%.64s': %s must be a string", nm,
                       bt_store__asset_text_fields[f]);
                e = BT_EINVAL;
            }
        }
        static const char *const ints[] = {"cpu", "ram_gb"};
        for (size_t f = 0; f < 2; f++) {
            const json_t *v = json_object_get(a, ints[f]);
            if (v && !json_is_null(v) && !json_is_integer(v)) {
                bt_fmt(err, errlen, "store: asset '%.64s': %s must be an integer", nm, ints[f]);
                e = BT_EINVAL;
            }
        }
        const json_t *tags = json_object_get(a, "tags");
        if (tags && !json_is_null(tags)) {
            bool ok = json_is_array(tags);
            for (size_t t = 0; ok && t < json_array_size(tags); t++)
                ok = json_is_string(json_array_get(tags, t));
            if (!ok) {
                bt_fmt(err, errlen, "store: asset '%.64s': tags must be an array of strings", nm);
                e = BT_EINVAL;
            }
        }
        names[i] = bt_lower(nm);
    }
    if (e == BT_OK && n > 1) {
        qsort(names, n, sizeof *names, name_cmp);
        for (size_t k = 1; k < n; k++) {
            if (strcmp(names[k - 1], names[k]) == 0) {
                bt_fmt(err, errlen, "store: duplicate asset name '%.64s'", names[k]);
                e = BT_EINVAL;
                break;
            }
        }
    }
    for (size_t k = 0; k < n; k++)
        free(names[k]);
    free(names);
    return e;
}

/* bt_store_assets_replace: see store.h. Checked here in full before the
 * backend's single transaction starts, so a bad inventory never reaches the
 * database at all. */
enum bt_err bt_store_assets_replace(bt_store *st, const json_t *assets, char *err, size_t errlen)
{
    err_clear(err, errlen);
    if (!st)
        return no_store(err, errlen);
    enum bt_err e = assets_check(assets, err, errlen);
    if (e != BT_OK)
        return e;
    return st->ops->assets_replace(st->be, assets, err, errlen);
}

/* An integer filter value: a JSON integer, or a string of decimal digits
 * (entities extracted from chat arrive as strings). */
static bool filter_int(const json_t *v, long long min, long long max, long long *out)
{
    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        if (x < min || x > max)
            return false;
        *out = (long long)x;
        return true;
    }
    long x;
    if (json_is_string(v) && bt_parse_long(json_string_value(v), (long)min, (long)max, &x)) {
        *out = x;
        return true;
    }
    return false;
}

/* Turn a caller's filter object into the checked struct. A key whose value
 * is JSON null counts as absent. limit and offset are always parsed (and so
 * checked); assets_count ignores them. */
static enum bt_err filter_parse(const json_t *filter, struct bt_store__asset_filter *f, char *err,
                                size_t errlen)
{
    memset(f, 0, sizeof *f);
    f->limit = BT_STORE__ASSETS_DEFAULT;
    if (!filter || json_is_null(filter))
        return BT_OK;
    if (!json_is_object(filter)) {
        bt_fmt(err, errlen, "store: asset filter must be a JSON object");
        return BT_EINVAL;
    }
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)filter, key, v)
    {
        if (strcmp(key, "limit") == 0 || strcmp(key, "offset") == 0) {
            if (json_is_null(v))
                continue;
            bool lim = key[0] == 'l';
            long long x;
            /* A limit above the maximum is clamped to it (the documented
             * cap), not refused; zero, negatives and junk are refused. */
            if (!filter_int(v, lim ? 1 : 0, 1LL << 40, &x)) {
                bt_fmt(err, errlen, "store: asset filter %s must be a %s integer", key,
                       lim ? "positive" : "non-negative");
                return BT_EINVAL;
            }
            if (lim)
                f->limit = x > BT_STORE__ASSETS_MAX ? BT_STORE__ASSETS_MAX : x;
            else
                f->offset = x;
            continue;
        }
        int k = -1;
        for (int i = 0; i < BT_STORE__AF_COUNT; i++) {
            if (filter_keys[i] && strcmp(key, filter_keys[i]) == 0) {
                k = i;
                break;
            }
        }
        if (k < 0) {
            bt_fmt(err, errlen, "store: unknown asset filter key '%.64s'", key);
            return BT_EINVAL;
        }
        if (json_is_null(v))
            continue;
        if (k >= BT_STORE__AF_MIN_RAM_GB) {
            if (!filter_int(v, 0, 1LL << 40, &f->num[k])) {
                bt_fmt(err, errlen, "store: asset filter %s must be a non-negative integer", key);
                return BT_EINVAL;
            }
            f->present |= 1u << k;
            continue;
        }
        if (!json_is_string(v)) {
            bt_fmt(err, errlen, "store: asset filter %s must be a string", key);
            return BT_EINVAL;
        }
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
        if (k == BT_STORE__AF_IP && n > 0 && s[n - 1] == '.')
            k = BT_STORE__AF_IP_PREFIX;
        f->text[k] = s;
        f->present |= 1u << k;
    }
    return BT_OK;
}

/* bt_store_assets_query: see store.h. *out is NULL on failure. */
enum bt_err bt_store_assets_query(bt_store *st, const json_t *filter, json_t **out, char *err,
                                  size_t errlen)
{
    err_clear(err, errlen);
    if (!out || !st) {
        bt_fmt(err, errlen, "store: bad arguments to assets_query");
        return BT_EINVAL;
    }
    *out = NULL;
    struct bt_store__asset_filter f;
    enum bt_err e = filter_parse(filter, &f, err, errlen);
    if (e != BT_OK)
        return e;
    return st->ops->assets_query(st->be, &f, out, err, errlen);
}

/* bt_store_assets_count: see store.h. */
enum bt_err bt_store_assets_count(bt_store *st, const json_t *filter, long long *count, char *err,
                                  size_t errlen)
{
    err_clear(err, errlen);
    if (!count || !st) {
        bt_fmt(err, errlen, "store: bad arguments to assets_count");
        return BT_EINVAL;
    }
    *count = 0;
    struct bt_store__asset_filter f;
    enum bt_err e = filter_parse(filter, &f, err, errlen);
    if (e != BT_OK)
        return e;
    return st->ops->assets_count(st->be, &f, count, err, errlen);
}

/* bt_store_assets_breakdown: see store.h. */
enum bt_err bt_store_assets_breakdown(bt_store *st, const json_t *filter, json_t **out, char *err,
                                      size_t errlen)
{
    err_clear(err, errlen);
    if (!out || !st) {
        bt_fmt(err, errlen, "store: bad arguments to assets_breakdown");
        return BT_EINVAL;
    }
    *out = NULL;
    struct bt_store__asset_filter f;
    enum bt_err e = filter_parse(filter, &f, err, errlen);
    if (e != BT_OK)
        return e;
    return st->ops->assets_breakdown(st->be, &f, out, err, errlen);
}

/* ---- requests, decisions, plans ----------------------------------------- */

/* bt_store_request_add: see store.h. user and channel may be NULL; text is
 * required. A request id that exists already is BT_EINVAL. */
enum bt_err bt_store_request_add(bt_store *st, const char *request_id, const char *user,
                                 const char *channel, const char *text, char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st)
        return no_store(err, errlen);
    if ((e = check_id(request_id, "request id", err, errlen)) != BT_OK ||
        (e = check_text(user, false, "user", err, errlen)) != BT_OK ||
        (e = check_text(channel, false, "channel", err, errlen)) != BT_OK ||
        (e = check_text(text, true, "request text", err, errlen)) != BT_OK)
        return e;
    return st->ops->request_add(st->be, request_id, user, channel, text, err, errlen);
}

/* bt_store_decision_add: see store.h. The request must have been recorded
 * (BT_EINVAL otherwise); decision must be an object. */
enum bt_err bt_store_decision_add(bt_store *st, const char *request_id, const json_t *decision,
                                  char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st)
        return no_store(err, errlen);
    if ((e = check_id(request_id, "request id", err, errlen)) != BT_OK)
        return e;
    if (!decision) {
        bt_fmt(err, errlen, "store: decision is missing");
        return BT_EINVAL;
    }
    char *text;
    if ((e = to_json_text(decision, true, "decision", &text, err, errlen)) != BT_OK)
        return e;
    e = st->ops->decision_add(st->be, request_id, text, err, errlen);
    free(text);
    return e;
}

static bool is_sha256_hex(const char *s)
{
    size_t i = 0;
    for (; s[i]; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return i == 64;
}

/* bt_store_plan_add: see store.h. canonical_json must parse as an object and
 * sha256 must be the lowercase hex sha256 of exactly that text: approvals are
 * bound to the hash, so a mismatch is a caller bug caught here (BT_EINVAL).
 * The request must have been recorded; approval_level is 0..3. */
enum bt_err bt_store_plan_add(bt_store *st, const char *plan_id, const char *request_id,
                              const char *canonical_json, const char *sha256, const char *risk,
                              int approval_level, char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st)
        return no_store(err, errlen);
    if ((e = check_id(plan_id, "plan id", err, errlen)) != BT_OK ||
        (e = check_id(request_id, "request id", err, errlen)) != BT_OK ||
        (e = check_id(risk, "plan risk", err, errlen)) != BT_OK ||
        (e = check_text(canonical_json, true, "plan JSON", err, errlen)) != BT_OK)
        return e;
    if (approval_level < 0 || approval_level > 3) {
        bt_fmt(err, errlen, "store: plan %.64s: approval level %d is not 0..3", plan_id,
               approval_level);
        return BT_EINVAL;
    }
    if (!sha256 || !is_sha256_hex(sha256)) {
        bt_fmt(err, errlen, "store: plan %.64s: sha256 is not 64 lowercase hex digits", plan_id);
        return BT_EINVAL;
    }
    json_error_t jerr;
    json_t *plan = json_loads(canonical_json, JSON_ALLOW_NUL, &jerr);
    bool obj = json_is_object(plan);
    json_decref(plan);
    if (!obj) {
        bt_fmt(err, errlen, "store: plan %.64s: plan JSON is not an object", plan_id);
        return BT_EINVAL;
    }
    char hex[65];
    bt_sha256_hex(canonical_json, strlen(canonical_json), hex);
    if (strcmp(hex, sha256) != 0) {
        bt_fmt(err, errlen, "store: plan %.64s: sha256 does not match the plan JSON", plan_id);
        return BT_EINVAL;
    }
    return st->ops->plan_add(st->be, plan_id, request_id, canonical_json, sha256, risk,
                             approval_level, err, errlen);
}

/* bt_store_plan_get: see store.h. The backend hashes the stored text again
 * on the way out: a plan whose text no longer matches its sha256 is
 * BT_ECORRUPT, never shown as the plan that was approved. */
enum bt_err bt_store_plan_get(bt_store *st, const char *plan_id, json_t **out, char *err,
                              size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !out)
        return bad_args("plan_get", err, errlen);
    *out = NULL;
    if ((e = check_id(plan_id, "plan id", err, errlen)) != BT_OK)
        return e;
    return st->ops->plan_get(st->be, plan_id, out, err, errlen);
}

/* ---- executions and steps ------------------------------------------------ */

/* bt_store_execution_add: see store.h. The plan must exist; state must be
 * one of the execution states; an existing id is BT_EINVAL. */
enum bt_err bt_store_execution_add(bt_store *st, const char *execution_id, const char *plan_id,
                                   const char *state, char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st)
        return no_store(err, errlen);
    if ((e = check_id(execution_id, "execution id", err, errlen)) != BT_OK ||
        (e = check_id(plan_id, "plan id", err, errlen)) != BT_OK ||
        (e = check_state(state, execution_states, "execution", err, errlen)) != BT_OK)
        return e;
    return st->ops->execution_add(st->be, execution_id, plan_id, state, err, errlen);
}

/* bt_store_execution_set: see store.h. Only the state name is checked here,
 * not the transition (that is the executor's state machine). result NULL
 * keeps the result stored before. BT_ENOENT for an unknown execution. */
enum bt_err bt_store_execution_set(bt_store *st, const char *execution_id, const char *state,
                                   const json_t *result, char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st)
        return no_store(err, errlen);
    if ((e = check_id(execution_id, "execution id", err, errlen)) != BT_OK ||
        (e = check_state(state, execution_states, "execution", err, errlen)) != BT_OK)
        return e;
    char *text;
    if ((e = to_json_text(result, false, "execution result", &text, err, errlen)) != BT_OK)
        return e;
    e = st->ops->execution_set(st->be, execution_id, state, text, err, errlen);
    free(text);
    return e;
}

/* bt_store_step_add: see store.h. step_index >= 0, unique per execution;
 * the execution must exist. */
enum bt_err bt_store_step_add(bt_store *st, const char *execution_id, int step_index,
                              const char *tool, const char *state, char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st)
        return no_store(err, errlen);
    if ((e = check_id(execution_id, "execution id", err, errlen)) != BT_OK ||
        (e = check_id(tool, "tool", err, errlen)) != BT_OK ||
        (e = check_state(state, step_states, "step", err, errlen)) != BT_OK)
        return e;
    if (step_index < 0) {
        bt_fmt(err, errlen, "store: step index %d is negative", step_index);
        return BT_EINVAL;
    }
    return st->ops->step_add(st->be, execution_id, step_index, tool, state, err, errlen);
}

/* bt_store_step_set: see store.h. result NULL keeps the stored result;
 * BT_ENOENT for an unknown step. */
enum bt_err bt_store_step_set(bt_store *st, const char *execution_id, int step_index,
                              const char *state, const json_t *result, char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st)
        return no_store(err, errlen);
    if ((e = check_id(execution_id, "execution id", err, errlen)) != BT_OK ||
        (e = check_state(state, step_states, "step", err, errlen)) != BT_OK)
        return e;
    if (step_index < 0) {
        bt_fmt(err, errlen, "store: step index %d is negative", step_index);
        return BT_EINVAL;
    }
    char *text;
    if ((e = to_json_text(result, false, "step result", &text, err, errlen)) != BT_OK)
        return e;
    e = st->ops->step_set(st->be, execution_id, step_index, state, text, err, errlen);
    free(text);
    return e;
}

/* bt_store_execution_get: see store.h. Steps come ordered by index. */
enum bt_err bt_store_execution_get(bt_store *st, const char *execution_id, json_t **out, char *err,
                                   size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !out)
        return bad_args("execution_get", err, errlen);
    *out = NULL;
    if ((e = check_id(execution_id, "execution id", err, errlen)) != BT_OK)
        return e;
    return st->ops->execution_get(st->be, execution_id, out, err, errlen);
}

/* ---- execution engine ----------------------------------------------------- */

/* Caps on what the engine hands the store. */
#define LOCK_ASSETS_MAX 1000
#define NOTIFY_TEXT_MAX 4096
#define JOB_ERROR_MAX 4096
#define NOTIFICATIONS_MAX 10000

static const char *const job_states[] = {"available", "running", "done", "dead", NULL};

/* A list of asset names: array of up to LOCK_ASSETS_MAX ids (non-empty
 * UTF-8, ID_MAX bytes), at least min of them. *text: canonical JSON (new). */
static enum bt_err check_assets(const json_t *assets, size_t min, char **text, char *err,
                                size_t errlen)
{
    *text = NULL;
    if (!json_is_array(assets) || json_array_size(assets) < min ||
        json_array_size(assets) > LOCK_ASSETS_MAX) {
        bt_fmt(err, errlen, "store: assets must be an array of %zu to %d asset names", min,
               LOCK_ASSETS_MAX);
        return BT_EINVAL;
    }
    size_t i;
    const json_t *a;
    json_array_foreach(assets, i, a)
    {
        enum bt_err e = check_id(json_string_value(a), "asset name", err, errlen);
        if (e != BT_OK)
            return e;
    }
    return to_json_text(assets, false, "assets", text, err, errlen);
}

static enum bt_err check_bounded_text(const char *s, bool required, size_t max, const char *what,
                                      char *err, size_t errlen)
{
    enum bt_err e = check_text(s, required, what, err, errlen);
    if (e == BT_OK && s && strlen(s) > max) {
        bt_fmt(err, errlen, "store: %s is longer than %zu bytes", what, max);
        return BT_EINVAL;
    }
    return e;
}

/* bt_store_execution_transition: see store.h. Both state names must be
 * execution states; whether the move is allowed is the executor's table. */
enum bt_err bt_store_execution_transition(bt_store *st, const char *execution_id, const char *from,
                                          const char *to, const json_t *result, char *err,
                                          size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st)
        return no_store(err, errlen);
    if ((e = check_id(execution_id, "execution id", err, errlen)) != BT_OK ||
        (e = check_state(from, execution_states, "execution", err, errlen)) != BT_OK ||
        (e = check_state(to, execution_states, "execution", err, errlen)) != BT_OK)
        return e;
    char *text;
    if ((e = to_json_text(result, false, "execution result", &text, err, errlen)) != BT_OK)
        return e;
    e = st->ops->execution_transition(st->be, execution_id, from, to, text, err, errlen);
    free(text);
    return e;
}

/* bt_store_execution_own: see store.h. */
enum bt_err bt_store_execution_own(bt_store *st, const char *execution_id, const char *from,
                                   const char *owner_host, long long owner_pid,
                                   const char *owner_start, int steps_total, char *err,
                                   size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st)
        return no_store(err, errlen);
    if ((e = check_id(execution_id, "execution id", err, errlen)) != BT_OK ||
        (e = check_state(from, execution_states, "execution", err, errlen)) != BT_OK ||
        (e = check_id(owner_host, "owner host", err, errlen)) != BT_OK ||
        (owner_start && (e = check_id(owner_start, "owner start", err, errlen)) != BT_OK))
        return e;
    if (owner_pid <= 0 || steps_total < 0) {
        bt_fmt(err, errlen, "store: execution %.64s: owner pid %lld or step count %d is invalid",
               execution_id, owner_pid, steps_total);
        return BT_EINVAL;
    }
    return st->ops->execution_own(st->be, execution_id, from, owner_host, owner_pid, owner_start,
                                  steps_total, err, errlen);
}

/* bt_store_execution_progress: see store.h. */
enum bt_err bt_store_execution_progress(bt_store *st, const char *execution_id, int done, int total,
                                        char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st)
        return no_store(err, errlen);
    if ((e = check_id(execution_id, "execution id", err, errlen)) != BT_OK)
        return e;
    if (done < 0 || total < 0 || done > total) {
        bt_fmt(err, errlen, "store: execution %.64s: progress %d of %d is invalid", execution_id,
               done, total);
        return BT_EINVAL;
    }
    return st->ops->execution_progress(st->be, execution_id, done, total, err, errlen);
}

/* bt_store_executions_running: see store.h. */
enum bt_err bt_store_executions_running(bt_store *st, json_t **out, char *err, size_t errlen)
{
    err_clear(err, errlen);
    if (!st || !out)
        return bad_args("executions_running", err, errlen);
    *out = NULL;
    return st->ops->executions_running(st->be, out, err, errlen);
}

/* bt_store_locks_acquire: see store.h. wait_ttl_ms is 1 ms..1 day. */
enum bt_err bt_store_locks_acquire(bt_store *st, const char *execution_id, const json_t *assets,
                                   int64_t wait_ttl_ms, json_t **out, char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !out)
        return bad_args("locks_acquire", err, errlen);
    *out = NULL;
    if ((e = check_id(execution_id, "execution id", err, errlen)) != BT_OK)
        return e;
    if (wait_ttl_ms < 1 || wait_ttl_ms > 86400000) {
        bt_fmt(err, errlen, "store: lock wait ttl %lld ms is not 1..86400000",
               (long long)wait_ttl_ms);
        return BT_EINVAL;
    }
    char *text;
    if ((e = check_assets(assets, 1, &text, err, errlen)) != BT_OK)
        return e;
    e = st->ops->locks_acquire(st->be, execution_id, assets, text, wait_ttl_ms, out, err, errlen);
    free(text);
    return e;
}

/* bt_store_locks_release: see store.h. Releasing nothing is not an error. */
enum bt_err bt_store_locks_release(bt_store *st, const char *execution_id, char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st)
        return no_store(err, errlen);
    if ((e = check_id(execution_id, "execution id", err, errlen)) != BT_OK)
        return e;
    return st->ops->locks_release(st->be, execution_id, err, errlen);
}

/* bt_store_locks_list: see store.h. */
enum bt_err bt_store_locks_list(bt_store *st, const char *execution_id, json_t **out, char *err,
                                size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !out)
        return bad_args("locks_list", err, errlen);
    *out = NULL;
    if (execution_id && (e = check_id(execution_id, "execution id", err, errlen)) != BT_OK)
        return e;
    return st->ops->locks_list(st->be, execution_id, out, err, errlen);
}

/* bt_store_job_add: see store.h. step >= -1; max_attempts 1..100; the
 * execution must exist and must not have another available or running
 * job (BT_EINVAL). */
enum bt_err bt_store_job_add(bt_store *st, const char *execution_id, int step, const json_t *assets,
                             int max_attempts, int64_t run_at_ms, long long *job_id, char *err,
                             size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !job_id)
        return bad_args("job_add", err, errlen);
    *job_id = 0;
    if ((e = check_id(execution_id, "execution id", err, errlen)) != BT_OK)
        return e;
    if (step < -1 || max_attempts < 1 || max_attempts > 100) {
        bt_fmt(err, errlen, "store: job for %.64s: step %d or max attempts %d is invalid",
               execution_id, step, max_attempts);
        return BT_EINVAL;
    }
    char *text;
    if ((e = check_assets(assets, 0, &text, err, errlen)) != BT_OK)
        return e;
    e = st->ops->job_add(st->be, execution_id, step, text, max_attempts, run_at_ms, job_id, err,
                         errlen);
    free(text);
    return e;
}

/* bt_store_job_claim: see store.h. lease_ms is 1 ms..1 day. */
enum bt_err bt_store_job_claim(bt_store *st, const char *worker, int64_t lease_ms, json_t **job,
                               char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !job)
        return bad_args("job_claim", err, errlen);
    *job = NULL;
    if ((e = check_id(worker, "worker id", err, errlen)) != BT_OK)
        return e;
    if (lease_ms < 1 || lease_ms > 86400000) {
        bt_fmt(err, errlen, "store: job lease %lld ms is not 1..86400000", (long long)lease_ms);
        return BT_EINVAL;
    }
    return st->ops->job_claim(st->be, worker, lease_ms, job, err, errlen);
}

/* bt_store_job_heartbeat: see store.h. */
enum bt_err bt_store_job_heartbeat(bt_store *st, long long job_id, const char *worker, char *err,
                                   size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st)
        return no_store(err, errlen);
    if ((e = check_id(worker, "worker id", err, errlen)) != BT_OK)
        return e;
    if (job_id <= 0) {
        bt_fmt(err, errlen, "store: job id %lld is invalid", job_id);
        return BT_EINVAL;
    }
    return st->ops->job_heartbeat(st->be, job_id, worker, err, errlen);
}

/* bt_store_job_finish: see store.h. state is available, done or dead. */
enum bt_err bt_store_job_finish(bt_store *st, long long job_id, const char *worker,
                                const char *state, int64_t run_at_ms, const char *last_error,
                                bool uncount, char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st)
        return no_store(err, errlen);
    if ((e = check_id(worker, "worker id", err, errlen)) != BT_OK ||
        (e = check_state(state, job_states, "job", err, errlen)) != BT_OK ||
        (e = check_bounded_text(last_error, false, JOB_ERROR_MAX, "job error", err, errlen)) !=
            BT_OK)
        return e;
    if (strcmp(state, "running") == 0 || job_id <= 0) {
        bt_fmt(err, errlen, "store: job %lld cannot be finished as %s", job_id, state);
        return BT_EINVAL;
    }
    return st->ops->job_finish(st->be, job_id, worker, state, run_at_ms, last_error, uncount, err,
                               errlen);
}

/* bt_store_jobs_of: see store.h. */
enum bt_err bt_store_jobs_of(bt_store *st, const char *execution_id, json_t **out, char *err,
                             size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !out)
        return bad_args("jobs_of", err, errlen);
    *out = NULL;
    if ((e = check_id(execution_id, "execution id", err, errlen)) != BT_OK)
        return e;
    return st->ops->jobs_of(st->be, execution_id, out, err, errlen);
}

/* bt_store_notify: see store.h. BT_ENOENT for an unknown execution. */
enum bt_err bt_store_notify(bt_store *st, const char *execution_id, const char *text, char *err,
                            size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st)
        return no_store(err, errlen);
    if ((e = check_id(execution_id, "execution id", err, errlen)) != BT_OK ||
        (e = check_bounded_text(text, true, NOTIFY_TEXT_MAX, "notification text", err, errlen)) !=
            BT_OK)
        return e;
    return st->ops->notify(st->be, execution_id, text, err, errlen);
}

/* bt_store_batch_begin: see store.h. */
enum bt_err bt_store_batch_begin(bt_store *st, char *err, size_t errlen)
{
    err_clear(err, errlen);
    if (!st)
        return no_store(err, errlen);
    return st->ops->batch_begin(st->be, err, errlen);
}

/* bt_store_batch_end: see store.h. */
enum bt_err bt_store_batch_end(bt_store *st, bool commit, char *err, size_t errlen)
{
    err_clear(err, errlen);
    if (!st)
        return no_store(err, errlen);
    return st->ops->batch_end(st->be, commit, err, errlen);
}

/* bt_store_notify_user: see store.h. */
enum bt_err bt_store_notify_user(bt_store *st, const char *user, const char *execution_id,
                                 const char *text, char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st)
        return no_store(err, errlen);
    if ((e = check_id(user, "user", err, errlen)) != BT_OK ||
        (execution_id && (e = check_id(execution_id, "execution id", err, errlen)) != BT_OK) ||
        (e = check_bounded_text(text, true, NOTIFY_TEXT_MAX, "notification text", err, errlen)) !=
            BT_OK)
        return e;
    return st->ops->notify_user(st->be, user, execution_id, text, err, errlen);
}

/* bt_store_notifications: see store.h. */
enum bt_err bt_store_notifications(bt_store *st, const char *user, bool undelivered, long limit,
                                   json_t **out, char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !out)
        return bad_args("notifications", err, errlen);
    *out = NULL;
    if (user && (e = check_id(user, "user", err, errlen)) != BT_OK)
        return e;
    if (limit < 1 || limit > NOTIFICATIONS_MAX) {
        bt_fmt(err, errlen, "store: notification limit %ld is not 1..%d", limit, NOTIFICATIONS_MAX);
        return BT_EINVAL;
    }
    return st->ops->notifications(st->be, user, undelivered, limit, out, err, errlen);
}

/* bt_store_notification_delivered: see store.h. BT_ENOENT when unknown. */
enum bt_err bt_store_notification_delivered(bt_store *st, long long notification_id, char *err,
                                            size_t errlen)
{
    err_clear(err, errlen);
    if (!st)
        return no_store(err, errlen);
    if (notification_id <= 0) {
        bt_fmt(err, errlen, "store: notification id %lld is invalid", notification_id);
        return BT_EINVAL;
    }
    return st->ops->notification_delivered(st->be, notification_id, err, errlen);
}

/* ---- console tokens and history ------------------------------------------ */

static enum bt_err check_sha256_hex(const char *h, char *err, size_t errlen)
{
    size_t n = 0;
    for (; h[n]; n++)
        if (!((h[n] >= '0' && h[n] <= '9') || (h[n] >= 'a' && h[n] <= 'f')))
            break;
    if (n != 64 || h[n] != '\0') {
        bt_fmt(err, errlen, "store: a token hash is not 64 lowercase hex digits");
        return BT_EINVAL;
    }
    return BT_OK;
}

/* bt_store_console_token_add: see store.h. */
enum bt_err bt_store_console_token_add(bt_store *st, const char *token_sha256, const char *user,
                                       char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !token_sha256 || !user)
        return bad_args("console_token_add", err, errlen);
    if ((e = check_sha256_hex(token_sha256, err, errlen)) != BT_OK ||
        (e = check_id(user, "user", err, errlen)) != BT_OK)
        return e;
    return st->ops->console_token_add(st->be, token_sha256, user, err, errlen);
}

/* bt_store_console_token_user: see store.h. */
enum bt_err bt_store_console_token_user(bt_store *st, const char *token_sha256, char **user,
                                        char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !token_sha256 || !user)
        return bad_args("console_token_user", err, errlen);
    *user = NULL;
    if ((e = check_sha256_hex(token_sha256, err, errlen)) != BT_OK)
        return e;
    return st->ops->console_token_user(st->be, token_sha256, user, err, errlen);
}

/* bt_store_requests_of: see store.h. */
enum bt_err bt_store_requests_of(bt_store *st, const char *user, long limit, json_t **out,
                                 char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !user || !out)
        return bad_args("requests_of", err, errlen);
    *out = NULL;
    if ((e = check_id(user, "user", err, errlen)) != BT_OK)
        return e;
    if (limit < 1 || limit > 1000) {
        bt_fmt(err, errlen, "store: request limit %ld is not 1..1000", limit);
        return BT_EINVAL;
    }
    return st->ops->requests_of(st->be, user, limit, out, err, errlen);
}

/* ---- approvals ------------------------------------------------------------ */

/* bt_store_approval_add: see store.h. execution_id may be NULL or "" (none);
 * the plan (and execution, when given) must exist; level is 0..3;
 * requirement must be an object. */
enum bt_err bt_store_approval_add(bt_store *st, const char *approval_id, const char *plan_id,
                                  const char *execution_id, int level, const json_t *requirement,
                                  int64_t expires_ms, char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st)
        return no_store(err, errlen);
    if (execution_id && !*execution_id)
        execution_id = NULL;
    if ((e = check_id(approval_id, "approval id", err, errlen)) != BT_OK ||
        (e = check_id(plan_id, "plan id", err, errlen)) != BT_OK ||
        (execution_id && (e = check_id(execution_id, "execution id", err, errlen)) != BT_OK))
        return e;
    if (level < 0 || level > 3) {
        bt_fmt(err, errlen, "store: approval %.64s: level %d is not 0..3", approval_id, level);
        return BT_EINVAL;
    }
    if (!requirement) {
        bt_fmt(err, errlen, "store: approval %.64s: requirement is missing", approval_id);
        return BT_EINVAL;
    }
    char *text;
    if ((e = to_json_text(requirement, true, "approval requirement", &text, err, errlen)) != BT_OK)
        return e;
    e = st->ops->approval_add(st->be, approval_id, plan_id, execution_id, level, text, expires_ms,
                              err, errlen);
    free(text);
    return e;
}

/* bt_store_approval_get: see store.h. */
enum bt_err bt_store_approval_get(bt_store *st, const char *approval_id, json_t **out, char *err,
                                  size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !out)
        return bad_args("approval_get", err, errlen);
    *out = NULL;
    if ((e = check_id(approval_id, "approval id", err, errlen)) != BT_OK)
        return e;
    return st->ops->approval_get(st->be, approval_id, out, err, errlen);
}

/* bt_store_approvals_pending: see store.h. State "pending" regardless of
 * expires_ms (expiring them is the approvals module's job); at most
 * BT_STORE__PENDING_MAX per call. */
enum bt_err bt_store_approvals_pending(bt_store *st, json_t **out, char *err, size_t errlen)
{
    err_clear(err, errlen);
    if (!st || !out)
        return bad_args("approvals_pending", err, errlen);
    *out = NULL;
    return st->ops->approvals_pending(st->be, out, err, errlen);
}

/* ---- approval dialogue ------------------------------------------------------ */

static const char *const approval_states[] = {
    "pending", "releasing", "approved", "denied", "cancelled", "expired", NULL,
};

static const char *const approval_decisions[] = {"approve", "deny", "cancel", NULL};

/* The caller's check, and what the backend calls instead of it. */
struct approval_check {
    bt_store_approval_check check;
    void *ctx;
};

/* Run the caller's check, then validate the change it asks for: the one
 * place this is done, so every backend writes only well-formed changes. */
static enum bt_err approval_check_wrap(void *c, const json_t *approval,
                                       struct bt_store_approval_change *ch, char *err,
                                       size_t errlen)
{
    const struct approval_check *ac = c;
    enum bt_err e = ac->check(ac->ctx, approval, ch, err, errlen);
    if (e != BT_OK)
        return e;
    if (ch->state &&
        (e = check_state(ch->state, approval_states, "approval", err, errlen)) != BT_OK)
        return e;
    if (!ch->user)
        return BT_OK;
    if ((e = check_id(ch->user, "decision user", err, errlen)) != BT_OK ||
        (e = check_text(ch->via, false, "decision via", err, errlen)) != BT_OK)
        return e;
    if (!ch->decision || !in_list(ch->decision, approval_decisions)) {
        bt_fmt(err, errlen, "store: unknown approval decision '%.64s'",
               ch->decision ? ch->decision : "(null)");
        return BT_EINVAL;
    }
    if (ch->step < -1) {
        bt_fmt(err, errlen, "store: decision step %d is below -1", ch->step);
        return BT_EINVAL;
    }
    return BT_OK;
}

/* bt_store_approval_update: see store.h. */
enum bt_err bt_store_approval_update(bt_store *st, const char *approval_id,
                                     bt_store_approval_check check, void *ctx, char *err,
                                     size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !check)
        return bad_args("approval_update", err, errlen);
    if ((e = check_id(approval_id, "approval id", err, errlen)) != BT_OK)
        return e;
    struct approval_check ac = {check, ctx};
    return st->ops->approval_update(st->be, approval_id, approval_check_wrap, &ac, err, errlen);
}

/* bt_store_approval_decisions: see store.h. */
enum bt_err bt_store_approval_decisions(bt_store *st, const char *approval_id, json_t **out,
                                        char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !out)
        return bad_args("approval_decisions", err, errlen);
    *out = NULL;
    if ((e = check_id(approval_id, "approval id", err, errlen)) != BT_OK)
        return e;
    return st->ops->approval_decisions(st->be, approval_id, out, err, errlen);
}

/* bt_store_approvals_unstarted: see store.h. */
enum bt_err bt_store_approvals_unstarted(bt_store *st, int64_t decided_before_ms, json_t **out,
                                         char *err, size_t errlen)
{
    err_clear(err, errlen);
    if (!st || !out)
        return bad_args("approvals_unstarted", err, errlen);
    *out = NULL;
    return st->ops->approvals_unstarted(st->be, decided_before_ms, out, err, errlen);
}

/* bt_store_approvals_open: see store.h. Like bt_store_approvals_pending,
 * regardless of expires_ms; at most BT_STORE__PENDING_MAX per call. */
enum bt_err bt_store_approvals_open(bt_store *st, json_t **out, char *err, size_t errlen)
{
    err_clear(err, errlen);
    if (!st || !out)
        return bad_args("approvals_open", err, errlen);
    *out = NULL;
    return st->ops->approvals_open(st->be, out, err, errlen);
}

/* ---- settings --------------------------------------------------------------- */

/* bt_store_setting_ensure: see store.h. The first value written wins, also
 * between processes; *out (new heap string) is that value. */
enum bt_err bt_store_setting_ensure(bt_store *st, const char *key, const char *value, char **out,
                                    char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !out)
        return bad_args("setting_ensure", err, errlen);
    *out = NULL;
    if ((e = check_id(key, "setting key", err, errlen)) != BT_OK ||
        (e = check_text(value, true, "setting value", err, errlen)) != BT_OK)
        return e;
    return st->ops->setting_ensure(st->be, key, value, out, err, errlen);
}

/* ---- audit log ---------------------------------------------------------------- */

/* bt_store__audit_hash: see store_int.h. */
enum bt_err bt_store__audit_hash(const char *prev_hash, long long seq, int64_t ts_ms,
                                 const char *request_id, const char *actor, const char *event,
                                 const json_t *detail, char out[65], char *err, size_t errlen)
{
    json_t *o = json_object();
    json_t *rid = request_id ? json_string(request_id) : json_null();
    json_t *act = actor ? json_string(actor) : json_null();
    json_t *ev = event ? json_string(event) : json_null();
    enum bt_err e = BT_OK;
    if (!rid || !act || !ev) {
        bt_fmt(err, errlen, "store: audit entry %lld: text is not valid UTF-8", seq);
        e = BT_EINVAL;
    }
    json_object_set_new(o, "seq", json_integer(seq));
    json_object_set_new(o, "ts_ms", json_integer(ts_ms));
    if (rid)
        json_object_set_new(o, "request_id", rid);
    if (act)
        json_object_set_new(o, "actor", act);
    if (ev)
        json_object_set_new(o, "event", ev);
    /* A reference, not a copy: the object is only read (encoded) here. */
    json_object_set_new(o, "detail", detail ? json_incref((json_t *)detail) : json_null());
    char *canon = e == BT_OK ? bt_json_canonical(o) : NULL;
    json_decref(o);
    if (e == BT_OK && !canon) {
        bt_fmt(err, errlen, "store: audit entry %lld cannot be encoded as JSON", seq);
        e = BT_EINVAL;
    }
    if (e != BT_OK) {
        free(canon);
        return e;
    }
    bt_buf b = BT_BUF_INIT(0);
    if (bt_buf_puts(&b, prev_hash) != BT_OK || bt_buf_puts(&b, "\n") != BT_OK ||
        bt_buf_puts(&b, canon) != BT_OK) {
        bt_fmt(err, errlen, "store: audit entry %lld is too big to hash", seq);
        e = BT_ETOOBIG;
    } else {
        bt_sha256_hex(b.data, b.len, out);
    }
    bt_buf_free(&b);
    free(canon);
    return e;
}

/* bt_store_audit_append: see store.h. event is required; request_id and
 * actor may be NULL; detail must be an object or NULL. */
enum bt_err bt_store_audit_append(bt_store *st, const char *request_id, const char *actor,
                                  const char *event, const json_t *detail, char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st)
        return no_store(err, errlen);
    if ((e = check_id(event, "audit event", err, errlen)) != BT_OK ||
        (request_id && (e = check_id(request_id, "request id", err, errlen)) != BT_OK) ||
        (e = check_text(actor, false, "audit actor", err, errlen)) != BT_OK)
        return e;
    if (detail && !json_is_object(detail)) {
        bt_fmt(err, errlen, "store: audit detail must be a JSON object");
        return BT_EINVAL;
    }
    return st->ops->audit_append(st->be, request_id, actor, event, detail, err, errlen);
}

/* bt_store_chat_claim: see store.h. */
enum bt_err bt_store_chat_claim(bt_store *st, const char *key, bool *claimed, char *err,
                                size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !key || !claimed)
        return bad_args("chat_claim", err, errlen);
    *claimed = false;
    if ((e = check_id(key, "chat event key", err, errlen)) != BT_OK)
        return e;
    return st->ops->chat_claim(st->be, key, claimed, err, errlen);
}

/* bt_store_chat_post_add: see store.h. */
enum bt_err bt_store_chat_post_add(bt_store *st, const char *approval_id, const char *surface,
                                   const char *channel, const char *post, const char *thread,
                                   char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !approval_id || !surface || !channel || !post)
        return bad_args("chat_post_add", err, errlen);
    if ((e = check_id(approval_id, "approval id", err, errlen)) != BT_OK ||
        (e = check_id(surface, "chat surface", err, errlen)) != BT_OK ||
        (e = check_id(channel, "chat channel", err, errlen)) != BT_OK ||
        (e = check_id(post, "chat post", err, errlen)) != BT_OK ||
        (thread && (e = check_id(thread, "chat thread", err, errlen)) != BT_OK))
        return e;
    return st->ops->chat_post_add(st->be, approval_id, surface, channel, post, thread, err, errlen);
}

/* bt_store_chat_posts_of: see store.h. */
enum bt_err bt_store_chat_posts_of(bt_store *st, const char *approval_id, json_t **out, char *err,
                                   size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !approval_id || !out)
        return bad_args("chat_posts_of", err, errlen);
    *out = NULL;
    if ((e = check_id(approval_id, "approval id", err, errlen)) != BT_OK)
        return e;
    return st->ops->chat_posts_of(st->be, approval_id, out, err, errlen);
}

/* bt_store_request_get: see store.h. */
enum bt_err bt_store_request_get(bt_store *st, const char *request_id, json_t **out, char *err,
                                 size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !request_id || !out)
        return bad_args("request_get", err, errlen);
    *out = NULL;
    if ((e = check_id(request_id, "request_id", err, errlen)) != BT_OK)
        return e;
    return st->ops->request_get(st->be, request_id, out, err, errlen);
}

/* bt_store_audit_of: see store.h. */
enum bt_err bt_store_audit_of(bt_store *st, const char *request_id, long limit, json_t **out,
                              char *err, size_t errlen)
{
    err_clear(err, errlen);
    enum bt_err e;
    if (!st || !request_id || !out)
        return bad_args("audit_of", err, errlen);
    *out = NULL;
    if ((e = check_id(request_id, "request_id", err, errlen)) != BT_OK)
        return e;
    if (limit < 1 || limit > 10000) {
        bt_fmt(err, errlen, "store: audit limit %ld is not 1..10000", limit);
        return BT_EINVAL;
    }
    return st->ops->audit_of(st->be, request_id, limit, out, err, errlen);
}

/* bt_store_audit_list: see store.h. limit must be 1..100000. */
enum bt_err bt_store_audit_list(bt_store *st, int64_t since_ms, long limit, json_t **out, char *err,
                                size_t errlen)
{
    err_clear(err, errlen);
    if (!st || !out)
        return bad_args("audit_list", err, errlen);
    *out = NULL;
    if (limit < 1 || limit > BT_STORE__AUDIT_LIST_MAX) {
        bt_fmt(err, errlen, "store: audit list limit %ld is not 1..%d", limit,
               BT_STORE__AUDIT_LIST_MAX);
        return BT_EINVAL;
    }
    return st->ops->audit_list(st->be, since_ms, limit, out, err, errlen);
}

/* bt_store_maintain: see store.h. */
enum bt_err bt_store_maintain(bt_store *st, char *err, size_t errlen)
{
    err_clear(err, errlen);
    if (!st)
        return bad_args("maintain", err, errlen);
    return st->ops->maintain(st->be, err, errlen);
}

/* bt_store_audit_verify: see store.h. *entries is the number of entries
 * checked and found good (on BT_ECORRUPT: those before the bad one); err
 * then reads "audit log: chain broken at seq N: why". */
enum bt_err bt_store_audit_verify(bt_store *st, long long *entries, char *err, size_t errlen)
{
    err_clear(err, errlen);
    long long dummy;
    if (!entries)
        entries = &dummy;
    *entries = 0;
    if (!st)
        return no_store(err, errlen);
    return st->ops->audit_verify(st->be, entries, err, errlen);
}

/* bt_store_listen: see store.h. */
enum bt_err bt_store_listen(bt_store *st, char *err, size_t errlen)
{
    err_clear(err, errlen);
    if (!st)
        return no_store(err, errlen);
    return st->ops->listen(st->be, err, errlen);
}

/* bt_store_changes: see store.h. */
enum bt_err bt_store_changes(bt_store *st, int timeout_ms, json_t **ids, char *err, size_t errlen)
{
    err_clear(err, errlen);
    if (!st || !ids)
        return bad_args("changes", err, errlen);
    *ids = NULL;
    if (timeout_ms < 0 || timeout_ms > BT_STORE__CHANGES_WAIT_MAX_MS) {
        bt_fmt(err, errlen, "store: changes: timeout %d ms is not 0..%d", timeout_ms,
               BT_STORE__CHANGES_WAIT_MAX_MS);
        return BT_EINVAL;
    }
    return st->ops->changes(st->be, timeout_ms, ids, err, errlen);
}
