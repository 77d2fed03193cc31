/*
 * policy.h - who must approve what: risk -> approval level (0-3), raised for
 * production targets and for many targets, adjusted by rules that match on
 * intent, tool, environment, argument values and the requester's role; and
 * the users, groups and roles that may decide.
 *
 * Levels: 0 none (runs at once), 1 confirm (requester or an approver),
 * 2 plan review (approvers, never the requester), 3 step by step (M distinct
 * approvers, never the requester, then each step released).
 *
 * A policy is read-only after bt_policy_new and thread-safe.
 */
#ifndef BT_POLICY_H
#define BT_POLICY_H

#include <stdbool.h>

#include <jansson.h>

#include "bot/conf.h"

enum bt_risk { BT_RISK_LOW = 0, BT_RISK_MEDIUM = 1, BT_RISK_HIGH = 2, BT_RISK_CRITICAL = 3 };

/* "low", "medium", "high", "critical". */
const char *bt_risk_name(enum bt_risk risk);
/* Parse a risk name; false if unknown. */
bool bt_risk_parse(const char *name, enum bt_risk *out);

typedef struct bt_policy bt_policy;

/* Build from baton.yaml's `policy`, `users` and `groups` sections; problems
 * go to d (file:line: key: message). NULL when any problem was found. */
bt_policy *bt_policy_new(const bt_config *cfg, bt_diag *d);
void bt_policy_free(bt_policy *p);

/* Evaluate a plan (borrowed; the object pipeline/plan.h builds: intent,
 * risk, steps[{tool, inputs, risk, target, environment}], targets[{name,
 * environment}]) for requester (a configured user name or NULL). Returns a
 * new object:
 *   level         int     0..3
 *   risk          string  the plan's risk (never lowered)
 *   reasons       array   strings: why this level ("production target", ...)
 *   approvals_required int  distinct approvers needed (0 at level 0)
 *   approver_groups array groups whose members may approve
 *   requester_may_approve bool
 *   expires_s     int     seconds until the approval expires (0 at level 0)
 *   remind_s, escalate_s int  (0 = never), escalate_to string or null
 *   allowed       bool    false when the requester may not ask for this at
 *                         all (e.g. a viewer asking for a change)
 *   denied_reason string  when allowed is false */
json_t *bt_policy_evaluate(const bt_policy *p, const json_t *plan, const char *requester);

/* The user's role ("viewer", "operator", "approver", "admin") or NULL if
 * the user is not configured. Borrowed. */
const char *bt_policy_user_role(const bt_policy *p, const char *user);
/* True when user belongs to group (directly, by group membership). */
bool bt_policy_user_in_group(const bt_policy *p, const char *user, const char *group);
/* The configured user whose identity on platform ("console", "slack",
 * "mattermost", "cli") is id; NULL if none. Borrowed. */
const char *bt_policy_user_for(const bt_policy *p, const char *platform, const char *id);

/* May user decide an approval whose requirement is req (the object
 * bt_policy_evaluate returned) requested by requester? When not, reason
 * (reasonlen bytes) says why. Does not know who decided already: the
 * approvals dialogue checks "never the same person twice". */
bool bt_policy_may_decide(const bt_policy *p, const json_t *req, const char *requester,
                          const char *user, char *reason, size_t reasonlen);

#endif
