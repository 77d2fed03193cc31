/*
 * Crash safety against the real binary:
 *   - kill -9 of a running `baton worker` while an approval is pending: the
 *     approval is still pending afterwards and can be decided;
 *   - kill -9 of the process running an approved step: afterwards the step
 *     and execution are interrupted, never re-run by a second click, the
 *     requester is told, and running it again needs a new approval.
 * The test configuration is the shipped one with service_restart replaced
 * by a slow command (sleep), so a step is reliably in flight when killed.
 */
#include <sqlite3.h>

#include "harness.h"
#include "test.h"

static char tmp[] = "/tmp/bt-crash-XXXXXX";
static char store[600];

#define BATON(...) run_in(NULL, NULL, (const char *const[]){__VA_ARGS__, NULL})
#define CFG "--config", cfgdir, "--store", store

static bool make_config(void)
{
    static const char *const edits[] = {"command: [systemctl, restart, '{service}']",
                                        "command: [sleep, '15']", NULL, NULL};
    return make_config_with(tmp, edits);
}

static json_t *ask_json(const char *user, const char *text, int want_code)
{
    struct out o = BATON(CFG, "ask", "--json", "--as", user, text);
    CHECK_MSG(o.code == want_code, "exit %d: %s %s", o.code, o.out, o.err);
    json_t *r = json_loads(o.out, 0, NULL);
    out_free(&o);
    return r;
}

static const char *jstr(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v ? v : "";
}

static json_t *status(const char *exec_id)
{
    struct out o = BATON("--store", store, "status", "--json", exec_id);
    json_t *r = json_loads(o.out, 0, NULL);
    out_free(&o);
    return r;
}

static void kill9(pid_t pid)
{
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
}

static char approval_id[64], exec_id[64];

static void test_pending_survives_kill9(void)
{
    pid_t worker = spawn_bg((const char *const[]){CFG, "worker", NULL});
    CHECK(worker > 0);
    json_t *r = ask_json("alice", "restart nginx on localhost", 4);
    bt_strlcpy(approval_id, jstr(r, "approval_id"), sizeof approval_id);
    bt_strlcpy(exec_id, jstr(json_object_get(r, "execution"), "execution_id"), sizeof exec_id);
    CHECK_INT(strlen(approval_id), 32);
    json_decref(r);
    usleep(300 * 1000); /* let the worker reach its loop */
    kill9(worker);

    struct out o = BATON(CFG, "approvals", "--json");
    CHECK_INT(o.code, 0);
    json_t *list = json_loads(o.out, 0, NULL);
    bool found = false;
    size_t i;
    json_t *a;
    json_array_foreach(list, i, a)
    {
        if (strcmp(jstr(a, "approval_id"), approval_id) == 0 &&
            strcmp(jstr(a, "state"), "pending") == 0)
            found = true;
    }
    CHECK_MSG(found, "approval %s not pending after kill -9: %s", approval_id, o.out);
    json_decref(list);
    out_free(&o);
}

static void test_running_step_interrupted_by_kill9(void)
{
    /* alice confirms her own level-1 request: the slow step starts */
    pid_t runner =
        spawn_bg((const char *const[]){CFG, "approve", approval_id, "--as", "alice", NULL});
    bool running = false;
    for (int i = 0; i < 200 && !running; i++) {
        usleep(100 * 1000);
        json_t *s = status(exec_id);
        json_t *step0 = json_array_get(json_object_get(s, "steps"), 0);
        running = strcmp(jstr(step0, "state"), "running") == 0;
        json_decref(s);
    }
    CHECK_MSG(running, "the step never started");
    kill9(runner);

    json_t *s = status(exec_id);
    CHECK_STR(jstr(s, "state"), "interrupted");
    CHECK_STR(jstr(json_array_get(json_object_get(s, "steps"), 0), "state"), "interrupted");
    json_decref(s);

    /* the requester is told, once */
    struct out o = BATON(CFG, "ask", "--as", "alice", "how many assets do we have?");
    CHECK_INT(o.code, 0);
    char short_id[9];
    bt_strlcpy(short_id, exec_id, sizeof short_id);
    CHECK_MSG(strstr(o.err, "Notice:") && strstr(o.err, short_id) && strstr(o.err, "interrupted"),
              "%s", o.err);
    out_free(&o);
    o = BATON(CFG, "ask", "--as", "alice", "how many assets do we have?");
    CHECK_MSG(strstr(o.err, "Notice:") == NULL, "told twice: %s", o.err);
    out_free(&o);

    /* a second click does not re-run it */
    o = BATON(CFG, "approve", approval_id, "--as", "alice");
    CHECK_MSG(strstr(o.out, "already") != NULL, "%s%s", o.out, o.err);
    out_free(&o);
    s = status(exec_id);
    CHECK_STR(jstr(s, "state"), "interrupted");
    json_decref(s);

    /* the audit log shows the execution started exactly once */
    sqlite3 *db = NULL;
    CHECK(sqlite3_open(store, &db) == SQLITE_OK);
    sqlite3_stmt *q = NULL;
    sqlite3_prepare_v2(db,
                       "SELECT count(*) FROM audit_log WHERE event = 'execution_started' AND "
                       "json_extract(detail_json, '$.execution_id') = ?",
                       -1, &q, NULL);
    sqlite3_bind_text(q, 1, exec_id, -1, SQLITE_STATIC);
    long long starts = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : -1;
    sqlite3_finalize(q);
    sqlite3_close(db);
    CHECK_INT(starts, 1);

    /* running it again means asking again: a new approval */
    json_t *r = ask_json("alice", "restart nginx on localhost", 4);
    CHECK(strcmp(jstr(r, "approval_id"), approval_id) != 0);
    json_decref(r);
}

int main(void)
{
    CHECK(mkdtemp(tmp) != NULL);
    bt_fmt(store, sizeof store, "%s/baton.db", tmp);
    CHECK(make_config());
    RUN(test_pending_survives_kill9);
    if (approval_id[0])
        RUN(test_running_step_interrupted_by_kill9);
    rm_tree(tmp);
    return bt_test_finish();
}
