/*
 * Unit tests for intents/: the shipped catalog against the labelled corpus
 * (tests/data/utterances.yaml), catalog errors, input checks, match limits,
 * threads, host resolution.
 *
 * Run with a request as argument to print its decision:
 *   test_intents "restart nginx on web-01"
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bot/conf.h"
#include "bot/util.h"
#include "intents/intents.h"
#include "test.h"

/* The inventory the corpus is written against. */
static const char *const assets_json =
    "["
    "{\"name\":\"localhost\",\"hostname\":\"localhost\",\"ip\":\"127.0.0.1\","
    "\"datacenter\":\"hq\",\"services\":[\"sshd\",\"cron\",\"WinDefend\"]},"
    "{\"name\":\"ws-win-01\",\"hostname\":\"ws-win-01.example.internal\",\"ip\":\"10.10.0.101\"},"
    "{\"name\":\"ws-win-02\",\"hostname\":\"ws-win-02.example.internal\",\"ip\":\"10.10.0.102\"},"
    "{\"name\":\"ws-win-03\",\"hostname\":\"ws-win-03.example.internal\",\"ip\":\"10.10.0.103\"},"
    "{\"name\":\"ws-win-04\",\"hostname\":\"ws-win-04.example.internal\",\"ip\":\"10.10.0.104\"},"
    "{\"name\":\"ws-win-05\",\"hostname\":\"ws-win-05.example.internal\",\"ip\":\"10.10.0.105\"},"
    "{\"name\":\"ws-win-06\",\"hostname\":\"ws-win-06.example.internal\",\"ip\":\"10.10.0.106\"},"
    "{\"name\":\"web-01\",\"hostname\":\"web-01.example.internal\",\"ip\":\"10.20.1.11\","
    "\"datacenter\":\"dc1\",\"services\":[\"nginx\",\"sshd\"]},"
    "{\"name\":\"web-stg-01\",\"hostname\":\"web-stg-01.example.internal\",\"ip\":\"10.20.2.11\","
    "\"services\":[\"nginx\",\"apache2\"]},"
    "{\"name\":\"web-prd-01\",\"hostname\":\"web-prd-01.example.internal\",\"ip\":\"10.20.3.11\"},"
    "{\"name\":\"web-prd-02\",\"hostname\":\"web-prd-02.example.internal\",\"ip\":\"10.20.3.12\"},"
    "{\"name\":\"db-01\",\"hostname\":\"db-01.example.internal\",\"ip\":\"10.20.1.21\","
    "\"services\":[\"postgresql\"]},"
    "{\"name\":\"db-stg-01\",\"hostname\":\"db-stg-01.example.internal\",\"ip\":\"10.20.2.21\"},"
    "{\"name\":\"db-prd-01\",\"hostname\":\"db-prd-01.example.internal\",\"ip\":\"10.20.3.21\"},"
    "{\"name\":\"db-prd-02\",\"hostname\":\"db-prd-02.example.internal\",\"ip\":\"10.20.3.22\"},"
    "{\"name\":\"api-01\",\"hostname\":\"api-01.example.internal\",\"ip\":\"10.20.1.31\"},"
    "{\"name\":\"api-prd-01\",\"hostname\":\"api-prd-01.example.internal\",\"ip\":\"10.20.3.31\","
    "\"services\":[\"billing-api\"]},"
    "{\"name\":\"api-prd-02\",\"hostname\":\"api-prd-02.example.internal\",\"ip\":\"10.20.3.32\","
    "\"services\":[\"billing-api\"]},"
    "{\"name\":\"cache-prd-01\",\"hostname\":\"cache-prd-01.example.internal\","
    "\"ip\":\"10.20.3.41\",\"services\":[\"redis-server\"]},"
    "{\"name\":\"mon-01\",\"hostname\":\"mon-01.example.internal\",\"ip\":\"10.20.0.11\","
    "\"services\":[\"prometheus\",\"grafana-server\",\"cron\"]},"
    "{\"name\":\"ci-01\",\"hostname\":\"ci-01.example.internal\",\"ip\":\"10.20.0.12\","
    "\"services\":[\"jenkins\",\"docker\"]},"
    "{\"name\":\"backup-01\",\"hostname\":\"backup-01.example.internal\",\"ip\":\"10.20.0.13\"},"
    "{\"name\":\"win-srv-01\",\"hostname\":\"win-srv-01.example.internal\",\"ip\":\"10.10.0.10\","
    "\"services\":[\"w3svc\"]},"
    "{\"name\":\"lb-prd-01\",\"hostname\":\"lb-prd-01.example.internal\",\"ip\":\"10.20.3.5\","
    "\"services\":[\"haproxy\"]}"
    "]";

static json_t *test_assets(void)
{
    json_error_t e;
    json_t *a = json_loads(assets_json, 0, &e);
    if (!a) {
        fprintf(stderr, "test assets: %s\n", e.text);
        abort();
    }
    return a;
}

/* The shipped catalog (config/intents) with the test inventory. */
static bt_intents *shipped(void)
{
    bt_diag *cd = bt_diag_new(); /* inventory.yaml may not exist: not ours */
    bt_config *cfg = bt_config_load(BT_SOURCE_DIR "/config", cd);
    bt_diag_free(cd);
    if (!cfg)
        return NULL;
    json_t *assets = test_assets();
    bt_diag *d = bt_diag_new();
    bt_intents *in = bt_intents_new(cfg, assets, d);
    for (size_t i = 0; i < bt_diag_count(d); i++)
        fprintf(stderr, "catalog: %s\n", bt_diag_get(d, i));
    bt_diag_free(d);
    json_decref(assets);
    bt_config_free(cfg);
    return in;
}

static void dump_diag(const bt_diag *d);

static json_t *classify(const bt_intents *in, const char *text)
{
    char err[BT_ERRLEN] = "";
    json_t *r = bt_intents_classify(in, text, err, sizeof err);
    if (!r)
        fprintf(stderr, "classify(\"%s\"): %s\n", text, err);
    return r;
}

static const char *str(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

/* ---- the shipped catalog ------------------------------------------------ */

static void test_catalog_loads(void)
{
    bt_intents *in = shipped();
    CHECK(in != NULL);
    if (!in)
        return;
    static const struct {
        const char *name, *category;
    } want[] = {
        {"asset_count", "asset_management"},
        {"asset_list", "asset_management"},
        {"asset_search", "asset_management"},
        {"asset_show", "asset_management"},
        {"service_status", "monitoring"},
        {"disk_space", "monitoring"},
        {"resource_usage", "monitoring"},
        {"listening_ports", "monitoring"},
        {"log_tail", "troubleshooting"},
        {"ping", "troubleshooting"},
        {"connectivity", "troubleshooting"},
        {"process_list", "troubleshooting"},
        {"service_restart", "automation"},
        {"service_start", "automation"},
        {"service_stop", "automation"},
        {"process_kill", "automation"},
        {"database_backup", "automation"},
        {"database_delete", "automation"},
        {"app_deploy", "automation"},
        {"config_update", "configuration"},
        {"firewall_open", "configuration"},
        {"firewall_close", "configuration"},
        {"help", "information"},
        {"capabilities", "information"},
    };
    CHECK(bt_intents_count(in) >= sizeof want / sizeof want[0]);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const json_t *def = bt_intents_get(in, want[i].name);
        CHECK_MSG(def != NULL, "intent %s missing", want[i].name);
        if (!def)
            continue;
        CHECK_STR(str(def, "category"), want[i].category);
        CHECK(json_array_size(json_object_get(def, "examples")) > 0);
        CHECK(str(def, "help") != NULL);
        bool info = strcmp(want[i].category, "information") == 0;
        CHECK_MSG(info == (json_object_get(def, "plan") == NULL), "%s plan", want[i].name);
    }
    CHECK(bt_intents_get(in, "no_such_intent") == NULL);

    /* Plan shapes the pipeline relies on. */
    const json_t *deploy = json_object_get(bt_intents_get(in, "app_deploy"), "plan");
    CHECK_INT(json_array_size(deploy), 4);
    CHECK_STR(str(json_array_get(deploy, 1), "tool"), "package_install");
    CHECK_STR(json_string_value(
                  json_array_get(json_object_get(json_array_get(deploy, 1), "depends_on"), 0)),
              "pre");
    const json_t *res = json_object_get(bt_intents_get(in, "resource_usage"), "plan");
    CHECK_INT(json_array_size(res), 2);
    CHECK(json_object_get(json_array_get(res, 1), "depends_on") == NULL);
    const json_t *ping = json_object_get(bt_intents_get(in, "ping"), "plan");
    CHECK_STR(str(json_object_get(json_array_get(ping, 0), "inputs"), "address"), "{target.ip}");
    CHECK(json_is_true(json_object_get(json_array_get(ping, 0), "per_target")));
    const json_t *drop = json_object_get(bt_intents_get(in, "database_delete"), "plan");
    CHECK_STR(str(json_array_get(drop, 1), "tool"), "database_drop");
    CHECK_STR(str(json_object_get(bt_intents_get(in, "service_restart"), "ask"), "service"),
              "Which service should I restart?");
    CHECK_STR(str(bt_intents_get(in, "asset_count"), "targets"), "none");
    bt_intents_free(in);
}

/* Compare one decision with one labelled entry; print what differs. */
static bool same_list(const json_t *got, const json_t *want)
{
    if (!want)
        return json_array_size(got) == 0;
    return json_equal(got, want);
}

static bool same_corrections(const json_t *got, const json_t *want)
{
    if (json_array_size(got) != json_array_size(want))
        return false;
    size_t i;
    json_t *w;
    json_array_foreach(want, i, w)
    {
        const json_t *g = json_array_get(got, i);
        if (!json_equal(json_object_get(g, "from"), json_array_get(w, 0)) ||
            !json_equal(json_object_get(g, "to"), json_array_get(w, 1)))
            return false;
    }
    return true;
}

static bool check_entry(const bt_intents *in, const json_t *u, size_t n)
{
    const char *text = str(u, "text");
    json_t *r = classify(in, text);
    if (!r)
        return false;
    json_t *want_ents = json_object_get(u, "entities");
    json_t *empty = json_object();
    bool question = json_is_true(json_object_get(u, "question"));
    bool ok = true;
    char *why = NULL;
    bt_buf b = BT_BUF_INIT(0);
    if (strcmp(str(r, "intent"), str(u, "intent")) != 0) {
        bt_buf_printf(&b, " intent %s (want %s);", str(r, "intent"), str(u, "intent"));
        ok = false;
    }
    if (strcmp(str(r, "category"), str(u, "category")) != 0) {
        bt_buf_printf(&b, " category %s (want %s);", str(r, "category"), str(u, "category"));
        ok = false;
    }
    if (!json_equal(json_object_get(r, "entities"), want_ents ? want_ents : empty)) {
        char *g = json_dumps(json_object_get(r, "entities"), JSON_COMPACT | JSON_SORT_KEYS);
        char *w = json_dumps(want_ents ? want_ents : empty, JSON_COMPACT | JSON_SORT_KEYS);
        bt_buf_printf(&b, " entities %s (want %s);", g, w);
        free(g);
        free(w);
        ok = false;
    }
    static const char *const lists[] = {"targets", "unresolved"};
    for (size_t k = 0; k < 2; k++) {
        if (!same_list(json_object_get(r, lists[k]), json_object_get(u, lists[k]))) {
            char *g = json_dumps(json_object_get(r, lists[k]), JSON_COMPACT);
            bt_buf_printf(&b, " %s %s;", lists[k], g);
            free(g);
            ok = false;
        }
    }
    if (!same_corrections(json_object_get(r, "corrections"), json_object_get(u, "corrections"))) {
        char *g = json_dumps(json_object_get(r, "corrections"), JSON_COMPACT);
        bt_buf_printf(&b, " corrections %s;", g);
        free(g);
        ok = false;
    }
    if (json_is_true(json_object_get(r, "question")) != question) {
        bt_buf_printf(&b, " question %s;", question ? "false" : "true");
        ok = false;
    }
    size_t nsug = json_array_size(json_object_get(r, "suggestions"));
    bool unknown = strcmp(str(u, "intent"), "unknown") == 0;
    if (unknown ? (nsug < 1 || nsug > 3) : nsug != 0) {
        bt_buf_printf(&b, " %zu suggestions;", nsug);
        ok = false;
    }
    double conf = json_real_value(json_object_get(r, "confidence"));
    if (conf < 0 || conf > 1 || (!unknown && conf < 0.5)) {
        bt_buf_printf(&b, " confidence %.3f;", conf);
        ok = false;
    }
    why = bt_buf_steal(&b);
    if (!ok)
        fprintf(stderr, "utterance %zu \"%s\":%s  [normalized: %s]\n", n, text, why,
                str(r, "normalized"));
    free(why);
    json_decref(empty);
    json_decref(r);
    return ok;
}

static void test_corpus(void)
{
    bt_intents *in = shipped();
    CHECK(in != NULL);
    bt_diag *d = bt_diag_new();
    bt_yaml_doc *doc = bt_yaml_load(BT_SOURCE_DIR "/tests/data/utterances.yaml", d);
    CHECK_MSG(doc != NULL, "%s", bt_diag_get(d, 0));
    bt_diag_free(d);
    if (!in || !doc) {
        bt_yaml_free(doc);
        bt_intents_free(in);
        return;
    }
    json_t *list = json_object_get(bt_yaml_root(doc), "utterances");
    size_t labelled = json_array_size(list), matched = 0;
    size_t i;
    json_t *u;
    json_array_foreach(list, i, u)
    {
        if (check_entry(in, u, i + 1))
            matched++;
    }
    printf("utterances: %zu labelled, %zu matched\n", labelled, matched);
    CHECK(labelled >= 150);
    CHECK_INT(matched, labelled);
    bt_yaml_free(doc);
    bt_intents_free(in);
}

/* Every example in the catalog is recognised as its own intent (the
 * examples of `unknown` as unknown). */
static void test_examples(void)
{
    bt_intents *in = shipped();
    if (!in)
        return;
    size_t n = 0;
    for (size_t k = 0; bt_intents_at(in, k); k++, n++) {
        const json_t *def = bt_intents_at(in, k);
        const char *name = str(def, "name");
        const json_t *ex = json_object_get(def, "examples");
        CHECK_MSG(json_array_size(ex) > 0, "%s has no examples", name);
        size_t i;
        json_t *v;
        json_array_foreach(ex, i, v)
        {
            json_t *r = classify(in, json_string_value(v));
            CHECK_MSG(r && strcmp(str(r, "intent"), name) == 0, "example \"%s\" -> %s",
                      json_string_value(v), r ? str(r, "intent") : "(error)");
            json_decref(r);
        }
    }
    CHECK_INT(n, bt_intents_count(in));
    CHECK(bt_intents_at(in, n) == NULL);
    bt_intents_free(in);
}

static void test_unknown_suggests(void)
{
    bt_intents *in = shipped();
    if (!in)
        return;
    json_t *r = classify(in, "order me a pizza");
    CHECK_STR(str(r, "intent"), "unknown");
    CHECK_STR(str(r, "category"), "unknown");
    json_t *s = json_object_get(r, "suggestions");
    CHECK_INT(json_array_size(s), 3);
    CHECK(json_real_value(json_object_get(r, "confidence")) < 0.5);
    json_decref(r);

    /* Near requests get near suggestions. */
    r = classify(in, "are there pizza ports");
    CHECK_STR(str(r, "intent"), "unknown");
    const char *first = json_string_value(json_array_get(json_object_get(r, "suggestions"), 0));
    CHECK_MSG(first && strstr(first, "port") != NULL, "first suggestion: %s", first);
    json_decref(r);

    /* The unknown entry holds the polite answer. */
    CHECK(str(bt_intents_get(in, "unknown"), "help") != NULL);
    bt_intents_free(in);
}

/* ---- input checks ----------------------------------------------------- */

static void test_input_checks(void)
{
    bt_intents *in = shipped();
    if (!in)
        return;
    char err[BT_ERRLEN];

    err[0] = '\0';
    CHECK(bt_intents_classify(in, "restart \xC3\x28 nginx", err, sizeof err) == NULL);
    CHECK_MSG(strstr(err, "UTF-8") != NULL, "%s", err);
    err[0] = '\0';
    CHECK(bt_intents_classify(in, "surrogate \xED\xA0\x80", err, sizeof err) == NULL);
    CHECK(strstr(err, "UTF-8") != NULL);
    err[0] = '\0';
    CHECK(bt_intents_classify(in, NULL, err, sizeof err) == NULL);
    CHECK(err[0] != '\0');

    char *big = bt_malloc(4098);
    memset(big, 'a', 4097);
    big[4097] = '\0';
    err[0] = '\0';
    CHECK(bt_intents_classify(in, big, err, sizeof err) == NULL);
    CHECK_MSG(strstr(err, "4096") != NULL, "%s", err);
    /* exactly the cap is fine */
    big[4096] = '\0';
    json_t *r = bt_intents_classify(in, big, err, sizeof err);
    CHECK(r != NULL);
    CHECK_STR(str(r, "intent"), "unknown");
    json_decref(r);
    free(big);

    r = classify(in, "");
    CHECK(r && strcmp(str(r, "intent"), "unknown") == 0);
    CHECK_STR(str(r, "normalized"), "");
    json_decref(r);
    r = classify(in, "   \t\n ");
    CHECK(r && strcmp(str(r, "intent"), "unknown") == 0);
    json_decref(r);

    /* Normalisation keeps IPs, paths, versions and hyphenated names. */
    r = classify(in, "  Tail   /var/log/Syslog  on WEB-01 ,  PLEASE!!! ");
    CHECK_STR(str(r, "normalized"), "tail /var/log/syslog on web-01 please");
    CHECK_STR(str(json_object_get(r, "entities"), "path"), "/var/log/Syslog");
    json_decref(r);
    r = classify(in, "deploy billing-api 1.2.3 to production.");
    CHECK_STR(str(r, "normalized"), "deploy billing-api 1.2.3 to production");
    json_decref(r);
    r = classify(in, "search for 10.20.1.");
    CHECK_STR(str(r, "normalized"), "search for 10.20.1.");
    json_decref(r);
    /* typographic quotes and non-breaking spaces */
    r = classify(in, "find assets with \xE2\x80\x98"
                     "db\xE2\x80\x99 in the\xC2\xA0name");
    CHECK_STR(str(r, "intent"), "asset_search");
    CHECK_STR(str(json_object_get(r, "entities"), "name_contains"), "db");
    json_decref(r);
    /* non-ASCII text is fine */
    r = classify(in, "red\xC3\xA9marre nginx sur web-01 s'il te pla\xC3\xAEt");
    CHECK(r != NULL);
    json_decref(r);
    bt_intents_free(in);
}

/* ---- hosts ------------------------------------------------------------ */

static void test_hosts(void)
{
    bt_intents *in = shipped();
    if (!in)
        return;
    struct {
        const char *text, *targets, *unresolved;
    } cases[] = {
        {"restart nginx on web-01", "[\"web-01\"]", "[]"},
        {"restart nginx on web-01.example.internal", "[\"web-01\"]", "[]"},
        {"restart nginx on WEB-01.EXAMPLE.INTERNAL", "[\"web-01\"]", "[]"},
        {"restart nginx on 10.20.1.11", "[\"web-01\"]", "[]"},
        {"ping db-prd-02, 10.20.3.21 and web-01", "[\"db-prd-02\",\"db-prd-01\",\"web-01\"]", "[]"},
        {"ping web-01 web-01 10.20.1.11", "[\"web-01\"]", "[]"},
        {"restart nginx on web-99", "[]", "[\"web-99\"]"},
        {"ping web-99 and db-prd-01 and 10.99.0.1", "[\"db-prd-01\"]",
         "[\"web-99\",\"10.99.0.1\"]"},
        /* services are never hosts, even hyphenated ones */
        {"restart billing-api on api-prd-01", "[\"api-prd-01\"]", "[]"},
        {"restart redis-server on cache-prd-01", "[\"cache-prd-01\"]", "[]"},
        /* values of other entities are not hosts */
        {"find assets with 'web-01' in the name", "[]", "[]"},
        {"which host has ip 10.20.1.11", "[]", "[]"},
        {"deploy billing-api 1.2.3 to production", "[]", "[]"},
        {"no hosts in this sentence at all", "[]", "[]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *r = classify(in, cases[i].text);
        if (!r)
            continue;
        json_t *t = json_loads(cases[i].targets, 0, NULL);
        json_t *u = json_loads(cases[i].unresolved, 0, NULL);
        char *gt = json_dumps(json_object_get(r, "targets"), JSON_COMPACT);
        char *gu = json_dumps(json_object_get(r, "unresolved"), JSON_COMPACT);
        CHECK_MSG(json_equal(json_object_get(r, "targets"), t), "\"%s\": targets %s", cases[i].text,
                  gt);
        CHECK_MSG(json_equal(json_object_get(r, "unresolved"), u), "\"%s\": unresolved %s",
                  cases[i].text, gu);
        free(gt);
        free(gu);
        json_decref(t);
        json_decref(u);
        json_decref(r);
    }
    /* The raw mention is the host entity; the service is the service. */
    json_t *r = classify(in, "restart nginx on web-01.example.internal");
    CHECK_STR(str(json_object_get(r, "entities"), "host"), "web-01.example.internal");
    CHECK_STR(str(json_object_get(r, "entities"), "service"), "nginx");
    json_decref(r);
    bt_intents_free(in);
}

/* The shipped catalog with the shipped inventory, when there is one. */
static void test_real_inventory(void)
{
    bt_diag *d = bt_diag_new();
    bt_yaml_doc *inv = bt_yaml_load(BT_SOURCE_DIR "/config/inventory.yaml", d);
    bt_diag_free(d);
    if (!inv) {
        printf("config/inventory.yaml not readable: skipped\n");
        return;
    }
    bt_diag *cd = bt_diag_new();
    bt_config *cfg = bt_config_load(BT_SOURCE_DIR "/config", cd);
    bt_diag_free(cd);
    d = bt_diag_new();
    bt_intents *in = bt_intents_new(cfg, json_object_get(bt_yaml_root(inv), "assets"), d);
    CHECK(in != NULL);
    dump_diag(d);
    bt_diag_free(d);
    static const struct {
        const char *text, *intent, *entity, *value, *target;
    } cases[] = {
        {"restart nginx on web-01", "service_restart", "service", "nginx", "web-01"},
        {"is WinDefend running on ws-win-01", "service_status", "service", "WinDefend",
         "ws-win-01"},
        {"is windefend running on ws-win-01", "service_status", "service", "WinDefend",
         "ws-win-01"},
        {"list the assets in hq", "asset_list", "datacenter", "hq", NULL},
        {"ping 10.20.3.21", "ping", "host", "10.20.3.21", "db-prd-01"},
        {"status of redis-server on cache-prd-01", "service_status", "service", "redis-server",
         "cache-prd-01"},
    };
    for (size_t i = 0; in && i < sizeof cases / sizeof cases[0]; i++) {
        json_t *r = classify(in, cases[i].text);
        CHECK_STR(str(r, "intent"), cases[i].intent);
        CHECK_STR(str(json_object_get(r, "entities"), cases[i].entity), cases[i].value);
        if (cases[i].target)
            CHECK_STR(json_string_value(json_array_get(json_object_get(r, "targets"), 0)),
                      cases[i].target);
        json_decref(r);
    }
    bt_intents_free(in);
    bt_config_free(cfg);
    bt_yaml_free(inv);
}

/* An inventory without assets still compiles ({assets} matches nothing). */
static void test_no_assets(void)
{
    bt_diag *cd = bt_diag_new();
    bt_config *cfg = bt_config_load(BT_SOURCE_DIR "/config", cd);
    bt_diag_free(cd);
    bt_diag *d = bt_diag_new();
    bt_intents *in = bt_intents_new(cfg, NULL, d);
    CHECK(in != NULL);
    CHECK_INT(bt_diag_count(d), 0);
    json_t *r = in ? classify(in, "restart nginx on web-01") : NULL;
    CHECK_STR(str(r, "intent"), "service_restart");
    CHECK_STR(json_string_value(json_array_get(json_object_get(r, "unresolved"), 0)), "web-01");
    json_decref(r);
    bt_intents_free(in);
    bt_diag_free(d);
    bt_config_free(cfg);
}

/* ---- catalog errors ----------------------------------------------------- */

struct tmpcat {
    char dir[64];
    char files[8][128];
    size_t nfiles;
};

static void tmpcat_init(struct tmpcat *t)
{
    memset(t, 0, sizeof *t);
    bt_strlcpy(t->dir, "/tmp/bt_intents_XXXXXX", sizeof t->dir);
    if (!mkdtemp(t->dir))
        abort();
    char sub[96];
    bt_fmt(sub, sizeof sub, "%s/intents", t->dir);
    mkdir(sub, 0700);
}

static void tmpcat_file(struct tmpcat *t, const char *name, const char *text)
{
    char *path = t->files[t->nfiles++];
    bt_fmt(path, 128, "%s/intents/%s", t->dir, name);
    FILE *f = fopen(path, "w");
    if (!f)
        abort();
    fputs(text, f);
    fclose(f);
}

static void tmpcat_done(struct tmpcat *t)
{
    for (size_t i = 0; i < t->nfiles; i++)
        unlink(t->files[i]);
    char sub[96];
    bt_fmt(sub, sizeof sub, "%s/intents", t->dir);
    rmdir(sub);
    rmdir(t->dir);
}

/* Compile the catalog in t; returns the catalog (or NULL) and fills d. */
static bt_intents *tmpcat_compile(struct tmpcat *t, const json_t *assets, bt_diag *d)
{
    bt_diag *cd = bt_diag_new();
    bt_config *cfg = bt_config_load(t->dir, cd);
    bt_diag_free(cd);
    bt_intents *in = bt_intents_new(cfg, assets, d);
    bt_config_free(cfg);
    return in;
}

static bool diag_has(const bt_diag *d, const char *needle)
{
    for (size_t i = 0; i < bt_diag_count(d); i++)
        if (strstr(bt_diag_get(d, i), needle))
            return true;
    return false;
}

static void dump_diag(const bt_diag *d)
{
    for (size_t i = 0; i < bt_diag_count(d); i++)
        fprintf(stderr, "    diag: %s\n", bt_diag_get(d, i));
}

static const char *const good_entities = "entities:\n"
                                         "  service: {}\n"
                                         "  port:\n"
                                         "    patterns: ['port (?<port>\\d+)']\n";

static void test_catalog_errors(void)
{
    struct tmpcat t;
    tmpcat_init(&t);
    tmpcat_file(&t, "a.yaml", good_entities);
    tmpcat_file(&t, "b.yaml",
                "intents:\n"                                  /* 1 */
                "  - name: service_status\n"                  /* 2 */
                "    category: monitoring\n"                  /* 3 */
                "    description: d\n"                        /* 4 */
                "    examples: [x]\n"                         /* 5 */
                "    patterns:\n"                             /* 6 */
                "      - 'status of (?<service>\\S+)'\n"      /* 7 */
                "      - 'is (?<service>\\S+ running'\n"      /* 8 */
                "    plan: [{id: s, tool: service_status}]\n" /* 9 */
                "    colour: blue\n"                          /* 10 */
                "  - name: service_status\n"                  /* 11 */
                "    category: monitoring\n"                  /* 12 */
                "    description: d\n"                        /* 13 */
                "    examples: [y]\n"                         /* 14 */
                "    plan: [{id: s, tool: t, inputs: {a: '{nope}'}, depends_on: [z], x: 1}]\n"
                "  - name: bad_group\n"                                     /* 16 */
                "    category: weather\n"                                   /* 17 */
                "    description: d\n"                                      /* 18 */
                "    examples: [z]\n"                                       /* 19 */
                "    patterns: ['(?<sevice>x) {nofrag}', '(?<sevice>x)']\n" /* 20 */
                "    keywords: {x: -1}\n"                                   /* 21 */
                "  - name: chat\n"                                          /* 22 */
                "    category: information\n"                               /* 23 */
                "    description: d\n"                                      /* 24 */
                "    examples: [w]\n"                                       /* 25 */
                "    plan: [{id: a, tool: b}]\n"                            /* 26 */
                "extra: 1\n");                                              /* 27 */
    tmpcat_file(&t, "c.yaml",
                "intents:\n"
                "  - name: service_status\n"
                "    category: monitoring\n"
                "    description: again in another file\n"
                "    examples: [q]\n"
                "    plan: [{id: s, tool: service_status}]\n");
    bt_diag *d = bt_diag_new();
    bt_intents *in = tmpcat_compile(&t, NULL, d);
    CHECK(in == NULL);
    CHECK_MSG(diag_has(d, "b.yaml:8: patterns: cannot compile pattern 2 of service_status: "
                          "missing closing parenthesis at offset"),
              "bad regex");
    CHECK_MSG(diag_has(d, "b.yaml:10: colour: unknown key"), "unknown intent key");
    CHECK_MSG(diag_has(d, "b.yaml:27: extra: unknown key"), "unknown top-level key");
    CHECK_MSG(diag_has(d, "duplicate intent name 'service_status' (first at"), "duplicate");
    CHECK_MSG(diag_has(d, "c.yaml:2: name: duplicate intent name 'service_status'"),
              "duplicate across files");
    CHECK_MSG(diag_has(d, "'{nope}' is neither an entity"), "template placeholder");
    CHECK_MSG(diag_has(d, "depends_on: item 1 must name an earlier step"), "depends_on");
    CHECK_MSG(diag_has(d, "x: unknown key"), "unknown step key");
    CHECK_MSG(diag_has(d, "b.yaml:17: category: 'weather' is not one of"), "category");
    CHECK_MSG(diag_has(d, "unknown fragment {nofrag}"), "fragment");
    CHECK_MSG(diag_has(d, "pattern 2 of bad_group: group 'sevice' is not a declared entity"),
              "undeclared group");
    CHECK_MSG(diag_has(d, "x: the weight must be a number above 0"), "keyword weight");
    CHECK_MSG(diag_has(d, "b.yaml:26: plan: information intents answer by themselves"),
              "information plan");
    if (bt_diag_count(d) < 13)
        dump_diag(d);
    bt_diag_free(d);
    tmpcat_done(&t);

    /* entity declarations */
    tmpcat_init(&t);
    tmpcat_file(&t, "a.yaml",
                "entities:\n"
                "  host: {}\n"                                     /* 2: built in */
                "  port: {patterns: ['(?<other>\\d+)']}\n"         /* 3 */
                "  os: {closed: true}\n"                           /* 4 */
                "  env: {values: {production: prod}, colour: 1}\n" /* 5 */
                "fragments:\n"
                "  loop: 'a{loop}'\n"
                "intents:\n"
                "  - name: x\n" /* 9 */
                "    category: automation\n"
                "    description: d\n"
                "    examples: [e]\n"
                "    patterns: ['{loop}']\n"  /* 13 */
                "    requires: [nothing]\n"); /* 14 */
    d = bt_diag_new();
    in = tmpcat_compile(&t, NULL, d);
    CHECK(in == NULL);
    CHECK_MSG(diag_has(d, "a.yaml:2: host: entity 'host' is built in"), "builtin");
    CHECK_MSG(diag_has(d, "group 'other' must be named 'port'"), "extractor group");
    CHECK_MSG(diag_has(d, "closed: a closed entity needs values"), "closed");
    CHECK_MSG(diag_has(d, "production: must be a list of other ways to say it"), "values");
    CHECK_MSG(diag_has(d, "colour: unknown key"), "entity key");
    CHECK_MSG(diag_has(d, "fragments nest deeper than"), "fragment loop");
    CHECK_MSG(diag_has(d, "requires: 'nothing' is not a declared entity"), "requires");
    CHECK_MSG(diag_has(d, "plan: required, missing (automation intents need a plan)"), "plan");
    if (bt_diag_count(d) < 8)
        dump_diag(d);
    bt_diag_free(d);
    tmpcat_done(&t);

    /* a NULL diag still fails */
    tmpcat_init(&t);
    tmpcat_file(&t, "a.yaml", "intents:\n  - name: x\n");
    CHECK(tmpcat_compile(&t, NULL, NULL) == NULL);
    tmpcat_done(&t);
}

/* A small valid catalog of our own works end to end. */
static void test_custom_catalog(void)
{
    struct tmpcat t;
    tmpcat_init(&t);
    tmpcat_file(&t, "a.yaml",
                "entities:\n"
                "  colour:\n"
                "    closed: true\n"
                "    scan: true\n"
                "    values: {red: [crimson, scarlet], blue: [navy]}\n"
                "synonyms:\n"
                "  paint: [colour in, recolour]\n"
                "vocabulary:\n"
                "  words: [bicycle]\n"
                "intents:\n"
                "  - name: paint\n"
                "    category: automation\n"
                "    description: Paint a host\n"
                "    targets: required\n"
                "    examples: [paint web-01 red]\n"
                "    patterns: ['\\b{syn:paint}\\b.*\\b(?<colour>{values:colour})\\b']\n"
                "    keywords: {paint: 3}\n"
                "    plan: [{id: p, tool: paint, inputs: {host: '{target}', colour: '{colour}'}, "
                "per_target: true}]\n");
    bt_diag *d = bt_diag_new();
    json_t *assets = test_assets();
    bt_intents *in = tmpcat_compile(&t, assets, d);
    json_decref(assets);
    CHECK(in != NULL);
    dump_diag(d);
    bt_diag_free(d);
    tmpcat_done(&t);
    if (!in)
        return;
    CHECK_INT(bt_intents_count(in), 1);
    json_t *r = classify(in, "recolour wbe-01 crimson");
    CHECK_STR(str(r, "intent"), "paint");
    CHECK_STR(str(r, "category"), "automation");
    CHECK_STR(str(json_object_get(r, "entities"), "colour"), "red");
    CHECK_STR(json_string_value(json_array_get(json_object_get(r, "targets"), 0)), "web-01");
    json_decref(r);
    /* keywords alone, value found by scanning */
    r = classify(in, "navy on web-01 is the plan: recolour");
    CHECK_STR(str(r, "intent"), "paint");
    CHECK_STR(str(json_object_get(r, "entities"), "colour"), "blue");
    CHECK(json_is_null(json_object_get(json_object_get(r, "match"), "pattern")));
    json_decref(r);
    /* typo towards a vocabulary word */
    r = classify(in, "bicycel");
    CHECK_STR(str(json_array_get(json_object_get(r, "corrections"), 0), "to"), "bicycle");
    json_decref(r);
    bt_intents_free(in);
}

/* ---- match limits ----------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_match_limits(void)
{
    struct tmpcat t;
    tmpcat_init(&t);
    /* Catastrophic backtracking on purpose: nested quantifiers that can split
     * a long run of words in exponentially many ways, then fail at the end. */
    tmpcat_file(&t, "a.yaml",
                "intents:\n"
                "  - name: evil\n"
                "    category: monitoring\n"
                "    description: d\n"
                "    examples: [evil]\n"
                "    patterns: ['^(\\w+\\s?)*$', '(a|aa)+b', '(?:(?:x+)+y)']\n"
                "    plan: [{id: a, tool: b}]\n");
    bt_diag *d = bt_diag_new();
    bt_intents *in = tmpcat_compile(&t, NULL, d);
    dump_diag(d);
    bt_diag_free(d);
    tmpcat_done(&t);
    CHECK(in != NULL);
    if (!in)
        return;
    char *text = bt_malloc(4097);
    for (size_t i = 0; i < 4095; i++)
        text[i] = (i % 7 == 6) ? ' ' : 'a';
    text[4095] = '#';
    text[4096] = '\0';
    double t0 = now_s();
    json_t *r = classify(in, text);
    double took = now_s() - t0;
    CHECK(r != NULL);
    CHECK_STR(str(r, "intent"), "unknown");
    CHECK_MSG(took < 2.0, "pathological input took %.3f s", took);
    json_decref(r);
    memset(text, 'x', 4096);
    text[4096] = '\0';
    t0 = now_s();
    r = classify(in, text);
    took = now_s() - t0;
    CHECK(r != NULL);
    CHECK_MSG(took < 2.0, "pathological input took %.3f s", took);
    json_decref(r);
    free(text);
    bt_intents_free(in);

    /* The shipped catalog on a long hostile request. */
    in = shipped();
    if (!in)
        return;
    bt_buf b = BT_BUF_INIT(0);
    while (b.len < 4000)
        bt_buf_puts(&b, "restart 'the how do i set x to ");
    char *hostile = bt_strndup(b.data, 4096);
    bt_buf_free(&b);
    t0 = now_s();
    r = classify(in, hostile);
    took = now_s() - t0;
    CHECK(r != NULL);
    CHECK_MSG(took < 2.0, "hostile input took %.3f s", took);
    json_decref(r);
    free(hostile);
    bt_intents_free(in);
}

/* ---- threads ---------------------------------------------------------- */

static const char *const thread_texts[] = {
    "restart nginx on web-01",
    "chekc the staus of ngnix",
    "how do I restart a service?",
    "list all production web servers",
    "deploy billing-api 1.2.3 to production",
    "order me a pizza",
    "set max_connections to 200 in /etc/postgresql/15/main/postgresql.conf on db-01",
    "ping web-01 and web-02",
};
#define NTEXTS (sizeof thread_texts / sizeof thread_texts[0])

struct worker {
    const bt_intents *in;
    char *expect[NTEXTS];
    int mismatches;
    int offset;
};

static char *decision_text(const bt_intents *in, const char *text)
{
    char err[BT_ERRLEN];
    json_t *r = bt_intents_classify(in, text, err, sizeof err);
    char *s = r ? json_dumps(r, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(r);
    return s;
}

static void *worker_run(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < 300; i++) {
        size_t k = (size_t)(i + w->offset) % NTEXTS;
        char *s = decision_text(w->in, thread_texts[k]);
        if (!s || strcmp(s, w->expect[k]) != 0)
            w->mismatches++;
        free(s);
    }
    return NULL;
}

static void test_threads(void)
{
    bt_intents *in = shipped();
    if (!in)
        return;
    struct worker w[2];
    for (int t = 0; t < 2; t++) {
        w[t].in = in;
        w[t].mismatches = 0;
        w[t].offset = t * 3;
        for (size_t k = 0; k < NTEXTS; k++)
            w[t].expect[k] = decision_text(in, thread_texts[k]);
    }
    pthread_t th[2];
    for (int t = 0; t < 2; t++)
        CHECK(pthread_create(&th[t], NULL, worker_run, &w[t]) == 0);
    for (int t = 0; t < 2; t++)
        pthread_join(th[t], NULL);
    for (int t = 0; t < 2; t++) {
        CHECK_INT(w[t].mismatches, 0);
        for (size_t k = 0; k < NTEXTS; k++)
            free(w[t].expect[k]);
    }
    bt_intents_free(in);
}

/* ---- speed ------------------------------------------------------------ */

static void test_speed(void)
{
    bt_intents *in = shipped();
    if (!in)
        return;
    const int rounds = 200;
    double t0 = now_s();
    for (int i = 0; i < rounds; i++) {
        for (size_t k = 0; k < NTEXTS; k++) {
            char err[BT_ERRLEN];
            json_t *r = bt_intents_classify(in, thread_texts[k], err, sizeof err);
            json_decref(r);
        }
    }
    double per = (now_s() - t0) / (rounds * (double)NTEXTS) * 1e6;
    printf("classify: %.1f microseconds per request\n", per);
    /* generous: sanitizer and valgrind builds are many times slower */
    CHECK_MSG(per < 20000, "%.1f us", per);
    bt_intents_free(in);
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        bt_intents *in = shipped();
        if (!in)
            return 1;
        for (int i = 1; i < argc; i++) {
            json_t *r = classify(in, argv[i]);
            char *s = r ? json_dumps(r, JSON_INDENT(2)) : NULL;
            printf("%s\n", s ? s : "(error)");
            free(s);
            json_decref(r);
        }
        bt_intents_free(in);
        return 0;
    }
    RUN(test_catalog_loads);
    RUN(test_corpus);
    RUN(test_examples);
    RUN(test_unknown_suggests);
    RUN(test_input_checks);
    RUN(test_hosts);
    RUN(test_real_inventory);
    RUN(test_no_assets);
    RUN(test_catalog_errors);
    RUN(test_custom_catalog);
    RUN(test_match_limits);
    RUN(test_threads);
    RUN(test_speed);
    return bt_test_finish();
}
