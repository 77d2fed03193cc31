/* plan.c - see plan.h. */
#include "pipeline/plan.h"

#include <stdlib.h>
#include <string.h>

#include "approvals/policy.h"
#include "bot/util.h"

#define PLAN_MAX_STEPS 500
#define TEMPLATE_MAX 1024

/* Expand one input template: "{entity}", "{target}", "{target.field}", or
 * literal text around them. Returns a new string, or NULL when a name it
 * refers to has no value (the input is then left out). */
static char *expand(const char *tmpl, const json_t *entities, const json_t *asset)
{
    bt_buf b = BT_BUF_INIT(TEMPLATE_MAX);
    const char *p = tmpl;
    while (*p) {
        const char *open = strchr(p, '{');
        const char *close = open ? strchr(open, '}') : NULL;
        if (!open || !close) {
            bt_buf_puts(&b, p);
            break;
        }
        bt_buf_append(&b, p, (size_t)(open - p));
        size_t nlen = (size_t)(close - open - 1);
        char name[64];
        if (nlen == 0 || nlen >= sizeof name) {
            bt_buf_free(&b);
            return NULL;
        }
        memcpy(name, open + 1, nlen);
        name[nlen] = '\0';
        const char *value = NULL;
        if (strcmp(name, "target") == 0)
            value = json_string_value(json_object_get(asset, "name"));
        else if (strncmp(name, "target.", 7) == 0)
            value = json_string_value(json_object_get(asset, name + 7));
        else
            value = json_string_value(json_object_get(entities, name));
        if (!value) {
            bt_buf_free(&b);
            return NULL;
        }
        if (bt_buf_puts(&b, value) != BT_OK) {
            bt_buf_free(&b);
            return NULL;
        }
        p = close + 1;
    }
    return bt_buf_steal(&b);
}

static bool uses_target(const json_t *step)
{
    json_t *per = json_object_get(step, "per_target");
    if (json_is_boolean(per))
        return json_is_true(per);
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(step, "inputs"), k, v)
    {
        const char *s = json_string_value(v);
        if (s && strstr(s, "{target"))
            return true;
    }
    return false;
}

static json_t *clarify(const char *question, const char *missing)
{
    return json_pack("{s:s, s:[s]}", "question", question, "missing", missing);
}

/* The question to ask for a missing entity: the intent's `ask`, else a
 * generic one. */
static json_t *ask_for(const json_t *intent, const char *entity)
{
    const char *q = json_string_value(json_object_get(json_object_get(intent, "ask"), entity));
    if (q)
        return clarify(q, entity);
    char *text = bt_asprintf("Which %s?", entity);
    json_t *out = clarify(text, entity);
    free(text);
    return out;
}

static json_t *compensation(const bt_tools *tools, const json_t *def, const json_t *inputs)
{
    const char *comp = json_string_value(json_object_get(def, "compensate"));
    const json_t *cdef = comp ? bt_tools_get(tools, comp) : NULL;
    if (!cdef)
        return json_null();
    json_t *cinputs = json_object();
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(cdef, "inputs"), k, v)
    {
        json_t *val = json_object_get(inputs, k);
        if (val)
            json_object_set(cinputs, k, val);
    }
    return json_pack("{s:s, s:o}", "tool", comp, "inputs", cinputs);
}

enum bt_plan_outcome bt_plan_build(const bt_tools *tools, const json_t *intent,
                                   const json_t *decision, const json_t *targets, json_t **plan,
                                   json_t **question, char *err, size_t errlen)
{
    *plan = NULL;
    *question = NULL;
    json_t *tmpl = json_object_get(intent, "plan");
    if (!json_is_array(tmpl) || json_array_size(tmpl) == 0)
        return BT_PLAN_NONE;
    json_t *entities = json_object_get(decision, "entities");

    /* Entities the intent cannot do without come first: "Which service?". */
    size_t i;
    json_t *req;
    json_array_foreach(json_object_get(intent, "requires"), i, req)
    {
        const char *name = json_string_value(req);
        if (name && !json_object_get(entities, name)) {
            *question = ask_for(intent, name);
            return BT_PLAN_CLARIFY;
        }
    }
    const char *need = json_string_value(json_object_get(intent, "targets"));
    if (need && strcmp(need, "required") == 0 && json_array_size(targets) == 0) {
        json_t *unresolved = json_object_get(decision, "unresolved");
        if (json_array_size(unresolved)) {
            char *q = bt_asprintf("I don't know a host called %s. Which host did you mean?",
                                  json_string_value(json_array_get(unresolved, 0)));
            *question = clarify(q, "host");
            free(q);
        } else {
            *question = ask_for(intent, "host");
            if (!json_object_get(json_object_get(intent, "ask"), "host")) {
                json_decref(*question);
                *question = clarify("On which host?", "host");
            }
        }
        return BT_PLAN_CLARIFY;
    }

    json_t *steps = json_array();
    json_t *ids = json_object(); /* step id -> array of step indexes */
    enum bt_risk overall = BT_RISK_LOW;
    json_t *ts;
    json_array_foreach(tmpl, i, ts)
    {
        const char *tool = json_string_value(json_object_get(ts, "tool"));
        const json_t *def = bt_tools_get(tools, tool);
        if (!def) {
            bt_fmt(err, errlen, "the plan for %s names tool '%s', which is not in tools.yaml",
                   json_string_value(json_object_get(intent, "name")), tool ? tool : "(none)");
            goto invalid;
        }
        const char *id = json_string_value(json_object_get(ts, "id"));
        bool per_target = uses_target(ts);
        size_t copies = per_target ? json_array_size(targets) : 1;
        json_t *mine = json_array();
        for (size_t c = 0; c < copies; c++) {
            if (json_array_size(steps) >= PLAN_MAX_STEPS) {
                json_decref(mine);
                bt_fmt(err, errlen, "the plan would have more than %d steps; narrow the request",
                       PLAN_MAX_STEPS);
                goto invalid;
            }
            const json_t *asset = per_target ? json_array_get(targets, c) : NULL;
            json_t *inputs = json_object();
            const char *in;
            json_t *tv;
            json_object_foreach(json_object_get(ts, "inputs"), in, tv)
            {
                char *val =
                    json_is_string(tv) ? expand(json_string_value(tv), entities, asset) : NULL;
                if (val)
                    json_object_set_new(inputs, in, json_string(val));
                free(val);
            }
            json_t *missing = NULL;
            char verr[BT_ERRLEN];
            json_t *valid = bt_tools_validate(tools, tool, inputs, &missing, verr, sizeof verr);
            json_decref(inputs);
            if (!valid) {
                json_decref(mine);
                if (missing) {
                    *question = ask_for(intent, json_string_value(json_array_get(missing, 0)));
                    json_decref(missing);
                    json_decref(steps);
                    json_decref(ids);
                    return BT_PLAN_CLARIFY;
                }
                bt_fmt(err, errlen, "%s", verr);
                goto invalid;
            }
            const char *risk_name = json_string_value(json_object_get(def, "risk"));
            enum bt_risk r = BT_RISK_LOW;
            bt_risk_parse(risk_name ? risk_name : "low", &r);
            if (r > overall)
                overall = r;
            const char *target = asset ? json_string_value(json_object_get(asset, "name"))
                                       : json_string_value(json_object_get(valid, "host"));
            const char *env =
                asset ? json_string_value(json_object_get(asset, "environment")) : NULL;
            json_t *timeout = json_object_get(def, "timeout_s");
            json_t *step = json_pack(
                "{s:I, s:s, s:s, s:s?, s:s?, s:O, s:s?, s:s?, s:s, s:b, s:b, s:I, s:[], s:o}",
                "index", (json_int_t)json_array_size(steps), "id", id ? id : tool, "tool", tool,
                "connector", json_string_value(json_object_get(def, "connector")), "operation",
                json_string_value(json_object_get(def, "operation")), "inputs", valid, "target",
                target, "environment", env, "risk", bt_risk_name(r), "read_only",
                json_is_true(json_object_get(def, "read_only")), "reversible",
                json_is_true(json_object_get(def, "reversible")), "timeout_s",
                (json_int_t)(json_is_integer(timeout) ? json_integer_value(timeout) : 30),
                "depends_on", "compensate", compensation(tools, def, valid));
            json_decref(valid);
            /* Dependencies: on the same target's copy of a per-target step,
             * or on every copy of a step that is not per target. */
            size_t k;
            json_t *dep;
            json_array_foreach(json_object_get(ts, "depends_on"), k, dep)
            {
                json_t *deps =
                    json_object_get(ids, json_string_value(dep) ? json_string_value(dep) : "");
                if (!deps) {
                    json_decref(step);
                    json_decref(mine);
                    bt_fmt(err, errlen, "step %s depends on '%s', which comes later or is unknown",
                           id ? id : tool, json_string_value(dep) ? json_string_value(dep) : "?");
                    goto invalid;
                }
                size_t dn = json_array_size(deps);
                if (per_target && dn == copies)
                    json_array_append(json_object_get(step, "depends_on"), json_array_get(deps, c));
                else
                    for (size_t m = 0; m < dn; m++)
                        json_array_append(json_object_get(step, "depends_on"),
                                          json_array_get(deps, m));
            }
            json_array_append_new(mine, json_integer((json_int_t)json_array_size(steps)));
            json_array_append_new(steps, step);
        }
        json_object_set_new(ids, id ? id : tool, mine);
    }
    json_decref(ids);
    if (json_array_size(steps) == 0) {
        /* Every step acts on a target and none was named. */
        json_decref(steps);
        *question = clarify("On which host?", "host");
        return BT_PLAN_CLARIFY;
    }

    json_t *tlist = json_array();
    json_t *asset;
    json_array_foreach(targets, i, asset)
    {
        json_array_append_new(tlist,
                              json_pack("{s:O, s:O?}", "name", json_object_get(asset, "name"),
                                        "environment", json_object_get(asset, "environment")));
    }
    const char *desc = json_string_value(json_object_get(intent, "description"));
    bt_buf sum = BT_BUF_INIT(2048);
    bt_buf_puts(&sum, desc ? desc : json_string_value(json_object_get(intent, "name")));
    json_array_foreach(tlist, i, asset)
    {
        if (i == 8) {
            bt_buf_printf(&sum, " and %zu more", json_array_size(tlist) - 8);
            break;
        }
        bt_buf_printf(&sum, "%s%s", i ? ", " : ": ",
                      json_string_value(json_object_get(asset, "name")));
    }
    *plan =
        json_pack("{s:O, s:s, s:s, s:o, s:o}", "intent", json_object_get(intent, "name"), "summary",
                  sum.data, "risk", bt_risk_name(overall), "targets", tlist, "steps", steps);
    bt_buf_free(&sum);
    return BT_PLAN_OK;

invalid:
    json_decref(steps);
    json_decref(ids);
    return BT_PLAN_INVALID;
}

char *bt_plan_canonical(const json_t *plan, char sha256[65])
{
    char *text = bt_json_canonical(plan);
    if (!text)
        return NULL;
    bt_sha256_hex(text, strlen(text), sha256);
    return text;
}
