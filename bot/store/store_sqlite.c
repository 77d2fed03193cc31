/*
 * store_sqlite.c - the SQLite backend of the store (one file, WAL).
 *
 * Open, in this order, and why:
 *   1. create the parent directories (0750) and the file (0640) ourselves, so
 *      the mode is ours and not SQLite's default 0644 (SQLite gives the -wal
 *      and -shm files the mode of the database file);
 *   2. read-only checks: the file is an SQLite database and passes
 *      PRAGMA quick_check; it is a baton store (application_id 'batn' and a
 *      schema_migrations table) or completely empty; its schema version is
 *      not newer than this build. Nothing has been written yet, so a refused
 *      file is left exactly as it was;
 *   3. WAL, synchronous=NORMAL (durable at each checkpoint, never corrupt
 *      after a crash; a power cut may lose the last transactions);
 *   4. numbered migrations, each in its own BEGIN IMMEDIATE transaction that
 *      re-reads the version first, so two processes opening a new file at
 *      the same time apply each migration exactly once.
 *
 * Statements: every fixed statement is prepared once per handle with
 * SQLITE_PREPARE_PERSISTENT and reused (bind, step, reset). Asset queries are
 * assembled from a fixed table of column fragments with '?' placeholders;
 * the set of fragments used is the cache key. No caller value is ever part
 * of SQL text.
 *
 * Writes that read before they write (audit append, inventory replace,
 * migrations) use BEGIN IMMEDIATE: the write lock is taken first, so a second
 * connection waits (busy timeout) instead of failing half-way with
 * SQLITE_BUSY on lock upgrade, and two appenders never fork the audit chain.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "bot/store/store.h"
#include "bot/store/store_int.h"

/* PRAGMA application_id of a baton store: 'batn' (0x6261746e), so file(1)
 * and this code can tell a baton store from any other SQLite file. */
#define SQ_APP_ID 1650553966
#define SQ_STR2(x) #x
#define SQ_STR(x) SQ_STR2(x)

#define SQ_BUSY_TIMEOUT_MS 5000
/* Audit entries read per batch while verifying (bounded memory). */
#define SQ_AUDIT_BATCH 1000
/* Cached asset-query statements (one per combination of filter keys). */
#define SQ_DYN_SLOTS 16
#define SQ_AUTOCHECKPOINT_PAGES 20000 /* ~80 MB of WAL: a safety net only */
#define SQ_WAL_KEEP_BYTES 16777216    /* WAL file size kept after a reset */
#define SQ_WAL_TRUNCATE_FRAMES 4096   /* ~16 MB: maintain empties the WAL */

/* ---- migrations -----------------------------------------------------------
 * migrations[i] brings the schema from version i to i+1. Never edit one that
 * has shipped: add the next. Each runs in its own transaction together with
 * its schema_migrations row, so a crash leaves the store at a whole version.
 *
 * State columns carry no CHECK constraint on purpose: the names are checked
 * in store.c, and SQLite cannot alter a CHECK without rebuilding the table,
 * so a new state would otherwise need a table-copy migration.
 *
 * Column names avoid PostgreSQL reserved words (user -> user_id) so the PG
 * backend can use the same schema. */
static const char *const migrations[] = {
    /* 1: everything. */
    "CREATE TABLE schema_migrations ("
    " version INTEGER PRIMARY KEY,"
    " applied_ms INTEGER NOT NULL);"

    "CREATE TABLE settings ("
    " key TEXT PRIMARY KEY,"
    " value TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL);"

    /* Filterable fields in columns (case-insensitive), the full object in
     * doc (canonical JSON), tags as a JSON array for json_each. */
    "CREATE TABLE assets ("
    " name TEXT NOT NULL COLLATE NOCASE PRIMARY KEY,"
    " hostname TEXT COLLATE NOCASE,"
    " ip TEXT COLLATE NOCASE,"
    " os TEXT COLLATE NOCASE,"
    " os_version TEXT COLLATE NOCASE,"
    " role TEXT COLLATE NOCASE,"
    " environment TEXT COLLATE NOCASE,"
    " status TEXT COLLATE NOCASE,"
    " datacenter TEXT COLLATE NOCASE,"
    " connection TEXT COLLATE NOCASE,"
    " cpu INTEGER,"
    " ram_gb INTEGER,"
    " tags TEXT NOT NULL DEFAULT '[]',"
    " doc TEXT NOT NULL);"
    "CREATE INDEX assets_hostname ON assets(hostname);"
    "CREATE INDEX assets_ip ON assets(ip);"

    "CREATE TABLE requests ("
    " request_id TEXT PRIMARY KEY,"
    " user_id TEXT,"
    " channel TEXT,"
    " text TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL);"

    "CREATE TABLE decisions ("
    " decision_id INTEGER PRIMARY KEY,"
    " request_id TEXT NOT NULL REFERENCES requests(request_id),"
    " decision_json TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL);"
    "CREATE INDEX decisions_request ON decisions(request_id);"

    "CREATE TABLE plans ("
    " plan_id TEXT PRIMARY KEY,"
    " request_id TEXT NOT NULL REFERENCES requests(request_id),"
    " canonical_json TEXT NOT NULL,"
    " sha256 TEXT NOT NULL,"
    " risk TEXT NOT NULL,"
    " approval_level INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL);"
    "CREATE INDEX plans_request ON plans(request_id);"

    "CREATE TABLE executions ("
    " execution_id TEXT PRIMARY KEY,"
    " plan_id TEXT NOT NULL REFERENCES plans(plan_id),"
    " state TEXT NOT NULL,"
    " result_json TEXT,"
    " created_ms INTEGER NOT NULL,"
    " updated_ms INTEGER NOT NULL);"
    "CREATE INDEX executions_plan ON executions(plan_id);"
    "CREATE INDEX executions_state ON executions(state);"

    "CREATE TABLE steps ("
    " execution_id TEXT NOT NULL REFERENCES executions(execution_id),"
    " step_index INTEGER NOT NULL,"
    " tool TEXT NOT NULL,"
    " state TEXT NOT NULL,"
    " result_json TEXT,"
    " created_ms INTEGER NOT NULL,"
    " updated_ms INTEGER NOT NULL,"
    " PRIMARY KEY (execution_id, step_index));"

    "CREATE TABLE approvals ("
    " approval_id TEXT PRIMARY KEY,"
    " plan_id TEXT NOT NULL REFERENCES plans(plan_id),"
    " execution_id TEXT REFERENCES executions(execution_id),"
    " level INTEGER NOT NULL,"
    " requirement_json TEXT NOT NULL,"
    " state TEXT NOT NULL DEFAULT 'pending',"
    " expires_ms INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " updated_ms INTEGER NOT NULL);"
    "CREATE INDEX approvals_state ON approvals(state, created_ms);"

    /* One row per person per decision. step is -1 for a decision on the
     * whole plan (not NULL: NULLs are distinct in a UNIQUE constraint, which
     * would let the same person decide twice). */
    "CREATE TABLE approval_decisions ("
    " approval_id TEXT NOT NULL REFERENCES approvals(approval_id),"
    " user_id TEXT NOT NULL,"
    " decision TEXT NOT NULL,"
    " step INTEGER NOT NULL DEFAULT -1,"
    " ts_ms INTEGER NOT NULL,"
    " UNIQUE (approval_id, user_id, step));"

    /* hash = sha256(prev_hash "\n" canonical {seq, ts_ms, request_id, actor,
     * event, detail}); see bt_store__audit_hash. The triggers stop the
     * application from changing history by mistake; an edit made by other
     * means (dropping the trigger, editing the file) is what verify finds. */
    "CREATE TABLE audit_log ("
    " seq INTEGER PRIMARY KEY,"
    " ts_ms INTEGER NOT NULL,"
    " request_id TEXT,"
    " actor TEXT,"
    " event TEXT NOT NULL,"
    " detail_json TEXT,"
    " prev_hash TEXT NOT NULL,"
    " hash TEXT NOT NULL);"
    "CREATE INDEX audit_log_ts ON audit_log(ts_ms);"
    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log"
    " BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;"
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log"
    " BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;"

    "PRAGMA application_id = " SQ_STR(SQ_APP_ID) ";",

    /* 2: approval dialogue (decisions, reminders, escalation). Where each
     * decision came from (cli, console, slack, ...), and when the reminder
     * and the escalation went out (NULL: not yet), so that sweeps in any
     * number of processes send each of them exactly once. */
    "ALTER TABLE approval_decisions ADD COLUMN via TEXT;"
    "ALTER TABLE approvals ADD COLUMN reminded_ms INTEGER;"
    "ALTER TABLE approvals ADD COLUMN escalated_ms INTEGER;",

    /* 3: execution engine (asset locks, background job queue, recovery). */
    /* Who runs an execution (host, pid and the process's start time, so a
     * reused pid is not mistaken for the owner) and how far it got. */
    "ALTER TABLE executions ADD COLUMN owner_host TEXT;"
    "ALTER TABLE executions ADD COLUMN owner_pid INTEGER;"
    "ALTER TABLE executions ADD COLUMN owner_start TEXT;"
    "ALTER TABLE executions ADD COLUMN steps_done INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE executions ADD COLUMN steps_total INTEGER NOT NULL DEFAULT 0;"

    /* One row per locked asset: the primary key is what makes two
     * executions never hold the same asset. */
    "CREATE TABLE asset_locks ("
    " asset TEXT NOT NULL COLLATE NOCASE PRIMARY KEY,"
    " execution_id TEXT NOT NULL REFERENCES executions(execution_id),"
    " acquired_ms INTEGER NOT NULL);"
    "CREATE INDEX asset_locks_execution ON asset_locks(execution_id);"

    /* Executions waiting for assets, served in seq order. */
    "CREATE TABLE lock_waits ("
    " seq INTEGER PRIMARY KEY,"
    " execution_id TEXT NOT NULL UNIQUE REFERENCES executions(execution_id),"
    " assets_json TEXT NOT NULL,"
    " since_ms INTEGER NOT NULL,"
    " expires_ms INTEGER NOT NULL);"

    /* The background queue (step -1: the whole plan). */
    "CREATE TABLE jobs ("
    " job_id INTEGER PRIMARY KEY,"
    " execution_id TEXT NOT NULL REFERENCES executions(execution_id),"
    " step_index INTEGER NOT NULL DEFAULT -1,"
    " state TEXT NOT NULL,"
    " attempt INTEGER NOT NULL DEFAULT 0,"
    " max_attempts INTEGER NOT NULL,"
    " run_at_ms INTEGER NOT NULL,"
    " assets_json TEXT NOT NULL DEFAULT '[]',"
    " locked_by TEXT,"
    " locked_ms INTEGER,"
    " heartbeat_ms INTEGER,"
    " last_error TEXT,"
    " created_ms INTEGER NOT NULL,"
    " updated_ms INTEGER NOT NULL);"
    "CREATE INDEX jobs_claim ON jobs(state, run_at_ms);"
    "CREATE INDEX jobs_execution ON jobs(execution_id);"
    "CREATE UNIQUE INDEX jobs_one_active ON jobs(execution_id)"
    " WHERE state IN ('available', 'running');"

    /* Things a requester must be told later (an interrupted execution). */
    "CREATE TABLE notifications ("
    " notification_id INTEGER PRIMARY KEY,"
    " user_id TEXT,"
    " execution_id TEXT REFERENCES executions(execution_id),"
    " text TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " delivered_ms INTEGER);"
    "CREATE INDEX notifications_user ON notifications(user_id, delivered_ms);",

    /* 4: console sign-in tokens. Only the token's sha256 is kept, so a copy
     * of the store does not let anyone sign in. */
    "CREATE TABLE console_tokens ("
    " token_sha256 TEXT PRIMARY KEY,"
    " user_id TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " last_used_ms INTEGER);"
    "CREATE INDEX requests_user ON requests(user_id, created_ms);",

    /* 5: a request's audit trail, shown in the console's history. */
    "CREATE INDEX audit_log_request ON audit_log(request_id, seq);",

    /* 6: team chat. chat_events holds one row per platform event that was
     * handled (the first process to insert it handles it; redeliveries and
     * other instances see the row). chat_posts: where each approval's card
     * is shown, so every process can update it in place. */
    "CREATE TABLE chat_events ("
    " event_key TEXT PRIMARY KEY,"
    " claimed_ms INTEGER NOT NULL);"
    "CREATE INDEX chat_events_age ON chat_events(claimed_ms);"
    "CREATE TABLE chat_posts ("
    " surface TEXT NOT NULL,"
    " channel TEXT NOT NULL,"
    " post TEXT NOT NULL,"
    " approval_id TEXT NOT NULL,"
    " thread TEXT,"
    " created_ms INTEGER NOT NULL,"
    " PRIMARY KEY (surface, channel, post));"
    "CREATE INDEX chat_posts_approval ON chat_posts(approval_id);",

    /* 7: the approvals of an execution (PostgreSQL announces an
     * execution's changes under its approvals' ids; kept the same here). */
    "CREATE INDEX approvals_execution ON approvals(execution_id);",
};

#define SQ_MIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))
_Static_assert(sizeof migrations / sizeof migrations[0] == BT_STORE_SCHEMA_VERSION,
               "one migration per schema version");

/* ---- fixed statements ------------------------------------------------------ */

enum sq_stmt {
    S_BEGIN,
    S_BEGIN_IMMEDIATE,
    S_COMMIT,
    S_ROLLBACK,
    S_MIGRATION_DONE,
    S_ASSETS_CLEAR,
    S_ASSET_INSERT,
    S_REQUEST_ADD,
    S_DECISION_ADD,
    S_PLAN_ADD,
    S_PLAN_GET,
    S_EXECUTION_ADD,
    S_EXECUTION_SET,
    S_EXECUTION_GET,
    S_STEP_ADD,
    S_STEP_SET,
    S_STEPS_GET,
    S_APPROVAL_ADD,
    S_APPROVAL_GET,
    S_APPROVALS_PENDING,
    S_APPROVAL_LOCK,
    S_APPROVAL_DECISIONS,
    S_APPROVAL_DECIDE,
    S_APPROVAL_STATE,
    S_APPROVAL_MARK,
    S_APPROVALS_OPEN,
    S_APPROVALS_UNSTARTED,
    S_SETTING_INSERT,
    S_SETTING_GET,
    S_AUDIT_LAST,
    S_AUDIT_INSERT,
    S_AUDIT_LIST,
    S_AUDIT_OF,
    S_AUDIT_BATCH,
    S__COUNT
};

#define SQ_APPROVAL_COLS                                                                           \
    "approval_id, plan_id, execution_id, level, requirement_json, state, expires_ms, created_ms"
#define SQ_AUDIT_COLS "seq, ts_ms, request_id, actor, event, detail_json, prev_hash, hash"

static const char *const stmt_sql[S__COUNT] = {
    [S_BEGIN] = "BEGIN",
    [S_BEGIN_IMMEDIATE] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_MIGRATION_DONE] = "INSERT INTO schema_migrations(version, applied_ms) VALUES (?, ?)",
    [S_ASSETS_CLEAR] = "DELETE FROM assets",
    /* Column order: name, then bt_store__asset_text_fields in its order, then
     * cpu, ram_gb, tags, doc. */
    [S_ASSET_INSERT] = "INSERT INTO assets(name, hostname, ip, os, os_version, role, environment,"
                       " status, datacenter, connection, cpu, ram_gb, tags, doc)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    [S_REQUEST_ADD] = "INSERT INTO requests(request_id, user_id, channel, text, created_ms)"
                      " VALUES (?, ?, ?, ?, ?)",
    [S_DECISION_ADD] = "INSERT INTO decisions(request_id, decision_json, created_ms)"
                       " VALUES (?, ?, ?)",
    [S_PLAN_ADD] = "INSERT INTO plans(plan_id, request_id, canonical_json, sha256, risk,"
                   " approval_level, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
    [S_PLAN_GET] = "SELECT plan_id, request_id, canonical_json, sha256, risk, approval_level,"
                   " created_ms FROM plans WHERE plan_id = ?",
    [S_EXECUTION_ADD] = "INSERT INTO executions(execution_id, plan_id, state, created_ms,"
                        " updated_ms) VALUES (?, ?, ?, ?, ?)",
    [S_EXECUTION_SET] = "UPDATE executions SET state = ?, result_json = coalesce(?, result_json),"
                        " updated_ms = ? WHERE execution_id = ?",
    [S_EXECUTION_GET] = "SELECT execution_id, plan_id, state, result_json, created_ms, updated_ms"
                        " FROM executions WHERE execution_id = ?",
    [S_STEP_ADD] = "INSERT INTO steps(execution_id, step_index, tool, state, created_ms,"
                   " updated_ms) VALUES (?, ?, ?, ?, ?, ?)",
    [S_STEP_SET] = "UPDATE steps SET state = ?, result_json = coalesce(?, result_json),"
                   " updated_ms = ? WHERE execution_id = ? AND step_index = ?",
    [S_STEPS_GET] = "SELECT step_index, tool, state, result_json, updated_ms FROM steps"
                    " WHERE execution_id = ? ORDER BY step_index",
    [S_APPROVAL_ADD] = "INSERT INTO approvals(approval_id, plan_id, execution_id, level,"
                       " requirement_json, state, expires_ms, created_ms, updated_ms)"
                       " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
    [S_APPROVAL_GET] = "SELECT " SQ_APPROVAL_COLS " FROM approvals WHERE approval_id = ?",
    [S_APPROVALS_PENDING] = "SELECT " SQ_APPROVAL_COLS " FROM approvals WHERE state = 'pending'"
                            " ORDER BY created_ms, rowid LIMIT ?",
    /* approval dialogue: SQ_APPROVAL_COLS first, so approval_row reads it. */
    [S_APPROVAL_LOCK] = "SELECT " SQ_APPROVAL_COLS ", updated_ms, reminded_ms, escalated_ms"
                        " FROM approvals WHERE approval_id = ?",
    [S_APPROVAL_DECISIONS] = "SELECT user_id, decision, step, via, ts_ms FROM approval_decisions"
                             " WHERE approval_id = ? ORDER BY ts_ms, rowid",
    [S_APPROVAL_DECIDE] = "INSERT INTO approval_decisions(approval_id, user_id, decision, step,"
                          " via, ts_ms) VALUES (?, ?, ?, ?, ?, ?)",
    [S_APPROVAL_STATE] = "UPDATE approvals SET state = ?, updated_ms = ? WHERE approval_id = ?",
    /* ?1 mark reminded, ?2 now, ?3 mark escalated, ?4 approval id; a mark
     * already set keeps its time. */
    [S_APPROVAL_MARK] = "UPDATE approvals SET"
                        " reminded_ms = CASE WHEN ?1 THEN coalesce(reminded_ms, ?2)"
                        " ELSE reminded_ms END,"
                        " escalated_ms = CASE WHEN ?3 THEN coalesce(escalated_ms, ?2)"
                        " ELSE escalated_ms END,"
                        " updated_ms = ?2 WHERE approval_id = ?4",
    [S_APPROVALS_OPEN] = "SELECT " SQ_APPROVAL_COLS " FROM approvals"
                         " WHERE state IN ('pending', 'releasing')"
                         " ORDER BY created_ms, rowid LIMIT ?",
    /* Approved whole plans (levels 1 and 2) whose execution never left
     * pending_approval, decided before ?1: the decider died before starting
     * them. The prefix on the columns keeps them the approval's. */
    [S_APPROVALS_UNSTARTED] =
        "SELECT a.approval_id, a.plan_id, a.execution_id, a.level, a.requirement_json, a.state,"
        " a.expires_ms, a.created_ms FROM approvals a"
        " JOIN executions e ON e.execution_id = a.execution_id"
        " WHERE a.state = 'approved' AND a.level < 3 AND e.state = 'pending_approval'"
        " AND NOT EXISTS (SELECT 1 FROM approval_decisions d WHERE d.approval_id = a.approval_id"
        " AND d.ts_ms >= ?1)"
        " ORDER BY a.created_ms, a.rowid LIMIT ?2",
    [S_SETTING_INSERT] = "INSERT OR IGNORE INTO settings(key, value, created_ms) VALUES (?, ?, ?)",
    [S_SETTING_GET] = "SELECT value FROM settings WHERE key = ?",
    [S_AUDIT_LAST] = "SELECT seq, ts_ms, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
    [S_AUDIT_INSERT] = "INSERT INTO audit_log(" SQ_AUDIT_COLS ") VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    [S_AUDIT_LIST] = "SELECT " SQ_AUDIT_COLS " FROM audit_log WHERE ts_ms >= ?"
                     " ORDER BY seq LIMIT ?",
    [S_AUDIT_OF] = "SELECT " SQ_AUDIT_COLS " FROM audit_log WHERE request_id = ?"
                   " ORDER BY seq LIMIT ?",
    [S_AUDIT_BATCH] = "SELECT " SQ_AUDIT_COLS " FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?",
};

/* ---- asset filter fragments ------------------------------------------------
 * One fragment per filter field (enum bt_store__af order), each with its
 * number of '?' placeholders; every placeholder of a text fragment binds the
 * same value. Columns are COLLATE NOCASE, so '=' is case-insensitive; the
 * functions (instr, lower) are given lowercase operands explicitly. instr,
 * not LIKE, so '%' and '_' in a value are plain characters. */
static const struct {
    const char *sql;
    int binds;
} af_sql[BT_STORE__AF_COUNT] = {
    [BT_STORE__AF_OS] = {"os = ?", 1},
    [BT_STORE__AF_ENVIRONMENT] = {"environment = ?", 1},
    [BT_STORE__AF_ROLE] = {"role = ?", 1},
    [BT_STORE__AF_STATUS] = {"status = ?", 1},
    [BT_STORE__AF_DATACENTER] = {"datacenter = ?", 1},
    [BT_STORE__AF_CONNECTION] = {"connection = ?", 1},
    [BT_STORE__AF_TAG] = {"EXISTS (SELECT 1 FROM json_each(assets.tags) AS t"
                          " WHERE t.value = ? COLLATE NOCASE)",
                          1},
    [BT_STORE__AF_NAME_CONTAINS] = {"(instr(lower(name), lower(?)) > 0"
                                    " OR instr(lower(hostname), lower(?)) > 0)",
                                    2},
    [BT_STORE__AF_IP] = {"ip = ?", 1},
    [BT_STORE__AF_IP_PREFIX] = {"instr(lower(ip), lower(?)) = 1", 1},
    [BT_STORE__AF_HOST] = {"(name = ? OR hostname = ? OR ip = ?)", 3},
    [BT_STORE__AF_MIN_RAM_GB] = {"ram_gb >= ?", 1},
    [BT_STORE__AF_MAX_RAM_GB] = {"ram_gb <= ?", 1},
    [BT_STORE__AF_MIN_CPU] = {"cpu >= ?", 1},
};

/* Set in a cache key for the count statement (filter bits are below it). */
#define SQ_DYN_COUNT (1u << 31)
#define SQ_DYN_BREAKDOWN (1u << 30)
/* Slots for the execution engine's cached statements. */
#define SQ_EXEC_STMTS 40

struct sq {
    sqlite3 *db;
    char *path; /* as given, for messages */
    int version;
    sqlite3_stmt *stmt[S__COUNT];
    struct {
        uint32_t key;
        sqlite3_stmt *stmt;
    } dyn[SQ_DYN_SLOTS];
    unsigned dyn_next;
    /* The execution engine's statements (enum sx_stmt, further down). */
    sqlite3_stmt *exec_stmt[SQ_EXEC_STMTS];
    /* Inside bt_store_batch_begin/end: the operations' own transactions
     * become savepoints of the batch's, so they commit with it. */
    bool in_batch;
};

/* ---- errors -------------------------------------------------------------- */

/* The one place SQLite result codes become bt_err. */
static enum bt_err sq_code(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
        return BT_OK;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return BT_ETIMEOUT;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return BT_ECORRUPT;
    case SQLITE_CONSTRAINT:
        return BT_EINVAL;
    case SQLITE_NOMEM:
        return BT_ENOMEM;
    default:
        return BT_ESTORE;
    }
}

/* Fill err with "PATH: what: sqlite's message" and translate rc. Call it
 * before anything else touches the connection (a ROLLBACK would replace the
 * message). */
__attribute__((format(printf, 5, 6))) static enum bt_err
sq_fail(struct sq *s, int rc, char *err, size_t errlen, const char *fmt, ...)
{
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    const char *msg = s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc);
    int prim = rc & 0xff;
    if (prim == SQLITE_BUSY || prim == SQLITE_LOCKED)
        bt_fmt(err, errlen, "%s: %s: the database stayed locked for %d ms (%s)", s->path, what,
               SQ_BUSY_TIMEOUT_MS, msg);
    else if (rc == SQLITE_CONSTRAINT_FOREIGNKEY)
        bt_fmt(err, errlen, "%s: %s: it refers to something that is not recorded (%s)", s->path,
               what, msg);
    else if (prim == SQLITE_IOERR)
        bt_fmt(err, errlen, "%s: %s: %s (SQLite code %d)", s->path, what, msg, rc);
    else
        bt_fmt(err, errlen, "%s: %s: %s", s->path, what, msg);
    return sq_code(rc);
}

/* ---- statements ------------------------------------------------------------ */

static enum bt_err prep(struct sq *s, enum sq_stmt id, sqlite3_stmt **out, char *err, size_t errlen)
{
    if (!s->stmt[id]) {
        int rc = sqlite3_prepare_v3(s->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                                    &s->stmt[id], NULL);
        if (rc != SQLITE_OK) {
            s->stmt[id] = NULL;
            *out = NULL;
            return sq_fail(s, rc, err, errlen, "prepare statement %d", (int)id);
        }
    }
    *out = s->stmt[id];
    return BT_OK;
}

/* Reset a cached statement for its next use (and drop references to the
 * caller's strings bound with SQLITE_STATIC). */
static void done(sqlite3_stmt *st)
{
    if (st) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    }
}

/* Bind a string (NULL binds SQL NULL). SQLITE_STATIC: the caller's string
 * outlives the step, and done() clears the binding afterwards. */
static int bind_text(sqlite3_stmt *st, int i, const char *s)
{
    return s ? sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

/* Run a statement that returns no rows. */
static enum bt_err step_done(struct sq *s, sqlite3_stmt *st, char *err, size_t errlen,
                             const char *what)
{
    int rc = sqlite3_step(st);
    enum bt_err e = BT_OK;
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "%s", what);
    done(st);
    return e;
}

static enum bt_err run(struct sq *s, enum sq_stmt id, char *err, size_t errlen, const char *what)
{
    sqlite3_stmt *st;
    enum bt_err e = prep(s, id, &st, err, errlen);
    return e != BT_OK ? e : step_done(s, st, err, errlen, what);
}

/* Run a fixed statement that needs no caching (savepoints). */
static enum bt_err exec_fixed(struct sq *s, const char *sql, char *err, size_t errlen)
{
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        return BT_OK;
    bt_fmt(err, errlen, "%s: %s: %s", s->path, sql, sqlite3_errmsg(s->db));
    return sq_code(rc);
}

static enum bt_err tx_begin(struct sq *s, bool immediate, char *err, size_t errlen)
{
    /* In a batch the write lock is already held: a savepoint gives the
     * operation its own all-or-nothing part of the batch. */
    if (s->in_batch)
        return exec_fixed(s, "SAVEPOINT bt_op", err, errlen);
    return run(s, immediate ? S_BEGIN_IMMEDIATE : S_BEGIN, err, errlen, "begin transaction");
}

static enum bt_err tx_commit(struct sq *s, char *err, size_t errlen)
{
    if (s->in_batch)
        return exec_fixed(s, "RELEASE bt_op", err, errlen);
    return run(s, S_COMMIT, err, errlen, "commit");
}

/* Roll back if a transaction is open; keeps err as it is (the first failure
 * is the one worth reporting). */
static void tx_rollback(struct sq *s)
{
    if (sqlite3_get_autocommit(s->db))
        return;
    char ignored[BT_ERRLEN];
    if (s->in_batch) {
        exec_fixed(s, "ROLLBACK TO bt_op", ignored, sizeof ignored);
        exec_fixed(s, "RELEASE bt_op", ignored, sizeof ignored);
        return;
    }
    run(s, S_ROLLBACK, ignored, sizeof ignored, "rollback");
}

/* bt_store_batch_begin/end for SQLite: one BEGIN IMMEDIATE around them. */
static enum bt_err sq_batch_begin(void *be, char *err, size_t errlen)
{
    struct sq *s = be;
    if (s->in_batch || !sqlite3_get_autocommit(s->db)) {
        bt_fmt(err, errlen, "%s: a batch is already open", s->path);
        return BT_EINVAL;
    }
    enum bt_err e = run(s, S_BEGIN_IMMEDIATE, err, errlen, "begin batch");
    if (e == BT_OK)
        s->in_batch = true;
    return e;
}

static enum bt_err sq_batch_end(void *be, bool commit, char *err, size_t errlen)
{
    struct sq *s = be;
    if (!s->in_batch) {
        bt_fmt(err, errlen, "%s: no batch is open", s->path);
        return BT_EINVAL;
    }
    s->in_batch = false;
    enum bt_err e = BT_OK;
    if (commit)
        e = run(s, S_COMMIT, err, errlen, "commit batch");
    if (!commit || e != BT_OK)
        tx_rollback(s);
    return e;
}

/* Commit, or roll back when it fails. */
static enum bt_err tx_end(struct sq *s, enum bt_err e, char *err, size_t errlen)
{
    if (e == BT_OK)
        e = tx_commit(s, err, errlen);
    if (e != BT_OK)
        tx_rollback(s);
    return e;
}

/* Column helpers. col_str: JSON string or null for a text column; sets *bad
 * on text that is not UTF-8 (only an outside edit can put it there). */
static json_t *col_str(sqlite3_stmt *st, int i, bool *bad)
{
    const char *t = (const char *)sqlite3_column_text(st, i);
    if (!t)
        return json_null();
    json_t *j = json_stringn(t, (size_t)sqlite3_column_bytes(st, i));
    if (!j) {
        *bad = true;
        return json_null();
    }
    return j;
}

/* A JSON column parsed (SQL NULL is JSON null); *bad on junk. */
static json_t *col_json(sqlite3_stmt *st, int i, bool *bad)
{
    const char *t = (const char *)sqlite3_column_text(st, i);
    if (!t)
        return json_null();
    json_error_t jerr;
    json_t *j =
        json_loadb(t, (size_t)sqlite3_column_bytes(st, i), JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!j) {
        *bad = true;
        return json_null();
    }
    return j;
}

/* A string copy of a text column, or NULL for SQL NULL. */
static char *col_dup(sqlite3_stmt *st, int i)
{
    const char *t = (const char *)sqlite3_column_text(st, i);
    return t ? bt_strndup(t, (size_t)sqlite3_column_bytes(st, i)) : NULL;
}

/* ---- open ---------------------------------------------------------------- */

/* mkdir -p for the directories above path (mode 0750), then create the file
 * itself (0640) if it is missing. Both modes are still masked by umask. */
static enum bt_err make_file(const char *path, char *err, size_t errlen)
{
    char *p = bt_strdup(path);
    for (char *q = p + 1; *q; q++) {
        if (*q != '/' || q[-1] == '/')
            continue;
        *q = '\0';
        if (mkdir(p, 0750) != 0 && errno != EEXIST) {
            int saved = errno;
            struct stat sb;
            if (stat(p, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
                bt_fmt(err, errlen, "%s: cannot create directory %s: %s", path, p, strerror(saved));
                free(p);
                return BT_EIO;
            }
        }
        *q = '/';
    }
    free(p);
    /* Only a file that does not exist yet is touched here: closing any
     * descriptor of a database file drops every POSIX lock this process
     * holds on it, including those of the store's other open connections
     * (the threads of `baton serve`). A new file cannot be open anywhere. */
    struct stat sb;
    if (stat(path, &sb) == 0) {
        if (S_ISREG(sb.st_mode))
            return BT_OK;
        bt_fmt(err, errlen, "%s: is not a regular file", path);
        return BT_EIO;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (fd < 0 && errno != EEXIST) {
        bt_fmt(err, errlen, "%s: cannot open for writing: %s", path, strerror(errno));
        return BT_EIO;
    }
    if (fd >= 0)
        close(fd);
    return BT_OK;
}

/* Run a constant one-integer query (only ever our own literal SQL). */
static int query_int(struct sq *s, const char *sql, long long *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v3(s->db, sql, -1, 0, &st, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *out = sqlite3_column_int64(st, 0);
            rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(st);
    return rc;
}

/* "PATH: not a baton store or damaged: why" for anything SQLite cannot read
 * as a database, or another failure with SQLite's message. */
static enum bt_err open_fail(struct sq *s, int rc, char *err, size_t errlen, const char *what)
{
    int prim = rc & 0xff;
    if (prim == SQLITE_CORRUPT || prim == SQLITE_NOTADB) {
        bt_fmt(err, errlen, "%s: not a baton store or damaged: %s", s->path, sqlite3_errmsg(s->db));
        return BT_ECORRUPT;
    }
    return sq_fail(s, rc, err, errlen, "%s", what);
}

/* The schema version in the file: 0 for an empty database (to be
 * initialised), the highest applied migration for a baton store. Anything
 * else (another program's database, a damaged baton store) is refused, so
 * baton never writes into a file it does not own. */
static enum bt_err read_version(struct sq *s, int *version, char *err, size_t errlen)
{
    long long app = 0, objects = 0, v = 0;
    int rc = query_int(s, "SELECT count(*) FROM sqlite_schema", &objects);
    if (rc == SQLITE_OK)
        rc = query_int(s, "PRAGMA application_id", &app);
    if (rc != SQLITE_OK)
        return open_fail(s, rc, err, errlen, "read the schema");
    if (app == 0 && objects == 0) {
        *version = 0;
        return BT_OK;
    }
    if (app != SQ_APP_ID) {
        if (app != 0)
            bt_fmt(err, errlen,
                   "%s: not a baton store: it belongs to another program (application_id "
                   "0x%08llx); refusing to write into it",
                   s->path, (unsigned long long)app & 0xffffffffu);
        else
            bt_fmt(err, errlen,
                   "%s: not a baton store: it holds another program's tables and no baton "
                   "schema; refusing to write into it",
                   s->path);
        return BT_ECORRUPT;
    }
    rc = query_int(s, "SELECT coalesce(max(version), 0) FROM schema_migrations", &v);
    if (rc != SQLITE_OK) {
        if ((rc & 0xff) == SQLITE_ERROR) {
            bt_fmt(err, errlen, "%s: not a baton store or damaged: %s", s->path,
                   sqlite3_errmsg(s->db));
            return BT_ECORRUPT;
        }
        return open_fail(s, rc, err, errlen, "read the schema version");
    }
    if (v > BT_STORE_SCHEMA_VERSION) {
        bt_fmt(err, errlen,
               "%s: schema version %lld is newer than this baton supports (%d); upgrade baton",
               s->path, v, BT_STORE_SCHEMA_VERSION);
        return BT_EVERSION;
    }
    if (v < 1) {
        bt_fmt(err, errlen, "%s: not a baton store or damaged: no schema version recorded",
               s->path);
        return BT_ECORRUPT;
    }
    *version = (int)v;
    return BT_OK;
}

/* PRAGMA quick_check(1): the cheaper integrity check (no index content
 * cross-checks); its first problem, if any, is the message. */
static enum bt_err quick_check(struct sq *s, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v3(s->db, "PRAGMA quick_check(1)", -1, 0, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        enum bt_err e = open_fail(s, rc, err, errlen, "check the file");
        sqlite3_finalize(st);
        return e;
    }
    const char *res = (const char *)sqlite3_column_text(st, 0);
    enum bt_err e = BT_OK;
    if (!res || strcmp(res, "ok") != 0) {
        char msg[256];
        bt_strlcpy(msg, res ? res : "integrity check failed", sizeof msg);
        for (char *c = msg; *c; c++)
            if (*c == '\n')
                *c = ' ';
        bt_fmt(err, errlen, "%s: not a baton store or damaged: %s", s->path, msg);
        e = BT_ECORRUPT;
    }
    sqlite3_finalize(st);
    return e;
}

static enum bt_err set_pragmas(struct sq *s, char *err, size_t errlen)
{
    /* journal_mode answers with the mode now in force: "wal", or "memory"
     * for an in-memory database (which cannot use WAL). */
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v3(s->db, "PRAGMA journal_mode=WAL", -1, 0, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        enum bt_err e = sq_fail(s, rc, err, errlen, "switch to WAL");
        sqlite3_finalize(st);
        return e;
    }
    const char *mode = (const char *)sqlite3_column_text(st, 0);
    bool ok = mode && (strcmp(mode, "wal") == 0 || strcmp(mode, "memory") == 0);
    if (!ok)
        bt_fmt(err, errlen, "%s: cannot use WAL (journal mode stays %s)", s->path,
               mode ? mode : "unknown");
    sqlite3_finalize(st);
    if (!ok)
        return BT_ESTORE;
    rc = sqlite3_exec(s->db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return sq_fail(s, rc, err, errlen, "set synchronous");
    /* Checkpoints belong to bt_store_maintain (serve and worker call it
     * every 5 s, off the request path): SQLite's own automatic checkpoint
     * runs inside the COMMIT that crosses the threshold and syncs the
     * database file there, which made one request in a hundred wait 20-60
     * ms. It stays on as a safety net far above what 5 s of traffic
     * writes; a WAL reset truncates the file back to journal_size_limit. */
    rc = sqlite3_exec(
        s->db,
        "PRAGMA wal_autocheckpoint=" SQ_STR(
            SQ_AUTOCHECKPOINT_PAGES) "; PRAGMA journal_size_limit=" SQ_STR(SQ_WAL_KEEP_BYTES),
        NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return sq_fail(s, rc, err, errlen, "set the checkpoint policy");
    return BT_OK;
}

/* Apply migrations version+1 .. BT_STORE_SCHEMA_VERSION, one transaction
 * each. The version is read again inside each transaction: another process
 * may have migrated between our first look and our write lock. */
static enum bt_err migrate(struct sq *s, char *err, size_t errlen)
{
    for (int v = s->version + 1; v <= SQ_MIGRATIONS; v++) {
        enum bt_err e = tx_begin(s, true, err, errlen);
        if (e != BT_OK)
            return e;
        int now = 0;
        e = read_version(s, &now, err, errlen);
        if (e == BT_OK && now < v) {
            /* sqlite3_exec runs the several statements of one migration;
             * the text is a constant of this file, never caller input. */
            char *msg = NULL;
            int rc = sqlite3_exec(s->db, migrations[v - 1], NULL, NULL, &msg);
            if (rc != SQLITE_OK) {
                bt_fmt(err, errlen, "%s: migration %d failed: %s", s->path, v,
                       msg ? msg : sqlite3_errstr(rc));
                e = sq_code(rc);
                if (e == BT_OK || e == BT_EINVAL)
                    e = BT_ESTORE;
            }
            sqlite3_free(msg);
            sqlite3_stmt *st = NULL;
            if (e == BT_OK && (e = prep(s, S_MIGRATION_DONE, &st, err, errlen)) == BT_OK) {
                sqlite3_bind_int(st, 1, v);
                sqlite3_bind_int64(st, 2, bt_wall_ms());
                e = step_done(s, st, err, errlen, "record migration");
            }
        }
        e = tx_end(s, e, err, errlen);
        if (e != BT_OK)
            return e;
        s->version = v > now ? v : now;
    }
    return BT_OK;
}

static void sq_close(void *be)
{
    struct sq *s = be;
    if (!s)
        return;
    for (int i = 0; i < S__COUNT; i++)
        sqlite3_finalize(s->stmt[i]);
    for (int i = 0; i < SQ_DYN_SLOTS; i++)
        sqlite3_finalize(s->dyn[i].stmt);
    for (int i = 0; i < SQ_EXEC_STMTS; i++)
        sqlite3_finalize(s->exec_stmt[i]);
    sqlite3_close_v2(s->db);
    free(s->path);
    free(s);
}

/* Waiting for the write lock. SQLite's own busy timeout sleeps 1, 2, 5,
 * 10 ms ... between tries, far longer than the few hundred microseconds
 * another thread of `baton serve` holds the lock for, so requests queued
 * behind each other for milliseconds. This waits 50 us, doubling to 2 ms,
 * until SQ_BUSY_TIMEOUT_MS have passed in all. */
static int busy_wait(void *ctx, int tries)
{
    (void)ctx;
    static const long step_us[] = {50, 100, 200, 400, 800, 1600, 2000};
    size_t last = sizeof step_us / sizeof step_us[0] - 1;
    long long waited = 0;
    for (int i = 0; i < tries; i++)
        waited += step_us[(size_t)i < last ? (size_t)i : last];
    if (waited >= (long long)SQ_BUSY_TIMEOUT_MS * 1000)
        return 0;
    long us = step_us[(size_t)tries < last ? (size_t)tries : last];
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
    return 1;
}

static enum bt_err sq_open(const char *path, void **be, char *err, size_t errlen)
{
    *be = NULL;
    bool memory = strcmp(path, ":memory:") == 0;
    if (!memory) {
        enum bt_err e = make_file(path, err, errlen);
        if (e != BT_OK)
            return e;
    }
    struct sq *s = bt_calloc(1, sizeof *s);
    s->path = bt_strdup(path);
    /* NOMUTEX: a handle is used by one thread at a time (store.h). */
    int rc = sqlite3_open_v2(path, &s->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX |
                                 SQLITE_OPEN_EXRESCODE,
                             NULL);
    enum bt_err e = BT_OK;
    if (rc != SQLITE_OK) {
        if (!s->db) {
            bt_fmt(err, errlen, "%s: cannot open: %s", path, sqlite3_errstr(rc));
            free(s->path);
            free(s);
            return BT_ENOMEM;
        }
        e = open_fail(s, rc, err, errlen, "open");
    }
    if (e == BT_OK) {
        sqlite3_extended_result_codes(s->db, 1);
        sqlite3_busy_handler(s->db, busy_wait, NULL);
        rc = sqlite3_exec(s->db, "PRAGMA foreign_keys=ON", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            e = open_fail(s, rc, err, errlen, "enable foreign keys");
    }
    /* Read-only checks first: a refused file is left untouched. */
    if (e == BT_OK)
        e = quick_check(s, err, errlen);
    if (e == BT_OK)
        e = read_version(s, &s->version, err, errlen);
    if (e == BT_OK)
        e = set_pragmas(s, err, errlen);
    if (e == BT_OK)
        e = migrate(s, err, errlen);
    if (e != BT_OK) {
        sq_close(s);
        return e;
    }
    *be = s;
    return BT_OK;
}

static int sq_schema_version(void *be)
{
    return ((struct sq *)be)->version;
}

/* ---- assets -------------------------------------------------------------- */

static enum bt_err sq_assets_replace(void *be, const json_t *assets, char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st = NULL;
    enum bt_err e = tx_begin(s, true, err, errlen);
    if (e != BT_OK)
        return e;
    e = run(s, S_ASSETS_CLEAR, err, errlen, "clear the inventory");
    if (e == BT_OK)
        e = prep(s, S_ASSET_INSERT, &st, err, errlen);
    for (size_t i = 0; e == BT_OK && i < json_array_size(assets); i++) {
        const json_t *a = json_array_get(assets, i);
        const char *name = json_string_value(json_object_get(a, "name"));
        const json_t *tags = json_object_get(a, "tags");
        char *tags_text = json_is_array(tags) ? bt_json_canonical(tags) : bt_strdup("[]");
        char *doc = bt_json_canonical(a);
        if (!tags_text || !doc) {
            bt_fmt(err, errlen, "%s: asset '%.64s' cannot be encoded as JSON", s->path, name);
            e = BT_EINVAL;
        } else {
            bind_text(st, 1, name);
            for (int f = 0; f < BT_STORE__ASSET_TEXT_FIELDS; f++)
                bind_text(st, 2 + f,
                          json_string_value(json_object_get(a, bt_store__asset_text_fields[f])));
            int col = 2 + BT_STORE__ASSET_TEXT_FIELDS;
            static const char *const ints[] = {"cpu", "ram_gb"};
            for (int k = 0; k < 2; k++, col++) {
                const json_t *v = json_object_get(a, ints[k]);
                if (json_is_integer(v))
                    sqlite3_bind_int64(st, col, json_integer_value(v));
                else
                    sqlite3_bind_null(st, col);
            }
            bind_text(st, col++, tags_text);
            bind_text(st, col, doc);
            int rc = sqlite3_step(st);
            if (rc != SQLITE_DONE)
                e = sq_fail(s, rc, err, errlen, "add asset '%.64s'", name);
            done(st);
        }
        free(tags_text);
        free(doc);
    }
    return tx_end(s, e, err, errlen);
}

/* The cached statement for this combination of filter fields (and kind),
 * assembled from af_sql on first use. Slots are reused round-robin. */
/* What an asset statement returns: the documents, their number, or their
 * number per (os, role). */
enum assets_shape { AS_ROWS = 0, AS_COUNT = 1, AS_BREAKDOWN = 2 };

static enum bt_err assets_stmt(struct sq *s, const struct bt_store__asset_filter *f,
                               enum assets_shape shape, sqlite3_stmt **out, char *err,
                               size_t errlen)
{
    bool count = shape == AS_COUNT;
    uint32_t key =
        f->present | (count ? SQ_DYN_COUNT : 0) | (shape == AS_BREAKDOWN ? SQ_DYN_BREAKDOWN : 0);
    for (int i = 0; i < SQ_DYN_SLOTS; i++) {
        if (s->dyn[i].stmt && s->dyn[i].key == key) {
            *out = s->dyn[i].stmt;
            return BT_OK;
        }
    }
    bt_buf sql = BT_BUF_INIT(8192);
    bt_buf_puts(&sql, shape == AS_BREAKDOWN ? "SELECT os, role, count(*) FROM assets"
                      : count               ? "SELECT count(*) FROM assets"
                                            : "SELECT doc FROM assets");
    const char *sep = " WHERE ";
    for (int k = 0; k < BT_STORE__AF_COUNT; k++) {
        if (!(f->present & (1u << k)))
            continue;
        bt_buf_puts(&sql, sep);
        bt_buf_puts(&sql, af_sql[k].sql);
        sep = " AND ";
    }
    if (shape == AS_BREAKDOWN)
        bt_buf_puts(&sql, " GROUP BY os, role ORDER BY count(*) DESC, os, role");
    else if (!count)
        bt_buf_puts(&sql, " ORDER BY name LIMIT ? OFFSET ?");
    sqlite3_stmt *st = NULL;
    int rc =
        sqlite3_prepare_v3(s->db, sql.data, (int)sql.len, SQLITE_PREPARE_PERSISTENT, &st, NULL);
    bt_buf_free(&sql);
    if (rc != SQLITE_OK)
        return sq_fail(s, rc, err, errlen, "prepare asset query");
    unsigned slot = s->dyn_next++ % SQ_DYN_SLOTS;
    sqlite3_finalize(s->dyn[slot].stmt);
    s->dyn[slot].key = key;
    s->dyn[slot].stmt = st;
    *out = st;
    return BT_OK;
}

/* Bind the filter values in fragment order; returns the next index. */
static int assets_bind(sqlite3_stmt *st, const struct bt_store__asset_filter *f)
{
    int i = 1;
    for (int k = 0; k < BT_STORE__AF_COUNT; k++) {
        if (!(f->present & (1u << k)))
            continue;
        for (int b = 0; b < af_sql[k].binds; b++, i++) {
            if (k >= BT_STORE__AF_MIN_RAM_GB)
                sqlite3_bind_int64(st, i, f->num[k]);
            else
                bind_text(st, i, f->text[k]);
        }
    }
    return i;
}

static enum bt_err sq_assets_query(void *be, const struct bt_store__asset_filter *f, json_t **out,
                                   char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = assets_stmt(s, f, AS_ROWS, &st, err, errlen);
    if (e != BT_OK)
        return e;
    int i = assets_bind(st, f);
    sqlite3_bind_int64(st, i, f->limit);
    sqlite3_bind_int64(st, i + 1, f->offset);
    json_t *arr = json_array();
    int rc = SQLITE_DONE;
    while (e == BT_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        bool bad = false;
        json_t *doc = col_json(st, 0, &bad);
        if (bad || !json_is_object(doc)) {
            bt_fmt(err, errlen, "%s: an asset's stored JSON is damaged", s->path);
            e = BT_ECORRUPT;
            json_decref(doc);
            break;
        }
        json_array_append_new(arr, doc);
    }
    if (e == BT_OK && rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "query assets");
    done(st);
    if (e != BT_OK) {
        json_decref(arr);
        return e;
    }
    *out = arr;
    return BT_OK;
}

static enum bt_err sq_assets_count(void *be, const struct bt_store__asset_filter *f,
                                   long long *count, char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = assets_stmt(s, f, AS_COUNT, &st, err, errlen);
    if (e != BT_OK)
        return e;
    assets_bind(st, f);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *count = sqlite3_column_int64(st, 0);
    else
        e = sq_fail(s, rc, err, errlen, "count assets");
    done(st);
    return e;
}

static enum bt_err sq_assets_breakdown(void *be, const struct bt_store__asset_filter *f,
                                       json_t **out, char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = assets_stmt(s, f, AS_BREAKDOWN, &st, err, errlen);
    if (e != BT_OK)
        return e;
    assets_bind(st, f);
    json_t *groups = json_array();
    int rc;
    /* One row per (os, role) pair: bounded by the inventory's kinds. */
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *os = (const char *)sqlite3_column_text(st, 0);
        const char *role = (const char *)sqlite3_column_text(st, 1);
        json_t *g =
            json_pack("{s:s, s:s, s:I}", "os", os ? os : "unknown", "role", role ? role : "unknown",
                      "count", (json_int_t)sqlite3_column_int64(st, 2));
        if (g)
            json_array_append_new(groups, g);
    }
    if (rc != SQLITE_DONE) {
        e = sq_fail(s, rc, err, errlen, "count assets by kind");
        json_decref(groups);
        groups = NULL;
    }
    done(st);
    *out = groups;
    return e;
}

/* ---- requests, decisions, plans ------------------------------------------ */

static enum bt_err sq_request_add(void *be, const char *request_id, const char *user,
                                  const char *channel, const char *text, char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = prep(s, S_REQUEST_ADD, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, request_id);
    bind_text(st, 2, user);
    bind_text(st, 3, channel);
    bind_text(st, 4, text);
    sqlite3_bind_int64(st, 5, bt_wall_ms());
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "add request '%.64s'", request_id);
    done(st);
    return e;
}

static enum bt_err sq_decision_add(void *be, const char *request_id, const char *decision_json,
                                   char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = prep(s, S_DECISION_ADD, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, request_id);
    bind_text(st, 2, decision_json);
    sqlite3_bind_int64(st, 3, bt_wall_ms());
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "add decision for request '%.64s'", request_id);
    done(st);
    return e;
}

static enum bt_err sq_plan_add(void *be, const char *plan_id, const char *request_id,
                               const char *canonical_json, const char *sha256, const char *risk,
                               int approval_level, char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = prep(s, S_PLAN_ADD, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, plan_id);
    bind_text(st, 2, request_id);
    bind_text(st, 3, canonical_json);
    bind_text(st, 4, sha256);
    bind_text(st, 5, risk);
    sqlite3_bind_int(st, 6, approval_level);
    sqlite3_bind_int64(st, 7, bt_wall_ms());
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "add plan '%.64s' of request '%.64s'", plan_id, request_id);
    done(st);
    return e;
}

/* The stored plan text is hashed again: approvals are bound to the hash, so
 * a plan whose text was changed behind baton's back must not be shown as the
 * plan that was approved. */
static enum bt_err sq_plan_get(void *be, const char *plan_id, json_t **out, char *err,
                               size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = prep(s, S_PLAN_GET, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, plan_id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        bt_fmt(err, errlen, "%s: no plan '%.64s'", s->path, plan_id);
        e = BT_ENOENT;
    } else if (rc != SQLITE_ROW) {
        e = sq_fail(s, rc, err, errlen, "read plan '%.64s'", plan_id);
    } else {
        bool bad = false;
        const char *text = (const char *)sqlite3_column_text(st, 2);
        const char *sha = (const char *)sqlite3_column_text(st, 3);
        char hex[65] = "";
        if (text)
            bt_sha256_hex(text, (size_t)sqlite3_column_bytes(st, 2), hex);
        json_t *plan = col_json(st, 2, &bad);
        json_t *o = json_object();
        json_object_set_new(o, "plan_id", col_str(st, 0, &bad));
        json_object_set_new(o, "request_id", col_str(st, 1, &bad));
        json_object_set_new(o, "plan", plan);
        json_object_set_new(o, "sha256", col_str(st, 3, &bad));
        json_object_set_new(o, "risk", col_str(st, 4, &bad));
        json_object_set_new(o, "approval_level", json_integer(sqlite3_column_int(st, 5)));
        json_object_set_new(o, "created_ms", json_integer(sqlite3_column_int64(st, 6)));
        if (bad || !json_is_object(plan) || !sha || strcmp(hex, sha) != 0) {
            bt_fmt(err, errlen, "%s: plan '%.64s' is damaged: its JSON does not match its sha256",
                   s->path, plan_id);
            json_decref(o);
            e = BT_ECORRUPT;
        } else {
            *out = o;
        }
    }
    done(st);
    return e;
}

/* ---- executions and steps -------------------------------------------------- */

static enum bt_err sq_execution_add(void *be, const char *execution_id, const char *plan_id,
                                    const char *state, char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = prep(s, S_EXECUTION_ADD, &st, err, errlen);
    if (e != BT_OK)
        return e;
    int64_t now = bt_wall_ms();
    bind_text(st, 1, execution_id);
    bind_text(st, 2, plan_id);
    bind_text(st, 3, state);
    sqlite3_bind_int64(st, 4, now);
    sqlite3_bind_int64(st, 5, now);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "add execution '%.64s' of plan '%.64s'", execution_id,
                    plan_id);
    done(st);
    return e;
}

static enum bt_err sq_execution_set(void *be, const char *execution_id, const char *state,
                                    const char *result_json, char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = prep(s, S_EXECUTION_SET, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, state);
    bind_text(st, 2, result_json);
    sqlite3_bind_int64(st, 3, bt_wall_ms());
    bind_text(st, 4, execution_id);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) {
        e = sq_fail(s, rc, err, errlen, "set execution '%.64s' to %s", execution_id, state);
    } else if (sqlite3_changes(s->db) == 0) {
        bt_fmt(err, errlen, "%s: no execution '%.64s'", s->path, execution_id);
        e = BT_ENOENT;
    }
    done(st);
    return e;
}

static enum bt_err sq_step_add(void *be, const char *execution_id, int step_index, const char *tool,
                               const char *state, char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = prep(s, S_STEP_ADD, &st, err, errlen);
    if (e != BT_OK)
        return e;
    int64_t now = bt_wall_ms();
    bind_text(st, 1, execution_id);
    sqlite3_bind_int(st, 2, step_index);
    bind_text(st, 3, tool);
    bind_text(st, 4, state);
    sqlite3_bind_int64(st, 5, now);
    sqlite3_bind_int64(st, 6, now);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "add step %d of execution '%.64s'", step_index,
                    execution_id);
    done(st);
    return e;
}

static enum bt_err sq_step_set(void *be, const char *execution_id, int step_index,
                               const char *state, const char *result_json, char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = prep(s, S_STEP_SET, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, state);
    bind_text(st, 2, result_json);
    sqlite3_bind_int64(st, 3, bt_wall_ms());
    bind_text(st, 4, execution_id);
    sqlite3_bind_int(st, 5, step_index);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) {
        e = sq_fail(s, rc, err, errlen, "set step %d of execution '%.64s' to %s", step_index,
                    execution_id, state);
    } else if (sqlite3_changes(s->db) == 0) {
        bt_fmt(err, errlen, "%s: no step %d in execution '%.64s'", s->path, step_index,
               execution_id);
        e = BT_ENOENT;
    }
    done(st);
    return e;
}

/* ---- execution engine -------------------------------------------------------
 * Statements of the execution engine (store.h "execution engine") live in
 * their own table and cache (struct sq.exec_stmt), prepared once per handle
 * like the fixed ones. Every write that reads first (lock acquisition, job
 * claims) runs inside BEGIN IMMEDIATE, so the read and the write see the
 * same state in every process; the PostgreSQL backend does the same with
 * SELECT ... FOR UPDATE SKIP LOCKED. */

/* Execution states that end an execution (store.h). */
#define SQ_TERMINAL "('completed', 'failed', 'cancelled', 'timed_out', 'interrupted')"
/* The request behind an execution: its user and text. */
#define SQ_REQUEST_OF(e)                                                                           \
    " LEFT JOIN plans p ON p.plan_id = " e ".plan_id"                                              \
    " LEFT JOIN requests r ON r.request_id = p.request_id"
#define SQ_JOB_COLS                                                                                \
    "job_id, execution_id, step_index, state, attempt, max_attempts, run_at_ms, assets_json,"      \
    " locked_by, locked_ms, heartbeat_ms, last_error, created_ms, updated_ms"
#define SQ_RUNNING_MAX 10000

enum sx_stmt {
    SX_EXEC_CAS,
    SX_EXEC_STATE,
    SX_EXEC_OWN,
    SX_EXEC_PROGRESS,
    SX_EXEC_EXTRA,
    SX_RUNNING,
    SX_LOCKS_STALE,
    SX_WAITS_STALE,
    SX_WAIT_SEQ,
    SX_LOCK_HOLDER,
    SX_LOCK_AHEAD,
    SX_LOCK_INSERT,
    SX_WAIT_INSERT,
    SX_WAIT_REFRESH,
    SX_WAIT_DELETE,
    SX_LOCKS_RELEASE,
    SX_LOCKS_LIST,
    SX_JOB_ADD,
    SX_JOBS_ORPHAN,
    SX_JOB_EXPIRED,
    SX_JOB_NEXT,
    SX_JOB_TAKE,
    SX_JOB_HEARTBEAT,
    SX_JOB_FINISH,
    SX_JOBS_OF,
    SX_NOTIFY,
    SX_NOTIFY_USER,
    SX_NOTIFICATIONS,
    SX_NOTIFIED,
    SX_TOKEN_ADD,
    SX_TOKEN_USE,
    SX_TOKEN_GET,
    SX_REQUESTS_OF,
    SX_REQUEST_GET,
    SX_CHAT_CLAIM,
    SX_CHAT_FORGET,
    SX_CHAT_POST_ADD,
    SX_CHAT_POSTS_OF,
    SX__COUNT
};
_Static_assert(SX__COUNT <= SQ_EXEC_STMTS, "struct sq.exec_stmt is big enough");

static const char *const sx_sql[SX__COUNT] = {
    [SX_EXEC_CAS] = "UPDATE executions SET state = ?1, result_json = coalesce(?2, result_json),"
                    " updated_ms = ?3 WHERE execution_id = ?4 AND state = ?5",
    [SX_EXEC_STATE] = "SELECT state FROM executions WHERE execution_id = ?",
    [SX_EXEC_OWN] = "UPDATE executions SET state = 'running', owner_host = ?1, owner_pid = ?2,"
                    " owner_start = ?3, steps_total = ?4, updated_ms = ?5"
                    " WHERE execution_id = ?6 AND state = ?7",
    [SX_EXEC_PROGRESS] = "UPDATE executions SET steps_done = ?1, steps_total = ?2,"
                         " updated_ms = ?3 WHERE execution_id = ?4",
    [SX_EXEC_EXTRA] = "SELECT e.steps_done, e.steps_total, e.owner_host, e.owner_pid,"
                      " e.owner_start, p.request_id, r.user_id FROM executions e" SQ_REQUEST_OF(
                          "e") " WHERE e.execution_id = ?",
    [SX_RUNNING] = "SELECT e.execution_id, e.plan_id, p.request_id, r.user_id, e.owner_host,"
                   " e.owner_pid, e.owner_start, e.updated_ms FROM executions e" SQ_REQUEST_OF(
                       "e") " WHERE e.state = 'running' ORDER BY e.updated_ms, e.execution_id"
                            " LIMIT ?",
    [SX_LOCKS_STALE] = "DELETE FROM asset_locks WHERE execution_id IN"
                       " (SELECT execution_id FROM executions WHERE state IN " SQ_TERMINAL ")",
    [SX_WAITS_STALE] = "DELETE FROM lock_waits WHERE execution_id IN"
                       " (SELECT execution_id FROM executions WHERE state IN " SQ_TERMINAL ")"
                       " OR (expires_ms < ?1 AND NOT EXISTS (SELECT 1 FROM jobs j"
                       " WHERE j.execution_id = lock_waits.execution_id"
                       " AND j.state IN ('available', 'running')))",
    [SX_WAIT_SEQ] = "SELECT seq FROM lock_waits WHERE execution_id = ?",
    [SX_LOCK_HOLDER] = "SELECT l.execution_id, r.user_id, r.text FROM asset_locks l"
                       " LEFT JOIN executions e ON e.execution_id = l.execution_id" SQ_REQUEST_OF(
                           "e") " WHERE l.asset = ?1 AND l.execution_id <> ?2",
    /* count(*) OVER () counts every waiter ahead, before LIMIT keeps the
     * first of them. */
    [SX_LOCK_AHEAD] = "SELECT w.execution_id, r.user_id, r.text, count(*) OVER ()"
                      " FROM lock_waits w"
                      " LEFT JOIN executions e ON e.execution_id = w.execution_id" SQ_REQUEST_OF(
                          "e") " WHERE w.execution_id <> ?2 AND (?3 IS NULL OR w.seq < ?3)"
                               " AND EXISTS (SELECT 1 FROM json_each(w.assets_json) a"
                               " WHERE a.value = ?1 COLLATE NOCASE)"
                               " ORDER BY w.seq LIMIT 1",
    [SX_LOCK_INSERT] = "INSERT INTO asset_locks(asset, execution_id, acquired_ms) VALUES (?, ?, ?)"
                       " ON CONFLICT(asset) DO NOTHING",
    [SX_WAIT_INSERT] = "INSERT INTO lock_waits(execution_id, assets_json, since_ms, expires_ms)"
                       " VALUES (?, ?, ?, ?)",
    [SX_WAIT_REFRESH] = "UPDATE lock_waits SET assets_json = ?1, expires_ms = ?2"
                        " WHERE execution_id = ?3",
    [SX_WAIT_DELETE] = "DELETE FROM lock_waits WHERE execution_id = ?",
    [SX_LOCKS_RELEASE] = "DELETE FROM asset_locks WHERE execution_id = ?",
    [SX_LOCKS_LIST] = "SELECT asset, execution_id, acquired_ms FROM asset_locks"
                      " WHERE ?1 IS NULL OR execution_id = ?1 ORDER BY asset",
    [SX_JOB_ADD] = "INSERT INTO jobs(execution_id, step_index, state, attempt, max_attempts,"
                   " run_at_ms, assets_json, created_ms, updated_ms)"
                   " VALUES (?, ?, 'available', 0, ?, ?, ?, ?, ?)",
    [SX_JOBS_ORPHAN] = "UPDATE jobs SET state = 'dead', updated_ms = ?1,"
                       " last_error = 'the execution had already ended'"
                       " WHERE state = 'available' AND execution_id IN"
                       " (SELECT execution_id FROM executions WHERE state IN " SQ_TERMINAL ")",
    [SX_JOB_EXPIRED] = "SELECT " SQ_JOB_COLS " FROM jobs WHERE state = 'running'"
                       " AND heartbeat_ms < ?1 ORDER BY heartbeat_ms, job_id LIMIT 1",
    [SX_JOB_NEXT] = "SELECT " SQ_JOB_COLS " FROM jobs j WHERE state = 'available'"
                    " AND run_at_ms <= ?1 AND NOT EXISTS (SELECT 1"
                    " FROM json_each(j.assets_json) a"
                    " JOIN asset_locks l ON l.asset = a.value COLLATE NOCASE"
                    " JOIN executions e ON e.execution_id = l.execution_id"
                    " WHERE l.execution_id <> j.execution_id AND e.state NOT IN " SQ_TERMINAL ")"
                    " ORDER BY run_at_ms, job_id LIMIT 1",
    [SX_JOB_TAKE] = "UPDATE jobs SET state = 'running', attempt = attempt + 1, locked_by = ?1,"
                    " locked_ms = ?2, heartbeat_ms = ?2, updated_ms = ?2 WHERE job_id = ?3",
    [SX_JOB_HEARTBEAT] = "UPDATE jobs SET heartbeat_ms = ?1, updated_ms = ?1"
                         " WHERE job_id = ?2 AND locked_by = ?3 AND state = 'running'",
    [SX_JOB_FINISH] = "UPDATE jobs SET state = ?1,"
                      " run_at_ms = CASE WHEN ?1 = 'available' THEN ?2 ELSE run_at_ms END,"
                      " last_error = coalesce(?3, last_error),"
                      " attempt = max(attempt - ?4, 0),"
                      " locked_by = CASE WHEN ?1 = 'available' THEN NULL ELSE locked_by END,"
                      " updated_ms = ?5 WHERE job_id = ?6 AND locked_by = ?7 AND state = 'running'",
    [SX_JOBS_OF] = "SELECT " SQ_JOB_COLS " FROM jobs WHERE execution_id = ? ORDER BY job_id",
    [SX_NOTIFY] = "INSERT INTO notifications(user_id, execution_id, text, created_ms)"
                  " SELECT r.user_id, e.execution_id, ?2, ?3 FROM executions e" SQ_REQUEST_OF(
                      "e") " WHERE e.execution_id = ?1",
    [SX_NOTIFY_USER] = "INSERT INTO notifications(user_id, execution_id, text, created_ms)"
                       " VALUES (?1, ?2, ?3, ?4)",
    [SX_NOTIFICATIONS] = "SELECT notification_id, user_id, execution_id, text, created_ms,"
                         " delivered_ms FROM notifications WHERE (?1 IS NULL OR user_id = ?1)"
                         " AND (?2 = 0 OR delivered_ms IS NULL)"
                         " ORDER BY notification_id LIMIT ?3",
    [SX_NOTIFIED] = "UPDATE notifications SET delivered_ms = coalesce(delivered_ms, ?1)"
                    " WHERE notification_id = ?2",
    [SX_TOKEN_ADD] = "INSERT INTO console_tokens(token_sha256, user_id, created_ms)"
                     " VALUES (?1, ?2, ?3)",
    [SX_TOKEN_USE] = "UPDATE console_tokens SET last_used_ms = ?1 WHERE token_sha256 = ?2",
    [SX_TOKEN_GET] = "SELECT user_id FROM console_tokens WHERE token_sha256 = ?1",
    [SX_REQUESTS_OF] = "SELECT request_id, channel, text, created_ms FROM requests"
                       " WHERE user_id = ?1 ORDER BY created_ms DESC, rowid DESC LIMIT ?2",
    [SX_REQUEST_GET] = "SELECT request_id, user_id, channel, text, created_ms FROM requests"
                       " WHERE request_id = ?1",
    [SX_CHAT_CLAIM] = "INSERT INTO chat_events(event_key, claimed_ms) VALUES (?1, ?2)"
                      " ON CONFLICT DO NOTHING",
    [SX_CHAT_FORGET] = "DELETE FROM chat_events WHERE claimed_ms < ?1",
    [SX_CHAT_POST_ADD] = "INSERT INTO chat_posts(surface, channel, post, approval_id, thread,"
                         " created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
    [SX_CHAT_POSTS_OF] = "SELECT surface, channel, post, thread, created_ms FROM chat_posts"
                         " WHERE approval_id = ?1 ORDER BY created_ms, rowid",
};

static enum bt_err xprep(struct sq *s, enum sx_stmt id, sqlite3_stmt **out, char *err,
                         size_t errlen)
{
    if (!s->exec_stmt[id]) {
        int rc = sqlite3_prepare_v3(s->db, sx_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                                    &s->exec_stmt[id], NULL);
        if (rc != SQLITE_OK) {
            s->exec_stmt[id] = NULL;
            *out = NULL;
            return sq_fail(s, rc, err, errlen, "prepare execution statement %d", (int)id);
        }
    }
    *out = s->exec_stmt[id];
    return BT_OK;
}

/* Why a compare-and-set matched no row: absent, or in which state. */
static enum bt_err cas_missed(struct sq *s, const char *execution_id, const char *from, char *err,
                              size_t errlen)
{
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_EXEC_STATE, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, execution_id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *now = (const char *)sqlite3_column_text(st, 0);
        bt_fmt(err, errlen, "%s: execution '%.64s' is %s, not %s", s->path, execution_id,
               now ? now : "in no state", from);
        e = BT_ENOENT;
    } else if (rc == SQLITE_DONE) {
        bt_fmt(err, errlen, "%s: no execution '%.64s'", s->path, execution_id);
        e = BT_ENOENT;
    } else {
        e = sq_fail(s, rc, err, errlen, "read execution '%.64s'", execution_id);
    }
    done(st);
    return e;
}

static enum bt_err sq_execution_transition(void *be, const char *execution_id, const char *from,
                                           const char *to, const char *result_json, char *err,
                                           size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_EXEC_CAS, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, to);
    bind_text(st, 2, result_json);
    sqlite3_bind_int64(st, 3, bt_wall_ms());
    bind_text(st, 4, execution_id);
    bind_text(st, 5, from);
    int rc = sqlite3_step(st);
    bool hit = rc == SQLITE_DONE && sqlite3_changes(s->db) > 0;
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "set execution '%.64s' from %s to %s", execution_id, from,
                    to);
    done(st);
    if (e == BT_OK && !hit)
        e = cas_missed(s, execution_id, from, err, errlen);
    return e;
}

static enum bt_err sq_execution_own(void *be, const char *execution_id, const char *from,
                                    const char *owner_host, long long owner_pid,
                                    const char *owner_start, int steps_total, char *err,
                                    size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_EXEC_OWN, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, owner_host);
    sqlite3_bind_int64(st, 2, owner_pid);
    bind_text(st, 3, owner_start);
    sqlite3_bind_int(st, 4, steps_total);
    sqlite3_bind_int64(st, 5, bt_wall_ms());
    bind_text(st, 6, execution_id);
    bind_text(st, 7, from);
    int rc = sqlite3_step(st);
    bool hit = rc == SQLITE_DONE && sqlite3_changes(s->db) > 0;
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "start execution '%.64s'", execution_id);
    done(st);
    if (e == BT_OK && !hit)
        e = cas_missed(s, execution_id, from, err, errlen);
    return e;
}

static enum bt_err sq_execution_progress(void *be, const char *execution_id, int ndone, int total,
                                         char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_EXEC_PROGRESS, &st, err, errlen);
    if (e != BT_OK)
        return e;
    sqlite3_bind_int(st, 1, ndone);
    sqlite3_bind_int(st, 2, total);
    sqlite3_bind_int64(st, 3, bt_wall_ms());
    bind_text(st, 4, execution_id);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "record progress of execution '%.64s'", execution_id);
    else if (sqlite3_changes(s->db) == 0) {
        bt_fmt(err, errlen, "%s: no execution '%.64s'", s->path, execution_id);
        e = BT_ENOENT;
    }
    done(st);
    return e;
}

/* The engine's columns of one execution, added to execution_get's object
 * o: progress, owner, request_id, requester. */
static enum bt_err sq_execution_extra(struct sq *s, const char *execution_id, json_t *o, bool *bad,
                                      char *err, size_t errlen)
{
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_EXEC_EXTRA, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, execution_id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        json_object_set_new(o, "progress",
                            json_pack("{s:i, s:i}", "done", sqlite3_column_int(st, 0), "total",
                                      sqlite3_column_int(st, 1)));
        if (sqlite3_column_type(st, 2) == SQLITE_NULL) {
            json_object_set_new(o, "owner", json_null());
        } else {
            json_t *owner = json_object();
            json_object_set_new(owner, "host", col_str(st, 2, bad));
            json_object_set_new(owner, "pid", json_integer(sqlite3_column_int64(st, 3)));
            json_object_set_new(owner, "start", col_str(st, 4, bad));
            json_object_set_new(o, "owner", owner);
        }
        json_object_set_new(o, "request_id", col_str(st, 5, bad));
        json_object_set_new(o, "requester", col_str(st, 6, bad));
    } else if (rc != SQLITE_DONE) {
        e = sq_fail(s, rc, err, errlen, "read execution '%.64s'", execution_id);
    }
    done(st);
    return e;
}

static enum bt_err sq_executions_running(void *be, json_t **out, char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_RUNNING, &st, err, errlen);
    if (e != BT_OK)
        return e;
    sqlite3_bind_int(st, 1, SQ_RUNNING_MAX);
    json_t *arr = json_array();
    bool bad = false;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *o = json_object();
        json_object_set_new(o, "execution_id", col_str(st, 0, &bad));
        json_object_set_new(o, "plan_id", col_str(st, 1, &bad));
        json_object_set_new(o, "request_id", col_str(st, 2, &bad));
        json_object_set_new(o, "requester", col_str(st, 3, &bad));
        json_object_set_new(o, "owner_host", col_str(st, 4, &bad));
        json_object_set_new(o, "owner_pid",
                            sqlite3_column_type(st, 5) == SQLITE_NULL
                                ? json_null()
                                : json_integer(sqlite3_column_int64(st, 5)));
        json_object_set_new(o, "owner_start", col_str(st, 6, &bad));
        json_object_set_new(o, "updated_ms", json_integer(sqlite3_column_int64(st, 7)));
        json_array_append_new(arr, o);
    }
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "list running executions");
    else if (bad) {
        bt_fmt(err, errlen, "%s: a running execution is damaged", s->path);
        e = BT_ECORRUPT;
    }
    done(st);
    if (e != BT_OK) {
        json_decref(arr);
        return e;
    }
    *out = arr;
    return BT_OK;
}

/* {execution_id, requester, text} from columns i, i+1, i+2. */
static json_t *who_row(sqlite3_stmt *st, int i, bool *bad)
{
    json_t *o = json_object();
    json_object_set_new(o, "execution_id", col_str(st, i, bad));
    json_object_set_new(o, "requester", col_str(st, i + 1, bad));
    json_object_set_new(o, "text", col_str(st, i + 2, bad));
    return o;
}

/* Run one cleanup statement whose only parameter (if any) is now. */
static enum bt_err xrun_now(struct sq *s, enum sx_stmt id, int64_t now, bool bind_now, char *err,
                            size_t errlen, const char *what)
{
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, id, &st, err, errlen);
    if (e != BT_OK)
        return e;
    if (bind_now)
        sqlite3_bind_int64(st, 1, now);
    return step_done(s, st, err, errlen, what);
}

/* Run a statement whose only parameter is an execution id. */
static enum bt_err xrun_id(struct sq *s, enum sx_stmt id, const char *execution_id, char *err,
                           size_t errlen, const char *what)
{
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, id, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, execution_id);
    return step_done(s, st, err, errlen, what);
}

/* One asset of a lock request: who holds it (not us), who waits ahead of
 * us. Adds an entry to busy when we cannot have it. */
static enum bt_err lock_look(struct sq *s, const char *execution_id, const char *asset,
                             bool have_seq, long long seq, json_t *busy, bool *bad, char *err,
                             size_t errlen)
{
    sqlite3_stmt *st;
    json_t *holder = NULL, *ahead = NULL;
    long long nahead = 0;
    enum bt_err e = xprep(s, SX_LOCK_HOLDER, &st, err, errlen);
    if (e == BT_OK) {
        bind_text(st, 1, asset);
        bind_text(st, 2, execution_id);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            holder = who_row(st, 0, bad);
        else if (rc != SQLITE_DONE)
            e = sq_fail(s, rc, err, errlen, "read the lock on '%.64s'", asset);
        done(st);
    }
    if (e == BT_OK && (e = xprep(s, SX_LOCK_AHEAD, &st, err, errlen)) == BT_OK) {
        bind_text(st, 1, asset);
        bind_text(st, 2, execution_id);
        if (have_seq)
            sqlite3_bind_int64(st, 3, seq);
        else
            sqlite3_bind_null(st, 3);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            ahead = who_row(st, 0, bad);
            nahead = sqlite3_column_int64(st, 3);
        } else if (rc != SQLITE_DONE) {
            e = sq_fail(s, rc, err, errlen, "read the queue for '%.64s'", asset);
        }
        done(st);
    }
    if (e == BT_OK && (holder || ahead)) {
        json_t *b = json_pack("{s:s, s:I, s:I}", "asset", asset, "position",
                              (json_int_t)((holder ? 1 : 0) + nahead + 1), "waiters_ahead",
                              (json_int_t)nahead);
        json_object_set_new(b, "holder", holder ? holder : json_null());
        json_object_set_new(b, "ahead", ahead ? ahead : json_null());
        holder = ahead = NULL;
        json_array_append_new(busy, b);
    }
    json_decref(holder);
    json_decref(ahead);
    return e;
}

static enum bt_err sq_locks_acquire(void *be, const char *execution_id, const json_t *assets,
                                    const char *assets_json, int64_t wait_ttl_ms, json_t **out,
                                    char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    int64_t now = bt_wall_ms();
    enum bt_err e = tx_begin(s, true, err, errlen);
    if (e != BT_OK)
        return e;
    e = xrun_now(s, SX_LOCKS_STALE, now, false, err, errlen, "drop locks of ended executions");
    if (e == BT_OK)
        e = xrun_now(s, SX_WAITS_STALE, now, true, err, errlen, "drop expired lock waiters");
    bool have_seq = false;
    long long seq = 0;
    if (e == BT_OK && (e = xprep(s, SX_WAIT_SEQ, &st, err, errlen)) == BT_OK) {
        bind_text(st, 1, execution_id);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            have_seq = true;
            seq = sqlite3_column_int64(st, 0);
        } else if (rc != SQLITE_DONE) {
            e = sq_fail(s, rc, err, errlen, "read the lock queue");
        }
        done(st);
    }
    json_t *busy = json_array();
    bool bad = false;
    size_t i;
    const json_t *a;
    json_array_foreach(assets, i, a)
    {
        if (e != BT_OK)
            break;
        e = lock_look(s, execution_id, json_string_value(a), have_seq, seq, busy, &bad, err,
                      errlen);
    }
    if (e == BT_OK && bad) {
        bt_fmt(err, errlen, "%s: a lock holder's request is damaged", s->path);
        e = BT_ECORRUPT;
    }
    if (e == BT_OK && json_array_size(busy) == 0) {
        json_array_foreach(assets, i, a)
        {
            if (e != BT_OK || (e = xprep(s, SX_LOCK_INSERT, &st, err, errlen)) != BT_OK)
                break;
            bind_text(st, 1, json_string_value(a));
            bind_text(st, 2, execution_id);
            sqlite3_bind_int64(st, 3, now);
            e = step_done(s, st, err, errlen, "take a lock");
        }
        if (e == BT_OK)
            e = xrun_id(s, SX_WAIT_DELETE, execution_id, err, errlen, "leave the lock queue");
    } else if (e == BT_OK) {
        /* Keep our place in the queue (first come, first served), or take
         * one at the back. */
        if ((e = xprep(s, have_seq ? SX_WAIT_REFRESH : SX_WAIT_INSERT, &st, err, errlen)) ==
            BT_OK) {
            if (have_seq) {
                bind_text(st, 1, assets_json);
                sqlite3_bind_int64(st, 2, now + wait_ttl_ms);
                bind_text(st, 3, execution_id);
            } else {
                bind_text(st, 1, execution_id);
                bind_text(st, 2, assets_json);
                sqlite3_bind_int64(st, 3, now);
                sqlite3_bind_int64(st, 4, now + wait_ttl_ms);
            }
            e = step_done(s, st, err, errlen, "wait for a lock");
        }
    }
    e = tx_end(s, e, err, errlen);
    if (e != BT_OK) {
        json_decref(busy);
        return e;
    }
    if (json_array_size(busy) == 0) {
        json_decref(busy);
        *out = json_pack("{s:b}", "acquired", 1);
    } else {
        *out = json_pack("{s:b, s:o}", "acquired", 0, "busy", busy);
    }
    return BT_OK;
}

/* Locks and queue place go together, in one transaction. */
static enum bt_err sq_locks_release(void *be, const char *execution_id, char *err, size_t errlen)
{
    struct sq *s = be;
    enum bt_err e = tx_begin(s, true, err, errlen);
    if (e != BT_OK)
        return e;
    e = xrun_id(s, SX_LOCKS_RELEASE, execution_id, err, errlen, "release locks");
    if (e == BT_OK)
        e = xrun_id(s, SX_WAIT_DELETE, execution_id, err, errlen, "leave the lock queue");
    return tx_end(s, e, err, errlen);
}

static enum bt_err sq_locks_list(void *be, const char *execution_id, json_t **out, char *err,
                                 size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_LOCKS_LIST, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, execution_id);
    json_t *arr = json_array();
    bool bad = false;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *o = json_object();
        json_object_set_new(o, "asset", col_str(st, 0, &bad));
        json_object_set_new(o, "execution_id", col_str(st, 1, &bad));
        json_object_set_new(o, "acquired_ms", json_integer(sqlite3_column_int64(st, 2)));
        json_array_append_new(arr, o);
    }
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "list locks");
    else if (bad) {
        bt_fmt(err, errlen, "%s: a lock is damaged", s->path);
        e = BT_ECORRUPT;
    }
    done(st);
    if (e != BT_OK) {
        json_decref(arr);
        return e;
    }
    *out = arr;
    return BT_OK;
}

static enum bt_err sq_job_add(void *be, const char *execution_id, int step, const char *assets_json,
                              int max_attempts, int64_t run_at_ms, long long *job_id, char *err,
                              size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_JOB_ADD, &st, err, errlen);
    if (e != BT_OK)
        return e;
    int64_t now = bt_wall_ms();
    bind_text(st, 1, execution_id);
    sqlite3_bind_int(st, 2, step);
    sqlite3_bind_int(st, 3, max_attempts);
    sqlite3_bind_int64(st, 4, run_at_ms);
    bind_text(st, 5, assets_json);
    sqlite3_bind_int64(st, 6, now);
    sqlite3_bind_int64(st, 7, now);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_CONSTRAINT_UNIQUE) {
        /* jobs_one_active: one available or running job per execution. */
        bt_fmt(err, errlen, "%s: execution '%.64s' already has a job waiting or running", s->path,
               execution_id);
        e = BT_EINVAL;
    } else if (rc != SQLITE_DONE) {
        e = sq_fail(s, rc, err, errlen, "queue a job for execution '%.64s'", execution_id);
    } else {
        *job_id = sqlite3_last_insert_rowid(s->db);
    }
    done(st);
    return e;
}

/* One row of a listing as a new object; sets *bad on damaged columns. */
typedef json_t *(*row_fn)(sqlite3_stmt *st, bool *bad);

/* Step st (already bound) to its end, one object per row from row, and
 * reset it. what names the rows in messages ("pending approvals"). The
 * loop ends with the statement's rows, which its LIMIT (or the data it
 * selects by key) bounds. On success *out is the new array. */
static enum bt_err collect_rows(struct sq *s, sqlite3_stmt *st, row_fn row, const char *what,
                                json_t **out, char *err, size_t errlen)
{
    json_t *arr = json_array();
    bool bad = false;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        json_array_append_new(arr, row(st, &bad));
    enum bt_err e = BT_OK;
    if (rc != SQLITE_DONE) {
        e = sq_fail(s, rc, err, errlen, "list %s", what);
    } else if (bad) {
        bt_fmt(err, errlen, "%s: %s: an entry is damaged", s->path, what);
        e = BT_ECORRUPT;
    }
    done(st);
    if (e != BT_OK) {
        json_decref(arr);
        return e;
    }
    *out = arr;
    return BT_OK;
}

/* One jobs row (SQ_JOB_COLS) as a new object; *bad on junk. */
static json_t *job_row(sqlite3_stmt *st, bool *bad)
{
    json_t *o = json_object();
    json_object_set_new(o, "job_id", json_integer(sqlite3_column_int64(st, 0)));
    json_object_set_new(o, "execution_id", col_str(st, 1, bad));
    json_object_set_new(o, "step", json_integer(sqlite3_column_int(st, 2)));
    json_object_set_new(o, "state", col_str(st, 3, bad));
    json_object_set_new(o, "attempt", json_integer(sqlite3_column_int(st, 4)));
    json_object_set_new(o, "max_attempts", json_integer(sqlite3_column_int(st, 5)));
    json_object_set_new(o, "run_at_ms", json_integer(sqlite3_column_int64(st, 6)));
    json_object_set_new(o, "assets", col_json(st, 7, bad));
    json_object_set_new(o, "locked_by", col_str(st, 8, bad));
    static const char *const times[] = {"locked_ms", "heartbeat_ms"};
    for (int k = 0; k < 2; k++)
        json_object_set_new(o, times[k],
                            sqlite3_column_type(st, 9 + k) == SQLITE_NULL
                                ? json_null()
                                : json_integer(sqlite3_column_int64(st, 9 + k)));
    json_object_set_new(o, "last_error", col_str(st, 11, bad));
    json_object_set_new(o, "created_ms", json_integer(sqlite3_column_int64(st, 12)));
    json_object_set_new(o, "updated_ms", json_integer(sqlite3_column_int64(st, 13)));
    return o;
}

/* Read the first row of a job query bound with one integer (*job NULL when
 * there is none). */
static enum bt_err job_pick(struct sq *s, enum sx_stmt id, int64_t arg, json_t **job, char *err,
                            size_t errlen)
{
    sqlite3_stmt *st;
    *job = NULL;
    enum bt_err e = xprep(s, id, &st, err, errlen);
    if (e != BT_OK)
        return e;
    sqlite3_bind_int64(st, 1, arg);
    int rc = sqlite3_step(st);
    bool bad = false;
    if (rc == SQLITE_ROW)
        *job = job_row(st, &bad);
    else if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "look for a job");
    done(st);
    if (e == BT_OK && bad) {
        bt_fmt(err, errlen, "%s: a queued job is damaged", s->path);
        e = BT_ECORRUPT;
    }
    if (e != BT_OK) {
        json_decref(*job);
        *job = NULL;
    }
    return e;
}

/* One write transaction: drop jobs of ended executions, then take over an
 * expired job or take the next available one. */
static enum bt_err sq_job_claim(void *be, const char *worker, int64_t lease_ms, json_t **job,
                                char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    int64_t now = bt_wall_ms();
    json_t *j = NULL;
    bool reclaimed = false;
    enum bt_err e = tx_begin(s, true, err, errlen);
    if (e != BT_OK)
        return e;
    e = xrun_now(s, SX_JOBS_ORPHAN, now, true, err, errlen, "drop jobs of ended executions");
    if (e == BT_OK)
        e = job_pick(s, SX_JOB_EXPIRED, now - lease_ms, &j, err, errlen);
    if (e == BT_OK && j)
        reclaimed = true;
    else if (e == BT_OK)
        e = job_pick(s, SX_JOB_NEXT, now, &j, err, errlen);
    if (e == BT_OK && j && (e = xprep(s, SX_JOB_TAKE, &st, err, errlen)) == BT_OK) {
        bind_text(st, 1, worker);
        sqlite3_bind_int64(st, 2, now);
        sqlite3_bind_int64(st, 3, json_integer_value(json_object_get(j, "job_id")));
        e = step_done(s, st, err, errlen, "claim a job");
    }
    e = tx_end(s, e, err, errlen);
    if (e != BT_OK || !j) {
        json_decref(j);
        return e;
    }
    json_object_set_new(j, "previous_worker",
                        reclaimed ? json_incref(json_object_get(j, "locked_by")) : json_null());
    json_object_set_new(j, "reclaimed", json_boolean(reclaimed));
    json_object_set_new(j, "state", json_string("running"));
    json_object_set_new(j, "attempt",
                        json_integer(json_integer_value(json_object_get(j, "attempt")) + 1));
    json_object_set_new(j, "locked_by", json_string(worker));
    json_object_set_new(j, "locked_ms", json_integer(now));
    json_object_set_new(j, "heartbeat_ms", json_integer(now));
    json_object_set_new(j, "updated_ms", json_integer(now));
    *job = j;
    return BT_OK;
}

static enum bt_err sq_job_heartbeat(void *be, long long job_id, const char *worker, char *err,
                                    size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_JOB_HEARTBEAT, &st, err, errlen);
    if (e != BT_OK)
        return e;
    sqlite3_bind_int64(st, 1, bt_wall_ms());
    sqlite3_bind_int64(st, 2, job_id);
    bind_text(st, 3, worker);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "heartbeat job %lld", job_id);
    else if (sqlite3_changes(s->db) == 0) {
        bt_fmt(err, errlen, "%s: job %lld is no longer held by %.64s", s->path, job_id, worker);
        e = BT_ENOENT;
    }
    done(st);
    return e;
}

static enum bt_err sq_job_finish(void *be, long long job_id, const char *worker, const char *state,
                                 int64_t run_at_ms, const char *last_error, bool uncount, char *err,
                                 size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_JOB_FINISH, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, state);
    sqlite3_bind_int64(st, 2, run_at_ms);
    bind_text(st, 3, last_error);
    sqlite3_bind_int(st, 4, uncount ? 1 : 0);
    sqlite3_bind_int64(st, 5, bt_wall_ms());
    sqlite3_bind_int64(st, 6, job_id);
    bind_text(st, 7, worker);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "finish job %lld", job_id);
    else if (sqlite3_changes(s->db) == 0) {
        bt_fmt(err, errlen, "%s: job %lld is not running under %.64s", s->path, job_id, worker);
        e = BT_ENOENT;
    }
    done(st);
    return e;
}

static enum bt_err sq_jobs_of(void *be, const char *execution_id, json_t **out, char *err,
                              size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_JOBS_OF, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, execution_id);
    char what[128];
    bt_fmt(what, sizeof what, "jobs of execution '%.64s'", execution_id);
    return collect_rows(s, st, job_row, what, out, err, errlen);
}

static enum bt_err sq_notify(void *be, const char *execution_id, const char *text, char *err,
                             size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_NOTIFY, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, execution_id);
    bind_text(st, 2, text);
    sqlite3_bind_int64(st, 3, bt_wall_ms());
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "notify about execution '%.64s'", execution_id);
    else if (sqlite3_changes(s->db) == 0) {
        bt_fmt(err, errlen, "%s: no execution '%.64s'", s->path, execution_id);
        e = BT_ENOENT;
    }
    done(st);
    return e;
}

static enum bt_err sq_notify_user(void *be, const char *user, const char *execution_id,
                                  const char *text, char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_NOTIFY_USER, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, user);
    bind_text(st, 2, execution_id);
    bind_text(st, 3, text);
    sqlite3_bind_int64(st, 4, bt_wall_ms());
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "notify %.64s", user);
    done(st);
    return e;
}

static enum bt_err sq_notifications(void *be, const char *user, bool undelivered, long limit,
                                    json_t **out, char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_NOTIFICATIONS, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, user);
    sqlite3_bind_int(st, 2, undelivered ? 1 : 0);
    sqlite3_bind_int64(st, 3, limit);
    json_t *arr = json_array();
    bool bad = false;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *o = json_object();
        json_object_set_new(o, "notification_id", json_integer(sqlite3_column_int64(st, 0)));
        json_object_set_new(o, "user", col_str(st, 1, &bad));
        json_object_set_new(o, "execution_id", col_str(st, 2, &bad));
        json_object_set_new(o, "text", col_str(st, 3, &bad));
        json_object_set_new(o, "created_ms", json_integer(sqlite3_column_int64(st, 4)));
        json_object_set_new(o, "delivered_ms",
                            sqlite3_column_type(st, 5) == SQLITE_NULL
                                ? json_null()
                                : json_integer(sqlite3_column_int64(st, 5)));
        json_array_append_new(arr, o);
    }
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "list notifications");
    else if (bad) {
        bt_fmt(err, errlen, "%s: a notification is damaged", s->path);
        e = BT_ECORRUPT;
    }
    done(st);
    if (e != BT_OK) {
        json_decref(arr);
        return e;
    }
    *out = arr;
    return BT_OK;
}

static enum bt_err sq_notification_delivered(void *be, long long notification_id, char *err,
                                             size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_NOTIFIED, &st, err, errlen);
    if (e != BT_OK)
        return e;
    sqlite3_bind_int64(st, 1, bt_wall_ms());
    sqlite3_bind_int64(st, 2, notification_id);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "mark notification %lld delivered", notification_id);
    else if (sqlite3_changes(s->db) == 0) {
        bt_fmt(err, errlen, "%s: no notification %lld", s->path, notification_id);
        e = BT_ENOENT;
    }
    done(st);
    return e;
}

/* ---- console tokens and history ------------------------------------------ */

static enum bt_err sq_console_token_add(void *be, const char *token_sha256, const char *user,
                                        char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_TOKEN_ADD, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, token_sha256);
    bind_text(st, 2, user);
    sqlite3_bind_int64(st, 3, bt_wall_ms());
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "add a console token for %.64s", user);
    done(st);
    return e;
}

static enum bt_err sq_console_token_user(void *be, const char *token_sha256, char **user, char *err,
                                         size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_TOKEN_GET, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, token_sha256);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const unsigned char *u = sqlite3_column_text(st, 0);
        if (u)
            *user = bt_strdup((const char *)u);
        else {
            bt_fmt(err, errlen, "%s: a console token is damaged", s->path);
            e = BT_ECORRUPT;
        }
    } else if (rc == SQLITE_DONE) {
        bt_fmt(err, errlen, "%s: no such console token", s->path);
        e = BT_ENOENT;
    } else {
        e = sq_fail(s, rc, err, errlen, "look up a console token");
    }
    done(st);
    if (e != BT_OK)
        return e;
    if ((e = xprep(s, SX_TOKEN_USE, &st, err, errlen)) != BT_OK) {
        free(*user);
        *user = NULL;
        return e;
    }
    sqlite3_bind_int64(st, 1, bt_wall_ms());
    bind_text(st, 2, token_sha256);
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "mark a console token used");
    done(st);
    if (e != BT_OK) {
        free(*user);
        *user = NULL;
    }
    return e;
}

static enum bt_err sq_requests_of(void *be, const char *user, long limit, json_t **out, char *err,
                                  size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_REQUESTS_OF, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, user);
    sqlite3_bind_int64(st, 2, limit);
    json_t *arr = json_array();
    bool bad = false;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *o = json_object();
        json_object_set_new(o, "request_id", col_str(st, 0, &bad));
        json_object_set_new(o, "channel", col_str(st, 1, &bad));
        json_object_set_new(o, "text", col_str(st, 2, &bad));
        json_object_set_new(o, "created_ms", json_integer(sqlite3_column_int64(st, 3)));
        json_array_append_new(arr, o);
    }
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "list requests of %.64s", user);
    done(st);
    if (e != BT_OK) {
        json_decref(arr);
        return e;
    }
    *out = arr;
    return BT_OK;
}

static enum bt_err sq_request_get(void *be, const char *request_id, json_t **out, char *err,
                                  size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_REQUEST_GET, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, request_id);
    bool bad = false;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        json_t *o = json_object();
        json_object_set_new(o, "request_id", col_str(st, 0, &bad));
        json_object_set_new(o, "user", col_str(st, 1, &bad));
        json_object_set_new(o, "channel", col_str(st, 2, &bad));
        json_object_set_new(o, "text", col_str(st, 3, &bad));
        json_object_set_new(o, "created_ms", json_integer(sqlite3_column_int64(st, 4)));
        if (bad) {
            bt_fmt(err, errlen, "%s: request %.64s is damaged", s->path, request_id);
            json_decref(o);
            e = BT_ECORRUPT;
        } else
            *out = o;
    } else if (rc == SQLITE_DONE) {
        bt_fmt(err, errlen, "no request %.64s", request_id);
        e = BT_ENOENT;
    } else
        e = sq_fail(s, rc, err, errlen, "read request %.64s", request_id);
    done(st);
    return e;
}

/* Both reads in one read transaction, so the steps belong to the same
 * moment as the execution row (WAL readers never block writers). */
static enum bt_err sq_execution_get(void *be, const char *execution_id, json_t **out, char *err,
                                    size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st = NULL;
    json_t *o = NULL;
    bool bad = false;
    enum bt_err e = tx_begin(s, false, err, errlen);
    if (e != BT_OK)
        return e;
    e = prep(s, S_EXECUTION_GET, &st, err, errlen);
    if (e == BT_OK) {
        bind_text(st, 1, execution_id);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE) {
            bt_fmt(err, errlen, "%s: no execution '%.64s'", s->path, execution_id);
            e = BT_ENOENT;
        } else if (rc != SQLITE_ROW) {
            e = sq_fail(s, rc, err, errlen, "read execution '%.64s'", execution_id);
        } else {
            o = json_object();
            json_object_set_new(o, "execution_id", col_str(st, 0, &bad));
            json_object_set_new(o, "plan_id", col_str(st, 1, &bad));
            json_object_set_new(o, "state", col_str(st, 2, &bad));
            json_object_set_new(o, "result", col_json(st, 3, &bad));
            json_object_set_new(o, "created_ms", json_integer(sqlite3_column_int64(st, 4)));
            json_object_set_new(o, "updated_ms", json_integer(sqlite3_column_int64(st, 5)));
        }
        done(st);
    }
    if (e == BT_OK)
        e = prep(s, S_STEPS_GET, &st, err, errlen);
    if (e == BT_OK) {
        json_t *steps = json_array();
        json_object_set_new(o, "steps", steps);
        bind_text(st, 1, execution_id);
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            json_t *step = json_object();
            json_object_set_new(step, "index", json_integer(sqlite3_column_int(st, 0)));
            json_object_set_new(step, "tool", col_str(st, 1, &bad));
            json_object_set_new(step, "state", col_str(st, 2, &bad));
            json_object_set_new(step, "result", col_json(st, 3, &bad));
            json_object_set_new(step, "updated_ms", json_integer(sqlite3_column_int64(st, 4)));
            json_array_append_new(steps, step);
        }
        if (rc != SQLITE_DONE)
            e = sq_fail(s, rc, err, errlen, "read steps of execution '%.64s'", execution_id);
        done(st);
    }
    if (e == BT_OK)
        e = sq_execution_extra(s, execution_id, o, &bad, err, errlen);
    if (e == BT_OK && bad) {
        bt_fmt(err, errlen, "%s: execution '%.64s' is damaged (unreadable text or JSON)", s->path,
               execution_id);
        e = BT_ECORRUPT;
    }
    e = tx_end(s, e, err, errlen);
    if (e != BT_OK) {
        json_decref(o);
        return e;
    }
    *out = o;
    return BT_OK;
}

/* ---- approvals ------------------------------------------------------------ */

static enum bt_err sq_approval_add(void *be, const char *approval_id, const char *plan_id,
                                   const char *execution_id, int level,
                                   const char *requirement_json, int64_t expires_ms, char *err,
                                   size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = prep(s, S_APPROVAL_ADD, &st, err, errlen);
    if (e != BT_OK)
        return e;
    int64_t now = bt_wall_ms();
    bind_text(st, 1, approval_id);
    bind_text(st, 2, plan_id);
    bind_text(st, 3, execution_id);
    sqlite3_bind_int(st, 4, level);
    bind_text(st, 5, requirement_json);
    sqlite3_bind_int64(st, 6, expires_ms);
    sqlite3_bind_int64(st, 7, now);
    sqlite3_bind_int64(st, 8, now);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "add approval '%.64s' of plan '%.64s'", approval_id,
                    plan_id);
    done(st);
    return e;
}

/* One approvals row (SQ_APPROVAL_COLS) as a new object; *bad on junk. */
static json_t *approval_row(sqlite3_stmt *st, bool *bad)
{
    json_t *o = json_object();
    json_object_set_new(o, "approval_id", col_str(st, 0, bad));
    json_object_set_new(o, "plan_id", col_str(st, 1, bad));
    json_object_set_new(o, "execution_id", col_str(st, 2, bad));
    json_object_set_new(o, "level", json_integer(sqlite3_column_int(st, 3)));
    json_object_set_new(o, "requirement", col_json(st, 4, bad));
    json_object_set_new(o, "state", col_str(st, 5, bad));
    json_object_set_new(o, "expires_ms", json_integer(sqlite3_column_int64(st, 6)));
    json_object_set_new(o, "created_ms", json_integer(sqlite3_column_int64(st, 7)));
    return o;
}

static enum bt_err sq_approval_get(void *be, const char *approval_id, json_t **out, char *err,
                                   size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = prep(s, S_APPROVAL_GET, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, approval_id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        bt_fmt(err, errlen, "%s: no approval '%.64s'", s->path, approval_id);
        e = BT_ENOENT;
    } else if (rc != SQLITE_ROW) {
        e = sq_fail(s, rc, err, errlen, "read approval '%.64s'", approval_id);
    } else {
        bool bad = false;
        json_t *o = approval_row(st, &bad);
        if (bad) {
            bt_fmt(err, errlen, "%s: approval '%.64s' is damaged", s->path, approval_id);
            json_decref(o);
            e = BT_ECORRUPT;
        } else {
            *out = o;
        }
    }
    done(st);
    return e;
}

/* Approvals a fixed statement lists (pending, or open), at most
 * BT_STORE__PENDING_MAX; `which` names them in messages. */
static enum bt_err approvals_list(struct sq *s, enum sq_stmt id, const char *which, json_t **out,
                                  char *err, size_t errlen)
{
    sqlite3_stmt *st;
    enum bt_err e = prep(s, id, &st, err, errlen);
    if (e != BT_OK)
        return e;
    sqlite3_bind_int(st, 1, BT_STORE__PENDING_MAX);
    char what[64];
    bt_fmt(what, sizeof what, "%s approvals", which);
    return collect_rows(s, st, approval_row, what, out, err, errlen);
}

static enum bt_err sq_approvals_pending(void *be, json_t **out, char *err, size_t errlen)
{
    return approvals_list(be, S_APPROVALS_PENDING, "pending", out, err, errlen);
}

/* ---- approval dialogue ------------------------------------------------------ */

/* One approval_decisions row (S_APPROVAL_DECISIONS) as a new object. */
static json_t *decision_row(sqlite3_stmt *st, bool *bad)
{
    json_t *o = json_object();
    json_object_set_new(o, "user", col_str(st, 0, bad));
    json_object_set_new(o, "decision", col_str(st, 1, bad));
    json_object_set_new(o, "step", json_integer(sqlite3_column_int(st, 2)));
    json_object_set_new(o, "via", col_str(st, 3, bad));
    json_object_set_new(o, "ts_ms", json_integer(sqlite3_column_int64(st, 4)));
    return o;
}

static enum bt_err sq_approval_decisions(void *be, const char *approval_id, json_t **out, char *err,
                                         size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = prep(s, S_APPROVAL_DECISIONS, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, approval_id);
    char what[128];
    bt_fmt(what, sizeof what, "decisions on approval '%.64s'", approval_id);
    return collect_rows(s, st, decision_row, what, out, err, errlen);
}

/* An optional time column: its integer, or JSON null for SQL NULL. */
static json_t *col_ms(sqlite3_stmt *st, int i)
{
    return sqlite3_column_type(st, i) == SQLITE_NULL ? json_null()
                                                     : json_integer(sqlite3_column_int64(st, i));
}

/* The approval row and its decisions, read inside the caller's transaction. */
static enum bt_err approval_locked_read(struct sq *s, const char *approval_id, json_t **out,
                                        char *err, size_t errlen)
{
    sqlite3_stmt *st;
    enum bt_err e = prep(s, S_APPROVAL_LOCK, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, approval_id);
    json_t *o = NULL;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        bt_fmt(err, errlen, "%s: no approval '%.64s'", s->path, approval_id);
        e = BT_ENOENT;
    } else if (rc != SQLITE_ROW) {
        e = sq_fail(s, rc, err, errlen, "read approval '%.64s'", approval_id);
    } else {
        bool bad = false;
        o = approval_row(st, &bad);
        json_object_set_new(o, "updated_ms", json_integer(sqlite3_column_int64(st, 8)));
        json_object_set_new(o, "reminded_ms", col_ms(st, 9));
        json_object_set_new(o, "escalated_ms", col_ms(st, 10));
        if (bad) {
            bt_fmt(err, errlen, "%s: approval '%.64s' is damaged", s->path, approval_id);
            e = BT_ECORRUPT;
        }
    }
    done(st);
    json_t *decisions = NULL;
    if (e == BT_OK && (e = sq_approval_decisions(s, approval_id, &decisions, err, errlen)) == BT_OK)
        json_object_set_new(o, "decisions", decisions);
    if (e != BT_OK) {
        json_decref(o);
        return e;
    }
    *out = o;
    return BT_OK;
}

/* The read-check-write of the approval dialogue. BEGIN IMMEDIATE takes the
 * write lock before the approval is read, so a second connection (another
 * thread or process) waits at its BEGIN and then reads this one's decision:
 * two approvers racing for the last approval cannot both see "one missing"
 * and both complete it. (A PostgreSQL backend does the same with SELECT ...
 * FOR UPDATE on the approval row.) The approval object stays alive until
 * the writes are done, because the change may borrow strings from it. */
static enum bt_err sq_approval_update(void *be, const char *approval_id,
                                      bt_store__approval_check check, void *ctx, char *err,
                                      size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    json_t *o = NULL;
    enum bt_err e = tx_begin(s, true, err, errlen);
    if (e != BT_OK)
        return e;
    struct bt_store_approval_change ch = {NULL, NULL, NULL, -1, NULL, false, false};
    if ((e = approval_locked_read(s, approval_id, &o, err, errlen)) == BT_OK)
        e = check(ctx, o, &ch, err, errlen);
    int64_t now = bt_wall_ms();
    char what[160];
    bt_fmt(what, sizeof what, "update approval '%.64s'", approval_id);
    if (e == BT_OK && ch.user && (e = prep(s, S_APPROVAL_DECIDE, &st, err, errlen)) == BT_OK) {
        bind_text(st, 1, approval_id);
        bind_text(st, 2, ch.user);
        bind_text(st, 3, ch.decision);
        sqlite3_bind_int(st, 4, ch.step);
        bind_text(st, 5, ch.via);
        sqlite3_bind_int64(st, 6, now);
        e = step_done(s, st, err, errlen, what);
    }
    if (e == BT_OK && ch.state && (e = prep(s, S_APPROVAL_STATE, &st, err, errlen)) == BT_OK) {
        bind_text(st, 1, ch.state);
        sqlite3_bind_int64(st, 2, now);
        bind_text(st, 3, approval_id);
        e = step_done(s, st, err, errlen, what);
    }
    if (e == BT_OK && (ch.reminded || ch.escalated) &&
        (e = prep(s, S_APPROVAL_MARK, &st, err, errlen)) == BT_OK) {
        sqlite3_bind_int(st, 1, ch.reminded);
        sqlite3_bind_int64(st, 2, now);
        sqlite3_bind_int(st, 3, ch.escalated);
        bind_text(st, 4, approval_id);
        e = step_done(s, st, err, errlen, what);
    }
    e = tx_end(s, e, err, errlen);
    json_decref(o);
    return e;
}

static enum bt_err sq_approvals_unstarted(void *be, int64_t decided_before_ms, json_t **out,
                                          char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = prep(s, S_APPROVALS_UNSTARTED, &st, err, errlen);
    if (e != BT_OK)
        return e;
    sqlite3_bind_int64(st, 1, decided_before_ms);
    sqlite3_bind_int(st, 2, BT_STORE__PENDING_MAX);
    return collect_rows(s, st, approval_row, "approved plans that never started", out, err, errlen);
}

static enum bt_err sq_approvals_open(void *be, json_t **out, char *err, size_t errlen)
{
    return approvals_list(be, S_APPROVALS_OPEN, "open", out, err, errlen);
}

/* ---- settings -------------------------------------------------------------- */

/* INSERT OR IGNORE then SELECT: settings are never deleted, so whichever
 * insert came first (in any process) is what both callers read back. */
static enum bt_err sq_setting_ensure(void *be, const char *key, const char *value, char **out,
                                     char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = prep(s, S_SETTING_INSERT, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, key);
    bind_text(st, 2, value);
    sqlite3_bind_int64(st, 3, bt_wall_ms());
    if ((e = step_done(s, st, err, errlen, "store setting")) != BT_OK)
        return e;
    if ((e = prep(s, S_SETTING_GET, &st, err, errlen)) != BT_OK)
        return e;
    bind_text(st, 1, key);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
        *out = col_dup(st, 0);
    } else if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
        bt_fmt(err, errlen, "%s: setting '%.64s' vanished after it was written", s->path, key);
        e = BT_ESTORE;
    } else {
        e = sq_fail(s, rc, err, errlen, "read setting '%.64s'", key);
    }
    done(st);
    return e;
}

/* ---- audit log --------------------------------------------------------------- */

/* Inside BEGIN IMMEDIATE: read the last entry, hash the new one on top of
 * it, insert, commit. The write lock is held from the read to the commit, so
 * two connections (threads or processes) cannot both chain onto the same
 * entry. ts_ms never goes below the previous entry's, so "since" queries
 * stay correct when the wall clock steps back. */
static enum bt_err sq_audit_append(void *be, const char *request_id, const char *actor,
                                   const char *event, const json_t *detail, char *err,
                                   size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st = NULL;
    char *detail_text = NULL;
    if (detail && !(detail_text = bt_json_canonical(detail))) {
        bt_fmt(err, errlen, "%s: audit detail cannot be encoded as JSON", s->path);
        return BT_EINVAL;
    }
    enum bt_err e = tx_begin(s, true, err, errlen);
    if (e != BT_OK) {
        free(detail_text);
        return e;
    }
    long long seq = 1;
    int64_t ts = bt_wall_ms();
    char prev[65];
    bt_strlcpy(prev, BT_STORE__AUDIT_GENESIS, sizeof prev);
    e = prep(s, S_AUDIT_LAST, &st, err, errlen);
    if (e == BT_OK) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            const char *h = (const char *)sqlite3_column_text(st, 2);
            seq = sqlite3_column_int64(st, 0) + 1;
            if (sqlite3_column_int64(st, 1) > ts)
                ts = sqlite3_column_int64(st, 1);
            if (!h || !bt_strlcpy(prev, h, sizeof prev)) {
                bt_fmt(err, errlen, "%s: audit log: the last entry's hash is damaged", s->path);
                e = BT_ECORRUPT;
            }
        } else if (rc != SQLITE_DONE) {
            e = sq_fail(s, rc, err, errlen, "read the last audit entry");
        }
        done(st);
    }
    char hash[65];
    if (e == BT_OK)
        e = bt_store__audit_hash(prev, seq, ts, request_id, actor, event, detail, hash, err,
                                 errlen);
    if (e == BT_OK)
        e = prep(s, S_AUDIT_INSERT, &st, err, errlen);
    if (e == BT_OK) {
        sqlite3_bind_int64(st, 1, seq);
        sqlite3_bind_int64(st, 2, ts);
        bind_text(st, 3, request_id);
        bind_text(st, 4, actor);
        bind_text(st, 5, event);
        bind_text(st, 6, detail_text);
        bind_text(st, 7, prev);
        bind_text(st, 8, hash);
        e = step_done(s, st, err, errlen, "append audit entry");
    }
    free(detail_text);
    return tx_end(s, e, err, errlen);
}

/* One audit_log row (SQ_AUDIT_COLS) as a new object; *bad on junk. */
static json_t *audit_row(sqlite3_stmt *st, bool *bad)
{
    json_t *o = json_object();
    json_object_set_new(o, "seq", json_integer(sqlite3_column_int64(st, 0)));
    json_object_set_new(o, "ts_ms", json_integer(sqlite3_column_int64(st, 1)));
    json_object_set_new(o, "request_id", col_str(st, 2, bad));
    json_object_set_new(o, "actor", col_str(st, 3, bad));
    json_object_set_new(o, "event", col_str(st, 4, bad));
    json_object_set_new(o, "detail", col_json(st, 5, bad));
    json_object_set_new(o, "prev_hash", col_str(st, 6, bad));
    json_object_set_new(o, "hash", col_str(st, 7, bad));
    return o;
}

static enum bt_err sq_audit_list(void *be, int64_t since_ms, long limit, json_t **out, char *err,
                                 size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = prep(s, S_AUDIT_LIST, &st, err, errlen);
    if (e != BT_OK)
        return e;
    sqlite3_bind_int64(st, 1, since_ms);
    sqlite3_bind_int64(st, 2, limit);
    return collect_rows(s, st, audit_row, "audit log entries", out, err, errlen);
}

static enum bt_err sq_audit_of(void *be, const char *request_id, long limit, json_t **out,
                               char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = prep(s, S_AUDIT_OF, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, request_id);
    sqlite3_bind_int64(st, 2, limit);
    return collect_rows(s, st, audit_row, "audit log entries", out, err, errlen);
}

/* Check one row against the chain so far: seq follows on, prev_hash is the
 * previous entry's hash, hash matches the content. Returns false with err
 * naming the first bad seq. */
static bool audit_row_ok(struct sq *s, sqlite3_stmt *st, long long expect_seq, const char *prev,
                         char *err, size_t errlen)
{
    long long seq = sqlite3_column_int64(st, 0);
    if (seq != expect_seq) {
        if (seq > expect_seq)
            bt_fmt(err, errlen,
                   "%s: audit log: chain broken at seq %lld: entry is missing "
                   "(next is %lld)",
                   s->path, expect_seq, seq);
        else
            bt_fmt(err, errlen, "%s: audit log: chain broken at seq %lld: unexpected entry",
                   s->path, seq);
        return false;
    }
    const char *ph = (const char *)sqlite3_column_text(st, 6);
    const char *h = (const char *)sqlite3_column_text(st, 7);
    if (!ph || strcmp(ph, prev) != 0) {
        bt_fmt(err, errlen,
               "%s: audit log: chain broken at seq %lld: prev_hash does not match entry %lld",
               s->path, seq, seq - 1);
        return false;
    }
    bool bad = false;
    json_t *detail = col_json(st, 5, &bad);
    if (bad || !(json_is_object(detail) || json_is_null(detail))) {
        bt_fmt(err, errlen, "%s: audit log: chain broken at seq %lld: detail is not a JSON object",
               s->path, seq);
        json_decref(detail);
        return false;
    }
    char hash[65], ignored[BT_ERRLEN];
    enum bt_err e = bt_store__audit_hash(
        prev, seq, sqlite3_column_int64(st, 1), (const char *)sqlite3_column_text(st, 2),
        (const char *)sqlite3_column_text(st, 3), (const char *)sqlite3_column_text(st, 4),
        json_is_null(detail) ? NULL : detail, hash, ignored, sizeof ignored);
    json_decref(detail);
    if (e != BT_OK || !h || strcmp(hash, h) != 0) {
        bt_fmt(err, errlen,
               "%s: audit log: chain broken at seq %lld: hash does not match the entry's content",
               s->path, seq);
        return false;
    }
    return true;
}

/* Walk the chain from seq 1 in batches of SQ_AUDIT_BATCH inside one read
 * transaction: a consistent snapshot (appenders carry on meanwhile, in WAL)
 * and bounded memory however long the log is. */
/* ---- team chat ------------------------------------------------------------ */

static enum bt_err sq_chat_claim(void *be, const char *key, bool *claimed, char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_CHAT_CLAIM, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, key);
    sqlite3_bind_int64(st, 2, bt_wall_ms());
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "claim chat event %.64s", key);
    else
        *claimed = sqlite3_changes(s->db) == 1;
    done(st);
    return e;
}

static enum bt_err sq_chat_post_add(void *be, const char *approval_id, const char *surface,
                                    const char *channel, const char *post, const char *thread,
                                    char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_CHAT_POST_ADD, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, surface);
    bind_text(st, 2, channel);
    bind_text(st, 3, post);
    bind_text(st, 4, approval_id);
    bind_text(st, 5, thread);
    sqlite3_bind_int64(st, 6, bt_wall_ms());
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        e = sq_fail(s, rc, err, errlen, "record the chat post of %.64s", approval_id);
    done(st);
    return e;
}

static enum bt_err sq_chat_posts_of(void *be, const char *approval_id, json_t **out, char *err,
                                    size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_CHAT_POSTS_OF, &st, err, errlen);
    if (e != BT_OK)
        return e;
    bind_text(st, 1, approval_id);
    json_t *list = json_array();
    int rc, rows = 0;
    while (rows < BT_STORE__CHAT_POSTS_MAX && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        rows++;
        json_array_append_new(list,
                              json_pack("{s:s?, s:s?, s:s?, s:s*, s:I}", "surface",
                                        (const char *)sqlite3_column_text(st, 0), "channel",
                                        (const char *)sqlite3_column_text(st, 1), "post",
                                        (const char *)sqlite3_column_text(st, 2), "thread",
                                        (const char *)sqlite3_column_text(st, 3), "created_ms",
                                        (json_int_t)sqlite3_column_int64(st, 4)));
    }
    if (rows < BT_STORE__CHAT_POSTS_MAX && rc != SQLITE_DONE) {
        e = sq_fail(s, rc, err, errlen, "read the chat posts of %.64s", approval_id);
        json_decref(list);
    } else {
        *out = list;
    }
    done(st);
    return e;
}

static enum bt_err sq_maintain(void *be, char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = xprep(s, SX_CHAT_FORGET, &st, err, errlen);
    if (e != BT_OK)
        return e;
    sqlite3_bind_int64(st, 1, bt_wall_ms() - BT_STORE__CHAT_EVENT_KEEP_MS);
    int frc = sqlite3_step(st);
    done(st);
    if (frc != SQLITE_DONE && (frc & 0xff) != SQLITE_BUSY)
        return sq_fail(s, frc, err, errlen, "forget old chat events");
    int logged = 0, done = 0;
    /* PASSIVE: copy what no reader still needs into the database file and
     * sync it, without blocking a writer. Under steady load some reader
     * always holds an older snapshot, so the log is never reset and keeps
     * growing; past SQ_WAL_TRUNCATE_FRAMES a TRUNCATE waits for a quiet
     * moment (writers wait for it, briefly: the frames are copied already)
     * and empties it. */
    int rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &logged, &done);
    if (rc == SQLITE_OK && logged > SQ_WAL_TRUNCATE_FRAMES)
        rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, &logged, &done);
    if (rc != SQLITE_OK && (rc & 0xff) != SQLITE_BUSY)
        return sq_fail(s, rc, err, errlen, "checkpoint");
    return BT_OK; /* busy: readers kept it from finishing; the next one will */
}

static enum bt_err sq_audit_verify(void *be, long long *entries, char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = tx_begin(s, false, err, errlen);
    if (e != BT_OK)
        return e;
    e = prep(s, S_AUDIT_BATCH, &st, err, errlen);
    char prev[65];
    bt_strlcpy(prev, BT_STORE__AUDIT_GENESIS, sizeof prev);
    /* Start below any seq so that a row inserted with seq <= 0 is seen. */
    long long last = INT64_MIN, expect = 1;
    bool more = true;
    while (e == BT_OK && more) {
        sqlite3_bind_int64(st, 1, last);
        sqlite3_bind_int(st, 2, SQ_AUDIT_BATCH);
        int rc, rows = 0;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            rows++;
            if (!audit_row_ok(s, st, expect, prev, err, errlen)) {
                e = BT_ECORRUPT;
                break;
            }
            bt_strlcpy(prev, (const char *)sqlite3_column_text(st, 7), sizeof prev);
            last = sqlite3_column_int64(st, 0);
            expect = last + 1;
            (*entries)++;
        }
        if (e == BT_OK && rc != SQLITE_DONE)
            e = sq_fail(s, rc, err, errlen, "read the audit log");
        done(st);
        more = rows == SQ_AUDIT_BATCH;
    }
    return tx_end(s, e, err, errlen);
}

/* bt_store__sqlite_ops: the SQLite backend's table (see store_int.h). The
 * target handed to open is a file path, or ":memory:" for a private
 * in-memory store (no WAL; gone at close). */
/* Change notifications need PostgreSQL's LISTEN/NOTIFY: SQLite has no
 * way to tell another process that something changed, so a process sees
 * other processes' changes only when it reads them. */
static enum bt_err sq_listen(void *be, char *err, size_t errlen)
{
    struct sq *s = be;
    bt_fmt(err, errlen, "%s: change notifications need PostgreSQL", s->path);
    return BT_EUNAVAIL;
}

static enum bt_err sq_changes(void *be, int timeout_ms, json_t **ids, char *err, size_t errlen)
{
    (void)timeout_ms;
    (void)ids;
    return sq_listen(be, err, errlen);
}

const struct bt_store__ops bt_store__sqlite_ops = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .schema_version = sq_schema_version,
    .assets_replace = sq_assets_replace,
    .assets_query = sq_assets_query,
    .assets_count = sq_assets_count,
    .assets_breakdown = sq_assets_breakdown,
    .request_add = sq_request_add,
    .decision_add = sq_decision_add,
    .plan_add = sq_plan_add,
    .plan_get = sq_plan_get,
    .execution_add = sq_execution_add,
    .execution_set = sq_execution_set,
    .step_add = sq_step_add,
    .step_set = sq_step_set,
    .execution_get = sq_execution_get,
    .execution_transition = sq_execution_transition,
    .execution_own = sq_execution_own,
    .execution_progress = sq_execution_progress,
    .executions_running = sq_executions_running,
    .locks_acquire = sq_locks_acquire,
    .locks_release = sq_locks_release,
    .locks_list = sq_locks_list,
    .job_add = sq_job_add,
    .job_claim = sq_job_claim,
    .job_heartbeat = sq_job_heartbeat,
    .job_finish = sq_job_finish,
    .jobs_of = sq_jobs_of,
    .batch_begin = sq_batch_begin,
    .batch_end = sq_batch_end,
    .notify = sq_notify,
    .notify_user = sq_notify_user,
    .notifications = sq_notifications,
    .notification_delivered = sq_notification_delivered,
    .console_token_add = sq_console_token_add,
    .console_token_user = sq_console_token_user,
    .requests_of = sq_requests_of,
    .request_get = sq_request_get,
    .approval_add = sq_approval_add,
    .approval_get = sq_approval_get,
    .approvals_pending = sq_approvals_pending,
    .approval_update = sq_approval_update,
    .approval_decisions = sq_approval_decisions,
    .approvals_open = sq_approvals_open,
    .approvals_unstarted = sq_approvals_unstarted,
    .setting_ensure = sq_setting_ensure,
    .audit_append = sq_audit_append,
    .audit_list = sq_audit_list,
    .audit_of = sq_audit_of,
    .audit_verify = sq_audit_verify,
    .maintain = sq_maintain,
    .chat_claim = sq_chat_claim,
    .chat_post_add = sq_chat_post_add,
    .chat_posts_of = sq_chat_posts_of,
    .listen = sq_listen,
    .changes = sq_changes,
};
