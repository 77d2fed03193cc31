/* execute.c - see execute.h. */
#include "pipeline/execute.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "bot/log.h"
#include "bot/util.h"

#define EXEC_MAX_STEPS 500

enum step_state { ST_PENDING, ST_RUNNING, ST_COMPLETED, ST_FAILED, ST_SKIPPED, ST_TIMED_OUT };

static const char *const state_names[] = {"pending", "running", "completed",
                                          "failed",  "skipped", "timed_out"};

/* One step's work, handed to a thread. The thread touches only this struct
 * and the (thread-safe) connectors; the store stays on the calling thread. */
struct job {
    bt_connectors *conns;
    const json_t *tool;
    const json_t *inputs;
    const json_t *target;
    json_t *result;
    enum bt_err rc;
    char err[BT_ERRLEN];
    int64_t ms;
};

static void *run_job(void *arg)
{
    struct job *j = arg;
    int64_t t0 = bt_mono_ms();
    j->err[0] = '\0';
    j->rc = bt_connectors_invoke(j->conns, j->tool, j->inputs, j->target, &j->result, j->err,
                                 sizeof j->err);
    j->ms = bt_mono_ms() - t0;
    return NULL;
}

static void audit(bt_store *st, const char *request_id, const char *actor, const char *event,
                  json_t *detail)
{
    char err[BT_ERRLEN];
    if (bt_store_audit_append(st, request_id, actor, event, detail, err, sizeof err) != BT_OK)
        bt_log(BT_LOG_ERROR, "execute", request_id, "audit log: %s", err);
    json_decref(detail);
}

static bool deps_state(const json_t *step, const enum step_state *states, bool *blocked)
{
    size_t i;
    json_t *d;
    bool ready = true;
    *blocked = false;
    json_array_foreach(json_object_get(step, "depends_on"), i, d)
    {
        json_int_t k = json_integer_value(d);
        if (states[k] == ST_FAILED || states[k] == ST_SKIPPED || states[k] == ST_TIMED_OUT)
            *blocked = true;
        if (states[k] != ST_COMPLETED)
            ready = false;
    }
    return ready;
}

/* The result a user sees for a step: connector data plus the error text. */
static json_t *step_result(struct job *j)
{
    json_t *r = j->result ? j->result : json_object();
    j->result = NULL;
    json_object_set_new(r, "duration_ms", json_integer(j->ms));
    if (j->rc != BT_OK)
        json_object_set_new(r, "error", json_string(j->err[0] ? j->err : bt_strerror(j->rc)));
    return r;
}

static void run_compensations(bt_connectors *conns, const bt_tools *tools, bt_store *st,
                              const json_t *steps, const enum step_state *states,
                              const json_t *assets, const char *request_id, const char *actor,
                              json_t *out)
{
    for (size_t n = json_array_size(steps); n-- > 0;) {
        if (states[n] != ST_COMPLETED)
            continue;
        const json_t *step = json_array_get(steps, n);
        json_t *comp = json_object_get(step, "compensate");
        const char *ctool = json_string_value(json_object_get(comp, "tool"));
        if (!ctool)
            continue;
        struct job j = {
            .conns = conns,
            .tool = bt_tools_get(tools, ctool),
            .inputs = json_object_get(comp, "inputs"),
            .target = json_object_get(assets, json_string_value(json_object_get(step, "target")))};
        if (!j.tool)
            continue;
        run_job(&j);
        json_t *res = step_result(&j);
        json_t *rec = json_pack("{s:I, s:s, s:s, s:o}", "undoes",
                                json_integer_value(json_object_get(step, "index")), "tool", ctool,
                                "state", j.rc == BT_OK ? "completed" : "failed", "result", res);
        audit(st, request_id, actor, "step_compensated", json_deep_copy(rec));
        json_array_append_new(out, rec);
    }
}

json_t *bt_execute_plan(bt_connectors *conns, const bt_tools *tools, bt_store *st,
                        const json_t *plan, const json_t *assets, const char *execution_id,
                        const char *request_id, const char *actor)
{
    char err[BT_ERRLEN];
    const json_t *steps = json_object_get(plan, "steps");
    size_t n = json_array_size(steps);
    if (n > EXEC_MAX_STEPS)
        n = EXEC_MAX_STEPS;
    enum step_state *states = bt_calloc(n ? n : 1, sizeof *states);
    json_t *results = json_array();
    for (size_t i = 0; i < n; i++) {
        const json_t *step = json_array_get(steps, i);
        bt_store_step_add(st, execution_id, (int)i,
                          json_string_value(json_object_get(step, "tool")), "pending", err,
                          sizeof err);
        json_array_append_new(
            results, json_pack("{s:I, s:O, s:O?, s:s, s:n}", "index", (json_int_t)i, "tool",
                               json_object_get(step, "tool"), "target",
                               json_object_get(step, "target"), "state", "pending", "result"));
    }
    if (bt_store_execution_set(st, execution_id, "running", NULL, err, sizeof err) != BT_OK)
        bt_log(BT_LOG_ERROR, "execute", request_id, "execution %s: %s", execution_id, err);
    audit(st, request_id, actor, "execution_started",
          json_pack("{s:s, s:I}", "execution_id", execution_id, "steps", (json_int_t)n));

    /* Waves: each pass starts every ready step (up to the parallel bound),
     * waits for them, records them. Each pass ends at least one step, so
     * the loop runs at most n times. */
    bool failed = false;
    for (size_t pass = 0; pass <= n; pass++) {
        size_t batch[BT_EXECUTE_PARALLEL];
        size_t nb = 0;
        bool progress = false;
        for (size_t i = 0; i < n; i++) {
            if (states[i] != ST_PENDING)
                continue;
            bool blocked;
            bool ready = deps_state(json_array_get(steps, i), states, &blocked);
            if (blocked || failed) {
                states[i] = ST_SKIPPED;
                bt_store_step_set(st, execution_id, (int)i, "skipped", NULL, err, sizeof err);
                json_object_set_new(json_array_get(results, i), "state", json_string("skipped"));
                progress = true;
                continue;
            }
            if (ready && nb < BT_EXECUTE_PARALLEL)
                batch[nb++] = i;
        }
        if (nb == 0) {
            if (!progress)
                break;
            continue;
        }
        struct job jobs[BT_EXECUTE_PARALLEL];
        pthread_t threads[BT_EXECUTE_PARALLEL];
        bool started[BT_EXECUTE_PARALLEL] = {false};
        for (size_t b = 0; b < nb; b++) {
            const json_t *step = json_array_get(steps, batch[b]);
            memset(&jobs[b], 0, sizeof jobs[b]);
            jobs[b].conns = conns;
            jobs[b].tool = bt_tools_get(tools, json_string_value(json_object_get(step, "tool")));
            jobs[b].inputs = json_object_get(step, "inputs");
            jobs[b].target =
                json_object_get(assets, json_string_value(json_object_get(step, "target"))
                                            ? json_string_value(json_object_get(step, "target"))
                                            : "");
            states[batch[b]] = ST_RUNNING;
            /* Written before the step starts: after a crash the store shows
             * it as running, never as not started. */
            bt_store_step_set(st, execution_id, (int)batch[b], "running", NULL, err, sizeof err);
            if (!jobs[b].tool) {
                jobs[b].rc = BT_EINVAL;
                bt_fmt(jobs[b].err, sizeof jobs[b].err, "unknown tool");
                continue;
            }
            if (nb > 1 && pthread_create(&threads[b], NULL, run_job, &jobs[b]) == 0)
                started[b] = true;
            else
                run_job(&jobs[b]);
        }
        for (size_t b = 0; b < nb; b++) {
            if (started[b])
                pthread_join(threads[b], NULL);
            size_t i = batch[b];
            enum step_state s = jobs[b].rc == BT_OK         ? ST_COMPLETED
                                : jobs[b].rc == BT_ETIMEOUT ? ST_TIMED_OUT
                                                            : ST_FAILED;
            states[i] = s;
            json_t *res = step_result(&jobs[b]);
            bt_store_step_set(st, execution_id, (int)i, state_names[s], res, err, sizeof err);
            json_t *rec = json_array_get(results, i);
            json_object_set_new(rec, "state", json_string(state_names[s]));
            json_object_set_new(rec, "result", res);
            audit(st, request_id, actor, "step_finished",
                  json_pack("{s:s, s:I, s:O, s:s, s:O}", "execution_id", execution_id, "index",
                            (json_int_t)i, "tool", json_object_get(rec, "tool"), "state",
                            state_names[s], "result", res));
            if (s != ST_COMPLETED)
                failed = true;
        }
    }

    json_t *compensated = json_array();
    if (failed)
        run_compensations(conns, tools, st, steps, states, assets, request_id, actor, compensated);
    const char *final = failed ? "failed" : "completed";
    json_t *summary = json_pack("{s:s, s:s, s:O, s:O}", "execution_id", execution_id, "state",
                                final, "steps", results, "compensated", compensated);
    bt_store_execution_set(st, execution_id, final, summary, err, sizeof err);
    audit(st, request_id, actor, "execution_finished",
          json_pack("{s:s, s:s}", "execution_id", execution_id, "state", final));
    json_decref(results);
    json_decref(compensated);
    free(states);
    return summary;
}
