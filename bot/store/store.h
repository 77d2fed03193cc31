/*
 * store.h - baton's durable state: requests, decisions, plans, executions,
 * steps, approvals, the audit log and the asset inventory.
 *
 * One interface, several backends behind a function table (SQLite now,
 * PostgreSQL later). The backend is chosen by the location string:
 *   "sqlite:PATH" or a plain path   SQLite file (WAL), created on first open
 *   "postgres://..."                PostgreSQL (not built yet: BT_EUNAVAIL)
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

#include <stdint.h>

#include <jansson.h>

#include "bot/util.h"

typedef struct bt_store bt_store;

/* The schema version this build writes. */
#define BT_STORE_SCHEMA_VERSION 1

/* Open (creating directories and the file as needed) and migrate.
 * On failure *out is NULL and err says why, naming the location. */
enum bt_err bt_store_open(const char *location, bt_store **out, char *err, size_t errlen);
void bt_store_close(bt_store *st);
/* Schema version of the open store. */
int bt_store_schema_version(bt_store *st);

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
 * steps: [{index, tool, state, result, updated_ms}]}. BT_ENOENT if absent. */
enum bt_err bt_store_execution_get(bt_store *st, const char *execution_id, json_t **out, char *err,
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
/* Check the whole chain; BT_ECORRUPT with the first bad seq in err. */
enum bt_err bt_store_audit_verify(bt_store *st, long long *entries, char *err, size_t errlen);

#endif
