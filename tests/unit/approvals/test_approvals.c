/*
 * Unit tests for approvals/approvals.c and approvals/token.c: the approval
 * dialogue over a real SQLite store and the shipped policy (config/): alice
 * operator, bob and carol approvers, dave viewer, erin admin.
 *
 * Every fixture is built with the store API the way the pipeline builds it:
 * a request, a plan (canonical JSON and its sha256), an execution with its
 * steps, and an approval whose requirement is bt_policy_evaluate's answer
 * plus "requester" and "plan_hash".
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <sqlite3.h>

#include "approvals/approvals.h"
#include "approvals/policy.h"
#include "bot/conf.h"
#include "bot/store/store.h"
#include "bot/util.h"
#include "test.h"

/* ---- fixtures ------------------------------------------------------------ */

static char g_dir[64];
static char g_path[512]; /* SQLite file, or BATON_TEST_STORE's PostgreSQL URL */
static bt_config *g_cfg;
static bt_policy *g_policy;

struct fx {
    char approval_id[33], plan_id[33], exec_id[33], request_id[33];
    int level;
    int64_t created_ms;
};

enum kind { L1_DEV_RESTART, L2_PROD_RESTART, L3_DROP };

static bt_store *open_store(void)
{
    bt_store *st = NULL;
    char err[BT_ERRLEN];
    enum bt_err e = bt_store_open(g_path, &st, err, sizeof err);
    CHECK_MSG(e == BT_OK, "%s", err);
    return st;
}

static bt_approvals *new_approvals(bt_store *st)
{
    char err[BT_ERRLEN] = "";
    bt_approvals *a = bt_approvals_new(st, g_policy, err, sizeof err);
    CHECK_MSG(a != NULL, "%s", err);
    if (a)
        bt_approvals_set_users(a, bt_config_get(g_cfg, "users"));
    return a;
}

static json_t *step_obj(int index, const char *tool, const char *host, const char *env,
                        const char *risk, const char *key, const char *value)
{
    return json_pack("{s:i, s:s, s:{s:s, s:s}, s:s, s:s, s:s}", "index", index, "tool", tool,
                     "inputs", "host", host, key, value, "target", host, "environment", env, "risk",
                     risk);
}

/* Build and store a plan of `kind` requested by requester, with nsteps
 * steps (level 3 only; others have one) and the approval for it. expires_ms
 * 0: from the requirement's expires_s. */
static void fixture(bt_store *st, enum kind kind, const char *requester, int nsteps,
                    int64_t expires_ms, struct fx *f)
{
    char err[BT_ERRLEN];
    memset(f, 0, sizeof *f);
    bt_random_id(f->approval_id);
    bt_random_id(f->plan_id);
    bt_random_id(f->exec_id);
    bt_random_id(f->request_id);
    json_t *steps = json_array(), *targets = json_array();
    const char *intent = "service_restart";
    if (kind == L1_DEV_RESTART) {
        json_array_append_new(steps, step_obj(0, "service_restart", "web-01", "development",
                                              "medium", "service", "nginx"));
        json_array_append_new(
            targets, json_pack("{s:s, s:s}", "name", "web-01", "environment", "development"));
    } else if (kind == L2_PROD_RESTART) {
        json_array_append_new(steps, step_obj(0, "service_restart", "web-prd-01", "production",
                                              "medium", "service", "nginx"));
        json_array_append_new(
            targets, json_pack("{s:s, s:s}", "name", "web-prd-01", "environment", "production"));
    } else {
        intent = "database_drop";
        for (int i = 0; i < nsteps; i++) {
            char db[16];
            bt_fmt(db, sizeof db, "db%d", i);
            json_array_append_new(steps, step_obj(i, "database_drop", "db-dev-01", "development",
                                                  "critical", "database", db));
        }
        json_array_append_new(
            targets, json_pack("{s:s, s:s}", "name", "db-dev-01", "environment", "development"));
    }
    json_t *plan =
        json_pack("{s:s, s:s, s:o, s:o}", "intent", intent, "risk",
                  kind == L3_DROP ? "critical" : "medium", "steps", steps, "targets", targets);
    json_object_set_new(plan, "plan_id", json_string(f->plan_id));
    json_t *req = bt_policy_evaluate(g_policy, plan, requester);
    f->level = (int)json_integer_value(json_object_get(req, "level"));
    char *canon = bt_json_canonical(plan);
    char sha[65];
    bt_sha256_hex(canon, strlen(canon), sha);
    json_object_set_new(req, "requester", json_string(requester));
    json_object_set_new(req, "plan_hash", json_string(sha));
    CHECK(bt_store_request_add(st, f->request_id, requester, "console", "do it", err, sizeof err) ==
          BT_OK);
    CHECK_MSG(bt_store_plan_add(st, f->plan_id, f->request_id, canon, sha,
                                kind == L3_DROP ? "critical" : "medium", f->level, err,
                                sizeof err) == BT_OK,
              "%s", err);
    CHECK(bt_store_execution_add(st, f->exec_id, f->plan_id, "pending_approval", err, sizeof err) ==
          BT_OK);
    for (size_t i = 0; i < json_array_size(steps); i++)
        CHECK(
            bt_store_step_add(st, f->exec_id, (int)i,
                              json_string_value(json_object_get(json_array_get(steps, i), "tool")),
                              "pending", err, sizeof err) == BT_OK);
    if (!expires_ms)
        expires_ms = bt_wall_ms() + 1000 * json_integer_value(json_object_get(req, "expires_s"));
    f->created_ms = bt_wall_ms();
    CHECK_MSG(bt_store_approval_add(st, f->approval_id, f->plan_id, f->exec_id, f->level, req,
                                    expires_ms, err, sizeof err) == BT_OK,
              "%s", err);
    json_t *ap = NULL;
    if (bt_store_approval_get(st, f->approval_id, &ap, err, sizeof err) == BT_OK)
        f->created_ms = json_integer_value(json_object_get(ap, "created_ms"));
    json_decref(ap);
    free(canon);
    json_decref(req);
    json_decref(plan);
}

static const char *s_of(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static const char *state_of(const json_t *res)
{
    return s_of(json_object_get(res, "approval"), "state");
}

/* Check a decide/cancel answer: status, run, and that reason contains
 * `want` (NULL: anything). Frees res. */
#define EXPECT(res, status_, run_, want)                                                           \
    do {                                                                                           \
        json_t *r_ = (res);                                                                        \
        if (getenv("BT_TEST_VERBOSE"))                                                             \
            fprintf(stderr, "%d: %s [%s] %s\n", __LINE__, s_of(r_, "status"), s_of(r_, "run"),     \
                    s_of(r_, "reason"));                                                           \
        CHECK_STR(s_of(r_, "status"), status_);                                                    \
        CHECK_STR(s_of(r_, "run"), run_);                                                          \
        const char *w_ = (want);                                                                   \
        if (w_)                                                                                    \
            CHECK_MSG(strstr(s_of(r_, "reason"), w_) != NULL, "reason \"%s\" lacks \"%s\"",        \
                      s_of(r_, "reason"), w_);                                                     \
        json_decref(r_);                                                                           \
    } while (0)

/* Audit entries of event for approval id. */
static int audit_count(bt_store *st, const char *event, const char *approval_id)
{
    json_t *all = NULL;
    char err[BT_ERRLEN];
    if (bt_store_audit_list(st, 0, 100000, &all, err, sizeof err) != BT_OK)
        return -1;
    int n = 0;
    size_t i;
    json_t *e;
    json_array_foreach(all, i, e)
    {
        if (strcmp(s_of(e, "event"), event) == 0 &&
            (!approval_id ||
             strcmp(s_of(json_object_get(e, "detail"), "approval_id"), approval_id) == 0))
            n++;
    }
    json_decref(all);
    return n;
}

static size_t decision_count(bt_store *st, const char *approval_id)
{
    json_t *d = NULL;
    char err[BT_ERRLEN];
    if (bt_store_approval_decisions(st, approval_id, &d, err, sizeof err) != BT_OK)
        return 999;
    size_t n = json_array_size(d);
    json_decref(d);
    return n;
}

static bool list_has(const json_t *arr, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), s) == 0)
            return true;
    }
    return false;
}

/* SQL on a plain connection, outside the store: 0 (SQLITE_OK) when it ran. */
static int raw_exec(const char *sql)
{
    if (strncmp(g_path, "postgres", 8) == 0) {
        PGconn *c = PQconnectdb(g_path);
        PGresult *r = PQexec(c, sql);
        int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : 1;
        PQclear(r);
        PQfinish(c);
        return rc;
    }
    sqlite3 *db = NULL;
    int rc = sqlite3_open(g_path, &db);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    sqlite3_close(db);
    return rc;
}

/* ---- level 1 ------------------------------------------------------------- */

static void test_level1(void)
{
    bt_store *st = open_store();
    bt_approvals *a = new_approvals(st);
    struct fx f;
    fixture(st, L1_DEV_RESTART, "alice", 1, 0, &f);
    CHECK_INT(f.level, 1);

    json_t *g = bt_approvals_get(a, f.approval_id);
    CHECK_STR(s_of(g, "state"), "pending");
    CHECK_STR(s_of(g, "requester"), "alice");
    CHECK_INT(json_integer_value(json_object_get(g, "approvals_required")), 1);
    CHECK(list_has(json_object_get(g, "may_decide"), "alice"));
    CHECK(list_has(json_object_get(g, "may_decide"), "bob"));
    CHECK(!list_has(json_object_get(g, "may_decide"), "dave"));
    CHECK(json_is_null(json_object_get(g, "next_step")));
    json_decref(g);

    /* Viewers and strangers never decide, even at level 1. */
    EXPECT(bt_approvals_decide(a, f.approval_id, "dave", "approve", -1, "console"), "refused",
           "none", "dave is a viewer");
    EXPECT(bt_approvals_decide(a, f.approval_id, "mallory", "approve", -1, "console"), "refused",
           "none", "mallory is not a configured user");
    EXPECT(bt_approvals_decide(a, f.approval_id, "alice", "approve", 0, "console"), "refused",
           "none", "whole plan");
    EXPECT(bt_approvals_decide(a, f.approval_id, "alice", "maybe", -1, "console"), "refused",
           "none", "unknown decision");
    EXPECT(bt_approvals_decide(a, f.approval_id, NULL, "approve", -1, "console"), "refused", "none",
           "no user");
    EXPECT(bt_approvals_decide(a, "nope", "alice", "approve", -1, "console"), "refused", "none",
           "no approval");
    CHECK_INT(decision_count(st, f.approval_id), 0);

    /* The requester confirms: the plan runs. */
    json_t *r = bt_approvals_decide(a, f.approval_id, "alice", "approve", -1, "console");
    CHECK_STR(state_of(r), "approved");
    CHECK(json_is_null(json_object_get(r, "step")));
    EXPECT(r, "recorded", "plan", "approved by alice");

    /* Second click: who and when, never a second run. */
    r = bt_approvals_decide(a, f.approval_id, "alice", "approve", -1, "slack");
    CHECK_STR(state_of(r), "approved");
    EXPECT(r, "already", "none", "alice approved this plan at ");
    /* Anyone else: closed. */
    EXPECT(bt_approvals_decide(a, f.approval_id, "bob", "approve", -1, "console"), "refused",
           "none", "already complete (alice approved this plan at");
    EXPECT(bt_approvals_decide(a, f.approval_id, "bob", "deny", -1, "console"), "refused", "none",
           "already complete");
    CHECK_INT(decision_count(st, f.approval_id), 1);
    CHECK_INT(audit_count(st, "approval_decided", f.approval_id), 1);
    CHECK(audit_count(st, "approval_refused", f.approval_id) >= 4);

    /* An approver may confirm a level 1 too. */
    struct fx f2;
    fixture(st, L1_DEV_RESTART, "alice", 1, 0, &f2);
    EXPECT(bt_approvals_decide(a, f2.approval_id, "bob", "approve", -1, "cli"), "recorded", "plan",
           NULL);
    bt_approvals_free(a);
    bt_store_close(st);
}

/* ---- level 2 ------------------------------------------------------------- */

static void test_level2(void)
{
    bt_store *st = open_store();
    bt_approvals *a = new_approvals(st);
    struct fx f;
    fixture(st, L2_PROD_RESTART, "alice", 1, 0, &f);
    CHECK_INT(f.level, 2);
    json_t *g = bt_approvals_get(a, f.approval_id);
    CHECK(!list_has(json_object_get(g, "may_decide"), "alice"));
    CHECK(list_has(json_object_get(g, "may_decide"), "carol"));
    json_decref(g);

    EXPECT(bt_approvals_decide(a, f.approval_id, "alice", "approve", -1, "console"), "refused",
           "none", "alice may not approve their own request at level 2");
    EXPECT(bt_approvals_decide(a, f.approval_id, "dave", "approve", -1, "console"), "refused",
           "none", "viewer");
    EXPECT(bt_approvals_decide(a, f.approval_id, "mallory", "approve", -1, "console"), "refused",
           "none", "not a configured user");
    /* The requester cannot deny either (they can cancel). */
    EXPECT(bt_approvals_decide(a, f.approval_id, "alice", "deny", -1, "console"), "refused", "none",
           "their own request");
    CHECK_INT(decision_count(st, f.approval_id), 0);

    json_t *r = bt_approvals_decide(a, f.approval_id, "bob", "approve", -1, "console");
    CHECK_STR(state_of(r), "approved");
    CHECK(list_has(json_object_get(json_object_get(r, "approval"), "approved_by"), "bob"));
    EXPECT(r, "recorded", "plan", "approved by bob");
    EXPECT(bt_approvals_decide(a, f.approval_id, "bob", "approve", -1, "console"), "already",
           "none", "bob approved this plan at");
    EXPECT(bt_approvals_decide(a, f.approval_id, "carol", "approve", -1, "console"), "refused",
           "none", "already complete");
    EXPECT(bt_approvals_cancel(a, f.approval_id, "alice", "console"), "refused", "none",
           "already complete");

    /* Deny stops the plan; nothing is decided after. */
    struct fx d;
    fixture(st, L2_PROD_RESTART, "alice", 1, 0, &d);
    r = bt_approvals_decide(a, d.approval_id, "carol", "deny", -1, "slack");
    CHECK_STR(state_of(r), "denied");
    EXPECT(r, "recorded", "none", "denied by carol");
    EXPECT(bt_approvals_decide(a, d.approval_id, "bob", "approve", -1, "console"), "refused",
           "none", "already denied (carol denied this plan at");
    EXPECT(bt_approvals_decide(a, d.approval_id, "carol", "deny", -1, "console"), "already", "none",
           "carol denied this plan");
    CHECK_INT(audit_count(st, "approval_decided", d.approval_id), 1);
    bt_approvals_free(a);
    bt_store_close(st);
}

/* ---- level 3 ------------------------------------------------------------- */

static void set_step(bt_store *st, const struct fx *f, int step, const char *state)
{
    char err[BT_ERRLEN];
    CHECK_MSG(bt_store_step_set(st, f->exec_id, step, state, NULL, err, sizeof err) == BT_OK, "%s",
              err);
}

static void test_level3(void)
{
    bt_store *st = open_store();
    bt_approvals *a = new_approvals(st);
    struct fx f;
    fixture(st, L3_DROP, "alice", 3, 0, &f);
    CHECK_INT(f.level, 3);

    EXPECT(bt_approvals_decide(a, f.approval_id, "alice", "approve", -1, "console"), "refused",
           "none", "alice may not approve their own request at level 3");
    json_t *r = bt_approvals_decide(a, f.approval_id, "bob", "approve", -1, "console");
    CHECK_STR(state_of(r), "pending");
    EXPECT(r, "recorded", "none", "approval 1 of 2");
    /* The same approver twice does not count twice. */
    r = bt_approvals_decide(a, f.approval_id, "bob", "approve", -1, "slack");
    CHECK_STR(state_of(r), "pending");
    CHECK_INT(json_array_size(json_object_get(json_object_get(r, "approval"), "approved_by")), 1);
    EXPECT(r, "already", "none", "bob approved this plan");
    /* ... nor changes their mind on the same question. */
    EXPECT(bt_approvals_decide(a, f.approval_id, "bob", "deny", -1, "console"), "refused", "none",
           "cannot be changed");
    EXPECT(bt_approvals_decide(a, f.approval_id, "bob", "approve", 0, "console"), "refused", "none",
           "needs 2 approvals first (1 so far)");
    json_t *g = bt_approvals_get(a, f.approval_id);
    CHECK(!list_has(json_object_get(g, "may_decide"), "bob"));
    CHECK(list_has(json_object_get(g, "may_decide"), "carol"));
    CHECK(!list_has(json_object_get(g, "may_decide"), "alice"));
    json_decref(g);

    r = bt_approvals_decide(a, f.approval_id, "carol", "approve", -1, "console");
    CHECK_STR(state_of(r), "releasing");
    CHECK_INT(json_integer_value(json_object_get(json_object_get(r, "approval"), "next_step")), 0);
    EXPECT(r, "recorded", "none", "starting with step 0");
    EXPECT(bt_approvals_decide(a, f.approval_id, "erin", "approve", -1, "console"), "refused",
           "none", "already has its 2 approvals");
    EXPECT(bt_approvals_cancel(a, f.approval_id, "alice", "console"), "refused", "none",
           "can no longer be cancelled");

    /* Releases: never the requester, in order, each after the last completed. */
    EXPECT(bt_approvals_decide(a, f.approval_id, "alice", "approve", 0, "console"), "refused",
           "none", "alice may not approve their own request");
    EXPECT(bt_approvals_decide(a, f.approval_id, "bob", "approve", 1, "console"), "refused", "none",
           "cannot be released before step 1");
    EXPECT(bt_approvals_decide(a, f.approval_id, "bob", "approve", 3, "console"), "refused", "none",
           "there is no step 4");
    r = bt_approvals_decide(a, f.approval_id, "bob", "approve", 0, "console");
    CHECK_INT(json_integer_value(json_object_get(r, "step")), 0);
    CHECK_STR(state_of(r), "releasing");
    EXPECT(r, "recorded", "step", "step 1 released by bob");
    EXPECT(bt_approvals_decide(a, f.approval_id, "carol", "approve", 0, "console"), "refused",
           "none", "step 1 was already released: bob released step 1 at");
    EXPECT(bt_approvals_decide(a, f.approval_id, "bob", "approve", 0, "console"), "already", "none",
           "bob released step 1");
    EXPECT(bt_approvals_decide(a, f.approval_id, "carol", "approve", 1, "console"), "refused",
           "none", "step 1 has not completed yet (it is pending)");
    set_step(st, &f, 0, "running");
    EXPECT(bt_approvals_decide(a, f.approval_id, "carol", "approve", 1, "console"), "refused",
           "none", "it is running");
    set_step(st, &f, 0, "completed");
    r = bt_approvals_decide(a, f.approval_id, "carol", "approve", 1, "console");
    CHECK_INT(json_integer_value(json_object_get(r, "step")), 1);
    CHECK_INT(json_integer_value(json_object_get(json_object_get(r, "approval"), "next_step")), 2);
    EXPECT(r, "recorded", "step", "step 2 released by carol");
    set_step(st, &f, 1, "completed");
    r = bt_approvals_decide(a, f.approval_id, "erin", "approve", 2, "console");
    CHECK_STR(state_of(r), "approved");
    CHECK_INT(json_integer_value(json_object_get(r, "step")), 2);
    json_t *rel = json_object_get(json_object_get(r, "approval"), "released_steps");
    CHECK_INT(json_array_size(rel), 3);
    EXPECT(r, "recorded", "step", "(the last step)");
    EXPECT(bt_approvals_decide(a, f.approval_id, "bob", "deny", 2, "console"), "refused", "none",
           "already complete");
    CHECK_INT(audit_count(st, "approval_decided", f.approval_id), 5);

    /* A step whose previous one failed cannot be released. */
    struct fx x;
    fixture(st, L3_DROP, "alice", 2, 0, &x);
    json_decref(bt_approvals_decide(a, x.approval_id, "bob", "approve", -1, "cli"));
    json_decref(bt_approvals_decide(a, x.approval_id, "erin", "approve", -1, "cli"));
    EXPECT(bt_approvals_decide(a, x.approval_id, "carol", "approve", 0, "cli"), "recorded", "step",
           NULL);
    set_step(st, &x, 0, "failed");
    EXPECT(bt_approvals_decide(a, x.approval_id, "carol", "approve", 1, "cli"), "refused", "none",
           "step 1 did not complete (it is failed)");

    /* Deny at any point, also while releasing, stops the plan. */
    struct fx y;
    fixture(st, L3_DROP, "bob", 2, 0, &y);
    EXPECT(bt_approvals_decide(a, y.approval_id, "bob", "approve", -1, "cli"), "refused", "none",
           "bob may not approve their own request at level 3");
    json_decref(bt_approvals_decide(a, y.approval_id, "carol", "approve", -1, "cli"));
    json_decref(bt_approvals_decide(a, y.approval_id, "erin", "approve", -1, "cli"));
    EXPECT(bt_approvals_decide(a, y.approval_id, "carol", "approve", 0, "cli"), "recorded", "step",
           NULL);
    r = bt_approvals_decide(a, y.approval_id, "erin", "deny", 1, "cli");
    CHECK_STR(state_of(r), "denied");
    EXPECT(r, "recorded", "none", "denied by erin");
    set_step(st, &y, 0, "completed");
    EXPECT(bt_approvals_decide(a, y.approval_id, "carol", "approve", 1, "cli"), "refused", "none",
           "already denied (erin denied step 2 at");
    bt_approvals_free(a);
    bt_store_close(st);
}

/* ---- cancel and expiry ---------------------------------------------------- */

static void test_cancel(void)
{
    bt_store *st = open_store();
    bt_approvals *a = new_approvals(st);
    struct fx f;
    fixture(st, L2_PROD_RESTART, "alice", 1, 0, &f);
    EXPECT(bt_approvals_cancel(a, f.approval_id, "bob", "console"), "refused", "none",
           "only the requester (alice) may cancel");
    EXPECT(bt_approvals_cancel(a, f.approval_id, "dave", "console"), "refused", "none",
           "only the requester");
    json_t *r = bt_approvals_cancel(a, f.approval_id, "alice", "console");
    CHECK_STR(state_of(r), "cancelled");
    EXPECT(r, "recorded", "none", "cancelled by alice");
    EXPECT(bt_approvals_cancel(a, f.approval_id, "alice", "cli"), "already", "none",
           "alice cancelled this request at");
    EXPECT(bt_approvals_decide(a, f.approval_id, "bob", "approve", -1, "console"), "refused",
           "none", "already cancelled (alice cancelled this request at");
    /* cancel is not a decision name */
    EXPECT(bt_approvals_decide(a, f.approval_id, "alice", "cancel", -1, "console"), "refused",
           "none", "unknown decision");
    CHECK_INT(audit_count(st, "approval_cancelled", f.approval_id), 1);
    bt_approvals_free(a);
    bt_store_close(st);
}

static void test_expired(void)
{
    bt_store *st = open_store();
    bt_approvals *a = new_approvals(st);
    struct fx f;
    fixture(st, L2_PROD_RESTART, "alice", 1, bt_wall_ms() - 1000, &f);
    json_t *r = bt_approvals_decide(a, f.approval_id, "bob", "approve", -1, "console");
    CHECK_STR(state_of(r), "expired");
    EXPECT(r, "refused", "none", "expired at");
    EXPECT(bt_approvals_decide(a, f.approval_id, "carol", "approve", -1, "console"), "refused",
           "none", "the request has to be made again");
    EXPECT(bt_approvals_cancel(a, f.approval_id, "alice", "console"), "refused", "none", "expired");
    CHECK_INT(decision_count(st, f.approval_id), 0);
    CHECK_INT(audit_count(st, "approval_expired", f.approval_id), 1);
    bt_approvals_free(a);
    bt_store_close(st);
}

/* ---- tokens ------------------------------------------------------------- */

static bool url_safe(const char *t)
{
    for (const char *c = t; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '-' || *c == '_' || *c == '.'))
            return false;
    return true;
}

/* A copy of t with its field-th '.'-separated field replaced by value. */
static char *with_field(const char *t, int field, const char *value)
{
    bt_buf b = BT_BUF_INIT(0);
    int i = 0;
    const char *start = t;
    for (const char *c = t;; c++) {
        if (*c == '.' || *c == '\0') {
            if (i)
                bt_buf_puts(&b, ".");
            if (i == field)
                bt_buf_puts(&b, value);
            else
                bt_buf_append(&b, start, (size_t)(c - start));
            i++;
            start = c + 1;
            if (!*c)
                break;
        }
    }
    return bt_buf_steal(&b);
}

static char *field_of(const char *t, int field)
{
    const char *start = t;
    int i = 0;
    for (const char *c = t;; c++)
        if (*c == '.' || *c == '\0') {
            if (i++ == field)
                return bt_strndup(start, (size_t)(c - start));
            if (!*c)
                return bt_strdup("");
            start = c + 1;
        }
}

static void test_tokens(void)
{
    bt_store *st = open_store();
    bt_approvals *a = new_approvals(st);
    struct fx f, other;
    fixture(st, L2_PROD_RESTART, "alice", 1, 0, &f);
    fixture(st, L2_PROD_RESTART, "alice", 1, 0, &other);

    char *tok = bt_approvals_token(a, f.approval_id, -1, "approve");
    CHECK(tok != NULL);
    if (!tok)
        return;
    CHECK(strlen(tok) <= 512);
    CHECK(url_safe(tok));
    CHECK(bt_approvals_token(a, "nope", -1, "approve") == NULL);
    CHECK(bt_approvals_token(a, f.approval_id, -1, "maybe") == NULL);
    CHECK(bt_approvals_token(a, f.approval_id, -2, "approve") == NULL);

    /* Forged: random bytes, and a well-formed token signed with another key. */
    char junk[65];
    bt_random_id(junk);
    bt_random_id(junk + 32);
    EXPECT(bt_approvals_decide_token(a, junk, "bob", "slack"), "refused", "none", "malformed");
    EXPECT(bt_approvals_decide_token(a, "", "bob", "slack"), "refused", "none", "malformed");
    EXPECT(bt_approvals_decide_token(a, NULL, "bob", "slack"), "refused", "none", "malformed");
    char *mac = field_of(tok, 5);
    char fake_mac[44];
    bt_strlcpy(fake_mac, mac, sizeof fake_mac);
    fake_mac[0] = fake_mac[0] == 'A' ? 'B' : 'A';
    char *forged = with_field(tok, 5, fake_mac);
    EXPECT(bt_approvals_decide_token(a, forged, "bob", "slack"), "refused", "none",
           "forged or altered");
    free(forged);
    free(mac);
    CHECK(setenv("BATON_SECRET", "another-secret-of-at-least-32-bytes!!", 1) == 0);
    bt_approvals *b = new_approvals(st);
    CHECK(unsetenv("BATON_SECRET") == 0);
    char *foreign = b ? bt_approvals_token(b, f.approval_id, -1, "approve") : NULL;
    CHECK(foreign != NULL);
    EXPECT(bt_approvals_decide_token(a, foreign, "bob", "slack"), "refused", "none",
           "forged or altered");
    free(foreign);
    bt_approvals_free(b);

    /* Altered: another step, another decision, another approval, another
     * expiry, one character of the id. */
    char *alt = with_field(tok, 2, "0");
    EXPECT(bt_approvals_decide_token(a, alt, "bob", "slack"), "refused", "none",
           "forged or altered");
    free(alt);
    alt = with_field(tok, 3, "d");
    EXPECT(bt_approvals_decide_token(a, alt, "bob", "slack"), "refused", "none",
           "forged or altered");
    free(alt);
    char *other_tok = bt_approvals_token(a, other.approval_id, -1, "approve");
    char *other_id = field_of(other_tok, 1);
    alt = with_field(tok, 1, other_id);
    EXPECT(bt_approvals_decide_token(a, alt, "bob", "slack"), "refused", "none",
           "forged or altered");
    free(alt);
    free(other_id);
    alt = with_field(tok, 4, "99999999999999");
    EXPECT(bt_approvals_decide_token(a, alt, "bob", "slack"), "refused", "none",
           "forged or altered");
    free(alt);
    alt = bt_strdup(tok);
    alt[5] = alt[5] == 'A' ? 'B' : 'A';
    json_t *r = bt_approvals_decide_token(a, alt, "bob", "slack");
    CHECK_STR(s_of(r, "status"), "refused");
    json_decref(r);
    free(alt);
    CHECK_INT(decision_count(st, f.approval_id), 0);
    CHECK_INT(decision_count(st, other.approval_id), 0);

    /* The genuine token: whoever clicks is checked as themselves. */
    EXPECT(bt_approvals_decide_token(a, tok, "alice", "slack"), "refused", "none",
           "their own request");
    r = bt_approvals_decide_token(a, tok, "bob", "slack");
    CHECK_STR(state_of(r), "approved");
    EXPECT(r, "recorded", "plan", "approved by bob");
    /* Replayed: by the same person, "already"; by anyone else after the
     * approval closed, refused. */
    EXPECT(bt_approvals_decide_token(a, tok, "bob", "slack"), "already", "none",
           "bob approved this plan at");
    EXPECT(bt_approvals_decide_token(a, tok, "carol", "slack"), "refused", "none",
           "already complete");
    CHECK_INT(decision_count(st, f.approval_id), 1);
    /* A token for one approval never decides another. */
    EXPECT(bt_approvals_decide_token(a, other_tok, "bob", "slack"), "recorded", "plan", NULL);
    CHECK_INT(decision_count(st, f.approval_id), 1);
    free(other_tok);

    /* Expired token. */
    struct fx e;
    fixture(st, L2_PROD_RESTART, "alice", 1, bt_wall_ms() - 1, &e);
    char *etok = bt_approvals_token(a, e.approval_id, -1, "approve");
    r = bt_approvals_decide_token(a, etok, "bob", "slack");
    CHECK_STR(state_of(r), "expired");
    EXPECT(r, "refused", "none", "token expired at");
    CHECK_INT(audit_count(st, "approval_expired", e.approval_id), 1);
    free(etok);

    /* Level 3: a release token is used once; for a released step it is refused. */
    struct fx l3;
    fixture(st, L3_DROP, "alice", 2, 0, &l3);
    char *t_plan = bt_approvals_token(a, l3.approval_id, -1, "approve");
    char *t_rel0 = bt_approvals_token(a, l3.approval_id, 0, "approve");
    char *t_deny1 = bt_approvals_token(a, l3.approval_id, 1, "deny");
    EXPECT(bt_approvals_decide_token(a, t_rel0, "bob", "slack"), "refused", "none",
           "needs 2 approvals first");
    EXPECT(bt_approvals_decide_token(a, t_plan, "bob", "slack"), "recorded", "none", NULL);
    EXPECT(bt_approvals_decide_token(a, t_plan, "carol", "slack"), "recorded", "none", NULL);
    r = bt_approvals_decide_token(a, t_rel0, "bob", "slack");
    CHECK_INT(json_integer_value(json_object_get(r, "step")), 0);
    EXPECT(r, "recorded", "step", NULL);
    EXPECT(bt_approvals_decide_token(a, t_rel0, "bob", "slack"), "already", "none", NULL);
    EXPECT(bt_approvals_decide_token(a, t_rel0, "carol", "slack"), "refused", "none",
           "already released");
    r = bt_approvals_decide_token(a, t_deny1, "carol", "slack");
    CHECK_STR(state_of(r), "denied");
    EXPECT(r, "recorded", "none", NULL);
    EXPECT(bt_approvals_decide_token(a, t_deny1, "erin", "slack"), "refused", "none",
           "already denied");

    /* Neither the token nor the key is ever in the audit log. */
    json_t *all = NULL;
    char err[BT_ERRLEN];
    CHECK(bt_store_audit_list(st, 0, 100000, &all, err, sizeof err) == BT_OK);
    char *text = json_dumps(all, 0);
    char *mac_field = field_of(t_rel0, 5);
    CHECK(text && !strstr(text, mac_field));
    mac_field[0] = '\0';
    free(mac_field);
    mac_field = field_of(tok, 5);
    CHECK(text && !strstr(text, mac_field));
    CHECK(text && !strstr(text, "approvals.token_secret"));
    CHECK(audit_count(st, "approval_refused", NULL) > 10);
    free(mac_field);
    free(text);
    json_decref(all);
    free(t_plan);
    free(t_rel0);
    free(t_deny1);
    free(tok);
    bt_approvals_free(a);
    bt_store_close(st);
}

static void test_secret(void)
{
    bt_store *st = open_store();
    char err[BT_ERRLEN] = "";
    CHECK(setenv("BATON_SECRET", "short", 1) == 0);
    bt_approvals *a = bt_approvals_new(st, g_policy, err, sizeof err);
    CHECK(a == NULL);
    CHECK_MSG(strstr(err, "BATON_SECRET is 5 bytes") != NULL, "%s", err);
    CHECK(strstr(err, "short") == NULL);
    CHECK(unsetenv("BATON_SECRET") == 0);
    /* Two dialogues on one store agree on the generated key. */
    bt_approvals *x = new_approvals(st), *y = new_approvals(st);
    struct fx f;
    fixture(st, L1_DEV_RESTART, "alice", 1, 0, &f);
    char *t = bt_approvals_token(x, f.approval_id, -1, "approve");
    EXPECT(bt_approvals_decide_token(y, t, "alice", "cli"), "recorded", "plan", NULL);
    free(t);
    bt_approvals_free(x);
    bt_approvals_free(y);
    bt_store_close(st);
}

/* ---- plan hash ------------------------------------------------------------- */

static void test_plan_changed(void)
{
    bt_store *st = open_store();
    bt_approvals *a = new_approvals(st);
    struct fx f;
    fixture(st, L2_PROD_RESTART, "alice", 1, 0, &f);
    char *tok = bt_approvals_token(a, f.approval_id, -1, "approve");
    char *sql = bt_asprintf("UPDATE plans SET canonical_json = replace(canonical_json, 'nginx', "
                            "'sshd') WHERE plan_id = '%s'",
                            f.plan_id);
    CHECK_INT(raw_exec(sql), SQLITE_OK);
    free(sql);
    EXPECT(bt_approvals_decide(a, f.approval_id, "bob", "approve", -1, "console"), "refused",
           "none", "the plan changed after it was shown");
    EXPECT(bt_approvals_decide_token(a, tok, "bob", "slack"), "refused", "none",
           "the plan changed after it was shown");
    CHECK_INT(decision_count(st, f.approval_id), 0);
    CHECK_INT(audit_count(st, "approval_refused", f.approval_id), 2);
    free(tok);

    /* A plan re-hashed consistently but different from what was shown: the
     * approval is bound to the old hash. */
    struct fx g;
    fixture(st, L2_PROD_RESTART, "alice", 1, 0, &g);
    sql = bt_asprintf("UPDATE plans SET canonical_json = '{}', sha256 = "
                      "'44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a' "
                      "WHERE plan_id = '%s'",
                      g.plan_id);
    CHECK_INT(raw_exec(sql), SQLITE_OK);
    free(sql);
    EXPECT(bt_approvals_decide(a, g.approval_id, "bob", "approve", -1, "console"), "refused",
           "none", "this approval is bound to plan");
    bt_approvals_free(a);
    bt_store_close(st);
}

/* ---- time ------------------------------------------------------------------ */

static json_t *events_for(json_t *events, const char *approval_id)
{
    json_t *out = json_array();
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e)
    {
        if (strcmp(s_of(e, "approval_id"), approval_id) == 0)
            json_array_append(out, e);
    }
    json_decref(events);
    return out;
}

static void test_sweep(void)
{
    bt_store *st = open_store();
    bt_approvals *a = new_approvals(st);
    struct fx f;
    fixture(st, L2_PROD_RESTART, "alice", 1, 0, &f); /* remind 8, escalate 12, expire 15 min */
    int64_t t0 = f.created_ms, min = 60 * 1000;

    json_t *ev = events_for(bt_approvals_sweep(a, t0 + 7 * min), f.approval_id);
    CHECK_INT(json_array_size(ev), 0);
    json_decref(ev);
    ev = events_for(bt_approvals_sweep(a, t0 + 9 * min), f.approval_id);
    CHECK_INT(json_array_size(ev), 1);
    json_t *e = json_array_get(ev, 0);
    CHECK_STR(s_of(e, "type"), "reminder");
    CHECK_INT(json_integer_value(json_object_get(e, "level")), 2);
    json_t *n = json_object_get(e, "notify");
    CHECK(list_has(n, "bob") && list_has(n, "carol") && list_has(n, "erin"));
    CHECK(!list_has(n, "alice") && !list_has(n, "dave"));
    json_decref(ev);
    ev = events_for(bt_approvals_sweep(a, t0 + 10 * min), f.approval_id);
    CHECK_INT(json_array_size(ev), 0); /* once */
    json_decref(ev);

    ev = events_for(bt_approvals_sweep(a, t0 + 13 * min), f.approval_id);
    CHECK_INT(json_array_size(ev), 1);
    e = json_array_get(ev, 0);
    CHECK_STR(s_of(e, "type"), "escalation");
    CHECK_STR(s_of(e, "group"), "admins");
    CHECK(list_has(json_object_get(e, "notify"), "erin"));
    CHECK_INT(json_array_size(json_object_get(e, "notify")), 1);
    json_decref(ev);
    ev = events_for(bt_approvals_sweep(a, t0 + 14 * min), f.approval_id);
    CHECK_INT(json_array_size(ev), 0);
    json_decref(ev);

    /* Still decidable before the expiry (the sweep's clock is not the
     * dialogue's: a decision uses the wall clock). */
    json_t *g = bt_approvals_get(a, f.approval_id);
    CHECK_STR(s_of(g, "state"), "pending");
    json_decref(g);

    ev = events_for(bt_approvals_sweep(a, t0 + 16 * min), f.approval_id);
    CHECK_INT(json_array_size(ev), 1);
    e = json_array_get(ev, 0);
    CHECK_STR(s_of(e, "type"), "expired");
    CHECK(list_has(json_object_get(e, "notify"), "alice"));
    json_decref(ev);
    ev = events_for(bt_approvals_sweep(a, t0 + 17 * min), f.approval_id);
    CHECK_INT(json_array_size(ev), 0);
    json_decref(ev);
    EXPECT(bt_approvals_decide(a, f.approval_id, "bob", "approve", -1, "console"), "refused",
           "none", "expired at");
    CHECK_INT(audit_count(st, "approval_reminder", f.approval_id), 1);
    CHECK_INT(audit_count(st, "approval_escalated", f.approval_id), 1);
    CHECK_INT(audit_count(st, "approval_expired", f.approval_id), 1);

    /* Level 1 never escalates; everything due at once comes together. */
    struct fx l1;
    fixture(st, L1_DEV_RESTART, "alice", 1, 0, &l1);
    ev = events_for(bt_approvals_sweep(a, l1.created_ms + 4 * min), l1.approval_id);
    CHECK_INT(json_array_size(ev), 1);
    CHECK_STR(s_of(json_array_get(ev, 0), "type"), "reminder");
    CHECK(list_has(json_object_get(json_array_get(ev, 0), "notify"), "alice"));
    json_decref(ev);
    bt_approvals_free(a);
    bt_store_close(st);
}

/* ---- durability and concurrency -------------------------------------------- */

static void test_durability(void)
{
    bt_store *st = open_store();
    bt_approvals *a = new_approvals(st);
    struct fx f;
    fixture(st, L3_DROP, "alice", 2, 0, &f);
    EXPECT(bt_approvals_decide(a, f.approval_id, "bob", "approve", -1, "console"), "recorded",
           "none", NULL);
    char *tok = bt_approvals_token(a, f.approval_id, -1, "approve");
    /* Gone without a goodbye: nothing but the store survives. */
    bt_approvals_free(a);
    bt_store_close(st);

    st = open_store();
    a = new_approvals(st);
    json_t *pending = bt_approvals_list_pending(a);
    json_t *mine = NULL;
    size_t i;
    json_t *p;
    json_array_foreach(pending, i, p)
    {
        if (strcmp(s_of(p, "approval_id"), f.approval_id) == 0)
            mine = p;
    }
    CHECK(mine != NULL);
    CHECK_STR(s_of(mine, "state"), "pending");
    CHECK(list_has(json_object_get(mine, "approved_by"), "bob"));
    json_decref(pending);
    EXPECT(bt_approvals_decide(a, f.approval_id, "bob", "approve", -1, "console"), "already",
           "none", NULL);
    json_t *r = bt_approvals_decide_token(a, tok, "carol", "slack");
    CHECK_STR(state_of(r), "releasing");
    EXPECT(r, "recorded", "none", NULL);
    /* Releasing approvals are still listed; closed ones are not. */
    pending = bt_approvals_list_pending(a);
    bool listed = false;
    json_array_foreach(pending, i, p)
    {
        listed |= strcmp(s_of(p, "approval_id"), f.approval_id) == 0;
        CHECK(strcmp(s_of(p, "state"), "pending") == 0 ||
              strcmp(s_of(p, "state"), "releasing") == 0);
    }
    CHECK(listed);
    json_decref(pending);
    free(tok);
    bt_approvals_free(a);
    bt_store_close(st);
}

struct racer {
    const char *approval_id;
    const char *user;
    pthread_barrier_t *barrier;
    json_t *result;
};

static void *race(void *arg)
{
    struct racer *r = arg;
    bt_store *st = NULL;
    char err[BT_ERRLEN];
    if (bt_store_open(g_path, &st, err, sizeof err) != BT_OK) {
        pthread_barrier_wait(r->barrier);
        return NULL;
    }
    bt_approvals *a = bt_approvals_new(st, g_policy, err, sizeof err);
    pthread_barrier_wait(r->barrier);
    if (a)
        r->result = bt_approvals_decide(a, r->approval_id, r->user, "approve", -1, "console");
    bt_approvals_free(a);
    bt_store_close(st);
    return NULL;
}

/* Two handles (as two processes would have), two approvers, one moment. */
static void race_pair(const char *approval_id, const char *u1, const char *u2, json_t **r1,
                      json_t **r2)
{
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, 2);
    struct racer x = {approval_id, u1, &barrier, NULL}, y = {approval_id, u2, &barrier, NULL};
    pthread_t tx, ty;
    CHECK(pthread_create(&tx, NULL, race, &x) == 0);
    CHECK(pthread_create(&ty, NULL, race, &y) == 0);
    pthread_join(tx, NULL);
    pthread_join(ty, NULL);
    pthread_barrier_destroy(&barrier);
    *r1 = x.result;
    *r2 = y.result;
}

static int count_status(json_t *r1, json_t *r2, const char *status)
{
    return (r1 && strcmp(s_of(r1, "status"), status) == 0) +
           (r2 && strcmp(s_of(r2, "status"), status) == 0);
}

static void test_concurrent(void)
{
    bt_store *st = open_store();
    bt_approvals *a = new_approvals(st); /* the key exists before the racers start */
    for (int round = 0; round < 8; round++) {
        /* Level 2: the first approval completes it; exactly one "plan". */
        struct fx f;
        fixture(st, L2_PROD_RESTART, "alice", 1, 0, &f);
        json_t *r1, *r2;
        race_pair(f.approval_id, "bob", "carol", &r1, &r2);
        CHECK(r1 && r2);
        CHECK_INT(count_status(r1, r2, "recorded"), 1);
        CHECK_INT(count_status(r1, r2, "refused"), 1);
        int plans = (r1 && strcmp(s_of(r1, "run"), "plan") == 0) +
                    (r2 && strcmp(s_of(r2, "run"), "plan") == 0);
        CHECK_INT(plans, 1);
        CHECK_INT(decision_count(st, f.approval_id), 1);
        CHECK_INT(audit_count(st, "approval_decided", f.approval_id), 1);
        json_decref(r1);
        json_decref(r2);

        /* Level 3 with one approval in: exactly one moves it to releasing. */
        struct fx g;
        fixture(st, L3_DROP, "alice", 2, 0, &g);
        json_decref(bt_approvals_decide(a, g.approval_id, "bob", "approve", -1, "cli"));
        race_pair(g.approval_id, "carol", "erin", &r1, &r2);
        CHECK_INT(count_status(r1, r2, "recorded"), 1);
        CHECK_INT(decision_count(st, g.approval_id), 2);
        json_t *v = bt_approvals_get(a, g.approval_id);
        CHECK_STR(s_of(v, "state"), "releasing");
        json_decref(v);
        json_decref(r1);
        json_decref(r2);

        /* The same person on two connections: one recorded, one "already". */
        struct fx h;
        fixture(st, L2_PROD_RESTART, "alice", 1, 0, &h);
        race_pair(h.approval_id, "bob", "bob", &r1, &r2);
        CHECK_INT(count_status(r1, r2, "recorded"), 1);
        CHECK_INT(count_status(r1, r2, "already"), 1);
        CHECK_INT(decision_count(st, h.approval_id), 1);
        json_decref(r1);
        json_decref(r2);
    }
    char err[BT_ERRLEN];
    long long entries = 0;
    CHECK_MSG(bt_store_audit_verify(st, &entries, err, sizeof err) == BT_OK, "%s", err);
    CHECK(entries > 0);
    bt_approvals_free(a);
    bt_store_close(st);
}

/* ---- the store op itself ----------------------------------------------------- */

static enum bt_err bad_change(void *ctx, const json_t *ap, struct bt_store_approval_change *ch,
                              char *err, size_t errlen)
{
    (void)ap;
    (void)err;
    (void)errlen;
    ch->state = ctx ? (const char *)ctx : "approved";
    ch->user = "bob";
    ch->decision = ctx ? "approve" : "shrug";
    return BT_OK;
}

static void test_store_update(void)
{
    bt_store *st = open_store();
    struct fx f;
    fixture(st, L2_PROD_RESTART, "alice", 1, 0, &f);
    char err[BT_ERRLEN];
    /* A bad change is refused as a whole. */
    CHECK_INT(bt_store_approval_update(st, f.approval_id, bad_change, NULL, err, sizeof err),
              BT_EINVAL);
    CHECK_INT(bt_store_approval_update(st, f.approval_id, bad_change, "sleeping", err, sizeof err),
              BT_EINVAL);
    CHECK_INT(decision_count(st, f.approval_id), 0);
    CHECK_INT(bt_store_approval_update(st, "nope", bad_change, "approved", err, sizeof err),
              BT_ENOENT);
    CHECK_INT(bt_store_approval_update(st, f.approval_id, bad_change, "approved", err, sizeof err),
              BT_OK);
    /* One decision per person per step, also at the store. */
    CHECK_INT(bt_store_approval_update(st, f.approval_id, bad_change, "approved", err, sizeof err),
              BT_EINVAL);
    CHECK_INT(decision_count(st, f.approval_id), 1);
    bt_store_close(st);
}

int main(void)
{
    CHECK(unsetenv("BATON_SECRET") == 0);
    bt_strlcpy(g_dir, "/tmp/bt_approvals_XXXXXX", sizeof g_dir);
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    const char *url = getenv("BATON_TEST_STORE"); /* tests/pg/pg_cluster.sh run */
    if (url && *url)
        bt_strlcpy(g_path, url, sizeof g_path);
    else
        bt_fmt(g_path, sizeof g_path, "%s/store.db", g_dir);
    bt_diag *d = bt_diag_new();
    g_cfg = bt_config_load(BT_SOURCE_DIR "/config", d);
    g_policy = g_cfg ? bt_policy_new(g_cfg, d) : NULL;
    for (size_t i = 0; i < bt_diag_count(d); i++)
        fprintf(stderr, "diag: %s\n", bt_diag_get(d, i));
    bt_diag_free(d);
    CHECK(g_policy != NULL);
    if (!g_policy)
        return bt_test_finish();

    RUN(test_level1);
    RUN(test_level2);
    RUN(test_level3);
    RUN(test_cancel);
    RUN(test_expired);
    RUN(test_tokens);
    RUN(test_secret);
    RUN(test_plan_changed);
    RUN(test_sweep);
    RUN(test_durability);
    RUN(test_concurrent);
    RUN(test_store_update);

    bt_policy_free(g_policy);
    bt_config_free(g_cfg);
    const char *files[] = {"store.db", "store.db-wal", "store.db-shm"};
    for (size_t i = 0; i < 3; i++) {
        char p[160];
        bt_fmt(p, sizeof p, "%s/%s", g_dir, files[i]);
        (void)unlink(p);
    }
    (void)rmdir(g_dir);
    return bt_test_finish();
}
