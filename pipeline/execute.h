/*
 * execute.h - stage E: run an approved plan's steps through the connectors.
 * Folder-internal to pipeline/. Operators' guide: docs/execution.md.
 *
 * Everything an execution needs comes from the store (the plan via
 * bt_store_plan_get, step states via bt_store_execution_get, the target
 * assets from the inventory), so any process can pick an execution up: the
 * one that took the request, a later `baton decide` that releases the next
 * level-3 step, or a `baton worker` running the background queue.
 *
 * States (an explicit table in execute.c; every other move is refused):
 *   execution  pending_approval -> approved | running (a released level-3
 *              step) | cancelled | timed_out
 *              approved -> queued | running | cancelled | timed_out
 *              queued -> running | cancelled | timed_out | interrupted
 *              running -> completed | failed | cancelled | timed_out |
 *                         interrupted | pending_approval (level-3 pause:
 *                         waits for the next release) | queued (a
 *                         background job put back after its worker died
 *                         before any step started)
 *   step       pending -> running | skipped | cancelled
 *              running -> completed | failed | timed_out | interrupted
 *              completed -> compensated
 * Every change is written to the store (compare-and-set on the execution's
 * state) before it is acted on.
 *
 * Steps run in dependency order, independent ones in parallel (at most
 * `execution.parallel`). Each call is bounded by the tool's timeout_s.
 * Transient failures are retried with exponential backoff and full jitter:
 * BT_EUNAVAIL always, BT_ETIMEOUT only for read_only tools (a change that
 * may have started is never retried); tool key `retries` (default 2 for
 * read_only tools, 0 otherwise, at most 5). When a step fails, no new step
 * starts, and the compensating steps of the completed steps run in reverse
 * order (saga); the summary says what was undone.
 *
 * Threads: a bt_execute is used by one thread at a time (it holds the store
 * handle it was given); it starts its own threads for steps, which only
 * call the (thread-safe) connectors. The progress callback is called on the
 * calling thread.
 */
#ifndef BT_EXECUTE_H
#define BT_EXECUTE_H

#include <stdbool.h>

#include <jansson.h>

#include "bot/conf.h"
#include "bot/store/store.h"
#include "connectors/connectors.h"
#include "pipeline/tools.h"

/* ---- configuration (baton.yaml `execution:`) -------------------------------- */

enum bt_execute_lock_mode {
    BT_EXECUTE_LOCK_QUEUE = 0, /* wait in line for the asset */
    BT_EXECUTE_LOCK_REFUSE = 1 /* end at once, naming the holder */
};

struct bt_execute_config {
    int parallel;           /* steps of one execution at once: 1..32, default 4 */
    int background_after_s; /* longer estimates go to the queue: 1..86400, default 30 */
    int background_targets; /* or more distinct targets than this: 1..10000, default 10 */
    int retry_base_ms;      /* backoff: first delay at most this: 1..60000, default 500 */
    int retry_max_ms;       /* backoff cap: retry_base_ms..600000, default 10000 */
    int breaker_failures;   /* transient failures in a row that open: 1..1000, default 5 */
    int breaker_cooldown_s; /* open -> one trial call after: 1..3600, default 30 */
    enum bt_execute_lock_mode asset_lock; /* default queue */
    int lock_wait_s;  /* queue mode, in process: give up after 1..86400 s, default 300 */
    int job_lease_s;  /* a job not heartbeated this long is reclaimed: 1..3600, default 60 */
    int job_attempts; /* a background job is tried at most: 1..100, default 3 */
};

/* Defaults, then cfg's `execution:` section checked key by key; problems go
 * to d as "baton.yaml:line: execution.key: ..." and their keys keep the
 * default. Returns false when there was a problem. A missing section means
 * every default. */
bool bt_execute_config_read(const bt_config *cfg, struct bt_execute_config *out, bt_diag *d);

/* ---- the engine -------------------------------------------------------------- */

typedef struct bt_execute bt_execute;

/* One progress event: a step starting or ending, or the execution waiting
 * for an asset (index -1, state "queued", message saying where in line).
 * Strings are borrowed for the duration of the call. */
struct bt_execute_progress {
    const char *execution_id;
    int index;           /* step index, or -1 for the execution itself */
    const char *tool;    /* NULL when index is -1 */
    const char *target;  /* may be NULL */
    const char *state;   /* the state just written to the store */
    int done;            /* steps that have ended */
    int total;           /* steps of the plan */
    const char *message; /* human text, or NULL */
};
typedef void (*bt_execute_progress_fn)(void *ctx, const struct bt_execute_progress *p);

/* A new engine over conns, tools and st (all borrowed; they must outlive
 * it) with a copy of conf (NULL: the defaults). Applies conf's breaker
 * settings to conns. progress may be NULL. */
bt_execute *bt_execute_new(const struct bt_execute_config *conf, bt_connectors *conns,
                           const bt_tools *tools, bt_store *st, bt_execute_progress_fn progress,
                           void *progress_ctx);
void bt_execute_free(bt_execute *ex);

enum bt_execute_mode {
    BT_EXECUTE_AUTO = 0,       /* now, or the background queue if it is long */
    BT_EXECUTE_NOW = 1,        /* now, whatever the estimate */
    BT_EXECUTE_BACKGROUND = 2, /* always the background queue */
};

/* Run execution_id (which must exist in the store with its plan): the
 * whole plan (step -1: execution in state approved or queued) or only step
 * `step` (level 3: execution pending_approval, approved or queued; the step
 * must be pending and its dependencies completed; the other steps stay
 * pending and the execution pauses in pending_approval until the next call).
 * actor goes to the audit log. Blocks until the run ends, pauses, waits
 * too long for an asset, or is put on the background queue.
 *
 * Returns a new object (never NULL):
 *   execution_id, state (the execution's state now), steps [{index, tool,
 *   target, state, result}], compensated [{undoes, tool, state, result}]
 *   (saga, in the order run), progress {done, total}, estimate_s,
 *   and when they apply:
 *   background true, job_id     put on the queue
 *   paused true, next_step      level 3: waits for the next release
 *   message                     why it is queued/refused/timed out/not run
 *   error                       "invalid_state" | "invalid_step" |
 *                               "asset_busy" | "lock_timeout" | "store" |
 *                               "not_found"  (nothing ran)
 *   queue {asset, position, holder...}   the last lock-wait report */
json_t *bt_execute_run(bt_execute *ex, const char *execution_id, int step,
                       enum bt_execute_mode mode, const char *actor);

/* Estimated seconds for plan (borrowed; step -1: all of it, else that
 * step): the longest path through the dependencies, summing each tool's
 * estimate_s (tool key; default min(timeout_s, 5) for read_only tools,
 * timeout_s otherwise). */
int bt_execute_estimate_s(const bt_execute *ex, const json_t *plan, int step);

/* Claim one background job and run it to the end (or to the next level-3
 * pause). A job whose worker died (lease expired) is taken over: if a step
 * was running in it, that step is marked interrupted and never re-run, the
 * execution is interrupted and the requester notified; otherwise it runs
 * on. Returns true when it did something (*out, when out is non-NULL, is
 * then the run's summary as from bt_execute_run, or NULL), false when the
 * queue had nothing claimable. Also runs bt_execute_recover now and then. */
bool bt_execute_worker_once(bt_execute *ex, json_t **out);

/* After a crash: every execution in state running whose owner process was
 * on this host and is gone (no such pid, a different process start time,
 * or another boot) is marked interrupted, with its running steps; its
 * pending steps become cancelled, its asset locks are released, its
 * background job (if any) is ended, the audit log says so, and a
 * notification is left for the requester. An execution whose background
 * job had no step running is put back on the queue instead. Executions of a
 * live process, or of another host, are never touched. actor goes to the
 * audit log. Returns a new array of {execution_id, state ("interrupted" |
 * "queued"), interrupted_steps [index...], requester, owner, message}
 * (NULL with err on a store failure). */
json_t *bt_execute_recover(bt_store *st, const char *actor, char *err, size_t errlen);

/* Stop an execution that is not running (pending_approval, approved or
 * queued; also a paused level-3 execution): state cancelled, pending steps
 * cancelled, locks and queued job released, completed steps left as they
 * are (not compensated). Returns the summary, with error "invalid_state"
 * when the execution is running or ended. */
json_t *bt_execute_cancel(bt_execute *ex, const char *execution_id, const char *actor,
                          const char *reason);

/* True when the transition table allows from -> to (step: step states,
 * else execution states). */
bool bt_execute_transition_ok(bool step, const char *from, const char *to);

#endif
