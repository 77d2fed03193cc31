/*
 * execute.h - stage E: run a plan's steps through the connectors.
 * Folder-internal to pipeline/.
 *
 * Steps run in dependency order; steps whose dependencies are all done run
 * in parallel (at most BT_EXECUTE_PARALLEL at once). A step whose dependency
 * failed is skipped. When a step fails, the compensating steps of the steps
 * already completed run in reverse order (saga) and are reported. Every state
 * change is written to the store before it is acted on.
 */
#ifndef BT_EXECUTE_H
#define BT_EXECUTE_H

#include <jansson.h>

#include "bot/store/store.h"
#include "connectors/connectors.h"
#include "pipeline/tools.h"

#define BT_EXECUTE_PARALLEL 4

/* Run plan (borrowed) as execution execution_id, which must already exist in
 * st (state approved or queued). assets (borrowed object: asset name ->
 * asset object) supplies each step's target. request_id and actor go to the
 * audit log. Returns a new object {execution_id, state, steps[{index, tool,
 * target, state, result, error}], compensated[...]}; state is "completed"
 * or "failed". Blocks until every step has ended (each bounded by its
 * timeout). */
json_t *bt_execute_plan(bt_connectors *conns, const bt_tools *tools, bt_store *st,
                        const json_t *plan, const json_t *assets, const char *execution_id,
                        const char *request_id, const char *actor);

#endif
