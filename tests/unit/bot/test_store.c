/* Unit tests for bot/store (the facade and both backends).
 *
 * Without BATON_TEST_STORE every store is an SQLite file under a mkdtemp()
 * directory in /tmp, removed at the end. With BATON_TEST_STORE set to a
 * postgres:// URL (tests/pg/pg_cluster.sh run sets it), every store is a
 * fresh database on that server, named after the URL's own database with a
 * number added, and dropped at the end. Checks about SQLite files (modes,
 * WAL, damaged bytes, the busy handler) run for SQLite only; PostgreSQL has
 * its own for those and for connection loss. */
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <sqlite3.h>

#include "bot/store/store.h"
#include "bot/util.h"
#include "pg_fresh.h"
#include "test.h"

static char tmpdir[64];
static int file_no;
static bool pg_mode; /* BATON_TEST_STORE names a PostgreSQL database */

static bool is_pg(const char *location)
{
    return strncmp(location, "postgres", 8) == 0;
}

/* A fresh store location (caller frees): a file name in tmpdir, or a new
 * empty database (pg_fresh.h). */
static char *tmp_path(const char *stem)
{
    if (!pg_mode)
        return bt_asprintf("%s/%s-%d.db", tmpdir, stem, ++file_no);
    char *url = bt_pg_fresh();
    CHECK(url != NULL);
    return url ? url : bt_strdup("postgres://nowhere/none");
}

static bt_store *open_ok(const char *location)
{
    bt_store *st = NULL;
    char err[BT_ERRLEN];
    enum bt_err e = bt_store_open(location, &st, err, sizeof err);
    CHECK_MSG(e == BT_OK && st, "open %s: %s", location, err);
    return st;
}

/* Run SQL on a plain connection (not through the store). Returns 0
 * (SQLITE_OK) on success, else SQLite's result code or 1 for PostgreSQL;
 * msg (may be NULL) gets the error message. */
static int raw_exec(const char *path, const char *sql, char *msg, size_t msglen)
{
    if (is_pg(path)) {
        PGconn *c = PQconnectdb(path);
        PGresult *r = PQexec(c, sql);
        int rc =
            PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK ? 0 : 1;
        if (msg)
            bt_strlcpy(msg, rc ? PQerrorMessage(c) : "", msglen);
        PQclear(r);
        PQfinish(c);
        return rc;
    }
    sqlite3 *db = NULL;
    int rc = sqlite3_open(path, &db);
    if (rc == SQLITE_OK) {
        char *m = NULL;
        rc = sqlite3_exec(db, sql, NULL, NULL, &m);
        if (msg)
            bt_strlcpy(msg, m ? m : "", msglen);
        sqlite3_free(m);
    }
    sqlite3_close(db);
    return rc;
}

/* First column of the first row of sql as an integer (-1 on error). */
static long long raw_int(const char *path, const char *sql)
{
    if (is_pg(path)) {
        PGconn *c = PQconnectdb(path);
        PGresult *r = PQexec(c, sql);
        long long v = -1;
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
            v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
        PQfinish(c);
        return v;
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long v = -1;
    if (sqlite3_open(path, &db) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* Drop one of audit_log's append-only triggers (each backend's syntax). */
static void drop_trigger(const char *path, const char *name)
{
    char sql[128], msg[256];
    bt_fmt(sql, sizeof sql, "DROP TRIGGER %s%s", name, is_pg(path) ? " ON audit_log" : "");
    CHECK_MSG(raw_exec(path, sql, msg, sizeof msg) == 0, "%s: %s", sql, msg);
}

static char *read_all(const char *path, size_t *len)
{
    char *data = NULL, err[BT_ERRLEN];
    if (bt_read_file(path, 64u << 20, &data, len, err, sizeof err) != BT_OK)
        return NULL;
    return data;
}

static void write_all(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    if (fd >= 0) {
        CHECK_INT(write(fd, data, len), (long long)len);
        close(fd);
    }
}

/* ---- open, create, migrate ---------------------------------------------- */

static void test_open_create(void)
{
    char *dir = bt_asprintf("%s/var/lib", tmpdir);
    char *path = bt_asprintf("%s/baton.db", dir);
    char *loc = bt_asprintf("sqlite:%s", path);
    char err[BT_ERRLEN];

    bt_store *st = open_ok(loc);
    CHECK_INT(bt_store_schema_version(st), BT_STORE_SCHEMA_VERSION);
    bt_store_close(st);

    struct stat sb;
    CHECK(stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode));
    CHECK_INT(sb.st_mode & 0777, 0750);
    CHECK(stat(path, &sb) == 0 && S_ISREG(sb.st_mode));
    CHECK_INT(sb.st_mode & 0777, 0640);

    /* WAL is a property of the file: a plain connection sees it. */
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    CHECK(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &q, NULL) == SQLITE_OK);
    CHECK(sqlite3_step(q) == SQLITE_ROW);
    CHECK_STR((const char *)sqlite3_column_text(q, 0), "wal");
    sqlite3_finalize(q);
    sqlite3_close(db);

    /* Reopen (plain path this time) twice: migrations are not re-applied. */
    for (int i = 0; i < 2; i++) {
        st = open_ok(path);
        CHECK_INT(bt_store_schema_version(st), BT_STORE_SCHEMA_VERSION);
        char *v = NULL;
        CHECK_INT(bt_store_setting_ensure(st, "k", "v", &v, err, sizeof err), BT_OK);
        free(v);
        bt_store_close(st);
    }
    CHECK_INT(raw_int(path, "SELECT count(*) FROM schema_migrations"), BT_STORE_SCHEMA_VERSION);
    CHECK_INT(raw_int(path, "SELECT max(version) FROM schema_migrations"), BT_STORE_SCHEMA_VERSION);
    CHECK_INT(raw_int(path, "PRAGMA application_id"), 0x6261746e);

    /* An empty file (as if just created by someone) is initialised. */
    char *empty = tmp_path("empty");
    write_all(empty, "", 0);
    st = open_ok(empty);
    bt_store_close(st);
    CHECK_INT(raw_int(empty, "SELECT count(*) FROM schema_migrations"), BT_STORE_SCHEMA_VERSION);

    free(empty);
    free(loc);
    free(path);
    free(dir);
}

static void test_locations(void)
{
    char err[BT_ERRLEN];
    bt_store *st = (bt_store *)&st;

    bt_store *m = open_ok(":memory:");
    CHECK_INT(bt_store_schema_version(m), BT_STORE_SCHEMA_VERSION);
    bt_store_close(m);
    m = open_ok("sqlite::memory:");
    bt_store_close(m);

    /* A password in a PostgreSQL URL is refused, and never echoed. */
    CHECK_INT(bt_store_open("postgres://baton:s3cret@db.example/baton", &st, err, sizeof err),
              BT_ECONFIG);
    CHECK(st == NULL);
    CHECK_MSG(strstr(err, "password") != NULL && strstr(err, "PGPASSWORD") != NULL, "%s", err);
    CHECK(strstr(err, "s3cret") == NULL);
    CHECK_INT(bt_store_open("postgresql://db.example/baton?sslmode=disable&password=s3cret", &st,
                            err, sizeof err),
              BT_ECONFIG);
    CHECK(strstr(err, "s3cret") == NULL);
    CHECK_INT(
        bt_store_open("postgresql://baton@db.example/baton?nosuchparam=1", &st, err, sizeof err),
        BT_ECONFIG);
    /* Nothing listens on port 1: refused at once, naming the location. */
    CHECK_INT(bt_store_open("postgresql://baton@127.0.0.1:1/baton", &st, err, sizeof err),
              BT_EUNAVAIL);
    CHECK(st == NULL);
    CHECK_MSG(strstr(err, "postgresql://baton@127.0.0.1:1/baton: cannot connect") != NULL, "%s",
              err);

    CHECK_INT(bt_store_open("", &st, err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_open("sqlite:", &st, err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_open(NULL, &st, err, sizeof err), BT_EINVAL);

    /* A directory where the file should be. */
    CHECK_INT(bt_store_open(tmpdir, &st, err, sizeof err), BT_EIO);
    CHECK(strstr(err, tmpdir) != NULL);
    /* A parent that is a file. */
    char *file = bt_asprintf("%s/plain", tmpdir);
    write_all(file, "x", 1);
    char *under = bt_asprintf("%s/sub/baton.db", file);
    CHECK_INT(bt_store_open(under, &st, err, sizeof err), BT_EIO);
    CHECK(st == NULL);
    free(under);
    free(file);
    bt_store_close(NULL);
}

static void test_newer_schema(void)
{
    char *path = tmp_path("newer");
    char err[BT_ERRLEN], msg[256];
    bt_store_close(open_ok(path));
    /* the version after this build's */
    enum { NEWER = BT_STORE_SCHEMA_VERSION + 1 };
    char sql[128], want[128];
    bt_fmt(sql, sizeof sql, "INSERT INTO schema_migrations(version, applied_ms) VALUES (%d, 0)",
           NEWER);
    CHECK_INT(raw_exec(path, sql, msg, sizeof msg), SQLITE_OK);
    size_t before_len = 0, after_len = 0;
    char *before = pg_mode ? NULL : read_all(path, &before_len);

    bt_store *st = NULL;
    CHECK_INT(bt_store_open(path, &st, err, sizeof err), BT_EVERSION);
    CHECK(st == NULL);
    bt_fmt(want, sizeof want, "schema version %d is newer than this baton supports (%d)", NEWER,
           BT_STORE_SCHEMA_VERSION);
    CHECK_MSG(strstr(err, want) != NULL, "%s", err);
    CHECK(strstr(err, path) != NULL);
    CHECK(strstr(err, "upgrade baton") != NULL);

    /* Nothing changed: same bytes, version row still there. */
    if (!pg_mode) {
        char *after = read_all(path, &after_len);
        CHECK(before && after && before_len == after_len && memcmp(before, after, before_len) == 0);
        free(after);
    }
    CHECK_INT(raw_int(path, "SELECT max(version) FROM schema_migrations"), NEWER);
    CHECK_INT(raw_int(path, "SELECT count(*) FROM schema_migrations"), BT_STORE_SCHEMA_VERSION + 1);
    free(before);
    free(path);
}

static void expect_corrupt(const char *path, const char *want)
{
    bt_store *st = NULL;
    char err[BT_ERRLEN];
    CHECK_INT(bt_store_open(path, &st, err, sizeof err), BT_ECORRUPT);
    CHECK(st == NULL);
    CHECK_MSG(strstr(err, want) != NULL, "%s", err);
    CHECK_MSG(strstr(err, path) != NULL, "%s", err);
}

static void test_corrupt(void)
{
    /* Garbage bytes. */
    char *path = tmp_path("garbage");
    unsigned char junk[8192];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (unsigned char)(i * 131 + 7);
    write_all(path, junk, sizeof junk);
    expect_corrupt(path, "not a baton store or damaged: file is not a database");
    free(path);

    /* A short text file. */
    path = tmp_path("text");
    write_all(path, "hello, world\n", 13);
    expect_corrupt(path, "not a baton store or damaged");
    free(path);

    /* A real store, truncated: once mid-header, once mid-file. */
    path = tmp_path("trunc");
    bt_store *st = open_ok(path);
    char err[BT_ERRLEN];
    json_t *assets = json_array();
    for (int i = 0; i < 400; i++) {
        char name[32];
        bt_fmt(name, sizeof name, "host-%03d", i);
        json_array_append_new(assets, json_pack("{s:s, s:s, s:s, s:[s,s]}", "name", name, "notes",
                                                "padding padding padding padding padding", "os",
                                                "linux", "tags", "a", "b"));
    }
    CHECK_INT(bt_store_assets_replace(st, assets, err, sizeof err), BT_OK);
    for (int i = 0; i < 200; i++)
        CHECK_INT(bt_store_audit_append(st, NULL, "test", "fill", NULL, err, sizeof err), BT_OK);
    bt_store_close(st);
    json_decref(assets);
    size_t len = 0;
    char *data = read_all(path, &len);
    CHECK(data && len > (size_t)8 * 4096);

    char *t1 = tmp_path("trunc-header");
    write_all(t1, data, 50);
    expect_corrupt(t1, "not a baton store or damaged");
    char *t2 = tmp_path("trunc-half");
    write_all(t2, data, (len / 2 / 4096) * 4096);
    expect_corrupt(t2, "not a baton store or damaged");
    /* A damaged page holding data: header intact, cell pointers zeroed.
     * The audit log's root page is chosen by name, so the test does not
     * depend on where migrations happen to put tables. */
    char *t3 = tmp_path("damaged-page");
    long long root = raw_int(path, "SELECT rootpage FROM sqlite_schema WHERE name = 'audit_log'");
    CHECK(root > 1);
    size_t page = (size_t)(root - 1) * 4096;
    CHECK(page + 4096 <= len);
    memset(data + page + 8, 0, 4000);
    write_all(t3, data, len);
    expect_corrupt(t3, "not a baton store or damaged: ");
    free(t1);
    free(t2);
    free(t3);
    free(data);
    free(path);
}

static void test_foreign(void)
{
    char msg[256];
    char *path = tmp_path("foreign");
    CHECK_INT(raw_exec(path,
                       "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT);"
                       "INSERT INTO customers(name) VALUES ('alice');",
                       msg, sizeof msg),
              SQLITE_OK);
    expect_corrupt(path, "not a baton store");
    CHECK_INT(raw_int(path, "SELECT count(*) FROM sqlite_schema"), 1);
    CHECK_INT(raw_int(path, "SELECT count(*) FROM customers"), 1);
    free(path);

    /* Another program's application_id, even with a schema_migrations table
     * of its own (Rails, golang-migrate). */
    path = tmp_path("foreign-app");
    CHECK_INT(raw_exec(path,
                       "PRAGMA application_id = 42;"
                       "CREATE TABLE schema_migrations(version TEXT);",
                       msg, sizeof msg),
              SQLITE_OK);
    expect_corrupt(path, "another program");
    free(path);

    path = tmp_path("foreign-migr");
    CHECK_INT(raw_exec(path, "CREATE TABLE schema_migrations(version TEXT);", msg, sizeof msg),
              SQLITE_OK);
    expect_corrupt(path, "not a baton store");
    free(path);
}

/* ---- assets ------------------------------------------------------------- */

static json_t *inventory(void)
{
    json_error_t jerr;
    json_t *a = json_loads(
        "["
        "{\"name\":\"web-01\",\"hostname\":\"web-01.prod.example\",\"ip\":\"10.0.1.11\","
        "\"os\":\"linux\",\"os_version\":\"debian 12\",\"role\":\"web\",\"environment\":\"prod\","
        "\"status\":\"active\",\"datacenter\":\"fra1\",\"tags\":[\"nginx\",\"Frontend\"],"
        "\"cpu\":4,\"ram_gb\":8,\"connection\":\"ssh\",\"owner\":\"team-web\"},"
        "{\"name\":\"web-02\",\"hostname\":\"web-02.prod.example\",\"ip\":\"10.0.1.12\","
        "\"os\":\"linux\",\"role\":\"web\",\"environment\":\"prod\",\"status\":\"maintenance\","
        "\"datacenter\":\"fra1\",\"tags\":[\"nginx\"],\"cpu\":4,\"ram_gb\":16,"
        "\"connection\":\"ssh\"},"
        "{\"name\":\"DB-01\",\"hostname\":\"db-01.prod.example\",\"ip\":\"10.0.2.21\","
        "\"os\":\"linux\",\"role\":\"database\",\"environment\":\"prod\",\"status\":\"active\","
        "\"datacenter\":\"ams1\",\"tags\":[\"postgres\",\"critical\"],\"cpu\":16,\"ram_gb\":64,"
        "\"connection\":\"ssh\"},"
        "{\"name\":\"win-01\",\"hostname\":\"WIN-01.corp.example\",\"ip\":\"10.1.0.5\","
        "\"os\":\"Windows\",\"role\":\"app\",\"environment\":\"staging\",\"status\":\"active\","
        "\"datacenter\":\"ams1\",\"tags\":[\"iis\"],\"cpu\":2,\"ram_gb\":8,"
        "\"connection\":\"winrm\"},"
        "{\"name\":\"dev-01\",\"hostname\":\"dev-01.dev.example\",\"ip\":\"110.0.1.1\","
        "\"os\":\"linux\",\"role\":\"web\",\"environment\":\"dev\",\"status\":\"retired\","
        "\"datacenter\":\"fra1\",\"tags\":[],\"cpu\":1,\"ram_gb\":2,\"connection\":\"local\"},"
        "{\"name\":\"lab\",\"ip\":\"192.168.7.7\",\"os\":\"linux\"}"
        "]",
        0, &jerr);
    CHECK(a != NULL);
    return a;
}

/* Names of the assets matching filter (JSON text), comma-joined, in order;
 * or "ERR:<code>" (caller frees). */
static char *names(bt_store *st, const char *filter_text)
{
    json_error_t jerr;
    json_t *filter = filter_text ? json_loads(filter_text, 0, &jerr) : NULL;
    json_t *out = NULL;
    char err[BT_ERRLEN];
    enum bt_err e = bt_store_assets_query(st, filter, &out, err, sizeof err);
    bt_buf b = BT_BUF_INIT(0);
    if (e != BT_OK) {
        bt_buf_printf(&b, "ERR:%d", (int)e);
        CHECK(out == NULL);
    } else {
        size_t i;
        json_t *a;
        json_array_foreach(out, i, a)
            bt_buf_printf(&b, "%s%s", i ? "," : "", json_string_value(json_object_get(a, "name")));
    }
    /* count agrees with query when no paging is involved */
    long long n = -1;
    if (e == BT_OK &&
        (!filter || (!json_object_get(filter, "limit") && !json_object_get(filter, "offset")))) {
        CHECK_INT(bt_store_assets_count(st, filter, &n, err, sizeof err), BT_OK);
        CHECK_INT(n, json_array_size(out));
    }
    json_decref(out);
    json_decref(filter);
    return bt_buf_steal(&b);
}

#define CHECK_NAMES(st, filter, want)                                                              \
    do {                                                                                           \
        const char *f_ = (filter);                                                                 \
        char *got_ = names((st), f_);                                                              \
        CHECK_MSG(strcmp(got_, (want)) == 0, "filter %s: got \"%s\", want \"%s\"",                 \
                  f_ ? f_ : "NULL", got_, (want));                                                 \
        free(got_);                                                                                \
    } while (0)

static void test_assets(void)
{
    char err[BT_ERRLEN];
    char *path = tmp_path("assets");
    bt_store *st = open_ok(path);
    json_t *inv = inventory();
    CHECK_INT(bt_store_assets_replace(st, inv, err, sizeof err), BT_OK);

    CHECK_NAMES(st, NULL, "DB-01,dev-01,lab,web-01,web-02,win-01");
    CHECK_NAMES(st, "{}", "DB-01,dev-01,lab,web-01,web-02,win-01");
    /* exact keys, case-insensitive both ways */
    CHECK_NAMES(st, "{\"os\":\"windows\"}", "win-01");
    CHECK_NAMES(st, "{\"os\":\"LINUX\"}", "DB-01,dev-01,lab,web-01,web-02");
    CHECK_NAMES(st, "{\"environment\":\"Prod\"}", "DB-01,web-01,web-02");
    CHECK_NAMES(st, "{\"role\":\"web\"}", "dev-01,web-01,web-02");
    CHECK_NAMES(st, "{\"status\":\"active\"}", "DB-01,web-01,win-01");
    CHECK_NAMES(st, "{\"datacenter\":\"AMS1\"}", "DB-01,win-01");
    CHECK_NAMES(st, "{\"connection\":\"winrm\"}", "win-01");
    CHECK_NAMES(st, "{\"os\":\"lin\"}", "");
    /* combined with AND */
    CHECK_NAMES(st, "{\"role\":\"web\",\"environment\":\"prod\",\"status\":\"active\"}", "web-01");
    /* tags */
    CHECK_NAMES(st, "{\"tag\":\"nginx\"}", "web-01,web-02");
    CHECK_NAMES(st, "{\"tag\":\"frontend\"}", "web-01");
    CHECK_NAMES(st, "{\"tag\":\"CRITICAL\"}", "DB-01");
    CHECK_NAMES(st, "{\"tag\":\"ngin\"}", "");
    /* substring of name or hostname */
    CHECK_NAMES(st, "{\"name_contains\":\"WEB\"}", "web-01,web-02");
    CHECK_NAMES(st, "{\"name_contains\":\"corp.exa\"}", "win-01");
    CHECK_NAMES(st, "{\"name_contains\":\"db\"}", "DB-01");
    /* ip exact and prefix */
    CHECK_NAMES(st, "{\"ip\":\"10.0.1.11\"}", "web-01");
    CHECK_NAMES(st, "{\"ip\":\"10.0.1.1\"}", "");
    CHECK_NAMES(st, "{\"ip\":\"10.0.\"}", "DB-01,web-01,web-02");
    CHECK_NAMES(st, "{\"ip\":\"10.\"}", "DB-01,web-01,web-02,win-01");
    CHECK_NAMES(st, "{\"ip\":\"0.1.\"}", "");
    /* host: name, hostname or ip, exact */
    CHECK_NAMES(st, "{\"host\":\"db-01\"}", "DB-01");
    CHECK_NAMES(st, "{\"host\":\"win-01.corp.example\"}", "win-01");
    CHECK_NAMES(st, "{\"host\":\"192.168.7.7\"}", "lab");
    CHECK_NAMES(st, "{\"host\":\"web\"}", "");
    /* integer bounds, as numbers or digit strings */
    CHECK_NAMES(st, "{\"min_ram_gb\":16}", "DB-01,web-02");
    CHECK_NAMES(st, "{\"max_ram_gb\":8}", "dev-01,web-01,win-01");
    CHECK_NAMES(st, "{\"min_ram_gb\":8,\"max_ram_gb\":\"16\"}", "web-01,web-02,win-01");
    CHECK_NAMES(st, "{\"min_cpu\":4}", "DB-01,web-01,web-02");
    /* null counts as absent */
    CHECK_NAMES(st, "{\"os\":null,\"tag\":null}", "DB-01,dev-01,lab,web-01,web-02,win-01");
    /* limit and offset */
    CHECK_NAMES(st, "{\"limit\":2}", "DB-01,dev-01");
    CHECK_NAMES(st, "{\"limit\":2,\"offset\":2}", "lab,web-01");
    CHECK_NAMES(st, "{\"offset\":5}", "win-01");
    CHECK_NAMES(st, "{\"limit\":50000}", "DB-01,dev-01,lab,web-01,web-02,win-01");
    CHECK_NAMES(st, "{\"limit\":0}", "ERR:2");
    CHECK_NAMES(st, "{\"limit\":-1}", "ERR:2");
    CHECK_NAMES(st, "{\"offset\":-1}", "ERR:2");
    CHECK_NAMES(st, "{\"limit\":\"ten\"}", "ERR:2");
    /* bad keys and types */
    CHECK_NAMES(st, "{\"os\":1}", "ERR:2");
    CHECK_NAMES(st, "{\"min_cpu\":\"many\"}", "ERR:2");
    CHECK_NAMES(st, "{\"min_cpu\":1.5}", "ERR:2");

    json_t *bad = json_pack("{s:s}", "colour", "red");
    json_t *out = (json_t *)&out;
    CHECK_INT(bt_store_assets_query(st, bad, &out, err, sizeof err), BT_EINVAL);
    CHECK(out == NULL);
    CHECK_MSG(strstr(err, "colour") != NULL, "%s", err);
    long long n = 0;
    CHECK_INT(bt_store_assets_count(st, bad, &n, err, sizeof err), BT_EINVAL);
    CHECK(strstr(err, "colour") != NULL);
    json_decref(bad);
    json_t *arr = json_array();
    CHECK_INT(bt_store_assets_query(st, arr, &out, err, sizeof err), BT_EINVAL);
    json_decref(arr);

    /* Other keys are kept; the whole object comes back. */
    CHECK_INT(bt_store_assets_query(st, NULL, &out, err, sizeof err), BT_OK);
    json_t *web01 = json_array_get(out, 3);
    CHECK(json_equal(web01, json_array_get(inv, 0)));
    json_decref(out);

    /* Many filter combinations: more than the statement cache holds. */
    static const char *const keys[] = {"os",         "role",       "status",
                                       "datacenter", "connection", "environment"};
    for (int mask = 1; mask < 64; mask++) {
        json_t *f = json_object();
        for (int k = 0; k < 6; k++)
            if (mask & (1 << k))
                json_object_set_new(f, keys[k], json_string("nope"));
        CHECK_INT(bt_store_assets_count(st, f, &n, err, sizeof err), BT_OK);
        CHECK_INT(n, 0);
        json_decref(f);
    }
    CHECK_NAMES(st, "{\"tag\":\"nginx\"}", "web-01,web-02");

    /* Replacing swaps the whole inventory. */
    json_t *small = json_pack("[{s:s}]", "name", "only");
    CHECK_INT(bt_store_assets_replace(st, small, err, sizeof err), BT_OK);
    CHECK_NAMES(st, NULL, "only");
    json_decref(small);
    json_t *none = json_array();
    CHECK_INT(bt_store_assets_replace(st, none, err, sizeof err), BT_OK);
    CHECK_NAMES(st, NULL, "");
    json_decref(none);

    json_decref(inv);
    bt_store_close(st);
    free(path);
}

static void test_assets_injection(void)
{
    char err[BT_ERRLEN];
    char *path = tmp_path("inject");
    bt_store *st = open_ok(path);
    json_t *inv = inventory();
    CHECK_INT(bt_store_assets_replace(st, inv, err, sizeof err), BT_OK);
    json_decref(inv);

    static const char *const attempts[] = {
        "{\"name_contains\":\"x' OR 1=1 --\"}",
        "{\"name_contains\":\"x') OR 1=1 --\"}",
        "{\"os\":\"linux' OR '1'='1\"}",
        "{\"host\":\"'; DROP TABLE assets; --\"}",
        "{\"host\":\"x\\\" OR 1=1 --\"}",
        "{\"tag\":\"x') OR 1=1 --\"}",
        "{\"ip\":\"10.' OR 1=1 --.\"}",
        "{\"environment\":\"prod'; DELETE FROM assets; --\"}",
        "{\"name_contains\":\"%\"}",
        "{\"name_contains\":\"_\"}",
        "{\"min_cpu\":\"1 OR 1=1\"}",
    };
    for (size_t i = 0; i < sizeof attempts / sizeof attempts[0]; i++) {
        char *got = names(st, attempts[i]);
        CHECK_MSG(strcmp(got, "") == 0 || strcmp(got, "ERR:2") == 0, "%s -> %s", attempts[i], got);
        free(got);
    }
    long long n = 0;
    CHECK_INT(bt_store_assets_count(st, NULL, &n, err, sizeof err), BT_OK);
    CHECK_INT(n, 6);
    bt_store_close(st);
    CHECK_INT(raw_int(path, "SELECT count(*) FROM assets"), 6);
    free(path);
}

static void test_assets_invalid(void)
{
    char err[BT_ERRLEN];
    char *loc = pg_mode ? tmp_path("invalid") : bt_strdup(":memory:");
    bt_store *st = open_ok(loc);
    free(loc);
    json_t *inv = inventory();
    CHECK_INT(bt_store_assets_replace(st, inv, err, sizeof err), BT_OK);

    static const char *const bad[] = {
        "[{\"name\":\"a\"},{\"name\":\"b\"},{\"name\":\"A\"}]",
        "[{\"name\":\"a\"},{\"name\":\"a\"}]",
        "[{\"name\":\"a\"},{\"hostname\":\"b\"}]",
        "[{\"name\":\"\"}]",
        "[{\"name\":\"a\",\"cpu\":\"four\"}]",
        "[{\"name\":\"a\",\"tags\":\"x\"}]",
        "[{\"name\":\"a\",\"tags\":[1]}]",
        "[{\"name\":\"a\",\"ip\":10}]",
        "[\"a\"]",
        "{\"name\":\"a\"}",
    };
    json_error_t jerr;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *a = json_loads(bad[i], 0, &jerr);
        CHECK_MSG(bt_store_assets_replace(st, a, err, sizeof err) == BT_EINVAL, "%s", bad[i]);
        json_decref(a);
    }
    json_t *dup =
        json_loads("[{\"name\":\"a\"},{\"name\":\"web-9\"},{\"name\":\"Web-9\"}]", 0, &jerr);
    CHECK_INT(bt_store_assets_replace(st, dup, err, sizeof err), BT_EINVAL);
    CHECK_MSG(strstr(err, "duplicate") && strstr(err, "web-9"), "%s", err);
    json_decref(dup);
    CHECK_INT(bt_store_assets_replace(st, NULL, err, sizeof err), BT_EINVAL);
    /* The old inventory is untouched. */
    CHECK_NAMES(st, NULL, "DB-01,dev-01,lab,web-01,web-02,win-01");
    json_decref(inv);
    bt_store_close(st);
}

/* ---- requests, plans, executions, approvals ------------------------------ */

static void add_plan(bt_store *st, const char *plan_id, const char *request_id)
{
    char err[BT_ERRLEN], hex[65];
    json_t *plan = json_pack("{s:s, s:[{s:s, s:{s:s}}]}", "intent", "restart_service", "steps",
                             "tool", "service.restart", "inputs", "host", "web-01");
    char *canon = bt_json_canonical(plan);
    bt_sha256_hex(canon, strlen(canon), hex);
    CHECK_INT(bt_store_plan_add(st, plan_id, request_id, canon, hex, "medium", 1, err, sizeof err),
              BT_OK);
    free(canon);
    json_decref(plan);
}

static void test_records(void)
{
    char err[BT_ERRLEN], hex[65];
    char *path = tmp_path("records");
    bt_store *st = open_ok(path);
    const char *rid = "0123456789abcdef0123456789abcdef";

    CHECK_INT(bt_store_request_add(st, rid, "alice", "console", "restart nginx on web-01", err,
                                   sizeof err),
              BT_OK);
    CHECK_INT(bt_store_request_add(st, rid, "alice", "console", "again", err, sizeof err),
              BT_EINVAL);
    CHECK_INT(bt_store_request_add(st, "r2", NULL, NULL, "no user", err, sizeof err), BT_OK);
    CHECK_INT(bt_store_request_add(st, "", "a", "c", "t", err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_request_add(st, "r3", "a", "c", NULL, err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_request_add(st, "r4", "a\xff", "c", "t", err, sizeof err), BT_EINVAL);

    json_t *dec = json_pack("{s:s, s:f}", "intent", "restart_service", "confidence", 0.93);
    CHECK_INT(bt_store_decision_add(st, rid, dec, err, sizeof err), BT_OK);
    CHECK_INT(bt_store_decision_add(st, "nosuch", dec, err, sizeof err), BT_EINVAL);
    CHECK_MSG(strstr(err, "nosuch") != NULL, "%s", err);
    CHECK_INT(bt_store_decision_add(st, rid, NULL, err, sizeof err), BT_EINVAL);
    json_decref(dec);
    CHECK_INT(raw_int(path, "SELECT count(*) FROM decisions"), 1);

    /* plans */
    add_plan(st, "p1", rid);
    json_t *plan = NULL;
    CHECK_INT(bt_store_plan_get(st, "p1", &plan, err, sizeof err), BT_OK);
    CHECK_STR(json_string_value(json_object_get(plan, "plan_id")), "p1");
    CHECK_STR(json_string_value(json_object_get(plan, "request_id")), rid);
    CHECK_STR(json_string_value(json_object_get(plan, "risk")), "medium");
    CHECK_INT(json_integer_value(json_object_get(plan, "approval_level")), 1);
    CHECK(json_integer_value(json_object_get(plan, "created_ms")) > 0);
    char *canon = bt_json_canonical(json_object_get(plan, "plan"));
    bt_sha256_hex(canon, strlen(canon), hex);
    CHECK_STR(json_string_value(json_object_get(plan, "sha256")), hex);
    CHECK_STR(json_string_value(json_object_get(json_object_get(plan, "plan"), "intent")),
              "restart_service");
    json_decref(plan);

    CHECK_INT(bt_store_plan_add(st, "p2", rid, canon, "00", "low", 0, err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_plan_add(st, "p2", rid, canon, hex, "low", 4, err, sizeof err), BT_EINVAL);
    char wrong[65];
    bt_sha256_hex("x", 1, wrong);
    CHECK_INT(bt_store_plan_add(st, "p2", rid, canon, wrong, "low", 0, err, sizeof err), BT_EINVAL);
    CHECK(strstr(err, "does not match") != NULL);
    CHECK_INT(bt_store_plan_add(st, "p2", "nosuch", canon, hex, "low", 0, err, sizeof err),
              BT_EINVAL);
    bt_sha256_hex("[1]", 3, wrong);
    CHECK_INT(bt_store_plan_add(st, "p2", rid, "[1]", wrong, "low", 0, err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_plan_add(st, "p1", rid, canon, hex, "low", 0, err, sizeof err), BT_EINVAL);
    free(canon);
    plan = (json_t *)&plan;
    CHECK_INT(bt_store_plan_get(st, "nosuch", &plan, err, sizeof err), BT_ENOENT);
    CHECK(plan == NULL);

    /* executions and steps */
    CHECK_INT(bt_store_execution_add(st, "e1", "p1", "pending_approval", err, sizeof err), BT_OK);
    CHECK_INT(bt_store_execution_add(st, "e2", "p1", "sleeping", err, sizeof err), BT_EINVAL);
    CHECK_MSG(strstr(err, "sleeping") != NULL, "%s", err);
    CHECK_INT(bt_store_execution_add(st, "e2", "nosuch", "queued", err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_execution_add(st, "e1", "p1", "queued", err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_step_add(st, "e1", 0, "service.status", "pending", err, sizeof err), BT_OK);
    CHECK_INT(bt_store_step_add(st, "e1", 1, "service.restart", "pending", err, sizeof err), BT_OK);
    CHECK_INT(bt_store_step_add(st, "e1", 1, "service.restart", "pending", err, sizeof err),
              BT_EINVAL);
    CHECK_INT(bt_store_step_add(st, "e1", 2, "x", "done", err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_step_add(st, "e1", -1, "x", "pending", err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_step_add(st, "nosuch", 0, "x", "pending", err, sizeof err), BT_EINVAL);

    json_t *res = json_pack("{s:i, s:s}", "exit", 0, "stdout", "active");
    CHECK_INT(bt_store_step_set(st, "e1", 0, "completed", res, err, sizeof err), BT_OK);
    CHECK_INT(bt_store_step_set(st, "e1", 0, "completed", NULL, err, sizeof err), BT_OK);
    CHECK_INT(bt_store_step_set(st, "e1", 1, "running", NULL, err, sizeof err), BT_OK);
    CHECK_INT(bt_store_step_set(st, "e1", 1, "exploded", NULL, err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_step_set(st, "e1", 7, "running", NULL, err, sizeof err), BT_ENOENT);
    CHECK_INT(bt_store_execution_set(st, "e1", "running", NULL, err, sizeof err), BT_OK);
    CHECK_INT(bt_store_execution_set(st, "e1", "completed", res, err, sizeof err), BT_OK);
    CHECK_INT(bt_store_execution_set(st, "e1", "finished", NULL, err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_execution_set(st, "nosuch", "running", NULL, err, sizeof err), BT_ENOENT);

    json_t *ex = NULL;
    CHECK_INT(bt_store_execution_get(st, "e1", &ex, err, sizeof err), BT_OK);
    CHECK_STR(json_string_value(json_object_get(ex, "execution_id")), "e1");
    CHECK_STR(json_string_value(json_object_get(ex, "plan_id")), "p1");
    CHECK_STR(json_string_value(json_object_get(ex, "state")), "completed");
    CHECK(json_equal(json_object_get(ex, "result"), res));
    CHECK(json_integer_value(json_object_get(ex, "updated_ms")) >=
          json_integer_value(json_object_get(ex, "created_ms")));
    json_t *steps = json_object_get(ex, "steps");
    CHECK_INT(json_array_size(steps), 2);
    json_t *s0 = json_array_get(steps, 0), *s1 = json_array_get(steps, 1);
    CHECK_INT(json_integer_value(json_object_get(s0, "index")), 0);
    CHECK_STR(json_string_value(json_object_get(s0, "tool")), "service.status");
    CHECK_STR(json_string_value(json_object_get(s0, "state")), "completed");
    CHECK(json_equal(json_object_get(s0, "result"), res)); /* kept when NULL is passed */
    CHECK_STR(json_string_value(json_object_get(s1, "state")), "running");
    CHECK(json_is_null(json_object_get(s1, "result")));
    CHECK(json_integer_value(json_object_get(s1, "updated_ms")) > 0);
    json_decref(ex);
    ex = (json_t *)&ex;
    CHECK_INT(bt_store_execution_get(st, "nosuch", &ex, err, sizeof err), BT_ENOENT);
    CHECK(ex == NULL);
    json_decref(res);

    /* approvals */
    add_plan(st, "p3", rid);
    json_t *req = json_pack("{s:i, s:[s]}", "approvers", 2, "groups", "ops");
    int64_t exp = bt_wall_ms() + 3600000;
    CHECK_INT(bt_store_approval_add(st, "a1", "p1", "e1", 2, req, exp, err, sizeof err), BT_OK);
    CHECK_INT(bt_store_approval_add(st, "a2", "p3", NULL, 1, req, exp + 1, err, sizeof err), BT_OK);
    CHECK_INT(bt_store_approval_add(st, "a3", "p3", "", 3, req, exp, err, sizeof err), BT_OK);
    CHECK_INT(bt_store_approval_add(st, "a1", "p1", NULL, 2, req, exp, err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_approval_add(st, "a4", "nosuch", NULL, 2, req, exp, err, sizeof err),
              BT_EINVAL);
    CHECK_INT(bt_store_approval_add(st, "a4", "p1", "nosuch", 2, req, exp, err, sizeof err),
              BT_EINVAL);
    CHECK_INT(bt_store_approval_add(st, "a4", "p1", NULL, 5, req, exp, err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_approval_add(st, "a4", "p1", NULL, 2, NULL, exp, err, sizeof err),
              BT_EINVAL);

    json_t *ap = NULL;
    CHECK_INT(bt_store_approval_get(st, "a1", &ap, err, sizeof err), BT_OK);
    CHECK_STR(json_string_value(json_object_get(ap, "approval_id")), "a1");
    CHECK_STR(json_string_value(json_object_get(ap, "plan_id")), "p1");
    CHECK_STR(json_string_value(json_object_get(ap, "execution_id")), "e1");
    CHECK_INT(json_integer_value(json_object_get(ap, "level")), 2);
    CHECK(json_equal(json_object_get(ap, "requirement"), req));
    CHECK_STR(json_string_value(json_object_get(ap, "state")), "pending");
    CHECK_INT(json_integer_value(json_object_get(ap, "expires_ms")), exp);
    CHECK(json_integer_value(json_object_get(ap, "created_ms")) > 0);
    json_decref(ap);
    CHECK_INT(bt_store_approval_get(st, "a2", &ap, err, sizeof err), BT_OK);
    CHECK(json_is_null(json_object_get(ap, "execution_id")));
    json_decref(ap);
    CHECK_INT(bt_store_approval_get(st, "zz", &ap, err, sizeof err), BT_ENOENT);
    CHECK(ap == NULL);

    json_t *pending = NULL;
    CHECK_INT(bt_store_approvals_pending(st, &pending, err, sizeof err), BT_OK);
    CHECK_INT(json_array_size(pending), 3);
    CHECK_STR(json_string_value(json_object_get(json_array_get(pending, 0), "approval_id")), "a1");
    CHECK_STR(json_string_value(json_object_get(json_array_get(pending, 2), "approval_id")), "a3");
    json_decref(pending);
    json_decref(req);

    /* Everything survives a reopen. */
    bt_store_close(st);
    st = open_ok(path);
    CHECK_INT(bt_store_plan_get(st, "p1", &plan, err, sizeof err), BT_OK);
    json_decref(plan);
    CHECK_INT(bt_store_execution_get(st, "e1", &ex, err, sizeof err), BT_OK);
    CHECK_INT(json_array_size(json_object_get(ex, "steps")), 2);
    json_decref(ex);

    /* A plan edited behind baton's back no longer matches its hash. */
    bt_store_close(st);
    char msg[256];
    CHECK_INT(raw_exec(path,
                       "UPDATE plans SET canonical_json = replace(canonical_json, 'web-01', "
                       "'db-01') WHERE plan_id = 'p1'",
                       msg, sizeof msg),
              SQLITE_OK);
    st = open_ok(path);
    CHECK_INT(bt_store_plan_get(st, "p1", &plan, err, sizeof err), BT_ECORRUPT);
    CHECK(plan == NULL);
    CHECK_MSG(strstr(err, "p1") != NULL, "%s", err);
    bt_store_close(st);
    free(path);
}

static void test_settings(void)
{
    char err[BT_ERRLEN];
    char *path = tmp_path("settings");
    bt_store *st = open_ok(path);
    char *v = NULL;
    CHECK_INT(bt_store_setting_ensure(st, "signing_key", "first", &v, err, sizeof err), BT_OK);
    CHECK_STR(v, "first");
    free(v);
    CHECK_INT(bt_store_setting_ensure(st, "signing_key", "second", &v, err, sizeof err), BT_OK);
    CHECK_STR(v, "first");
    free(v);
    CHECK_INT(bt_store_setting_ensure(st, "other", "x", &v, err, sizeof err), BT_OK);
    CHECK_STR(v, "x");
    free(v);
    CHECK_INT(bt_store_setting_ensure(st, "", "x", &v, err, sizeof err), BT_EINVAL);
    CHECK(v == NULL);
    CHECK_INT(bt_store_setting_ensure(st, "k", NULL, &v, err, sizeof err), BT_EINVAL);
    bt_store_close(st);
    st = open_ok(path);
    CHECK_INT(bt_store_setting_ensure(st, "signing_key", "third", &v, err, sizeof err), BT_OK);
    CHECK_STR(v, "first");
    free(v);
    bt_store_close(st);
    free(path);
}

/* ---- audit log -------------------------------------------------------------- */

static void append_n(bt_store *st, int n, const char *actor)
{
    char err[BT_ERRLEN];
    for (int i = 0; i < n; i++) {
        json_t *detail = json_pack("{s:i, s:s, s:f}", "i", i, "note", "caf\xc3\xa9", "x", 0.1);
        enum bt_err e = bt_store_audit_append(st, i % 3 ? "0123456789abcdef0123456789abcdef" : NULL,
                                              i % 5 ? actor : NULL, "request",
                                              i % 7 ? detail : NULL, err, sizeof err);
        CHECK_MSG(e == BT_OK, "%s", err);
        json_decref(detail);
    }
}

static void test_audit_chain(void)
{
    char err[BT_ERRLEN];
    char *path = tmp_path("audit");
    bt_store *st = open_ok(path);
    long long n = -1;
    CHECK_INT(bt_store_audit_verify(st, &n, err, sizeof err), BT_OK);
    CHECK_INT(n, 0);

    int64_t t0 = bt_wall_ms();
    append_n(st, 100, "alice");
    CHECK_INT(bt_store_audit_verify(st, &n, err, sizeof err), BT_OK);
    CHECK_INT(n, 100);

    json_t *list = NULL;
    CHECK_INT(bt_store_audit_list(st, 0, 1000, &list, err, sizeof err), BT_OK);
    CHECK_INT(json_array_size(list), 100);
    json_t *e1 = json_array_get(list, 0), *e2 = json_array_get(list, 1);
    CHECK_INT(json_integer_value(json_object_get(e1, "seq")), 1);
    CHECK(json_integer_value(json_object_get(e1, "ts_ms")) >= t0);
    CHECK_STR(json_string_value(json_object_get(e1, "prev_hash")),
              "0000000000000000000000000000000000000000000000000000000000000000");
    CHECK_STR(json_string_value(json_object_get(e2, "prev_hash")),
              json_string_value(json_object_get(e1, "hash")));
    CHECK(json_is_null(json_object_get(e1, "request_id")));
    CHECK(json_is_null(json_object_get(e1, "actor")));
    CHECK(json_is_null(json_object_get(e1, "detail")));
    CHECK_STR(json_string_value(json_object_get(e2, "actor")), "alice");
    CHECK_INT(json_integer_value(json_object_get(json_object_get(e2, "detail"), "i")), 1);

    /* The documented hash: sha256(prev + "\n" + canonical {seq, ts_ms,
     * request_id, actor, event, detail}). */
    json_t *content =
        json_pack("{s:O, s:O, s:O, s:O, s:O, s:O}", "seq", json_object_get(e2, "seq"), "ts_ms",
                  json_object_get(e2, "ts_ms"), "request_id", json_object_get(e2, "request_id"),
                  "actor", json_object_get(e2, "actor"), "event", json_object_get(e2, "event"),
                  "detail", json_object_get(e2, "detail"));
    char *canon = bt_json_canonical(content);
    char *input = bt_asprintf("%s\n%s", json_string_value(json_object_get(e2, "prev_hash")), canon);
    char hex[65];
    bt_sha256_hex(input, strlen(input), hex);
    CHECK_STR(json_string_value(json_object_get(e2, "hash")), hex);
    free(input);
    free(canon);
    json_decref(content);

    /* since and limit */
    int64_t last_ts = json_integer_value(json_object_get(json_array_get(list, 99), "ts_ms"));
    json_decref(list);
    CHECK_INT(bt_store_audit_list(st, 0, 10, &list, err, sizeof err), BT_OK);
    CHECK_INT(json_array_size(list), 10);
    json_decref(list);
    CHECK_INT(bt_store_audit_list(st, last_ts + 1, 10, &list, err, sizeof err), BT_OK);
    CHECK_INT(json_array_size(list), 0);
    json_decref(list);
    CHECK_INT(bt_store_audit_list(st, 0, 0, &list, err, sizeof err), BT_EINVAL);
    CHECK(list == NULL);
    CHECK_INT(bt_store_audit_list(st, 0, 100001, &list, err, sizeof err), BT_EINVAL);

    /* bad input */
    CHECK_INT(bt_store_audit_append(st, NULL, NULL, NULL, NULL, err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_audit_append(st, NULL, NULL, "", NULL, err, sizeof err), BT_EINVAL);
    json_t *arr = json_array();
    CHECK_INT(bt_store_audit_append(st, NULL, NULL, "x", arr, err, sizeof err), BT_EINVAL);
    json_decref(arr);
    CHECK_INT(bt_store_audit_append(st, NULL, "bad\xc0", "x", NULL, err, sizeof err), BT_EINVAL);

    /* The triggers refuse UPDATE and DELETE from any connection. */
    bt_store_close(st);
    char msg[256];
    int rc =
        raw_exec(path, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 5", msg, sizeof msg);
    CHECK(rc != SQLITE_OK);
    CHECK_MSG(strstr(msg, "append-only") != NULL, "%s", msg);
    rc = raw_exec(path, "DELETE FROM audit_log WHERE seq = 5", msg, sizeof msg);
    CHECK(rc != SQLITE_OK);
    CHECK_MSG(strstr(msg, "append-only") != NULL, "%s", msg);
    CHECK_INT(raw_int(path, "SELECT count(*) FROM audit_log"), 100);

    /* An edit made by other means is found, with its seq. */
    drop_trigger(path, "audit_log_no_update");
    CHECK_INT(raw_exec(path, "UPDATE audit_log SET detail_json = '{\"i\":99}' WHERE seq = 37;", msg,
                       sizeof msg),
              SQLITE_OK);
    st = open_ok(path);
    CHECK_INT(bt_store_audit_verify(st, &n, err, sizeof err), BT_ECORRUPT);
    CHECK_MSG(strstr(err, "seq 37:") != NULL, "%s", err);
    CHECK_INT(n, 36);
    bt_store_close(st);
    free(path);
}

static void test_audit_tamper(void)
{
    char err[BT_ERRLEN], msg[256];
    long long n = 0;
    /* Long enough to cross verify's batch boundary (1000). */
    char *path = tmp_path("audit-long");
    bt_store *st = open_ok(path);
    append_n(st, 2100, "bob");
    CHECK_INT(bt_store_audit_verify(st, &n, err, sizeof err), BT_OK);
    CHECK_INT(n, 2100);
    bt_store_close(st);

    /* A deleted row is a gap. */
    drop_trigger(path, "audit_log_no_delete");
    CHECK_INT(raw_exec(path, "DELETE FROM audit_log WHERE seq = 1500;", msg, sizeof msg),
              SQLITE_OK);
    st = open_ok(path);
    CHECK_INT(bt_store_audit_verify(st, &n, err, sizeof err), BT_ECORRUPT);
    CHECK_MSG(strstr(err, "seq 1500:") != NULL && strstr(err, "missing"), "%s", err);
    CHECK_INT(n, 1499);
    bt_store_close(st);

    /* Rewriting a row together with its hash breaks the next link. */
    free(path);
    path = tmp_path("audit-relink");
    st = open_ok(path);
    append_n(st, 20, "carol");
    bt_store_close(st);
    drop_trigger(path, "audit_log_no_update");
    CHECK_INT(raw_exec(path,
                       "UPDATE audit_log SET actor = 'mallory', hash = "
                       "'1111111111111111111111111111111111111111111111111111111111111111' "
                       "WHERE seq = 12;",
                       msg, sizeof msg),
              SQLITE_OK);
    st = open_ok(path);
    CHECK_INT(bt_store_audit_verify(st, &n, err, sizeof err), BT_ECORRUPT);
    CHECK_MSG(strstr(err, "seq 12:") != NULL, "%s", err);
    bt_store_close(st);

    /* The first entry removed. */
    drop_trigger(path, "audit_log_no_delete");
    CHECK_INT(raw_exec(path, "DELETE FROM audit_log WHERE seq = 1;", msg, sizeof msg), SQLITE_OK);
    st = open_ok(path);
    CHECK_INT(bt_store_audit_verify(st, &n, err, sizeof err), BT_ECORRUPT);
    CHECK_MSG(strstr(err, "seq 1:") != NULL, "%s", err);
    CHECK_INT(n, 0);
    bt_store_close(st);
    free(path);
}

/* Two handles on one file, used alternately from one thread. */
static void test_two_handles(void)
{
    char err[BT_ERRLEN];
    char *path = tmp_path("two");
    bt_store *a = open_ok(path), *b = open_ok(path);
    for (int i = 0; i < 60; i++) {
        json_t *d = json_pack("{s:i}", "i", i);
        CHECK_INT(bt_store_audit_append(i % 2 ? a : b, NULL, i % 2 ? "a" : "b", "tick", d, err,
                                        sizeof err),
                  BT_OK);
        json_decref(d);
    }
    long long n = 0;
    CHECK_INT(bt_store_audit_verify(a, &n, err, sizeof err), BT_OK);
    CHECK_INT(n, 60);
    CHECK_INT(bt_store_audit_verify(b, &n, err, sizeof err), BT_OK);
    CHECK_INT(n, 60);
    /* One sees what the other wrote. */
    char *v = NULL;
    CHECK_INT(bt_store_setting_ensure(a, "k", "from-a", &v, err, sizeof err), BT_OK);
    free(v);
    CHECK_INT(bt_store_setting_ensure(b, "k", "from-b", &v, err, sizeof err), BT_OK);
    CHECK_STR(v, "from-a");
    free(v);
    bt_store_close(a);
    bt_store_close(b);
    free(path);
}

struct appender {
    const char *path;
    const char *actor;
    int n;
    int failures;
};

static void *append_thread(void *arg)
{
    struct appender *ap = arg;
    bt_store *st = NULL;
    char err[BT_ERRLEN];
    if (bt_store_open(ap->path, &st, err, sizeof err) != BT_OK) {
        ap->failures = ap->n;
        return NULL;
    }
    for (int i = 0; i < ap->n; i++) {
        json_t *d = json_pack("{s:i}", "i", i);
        if (bt_store_audit_append(st, NULL, ap->actor, "tick", d, err, sizeof err) != BT_OK)
            ap->failures++;
        json_decref(d);
    }
    bt_store_close(st);
    return NULL;
}

/* Two threads, each with its own handle, appending at the same time. */
static void test_two_threads(void)
{
    char err[BT_ERRLEN];
    char *path = tmp_path("threads");
    bt_store_close(open_ok(path)); /* create and migrate first */
    struct appender x = {path, "x", 150, 0}, y = {path, "y", 150, 0};
    pthread_t tx, ty;
    CHECK(pthread_create(&tx, NULL, append_thread, &x) == 0);
    CHECK(pthread_create(&ty, NULL, append_thread, &y) == 0);
    pthread_join(tx, NULL);
    pthread_join(ty, NULL);
    CHECK_INT(x.failures, 0);
    CHECK_INT(y.failures, 0);
    bt_store *st = open_ok(path);
    long long n = 0;
    CHECK_INT(bt_store_audit_verify(st, &n, err, sizeof err), BT_OK);
    CHECK_INT(n, 300);
    bt_store_close(st);
    CHECK_INT(raw_int(path, "SELECT count(DISTINCT prev_hash) FROM audit_log"), 300);
    free(path);
}

/* A write lock held elsewhere for longer than the busy timeout. */
static void test_busy(void)
{
    char err[BT_ERRLEN];
    char *path = tmp_path("busy");
    bt_store *st = open_ok(path);
    sqlite3 *db = NULL;
    CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK);
    int64_t t0 = bt_mono_ms();
    CHECK_INT(bt_store_audit_append(st, NULL, NULL, "x", NULL, err, sizeof err), BT_ETIMEOUT);
    CHECK(bt_mono_ms() - t0 >= 4000);
    CHECK_MSG(strstr(err, "locked") != NULL, "%s", err);
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(db);
    /* and the handle works afterwards */
    CHECK_INT(bt_store_audit_append(st, NULL, NULL, "x", NULL, err, sizeof err), BT_OK);
    bt_store_close(st);
    free(path);
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

/* A batch commits its writes together, or none of them. */
static void test_batch(void)
{
    char *path = tmp_path("batch");
    bt_store *st = open_ok(path);
    char err[BT_ERRLEN];
    CHECK_INT(bt_store_batch_begin(st, err, sizeof err), BT_OK);
    CHECK_INT(bt_store_batch_begin(st, err, sizeof err), BT_EINVAL); /* no nesting */
    CHECK_INT(bt_store_request_add(st, "11111111111111111111111111111111", "alice", "cli", "one",
                                   err, sizeof err),
              BT_OK);
    CHECK_INT(bt_store_audit_append(st, NULL, "alice", "one", NULL, err, sizeof err), BT_OK);
    CHECK_INT(bt_store_batch_end(st, false, err, sizeof err), BT_OK);
    CHECK_INT(raw_int(path, "SELECT count(*) FROM requests"), 0);
    CHECK_INT(raw_int(path, "SELECT count(*) FROM audit_log"), 0);

    CHECK_INT(bt_store_batch_begin(st, err, sizeof err), BT_OK);
    CHECK_INT(bt_store_request_add(st, "22222222222222222222222222222222", "alice", "cli", "two",
                                   err, sizeof err),
              BT_OK);
    /* a failing operation inside leaves the rest of the batch alone */
    CHECK(bt_store_request_add(st, "22222222222222222222222222222222", "alice", "cli", "dup", err,
                               sizeof err) != BT_OK);
    CHECK_INT(bt_store_audit_append(st, NULL, "alice", "two", NULL, err, sizeof err), BT_OK);
    CHECK_INT(bt_store_audit_append(st, NULL, "alice", "three", NULL, err, sizeof err), BT_OK);
    CHECK_INT(bt_store_batch_end(st, true, err, sizeof err), BT_OK);
    CHECK_INT(bt_store_batch_end(st, true, err, sizeof err), BT_EINVAL);
    CHECK_INT(raw_int(path, "SELECT count(*) FROM requests"), 1);
    CHECK_INT(raw_int(path, "SELECT count(*) FROM audit_log"), 2);
    long long n = 0;
    CHECK_MSG(bt_store_audit_verify(st, &n, err, sizeof err) == BT_OK && n == 2, "%s", err);
    bt_store_close(st);
    free(path);
}

/* Console tokens: only the hash is kept; look-up records the use; the
 * history of a user's requests comes newest first. */
static void test_console_tokens(void)
{
    char *path = tmp_path("tokens");
    bt_store *st = open_ok(path);
    char err[BT_ERRLEN], hash[65], other[65];
    char *user = NULL;
    bt_sha256_hex("bt_secret", 9, hash);
    bt_sha256_hex("bt_other", 8, other);
    CHECK_INT(bt_store_console_token_add(st, hash, "alice", err, sizeof err), BT_OK);
    CHECK(bt_store_console_token_add(st, hash, "bob", err, sizeof err) != BT_OK);
    CHECK_INT(bt_store_console_token_add(st, "bt_secret", "alice", err, sizeof err), BT_EINVAL);
    CHECK_INT(raw_int(path, "SELECT count(*) FROM console_tokens WHERE last_used_ms IS NULL"), 1);
    CHECK_INT(bt_store_console_token_user(st, hash, &user, err, sizeof err), BT_OK);
    CHECK_STR(user, "alice");
    free(user);
    CHECK_INT(raw_int(path, "SELECT count(*) FROM console_tokens WHERE last_used_ms IS NULL"), 0);
    CHECK_INT(bt_store_console_token_user(st, other, &user, err, sizeof err), BT_ENOENT);
    CHECK(user == NULL);

    CHECK_INT(bt_store_request_add(st, "11111111111111111111111111111111", "alice", "console",
                                   "one", err, sizeof err),
              BT_OK);
    CHECK_INT(bt_store_request_add(st, "22222222222222222222222222222222", "alice", "console",
                                   "two", err, sizeof err),
              BT_OK);
    CHECK_INT(bt_store_request_add(st, "33333333333333333333333333333333", "bob", "cli", "three",
                                   err, sizeof err),
              BT_OK);
    json_t *list = NULL;
    CHECK_INT(bt_store_requests_of(st, "alice", 10, &list, err, sizeof err), BT_OK);
    CHECK_INT(json_array_size(list), 2);
    CHECK_STR(json_string_value(json_object_get(json_array_get(list, 0), "text")), "two");
    json_decref(list);
    CHECK_INT(bt_store_requests_of(st, "alice", 0, &list, err, sizeof err), BT_EINVAL);

    /* One request, and its audit trail (only its own entries, in order). */
    json_t *req = NULL;
    CHECK_INT(bt_store_request_get(st, "33333333333333333333333333333333", &req, err, sizeof err),
              BT_OK);
    CHECK_STR(json_string_value(json_object_get(req, "user")), "bob");
    CHECK_STR(json_string_value(json_object_get(req, "channel")), "cli");
    CHECK_STR(json_string_value(json_object_get(req, "text")), "three");
    json_decref(req);
    req = NULL;
    CHECK_INT(bt_store_request_get(st, "44444444444444444444444444444444", &req, err, sizeof err),
              BT_ENOENT);
    CHECK(req == NULL);
    CHECK_INT(bt_store_request_get(st, "", &req, err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_request_get(st, "x' OR '1'='1", &req, err, sizeof err), BT_ENOENT);
    static const char *const events[] = {"request", "plan", "approved"};
    for (int i = 0; i < 3; i++) {
        CHECK_INT(bt_store_audit_append(st, "11111111111111111111111111111111", "alice", events[i],
                                        NULL, err, sizeof err),
                  BT_OK);
        CHECK_INT(bt_store_audit_append(st, "22222222222222222222222222222222", "alice", "other",
                                        NULL, err, sizeof err),
                  BT_OK);
    }
    CHECK_INT(
        bt_store_audit_of(st, "11111111111111111111111111111111", 100, &list, err, sizeof err),
        BT_OK);
    CHECK_INT(json_array_size(list), 3);
    for (size_t i = 0; i < json_array_size(list); i++)
        CHECK_STR(json_string_value(json_object_get(json_array_get(list, i), "event")), events[i]);
    json_decref(list);
    CHECK_INT(bt_store_audit_of(st, "11111111111111111111111111111111", 2, &list, err, sizeof err),
              BT_OK);
    CHECK_INT(json_array_size(list), 2);
    json_decref(list);
    CHECK_INT(bt_store_audit_of(st, "11111111111111111111111111111111", 0, &list, err, sizeof err),
              BT_EINVAL);

    /* Housekeeping (SQLite: a checkpoint copies the write-ahead log into
     * the database, so later writes reuse the log from its start instead
     * of growing it); the data stays. */
    if (!pg_mode) {
        char *wal = bt_asprintf("%s-wal", path);
        struct stat sb;
        CHECK(stat(wal, &sb) == 0 && sb.st_size > 0);
        off_t before = sb.st_size;
        CHECK_INT(bt_store_maintain(st, err, sizeof err), BT_OK);
        for (int i = 0; i < 3; i++)
            CHECK_INT(bt_store_audit_append(st, "33333333333333333333333333333333", "alice",
                                            "after", NULL, err, sizeof err),
                      BT_OK);
        CHECK_MSG(stat(wal, &sb) == 0 && sb.st_size <= before,
                  "the log grew from %lld to %lld bytes after a checkpoint", (long long)before,
                  (long long)sb.st_size);
        free(wal);
    } else {
        CHECK_INT(bt_store_maintain(st, err, sizeof err), BT_OK);
    }
    CHECK_INT(bt_store_requests_of(st, "alice", 10, &list, err, sizeof err), BT_OK);
    CHECK_INT(json_array_size(list), 2);
    json_decref(list);
    bt_store_close(st);
    free(path);
}

/* ---- races (both backends) -------------------------------------------------- */

#define RACE_N 40

struct decider {
    const char *path;
    const char *user;
    int wins;
    int errors;
    bool won; /* set by the check of the current call */
    int checks;
};

/* Approve the approval if nobody has: the first caller wins it. */
static enum bt_err approve_first(void *ctx, const json_t *ap, struct bt_store_approval_change *ch,
                                 char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    struct decider *d = ctx;
    d->checks++;
    if (strcmp(json_string_value(json_object_get(ap, "state")), "pending") != 0 ||
        json_array_size(json_object_get(ap, "decisions")) != 0)
        return BT_OK;
    ch->state = "approved";
    ch->user = d->user;
    ch->decision = "approve";
    ch->step = -1;
    ch->via = "test";
    d->won = true;
    return BT_OK;
}

static void *decide_thread(void *arg)
{
    struct decider *d = arg;
    bt_store *st = NULL;
    char err[BT_ERRLEN], id[32];
    if (bt_store_open(d->path, &st, err, sizeof err) != BT_OK) {
        d->errors = RACE_N;
        return NULL;
    }
    for (int i = 0; i < RACE_N; i++) {
        bt_fmt(id, sizeof id, "race-%d", i);
        d->won = false;
        if (bt_store_approval_update(st, id, approve_first, d, err, sizeof err) != BT_OK)
            d->errors++;
        else if (d->won)
            d->wins++;
    }
    bt_store_close(st);
    return NULL;
}

/* Two handles (two connections) race to decide the same approvals: each
 * one is decided exactly once. */
static void test_race_approval(void)
{
    char err[BT_ERRLEN];
    char *path = tmp_path("race-approval");
    bt_store *st = open_ok(path);
    CHECK_INT(bt_store_request_add(st, "r1", "alice", "cli", "race", err, sizeof err), BT_OK);
    add_plan(st, "p1", "r1");
    json_t *req = json_pack("{s:i}", "approvers", 1);
    for (int i = 0; i < RACE_N; i++) {
        char id[32];
        bt_fmt(id, sizeof id, "race-%d", i);
        CHECK_INT(bt_store_approval_add(st, id, "p1", NULL, 1, req, bt_wall_ms() + 60000, err,
                                        sizeof err),
                  BT_OK);
    }
    json_decref(req);
    struct decider a = {path, "alice", 0, 0, false, 0}, b = {path, "bob", 0, 0, false, 0};
    pthread_t ta, tb;
    CHECK(pthread_create(&ta, NULL, decide_thread, &a) == 0);
    CHECK(pthread_create(&tb, NULL, decide_thread, &b) == 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    CHECK_INT(a.errors + b.errors, 0);
    CHECK_INT(a.wins + b.wins, RACE_N);
    CHECK_INT(a.checks, RACE_N); /* the check runs once per call */
    CHECK_INT(raw_int(path, "SELECT count(*) FROM approval_decisions"), RACE_N);
    CHECK_INT(raw_int(path, "SELECT count(*) FROM approvals WHERE state = 'approved'"), RACE_N);
    bt_store_close(st);
    free(path);
}

struct claimer {
    const char *path;
    const char *worker;
    long long ids[RACE_N];
    int n;
    int errors;
};

static void *claim_thread(void *arg)
{
    struct claimer *c = arg;
    bt_store *st = NULL;
    char err[BT_ERRLEN];
    if (bt_store_open(c->path, &st, err, sizeof err) != BT_OK) {
        c->errors++;
        return NULL;
    }
    for (int guard = 0; guard < 4 * RACE_N; guard++) {
        json_t *job = NULL;
        if (bt_store_job_claim(st, c->worker, 86400000, &job, err, sizeof err) != BT_OK) {
            c->errors++;
            break;
        }
        if (!job)
            break;
        if (c->n < RACE_N)
            c->ids[c->n++] = json_integer_value(json_object_get(job, "job_id"));
        if (json_integer_value(json_object_get(job, "attempt")) != 1 ||
            json_is_true(json_object_get(job, "reclaimed")))
            c->errors++;
        json_decref(job);
    }
    bt_store_close(st);
    return NULL;
}

/* Two handles claim from one queue at the same time: every job is handed
 * out exactly once. */
static void test_race_claim(void)
{
    char err[BT_ERRLEN];
    char *path = tmp_path("race-claim");
    bt_store *st = open_ok(path);
    CHECK_INT(bt_store_request_add(st, "r1", "alice", "cli", "race", err, sizeof err), BT_OK);
    add_plan(st, "p1", "r1");
    json_t *none = json_array();
    for (int i = 0; i < RACE_N; i++) {
        char id[32];
        long long job = 0;
        bt_fmt(id, sizeof id, "e%d", i);
        CHECK_INT(bt_store_execution_add(st, id, "p1", "queued", err, sizeof err), BT_OK);
        CHECK_INT(bt_store_job_add(st, id, -1, none, 3, bt_wall_ms(), &job, err, sizeof err),
                  BT_OK);
    }
    json_decref(none);
    struct claimer a = {.path = path, .worker = "wa"}, b = {.path = path, .worker = "wb"};
    pthread_t ta, tb;
    CHECK(pthread_create(&ta, NULL, claim_thread, &a) == 0);
    CHECK(pthread_create(&tb, NULL, claim_thread, &b) == 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    CHECK_INT(a.errors + b.errors, 0);
    CHECK_INT(a.n + b.n, RACE_N);
    for (int i = 0; i < a.n; i++)
        for (int k = 0; k < b.n; k++)
            CHECK_MSG(a.ids[i] != b.ids[k], "job %lld claimed twice", a.ids[i]);
    CHECK_INT(raw_int(path, "SELECT count(*) FROM jobs WHERE state = 'running' AND attempt = 1"),
              RACE_N);
    json_t *job = (json_t *)&job;
    CHECK_INT(bt_store_job_claim(st, "wc", 86400000, &job, err, sizeof err), BT_OK);
    CHECK(job == NULL);
    bt_store_close(st);
    free(path);
}

/* ---- PostgreSQL only ---------------------------------------------------------- */

/* Two processes opening a new database at once: each migration is applied
 * once, both end at the current version. */
struct opener {
    const char *path;
    int version;
};

static void *open_thread(void *arg)
{
    struct opener *o = arg;
    bt_store *st = NULL;
    char err[BT_ERRLEN];
    if (bt_store_open(o->path, &st, err, sizeof err) == BT_OK) {
        o->version = bt_store_schema_version(st);
        bt_store_close(st);
    } else {
        fprintf(stderr, "open: %s\n", err);
    }
    return NULL;
}

static void test_open_create_pg(void)
{
    char err[BT_ERRLEN];
    char *path = tmp_path("create");
    bt_store *st = open_ok(path);
    CHECK_INT(bt_store_schema_version(st), BT_STORE_SCHEMA_VERSION);
    bt_store_close(st);
    for (int i = 0; i < 2; i++) {
        st = open_ok(path);
        CHECK_INT(bt_store_schema_version(st), BT_STORE_SCHEMA_VERSION);
        char *v = NULL;
        CHECK_INT(bt_store_setting_ensure(st, "k", "v", &v, err, sizeof err), BT_OK);
        free(v);
        bt_store_close(st);
    }
    CHECK_INT(raw_int(path, "SELECT count(*) FROM schema_migrations"), BT_STORE_SCHEMA_VERSION);
    CHECK_INT(raw_int(path, "SELECT max(version) FROM schema_migrations"), BT_STORE_SCHEMA_VERSION);
    CHECK_INT(raw_int(path,
                      "SELECT count(*) FROM pg_description d"
                      " JOIN pg_class c ON c.oid = d.objoid"
                      " WHERE c.relname = 'schema_migrations' AND d.description = 'baton store'"),
              1);
    free(path);

    path = tmp_path("create-race");
    struct opener o[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        o[i] = (struct opener){path, 0};
        CHECK(pthread_create(&t[i], NULL, open_thread, &o[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        CHECK_INT(o[i].version, BT_STORE_SCHEMA_VERSION);
    }
    CHECK_INT(raw_int(path, "SELECT count(*) FROM schema_migrations"), BT_STORE_SCHEMA_VERSION);
    free(path);
}

static void test_foreign_pg(void)
{
    char msg[256];
    char *path = tmp_path("foreign");
    CHECK_INT(raw_exec(path,
                       "CREATE TABLE customers(id BIGINT PRIMARY KEY, name TEXT);"
                       "INSERT INTO customers VALUES (1, 'alice');",
                       msg, sizeof msg),
              0);
    expect_corrupt(path, "not a baton store: schema public holds another program's tables");
    CHECK_INT(raw_int(path, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), 1);
    CHECK_INT(raw_int(path, "SELECT count(*) FROM customers"), 1);
    free(path);

    /* A schema_migrations table of another program (Rails, golang-migrate). */
    path = tmp_path("foreign-migr");
    CHECK_INT(raw_exec(path, "CREATE TABLE schema_migrations(version TEXT);", msg, sizeof msg), 0);
    expect_corrupt(path, "not a baton store");
    free(path);

    /* Marked as baton's, but damaged. */
    path = tmp_path("damaged");
    CHECK_INT(raw_exec(path,
                       "CREATE TABLE schema_migrations(v TEXT);"
                       "COMMENT ON TABLE schema_migrations IS 'baton store';",
                       msg, sizeof msg),
              0);
    expect_corrupt(path, "not a baton store or damaged");
    free(path);
}

/* A lock held elsewhere for longer than lock_timeout: BT_ETIMEOUT. */
static void test_busy_pg(void)
{
    char err[BT_ERRLEN];
    char *path = tmp_path("busy");
    bt_store *st = open_ok(path);
    PGconn *c = PQconnectdb(path);
    PGresult *r = PQexec(c, "BEGIN; SELECT pg_advisory_xact_lock(1650553966, 2)");
    CHECK(PQresultStatus(r) == PGRES_TUPLES_OK);
    PQclear(r);
    int64_t t0 = bt_mono_ms();
    CHECK_INT(bt_store_audit_append(st, NULL, NULL, "x", NULL, err, sizeof err), BT_ETIMEOUT);
    CHECK(bt_mono_ms() - t0 >= 4000);
    CHECK_MSG(strstr(err, "locked") != NULL, "%s", err);
    PQclear(PQexec(c, "ROLLBACK"));
    PQfinish(c);
    CHECK_INT(bt_store_audit_append(st, NULL, NULL, "x", NULL, err, sizeof err), BT_OK);
    bt_store_close(st);
    free(path);
}

/* The store's server processes in path's database (baton sets its
 * application_name), and whether any of them waits for a lock. */
static long long store_backends(const char *path, bool waiting)
{
    return raw_int(path, waiting ? "SELECT count(*) FROM pg_stat_activity"
                                   " WHERE datname = current_database()"
                                   " AND application_name = 'baton' AND wait_event_type = 'Lock'"
                                 : "SELECT count(*) FROM pg_stat_activity"
                                   " WHERE datname = current_database()"
                                   " AND application_name = 'baton'");
}

/* Terminate the store's connections from outside (as an administrator or
 * a server restart would) and wait until those server processes are gone
 * (the store may have made a new one by then). */
static void kill_store(const char *path)
{
    PGconn *c = PQconnectdb(path);
    PGresult *r = PQexec(c, "WITH v AS MATERIALIZED (SELECT pid FROM pg_stat_activity"
                            " WHERE datname = current_database() AND application_name = 'baton')"
                            " SELECT coalesce(array_agg(pid), '{}') FROM v"
                            " WHERE pg_terminate_backend(pid)");
    CHECK(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1);
    char pids[256] = "{}";
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        bt_strlcpy(pids, PQgetvalue(r, 0, 0), sizeof pids);
    PQclear(r);
    CHECK_MSG(strcmp(pids, "{}") != 0, "no store connection to kill");
    const char *params[1] = {pids};
    long long left = -1;
    for (int i = 0; i < 500 && left != 0; i++) {
        r = PQexecParams(c, "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", 1,
                         NULL, params, NULL, NULL, 0);
        left = PQresultStatus(r) == PGRES_TUPLES_OK ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : -1;
        PQclear(r);
        if (left != 0)
            usleep(10000);
    }
    CHECK_INT(left, 0);
    PQfinish(c);
}

struct killer_check {
    const char *path;
    int calls;
};

/* A check that loses the connection while the approval is held. */
static enum bt_err kill_in_check(void *ctx, const json_t *ap, struct bt_store_approval_change *ch,
                                 char *err, size_t errlen)
{
    (void)ap;
    (void)err;
    (void)errlen;
    struct killer_check *k = ctx;
    k->calls++;
    kill_store(k->path);
    ch->state = "approved";
    return BT_OK;
}

struct bg_append {
    bt_store *st;
    enum bt_err e;
    char err[BT_ERRLEN];
};

static void *append_bg(void *arg)
{
    struct bg_append *b = arg;
    b->e = bt_store_audit_append(b->st, NULL, "bg", "tick", NULL, b->err, sizeof b->err);
    return NULL;
}

/* The connection is killed from outside at several points; every call
 * that had not committed is run again on a new connection, transparently. */
static void test_reconnect_pg(void)
{
    char err[BT_ERRLEN];
    char *path = tmp_path("reconnect");
    bt_store *st = open_ok(path);
    CHECK_INT(bt_store_request_add(st, "r1", "alice", "cli", "one", err, sizeof err), BT_OK);
    CHECK_INT(bt_store_audit_append(st, "r1", "alice", "one", NULL, err, sizeof err), BT_OK);

    /* Killed while idle: writes, reads and snapshots just work. */
    kill_store(path);
    CHECK_MSG(bt_store_request_add(st, "r2", "alice", "cli", "two", err, sizeof err) == BT_OK, "%s",
              err);
    kill_store(path);
    json_t *o = NULL;
    CHECK_MSG(bt_store_request_get(st, "r2", &o, err, sizeof err) == BT_OK, "%s", err);
    json_decref(o);
    kill_store(path);
    long long n = 0;
    CHECK_MSG(bt_store_audit_verify(st, &n, err, sizeof err) == BT_OK && n == 1, "%s", err);
    kill_store(path);
    CHECK_MSG(bt_store_audit_append(st, "r2", "alice", "two", NULL, err, sizeof err) == BT_OK, "%s",
              err);

    /* Killed in the middle of a call (waiting for the audit chain lock):
     * the call is run again on a new connection and succeeds. */
    PGconn *c = PQconnectdb(path);
    PGresult *r = PQexec(c, "BEGIN; SELECT pg_advisory_xact_lock(1650553966, 2)");
    CHECK(PQresultStatus(r) == PGRES_TUPLES_OK);
    PQclear(r);
    struct bg_append bg = {st, BT_ESTORE, ""};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, append_bg, &bg) == 0);
    for (int i = 0; i < 300 && store_backends(path, true) == 0; i++)
        usleep(10000);
    CHECK_INT(store_backends(path, true), 1);
    kill_store(path);
    PQclear(PQexec(c, "COMMIT"));
    PQfinish(c);
    pthread_join(t, NULL);
    CHECK_MSG(bg.e == BT_OK, "%s", bg.err);
    CHECK_MSG(bt_store_audit_verify(st, &n, err, sizeof err) == BT_OK && n == 3, "%s", err);

    /* Killed inside a batch: the batch is gone, and says so, until it ends;
     * nothing of it was written; the handle works afterwards. */
    CHECK_INT(bt_store_batch_begin(st, err, sizeof err), BT_OK);
    CHECK_INT(bt_store_request_add(st, "r3", "alice", "cli", "three", err, sizeof err), BT_OK);
    kill_store(path);
    CHECK_INT(bt_store_request_add(st, "r4", "alice", "cli", "four", err, sizeof err), BT_EUNAVAIL);
    CHECK_MSG(strstr(err, "batch") != NULL, "%s", err);
    CHECK_INT(bt_store_audit_append(st, NULL, "alice", "x", NULL, err, sizeof err), BT_EUNAVAIL);
    CHECK_INT(bt_store_batch_end(st, true, err, sizeof err), BT_EUNAVAIL);
    CHECK_MSG(strstr(err, "nothing of it was written") != NULL, "%s", err);
    CHECK_INT(bt_store_request_get(st, "r3", &o, err, sizeof err), BT_ENOENT);
    CHECK_INT(bt_store_request_add(st, "r3", "alice", "cli", "three", err, sizeof err), BT_OK);
    /* and a batch given up on after a loss ends quietly */
    CHECK_INT(bt_store_batch_begin(st, err, sizeof err), BT_OK);
    kill_store(path);
    CHECK_INT(bt_store_request_add(st, "r5", "alice", "cli", "five", err, sizeof err), BT_EUNAVAIL);
    CHECK_INT(bt_store_batch_end(st, false, err, sizeof err), BT_OK);

    /* Killed after approval_update's check ran: not run again (the check is
     * called once), nothing written, the next call works. */
    add_plan(st, "p1", "r1");
    json_t *req = json_pack("{s:i}", "approvers", 1);
    CHECK_INT(
        bt_store_approval_add(st, "a1", "p1", NULL, 1, req, bt_wall_ms() + 60000, err, sizeof err),
        BT_OK);
    json_decref(req);
    struct killer_check k = {path, 0};
    CHECK_INT(bt_store_approval_update(st, "a1", kill_in_check, &k, err, sizeof err), BT_EUNAVAIL);
    CHECK_INT(k.calls, 1);
    CHECK_INT(bt_store_approval_get(st, "a1", &o, err, sizeof err), BT_OK);
    CHECK_STR(json_string_value(json_object_get(o, "state")), "pending");
    json_decref(o);
    struct decider d = {path, "bob", 0, 0, false, 0};
    CHECK_INT(bt_store_approval_update(st, "a1", approve_first, &d, err, sizeof err), BT_OK);
    CHECK(d.won);
    CHECK_MSG(bt_store_audit_verify(st, &n, err, sizeof err) == BT_OK && n == 3, "%s", err);
    bt_store_close(st);
    free(path);
}

int main(void)
{
    umask(022);
    pg_mode = bt_pg_mode();
    bt_strlcpy(tmpdir, "/tmp/bt-store-XXXXXX", sizeof tmpdir);
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    if (pg_mode)
        RUN(test_open_create_pg);
    else
        RUN(test_open_create);
    RUN(test_batch);
    RUN(test_console_tokens);
    RUN(test_locations);
    RUN(test_newer_schema);
    if (pg_mode) {
        RUN(test_foreign_pg);
    } else {
        RUN(test_corrupt);
        RUN(test_foreign);
    }
    RUN(test_assets);
    RUN(test_assets_injection);
    RUN(test_assets_invalid);
    RUN(test_records);
    RUN(test_settings);
    RUN(test_audit_chain);
    RUN(test_audit_tamper);
    RUN(test_two_handles);
    RUN(test_two_threads);
    RUN(test_race_approval);
    RUN(test_race_claim);
    if (pg_mode) {
        RUN(test_busy_pg);
        RUN(test_reconnect_pg);
    } else {
        RUN(test_busy);
    }
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (pg_mode)
        bt_pg_fresh_drop_all();
    return bt_test_finish();
}
