/*
 * store_int.h - what the store facade (store.c) and its backends
 * (store_sqlite.c now, store_pg.c later) share inside bot/store/. Never
 * included from another folder.
 *
 * The split: store.c checks every argument once (ids, state names, asset
 * documents, filter keys and value types) and turns an asset filter into a
 * parsed struct, so a backend only ever sees well-formed input and only has
 * to speak its database. A backend fills in a struct bt_store__ops (the way
 * curl's TLS backends fill in struct Curl_ssl) and gets an opaque handle
 * (void *) back from its open function, which the facade passes to every
 * other member.
 *
 * Error convention for every member: BT_OK, or a bt_err with a message in
 * err (which names the store). Database-specific codes are translated inside
 * the backend and travel no further.
 */
#ifndef BT_STORE_INT_H
#define BT_STORE_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "bot/util.h"

/* ---- asset filters ---------------------------------------------------- */

/* One bit per filter field in bt_store__asset_filter.present. The order is
 * fixed: backends index their SQL fragment tables by it. */
enum bt_store__af {
    BT_STORE__AF_OS,            /* text: exact, case-insensitive */
    BT_STORE__AF_ENVIRONMENT,   /* text: exact */
    BT_STORE__AF_ROLE,          /* text: exact */
    BT_STORE__AF_STATUS,        /* text: exact */
    BT_STORE__AF_DATACENTER,    /* text: exact */
    BT_STORE__AF_CONNECTION,    /* text: exact */
    BT_STORE__AF_TAG,           /* text: one of the asset's tags */
    BT_STORE__AF_NAME_CONTAINS, /* text: substring of name or hostname */
    BT_STORE__AF_IP,            /* text: exact ip */
    BT_STORE__AF_IP_PREFIX,     /* text: ip starts with it (value ended in '.') */
    BT_STORE__AF_HOST,          /* text: exact name, hostname or ip */
    BT_STORE__AF_MIN_RAM_GB,    /* num: ram_gb >= */
    BT_STORE__AF_MAX_RAM_GB,    /* num: ram_gb <= */
    BT_STORE__AF_MIN_CPU,       /* num: cpu >= */
    BT_STORE__AF_COUNT
};

/* A checked asset filter. Text values are borrowed from the caller's filter
 * object and live as long as it does. A field is set when its bit is in
 * present; text fields use text[], numeric fields num[]. */
struct bt_store__asset_filter {
    uint32_t present;
    const char *text[BT_STORE__AF_COUNT];
    long long num[BT_STORE__AF_COUNT];
    long long limit;  /* 1..BT_STORE__ASSETS_MAX, default 1000 */
    long long offset; /* >= 0 */
};

#define BT_STORE__ASSETS_DEFAULT 1000
#define BT_STORE__ASSETS_MAX 10000
#define BT_STORE__AUDIT_LIST_MAX 100000
/* At most this many pending approvals are returned by one call (oldest
 * first, so a sweeper that handles them makes room for the next ones). */
#define BT_STORE__PENDING_MAX 10000
/* Chat posts returned for one approval, and how long a claimed chat event
 * is remembered (platforms redeliver within minutes). */
#define BT_STORE__CHAT_POSTS_MAX 100
#define BT_STORE__CHAT_EVENT_KEEP_MS (7LL * 24 * 3600 * 1000)
/* Change notifications: ids returned by one bt_store_changes, its longest
 * wait. */
#define BT_STORE__CHANGES_MAX 1000
#define BT_STORE__CHANGES_WAIT_MAX_MS 60000

/* The string-valued asset fields a backend keeps in columns of their own
 * (besides name), in the order of this list. cpu and ram_gb are integer
 * columns; tags is a JSON array of strings. */
#define BT_STORE__ASSET_TEXT_FIELDS 9
extern const char *const bt_store__asset_text_fields[BT_STORE__ASSET_TEXT_FIELDS];

/* ---- audit chain ------------------------------------------------------ */

/* prev_hash of the first entry. */
#define BT_STORE__AUDIT_GENESIS "0000000000000000000000000000000000000000000000000000000000000000"

/* The hash of one audit entry, the same for every backend:
 *   sha256_hex(prev_hash + "\n" + canonical JSON of
 *              {seq, ts_ms, request_id, actor, event, detail})
 * with request_id, actor and detail as JSON null when NULL. detail is
 * borrowed. BT_EINVAL if a string is not valid UTF-8 or detail cannot be
 * encoded. */
enum bt_err bt_store__audit_hash(const char *prev_hash, long long seq, int64_t ts_ms,
                                 const char *request_id, const char *actor, const char *event,
                                 const json_t *detail, char out[65], char *err, size_t errlen);

/* ---- approval dialogue ------------------------------------------------ */

/* The check a backend's approval_update calls between its locked read and
 * its writes: the same type as bt_store_approval_check (store.h). The facade
 * passes its own wrapper, which runs the caller's check and then validates
 * the change, so a backend only ever writes a well-formed change. */
struct bt_store_approval_change;
typedef enum bt_err (*bt_store__approval_check)(void *ctx, const json_t *approval,
                                                struct bt_store_approval_change *change, char *err,
                                                size_t errlen);

/* ---- the backend table ------------------------------------------------ */

/* Every member but open and close receives the handle open returned. Input
 * has been checked by the facade (see store.c): ids are non-empty UTF-8,
 * states are known names, JSON arguments have the documented type, out
 * pointers are non-NULL. Optional strings (execution_id of an approval,
 * request_id/actor of an audit entry) may be NULL. */
struct bt_store__ops {
    const char *name; /* "sqlite", "postgres" */

    /* target: what follows the scheme (a path for SQLite). On success *be is
     * the new handle; on failure *be is NULL and nothing was changed. */
    enum bt_err (*open)(const char *target, void **be, char *err, size_t errlen);
    void (*close)(void *be);
    int (*schema_version)(void *be);
    enum bt_err (*batch_begin)(void *be, char *err, size_t errlen);
    enum bt_err (*batch_end)(void *be, bool commit, char *err, size_t errlen);

    enum bt_err (*assets_replace)(void *be, const json_t *assets, char *err, size_t errlen);
    enum bt_err (*assets_query)(void *be, const struct bt_store__asset_filter *f, json_t **out,
                                char *err, size_t errlen);
    enum bt_err (*assets_count)(void *be, const struct bt_store__asset_filter *f, long long *count,
                                char *err, size_t errlen);
    enum bt_err (*assets_breakdown)(void *be, const struct bt_store__asset_filter *f, json_t **out,
                                    char *err, size_t errlen);

    enum bt_err (*request_add)(void *be, const char *request_id, const char *user,
                               const char *channel, const char *text, char *err, size_t errlen);
    enum bt_err (*decision_add)(void *be, const char *request_id, const char *decision_json,
                                char *err, size_t errlen);
    enum bt_err (*plan_add)(void *be, const char *plan_id, const char *request_id,
                            const char *canonical_json, const char *sha256, const char *risk,
                            int approval_level, char *err, size_t errlen);
    /* Must hash the stored text again: BT_ECORRUPT when it no longer
     * matches the stored sha256. */
    enum bt_err (*plan_get)(void *be, const char *plan_id, json_t **out, char *err, size_t errlen);

    enum bt_err (*execution_add)(void *be, const char *execution_id, const char *plan_id,
                                 const char *state, char *err, size_t errlen);
    /* result_json NULL keeps the stored result. */
    enum bt_err (*execution_set)(void *be, const char *execution_id, const char *state,
                                 const char *result_json, char *err, size_t errlen);
    enum bt_err (*step_add)(void *be, const char *execution_id, int step_index, const char *tool,
                            const char *state, char *err, size_t errlen);
    enum bt_err (*step_set)(void *be, const char *execution_id, int step_index, const char *state,
                            const char *result_json, char *err, size_t errlen);
    enum bt_err (*execution_get)(void *be, const char *execution_id, json_t **out, char *err,
                                 size_t errlen);

    /* execution engine (store.h). Lists (assets) arrive as canonical JSON
     * arrays of strings; owner_start may be NULL. */
    enum bt_err (*execution_transition)(void *be, const char *execution_id, const char *from,
                                        const char *to, const char *result_json, char *err,
                                        size_t errlen);
    enum bt_err (*execution_own)(void *be, const char *execution_id, const char *from,
                                 const char *owner_host, long long owner_pid,
                                 const char *owner_start, int steps_total, char *err,
                                 size_t errlen);
    enum bt_err (*execution_progress)(void *be, const char *execution_id, int done, int total,
                                      char *err, size_t errlen);
    enum bt_err (*executions_running)(void *be, json_t **out, char *err, size_t errlen);
    enum bt_err (*locks_acquire)(void *be, const char *execution_id, const json_t *assets,
                                 const char *assets_json, int64_t wait_ttl_ms, json_t **out,
                                 char *err, size_t errlen);
    enum bt_err (*locks_release)(void *be, const char *execution_id, char *err, size_t errlen);
    enum bt_err (*locks_list)(void *be, const char *execution_id, json_t **out, char *err,
                              size_t errlen);
    enum bt_err (*job_add)(void *be, const char *execution_id, int step, const char *assets_json,
                           int max_attempts, int64_t run_at_ms, long long *job_id, char *err,
                           size_t errlen);
    enum bt_err (*job_claim)(void *be, const char *worker, int64_t lease_ms, json_t **job,
                             char *err, size_t errlen);
    enum bt_err (*job_heartbeat)(void *be, long long job_id, const char *worker, char *err,
                                 size_t errlen);
    enum bt_err (*job_finish)(void *be, long long job_id, const char *worker, const char *state,
                              int64_t run_at_ms, const char *last_error, bool uncount, char *err,
                              size_t errlen);
    enum bt_err (*jobs_of)(void *be, const char *execution_id, json_t **out, char *err,
                           size_t errlen);
    enum bt_err (*notify)(void *be, const char *execution_id, const char *text, char *err,
                          size_t errlen);
    enum bt_err (*notify_user)(void *be, const char *user, const char *execution_id,
                               const char *text, char *err, size_t errlen);
    enum bt_err (*notifications)(void *be, const char *user, bool undelivered, long limit,
                                 json_t **out, char *err, size_t errlen);
    enum bt_err (*notification_delivered)(void *be, long long notification_id, char *err,
                                          size_t errlen);
    enum bt_err (*console_token_add)(void *be, const char *token_sha256, const char *user,
                                     char *err, size_t errlen);
    enum bt_err (*console_token_user)(void *be, const char *token_sha256, char **user, char *err,
                                      size_t errlen);
    enum bt_err (*requests_of)(void *be, const char *user, long limit, json_t **out, char *err,
                               size_t errlen);
    enum bt_err (*request_get)(void *be, const char *request_id, json_t **out, char *err,
                               size_t errlen);

    enum bt_err (*approval_add)(void *be, const char *approval_id, const char *plan_id,
                                const char *execution_id, int level, const char *requirement_json,
                                int64_t expires_ms, char *err, size_t errlen);
    enum bt_err (*approval_get)(void *be, const char *approval_id, json_t **out, char *err,
                                size_t errlen);
    enum bt_err (*approvals_pending)(void *be, json_t **out, char *err, size_t errlen);
    /* approval dialogue (store.h): one write transaction holding the
     * approval from its read (row and decisions, in bt_store_approval_check's
     * shape) through check(ctx, ...) to the commit of the change; check is
     * called once, with the change zeroed and step -1. */
    enum bt_err (*approval_update)(void *be, const char *approval_id,
                                   bt_store__approval_check check, void *ctx, char *err,
                                   size_t errlen);
    enum bt_err (*approval_decisions)(void *be, const char *approval_id, json_t **out, char *err,
                                      size_t errlen);
    enum bt_err (*approvals_open)(void *be, json_t **out, char *err, size_t errlen);
    enum bt_err (*approvals_unstarted)(void *be, int64_t decided_before_ms, json_t **out, char *err,
                                       size_t errlen);

    enum bt_err (*setting_ensure)(void *be, const char *key, const char *value, char **out,
                                  char *err, size_t errlen);

    enum bt_err (*audit_append)(void *be, const char *request_id, const char *actor,
                                const char *event, const json_t *detail, char *err, size_t errlen);
    enum bt_err (*audit_list)(void *be, int64_t since_ms, long limit, json_t **out, char *err,
                              size_t errlen);
    enum bt_err (*audit_of)(void *be, const char *request_id, long limit, json_t **out, char *err,
                            size_t errlen);
    enum bt_err (*audit_verify)(void *be, long long *entries, char *err, size_t errlen);
    enum bt_err (*maintain)(void *be, char *err, size_t errlen);

    /* team chat (store.h); thread may be NULL. maintain forgets claimed
     * events older than BT_STORE__CHAT_EVENT_KEEP_MS. */
    enum bt_err (*chat_claim)(void *be, const char *key, bool *claimed, char *err, size_t errlen);
    enum bt_err (*chat_post_add)(void *be, const char *approval_id, const char *surface,
                                 const char *channel, const char *post, const char *thread,
                                 char *err, size_t errlen);
    enum bt_err (*chat_posts_of)(void *be, const char *approval_id, json_t **out, char *err,
                                 size_t errlen);

    /* change notifications (store.h). changes: timeout_ms is 0..60000;
     * *ids a new array of at most BT_STORE__CHANGES_MAX strings on success,
     * untouched (NULL) on failure. */
    enum bt_err (*listen)(void *be, char *err, size_t errlen);
    enum bt_err (*changes)(void *be, int timeout_ms, json_t **ids, char *err, size_t errlen);
};

/* The SQLite backend (store_sqlite.c). */
extern const struct bt_store__ops bt_store__sqlite_ops;
/* The PostgreSQL backend (store_pg.c). */
extern const struct bt_store__ops bt_store__pg_ops;

#endif
