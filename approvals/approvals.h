/*
 * approvals.h - the approval dialogue: who has said yes or no to which plan,
 * bound to the exact plan shown, durable in the store, unforgeable.
 *
 * An approval is created by the pipeline when a plan needs level >= 1 (see
 * bt_store_approval_add; its requirement object is the policy's answer from
 * bt_policy_evaluate plus "requester" and "plan_hash"). From then on this
 * module owns its state, through an explicit transition table:
 *
 *   pending --(enough approvals)--> approved      (levels 1, 2: plan runs)
 *   pending --(2 approvers, L3)---> releasing     (level 3: steps released one by one)
 *   releasing --(last step released)--> approved
 *   pending|releasing --deny--> denied
 *   pending --requester cancels--> cancelled
 *   pending|releasing --time--> expired
 *
 * Rules (checked here, with the policy's bt_policy_may_decide for who):
 *   - level 1: one confirmation by the requester or an approver;
 *   - level >= 2: approvers only, never the requester; M distinct approvers
 *     (requirement.approvals_required), never the same person twice;
 *   - level 3: after the M approvals every step is released, in order, by an
 *     approver (never the requester), and only after the previous step has
 *     completed;
 *   - deny by anyone who may decide stops the plan at any point;
 *   - an expired, denied, cancelled or fully approved approval cannot be
 *     decided; a second identical decision by the same person is idempotent
 *     and answers who decided and when;
 *   - the plan in the store must still hash to requirement.plan_hash.
 *
 * Decisions from buttons travel as signed tokens: HMAC-SHA256 over approval
 * id, step, decision, plan hash and expiry, keyed by $BATON_SECRET (at least
 * 32 bytes) or a random key generated once and kept in the store. A forged,
 * altered, replayed (already used by its decider) or expired token is refused
 * with a clear reason. Every decision and every refusal is written to the
 * audit log with who and from where (`via`: "cli", "console", "slack", ...).
 *
 * Threads: one bt_approvals per thread (it uses the store handle it is given).
 */
#ifndef BT_APPROVALS_H
#define BT_APPROVALS_H

#include <stdint.h>

#include <jansson.h>

#include "approvals/policy.h"
#include "bot/store/store.h"

typedef struct bt_approvals bt_approvals;

/* Set up the dialogue over st (borrowed) and policy (borrowed); reads the
 * signing key ($BATON_SECRET, else the store's, generating it the first
 * time). NULL and err on failure (e.g. BATON_SECRET shorter than 32 bytes). */
bt_approvals *bt_approvals_new(bt_store *st, const bt_policy *policy, char *err, size_t errlen);
void bt_approvals_free(bt_approvals *a);

/* The configured user names (borrowed; an array of strings, or an object
 * whose keys are the names, such as bt_config_get(cfg, "users")); copied,
 * replacing any list given before. The policy decides who may decide, but
 * cannot list its users: this list is what bt_approvals_get's may_decide and
 * the sweep's notify lists are drawn from. Without it they are empty;
 * deciding works the same. */
void bt_approvals_set_users(bt_approvals *a, const json_t *users);

/* A signed token carrying one decision ("approve" | "deny") on approval_id
 * for step (-1: the whole plan; 0..n-1: release of that step at level 3).
 * New string, URL- and JSON-safe, at most 512 bytes; NULL if the approval
 * does not exist. */
char *bt_approvals_token(bt_approvals *a, const char *approval_id, int step, const char *decision);

/* Decide on approval_id as user (a configured user name) from via.
 * decision: "approve" | "deny"; step: -1 for the plan, N to release step N
 * (level 3). Returns a new object:
 *   status    "recorded" | "already" | "refused"
 *   reason    human text: why refused, or who decided already and when
 *   approval  the approval after the decision (bt_approvals_get's shape)
 *   run       "none" | "plan" (every approval is in: run the whole plan) |
 *             "step" (level 3: run step `step` now)
 *   step      the step to run when run is "step"
 * Never NULL. */
json_t *bt_approvals_decide(bt_approvals *a, const char *approval_id, const char *user,
                            const char *decision, int step, const char *via);

/* Same, with the approval, step and decision taken from a signed token
 * (refused when the token is not valid for this approval's current plan). */
json_t *bt_approvals_decide_token(bt_approvals *a, const char *token, const char *user,
                                  const char *via);

/* The requester withdraws a pending approval. Same result shape. */
json_t *bt_approvals_cancel(bt_approvals *a, const char *approval_id, const char *user,
                            const char *via);

/* One approval as a new object: approval_id, plan_id, execution_id, level,
 * state, requester, plan_hash, expires_ms, created_ms, approvals_required,
 * decisions [{user, decision, step, via, ts_ms}], released_steps [N...],
 * next_step (level 3: the step awaiting release, or null), may_decide
 * [user names who could decide now]. NULL when unknown. */
json_t *bt_approvals_get(bt_approvals *a, const char *approval_id);

/* Every approval still pending or releasing, oldest first (array of the
 * objects above). */
json_t *bt_approvals_list_pending(bt_approvals *a);

/* Let time pass to now_ms: expire what is past its expiry, send each
 * reminder and escalation once when due. Returns a new array of events
 * {type: "expired"|"reminder"|"escalation", approval_id, level, notify
 * [user names], group (escalation)}; each is also in the audit log. */
json_t *bt_approvals_sweep(bt_approvals *a, int64_t now_ms);

#endif
