/*
 * policy.c - the approval rules engine. policy.h is the contract;
 * docs/approvals.md is the operator's view of the same rules.
 *
 * Two passes, as everywhere in baton. bt_policy_new checks the `policy`,
 * `users`, `groups` and `cli` sections of baton.yaml and copies them into
 * plain C structures: no jansson value is kept, so any number of threads may
 * evaluate against one policy without touching a reference count.
 * bt_policy_evaluate then reads a plan and computes its requirement:
 *
 *   1. risk   The highest of the plan's risk and every step's risk. A risk
 *             that is missing or unknown counts as critical. Nothing lowers it.
 *   2. base   levels[risk]. For a change (risk medium or above): + the
 *             production raise when a target is in a production environment,
 *             + the many-targets raise when there are `threshold` or more
 *             distinct targets. At most 3.
 *   3. rules  Every matching rule contributes. The level is the highest
 *             level any matching rule names (strictest wins), else the base.
 *             A rule whose level is below the base only matches when EVERY
 *             changing step and EVERY target satisfies its conditions (see
 *             rule_matches), so a rule written for part of a plan never
 *             lowers the whole plan.
 *   4. floors Code, not policy: a critical plan is always level 3; a change
 *             on a production target is never below level 2.
 *   5. who    M = max(approvers[level], every matching rule's
 *             approvals_required); approver groups from the rules (their
 *             intersection) or the policy default; expiry the shortest of the
 *             matching rules' or the level's. When no configured set of people
 *             could ever give M decisions, the request is refused up front
 *             rather than left to expire.
 */
#include "approvals/policy.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bot/util.h"

#define POLICY_MAX_LEVEL 3
#define POLICY_MAX_APPROVERS 20
#define POLICY_MAX_MINUTES 1440 /* a pending approval lives at most a day */
#define POLICY_NAME_MAX 64
#define POLICY_IDENTITY_MAX 256
#define POLICY_PATH_MAX 256
#define POLICY_MSG_MAX 512

/* ---- roles and platforms ------------------------------------------------ */

enum role { ROLE_VIEWER, ROLE_OPERATOR, ROLE_APPROVER, ROLE_ADMIN, ROLE_COUNT };
static const char *const role_names[ROLE_COUNT] = {"viewer", "operator", "approver", "admin"};

enum platform {
    PLATFORM_CLI,
    PLATFORM_CONSOLE,
    PLATFORM_SLACK,
    PLATFORM_MATTERMOST,
    PLATFORM_COUNT
};
static const char *const platform_names[PLATFORM_COUNT + 1] = {"cli", "console", "slack",
                                                               "mattermost", NULL};

static bool role_parse(const char *s, enum role *out)
{
    for (int i = 0; i < ROLE_COUNT; i++)
        if (s && strcmp(s, role_names[i]) == 0) {
            *out = (enum role)i;
            return true;
        }
    return false;
}

static int platform_parse(const char *s)
{
    for (int i = 0; i < PLATFORM_COUNT; i++)
        if (s && strcmp(s, platform_names[i]) == 0)
            return i;
    return -1;
}

const char *bt_risk_name(enum bt_risk risk)
{
    switch (risk) {
    case BT_RISK_LOW:
        return "low";
    case BT_RISK_MEDIUM:
        return "medium";
    case BT_RISK_HIGH:
        return "high";
    case BT_RISK_CRITICAL:
        return "critical";
    }
    return "unknown";
}

bool bt_risk_parse(const char *name, enum bt_risk *out)
{
    if (!name)
        return false;
    for (int i = BT_RISK_LOW; i <= BT_RISK_CRITICAL; i++)
        if (strcasecmp(name, bt_risk_name((enum bt_risk)i)) == 0) {
            *out = (enum bt_risk)i;
            return true;
        }
    return false;
}

/* ---- the policy ----------------------------------------------------------- */

struct strlist {
    char **items;
    size_t count;
};

struct user {
    char *name;
    enum role role;
    struct strlist groups;
    char *ids[PLATFORM_COUNT]; /* NULL: no identity on that platform */
};

struct input_match {
    char *name;
    struct strlist values; /* compared case-insensitively */
};

struct rule {
    char *name;
    /* match: every condition that is set must hold */
    struct strlist intents, tools, environments, requester_groups;
    unsigned requester_roles; /* bit per enum role; 0: any */
    struct input_match *inputs;
    size_t ninputs;
    int min_risk, max_risk; /* -1: unset */
    long min_targets;       /* 0: unset */
    /* effects */
    int level;     /* -1: unset */
    int approvals; /* 0: unset */
    bool has_groups;
    struct strlist approver_groups;
    int expiry_minutes; /* 0: unset */
    char *deny;         /* NULL: not a deny rule */
};

struct bt_policy {
    int levels[BT_RISK_CRITICAL + 1];       /* risk -> level */
    struct strlist production_environments; /* raise and floor */
    int production_by;
    long many_threshold;
    int many_by;
    /* per level 0..3; index 0 unused (level 0 needs nobody) */
    int approvers[POLICY_MAX_LEVEL + 1];
    int expiry_minutes[POLICY_MAX_LEVEL + 1];
    int remind_minutes[POLICY_MAX_LEVEL + 1];   /* 0: never */
    int escalate_minutes[POLICY_MAX_LEVEL + 1]; /* 0: never */
    char *escalate_to;
    struct strlist approver_groups;
    struct rule *rules;
    size_t nrules;
    struct user *users;
    size_t nusers;
    struct strlist groups;
};

static void strlist_push(struct strlist *l, const char *s)
{
    l->items = bt_realloc(l->items, (l->count + 1) * sizeof *l->items);
    l->items[l->count++] = bt_strdup(s);
}

static void strlist_free(struct strlist *l)
{
    for (size_t i = 0; i < l->count; i++)
        free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->count = 0;
}

static bool strlist_has(const struct strlist *l, const char *s, bool nocase)
{
    if (!s)
        return false;
    for (size_t i = 0; i < l->count; i++)
        if (nocase ? strcasecmp(l->items[i], s) == 0 : strcmp(l->items[i], s) == 0)
            return true;
    return false;
}

static void rule_free(struct rule *r)
{
    free(r->name);
    strlist_free(&r->intents);
    strlist_free(&r->tools);
    strlist_free(&r->environments);
    strlist_free(&r->requester_groups);
    for (size_t i = 0; i < r->ninputs; i++) {
        free(r->inputs[i].name);
        strlist_free(&r->inputs[i].values);
    }
    free(r->inputs);
    strlist_free(&r->approver_groups);
    free(r->deny);
}

void bt_policy_free(bt_policy *p)
{
    if (!p)
        return;
    strlist_free(&p->production_environments);
    free(p->escalate_to);
    strlist_free(&p->approver_groups);
    for (size_t i = 0; i < p->nrules; i++)
        rule_free(&p->rules[i]);
    free(p->rules);
    for (size_t i = 0; i < p->nusers; i++) {
        free(p->users[i].name);
        strlist_free(&p->users[i].groups);
        for (int k = 0; k < PLATFORM_COUNT; k++)
            free(p->users[i].ids[k]);
    }
    free(p->users);
    strlist_free(&p->groups);
    free(p);
}

static const struct user *find_user(const bt_policy *p, const char *name)
{
    if (!p || !name)
        return NULL;
    for (size_t i = 0; i < p->nusers; i++)
        if (strcmp(p->users[i].name, name) == 0)
            return &p->users[i];
    return NULL;
}

const char *bt_policy_user_role(const bt_policy *p, const char *user)
{
    const struct user *u = find_user(p, user);
    return u ? role_names[u->role] : NULL;
}

bool bt_policy_user_in_group(const bt_policy *p, const char *user, const char *group)
{
    const struct user *u = find_user(p, user);
    return u && strlist_has(&u->groups, group, false);
}

const char *bt_policy_user_for(const bt_policy *p, const char *platform, const char *id)
{
    int k = platform_parse(platform);
    if (!p || k < 0 || !id)
        return NULL;
    /* Exact comparison: Slack and Mattermost ids are case-sensitive, and
     * bt_policy_new refused duplicates, so at most one user matches. */
    for (size_t i = 0; i < p->nusers; i++)
        if (p->users[i].ids[k] && strcmp(p->users[i].ids[k], id) == 0)
            return p->users[i].name;
    return NULL;
}

/* ---- configuration checking ------------------------------------------------ */

/* Every problem is "baton.yaml:LINE: dotted.path: message"; the dotted path
 * (policy.rules[2].match.tool) tells the operator where without counting
 * lines. errors counts only this module's problems: d may hold others. */
struct chk {
    bt_diag *d;
    const bt_yaml_doc *doc;
    size_t errors;
};

static void chk_line(struct chk *c, int line, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void chk_line(struct chk *c, int line, const char *path, const char *fmt, ...)
{
    char msg[POLICY_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    bt_diag_add(c->d, bt_yaml_name(c->doc), line, path, "%s", msg);
    c->errors++;
}

/* The line of obj[key] (or of obj when key is NULL). */
static int key_line(const struct chk *c, const json_t *obj, const char *key)
{
    return bt_yaml_key_line(c->doc, obj, key);
}

/* The line of a list item; true/false/null items have no line of their own,
 * so those fall back to the list's. */
static int item_line(const struct chk *c, const json_t *item, const json_t *obj, const char *key)
{
    int line = bt_yaml_line(c->doc, item);
    return line ? line : key_line(c, obj, key);
}

#define FAIL(c, obj, key, path, ...) chk_line((c), key_line((c), (obj), (key)), (path), __VA_ARGS__)

static const char *sub(char *buf, size_t n, const char *parent, const char *key)
{
    bt_fmt(buf, n, "%s.%s", parent, key);
    return buf;
}

/* obj[key], treating an explicit null (`key:` with nothing after it) as absent. */
static json_t *opt(const json_t *obj, const char *key)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    return json_is_null(v) ? NULL : v;
}

static void check_keys(struct chk *c, const json_t *obj, const char *path,
                       const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        bool known = false;
        for (size_t i = 0; allowed[i]; i++)
            if (strcmp(allowed[i], key) == 0)
                known = true;
        if (known)
            continue;
        /* Listing the known keys turns a typo ("enviroment") into a fix. */
        bt_buf b = BT_BUF_INIT(1024);
        for (size_t i = 0; allowed[i]; i++)
            bt_buf_printf(&b, "%s%s", i ? ", " : "", allowed[i]);
        char p[POLICY_PATH_MAX];
        FAIL(c, obj, key, sub(p, sizeof p, path, key), "unknown key (known keys: %s)", b.data);
        bt_buf_free(&b);
    }
}

static json_t *get_object(struct chk *c, const json_t *obj, const char *key, const char *path,
                          bool required)
{
    json_t *v = opt(obj, key);
    if (!v) {
        if (required)
            FAIL(c, obj, key, path, "required, missing");
        return NULL;
    }
    if (!json_is_object(v)) {
        FAIL(c, obj, key, path, "must be a mapping, found %s", bt_conf_type_name(v));
        return NULL;
    }
    return v;
}

static const char *get_string(struct chk *c, const json_t *obj, const char *key, const char *path,
                              bool required)
{
    json_t *v = opt(obj, key);
    if (!v) {
        if (required)
            FAIL(c, obj, key, path, "required, missing");
        return NULL;
    }
    if (!json_is_string(v) || json_string_length(v) == 0) {
        FAIL(c, obj, key, path, "must be a non-empty string, found %s", bt_conf_type_name(v));
        return NULL;
    }
    return json_string_value(v);
}

/* A whole number in [min, max]; true and *out set when present and valid. */
static bool get_int(struct chk *c, const json_t *obj, const char *key, const char *path, long min,
                    long max, long *out)
{
    json_t *v = opt(obj, key);
    if (!v)
        return false;
    if (!json_is_integer(v)) {
        FAIL(c, obj, key, path, "must be a whole number, found %s", bt_conf_type_name(v));
        return false;
    }
    json_int_t n = json_integer_value(v);
    if (n < min || n > max) {
        FAIL(c, obj, key, path, "must be between %ld and %ld, found %lld", min, max, (long long)n);
        return false;
    }
    *out = (long)n;
    return true;
}

/* The text a value compares as: strings as they are, whole numbers in
 * decimal (a port written 22 in YAML matches an input "22"). */
static const char *value_text(const json_t *v, char *buf, size_t n)
{
    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_integer(v)) {
        bt_fmt(buf, n, "%lld", (long long)json_integer_value(v));
        return buf;
    }
    return NULL;
}

/* A string or a list of strings (whole numbers too when allow_int), into out.
 * True when present and every item is valid. */
static bool get_strlist(struct chk *c, const json_t *obj, const char *key, const char *path,
                        bool allow_int, struct strlist *out)
{
    json_t *v = opt(obj, key);
    if (!v)
        return false;
    char num[32];
    if (json_is_string(v) || (allow_int && json_is_integer(v))) {
        const char *s = value_text(v, num, sizeof num);
        if (!*s) {
            FAIL(c, obj, key, path, "must not be empty");
            return false;
        }
        strlist_push(out, s);
        return true;
    }
    if (!json_is_array(v)) {
        FAIL(c, obj, key, path, "must be a string or a list of strings, found %s",
             bt_conf_type_name(v));
        return false;
    }
    if (json_array_size(v) == 0) {
        FAIL(c, obj, key, path, "must not be an empty list");
        return false;
    }
    bool ok = true;
    size_t i;
    json_t *item;
    json_array_foreach(v, i, item)
    {
        const char *s =
            allow_int || json_is_string(item) ? value_text(item, num, sizeof num) : NULL;
        if (!s || !*s) {
            chk_line(c, item_line(c, item, obj, key), path, "item %zu must be a %s, found %s", i,
                     allow_int ? "string or a whole number" : "non-empty string",
                     bt_conf_type_name(item));
            ok = false;
            continue;
        }
        if (!strlist_has(out, s, false))
            strlist_push(out, s);
    }
    return ok;
}

/* User and group names appear in chat messages and reasons: keep them plain. */
static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > POLICY_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool alnum =
            (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
        if (!alnum && (i == 0 || (ch != '.' && ch != '_' && ch != '-' && ch != '@')))
            return false;
    }
    return true;
}

/* ---- groups ---- */

static void parse_groups(struct chk *c, const json_t *root, bt_policy *p)
{
    json_t *groups = get_object(c, root, "groups", "groups", true);
    if (!groups)
        return;
    static const char *const keys[] = {"description", NULL};
    const char *name;
    json_t *g;
    json_object_foreach(groups, name, g)
    {
        char path[POLICY_PATH_MAX], p2[POLICY_PATH_MAX];
        sub(path, sizeof path, "groups", name);
        if (!name_ok(name))
            FAIL(c, groups, name, path,
                 "a group name is 1-64 letters, digits, '.', '_', '-' or '@', starting with a "
                 "letter or digit");
        if (g && !json_is_null(g) && !json_is_object(g)) {
            FAIL(c, groups, name, path, "must be a mapping ({description: ...}), found %s",
                 bt_conf_type_name(g));
        } else if (json_is_object(g)) {
            check_keys(c, g, path, keys);
            get_string(c, g, "description", sub(p2, sizeof p2, path, "description"), false);
        }
        strlist_push(&p->groups, name);
    }
}

/* ---- users ---- */

static void parse_user(struct chk *c, const json_t *users, const char *name, const json_t *u,
                       bt_policy *p)
{
    char path[POLICY_PATH_MAX], p2[POLICY_PATH_MAX];
    sub(path, sizeof path, "users", name);
    struct user *dst = &p->users[p->nusers++];
    dst->name = bt_strdup(name);
    dst->role = ROLE_VIEWER;
    if (!name_ok(name))
        FAIL(c, users, name, path,
             "a user name is 1-64 letters, digits, '.', '_', '-' or '@', starting with a letter "
             "or digit");
    if (!json_is_object(u)) {
        FAIL(c, users, name, path, "must be a mapping (role, groups, identities), found %s",
             bt_conf_type_name(u));
        return;
    }
    static const char *const keys[] = {"role", "groups", "identities", NULL};
    check_keys(c, u, path, keys);

    const char *role = get_string(c, u, "role", sub(p2, sizeof p2, path, "role"), true);
    if (role && !role_parse(role, &dst->role))
        FAIL(c, u, "role", p2, "unknown role '%s' (roles: viewer, operator, approver, admin)",
             role);

    sub(p2, sizeof p2, path, "groups");
    if (get_strlist(c, u, "groups", p2, false, &dst->groups))
        for (size_t i = 0; i < dst->groups.count; i++)
            if (!strlist_has(&p->groups, dst->groups.items[i], false))
                FAIL(c, u, "groups", p2, "unknown group '%s' (not under `groups:`)",
                     dst->groups.items[i]);

    json_t *ids = get_object(c, u, "identities", sub(p2, sizeof p2, path, "identities"), false);
    if (!ids)
        return;
    check_keys(c, ids, p2, platform_names);
    for (int k = 0; k < PLATFORM_COUNT; k++) {
        char p3[POLICY_PATH_MAX];
        const char *id =
            get_string(c, ids, platform_names[k], sub(p3, sizeof p3, p2, platform_names[k]), false);
        if (!id)
            continue;
        if (strlen(id) > POLICY_IDENTITY_MAX) {
            FAIL(c, ids, platform_names[k], p3, "longer than %d bytes", POLICY_IDENTITY_MAX);
            continue;
        }
        /* One identity, one person: otherwise a click could be credited to
         * either user, and "never the same person twice" means nothing. */
        for (size_t j = 0; j + 1 < p->nusers; j++)
            if (p->users[j].ids[k] && strcmp(p->users[j].ids[k], id) == 0)
                FAIL(c, ids, platform_names[k], p3, "identity '%s' on %s is already user %s's", id,
                     platform_names[k], p->users[j].name);
        dst->ids[k] = bt_strdup(id);
    }
}

static void parse_users(struct chk *c, const json_t *root, bt_policy *p)
{
    json_t *users = get_object(c, root, "users", "users", true);
    if (!users)
        return;
    p->users = bt_calloc(json_object_size(users) + 1, sizeof *p->users);
    const char *name;
    json_t *u;
    json_object_foreach(users, name, u)
    {
        parse_user(c, users, name, u, p);
    }
}

/* ---- policy ---- */

/* The tool names and input names tools.yaml declares, to catch a rule that
 * names a tool which does not exist: such a rule silently never matches, and
 * for a rule meant to demand approval that is a hole. Borrowed strings. */
struct tool_names {
    const json_t *tools;      /* tools.yaml `tools` list, or NULL: no check */
    const json_t *input_sets; /* tools.yaml `input_sets`, or NULL */
};

static bool tool_known(const struct tool_names *t, const char *name)
{
    size_t i;
    json_t *tool;
    json_array_foreach(t->tools, i, tool)
    {
        const char *n = json_string_value(json_object_get(tool, "name"));
        if (n && strcmp(n, name) == 0)
            return true;
    }
    return false;
}

static bool input_known(const struct tool_names *t, const char *name)
{
    size_t i;
    json_t *tool;
    json_array_foreach(t->tools, i, tool)
    {
        if (json_object_get(json_object_get(tool, "inputs"), name))
            return true;
    }
    const char *set;
    json_t *inputs;
    json_object_foreach((json_t *)t->input_sets, set, inputs)
    {
        if (json_object_get(inputs, name))
            return true;
    }
    return false;
}

/* A mapping from level ("1", "2", "3") to a whole number in [min, max]. */
static void parse_level_map(struct chk *c, const json_t *obj, const char *key, const char *parent,
                            long min, long max, int out[POLICY_MAX_LEVEL + 1])
{
    char path[POLICY_PATH_MAX];
    json_t *m = get_object(c, obj, key, sub(path, sizeof path, parent, key), false);
    if (!m)
        return;
    const char *lk;
    json_t *v;
    json_object_foreach(m, lk, v)
    {
        char p2[POLICY_PATH_MAX];
        long level = 0, n = 0;
        sub(p2, sizeof p2, path, lk);
        if (!bt_parse_long(lk, 1, POLICY_MAX_LEVEL, &level)) {
            FAIL(c, m, lk, p2, "unknown level '%s' (levels that need approval: 1, 2, 3)", lk);
            continue;
        }
        if (get_int(c, m, lk, p2, min, max, &n))
            out[level] = (int)n;
        else if (!v || json_is_null(v))
            FAIL(c, m, lk, p2, "required, missing");
    }
}

static int get_risk(struct chk *c, const json_t *obj, const char *key, const char *path)
{
    const char *s = get_string(c, obj, key, path, false);
    enum bt_risk r;
    if (!s)
        return -1;
    if (!bt_risk_parse(s, &r)) {
        FAIL(c, obj, key, path, "unknown risk '%s' (risks: low, medium, high, critical)", s);
        return -1;
    }
    return (int)r;
}

static void check_groups_known(struct chk *c, const bt_policy *p, const json_t *obj,
                               const char *key, const char *path, const struct strlist *l)
{
    for (size_t i = 0; i < l->count; i++)
        if (!strlist_has(&p->groups, l->items[i], false))
            FAIL(c, obj, key, path, "unknown group '%s' (not under `groups:`)", l->items[i]);
}

static void parse_match(struct chk *c, const json_t *m, const char *path, const bt_policy *p,
                        const struct tool_names *tn, struct rule *r)
{
    static const char *const keys[] = {
        "intent",          "tool",     "environment", "inputs",      "requester_role",
        "requester_group", "min_risk", "max_risk",    "min_targets", NULL};
    char p2[POLICY_PATH_MAX];
    check_keys(c, m, path, keys);
    get_strlist(c, m, "intent", sub(p2, sizeof p2, path, "intent"), false, &r->intents);
    if (get_strlist(c, m, "tool", sub(p2, sizeof p2, path, "tool"), false, &r->tools) && tn->tools)
        for (size_t i = 0; i < r->tools.count; i++)
            if (!tool_known(tn, r->tools.items[i]))
                FAIL(c, m, "tool", p2, "'%s' is not a tool in tools.yaml", r->tools.items[i]);
    get_strlist(c, m, "environment", sub(p2, sizeof p2, path, "environment"), false,
                &r->environments);

    struct strlist roles = {0};
    if (get_strlist(c, m, "requester_role", sub(p2, sizeof p2, path, "requester_role"), false,
                    &roles))
        for (size_t i = 0; i < roles.count; i++) {
            enum role role;
            if (role_parse(roles.items[i], &role))
                r->requester_roles |= 1u << role;
            else
                FAIL(c, m, "requester_role", p2,
                     "unknown role '%s' (roles: viewer, operator, approver, admin)",
                     roles.items[i]);
        }
    strlist_free(&roles);
    if (get_strlist(c, m, "requester_group", sub(p2, sizeof p2, path, "requester_group"), false,
                    &r->requester_groups))
        check_groups_known(c, p, m, "requester_group", p2, &r->requester_groups);

    r->min_risk = get_risk(c, m, "min_risk", sub(p2, sizeof p2, path, "min_risk"));
    r->max_risk = get_risk(c, m, "max_risk", sub(p2, sizeof p2, path, "max_risk"));
    if (r->min_risk >= 0 && r->max_risk >= 0 && r->min_risk > r->max_risk)
        FAIL(c, m, "max_risk", p2, "below min_risk: the rule can never match");
    get_int(c, m, "min_targets", sub(p2, sizeof p2, path, "min_targets"), 1, 100000,
            &r->min_targets);

    json_t *inputs = get_object(c, m, "inputs", sub(p2, sizeof p2, path, "inputs"), false);
    if (!inputs)
        return;
    r->inputs = bt_calloc(json_object_size(inputs) + 1, sizeof *r->inputs);
    const char *in;
    json_t *vals;
    json_object_foreach(inputs, in, vals)
    {
        char p3[POLICY_PATH_MAX];
        sub(p3, sizeof p3, p2, in);
        if (tn->tools && !input_known(tn, in))
            FAIL(c, inputs, in, p3, "no tool in tools.yaml has an input '%s'", in);
        struct input_match *im = &r->inputs[r->ninputs];
        if (!get_strlist(c, inputs, in, p3, true, &im->values)) {
            if (!vals || json_is_null(vals))
                FAIL(c, inputs, in, p3, "required, missing (the values that match)");
            strlist_free(&im->values);
            continue;
        }
        im->name = bt_strdup(in);
        r->ninputs++;
    }
}

static void parse_rule(struct chk *c, const json_t *rules, size_t index, const json_t *rj,
                       bt_policy *p, const struct tool_names *tn)
{
    char path[POLICY_PATH_MAX], p2[POLICY_PATH_MAX];
    bt_fmt(path, sizeof path, "policy.rules[%zu]", index);
    struct rule *r = &p->rules[p->nrules++];
    r->level = r->min_risk = r->max_risk = -1;
    if (!json_is_object(rj)) {
        r->name = bt_strdup("(not a mapping)");
        chk_line(c, item_line(c, rj, rules, NULL), path, "must be a mapping, found %s",
                 bt_conf_type_name(rj));
        return;
    }
    static const char *const keys[] = {
        "name",           "match", "level", "approvals_required", "approver_groups",
        "expiry_minutes", "deny",  NULL};
    check_keys(c, rj, path, keys);

    const char *name = get_string(c, rj, "name", sub(p2, sizeof p2, path, "name"), true);
    r->name = bt_strdup(name ? name : "(unnamed)");
    for (size_t i = 0; name && i + 1 < p->nrules; i++)
        if (strcmp(p->rules[i].name, name) == 0)
            FAIL(c, rj, "name", p2, "another rule is already called '%s'", name);

    /* No `match` means every plan: legitimate for a blanket setting such as
     * a shorter expiry, and a misspelt `match` is caught as an unknown key. */
    json_t *m = get_object(c, rj, "match", sub(p2, sizeof p2, path, "match"), false);
    if (m)
        parse_match(c, m, p2, p, tn, r);

    long n = 0;
    if (get_int(c, rj, "level", sub(p2, sizeof p2, path, "level"), 0, POLICY_MAX_LEVEL, &n))
        r->level = (int)n;
    if (get_int(c, rj, "approvals_required", sub(p2, sizeof p2, path, "approvals_required"), 1,
                POLICY_MAX_APPROVERS, &n))
        r->approvals = (int)n;
    if (get_strlist(c, rj, "approver_groups", sub(p2, sizeof p2, path, "approver_groups"), false,
                    &r->approver_groups)) {
        r->has_groups = true;
        check_groups_known(c, p, rj, "approver_groups", p2, &r->approver_groups);
    }
    if (get_int(c, rj, "expiry_minutes", sub(p2, sizeof p2, path, "expiry_minutes"), 1,
                POLICY_MAX_MINUTES, &n))
        r->expiry_minutes = (int)n;
    const char *deny = get_string(c, rj, "deny", sub(p2, sizeof p2, path, "deny"), false);
    if (deny)
        r->deny = bt_strdup(deny);

    bool effect = opt(rj, "level") || opt(rj, "approvals_required") || opt(rj, "approver_groups") ||
                  opt(rj, "expiry_minutes");
    if (opt(rj, "deny") && effect)
        FAIL(c, rj, "deny", p2,
             "a deny rule refuses the request: it cannot also set level, approvals_required, "
             "approver_groups or expiry_minutes");
    else if (!opt(rj, "deny") && !effect)
        FAIL(c, rj, NULL, path,
             "the rule does nothing: give it a level, approvals_required, approver_groups, "
             "expiry_minutes or deny");
}

static void parse_raise(struct chk *c, const json_t *pol, bt_policy *p)
{
    char p2[POLICY_PATH_MAX];
    json_t *raise = get_object(c, pol, "raise", "policy.raise", false);
    if (!raise)
        return;
    static const char *const keys[] = {"production", "many_targets", NULL};
    check_keys(c, raise, "policy.raise", keys);
    long n = 0;

    json_t *prod = get_object(c, raise, "production", "policy.raise.production", false);
    if (prod) {
        static const char *const pkeys[] = {"environments", "by", NULL};
        check_keys(c, prod, "policy.raise.production", pkeys);
        struct strlist envs = {0};
        if (get_strlist(c, prod, "environments",
                        sub(p2, sizeof p2, "policy.raise.production", "environments"), false,
                        &envs)) {
            strlist_free(&p->production_environments);
            p->production_environments = envs;
        } else {
            strlist_free(&envs);
        }
        if (get_int(c, prod, "by", sub(p2, sizeof p2, "policy.raise.production", "by"), 0,
                    POLICY_MAX_LEVEL, &n))
            p->production_by = (int)n;
    }

    json_t *many = get_object(c, raise, "many_targets", "policy.raise.many_targets", false);
    if (many) {
        static const char *const mkeys[] = {"threshold", "by", NULL};
        check_keys(c, many, "policy.raise.many_targets", mkeys);
        if (get_int(c, many, "threshold",
                    sub(p2, sizeof p2, "policy.raise.many_targets", "threshold"), 2, 100000, &n))
            p->many_threshold = n;
        if (get_int(c, many, "by", sub(p2, sizeof p2, "policy.raise.many_targets", "by"), 0,
                    POLICY_MAX_LEVEL, &n))
            p->many_by = (int)n;
    }
}

static void parse_levels(struct chk *c, const json_t *pol, bt_policy *p)
{
    json_t *levels = get_object(c, pol, "levels", "policy.levels", false);
    if (!levels)
        return;
    static const char *const keys[] = {"low", "medium", "high", "critical", NULL};
    check_keys(c, levels, "policy.levels", keys);
    for (int r = BT_RISK_LOW; r <= BT_RISK_CRITICAL; r++) {
        char p2[POLICY_PATH_MAX];
        const char *rn = bt_risk_name((enum bt_risk)r);
        long n = 0;
        if (get_int(c, levels, rn, sub(p2, sizeof p2, "policy.levels", rn), 0, POLICY_MAX_LEVEL,
                    &n))
            p->levels[r] = (int)n;
    }
    /* The floor makes critical 3 whatever this says; a config that claims
     * otherwise would mislead whoever reads it. */
    if (p->levels[BT_RISK_CRITICAL] != POLICY_MAX_LEVEL)
        FAIL(c, levels, "critical", "policy.levels.critical",
             "must be 3: a critical plan is always approved step by step");
    for (int r = BT_RISK_MEDIUM; r <= BT_RISK_CRITICAL; r++)
        if (p->levels[r] < p->levels[r - 1]) {
            char p2[POLICY_PATH_MAX];
            const char *rn = bt_risk_name((enum bt_risk)r);
            FAIL(c, levels, rn, sub(p2, sizeof p2, "policy.levels", rn),
                 "level %d is below %s's level %d: a riskier plan may not need less approval",
                 p->levels[r], bt_risk_name((enum bt_risk)(r - 1)), p->levels[r - 1]);
        }
}

static void parse_policy(struct chk *c, const json_t *root, bt_policy *p,
                         const struct tool_names *tn)
{
    json_t *pol = get_object(c, root, "policy", "policy", true);
    if (!pol)
        return;
    static const char *const keys[] = {"levels",          "raise",          "approvers",
                                       "approver_groups", "expiry_minutes", "remind_minutes",
                                       "escalate",        "rules",          NULL};
    check_keys(c, pol, "policy", keys);
    parse_levels(c, pol, p);
    parse_raise(c, pol, p);

    parse_level_map(c, pol, "approvers", "policy", 1, POLICY_MAX_APPROVERS, p->approvers);
    if (p->approvers[3] < 2)
        FAIL(c, pol, "approvers", "policy.approvers.3",
             "must be at least 2: level 3 needs two distinct approvers");
    parse_level_map(c, pol, "expiry_minutes", "policy", 1, POLICY_MAX_MINUTES, p->expiry_minutes);
    parse_level_map(c, pol, "remind_minutes", "policy", 1, POLICY_MAX_MINUTES, p->remind_minutes);

    if (get_strlist(c, pol, "approver_groups", "policy.approver_groups", false,
                    &p->approver_groups))
        check_groups_known(c, p, pol, "approver_groups", "policy.approver_groups",
                           &p->approver_groups);
    else if (!opt(pol, "approver_groups"))
        FAIL(c, pol, "approver_groups", "policy.approver_groups",
             "required, missing (the groups whose approvers may approve)");

    json_t *esc = get_object(c, pol, "escalate", "policy.escalate", false);
    if (esc) {
        static const char *const ekeys[] = {"after_minutes", "to", NULL};
        check_keys(c, esc, "policy.escalate", ekeys);
        parse_level_map(c, esc, "after_minutes", "policy.escalate", 1, POLICY_MAX_MINUTES,
                        p->escalate_minutes);
        const char *to = get_string(c, esc, "to", "policy.escalate.to", true);
        if (to && !strlist_has(&p->groups, to, false))
            FAIL(c, esc, "to", "policy.escalate.to", "unknown group '%s' (not under `groups:`)",
                 to);
        else if (to)
            p->escalate_to = bt_strdup(to);
    }
    /* A reminder or an escalation at or after the expiry would never fire:
     * that is a mistake in the numbers, not a way to switch them off. */
    for (int l = 1; l <= POLICY_MAX_LEVEL; l++) {
        char lk[4], p2[POLICY_PATH_MAX];
        bt_fmt(lk, sizeof lk, "%d", l);
        if (p->remind_minutes[l] >= p->expiry_minutes[l]) {
            bt_fmt(p2, sizeof p2, "policy.remind_minutes.%d", l);
            FAIL(c, opt(pol, "remind_minutes"), lk, p2,
                 "%d minutes is not before the level %d expiry (%d minutes): it would never fire",
                 p->remind_minutes[l], l, p->expiry_minutes[l]);
        }
        if (p->escalate_minutes[l] >= p->expiry_minutes[l]) {
            bt_fmt(p2, sizeof p2, "policy.escalate.after_minutes.%d", l);
            FAIL(c, opt(esc, "after_minutes"), lk, p2,
                 "%d minutes is not before the level %d expiry (%d minutes): it would never fire",
                 p->escalate_minutes[l], l, p->expiry_minutes[l]);
        }
    }

    json_t *rules = opt(pol, "rules");
    if (rules && !json_is_array(rules)) {
        FAIL(c, pol, "rules", "policy.rules", "must be a list, found %s", bt_conf_type_name(rules));
        return;
    }
    p->rules = bt_calloc(json_array_size(rules) + 1, sizeof *p->rules);
    size_t i;
    json_t *rj;
    json_array_foreach(rules, i, rj)
    {
        parse_rule(c, rules, i, rj, p, tn);
    }
}

/* `cli` is checked here because it names a user; the CLI reads it with
 * bt_config_get(cfg, "cli.default_user"). */
static void parse_cli(struct chk *c, const json_t *root, const bt_policy *p)
{
    json_t *cli = get_object(c, root, "cli", "cli", false);
    if (!cli)
        return;
    static const char *const keys[] = {"default_user", NULL};
    check_keys(c, cli, "cli", keys);
    const char *u = get_string(c, cli, "default_user", "cli.default_user", false);
    if (u && !find_user(p, u))
        FAIL(c, cli, "default_user", "cli.default_user", "'%s' is not a configured user", u);
}

/* Users who could approve for groups at level >= 2 (approver or admin role,
 * member of one of the groups). */
static size_t count_approvers(const bt_policy *p, const struct strlist *groups)
{
    size_t n = 0;
    for (size_t i = 0; i < p->nusers; i++) {
        const struct user *u = &p->users[i];
        if (u->role != ROLE_APPROVER && u->role != ROLE_ADMIN)
            continue;
        for (size_t g = 0; g < groups->count; g++)
            if (strlist_has(&u->groups, groups->items[g], false)) {
                n++;
                break;
            }
    }
    return n;
}

/* A requirement for more approvers than the groups hold can never be met:
 * every such approval would sit until it expired. At level 1 the requester
 * counts too, so one fewer approver is enough there. */
static void check_satisfiable(struct chk *c, const json_t *root, const bt_policy *p)
{
    const json_t *pol = opt(root, "policy");
    const json_t *approvers = opt(pol, "approvers");
    for (int l = 1; l <= POLICY_MAX_LEVEL; l++) {
        size_t have = count_approvers(p, &p->approver_groups) + (l == 1 ? 1 : 0);
        if ((size_t)p->approvers[l] <= have)
            continue;
        char lk[4], p2[POLICY_PATH_MAX];
        bt_fmt(lk, sizeof lk, "%d", l);
        bt_fmt(p2, sizeof p2, "policy.approvers.%d", l);
        /* Point at the number when it is written, else at the groups. */
        bool written = json_object_get(approvers, lk) != NULL;
        FAIL(c, written ? approvers : pol, written ? lk : "approver_groups", p2,
             "level %d needs %d approvers but only %zu users in the approver groups have the "
             "approver or admin role",
             l, p->approvers[l], have);
    }
    const json_t *rules = opt(pol, "rules");
    for (size_t i = 0; i < p->nrules; i++) {
        const struct rule *r = &p->rules[i];
        const json_t *rj = json_array_get(rules, i);
        if (r->deny || (!r->approvals && !r->has_groups))
            continue;
        int need = r->approvals;
        if (r->level >= 1 && p->approvers[r->level] > need)
            need = p->approvers[r->level];
        if (need == 0)
            need = 1;
        const struct strlist *groups = r->has_groups ? &r->approver_groups : &p->approver_groups;
        size_t have = count_approvers(p, groups) + (r->level == 1 ? 1 : 0);
        if ((size_t)need > have) {
            char p2[POLICY_PATH_MAX];
            const char *key = r->approvals ? "approvals_required" : "approver_groups";
            bt_fmt(p2, sizeof p2, "policy.rules[%zu].%s", i, key);
            FAIL(c, rj, key, p2,
                 "rule '%s' needs %d approvers but only %zu users in its approver groups have the "
                 "approver or admin role",
                 r->name, need, have);
        }
    }
}

bt_policy *bt_policy_new(const bt_config *cfg, bt_diag *d)
{
    const bt_yaml_doc *doc = cfg ? bt_config_main(cfg) : NULL;
    if (!doc) {
        bt_diag_add(d, "baton.yaml", 0, "policy", "baton.yaml could not be read: no policy");
        return NULL;
    }
    struct chk c = {d, doc, 0};
    const json_t *root = bt_yaml_root(doc);
    bt_policy *p = bt_calloc(1, sizeof *p);
    /* Defaults: the table in docs/approvals.md. */
    const int levels[] = {0, 1, 2, 3}, approvers[] = {0, 1, 1, 2}, expiry[] = {0, 5, 15, 30};
    memcpy(p->levels, levels, sizeof levels);
    memcpy(p->approvers, approvers, sizeof approvers);
    memcpy(p->expiry_minutes, expiry, sizeof expiry);
    strlist_push(&p->production_environments, "production");
    p->production_by = 1;
    p->many_threshold = 5;
    p->many_by = 1;

    const bt_yaml_doc *tools_doc = bt_config_tools(cfg);
    struct tool_names tn = {NULL, NULL};
    if (tools_doc && json_is_array(json_object_get(bt_yaml_root(tools_doc), "tools"))) {
        tn.tools = json_object_get(bt_yaml_root(tools_doc), "tools");
        tn.input_sets = json_object_get(bt_yaml_root(tools_doc), "input_sets");
    }

    /* Groups first: users and rules refer to them; users before policy and
     * cli, which refer to users. */
    parse_groups(&c, root, p);
    parse_users(&c, root, p);
    parse_policy(&c, root, p, &tn);
    parse_cli(&c, root, p);
    if (c.errors == 0)
        check_satisfiable(&c, root, p);
    if (c.errors) {
        bt_policy_free(p);
        return NULL;
    }
    return p;
}

/* ---- evaluation ------------------------------------------------------------ */

struct plan_step {
    const char *tool;
    const json_t *inputs;
    bool read_only;
};

struct plan_target {
    const char *name; /* NULL when the plan gave only an environment */
    const char *env;  /* NULL when unknown */
};

/* The parts of a plan the rules look at, borrowed from the plan object. */
struct plan_view {
    const char *intent;
    enum bt_risk risk;
    struct plan_step *steps;
    size_t nsteps;
    struct plan_target *targets;
    size_t ntargets;
    size_t distinct_names;
};

static bool same_text(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcasecmp(a, b) == 0);
}

/* Record one (name, environment) pair. The same host may appear in
 * `targets` and again in a step, possibly without its environment there: the
 * entries are merged by name so a missing environment does not count as a
 * second, unknown one. */
static void add_target(struct plan_view *v, const char *name, const char *env)
{
    if (!name && !env)
        return;
    struct plan_target *named = NULL;
    for (size_t i = 0; i < v->ntargets; i++) {
        struct plan_target *t = &v->targets[i];
        if (same_text(t->name, name) && same_text(t->env, env))
            return;
        if (name && !named && same_text(t->name, name))
            named = t;
    }
    if (named && !env)
        return;
    if (named && !named->env) {
        named->env = env;
        return;
    }
    /* A new pair; a name already seen in another environment is not
     * counted again. The array has room: one entry per call at most. */
    v->targets[v->ntargets].name = name;
    v->targets[v->ntargets].env = env;
    v->ntargets++;
    if (name && !named)
        v->distinct_names++;
}

static void add_reason(json_t *reasons, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_reason(json_t *reasons, const char *fmt, ...)
{
    char msg[POLICY_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *s = json_string(msg);
    /* A truncated multi-byte character would make the string invalid UTF-8;
     * the reason is still worth keeping in a shorter form. */
    json_array_append_new(reasons, s ? s : json_string("(reason not representable)"));
}

/* Raise *risk to v's risk; a missing or unknown risk counts as critical,
 * because an unlabelled change must not slip through unapproved. */
static void note_risk(enum bt_risk *risk, const json_t *v, const char *what, json_t *reasons)
{
    enum bt_risk r;
    if (bt_risk_parse(json_string_value(v), &r)) {
        if (r > *risk)
            *risk = r;
        return;
    }
    if (json_is_string(v))
        add_reason(reasons, "%s has unknown risk '%s': treated as critical", what,
                   json_string_value(v));
    else
        add_reason(reasons, "%s states no risk: treated as critical", what);
    *risk = BT_RISK_CRITICAL;
}

static void plan_view_build(struct plan_view *v, const json_t *plan, json_t *reasons)
{
    memset(v, 0, sizeof *v);
    v->intent = json_string_value(json_object_get(plan, "intent"));
    const json_t *steps = json_object_get(plan, "steps");
    const json_t *targets = json_object_get(plan, "targets");
    size_t nsteps = json_array_size(steps);
    v->steps = bt_calloc(nsteps + 1, sizeof *v->steps);
    v->targets = bt_calloc(nsteps + json_array_size(targets) + 1, sizeof *v->targets);

    const json_t *prisk = json_object_get(plan, "risk");
    v->risk = BT_RISK_LOW;
    if (prisk || nsteps == 0)
        note_risk(&v->risk, prisk, "the plan", reasons);

    size_t i;
    json_t *t;
    json_array_foreach(targets, i, t)
    {
        if (json_is_string(t))
            add_target(v, json_string_value(t), NULL);
        else
            add_target(v, json_string_value(json_object_get(t, "name")),
                       json_string_value(json_object_get(t, "environment")));
    }
    json_t *s;
    json_array_foreach(steps, i, s)
    {
        struct plan_step *st = &v->steps[v->nsteps++];
        st->tool = json_string_value(json_object_get(s, "tool"));
        st->inputs = json_object_get(s, "inputs");
        /* Only an explicit true makes a step read-only: a step that does not
         * say is treated as a change. */
        st->read_only = json_is_true(json_object_get(s, "read_only"));
        char what[POLICY_NAME_MAX + 32];
        bt_fmt(what, sizeof what, "step %zu (%s)", i, st->tool ? st->tool : "no tool");
        note_risk(&v->risk, json_object_get(s, "risk"), what, reasons);
        add_target(v, json_string_value(json_object_get(s, "target")),
                   json_string_value(json_object_get(s, "environment")));
    }
}

static void plan_view_free(struct plan_view *v)
{
    free(v->steps);
    free(v->targets);
}

/* The first target in a production environment, and how many there are. */
static const struct plan_target *production_target(const bt_policy *p, const struct plan_view *v,
                                                   size_t *count)
{
    const struct plan_target *first = NULL;
    *count = 0;
    for (size_t i = 0; i < v->ntargets; i++)
        if (strlist_has(&p->production_environments, v->targets[i].env, true)) {
            if (!first)
                first = &v->targets[i];
            (*count)++;
        }
    return first;
}

static bool step_inputs_match(const struct rule *r, const struct plan_step *s)
{
    for (size_t i = 0; i < r->ninputs; i++) {
        char num[32];
        const char *text =
            value_text(json_object_get(s->inputs, r->inputs[i].name), num, sizeof num);
        if (!strlist_has(&r->inputs[i].values, text, true))
            return false;
    }
    return true;
}

/*
 * How the per-step and per-target conditions (tool, environment, inputs) are
 * read depends on what the rule would do:
 *
 *   MATCH_ANY  the rule raises the level or sets something else: one step,
 *              one target is enough. "A drop on a database is level 3" must
 *              catch a plan with one drop among ten other steps.
 *   MATCH_ALL  the rule would LOWER the level below the base: every step that
 *              changes something (read-only steps change nothing) and every
 *              target must satisfy the condition, and there must be at least
 *              one. "Restart nginx on staging without approval" must not waive
 *              approval for a plan that also restarts postgresql, or that
 *              also touches a host in another environment or one whose
 *              environment is unknown.
 *
 * The plan-wide conditions (intent, requester, risk bounds, min_targets) read
 * the same either way.
 */
enum match_mode { MATCH_ANY, MATCH_ALL };

static bool rule_matches(const struct rule *r, const struct plan_view *v, const struct user *ru,
                         enum role role, enum match_mode mode)
{
    if (r->intents.count && !strlist_has(&r->intents, v->intent, false))
        return false;
    if (r->requester_roles && !(r->requester_roles & (1u << role)))
        return false;
    if (r->requester_groups.count) {
        bool in = false;
        for (size_t g = 0; ru && g < ru->groups.count; g++)
            if (strlist_has(&r->requester_groups, ru->groups.items[g], false))
                in = true;
        if (!in)
            return false;
    }
    if (r->min_risk >= 0 && (int)v->risk < r->min_risk)
        return false;
    if (r->max_risk >= 0 && (int)v->risk > r->max_risk)
        return false;
    if (r->min_targets > 0 && v->distinct_names < (size_t)r->min_targets)
        return false;

    if (r->tools.count || r->ninputs) {
        size_t considered = 0, tool_hits = 0, input_hits = 0;
        for (size_t i = 0; i < v->nsteps; i++) {
            const struct plan_step *s = &v->steps[i];
            if (mode == MATCH_ALL && s->read_only)
                continue;
            considered++;
            if (!r->tools.count || strlist_has(&r->tools, s->tool, false))
                tool_hits++;
            if (!r->ninputs || step_inputs_match(r, s))
                input_hits++;
        }
        if (mode == MATCH_ANY && (tool_hits == 0 || input_hits == 0))
            return false;
        if (mode == MATCH_ALL &&
            (considered == 0 || tool_hits != considered || input_hits != considered))
            return false;
    }
    if (r->environments.count) {
        size_t hits = 0;
        for (size_t i = 0; i < v->ntargets; i++)
            if (strlist_has(&r->environments, v->targets[i].env, true))
                hits++;
        if (mode == MATCH_ANY && hits == 0)
            return false;
        if (mode == MATCH_ALL && (v->ntargets == 0 || hits != v->ntargets))
            return false;
    }
    return true;
}

/* Approver groups a requirement names: borrowed strings. */
struct group_set {
    const char **names;
    size_t count;
};

static bool group_set_has(const struct group_set *gs, const char *name)
{
    for (size_t i = 0; i < gs->count; i++)
        if (strcmp(gs->names[i], name) == 0)
            return true;
    return false;
}

static void say(char *reason, size_t reasonlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void say(char *reason, size_t reasonlen, const char *fmt, ...)
{
    if (!reason || !reasonlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(reason, reasonlen, fmt, ap);
    va_end(ap);
}

/* The one place that says who may decide at a level. Both
 * bt_policy_may_decide and the "could this ever be approved" count in
 * bt_policy_evaluate use it, so the two can never disagree. */
static bool decider_check(const bt_policy *p, int level, const struct group_set *groups,
                          const char *requester, const char *user, char *reason, size_t reasonlen)
{
    if (level <= 0) {
        say(reason, reasonlen, "no approval is needed at level 0: the plan runs at once");
        return false;
    }
    const struct user *u = find_user(p, user);
    if (!u) {
        say(reason, reasonlen, "%s is not a configured user", user ? user : "an anonymous user");
        return false;
    }
    if (u->role == ROLE_VIEWER) {
        say(reason, reasonlen, "%s is a viewer and may not approve", u->name);
        return false;
    }
    if (requester && strcmp(requester, u->name) == 0) {
        /* Level 1 is a confirmation: the requester saying "yes, I meant
         * that" is the point. From level 2 on a second pair of eyes is. */
        if (level == 1)
            return true;
        say(reason, reasonlen, "%s may not approve their own request at level %d", u->name, level);
        return false;
    }
    if (u->role != ROLE_APPROVER && u->role != ROLE_ADMIN) {
        say(reason, reasonlen, "%s is an %s: approving needs the approver or admin role", u->name,
            role_names[u->role]);
        return false;
    }
    for (size_t g = 0; g < u->groups.count; g++)
        if (group_set_has(groups, u->groups.items[g]))
            return true;
    bt_buf b = BT_BUF_INIT(1024);
    for (size_t g = 0; g < groups->count; g++)
        bt_buf_printf(&b, "%s%s", g ? ", " : "", groups->names[g]);
    say(reason, reasonlen, "%s is not in an approver group (%s)", u->name, b.len ? b.data : "none");
    bt_buf_free(&b);
    return false;
}

static void join_groups(bt_buf *b, const struct group_set *gs)
{
    for (size_t i = 0; i < gs->count; i++)
        bt_buf_printf(b, "%s%s", i ? ", " : "", gs->names[i]);
}

/* The answer for something that is not a plan: refuse, never wave through. */
static json_t *refuse_non_plan(void)
{
    json_t *res = json_object();
    json_object_set_new(res, "level", json_integer(POLICY_MAX_LEVEL));
    json_object_set_new(res, "risk", json_string("critical"));
    json_object_set_new(res, "reasons", json_pack("[s]", "not a plan"));
    json_object_set_new(res, "approvals_required", json_integer(0));
    json_object_set_new(res, "approver_groups", json_array());
    json_object_set_new(res, "requester_may_approve", json_false());
    json_object_set_new(res, "expires_s", json_integer(0));
    json_object_set_new(res, "remind_s", json_integer(0));
    json_object_set_new(res, "escalate_s", json_integer(0));
    json_object_set_new(res, "escalate_to", json_null());
    json_object_set_new(res, "allowed", json_false());
    json_object_set_new(res, "denied_reason", json_string("not a plan"));
    json_object_set_new(res, "rule", json_null());
    return res;
}

/* What the matching rules contributed (step 3 of the header comment). */
struct rule_outcome {
    int level; /* -1: no matching rule names a level */
    const struct rule *level_rule;
    const struct rule *deny_rule;
    int approvals;      /* 0: none */
    int expiry_minutes; /* 0: none */
    bool groups_set;
    struct group_set groups;        /* intersection of the rules' approver groups */
    const struct rule *groups_rule; /* the first rule that named groups */
};

static void apply_rules(const bt_policy *p, const struct plan_view *v, const struct user *ru,
                        enum role role, int base, struct rule_outcome *o, json_t *reasons)
{
    memset(o, 0, sizeof *o);
    o->level = -1;
    for (size_t i = 0; i < p->nrules; i++) {
        const struct rule *r = &p->rules[i];
        enum match_mode mode = r->level >= 0 && r->level < base ? MATCH_ALL : MATCH_ANY;
        if (!rule_matches(r, v, ru, role, mode))
            continue;
        if (r->deny) {
            if (!o->deny_rule)
                o->deny_rule = r;
            add_reason(reasons, "rule '%s': denied", r->name);
            continue;
        }
        if (r->level >= 0) {
            add_reason(reasons, "rule '%s': level %d", r->name, r->level);
            if (r->level > o->level) {
                o->level = r->level;
                o->level_rule = r;
            }
        }
        if (r->approvals) {
            add_reason(reasons, "rule '%s': %d approver%s", r->name, r->approvals,
                       r->approvals == 1 ? "" : "s");
            if (r->approvals > o->approvals)
                o->approvals = r->approvals;
        }
        if (r->expiry_minutes) {
            add_reason(reasons, "rule '%s': expires after %d minutes", r->name, r->expiry_minutes);
            if (!o->expiry_minutes || r->expiry_minutes < o->expiry_minutes)
                o->expiry_minutes = r->expiry_minutes;
        }
        if (r->has_groups) {
            /* Each rule says "only these groups"; when two rules say it, only
             * groups both allow satisfy both. */
            if (!o->groups_set) {
                o->groups_set = true;
                o->groups_rule = r;
                o->groups.names = bt_calloc(r->approver_groups.count + 1, sizeof(char *));
                for (size_t g = 0; g < r->approver_groups.count; g++)
                    o->groups.names[o->groups.count++] = r->approver_groups.items[g];
            } else {
                size_t kept = 0;
                for (size_t g = 0; g < o->groups.count; g++)
                    if (strlist_has(&r->approver_groups, o->groups.names[g], false))
                        o->groups.names[kept++] = o->groups.names[g];
                o->groups.count = kept;
            }
            bt_buf b = BT_BUF_INIT(1024);
            for (size_t g = 0; g < r->approver_groups.count; g++)
                bt_buf_printf(&b, "%s%s", g ? ", " : "", r->approver_groups.items[g]);
            add_reason(reasons, "rule '%s': approvers from %s", r->name, b.data);
            bt_buf_free(&b);
        }
    }
}

json_t *bt_policy_evaluate(const bt_policy *p, const json_t *plan, const char *requester)
{
    if (!p || !json_is_object(plan))
        return refuse_non_plan();
    json_t *reasons = json_array();
    struct plan_view v;
    plan_view_build(&v, plan, reasons);

    const struct user *ru = find_user(p, requester);
    /* Anyone baton cannot name is treated as a viewer by the rules: the
     * shipped "viewers may only read" rule then covers them too. */
    enum role role = ru ? ru->role : ROLE_VIEWER;
    if (!ru)
        add_reason(reasons, "%s is not a configured user: treated as a viewer",
                   requester ? requester : "an anonymous requester");

    /* 2. base level and raises */
    int base = p->levels[v.risk];
    add_reason(reasons, "risk %s \u2192 level %d", bt_risk_name(v.risk), base);
    size_t nprod = 0;
    const struct plan_target *prod = production_target(p, &v, &nprod);
    const char *prod_name = prod && prod->name ? prod->name : "(unnamed)";
    if (v.risk >= BT_RISK_MEDIUM) {
        if (prod && p->production_by) {
            base += p->production_by;
            if (nprod > 1)
                add_reason(reasons, "production target %s (and %zu more): +%d", prod_name,
                           nprod - 1, p->production_by);
            else
                add_reason(reasons, "production target %s: +%d", prod_name, p->production_by);
        }
        if (p->many_by && v.distinct_names >= (size_t)p->many_threshold) {
            base += p->many_by;
            add_reason(reasons, "%zu targets (%ld or more): +%d", v.distinct_names,
                       p->many_threshold, p->many_by);
        }
        if (base > POLICY_MAX_LEVEL) {
            base = POLICY_MAX_LEVEL;
            add_reason(reasons, "at most level 3");
        }
    }

    /* 3. rules */
    struct rule_outcome o;
    apply_rules(p, &v, ru, role, base, &o, reasons);
    int level = o.level >= 0 ? o.level : base;

    /* 4. floors: safety that configuration cannot switch off */
    bool floored = false;
    if (v.risk == BT_RISK_CRITICAL && level < 3) {
        level = 3;
        floored = true;
        add_reason(reasons, "floor: a critical plan is always level 3");
    }
    if (v.risk >= BT_RISK_MEDIUM && prod && level < 2) {
        level = 2;
        floored = true;
        add_reason(reasons,
                   "floor: a change on production target %s always needs an approver "
                   "(level 2)",
                   prod_name);
    }

    /* 5. who, how many, how long */
    struct group_set groups = {NULL, 0};
    if (o.groups_set)
        groups = o.groups;
    else {
        groups.names = (const char **)p->approver_groups.items;
        groups.count = p->approver_groups.count;
    }
    int approvals = 0, expiry_min = 0, remind_min = 0, escalate_min = 0;
    if (level > 0) {
        approvals = p->approvers[level] > o.approvals ? p->approvers[level] : o.approvals;
        expiry_min = o.expiry_minutes ? o.expiry_minutes : p->expiry_minutes[level];
        if (p->remind_minutes[level] < expiry_min)
            remind_min = p->remind_minutes[level];
        if (p->escalate_to && p->escalate_minutes[level] < expiry_min)
            escalate_min = p->escalate_minutes[level];
    }

    bool allowed = true;
    char denied[POLICY_MSG_MAX] = "";
    if (o.deny_rule) {
        allowed = false;
        bt_strlcpy(denied, o.deny_rule->deny, sizeof denied);
    } else if (level > 0 && o.groups_set && groups.count == 0) {
        allowed = false;
        bt_fmt(denied, sizeof denied,
               "the matching rules name no approver group in common, so nobody could approve "
               "this");
    } else if (level > 0) {
        /* Count the people who could decide; fewer than M means the request
         * would wait until it expired, so say so now. */
        size_t could = 0;
        for (size_t i = 0; i < p->nusers; i++)
            if (decider_check(p, level, &groups, requester, p->users[i].name, NULL, 0))
                could++;
        if (could < (size_t)approvals) {
            allowed = false;
            bt_buf b = BT_BUF_INIT(1024);
            join_groups(&b, &groups);
            bt_fmt(denied, sizeof denied,
                   "this needs %d distinct approvers but only %zu configured user%s could decide "
                   "(approver groups: %s%s)",
                   approvals, could, could == 1 ? "" : "s", b.len ? b.data : "none",
                   level >= 2 && requester ? "; the requester cannot approve" : "");
            bt_buf_free(&b);
        }
    }

    const struct rule *deciding = o.deny_rule;
    if (!deciding && o.level_rule && !floored && level == o.level)
        deciding = o.level_rule;

    json_t *res = json_object();
    json_object_set_new(res, "level", json_integer(level));
    json_object_set_new(res, "risk", json_string(bt_risk_name(v.risk)));
    json_object_set_new(res, "reasons", reasons);
    json_object_set_new(res, "approvals_required", json_integer(approvals));
    json_t *ga = json_array();
    for (size_t i = 0; level > 0 && i < groups.count; i++)
        json_array_append_new(ga, json_string(groups.names[i]));
    json_object_set_new(res, "approver_groups", ga);
    json_object_set_new(res, "requester_may_approve",
                        json_boolean(allowed && level == 1 && ru && ru->role != ROLE_VIEWER));
    json_object_set_new(res, "expires_s", json_integer((json_int_t)expiry_min * 60));
    json_object_set_new(res, "remind_s", json_integer((json_int_t)remind_min * 60));
    json_object_set_new(res, "escalate_s", json_integer((json_int_t)escalate_min * 60));
    json_object_set_new(res, "escalate_to",
                        escalate_min ? json_string(p->escalate_to) : json_null());
    json_object_set_new(res, "allowed", json_boolean(allowed));
    json_object_set_new(res, "denied_reason", allowed ? json_null() : json_string(denied));
    json_object_set_new(res, "rule", deciding ? json_string(deciding->name) : json_null());

    free(o.groups.names);
    plan_view_free(&v);
    return res;
}

bool bt_policy_may_decide(const bt_policy *p, const json_t *req, const char *requester,
                          const char *user, char *reason, size_t reasonlen)
{
    say(reason, reasonlen, "%s", "");
    if (!p || !json_is_object(req) || !json_is_integer(json_object_get(req, "level"))) {
        say(reason, reasonlen, "not an approval requirement");
        return false;
    }
    /* Only an explicit `allowed: true` lets anyone decide: a requirement
     * that was refused, or one missing the field, is never approvable. */
    if (!json_is_true(json_object_get(req, "allowed"))) {
        const char *why = json_string_value(json_object_get(req, "denied_reason"));
        say(reason, reasonlen, "this request is not allowed: %s", why ? why : "refused by policy");
        return false;
    }
    json_int_t level = json_integer_value(json_object_get(req, "level"));
    if (level > POLICY_MAX_LEVEL)
        level = POLICY_MAX_LEVEL;
    const json_t *ga = json_object_get(req, "approver_groups");
    struct group_set groups = {bt_calloc(json_array_size(ga) + 1, sizeof(char *)), 0};
    size_t i;
    json_t *g;
    json_array_foreach(ga, i, g)
    {
        if (json_is_string(g))
            groups.names[groups.count++] = json_string_value(g);
    }
    bool ok = decider_check(p, (int)level, &groups, requester, user, reason, reasonlen);
    free(groups.names);
    return ok;
}
