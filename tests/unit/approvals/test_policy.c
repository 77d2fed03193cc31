/*
 * Unit tests for approvals/policy.c: the approval level a plan needs, who may
 * decide, and the checks on baton.yaml's policy, users, groups and cli.
 *
 * Two kinds of configuration: the shipped config/baton.yaml (a table of risk
 * x environment x requester role x target count), and small configurations
 * written to a temporary directory, one per rule semantic. Other files of a
 * configuration directory (intents, inventory) belong to other modules: their
 * diagnostics are ignored here; only bt_policy_new's are checked.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "approvals/policy.h"
#include "bot/conf.h"
#include "bot/util.h"
#include "test.h"

/* ---- helpers ---------------------------------------------------------- */

static const char *const everyone[] = {"alice", "bob",  "carol",   "dave", "erin",
                                       "frank", "gina", "mallory", NULL};

/* Enough of tools.yaml for the policy's cross-check of tool and input names. */
static const char stub_tools[] = "input_sets:\n"
                                 "  asset_filter:\n"
                                 "    environment: {pattern: '^[a-z]+$'}\n"
                                 "tools:\n"
                                 "  - {name: service_status, inputs: {host: {}, service: {}}}\n"
                                 "  - {name: service_restart, inputs: {host: {}, service: {}}}\n"
                                 "  - {name: database_drop, inputs: {host: {}, database: {}}}\n"
                                 "  - {name: package_install, inputs: {host: {}, app: {}}}\n"
                                 "  - {name: firewall_open, inputs: {host: {}, port: {}}}\n"
                                 "  - {name: config_set, inputs: {host: {}, path: {}}}\n";

static bool write_file(const char *dir, const char *name, const char *text)
{
    char *path = bt_asprintf("%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    bool ok = f && fputs(text, f) >= 0;
    if (f && fclose(f) != 0)
        ok = false;
    free(path);
    return ok;
}

static void remove_file(const char *dir, const char *name)
{
    char *path = bt_asprintf("%s/%s", dir, name);
    (void)unlink(path);
    free(path);
}

/* Build a policy from baton.yaml text written to a fresh temporary directory
 * (with the stub tools.yaml). Policy problems go to d; the configuration is
 * freed before returning, which also proves the policy keeps no pointer into
 * it. */
static bt_policy *policy_from_text(const char *baton_yaml, bt_diag *d)
{
    char dir[] = "/tmp/bt_policy_XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK_MSG(0, "mkdtemp failed");
        return NULL;
    }
    CHECK(write_file(dir, "baton.yaml", baton_yaml));
    CHECK(write_file(dir, "tools.yaml", stub_tools));
    bt_diag *ignored = bt_diag_new(); /* missing inventory and intents */
    bt_config *cfg = bt_config_load(dir, ignored);
    bt_policy *p = cfg ? bt_policy_new(cfg, d) : NULL;
    bt_config_free(cfg);
    bt_diag_free(ignored);
    remove_file(dir, "baton.yaml");
    remove_file(dir, "tools.yaml");
    (void)rmdir(dir);
    return p;
}

static void print_diag(const bt_diag *d)
{
    for (size_t i = 0; i < bt_diag_count(d); i++)
        fprintf(stderr, "  diag: %s\n", bt_diag_get(d, i));
}

#define POLICY_HEAD                                                                                \
    "policy:\n"                                                                                    \
    "  levels: {low: 0, medium: 1, high: 2, critical: 3}\n"                                        \
    "  raise:\n"                                                                                   \
    "    production: {environments: [production, prod], by: 1}\n"                                  \
    "    many_targets: {threshold: 5, by: 1}\n"                                                    \
    "  approvers: {1: 1, 2: 1, 3: 2}\n"                                                            \
    "  approver_groups: [approvers, admins]\n"                                                     \
    "  expiry_minutes: {1: 7, 2: 17, 3: 37}\n"                                                     \
    "  remind_minutes: {1: 2, 2: 5, 3: 10}\n"                                                      \
    "  escalate: {after_minutes: {2: 9, 3: 30}, to: admins}\n"

/* frank holds the approver role but no approver group; gina is in an
 * approver group without the approver role. */
#define USERS_GROUPS                                                                               \
    "users:\n"                                                                                     \
    "  alice: {role: operator, groups: [ops], identities: {cli: alice, slack: U0ALICE}}\n"         \
    "  bob: {role: approver, groups: [ops, approvers], identities: {console: bob}}\n"              \
    "  carol: {role: approver, groups: [dba, approvers], identities: {console: carol}}\n"          \
    "  dave: {role: viewer, groups: [support], identities: {console: dave}}\n"                     \
    "  erin: {role: admin, groups: [admins], identities: {mattermost: erin-mm}}\n"                 \
    "  frank: {role: approver, groups: [dba], identities: {console: frank}}\n"                     \
    "  gina: {role: operator, groups: [approvers], identities: {console: gina}}\n"                 \
    "groups:\n"                                                                                    \
    "  ops: {description: Operations}\n"                                                           \
    "  approvers: {}\n"                                                                            \
    "  dba:\n"                                                                                     \
    "  support: {}\n"                                                                              \
    "  admins: {}\n"                                                                               \
    "cli: {default_user: alice}\n"

/* A policy with the given `rules:` block (or none). */
static bt_policy *policy_with_rules(const char *rules)
{
    char *text = bt_asprintf("%s%s%s", POLICY_HEAD, rules ? rules : "  rules: []\n", USERS_GROUPS);
    bt_diag *d = bt_diag_new();
    bt_policy *p = policy_from_text(text, d);
    CHECK_MSG(p != NULL && bt_diag_count(d) == 0, "the test policy should load");
    print_diag(d);
    bt_diag_free(d);
    free(text);
    return p;
}

static json_t *plan_new(const char *intent, const char *risk)
{
    return json_pack("{s:s, s:s, s:[], s:[]}", "intent", intent, "risk", risk, "steps", "targets");
}

/* Append a step acting on host (in env; NULL: unknown) with one extra input,
 * and the host to the plan's targets. */
static void plan_step(json_t *plan, const char *tool, const char *risk, bool read_only,
                      const char *host, const char *env, const char *input, const char *value)
{
    json_t *steps = json_object_get(plan, "steps");
    json_t *inputs = json_pack("{s:s}", "host", host);
    if (input)
        json_object_set_new(inputs, input, json_string(value));
    json_t *step = json_pack("{s:I, s:s, s:o, s:s, s:b, s:s}", "index",
                             (json_int_t)json_array_size(steps), "tool", tool, "inputs", inputs,
                             "risk", risk, "read_only", read_only, "target", host);
    json_t *target = json_pack("{s:s}", "name", host);
    if (env) {
        json_object_set_new(step, "environment", json_string(env));
        json_object_set_new(target, "environment", json_string(env));
    }
    json_array_append_new(steps, step);
    json_array_append_new(json_object_get(plan, "targets"), target);
}

/* A one-step plan: tool on host in env with input=value. */
static json_t *plan1(const char *tool, const char *risk, const char *host, const char *env,
                     const char *input, const char *value)
{
    json_t *plan = plan_new(tool, risk);
    plan_step(plan, tool, risk, strcmp(risk, "low") == 0, host, env, input, value);
    return plan;
}

static long long get_int(const json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

static const char *get_str(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static bool has_reason(const json_t *req, const char *fragment)
{
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(req, "reasons"), i, r)
    {
        if (strstr(json_string_value(r), fragment))
            return true;
    }
    return false;
}

static void dump(const json_t *req)
{
    char *s = json_dumps(req, JSON_INDENT(2));
    fprintf(stderr, "%s\n", s);
    free(s);
}

/* Everyone who may decide req, comma-separated, in `everyone` order. */
static char *deciders(const bt_policy *p, const json_t *req, const char *requester)
{
    bt_buf b = BT_BUF_INIT(0);
    for (size_t i = 0; everyone[i]; i++) {
        char reason[256];
        if (bt_policy_may_decide(p, req, requester, everyone[i], reason, sizeof reason))
            bt_buf_printf(&b, "%s%s", b.len ? "," : "", everyone[i]);
    }
    return bt_buf_steal(&b);
}

static json_t *eval(const bt_policy *p, json_t *plan, const char *requester)
{
    json_t *req = bt_policy_evaluate(p, plan, requester);
    json_decref(plan);
    return req;
}

/* ---- the shipped configuration -------------------------------------- */

#define R_STAGING "operators restart web and cache services on staging freely"
#define R_STAGING5 "restarting on five or more staging hosts still needs a confirmation"
#define R_DBDROP "dropping a database is always step by step"
#define R_VIEWERS "viewers may only read"

struct matrix_row {
    const char *risk, *env;
    int targets;
    const char *requester; /* dave viewer, alice operator, bob approver, erin admin */
    int level;
    bool allowed;
    int approvals;
    const char *deciders;
    const char *rule;
};

/* Generated from the documented semantics and checked by hand; each risk has
 * its own tool: low service_status (read-only), medium service_restart nginx,
 * high package_install, critical database_drop. */
static const struct matrix_row matrix[] = {
    {"low", "dev", 1, "dave", 0, true, 0, "", NULL},
    {"low", "dev", 1, "alice", 0, true, 0, "", NULL},
    {"low", "dev", 1, "bob", 0, true, 0, "", NULL},
    {"low", "dev", 1, "erin", 0, true, 0, "", NULL},
    {"low", "dev", 6, "dave", 0, true, 0, "", NULL},
    {"low", "dev", 6, "alice", 0, true, 0, "", NULL},
    {"low", "dev", 6, "bob", 0, true, 0, "", NULL},
    {"low", "dev", 6, "erin", 0, true, 0, "", NULL},
    {"low", "staging", 1, "dave", 0, true, 0, "", NULL},
    {"low", "staging", 1, "alice", 0, true, 0, "", NULL},
    {"low", "staging", 1, "bob", 0, true, 0, "", NULL},
    {"low", "staging", 1, "erin", 0, true, 0, "", NULL},
    {"low", "staging", 6, "dave", 0, true, 0, "", NULL},
    {"low", "staging", 6, "alice", 0, true, 0, "", NULL},
    {"low", "staging", 6, "bob", 0, true, 0, "", NULL},
    {"low", "staging", 6, "erin", 0, true, 0, "", NULL},
    {"low", "production", 1, "dave", 0, true, 0, "", NULL},
    {"low", "production", 1, "alice", 0, true, 0, "", NULL},
    {"low", "production", 1, "bob", 0, true, 0, "", NULL},
    {"low", "production", 1, "erin", 0, true, 0, "", NULL},
    {"low", "production", 6, "dave", 0, true, 0, "", NULL},
    {"low", "production", 6, "alice", 0, true, 0, "", NULL},
    {"low", "production", 6, "bob", 0, true, 0, "", NULL},
    {"low", "production", 6, "erin", 0, true, 0, "", NULL},
    {"medium", "dev", 1, "dave", 1, false, 1, "", R_VIEWERS},
    {"medium", "dev", 1, "alice", 1, true, 1, "alice,bob,carol,erin", NULL},
    {"medium", "dev", 1, "bob", 1, true, 1, "bob,carol,erin", NULL},
    {"medium", "dev", 1, "erin", 1, true, 1, "bob,carol,erin", NULL},
    {"medium", "dev", 6, "dave", 2, false, 1, "", R_VIEWERS},
    {"medium", "dev", 6, "alice", 2, true, 1, "bob,carol,erin", NULL},
    {"medium", "dev", 6, "bob", 2, true, 1, "carol,erin", NULL},
    {"medium", "dev", 6, "erin", 2, true, 1, "bob,carol", NULL},
    {"medium", "staging", 1, "dave", 1, false, 1, "", R_VIEWERS},
    {"medium", "staging", 1, "alice", 0, true, 0, "", R_STAGING},
    {"medium", "staging", 1, "bob", 0, true, 0, "", R_STAGING},
    {"medium", "staging", 1, "erin", 0, true, 0, "", R_STAGING},
    {"medium", "staging", 6, "dave", 1, false, 1, "", R_VIEWERS},
    {"medium", "staging", 6, "alice", 1, true, 1, "alice,bob,carol,erin", R_STAGING5},
    {"medium", "staging", 6, "bob", 1, true, 1, "bob,carol,erin", R_STAGING5},
    {"medium", "staging", 6, "erin", 1, true, 1, "bob,carol,erin", R_STAGING5},
    {"medium", "production", 1, "dave", 2, false, 1, "", R_VIEWERS},
    {"medium", "production", 1, "alice", 2, true, 1, "bob,carol,erin", NULL},
    {"medium", "production", 1, "bob", 2, true, 1, "carol,erin", NULL},
    {"medium", "production", 1, "erin", 2, true, 1, "bob,carol", NULL},
    {"medium", "production", 6, "dave", 2, false, 1, "", R_VIEWERS},
    {"medium", "production", 6, "alice", 2, true, 1, "bob,carol,erin", NULL},
    {"medium", "production", 6, "bob", 2, true, 1, "carol,erin", NULL},
    {"medium", "production", 6, "erin", 2, true, 1, "bob,carol", NULL},
    {"high", "dev", 1, "dave", 2, false, 1, "", R_VIEWERS},
    {"high", "dev", 1, "alice", 2, true, 1, "bob,carol,erin", NULL},
    {"high", "dev", 1, "bob", 2, true, 1, "carol,erin", NULL},
    {"high", "dev", 1, "erin", 2, true, 1, "bob,carol", NULL},
    {"high", "dev", 6, "dave", 3, false, 2, "", R_VIEWERS},
    {"high", "dev", 6, "alice", 3, true, 2, "bob,carol,erin", NULL},
    {"high", "dev", 6, "bob", 3, true, 2, "carol,erin", NULL},
    {"high", "dev", 6, "erin", 3, true, 2, "bob,carol", NULL},
    {"high", "staging", 1, "dave", 2, false, 1, "", R_VIEWERS},
    {"high", "staging", 1, "alice", 2, true, 1, "bob,carol,erin", NULL},
    {"high", "staging", 1, "bob", 2, true, 1, "carol,erin", NULL},
    {"high", "staging", 1, "erin", 2, true, 1, "bob,carol", NULL},
    {"high", "staging", 6, "dave", 3, false, 2, "", R_VIEWERS},
    {"high", "staging", 6, "alice", 3, true, 2, "bob,carol,erin", NULL},
    {"high", "staging", 6, "bob", 3, true, 2, "carol,erin", NULL},
    {"high", "staging", 6, "erin", 3, true, 2, "bob,carol", NULL},
    {"high", "production", 1, "dave", 2, false, 1, "", R_VIEWERS},
    {"high", "production", 1, "alice", 2, true, 1, "bob,carol,erin", NULL},
    {"high", "production", 1, "bob", 2, true, 1, "carol,erin", NULL},
    {"high", "production", 1, "erin", 2, true, 1, "bob,carol", NULL},
    {"high", "production", 6, "dave", 3, false, 2, "", R_VIEWERS},
    {"high", "production", 6, "alice", 3, true, 2, "bob,carol,erin", NULL},
    {"high", "production", 6, "bob", 3, true, 2, "carol,erin", NULL},
    {"high", "production", 6, "erin", 3, true, 2, "bob,carol", NULL},
    {"critical", "dev", 1, "dave", 3, false, 2, "", R_VIEWERS},
    {"critical", "dev", 1, "alice", 3, true, 2, "bob,carol,erin", R_DBDROP},
    {"critical", "dev", 1, "bob", 3, true, 2, "carol,erin", R_DBDROP},
    {"critical", "dev", 1, "erin", 3, true, 2, "bob,carol", R_DBDROP},
    {"critical", "dev", 6, "dave", 3, false, 2, "", R_VIEWERS},
    {"critical", "dev", 6, "alice", 3, true, 2, "bob,carol,erin", R_DBDROP},
    {"critical", "dev", 6, "bob", 3, true, 2, "carol,erin", R_DBDROP},
    {"critical", "dev", 6, "erin", 3, true, 2, "bob,carol", R_DBDROP},
    {"critical", "staging", 1, "dave", 3, false, 2, "", R_VIEWERS},
    {"critical", "staging", 1, "alice", 3, true, 2, "bob,carol,erin", R_DBDROP},
    {"critical", "staging", 1, "bob", 3, true, 2, "carol,erin", R_DBDROP},
    {"critical", "staging", 1, "erin", 3, true, 2, "bob,carol", R_DBDROP},
    {"critical", "staging", 6, "dave", 3, false, 2, "", R_VIEWERS},
    {"critical", "staging", 6, "alice", 3, true, 2, "bob,carol,erin", R_DBDROP},
    {"critical", "staging", 6, "bob", 3, true, 2, "carol,erin", R_DBDROP},
    {"critical", "staging", 6, "erin", 3, true, 2, "bob,carol", R_DBDROP},
    {"critical", "production", 1, "dave", 3, false, 2, "", R_VIEWERS},
    {"critical", "production", 1, "alice", 3, true, 2, "bob,carol,erin", R_DBDROP},
    {"critical", "production", 1, "bob", 3, true, 2, "carol,erin", R_DBDROP},
    {"critical", "production", 1, "erin", 3, true, 2, "bob,carol", R_DBDROP},
    {"critical", "production", 6, "dave", 3, false, 2, "", R_VIEWERS},
    {"critical", "production", 6, "alice", 3, true, 2, "bob,carol,erin", R_DBDROP},
    {"critical", "production", 6, "bob", 3, true, 2, "carol,erin", R_DBDROP},
    {"critical", "production", 6, "erin", 3, true, 2, "bob,carol", R_DBDROP},
};

static json_t *matrix_plan(const struct matrix_row *row)
{
    static const struct {
        const char *risk, *tool, *input, *value;
    } tool_for[] = {{"low", "service_status", "service", "nginx"},
                    {"medium", "service_restart", "service", "nginx"},
                    {"high", "package_install", "app", "nginx"},
                    {"critical", "database_drop", "database", "orders"}};
    size_t t = 0;
    while (strcmp(tool_for[t].risk, row->risk) != 0)
        t++;
    json_t *plan = plan_new(tool_for[t].tool, row->risk);
    for (int i = 0; i < row->targets; i++) {
        char host[64];
        bt_fmt(host, sizeof host, "%s-%02d", row->env, i + 1);
        plan_step(plan, tool_for[t].tool, row->risk, t == 0, host, row->env, tool_for[t].input,
                  tool_for[t].value);
    }
    return plan;
}

static void test_shipped_matrix(void)
{
    static const long long expiry_by_level[] = {0, 300, 900, 1800};
    bt_diag *ignored = bt_diag_new(), *d = bt_diag_new();
    bt_config *cfg = bt_config_load(BT_SOURCE_DIR "/config", ignored);
    CHECK(cfg != NULL);
    bt_policy *p = cfg ? bt_policy_new(cfg, d) : NULL;
    CHECK_MSG(p != NULL && bt_diag_count(d) == 0, "the shipped policy must load cleanly");
    print_diag(d);
    if (!p)
        goto out;
    CHECK_INT(sizeof matrix / sizeof matrix[0], 4 * 3 * 2 * 4);
    for (size_t i = 0; i < sizeof matrix / sizeof matrix[0]; i++) {
        const struct matrix_row *row = &matrix[i];
        json_t *req = eval(p, matrix_plan(row), row->requester);
        char *who = deciders(p, req, row->requester);
        const char *rule = get_str(req, "rule");
        bool ok = get_int(req, "level") == row->level &&
                  json_is_true(json_object_get(req, "allowed")) == row->allowed &&
                  get_int(req, "approvals_required") == row->approvals &&
                  strcmp(who, row->deciders) == 0 && strcmp(get_str(req, "risk"), row->risk) == 0 &&
                  get_int(req, "expires_s") == expiry_by_level[row->level] &&
                  (row->rule ? rule && strcmp(rule, row->rule) == 0 : rule == NULL);
        CHECK_MSG(ok,
                  "row %zu (%s, %s, %d targets, %s): want level %d allowed %d approvals %d "
                  "deciders '%s' rule '%s'; got deciders '%s'",
                  i, row->risk, row->env, row->targets, row->requester, row->level, row->allowed,
                  row->approvals, row->deciders, row->rule ? row->rule : "(null)", who);
        if (!ok)
            dump(req);
        free(who);
        json_decref(req);
    }

    /* The shipped identities and the CLI's default user. */
    CHECK_STR(bt_policy_user_for(p, "console", "carol"), "carol");
    CHECK_STR(bt_policy_user_for(p, "cli", "erin"), "erin");
    CHECK_STR(json_string_value(bt_config_get(cfg, "cli.default_user")), "alice");

out:
    bt_policy_free(p);
    bt_config_free(cfg);
    bt_diag_free(ignored);
    bt_diag_free(d);
}

/* The shipped level-1 example from the issue, field by field. */
static void test_shipped_example(void)
{
    bt_diag *ignored = bt_diag_new();
    bt_config *cfg = bt_config_load(BT_SOURCE_DIR "/config", ignored);
    bt_policy *p = cfg ? bt_policy_new(cfg, ignored) : NULL;
    CHECK(p != NULL);
    if (p) {
        json_t *req = eval(
            p, plan1("service_restart", "medium", "web-01", "dev", "service", "nginx"), "alice");
        CHECK_INT(get_int(req, "level"), 1);
        CHECK_STR(get_str(req, "risk"), "medium");
        CHECK(has_reason(req, "risk medium \u2192 level 1"));
        CHECK_INT(get_int(req, "approvals_required"), 1);
        CHECK_INT(json_array_size(json_object_get(req, "approver_groups")), 2);
        CHECK_STR(json_string_value(json_array_get(json_object_get(req, "approver_groups"), 0)),
                  "approvers");
        CHECK(json_is_true(json_object_get(req, "requester_may_approve")));
        CHECK_INT(get_int(req, "expires_s"), 300);
        CHECK_INT(get_int(req, "remind_s"), 180);
        CHECK_INT(get_int(req, "escalate_s"), 0); /* level 1 does not escalate */
        CHECK(json_is_null(json_object_get(req, "escalate_to")));
        CHECK(json_is_true(json_object_get(req, "allowed")));
        CHECK(json_is_null(json_object_get(req, "denied_reason")));
        CHECK(json_is_null(json_object_get(req, "rule")));
        json_decref(req);

        /* production: the floor of level 2, and the level-2 escalation */
        req = eval(
            p, plan1("service_restart", "medium", "web-prd-01", "production", "service", "nginx"),
            "alice");
        CHECK_INT(get_int(req, "level"), 2);
        CHECK(has_reason(req, "floor: a change on production target web-prd-01 always needs an "
                              "approver (level 2)"));
        CHECK_INT(get_int(req, "escalate_s"), 12 * 60);
        CHECK_STR(get_str(req, "escalate_to"), "admins");
        CHECK(json_is_false(json_object_get(req, "requester_may_approve")));
        json_decref(req);

        /* the DBA rule names its approver groups */
        req = eval(
            p, plan1("database_backup", "medium", "db-prd-01", "production", "database", "orders"),
            "alice");
        CHECK_INT(get_int(req, "level"), 2);
        char *who = deciders(p, req, "alice");
        CHECK_STR(who, "carol,erin");
        free(who);
        json_decref(req);
    }
    bt_policy_free(p);
    bt_config_free(cfg);
    bt_diag_free(ignored);
}

/* ---- rule semantics ----------------------------------------------------- */

static void test_strictest_rule_wins(void)
{
    /* Two rules match nginx restarts; the stricter decides, whatever the
     * order in the file. */
    bt_policy *p = policy_with_rules("  rules:\n"
                                     "    - name: restarts need review\n"
                                     "      match: {tool: service_restart}\n"
                                     "      level: 2\n"
                                     "    - name: nginx restarts are step by step\n"
                                     "      match: {inputs: {service: nginx}}\n"
                                     "      level: 3\n"
                                     "    - name: restarts on dev are free\n"
                                     "      match: {tool: service_restart, environment: dev}\n"
                                     "      level: 0\n");
    if (!p)
        return;
    json_t *req =
        eval(p, plan1("service_restart", "medium", "web-01", "dev", "service", "nginx"), "alice");
    CHECK_INT(get_int(req, "level"), 3);
    CHECK_STR(get_str(req, "rule"), "nginx restarts are step by step");
    CHECK(has_reason(req, "rule 'restarts need review': level 2"));
    CHECK(has_reason(req, "rule 'restarts on dev are free': level 0"));
    CHECK_INT(get_int(req, "approvals_required"), 2);
    json_decref(req);

    req = eval(p, plan1("service_restart", "medium", "db-01", "dev", "service", "postgresql"),
               "alice");
    CHECK_INT(get_int(req, "level"), 2);
    CHECK_STR(get_str(req, "rule"), "restarts need review");
    json_decref(req);
    bt_policy_free(p);
}

static void test_rule_lowers_only_where_it_fits(void)
{
    /* No environment in the rule: the production floor must still hold. */
    bt_policy *p = policy_with_rules("  rules:\n"
                                     "    - name: operators restart nginx freely\n"
                                     "      match:\n"
                                     "        tool: service_restart\n"
                                     "        inputs: {service: [nginx, redis]}\n"
                                     "        requester_role: [operator, approver, admin]\n"
                                     "      level: 0\n"
                                     "    - name: staging only\n"
                                     "      match: {tool: service_restart, environment: staging, "
                                     "requester_group: ops, inputs: {service: memcached}}\n"
                                     "      level: 0\n");
    if (!p)
        return;
    json_t *req = eval(
        p, plan1("service_restart", "medium", "stg-01", "staging", "service", "nginx"), "alice");
    CHECK_INT(get_int(req, "level"), 0);
    CHECK_STR(get_str(req, "rule"), "operators restart nginx freely");
    CHECK_INT(get_int(req, "approvals_required"), 0);
    CHECK_INT(get_int(req, "expires_s"), 0);
    CHECK_INT(json_array_size(json_object_get(req, "approver_groups")), 0);
    CHECK(json_is_false(json_object_get(req, "requester_may_approve")));
    char *who = deciders(p, req, "alice");
    CHECK_STR(who, ""); /* level 0: nobody decides */
    free(who);
    json_decref(req);

    /* production: the rule matches but the floor keeps an approver */
    req =
        eval(p, plan1("service_restart", "medium", "web-prd-01", "production", "service", "nginx"),
             "alice");
    CHECK_INT(get_int(req, "level"), 2);
    CHECK(json_is_null(json_object_get(req, "rule")));
    CHECK(has_reason(req, "floor: a change on production target web-prd-01"));
    json_decref(req);
    /* the second production environment name counts too */
    req = eval(p, plan1("service_restart", "medium", "web-p-01", "PROD", "service", "nginx"),
               "alice");
    CHECK_INT(get_int(req, "level"), 2);
    json_decref(req);

    /* a viewer's request does not match the role condition */
    req = eval(p, plan1("service_restart", "medium", "stg-01", "staging", "service", "nginx"),
               "dave");
    CHECK_INT(get_int(req, "level"), 1);
    json_decref(req);

    /* the group condition: bob is in ops, carol is not */
    req = eval(p, plan1("service_restart", "medium", "stg-01", "staging", "service", "memcached"),
               "bob");
    CHECK_INT(get_int(req, "level"), 0);
    CHECK_STR(get_str(req, "rule"), "staging only");
    json_decref(req);
    req = eval(p, plan1("service_restart", "medium", "stg-01", "staging", "service", "memcached"),
               "carol");
    CHECK_INT(get_int(req, "level"), 1);
    json_decref(req);

    /* Lowering needs EVERY changing step to fit: nginx plus postgresql is
     * not lowered, even though one step matches. */
    json_t *plan = plan_new("service_restart", "medium");
    plan_step(plan, "service_restart", "medium", false, "stg-01", "staging", "service", "nginx");
    plan_step(plan, "service_restart", "medium", false, "stg-02", "staging", "service",
              "postgresql");
    req = eval(p, plan, "alice");
    CHECK_INT(get_int(req, "level"), 1);
    CHECK(json_is_null(json_object_get(req, "rule")));
    json_decref(req);

    /* ... nor a plan with one staging and one dev target for "staging only" */
    plan = plan_new("service_restart", "medium");
    plan_step(plan, "service_restart", "medium", false, "stg-01", "staging", "service",
              "memcached");
    plan_step(plan, "service_restart", "medium", false, "dev-01", "dev", "service", "memcached");
    req = eval(p, plan, "bob");
    CHECK_INT(get_int(req, "level"), 1);
    json_decref(req);

    /* ... nor a target whose environment is unknown */
    req =
        eval(p, plan1("service_restart", "medium", "stg-01", NULL, "service", "memcached"), "bob");
    CHECK_INT(get_int(req, "level"), 1);
    json_decref(req);

    /* ... but a read-only step beside the restart does not stop it */
    plan = plan_new("service_restart", "medium");
    plan_step(plan, "service_status", "low", true, "stg-01", "staging", "service", "postgresql");
    plan_step(plan, "service_restart", "medium", false, "stg-01", "staging", "service", "nginx");
    req = eval(p, plan, "alice");
    CHECK_INT(get_int(req, "level"), 0);
    json_decref(req);
    bt_policy_free(p);
}

static void test_critical_is_always_3(void)
{
    bt_policy *p = policy_with_rules("  rules:\n"
                                     "    - name: drops on dev are nothing\n"
                                     "      match: {tool: database_drop, environment: dev}\n"
                                     "      level: 0\n");
    if (!p)
        return;
    json_t *req =
        eval(p, plan1("database_drop", "critical", "db-01", "dev", "database", "orders"), "alice");
    CHECK_INT(get_int(req, "level"), 3);
    CHECK_STR(get_str(req, "risk"), "critical");
    CHECK(has_reason(req, "floor: a critical plan is always level 3"));
    CHECK(json_is_null(json_object_get(req, "rule")));
    CHECK_INT(get_int(req, "approvals_required"), 2);
    char *who = deciders(p, req, "alice");
    CHECK_STR(who, "bob,carol,erin");
    free(who);
    json_decref(req);

    /* The plan's risk is never lowered: a plan saying low with a critical
     * step is critical; an unknown or missing risk counts as critical. */
    json_t *plan = plan_new("cleanup", "low");
    plan_step(plan, "service_status", "low", true, "db-01", "dev", NULL, NULL);
    plan_step(plan, "database_drop", "critical", false, "db-01", "dev", "database", "x");
    req = eval(p, plan, "alice");
    CHECK_STR(get_str(req, "risk"), "critical");
    CHECK_INT(get_int(req, "level"), 3);
    json_decref(req);

    plan = plan_new("odd", "medium");
    plan_step(plan, "service_restart", "catastrophic", false, "web-01", "dev", "service", "x");
    req = eval(p, plan, "alice");
    CHECK_STR(get_str(req, "risk"), "critical");
    CHECK(has_reason(req, "unknown risk 'catastrophic': treated as critical"));
    json_decref(req);

    plan = json_pack("{s:s}", "intent", "empty");
    req = eval(p, plan, "alice");
    CHECK_STR(get_str(req, "risk"), "critical");
    CHECK_INT(get_int(req, "level"), 3);
    json_decref(req);

    /* Not a plan at all: refused, not waved through. */
    plan = json_string("restart everything");
    req = eval(p, plan, "alice");
    CHECK_INT(get_int(req, "level"), 3);
    CHECK(json_is_false(json_object_get(req, "allowed")));
    json_decref(req);
    bt_policy_free(p);
}

static void test_raises(void)
{
    bt_policy *p = policy_with_rules(NULL);
    if (!p)
        return;
    /* 6 distinct targets; a host named twice (targets and steps, different
     * case) counts once. */
    json_t *plan = plan_new("service_restart", "medium");
    for (int i = 0; i < 6; i++) {
        char host[16];
        bt_fmt(host, sizeof host, "web-%02d", i);
        plan_step(plan, "service_restart", "medium", false, host, "dev", "service", "nginx");
    }
    json_t *req = eval(p, json_deep_copy(plan), "alice");
    CHECK_INT(get_int(req, "level"), 2);
    CHECK(has_reason(req, "6 targets (5 or more): +1"));
    json_decref(req);

    for (int i = 0; i < 2; i++) { /* 4 hosts, and web-00 again */
        json_array_remove(json_object_get(plan, "steps"), 4);
        json_array_remove(json_object_get(plan, "targets"), 4);
    }
    json_array_append_new(json_object_get(plan, "targets"),
                          json_pack("{s:s, s:s}", "name", "WEB-00", "environment", "dev"));
    req = eval(p, plan, "alice");
    CHECK_INT(get_int(req, "level"), 1);
    json_decref(req);

    /* production and many targets: capped at 3 */
    plan = plan_new("package_install", "high");
    for (int i = 0; i < 5; i++) {
        char host[16];
        bt_fmt(host, sizeof host, "prd-%02d", i);
        plan_step(plan, "package_install", "high", false, host, "production", "app", "nginx");
    }
    req = eval(p, plan, "alice");
    CHECK_INT(get_int(req, "level"), 3);
    CHECK(has_reason(req, "production target prd-00 (and 4 more): +1"));
    CHECK(has_reason(req, "at most level 3"));
    json_decref(req);

    /* reads on production and on many hosts are not raised */
    plan = plan_new("service_status", "low");
    for (int i = 0; i < 8; i++) {
        char host[16];
        bt_fmt(host, sizeof host, "prd-%02d", i);
        plan_step(plan, "service_status", "low", true, host, "production", "service", "nginx");
    }
    req = eval(p, plan, "dave");
    CHECK_INT(get_int(req, "level"), 0);
    CHECK(json_is_true(json_object_get(req, "allowed")));
    json_decref(req);
    bt_policy_free(p);
}

static void test_input_values(void)
{
    bt_policy *p = policy_with_rules("  rules:\n"
                                     "    - name: nginx is free on dev\n"
                                     "      match: {environment: dev, inputs: {service: [nginx]}}\n"
                                     "      level: 0\n"
                                     "    - name: ssh port changes are step by step\n"
                                     "      match: {tool: firewall_open, inputs: {port: [22, "
                                     "'2222']}}\n"
                                     "      level: 3\n"
                                     "      approvals_required: 3\n");
    if (!p)
        return;
    json_t *req =
        eval(p, plan1("service_restart", "medium", "web-01", "dev", "service", "NGINX"), "alice");
    CHECK_INT(get_int(req, "level"), 0); /* values compare case-insensitively */
    json_decref(req);
    req = eval(p, plan1("service_restart", "medium", "db-01", "dev", "service", "postgresql"),
               "alice");
    CHECK_INT(get_int(req, "level"), 1);
    json_decref(req);

    /* an input given as a number in the plan matches 22 in the rule */
    json_t *plan = plan1("firewall_open", "high", "fw-01", "dev", NULL, NULL);
    json_object_set_new(
        json_object_get(json_array_get(json_object_get(plan, "steps"), 0), "inputs"), "port",
        json_integer(22));
    req = eval(p, plan, "alice");
    CHECK_INT(get_int(req, "level"), 3);
    CHECK_INT(get_int(req, "approvals_required"), 3);
    json_decref(req);
    req = eval(p, plan1("firewall_open", "high", "fw-01", "dev", "port", "2222"), "alice");
    CHECK_INT(get_int(req, "level"), 3);
    json_decref(req);
    req = eval(p, plan1("firewall_open", "high", "fw-01", "dev", "port", "443"), "alice");
    CHECK_INT(get_int(req, "level"), 2);
    CHECK_INT(get_int(req, "approvals_required"), 1);
    json_decref(req);
    bt_policy_free(p);
}

static void test_deny(void)
{
    bt_policy *p = policy_with_rules("  rules:\n"
                                     "    - name: viewers may only read\n"
                                     "      match: {requester_role: viewer, min_risk: medium}\n"
                                     "      deny: viewers can ask questions, not change systems\n"
                                     "    - name: nothing above high on dev\n"
                                     "      match: {environment: dev, max_risk: high, min_targets: "
                                     "2}\n"
                                     "      deny: one host at a time on dev\n");
    if (!p)
        return;
    json_t *req =
        eval(p, plan1("service_restart", "medium", "web-01", "dev", "service", "nginx"), "dave");
    CHECK(json_is_false(json_object_get(req, "allowed")));
    CHECK_STR(get_str(req, "denied_reason"), "viewers can ask questions, not change systems");
    CHECK_STR(get_str(req, "rule"), "viewers may only read");
    CHECK(json_is_false(json_object_get(req, "requester_may_approve")));
    char reason[256];
    CHECK(!bt_policy_may_decide(p, req, "dave", "bob", reason, sizeof reason));
    CHECK_MSG(strstr(reason, "not allowed: viewers can ask") != NULL, "%s", reason);
    json_decref(req);

    /* reads stay allowed for viewers, and for people baton does not know
     * (treated as viewers) */
    req = eval(p, plan1("service_status", "low", "web-01", "dev", "service", "nginx"), "dave");
    CHECK(json_is_true(json_object_get(req, "allowed")));
    json_decref(req);
    req =
        eval(p, plan1("service_restart", "medium", "web-01", "dev", "service", "nginx"), "mallory");
    CHECK(json_is_false(json_object_get(req, "allowed")));
    CHECK(has_reason(req, "mallory is not a configured user: treated as a viewer"));
    json_decref(req);
    req = eval(p, plan1("service_restart", "medium", "web-01", "dev", "service", "nginx"), NULL);
    CHECK(json_is_false(json_object_get(req, "allowed")));
    json_decref(req);

    /* min_targets and max_risk */
    json_t *plan = plan_new("service_restart", "medium");
    plan_step(plan, "service_restart", "medium", false, "a", "dev", "service", "x");
    plan_step(plan, "service_restart", "medium", false, "b", "dev", "service", "x");
    req = eval(p, json_deep_copy(plan), "alice");
    CHECK_STR(get_str(req, "denied_reason"), "one host at a time on dev");
    json_decref(req);
    json_object_set_new(plan, "risk", json_string("critical"));
    req = eval(p, plan, "alice");
    CHECK(json_is_true(json_object_get(req, "allowed")));
    json_decref(req);
    bt_policy_free(p);
}

static void test_approvals_and_groups(void)
{
    bt_policy *p = policy_with_rules("  rules:\n"
                                     "    - name: database work is for the DBAs\n"
                                     "      match: {tool: [database_drop, config_set]}\n"
                                     "      approver_groups: [dba, approvers]\n"
                                     "    - name: drops need three\n"
                                     "      match: {tool: database_drop}\n"
                                     "      approvals_required: 3\n"
                                     "    - name: config on dev needs one\n"
                                     "      match: {tool: config_set, environment: dev}\n"
                                     "      approvals_required: 1\n"
                                     "      approver_groups: [dba]\n"
                                     "    - name: config on qa needs one admin\n"
                                     "      match: {tool: config_set, environment: qa}\n"
                                     "      approver_groups: [admins]\n");
    if (!p)
        return;
    /* M from the rule; groups from the rule: bob, carol, frank */
    json_t *req =
        eval(p, plan1("database_drop", "critical", "db-01", "dev", "database", "x"), "alice");
    CHECK_INT(get_int(req, "level"), 3);
    CHECK_INT(get_int(req, "approvals_required"), 3);
    CHECK(has_reason(req, "rule 'drops need three': 3 approvers"));
    char *who = deciders(p, req, "alice");
    CHECK_STR(who, "bob,carol,frank");
    free(who);
    CHECK(json_is_true(json_object_get(req, "allowed")));
    json_decref(req);

    /* bob asks: only carol and frank remain, fewer than 3: refused now
     * rather than left to expire */
    req = eval(p, plan1("database_drop", "critical", "db-01", "dev", "database", "x"), "bob");
    CHECK(json_is_false(json_object_get(req, "allowed")));
    CHECK_MSG(strstr(get_str(req, "denied_reason"), "needs 3 distinct approvers but only 2") !=
                  NULL,
              "%s", get_str(req, "denied_reason"));
    json_decref(req);

    /* a rule cannot lower M below the level's default; groups intersect */
    req = eval(p, plan1("config_set", "high", "app-01", "dev", "path", "/etc/x"), "alice");
    CHECK_INT(get_int(req, "level"), 2);
    CHECK_INT(get_int(req, "approvals_required"), 1);
    CHECK_INT(json_array_size(json_object_get(req, "approver_groups")), 1);
    CHECK_STR(json_string_value(json_array_get(json_object_get(req, "approver_groups"), 0)), "dba");
    who = deciders(p, req, "alice");
    CHECK_STR(who, "carol,frank");
    free(who);
    json_decref(req);
    req = eval(p, plan1("database_drop", "critical", "db-01", "dev", "database", "x"), "alice");
    json_decref(req);

    /* groups with nothing in common: nobody could approve */
    req = eval(p, plan1("config_set", "high", "app-01", "qa", "path", "/etc/x"), "alice");
    CHECK(json_is_false(json_object_get(req, "allowed")));
    CHECK_MSG(strstr(get_str(req, "denied_reason"), "no approver group in common") != NULL, "%s",
              get_str(req, "denied_reason"));
    json_decref(req);
    bt_policy_free(p);
}

static void test_expiry(void)
{
    bt_policy *p = policy_with_rules("  rules:\n"
                                     "    - name: firewall approvals are short\n"
                                     "      match: {tool: firewall_open}\n"
                                     "      expiry_minutes: 8\n"
                                     "    - name: firewall on dev shorter still\n"
                                     "      match: {tool: firewall_open, environment: dev}\n"
                                     "      expiry_minutes: 6\n");
    if (!p)
        return;
    static const struct {
        const char *risk, *env;
        int level;
        long long expires, remind, escalate;
    } cases[] = {
        {"medium", "dev", 1, 7 * 60, 2 * 60, 0},
        {"high", "dev", 2, 17 * 60, 5 * 60, 9 * 60},
        {"critical", "dev", 3, 37 * 60, 10 * 60, 30 * 60},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *req = eval(
            p, plan1("service_restart", cases[i].risk, "h", cases[i].env, NULL, NULL), "alice");
        CHECK_INT(get_int(req, "level"), cases[i].level);
        CHECK_INT(get_int(req, "expires_s"), cases[i].expires);
        CHECK_INT(get_int(req, "remind_s"), cases[i].remind);
        CHECK_INT(get_int(req, "escalate_s"), cases[i].escalate);
        if (cases[i].escalate)
            CHECK_STR(get_str(req, "escalate_to"), "admins");
        else
            CHECK(json_is_null(json_object_get(req, "escalate_to")));
        json_decref(req);
    }
    /* the shortest matching expiry wins; a reminder or escalation that would
     * come after it is dropped */
    json_t *req =
        eval(p, plan1("firewall_open", "critical", "fw", "staging", "port", "1"), "alice");
    CHECK_INT(get_int(req, "expires_s"), 8 * 60);
    CHECK_INT(get_int(req, "remind_s"), 0);
    CHECK_INT(get_int(req, "escalate_s"), 0);
    json_decref(req);
    req = eval(p, plan1("firewall_open", "critical", "fw", "dev", "port", "1"), "alice");
    CHECK_INT(get_int(req, "expires_s"), 6 * 60);
    json_decref(req);
    bt_policy_free(p);
}

/* Everything but approver_groups is optional; the defaults are the ones
 * docs/approvals.md lists. */
static void test_defaults(void)
{
    char *text = bt_asprintf("policy:\n  approver_groups: [approvers, admins]\n%s", USERS_GROUPS);
    bt_diag *d = bt_diag_new();
    bt_policy *p = policy_from_text(text, d);
    free(text);
    CHECK(p != NULL);
    print_diag(d);
    bt_diag_free(d);
    if (!p)
        return;
    json_t *req = eval(p, plan1("service_restart", "medium", "h", "dev", NULL, NULL), "alice");
    CHECK_INT(get_int(req, "level"), 1);
    CHECK_INT(get_int(req, "expires_s"), 5 * 60);
    CHECK_INT(get_int(req, "remind_s"), 0);
    CHECK_INT(get_int(req, "escalate_s"), 0);
    json_decref(req);
    req = eval(p, plan1("service_restart", "medium", "h", "production", NULL, NULL), "alice");
    CHECK_INT(get_int(req, "level"), 2);
    CHECK_INT(get_int(req, "expires_s"), 15 * 60);
    json_decref(req);
    req = eval(p, plan1("service_restart", "high", "h", "dev", NULL, NULL), "alice");
    CHECK_INT(get_int(req, "level"), 2);
    CHECK_INT(get_int(req, "approvals_required"), 1);
    json_decref(req);
    json_t *plan = plan_new("service_restart", "high");
    for (int i = 0; i < 5; i++) {
        char host[16];
        bt_fmt(host, sizeof host, "h%d", i);
        plan_step(plan, "service_restart", "high", false, host, "dev", NULL, NULL);
    }
    req = eval(p, plan, "alice");
    CHECK_INT(get_int(req, "level"), 3);
    CHECK_INT(get_int(req, "approvals_required"), 2);
    CHECK_INT(get_int(req, "expires_s"), 30 * 60);
    json_decref(req);
    bt_policy_free(p);
}

/* ---- who may decide ------------------------------------------------------ */

static json_t *req_at(const bt_policy *p, int level, const char *requester)
{
    static const char *const risk_for[] = {"low", "medium", "high", "critical"};
    return eval(p, plan1("service_restart", risk_for[level], "h", "dev", "service", "x"),
                requester);
}

static void test_may_decide(void)
{
    bt_policy *p = policy_with_rules(NULL);
    if (!p)
        return;
    char reason[256];
    static const struct {
        int level;
        const char *requester, *user;
        bool ok;
        const char *reason;
    } cases[] = {
        {0, "alice", "bob", false, "no approval is needed at level 0: the plan runs at once"},
        {1, "alice", "alice", true, ""},
        {1, "alice", "bob", true, ""},
        {1, "alice", "erin", true, ""},
        {1, "alice", "gina", false,
         "gina is an operator: approving needs the approver or admin role"},
        {1, "bob", "alice", false,
         "alice is an operator: approving needs the approver or admin role"},
        {1, "alice", "frank", false, "frank is not in an approver group (approvers, admins)"},
        {1, "alice", "dave", false, "dave is a viewer and may not approve"},
        {2, "bob", "bob", false, "bob may not approve their own request at level 2"},
        {2, "bob", "carol", true, ""},
        {2, "alice", "alice", false, "alice may not approve their own request at level 2"},
        {2, "alice", "dave", false, "dave is a viewer and may not approve"},
        {2, "alice", "mallory", false, "mallory is not a configured user"},
        {2, "alice", NULL, false, "an anonymous user is not a configured user"},
        {2, "alice", "frank", false, "frank is not in an approver group (approvers, admins)"},
        {2, "alice", "gina", false,
         "gina is an operator: approving needs the approver or admin role"},
        {2, NULL, "erin", true, ""},
        {3, "erin", "erin", false, "erin may not approve their own request at level 3"},
        {3, "erin", "bob", true, ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *req = req_at(p, cases[i].level, cases[i].requester);
        CHECK_INT(get_int(req, "level"), cases[i].level);
        bool ok =
            bt_policy_may_decide(p, req, cases[i].requester, cases[i].user, reason, sizeof reason);
        CHECK_MSG(ok == cases[i].ok, "case %zu: %s deciding %s's level-%d request: %s", i,
                  cases[i].user ? cases[i].user : "(null)",
                  cases[i].requester ? cases[i].requester : "(null)", cases[i].level, reason);
        if (!cases[i].ok)
            CHECK_STR(reason, cases[i].reason);
        json_decref(req);
    }

    /* requester_may_approve follows level 1 */
    json_t *req = req_at(p, 1, "alice");
    CHECK(json_is_true(json_object_get(req, "requester_may_approve")));
    json_decref(req);

    /* a requirement without allowed: true, or malformed, is never approvable */
    req = json_pack("{s:i, s:[s]}", "level", 2, "approver_groups", "approvers");
    CHECK(!bt_policy_may_decide(p, req, "alice", "bob", reason, sizeof reason));
    json_decref(req);
    CHECK(!bt_policy_may_decide(p, NULL, "alice", "bob", reason, sizeof reason));
    CHECK_STR(reason, "not an approval requirement");
    CHECK(!bt_policy_may_decide(p, NULL, "alice", "bob", NULL, 0)); /* no reason buffer */
    bt_policy_free(p);
}

static void test_users(void)
{
    bt_policy *p = policy_with_rules(NULL);
    if (!p)
        return;
    CHECK_STR(bt_policy_user_role(p, "carol"), "approver");
    CHECK_STR(bt_policy_user_role(p, "erin"), "admin");
    CHECK(bt_policy_user_role(p, "mallory") == NULL);
    CHECK(bt_policy_user_role(p, NULL) == NULL);
    CHECK(bt_policy_user_in_group(p, "bob", "ops"));
    CHECK(bt_policy_user_in_group(p, "bob", "approvers"));
    CHECK(!bt_policy_user_in_group(p, "alice", "approvers"));
    CHECK(!bt_policy_user_in_group(p, "mallory", "ops"));
    CHECK_STR(bt_policy_user_for(p, "slack", "U0ALICE"), "alice");
    CHECK(bt_policy_user_for(p, "slack", "u0alice") == NULL); /* ids are exact */
    CHECK_STR(bt_policy_user_for(p, "mattermost", "erin-mm"), "erin");
    CHECK_STR(bt_policy_user_for(p, "cli", "alice"), "alice");
    CHECK(bt_policy_user_for(p, "console", "alice") == NULL); /* only what is configured */
    CHECK(bt_policy_user_for(p, "irc", "alice") == NULL);
    CHECK(bt_policy_user_for(p, "console", NULL) == NULL);

    CHECK_STR(bt_risk_name(BT_RISK_HIGH), "high");
    enum bt_risk r = BT_RISK_LOW;
    CHECK(bt_risk_parse("critical", &r) && r == BT_RISK_CRITICAL);
    CHECK(!bt_risk_parse("severe", &r));
    CHECK(!bt_risk_parse(NULL, &r));
    bt_policy_free(p);
}

/* ---- configuration errors ------------------------------------------------- */

/* The base configuration split into parts a case may replace. */
static const char base_policy[] = POLICY_HEAD;
static const char base_rules[] = "  rules:\n"
                                 "    - name: db\n"
                                 "      match: {tool: database_drop}\n"
                                 "      level: 3\n";
static const char base_users[] =
    "users:\n"
    "  alice: {role: operator, groups: [ops], identities: {cli: alice}}\n"
    "  bob: {role: approver, groups: [approvers], identities: {cli: bob}}\n"
    "  carol: {role: approver, groups: [approvers], identities: {cli: carol}}\n"
    "  erin: {role: admin, groups: [admins], identities: {cli: erin}}\n";
static const char base_groups[] = "groups:\n  ops: {}\n  approvers: {}\n  admins: {}\n"
                                  "cli: {default_user: alice}\n";

struct config_case {
    const char *policy, *rules, *users, *groups; /* NULL: the base part */
    const char *marker;                          /* text on the line reported */
    const char *key;                             /* the dotted key reported */
    const char *message;                         /* a fragment of the message */
};

static const struct config_case config_cases[] = {
    {"policy:\n  levls: {low: 0}\n  approver_groups: [approvers]\n", NULL, NULL, NULL, "levls",
     "policy.levls", "unknown key (known keys: levels, raise"},
    {NULL, NULL,
     "users:\n  alice: {role: boss, groups: [ops]}\n  bob: {role: approver, groups: "
     "[approvers]}\n  carol: {role: admin, groups: [approvers]}\n",
     NULL, "boss", "users.alice.role", "unknown role 'boss'"},
    {NULL, "  rules:\n    - name: too high\n      match: {tool: database_drop}\n      level: 5\n",
     NULL, NULL, "level: 5", "policy.rules[0].level", "must be between 0 and 3, found 5"},
    {NULL, NULL,
     "users:\n  alice: {role: operator, groups: [ops, nope]}\n  bob: {role: approver, groups: "
     "[approvers]}\n  carol: {role: admin, groups: [approvers]}\n",
     NULL, "nope", "users.alice.groups", "unknown group 'nope'"},
    {NULL,
     "  rules:\n    - name: dba\n      match: {tool: database_drop}\n      approver_groups: "
     "[dbas]\n",
     NULL, NULL, "[dbas]", "policy.rules[0].approver_groups", "unknown group 'dbas'"},
    {NULL, NULL,
     "users:\n  alice: {role: operator, identities: {slack: U1}}\n  bob: {role: approver, "
     "groups: [approvers], identities: {slack: U2}}\n  carol: {role: admin, groups: [approvers],\n"
     "          identities: {slack: U1}}\n",
     NULL, "          identities: {slack: U1}}", "users.carol.identities.slack",
     "identity 'U1' on slack is already user alice's"},
    {NULL, NULL,
     "users:\n  alice: {role: operator, identities: {irc: alice}}\n  bob: {role: approver, "
     "groups: [approvers]}\n  carol: {role: admin, groups: [approvers]}\n",
     NULL, "irc", "users.alice.identities.irc", "unknown key (known keys: cli, console"},
    {NULL,
     "  rules:\n    - name: many\n      match: {tool: database_drop}\n      approvals_required: "
     "4\n",
     NULL, NULL, "approvals_required: 4", "policy.rules[0].approvals_required",
     "rule 'many' needs 4 approvers but only 3 users in its approver groups"},
    {"policy:\n  approvers:\n    3: 4\n  approver_groups: [approvers, admins]\n", NULL, NULL, NULL,
     "3: 4", "policy.approvers.3", "level 3 needs 4 approvers but only 3 users"},
    {"policy:\n  approvers: {3: 1}\n  approver_groups: [approvers]\n", NULL, NULL, NULL,
     "approvers: {3: 1}", "policy.approvers.3", "must be at least 2"},
    {NULL, "  rules:\n    - name: typo\n      match: {tool: databse_drop}\n      level: 3\n", NULL,
     NULL, "databse_drop", "policy.rules[0].match.tool", "'databse_drop' is not a tool"},
    {NULL,
     "  rules:\n    - name: typo\n      match:\n        enviroment: staging\n      level: 0\n",
     NULL, NULL, "enviroment", "policy.rules[0].match.enviroment",
     "unknown key (known keys: intent, tool, environment"},
    {NULL,
     "  rules:\n    - name: input\n      match:\n        inputs: {servce: nginx}\n      level: "
     "0\n",
     NULL, NULL, "servce", "policy.rules[0].match.inputs.servce", "no tool in tools.yaml"},
    {NULL, "  rules:\n    - name: risk\n      match:\n        min_risk: severe\n      level: 3\n",
     NULL, NULL, "severe", "policy.rules[0].match.min_risk", "unknown risk 'severe'"},
    {NULL,
     "  rules:\n    - name: role\n      match:\n        requester_role: [operator, root]\n      "
     "level: 0\n",
     NULL, NULL, "root", "policy.rules[0].match.requester_role", "unknown role 'root'"},
    {NULL,
     "  rules:\n    - name: both\n      match: {tool: database_drop}\n      level: 3\n      deny: "
     "no\n",
     NULL, NULL, "deny: no", "policy.rules[0].deny", "a deny rule refuses the request"},
    {NULL, "  rules:\n    - name: idle\n      match: {tool: database_drop}\n", NULL, NULL,
     "- name: idle", "policy.rules[0]", "the rule does nothing"},
    {NULL,
     "  rules:\n    - name: same\n      level: 3\n    - name: same\n      expiry_minutes: 3\n",
     NULL, NULL, "same\n      expiry", "policy.rules[1].name", "already called 'same'"},
    {"policy:\n  approver_groups: [approvers]\n  expiry_minutes: {2: 10}\n  remind_minutes:\n"
     "    2: 10\n",
     NULL, NULL, NULL, "2: 10\n", "policy.remind_minutes.2", "would never fire"},
    {"policy:\n  approver_groups: [approvers]\n  escalate: {after_minutes: {3: 5}, to: "
     "managers}\n",
     NULL, NULL, NULL, "managers", "policy.escalate.to", "unknown group 'managers'"},
    {"policy:\n  levels: {low: 0, medium: 1, high: 0, critical: 3}\n  approver_groups: "
     "[approvers]\n",
     NULL, NULL, NULL, "levels:", "policy.levels.high", "level 0 is below medium's level 1"},
    {"policy:\n  levels:\n    critical: 2\n  approver_groups: [approvers]\n", NULL, NULL, NULL,
     "critical: 2", "policy.levels.critical", "must be 3"},
    {"policy:\n  levels: {low: 0}\n", NULL, NULL, NULL, "levels: {low: 0}",
     "policy.approver_groups", "required, missing"},
    {"policy:\n  approver_groups: [approvers]\n  raise:\n    many_targets: {threshold: 1}\n", NULL,
     NULL, NULL, "many_targets", "policy.raise.many_targets.threshold", "between 2 and 100000"},
    {"policy:\n  approver_groups: [approvers]\n  expiry_minutes: {0: 5}\n", NULL, NULL, NULL,
     "{0: 5}", "policy.expiry_minutes.0", "unknown level '0'"},
    {NULL, NULL, NULL,
     "groups:\n  ops: {}\n  approvers: {}\n  admins: {}\ncli: {default_user: zed}\n", "zed",
     "cli.default_user", "'zed' is not a configured user"},
    {NULL, NULL, NULL, "groups:\n  ops: {}\n  approvers: {}\n  admins: {}\n  bad group: {}\n",
     "bad group", "groups.bad group", "a group name is"},
};

/* 1-based line of the first occurrence of marker in text. */
static int line_of(const char *text, const char *marker)
{
    const char *at = strstr(text, marker);
    if (!at)
        return -1;
    int line = 1;
    for (const char *s = text; s < at; s++)
        if (*s == '\n')
            line++;
    return line;
}

static void test_config_errors(void)
{
    /* the base itself is clean */
    char *text = bt_asprintf("%s%s%s%s", base_policy, base_rules, base_users, base_groups);
    bt_diag *d = bt_diag_new();
    bt_policy *p = policy_from_text(text, d);
    CHECK(p != NULL);
    CHECK_INT(bt_diag_count(d), 0);
    print_diag(d);
    bt_policy_free(p);
    bt_diag_free(d);
    free(text);

    for (size_t i = 0; i < sizeof config_cases / sizeof config_cases[0]; i++) {
        const struct config_case *c = &config_cases[i];
        /* A case that replaces `policy` supplies the whole section; rules
         * then only come from the case. */
        const char *rules = c->rules ? c->rules : c->policy ? "" : base_rules;
        text = bt_asprintf("%s%s%s%s", c->policy ? c->policy : base_policy, rules,
                           c->users ? c->users : base_users, c->groups ? c->groups : base_groups);
        char want[256];
        bt_fmt(want, sizeof want, "/baton.yaml:%d: %s: ", line_of(text, c->marker), c->key);
        d = bt_diag_new();
        p = policy_from_text(text, d);
        CHECK_MSG(p == NULL, "case %zu (%s) should fail", i, c->key);
        bool found = false;
        for (size_t k = 0; k < bt_diag_count(d); k++) {
            const char *msg = bt_diag_get(d, k);
            const char *at = strstr(msg, want);
            if (at && strstr(at, c->message))
                found = true;
        }
        CHECK_MSG(found, "case %zu: want \"%s%s\"", i, want, c->message);
        if (!found) {
            fprintf(stderr, "%s", text);
            print_diag(d);
        }
        bt_policy_free(p);
        bt_diag_free(d);
        free(text);
    }

    /* no policy section at all, and no baton.yaml at all */
    d = bt_diag_new();
    text = bt_asprintf("%s%s", base_users, base_groups);
    CHECK(policy_from_text(text, d) == NULL);
    CHECK(bt_diag_count(d) >= 1 && strstr(bt_diag_get(d, 0), "policy: required, missing"));
    free(text);
    bt_diag_free(d);
    d = bt_diag_new();
    CHECK(bt_policy_new(NULL, d) == NULL);
    CHECK_INT(bt_diag_count(d), 1);
    bt_diag_free(d);
}

int main(void)
{
    RUN(test_shipped_matrix);
    RUN(test_shipped_example);
    RUN(test_strictest_rule_wins);
    RUN(test_rule_lowers_only_where_it_fits);
    RUN(test_critical_is_always_3);
    RUN(test_raises);
    RUN(test_input_values);
    RUN(test_deny);
    RUN(test_approvals_and_groups);
    RUN(test_expiry);
    RUN(test_defaults);
    RUN(test_may_decide);
    RUN(test_users);
    RUN(test_config_errors);
    return bt_test_finish();
}
