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
    S_SETTING_INSERT,
    S_SETTING_GET,
    S_AUDIT_LAST,
    S_AUDIT_INSERT,
    S_AUDIT_LIST,
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
    [S_SETTING_INSERT] = "INSERT OR IGNORE INTO settings(key, value, created_ms) VALUES (?, ?, ?)",
    [S_SETTING_GET] = "SELECT value FROM settings WHERE key = ?",
    [S_AUDIT_LAST] = "SELECT seq, ts_ms, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
    [S_AUDIT_INSERT] = "INSERT INTO audit_log(" SQ_AUDIT_COLS ") VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    [S_AUDIT_LIST] = "SELECT " SQ_AUDIT_COLS " FROM audit_log WHERE ts_ms >= ?"
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

static enum bt_err tx_begin(struct sq *s, bool immediate, char *err, size_t errlen)
{
    return run(s, immediate ? S_BEGIN_IMMEDIATE : S_BEGIN, err, errlen, "begin transaction");
}

static enum bt_err tx_commit(struct sq *s, char *err, size_t errlen)
{
    return run(s, S_COMMIT, err, errlen, "commit");
}

/* Roll back if a transaction is open; keeps err as it is (the first failure
 * is the one worth reporting). */
static void tx_rollback(struct sq *s)
{
    if (sqlite3_get_autocommit(s->db))
        return;
    char ignored[BT_ERRLEN];
    run(s, S_ROLLBACK, ignored, sizeof ignored, "rollback");
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
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        bt_fmt(err, errlen, "%s: cannot open for writing: %s", path, strerror(errno));
        return BT_EIO;
    }
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
    sqlite3_close_v2(s->db);
    free(s->path);
    free(s);
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
        sqlite3_busy_timeout(s->db, SQ_BUSY_TIMEOUT_MS);
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
static enum bt_err assets_stmt(struct sq *s, const struct bt_store__asset_filter *f, bool count,
                               sqlite3_stmt **out, char *err, size_t errlen)
{
    uint32_t key = f->present | (count ? SQ_DYN_COUNT : 0);
    for (int i = 0; i < SQ_DYN_SLOTS; i++) {
        if (s->dyn[i].stmt && s->dyn[i].key == key) {
            *out = s->dyn[i].stmt;
            return BT_OK;
        }
    }
    bt_buf sql = BT_BUF_INIT(8192);
    bt_buf_puts(&sql, count ? "SELECT count(*) FROM assets" : "SELECT doc FROM assets");
    const char *sep = " WHERE ";
    for (int k = 0; k < BT_STORE__AF_COUNT; k++) {
        if (!(f->present & (1u << k)))
            continue;
        bt_buf_puts(&sql, sep);
        bt_buf_puts(&sql, af_sql[k].sql);
        sep = " AND ";
    }
    if (!count)
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
    enum bt_err e = assets_stmt(s, f, false, &st, err, errlen);
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
    enum bt_err e = assets_stmt(s, f, true, &st, err, errlen);
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

static enum bt_err sq_approvals_pending(void *be, json_t **out, char *err, size_t errlen)
{
    struct sq *s = be;
    sqlite3_stmt *st;
    enum bt_err e = prep(s, S_APPROVALS_PENDING, &st, err, errlen);
    if (e != BT_OK)
        return e;
    sqlite3_bind_int(st, 1, BT_STORE__PENDING_MAX);
    json_t *arr = json_array();
    bool bad = false;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        json_array_append_new(arr, approval_row(st, &bad));
    if (rc != SQLITE_DONE) {
        e = sq_fail(s, rc, err, errlen, "list pending approvals");
    } else if (bad) {
        bt_fmt(err, errlen, "%s: a pending approval is damaged", s->path);
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
    json_t *arr = json_array();
    bool bad = false;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        json_array_append_new(arr, audit_row(st, &bad));
    if (rc != SQLITE_DONE) {
        e = sq_fail(s, rc, err, errlen, "list the audit log");
    } else if (bad) {
        bt_fmt(err, errlen, "%s: audit log: an entry is damaged (run verify)", s->path);
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
const struct bt_store__ops bt_store__sqlite_ops = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .schema_version = sq_schema_version,
    .assets_replace = sq_assets_replace,
    .assets_query = sq_assets_query,
    .assets_count = sq_assets_count,
    .request_add = sq_request_add,
    .decision_add = sq_decision_add,
    .plan_add = sq_plan_add,
    .plan_get = sq_plan_get,
    .execution_add = sq_execution_add,
    .execution_set = sq_execution_set,
    .step_add = sq_step_add,
    .step_set = sq_step_set,
    .execution_get = sq_execution_get,
    .approval_add = sq_approval_add,
    .approval_get = sq_approval_get,
    .approvals_pending = sq_approvals_pending,
    .setting_ensure = sq_setting_ensure,
    .audit_append = sq_audit_append,
    .audit_list = sq_audit_list,
    .audit_verify = sq_audit_verify,
};
