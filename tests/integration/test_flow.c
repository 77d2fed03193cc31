/*
 * Every approval level end to end through the `baton` command, as people
 * would drive it: level 1 confirmed by the requester, level 2 refused to
 * the requester and a viewer and approved by an approver (then run by the
 * background worker), level 3 approved by two approvers and released step
 * by step, and a deny. The test configuration replaces the commands of the
 * tools involved with /usr/bin/true so the plans really run on localhost.
 */
#include "harness.h"
#include "test.h"

static char tmp[] = "/tmp/bt-flow-XXXXXX";
static char store[600];

#define BATON(...) run_in(NULL, NULL, (const char *const[]){__VA_ARGS__, NULL})
#define CFG "--config", cfgdir, "--store", store

static const char *jstr(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v ? v : "";
}

/* Ask as user; returns the answer (new) and checks the exit code. */
static json_t *ask(const char *user, const char *text, int want)
{
    struct out o = BATON(CFG, "ask", "--json", "--as", user, text);
    CHECK_MSG(o.code == want, "%s: exit %d, want %d: %s %s", text, o.code, want, o.out, o.err);
    json_t *r = json_loads(o.out, 0, NULL);
    out_free(&o);
    return r;
}

/* approve/deny as user (step 0 = the plan); checks the exit code and that
 * the output holds `says`. */
static void decide(const char *cmd, const char *id, const char *user, int step, int want,
                   const char *says)
{
    char stepbuf[16];
    bt_fmt(stepbuf, sizeof stepbuf, "%d", step);
    struct out o = step ? BATON(CFG, cmd, id, "--step", stepbuf, "--as", user)
                        : BATON(CFG, cmd, id, "--as", user);
    CHECK_MSG(o.code == want, "%s %s as %s: exit %d, want %d: %s %s", cmd, id, user, o.code, want,
              o.out, o.err);
    CHECK_MSG(strstr(o.out, says) != NULL, "%s as %s: output lacks \"%s\": %s", cmd, user, says,
              o.out);
    out_free(&o);
}

static json_t *status(const char *exec_id)
{
    struct out o = BATON("--store", store, "status", "--json", exec_id);
    json_t *r = json_loads(o.out, 0, NULL);
    out_free(&o);
    return r;
}

static const char *step_state(const json_t *st, size_t i)
{
    return jstr(json_array_get(json_object_get(st, "steps"), i), "state");
}

static void test_level1_confirmed_by_requester(void)
{
    json_t *r = ask("alice", "restart nginx on localhost", 4);
    CHECK_INT(json_integer_value(json_object_get(r, "approval_level")), 1);
    const char *id = jstr(r, "approval_id");
    decide("approve", id, "dave", 0, 7, "");
    decide("approve", id, "alice", 0, 0, "service_restart on localhost");
    json_t *s = status(jstr(json_object_get(r, "execution"), "execution_id"));
    CHECK_STR(jstr(s, "state"), "completed");
    json_decref(s);
    decide("approve", id, "alice", 0, 0, "already");
    json_decref(r);
}

static void test_level2_needs_another_approver(void)
{
    json_t *r = ask("alice", "deploy billing-api 1.2.3 on localhost", 4);
    CHECK_INT(json_integer_value(json_object_get(r, "approval_level")), 2);
    const char *id = jstr(r, "approval_id");
    decide("approve", id, "alice", 0, 7, "may not approve their own request");
    decide("approve", id, "dave", 0, 7, "viewer");
    decide("approve", id, "bob", 0, 0, "background");
    const char *exec_id = jstr(json_object_get(r, "execution"), "execution_id");
    json_t *s = status(exec_id);
    CHECK_STR(jstr(s, "state"), "queued");
    json_decref(s);
    struct out o = BATON(CFG, "worker", "--once");
    CHECK_INT(o.code, 0);
    out_free(&o);
    s = status(exec_id);
    CHECK_STR(jstr(s, "state"), "completed");
    CHECK_INT(json_array_size(json_object_get(s, "steps")), 4);
    json_decref(s);
    json_decref(r);
}

static void test_level3_step_by_step(void)
{
    json_t *r = ask("alice", "delete the orders database on localhost", 4);
    CHECK_INT(json_integer_value(json_object_get(r, "approval_level")), 3);
    const char *id = jstr(r, "approval_id");
    const char *exec_id = jstr(json_object_get(r, "execution"), "execution_id");
    decide("approve", id, "bob", 0, 4, "1 of 2");
    decide("approve", id, "bob", 0, 0, "already");
    decide("approve", id, "erin", 0, 4, "Step 1 waits to be released");
    decide("approve", id, "alice", 1, 7, "own request");
    decide("approve", id, "erin", 2, 7, "before step 1");
    decide("approve", id, "erin", 1, 0, "Step 2 waits to be released");
    json_t *s = status(exec_id);
    CHECK_STR(step_state(s, 0), "completed");
    CHECK_STR(step_state(s, 1), "pending");
    json_decref(s);
    decide("approve", id, "bob", 2, 0, "the last");
    s = status(exec_id);
    CHECK_STR(jstr(s, "state"), "completed");
    CHECK_STR(step_state(s, 1), "completed");
    json_decref(s);
    json_decref(r);
}

/* via: the same request through another connector: localhost's disk
 * space through Ansible (ansible-core, for real, connection local) instead
 * of the local runner, end to end through `baton ask`. */
static void test_via_ansible(void)
{
    char path[700];
    bt_fmt(path, sizeof path, "%s/baton.yaml", cfgdir);
    char *y =
        replace(slurp(path), "connectors:\n", "connectors:\n  automation:\n    type: ansible\n");
    CHECK(y && strstr(y, "type: ansible"));
    spit(path, y ? y : "");
    free(y);
    bt_fmt(path, sizeof path, "%s/tools.yaml", cfgdir);
    char *t = replace(slurp(path),
                      "    command: [df, -h, -x, tmpfs, -x, devtmpfs, -x, squashfs, -x, overlay]\n",
                      "    command: [df, -h, -x, tmpfs, -x, devtmpfs, -x, squashfs, -x, overlay]\n"
                      "    via:\n"
                      "      local:\n"
                      "        connector: automation\n"
                      "        operation: module\n"
                      "        module: ansible.builtin.command\n"
                      "        args: {argv: [/usr/bin/df, -h, /]}\n"
                      "        timeout_s: 60\n");
    CHECK(t && strstr(t, "module: ansible.builtin.command"));
    spit(path, t ? t : "");
    free(t);
    struct out o = BATON("--config", cfgdir, "check");
    CHECK_MSG(o.code == 0, "check: %s %s", o.out, o.err);
    out_free(&o);
    json_t *r = ask("alice", "check disk space on localhost", 0);
    const json_t *step =
        json_array_get(json_object_get(json_object_get(r, "execution"), "steps"), 0);
    const json_t *res = json_object_get(step, "result");
    CHECK_STR(jstr(step, "state"), "completed");
    CHECK_STR(jstr(res, "module"), "ansible.builtin.command");
    CHECK_MSG(strstr(jstr(res, "stdout"), "Filesystem") != NULL, "stdout: %s", jstr(res, "stdout"));
    json_decref(r);
}

static void test_deny_stops_the_plan(void)
{
    json_t *r = ask("alice", "restart nginx on localhost", 4);
    const char *id = jstr(r, "approval_id");
    decide("deny", id, "bob", 0, 0, "Denied by bob");
    decide("approve", id, "alice", 0, 7, "denied");
    json_t *s = status(jstr(json_object_get(r, "execution"), "execution_id"));
    CHECK_STR(jstr(s, "state"), "cancelled");
    json_decref(s);
    json_decref(r);

    r = ask("alice", "restart nginx on localhost", 4);
    decide("cancel", jstr(r, "approval_id"), "bob", 0, 7, "");
    decide("cancel", jstr(r, "approval_id"), "alice", 0, 0, "Cancelled");
    json_decref(r);
}

int main(void)
{
    CHECK(mkdtemp(tmp) != NULL);
    bt_fmt(store, sizeof store, "%s/baton.db", tmp);
    static const char *const edits[] = {
        "command: [systemctl, restart, '{service}']",
        "command: ['true']",
        "command: [systemctl, status, --no-pager, --lines=5, '{service}']",
        "command: ['true']",
        "command: [apt-get, install, -y, --allow-downgrades, '{app}={version}']",
        "command: ['true']",
        "command: [pg_dump, --format=custom, '--file=/var/backups/baton/{database}.dump', "
        "'{database}']",
        "command: ['true']",
        "command: [dropdb, '{database}']",
        "command: ['true']",
        NULL,
        NULL};
    CHECK(make_config_with(tmp, edits));
    RUN(test_level1_confirmed_by_requester);
    RUN(test_level2_needs_another_approver);
    RUN(test_level3_step_by_step);
    RUN(test_deny_stops_the_plan);
    RUN(test_via_ansible);
    rm_tree(tmp);
    return bt_test_finish();
}
