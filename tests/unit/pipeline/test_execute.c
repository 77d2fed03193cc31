/* Stage E: the execution engine against a temporary SQLite store and a
 * temporary configuration whose tools run harmless programs (true, false,
 * sleep, touch, rm, date) through the local connector on localhost.
 *
 * No check depends on exact timing: waits are bounded generously and the
 * checks are on order and counts (the one duration check, "two 1 s steps
 * in parallel take under 1.8 s", is skipped under valgrind, where the
 * order of progress events proves the overlap instead). */
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sqlite3.h>

#include "bot/conf.h"
#include "bot/store/store.h"
#include "connectors/connectors.h"
#include "pipeline/execute.h"
#include "pipeline/plan.h"
#include "pipeline/tools.h"
#include "pg_fresh.h"
#include "test.h"

static char dir[] = "/tmp/bt-exec-XXXXXX";
static bt_config *cfg;
static struct bt_execute_config conf;
static int store_no;
static bool under_valgrind;

static const char *const tools_yaml =
    "tools:\n"
    "  - {name: ok, connector: local, operation: command, command: ['true'], risk: medium,\n"
    "     timeout_s: 10}\n"
    "  - {name: fail, connector: local, operation: command, command: ['false'], risk: medium,\n"
    "     timeout_s: 10}\n"
    "  - {name: fail_read, connector: local, operation: command, command: ['false'], risk: low,\n"
    "     read_only: true, timeout_s: 10}\n"
    "  - name: nap\n"
    "    connector: local\n"
    "    operation: command\n"
    "    command: [sleep, '{secs}']\n"
    "    inputs: {secs: {required: true, pattern: '^[0-9]{1,2}(\\.[0-9]{1,3})?$'}}\n"
    "    risk: low\n"
    "    read_only: true\n"
    "    timeout_s: 10\n"
    "  - {name: hang, connector: local, operation: command, command: [sleep, '30'],\n"
    "     risk: medium, timeout_s: 1}\n"
    "  - {name: hang_read, connector: local, operation: command, command: [sleep, '30'],\n"
    "     risk: low, read_only: true, timeout_s: 1}\n"
    "  - name: mark\n"
    "    connector: local\n"
    "    operation: command\n"
    "    command: [touch, '{path}']\n"
    "    inputs: {path: {required: true, pattern: '^/[A-Za-z0-9/._-]{1,200}$'}}\n"
    "    risk: medium\n"
    "    reversible: true\n"
    "    compensate: unmark\n"
    "    timeout_s: 10\n"
    "  - name: unmark\n"
    "    connector: local\n"
    "    operation: command\n"
    "    command: [rm, '{path}']\n"
    "    inputs: {path: {required: true, pattern: '^/[A-Za-z0-9/._-]{1,200}$'}}\n"
    "    risk: medium\n"
    "    timeout_s: 10\n"
    "  - {name: stamp, connector: local, operation: command, command: [date, '+%s%N'],\n"
    "     risk: medium, timeout_s: 10}\n"
    "  - {name: long, connector: local, operation: command, command: ['true'], risk: medium,\n"
    "     timeout_s: 100}\n"
    "  - {name: inv_read, connector: inventory, operation: count_assets, risk: low,\n"
    "     read_only: true, timeout_s: 5}\n"
    "  - {name: inv_change, connector: inventory, operation: count_assets, risk: medium,\n"
    "     timeout_s: 5}\n";

static const char *const baton_yaml = "store: {location: unused.db}\n"
                                      "log: {level: error}\n"
                                      "execution:\n"
                                      "  parallel: 4\n"
                                      "  background_after_s: 30\n"
                                      "  background_targets: 10\n"
                                      "  retry_base_ms: 20\n"
                                      "  retry_max_ms: 100\n"
                                      "  breaker: {failures: 3, cooldown_s: 1}\n"
                                      "  asset_lock: queue\n"
                                      "  lock_wait_s: 20\n"
                                      "  job_lease_s: 1\n"
                                      "  job_attempts: 3\n"
                                      "connectors:\n"
                                      "  inventory: {type: builtin}\n"
                                      "  local:\n"
                                      "    type: local\n"
                                      "    allow:\n"
                                      "      'true': /usr/bin/true\n"
                                      "      'false': /usr/bin/false\n"
                                      "      sleep: /usr/bin/sleep\n"
                                      "      touch: /usr/bin/touch\n"
                                      "      rm: /usr/bin/rm\n"
                                      "      date: /usr/bin/date\n";

/* ---- fixtures -------------------------------------------------------------- */

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void write_config(const char *d, const char *baton)
{
    char p[600];
    bt_fmt(p, sizeof p, "%s/intents", d);
    mkdir(p, 0700);
    bt_fmt(p, sizeof p, "%s/intents/x.yaml", d);
    write_text(p, "intents: []\n");
    bt_fmt(p, sizeof p, "%s/baton.yaml", d);
    write_text(p, baton);
    bt_fmt(p, sizeof p, "%s/tools.yaml", d);
    write_text(p, tools_yaml);
    char *inv = NULL;
    char err[BT_ERRLEN];
    CHECK(bt_read_file(BT_SOURCE_DIR "/config/inventory.yaml", 1 << 20, &inv, NULL, err,
                       sizeof err) == BT_OK);
    bt_fmt(p, sizeof p, "%s/inventory.yaml", d);
    write_text(p, inv ? inv : "");
    free(inv);
}

/* A store that is away for a while: another connection holds a lock the
 * engine's writes need (SQLite: the write lock of the whole file;
 * PostgreSQL: the rows of `table` for one execution, FOR UPDATE), so they
 * wait and then fail with BT_ETIMEOUT, as during a database restart. The
 * lock is held for hold_ms, or, with hold_ms 0, until locker_release. */
struct locker {
    char store[600];
    const char *table; /* "steps" or "executions" (PostgreSQL) */
    char execution_id[33];
    int hold_ms;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool started, locked, release, failed;
};

static void *locker_main(void *arg)
{
    struct locker *l = arg;
    sqlite3 *db = NULL;
    PGconn *pg = NULL;
    bool ok;
    if (bt_pg_mode()) {
        pg = PQconnectdb(l->store);
        char sql[200];
        bt_fmt(sql, sizeof sql, "SELECT 1 FROM %s WHERE execution_id = '%s' FOR UPDATE", l->table,
               l->execution_id);
        PGresult *r = PQexec(pg, "BEGIN");
        ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        r = PQexec(pg, sql);
        ok = ok && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0;
        PQclear(r);
    } else {
        ok = sqlite3_open_v2(l->store, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK &&
             sqlite3_busy_timeout(db, 10000) == SQLITE_OK &&
             sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK;
    }
    pthread_mutex_lock(&l->mu);
    l->locked = true;
    l->failed = !ok;
    pthread_cond_broadcast(&l->cv);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += l->hold_ms / 1000;
    until.tv_nsec += (long)(l->hold_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    while (!l->release)
        if (pthread_cond_timedwait(&l->cv, &l->mu, &until) == ETIMEDOUT && l->hold_ms > 0)
            break;
    pthread_mutex_unlock(&l->mu);
    if (pg) {
        PQclear(PQexec(pg, "COMMIT"));
        PQfinish(pg);
    }
    if (db) {
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
        sqlite3_close(db);
    }
    return NULL;
}

/* Take the lock on another thread; returns once it is held. */
static void locker_start(struct locker *l)
{
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    l->started = true;
    CHECK(pthread_create(&l->thread, NULL, locker_main, l) == 0);
    pthread_mutex_lock(&l->mu);
    while (!l->locked)
        pthread_cond_wait(&l->cv, &l->mu);
    pthread_mutex_unlock(&l->mu);
    CHECK_MSG(!l->failed, "the locker could not take its lock on %s", l->store);
}

/* Let go (now, if it still holds it) and wait for the thread. */
static void locker_release(struct locker *l)
{
    if (!l->started)
        return;
    pthread_mutex_lock(&l->mu);
    l->release = true;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->thread, NULL);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    l->started = false;
}

/* Everything one engine needs; each test builds its own, so breakers and
 * stores never leak from one test into the next. */
struct env {
    char store[600];
    bt_store *st;
    bt_connectors *conns;
    bt_tools *tools;
    bt_execute *ex;
    json_t *events; /* progress events seen */
    /* for the lock tests: release this execution's locks when queued */
    const char *release_on_queue;
    /* for the store-away tests: start this locker when step lock_index
     * reports lock_state */
    struct locker *lock;
    int lock_index;
    const char *lock_state;
};

static void on_progress(void *ctx, const struct bt_execute_progress *p)
{
    struct env *e = ctx;
    json_array_append_new(e->events,
                          json_pack("{s:s, s:i, s:s?, s:s, s:i, s:i, s:s?, s:I}", "execution_id",
                                    p->execution_id, "index", p->index, "tool", p->tool, "state",
                                    p->state, "done", p->done, "total", p->total, "message",
                                    p->message, "ms", (json_int_t)bt_mono_ms()));
    if (e->release_on_queue && p->index < 0 && strcmp(p->state, "queued") == 0) {
        char err[BT_ERRLEN];
        CHECK(bt_store_locks_release(e->st, e->release_on_queue, err, sizeof err) == BT_OK);
    }
    if (e->lock && !e->lock->started && p->index == e->lock_index &&
        strcmp(p->state, e->lock_state) == 0) {
        bt_strlcpy(e->lock->execution_id, p->execution_id, sizeof e->lock->execution_id);
        locker_start(e->lock);
    }
}

static void env_engine(struct env *e, const struct bt_execute_config *c)
{
    bt_execute_free(e->ex);
    e->ex = bt_execute_new(c, e->conns, e->tools, e->st, on_progress, e);
}

static void env_open(struct env *e, const struct bt_execute_config *c)
{
    char err[BT_ERRLEN];
    bt_diag *d = bt_diag_new();
    e->conns = bt_connectors_new(cfg, NULL, d); /* no store: inventory answers BT_EUNAVAIL */
    e->tools = e->conns ? bt_tools_new(cfg, e->conns, d) : NULL;
    for (size_t i = 0; i < bt_diag_count(d); i++)
        fprintf(stderr, "%s\n", bt_diag_get(d, i));
    CHECK_INT(bt_diag_count(d), 0);
    CHECK(bt_store_open(e->store, &e->st, err, sizeof err) == BT_OK);
    json_t *assets = bt_connectors_inventory(cfg, d);
    CHECK(assets != NULL);
    CHECK(bt_store_assets_replace(e->st, assets, err, sizeof err) == BT_OK);
    json_decref(assets);
    bt_diag_free(d);
    if (!e->events)
        e->events = json_array();
    e->ex = NULL;
    env_engine(e, c);
}

static void env_init(struct env *e, const struct bt_execute_config *c)
{
    memset(e, 0, sizeof *e);
    char *url = bt_pg_mode() ? bt_pg_fresh() : NULL;
    if (url)
        bt_strlcpy(e->store, url, sizeof e->store);
    else
        bt_fmt(e->store, sizeof e->store, "%s/store-%d.db", dir, ++store_no);
    free(url);
    env_open(e, c);
}

static void env_close(struct env *e, bool keep_events)
{
    bt_execute_free(e->ex);
    e->ex = NULL;
    bt_tools_free(e->tools);
    bt_connectors_free(e->conns);
    bt_store_close(e->st);
    e->st = NULL;
    if (!keep_events) {
        json_decref(e->events);
        e->events = NULL;
    }
}

/* A plan step as plan.c makes them, for tool (its definition supplies
 * read_only and timeout_s). Steals inputs, deps and comp (each may be
 * NULL). */
static json_t *mk_step(struct env *e, const char *tool, const char *target, json_t *inputs,
                       json_t *deps, json_t *comp)
{
    const json_t *def = bt_tools_get(e->tools, tool);
    CHECK(def != NULL);
    return json_pack("{s:s, s:s, s:o, s:s?, s:b, s:I, s:o, s:o}", "tool", tool, "id", tool,
                     "inputs", inputs ? inputs : json_object(), "target", target, "read_only",
                     json_is_true(json_object_get(def, "read_only")), "timeout_s",
                     json_integer_value(json_object_get(def, "timeout_s")), "depends_on",
                     deps ? deps : json_array(), "compensate", comp ? comp : json_null());
}

/* A plan of steps (stolen; indexes filled in). */
static json_t *mk_plan(json_t *steps)
{
    size_t i;
    json_t *s;
    json_array_foreach(steps, i, s) json_object_set_new(s, "index", json_integer((json_int_t)i));
    return json_pack("{s:s, s:s, s:s, s:[], s:o}", "intent", "test", "summary", "a test plan",
                     "risk", "medium", "targets", "steps", steps);
}

static json_t *path_input(const char *name, char *out, size_t outlen)
{
    bt_fmt(out, outlen, "%s/%s", dir, name);
    return json_pack("{s:s}", "path", out);
}

/* Record request (alice: text), plan and execution in state; id out. */
static void mk_execution(struct env *e, json_t *plan, const char *state, const char *text,
                         char id[33])
{
    char rid[33], pid[33], sha[65], err[BT_ERRLEN];
    bt_random_id(rid);
    bt_random_id(pid);
    bt_random_id(id);
    CHECK(bt_store_request_add(e->st, rid, "alice", "test", text, err, sizeof err) == BT_OK);
    json_object_set_new(plan, "request_id", json_string(rid));
    char *canon = bt_plan_canonical(plan, sha);
    CHECK(canon != NULL);
    CHECK_MSG(bt_store_plan_add(e->st, pid, rid, canon, sha, "medium", 1, err, sizeof err) == BT_OK,
              "%s", err);
    CHECK_MSG(bt_store_execution_add(e->st, id, pid, state, err, sizeof err) == BT_OK, "%s", err);
    free(canon);
    json_decref(plan);
}

static json_t *exec_get(struct env *e, const char *id)
{
    json_t *x = NULL;
    char err[BT_ERRLEN];
    CHECK_MSG(bt_store_execution_get(e->st, id, &x, err, sizeof err) == BT_OK, "%s", err);
    return x;
}

static const char *str(const json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "";
}

static const char *step_state(const json_t *x, size_t i)
{
    return str(json_array_get(json_object_get(x, "steps"), i), "state");
}

static long long num(const json_t *o, const char *key)
{
    return (long long)json_integer_value(json_object_get(o, key));
}

static bool exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Audit entries of one event for one execution, in log order (new). */
static json_t *audit_of(struct env *e, const char *event, const char *id)
{
    json_t *all = NULL, *out = json_array();
    char err[BT_ERRLEN];
    CHECK(bt_store_audit_list(e->st, 0, 100000, &all, err, sizeof err) == BT_OK);
    size_t i;
    json_t *a;
    json_array_foreach(all, i, a)
    {
        const json_t *d = json_object_get(a, "detail");
        if (strcmp(str(a, "event"), event) == 0 && strcmp(str(d, "execution_id"), id) == 0)
            json_array_append(out, a);
    }
    json_decref(all);
    return out;
}

/* Index in e->events of the first event (index, state) for id; -1. */
static int event_at(struct env *e, const char *id, int index, const char *state)
{
    size_t i;
    json_t *ev;
    json_array_foreach(e->events, i, ev)
    {
        if (strcmp(str(ev, "execution_id"), id) == 0 && num(ev, "index") == index &&
            strcmp(str(ev, "state"), state) == 0)
            return (int)i;
    }
    return -1;
}

/* ---- configuration and the state table ----------------------------------------- */

static void test_config(void)
{
    CHECK_INT(conf.parallel, 4);
    CHECK_INT(conf.retry_base_ms, 20);
    CHECK_INT(conf.breaker_failures, 3);
    CHECK_INT(conf.job_lease_s, 1);
    CHECK_INT(conf.asset_lock, BT_EXECUTE_LOCK_QUEUE);

    /* The shipped configuration reads cleanly. */
    bt_diag *d = bt_diag_new();
    bt_config *shipped = bt_config_load(BT_SOURCE_DIR "/config", d);
    struct bt_execute_config c;
    CHECK(bt_execute_config_read(shipped, &c, d));
    CHECK_INT(bt_diag_count(d), 0);
    CHECK_INT(c.background_after_s, 30);
    CHECK_INT(c.lock_wait_s, 300);
    bt_config_free(shipped);

    /* Every problem is reported with file, line and key. */
    char bad[600];
    bt_fmt(bad, sizeof bad, "%s/bad", dir);
    CHECK(mkdir(bad, 0700) == 0);
    write_config(bad, "execution:\n"
                      "  parallel: 0\n"
                      "  asset_lock: maybe\n"
                      "  bogus: 1\n"
                      "  retry_base_ms: 900\n"
                      "  retry_max_ms: 100\n"
                      "  breaker: {failures: zero}\n");
    bt_config *b = bt_config_load(bad, d);
    CHECK(!bt_execute_config_read(b, &c, d));
    size_t n = bt_diag_count(d);
    CHECK_INT(n, 5);
    bt_buf all = BT_BUF_INIT(0);
    for (size_t i = 0; i < n; i++)
        bt_buf_printf(&all, "%s\n", bt_diag_get(d, i));
    CHECK_MSG(strstr(all.data, "baton.yaml:2: execution.parallel: must be a whole number from 1 "
                               "to 32") != NULL,
              "%s", all.data);
    CHECK_MSG(strstr(all.data, "execution.asset_lock: must be queue") != NULL, "%s", all.data);
    CHECK_MSG(strstr(all.data, "baton.yaml:4: execution.bogus: unknown key") != NULL, "%s",
              all.data);
    CHECK_MSG(strstr(all.data, "execution.retry_max_ms: must not be below") != NULL, "%s",
              all.data);
    CHECK_MSG(strstr(all.data, "execution.breaker.failures: must be a whole number") != NULL, "%s",
              all.data);
    CHECK_INT(c.parallel, 4); /* bad values keep the default */
    bt_buf_free(&all);
    bt_config_free(b);
    bt_diag_free(d);
}

static void test_transitions(void)
{
    CHECK(bt_execute_transition_ok(false, "pending_approval", "approved"));
    CHECK(bt_execute_transition_ok(false, "approved", "running"));
    CHECK(bt_execute_transition_ok(false, "running", "completed"));
    CHECK(bt_execute_transition_ok(false, "running", "pending_approval"));
    CHECK(!bt_execute_transition_ok(false, "completed", "running"));
    CHECK(!bt_execute_transition_ok(false, "failed", "approved"));
    CHECK(!bt_execute_transition_ok(false, "interrupted", "running"));
    CHECK(!bt_execute_transition_ok(false, "cancelled", "queued"));
    CHECK(!bt_execute_transition_ok(false, "running", "nonsense"));
    CHECK(bt_execute_transition_ok(true, "pending", "running"));
    CHECK(bt_execute_transition_ok(true, "completed", "compensated"));
    CHECK(!bt_execute_transition_ok(true, "completed", "running"));
    CHECK(!bt_execute_transition_ok(true, "failed", "running"));
    CHECK(!bt_execute_transition_ok(true, "interrupted", "running"));
    CHECK(!bt_execute_transition_ok(true, "pending", "completed"));

    struct env e;
    env_init(&e, &conf);
    char id[33], err[BT_ERRLEN];
    mk_execution(&e, mk_plan(json_pack("[o]", mk_step(&e, "ok", "localhost", NULL, NULL, NULL))),
                 "approved", "do it", id);
    json_t *r = bt_execute_run(e.ex, id, -1, BT_EXECUTE_NOW, "alice");
    CHECK_STR(str(r, "state"), "completed");
    json_decref(r);
    /* A completed execution never runs again. */
    r = bt_execute_run(e.ex, id, -1, BT_EXECUTE_NOW, "alice");
    CHECK_STR(str(r, "error"), "invalid_state");
    CHECK_STR(str(r, "state"), "completed");
    json_decref(r);
    json_t *x = exec_get(&e, id);
    CHECK_STR(str(x, "state"), "completed");
    CHECK_INT(num(json_object_get(x, "progress"), "done"), 1);
    json_decref(x);
    /* Nor does one that waits for its approval (plan mode). */
    char id2[33];
    mk_execution(&e, mk_plan(json_pack("[o]", mk_step(&e, "ok", "localhost", NULL, NULL, NULL))),
                 "pending_approval", "do it", id2);
    r = bt_execute_run(e.ex, id2, -1, BT_EXECUTE_NOW, "alice");
    CHECK_STR(str(r, "error"), "invalid_state");
    CHECK(strstr(str(r, "message"), "is pending_approval") != NULL);
    json_decref(r);
    /* The store's compare-and-set refuses a move from the wrong state. */
    CHECK_INT(
        bt_store_execution_transition(e.st, id2, "running", "completed", NULL, err, sizeof err),
        BT_ENOENT);
    CHECK_MSG(strstr(err, "is pending_approval, not running") != NULL, "%s", err);
    r = bt_execute_run(e.ex, "no-such-execution", -1, BT_EXECUTE_NOW, "alice");
    CHECK_STR(str(r, "error"), "not_found");
    json_decref(r);
    env_close(&e, false);
}

/* ---- order, parallelism, saga --------------------------------------------------- */

static void test_parallel_and_order(void)
{
    struct env e;
    env_init(&e, &conf);
    char id[33];
    json_t *steps = json_pack(
        "[o, o, o]", mk_step(&e, "nap", "localhost", json_pack("{s:s}", "secs", "1"), NULL, NULL),
        mk_step(&e, "nap", "localhost", json_pack("{s:s}", "secs", "1"), NULL, NULL),
        mk_step(&e, "ok", "localhost", NULL, json_pack("[i, i]", 0, 1), NULL));
    mk_execution(&e, mk_plan(steps), "approved", "naps", id);
    int64_t t0 = bt_mono_ms();
    json_t *r = bt_execute_run(e.ex, id, -1, BT_EXECUTE_NOW, "alice");
    int64_t took = bt_mono_ms() - t0;
    CHECK_STR(str(r, "state"), "completed");
    if (!under_valgrind)
        CHECK_MSG(took < 1800, "two 1 s steps in parallel took %lld ms", (long long)took);
    /* Both naps started before either ended; the dependent step started
     * after both ended. */
    int s0 = event_at(&e, id, 0, "running"), s1 = event_at(&e, id, 1, "running");
    int c0 = event_at(&e, id, 0, "completed"), c1 = event_at(&e, id, 1, "completed");
    int s2 = event_at(&e, id, 2, "running");
    CHECK(s0 >= 0 && s1 >= 0 && c0 >= 0 && c1 >= 0 && s2 >= 0);
    CHECK(s0 < c0 && s0 < c1 && s1 < c0 && s1 < c1);
    CHECK(s2 > c0 && s2 > c1);
    int fin = event_at(&e, id, -1, "completed");
    CHECK(fin > s2);
    CHECK_INT(num(json_array_get(e.events, (size_t)fin), "done"), 3);
    CHECK_INT(num(json_array_get(e.events, (size_t)fin), "total"), 3);
    json_t *x = exec_get(&e, id);
    CHECK_STR(str(x, "state"), "completed");
    CHECK_INT(num(json_object_get(x, "progress"), "done"), 3);
    CHECK_INT(num(json_object_get(x, "progress"), "total"), 3);
    CHECK(strlen(str(json_object_get(x, "owner"), "host")) > 0);
    CHECK(num(json_object_get(x, "owner"), "pid") == (long long)getpid());
    CHECK_STR(str(x, "requester"), "alice");
    CHECK_STR(str(json_object_get(x, "result"), "state"), "completed");
    json_decref(x);
    json_decref(r);
    /* Locks were taken and given back. */
    json_t *locks = NULL;
    char err[BT_ERRLEN];
    CHECK(bt_store_locks_list(e.st, NULL, &locks, err, sizeof err) == BT_OK);
    CHECK_INT(json_array_size(locks), 0);
    json_decref(locks);
    json_t *started = audit_of(&e, "execution_started", id);
    CHECK_INT(json_array_size(started), 1);
    json_decref(started);
    env_close(&e, false);
}

static void test_saga_order(void)
{
    struct env e;
    env_init(&e, &conf);
    char id[33], pa[600], pb[600];
    json_t *ia = path_input("saga-a", pa, sizeof pa);
    json_t *ib = path_input("saga-b", pb, sizeof pb);
    json_t *steps =
        json_pack("[o, o, o]",
                  mk_step(&e, "mark", "localhost", json_deep_copy(ia), NULL,
                          json_pack("{s:s, s:O}", "tool", "unmark", "inputs", ia)),
                  mk_step(&e, "mark", "localhost", json_deep_copy(ib), json_pack("[i]", 0),
                          json_pack("{s:s, s:O}", "tool", "unmark", "inputs", ib)),
                  mk_step(&e, "fail", "localhost", NULL, json_pack("[i]", 1), NULL));
    json_decref(ia);
    json_decref(ib);
    mk_execution(&e, mk_plan(steps), "approved", "mark and fail", id);
    json_t *r = bt_execute_run(e.ex, id, -1, BT_EXECUTE_NOW, "alice");
    CHECK_STR(str(r, "state"), "failed");
    json_t *comp = json_object_get(r, "compensated");
    CHECK_INT(json_array_size(comp), 2);
    CHECK_INT(num(json_array_get(comp, 0), "undoes"), 1);
    CHECK_INT(num(json_array_get(comp, 1), "undoes"), 0);
    CHECK_STR(str(json_array_get(comp, 0), "state"), "completed");
    CHECK_STR(str(json_array_get(comp, 0), "tool"), "unmark");
    CHECK(!exists(pa) && !exists(pb)); /* both undone */
    json_t *x = exec_get(&e, id);
    CHECK_STR(step_state(x, 0), "compensated");
    CHECK_STR(step_state(x, 1), "compensated");
    CHECK_STR(step_state(x, 2), "failed");
    json_decref(x);
    /* The audit log, an independent record, has them in the same order. */
    json_t *log = audit_of(&e, "step_compensated", id);
    CHECK_INT(json_array_size(log), 2);
    CHECK_INT(
        num(json_object_get(json_object_get(json_array_get(log, 0), "detail"), "compensation"),
            "undoes"),
        1);
    json_decref(log);
    json_decref(r);

    /* Clocks read by the compensations themselves (date +%s%N). */
    char id2[33];
    json_t *stamp = json_pack("{s:s, s:{}}", "tool", "stamp", "inputs");
    steps =
        json_pack("[o, o, o, o]", mk_step(&e, "ok", "localhost", NULL, NULL, json_deep_copy(stamp)),
                  mk_step(&e, "ok", "localhost", NULL, json_pack("[i]", 0), json_deep_copy(stamp)),
                  mk_step(&e, "ok", "localhost", NULL, json_pack("[i]", 1), json_deep_copy(stamp)),
                  mk_step(&e, "fail", "localhost", NULL, json_pack("[i]", 2), NULL));
    json_decref(stamp);
    mk_execution(&e, mk_plan(steps), "approved", "stamps", id2);
    r = bt_execute_run(e.ex, id2, -1, BT_EXECUTE_NOW, "alice");
    comp = json_object_get(r, "compensated");
    CHECK_INT(json_array_size(comp), 3);
    unsigned long long prev = 0;
    for (size_t i = 0; i < json_array_size(comp); i++) {
        const json_t *c = json_array_get(comp, i);
        CHECK_INT(num(c, "undoes"), 2 - (long long)i);
        const char *out = str(json_object_get(c, "result"), "stdout");
        char *end = NULL;
        errno = 0;
        unsigned long long ns = strtoull(out, &end, 10);
        CHECK_MSG(errno == 0 && end != out && ns > prev, "stamp %zu: '%s'", i, out);
        prev = ns;
    }
    json_decref(r);
    env_close(&e, false);
}

/* ---- retries and the breaker ------------------------------------------------------- */

static json_t *run_one(struct env *e, const char *tool, json_t *inputs)
{
    char id[33];
    mk_execution(e, mk_plan(json_pack("[o]", mk_step(e, tool, "localhost", inputs, NULL, NULL))),
                 "approved", tool, id);
    return bt_execute_run(e->ex, id, -1, BT_EXECUTE_NOW, "alice");
}

static const json_t *result0(const json_t *r)
{
    return json_object_get(json_array_get(json_object_get(r, "steps"), 0), "result");
}

static void test_retries(void)
{
    /* Unavailable, read-only: retried twice (3 attempts) with backoff. */
    struct env e;
    env_init(&e, &conf);
    json_t *r = run_one(&e, "inv_read", NULL);
    CHECK_STR(str(r, "state"), "failed");
    const json_t *res = result0(r);
    CHECK_INT(num(res, "attempts"), 3);
    json_t *retried = json_object_get(res, "retried");
    CHECK_INT(json_array_size(retried), 2);
    for (size_t i = 0; i < json_array_size(retried); i++) {
        long long b = num(json_array_get(retried, i), "backoff_ms");
        long long cap = 20LL << i; /* base 20 ms, doubling, full jitter */
        CHECK_MSG(b >= 0 && b <= cap, "backoff %zu: %lld > %lld", i, b, cap);
    }
    CHECK(strstr(str(res, "error"), "no store") != NULL);
    json_decref(r);
    env_close(&e, false);

    /* Unavailable, a change: BT_EUNAVAIL is transient, but changes default
     * to no retries. */
    env_init(&e, &conf);
    r = run_one(&e, "inv_change", NULL);
    CHECK_INT(num(result0(r), "attempts"), 1);
    json_decref(r);
    /* A command that fails is not transient: no retry even read-only. */
    r = run_one(&e, "fail_read", NULL);
    CHECK_INT(num(result0(r), "attempts"), 1);
    CHECK_STR(str(json_array_get(json_object_get(r, "steps"), 0), "state"), "failed");
    json_decref(r);
    /* A change that timed out may have started: never retried. */
    r = run_one(&e, "hang", NULL);
    CHECK_INT(num(result0(r), "attempts"), 1);
    CHECK_STR(str(json_array_get(json_object_get(r, "steps"), 0), "state"), "timed_out");
    json_decref(r);
    env_close(&e, false);

    /* A read that timed out is retried. */
    env_init(&e, &conf);
    r = run_one(&e, "hang_read", NULL);
    CHECK_INT(num(result0(r), "attempts"), 3);
    CHECK_STR(str(json_array_get(json_object_get(r, "steps"), 0), "state"), "timed_out");
    json_decref(r);
    env_close(&e, false);
}

static const char *breaker_state(struct env *e, const char *name)
{
    static char state[32];
    json_t *all = bt_connectors_breakers(e->conns);
    size_t i;
    json_t *b;
    state[0] = '\0';
    json_array_foreach(all, i, b) if (strcmp(str(b, "connector"), name) == 0)
        bt_strlcpy(state, str(b, "state"), sizeof state);
    json_decref(all);
    return state;
}

static void test_breaker(void)
{
    struct bt_execute_config c = conf;
    c.breaker_failures = 2;
    c.breaker_cooldown_s = 1;
    struct env e;
    env_init(&e, &c);
    CHECK_STR(breaker_state(&e, "local"), "closed");
    json_t *r = run_one(&e, "hang", NULL);
    json_decref(r);
    r = run_one(&e, "hang", NULL);
    json_decref(r);
    CHECK_STR(breaker_state(&e, "local"), "open");
    /* Open: fails at once, naming the connector. */
    int64_t t0 = bt_mono_ms();
    r = run_one(&e, "ok", NULL);
    CHECK(bt_mono_ms() - t0 < 900);
    CHECK_STR(str(r, "state"), "failed");
    CHECK_MSG(strstr(str(result0(r), "error"),
                     "connector 'local' is unavailable (circuit open after 2 failures; retrying "
                     "in ") != NULL,
              "%s", str(result0(r), "error"));
    json_decref(r);
    CHECK_STR(breaker_state(&e, "inventory"), "closed");
    /* After the cooldown one trial call goes through and closes it. */
    usleep(1200 * 1000);
    CHECK_STR(breaker_state(&e, "local"), "half_open");
    r = run_one(&e, "ok", NULL);
    CHECK_STR(str(r, "state"), "completed");
    json_decref(r);
    CHECK_STR(breaker_state(&e, "local"), "closed");
    env_close(&e, false);
}

/* ---- level 3: one released step at a time --------------------------------------------- */

static void test_level3_steps(void)
{
    struct env e;
    env_init(&e, &conf);
    char id[33], pa[600], pb[600];
    json_t *ia = path_input("l3-a", pa, sizeof pa);
    json_t *ib = path_input("l3-b", pb, sizeof pb);
    json_t *steps =
        json_pack("[o, o, o]",
                  mk_step(&e, "mark", "localhost", json_deep_copy(ia), NULL,
                          json_pack("{s:s, s:O}", "tool", "unmark", "inputs", ia)),
                  mk_step(&e, "mark", "localhost", json_deep_copy(ib), json_pack("[i]", 0),
                          json_pack("{s:s, s:O}", "tool", "unmark", "inputs", ib)),
                  mk_step(&e, "ok", "localhost", NULL, json_pack("[i]", 1), NULL));
    json_decref(ia);
    json_decref(ib);
    mk_execution(&e, mk_plan(steps), "pending_approval", "drop the database", id);

    json_t *r = bt_execute_run(e.ex, id, 1, BT_EXECUTE_NOW, "bob");
    CHECK_STR(str(r, "error"), "invalid_step");
    CHECK_MSG(strstr(str(r, "message"), "needs step 1 to complete first") != NULL, "%s",
              str(r, "message"));
    json_decref(r);

    r = bt_execute_run(e.ex, id, 0, BT_EXECUTE_NOW, "bob");
    CHECK_STR(str(r, "state"), "pending_approval");
    CHECK(json_is_true(json_object_get(r, "paused")));
    CHECK_INT(num(r, "next_step"), 1);
    json_decref(r);
    CHECK(exists(pa) && !exists(pb));
    json_t *x = exec_get(&e, id);
    CHECK_STR(str(x, "state"), "pending_approval");
    CHECK_STR(step_state(x, 0), "completed");
    CHECK_STR(step_state(x, 1), "pending");
    CHECK_STR(step_state(x, 2), "pending");
    json_decref(x);
    /* The paused execution keeps its asset. */
    json_t *locks = NULL;
    char err[BT_ERRLEN];
    CHECK(bt_store_locks_list(e.st, id, &locks, err, sizeof err) == BT_OK);
    CHECK_INT(json_array_size(locks), 1);
    json_decref(locks);
    /* Recovery leaves a paused execution alone: it is not running. */
    json_t *rec = bt_execute_recover(e.st, "test", err, sizeof err);
    CHECK_INT(json_array_size(rec), 0);
    json_decref(rec);

    /* A new engine on a fresh store handle: everything from the store. */
    env_close(&e, true);
    env_open(&e, &conf);
    r = bt_execute_run(e.ex, id, 1, BT_EXECUTE_NOW, "carol");
    CHECK_STR(str(r, "state"), "pending_approval");
    CHECK_INT(num(r, "next_step"), 2);
    json_decref(r);
    CHECK(exists(pb));
    r = bt_execute_run(e.ex, id, 1, BT_EXECUTE_NOW, "carol");
    CHECK_STR(str(r, "error"), "invalid_step");
    CHECK(strstr(str(r, "message"), "already run") != NULL);
    json_decref(r);
    r = bt_execute_run(e.ex, id, 2, BT_EXECUTE_NOW, "carol");
    CHECK_STR(str(r, "state"), "completed");
    CHECK(!json_object_get(r, "paused"));
    json_decref(r);
    CHECK(bt_store_locks_list(e.st, id, &locks, err, sizeof err) == BT_OK);
    CHECK_INT(json_array_size(locks), 0);
    json_decref(locks);

    /* A released step that fails undoes the steps completed before it. */
    char id2[33], pc[600];
    json_t *ic = path_input("l3-c", pc, sizeof pc);
    steps = json_pack("[o, o]",
                      mk_step(&e, "mark", "localhost", json_deep_copy(ic), NULL,
                              json_pack("{s:s, s:O}", "tool", "unmark", "inputs", ic)),
                      mk_step(&e, "fail", "localhost", NULL, json_pack("[i]", 0), NULL));
    json_decref(ic);
    mk_execution(&e, mk_plan(steps), "pending_approval", "step by step", id2);
    r = bt_execute_run(e.ex, id2, 0, BT_EXECUTE_NOW, "bob");
    CHECK_STR(str(r, "state"), "pending_approval");
    json_decref(r);
    CHECK(exists(pc));
    env_close(&e, true);
    env_open(&e, &conf);
    r = bt_execute_run(e.ex, id2, 1, BT_EXECUTE_NOW, "carol");
    CHECK_STR(str(r, "state"), "failed");
    CHECK_INT(json_array_size(json_object_get(r, "compensated")), 1);
    CHECK_INT(num(json_array_get(json_object_get(r, "compensated"), 0), "undoes"), 0);
    json_decref(r);
    CHECK(!exists(pc));
    x = exec_get(&e, id2);
    CHECK_STR(step_state(x, 0), "compensated");
    CHECK_STR(step_state(x, 1), "failed");
    json_decref(x);
    env_close(&e, false);
}

/* ---- the background queue ---------------------------------------------------------------- */

static json_t *jobs(struct env *e, const char *id)
{
    json_t *j = NULL;
    char err[BT_ERRLEN];
    CHECK(bt_store_jobs_of(e->st, id, &j, err, sizeof err) == BT_OK);
    return j;
}

static void test_background(void)
{
    struct env e;
    env_init(&e, &conf);
    char id[33];
    json_t *steps = json_pack("[o, o]", mk_step(&e, "long", "localhost", NULL, NULL, NULL),
                              mk_step(&e, "ok", "localhost", NULL, json_pack("[i]", 0), NULL));
    mk_execution(&e, mk_plan(steps), "approved", "a long one", id);
    json_t *r = bt_execute_run(e.ex, id, -1, BT_EXECUTE_AUTO, "alice");
    CHECK_STR(str(r, "state"), "queued");
    CHECK(json_is_true(json_object_get(r, "background")));
    CHECK_INT(num(r, "estimate_s"), 110);
    CHECK(num(r, "job_id") > 0);
    json_decref(r);
    json_t *j = jobs(&e, id);
    CHECK_INT(json_array_size(j), 1);
    CHECK_STR(str(json_array_get(j, 0), "state"), "available");
    json_decref(j);
    /* Queued for a worker: not run a second time in the foreground. */
    r = bt_execute_run(e.ex, id, -1, BT_EXECUTE_NOW, "alice");
    CHECK_STR(str(r, "error"), "invalid_state");
    CHECK(strstr(str(r, "message"), "queued in the background") != NULL);
    json_decref(r);
    json_t *out = NULL;
    CHECK(bt_execute_worker_once(e.ex, &out));
    CHECK_STR(str(out, "state"), "completed");
    json_decref(out);
    j = jobs(&e, id);
    CHECK_STR(str(json_array_get(j, 0), "state"), "done");
    CHECK_INT(num(json_array_get(j, 0), "attempt"), 1);
    json_decref(j);
    CHECK(!bt_execute_worker_once(e.ex, &out));
    CHECK(out == NULL);

    /* Many targets go to the background too, even when short. */
    char id2[33];
    steps = json_array();
    for (int i = 0; i < 11; i++) {
        char t[16];
        bt_fmt(t, sizeof t, "host-%d", i);
        json_array_append_new(steps, mk_step(&e, "ok", t, NULL, NULL, NULL));
    }
    mk_execution(&e, mk_plan(steps), "approved", "everywhere", id2);
    r = bt_execute_run(e.ex, id2, -1, BT_EXECUTE_AUTO, "alice");
    CHECK_STR(str(r, "state"), "queued");
    CHECK(json_is_true(json_object_get(r, "background")));
    json_decref(r);
    /* Cancelled before a worker got to it: the job is dropped, not run. */
    r = bt_execute_cancel(e.ex, id2, "alice", "changed my mind");
    CHECK_STR(str(r, "state"), "cancelled");
    json_decref(r);
    CHECK(!bt_execute_worker_once(e.ex, NULL));
    j = jobs(&e, id2);
    CHECK_STR(str(json_array_get(j, 0), "state"), "dead");
    json_decref(j);
    r = bt_execute_cancel(e.ex, id2, "alice", "again");
    CHECK_STR(str(r, "error"), "invalid_state");
    json_decref(r);
    env_close(&e, false);
}

static void test_lease_expiry(void)
{
    struct env e;
    env_init(&e, &conf);
    char id[33], err[BT_ERRLEN];
    json_t *steps = json_pack("[o, o]", mk_step(&e, "long", "localhost", NULL, NULL, NULL),
                              mk_step(&e, "ok", "localhost", NULL, json_pack("[i]", 0), NULL));
    mk_execution(&e, mk_plan(steps), "approved", "restart nginx", id);
    json_t *r = bt_execute_run(e.ex, id, -1, BT_EXECUTE_AUTO, "alice");
    CHECK_STR(str(r, "state"), "queued");
    json_decref(r);
    /* A worker on another host claims it, starts step 1 and dies. */
    json_t *job = NULL;
    CHECK(bt_store_job_claim(e.st, "dead-worker", 60000, &job, err, sizeof err) == BT_OK);
    CHECK(job != NULL);
    CHECK(!json_is_true(json_object_get(job, "reclaimed")));
    json_decref(job);
    CHECK(bt_store_execution_own(e.st, id, "queued", "elsewhere.example", 4242, NULL, 2, err,
                                 sizeof err) == BT_OK);
    CHECK(bt_store_step_set(e.st, id, 0, "running", NULL, err, sizeof err) == BT_OK);
    /* Not expired yet: nothing to claim. */
    CHECK(!bt_execute_worker_once(e.ex, NULL));
    usleep(1300 * 1000); /* the lease is 1 s */
    json_t *out = NULL;
    CHECK(bt_execute_worker_once(e.ex, &out));
    CHECK_STR(str(out, "state"), "interrupted");
    json_decref(out);
    json_t *x = exec_get(&e, id);
    CHECK_STR(str(x, "state"), "interrupted");
    CHECK_STR(step_state(x, 0), "interrupted");
    CHECK_STR(step_state(x, 1), "cancelled");
    json_decref(x);
    json_t *j = jobs(&e, id);
    CHECK_STR(str(json_array_get(j, 0), "state"), "dead");
    CHECK(strstr(str(json_array_get(j, 0), "last_error"), "dead-worker") != NULL);
    json_decref(j);
    json_t *n = NULL;
    CHECK(bt_store_notifications(e.st, "alice", true, 10, &n, err, sizeof err) == BT_OK);
    CHECK_INT(json_array_size(n), 1);
    CHECK_MSG(strstr(str(json_array_get(n, 0), "text"), "will not be run again") != NULL, "%s",
              str(json_array_get(n, 0), "text"));
    json_decref(n);
    /* Never re-run: nothing left to claim. */
    CHECK(!bt_execute_worker_once(e.ex, NULL));

    /* A worker that died before starting a step: the job is taken over and
     * runs to the end. */
    char id2[33];
    steps = json_pack("[o]", mk_step(&e, "long", "localhost", NULL, NULL, NULL));
    mk_execution(&e, mk_plan(steps), "approved", "later", id2);
    r = bt_execute_run(e.ex, id2, -1, BT_EXECUTE_AUTO, "alice");
    json_decref(r);
    CHECK(bt_store_job_claim(e.st, "dead-worker-2", 60000, &job, err, sizeof err) == BT_OK);
    json_decref(job);
    usleep(1300 * 1000);
    CHECK(bt_execute_worker_once(e.ex, &out));
    CHECK_STR(str(out, "state"), "completed");
    json_decref(out);
    j = jobs(&e, id2);
    CHECK_STR(str(json_array_get(j, 0), "state"), "done");
    CHECK_INT(num(json_array_get(j, 0), "attempt"), 2);
    json_decref(j);
    env_close(&e, false);
}

/* ---- crash recovery ------------------------------------------------------------------------- */

static void own(struct env *e, const char *id, const char *host, long long pid, const char *start)
{
    char err[BT_ERRLEN];
    CHECK_MSG(bt_store_execution_own(e->st, id, "approved", host, pid, start, 2, err, sizeof err) ==
                  BT_OK,
              "%s", err);
    CHECK(bt_store_step_add(e->st, id, 0, "ok", "running", err, sizeof err) == BT_OK);
    CHECK(bt_store_step_add(e->st, id, 1, "ok", "pending", err, sizeof err) == BT_OK);
}

static void two_steps_in(struct env *e, const char *state, const char *text, char id[33])
{
    json_t *steps = json_pack("[o, o]", mk_step(e, "ok", "localhost", NULL, NULL, NULL),
                              mk_step(e, "ok", "localhost", NULL, json_pack("[i]", 0), NULL));
    mk_execution(e, mk_plan(steps), state, text, id);
}

static void two_steps(struct env *e, const char *text, char id[33])
{
    two_steps_in(e, "approved", text, id);
}

static void test_recover(void)
{
    struct env e;
    env_init(&e, &conf);
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    char err[BT_ERRLEN];
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    CHECK(child > 0);
    int status;
    CHECK(waitpid(child, &status, 0) == child);

    char dead[33], live[33], reused[33], other[33], pending[33];
    two_steps(&e, "restart nginx on localhost", dead);
    own(&e, dead, host, child, NULL);
    json_t *res = NULL;
    json_t *assets = json_pack("[s]", "localhost");
    CHECK(bt_store_locks_acquire(e.st, dead, assets, 1000, &res, err, sizeof err) == BT_OK);
    CHECK(json_is_true(json_object_get(res, "acquired")));
    json_decref(res);
    json_decref(assets);
    two_steps(&e, "mine", live);
    own(&e, live, host, getpid(), NULL);
    two_steps(&e, "pid reused", reused);
    own(&e, reused, host, getppid(), "bogus-boot:1");
    two_steps(&e, "another host", other);
    own(&e, other, "elsewhere.example", child, NULL);
    two_steps_in(&e, "pending_approval", "waiting for approval", pending);

    json_t *rec = bt_execute_recover(e.st, "test", err, sizeof err);
    CHECK_INT(json_array_size(rec), 2);
    bool saw_dead = false, saw_reused = false;
    size_t i;
    json_t *one;
    json_array_foreach(rec, i, one)
    {
        saw_dead = saw_dead || strcmp(str(one, "execution_id"), dead) == 0;
        saw_reused = saw_reused || strcmp(str(one, "execution_id"), reused) == 0;
        CHECK_STR(str(one, "state"), "interrupted");
        CHECK_STR(str(one, "requester"), "alice");
        CHECK_INT(json_array_size(json_object_get(one, "interrupted_steps")), 1);
    }
    CHECK(saw_dead && saw_reused);
    json_decref(rec);

    json_t *x = exec_get(&e, dead);
    CHECK_STR(str(x, "state"), "interrupted");
    CHECK_STR(step_state(x, 0), "interrupted");
    CHECK_STR(step_state(x, 1), "cancelled");
    json_decref(x);
    const char *const untouched[] = {live, other};
    for (size_t k = 0; k < 2; k++) {
        x = exec_get(&e, untouched[k]);
        CHECK_STR(str(x, "state"), "running");
        CHECK_STR(step_state(x, 0), "running");
        json_decref(x);
    }
    x = exec_get(&e, pending);
    CHECK_STR(str(x, "state"), "pending_approval");
    json_decref(x);
    /* Its lock went with it. */
    json_t *locks = NULL;
    CHECK(bt_store_locks_list(e.st, NULL, &locks, err, sizeof err) == BT_OK);
    CHECK_INT(json_array_size(locks), 0);
    json_decref(locks);
    /* The requester is told, once. */
    json_t *n = NULL;
    CHECK(bt_store_notifications(e.st, "alice", true, 10, &n, err, sizeof err) == BT_OK);
    CHECK_INT(json_array_size(n), 2);
    const json_t *first = json_array_get(n, 0);
    CHECK(strstr(str(first, "text"), "was interrupted") != NULL);
    CHECK(strstr(str(first, "text"), "a retry needs a new approval") != NULL);
    CHECK(bt_store_notification_delivered(e.st, num(first, "notification_id"), err, sizeof err) ==
          BT_OK);
    json_decref(n);
    CHECK(bt_store_notifications(e.st, "alice", true, 10, &n, err, sizeof err) == BT_OK);
    CHECK_INT(json_array_size(n), 1);
    json_decref(n);
    json_t *log = audit_of(&e, "execution_interrupted", dead);
    CHECK_INT(json_array_size(log), 1);
    json_decref(log);
    /* Running again is refused: a retry needs a new approval. */
    json_t *r = bt_execute_run(e.ex, dead, -1, BT_EXECUTE_NOW, "alice");
    CHECK_STR(str(r, "error"), "invalid_state");
    json_decref(r);
    /* A second recovery finds nothing more. */
    rec = bt_execute_recover(e.st, "test", err, sizeof err);
    CHECK_INT(json_array_size(rec), 0);
    json_decref(rec);
    env_close(&e, false);
}

/* ---- asset locks ---------------------------------------------------------------------------- */

/* An execution that holds localhost (running, owned by this process). */
static void holder(struct env *e, char id[33])
{
    char err[BT_ERRLEN];
    two_steps(e, "restart nginx", id);
    CHECK(bt_store_execution_own(e->st, id, "approved", "elsewhere.example", 1, NULL, 2, err,
                                 sizeof err) == BT_OK);
    json_t *res = NULL;
    json_t *assets = json_pack("[s]", "localhost");
    CHECK(bt_store_locks_acquire(e->st, id, assets, 1000, &res, err, sizeof err) == BT_OK);
    CHECK(json_is_true(json_object_get(res, "acquired")));
    json_decref(res);
    json_decref(assets);
}

static void test_locks(void)
{
    struct env e;
    char err[BT_ERRLEN], hold[33], id[33], pa[600], prefix[16];
    struct bt_execute_config refuse = conf;
    refuse.asset_lock = BT_EXECUTE_LOCK_REFUSE;
    env_init(&e, &refuse);
    holder(&e, hold);
    bt_fmt(prefix, sizeof prefix, "%.8s", hold);

    /* refuse: ends at once, naming the holder; nothing ran. */
    json_t *ia = path_input("lock-a", pa, sizeof pa);
    mk_execution(&e, mk_plan(json_pack("[o]", mk_step(&e, "mark", "localhost", ia, NULL, NULL))),
                 "approved", "touch it", id);
    json_t *r = bt_execute_run(e.ex, id, -1, BT_EXECUTE_NOW, "bob");
    CHECK_STR(str(r, "state"), "cancelled");
    CHECK_STR(str(r, "error"), "asset_busy");
    const char *msg = str(r, "message");
    CHECK_MSG(strstr(msg, "localhost is in use by execution") && strstr(msg, prefix) &&
                  strstr(msg, "(alice: restart nginx)"),
              "%s", msg);
    json_decref(r);
    CHECK(!exists(pa));
    json_t *x = exec_get(&e, id);
    CHECK_STR(str(x, "state"), "cancelled");
    json_decref(x);

    /* queue: waits in line, is told its place, runs once the holder is
     * done (the progress callback releases the holder's lock). */
    env_engine(&e, &conf);
    e.release_on_queue = hold;
    char id2[33];
    mk_execution(&e,
                 mk_plan(json_pack("[o]", mk_step(&e, "mark", "localhost",
                                                  json_pack("{s:s}", "path", pa), NULL, NULL))),
                 "approved", "touch it", id2);
    r = bt_execute_run(e.ex, id2, -1, BT_EXECUTE_NOW, "bob");
    CHECK_STR(str(r, "state"), "completed");
    CHECK(exists(pa));
    int q = event_at(&e, id2, -1, "queued");
    CHECK(q >= 0);
    msg = str(json_array_get(e.events, (size_t)q), "message");
    CHECK_MSG(strstr(msg, "2nd in line for localhost behind execution") && strstr(msg, prefix) &&
                  strstr(msg, "(alice: restart nginx)"),
              "%s", msg);
    CHECK_INT(num(json_object_get(r, "queue"), "position"), 2);
    json_decref(r);
    json_t *log = audit_of(&e, "execution_queued", id2);
    CHECK_INT(json_array_size(log), 1);
    json_decref(log);
    e.release_on_queue = NULL;

    /* queue, but the holder never finishes: gives up after lock_wait_s. */
    struct bt_execute_config brief = conf;
    brief.lock_wait_s = 1;
    env_engine(&e, &brief);
    char hold2[33], id3[33];
    holder(&e, hold2);
    mk_execution(&e, mk_plan(json_pack("[o]", mk_step(&e, "ok", "localhost", NULL, NULL, NULL))),
                 "approved", "just wait", id3);
    r = bt_execute_run(e.ex, id3, -1, BT_EXECUTE_NOW, "bob");
    CHECK_STR(str(r, "state"), "timed_out");
    CHECK_STR(str(r, "error"), "lock_timeout");
    CHECK(strstr(str(r, "message"), "gave up after waiting 1 s") != NULL);
    json_decref(r);

    /* Read-only steps take no lock. */
    r = run_one(&e, "nap", json_pack("{s:s}", "secs", "0"));
    CHECK_STR(str(r, "state"), "completed");
    json_decref(r);

    /* First come, first served: a second waiter stays behind the first
     * even when the holder is gone. */
    char w1[33], w2[33];
    two_steps(&e, "first waiter", w1);
    two_steps(&e, "second waiter", w2);
    json_t *assets = json_pack("[s]", "LOCALHOST");
    json_t *res = NULL;
    CHECK(bt_store_locks_acquire(e.st, w1, assets, 60000, &res, err, sizeof err) == BT_OK);
    CHECK(!json_is_true(json_object_get(res, "acquired")));
    CHECK_INT(num(json_array_get(json_object_get(res, "busy"), 0), "position"), 2);
    json_decref(res);
    CHECK(bt_store_locks_acquire(e.st, w2, assets, 60000, &res, err, sizeof err) == BT_OK);
    const json_t *b = json_array_get(json_object_get(res, "busy"), 0);
    CHECK_INT(num(b, "position"), 3);
    CHECK_INT(num(b, "waiters_ahead"), 1);
    CHECK_STR(str(json_object_get(b, "holder"), "execution_id"), hold2);
    CHECK_STR(str(json_object_get(b, "ahead"), "execution_id"), w1);
    json_decref(res);
    CHECK(bt_store_locks_release(e.st, hold2, err, sizeof err) == BT_OK);
    CHECK(bt_store_locks_acquire(e.st, w2, assets, 60000, &res, err, sizeof err) == BT_OK);
    CHECK(!json_is_true(json_object_get(res, "acquired")));
    json_decref(res);
    CHECK(bt_store_locks_acquire(e.st, w1, assets, 60000, &res, err, sizeof err) == BT_OK);
    CHECK(json_is_true(json_object_get(res, "acquired")));
    json_decref(res);
    CHECK(bt_store_locks_release(e.st, w1, err, sizeof err) == BT_OK);
    CHECK(bt_store_locks_acquire(e.st, w2, assets, 60000, &res, err, sizeof err) == BT_OK);
    CHECK(json_is_true(json_object_get(res, "acquired")));
    json_decref(res);
    CHECK(bt_store_locks_release(e.st, w2, err, sizeof err) == BT_OK);
    json_decref(assets);

    /* A background job is not claimable while its asset is held. */
    char hold3[33], id4[33];
    holder(&e, hold3);
    mk_execution(&e, mk_plan(json_pack("[o]", mk_step(&e, "long", "localhost", NULL, NULL, NULL))),
                 "approved", "in the background", id4);
    r = bt_execute_run(e.ex, id4, -1, BT_EXECUTE_AUTO, "bob");
    CHECK(json_is_true(json_object_get(r, "background")));
    json_decref(r);
    CHECK(!bt_execute_worker_once(e.ex, NULL));
    CHECK(bt_store_locks_release(e.st, hold3, err, sizeof err) == BT_OK);
    json_t *out = NULL;
    CHECK(bt_execute_worker_once(e.ex, &out));
    CHECK_STR(str(out, "state"), "completed");
    json_decref(out);
    env_close(&e, false);
}

/* ---- a store that is away for a moment ------------------------------------------------- */

/* The end of a step is recorded even when the store is away while the step
 * runs (longer than the store's own 5 s wait): the write is tried again
 * until the store answers, so the execution never ends "completed" over a
 * step still shown "running", and the audit log has its step_finished. */
static void test_store_away_step(void)
{
    struct env e;
    env_init(&e, &conf);
    struct locker l = {.table = "steps", .hold_ms = 6500};
    bt_strlcpy(l.store, e.store, sizeof l.store);
    e.lock = &l;
    e.lock_index = 0;
    e.lock_state = "running";
    char id[33];
    mk_execution(&e,
                 mk_plan(json_pack("[o]", mk_step(&e, "nap", "localhost",
                                                  json_pack("{s:s}", "secs", "0.5"), NULL, NULL))),
                 "approved", "a nap while the store is away", id);
    json_t *r = bt_execute_run(e.ex, id, -1, BT_EXECUTE_NOW, "alice");
    CHECK(l.started);
    locker_release(&l);
    CHECK_STR(str(r, "state"), "completed");
    json_decref(r);
    json_t *x = exec_get(&e, id);
    CHECK_STR(str(x, "state"), "completed");
    CHECK_STR(step_state(x, 0), "completed");
    json_decref(x);
    json_t *a = audit_of(&e, "step_finished", id);
    CHECK_INT(json_array_size(a), 1);
    json_decref(a);
    a = audit_of(&e, "execution_finished", id);
    CHECK_INT(json_array_size(a), 1);
    json_decref(a);
    env_close(&e, false);
}

/* Run sql on e's store from a connection of its own (sqlite or pg). */
static void store_sql(struct env *e, const char *sqlite, const char *pg)
{
    if (bt_pg_mode()) {
        PGconn *c = PQconnectdb(e->store);
        PGresult *r = PQexec(c, pg);
        CHECK_MSG(PQresultStatus(r) == PGRES_COMMAND_OK, "%s: %s", pg, PQerrorMessage(c));
        PQclear(r);
        PQfinish(c);
    } else {
        sqlite3 *db = NULL;
        char *msg = NULL;
        CHECK(sqlite3_open_v2(e->store, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK);
        sqlite3_busy_timeout(db, 10000);
        CHECK_MSG(sqlite3_exec(db, sqlite, NULL, NULL, &msg) == SQLITE_OK, "%s: %s", sqlite,
                  msg ? msg : "");
        sqlite3_free(msg);
        sqlite3_close(db);
    }
}

/* A background run that cannot record its end (here a trigger refuses the
 * move to completed, as a store that stayed away past the retries would)
 * leaves its job to the lease instead of handing it back: handed back,
 * every later claim found the execution "running elsewhere" and it never
 * ended. Taken over after the lease, an execution whose steps all ended is
 * finished without running a step again, and the audit log says it
 * finished once. */
static void test_store_away_end(void)
{
    struct env e;
    env_init(&e, &conf);
    char id[33], pa[600], err[BT_ERRLEN];
    json_t *ia = path_input("away-end", pa, sizeof pa);
    mk_execution(&e, mk_plan(json_pack("[o]", mk_step(&e, "mark", "localhost", ia, NULL, NULL))),
                 "approved", "mark it", id);
    json_t *r = bt_execute_run(e.ex, id, -1, BT_EXECUTE_BACKGROUND, "alice");
    CHECK_STR(str(r, "state"), "queued");
    json_decref(r);
    store_sql(&e,
              "CREATE TRIGGER bt_test_away BEFORE UPDATE ON executions"
              " WHEN NEW.state = 'completed' BEGIN SELECT RAISE(ABORT, 'the store is away'); END",
              "CREATE FUNCTION bt_test_away() RETURNS trigger LANGUAGE plpgsql AS"
              " $$BEGIN RAISE EXCEPTION 'the store is away'; END$$;"
              " CREATE TRIGGER bt_test_away BEFORE UPDATE ON executions FOR EACH ROW"
              " WHEN (NEW.state = 'completed') EXECUTE FUNCTION bt_test_away()");
    json_t *out = NULL;
    CHECK(bt_execute_worker_once(e.ex, &out));
    CHECK_STR(str(out, "error"), "store");
    CHECK_STR(str(out, "state"), "running");
    json_decref(out);
    store_sql(&e, "DROP TRIGGER bt_test_away",
              "DROP TRIGGER bt_test_away ON executions; DROP FUNCTION bt_test_away()");
    CHECK(exists(pa));
    CHECK(unlink(pa) == 0);
    json_t *j = jobs(&e, id);
    CHECK_STR(str(json_array_get(j, 0), "state"), "running");
    json_decref(j);
    json_t *a = audit_of(&e, "execution_finished", id);
    CHECK_INT(json_array_size(a), 0);
    json_decref(a);
    usleep(1300 * 1000); /* the lease is 1 s */
    CHECK(bt_execute_worker_once(e.ex, &out));
    CHECK_STR(str(out, "state"), "completed");
    json_decref(out);
    CHECK(!exists(pa)); /* not run again */
    json_t *x = exec_get(&e, id);
    CHECK_STR(str(x, "state"), "completed");
    CHECK_STR(step_state(x, 0), "completed");
    json_decref(x);
    j = jobs(&e, id);
    CHECK_STR(str(json_array_get(j, 0), "state"), "done");
    CHECK_INT(num(json_array_get(j, 0), "attempt"), 2);
    json_decref(j);
    a = audit_of(&e, "step_finished", id);
    CHECK_INT(json_array_size(a), 1);
    json_decref(a);
    a = audit_of(&e, "execution_finished", id);
    CHECK_INT(json_array_size(a), 1);
    json_decref(a);
    CHECK(!bt_execute_worker_once(e.ex, NULL));
    json_t *locks = NULL;
    CHECK(bt_store_locks_list(e.st, id, &locks, err, sizeof err) == BT_OK);
    CHECK_INT(json_array_size(locks), 0);
    json_decref(locks);
    env_close(&e, false);
}

static int remove_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

int main(void)
{
    under_valgrind = getenv("BATON_UNDER_VALGRIND") != NULL;
    CHECK(mkdtemp(dir) != NULL);
    write_config(dir, baton_yaml);
    bt_diag *d = bt_diag_new();
    cfg = bt_config_load(dir, d);
    CHECK(cfg != NULL);
    CHECK(bt_execute_config_read(cfg, &conf, d));
    for (size_t i = 0; i < bt_diag_count(d); i++)
        fprintf(stderr, "%s\n", bt_diag_get(d, i));
    CHECK_INT(bt_diag_count(d), 0);
    bt_diag_free(d);
    if (cfg && bt_test_failed == 0) {
        RUN(test_config);
        RUN(test_transitions);
        RUN(test_parallel_and_order);
        RUN(test_saga_order);
        RUN(test_retries);
        RUN(test_breaker);
        RUN(test_level3_steps);
        RUN(test_background);
        RUN(test_lease_expiry);
        RUN(test_recover);
        RUN(test_locks);
        RUN(test_store_away_step);
        RUN(test_store_away_end);
    }
    bt_config_free(cfg);
    if (bt_pg_mode())
        bt_pg_fresh_drop_all();
    if (bt_test_failed == 0 && nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return bt_test_finish();
}
