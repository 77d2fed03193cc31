/*
 * The `baton` command end to end: every exit code, JSON output, config
 * errors with file:line, store failures, the default locations.
 */
#include <errno.h>
#include <ftw.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bot/store/store.h"
#include "bot/util.h"
#include "harness.h"
#include "test.h"

static char tmp[] = "/tmp/bt-cli-XXXXXX";
static char store[600];

#define BATON(...) run_in(NULL, NULL, (const char *const[]){__VA_ARGS__, NULL})
#define CFG "--config", BT_SOURCE_DIR "/config", "--store", store

static void test_ask_count(void)
{
    struct out o = BATON(CFG, "ask", "how many assets do we have?");
    CHECK_INT(o.code, 0);
    CHECK_MSG(strstr(o.out, "You have 24 assets: 6 Windows workstations") != NULL, "%s", o.out);
    out_free(&o);
}

static void test_explain_json(void)
{
    struct out o = BATON(CFG, "explain", "--json", "restart nginx on web-01");
    CHECK_INT(o.code, 4);
    json_error_t e;
    json_t *j = json_loads(o.out, 0, &e);
    CHECK_MSG(j != NULL, "not JSON: %s", o.out);
    static const char *const keys[] = {"category",       "intent", "entities", "confidence", "risk",
                                       "approval_level", "kind",   "plan",     NULL};
    for (size_t i = 0; keys[i]; i++)
        CHECK_MSG(json_object_get(j, keys[i]) != NULL, "missing %s", keys[i]);
    CHECK_STR(json_string_value(json_object_get(j, "category")), "automation");
    CHECK_STR(json_string_value(json_object_get(j, "kind")), "approval");
    CHECK_STR(json_string_value(json_object_get(json_object_get(j, "entities"), "service")),
              "nginx");
    json_decref(j);
    out_free(&o);
}

static void test_exit_codes(void)
{
    struct out o = BATON(CFG, "ask", "restart nginx on web-01");
    CHECK_INT(o.code, 4);
    CHECK_MSG(strstr(o.out, "Approval id:") != NULL, "%s", o.out);
    out_free(&o);
    o = BATON(CFG, "ask", "restart nginx");
    CHECK_INT(o.code, 5);
    out_free(&o);
    o = BATON(CFG, "ask", "order me a pizza");
    CHECK_INT(o.code, 6);
    out_free(&o);
    o = BATON(CFG, "ask", "--as", "dave", "restart nginx on web-01");
    CHECK_INT(o.code, 7);
    out_free(&o);
    o = BATON(CFG, "ask", "check disk space on web-01");
    CHECK_INT(o.code, 8);
    CHECK_MSG(strstr(o.out, "not reachable by the local runner") != NULL, "%s", o.out);
    out_free(&o);
    o = BATON(CFG, "frobnicate");
    CHECK_INT(o.code, 2);
    out_free(&o);
    o = BATON(CFG, "ask");
    CHECK_INT(o.code, 2);
    out_free(&o);
    o = BATON("--config");
    CHECK_INT(o.code, 2);
    out_free(&o);
}

static void test_check_valid(void)
{
    struct out o = BATON(CFG, "check");
    CHECK_INT(o.code, 0);
    CHECK_MSG(strstr(o.out, "is valid") != NULL, "%s%s", o.out, o.err);
    /* The shipped tools reach only the baton host; check says which assets
     * they cannot act on, without failing. */
    CHECK_MSG(strstr(o.out, "note: 18 tools cannot act on the 15 assets reached over ssh") != NULL,
              "%s", o.out);
    CHECK_MSG(strstr(o.out, "service_restart") != NULL, "%s", o.out);
    CHECK_MSG(strstr(o.out, "reached over winrm") != NULL, "%s", o.out);
    CHECK_MSG(strstr(o.out, "over local") == NULL, "%s", o.out);
    out_free(&o);
}

static void copy_file(const char *from, const char *to)
{
    char *text = NULL;
    char err[BT_ERRLEN];
    size_t len = 0;
    if (bt_read_file(from, 1 << 22, &text, &len, err, sizeof err) != BT_OK)
        return;
    FILE *f = fopen(to, "w");
    fwrite(text, 1, len, f);
    fclose(f);
    free(text);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

/* A broken configuration: each file's problem is named with file and line. */
static void test_check_reports_problems(void)
{
    char cdir[700], p[800];
    bt_fmt(cdir, sizeof cdir, "%s/cfg", tmp);
    mkdir(cdir, 0700);
    bt_fmt(p, sizeof p, "%s/intents", cdir);
    mkdir(p, 0700);
    static const char *const files[] = {"baton.yaml", "tools.yaml", "inventory.yaml", NULL};
    for (size_t i = 0; files[i]; i++) {
        char from[600];
        bt_fmt(from, sizeof from, "%s/config/%s", BT_SOURCE_DIR, files[i]);
        bt_fmt(p, sizeof p, "%s/%s", cdir, files[i]);
        copy_file(from, p);
    }
    bt_fmt(p, sizeof p, "%s/intents/broken.yaml", cdir);
    write_file(p, "intents:\n  - name: x\n    category: monitoring\n    patterns: ['(unclosed']\n");
    bt_fmt(p, sizeof p, "%s/inventory.yaml", cdir);
    write_file(p, "assets:\n  - name: a\n    environment: prod\n");
    struct out o = BATON("--config", cdir, "check");
    CHECK_INT(o.code, 3);
    CHECK_MSG(strstr(o.err, "inventory.yaml:") != NULL, "%s", o.err);
    CHECK_MSG(strstr(o.err, "broken.yaml:") != NULL, "%s", o.err);
    out_free(&o);
    /* ask refuses to start on the same configuration */
    o = BATON("--config", cdir, "--store", store, "ask", "how many assets do we have?");
    CHECK_INT(o.code, 3);
    out_free(&o);
    /* a YAML syntax error */
    bt_fmt(p, sizeof p, "%s/tools.yaml", cdir);
    write_file(p, "tools:\n  - name: [unclosed\n");
    o = BATON("--config", cdir, "check");
    CHECK_INT(o.code, 3);
    CHECK_MSG(strstr(o.err, "tools.yaml:") != NULL && strstr(o.err, "YAML syntax error"), "%s",
              o.err);
    out_free(&o);
}

/* The chat: section is checked like the rest, and serve will not start
 * without the tokens it names. */
static void test_check_chat(void)
{
    char base[700], p[800];
    bt_fmt(base, sizeof base, "%s/chat", tmp);
    mkdir(base, 0700);
    CHECK(make_config_with(base, (const char *const[]){NULL}));
    const char *cdir = cfgdir;
    char from[600];
    bt_fmt(from, sizeof from, "%s/config/baton.yaml", BT_SOURCE_DIR);
    char *yaml = slurp(from);
    char *bad = bt_asprintf("%s\nchat:\n  update_interval_ms: 5\n  slack:\n"
                            "    api_url: http://slack.example.com/api/\n    channels: [\"\"]\n"
                            "    tokens: here\n",
                            yaml);
    bt_fmt(p, sizeof p, "%s/baton.yaml", cdir);
    spit(p, bad);
    struct out o = BATON("--config", cdir, "check");
    CHECK_INT(o.code, 3);
    CHECK_MSG(strstr(o.err, "update_interval_ms") != NULL, "%s", o.err);
    CHECK_MSG(strstr(o.err, "chat.slack.api_url") != NULL, "%s", o.err);
    CHECK_MSG(strstr(o.err, "chat.slack.channels") != NULL, "%s", o.err);
    CHECK_MSG(strstr(o.err, "tokens") != NULL, "%s", o.err);
    out_free(&o);
    char *good =
        bt_asprintf("%s\nchat:\n  slack:\n    app_token_env: BATON_TEST_NO_SUCH_VAR\n", yaml);
    spit(p, good);
    o = BATON("--config", cdir, "check");
    CHECK_MSG(o.code == 0, "%s", o.err);
    out_free(&o);
    o = BATON("--config", cdir, "--store", store, "serve", "--listen", "127.0.0.1:1");
    CHECK(o.code != 0);
    CHECK_MSG(strstr(o.err, "BATON_TEST_NO_SUCH_VAR") != NULL, "%s", o.err);
    out_free(&o);
    free(good);
    free(bad);
    free(yaml);
}

/* baton migrate creates (or upgrades) a store and says which version it is
 * at; a PostgreSQL URL with a password in it is refused, naming no secret. */
static void test_migrate(void)
{
    char *db = bt_asprintf("%s/migrated.db", tmp);
    struct out o = BATON("--config", cfgdir, "migrate", "--store", db);
    CHECK_MSG(o.code == 0, "%s", o.err);
    char want[64];
    bt_fmt(want, sizeof want, "store schema version %d", BT_STORE_SCHEMA_VERSION);
    CHECK_MSG(strstr(o.out, want) != NULL, "%s", o.out);
    out_free(&o);
    o = BATON("--config", cfgdir, "migrate", "--store", db); /* again: nothing to do */
    CHECK_MSG(o.code == 0 && strstr(o.out, want) != NULL, "%s", o.err);
    out_free(&o);
    o = BATON("--config", cfgdir, "migrate", "--store", "postgres://baton:hunter2@127.0.0.1:1/x");
    CHECK(o.code != 0);
    CHECK_MSG(strstr(o.err, "hunter2") == NULL, "%s", o.err);
    CHECK_MSG(strstr(o.err, "PGPASSWORD") != NULL || strstr(o.err, "password") != NULL, "%s",
              o.err);
    out_free(&o);
    o = BATON("--config", cfgdir, "migrate", "--bogus");
    CHECK_INT(o.code, 2);
    out_free(&o);
    free(db);
}

static void test_store_failures(void)
{
    char bad[700];
    bt_fmt(bad, sizeof bad, "%s/garbage.db", tmp);
    write_file(bad, "this is not a database, it is a text file of some length..........\n"
                    "..................................................................\n");
    struct out o = BATON("--config", BT_SOURCE_DIR "/config", "--store", bad, "ask",
                         "how many assets do we have?");
    CHECK(o.code != 0);
    CHECK_MSG(strstr(o.err, "garbage.db") != NULL, "%s", o.err);
    out_free(&o);
    o = BATON("--config", BT_SOURCE_DIR "/config", "--store", bad, "check");
    CHECK_INT(o.code, 3);
    out_free(&o);

    /* a store written by a newer baton */
    char newer[700];
    bt_fmt(newer, sizeof newer, "%s/newer.db", tmp);
    o = BATON("--config", BT_SOURCE_DIR "/config", "--store", newer, "ask", "how many assets?");
    out_free(&o);
    sqlite3 *db = NULL;
    CHECK(sqlite3_open(newer, &db) == SQLITE_OK);
    sqlite3_exec(db,
                 "PRAGMA user_version=99; INSERT INTO schema_migrations(version, applied_ms) "
                 "VALUES (99, 0);",
                 NULL, NULL, NULL);
    sqlite3_close(db);
    o = BATON("--config", BT_SOURCE_DIR "/config", "--store", newer, "ask", "how many assets?");
    CHECK(o.code != 0);
    CHECK_MSG(strstr(o.err, "newer") != NULL, "%s", o.err);
    out_free(&o);
}

static void test_default_locations(void)
{
    /* BATON_CONFIG and the default store var/baton.db under the cwd */
    struct out o =
        run_in(tmp, "BATON_CONFIG=" BT_SOURCE_DIR "/config",
               (const char *const[]){"ask", "how many windows machines are there?", NULL});
    CHECK_INT(o.code, 0);
    CHECK_MSG(strstr(o.out, "7") != NULL, "%s", o.out);
    out_free(&o);
    char db[700];
    bt_fmt(db, sizeof db, "%s/var/baton.db", tmp);
    struct stat st;
    CHECK(stat(db, &st) == 0);
}

static void test_audit_and_status(void)
{
    char db[700];
    bt_fmt(db, sizeof db, "%s/audit.db", tmp);
    struct out o = BATON("--config", BT_SOURCE_DIR "/config", "--store", db, "ask", "--json",
                         "how many assets do we have?");
    CHECK_INT(o.code, 0);
    json_t *r = json_loads(o.out, 0, NULL);
    const char *exec_id =
        json_string_value(json_object_get(json_object_get(r, "execution"), "execution_id"));
    CHECK(exec_id != NULL);
    out_free(&o);

    o = BATON("--store", db, "status", exec_id ? exec_id : "x");
    CHECK_INT(o.code, 0);
    CHECK_MSG(strstr(o.out, "completed") && strstr(o.out, "asset_count"), "%s", o.out);
    out_free(&o);
    o = BATON("--store", db, "status", "0123456789abcdef0123456789abcdef");
    CHECK_INT(o.code, 7);
    out_free(&o);
    json_decref(r);

    o = BATON("--store", db, "audit");
    CHECK_INT(o.code, 0);
    CHECK_MSG(strstr(o.out, "request") && strstr(o.out, "execution_finished"), "%s", o.out);
    out_free(&o);
    o = BATON("--store", db, "audit", "--json", "--since", "1h");
    CHECK_INT(o.code, 0);
    CHECK(o.out[0] == '{');
    out_free(&o);
    o = BATON("--store", db, "audit", "--since", "yesterday-ish");
    CHECK_INT(o.code, 2);
    out_free(&o);
    o = BATON("--store", db, "audit", "--verify");
    CHECK_INT(o.code, 0);
    CHECK_MSG(strstr(o.out, "hash chain intact") != NULL, "%s", o.out);
    out_free(&o);

    /* Someone edits history behind baton's back: verify names the entry. */
    sqlite3 *h = NULL;
    CHECK(sqlite3_open(db, &h) == SQLITE_OK);
    CHECK(sqlite3_exec(h,
                       "DROP TRIGGER audit_log_no_update;"
                       "UPDATE audit_log SET actor = 'mallory' WHERE seq = 2;",
                       NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(h);
    o = BATON("--store", db, "audit", "--verify");
    CHECK_INT(o.code, 9);
    CHECK_MSG(strstr(o.err, "seq 2") != NULL, "%s", o.err);
    out_free(&o);
}

int main(void)
{
    CHECK(mkdtemp(tmp) != NULL);
    bt_fmt(store, sizeof store, "%s/baton.db", tmp);
    RUN(test_ask_count);
    RUN(test_explain_json);
    RUN(test_exit_codes);
    RUN(test_check_valid);
    RUN(test_check_reports_problems);
    RUN(test_check_chat);
    RUN(test_migrate);
    RUN(test_store_failures);
    RUN(test_default_locations);
    RUN(test_audit_and_status);
    rm_tree(tmp);
    return bt_test_finish();
}
