/*
 * http_automation.c - `type: http, api: automation`: steps run by an
 * OpsConductor-style automation service.
 *
 * One operation, execute_plan: the step becomes a one-step plan,
 *   POST {base}/execute-plan
 *   {"execution_id": "<fresh 32 hex>", "plan": {"steps": [{"tool": T,
 *    "inputs": {...}}]}, "tenant_id": ..., "actor_id": ...}
 * answered by
 *   {"execution_id", "status", "step_results": [{"tool", "status",
 *    "exit_code", "stdout", "stderr", "duration_seconds"}], "error_message"}
 * T is the tool's `remote_tool:`, else the tool's own name.
 *
 * The result has the local runner's shape (command, exit_code, stdout,
 * stderr, truncated, timed_out, duration_ms) plus status and execution_id,
 * so answers and the execution record read the same whichever runs a step.
 *
 * Running twice: a plan may change things, so the request is never retried
 * once it may have reached the service (http.c retries it only when the
 * connection could not be made). Every call sends a fresh execution_id, the
 * same one for each of those connection retries, so a service that dedupes
 * by it sees one plan. When the outcome is unknown (no answer, a broken
 * connection) the message gives the execution_id so an operator can look it
 * up before trying again.
 *
 * Threads: the state is read-only after creation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "connectors/connectors.h"
#include "connectors/connectors_int.h"

#define AUTOMATION_TIMEOUT_MAX_S 3600
#define AUTOMATION_ID_MAX 128

struct automation {
    char *name;
    char *tenant_id, *actor_id; /* NULL when not configured */
    struct bt_connectors__http *http;
};

static bool id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > AUTOMATION_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x21 || s[i] > 0x7e)
            return false;
    return true;
}

/* A remote tool's name: what the service will look up, kept plain. */
static bool remote_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 128)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || !strchr("_.:/-", c)))
            return false;
    }
    return true;
}

static void automation_free(void *state)
{
    struct automation *a = state;
    if (!a)
        return;
    bt_connectors__http_free(a->http);
    free(a->tenant_id);
    free(a->actor_id);
    free(a->name);
    free(a);
}

static void *automation_new(const struct bt_connectors__where *w, const char *name,
                            const char *store_location, bt_diag *d)
{
    (void)store_location;
    static const char *const extra[] = {"api", "tenant_id", "actor_id", NULL};
    bool ok = true;
    static const char *const ids[] = {"tenant_id", "actor_id"};
    char *values[2] = {NULL, NULL};
    for (size_t i = 0; i < 2; i++) {
        json_t *v = json_object_get(w->conf, ids[i]);
        if (!v)
            continue;
        if (!json_is_string(v) || !id_ok(json_string_value(v))) {
            bt_connectors__diag(d, w->doc, w->conf, w->prefix, ids[i],
                                "must be a string of 1-%d printable characters without spaces",
                                AUTOMATION_ID_MAX);
            ok = false;
            continue;
        }
        values[i] = bt_strdup(json_string_value(v));
    }
    struct bt_connectors__http *h = bt_connectors__http_new(
        w, name, "automation service", BT_CONNECTORS__HTTP_BEARER, false, extra, d);
    if (!h || !ok) {
        bt_connectors__http_free(h);
        free(values[0]);
        free(values[1]);
        return NULL;
    }
    struct automation *a = bt_calloc(1, sizeof *a);
    a->name = bt_strdup(name);
    a->tenant_id = values[0];
    a->actor_id = values[1];
    a->http = h;
    return a;
}

static const char *remote_tool(const json_t *tool)
{
    const char *r = json_string_value(json_object_get(tool, "remote_tool"));
    return r ? r : bt_connectors__tool_name(tool);
}

static bool automation_check_tool(void *state, const bt_yaml_doc *doc, const json_t *tool,
                                  bt_diag *d)
{
    struct automation *a = state;
    bool ok = true;
    const char *op = json_string_value(json_object_get(tool, "operation"));
    if (!op || strcmp(op, "execute_plan") != 0) {
        bt_connectors__tool_diag(d, doc, tool, "operation",
                                 "unknown operation '%s' for connector '%s' (type http with api: "
                                 "automation knows: execute_plan)",
                                 op ? op : "", a->name);
        ok = false;
    }
    json_t *rt = json_object_get(tool, "remote_tool");
    if (rt && (!json_is_string(rt) || !remote_name_ok(json_string_value(rt)))) {
        bt_connectors__tool_diag(d, doc, tool, "remote_tool",
                                 "must be a tool name of the automation service: 1-128 letters, "
                                 "digits and _ . : / - (starting with a letter or digit)");
        ok = false;
    } else if (!rt && !remote_name_ok(bt_connectors__tool_name(tool))) {
        bt_connectors__tool_diag(d, doc, tool, "remote_tool",
                                 "required, missing: the tool's own name cannot be sent as the "
                                 "remote tool's name");
        ok = false;
    }
    return ok;
}

static bool done_status(const char *s)
{
    return s && (strcasecmp(s, "completed") == 0 || strcasecmp(s, "success") == 0 ||
                 strcasecmp(s, "succeeded") == 0);
}

/* A service's text for a message: printable ASCII, first line, capped. */
static void first_line(const char *s, char *out, size_t outlen)
{
    size_t o = 0;
    for (; s && *s && *s != '\n' && o + 1 < outlen && o < 200; s++)
        out[o++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
    out[o] = '\0';
}

static enum bt_err automation_invoke(void *state, const json_t *tool, const json_t *inputs,
                                     const json_t *target, json_t **result, char *err,
                                     size_t errlen)
{
    (void)target; /* the remote tool finds its target in the inputs */
    struct automation *a = state;
    const char *op = json_string_value(json_object_get(tool, "operation"));
    if (!op || strcmp(op, "execute_plan") != 0) {
        bt_fmt(err, errlen, "connector '%s' has no operation '%s' (it knows: execute_plan)",
               a->name, op ? op : "");
        return BT_EINVAL;
    }
    const char *rtool = remote_tool(tool);
    char id[33];
    bt_random_id(id);
    json_t *in = json_is_object(inputs) ? json_deep_copy(inputs) : json_object();
    json_t *body = json_pack("{s:s, s:{s:[{s:s, s:o}]}}", "execution_id", id, "plan", "steps",
                             "tool", rtool, "inputs", in);
    if (a->tenant_id)
        json_object_set_new(body, "tenant_id", json_string(a->tenant_id));
    if (a->actor_id)
        json_object_set_new(body, "actor_id", json_string(a->actor_id));

    /* A plan runs as long as its steps: the tool's timeout_s bounds the
     * request, else the connector's timeout_ms. */
    long timeout_ms = 0;
    json_t *t = json_object_get(tool, "timeout_s");
    if (json_is_integer(t) && json_integer_value(t) > 0)
        timeout_ms = 1000L * (long)(json_integer_value(t) > AUTOMATION_TIMEOUT_MAX_S
                                        ? AUTOMATION_TIMEOUT_MAX_S
                                        : json_integer_value(t));
    struct bt_connectors__http_call call = {"POST", "/execute-plan", body, false, timeout_ms, 0};
    struct bt_connectors__http_reply r;
    char herr[BT_ERRLEN];
    herr[0] = '\0';
    enum bt_err e = bt_connectors__http_request(a->http, &call, &r, herr, sizeof herr);
    json_decref(body);
    const char *label = bt_connectors__http_label(a->http);
    if (e != BT_OK) {
        if (e == BT_ENOENT) {
            bt_fmt(err, errlen, "%s has no /execute-plan (404 Not Found); check base_url", label);
            e = BT_ECONNECTOR;
        } else if (r.sent) {
            bt_fmt(err, errlen, "%s (execution ID %s)", herr, id);
        } else {
            bt_fmt(err, errlen, "%s", herr);
        }
        bt_connectors__http_reply_free(&r);
        return e;
    }

    const char *status = json_string_value(json_object_get(r.body, "status"));
    const char *rid = json_string_value(json_object_get(r.body, "execution_id"));
    json_t *steps = json_object_get(r.body, "step_results");
    json_t *sr = json_array_get(steps, 0);
    if (!json_is_object(r.body) || !status || (steps && !json_is_array(steps)) ||
        (json_array_size(steps) && !json_is_object(sr))) {
        bt_fmt(err, errlen,
               "%s answered in an unexpected shape (no status or step_results) (execution ID %s)",
               label, id);
        bt_connectors__http_reply_free(&r);
        return BT_ECONNECTOR;
    }
    const char *step_status = json_string_value(json_object_get(sr, "status"));
    json_t *code = json_object_get(sr, "exit_code");
    json_t *secs = json_object_get(sr, "duration_seconds");
    const char *out = json_string_value(json_object_get(sr, "stdout"));
    const char *errs = json_string_value(json_object_get(sr, "stderr"));
    double seconds = json_is_number(secs) ? json_number_value(secs) : 0;
    if (seconds < 0 || seconds > 1e7)
        seconds = 0;
    bool timed_out = (step_status && strcasecmp(step_status, "timeout") == 0) ||
                     strcasecmp(status, "timeout") == 0;

    json_t *res = json_object();
    json_object_set_new(res, "command", json_pack("[s]", rtool));
    json_object_set_new(res, "exit_code",
                        json_integer(json_is_integer(code) ? json_integer_value(code)
                                     : done_status(status) && (!sr || done_status(step_status))
                                         ? 0
                                         : -1));
    json_object_set_new(res, "stdout", json_string(out ? out : ""));
    json_object_set_new(res, "stderr", json_string(errs ? errs : ""));
    json_object_set_new(res, "truncated", json_false());
    json_object_set_new(res, "timed_out", json_boolean(timed_out));
    json_object_set_new(res, "duration_ms", json_integer((json_int_t)(seconds * 1000 + 0.5)));
    json_object_set_new(res, "status", json_string(status));
    json_object_set_new(res, "execution_id", json_string(rid ? rid : id));

    e = BT_OK;
    if (!done_status(status) || (sr && !done_status(step_status))) {
        char why[256];
        first_line(json_string_value(json_object_get(r.body, "error_message")), why, sizeof why);
        if (!why[0])
            first_line(errs, why, sizeof why);
        char codes[48] = "";
        if (json_is_integer(code))
            bt_fmt(codes, sizeof codes, ", exit code %" JSON_INTEGER_FORMAT,
                   json_integer_value(code));
        bt_fmt(err, errlen, "%s: %s %s (status %s%s)%s%s (execution ID %s)", label, rtool,
               timed_out ? "timed out" : "failed", step_status ? step_status : status, codes,
               why[0] ? ": " : "", why, rid ? rid : id);
        e = BT_ECONNECTOR;
    }
    bt_connectors__http_reply_free(&r);
    *result = res;
    return e;
}

const struct bt_connectors__ops bt_connectors__http_automation_ops = {
    "http", automation_new, automation_check_tool, automation_invoke, automation_free,
};
