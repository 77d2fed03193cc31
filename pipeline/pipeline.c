/* pipeline.c - see pipeline.h. */
#include "pipeline/pipeline.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "approvals/approvals.h"
#include "approvals/policy.h"
#include "bot/log.h"
#include "bot/store/store.h"
#include "connectors/connectors.h"
#include "intents/intents.h"
#include "pipeline/answer.h"
#include "pipeline/execute.h"
#include "pipeline/plan.h"
#include "pipeline/tools.h"

#define DEFAULT_STORE "var/baton.db"
#define MAX_CATALOG 10000

struct bt_pipeline {
    const bt_config *cfg;
    char *store_location;
    bt_store *store;
    json_t *assets;      /* inventory array */
    json_t *by_name;     /* asset name -> asset */
    json_t *intent_list; /* array of intent definitions (borrowed refs kept) */
    bt_intents *intents;
    bt_tools *tools;
    bt_policy *policy;
    bt_connectors *conns;
    bt_approvals *approvals;
    struct bt_execute_config exec_conf;
    bt_execute *exec;
    bool batch_open; /* a request's records are being written as one unit */
    /* A sibling borrows the read-only parts (catalog, tools, policy,
     * connectors, inventory) of the pipeline it was made from. */
    bool sibling;
};

/* Close the request's unit of records. Nothing may act on them before this
 * returns BT_OK: if the commit fails, none of them exist. */
static enum bt_err end_batch(bt_pipeline *p, char *err, size_t errlen)
{
    if (!p->batch_open)
        return BT_OK;
    p->batch_open = false;
    return bt_store_batch_end(p->store, true, err, errlen);
}

/* Every step of every intent's plan must name a tool in tools.yaml and only
 * inputs that tool declares: checked once here so a typo in a catalog is a
 * `baton check` error, not a surprise at request time. */
static void check_intent_plans(bt_pipeline *p, bt_diag *d)
{
    for (size_t i = 0; i < MAX_CATALOG; i++) {
        const json_t *in = bt_intents_at(p->intents, i);
        if (!in)
            break;
        json_array_append(p->intent_list, (json_t *)in);
        const char *name = json_string_value(json_object_get(in, "name"));
        size_t k;
        json_t *step;
        json_array_foreach(json_object_get(in, "plan"), k, step)
        {
            const char *tool = json_string_value(json_object_get(step, "tool"));
            const json_t *def = bt_tools_get(p->tools, tool);
            if (!def) {
                bt_diag_add(d, "intents", 0, NULL,
                            "intent %s: plan step %zu names tool '%s', which is not in "
                            "tools.yaml",
                            name, k + 1, tool ? tool : "(none)");
                continue;
            }
            const char *input;
            json_t *v;
            json_object_foreach(json_object_get(step, "inputs"), input, v)
            {
                if (!json_object_get(json_object_get(def, "inputs"), input))
                    bt_diag_add(d, "intents", 0, NULL,
                                "intent %s: plan step %zu gives input '%s', which tool %s "
                                "does not take",
                                name, k + 1, input, tool);
            }
        }
    }
}

/* Tools that act on a host, and the hosts no connector of theirs can reach:
 * the local runner only acts on the baton host (connection: local) unless
 * the tool runs on the baton host by design (runs_on: baton, e.g. ping), so
 * without a `via:` entry a restart on an ssh host would fail at run time.
 * Reported by `baton check` as notes, one per connection (the
 * configuration still loads: a team may only ever act on the baton host). */
static bool reaches(const bt_pipeline *p, const char *tool, const json_t *asset)
{
    const char *conn = json_string_value(json_object_get(asset, "connection"));
    const json_t *def = bt_tools_for(p->tools, tool, asset);
    const char *type =
        bt_connectors_type(p->conns, json_string_value(json_object_get(def, "connector")));
    const char *runs_on = json_string_value(json_object_get(def, "runs_on"));
    return !type || strcmp(type, "local") != 0 || (conn && strcmp(conn, "local") == 0) ||
           (runs_on && strcmp(runs_on, "baton") == 0);
}

static void names_text(bt_buf *b, const json_t *names, size_t shown)
{
    size_t n = json_array_size(names);
    for (size_t x = 0; x < n && x < shown; x++)
        bt_buf_printf(b, "%s%s", x ? ", " : "", json_string_value(json_array_get(names, x)));
    if (n > shown)
        bt_buf_printf(b, " and %zu more", n - shown);
}

json_t *bt_pipeline_coverage(const bt_pipeline *p)
{
    json_t *notes = json_array();
    static const char *const ways[] = {"local", "ssh", "winrm", NULL};
    for (size_t w = 0; ways[w]; w++) {
        json_t *tools = json_array(), *assets = json_array(), *seen = json_object();
        for (size_t i = 0; i < MAX_CATALOG; i++) {
            const json_t *in = bt_intents_at(p->intents, i);
            if (!in)
                break;
            size_t k;
            json_t *step;
            json_array_foreach(json_object_get(in, "plan"), k, step)
            {
                const char *tool = json_string_value(json_object_get(step, "tool"));
                if (!tool || json_object_get(seen, tool) ||
                    !json_object_get(bt_tools_get(p->tools, tool), "target"))
                    continue;
                json_object_set_new(seen, tool, json_true());
                bool missed = false;
                size_t a;
                json_t *asset;
                json_array_foreach(p->assets, a, asset)
                {
                    const char *conn = json_string_value(json_object_get(asset, "connection"));
                    if (!conn || strcmp(conn, ways[w]) != 0 || reaches(p, tool, asset))
                        continue;
                    missed = true;
                    bool have = false;
                    size_t x;
                    json_t *v;
                    json_array_foreach(assets, x, v) have =
                        have || json_equal(v, json_object_get(asset, "name"));
                    if (!have)
                        json_array_append(assets, json_object_get(asset, "name"));
                }
                if (missed)
                    json_array_append_new(tools, json_string(tool));
            }
        }
        if (json_array_size(tools)) {
            bt_buf b = BT_BUF_INIT(4096);
            bt_buf_printf(&b, "%zu tool%s cannot act on the %zu asset%s reached over %s (",
                          json_array_size(tools), json_array_size(tools) == 1 ? "" : "s",
                          json_array_size(assets), json_array_size(assets) == 1 ? "" : "s",
                          ways[w]);
            names_text(&b, assets, 3);
            bt_buf_puts(&b, "): ");
            names_text(&b, tools, 6);
            bt_buf_printf(&b,
                          ". The local runner acts only on the baton host; give them "
                          "`via: %s:` with an ansible or automation connector "
                          "(docs/connectors.md).",
                          ways[w]);
            json_array_append_new(notes,
                                  json_pack("{s:s, s:o, s:o, s:s}", "connection", ways[w], "tools",
                                            tools, "assets", assets, "text", b.data ? b.data : ""));
            bt_buf_free(&b);
        } else {
            json_decref(tools);
            json_decref(assets);
        }
        json_decref(seen);
    }
    return notes;
}

/* How long after its last decision an approved plan that has not started
 * counts as abandoned by the process that decided it. */
#define UNSTARTED_GRACE_MS 60000

/* Nothing approved is lost: a plan whose approval was committed by a
 * process that died before starting it goes to the background queue (it
 * never ran, so this is not a re-run), and the requester is told. */
static void resume_unstarted(bt_pipeline *p)
{
    char err[BT_ERRLEN];
    json_t *list = NULL;
    if (bt_store_approvals_unstarted(p->store, bt_wall_ms() - UNSTARTED_GRACE_MS, &list, err,
                                     sizeof err) != BT_OK) {
        bt_log(BT_LOG_ERROR, "pipeline", NULL, "recovery: %s", err);
        return;
    }
    size_t i;
    json_t *ap;
    json_array_foreach(list, i, ap)
    {
        const char *exec_id = json_string_value(json_object_get(ap, "execution_id"));
        if (!exec_id || bt_store_execution_transition(p->store, exec_id, "pending_approval",
                                                      "approved", NULL, err, sizeof err) != BT_OK)
            continue; /* someone else got there first */
        json_t *r = bt_execute_run(p->exec, exec_id, -1, BT_EXECUTE_BACKGROUND, "baton");
        char *text = bt_asprintf("Execution %.8s was approved but had not started when baton "
                                 "stopped; it is now queued and runs in the background "
                                 "(baton status %s).",
                                 exec_id, exec_id);
        bt_store_notify(p->store, exec_id, text, err, sizeof err);
        bt_log(BT_LOG_WARN, "pipeline", NULL, "%s", text);
        free(text);
        json_decref(r);
    }
    json_decref(list);
}

bt_pipeline *bt_pipeline_new(const bt_config *cfg, const char *store_override, bt_diag *d)
{
    size_t before = bt_diag_count(d);
    bt_pipeline *p = bt_calloc(1, sizeof *p);
    p->cfg = cfg;
    const char *loc = store_override;
    if (!loc)
        loc = json_string_value(bt_config_get(cfg, "store.location"));
    p->store_location = bt_strdup(loc ? loc : DEFAULT_STORE);
    p->by_name = json_object();
    p->intent_list = json_array();

    p->assets = bt_connectors_inventory(cfg, d);
    p->conns = bt_connectors_new(cfg, p->store_location, d);
    if (p->conns)
        p->tools = bt_tools_new(cfg, p->conns, d);
    json_t *none = json_array();
    p->intents = bt_intents_new(cfg, p->assets ? p->assets : none, d);
    json_decref(none);
    p->policy = bt_policy_new(cfg, d);
    bt_execute_config_read(cfg, &p->exec_conf, d);
    if (p->intents && p->tools)
        check_intent_plans(p, d);
    if (bt_diag_count(d) > before || !p->assets || !p->conns || !p->tools || !p->intents ||
        !p->policy) {
        if (bt_diag_count(d) == before)
            bt_diag_add(d, bt_config_dir(cfg), 0, NULL, "configuration is incomplete");
        bt_pipeline_free(p);
        return NULL;
    }
    size_t i;
    json_t *a;
    json_array_foreach(p->assets, i, a)
        json_object_set(p->by_name, json_string_value(json_object_get(a, "name")), a);

    char err[BT_ERRLEN];
    if (bt_store_open(p->store_location, &p->store, err, sizeof err) != BT_OK ||
        bt_store_assets_replace(p->store, p->assets, err, sizeof err) != BT_OK) {
        bt_diag_add(d, NULL, 0, NULL, "store: %s", err);
        bt_pipeline_free(p);
        return NULL;
    }
    p->approvals = bt_approvals_new(p->store, p->policy, err, sizeof err);
    if (!p->approvals) {
        bt_diag_add(d, NULL, 0, NULL, "approvals: %s", err);
        bt_pipeline_free(p);
        return NULL;
    }
    bt_approvals_set_users(p->approvals, bt_config_get(cfg, "users"));
    p->exec = bt_execute_new(&p->exec_conf, p->conns, p->tools, p->store, NULL, NULL);

    /* A baton that died mid-step left executions running under a dead
     * owner: they become interrupted (never re-run) and their requesters
     * get a notification. */
    json_t *recovered = bt_execute_recover(p->store, "baton", err, sizeof err);
    if (!recovered)
        bt_log(BT_LOG_ERROR, "pipeline", NULL, "recovery: %s", err);
    size_t i2;
    json_t *rec;
    json_array_foreach(recovered, i2, rec)
    {
        bt_log(BT_LOG_WARN, "pipeline", NULL, "execution %s was %s after a crash: %s",
               json_string_value(json_object_get(rec, "execution_id")),
               json_string_value(json_object_get(rec, "state")),
               json_string_value(json_object_get(rec, "message")));
    }
    json_decref(recovered);
    resume_unstarted(p);
    return p;
}

void bt_pipeline_free(bt_pipeline *p)
{
    if (!p)
        return;
    bt_execute_free(p->exec);
    bt_approvals_free(p->approvals);
    bt_store_close(p->store);
    if (p->sibling) {
        free(p->store_location);
        free(p);
        return;
    }
    bt_connectors_free(p->conns);
    bt_tools_free(p->tools);
    bt_intents_free(p->intents);
    bt_policy_free(p->policy);
    json_decref(p->assets);
    json_decref(p->by_name);
    json_decref(p->intent_list);
    free(p->store_location);
    free(p);
}

bt_pipeline *bt_pipeline_sibling(const bt_pipeline *first, char *err, size_t errlen)
{
    bt_pipeline *p = bt_calloc(1, sizeof *p);
    p->sibling = true;
    p->cfg = first->cfg;
    p->store_location = bt_strdup(first->store_location);
    p->assets = first->assets;
    p->by_name = first->by_name;
    p->intent_list = first->intent_list;
    p->intents = first->intents;
    p->tools = first->tools;
    p->policy = first->policy;
    p->conns = first->conns;
    p->exec_conf = first->exec_conf;
    if (bt_store_open(p->store_location, &p->store, err, errlen) != BT_OK) {
        bt_pipeline_free(p);
        return NULL;
    }
    p->approvals = bt_approvals_new(p->store, p->policy, err, errlen);
    if (!p->approvals) {
        bt_pipeline_free(p);
        return NULL;
    }
    bt_approvals_set_users(p->approvals, bt_config_get(p->cfg, "users"));
    p->exec = bt_execute_new(&p->exec_conf, p->conns, p->tools, p->store, NULL, NULL);
    return p;
}

bt_store *bt_pipeline_store(bt_pipeline *p)
{
    return p->store;
}

json_t *bt_pipeline_breakers(const bt_pipeline *p)
{
    return bt_connectors_breakers(p->conns);
}

static bool asset_has_service(const json_t *asset, const char *service)
{
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(asset, "services"), i, s)
    {
        if (json_string_value(s) && strcasecmp(json_string_value(s), service) == 0)
            return true;
    }
    return false;
}

/* The assets a request acts on: those it names; else, for intents that act
 * on hosts, those its selectors pick ("deploy billing-api to production":
 * production assets running billing-api). New array. */
static json_t *select_targets(const bt_pipeline *p, const json_t *intent, const json_t *decision)
{
    json_t *out = json_array();
    size_t i;
    json_t *name;
    json_array_foreach(json_object_get(decision, "targets"), i, name)
    {
        json_t *a = json_object_get(p->by_name, json_string_value(name));
        if (a)
            json_array_append(out, a);
    }
    const char *need = json_string_value(json_object_get(intent, "targets"));
    if (json_array_size(out) || !need || strcmp(need, "none") == 0)
        return out;
    json_t *ent = json_object_get(decision, "entities");
    const char *env = json_string_value(json_object_get(ent, "environment"));
    const char *role = json_string_value(json_object_get(ent, "role"));
    const char *os = json_string_value(json_object_get(ent, "os"));
    const char *svc = json_string_value(json_object_get(ent, "app"));
    if (!svc)
        svc = json_string_value(json_object_get(ent, "service"));
    /* Without an environment or role nothing was asked for by selector: a
     * service name alone must not fan a change out to every host. */
    if (!env && !role)
        return out;
    json_t *a;
    json_array_foreach(p->assets, i, a)
    {
        if (env && strcmp(env, json_string_value(json_object_get(a, "environment"))) != 0)
            continue;
        if (role && strcmp(role, json_string_value(json_object_get(a, "role"))) != 0)
            continue;
        if (os && strcmp(os, json_string_value(json_object_get(a, "os"))) != 0)
            continue;
        if (svc && !asset_has_service(a, svc))
            continue;
        if (strcmp(json_string_value(json_object_get(a, "status")), "active") != 0)
            continue;
        json_array_append(out, a);
    }
    return out;
}

static void set_text(json_t *r, const char *kind, char *text)
{
    json_object_set_new(r, "kind", json_string(kind));
    json_object_set_new(r, "text", json_string(text ? text : ""));
    free(text);
}

/* Stages A-D. On return r holds everything explain reports; *plan_out
 * (borrowed from r) is the plan when one was built. */
/* Time since *t in r.stage_us[stage]; *t becomes now. */
static void stage_done(json_t *r, const char *stage, int64_t *t)
{
    int64_t now = bt_mono_us();
    json_t *us = json_object_get(r, "stage_us");
    if (!us) {
        us = json_object();
        json_object_set_new(r, "stage_us", us);
    }
    json_object_set_new(us, stage, json_integer(now - *t));
    *t = now;
}

static json_t *stages_a_to_d(bt_pipeline *p, const char *text, const char *user,
                             const char *request_id)
{
    int64_t t = bt_mono_us();
    /* jansson refuses strings that are not UTF-8; the request is echoed as a
     * marker then, and stage A refuses it with a clear message. */
    const char *shown = text && bt_utf8_valid(text, strlen(text)) ? text : "(not valid UTF-8)";
    json_t *r =
        json_pack("{s:s, s:s, s:s?}", "request_id", request_id, "request", shown, "user", user);
    json_object_set_new(r, "risk", json_null());
    json_object_set_new(r, "approval_level", json_null());
    json_object_set_new(r, "approval", json_null());
    json_object_set_new(r, "plan", json_null());
    char err[BT_ERRLEN];
    json_t *decision = bt_intents_classify(p->intents, text ? text : "", err, sizeof err);
    stage_done(r, "classify", &t);
    if (!decision) {
        json_object_set_new(r, "category", json_string("unknown"));
        json_object_set_new(r, "intent", json_string("unknown"));
        json_object_set_new(r, "error", json_string("invalid_input"));
        set_text(r, "error", bt_asprintf("I can't read that request: %s", err));
        return r;
    }
    static const char *const copied[] = {"category", "intent",      "entities",    "confidence",
                                         "targets",  "unresolved",  "corrections", "normalized",
                                         "question", "suggestions", "match",       NULL};
    for (size_t i = 0; copied[i]; i++) {
        json_t *v = json_object_get(decision, copied[i]);
        if (v)
            json_object_set(r, copied[i], v);
    }
    json_object_set(r, "decision", decision);
    const char *intent_name = json_string_value(json_object_get(decision, "intent"));
    const json_t *intent = bt_intents_get(p->intents, intent_name ? intent_name : "unknown");

    if (!intent || strcmp(intent_name, "unknown") == 0) {
        set_text(r, "unknown", bt_answer_unknown(decision));
        json_decref(decision);
        return r;
    }
    if (strcmp(intent_name, "capabilities") == 0) {
        set_text(r, "answer", bt_answer_capabilities(p->intent_list));
        json_decref(decision);
        return r;
    }
    if (strcmp(intent_name, "help") == 0) {
        const char *topic =
            json_string_value(json_object_get(json_object_get(decision, "entities"), "topic"));
        const json_t *about = topic ? bt_intents_get(p->intents, topic) : NULL;
        set_text(r, "answer",
                 about ? bt_answer_help(about) : bt_answer_capabilities(p->intent_list));
        json_decref(decision);
        return r;
    }

    json_t *targets = select_targets(p, intent, decision);
    stage_done(r, "select", &t);
    json_t *plan = NULL, *question = NULL;
    enum bt_plan_outcome oc =
        bt_plan_build(p->tools, intent, decision, targets, &plan, &question, err, sizeof err);
    json_decref(targets);
    json_decref(decision);
    stage_done(r, "plan", &t);
    switch (oc) {
    case BT_PLAN_NONE:
        set_text(r, "answer", bt_answer_help(intent));
        return r;
    case BT_PLAN_CLARIFY:
        json_object_set(r, "clarify", question);
        set_text(r, "clarify", bt_strdup(json_string_value(json_object_get(question, "question"))));
        json_decref(question);
        return r;
    case BT_PLAN_INVALID:
        json_object_set_new(r, "error", json_string("invalid_value"));
        set_text(r, "error", bt_asprintf("I can't do that: %s.", err));
        return r;
    case BT_PLAN_OK:
        break;
    }

    json_t *approval = bt_policy_evaluate(p->policy, plan, user);
    json_int_t level = json_integer_value(json_object_get(approval, "level"));
    json_object_set(plan, "risk", json_object_get(approval, "risk"));
    json_object_set_new(plan, "approval_level", json_integer(level));
    json_object_set(r, "risk", json_object_get(approval, "risk"));
    json_object_set_new(r, "approval_level", json_integer(level));
    json_object_set_new(r, "approval", approval);
    json_object_set_new(r, "plan", plan);
    if (!json_is_true(json_object_get(approval, "allowed"))) {
        const char *why = json_string_value(json_object_get(approval, "denied_reason"));
        json_object_set_new(r, "error", json_string("denied"));
        set_text(r, "error",
                 bt_asprintf("I can't do that for you: %s.",
                             why ? why : "the policy does not allow it"));
        return r;
    }
    if (level == 0)
        set_text(r, "answer", bt_strdup(json_string_value(json_object_get(plan, "summary"))));
    else
        set_text(r, "approval", bt_answer_approval(plan, approval, NULL));
    stage_done(r, "answer", &t);
    return r;
}

json_t *bt_pipeline_explain(bt_pipeline *p, const char *text, const char *user)
{
    char rid[33];
    bt_random_id(rid);
    json_t *r = stages_a_to_d(p, text, user, rid);
    json_object_del(r, "decision");
    return r;
}

static void audit(bt_pipeline *p, const char *rid, const char *actor, const char *event,
                  json_t *detail)
{
    char err[BT_ERRLEN];
    if (bt_store_audit_append(p->store, rid, actor, event, detail, err, sizeof err) != BT_OK)
        bt_log(BT_LOG_ERROR, "pipeline", rid, "audit log: %s", err);
    json_decref(detail);
}

/* Run execution exec_id of plan (all steps, or only step `only` when >= 0)
 * and put the outcome into r: kind, text, data (tables), execution. */
/* A plan that only reads baton's own inventory: nothing outside changes and
 * every step is quick, so its execution records may join the request's
 * unit of records (one commit) instead of being written ahead one by one.
 * Anything that calls out (a command, a network service) is written ahead,
 * so the store's write lock is never held while a connector works. */
static bool plan_in_process_read(const bt_pipeline *p, const json_t *plan)
{
    size_t i;
    json_t *step;
    json_array_foreach(json_object_get(plan, "steps"), i, step)
    {
        const char *type =
            bt_connectors_type(p->conns, json_string_value(json_object_get(step, "connector")));
        if (!json_is_true(json_object_get(step, "read_only")) || !type ||
            strcmp(type, "builtin") != 0)
            return false;
    }
    return i > 0;
}

static void run_plan(bt_pipeline *p, json_t *r, const json_t *plan, const char *exec_id,
                     const char *actor, int only)
{
    /* A released level-3 step runs now: the approver waits to see its
     * result before releasing the next. */
    char err[BT_ERRLEN];
    bool one_unit = only < 0 && p->batch_open && plan_in_process_read(p, plan);
    if (!one_unit && end_batch(p, err, sizeof err) != BT_OK) {
        json_object_set_new(r, "error", json_string("store"));
        set_text(r, "error", bt_asprintf("I could not record the plan, so nothing ran: %s", err));
        return;
    }
    json_t *exec =
        bt_execute_run(p->exec, exec_id, only, only >= 0 ? BT_EXECUTE_NOW : BT_EXECUTE_AUTO, actor);
    const char *state = json_string_value(json_object_get(exec, "state"));
    const char *error = json_string_value(json_object_get(exec, "error"));
    const char *message = json_string_value(json_object_get(exec, "message"));
    if (error) {
        json_object_set_new(r, "error", json_string(error));
        set_text(r, "error", bt_asprintf("Nothing ran: %s", message ? message : error));
    } else if (json_is_true(json_object_get(exec, "background"))) {
        set_text(r, "answer",
                 bt_asprintf("%s\nThis is estimated at %lld s, so it runs in the background. "
                             "Follow it with: baton status %s",
                             json_string_value(json_object_get(plan, "summary")),
                             (long long)json_integer_value(json_object_get(exec, "estimate_s")),
                             exec_id));
    } else {
        bool ok = json_is_true(json_object_get(exec, "paused")) ||
                  (state && strcmp(state, "completed") == 0);
        json_t *table = bt_answer_table(exec);
        if (table)
            json_object_set_new(r, "data", table);
        set_text(r, ok ? "answer" : "error", bt_answer_results(plan, exec));
        if (!ok)
            json_object_set_new(r, "error", json_string("execution_failed"));
    }
    json_object_set_new(r, "execution", exec);
}

/* Record the plan and run it (level 0) or hold it for approval. */
static void store_and_act(bt_pipeline *p, json_t *r, const char *rid, const char *actor)
{
    char err[BT_ERRLEN];
    json_t *plan = json_object_get(r, "plan");
    json_t *approval = json_object_get(r, "approval");
    int level = (int)json_integer_value(json_object_get(r, "approval_level"));
    char plan_id[33], exec_id[33], sha[65];
    bt_random_id(plan_id);
    bt_random_id(exec_id);
    json_object_set_new(plan, "plan_id", json_string(plan_id));
    json_object_set_new(plan, "request_id", json_string(rid));
    char *canon = bt_plan_canonical(plan, sha);
    json_object_set_new(r, "plan_hash", json_string(sha));
    if (!canon ||
        bt_store_plan_add(p->store, plan_id, rid, canon, sha,
                          json_string_value(json_object_get(plan, "risk")), level, err,
                          sizeof err) != BT_OK ||
        bt_store_execution_add(p->store, exec_id, plan_id, level ? "pending_approval" : "approved",
                               err, sizeof err) != BT_OK) {
        free(canon);
        json_object_set_new(r, "error", json_string("store"));
        set_text(r, "error", bt_asprintf("I could not record the plan, so nothing ran: %s", err));
        return;
    }
    free(canon);
    audit(p, rid, actor, "plan_created",
          json_pack("{s:s, s:s, s:s, s:O, s:i}", "plan_id", plan_id, "plan_hash", sha,
                    "execution_id", exec_id, "risk", json_object_get(plan, "risk"), "level",
                    level));

    if (level > 0) {
        char approval_id[33];
        bt_random_id(approval_id);
        int64_t expires =
            bt_wall_ms() + 1000 * json_integer_value(json_object_get(approval, "expires_s"));
        /* The requirement the dialogue enforces: the policy's answer, who
         * asked, and the hash of exactly the plan that was shown. */
        json_t *req = json_deep_copy(approval);
        json_object_set_new(req, "requester", json_string(actor));
        json_object_set_new(req, "plan_hash", json_string(sha));
        enum bt_err ae = bt_store_approval_add(p->store, approval_id, plan_id, exec_id, level, req,
                                               expires, err, sizeof err);
        json_decref(req);
        if (ae != BT_OK) {
            json_object_set_new(r, "error", json_string("store"));
            set_text(r, "error", bt_asprintf("I could not record the approval: %s", err));
            return;
        }
        audit(p, rid, actor, "approval_requested",
              json_pack("{s:s, s:s, s:i, s:s}", "approval_id", approval_id, "plan_hash", sha,
                        "level", level, "execution_id", exec_id));
        json_object_set_new(r, "approval_id", json_string(approval_id));
        json_object_set_new(
            r, "execution",
            json_pack("{s:s, s:s}", "execution_id", exec_id, "state", "pending_approval"));
        set_text(r, "approval", bt_answer_approval(plan, approval, approval_id));
        return;
    }

    run_plan(p, r, plan, exec_id, actor, -1);
}

json_t *bt_pipeline_handle(bt_pipeline *p, const char *text, const char *user, const char *channel)
{
    char rid[33], err[BT_ERRLEN];
    bt_random_id(rid);
    const char *actor = user ? user : "anonymous";
    /* The request is on record before anything is decided about it. Text
     * that is not valid UTF-8 is stored as a marker: the store keeps text. */
    const char *stored = text && bt_utf8_valid(text, strlen(text)) ? text : "(not valid UTF-8)";
    /* The request, its decision, plan, execution, approval and their audit
     * entries are one unit: one commit instead of a dozen, and never half
     * of them on record. Without a batch each write commits on its own. */
    p->batch_open = bt_store_batch_begin(p->store, err, sizeof err) == BT_OK;
    if (bt_store_request_add(p->store, rid, actor, channel ? channel : "cli", stored, err,
                             sizeof err) != BT_OK) {
        json_t *r =
            json_pack("{s:s, s:s, s:s}", "request_id", rid, "kind", "error", "error", "store");
        json_object_set_new(r, "text",
                            json_string("I could not record the request, so I did "
                                        "nothing with it."));
        bt_log(BT_LOG_ERROR, "pipeline", rid, "store: %s", err);
        if (p->batch_open)
            bt_store_batch_end(p->store, false, err, sizeof err);
        p->batch_open = false;
        return r;
    }
    bt_log(BT_LOG_INFO, "pipeline", rid, "request from %s", actor);
    json_t *r = stages_a_to_d(p, text, user, rid);
    json_t *decision = json_object_get(r, "decision");
    if (decision)
        bt_store_decision_add(p->store, rid, decision, err, sizeof err);
    audit(p, rid, actor, "request",
          json_pack("{s:s, s:s, s:O?, s:O?, s:O?}", "text", stored, "channel",
                    channel ? channel : "cli", "intent", json_object_get(r, "intent"), "confidence",
                    json_object_get(r, "confidence"), "kind", json_object_get(r, "kind")));
    json_object_del(r, "decision");
    const char *kind = json_string_value(json_object_get(r, "kind"));
    if (!kind)
        kind = "error";
    int64_t t = bt_mono_us();
    if (json_is_object(json_object_get(r, "plan")) &&
        (strcmp(kind, "answer") == 0 || strcmp(kind, "approval") == 0)) {
        store_and_act(p, r, rid, actor);
        stage_done(r, "execute", &t);
    } else if (strcmp(kind, "error") == 0 && json_is_object(json_object_get(r, "plan")))
        audit(p, rid, actor, "request_refused",
              json_pack("{s:O}", "reason", json_object_get(r, "text")));
    if (end_batch(p, err, sizeof err) != BT_OK) {
        bt_log(BT_LOG_ERROR, "pipeline", rid, "store: %s", err);
        json_object_set_new(r, "error", json_string("store"));
        set_text(r, "error",
                 bt_asprintf("I could not record the request, so nothing was done: %s", err));
    }
    bt_log(BT_LOG_INFO, "pipeline", rid, "answered: %s",
           json_string_value(json_object_get(r, "kind")));
    return r;
}

/* Words for an approval that still waits: who decided, what is missing. */
static char *waiting_text(const json_t *ap)
{
    bt_buf b = BT_BUF_INIT(8192);
    const char *state = json_string_value(json_object_get(ap, "state"));
    json_t *next = json_object_get(ap, "next_step");
    if (state && strcmp(state, "releasing") == 0 && json_is_integer(next)) {
        bt_buf_printf(&b, "Approved. Step %lld waits to be released by an approver",
                      (long long)json_integer_value(next) + 1);
    } else {
        long long need = json_integer_value(json_object_get(ap, "approvals_required"));
        long long have = 0;
        size_t i;
        json_t *d;
        json_array_foreach(json_object_get(ap, "decisions"), i, d)
        {
            const char *dec = json_string_value(json_object_get(d, "decision"));
            if (dec && strcmp(dec, "approve") == 0 &&
                json_integer_value(json_object_get(d, "step")) < 0)
                have++;
        }
        bt_buf_printf(&b, "Recorded. %lld of %lld approval%s in", have, need, need == 1 ? "" : "s");
    }
    json_t *who = json_object_get(ap, "may_decide");
    if (json_array_size(who)) {
        bt_buf_puts(&b, "; who may decide now: ");
        size_t i;
        json_t *u;
        json_array_foreach(who, i, u)
            bt_buf_printf(&b, "%s%s", i ? ", " : "", json_string_value(u));
    }
    bt_buf_puts(&b, ".");
    return bt_buf_steal(&b);
}

/* True when step `step` of execution exec_id has not started: a release
 * recorded by a process that died before running it. */
static bool step_never_started(bt_pipeline *p, const char *exec_id, int step)
{
    json_t *ex = NULL;
    char err[BT_ERRLEN];
    if (!exec_id || step < 0 || bt_store_execution_get(p->store, exec_id, &ex, err, sizeof err))
        return false;
    json_t *rec = json_array_get(json_object_get(ex, "steps"), (size_t)step);
    const char *state = json_string_value(json_object_get(rec, "state"));
    const char *xs = json_string_value(json_object_get(ex, "state"));
    bool pending =
        state && strcmp(state, "pending") == 0 && xs && strcmp(xs, "pending_approval") == 0;
    json_decref(ex);
    return pending;
}

/* Turn the dialogue's answer into a response, running what it released.
 * step: the step the decision was about (-1: the plan). */
static json_t *act_on_decision(bt_pipeline *p, json_t *d, const char *user, int step)
{
    const char *status = json_string_value(json_object_get(d, "status"));
    const char *reason = json_string_value(json_object_get(d, "reason"));
    json_t *ap = json_object_get(d, "approval");
    json_t *r = json_pack("{s:s?, s:O?}", "status", status, "approval", ap);
    if (!status || strcmp(status, "refused") == 0) {
        json_object_set_new(r, "error", json_string("refused"));
        set_text(r, "error", bt_strdup(reason ? reason : "the decision was refused"));
        return r;
    }
    const char *run = json_string_value(json_object_get(d, "run"));
    if (strcmp(status, "already") == 0) {
        /* A released level-3 step that never ran (its releaser stopped
         * first) runs on the next click; the engine's compare-and-set on
         * the step keeps it from ever running twice. */
        json_t *released = json_object_get(ap, "released_steps");
        bool was_released = false;
        size_t k;
        json_t *v;
        json_array_foreach(released, k, v) was_released =
            was_released || json_integer_value(v) == step;
        if (!(was_released &&
              step_never_started(p, json_string_value(json_object_get(ap, "execution_id")),
                                 step))) {
            set_text(r, "answer", bt_strdup(reason ? reason : "already decided"));
            return r;
        }
        json_object_set_new(d, "run", json_string("step"));
        json_object_set_new(d, "step", json_integer(step));
        run = "step";
    }
    const char *state = json_string_value(json_object_get(ap, "state"));
    if (state && (strcmp(state, "denied") == 0 || strcmp(state, "cancelled") == 0)) {
        /* The plan will never run: its execution ends here, on record, and
         * any asset it was waiting for is let go. */
        const char *exec_id = json_string_value(json_object_get(ap, "execution_id"));
        if (exec_id)
            json_decref(bt_execute_cancel(p->exec, exec_id, user, state));
        set_text(r, "answer",
                 bt_asprintf("%s by %s. Nothing will run.",
                             strcmp(state, "denied") == 0 ? "Denied" : "Cancelled", user));
        return r;
    }
    if (!run || strcmp(run, "none") == 0) {
        set_text(r, "approval", waiting_text(ap));
        return r;
    }
    char err[BT_ERRLEN];
    json_t *stored = NULL;
    const char *plan_id = json_string_value(json_object_get(ap, "plan_id"));
    if (!plan_id || bt_store_plan_get(p->store, plan_id, &stored, err, sizeof err) != BT_OK) {
        json_object_set_new(r, "error", json_string("store"));
        set_text(r, "error",
                 bt_asprintf("I could not load the approved plan, so nothing ran: %s",
                             plan_id ? err : "no plan"));
        return r;
    }
    json_t *plan = json_object_get(stored, "plan");
    const char *exec_id = json_string_value(json_object_get(ap, "execution_id"));
    const char *rid = json_string_value(json_object_get(stored, "request_id"));
    int only = strcmp(run, "step") == 0 ? (int)json_integer_value(json_object_get(d, "step")) : -1;
    (void)rid;
    if (only < 0 && exec_id &&
        bt_store_execution_transition(p->store, exec_id, "pending_approval", "approved", NULL, err,
                                      sizeof err) != BT_OK)
        bt_log(BT_LOG_WARN, "pipeline", rid, "execution %s: %s", exec_id, err);
    run_plan(p, r, plan, exec_id ? exec_id : "", user, only);
    if (only >= 0) {
        /* Level 3: say what ran and what comes next. */
        size_t nsteps = json_array_size(json_object_get(plan, "steps"));
        const char *text = json_string_value(json_object_get(r, "text"));
        char *more = (size_t)only + 1 < nsteps
                         ? bt_asprintf("Step %d of %zu done:\n%s\nStep %d waits to be released by "
                                       "an approver.",
                                       only + 1, nsteps, text ? text : "", only + 2)
                         : bt_asprintf("Step %d of %zu (the last) done:\n%s", only + 1, nsteps,
                                       text ? text : "");
        json_object_set_new(r, "text", json_string(more));
        free(more);
    }
    json_decref(stored);
    return r;
}

json_t *bt_pipeline_decide(bt_pipeline *p, const char *approval_id, const char *user,
                           const char *decision, int step, const char *via, const char *token)
{
    json_t *d = token ? bt_approvals_decide_token(p->approvals, token, user, via)
                      : bt_approvals_decide(p->approvals, approval_id, user, decision, step, via);
    json_t *r = act_on_decision(p, d, user, token ? -1 : step);
    json_decref(d);
    return r;
}

json_t *bt_pipeline_cancel(bt_pipeline *p, const char *approval_id, const char *user,
                           const char *via)
{
    json_t *d = bt_approvals_cancel(p->approvals, approval_id, user, via);
    json_t *r = act_on_decision(p, d, user, -1);
    json_decref(d);
    return r;
}

char *bt_pipeline_decision_token(bt_pipeline *p, const char *approval_id, int step,
                                 const char *decision)
{
    return bt_approvals_token(p->approvals, approval_id, step, decision);
}

const char *bt_pipeline_user_for(const bt_pipeline *p, const char *platform, const char *id)
{
    return bt_policy_user_for(p->policy, platform, id);
}

json_t *bt_pipeline_pending(bt_pipeline *p)
{
    return bt_approvals_list_pending(p->approvals);
}

/* Step output for a card: stdout (or stderr when there is none), at most
 * CARD_OUTPUT_MAX bytes cut at a character boundary. */
#define CARD_OUTPUT_MAX 2000
static json_t *card_output(const json_t *result)
{
    const char *o = json_string_value(json_object_get(result, "stdout"));
    if (!o || !*o)
        o = json_string_value(json_object_get(result, "stderr"));
    if (!o || !*o)
        return json_null();
    size_t n = strlen(o);
    if (n <= CARD_OUTPUT_MAX)
        return json_string(o);
    n = CARD_OUTPUT_MAX;
    while (n > 0 && ((unsigned char)o[n] & 0xC0) == 0x80)
        n--;
    return json_stringn(o, n);
}

static json_t *card_steps(const json_t *plan, const json_t *exec)
{
    json_t *out = json_array();
    const json_t *xsteps = json_object_get(exec, "steps");
    size_t i;
    json_t *ps;
    json_array_foreach(json_object_get(plan, "steps"), i, ps)
    {
        const json_t *xs = NULL;
        size_t k;
        json_t *cand;
        json_array_foreach(xsteps, k, cand)
        {
            if (json_integer_value(json_object_get(cand, "index")) == (json_int_t)i)
                xs = cand;
        }
        const json_t *res = json_object_get(xs, "result");
        const char *state = json_string_value(json_object_get(xs, "state"));
        json_array_append_new(
            out,
            json_pack("{s:I, s:O?, s:O?, s:O?, s:O?, s:s, s:O?, s:o}", "number", (json_int_t)i + 1,
                      "tool", json_object_get(ps, "tool"), "target", json_object_get(ps, "target"),
                      "risk", json_object_get(ps, "risk"), "inputs", json_object_get(ps, "inputs"),
                      "state", state ? state : "pending", "error", json_object_get(res, "error"),
                      "output", card_output(res)));
    }
    return out;
}

/* A 0-based index array as 1-based numbers. */
static json_t *one_based(const json_t *arr)
{
    json_t *out = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        json_array_append_new(out, json_integer(json_integer_value(v) + 1));
    }
    return out;
}

static bool execution_ended(const char *state)
{
    static const char *const ended[] = {"completed", "failed",      "cancelled",
                                        "timed_out", "interrupted", NULL};
    for (size_t i = 0; state && ended[i]; i++)
        if (strcmp(state, ended[i]) == 0)
            return true;
    return false;
}

json_t *bt_pipeline_card(bt_pipeline *p, const char *approval_id)
{
    json_t *ap = approval_id ? bt_approvals_get(p->approvals, approval_id) : NULL;
    if (!ap)
        return NULL;
    char err[256];
    json_t *stored = NULL, *exec = NULL, *req = NULL;
    const char *plan_id = json_string_value(json_object_get(ap, "plan_id"));
    const char *exec_id = json_string_value(json_object_get(ap, "execution_id"));
    if (!plan_id || bt_store_plan_get(p->store, plan_id, &stored, err, sizeof err) != BT_OK) {
        bt_log(BT_LOG_WARN, "pipeline", NULL, "card %s: %s", approval_id, err);
        json_decref(ap);
        return NULL;
    }
    const json_t *plan = json_object_get(stored, "plan");
    if (exec_id)
        bt_store_execution_get(p->store, exec_id, &exec, err, sizeof err);
    const char *rid = json_string_value(json_object_get(stored, "request_id"));
    if (rid)
        bt_store_request_get(p->store, rid, &req, err, sizeof err);

    json_t *targets = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(plan, "targets"), i, t)
    {
        json_array_append(targets, json_object_get(t, "name"));
    }
    json_t *approved_by = json_array(), *decisions = json_array();
    json_array_foreach(json_object_get(ap, "decisions"), i, t)
    {
        const char *d = json_string_value(json_object_get(t, "decision"));
        json_int_t step = json_integer_value(json_object_get(t, "step"));
        if (d && strcmp(d, "approve") == 0 && step < 0)
            json_array_append(approved_by, json_object_get(t, "user"));
        json_array_append_new(decisions, json_pack("{s:O?, s:O?, s:o, s:O?, s:O?}", "user",
                                                   json_object_get(t, "user"), "decision",
                                                   json_object_get(t, "decision"), "step",
                                                   step < 0 ? json_null() : json_integer(step + 1),
                                                   "via", json_object_get(t, "via"), "ts_ms",
                                                   json_object_get(t, "ts_ms")));
    }
    int level = (int)json_integer_value(json_object_get(ap, "level"));
    const json_t *next = json_object_get(ap, "next_step");
    const char *xstate = json_string_value(json_object_get(exec, "state"));
    json_t *execution = json_null();
    if (exec) {
        const json_t *pr = json_object_get(exec, "progress");
        json_int_t total = json_integer_value(json_object_get(pr, "total"));
        if (total <= 0) /* not started yet: the plan says how many */
            total = (json_int_t)json_array_size(json_object_get(plan, "steps"));
        execution = json_pack("{s:s?, s:I, s:I}", "state", xstate, "done",
                              json_integer_value(json_object_get(pr, "done")), "total", total);
        /* The stored steps do not repeat their targets; the answer names them. */
        size_t k;
        json_t *xs;
        json_array_foreach(json_object_get(exec, "steps"), k, xs)
        {
            const json_t *ps =
                json_array_get(json_object_get(plan, "steps"),
                               (size_t)json_integer_value(json_object_get(xs, "index")));
            if (!json_object_get(xs, "target") && json_object_get(ps, "target"))
                json_object_set(xs, "target", json_object_get(ps, "target"));
        }
    }
    json_t *result_text = json_null();
    if (exec && execution_ended(xstate)) {
        char *txt = bt_answer_results(plan, exec);
        result_text = json_string(txt && *txt ? txt : xstate);
        free(txt);
    }
    int64_t updated = json_integer_value(json_object_get(exec, "updated_ms"));
    json_t *dec;
    json_array_foreach(json_object_get(ap, "decisions"), i, dec)
    {
        int64_t ts = json_integer_value(json_object_get(dec, "ts_ms"));
        if (ts > updated)
            updated = ts;
    }
    if (updated == 0)
        updated = json_integer_value(json_object_get(ap, "created_ms"));

    json_t *card = json_pack(
        "{s:s, s:O?, s:O?, s:O?, s:O?, s:O?, s:O?, s:i, s:s?, s:o, s:O?, s:O?, s:I, s:O?, s:O?, "
        "s:o, s:o, s:O?, s:o, s:o, s:o, s:o, s:o}",
        "approval_id", approval_id, "request_id", json_object_get(stored, "request_id"),
        "execution_id", json_object_get(ap, "execution_id"), "requester",
        json_object_get(ap, "requester"), "request", json_object_get(req, "text"), "summary",
        json_object_get(plan, "summary"), "risk", json_object_get(plan, "risk"), "level", level,
        "level_name", bt_answer_level_name(level), "targets", targets, "created_ms",
        json_object_get(ap, "created_ms"), "expires_ms", json_object_get(ap, "expires_ms"),
        "updated_ms", (json_int_t)updated, "state", json_object_get(ap, "state"),
        "approvals_required", json_object_get(ap, "approvals_required"), "approved_by", approved_by,
        "decisions", decisions, "may_decide", json_object_get(ap, "may_decide"), "next_step",
        json_is_integer(next) ? json_integer(json_integer_value(next) + 1) : json_null(),
        "released_steps", one_based(json_object_get(ap, "released_steps")), "steps",
        card_steps(plan, exec), "execution", execution, "result_text", result_text);
    if (!card)
        bt_log(BT_LOG_ERROR, "pipeline", NULL, "card %s could not be built", approval_id);
    json_decref(ap);
    json_decref(stored);
    json_decref(exec);
    json_decref(req);
    return card;
}

static bool in_list(const json_t *arr, const char *user)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        const char *s = json_string_value(v);
        if (s && strcmp(s, user) == 0)
            return true;
    }
    return false;
}

bool bt_pipeline_card_for(json_t *card, const char *user, const char *role)
{
    if (!card || !user)
        return false;
    const char *requester = json_string_value(json_object_get(card, "requester"));
    const char *state = json_string_value(json_object_get(card, "state"));
    bool is_requester = requester && strcmp(requester, user) == 0;
    bool deciding = in_list(json_object_get(card, "may_decide"), user);
    bool decided = false;
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(card, "decisions"), i, d)
    {
        const char *who = json_string_value(json_object_get(d, "user"));
        decided = decided || (who && strcmp(who, user) == 0);
    }
    /* Approvers and admins oversee every approval; others see their own
     * requests and what they are asked to decide. */
    bool overseer = role && (strcmp(role, "admin") == 0 || strcmp(role, "approver") == 0);
    if (!is_requester && !deciding && !decided && !overseer)
        return false;
    bool pending = state && strcmp(state, "pending") == 0;
    bool releasing = state && strcmp(state, "releasing") == 0;
    /* The next step can be released once the one before it has ended. */
    json_t *st;
    json_array_foreach(json_object_get(card, "steps"), i, st)
    {
        const char *ss = json_string_value(json_object_get(st, "state"));
        if (ss && strcmp(ss, "running") == 0)
            releasing = false;
    }
    json_object_set_new(card, "you",
                        json_pack("{s:b, s:b, s:b}", "may_decide", deciding && pending,
                                  "may_release", deciding && releasing, "may_cancel",
                                  is_requester && pending));
    return true;
}

/* Reminders, escalations and expiries reach people as notifications, shown
 * on their next command (or pushed by a front-end). */
static void notify_event(bt_pipeline *p, const json_t *ev, const char *type, const char *aid)
{
    long long level = json_integer_value(json_object_get(ev, "level"));
    char *text;
    if (strcmp(type, "reminder") == 0)
        text = bt_asprintf("Reminder: approval %s (level %lld) is waiting for your decision: "
                           "baton approve %s, or baton deny %s.",
                           aid, level, aid, aid);
    else if (strcmp(type, "escalation") == 0)
        text = bt_asprintf("Escalated to %s: approval %s (level %lld) has waited too long for a "
                           "decision: baton approve %s, or baton deny %s.",
                           json_string_value(json_object_get(ev, "group"))
                               ? json_string_value(json_object_get(ev, "group"))
                               : "you",
                           aid, level, aid, aid);
    else if (strcmp(type, "expired") == 0)
        text = bt_asprintf("Approval %s (level %lld) expired before enough people decided; "
                           "nothing ran. Ask again to start over.",
                           aid, level);
    else
        return;
    char err[BT_ERRLEN];
    size_t i;
    json_t *u;
    json_array_foreach(json_object_get(ev, "notify"), i, u)
    {
        const char *user = json_string_value(u);
        if (user && bt_store_notify_user(p->store, user, NULL, text, err, sizeof err) != BT_OK)
            bt_log(BT_LOG_WARN, "pipeline", NULL, "notify %s: %s", user, err);
    }
    free(text);
}

json_t *bt_pipeline_sweep(bt_pipeline *p, int64_t now_ms)
{
    json_t *events = bt_approvals_sweep(p->approvals, now_ms);
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev)
    {
        const char *type = json_string_value(json_object_get(ev, "type"));
        const char *aid = json_string_value(json_object_get(ev, "approval_id"));
        if (!type || !aid)
            continue;
        notify_event(p, ev, type, aid);
        if (strcmp(type, "expired") != 0)
            continue;
        /* An expired approval's plan never runs: end its execution. */
        json_t *ap =
            bt_approvals_get(p->approvals, json_string_value(json_object_get(ev, "approval_id")));
        const char *exec_id = json_string_value(json_object_get(ap, "execution_id"));
        if (exec_id)
            json_decref(bt_execute_cancel(p->exec, exec_id, "baton", "approval expired"));
        json_decref(ap);
    }
    return events;
}

json_t *bt_pipeline_notices(bt_pipeline *p, const char *user)
{
    json_t *list = NULL;
    char err[BT_ERRLEN];
    if (!user || bt_store_notifications(p->store, user, true, 100, &list, err, sizeof err) != BT_OK)
        return json_array();
    size_t i;
    json_t *n;
    json_array_foreach(list, i, n)
    {
        bt_store_notification_delivered(
            p->store, json_integer_value(json_object_get(n, "notification_id")), err, sizeof err);
    }
    return list;
}

int bt_pipeline_worker_once(bt_pipeline *p)
{
    json_t *out = NULL;
    bool did = bt_execute_worker_once(p->exec, &out);
    if (out)
        bt_log(BT_LOG_INFO, "worker", NULL, "execution %s: %s",
               json_string_value(json_object_get(out, "execution_id")),
               json_string_value(json_object_get(out, "state")));
    json_decref(out);
    return did ? 1 : 0;
}

int bt_pipeline_recover(bt_store *st)
{
    char err[BT_ERRLEN];
    json_t *rec = bt_execute_recover(st, "baton", err, sizeof err);
    if (!rec) {
        bt_log(BT_LOG_ERROR, "pipeline", NULL, "recovery: %s", err);
        return -1;
    }
    int n = (int)json_array_size(rec);
    json_decref(rec);
    return n;
}
