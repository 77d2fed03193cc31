/*
 * slack.c - Slack over Socket Mode: no public URL needed.
 *
 * Connection (loop thread). A worker calls apps.connections.open with the
 * app-level token (and auth.test once, for the bot's own user id); the loop
 * connects to the one-time wss:// URL it returns. Slack says `hello`, then
 * sends envelopes. Each envelope is handed to the workers first and
 * acknowledged ({"envelope_id"}) as soon as it is queued, well inside
 * Slack's 3 s; when the queue is full it is not acknowledged, so Slack
 * delivers it again rather than baton losing it. On `disconnect`
 * (refresh_requested, warning) a new connection is opened first and the old
 * one retired once the new one has said hello, so no event falls between
 * them; a dropped connection is reopened with backoff (1 s doubling to 30 s,
 * with jitter).
 *
 * Events (worker). Every event is claimed in the store by its event_id (a
 * click by its trigger_id) before anything happens, so a redelivery, or the
 * same event seen by another baton process, is handled once. Requests come
 * from app_mention, direct messages, and messages in the configured
 * channels; the answer goes to the request's thread. Plan cards carry
 * Approve / Deny (level 3: Release step N / Deny) buttons whose values are
 * signed decision tokens; a click is decided with the token, so the button
 * cannot be altered to decide something else, and a user who may not
 * decide gets an ephemeral refusal. Cards are updated in place
 * (chat.update) by chat.c's card updates.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bot/chat/chat_int.h"
#include "bot/log.h"
#include "bot/store/store.h"

#define RX_MAX (1u << 20) /* one Socket Mode frame */
#define OUTQ_MAX 256      /* acks waiting to be written */
#define CONNS_MAX 3       /* open at once (a successor and its predecessor) */
#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 30000
#define LINK_DISABLED_WAIT_MS 60000
#define HELLO_TIMEOUT_MS 15000 /* a connection that never says hello */
#define TEXT_MAX 2900          /* section text (Slack: 3000) */
#define ROWS_MAX 20            /* table rows shown as sections */
#define FIELDS_MAX 10          /* per section (Slack's limit) */
#define REQUEST_MAX 4000       /* bytes of a request's text handled */

enum { OP_OPEN, OP_ENVELOPE };

struct sconn {
    struct bt_chat__conn hdr;
    struct slack *sl;
    struct lws *wsi;
    bool hello;  /* Slack said hello */
    bool retire; /* replaced: close once a successor said hello */
    bool closed;
    int64_t opened_ms;
    bt_buf rx;
    json_t *outq; /* strings to write */
    char *url;    /* the one-time URL (kept for lws's pointers) */
};

struct slack {
    struct bt_chat__surface sf;
    /* settings: read-only once built, shared with the workers */
    char *app_token;
    char *bot_token;
    char *api_url; /* ends with '/' */
    json_t *channels;
    /* loop thread */
    char *bot_user_id; /* from auth.test */
    struct sconn *conns[CONNS_MAX];
    bool opening;
    bool want_new;
    bool stopped;
    int64_t next_open_ms;
    int64_t backoff_ms;
    unsigned long long envelopes, acks, unacked, reconnects, opens;
};

/* ---- settings ---------------------------------------------------------------------- */

bool bt_chat__slack_check(const bt_config *cfg, const json_t *s, bt_diag *d)
{
    size_t before = bt_diag_count(d);
    const bt_yaml_doc *doc = bt_config_main(cfg);
    static const char *const keys[] = {"app_token_env", "bot_token_env", "api_url", "channels",
                                       NULL};
    bt_check_keys(d, doc, s, keys);
    bt_check_string(d, doc, s, "app_token_env", false);
    bt_check_string(d, doc, s, "bot_token_env", false);
    const char *url = bt_check_string(d, doc, s, "api_url", false);
    if (url && !bt_chat__url_acceptable(url))
        bt_diag_at(d, doc, s, "chat.slack.api_url",
                   "'%s' must be https:// (plain http only on loopback, for tests)", url);
    json_t *ch = bt_check_array(d, doc, s, "channels", false);
    size_t i;
    json_t *v;
    json_array_foreach(ch, i, v)
    {
        if (!json_is_string(v) || !*json_string_value(v))
            bt_diag_at(d, doc, ch, "chat.slack.channels", "entry %zu is not a channel id", i + 1);
    }
    return bt_diag_count(d) == before;
}

static const struct bt_chat__surface_ops slack_ops;

struct bt_chat__surface *bt_chat__slack_new(bt_chat *c, const json_t *s, char *err, size_t errlen)
{
    struct slack *sl = bt_calloc(1, sizeof *sl);
    sl->sf.ops = &slack_ops;
    sl->sf.chat = c;
    sl->sf.impl = sl;
    sl->app_token = bt_chat__env_token(s, "app_token_env", "SLACK_APP_TOKEN", err, errlen);
    sl->bot_token = sl->app_token
                        ? bt_chat__env_token(s, "bot_token_env", "SLACK_BOT_TOKEN", err, errlen)
                        : NULL;
    if (!sl->app_token || !sl->bot_token) {
        free(sl->app_token);
        free(sl);
        return NULL;
    }
    const char *url = json_string_value(json_object_get(s, "api_url"));
    if (!url)
        url = "https://slack.com/api/";
    size_t n = strlen(url);
    sl->api_url = n && url[n - 1] == '/' ? bt_strdup(url) : bt_asprintf("%s/", url);
    json_t *ch = json_object_get(s, "channels");
    sl->channels = json_is_array(ch) ? json_deep_copy(ch) : json_array();
    sl->backoff_ms = BACKOFF_MIN_MS;
    return &sl->sf;
}

/* ---- Web API (workers) ------------------------------------------------------------ */

/* Call method with a JSON body and the bot token (or the app token);
 * *out is the reply when Slack said ok. */
static enum bt_err api(const struct slack *sl, const char *method, bool app_token, json_t *body,
                       json_t **out, char *err, size_t errlen)
{
    char *url = bt_asprintf("%s%s", sl->api_url, method);
    long status = 0;
    json_t *reply = NULL;
    enum bt_err e = bt_chat__http("POST", url, app_token ? sl->app_token : sl->bot_token, body,
                                  &status, &reply, NULL, err, errlen);
    free(url);
    if (out)
        *out = NULL;
    if (e != BT_OK)
        return e;
    if (status != 200 || !json_is_true(json_object_get(reply, "ok"))) {
        const char *why = json_string_value(json_object_get(reply, "error"));
        bt_fmt(err, errlen, "slack %s: %s (HTTP %ld)", method, why ? why : "no answer", status);
        json_decref(reply);
        return status == 429 ? BT_EUNAVAIL : BT_ECONNECTOR;
    }
    if (out)
        *out = reply;
    else
        json_decref(reply);
    return BT_OK;
}

/* ---- rendering (Block Kit) ------------------------------------------------------------ */

/* Text for mrkdwn: &, < and > escaped, as Slack asks. */
static char *esc(const char *s)
{
    bt_buf b = BT_BUF_INIT(0);
    for (; s && *s; s++) {
        if (*s == '&')
            bt_buf_puts(&b, "&amp;");
        else if (*s == '<')
            bt_buf_puts(&b, "&lt;");
        else if (*s == '>')
            bt_buf_puts(&b, "&gt;");
        else
            bt_buf_append(&b, s, 1);
    }
    return bt_buf_steal(&b);
}

static json_t *section(const char *mrkdwn)
{
    char *t = bt_chat__clip(mrkdwn, TEXT_MAX);
    json_t *b =
        json_pack("{s:s, s:{s:s, s:s}}", "type", "section", "text", "type", "mrkdwn", "text", t);
    free(t);
    return b;
}

static json_t *context(const char *mrkdwn)
{
    char *t = bt_chat__clip(mrkdwn, TEXT_MAX);
    json_t *b = json_pack("{s:s, s:[{s:s, s:s}]}", "type", "context", "elements", "type", "mrkdwn",
                          "text", t);
    free(t);
    return b;
}

/* An answer: its text, and a table (data.columns/rows) as one section of
 * fields per row, the first column in bold. */
static json_t *answer_blocks(const json_t *r)
{
    json_t *blocks = json_array();
    const json_t *data = json_object_get(r, "data");
    const json_t *cols = json_object_get(data, "columns"), *rows = json_object_get(data, "rows");
    const char *text = json_string_value(json_object_get(r, "text"));
    if (json_is_array(cols) && json_is_array(rows) && json_array_size(cols) > 0) {
        /* The text's first line is the summary ("10 assets:"). */
        const char *nl = text ? strchr(text, '\n') : NULL;
        char *first = text ? bt_strndup(text, nl ? (size_t)(nl - text) : strlen(text)) : NULL;
        char *e = esc(first ? first : "");
        json_array_append_new(blocks, section(e));
        free(e);
        free(first);
        size_t i;
        json_t *row;
        json_array_foreach(rows, i, row)
        {
            if (i >= ROWS_MAX)
                break;
            json_t *fields = json_array();
            for (size_t k = 0; k < json_array_size(cols) && k < FIELDS_MAX; k++) {
                json_t *cell = json_array_get(row, k);
                char *v = json_is_string(cell) ? esc(json_string_value(cell))
                          : cell               ? json_dumps(cell, JSON_ENCODE_ANY)
                                               : bt_strdup("-");
                char *c = esc(json_string_value(json_array_get(cols, k)));
                char *f = bt_asprintf(k == 0 ? "*%s*\n*%s*" : "*%s*\n%s", c, v);
                char *clipped = bt_chat__clip(f, 1900);
                json_array_append_new(fields,
                                      json_pack("{s:s, s:s}", "type", "mrkdwn", "text", clipped));
                free(clipped);
                free(f);
                free(c);
                free(v);
            }
            json_array_append_new(blocks,
                                  json_pack("{s:s, s:o}", "type", "section", "fields", fields));
        }
        if (json_array_size(rows) > ROWS_MAX) {
            char *more = bt_asprintf("…and %zu more. The console shows them all.",
                                     json_array_size(rows) - ROWS_MAX);
            json_array_append_new(blocks, context(more));
            free(more);
        }
    } else {
        char *e = esc(text ? text : "");
        char *code = bt_asprintf(strchr(e, '\n') ? "```%s```" : "%s", e);
        json_array_append_new(blocks, section(code));
        free(code);
        free(e);
    }
    return blocks;
}

static json_t *button(const char *text, const char *action_id, const char *style, char *token)
{
    json_t *b = json_pack("{s:s, s:{s:s, s:s}, s:s, s:s}", "type", "button", "text", "type",
                          "plain_text", "text", text, "action_id", action_id, "value", token);
    if (style)
        json_object_set_new(b, "style", json_string(style));
    free(token);
    return b;
}

/* The plan card: what, who, risk, steps, progress, result, and the buttons
 * that are live in the card's state. */
static json_t *card_blocks(bt_pipeline *p, const json_t *card)
{
    json_t *blocks = json_array();
    const char *aid = json_string_value(json_object_get(card, "approval_id"));
    const char *state = json_string_value(json_object_get(card, "state"));
    char *title = bt_asprintf("%s · level %lld (%s)", bt_chat__card_title(card),
                              (long long)json_integer_value(json_object_get(card, "level")),
                              json_string_value(json_object_get(card, "level_name"))
                                  ? json_string_value(json_object_get(card, "level_name"))
                                  : "?");
    char *t150 = bt_chat__clip(title, 150);
    json_array_append_new(blocks, json_pack("{s:s, s:{s:s, s:s}}", "type", "header", "text", "type",
                                            "plain_text", "text", t150));
    free(t150);
    free(title);

    char *req = esc(json_string_value(json_object_get(card, "request")));
    char *summary = esc(json_string_value(json_object_get(card, "summary")));
    char *targets = bt_chat__joined(json_object_get(card, "targets"), "none");
    char *etargets = esc(targets);
    char *head = bt_asprintf("*%s*\n%s\nRequested by *%s* · risk *%s* · targets: %s", summary, req,
                             json_string_value(json_object_get(card, "requester")),
                             json_string_value(json_object_get(card, "risk")), etargets);
    json_array_append_new(blocks, section(head));
    free(head);
    free(etargets);
    free(targets);
    free(summary);
    free(req);

    bt_buf steps = BT_BUF_INIT(0);
    size_t i;
    json_t *st;
    json_array_foreach(json_object_get(card, "steps"), i, st)
    {
        char *target = esc(json_string_value(json_object_get(st, "target")));
        bt_buf_printf(&steps, "%s%lld. `%s` on %s · %s", i ? "\n" : "",
                      (long long)json_integer_value(json_object_get(st, "number")),
                      json_string_value(json_object_get(st, "tool")), target,
                      bt_chat__step_state(card, st));
        const char *error = json_string_value(json_object_get(st, "error"));
        if (error) {
            char *e = esc(error);
            bt_buf_printf(&steps, " · %s", e);
            free(e);
        }
        free(target);
    }
    if (steps.len) {
        char *s = bt_buf_steal(&steps);
        json_array_append_new(blocks, section(s));
        free(s);
    }
    bt_buf_free(&steps);

    const json_t *x = json_object_get(card, "execution");
    if (json_is_object(x)) {
        char *prog = bt_chat__progress(x);
        json_array_append_new(blocks, context(prog));
        free(prog);
    }
    const char *result = json_string_value(json_object_get(card, "result_text"));
    if (result) {
        char *e = esc(result);
        char *clipped = bt_chat__clip(e, TEXT_MAX - 8);
        char *code = bt_asprintf("```%s```", clipped);
        json_array_append_new(blocks, section(code));
        free(code);
        free(clipped);
        free(e);
    }

    char *approved = bt_chat__joined(json_object_get(card, "approved_by"), "nobody yet");
    char *may = bt_chat__joined(json_object_get(card, "may_decide"), "nobody");
    char expires[32];
    bt_chat__expires(card, expires);
    bool open = bt_chat__card_open(card);
    char *who = open ? bt_asprintf("Approvals: %lld needed · approved by: %s · may decide: %s · "
                                   "expires %s · id %s",
                                   (long long)json_integer_value(
                                       json_object_get(card, "approvals_required")),
                                   approved, may, expires, aid)
                     : bt_asprintf("Approved by: %s · id %s", approved, aid);
    char *ewho = esc(who);
    json_array_append_new(blocks, context(ewho));
    free(ewho);
    free(who);
    free(may);
    free(approved);

    if (state && strcmp(state, "pending") == 0) {
        json_array_append_new(blocks,
                              json_pack("{s:s, s:s, s:[o, o]}", "type", "actions", "block_id", aid,
                                        "elements",
                                        button("Approve", "approve", "primary",
                                               bt_pipeline_decision_token(p, aid, -1, "approve")),
                                        button("Deny", "deny", "danger",
                                               bt_pipeline_decision_token(p, aid, -1, "deny"))));
    } else if (state && strcmp(state, "releasing") == 0 &&
               json_is_integer(json_object_get(card, "next_step"))) {
        int n = (int)json_integer_value(json_object_get(card, "next_step"));
        char label[48], id[32], did[32];
        bt_fmt(label, sizeof label, "Release step %d", n);
        bt_fmt(id, sizeof id, "release_%d", n);
        bt_fmt(did, sizeof did, "deny_%d", n);
        json_array_append_new(
            blocks,
            json_pack(
                "{s:s, s:s, s:[o, o]}", "type", "actions", "block_id", aid, "elements",
                button(label, id, "primary", bt_pipeline_decision_token(p, aid, n - 1, "approve")),
                button("Deny the rest", did, "danger",
                       bt_pipeline_decision_token(p, aid, n - 1, "deny"))));
    }
    /* A button whose token could not be made has no value: drop the block
     * rather than post a broken button. */
    size_t nb = json_array_size(blocks);
    json_t *last = json_array_get(blocks, nb - 1);
    if (json_is_object(last) &&
        strcmp(json_string_value(json_object_get(last, "type")), "actions") == 0) {
        size_t k;
        json_t *el;
        json_array_foreach(json_object_get(last, "elements"), k, el)
        {
            if (!json_string_value(json_object_get(el, "value")))
                json_array_remove(blocks, nb - 1);
        }
    }
    return blocks;
}

static char *card_fallback(const json_t *card)
{
    return bt_asprintf("%s: %s", bt_chat__card_title(card),
                       json_string_value(json_object_get(card, "summary"))
                           ? json_string_value(json_object_get(card, "summary"))
                           : "a plan");
}

/* ---- events (workers) ------------------------------------------------------------------ */

static enum bt_err post(const struct slack *sl, const char *channel, const char *thread,
                        const char *text, json_t *blocks, char **ts, char *err, size_t errlen)
{
    char *fallback = bt_chat__clip(text, 3000);
    json_t *body = json_pack("{s:s, s:s, s:o, s:b}", "channel", channel, "text", fallback, "blocks",
                             blocks, "unfurl_links", 0);
    free(fallback);
    if (thread)
        json_object_set_new(body, "thread_ts", json_string(thread));
    json_t *reply = NULL;
    enum bt_err e = api(sl, "chat.postMessage", false, body, &reply, err, errlen);
    json_decref(body);
    if (e == BT_OK && ts) {
        const char *v = json_string_value(json_object_get(reply, "ts"));
        *ts = v ? bt_strdup(v) : NULL;
    }
    json_decref(reply);
    return e;
}

static void ephemeral(const struct slack *sl, const char *channel, const char *user,
                      const char *thread, const char *text)
{
    char err[BT_ERRLEN];
    char *clipped = bt_chat__clip(text, TEXT_MAX);
    char *e = esc(clipped);
    json_t *body = json_pack("{s:s, s:s, s:s, s:[o]}", "channel", channel, "user", user, "text",
                             clipped, "blocks", section(e));
    free(e);
    free(clipped);
    if (thread)
        json_object_set_new(body, "thread_ts", json_string(thread));
    if (api(sl, "chat.postEphemeral", false, body, NULL, err, sizeof err) != BT_OK)
        bt_log(BT_LOG_WARN, "slack", NULL, "ephemeral message to %s: %s", user, err);
    json_decref(body);
}

static bool channel_listed(const struct slack *sl, const char *channel)
{
    size_t i;
    json_t *v;
    json_array_foreach(sl->channels, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), channel) == 0)
            return true;
    }
    return false;
}

/* The request without mentions of the bot ("<@U123> restart nginx"). */
static char *strip_mention(const char *text, const char *bot)
{
    char *mention = bt_asprintf("<@%s>", bot ? bot : "");
    bt_buf b = BT_BUF_INIT(0);
    size_t ml = strlen(mention);
    for (const char *s = text; *s;) {
        if (bot && strncmp(s, mention, ml) == 0) {
            s += ml;
            continue;
        }
        bt_buf_append(&b, s, 1);
        s++;
    }
    free(mention);
    char *out = bt_buf_steal(&b);
    /* trim */
    char *start = out;
    while (*start == ' ' || *start == '\t' || *start == '\n')
        start++;
    size_t n = strlen(start);
    while (n > 0 && (start[n - 1] == ' ' || start[n - 1] == '\t' || start[n - 1] == '\n'))
        n--;
    char *trimmed = bt_strndup(start, n);
    free(out);
    return trimmed;
}

static bool claim(bt_pipeline *p, const char *key)
{
    return bt_chat__claim(p, "slack", key);
}

/* The hint for a Slack user baton cannot map to one of its users. */
static char *unknown_user_text(const char *user)
{
    return bt_asprintf("I don't know who you are in baton yet, so I can't act for you. Ask a "
                       "baton admin to add `identities: {slack: %s}` to your user in baton.yaml.",
                       user);
}

static void on_message(struct slack *sl, bt_pipeline *p, const json_t *payload,
                       const char *bot_user, json_t *cards)
{
    const json_t *ev = json_object_get(payload, "event");
    const char *type = json_string_value(json_object_get(ev, "type"));
    const char *user = json_string_value(json_object_get(ev, "user"));
    const char *channel = json_string_value(json_object_get(ev, "channel"));
    const char *text = json_string_value(json_object_get(ev, "text"));
    const char *ts = json_string_value(json_object_get(ev, "ts"));
    const char *thread = json_string_value(json_object_get(ev, "thread_ts"));
    const char *event_id = json_string_value(json_object_get(payload, "event_id"));
    if (!type || !user || !channel || !text || !ts || !event_id)
        return;
    if (json_object_get(ev, "bot_id") || json_object_get(ev, "subtype") ||
        (bot_user && strcmp(user, bot_user) == 0))
        return; /* bots (ourselves included), edits, joins */
    bool mention = strcmp(type, "app_mention") == 0;
    if (!mention) {
        if (strcmp(type, "message") != 0)
            return;
        const char *ct = json_string_value(json_object_get(ev, "channel_type"));
        bool dm = ct && strcmp(ct, "im") == 0;
        if (!dm && !channel_listed(sl, channel))
            return;
        char *m = bt_asprintf("<@%s>", bot_user ? bot_user : "?");
        bool mentioned = !dm && bot_user && strstr(text, m);
        free(m);
        if (mentioned)
            return; /* its app_mention carries it */
    }
    char key[128];
    bt_fmt(key, sizeof key, "slack:%s", event_id);
    if (!claim(p, key))
        return;
    const char *reply_thread = thread ? thread : ts;
    const char *who = bt_pipeline_user_for(p, "slack", user);
    if (!who) {
        char *msg = unknown_user_text(user);
        ephemeral(sl, channel, user, reply_thread, msg);
        free(msg);
        return;
    }
    char *request = strip_mention(text, bot_user);
    if (strlen(request) > REQUEST_MAX || !bt_utf8_valid(request, strlen(request)) || !*request) {
        ephemeral(sl, channel, user, reply_thread,
                  *request
                      ? "That request is too long for me (4,000 bytes at most)."
                      : "Ask me something, e.g. \"how many linux servers are in production?\"");
        free(request);
        return;
    }
    char label[96];
    bt_fmt(label, sizeof label, "slack:%s", channel);
    json_t *r = bt_pipeline_handle(p, request, who, label);
    free(request);
    char err[BT_ERRLEN];
    if (!r) {
        ephemeral(sl, channel, user, reply_thread, "Sorry, that request failed inside baton.");
        return;
    }
    const char *aid = json_string_value(json_object_get(r, "approval_id"));
    json_t *card = aid ? bt_pipeline_card(p, aid) : NULL;
    char *ts_out = NULL;
    enum bt_err e;
    if (card) {
        char *fallback = card_fallback(card);
        e = post(sl, channel, reply_thread, fallback, card_blocks(p, card), &ts_out, err,
                 sizeof err);
        free(fallback);
        if (e == BT_OK && ts_out &&
            bt_store_chat_post_add(bt_pipeline_store(p), aid, "slack", channel, ts_out,
                                   reply_thread, err, sizeof err) != BT_OK)
            bt_log(BT_LOG_ERROR, "slack", NULL, "recording the card of %s: %s", aid, err);
        json_array_append_new(cards, card);
    } else {
        const char *t = json_string_value(json_object_get(r, "text"));
        e = post(sl, channel, reply_thread, t ? t : "(no answer)", answer_blocks(r), NULL, err,
                 sizeof err);
    }
    if (e != BT_OK)
        bt_log(BT_LOG_ERROR, "slack", json_string_value(json_object_get(r, "request_id")),
               "answering in %s: %s", channel, err);
    free(ts_out);
    json_decref(r);
}

static void on_click(struct slack *sl, bt_pipeline *p, const json_t *payload, json_t *cards)
{
    if (!json_is_string(json_object_get(payload, "type")) ||
        strcmp(json_string_value(json_object_get(payload, "type")), "block_actions") != 0)
        return;
    const char *user = json_string_value(json_object_get(json_object_get(payload, "user"), "id"));
    const char *channel =
        json_string_value(json_object_get(json_object_get(payload, "channel"), "id"));
    const json_t *msg = json_object_get(payload, "message");
    const char *thread = json_string_value(json_object_get(msg, "thread_ts"));
    const json_t *act = json_array_get(json_object_get(payload, "actions"), 0);
    const char *aid = json_string_value(json_object_get(act, "block_id"));
    const char *token = json_string_value(json_object_get(act, "value"));
    const char *trigger = json_string_value(json_object_get(payload, "trigger_id"));
    const char *action_ts = json_string_value(json_object_get(act, "action_ts"));
    if (!user || !channel || !aid || !token || (!trigger && !action_ts))
        return;
    char key[160];
    bt_fmt(key, sizeof key, "slack:click:%s:%s", trigger ? trigger : action_ts, user);
    if (!claim(p, key))
        return;
    const char *who = bt_pipeline_user_for(p, "slack", user);
    if (!who) {
        char *m = unknown_user_text(user);
        ephemeral(sl, channel, user, thread, m);
        free(m);
        return;
    }
    json_t *r = bt_pipeline_decide(p, aid, who, NULL, -1, "slack", token);
    const char *status = json_string_value(json_object_get(r, "status"));
    const char *text = json_string_value(json_object_get(r, "text"));
    if (!r || (status && strcmp(status, "refused") == 0) ||
        (status && strcmp(status, "already") == 0))
        ephemeral(sl, channel, user, thread, text ? text : "That decision was not taken.");
    json_t *card = bt_pipeline_card(p, aid);
    if (card)
        json_array_append_new(cards, card);
    json_decref(r);
}

/* Worker: apps.connections.open (and auth.test the first time). */
static void run_open(struct slack *sl, bt_chat_task *t)
{
    char err[BT_ERRLEN];
    t->out = json_object();
    if (!json_is_true(json_object_get(t->in, "know_bot"))) {
        json_t *me = NULL;
        if (api(sl, "auth.test", false, NULL, &me, err, sizeof err) != BT_OK) {
            json_object_set_new(t->out, "error", json_string(err));
            return;
        }
        json_object_set(t->out, "bot_user_id", json_object_get(me, "user_id"));
        json_decref(me);
    }
    json_t *reply = NULL;
    if (api(sl, "apps.connections.open", true, NULL, &reply, err, sizeof err) != BT_OK) {
        json_object_set_new(t->out, "error", json_string(err));
        return;
    }
    json_object_set(t->out, "url", json_object_get(reply, "url"));
    json_decref(reply);
}

static void slack_run(struct bt_chat__surface *sf, bt_chat_task *t, bt_pipeline *p, json_t *cards)
{
    struct slack *sl = sf->impl;
    if (t->op == OP_OPEN) {
        run_open(sl, t);
        return;
    }
    const json_t *env = json_object_get(t->in, "envelope");
    const char *type = json_string_value(json_object_get(env, "type"));
    const char *bot = json_string_value(json_object_get(t->in, "bot_user_id"));
    const json_t *payload = json_object_get(env, "payload");
    if (type && strcmp(type, "events_api") == 0)
        on_message(sl, p, payload, bot, cards);
    else if (type && strcmp(type, "interactive") == 0)
        on_click(sl, p, payload, cards);
}

static enum bt_err slack_update_post(struct bt_chat__surface *sf, bt_pipeline *p,
                                     const json_t *where, const json_t *card, char *err,
                                     size_t errlen)
{
    struct slack *sl = sf->impl;
    char *fallback = card_fallback(card);
    json_t *body =
        json_pack("{s:O, s:O, s:s, s:o}", "channel", json_object_get(where, "channel"), "ts",
                  json_object_get(where, "post"), "text", fallback, "blocks", card_blocks(p, card));
    free(fallback);
    enum bt_err e = api(sl, "chat.update", false, body, NULL, err, errlen);
    json_decref(body);
    return e;
}

/* ---- the connection (loop thread) ------------------------------------------------------ */

static void conn_write(struct sconn *k, json_t *msg)
{
    char *text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    if (!text || json_array_size(k->outq) >= OUTQ_MAX) {
        free(text);
        return;
    }
    json_array_append_new(k->outq, json_string(text));
    free(text);
    lws_callback_on_writable(k->wsi);
}

static void schedule_open(struct slack *sl, int64_t now, int64_t wait_ms)
{
    sl->next_open_ms = now + wait_ms;
}

static int64_t backoff_next(struct slack *sl)
{
    int64_t base = sl->backoff_ms;
    int64_t wait = base / 2 + (int64_t)(rand() % (int)(base / 2 + 1)); /* jitter */
    sl->backoff_ms = base * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : base * 2;
    return wait;
}

static size_t live_conns(const struct slack *sl)
{
    size_t n = 0;
    for (int i = 0; i < CONNS_MAX; i++)
        if (sl->conns[i] && !sl->conns[i]->retire && !sl->conns[i]->closed)
            n++;
    return n;
}

static void conn_free(struct sconn *k)
{
    bt_buf_free(&k->rx);
    json_decref(k->outq);
    free(k->url);
    free(k);
}

static void connect_to(struct slack *sl, const char *url)
{
    int slot = -1;
    for (int i = 0; i < CONNS_MAX; i++)
        if (!sl->conns[i]) {
            slot = i;
            break;
        }
    if (slot < 0) {
        bt_log(BT_LOG_WARN, "slack", NULL, "too many connections open; not opening another");
        return;
    }
    struct sconn *k = bt_calloc(1, sizeof *k);
    k->hdr.sf = &sl->sf;
    k->sl = sl;
    k->rx.max = RX_MAX;
    k->outq = json_array();
    k->url = bt_strdup(url);
    k->opened_ms = bt_mono_ms();
    char *copy = bt_strdup(url);
    const char *prot = NULL, *host = NULL, *path = NULL;
    int port = 0;
    if (lws_parse_uri(copy, &prot, &host, &port, &path) != 0 ||
        (strcmp(prot, "wss") != 0 && strcmp(prot, "ws") != 0)) {
        bt_log(BT_LOG_ERROR, "slack", NULL, "apps.connections.open gave a URL baton cannot use");
        free(copy);
        conn_free(k);
        schedule_open(sl, bt_mono_ms(), backoff_next(sl));
        return;
    }
    char *fullpath = bt_asprintf("/%s", path);
    struct lws_client_connect_info ci;
    memset(&ci, 0, sizeof ci);
    ci.context = bt_chat__ctx(sl->sf.chat);
    ci.address = host;
    ci.port = port;
    ci.path = fullpath;
    ci.host = host;
    ci.origin = host;
    ci.ssl_connection = strcmp(prot, "wss") == 0 ? LCCSCF_USE_SSL : 0;
    ci.local_protocol_name = "baton-chat";
    ci.userdata = k;
    ci.pwsi = &k->wsi;
    ci.retry_and_idle_policy = bt_chat__retry();
    sl->conns[slot] = k;
    sl->opens++;
    if (!lws_client_connect_via_info(&ci)) {
        /* CLIENT_CONNECTION_ERROR may have run and freed it already. */
        if (sl->conns[slot] == k) {
            sl->conns[slot] = NULL;
            conn_free(k);
            schedule_open(sl, bt_mono_ms(), backoff_next(sl));
        }
        bt_log(BT_LOG_WARN, "slack", NULL, "could not start a Socket Mode connection");
    }
    free(fullpath);
    free(copy);
}

static void slack_done(struct bt_chat__surface *sf, bt_chat_task *t)
{
    struct slack *sl = sf->impl;
    if (t->op != OP_OPEN)
        return;
    sl->opening = false;
    const char *bot = json_string_value(json_object_get(t->out, "bot_user_id"));
    if (bot && !sl->bot_user_id)
        sl->bot_user_id = bt_strdup(bot);
    const char *url = json_string_value(json_object_get(t->out, "url"));
    if (sl->stopped)
        return;
    if (!url || !sl->bot_user_id) {
        const char *why = json_string_value(json_object_get(t->out, "error"));
        int64_t wait = backoff_next(sl);
        bt_log(BT_LOG_WARN, "slack", NULL,
               "cannot open a Socket Mode connection: %s; again in %lld ms", why ? why : "no URL",
               (long long)wait);
        schedule_open(sl, bt_mono_ms(), wait);
        return;
    }
    connect_to(sl, url);
}

static void slack_tick(struct bt_chat__surface *sf, int64_t now)
{
    struct slack *sl = sf->impl;
    if (sl->stopped)
        return;
    for (int i = 0; i < CONNS_MAX; i++) {
        struct sconn *k = sl->conns[i];
        if (k && !k->hello && !k->closed && now - k->opened_ms > HELLO_TIMEOUT_MS) {
            bt_log(BT_LOG_WARN, "slack", NULL, "no hello within %d ms; closing", HELLO_TIMEOUT_MS);
            k->closed = true;
            lws_set_timeout(k->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        }
    }
    bool need = live_conns(sl) == 0 || sl->want_new;
    bool connecting = false;
    for (int i = 0; i < CONNS_MAX; i++)
        if (sl->conns[i] && !sl->conns[i]->hello && !sl->conns[i]->closed)
            connecting = true;
    if (!need || connecting || sl->opening || now < sl->next_open_ms)
        return;
    json_t *in = json_pack("{s:b}", "know_bot", sl->bot_user_id != NULL);
    if (bt_chat__submit(sf->chat, bt_chat__task(sf, OP_OPEN, in)))
        sl->opening = true;
    sl->want_new = false;
}

static void slack_start(struct bt_chat__surface *sf)
{
    struct slack *sl = sf->impl;
    sl->next_open_ms = 0;
    slack_tick(sf, bt_mono_ms());
}

static void slack_stop(struct bt_chat__surface *sf)
{
    struct slack *sl = sf->impl;
    sl->stopped = true;
    for (int i = 0; i < CONNS_MAX; i++)
        if (sl->conns[i] && sl->conns[i]->wsi && !sl->conns[i]->closed) {
            sl->conns[i]->closed = true;
            lws_set_timeout(sl->conns[i]->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        }
}

/* One whole frame from Slack. */
static void on_frame(struct slack *sl, struct sconn *k, const char *data, size_t len)
{
    json_error_t jerr;
    json_t *msg = json_loadb(data, len, 0, &jerr);
    const char *type = json_string_value(json_object_get(msg, "type"));
    const char *envelope_id = json_string_value(json_object_get(msg, "envelope_id"));
    if (!type) {
        bt_log(BT_LOG_WARN, "slack", NULL, "a frame baton does not understand (%zu bytes)", len);
    } else if (strcmp(type, "hello") == 0) {
        k->hello = true;
        sl->backoff_ms = BACKOFF_MIN_MS;
        bt_log(BT_LOG_INFO, "slack", NULL, "Socket Mode connected");
        /* Retire the connections this one replaces. */
        for (int i = 0; i < CONNS_MAX; i++) {
            struct sconn *o = sl->conns[i];
            if (o && o != k && o->retire && !o->closed) {
                o->closed = true;
                lws_set_timeout(o->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
            }
        }
    } else if (strcmp(type, "disconnect") == 0) {
        const char *reason = json_string_value(json_object_get(msg, "reason"));
        bt_log(BT_LOG_INFO, "slack", NULL, "Slack asks to reconnect (%s)",
               reason ? reason : "no reason");
        k->retire = true;
        if (reason && strcmp(reason, "link_disabled") == 0) {
            bt_log(BT_LOG_ERROR, "slack", NULL,
                   "Socket Mode is disabled for this app; trying again in %d s",
                   LINK_DISABLED_WAIT_MS / 1000);
            schedule_open(sl, bt_mono_ms(), LINK_DISABLED_WAIT_MS);
        } else {
            sl->want_new = true;
        }
    } else if (envelope_id) {
        sl->envelopes++;
        if (strcmp(type, "events_api") == 0 || strcmp(type, "interactive") == 0) {
            json_t *in = json_pack("{s:O, s:s?}", "envelope", msg, "bot_user_id", sl->bot_user_id);
            if (!bt_chat__submit(sl->sf.chat, bt_chat__task(&sl->sf, OP_ENVELOPE, in))) {
                /* Not acknowledged: Slack delivers it again. */
                sl->unacked++;
                bt_log(BT_LOG_WARN, "slack", NULL, "busy: envelope left for Slack to redeliver");
                json_decref(msg);
                return;
            }
        }
        sl->acks++;
        conn_write(k, json_pack("{s:s}", "envelope_id", envelope_id));
    }
    json_decref(msg);
}

static int slack_callback(struct bt_chat__surface *sf, struct lws *wsi,
                          enum lws_callback_reasons reason, struct bt_chat__conn *conn, void *in,
                          size_t len)
{
    struct slack *sl = sf->impl;
    struct sconn *k = (struct sconn *)conn;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        k->wsi = wsi;
        return 0;
    case LWS_CALLBACK_CLIENT_RECEIVE:
        if (bt_buf_append(&k->rx, in, len) != BT_OK) {
            bt_log(BT_LOG_WARN, "slack", NULL, "a frame over %u bytes; dropped", RX_MAX);
            bt_buf_free(&k->rx);
            k->rx.max = RX_MAX;
            return 0;
        }
        if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) != 0)
            return 0;
        on_frame(sl, k, k->rx.data ? k->rx.data : "", k->rx.len);
        bt_buf_free(&k->rx);
        k->rx.max = RX_MAX;
        return 0;
    case LWS_CALLBACK_CLIENT_WRITEABLE: {
        if (json_array_size(k->outq) == 0)
            return 0;
        const char *text = json_string_value(json_array_get(k->outq, 0));
        size_t n = strlen(text);
        unsigned char *buf = bt_malloc(LWS_PRE + n + 1);
        memcpy(buf + LWS_PRE, text, n);
        int w = lws_write(wsi, buf + LWS_PRE, n, LWS_WRITE_TEXT);
        free(buf);
        json_array_remove(k->outq, 0);
        if (w < (int)n)
            return -1;
        if (json_array_size(k->outq))
            lws_callback_on_writable(wsi);
        return 0;
    }
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
    case LWS_CALLBACK_CLIENT_CLOSED: {
        bool was_live = !k->retire && !k->closed;
        if (reason == LWS_CALLBACK_CLIENT_CONNECTION_ERROR)
            bt_log(BT_LOG_WARN, "slack", NULL, "Socket Mode connection failed: %s",
                   in ? (const char *)in : "no reason");
        else
            bt_log(BT_LOG_INFO, "slack", NULL, "Socket Mode connection closed");
        for (int i = 0; i < CONNS_MAX; i++)
            if (sl->conns[i] == k)
                sl->conns[i] = NULL;
        conn_free(k);
        if (!sl->stopped && was_live && live_conns(sl) == 0) {
            sl->reconnects++;
            schedule_open(sl, bt_mono_ms(), backoff_next(sl));
        }
        return 0;
    }
    default:
        return 0;
    }
}

static json_t *slack_status(const struct bt_chat__surface *sf)
{
    const struct slack *sl = sf->impl;
    size_t connected = 0;
    for (int i = 0; i < CONNS_MAX; i++)
        if (sl->conns[i] && sl->conns[i]->hello && !sl->conns[i]->closed)
            connected++;
    return json_pack("{s:b, s:I, s:I, s:I, s:I, s:I}", "connected", connected > 0, "connections",
                     (json_int_t)connected, "envelopes", (json_int_t)sl->envelopes, "acks",
                     (json_int_t)sl->acks, "left_unacked", (json_int_t)sl->unacked, "reconnects",
                     (json_int_t)sl->reconnects);
}

static void slack_free(struct bt_chat__surface *sf)
{
    struct slack *sl = sf->impl;
    for (int i = 0; i < CONNS_MAX; i++)
        if (sl->conns[i])
            conn_free(sl->conns[i]);
    free(sl->app_token);
    free(sl->bot_token);
    free(sl->api_url);
    free(sl->bot_user_id);
    json_decref(sl->channels);
    free(sl);
}

static const struct bt_chat__surface_ops slack_ops = {
    .name = "slack",
    .start = slack_start,
    .tick = slack_tick,
    .stop = slack_stop,
    .callback = slack_callback,
    .done = slack_done,
    .status = slack_status,
    .free = slack_free,
    .run = slack_run,
    .update_post = slack_update_post,
};
