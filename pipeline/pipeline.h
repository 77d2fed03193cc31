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
#include "bot/util.h"

typedef struct bt_pipeline bt_pipeline;

/* Build everything from cfg (borrowed; must outlive the pipeline): checks
 * intents, tools, policy and connectors, opens the store named in baton.yaml
 * (store_override, when non-NULL, replaces it) and loads the inventory into
 * it. Every configuration problem goes to d; returns NULL if there was any. */
bt_pipeline *bt_pipeline_new(const bt_config *cfg, const char *store_override, bt_diag *d);
void bt_pipeline_free(bt_pipeline *p);

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

#endif
