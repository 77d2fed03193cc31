/* The circuit breaker's state machine (connectors/breaker.c), driven by a
 * fake clock so nothing sleeps; then the breaker in bt_connectors_invoke's
 * path. This unit test reaches into connectors_int.h on purpose: the breaker
 * is folder-internal and its clock is only injectable there. */
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bot/conf.h"
#include "connectors/connectors.h"
#include "connectors/connectors_int.h"
#include "test.h"

static int64_t fake_now;

static int64_t fake_clock(void *ctx)
{
    return *(int64_t *)ctx;
}

typedef struct bt_connectors__breaker breaker;

static enum bt_err call(breaker *b, enum bt_err outcome, char *err, size_t errlen)
{
    struct bt_connectors__ticket t;
    enum bt_err e = bt_connectors__breaker_enter(b, &t, err, errlen);
    if (e != BT_OK)
        return e;
    bt_connectors__breaker_leave(b, &t, outcome);
    return outcome;
}

static enum bt_connectors__breaker_state state_of(breaker *b)
{
    struct bt_connectors__breaker_info i;
    bt_connectors__breaker_info(b, &i);
    return i.state;
}

static void test_opens_after_consecutive_failures(void)
{
    fake_now = 1000;
    breaker *b = bt_connectors__breaker_new("local", 3, 30000, fake_clock, &fake_now);
    char err[BT_ERRLEN];
    CHECK_INT(call(b, BT_ETIMEOUT, err, sizeof err), BT_ETIMEOUT);
    CHECK_INT(call(b, BT_EUNAVAIL, err, sizeof err), BT_EUNAVAIL);
    CHECK_INT(state_of(b), BT_CONNECTORS__BREAKER_CLOSED);
    /* A non-transient outcome resets the count: failures must be in a row. */
    CHECK_INT(call(b, BT_ECONNECTOR, err, sizeof err), BT_ECONNECTOR);
    CHECK_INT(call(b, BT_ETIMEOUT, err, sizeof err), BT_ETIMEOUT);
    CHECK_INT(call(b, BT_ETIMEOUT, err, sizeof err), BT_ETIMEOUT);
    CHECK_INT(state_of(b), BT_CONNECTORS__BREAKER_CLOSED);
    struct bt_connectors__breaker_info info;
    bt_connectors__breaker_info(b, &info);
    CHECK_INT(info.failures, 2);
    CHECK_INT(call(b, BT_ETIMEOUT, err, sizeof err), BT_ETIMEOUT);
    CHECK_INT(state_of(b), BT_CONNECTORS__BREAKER_OPEN);

    /* Open: fails fast, names the connector, the count and the wait. */
    fake_now += 3000;
    err[0] = '\0';
    CHECK_INT(call(b, BT_OK, err, sizeof err), BT_EUNAVAIL);
    CHECK_STR(err, "connector 'local' is unavailable (circuit open after 3 failures; retrying in "
                   "27 s)");
    bt_connectors__breaker_info(b, &info);
    CHECK_INT(info.retry_in_ms, 27000);
    CHECK_INT(info.times_opened, 1);
    CHECK_INT(info.failures, 3);
    fake_now += 26500; /* 500 ms left: rounds up */
    CHECK_INT(call(b, BT_OK, err, sizeof err), BT_EUNAVAIL);
    CHECK(strstr(err, "retrying in 1 s") != NULL);
    bt_connectors__breaker_free(b);
}

static void test_half_open_single_probe(void)
{
    fake_now = 0;
    breaker *b = bt_connectors__breaker_new("api", 2, 10000, fake_clock, &fake_now);
    char err[BT_ERRLEN];
    call(b, BT_EUNAVAIL, err, sizeof err);
    call(b, BT_EUNAVAIL, err, sizeof err);
    CHECK_INT(state_of(b), BT_CONNECTORS__BREAKER_OPEN);
    fake_now = 10000;
    CHECK_INT(state_of(b), BT_CONNECTORS__BREAKER_HALF_OPEN);

    /* Exactly one probe: a second caller while it runs fails fast. */
    struct bt_connectors__ticket probe, other;
    CHECK_INT(bt_connectors__breaker_enter(b, &probe, err, sizeof err), BT_OK);
    CHECK(probe.probe);
    CHECK_INT(bt_connectors__breaker_enter(b, &other, err, sizeof err), BT_EUNAVAIL);
    CHECK(strstr(err, "connector 'api'") != NULL && strstr(err, "half-open") != NULL);
    /* The probe fails: open again for a whole cooldown. */
    fake_now = 10500;
    bt_connectors__breaker_leave(b, &probe, BT_ETIMEOUT);
    CHECK_INT(state_of(b), BT_CONNECTORS__BREAKER_OPEN);
    struct bt_connectors__breaker_info info;
    bt_connectors__breaker_info(b, &info);
    CHECK_INT(info.retry_in_ms, 10000);
    CHECK_INT(info.times_opened, 2);
    fake_now = 19000;
    CHECK_INT(call(b, BT_OK, err, sizeof err), BT_EUNAVAIL);

    /* Next probe succeeds: closed, count reset. */
    fake_now = 20500;
    CHECK_INT(bt_connectors__breaker_enter(b, &probe, err, sizeof err), BT_OK);
    CHECK(probe.probe);
    bt_connectors__breaker_leave(b, &probe, BT_OK);
    CHECK_INT(state_of(b), BT_CONNECTORS__BREAKER_CLOSED);
    bt_connectors__breaker_info(b, &info);
    CHECK_INT(info.failures, 0);
    CHECK_INT(call(b, BT_OK, err, sizeof err), BT_OK);
    /* One failure after closing does not reopen (threshold 2). */
    CHECK_INT(call(b, BT_EUNAVAIL, err, sizeof err), BT_EUNAVAIL);
    CHECK_INT(state_of(b), BT_CONNECTORS__BREAKER_CLOSED);
    bt_connectors__breaker_free(b);
}

static void test_probe_with_answer_closes(void)
{
    /* A probe that fails in a way that shows the service answered (a
     * command that exits non-zero, a refusal) closes the circuit. */
    fake_now = 0;
    breaker *b = bt_connectors__breaker_new("x", 1, 1000, fake_clock, &fake_now);
    char err[BT_ERRLEN];
    call(b, BT_ETIMEOUT, err, sizeof err);
    CHECK_INT(state_of(b), BT_CONNECTORS__BREAKER_OPEN);
    fake_now = 1000;
    CHECK_INT(call(b, BT_ECONNECTOR, err, sizeof err), BT_ECONNECTOR);
    CHECK_INT(state_of(b), BT_CONNECTORS__BREAKER_CLOSED);
    bt_connectors__breaker_free(b);
}

static void test_late_outcomes_ignored(void)
{
    /* Calls that entered before a change of state do not count after it. */
    fake_now = 0;
    breaker *b = bt_connectors__breaker_new("x", 2, 1000, fake_clock, &fake_now);
    char err[BT_ERRLEN];
    struct bt_connectors__ticket slow;
    CHECK_INT(bt_connectors__breaker_enter(b, &slow, err, sizeof err), BT_OK);
    call(b, BT_EUNAVAIL, err, sizeof err);
    call(b, BT_EUNAVAIL, err, sizeof err);
    CHECK_INT(state_of(b), BT_CONNECTORS__BREAKER_OPEN);
    bt_connectors__breaker_leave(b, &slow, BT_OK); /* a late success */
    CHECK_INT(state_of(b), BT_CONNECTORS__BREAKER_OPEN);

    fake_now = 1000;
    struct bt_connectors__ticket probe;
    CHECK_INT(bt_connectors__breaker_enter(b, &probe, err, sizeof err), BT_OK);
    bt_connectors__breaker_leave(b, &probe, BT_OK);
    CHECK_INT(state_of(b), BT_CONNECTORS__BREAKER_CLOSED);
    bt_connectors__breaker_free(b);
}

static void test_configure_and_defaults(void)
{
    fake_now = 0;
    breaker *b = bt_connectors__breaker_new("d", 0, 0, fake_clock, &fake_now);
    struct bt_connectors__breaker_info info;
    bt_connectors__breaker_info(b, &info);
    CHECK_INT(info.threshold, BT_CONNECTORS__BREAKER_FAILURES);
    bt_connectors__breaker_configure(b, 1, 5000);
    char err[BT_ERRLEN];
    call(b, BT_EUNAVAIL, err, sizeof err);
    bt_connectors__breaker_info(b, &info);
    CHECK_INT(info.state, BT_CONNECTORS__BREAKER_OPEN);
    CHECK_INT(info.retry_in_ms, 5000);
    CHECK_STR(bt_connectors__breaker_state_name(BT_CONNECTORS__BREAKER_HALF_OPEN), "half_open");
    bt_connectors__breaker_free(b);
}

/* Many threads hammering one breaker: the counts stay consistent. */
struct hammer {
    breaker *b;
    int ok, fast;
};

static void *hammer_run(void *arg)
{
    struct hammer *h = arg;
    char err[BT_ERRLEN];
    for (int i = 0; i < 2000; i++) {
        enum bt_err e = call(h->b, (i % 3) ? BT_OK : BT_ETIMEOUT, err, sizeof err);
        if (e == BT_EUNAVAIL)
            h->fast++;
        else
            h->ok++;
    }
    return NULL;
}

static void test_threads(void)
{
    breaker *b = bt_connectors__breaker_new("t", 3, 1, NULL, NULL);
    struct hammer h[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        h[i] = (struct hammer){b, 0, 0};
        CHECK(pthread_create(&th[i], NULL, hammer_run, &h[i]) == 0);
    }
    int total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        total += h[i].ok + h[i].fast;
    }
    CHECK_INT(total, 8000);
    bt_connectors__breaker_free(b);
}

/* ---- in the invoke path --------------------------------------------------- */

static char dir[] = "/tmp/bt-breaker-XXXXXX";

static void write_file(const char *name, const char *text)
{
    char path[512];
    bt_fmt(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void test_invoke_path(void)
{
    CHECK(mkdtemp(dir) != NULL);
    write_file("baton.yaml", "connectors:\n"
                             "  inventory: {type: builtin}\n"
                             "  local:\n"
                             "    type: local\n"
                             "    allow: {'true': /usr/bin/true}\n");
    bt_diag *d = bt_diag_new();
    char path[512];
    bt_fmt(path, sizeof path, "%s/baton.yaml", dir);
    bt_yaml_doc *doc = bt_yaml_load(path, d);
    CHECK(doc != NULL);
    bt_fmt(path, sizeof path, "%s/intents", dir);
    CHECK(mkdir(path, 0700) == 0);
    write_file("intents/x.yaml", "intents: []\n");
    write_file("tools.yaml", "tools: []\n");
    write_file("inventory.yaml", "assets: []\n");
    bt_config *cfg = bt_config_load(dir, d);
    CHECK_INT(bt_diag_count(d), 0);
    /* No store: the builtin connector answers BT_EUNAVAIL every time. */
    bt_connectors *c = bt_connectors_new(cfg, NULL, d);
    CHECK(c != NULL);
    bt_connectors_set_breaker(c, 2, 60);
    json_t *inv = json_pack("{s:s, s:s, s:s}", "name", "count", "connector", "inventory",
                            "operation", "count_assets");
    json_t *loc = json_pack("{s:s, s:s, s:s, s:[s]}", "name", "t", "connector", "local",
                            "operation", "command", "command", "true");
    json_t *res = NULL;
    char err[BT_ERRLEN];
    CHECK_INT(bt_connectors_invoke(c, inv, NULL, NULL, &res, err, sizeof err), BT_EUNAVAIL);
    CHECK(strstr(err, "no store") != NULL);
    CHECK_INT(bt_connectors_invoke(c, inv, NULL, NULL, &res, err, sizeof err), BT_EUNAVAIL);
    CHECK_INT(bt_connectors_invoke(c, inv, NULL, NULL, &res, err, sizeof err), BT_EUNAVAIL);
    CHECK_MSG(strstr(err, "connector 'inventory' is unavailable (circuit open after 2 failures; "
                          "retrying in ") != NULL,
              "%s", err);
    /* Per connector: local is unaffected. */
    CHECK_INT(bt_connectors_invoke(c, loc, NULL, NULL, &res, err, sizeof err), BT_OK);
    json_decref(res);
    json_t *all = bt_connectors_breakers(c);
    CHECK_INT(json_array_size(all), 2);
    size_t i;
    json_t *one;
    json_array_foreach(all, i, one)
    {
        const char *name = json_string_value(json_object_get(one, "connector"));
        const char *st = json_string_value(json_object_get(one, "state"));
        if (name && strcmp(name, "inventory") == 0) {
            CHECK_STR(st, "open");
            CHECK(json_integer_value(json_object_get(one, "retry_in_ms")) > 50000);
            CHECK_INT(json_integer_value(json_object_get(one, "times_opened")), 1);
        } else {
            CHECK_STR(st, "closed");
        }
    }
    json_decref(all);
    json_decref(inv);
    json_decref(loc);
    bt_connectors_free(c);
    bt_config_free(cfg);
    bt_yaml_free(doc);
    bt_diag_free(d);
    char cmd[600];
    bt_fmt(cmd, sizeof cmd, "%s/intents/x.yaml", dir);
    unlink(cmd);
    bt_fmt(cmd, sizeof cmd, "%s/intents", dir);
    rmdir(cmd);
    static const char *const files[] = {"baton.yaml", "tools.yaml", "inventory.yaml", NULL};
    for (size_t k = 0; files[k]; k++) {
        bt_fmt(cmd, sizeof cmd, "%s/%s", dir, files[k]);
        unlink(cmd);
    }
    rmdir(dir);
}

int main(void)
{
    RUN(test_opens_after_consecutive_failures);
    RUN(test_half_open_single_probe);
    RUN(test_probe_with_answer_closes);
    RUN(test_late_outcomes_ignored);
    RUN(test_configure_and_defaults);
    RUN(test_threads);
    RUN(test_invoke_path);
    return bt_test_finish();
}
