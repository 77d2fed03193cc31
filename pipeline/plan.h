/*
 * plan.h - stage C: turn a decision into a plan of steps. Folder-internal
 * to pipeline/.
 *
 * A plan is a JSON object:
 *   intent, summary, risk (highest step risk), targets [{name, environment}],
 *   steps [{index, id, tool, connector, operation, inputs, target,
 *           environment, risk, read_only, reversible, timeout_s,
 *           depends_on [indexes], compensate {tool, inputs} | null}]
 * Step inputs have been validated against the tool catalog, so a plan that
 * was built holds no value its tools would refuse.
 */
#ifndef BT_PLAN_H
#define BT_PLAN_H

#include <jansson.h>

#include "pipeline/tools.h"

enum bt_plan_outcome {
    BT_PLAN_OK = 0,      /* *plan is set */
    BT_PLAN_NONE = 1,    /* the intent has no plan (information intents) */
    BT_PLAN_CLARIFY = 2, /* *question is set: what to ask the user */
    BT_PLAN_INVALID = 3, /* err says which value was refused */
};

/* Build the plan for decision (borrowed; entities, targets) following the
 * intent definition (borrowed; plan, requires, ask, targets) with targets
 * (borrowed array of the asset objects the request acts on, in order).
 * On BT_PLAN_CLARIFY *question is a new object {question, missing[]}. */
enum bt_plan_outcome bt_plan_build(const bt_tools *tools, const json_t *intent,
                                   const json_t *decision, const json_t *targets, json_t **plan,
                                   json_t **question, char *err, size_t errlen);

/* Canonical JSON of plan (new string; caller frees) and its sha256 in hex. */
char *bt_plan_canonical(const json_t *plan, char sha256[65]);

#endif
