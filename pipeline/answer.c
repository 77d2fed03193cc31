/* answer.c - see answer.h. */
#include "pipeline/answer.h"

#include <stdlib.h>
#include <string.h>

#include "bot/util.h"

#define ANSWER_MAX (1024u * 1024u)
#define TABLE_MAX_ROWS 500

static const char *const table_columns[] = {"name",        "ip",     "os",         "role",
                                            "environment", "status", "datacenter", NULL};

const char *bt_answer_level_name(int level)
{
    switch (level) {
    case 0:
        return "none";
    case 1:
        return "confirm";
    case 2:
        return "plan review";
    case 3:
        return "step by step";
    }
    return "unknown";
}

static const char *str(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

static void render_inputs(bt_buf *b, const json_t *inputs)
{
    const char *k;
    json_t *v;
    bool first = true;
    json_object_foreach((json_t *)inputs, k, v)
    {
        if (strcmp(k, "host") == 0)
            continue;
        bt_buf_printf(b, "%s%s=%s", first ? ": " : ", ", k, json_string_value(v));
        first = false;
    }
}

/* Aligned text table of assets. */
static void render_assets(bt_buf *b, const json_t *assets)
{
    size_t widths[8] = {0};
    size_t ncol = 0;
    while (table_columns[ncol])
        ncol++;
    for (size_t c = 0; c < ncol; c++)
        widths[c] = strlen(table_columns[c]);
    size_t i;
    json_t *a;
    json_array_foreach(assets, i, a)
    {
        if (i >= TABLE_MAX_ROWS)
            break;
        for (size_t c = 0; c < ncol; c++) {
            size_t w = strlen(str(a, table_columns[c]));
            if (w > widths[c])
                widths[c] = w;
        }
    }
    for (size_t c = 0; c < ncol; c++) {
        char *up = bt_strdup(table_columns[c]);
        for (char *p = up; *p; p++)
            if (*p >= 'a' && *p <= 'z')
                *p = (char)(*p - 'a' + 'A');
        if (c + 1 < ncol)
            bt_buf_printf(b, "%-*s  ", (int)widths[c], up);
        else
            bt_buf_printf(b, "%s\n", up);
        free(up);
    }
    json_array_foreach(assets, i, a)
    {
        if (i >= TABLE_MAX_ROWS) {
            bt_buf_printf(b, "... and %zu more\n", json_array_size(assets) - TABLE_MAX_ROWS);
            break;
        }
        for (size_t c = 0; c < ncol; c++) {
            if (c + 1 < ncol)
                bt_buf_printf(b, "%-*s  ", (int)widths[c], str(a, table_columns[c]));
            else
                bt_buf_printf(b, "%s\n", str(a, table_columns[c]));
        }
    }
}

static void render_asset(bt_buf *b, const json_t *a)
{
    static const char *const fields[] = {
        "name",   "hostname",   "ip",  "os",     "os_version", "role", "environment",
        "status", "datacenter", "cpu", "ram_gb", "connection", NULL};
    for (size_t f = 0; fields[f]; f++) {
        json_t *v = json_object_get(a, fields[f]);
        if (json_is_string(v))
            bt_buf_printf(b, "  %-12s %s\n", fields[f], json_string_value(v));
        else if (json_is_integer(v))
            bt_buf_printf(b, "  %-12s %lld\n", fields[f], (long long)json_integer_value(v));
    }
    static const char *const lists[] = {"tags", "services", NULL};
    for (size_t f = 0; lists[f]; f++) {
        json_t *v = json_object_get(a, lists[f]);
        if (!json_is_array(v) || !json_array_size(v))
            continue;
        bt_buf_printf(b, "  %-12s ", lists[f]);
        size_t i;
        json_t *t;
        json_array_foreach(v, i, t) bt_buf_printf(b, "%s%s", i ? ", " : "", json_string_value(t));
        bt_buf_puts(b, "\n");
    }
}

static void render_step(bt_buf *b, const json_t *plan_step, const json_t *rec, bool only)
{
    const char *state = str(rec, "state");
    const json_t *res = json_object_get(rec, "result");
    const char *tool = str(rec, "tool");
    const char *target = str(rec, "target");
    const char *err = json_string_value(json_object_get(res, "error"));
    json_t *data = json_object_get(res, "data");
    const char *text = json_string_value(json_object_get(res, "text"));

    if (strcmp(state, "skipped") == 0) {
        bt_buf_printf(b, "- %s%s%s: skipped (an earlier step did not complete)\n", tool,
                      *target ? " on " : "", target);
        return;
    }
    if (strcmp(state, "completed") != 0) {
        bt_buf_printf(b, "- %s%s%s %s: %s\n", tool, *target ? " on " : "", target,
                      strcmp(state, "timed_out") == 0 ? "timed out" : "failed",
                      err ? err : "no reason given");
        /* The error often quotes stderr already; show it only when not. */
        const char *se = json_string_value(json_object_get(res, "stderr"));
        size_t first = se ? strcspn(se, "\n") : 0;
        bool quoted = se && err && first > 0 && memmem(err, strlen(err), se, first) != NULL;
        if (se && *se && !quoted)
            bt_buf_printf(b, "%s%s", se, se[strlen(se) - 1] == '\n' ? "" : "\n");
        return;
    }
    if (json_is_array(data) && json_array_size(data) > 0 &&
        json_is_object(json_array_get(data, 0)) && json_object_get(json_array_get(data, 0), "ip")) {
        bt_buf_printf(b, "%zu asset%s:\n", json_array_size(data),
                      json_array_size(data) == 1 ? "" : "s");
        render_assets(b, data);
        return;
    }
    if (json_is_array(data) && json_array_size(data) == 0) {
        bt_buf_puts(b, "No assets match.\n");
        return;
    }
    if (json_is_object(data) && json_object_get(data, "hostname") && json_object_get(data, "ip")) {
        bt_buf_printf(b, "%s:\n", str(data, "name"));
        render_asset(b, data);
        return;
    }
    if (text) {
        bt_buf_printf(b, "%s%s", text, text[0] && text[strlen(text) - 1] == '\n' ? "" : "\n");
        return;
    }
    json_t *out = json_object_get(res, "stdout");
    if (json_is_string(out)) {
        if (!only || *target)
            bt_buf_printf(b, "%s on %s (exit %lld, %lld ms):\n", tool, *target ? target : "-",
                          (long long)json_integer_value(json_object_get(res, "exit_code")),
                          (long long)json_integer_value(json_object_get(res, "duration_ms")));
        const char *s = json_string_value(out);
        bt_buf_printf(b, "%s%s", s, *s && s[strlen(s) - 1] == '\n' ? "" : "\n");
        if (json_is_true(json_object_get(res, "truncated")))
            bt_buf_puts(b, "(output truncated)\n");
        return;
    }
    (void)plan_step;
    char *dump = json_dumps(data ? data : res, JSON_INDENT(2) | JSON_SORT_KEYS);
    bt_buf_printf(b, "%s\n", dump ? dump : "(no output)");
    free(dump);
}

char *bt_answer_results(const json_t *plan, const json_t *execution)
{
    bt_buf b = BT_BUF_INIT(ANSWER_MAX);
    const json_t *steps = json_object_get(execution, "steps");
    size_t i;
    json_t *rec;
    bool only = json_array_size(steps) == 1;
    json_array_foreach(steps, i, rec)
    {
        if (i && b.len && b.data[b.len - 1] == '\n')
            bt_buf_puts(&b, only ? "" : "\n");
        render_step(&b, json_array_get(json_object_get(plan, "steps"), i), rec, only);
    }
    json_t *comp = json_object_get(execution, "compensated");
    if (json_array_size(comp)) {
        bt_buf_puts(&b, "\nA step failed, so what was done before it was undone:\n");
        json_array_foreach(comp, i, rec)
        {
            bt_buf_printf(&b, "- %s (undoing step %lld): %s\n", str(rec, "tool"),
                          (long long)json_integer_value(json_object_get(rec, "undoes")) + 1,
                          str(rec, "state"));
        }
    }
    /* Drop the final newline: the caller decides how the text ends. */
    while (b.len && b.data[b.len - 1] == '\n')
        b.data[--b.len] = '\0';
    return bt_buf_steal(&b);
}

json_t *bt_answer_table(const json_t *execution)
{
    size_t i;
    json_t *rec;
    json_array_foreach(json_object_get(execution, "steps"), i, rec)
    {
        json_t *data = json_object_get(json_object_get(rec, "result"), "data");
        if (!json_is_array(data) || !json_is_object(json_array_get(data, 0)))
            continue;
        json_t *cols = json_array();
        for (size_t c = 0; table_columns[c]; c++)
            json_array_append_new(cols, json_string(table_columns[c]));
        json_t *rows = json_array();
        size_t k;
        json_t *a;
        json_array_foreach(data, k, a)
        {
            if (k >= TABLE_MAX_ROWS)
                break;
            json_t *row = json_array();
            for (size_t c = 0; table_columns[c]; c++)
                json_array_append_new(row, json_string(str(a, table_columns[c])));
            json_array_append_new(rows, row);
        }
        return json_pack("{s:o, s:o}", "columns", cols, "rows", rows);
    }
    return NULL;
}

char *bt_answer_approval(const json_t *plan, const json_t *approval, const char *approval_id)
{
    bt_buf b = BT_BUF_INIT(ANSWER_MAX);
    int level = (int)json_integer_value(json_object_get(approval, "level"));
    bt_buf_printf(&b, "%s\n", str(plan, "summary"));
    bt_buf_printf(&b, "Risk: %s. Approval: level %d (%s).\n", str(plan, "risk"), level,
                  bt_answer_level_name(level));
    bt_buf_puts(&b, "Steps:\n");
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(plan, "steps"), i, s)
    {
        bt_buf_printf(&b, "  %zu. %s", i + 1, str(s, "tool"));
        if (*str(s, "target"))
            bt_buf_printf(&b, " on %s", str(s, "target"));
        render_inputs(&b, json_object_get(s, "inputs"));
        bt_buf_printf(&b, " [%s%s]", str(s, "risk"),
                      json_is_true(json_object_get(s, "reversible")) ? ", reversible" : "");
        json_t *deps = json_object_get(s, "depends_on");
        if (json_array_size(deps)) {
            bt_buf_puts(&b, " after ");
            size_t k;
            json_t *d;
            json_array_foreach(deps, k, d)
                bt_buf_printf(&b, "%s%lld", k ? ", " : "", (long long)json_integer_value(d) + 1);
        }
        bt_buf_puts(&b, "\n");
    }
    long long m = json_integer_value(json_object_get(approval, "approvals_required"));
    bt_buf_puts(&b, "Who may approve: ");
    if (json_is_true(json_object_get(approval, "requester_may_approve")))
        bt_buf_puts(&b, "you (the requester) or ");
    bt_buf_puts(&b, "a member of ");
    json_array_foreach(json_object_get(approval, "approver_groups"), i, s)
        bt_buf_printf(&b, "%s%s", i ? ", " : "", json_string_value(s));
    bt_buf_printf(&b, "; %lld approval%s needed", m, m == 1 ? "" : "s");
    if (level >= 2)
        bt_buf_puts(&b, ", never the requester");
    if (level == 3)
        bt_buf_puts(&b, "; then each step is released one at a time");
    bt_buf_puts(&b, ".\n");
    long long exp = json_integer_value(json_object_get(approval, "expires_s"));
    if (exp)
        bt_buf_printf(&b, "Expires in %lld minute%s.", exp / 60, exp / 60 == 1 ? "" : "s");
    if (approval_id)
        bt_buf_printf(&b, " Approval id: %s", approval_id);
    json_t *reasons = json_object_get(approval, "reasons");
    if (json_array_size(reasons)) {
        bt_buf_puts(&b, "\nWhy: ");
        json_array_foreach(reasons, i, s)
            bt_buf_printf(&b, "%s%s", i ? "; " : "", json_string_value(s));
    }
    return bt_buf_steal(&b);
}

char *bt_answer_unknown(const json_t *decision)
{
    bt_buf b = BT_BUF_INIT(ANSWER_MAX);
    bt_buf_puts(&b, "Sorry, I can't help with that. I run operations tasks on the assets I "
                    "know: inventory questions, service status, disk, memory and load, logs, "
                    "connectivity, and changes such as restarts or deployments (with approval).");
    json_t *sug = json_object_get(decision, "suggestions");
    if (json_array_size(sug)) {
        bt_buf_puts(&b, "\nYou could try:");
        size_t i;
        json_t *s;
        json_array_foreach(sug, i, s) bt_buf_printf(&b, "\n  \"%s\"", json_string_value(s));
    }
    bt_buf_puts(&b, "\nSay \"what can you do\" for the full list.");
    return bt_buf_steal(&b);
}

char *bt_answer_help(const json_t *intent)
{
    bt_buf b = BT_BUF_INIT(ANSWER_MAX);
    const char *help = json_string_value(json_object_get(intent, "help"));
    const char *desc = json_string_value(json_object_get(intent, "description"));
    if (help)
        bt_buf_printf(&b, "%s", help);
    else if (desc)
        bt_buf_printf(&b, "%s.", desc);
    while (b.len && b.data[b.len - 1] == '\n')
        b.data[--b.len] = '\0';
    json_t *ex = json_object_get(intent, "examples");
    if (json_array_size(ex)) {
        bt_buf_puts(&b, "\nFor example:");
        size_t i;
        json_t *s;
        json_array_foreach(ex, i, s)
        {
            if (i == 3)
                break;
            bt_buf_printf(&b, "\n  \"%s\"", json_string_value(s));
        }
    }
    return bt_buf_steal(&b);
}

char *bt_answer_capabilities(const json_t *intents)
{
    static const char *const categories[] = {"asset_management", "monitoring",    "troubleshooting",
                                             "automation",       "configuration", NULL};
    static const char *const titles[] = {"Inventory", "Monitoring", "Troubleshooting",
                                         "Automation (needs approval)",
                                         "Configuration (needs approval)"};
    bt_buf b = BT_BUF_INIT(ANSWER_MAX);
    bt_buf_puts(&b, "Here is what I can do. Ask in plain words, for example:");
    for (size_t c = 0; categories[c]; c++) {
        bt_buf_printf(&b, "\n%s:", titles[c]);
        size_t shown = 0, i;
        json_t *in;
        json_array_foreach(intents, i, in)
        {
            if (strcmp(str(in, "category"), categories[c]) != 0)
                continue;
            const char *ex = json_string_value(json_array_get(json_object_get(in, "examples"), 0));
            if (ex && shown < 6) {
                bt_buf_printf(&b, "\n  \"%s\"", ex);
                shown++;
            }
        }
    }
    bt_buf_puts(&b, "\nAsk \"how do I ...\" about any of these to learn more.");
    return bt_buf_steal(&b);
}
