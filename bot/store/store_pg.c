/*
 * store_pg.c - the PostgreSQL backend of the store (libpq).
 *
 * Location: postgres://USER@HOST:PORT/DB or postgresql://... (anything libpq
 * takes as a URI, query parameters included), never with a password: it
 * comes from the environment (PGPASSWORD, PGPASSFILE, ~/.pgpass), which
 * libpq reads itself. A URL carrying a password is refused before anything
 * connects, so a password can end up neither in baton.yaml nor in a log line.
 *
 * Session settings (appended to any `options` the URL gives, so they win):
 * connect_timeout 5 s, statement_timeout 30 s, lock_timeout 5 s (a row or
 * advisory lock held elsewhere for longer fails the call with BT_ETIMEOUT,
 * as SQLite's 5 s busy timeout does), idle_in_transaction_session_timeout
 * 60 s, TCP keepalives and tcp_user_timeout 30 s (a dead peer cannot hang a
 * call), client_encoding UTF8. The server must be PostgreSQL 11 or newer
 * and the database UTF8.
 *
 * Schema: the tables, columns, indexes and migration versions of
 * store_sqlite.c, in PostgreSQL types: INTEGER is BIGINT, SQLite's INTEGER
 * PRIMARY KEY an identity column, JSON stays TEXT so it comes back byte for
 * byte as it was written (JSONB would reorder keys and the plan hash would
 * no longer match). Where SQLite needs no counterpart:
 *   - COLLATE NOCASE is lower(x COLLATE "C"): ASCII-only folding, exactly
 *     SQLite's NOCASE whatever the database's locale; a NOCASE primary key
 *     is a unique index on that expression;
 *   - SQLite orders some lists by rowid (insertion order): those tables get
 *     a row_seq identity column;
 *   - PRAGMA application_id is a comment on schema_migrations ('baton
 *     store'): a schema with tables but without it is another program's,
 *     and is refused (BT_ECORRUPT) without writing anything;
 *   - the append-only triggers have the same names, plus one for TRUNCATE.
 * Migrations run one transaction each, under pg_advisory_xact_lock, and
 * re-read the version under the lock, so processes starting together apply
 * each migration once.
 *
 * What stands in for SQLite's BEGIN IMMEDIATE (one writer at a time):
 *   - audit_append takes a transaction-scoped advisory lock (the chain
 *     lock) before reading the last entry, so two processes never chain
 *     onto the same entry;
 *   - approval_update reads the approval with SELECT ... FOR UPDATE and
 *     holds it through the check callback to the commit;
 *   - job_claim picks with SELECT ... FOR UPDATE SKIP LOCKED (two workers
 *     never get the same job, and neither waits for the other);
 *   - locks_acquire/locks_release hold an advisory lock (the asset-lock
 *     lock), so the look-then-insert is as atomic as under SQLite, and
 *     job_claim takes it shared to see no half-made acquisition;
 *   - assets_replace holds an advisory lock of its own.
 * All advisory locks use the key pair ('batn', n), so they cannot collide
 * with another application's.
 *
 * Connection loss. Before each call a dead connection (PQstatus not OK, or
 * one the server closed while idle, seen by a non-blocking read) is
 * replaced. Every call that writes runs in a transaction of its own (BEGIN
 * ... COMMIT), reads run alone or in a read-only snapshot. When the
 * connection breaks during a call (PQstatus bad, SQLSTATE class 08,
 * 57P01-57P03), the server has rolled back whatever was not committed, so:
 * the connection is rebuilt (first try at once, then 50 ms doubling, at
 * most 5 s per call in all) and the whole call is run again, once. It is
 * not run again (the caller gets BT_EUNAVAIL) when the break came while
 * COMMIT was under way (it may have committed), after approval_update's
 * check had been called (store.h: it is called once), or inside a batch:
 * the batch's transaction is gone, so every call until batch_end fails
 * and batch_end reports the batch as rolled back.
 *
 * Statements: fixed statements are prepared once per connection (again
 * after a reconnect); asset queries are assembled from a fixed table of
 * fragments with $n placeholders. All values travel as parameters.
 *
 * Change notifications (store.h). A write that changes an approval's card
 * runs one more statement in its transaction, pg_notify('baton_changes',
 * approval_id) (for an execution: one per approval of it, found through the
 * approvals_execution index; none when it has no approval), so the
 * announcement leaves at COMMIT and never for a rollback, a failed batch
 * operation (its savepoint is rolled back) or a retried attempt that did
 * not commit. PostgreSQL folds identical announcements of one transaction
 * into one. A listening handle sends LISTEN on every new connection and
 * waits with poll() on PQsocket, then PQconsumeInput and PQnotifies. Its
 * reconnects are asynchronous (PQconnectStartParams/PQconnectPoll) and
 * spread over bt_store_changes calls, so a caller polling every second
 * (the server's listener thread) can always stop within about a second.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "bot/log.h"
#include "bot/store/store.h"
#include "bot/store/store_int.h"

/* Advisory lock keys: (PG_LOCK_CLASS, n). 'batn' as an int4. */
#define PG_LOCK_CLASS "1650553966"
#define PG_LOCK_MIGRATE "1"
#define PG_LOCK_AUDIT "2"
#define PG_LOCK_ASSET_LOCKS "3"
#define PG_LOCK_ASSETS "4"
/* The comment that marks a schema as a baton store. */
#define PG_MARK "baton store"
/* The LISTEN/NOTIFY channel of change announcements (payload: an approval
 * id, at most 255 bytes: far below NOTIFY's 8000). */
#define PG_CHANNEL "baton_changes"

#define PG_CONNECT_TIMEOUT_S 5
#define PG_RECONNECT_BUDGET_MS 5000
#define PG_RECONNECT_FIRST_MS 50
#define PG_LOCK_TIMEOUT_MS 5000
#define PG_STATEMENT_TIMEOUT_MS 30000
#define PG_SESSION_OPTIONS                                                                         \
    "-c statement_timeout=30000 -c lock_timeout=5000 "                                             \
    "-c idle_in_transaction_session_timeout=60000"
#define PG_MIN_SERVER 110000
/* Audit entries read per batch while verifying (bounded memory). */
#define PG_AUDIT_BATCH 1000
#define PG_RUNNING_MAX 10000
#define PG_MAX_PARAMS 24

/* ASCII-only case folding of a text expression (SQLite's NOCASE). */
#define PG_FOLD(x) "lower((" x ") COLLATE \"C\")"
/* Execution states that end an execution (store.h). */
#define PG_TERMINAL "('completed', 'failed', 'cancelled', 'timed_out', 'interrupted')"

/* ---- migrations -----------------------------------------------------------
 * pg_migrations[i] brings the schema from version i to i+1, the same
 * versions as store_sqlite.c's list (the assert below fails the build when
 * one is added there and not here). Never edit one that has shipped. */
static const char *const pg_migrations[] = {
    /* 1: everything. */
    "CREATE TABLE schema_migrations ("
    " version BIGINT PRIMARY KEY,"
    " applied_ms BIGINT NOT NULL);"
    "COMMENT ON TABLE schema_migrations IS '" PG_MARK "';"

    "CREATE TABLE settings ("
    " key TEXT PRIMARY KEY,"
    " value TEXT NOT NULL,"
    " created_ms BIGINT NOT NULL);"

    "CREATE TABLE assets ("
    " name TEXT NOT NULL PRIMARY KEY,"
    " hostname TEXT,"
    " ip TEXT,"
    " os TEXT,"
    " os_version TEXT,"
    " role TEXT,"
    " environment TEXT,"
    " status TEXT,"
    " datacenter TEXT,"
    " connection TEXT,"
    " cpu BIGINT,"
    " ram_gb BIGINT,"
    " tags TEXT NOT NULL DEFAULT '[]',"
    " doc TEXT NOT NULL);"
    "CREATE UNIQUE INDEX assets_name_nocase ON assets (" PG_FOLD(
        "name") ");"
                "CREATE INDEX assets_hostname ON assets (" PG_FOLD(
                    "hostname") ");"
                                "CREATE INDEX assets_ip ON assets (" PG_FOLD(
                                    "ip") ");"

                                          "CREATE TABLE requests ("
                                          " request_id TEXT PRIMARY KEY,"
                                          " user_id TEXT,"
                                          " channel TEXT,"
                                          " text TEXT NOT NULL,"
                                          " created_ms BIGINT NOT NULL,"
                                          " row_seq BIGINT GENERATED ALWAYS AS IDENTITY);"

                                          "CREATE TABLE decisions ("
                                          " decision_id BIGINT GENERATED BY DEFAULT AS IDENTITY "
                                          "PRIMARY KEY,"
                                          " request_id TEXT NOT NULL REFERENCES "
                                          "requests(request_id),"
                                          " decision_json TEXT NOT NULL,"
                                          " created_ms BIGINT NOT NULL);"
                                          "CREATE INDEX decisions_request ON decisions(request_id);"

                                          "CREATE TABLE plans ("
                                          " plan_id TEXT PRIMARY KEY,"
                                          " request_id TEXT NOT NULL REFERENCES "
                                          "requests(request_id),"
                                          " canonical_json TEXT NOT NULL,"
                                          " sha256 TEXT NOT NULL,"
                                          " risk TEXT NOT NULL,"
                                          " approval_level BIGINT NOT NULL,"
                                          " created_ms BIGINT NOT NULL);"
                                          "CREATE INDEX plans_request ON plans(request_id);"

                                          "CREATE TABLE executions ("
                                          " execution_id TEXT PRIMARY KEY,"
                                          " plan_id TEXT NOT NULL REFERENCES plans(plan_id),"
                                          " state TEXT NOT NULL,"
                                          " result_json TEXT,"
                                          " created_ms BIGINT NOT NULL,"
                                          " updated_ms BIGINT NOT NULL);"
                                          "CREATE INDEX executions_plan ON executions(plan_id);"
                                          "CREATE INDEX executions_state ON executions(state);"

                                          "CREATE TABLE steps ("
                                          " execution_id TEXT NOT NULL REFERENCES "
                                          "executions(execution_id),"
                                          " step_index BIGINT NOT NULL,"
                                          " tool TEXT NOT NULL,"
                                          " state TEXT NOT NULL,"
                                          " result_json TEXT,"
                                          " created_ms BIGINT NOT NULL,"
                                          " updated_ms BIGINT NOT NULL,"
                                          " PRIMARY KEY (execution_id, step_index));"

                                          "CREATE TABLE approvals ("
                                          " approval_id TEXT PRIMARY KEY,"
                                          " plan_id TEXT NOT NULL REFERENCES plans(plan_id),"
                                          " execution_id TEXT REFERENCES executions(execution_id),"
                                          " level BIGINT NOT NULL,"
                                          " requirement_json TEXT NOT NULL,"
                                          " state TEXT NOT NULL DEFAULT 'pending',"
                                          " expires_ms BIGINT NOT NULL,"
                                          " created_ms BIGINT NOT NULL,"
                                          " updated_ms BIGINT NOT NULL,"
                                          " row_seq BIGINT GENERATED ALWAYS AS IDENTITY);"
                                          "CREATE INDEX approvals_state ON approvals(state, "
                                          "created_ms);"

                                          "CREATE TABLE approval_decisions ("
                                          " approval_id TEXT NOT NULL REFERENCES "
                                          "approvals(approval_id),"
                                          " user_id TEXT NOT NULL,"
                                          " decision TEXT NOT NULL,"
                                          " step BIGINT NOT NULL DEFAULT -1,"
                                          " ts_ms BIGINT NOT NULL,"
                                          " row_seq BIGINT GENERATED ALWAYS AS IDENTITY,"
                                          " UNIQUE (approval_id, user_id, step));"

                                          /* hash = sha256(prev_hash "\n" canonical {seq, ts_ms,
                                           * request_id, actor, event, detail}); see
                                           * bt_store__audit_hash. The triggers stop the application
                                           * from changing history by mistake (TRUNCATE skips row
                                           * triggers, hence the third). */
                                          "CREATE TABLE audit_log ("
                                          " seq BIGINT PRIMARY KEY,"
                                          " ts_ms BIGINT NOT NULL,"
                                          " request_id TEXT,"
                                          " actor TEXT,"
                                          " event TEXT NOT NULL,"
                                          " detail_json TEXT,"
                                          " prev_hash TEXT NOT NULL,"
                                          " hash TEXT NOT NULL);"
                                          "CREATE INDEX audit_log_ts ON audit_log(ts_ms);"
                                          "CREATE FUNCTION audit_log_append_only() RETURNS trigger "
                                          "LANGUAGE plpgsql AS"
                                          " $$BEGIN RAISE EXCEPTION 'audit_log is append-only'; "
                                          "END$$;"
                                          "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON "
                                          "audit_log"
                                          " FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();"
                                          "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON "
                                          "audit_log"
                                          " FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();"
                                          "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON "
                                          "audit_log"
                                          " FOR EACH STATEMENT EXECUTE FUNCTION "
                                          "audit_log_append_only();",

    /* 2: approval dialogue (decisions, reminders, escalation). */
    "ALTER TABLE approval_decisions ADD COLUMN via TEXT;"
    "ALTER TABLE approvals ADD COLUMN reminded_ms BIGINT;"
    "ALTER TABLE approvals ADD COLUMN escalated_ms BIGINT;",

    /* 3: execution engine (asset locks, background job queue, recovery). */
    "ALTER TABLE executions ADD COLUMN owner_host TEXT;"
    "ALTER TABLE executions ADD COLUMN owner_pid BIGINT;"
    "ALTER TABLE executions ADD COLUMN owner_start TEXT;"
    "ALTER TABLE executions ADD COLUMN steps_done BIGINT NOT NULL DEFAULT 0;"
    "ALTER TABLE executions ADD COLUMN steps_total BIGINT NOT NULL DEFAULT 0;"

    /* The unique index is what makes two executions never hold the same
     * asset (SQLite: the NOCASE primary key). */
    "CREATE TABLE asset_locks ("
    " asset TEXT NOT NULL,"
    " execution_id TEXT NOT NULL REFERENCES executions(execution_id),"
    " acquired_ms BIGINT NOT NULL);"
    "CREATE UNIQUE INDEX asset_locks_asset ON asset_locks (" PG_FOLD(
        "asset") ");"
                 "CREATE INDEX asset_locks_execution ON asset_locks(execution_id);"

                 "CREATE TABLE lock_waits ("
                 " seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
                 " execution_id TEXT NOT NULL UNIQUE REFERENCES executions(execution_id),"
                 " assets_json TEXT NOT NULL,"
                 " since_ms BIGINT NOT NULL,"
                 " expires_ms BIGINT NOT NULL);"

                 "CREATE TABLE jobs ("
                 " job_id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
                 " execution_id TEXT NOT NULL REFERENCES executions(execution_id),"
                 " step_index BIGINT NOT NULL DEFAULT -1,"
                 " state TEXT NOT NULL,"
                 " attempt BIGINT NOT NULL DEFAULT 0,"
                 " max_attempts BIGINT NOT NULL,"
                 " run_at_ms BIGINT NOT NULL,"
                 " assets_json TEXT NOT NULL DEFAULT '[]',"
                 " locked_by TEXT,"
                 " locked_ms BIGINT,"
                 " heartbeat_ms BIGINT,"
                 " last_error TEXT,"
                 " created_ms BIGINT NOT NULL,"
                 " updated_ms BIGINT NOT NULL);"
                 "CREATE INDEX jobs_claim ON jobs(state, run_at_ms);"
                 "CREATE INDEX jobs_execution ON jobs(execution_id);"
                 "CREATE UNIQUE INDEX jobs_one_active ON jobs(execution_id)"
                 " WHERE state IN ('available', 'running');"

                 "CREATE TABLE notifications ("
                 " notification_id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
                 " user_id TEXT,"
                 " execution_id TEXT REFERENCES executions(execution_id),"
                 " text TEXT NOT NULL,"
                 " created_ms BIGINT NOT NULL,"
                 " delivered_ms BIGINT);"
                 "CREATE INDEX notifications_user ON notifications(user_id, delivered_ms);",

    /* 4: console sign-in tokens (only the token's sha256). */
    "CREATE TABLE console_tokens ("
    " token_sha256 TEXT PRIMARY KEY,"
    " user_id TEXT NOT NULL,"
    " created_ms BIGINT NOT NULL,"
    " last_used_ms BIGINT);"
    "CREATE INDEX requests_user ON requests(user_id, created_ms);",

    /* 5: a request's audit trail, shown in the console's history. */
    "CREATE INDEX audit_log_request ON audit_log(request_id, seq);",

    /* 6: team chat: handled platform events, and where approval cards are. */
    "CREATE TABLE chat_events ("
    " event_key TEXT PRIMARY KEY,"
    " claimed_ms BIGINT NOT NULL);"
    "CREATE INDEX chat_events_age ON chat_events(claimed_ms);"
    "CREATE TABLE chat_posts ("
    " surface TEXT NOT NULL,"
    " channel TEXT NOT NULL,"
    " post TEXT NOT NULL,"
    " approval_id TEXT NOT NULL,"
    " thread TEXT,"
    " created_ms BIGINT NOT NULL,"
    " row_seq BIGINT GENERATED ALWAYS AS IDENTITY,"
    " PRIMARY KEY (surface, channel, post));"
    "CREATE INDEX chat_posts_approval ON chat_posts(approval_id);",

    /* 7: the approvals of an execution, for the change announcements of
     * execution writes (else every step update would scan approvals). */
    "CREATE INDEX approvals_execution ON approvals(execution_id);",
};

#define PG_MIGRATIONS ((int)(sizeof pg_migrations / sizeof pg_migrations[0]))
_Static_assert(sizeof pg_migrations / sizeof pg_migrations[0] == BT_STORE_SCHEMA_VERSION,
               "one migration per schema version");

/* ---- statements ------------------------------------------------------------ */

enum pg_stmt {
    P_MIGRATION_DONE,
    P_LOCK_MIGRATE,
    P_LOCK_ASSETS,
    P_ASSETS_CLEAR,
    P_ASSET_INSERT,
    P_REQUEST_ADD,
    P_DECISION_ADD,
    P_PLAN_ADD,
    P_PLAN_GET,
    P_EXECUTION_ADD,
    P_EXECUTION_SET,
    P_EXECUTION_GET,
    P_STEP_ADD,
    P_STEP_SET,
    P_STEPS_GET,
    P_APPROVAL_ADD,
    P_APPROVAL_GET,
    P_APPROVALS_PENDING,
    P_APPROVAL_LOCK,
    P_APPROVAL_DECISIONS,
    P_APPROVAL_DECIDE,
    P_APPROVAL_STATE,
    P_APPROVAL_MARK,
    P_APPROVALS_OPEN,
    P_APPROVALS_UNSTARTED,
    P_SETTING_INSERT,
    P_SETTING_GET,
    P_LOCK_AUDIT,
    P_AUDIT_LAST,
    P_AUDIT_INSERT,
    P_AUDIT_LIST,
    P_AUDIT_OF,
    P_AUDIT_BATCH,
    P_EXEC_CAS,
    P_EXEC_STATE,
    P_EXEC_OWN,
    P_EXEC_PROGRESS,
    P_EXEC_EXTRA,
    P_RUNNING,
    P_LOCK_ASSET_LOCKS,
    P_LOCK_ASSET_LOCKS_SHARED,
    P_LOCKS_STALE,
    P_WAITS_STALE,
    P_WAIT_SEQ,
    P_LOCK_HOLDER,
    P_LOCK_AHEAD,
    P_LOCK_INSERT,
    P_WAIT_INSERT,
    P_WAIT_REFRESH,
    P_WAIT_DELETE,
    P_LOCKS_RELEASE,
    P_LOCKS_LIST,
    P_JOB_ADD,
    P_JOBS_ORPHAN,
    P_JOB_EXPIRED,
    P_JOB_NEXT,
    P_JOB_TAKE,
    P_JOB_HEARTBEAT,
    P_JOB_FINISH,
    P_JOBS_OF,
    P_NOTIFY,
    P_NOTIFY_USER,
    P_NOTIFICATIONS,
    P_NOTIFIED,
    P_TOKEN_ADD,
    P_TOKEN_USE,
    P_TOKEN_GET,
    P_REQUESTS_OF,
    P_REQUEST_GET,
    P_CHAT_CLAIM,
    P_CHAT_FORGET,
    P_CHAT_POST_ADD,
    P_CHAT_POSTS_OF,
    P_ANNOUNCE,
    P_ANNOUNCE_EXECUTION,
    P__COUNT
};

#define PG_APPROVAL_COLS                                                                           \
    "approval_id, plan_id, execution_id, level, requirement_json, state, expires_ms, created_ms"
#define PG_AUDIT_COLS "seq, ts_ms, request_id, actor, event, detail_json, prev_hash, hash"
#define PG_JOB_COLS                                                                                \
    "job_id, execution_id, step_index, state, attempt, max_attempts, run_at_ms, assets_json,"      \
    " locked_by, locked_ms, heartbeat_ms, last_error, created_ms, updated_ms"
/* The request behind an execution: its user and text. */
#define PG_REQUEST_OF(e)                                                                           \
    " LEFT JOIN plans p ON p.plan_id = " e ".plan_id"                                              \
    " LEFT JOIN requests r ON r.request_id = p.request_id"
#define PG_ADVISORY(key) "SELECT pg_advisory_xact_lock(" PG_LOCK_CLASS ", " key ")"

static const char *const pg_sql[P__COUNT] = {
    [P_MIGRATION_DONE] = "INSERT INTO schema_migrations(version, applied_ms) VALUES ($1, $2)",
    [P_LOCK_MIGRATE] = PG_ADVISORY(PG_LOCK_MIGRATE),
    [P_LOCK_ASSETS] = PG_ADVISORY(PG_LOCK_ASSETS),
    [P_ASSETS_CLEAR] = "DELETE FROM assets",
    /* Column order: name, then bt_store__asset_text_fields in its order, then
     * cpu, ram_gb, tags, doc. */
    [P_ASSET_INSERT] = "INSERT INTO assets(name, hostname, ip, os, os_version, role, environment,"
                       " status, datacenter, connection, cpu, ram_gb, tags, doc)"
                       " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    [P_REQUEST_ADD] = "INSERT INTO requests(request_id, user_id, channel, text, created_ms)"
                      " VALUES ($1, $2, $3, $4, $5)",
    [P_DECISION_ADD] = "INSERT INTO decisions(request_id, decision_json, created_ms)"
                       " VALUES ($1, $2, $3)",
    [P_PLAN_ADD] = "INSERT INTO plans(plan_id, request_id, canonical_json, sha256, risk,"
                   " approval_level, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    [P_PLAN_GET] = "SELECT plan_id, request_id, canonical_json, sha256, risk, approval_level,"
                   " created_ms FROM plans WHERE plan_id = $1",
    [P_EXECUTION_ADD] = "INSERT INTO executions(execution_id, plan_id, state, created_ms,"
                        " updated_ms) VALUES ($1, $2, $3, $4, $4)",
    [P_EXECUTION_SET] = "UPDATE executions SET state = $1,"
                        " result_json = coalesce($2, result_json),"
                        " updated_ms = $3 WHERE execution_id = $4",
    [P_EXECUTION_GET] = "SELECT execution_id, plan_id, state, result_json, created_ms, updated_ms"
                        " FROM executions WHERE execution_id = $1",
    [P_STEP_ADD] = "INSERT INTO steps(execution_id, step_index, tool, state, created_ms,"
                   " updated_ms) VALUES ($1, $2, $3, $4, $5, $5)",
    [P_STEP_SET] = "UPDATE steps SET state = $1, result_json = coalesce($2, result_json),"
                   " updated_ms = $3 WHERE execution_id = $4 AND step_index = $5",
    [P_STEPS_GET] = "SELECT step_index, tool, state, result_json, updated_ms FROM steps"
                    " WHERE execution_id = $1 ORDER BY step_index",
    [P_APPROVAL_ADD] = "INSERT INTO approvals(approval_id, plan_id, execution_id, level,"
                       " requirement_json, state, expires_ms, created_ms, updated_ms)"
                       " VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $7)",
    [P_APPROVAL_GET] = "SELECT " PG_APPROVAL_COLS " FROM approvals WHERE approval_id = $1",
    [P_APPROVALS_PENDING] = "SELECT " PG_APPROVAL_COLS " FROM approvals WHERE state = 'pending'"
                            " ORDER BY created_ms, row_seq LIMIT $1",
    /* approval dialogue: PG_APPROVAL_COLS first, so approval_row reads it;
     * the row stays locked until the transaction ends. */
    [P_APPROVAL_LOCK] = "SELECT " PG_APPROVAL_COLS ", updated_ms, reminded_ms, escalated_ms"
                        " FROM approvals WHERE approval_id = $1 FOR UPDATE",
    [P_APPROVAL_DECISIONS] = "SELECT user_id, decision, step, via, ts_ms FROM approval_decisions"
                             " WHERE approval_id = $1 ORDER BY ts_ms, row_seq",
    [P_APPROVAL_DECIDE] = "INSERT INTO approval_decisions(approval_id, user_id, decision, step,"
                          " via, ts_ms) VALUES ($1, $2, $3, $4, $5, $6)",
    [P_APPROVAL_STATE] = "UPDATE approvals SET state = $1, updated_ms = $2 WHERE approval_id = $3",
    [P_APPROVAL_MARK] =
        "UPDATE approvals SET"
        " reminded_ms = CASE WHEN $1::boolean THEN coalesce(reminded_ms, $2::bigint)"
        " ELSE reminded_ms END,"
        " escalated_ms = CASE WHEN $3::boolean"
        " THEN coalesce(escalated_ms, $2::bigint) ELSE escalated_ms END,"
        " updated_ms = $2::bigint WHERE approval_id = $4",
    [P_APPROVALS_OPEN] = "SELECT " PG_APPROVAL_COLS " FROM approvals"
                         " WHERE state IN ('pending', 'releasing')"
                         " ORDER BY created_ms, row_seq LIMIT $1",
    [P_APPROVALS_UNSTARTED] =
        "SELECT a.approval_id, a.plan_id, a.execution_id, a.level, a.requirement_json, a.state,"
        " a.expires_ms, a.created_ms FROM approvals a"
        " JOIN executions e ON e.execution_id = a.execution_id"
        " WHERE a.state = 'approved' AND a.level < 3 AND e.state = 'pending_approval'"
        " AND NOT EXISTS (SELECT 1 FROM approval_decisions d WHERE d.approval_id = a.approval_id"
        " AND d.ts_ms >= $1)"
        " ORDER BY a.created_ms, a.row_seq LIMIT $2",
    [P_SETTING_INSERT] = "INSERT INTO settings(key, value, created_ms) VALUES ($1, $2, $3)"
                         " ON CONFLICT DO NOTHING",
    [P_SETTING_GET] = "SELECT value FROM settings WHERE key = $1",
    [P_LOCK_AUDIT] = PG_ADVISORY(PG_LOCK_AUDIT),
    [P_AUDIT_LAST] = "SELECT seq, ts_ms, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
    [P_AUDIT_INSERT] = "INSERT INTO audit_log(" PG_AUDIT_COLS ")"
                       " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    [P_AUDIT_LIST] = "SELECT " PG_AUDIT_COLS " FROM audit_log WHERE ts_ms >= $1"
                     " ORDER BY seq LIMIT $2",
    [P_AUDIT_OF] = "SELECT " PG_AUDIT_COLS " FROM audit_log WHERE request_id = $1"
                   " ORDER BY seq LIMIT $2",
    [P_AUDIT_BATCH] = "SELECT " PG_AUDIT_COLS " FROM audit_log WHERE seq > $1"
                      " ORDER BY seq LIMIT $2",

    [P_EXEC_CAS] = "UPDATE executions SET state = $1, result_json = coalesce($2, result_json),"
                   " updated_ms = $3 WHERE execution_id = $4 AND state = $5",
    [P_EXEC_STATE] = "SELECT state FROM executions WHERE execution_id = $1",
    [P_EXEC_OWN] = "UPDATE executions SET state = 'running', owner_host = $1, owner_pid = $2,"
                   " owner_start = $3, steps_total = $4, updated_ms = $5"
                   " WHERE execution_id = $6 AND state = $7",
    [P_EXEC_PROGRESS] = "UPDATE executions SET steps_done = $1, steps_total = $2,"
                        " updated_ms = $3 WHERE execution_id = $4",
    [P_EXEC_EXTRA] = "SELECT e.steps_done, e.steps_total, e.owner_host, e.owner_pid,"
                     " e.owner_start, p.request_id, r.user_id FROM executions e" PG_REQUEST_OF(
                         "e") " WHERE e.execution_id = $1",
    [P_RUNNING] = "SELECT e.execution_id, e.plan_id, p.request_id, r.user_id, e.owner_host,"
                  " e.owner_pid, e.owner_start, e.updated_ms FROM executions e" PG_REQUEST_OF(
                      "e") " WHERE e.state = 'running' ORDER BY e.updated_ms, e.execution_id"
                           " LIMIT $1",
    [P_LOCK_ASSET_LOCKS] = PG_ADVISORY(PG_LOCK_ASSET_LOCKS),
    [P_LOCK_ASSET_LOCKS_SHARED] =
        "SELECT pg_advisory_xact_lock_shared(" PG_LOCK_CLASS ", " PG_LOCK_ASSET_LOCKS ")",
    [P_LOCKS_STALE] = "DELETE FROM asset_locks WHERE execution_id IN"
                      " (SELECT execution_id FROM executions WHERE state IN " PG_TERMINAL ")",
    [P_WAITS_STALE] = "DELETE FROM lock_waits WHERE execution_id IN"
                      " (SELECT execution_id FROM executions WHERE state IN " PG_TERMINAL ")"
                      " OR (expires_ms < $1 AND NOT EXISTS (SELECT 1 FROM jobs j"
                      " WHERE j.execution_id = lock_waits.execution_id"
                      " AND j.state IN ('available', 'running')))",
    [P_WAIT_SEQ] = "SELECT seq FROM lock_waits WHERE execution_id = $1",
    [P_LOCK_HOLDER] =
        "SELECT l.execution_id, r.user_id, r.text FROM asset_locks l"
        " LEFT JOIN executions e ON e.execution_id = l.execution_id" PG_REQUEST_OF(
            "e") " WHERE " PG_FOLD("l.asset") " = " PG_FOLD("$1::text") " AND l.execution_id <> $2",
    /* count(*) OVER () counts every waiter ahead, before LIMIT keeps the
     * first of them. */
    [P_LOCK_AHEAD] =
        "SELECT w.execution_id, r.user_id, r.text, count(*) OVER ()"
        " FROM lock_waits w"
        " LEFT JOIN executions e ON e.execution_id = w.execution_id" PG_REQUEST_OF(
            "e") " WHERE w.execution_id <> $2 AND ($3::bigint IS NULL OR w.seq < $3::bigint)"
                 " AND EXISTS (SELECT 1 FROM json_array_elements_text(w.assets_json::json) a(v)"
                 " WHERE " PG_FOLD("a.v") " = " PG_FOLD("$1::text") ")"
                                                                    " ORDER BY w.seq LIMIT 1",
    [P_LOCK_INSERT] = "INSERT INTO asset_locks(asset, execution_id, acquired_ms)"
                      " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    [P_WAIT_INSERT] = "INSERT INTO lock_waits(execution_id, assets_json, since_ms, expires_ms)"
                      " VALUES ($1, $2, $3, $4)",
    [P_WAIT_REFRESH] = "UPDATE lock_waits SET assets_json = $1, expires_ms = $2"
                       " WHERE execution_id = $3",
    [P_WAIT_DELETE] = "DELETE FROM lock_waits WHERE execution_id = $1",
    [P_LOCKS_RELEASE] = "DELETE FROM asset_locks WHERE execution_id = $1",
    [P_LOCKS_LIST] = "SELECT asset, execution_id, acquired_ms FROM asset_locks"
                     " WHERE $1::text IS NULL OR execution_id = $1::text"
                     " ORDER BY " PG_FOLD("asset") ", asset COLLATE \"C\"",
    [P_JOB_ADD] = "INSERT INTO jobs(execution_id, step_index, state, attempt, max_attempts,"
                  " run_at_ms, assets_json, created_ms, updated_ms)"
                  " VALUES ($1, $2, 'available', 0, $3, $4, $5, $6, $6) RETURNING job_id",
    /* Jobs another claimer is marking already are skipped, not waited for. */
    [P_JOBS_ORPHAN] =
        "UPDATE jobs SET state = 'dead', updated_ms = $1,"
        " last_error = 'the execution had already ended'"
        " WHERE job_id IN (SELECT j.job_id FROM jobs j"
        " JOIN executions e ON e.execution_id = j.execution_id"
        " WHERE j.state = 'available' AND e.state IN " PG_TERMINAL " FOR UPDATE OF j SKIP LOCKED)",
    [P_JOB_EXPIRED] = "SELECT " PG_JOB_COLS " FROM jobs WHERE state = 'running'"
                      " AND heartbeat_ms < $1 ORDER BY heartbeat_ms, job_id LIMIT 1"
                      " FOR UPDATE SKIP LOCKED",
    [P_JOB_NEXT] =
        "SELECT " PG_JOB_COLS " FROM jobs j WHERE state = 'available'"
        " AND run_at_ms <= $1 AND NOT EXISTS (SELECT 1"
        " FROM json_array_elements_text(j.assets_json::json) a(v)"
        " JOIN asset_locks l ON " PG_FOLD("l.asset") " = " PG_FOLD(
            "a.v") " JOIN executions e ON e.execution_id = l.execution_id"
                   " WHERE l.execution_id <> j.execution_id AND e.state NOT IN " PG_TERMINAL ")"
                   " ORDER BY run_at_ms, job_id LIMIT 1 FOR UPDATE OF j SKIP LOCKED",
    [P_JOB_TAKE] = "UPDATE jobs SET state = 'running', attempt = attempt + 1, locked_by = $1,"
                   " locked_ms = $2, heartbeat_ms = $2, updated_ms = $2 WHERE job_id = $3",
    [P_JOB_HEARTBEAT] = "UPDATE jobs SET heartbeat_ms = $1, updated_ms = $1"
                        " WHERE job_id = $2 AND locked_by = $3 AND state = 'running'",
    [P_JOB_FINISH] = "UPDATE jobs SET state = $1::text,"
                     " run_at_ms = CASE WHEN $1::text = 'available' THEN $2::bigint"
                     " ELSE run_at_ms END,"
                     " last_error = coalesce($3, last_error),"
                     " attempt = greatest(attempt - $4::bigint, 0),"
                     " locked_by = CASE WHEN $1::text = 'available' THEN NULL ELSE locked_by END,"
                     " updated_ms = $5 WHERE job_id = $6 AND locked_by = $7 AND state = 'running'",
    [P_JOBS_OF] = "SELECT " PG_JOB_COLS " FROM jobs WHERE execution_id = $1 ORDER BY job_id",
    [P_NOTIFY] =
        "INSERT INTO notifications(user_id, execution_id, text, created_ms)"
        " SELECT r.user_id, e.execution_id, $2::text, $3::bigint FROM executions e" PG_REQUEST_OF(
            "e") " WHERE e.execution_id = $1",
    [P_NOTIFY_USER] = "INSERT INTO notifications(user_id, execution_id, text, created_ms)"
                      " VALUES ($1, $2, $3, $4)",
    [P_NOTIFICATIONS] = "SELECT notification_id, user_id, execution_id, text, created_ms,"
                        " delivered_ms FROM notifications"
                        " WHERE ($1::text IS NULL OR user_id = $1::text)"
                        " AND (NOT $2::boolean OR delivered_ms IS NULL)"
                        " ORDER BY notification_id LIMIT $3",
    [P_NOTIFIED] = "UPDATE notifications SET delivered_ms = coalesce(delivered_ms, $1)"
                   " WHERE notification_id = $2",
    [P_TOKEN_ADD] = "INSERT INTO console_tokens(token_sha256, user_id, created_ms)"
                    " VALUES ($1, $2, $3)",
    [P_TOKEN_USE] = "UPDATE console_tokens SET last_used_ms = $1 WHERE token_sha256 = $2",
    [P_TOKEN_GET] = "SELECT user_id FROM console_tokens WHERE token_sha256 = $1",
    [P_REQUESTS_OF] = "SELECT request_id, channel, text, created_ms FROM requests"
                      " WHERE user_id = $1 ORDER BY created_ms DESC, row_seq DESC LIMIT $2",
    [P_REQUEST_GET] = "SELECT request_id, user_id, channel, text, created_ms FROM requests"
                      " WHERE request_id = $1",
    [P_CHAT_CLAIM] = "INSERT INTO chat_events(event_key, claimed_ms) VALUES ($1, $2)"
                     " ON CONFLICT DO NOTHING",
    [P_CHAT_FORGET] = "DELETE FROM chat_events WHERE claimed_ms < $1",
    [P_CHAT_POST_ADD] = "INSERT INTO chat_posts(surface, channel, post, approval_id, thread,"
                        " created_ms) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    [P_CHAT_POSTS_OF] = "SELECT surface, channel, post, thread, created_ms FROM chat_posts"
                        " WHERE approval_id = $1 ORDER BY created_ms, row_seq LIMIT $2",
    [P_ANNOUNCE] = "SELECT pg_notify('" PG_CHANNEL "', $1)",
    [P_ANNOUNCE_EXECUTION] = "SELECT pg_notify('" PG_CHANNEL "', approval_id) FROM approvals"
                             " WHERE execution_id = $1",
};

/* ---- asset filter fragments ------------------------------------------------
 * One fragment per filter field (enum bt_store__af order); every '@' in a
 * fragment becomes the same $n, which binds the field's value once. Text
 * comparisons fold ASCII case on both sides (SQLite's NOCASE); strpos, not
 * LIKE, so '%' and '_' in a value are plain characters. */
static const char *const af_pg[BT_STORE__AF_COUNT] = {
    [BT_STORE__AF_OS] = PG_FOLD("os") " = " PG_FOLD("@::text"),
    [BT_STORE__AF_ENVIRONMENT] = PG_FOLD("environment") " = " PG_FOLD("@::text"),
    [BT_STORE__AF_ROLE] = PG_FOLD("role") " = " PG_FOLD("@::text"),
    [BT_STORE__AF_STATUS] = PG_FOLD("status") " = " PG_FOLD("@::text"),
    [BT_STORE__AF_DATACENTER] = PG_FOLD("datacenter") " = " PG_FOLD("@::text"),
    [BT_STORE__AF_CONNECTION] = PG_FOLD("connection") " = " PG_FOLD("@::text"),
    [BT_STORE__AF_TAG] = "EXISTS (SELECT 1 FROM json_array_elements_text(assets.tags::json) t(v)"
                         " WHERE " PG_FOLD("t.v") " = " PG_FOLD("@::text") ")",
    [BT_STORE__AF_NAME_CONTAINS] = "(strpos(" PG_FOLD("name") ", " PG_FOLD(
        "@::text") ") > 0"
                   " OR strpos(" PG_FOLD("hostname") ", " PG_FOLD("@::text") ") > 0)",
    [BT_STORE__AF_IP] = PG_FOLD("ip") " = " PG_FOLD("@::text"),
    [BT_STORE__AF_IP_PREFIX] = "strpos(" PG_FOLD("ip") ", " PG_FOLD("@::text") ") = 1",
    [BT_STORE__AF_HOST] = "(" PG_FOLD("name") " = " PG_FOLD("@::text") " OR " PG_FOLD(
        "hostname") " = " PG_FOLD("@::text") " OR " PG_FOLD("ip") " = " PG_FOLD("@::text") ")",
    [BT_STORE__AF_MIN_RAM_GB] = "ram_gb >= @::bigint",
    [BT_STORE__AF_MAX_RAM_GB] = "ram_gb <= @::bigint",
    [BT_STORE__AF_MIN_CPU] = "cpu >= @::bigint",
};

/* ---- the handle ------------------------------------------------------------ */

/* What kind of transaction a call runs in (outside a batch; inside one,
 * every call is a savepoint of the batch's transaction). */
enum pg_kind {
    PG_READ,     /* one or more reads, no transaction of its own */
    PG_SNAPSHOT, /* several reads that must see one moment: read-only snapshot */
    PG_WRITE,    /* BEGIN ... COMMIT */
};

struct pg {
    PGconn *conn;
    char *where;   /* the location as given (it holds no password), for messages */
    char *url;     /* what follows the scheme's check: the whole URL, for libpq */
    char *options; /* the URL's own `options` plus PG_SESSION_OPTIONS */
    int version;
    bool prepared[P__COUNT];
    bool in_batch;
    bool batch_lost; /* the connection broke inside the batch */
    /* Set during one call: */
    bool lost;        /* the connection broke */
    bool commit_sent; /* COMMIT went out: the outcome is unknown if lost */
    bool no_retry;    /* the call must not be run again (check called) */
    char sqlstate[6]; /* of the last failure ("" when none) */
    /* Change notifications (pg_listen, pg_changes): */
    bool listening;                         /* LISTEN on every new connection */
    bool missed;                            /* a new connection since the last pg_changes */
    bool connecting;                        /* conn is an attempt that PQconnectPoll drives */
    PostgresPollingStatusType connect_poll; /* what the attempt waits for */
    int64_t connect_started_ms;             /* monotonic */
    int64_t retry_at_ms;                    /* no attempt before (monotonic) */
    long retry_delay_ms;                    /* after the next failed attempt */
    char connect_error[300];                /* why the last attempt failed */
};

/* Statement parameters, all as text (NULL is SQL NULL). */
struct params {
    int n;
    const char *v[PG_MAX_PARAMS];
    char num[PG_MAX_PARAMS][24];
};

static void par_text(struct params *pa, const char *s)
{
    if (pa->n < PG_MAX_PARAMS)
        pa->v[pa->n++] = s;
}

static void par_int(struct params *pa, long long x)
{
    if (pa->n < PG_MAX_PARAMS) {
        bt_fmt(pa->num[pa->n], sizeof pa->num[0], "%lld", x);
        pa->v[pa->n] = pa->num[pa->n];
        pa->n++;
    }
}

static void par_bool(struct params *pa, bool b)
{
    par_text(pa, b ? "t" : "f");
}

/* ---- errors -------------------------------------------------------------- */

/* SQLSTATEs that mean the connection is gone (class 08, and the server
 * ending the session: admin shutdown, crash shutdown, cannot connect now). */
static bool state_lost(const char *st)
{
    return st && (strncmp(st, "08", 2) == 0 || strcmp(st, "57P01") == 0 ||
                  strcmp(st, "57P02") == 0 || strcmp(st, "57P03") == 0);
}

/* The one place SQLSTATEs become bt_err (the SQLite backend's sq_code). */
static enum bt_err pg_code(const char *st)
{
    if (!st || !*st)
        return BT_ESTORE;
    if (strncmp(st, "23", 2) == 0 || strcmp(st, "P0001") == 0 || strncmp(st, "22", 2) == 0)
        return BT_EINVAL; /* constraints, the append-only trigger, bad data */
    if (strcmp(st, "55P03") == 0 || strcmp(st, "57014") == 0 || strcmp(st, "40P01") == 0 ||
        strcmp(st, "40001") == 0)
        return BT_ETIMEOUT; /* lock or statement timeout, deadlock, conflict */
    if (strncmp(st, "XX", 2) == 0)
        return BT_ECORRUPT;
    if (strcmp(st, "53200") == 0)
        return BT_ENOMEM;
    return BT_ESTORE;
}

/* libpq's message on one line (its connection messages span several). */
static void one_line(char *dst, size_t dstlen, const char *msg)
{
    bt_strlcpy(dst, msg && *msg ? msg : "unknown error", dstlen);
    size_t n = strlen(dst);
    while (n > 0 && (dst[n - 1] == '\n' || dst[n - 1] == ' '))
        dst[--n] = '\0';
    for (char *c = dst; *c; c++)
        if (*c == '\n' || *c == '\t')
            *c = ' ';
}

/* Fill err with "LOCATION: what: the server's message", note whether the
 * connection broke, and translate the SQLSTATE. res may be NULL. */
static enum bt_err pg_fail(struct pg *p, const PGresult *res, char *err, size_t errlen,
                           const char *what)
{
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *prim = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    char msg[300];
    one_line(msg, sizeof msg, prim ? prim : PQerrorMessage(p->conn));
    bt_strlcpy(p->sqlstate, st ? st : "", sizeof p->sqlstate);
    if (PQstatus(p->conn) != CONNECTION_OK || state_lost(st)) {
        p->lost = true;
        bt_fmt(err, errlen, "%s: %s: the connection to the database was lost (%s)", p->where, what,
               msg);
        return BT_EUNAVAIL;
    }
    enum bt_err e = pg_code(st);
    if (st && strcmp(st, "23503") == 0)
        bt_fmt(err, errlen, "%s: %s: it refers to something that is not recorded (%s)", p->where,
               what, msg);
    else if (st && strcmp(st, "55P03") == 0)
        bt_fmt(err, errlen, "%s: %s: the database stayed locked for %d ms (%s)", p->where, what,
               PG_LOCK_TIMEOUT_MS, msg);
    else if (st && strcmp(st, "57014") == 0)
        bt_fmt(err, errlen, "%s: %s: took longer than %d ms (%s)", p->where, what,
               PG_STATEMENT_TIMEOUT_MS, msg);
    else
        bt_fmt(err, errlen, "%s: %s: %s", p->where, what, msg);
    return e;
}

/* ---- running statements ------------------------------------------------------ */

/* Run a statement: a prepared fixed one (id >= 0) or the text sql, with
 * the parameters pa (may be NULL). *out is the result on success (the
 * caller PQclears it), NULL on failure. */
static enum bt_err exec_stmt(struct pg *p, int id, const char *sql, const struct params *pa,
                             PGresult **out, char *err, size_t errlen, const char *what)
{
    *out = NULL;
    int n = pa ? pa->n : 0;
    const char *const *v = pa ? pa->v : NULL;
    PGresult *r;
    if (id >= 0) {
        char name[16];
        bt_fmt(name, sizeof name, "bt_%d", id);
        if (!p->prepared[id]) {
            r = PQprepare(p->conn, name, pg_sql[id], 0, NULL);
            if (PQresultStatus(r) != PGRES_COMMAND_OK) {
                enum bt_err e = pg_fail(p, r, err, errlen, what);
                PQclear(r);
                return e;
            }
            PQclear(r);
            p->prepared[id] = true;
        }
        r = PQexecPrepared(p->conn, name, n, v, NULL, NULL, 0);
    } else {
        r = PQexecParams(p->conn, sql, n, NULL, v, NULL, NULL, 0);
    }
    ExecStatusType s = PQresultStatus(r);
    if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK) {
        *out = r;
        return BT_OK;
    }
    enum bt_err e = pg_fail(p, r, err, errlen, what);
    PQclear(r);
    return e;
}

/* A fixed statement, result wanted. */
static enum bt_err q(struct pg *p, enum pg_stmt id, const struct params *pa, PGresult **out,
                     char *err, size_t errlen, const char *what)
{
    return exec_stmt(p, (int)id, NULL, pa, out, err, errlen, what);
}

/* A fixed statement, result not wanted; *rows (may be NULL) gets the
 * number of rows it touched. */
static enum bt_err q_run(struct pg *p, enum pg_stmt id, const struct params *pa, long long *rows,
                         char *err, size_t errlen, const char *what)
{
    PGresult *r;
    enum bt_err e = q(p, id, pa, &r, err, errlen, what);
    if (e == BT_OK && rows)
        *rows = strtoll(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return e;
}

/* A command without parameters (transaction control, migrations: only
 * this file's own constant text). */
static enum bt_err pg_cmd(struct pg *p, const char *sql, char *err, size_t errlen, const char *what)
{
    PGresult *r = PQexec(p->conn, sql);
    enum bt_err e = BT_OK;
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        e = pg_fail(p, r, err, errlen, what);
    PQclear(r);
    return e;
}

/* Column helpers. */
static bool col_null(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) != 0;
}

static long long col_ll(const PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

/* JSON string or null for a text column; *bad on text that is not UTF-8
 * (only an outside edit can put it there). */
static json_t *col_str(const PGresult *r, int row, int col, bool *bad)
{
    if (col_null(r, row, col))
        return json_null();
    json_t *j = json_stringn(PQgetvalue(r, row, col), (size_t)PQgetlength(r, row, col));
    if (!j) {
        *bad = true;
        return json_null();
    }
    return j;
}

/* A JSON column parsed (SQL NULL is JSON null); *bad on junk. */
static json_t *col_json(const PGresult *r, int row, int col, bool *bad)
{
    if (col_null(r, row, col))
        return json_null();
    json_error_t jerr;
    json_t *j = json_loadb(PQgetvalue(r, row, col), (size_t)PQgetlength(r, row, col),
                           JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!j) {
        *bad = true;
        return json_null();
    }
    return j;
}

/* An optional integer column: its value, or JSON null. */
static json_t *col_ms(const PGresult *r, int row, int col)
{
    return col_null(r, row, col) ? json_null() : json_integer(col_ll(r, row, col));
}

static const char *col_text(const PGresult *r, int row, int col)
{
    return col_null(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

/* ---- connecting ------------------------------------------------------------ */

/* What the server says outside a query (a NOTICE, or the FATAL that comes
 * before it closes the session, say for pg_terminate_backend) goes to the
 * log as one line, not to libpq's default of raw text on stderr. */
static void pg_notice(void *arg, const char *message)
{
    const struct pg *p = arg;
    char line[300];
    one_line(line, sizeof line, message);
    bt_log(BT_LOG_WARN, "store", NULL, "%s: the database says: %s", p->where, line);
}

/* Session setup after every (re)connect; statements are prepared again
 * lazily. A listening handle listens again: what was announced while it
 * had no connection is lost, which the next pg_changes reports ("*"). */
static enum bt_err pg_session(struct pg *p, char *err, size_t errlen)
{
    memset(p->prepared, 0, sizeof p->prepared);
    PQsetNoticeProcessor(p->conn, pg_notice, p);
    if (PQserverVersion(p->conn) < PG_MIN_SERVER) {
        bt_fmt(err, errlen, "%s: PostgreSQL %d.%d is too old; baton needs 11 or newer", p->where,
               PQserverVersion(p->conn) / 10000, PQserverVersion(p->conn) % 10000);
        return BT_EVERSION;
    }
    const char *enc = PQparameterStatus(p->conn, "server_encoding");
    if (!enc || strcmp(enc, "UTF8") != 0) {
        bt_fmt(err, errlen,
               "%s: the database's encoding is %s; baton needs UTF8 (createdb -E UTF8 -T "
               "template0)",
               p->where, enc ? enc : "unknown");
        return BT_ECONFIG;
    }
    if (p->listening) {
        enum bt_err e = pg_cmd(p, "LISTEN " PG_CHANNEL, err, errlen, "listen for changes");
        if (e != BT_OK)
            return e;
        p->missed = true;
    }
    return BT_OK;
}

/* Connection keywords; the URL comes first, the settings after it win
 * over what it says. */
static const char *const pg_conn_kw[] = {"dbname",
                                         "connect_timeout",
                                         "options",
                                         "client_encoding",
                                         "fallback_application_name",
                                         "keepalives",
                                         "keepalives_idle",
                                         "keepalives_interval",
                                         "keepalives_count",
                                         "tcp_user_timeout",
                                         NULL};
#define PG_CONN_KEYS (sizeof pg_conn_kw / sizeof pg_conn_kw[0])

/* The values for pg_conn_kw; tmo (connect_timeout) must outlive val. */
static void pg_conn_values(const struct pg *p, const char *tmo, const char *val[PG_CONN_KEYS])
{
    const char *const v[PG_CONN_KEYS] = {p->url, tmo,  p->options, "UTF8",  "baton", "1",
                                         "30",   "10", "3",        "30000", NULL};
    memcpy(val, v, sizeof v);
}

/* One connection attempt with the given connect timeout (seconds). */
static enum bt_err pg_connect(struct pg *p, int timeout_s, char *err, size_t errlen)
{
    char tmo[16];
    bt_fmt(tmo, sizeof tmo, "%d", timeout_s < 2 ? 2 : timeout_s);
    const char *val[PG_CONN_KEYS];
    pg_conn_values(p, tmo, val);
    if (p->conn)
        PQfinish(p->conn);
    p->connecting = false;
    p->conn = PQconnectdbParams(pg_conn_kw, val, 1);
    if (!p->conn) {
        bt_fmt(err, errlen, "%s: cannot connect: out of memory", p->where);
        return BT_ENOMEM;
    }
    if (PQstatus(p->conn) != CONNECTION_OK) {
        char msg[300];
        one_line(msg, sizeof msg, PQerrorMessage(p->conn));
        bt_fmt(err, errlen, "%s: cannot connect: %s", p->where, msg);
        return BT_EUNAVAIL;
    }
    return pg_session(p, err, errlen);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Replace a broken connection: first try at once, then after 50, 100,
 * 200 ... ms, within PG_RECONNECT_BUDGET_MS in all (each attempt's own
 * connect timeout is what is left of the budget, at least libpq's 2 s). */
static enum bt_err pg_reconnect(struct pg *p, char *err, size_t errlen)
{
    int64_t start = bt_mono_ms();
    long delay = PG_RECONNECT_FIRST_MS;
    for (;;) {
        int64_t left = PG_RECONNECT_BUDGET_MS - (bt_mono_ms() - start);
        enum bt_err e = pg_connect(p, (int)((left + 999) / 1000), err, errlen);
        if (e == BT_OK) {
            bt_log(BT_LOG_WARN, "store", NULL, "%s: connection to the database re-established",
                   p->where);
            return BT_OK;
        }
        if (e != BT_EUNAVAIL)
            return e;
        left = PG_RECONNECT_BUDGET_MS - (bt_mono_ms() - start);
        if (left < delay)
            return e;
        sleep_ms(delay);
        delay *= 2;
    }
}

/* Before a call: a connection that is known bad, or that the server
 * closed while it sat idle (a non-blocking read finds the end of the
 * stream), is replaced. Inside a batch nothing can be replaced: the
 * batch's transaction went with the connection. */
static enum bt_err pg_ready(struct pg *p, char *err, size_t errlen)
{
    if (PQstatus(p->conn) == CONNECTION_OK && PQtransactionStatus(p->conn) != PQTRANS_ACTIVE)
        PQconsumeInput(p->conn);
    if (PQstatus(p->conn) == CONNECTION_OK)
        return BT_OK;
    if (p->in_batch) {
        p->batch_lost = true;
        bt_fmt(err, errlen,
               "%s: the connection to the database was lost: the batch was rolled back", p->where);
        return BT_EUNAVAIL;
    }
    return pg_reconnect(p, err, errlen);
}

/* ---- transactions and retries ------------------------------------------------ */

typedef enum bt_err (*pg_body)(struct pg *p, void *ctx, char *err, size_t errlen);

static enum bt_err op_begin(struct pg *p, enum pg_kind kind, char *err, size_t errlen)
{
    if (p->in_batch)
        return pg_cmd(p, "SAVEPOINT bt_op", err, errlen, "begin an operation in the batch");
    if (kind == PG_WRITE)
        return pg_cmd(p, "BEGIN", err, errlen, "begin transaction");
    if (kind == PG_SNAPSHOT)
        return pg_cmd(p, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", err, errlen,
                      "begin transaction");
    return BT_OK;
}

/* Commit (or release the savepoint) when e is BT_OK, else roll back; keeps
 * the first failure's message. */
static enum bt_err op_end(struct pg *p, enum pg_kind kind, enum bt_err e, char *err, size_t errlen)
{
    char ignored[BT_ERRLEN];
    if (p->in_batch) {
        if (e == BT_OK)
            e = pg_cmd(p, "RELEASE SAVEPOINT bt_op", err, errlen, "end an operation");
        if (e != BT_OK && !p->lost) {
            /* The batch's transaction stays usable: back to before this
             * operation (store.h: a failed one leaves the batch as it was). */
            pg_cmd(p, "ROLLBACK TO SAVEPOINT bt_op", ignored, sizeof ignored, "roll back");
            pg_cmd(p, "RELEASE SAVEPOINT bt_op", ignored, sizeof ignored, "roll back");
        }
        return e;
    }
    if (kind == PG_READ)
        return e;
    if (e != BT_OK) {
        if (!p->lost && PQtransactionStatus(p->conn) != PQTRANS_IDLE)
            pg_cmd(p, "ROLLBACK", ignored, sizeof ignored, "roll back");
        return e;
    }
    p->commit_sent = kind == PG_WRITE;
    PGresult *r = PQexec(p->conn, "COMMIT");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        e = pg_fail(p, r, err, errlen, "commit");
        if (p->lost && kind == PG_SNAPSHOT) {
            /* Every read was done in the snapshot: the answer stands. The
             * next call finds the connection bad and replaces it. */
            if (err && errlen)
                err[0] = '\0';
            e = BT_OK;
        } else if (p->lost)
            bt_fmt(err, errlen,
                   "%s: the connection to the database was lost while committing: the change "
                   "may or may not have been written",
                   p->where);
    } else if (strcmp(PQcmdStatus(r), "COMMIT") != 0) {
        /* A transaction that had failed ends in ROLLBACK, not an error. */
        bt_fmt(err, errlen, "%s: commit: the transaction was rolled back", p->where);
        e = BT_ESTORE;
    }
    PQclear(r);
    return e;
}

/* Run body(ctx) in a transaction of kind, once more on a fresh connection
 * if the connection broke before anything can have been committed (see the
 * header comment). body leaves its outputs in ctx only on success and
 * cleans up after itself on failure, so running it again is safe. */
static enum bt_err pg_run(struct pg *p, enum pg_kind kind, pg_body body, void *ctx, char *err,
                          size_t errlen)
{
    if (p->batch_lost) {
        bt_fmt(err, errlen,
               "%s: the connection to the database was lost during the batch: it was rolled "
               "back; end it",
               p->where);
        return BT_EUNAVAIL;
    }
    for (int attempt = 0;; attempt++) {
        enum bt_err e = pg_ready(p, err, errlen);
        if (e != BT_OK)
            return e;
        p->lost = p->commit_sent = p->no_retry = false;
        p->sqlstate[0] = '\0';
        e = op_begin(p, kind, err, errlen);
        if (e == BT_OK)
            e = body(p, ctx, err, errlen);
        e = op_end(p, kind, e, err, errlen);
        if (e == BT_OK || !p->lost)
            return e;
        if (p->in_batch) {
            p->batch_lost = true;
            size_t n = strlen(err);
            bt_fmt(err + n, errlen - n, "; the batch was rolled back");
            return e;
        }
        if (attempt > 0 || p->commit_sent || p->no_retry)
            return e;
        bt_log(BT_LOG_WARN, "store", NULL, "%s: connection lost; reconnecting to retry", p->where);
    }
}

/* ---- change announcements ---------------------------------------------------- */

/* What a write announces (see the header comment): nothing, the approval
 * it names, or the approvals of the execution it names. */
enum announce { AN_NONE, AN_APPROVAL, AN_EXECUTION };

/* Announce a change inside the current transaction (it leaves at COMMIT). */
static enum bt_err announce(struct pg *p, enum announce kind, const char *id, char *err,
                            size_t errlen)
{
    if (kind == AN_NONE)
        return BT_OK;
    struct params pa = {0};
    par_text(&pa, id);
    return q_run(p, kind == AN_APPROVAL ? P_ANNOUNCE : P_ANNOUNCE_EXECUTION, &pa, NULL, err, errlen,
                 "announce the change");
}

/* The common case: one fixed statement as the whole call, and when it
 * touched a row, its announcement (an: what to announce, an_id: the id). */
struct one_ctx {
    enum pg_stmt id;
    const struct params *pa;
    const char *what;
    enum announce an;
    const char *an_id;
    PGresult *res;
};

static enum bt_err one_body(struct pg *p, void *c, char *err, size_t errlen)
{
    struct one_ctx *o = c;
    PQclear(o->res);
    o->res = NULL;
    enum bt_err e = q(p, o->id, o->pa, &o->res, err, errlen, o->what);
    if (e == BT_OK && o->an != AN_NONE && strtoll(PQcmdTuples(o->res), NULL, 10) > 0)
        e = announce(p, o->an, o->an_id, err, errlen);
    return e;
}

/* Run statement id as a call of its own (with retry), announcing what an
 * and an_id say. *res: the result on success (caller PQclears), else NULL. */
static enum bt_err pg_one_an(struct pg *p, enum pg_kind kind, enum pg_stmt id,
                             const struct params *pa, enum announce an, const char *an_id,
                             PGresult **res, char *err, size_t errlen, const char *what)
{
    struct one_ctx o = {id, pa, what, an, an_id, NULL};
    enum bt_err e = pg_run(p, kind, one_body, &o, err, errlen);
    if (e != BT_OK) {
        PQclear(o.res);
        o.res = NULL;
    }
    *res = o.res;
    return e;
}

/* Statement id as a call of its own, announcing nothing. */
static enum bt_err pg_one(struct pg *p, enum pg_kind kind, enum pg_stmt id, const struct params *pa,
                          PGresult **res, char *err, size_t errlen, const char *what)
{
    return pg_one_an(p, kind, id, pa, AN_NONE, NULL, res, err, errlen, what);
}

/* A write of one statement, announced as an and an_id say; only the
 * number of rows touched wanted (rows may be NULL). */
static enum bt_err pg_write_an(struct pg *p, enum pg_stmt id, const struct params *pa,
                               enum announce an, const char *an_id, long long *rows, char *err,
                               size_t errlen, const char *what)
{
    PGresult *r;
    enum bt_err e = pg_one_an(p, PG_WRITE, id, pa, an, an_id, &r, err, errlen, what);
    if (e == BT_OK && rows)
        *rows = strtoll(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return e;
}

/* Same, announcing nothing, in a call of kind. */
static enum bt_err pg_one_rows(struct pg *p, enum pg_kind kind, enum pg_stmt id,
                               const struct params *pa, long long *rows, char *err, size_t errlen,
                               const char *what)
{
    PGresult *r;
    enum bt_err e = pg_one(p, kind, id, pa, &r, err, errlen, what);
    if (e == BT_OK && rows)
        *rows = strtoll(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return e;
}

/* bt_store_batch_begin/end for PostgreSQL: one transaction around them;
 * the calls inside become savepoints of it. */
static enum bt_err pg_batch_begin(void *be, char *err, size_t errlen)
{
    struct pg *p = be;
    if (p->in_batch) {
        bt_fmt(err, errlen, "%s: a batch is already open", p->where);
        return BT_EINVAL;
    }
    enum bt_err e = BT_OK;
    for (int attempt = 0; attempt < 2; attempt++) {
        p->lost = false;
        e = pg_ready(p, err, errlen);
        if (e == BT_OK)
            e = pg_cmd(p, "BEGIN", err, errlen, "begin batch");
        if (e == BT_OK) {
            p->in_batch = true;
            p->batch_lost = false;
        }
        if (!p->lost)
            break; /* a BEGIN that never arrived is tried once more */
    }
    return e;
}

static enum bt_err pg_batch_end(void *be, bool commit, char *err, size_t errlen)
{
    struct pg *p = be;
    if (!p->in_batch) {
        bt_fmt(err, errlen, "%s: no batch is open", p->where);
        return BT_EINVAL;
    }
    p->in_batch = false;
    if (p->batch_lost) {
        p->batch_lost = false;
        if (!commit)
            return BT_OK; /* rolled back, as asked */
        bt_fmt(err, errlen,
               "%s: the connection to the database was lost during the batch: nothing of it "
               "was written",
               p->where);
        return BT_EUNAVAIL;
    }
    p->lost = p->commit_sent = false;
    if (commit)
        return op_end(p, PG_WRITE, BT_OK, err, errlen);
    if (PQtransactionStatus(p->conn) != PQTRANS_IDLE)
        return pg_cmd(p, "ROLLBACK", err, errlen, "roll back batch");
    return BT_OK;
}

/* ---- open ---------------------------------------------------------------- */

/* True when the URL carries a password: user:password@ in the authority,
 * or a password parameter in the query. Checked on the raw text before
 * libpq sees it, so no message can echo it. */
static bool url_has_password(const char *url)
{
    const char *auth = strstr(url, "://");
    auth = auth ? auth + 3 : url;
    size_t alen = strcspn(auth, "/?");
    const char *at = NULL;
    for (size_t i = 0; i < alen; i++)
        if (auth[i] == '@')
            at = auth + i;
    if (at && memchr(auth, ':', (size_t)(at - auth)))
        return true;
    const char *qs = strchr(url, '?');
    for (const char *k = qs; k && *k; k = strchr(k + 1, '&')) {
        if (strncmp(k + 1, "password=", 9) == 0)
            return true;
    }
    return false;
}

/* Check the URL and take its own `options` (libpq's parse), so that ours
 * can be added to them rather than replace them. */
static enum bt_err parse_url(struct pg *p, char *err, size_t errlen)
{
    if (url_has_password(p->url)) {
        bt_fmt(err, errlen,
               "store: the PostgreSQL location must not contain a password: give it in the "
               "environment (PGPASSWORD) or in ~/.pgpass");
        return BT_ECONFIG;
    }
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(p->url, &msg);
    if (!opts) {
        char line[300];
        one_line(line, sizeof line, msg ? msg : "out of memory");
        PQfreemem(msg);
        bt_fmt(err, errlen, "%s: not a PostgreSQL URL: %s", p->where, line);
        return BT_ECONFIG;
    }
    enum bt_err e = BT_OK;
    const char *user_options = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (strcmp(o->keyword, "password") == 0 && o->val && *o->val) {
            bt_fmt(err, errlen,
                   "store: the PostgreSQL location must not contain a password: give it in the "
                   "environment (PGPASSWORD) or in ~/.pgpass");
            e = BT_ECONFIG;
        } else if (strcmp(o->keyword, "options") == 0 && o->val) {
            user_options = o->val;
        }
    }
    if (e == BT_OK)
        p->options = user_options && *user_options
                         ? bt_asprintf("%s %s", user_options, PG_SESSION_OPTIONS)
                         : bt_strdup(PG_SESSION_OPTIONS);
    PQconninfoFree(opts);
    return e;
}

/* The schema version in the database's current schema: 0 when it holds no
 * tables at all (to be initialised), the highest applied migration for a
 * baton store. Anything else (another program's tables) is refused, so
 * baton never writes into a schema it does not own. */
static enum bt_err read_version(struct pg *p, int *version, char *err, size_t errlen)
{
    static const char *const look =
        "SELECT current_schema(),"
        " (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        "  WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f')),"
        " (SELECT obj_description(c.oid, 'pg_class') FROM pg_class c"
        "  JOIN pg_namespace n ON n.oid = c.relnamespace"
        "  WHERE n.nspname = current_schema() AND c.relname = 'schema_migrations'"
        "  AND c.relkind = 'r')";
    PGresult *r;
    enum bt_err e = exec_stmt(p, -1, look, NULL, &r, err, errlen, "read the schema");
    if (e != BT_OK)
        return e;
    if (col_null(r, 0, 0)) {
        bt_fmt(err, errlen, "%s: no schema to keep baton's tables in (check search_path)",
               p->where);
        PQclear(r);
        return BT_ECONFIG;
    }
    long long objects = col_ll(r, 0, 1);
    const char *mark = col_text(r, 0, 2);
    bool ours = mark && strcmp(mark, PG_MARK) == 0;
    char schema[128];
    bt_strlcpy(schema, PQgetvalue(r, 0, 0), sizeof schema);
    PQclear(r);
    if (objects == 0) {
        *version = 0;
        return BT_OK;
    }
    if (!ours) {
        bt_fmt(err, errlen,
               "%s: not a baton store: schema %s holds another program's tables and no baton "
               "schema; refusing to write into it",
               p->where, schema);
        return BT_ECORRUPT;
    }
    e = exec_stmt(p, -1, "SELECT coalesce(max(version), 0) FROM schema_migrations", NULL, &r, err,
                  errlen, "read the schema version");
    if (e != BT_OK) {
        if (!p->lost && e != BT_ETIMEOUT) {
            char msg[300];
            bt_strlcpy(msg, err, sizeof msg);
            bt_fmt(err, errlen, "%s: not a baton store or damaged: %s", p->where, msg);
            return BT_ECORRUPT;
        }
        return e;
    }
    long long v = col_ll(r, 0, 0);
    PQclear(r);
    if (v > BT_STORE_SCHEMA_VERSION) {
        bt_fmt(err, errlen,
               "%s: schema version %lld is newer than this baton supports (%d); upgrade baton",
               p->where, v, BT_STORE_SCHEMA_VERSION);
        return BT_EVERSION;
    }
    if (v < 1) {
        bt_fmt(err, errlen, "%s: not a baton store or damaged: no schema version recorded",
               p->where);
        return BT_ECORRUPT;
    }
    *version = (int)v;
    return BT_OK;
}

/* Apply migrations version+1 .. BT_STORE_SCHEMA_VERSION, one transaction
 * each, under the migration lock; the version is read again under the
 * lock, since another process may have migrated meanwhile. */
static enum bt_err migrate(struct pg *p, char *err, size_t errlen)
{
    char ignored[BT_ERRLEN];
    for (int v = p->version + 1; v <= PG_MIGRATIONS; v++) {
        enum bt_err e = pg_cmd(p, "BEGIN", err, errlen, "begin migration");
        if (e != BT_OK)
            return e;
        int now = 0;
        e = q_run(p, P_LOCK_MIGRATE, NULL, NULL, err, errlen, "wait for the migration lock");
        if (e == BT_OK)
            e = read_version(p, &now, err, errlen);
        if (e == BT_OK && now < v) {
            char what[64];
            bt_fmt(what, sizeof what, "migration %d failed", v);
            e = pg_cmd(p, pg_migrations[v - 1], err, errlen, what);
            if (e == BT_EINVAL)
                e = BT_ESTORE;
            struct params pa = {0};
            par_int(&pa, v);
            par_int(&pa, bt_wall_ms());
            if (e == BT_OK)
                e = q_run(p, P_MIGRATION_DONE, &pa, NULL, err, errlen, "record migration");
        }
        if (e == BT_OK) {
            e = op_end(p, PG_WRITE, BT_OK, err, errlen);
        } else if (!p->lost) {
            pg_cmd(p, "ROLLBACK", ignored, sizeof ignored, "roll back");
        }
        if (e != BT_OK)
            return e;
        p->version = v > now ? v : now;
    }
    return BT_OK;
}

static void pg_close(void *be)
{
    struct pg *p = be;
    if (!p)
        return;
    if (p->conn)
        PQfinish(p->conn);
    free(p->where);
    free(p->url);
    free(p->options);
    free(p);
}

/* target: the whole location (postgres://... or postgresql://...). */
static enum bt_err pg_open(const char *target, void **be, char *err, size_t errlen)
{
    *be = NULL;
    struct pg *p = bt_calloc(1, sizeof *p);
    p->url = bt_strdup(target);
    p->where = bt_strdup(target);
    enum bt_err e = parse_url(p, err, errlen);
    if (e == BT_OK)
        e = pg_connect(p, PG_CONNECT_TIMEOUT_S, err, errlen);
    /* Read-only checks first: a refused schema is left untouched. */
    if (e == BT_OK)
        e = read_version(p, &p->version, err, errlen);
    if (e == BT_OK)
        e = migrate(p, err, errlen);
    if (e != BT_OK) {
        pg_close(p);
        return e;
    }
    *be = p;
    return BT_OK;
}

static int pg_schema_version(void *be)
{
    return ((struct pg *)be)->version;
}

/* ---- assets -------------------------------------------------------------- */

/* Replace the inventory in one transaction, under the inventory lock (two
 * replacements at once would otherwise collide on names the other one
 * inserted after this one's DELETE began). */
static enum bt_err assets_replace_body(struct pg *p, void *ctx, char *err, size_t errlen)
{
    const json_t *assets = ctx;
    enum bt_err e = q_run(p, P_LOCK_ASSETS, NULL, NULL, err, errlen, "lock the inventory");
    if (e == BT_OK)
        e = q_run(p, P_ASSETS_CLEAR, NULL, NULL, err, errlen, "clear the inventory");
    for (size_t i = 0; e == BT_OK && i < json_array_size(assets); i++) {
        const json_t *a = json_array_get(assets, i);
        const char *name = json_string_value(json_object_get(a, "name"));
        const json_t *tags = json_object_get(a, "tags");
        char *tags_text = json_is_array(tags) ? bt_json_canonical(tags) : bt_strdup("[]");
        char *doc = bt_json_canonical(a);
        if (!tags_text || !doc) {
            bt_fmt(err, errlen, "%s: asset '%.64s' cannot be encoded as JSON", p->where, name);
            e = BT_EINVAL;
        } else {
            struct params pa = {0};
            par_text(&pa, name);
            for (int f = 0; f < BT_STORE__ASSET_TEXT_FIELDS; f++)
                par_text(&pa,
                         json_string_value(json_object_get(a, bt_store__asset_text_fields[f])));
            static const char *const ints[] = {"cpu", "ram_gb"};
            for (int k = 0; k < 2; k++) {
                const json_t *v = json_object_get(a, ints[k]);
                if (json_is_integer(v))
                    par_int(&pa, json_integer_value(v));
                else
                    par_text(&pa, NULL);
            }
            par_text(&pa, tags_text);
            par_text(&pa, doc);
            char what[128];
            bt_fmt(what, sizeof what, "add asset '%.64s'", name);
            e = q_run(p, P_ASSET_INSERT, &pa, NULL, err, errlen, what);
        }
        free(tags_text);
        free(doc);
    }
    return e;
}

static enum bt_err pg_assets_replace(void *be, const json_t *assets, char *err, size_t errlen)
{
    return pg_run(be, PG_WRITE, assets_replace_body, (void *)assets, err, errlen);
}

/* What an asset statement returns: the documents, their number, or their
 * number per (os, role). */
enum assets_shape { AS_ROWS, AS_COUNT, AS_BREAKDOWN };

/* The SQL for this combination of filter fields and shape, with its
 * parameters in pa; only fragments of af_pg, never a value, go into it.
 * Returns a new string. */
static char *assets_sql(const struct bt_store__asset_filter *f, enum assets_shape shape,
                        struct params *pa)
{
    bt_buf sql = BT_BUF_INIT(16384);
    bt_buf_puts(&sql, shape == AS_BREAKDOWN
                          ? "SELECT min(os COLLATE \"C\"), min(role COLLATE \"C\"), count(*)"
                            " FROM assets"
                      : shape == AS_COUNT ? "SELECT count(*) FROM assets"
                                          : "SELECT doc FROM assets");
    const char *sep = " WHERE ";
    for (int k = 0; k < BT_STORE__AF_COUNT; k++) {
        if (!(f->present & (1u << k)))
            continue;
        if (k >= BT_STORE__AF_MIN_RAM_GB)
            par_int(pa, f->num[k]);
        else
            par_text(pa, f->text[k]);
        bt_buf_puts(&sql, sep);
        sep = " AND ";
        for (const char *c = af_pg[k]; *c; c++) {
            if (*c == '@')
                bt_buf_printf(&sql, "$%d", pa->n);
            else
                bt_buf_append(&sql, c, 1);
        }
    }
    if (shape == AS_BREAKDOWN) {
        bt_buf_puts(
            &sql,
            " GROUP BY " PG_FOLD("os") ", " PG_FOLD("role") " ORDER BY count(*) DESC, " PG_FOLD(
                "os") " NULLS FIRST, " PG_FOLD("role") " NULLS FIRST");
    } else if (shape == AS_ROWS) {
        par_int(pa, f->limit);
        par_int(pa, f->offset);
        bt_buf_printf(&sql,
                      " ORDER BY " PG_FOLD("name") ", name COLLATE \"C\" LIMIT $%d OFFSET $%d",
                      pa->n - 1, pa->n);
    }
    return bt_buf_steal(&sql);
}

struct assets_ctx {
    const struct bt_store__asset_filter *f;
    enum assets_shape shape;
    PGresult *res;
};

static enum bt_err assets_body(struct pg *p, void *c, char *err, size_t errlen)
{
    struct assets_ctx *a = c;
    struct params pa = {0};
    char *sql = assets_sql(a->f, a->shape, &pa);
    PQclear(a->res);
    a->res = NULL;
    enum bt_err e = exec_stmt(p, -1, sql, &pa, &a->res, err, errlen,
                              a->shape == AS_ROWS    ? "query assets"
                              : a->shape == AS_COUNT ? "count assets"
                                                     : "count assets by kind");
    free(sql);
    return e;
}

static enum bt_err assets_run(struct pg *p, const struct bt_store__asset_filter *f,
                              enum assets_shape shape, PGresult **res, char *err, size_t errlen)
{
    struct assets_ctx a = {f, shape, NULL};
    enum bt_err e = pg_run(p, PG_READ, assets_body, &a, err, errlen);
    if (e != BT_OK) {
        PQclear(a.res);
        a.res = NULL;
    }
    *res = a.res;
    return e;
}

static enum bt_err pg_assets_query(void *be, const struct bt_store__asset_filter *f, json_t **out,
                                   char *err, size_t errlen)
{
    struct pg *p = be;
    PGresult *r;
    enum bt_err e = assets_run(p, f, AS_ROWS, &r, err, errlen);
    if (e != BT_OK)
        return e;
    json_t *arr = json_array();
    for (int i = 0; i < PQntuples(r); i++) {
        bool bad = false;
        json_t *doc = col_json(r, i, 0, &bad);
        if (bad || !json_is_object(doc)) {
            bt_fmt(err, errlen, "%s: an asset's stored JSON is damaged", p->where);
            json_decref(doc);
            json_decref(arr);
            PQclear(r);
            return BT_ECORRUPT;
        }
        json_array_append_new(arr, doc);
    }
    PQclear(r);
    *out = arr;
    return BT_OK;
}

static enum bt_err pg_assets_count(void *be, const struct bt_store__asset_filter *f,
                                   long long *count, char *err, size_t errlen)
{
    PGresult *r;
    enum bt_err e = assets_run(be, f, AS_COUNT, &r, err, errlen);
    if (e != BT_OK)
        return e;
    *count = col_ll(r, 0, 0);
    PQclear(r);
    return BT_OK;
}

static enum bt_err pg_assets_breakdown(void *be, const struct bt_store__asset_filter *f,
                                       json_t **out, char *err, size_t errlen)
{
    PGresult *r;
    enum bt_err e = assets_run(be, f, AS_BREAKDOWN, &r, err, errlen);
    if (e != BT_OK)
        return e;
    json_t *groups = json_array();
    /* One row per (os, role) pair: bounded by the inventory's kinds. */
    for (int i = 0; i < PQntuples(r); i++) {
        const char *os = col_text(r, i, 0), *role = col_text(r, i, 1);
        json_t *g = json_pack("{s:s, s:s, s:I}", "os", os ? os : "unknown", "role",
                              role ? role : "unknown", "count", (json_int_t)col_ll(r, i, 2));
        if (g)
            json_array_append_new(groups, g);
    }
    PQclear(r);
    *out = groups;
    return BT_OK;
}

/* ---- requests, decisions, plans ------------------------------------------ */

static enum bt_err pg_request_add(void *be, const char *request_id, const char *user,
                                  const char *channel, const char *text, char *err, size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, request_id);
    par_text(&pa, user);
    par_text(&pa, channel);
    par_text(&pa, text);
    par_int(&pa, bt_wall_ms());
    char what[128];
    bt_fmt(what, sizeof what, "add request '%.64s'", request_id);
    return pg_one_rows(be, PG_WRITE, P_REQUEST_ADD, &pa, NULL, err, errlen, what);
}

static enum bt_err pg_decision_add(void *be, const char *request_id, const char *decision_json,
                                   char *err, size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, request_id);
    par_text(&pa, decision_json);
    par_int(&pa, bt_wall_ms());
    char what[128];
    bt_fmt(what, sizeof what, "add decision for request '%.64s'", request_id);
    return pg_one_rows(be, PG_WRITE, P_DECISION_ADD, &pa, NULL, err, errlen, what);
}

static enum bt_err pg_plan_add(void *be, const char *plan_id, const char *request_id,
                               const char *canonical_json, const char *sha256, const char *risk,
                               int approval_level, char *err, size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, plan_id);
    par_text(&pa, request_id);
    par_text(&pa, canonical_json);
    par_text(&pa, sha256);
    par_text(&pa, risk);
    par_int(&pa, approval_level);
    par_int(&pa, bt_wall_ms());
    char what[192];
    bt_fmt(what, sizeof what, "add plan '%.64s' of request '%.64s'", plan_id, request_id);
    return pg_one_rows(be, PG_WRITE, P_PLAN_ADD, &pa, NULL, err, errlen, what);
}

/* The stored plan text is hashed again: approvals are bound to the hash, so
 * a plan whose text was changed behind baton's back must not be shown as the
 * plan that was approved. */
static enum bt_err pg_plan_get(void *be, const char *plan_id, json_t **out, char *err,
                               size_t errlen)
{
    struct pg *p = be;
    struct params pa = {0};
    par_text(&pa, plan_id);
    char what[128];
    bt_fmt(what, sizeof what, "read plan '%.64s'", plan_id);
    PGresult *r;
    enum bt_err e = pg_one(p, PG_READ, P_PLAN_GET, &pa, &r, err, errlen, what);
    if (e != BT_OK)
        return e;
    if (PQntuples(r) == 0) {
        bt_fmt(err, errlen, "%s: no plan '%.64s'", p->where, plan_id);
        PQclear(r);
        return BT_ENOENT;
    }
    bool bad = false;
    const char *sha = col_text(r, 0, 3);
    char hex[65] = "";
    if (!col_null(r, 0, 2))
        bt_sha256_hex(PQgetvalue(r, 0, 2), (size_t)PQgetlength(r, 0, 2), hex);
    json_t *plan = col_json(r, 0, 2, &bad);
    json_t *o = json_object();
    json_object_set_new(o, "plan_id", col_str(r, 0, 0, &bad));
    json_object_set_new(o, "request_id", col_str(r, 0, 1, &bad));
    json_object_set_new(o, "plan", plan);
    json_object_set_new(o, "sha256", col_str(r, 0, 3, &bad));
    json_object_set_new(o, "risk", col_str(r, 0, 4, &bad));
    json_object_set_new(o, "approval_level", json_integer(col_ll(r, 0, 5)));
    json_object_set_new(o, "created_ms", json_integer(col_ll(r, 0, 6)));
    if (bad || !json_is_object(plan) || !sha || strcmp(hex, sha) != 0) {
        bt_fmt(err, errlen, "%s: plan '%.64s' is damaged: its JSON does not match its sha256",
               p->where, plan_id);
        json_decref(o);
        e = BT_ECORRUPT;
    } else {
        *out = o;
    }
    PQclear(r);
    return e;
}

/* ---- executions and steps -------------------------------------------------- */

static enum bt_err pg_execution_add(void *be, const char *execution_id, const char *plan_id,
                                    const char *state, char *err, size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, execution_id);
    par_text(&pa, plan_id);
    par_text(&pa, state);
    par_int(&pa, bt_wall_ms());
    char what[192];
    bt_fmt(what, sizeof what, "add execution '%.64s' of plan '%.64s'", execution_id, plan_id);
    return pg_one_rows(be, PG_WRITE, P_EXECUTION_ADD, &pa, NULL, err, errlen, what);
}

static enum bt_err pg_execution_set(void *be, const char *execution_id, const char *state,
                                    const char *result_json, char *err, size_t errlen)
{
    struct pg *p = be;
    struct params pa = {0};
    par_text(&pa, state);
    par_text(&pa, result_json);
    par_int(&pa, bt_wall_ms());
    par_text(&pa, execution_id);
    char what[128];
    bt_fmt(what, sizeof what, "set execution '%.64s' to %s", execution_id, state);
    long long rows = 0;
    enum bt_err e =
        pg_write_an(p, P_EXECUTION_SET, &pa, AN_EXECUTION, execution_id, &rows, err, errlen, what);
    if (e == BT_OK && rows == 0) {
        bt_fmt(err, errlen, "%s: no execution '%.64s'", p->where, execution_id);
        e = BT_ENOENT;
    }
    return e;
}

static enum bt_err pg_step_add(void *be, const char *execution_id, int step_index, const char *tool,
                               const char *state, char *err, size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, execution_id);
    par_int(&pa, step_index);
    par_text(&pa, tool);
    par_text(&pa, state);
    par_int(&pa, bt_wall_ms());
    char what[128];
    bt_fmt(what, sizeof what, "add step %d of execution '%.64s'", step_index, execution_id);
    return pg_one_rows(be, PG_WRITE, P_STEP_ADD, &pa, NULL, err, errlen, what);
}

static enum bt_err pg_step_set(void *be, const char *execution_id, int step_index,
                               const char *state, const char *result_json, char *err, size_t errlen)
{
    struct pg *p = be;
    struct params pa = {0};
    par_text(&pa, state);
    par_text(&pa, result_json);
    par_int(&pa, bt_wall_ms());
    par_text(&pa, execution_id);
    par_int(&pa, step_index);
    char what[160];
    bt_fmt(what, sizeof what, "set step %d of execution '%.64s' to %s", step_index, execution_id,
           state);
    long long rows = 0;
    enum bt_err e =
        pg_write_an(p, P_STEP_SET, &pa, AN_EXECUTION, execution_id, &rows, err, errlen, what);
    if (e == BT_OK && rows == 0) {
        bt_fmt(err, errlen, "%s: no step %d in execution '%.64s'", p->where, step_index,
               execution_id);
        e = BT_ENOENT;
    }
    return e;
}

/* ---- execution engine -------------------------------------------------------- */

/* Why a compare-and-set matched no row: absent, or in which state. */
static enum bt_err cas_missed(struct pg *p, const char *execution_id, const char *from, char *err,
                              size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, execution_id);
    PGresult *r;
    char what[128];
    bt_fmt(what, sizeof what, "read execution '%.64s'", execution_id);
    enum bt_err e = q(p, P_EXEC_STATE, &pa, &r, err, errlen, what);
    if (e != BT_OK)
        return e;
    if (PQntuples(r) > 0) {
        const char *now = col_text(r, 0, 0);
        bt_fmt(err, errlen, "%s: execution '%.64s' is %s, not %s", p->where, execution_id,
               now ? now : "in no state", from);
    } else {
        bt_fmt(err, errlen, "%s: no execution '%.64s'", p->where, execution_id);
    }
    PQclear(r);
    return BT_ENOENT;
}

/* A compare-and-set (transition, own): the update, and when it matched no
 * row, why, in the same transaction. A second updater of the same row
 * waits for the first and then finds the state changed. */
struct cas_ctx {
    enum pg_stmt id;
    const struct params *pa;
    const char *execution_id;
    const char *from;
    const char *what;
};

static enum bt_err cas_body(struct pg *p, void *c, char *err, size_t errlen)
{
    struct cas_ctx *x = c;
    long long rows = 0;
    enum bt_err e = q_run(p, x->id, x->pa, &rows, err, errlen, x->what);
    if (e == BT_OK && rows == 0)
        e = cas_missed(p, x->execution_id, x->from, err, errlen);
    else if (e == BT_OK)
        e = announce(p, AN_EXECUTION, x->execution_id, err, errlen);
    return e;
}

static enum bt_err pg_execution_transition(void *be, const char *execution_id, const char *from,
                                           const char *to, const char *result_json, char *err,
                                           size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, to);
    par_text(&pa, result_json);
    par_int(&pa, bt_wall_ms());
    par_text(&pa, execution_id);
    par_text(&pa, from);
    char what[160];
    bt_fmt(what, sizeof what, "set execution '%.64s' from %s to %s", execution_id, from, to);
    struct cas_ctx x = {P_EXEC_CAS, &pa, execution_id, from, what};
    return pg_run(be, PG_WRITE, cas_body, &x, err, errlen);
}

static enum bt_err pg_execution_own(void *be, const char *execution_id, const char *from,
                                    const char *owner_host, long long owner_pid,
                                    const char *owner_start, int steps_total, char *err,
                                    size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, owner_host);
    par_int(&pa, owner_pid);
    par_text(&pa, owner_start);
    par_int(&pa, steps_total);
    par_int(&pa, bt_wall_ms());
    par_text(&pa, execution_id);
    par_text(&pa, from);
    char what[128];
    bt_fmt(what, sizeof what, "start execution '%.64s'", execution_id);
    struct cas_ctx x = {P_EXEC_OWN, &pa, execution_id, from, what};
    return pg_run(be, PG_WRITE, cas_body, &x, err, errlen);
}

static enum bt_err pg_execution_progress(void *be, const char *execution_id, int ndone, int total,
                                         char *err, size_t errlen)
{
    struct pg *p = be;
    struct params pa = {0};
    par_int(&pa, ndone);
    par_int(&pa, total);
    par_int(&pa, bt_wall_ms());
    par_text(&pa, execution_id);
    char what[128];
    bt_fmt(what, sizeof what, "record progress of execution '%.64s'", execution_id);
    long long rows = 0;
    enum bt_err e =
        pg_write_an(p, P_EXEC_PROGRESS, &pa, AN_EXECUTION, execution_id, &rows, err, errlen, what);
    if (e == BT_OK && rows == 0) {
        bt_fmt(err, errlen, "%s: no execution '%.64s'", p->where, execution_id);
        e = BT_ENOENT;
    }
    return e;
}

/* execution_get: the row, its steps and the engine's columns, read in one
 * snapshot so the steps belong to the same moment as the execution. */
struct exget_ctx {
    const char *id;
    json_t *out;
};

static enum bt_err exget_body(struct pg *p, void *c, char *err, size_t errlen)
{
    struct exget_ctx *x = c;
    struct params pa = {0};
    par_text(&pa, x->id);
    char what[128];
    bt_fmt(what, sizeof what, "read execution '%.64s'", x->id);
    PGresult *r;
    enum bt_err e = q(p, P_EXECUTION_GET, &pa, &r, err, errlen, what);
    if (e != BT_OK)
        return e;
    if (PQntuples(r) == 0) {
        bt_fmt(err, errlen, "%s: no execution '%.64s'", p->where, x->id);
        PQclear(r);
        return BT_ENOENT;
    }
    bool bad = false;
    json_t *o = json_object();
    json_object_set_new(o, "execution_id", col_str(r, 0, 0, &bad));
    json_object_set_new(o, "plan_id", col_str(r, 0, 1, &bad));
    json_object_set_new(o, "state", col_str(r, 0, 2, &bad));
    json_object_set_new(o, "result", col_json(r, 0, 3, &bad));
    json_object_set_new(o, "created_ms", json_integer(col_ll(r, 0, 4)));
    json_object_set_new(o, "updated_ms", json_integer(col_ll(r, 0, 5)));
    PQclear(r);
    e = q(p, P_STEPS_GET, &pa, &r, err, errlen, what);
    if (e == BT_OK) {
        json_t *steps = json_array();
        json_object_set_new(o, "steps", steps);
        for (int i = 0; i < PQntuples(r); i++) {
            json_t *step = json_object();
            json_object_set_new(step, "index", json_integer(col_ll(r, i, 0)));
            json_object_set_new(step, "tool", col_str(r, i, 1, &bad));
            json_object_set_new(step, "state", col_str(r, i, 2, &bad));
            json_object_set_new(step, "result", col_json(r, i, 3, &bad));
            json_object_set_new(step, "updated_ms", json_integer(col_ll(r, i, 4)));
            json_array_append_new(steps, step);
        }
        PQclear(r);
        e = q(p, P_EXEC_EXTRA, &pa, &r, err, errlen, what);
    }
    if (e == BT_OK) {
        if (PQntuples(r) > 0) {
            json_object_set_new(o, "progress",
                                json_pack("{s:I, s:I}", "done", (json_int_t)col_ll(r, 0, 0),
                                          "total", (json_int_t)col_ll(r, 0, 1)));
            if (col_null(r, 0, 2)) {
                json_object_set_new(o, "owner", json_null());
            } else {
                json_t *owner = json_object();
                json_object_set_new(owner, "host", col_str(r, 0, 2, &bad));
                json_object_set_new(owner, "pid", json_integer(col_ll(r, 0, 3)));
                json_object_set_new(owner, "start", col_str(r, 0, 4, &bad));
                json_object_set_new(o, "owner", owner);
            }
            json_object_set_new(o, "request_id", col_str(r, 0, 5, &bad));
            json_object_set_new(o, "requester", col_str(r, 0, 6, &bad));
        }
        PQclear(r);
    }
    if (e == BT_OK && bad) {
        bt_fmt(err, errlen, "%s: execution '%.64s' is damaged (unreadable text or JSON)", p->where,
               x->id);
        e = BT_ECORRUPT;
    }
    if (e != BT_OK) {
        json_decref(o);
        return e;
    }
    x->out = o;
    return BT_OK;
}

static enum bt_err pg_execution_get(void *be, const char *execution_id, json_t **out, char *err,
                                    size_t errlen)
{
    struct exget_ctx x = {execution_id, NULL};
    enum bt_err e = pg_run(be, PG_SNAPSHOT, exget_body, &x, err, errlen);
    if (e != BT_OK) {
        json_decref(x.out);
        return e;
    }
    *out = x.out;
    return BT_OK;
}

/* One row of a listing as a new object; sets *bad on damaged columns. */
typedef json_t *(*row_fn)(const PGresult *r, int row, bool *bad);

/* Run statement id (one read) and turn its rows into a new array in *out.
 * The statement's LIMIT (or the key it selects by) bounds the rows. */
static enum bt_err pg_list(struct pg *p, enum pg_stmt id, const struct params *pa, row_fn row,
                           const char *what, json_t **out, char *err, size_t errlen)
{
    char doing[160];
    bt_fmt(doing, sizeof doing, "list %s", what);
    PGresult *r;
    enum bt_err e = pg_one(p, PG_READ, id, pa, &r, err, errlen, doing);
    if (e != BT_OK)
        return e;
    json_t *arr = json_array();
    bool bad = false;
    for (int i = 0; i < PQntuples(r); i++)
        json_array_append_new(arr, row(r, i, &bad));
    PQclear(r);
    if (bad) {
        bt_fmt(err, errlen, "%s: %s: an entry is damaged", p->where, what);
        json_decref(arr);
        return BT_ECORRUPT;
    }
    *out = arr;
    return BT_OK;
}

static json_t *running_row(const PGresult *r, int i, bool *bad)
{
    json_t *o = json_object();
    json_object_set_new(o, "execution_id", col_str(r, i, 0, bad));
    json_object_set_new(o, "plan_id", col_str(r, i, 1, bad));
    json_object_set_new(o, "request_id", col_str(r, i, 2, bad));
    json_object_set_new(o, "requester", col_str(r, i, 3, bad));
    json_object_set_new(o, "owner_host", col_str(r, i, 4, bad));
    json_object_set_new(o, "owner_pid", col_ms(r, i, 5));
    json_object_set_new(o, "owner_start", col_str(r, i, 6, bad));
    json_object_set_new(o, "updated_ms", json_integer(col_ll(r, i, 7)));
    return o;
}

static enum bt_err pg_executions_running(void *be, json_t **out, char *err, size_t errlen)
{
    struct params pa = {0};
    par_int(&pa, PG_RUNNING_MAX);
    return pg_list(be, P_RUNNING, &pa, running_row, "running executions", out, err, errlen);
}

/* {execution_id, requester, text} from columns i, i+1, i+2 of row. */
static json_t *who_row(const PGresult *r, int row, int i, bool *bad)
{
    json_t *o = json_object();
    json_object_set_new(o, "execution_id", col_str(r, row, i, bad));
    json_object_set_new(o, "requester", col_str(r, row, i + 1, bad));
    json_object_set_new(o, "text", col_str(r, row, i + 2, bad));
    return o;
}

/* One asset of a lock request: who holds it (not us), who waits ahead of
 * us. Adds an entry to busy when we cannot have it. */
static enum bt_err lock_look(struct pg *p, const char *execution_id, const char *asset,
                             bool have_seq, long long seq, json_t *busy, bool *bad, char *err,
                             size_t errlen)
{
    json_t *holder = NULL, *ahead = NULL;
    long long nahead = 0;
    char what[128];
    bt_fmt(what, sizeof what, "read the lock on '%.64s'", asset);
    struct params pa = {0};
    par_text(&pa, asset);
    par_text(&pa, execution_id);
    PGresult *r;
    enum bt_err e = q(p, P_LOCK_HOLDER, &pa, &r, err, errlen, what);
    if (e == BT_OK) {
        if (PQntuples(r) > 0)
            holder = who_row(r, 0, 0, bad);
        PQclear(r);
        if (have_seq)
            par_int(&pa, seq);
        else
            par_text(&pa, NULL);
        bt_fmt(what, sizeof what, "read the queue for '%.64s'", asset);
        e = q(p, P_LOCK_AHEAD, &pa, &r, err, errlen, what);
    }
    if (e == BT_OK) {
        if (PQntuples(r) > 0) {
            ahead = who_row(r, 0, 0, bad);
            nahead = col_ll(r, 0, 3);
        }
        PQclear(r);
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

struct locks_ctx {
    const char *execution_id;
    const json_t *assets;
    const char *assets_json;
    int64_t wait_ttl_ms;
    json_t *busy; /* out: the busy list (empty: acquired) */
};

/* Under the asset-lock lock, so that what is read is what is written, as
 * in SQLite's BEGIN IMMEDIATE. */
static enum bt_err locks_body(struct pg *p, void *c, char *err, size_t errlen)
{
    struct locks_ctx *x = c;
    int64_t now = bt_wall_ms();
    struct params id = {0}, pnow = {0};
    par_text(&id, x->execution_id);
    par_int(&pnow, now);
    enum bt_err e =
        q_run(p, P_LOCK_ASSET_LOCKS, NULL, NULL, err, errlen, "wait for the lock table");
    if (e == BT_OK)
        e = q_run(p, P_LOCKS_STALE, NULL, NULL, err, errlen, "drop locks of ended executions");
    if (e == BT_OK)
        e = q_run(p, P_WAITS_STALE, &pnow, NULL, err, errlen, "drop expired lock waiters");
    bool have_seq = false;
    long long seq = 0;
    PGresult *r;
    if (e == BT_OK &&
        (e = q(p, P_WAIT_SEQ, &id, &r, err, errlen, "read the lock queue")) == BT_OK) {
        if (PQntuples(r) > 0) {
            have_seq = true;
            seq = col_ll(r, 0, 0);
        }
        PQclear(r);
    }
    json_t *busy = json_array();
    bool bad = false;
    size_t i;
    const json_t *a;
    json_array_foreach(x->assets, i, a)
    {
        if (e != BT_OK)
            break;
        e = lock_look(p, x->execution_id, json_string_value(a), have_seq, seq, busy, &bad, err,
                      errlen);
    }
    if (e == BT_OK && bad) {
        bt_fmt(err, errlen, "%s: a lock holder's request is damaged", p->where);
        e = BT_ECORRUPT;
    }
    if (e == BT_OK && json_array_size(busy) == 0) {
        json_array_foreach(x->assets, i, a)
        {
            if (e != BT_OK)
                break;
            struct params pa = {0};
            par_text(&pa, json_string_value(a));
            par_text(&pa, x->execution_id);
            par_int(&pa, now);
            e = q_run(p, P_LOCK_INSERT, &pa, NULL, err, errlen, "take a lock");
        }
        if (e == BT_OK)
            e = q_run(p, P_WAIT_DELETE, &id, NULL, err, errlen, "leave the lock queue");
    } else if (e == BT_OK) {
        /* Keep our place in the queue (first come, first served), or take
         * one at the back. */
        struct params pa = {0};
        if (have_seq) {
            par_text(&pa, x->assets_json);
            par_int(&pa, now + x->wait_ttl_ms);
            par_text(&pa, x->execution_id);
        } else {
            par_text(&pa, x->execution_id);
            par_text(&pa, x->assets_json);
            par_int(&pa, now);
            par_int(&pa, now + x->wait_ttl_ms);
        }
        e = q_run(p, have_seq ? P_WAIT_REFRESH : P_WAIT_INSERT, &pa, NULL, err, errlen,
                  "wait for a lock");
    }
    if (e != BT_OK) {
        json_decref(busy);
        return e;
    }
    x->busy = busy;
    return BT_OK;
}

static enum bt_err pg_locks_acquire(void *be, const char *execution_id, const json_t *assets,
                                    const char *assets_json, int64_t wait_ttl_ms, json_t **out,
                                    char *err, size_t errlen)
{
    struct locks_ctx x = {execution_id, assets, assets_json, wait_ttl_ms, NULL};
    enum bt_err e = pg_run(be, PG_WRITE, locks_body, &x, err, errlen);
    if (e != BT_OK) {
        json_decref(x.busy);
        return e;
    }
    if (json_array_size(x.busy) == 0) {
        json_decref(x.busy);
        *out = json_pack("{s:b}", "acquired", 1);
    } else {
        *out = json_pack("{s:b, s:o}", "acquired", 0, "busy", x.busy);
    }
    return BT_OK;
}

/* Locks and queue place go together, in one transaction. */
static enum bt_err locks_release_body(struct pg *p, void *c, char *err, size_t errlen)
{
    struct params id = {0};
    par_text(&id, c);
    enum bt_err e =
        q_run(p, P_LOCK_ASSET_LOCKS, NULL, NULL, err, errlen, "wait for the lock table");
    if (e == BT_OK)
        e = q_run(p, P_LOCKS_RELEASE, &id, NULL, err, errlen, "release locks");
    if (e == BT_OK)
        e = q_run(p, P_WAIT_DELETE, &id, NULL, err, errlen, "leave the lock queue");
    return e;
}

static enum bt_err pg_locks_release(void *be, const char *execution_id, char *err, size_t errlen)
{
    return pg_run(be, PG_WRITE, locks_release_body, (void *)execution_id, err, errlen);
}

static json_t *lock_row(const PGresult *r, int i, bool *bad)
{
    json_t *o = json_object();
    json_object_set_new(o, "asset", col_str(r, i, 0, bad));
    json_object_set_new(o, "execution_id", col_str(r, i, 1, bad));
    json_object_set_new(o, "acquired_ms", json_integer(col_ll(r, i, 2)));
    return o;
}

static enum bt_err pg_locks_list(void *be, const char *execution_id, json_t **out, char *err,
                                 size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, execution_id);
    return pg_list(be, P_LOCKS_LIST, &pa, lock_row, "locks", out, err, errlen);
}

static enum bt_err pg_job_add(void *be, const char *execution_id, int step, const char *assets_json,
                              int max_attempts, int64_t run_at_ms, long long *job_id, char *err,
                              size_t errlen)
{
    struct pg *p = be;
    struct params pa = {0};
    par_text(&pa, execution_id);
    par_int(&pa, step);
    par_int(&pa, max_attempts);
    par_int(&pa, run_at_ms);
    par_text(&pa, assets_json);
    par_int(&pa, bt_wall_ms());
    char what[128];
    bt_fmt(what, sizeof what, "queue a job for execution '%.64s'", execution_id);
    PGresult *r;
    enum bt_err e = pg_one(p, PG_WRITE, P_JOB_ADD, &pa, &r, err, errlen, what);
    if (e == BT_EINVAL && strcmp(p->sqlstate, "23505") == 0) {
        /* jobs_one_active: one available or running job per execution. */
        bt_fmt(err, errlen, "%s: execution '%.64s' already has a job waiting or running", p->where,
               execution_id);
    } else if (e == BT_OK) {
        *job_id = col_ll(r, 0, 0);
    }
    PQclear(r);
    return e;
}

/* One jobs row (PG_JOB_COLS) as a new object; *bad on junk. */
static json_t *job_row(const PGresult *r, int i, bool *bad)
{
    json_t *o = json_object();
    json_object_set_new(o, "job_id", json_integer(col_ll(r, i, 0)));
    json_object_set_new(o, "execution_id", col_str(r, i, 1, bad));
    json_object_set_new(o, "step", json_integer(col_ll(r, i, 2)));
    json_object_set_new(o, "state", col_str(r, i, 3, bad));
    json_object_set_new(o, "attempt", json_integer(col_ll(r, i, 4)));
    json_object_set_new(o, "max_attempts", json_integer(col_ll(r, i, 5)));
    json_object_set_new(o, "run_at_ms", json_integer(col_ll(r, i, 6)));
    json_object_set_new(o, "assets", col_json(r, i, 7, bad));
    json_object_set_new(o, "locked_by", col_str(r, i, 8, bad));
    json_object_set_new(o, "locked_ms", col_ms(r, i, 9));
    json_object_set_new(o, "heartbeat_ms", col_ms(r, i, 10));
    json_object_set_new(o, "last_error", col_str(r, i, 11, bad));
    json_object_set_new(o, "created_ms", json_integer(col_ll(r, i, 12)));
    json_object_set_new(o, "updated_ms", json_integer(col_ll(r, i, 13)));
    return o;
}

/* The first row of a job query bound with one integer, row-locked (*job
 * NULL when there is none). */
static enum bt_err job_pick(struct pg *p, enum pg_stmt id, int64_t arg, json_t **job, char *err,
                            size_t errlen)
{
    *job = NULL;
    struct params pa = {0};
    par_int(&pa, arg);
    PGresult *r;
    enum bt_err e = q(p, id, &pa, &r, err, errlen, "look for a job");
    if (e != BT_OK)
        return e;
    bool bad = false;
    if (PQntuples(r) > 0)
        *job = job_row(r, 0, &bad);
    PQclear(r);
    if (bad) {
        bt_fmt(err, errlen, "%s: a queued job is damaged", p->where);
        json_decref(*job);
        *job = NULL;
        return BT_ECORRUPT;
    }
    return BT_OK;
}

struct claim_ctx {
    const char *worker;
    int64_t lease_ms;
    int64_t now;
    json_t *job;
    bool reclaimed;
};

/* One transaction: drop jobs of ended executions, then take over an
 * expired job or take the next available one. FOR UPDATE SKIP LOCKED:
 * a job another worker is claiming right now is passed over, never
 * waited for, and never handed out twice. */
static enum bt_err claim_body(struct pg *p, void *c, char *err, size_t errlen)
{
    struct claim_ctx *x = c;
    json_t *j = NULL;
    bool reclaimed = false;
    int64_t now = bt_wall_ms();
    struct params pnow = {0};
    par_int(&pnow, now);
    enum bt_err e =
        q_run(p, P_LOCK_ASSET_LOCKS_SHARED, NULL, NULL, err, errlen, "wait for the lock table");
    if (e == BT_OK)
        e = q_run(p, P_JOBS_ORPHAN, &pnow, NULL, err, errlen, "drop jobs of ended executions");
    if (e == BT_OK)
        e = job_pick(p, P_JOB_EXPIRED, now - x->lease_ms, &j, err, errlen);
    if (e == BT_OK && j)
        reclaimed = true;
    else if (e == BT_OK)
        e = job_pick(p, P_JOB_NEXT, now, &j, err, errlen);
    if (e == BT_OK && j) {
        struct params pa = {0};
        par_text(&pa, x->worker);
        par_int(&pa, now);
        par_int(&pa, json_integer_value(json_object_get(j, "job_id")));
        e = q_run(p, P_JOB_TAKE, &pa, NULL, err, errlen, "claim a job");
    }
    if (e != BT_OK) {
        json_decref(j);
        return e;
    }
    x->job = j;
    x->reclaimed = reclaimed;
    x->now = now;
    return BT_OK;
}

static enum bt_err pg_job_claim(void *be, const char *worker, int64_t lease_ms, json_t **job,
                                char *err, size_t errlen)
{
    struct claim_ctx x = {worker, lease_ms, 0, NULL, false};
    enum bt_err e = pg_run(be, PG_WRITE, claim_body, &x, err, errlen);
    json_t *j = x.job;
    if (e != BT_OK || !j) {
        json_decref(j);
        return e;
    }
    json_object_set_new(j, "previous_worker",
                        x.reclaimed ? json_incref(json_object_get(j, "locked_by")) : json_null());
    json_object_set_new(j, "reclaimed", json_boolean(x.reclaimed));
    json_object_set_new(j, "state", json_string("running"));
    json_object_set_new(j, "attempt",
                        json_integer(json_integer_value(json_object_get(j, "attempt")) + 1));
    json_object_set_new(j, "locked_by", json_string(worker));
    json_object_set_new(j, "locked_ms", json_integer(x.now));
    json_object_set_new(j, "heartbeat_ms", json_integer(x.now));
    json_object_set_new(j, "updated_ms", json_integer(x.now));
    *job = j;
    return BT_OK;
}

static enum bt_err pg_job_heartbeat(void *be, long long job_id, const char *worker, char *err,
                                    size_t errlen)
{
    struct pg *p = be;
    struct params pa = {0};
    par_int(&pa, bt_wall_ms());
    par_int(&pa, job_id);
    par_text(&pa, worker);
    char what[64];
    bt_fmt(what, sizeof what, "heartbeat job %lld", job_id);
    long long rows = 0;
    enum bt_err e = pg_one_rows(p, PG_WRITE, P_JOB_HEARTBEAT, &pa, &rows, err, errlen, what);
    if (e == BT_OK && rows == 0) {
        bt_fmt(err, errlen, "%s: job %lld is no longer held by %.64s", p->where, job_id, worker);
        e = BT_ENOENT;
    }
    return e;
}

static enum bt_err pg_job_finish(void *be, long long job_id, const char *worker, const char *state,
                                 int64_t run_at_ms, const char *last_error, bool uncount, char *err,
                                 size_t errlen)
{
    struct pg *p = be;
    struct params pa = {0};
    par_text(&pa, state);
    par_int(&pa, run_at_ms);
    par_text(&pa, last_error);
    par_int(&pa, uncount ? 1 : 0);
    par_int(&pa, bt_wall_ms());
    par_int(&pa, job_id);
    par_text(&pa, worker);
    char what[64];
    bt_fmt(what, sizeof what, "finish job %lld", job_id);
    long long rows = 0;
    enum bt_err e = pg_one_rows(p, PG_WRITE, P_JOB_FINISH, &pa, &rows, err, errlen, what);
    if (e == BT_OK && rows == 0) {
        bt_fmt(err, errlen, "%s: job %lld is not running under %.64s", p->where, job_id, worker);
        e = BT_ENOENT;
    }
    return e;
}

static enum bt_err pg_jobs_of(void *be, const char *execution_id, json_t **out, char *err,
                              size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, execution_id);
    char what[128];
    bt_fmt(what, sizeof what, "jobs of execution '%.64s'", execution_id);
    return pg_list(be, P_JOBS_OF, &pa, job_row, what, out, err, errlen);
}

static enum bt_err pg_notify(void *be, const char *execution_id, const char *text, char *err,
                             size_t errlen)
{
    struct pg *p = be;
    struct params pa = {0};
    par_text(&pa, execution_id);
    par_text(&pa, text);
    par_int(&pa, bt_wall_ms());
    char what[128];
    bt_fmt(what, sizeof what, "notify about execution '%.64s'", execution_id);
    long long rows = 0;
    enum bt_err e = pg_one_rows(p, PG_WRITE, P_NOTIFY, &pa, &rows, err, errlen, what);
    if (e == BT_OK && rows == 0) {
        bt_fmt(err, errlen, "%s: no execution '%.64s'", p->where, execution_id);
        e = BT_ENOENT;
    }
    return e;
}

static enum bt_err pg_notify_user(void *be, const char *user, const char *execution_id,
                                  const char *text, char *err, size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, user);
    par_text(&pa, execution_id);
    par_text(&pa, text);
    par_int(&pa, bt_wall_ms());
    char what[128];
    bt_fmt(what, sizeof what, "notify %.64s", user);
    return pg_one_rows(be, PG_WRITE, P_NOTIFY_USER, &pa, NULL, err, errlen, what);
}

static json_t *notification_row(const PGresult *r, int i, bool *bad)
{
    json_t *o = json_object();
    json_object_set_new(o, "notification_id", json_integer(col_ll(r, i, 0)));
    json_object_set_new(o, "user", col_str(r, i, 1, bad));
    json_object_set_new(o, "execution_id", col_str(r, i, 2, bad));
    json_object_set_new(o, "text", col_str(r, i, 3, bad));
    json_object_set_new(o, "created_ms", json_integer(col_ll(r, i, 4)));
    json_object_set_new(o, "delivered_ms", col_ms(r, i, 5));
    return o;
}

static enum bt_err pg_notifications(void *be, const char *user, bool undelivered, long limit,
                                    json_t **out, char *err, size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, user);
    par_bool(&pa, undelivered);
    par_int(&pa, limit);
    return pg_list(be, P_NOTIFICATIONS, &pa, notification_row, "notifications", out, err, errlen);
}

static enum bt_err pg_notification_delivered(void *be, long long notification_id, char *err,
                                             size_t errlen)
{
    struct pg *p = be;
    struct params pa = {0};
    par_int(&pa, bt_wall_ms());
    par_int(&pa, notification_id);
    char what[96];
    bt_fmt(what, sizeof what, "mark notification %lld delivered", notification_id);
    long long rows = 0;
    enum bt_err e = pg_one_rows(p, PG_WRITE, P_NOTIFIED, &pa, &rows, err, errlen, what);
    if (e == BT_OK && rows == 0) {
        bt_fmt(err, errlen, "%s: no notification %lld", p->where, notification_id);
        e = BT_ENOENT;
    }
    return e;
}

/* ---- console tokens and history ------------------------------------------ */

static enum bt_err pg_console_token_add(void *be, const char *token_sha256, const char *user,
                                        char *err, size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, token_sha256);
    par_text(&pa, user);
    par_int(&pa, bt_wall_ms());
    char what[128];
    bt_fmt(what, sizeof what, "add a console token for %.64s", user);
    return pg_one_rows(be, PG_WRITE, P_TOKEN_ADD, &pa, NULL, err, errlen, what);
}

struct token_ctx {
    const char *hash;
    char *user; /* out */
};

/* The look-up and the record of its use, in one transaction. */
static enum bt_err token_body(struct pg *p, void *c, char *err, size_t errlen)
{
    struct token_ctx *x = c;
    struct params pa = {0};
    par_text(&pa, x->hash);
    PGresult *r;
    enum bt_err e = q(p, P_TOKEN_GET, &pa, &r, err, errlen, "look up a console token");
    if (e != BT_OK)
        return e;
    char *user = NULL;
    if (PQntuples(r) == 0) {
        bt_fmt(err, errlen, "%s: no such console token", p->where);
        e = BT_ENOENT;
    } else if (col_null(r, 0, 0)) {
        bt_fmt(err, errlen, "%s: a console token is damaged", p->where);
        e = BT_ECORRUPT;
    } else {
        user = bt_strdup(PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    if (e == BT_OK) {
        struct params pu = {0};
        par_int(&pu, bt_wall_ms());
        par_text(&pu, x->hash);
        e = q_run(p, P_TOKEN_USE, &pu, NULL, err, errlen, "mark a console token used");
    }
    if (e != BT_OK) {
        free(user);
        return e;
    }
    x->user = user;
    return BT_OK;
}

static enum bt_err pg_console_token_user(void *be, const char *token_sha256, char **user, char *err,
                                         size_t errlen)
{
    struct token_ctx x = {token_sha256, NULL};
    enum bt_err e = pg_run(be, PG_WRITE, token_body, &x, err, errlen);
    if (e != BT_OK) {
        free(x.user);
        return e;
    }
    *user = x.user;
    return BT_OK;
}

static json_t *history_row(const PGresult *r, int i, bool *bad)
{
    json_t *o = json_object();
    json_object_set_new(o, "request_id", col_str(r, i, 0, bad));
    json_object_set_new(o, "channel", col_str(r, i, 1, bad));
    json_object_set_new(o, "text", col_str(r, i, 2, bad));
    json_object_set_new(o, "created_ms", json_integer(col_ll(r, i, 3)));
    return o;
}

static enum bt_err pg_requests_of(void *be, const char *user, long limit, json_t **out, char *err,
                                  size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, user);
    par_int(&pa, limit);
    char what[128];
    bt_fmt(what, sizeof what, "requests of %.64s", user);
    return pg_list(be, P_REQUESTS_OF, &pa, history_row, what, out, err, errlen);
}

static enum bt_err pg_request_get(void *be, const char *request_id, json_t **out, char *err,
                                  size_t errlen)
{
    struct pg *p = be;
    struct params pa = {0};
    par_text(&pa, request_id);
    char what[128];
    bt_fmt(what, sizeof what, "read request %.64s", request_id);
    PGresult *r;
    enum bt_err e = pg_one(p, PG_READ, P_REQUEST_GET, &pa, &r, err, errlen, what);
    if (e != BT_OK)
        return e;
    if (PQntuples(r) == 0) {
        bt_fmt(err, errlen, "no request %.64s", request_id);
        PQclear(r);
        return BT_ENOENT;
    }
    bool bad = false;
    json_t *o = json_object();
    json_object_set_new(o, "request_id", col_str(r, 0, 0, &bad));
    json_object_set_new(o, "user", col_str(r, 0, 1, &bad));
    json_object_set_new(o, "channel", col_str(r, 0, 2, &bad));
    json_object_set_new(o, "text", col_str(r, 0, 3, &bad));
    json_object_set_new(o, "created_ms", json_integer(col_ll(r, 0, 4)));
    PQclear(r);
    if (bad) {
        bt_fmt(err, errlen, "%s: request %.64s is damaged", p->where, request_id);
        json_decref(o);
        return BT_ECORRUPT;
    }
    *out = o;
    return BT_OK;
}

/* ---- approvals ------------------------------------------------------------ */

static enum bt_err pg_approval_add(void *be, const char *approval_id, const char *plan_id,
                                   const char *execution_id, int level,
                                   const char *requirement_json, int64_t expires_ms, char *err,
                                   size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, approval_id);
    par_text(&pa, plan_id);
    par_text(&pa, execution_id);
    par_int(&pa, level);
    par_text(&pa, requirement_json);
    par_int(&pa, expires_ms);
    par_int(&pa, bt_wall_ms());
    char what[192];
    bt_fmt(what, sizeof what, "add approval '%.64s' of plan '%.64s'", approval_id, plan_id);
    return pg_write_an(be, P_APPROVAL_ADD, &pa, AN_APPROVAL, approval_id, NULL, err, errlen, what);
}

/* One approvals row (PG_APPROVAL_COLS) as a new object; *bad on junk. */
static json_t *approval_row(const PGresult *r, int i, bool *bad)
{
    json_t *o = json_object();
    json_object_set_new(o, "approval_id", col_str(r, i, 0, bad));
    json_object_set_new(o, "plan_id", col_str(r, i, 1, bad));
    json_object_set_new(o, "execution_id", col_str(r, i, 2, bad));
    json_object_set_new(o, "level", json_integer(col_ll(r, i, 3)));
    json_object_set_new(o, "requirement", col_json(r, i, 4, bad));
    json_object_set_new(o, "state", col_str(r, i, 5, bad));
    json_object_set_new(o, "expires_ms", json_integer(col_ll(r, i, 6)));
    json_object_set_new(o, "created_ms", json_integer(col_ll(r, i, 7)));
    return o;
}

static enum bt_err pg_approval_get(void *be, const char *approval_id, json_t **out, char *err,
                                   size_t errlen)
{
    struct pg *p = be;
    struct params pa = {0};
    par_text(&pa, approval_id);
    char what[128];
    bt_fmt(what, sizeof what, "read approval '%.64s'", approval_id);
    PGresult *r;
    enum bt_err e = pg_one(p, PG_READ, P_APPROVAL_GET, &pa, &r, err, errlen, what);
    if (e != BT_OK)
        return e;
    if (PQntuples(r) == 0) {
        bt_fmt(err, errlen, "%s: no approval '%.64s'", p->where, approval_id);
        PQclear(r);
        return BT_ENOENT;
    }
    bool bad = false;
    json_t *o = approval_row(r, 0, &bad);
    PQclear(r);
    if (bad) {
        bt_fmt(err, errlen, "%s: approval '%.64s' is damaged", p->where, approval_id);
        json_decref(o);
        return BT_ECORRUPT;
    }
    *out = o;
    return BT_OK;
}

static enum bt_err approvals_list(struct pg *p, enum pg_stmt id, const char *which, json_t **out,
                                  char *err, size_t errlen)
{
    struct params pa = {0};
    par_int(&pa, BT_STORE__PENDING_MAX);
    char what[64];
    bt_fmt(what, sizeof what, "%s approvals", which);
    return pg_list(p, id, &pa, approval_row, what, out, err, errlen);
}

static enum bt_err pg_approvals_pending(void *be, json_t **out, char *err, size_t errlen)
{
    return approvals_list(be, P_APPROVALS_PENDING, "pending", out, err, errlen);
}

static enum bt_err pg_approvals_open(void *be, json_t **out, char *err, size_t errlen)
{
    return approvals_list(be, P_APPROVALS_OPEN, "open", out, err, errlen);
}

static enum bt_err pg_approvals_unstarted(void *be, int64_t decided_before_ms, json_t **out,
                                          char *err, size_t errlen)
{
    struct params pa = {0};
    par_int(&pa, decided_before_ms);
    par_int(&pa, BT_STORE__PENDING_MAX);
    return pg_list(be, P_APPROVALS_UNSTARTED, &pa, approval_row,
                   "approved plans that never started", out, err, errlen);
}

/* ---- approval dialogue ------------------------------------------------------ */

static json_t *decision_row(const PGresult *r, int i, bool *bad)
{
    json_t *o = json_object();
    json_object_set_new(o, "user", col_str(r, i, 0, bad));
    json_object_set_new(o, "decision", col_str(r, i, 1, bad));
    json_object_set_new(o, "step", json_integer(col_ll(r, i, 2)));
    json_object_set_new(o, "via", col_str(r, i, 3, bad));
    json_object_set_new(o, "ts_ms", json_integer(col_ll(r, i, 4)));
    return o;
}

static enum bt_err pg_approval_decisions(void *be, const char *approval_id, json_t **out, char *err,
                                         size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, approval_id);
    char what[128];
    bt_fmt(what, sizeof what, "decisions on approval '%.64s'", approval_id);
    return pg_list(be, P_APPROVAL_DECISIONS, &pa, decision_row, what, out, err, errlen);
}

/* The approval row, locked (FOR UPDATE) until the transaction ends, and
 * its decisions, read after the lock was granted (READ COMMITTED: each
 * statement sees what was committed before it began, so the decisions of
 * whoever held the row before us are there). */
static enum bt_err approval_locked_read(struct pg *p, const char *approval_id, json_t **out,
                                        char *err, size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, approval_id);
    char what[128];
    bt_fmt(what, sizeof what, "read approval '%.64s'", approval_id);
    PGresult *r;
    enum bt_err e = q(p, P_APPROVAL_LOCK, &pa, &r, err, errlen, what);
    if (e != BT_OK)
        return e;
    if (PQntuples(r) == 0) {
        bt_fmt(err, errlen, "%s: no approval '%.64s'", p->where, approval_id);
        PQclear(r);
        return BT_ENOENT;
    }
    bool bad = false;
    json_t *o = approval_row(r, 0, &bad);
    json_object_set_new(o, "updated_ms", json_integer(col_ll(r, 0, 8)));
    json_object_set_new(o, "reminded_ms", col_ms(r, 0, 9));
    json_object_set_new(o, "escalated_ms", col_ms(r, 0, 10));
    PQclear(r);
    if (!bad) {
        bt_fmt(what, sizeof what, "list decisions on approval '%.64s'", approval_id);
        e = q(p, P_APPROVAL_DECISIONS, &pa, &r, err, errlen, what);
        if (e == BT_OK) {
            json_t *decisions = json_array();
            for (int i = 0; i < PQntuples(r); i++)
                json_array_append_new(decisions, decision_row(r, i, &bad));
            json_object_set_new(o, "decisions", decisions);
            PQclear(r);
        }
    }
    if (e == BT_OK && bad) {
        bt_fmt(err, errlen, "%s: approval '%.64s' is damaged", p->where, approval_id);
        e = BT_ECORRUPT;
    }
    if (e != BT_OK) {
        json_decref(o);
        return e;
    }
    *out = o;
    return BT_OK;
}

struct update_ctx {
    const char *approval_id;
    bt_store__approval_check check;
    void *ctx;
};

/* The read-check-write of the approval dialogue: the row lock taken by the
 * read is held through the check to the commit, so a second caller (any
 * connection) waits at its read and then sees this one's change: two
 * approvers racing for the last approval cannot both complete it. The
 * approval object stays alive until the writes are done, because the
 * change may borrow strings from it. */
static enum bt_err update_body(struct pg *p, void *c, char *err, size_t errlen)
{
    struct update_ctx *x = c;
    json_t *o = NULL;
    struct bt_store_approval_change ch = {NULL, NULL, NULL, -1, NULL, false, false};
    enum bt_err e = approval_locked_read(p, x->approval_id, &o, err, errlen);
    if (e == BT_OK) {
        p->no_retry = true; /* check is called once per call (store_int.h) */
        e = x->check(x->ctx, o, &ch, err, errlen);
    }
    int64_t now = bt_wall_ms();
    char what[160];
    bt_fmt(what, sizeof what, "update approval '%.64s'", x->approval_id);
    if (e == BT_OK && ch.user) {
        struct params pa = {0};
        par_text(&pa, x->approval_id);
        par_text(&pa, ch.user);
        par_text(&pa, ch.decision);
        par_int(&pa, ch.step);
        par_text(&pa, ch.via);
        par_int(&pa, now);
        e = q_run(p, P_APPROVAL_DECIDE, &pa, NULL, err, errlen, what);
    }
    if (e == BT_OK && ch.state) {
        struct params pa = {0};
        par_text(&pa, ch.state);
        par_int(&pa, now);
        par_text(&pa, x->approval_id);
        e = q_run(p, P_APPROVAL_STATE, &pa, NULL, err, errlen, what);
    }
    if (e == BT_OK && (ch.reminded || ch.escalated)) {
        struct params pa = {0};
        par_bool(&pa, ch.reminded);
        par_int(&pa, now);
        par_bool(&pa, ch.escalated);
        par_text(&pa, x->approval_id);
        e = q_run(p, P_APPROVAL_MARK, &pa, NULL, err, errlen, what);
    }
    if (e == BT_OK && (ch.user || ch.state || ch.reminded || ch.escalated))
        e = announce(p, AN_APPROVAL, x->approval_id, err, errlen);
    json_decref(o);
    return e;
}

static enum bt_err pg_approval_update(void *be, const char *approval_id,
                                      bt_store__approval_check check, void *ctx, char *err,
                                      size_t errlen)
{
    struct update_ctx x = {approval_id, check, ctx};
    return pg_run(be, PG_WRITE, update_body, &x, err, errlen);
}

/* ---- settings -------------------------------------------------------------- */

struct setting_ctx {
    const char *key;
    const char *value;
    char *out;
};

/* INSERT ... ON CONFLICT DO NOTHING, then SELECT: a second inserter of the
 * same key waits for the first to commit and then does nothing, and the
 * SELECT (a new snapshot) reads the first one's value. */
static enum bt_err setting_body(struct pg *p, void *c, char *err, size_t errlen)
{
    struct setting_ctx *x = c;
    struct params pa = {0};
    par_text(&pa, x->key);
    par_text(&pa, x->value);
    par_int(&pa, bt_wall_ms());
    enum bt_err e = q_run(p, P_SETTING_INSERT, &pa, NULL, err, errlen, "store setting");
    if (e != BT_OK)
        return e;
    PGresult *r;
    char what[128];
    bt_fmt(what, sizeof what, "read setting '%.64s'", x->key);
    pa.n = 1;
    if ((e = q(p, P_SETTING_GET, &pa, &r, err, errlen, what)) != BT_OK)
        return e;
    if (PQntuples(r) > 0 && !col_null(r, 0, 0)) {
        x->out = bt_strdup(PQgetvalue(r, 0, 0));
    } else {
        bt_fmt(err, errlen, "%s: setting '%.64s' vanished after it was written", p->where, x->key);
        e = BT_ESTORE;
    }
    PQclear(r);
    return e;
}

static enum bt_err pg_setting_ensure(void *be, const char *key, const char *value, char **out,
                                     char *err, size_t errlen)
{
    struct setting_ctx x = {key, value, NULL};
    enum bt_err e = pg_run(be, PG_WRITE, setting_body, &x, err, errlen);
    if (e != BT_OK) {
        free(x.out);
        return e;
    }
    *out = x.out;
    return BT_OK;
}

/* ---- audit log --------------------------------------------------------------- */

struct append_ctx {
    const char *request_id;
    const char *actor;
    const char *event;
    const json_t *detail;
    const char *detail_text;
};

/* Take the chain lock, read the last entry, hash the new one on top of it,
 * insert; the lock is held to the commit, so two connections (threads or
 * processes) cannot both chain onto the same entry. ts_ms never goes below
 * the previous entry's, so "since" queries stay correct when the wall
 * clock steps back. */
static enum bt_err append_body(struct pg *p, void *c, char *err, size_t errlen)
{
    struct append_ctx *x = c;
    enum bt_err e = q_run(p, P_LOCK_AUDIT, NULL, NULL, err, errlen, "wait for the audit log");
    long long seq = 1;
    int64_t ts = bt_wall_ms();
    char prev[65];
    bt_strlcpy(prev, BT_STORE__AUDIT_GENESIS, sizeof prev);
    PGresult *r;
    if (e == BT_OK &&
        (e = q(p, P_AUDIT_LAST, NULL, &r, err, errlen, "read the last audit entry")) == BT_OK) {
        if (PQntuples(r) > 0) {
            seq = col_ll(r, 0, 0) + 1;
            if (col_ll(r, 0, 1) > ts)
                ts = col_ll(r, 0, 1);
            if (col_null(r, 0, 2) || !bt_strlcpy(prev, PQgetvalue(r, 0, 2), sizeof prev)) {
                bt_fmt(err, errlen, "%s: audit log: the last entry's hash is damaged", p->where);
                e = BT_ECORRUPT;
            }
        }
        PQclear(r);
    }
    char hash[65];
    if (e == BT_OK)
        e = bt_store__audit_hash(prev, seq, ts, x->request_id, x->actor, x->event, x->detail, hash,
                                 err, errlen);
    if (e == BT_OK) {
        struct params pa = {0};
        par_int(&pa, seq);
        par_int(&pa, ts);
        par_text(&pa, x->request_id);
        par_text(&pa, x->actor);
        par_text(&pa, x->event);
        par_text(&pa, x->detail_text);
        par_text(&pa, prev);
        par_text(&pa, hash);
        e = q_run(p, P_AUDIT_INSERT, &pa, NULL, err, errlen, "append audit entry");
    }
    return e;
}

static enum bt_err pg_audit_append(void *be, const char *request_id, const char *actor,
                                   const char *event, const json_t *detail, char *err,
                                   size_t errlen)
{
    struct pg *p = be;
    char *detail_text = NULL;
    if (detail && !(detail_text = bt_json_canonical(detail))) {
        bt_fmt(err, errlen, "%s: audit detail cannot be encoded as JSON", p->where);
        return BT_EINVAL;
    }
    struct append_ctx x = {request_id, actor, event, detail, detail_text};
    enum bt_err e = pg_run(p, PG_WRITE, append_body, &x, err, errlen);
    free(detail_text);
    return e;
}

/* One audit_log row (PG_AUDIT_COLS) as a new object; *bad on junk. */
static json_t *audit_row(const PGresult *r, int i, bool *bad)
{
    json_t *o = json_object();
    json_object_set_new(o, "seq", json_integer(col_ll(r, i, 0)));
    json_object_set_new(o, "ts_ms", json_integer(col_ll(r, i, 1)));
    json_object_set_new(o, "request_id", col_str(r, i, 2, bad));
    json_object_set_new(o, "actor", col_str(r, i, 3, bad));
    json_object_set_new(o, "event", col_str(r, i, 4, bad));
    json_object_set_new(o, "detail", col_json(r, i, 5, bad));
    json_object_set_new(o, "prev_hash", col_str(r, i, 6, bad));
    json_object_set_new(o, "hash", col_str(r, i, 7, bad));
    return o;
}

static enum bt_err pg_audit_list(void *be, int64_t since_ms, long limit, json_t **out, char *err,
                                 size_t errlen)
{
    struct params pa = {0};
    par_int(&pa, since_ms);
    par_int(&pa, limit);
    return pg_list(be, P_AUDIT_LIST, &pa, audit_row, "audit log entries", out, err, errlen);
}

static enum bt_err pg_audit_of(void *be, const char *request_id, long limit, json_t **out,
                               char *err, size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, request_id);
    par_int(&pa, limit);
    return pg_list(be, P_AUDIT_OF, &pa, audit_row, "audit log entries", out, err, errlen);
}

/* Check row i against the chain so far: seq follows on, prev_hash is the
 * previous entry's hash, hash matches the content. Returns false with err
 * naming the first bad seq. */
static bool audit_row_ok(struct pg *p, const PGresult *r, int i, long long expect_seq,
                         const char *prev, char *err, size_t errlen)
{
    long long seq = col_ll(r, i, 0);
    if (seq != expect_seq) {
        if (seq > expect_seq)
            bt_fmt(err, errlen,
                   "%s: audit log: chain broken at seq %lld: entry is missing "
                   "(next is %lld)",
                   p->where, expect_seq, seq);
        else
            bt_fmt(err, errlen, "%s: audit log: chain broken at seq %lld: unexpected entry",
                   p->where, seq);
        return false;
    }
    const char *ph = col_text(r, i, 6);
    const char *h = col_text(r, i, 7);
    if (!ph || strcmp(ph, prev) != 0) {
        bt_fmt(err, errlen,
               "%s: audit log: chain broken at seq %lld: prev_hash does not match entry %lld",
               p->where, seq, seq - 1);
        return false;
    }
    bool bad = false;
    json_t *detail = col_json(r, i, 5, &bad);
    if (bad || !(json_is_object(detail) || json_is_null(detail))) {
        bt_fmt(err, errlen, "%s: audit log: chain broken at seq %lld: detail is not a JSON object",
               p->where, seq);
        json_decref(detail);
        return false;
    }
    char hash[65], ignored[BT_ERRLEN];
    enum bt_err e = bt_store__audit_hash(
        prev, seq, col_ll(r, i, 1), col_text(r, i, 2), col_text(r, i, 3), col_text(r, i, 4),
        json_is_null(detail) ? NULL : detail, hash, ignored, sizeof ignored);
    json_decref(detail);
    if (e != BT_OK || !h || strcmp(hash, h) != 0) {
        bt_fmt(err, errlen,
               "%s: audit log: chain broken at seq %lld: hash does not match the entry's content",
               p->where, seq);
        return false;
    }
    return true;
}

/* Walk the chain from seq 1 in batches of PG_AUDIT_BATCH inside one
 * read-only snapshot: consistent (appenders carry on meanwhile) and bounded
 * memory however long the log is. */
static enum bt_err verify_body(struct pg *p, void *c, char *err, size_t errlen)
{
    long long *entries = c;
    *entries = 0;
    char prev[65];
    bt_strlcpy(prev, BT_STORE__AUDIT_GENESIS, sizeof prev);
    /* Start below any seq so that a row inserted with seq <= 0 is seen. */
    long long last = INT64_MIN, expect = 1;
    for (;;) {
        struct params pa = {0};
        par_int(&pa, last);
        par_int(&pa, PG_AUDIT_BATCH);
        PGresult *r;
        enum bt_err e = q(p, P_AUDIT_BATCH, &pa, &r, err, errlen, "read the audit log");
        if (e != BT_OK)
            return e;
        int rows = PQntuples(r);
        for (int i = 0; i < rows; i++) {
            if (!audit_row_ok(p, r, i, expect, prev, err, errlen)) {
                PQclear(r);
                return BT_ECORRUPT;
            }
            bt_strlcpy(prev, PQgetvalue(r, i, 7), sizeof prev);
            last = col_ll(r, i, 0);
            expect = last + 1;
            (*entries)++;
        }
        PQclear(r);
        if (rows < PG_AUDIT_BATCH)
            return BT_OK;
    }
}

static enum bt_err pg_audit_verify(void *be, long long *entries, char *err, size_t errlen)
{
    long long n = 0;
    enum bt_err e = pg_run(be, PG_SNAPSHOT, verify_body, &n, err, errlen);
    *entries = n;
    return e;
}

/* ---- team chat ------------------------------------------------------------ */

/* The first INSERT of a key wins; a concurrent one waits for it to commit
 * and then inserts nothing. */
static enum bt_err pg_chat_claim(void *be, const char *key, bool *claimed, char *err, size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, key);
    par_int(&pa, bt_wall_ms());
    char what[128];
    bt_fmt(what, sizeof what, "claim chat event %.64s", key);
    long long rows = 0;
    enum bt_err e = pg_one_rows(be, PG_WRITE, P_CHAT_CLAIM, &pa, &rows, err, errlen, what);
    if (e == BT_OK)
        *claimed = rows == 1;
    return e;
}

static enum bt_err pg_chat_post_add(void *be, const char *approval_id, const char *surface,
                                    const char *channel, const char *post, const char *thread,
                                    char *err, size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, surface);
    par_text(&pa, channel);
    par_text(&pa, post);
    par_text(&pa, approval_id);
    par_text(&pa, thread);
    par_int(&pa, bt_wall_ms());
    char what[128];
    bt_fmt(what, sizeof what, "record the chat post of %.64s", approval_id);
    return pg_one_rows(be, PG_WRITE, P_CHAT_POST_ADD, &pa, NULL, err, errlen, what);
}

static json_t *chat_post_row(const PGresult *r, int i, bool *bad)
{
    (void)bad;
    return json_pack("{s:s?, s:s?, s:s?, s:s*, s:I}", "surface", col_text(r, i, 0), "channel",
                     col_text(r, i, 1), "post", col_text(r, i, 2), "thread", col_text(r, i, 3),
                     "created_ms", (json_int_t)col_ll(r, i, 4));
}

static enum bt_err pg_chat_posts_of(void *be, const char *approval_id, json_t **out, char *err,
                                    size_t errlen)
{
    struct params pa = {0};
    par_text(&pa, approval_id);
    par_int(&pa, BT_STORE__CHAT_POSTS_MAX);
    char what[128];
    bt_fmt(what, sizeof what, "the chat posts of %.64s", approval_id);
    return pg_list(be, P_CHAT_POSTS_OF, &pa, chat_post_row, what, out, err, errlen);
}

/* Housekeeping: forget chat events older than BT_STORE__CHAT_EVENT_KEEP_MS.
 * Nothing like SQLite's WAL checkpoint is needed: the server checkpoints
 * its own write-ahead log and autovacuum reclaims dead rows. */
static enum bt_err pg_maintain(void *be, char *err, size_t errlen)
{
    struct params pa = {0};
    par_int(&pa, bt_wall_ms() - BT_STORE__CHAT_EVENT_KEEP_MS);
    enum bt_err e =
        pg_one_rows(be, PG_WRITE, P_CHAT_FORGET, &pa, NULL, err, errlen, "forget old chat events");
    if (e == BT_ETIMEOUT) {
        /* Locked elsewhere for a while: the next round will do it (as
         * SQLite's maintain treats a busy database). */
        if (err && errlen)
            err[0] = '\0';
        return BT_OK;
    }
    return e;
}

/* ---- change notifications -------------------------------------------------- */

static enum bt_err listen_body(struct pg *p, void *ctx, char *err, size_t errlen)
{
    (void)ctx;
    return pg_cmd(p, "LISTEN " PG_CHANNEL, err, errlen, "listen for changes");
}

/* bt_store_listen. Once listening, the handle stays so: pg_session listens
 * again on every new connection. A LISTEN that cannot be sent because the
 * database cannot be reached (after pg_run's reconnect) still makes the
 * handle a listening one: pg_changes connects, listens and reports "*". */
static enum bt_err pg_listen(void *be, char *err, size_t errlen)
{
    struct pg *p = be;
    if (p->in_batch) {
        bt_fmt(err, errlen, "%s: cannot listen for changes inside a batch", p->where);
        return BT_EINVAL;
    }
    if (p->listening)
        return BT_OK;
    enum bt_err e = pg_run(p, PG_READ, listen_body, NULL, err, errlen);
    if (e == BT_EUNAVAIL && PQstatus(p->conn) != CONNECTION_OK) {
        bt_log(BT_LOG_WARN, "store", NULL, "%s; listening once the database is back", err);
        p->missed = true;
        e = BT_OK;
    }
    if (e == BT_OK) {
        p->listening = true;
        p->retry_at_ms = 0;
        p->retry_delay_ms = PG_RECONNECT_FIRST_MS;
        if (err && errlen)
            err[0] = '\0';
    }
    return e;
}

/* A connection attempt of pg_changes failed (why: libpq's message, or
 * NULL to take it from the connection): the next one waits retry_delay_ms,
 * which doubles up to PG_RECONNECT_BUDGET_MS. */
static enum bt_err attempt_failed(struct pg *p, const char *why, char *err, size_t errlen)
{
    one_line(p->connect_error, sizeof p->connect_error, why ? why : PQerrorMessage(p->conn));
    p->connecting = false;
    PQfinish(p->conn);
    p->conn = NULL;
    p->retry_at_ms = bt_mono_ms() + p->retry_delay_ms;
    p->retry_delay_ms = p->retry_delay_ms * 2 > PG_RECONNECT_BUDGET_MS ? PG_RECONNECT_BUDGET_MS
                                                                       : p->retry_delay_ms * 2;
    bt_fmt(err, errlen, "%s: no connection to the database for change notifications: %s", p->where,
           p->connect_error);
    return BT_EUNAVAIL;
}

/* Get pg_changes a connection again, waiting no later than deadline
 * (monotonic ms): the attempt is asynchronous and, when the deadline comes
 * first, goes on in the next call (BT_EUNAVAIL meanwhile). An attempt that
 * takes PG_CONNECT_TIMEOUT_S is given up (PQconnectPoll ignores
 * connect_timeout). On success the session is set up, LISTEN included. */
static enum bt_err listen_reconnect(struct pg *p, int64_t deadline, char *err, size_t errlen)
{
    if (!p->connecting) {
        int64_t now = bt_mono_ms();
        if (now < p->retry_at_ms) {
            int64_t until = deadline < p->retry_at_ms ? deadline : p->retry_at_ms;
            if (until > now)
                sleep_ms((long)(until - now));
            if (bt_mono_ms() < p->retry_at_ms) {
                bt_fmt(err, errlen,
                       "%s: no connection to the database for change notifications: %s", p->where,
                       p->connect_error[0] ? p->connect_error : "lost");
                return BT_EUNAVAIL;
            }
        }
        const char *val[PG_CONN_KEYS];
        char tmo[16];
        bt_fmt(tmo, sizeof tmo, "%d", PG_CONNECT_TIMEOUT_S);
        pg_conn_values(p, tmo, val);
        if (p->conn)
            PQfinish(p->conn);
        p->conn = PQconnectStartParams(pg_conn_kw, val, 1);
        if (!p->conn)
            return attempt_failed(p, "out of memory", err, errlen);
        p->connecting = true;
        p->connect_started_ms = bt_mono_ms();
        /* Before the first PQconnectPoll, wait as if it had said WRITING. */
        p->connect_poll =
            PQstatus(p->conn) == CONNECTION_BAD ? PGRES_POLLING_FAILED : PGRES_POLLING_WRITING;
    }
    while (p->connect_poll != PGRES_POLLING_OK) {
        if (p->connect_poll == PGRES_POLLING_FAILED)
            return attempt_failed(p, NULL, err, errlen);
        int64_t now = bt_mono_ms();
        int64_t give_up = p->connect_started_ms + (int64_t)PG_CONNECT_TIMEOUT_S * 1000;
        if (now >= give_up)
            return attempt_failed(p, "timeout expired", err, errlen);
        int64_t until = deadline < give_up ? deadline : give_up;
        struct pollfd pfd = {PQsocket(p->conn),
                             p->connect_poll == PGRES_POLLING_READING ? POLLIN : POLLOUT, 0};
        if (pfd.fd < 0)
            return attempt_failed(p, NULL, err, errlen);
        /* At least one look, even when the deadline has passed, so that
         * calls with timeout 0 move the attempt on too. */
        int n = poll(&pfd, 1, until > now ? (int)(until - now) : 0);
        if (n < 0 && errno != EINTR)
            return attempt_failed(p, strerror(errno), err, errlen);
        if (n > 0) {
            p->connect_poll = PQconnectPoll(p->conn);
        } else if (bt_mono_ms() >= deadline) {
            bt_fmt(err, errlen, "%s: connecting to the database for change notifications",
                   p->where);
            return BT_EUNAVAIL;
        }
    }
    p->connecting = false;
    enum bt_err e = pg_session(p, err, errlen);
    if (e != BT_OK) {
        char why[300];
        bt_strlcpy(why, err, sizeof why);
        return attempt_failed(p, why, err, errlen);
    }
    p->retry_at_ms = 0;
    p->retry_delay_ms = PG_RECONNECT_FIRST_MS;
    p->connect_error[0] = '\0';
    return BT_OK;
}

/* Move announcements libpq has received into out (at most
 * BT_STORE__CHANGES_MAX entries; seen: the ids already in it). */
static void take_announcements(struct pg *p, json_t *out, json_t *seen)
{
    PGnotify *n;
    while (json_array_size(out) < BT_STORE__CHANGES_MAX && (n = PQnotifies(p->conn)) != NULL) {
        const char *id = n->extra;
        size_t len = id ? strlen(id) : 0;
        if (strcmp(n->relname, PG_CHANNEL) == 0 && len > 0 && bt_utf8_valid(id, len) &&
            !json_object_get(seen, id)) {
            json_object_set_new(seen, id, json_true());
            json_array_append_new(out, json_string(id));
        }
        PQfreemem(n);
    }
}

/* bt_store_changes: announcements already received are taken at once;
 * else wait (poll on the socket) until some arrive or the time is up. A
 * broken connection is made again by listen_reconnect. */
static enum bt_err pg_changes(void *be, int timeout_ms, json_t **ids, char *err, size_t errlen)
{
    struct pg *p = be;
    if (!p->listening || p->in_batch) {
        bt_fmt(err, errlen, "%s: changes: %s", p->where,
               p->in_batch ? "not inside a batch" : "the handle does not listen (bt_store_listen)");
        return BT_EINVAL;
    }
    int64_t deadline = bt_mono_ms() + timeout_ms;
    json_t *out = json_array(), *seen = json_object();
    enum bt_err e = BT_OK;
    for (;;) {
        if (p->connecting || PQstatus(p->conn) != CONNECTION_OK) {
            e = listen_reconnect(p, deadline, err, errlen);
            if (e != BT_OK)
                break;
        }
        if (p->missed) {
            p->missed = false;
            json_object_set_new(seen, BT_STORE_CHANGES_ALL, json_true());
            json_array_append_new(out, json_string(BT_STORE_CHANGES_ALL));
        }
        /* The socket is non-blocking (libpq keeps it so): this reads what
         * is there (one buffer at a time: again while that brings more),
         * and finds a connection the server closed. */
        size_t before;
        do {
            before = json_array_size(out);
            if (!PQconsumeInput(p->conn) && PQstatus(p->conn) == CONNECTION_OK) {
                char msg[300];
                one_line(msg, sizeof msg, PQerrorMessage(p->conn));
                bt_fmt(err, errlen, "%s: changes: %s", p->where, msg);
                e = BT_ESTORE;
                break;
            }
            take_announcements(p, out, seen);
        } while (json_array_size(out) > before && json_array_size(out) < BT_STORE__CHANGES_MAX);
        if (e != BT_OK)
            break;
        if (json_array_size(out) > 0)
            break; /* a connection broken meanwhile is the next call's */
        if (PQstatus(p->conn) != CONNECTION_OK)
            continue; /* connect again at once */
        int64_t left = deadline - bt_mono_ms();
        if (left <= 0)
            break;
        struct pollfd pfd = {PQsocket(p->conn), POLLIN, 0};
        if (poll(&pfd, 1, (int)left) < 0 && errno != EINTR) {
            bt_fmt(err, errlen, "%s: changes: poll: %s", p->where, strerror(errno));
            e = BT_EIO;
            break;
        }
    }
    json_decref(seen);
    if (e != BT_OK) {
        json_decref(out);
        return e;
    }
    *ids = out;
    return BT_OK;
}

/* bt_store__pg_ops: the PostgreSQL backend's table (see store_int.h). The
 * target handed to open is the whole postgres:// or postgresql:// URL. */
const struct bt_store__ops bt_store__pg_ops = {
    .name = "postgres",
    .open = pg_open,
    .close = pg_close,
    .schema_version = pg_schema_version,
    .batch_begin = pg_batch_begin,
    .batch_end = pg_batch_end,
    .assets_replace = pg_assets_replace,
    .assets_query = pg_assets_query,
    .assets_count = pg_assets_count,
    .assets_breakdown = pg_assets_breakdown,
    .request_add = pg_request_add,
    .decision_add = pg_decision_add,
    .plan_add = pg_plan_add,
    .plan_get = pg_plan_get,
    .execution_add = pg_execution_add,
    .execution_set = pg_execution_set,
    .step_add = pg_step_add,
    .step_set = pg_step_set,
    .execution_get = pg_execution_get,
    .execution_transition = pg_execution_transition,
    .execution_own = pg_execution_own,
    .execution_progress = pg_execution_progress,
    .executions_running = pg_executions_running,
    .locks_acquire = pg_locks_acquire,
    .locks_release = pg_locks_release,
    .locks_list = pg_locks_list,
    .job_add = pg_job_add,
    .job_claim = pg_job_claim,
    .job_heartbeat = pg_job_heartbeat,
    .job_finish = pg_job_finish,
    .jobs_of = pg_jobs_of,
    .notify = pg_notify,
    .notify_user = pg_notify_user,
    .notifications = pg_notifications,
    .notification_delivered = pg_notification_delivered,
    .console_token_add = pg_console_token_add,
    .console_token_user = pg_console_token_user,
    .requests_of = pg_requests_of,
    .request_get = pg_request_get,
    .approval_add = pg_approval_add,
    .approval_get = pg_approval_get,
    .approvals_pending = pg_approvals_pending,
    .approval_update = pg_approval_update,
    .approval_decisions = pg_approval_decisions,
    .approvals_open = pg_approvals_open,
    .approvals_unstarted = pg_approvals_unstarted,
    .setting_ensure = pg_setting_ensure,
    .audit_append = pg_audit_append,
    .audit_list = pg_audit_list,
    .audit_of = pg_audit_of,
    .audit_verify = pg_audit_verify,
    .maintain = pg_maintain,
    .chat_claim = pg_chat_claim,
    .chat_post_add = pg_chat_post_add,
    .chat_posts_of = pg_chat_posts_of,
    .listen = pg_listen,
    .changes = pg_changes,
};
