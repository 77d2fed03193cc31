/*
 * store.h - baton's durable state: requests, decisions, plans, executions,
 * steps, approvals, the audit log and the asset inventory.
 *
 * One interface, several backends behind a function table (SQLite and
 * PostgreSQL). The backend is chosen by the location string:
 *   "sqlite:PATH" or a plain path   SQLite file (WAL), created on first open
 *   "postgres://..."                PostgreSQL (libpq URL without a password)
 *
 * Schema changes are numbered migrations applied in order inside a
 * transaction on open. Opening a file whose schema is newer than this build
 * knows, or a file that is not a baton store / is damaged, fails with
 * BT_EVERSION / BT_ECORRUPT and a message naming the file; nothing is
 * changed in that case.
 *
 * Threads: a bt_store is used by one thread at a time (open one per thread).
 * All statements are parameterised; no caller text is ever spliced into SQL.
 * Times are wall-clock milliseconds since the epoch.
 */
#ifndef BT_STORE_H
#define BT_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "bot/util.h"

typedef struct bt_store bt_store;

/* The schema version this build writes. */
#define BT_STORE_SCHEMA_VERSION 7

/* Open (creating directories and the file as needed) and migrate.
 * On failure *out is NULL and err says why, naming the location. */
enum bt_err bt_store_open(const char *location, bt_store **out, char *err, size_t errlen);
void bt_store_close(bt_store *st);
/* Schema version of the open store. */
int bt_store_schema_version(bt_store *st);

/* Group the writes that follow into one unit: everything written between
 * bt_store_batch_begin and bt_store_batch_end(commit=true) is committed
 * together, or (commit=false, or a failed commit) not at all. Each
 * operation inside stays all-or-nothing on its own (a failed one leaves the
 * batch as it was). Batches do not nest. Use them for writes that belong
 * together and come before anything is acted on; a write that must be on
 * record before an action (a step marked running) must not wait in an open
 * batch. */
enum bt_err bt_store_batch_begin(bt_store *st, char *err, size_t errlen);
enum bt_err bt_store_batch_end(bt_store *st, bool commit, char *err, size_t errlen);

/* ---- assets ------------------------------------------------------------
 * An asset is a JSON object with at least: name, hostname, ip, os
 * ("windows"|"linux"), os_version, role, environment, status, datacenter,
 * tags (array of strings), cpu (int), ram_gb (int), connection
 * ("local"|"ssh"|"winrm"|"none"); other keys are kept as they are. */

/* Replace the whole inventory with assets (array; borrowed) in one
 * transaction. Rejects (BT_EINVAL, nothing changed) an asset without a name
 * or with a duplicate name. */
enum bt_err bt_store_assets_replace(bt_store *st, const json_t *assets, char *err, size_t errlen);

/* Assets matching filter (object; borrowed; NULL = all), ordered by name.
 * Filter keys, all optional, combined with AND; string matches are
 * case-insensitive:
 *   os, environment, role, status, datacenter, connection  exact
 *   tag                                 tags contains this value
 *   name_contains                       substring of name or hostname
 *   ip                                  exact ip, or prefix when it ends in '.'
 *   host                                exact name, hostname or ip
 *   min_ram_gb, max_ram_gb, min_cpu     integer bounds
 *   limit (default 1000, max 10000), offset
 * *out is a new array of asset objects. Unknown filter keys: BT_EINVAL. */
enum bt_err bt_store_assets_query(bt_store *st, const json_t *filter, json_t **out, char *err,
                                  size_t errlen);
/* Number of assets matching filter (same keys; limit/offset ignored). */
enum bt_err bt_store_assets_count(bt_store *st, const json_t *filter, long long *count, char *err,
                                  size_t errlen);
/* Number of matching assets per kind: new array of {os, role, count},
 * most numerous first (same filter keys; limit/offset ignored). */
enum bt_err bt_store_assets_breakdown(bt_store *st, const json_t *filter, json_t **out, char *err,
                                      size_t errlen);

/* ---- requests, decisions, plans ---------------------------------------- */

/* Record a request (id: caller-made 32-hex id). */
enum bt_err bt_store_request_add(bt_store *st, const char *request_id, const char *user,
                                 const char *channel, const char *text, char *err, size_t errlen);
/* Record stage A's decision for a request (borrowed object, stored as JSON). */
enum bt_err bt_store_decision_add(bt_store *st, const char *request_id, const json_t *decision,
                                  char *err, size_t errlen);
/* Record a plan: canonical JSON text and its sha256 hex, overall risk name
 * and approval level. */
enum bt_err bt_store_plan_add(bt_store *st, const char *plan_id, const char *request_id,
                              const char *canonical_json, const char *sha256, const char *risk,
                              int approval_level, char *err, size_t errlen);
/* The plan as stored: new object {plan_id, request_id, plan (object), sha256,
 * risk, approval_level, created_ms}. BT_ENOENT when absent. */
enum bt_err bt_store_plan_get(bt_store *st, const char *plan_id, json_t **out, char *err,
                              size_t errlen);

/* ---- executions and steps ---------------------------------------------
 * Execution states: pending_approval, approved, queued, running, completed,
 * failed, cancelled, timed_out, interrupted. Step states: pending, running,
 * completed, failed, skipped, cancelled, timed_out, interrupted,
 * compensated. Every change is written before it is acted on. */

enum bt_err bt_store_execution_add(bt_store *st, const char *execution_id, const char *plan_id,
                                   const char *state, char *err, size_t errlen);
/* Move an execution to state; result (borrowed, may be NULL) is stored. */
enum bt_err bt_store_execution_set(bt_store *st, const char *execution_id, const char *state,
                                   const json_t *result, char *err, size_t errlen);
enum bt_err bt_store_step_add(bt_store *st, const char *execution_id, int step_index,
                              const char *tool, const char *state, char *err, size_t errlen);
enum bt_err bt_store_step_set(bt_store *st, const char *execution_id, int step_index,
                              const char *state, const json_t *result, char *err, size_t errlen);
/* New object {execution_id, plan_id, state, result, created_ms, updated_ms,
 * steps: [{index, tool, state, result, updated_ms}], and (execution engine)
 * progress {done, total}, owner {host, pid, start} or null, request_id,
 * requester (the requesting user or null)}. BT_ENOENT if absent. */
enum bt_err bt_store_execution_get(bt_store *st, const char *execution_id, json_t **out, char *err,
                                   size_t errlen);

/* ---- execution engine --------------------------------------------------
 * What pipeline/execute.c needs beyond plain reads and writes: state changes
 * that only happen from an expected state (compare-and-set, so two
 * processes never both start one execution), the owner of a running
 * execution (for crash recovery), progress, asset locks, the background job
 * queue and notifications for requesters. The allowed transitions are the
 * executor's table (execute.c); the store only guarantees atomicity.
 * Terminal execution states: completed, failed, cancelled, timed_out,
 * interrupted. */

/* Move execution_id from state `from` to state `to`, only if it is in
 * `from`. result (borrowed, may be NULL: keep the stored one). BT_ENOENT
 * when there is no such execution or it is in another state (err names the
 * state it is in). */
enum bt_err bt_store_execution_transition(bt_store *st, const char *execution_id, const char *from,
                                          const char *to, const json_t *result, char *err,
                                          size_t errlen);

/* Same as a transition from `from` to "running", recording the process that
 * now runs it (owner_host, owner_pid > 0, owner_start: the process's start
 * time as the executor spells it, NULL when unknown) and steps_total. */
enum bt_err bt_store_execution_own(bt_store *st, const char *execution_id, const char *from,
                                   const char *owner_host, long long owner_pid,
                                   const char *owner_start, int steps_total, char *err,
                                   size_t errlen);

/* Progress for status displays: done of total steps (0 <= done <= total). */
enum bt_err bt_store_execution_progress(bt_store *st, const char *execution_id, int done, int total,
                                        char *err, size_t errlen);

/* Executions in state running, oldest update first, at most 10000: new
 * array of {execution_id, plan_id, request_id, requester, owner_host,
 * owner_pid, owner_start, updated_ms} (owner fields null when unknown). */
enum bt_err bt_store_executions_running(bt_store *st, json_t **out, char *err, size_t errlen);

/* Asset locks. Try to take every asset in assets (borrowed array of 1..1000
 * asset names, compared ignoring case) for execution_id, all or none, in
 * one transaction. Locks the execution holds already count as taken.
 * Locks held by an execution in a terminal state, and waiters that expired
 * (not refreshed within wait_ttl_ms and without an active job), are dropped
 * first. Waiters are served in order: an execution that has to wait is
 * recorded in the queue (or its place refreshed), and an execution is only
 * given assets no earlier waiter wants. *out is a new object:
 *   {acquired: true}
 *   {acquired: false, busy: [{asset, position (the holder counts as 1st),
 *     holder: {execution_id, requester, text} | null,
 *     ahead: {execution_id, requester, text} | null (the first waiter in
 *     front), waiters_ahead}]}
 * where requester and text are the request's user and text. */
enum bt_err bt_store_locks_acquire(bt_store *st, const char *execution_id, const json_t *assets,
                                   int64_t wait_ttl_ms, json_t **out, char *err, size_t errlen);
/* Release every lock execution_id holds and its place in the queue. */
enum bt_err bt_store_locks_release(bt_store *st, const char *execution_id, char *err,
                                   size_t errlen);
/* Locks held (all, or those of execution_id when non-NULL), by asset: new
 * array of {asset, execution_id, acquired_ms}. */
enum bt_err bt_store_locks_list(bt_store *st, const char *execution_id, json_t **out, char *err,
                                size_t errlen);

/* Background jobs. A job runs one execution (step -1) or one released step
 * of it (step >= 0). States: available -> running -> done | dead, or back
 * to available. assets (borrowed array of asset names, may be empty): a job
 * is not claimable while another live execution holds one of them. */
enum bt_err bt_store_job_add(bt_store *st, const char *execution_id, int step, const json_t *assets,
                             int max_attempts, int64_t run_at_ms, long long *job_id, char *err,
                             size_t errlen);
/* Claim one job for worker, atomically: first a running job whose
 * heartbeat is older than lease_ms (its worker is presumed dead: taken over,
 * with reclaimed true and previous_worker set), else the oldest available
 * job whose run_at has come and whose assets are free. The claimed job is
 * running, locked by worker, attempt + 1. Available jobs of executions that
 * already ended are marked dead on the way. *job is a new object {job_id,
 * execution_id, step, state, attempt, max_attempts, run_at_ms, assets,
 * locked_by, locked_ms, heartbeat_ms, last_error, created_ms, updated_ms,
 * reclaimed, previous_worker}, or NULL when there is nothing to do. */
enum bt_err bt_store_job_claim(bt_store *st, const char *worker, int64_t lease_ms, json_t **job,
                               char *err, size_t errlen);
/* The worker still holds the job. BT_ENOENT when it no longer does. */
enum bt_err bt_store_job_heartbeat(bt_store *st, long long job_id, const char *worker, char *err,
                                   size_t errlen);
/* End the worker's hold on a running job: state "done", "dead" or
 * "available" (again, at run_at_ms; uncount true takes back the attempt
 * the claim counted). last_error may be NULL. BT_ENOENT when the worker
 * does not hold it. */
enum bt_err bt_store_job_finish(bt_store *st, long long job_id, const char *worker,
                                const char *state, int64_t run_at_ms, const char *last_error,
                                bool uncount, char *err, size_t errlen);
/* Jobs of an execution, oldest first (new array of the objects above). */
enum bt_err bt_store_jobs_of(bt_store *st, const char *execution_id, json_t **out, char *err,
                             size_t errlen);

/* Notifications for the requester of execution_id (looked up through its
 * plan and request), shown by the CLI or the daemon later. text: at most
 * 4096 bytes of UTF-8. */
enum bt_err bt_store_notify(bt_store *st, const char *execution_id, const char *text, char *err,
                            size_t errlen);
/* A notification for one user (execution_id may be NULL), e.g. an
 * approval reminder for an approver. */
enum bt_err bt_store_notify_user(bt_store *st, const char *user, const char *execution_id,
                                 const char *text, char *err, size_t errlen);
/* Notifications for user (NULL: everyone), oldest first, at most limit
 * (1..10000); only undelivered ones when undelivered is true. New array of
 * {notification_id, user, execution_id, text, created_ms, delivered_ms}. */
enum bt_err bt_store_notifications(bt_store *st, const char *user, bool undelivered, long limit,
                                   json_t **out, char *err, size_t errlen);
/* Mark a notification delivered (idempotent). */
enum bt_err bt_store_notification_delivered(bt_store *st, long long notification_id, char *err,
                                            size_t errlen);

/* ---- console tokens and history -------------------------------------- */

/* Record a console sign-in token for user. Only its sha256 (64 lowercase
 * hex digits) is stored, with the time it was made; the token itself never
 * reaches the store. */
enum bt_err bt_store_console_token_add(bt_store *st, const char *token_sha256, const char *user,
                                       char *err, size_t errlen);
/* The user a token (given by its sha256 hex) belongs to, as a new string in
 * *user; records the time of use. BT_ENOENT for an unknown token. */
enum bt_err bt_store_console_token_user(bt_store *st, const char *token_sha256, char **user,
                                        char *err, size_t errlen);
/* The user's most recent requests, newest first, at most limit (1..1000):
 * new array of {request_id, channel, text, created_ms}. */
enum bt_err bt_store_requests_of(bt_store *st, const char *user, long limit, json_t **out,
                                 char *err, size_t errlen);
/* One request: new object {request_id, user, channel, text, created_ms}.
 * BT_ENOENT if absent. */
enum bt_err bt_store_request_get(bt_store *st, const char *request_id, json_t **out, char *err,
                                 size_t errlen);

/* ---- team chat ------------------------------------------------------- */

/* Claim a platform event by key (e.g. "slack:Ev0123"): *claimed is true for
 * the first caller in any process sharing the store, false for every later
 * one (a redelivery, or another instance that saw the same event). Keys are
 * remembered for 7 days. */
enum bt_err bt_store_chat_claim(bt_store *st, const char *key, bool *claimed, char *err,
                                size_t errlen);
/* Remember that the card of approval_id is shown as a chat post: surface
 * ("slack", "mattermost"), channel, post (Slack ts, Mattermost post id) and
 * the thread it sits in (NULL: none). Idempotent. */
enum bt_err bt_store_chat_post_add(bt_store *st, const char *approval_id, const char *surface,
                                   const char *channel, const char *post, const char *thread,
                                   char *err, size_t errlen);
/* The chat posts showing approval_id, oldest first (at most 100): new array
 * of {surface, channel, post, thread (absent when none), created_ms}. */
enum bt_err bt_store_chat_posts_of(bt_store *st, const char *approval_id, json_t **out, char *err,
                                   size_t errlen);

/* ---- approvals ------------------------------------------------------- */

/* Record an approval requirement for a plan: level, policy detail (borrowed
 * object: who may decide, how many), expiry. State starts as "pending". */
enum bt_err bt_store_approval_add(bt_store *st, const char *approval_id, const char *plan_id,
                                  const char *execution_id, int level, const json_t *requirement,
                                  int64_t expires_ms, char *err, size_t errlen);
/* New object {approval_id, plan_id, execution_id, level, requirement, state,
 * expires_ms, created_ms}. BT_ENOENT when absent. */
enum bt_err bt_store_approval_get(bt_store *st, const char *approval_id, json_t **out, char *err,
                                  size_t errlen);
/* Pending approvals, oldest first (new array of the objects above). */
enum bt_err bt_store_approvals_pending(bt_store *st, json_t **out, char *err, size_t errlen);

/* ---- approval dialogue -------------------------------------------------
 * What the approvals dialogue (approvals/approvals.c) needs beyond the rows
 * above: each person's decisions, the reminder and escalation marks, and one
 * locked read-check-write, so that two processes deciding the same approval
 * at the same time never both complete it.
 *
 * Approval states: pending, releasing, approved, denied, cancelled, expired.
 * Decisions: approve, deny, cancel; step -1 is the whole plan, N >= 0 the
 * release of step N (level 3). At most one decision per (approval, user,
 * step). */

/* What one bt_store_approval_update writes. A change as handed to the check
 * (all zero, step -1) writes nothing. Strings are borrowed and only read
 * during the call. */
struct bt_store_approval_change {
    const char *state;    /* new approval state, or NULL to keep it */
    const char *user;     /* record a decision by this user, or NULL for none */
    const char *decision; /* with user: "approve" | "deny" | "cancel" */
    int step;             /* with user: -1 (the plan) or the step released */
    const char *via;      /* with user: "cli", "console", "slack", ...; may be NULL */
    bool reminded;        /* mark the reminder as sent (now; kept if already set) */
    bool escalated;       /* mark the escalation as sent (now; kept if already set) */
};

/* The check run under the lock. approval (borrowed, valid during the call)
 * is bt_store_approval_get's object plus updated_ms, reminded_ms and
 * escalated_ms (null until marked) and decisions [{user, decision, step,
 * via, ts_ms}], oldest first. Fill *change and return BT_OK to write it; any
 * other code writes nothing and is what bt_store_approval_update returns
 * (with err filled by the check). It runs while the store holds a write
 * lock: it must be quick and must not call the store. */
typedef enum bt_err (*bt_store_approval_check)(void *ctx, const json_t *approval,
                                               struct bt_store_approval_change *change, char *err,
                                               size_t errlen);

/* Read approval_id with its decisions, call check(ctx, ...), and write the
 * change it asks for, all in one write transaction that holds the approval
 * from the read to the commit (SQLite: BEGIN IMMEDIATE; PostgreSQL: SELECT
 * ... FOR UPDATE), so a second caller in any process sees the first one's
 * change. The change is checked (state and decision names, user id, step >=
 * -1): a bad one is BT_EINVAL and nothing is written. A decision the store
 * already holds for the same (approval, user, step) is BT_EINVAL too.
 * BT_ENOENT when the approval is unknown (check is not called). */
enum bt_err bt_store_approval_update(bt_store *st, const char *approval_id,
                                     bt_store_approval_check check, void *ctx, char *err,
                                     size_t errlen);

/* The decisions on approval_id, oldest first: new array of {user, decision,
 * step, via, ts_ms}; empty when there are none (or no such approval). */
enum bt_err bt_store_approval_decisions(bt_store *st, const char *approval_id, json_t **out,
                                        char *err, size_t errlen);

/* Approvals still open (state pending or releasing), oldest first, at most
 * 10000 per call: new array of bt_store_approval_get's objects. */
enum bt_err bt_store_approvals_open(bt_store *st, json_t **out, char *err, size_t errlen);
/* Approved plans of level 1 or 2 whose execution is still pending_approval
 * and whose last decision came before decided_before_ms: the process that
 * decided them stopped before starting them (crash recovery). New array of
 * approval objects, oldest first. */
enum bt_err bt_store_approvals_unstarted(bt_store *st, int64_t decided_before_ms, json_t **out,
                                         char *err, size_t errlen);

/* ---- key/value settings (e.g. a generated signing key) ------------------ */
/* Set key to value only if absent; *out is then the stored value (new). */
enum bt_err bt_store_setting_ensure(bt_store *st, const char *key, const char *value, char **out,
                                    char *err, size_t errlen);

/* ---- audit log ---------------------------------------------------------
 * Append-only. Each entry carries the sha256 of the previous entry's hash
 * and its own content, so any change or removal breaks the chain. */

/* Append {event, actor, request_id, detail (borrowed object, may be NULL)}. */
enum bt_err bt_store_audit_append(bt_store *st, const char *request_id, const char *actor,
                                  const char *event, const json_t *detail, char *err,
                                  size_t errlen);
/* Entries with time >= since_ms, oldest first, at most limit (<= 100000):
 * new array of {seq, ts_ms, request_id, actor, event, detail, prev_hash, hash}. */
enum bt_err bt_store_audit_list(bt_store *st, int64_t since_ms, long limit, json_t **out, char *err,
                                size_t errlen);
/* The entries about one request, oldest first, at most limit (1..10000);
 * same objects as bt_store_audit_list. */
enum bt_err bt_store_audit_of(bt_store *st, const char *request_id, long limit, json_t **out,
                              char *err, size_t errlen);
/* Check the whole chain; BT_ECORRUPT with the first bad seq in err. */
enum bt_err bt_store_audit_verify(bt_store *st, long long *entries, char *err, size_t errlen);

/* Housekeeping for long-running processes, every few seconds at most: for
 * SQLite, a checkpoint that copies the write-ahead log into the database
 * and truncates it (under steady load the automatic checkpoints never get
 * to reset it, and it grows without bound). Waits for the write lock like
 * any write. */
enum bt_err bt_store_maintain(bt_store *st, char *err, size_t errlen);

/* ---- change notifications (PostgreSQL) ---------------------------------
 * Several processes sharing one PostgreSQL database learn of each other's
 * changes at once. Every write that changes what an approval's card shows
 * announces the approval's id, inside its own transaction, so the
 * announcement goes out at COMMIT and never for a change rolled back:
 * approval_add, approval_update (decisions, expiry, cancel, reminder
 * marks), and for the approvals of an execution: execution_transition,
 * execution_own, execution_progress, execution_set and step_set. Writes
 * through any handle of any process are announced; only a listening handle
 * receives them. SQLite has no such thing: there a process sees other
 * processes' changes only when it reads them. */

/* Make st a listening handle: from now on it collects the ids announced by
 * every process, for bt_store_changes. Give it a handle of its own (other
 * calls on it work, but nothing else should wait on it). Once listening, it
 * stays so: when its connection is lost it listens again on the new one.
 * BT_EUNAVAIL on SQLite ("change notifications need PostgreSQL"). Thread:
 * the handle's. */
enum bt_err bt_store_listen(bt_store *st, char *err, size_t errlen);

/* The entry of bt_store_changes's ids that means "anything may have
 * changed" (announcements were lost). */
#define BT_STORE_CHANGES_ALL "*"

/* Wait at most timeout_ms (0..60000) for announcements on a listening
 * handle and take them: *ids is a new array of distinct approval ids
 * changed since the last call, at most 1000 (the rest stay for the next
 * call), empty when the time ran out; the call returns as soon as there is
 * one. When the connection was lost, the call connects again (the first
 * attempt at once, the next ones 50 ms, 100 ms ... at most 5 s apart; an
 * attempt that takes longer than 5 s is given up) and listens again. An
 * attempt goes on across calls, so no call waits much longer than
 * timeout_ms. Announcements made meanwhile are lost, so the first call on
 * the new connection puts BT_STORE_CHANGES_ALL in *ids: "anything may have
 * changed, read everything again". While there is no connection the call
 * fails with BT_EUNAVAIL (err says why) after about timeout_ms at most;
 * keep calling. BT_EINVAL when st is not listening or is in a batch. On
 * failure *ids is NULL. Thread: the handle's. */
enum bt_err bt_store_changes(bt_store *st, int timeout_ms, json_t **ids, char *err, size_t errlen);

#endif
