/* Unit tests for the store's change notifications (bt_store_listen,
 * bt_store_changes). Against PostgreSQL (BATON_TEST_STORE, set by
 * tests/pg/pg_cluster.sh run): handle A listens while handle B writes, and
 * A must get the approval ids within a second, never for a change that was
 * rolled back, and again after its connection was killed (with "*" first).
 * Against SQLite (no BATON_TEST_STORE): both calls say BT_EUNAVAIL. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "bot/store/store.h"
#include "bot/util.h"
#include "pg_fresh.h"
#include "test.h"

static char location[512];

static bt_store *open_at(const char *where)
{
    bt_store *st = NULL;
    char err[BT_ERRLEN];
    enum bt_err e = bt_store_open(where, &st, err, sizeof err);
    CHECK_MSG(e == BT_OK && st, "open %s: %s", where, err);
    return st;
}

static bt_store *open_ok(void)
{
    return open_at(location);
}

static bt_store *listener(void)
{
    bt_store *st = open_ok();
    char err[BT_ERRLEN];
    CHECK_MSG(bt_store_listen(st, err, sizeof err) == BT_OK, "listen: %s", err);
    return st;
}

/* ---- what changes -------------------------------------------------------- */

static void add_plan(bt_store *st, const char *plan_id, const char *request_id)
{
    char err[BT_ERRLEN], hex[65];
    const char *canon = "{\"steps\":[]}";
    bt_sha256_hex(canon, strlen(canon), hex);
    CHECK_MSG(bt_store_request_add(st, request_id, "alice", "cli", "restart", err, sizeof err) ==
                  BT_OK,
              "%s", err);
    CHECK_MSG(bt_store_plan_add(st, plan_id, request_id, canon, hex, "low", 1, err, sizeof err) ==
                  BT_OK,
              "%s", err);
}

static enum bt_err add_approval(bt_store *st, const char *id, const char *plan_id,
                                const char *execution_id)
{
    char err[BT_ERRLEN];
    json_t *req = json_pack("{s:i}", "approvers", 1);
    enum bt_err e = bt_store_approval_add(st, id, plan_id, execution_id, 1, req,
                                          bt_wall_ms() + 600000, err, sizeof err);
    json_decref(req);
    return e;
}

/* What an approval_update check writes (or, with refuse, why it fails). */
struct change {
    const char *state;
    const char *user;
    bool reminded;
    enum bt_err refuse;
};

static enum bt_err apply_change(void *ctx, const json_t *ap, struct bt_store_approval_change *ch,
                                char *err, size_t errlen)
{
    (void)ap;
    const struct change *c = ctx;
    if (c->refuse != BT_OK) {
        bt_fmt(err, errlen, "refused by the test");
        return c->refuse;
    }
    ch->state = c->state;
    ch->user = c->user;
    ch->decision = c->user ? "approve" : NULL;
    ch->via = c->user ? "test" : NULL;
    ch->reminded = c->reminded;
    return BT_OK;
}

static enum bt_err update(bt_store *st, const char *id, struct change c)
{
    char err[BT_ERRLEN];
    return bt_store_approval_update(st, id, apply_change, &c, err, sizeof err);
}

/* ---- what the listener gets ------------------------------------------------- */

/* Collect announcements on a until id has come or wait_ms passed; the ids
 * seen (counted: id -> times) go into seen (when not NULL). Returns the ms
 * it took, or -1. Every array a call returns must hold distinct ids. */
static long long wait_for(bt_store *a, const char *id, int wait_ms, json_t *seen)
{
    int64_t t0 = bt_mono_ms(), deadline = t0 + wait_ms;
    for (;;) {
        int64_t left = deadline - bt_mono_ms();
        if (left < 0)
            left = 0;
        json_t *ids = NULL;
        char err[BT_ERRLEN];
        enum bt_err e = bt_store_changes(a, (int)left, &ids, err, sizeof err);
        CHECK_MSG(e == BT_OK, "changes: %s", err);
        if (e != BT_OK)
            return -1;
        bool found = false;
        json_t *once = json_object();
        size_t i;
        json_t *v;
        json_array_foreach(ids, i, v)
        {
            const char *s = json_string_value(v);
            CHECK_MSG(s && !json_object_get(once, s), "id '%s' twice in one answer", s ? s : "");
            if (!s)
                continue;
            json_object_set_new(once, s, json_true());
            if (seen)
                json_object_set_new(seen, s,
                                    json_integer(json_integer_value(json_object_get(seen, s)) + 1));
            if (id && strcmp(s, id) == 0)
                found = true;
        }
        json_decref(once);
        json_decref(ids);
        if (found)
            return bt_mono_ms() - t0;
        if (bt_mono_ms() >= deadline)
            return -1;
    }
}

/* Announcements must come within a second of the commit. */
#define WITHIN_MS 1000

static void expect_announced(bt_store *a, const char *id, const char *what)
{
    long long ms = wait_for(a, id, 5000, NULL);
    CHECK_MSG(ms >= 0 && ms < WITHIN_MS, "%s: '%s' announced after %lld ms", what, id, ms);
}

/* Nothing at all arrives within ms. */
static void expect_quiet(bt_store *a, int ms, const char *what)
{
    json_t *seen = json_object();
    wait_for(a, NULL, ms, seen);
    char *dump = json_dumps(seen, JSON_COMPACT);
    CHECK_MSG(json_object_size(seen) == 0, "%s: announced %s", what, dump ? dump : "?");
    free(dump);
    json_decref(seen);
}

/* Take whatever is waiting (earlier tests' announcements). */
static void drain(bt_store *a)
{
    wait_for(a, NULL, 300, NULL);
}

/* ---- tests ------------------------------------------------------------------ */

/* Every kind of write that changes a card announces its approval. */
static void test_announced(void)
{
    bt_store *a = listener(), *b = open_ok();
    char err[BT_ERRLEN];
    json_t *ids = NULL;
    CHECK_INT(bt_store_changes(a, 0, &ids, err, sizeof err), BT_OK);
    CHECK(json_is_array(ids) && json_array_size(ids) == 0);
    json_decref(ids);

    add_plan(b, "p1", "r1");
    CHECK_INT(bt_store_execution_add(b, "e1", "p1", "pending_approval", err, sizeof err), BT_OK);
    CHECK_INT(add_approval(b, "a1", "p1", "e1"), BT_OK);
    expect_announced(a, "a1", "approval_add");
    CHECK_INT(update(b, "a1", (struct change){"approved", "bob", false, BT_OK}), BT_OK);
    expect_announced(a, "a1", "a decision");
    CHECK_INT(bt_store_execution_transition(b, "e1", "pending_approval", "approved", NULL, err,
                                            sizeof err),
              BT_OK);
    expect_announced(a, "a1", "execution_transition");
    CHECK_INT(bt_store_execution_own(b, "e1", "approved", "host", 4242, NULL, 1, err, sizeof err),
              BT_OK);
    expect_announced(a, "a1", "execution_own");
    CHECK_INT(bt_store_step_add(b, "e1", 0, "restart", "pending", err, sizeof err), BT_OK);
    CHECK_INT(bt_store_step_set(b, "e1", 0, "running", NULL, err, sizeof err), BT_OK);
    expect_announced(a, "a1", "step_set");
    CHECK_INT(bt_store_execution_progress(b, "e1", 1, 1, err, sizeof err), BT_OK);
    expect_announced(a, "a1", "execution_progress");
    json_t *result = json_pack("{s:s}", "text", "done");
    CHECK_INT(bt_store_execution_set(b, "e1", "completed", result, err, sizeof err), BT_OK);
    json_decref(result);
    expect_announced(a, "a1", "execution_set");
    /* expiry and cancel are approval_update too */
    CHECK_INT(add_approval(b, "a-exp", "p1", NULL), BT_OK);
    drain(a);
    CHECK_INT(update(b, "a-exp", (struct change){"expired", NULL, false, BT_OK}), BT_OK);
    expect_announced(a, "a-exp", "expiry");

    /* One transaction announcing an approval three times and another once:
     * each id arrives once (PostgreSQL folds them, the store dedupes). */
    drain(a);
    CHECK_INT(bt_store_batch_begin(b, err, sizeof err), BT_OK);
    CHECK_INT(add_approval(b, "a2", "p1", NULL), BT_OK);
    CHECK_INT(update(b, "a2", (struct change){NULL, NULL, true, BT_OK}), BT_OK);
    CHECK_INT(update(b, "a2", (struct change){"cancelled", NULL, false, BT_OK}), BT_OK);
    CHECK_INT(add_approval(b, "a3", "p1", NULL), BT_OK);
    CHECK_INT(bt_store_batch_end(b, true, err, sizeof err), BT_OK);
    json_t *seen = json_object();
    CHECK(wait_for(a, "a3", 5000, seen) >= 0);
    if (!json_object_get(seen, "a2"))
        wait_for(a, "a2", 1000, seen);
    wait_for(a, NULL, 300, seen);
    CHECK_INT(json_integer_value(json_object_get(seen, "a2")), 1);
    CHECK_INT(json_integer_value(json_object_get(seen, "a3")), 1);
    CHECK_INT(json_object_size(seen), 2);
    json_decref(seen);

    /* The listening handle still answers ordinary calls. */
    json_t *o = NULL;
    CHECK_INT(bt_store_approval_get(a, "a2", &o, err, sizeof err), BT_OK);
    CHECK_STR(json_string_value(json_object_get(o, "state")), "cancelled");
    json_decref(o);
    bt_store_close(a);
    bt_store_close(b);
}

/* Nothing is announced for what was not committed, nor for an execution
 * that has no approval. */
static void test_not_announced(void)
{
    bt_store *a = listener(), *b = open_ok();
    char err[BT_ERRLEN];
    drain(a);
    /* a batch: nothing before its commit, nothing after its rollback */
    CHECK_INT(bt_store_batch_begin(b, err, sizeof err), BT_OK);
    CHECK_INT(add_approval(b, "a4", "p1", NULL), BT_OK);
    CHECK_INT(update(b, "a1", (struct change){NULL, NULL, true, BT_OK}), BT_OK);
    expect_quiet(a, 300, "an open batch");
    CHECK_INT(bt_store_batch_end(b, false, err, sizeof err), BT_OK);
    expect_quiet(a, 500, "a rolled-back batch");
    /* a check that refuses writes nothing */
    CHECK_INT(update(b, "a1", (struct change){"denied", "carol", false, BT_EINVAL}), BT_EINVAL);
    /* a failed write (no such plan, no such execution) */
    CHECK(add_approval(b, "a5", "nosuch", NULL) != BT_OK);
    CHECK_INT(bt_store_execution_progress(b, "nosuch", 1, 1, err, sizeof err), BT_ENOENT);
    /* an execution without an approval */
    CHECK_INT(bt_store_execution_add(b, "e2", "p1", "running", err, sizeof err), BT_OK);
    CHECK_INT(bt_store_execution_progress(b, "e2", 1, 2, err, sizeof err), BT_OK);
    CHECK_INT(bt_store_execution_set(b, "e2", "completed", NULL, err, sizeof err), BT_OK);
    expect_quiet(a, 500, "failed writes and an execution without approval");

    /* A committed batch in which one operation failed: only what the batch
     * kept is announced. */
    CHECK_INT(bt_store_batch_begin(b, err, sizeof err), BT_OK);
    CHECK_INT(add_approval(b, "a6", "p1", NULL), BT_OK);
    CHECK(add_approval(b, "a7", "nosuch", NULL) != BT_OK);
    CHECK(add_approval(b, "a6", "p1", NULL) != BT_OK); /* a duplicate */
    CHECK_INT(bt_store_batch_end(b, true, err, sizeof err), BT_OK);
    json_t *seen = json_object();
    CHECK(wait_for(a, "a6", 5000, seen) >= 0);
    wait_for(a, NULL, 500, seen);
    CHECK(json_object_get(seen, "a7") == NULL);
    CHECK_INT(json_object_size(seen), 1);
    json_decref(seen);
    bt_store_close(a);
    bt_store_close(b);
}

/* Terminate the backends whose last statement was a LISTEN (the listening
 * handles') from a connection of the test's own, and wait until they are
 * gone. Returns how many were terminated. */
static long long kill_listeners(const char *url)
{
    PGconn *c = PQconnectdb(url);
    PGresult *r = PQexec(c, "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                            " AND application_name = 'baton' AND query LIKE 'LISTEN%'"
                            " AND pg_terminate_backend(pid)");
    long long n = PQresultStatus(r) == PGRES_TUPLES_OK ? PQntuples(r) : -1;
    char pid[32] = "";
    if (n > 0)
        bt_strlcpy(pid, PQgetvalue(r, 0, 0), sizeof pid);
    PQclear(r);
    const char *params[1] = {pid};
    for (int i = 0; i < 500 && n > 0; i++) {
        r = PQexecParams(c, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int", 1, NULL,
                         params, NULL, NULL, 0);
        bool gone = PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 0), "0") == 0;
        PQclear(r);
        if (gone)
            break;
        usleep(10000);
    }
    PQfinish(c);
    return n;
}

/* The listening connection is killed: the next call connects again,
 * listens again and says "*"; announcements work again after that. */
static void test_reconnect(void)
{
    bt_store *a = listener(), *b = open_ok();
    char err[BT_ERRLEN];
    drain(a);
    CHECK_INT(kill_listeners(location), 1);
    long long ms = wait_for(a, BT_STORE_CHANGES_ALL, 5000, NULL);
    CHECK_MSG(ms >= 0 && ms < WITHIN_MS, "'*' after %lld ms", ms);
    CHECK_INT(update(b, "a1", (struct change){NULL, NULL, true, BT_OK}), BT_OK);
    expect_announced(a, "a1", "after a reconnect");
    /* killed while idle between calls, and announced meanwhile: lost, so
     * the next call says "*" (and whatever it still gets) */
    CHECK_INT(kill_listeners(location), 1);
    CHECK_INT(add_approval(b, "a8", "p1", NULL), BT_OK);
    ms = wait_for(a, BT_STORE_CHANGES_ALL, 5000, NULL);
    CHECK_MSG(ms >= 0 && ms < WITHIN_MS, "'*' after %lld ms", ms);
    CHECK_INT(add_approval(b, "a9", "p1", NULL), BT_OK);
    expect_announced(a, "a9", "after a second reconnect");
    /* ordinary calls on the listening handle after a kill */
    CHECK_INT(kill_listeners(location), 1);
    json_t *o = NULL;
    CHECK_MSG(bt_store_approval_get(a, "a9", &o, err, sizeof err) == BT_OK, "%s", err);
    json_decref(o);
    CHECK(wait_for(a, BT_STORE_CHANGES_ALL, 5000, NULL) >=
          0); /* that call's reconnect listened again */
    CHECK_INT(add_approval(b, "a10", "p1", NULL), BT_OK);
    expect_announced(a, "a10", "after an ordinary call's reconnect");
    bt_store_close(a);
    bt_store_close(b);
}

/* The database goes away (dropped) and comes back: meanwhile every call
 * fails with BT_EUNAVAIL within about its timeout; then "*". */
static void test_database_away(void)
{
    char *url = bt_pg_fresh();
    CHECK(url != NULL);
    if (!url)
        return;
    bt_store *x = open_at(url);
    char err[BT_ERRLEN], sql[256];
    CHECK_MSG(bt_store_listen(x, err, sizeof err) == BT_OK, "%s", err);
    bt_fmt(sql, sizeof sql, "DROP DATABASE %s_%d WITH (FORCE)", bt_pg_db, bt_pg_made);
    CHECK(bt_pg_admin(sql));
    for (int i = 0; i < 4; i++) {
        json_t *ids = NULL;
        int64_t t0 = bt_mono_ms();
        enum bt_err e = bt_store_changes(x, 300, &ids, err, sizeof err);
        int64_t took = bt_mono_ms() - t0;
        CHECK_MSG(e == BT_EUNAVAIL, "call %d: %d %s", i, e, err);
        CHECK(ids == NULL);
        CHECK_MSG(took < 1300, "call %d took %lld ms", i, (long long)took);
        CHECK_MSG(strstr(err, "database") != NULL, "%s", err);
    }
    bt_fmt(sql, sizeof sql, "CREATE DATABASE %s_%d", bt_pg_db, bt_pg_made);
    CHECK(bt_pg_admin(sql));
    /* the backoff is at most 5 s between attempts */
    json_t *seen = json_object();
    bool back = false;
    for (int64_t end = bt_mono_ms() + 8000; !back && bt_mono_ms() < end;) {
        json_t *ids = NULL;
        if (bt_store_changes(x, 500, &ids, err, sizeof err) == BT_OK) {
            back = json_array_size(ids) == 1 &&
                   strcmp(json_string_value(json_array_get(ids, 0)), BT_STORE_CHANGES_ALL) == 0;
            CHECK(back);
            json_decref(ids);
            break;
        }
    }
    CHECK_MSG(back, "no '*' after the database came back: %s", err);
    json_decref(seen);
    bt_store_close(x);
    free(url);
}

/* At most 1000 ids per call (how many come in one depends on how fast the
 * server sends them); the rest come with the next calls. */
static void test_bounded(void)
{
    bt_store *a = listener(), *b = open_ok();
    char err[BT_ERRLEN];
    drain(a);
    enum { N = 1100 };
    CHECK_INT(bt_store_batch_begin(b, err, sizeof err), BT_OK);
    for (int i = 0; i < N; i++) {
        char id[32];
        bt_fmt(id, sizeof id, "bulk-%d", i);
        if (add_approval(b, id, "p1", NULL) != BT_OK) {
            CHECK_MSG(0, "add %s", id);
            break;
        }
    }
    CHECK_INT(bt_store_batch_end(b, true, err, sizeof err), BT_OK);
    usleep(300000); /* let them all arrive */
    size_t total = 0, biggest = 0;
    json_t *seen = json_object();
    for (int64_t end = bt_mono_ms() + 10000; total < N && bt_mono_ms() < end;) {
        json_t *ids = NULL;
        CHECK_INT(bt_store_changes(a, 500, &ids, err, sizeof err), BT_OK);
        size_t n = json_array_size(ids);
        biggest = n > biggest ? n : biggest;
        size_t i;
        json_t *v;
        json_array_foreach(ids, i, v)
        {
            if (!json_object_get(seen, json_string_value(v)))
                total++;
            json_object_set_new(seen, json_string_value(v), json_true());
        }
        json_decref(ids);
    }
    CHECK_INT(total, N);
    CHECK_MSG(biggest <= 1000, "%zu ids in one answer", biggest);
    printf("test_bounded: %zu ids at most in one answer\n", biggest);
    json_decref(seen);
    bt_store_close(a);
    bt_store_close(b);
}

static void test_arguments(void)
{
    bt_store *a = listener(), *b = open_ok();
    char err[BT_ERRLEN];
    json_t *ids = json_array(), *keep = ids;
    CHECK_INT(bt_store_changes(a, -1, &ids, err, sizeof err), BT_EINVAL);
    CHECK(ids == NULL);
    ids = keep;
    CHECK_INT(bt_store_changes(a, 60001, &ids, err, sizeof err), BT_EINVAL);
    CHECK(ids == NULL);
    json_decref(keep);
    CHECK_INT(bt_store_changes(a, 0, NULL, err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_changes(NULL, 0, &ids, err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_listen(NULL, err, sizeof err), BT_EINVAL);
    /* listening twice is listening */
    CHECK_INT(bt_store_listen(a, err, sizeof err), BT_OK);
    /* a handle that does not listen */
    CHECK_INT(bt_store_changes(b, 0, &ids, err, sizeof err), BT_EINVAL);
    CHECK_MSG(strstr(err, "listen") != NULL, "%s", err);
    CHECK(ids == NULL);
    CHECK_INT(bt_store_batch_begin(b, err, sizeof err), BT_OK);
    CHECK_INT(bt_store_listen(b, err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_batch_end(b, false, err, sizeof err), BT_OK);
    bt_store_close(a);
    bt_store_close(b);
}

/* SQLite: no change notifications, and it says so. */
static void test_sqlite(void)
{
    bt_store *st = open_ok();
    char err[BT_ERRLEN];
    CHECK_INT(bt_store_listen(st, err, sizeof err), BT_EUNAVAIL);
    CHECK_MSG(strstr(err, "change notifications need PostgreSQL") != NULL, "%s", err);
    json_t *ids = NULL;
    CHECK_INT(bt_store_changes(st, 10, &ids, err, sizeof err), BT_EUNAVAIL);
    CHECK(ids == NULL);
    CHECK_MSG(strstr(err, "PostgreSQL") != NULL, "%s", err);
    CHECK_INT(bt_store_changes(st, 70000, &ids, err, sizeof err), BT_EINVAL);
    /* writes work as ever */
    add_plan(st, "p1", "r1");
    CHECK_INT(add_approval(st, "a1", "p1", NULL), BT_OK);
    CHECK_INT(update(st, "a1", (struct change){"approved", "bob", false, BT_OK}), BT_OK);
    bt_store_close(st);
}

int main(void)
{
    char tmpdir[64] = "";
    if (bt_pg_mode()) {
        bt_strlcpy(location, getenv("BATON_TEST_STORE"), sizeof location);
    } else {
        bt_strlcpy(tmpdir, "/tmp/baton-store-notify-XXXXXX", sizeof tmpdir);
        if (!mkdtemp(tmpdir)) {
            perror("mkdtemp");
            return 1;
        }
        bt_fmt(location, sizeof location, "%s/notify.db", tmpdir);
    }
    if (*tmpdir) {
        RUN(test_sqlite);
    } else {
        RUN(test_announced);
        RUN(test_not_announced);
        RUN(test_reconnect);
        RUN(test_database_away);
        RUN(test_bounded);
        RUN(test_arguments);
        bt_pg_fresh_drop_all();
    }
    if (*tmpdir) {
        char *wal = bt_asprintf("%s-wal", location), *shm = bt_asprintf("%s-shm", location);
        unlink(location);
        unlink(wal);
        unlink(shm);
        free(wal);
        free(shm);
        rmdir(tmpdir);
    }
    return bt_test_finish();
}
