/*
 * pipeline.h - a request's way through baton:
 *   A classify (intents/) -> B select tools -> C plan -> D answer -> E execute
 *
 * A bt_pipeline owns the compiled catalog, the tool catalog, the policy and
 * the connectors built from one configuration directory, and a store handle.
 * Plans of approval level 0 execute at once; plans of level >= 1 are stored
 * with their approval requirement and returned, not executed.
 *
 * Threads: one bt_pipeline per thread (it holds a store handle).
 */
#ifndef BT_PIPELINE_H
#define BT_PIPELINE_H

#include <jansson.h>

#include "bot/conf.h"
#include "bot/store/store.h"
#include "bot/util.h"

typedef struct bt_pipeline bt_pipeline;

/* Build everything from cfg (borrowed; must outlive the pipeline): checks
 * intents, tools, policy and connectors, opens the store named in baton.yaml
 * (store_override, when non-NULL, replaces it) and loads the inventory into
 * it. Every configuration problem goes to d; returns NULL if there was any. */
bt_pipeline *bt_pipeline_new(const bt_config *cfg, const char *store_override, bt_diag *d);
void bt_pipeline_free(bt_pipeline *p);

/* A pipeline for another thread that shares first's read-only parts (the
 * compiled catalog, tools, policy, inventory) and its connectors, so circuit
 * breakers and connection limits are per process, not per thread; it has
 * its own store handle and dialogue. first must outlive it. NULL and err
 * when the store cannot be opened. */
bt_pipeline *bt_pipeline_sibling(const bt_pipeline *first, char *err, size_t errlen);

/* The pipeline's own store handle (borrowed; same thread rules as p), for
 * front-ends that read more from the store (console tokens, history). */
bt_store *bt_pipeline_store(bt_pipeline *p);

/* The connectors' circuit breakers (bt_connectors_breakers' array; new).
 * Thread-safe. */
json_t *bt_pipeline_breakers(const bt_pipeline *p);

/* Stages A-D without executing or storing anything. Returns a new object:
 *   request_id, request (the text as received), user,
 *   category, intent, entities, confidence, targets, corrections,
 *   kind          "answer" | "approval" | "clarify" | "unknown" | "error"
 *   risk          "low" | "medium" | "high" | "critical" (null without plan)
 *   approval_level 0..3 (null without plan)
 *   approval      the policy's requirement object (null without plan)
 *   plan          the plan object (null when no plan could be built)
 *   text          the rendered answer / question / plan summary
 * user: a configured user name (NULL: anonymous, treated as a viewer). */
json_t *bt_pipeline_explain(bt_pipeline *p, const char *text, const char *user);

/* All stages: records the request, decision and plan in the store, appends
 * to the audit log, executes level-0 plans and waits for them (each step
 * bounded by its timeout). Returns the explain object plus:
 *   execution     {execution_id, state, steps[{index, tool, target, state,
 *                  result}]} when something ran
 *   approval_id   when the plan waits for approval
 *   text          the final answer (results for reads; the plan and what
 *                 approval it needs for changes)
 * and kind "answer" | "approval" | "clarify" | "unknown" | "error". */
json_t *bt_pipeline_handle(bt_pipeline *p, const char *text, const char *user, const char *channel);

/* Decide on an approval as user (a configured user name) from via ("cli",
 * "console", ...): decision "approve" | "deny", step -1 for the plan or N
 * (0-based) to release step N of a level-3 plan. When token is non-NULL the
 * approval, step and decision come from the signed token instead. Runs what
 * the decision releases (the whole plan, or one step) and returns a new
 * object:
 *   kind      "approval" (recorded, more is needed) | "answer" (ran, or
 *             already decided) | "error" (refused, or a step failed)
 *   status    "recorded" | "already" | "refused"
 *   text      what happened, for a person
 *   approval  the approval after the decision
 *   execution when something ran: {execution_id, state, steps[...]} */
json_t *bt_pipeline_decide(bt_pipeline *p, const char *approval_id, const char *user,
                           const char *decision, int step, const char *via, const char *token);

/* The requester withdraws a pending approval. Same shape as decide. */
json_t *bt_pipeline_cancel(bt_pipeline *p, const char *approval_id, const char *user,
                           const char *via);

/* A signed token carrying decision ("approve" | "deny") on approval_id for
 * step (-1: the plan; N: release of step N, 0-based), for a chat button:
 * pass it to bt_pipeline_decide. New string, or NULL when there is no such
 * approval. */
char *bt_pipeline_decision_token(bt_pipeline *p, const char *approval_id, int step,
                                 const char *decision);

/* The configured user whose identity on platform ("slack", "mattermost",
 * ...) is id, or NULL. Borrowed. */
const char *bt_pipeline_user_for(const bt_pipeline *p, const char *platform, const char *id);

/* Approvals waiting for a decision or a step release (new array; see
 * approvals/approvals.h for the objects). */
json_t *bt_pipeline_pending(bt_pipeline *p);

/* Everything a front-end shows about one approval, as a new object (NULL
 * when there is no such approval or the store failed):
 *   approval_id, request_id, execution_id, requester, request (the text),
 *   summary, risk, level, level_name, targets [names], created_ms,
 *   expires_ms, updated_ms, state (the approval's), approvals_required,
 *   approved_by [users], decisions [{user, decision, step (1-based or
 *   null), via, ts_ms}], may_decide [users], next_step (1-based or null),
 *   released_steps [1-based], steps [{number, tool, target, risk, inputs,
 *   state, error, output}], execution {state, done, total} or null,
 *   result_text (once the execution has ended, else null).
 * Who may do what is per viewer: see bt_pipeline_card_for. */
json_t *bt_pipeline_card(bt_pipeline *p, const char *approval_id);

/* Adds card.you = {may_decide, may_release, may_cancel} for user (role is
 * the user's configured role). Returns false when user may not see the card
 * at all (not the requester, not among those who may decide or decided, and
 * neither an approver nor an admin: they oversee every approval). */
bool bt_pipeline_card_for(json_t *card, const char *user, const char *role);

/* Notes on reach (new array of {connection, tools [names], assets [names],
 * text}): for each connection (local, ssh, winrm), the tools that act on a
 * host but whose connector cannot reach the assets reached that way (the
 * local runner acts only on the baton host). `baton check` prints them;
 * they do not stop baton. */
json_t *bt_pipeline_coverage(const bt_pipeline *p);

/* Let time pass: expire, remind, escalate (new array of events). */
json_t *bt_pipeline_sweep(bt_pipeline *p, int64_t now_ms);

/* Notices for user that were not shown yet (e.g. "your execution was
 * interrupted when baton stopped"); marks them shown. New array of
 * {notification_id, execution_id, text, created_ms}. */
json_t *bt_pipeline_notices(bt_pipeline *p, const char *user);

/* Crash recovery on a bare store (for commands that need no pipeline):
 * executions left running by a dead baton become interrupted. Returns how
 * many were recovered, -1 on a store failure. */
int bt_pipeline_recover(bt_store *st);

/* Claim one background job and run it; 1 if there was one, else 0. */
int bt_pipeline_worker_once(bt_pipeline *p);

#endif
