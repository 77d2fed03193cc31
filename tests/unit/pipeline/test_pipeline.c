/* Stages A-E on the shipped configuration, against a temporary store. */
#include <stdlib.h>
#include <unistd.h>

#include <sqlite3.h>

#include "approvals/approvals.h"
#include "approvals/policy.h"
#include "bot/conf.h"
#include "bot/store/store.h"
#include "pipeline/pipeline.h"
#include "test.h"

static bt_config *cfg;
static bt_pipeline *pipe_;
static char dir[] = "/tmp/bt-pipeline-XXXXXX";
static char store_path[512];

static const char *s(const json_t *r, const char *key)
{
    const char *v = json_string_value(json_object_get(r, key));
    return v ? v : "";
}

static json_t *ask(const char *text, const char *user)
{
    return bt_pipeline_handle(pipe_, text, user, "test");
}

static void test_count_answers_with_real_numbers(void)
{
    json_t *r = ask("how many assets do we have?", "alice");
    CHECK_STR(s(r, "kind"), "answer");
    CHECK_STR(s(r, "intent"), "asset_count");
    CHECK_STR(s(r, "category"), "asset_management");
    CHECK_MSG(strstr(s(r, "text"), "You have 24 assets") != NULL, "%s", s(r, "text"));
    CHECK_MSG(strstr(s(r, "text"), "6 Windows workstations") != NULL, "%s", s(r, "text"));
    CHECK_STR(s(json_object_get(r, "execution"), "state"), "completed");
    CHECK_INT(json_integer_value(json_object_get(r, "approval_level")), 0);
    json_decref(r);
}

static void test_list_renders_table(void)
{
    json_t *r = ask("list all production web servers", "alice");
    CHECK_STR(s(r, "kind"), "answer");
    CHECK_MSG(strstr(s(r, "text"), "web-prd-01") && strstr(s(r, "text"), "web-prd-02") &&
                  !strstr(s(r, "text"), "web-stg-01"),
              "%s", s(r, "text"));
    json_t *table = json_object_get(r, "data");
    CHECK(json_array_size(json_object_get(table, "rows")) == 2);
    json_decref(r);
}

static void test_local_read_executes(void)
{
    json_t *r = ask("check disk space on localhost", "alice");
    CHECK_STR(s(r, "kind"), "answer");
    CHECK_MSG(strstr(s(r, "text"), "Filesystem") != NULL, "%s", s(r, "text"));
    json_decref(r);
}

static void test_remote_read_fails_honestly(void)
{
    json_t *r = ask("check disk space on web-01", "alice");
    CHECK_STR(s(r, "kind"), "error");
    CHECK_STR(s(r, "error"), "execution_failed");
    CHECK_MSG(strstr(s(r, "text"), "not reachable by the local runner") != NULL, "%s",
              s(r, "text"));
    json_decref(r);
}

static void test_change_waits_for_approval(void)
{
    json_t *r = ask("restart nginx on web-01", "alice");
    CHECK_STR(s(r, "kind"), "approval");
    CHECK_STR(s(r, "intent"), "service_restart");
    CHECK_INT(json_integer_value(json_object_get(r, "approval_level")), 1);
    CHECK_STR(s(r, "risk"), "medium");
    CHECK_INT(strlen(s(r, "approval_id")), 32);
    CHECK_INT(strlen(s(r, "plan_hash")), 64);
    CHECK_STR(s(json_object_get(r, "execution"), "state"), "pending_approval");

    bt_store *st = NULL;
    char err[BT_ERRLEN];
    CHECK(bt_store_open(store_path, &st, err, sizeof err) == BT_OK);
    json_t *ex = NULL;
    CHECK(bt_store_execution_get(st, s(json_object_get(r, "execution"), "execution_id"), &ex, err,
                                 sizeof err) == BT_OK);
    CHECK_STR(s(ex, "state"), "pending_approval");
    CHECK_INT(json_array_size(json_object_get(ex, "steps")), 0); /* nothing ran */
    json_t *ap = NULL;
    CHECK(bt_store_approval_get(st, s(r, "approval_id"), &ap, err, sizeof err) == BT_OK);
    CHECK_STR(s(ap, "state"), "pending");
    json_t *plan = NULL;
    CHECK(bt_store_plan_get(st, s(ap, "plan_id"), &plan, err, sizeof err) == BT_OK);
    CHECK_STR(s(plan, "sha256"), s(r, "plan_hash"));
    json_decref(plan);
    json_decref(ap);
    json_decref(ex);
    bt_store_close(st);
    json_decref(r);
}

static void test_levels_by_risk_and_environment(void)
{
    json_t *r = bt_pipeline_explain(pipe_, "deploy billing-api 1.2.3 to production", "alice");
    CHECK_STR(s(r, "kind"), "approval");
    CHECK_INT(json_integer_value(json_object_get(r, "approval_level")), 2);
    json_t *targets = json_object_get(json_object_get(r, "plan"), "targets");
    CHECK_INT(json_array_size(targets), 2);
    CHECK_STR(s(json_array_get(targets, 0), "name"), "api-prd-01");
    json_decref(r);

    r = bt_pipeline_explain(pipe_, "delete the orders database on db-prd-01", "alice");
    CHECK_STR(s(r, "kind"), "approval");
    CHECK_INT(json_integer_value(json_object_get(r, "approval_level")), 3);
    CHECK_STR(s(r, "risk"), "critical");
    json_decref(r);
}

static void test_viewer_refused(void)
{
    json_t *r = ask("restart nginx on web-01", "dave");
    CHECK_STR(s(r, "kind"), "error");
    CHECK_STR(s(r, "error"), "denied");
    json_decref(r);
}

static void test_clarify_unknown_help(void)
{
    json_t *r = ask("restart nginx", "alice");
    CHECK_STR(s(r, "kind"), "clarify");
    CHECK_STR(s(r, "text"), "On which host?");
    json_decref(r);

    r = ask("order me a pizza", "alice");
    CHECK_STR(s(r, "kind"), "unknown");
    CHECK(strstr(s(r, "text"), "You could try") != NULL);
    json_decref(r);

    r = ask("how do I restart a service?", "alice");
    CHECK_STR(s(r, "kind"), "answer");
    CHECK_STR(s(r, "intent"), "help");
    CHECK(json_is_null(json_object_get(r, "plan")));
    CHECK(json_object_get(r, "execution") == NULL);
    json_decref(r);

    r = ask("\xff\xfe broken", "alice");
    CHECK_STR(s(r, "kind"), "error");
    json_decref(r);
}

static void test_reminders_reach_approvers(void)
{
    json_t *r = ask("restart nginx on web-01", "alice");
    CHECK_STR(s(r, "kind"), "approval");
    const char *id = s(r, "approval_id");
    json_t *drain = bt_pipeline_notices(pipe_, "bob");
    json_decref(drain);

    /* level 1 reminds after 3 minutes and expires after 5 */
    json_t *ev = bt_pipeline_sweep(pipe_, bt_wall_ms() + 4 * 60 * 1000);
    CHECK(json_array_size(ev) >= 1);
    json_decref(ev);
    json_t *notes = bt_pipeline_notices(pipe_, "bob");
    bool reminded = false;
    size_t i;
    json_t *n;
    json_array_foreach(notes, i, n) reminded =
        reminded || (strstr(s(n, "text"), "Reminder") && strstr(s(n, "text"), id));
    CHECK_MSG(reminded, "bob was not reminded of %s", id);
    json_decref(notes);
    notes = bt_pipeline_notices(pipe_, "bob"); /* shown once */
    CHECK_INT(json_array_size(notes), 0);
    json_decref(notes);

    ev = bt_pipeline_sweep(pipe_, bt_wall_ms() + 6 * 60 * 1000);
    json_decref(ev);
    json_t *d = bt_pipeline_decide(pipe_, id, "alice", "approve", -1, "test", NULL);
    CHECK_STR(s(d, "kind"), "error");
    CHECK_MSG(strstr(s(d, "text"), "expired") != NULL, "%s", s(d, "text"));
    json_decref(d);

    bt_store *st = NULL;
    char err[BT_ERRLEN];
    CHECK(bt_store_open(store_path, &st, err, sizeof err) == BT_OK);
    json_t *ex = NULL;
    CHECK(bt_store_execution_get(st, s(json_object_get(r, "execution"), "execution_id"), &ex, err,
                                 sizeof err) == BT_OK);
    CHECK_STR(s(ex, "state"), "cancelled");
    json_decref(ex);
    bt_store_close(st);
    json_decref(r);
}

/* The decider died between committing an approval and starting its plan:
 * the next baton to start queues the plan and tells the requester. */
static void test_approved_but_unstarted_is_queued(void)
{
    json_t *r = ask("restart nginx on web-01", "alice");
    const char *exec_id = s(json_object_get(r, "execution"), "execution_id");
    bt_store *st = NULL;
    char err[BT_ERRLEN];
    CHECK(bt_store_open(store_path, &st, err, sizeof err) == BT_OK);
    bt_diag *d = bt_diag_new();
    bt_policy *pol = bt_policy_new(cfg, d);
    bt_approvals *ap = bt_approvals_new(st, pol, err, sizeof err);
    json_t *dec = bt_approvals_decide(ap, s(r, "approval_id"), "alice", "approve", -1, "test");
    CHECK_STR(s(dec, "run"), "plan"); /* ... and the process "dies" here */
    json_decref(dec);
    bt_approvals_free(ap);
    bt_policy_free(pol);
    bt_diag_free(d);

    /* within the grace period nothing is touched: the decider may be busy */
    d = bt_diag_new();
    bt_pipeline *second = bt_pipeline_new(cfg, store_path, d);
    bt_pipeline_free(second);
    json_t *ex = NULL;
    CHECK(bt_store_execution_get(st, exec_id, &ex, err, sizeof err) == BT_OK);
    CHECK_STR(s(ex, "state"), "pending_approval");
    json_decref(ex);

    sqlite3 *db = NULL;
    CHECK(sqlite3_open(store_path, &db) == SQLITE_OK);
    sqlite3_exec(db, "UPDATE approval_decisions SET ts_ms = ts_ms - 120000", NULL, NULL, NULL);
    sqlite3_close(db);
    second = bt_pipeline_new(cfg, store_path, d);
    CHECK(second != NULL);
    CHECK(bt_store_execution_get(st, exec_id, &ex, err, sizeof err) == BT_OK);
    CHECK_STR(s(ex, "state"), "queued");
    json_decref(ex);
    json_t *notes = bt_pipeline_notices(second, "alice");
    bool told = false;
    size_t i;
    json_t *n;
    json_array_foreach(notes, i, n) told = told || strstr(s(n, "text"), "now queued") != NULL;
    CHECK(told);
    json_decref(notes);
    bt_pipeline_free(second);
    bt_diag_free(d);
    bt_store_close(st);
    json_decref(r);
}

/* A level-3 release whose releaser died before running the step: the next
 * click on the same release runs it, and only once. */
static void test_released_step_that_never_ran(void)
{
    json_t *r = ask("delete the orders database on localhost", "alice");
    CHECK_INT(json_integer_value(json_object_get(r, "approval_level")), 3);
    const char *id = s(r, "approval_id");
    const char *exec_id = s(json_object_get(r, "execution"), "execution_id");
    bt_store *st = NULL;
    char err[BT_ERRLEN];
    CHECK(bt_store_open(store_path, &st, err, sizeof err) == BT_OK);
    bt_diag *d = bt_diag_new();
    bt_policy *pol = bt_policy_new(cfg, d);
    bt_approvals *ap = bt_approvals_new(st, pol, err, sizeof err);
    json_decref(bt_approvals_decide(ap, id, "carol", "approve", -1, "test"));
    json_decref(bt_approvals_decide(ap, id, "erin", "approve", -1, "test"));
    json_t *dec = bt_approvals_decide(ap, id, "bob", "approve", 0, "test");
    CHECK_STR(s(dec, "run"), "step"); /* ... and bob's process "dies" here */
    json_decref(dec);
    bt_approvals_free(ap);
    bt_policy_free(pol);
    bt_diag_free(d);

    json_t *again = bt_pipeline_decide(pipe_, id, "bob", "approve", 0, "test", NULL);
    json_t *ex = NULL;
    CHECK(bt_store_execution_get(st, exec_id, &ex, err, sizeof err) == BT_OK);
    const char *st0 = s(json_array_get(json_object_get(ex, "steps"), 0), "state");
    CHECK_MSG(strcmp(st0, "pending") != 0, "step 1 still %s: %s", st0, s(again, "text"));
    json_decref(ex);
    json_decref(again);

    /* a third click is only "already": the step does not run again */
    again = bt_pipeline_decide(pipe_, id, "bob", "approve", 0, "test", NULL);
    CHECK_MSG(strstr(s(again, "text"), "already") != NULL, "%s", s(again, "text"));
    CHECK(json_object_get(again, "execution") == NULL);
    json_decref(again);
    bt_store_close(st);
    json_decref(r);
}

static void test_audit_chain_holds(void)
{
    bt_store *st = NULL;
    char err[BT_ERRLEN];
    CHECK(bt_store_open(store_path, &st, err, sizeof err) == BT_OK);
    long long n = 0;
    CHECK_MSG(bt_store_audit_verify(st, &n, err, sizeof err) == BT_OK, "%s", err);
    CHECK(n >= 10);
    bt_store_close(st);
}

int main(void)
{
    CHECK(mkdtemp(dir) != NULL);
    bt_fmt(store_path, sizeof store_path, "%s/baton.db", dir);
    bt_diag *d = bt_diag_new();
    cfg = bt_config_load(BT_SOURCE_DIR "/config", d);
    pipe_ = cfg ? bt_pipeline_new(cfg, store_path, d) : NULL;
    for (size_t i = 0; i < bt_diag_count(d); i++)
        fprintf(stderr, "  %s\n", bt_diag_get(d, i));
    bt_diag_free(d);
    CHECK(pipe_ != NULL);
    if (pipe_) {
        RUN(test_count_answers_with_real_numbers);
        RUN(test_list_renders_table);
        RUN(test_local_read_executes);
        RUN(test_remote_read_fails_honestly);
        RUN(test_change_waits_for_approval);
        RUN(test_levels_by_risk_and_environment);
        RUN(test_viewer_refused);
        RUN(test_clarify_unknown_help);
        RUN(test_reminders_reach_approvers);
        RUN(test_approved_but_unstarted_is_queued);
        RUN(test_released_step_that_never_ran);
        RUN(test_audit_chain_holds);
    }
    bt_pipeline_free(pipe_);
    bt_config_free(cfg);
    char cmd[600];
    bt_fmt(cmd, sizeof cmd, "%s/baton.db", dir);
    unlink(cmd);
    bt_fmt(cmd, sizeof cmd, "%s/baton.db-wal", dir);
    unlink(cmd);
    bt_fmt(cmd, sizeof cmd, "%s/baton.db-shm", dir);
    unlink(cmd);
    rmdir(dir);
    return bt_test_finish();
}
